//! The replicated state machine: topics, each a FIFO queue of messages, and the client
//! sessions that make retries take effect at most once (PROTOCOL.md §3 and §5).
//!
//! Why it exists: Raft agrees on a log; this is what the log means. Every node applies the
//! same committed entries in the same order, so [`Queue::apply`] must be a pure function of
//! the state and the entry: no clock, no randomness, no `HashMap` iteration order in any
//! result or stored state. Hash maps here are only ever looked up; every order that matters
//! (topics in creation order, sessions in eviction order) is kept explicitly.
//!
//! What it owns: the topics and their messages ([`fifo`]), the session table ([`session`]),
//! the byte form of log commands ([`command`]) and of snapshots ([`snapshot_codec`]).
//!
//! What it must not do: read the clock, do I/O (snapshots go to a caller's `Write`), know
//! about Raft roles or terms, or validate client input beyond what determinism needs (topic
//! and message limits are checked at the gateway, `protocol`).
//!
//! # Sessions (Raft dissertation §6.3)
//!
//! A command may carry a `(client_id, seq)` key. The table keeps, per client, the last seq,
//! the [`Outcome`] it produced (failures too) and the log index of its last use:
//!
//! | client  | seq              | result                                                   |
//! |---------|------------------|----------------------------------------------------------|
//! | known   | == last          | the stored outcome again; nothing else changes           |
//! | known   | < last           | `SESSION_EXPIRED` (that reply is no longer kept)          |
//! | known   | > last           | applied; its outcome replaces the stored one             |
//! | unknown | 0 or 1           | applied; opens a session                                 |
//! | unknown | > 1              | `SESSION_EXPIRED` (forgotten: start a new client_id)      |
//!
//! A client forgotten while its *first* command was unanswered, retrying it with seq 1, is
//! indistinguishable from a new client and has the command applied again; telling them apart
//! would mean remembering every client ever seen. The bound below makes this rare.
//!
//! Session refusals (`SESSION_EXPIRED`) change nothing and are not stored. A replay does
//! not count as a use, so the state after a duplicate is exactly the state before it. The
//! table holds at most [`QueueConfig::sessions_max`] sessions and
//! [`QueueConfig::session_bytes_max`] bytes of client ids and kept replies; beyond that the
//! session least recently used in log order is forgotten (O(log n), via a `BTreeMap` keyed
//! by last-use index). **Both limits are part of the replicated behaviour: every node must
//! run with the same values.**
//!
//! # Quotas
//!
//! Two limits keep one client from filling every node's memory at once (each node holds the
//! whole state): [`QueueConfig::queued_bytes_max`] bounds the bytes queued over all topics,
//! counting each message as its length plus [`QUEUED_MESSAGE_OVERHEAD_BYTES`] (the record
//! header it is stored with, so that empty messages are not free), and
//! [`QueueConfig::topics_max`] bounds the topic count. A PUT that would pass the first, or a
//! topic create beyond the second, fails with `QUOTA` and changes nothing. They are checked
//! here, at apply time, so every replica decides the same in log order; a check at the
//! leader's door could not be exact (the leader does not know what is committed ahead of a
//! proposal). The order of checks puts the more precise answer first: `TOPIC_EXISTS` before
//! the topic count, `NO_SUCH_TOPIC` before the bytes. A `QUOTA` refusal is an outcome like
//! `NO_SUCH_TOPIC`: a session records it, so a retry with the same key gets `QUOTA` again
//! even after room was made; the client sends its next request with a new `seq`.
//!
//! A state already over a quota (say, a lowered `queued_bytes_max` and a restart) keeps what
//! it holds: GETs drain it, and PUTs are refused until it is back below. Like the session
//! limits, **the quotas are part of the replicated behaviour**: nodes with different values
//! would accept different PUTs and diverge.
//!
//! # Memory
//!
//! A queued message costs its bytes plus a 4-byte header, packed in 32 KiB segments (see
//! [`fifo`]), so the 1-million-message target fits in about the messages' own size; popped
//! messages give their memory back (freed segments, compacted front segments). An empty
//! topic holds no heap beyond its struct and its name. A session costs a few hundred bytes
//! plus its kept reply, and the table is bounded by the two limits above. Measured figures:
//! docs/PERFORMANCE.md, "Memory of the queue".

pub mod command;
pub mod fifo;
pub mod session;
pub mod snapshot_codec;

pub use command::{Command, CommandDecodeError, LoggedCommand};
pub use snapshot_codec::SnapshotError;

use crate::protocol::{ErrorCode, ErrorInfo, Outcome};
use crate::raft::LogIndex;
use fifo::MessageFifo;
use serde::{Deserialize, Serialize};
use session::{Admission, SessionLimits, Sessions};
use std::collections::HashMap;

/// The state machine's limits. Part of the replicated behaviour: every node of a cluster
/// must use the same values, or they forget different sessions and diverge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// The most client sessions remembered.
    pub sessions_max: usize,
    /// The most bytes of client ids and kept GET replies (each holds a whole message)
    /// remembered across all sessions. The most recent session is kept even if it alone is
    /// over.
    pub session_bytes_max: usize,
    /// The most bytes queued over all topics, each message counted as its length plus
    /// [`QUEUED_MESSAGE_OVERHEAD_BYTES`]: a PUT beyond it fails with `QUOTA`.
    pub queued_bytes_max: usize,
    /// The most topics: a topic create beyond it fails with `QUOTA`.
    pub topics_max: usize,
}

/// Upper bound accepted for [`QueueConfig::sessions_max`]: far above any sane setting,
/// low enough that a typo does not plan for gigabytes of sessions.
pub const SESSIONS_MAX_LIMIT: usize = 1 << 24;

/// What a queued message counts against [`QueueConfig::queued_bytes_max`] besides its
/// length: the header it is stored with (see [`fifo`]).
pub const QUEUED_MESSAGE_OVERHEAD_BYTES: usize = fifo::RECORD_HEADER_BYTES;

/// [`QueueConfig::queued_bytes_max`] when the config does not say: 2 GiB.
///
/// Every node holds the whole state, so this is per-node memory, and it must be one
/// number on every node (not a share of each machine's memory, which differ). What a node
/// really holds for it: about 1x for small and for large messages, up to 2x for sizes that
/// pack badly into the 32 KiB segments (just over 16 KiB), plus, for a while, a second copy
/// of a part of the state while a snapshot is written or a second state while a received
/// one is loaded. A local test cluster runs three nodes on one machine: 3 x 2 GiB, twice
/// that at worst, stays within a 24 GiB machine where 4 GiB would not. The benchmark's
/// largest fill (1,000,000 messages of 100 bytes: 104 MB counted) is 5 % of it. A machine
/// of its own per node can take more: raise it in `config.json`.
pub const QUEUED_BYTES_MAX_DEFAULT: usize = 2 * 1024 * 1024 * 1024;

/// [`QueueConfig::topics_max`] when the config does not say. A topic costs a few hundred
/// bytes empty, and `topic GET` lists every name in one reply (at 255-byte names, 2.5 MB for
/// 10,000 topics); a benchmark run creates at most one topic per client.
pub const TOPICS_MAX_DEFAULT: usize = 10_000;

/// Upper bound accepted for [`QueueConfig::topics_max`]: at the longest names, a million
/// topics hold about 700 MB and list in a 260 MB reply.
pub const TOPICS_MAX_LIMIT: usize = 1 << 20;

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            sessions_max: 10_000,
            session_bytes_max: 64 * 1024 * 1024,
            queued_bytes_max: QUEUED_BYTES_MAX_DEFAULT,
            topics_max: TOPICS_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueConfigError {
    #[error("sessions_max must be between 1 and {SESSIONS_MAX_LIMIT}, not {0}")]
    SessionsMax(usize),
    #[error("session_bytes_max must be at least 1")]
    SessionBytesMax,
    #[error("queued_bytes_max must be at least 1")]
    QueuedBytesMax,
    #[error("topics_max must be between 1 and {TOPICS_MAX_LIMIT}, not {0}")]
    TopicsMax(usize),
}

impl QueueConfig {
    pub fn validate(&self) -> Result<(), QueueConfigError> {
        if !(1..=SESSIONS_MAX_LIMIT).contains(&self.sessions_max) {
            return Err(QueueConfigError::SessionsMax(self.sessions_max));
        }
        if self.session_bytes_max == 0 {
            return Err(QueueConfigError::SessionBytesMax);
        }
        if self.queued_bytes_max == 0 {
            return Err(QueueConfigError::QueuedBytesMax);
        }
        if !(1..=TOPICS_MAX_LIMIT).contains(&self.topics_max) {
            return Err(QueueConfigError::TopicsMax(self.topics_max));
        }
        Ok(())
    }

    fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            sessions_max: self.sessions_max,
            session_bytes_max: self.session_bytes_max,
        }
    }
}

/// Counters for `status` and benchmarks. O(1) to take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub topics: usize,
    /// Messages queued, over all topics.
    pub messages: usize,
    /// Bytes of the queued messages (what clients put, without overhead).
    pub payload_bytes: usize,
    pub sessions: usize,
    /// Client ids and kept replies, the quantity bounded by `session_bytes_max`.
    pub session_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Topic {
    name: String,
    messages: MessageFifo,
}

#[derive(Clone, Debug)]
pub struct Queue {
    config: QueueConfig,
    /// In creation order; topics are never removed.
    topics: Vec<Topic>,
    /// Invariant: `topic_index[&topics[i].name] == i` for every i, and nothing else.
    topic_index: HashMap<String, usize>,
    sessions: Sessions,
    /// The index of the last entry applied. Invariant: entries arrive with increasing index.
    last_applied: LogIndex,
    /// Invariant: the sum of the topics' lengths.
    messages: usize,
    /// Invariant: the sum of the topics' payload bytes.
    payload_bytes: usize,
}

/// Equal when the replicated state is equal: topics, messages, sessions and their eviction
/// order, last applied index. The config and the memory layout are not compared.
impl PartialEq for Queue {
    fn eq(&self, other: &Queue) -> bool {
        self.last_applied == other.last_applied
            && self.topics == other.topics
            && self.sessions == other.sessions
    }
}

impl Eq for Queue {}

impl Queue {
    /// Panics if `config` is invalid: validate it where it is read ([`QueueConfig::validate`]).
    pub fn new(config: QueueConfig) -> Queue {
        if let Err(error) = config.validate() {
            panic!("invalid queue config {config:?}: {error}");
        }
        Queue {
            config,
            topics: Vec::new(),
            topic_index: HashMap::new(),
            sessions: Sessions::default(),
            last_applied: LogIndex::ZERO,
            messages: 0,
            payload_bytes: 0,
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The index of the last entry applied, `LogIndex::ZERO` before any. Entries that are not
    /// queue commands (Raft no-ops) never reach the queue, so this may trail the node's own.
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// Applies the committed entry at `index`, whose bytes are a [`LoggedCommand`].
    /// Undecodable bytes give `Failed(BAD_REQUEST)` and change nothing but `last_applied`.
    ///
    /// Panics unless `index` is after the last applied one: applying an entry twice, or out
    /// of order, is a bug in the caller that would silently fork this node's state.
    pub fn apply(&mut self, index: LogIndex, command: &[u8]) -> Outcome {
        match LoggedCommand::decode(command) {
            Ok(command) => self.apply_command(index, &command),
            Err(error) => {
                self.advance_to(index);
                Outcome::Failed(ErrorInfo::new(
                    ErrorCode::BadRequest,
                    format!("log entry {index} is not a queue command: {error}"),
                ))
            }
        }
    }

    /// Applies a decoded command committed at `index`. Same contract as [`Queue::apply`].
    pub fn apply_command(&mut self, index: LogIndex, command: &LoggedCommand) -> Outcome {
        self.advance_to(index);
        let Some(key) = &command.session else {
            return self.execute(&command.command);
        };
        match self.sessions.admit(&key.client_id, key.seq) {
            Admission::Replay(outcome) => outcome.clone(),
            Admission::Refuse(error) => Outcome::Failed(error),
            Admission::Execute => {
                let outcome = self.execute(&command.command);
                let limits = self.config.session_limits();
                self.sessions
                    .record(&key.client_id, key.seq, outcome.clone(), index, limits);
                outcome
            }
        }
    }

    fn advance_to(&mut self, index: LogIndex) {
        assert!(
            index > self.last_applied,
            "apply at index {index} after index {}: entries must be applied once, in log order",
            self.last_applied
        );
        self.last_applied = index;
    }

    fn execute(&mut self, command: &Command) -> Outcome {
        match command {
            Command::CreateTopic { topic } => {
                if self.topic_index.contains_key(topic) {
                    return failed(
                        ErrorCode::TopicExists,
                        format!("topic {topic:?} already exists"),
                    );
                }
                if self.topics.len() >= self.config.topics_max {
                    return failed(
                        ErrorCode::Quota,
                        format!(
                            "topic {topic:?} not created: the cluster holds {} topics, its \
                             topics_max",
                            self.topics.len()
                        ),
                    );
                }
                self.topic_index.insert(topic.clone(), self.topics.len());
                self.topics.push(Topic {
                    name: topic.clone(),
                    messages: MessageFifo::new(),
                });
                Outcome::Done
            }
            Command::Put { topic, message } => {
                let Some(&position) = self.topic_index.get(topic) else {
                    return no_such_topic(topic);
                };
                let queued = self.queued_bytes();
                let charge = message.len().saturating_add(QUEUED_MESSAGE_OVERHEAD_BYTES);
                if queued.saturating_add(charge) > self.config.queued_bytes_max {
                    return failed(
                        ErrorCode::Quota,
                        format!(
                            "message not queued: {queued} bytes are queued and it needs \
                             {charge} more, over queued_bytes_max ({}); consume messages \
                             first",
                            self.config.queued_bytes_max
                        ),
                    );
                }
                match self.topics[position].messages.push(message) {
                    Ok(()) => {
                        self.messages += 1;
                        self.payload_bytes += message.len();
                        Outcome::Done
                    }
                    Err(error) => failed(
                        ErrorCode::TooLarge,
                        format!(
                            "message of {} bytes is over the queue's limit of {} bytes",
                            error.bytes,
                            fifo::MESSAGE_BYTES_MAX
                        ),
                    ),
                }
            }
            Command::Get { topic } => {
                let Some(&position) = self.topic_index.get(topic) else {
                    return no_such_topic(topic);
                };
                match self.topics[position].messages.pop() {
                    Some(message) => {
                        self.messages -= 1;
                        self.payload_bytes -= message.len();
                        Outcome::Message(message)
                    }
                    None => failed(ErrorCode::Empty, format!("topic {topic:?} has no message")),
                }
            }
        }
    }

    /// Topic names in creation order.
    pub fn topics(&self) -> Vec<String> {
        self.topics.iter().map(|topic| topic.name.clone()).collect()
    }

    /// Messages waiting in `topic`, `None` if there is no such topic.
    pub fn queued(&self, topic: &str) -> Option<usize> {
        let &position = self.topic_index.get(topic)?;
        Some(self.topics[position].messages.len())
    }

    /// The bytes counted against [`QueueConfig::queued_bytes_max`]: every queued message's
    /// length plus [`QUEUED_MESSAGE_OVERHEAD_BYTES`].
    pub fn queued_bytes(&self) -> usize {
        self.payload_bytes
            .saturating_add(self.messages.saturating_mul(QUEUED_MESSAGE_OVERHEAD_BYTES))
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            topics: self.topics.len(),
            messages: self.messages,
            payload_bytes: self.payload_bytes,
            sessions: self.sessions.len(),
            session_bytes: self.sessions.bytes(),
        }
    }

    /// Panics if an internal invariant is broken. O(state): for tests, simulations and
    /// debug builds.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.topics.len(),
            self.topic_index.len(),
            "topic list vs index"
        );
        let mut messages = 0;
        let mut payload_bytes = 0;
        for (position, topic) in self.topics.iter().enumerate() {
            assert_eq!(
                self.topic_index.get(&topic.name),
                Some(&position),
                "index entry of topic {:?}",
                topic.name
            );
            topic.messages.check_invariants();
            messages += topic.messages.len();
            payload_bytes += topic.messages.payload_bytes();
        }
        assert_eq!(messages, self.messages, "message count");
        assert_eq!(payload_bytes, self.payload_bytes, "payload bytes");
        self.sessions.check_invariants();
        if let Some((_, newest)) = self.sessions.iter_oldest_first().last() {
            assert!(
                newest.last_used <= self.last_applied,
                "session used after last applied"
            );
        }
        let limits = self.config.session_limits();
        if self.sessions.len() > 1 {
            assert!(
                self.sessions.len() <= limits.sessions_max,
                "sessions over sessions_max"
            );
            assert!(
                self.sessions.bytes() <= limits.session_bytes_max,
                "sessions over session_bytes_max"
            );
        }
    }
}

fn failed(code: ErrorCode, message: String) -> Outcome {
    Outcome::Failed(ErrorInfo::new(code, message))
}

fn no_such_topic(topic: &str) -> Outcome {
    failed(ErrorCode::NoSuchTopic, format!("no topic {topic:?}"))
}

#[cfg(test)]
mod tests;
