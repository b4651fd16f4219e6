//! What happened in a run: the last few events for the failure report, and a digest of all
//! of them so a test can prove that a seed replays the same schedule.
//!
//! Events are small copyable summaries (a message without its entries, a `Ready` as its
//! first and last entry): recording happens thousands of times per run and formatting only
//! on failure.

use super::workload::{message_id, CommandKey};
use rrmq::protocol::Outcome;
use rrmq::raft::{
    AppendResult, EntryId, LogIndex, Message, MessageBody, NodeId, ProposeError, RejectHint, Role,
    Term,
};
use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};

/// A message without its payload.
#[derive(Clone, Debug, Hash)]
pub struct MessageSummary {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: BodySummary,
}

#[derive(Clone, Debug, Hash)]
pub enum BodySummary {
    RequestVote {
        pre_vote: bool,
        last_log: EntryId,
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    AppendEntries {
        prev: EntryId,
        entry_count: usize,
        commit: LogIndex,
    },
    AppendAccepted {
        match_index: LogIndex,
    },
    AppendRejected {
        prev_index: LogIndex,
        hint: HintSummary,
    },
    Heartbeat {
        commit: LogIndex,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    TimeoutNow,
    InstallSnapshot(EntryId),
}

#[derive(Clone, Copy, Debug, Hash)]
pub enum HintSummary {
    LogTooShort(LogIndex),
    ConflictingTerm(Term, LogIndex),
}

impl MessageSummary {
    pub fn of(message: &Message) -> MessageSummary {
        let body = match &message.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log,
                leadership_transfer,
            } => BodySummary::RequestVote {
                pre_vote: *pre_vote,
                last_log: *last_log,
                leadership_transfer: *leadership_transfer,
            },
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                BodySummary::RequestVoteResponse {
                    pre_vote: *pre_vote,
                    granted: *granted,
                }
            }
            MessageBody::AppendEntries {
                prev,
                entries,
                commit,
            } => BodySummary::AppendEntries {
                prev: *prev,
                entry_count: entries.len(),
                commit: *commit,
            },
            MessageBody::AppendEntriesResponse(AppendResult::Accepted { match_index }) => {
                BodySummary::AppendAccepted {
                    match_index: *match_index,
                }
            }
            MessageBody::AppendEntriesResponse(AppendResult::Rejected { prev_index, hint }) => {
                BodySummary::AppendRejected {
                    prev_index: *prev_index,
                    hint: match *hint {
                        RejectHint::LogTooShort { last_index } => {
                            HintSummary::LogTooShort(last_index)
                        }
                        RejectHint::ConflictingTerm {
                            conflict_term,
                            first_index,
                        } => HintSummary::ConflictingTerm(conflict_term, first_index),
                    },
                }
            }
            MessageBody::Heartbeat { commit, read_round } => BodySummary::Heartbeat {
                commit: *commit,
                read_round: *read_round,
            },
            MessageBody::HeartbeatResponse { read_round } => BodySummary::HeartbeatResponse {
                read_round: *read_round,
            },
            MessageBody::TimeoutNow => BodySummary::TimeoutNow,
            MessageBody::InstallSnapshot { snapshot } => {
                BodySummary::InstallSnapshot(snapshot.last)
            }
        };
        MessageSummary {
            from: message.from,
            to: message.to,
            term: message.term,
            body,
        }
    }
}

impl fmt::Display for MessageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}->n{} t{} ", self.from, self.to, self.term)?;
        match &self.body {
            BodySummary::RequestVote {
                pre_vote,
                last_log,
                leadership_transfer,
            } => write!(
                f,
                "{}Vote last {last_log}{}",
                if *pre_vote { "Pre" } else { "Request" },
                if *leadership_transfer {
                    " (transfer)"
                } else {
                    ""
                }
            ),
            BodySummary::RequestVoteResponse { pre_vote, granted } => write!(
                f,
                "{}VoteResponse {}",
                if *pre_vote { "Pre" } else { "" },
                if *granted { "granted" } else { "rejected" }
            ),
            BodySummary::AppendEntries {
                prev,
                entry_count,
                commit,
            } => write!(f, "Append prev {prev} +{entry_count} commit {commit}"),
            BodySummary::AppendAccepted { match_index } => {
                write!(f, "AppendAccepted {match_index}")
            }
            BodySummary::AppendRejected { prev_index, hint } => match hint {
                HintSummary::LogTooShort(last_index) => {
                    write!(
                        f,
                        "AppendRejected at {prev_index} (log ends at {last_index})"
                    )
                }
                HintSummary::ConflictingTerm(term, first_index) => write!(
                    f,
                    "AppendRejected at {prev_index} (holds term {term} from {first_index})"
                ),
            },
            BodySummary::Heartbeat { commit, read_round } => {
                write!(f, "Heartbeat commit {commit} round {read_round}")
            }
            BodySummary::InstallSnapshot(last) => write!(f, "InstallSnapshot up to {last}"),
            BodySummary::HeartbeatResponse { read_round } => {
                write!(f, "HeartbeatResponse round {read_round}")
            }
            BodySummary::TimeoutNow => write!(f, "TimeoutNow"),
        }
    }
}

/// A short name for a refusal, cheap to record.
pub fn error_name(error: &ProposeError) -> &'static str {
    match error {
        ProposeError::NotLeader { .. } => "NotLeader",
        ProposeError::TransferInProgress => "TransferInProgress",
        ProposeError::TooManyPendingReads => "TooManyPendingReads",
        ProposeError::UnknownPeer(_) => "UnknownPeer",
        ProposeError::ChangeInProgress => "ChangeInProgress",
        ProposeError::LeaderNotReady => "LeaderNotReady",
        ProposeError::InvalidChange(_) => "InvalidChange",
    }
}

/// A reply to a client, without its payload.
#[derive(Clone, Debug, Hash)]
pub enum ReplySummary {
    Done,
    Message(Option<u64>),
    Failed(&'static str),
    Other,
}

impl ReplySummary {
    pub fn of(outcome: &Outcome) -> ReplySummary {
        match outcome {
            Outcome::Done => ReplySummary::Done,
            Outcome::Message(payload) => ReplySummary::Message(message_id(payload)),
            Outcome::Failed(error) => ReplySummary::Failed(error.code.as_str()),
            _ => ReplySummary::Other,
        }
    }
}

impl fmt::Display for ReplySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplySummary::Done => write!(f, "Done"),
            ReplySummary::Message(Some(id)) => write!(f, "m{id}"),
            ReplySummary::Message(None) => write!(f, "a message without id"),
            ReplySummary::Failed(code) => write!(f, "{code}"),
            ReplySummary::Other => write!(f, "(other)"),
        }
    }
}

/// Where a node was when it crashed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CrashPoint {
    /// Between two ticks; a slow disk may still hold unfinished batches.
    BetweenTicks,
    /// Right after taking a `Ready` (its messages sent, its committed entries applied):
    /// nothing of its batch is durable.
    BeforePersist,
    /// In the middle of a sync group: the hard state file (written first when term or vote
    /// changed) may be durable, the group's record is not.
    MidSync,
    /// After a sync group is durable but before its `messages_after_persist` leave.
    AfterPersist,
}

#[derive(Clone, Debug, Hash)]
pub enum Event {
    Delivered(MessageSummary),
    Lost {
        message: MessageSummary,
        why: &'static str,
    },
    Role {
        node: NodeId,
        role: Role,
        term: Term,
    },
    Committed {
        node: NodeId,
        index: LogIndex,
    },
    Persisted {
        node: NodeId,
        hard_state: Option<(Term, Option<NodeId>, LogIndex)>,
        entries: Option<(EntryId, EntryId)>,
    },
    Propose {
        node: NodeId,
        command: CommandKey,
        outcome: Result<EntryId, &'static str>,
    },
    /// The node that accepted a proposal applied it and answered the client.
    Replied {
        node: NodeId,
        command: CommandKey,
        entry: EntryId,
        reply: ReplySummary,
        delivered: bool,
    },
    /// A client instance was refused SESSION_EXPIRED and starts over as `client`.
    NewClientId {
        client: u64,
    },
    SnapshotSaved {
        node: NodeId,
        last: EntryId,
        compact_to: LogIndex,
        storage_compacted: bool,
    },
    /// A node installed a snapshot from the leader into its state machine and storage.
    SnapshotInstalled {
        node: NodeId,
        last: EntryId,
    },
    SnapshotReported {
        leader: NodeId,
        follower: NodeId,
        delivered: bool,
    },
    ReadIssued {
        node: NodeId,
        read_id: u64,
        outcome: Result<(), &'static str>,
    },
    ReadConfirmed {
        node: NodeId,
        read_id: u64,
        index: LogIndex,
    },
    TransferLeader {
        node: NodeId,
        to: NodeId,
        outcome: Result<(), &'static str>,
    },
    Partition {
        description: String,
    },
    Crash {
        node: NodeId,
        point: CrashPoint,
    },
    /// A core built from durable storage: at boot (empty) or after a crash.
    Start {
        node: NodeId,
        term: Term,
        snapshot: LogIndex,
        last_index: LogIndex,
        commit: LogIndex,
    },
    LivenessPhase,
    MembershipProposed {
        node: NodeId,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        outcome: Result<LogIndex, &'static str>,
    },
    /// The node's transport reported its connection to `peer` dropped or restored.
    Connection {
        node: NodeId,
        peer: NodeId,
        lost: bool,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Delivered(message) => write!(f, "deliver {message}"),
            Event::Lost { message, why } => write!(f, "lost ({why}) {message}"),
            Event::Role { node, role, term } => write!(f, "n{node} is {role:?} in term {term}"),
            Event::Committed { node, index } => write!(f, "n{node} commit -> {index}"),
            Event::Persisted {
                node,
                hard_state,
                entries,
            } => {
                write!(f, "n{node} persisted")?;
                if let Some((term, vote, commit)) = hard_state {
                    write!(f, " term {term} vote {vote:?} commit {commit}")?;
                }
                if let Some((first, last)) = entries {
                    write!(f, " entries {first}..{last}")?;
                }
                Ok(())
            }
            Event::Propose {
                node,
                command,
                outcome,
            } => write!(f, "client: propose {command} to n{node}: {outcome:?}"),
            Event::Replied {
                node,
                command,
                entry,
                reply,
                delivered,
            } => write!(
                f,
                "client: n{node} answers {command} from {entry}: {reply}{}",
                if *delivered { "" } else { " (reply lost)" }
            ),
            Event::NewClientId { client } => {
                write!(f, "client: session expired, starting over as c{client}")
            }
            Event::SnapshotSaved {
                node,
                last,
                compact_to,
                storage_compacted,
            } => write!(
                f,
                "n{node} saved snapshot up to {last}, compacts log to {compact_to}{}",
                if *storage_compacted {
                    ""
                } else {
                    " (storage keeps it for now)"
                }
            ),
            Event::SnapshotInstalled { node, last } => {
                write!(f, "n{node} installed snapshot up to {last}")
            }
            Event::SnapshotReported {
                leader,
                follower,
                delivered,
            } => write!(
                f,
                "n{leader} transport reports snapshot to n{follower} {}",
                if *delivered { "delivered" } else { "failed" }
            ),
            Event::ReadIssued {
                node,
                read_id,
                outcome,
            } => write!(f, "client: read r{read_id} at n{node}: {outcome:?}"),
            Event::ReadConfirmed {
                node,
                read_id,
                index,
            } => write!(f, "n{node} confirms read r{read_id} at index {index}"),
            Event::TransferLeader { node, to, outcome } => {
                write!(f, "n{node} transfer leadership to n{to}: {outcome:?}")
            }
            Event::Partition { description } => write!(f, "network: {description}"),
            Event::Crash { node, point } => write!(f, "n{node} CRASH ({point:?})"),
            Event::Start {
                node,
                term,
                snapshot,
                last_index,
                commit,
            } => write!(
                f,
                "n{node} START from storage: term {term} snapshot {snapshot} last index \
                 {last_index} commit {commit}"
            ),
            Event::LivenessPhase => write!(f, "--- network healed: liveness phase ---"),
            Event::MembershipProposed {
                node,
                voters,
                learners,
                outcome,
            } => write!(
                f,
                "{node} proposes voters {voters:?} learners {learners:?}: {outcome:?}"
            ),
            Event::Connection { node, peer, lost } => write!(
                f,
                "n{node}: connection to n{peer} {}",
                if *lost { "DROPPED" } else { "restored" }
            ),
        }
    }
}

/// The last `capacity` events, plus a digest of every event ever recorded.
pub struct Trace {
    recent: VecDeque<(u64, Event)>,
    capacity: usize,
    recorded: u64,
    digest: StableHasher,
}

impl Trace {
    pub fn new(capacity: usize) -> Trace {
        Trace {
            recent: VecDeque::with_capacity(capacity),
            capacity,
            recorded: 0,
            digest: StableHasher::default(),
        }
    }

    pub fn record(&mut self, tick: u64, event: Event) {
        tick.hash(&mut self.digest);
        event.hash(&mut self.digest);
        self.recorded += 1;
        if self.capacity == 0 {
            return;
        }
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back((tick, event));
    }

    /// Identifies the whole sequence of events: equal digests mean (almost surely) equal runs.
    pub fn digest(&self) -> u64 {
        self.digest.finish()
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "last {} of {} events:", self.recent.len(), self.recorded)?;
        for (tick, event) in &self.recent {
            writeln!(f, "  t{tick:<5} {event}")?;
        }
        Ok(())
    }
}

/// A hasher with no random keys, so digests are equal across processes (FNV-1a's constants,
/// mixing a whole word at a time: the simulator hashes every event of every run, and
/// byte-at-a-time hashing is slow in debug builds). Not for adversarial input.
pub struct StableHasher(u64);

impl StableHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(23);
    }
}

impl Default for StableHasher {
    fn default() -> StableHasher {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.mix(u64::from_le_bytes(
                chunk.try_into().expect("chunks of 8 bytes"),
            ));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.mix(u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56));
    }

    fn write_u8(&mut self, value: u8) {
        self.mix(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.mix(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.mix(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.mix(value as u64);
    }
}
