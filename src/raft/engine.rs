//! The Raft state machine proper: elections, replication, commitment, ReadIndex and
//! leadership transfer, driven only by method calls.
//!
//! Everything that leaves the core is queued in `Core` and handed out by [`Core::ready`]; see
//! the `raft` module docs for the runtime's side of the contract. Messages are kept in two
//! queues: a leader's AppendEntries, heartbeats and TimeoutNow may leave at once, before its
//! own log is durable (Raft dissertation §10.2.1), while everything else (votes, append
//! acknowledgements, a candidate's vote requests) leaves only after the hard state and entries
//! of the same `Ready` are durable, because each of them promises something about storage.

use super::log::RaftLog;
use super::membership::{ChangeKind, Membership};
use super::message::{
    AppendResult, Entry, EntryId, EntryPayload, HardState, LogIndex, Message, MessageBody, NodeId,
    RejectHint, SnapshotMeta, Term,
};
use super::progress::Progress;
use super::{
    CoreStatus, InitialState, ProgressStatus, ProposeError, RaftConfig, ReadState, Ready, Role,
    TermRefusals,
};

use bytes::Bytes;
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where a node restarted from lost state stands in catching up (see
/// [`Core::abstain_until_caught_up`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CatchUp {
    /// A full member: votes and campaigns.
    Done,
    /// Waiting to hear from a leader what its commit index is.
    AwaitingLeader,
    /// Abstaining until the commit index reaches this.
    UntilCommitted(LogIndex),
}

/// A leadership transfer in progress (dissertation §3.10).
struct Transfer {
    target: NodeId,
    elapsed_ticks: u32,
}

/// Linearizable reads without writing the log (dissertation §6.4, ReadIndex).
///
/// A read is confirmed by a heartbeat *round*: the leader numbers each round it starts and a
/// follower echoes the number back. A follower acknowledging round `r` proves the leader was
/// still leader when it sent `r`, so every read registered before `r` was sent is confirmed
/// once a majority acknowledged `r` or later.
#[derive(Default)]
struct ReadQueue {
    /// Reads that arrived before this leader committed an entry of its own term: until then
    /// it does not know the true commit index (dissertation §6.4 step 1).
    awaiting_term_commit: Vec<u64>,
    /// Reads registered since the last round was started.
    unsent: Vec<u64>,
    /// Reads waiting for their round to be acknowledged, in round order.
    pending: VecDeque<PendingRead>,
    /// The last round started in this term.
    round: u64,
}

struct PendingRead {
    read_id: u64,
    index: LogIndex,
    round: u64,
}

impl ReadQueue {
    fn len(&self) -> usize {
        self.awaiting_term_commit.len() + self.unsent.len() + self.pending.len()
    }

    fn drain_all(&mut self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.awaiting_term_commit.drain(..).collect();
        ids.append(&mut self.unsent);
        ids.extend(self.pending.drain(..).map(|read| read.read_id));
        ids
    }
}

/// One node's Raft consensus core: its term, vote, role, log (persisted prefix and unstable
/// tail) and, as leader, the followers' progress and the pending ReadIndex reads.
///
/// It is a deterministic state machine: the runtime feeds it inputs (`tick`, `step`,
/// `propose`, `read_index`, `transfer_leader`, `on_persisted`, `on_snapshot_saved`,
/// `report_snapshot`, `peer_connection_lost`, `peer_connection_restored`) and collects what
/// to do with [`Core::ready`], in the order the `raft` module docs give. It reads no clock,
/// does no I/O and draws randomness only from the seed given to [`Core::new`], so the same
/// inputs always give the same outputs. It panics, with node id and term, only on a broken
/// invariant (a bug); [`Core::check_invariants`] asserts them on demand.
pub struct Core {
    id: NodeId,
    /// The membership given to `Core::new`: acted on until the log or a snapshot holds one.
    initial: Membership,
    /// The memberships the log holds, oldest first: the first is the base (from the
    /// snapshot, or `initial` at the snapshot's index), then one per `Membership` entry in
    /// the log. The last is the one this node acts on. Invariant: never empty, indexes
    /// ascending, every one after the first matches an entry of the log.
    configs: Vec<Config>,
    /// The acting membership changed since the last `Ready`.
    membership_changed: bool,
    config: RaftConfig,
    rng: ChaCha8Rng,

    /// Invariant: never decreases.
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// The newest snapshot the runtime holds: what a follower behind the log's start gets.
    /// Invariant: `log.offset().index <= snapshot.index() <= applied`.
    snapshot: SnapshotMeta,
    /// A snapshot from the leader, installed in the log, that the runtime has yet to install.
    snapshot_to_install: Option<SnapshotMeta>,

    /// Ticks since the leader was last heard from (follower), since the election started
    /// (candidate), or since the last CheckQuorum round (leader).
    election_elapsed_ticks: u32,
    heartbeat_elapsed_ticks: u32,
    randomized_election_ticks: u32,

    /// Votes received in the current (pre-)election, by voter.
    votes: BTreeMap<NodeId, bool>,
    /// Leader only: one entry per other voter.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader only: new entries to send at the next `ready()`, so that every proposal made
    /// between two `ready()` calls travels in one AppendEntries (batching).
    broadcast_pending: bool,
    transfer: Option<Transfer>,
    reads: ReadQueue,
    catch_up: CatchUp,

    /// The hard state last handed out in a `Ready`.
    hard_state_handed_out: HardState,
    messages: Vec<Message>,
    messages_after_persist: Vec<Message>,
    read_states: Vec<ReadState>,
    aborted_reads: Vec<u64>,

    /// The term and commit index seen by the last `check_invariants`, to assert that
    /// neither ever moves back.
    checked_high_water: Cell<(Term, LogIndex)>,
    /// Messages dropped and campaigns refused for their terms (see [`Term::MAX_SANE`]).
    term_refusals: TermRefusals,
    /// Peers whose connection from this node the runtime reported dropped and not yet
    /// restored ([`Core::peer_connection_lost`]). A leader in here holds no lease over this
    /// node's votes.
    lost_connections: BTreeSet<NodeId>,
    /// A follower whose connection to its leader dropped: the pre-vote it starts early.
    /// Called off by any change of role or term, and by the connection coming back (a
    /// heartbeat does not: it may have left before the leader died).
    /// Invariant: `None` unless `role == Follower`.
    early_campaign: Option<EarlyCampaign>,
}

/// A membership and the entry that set it.
#[derive(Clone, Debug)]
struct Config {
    /// The entry (or the snapshot's last entry) that set it; `0@0` for the initial one.
    id: EntryId,
    membership: Membership,
}

/// A pre-vote due before the election timeout (see [`Core::peer_connection_lost`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EarlyCampaign {
    /// The leader whose connection dropped.
    leader: NodeId,
    /// Ticks until the pre-vote; at least 1.
    ticks_left: u32,
}

impl Core {
    /// A core for node `id`, resuming from what storage held. `seed` drives the randomized
    /// election timeouts.
    ///
    /// `initial` is the membership from the cluster's configuration file. The core acts on
    /// it only until its snapshot or log holds one (a node restarted after changes uses its
    /// own). A node that is not in the membership it acts on and was never removed from it
    /// is *joining* (`--join`): it takes appends and snapshots from a leader, but neither
    /// votes nor campaigns until its log makes it a member.
    ///
    /// A restored term beyond [`Term::MAX_SANE`] (persisted by a build that adopted any term
    /// a peer sent) is kept, since a term never goes back and the vote cast in it must hold,
    /// and logged as an error: such a node never campaigns, and sends nothing (every message
    /// it would send carries that term, which peers drop). It is harmless but useless; the
    /// operator wipes its data dir and restarts it with `--rejoin`.
    pub fn new(
        id: NodeId,
        initial: Membership,
        config: RaftConfig,
        restored: InitialState,
        seed: u64,
    ) -> Core {
        let mut initial = initial;
        initial.normalize();
        assert!(
            config.heartbeat_ticks > 0
                && config.heartbeat_ticks < config.election_ticks_min
                && config.election_ticks_min < config.election_ticks_max,
            "invalid timing: {config:?}"
        );
        let hard_state = restored.hard_state;
        let mut configs = vec![Config {
            id: restored.snapshot.last,
            membership: if restored.snapshot.membership.is_empty() {
                initial.clone()
            } else {
                restored.snapshot.membership.clone()
            },
        }];
        for entry in &restored.entries {
            if let EntryPayload::Membership(membership) = &entry.payload {
                if entry.index > restored.snapshot.index() {
                    configs.push(Config {
                        id: entry.id(),
                        membership: membership.clone(),
                    });
                }
            }
        }
        let snapshot = SnapshotMeta {
            last: restored.snapshot.last,
            membership: configs[0].membership.clone(),
        };
        let log = RaftLog::restore(
            restored.snapshot.clone(),
            restored.entries,
            hard_state.commit,
        );
        let mut core = Core {
            id,
            initial,
            configs,
            membership_changed: false,
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            snapshot,
            snapshot_to_install: None,
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_ticks: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            broadcast_pending: false,
            transfer: None,
            reads: ReadQueue::default(),
            catch_up: CatchUp::Done,
            hard_state_handed_out: hard_state,
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            read_states: Vec::new(),
            aborted_reads: Vec::new(),
            checked_high_water: Cell::new((hard_state.term, LogIndex::ZERO)),
            term_refusals: TermRefusals::default(),
            lost_connections: BTreeSet::new(),
            early_campaign: None,
        };
        if !hard_state.term.is_sane() {
            log::error!(
                "node {id}: restored term {} is beyond the highest sane term {}: this node \
                 will never campaign or answer; wipe its data dir and restart it with --rejoin",
                hard_state.term,
                Term::MAX_SANE
            );
        }
        core.hard_state_handed_out.commit = core.log.committed();
        core.reset_randomized_election_timeout();
        core
    }

    /// For a node restarted after losing its state (its data dir was wiped): it neither votes
    /// nor campaigns until it has caught up with a live leader's commit index as of first
    /// contact.
    ///
    /// Raft's safety rests on votes and log entries surviving restarts (§5.2, §5.4). A node
    /// that lost them could vote twice in a term, or vote for a candidate that lacks entries
    /// only it and a dead node held, electing a leader without a committed entry. It cannot
    /// tell "wiped" from "brand new" by itself, so the operator says so (`--rejoin`).
    pub fn abstain_until_caught_up(&mut self) {
        log::info!(
            "node {} term {}: rejoining: not voting until caught up with a leader",
            self.id,
            self.term
        );
        self.catch_up = CatchUp::AwaitingLeader;
    }

    /// Whether this node may vote and campaign as far as catching up goes (see
    /// `abstain_until_caught_up`); its membership decides too (see [`Core::can_campaign`]).
    pub fn is_voting(&self) -> bool {
        self.catch_up == CatchUp::Done
    }

    /// Whether this node would campaign on an election timeout: caught up, and a voter of
    /// the membership it acts on (learners, joining and removed nodes never campaign).
    pub fn can_campaign(&self) -> bool {
        self.is_voting() && self.membership().is_voter(self.id)
    }

    /// Whether the membership this node acts on removed it (its id is retired there). A
    /// removed node never campaigns or grants a vote; a leader removing itself keeps leading
    /// until that entry commits, then steps down. The runtime refuses clients once this
    /// holds and the node is not leader.
    pub fn is_removed(&self) -> bool {
        self.membership().is_retired(self.id)
    }

    /// Whether this node is joining: neither a member nor removed in the membership it acts
    /// on (started with `--join` and not yet reached by the entry that adds it).
    pub fn is_joining(&self) -> bool {
        !self.membership().contains(self.id) && !self.is_removed()
    }

    // ---- Inputs -------------------------------------------------------------------------

    /// One unit of logical time.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                self.election_elapsed_ticks += 1;
                let early = match &mut self.early_campaign {
                    Some(early) if early.ticks_left <= 1 => true,
                    Some(early) => {
                        early.ticks_left -= 1;
                        false
                    }
                    None => false,
                };
                let timed_out = self.election_elapsed_ticks >= self.randomized_election_ticks;
                if early || timed_out {
                    if self.can_campaign() {
                        self.start_election(if timed_out {
                            "election timeout"
                        } else {
                            "the leader's connection dropped"
                        });
                    } else {
                        self.election_elapsed_ticks = 0;
                        self.early_campaign = None;
                    }
                }
            }
        }
    }

    /// A message from a peer. Messages not addressed to this node are ignored, and so are
    /// messages whose terms no honest node sends (beyond [`Term::MAX_SANE`], or
    /// inconsistent inside): those are counted in [`Core::term_refusals`].
    ///
    /// The sender need not be in this node's membership (dissertation §4.1: a server
    /// processes requests without consulting its configuration): a leader this node's log
    /// does not yet know of is followed, and a candidate that is a voter in its own log may
    /// get this node's vote. Only vote requests from a node this node's membership removed
    /// are dropped, so a removed node that missed its removal cannot disrupt the cluster.
    pub fn step(&mut self, message: Message) {
        if message.to != self.id || message.from == self.id {
            log::debug!("node {}: dropping misaddressed {message:?}", self.id);
            return;
        }
        if !self.accepts_terms_of(&message) {
            return;
        }
        if matches!(message.body, MessageBody::RequestVote { .. })
            && self.membership().is_retired(message.from)
        {
            log::debug!(
                "node {}: ignoring a vote request from removed node {}",
                self.id,
                message.from
            );
            return;
        }
        if message.term > self.term {
            if !self.step_higher_term(&message) {
                return;
            }
        } else if message.term < self.term {
            self.step_lower_term(&message);
            return;
        }
        let from = message.from;
        let term = message.term;
        match message.body {
            MessageBody::RequestVote {
                pre_vote, last_log, ..
            } => self.handle_request_vote(from, term, pre_vote, last_log),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(from, term, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev,
                entries,
                commit,
            } => {
                if !self.follow_leader_of_current_term(from) {
                    return;
                }
                if self.catch_up == CatchUp::AwaitingLeader {
                    self.catch_up = CatchUp::UntilCommitted(commit);
                }
                self.handle_append_entries(from, prev, &entries, commit);
            }
            MessageBody::AppendEntriesResponse(result) => self.handle_append_response(from, result),
            MessageBody::Heartbeat { commit, read_round } => {
                if self.follow_leader_of_current_term(from) {
                    self.handle_heartbeat(from, commit, read_round);
                }
            }
            MessageBody::HeartbeatResponse { read_round } => {
                self.handle_heartbeat_response(from, read_round)
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
            MessageBody::InstallSnapshot { snapshot } => {
                if self.follow_leader_of_current_term(from) {
                    self.handle_install_snapshot(from, snapshot);
                }
            }
        }
    }

    /// Appends a command to the leader's log; `Ok` gives where it will commit if it does.
    pub fn propose(&mut self, command: Bytes) -> Result<EntryId, ProposeError> {
        self.ensure_leader()?;
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(self.append_to_own_log(EntryPayload::Command(command)))
    }

    /// Appends a membership change to the leader's log; `Ok` gives where it will commit if
    /// it does. The leader acts on `next` at once (as every node does once it appends it).
    ///
    /// Refused unless `next` is one single-server step from the current membership (see
    /// [`Membership::change_from`]: add a learner, promote or demote one member, remove
    /// one, never leaving no voter), while a change is in progress (its entry not yet
    /// committed: one at a time), and before this leader committed an entry of its own
    /// term (dissertation §4.1's fix: a change of an earlier leader might still be in
    /// flight), which is checked first. Promoting a learner that has not caught up is the
    /// caller's choice: the core allows it, but the cluster cannot commit until the new voter
    /// catches up (see `CoreStatus::progress`).
    pub fn propose_membership(&mut self, next: Membership) -> Result<EntryId, ProposeError> {
        self.ensure_leader()?;
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        // Not ready first: until this leader commits an entry of its term, its commit index
        // may lag a change its predecessor committed, and "in progress" would be a false
        // (and, to a client, final-sounding) answer where "retry shortly" is the true one.
        if !self.committed_in_current_term() {
            return Err(ProposeError::LeaderNotReady);
        }
        if self.change_in_progress() {
            return Err(ProposeError::ChangeInProgress);
        }
        let mut next = next;
        next.normalize();
        if next == *self.membership() {
            return Err(ProposeError::InvalidChange("nothing changes".to_string()));
        }
        let kind = self
            .membership()
            .change_from(&next)
            .map_err(ProposeError::InvalidChange)?;
        log::info!(
            "node {} term {}: membership change {kind:?}",
            self.id,
            self.term
        );
        let id = self.append_to_own_log(EntryPayload::Membership(next.clone()));
        self.push_config(id, next);
        if kind != ChangeKind::InfoOnly {
            self.sync_progress();
        }
        Ok(id)
    }

    /// Whether the membership this node acts on comes from an entry not yet committed.
    pub fn change_in_progress(&self) -> bool {
        self.acting_config().id.index > self.log.committed()
    }

    /// Starts a linearizable read; it comes back in `Ready::read_states` (or
    /// `aborted_reads`) with the caller's `read_id`.
    pub fn read_index(&mut self, read_id: u64) -> Result<(), ProposeError> {
        self.ensure_leader()?;
        if self.reads.len() >= self.config.pending_reads_max {
            return Err(ProposeError::TooManyPendingReads);
        }
        if !self.committed_in_current_term() {
            self.reads.awaiting_term_commit.push(read_id);
        } else if self.leader_alone_is_quorum() {
            self.read_states.push(ReadState {
                read_id,
                index: self.log.committed(),
            });
        } else {
            self.reads.unsent.push(read_id);
        }
        Ok(())
    }

    /// Hands leadership to `to` once it is up to date; proposals are refused meanwhile. The
    /// transfer is abandoned after an election timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.ensure_leader()?;
        if to == self.id {
            return Ok(());
        }
        if !self.progress.contains_key(&to) || !self.membership().is_voter(to) {
            return Err(ProposeError::UnknownPeer(to));
        }
        log::info!(
            "node {} term {}: transferring leadership to {to}",
            self.id,
            self.term
        );
        self.transfer = Some(Transfer {
            target: to,
            elapsed_ticks: 0,
        });
        if self.progress_of(to).match_index == self.log.last_index() {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_appends(to);
        }
        Ok(())
    }

    /// Storage has made the log durable up to `last` (the last entry of a `Ready`'s
    /// `entries`). Stale reports (the entry was since overwritten) are ignored.
    pub fn on_persisted(&mut self, last: EntryId) {
        if self.log.persisted_to(last) && self.role == Role::Leader {
            // The leader's own copy counts toward the majority only once durable.
            self.maybe_commit();
        }
    }

    /// The runtime has durably saved a snapshot of the state machine at `snapshot` (an
    /// applied entry) and wants the log kept only after `compact_to` (at most the snapshot's
    /// index: entries kept before it spare slow followers a snapshot transfer).
    ///
    /// The snapshot's membership is the core's own as of its index
    /// ([`Core::membership_at`]), whatever `snapshot.membership` says: the runtime writes
    /// that one into the file.
    pub fn on_snapshot_saved(&mut self, snapshot: SnapshotMeta, compact_to: LogIndex) {
        assert!(
            snapshot.index() <= self.log.applied(),
            "node {} term {}: snapshot {} beyond applied {}",
            self.id,
            self.term,
            snapshot.last,
            self.log.applied()
        );
        assert!(
            compact_to <= snapshot.index(),
            "node {} term {}: compacting to {compact_to} past snapshot {}",
            self.id,
            self.term,
            snapshot.last
        );
        if snapshot.index() <= self.snapshot.index() {
            return;
        }
        assert_eq!(
            self.log.term(snapshot.index()),
            Some(snapshot.last.term),
            "node {} term {}: snapshot {} does not match the log",
            self.id,
            self.term,
            snapshot.last
        );
        let membership = self
            .membership_at(snapshot.index())
            .cloned()
            .unwrap_or_else(|| self.configs[0].membership.clone());
        if !snapshot.membership.is_empty() && snapshot.membership != membership {
            log::warn!(
                "node {} term {}: snapshot {} saved with a membership other than the log's \
                 at its index",
                self.id,
                self.term,
                snapshot.last
            );
        }
        // The configurations at or before the snapshot's index are committed: the newest of
        // them becomes the base.
        let covered = self
            .configs
            .iter()
            .rposition(|config| config.id.index <= snapshot.index())
            .unwrap_or(0);
        self.configs.drain(..covered);
        self.snapshot = SnapshotMeta {
            last: snapshot.last,
            membership,
        };
        self.log.compact(compact_to);
    }

    /// The transport finished (`delivered`) or gave up streaming a snapshot to `follower`.
    /// On failure the follower is probed again, which sends a snapshot again if needed.
    pub fn report_snapshot(&mut self, follower: NodeId, delivered: bool) {
        if delivered || self.role != Role::Leader {
            return;
        }
        if let Some(progress) = self.progress.get_mut(&follower) {
            if progress.is_receiving_snapshot() {
                let next_index = progress.match_index.next();
                progress.probe_from(next_index);
            }
        }
    }

    /// The runtime saw this node's connection to `peer` drop: the peer's process died or
    /// its connection was reset (a TCP close, not a silence: a peer that is merely slow or
    /// cut off by a partition is never reported). Until [`Core::peer_connection_restored`]:
    ///
    /// - if `peer` is the leader this node follows, it no longer holds a lease over this
    ///   node's votes (dissertation §4.2.3): this node answers (pre-)vote requests as if it
    ///   had not heard from a leader;
    /// - and, with PreVote on, this node starts a pre-vote soon rather than after the
    ///   election timeout: at once if it comes first among the other voters by id, else
    ///   `heartbeat_ticks` later per voter ahead of it. The stagger keeps the survivors
    ///   from splitting the vote (they all see the drop at the same moment). The
    ///   connection coming back, or any change of role or term, calls it off; a heartbeat
    ///   does not, since the leader may have sent it just before it died (a pre-vote
    ///   against a live leader costs nothing: see below).
    ///
    /// Why this cannot disrupt a live leader: a pre-vote still needs a majority, and every
    /// voter that still hears from the leader (its own connection intact) keeps refusing
    /// it under the lease. The leader is deposed only when a majority has lost it, which is
    /// when an election is due anyway. PreVote and CheckQuorum work as before; without
    /// PreVote, nothing is started early (a real election would raise the term at once).
    /// A leader that loses its connection to a follower changes nothing: CheckQuorum alone
    /// decides whether it still leads.
    pub fn peer_connection_lost(&mut self, peer: NodeId) {
        if peer == self.id {
            return;
        }
        self.lost_connections.insert(peer);
        let lost_leader = self.role == Role::Follower && self.leader == Some(peer);
        if !lost_leader || !self.config.pre_vote || !self.can_campaign() {
            return;
        }
        let ahead = self
            .membership()
            .voters()
            .iter()
            .filter(|&&voter| voter != peer && voter < self.id)
            .count();
        let delay_ticks = u32::try_from(ahead)
            .unwrap_or(u32::MAX)
            .saturating_mul(self.config.heartbeat_ticks);
        log::info!(
            "node {} term {}: connection to leader {peer} dropped, pre-vote in {delay_ticks} \
             ticks",
            self.id,
            self.term
        );
        if delay_ticks == 0 {
            self.start_election("the leader's connection dropped");
        } else {
            self.early_campaign = Some(EarlyCampaign {
                leader: peer,
                ticks_left: delay_ticks,
            });
        }
    }

    /// The runtime saw this node's connection to `peer` come back (see
    /// [`Core::peer_connection_lost`]): `peer` is alive, so an early pre-vote still waiting
    /// because of it is called off, and `peer` holds a lease again once it leads and is
    /// heard from.
    pub fn peer_connection_restored(&mut self, peer: NodeId) {
        self.lost_connections.remove(&peer);
        if self
            .early_campaign
            .is_some_and(|early| early.leader == peer)
        {
            self.early_campaign = None;
        }
    }

    /// The newest snapshot this node holds.
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The membership this node acts on: the latest in its log (appended, not necessarily
    /// committed) or, if the log holds none, its snapshot's, or the initial one.
    pub fn membership(&self) -> &Membership {
        &self.acting_config().membership
    }

    /// The latest membership whose entry is committed (as far as this node knows).
    pub fn committed_membership(&self) -> &Membership {
        let committed = self.log.committed();
        self.configs
            .iter()
            .rev()
            .find(|config| config.id.index <= committed)
            .map_or(&self.configs[0].membership, |config| &config.membership)
    }

    /// The membership as of `index` (the latest set at or before it), for the snapshot at
    /// `index`; `None` below the oldest the core still knows (an index before its
    /// snapshot).
    pub fn membership_at(&self, index: LogIndex) -> Option<&Membership> {
        self.configs
            .iter()
            .rev()
            .find(|config| config.id.index <= index)
            .map(|config| &config.membership)
    }

    /// Whether `message`'s terms are ones an honest node sends: its own at most
    /// [`Term::MAX_SANE`], every term inside it at most its own, and an append's entries
    /// contiguous after `prev` with terms that never decrease. [`Core::step`] drops a
    /// message that fails; a runtime asks first where stepping costs work before it (the
    /// snapshot an `InstallSnapshot` announces is decoded only for one that passes).
    pub fn accepts_terms(&self, message: &Message) -> bool {
        message.term.is_sane() && Core::terms_consistent(message)
    }

    /// Messages dropped and campaigns refused for their terms since this core was created.
    pub fn term_refusals(&self) -> TermRefusals {
        self.term_refusals
    }

    // ---- Outputs ------------------------------------------------------------------------

    /// Whether [`Core::ready`] would hand out anything: call it after feeding inputs and
    /// take a `Ready` only when this says so.
    pub fn has_ready(&self) -> bool {
        self.broadcast_pending
            || self.membership_changed
            || self.snapshot_to_install.is_some()
            || !self.reads.unsent.is_empty()
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || self.hard_state() != self.hard_state_handed_out
            || self.log.has_unstable()
            || self.log.has_unapplied()
            || !self.read_states.is_empty()
            || !self.aborted_reads.is_empty()
    }

    /// Everything the runtime must do now: what to persist, send, install and apply (see
    /// [`Ready`] and the `raft` module docs for the order). Hands each item out once; a
    /// leader's batched proposals leave here as one AppendEntries per follower.
    pub fn ready(&mut self) -> Ready {
        if let CatchUp::UntilCommitted(target) = self.catch_up {
            if self.log.committed() >= target {
                log::info!(
                    "node {} term {}: caught up to {target}, voting again",
                    self.id,
                    self.term
                );
                self.catch_up = CatchUp::Done;
            }
        }
        if self.role == Role::Leader {
            if self.broadcast_pending {
                self.broadcast_pending = false;
                let targets: Vec<NodeId> = self.progress.keys().copied().collect();
                for follower in targets {
                    self.send_appends(follower);
                }
            }
            if !self.reads.unsent.is_empty() {
                self.start_read_round();
            }
        }
        let hard_state = self.hard_state();
        let changed_hard_state = (hard_state != self.hard_state_handed_out).then_some(hard_state);
        self.hard_state_handed_out = hard_state;
        Ready {
            snapshot: self.snapshot_to_install.take(),
            hard_state: changed_hard_state,
            entries: self.log.take_unstable(),
            messages: std::mem::take(&mut self.messages),
            messages_after_persist: std::mem::take(&mut self.messages_after_persist),
            committed: self.log.take_committed(self.config.committed_bytes_max),
            read_states: std::mem::take(&mut self.read_states),
            aborted_reads: std::mem::take(&mut self.aborted_reads),
            membership: std::mem::take(&mut self.membership_changed)
                .then(|| self.membership().clone()),
        }
    }

    // ---- Queries ------------------------------------------------------------------------

    /// Whether this leader's commit index waits for its own copy alone: it would advance
    /// if this node's log were durable to its end. A runtime that persists asynchronously
    /// asks before it sleeps, to know whether the report of its own sync is worth waking
    /// for; otherwise the next input (an ack) is soon enough to call `on_persisted`.
    pub fn commit_waits_for_own_copy(&self) -> bool {
        self.role == Role::Leader
            && self.log.persisted() < self.log.last_index()
            && self.may_commit_to(self.quorum_index(self.log.last_index()))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This node's current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader of the current term, if this node knows one (itself when leader).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest index this node knows to be committed.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed()
    }

    /// The index of the last entry in the log, durable or not.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The entry at `index`, while the log holds it (for tests and diagnostics).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Whether stepping an `InstallSnapshot` for `snapshot` would ask the runtime to install
    /// the snapshot's data (a `Ready::snapshot`). False when the commit index covers it or
    /// the log holds its last entry: the core then only commits and acknowledges (Raft §7).
    /// A runtime asks before stepping, to decode a received snapshot only when it will be
    /// installed; a message the core then ignores (a stale term) wastes the decoding, no
    /// more.
    pub fn snapshot_needs_data(&self, snapshot: &SnapshotMeta) -> bool {
        snapshot.index() > self.log.committed() && !self.log.matches(snapshot.last)
    }

    /// The externally interesting state at once, for `status` replies.
    pub fn status(&self) -> CoreStatus {
        let membership = self.membership();
        CoreStatus {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.log.committed(),
            applied_index: self.log.applied(),
            snapshot_index: self.snapshot.index(),
            last_index: self.log.last_index(),
            progress: self
                .progress
                .iter()
                .map(|(&id, progress)| ProgressStatus {
                    id,
                    match_index: progress.match_index,
                    next_index: progress.next_index,
                    replicating: progress.is_replicating(),
                    voter: membership.is_voter(id),
                })
                .collect(),
            membership: membership.clone(),
            membership_index: self.acting_config().id.index,
            membership_committed: !self.change_in_progress(),
        }
    }

    /// Panics, naming the node and term, if an invariant of the core does not hold.
    pub fn check_invariants(&self) {
        let context = format!("node {} term {} ({:?})", self.id, self.term, self.role);
        self.log.check_invariants(&context);
        assert!(
            self.configs[0].id.index <= self.snapshot.index().max(self.log.offset().index),
            "{context}: base membership at {} after the snapshot",
            self.configs[0].id
        );
        for pair in self.configs.windows(2) {
            assert!(
                pair[0].id.index < pair[1].id.index,
                "{context}: memberships out of order"
            );
        }
        for config in &self.configs[1..] {
            if config.id.index > self.log.offset().index {
                let holds = matches!(
                    self.log.entry(config.id.index),
                    Some(Entry { term, payload: EntryPayload::Membership(membership), .. })
                        if *term == config.id.term && *membership == config.membership
                );
                assert!(holds, "{context}: membership {} not in the log", config.id);
            }
        }
        assert!(
            self.role != Role::Candidate && self.role != Role::PreCandidate
                || self.membership().is_voter(self.id),
            "{context}: campaigning while not a voter"
        );
        assert!(
            self.log.offset().index <= self.snapshot.index(),
            "{context}: log starts after {} but the snapshot is {}",
            self.log.offset(),
            self.snapshot.last
        );
        assert!(
            self.snapshot.index() <= self.log.applied(),
            "{context}: snapshot {} beyond applied {}",
            self.snapshot.last,
            self.log.applied()
        );
        let (term_seen, commit_seen) = self.checked_high_water.get();
        assert!(
            self.term >= term_seen,
            "{context}: term went back from {term_seen}"
        );
        assert!(
            self.log.committed() >= commit_seen,
            "{context}: commit index went back from {commit_seen} to {}",
            self.log.committed()
        );
        self.checked_high_water
            .set((self.term, self.log.committed()));
        assert!(
            self.log.last_id().term <= self.term,
            "{context}: last log term {} ahead of the current term",
            self.log.last_id().term
        );
        assert!(
            self.role == Role::Follower || self.early_campaign.is_none(),
            "{context}: early campaign off follower"
        );
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, Some(self.id), "{context}: leader field");
                assert_eq!(self.vote, Some(self.id), "{context}: leader's vote");
                assert_eq!(
                    self.progress.keys().copied().collect::<BTreeSet<NodeId>>(),
                    self.replication_targets(),
                    "{context}: progress entries"
                );
                for (id, progress) in &self.progress {
                    assert!(
                        progress.match_index < progress.next_index,
                        "{context}: follower {id} match {} >= next {}",
                        progress.match_index,
                        progress.next_index
                    );
                    assert!(
                        progress.match_index <= self.log.last_index(),
                        "{context}: follower {id} match {} beyond the log",
                        progress.match_index
                    );
                }
            }
            Role::Candidate => {
                assert_eq!(self.vote, Some(self.id), "{context}: candidate's vote");
                assert!(
                    self.progress.is_empty(),
                    "{context}: candidate has progress"
                );
            }
            Role::Follower | Role::PreCandidate => {
                assert!(self.progress.is_empty(), "{context}: progress off leader");
                assert!(self.transfer.is_none(), "{context}: transfer off leader");
                assert_eq!(self.reads.len(), 0, "{context}: reads off leader");
            }
        }
    }

    // ---- Elections ----------------------------------------------------------------------

    /// Campaigns (with a pre-vote first, if on); `why` is for the log.
    fn start_election(&mut self, why: &str) {
        if self.term.next_sane().is_none() {
            self.refuse_campaign();
            let term = self.term;
            self.become_follower(term, None);
            return;
        }
        if self.config.pre_vote {
            self.become_pre_candidate(why);
        } else {
            self.become_candidate(false);
        }
    }

    fn become_pre_candidate(&mut self, why: &str) {
        // Raft dissertation §9.6: ask first whether we could win, without bumping the term,
        // so a node that keeps losing contact cannot inflate the cluster's term.
        self.reset_role_state();
        self.role = Role::PreCandidate;
        self.leader = None;
        log::info!(
            "node {} term {}: {why}, starting pre-vote",
            self.id,
            self.term
        );
        self.votes.insert(self.id, true);
        if self.has_quorum_of_granted_votes() {
            self.become_candidate(false);
            return;
        }
        let Some(campaign_term) = self.term.next_sane() else {
            // `start_election` checked, and a pre-candidate's term does not change.
            self.refuse_campaign();
            let term = self.term;
            self.become_follower(term, None);
            return;
        };
        let last_log = self.log.last_id();
        for peer in self.followers() {
            self.send_with_term(
                peer,
                campaign_term,
                MessageBody::RequestVote {
                    pre_vote: true,
                    last_log,
                    leadership_transfer: false,
                },
            );
        }
    }

    fn become_candidate(&mut self, leadership_transfer: bool) {
        let Some(campaign_term) = self.term.next_sane() else {
            // Every caller checked; refusing beats wrapping to term 0 all the same.
            self.refuse_campaign();
            let term = self.term;
            self.become_follower(term, None);
            return;
        };
        self.reset_role_state();
        self.term = campaign_term;
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        log::info!("node {} term {}: starting election", self.id, self.term);
        self.votes.insert(self.id, true);
        if self.has_quorum_of_granted_votes() {
            self.become_leader();
            return;
        }
        let last_log = self.log.last_id();
        for peer in self.followers() {
            self.send(
                peer,
                MessageBody::RequestVote {
                    pre_vote: false,
                    last_log,
                    leadership_transfer,
                },
            );
        }
    }

    fn become_leader(&mut self) {
        self.reset_role_state();
        self.role = Role::Leader;
        self.leader = Some(self.id);
        log::info!("node {} term {}: became leader", self.id, self.term);
        self.sync_progress();
        // Raft §5.4.2 / §8: entries of earlier terms commit only with an entry of this term,
        // so append one at once.
        self.append_to_own_log(EntryPayload::Noop);
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was = self.role;
        assert!(term >= self.term, "term would go back to {term}");
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.reset_role_state();
        self.role = Role::Follower;
        self.leader = leader;
        if was != Role::Follower {
            log::info!(
                "node {} term {}: {} -> Follower (leader {:?})",
                self.id,
                self.term,
                was.client_name(),
                leader
            );
        }
    }

    /// Clears everything tied to the previous role. Reads a leader had accepted can never be
    /// confirmed now: they are reported aborted.
    fn reset_role_state(&mut self) {
        self.early_campaign = None;
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        self.reset_randomized_election_timeout();
        self.votes.clear();
        self.progress.clear();
        self.broadcast_pending = false;
        self.transfer = None;
        let aborted = self.reads.drain_all();
        self.aborted_reads.extend(aborted);
        self.reads = ReadQueue::default();
    }

    fn reset_randomized_election_timeout(&mut self) {
        self.randomized_election_ticks = self
            .rng
            .gen_range(self.config.election_ticks_min..self.config.election_ticks_max);
    }

    /// A message from a later term. Returns whether to go on handling it.
    fn step_higher_term(&mut self, message: &Message) -> bool {
        match &message.body {
            MessageBody::RequestVote {
                pre_vote,
                leadership_transfer,
                ..
            } => {
                // Raft dissertation §4.2.3: a node that heard from a live leader within the
                // minimum election timeout ignores vote requests, so a partitioned node
                // rejoining cannot depose a healthy leader. A transfer is the exception, and
                // so is a leader whose connection from here dropped (its process died, most
                // likely: see `peer_connection_lost`).
                let in_lease = self.config.check_quorum
                    && self
                        .leader
                        .is_some_and(|leader| !self.lost_connections.contains(&leader))
                    && self.election_elapsed_ticks < self.config.election_ticks_min;
                if in_lease && !leadership_transfer {
                    log::debug!(
                        "node {} term {}: ignoring vote request from {} (leader lease)",
                        self.id,
                        self.term,
                        message.from
                    );
                    return false;
                }
                if !pre_vote {
                    // Raft Figure 2: only hearing from the leader or granting a vote
                    // restarts the election timer, not adopting a candidate's term. A
                    // candidate whose log is behind (it cannot win) would otherwise keep
                    // restarting the timers of the nodes that can, and without PreVote the
                    // cluster might never elect a leader.
                    let election_elapsed_ticks = self.election_elapsed_ticks;
                    self.become_follower(message.term, None);
                    self.election_elapsed_ticks = election_elapsed_ticks;
                }
                true
            }
            // A granted pre-vote carries the term we would campaign in: not a reason to
            // change ours.
            MessageBody::RequestVoteResponse {
                pre_vote: true,
                granted: true,
            } => true,
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::TimeoutNow => {
                self.become_follower(message.term, Some(message.from));
                true
            }
            MessageBody::RequestVoteResponse { .. }
            | MessageBody::AppendEntriesResponse(_)
            | MessageBody::HeartbeatResponse { .. } => {
                self.become_follower(message.term, None);
                true
            }
        }
    }

    fn step_lower_term(&mut self, message: &Message) {
        match &message.body {
            // A deposed leader that missed the election: tell it the term so it steps down.
            // (With CheckQuorum and PreVote it may otherwise never learn it: we ignore it and
            // its own followers' pre-votes never raise terms.)
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => self.send(
                message.from,
                MessageBody::HeartbeatResponse { read_round: 0 },
            ),
            MessageBody::RequestVote { pre_vote: true, .. } => self.send(
                message.from,
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: false,
                },
            ),
            _ => {}
        }
    }

    fn handle_request_vote(
        &mut self,
        candidate: NodeId,
        message_term: Term,
        pre_vote: bool,
        last_log: EntryId,
    ) {
        // A learner answers by its log: the candidate's log may already make it a voter.
        // A joining node (it may hold nothing yet) and a removed one do not answer yes.
        let up_to_date = self.log.is_up_to_date(last_log)
            && self.is_voting()
            && self.membership().contains(self.id);
        if pre_vote {
            // Would we vote for it in the term it proposes? (We do not record anything.)
            let granted = message_term > self.term && up_to_date;
            let reply_term = if granted { message_term } else { self.term };
            self.send_with_term(
                candidate,
                reply_term,
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted,
                },
            );
            return;
        }
        // Raft §5.2: one vote per term, first come first served; §5.4.1: only for a log at
        // least as up to date as ours.
        let can_vote =
            self.vote == Some(candidate) || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && up_to_date;
        if granted {
            self.vote = Some(candidate);
            self.election_elapsed_ticks = 0;
        }
        log::debug!(
            "node {} term {}: vote for {candidate}: {granted}",
            self.id,
            self.term
        );
        self.send(
            candidate,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted,
            },
        );
    }

    fn handle_vote_response(
        &mut self,
        voter: NodeId,
        message_term: Term,
        pre_vote: bool,
        granted: bool,
    ) {
        let counts = match self.role {
            Role::PreCandidate => {
                pre_vote && (!granted || Some(message_term) == self.term.next_sane())
            }
            Role::Candidate => !pre_vote && message_term == self.term,
            Role::Follower | Role::Leader => false,
        };
        if !counts || !self.membership().is_voter(voter) {
            return;
        }
        self.votes.entry(voter).or_insert(granted);
        if self.has_quorum_of_granted_votes() {
            if self.role == Role::PreCandidate {
                self.become_candidate(false);
            } else {
                self.become_leader();
            }
        } else if self.has_quorum_of_rejected_votes() {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    fn handle_timeout_now(&mut self, from: NodeId) {
        if self.role == Role::Leader || !self.can_campaign() {
            return;
        }
        if self.term.next_sane().is_none() {
            // Stays with its leader: the transfer times out there.
            self.refuse_campaign();
            return;
        }
        log::info!(
            "node {} term {}: TimeoutNow from {from}, campaigning at once",
            self.id,
            self.term
        );
        self.become_candidate(true);
    }

    /// Counts a campaign not started because this node's term can go no higher.
    fn refuse_campaign(&mut self) {
        self.term_refusals.campaign_refused += 1;
        log::debug!(
            "node {} term {}: not campaigning: the next term would be beyond {}",
            self.id,
            self.term,
            Term::MAX_SANE
        );
    }

    /// Drops `message` (counting it in `term_refusals`) unless [`Core::accepts_terms`]: its
    /// term adopted would exhaust this node's terms (the next campaign's `term + 1` would
    /// overflow), and its entries appended would break the log's invariants.
    fn accepts_terms_of(&mut self, message: &Message) -> bool {
        if !message.term.is_sane() {
            self.term_refusals.absurd_term += 1;
        } else if !Core::terms_consistent(message) {
            self.term_refusals.malformed += 1;
        } else {
            return true;
        }
        self.term_refusals.last_dropped = Some((message.from, message.term));
        log::debug!(
            "node {} term {}: dropping a message from {} at term {}: its terms are not ones \
             an honest node sends",
            self.id,
            self.term,
            message.from,
            message.term
        );
        false
    }

    /// Every term inside `message` at most its own, an append's entries contiguous after
    /// `prev` with terms that never decrease, and a "log too short" rejection's last index
    /// below the index it rejects.
    fn terms_consistent(message: &Message) -> bool {
        let term = message.term;
        match &message.body {
            MessageBody::RequestVote { last_log, .. } => last_log.term <= term,
            MessageBody::AppendEntries { prev, entries, .. } => {
                let mut previous = *prev;
                entries.iter().all(|entry| {
                    let follows = Some(entry.index.0) == previous.index.0.checked_add(1)
                        && previous.term <= entry.term;
                    previous = entry.id();
                    follows
                }) && previous.term <= term
            }
            MessageBody::AppendEntriesResponse(AppendResult::Rejected {
                hint: RejectHint::ConflictingTerm { conflict_term, .. },
                ..
            }) => *conflict_term <= term,
            // A follower rejects as too short only a `prev` beyond its last entry (so the
            // leader's `last_index + 1` cannot overflow).
            MessageBody::AppendEntriesResponse(AppendResult::Rejected {
                prev_index,
                hint: RejectHint::LogTooShort { last_index },
            }) => last_index < prev_index,
            MessageBody::InstallSnapshot { snapshot } => snapshot.last.term <= term,
            MessageBody::RequestVoteResponse { .. }
            | MessageBody::AppendEntriesResponse(_)
            | MessageBody::Heartbeat { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::TimeoutNow => true,
        }
    }

    fn has_quorum_of_granted_votes(&self) -> bool {
        let granted: Vec<NodeId> = self
            .votes
            .iter()
            .filter(|(_, &granted)| granted)
            .map(|(&voter, _)| voter)
            .collect();
        self.membership().is_quorum(&granted)
    }

    fn has_quorum_of_rejected_votes(&self) -> bool {
        let rejected: Vec<NodeId> = self
            .votes
            .iter()
            .filter(|(_, &granted)| !granted)
            .map(|(&voter, _)| voter)
            .collect();
        self.membership().is_quorum(&rejected)
    }

    // ---- Follower side of replication ---------------------------------------------------

    /// An AppendEntries, heartbeat or InstallSnapshot of the current term: its sender is the
    /// leader, unless this node knows another leader of this term (or leads it itself).
    /// Raft elects at most one leader per term, so such a message is forged (an unkeyed peer
    /// port authenticates nobody) or corrupt: it is dropped, counted in
    /// [`Core::term_refusals`] as malformed, and false returned.
    fn follow_leader_of_current_term(&mut self, from: NodeId) -> bool {
        let known = if self.role == Role::Leader {
            Some(self.id)
        } else {
            self.leader
        };
        if known.is_some_and(|leader| leader != from) {
            self.term_refusals.malformed += 1;
            self.term_refusals.last_dropped = Some((from, self.term));
            log::debug!(
                "node {} term {}: dropping a leader's message from {from}: node {} leads this \
                 term",
                self.id,
                self.term,
                known.map_or(0, |leader| leader.0)
            );
            return false;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            let term = self.term;
            self.become_follower(term, Some(from));
        }
        self.election_elapsed_ticks = 0;
        true
    }

    fn handle_append_entries(
        &mut self,
        leader: NodeId,
        prev: EntryId,
        entries: &[Entry],
        leader_commit: LogIndex,
    ) {
        let committed = self.log.committed();
        if prev.index < committed {
            // Everything up to our commit index matches any leader's log; acknowledge that
            // much so the leader moves on (a delayed or duplicated message).
            let skip = (committed.0 - prev.index.0) as usize;
            if skip >= entries.len() {
                self.send_after_persist_accept(leader, committed);
                return;
            }
            let rest = &entries[skip..];
            let rest_prev = EntryId::new(entries[skip - 1].term, committed);
            self.handle_append_entries(leader, rest_prev, rest, leader_commit);
            return;
        }
        if !self.log.matches(prev) {
            let hint = match self.log.term(prev.index) {
                None => RejectHint::LogTooShort {
                    last_index: self.log.last_index(),
                },
                Some(conflict_term) => RejectHint::ConflictingTerm {
                    conflict_term,
                    first_index: self.log.first_index_of_term_at(prev.index),
                },
            };
            self.send(
                leader,
                MessageBody::AppendEntriesResponse(AppendResult::Rejected {
                    prev_index: prev.index,
                    hint,
                }),
            );
            return;
        }
        let last_new = self.log.append_after(prev.index, entries);
        self.refresh_configs(entries);
        // Raft Figure 2: commit up to the leader's commit index, but only as far as this
        // message proved our log matches the leader's.
        let commit = leader_commit.min(last_new);
        self.log.commit_to(commit);
        self.send_after_persist_accept(leader, last_new);
    }

    /// Raft §7: a snapshot replaces the log unless the log already holds its last entry.
    fn handle_install_snapshot(&mut self, leader: NodeId, snapshot: SnapshotMeta) {
        let committed = self.log.committed();
        if snapshot.index() <= committed {
            self.send_after_persist_accept(leader, committed);
            return;
        }
        if !self.snapshot_needs_data(&snapshot) {
            // We hold everything it covers: committing is enough.
            self.log.commit_to(snapshot.index());
        } else {
            log::info!(
                "node {} term {}: installing snapshot {} from {leader}",
                self.id,
                self.term,
                snapshot.last
            );
            let index = snapshot.index();
            self.log.install_snapshot(snapshot.clone());
            let membership = if snapshot.membership.is_empty() {
                self.initial.clone()
            } else {
                snapshot.membership.clone()
            };
            let changed = membership != *self.membership();
            self.configs = vec![Config {
                id: snapshot.last,
                membership: membership.clone(),
            }];
            self.membership_changed |= changed;
            self.snapshot = SnapshotMeta {
                last: snapshot.last,
                membership,
            };
            self.snapshot_to_install = Some(self.snapshot.clone());
            self.send_after_persist_accept(leader, index);
            return;
        }
        self.send_after_persist_accept(leader, snapshot.index());
    }

    fn send_after_persist_accept(&mut self, leader: NodeId, match_index: LogIndex) {
        self.send(
            leader,
            MessageBody::AppendEntriesResponse(AppendResult::Accepted { match_index }),
        );
    }

    fn handle_heartbeat(&mut self, leader: NodeId, commit: LogIndex, read_round: u64) {
        // The leader sends min(our match index, its commit): our log matches up to there.
        // The clamp only matters if storage lost synced data (`--fsync never`).
        self.log.commit_to(commit.min(self.log.last_index()));
        self.send(leader, MessageBody::HeartbeatResponse { read_round });
    }

    // ---- Leader side of replication -----------------------------------------------------

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if let Some(transfer) = &mut self.transfer {
            transfer.elapsed_ticks += 1;
            if transfer.elapsed_ticks >= self.config.election_ticks_min {
                log::info!(
                    "node {} term {}: leadership transfer to {} timed out",
                    self.id,
                    self.term,
                    transfer.target
                );
                self.transfer = None;
            }
        }
        let snapshot_timeout_ticks = self.config.snapshot_timeout_ticks;
        for (follower, progress) in &mut self.progress {
            if progress.snapshot_overdue(snapshot_timeout_ticks) {
                log::info!(
                    "node {} term {}: snapshot to {follower} unacknowledged, probing again",
                    self.id,
                    self.term
                );
                let next_index = progress.match_index.next();
                progress.probe_from(next_index);
            }
        }
        if self.election_elapsed_ticks >= self.config.election_ticks_min {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum {
                // Raft dissertation §6.2: a leader that has not heard from a majority within
                // an election timeout steps down, so a cut-off leader stops taking work.
                let mut active: Vec<NodeId> = self
                    .progress
                    .iter()
                    .filter(|(_, progress)| progress.recent_active)
                    .map(|(&id, _)| id)
                    .collect();
                active.push(self.id);
                if !self.membership().is_quorum(&active) {
                    log::info!(
                        "node {} term {}: lost contact with a majority, stepping down",
                        self.id,
                        self.term
                    );
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                for progress in self.progress.values_mut() {
                    progress.recent_active = false;
                }
            }
        }
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
    }

    fn append_to_own_log(&mut self, payload: EntryPayload) -> EntryId {
        let entry = Entry {
            term: self.term,
            index: self.log.last_index().next(),
            payload,
        };
        let id = entry.id();
        self.log.push(entry);
        self.broadcast_pending = true;
        id
    }

    /// Sends as many appends to `follower` as its window allows.
    fn send_appends(&mut self, follower: NodeId) {
        while self.send_append(follower, false) {}
    }

    /// Sends one AppendEntries if the follower's state allows it. An empty one is sent to a
    /// probed follower (to find its position) or when `allow_empty` (to nudge a follower
    /// that may have lost the tail of a pipeline). Returns whether anything was sent.
    fn send_append(&mut self, follower: NodeId, allow_empty: bool) -> bool {
        let inflight_appends_max = self.config.inflight_appends_max;
        let Some(progress) = self.progress.get(&follower) else {
            return false;
        };
        if !progress.can_send(inflight_appends_max) {
            return false;
        }
        let next_index = progress.next_index;
        let probing = !progress.is_replicating();
        let prev_index = next_index.prev();
        let Some(prev_term) = self.log.term(prev_index) else {
            // Compacted: only a snapshot can bring this follower up to date.
            let snapshot = self.snapshot.clone();
            log::info!(
                "node {} term {}: sending snapshot {} to {follower} (needs {next_index})",
                self.id,
                self.term,
                snapshot.last
            );
            let index = snapshot.index();
            self.send(follower, MessageBody::InstallSnapshot { snapshot });
            if let Some(progress) = self.progress.get_mut(&follower) {
                progress.sent_snapshot(index);
            }
            return false;
        };
        let entries = self
            .log
            .entries_from(next_index, self.config.append_bytes_max);
        if entries.is_empty() && !probing && !allow_empty {
            return false;
        }
        let carried_entries = !entries.is_empty();
        let last_index = LogIndex(prev_index.0 + entries.len() as u64);
        let commit = self.log.committed();
        self.send(
            follower,
            MessageBody::AppendEntries {
                prev: EntryId::new(prev_term, prev_index),
                entries,
                commit,
            },
        );
        if let Some(progress) = self.progress.get_mut(&follower) {
            progress.sent(last_index, carried_entries);
        }
        carried_entries && !probing
    }

    fn broadcast_heartbeat(&mut self) {
        let commit = self.log.committed();
        let read_round = self.reads.round;
        let heartbeats: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(&id, progress)| (id, progress.match_index.min(commit)))
            .collect();
        for (follower, commit) in heartbeats {
            self.send(follower, MessageBody::Heartbeat { commit, read_round });
        }
    }

    fn handle_append_response(&mut self, follower: NodeId, result: AppendResult) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&follower) else {
            return;
        };
        progress.recent_active = true;
        match result {
            AppendResult::Accepted { match_index } => {
                if match_index > last_index {
                    log::warn!(
                        "node {} term {}: follower {follower} claims match {match_index} beyond our last index {last_index}",
                        self.id,
                        self.term
                    );
                    return;
                }
                if progress.accept(match_index) {
                    self.maybe_commit();
                    if self.role != Role::Leader || !self.progress.contains_key(&follower) {
                        // Its own removal committed (it stepped down), or the follower's.
                        return;
                    }
                }
                let caught_up = self.progress_of(follower).match_index == last_index;
                if caught_up && self.is_transfer_target(follower) {
                    self.send(follower, MessageBody::TimeoutNow);
                }
                self.send_appends(follower);
            }
            AppendResult::Rejected { prev_index, hint } => {
                let relevant = if progress.is_receiving_snapshot() {
                    false
                } else if progress.is_replicating() {
                    prev_index > progress.match_index
                } else {
                    prev_index == progress.next_index.prev()
                };
                if !relevant {
                    return;
                }
                if let RejectHint::LogTooShort {
                    last_index: follower_last,
                } = hint
                {
                    if follower_last < progress.match_index {
                        // The follower lost entries it had acknowledged: its data dir was
                        // wiped (the advice for a corrupt log) or `--fsync never` lost a
                        // tail. Raft assumes logs never shrink; without this the leader
                        // would never send below its old match index again and the
                        // follower would stay empty forever. Its log is a prefix of what it
                        // acknowledged, so it still matches up to its end.
                        log::warn!(
                            "node {} term {}: follower {follower} lost acknowledged entries \
                             (its log ends at {follower_last}, it had acknowledged {}); \
                             replicating them again",
                            self.id,
                            self.term,
                            progress.match_index
                        );
                        progress.forget_match_above(follower_last);
                    }
                }
                let next_index = match hint {
                    RejectHint::LogTooShort { last_index } => last_index.next(),
                    RejectHint::ConflictingTerm {
                        conflict_term,
                        first_index,
                    } => match self.log.last_index_of_term(conflict_term) {
                        // We hold entries of that term: the follower may match up to the end
                        // of our run of it.
                        Some(index) => index.next(),
                        None => first_index,
                    },
                }
                .min(prev_index);
                if let Some(progress) = self.progress.get_mut(&follower) {
                    progress.probe_from(next_index);
                }
                self.send_appends(follower);
            }
        }
    }

    fn handle_heartbeat_response(&mut self, follower: NodeId, read_round: u64) {
        if self.role != Role::Leader {
            return;
        }
        let inflight_appends_max = self.config.inflight_appends_max;
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&follower) else {
            return;
        };
        progress.recent_active = true;
        progress.read_round_acked = progress.read_round_acked.max(read_round);
        progress.resume(inflight_appends_max);
        let caught_up = progress.match_index == last_index;
        if !caught_up {
            self.send_append(follower, true);
        } else if self.is_transfer_target(follower) {
            // The TimeoutNow sent when it caught up may have been lost.
            self.send(follower, MessageBody::TimeoutNow);
        }
        self.release_confirmed_reads();
    }

    /// Raft §5.3/§5.4.2: commit the highest index stored on a majority, but only if its
    /// entry is from the current term; earlier entries commit with it.
    fn maybe_commit(&mut self) -> bool {
        let quorum_index = self.quorum_index(self.log.persisted());
        if !self.may_commit_to(quorum_index) {
            return false;
        }
        let had_committed_in_term = self.committed_in_current_term();
        let change_was_in_progress = self.change_in_progress();
        self.log.commit_to(quorum_index);
        if change_was_in_progress && !self.change_in_progress() {
            self.on_change_committed();
            if self.role != Role::Leader {
                return true;
            }
        }
        if !had_committed_in_term {
            // Reads that waited for the leader to learn the true commit index may go on.
            let waiting = std::mem::take(&mut self.reads.awaiting_term_commit);
            if self.leader_alone_is_quorum() {
                let index = self.log.committed();
                self.read_states.extend(
                    waiting
                        .into_iter()
                        .map(|read_id| ReadState { read_id, index }),
                );
            } else {
                self.reads.unsent.extend(waiting);
            }
        }
        true
    }

    /// The highest index a majority of the acting voters holds, counting this node's log
    /// as held up to `own` (if it is one of them: a leader removing itself does not count).
    fn quorum_index(&self, own: LogIndex) -> LogIndex {
        let membership = self.membership();
        let mut match_indexes: Vec<LogIndex> = membership
            .voters()
            .iter()
            .map(|&voter| {
                if voter == self.id {
                    own
                } else {
                    self.progress
                        .get(&voter)
                        .map_or(LogIndex::ZERO, |progress| progress.match_index)
                }
            })
            .collect();
        match_indexes.sort_unstable_by(|a, b| b.cmp(a));
        match membership.quorum() {
            0 => LogIndex::ZERO,
            quorum => match_indexes[quorum - 1],
        }
    }

    /// The leader's own change committed: followers it removed get nothing more, and a
    /// leader that is no longer a voter steps down, first telling the most up-to-date voter
    /// to campaign at once (dissertation §3.10, §4.2.2).
    fn on_change_committed(&mut self) {
        self.sync_progress();
        if self.membership().is_voter(self.id) {
            return;
        }
        let last_index = self.log.last_index();
        let successor = self
            .progress
            .iter()
            .filter(|(&id, _)| self.membership().is_voter(id))
            .max_by_key(|(&id, progress)| (progress.match_index, std::cmp::Reverse(id)))
            .map(|(&id, progress)| (id, progress.match_index));
        log::info!(
            "node {} term {}: no longer a voter, stepping down (handing over to {successor:?})",
            self.id,
            self.term
        );
        if let Some((successor, match_index)) = successor {
            if match_index == last_index {
                self.send(successor, MessageBody::TimeoutNow);
            }
        }
        let term = self.term;
        self.become_follower(term, None);
    }

    /// Raft §5.4.2: a leader commits by counting replicas only an entry of its own term.
    fn may_commit_to(&self, quorum_index: LogIndex) -> bool {
        quorum_index > self.log.committed() && self.log.term(quorum_index) == Some(self.term)
    }

    fn is_transfer_target(&self, follower: NodeId) -> bool {
        self.transfer
            .as_ref()
            .is_some_and(|transfer| transfer.target == follower)
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    // ---- ReadIndex ------------------------------------------------------------------------

    fn start_read_round(&mut self) {
        self.reads.round += 1;
        let round = self.reads.round;
        let index = self.log.committed();
        let unsent = std::mem::take(&mut self.reads.unsent);
        self.reads
            .pending
            .extend(unsent.into_iter().map(|read_id| PendingRead {
                read_id,
                index,
                round,
            }));
        self.heartbeat_elapsed_ticks = 0;
        self.broadcast_heartbeat();
    }

    fn release_confirmed_reads(&mut self) {
        let Some(front) = self.reads.pending.front() else {
            return;
        };
        let membership = self.membership();
        let mut acked: Vec<u64> = self
            .progress
            .iter()
            .filter(|(&id, _)| membership.is_voter(id))
            .map(|(_, progress)| progress.read_round_acked)
            .collect();
        if membership.is_voter(self.id) {
            acked.push(u64::MAX); // the leader confirms itself
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = membership.quorum();
        let Some(&confirmed_round) = quorum.checked_sub(1).and_then(|at| acked.get(at)) else {
            return;
        };
        if front.round > confirmed_round {
            return;
        }
        while let Some(read) = self.reads.pending.front() {
            if read.round > confirmed_round {
                break;
            }
            self.read_states.push(ReadState {
                read_id: read.read_id,
                index: read.index,
            });
            self.reads.pending.pop_front();
        }
    }

    // ---- Helpers --------------------------------------------------------------------------

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    fn ensure_leader(&self) -> Result<(), ProposeError> {
        if self.role == Role::Leader {
            Ok(())
        } else {
            Err(ProposeError::NotLeader {
                leader: self.leader,
            })
        }
    }

    /// Whether this leader alone is a majority (a one-voter cluster): nothing to wait for.
    fn leader_alone_is_quorum(&self) -> bool {
        self.membership().is_quorum(&[self.id])
    }

    /// The other voters of the acting membership: whom a candidate asks.
    fn followers(&self) -> Vec<NodeId> {
        self.membership()
            .voters()
            .into_iter()
            .filter(|&voter| voter != self.id)
            .collect()
    }

    fn acting_config(&self) -> &Config {
        match self.configs.last() {
            Some(config) => config,
            None => panic!("node {} term {}: no membership", self.id, self.term),
        }
    }

    /// Whom a leader replicates to: every other member of the acting membership, and while
    /// a change is in progress the members of the one before it too, so that a removed
    /// node learns of its removal (and stops campaigning) before the leader lets it go.
    fn replication_targets(&self) -> BTreeSet<NodeId> {
        let mut targets: BTreeSet<NodeId> = self.membership().ids().into_iter().collect();
        if self.change_in_progress() && self.configs.len() >= 2 {
            targets.extend(self.configs[self.configs.len() - 2].membership.ids());
        }
        targets.remove(&self.id);
        targets
    }

    /// Leader only: a progress for every replication target, none for anyone else.
    fn sync_progress(&mut self) {
        let targets = self.replication_targets();
        self.progress.retain(|id, _| targets.contains(id));
        let next_index = self.log.last_index().next();
        for target in targets {
            self.progress
                .entry(target)
                .or_insert_with(|| Progress::new(next_index));
        }
        if let Some(transfer) = &self.transfer {
            if !self.membership().is_voter(transfer.target) {
                self.transfer = None;
            }
        }
    }

    /// Records a membership appended to the log at `id` (acting from now on).
    fn push_config(&mut self, id: EntryId, membership: Membership) {
        if membership != *self.membership() {
            self.membership_changed = true;
        }
        self.configs.push(Config { id, membership });
    }

    /// After a follower's append: memberships whose entries were truncated away are
    /// dropped (the one before acts again), and those `entries` appended are added.
    fn refresh_configs(&mut self, entries: &[Entry]) {
        let offset = self.log.offset().index;
        while self.configs.len() > 1 {
            let Some(last) = self.configs.last() else {
                break;
            };
            if last.id.index <= offset || self.log.matches(last.id) {
                break;
            }
            let dropped = self.configs.pop();
            log::info!(
                "node {} term {}: membership entry {:?} truncated away, reverting",
                self.id,
                self.term,
                dropped.map(|config| config.id)
            );
            self.membership_changed = true;
        }
        for entry in entries {
            if let EntryPayload::Membership(membership) = &entry.payload {
                if entry.index > self.acting_config().id.index && self.log.matches(entry.id()) {
                    self.push_config(entry.id(), membership.clone());
                }
            }
        }
        if self.membership_changed && self.role == Role::Follower && !self.can_campaign() {
            self.early_campaign = None;
        }
    }

    fn progress_of(&self, follower: NodeId) -> &Progress {
        match self.progress.get(&follower) {
            Some(progress) => progress,
            None => panic!(
                "node {} term {}: no progress for {follower}",
                self.id, self.term
            ),
        }
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        if !term.is_sane() {
            // Only a node restored at an absurd term gets here (see `Core::new`): every peer
            // drops such a message, and an older build would adopt the term.
            return;
        }
        let leader_traffic = self.role == Role::Leader
            && matches!(
                body,
                MessageBody::AppendEntries { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::InstallSnapshot { .. }
                    | MessageBody::TimeoutNow
            );
        let message = Message {
            from: self.id,
            to,
            term,
            body,
        };
        if leader_traffic {
            self.messages.push(message);
        } else {
            self.messages_after_persist.push(message);
        }
    }
}

#[cfg(test)]
mod tests;
