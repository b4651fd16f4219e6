//! The node loop: the one thread that owns the Raft core, the log store and the queue.
//!
//! Each round: block for one event, drain a bounded batch more, then work off the core's
//! `Ready`s (the order is the core's contract, see `raft` module docs):
//!
//! 1. send `messages` (a leader's appends leave before its own copy is durable, so the
//!    three fsyncs overlap);
//! 2. hand the hard state and entries to the WAL thread as one numbered batch
//!    (`wal_thread`), which syncs batch N while the loop goes on and the batches after it
//!    queue up: the next sync covers all of them (group commit, one fsync per group);
//! 3. hold `messages_after_persist` (votes and acks promise durability) and the
//!    `on_persisted` report until every batch up to this `Ready`'s is durable; with nothing
//!    in flight they go at once. Else the messages ride on this `Ready`'s batch (or on an
//!    empty one queued behind the batches in flight) and the WAL thread sends them on its
//!    own DEALERs right after the sync, one thread hop less per follower ack; the loop
//!    reports `on_persisted` when the thread says so ([`Event::Persisted`]). A leader counts
//!    its own copy toward the majority only from that report on;
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
//! Then expire late requests (TIMEOUT: outcome unknown), log role changes, ring the client
//! thread. Requests never wait for one another: each is proposed as it arrives.
//!
//! # fsync on the WAL thread, not on the loop: measured
//!
//! Kept because it did better on the whole with `--fsync always`. Interleaved A/B on the
//! shared 2-core VM, 2026-11-22, 8 runs each, load average 4.4-9.3 (A = loop fsync, commit
//! 4f9762b; B = this thread, 201581f), medians A -> B: produce C=1 p50 0.740 -> 0.704 ms
//! (p99 4.58 -> 3.39), produce C=64 15,034 -> 15,559 ops/s, consume C=16 8,465 -> 9,702
//! ops/s, leader entries per fsync at C=64 20.0 -> 27.9. The noise is as large as the
//! differences (C=64 pairs: B ahead in 4 of 8, by up to 10,253; behind by up to 4,202),
//! so the claim is "no worse at C=1, somewhat better under load", not more. Why it helps
//! at all on 2 cores where CPU is the bottleneck: while the disk is busy the loop takes acks
//! and proposals instead of sleeping, and one sync covers more entries. Its cost is two
//! thread hand-offs per batch: under `--fsync never` (nothing to overlap) produce C=64 went
//! 26,029 -> 24,532 ops/s (4 pairs, B behind in each). One code path was kept for both
//! policies; all runs are in `docs/PERFORMANCE.md`, "fsync on the loop vs a WAL thread".
//!
//! # Snapshots
//!
//! After applying, the loop checks the thresholds (`--snapshot-entries`/`--snapshot-bytes`
//! since the last snapshot). To take one it clones the queue (`Queue::snapshot_view`,
//! O(segments), the only pause the loop sees) and hands the copy to a writer thread, one
//! snapshot at a time. When the file is durable ([`Event::SnapshotSaved`]) the loop tells the
//! core (`on_snapshot_saved`, compacting the in-memory log up to `--snapshot-log-margin`
//! entries before the snapshot) and compacts the WAL back to the *previous* snapshot, so a
//! damaged newest file still has a fallback. The newest two files are kept.
//!
//! An `InstallSnapshot` from the leader arrives only once its file is in the data dir (the
//! transport saw to that). Unless the core can take it without data (the log already holds
//! it), a loader thread decodes the file first ([`Event::SnapshotLoaded`]), then the message
//! is stepped; when the core's `Ready` says to install it, the loop renames the file to its
//! own newest snapshot, records in the WAL that the log restarts after it, and swaps the
//! queue, before persisting and applying the rest of that `Ready`.
//!
//! Measured on this project's 2-core VM (release build, 1 million queued 100-byte messages,
//! `node::recovery::tests::measure_a_snapshot_of_a_million_messages` and the e2e
//! `measure_restart_with_a_million_queued_messages`): the loop pauses 13 us (median) to
//! 116 us (worst of 20) for the view, where encoding in place would pause 82 ms; the file
//! is 108 MB, written in 0.2-0.6 s off the loop (fsync included); a restart loads it in
//! 0.16-0.5 s and serves the same state again 1 s after SIGKILL. A 60 s put/get soak (3
//! nodes, `--snapshot-entries 400`, 16 KiB segments, 510,000 operations) kept each data dir
//! under 95 KB and resident memory flat at 14-17 MB.
//!
//! A storage error stops the node from participating at all (no more ticks, messages or
//! proposals: an fsync that failed may have lost data, so retrying could acknowledge what is
//! not on disk). It keeps answering `status`, and everything else `UNAVAILABLE`, so the
//! operator sees the logged error without the process crash-looping under a supervisor.

use super::pending::{PendingRequests, WriteEnd};
use super::wal_thread::{PersistReport, WalBatch, WalCommand, WalThread};
use super::{Event, LoadedSnapshot, NodeError, SnapshotSaved};
use crate::config::NodeConfig;
use crate::protocol::{
    ErrorCode, ErrorInfo, LeaderInfo, Operation, Outcome, PeerProgress, Reply, StatsReport,
    StatusReport,
};
use crate::queue::{Command, LoggedCommand, Queue};
use crate::raft::{
    Core, Entry, EntryId, EntryPayload, HardState, LogIndex, Message, MessageBody, NodeId,
    ProposeError, Ready, Role, SnapshotMeta, Term,
};
use crate::storage::snapshot_file;
use crate::storage::{FsyncPolicy, LogStore, StorageError};
use crate::transport::client::{ClientRequest, ClientTransport, Ticket};
use crate::transport::peer::PeerTransport;
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Events handled per round before the core's output is processed: bounds the latency a
/// burst adds to everything queued behind it, while still batching syncs.
const EVENT_BATCH_MAX: usize = 512;

/// How long a leader that was asked to stop waits for its leadership transfer (and for the
/// requests in flight to be answered) before giving up (PROTOCOL.md §7: exit within ~1 s).
const SHUTDOWN_TRANSFER_WAIT: Duration = Duration::from_millis(300);

/// Snapshot files kept in the data dir: the newest, and one to fall back on.
const SNAPSHOTS_KEPT: usize = 2;

struct Shutdown {
    /// Stop waiting at this instant, whatever is still in flight.
    give_up_at: Instant,
}

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
}

/// The loop's snapshot bookkeeping.
struct Snapshots {
    /// The newest snapshot this node holds, taken or installed.
    newest: SnapshotMeta,
    /// The one before it: the WAL keeps the log back to it.
    previous: SnapshotMeta,
    /// Entries applied, and their bytes, since the last snapshot was started.
    entries_since: u64,
    bytes_since: u64,
    /// A snapshot being written on the writer thread.
    writing: Option<SnapshotMeta>,
    /// A received snapshot being decoded on the loader thread.
    loading: Option<SnapshotMeta>,
    /// The newest `InstallSnapshot` that arrived while another was loading: handled next.
    waiting: Option<Message>,
    /// A received snapshot, decoded, for the core's next `Ready::snapshot`.
    loaded: Option<(SnapshotMeta, Queue)>,
    /// The longest pause taking a snapshot view caused, for the logs.
    view_pause_max: Duration,
}

/// What a `Ready` left for the loop to do once its batch (and every batch before it) is
/// durable (its votes and acks went to the WAL thread with the batch).
struct AfterPersist {
    /// The last batch handed to the WAL thread when the `Ready` was taken.
    batch: u64,
    /// For the snapshot sender (never, in practice: see `persist`).
    messages: Vec<Message>,
    /// The `Ready`'s last entry, for `Core::on_persisted`.
    last_entry: Option<EntryId>,
}

pub(super) struct NodeLoop {
    config: NodeConfig,
    core: Core,
    /// Owns the log store: every store operation goes through it, in order.
    wal: WalThread,
    /// The number of the last batch that needed a sync, handed to the WAL thread (0: none).
    batches_sent: u64,
    /// The WAL thread reported every batch up to this one durable.
    /// Invariant: `durable_through <= batches_sent`.
    durable_through: u64,
    /// Oldest first, `batch` ascending: released as `durable_through` reaches them.
    after_persist: VecDeque<AfterPersist>,
    queue: Queue,
    clients: ClientTransport,
    peers: PeerTransport,
    events: Sender<Event>,
    fsync: FsyncPolicy,
    pending: PendingRequests,
    next_read_id: u64,
    /// The last index applied to `queue` (or installed with a snapshot), and its term.
    applied: LogIndex,
    applied_term: Term,
    snapshots: Snapshots,
    /// The hard state last handed to the WAL thread, to sync only when term or vote changed.
    written_hard_state: HardState,
    /// Sync groups made durable (one `sync` each; under `--fsync never` the store skips the
    /// fsync, but the group is still counted) and log entries made durable, since start.
    /// Shown in v2 `status` so `rrmq bench` can report entries per fsync.
    wal_syncs: u64,
    wal_entries: u64,
    /// Set after a storage error (or a snapshot it cannot install): the node no longer
    /// participates in Raft and answers everything but `status` UNAVAILABLE.
    halted: bool,
    shutdown: Option<Shutdown>,
    /// What was last logged, to log changes only.
    observed: (Role, Term, Option<NodeId>),
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
        } = parts;
        let observed = (core.role(), core.term(), core.leader());
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
        Ok(NodeLoop {
            config,
            core,
            wal,
            batches_sent: 0,
            durable_through: 0,
            after_persist: VecDeque::new(),
            queue,
            clients,
            peers,
            events,
            fsync,
            pending: PendingRequests::new(),
            next_read_id: 0,
            applied: snapshot.index(),
            applied_term: snapshot.last.term,
            snapshots: Snapshots {
                newest: snapshot,
                previous: previous_snapshot,
                entries_since: 0,
                bytes_since: 0,
                writing: None,
                loading: None,
                waiting: None,
                loaded: None,
                view_pause_max: Duration::ZERO,
            },
            written_hard_state: durable_hard_state,
            wal_syncs: 0,
            wal_entries: 0,
            halted: false,
            shutdown: None,
            observed,
        })
    }

    /// Runs until shutdown has completed, then stops the transport threads.
    pub(super) fn run(mut self, events: &Receiver<Event>) {
        loop {
            // With work left over (a long log being applied slice by slice), only look for
            // events; otherwise sleep until one comes.
            let first = if !self.halted && self.core.has_ready() {
                match events.try_recv() {
                    Ok(event) => Some(event),
                    Err(crossbeam_channel::TryRecvError::Empty) => None,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                }
            } else {
                match events.recv() {
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
            self.process_ready();
            self.maybe_start_snapshot();
            self.expire(Instant::now());
            self.log_changes();
            self.clients.flush();
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
                match message.body {
                    MessageBody::InstallSnapshot { snapshot } => {
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
                }
            }
            Event::Shutdown => self.on_shutdown(),
        }
    }

    fn on_client_request(&mut self, client_request: ClientRequest) {
        let ClientRequest {
            ticket,
            request,
            received_at,
        } = client_request;
        let operation = request.operation;
        if operation == Operation::Status {
            let reply = self.status();
            self.clients.reply(ticket, reply);
            return;
        }
        if operation == Operation::Stats {
            let reply = self.stats();
            self.clients.reply(ticket, reply);
            return;
        }
        if let Operation::Fault { drop_to, drop_from } = operation {
            self.on_fault(ticket, &drop_to, &drop_from);
            return;
        }
        if self.shutdown.is_some() {
            self.fail(
                ticket,
                ErrorCode::ShuttingDown,
                "the node is shutting down; retry on another node",
            );
            return;
        }
        if self.halted {
            self.fail(
                ticket,
                ErrorCode::Unavailable,
                "this node has stopped serving (its log says why); use another node",
            );
            return;
        }
        // From arrival at the socket, so time queued behind other events counts. One client
        // thread stamps them in channel order, so deadlines stay in arrival order.
        let deadline = received_at + self.config.request_timeout;
        let command = match operation {
            Operation::Status | Operation::Stats | Operation::Fault { .. } => {
                unreachable!("answered above")
            }
            Operation::ListTopics => {
                let read_id = self.next_read_id;
                self.next_read_id += 1;
                match self.core.read_index(read_id) {
                    Ok(()) => self.pending.add_read(read_id, ticket, deadline),
                    Err(error) => self.refused(ticket, error),
                }
                return;
            }
            Operation::CreateTopic { topic } => Command::CreateTopic { topic },
            Operation::Put { topic, message } => Command::Put { topic, message },
            Operation::Get { topic } => Command::Get { topic },
        };
        let bytes = LoggedCommand {
            session: request.session,
            command,
        }
        .encode();
        match self.core.propose(bytes) {
            Ok(entry) => {
                log::trace!("request {ticket:?} proposed at {entry}");
                if let Some(overwritten) = self.pending.add_write(entry, ticket, deadline) {
                    self.answer_lost(overwritten);
                }
            }
            Err(error) => self.refused(ticket, error),
        }
    }

    /// Tests only (`transport::fault`): from now on, drop peer messages to and from the named
    /// nodes. Refused unless the node was started with `--fault-injection`.
    fn on_fault(&mut self, ticket: Ticket, drop_to: &[u64], drop_from: &[u64]) {
        if !self.config.fault_injection {
            self.fail(
                ticket,
                ErrorCode::BadRequest,
                "fault injection is for tests only and is off: start the node with \
                 --fault-injection to enable it",
            );
            return;
        }
        log::warn!("fault injection: dropping messages to {drop_to:?} and from {drop_from:?}");
        let to: Vec<NodeId> = drop_to.iter().map(|id| NodeId(*id)).collect();
        let from: Vec<NodeId> = drop_from.iter().map(|id| NodeId(*id)).collect();
        self.peers.faults().set(&to, &from);
        self.answer(ticket, Outcome::Done);
    }

    fn refused(&mut self, ticket: Ticket, error: ProposeError) {
        match error {
            ProposeError::NotLeader { .. } => {
                self.fail(ticket, ErrorCode::NotLeader, "this node is not the leader")
            }
            ProposeError::TransferInProgress => self.fail(
                ticket,
                ErrorCode::Unavailable,
                "leadership is being transferred; retry shortly",
            ),
            ProposeError::TooManyPendingReads => self.fail(
                ticket,
                ErrorCode::Unavailable,
                "too many reads in flight; retry shortly",
            ),
            ProposeError::UnknownPeer(peer) => {
                unreachable!("reads and proposals name no peer, yet the core named {peer}")
            }
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
            } = ready;
            let installed = match snapshot {
                Some(snapshot) => match self.install_snapshot(snapshot) {
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
            let last_entry = entries.last().map(Entry::id);
            self.persist(
                installed,
                hard_state,
                entries,
                messages_after_persist,
                last_entry,
            );
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
        if let Some((unused, _)) = self.snapshots.loaded.take() {
            // The core did not install it (a stale term, or the log caught up meanwhile).
            log::info!("snapshot {} not needed after all", unused.last);
            self.discard_received(unused);
        }
    }

    /// Deletes a received snapshot file that will not be installed (unless it is the one
    /// loaded for the core's next `Ready`, which a repeated message must not take away).
    fn discard_received(&self, snapshot: SnapshotMeta) {
        if self
            .snapshots
            .loaded
            .as_ref()
            .is_some_and(|(loaded, _)| *loaded == snapshot)
        {
            return;
        }
        let path = snapshot_file::received_path(&self.config.data_dir, snapshot);
        if let Err(error) = std::fs::remove_file(&path) {
            log::debug!("deleting {}: {error}", path.display());
        }
    }

    /// Hands `hard_state` and `entries` (and an installed snapshot) to the WAL thread as one
    /// batch, with the `messages` that wait for it. The batch needs a sync unless only the
    /// commit index moved (a hint on restart, see `LogStore::set_hard_state`): such a batch
    /// keeps the number of the one before it, and rides along with the next sync.
    ///
    /// `messages` (votes and acks) and the `on_persisted` report for `last_entry` wait until
    /// every batch handed over so far, this one included, is durable: at once if none is in
    /// flight; else the WAL thread sends the messages itself right after that sync (riding
    /// on this batch, or on an otherwise empty one queued behind the batches in flight when
    /// this `Ready` wrote nothing that needs a sync: an ack for entries that arrived again
    /// still waits for the batch that carries them), and the loop reports `on_persisted`
    /// when the thread says so ([`Event::Persisted`]).
    fn persist(
        &mut self,
        snapshot: Option<SnapshotMeta>,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        messages: Vec<Message>,
        last_entry: Option<EntryId>,
    ) {
        let writes = snapshot.is_some() || hard_state.is_some() || !entries.is_empty();
        let mut must_sync = snapshot.is_some() || !entries.is_empty();
        if let Some(hard_state) = hard_state {
            must_sync |= hard_state.term != self.written_hard_state.term
                || hard_state.vote != self.written_hard_state.vote;
            self.written_hard_state = hard_state;
        }
        if must_sync {
            self.batches_sent += 1;
        }
        let mut batch = WalBatch {
            number: self.batches_sent,
            snapshot,
            hard_state,
            entries,
            must_sync,
            messages_after_sync: Vec::new(),
        };
        if self.durable_through == self.batches_sent {
            // Nothing to wait for.
            if writes && !self.wal.send(WalCommand::Batch(batch)) {
                self.on_wal_thread_gone();
                return;
            }
            self.peers.send(messages);
            if let Some(last) = last_entry {
                self.core.on_persisted(last);
            }
            return;
        }
        // Only a leader sends an `InstallSnapshot`, and as leader traffic (`Ready::messages`);
        // should one ever wait, it is released here by the loop, to the snapshot sender.
        let (for_snapshot_sender, for_dealers): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|message| matches!(message.body, MessageBody::InstallSnapshot { .. }));
        if writes || !for_dealers.is_empty() {
            batch.messages_after_sync = for_dealers;
            if !self.wal.send(WalCommand::Batch(batch)) {
                self.on_wal_thread_gone();
                return;
            }
        }
        if last_entry.is_some() || !for_snapshot_sender.is_empty() {
            self.after_persist.push_back(AfterPersist {
                batch: self.batches_sent,
                messages: for_snapshot_sender,
                last_entry,
            });
        }
    }

    /// The WAL thread made batches durable (release what waited for them), or failed.
    fn on_persist_report(&mut self, report: PersistReport) {
        match report {
            PersistReport::Durable {
                through_batch,
                synced,
                entries,
            } => {
                self.wal_syncs += u64::from(synced);
                self.wal_entries += entries;
                if self.halted {
                    return;
                }
                assert!(
                    through_batch <= self.batches_sent,
                    "node {}: batch {through_batch} reported durable, only {} sent",
                    self.config.id,
                    self.batches_sent
                );
                self.durable_through = self.durable_through.max(through_batch);
                while self
                    .after_persist
                    .front()
                    .is_some_and(|waiting| waiting.batch <= self.durable_through)
                {
                    let Some(released) = self.after_persist.pop_front() else {
                        break;
                    };
                    self.peers.send(released.messages);
                    if let Some(last) = released.last_entry {
                        // The leader's own copy counts toward the majority from here on.
                        self.core.on_persisted(last);
                    }
                }
            }
            PersistReport::Failed(error) => {
                if !self.halted {
                    self.on_storage_failure(error);
                }
            }
        }
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
        self.after_persist.clear();
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
                EntryPayload::Command(bytes) => Some(self.queue.apply(entry.index, bytes)),
            };
            self.applied = entry.index;
            self.applied_term = entry.term;
            self.snapshots.entries_since += 1;
            self.snapshots.bytes_since += entry.size_bytes() as u64;
            match (self.pending.take_write(entry.id()), outcome) {
                (None, _) => {}
                (Some((ticket, WriteEnd::Applied)), Some(outcome)) => {
                    log::trace!("request {ticket:?} applied at {}", entry.id());
                    self.answer(ticket, outcome);
                }
                (Some((ticket, _)), _) => self.answer_lost(ticket),
            }
        }
    }

    // ---- Snapshots --------------------------------------------------------------------

    /// Starts writing a snapshot if enough was applied since the last one and none is being
    /// written. The loop pauses only for the queue's O(segments) clone.
    fn maybe_start_snapshot(&mut self) {
        let thresholds = &self.config.snapshot;
        let snapshots = &self.snapshots;
        if self.halted
            || snapshots.writing.is_some()
            || self.applied <= snapshots.newest.index()
            || (snapshots.entries_since < thresholds.entries_max
                && snapshots.bytes_since < thresholds.log_bytes_max)
        {
            return;
        }
        let meta = SnapshotMeta {
            last: EntryId::new(self.applied_term, self.applied),
        };
        let started = Instant::now();
        let view = self.queue.snapshot_view();
        let pause = started.elapsed();
        self.snapshots.view_pause_max = self.snapshots.view_pause_max.max(pause);
        log::info!(
            "taking snapshot {} ({} messages, {} entries since the last): the loop paused {} \
             us for the view",
            meta.last,
            view.stats().messages,
            self.snapshots.entries_since,
            pause.as_micros()
        );
        self.snapshots.entries_since = 0;
        self.snapshots.bytes_since = 0;
        self.snapshots.writing = Some(meta);
        let dir = self.config.data_dir.clone();
        let fsync = self.fsync;
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let started = Instant::now();
                let result = snapshot_file::write_snapshot(&dir, meta, fsync, |writer| {
                    view.encode_snapshot(writer)
                        .map_err(|error| std::io::Error::other(error.to_string()))
                })
                .map_err(|error| error.to_string());
                drop(view);
                let saved = SnapshotSaved {
                    meta,
                    result,
                    write_duration: started.elapsed(),
                };
                let _ = events.send(Event::SnapshotSaved(saved));
            });
        if let Err(error) = spawned {
            log::error!("cannot start the snapshot writer: {error}");
            self.snapshots.writing = None;
        }
    }

    /// The writer thread is done: on success, tell the core and compact.
    fn on_snapshot_saved(&mut self, saved: SnapshotSaved) {
        self.snapshots.writing = None;
        let file = match saved.result {
            Ok(file) => file,
            Err(error) => {
                // Not fatal: the log just grows until the next attempt, one threshold later.
                log::error!("writing snapshot {} failed: {error}", saved.meta.last);
                return;
            }
        };
        if self.halted {
            return;
        }
        if file.meta.index() <= self.snapshots.newest.index() {
            // A newer one was installed from the leader meanwhile.
            self.retain_snapshots();
            return;
        }
        let compact_core_to = file
            .meta
            .index()
            .0
            .saturating_sub(self.config.snapshot.log_margin_entries);
        self.core
            .on_snapshot_saved(file.meta, LogIndex(compact_core_to));
        self.snapshots.previous = self.snapshots.newest;
        self.snapshots.newest = file.meta;
        // The WAL keeps the log back to the previous snapshot: the fallback if the newest
        // file is ever found damaged.
        let compact_wal_to = self.snapshots.previous.index();
        // Queued behind the batches before it; the WAL never drops its last synced entry.
        if compact_wal_to > LogIndex::ZERO && !self.wal.send(WalCommand::Compact(compact_wal_to)) {
            self.on_wal_thread_gone();
            return;
        }
        log::info!(
            "snapshot {} written: {} bytes in {} ms (longest loop pause for a view so far: {} \
             us); log compacted to {} in memory, {} on disk",
            file.meta.last,
            file.len_bytes,
            saved.write_duration.as_millis(),
            self.snapshots.view_pause_max.as_micros(),
            compact_core_to,
            compact_wal_to
        );
        self.retain_snapshots();
    }

    fn retain_snapshots(&mut self) {
        if let Err(error) =
            snapshot_file::retain_newest(&self.config.data_dir, SNAPSHOTS_KEPT, self.fsync)
        {
            log::warn!("cannot delete old snapshot files: {error}");
        }
    }

    /// An `InstallSnapshot` whose file has arrived. If the core needs the data, decode it on
    /// the loader thread first; step the message once decoded.
    fn on_install_snapshot(&mut self, message: Message, snapshot: SnapshotMeta) {
        let holds_it = self
            .core
            .entry(snapshot.index())
            .is_some_and(|entry| entry.term == snapshot.last.term);
        if snapshot.index() <= self.core.status().commit_index || holds_it {
            // The core only commits (or acknowledges): no state to load.
            self.core.step(message);
            self.discard_received(snapshot);
            return;
        }
        if let Some(loading) = self.snapshots.loading {
            log::info!(
                "snapshot {} arrived while {} is loading; it waits",
                snapshot.last,
                loading.last
            );
            if let Some(MessageBody::InstallSnapshot { snapshot: replaced }) = self
                .snapshots
                .waiting
                .replace(message)
                .map(|message| message.body)
            {
                if replaced != snapshot {
                    self.discard_received(replaced);
                }
            }
            return;
        }
        self.snapshots.loading = Some(snapshot);
        let path = snapshot_file::received_path(&self.config.data_dir, snapshot);
        let queue_config = self.queue.config().clone();
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-loader".into())
            .spawn(move || {
                let started = Instant::now();
                // The transport checked the file whole; the checksum is checked again on the
                // way through, in the same single pass.
                let result = snapshot_file::read_snapshot(&path, |reader| {
                    Queue::decode_snapshot(queue_config, reader).map_err(|error| error.to_string())
                })
                .map(|(_, queue)| queue)
                .map_err(|error| error.to_string());
                let loaded = LoadedSnapshot {
                    message,
                    snapshot,
                    result,
                    load_duration: started.elapsed(),
                };
                let _ = events.send(Event::SnapshotLoaded(Box::new(loaded)));
            });
        if let Err(error) = spawned {
            log::error!("cannot start the snapshot loader: {error}");
            self.snapshots.loading = None;
        }
    }

    fn on_snapshot_loaded(&mut self, loaded: LoadedSnapshot) {
        self.snapshots.loading = None;
        if self.halted {
            return;
        }
        self.step_loaded(loaded);
        if let Some(waiting) = self.snapshots.waiting.take() {
            if let MessageBody::InstallSnapshot { snapshot } = waiting.body {
                self.on_install_snapshot(waiting, snapshot);
            }
        }
    }

    fn step_loaded(&mut self, loaded: LoadedSnapshot) {
        match loaded.result {
            Ok(queue) => {
                log::info!(
                    "snapshot {} decoded in {} ms ({} messages)",
                    loaded.snapshot.last,
                    loaded.load_duration.as_millis(),
                    queue.stats().messages
                );
                self.snapshots.loaded = Some((loaded.snapshot, queue));
                self.core.step(loaded.message);
            }
            Err(error) => {
                log::error!(
                    "cannot load snapshot {} received from node {}: {error}",
                    loaded.snapshot.last,
                    loaded.message.from
                );
                self.discard_received(loaded.snapshot);
            }
        }
    }

    /// The core installed `snapshot` from the leader: make it this node's state, durably
    /// (the file first, here; then the WAL's restart record, which the caller puts in the
    /// `Ready`'s batch: see `recovery` for a crash in between).
    fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        let queue = match self.snapshots.loaded.take() {
            Some((loaded, queue)) if loaded == snapshot => queue,
            other => panic!(
                "node {}: the core installs snapshot {} but the loop loaded {:?}",
                self.config.id,
                snapshot.last,
                other.map(|(loaded, _)| loaded.last)
            ),
        };
        snapshot_file::adopt_received(&self.config.data_dir, snapshot, self.fsync)?;
        log::info!(
            "installed snapshot {} ({} messages); the log restarts after it",
            snapshot.last,
            queue.stats().messages
        );
        self.queue = queue;
        self.applied = snapshot.index();
        self.applied_term = snapshot.last.term;
        self.snapshots.previous = self.snapshots.newest;
        self.snapshots.newest = snapshot;
        self.snapshots.entries_since = 0;
        self.snapshots.bytes_since = 0;
        self.retain_snapshots();
        Ok(())
    }

    fn expire(&mut self, now: Instant) {
        for ticket in self.pending.take_expired(now) {
            self.fail(
                ticket,
                ErrorCode::Timeout,
                &format!(
                    "not committed within {} ms; the outcome is unknown",
                    self.config.request_timeout.as_millis()
                ),
            );
        }
    }

    /// A write whose entry was overwritten by a new leader: it never took effect.
    fn answer_lost(&mut self, ticket: Ticket) {
        if self.core.role() == Role::Leader {
            self.fail(
                ticket,
                ErrorCode::Unavailable,
                "leadership changed before the request committed; it was not applied",
            );
        } else {
            self.fail(
                ticket,
                ErrorCode::NotLeader,
                "leadership changed before the request committed; it was not applied",
            );
        }
    }

    fn fail(&mut self, ticket: Ticket, code: ErrorCode, message: &str) {
        self.answer(ticket, Outcome::Failed(ErrorInfo::new(code, message)));
    }

    fn answer(&mut self, ticket: Ticket, outcome: Outcome) {
        let leader = self.leader_info();
        self.clients
            .reply(ticket, Reply::Outcome { outcome, leader });
    }

    /// The leader's client address, for v2 replies and NOT_LEADER hints. None once halted:
    /// the core is frozen in whatever role it had, and a halted node must not send clients
    /// back to itself while the others elect a new leader.
    fn leader_info(&self) -> Option<LeaderInfo> {
        if self.halted {
            return None;
        }
        let leader = self.core.leader()?;
        let address = self.config.cluster.address(leader)?;
        Some(LeaderInfo {
            id: leader.0,
            ip: address.ip.clone(),
            port: address.port,
        })
    }

    fn stats(&self) -> Reply {
        let stats = self.queue.stats();
        Reply::Stats(StatsReport {
            id: self.config.id.0,
            last_applied: self.applied.0,
            digest: self.queue.digest(),
            topic_count: stats.topics as u64,
            message_count: stats.messages as u64,
            payload_bytes: stats.payload_bytes as u64,
            session_count: stats.sessions as u64,
        })
    }

    fn status(&self) -> Reply {
        let status = self.core.status();
        // A halted node takes no part in Raft: it must not claim to lead (clients and tools
        // find the leader by status), nor vouch for another leader it no longer hears from.
        let (role, leader) = if self.halted {
            (Role::Follower.client_name(), None)
        } else {
            (status.role.client_name(), status.leader)
        };
        let peers = if self.halted {
            &[][..]
        } else {
            &status.progress[..]
        };
        Reply::Status(StatusReport {
            role: role.to_string(),
            term: status.term.0,
            id: status.id.0,
            leader: leader.map(|leader| leader.0),
            commit_index: status.commit_index.0,
            last_applied: self.applied.0,
            last_log_index: status.last_index.0,
            peers: peers
                .iter()
                .map(|progress| PeerProgress {
                    id: progress.id.0,
                    match_index: progress.match_index.0,
                    next_index: progress.next_index.0,
                    state: if progress.replicating {
                        "replicate"
                    } else {
                        "probe"
                    }
                    .to_string(),
                })
                .collect(),
            fsync: self.config.fsync.as_str().to_string(),
            wal_syncs: self.wal_syncs,
            wal_entries: self.wal_entries,
        })
    }

    fn log_changes(&mut self) {
        let now = (self.core.role(), self.core.term(), self.core.leader());
        if now == self.observed {
            return;
        }
        let (role, term, leader) = now;
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

    /// SIGTERM/SIGINT: stop taking requests; a leader hands leadership to its most
    /// up-to-date peer so the cluster does not wait out an election timeout. A second
    /// signal stops waiting.
    fn on_shutdown(&mut self) {
        let now = Instant::now();
        if let Some(shutdown) = &mut self.shutdown {
            log::info!("second signal: stopping now");
            shutdown.give_up_at = now;
            return;
        }
        log::info!("shutting down");
        self.shutdown = Some(Shutdown {
            give_up_at: now + SHUTDOWN_TRANSFER_WAIT,
        });
        if self.halted || self.core.role() != Role::Leader {
            return;
        }
        let status = self.core.status();
        let Some(target) = status
            .progress
            .iter()
            .filter(|progress| progress.id != self.config.id)
            .max_by_key(|progress| progress.match_index)
        else {
            return; // A single-node cluster: nobody to hand over to.
        };
        match self.core.transfer_leader(target.id) {
            Ok(()) => log::info!("handing leadership to node {}", target.id),
            Err(error) => log::info!("cannot hand leadership to node {}: {error}", target.id),
        }
    }

    /// Shutdown may complete once this node no longer leads (or never did) and nothing it
    /// started is unanswered, or when the wait is over.
    fn shutdown_done(&self) -> bool {
        let Some(shutdown) = &self.shutdown else {
            return false;
        };
        let is_leader = !self.halted && self.core.role() == Role::Leader;
        let single_node = self.config.cluster.node_count() == 1;
        let settled = self.pending.is_empty() && (!is_leader || single_node);
        settled || Instant::now() >= shutdown.give_up_at
    }

    /// Answers what is left, makes what was acknowledged durable, and stops the transports.
    fn finish(mut self, events: &Receiver<Event>) {
        for ticket in self.pending.take_all() {
            self.fail(
                ticket,
                ErrorCode::ShuttingDown,
                "the node is shutting down; the outcome is unknown",
            );
        }
        if let Some(thread) = self.wal.stop() {
            // The thread writes what is queued, then exits; it may be blocked reporting to
            // our channel meanwhile, so keep emptying it (nothing in it matters any more).
            while !thread.is_finished() {
                let _ = events.recv_timeout(Duration::from_millis(1));
            }
            match thread.join() {
                // Everything acknowledged was synced before its reply; this catches the
                // lazily persisted commit index.
                Ok(mut store) if !self.halted => {
                    if let Err(error) = store.sync() {
                        log::error!("final sync failed: {error}");
                    }
                }
                Ok(_) => {}
                Err(_) => log::error!("the WAL thread panicked"),
            }
        }
        self.clients.flush();
        self.clients.stop();
        self.peers.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, NodeArgs};
    use crate::protocol::{decode_reply, encode_request, Encoding, Request};
    use crate::queue::QueueConfig;
    use crate::raft::InitialState;
    use crate::raft::SnapshotMeta;
    use crate::storage::MemStore;
    use crate::transport::client::{ClientSettings, ClientTransport};
    use crate::transport::peer::{PeerSettings, PeerTransport};
    use clap::Parser;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A store whose every call fails once `broken` is set, as a dying disk does.
    struct BreakableStore {
        inner: MemStore,
        broken: Arc<AtomicBool>,
    }

    impl BreakableStore {
        fn check(&self) -> Result<(), StorageError> {
            if self.broken.load(Ordering::SeqCst) {
                Err(StorageError::Io(std::io::Error::other(
                    "injected fsync failure",
                )))
            } else {
                Ok(())
            }
        }
    }

    impl LogStore for BreakableStore {
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            self.check()?;
            self.inner.append(entries)
        }

        fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
            self.check()?;
            self.inner.set_hard_state(hard_state)
        }

        fn sync(&mut self) -> Result<(), StorageError> {
            self.check()?;
            self.inner.sync()
        }

        fn compact_to(&mut self, index: LogIndex) -> Result<(), StorageError> {
            self.check()?;
            self.inner.compact_to(index)
        }

        fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
            self.check()?;
            self.inner.install_snapshot(snapshot)
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port")
    }

    fn call(socket: &zmq::Socket, operation: Operation) -> Reply {
        let request = Request {
            version: 2,
            session: None,
            operation,
        };
        socket
            .send_multipart([&b""[..], &encode_request(&request, Encoding::MsgPack)], 0)
            .expect("send");
        assert!(
            socket.poll(zmq::POLLIN, 10_000).expect("poll") > 0,
            "no reply in 10 s"
        );
        let frames = socket.recv_multipart(0).expect("recv");
        decode_reply(frames.last().expect("a body")).expect("a reply")
    }

    fn failure_code(reply: &Reply) -> Option<ErrorCode> {
        match reply {
            Reply::Outcome {
                outcome: Outcome::Failed(error),
                ..
            } => Some(error.code),
            _ => None,
        }
    }

    /// A store whose `sync` waits for a permit once `gated` is set: a disk that is slow
    /// exactly when the test says so.
    struct GatedStore {
        inner: MemStore,
        gated: Arc<AtomicBool>,
        permits: crossbeam_channel::Receiver<()>,
    }

    impl LogStore for GatedStore {
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            self.inner.append(entries)
        }

        fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
            self.inner.set_hard_state(hard_state)
        }

        fn sync(&mut self) -> Result<(), StorageError> {
            if self.gated.load(Ordering::SeqCst) {
                let _ = self.permits.recv();
            }
            self.inner.sync()
        }

        fn compact_to(&mut self, index: LogIndex) -> Result<(), StorageError> {
            self.inner.compact_to(index)
        }

        fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
            self.inner.install_snapshot(snapshot)
        }
    }

    fn receive(socket: &zmq::Socket, timeout_ms: i64) -> Option<Reply> {
        if socket.poll(zmq::POLLIN, timeout_ms).expect("poll") == 0 {
            return None;
        }
        let frames = socket.recv_multipart(0).expect("recv");
        Some(decode_reply(frames.last().expect("a body")).expect("a reply"))
    }

    fn send(socket: &zmq::Socket, operation: Operation) {
        let request = Request {
            version: 2,
            session: None,
            operation,
        };
        socket
            .send_multipart([&b""[..], &encode_request(&request, Encoding::MsgPack)], 0)
            .expect("send");
    }

    #[test]
    fn the_loop_keeps_answering_while_a_sync_is_slow_and_acknowledges_only_after_it() {
        let gated = Arc::new(AtomicBool::new(false));
        let (permit, permits) = crossbeam_channel::unbounded();
        let store = GatedStore {
            inner: MemStore::new(),
            gated: gated.clone(),
            permits,
        };
        let leader = TickingLeader::start(Box::new(store));
        let socket = &leader.socket;

        gated.store(true, Ordering::SeqCst);
        send(
            socket,
            Operation::Put {
                topic: "t".into(),
                message: crate::protocol::Payload::Text("m".into()),
            },
        );
        // The put's sync is stuck; the loop must still answer, and must not acknowledge
        // the put: a one-node leader commits only once its own copy is durable.
        send(socket, Operation::Status);
        match receive(socket, 10_000) {
            Some(Reply::Status(status)) => assert_eq!(
                status.wal_entries, 2,
                "the no-op and the create are durable, the put is not yet"
            ),
            other => panic!("status is answered during the sync, got {other:?}"),
        }
        assert!(
            receive(socket, 200).is_none(),
            "nothing is acknowledged before its sync returns"
        );
        permit.send(()).expect("the WAL thread waits");
        gated.store(false, Ordering::SeqCst);
        match receive(socket, 10_000) {
            Some(Reply::Outcome {
                outcome: Outcome::Done,
                ..
            }) => {}
            other => panic!("the put is acknowledged once durable, got {other:?}"),
        }
        match call(socket, Operation::Status) {
            Reply::Status(status) => assert_eq!(status.wal_entries, 3, "the put is counted"),
            other => panic!("status, got {other:?}"),
        }

        leader.stop();
    }

    #[test]
    fn a_storage_failure_stops_acknowledging_but_keeps_answering() {
        let broken = Arc::new(AtomicBool::new(false));
        let store = BreakableStore {
            inner: MemStore::new(),
            broken: broken.clone(),
        };
        let leader = TickingLeader::start(Box::new(store));
        let socket = &leader.socket;

        broken.store(true, Ordering::SeqCst);
        let put = Operation::Put {
            topic: "t".into(),
            message: crate::protocol::Payload::Text("m".into()),
        };
        assert_eq!(
            failure_code(&call(socket, put.clone())),
            Some(ErrorCode::Unavailable),
            "the write that hit the failure is not acknowledged"
        );
        for operation in [
            put,
            Operation::ListTopics,
            Operation::Get { topic: "t".into() },
        ] {
            assert_eq!(
                failure_code(&call(socket, operation.clone())),
                Some(ErrorCode::Unavailable),
                "{operation:?} after the failure"
            );
        }
        match call(socket, Operation::Status) {
            Reply::Status(status) => {
                assert_eq!(
                    status.role, "Follower",
                    "a halted node does not claim to lead"
                );
                assert_eq!(status.leader, None);
                assert!(status.peers.is_empty());
            }
            other => panic!("status is still answered, got {other:?}"),
        }
        let put = Operation::Put {
            topic: "t".into(),
            message: crate::protocol::Payload::Text("m".into()),
        };
        assert!(
            matches!(call(socket, put), Reply::Outcome { leader: None, .. }),
            "no leader hint back to the halted node"
        );

        leader.stop();
    }

    /// A one-node loop over a given store, ticked every 10 ms, elected and holding topic `t`.
    struct TickingLeader {
        _context: zmq::Context,
        socket: zmq::Socket,
        events: crossbeam_channel::Sender<Event>,
        node: std::thread::JoinHandle<()>,
        ticker: std::thread::JoinHandle<()>,
    }

    impl TickingLeader {
        fn start(store: Box<dyn LogStore + Send>) -> TickingLeader {
            let (context, socket, events, node) = start_node(&[], store);
            let ticker_events = events.clone();
            let ticker = std::thread::spawn(move || {
                while ticker_events.send(Event::Tick).is_ok() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            while !matches!(call(&socket, Operation::Status), Reply::Status(ref s) if s.role == "Leader")
            {
                assert!(Instant::now() < deadline, "no leader");
                std::thread::sleep(Duration::from_millis(20));
            }
            let create = Operation::CreateTopic { topic: "t".into() };
            assert_eq!(failure_code(&call(&socket, create)), None, "created");
            TickingLeader {
                _context: context,
                socket,
                events,
                node,
                ticker,
            }
        }

        fn stop(self) {
            self.events.send(Event::Shutdown).expect("loop alive");
            self.node.join().expect("the loop ends without panicking");
            drop(self.events);
            self.ticker.join().expect("ticker");
        }
    }

    /// Runs a one-node loop with `flags` (no ticks: `fault` needs no leader) until the
    /// returned sender gets `Shutdown`; returns a socket connected to its client port.
    fn start_idle_node(
        flags: &[&str],
    ) -> (
        zmq::Context,
        zmq::Socket,
        crossbeam_channel::Sender<Event>,
        std::thread::JoinHandle<()>,
    ) {
        start_node(flags, Box::new(MemStore::new()))
    }

    /// Runs a one-node loop with `flags` over `store`, without a ticker, until the returned
    /// sender gets `Shutdown`; returns a socket connected to its client port.
    fn start_node(
        flags: &[&str],
        store: Box<dyn LogStore + Send>,
    ) -> (
        zmq::Context,
        zmq::Socket,
        crossbeam_channel::Sender<Event>,
        std::thread::JoinHandle<()>,
    ) {
        let (context, socket, events, node, _) = start_node_of(1, flags, store);
        (context, socket, events, node)
    }

    /// Runs node 0 of a `nodes`-node loopback cluster (the others are the test's to play)
    /// with `flags` over `store`, without a ticker, until the returned sender gets
    /// `Shutdown`; returns a socket connected to its client port, and the cluster config.
    #[allow(clippy::type_complexity)]
    fn start_node_of(
        nodes: usize,
        flags: &[&str],
        store: Box<dyn LogStore + Send>,
    ) -> (
        zmq::Context,
        zmq::Socket,
        crossbeam_channel::Sender<Event>,
        std::thread::JoinHandle<()>,
        ClusterConfig,
    ) {
        let addresses: Vec<String> = (0..nodes)
            .map(|_| {
                format!(
                    r#"{{"ip": "127.0.0.1", "port": {}, "internal_port": {}}}"#,
                    free_port(),
                    free_port()
                )
            })
            .collect();
        let text = format!(r#"{{"addresses": [{}]}}"#, addresses.join(", "));
        let cluster = ClusterConfig::parse(&text, "test").expect("config");
        let port = cluster.address(NodeId(0)).expect("node 0").port;
        let args =
            NodeArgs::try_parse_from(["rrmq-node", "test", "0"].iter().chain(flags)).expect("args");
        let config = NodeConfig::new(&args, cluster.clone()).expect("node config");
        let context = zmq::Context::new();
        let (events, inbox) = crossbeam_channel::bounded::<Event>(64);
        let clients = ClientTransport::start(
            &context,
            ClientSettings::from_config(&config).expect("settings"),
            events.clone(),
        )
        .expect("client transport");
        let peers = PeerTransport::start(
            &context,
            PeerSettings::from_config(&config).expect("settings"),
            events.clone(),
        )
        .expect("peer transport");
        let core = Core::new(
            config.id,
            config.cluster.voters(),
            config.raft.clone(),
            InitialState::default(),
            7,
        );
        let node = NodeLoop::new(NodeParts {
            config,
            core,
            store,
            queue: Queue::new(QueueConfig::default()),
            clients,
            peers,
            events: events.clone(),
            durable_hard_state: HardState::default(),
            snapshot: SnapshotMeta::default(),
            previous_snapshot: SnapshotMeta::default(),
        })
        .expect("the WAL thread starts");
        let node = std::thread::spawn(move || node.run(&inbox));
        let socket = context.socket(zmq::DEALER).expect("socket");
        socket.set_linger(0).expect("linger");
        socket
            .connect(&format!("tcp://127.0.0.1:{port}"))
            .expect("connect");
        (context, socket, events, node, cluster)
    }

    #[test]
    fn a_follower_acknowledges_appends_only_after_their_sync() {
        let gated = Arc::new(AtomicBool::new(false));
        let (permit, permits) = crossbeam_channel::unbounded();
        let store = GatedStore {
            inner: MemStore::new(),
            gated: gated.clone(),
            permits,
        };
        // No ticker: node 0 never campaigns, and follows the test, which plays node 1.
        let (context, _client, events, node, cluster) = start_node_of(2, &[], Box::new(store));
        let leader_port = context.socket(zmq::ROUTER).expect("router");
        leader_port.set_linger(0).expect("linger");
        let internal_port = |id| cluster.address(NodeId(id)).expect("a node").internal_port;
        leader_port
            .bind(&format!("tcp://127.0.0.1:{}", internal_port(1)))
            .expect("bind");
        let to_follower = context.socket(zmq::DEALER).expect("dealer");
        to_follower.set_linger(0).expect("linger");
        to_follower
            .connect(&format!("tcp://127.0.0.1:{}", internal_port(0)))
            .expect("connect");
        let filter = crate::transport::peer::PeerFilter {
            cluster_id: cluster.cluster_id,
            me: NodeId(1),
            node_count: 2,
        };
        let append = |prev: u64, index: u64| {
            let message = Message {
                from: NodeId(1),
                to: NodeId(0),
                term: Term(1),
                body: MessageBody::AppendEntries {
                    prev: EntryId::new(Term(u64::from(prev > 0)), LogIndex(prev)),
                    entries: vec![Entry {
                        term: Term(1),
                        index: LogIndex(index),
                        payload: EntryPayload::Noop,
                    }],
                    commit: LogIndex::ZERO,
                },
            };
            let frame = crate::transport::peer::encode_peer_message(cluster.cluster_id, &message);
            to_follower.send(frame, 0).expect("send");
        };
        // Whatever node 0 sends node 1 next (an ack, here), within `timeout_ms`.
        let received = |timeout_ms: i64| -> Option<MessageBody> {
            if leader_port.poll(zmq::POLLIN, timeout_ms).expect("poll") == 0 {
                return None;
            }
            let frames = leader_port.recv_multipart(0).expect("recv");
            let body = frames.last().expect("a body");
            let message =
                crate::transport::peer::decode_peer_message(body, &filter).expect("a message");
            Some(message.body)
        };
        let accepted = |index| {
            Some(MessageBody::AppendEntriesResponse(
                crate::raft::AppendResult::Accepted {
                    match_index: LogIndex(index),
                },
            ))
        };
        // Both directions drop messages until connected: resend entry 1 as a leader would.
        let connected = (0..100).any(|_| {
            append(0, 1);
            received(100).is_some()
        });
        assert!(connected, "node 0 acknowledges entry 1");
        while received(200).is_some() {}

        gated.store(true, Ordering::SeqCst);
        append(1, 2);
        assert_eq!(received(300), None, "no ack while entry 2's sync is held");
        // Entry 2 again: nothing new to write, but the ack waits for the batch in flight.
        append(1, 2);
        assert_eq!(received(300), None, "nor for entry 2 arriving twice");
        permit.send(()).expect("the WAL thread waits");
        gated.store(false, Ordering::SeqCst);
        assert_eq!(received(10_000), accepted(2), "acknowledged once durable");
        assert_eq!(received(10_000), accepted(2), "the second copy too");

        events.send(Event::Shutdown).expect("loop alive");
        node.join().expect("the loop ends without panicking");
    }

    #[test]
    fn fault_requests_are_refused_without_the_test_flag_and_obeyed_with_it() {
        let fault = Operation::Fault {
            drop_to: vec![1, 2],
            drop_from: vec![2],
        };
        let cases: [(&[&str], Option<ErrorCode>); 2] = [
            (&[], Some(ErrorCode::BadRequest)),
            (&["--fault-injection"], None),
        ];
        for (number, (flags, expected)) in cases.into_iter().enumerate() {
            let (_context, socket, events, node) = start_idle_node(flags);
            let reply = call(&socket, fault.clone());
            assert_eq!(failure_code(&reply), expected, "case {number}: {reply:?}");
            if let Reply::Outcome {
                outcome: Outcome::Failed(error),
                ..
            } = &reply
            {
                assert!(
                    error.message.contains("--fault-injection"),
                    "case {number}: the refusal names the flag: {}",
                    error.message
                );
            }
            events.send(Event::Shutdown).expect("loop alive");
            node.join().expect("the loop ends without panicking");
        }
    }
}
