//! The core's in-memory view of the Raft log.
//!
//! The whole log since the last compaction point lives here, so the core can answer
//! consistency checks and build AppendEntries without asking storage. What storage has made
//! durable is tracked separately: entries from `unstable_from` on have not yet been handed to
//! the runtime for persisting, and `persisted` is the last entry the runtime reported durable.
//!
//! Invariants (checked by [`RaftLog::check_invariants`]):
//! - entries are contiguous from `first_index()` and their terms never decrease;
//! - `committed <= last_index()`; `persisted <= last_index()`;
//! - `unstable_from <= last_index() + 1`.

use super::message::{Entry, EntryId, LogIndex, SnapshotMeta, Term};
use std::collections::VecDeque;

pub struct RaftLog {
    /// The entry just before `entries[0]`: `0@0` until snapshots compact the log.
    offset: EntryId,
    entries: VecDeque<Entry>,
    /// Highest index known committed. Invariant: never moves back, `<= last_index()`.
    committed: LogIndex,
    /// Highest index handed out in `Ready::committed`. Invariant: `applied <= committed`.
    applied: LogIndex,
    /// First index not yet handed to storage.
    unstable_from: LogIndex,
    /// Last index storage reported durable (and still in the log with the same term).
    persisted: LogIndex,
}

impl RaftLog {
    /// A log resumed from storage: everything in `entries` is already durable. The log
    /// starts after `snapshot`; restored entries it covers are dropped.
    pub fn restore(snapshot: SnapshotMeta, entries: Vec<Entry>, committed: LogIndex) -> RaftLog {
        let mut entries = VecDeque::from(entries);
        while entries
            .front()
            .is_some_and(|entry| entry.index <= snapshot.index())
        {
            if let Some(entry) = entries.pop_front() {
                if entry.index == snapshot.index() {
                    assert_eq!(
                        entry.term, snapshot.last.term,
                        "restored log disagrees with the snapshot at {}",
                        entry.index
                    );
                }
            }
        }
        let mut log = RaftLog {
            offset: snapshot.last,
            entries,
            committed: LogIndex::ZERO,
            applied: snapshot.index(),
            unstable_from: LogIndex::ZERO,
            persisted: LogIndex::ZERO,
        };
        let last = log.last_index();
        for (position, entry) in log.entries.iter().enumerate() {
            let expected = LogIndex(log.offset.index.0 + 1 + position as u64);
            assert_eq!(
                entry.index, expected,
                "restored log is not contiguous at position {position}"
            );
        }
        // The commit index is a lazily persisted hint: it may lag, and after an unsynced
        // crash (`--fsync never`) it may even point past what survived. A snapshot only ever
        // covers committed entries.
        log.committed = committed.min(last).max(snapshot.index());
        log.unstable_from = last.next();
        log.persisted = last;
        log
    }

    /// Forgets the entries up to `index`, which a durable snapshot covers.
    pub fn compact(&mut self, index: LogIndex) {
        if index <= self.offset.index {
            return;
        }
        assert!(
            index <= self.applied,
            "compacting to {index} beyond applied {}",
            self.applied
        );
        assert!(
            index < self.unstable_from,
            "compacting to {index}, not yet handed to storage"
        );
        let Some(term) = self.term(index) else {
            panic!("compacting to {index}, which the log does not hold");
        };
        let drop_count = (index.0 - self.offset.index.0) as usize;
        self.entries.drain(..drop_count);
        self.offset = EntryId::new(term, index);
    }

    /// Replaces the whole log with a snapshot from the leader: the state machine is the
    /// snapshot's, and the log continues after it.
    pub fn install_snapshot(&mut self, snapshot: SnapshotMeta) {
        assert!(
            snapshot.index() > self.committed,
            "installing snapshot {} at or below the commit index {}",
            snapshot.last,
            self.committed
        );
        self.entries.clear();
        self.offset = snapshot.last;
        self.committed = snapshot.index();
        self.applied = snapshot.index();
        self.persisted = snapshot.index();
        self.unstable_from = snapshot.index().next();
    }

    /// The entry just before the first one the log holds.
    pub fn offset(&self) -> EntryId {
        self.offset
    }

    pub fn first_index(&self) -> LogIndex {
        self.offset.index.next()
    }

    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.offset.index.0 + self.entries.len() as u64)
    }

    pub fn last_id(&self) -> EntryId {
        match self.entries.back() {
            Some(entry) => entry.id(),
            None => self.offset,
        }
    }

    pub fn committed(&self) -> LogIndex {
        self.committed
    }

    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The term of the entry at `index`, or `None` if the log does not hold it.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset.index {
            return Some(self.offset.term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset.index {
            return None;
        }
        let position = (index.0 - self.offset.index.0 - 1) as usize;
        self.entries.get(position)
    }

    pub fn matches(&self, id: EntryId) -> bool {
        self.term(id.index) == Some(id.term)
    }

    /// Raft §5.4.1: is a candidate whose log ends at `last` at least as up to date as us?
    pub fn is_up_to_date(&self, last: EntryId) -> bool {
        let mine = self.last_id();
        last.term > mine.term || (last.term == mine.term && last.index >= mine.index)
    }

    /// The first index of the run of entries with `term` that contains `index`, not going
    /// below the commit index (entries up to it are known to match every leader's log).
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return index;
        };
        let floor = self.committed.next().max(self.first_index());
        let mut first = index;
        while first > floor && self.term(first.prev()) == Some(term) {
            first = first.prev();
        }
        first
    }

    /// The last index holding an entry of `term`, if any (searching back from the end).
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        self.entries
            .iter()
            .rev()
            .find(|entry| entry.term <= term)
            .filter(|entry| entry.term == term)
            .map(|entry| entry.index)
    }

    /// Appends one entry at the end (leader path).
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "push must extend the log"
        );
        assert!(
            entry.term >= self.last_id().term,
            "entry term {} below the log's last term {}",
            entry.term,
            self.last_id().term
        );
        self.entries.push_back(entry);
    }

    /// Follower path (Raft §5.3): `entries` follow an entry the log already matches. Skips
    /// entries the log already has, truncates at the first conflict, appends the rest.
    /// Returns the index of the last entry of `entries` (or `after` when empty).
    pub fn append_after(&mut self, after: LogIndex, entries: &[Entry]) -> LogIndex {
        let last_new = LogIndex(after.0 + entries.len() as u64);
        let mut position = 0;
        while position < entries.len() {
            let entry = &entries[position];
            if entry.index <= self.offset.index {
                // Compacted, hence committed, hence identical to the leader's.
                position += 1;
                continue;
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => position += 1,
                Some(_) => {
                    self.truncate_from(entry.index);
                    break;
                }
                None => break,
            }
        }
        for entry in &entries[position..] {
            self.push(entry.clone());
        }
        last_new
    }

    /// Drops every entry from `index` on. Panics if that would drop a committed entry: a
    /// committed entry is never overwritten (Raft §5.4, Leader Completeness).
    fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.committed,
            "truncating committed entries: from {index}, committed {}",
            self.committed
        );
        let keep = (index.0 - self.offset.index.0 - 1) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(index);
        self.persisted = self.persisted.min(index.prev());
    }

    /// Advances the commit index; never moves it back. Returns whether it moved.
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit index {index} beyond the last index {}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Entries in `from..=last_index()`, at most `bytes_max` bytes of them but always at
    /// least one when any exist.
    pub fn entries_from(&self, from: LogIndex, bytes_max: usize) -> Vec<Entry> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut index = from;
        while let Some(entry) = self.entry(index) {
            bytes += entry.size_bytes();
            if !batch.is_empty() && bytes > bytes_max {
                break;
            }
            batch.push(entry.clone());
            index = index.next();
        }
        batch
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Hands the entries not yet given to storage to the caller.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let unstable = self.entries_from(self.unstable_from, usize::MAX);
        self.unstable_from = self.last_index().next();
        unstable
    }

    /// Storage reports `last` durable. Ignored if the log no longer holds that entry (it was
    /// overwritten after being handed out) or if it was never handed out.
    pub fn persisted_to(&mut self, last: EntryId) -> bool {
        if last.index <= self.persisted || last.index >= self.unstable_from {
            return false;
        }
        if !self.matches(last) {
            return false;
        }
        self.persisted = last.index;
        true
    }

    pub fn has_unapplied(&self) -> bool {
        self.applied < self.committed
    }

    /// Hands committed entries not yet applied to the caller: at most `bytes_max` of them,
    /// but at least one when any are waiting.
    pub fn take_committed(&mut self, bytes_max: usize) -> Vec<Entry> {
        let mut committed = Vec::new();
        let mut bytes = 0;
        let mut index = self.applied.next();
        while index <= self.committed {
            let Some(entry) = self.entry(index) else {
                break;
            };
            bytes += entry.size_bytes();
            if !committed.is_empty() && bytes > bytes_max {
                break;
            }
            committed.push(entry.clone());
            self.applied = index;
            index = index.next();
        }
        committed
    }

    pub fn check_invariants(&self, context: &str) {
        let mut expected = self.offset.index.next();
        let mut previous_term = self.offset.term;
        for entry in &self.entries {
            assert_eq!(entry.index, expected, "{context}: log not contiguous");
            assert!(
                entry.term >= previous_term,
                "{context}: term goes back at {}: {} after {}",
                entry.index,
                entry.term,
                previous_term
            );
            previous_term = entry.term;
            expected = expected.next();
        }
        assert!(
            self.applied <= self.committed,
            "{context}: applied {} > committed {}",
            self.applied,
            self.committed
        );
        assert!(
            self.committed <= self.last_index(),
            "{context}: committed {} > last index {}",
            self.committed,
            self.last_index()
        );
        assert!(
            self.persisted <= self.last_index(),
            "{context}: persisted {} > last index {}",
            self.persisted,
            self.last_index()
        );
        assert!(
            self.unstable_from <= self.last_index().next(),
            "{context}: unstable_from {} beyond the log",
            self.unstable_from
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::message::EntryPayload;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Noop,
        }
    }

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(position, &term)| entry(term, position as u64 + 1))
            .collect();
        RaftLog::restore(SnapshotMeta::default(), entries, LogIndex::ZERO)
    }

    fn terms(log: &RaftLog) -> Vec<u64> {
        (1..=log.last_index().0)
            .map(|index| log.term(LogIndex(index)).map_or(0, |term| term.0))
            .collect()
    }

    #[test]
    fn append_after_skips_matching_truncates_conflicts_and_extends() {
        struct Case {
            log: &'static [u64],
            after: u64,
            new: &'static [(u64, u64)],
            want: &'static [u64],
            want_unstable_from: u64,
        }
        let cases = [
            // Pure extension.
            Case {
                log: &[1, 1],
                after: 2,
                new: &[(1, 3), (2, 4)],
                want: &[1, 1, 1, 2],
                want_unstable_from: 3,
            },
            // Duplicate (reordered) message: nothing changes, nothing to persist.
            Case {
                log: &[1, 1, 2],
                after: 1,
                new: &[(1, 2)],
                want: &[1, 1, 2],
                want_unstable_from: 4,
            },
            // Conflict in the middle: truncate and replace.
            Case {
                log: &[1, 1, 2, 2],
                after: 2,
                new: &[(3, 3)],
                want: &[1, 1, 3],
                want_unstable_from: 3,
            },
            // Empty append changes nothing.
            Case {
                log: &[1],
                after: 1,
                new: &[],
                want: &[1],
                want_unstable_from: 2,
            },
        ];
        for (number, case) in cases.iter().enumerate() {
            let mut log = log_of(case.log);
            let new: Vec<Entry> = case.new.iter().map(|&(t, i)| entry(t, i)).collect();
            let last_new = log.append_after(LogIndex(case.after), &new);
            assert_eq!(terms(&log), case.want, "case {number}: log");
            assert_eq!(
                last_new,
                LogIndex(case.after + case.new.len() as u64),
                "case {number}: last new"
            );
            assert_eq!(
                log.unstable_from,
                LogIndex(case.want_unstable_from),
                "case {number}: unstable_from"
            );
            log.check_invariants(&format!("case {number}"));
        }
    }

    #[test]
    #[should_panic(expected = "truncating committed entries")]
    fn truncating_a_committed_entry_panics() {
        let mut log = log_of(&[1, 1, 1]);
        log.commit_to(LogIndex(2));
        log.append_after(LogIndex(1), &[entry(2, 2)]);
    }

    #[test]
    fn first_index_of_term_stops_at_the_commit_index() {
        let mut log = log_of(&[1, 2, 2, 2, 2, 3]);
        assert_eq!(log.first_index_of_term_at(LogIndex(5)), LogIndex(2));
        log.commit_to(LogIndex(3));
        assert_eq!(log.first_index_of_term_at(LogIndex(5)), LogIndex(4));
        assert_eq!(log.first_index_of_term_at(LogIndex(6)), LogIndex(6));
    }

    #[test]
    fn last_index_of_term_finds_the_end_of_a_run_or_nothing() {
        let log = log_of(&[1, 2, 2, 4, 4]);
        assert_eq!(log.last_index_of_term(Term(2)), Some(LogIndex(3)));
        assert_eq!(log.last_index_of_term(Term(4)), Some(LogIndex(5)));
        assert_eq!(log.last_index_of_term(Term(3)), None);
    }

    #[test]
    fn persisted_reports_for_overwritten_entries_are_ignored() {
        let mut log = log_of(&[1]);
        log.push(entry(1, 2));
        log.push(entry(1, 3));
        let handed = log.take_unstable();
        assert_eq!(handed.len(), 2);
        // A new leader overwrites index 3 before storage reports.
        log.append_after(LogIndex(2), &[entry(2, 3)]);
        assert!(!log.persisted_to(EntryId::new(Term(1), LogIndex(3))));
        assert!(log.persisted_to(EntryId::new(Term(1), LogIndex(2))));
        assert_eq!(log.persisted(), LogIndex(2));
        // The new entry 3 was not handed out yet, so a report for it is premature.
        assert!(!log.persisted_to(EntryId::new(Term(2), LogIndex(3))));
        assert_eq!(log.take_unstable().len(), 1);
        assert!(log.persisted_to(EntryId::new(Term(2), LogIndex(3))));
    }

    #[test]
    fn compaction_keeps_terms_and_matching_at_the_new_offset() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.commit_to(LogIndex(3));
        let _ = log.take_committed(usize::MAX);
        log.compact(LogIndex(2));
        assert!(
            log.take_committed(usize::MAX).is_empty(),
            "applied up to 3 already"
        );
        assert_eq!(log.first_index(), LogIndex(3));
        assert_eq!(
            log.term(LogIndex(2)),
            Some(Term(1)),
            "the offset keeps its term"
        );
        assert_eq!(log.term(LogIndex(1)), None, "compacted away");
        assert!(log.matches(EntryId::new(Term(2), LogIndex(4))));
        assert_eq!(log.entries_from(LogIndex(1), usize::MAX), Vec::new());
        log.check_invariants("compacted");
    }

    #[test]
    fn restore_after_a_snapshot_drops_covered_entries() {
        let snapshot = SnapshotMeta::at(EntryId::new(Term(2), LogIndex(3)));
        let entries = vec![entry(1, 2), entry(2, 3), entry(2, 4)];
        let log = RaftLog::restore(snapshot, entries, LogIndex(1));
        assert_eq!(log.first_index(), LogIndex(4));
        assert_eq!(
            log.committed(),
            LogIndex(3),
            "a snapshot covers committed entries"
        );
        assert_eq!(log.applied(), LogIndex(3));
        log.check_invariants("restored");
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log() {
        let mut log = log_of(&[1, 1, 1]);
        log.install_snapshot(SnapshotMeta::at(EntryId::new(Term(3), LogIndex(10))));
        assert_eq!(log.last_id(), EntryId::new(Term(3), LogIndex(10)));
        assert_eq!(log.committed(), LogIndex(10));
        assert!(!log.has_unstable());
        log.append_after(LogIndex(10), &[entry(3, 11)]);
        assert_eq!(log.take_unstable().len(), 1);
        log.check_invariants("installed");
    }

    #[test]
    fn committed_entries_are_handed_out_in_bounded_slices() {
        let mut log = log_of(&[1, 1, 1, 1, 1]);
        log.commit_to(LogIndex(5));
        let slice_bytes = 2 * entry(1, 1).size_bytes();
        let slices: Vec<Vec<u64>> = std::iter::from_fn(|| {
            let slice = log.take_committed(slice_bytes);
            (!slice.is_empty()).then(|| slice.iter().map(|entry| entry.index.0).collect())
        })
        .collect();
        assert_eq!(slices, vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert_eq!(log.applied(), LogIndex(5));
        log.commit_to(LogIndex(5));
        assert!(log.take_committed(0).is_empty());
        let mut log = log_of(&[1, 1]);
        log.commit_to(LogIndex(2));
        assert_eq!(log.take_committed(0).len(), 1, "at least one entry");
    }

    #[test]
    fn restore_clamps_a_commit_hint_past_the_end() {
        let log = RaftLog::restore(SnapshotMeta::default(), vec![entry(1, 1)], LogIndex(9));
        assert_eq!(log.committed(), LogIndex(1));
        log.check_invariants("restore");
    }
}
