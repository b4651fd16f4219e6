//! Rate-limited warnings for what a peer, or anyone who reaches the peer port, can make
//! happen at will: frames the core drops for their terms, campaigns it refuses.
//!
//! Why: one log line per forged frame would let a flood of them fill the disk and drown
//! everything else the log says; no line at all would hide the attack. So each kind of
//! event is logged at most once per [`LOG_INTERVAL`], with how many happened since the last
//! line. The core only counts ([`TermRefusals`]); this module owns turning the counts into
//! lines. It decides nothing and reads no clock itself: the loop passes `now`.

use crate::raft::{Term, TermRefusals};
use std::time::{Duration, Instant};

/// At most one line per kind of event per this long.
pub(super) const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Counts occurrences of one kind of event and says when a line about them is due.
#[derive(Debug)]
pub(super) struct LogLimiter {
    interval: Duration,
    last_logged: Option<Instant>,
    /// Occurrences since the last line.
    pending: u64,
}

impl LogLimiter {
    pub(super) fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last_logged: None,
            pending: 0,
        }
    }

    /// `count` more occurrences.
    pub(super) fn record(&mut self, count: u64) {
        self.pending = self.pending.saturating_add(count);
    }

    /// The occurrences to log now, if any happened and the last line is at least an
    /// interval old (the first line is due at once). Those are then forgotten.
    pub(super) fn take_due(&mut self, now: Instant) -> Option<u64> {
        if self.pending == 0 {
            return None;
        }
        if let Some(last) = self.last_logged {
            if now.saturating_duration_since(last) < self.interval {
                return None;
            }
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// Logs the increase of the core's [`TermRefusals`], each kind rate-limited.
#[derive(Debug)]
pub(super) struct TermRefusalLog {
    seen: TermRefusals,
    absurd_term: LogLimiter,
    malformed: LogLimiter,
    campaign_refused: LogLimiter,
}

impl TermRefusalLog {
    pub(super) fn new() -> TermRefusalLog {
        TermRefusalLog {
            seen: TermRefusals::default(),
            absurd_term: LogLimiter::new(LOG_INTERVAL),
            malformed: LogLimiter::new(LOG_INTERVAL),
            campaign_refused: LogLimiter::new(LOG_INTERVAL),
        }
    }

    /// Called every round with the core's counters: records what is new and logs what is
    /// due, so a burst's count is logged within an interval even if nothing follows it.
    pub(super) fn observe(&mut self, now: Instant, refusals: TermRefusals) {
        let seen = std::mem::replace(&mut self.seen, refusals);
        self.absurd_term
            .record(refusals.absurd_term.saturating_sub(seen.absurd_term));
        self.malformed
            .record(refusals.malformed.saturating_sub(seen.malformed));
        self.campaign_refused.record(
            refusals
                .campaign_refused
                .saturating_sub(seen.campaign_refused),
        );
        // Formatted only when a line is due: this runs every round.
        let last = || match refusals.last_dropped {
            Some((from, term)) => format!("the last claimed to be from node {from}, term {term}"),
            None => String::new(),
        };
        if let Some(count) = self.absurd_term.take_due(now) {
            log::warn!(
                "dropped {count} peer message(s) at a term beyond {} (forged or corrupt; {})",
                Term::MAX_SANE,
                last()
            );
        }
        if let Some(count) = self.malformed.take_due(now) {
            log::warn!(
                "dropped {count} peer message(s) whose terms or indexes no honest node sends \
                 (forged or corrupt; {})",
                last()
            );
        }
        if let Some(count) = self.campaign_refused.take_due(now) {
            log::error!(
                "refused to campaign {count} time(s): this node's term is at or beyond {}, \
                 the highest it may reach; wipe its data dir and restart it with --rejoin",
                Term::MAX_SANE
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_occurrence_at_once_then_at_most_once_per_interval_with_the_count() {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let mut limiter = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(limiter.take_due(at(0)), None, "nothing happened");
        limiter.record(1);
        assert_eq!(
            limiter.take_due(at(0)),
            Some(1),
            "the first line is due at once"
        );
        limiter.record(5);
        assert_eq!(limiter.take_due(at(10)), None, "within the interval");
        limiter.record(994);
        assert_eq!(limiter.take_due(at(999)), None, "still within the interval");
        assert_eq!(
            limiter.take_due(at(1000)),
            Some(999),
            "one line for the burst, with its count"
        );
        assert_eq!(limiter.take_due(at(5000)), None, "nothing new");
        limiter.record(2);
        assert_eq!(
            limiter.take_due(at(5000)),
            Some(2),
            "a quiet spell: at once"
        );
        limiter.record(u64::MAX);
        assert_eq!(limiter.take_due(at(6000)), Some(u64::MAX), "saturates");
    }
}
