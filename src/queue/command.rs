//! What a log entry carries for the queue: a [`Command`] and its optional session key, and
//! their byte form.
//!
//! The byte form is compact MessagePack from rmp-serde: structs as arrays, enum variants as
//! one-entry maps keyed by the variant name, message bytes as `bin`.
//!
//! ```text
//! LoggedCommand = [ session: nil | [client_id: str, seq: uint], command ]
//! command       = {"CreateTopic": [topic]} | {"Put": [topic, payload]} | {"Get": [topic]}
//!               | {"CreateTopicWith": [topic, [max_deliveries: nil | uint, dead_letter: nil | str]]}
//!               | {"PutBatch": [topic, [payload, ...]]}
//!               | {"GetLeased": [topic, lease]}
//!               | {"GetBatch": [topic, max: uint, lease: nil | lease]}
//!               | {"Ack": [topic, receipt: str]} | {"AckBatch": [topic, [receipt, ...]]}
//!               | {"Nack": [topic, receipt: str]} | {"NackBatch": [topic, [receipt, ...]]}
//!               | {"Touch": [topic, receipt: str, lease]}
//!               | {"EndLeases": [now_ms: uint]}
//!               | {"Clock": [now_ms: uint]}
//! lease         = [now_ms: uint, deadline_ms: uint]
//! payload       = {"Text": str} | {"Binary": bin}
//! ```
//!
//! Times (`now_ms`, `deadline_ms`) are the leader's lease clock when it proposed the entry:
//! the state machine never reads a clock, it only compares the times entries carry.
//!
//! Log entries outlive binaries, so this layout is a stored format: add variants, never
//! reorder or rename fields. Decoding is strict (trailing bytes are an error) and never
//! panics: the bytes come from disk and from peers.

use crate::protocol::{Operation, Payload, Receipts, SessionKey, TopicSettings};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A change to the queue. Only changes go through the log; reads (`topic GET`, `status`) are
/// answered from the applied state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        topic: String,
    },
    Put {
        topic: String,
        message: Payload,
    },
    Get {
        topic: String,
    },
    // PROTOCOL.md §8–§10. New variants go at the end: log entries outlive binaries.
    /// A topic created with delivery settings.
    CreateTopicWith {
        topic: String,
        settings: TopicSettings,
    },
    /// Appends all of `messages` in order, or none.
    PutBatch {
        topic: String,
        messages: Vec<Payload>,
    },
    /// Leases the next ready message.
    GetLeased {
        topic: String,
        lease: LeaseTime,
    },
    /// Hands out up to `max` ready messages, leased when `lease` is set.
    GetBatch {
        topic: String,
        max: u32,
        lease: Option<LeaseTime>,
    },
    Ack {
        topic: String,
        receipt: String,
    },
    AckBatch {
        topic: String,
        receipts: Vec<String>,
    },
    Nack {
        topic: String,
        receipt: String,
    },
    NackBatch {
        topic: String,
        receipts: Vec<String>,
    },
    /// Moves a live lease's deadline.
    Touch {
        topic: String,
        receipt: String,
        lease: LeaseTime,
    },
    /// Proposed by the leader when its lease clock passed a recorded deadline: ends every
    /// lease whose deadline is at or before `now_ms`.
    EndLeases {
        now_ms: u64,
    },
    /// Appended by the leader while leases are live and no other entry carried its lease
    /// clock lately: advances the log's clock ([`crate::queue::Queue::clock_ms`]), from
    /// which the next leader's lease clock starts (`node::lease_clock`). Changes nothing else.
    Clock {
        now_ms: u64,
    },
}

/// When a lease was granted or touched and when it ends, on the leader's lease clock.
/// Decided by the leader and carried in the entry, so every replica agrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTime {
    pub now_ms: u64,
    pub deadline_ms: u64,
}

impl LeaseTime {
    /// A lease of `lease_ms` from `now_ms`.
    pub fn starting(now_ms: u64, lease_ms: u64) -> LeaseTime {
        LeaseTime {
            now_ms,
            deadline_ms: now_ms.saturating_add(lease_ms),
        }
    }
}

/// What one log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedCommand {
    /// Present when the client sent `client_id` and `seq`: the command then takes effect at
    /// most once per key.
    pub session: Option<SessionKey>,
    pub command: Command,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandDecodeError {
    #[error("not a command: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("{bytes} bytes after the command")]
    TrailingBytes { bytes: usize },
}

impl LoggedCommand {
    pub fn encode(&self) -> Bytes {
        // Sized up front: a batch of messages would otherwise be copied at every doubling.
        let mut bytes = Vec::with_capacity(self.encoded_bytes_hint());
        rmp_serde::encode::write(&mut bytes, self)
            .expect("encoding strings, integers and bytes into a Vec cannot fail");
        Bytes::from(bytes)
    }

    /// About the encoded size (at least it for puts, the commands with a body).
    fn encoded_bytes_hint(&self) -> usize {
        // Markers, lengths, variant names and the session key's integer.
        const FIXED_BYTES: usize = 48;
        // A message's map marker, variant name and bin or str marker with its length.
        const MESSAGE_BYTES: usize = 13;
        let session = self.session.as_ref().map_or(0, |key| key.client_id.len());
        let body = match &self.command {
            Command::Put { topic, message } => topic.len() + MESSAGE_BYTES + message.len(),
            Command::PutBatch { topic, messages } => {
                topic.len()
                    + messages
                        .iter()
                        .map(|message| MESSAGE_BYTES + message.len())
                        .sum::<usize>()
            }
            _ => 0,
        };
        FIXED_BYTES + session + body
    }

    pub fn decode(bytes: &[u8]) -> Result<LoggedCommand, CommandDecodeError> {
        let mut rest = bytes;
        let mut deserializer = rmp_serde::Deserializer::new(&mut rest);
        let command = LoggedCommand::deserialize(&mut deserializer)?;
        if !rest.is_empty() {
            return Err(CommandDecodeError::TrailingBytes { bytes: rest.len() });
        }
        Ok(command)
    }
}

/// A message as the queue stores it, borrowed: from a [`Payload`], or in place from a log
/// entry's bytes ([`PutEntry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadRef<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> PayloadRef<'a> {
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_text(&self) -> bool {
        matches!(self, PayloadRef::Text(_))
    }

    pub fn bytes(&self) -> &'a [u8] {
        match self {
            PayloadRef::Text(text) => text.as_bytes(),
            PayloadRef::Binary(bytes) => bytes,
        }
    }
}

impl<'a> From<&'a Payload> for PayloadRef<'a> {
    fn from(payload: &'a Payload) -> PayloadRef<'a> {
        match payload {
            Payload::Text(text) => PayloadRef::Text(text),
            Payload::Binary(bytes) => PayloadRef::Binary(bytes),
        }
    }
}

/// A `Put` or `PutBatch` entry read in place, its topic and messages borrowing from the
/// entry's bytes: the commonest entries are applied without a copy or an allocation per
/// message ([`crate::queue::Queue::apply`]).
///
/// Only the exact layout [`LoggedCommand::encode`] writes is read here (compact arrays, the
/// variant keyed by name, the smallest MessagePack markers or longer ones, `Text` as str and
/// `Binary` as bin, nothing after the command); anything else, valid or not, is left to
/// [`LoggedCommand::decode`], so this accepts a subset of what it accepts, with the same
/// meaning.
#[derive(Debug, PartialEq, Eq)]
pub struct PutEntry<'a> {
    /// The session key, as `(client_id, seq)`.
    pub session: Option<(&'a str, u64)>,
    pub topic: &'a str,
    pub messages: Vec<PayloadRef<'a>>,
    /// A `PutBatch` (answered with a count), not a `Put`.
    pub batch: bool,
}

impl<'a> PutEntry<'a> {
    /// `None` when `bytes` is not a put in the layout described above.
    pub fn decode(bytes: &'a [u8]) -> Option<PutEntry<'a>> {
        let mut reader = Reader(bytes);
        if reader.array_len()? != 2 {
            return None;
        }
        let session = if reader.nil() {
            None
        } else {
            if reader.array_len()? != 2 {
                return None;
            }
            Some((reader.str()?, reader.uint()?))
        };
        if reader.map_len()? != 1 {
            return None;
        }
        let batch = match reader.str()? {
            "Put" => false,
            "PutBatch" => true,
            _ => return None,
        };
        if reader.array_len()? != 2 {
            return None;
        }
        let topic = reader.str()?;
        let messages = if batch {
            let count = reader.array_len()?;
            // Each message takes at least 3 bytes: no allocation larger than the input.
            if count > reader.0.len() / 3 {
                return None;
            }
            let mut messages = Vec::with_capacity(count);
            for _ in 0..count {
                messages.push(reader.payload()?);
            }
            messages
        } else {
            vec![reader.payload()?]
        };
        reader.0.is_empty().then_some(PutEntry {
            session,
            topic,
            messages,
            batch,
        })
    }
}

/// Reads the few MessagePack items of a put (see [`PutEntry`]) off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(taken)
    }

    fn be(&mut self, width: usize) -> Option<u64> {
        Some(
            self.take(width)?
                .iter()
                .fold(0u64, |value, &byte| (value << 8) | u64::from(byte)),
        )
    }

    fn length(&mut self, width: usize) -> Option<usize> {
        usize::try_from(self.be(width)?).ok()
    }

    fn nil(&mut self) -> bool {
        if self.0.first() == Some(&0xc0) {
            self.0 = &self.0[1..];
            true
        } else {
            false
        }
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x90..=0x9f => Some(usize::from(marker & 0x0f)),
            0xdc => self.length(2),
            0xdd => self.length(4),
            _ => None,
        }
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x80..=0x8f => Some(usize::from(marker & 0x0f)),
            0xde => self.length(2),
            0xdf => self.length(4),
            _ => None,
        }
    }

    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            marker @ 0x00..=0x7f => Some(u64::from(marker)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = match self.byte()? {
            marker @ 0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.length(1)?,
            0xda => self.length(2)?,
            0xdb => self.length(4)?,
            _ => return None,
        };
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn bin(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            0xc4 => self.length(1)?,
            0xc5 => self.length(2)?,
            0xc6 => self.length(4)?,
            _ => return None,
        };
        self.take(len)
    }

    /// `{"Text": str}` or `{"Binary": bin}`.
    fn payload(&mut self) -> Option<PayloadRef<'a>> {
        if self.map_len()? != 1 {
            return None;
        }
        match self.str()? {
            "Text" => Some(PayloadRef::Text(self.str()?)),
            "Binary" => Some(PayloadRef::Binary(self.bin()?)),
            _ => None,
        }
    }
}

/// The operations that go through the log become commands; the others come back as the
/// error, for the caller to serve from the applied state.
///
/// Operations that need the leader's lease clock (a leased GET, TOUCH) go through
/// [`Command::from_operation`] instead; here they come back as the error too.
impl TryFrom<Operation> for Command {
    type Error = Operation;

    fn try_from(operation: Operation) -> Result<Command, Operation> {
        match operation {
            Operation::Fetch { options, .. } if options.lease_ms.is_some() => Err(operation),
            Operation::Touch { .. } => Err(operation),
            other => Command::from_operation(other, 0),
        }
    }
}

impl Command {
    /// The command the leader proposes for `operation`, with `now_ms` its lease clock (used
    /// by leased GETs and TOUCH only). Reads come back as the error, for the caller to serve
    /// from the applied state.
    ///
    /// `wait_ms` is not part of the command: waiting happens before proposing, at the leader.
    pub fn from_operation(operation: Operation, now_ms: u64) -> Result<Command, Operation> {
        let lease = |lease_ms: u64| LeaseTime::starting(now_ms, lease_ms);
        match operation {
            Operation::CreateTopic { topic } => Ok(Command::CreateTopic { topic }),
            Operation::CreateTopicWith { topic, settings } => {
                Ok(Command::CreateTopicWith { topic, settings })
            }
            Operation::Put { topic, message } => Ok(Command::Put { topic, message }),
            Operation::PutBatch { topic, messages } => Ok(Command::PutBatch { topic, messages }),
            Operation::Get { topic } => Ok(Command::Get { topic }),
            Operation::Fetch { topic, options } => Ok(match (options.max, options.lease_ms) {
                (None, None) => Command::Get { topic },
                (None, Some(lease_ms)) => Command::GetLeased {
                    topic,
                    lease: lease(lease_ms),
                },
                (Some(max), lease_ms) => Command::GetBatch {
                    topic,
                    max,
                    lease: lease_ms.map(lease),
                },
            }),
            Operation::Ack { topic, receipts } => Ok(match receipts {
                Receipts::One(receipt) => Command::Ack { topic, receipt },
                Receipts::Many(receipts) => Command::AckBatch { topic, receipts },
            }),
            Operation::Nack { topic, receipts } => Ok(match receipts {
                Receipts::One(receipt) => Command::Nack { topic, receipt },
                Receipts::Many(receipts) => Command::NackBatch { topic, receipts },
            }),
            Operation::Touch {
                topic,
                receipt,
                lease_ms,
            } => Ok(Command::Touch {
                topic,
                receipt,
                lease: lease(lease_ms),
            }),
            other @ (Operation::ListTopics
            | Operation::ListTopicDetails
            | Operation::Status
            | Operation::Stats
            | Operation::Fault { .. }
            | Operation::ListMembers
            | Operation::AddMember { .. }
            | Operation::RemoveMember { .. }) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session(client_id: &str, seq: u64) -> Option<SessionKey> {
        Some(SessionKey {
            client_id: client_id.to_string(),
            seq,
        })
    }

    #[test]
    fn layout_is_the_documented_one() {
        let cases = [
            (
                LoggedCommand {
                    session: None,
                    command: Command::Get { topic: "t".into() },
                },
                // [nil, {"Get": ["t"]}]
                b"\x92\xc0\x81\xa3Get\x91\xa1t".to_vec(),
            ),
            (
                LoggedCommand {
                    session: session("c", 7),
                    command: Command::Put {
                        topic: "t".into(),
                        message: Payload::Binary(vec![1, 2]),
                    },
                },
                // [["c", 7], {"Put": ["t", {"Binary": bin8(2) 1 2}]}]
                b"\x92\x92\xa1c\x07\x81\xa3Put\x92\xa1t\x81\xa6Binary\xc4\x02\x01\x02".to_vec(),
            ),
        ];
        for (case, (command, bytes)) in cases.iter().enumerate() {
            assert_eq!(command.encode().as_ref(), bytes.as_slice(), "case {case}");
            assert_eq!(
                &LoggedCommand::decode(bytes).expect("valid"),
                command,
                "case {case}"
            );
        }
    }

    /// The version 2 commands are stored too: their layout is pinned like the others'.
    #[test]
    fn version_2_layouts_are_the_documented_ones() {
        let lease = LeaseTime {
            now_ms: 5,
            deadline_ms: 9,
        };
        let cases: Vec<(Command, &[u8])> = vec![
            (
                Command::CreateTopicWith {
                    topic: "t".into(),
                    settings: TopicSettings {
                        max_deliveries: Some(3),
                        dead_letter: None,
                    },
                },
                // {"CreateTopicWith": ["t", [3, nil]]}
                b"\x81\xafCreateTopicWith\x92\xa1t\x92\x03\xc0",
            ),
            (
                Command::PutBatch {
                    topic: "t".into(),
                    messages: vec![Payload::Text("a".into())],
                },
                // {"PutBatch": ["t", [{"Text": "a"}]]}
                b"\x81\xa8PutBatch\x92\xa1t\x91\x81\xa4Text\xa1a",
            ),
            (
                Command::GetLeased {
                    topic: "t".into(),
                    lease,
                },
                // {"GetLeased": ["t", [5, 9]]}
                b"\x81\xa9GetLeased\x92\xa1t\x92\x05\x09",
            ),
            (
                Command::GetBatch {
                    topic: "t".into(),
                    max: 2,
                    lease: None,
                },
                // {"GetBatch": ["t", 2, nil]}
                b"\x81\xa8GetBatch\x93\xa1t\x02\xc0",
            ),
            (
                Command::AckBatch {
                    topic: "t".into(),
                    receipts: vec!["r".into()],
                },
                // {"AckBatch": ["t", ["r"]]}
                b"\x81\xa8AckBatch\x92\xa1t\x91\xa1r",
            ),
            (
                Command::Touch {
                    topic: "t".into(),
                    receipt: "r".into(),
                    lease,
                },
                // {"Touch": ["t", "r", [5, 9]]}
                b"\x81\xa5Touch\x93\xa1t\xa1r\x92\x05\x09",
            ),
            (
                Command::EndLeases { now_ms: 7 },
                // {"EndLeases": [7]}
                b"\x81\xa9EndLeases\x91\x07",
            ),
            (
                Command::Clock { now_ms: 300 },
                // {"Clock": [uint16 300]}
                b"\x81\xa5Clock\x91\xcd\x01\x2c",
            ),
        ];
        for (case, (command, bytes)) in cases.into_iter().enumerate() {
            let logged = LoggedCommand {
                session: None,
                command,
            };
            let expected = [&b"\x92\xc0"[..], bytes].concat();
            assert_eq!(logged.encode().as_ref(), expected.as_slice(), "case {case}");
            assert_eq!(
                LoggedCommand::decode(&expected).expect("valid"),
                logged,
                "case {case}"
            );
        }
    }

    #[test]
    fn version_2_operations_map_to_commands_with_the_leaders_time() {
        use crate::protocol::FetchOptions;
        let topic = || "t".to_string();
        let fetch = |lease_ms, wait_ms, max| Operation::Fetch {
            topic: topic(),
            options: FetchOptions {
                lease_ms,
                wait_ms,
                max,
            },
        };
        let lease = LeaseTime {
            now_ms: 100,
            deadline_ms: 130,
        };
        let cases = [
            (fetch(None, Some(10), None), Command::Get { topic: topic() }),
            (
                fetch(Some(30), Some(10), None),
                Command::GetLeased {
                    topic: topic(),
                    lease,
                },
            ),
            (
                fetch(None, None, Some(4)),
                Command::GetBatch {
                    topic: topic(),
                    max: 4,
                    lease: None,
                },
            ),
            (
                fetch(Some(30), None, Some(1)),
                Command::GetBatch {
                    topic: topic(),
                    max: 1,
                    lease: Some(lease),
                },
            ),
            (
                Operation::Ack {
                    topic: topic(),
                    receipts: Receipts::One("r".into()),
                },
                Command::Ack {
                    topic: topic(),
                    receipt: "r".into(),
                },
            ),
            (
                Operation::Nack {
                    topic: topic(),
                    receipts: Receipts::Many(vec!["r".into()]),
                },
                Command::NackBatch {
                    topic: topic(),
                    receipts: vec!["r".into()],
                },
            ),
            (
                Operation::Touch {
                    topic: topic(),
                    receipt: "r".into(),
                    lease_ms: 30,
                },
                Command::Touch {
                    topic: topic(),
                    receipt: "r".into(),
                    lease,
                },
            ),
        ];
        for (case, (operation, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                Command::from_operation(operation, 100),
                Ok(expected),
                "case {case}"
            );
        }
        assert_eq!(
            Command::from_operation(Operation::ListTopicDetails, 100),
            Err(Operation::ListTopicDetails)
        );
        // Without the leader's time, a lease cannot be decided.
        assert!(Command::try_from(fetch(Some(30), None, None)).is_err());
        assert_eq!(
            LeaseTime::starting(u64::MAX - 1, 10).deadline_ms,
            u64::MAX,
            "saturates"
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = LoggedCommand {
            session: None,
            command: Command::CreateTopic { topic: "t".into() },
        }
        .encode()
        .to_vec();
        bytes.push(0xc0);
        assert!(matches!(
            LoggedCommand::decode(&bytes),
            Err(CommandDecodeError::TrailingBytes { bytes: 1 })
        ));
    }

    #[test]
    fn extra_fields_are_refused() {
        let cases: [(&str, &[u8]); 3] = [
            ("third element", b"\x93\xc0\x81\xa3Get\x91\xa1t\xc0"),
            ("second topic", b"\x92\xc0\x81\xa3Get\x92\xa1t\xa1u"),
            ("unknown variant", b"\x92\xc0\x81\xa3Del\x91\xa1t"),
        ];
        for (name, bytes) in cases {
            assert!(LoggedCommand::decode(bytes).is_err(), "case {name}");
        }
    }

    #[test]
    fn truncations_are_refused() {
        let bytes = LoggedCommand {
            session: session("client", 3),
            command: Command::Put {
                topic: "topic".into(),
                message: Payload::Text("hello".into()),
            },
        }
        .encode();
        for length in 0..bytes.len() {
            assert!(
                LoggedCommand::decode(&bytes[..length]).is_err(),
                "prefix of {length} bytes decoded"
            );
        }
    }

    #[test]
    fn operations_map_to_commands() {
        let topic = || "t".to_string();
        let cases = [
            (
                Operation::CreateTopic { topic: topic() },
                Ok(Command::CreateTopic { topic: topic() }),
            ),
            (
                Operation::Get { topic: topic() },
                Ok(Command::Get { topic: topic() }),
            ),
            (
                Operation::Put {
                    topic: topic(),
                    message: Payload::Text("m".into()),
                },
                Ok(Command::Put {
                    topic: topic(),
                    message: Payload::Text("m".into()),
                }),
            ),
            (Operation::ListTopics, Err(Operation::ListTopics)),
            (Operation::Status, Err(Operation::Status)),
        ];
        for (case, (operation, expected)) in cases.into_iter().enumerate() {
            assert_eq!(Command::try_from(operation), expected, "case {case}");
        }
    }

    pub fn payload_strategy() -> impl Strategy<Value = Payload> {
        prop_oneof![
            ".{0,20}".prop_map(Payload::Text),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Payload::Binary),
        ]
    }

    fn lease_strategy() -> impl Strategy<Value = LeaseTime> {
        (any::<u64>(), any::<u64>()).prop_map(|(now_ms, deadline_ms)| LeaseTime {
            now_ms,
            deadline_ms,
        })
    }

    fn logged_command_strategy() -> impl Strategy<Value = LoggedCommand> {
        let command = prop_oneof![
            ".{0,10}".prop_map(|topic| Command::CreateTopic { topic }),
            (".{0,10}", payload_strategy())
                .prop_map(|(topic, message)| Command::Put { topic, message }),
            ".{0,10}".prop_map(|topic| Command::Get { topic }),
            (
                ".{0,10}",
                proptest::collection::vec(payload_strategy(), 0..4)
            )
                .prop_map(|(topic, messages)| Command::PutBatch { topic, messages }),
            (
                ".{0,10}",
                any::<u32>(),
                proptest::option::of(lease_strategy())
            )
                .prop_map(|(topic, max, lease)| Command::GetBatch {
                    topic,
                    max,
                    lease
                }),
            (".{0,10}", lease_strategy())
                .prop_map(|(topic, lease)| Command::GetLeased { topic, lease }),
            (".{0,10}", proptest::collection::vec(".{0,8}", 0..4))
                .prop_map(|(topic, receipts)| Command::NackBatch { topic, receipts }),
            (".{0,10}", ".{0,8}", lease_strategy()).prop_map(|(topic, receipt, lease)| {
                Command::Touch {
                    topic,
                    receipt,
                    lease,
                }
            }),
            any::<u64>().prop_map(|now_ms| Command::EndLeases { now_ms }),
            any::<u64>().prop_map(|now_ms| Command::Clock { now_ms }),
        ];
        let session = proptest::option::of(
            (".{0,10}", any::<u64>()).prop_map(|(client_id, seq)| SessionKey { client_id, seq }),
        );
        (session, command).prop_map(|(session, command)| LoggedCommand { session, command })
    }

    proptest! {
        #[test]
        fn round_trip(command in logged_command_strategy()) {
            let bytes = command.encode();
            prop_assert_eq!(LoggedCommand::decode(&bytes).expect("own encoding"), command);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = LoggedCommand::decode(&bytes);
        }

        #[test]
        fn decode_of_corrupted_encoding_never_panics(
            command in logged_command_strategy(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = command.encode().to_vec();
            for (position, value) in flips {
                let position = position.index(bytes.len());
                bytes[position] = value;
            }
            let _ = LoggedCommand::decode(&bytes);
            let _ = PutEntry::decode(&bytes);
        }

        /// The in-place read of a put agrees with the full decode on the encoder's output:
        /// puts read the same, every other command is left to the full decode.
        #[test]
        fn put_entry_reads_puts_as_the_full_decode_does(command in logged_command_strategy()) {
            let bytes = command.encode();
            let put = PutEntry::decode(&bytes);
            let session = command
                .session
                .as_ref()
                .map(|key| (key.client_id.as_str(), key.seq));
            match &command.command {
                Command::Put { topic, message } => prop_assert_eq!(put, Some(PutEntry {
                    session,
                    topic,
                    messages: vec![message.into()],
                    batch: false,
                })),
                Command::PutBatch { topic, messages } => prop_assert_eq!(put, Some(PutEntry {
                    session,
                    topic,
                    messages: messages.iter().map(Into::into).collect(),
                    batch: true,
                })),
                _ => prop_assert_eq!(put, None),
            }
        }

        /// Whatever the in-place read accepts, the full decode accepts as the same put.
        #[test]
        fn put_entry_accepts_only_what_the_full_decode_reads_the_same(
            command in logged_command_strategy(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            cut in any::<prop::sample::Index>(),
            extra in proptest::option::of(any::<u8>()),
        ) {
            let mut bytes = command.encode().to_vec();
            for (position, value) in flips {
                let position = position.index(bytes.len());
                bytes[position] = value;
            }
            match extra {
                Some(byte) => bytes.push(byte),
                None => bytes.truncate(cut.index(bytes.len() + 1)),
            }
            if let Some(put) = PutEntry::decode(&bytes) {
                let full = LoggedCommand::decode(&bytes).expect("the full decode accepts it too");
                let session = full
                    .session
                    .as_ref()
                    .map(|key| (key.client_id.as_str(), key.seq));
                prop_assert_eq!(put.session, session);
                match &full.command {
                    Command::Put { topic, message } => {
                        prop_assert!(!put.batch);
                        prop_assert_eq!(put.topic, topic.as_str());
                        prop_assert_eq!(put.messages, vec![PayloadRef::from(message)]);
                    }
                    Command::PutBatch { topic, messages } => {
                        prop_assert!(put.batch);
                        prop_assert_eq!(put.topic, topic.as_str());
                        let expected: Vec<PayloadRef<'_>> = messages.iter().map(Into::into).collect();
                        prop_assert_eq!(put.messages, expected);
                    }
                    other => prop_assert!(false, "read as a put: {other:?}"),
                }
            }
        }
    }
}
