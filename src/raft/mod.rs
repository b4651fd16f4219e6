//! The Raft consensus core: a deterministic state machine with no I/O.
//!
//! `Core` reads no clock, opens no socket or file, spawns no thread and owns its own seeded
//! RNG. Inputs arrive as method calls (`tick`, `step`, `propose`, `propose_membership`,
//! `read_index`, `transfer_leader`, `on_persisted`, and what the transport knows about connections:
//! `peer_connection_lost` / `_restored`); everything the outside world must do comes back
//! in a [`Ready`]. The same inputs always give the same outputs, which is what lets
//! `tests/simulation.rs` explore thousands of failure schedules from a seed. This is the
//! shape of etcd-io/raft's `Ready` loop and tikv/raft-rs's `RawNode`.
//!
//! # A dropped connection to the leader
//!
//! A leader whose process dies closes its TCP connections at once, but Raft alone notices
//! only when the election timeout runs out, and the leader lease (a follower that heard from
//! a leader recently refuses votes) then holds everyone back a while longer. The runtime may
//! report the drop ([`Core::peer_connection_lost`]): the follower then starts a pre-vote
//! within a few heartbeats and stops honouring that leader's lease. Safety does not depend
//! on it (it only moves an election earlier, and elections are always safe); neither does
//! the protection against disruption: a pre-vote still needs a majority, and the voters
//! still connected to a live leader keep refusing it. A leader that is merely slow or cut
//! off by a partition closes nothing, and is replaced after the election timeout as before.
//!
//! The runtime's loop around it:
//!
//! 1. feed inputs;
//! 2. `if core.has_ready() { let rd = core.ready(); ... }`;
//! 3. send `rd.messages` at once (a leader's appends may leave before its own copy is
//!    durable: Raft dissertation §10.2.1);
//! 4. persist `rd.hard_state` and `rd.entries` (durably: fsync), then send
//!    `rd.messages_after_persist` (votes and append acknowledgements promise durability) and
//!    call `core.on_persisted(last entry id of rd.entries)`;
//! 5. apply `rd.committed` in order and answer `rd.read_states` once applied far enough.
//!
//! # Membership changes
//!
//! The members live in the log: a change is an `EntryPayload::Membership` entry, and every
//! node acts on the latest membership in its log as soon as it appends it, committed or not
//! (a snapshot carries the membership as of its index for a log compacted past the
//! entries; the membership given to [`Core::new`] acts only until the log or snapshot holds
//! one). Truncating a conflicting suffix reverts to the membership before it. Changes are
//! single-server (Raft dissertation §4.1): one member added, promoted, demoted or removed
//! per entry, so any majority of the old voters overlaps any majority of the new ones and no
//! two leaders can be elected in one term however far the change has spread. It is simpler
//! than joint consensus (no two-phase configuration) and it is what etcd does. Rules:
//!
//! - one change at a time: a leader refuses a change while its log holds an uncommitted
//!   one ([`ProposeError::ChangeInProgress`]), and until it has committed an entry of its
//!   own term ([`ProposeError::LeaderNotReady`]: the dissertation's fix, else a change of a
//!   deposed leader still in flight could combine with a new one into two steps);
//! - a new node joins as a *learner*: it receives appends and snapshots but never counts
//!   toward commitment, elections or CheckQuorum, and never campaigns; the node layer
//!   promotes it once it has caught up (see [`ProgressStatus`]). A learner still answers a
//!   vote request by its log: the candidate's log may already make it a voter;
//! - a node started with `--join` is neither a member nor removed in the membership it
//!   knows: it follows any leader but neither votes nor campaigns until its log adds it;
//! - removed ids are retired for good ([`Membership::retired`]): a removed node never
//!   campaigns or grants votes, and vote requests from it are dropped, so one that missed
//!   its removal cannot disrupt the cluster (PreVote and CheckQuorum help as before). The
//!   leader keeps replicating to members the pending change removes, so they learn it;
//! - a leader that removes or demotes itself keeps leading (without counting itself) until
//!   the entry commits, then steps down and sends TimeoutNow to the most up-to-date voter.
//!
//! [`Ready::membership`] reports every change of the acting membership, for the transport
//! to connect to added members and drop removed ones.
//!
//! # Terms are bounded
//!
//! A term only grows, and a peer's message can raise it: one message at a term near
//! `u64::MAX`, adopted and persisted, would leave no term to campaign in. So every term the
//! core adopts, computes or sends is at most [`Term::MAX_SANE`]: it drops messages beyond
//! it (and messages whose terms contradict each other), refuses to campaign at it, and
//! counts both in [`Core::term_refusals`] for the runtime to log. A term restored from disk
//! may already be beyond it: see [`Core::new`].
//!
//! # Layers
//!
//! The crate is built in layers, each importing only from the layers below it:
//!
//! ```text
//! raft  ->  storage, queue, protocol  ->  config  ->  transport  ->  client  ->  node, cli  ->  bin
//! ```
//!
//! This module is the bottom one: it imports nothing from the crate outside `src/raft`, so
//! the core can be read, tested and simulated without any of the rest. Types the layers
//! above need to talk to the core live here, even when another layer builds them
//! ([`InitialState`] is filled in by `storage` on restart). A lower layer never imports a
//! higher one; a type two layers share goes down to the lower of the two.

#![warn(missing_docs)]

mod engine;
mod log;
pub mod membership;
pub mod message;
mod progress;

pub use engine::Core;
pub use membership::{ChangeKind, Member, Membership};

pub use message::{
    AppendResult, Entry, EntryId, EntryPayload, HardState, LogIndex, Message, MessageBody, NodeId,
    RejectHint, SnapshotMeta, Term,
};

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's role (Raft §5.1). PreVote campaigning (dissertation §9.6) is reported as
/// `Candidate` to clients; `PreCandidate` exists so the core can tell them apart.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one), answering votes and appends.
    Follower,
    /// Asking whether it could win an election, without raising its term yet.
    PreCandidate,
    /// Campaigning for votes in a new term.
    Candidate,
    /// Elected for the current term: takes proposals and replicates them.
    Leader,
}

impl Role {
    /// The name clients see in `status` replies: PROTOCOL.md §3 knows three roles.
    pub fn client_name(self) -> &'static str {
        match self {
            Role::Follower => "Follower",
            Role::PreCandidate | Role::Candidate => "Candidate",
            Role::Leader => "Leader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.client_name())
    }
}

/// Timing and flow-control knobs of the core, in ticks and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// An election timeout is drawn uniformly from `election_ticks_min..election_ticks_max`.
    pub election_ticks_min: u32,
    /// Exclusive upper end of the election timeout range (see `election_ticks_min`).
    pub election_ticks_max: u32,
    /// A leader sends heartbeats every this many ticks. Must be below `election_ticks_min`.
    pub heartbeat_ticks: u32,
    /// Upper bound on the entries' bytes in one AppendEntries (at least one entry is sent).
    pub append_bytes_max: usize,
    /// AppendEntries sent to one follower and not yet acknowledged, at most.
    pub inflight_appends_max: usize,
    /// Upper bound on the entries' bytes in one `Ready::committed` (at least one entry is
    /// handed out). A node replaying a long log after a restart then applies it in slices
    /// and keeps answering in between.
    pub committed_bytes_max: usize,
    /// ReadIndex requests waiting for confirmation, at most.
    pub pending_reads_max: usize,
    /// A snapshot sent to a follower and not acknowledged within this many ticks is
    /// considered lost, and the follower is probed again (which sends it again).
    pub snapshot_timeout_ticks: u32,
    /// Run a PreVote round before raising the term (dissertation §9.6), so a node that was
    /// cut off does not disrupt the cluster when it comes back.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within an election timeout steps down
    /// (dissertation §6.2), and a node that heard from a leader within the minimum election
    /// timeout ignores vote requests (§4.2.3).
    pub check_quorum: bool,
}

impl Default for RaftConfig {
    fn default() -> RaftConfig {
        RaftConfig {
            election_ticks_min: 30,
            election_ticks_max: 60,
            heartbeat_ticks: 5,
            append_bytes_max: 1024 * 1024,
            inflight_appends_max: 64,
            committed_bytes_max: 1024 * 1024,
            pending_reads_max: 4096,
            snapshot_timeout_ticks: 3000,
            pre_vote: true,
            check_quorum: true,
        }
    }
}

/// Why the core refused a proposal, read or transfer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals and reads.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any: where the client should go.
        leader: Option<NodeId>,
    },
    /// The leader is handing over and refuses new work until the transfer ends.
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    /// `RaftConfig::pending_reads_max` reads are already waiting.
    #[error("too many pending reads")]
    TooManyPendingReads,
    /// A transfer named a node that is not a voter of this cluster.
    #[error("no such peer {0}")]
    UnknownPeer(NodeId),
    /// A membership change is already in the log and not yet committed: one at a time.
    #[error("a membership change is in progress")]
    ChangeInProgress,
    /// This leader has not yet committed an entry of its own term: it does not yet know
    /// that no change of an earlier leader is still in flight (dissertation §4.1, the
    /// bug fix). Retry shortly.
    #[error("the leader has not yet committed an entry of its term")]
    LeaderNotReady,
    /// The proposed membership is not one single-server step from the current one.
    #[error("invalid membership change: {0}")]
    InvalidChange(String),
}

/// A ReadIndex request that may be answered once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the runtime gave `Core::read_index`.
    pub read_id: u64,
    /// The commit index when the read arrived: answer once applied up to here.
    pub index: LogIndex,
}

/// Everything the runtime must do after feeding the core. See the module docs for the order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// A snapshot received from the leader that replaces this node's log and state machine:
    /// install it (its data arrived with the `InstallSnapshot` message) before persisting
    /// `entries` and applying `committed`, which follow it.
    pub snapshot: Option<SnapshotMeta>,
    /// Persist when `Some` (it changed). Durable before `messages_after_persist` leave.
    pub hard_state: Option<HardState>,
    /// Persist, truncating any stored suffix from `entries[0].index` on.
    pub entries: Vec<Entry>,
    /// May be sent at once, before persisting.
    pub messages: Vec<Message>,
    /// Sent only after `hard_state` and `entries` are durable.
    pub messages_after_persist: Vec<Message>,
    /// Committed (durable on a majority, not necessarily yet on this node); apply in order.
    pub committed: Vec<Entry>,
    /// Reads confirmed by a quorum; answer each once applied up to its index.
    pub read_states: Vec<ReadState>,
    /// Reads that will never be confirmed (leadership was lost): answer them as failed.
    pub aborted_reads: Vec<u64>,
    /// The membership this node acts on, when it changed since the last `Ready` (a
    /// membership entry appended or truncated away, a snapshot installed): the runtime
    /// connects to added members and drops removed ones.
    pub membership: Option<Membership>,
}

/// Replication progress of one follower, as the leader tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressStatus {
    /// The follower.
    pub id: NodeId,
    /// The last index known to be replicated on the follower.
    pub match_index: LogIndex,
    /// The next index the leader will send it.
    pub next_index: LogIndex,
    /// Whether the leader is pipelining (true) or probing for the follower's position.
    pub replicating: bool,
    /// Whether the follower is a voter in the membership the leader acts on (false: a
    /// learner, whose `match_index` tells how far it has caught up).
    pub voter: bool,
}

/// Where a core starts: what the node's storage held when it was opened (a new node starts
/// from the default, an empty log at term 0). Built by the storage layer on restart and
/// handed to [`Core::new`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The newest snapshot the node holds (`0@0`: none); the state machine is loaded from it
    /// and the log continues after it.
    ///
    /// A store fills in the last snapshot installed with `LogStore::install_snapshot` (while
    /// compaction has not deleted that record): its log restarts there. The node replaces it
    /// with the snapshot file it loads, after checking that the entries continue right after
    /// that file (`node::recovery`).
    pub snapshot: SnapshotMeta,
    /// The last durable term and vote, and a commit index no higher than the last entry (only
    /// a hint: the core re-learns the commit index from the leader).
    pub hard_state: HardState,
    /// Contiguous entries, indexes ascending. From `snapshot.last.index + 1` unless the log
    /// was compacted (`LogStore::compact_to`), which may leave entries a snapshot covers or
    /// start the log later: the core drops covered entries, the node refuses a gap.
    pub entries: Vec<Entry>,
}

impl InitialState {
    /// The index of the last restored entry, or the snapshot's index for an empty log
    /// (`ZERO` when there is neither).
    pub fn last_index(&self) -> LogIndex {
        self.entries
            .last()
            .map_or(self.snapshot.last.index, |entry| entry.index)
    }
}

/// What the core refused because a term was out of bounds, counted since it was created.
///
/// The core only counts (and logs at debug level): a peer, or anyone who can reach the peer
/// port, can send such messages at will, so the runtime reads these counters and logs the
/// increase at most once in a while.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TermRefusals {
    /// Messages dropped unread because their term is beyond [`Term::MAX_SANE`]: no honest
    /// node sends one, and adopting it would exhaust this node's terms.
    pub absurd_term: u64,
    /// Messages dropped unread because a term they carry inside (an entry's, the previous
    /// entry's, the candidate's last entry's, a snapshot's, a rejection's conflict term) is
    /// above the message's own term, which no honest node sends (a node never holds an entry
    /// of a term it has not reached), or because an append's entries do not follow `prev`
    /// one index after the other with terms that never decrease, or because a "log too
    /// short" rejection claims a last index at or beyond the index it rejects, or because
    /// it speaks for the leader of a term whose leader this node knows to be another (or
    /// itself): Raft elects one leader per term.
    pub malformed: u64,
    /// Election timeouts (or TimeoutNow requests) on which this node did not campaign because
    /// its term is [`Term::MAX_SANE`] or beyond.
    pub campaign_refused: u64,
    /// The sender and term of the last message dropped for either reason above.
    pub last_dropped: Option<(NodeId, Term)>,
}

/// A snapshot of the core's externally interesting state, for `status` replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreStatus {
    /// This node.
    pub id: NodeId,
    /// Its current role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader of `term` it knows of, if any (itself when leader).
    pub leader: Option<NodeId>,
    /// The highest index known to be committed.
    pub commit_index: LogIndex,
    /// The last index handed out in `Ready::committed` (or installed by a snapshot).
    pub applied_index: LogIndex,
    /// The last index covered by the newest snapshot; the log starts after it.
    pub snapshot_index: LogIndex,
    /// The index of the last entry in the log, durable or not.
    pub last_index: LogIndex,
    /// Empty unless leader.
    pub progress: Vec<ProgressStatus>,
    /// The membership this node acts on (the latest in its log or snapshot).
    pub membership: Membership,
    /// The index of the entry that set `membership` (the snapshot's index when it came
    /// from a snapshot, `ZERO` for the initial one).
    pub membership_index: LogIndex,
    /// Whether `membership`'s entry is committed (false while a change is in progress).
    pub membership_committed: bool,
}
