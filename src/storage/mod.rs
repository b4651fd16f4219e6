//! Where the Raft core's log and hard state become durable.
//!
//! The core never touches storage: its `Ready` says what to persist and the runtime calls a
//! [`LogStore`]. `MemStore` serves tests and the simulator; the write-ahead log (`wal`) serves
//! real nodes. Both pass the same conformance suite.

use crate::raft::{Entry, HardState};

/// What a store held when it was opened: the starting point of a restarted core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredState {
    pub hard_state: HardState,
    /// Contiguous entries, indexes ascending from 1 (from the snapshot's index + 1 once
    /// snapshots exist).
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt log in {segment} at byte {offset}: {reason}")]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The storage boundary of the Raft core.
///
/// To ensure correctness: a write is durable only once `sync` has returned `Ok`. Writes
/// become durable in the order they were made: after a crash the store holds a prefix of the
/// appends made (never a later append without an earlier one), the last hard state whose
/// `term`/`vote` was synced, and nothing torn. After any `Err` the store must not be written
/// again: the caller stops acknowledging and the data on disk is whatever was synced before.
pub trait LogStore {
    /// Appends `entries` (contiguous, ascending). If the first entry's index is at or below
    /// the store's last index, the store first drops every entry from that index on: a new
    /// leader has overwritten an uncommitted suffix (Raft §5.3). The drop is durable no later
    /// than the append that follows it.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Records the hard state. A change of `term` or `vote` is durable once `sync` returns;
    /// `commit` may be persisted lazily (it is only a hint on restart).
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError>;

    /// Makes everything written so far durable (fsync, or nothing under `--fsync never`).
    fn sync(&mut self) -> Result<(), StorageError>;
}
