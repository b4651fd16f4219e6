//! One simulated node: a `Core`, its durable storage, its state machine (`rrmq::queue::Queue`)
//! and the runtime loop around them.
//!
//! The loop models the real node's (`rrmq::node`: `node_loop::process_ready` and the WAL
//! thread) pipelined persistence, following the contract in `rrmq::raft`'s module docs, and
//! drives the node's own persistence pipeline (`rrmq::node::persist_pipeline`) to decide
//! what needs a sync, what leaves at once and what waits for which batch:
//!
//! - *take* a `Ready`: send its `messages` at once; if it installs a snapshot, adopt the
//!   snapshot file (durable at once) and swap the state machine to it; apply `committed`
//!   (committed means durable on a majority, so a follower may apply before its own copy is
//!   durable; a leader counts itself only after `on_persisted`); answer reads; then hand the
//!   snapshot's log restart, hard state, entries and `messages_after_persist` to the
//!   pipeline, queue the batch it makes as the next one of the node's FIFO
//!   (`SimNode::unfinished`) and send what it releases at once. The loop takes further
//!   `Ready`s while batches are unfinished, up to `PIPELINE_DEPTH_MAX` of them.
//! - *finish* batches, strictly in order, once their disk time has come: every consecutive
//!   batch that is due forms one sync group, persisted atomically (the WAL's one record per
//!   group); then its batches' messages leave, and the pipeline, told the group is durable,
//!   releases the `on_persisted` reports that waited for it (as the WAL thread and the loop
//!   do). Disk times never decrease along the FIFO (a later batch is never durable before
//!   an earlier one); a batch that needs no sync (only a commit hint, or only messages that
//!   wait for the batches before it) takes no disk time of its own.
//!
//! Crash points: right after taking a `Ready` (`BeforePersist`: nothing of its batch is
//! durable), in the middle of a group's sync (`MidSync`: the hard state file, written
//! first, may be, the group's record is not), after a group is durable but before its
//! messages leave (`AfterPersist`), and between ticks with any number of batches in flight.
//! A crash loses the core, every unfinished batch and the state machine; a restart
//! reconciles the snapshot file with the log (`DurableStorage::recover`, the real
//! recovery's rule), builds a new core from it and rebuilds the state machine from the
//! snapshot, then re-applies the log after it.
//!
//! Snapshots: at random points a node saves a snapshot of its state machine at its applied
//! index (atomically, with the chained hash of the prefix it applied) and tells the core,
//! which compacts its log; storage compacts behind the batches in flight (the real node's
//! compaction travels through the WAL thread's FIFO too). An `InstallSnapshot` the core
//! sends carries the node's saved snapshot over the network; the receiving node keeps the
//! data until its core's `Ready` asks to install it, and the transport may report the
//! transfer's fate to the leader's core.

use super::checkers::chain_hash;
use super::client::Reply;
use super::network::Envelope;
use super::simulation::Simulation;
use super::state_machine::DIGEST_EVERY_ENTRIES;
use super::storage::{DurableStorage, SnapshotData};
use super::trace::{CrashPoint, Event, MessageSummary, ReplySummary};
use super::{property, Violation};
use bytes::Bytes;
use rand::Rng;
use rrmq::node::persist_pipeline::{PersistBatch, PersistPipeline, ReadyWrites};
use rrmq::queue::{Queue, QueueConfig};
use rrmq::raft::{
    Core, Entry, EntryId, EntryPayload, HardState, LogIndex, MessageBody, NodeId, Role,
    SnapshotMeta, Term,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// What a taken `Ready` left for the disk: one batch of the node's FIFO.
pub struct UnfinishedBatch {
    /// Never before the batch ahead of it in the FIFO.
    pub durable_at_tick: u64,
    /// As the persistence pipeline numbered it, with the messages that wait for it.
    pub batch: PersistBatch,
    /// Compact the log to here once this batch is durable (a snapshot saved meanwhile).
    pub compact_after: Option<LogIndex>,
}

pub struct SimNode {
    pub id: NodeId,
    /// `None` while crashed.
    pub core: Option<Core>,
    pub storage: DurableStorage,
    /// Numbers the batches and holds what waits for them: the real node's pipeline.
    pub pipeline: PersistPipeline,
    /// Batches taken but not durable yet, oldest first.
    pub unfinished: VecDeque<UnfinishedBatch>,
    /// A batch is durable `0..=this` ticks after it was taken (and not before the one
    /// ahead of it).
    pub storage_delay_ticks_max: u64,
    /// The state machine.
    pub state: Queue,
    /// The last entry applied to `state` (or covered by the snapshot it was loaded from).
    pub applied: EntryId,
    /// The chained hash of the entries applied, `1..=applied.index`.
    pub applied_chain: u64,
    /// Snapshot data that arrived with `InstallSnapshot` messages since the last `ready()`.
    pub received_snapshots: Vec<Arc<SnapshotData>>,
    /// The snapshots this node held lately, newest last: an `InstallSnapshot` queued before
    /// the node saved a newer one names the older one, which the runtime still has at hand
    /// for a while (a transport streaming it holds it open). Older ones are gone: sending
    /// one fails like a lost transfer.
    pub recent_snapshots: VecDeque<Arc<SnapshotData>>,
    /// Role and term last seen, to trace changes.
    pub role_seen: Option<(Role, Term)>,
}

impl SimNode {
    pub fn new(id: NodeId, storage_delay_ticks_max: u64, queue: QueueConfig) -> SimNode {
        SimNode {
            id,
            core: None,
            storage: DurableStorage::default(),
            pipeline: PersistPipeline::new(id, HardState::default()),
            unfinished: VecDeque::new(),
            storage_delay_ticks_max,
            state: Queue::new(queue),
            applied: EntryId::default(),
            applied_chain: 0,
            received_snapshots: Vec::new(),
            recent_snapshots: VecDeque::new(),
            role_seen: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.core.is_some()
    }

    pub fn applied_index(&self) -> LogIndex {
        self.applied.index
    }

    fn remember_snapshot(&mut self, snapshot: Arc<SnapshotData>) {
        if self.recent_snapshots.len() == RECENT_SNAPSHOTS_MAX {
            self.recent_snapshots.pop_front();
        }
        self.recent_snapshots.push_back(snapshot);
    }
}

/// Snapshots a node keeps at hand for transfers (see `SimNode::recent_snapshots`).
const RECENT_SNAPSHOTS_MAX: usize = 2;

/// Rounds of `process_ready` (finishing a group, or taking a `Ready`) in one go, at most: the
/// rest waits for the next tick.
const READY_ROUNDS_MAX: usize = 8;

/// Batches a node keeps unfinished, at most: it takes no new `Ready` beyond (the real
/// node's channel to the WAL thread is unbounded, but its disk keeps up; this keeps the
/// model bounded through long stalls).
const PIPELINE_DEPTH_MAX: usize = 8;

impl Simulation {
    /// Checks and traces node `position` after any call into its core.
    pub(super) fn after_step(&mut self, position: usize) -> Result<(), Violation> {
        let node = &mut self.nodes[position];
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        let role = (core.role(), core.term());
        if node.role_seen != Some(role) {
            node.role_seen = Some(role);
            self.trace.record(
                self.now,
                Event::Role {
                    node: node.id,
                    role: role.0,
                    term: role.1,
                },
            );
        }
        if let Some(index) = self.checkers.after_step(position, core)? {
            self.trace.record(
                self.now,
                Event::Committed {
                    node: node.id,
                    index,
                },
            );
        }
        Ok(())
    }

    /// Delivers one message (with its snapshot data) to its addressee, if it is up.
    pub(super) fn deliver(&mut self, envelope: Envelope) -> Result<(), Violation> {
        let message = envelope.message;
        let position = message.to.0 as usize;
        let node = &mut self.nodes[position];
        let Some(core) = node.core.as_mut() else {
            self.network
                .lose(&message, "node down", self.now, &mut self.trace);
            return Ok(());
        };
        self.trace
            .record(self.now, Event::Delivered(MessageSummary::of(&message)));
        let snapshot_from = match &message.body {
            MessageBody::InstallSnapshot { .. } => Some((message.from, message.to)),
            _ => None,
        };
        if let Some(snapshot) = envelope.snapshot {
            node.received_snapshots.push(snapshot);
        }
        core.step(message);
        self.after_step(position)?;
        if let Some((leader, follower)) = snapshot_from {
            if self.rng.gen_bool(self.scenario.snapshot_report_chance) {
                self.report_snapshot(leader, follower, true)?;
            }
        }
        if self.rng.gen_bool(self.scenario.eager_ready_chance) {
            self.process_ready(position)?;
        }
        Ok(())
    }

    /// The transport of `leader` tells its core how a snapshot transfer to `follower` went.
    pub(super) fn report_snapshot(
        &mut self,
        leader: NodeId,
        follower: NodeId,
        delivered: bool,
    ) -> Result<(), Violation> {
        let position = leader.0 as usize;
        let Some(core) = self.nodes[position].core.as_mut() else {
            return Ok(());
        };
        core.report_snapshot(follower, delivered);
        self.trace.record(
            self.now,
            Event::SnapshotReported {
                leader,
                follower,
                delivered,
            },
        );
        self.after_step(position)
    }

    /// Finishes the node's batches whose disk time has come (one sync group), and takes
    /// new `Ready`s whether or not batches are still unfinished.
    pub(super) fn process_ready(&mut self, position: usize) -> Result<(), Violation> {
        for _ in 0..READY_ROUNDS_MAX {
            let node = &self.nodes[position];
            let Some(core) = node.core.as_ref() else {
                return Ok(());
            };
            if node
                .unfinished
                .front()
                .is_some_and(|batch| batch.durable_at_tick <= self.now)
            {
                self.finish_group(position)?;
            } else if core.has_ready() && node.unfinished.len() < PIPELINE_DEPTH_MAX {
                self.take_ready(position)?;
            } else {
                return Ok(());
            }
        }
        Ok(())
    }

    fn take_ready(&mut self, position: usize) -> Result<(), Violation> {
        let now = self.now;
        let node = &mut self.nodes[position];
        let id = node.id;
        let core = node
            .core
            .as_mut()
            .expect("process_ready checked the node is up");
        let ready = core.ready();
        let received = std::mem::take(&mut node.received_snapshots);
        let snapshot = match ready.snapshot {
            None => None,
            Some(meta) => {
                let Some(data) = received.into_iter().rev().find(|data| data.meta == meta) else {
                    return Err(Violation::new(
                        property::READY_CONTRACT,
                        format!(
                            "n{id}: Ready installs a snapshot up to {}, which never arrived",
                            meta.last
                        ),
                    ));
                };
                self.checkers.log_matching.installed(position, id, meta)?;
                Some(data)
            }
        };
        self.checkers
            .log_matching
            .handed_out(position, id, &ready.entries)?;
        self.checkers
            .log_matching
            .check_against_core(position, id, core.last_index(), core)?;
        for message in ready.messages {
            let snapshot = match &message.body {
                MessageBody::InstallSnapshot { snapshot: meta } => {
                    let held = node
                        .recent_snapshots
                        .iter()
                        .find(|held| held.meta == *meta)
                        .cloned();
                    if held.is_none() {
                        if *meta == *core.snapshot() {
                            return Err(Violation::new(
                                property::READY_CONTRACT,
                                format!(
                                    "n{id} sends its snapshot up to {}, which it never saved",
                                    meta.last
                                ),
                            ));
                        }
                        self.network
                            .lose(&message, "snapshot data gone", now, &mut self.trace);
                        continue;
                    }
                    held
                }
                _ => None,
            };
            self.network.send(
                Envelope { message, snapshot },
                now,
                &mut self.rng,
                &mut self.trace,
            );
        }
        // An installed snapshot's file is adopted (durable) and the state machine swapped at
        // once; the WAL records that the log restarts after it with this Ready's batch.
        let installed = match snapshot {
            Some(data) => {
                let node = &mut self.nodes[position];
                node.storage.adopt_snapshot(Arc::clone(&data));
                node.remember_snapshot(Arc::clone(&data));
                self.install_snapshot(position, &data)?;
                Some(data.meta.clone())
            }
            None => None,
        };
        // Committed means durable on a majority: applied before this node's copy is.
        for entry in &ready.committed {
            self.apply(position, entry)?;
        }
        let node = &self.nodes[position];
        for read_id in ready.aborted_reads {
            self.clients.read_aborted(position, id, read_id)?;
        }
        for read_state in ready.read_states {
            self.trace.record(
                now,
                Event::ReadConfirmed {
                    node: id,
                    read_id: read_state.read_id,
                    index: read_state.index,
                },
            );
            self.clients.read_confirmed(position, id, read_state)?;
        }
        self.clients.answer_reads(position, node.applied_index());
        // The real node's pipeline decides what needs a sync (entries, an installed
        // snapshot, a new term or vote; a commit hint rides along with the next one), what
        // leaves at once (nothing in flight) and what waits for which batch.
        let node = &mut self.nodes[position];
        let handoff = node.pipeline.persist(ReadyWrites {
            snapshot: installed,
            hard_state: ready.hard_state,
            entries: ready.entries,
            messages_after_persist: ready.messages_after_persist,
        });
        if let Some(batch) = handoff.batch {
            let delay_ticks = if !batch.must_sync {
                0
            } else if self.faults_enabled && self.rng.gen_bool(self.scenario.storage_stall_chance) {
                self.rng
                    .gen_range(1..=self.scenario.storage_stall_ticks_max)
            } else {
                self.rng
                    .gen_range(0..=self.nodes[position].storage_delay_ticks_max)
            };
            let node = &mut self.nodes[position];
            let ahead_durable_at = node
                .unfinished
                .back()
                .map_or(0, |batch| batch.durable_at_tick);
            if !node.unfinished.is_empty() {
                self.pipelined_readies += 1;
            }
            node.unfinished.push_back(UnfinishedBatch {
                durable_at_tick: (now + delay_ticks).max(ahead_durable_at),
                batch,
                compact_after: None,
            });
        }
        for message in handoff.send_now {
            self.network.send(
                Envelope {
                    message,
                    snapshot: None,
                },
                now,
                &mut self.rng,
                &mut self.trace,
            );
        }
        if let Some(last) = handoff.persisted_now {
            let core = self.nodes[position]
                .core
                .as_mut()
                .expect("process_ready checked the node is up");
            core.on_persisted(last);
        }
        self.after_step(position)?;
        if self.faults_enabled && self.rng.gen_bool(self.scenario.crash_mid_ready_chance) {
            self.crash(position, CrashPoint::BeforePersist);
        }
        Ok(())
    }

    /// Makes every consecutive due batch durable as one sync group, then sends what waited
    /// for them and reports `on_persisted`, in batch order.
    fn finish_group(&mut self, position: usize) -> Result<(), Violation> {
        let now = self.now;
        let node = &mut self.nodes[position];
        let id = node.id;
        let mut group = Vec::new();
        while node
            .unfinished
            .front()
            .is_some_and(|batch| batch.durable_at_tick <= now)
        {
            group.extend(node.unfinished.pop_front());
        }
        if group.len() > 1 {
            self.grouped_batches += group.len() as u64;
        }
        if self.faults_enabled && self.rng.gen_bool(self.scenario.crash_mid_ready_chance) {
            // The hard state file is written at the start of the sync; the record is lost.
            if let Some(hard_state) = group
                .iter()
                .rev()
                .find_map(|unfinished| unfinished.batch.hard_state)
            {
                self.nodes[position]
                    .storage
                    .persist_hard_state_only(hard_state);
            }
            self.crash(position, CrashPoint::MidSync);
            return Ok(());
        }
        let node = &mut self.nodes[position];
        for unfinished in &group {
            let batch = &unfinished.batch;
            if let Some(snapshot) = &batch.snapshot {
                node.storage.restart_log_after(snapshot.clone());
            }
            node.storage.persist(id, batch.hard_state, &batch.entries)?;
            if let Some(compact_to) = unfinished.compact_after {
                node.storage.compact(compact_to);
            }
            if batch.hard_state.is_some() || !batch.entries.is_empty() {
                self.trace.record(
                    now,
                    Event::Persisted {
                        node: id,
                        hard_state: batch.hard_state.map(|hard_state| {
                            (hard_state.term, hard_state.vote, hard_state.commit)
                        }),
                        entries: batch
                            .entries
                            .first()
                            .zip(batch.entries.last())
                            .map(|(first, last)| (first.id(), last.id())),
                    },
                );
            }
        }
        if self.faults_enabled && self.rng.gen_bool(self.scenario.crash_mid_ready_chance) {
            self.crash(position, CrashPoint::AfterPersist);
            return Ok(());
        }
        // As the WAL thread does: the group's messages leave, then the loop hears that the
        // group is durable and releases the reports that waited for it.
        let Some(through_batch) = group.last().map(|unfinished| unfinished.batch.number) else {
            return Ok(());
        };
        for unfinished in group {
            for message in unfinished.batch.messages_after_sync {
                self.network.send(
                    Envelope {
                        message,
                        snapshot: None,
                    },
                    now,
                    &mut self.rng,
                    &mut self.trace,
                );
            }
        }
        let released = self.nodes[position].pipeline.on_durable(through_batch);
        for last in released {
            let core = self.nodes[position]
                .core
                .as_mut()
                .expect("process_ready checked the node is up");
            core.on_persisted(last);
            self.after_step(position)?;
        }
        Ok(())
    }

    /// The state machine takes over the leader's snapshot: it now stands for the committed
    /// prefix up to the snapshot's index.
    fn install_snapshot(
        &mut self,
        position: usize,
        snapshot: &SnapshotData,
    ) -> Result<(), Violation> {
        let node = &mut self.nodes[position];
        let meta = &snapshot.meta;
        if meta.index() <= node.applied_index() {
            return Err(Violation::new(
                property::READY_CONTRACT,
                format!(
                    "n{}: Ready installs a snapshot up to {}, but the node applied up to {}",
                    node.id,
                    meta.last,
                    node.applied_index()
                ),
            ));
        }
        let id = node.id;
        let (state, chain) = load_snapshot(id, snapshot, &self.scenario.queue)?;
        self.checkers
            .history
            .check_snapshot(id, meta.clone(), Some(chain))?;
        self.checkers
            .state_machine
            .check_state(id, meta.index(), &state)?;
        let node = &mut self.nodes[position];
        node.state = state;
        node.applied = meta.last;
        node.applied_chain = chain;
        self.clients.snapshot_installed(position, meta.index());
        self.snapshots_installed += 1;
        self.trace.record(
            self.now,
            Event::SnapshotInstalled {
                node: id,
                last: meta.last,
            },
        );
        Ok(())
    }

    fn apply(&mut self, position: usize, entry: &Entry) -> Result<(), Violation> {
        let node = &mut self.nodes[position];
        let id = node.id;
        let index = node.applied_index().next();
        self.checkers.history.check_applied(id, index, entry)?;
        node.applied = entry.id();
        node.applied_chain = chain_hash(node.applied_chain, entry);
        let outcome = match &entry.payload {
            EntryPayload::Command(bytes) => Some(node.state.apply(index, bytes)),
            EntryPayload::Noop | EntryPayload::Membership(_) => None,
        };
        self.checkers.state_machine.check_replica(
            id,
            index,
            outcome.as_ref(),
            &node.state.stats(),
        )?;
        if index.0.is_multiple_of(DIGEST_EVERY_ENTRIES) {
            let node = &self.nodes[position];
            self.checkers
                .state_machine
                .check_state(id, index, &node.state)?;
        }
        if let Some(reply) = self
            .clients
            .applied(position, id, entry, outcome.as_ref())?
        {
            self.answer(id, reply)?;
        }
        Ok(())
    }

    /// Node `node` answers a client; the reply may be lost on its way.
    fn answer(&mut self, node: NodeId, reply: Reply) -> Result<(), Violation> {
        self.checkers.state_machine.exactly_once.check_reply(
            node,
            reply.command,
            &reply.logged,
            reply.entry.index,
            &reply.outcome,
        )?;
        let delivered =
            !(self.faults_enabled && self.rng.gen_bool(self.scenario.reply_drop_chance));
        self.trace.record(
            self.now,
            Event::Replied {
                node,
                command: reply.command,
                entry: reply.entry,
                reply: ReplySummary::of(&reply.outcome),
                delivered,
            },
        );
        if delivered {
            let executed_again_allowed = self
                .checkers
                .state_machine
                .exactly_once
                .executed_again_allowed(reply.command);
            if let Some(client) = self
                .clients
                .reply_delivered(&reply, executed_again_allowed)?
            {
                self.trace.record(self.now, Event::NewClientId { client });
            }
        }
        Ok(())
    }

    /// Maybe saves a snapshot of node `position`'s state machine and compacts its log.
    pub(super) fn maybe_snapshot(&mut self, position: usize) -> Result<(), Violation> {
        let node = &self.nodes[position];
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        if node.applied_index() <= core.snapshot().index() {
            return Ok(());
        }
        // The membership as of the snapshot's index, as the real node writes it in the file.
        let meta = SnapshotMeta {
            last: node.applied,
            membership: core
                .membership_at(node.applied.index)
                .cloned()
                .unwrap_or_default(),
        };
        let lag = self
            .rng
            .gen_range(0..=self.scenario.compaction_lag_entries_max);
        let compact_to = LogIndex(meta.index().0.saturating_sub(lag));
        let storage_compacted = !self.rng.gen_bool(self.scenario.lazy_compaction_chance);
        let node = &mut self.nodes[position];
        let id = node.id;
        let mut state = Vec::new();
        node.state
            .encode_snapshot(&mut state)
            .expect("encoding into a Vec cannot fail");
        let snapshot = Arc::new(SnapshotData {
            meta: meta.clone(),
            state: Bytes::from(state),
            history_chain: node.applied_chain,
        });
        self.checkers
            .history
            .check_snapshot(id, meta.clone(), Some(snapshot.history_chain))?;
        self.checkers
            .state_machine
            .check_state(id, meta.index(), &node.state)?;
        node.remember_snapshot(Arc::clone(&snapshot));
        node.storage.save_snapshot(snapshot);
        if storage_compacted {
            // Behind the batches in flight, as the real node's compaction goes through the
            // WAL thread's FIFO: a batch may still overwrite a stale suffix it covers.
            match node.unfinished.back_mut() {
                Some(batch) => {
                    batch.compact_after = batch.compact_after.max(Some(compact_to));
                }
                None => node.storage.compact(compact_to),
            }
        }
        let core = node.core.as_mut().expect("checked above");
        let last = meta.last;
        core.on_snapshot_saved(meta, compact_to);
        self.checkers.log_matching.compacted(position, compact_to);
        self.snapshots_saved += 1;
        self.trace.record(
            self.now,
            Event::SnapshotSaved {
                node: id,
                last,
                compact_to,
                storage_compacted,
            },
        );
        self.after_step(position)
    }

    /// The node stops: only its durable storage survives.
    pub(super) fn crash(&mut self, position: usize, point: CrashPoint) {
        let node = &mut self.nodes[position];
        node.core = None;
        node.unfinished.clear();
        node.state = Queue::new(self.scenario.queue.clone());
        node.applied = EntryId::default();
        node.applied_chain = 0;
        node.received_snapshots.clear();
        node.recent_snapshots.clear();
        node.role_seen = None;
        self.clients.crashed(position);
        self.crash_count += 1;
        let id = node.id;
        self.trace
            .record(self.now, Event::Crash { node: id, point });
        self.schedule_connection_reports(id, true);
    }

    /// A new core from the node's durable storage (at boot too); its state machine starts
    /// from the saved snapshot (or empty) and is rebuilt by re-applying the log after it.
    pub(super) fn start(&mut self, position: usize) -> Result<(), Violation> {
        let seed = self.rng.gen();
        let node = &mut self.nodes[position];
        let id = node.id;
        let restored = node.storage.recover(id)?;
        // What a restarted node's pipeline starts from: the hard state it holds durably.
        node.pipeline = PersistPipeline::new(id, node.storage.hard_state());
        let core = Core::new(
            id,
            rrmq::raft::Membership::from_voters(self.voters.clone()),
            self.scenario.raft.clone(),
            restored,
            seed,
        );
        let snapshot = node.storage.snapshot_meta();
        self.trace.record(
            self.now,
            Event::Start {
                node: id,
                term: core.term(),
                snapshot: snapshot.index(),
                last_index: core.last_index(),
                commit: core.commit_index(),
            },
        );
        self.checkers
            .restarted(position, &core, node.storage.entries())?;
        let (state, chain) = match node.storage.snapshot() {
            Some(saved) => {
                self.restarts_from_snapshot += 1;
                let (state, chain) = load_snapshot(id, saved, &self.scenario.queue)?;
                self.checkers
                    .history
                    .check_snapshot(id, snapshot.clone(), Some(chain))?;
                self.checkers
                    .state_machine
                    .check_state(id, snapshot.index(), &state)?;
                (state, chain)
            }
            None => (Queue::new(self.scenario.queue.clone()), 0),
        };
        let node = &mut self.nodes[position];
        node.core = Some(core);
        node.state = state;
        node.applied = snapshot.last;
        node.applied_chain = chain;
        node.received_snapshots.clear();
        if let Some(saved) = node.storage.snapshot() {
            let saved = Arc::clone(saved);
            node.remember_snapshot(saved);
        }
        self.schedule_connection_reports(id, false);
        self.after_step(position)
    }
}

/// Decodes a snapshot's state machine: (state, history chain).
fn load_snapshot(
    node: NodeId,
    snapshot: &SnapshotData,
    config: &QueueConfig,
) -> Result<(Queue, u64), Violation> {
    match Queue::decode_snapshot(config.clone(), &snapshot.state[..]) {
        Ok(state) => Ok((state, snapshot.history_chain)),
        Err(error) => Err(Violation::new(
            property::SNAPSHOTS,
            format!(
                "n{node}: the snapshot up to {} does not load: {error}",
                snapshot.meta.last
            ),
        )),
    }
}
