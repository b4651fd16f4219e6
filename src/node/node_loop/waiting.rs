//! Blocking GETs on the loop (PROTOCOL.md §9): when a GET with `wait_ms` is parked, when
//! parked waiters are served (their GETs proposed), and how each wait ends. The book itself
//! (`node::waiters`) says why the check is made on the applied state.
//!
//! The loop touches waiters at four points: admission ([`NodeLoop::admit_blocking_get`]),
//! every proposal of a GET ([`NodeLoop::note_proposed_get`]), the answer of an applied
//! entry ([`NodeLoop::answer_applied`]), and once per round ([`NodeLoop::tend_waiters`]),
//! which ends waits (`EMPTY` when due; `NOT_LEADER`, `SHUTTING_DOWN` or `UNAVAILABLE` at
//! once when this node stops leading, stops, or halts) and serves the topics whose ready
//! messages now exceed what the GETs in flight may take. Rounds happen at least once a
//! tick, so a parked waiter costs nothing between ticks and its wait ends within one.

use super::NodeLoop;
use crate::node::waiters::{self, Parked, Waiter};
use crate::protocol::{ErrorCode, FetchOptions, Operation, Outcome, SessionKey};
use crate::queue::Command;
use crate::raft::{EntryId, Role};
use crate::transport::client::Ticket;
use std::time::{Duration, Instant};

/// What admission does with a `message GET`.
pub(super) enum BlockingGet {
    /// Answered or parked: nothing to propose now.
    Held,
    /// Propose it; once proposed, a blocking GET is a waiter in flight.
    Propose(Option<Waiter>),
}

impl NodeLoop {
    /// A `message GET` arrived: a blocking one (`wait_ms` > 0) on a leader whose applied
    /// state has nothing to hand out (or that has not yet applied an entry of its term) is
    /// parked behind the topic's earlier waiters. Anything else is proposed at once: a GET
    /// that is not blocking, a topic unknown to the applied state (`NO_SUCH_TOPIC` comes from
    /// the log), a retry whose session already holds its reply or whose first attempt's GET
    /// is in flight.
    pub(super) fn admit_blocking_get(
        &mut self,
        ticket: Ticket,
        operation: &Operation,
        session: &Option<SessionKey>,
        received_at: Instant,
    ) -> BlockingGet {
        let Operation::Fetch { topic, options } = operation else {
            return BlockingGet::Propose(None);
        };
        let wait_ms = options.wait_ms.unwrap_or(0);
        if wait_ms == 0 || self.core.role() != Role::Leader {
            return BlockingGet::Propose(None);
        }
        let waiter = Waiter::new(
            ticket,
            topic.clone(),
            *options,
            session.clone(),
            received_at + Duration::from_millis(wait_ms),
        );
        let replays = session
            .as_ref()
            .is_some_and(|key| !self.queue.session_would_execute(key));
        if replays {
            return BlockingGet::Propose(Some(waiter));
        }
        if self.caught_up_in_term() && !self.waiters.is_parked_on(topic) {
            match self.queue.ready(topic) {
                None => return BlockingGet::Propose(Some(waiter)),
                Some(ready) if ready > self.waiters.demand(self.core.term(), topic) => {
                    return BlockingGet::Propose(Some(waiter))
                }
                Some(_) => {}
            }
        }
        // A retry whose first attempt's GET is in flight follows it into the log and
        // replays its reply, rather than wait for a message its key already took.
        let first_in_flight = session.as_ref().is_some_and(|key| {
            self.waiters.has_in_flight() && self.waiters.in_flight_with_session(key)
        });
        if first_in_flight {
            return BlockingGet::Propose(Some(waiter));
        }
        match self.waiters.park(waiter) {
            // A retry joined the request it repeats: both get the retry's reply.
            Parked::InLine | Parked::Joined => {}
            Parked::Full(waiter) => self.fail(
                waiter.ticket,
                ErrorCode::Unavailable,
                &format!(
                    "this leader already holds {} waiting GETs, its limit; retry shortly",
                    waiters::WAITERS_MAX
                ),
            ),
        }
        BlockingGet::Held
    }

    /// Every entry of earlier terms is applied: the applied state is the one this leader's
    /// proposals build on.
    pub(super) fn caught_up_in_term(&self) -> bool {
        self.applied_term == self.core.term()
    }

    /// A GET was proposed at `entry`: it may take messages the applied state still shows.
    pub(super) fn note_proposed_get(&mut self, entry: EntryId, command: &Command) {
        if let Some((topic, count)) = waiters::demand_of(command) {
            self.waiters
                .note_proposed(entry.term, entry.index, topic, count);
        }
    }

    /// The outcome of an applied entry for `ticket`: a waiter without a session whose GET
    /// found nothing after all goes back to its place while its wait lasts.
    /// Otherwise it is answered, and so are the requests it superseded ([`NodeLoop::answer`]).
    pub(super) fn answer_applied(&mut self, ticket: Ticket, outcome: Outcome) {
        if self.waiters.has_in_flight() {
            if let Some(waiter) = self.waiters.take_in_flight(ticket) {
                let empty = matches!(
                    &outcome,
                    Outcome::Failed(error) if error.code == ErrorCode::Empty
                );
                if empty && waiter.session.is_none() && Instant::now() < waiter.wait_until {
                    self.waiters.repark(waiter);
                    return;
                }
                // Back in flight: `answer` ends it with its superseded requests.
                self.waiters.start(waiter);
            }
        }
        self.answer(ticket, outcome);
    }

    /// Ends a parked waiter's wait: it and the requests it superseded get `code`.
    fn end_wait(&mut self, waiter: Waiter, code: ErrorCode, why: &str) {
        for ticket in waiter.tickets() {
            self.fail(ticket, code, why);
        }
    }

    /// An in-flight waiter is being answered `outcome`: so are the requests it superseded.
    /// Empty, and without a clone, unless a retry joined a parked request.
    pub(super) fn superseded_replies(
        &mut self,
        ticket: Ticket,
        outcome: &Outcome,
    ) -> Vec<(Ticket, Outcome)> {
        match self.waiters.take_in_flight(ticket) {
            Some(waiter) => waiter
                .superseded()
                .iter()
                .map(|&older| (older, outcome.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Once per round: ends the waits that are over and serves what can be served.
    pub(super) fn tend_waiters(&mut self, now: Instant) {
        self.waiters.note_applied(self.applied);
        if !self.waiters.has_parked() {
            return;
        }
        let ending = if self.halted {
            Some((
                ErrorCode::Unavailable,
                "this node has stopped serving (its log says why); use another node",
            ))
        } else if self.shutdown.is_some() {
            Some((
                ErrorCode::ShuttingDown,
                "the node is shutting down; nothing was handed out, retry on another node",
            ))
        } else if self.core.role() != Role::Leader {
            Some((
                ErrorCode::NotLeader,
                "this node stopped leading while the GET waited; nothing was handed out",
            ))
        } else {
            None
        };
        if let Some((code, why)) = ending {
            for waiter in self.waiters.take_all_parked() {
                self.end_wait(waiter, code, why);
            }
            return;
        }
        for waiter in self.waiters.take_expired(now) {
            let why = format!(
                "topic {:?} had no message for {} ms",
                waiter.topic,
                waiter.options.wait_ms.unwrap_or(0)
            );
            self.end_wait(waiter, ErrorCode::Empty, &why);
        }
        // Caught up in this term: the applied state is this leader's, and its lease clock
        // can be read.
        let Some(now_ms) = self.lease_clock_ms() else {
            return;
        };
        let applied_moved = self.waiters_seen_applied != self.applied;
        self.waiters_seen_applied = self.applied;
        let term = self.core.term();
        for topic in self.waiters.topics_to_serve(applied_moved) {
            let mut available = match self.queue.ready(&topic) {
                Some(ready) => ready.saturating_sub(self.waiters.demand(term, &topic)),
                // Parked before the topic's state was known: the log answers.
                None => usize::MAX,
            };
            while available > 0 {
                let Some(waiter) = self.waiters.pop_front(&topic) else {
                    break;
                };
                available = available.saturating_sub(waiter.takes());
                self.serve(waiter, now, now_ms);
            }
        }
    }

    /// Proposes a parked waiter's GET, with the lease clock's `now_ms`.
    fn serve(&mut self, waiter: Waiter, now: Instant, now_ms: u64) {
        let operation = Operation::Fetch {
            topic: waiter.topic.clone(),
            options: FetchOptions {
                wait_ms: None,
                ..waiter.options
            },
        };
        let command = match Command::from_operation(operation, now_ms) {
            Ok(command) => command,
            Err(read) => unreachable!("a GET is a command, not {read:?}"),
        };
        let deadline = now + self.config.request_timeout;
        let (ticket, session) = (waiter.ticket, waiter.session.clone());
        // In flight before proposing: a refusal answers it, and its superseded requests,
        // through `answer`.
        self.waiters.start(waiter);
        self.propose_command(ticket, session, command, deadline);
    }

    /// At the end of shutdown: whoever still waits is answered.
    pub(super) fn answer_waiters_at_exit(&mut self) {
        for waiter in self.waiters.take_all_parked() {
            self.end_wait(
                waiter,
                ErrorCode::ShuttingDown,
                "the node is shutting down; nothing was handed out, retry on another node",
            );
        }
    }
}
