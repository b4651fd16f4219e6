//! An in-memory [`LogStore`] for tests and the deterministic simulator.
//!
//! It keeps two states: what was written, and what was synced. [`MemStore::crash`] throws
//! away the difference, which is exactly what a crash does to the WAL, so a simulated node
//! that restarts from [`MemStore::durable`] sees what a real one would. It follows the WAL's
//! rules to the letter (term and vote durable at `sync`; a commit-only change durable only
//! with the next entries or term/vote change; the restored commit clamped to the last entry;
//! an installed snapshot durable at the next `sync`; compaction immediate and never past the
//! last synced entry) so that the simulator cannot pass on behaviour the real node lacks.
//! It does no I/O and never fails except on invalid input.
//!
//! The deterministic simulator (`tests/sim/storage.rs`) keeps each node's log and hard
//! state in a `MemStore` and crashes it with [`MemStore::crash`] and
//! [`MemStore::crash_mid_sync`], so the conformance suite that holds `MemStore` to the
//! WAL's behaviour holds the simulator to it too.

use super::{check_append, check_hard_state, check_sync, LogStore, StorageError};
use crate::raft::{Entry, EntryId, HardState, InitialState, LogIndex, SnapshotMeta};

/// A log: entries after `base`. Invariant: `entries[i].index == base.index + 1 + i`.
#[derive(Clone, Debug, Default)]
struct Log {
    /// The entry just before `entries[0]`: `0@0`, where compaction left the log, or the
    /// snapshot it was restarted after.
    base: EntryId,
    entries: Vec<Entry>,
}

impl Log {
    fn last_id(&self) -> EntryId {
        self.entries.last().map_or(self.base, Entry::id)
    }

    /// Keeps the entries before `index` (which must be above `base`), then appends `new`.
    fn truncate_and_extend(&mut self, index: LogIndex, new: &[Entry]) {
        let keep = index.0.saturating_sub(self.base.index.0 + 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(new);
    }

    /// Drops the entries up to `index`, keeping at least the last one.
    fn compact_to(&mut self, index: LogIndex) {
        let cut = index.min(self.last_id().index.prev());
        if cut <= self.base.index {
            return;
        }
        let count = (cut.0 - self.base.index.0) as usize;
        self.base = self.entries[count - 1].id();
        self.entries.drain(..count);
    }
}

/// A [`LogStore`] in memory that remembers what was synced, so a test can crash it. See the
/// module docs.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    /// Everything appended.
    log: Log,
    hard_state: HardState,
    /// Appends at or below this are refused: a snapshot covers them.
    floor: LogIndex,
    /// What a crash keeps.
    durable_log: Log,
    durable_hard_state: HardState,
    /// The last snapshot installed and synced (`0@0`: none), as `Wal::open` would restore it.
    durable_snapshot: SnapshotMeta,
    /// The lowest index appended since the last sync, if any.
    unsynced_from: Option<LogIndex>,
    /// A snapshot installed since the last sync, if any.
    unsynced_snapshot: Option<SnapshotMeta>,
}

impl MemStore {
    /// An empty store, as a new data dir.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Only what was synced: what a crash keeps, as `Wal::open` would restore it.
    pub fn durable(&self) -> InitialState {
        let last_index = self.durable_log.last_id().index;
        let mut hard_state = self.durable_hard_state;
        hard_state.commit = hard_state.commit.min(last_index);
        InitialState {
            snapshot: self.durable_snapshot.clone(),
            hard_state,
            entries: self.durable_log.entries.clone(),
        }
    }

    /// Drops everything not yet synced, as a crash would. The store then holds what a `Wal`
    /// reopened after the crash holds.
    pub fn crash(&mut self) {
        self.log = self.durable_log.clone();
        self.hard_state = self.durable().hard_state;
        self.floor = self.durable_log.base.index;
        self.unsynced_from = None;
        self.unsynced_snapshot = None;
    }

    /// A crash in the middle of `sync`, between the WAL's two writes: a term or vote change
    /// given since the last sync reaches the hard state file (with the commit index already
    /// durable, not the new one), the entries and an installed snapshot do not. The store
    /// then holds what a `Wal` reopened after such a crash holds (the conformance suite
    /// checks both, `crash_mid_sync_keeps_only_term_and_vote`).
    pub fn crash_mid_sync(&mut self) {
        let term_vote_changed = (self.hard_state.term, self.hard_state.vote)
            != (self.durable_hard_state.term, self.durable_hard_state.vote);
        // `sync` checks this before it writes anything.
        if term_vote_changed && check_sync(self.log.last_id().term, &self.hard_state).is_ok() {
            self.durable_hard_state = HardState {
                commit: self.durable_hard_state.commit,
                ..self.hard_state
            };
        }
        self.crash();
    }

    /// Everything appended so far and not compacted, synced or not.
    pub fn entries(&self) -> &[Entry] {
        &self.log.entries
    }

    /// The latest hard state given, synced or not.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The index of the last entry appended (or of the snapshot installed after it), synced
    /// or not.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_id().index
    }
}

impl LogStore for MemStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        check_append(self.last_index(), self.floor, entries)?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.log.truncate_and_extend(first.index, entries);
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
        check_sync(self.log.last_id().term, &self.hard_state)?;
        let term_vote_changed = (self.hard_state.term, self.hard_state.vote)
            != (self.durable_hard_state.term, self.durable_hard_state.vote);
        let log_changed = self.unsynced_from.is_some() || self.unsynced_snapshot.is_some();
        if let Some(snapshot) = self.unsynced_snapshot.take() {
            self.durable_log = Log {
                base: snapshot.last,
                entries: Vec::new(),
            };
            self.durable_snapshot = snapshot;
        }
        if let Some(from) = self.unsynced_from.take() {
            // Only the changed suffix is copied, so a long simulation stays linear.
            let from = from.max(self.log.base.index.next());
            let durable = &mut self.durable_log;
            let start = (from.0 - self.log.base.index.0 - 1) as usize;
            let new = &self.log.entries[start.min(self.log.entries.len())..];
            durable.truncate_and_extend(from, new);
        }
        if log_changed {
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

    fn compact_to(&mut self, index: LogIndex) -> Result<(), StorageError> {
        self.durable_log.compact_to(index);
        // The written log drops the same prefix: compaction only ever covers committed,
        // synced entries, which the two logs share.
        let cut = self.durable_log.base.index.min(self.log.last_id().index);
        self.log.compact_to(cut.max(self.log.base.index));
        self.floor = self.floor.max(index);
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        if snapshot.index() == LogIndex::ZERO {
            return Err(StorageError::Invalid(
                "installing a snapshot at index 0".to_string(),
            ));
        }
        self.log = Log {
            base: snapshot.last,
            entries: Vec::new(),
        };
        self.floor = snapshot.index();
        self.unsynced_snapshot = Some(snapshot);
        // Entries appended after this are new; earlier unsynced ones are dropped with it.
        self.unsynced_from = None;
        Ok(())
    }
}
