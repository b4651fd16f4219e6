//! Rate-limited warnings for what a peer, or anyone who reaches the peer port, can make
//! happen at will: frames the core drops for their terms, campaigns it refuses.
//!
//! Why: one log line per forged frame would let a flood of them fill the disk and drown
//! everything else the log says; no line at all would hide the attack. So each kind of
//! event is logged at most once per [`LOG_INTERVAL`], with how many happened since the last
//! line. The core only counts ([`TermRefusals`]); this module owns turning the counts into
//! lines (with `transport::log_limit`'s limiter, which the snapshot receiver uses too). It
//! decides nothing and reads no clock itself: the loop passes `now`.

use crate::raft::{Term, TermRefusals};
use crate::transport::log_limit::{LogLimiter, LOG_INTERVAL};
use std::time::Instant;

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
