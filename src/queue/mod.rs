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
//! topic holds no heap beyond its struct and its name. A message handed out under a lease
//! leaves the packed segments and is held on its own (its payload allocation and a map node,
//! about 100 bytes beyond its bytes) until it is ACKed or dead-lettered: leased and returned
//! messages are few compared to a backlog. A session costs a few hundred bytes plus its kept
//! reply, and the table is bounded by the two limits above. Measured figures:
//! docs/PERFORMANCE.md, "Memory of the queue".
//!
//! # Acknowledged delivery (PROTOCOL.md §8)
//!
//! A leased GET leaves the message in its topic, invisible, under a lease named by a receipt
//! (the granting entry's index and the message's seq in its topic: unique forever). ACK
//! deletes it; NACK, or the end of the lease, puts it back in its place ([`topic`] says how
//! the order is kept). Every grant, ACK, NACK, TOUCH and lease end is a log entry, so every
//! replica agrees on who holds what, and a new leader continues the old one's leases.
//!
//! Time is never read here. A leased GET and a TOUCH carry the leader's lease clock and the
//! deadline it decided ([`LeaseTime`]); the leader proposes [`Command::EndLeases`] with its
//! clock once it passes a deadline ([`Queue::next_lease_deadline`],
//! [`Queue::leases_due`]), and that entry ends every lease due by then, in (deadline, topic,
//! seq) order. [`Queue::clock_ms`] is the latest time the log carried (grants, TOUCHes,
//! `EndLeases`, and the [`Command::Clock`] entries a leader appends while leases are live):
//! every node's lease clock runs on from it (`node::lease_clock`, which also derives the
//! bound on when a lease ends). A grant or TOUCH stamped behind it (a new leader that has
//! not applied its predecessor's last entries yet) starts at it instead, keeping its length.
//!
//! A message that comes back after `max_deliveries` leased deliveries is, in the same entry,
//! appended to its topic's `dead_letter` topic (created if missing, with no settings), or
//! dropped and counted in `discarded`. Leased messages count against the quotas like any
//! other: they are still held.

pub mod command;
pub mod fifo;
pub mod session;
pub mod snapshot_codec;
pub mod topic;

pub use command::{Command, CommandDecodeError, LeaseTime, LoggedCommand, PayloadRef, PutEntry};
pub use snapshot_codec::SnapshotError;

use crate::protocol::{
    Delivery, ErrorCode, ErrorInfo, Outcome, Payload, SessionKey, TopicDetail, TopicSettings,
    BATCH_MESSAGE_BYTES_MAX,
};
use crate::raft::LogIndex;
use serde::{Deserialize, Serialize};
use session::{Admission, SessionLimits, Sessions};
use std::collections::{BTreeSet, HashMap};
use topic::{Lease, Returned, Taken, Topic};

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
    /// Every live lease as `(deadline_ms, topic position, seq)`: the leader's question
    /// "which leases end by T" and `EndLeases` are range scans. Derived from the topics.
    deadlines: BTreeSet<(u64, usize, u64)>,
    /// The latest lease-clock time any applied entry carried: a new leader starts its lease
    /// clock here, so it never ends a lease earlier than the old leader would have.
    clock_ms: u64,
}

/// Equal when the replicated state is equal: topics, messages, sessions and their eviction
/// order, last applied index. The config and the memory layout are not compared.
impl PartialEq for Queue {
    fn eq(&self, other: &Queue) -> bool {
        self.last_applied == other.last_applied
            && self.topics == other.topics
            && self.sessions == other.sessions
            && self.clock_ms == other.clock_ms
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
            deadlines: BTreeSet::new(),
            clock_ms: 0,
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
        // Puts, the commonest entries, are read in place: no copy of their messages.
        if let Some(put) = PutEntry::decode(command) {
            return self.apply_put(index, &put);
        }
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
        let session = command
            .session
            .as_ref()
            .map(|key| (key.client_id.as_str(), key.seq));
        self.apply_in_session(index, session, |queue| queue.execute(&command.command))
    }

    /// [`Queue::apply_command`] for a put read in place.
    fn apply_put(&mut self, index: LogIndex, put: &PutEntry<'_>) -> Outcome {
        self.apply_in_session(index, put.session, |queue| {
            match queue.put(put.topic, &put.messages) {
                Ok(()) if put.batch => Outcome::Count(put.messages.len() as u64),
                Ok(()) => Outcome::Done,
                Err(failure) => failure,
            }
        })
    }

    /// Runs `execute` at `index` at most once per session key `(client_id, seq)`.
    fn apply_in_session(
        &mut self,
        index: LogIndex,
        session: Option<(&str, u64)>,
        execute: impl FnOnce(&mut Queue) -> Outcome,
    ) -> Outcome {
        self.advance_to(index);
        let Some((client_id, seq)) = session else {
            return execute(self);
        };
        match self.sessions.admit(client_id, seq) {
            Admission::Replay(outcome) => outcome.clone(),
            Admission::Refuse(error) => Outcome::Failed(error),
            Admission::Execute => {
                let outcome = execute(self);
                let limits = self.config.session_limits();
                self.sessions
                    .record(client_id, seq, outcome.clone(), index, limits);
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
            Command::CreateTopic { topic } => self.create_topic(topic, &TopicSettings::default()),
            Command::CreateTopicWith { topic, settings } => self.create_topic(topic, settings),
            Command::Put { topic, message } => match self.put(topic, &[message.into()]) {
                Ok(()) => Outcome::Done,
                Err(failure) => failure,
            },
            Command::PutBatch { topic, messages } => {
                let messages: Vec<PayloadRef<'_>> = messages.iter().map(Into::into).collect();
                match self.put(topic, &messages) {
                    Ok(()) => Outcome::Count(messages.len() as u64),
                    Err(failure) => failure,
                }
            }
            // The version 1 hot path: no batch to size, no list to build.
            Command::Get { topic } => {
                let Some(&position) = self.topic_index.get(topic) else {
                    return no_such_topic(topic);
                };
                match self.topics[position].take_ready() {
                    Some(taken) => {
                        self.messages -= 1;
                        self.payload_bytes -= taken.message.len();
                        Outcome::Message(taken.message)
                    }
                    None => empty(topic),
                }
            }
            Command::GetLeased { topic, lease } => match self.take(topic, 1, Some(*lease)) {
                Ok(mut taken) => Outcome::Delivered(taken.remove(0)),
                Err(failure) => failure,
            },
            Command::GetBatch { topic, max, lease } => {
                match self.take(topic, *max as usize, *lease) {
                    Ok(taken) if lease.is_some() => Outcome::Deliveries(taken),
                    Ok(taken) => {
                        Outcome::Messages(taken.into_iter().map(|taken| taken.message).collect())
                    }
                    Err(failure) => failure,
                }
            }
            Command::Ack { topic, receipt } => {
                self.settle_one(topic, receipt, |queue, position, seq, lease| {
                    queue.acknowledge(position, seq, lease)
                })
            }
            Command::AckBatch { topic, receipts } => {
                self.settle_many(topic, receipts, |queue, position, seq, lease| {
                    queue.acknowledge(position, seq, lease)
                })
            }
            Command::Nack { topic, receipt } => {
                self.settle_one(topic, receipt, |queue, position, seq, lease| {
                    queue.give_back(position, seq, lease)
                })
            }
            Command::NackBatch { topic, receipts } => {
                self.settle_many(topic, receipts, |queue, position, seq, lease| {
                    queue.give_back(position, seq, lease)
                })
            }
            Command::Touch {
                topic,
                receipt,
                lease,
            } => {
                let lease = self.on_log_clock(*lease);
                let Some(&position) = self.topic_index.get(topic) else {
                    return no_such_topic(topic);
                };
                let Some((seq, _)) = self.topics[position].lease_of(receipt) else {
                    return stale_receipt(topic, receipt);
                };
                let live = self.topics[position]
                    .leased
                    .get_mut(&seq)
                    .expect("lease_of found it");
                let removed = self.deadlines.remove(&(live.deadline_ms, position, seq));
                assert!(removed, "lease {receipt:?} missing from the deadline index");
                live.deadline_ms = lease.deadline_ms;
                self.deadlines.insert((lease.deadline_ms, position, seq));
                Outcome::Done
            }
            Command::EndLeases { now_ms } => {
                self.observe_clock(*now_ms);
                let due: Vec<(u64, usize, u64)> = self
                    .deadlines
                    .range(..=(*now_ms, usize::MAX, u64::MAX))
                    .copied()
                    .collect();
                for (deadline_ms, position, seq) in due {
                    self.deadlines.remove(&(deadline_ms, position, seq));
                    let lease = self.topics[position]
                        .leased
                        .remove(&seq)
                        .expect("every deadline names a live lease");
                    self.give_back(position, seq, lease);
                }
                Outcome::Done
            }
            Command::Clock { now_ms } => {
                self.observe_clock(*now_ms);
                Outcome::Done
            }
        }
    }

    fn observe_clock(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    /// Observes a grant's or TOUCH's time and gives its lease on the log's clock: one
    /// stamped behind a time already in the log (a new leader proposing before it applied
    /// the last entries of its predecessor, whose clock was further on) starts at that time
    /// instead, so it still lasts its whole length on the clock that ends it.
    fn on_log_clock(&mut self, lease: LeaseTime) -> LeaseTime {
        let length_ms = lease.deadline_ms.saturating_sub(lease.now_ms);
        self.observe_clock(lease.now_ms);
        LeaseTime::starting(self.clock_ms, length_ms)
    }

    fn create_topic(&mut self, topic: &str, settings: &TopicSettings) -> Outcome {
        if self.topic_index.contains_key(topic) {
            return failed(
                ErrorCode::TopicExists,
                format!("topic {topic:?} already exists"),
            );
        }
        // The gateway refuses these; a log written by a buggy or hostile leader must still
        // not break an invariant.
        if settings.max_deliveries == Some(0) || settings.dead_letter.as_deref() == Some(topic) {
            return failed(
                ErrorCode::BadRequest,
                format!("topic {topic:?}: invalid delivery settings {settings:?}"),
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
        self.add_topic(topic, settings.clone());
        Outcome::Done
    }

    fn add_topic(&mut self, topic: &str, settings: TopicSettings) -> usize {
        let position = self.topics.len();
        self.topic_index.insert(topic.to_string(), position);
        self.topics.push(Topic::new(topic.to_string(), settings));
        position
    }

    /// Appends `messages` to `topic` in order, all or none.
    fn put(&mut self, topic: &str, messages: &[PayloadRef<'_>]) -> Result<(), Outcome> {
        let Some(&position) = self.topic_index.get(topic) else {
            return Err(no_such_topic(topic));
        };
        let queued = self.queued_bytes();
        let charge = messages.iter().fold(0usize, |sum, message| {
            sum.saturating_add(message.len())
                .saturating_add(QUEUED_MESSAGE_OVERHEAD_BYTES)
        });
        if queued.saturating_add(charge) > self.config.queued_bytes_max {
            let what = if messages.len() == 1 {
                "message not queued".to_string()
            } else {
                format!("none of the {} messages queued", messages.len())
            };
            return Err(failed(
                ErrorCode::Quota,
                format!(
                    "{what}: {queued} bytes are queued and it needs {charge} more, over \
                     queued_bytes_max ({}); consume messages first",
                    self.config.queued_bytes_max
                ),
            ));
        }
        if let Some(large) = messages
            .iter()
            .find(|message| message.len() > fifo::MESSAGE_BYTES_MAX)
        {
            return Err(failed(
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes is over the queue's limit of {} bytes",
                    large.len(),
                    fifo::MESSAGE_BYTES_MAX
                ),
            ));
        }
        for &message in messages {
            self.topics[position].push_ref(message);
            self.messages += 1;
            self.payload_bytes += message.len();
        }
        Ok(())
    }

    /// Hands out up to `max` ready messages of `topic` (at least one, else `EMPTY`), fewer
    /// if more would carry over [`BATCH_MESSAGE_BYTES_MAX`]. Without `lease` they are
    /// popped; with it they stay, invisible, until ACK, NACK or the lease's end.
    fn take(
        &mut self,
        topic: &str,
        max: usize,
        lease: Option<LeaseTime>,
    ) -> Result<Vec<Delivery>, Outcome> {
        let lease = lease.map(|lease| self.on_log_clock(lease));
        let Some(&position) = self.topic_index.get(topic) else {
            return Err(no_such_topic(topic));
        };
        let mut count = 0;
        let mut bytes = 0usize;
        for length in self.topics[position].ready_lengths().take(max) {
            if count > 0 && bytes.saturating_add(length) > BATCH_MESSAGE_BYTES_MAX {
                break;
            }
            bytes = bytes.saturating_add(length);
            count += 1;
        }
        if count == 0 {
            return Err(empty(topic));
        }
        let granted_at = self.last_applied;
        let mut handed_out = Vec::with_capacity(count);
        for _ in 0..count {
            let Taken {
                seq,
                message,
                deliveries,
            } = self.topics[position]
                .take_ready()
                .expect("counted among the ready messages just above");
            match lease {
                None => {
                    self.messages -= 1;
                    self.payload_bytes -= message.len();
                    handed_out.push(Delivery {
                        message,
                        receipt: String::new(),
                        deliveries,
                    });
                }
                Some(lease) => {
                    let deliveries = deliveries + 1;
                    self.topics[position].leased.insert(
                        seq,
                        Lease {
                            message: message.clone(),
                            deliveries,
                            granted_at,
                            deadline_ms: lease.deadline_ms,
                        },
                    );
                    self.deadlines.insert((lease.deadline_ms, position, seq));
                    handed_out.push(Delivery {
                        message,
                        receipt: topic::receipt(granted_at, seq),
                        deliveries,
                    });
                }
            }
        }
        Ok(handed_out)
    }

    /// ACK or NACK of one receipt: `STALE_RECEIPT` unless it names a live lease.
    fn settle_one(
        &mut self,
        topic: &str,
        receipt: &str,
        settle: impl Fn(&mut Queue, usize, u64, Lease),
    ) -> Outcome {
        let Some(&position) = self.topic_index.get(topic) else {
            return no_such_topic(topic);
        };
        match self.end_lease(position, receipt) {
            Some((seq, lease)) => {
                settle(self, position, seq, lease);
                Outcome::Done
            }
            None => stale_receipt(topic, receipt),
        }
    }

    /// ACK or NACK of a list: each receipt that names a live lease takes effect, in list
    /// order; the others are listed in `stale`.
    fn settle_many(
        &mut self,
        topic: &str,
        receipts: &[String],
        settle: impl Fn(&mut Queue, usize, u64, Lease),
    ) -> Outcome {
        let Some(&position) = self.topic_index.get(topic) else {
            return no_such_topic(topic);
        };
        let mut stale = Vec::new();
        for receipt in receipts {
            match self.end_lease(position, receipt) {
                Some((seq, lease)) => settle(self, position, seq, lease),
                None => stale.push(receipt.clone()),
            }
        }
        Outcome::Stale(stale)
    }

    /// Removes the live lease `receipt` names in the topic at `position`.
    fn end_lease(&mut self, position: usize, receipt: &str) -> Option<(u64, Lease)> {
        let (seq, _) = self.topics[position].lease_of(receipt)?;
        let lease = self.topics[position]
            .leased
            .remove(&seq)
            .expect("lease_of found it");
        let removed = self.deadlines.remove(&(lease.deadline_ms, position, seq));
        assert!(removed, "lease {receipt:?} missing from the deadline index");
        Some((seq, lease))
    }

    /// An ACKed message is deleted.
    fn acknowledge(&mut self, _position: usize, _seq: u64, lease: Lease) {
        self.messages -= 1;
        self.payload_bytes -= lease.message.len();
    }

    /// A message whose lease ended or was NACKed goes back to its place, unless it has been
    /// delivered `max_deliveries` times: then it moves to the end of the topic's
    /// `dead_letter` topic (created if missing), or is discarded and counted.
    ///
    /// A dead-letter topic created here is not refused by `topics_max`: refusing would lose
    /// the message, and each topic names at most one dead-letter topic, so they are bounded
    /// by the topics created under the quota.
    fn give_back(&mut self, position: usize, seq: u64, lease: Lease) {
        let Lease {
            message,
            deliveries,
            ..
        } = lease;
        let settings = &self.topics[position].settings;
        let exhausted = settings
            .max_deliveries
            .is_some_and(|max_deliveries| deliveries >= max_deliveries);
        if !exhausted {
            self.topics[position].returned.insert(
                seq,
                Returned {
                    message,
                    deliveries,
                },
            );
            return;
        }
        match settings.dead_letter.clone() {
            Some(dead_letter) => {
                let target = match self.topic_index.get(&dead_letter) {
                    Some(&target) => target,
                    None => self.add_topic(&dead_letter, TopicSettings::default()),
                };
                self.topics[target].push(&message);
            }
            None => {
                self.topics[position].discarded += 1;
                self.messages -= 1;
                self.payload_bytes -= message.len();
            }
        }
    }

    /// The latest lease-clock time an applied entry carried (0 before any). A new leader's
    /// lease clock must start at or after it.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The earliest deadline of a live lease, on the lease clock: when the leader should
    /// next propose [`Command::EndLeases`].
    pub fn next_lease_deadline(&self) -> Option<u64> {
        self.deadlines
            .first()
            .map(|&(deadline_ms, _, _)| deadline_ms)
    }

    /// The live leases whose deadline is at or before `now_ms`, earliest first, as
    /// `(topic, receipt, deadline_ms)`: what an `EndLeases { now_ms }` would end.
    pub fn leases_due(&self, now_ms: u64) -> impl Iterator<Item = (&str, String, u64)> + '_ {
        self.deadlines.range(..=(now_ms, usize::MAX, u64::MAX)).map(
            |&(deadline_ms, position, seq)| {
                let topic = &self.topics[position];
                let lease = &topic.leased[&seq];
                (
                    topic.name.as_str(),
                    topic::receipt(lease.granted_at, seq),
                    deadline_ms,
                )
            },
        )
    }

    /// Every message `topic` holds, ready or leased, in the topic's order (the order in which
    /// they would be handed out if every lease ended now); `None` if there is no such topic.
    /// O(messages): for checkers and tests.
    pub fn held_messages(&self, topic: &str) -> Option<Vec<Payload>> {
        let &position = self.topic_index.get(topic)?;
        let topic = &self.topics[position];
        let mut returned_or_leased: Vec<(u64, &Payload)> = topic
            .returned
            .iter()
            .map(|(&seq, returned)| (seq, &returned.message))
            .chain(
                topic
                    .leased
                    .iter()
                    .map(|(&seq, lease)| (seq, &lease.message)),
            )
            .collect();
        returned_or_leased.sort_unstable_by_key(|(seq, _)| *seq);
        Some(
            returned_or_leased
                .into_iter()
                .map(|(_, message)| message.clone())
                .chain(topic.messages.iter().map(|message| message.to_payload()))
                .collect(),
        )
    }

    /// Every topic with its counts and settings, in creation order (`topic GET` with
    /// `detail`).
    pub fn topic_details(&self) -> Vec<TopicDetail> {
        self.topics.iter().map(Topic::detail).collect()
    }

    /// Each topic's name, the messages it holds (ready and leased) and their bytes, in
    /// creation order: for the metrics endpoint's busiest topics. O(topics + leased).
    pub fn topic_depths(&self) -> impl Iterator<Item = (&str, usize, usize)> + '_ {
        self.topics
            .iter()
            .map(|topic| (topic.name.as_str(), topic.len(), topic.payload_bytes()))
    }

    /// Topic names in creation order.
    pub fn topics(&self) -> Vec<String> {
        self.topics.iter().map(|topic| topic.name.clone()).collect()
    }

    /// Messages of `topic` a GET can hand out now; `None` if there is no such topic. For a
    /// leader deciding whether a blocking GET must wait (PROTOCOL.md §9).
    pub fn ready(&self, topic: &str) -> Option<usize> {
        let &position = self.topic_index.get(topic)?;
        Some(self.topics[position].ready())
    }

    /// Whether a command keyed `key` would be executed (rather than answered from its
    /// session, or refused) if it were applied now.
    pub fn session_would_execute(&self, key: &SessionKey) -> bool {
        self.sessions.admit(&key.client_id, key.seq) == Admission::Execute
    }

    /// Messages `topic` holds, ready or leased; `None` if there is no such topic.
    pub fn queued(&self, topic: &str) -> Option<usize> {
        let &position = self.topic_index.get(topic)?;
        Some(self.topics[position].len())
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
            topic.check_invariants();
            messages += topic.len();
            payload_bytes += topic.payload_bytes();
            for (&seq, lease) in &topic.leased {
                assert!(
                    self.deadlines.contains(&(lease.deadline_ms, position, seq)),
                    "lease {seq} of topic {:?} missing from the deadline index",
                    topic.name
                );
            }
        }
        assert_eq!(messages, self.messages, "message count");
        let leases: usize = self.topics.iter().map(|topic| topic.leased.len()).sum();
        assert_eq!(leases, self.deadlines.len(), "leases vs deadline index");
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

fn empty(topic: &str) -> Outcome {
    failed(ErrorCode::Empty, format!("topic {topic:?} has no message"))
}

fn stale_receipt(topic: &str, receipt: &str) -> Outcome {
    failed(
        ErrorCode::StaleReceipt,
        format!(
            "receipt {receipt:?} names no live lease in topic {topic:?}: never issued, already              acknowledged, or its lease ended"
        ),
    )
}

#[cfg(test)]
mod tests;
