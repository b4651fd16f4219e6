//! The node loop: the one thread that owns the Raft core and the queue, and alone decides
//! what the WAL thread writes. It holds dispatch, `Ready` processing and apply; its parts
//! live beside it: the persistence pipeline (`persist_pipeline`), snapshots (`snapshots`),
//! status replies (`status`), shutdown (`shutdown`) and the WAL thread (`wal_thread`).
//!
//! Each round: block for one event, drain a bounded batch more, then work off the core's
//! `Ready`s (the order is the core's contract, see `raft` module docs):
//!
//! 1. send `messages` (a leader's appends leave before its own copy is durable, so the
//!    three fsyncs overlap);
//! 2. hand the hard state and entries to the WAL thread as one numbered batch
//!    (`persist_pipeline` numbers it), which syncs batch N while the loop goes on and the
//!    batches after it queue up: the next sync covers all of them (group commit, one fsync
//!    per group);
//! 3. hold `messages_after_persist` (votes and acks promise durability) and the
//!    `on_persisted` report until every batch up to this `Ready`'s is durable; with nothing
//!    in flight they go at once. Else the messages ride on this `Ready`'s batch (or on an
//!    empty one queued behind the batches in flight) and the WAL thread sends them on its
//!    own DEALERs right after the sync, one thread hop less per follower ack; the loop
//!    reports `on_persisted` once the thread's published progress says so, which it reads
//!    every round (and is woken for, with [`Event::Persisted`], only while a leader's
//!    commit waits for its own copy alone: `wal_thread`). A leader counts its own copy
//!    toward the majority only from that report on. A follower whose loop has no other
//!    event waiting, while the WAL thread is idle, writes and syncs the batch itself and
//!    sends its acks at once (`wal_thread`, "Direct writes");
//! 4. apply `committed` to the queue and answer the writes waiting there, but only if the
//!    applied entry is the one they proposed (same term), else a new leader overwrote it;
//! 5. release reads whose leadership was confirmed once applied reaches their index.
//!
//! # Why a `Ready` may be taken while the previous one is still syncing
//!
//! The core hands each entry out once (`take_unstable`) and ignores an `on_persisted` for
//! an entry that was overwritten meanwhile (`RaftLog::persisted_to` checks the term), so
//! reports may come late. Everything that is not a leader's replication traffic (votes,
//! vote requests, append and heartbeat responses) is in `messages_after_persist`, and those
//! wait for every batch before them (the WAL thread sends them after the sync of their
//! group, and the channel is FIFO), so a term or vote is durable before any message that
//! depends on it leaves, and an ack for entries that arrived twice waits for the batch that
//! carries them. They may overtake, or be overtaken by, what the loop sends on its own
//! DEALERs (two connections); `wal_thread` says why Raft does not mind. What a later
//! `Ready` sends at once is leader traffic, which the core already allows to leave before
//! the leader's own copy is durable. A follower may apply committed
//! entries before its own copy is durable (committed means durable on a majority; etcd's
//! async storage writes allow the same); a snapshot taken of them is recoverable even if
//! the WAL then loses its tail (`recovery`: a WAL behind the snapshot restarts after it).
//!
//! Then take a snapshot if one is due, expire late requests (TIMEOUT: outcome unknown), end
//! or serve blocking GETs (`waiting`), log role changes, publish the turn's state to the
//! metrics endpoint when there is one (`super::metrics`), ring the client thread. Requests never wait for one another: each is
//! proposed as it arrives.
//!
//! The fsync runs on the WAL thread rather than on the loop because, while the disk is
//! busy, the loop takes acks and proposals instead of sleeping, and one sync covers more
//! entries (measured: docs/PERFORMANCE.md, "fsync on the loop vs a WAL thread").
//!
//! A storage error stops the node from participating at all (no more ticks, messages or
//! proposals: an fsync that failed may have lost data, so retrying could acknowledge what is
//! not on disk). It keeps answering `status`, and everything else `UNAVAILABLE`, so the
//! operator sees the logged error without the process crash-looping under a supervisor.

use super::event::PersistReport;
use super::event::{Event, LoadedSnapshot, SnapshotSaved};
use super::lease_clock::LeaseClock;
use super::log_limit::TermRefusalLog;
use super::members::AddressBook;
use super::metrics::{LoopView, MetricsPublisher};
use super::peer_finder::PeerFinder;
use super::pending::{PendingRequests, UncommittedBytes, WriteEnd};
use super::persist_pipeline::{PersistPipeline, ReadyWrites};
use super::snapshots::{SnapshotSettings, Snapshots};
use super::status::WalCounters;
use super::wait::AdaptiveWait;
use super::waiters::Waiters;
use super::wal_thread::{WalCommand, WalThread};
use super::NodeError;
use crate::config::NodeConfig;
use crate::protocol::{ErrorCode, Outcome};
use crate::queue::Queue;
use crate::raft::{
    Core, Entry, EntryId, EntryPayload, HardState, LogIndex, Message, MessageBody, NodeId, Ready,
    Role, SnapshotMeta, Term,
};
use crate::storage::{FsyncPolicy, LogStore, StorageError};
use crate::transport::client::{ClientRequest, ClientTransport};
use crate::transport::peer::PeerTransport;
use crate::transport::watch::PeerConnection;
use crossbeam_channel::{Receiver, Sender};
use membership::MemberChanges;
use shutdown::Shutdown;
use std::time::Instant;

mod admission;
mod membership;
mod shutdown;
mod waiting;

/// Events handled per round before the core's output is processed: bounds the latency a
/// burst adds to everything queued behind it, while still batching syncs.
const EVENT_BATCH_MAX: usize = 512;

/// What the loop needs to start.
pub(super) struct NodeParts {
    pub(super) config: NodeConfig,
    pub(super) core: Core,
    pub(super) store: Box<dyn LogStore + Send>,
    pub(super) queue: Queue,
    pub(super) clients: ClientTransport,
    pub(super) peers: PeerTransport,
    /// For the snapshot writer and loader threads to report back.
    pub(super) events: Sender<Event>,
    /// The hard state `store` holds durably.
    pub(super) durable_hard_state: HardState,
    /// The snapshot `queue` was loaded from (`0@0`: none).
    pub(super) snapshot: SnapshotMeta,
    /// The snapshot file before it, if any.
    pub(super) previous_snapshot: SnapshotMeta,
    /// Where to publish the loop's state (`metrics_port` set), else `None`.
    pub(super) metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

pub(super) struct NodeLoop {
    config: NodeConfig,
    core: Core,
    /// Owns the log store: every store operation goes through it, in order.
    wal: WalThread,
    /// Numbers the batches for the WAL thread and holds what waits for them.
    pipeline: PersistPipeline,
    queue: Queue,
    clients: ClientTransport,
    peers: PeerTransport,
    pending: PendingRequests,
    /// This node's proposals as leader not yet committed: admission bounds their bytes.
    uncommitted: UncommittedBytes,
    next_read_id: u64,
    /// Pending `topic GET` reads that asked for `detail` (PROTOCOL.md §8): answered with
    /// topic details instead of names (see `admission::answer`).
    detail_reads: std::collections::HashSet<crate::transport::client::Ticket>,
    /// This leader's last `EndLeases` proposal: no other is proposed in its term until it
    /// is applied (see `admission::maybe_end_leases`).
    lease_end_proposed: Option<EntryId>,
    /// The time leases are granted and ended by (`lease_clock`).
    lease_clock: LeaseClock,
    /// Leased GETs and TOUCHes that came while this leader had not caught up in its term:
    /// they need its lease clock, which it may not read yet (see
    /// `admission::release_awaiting_clock`).
    awaiting_clock: Vec<ClientRequest>,
    /// Blocking GETs parked or in flight (PROTOCOL.md §9; see `waiting`).
    waiters: Waiters,
    /// `applied` when the waiters last looked for messages to serve.
    waiters_seen_applied: LogIndex,
    /// The last index applied to `queue` (or installed with a snapshot), and its term.
    /// Invariant: `applied <= core.commit_index()`.
    applied: LogIndex,
    applied_term: Term,
    snapshots: Snapshots,
    /// Set after a storage error (or a snapshot it cannot install): the node no longer
    /// participates in Raft and answers everything but `status` UNAVAILABLE.
    halted: bool,
    shutdown: Option<Shutdown>,
    /// What was last logged, to log changes only.
    observed: (Role, Term, Option<NodeId>),
    /// Logs the core's dropped messages and refused campaigns, rate-limited.
    term_refusal_log: TermRefusalLog,
    /// Every member's address, following the membership the core acts on.
    book: AddressBook,
    /// Membership requests in progress on this leader (`membership`).
    member_changes: MemberChanges,
    /// Whether this node has logged that it was removed.
    removed_logged: bool,
    /// Client requests this node took in since start, `status` and `stats` aside (v2
    /// `status` carries it as `requests`, for `rrmq top`'s requests per second).
    requests: u64,
    /// Publishes the loop's state to the metrics endpoint once per turn (`metrics`).
    metrics: Option<MetricsPublisher>,
    /// Asks the members this node knows for those it has no address for, while no leader
    /// is known (`peer_finder`; the loop's side is in `membership`).
    finder: PeerFinder,
    finding: membership::Finding,
    /// No event was waiting when this round's `Ready`s began: a batch may be written on the
    /// loop itself (`persist`).
    quiet: bool,
}

impl NodeLoop {
    /// Fails only if the WAL thread cannot be started.
    pub(super) fn new(parts: NodeParts) -> Result<NodeLoop, NodeError> {
        let NodeParts {
            config,
            core,
            store,
            queue,
            clients,
            peers,
            events,
            durable_hard_state,
            snapshot,
            previous_snapshot,
            metrics,
        } = parts;
        let observed = (core.role(), core.term(), core.leader());
        let (applied, applied_term) = (snapshot.index(), snapshot.last.term);
        let fsync = FsyncPolicy::from(config.fsync);
        // The WAL thread sends the acks that wait for its syncs on DEALERs of its own (a
        // ZeroMQ socket stays on one thread).
        let wal_dealers = peers.connect_dealers()?;
        let wal = WalThread::start(store, events.clone(), wal_dealers).map_err(|source| {
            NodeError::Spawn {
                name: "wal",
                source,
            }
        })?;
        if let Some(metrics) = &metrics {
            wal.progress().observe_syncs(metrics.clone());
        }
        let finder =
            PeerFinder::start(&config, events.clone()).map_err(|source| NodeError::Spawn {
                name: "peer-finder",
                source,
            })?;
        let pipeline = PersistPipeline::new(config.id, durable_hard_state);
        let snapshots = Snapshots::new(
            SnapshotSettings {
                node: config.id,
                data_dir: config.data_dir.clone(),
                fsync,
                thresholds: config.snapshot.clone(),
                queue_config: queue.config().clone(),
                events,
            },
            snapshot,
            previous_snapshot,
        );
        // The membership may differ from the config's (restored from the log or a
        // snapshot): connect to the members it names.
        let book = AddressBook::new(core.membership(), &config.cluster);
        membership::follow_members(
            &peers,
            &config,
            &book,
            core.membership(),
            core.committed_membership(),
            &std::collections::BTreeMap::new(),
        );
        let removed_logged = core.is_removed();
        if removed_logged {
            log::warn!(
                "this node (id {}) was removed from the cluster (its own log says so): it no \
                 longer votes, campaigns or serves clients; stop it and wipe its data dir",
                config.id
            );
        }
        Ok(NodeLoop {
            config,
            core,
            wal,
            pipeline,
            queue,
            clients,
            peers,
            pending: PendingRequests::new(),
            uncommitted: UncommittedBytes::default(),
            next_read_id: 0,
            detail_reads: std::collections::HashSet::new(),
            lease_end_proposed: None,
            lease_clock: LeaseClock::default(),
            awaiting_clock: Vec::new(),
            waiters: Waiters::new(),
            waiters_seen_applied: applied,
            applied,
            applied_term,
            snapshots,
            halted: false,
            shutdown: None,
            observed,
            term_refusal_log: TermRefusalLog::new(),
            book,
            member_changes: MemberChanges::default(),
            removed_logged,
            requests: 0,
            metrics: metrics.map(MetricsPublisher::new),
            finder,
            finding: membership::Finding::default(),
            quiet: false,
        })
    }

    /// Runs until shutdown has completed, then stops the transport threads.
    pub(super) fn run(mut self, events: &Receiver<Event>) {
        // Spin-and-yield only while events come back to back (`super::wait`).
        let mut wait = AdaptiveWait::default();
        loop {
            // With work left over (a long log being applied slice by slice), only look for
            // events; otherwise sleep until one comes.
            let first = if (!self.halted && self.core.has_ready()) || self.arm_persist_report() {
                match events.try_recv() {
                    Ok(event) => Some(event),
                    Err(crossbeam_channel::TryRecvError::Empty) => None,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                }
            } else {
                match wait.recv(events) {
                    Ok(event) => Some(event),
                    Err(_) => break, // Every producer is gone; nothing more can happen.
                }
            };
            if let Some(first) = first {
                self.handle(first);
            }
            for _ in 0..EVENT_BATCH_MAX {
                match events.try_recv() {
                    Ok(event) => self.handle(event),
                    Err(_) => break,
                }
            }
            self.take_durable_progress();
            self.quiet = events.is_empty();
            self.process_ready();
            if !self.halted {
                let applied = EntryId::new(self.applied_term, self.applied);
                self.snapshots.maybe_take(applied, &self.queue);
            }
            let now = Instant::now();
            self.release_awaiting_clock(now);
            self.expire(now);
            self.tend_waiters(now);
            self.tend_member_changes(now);
            self.maybe_find_peers(now);
            self.log_changes();
            self.publish_metrics();
            self.term_refusal_log
                .observe(now, self.core.term_refusals());
            self.clients.flush();
            if cfg!(debug_assertions) {
                // O(log length): debug builds only (unit and end-to-end tests).
                self.core.check_invariants();
            }
            if self.shutdown_done() {
                break;
            }
        }
        self.finish(events);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Client(request) => self.on_client_request(request),
            Event::Peer(message) => {
                if self.halted {
                    return;
                }
                if let Some(metrics) = &mut self.metrics {
                    metrics.observe_peer_message(&message);
                }
                match message.body {
                    // Stepped at once if the core will drop it: nothing to decode for it.
                    MessageBody::InstallSnapshot { ref snapshot }
                        if self.core.accepts_terms(&message) =>
                    {
                        let snapshot = snapshot.clone();
                        self.on_install_snapshot(message, snapshot)
                    }
                    _ => self.core.step(message),
                }
            }
            Event::SnapshotSent(report) => {
                if !self.halted {
                    self.core.report_snapshot(report.to, report.delivered);
                }
            }
            Event::SnapshotSaved(saved) => self.on_snapshot_saved(saved),
            Event::SnapshotLoaded(loaded) => self.on_snapshot_loaded(*loaded),
            Event::Persisted(report) => self.on_persist_report(report),
            Event::Tick => {
                if !self.halted {
                    self.core.tick();
                    self.maybe_end_leases();
                }
            }
            Event::Shutdown => self.on_shutdown(),
            Event::PeerConnection(change) => self.on_peer_connection(change),
            Event::MembersFound(found) => self.on_members_found(found),
        }
    }

    /// The transport saw a peer's connection drop or come back: the core decides what that
    /// means (an early pre-vote when it was the leader's; see `Core::peer_connection_lost`).
    fn on_peer_connection(&mut self, change: PeerConnection) {
        if self.halted {
            return;
        }
        if change.up {
            self.core.peer_connection_restored(change.peer);
        } else {
            self.core.peer_connection_lost(change.peer);
        }
    }

    /// Handles Readies until the core has none, or until a slice of committed entries was
    /// applied: the rest waits for the next round, so events (status, ticks, peers) are
    /// served in between while a restarted node replays a long log.
    fn process_ready(&mut self) {
        while !self.halted && self.core.has_ready() {
            let applied_before = self.applied;
            let ready = self.core.ready();
            let Ready {
                snapshot,
                hard_state,
                entries,
                messages,
                messages_after_persist,
                committed,
                read_states,
                aborted_reads,
                membership,
            } = ready;
            if let Some(membership) = membership {
                self.on_membership(&membership);
            }
            let installed = match snapshot {
                Some(snapshot) => match self.install_snapshot(snapshot.clone()) {
                    Ok(()) => Some(snapshot),
                    Err(error) => {
                        self.on_storage_failure(error);
                        return;
                    }
                },
                None => None,
            };
            // A leader's appends leave now, so the followers' fsyncs overlap its own.
            self.peers.send(messages);
            self.persist(ReadyWrites {
                snapshot: installed,
                hard_state,
                entries,
                messages_after_persist,
            });
            if self.halted {
                return;
            }
            // Committed entries may be applied before this node's copy is durable (the core's
            // contract: committed means durable on a majority). A leader's always are: it
            // counts itself only after `on_persisted`.
            self.apply(committed);
            for read in read_states {
                self.pending.confirm_read(read.read_id, read.index);
            }
            for read_id in aborted_reads {
                if let Some(ticket) = self.pending.abort_read(read_id) {
                    self.fail(
                        ticket,
                        ErrorCode::NotLeader,
                        "leadership was lost before the read was confirmed",
                    );
                }
            }
            let ready_reads = self.pending.take_ready_reads(self.applied);
            if !ready_reads.is_empty() {
                let topics = self.queue.topics();
                for ticket in ready_reads {
                    self.answer(ticket, Outcome::Topics(topics.clone()));
                }
            }
            if self.applied != applied_before {
                break;
            }
        }
        // A loaded snapshot the core did not install (a stale term, or the log caught up).
        self.snapshots.discard_unused();
    }

    /// Hands a `Ready`'s writes to the WAL thread as the pipeline numbers them: the votes
    /// and acks that wait for the batch ride on it (the WAL thread sends them right after
    /// the sync), and the `on_persisted` report waits for the thread's progress
    /// ([`NodeLoop::take_durable_progress`]); with nothing in flight, both go at once (see
    /// `persist_pipeline`). A follower with no event waiting writes the batch itself when
    /// the WAL thread is idle (`wal_thread`, "Direct writes"), and its acks leave at once.
    fn persist(&mut self, writes: ReadyWrites) {
        let handoff = self.pipeline.persist(writes);
        if let Some(batch) = handoff.batch {
            if self.quiet && self.core.role() != Role::Leader && self.wal.idle() {
                match self.wal.write_directly(batch) {
                    Ok(messages) => {
                        self.peers.send(messages);
                        self.take_durable_progress();
                    }
                    Err(error) => self.on_storage_failure(error),
                }
                return;
            }
            if !self.wal.send(WalCommand::Batch(batch)) {
                self.on_wal_thread_gone();
                return;
            }
        }
        self.peers.send(handoff.send_now);
        if let Some(last) = handoff.persisted_now {
            self.core.on_persisted(last);
        }
    }

    /// The WAL thread made batches durable (what waited for them is released by
    /// [`NodeLoop::take_durable_progress`] this round), or failed.
    fn on_persist_report(&mut self, report: PersistReport) {
        match report {
            PersistReport::Durable { .. } => {}
            PersistReport::Failed(error) => {
                if !self.halted {
                    self.on_storage_failure(error);
                }
            }
        }
    }

    /// Releases what waited for the batches the WAL thread has made durable since the last
    /// round (it publishes its progress rather than reporting every group, see
    /// `wal_thread`).
    fn take_durable_progress(&mut self) {
        if self.halted {
            return;
        }
        let through_batch = self.wal.progress().durable_through();
        for last in self.pipeline.on_durable(through_batch) {
            // The leader's own copy counts toward the majority from here on.
            self.core.on_persisted(last);
        }
    }

    /// Before the loop sleeps: asks the WAL thread for an [`Event::Persisted`] if the next
    /// thing to happen waits for this node's own copy alone (a leader whose followers
    /// already hold what it has not synced yet), or on shutdown. Otherwise the next event
    /// (an ack, a tick) picks the progress up. True when that batch is durable already: do
    /// not sleep, take it now.
    fn arm_persist_report(&mut self) -> bool {
        let wanted = if self.halted {
            None
        } else if self.shutdown.is_some() || self.core.commit_waits_for_own_copy() {
            self.pipeline.first_waiting_batch()
        } else {
            None
        };
        self.wal.progress().wake_when_durable(wanted.unwrap_or(0))
    }

    /// The WAL thread stopped taking commands: it reported a failure (which may still be
    /// queued behind this) or panicked. Either way nothing more becomes durable.
    fn on_wal_thread_gone(&mut self) {
        self.on_storage_failure(StorageError::Failed(
            "the WAL thread has stopped".to_string(),
        ));
    }

    fn on_storage_failure(&mut self, error: StorageError) {
        log::error!(
            "storage failed, no longer serving (restart the node once the disk is fixed): \
             {error}"
        );
        self.stop_participating("this node's storage failed; the outcome is unknown");
    }

    /// Fail-stop without exiting: no more ticks, messages or proposals; pending requests
    /// are answered UNAVAILABLE with `why`.
    fn stop_participating(&mut self, why: &str) {
        self.halted = true;
        // Never sent: what they promise may not be on disk.
        self.pipeline.abandon();
        self.wal.stop_sending();
        for ticket in self.pending.take_all() {
            self.fail(ticket, ErrorCode::Unavailable, why);
        }
    }

    fn apply(&mut self, committed: Vec<Entry>) {
        for entry in committed {
            assert_eq!(
                entry.index,
                self.applied.next(),
                "node {}: committed entries must be applied in order",
                self.config.id
            );
            let outcome = match &entry.payload {
                EntryPayload::Noop => None,
                EntryPayload::Membership(_) => {
                    // A node removed by this entry gets nothing more: drop its connection.
                    self.connect_peers();
                    None
                }
                EntryPayload::Command(bytes) => Some(self.queue.apply(entry.index, bytes)),
            };
            self.applied = entry.index;
            self.applied_term = entry.term;
            self.snapshots.note_applied(entry.size_bytes());
            match (self.pending.take_write(entry.id()), outcome) {
                (None, _) => {}
                (Some((ticket, WriteEnd::Applied)), Some(outcome)) => {
                    log::trace!("request {ticket:?} applied at {}", entry.id());
                    self.answer_applied(ticket, outcome);
                }
                (Some((ticket, _)), _) => self.answer_lost(ticket),
            }
        }
    }

    // ---- Snapshots: the loop's side (the core and the WAL); `snapshots` does the rest ---

    /// The writer thread is done: on success, tell the core and compact.
    fn on_snapshot_saved(&mut self, saved: SnapshotSaved) {
        let write_duration = saved.write_duration;
        let Some(compaction) = self.snapshots.on_saved(saved, self.halted) else {
            return;
        };
        self.core
            .on_snapshot_saved(compaction.snapshot.clone(), compaction.core_to);
        // Queued behind the batches before it; the WAL never drops its last synced entry.
        if compaction.wal_to > LogIndex::ZERO
            && !self.wal.send(WalCommand::Compact(compaction.wal_to))
        {
            self.on_wal_thread_gone();
            return;
        }
        if let Some(metrics) = &self.metrics {
            metrics.snapshot_written(write_duration);
        }
        self.snapshots.compacted(&compaction);
    }

    /// An `InstallSnapshot` whose file has arrived. If the core needs the data, it is
    /// decoded on the loader thread first, and the message stepped once decoded.
    fn on_install_snapshot(&mut self, message: Message, snapshot: SnapshotMeta) {
        let needs_data = self.core.snapshot_needs_data(&snapshot);
        if let Some(message) = self
            .snapshots
            .on_install_snapshot(message, snapshot, needs_data)
        {
            self.core.step(message);
        }
    }

    fn on_snapshot_loaded(&mut self, loaded: LoadedSnapshot) {
        if let Some(message) = self.snapshots.on_loaded(loaded, self.halted) {
            self.core.step(message);
        }
        if self.halted {
            return;
        }
        if let Some((waiting, snapshot)) = self.snapshots.take_waiting() {
            self.on_install_snapshot(waiting, snapshot);
        }
    }

    /// The core installed `snapshot` from the leader: its file becomes this node's newest
    /// snapshot and its queue the loop's (the WAL's restart record follows in the `Ready`'s
    /// batch).
    fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        self.applied = snapshot.index();
        self.applied_term = snapshot.last.term;
        self.queue = self.snapshots.install(snapshot)?;
        Ok(())
    }

    /// The WAL's counters for `status`.
    fn wal_counters(&self) -> WalCounters {
        let (syncs, entries) = self.wal.progress().counters();
        WalCounters { syncs, entries }
    }

    /// Hands the metrics endpoint this turn's state (`metrics`; nothing without one).
    fn publish_metrics(&mut self) {
        if let Some(metrics) = &mut self.metrics {
            metrics.publish(&LoopView {
                core: &self.core,
                queue: &self.queue,
                applied: self.applied,
                halted: self.halted,
                shutting_down: self.shutdown.is_some(),
            });
        }
    }

    fn log_changes(&mut self) {
        let now = (self.core.role(), self.core.term(), self.core.leader());
        if now == self.observed {
            return;
        }
        let (role, term, leader) = now;
        // The snapshot receiver takes chunks only from this leader, in this term.
        self.peers.follow(term, leader);
        if self.observed.0 == Role::Leader && role != Role::Leader {
            self.peers.cancel_snapshot_transfers();
        }
        // The core logs elections and step-downs at info; learning who leads is ours to say.
        match (role, leader) {
            (Role::Leader, _) => log::debug!("became leader in term {term}"),
            (Role::Follower, Some(leader)) => {
                log::info!("following node {leader} in term {term}")
            }
            (Role::Follower, None) => log::debug!("follower without a leader in term {term}"),
            (Role::PreCandidate, _) => log::debug!("pre-campaigning after term {term}"),
            (Role::Candidate, _) => log::debug!("campaigning in term {term}"),
        }
        self.observed = now;
    }
}

#[cfg(test)]
mod tests;
