//! One conformance suite for every [`LogStore`]: `MemStore` and `Wal` must behave the same
//! through appends, overwrites, hard state changes, syncs and crashes (also a crash in the
//! middle of a sync), so that what the simulator proves with `MemStore` (it keeps each
//! node's log in one, `tests/sim/storage.rs`) holds for a real node (openraft
//! `openraft/src/testing/log/suite.rs`).
//!
//! The contract pinned here: a crash keeps exactly what was synced (entries, term, vote, an
//! installed snapshot); the restored commit is at most the last synced commit and the last
//! entry, and exact when it was synced together with entries; invalid appends and unsafe
//! hard states are refused; compaction never drops an entry above its index nor the last
//! one; appends into what a snapshot covers are refused.

use super::io::{tests::Fault, IoOp};
use super::{LogStore, MemStore, StorageError, Wal, WalOptions};
use crate::raft::InitialState;
use crate::raft::{Entry, EntryId, EntryPayload, HardState, LogIndex, NodeId, SnapshotMeta, Term};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A store under test, and how to crash and restart it.
pub(crate) trait Harness {
    type Store: LogStore;
    /// A new, empty store.
    fn fresh(&mut self) -> Self::Store;
    /// Crashes `store` (everything not synced is lost) and restarts it.
    fn crash(&mut self, store: Self::Store) -> (Self::Store, InitialState);
    /// Syncs `store` but crashes between the hard state file and the log record, then
    /// restarts it.
    fn crash_mid_sync(&mut self, store: Self::Store) -> (Self::Store, InitialState);
}

pub(crate) struct MemHarness;

impl Harness for MemHarness {
    type Store = MemStore;

    fn fresh(&mut self) -> MemStore {
        MemStore::new()
    }

    fn crash(&mut self, mut store: MemStore) -> (MemStore, InitialState) {
        store.crash();
        let restored = store.durable();
        (store, restored)
    }
    fn crash_mid_sync(&mut self, mut store: MemStore) -> (MemStore, InitialState) {
        store.crash_mid_sync();
        let restored = store.durable();
        (store, restored)
    }
}

/// Each store in its own temp dir; a crash drops the `Wal` (losing its buffers, and its
/// lock) and reopens the dir.
pub(crate) struct WalHarness {
    pub(crate) options: WalOptions,
    pub(crate) dirs: Vec<tempfile::TempDir>,
}

impl Harness for WalHarness {
    type Store = Wal;

    fn fresh(&mut self) -> Wal {
        let dir = tempfile::tempdir().expect("a temp dir for the test");
        let (wal, restored) =
            Wal::open(dir.path(), self.options.clone()).expect("open a new data dir");
        assert_eq!(restored, InitialState::default(), "a new data dir is empty");
        self.dirs.push(dir);
        wal
    }

    fn crash(&mut self, store: Wal) -> (Wal, InitialState) {
        let dir = store.dir().to_path_buf();
        drop(store);
        Wal::open(&dir, self.options.clone()).expect("reopen after a crash")
    }

    fn crash_mid_sync(&mut self, mut store: Wal) -> (Wal, InitialState) {
        // The record's write fails, after the hard state file was replaced.
        store.faults().inject(Fault {
            op: IoOp::SegmentWrite,
            skip: 0,
            partial_bytes: None,
        });
        assert!(
            store.sync().is_err(),
            "the injected write failure fails the sync"
        );
        self.crash(store)
    }
}

/// An entry whose payload names its term and index, so a mix-up shows in the diff.
pub(crate) fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: if index.is_multiple_of(5) {
            EntryPayload::Noop
        } else {
            EntryPayload::Command(Bytes::from(format!("t{term}i{index}")))
        },
    }
}

/// Entries `indexes` of `term`.
pub(crate) fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|index| entry(term, index)).collect()
}

fn hard_state(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    }
}

fn ok<T>(result: Result<T, StorageError>, case: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{case}: unexpected error {error}"),
    }
}

/// Appends, sets the hard state and syncs, as the runtime does for one batch.
fn batch<S: LogStore>(store: &mut S, new_entries: &[Entry], state: Option<HardState>, case: &str) {
    ok(store.append(new_entries), case);
    if let Some(state) = state {
        ok(store.set_hard_state(&state), case);
    }
    ok(store.sync(), case);
}

type Case<H> = (&'static str, fn(&mut H, &str));

/// Runs every case on fresh stores from `harness`.
pub(crate) fn run_suite<H: Harness>(harness: &mut H) {
    let cases: Vec<Case<H>> = vec![
        ("fresh_store_restores_empty", fresh_store_restores_empty),
        ("synced_appends_survive", synced_appends_survive),
        ("unsynced_appends_are_lost", unsynced_appends_are_lost),
        ("overwrite_suffix_survives", overwrite_suffix_survives),
        (
            "unsynced_overwrite_keeps_old_suffix",
            unsynced_overwrite_keeps_old_suffix,
        ),
        ("overwrite_whole_log", overwrite_whole_log),
        ("overwrites_within_one_batch", overwrites_within_one_batch),
        (
            "hard_state_durable_after_sync",
            hard_state_durable_after_sync,
        ),
        ("commit_rides_with_entries", commit_rides_with_entries),
        (
            "commit_only_change_is_a_bounded_hint",
            commit_only_change_is_a_bounded_hint,
        ),
        ("commit_never_exceeds_the_log", commit_never_exceeds_the_log),
        ("invalid_appends_are_refused", invalid_appends_are_refused),
        (
            "unsafe_hard_states_are_refused",
            unsafe_hard_states_are_refused,
        ),
        (
            "entries_above_the_term_are_refused",
            entries_above_the_term_are_refused,
        ),
        (
            "crash_mid_sync_keeps_only_term_and_vote",
            crash_mid_sync_keeps_only_term_and_vote,
        ),
        ("install_restarts_the_log", install_restarts_the_log),
        ("unsynced_install_is_lost", unsynced_install_is_lost),
        (
            "install_in_a_batch_with_entries",
            install_in_a_batch_with_entries,
        ),
        (
            "compaction_keeps_what_follows_the_index",
            compaction_keeps_what_follows_the_index,
        ),
        (
            "random_operations_match_model",
            random_operations_match_model,
        ),
    ];
    for (number, (name, case)) in cases.into_iter().enumerate() {
        case(harness, &format!("case {number} ({name})"));
    }
}

fn fresh_store_restores_empty<H: Harness>(harness: &mut H, case: &str) {
    let store = harness.fresh();
    let (_, restored) = harness.crash(store);
    assert_eq!(restored, InitialState::default(), "{case}");
}

fn synced_appends_survive<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=3),
        Some(hard_state(1, None, 0)),
        case,
    );
    batch(&mut store, &entries(1, 4..=5), None, case);
    let (mut store, restored) = harness.crash(store);
    assert_eq!(restored.entries, entries(1, 1..=5), "{case}");
    // Twice, to check a restarted store appends where it left off.
    batch(&mut store, &entries(1, 6..=6), None, case);
    let (_, restored) = harness.crash(store);
    assert_eq!(
        restored.entries,
        entries(1, 1..=6),
        "{case}: after a second restart"
    );
}

fn unsynced_appends_are_lost<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=3),
        Some(hard_state(1, None, 0)),
        case,
    );
    ok(store.append(&entries(1, 4..=6)), case);
    let (mut store, restored) = harness.crash(store);
    assert_eq!(restored.entries, entries(1, 1..=3), "{case}");
    batch(
        &mut store,
        &entries(2, 4..=4),
        Some(hard_state(2, None, 0)),
        case,
    );
    let (_, restored) = harness.crash(store);
    let mut expected = entries(1, 1..=3);
    expected.push(entry(2, 4));
    assert_eq!(
        restored.entries, expected,
        "{case}: written after the crash"
    );
}

fn overwrite_suffix_survives<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=5),
        Some(hard_state(1, None, 0)),
        case,
    );
    batch(
        &mut store,
        &entries(2, 3..=4),
        Some(hard_state(2, None, 0)),
        case,
    );
    let (_, restored) = harness.crash(store);
    let mut expected = entries(1, 1..=2);
    expected.extend(entries(2, 3..=4));
    assert_eq!(restored.entries, expected, "{case}");
}

fn unsynced_overwrite_keeps_old_suffix<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=5),
        Some(hard_state(1, None, 0)),
        case,
    );
    ok(store.set_hard_state(&hard_state(2, None, 0)), case);
    ok(store.append(&entries(2, 2..=3)), case);
    let (_, restored) = harness.crash(store);
    assert_eq!(restored.entries, entries(1, 1..=5), "{case}");
    assert_eq!(restored.hard_state, hard_state(1, None, 0), "{case}");
}

fn overwrite_whole_log<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=3),
        Some(hard_state(1, None, 0)),
        case,
    );
    batch(
        &mut store,
        &entries(2, 1..=2),
        Some(hard_state(2, None, 0)),
        case,
    );
    let (_, restored) = harness.crash(store);
    assert_eq!(restored.entries, entries(2, 1..=2), "{case}");
}

fn overwrites_within_one_batch<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    ok(store.set_hard_state(&hard_state(3, None, 0)), case);
    ok(store.append(&entries(1, 1..=5)), case);
    ok(store.append(&entries(2, 4..=6)), case);
    ok(store.append(&entries(3, 6..=7)), case);
    ok(store.sync(), case);
    let (_, restored) = harness.crash(store);
    let mut expected = entries(1, 1..=3);
    expected.extend(entries(2, 4..=5));
    expected.extend(entries(3, 6..=7));
    assert_eq!(restored.entries, expected, "{case}");
}

fn hard_state_durable_after_sync<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(&mut store, &[], Some(hard_state(3, Some(1), 0)), case);
    let (mut store, restored) = harness.crash(store);
    assert_eq!(
        restored.hard_state,
        hard_state(3, Some(1), 0),
        "{case}: synced"
    );
    ok(store.set_hard_state(&hard_state(4, None, 0)), case);
    let (mut store, restored) = harness.crash(store);
    assert_eq!(
        restored.hard_state,
        hard_state(3, Some(1), 0),
        "{case}: not synced"
    );
    batch(&mut store, &[], Some(hard_state(4, None, 0)), case);
    batch(&mut store, &[], Some(hard_state(4, Some(2), 0)), case);
    let (_, restored) = harness.crash(store);
    assert_eq!(
        restored.hard_state,
        hard_state(4, Some(2), 0),
        "{case}: vote in a term"
    );
}

fn commit_rides_with_entries<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=5),
        Some(hard_state(1, None, 0)),
        case,
    );
    batch(
        &mut store,
        &entries(1, 6..=6),
        Some(hard_state(1, None, 3)),
        case,
    );
    let (_, restored) = harness.crash(store);
    assert_eq!(restored.hard_state, hard_state(1, None, 3), "{case}");
}

fn commit_only_change_is_a_bounded_hint<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=5),
        Some(hard_state(1, None, 2)),
        case,
    );
    batch(&mut store, &[], Some(hard_state(1, None, 4)), case);
    let (mut store, restored) = harness.crash(store);
    let commit = restored.hard_state.commit;
    assert!(
        LogIndex(2) <= commit && commit <= LogIndex(4),
        "{case}: commit {commit} outside 2..=4"
    );
    batch(
        &mut store,
        &entries(1, 6..=6),
        Some(hard_state(1, None, 5)),
        case,
    );
    let (_, restored) = harness.crash(store);
    assert_eq!(
        restored.hard_state.commit,
        LogIndex(5),
        "{case}: with entries"
    );
}

fn commit_never_exceeds_the_log<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=3),
        Some(hard_state(1, None, 9)),
        case,
    );
    let (_, restored) = harness.crash(store);
    assert_eq!(restored.hard_state.commit, LogIndex(3), "{case}");
}

fn invalid_appends_are_refused<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    let mut gapped = entries(1, 1..=2);
    gapped.push(entry(1, 4));
    let invalid: [(&str, Vec<Entry>); 3] = [
        ("a gap after the last entry", entries(1, 2..=3)),
        ("index 0", vec![entry(1, 0)]),
        ("non-contiguous entries", gapped),
    ];
    for (what, bad) in invalid {
        match store.append(&bad) {
            Err(StorageError::Invalid(_)) => {}
            other => panic!("{case}: {what}: expected Invalid, got {other:?}"),
        }
    }
    batch(
        &mut store,
        &entries(1, 1..=2),
        Some(hard_state(1, None, 0)),
        case,
    );
    let (_, restored) = harness.crash(store);
    assert_eq!(restored.entries, entries(1, 1..=2), "{case}");
}

fn unsafe_hard_states_are_refused<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(&mut store, &[], Some(hard_state(2, Some(1), 0)), case);
    let invalid = [
        ("a term moving back", hard_state(1, None, 0)),
        ("a second vote in a term", hard_state(2, Some(2), 0)),
        ("a vote taken back", hard_state(2, None, 0)),
    ];
    for (what, bad) in invalid {
        match store.set_hard_state(&bad) {
            Err(StorageError::Invalid(_)) => {}
            other => panic!("{case}: {what}: expected Invalid, got {other:?}"),
        }
    }
    batch(&mut store, &[], Some(hard_state(3, None, 0)), case);
    let (_, restored) = harness.crash(store);
    assert_eq!(restored.hard_state, hard_state(3, None, 0), "{case}");
}

fn entries_above_the_term_are_refused<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=2),
        Some(hard_state(1, None, 0)),
        case,
    );
    ok(store.append(&entries(2, 3..=3)), case);
    match store.sync() {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("{case}: expected Invalid, got {other:?}"),
    }
    // The runtime's order: append, then set_hard_state, then sync.
    ok(store.set_hard_state(&hard_state(2, None, 0)), case);
    ok(store.sync(), case);
    let (_, restored) = harness.crash(store);
    let mut expected = entries(1, 1..=2);
    expected.push(entry(2, 3));
    assert_eq!(restored.entries, expected, "{case}");
}

fn crash_mid_sync_keeps_only_term_and_vote<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=3),
        Some(hard_state(1, None, 2)),
        case,
    );
    // A new term, a vote and entries of that term: the hard state file goes first and
    // keeps the commit index already durable (2), never the batch's (5).
    ok(store.append(&entries(2, 3..=5)), case);
    ok(store.set_hard_state(&hard_state(2, Some(1), 5)), case);
    let (mut store, restored) = harness.crash_mid_sync(store);
    assert_eq!(restored.hard_state, hard_state(2, Some(1), 2), "{case}");
    assert_eq!(
        restored.entries,
        entries(1, 1..=3),
        "{case}: the record is lost"
    );
    // Entries alone: nothing of the batch survives.
    ok(store.append(&entries(2, 4..=4)), case);
    ok(store.set_hard_state(&hard_state(2, Some(1), 3)), case);
    let (_, restored) = harness.crash_mid_sync(store);
    assert_eq!(
        restored.hard_state,
        hard_state(2, Some(1), 2),
        "{case}: entries only"
    );
    assert_eq!(restored.entries, entries(1, 1..=3), "{case}: entries only");
}

fn snapshot_meta(term: u64, index: u64) -> SnapshotMeta {
    SnapshotMeta::at(EntryId::new(Term(term), LogIndex(index)))
}

fn expect_invalid<T: std::fmt::Debug>(result: Result<T, StorageError>, case: &str, what: &str) {
    match result {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("{case}: {what}: expected Invalid, got {other:?}"),
    }
}

fn install_restarts_the_log<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=10),
        Some(hard_state(2, None, 4)),
        case,
    );
    // The leader's snapshot ends at 20, past our log: a gap against the old entries.
    ok(store.install_snapshot(snapshot_meta(2, 20)), case);
    ok(store.sync(), case);
    let (mut store, restored) = harness.crash(store);
    assert_eq!(restored.snapshot, snapshot_meta(2, 20), "{case}");
    assert_eq!(restored.entries, Vec::<Entry>::new(), "{case}");
    assert_eq!(restored.last_index(), LogIndex(20), "{case}");
    assert!(restored.hard_state.commit <= LogIndex(20), "{case}");
    expect_invalid(store.append(&entries(2, 22..=22)), case, "a gap after it");
    expect_invalid(
        store.append(&entries(2, 20..=21)),
        case,
        "into the snapshot",
    );
    batch(&mut store, &entries(2, 21..=23), None, case);
    let (mut store, restored) = harness.crash(store);
    assert_eq!(
        restored.snapshot,
        snapshot_meta(2, 20),
        "{case}: after appending"
    );
    assert_eq!(restored.entries, entries(2, 21..=23), "{case}");
    // A second install, below the last entry (the follower held conflicting entries).
    ok(store.install_snapshot(snapshot_meta(2, 22)), case);
    batch(&mut store, &entries(2, 23..=24), None, case);
    let (_, restored) = harness.crash(store);
    assert_eq!(
        restored.snapshot,
        snapshot_meta(2, 22),
        "{case}: second install"
    );
    assert_eq!(
        restored.entries,
        entries(2, 23..=24),
        "{case}: second install"
    );
}

fn unsynced_install_is_lost<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=5),
        Some(hard_state(1, None, 0)),
        case,
    );
    ok(store.install_snapshot(snapshot_meta(1, 9)), case);
    ok(store.append(&entries(1, 10..=11)), case);
    let (mut store, restored) = harness.crash(store);
    assert_eq!(restored.snapshot, SnapshotMeta::default(), "{case}");
    assert_eq!(restored.entries, entries(1, 1..=5), "{case}");
    batch(&mut store, &entries(1, 6..=6), None, case);
    let (_, restored) = harness.crash(store);
    assert_eq!(restored.entries, entries(1, 1..=6), "{case}: usable after");
}

fn install_in_a_batch_with_entries<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    batch(
        &mut store,
        &entries(1, 1..=5),
        Some(hard_state(1, None, 0)),
        case,
    );
    // Appended before the install in the same batch: dropped by it.
    ok(store.append(&entries(1, 6..=7)), case);
    ok(store.set_hard_state(&hard_state(3, None, 0)), case);
    ok(store.install_snapshot(snapshot_meta(3, 30)), case);
    ok(store.append(&entries(3, 31..=32)), case);
    ok(store.set_hard_state(&hard_state(3, None, 31)), case);
    ok(store.sync(), case);
    let (_, restored) = harness.crash(store);
    assert_eq!(restored.snapshot, snapshot_meta(3, 30), "{case}");
    assert_eq!(restored.entries, entries(3, 31..=32), "{case}");
    assert_eq!(restored.hard_state, hard_state(3, None, 31), "{case}");
}

fn compaction_keeps_what_follows_the_index<H: Harness>(harness: &mut H, case: &str) {
    let mut store = harness.fresh();
    ok(store.set_hard_state(&hard_state(1, None, 0)), case);
    for first in (1..=40).step_by(4) {
        batch(&mut store, &entries(1, first..=first + 3), None, case);
    }
    ok(store.compact_to(LogIndex(25)), case);
    expect_invalid(
        store.append(&entries(1, 25..=26)),
        case,
        "into the snapshot",
    );
    let (mut store, restored) = harness.crash(store);
    let first = restored
        .entries
        .first()
        .map_or(LogIndex(41), |entry| entry.index);
    assert!(
        first <= LogIndex(26),
        "{case}: entry 26 was dropped (log starts at {first})"
    );
    assert_eq!(
        restored.entries,
        entries(1, first.0..=40),
        "{case}: a contiguous suffix"
    );
    batch(&mut store, &entries(1, 41..=42), None, case);
    // Compacting past the end keeps the last entry.
    ok(store.compact_to(LogIndex(100)), case);
    let (_, restored) = harness.crash(store);
    assert_eq!(
        restored.entries.last().map(Entry::id),
        Some(entry(1, 42).id()),
        "{case}: the last entry survives any compaction"
    );
}

/// Random appends (often overwriting), hard state changes, syncs, snapshot installs,
/// compactions and crashes, checked against a model that keeps what was written and what was
/// synced. Compaction may keep more than asked (whole WAL segments), so after a crash the
/// restored log must be a suffix of the synced one that holds everything above the
/// compaction point.
fn random_operations_match_model<H: Harness>(harness: &mut H, case: &str) {
    const SEEDS: u64 = 4;
    const OPERATIONS: usize = 400;
    /// A log as the model sees it: the entries after `base`.
    #[derive(Clone, Debug, PartialEq)]
    struct ModelLog {
        base: EntryId,
        entries: Vec<Entry>,
    }
    impl ModelLog {
        fn last_index(&self) -> u64 {
            self.base.index.0 + self.entries.len() as u64
        }
    }
    for seed in 0..SEEDS {
        let case = format!("{case} seed {seed}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut store = harness.fresh();
        let empty = ModelLog {
            base: EntryId::default(),
            entries: Vec::new(),
        };
        let mut written = empty.clone();
        let mut durable = empty;
        // Appends must start above this (a snapshot covers the rest).
        let mut floor = 0u64;
        // The highest compaction point, and the last installed snapshot made durable.
        let mut compacted_to = 0u64;
        let mut durable_snapshot: Option<SnapshotMeta> = None;
        let mut installed: Option<SnapshotMeta> = None;
        let mut state = hard_state(1, None, 0);
        ok(store.set_hard_state(&state), &case);
        ok(store.sync(), &case);
        let mut durable_state = state;
        let mut durable_commit_max = LogIndex::ZERO;
        let mut batch_changes_log = false;
        for step in 0..OPERATIONS {
            let case = format!("{case} step {step}");
            match rng.gen_range(0..22) {
                0..=7 => {
                    let last = written.last_index();
                    let first = if rng.gen_bool(0.7) || floor >= last {
                        last + 1
                    } else {
                        rng.gen_range(floor + 1..=last + 1)
                    };
                    let count = rng.gen_range(1..=4);
                    let new = entries(state.term.0, first..=first + count - 1);
                    ok(store.append(&new), &case);
                    let keep = first - written.base.index.0 - 1;
                    written.entries.truncate(keep as usize);
                    written.entries.extend(new);
                    batch_changes_log = true;
                }
                8 => {
                    let vote = rng.gen_bool(0.5).then(|| NodeId(rng.gen_range(0..3)));
                    state = HardState {
                        term: Term(state.term.0 + 1),
                        vote,
                        commit: state.commit,
                    };
                    ok(store.set_hard_state(&state), &case);
                }
                9..=10 => {
                    state.commit = LogIndex(rng.gen_range(0..=written.last_index()));
                    ok(store.set_hard_state(&state), &case);
                }
                11 => {
                    let last = written.last_index();
                    let index = rng.gen_range(floor + 1..=last + 5);
                    let snapshot = snapshot_meta(state.term.0, index);
                    ok(store.install_snapshot(snapshot.clone()), &case);
                    written = ModelLog {
                        base: snapshot.last,
                        entries: Vec::new(),
                    };
                    floor = index;
                    installed = Some(snapshot);
                    batch_changes_log = true;
                }
                12 if written == durable && !batch_changes_log => {
                    // Only synced (as if committed and applied) entries are compacted.
                    let low = durable.base.index.0;
                    let index = rng.gen_range(low..=durable.last_index());
                    ok(store.compact_to(LogIndex(index)), &case);
                    floor = floor.max(index);
                    compacted_to = compacted_to.max(index);
                }
                12..=19 => {
                    ok(store.sync(), &case);
                    durable = written.clone();
                    if let Some(snapshot) = installed.take() {
                        durable_snapshot = Some(snapshot);
                    }
                    if (state.term, state.vote) != (durable_state.term, durable_state.vote)
                        || batch_changes_log
                    {
                        durable_commit_max = durable_commit_max.max(state.commit);
                    }
                    durable_state = state;
                    batch_changes_log = false;
                }
                _ => {
                    let (restarted, restored) = harness.crash(store);
                    store = restarted;
                    // A suffix of the synced log, holding everything above the compaction
                    // point and at least the last entry.
                    let dropped =
                        durable.entries.len() - restored.entries.len().min(durable.entries.len());
                    assert_eq!(
                        restored.entries,
                        durable.entries[dropped..],
                        "{case}: entries after a crash"
                    );
                    let kept_from = durable.base.index.0 + dropped as u64 + 1;
                    assert!(
                        kept_from <= (compacted_to + 1).max(durable.base.index.0 + 1)
                            || (restored.entries.len() == 1
                                && dropped + 1 == durable.entries.len()),
                        "{case}: entries from {kept_from} on kept, compacted to {compacted_to}"
                    );
                    if !durable.entries.is_empty() {
                        assert!(
                            !restored.entries.is_empty(),
                            "{case}: the last entry was dropped"
                        );
                    }
                    if let Some(ref snapshot) = durable_snapshot {
                        if compacted_to < snapshot.index().0 {
                            assert_eq!(
                                restored.snapshot,
                                snapshot.clone(),
                                "{case}: installed snapshot"
                            );
                        }
                    }
                    assert_eq!(
                        (restored.hard_state.term, restored.hard_state.vote),
                        (durable_state.term, durable_state.vote),
                        "{case}: term and vote after a crash"
                    );
                    let last = restored.last_index().max(LogIndex(durable.last_index()));
                    let commit = restored.hard_state.commit;
                    assert!(
                        commit <= last && commit <= durable_commit_max,
                        "{case}: commit {commit} above the log ({last}) or what was synced \
                         ({durable_commit_max})"
                    );
                    let base = if dropped == 0 {
                        durable.base
                    } else {
                        durable.entries[dropped - 1].id()
                    };
                    durable = ModelLog {
                        base,
                        entries: restored.entries.clone(),
                    };
                    written = durable.clone();
                    floor = floor.max(base.index.0);
                    installed = None;
                    state = restored.hard_state;
                    batch_changes_log = false;
                }
            }
        }
    }
}

#[test]
fn mem_store_passes_conformance() {
    run_suite(&mut MemHarness);
}

#[test]
fn wal_passes_conformance() {
    run_suite(&mut WalHarness {
        options: WalOptions::default(),
        dirs: Vec::new(),
    });
}

#[test]
fn wal_with_tiny_segments_passes_conformance() {
    // Every record gets a segment of its own: overwrites always cross segment boundaries.
    run_suite(&mut WalHarness {
        options: WalOptions {
            segment_bytes_max: 1,
            ..WalOptions::default()
        },
        dirs: Vec::new(),
    });
}
