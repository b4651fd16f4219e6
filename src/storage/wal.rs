//! The write-ahead log: how a real node's Raft log and hard state survive crashes.
//!
//! It exists so that every acknowledgement means "on disk": a vote, an append response and
//! a client's `success: true` all leave only after [`LogStore::sync`] returned. It owns the
//! data dir (segments, `hard_state`, `LOCK`); it does not read entries back while running
//! (the core keeps its log in memory) and never decides what is committed.
//!
//! # How a batch is written
//!
//! `append` and `set_hard_state` only buffer. `sync` then, in this order:
//!
//! 1. if term or vote changed: replaces `hard_state` atomically (`hard_state.rs`: temp file,
//!    fsync, rename, fsync the directory), with the commit index already recorded, never the
//!    batch's new one: a crash before step 2 leaves on disk whatever stale suffix the batch
//!    was about to overwrite, and a newer commit index would make it look committed;
//! 2. if entries were appended: writes them, plus the latest commit index, as ONE record with
//!    ONE write syscall (a pwrite at the end of the active segment's records), then
//!    fdatasyncs it (group commit).
//!
//! Term and vote go first so that a crash can never keep entries of a term the node has not
//! durably adopted. Buffering until `sync` is what makes this ordering hold: no entry byte
//! reaches the kernel before the hard state it depends on is on disk.
//!
//! A commit-only change costs nothing: it rides in the next entry record or hard state file.
//! After a crash the restored commit is the highest one found, clamped to the last entry
//! (it is only a hint: Raft re-learns the commit index from the leader).
//!
//! # Overwriting a suffix
//!
//! Replay semantics, no physical truncation: an entry at index `i` in the log drops every
//! earlier-written entry at `i` or above. A conflicting append is therefore just an append,
//! durable with the record that carries it, and it works whichever earlier segment the
//! dropped suffix lives in. Recovery replays records in order and gets exactly the log that
//! was synced.
//!
//! # Compaction and installed snapshots
//!
//! [`LogStore::compact_to`] deletes the oldest segments whose entries a snapshot covers
//! (whole segments only, each deletion made durable before the next). When a follower
//! installs its leader's snapshot, [`LogStore::install_snapshot`] writes a *snapshot item*
//! into the next record: replay drops every entry before it and expects the next entry right
//! after the snapshot, so the restart needs no rewrite of old segments. Once that record is
//! synced, the segments before it hold nothing live and the next `compact_to` deletes them.
//!
//! # Segments
//!
//! `segment-<seq>.wal`, `seq` from 1 and contiguous. A new segment is started when the next
//! record would push the active one past `segment_bytes_max` (a record is never split, so a
//! single batch larger than that gets a segment of its own). The previous segment was fully
//! synced by the sync that wrote its last record, so only the last segment can end torn.
//!
//! Segments are *preallocated*: a new one is created at `segment_bytes_max` bytes with
//! `fallocate` (mode 0, so the file's size is already final; the space reads as zeros), and
//! its size and name are made durable once, at creation (fdatasync of the file, fsync of the
//! directory). Records are then written with pwrite at the tracked end of the records
//! (`active_len_bytes`), inside the file: no write changes the file's size, so a record's
//! fdatasync flushes the data alone. Appending to a growing file instead makes every
//! fdatasync also write the inode (its new size): on this project's VM that made an
//! fdatasync of a 200-byte write cost 0.196 ms at the median instead of 0.131-0.142 ms, and
//! every acknowledged PUT waits for one on the leader and one on a follower
//! (docs/PERFORMANCE.md, "Preallocated WAL segments"). A record larger than the space left
//! (a huge batch alone in its segment) simply grows the file. Preallocation is best effort:
//! where it fails (no fallocate support, a full disk) the WAL writes as if it did not exist,
//! and a full disk fails at the write or fsync as it always did. Opening the data dir
//! preallocates the active segment again if it is short (a cut torn tail, an older dir, a
//! larger `--wal-segment-bytes`).
//!
//! At a roll the finished segment is first cut to its records' length and that is
//! fdatasynced, *before* the next segment is created: so only the last segment ever ends in
//! unused zeros, and the recovery rule below for earlier segments stays strict.
//!
//! # Recovery
//!
//! Every record is checked (length, CRC32C, its own offset, then its contents). Where the
//! records of the last segment end, the rest of the file is looked at first, cheaply (a
//! block compare, no per-offset search): if it is all zeros it is unused preallocated space,
//! a clean end: no warning, nothing cut, writing resumes there. (A zeroed header never
//! frames a record, and a record always starts with a non-zero length.)
//!
//! Otherwise a bad record is a *torn tail* when it is in the last segment and no valid
//! record follows it: a crash interrupted a write that was never acknowledged (for instance
//! a partial record followed by zeros, the pages that did not reach the disk), so the file
//! is cut there (and fsynced) with a warning; the cut drops the preallocated space, which
//! `open` reserves again. The search for a valid record after the bad one stops where the
//! trailing zeros start. Anything else (a bad record in an earlier segment, zeros after the
//! last record of an earlier segment, or a bad record followed by a valid one) means synced
//! data was damaged, and `open` fails with [`StorageError::Corrupt`]: dropping it silently
//! could lose committed entries.
//!
//! A data dir written before preallocation existed opens as it always did (its segments
//! have no zero tail). An older binary opening a preallocated dir takes the zeros for a torn
//! tail and cuts them with a warning: nothing is lost.
//!
//! Recovery also refuses a `hard_state` whose term is below the log's last term: `sync`
//! makes term and vote durable before the entries of that term, so the hard state must have
//! been lost or rolled back, and the node could vote twice in a term.
//!
//! # Failures
//!
//! After any failed write, fsync, create, rename or delete the `Wal` refuses everything with
//! [`StorageError::Failed`]: the kernel may have dropped the dirty pages, so retrying an
//! fsync could report success for data that is gone (the "fsyncgate" lesson; STYLE.md).
//! Restarting the node reopens the dir and recovers exactly what was synced.
//!
//! # Throughput
//!
//! Measured with `measure_append_throughput` (100-byte commands, `FsyncPolicy::Always`,
//! debug build, this project's 2-core VM, one fdatasync costs ~0.2 ms): batches of 1 give
//! ~5,000 entries/s (0.5 MB/s), of 16 ~70,000 entries/s (7 MB/s), of 256 ~520,000
//! entries/s (52 MB/s). Batching is what buys throughput: the fsync dominates until batches
//! reach hundreds of entries.
//!
//! # `FsyncPolicy::Never`
//!
//! Skips every fsync. A crash of the process alone loses nothing (the kernel still has the
//! data), but a power loss or kernel crash may lose acknowledged writes, reorder them (entries
//! without their term), or leave damage that recovery reports as corruption. For benchmarks
//! and throwaway clusters only.

use super::codec::{self, BatchWriter, Item, RecordRead};
use super::hard_state;
use super::io::{DirIo, FsyncPolicy, IoOp};
use super::{check_append, check_hard_state, check_sync, LogStore, StorageError};
use crate::raft::{Entry, HardState, InitialState, LogIndex, SnapshotMeta, Term};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const LOCK_FILE_NAME: &str = "LOCK";
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".wal";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment starts when a record would take the active one past this size.
    pub segment_bytes_max: u64,
    pub fsync: FsyncPolicy,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes_max: 64 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// What the WAL remembers about one segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    seq: u64,
    /// The highest index of any entry (or snapshot item) written to this segment, `ZERO` if
    /// none or if a later snapshot item made all of them dead. A segment with
    /// `index_max <= i` holds nothing live above `i`, so compaction may delete it.
    index_max: LogIndex,
}

/// A write-ahead log in a data dir. See the module docs.
pub struct Wal {
    io: DirIo,
    options: WalOptions,
    /// Holds the flock on `LOCK` for as long as the `Wal` lives.
    _lock: File,
    /// Invariant: non-empty, `seq` contiguous and ascending; the last one is active.
    segments: Vec<Segment>,
    active: File,
    /// Bytes in the active segment; all written (and synced unless `FsyncPolicy::Never`).
    active_len_bytes: u64,
    /// What `append` buffered since the last `sync`.
    batch: BatchWriter,
    /// The log's last index and its term, counting buffered appends (after an installed
    /// snapshot and no entry: the snapshot's).
    last_index: LogIndex,
    last_term: Term,
    /// Appends at or below this are refused: a snapshot covers them.
    floor: LogIndex,
    /// The log's last index as of the last record written.
    last_index_synced: LogIndex,
    /// The latest hard state given to `set_hard_state`.
    hard_state: HardState,
    /// What the `hard_state` file holds (term and vote are what matter).
    hard_state_on_disk: HardState,
    /// The highest commit index in a written record or the `hard_state` file. Restored
    /// clamped to the last entry, but never lowered on disk: the entries up to a commit
    /// index are committed for good, so whatever log we hold up to it is the committed one.
    commit_recorded: LogIndex,
    /// Set by the first failed I/O; from then on every call fails.
    failed: Option<String>,
}

impl Wal {
    /// Opens (creating if needed) the data dir, recovers, and returns what it held.
    ///
    /// Fails with `Locked` if another `Wal` has the dir open, with `Corrupt` (naming the file
    /// and byte offset, and how to recover) if synced data is damaged.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, InitialState), StorageError> {
        if options.segment_bytes_max == 0 {
            return Err(StorageError::Invalid(
                "segment_bytes_max must be positive".to_string(),
            ));
        }
        create_data_dir(dir, options.fsync)?;
        let lock = lock_data_dir(dir)?;
        let mut io = DirIo::open(dir, options.fsync).map_err(context(dir, "opening"))?;
        hard_state::remove_stale_temp(&mut io).map_err(context(dir, "cleaning up"))?;
        let file_hard_state = hard_state::read(dir)?;

        let seqs = list_segments(dir)?;
        let mut replay = Replay {
            entries: Vec::new(),
            commit: LogIndex::ZERO,
            compacted: seqs.first().is_some_and(|seq| *seq > 1),
            snapshot: None,
            snapshot_items: 0,
        };
        let mut segments: Vec<Segment> = Vec::with_capacity(seqs.len());
        let mut active_len_bytes = 0;
        for (position, seq) in seqs.iter().enumerate() {
            let is_last = position + 1 == seqs.len();
            let snapshot_items_before = replay.snapshot_items;
            let (index_max, len_bytes) =
                recover_segment(&mut io, &segment_path(dir, *seq), is_last, &mut replay)?;
            if replay.snapshot_items != snapshot_items_before {
                // A snapshot item: everything in the earlier segments is dead.
                for segment in &mut segments {
                    segment.index_max = LogIndex::ZERO;
                }
            }
            segments.push(Segment {
                seq: *seq,
                index_max,
            });
            active_len_bytes = len_bytes;
        }
        let active = if segments.is_empty() {
            let path = segment_path(dir, 1);
            segments.push(Segment {
                seq: 1,
                index_max: LogIndex::ZERO,
            });
            io.create_segment(&path, options.segment_bytes_max)
                .map_err(context(&path, "creating"))?
        } else {
            let seq = segments.last().expect("just checked: not empty").seq;
            let path = segment_path(dir, seq);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(context(&path, "opening"))?;
            // Writing resumes at `active_len_bytes`; a cut torn tail, a segment written
            // before preallocation existed or a larger --wal-segment-bytes leave the file
            // short of its preallocated size.
            if io.preallocate(&path, &file, active_len_bytes, options.segment_bytes_max) {
                io.sync_data(IoOp::SegmentSync, &file, active_len_bytes)
                    .map_err(context(&path, "syncing"))?;
            }
            file
        };

        let base = replay
            .snapshot
            .map(|snapshot| snapshot.last)
            .unwrap_or_default();
        let last_entry = replay.entries.last().map_or(base, Entry::id);
        let floor = match replay.entries.first() {
            Some(first) if replay.compacted => base.index.max(first.index.prev()),
            _ => base.index,
        };
        let hard_state_on_disk = file_hard_state.unwrap_or_default();
        if last_entry.term > hard_state_on_disk.term {
            // `sync` writes term and vote before the entries that need them, so under
            // FsyncPolicy::Always this means the hard state was lost or rolled back: this
            // node might vote a second time in a term it already voted in.
            return Err(StorageError::corrupt(
                &dir.join(hard_state::FILE_NAME),
                0,
                format!(
                    "the hard state says term {} but the log holds entries of term {}: the \
                     hard state was lost or rolled back",
                    hard_state_on_disk.term, last_entry.term
                ),
            ));
        }
        let last_index = last_entry.index;
        let commit_recorded = hard_state_on_disk.commit.max(replay.commit);
        let commit = commit_recorded.min(last_index);
        let hard_state = HardState {
            commit,
            ..hard_state_on_disk
        };
        let wal = Wal {
            io,
            options,
            _lock: lock,
            segments,
            active,
            active_len_bytes,
            batch: BatchWriter::new(),
            last_index,
            last_term: last_entry.term,
            floor,
            last_index_synced: last_index,
            hard_state,
            hard_state_on_disk,
            commit_recorded,
            failed: None,
        };
        log::info!(
            "wal {}: opened with {} entries ({}..={}) in {} segments, term {}, commit {}",
            dir.display(),
            replay.entries.len(),
            replay
                .entries
                .first()
                .map_or(last_index.next(), |entry| entry.index),
            last_index,
            wal.segments.len(),
            hard_state.term,
            commit
        );
        Ok((
            wal,
            InitialState {
                snapshot: replay.snapshot.unwrap_or_default(),
                hard_state,
                entries: replay.entries,
            },
        ))
    }

    pub fn dir(&self) -> &Path {
        self.io.dir()
    }

    /// Whether an earlier I/O failure stopped this WAL.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Deletes the oldest segments whose entries are all at or below `index`, and returns how
    /// many it deleted. The active segment, and any segment that may hold the last synced
    /// entry, are never deleted, so the restored log is never empty once it was not.
    ///
    /// To ensure correctness: the caller must hold everything up to `index` elsewhere (a
    /// snapshot): after this the restored log may start above index 1. Each deletion is made
    /// durable (directory fsync) before the next, so a crash leaves a contiguous range.
    pub fn compact_to(&mut self, index: LogIndex) -> Result<usize, StorageError> {
        self.check_usable()?;
        self.floor = self.floor.max(index);
        let mut deleted = 0;
        while self.segments.len() > 1
            && self.segments[0].index_max <= index
            && self.segments[0].index_max < self.last_index_synced
        {
            let path = segment_path(self.io.dir(), self.segments[0].seq);
            if let Err(error) = self.io.remove_segment(&path) {
                return Err(self.fail(format!("deleting {}", path.display()), error));
            }
            self.segments.remove(0);
            deleted += 1;
        }
        Ok(deleted)
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(message) => Err(StorageError::Failed(message.clone())),
            None => Ok(()),
        }
    }

    /// Enters the failed state. Never retried: see the module docs.
    fn fail(&mut self, what: String, error: io::Error) -> StorageError {
        let message = format!("{what}: {error}");
        log::error!(
            "wal {}: {message}; refusing all further writes until restart",
            self.io.dir().display()
        );
        self.failed = Some(message.clone());
        StorageError::Io(io::Error::new(error.kind(), message))
    }

    fn active_path(&self) -> PathBuf {
        let seq = self.segments.last().expect("invariant: a segment").seq;
        segment_path(self.io.dir(), seq)
    }

    /// Starts a new segment. The current one is first cut to the length of its records (its
    /// preallocated tail dropped) and that is synced, so that no segment but the last ever
    /// ends in zeros; its records were synced by the `sync` that wrote each of them.
    fn roll(&mut self) -> Result<(), StorageError> {
        if let Err(error) = self.io.trim_segment(&self.active, self.active_len_bytes) {
            let what = format!("trimming {}", self.active_path().display());
            return Err(self.fail(what, error));
        }
        let seq = self.segments.last().expect("invariant: a segment").seq + 1;
        let path = segment_path(self.io.dir(), seq);
        let file = match self
            .io
            .create_segment(&path, self.options.segment_bytes_max)
        {
            Ok(file) => file,
            Err(error) => return Err(self.fail(format!("creating {}", path.display()), error)),
        };
        self.segments.push(Segment {
            seq,
            index_max: LogIndex::ZERO,
        });
        self.active = file;
        self.active_len_bytes = 0;
        Ok(())
    }

    /// Writes the buffered batch as one record with one write, then fdatasyncs it.
    fn write_batch(&mut self) -> Result<(), StorageError> {
        let record_bytes = self.batch.record_bytes() as u64;
        if self.active_len_bytes > 0
            && self.active_len_bytes + record_bytes > self.options.segment_bytes_max
        {
            self.roll()?;
        }
        let offset = self.active_len_bytes;
        let record = self.batch.finish(offset);
        let result = self
            .io
            .write_all_at(IoOp::SegmentWrite, &self.active, record, offset)
            .and_then(|()| self.io.sync_data(IoOp::SegmentSync, &self.active, offset));
        if let Err(error) = result {
            let what = format!("appending to {}", self.active_path().display());
            return Err(self.fail(what, error));
        }
        self.active_len_bytes += record_bytes;
        self.last_index_synced = self.last_index;
        if self.batch.has_snapshot() {
            // Replay drops everything before the snapshot item: older segments are dead.
            let older = self.segments.len() - 1;
            for segment in &mut self.segments[..older] {
                segment.index_max = LogIndex::ZERO;
            }
        }
        let active = self.segments.last_mut().expect("invariant: a segment");
        active.index_max = active.index_max.max(self.batch.index_max());
        self.batch.clear();
        Ok(())
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.io.dir())
            .field("segments", &self.segments)
            .field("active_len_bytes", &self.active_len_bytes)
            .field("last_index", &self.last_index)
            .field("hard_state", &self.hard_state)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl LogStore for Wal {
    /// Buffers `entries`; nothing reaches the kernel before `sync`.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_usable()?;
        check_append(self.last_index, self.floor, entries)?;
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let bytes = entries.iter().try_fold(0usize, |total, entry| {
            total.checked_add(BatchWriter::entry_bytes(entry))
        });
        if !bytes.is_some_and(|bytes| self.batch.fits(bytes)) {
            return Err(StorageError::Invalid(format!(
                "{} entries do not fit one WAL record (4 GiB): sync smaller batches",
                entries.len()
            )));
        }
        for entry in entries {
            self.batch.push_entry(entry);
        }
        self.last_index = last.index;
        self.last_term = last.term;
        Ok(())
    }

    /// Buffers the hard state; a term or vote change is durable when `sync` returns.
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.check_usable()?;
        check_hard_state(&self.hard_state, hard_state)?;
        self.hard_state = *hard_state;
        Ok(())
    }

    /// Writes the hard state file if term or vote changed, then the buffered entries (with
    /// the commit index) as one record, and fsyncs each. Does no I/O if neither is pending.
    fn sync(&mut self) -> Result<(), StorageError> {
        self.check_usable()?;
        check_sync(self.last_term, &self.hard_state)?;
        if (self.hard_state.term, self.hard_state.vote)
            != (self.hard_state_on_disk.term, self.hard_state_on_disk.vote)
        {
            // The file gets only the commit index already durable beside its entries, never
            // the new one: if the node crashes after this file and before the record below,
            // the log on disk may still hold a stale suffix that this group overwrites, and a
            // newer commit index would make those stale entries look committed on restart.
            // The new commit index rides in the record, atomically with its entries.
            let hard_state = HardState {
                commit: self.commit_recorded,
                ..self.hard_state
            };
            if let Err(error) = hard_state::write(&mut self.io, &hard_state) {
                return Err(self.fail("replacing the hard_state file".to_string(), error));
            }
            self.hard_state_on_disk = hard_state;
        }
        if self.batch.changes_log() {
            let commit = self.hard_state.commit;
            if commit > self.commit_recorded {
                self.batch.push_commit(commit);
            }
            self.write_batch()?;
            self.commit_recorded = self.commit_recorded.max(commit);
        }
        Ok(())
    }

    fn compact_to(&mut self, index: LogIndex) -> Result<(), StorageError> {
        Wal::compact_to(self, index).map(|deleted| {
            if deleted > 0 {
                log::debug!(
                    "wal {}: deleted {deleted} segments up to index {index}",
                    self.io.dir().display()
                );
            }
        })
    }

    /// Buffers a snapshot item; durable with the next `sync`.
    fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        self.check_usable()?;
        if snapshot.index() == LogIndex::ZERO {
            return Err(StorageError::Invalid(
                "installing a snapshot at index 0".to_string(),
            ));
        }
        if !self.batch.fits(BatchWriter::SNAPSHOT_ITEM_BYTES) {
            return Err(StorageError::Invalid(
                "the snapshot item does not fit the WAL record: sync first".to_string(),
            ));
        }
        self.batch.push_snapshot(snapshot);
        self.last_index = snapshot.index();
        self.last_term = snapshot.last.term;
        self.floor = snapshot.index();
        Ok(())
    }
}

/// The log as replay builds it, record by record.
struct Replay {
    entries: Vec<Entry>,
    commit: LogIndex,
    /// The oldest segments were deleted by compaction, so the log may start above index 1.
    compacted: bool,
    /// The last snapshot item replayed: the log restarted after it.
    snapshot: Option<SnapshotMeta>,
    /// How many snapshot items were replayed.
    snapshot_items: u64,
}

impl Replay {
    /// Applies one entry: it drops every entry at its index or above, then goes at the end.
    fn apply(&mut self, entry: Entry) -> Result<(), String> {
        if entry.index == LogIndex::ZERO {
            return Err("entry with index 0".to_string());
        }
        if let Some(snapshot) = self.snapshot {
            if entry.index <= snapshot.index() {
                return Err(format!(
                    "entry {} after the log restarted at snapshot {}",
                    entry.index, snapshot.last
                ));
            }
            if self.entries.is_empty() && entry.index != snapshot.index().next() {
                return Err(format!(
                    "entry {} leaves a gap after snapshot {}",
                    entry.index, snapshot.last
                ));
            }
        }
        match (self.entries.first(), self.entries.last()) {
            (Some(first), Some(last)) => {
                if entry.index > last.index.next() {
                    return Err(format!(
                        "entry {} leaves a gap after entry {}",
                        entry.index, last.index
                    ));
                }
                let keep = entry.index.0.saturating_sub(first.index.0);
                self.entries.truncate(keep as usize);
            }
            _ => {
                if !self.compacted && self.snapshot.is_none() && entry.index != LogIndex(1) {
                    return Err(format!("log starts at entry {} instead of 1", entry.index));
                }
            }
        }
        self.entries.push(entry);
        Ok(())
    }
}

/// Replays one segment into `replay`; returns the highest entry index it holds and its
/// length once any torn tail is cut.
fn recover_segment(
    io: &mut DirIo,
    path: &Path,
    is_last: bool,
    replay: &mut Replay,
) -> Result<(LogIndex, u64), StorageError> {
    let bytes = read_file(path)?;
    let corrupt =
        |offset: usize, reason: String| StorageError::corrupt(path, offset as u64, reason);
    let mut index_max = LogIndex::ZERO;
    let mut offset = 0;
    loop {
        match codec::read_record(&bytes, offset) {
            RecordRead::End => return Ok((index_max, offset as u64)),
            RecordRead::Valid { payload, end } => {
                let items = codec::decode_batch(payload, offset as u64)
                    .map_err(|reason| corrupt(offset, format!("undecodable record: {reason}")))?;
                for item in items {
                    match item {
                        Item::Entry(entry) => {
                            index_max = index_max.max(entry.index);
                            replay
                                .apply(entry)
                                .map_err(|reason| corrupt(offset, reason))?;
                        }
                        Item::Commit(commit) => replay.commit = replay.commit.max(commit),
                        Item::Snapshot(snapshot) => {
                            if snapshot.index() == LogIndex::ZERO {
                                return Err(corrupt(offset, "snapshot item at index 0".into()));
                            }
                            index_max = index_max.max(snapshot.index());
                            replay.entries.clear();
                            replay.snapshot = Some(snapshot);
                            replay.snapshot_items += 1;
                        }
                    }
                }
                offset = end;
            }
            RecordRead::Bad { reason } => {
                if !is_last {
                    return Err(corrupt(
                        offset,
                        format!("{reason}, in a segment that is not the last one"),
                    ));
                }
                // Checked first, and without a per-offset search: a fresh segment's
                // preallocated space is 64 MiB of zeros.
                let zeros_from = codec::zero_tail_start(&bytes);
                if zeros_from <= offset {
                    // Unused preallocated space: a clean end, kept for the next writes.
                    return Ok((index_max, offset as u64));
                }
                // A record needs non-zero bytes at its start, so none starts in the zeros.
                if let Some(next) =
                    (offset + 1..zeros_from).find(|at| codec::batch_record_starts_at(&bytes, *at))
                {
                    return Err(corrupt(
                        offset,
                        format!("{reason}, followed by a valid record at byte {next}"),
                    ));
                }
                cut_torn_tail(io, path, offset as u64, zeros_from as u64, &reason)?;
                return Ok((index_max, offset as u64));
            }
        }
    }
}

/// Truncates a torn tail: bytes of a write that a crash interrupted, never acknowledged.
/// `damaged_end` is where the zeros after it (if any) start. The cut drops the preallocated
/// space too; `Wal::open` reserves it again.
fn cut_torn_tail(
    io: &mut DirIo,
    path: &Path,
    offset: u64,
    damaged_end: u64,
    reason: &str,
) -> Result<(), StorageError> {
    log::warn!(
        "wal: cutting a torn tail of {} bytes off {} at byte {offset} ({reason}): a crash \
         interrupted a write that was never acknowledged",
        damaged_end - offset,
        path.display()
    );
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(context(path, "opening"))?;
    file.set_len(offset).map_err(context(path, "truncating"))?;
    io.sync_data(IoOp::SegmentSync, &file, offset)
        .map_err(context(path, "syncing"))?;
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, StorageError> {
    std::fs::read(path).map_err(context(path, "reading"))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{seq:020}{SEGMENT_SUFFIX}"))
}

/// The segments' sequence numbers, ascending; fails if one is missing in between.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut seqs = Vec::new();
    for dir_entry in std::fs::read_dir(dir).map_err(context(dir, "listing"))? {
        let dir_entry = dir_entry.map_err(context(dir, "listing"))?;
        let name = dir_entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(middle) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|rest| rest.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        match middle.parse::<u64>() {
            Ok(seq) if middle.len() == 20 && seq > 0 => seqs.push(seq),
            _ => log::warn!("wal {}: ignoring unexpected file {name}", dir.display()),
        }
    }
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(StorageError::corrupt(
                &segment_path(dir, pair[0] + 1),
                0,
                format!("segment missing between {} and {}", pair[0], pair[1]),
            ));
        }
    }
    Ok(seqs)
}

/// Creates the data dir if needed, and makes its name durable in the parent.
fn create_data_dir(dir: &Path, fsync: FsyncPolicy) -> Result<(), StorageError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(context(dir, "creating"))?;
    if fsync == FsyncPolicy::Always {
        if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|parent| parent.sync_all())
                .map_err(context(parent, "syncing"))?;
        }
    }
    Ok(())
}

/// Takes an exclusive flock on `<dir>/LOCK` and writes our pid into it for operators. The
/// lock goes with the file descriptor: it is released when the `Wal` is dropped or the
/// process dies, so no stale lock survives a crash. (flock is not reliable on NFS.)
fn lock_data_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(context(&path, "opening"))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the whole call.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(StorageError::Locked {
                dir: dir.display().to_string(),
                holder,
            });
        }
        return Err(context(&path, "locking")(error));
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(context(&path, "writing"))?;
    Ok(file)
}

/// Wraps an I/O error with the file and the action, so the operator sees which file failed.
fn context<'a>(path: &'a Path, action: &'a str) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |error| {
        StorageError::Io(io::Error::new(
            error.kind(),
            format!("{action} {}: {error}", path.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{EntryId, EntryPayload, NodeId};
    use crate::storage::conformance::{entries, entry};
    use crate::storage::io::tests::Fault;
    use bytes::Bytes;
    use std::os::unix::fs::FileExt;

    fn hard_state(term: u64, vote: Option<u64>, commit: u64) -> HardState {
        HardState {
            term: Term(term),
            vote: vote.map(NodeId),
            commit: LogIndex(commit),
        }
    }

    fn options(segment_bytes_max: u64) -> WalOptions {
        WalOptions {
            segment_bytes_max,
            fsync: FsyncPolicy::Always,
        }
    }

    /// Segments for the tests that damage a copy of a data dir: preallocated like the
    /// default 64 MiB ones, small enough to copy hundreds of times.
    const TEST_SEGMENT_BYTES: u64 = 64 * 1024;

    fn test_options() -> WalOptions {
        options(TEST_SEGMENT_BYTES)
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).expect("segment metadata").len()
    }

    /// Where the valid records of a segment end (the bytes after that are not records).
    fn records_end(path: &Path) -> u64 {
        let bytes = std::fs::read(path).expect("read segment");
        let mut offset = 0;
        while let RecordRead::Valid { end, .. } = codec::read_record(&bytes, offset) {
            offset = end;
        }
        offset as u64
    }

    /// Checks that `path` holds records up to `used_bytes` and only zeros after them, up to
    /// its preallocated size `preallocated_bytes`.
    fn assert_preallocated(path: &Path, used_bytes: u64, preallocated_bytes: u64, case: &str) {
        let bytes = std::fs::read(path).expect("read segment");
        assert_eq!(
            bytes.len() as u64,
            preallocated_bytes,
            "{case}: file length"
        );
        assert_eq!(records_end(path), used_bytes, "{case}: records end");
        assert!(
            bytes[used_bytes as usize..].iter().all(|byte| *byte == 0),
            "{case}: only zeros after the records"
        );
    }

    fn open(dir: &Path, options: &WalOptions) -> (Wal, InitialState) {
        match Wal::open(dir, options.clone()) {
            Ok(opened) => opened,
            Err(error) => panic!("open {}: {error}", dir.display()),
        }
    }

    fn write_batch(wal: &mut Wal, new_entries: &[Entry], state: Option<HardState>) {
        wal.append(new_entries).expect("append");
        if let Some(state) = state {
            wal.set_hard_state(&state).expect("set_hard_state");
        }
        wal.sync().expect("sync");
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("list the data dir")
            .map(|dir_entry| dir_entry.expect("a dir entry").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
            .collect();
        files.sort();
        files
    }

    fn copy_dir(from: &Path) -> tempfile::TempDir {
        let to = tempfile::tempdir().expect("a temp dir");
        for dir_entry in std::fs::read_dir(from).expect("list the template") {
            let path = dir_entry.expect("a dir entry").path();
            let name = path.file_name().expect("a file name");
            std::fs::copy(&path, to.path().join(name)).expect("copy a file");
        }
        to
    }

    /// A data dir holding three records (entries 1..=2, 3..=4, 5..=6) in one segment
    /// preallocated to `TEST_SEGMENT_BYTES`, and the byte offsets where each record ends.
    fn three_records() -> (tempfile::TempDir, [u64; 3]) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (mut wal, _) = open(dir.path(), &test_options());
        let mut offsets = [0; 3];
        write_batch(
            &mut wal,
            &entries(1, 1..=2),
            Some(hard_state(1, Some(0), 0)),
        );
        offsets[0] = wal.active_len_bytes;
        write_batch(
            &mut wal,
            &entries(1, 3..=4),
            Some(hard_state(1, Some(0), 2)),
        );
        offsets[1] = wal.active_len_bytes;
        write_batch(
            &mut wal,
            &entries(1, 5..=6),
            Some(hard_state(1, Some(0), 4)),
        );
        offsets[2] = wal.active_len_bytes;
        (dir, offsets)
    }

    /// Opens a damaged copy and checks that exactly entries 1..=4 survive, that the damage
    /// after `cut_to` is gone (zeros up to the re-preallocated size), that writing resumes
    /// at `cut_to`, and that the WAL takes writes again.
    fn assert_tail_cut(dir: &Path, cut_to: u64, case: &str) {
        let (mut wal, restored) = open(dir, &test_options());
        assert_eq!(restored.entries, entries(1, 1..=4), "{case}");
        assert_eq!(restored.hard_state, hard_state(1, Some(0), 2), "{case}");
        assert_eq!(
            wal.active_len_bytes, cut_to,
            "{case}: writing resumes there"
        );
        let segment = &segment_files(dir)[0];
        assert_preallocated(segment, cut_to, TEST_SEGMENT_BYTES, case);
        write_batch(&mut wal, &[entry(2, 5)], Some(hard_state(2, None, 4)));
        drop(wal);
        let (_, restored) = open(dir, &test_options());
        let mut expected = entries(1, 1..=4);
        expected.push(entry(2, 5));
        assert_eq!(restored.entries, expected, "{case}: after writing again");
    }

    #[test]
    fn round_trip_restores_everything() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut written = vec![
            Entry {
                term: Term(1),
                index: LogIndex(1),
                payload: EntryPayload::Noop,
            },
            Entry {
                term: Term(1),
                index: LogIndex(2),
                payload: EntryPayload::Command(Bytes::new()),
            },
            Entry {
                term: Term(1),
                index: LogIndex(3),
                payload: EntryPayload::Command(Bytes::from(vec![0xAB; 100_000])),
            },
        ];
        written.extend(entries(1, 4..=50));
        let (mut wal, _) = open(dir.path(), &WalOptions::default());
        write_batch(&mut wal, &written[..3], Some(hard_state(1, Some(2), 0)));
        write_batch(&mut wal, &written[3..], Some(hard_state(1, Some(2), 40)));
        drop(wal);
        let (_, restored) = open(dir.path(), &WalOptions::default());
        assert_eq!(restored.entries, written);
        assert_eq!(restored.hard_state, hard_state(1, Some(2), 40));
    }

    #[test]
    fn torn_tail_at_every_offset_of_the_last_record_is_cut() {
        let (template, [_, second_end, third_end]) = three_records();
        for cut in second_end..third_end {
            // The file ends inside the record (a segment that was not preallocated).
            let dir = copy_dir(template.path());
            let segment = &segment_files(dir.path())[0];
            let file = OpenOptions::new().write(true).open(segment).expect("open");
            file.set_len(cut).expect("truncate");
            drop(file);
            assert_tail_cut(dir.path(), second_end, &format!("file cut at byte {cut}"));
            // Zeros from inside the record on, up to the preallocated end: the pages of the
            // write that reached the disk before the crash, then unwritten space. (Unless
            // the record's bytes from there on were zeros anyway: then it is intact.)
            let dir = copy_dir(template.path());
            let segment = &segment_files(dir.path())[0];
            let original = std::fs::read(segment).expect("read segment");
            if original[cut as usize..third_end as usize]
                .iter()
                .all(|byte| *byte == 0)
            {
                continue;
            }
            let zeros = vec![0u8; (third_end - cut) as usize];
            let file = OpenOptions::new().write(true).open(segment).expect("open");
            file.write_all_at(&zeros, cut)
                .expect("zero the rest of the record");
            drop(file);
            assert_eq!(file_len(segment), TEST_SEGMENT_BYTES, "still preallocated");
            assert_tail_cut(dir.path(), second_end, &format!("zeros from byte {cut}"));
        }
    }

    #[test]
    fn garbage_after_the_last_record_is_cut() {
        let (template, [_, _, third_end]) = three_records();
        let tails: [(&str, Vec<u8>, u64); 4] = [
            (
                "random bytes",
                (0..300u32).map(|i| (i * 7 + 3) as u8).collect(),
                third_end,
            ),
            ("a lone length field", vec![40, 0, 0, 0], third_end),
            (
                "one byte at the end of the preallocated space",
                vec![1],
                TEST_SEGMENT_BYTES - 1,
            ),
            // The per-offset search for a valid record must not stop at the zeros.
            (
                "bytes past the preallocated space",
                vec![7; 16],
                TEST_SEGMENT_BYTES + 100,
            ),
        ];
        for (number, (name, tail, at)) in tails.iter().enumerate() {
            let case = format!("case {number} ({name})");
            let dir = copy_dir(template.path());
            let segment = &segment_files(dir.path())[0];
            let file = OpenOptions::new().write(true).open(segment).expect("open");
            file.write_all_at(tail, *at).expect("write garbage");
            drop(file);
            let (mut wal, restored) = open(dir.path(), &test_options());
            assert_eq!(restored.entries, entries(1, 1..=6), "{case}");
            assert_eq!(
                wal.active_len_bytes, third_end,
                "{case}: writing resumes there"
            );
            // Cut back, then preallocated again: zeros after the records.
            assert_preallocated(segment, third_end, TEST_SEGMENT_BYTES, &case);
            write_batch(&mut wal, &[entry(1, 7)], None);
            drop(wal);
            let (_, restored) = open(dir.path(), &test_options());
            assert_eq!(
                restored.entries,
                entries(1, 1..=7),
                "{case}: after writing again"
            );
        }
    }

    #[test]
    fn zeros_after_the_last_record_are_unused_space_and_kept() {
        let (template, [_, _, third_end]) = three_records();
        // Zeros past the preallocated size too: a crash after a larger preallocation (or a
        // size change) reached the disk but before any data did.
        let cases: [(&str, Option<u64>); 3] = [
            ("the preallocated space as written", None),
            (
                "zeros beyond the preallocated size",
                Some(TEST_SEGMENT_BYTES * 2),
            ),
            ("the file ends right after the records", Some(third_end)),
        ];
        for (number, (name, len)) in cases.iter().enumerate() {
            let case = format!("case {number} ({name})");
            let dir = copy_dir(template.path());
            let segment = &segment_files(dir.path())[0];
            if let Some(len) = len {
                let file = OpenOptions::new().write(true).open(segment).expect("open");
                file.set_len(*len).expect("resize");
            }
            let len_before = file_len(segment);
            let (mut wal, restored) = open(dir.path(), &test_options());
            assert_eq!(restored.entries, entries(1, 1..=6), "{case}");
            assert_eq!(
                wal.active_len_bytes, third_end,
                "{case}: writing resumes there"
            );
            // Nothing cut: the zeros are kept as space to write into (and a short file is
            // preallocated again).
            let expected_len = len_before.max(TEST_SEGMENT_BYTES);
            assert_preallocated(segment, third_end, expected_len, &case);
            write_batch(&mut wal, &[entry(1, 7)], None);
            drop(wal);
            let (_, restored) = open(dir.path(), &test_options());
            assert_eq!(
                restored.entries,
                entries(1, 1..=7),
                "{case}: after writing again"
            );
            assert_eq!(file_len(segment), expected_len, "{case}: file length");
        }
    }

    fn flip_bit(path: &Path, byte: u64) {
        let mut bytes = std::fs::read(path).expect("read segment");
        bytes[byte as usize] ^= 1 << (byte % 8);
        std::fs::write(path, bytes).expect("write segment");
    }

    #[test]
    fn flipped_bit_in_the_last_record_is_cut() {
        let (template, [_, second_end, third_end]) = three_records();
        for byte in second_end..third_end {
            let dir = copy_dir(template.path());
            flip_bit(&segment_files(dir.path())[0], byte);
            assert_tail_cut(
                dir.path(),
                second_end,
                &format!("bit flipped in byte {byte}"),
            );
        }
    }

    #[test]
    fn flipped_bit_in_an_earlier_record_fails_open_as_corrupt() {
        let (template, [first_end, second_end, _]) = three_records();
        for byte in first_end..second_end {
            let dir = copy_dir(template.path());
            let segment = segment_files(dir.path())[0].clone();
            flip_bit(&segment, byte);
            match Wal::open(dir.path(), test_options()) {
                Err(StorageError::Corrupt {
                    file: named,
                    offset,
                    reason,
                }) => {
                    assert_eq!(named, segment.display().to_string(), "byte {byte}");
                    assert_eq!(offset, first_end, "byte {byte}: offset of the bad record");
                    assert!(
                        reason.contains("delete its data dir"),
                        "byte {byte}: {reason}"
                    );
                }
                Err(other) => panic!("byte {byte}: expected Corrupt, got {other}"),
                Ok((_, restored)) => panic!(
                    "byte {byte}: opened with {} entries instead of failing",
                    restored.entries.len()
                ),
            }
            // Nothing was cut: the operator still has the evidence.
            let len = std::fs::metadata(&segment).expect("metadata").len();
            let template_len = std::fs::metadata(&segment_files(template.path())[0])
                .expect("metadata")
                .len();
            assert_eq!(len, template_len, "byte {byte}: file left untouched");
        }
    }

    #[test]
    fn damage_in_a_segment_that_is_not_the_last_fails_open_as_corrupt() {
        // segment_bytes_max 1: every record goes into a segment of its own. A finished
        // segment is trimmed to its records, so its last byte is its last record's.
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 3] = [
            ("last byte flipped", |path| {
                flip_bit(path, records_end(path) - 1);
            }),
            ("last byte cut", |path| {
                let file = OpenOptions::new().write(true).open(path).expect("open");
                file.set_len(records_end(path) - 1).expect("truncate");
            }),
            // Only the last segment may end in unused (preallocated) zeros.
            ("zeros after the last record", |path| {
                let file = OpenOptions::new().write(true).open(path).expect("open");
                file.set_len(records_end(path) + 4096).expect("extend");
            }),
        ];
        for (number, (name, damage)) in damages.iter().enumerate() {
            let dir = tempfile::tempdir().expect("a temp dir");
            let (mut wal, _) = open(dir.path(), &options(1));
            write_batch(&mut wal, &entries(1, 1..=2), Some(hard_state(1, None, 0)));
            write_batch(&mut wal, &entries(1, 3..=4), None);
            write_batch(&mut wal, &entries(1, 5..=6), None);
            drop(wal);
            let segments = segment_files(dir.path());
            assert_eq!(segments.len(), 3, "case {number} ({name})");
            let records_end_before = records_end(&segments[1]);
            assert_eq!(
                file_len(&segments[1]),
                records_end_before,
                "case {number}: trimmed"
            );
            damage(&segments[1]);
            let expected_offset = if name.starts_with("zeros") {
                records_end_before
            } else {
                0
            };
            match Wal::open(dir.path(), options(1)) {
                Err(StorageError::Corrupt { file, offset, .. }) => {
                    assert_eq!(file, segments[1].display().to_string(), "case {number}");
                    assert_eq!(offset, expected_offset, "case {number} ({name})");
                }
                other => panic!("case {number} ({name}): expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn segments_roll_and_recover() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let segment_bytes_max = 300;
        let (mut wal, _) = open(dir.path(), &options(segment_bytes_max));
        wal.set_hard_state(&hard_state(1, None, 0))
            .expect("set_hard_state");
        for first in (1..=60).step_by(3) {
            write_batch(&mut wal, &entries(1, first..=first + 2), None);
        }
        drop(wal);
        let segments = segment_files(dir.path());
        assert!(segments.len() >= 5, "only {} segments", segments.len());
        let (last, finished) = segments.split_last().expect("segments");
        for segment in finished {
            // Trimmed at the roll: no preallocated zeros left after the records.
            let len = file_len(segment);
            assert_eq!(len, records_end(segment), "{} trimmed", segment.display());
            assert!(
                len <= segment_bytes_max,
                "{} is {len} bytes",
                segment.display()
            );
        }
        let last_used = records_end(last);
        assert_preallocated(last, last_used, segment_bytes_max, "the active segment");
        let (_, restored) = open(dir.path(), &options(segment_bytes_max));
        assert_eq!(restored.entries, entries(1, 1..=60));
    }

    #[test]
    fn a_fresh_segment_is_preallocated_and_reopen_appends_after_its_records() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (mut wal, _) = open(dir.path(), &test_options());
        let segment = segment_files(dir.path())[0].clone();
        assert_preallocated(&segment, 0, TEST_SEGMENT_BYTES, "fresh");
        wal.set_hard_state(&hard_state(1, None, 0))
            .expect("set_hard_state");
        let mut last = 0;
        for round in 0..3 {
            let case = format!("round {round}");
            for _ in 0..3 {
                write_batch(&mut wal, &entries(1, last + 1..=last + 2), None);
                last += 2;
            }
            let used = wal.active_len_bytes;
            assert_preallocated(&segment, used, TEST_SEGMENT_BYTES, &case);
            drop(wal);
            let restored;
            (wal, restored) = open(dir.path(), &test_options());
            assert_eq!(restored.entries, entries(1, 1..=last), "{case}");
            assert_eq!(
                wal.active_len_bytes, used,
                "{case}: resumes after the records"
            );
            assert_eq!(
                segment_files(dir.path()),
                std::slice::from_ref(&segment),
                "{case}"
            );
        }
        drop(wal);
        let (_, restored) = open(dir.path(), &test_options());
        assert_eq!(restored.entries, entries(1, 1..=18));
    }

    #[test]
    fn a_failed_preallocation_falls_back_to_growing_the_file() {
        let dir = tempfile::tempdir().expect("a temp dir");
        // Each record of 30 entries is about 800 bytes: the third one starts segment 2.
        let wal_options = options(2000);
        let (mut wal, _) = open(dir.path(), &wal_options);
        wal.set_hard_state(&hard_state(1, None, 0))
            .expect("set_hard_state");
        write_batch(&mut wal, &entries(1, 1..=30), None);
        write_batch(&mut wal, &entries(1, 31..=60), None);
        assert_eq!(segment_files(dir.path()).len(), 1);
        // The file system runs out of space part way through reserving segment 2.
        wal.io.faults.inject(Fault {
            op: IoOp::SegmentPreallocate,
            skip: 0,
            partial_bytes: Some(100),
        });
        write_batch(&mut wal, &entries(1, 61..=90), None);
        write_batch(&mut wal, &entries(1, 91..=92), None);
        assert!(!wal.is_failed());
        let segments = segment_files(dir.path());
        assert_eq!(segments.len(), 2);
        // Not preallocated: the file is exactly its records (the partial reservation undone).
        assert_eq!(file_len(&segments[1]), records_end(&segments[1]));
        assert_eq!(file_len(&segments[1]), wal.active_len_bytes);
        drop(wal);
        let (mut wal, restored) = open(dir.path(), &wal_options);
        assert_eq!(restored.entries, entries(1, 1..=92));
        // Reopening reserves the space this time.
        let used = wal.active_len_bytes;
        assert_preallocated(&segments[1], used, 2000, "after reopening");
        write_batch(&mut wal, &entries(1, 93..=93), None);
        drop(wal);
        let (_, restored) = open(dir.path(), &wal_options);
        assert_eq!(restored.entries, entries(1, 1..=93));
    }

    #[test]
    fn overwrite_across_segment_boundaries_survives_reopen() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let wal_options = options(200);
        let (mut wal, _) = open(dir.path(), &wal_options);
        wal.set_hard_state(&hard_state(1, None, 0))
            .expect("set_hard_state");
        for index in 1..=20 {
            write_batch(&mut wal, &[entry(1, index)], None);
        }
        let segments_before = segment_files(dir.path()).len();
        assert!(segments_before >= 3, "only {segments_before} segments");
        // Index 3 lives in the first segment; the dropped suffix spans all of them.
        write_batch(&mut wal, &entries(2, 3..=5), Some(hard_state(2, None, 2)));
        drop(wal);
        let (mut wal, restored) = open(dir.path(), &wal_options);
        let mut expected = entries(1, 1..=2);
        expected.extend(entries(2, 3..=5));
        assert_eq!(restored.entries, expected);
        write_batch(&mut wal, &[entry(2, 6)], None);
        drop(wal);
        let (_, restored) = open(dir.path(), &wal_options);
        expected.push(entry(2, 6));
        assert_eq!(restored.entries, expected, "after appending again");
    }

    #[test]
    fn a_crash_between_the_hard_state_file_and_the_record_keeps_commit_off_a_stale_suffix() {
        // A follower holds 1..=5@1, committed up to 5, and a stale 6@1. A new leader's append
        // overwrites 6 with 6@2 and 7@2 and says commit 7; the term change is in the same
        // group, so the hard state file is written first. The node crashes before the record
        // (found by the pipelined simulation's mid-sync crash point, helper report).
        let dir = tempfile::tempdir().expect("a temp dir");
        let wal_options = options(1 << 20);
        let (mut wal, _) = open(dir.path(), &wal_options);
        write_batch(&mut wal, &entries(1, 1..=6), Some(hard_state(1, None, 5)));
        wal.io.faults.inject(Fault {
            op: IoOp::SegmentWrite,
            skip: 0,
            partial_bytes: None,
        });
        wal.append(&entries(2, 6..=7)).expect("append only buffers");
        wal.set_hard_state(&hard_state(2, None, 7))
            .expect("set_hard_state only buffers");
        assert!(
            wal.sync().is_err(),
            "the record write fails after the hard state file was replaced"
        );
        drop(wal);

        let (_, restored) = open(dir.path(), &wal_options);
        assert_eq!(
            restored.hard_state.term,
            Term(2),
            "the term change is durable"
        );
        assert_eq!(
            restored.entries,
            entries(1, 1..=6),
            "the group's entries are not"
        );
        assert!(
            restored.hard_state.commit <= LogIndex(5),
            "commit {} would make the stale 6@1 look committed",
            restored.hard_state.commit
        );
    }

    #[test]
    fn injected_failures_stop_the_wal_and_reopen_recovers_the_synced_prefix() {
        struct Case {
            name: &'static str,
            fault: Fault,
            /// Whether the failing batch changes the term (so the hard state file is written).
            term_change: bool,
        }
        let fault = |op, partial_bytes| Fault {
            op,
            skip: 0,
            partial_bytes,
        };
        let cases = [
            Case {
                name: "disk full before the first byte",
                fault: fault(IoOp::SegmentWrite, None),
                term_change: false,
            },
            Case {
                name: "disk full in the middle of the record",
                fault: fault(IoOp::SegmentWrite, Some(30)),
                term_change: false,
            },
            Case {
                name: "fdatasync of the segment fails",
                fault: fault(IoOp::SegmentSync, None),
                term_change: false,
            },
            Case {
                name: "creating the next segment fails",
                fault: fault(IoOp::SegmentCreate, None),
                term_change: false,
            },
            Case {
                name: "fsync of the dir after creating a segment fails",
                fault: fault(IoOp::DirSync, None),
                term_change: false,
            },
            Case {
                name: "trimming the finished segment fails",
                fault: fault(IoOp::SegmentTrim, None),
                term_change: false,
            },
            Case {
                name: "disk full writing the hard state",
                fault: fault(IoOp::HardStateWrite, Some(5)),
                term_change: true,
            },
            Case {
                name: "fsync of the hard state fails",
                fault: fault(IoOp::HardStateSync, None),
                term_change: true,
            },
            Case {
                name: "renaming the hard state fails",
                fault: fault(IoOp::HardStateRename, None),
                term_change: true,
            },
        ];
        for (number, case) in cases.iter().enumerate() {
            let name = format!("case {number} ({})", case.name);
            let dir = tempfile::tempdir().expect("a temp dir");
            // segment_bytes_max 1: the failing batch starts a new segment.
            let wal_options = options(1);
            let (mut wal, _) = open(dir.path(), &wal_options);
            write_batch(
                &mut wal,
                &entries(1, 1..=3),
                Some(hard_state(1, Some(0), 1)),
            );
            wal.io.faults.inject(case.fault);
            wal.append(&entries(1, 4..=6)).expect("append only buffers");
            let state = if case.term_change {
                hard_state(2, None, 3)
            } else {
                hard_state(1, Some(0), 3)
            };
            wal.set_hard_state(&state)
                .expect("set_hard_state only buffers");
            match wal.sync() {
                Err(StorageError::Io(_)) => {}
                other => panic!("{name}: expected an I/O error, got {other:?}"),
            }
            assert!(wal.is_failed(), "{name}");
            let refusals = [
                ("append", wal.append(&entries(1, 7..=7))),
                (
                    "set_hard_state",
                    wal.set_hard_state(&hard_state(3, None, 3)),
                ),
                ("sync", wal.sync()),
                ("compact_to", wal.compact_to(LogIndex(1)).map(|_| ())),
            ];
            for (call, result) in refusals {
                assert!(
                    matches!(result, Err(StorageError::Failed(_))),
                    "{name}: {call} after the failure gave {result:?}"
                );
            }
            drop(wal);
            let (mut wal, restored) = open(dir.path(), &wal_options);
            assert_eq!(restored.entries, entries(1, 1..=3), "{name}");
            assert_eq!(restored.hard_state, hard_state(1, Some(0), 1), "{name}");
            write_batch(&mut wal, &entries(2, 4..=4), Some(hard_state(2, None, 3)));
            drop(wal);
            let (_, restored) = open(dir.path(), &wal_options);
            let mut expected = entries(1, 1..=3);
            expected.push(entry(2, 4));
            assert_eq!(
                restored.entries, expected,
                "{name}: writable after reopening"
            );
        }
    }

    #[test]
    fn one_write_and_one_fsync_per_batch() {
        for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
            let dir = tempfile::tempdir().expect("a temp dir");
            let wal_options = WalOptions {
                fsync,
                ..WalOptions::default()
            };
            let (mut wal, _) = open(dir.path(), &wal_options);
            let dir_syncs = wal.io.faults.count(IoOp::DirSync);
            write_batch(&mut wal, &[], Some(hard_state(1, None, 0)));
            let hard_state_syncs = wal.io.faults.count(IoOp::HardStateSync);
            if fsync == FsyncPolicy::Always {
                // Temp file fsynced, renamed, directory fsynced; no segment touched.
                assert_eq!(hard_state_syncs, 1, "hard state file syncs");
                assert_eq!(
                    wal.io.faults.count(IoOp::DirSync),
                    dir_syncs + 1,
                    "dir syncs"
                );
                assert_eq!(wal.io.faults.count(IoOp::SegmentWrite), 0, "segment writes");
            }
            for batch in 0..10u64 {
                let first = batch * 16 + 1;
                // Several appends and a commit change, still one record.
                wal.append(&entries(1, first..=first + 7)).expect("append");
                wal.append(&entries(1, first + 8..=first + 15))
                    .expect("append");
                wal.set_hard_state(&hard_state(1, None, first))
                    .expect("set_hard_state");
                wal.sync().expect("sync");
            }
            // A commit-only change costs no I/O at all.
            wal.set_hard_state(&hard_state(1, None, 160))
                .expect("set_hard_state");
            wal.sync().expect("sync");
            let counts = &wal.io.faults;
            assert_eq!(counts.count(IoOp::SegmentWrite), 10, "{fsync:?}: writes");
            let expected_syncs = if fsync == FsyncPolicy::Always { 10 } else { 0 };
            assert_eq!(counts.count(IoOp::SegmentSync), expected_syncs, "{fsync:?}");
            assert_eq!(
                counts.count(IoOp::HardStateSync),
                hard_state_syncs,
                "{fsync:?}"
            );
            if fsync == FsyncPolicy::Never {
                assert_eq!(hard_state_syncs + counts.count(IoOp::DirSync), 0, "Never");
            }
            drop(wal);
            let (_, restored) = open(dir.path(), &wal_options);
            assert_eq!(restored.entries, entries(1, 1..=160), "{fsync:?}");
        }
    }

    #[test]
    fn second_open_of_a_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (wal, _) = open(dir.path(), &WalOptions::default());
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(error @ StorageError::Locked { .. }) => {
                let message = error.to_string();
                let pid = std::process::id().to_string();
                assert!(message.contains(&pid), "{message}");
            }
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        drop(wal);
        open(dir.path(), &WalOptions::default());
    }

    #[test]
    fn stale_hard_state_temp_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (mut wal, _) = open(dir.path(), &WalOptions::default());
        write_batch(
            &mut wal,
            &entries(1, 1..=1),
            Some(hard_state(1, Some(1), 0)),
        );
        drop(wal);
        let temp = dir.path().join("hard_state.tmp");
        std::fs::write(&temp, codec::encode_hard_state(&hard_state(9, None, 0))).expect("write");
        let (_, restored) = open(dir.path(), &WalOptions::default());
        assert_eq!(restored.hard_state, hard_state(1, Some(1), 0));
        assert!(!temp.exists());
    }

    #[test]
    fn corrupt_hard_state_fails_open() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (mut wal, _) = open(dir.path(), &WalOptions::default());
        write_batch(&mut wal, &[], Some(hard_state(1, Some(1), 0)));
        drop(wal);
        flip_bit(&dir.path().join(hard_state::FILE_NAME), 12);
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(StorageError::Corrupt { file, .. }) => {
                assert!(file.ends_with("hard_state"), "{file}")
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn hard_state_behind_the_log_fails_open() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (mut wal, _) = open(dir.path(), &WalOptions::default());
        write_batch(
            &mut wal,
            &entries(2, 1..=2),
            Some(hard_state(2, Some(1), 0)),
        );
        drop(wal);
        // As if the hard state file had been rolled back to an older copy.
        let older = codec::encode_hard_state(&hard_state(1, Some(1), 0));
        std::fs::write(dir.path().join(hard_state::FILE_NAME), older).expect("write");
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(StorageError::Corrupt { file, reason, .. }) => {
                assert!(file.ends_with("hard_state"), "{file}");
                assert!(reason.contains("term 2"), "{reason}");
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn compact_to_deletes_only_whole_segments_below_the_index() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let wal_options = options(1);
        let (mut wal, _) = open(dir.path(), &wal_options);
        wal.set_hard_state(&hard_state(1, None, 0))
            .expect("set_hard_state");
        for first in (1..=9).step_by(2) {
            write_batch(&mut wal, &entries(1, first..=first + 1), None);
        }
        assert_eq!(segment_files(dir.path()).len(), 5);
        // Segments hold 1-2, 3-4, 5-6, 7-8, 9-10: only the first two are wholly at or
        // below 5.
        assert_eq!(wal.compact_to(LogIndex(5)).expect("compact"), 2);
        assert_eq!(segment_files(dir.path()).len(), 3);
        write_batch(&mut wal, &entries(2, 7..=7), Some(hard_state(2, None, 5)));
        drop(wal);
        let (mut wal, restored) = open(dir.path(), &wal_options);
        let mut expected = entries(1, 5..=6);
        expected.push(entry(2, 7));
        assert_eq!(restored.entries, expected);
        // Segments now hold 5-6, 7-8, 9-10, 7'. The one with 7-8 may hold the last entry
        // (it does not, but index_max 8 >= last index 7 cannot tell), so it stays.
        assert_eq!(wal.compact_to(LogIndex(100)).expect("compact"), 1);
        drop(wal);
        let (_, restored) = open(dir.path(), &wal_options);
        assert_eq!(
            restored.entries,
            vec![entry(2, 7)],
            "only what compaction kept"
        );
    }

    #[test]
    fn segments_before_an_installed_snapshot_are_deleted_by_compaction() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let wal_options = options(1);
        let (mut wal, _) = open(dir.path(), &wal_options);
        wal.set_hard_state(&hard_state(1, None, 0))
            .expect("set_hard_state");
        for first in (1..=9).step_by(2) {
            write_batch(&mut wal, &entries(1, first..=first + 1), None);
        }
        let snapshot = SnapshotMeta {
            last: EntryId::new(Term(2), LogIndex(50)),
        };
        wal.install_snapshot(snapshot).expect("install");
        write_batch(&mut wal, &[], Some(hard_state(2, None, 50)));
        assert_eq!(segment_files(dir.path()).len(), 6);
        // Segments 1-5 hold only entries the snapshot item made dead, whatever their index.
        assert_eq!(wal.compact_to(LogIndex(1)).expect("compact"), 5);
        drop(wal);
        let (mut wal, restored) = open(dir.path(), &wal_options);
        assert_eq!(restored.snapshot, snapshot);
        assert_eq!(restored.entries, Vec::<Entry>::new());
        assert_eq!(restored.hard_state.commit, LogIndex(50));
        write_batch(&mut wal, &entries(2, 51..=52), None);
        // Now the segment with the snapshot item goes too: the log starts after it.
        assert_eq!(wal.compact_to(LogIndex(50)).expect("compact"), 1);
        drop(wal);
        let (mut wal, restored) = open(dir.path(), &wal_options);
        assert_eq!(
            restored.snapshot,
            SnapshotMeta::default(),
            "its record is gone"
        );
        assert_eq!(restored.entries, entries(2, 51..=52));
        assert!(
            matches!(
                wal.append(&entries(2, 50..=50)),
                Err(StorageError::Invalid(_))
            ),
            "appends into the compacted prefix are refused after a restart"
        );
    }

    #[test]
    fn an_entry_that_leaves_a_gap_after_a_snapshot_item_is_corruption() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (wal, _) = open(dir.path(), &WalOptions::default());
        let mut batch = BatchWriter::new();
        batch.push_snapshot(SnapshotMeta {
            last: EntryId::new(Term(1), LogIndex(10)),
        });
        batch.push_entry(&entry(1, 12));
        let record = batch.finish(0).to_vec();
        wal.active
            .write_all_at(&record, 0)
            .expect("write a record by hand");
        drop(wal);
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(StorageError::Corrupt { reason, .. }) => {
                assert!(reason.contains("gap after snapshot"), "{reason}")
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn missing_segment_fails_open_as_corrupt() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (mut wal, _) = open(dir.path(), &options(1));
        wal.set_hard_state(&hard_state(1, None, 0))
            .expect("set_hard_state");
        for index in 1..=3 {
            write_batch(&mut wal, &[entry(1, index)], None);
        }
        drop(wal);
        let segments = segment_files(dir.path());
        std::fs::remove_file(&segments[1]).expect("remove");
        match Wal::open(dir.path(), options(1)) {
            Err(StorageError::Corrupt { file, .. }) => {
                assert_eq!(file, segments[1].display().to_string())
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
    }

    /// Appends/s and bytes/s for 100-byte commands, `FsyncPolicy::Always`. Run with
    /// `cargo test --release --lib storage::wal::tests::measure -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_append_throughput() {
        let payload = Bytes::from(vec![7u8; 100]);
        for batch_size in [1u64, 16, 256] {
            let dir = tempfile::tempdir().expect("a temp dir");
            let (mut wal, _) = open(dir.path(), &WalOptions::default());
            wal.set_hard_state(&hard_state(1, None, 0))
                .expect("set_hard_state");
            let batches = (4000 / batch_size).clamp(40, 1000);
            let started = std::time::Instant::now();
            let mut next = 1;
            for _ in 0..batches {
                let batch: Vec<Entry> = (next..next + batch_size)
                    .map(|index| Entry {
                        term: Term(1),
                        index: LogIndex(index),
                        payload: EntryPayload::Command(payload.clone()),
                    })
                    .collect();
                next += batch_size;
                wal.append(&batch).expect("append");
                wal.sync().expect("sync");
            }
            let seconds = started.elapsed().as_secs_f64();
            let appended = (batches * batch_size) as f64;
            println!(
                "batch {batch_size:>3}: {:>9.0} entries/s {:>7.2} MB/s of payload, {:>6.0} syncs/s",
                appended / seconds,
                appended * 100.0 / seconds / 1e6,
                batches as f64 / seconds
            );
        }
    }
}
