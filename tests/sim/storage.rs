//! One node's durable storage: what survives a crash.
//!
//! It holds exactly what the runtime finished persisting — the last hard state, the newest
//! snapshot and the log after its compaction point — and applies the `Ready` rule that
//! entries starting at or below the stored last index replace the stored suffix from there.
//! A `Ready` is persisted atomically (one fsync for the snapshot it installs, the hard state
//! and the entries, as the WAL does); a crash before that keeps none of it. Saving a snapshot
//! is atomic too (temp file, fsync, rename): a crash keeps the previous one or the new one.
//! Compacting the log after a save may be left for later (segments deleted lazily), so the
//! log may still hold entries the snapshot covers.

use super::{property, Violation};
use bytes::Bytes;
use rrmq::raft::{Entry, HardState, LogIndex, NodeId, SnapshotMeta};
use rrmq::storage::RestoredState;
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
    snapshot: Option<Arc<SnapshotData>>,
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

    /// A snapshot of this node's own state machine was saved; the log up to `compact_to`
    /// is deleted with it (`None`: left for later).
    pub fn save_snapshot(&mut self, snapshot: Arc<SnapshotData>, compact_to: Option<LogIndex>) {
        let index = snapshot.meta.index();
        assert!(
            self.snapshot
                .as_ref()
                .is_none_or(|saved| saved.meta.index() < index),
            "snapshots are saved in increasing order"
        );
        assert!(
            index <= self.last_index(),
            "a snapshot of applied entries, which are durable"
        );
        self.snapshot = Some(snapshot);
        if let Some(compact_to) = compact_to {
            self.compact(compact_to);
        }
    }

    /// A snapshot from the leader replaces the state machine and the whole log (Raft §7:
    /// the core keeps nothing of its log when it installs one).
    pub fn install_snapshot(&mut self, snapshot: Arc<SnapshotData>) {
        self.offset = snapshot.meta.index();
        self.entries.clear();
        self.snapshot = Some(snapshot);
    }

    fn compact(&mut self, index: LogIndex) {
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

    /// What a restarted core resumes from.
    pub fn restored_state(&self) -> RestoredState {
        RestoredState {
            snapshot: self.snapshot_meta(),
            hard_state: self.hard_state,
            entries: self.entries.clone(),
        }
    }

    pub fn snapshot(&self) -> Option<&Arc<SnapshotData>> {
        self.snapshot.as_ref()
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
