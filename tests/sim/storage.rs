//! One node's durable storage: what survives a crash.
//!
//! It models the real node's two kinds of files. The snapshot file (the newest one) is
//! written atomically (temp file, fsync, rename): by the node itself after applying
//! (`save_snapshot`), or adopted from the leader the moment the core's `Ready` asks to
//! install it (`adopt_snapshot`, as `node_loop` renames the received file before it hands
//! the rest of the `Ready` to the WAL thread). The WAL is a `rrmq::storage::MemStore`, the
//! store that `src/storage/conformance.rs` holds to the real WAL's behaviour (what a crash
//! keeps, when a commit index is durable, what compaction keeps, which appends are refused),
//! so the simulator's crash model is the real node's. The WAL learns of an installed
//! snapshot later, with its batch (`restart_log_after`): its log restarts there.
//!
//! Each batch is appended and synced (`persist`); a sync group is persisted without a crash
//! point in between, as the WAL's one record per group. A crash in the middle of a group's
//! sync keeps only a term or vote change, which reaches the hard state file first
//! (`persist_hard_state_only`, `MemStore::crash_mid_sync`). Compacting the log after a save
//! may be left for later (segments deleted lazily), so the log may still hold entries the
//! snapshot covers; and a node applies committed entries before its own copy is durable, so
//! the snapshot may also be ahead of the log, or disagree with an unsynced suffix it was
//! about to overwrite. `recover` reconciles the two as `rrmq::node::recovery` does (its
//! `plan_log` decides): a log behind the snapshot, or disagreeing with it, restarts after it.

use super::{property, Violation};
use bytes::Bytes;
use rrmq::node::recovery::{plan_log, LogPlan};
use rrmq::raft::{Entry, HardState, InitialState, LogIndex, NodeId, SnapshotMeta};
use rrmq::storage::{LogStore, MemStore, StorageError};
use std::sync::Arc;

/// A saved snapshot: the state machine's encoded state at `meta`, what the network carries
/// alongside an `InstallSnapshot`.
#[derive(Debug)]
pub struct SnapshotData {
    pub meta: SnapshotMeta,
    /// `rrmq::queue::Queue::encode_snapshot` of the state after applying `meta.index()`.
    pub state: Bytes,
    /// The chained hash of the entries `1..=meta.index()` as the saving node applied them
    /// (the same chain the committed history keeps), so an installing node can prove it
    /// takes over the committed prefix.
    pub history_chain: u64,
}

#[derive(Default)]
pub struct DurableStorage {
    /// The WAL: only what it synced survives a crash.
    wal: MemStore,
    /// The newest snapshot file.
    snapshot: Option<Arc<SnapshotData>>,
    /// A refusal by the WAL at a crash point, reported by the next `recover`.
    refused: Option<Violation>,
}

/// A store refusing what the core asked for: the core broke the `Ready` contract.
fn refused(node: NodeId, error: StorageError) -> Violation {
    Violation::new(
        property::READY_CONTRACT,
        format!("n{node}: storage refused a Ready: {error}"),
    )
}

impl DurableStorage {
    /// Makes a `Ready`'s hard state and entries durable (append, set the hard state, sync),
    /// checking that the core asked for something storage can do.
    pub fn persist(
        &mut self,
        node: NodeId,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        // Replacing a durable entry the node already reported committed would lose it.
        let commit = self.wal.hard_state().commit;
        for entry in entries.iter().take_while(|entry| entry.index <= commit) {
            if let Some(stored) = self.entry(entry.index) {
                if stored != entry {
                    return Err(Violation::new(
                        property::STATE_MACHINE_SAFETY,
                        format!(
                            "n{node}: Ready overwrites durable committed entry {} with {}",
                            stored.id(),
                            entry.id()
                        ),
                    ));
                }
            }
        }
        self.wal
            .append(entries)
            .map_err(|error| refused(node, error))?;
        if let Some(hard_state) = hard_state {
            self.wal
                .set_hard_state(&hard_state)
                .map_err(|error| refused(node, error))?;
        }
        self.wal.sync().map_err(|error| refused(node, error))
    }

    /// A snapshot of this node's own state machine was saved. Compacting the log is a
    /// separate step (`compact`): the node queues it behind the batches in flight.
    pub fn save_snapshot(&mut self, snapshot: Arc<SnapshotData>) {
        self.adopt_snapshot(snapshot);
    }

    /// A snapshot file becomes the newest one, atomically: the node's own, or the leader's
    /// when the core's `Ready` installs it (before the WAL records that the log restarts
    /// after it).
    pub fn adopt_snapshot(&mut self, snapshot: Arc<SnapshotData>) {
        assert!(
            self.snapshot
                .as_ref()
                .is_none_or(|saved| saved.meta.index() < snapshot.meta.index()),
            "snapshot files are adopted in increasing order"
        );
        self.snapshot = Some(snapshot);
    }

    /// The WAL records an installed snapshot: the log restarts after it (Raft §7: the core
    /// keeps nothing of its log when it installs one). Durable with the batch's `persist`.
    pub fn restart_log_after(&mut self, snapshot: SnapshotMeta) {
        if let Err(error) = self.wal.install_snapshot(snapshot.clone()) {
            panic!("installing snapshot {}: {error}", snapshot.last);
        }
    }

    /// A crash in the middle of a group's sync: the hard state file is written first (if
    /// term or vote changed), the group's record not at all. Like the real WAL, the file
    /// keeps the commit index already durable, not the group's new one (which would make a
    /// stale suffix the group was about to overwrite look committed after the restart).
    pub fn persist_hard_state_only(&mut self, hard_state: HardState) {
        if let Err(error) = self.wal.set_hard_state(&hard_state) {
            self.refused = Some(Violation::new(
                property::READY_CONTRACT,
                format!("storage refused a Ready's hard state: {error}"),
            ));
        }
        self.wal.crash_mid_sync();
    }

    /// Lets the WAL delete the log up to `index`, as `LogStore::compact_to` (which keeps the
    /// last synced entry).
    pub fn compact(&mut self, index: LogIndex) {
        if let Err(error) = self.wal.compact_to(index) {
            panic!("compacting to {index}: {error}");
        }
    }

    /// What a restarted core resumes from, after reconciling the snapshot file with the log
    /// as `rrmq::node::recovery` does: a log behind the snapshot (or disagreeing with it at
    /// its index) finishes the interrupted install and restarts after it; a gap between
    /// them means entries were lost, which no schedule may cause.
    pub fn recover(&mut self, node: NodeId) -> Result<InitialState, Violation> {
        if let Some(violation) = self.refused.take() {
            return Err(violation);
        }
        self.wal.crash();
        let snapshot = self.snapshot_meta();
        let wal = self.wal.durable();
        let plan = plan_log(&snapshot, &wal).map_err(|reason| {
            Violation::new(
                property::STATE_MACHINE_SAFETY,
                format!("n{node} cannot restart from its storage: {reason}"),
            )
        })?;
        let mut restored = InitialState {
            snapshot: snapshot.clone(),
            ..wal
        };
        if plan == LogPlan::RestartAfterSnapshot {
            if restored.hard_state.term < snapshot.last.term {
                // As the real recovery: a leader's snapshot adopted before the hard state of
                // its term was durable raises the term (without a vote).
                restored.hard_state = HardState {
                    term: snapshot.last.term,
                    vote: None,
                    ..restored.hard_state
                };
            }
            self.wal
                .set_hard_state(&restored.hard_state)
                .and_then(|()| self.wal.install_snapshot(snapshot.clone()))
                .and_then(|()| self.wal.sync())
                .map_err(|error| {
                    Violation::new(
                        property::STATE_MACHINE_SAFETY,
                        format!(
                            "n{node} cannot restart its log after snapshot {}: {error}",
                            snapshot.last
                        ),
                    )
                })?;
            restored.entries.clear();
        }
        Ok(restored)
    }

    /// The newest snapshot file, if any.
    pub fn snapshot(&self) -> Option<&Arc<SnapshotData>> {
        self.snapshot.as_ref()
    }

    /// The hard state last persisted: its term and vote are durable; its commit index only
    /// as far as the WAL's rules make it (a hint on restart).
    pub fn hard_state(&self) -> HardState {
        self.wal.hard_state()
    }

    /// The newest snapshot file's snapshot (`0@0`: none).
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot
            .as_ref()
            .map_or_else(SnapshotMeta::default, |snapshot| snapshot.meta.clone())
    }

    /// The stored log entries (which may start at or before the snapshot's index).
    pub fn entries(&self) -> &[Entry] {
        self.wal.entries()
    }

    fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let entries = self.wal.entries();
        let first = entries.first()?.index;
        let position = index.0.checked_sub(first.0)?;
        entries.get(usize::try_from(position).ok()?)
    }
}
