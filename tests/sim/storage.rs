//! One node's durable storage: what survives a crash.
//!
//! It models the real node's two kinds of files. The snapshot file (the newest one) is
//! written atomically (temp file, fsync, rename): by the node itself after applying
//! (`save_snapshot`), or adopted from the leader the moment the core's `Ready` asks to
//! install it (`adopt_snapshot`, as `node_loop` renames the received file before it hands
//! the rest of the `Ready` to the WAL thread). The WAL holds the last hard state and the log
//! after its compaction point, and applies the `Ready` rule that entries starting at or
//! below the stored last index replace the stored suffix from there. The WAL learns of an
//! installed snapshot later, with its batch (`restart_log_after`): its log restarts there.
//!
//! A sync group of batches is persisted atomically (one checksummed record for the snapshot
//! items, hard states and entries, as the WAL writes it); a crash before that keeps none of
//! it, except that a term or vote change reaches the hard state file first
//! (`persist_hard_state_only`). Compacting the log after a save may be left for later
//! (segments deleted lazily), so the log may still hold entries the snapshot covers; and a
//! node applies committed entries before its own copy is durable, so the snapshot may also
//! be ahead of the log, or disagree with an unsynced suffix it was about to overwrite.
//! `recover` reconciles the two as `rrmq::node::recovery` does (its `plan_log` decides): a
//! log behind the snapshot, or disagreeing with it, restarts after it.

use super::{property, Violation};
use bytes::Bytes;
use rrmq::node::recovery::{plan_log, LogPlan};
use rrmq::raft::InitialState;
use rrmq::raft::{Entry, HardState, LogIndex, NodeId, SnapshotMeta};
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
    hard_state: HardState,
    /// The newest snapshot file.
    snapshot: Option<Arc<SnapshotData>>,
    /// The last snapshot the WAL's log restarted after (`restart_log_after`), `0@0`: none.
    log_restart: SnapshotMeta,
    /// The index just before `entries[0]`. Invariant: `entries[i].index == offset + 1 + i`.
    offset: LogIndex,
    entries: Vec<Entry>,
}

impl DurableStorage {
    /// Makes a `Ready`'s hard state and entries durable, checking that the core asked for
    /// something storage can do.
    pub fn persist(
        &mut self,
        node: NodeId,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        if let Some(first) = entries.first() {
            let stored_last = self.last_index();
            if first.index <= self.offset || first.index > stored_last.next() {
                return Err(Violation::new(
                    property::READY_CONTRACT,
                    format!(
                        "n{node}: Ready entries start at {} but storage holds {}..={stored_last}",
                        first.index,
                        self.offset.next()
                    ),
                ));
            }
            for (offset, entry) in entries.iter().enumerate() {
                if entry.index.0 != first.index.0 + offset as u64 {
                    return Err(Violation::new(
                        property::READY_CONTRACT,
                        format!(
                            "n{node}: Ready entries are not contiguous at {}",
                            entry.index
                        ),
                    ));
                }
            }
            // Replacing a durable entry the node already reported committed would lose it.
            let durable_commit = self.hard_state.commit;
            for entry in entries
                .iter()
                .take_while(|entry| entry.index <= durable_commit)
            {
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
            self.entries
                .truncate((first.index.0 - self.offset.0 - 1) as usize);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        Ok(())
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
    /// keeps nothing of its log when it installs one).
    pub fn restart_log_after(&mut self, snapshot: SnapshotMeta) {
        self.offset = snapshot.index();
        self.entries.clear();
        self.log_restart = snapshot;
    }

    /// A crash in the middle of a group's sync: the hard state file is written first (if
    /// term or vote changed), the group's record not at all. Like the real WAL, the file
    /// keeps the commit index already durable, not the group's new one (which would make a
    /// stale suffix the group was about to overwrite look committed after the restart).
    pub fn persist_hard_state_only(&mut self, hard_state: HardState) {
        if (hard_state.term, hard_state.vote) != (self.hard_state.term, self.hard_state.vote) {
            self.hard_state = HardState {
                commit: self.hard_state.commit,
                ..hard_state
            };
        }
    }

    /// Deletes the log up to `index`, never past the last durable entry (as
    /// `LogStore::compact_to` never drops the last synced one).
    pub fn compact(&mut self, index: LogIndex) {
        let index = index.min(self.last_index());
        if index <= self.offset {
            return;
        }
        let drop_count = (index.0 - self.offset.0) as usize;
        assert!(
            drop_count <= self.entries.len(),
            "compacting to {index} past the stored log ({})",
            self.last_index()
        );
        self.entries.drain(..drop_count);
        self.offset = index;
    }

    /// What a restarted core resumes from, after reconciling the snapshot file with the log
    /// as `rrmq::node::recovery` does: a log behind the snapshot (or disagreeing with it at
    /// its index) finishes the interrupted install and restarts after it; a gap between
    /// them means entries were lost, which no schedule may cause.
    pub fn recover(&mut self, node: NodeId) -> Result<InitialState, Violation> {
        let snapshot = self.snapshot_meta();
        let wal = InitialState {
            snapshot: self.log_restart,
            hard_state: self.hard_state,
            entries: self.entries.clone(),
        };
        match plan_log(snapshot, &wal) {
            Ok(LogPlan::Resume) => {}
            Ok(LogPlan::RestartAfterSnapshot) => self.restart_log_after(snapshot),
            Err(reason) => {
                return Err(Violation::new(
                    property::STATE_MACHINE_SAFETY,
                    format!("n{node} cannot restart from its storage: {reason}"),
                ))
            }
        }
        Ok(InitialState {
            snapshot,
            hard_state: self.hard_state,
            entries: self.entries.clone(),
        })
    }

    pub fn snapshot(&self) -> Option<&Arc<SnapshotData>> {
        self.snapshot.as_ref()
    }

    /// The hard state the WAL holds durably.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot
            .as_ref()
            .map_or_else(SnapshotMeta::default, |snapshot| snapshot.meta)
    }

    /// The stored log entries (which may start at or before the snapshot's index).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.offset.0 + self.entries.len() as u64)
    }

    fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let position = index.0.checked_sub(self.offset.0)?.checked_sub(1)?;
        self.entries.get(usize::try_from(position).ok()?)
    }
}
