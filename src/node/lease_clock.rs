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
//! Only a leader reads it, and only once it has applied every entry of earlier terms (its
//! applied state is then its whole log's, `caught_up_in_term`). At that instant `a` it
//! takes the latest time its log carries (`Queue::clock_ms`), `v`, and reads `v + (i - a)`
//! at instant `i` for the rest of its term. Nothing else moves it: the log's later times
//! are its own readings. A new term, even on the same node, starts again from the log.
//! Until it has caught up, a leader proposes nothing that carries a time: leased GETs and
//! TOUCHes wait (`admission`), `EndLeases` and `Clock` entries are not due.
//!
//! # Why it never ends a lease early
//!
//! Call a leader's *offset* its reading minus the real instant: constant in its term, `v -
//! a`. A lease of `L` granted with time `t` by leader `j` at real instant `g` (`t = g +
//! o_j`) is answered after `g`; leader `k` proposes its end once its reading passes `t +
//! L`, at real instant `t + L - o_k`, which is at least `g + L` when `o_k <= o_j`. Leader
//! `k` ends only leases it has applied, so `j`'s entries are in `k`'s log, and that is
//! enough for `o_k <= o_j`, by induction over the leaders in log order: every time `k`'s
//! log carries up to `a_k` was stamped at or below its proposer's reading, so it is either
//! in the part of the log `j` started from (at most `v_j`), or stamped by `j` (at most
//! `v_j + (a_k - a_j)`), or by a leader `l` between them (at most `v_l + (a_k - a_l)`, with
//! `v_l - a_l <= v_j - a_j` by induction). So `v_k <= v_j + (a_k - a_j)`: `o_k <= o_j`.
//! (The queue may start a lease later than its `t`, at the log's time, `Queue`; later
//! only helps.)
//!
//! The induction needs `v_k` to cover every entry before `k`'s own in the log. Entries of
//! earlier terms that `k` has not applied yet may carry times above all it has applied
//! (their proposer's offset was higher); stamping before applying them would put `k`'s
//! lower offset before them in the log, and the next leader, starting from their higher
//! time, could end `k`'s grants early. So a leader catches up before it reads.
//!
//! The first version of this clock let every node run on from the largest log time it had
//! seen and keep that pace when it led again; a node that had seen a time early (a
//! long-running node, or a leader deposed while its successor had just restarted) then
//! read seconds ahead of a later grantor and ended its leases early (the membership
//! nemesis, seed 16002).
//!
//! # How late
//!
//! A lease ends late by `LEASE_END_MARGIN_MS` (`admission`), one tick, and, for each leader
//! change while it was live, the drop in offset that change made: the time from the
//! proposal of the last entry with a time to the new leader's catching up, that is at most
//! [`CLOCK_ENTRY_INTERVAL`] (a leader appends a `Clock` entry that often while any lease is
//! live and nothing else carried its time; a cluster without leases writes nothing), plus
//! the election and the new leader's first commit. The bound assumes the monotonic clocks
//! run at real speed; their drift (parts per million) is negligible against `L`.

use crate::raft::Term;
use std::time::{Duration, Instant};

/// How often a leader appends a `Clock` entry while leases are live and nothing else
/// carried its time: the most that the last time in the log trails the leader's clock,
/// and so the most lag a new leader starts with, beyond the election.
pub(super) const CLOCK_ENTRY_INTERVAL: Duration = Duration::from_millis(CLOCK_ENTRY_INTERVAL_MS);
const CLOCK_ENTRY_INTERVAL_MS: u64 = 400;

/// The lease clock of one node: while it leads a term (and has caught up in it), the log
/// time it started from and the instant it started.
#[derive(Debug, Clone, Default)]
pub(super) struct LeaseClock {
    leading: Option<Leading>,
}

#[derive(Debug, Clone)]
struct Leading {
    term: Term,
    /// The reading at `since`: the log's latest time when this leader caught up.
    base_ms: u64,
    since: Instant,
    /// When this leader last proposed a `Clock` entry, to propose at most one per interval.
    clock_proposed: Option<Instant>,
}

impl LeaseClock {
    /// The reading at `now` of the leader of `term`, which has applied every entry of
    /// earlier terms and whose log's latest time is `log_ms`. The first reading of a term
    /// starts the clock there; later ones run on from it, whatever `log_ms` says then.
    pub(super) fn read(&mut self, term: Term, log_ms: u64, now: Instant) -> u64 {
        let leading = self.leading_in(term, log_ms, now);
        let elapsed = now.saturating_duration_since(leading.since).as_millis();
        leading
            .base_ms
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    fn leading_in(&mut self, term: Term, log_ms: u64, now: Instant) -> &mut Leading {
        let leading = self.leading.take().filter(|leading| leading.term == term);
        self.leading.insert(leading.unwrap_or(Leading {
            term,
            base_ms: log_ms,
            since: now,
            clock_proposed: None,
        }))
    }

    /// On the leader of `term` (caught up): the time for a `Clock` entry if one is due at
    /// `now`, that is if a lease is live, the log's latest time trails the clock by
    /// [`CLOCK_ENTRY_INTERVAL`] or more, and this leader proposed none within that interval
    /// (the last may not have been applied yet). The caller proposes it and reports with
    /// [`LeaseClock::clock_proposed`].
    pub(super) fn clock_entry_due(
        &mut self,
        term: Term,
        log_ms: u64,
        leases_live: bool,
        now: Instant,
    ) -> Option<u64> {
        let reading = self.read(term, log_ms, now);
        let recent = self
            .leading
            .as_ref()
            .and_then(|leading| leading.clock_proposed)
            .is_some_and(|at| now.saturating_duration_since(at) < CLOCK_ENTRY_INTERVAL);
        let trailing = reading.saturating_sub(log_ms) >= CLOCK_ENTRY_INTERVAL_MS;
        (leases_live && !recent && trailing).then_some(reading)
    }

    /// A `Clock` entry was proposed at `now`.
    pub(super) fn clock_proposed(&mut self, now: Instant) {
        if let Some(leading) = &mut self.leading {
            leading.clock_proposed = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn ms(count: u64) -> Duration {
        Duration::from_millis(count)
    }

    #[test]
    fn a_term_starts_from_the_log_time_and_runs_on_at_real_speed() {
        let start = Instant::now();
        let mut clock = LeaseClock::default();
        assert_eq!(clock.read(Term(3), 1_000, start), 1_000);
        assert_eq!(clock.read(Term(3), 1_000, start + ms(250)), 1_250);
        // Within the term the log's times are this leader's own: they move nothing.
        assert_eq!(clock.read(Term(3), 9_000, start + ms(300)), 1_300);
        // An instant earlier than the start reads the start.
        assert_eq!(clock.read(Term(3), 0, start), 1_000);
        // A new term starts again from the log, even behind the last reading.
        assert_eq!(clock.read(Term(5), 1_200, start + ms(400)), 1_200);
        assert_eq!(clock.read(Term(5), 1_200, start + ms(500)), 1_300);
    }

    /// The bug the first version had (seed 16002 of the membership nemesis): node A read
    /// its clock for 100 s of an idle cluster (nothing in the log carried a time), node C
    /// restarted, led, and granted a lease on the log's time; when A led again it went on
    /// from its own, 100 s ahead, and ended the lease at once. Now A starts from the log.
    #[test]
    fn a_node_that_read_ahead_in_an_earlier_term_does_not_end_a_later_grant_early() {
        let real = Instant::now();
        let (mut a, mut c) = (LeaseClock::default(), LeaseClock::default());
        assert_eq!(a.read(Term(1), 0, real), 0);
        assert_eq!(a.read(Term(1), 0, real + ms(100_000)), 100_000);
        // C restarted at 99 s, leads term 2 from 100.5 s and grants 4 s at 101 s.
        let granted_at = 101_000;
        assert_eq!(c.read(Term(2), 0, real + ms(100_500)), 0);
        let grant_ms = c.read(Term(2), 0, real + ms(granted_at));
        assert_eq!(grant_ms, 500);
        let deadline_ms = grant_ms + 4_000;
        // A leads term 3 from 102 s; the grant is the log's latest time.
        let due_at = (102_000..200_000)
            .step_by(10)
            .find(|&at| a.read(Term(3), grant_ms, real + ms(at)) >= deadline_ms)
            .expect("the lease ends");
        assert!(due_at >= granted_at + 4_000, "ended early, at {due_at} ms");
        assert!(
            due_at <= granted_at + 4_000 + 1_000 + 10,
            "ended late, at {due_at} ms"
        );
    }

    /// A randomized history of leaderships on five nodes, each node keeping its clock
    /// across its terms: leaders catch up some time after they are elected, stamp grants,
    /// clock entries and `EndLeases` (a margin behind their reading), and lose their last
    /// entries at random when they die (a restarted node's clock is new). No leader's
    /// reading reaches a kept grant's deadline before the grant's length has passed in real
    /// time since it was stamped.
    #[test]
    fn no_leader_reaches_a_grants_deadline_before_its_length_has_passed() {
        struct Grant {
            stamped_at: u64,
            deadline_ms: u64,
            length_ms: u64,
        }
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let real = Instant::now();
            let mut clocks: Vec<LeaseClock> = vec![LeaseClock::default(); 5];
            // The kept log's times (stored values) and grants.
            let mut log_max_ms = 0u64;
            let mut grants: Vec<Grant> = Vec::new();
            let mut at = 0u64;
            for term in 1..60u64 {
                let node = rng.gen_range(0..5);
                if rng.gen_bool(0.3) {
                    clocks[node] = LeaseClock::default(); // restarted
                }
                at += rng.gen_range(0..3_000); // an election, or an idle spell
                let caught_up_at = at + rng.gen_range(0..200);
                let clock = &mut clocks[node];
                let started_ms = clock.read(Term(term), log_max_ms, real + ms(caught_up_at));
                // Every kept grant so far: when does this leader's reading reach it?
                for grant in &grants {
                    let reached_at = caught_up_at + grant.deadline_ms.saturating_sub(started_ms);
                    assert!(
                        reached_at >= grant.stamped_at + grant.length_ms,
                        "seed {seed}, term {term}: a deadline reached at {reached_at} ms, \
                         the grant was stamped at {} ms for {} ms",
                        grant.stamped_at,
                        grant.length_ms
                    );
                }
                // This leader's entries; the last few may be lost with its leadership.
                at = caught_up_at;
                let mut proposed = Vec::new();
                for _ in 0..rng.gen_range(0..20) {
                    at += rng.gen_range(0..500);
                    let reading = clock.read(Term(term), log_max_ms, real + ms(at));
                    let entry = match rng.gen_range(0..3) {
                        0 => {
                            let length_ms = rng.gen_range(1..5_000);
                            (reading, Some((at, length_ms)))
                        }
                        1 => (reading.saturating_sub(500), None), // EndLeases
                        _ => (reading, None),                     // Clock
                    };
                    proposed.push(entry);
                }
                let kept = rng.gen_range(0..=proposed.len());
                for (stored_ms, grant) in proposed.into_iter().take(kept) {
                    log_max_ms = log_max_ms.max(stored_ms);
                    if let Some((stamped_at, length_ms)) = grant {
                        grants.push(Grant {
                            stamped_at,
                            deadline_ms: stored_ms + length_ms,
                            length_ms,
                        });
                    }
                }
            }
        }
    }

    /// A new leader lags by the time since the log's last time (at most the clock entries'
    /// interval while a lease lives) plus its election: it ends a lease late by that much,
    /// never early.
    #[test]
    fn a_new_leader_lags_by_at_most_the_clock_entry_interval_and_the_election() {
        let real = Instant::now();
        let mut a = LeaseClock::default();
        let grant_ms = a.read(Term(1), 0, real);
        let deadline_ms = grant_ms + 3_000;
        let interval_ms = CLOCK_ENTRY_INTERVAL_MS;
        // A appends clock entries on schedule and dies just before the next one is due.
        let mut log_ms = grant_ms;
        let mut at = 0;
        while at + interval_ms < 2_000 {
            at += interval_ms;
            let due = a.clock_entry_due(Term(1), log_ms, true, real + ms(at));
            log_ms = due.expect("due every interval while a lease lives");
            a.clock_proposed(real + ms(at));
        }
        let died_ms = at + interval_ms - 1;
        let election_ms = 600;
        // B (restarted or not: it makes no difference) leads once caught up.
        let mut b = LeaseClock::default();
        let due_at = (0..10_000)
            .map(|step| died_ms + election_ms + step)
            .find(|&at| b.read(Term(2), log_ms, real + ms(at)) >= deadline_ms)
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
        let mut clock = LeaseClock::default();
        let term = Term(2);
        let interval = CLOCK_ENTRY_INTERVAL;
        assert_eq!(clock.clock_entry_due(term, 0, true, start), None);
        assert_eq!(
            clock.clock_entry_due(term, 0, true, start + interval / 2),
            None
        );
        assert_eq!(
            clock.clock_entry_due(term, 0, false, start + interval * 3),
            None,
            "an idle cluster writes nothing"
        );
        let due = clock.clock_entry_due(term, 0, true, start + interval * 3);
        assert_eq!(due, Some(CLOCK_ENTRY_INTERVAL_MS * 3));
        clock.clock_proposed(start + interval * 3);
        // Not applied yet: the log still says 0, but one is in flight.
        assert_eq!(
            clock.clock_entry_due(term, 0, true, start + interval * 3),
            None
        );
        // A busy log (grants carry the time) needs none.
        let now = start + interval * 5;
        let reading = clock.read(term, 0, now);
        assert_eq!(clock.clock_entry_due(term, reading - 10, true, now), None);
        // An entry lost with its term: the next goes out after the interval.
        assert!(clock.clock_entry_due(term, 0, true, now).is_some());
        // A new term forgets the last proposal.
        let later = Term(3);
        assert_eq!(clock.read(later, 0, now), 0);
        assert!(clock
            .clock_entry_due(later, 0, true, now + interval)
            .is_some());
    }
}
