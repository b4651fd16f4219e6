//! An in-memory [`LogStore`] for tests and the deterministic simulator.
//!
//! It keeps two states: what was written, and what was synced. [`MemStore::crash`] throws
//! away the difference, which is exactly what a crash does to the WAL, so a simulated node
//! that restarts from [`MemStore::durable`] sees what a real one would. It follows the WAL's
//! rules to the letter (term and vote durable at `sync`; a commit-only change durable only
//! with the next entries or term/vote change; the restored commit clamped to the last entry)
//! so that the simulator cannot pass on behaviour the real node lacks. It does no I/O and
//! never fails except on invalid input.

use super::{check_append, check_hard_state, check_sync, LogStore, RestoredState, StorageError};
use crate::raft::{Entry, HardState, LogIndex, SnapshotMeta};

#[derive(Clone, Debug, Default)]
pub struct MemStore {
    /// Everything appended. Invariant: `entries[i].index == i + 1`.
    entries: Vec<Entry>,
    hard_state: HardState,
    /// What a crash keeps. Invariant: `durable_entries[i].index == i + 1`.
    durable_entries: Vec<Entry>,
    durable_hard_state: HardState,
    /// The lowest index appended since the last sync, if any.
    unsynced_from: Option<LogIndex>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Only what was synced: what a crash keeps, as `Wal::open` would restore it.
    pub fn durable(&self) -> RestoredState {
        let last_index = self
            .durable_entries
            .last()
            .map_or(LogIndex::ZERO, |entry| entry.index);
        let mut hard_state = self.durable_hard_state;
        hard_state.commit = hard_state.commit.min(last_index);
        RestoredState {
            snapshot: SnapshotMeta::default(),
            hard_state,
            entries: self.durable_entries.clone(),
        }
    }

    /// Drops everything not yet synced, as a crash would. The store then holds what a `Wal`
    /// reopened after the crash holds.
    pub fn crash(&mut self) {
        let restored = self.durable();
        self.entries = restored.entries;
        self.hard_state = restored.hard_state;
        self.unsynced_from = None;
    }

    /// Everything appended so far, synced or not.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The latest hard state given, synced or not.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn last_index(&self) -> LogIndex {
        self.entries
            .last()
            .map_or(LogIndex::ZERO, |entry| entry.index)
    }
}

impl LogStore for MemStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        check_append(self.last_index(), entries)?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.entries.truncate(first.index.prev().0 as usize);
        self.entries.extend_from_slice(entries);
        self.unsynced_from = Some(
            self.unsynced_from
                .map_or(first.index, |from| from.min(first.index)),
        );
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        check_hard_state(&self.hard_state, hard_state)?;
        self.hard_state = *hard_state;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(last) = self.entries.last() {
            check_sync(last.term, &self.hard_state)?;
        }
        let term_vote_changed = (self.hard_state.term, self.hard_state.vote)
            != (self.durable_hard_state.term, self.durable_hard_state.vote);
        if let Some(from) = self.unsynced_from.take() {
            // Only the changed suffix is copied, so a long simulation stays linear.
            let keep = from.prev().0 as usize;
            self.durable_entries.truncate(keep);
            self.durable_entries
                .extend_from_slice(&self.entries[keep.min(self.entries.len())..]);
            // The WAL restores the highest commit it ever recorded.
            self.durable_hard_state.commit =
                self.durable_hard_state.commit.max(self.hard_state.commit);
        }
        if term_vote_changed {
            self.durable_hard_state = HardState {
                commit: self.durable_hard_state.commit.max(self.hard_state.commit),
                ..self.hard_state
            };
        }
        Ok(())
    }
}
