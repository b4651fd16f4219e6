//! Where the Raft core's log and hard state become durable.
//!
//! The core never touches storage: its `Ready` says what to persist and the runtime calls a
//! [`LogStore`]. [`MemStore`] serves tests and the deterministic simulator (each simulated
//! node's log and hard state are a `MemStore`, `tests/sim/storage.rs`); the write-ahead log
//! ([`Wal`]) serves real nodes. Both pass the same conformance suite (`conformance.rs`),
//! crash points included, so the simulator's crash model ("a crash keeps only what was
//! synced") is the real node's. Snapshot files ([`snapshot_file`]) are written through the
//! same I/O layer as the WAL (`io.rs`), with the same fsync policy and, in tests, the same
//! fault injection.
//!
//! This module owns the on-disk format and the crash semantics. It must not interpret entries
//! (that is the state machine's job) nor decide what is committed (that is the core's): it
//! only keeps, in order, what it was given, and says exactly what survived a crash.
//!
//! Layout of a data dir (see `wal.rs`):
//!
//! ```text
//! <data dir>/LOCK                                 flock'ed while a Wal has the dir open
//! <data dir>/hard_state                           term, vote, commit; replaced atomically
//! <data dir>/segment-00000000000000000001.wal     log records, append-only
//! <data dir>/segment-00000000000000000002.wal     ...
//! <data dir>/snapshot-<index>-<term>.snap         state machine snapshots, newest two
//! ```

#![warn(missing_docs)]

mod codec;
#[cfg(test)]
mod conformance;
mod hard_state;
mod io;
mod mem;
pub mod snapshot_file;
mod wal;

pub use io::FsyncPolicy;
pub use mem::MemStore;
pub use snapshot_file::SnapshotFile;
pub use wal::{Wal, WalOptions};

use crate::raft::{Entry, HardState, LogIndex, SnapshotMeta, Term};
use std::fmt;
use std::path::Path;

/// What an operator should do when the log or hard state is damaged; ends every `Corrupt`
/// message built by [`StorageError::corrupt`].
pub(crate) const RECOVERY_ADVICE: &str = "this node's data cannot be trusted. To recover: stop \
     the node, delete its data dir and restart it with --rejoin, and it will catch up from the \
     other nodes (do this for one node at a time, while the others form a majority)";

/// What an operator should do when no usable snapshot or log is left.
pub const SNAPSHOT_RECOVERY_ADVICE: &str = "to recover: stop the node, delete its data dir \
     and restart it; it will catch up from the other nodes through a snapshot (do this for \
     one node at a time, while the others form a majority)";

/// Why a store or a snapshot file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed; the message names the file and the action.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Data that was synced (or a snapshot file that was checked before) does not read back:
    /// a segment, the hard state file or a snapshot file is damaged.
    #[error("corrupt log in {file} at byte {offset}: {reason}")]
    Corrupt {
        /// The damaged file: a segment, `hard_state` or a snapshot file.
        file: String,
        /// Where in `file` the damage was found.
        offset: u64,
        /// What is wrong there; for the log and the hard state file, also what the operator
        /// must do (the node cannot start until then).
        reason: String,
    },
    /// The caller asked for something the storage contract forbids (a gap, a vote changed
    /// within a term, ...): a bug in the caller, refused before anything is written.
    #[error("{0}")]
    Invalid(String),
    /// An earlier write or fsync failed, so what is on disk is unknown: the store refuses
    /// everything until the node restarts and recovers what was synced (STYLE.md: a failed
    /// fsync is never retried, the kernel may already have dropped the data).
    #[error("storage stopped after an earlier failure ({0}); restart the node to recover")]
    Failed(String),
    /// Another process (or another `Wal` in this one) has the data dir open.
    #[error("data dir {dir} is in use by {holder} (it holds {dir}/LOCK); two nodes must never share a data dir")]
    Locked {
        /// The data dir.
        dir: String,
        /// `pid <n>` as written in `LOCK`, or `another process`.
        holder: String,
    },
}

impl StorageError {
    /// Damage in the log or the hard state file (`file`, at byte `offset`): synced data that
    /// cannot be read back. The message ends with [`RECOVERY_ADVICE`], since the node cannot
    /// start until the operator acts.
    pub(crate) fn corrupt(file: &Path, offset: u64, reason: impl fmt::Display) -> StorageError {
        StorageError::Corrupt {
            file: file.display().to_string(),
            offset,
            reason: format!("{reason}; {RECOVERY_ADVICE}"),
        }
    }
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
    ///
    /// To ensure correctness: nothing is durable when this returns (both stores only buffer
    /// until `sync`). A gap or non-contiguous entries are refused as `Invalid`.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Records the hard state. A change of `term` or `vote` is durable once `sync` returns;
    /// `commit` may be persisted lazily (it is only a hint on restart).
    ///
    /// To ensure correctness: nothing is durable when this returns. A commit-only change
    /// becomes durable with the next `sync` that persists entries or a term/vote change,
    /// and is restored clamped to the last entry. A term that moves back or a vote that
    /// changes within a term is refused as `Invalid` (it would allow two votes in a term).
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError>;

    /// Makes everything written so far durable (fsync, or nothing under `--fsync never`).
    ///
    /// To ensure correctness: when this returns `Ok`, every earlier `append` and term/vote
    /// change is durable, term and vote no later than the entries (a crash never keeps
    /// entries of a term the node has not durably adopted). Refuses as `Invalid` a log whose
    /// last term is above the hard state's term: Raft never stores an entry from a term it
    /// has not adopted (§5.1), so that is a caller bug.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// Lets the store forget the entries up to `index`, which a durable snapshot covers. It
    /// may keep some of them (the WAL deletes whole segments only) but never drops an entry
    /// above `index`, nor the last synced entry. Appends at or below `index` are refused as
    /// `Invalid` from now on: a snapshot covers them, so they are committed for good.
    ///
    /// To ensure correctness: the caller must have made a snapshot covering `index` durable
    /// first. What is dropped is gone when this returns (the WAL fsyncs the directory after
    /// each deletion), so a crash leaves a contiguous log.
    fn compact_to(&mut self, index: LogIndex) -> Result<(), StorageError>;

    /// Restarts the log after `snapshot`, which a follower received from its leader (Raft
    /// §7): every stored entry is dropped, and the next append must start at
    /// `snapshot.index + 1` (even if that leaves a gap against the dropped entries). After a
    /// restart, [`InitialState::snapshot`](crate::raft::InitialState::snapshot) is `snapshot` and the entries follow it.
    ///
    /// To ensure correctness: nothing is durable when this returns; the next `sync` makes it
    /// durable, before or together with the entries appended after it, so a crash keeps
    /// either the old log or the restarted one. The caller makes the snapshot's data durable
    /// before that `sync`: a log that restarts after a snapshot the node does not hold
    /// cannot be recovered.
    fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError>;
}

/// Checks that `entries` may follow a log ending at `last_index`: contiguous, ascending,
/// starting at an index in `floor + 1..=last_index + 1` (`floor`: the last index a snapshot
/// covers). Both stores call it, so a caller's bug is an `Invalid` error in the simulator
/// exactly as on a real node.
pub(crate) fn check_append(
    last_index: LogIndex,
    floor: LogIndex,
    entries: &[Entry],
) -> Result<(), StorageError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    if first.index <= floor {
        return Err(StorageError::Invalid(format!(
            "append starting at index {} overwrites entries up to {floor}, which a snapshot \
             covers",
            first.index
        )));
    }
    if first.index == LogIndex::ZERO || first.index > last_index.next() {
        return Err(StorageError::Invalid(format!(
            "append starting at index {} to a log ending at {}: leaves a gap",
            first.index, last_index
        )));
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index.next() {
            return Err(StorageError::Invalid(format!(
                "append of non-contiguous entries: {} follows {}",
                pair[1].index, pair[0].index
            )));
        }
    }
    Ok(())
}

/// Refuses to make durable a log whose last entry's term is above the current term: call
/// `set_hard_state` before `sync` when a batch adopts a new term.
pub(crate) fn check_sync(last_term: Term, hard_state: &HardState) -> Result<(), StorageError> {
    if last_term > hard_state.term {
        return Err(StorageError::Invalid(format!(
            "log holds entries of term {last_term} but the hard state's term is {}",
            hard_state.term
        )));
    }
    Ok(())
}

/// Refuses a hard state that would let this node vote twice in one term (Raft §5.2): the term
/// never decreases, and within a term a cast vote never changes. This is the store's last line
/// of defence for election safety, cheap enough to check on every call.
pub(crate) fn check_hard_state(previous: &HardState, next: &HardState) -> Result<(), StorageError> {
    if next.term < previous.term {
        return Err(StorageError::Invalid(format!(
            "term moved back from {} to {}",
            previous.term, next.term
        )));
    }
    if next.term == previous.term && previous.vote.is_some() && next.vote != previous.vote {
        return Err(StorageError::Invalid(format!(
            "vote in term {} changed from {:?} to {:?}",
            next.term, previous.vote, next.vote
        )));
    }
    Ok(())
}
