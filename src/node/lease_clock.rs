//! The cluster's lease clock: the time a leader stamps on lease grants and TOUCHes
//! (`LeaseTime`), on `EndLeases`, and on the `Clock` entries that keep it fresh
//! (PROTOCOL.md §8). It owns no state that matters to correctness but the reading itself;
//! the replicated state only ever compares the times entries carry (`queue` module docs).
//!
//! # Why not the wall clock
//!
//! Leases are decided on one node and ended by possibly another: the leader that proposes
//! `EndLeases` may not be the one that granted the lease. With wall clocks, a new leader
//! whose clock runs ahead of its predecessor's would end every lease early by the skew,
//! and handing a leased message to a second consumer while the first still holds it is
//! exactly what §8 forbids. Wall clocks of different machines need not agree; what each
//! node does have is a monotonic clock ([`Instant`]) that measures elapsed time well.
//!
//! # The clock
//!
//! Every node, whatever its role, reads the latest time its applied log carries
//! (`Queue::clock_ms`, raised by every entry with a time) and runs on from it with its own
//! monotonic clock: the reading at instant `i` is `v + (i - a)`, where `v` is the largest
//! log time seen and `a` the instant it was seen (taking the larger reading whenever a new
//! log time arrives). So a leader's clock is its log's latest time plus the time elapsed
//! on this node since it saw it; a node that becomes leader goes on from where it was as a
//! follower, with nothing to start; a restarted node starts from the time in its snapshot
//! and log when it starts.
//!
//! Call "cluster time" the reading of an ideal clock that started with the first leader's
//! and ran at real speed ever since. Every reading is at or behind cluster time:
//!
//! - a leader's clock is a log time plus time elapsed since (its own proposals are its
//!   readings, so they too are at or behind cluster time when proposed, by induction);
//! - a log time `v` was at or behind cluster time when it was proposed, and the node saw it
//!   later than that, so `v + (i - a)` is at or behind cluster time at `i`;
//! - readings never go backwards: elapsed time only grows and a new log time is taken only
//!   when it is further on.
//!
//! The clock can only lag, and only a leader change adds lag: while one leader lasts, its
//! clock runs at real speed. A new leader's reading at its start lags its predecessor's
//! reading at that moment by the time between the proposal of the newest time it has seen
//! and the instant it saw it: a replication delay for a follower that was up to date, at
//! most the time since the last entry with a time, plus the election, for one that
//! restarted meanwhile. To bound that, a leader appends a `Clock` entry every
//! [`CLOCK_ENTRY_INTERVAL`] while any lease is live and no other entry carried its time
//! lately (a cluster without leases writes nothing).
//!
//! # The bound
//!
//! A lease of `L` ms granted with time `t` (or started at the log's time if that was
//! further on: `Queue` keeps every lease its full length) ends with the first `EndLeases`
//! at or after `t + L`, which the leader proposes once its reading passes `t + L` plus
//! `LEASE_END_MARGIN_MS` (`admission`). Since every reading is at or behind cluster time,
//! and the grant's `t` was read before the grant was answered, cluster time has advanced
//! by at least `L` since the answer when the lease ends: **it never ends early** (the
//! margin covers the commit between stamping and answering). It ends late by the margin,
//! plus one tick, plus, for each leader change while it was live, the lag that change
//! added: at most [`CLOCK_ENTRY_INTERVAL`] plus the election time (a few hundred ms with
//! the default timeouts), and mostly a replication delay. The bound assumes the monotonic
//! clocks run at real speed; their drift (parts per million) is negligible against `L`.

use std::time::{Duration, Instant};

/// How often a leader appends a `Clock` entry while leases are live and nothing else
/// carried its time: the most that the last time in the log trails the leader's clock,
/// and so the most lag a restarted node that becomes leader starts with, beyond the
/// election.
pub(super) const CLOCK_ENTRY_INTERVAL: Duration = Duration::from_millis(CLOCK_ENTRY_INTERVAL_MS);
const CLOCK_ENTRY_INTERVAL_MS: u64 = 400;

/// The lease clock of one node: a log time and the instant it was taken.
#[derive(Debug, Clone)]
pub(super) struct LeaseClock {
    /// The reading at `since`.
    base_ms: u64,
    since: Instant,
    /// When this node last proposed a `Clock` entry, to propose at most one per interval.
    clock_proposed: Option<Instant>,
}

impl LeaseClock {
    /// A clock that reads `log_ms` at `now`: the latest time this node's log carries.
    pub(super) fn new(log_ms: u64, now: Instant) -> LeaseClock {
        LeaseClock {
            base_ms: log_ms,
            since: now,
            clock_proposed: None,
        }
    }

    /// The reading at `now`, after taking `log_ms`, the latest time of the applied log:
    /// where the log is further on than this clock, the clock goes on from the log's time.
    pub(super) fn read(&mut self, log_ms: u64, now: Instant) -> u64 {
        let running = self.running_at(now);
        if log_ms > running {
            self.base_ms = log_ms;
            self.since = now.max(self.since);
            return log_ms;
        }
        running
    }

    fn running_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.since).as_millis();
        self.base_ms
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    /// On the leader: the time for a `Clock` entry if one is due at `now`, that is if a
    /// lease is live, the log's latest time trails the clock by [`CLOCK_ENTRY_INTERVAL`] or
    /// more, and this node proposed none within that interval (the last may not have been
    /// applied yet). The caller proposes it and reports with [`LeaseClock::clock_proposed`].
    pub(super) fn clock_entry_due(
        &mut self,
        log_ms: u64,
        leases_live: bool,
        now: Instant,
    ) -> Option<u64> {
        let interval_ms = CLOCK_ENTRY_INTERVAL_MS;
        let reading = self.read(log_ms, now);
        let recent = self
            .clock_proposed
            .is_some_and(|at| now.saturating_duration_since(at) < CLOCK_ENTRY_INTERVAL);
        (leases_live && !recent && reading.saturating_sub(log_ms) >= interval_ms).then_some(reading)
    }

    /// A `Clock` entry was proposed at `now`.
    pub(super) fn clock_proposed(&mut self, now: Instant) {
        self.clock_proposed = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(count: u64) -> Duration {
        Duration::from_millis(count)
    }

    #[test]
    fn it_runs_on_from_the_log_time_by_elapsed_monotonic_time() {
        let start = Instant::now();
        let mut clock = LeaseClock::new(1_000, start);
        assert_eq!(clock.read(1_000, start), 1_000);
        assert_eq!(clock.read(1_000, start + ms(250)), 1_250);
        // A log time behind the clock changes nothing.
        assert_eq!(clock.read(1_100, start + ms(300)), 1_300);
        // One further on is taken, and the clock runs on from it.
        assert_eq!(clock.read(2_000, start + ms(400)), 2_000);
        assert_eq!(clock.read(2_000, start + ms(500)), 2_100);
        // An instant earlier than the base reads the base: never backwards.
        assert_eq!(clock.read(0, start), 2_000);
    }

    /// Readings never go backwards and never run ahead of the largest log time seen plus
    /// the time elapsed since it was seen, whatever order log times arrive in.
    #[test]
    fn readings_are_monotonic_and_never_ahead_of_log_time_plus_elapsed() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
        let start = Instant::now();
        let mut clock = LeaseClock::new(0, start);
        let mut at_ms = 0u64;
        let mut last = 0u64;
        // Every log time seen, with the instant it was seen.
        let mut seen: Vec<(u64, u64)> = vec![(0, 0)];
        for _ in 0..2_000 {
            at_ms += rng.gen_range(0..50);
            let log_ms = rng.gen_range(0..at_ms + 100);
            let reading = clock.read(log_ms, start + ms(at_ms));
            seen.push((log_ms, at_ms));
            assert!(reading >= last, "backwards: {last} then {reading}");
            assert!(reading >= log_ms, "behind the log");
            let bound = seen
                .iter()
                .map(|&(log_ms, seen_ms)| log_ms + (at_ms - seen_ms))
                .max()
                .expect("one seen");
            assert_eq!(reading, bound, "at {at_ms} ms");
            last = reading;
        }
    }

    /// Two nodes whose wall clocks disagree by an hour: neither wall clock is read, so the
    /// follower that becomes leader after the first dies goes on from the log's times and
    /// ends the first leader's lease no earlier than its length after the grant, in the
    /// first leader's own (real) time.
    #[test]
    fn a_new_leader_continues_the_old_ones_clock_whatever_the_wall_clocks_say() {
        let real = Instant::now();
        // A's clock, started from a log whose latest time came from a wall clock an hour
        // ahead: only differences of times matter.
        let hour_ms = 3_600_000;
        let mut a = LeaseClock::new(hour_ms, real);
        let mut b = LeaseClock::new(0, real);
        // A grants a lease of 3 s at 100 ms real time; B applies each of A's entries 5 ms
        // after it was proposed.
        let grant_ms = a.read(hour_ms, real + ms(100));
        let deadline_ms = grant_ms + 3_000;
        b.read(grant_ms, real + ms(105));
        // A appends clock entries while the lease lives, then dies at 1,000 ms.
        let mut last_entry = grant_ms;
        for at in [500, 900] {
            last_entry = a.read(last_entry, real + ms(at));
            b.read(last_entry, real + ms(at + 5));
        }
        // B leads from 1,600 ms (an election), knowing nothing newer than A's last entry.
        let mut reading_at = |at: u64| b.read(last_entry, real + ms(at));
        let b_start = reading_at(1_600);
        assert_eq!(
            b_start,
            hour_ms + 1_595,
            "it lags by the replication delay only"
        );
        // Not due before 3 s of real time passed since the grant, due soon after.
        let due_at = (0..10_000)
            .map(|step| 1_600 + step * 10)
            .find(|&at| reading_at(at) >= deadline_ms)
            .expect("the lease ends");
        assert!(due_at >= 100 + 3_000, "ended early, at {due_at} ms");
        assert!(due_at <= 100 + 3_000 + 20, "ended late, at {due_at} ms");
    }

    /// A node restarted meanwhile has only its log's latest time to start from: it lags by
    /// the time since that entry, bounded by the clock entries' interval (plus the
    /// election), and so ends a lease late, never early.
    #[test]
    fn a_restarted_node_lags_by_at_most_the_clock_entry_interval_and_the_election() {
        let real = Instant::now();
        let mut a = LeaseClock::new(0, real);
        let grant_ms = a.read(0, real);
        let deadline_ms = grant_ms + 3_000;
        let interval_ms = CLOCK_ENTRY_INTERVAL_MS;
        // A appends clock entries on schedule and dies just before the next one is due.
        let mut log_ms = grant_ms;
        let mut at = 0;
        while at + interval_ms < 2_000 {
            at += interval_ms;
            let due = a.clock_entry_due(log_ms, true, real + ms(at));
            log_ms = due.expect("due every interval while a lease lives");
            a.clock_proposed(real + ms(at));
        }
        let died_ms = at + interval_ms - 1;
        let election_ms = 600;
        // B restarts at A's death (its log's latest time is the last clock entry), then
        // wins the election.
        let mut b = LeaseClock::new(log_ms, real + ms(died_ms + election_ms));
        let due_at = (0..10_000)
            .map(|step| died_ms + election_ms + step)
            .find(|&at| b.read(log_ms, real + ms(at)) >= deadline_ms)
            .expect("the lease ends");
        assert!(due_at >= 3_000, "ended early, at {due_at} ms");
        assert!(
            due_at <= 3_000 + interval_ms + election_ms,
            "ended later than the bound, at {due_at} ms"
        );
    }

    #[test]
    fn clock_entries_only_while_leases_live_and_at_most_one_per_interval() {
        let start = Instant::now();
        let mut clock = LeaseClock::new(0, start);
        let interval = CLOCK_ENTRY_INTERVAL;
        assert_eq!(clock.clock_entry_due(0, true, start + interval / 2), None);
        assert_eq!(
            clock.clock_entry_due(0, false, start + interval * 3),
            None,
            "an idle cluster writes nothing"
        );
        let due = clock.clock_entry_due(0, true, start + interval * 3);
        assert_eq!(due, Some(CLOCK_ENTRY_INTERVAL_MS * 3));
        clock.clock_proposed(start + interval * 3);
        // Not applied yet: the log still says 0, but one is in flight.
        assert_eq!(clock.clock_entry_due(0, true, start + interval * 3), None);
        // A busy log (grants carry the time) needs none.
        let now = start + interval * 5;
        let reading = clock.read(0, now);
        assert_eq!(clock.clock_entry_due(reading - 10, true, now), None);
        // An entry lost with its term: the next goes out after the interval.
        assert!(clock.clock_entry_due(0, true, now).is_some());
    }
}
