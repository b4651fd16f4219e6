//! One simulated node: a `Core`, its durable storage and the runtime loop around them.
//!
//! The loop follows the contract in `rrmq::raft`'s module docs: take a `Ready`, send its
//! `messages` at once, persist its hard state and entries, then send
//! `messages_after_persist`, report `on_persisted`, apply `committed` and answer reads. A slow
//! disk finishes a `Ready` some ticks after it was taken; the core keeps ticking and stepping
//! meanwhile, but `ready()` is not called again before the previous `Ready` is finished. A
//! crash loses the core, the unfinished `Ready` and the applied state; a restart builds a new
//! core from durable storage and re-applies from the start.

use super::simulation::Simulation;
use super::storage::DurableStorage;
use super::trace::{CrashPoint, Event, MessageSummary};
use super::Violation;
use rand::Rng;
use rrmq::raft::{Core, Entry, HardState, LogIndex, Message, NodeId, Role, Term};

/// A `Ready` taken from the core, waiting for the disk.
pub struct UnfinishedReady {
    pub durable_at_tick: u64,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub messages_after_persist: Vec<Message>,
    pub committed: Vec<Entry>,
}

pub struct SimNode {
    pub id: NodeId,
    /// `None` while crashed.
    pub core: Option<Core>,
    pub storage: DurableStorage,
    pub unfinished: Option<UnfinishedReady>,
    /// A `Ready` is durable `0..=this` ticks after it was taken.
    pub storage_delay_ticks_max: u64,
    /// The state machine: how far the node applied since it (re)started.
    pub applied: LogIndex,
    /// Role and term last seen, to trace changes.
    pub role_seen: Option<(Role, Term)>,
}

impl SimNode {
    pub fn is_up(&self) -> bool {
        self.core.is_some()
    }
}

/// `Ready`s a node takes and finishes in one go, at most: the rest waits for the next tick.
const READY_ROUNDS_MAX: usize = 8;

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

    /// Delivers one message to its addressee, if it is up.
    pub(super) fn deliver(&mut self, message: Message) -> Result<(), Violation> {
        let position = message.to.0 as usize;
        let Some(core) = self.nodes[position].core.as_mut() else {
            self.network
                .lose(&message, "node down", self.now, &mut self.trace);
            return Ok(());
        };
        self.trace
            .record(self.now, Event::Delivered(MessageSummary::of(&message)));
        core.step(message);
        self.after_step(position)?;
        if self.rng.gen_bool(self.scenario.eager_ready_chance) {
            self.process_ready(position)?;
        }
        Ok(())
    }

    /// Finishes the node's unfinished `Ready` if its disk is done, and takes new ones.
    pub(super) fn process_ready(&mut self, position: usize) -> Result<(), Violation> {
        for _ in 0..READY_ROUNDS_MAX {
            let node = &self.nodes[position];
            let Some(core) = node.core.as_ref() else {
                return Ok(());
            };
            if let Some(unfinished) = &node.unfinished {
                if unfinished.durable_at_tick > self.now {
                    return Ok(());
                }
                self.finish_ready(position)?;
            } else if core.has_ready() {
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
        self.checkers
            .log_matching
            .handed_out(position, id, &ready.entries)?;
        self.checkers
            .log_matching
            .check_against_core(position, id, core.last_index(), core)?;
        for message in ready.messages {
            self.network
                .send(message, now, &mut self.rng, &mut self.trace);
        }
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
        self.clients.answer_reads(position, node.applied);
        let delay_ticks =
            if self.faults_enabled && self.rng.gen_bool(self.scenario.storage_stall_chance) {
                self.rng
                    .gen_range(1..=self.scenario.storage_stall_ticks_max)
            } else {
                self.rng.gen_range(0..=node.storage_delay_ticks_max)
            };
        node.unfinished = Some(UnfinishedReady {
            durable_at_tick: now + delay_ticks,
            hard_state: ready.hard_state,
            entries: ready.entries,
            messages_after_persist: ready.messages_after_persist,
            committed: ready.committed,
        });
        self.after_step(position)?;
        if self.faults_enabled && self.rng.gen_bool(self.scenario.crash_mid_ready_chance) {
            self.crash(position, CrashPoint::BeforePersist);
        }
        Ok(())
    }

    fn finish_ready(&mut self, position: usize) -> Result<(), Violation> {
        let now = self.now;
        let node = &mut self.nodes[position];
        let id = node.id;
        let ready = node
            .unfinished
            .take()
            .expect("process_ready checked there is one");
        node.storage.persist(id, ready.hard_state, &ready.entries)?;
        if ready.hard_state.is_some() || !ready.entries.is_empty() {
            self.trace.record(
                now,
                Event::Persisted {
                    node: id,
                    hard_state: ready
                        .hard_state
                        .map(|hard_state| (hard_state.term, hard_state.vote, hard_state.commit)),
                    entries: ready
                        .entries
                        .first()
                        .zip(ready.entries.last())
                        .map(|(first, last)| (first.id(), last.id())),
                },
            );
        }
        if self.faults_enabled && self.rng.gen_bool(self.scenario.crash_mid_ready_chance) {
            self.crash(position, CrashPoint::AfterPersist);
            return Ok(());
        }
        for message in ready.messages_after_persist {
            self.network
                .send(message, now, &mut self.rng, &mut self.trace);
        }
        if let Some(last) = ready.entries.last() {
            let core = self.nodes[position]
                .core
                .as_mut()
                .expect("process_ready checked the node is up");
            core.on_persisted(last.id());
            self.after_step(position)?;
        }
        for entry in &ready.committed {
            self.apply(position, entry)?;
        }
        let applied = self.nodes[position].applied;
        self.clients.answer_reads(position, applied);
        Ok(())
    }

    fn apply(&mut self, position: usize, entry: &Entry) -> Result<(), Violation> {
        let node = &mut self.nodes[position];
        let index = node.applied.next();
        self.checkers.history.check_applied(node.id, index, entry)?;
        node.applied = index;
        if let Some(command) = self.clients.applied(position, node.id, entry)? {
            self.trace.record(
                self.now,
                Event::Acknowledged {
                    node: node.id,
                    command,
                    entry: entry.id(),
                },
            );
        }
        Ok(())
    }

    /// The node stops: only its durable storage survives.
    pub(super) fn crash(&mut self, position: usize, point: CrashPoint) {
        let node = &mut self.nodes[position];
        node.core = None;
        node.unfinished = None;
        node.applied = LogIndex::ZERO;
        node.role_seen = None;
        self.clients.crashed(position);
        self.crash_count += 1;
        self.trace.record(
            self.now,
            Event::Crash {
                node: node.id,
                point,
            },
        );
    }

    /// A new core from the node's durable storage (at boot too); its state machine starts
    /// empty and is rebuilt by re-applying.
    pub(super) fn start(&mut self, position: usize) -> Result<(), Violation> {
        let seed = self.rng.gen();
        let node = &mut self.nodes[position];
        let core = Core::new(
            node.id,
            self.voters.clone(),
            self.scenario.raft.clone(),
            node.storage.restored_state(),
            seed,
        );
        self.trace.record(
            self.now,
            Event::Start {
                node: node.id,
                term: core.term(),
                last_index: core.last_index(),
                commit: core.commit_index(),
            },
        );
        self.checkers
            .restarted(position, &core, node.storage.entries())?;
        node.core = Some(core);
        node.applied = LogIndex::ZERO;
        self.after_step(position)
    }
}
