//! The snapshot lifecycle of one node: take, write, load, install, retain, discard.
//!
//! Why it exists: snapshots bound the log and the data dir, and a follower far behind
//! catches up through one; the work is slow (serializing or decoding a queue of a million
//! messages takes a fraction of a second, the file is fsynced), so it runs on helper threads
//! while the loop keeps stepping the core. This module owns those threads, the snapshot
//! files in the data dir, and the bookkeeping between the loop and them; the loop keeps
//! only the calls into the core and the WAL thread.
//!
//! - *Take*: after applying, once `--snapshot-entries`/`--snapshot-bytes` were applied since
//!   the last one and the log since it has grown to a share of its size ([`snapshot_due`]:
//!   a large queue is not rewritten whole for a small change), clone the queue
//!   (`Queue::snapshot_view`, O(segments): the only pause the loop sees) and hand the copy
//!   to a writer thread, one snapshot at a time.
//! - *Write*: the writer thread writes the file durably and reports
//!   [`Event::SnapshotSaved`]; the loop then tells the core (`on_snapshot_saved`, compacting
//!   the in-memory log up to `--snapshot-log-margin` entries before the snapshot) and
//!   compacts the WAL back to the *previous* snapshot, so a damaged newest file still has a
//!   fallback ([`Compaction`]).
//! - *Load*: an `InstallSnapshot` from the leader arrives only once its file is in the data
//!   dir (the transport saw to that). Unless the core can take it without data (it says so:
//!   `Core::snapshot_needs_data`), a loader thread decodes the file first
//!   ([`Event::SnapshotLoaded`]), then the message is stepped; one load at a time, the
//!   newest message that arrived meanwhile waits.
//! - *Install*: when the core's `Ready` says to install it, the received file becomes this
//!   node's newest snapshot (renamed, made durable) and its queue replaces the loop's, before
//!   the WAL records, in that `Ready`'s batch, that the log restarts after it (`recovery`
//!   handles a crash in between).
//! - *Retain* the newest [`SNAPSHOTS_KEPT`] files; *discard* a received file the core did
//!   not install.
//!
//! Measurements of the pause, the write and the load are in docs/PERFORMANCE.md,
//! "Snapshots: loop pause, write and load".
//!
//! What it must not do: change the core, the queue or the WAL itself; the loop does, with
//! what these methods return.

use super::event::{Event, LoadedSnapshot, SnapshotSaved};
use crate::config::SnapshotConfig;
use crate::queue::{Queue, QueueConfig};
use crate::raft::{EntryId, LogIndex, Message, MessageBody, NodeId, SnapshotMeta};
use crate::storage::snapshot_file;
use crate::storage::{FsyncPolicy, StorageError};
use crossbeam_channel::Sender;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Snapshot files kept in the data dir: the newest, and one to fall back on.
pub(super) const SNAPSHOTS_KEPT: usize = 2;

/// What a durable snapshot of this node's own lets the loop compact.
pub(super) struct Compaction {
    pub(super) snapshot: SnapshotMeta,
    /// For `Core::on_snapshot_saved`: the in-memory log keeps the margin before it.
    pub(super) core_to: LogIndex,
    /// For the WAL (`LogStore::compact_to`, through the WAL thread): back to the previous
    /// snapshot; zero: nothing to compact.
    pub(super) wal_to: LogIndex,
    len_bytes: u64,
    write_duration: Duration,
}

/// Snapshots from this size on are held back until the log since them has grown to
/// `1 / SNAPSHOT_GROWTH_DIVISOR` of their size: below it a snapshot is cheap to rewrite.
pub(super) const SNAPSHOT_GROWTH_FROM_BYTES: u64 = 16 * 1024 * 1024;
pub(super) const SNAPSHOT_GROWTH_DIVISOR: u64 = 4;

/// Whether a snapshot is due after `entries_since` entries of `bytes_since` bytes were
/// applied since the last one, whose file (written by this node) held `last_bytes` (0: none
/// written yet).
///
/// The count and byte thresholds alone rewrite the whole queue every `entries_max`
/// entries: with millions of messages queued that is hundreds of megabytes written for a few
/// new ones (seen: 286 MB every 4 s at 25,000 PUTs/s, throughput down 12 %). So, as the Raft
/// dissertation (§5.1.1) suggests, a large snapshot also waits until the log has grown to a
/// quarter of its size: every byte of log then costs at most four bytes of snapshot. The
/// wait is capped at four `log_bytes_max`, which bounds the log kept in memory and replayed
/// on restart.
pub(super) fn snapshot_due(
    entries_since: u64,
    bytes_since: u64,
    thresholds: &SnapshotConfig,
    last_bytes: u64,
) -> bool {
    let threshold_reached =
        entries_since >= thresholds.entries_max || bytes_since >= thresholds.log_bytes_max;
    let held_back = last_bytes >= SNAPSHOT_GROWTH_FROM_BYTES
        && bytes_since
            < (last_bytes / SNAPSHOT_GROWTH_DIVISOR)
                .min(thresholds.log_bytes_max.saturating_mul(4));
    threshold_reached && !held_back
}

/// The node's snapshots and the threads that write and load them.
pub(super) struct Snapshots {
    /// For panic messages.
    node: NodeId,
    data_dir: PathBuf,
    fsync: FsyncPolicy,
    thresholds: SnapshotConfig,
    /// The config a loaded queue is decoded with.
    queue_config: QueueConfig,
    /// For the writer and loader threads to report back.
    events: Sender<Event>,
    /// The newest snapshot this node holds, taken or installed.
    newest: SnapshotMeta,
    /// The one before it: the WAL keeps the log back to it.
    previous: SnapshotMeta,
    /// The size of the newest snapshot file this node wrote (0: none yet).
    newest_written_bytes: u64,
    /// Entries applied, and their bytes, since the last snapshot was started.
    entries_since: u64,
    bytes_since: u64,
    /// A snapshot being written on the writer thread.
    writing: Option<SnapshotMeta>,
    /// A received snapshot being decoded on the loader thread.
    loading: Option<SnapshotMeta>,
    /// The newest `InstallSnapshot` that arrived while another was loading: handled next.
    waiting: Option<Message>,
    /// A received snapshot, decoded, for the core's next `Ready::snapshot`.
    loaded: Option<(SnapshotMeta, Queue)>,
    /// The longest pause taking a snapshot view caused, for the logs.
    view_pause_max: Duration,
}

/// Where the snapshots live and when to take one.
pub(super) struct SnapshotSettings {
    pub(super) node: NodeId,
    pub(super) data_dir: PathBuf,
    pub(super) fsync: FsyncPolicy,
    pub(super) thresholds: SnapshotConfig,
    pub(super) queue_config: QueueConfig,
    pub(super) events: Sender<Event>,
}

impl Snapshots {
    /// `newest`: the snapshot the queue was loaded from (`0@0`: none); `previous`: the file
    /// before it, if any.
    pub(super) fn new(
        settings: SnapshotSettings,
        newest: SnapshotMeta,
        previous: SnapshotMeta,
    ) -> Snapshots {
        let SnapshotSettings {
            node,
            data_dir,
            fsync,
            thresholds,
            queue_config,
            events,
        } = settings;
        Snapshots {
            node,
            data_dir,
            fsync,
            thresholds,
            queue_config,
            events,
            newest,
            previous,
            newest_written_bytes: 0,
            entries_since: 0,
            bytes_since: 0,
            writing: None,
            loading: None,
            waiting: None,
            loaded: None,
            view_pause_max: Duration::ZERO,
        }
    }

    /// An entry of `bytes` was applied: counts toward the next snapshot.
    pub(super) fn note_applied(&mut self, bytes: usize) {
        self.entries_since += 1;
        self.bytes_since += bytes as u64;
    }

    /// *Take*: starts writing a snapshot of `queue` at `applied` if enough was applied since
    /// the last one and none is being written. The loop pauses only for the queue's
    /// O(segments) clone.
    pub(super) fn maybe_take(&mut self, applied: EntryId, queue: &Queue) {
        if self.writing.is_some()
            || applied.index <= self.newest.index()
            || !snapshot_due(
                self.entries_since,
                self.bytes_since,
                &self.thresholds,
                self.newest_written_bytes,
            )
        {
            return;
        }
        let meta = SnapshotMeta::at(applied);
        let started = Instant::now();
        let view = queue.snapshot_view();
        let pause = started.elapsed();
        self.view_pause_max = self.view_pause_max.max(pause);
        log::info!(
            "taking snapshot {} ({} messages, {} entries since the last): the loop paused {} \
             us for the view",
            meta.last,
            view.stats().messages,
            self.entries_since,
            pause.as_micros()
        );
        self.entries_since = 0;
        self.bytes_since = 0;
        self.writing = Some(meta.clone());
        let dir = self.data_dir.clone();
        let fsync = self.fsync;
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let started = Instant::now();
                let result = snapshot_file::write_snapshot(&dir, meta.clone(), fsync, |writer| {
                    view.encode_snapshot(writer)
                        .map_err(|error| std::io::Error::other(error.to_string()))
                })
                .map_err(|error| error.to_string());
                drop(view);
                let saved = SnapshotSaved {
                    meta,
                    result,
                    write_duration: started.elapsed(),
                };
                let _ = events.send(Event::SnapshotSaved(saved));
            });
        if let Err(error) = spawned {
            log::error!("cannot start the snapshot writer: {error}");
            self.writing = None;
        }
    }

    /// *Write* done: the writer thread reported. Returns what the loop must compact, if the
    /// file is durable and newer than any this node holds (and the node still participates);
    /// the loop then calls [`Snapshots::compacted`].
    pub(super) fn on_saved(&mut self, saved: SnapshotSaved, halted: bool) -> Option<Compaction> {
        self.writing = None;
        let file = match saved.result {
            Ok(file) => file,
            Err(error) => {
                // Not fatal: the log just grows until the next attempt, one threshold later.
                log::error!("writing snapshot {} failed: {error}", saved.meta.last);
                return None;
            }
        };
        if halted {
            return None;
        }
        if file.meta.index() <= self.newest.index() {
            // A newer one was installed from the leader meanwhile.
            self.retain();
            return None;
        }
        let core_to = LogIndex(
            file.meta
                .index()
                .0
                .saturating_sub(self.thresholds.log_margin_entries),
        );
        self.previous = self.newest.clone();
        self.newest = file.meta.clone();
        self.newest_written_bytes = file.len_bytes;
        Some(Compaction {
            snapshot: file.meta,
            core_to,
            // The WAL keeps the log back to the previous snapshot: the fallback if the
            // newest file is ever found damaged.
            wal_to: self.previous.index(),
            len_bytes: file.len_bytes,
            write_duration: saved.write_duration,
        })
    }

    /// The loop compacted the core and queued the WAL's compaction: log it, retain.
    pub(super) fn compacted(&mut self, compaction: &Compaction) {
        log::info!(
            "snapshot {} written: {} bytes in {} ms (longest loop pause for a view so far: {} \
             us); log compacted to {} in memory, {} on disk",
            compaction.snapshot.last,
            compaction.len_bytes,
            compaction.write_duration.as_millis(),
            self.view_pause_max.as_micros(),
            compaction.core_to,
            compaction.wal_to
        );
        self.retain();
    }

    /// *Load*: an `InstallSnapshot` whose file has arrived. `needs_data` is the core's
    /// answer (`Core::snapshot_needs_data`). Returns the message if the loop should step it
    /// now (no state to load); else it is decoded first on the loader thread (or waits for
    /// the load in progress), and comes back from [`Snapshots::on_loaded`].
    pub(super) fn on_install_snapshot(
        &mut self,
        message: Message,
        snapshot: SnapshotMeta,
        needs_data: bool,
    ) -> Option<Message> {
        if !needs_data {
            // The core only commits (or acknowledges): no state to load.
            self.discard_received(snapshot);
            return Some(message);
        }
        if let Some(loading) = &self.loading {
            log::info!(
                "snapshot {} arrived while {} is loading; it waits",
                snapshot.last,
                loading.last
            );
            if let Some(MessageBody::InstallSnapshot { snapshot: replaced }) =
                self.waiting.replace(message).map(|message| message.body)
            {
                if replaced.last != snapshot.last {
                    self.discard_received(replaced);
                }
            }
            return None;
        }
        self.loading = Some(snapshot.clone());
        let path = snapshot_file::received_path(&self.data_dir, &snapshot);
        let queue_config = self.queue_config.clone();
        let events = self.events.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-loader".into())
            .spawn(move || {
                let started = Instant::now();
                // The transport checked the file whole; the checksum is checked again on the
                // way through, in the same single pass.
                let result = snapshot_file::read_snapshot(&path, |reader| {
                    Queue::decode_snapshot(queue_config, reader).map_err(|error| error.to_string())
                })
                .map(|(_, queue)| queue)
                .map_err(|error| error.to_string());
                let loaded = LoadedSnapshot {
                    message,
                    snapshot,
                    result,
                    load_duration: started.elapsed(),
                };
                let _ = events.send(Event::SnapshotLoaded(Box::new(loaded)));
            });
        if let Err(error) = spawned {
            log::error!("cannot start the snapshot loader: {error}");
            self.loading = None;
        }
        None
    }

    /// The loader thread decoded (or failed to decode) a received snapshot. Returns the
    /// `InstallSnapshot` for the loop to step now that its data is at hand; then the loop
    /// handles the one that waited, if any ([`Snapshots::take_waiting`]).
    pub(super) fn on_loaded(&mut self, loaded: LoadedSnapshot, halted: bool) -> Option<Message> {
        self.loading = None;
        if halted {
            return None;
        }
        match loaded.result {
            Ok(queue) => {
                log::info!(
                    "snapshot {} decoded in {} ms ({} messages)",
                    loaded.snapshot.last,
                    loaded.load_duration.as_millis(),
                    queue.stats().messages
                );
                self.loaded = Some((loaded.snapshot, queue));
                Some(loaded.message)
            }
            Err(error) => {
                log::error!(
                    "cannot load snapshot {} received from node {}: {error}",
                    loaded.snapshot.last,
                    loaded.message.from
                );
                self.discard_received(loaded.snapshot);
                None
            }
        }
    }

    /// The newest `InstallSnapshot` that arrived while another was loading.
    pub(super) fn take_waiting(&mut self) -> Option<(Message, SnapshotMeta)> {
        let message = self.waiting.take()?;
        match message.body {
            MessageBody::InstallSnapshot { ref snapshot } => {
                let snapshot = snapshot.clone();
                Some((message, snapshot))
            }
            _ => None,
        }
    }

    /// *Install*: the core installs `snapshot` from the leader. Makes the received file this
    /// node's newest snapshot, durably (the file first, here; then the WAL's restart record,
    /// which the caller puts in the `Ready`'s batch: see `recovery` for a crash in between),
    /// and returns its queue.
    pub(super) fn install(&mut self, snapshot: SnapshotMeta) -> Result<Queue, StorageError> {
        let queue = match self.loaded.take() {
            Some((loaded, queue)) if loaded.last == snapshot.last => queue,
            other => panic!(
                "node {}: the core installs snapshot {} but the loop loaded {:?}",
                self.node,
                snapshot.last,
                other.map(|(loaded, _)| loaded.last)
            ),
        };
        snapshot_file::adopt_received(&self.data_dir, snapshot.clone(), self.fsync)?;
        log::info!(
            "installed snapshot {} ({} messages); the log restarts after it",
            snapshot.last,
            queue.stats().messages
        );
        self.previous = std::mem::replace(&mut self.newest, snapshot);
        self.entries_since = 0;
        self.bytes_since = 0;
        self.retain();
        Ok(queue)
    }

    /// *Discard* a loaded snapshot the core did not install after all (a stale term, or the
    /// log caught up meanwhile); called once the core's `Ready`s are worked off.
    pub(super) fn discard_unused(&mut self) {
        if let Some((unused, _)) = self.loaded.take() {
            log::info!("snapshot {} not needed after all", unused.last);
            self.discard_received(unused);
        }
    }

    /// Deletes a received snapshot file that will not be installed (unless it is the one
    /// loaded for the core's next `Ready`, which a repeated message must not take away).
    fn discard_received(&self, snapshot: SnapshotMeta) {
        if self
            .loaded
            .as_ref()
            .is_some_and(|(loaded, _)| loaded.last == snapshot.last)
        {
            return;
        }
        let path = snapshot_file::received_path(&self.data_dir, &snapshot);
        if let Err(error) = std::fs::remove_file(&path) {
            log::debug!("deleting {}: {error}", path.display());
        }
    }

    /// *Retain* the newest [`SNAPSHOTS_KEPT`] files.
    fn retain(&self) {
        if let Err(error) = snapshot_file::retain_newest(&self.data_dir, SNAPSHOTS_KEPT, self.fsync)
        {
            log::warn!("cannot delete old snapshot files: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn small_snapshots_follow_the_count_and_byte_thresholds_alone() {
        let thresholds = SnapshotConfig::default();
        let entries = thresholds.entries_max;
        assert!(!snapshot_due(entries - 1, MIB, &thresholds, 0));
        assert!(snapshot_due(entries, MIB, &thresholds, 0));
        assert!(snapshot_due(1, thresholds.log_bytes_max, &thresholds, 0));
        // A written snapshot under the growth floor changes nothing.
        assert!(snapshot_due(entries, 1, &thresholds, 15 * MIB));
    }

    #[test]
    fn a_large_snapshot_waits_for_the_log_to_grow_to_a_quarter_of_it() {
        let thresholds = SnapshotConfig::default();
        let entries = thresholds.entries_max;
        // 286 MB written last time: the next waits for 71.5 MB of log, whatever the count.
        let last = 286 * MIB;
        assert!(!snapshot_due(entries, 11 * MIB, &thresholds, last));
        assert!(!snapshot_due(10 * entries, last / 4 - 1, &thresholds, last));
        assert!(snapshot_due(entries, last / 4, &thresholds, last));
        // ...and still needs a threshold reached: a quarter of a 20 MiB snapshot (5 MiB)
        // in fewer entries than `entries_max` is not enough.
        assert!(!snapshot_due(entries - 1, 5 * MIB, &thresholds, 20 * MIB));
        assert!(snapshot_due(entries, 5 * MIB, &thresholds, 20 * MIB));
    }

    #[test]
    fn the_wait_is_capped_at_four_log_byte_thresholds() {
        let thresholds = SnapshotConfig::default();
        let cap = 4 * thresholds.log_bytes_max;
        let huge = 100 * cap;
        assert!(!snapshot_due(1, cap - 1, &thresholds, huge));
        assert!(snapshot_due(1, cap, &thresholds, huge));
    }
}
