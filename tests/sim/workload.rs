//! What the simulated clients ask of the queue, as log entries: `rrmq::queue::LoggedCommand`s,
//! and how an entry is traced back to the client operation it carries.
//!
//! Every command the simulation proposes is identifiable from its bytes alone, so checkers
//! can follow an operation through the log without a back channel:
//! - a session command by its key: client instance `n` is `client_id = "c<n>"`, with its seq;
//! - a PUT's message by its id (the first 8 bytes of a binary message, little endian, then
//!   filler), unique over the whole run, so a message seen twice in the queue was put twice;
//! - a liveness probe by the name of the topic it creates (`probe<n>`).

use bytes::Bytes;
use rrmq::protocol::{Payload, SessionKey};
use rrmq::queue::{Command, LoggedCommand};
use rrmq::raft::{Entry, EntryPayload};
use std::fmt;

/// The topics the clients share. The first command of every client instance creates one.
pub const TOPICS: [&str; 2] = ["t0", "t1"];

/// The dead-letter topic the clients name when they create a topic with a delivery limit.
pub const DEAD_LETTER: &str = "dl";

/// Simulated milliseconds per tick, for the lease clock.
pub const TICK_MS: u64 = 10;

pub fn end_leases(now_ms: u64) -> LoggedCommand {
    LoggedCommand {
        session: None,
        command: Command::EndLeases { now_ms },
    }
}

/// Identifies one client operation across the retries that carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandKey {
    /// A command with a session key: the client instance and its seq.
    Session { client: u64, seq: u64 },
    /// A PUT without a session (never retried), by its message id.
    Unkeyed(u64),
    /// A liveness probe: creates topic `probe<n>`, without a session.
    Probe(u64),
    /// The leader ending the leases due by this lease-clock time (`EndLeases`), without a
    /// session. Two leaders may propose the same time: each proposal counts.
    LeaseEnd(u64),
}

impl fmt::Display for CommandKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandKey::Session { client, seq } => write!(f, "c{client}#{seq}"),
            CommandKey::Unkeyed(message) => write!(f, "put m{message}"),
            CommandKey::Probe(probe) => write!(f, "probe{probe}"),
            CommandKey::LeaseEnd(now_ms) => write!(f, "end leases by {now_ms} ms"),
        }
    }
}

pub fn client_id(client: u64) -> String {
    format!("c{client}")
}

/// A binary message: its id, then `padding` filler bytes.
pub fn message(id: u64, padding: usize) -> Payload {
    let mut bytes = id.to_le_bytes().to_vec();
    bytes.resize(8 + padding, 0xab);
    Payload::Binary(bytes)
}

/// The id of a message built by [`message`].
pub fn message_id(payload: &Payload) -> Option<u64> {
    match payload {
        Payload::Binary(bytes) => Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)),
        Payload::Text(_) => None,
    }
}

pub fn session_command(client: u64, seq: u64, command: Command) -> LoggedCommand {
    LoggedCommand {
        session: Some(SessionKey {
            client_id: client_id(client),
            seq,
        }),
        command,
    }
}

pub fn unkeyed_put(topic: &str, message: Payload) -> LoggedCommand {
    LoggedCommand {
        session: None,
        command: Command::Put {
            topic: topic.to_string(),
            message,
        },
    }
}

pub fn probe(probe: u64) -> LoggedCommand {
    LoggedCommand {
        session: None,
        command: Command::CreateTopic {
            topic: format!("probe{probe}"),
        },
    }
}

pub fn encode(command: &LoggedCommand) -> Bytes {
    command.encode()
}

/// The command an entry carries, if it is a command the simulation could have proposed.
pub fn decode(entry: &Entry) -> Option<LoggedCommand> {
    match &entry.payload {
        EntryPayload::Command(bytes) => LoggedCommand::decode(bytes).ok(),
        EntryPayload::Noop | EntryPayload::Membership(_) => None,
    }
}

/// Which operation a command carries.
pub fn command_key(command: &LoggedCommand) -> Option<CommandKey> {
    if let Some(session) = &command.session {
        let client = session.client_id.strip_prefix('c')?.parse().ok()?;
        return Some(CommandKey::Session {
            client,
            seq: session.seq,
        });
    }
    match &command.command {
        Command::Put { message, .. } => message_id(message).map(CommandKey::Unkeyed),
        Command::CreateTopic { topic } => topic
            .strip_prefix("probe")?
            .parse()
            .ok()
            .map(CommandKey::Probe),
        Command::EndLeases { now_ms } => Some(CommandKey::LeaseEnd(*now_ms)),
        // Every other command the workload sends carries a session.
        _ => None,
    }
}

/// The operation an entry carries, if any.
pub fn entry_key(entry: &Entry) -> Option<CommandKey> {
    decode(entry).as_ref().and_then(command_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rrmq::raft::{LogIndex, Term};

    fn entry_of(command: &LoggedCommand) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(1),
            payload: EntryPayload::Command(encode(command)),
        }
    }

    #[test]
    fn every_command_is_traced_back_to_its_operation() {
        let cases = [
            (
                session_command(
                    12,
                    3,
                    Command::Put {
                        topic: TOPICS[0].into(),
                        message: message(99, 5),
                    },
                ),
                Some(CommandKey::Session { client: 12, seq: 3 }),
            ),
            (
                session_command(
                    1,
                    1,
                    Command::CreateTopic {
                        topic: TOPICS[1].into(),
                    },
                ),
                Some(CommandKey::Session { client: 1, seq: 1 }),
            ),
            (
                unkeyed_put(TOPICS[1], message(7, 0)),
                Some(CommandKey::Unkeyed(7)),
            ),
            (probe(4), Some(CommandKey::Probe(4))),
            (
                LoggedCommand {
                    session: None,
                    command: Command::Get {
                        topic: TOPICS[0].into(),
                    },
                },
                None,
            ),
        ];
        for (case, (command, key)) in cases.iter().enumerate() {
            assert_eq!(entry_key(&entry_of(command)), *key, "case {case}");
        }
        assert_eq!(message_id(&message(0x0102_0304, 200)), Some(0x0102_0304));
    }
}
