//! Startup: from a data dir (snapshot files + WAL) to the state a node resumes from.
//!
//! Why it exists: the WAL and the snapshot files are written at different times, so after a
//! crash they must be reconciled before the core is built (the core asserts a contiguous log
//! and would panic on a gap; an error that tells the operator what to do is better). This
//! module picks the newest intact snapshot, checks that the log continues right after it,
//! finishes a snapshot install that a crash interrupted, and loads the queue.
//!
//! The rules, with `S` the snapshot chosen and the WAL holding entries `a..=b` (or none,
//! after the log restarted at its snapshot item `B`):
//!
//! | WAL                                   | outcome                                     |
//! |---------------------------------------|---------------------------------------------|
//! | `a <= S + 1 <= b + 1`, agrees at `S`  | resume: the core drops what `S` covers      |
//! | `a > S + 1`, or restarted at `B > S`  | refuse: entries between are lost            |
//! | `b < S`, or disagrees at `S`          | the WAL is behind `S` (an install of `S`    |
//! |                                       | was interrupted): restart the WAL after `S` |
//!
//! A snapshot that fails its checksum is renamed `.corrupt` with a warning and the next
//! older one is tried, then the log alone. Each node keeps the log back to its previous
//! snapshot, so one damaged file is survivable; two are not, and neither is a log damaged
//! beyond that: the error says to wipe the data dir and let the node catch up.
//!
//! What it must not do: decide anything about Raft state beyond where the log starts.

use crate::queue::{Queue, QueueConfig};
use crate::raft::InitialState;
use crate::raft::{HardState, LogIndex, SnapshotMeta};
use crate::storage::snapshot_file;
use crate::storage::SNAPSHOT_RECOVERY_ADVICE;
use crate::storage::{FsyncPolicy, LogStore, StorageError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a node cannot resume from its data dir. `Display` is the one line `rrmq-node` prints.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{dir}: {source}")]
    Storage { dir: String, source: StorageError },
    #[error("{dir}: {reason}; {SNAPSHOT_RECOVERY_ADVICE}")]
    Unrecoverable { dir: String, reason: String },
}

/// What the node resumes from.
pub struct Recovered {
    /// For `Core::new`: the snapshot loaded (or `0@0`) and the WAL's hard state and entries.
    pub restored: InitialState,
    pub queue: Queue,
    /// The snapshot file before the loaded one, if any: the WAL is kept back to it.
    pub previous_snapshot: SnapshotMeta,
    /// How long loading the snapshot took (checksum pass and decoding).
    pub load_duration: Duration,
}

/// How the WAL relates to the snapshot chosen.
#[derive(Debug, PartialEq, Eq)]
pub enum LogPlan {
    /// The log continues right after the snapshot (possibly with entries it covers).
    Resume,
    /// The log is behind the snapshot or disagrees with it: an install of the snapshot was
    /// interrupted after the file was adopted, before the WAL recorded it. Restart the WAL
    /// after the snapshot.
    RestartAfterSnapshot,
}

/// Checks that the log in `wal` can follow `snapshot` (`0@0`: none). `Err` explains the gap.
pub fn plan_log(snapshot: &SnapshotMeta, wal: &InitialState) -> Result<LogPlan, String> {
    let snapshot_index = snapshot.index();
    let (Some(first), Some(last)) = (wal.entries.first(), wal.entries.last()) else {
        let restart = &wal.snapshot;
        if restart.index() > snapshot_index {
            return Err(format!(
                "the log restarts after snapshot {} but the newest usable snapshot file is {}",
                restart.last, snapshot.last
            ));
        }
        if restart.index() == snapshot_index && restart != snapshot {
            return Err(format!(
                "the log restarts after snapshot {} but the snapshot file at that index is {}",
                restart.last, snapshot.last
            ));
        }
        return Ok(if restart.index() < snapshot_index {
            LogPlan::RestartAfterSnapshot
        } else {
            LogPlan::Resume
        });
    };
    if first.index > snapshot_index.next() {
        return Err(if snapshot_index == LogIndex::ZERO {
            format!(
                "the log starts at entry {} (earlier entries were compacted) but there is no \
                 usable snapshot",
                first.index
            )
        } else {
            format!(
                "the log starts at entry {} but the newest usable snapshot, {}, ends at {}: \
                 entries {}..{} are lost",
                first.index,
                snapshot.last,
                snapshot_index,
                snapshot_index.next(),
                first.index
            )
        });
    }
    if last.index < snapshot_index {
        return Ok(LogPlan::RestartAfterSnapshot);
    }
    if first.index <= snapshot_index && snapshot_index > LogIndex::ZERO {
        let position = (snapshot_index.0 - first.index.0) as usize;
        if wal.entries[position].term != snapshot.last.term {
            return Ok(LogPlan::RestartAfterSnapshot);
        }
    }
    Ok(LogPlan::Resume)
}

/// Reconciles the snapshot files in `dir` with the WAL (`store`, which restored `wal`) and
/// loads the queue. May write: deletes leftovers of interrupted writes and transfers,
/// renames corrupt snapshots, and restarts the WAL after a snapshot whose install a crash
/// interrupted.
pub fn recover(
    dir: &Path,
    fsync: FsyncPolicy,
    store: &mut dyn LogStore,
    wal: InitialState,
    queue_config: QueueConfig,
) -> Result<Recovered, RecoveryError> {
    let shown = dir.display().to_string();
    let storage = |source| RecoveryError::Storage {
        dir: shown.clone(),
        source,
    };
    let unrecoverable = |reason: String| RecoveryError::Unrecoverable {
        dir: shown.clone(),
        reason,
    };
    let started = Instant::now();
    snapshot_file::remove_leftovers(dir, fsync).map_err(storage)?;
    let listed = snapshot_file::list_snapshots(dir).map_err(storage)?;
    let mut damaged: Vec<PathBuf> = Vec::new();
    let mut chosen = None;
    for (position, (meta, path)) in listed.iter().enumerate() {
        match snapshot_file::verify_snapshot(path) {
            Ok(file) => {
                chosen = Some((file, listed.get(position + 1).map(|(meta, _)| meta.clone())));
                break;
            }
            Err(StorageError::Corrupt { reason, .. }) => {
                log::warn!(
                    "snapshot {} ({}) is damaged: {reason}; falling back to an older one",
                    meta.last,
                    path.display()
                );
                let moved = snapshot_file::quarantine(path).map_err(storage)?;
                log::warn!("moved it to {} for inspection", moved.display());
                damaged.push(path.clone());
            }
            Err(error) => return Err(storage(error)),
        }
    }
    let snapshot = chosen
        .as_ref()
        .map_or(SnapshotMeta::default(), |(file, _)| file.meta.clone());
    let plan = plan_log(&snapshot, &wal).map_err(|reason| {
        if damaged.is_empty() {
            unrecoverable(reason)
        } else {
            unrecoverable(format!(
                "{reason} (after setting aside damaged snapshot files: {})",
                damaged
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    })?;
    if !damaged.is_empty() {
        log::warn!(
            "resuming from {} and the log after it instead of the damaged newer snapshot",
            if snapshot.index() == LogIndex::ZERO {
                "an empty state".to_string()
            } else {
                format!("snapshot {}", snapshot.last)
            }
        );
    }
    let (queue, previous_snapshot) = match &chosen {
        None => (Queue::new(queue_config), SnapshotMeta::default()),
        Some((file, previous)) => {
            // Checked whole just above, so the decoder never sees damaged bytes.
            let (_, queue) = snapshot_file::read_snapshot(&file.path, |reader| {
                Queue::decode_snapshot(queue_config, reader).map_err(|error| error.to_string())
            })
            .map_err(storage)?;
            if queue.last_applied() > snapshot.index() {
                return Err(unrecoverable(format!(
                    "snapshot {} holds a state applied up to {}, past its own index",
                    snapshot.last,
                    queue.last_applied()
                )));
            }
            (queue, previous.clone().unwrap_or_default())
        }
    };
    let mut restored = InitialState {
        snapshot: snapshot.clone(),
        ..wal
    };
    if plan == LogPlan::RestartAfterSnapshot {
        log::warn!(
            "the log ends before snapshot {} or disagrees with it: finishing its interrupted \
             install (the log restarts after it)",
            snapshot.last
        );
        if restored.hard_state.term < snapshot.last.term {
            // The file came from a leader of a newer term and was adopted before this node's
            // hard state of that term was durable. Adopt the term (without a vote, as on
            // hearing from that leader): the log never holds a term the hard state lacks.
            restored.hard_state = HardState {
                term: snapshot.last.term,
                vote: None,
                ..restored.hard_state
            };
            store
                .set_hard_state(&restored.hard_state)
                .map_err(storage)?;
        }
        store.install_snapshot(snapshot).map_err(storage)?;
        store.sync().map_err(storage)?;
        restored.entries.clear();
    }
    Ok(Recovered {
        restored,
        queue,
        previous_snapshot,
        load_duration: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryId, EntryPayload, NodeId, Term};

    fn meta(term: u64, index: u64) -> SnapshotMeta {
        SnapshotMeta::at(EntryId::new(Term(term), LogIndex(index)))
    }

    fn wal(restart: SnapshotMeta, terms_from: Option<(u64, &[u64])>) -> InitialState {
        let entries = terms_from.map_or(Vec::new(), |(first, terms)| {
            terms
                .iter()
                .enumerate()
                .map(|(offset, term)| Entry {
                    term: Term(*term),
                    index: LogIndex(first + offset as u64),
                    payload: EntryPayload::Noop,
                })
                .collect()
        });
        InitialState {
            snapshot: restart,
            hard_state: HardState::default(),
            entries,
        }
    }

    #[test]
    fn the_log_must_continue_right_after_the_snapshot() {
        let none = SnapshotMeta::default;
        let cases: Vec<(&str, SnapshotMeta, InitialState, Result<LogPlan, &str>)> = vec![
            ("a new node", none(), wal(none(), None), Ok(LogPlan::Resume)),
            (
                "a log from 1, no snapshot",
                none(),
                wal(none(), Some((1, &[1, 1]))),
                Ok(LogPlan::Resume),
            ),
            (
                "a compacted log without a snapshot",
                none(),
                wal(none(), Some((5, &[1]))),
                Err("no usable snapshot"),
            ),
            (
                "the log keeps entries the snapshot covers",
                meta(2, 10),
                wal(none(), Some((8, &[1, 2, 2, 2]))),
                Ok(LogPlan::Resume),
            ),
            (
                "the log starts right after",
                meta(2, 10),
                wal(none(), Some((11, &[2]))),
                Ok(LogPlan::Resume),
            ),
            (
                "a gap (the newer snapshot was damaged)",
                meta(2, 10),
                wal(none(), Some((13, &[2]))),
                Err("entries 11..13 are lost"),
            ),
            (
                "the log restarted after the snapshot",
                meta(2, 10),
                wal(meta(2, 10), None),
                Ok(LogPlan::Resume),
            ),
            (
                "the log restarted after a newer snapshot",
                meta(2, 10),
                wal(meta(3, 20), None),
                Err("restarts after snapshot"),
            ),
            (
                "the log restarted after a newer snapshot, with entries",
                meta(2, 10),
                wal(meta(3, 20), Some((21, &[3]))),
                Err("entries 11..21 are lost"),
            ),
            (
                "installed file, WAL not yet told: behind",
                meta(3, 20),
                wal(none(), Some((1, &[1, 1, 1]))),
                Ok(LogPlan::RestartAfterSnapshot),
            ),
            (
                "installed file, WAL not yet told: conflicting entries",
                meta(3, 3),
                wal(none(), Some((1, &[1, 1, 2, 2]))),
                Ok(LogPlan::RestartAfterSnapshot),
            ),
            (
                "installed file, WAL restarted at an older one",
                meta(3, 30),
                wal(meta(2, 10), None),
                Ok(LogPlan::RestartAfterSnapshot),
            ),
            (
                "two different snapshots at one index",
                meta(3, 10),
                wal(meta(2, 10), None),
                Err("at that index"),
            ),
        ];
        for (number, (name, snapshot, restored, expected)) in cases.into_iter().enumerate() {
            let planned = plan_log(&snapshot, &restored);
            match (&planned, &expected) {
                (Ok(plan), Ok(expected)) => {
                    assert_eq!(plan, expected, "case {number} ({name})")
                }
                (Err(reason), Err(needle)) => assert!(
                    reason.contains(needle),
                    "case {number} ({name}): {reason:?} lacks {needle:?}"
                ),
                _ => panic!("case {number} ({name}): got {planned:?}, expected {expected:?}"),
            }
        }
    }

    fn queue_with(messages: u64) -> Queue {
        use crate::protocol::Payload;
        use crate::queue::{Command, LoggedCommand};
        let mut queue = Queue::new(QueueConfig::default());
        let mut apply = |command| {
            let index = queue.last_applied().next();
            queue.apply_command(
                index,
                &LoggedCommand {
                    session: None,
                    command,
                },
            );
        };
        apply(Command::CreateTopic { topic: "t".into() });
        for number in 0..messages {
            apply(Command::Put {
                topic: "t".into(),
                message: Payload::Text(format!("m{number}")),
            });
        }
        queue
    }

    fn write_queue(dir: &Path, snapshot: SnapshotMeta, queue: &Queue) {
        snapshot_file::write_snapshot(dir, snapshot, FsyncPolicy::Never, |writer| {
            queue
                .encode_snapshot(writer)
                .map_err(|error| std::io::Error::other(error.to_string()))
        })
        .expect("write a snapshot");
    }

    fn open_wal(dir: &Path) -> (crate::storage::Wal, InitialState) {
        crate::storage::Wal::open(
            dir,
            crate::storage::WalOptions {
                segment_bytes_max: 4096,
                fsync: FsyncPolicy::Never,
            },
        )
        .expect("open the WAL")
    }

    fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|index| Entry {
                term: Term(term),
                index: LogIndex(index),
                payload: EntryPayload::Noop,
            })
            .collect()
    }

    #[test]
    fn a_snapshot_of_a_term_the_hard_state_has_not_reached_raises_the_term() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut wal, _) = open_wal(dir.path());
        let old = HardState {
            term: Term(1),
            vote: Some(NodeId(1)),
            commit: LogIndex(3),
        };
        wal.set_hard_state(&old).expect("hard state");
        wal.append(&entries(1, 1..=5)).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        // A leader of term 2 sent it; the node adopted the file and crashed before its
        // term-2 hard state was synced.
        write_queue(dir.path(), meta(2, 10), &queue_with(7));
        let (mut wal, restored) = open_wal(dir.path());
        let recovered = recover(
            dir.path(),
            FsyncPolicy::Never,
            &mut wal,
            restored,
            QueueConfig::default(),
        )
        .expect("recover");
        let raised = HardState {
            term: Term(2),
            vote: None,
            commit: LogIndex(3),
        };
        assert_eq!(recovered.restored.hard_state, raised);
        drop(wal);
        let (_, restored) = open_wal(dir.path());
        assert_eq!(restored.hard_state.term, Term(2), "durable");
        assert_eq!(restored.snapshot, meta(2, 10));
    }

    #[test]
    fn an_install_interrupted_before_the_wal_recorded_it_is_finished() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut wal, _) = open_wal(dir.path());
        wal.set_hard_state(&HardState {
            term: Term(2),
            vote: None,
            commit: LogIndex(3),
        })
        .expect("hard state");
        wal.append(&entries(1, 1..=5)).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        // The file was adopted, then the node crashed before the WAL's restart record.
        let queue = queue_with(7);
        write_queue(dir.path(), meta(2, 10), &queue);
        std::fs::write(
            dir.path()
                .join("snapshot-00000000000000000011-00000000000000000002.partial"),
            b"x",
        )
        .expect("a leftover");
        let (mut wal, restored) = open_wal(dir.path());
        let recovered = recover(
            dir.path(),
            FsyncPolicy::Never,
            &mut wal,
            restored,
            QueueConfig::default(),
        )
        .expect("recover");
        assert_eq!(recovered.restored.snapshot, meta(2, 10));
        assert!(recovered.restored.entries.is_empty());
        assert!(recovered.queue == queue, "the queue is the snapshot's");
        assert_eq!(
            std::fs::read_dir(dir.path())
                .expect("list")
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".partial"))
                .count(),
            0,
            "leftovers are deleted"
        );
        drop(wal);
        let (mut wal, restored) = open_wal(dir.path());
        assert_eq!(
            restored.snapshot,
            meta(2, 10),
            "the WAL now restarts after it"
        );
        assert!(restored.entries.is_empty());
        wal.append(&entries(2, 11..=11))
            .expect("the log continues after the snapshot");
    }

    #[test]
    fn a_damaged_newest_snapshot_falls_back_while_the_log_reaches_back() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut wal, _) = open_wal(dir.path());
        wal.set_hard_state(&HardState {
            term: Term(1),
            vote: None,
            commit: LogIndex(30),
        })
        .expect("hard state");
        wal.append(&entries(1, 1..=30)).expect("append");
        wal.sync().expect("sync");
        let older = queue_with(3);
        write_queue(dir.path(), meta(1, 10), &older);
        write_queue(dir.path(), meta(1, 20), &queue_with(5));
        let newest = snapshot_file::snapshot_path(dir.path(), &meta(1, 20));
        let mut bytes = std::fs::read(&newest).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&newest, bytes).expect("write");
        drop(wal);
        let (mut wal, restored) = open_wal(dir.path());
        let recovered = recover(
            dir.path(),
            FsyncPolicy::Never,
            &mut wal,
            restored.clone(),
            QueueConfig::default(),
        )
        .expect("falls back");
        assert_eq!(recovered.restored.snapshot, meta(1, 10));
        assert!(recovered.queue == older);
        assert_eq!(
            recovered.restored.entries, restored.entries,
            "the log is kept"
        );
        assert!(!newest.exists(), "the damaged file is set aside");
        // Without the older one, a log that starts after it cannot be used.
        drop(wal);
        let dir = tempfile::tempdir().expect("dir");
        let (mut wal, _) = open_wal(dir.path());
        wal.set_hard_state(&HardState {
            term: Term(1),
            vote: None,
            commit: LogIndex(0),
        })
        .expect("hard state");
        for first in (1..=30).step_by(5) {
            // Big enough that every batch gets a segment of its own.
            let batch: Vec<Entry> = entries(1, first..=first + 4)
                .into_iter()
                .map(|entry| Entry {
                    payload: EntryPayload::Command(bytes::Bytes::from(vec![0u8; 1000])),
                    ..entry
                })
                .collect();
            wal.append(&batch).expect("append");
            wal.sync().expect("sync");
        }
        wal.compact_to(LogIndex(20)).expect("compact");
        write_queue(dir.path(), meta(1, 20), &queue_with(5));
        let newest = snapshot_file::snapshot_path(dir.path(), &meta(1, 20));
        std::fs::write(&newest, b"torn").expect("write");
        drop(wal);
        let (mut wal, restored) = open_wal(dir.path());
        match recover(
            dir.path(),
            FsyncPolicy::Never,
            &mut wal,
            restored,
            QueueConfig::default(),
        ) {
            Err(error @ RecoveryError::Unrecoverable { .. }) => {
                let message = error.to_string();
                assert!(message.contains("no usable snapshot"), "{message}");
                assert!(message.contains("delete its data dir"), "{message}");
            }
            Err(other) => panic!("expected Unrecoverable, got {other}"),
            Ok(_) => panic!("recovered without the log's start"),
        }
    }

    /// The figures for the README: the node loop's pause to take a snapshot of 1 million
    /// queued 100-byte messages (the view's clone), the file's size and write time (on the
    /// writer thread, fsync included), and the load time on restart (checksum pass and
    /// decode). Run with
    /// `cargo test --release --lib node::recovery::tests::measure -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_a_snapshot_of_a_million_messages() {
        use crate::protocol::Payload;
        use crate::queue::{Command, LoggedCommand};
        const MESSAGES: u64 = 1_000_000;
        let mut queue = Queue::new(QueueConfig::default());
        let command = |command| LoggedCommand {
            session: None,
            command,
        };
        let apply = |queue: &mut Queue, logged: LoggedCommand| {
            let index = queue.last_applied().next();
            queue.apply_command(index, &logged);
        };
        apply(
            &mut queue,
            command(Command::CreateTopic { topic: "t".into() }),
        );
        for number in 0..MESSAGES {
            let mut message = format!("{number:>12}");
            message.push_str(&"x".repeat(100 - message.len()));
            apply(
                &mut queue,
                command(Command::Put {
                    topic: "t".into(),
                    message: Payload::Text(message),
                }),
            );
        }
        // The loop's pause: the worst of several views, as the loop would take them.
        let mut pauses = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let view = queue.snapshot_view();
            pauses.push(started.elapsed());
            drop(view);
        }
        pauses.sort();
        let view = queue.snapshot_view();
        let started = Instant::now();
        let mut naive = Vec::new();
        queue.encode_snapshot(&mut naive).expect("encode");
        let encode_in_memory = started.elapsed();
        drop(naive);

        let dir = tempfile::tempdir().expect("dir");
        let meta = SnapshotMeta::at(crate::raft::EntryId::new(
            crate::raft::Term(1),
            queue.last_applied(),
        ));
        // The writer thread works while the "loop" keeps applying: it must see no stall.
        let writer_dir = dir.path().to_path_buf();
        let writer = std::thread::spawn(move || {
            let started = Instant::now();
            let file = snapshot_file::write_snapshot(&writer_dir, meta, FsyncPolicy::Always, |w| {
                view.encode_snapshot(w)
                    .map_err(|error| std::io::Error::other(error.to_string()))
            })
            .expect("write");
            (file, started.elapsed())
        });
        let mut slowest_apply = Duration::ZERO;
        let mut applied_meanwhile = 0u64;
        while !writer.is_finished() {
            let started = Instant::now();
            apply(&mut queue, command(Command::Get { topic: "t".into() }));
            apply(
                &mut queue,
                command(Command::Put {
                    topic: "t".into(),
                    message: Payload::Text("y".repeat(100)),
                }),
            );
            slowest_apply = slowest_apply.max(started.elapsed());
            applied_meanwhile += 2;
        }
        let (file, write_duration) = writer.join().expect("writer");

        let started = Instant::now();
        snapshot_file::verify_snapshot(&file.path).expect("verify");
        let verify = started.elapsed();
        let (_, loaded) = snapshot_file::read_snapshot(&file.path, |reader| {
            Queue::decode_snapshot(QueueConfig::default(), reader).map_err(|e| e.to_string())
        })
        .expect("read");
        let load = started.elapsed();
        assert_eq!(loaded.stats().messages as u64, MESSAGES);
        println!(
            "{MESSAGES} messages of 100 bytes: loop pause for the view median {:?}, max {:?} \
             (encoding in place instead would pause {:?}); snapshot {} bytes written in {:?} \
             (fsync included) off the loop, which meanwhile applied {applied_meanwhile} \
             entries, the slowest pair in {:?}; restart load {:?} (checksum pass {:?}, then \
             decode)",
            pauses[pauses.len() / 2],
            pauses[pauses.len() - 1],
            encode_in_memory,
            file.len_bytes,
            write_duration,
            slowest_apply,
            load,
            verify,
        );
    }
}
