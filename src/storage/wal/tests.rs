use super::*;
use crate::raft::{EntryId, EntryPayload, NodeId};
use crate::storage::conformance::{entries, entry};
use crate::storage::io::tests::Fault;
use crate::storage::io::tests::Faults;
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
    let snapshot = SnapshotMeta::at(EntryId::new(Term(2), LogIndex(50)));
    wal.install_snapshot(snapshot.clone()).expect("install");
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
    batch.push_snapshot(&SnapshotMeta::at(EntryId::new(Term(1), LogIndex(10))));
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

impl Wal {
    /// Whether an earlier I/O failure stopped this WAL.
    fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The fault plan of this WAL's I/O, for tests elsewhere in `storage` (the conformance
    /// suite's mid-sync crash).
    pub(crate) fn faults(&mut self) -> &mut Faults {
        &mut self.io.faults
    }
}
