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
//! fdatasync also write the inode (its new size), a measurable cost when every acknowledged
//! PUT waits for one fdatasync on the leader and one on a follower (figures in
//! docs/PERFORMANCE.md, "Preallocated WAL segments"). A record larger than the space left
//! (a huge batch alone in its segment) simply grows the file. Preallocation is best effort:
//! where it fails (no fallocate support, a full disk) the WAL writes as if it did not exist,
//! and a full disk fails at the write or fsync. Opening the data dir
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
//! Segments without a zero tail (a dir written without preallocation) open the same way. A
//! reader that does not know about preallocation takes the zeros for a torn tail and cuts
//! them with a warning: nothing is lost.
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
//! Batching is what buys throughput: the fsync dominates the cost of a `sync` until batches
//! reach hundreds of entries, so the node hands the WAL everything that queued up during
//! the previous fsync (figures from `measure_append_throughput` in docs/PERFORMANCE.md,
//! "WAL append throughput by batch size").
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

/// How a [`Wal`] writes: segment size and fsync policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment starts when a record would take the active one past this size.
    pub segment_bytes_max: u64,
    /// Whether `sync` (and every file creation, rename and deletion) reaches the disk.
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
            // without preallocation or a larger --wal-segment-bytes leave the file
            // short of its preallocated size.
            if io.preallocate(&path, &file, active_len_bytes, options.segment_bytes_max) {
                io.sync_data(IoOp::SegmentSync, &file, active_len_bytes)
                    .map_err(context(&path, "syncing"))?;
            }
            file
        };

        let base = replay
            .snapshot
            .as_ref()
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

    /// The data dir this WAL holds (and has locked).
    pub fn dir(&self) -> &Path {
        self.io.dir()
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
        self.batch.push_snapshot(&snapshot);
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
        if let Some(snapshot) = &self.snapshot {
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
mod tests;
