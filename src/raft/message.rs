//! The vocabulary of the Raft core: positions in the log, entries, hard state and the
//! messages peers exchange.
//!
//! Positions are newtypes so that a term is never passed where an index is expected
//! (etcd-io/raft `entryID`, openraft `LogId`). Everything here is plain data with serde
//! derives: the transport encodes it with MessagePack, the WAL with its own framing.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A Raft term. Terms only ever grow on a node (Raft §5.1).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(pub u64);

/// A position in the log. Index 0 is the empty prefix that every log shares; the first real
/// entry has index 1.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LogIndex(pub u64);

/// A node's id: its position in the cluster configuration's `addresses`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);

    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one; `ZERO.prev()` is `ZERO`.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one entry: two logs holding entries with the same `EntryId` agree on every
/// entry up to it (Log Matching, Raft §5.3).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct EntryId {
    pub term: Term,
    pub index: LogIndex,
}

impl EntryId {
    pub fn new(term: Term, index: LogIndex) -> EntryId {
        EntryId { term, index }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.index, self.term)
    }
}

/// What an entry carries. The core never looks inside a command: it is the state machine's
/// encoded operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by a new leader so that entries of earlier terms commit promptly (Raft §5.4.2,
    /// §8).
    Noop,
    Command(Bytes),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub payload: EntryPayload,
}

impl Entry {
    pub fn id(&self) -> EntryId {
        EntryId::new(self.term, self.index)
    }

    /// Approximate size in bytes, used to bound batches; not the encoded size.
    pub fn size_bytes(&self) -> usize {
        const OVERHEAD_BYTES: usize = 24;
        OVERHEAD_BYTES
            + match &self.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Command(data) => data.len(),
            }
    }
}

/// The point a snapshot covers: the state machine after applying every entry up to and
/// including `last`. The snapshot's data lives outside the core (the runtime writes, streams
/// and loads it); the core only needs to know where the log may start.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SnapshotMeta {
    pub last: EntryId,
}

impl SnapshotMeta {
    pub fn index(&self) -> LogIndex {
        self.last.index
    }
}

/// The state that must be durable before the node acts on it: the current term and the vote
/// cast in it (Raft §5.1, Figure 2 "persistent state"), plus the commit index, which is only a
/// hint after a restart and may be persisted lazily.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: LogIndex,
}

/// A message between two cores. `term` is the sender's current term, except for a PreVote
/// request, which carries the term the sender would campaign in (its term + 1) without having
/// adopted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Raft §5.2 RequestVote, or the PreVote round before it (dissertation §9.6).
    RequestVote {
        pre_vote: bool,
        last_log: EntryId,
        /// Set when the election follows a TimeoutNow: voters then ignore their leader lease
        /// (dissertation §3.10).
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    /// Raft §5.3 AppendEntries. `prev` is the entry just before `entries`.
    AppendEntries {
        prev: EntryId,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    AppendEntriesResponse(AppendResult),
    /// Keeps followers' election timers quiet, carries the commit index up to what the
    /// follower is known to hold, and confirms leadership for ReadIndex rounds.
    Heartbeat {
        commit: LogIndex,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// Leadership transfer: the receiver starts an election at once (dissertation §3.10).
    TimeoutNow,
    /// The leader has compacted entries the follower still needs: install this snapshot
    /// (Raft §7). The data is not in the message: the transport streams it in chunks and
    /// delivers this message only once the whole snapshot has arrived intact.
    InstallSnapshot {
        snapshot: SnapshotMeta,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log now matches the leader's up to `match_index`.
    Accepted { match_index: LogIndex },
    /// The consistency check failed at `prev_index`. The hint lets the leader skip a whole
    /// term per round trip instead of one entry (Raft §5.3, "fast backtracking").
    Rejected {
        prev_index: LogIndex,
        hint: RejectHint,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectHint {
    /// The follower's log ends before `prev_index`: retry from `last_index + 1`.
    LogTooShort { last_index: LogIndex },
    /// The follower holds `conflict_term` at `prev_index`; the first entry of that term in its
    /// log is at `first_index`.
    ConflictingTerm {
        conflict_term: Term,
        first_index: LogIndex,
    },
}
