//! Rate limiting for log lines about what anyone who reaches a port can make happen at will
//! (forged frames, refused transfers).
//!
//! Why: one log line per forged frame would let a flood of them fill the disk and drown
//! everything else the log says; no line at all would hide the attack. So each kind of event
//! is logged at most once per [`LOG_INTERVAL`], with how many happened since the last line.
//! Used by the snapshot receiver here and by the node loop for the core's term refusals. It
//! reads no clock: callers pass `now`.

use std::time::{Duration, Instant};

/// At most one line per kind of event per this long.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Counts occurrences of one kind of event and says when a line about them is due.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last_logged: Option<Instant>,
    /// Occurrences since the last line.
    pending: u64,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last_logged: None,
            pending: 0,
        }
    }

    /// `count` more occurrences.
    pub fn record(&mut self, count: u64) {
        self.pending = self.pending.saturating_add(count);
    }

    /// The occurrences to log now, if any happened and the last line is at least an
    /// interval old (the first line is due at once). Those are then forgotten.
    pub fn take_due(&mut self, now: Instant) -> Option<u64> {
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
