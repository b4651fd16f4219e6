//! Requests the node loop has started and not yet answered: writes waiting for their entry
//! to be applied, reads waiting for leadership to be confirmed and then for the state machine
//! to catch up, each with a deadline.
//!
//! Why a type of its own: every request must get exactly one answer, whichever way it ends
//! (applied, overwritten by a new leader, read aborted, deadline passed, shutdown). Keeping
//! the bookkeeping here, free of sockets and the core, lets that be tested directly.
//!
//! Deadlines are kept in arrival order. Every request gets the same timeout, so arrival
//! order is deadline order and expiring is popping the front: O(1) per request, no scans.
//! An entry there whose request has already been answered is skipped when it comes up.
//!
//! Beside them, [`UncommittedBytes`] counts what the leader's proposals hold until they
//! commit, which is not the same set: a write answered `TIMEOUT` leaves its entry in the log,
//! still uncommitted. Admission refuses writes over its bound, so a leader that cannot
//! commit (no quorum, a stalled disk) holds a bounded log instead of running out of memory.

use crate::raft::{EntryId, LogIndex, Term};
use crate::transport::client::Ticket;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

/// How a write ended, for the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEnd {
    /// Its entry was applied: answer with the state machine's outcome.
    Applied,
    /// Another entry took its place (a new leader overwrote it): it never took effect.
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingWrite {
    term: Term,
    ticket: Ticket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingRead {
    ticket: Ticket,
    /// Set once a quorum confirmed leadership: answer when applied reaches it.
    index: Option<LogIndex>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Write(EntryId),
    Read(u64),
}

#[derive(Debug, Default)]
pub struct PendingRequests {
    /// Writes by log index. Invariant: at most one per index (a newer proposal at an index
    /// means the older one's entry was overwritten).
    writes: BTreeMap<LogIndex, PendingWrite>,
    /// Reads by read id.
    reads: HashMap<u64, PendingRead>,
    /// Confirmed reads ordered by the index they wait for. Invariant: `(index, id)` is here
    /// iff `reads[id].index == Some(index)`.
    confirmed: BTreeSet<(LogIndex, u64)>,
    /// Arrival order, which is deadline order. May hold keys already answered.
    deadlines: VecDeque<(Instant, Key)>,
}

impl PendingRequests {
    pub fn new() -> PendingRequests {
        PendingRequests::default()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.reads.is_empty()
    }

    /// Remembers a write proposed at `entry`. Returns the ticket of an older write at the same
    /// index, whose entry has necessarily been overwritten: answer it as lost.
    #[must_use]
    pub fn add_write(
        &mut self,
        entry: EntryId,
        ticket: Ticket,
        deadline: Instant,
    ) -> Option<Ticket> {
        self.deadlines.push_back((deadline, Key::Write(entry)));
        let replaced = self.writes.insert(
            entry.index,
            PendingWrite {
                term: entry.term,
                ticket,
            },
        );
        replaced.map(|older| older.ticket)
    }

    /// The entry at `applied` was applied: the write waiting there, if any, and how it ended.
    pub fn take_write(&mut self, applied: EntryId) -> Option<(Ticket, WriteEnd)> {
        let write = self.writes.remove(&applied.index)?;
        let end = if write.term == applied.term {
            WriteEnd::Applied
        } else {
            WriteEnd::Lost
        };
        Some((write.ticket, end))
    }

    pub fn add_read(&mut self, read_id: u64, ticket: Ticket, deadline: Instant) {
        self.deadlines.push_back((deadline, Key::Read(read_id)));
        let previous = self.reads.insert(
            read_id,
            PendingRead {
                ticket,
                index: None,
            },
        );
        assert!(previous.is_none(), "read id {read_id} used twice");
    }

    /// Leadership was confirmed for `read_id`; it may be answered once `index` is applied.
    /// Unknown ids (already expired) are ignored.
    pub fn confirm_read(&mut self, read_id: u64, index: LogIndex) {
        if let Some(read) = self.reads.get_mut(&read_id) {
            if let Some(previous) = read.index.replace(index) {
                self.confirmed.remove(&(previous, read_id));
            }
            self.confirmed.insert((index, read_id));
        }
    }

    /// The read will never be confirmed.
    pub fn abort_read(&mut self, read_id: u64) -> Option<Ticket> {
        let read = self.reads.remove(&read_id)?;
        if let Some(index) = read.index {
            self.confirmed.remove(&(index, read_id));
        }
        Some(read.ticket)
    }

    /// Confirmed reads whose index is applied, in index order.
    pub fn take_ready_reads(&mut self, applied: LogIndex) -> Vec<Ticket> {
        let mut ready = Vec::new();
        while let Some(&(index, read_id)) = self.confirmed.first() {
            if index > applied {
                break;
            }
            self.confirmed.pop_first();
            let read = self
                .reads
                .remove(&read_id)
                .expect("invariant: every confirmed read is pending");
            ready.push(read.ticket);
        }
        ready
    }

    /// Removes and returns every request whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Ticket> {
        let mut expired = Vec::new();
        while let Some(&(deadline, key)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            match key {
                Key::Write(entry) => {
                    if self
                        .writes
                        .get(&entry.index)
                        .is_some_and(|write| write.term == entry.term)
                    {
                        let write = self.writes.remove(&entry.index).expect("just seen");
                        expired.push(write.ticket);
                    }
                }
                Key::Read(read_id) => expired.extend(self.abort_read(read_id)),
            }
        }
        expired
    }

    /// Removes and returns everything (shutdown, storage failure).
    pub fn take_all(&mut self) -> Vec<Ticket> {
        let mut all: Vec<Ticket> = self.writes.values().map(|write| write.ticket).collect();
        all.extend(self.reads.values().map(|read| read.ticket));
        self.writes.clear();
        self.reads.clear();
        self.confirmed.clear();
        self.deadlines.clear();
        all
    }
}

/// What an uncommitted entry is counted as besides its command's bytes: the log entry,
/// the pending request and its deadline, and the copies on their way to the WAL and the
/// peers are of this order, so that tiny proposals are not free either.
pub const UNCOMMITTED_ENTRY_OVERHEAD_BYTES: usize = 128;

/// The bytes of this node's own proposals, in its current leadership, that are not known to
/// be committed yet. Pure bookkeeping: the loop tells it the term and the commit index.
///
/// Entries proposed in one term are in index order and only commit or, once the leader is
/// deposed (a new term), get overwritten; so releasing is popping the front, and a new term
/// or losing the lead forgets everything: a re-elected leader starts counting from zero,
/// as etcd's raft does with its uncommitted size.
#[derive(Debug, Default)]
pub struct UncommittedBytes {
    /// The term the entries were proposed in.
    term: Term,
    /// Index order. Invariant: `bytes` is the sum of the sizes.
    entries: VecDeque<(LogIndex, usize)>,
    bytes: usize,
}

impl UncommittedBytes {
    /// What a proposal of `command_bytes` counts as.
    pub fn size_of(command_bytes: usize) -> usize {
        command_bytes.saturating_add(UNCOMMITTED_ENTRY_OVERHEAD_BYTES)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets entries at or below `committed`; everything if `leading` is not the term they
    /// were proposed in (`None`: not the leader).
    pub fn release(&mut self, leading: Option<Term>, committed: LogIndex) {
        if leading != Some(self.term) {
            self.entries.clear();
            self.bytes = 0;
            return;
        }
        while let Some(&(index, size)) = self.entries.front() {
            if index > committed {
                break;
            }
            self.entries.pop_front();
            self.bytes -= size;
        }
    }

    /// Whether a proposal of `size` (see [`UncommittedBytes::size_of`]) fits under `max`.
    /// With nothing uncommitted, anything does: a bound below one entry then means one
    /// write in flight at a time, never none.
    pub fn admits(&self, size: usize, max: usize) -> bool {
        self.entries.is_empty() || self.bytes.saturating_add(size) <= max
    }

    /// A proposal of `size` was appended at `entry`.
    pub fn add(&mut self, entry: EntryId, size: usize) {
        if entry.term != self.term {
            self.entries.clear();
            self.bytes = 0;
            self.term = entry.term;
        }
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|&(last, _)| last < entry.index),
            "proposals of one term come in index order"
        );
        self.entries.push_back((entry.index, size));
        self.bytes += size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn uncommitted_bytes_are_released_by_commit_and_forgotten_with_the_lead() {
        let mut uncommitted = UncommittedBytes::default();
        assert!(
            uncommitted.admits(1000, 10),
            "nothing waits: one always fits"
        );
        uncommitted.add(entry(2, 5), 100);
        uncommitted.add(entry(2, 6), 200);
        uncommitted.add(entry(2, 8), 300);
        assert_eq!(uncommitted.bytes(), 600);
        assert!(uncommitted.admits(400, 1000));
        assert!(!uncommitted.admits(401, 1000));
        uncommitted.release(Some(Term(2)), LogIndex(4));
        assert_eq!(uncommitted.bytes(), 600, "nothing of ours committed yet");
        uncommitted.release(Some(Term(2)), LogIndex(7));
        assert_eq!(uncommitted.bytes(), 300, "5 and 6 committed");
        uncommitted.release(None, LogIndex(7));
        assert_eq!(uncommitted.bytes(), 0, "not leading: nothing of ours waits");
        uncommitted.add(entry(2, 9), 50);
        uncommitted.release(Some(Term(3)), LogIndex(7));
        assert_eq!(uncommitted.bytes(), 0, "a new term: a new leadership");
        uncommitted.add(entry(3, 10), 70);
        uncommitted.add(entry(4, 12), 80);
        assert_eq!(
            uncommitted.bytes(),
            80,
            "a proposal in a new term starts over"
        );
        uncommitted.release(Some(Term(4)), LogIndex(12));
        assert_eq!(uncommitted.bytes(), 0);
        assert_eq!(UncommittedBytes::size_of(10), 138);
    }

    fn entry(term: u64, index: u64) -> EntryId {
        EntryId::new(Term(term), LogIndex(index))
    }

    #[test]
    fn a_write_ends_applied_only_if_its_own_entry_was_applied() {
        let now = Instant::now();
        let mut pending = PendingRequests::new();
        assert_eq!(pending.add_write(entry(2, 5), Ticket(1), now), None);
        assert_eq!(pending.add_write(entry(2, 6), Ticket(2), now), None);
        assert_eq!(pending.take_write(entry(2, 4)), None, "nothing waits at 4");
        assert_eq!(
            pending.take_write(entry(2, 5)),
            Some((Ticket(1), WriteEnd::Applied))
        );
        assert_eq!(
            pending.take_write(entry(3, 6)),
            Some((Ticket(2), WriteEnd::Lost)),
            "a term-3 entry at 6 means ours (term 2) was overwritten"
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn a_new_proposal_at_a_pending_index_evicts_the_overwritten_one() {
        let now = Instant::now();
        let mut pending = PendingRequests::new();
        assert_eq!(pending.add_write(entry(2, 5), Ticket(1), now), None);
        assert_eq!(
            pending.add_write(entry(4, 5), Ticket(2), now),
            Some(Ticket(1))
        );
        assert_eq!(pending.writes.len() + pending.reads.len(), 1);
        // The older deadline must not expire the newer write at the same index.
        let later = now + Duration::from_secs(1);
        let mut fresh = PendingRequests::new();
        assert_eq!(fresh.add_write(entry(2, 5), Ticket(1), now), None);
        assert_eq!(
            fresh.add_write(entry(4, 5), Ticket(2), later),
            Some(Ticket(1))
        );
        assert_eq!(fresh.take_expired(now), Vec::<Ticket>::new());
        assert_eq!(fresh.take_expired(later), vec![Ticket(2)]);
    }

    #[test]
    fn reads_are_answered_once_confirmed_and_applied() {
        let now = Instant::now();
        let mut pending = PendingRequests::new();
        pending.add_read(1, Ticket(10), now);
        pending.add_read(2, Ticket(20), now);
        pending.add_read(3, Ticket(30), now);
        assert_eq!(
            pending.take_ready_reads(LogIndex(100)),
            Vec::<Ticket>::new(),
            "unconfirmed"
        );
        pending.confirm_read(2, LogIndex(7));
        pending.confirm_read(1, LogIndex(9));
        pending.confirm_read(99, LogIndex(1)); // Unknown: ignored.
        assert_eq!(pending.take_ready_reads(LogIndex(6)), Vec::<Ticket>::new());
        assert_eq!(pending.take_ready_reads(LogIndex(7)), vec![Ticket(20)]);
        assert_eq!(pending.take_ready_reads(LogIndex(10)), vec![Ticket(10)]);
        assert_eq!(pending.abort_read(3), Some(Ticket(30)));
        assert_eq!(pending.abort_read(3), None);
        assert!(pending.is_empty());
    }

    #[test]
    fn expiry_takes_each_request_once_in_deadline_order() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut pending = PendingRequests::new();
        assert_eq!(pending.add_write(entry(1, 1), Ticket(1), at(10)), None);
        pending.add_read(7, Ticket(2), at(20));
        assert_eq!(pending.add_write(entry(1, 2), Ticket(3), at(30)), None);
        pending.add_read(8, Ticket(4), at(40));
        pending.confirm_read(8, LogIndex(5));
        // Answered before its deadline: must not come back as expired.
        assert_eq!(
            pending.take_write(entry(1, 2)),
            Some((Ticket(3), WriteEnd::Applied))
        );
        assert_eq!(pending.take_expired(at(5)), Vec::<Ticket>::new());
        assert_eq!(pending.take_expired(at(20)), vec![Ticket(1), Ticket(2)]);
        assert_eq!(pending.take_expired(at(100)), vec![Ticket(4)]);
        assert_eq!(pending.take_ready_reads(LogIndex(10)), Vec::<Ticket>::new());
        assert!(pending.is_empty());
        assert!(pending.deadlines.is_empty());
    }

    #[test]
    fn take_all_answers_everything_once() {
        let now = Instant::now();
        let mut pending = PendingRequests::new();
        assert_eq!(pending.add_write(entry(1, 1), Ticket(1), now), None);
        pending.add_read(1, Ticket(2), now);
        pending.confirm_read(1, LogIndex(3));
        let mut all = pending.take_all();
        all.sort();
        assert_eq!(all, vec![Ticket(1), Ticket(2)]);
        assert!(pending.is_empty());
        assert_eq!(pending.take_expired(now), Vec::<Ticket>::new());
        assert_eq!(pending.take_ready_reads(LogIndex(10)), Vec::<Ticket>::new());
    }
}
