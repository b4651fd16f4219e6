//! The vocabulary of the Raft core: positions in the log, entries, hard state and the
//! messages peers exchange.
//!
//! Positions are newtypes so that a term is never passed where an index is expected
//! (etcd-io/raft `entryID`, openraft `LogId`). Everything here is plain data with serde
//! derives: the transport encodes it with MessagePack, the WAL with its own framing.

use super::membership::Membership;
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

impl Term {
    /// The highest term a core adopts, campaigns in or accepts in a message: 2^48.
    ///
    /// Terms are `u64` on the wire and on disk and only ever grow, so a single frame at a
    /// term near `u64::MAX` (forged, or a bit flipped in transit) would, once adopted and
    /// persisted, leave the node unable to campaign again: `term + 1` overflows. With a
    /// bound far below `u64::MAX` the core can refuse such terms instead: a message beyond
    /// it is dropped, and a node at it refuses to campaign, so no term the core computes
    /// (`term + 1` for a vote or a PreVote request) ever exceeds the bound or overflows.
    ///
    /// No real cluster gets near it: electing a new leader every millisecond, it takes
    /// about 8,900 years to reach 2^48. A node whose stored term is already beyond it (a
    /// disk written before the bound existed) starts, but never campaigns or answers; see
    /// [`Core::new`](crate::raft::Core::new).
    pub const MAX_SANE: Term = Term(1 << 48);

    /// Whether a core may hold this term: at most [`Term::MAX_SANE`].
    pub fn is_sane(self) -> bool {
        self <= Term::MAX_SANE
    }

    /// The term after this one, or `None` if that would be beyond [`Term::MAX_SANE`] (the
    /// node can go no higher, and must not campaign).
    pub fn next_sane(self) -> Option<Term> {
        (self < Term::MAX_SANE).then(|| Term(self.0 + 1))
    }
}

impl LogIndex {
    /// The empty prefix: no entry has this index.
    pub const ZERO: LogIndex = LogIndex(0);

    /// The index after this one.
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
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
}

impl EntryId {
    /// The entry at `index` created in `term`.
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
    /// A state machine command, as the client's request was encoded (`queue::LoggedCommand`).
    Command(Bytes),
    /// The cluster's membership from this entry on (single-server change, dissertation
    /// §4.1): every node acts on the latest one in its log, committed or not.
    Membership(Membership),
}

/// One log entry: what the leader of `term` put at `index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// The entry's `(term, index)`.
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
                EntryPayload::Membership(membership) => {
                    membership
                        .members
                        .iter()
                        .map(|member| 16 + member.info.len())
                        .sum::<usize>()
                        + 8 * membership.retired.len()
                }
            }
    }
}

/// The point a snapshot covers: the state machine after applying every entry up to and
/// including `last`, and the membership as of `last`. The snapshot's data lives outside the
/// core (the runtime writes, streams and loads it); the core only needs to know where the
/// log may start and who the members were there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry the snapshot covers (`0@0`: no snapshot).
    pub last: EntryId,
    /// The membership as of `last` (the latest `Membership` entry at or before it). Empty
    /// when not known (a snapshot written before memberships were logged): the core then
    /// keeps the membership it was created with.
    #[serde(default)]
    pub membership: Membership,
}

impl SnapshotMeta {
    /// A snapshot at `last` with no membership recorded (see `membership`).
    pub fn at(last: EntryId) -> SnapshotMeta {
        SnapshotMeta {
            last,
            membership: Membership::default(),
        }
    }

    /// The index of the last entry the snapshot covers.
    pub fn index(&self) -> LogIndex {
        self.last.index
    }
}

/// The state that must be durable before the node acts on it: the current term and the vote
/// cast in it (Raft §5.1, Figure 2 "persistent state"), plus the commit index, which is only a
/// hint after a restart and may be persisted lazily.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The node's current term. Invariant: never decreases.
    pub term: Term,
    /// The candidate voted for in `term`, if any. Invariant: never changes within a term once
    /// set.
    pub vote: Option<NodeId>,
    /// The highest index known to be committed (a hint after a restart).
    pub commit: LogIndex,
}

/// A message between two cores. `term` is the sender's current term, except for a PreVote
/// request, which carries the term the sender would campaign in (its term + 1) without having
/// adopted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term (for a PreVote request, the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of message two cores exchange, each named after the Raft RPC it carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Raft §5.2 RequestVote, or the PreVote round before it (dissertation §9.6).
    RequestVote {
        /// A PreVote request: the receiver answers without adopting the term or voting.
        pre_vote: bool,
        /// The candidate's last entry, for the up-to-date check (Raft §5.4.1).
        last_log: EntryId,
        /// Set when the election follows a TimeoutNow: voters then ignore their leader lease
        /// (dissertation §3.10).
        leadership_transfer: bool,
    },
    /// The answer to a `RequestVote`.
    RequestVoteResponse {
        /// Answers a PreVote request.
        pre_vote: bool,
        /// Whether the vote (or pre-vote) was granted.
        granted: bool,
    },
    /// Raft §5.3 AppendEntries. `prev` is the entry just before `entries`.
    AppendEntries {
        /// The entry just before `entries`, which the follower must hold (consistency check).
        prev: EntryId,
        /// New entries, contiguous from `prev.index + 1`; empty to probe.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: LogIndex,
    },
    /// The answer to an `AppendEntries`.
    AppendEntriesResponse(AppendResult),
    /// Keeps followers' election timers quiet, carries the commit index up to what the
    /// follower is known to hold, and confirms leadership for ReadIndex rounds.
    Heartbeat {
        /// The leader's commit index, capped at what the follower is known to hold.
        commit: LogIndex,
        /// The ReadIndex round this heartbeat belongs to; echoed back in the response.
        read_round: u64,
    },
    /// The answer to a `Heartbeat`: the follower still takes the sender for its leader.
    HeartbeatResponse {
        /// The `read_round` of the heartbeat answered.
        read_round: u64,
    },
    /// Leadership transfer: the receiver starts an election at once (dissertation §3.10).
    TimeoutNow,
    /// The leader has compacted entries the follower still needs: install this snapshot
    /// (Raft §7). The data is not in the message: the transport streams it in chunks and
    /// delivers this message only once the whole snapshot has arrived intact.
    InstallSnapshot {
        /// The snapshot the delivered data holds.
        snapshot: SnapshotMeta,
    },
}

/// How a follower answered an `AppendEntries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log now matches the leader's up to `match_index`.
    Accepted {
        /// The last index the follower's log shares with the leader's.
        match_index: LogIndex,
    },
    /// The consistency check failed at `prev_index`. The hint lets the leader skip a whole
    /// term per round trip instead of one entry (Raft §5.3, "fast backtracking").
    Rejected {
        /// The `prev.index` of the rejected `AppendEntries`.
        prev_index: LogIndex,
        /// Where the leader should try next.
        hint: RejectHint,
    },
}

/// What a rejecting follower tells the leader about its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectHint {
    /// The follower's log ends before `prev_index`: retry from `last_index + 1`.
    LogTooShort {
        /// The follower's last index.
        last_index: LogIndex,
    },
    /// The follower holds `conflict_term` at `prev_index`; the first entry of that term in its
    /// log is at `first_index`.
    ConflictingTerm {
        /// The term the follower holds at `prev_index`.
        conflict_term: Term,
        /// The follower's first entry of `conflict_term`.
        first_index: LogIndex,
    },
}
