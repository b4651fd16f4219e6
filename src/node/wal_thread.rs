//! The WAL thread: owns the [`LogStore`] and makes the node loop's writes durable while the
//! loop keeps stepping the core.
//!
//! Why it exists: while an fdatasync runs, a loop that did it inline could take no acks,
//! apply nothing and answer no one. Here the loop hands each `Ready`'s writes over as one
//! numbered [`PersistBatch`] and goes on; this thread syncs batch N while batches N+1.. pile
//! up in its channel, and the next sync covers all of them (group commit: exactly one
//! `sync` per group). It reports "durable through batch N" back as an [`Event::Persisted`]
//! on the loop's own channel, and the loop then reports `Core::on_persisted` (a leader
//! counts its own copy toward the majority from then on). Figures: docs/PERFORMANCE.md,
//! "fsync on the loop vs a WAL thread".
//!
//! It also sends what waited for that sync: the votes and acks (`messages_after_persist`)
//! that a batch carries, on DEALERs of its own ([`PeerDealers`]: ZeroMQ sockets stay on one
//! thread), right after the sync and before the report, so no thread hand-off back to the
//! loop sits on the critical path of a follower's ack (hence of every write at C=1). Which
//! batch a message rides on, and what leaves at once with nothing in flight, the loop's
//! persistence pipeline decides (`persist_pipeline`). Figures: docs/PERFORMANCE.md, "Acks
//! sent from the WAL thread".
//!
//! Why a message here is safe to send: it leaves only after the sync of its group, and the
//! FIFO channel and one sync per group mean every batch before it is durable too; after a
//! failed write or sync the thread stops before sending anything of that group, and once
//! the loop stops participating ([`WalThread::stop_sending`]) it sends nothing more. The
//! same injected faults ([`crate::transport::fault`]) filter these sends as the loop's.
//! An `InstallSnapshot` never comes here (only a leader sends one, as leader traffic that
//! the loop hands to the snapshot sender).
//!
//! Why the reordering this brings is safe: a follower's messages to the leader now leave on
//! two connections (the WAL thread's while a batch is in flight, the loop's when none is),
//! so a later one may arrive first. Raft assumes an unordered, lossy network, and the core
//! is checked against one (tests/simulation reorders, drops and duplicates): an
//! `Accepted { match_index }` only ever raises `match_index` (`Progress::accept` keeps the
//! maximum), and a late one is still true: it is stamped with its term, a message of an
//! older term is ignored, and within one term and one process life a follower never drops
//! an entry it acknowledged (it truncates only entries that conflict with the leader's,
//! which the leader of that term never sent). A stale `Rejected` is ignored unless it names
//! an index above the match index (`handle_append_response`); at worst it costs a probe.
//! Heartbeat responses keep the highest read round seen (`read_round_acked` is a maximum),
//! and votes count once per voter and term (`votes.entry(..).or_insert`).
//!
//! # Reports only when the loop waits for one
//!
//! Every group's progress ("durable through batch N", and the counters `status` shows) is
//! published in a [`WalProgress`] the loop reads at the start of each round; an
//! [`Event::Persisted`] is sent only while the loop has asked for one
//! ([`WalProgress::wake_when_durable`]), which it does before it sleeps if something it
//! waits for depends on this thread alone (a leader whose commit waits for its own copy).
//! Otherwise the report would wake the loop once per group for nothing: a follower's acks
//! leave from here, and a leader at low load hears its followers' acks after its own sync
//! returned, and reads the progress then. The two sides use the store-then-load order of
//! Dekker's protocol (sequentially consistent atomics), so a request the loop makes while
//! the thread finishes a group is never missed by both. A failure is always reported.
//!
//! # Direct writes: a follower's loop with nothing else to do writes the batch itself
//!
//! A follower's loop that has no other event waiting ([`WalThread::write_directly`], called
//! from `NodeLoop::persist`) writes and syncs a batch on its own thread, sends the batch's
//! acks on its own DEALERs and reads the progress at once: the hand-off to this thread (a
//! futex wake, often of an idle CPU) sat on the critical path of every write at low load
//! and took a context switch each way. The reason this thread exists, a loop that keeps
//! taking events while the disk is busy, does not apply when there are no events to take.
//! It happens only while this thread has nothing queued or in hand (every command handed
//! over is finished, its messages sent: `commands_done`), so the store's order is still the
//! loop's order; the store sits behind a mutex that this thread holds for each group. A
//! leader never writes directly: its loop takes its followers' acks while its own copy
//! syncs, and commits on them (measured slower when it blocked, docs/PERFORMANCE.md,
//! "Direct writes on a follower's loop").
//!
//! What it owns: the store (shared only with direct writes, which wait for it to be idle),
//! and therefore the order of every store operation. Appends
//! (including a conflicting suffix, which the WAL overwrites by replay), hard states,
//! snapshot installs and compactions all travel through one FIFO channel and run here in
//! the order the loop issued them, so no barrier is needed for the rare ones: an install is
//! queued behind the batches before it and made durable by the sync of its own group, a
//! compaction never drops the last synced entry (`LogStore::compact_to`). Moving the whole
//! store here, rather than only the fdatasync, keeps the WAL's own ordering rule intact
//! (term and vote are durable before any entry of that term reaches the kernel) without a
//! second handle on its files or any care for segment rolls.
//!
//! What it must not do: decide anything. It never reorders, drops or delays a write (or a
//! message) beyond the group it is in, and after the first error it reports it and stops: a
//! failed fsync is never retried (STYLE.md), and the loop stops acknowledging
//! (`on_storage_failure`). Its DEALERs (linger 0) close when it exits, which the loop waits
//! for on shutdown, before the ZeroMQ context goes.

use super::event::{Event, PersistReport};
use super::persist_pipeline::PersistBatch;
use super::wait::AdaptiveWait;
use crate::raft::{Entry, LogIndex, Message};
use crate::storage::{LogStore, StorageError};
use crate::transport::peer::PeerDealers;
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Entry bytes gathered into one sync group, at most (one batch may exceed it alone): keeps
/// a group well inside one WAL record (4 GiB) and bounds the memory a group pins.
const GROUP_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The loop's requests to the WAL thread.
#[derive(Debug)]
pub(super) enum WalCommand {
    /// One `Ready`'s writes, numbered and with the messages that wait for them
    /// ([`super::persist_pipeline`]).
    Batch(PersistBatch),
    /// `LogStore::compact_to`: a durable snapshot covers the log up to here.
    Compact(LogIndex),
}

/// What the thread has made durable, shared with the loop (see the module docs).
#[derive(Debug, Default)]
pub(super) struct WalProgress {
    /// Every batch numbered up to this one is durable.
    durable_through: AtomicU64,
    /// Report with an [`Event::Persisted`] once `durable_through` reaches this (0: don't).
    wake_at: AtomicU64,
    /// Sync groups made durable (`wal_syncs` in status).
    syncs: AtomicU64,
    /// Log entries made durable (`wal_entries` in status).
    entries: AtomicU64,
    /// Commands the thread has finished (written, synced, their messages sent): equal to
    /// the commands the loop handed over when the thread has nothing queued or in hand.
    commands_done: AtomicU64,
    /// Where each sync's duration and entries are observed (`metrics_port` set).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl WalProgress {
    /// Every batch up to this one is durable.
    pub(super) fn durable_through(&self) -> u64 {
        self.durable_through.load(Ordering::SeqCst)
    }

    /// Asks for an [`Event::Persisted`] once batch `batch` is durable (0: no report), and
    /// says whether it already is: then no report may come, and the caller must not sleep
    /// waiting for one.
    pub(super) fn wake_when_durable(&self, batch: u64) -> bool {
        self.wake_at.store(batch, Ordering::SeqCst);
        batch != 0 && self.durable_through.load(Ordering::SeqCst) >= batch
    }

    /// `(syncs, entries)` since start.
    pub(super) fn counters(&self) -> (u64, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }

    /// From now on each sync's duration and entries go to `metrics`.
    pub(super) fn observe_syncs(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The thread's side: one sync of `entries` took from `started` to now.
    fn observe_sync(&self, started: std::time::Instant, entries: u64) {
        if let Some(metrics) = self.metrics.get() {
            metrics
                .fsync_duration
                .observe(started.elapsed().as_secs_f64());
            metrics.entries_per_fsync.observe(entries as f64);
        }
    }

    /// The thread's side: publishes a group, and says whether the loop asked to hear of it.
    fn publish(&self, through_batch: u64, synced: bool, entries: u64) -> bool {
        self.syncs.fetch_add(u64::from(synced), Ordering::Relaxed);
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.durable_through
            .fetch_max(through_batch, Ordering::SeqCst);
        let wake_at = self.wake_at.load(Ordering::SeqCst);
        wake_at != 0 && wake_at <= through_batch
    }
}

/// The store, held by the thread while it works off a group and by the loop while it writes
/// a batch directly; `None` once the thread has exited and handed it back.
type SharedStore = Arc<Mutex<Option<Box<dyn LogStore + Send>>>>;

/// The loop's handle on the WAL thread.
pub(super) struct WalThread {
    commands: Option<Sender<WalCommand>>,
    thread: Option<JoinHandle<Option<Box<dyn LogStore + Send>>>>,
    store: SharedStore,
    /// Commands handed to the thread so far.
    commands_sent: u64,
    /// Cleared when the loop stops participating: nothing more leaves for the peers.
    sending: Arc<AtomicBool>,
    progress: Arc<WalProgress>,
}

impl WalThread {
    /// Starts the thread over `store`; it reports on `events` and sends the messages its
    /// batches carry on `dealers` (which it owns from now on, and closes when it exits).
    pub(super) fn start(
        store: Box<dyn LogStore + Send>,
        events: Sender<Event>,
        dealers: PeerDealers,
    ) -> std::io::Result<WalThread> {
        // Unbounded: the loop must never block on this thread (it blocks on the loop's
        // channel when that is full). Its length is bounded by what the loop can take in
        // during one sync: the proposals of the clients in flight, or the leader's
        // replication window on a follower.
        let (commands, inbox) = crossbeam_channel::unbounded();
        let sending = Arc::new(AtomicBool::new(true));
        let progress = Arc::new(WalProgress::default());
        let outbox = Outbox {
            dealers,
            sending: sending.clone(),
            progress: progress.clone(),
        };
        let store: SharedStore = Arc::new(Mutex::new(Some(store)));
        let thread_store = store.clone();
        let thread = std::thread::Builder::new()
            .name("wal".into())
            .spawn(move || run(&thread_store, &inbox, &events, &outbox))?;
        Ok(WalThread {
            commands: Some(commands),
            thread: Some(thread),
            store,
            commands_sent: 0,
            sending,
            progress,
        })
    }

    /// What the thread has made durable so far.
    pub(super) fn progress(&self) -> &WalProgress {
        &self.progress
    }

    /// From now on the thread sends no more messages (the node stopped participating);
    /// it still writes what is queued.
    pub(super) fn stop_sending(&self) {
        self.sending.store(false, Ordering::SeqCst);
    }

    /// Queues `command`. False if the thread has stopped (after a storage failure it
    /// reported, or a panic).
    pub(super) fn send(&mut self, command: WalCommand) -> bool {
        let sent = self
            .commands
            .as_ref()
            .is_some_and(|commands| commands.send(command).is_ok());
        self.commands_sent += u64::from(sent);
        sent
    }

    /// Whether the thread has nothing queued or in hand: every command handed over is
    /// finished and its messages sent. Stays true until the next [`WalThread::send`].
    pub(super) fn idle(&self) -> bool {
        self.commands.is_some()
            && self.progress.commands_done.load(Ordering::SeqCst) == self.commands_sent
    }

    /// Writes `batch` (and syncs it if it must) on the calling thread; only while
    /// [`WalThread::idle`], or it could overtake a batch handed over before it. On success
    /// the batch is durable and published like one of the thread's groups, and its messages
    /// are returned for the caller to send.
    pub(super) fn write_directly(
        &mut self,
        mut batch: PersistBatch,
    ) -> Result<Vec<Message>, StorageError> {
        debug_assert!(self.idle(), "a direct write while the WAL thread is busy");
        let mut guard = match self.store.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(store) = guard.as_mut() else {
            return Err(StorageError::Failed("the WAL thread has stopped".into()));
        };
        let messages = std::mem::take(&mut batch.messages_after_sync);
        let (number, must_sync, entries) = (batch.number, batch.must_sync, batch.entries.len());
        write(store.as_mut(), WalCommand::Batch(batch))?;
        if must_sync {
            let sync_started = std::time::Instant::now();
            store.sync()?;
            self.progress.observe_sync(sync_started, entries as u64);
        }
        drop(guard);
        self.progress.publish(number, must_sync, entries as u64);
        Ok(messages)
    }

    /// Lets the thread finish what is queued and returns the store, `None` if it stopped
    /// on a failure or panicked. Call while draining the loop's channel (see `drain`):
    /// the thread may be waiting to report.
    pub(super) fn stop(&mut self) -> Option<JoinHandle<Option<Box<dyn LogStore + Send>>>> {
        self.commands = None;
        self.thread.take()
    }
}

/// The thread's DEALERs, whether it may still use them, and where it publishes progress.
struct Outbox {
    dealers: PeerDealers,
    sending: Arc<AtomicBool>,
    progress: Arc<WalProgress>,
}

/// The thread's body: take a group (everything queued, up to [`GROUP_BYTES_MAX`]), write it
/// in order, sync once, send the messages that waited for it, report. Returns the store
/// when the loop hangs up.
fn run(
    shared: &SharedStore,
    inbox: &Receiver<WalCommand>,
    events: &Sender<Event>,
    outbox: &Outbox,
) -> Option<Box<dyn LogStore + Send>> {
    work(shared, inbox, events, outbox);
    match shared.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

/// [`run`]'s loop, until the loop hangs up or a write fails.
fn work(
    shared: &SharedStore,
    inbox: &Receiver<WalCommand>,
    events: &Sender<Event>,
    outbox: &Outbox,
) {
    let mut messages: Vec<Message> = Vec::new();
    // Spin-and-yield only while batches come back to back (`super::wait`).
    let mut wait = AdaptiveWait::default();
    while let Ok(first) = wait.recv(inbox) {
        let mut guard = match shared.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(store) = guard.as_mut() else {
            return;
        };
        let mut commands = 0u64;
        let mut through_batch = None;
        let mut must_sync = false;
        let mut entries = 0u64;
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(mut command) = next.take() {
            if let WalCommand::Batch(batch) = &mut command {
                through_batch = Some(batch.number);
                must_sync |= batch.must_sync;
                entries += batch.entries.len() as u64;
                bytes += batch.entries.iter().map(Entry::size_bytes).sum::<usize>();
                messages.append(&mut batch.messages_after_sync);
            }
            commands += 1;
            if let Err(error) = write(store.as_mut(), command) {
                let _ = events.send(Event::Persisted(PersistReport::Failed(error)));
                return;
            }
            if bytes < GROUP_BYTES_MAX {
                next = inbox.try_recv().ok();
            }
        }
        if must_sync {
            let sync_started = std::time::Instant::now();
            if let Err(error) = store.sync() {
                // What the group's messages promise may not be on disk: none leaves.
                let _ = events.send(Event::Persisted(PersistReport::Failed(error)));
                return;
            }
            outbox.progress.observe_sync(sync_started, entries);
        }
        // Every batch up to this group's last is durable now. The messages leave before
        // the report, so the loop never sends a later one first on its own DEALERs.
        if outbox.sending.load(Ordering::SeqCst) {
            for message in &messages {
                outbox.dealers.send(message);
            }
        }
        messages.clear();
        drop(guard);
        let report_wanted = through_batch
            .is_some_and(|through| outbox.progress.publish(through, must_sync, entries));
        outbox
            .progress
            .commands_done
            .fetch_add(commands, Ordering::SeqCst);
        if let Some(through_batch) = through_batch.filter(|_| report_wanted) {
            {
                let report = PersistReport::Durable {
                    through_batch,
                    synced: must_sync,
                    entries,
                };
                if events.send(Event::Persisted(report)).is_err() {
                    break; // The loop is gone.
                }
            }
        }
    }
}

fn write(store: &mut dyn LogStore, command: WalCommand) -> Result<(), StorageError> {
    match command {
        WalCommand::Batch(batch) => {
            if let Some(snapshot) = batch.snapshot {
                store.install_snapshot(snapshot)?;
            }
            // Term and vote first: the store refuses to sync entries of a term it has not
            // been told about.
            if let Some(hard_state) = batch.hard_state {
                store.set_hard_state(&hard_state)?;
            }
            if !batch.entries.is_empty() {
                store.append(&batch.entries)?;
            }
            Ok(())
        }
        WalCommand::Compact(index) => store.compact_to(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{
        AppendResult, EntryPayload, HardState, MessageBody, NodeId, SnapshotMeta, Term,
    };
    use crate::storage::MemStore;
    use crate::transport::fault::PeerFaults;
    use crate::transport::peer::tests::{settings_with, two_ports};
    use crate::transport::wire::{decode_peer_message, PeerFilter};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A `MemStore` whose `sync` waits for the test's permission and which logs every call,
    /// so a test can hold one sync open while more batches queue up behind it.
    struct GatedStore {
        inner: MemStore,
        calls: Arc<Mutex<Vec<String>>>,
        /// Each `sync` first announces itself, then waits for one permit.
        sync_started: Sender<()>,
        sync_permits: Receiver<()>,
        fail_syncs: bool,
    }

    impl LogStore for GatedStore {
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            let (first, last) = (entries[0].index, entries[entries.len() - 1].index);
            self.calls
                .lock()
                .expect("not poisoned")
                .push(format!("append {first}..={last}"));
            self.inner.append(entries)
        }

        fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
            self.calls
                .lock()
                .expect("not poisoned")
                .push(format!("hard state term {}", hard_state.term));
            self.inner.set_hard_state(hard_state)
        }

        fn sync(&mut self) -> Result<(), StorageError> {
            self.calls
                .lock()
                .expect("not poisoned")
                .push("sync".to_string());
            let _ = self.sync_started.send(());
            let _ = self.sync_permits.recv();
            if self.fail_syncs {
                return Err(StorageError::Io(std::io::Error::other("injected")));
            }
            self.inner.sync()
        }

        fn compact_to(&mut self, index: LogIndex) -> Result<(), StorageError> {
            self.calls
                .lock()
                .expect("not poisoned")
                .push(format!("compact {index}"));
            self.inner.compact_to(index)
        }

        fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
            self.inner.install_snapshot(snapshot)
        }
    }

    fn batch(number: u64, indexes: std::ops::RangeInclusive<u64>) -> WalCommand {
        batch_with_acks(number, indexes, &[])
    }

    /// Batch `number` appending `indexes` (none: a batch that carries only messages and
    /// needs no sync), carrying an ack from node 0 to node 1 for each index in `acks`.
    fn batch_with_acks(
        number: u64,
        indexes: impl IntoIterator<Item = u64>,
        acks: &[u64],
    ) -> WalCommand {
        let entries: Vec<Entry> = indexes
            .into_iter()
            .map(|index| Entry {
                term: Term(1),
                index: LogIndex(index),
                payload: EntryPayload::Noop,
            })
            .collect();
        WalCommand::Batch(PersistBatch {
            number,
            snapshot: None,
            hard_state: (number == 1 && !entries.is_empty()).then_some(HardState {
                term: Term(1),
                vote: None,
                commit: LogIndex::ZERO,
            }),
            must_sync: !entries.is_empty(),
            entries,
            messages_after_sync: acks.iter().map(|index| ack(*index)).collect(),
        })
    }

    fn ack(match_index: u64) -> Message {
        Message {
            from: NodeId(0),
            to: NodeId(1),
            term: Term(1),
            body: MessageBody::AppendEntriesResponse(AppendResult::Accepted {
                match_index: LogIndex(match_index),
            }),
        }
    }

    struct Harness {
        wal: WalThread,
        reports: Receiver<Event>,
        calls: Arc<Mutex<Vec<String>>>,
        sync_started: Receiver<()>,
        sync_permits: Sender<()>,
        /// Node 1's peer port: where the thread's messages to node 1 arrive.
        peer: zmq::Socket,
        filter: PeerFilter,
        /// The faults the thread's DEALERs obey (the node loop's `fault` request sets them).
        faults: Arc<PeerFaults>,
        _context: zmq::Context,
    }

    /// Starts a WAL thread as node 0 of two, its DEALERs connected to a ROUTER the test
    /// holds as node 1.
    fn start(fail_syncs: bool) -> Harness {
        let context = zmq::Context::new();
        let ports = two_ports();
        let settings = settings_with(
            0,
            &ports,
            &std::env::temp_dir(),
            1024,
            0,
            crate::transport::snapshot_transfer::STALL_TIMEOUT,
        );
        let peer = context.socket(zmq::ROUTER).expect("router");
        peer.set_linger(0).expect("linger");
        peer.bind(&format!("tcp://127.0.0.1:{}", ports[1]))
            .expect("bind");
        let faults = Arc::new(PeerFaults::default());
        let directory = Arc::new(crate::transport::peer::PeerDirectory::new(
            settings.peers.clone(),
        ));
        let dealers =
            PeerDealers::connect(&context, &settings, faults.clone(), directory).expect("dealers");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (started_sender, sync_started) = crossbeam_channel::unbounded();
        let (sync_permits, permits) = crossbeam_channel::unbounded();
        let store = GatedStore {
            inner: MemStore::new(),
            calls: calls.clone(),
            sync_started: started_sender,
            sync_permits: permits,
            fail_syncs,
        };
        let (events, reports) = crossbeam_channel::unbounded();
        let wal = WalThread::start(Box::new(store), events, dealers).expect("spawn");
        let mut harness = Harness {
            wal,
            reports,
            calls,
            sync_started,
            sync_permits,
            peer,
            filter: PeerFilter {
                me: NodeId(1),
                ..settings.filter
            },
            faults,
            _context: context,
        };
        // The DEALER drops messages until its connection is up (ZMQ_IMMEDIATE): send
        // batches that carry only a message and need no sync until one arrives.
        let connected = (0..100).any(|_| {
            assert!(harness.wal.send(batch_with_acks(0, [], &[0])));
            let arrived = harness.received(100).is_some();
            while harness.received(0).is_some() {}
            arrived
        });
        assert!(connected, "the WAL thread's DEALER connects to node 1");
        while let Ok(event) = harness.reports.recv_timeout(Duration::from_millis(100)) {
            assert!(
                matches!(
                    event,
                    Event::Persisted(PersistReport::Durable {
                        through_batch: 0,
                        synced: false,
                        ..
                    })
                ),
                "connecting: {event:?}"
            );
        }
        harness.calls.lock().expect("not poisoned").clear();
        // Report every group from batch 1 on, as while the loop waits for its own copy.
        assert!(!harness.wal.progress().wake_when_durable(1));
        harness
    }

    impl Harness {
        /// Stops the thread, checks that it hands the store back, and returns every store
        /// call made since the harness started.
        fn stop_and_take_calls(&mut self) -> Vec<String> {
            let thread = self.wal.stop().expect("a thread");
            assert!(
                thread.join().expect("no panic").is_some(),
                "the store comes back"
            );
            self.calls.lock().expect("not poisoned").clone()
        }

        /// The next message node 1 receives within `timeout_ms`.
        fn received(&self, timeout_ms: i64) -> Option<Message> {
            if self.peer.poll(zmq::POLLIN, timeout_ms).expect("poll") == 0 {
                return None;
            }
            let frames = self.peer.recv_multipart(0).expect("recv");
            let body = frames.last().expect("a body");
            Some(decode_peer_message(body, &self.filter).expect("a Raft message"))
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    fn next_report(harness: &Harness) -> PersistReport {
        match harness.reports.recv_timeout(WAIT) {
            Ok(Event::Persisted(report)) => report,
            other => panic!("expected a persist report, got {other:?}"),
        }
    }

    #[test]
    fn batches_queued_during_a_sync_share_the_next_one() {
        let mut harness = start(false);
        assert!(harness.wal.send(batch(1, 1..=1)));
        harness.sync_started.recv_timeout(WAIT).expect("first sync");
        // While sync 1 is in progress, three more batches and a compaction queue up.
        assert!(harness.wal.send(batch(2, 2..=3)));
        assert!(harness.wal.send(WalCommand::Compact(LogIndex(1))));
        assert!(harness.wal.send(batch(3, 4..=4)));
        assert!(harness.wal.send(batch(4, 5..=6)));
        harness.sync_permits.send(()).expect("permit");
        match next_report(&harness) {
            PersistReport::Durable {
                through_batch: 1,
                synced: true,
                entries: 1,
            } => {}
            other => panic!("first group: {other:?}"),
        }
        harness
            .sync_started
            .recv_timeout(WAIT)
            .expect("second sync");
        assert!(
            harness.reports.try_recv().is_err(),
            "nothing is reported durable before its sync returns"
        );
        harness.sync_permits.send(()).expect("permit");
        match next_report(&harness) {
            PersistReport::Durable {
                through_batch: 4,
                synced: true,
                entries: 5,
            } => {}
            other => panic!("second group: {other:?}"),
        }
        assert_eq!(
            harness.stop_and_take_calls(),
            [
                "hard state term 1",
                "append 1..=1",
                "sync",
                "append 2..=3",
                "compact 1",
                "append 4..=4",
                "append 5..=6",
                "sync",
            ],
            "store calls in the loop's order, one sync per group"
        );
    }

    fn into_batch(command: WalCommand) -> PersistBatch {
        match command {
            WalCommand::Batch(batch) => batch,
            WalCommand::Compact(_) => panic!("not a batch"),
        }
    }

    #[test]
    fn a_direct_write_waits_until_the_thread_has_nothing_queued_or_in_hand() {
        let mut harness = start(false);
        assert!(harness.wal.idle(), "nothing handed over yet");
        assert!(harness.wal.send(batch(1, 1..=1)));
        harness.sync_started.recv_timeout(WAIT).expect("first sync");
        // The thread holds batch 1 in its sync: writing batch 2 here would overtake it.
        assert!(!harness.wal.idle(), "busy while it syncs");
        assert!(harness.wal.send(batch(2, 2..=2)));
        harness.sync_permits.send(()).expect("permit for sync 1");
        harness
            .sync_started
            .recv_timeout(WAIT)
            .expect("second sync");
        assert!(!harness.wal.idle(), "busy with batch 2");
        harness.sync_permits.send(()).expect("permit for sync 2");
        let deadline = std::time::Instant::now() + WAIT;
        while !harness.wal.idle() {
            assert!(std::time::Instant::now() < deadline, "the thread goes idle");
            std::thread::yield_now();
        }
        // The direct write's own sync runs on this thread: its permit goes first.
        harness.sync_permits.send(()).expect("permit for sync 3");
        let messages = harness
            .wal
            .write_directly(into_batch(batch_with_acks(3, 3..=3, &[3])))
            .expect("the direct write succeeds");
        assert_eq!(messages, [ack(3)], "its messages are the caller's to send");
        assert_eq!(harness.wal.progress().durable_through(), 3);
        assert_eq!(harness.wal.progress().counters(), (3, 3));
        assert!(harness.wal.idle(), "a direct write leaves the thread idle");
        assert_eq!(
            harness.stop_and_take_calls(),
            [
                "hard state term 1",
                "append 1..=1",
                "sync",
                "append 2..=2",
                "sync",
                "append 3..=3",
                "sync",
            ],
            "store calls in the loop's order"
        );
        assert_eq!(
            harness.received(300),
            None,
            "the thread sent no ack for batch 3"
        );
    }

    #[test]
    fn a_failed_direct_sync_is_returned_and_publishes_nothing() {
        let mut harness = start(true);
        harness.sync_permits.send(()).expect("permit");
        match harness
            .wal
            .write_directly(into_batch(batch_with_acks(1, 1..=1, &[1])))
        {
            Err(StorageError::Io(_)) => {}
            other => panic!("expected the failure, got {other:?}"),
        }
        assert_eq!(harness.wal.progress().durable_through(), 0);
        assert_eq!(harness.wal.progress().counters(), (0, 0));
        assert_eq!(harness.received(300), None, "no ack leaves");
        let thread = harness.wal.stop().expect("a thread");
        thread.join().expect("no panic");
    }

    #[test]
    fn a_failed_sync_is_reported_and_stops_the_thread() {
        let mut harness = start(true);
        assert!(harness.wal.send(batch(1, 1..=1)));
        harness.sync_started.recv_timeout(WAIT).expect("sync");
        assert!(harness.wal.send(batch(2, 2..=2)));
        harness.sync_permits.send(()).expect("permit");
        match next_report(&harness) {
            PersistReport::Failed(StorageError::Io(_)) => {}
            other => panic!("expected the failure, got {other:?}"),
        }
        let thread = harness.wal.stop().expect("a thread");
        thread.join().expect("no panic");
        assert!(
            harness.reports.try_recv().is_err(),
            "nothing is reported durable after the failure"
        );
        let calls = harness.calls.lock().expect("not poisoned").clone();
        assert_eq!(
            calls,
            ["hard state term 1", "append 1..=1", "sync"],
            "nothing is written after the failure"
        );
    }

    #[test]
    fn acks_leave_only_after_the_sync_of_their_batch_and_every_one_before() {
        let mut harness = start(false);
        assert!(harness.wal.send(batch_with_acks(1, 1..=1, &[1])));
        harness.sync_started.recv_timeout(WAIT).expect("sync");
        // A later Ready that wrote nothing (entry 1 arrived again) acks it again: that ack
        // waits for the batch in flight.
        assert!(harness.wal.send(batch_with_acks(1, [], &[1])));
        assert_eq!(
            harness.received(300),
            None,
            "no ack leaves while its batch's sync is in progress"
        );
        assert!(
            harness.reports.try_recv().is_err(),
            "nothing reported durable yet"
        );
        harness.sync_permits.send(()).expect("permit");
        assert_eq!(
            harness.received(10_000),
            Some(ack(1)),
            "the batch's own ack"
        );
        assert_eq!(
            harness.received(10_000),
            Some(ack(1)),
            "the ack that waited behind it"
        );
        match next_report(&harness) {
            PersistReport::Durable {
                through_batch: 1,
                synced: true,
                entries: 1,
            } => {}
            other => panic!("the sync is still reported to the loop: {other:?}"),
        }
        let thread = harness.wal.stop().expect("a thread");
        thread.join().expect("no panic");
    }

    #[test]
    fn progress_is_published_and_reported_only_when_asked() {
        let mut harness = start(false);
        let progress = harness.wal.progress();
        assert_eq!(progress.counters(), (0, 0));
        assert!(!progress.wake_when_durable(0), "no report wanted");
        assert!(harness.wal.send(batch_with_acks(1, 1..=2, &[2])));
        harness.sync_permits.send(()).expect("permit");
        assert_eq!(
            harness.received(10_000),
            Some(ack(2)),
            "the ack still leaves"
        );
        let deadline = std::time::Instant::now() + WAIT;
        while harness.wal.progress().durable_through() < 1 {
            assert!(std::time::Instant::now() < deadline, "batch 1 published");
            std::thread::yield_now();
        }
        assert_eq!(harness.wal.progress().counters(), (1, 2));
        assert!(
            harness
                .reports
                .recv_timeout(Duration::from_millis(300))
                .is_err(),
            "no report while none is asked for"
        );
        assert!(
            harness.wal.progress().wake_when_durable(1),
            "asking for a batch already durable says so instead of waiting"
        );
        assert!(!harness.wal.progress().wake_when_durable(2));
        assert!(harness.wal.send(batch(2, 3..=3)));
        harness.sync_permits.send(()).expect("permit");
        match next_report(&harness) {
            PersistReport::Durable {
                through_batch: 2, ..
            } => {}
            other => panic!("asked for batch 2: {other:?}"),
        }
        let thread = harness.wal.stop().expect("a thread");
        thread.join().expect("no panic");
    }

    #[test]
    fn nothing_leaves_after_a_failure_when_stopped_or_when_faults_drop_it() {
        #[derive(Clone, Copy, Debug)]
        enum Case {
            FailedSync,
            StoppedSending,
            FaultDropsToPeer,
        }
        for case in [
            Case::FailedSync,
            Case::StoppedSending,
            Case::FaultDropsToPeer,
        ] {
            let mut harness = start(matches!(case, Case::FailedSync));
            match case {
                Case::FailedSync => {}
                Case::StoppedSending => harness.wal.stop_sending(),
                Case::FaultDropsToPeer => harness.faults.set(&[NodeId(1)], &[]),
            }
            assert!(harness.wal.send(batch_with_acks(1, 1..=1, &[1])));
            harness.sync_permits.send(()).expect("permit");
            let report = next_report(&harness);
            match (case, &report) {
                (Case::FailedSync, PersistReport::Failed(_)) => {}
                (
                    Case::StoppedSending | Case::FaultDropsToPeer,
                    PersistReport::Durable {
                        through_batch: 1, ..
                    },
                ) => {}
                _ => panic!("{case:?}: unexpected report {report:?}"),
            }
            assert_eq!(harness.received(300), None, "{case:?}: nothing sent");
            if let Case::FaultDropsToPeer = case {
                harness.faults.set(&[], &[]);
                assert!(harness.wal.send(batch_with_acks(2, 2..=2, &[2])));
                harness.sync_permits.send(()).expect("permit");
                assert_eq!(
                    harness.received(10_000),
                    Some(ack(2)),
                    "{case:?}: sent again once healed"
                );
            }
            let thread = harness.wal.stop().expect("a thread");
            thread.join().expect("no panic");
        }
    }
}
