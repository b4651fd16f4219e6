//! The retry policy of one client's calls, as a state machine without sockets or clocks.
//!
//! Why it exists: the rules for reaching a replicated queue (follow the leader, retry with
//! the same session key, bound every wait) are where a client quietly goes wrong (a retry
//! that takes effect twice, a redirect never followed, a call that waits forever), and two
//! drivers need the same ones: [`super::Client`] drives it blocking, one call at a time, and
//! the benchmark polls one per simulated client from a single `zmq::poll` loop. Here the
//! rules can be tested event by event.
//!
//! The rules: a call starts at the node that last answered decisively (else where the last
//! call left off). A `NOT_LEADER` that names the leader sends the call there at once; any
//! other refusal (`NOT_LEADER` without a hint, `UNAVAILABLE`, `TIMEOUT`, `SHUTTING_DOWN`)
//! or a request that could not even be queued sends it to the next node; silence for one
//! attempt timeout does too. After every node refused within one round, the next attempt
//! waits a back-off, doubled while it lasts (an election is probably under way). A node that
//! cannot be connected to is skipped; when none can, the call ends. At the call's deadline
//! it gives up, naming the last setback. A decisive reply ends the call even when it answers
//! an earlier attempt on another node: every attempt sends the same bytes, hence the same
//! `(client_id, seq)`, and the cluster answers a repeat with the first reply (PROTOCOL.md §5).
//!
//! Dropped connections: the driver watches its sockets' connections (ZeroMQ socket monitors)
//! and reports when the one to a node closes or cannot be made. A drop of the node the call
//! waits on sends the call to the next node at once, as silence would one attempt timeout
//! later: the request may or may not have reached the node, exactly as when a reply is lost,
//! so the same rule makes the retry safe (writes carry their session key; the only call sent
//! without one is a read, and per-node reports are never retried). A drop counts towards the
//! round of refusals, like a request that could not be queued. Until its connection is made
//! again, a dropped node is skipped when choosing the next node and a leader hint naming it
//! is ignored, unless every node is down. The attempt timeout stays as it is: a node that is
//! merely slow keeps its connection and is still left only after one timeout.
//!
//! Hedges: a stopped node (SIGSTOP, a stalled VM) keeps its connections too, so neither a
//! drop nor, for one attempt timeout, silence tells the call to leave it, while the other
//! nodes elect a new leader within one election timeout. So when the node of the latest
//! attempt has been silent for the hedge delay ([`Timing::hedge_after`]; by default the
//! default election timeout's upper bound, by when a new leader exists if the node stopped
//! when the request left), the call also sends the same bytes to another node, and again
//! every [`HEDGE_INTERVAL`] while the silence lasts, each time to the next node in turn,
//! never to the node waited on nor to one whose connection is down. The wait on the first
//! node goes on: its reply still counts, and its attempt timeout still moves the call as
//! before (the hedges then start over from the new attempt). A hedge's `NOT_LEADER` that
//! names a third node sends a hedge there at once; one that names the node waited on means
//! the others still hear from it (it is slow, not stopped), so the call keeps waiting and
//! hedges again at the next interval; other refusals from hedges only steer the next hedge.
//! This is safe for the same reason as every retry: the same `(client_id, seq)` is applied
//! at most once and whichever node answers decisively first ends the call. Every call that
//! goes through this machine is a write with a session key or a read; per-node reports
//! (status, stats) never do, and are never retried. No hedge leaves while backing off.
//!
//! What it owns: where the call is (target, timers, back-off, hedges, the last setback), which
//! nodes' connections are down, and which node to start the next call at. What it must not
//! do: see bytes, sockets or the clock (the driver encodes a call once and passes the time
//! in), or leave a call without a timer.

use std::time::{Duration, Instant};

use crate::protocol::ErrorCode;

/// The pause after every node refused within one round, doubled up to the maximum while
/// the refusals last.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(800);

/// While the node of the latest attempt stays silent past the hedge delay, another hedge
/// leaves this often (see the module docs).
pub(crate) const HEDGE_INTERVAL: Duration = Duration::from_millis(100);

/// Whether a failure code means "not here, not now" (another attempt, later or on another
/// node, may succeed) rather than a decisive answer: the node is not the leader, has no
/// quorum, could not commit in time, or is stopping. A leader whose uncommitted proposals
/// are at their byte bound answers `UNAVAILABLE` too, so writes back off while it catches
/// up. `QUOTA` is decisive: the cluster's state is over a quota, and retrying cannot help
/// until consumers make room, which is the application's call, not the library's.
/// `FORBIDDEN` is decisive too: the client's rights only change when an operator edits them.
pub(crate) fn is_retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeader
            | ErrorCode::Unavailable
            | ErrorCode::Timeout
            | ErrorCode::ShuttingDown
    )
}

/// How long an attempt and a call may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timing {
    /// Silence for this long sends the call to the next node.
    pub attempt_timeout: Duration,
    /// The call gives up this long after it began.
    pub deadline: Duration,
    /// Silence for this long also sends the call to another node, and again every
    /// [`HEDGE_INTERVAL`], while the node waited on keeps its attempt; `None`: never.
    pub hedge_after: Option<Duration>,
}

/// A reply to the call in flight, as the machine sees it. `V` is the driver's decisive
/// answer, carried through untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer<V> {
    /// Retrying cannot change it: success, or a failure such as `NO_SUCH_TOPIC`.
    Decisive(V),
    /// The node cannot serve now (`NOT_LEADER`, `UNAVAILABLE`, `TIMEOUT`, `SHUTTING_DOWN`);
    /// `hint` is the index of the node its leader hint names, when it named one.
    Retry {
        code: ErrorCode,
        hint: Option<usize>,
    },
}

/// Why the driver could not send an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendFailure {
    /// The queue towards the node is full of requests it never took: the attempt is lost.
    QueueFull,
    /// The node cannot be connected to at all (a bad endpoint).
    Unreachable,
}

/// Why an attempt after the first was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryReason {
    /// A `NOT_LEADER` named the leader: straight there.
    Redirect,
    /// A node refused without naming another: next node (or, after a round of refusals,
    /// the same ones after a back-off).
    Refused(ErrorCode),
    /// The last attempt was lost: no reply within the attempt timeout, or it could not be
    /// sent.
    Silence,
    /// The connection to the node of the last attempt dropped before it answered.
    Dropped,
    /// The node waited on was silent past the hedge delay: the same request to another
    /// node too, the wait on the first one going on.
    Hedge,
}

/// What an attempt met when it did not end the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Setback {
    /// `node` answered that it cannot serve now.
    Refused { node: usize, code: ErrorCode },
    /// No reply from `node` within the attempt timeout.
    Silence { node: usize },
    /// The request could not be queued for `node`.
    QueueFull { node: usize },
    /// `node` could not be connected to.
    Unreachable { node: usize },
    /// The connection to `node` dropped (or could not be made) while the call waited on it.
    Dropped { node: usize },
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallResult<V> {
    Answered(V),
    /// The deadline passed; for a write the outcome is unknown. `last` is the last setback
    /// (`None` only if no attempt was made).
    GaveUp {
        last: Option<Setback>,
    },
    /// No node could be connected to.
    Unreachable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Finish<V> {
    /// From the call's beginning to its end, retries included: what a user waits.
    pub latency: Duration,
    pub result: CallResult<V>,
}

/// What the driver does next for this client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step<V> {
    /// Send the call's bytes to this node; `retry` is `None` for the first attempt.
    Send {
        node: usize,
        retry: Option<RetryReason>,
    },
    /// Nothing until a reply arrives or [`CallMachine::wake_at`] passes.
    Wait,
    Finished(Finish<V>),
}

/// Where a call goes after a setback.
struct Next {
    node: usize,
    reason: RetryReason,
    /// Whether the setback counts towards a round of refusals.
    counts_in_round: bool,
    node_count: usize,
}

#[derive(Clone, Debug)]
struct Call {
    started: Instant,
    /// The node of the latest attempt.
    target: usize,
    /// Silence until then means the attempt is lost. Invariant: `attempt_until <= deadline`.
    attempt_until: Instant,
    deadline: Instant,
    /// Refusals (and lost sends) since the last back-off; a full round of them means no
    /// node can serve.
    refusals_in_round: usize,
    backoff: Duration,
    /// Backing off: the next attempt leaves then, with this reason.
    resume: Option<(Instant, RetryReason)>,
    last: Option<Setback>,
    /// Nodes that could not be connected to during this call.
    unreachable: Vec<usize>,
    /// Hedging on `target`'s silence; `None` when hedging is off or while backing off.
    hedge: Option<Hedge>,
}

/// The hedges of one attempt: requests to other nodes while the node of the attempt is
/// silent. Invariant: no hedge goes to the attempt's node.
#[derive(Clone, Copy, Debug)]
struct Hedge {
    /// When the next hedge leaves.
    at: Instant,
    /// The node of the latest hedge; `None` before the first.
    node: Option<usize>,
    /// A node that a hedge's `NOT_LEADER` named, for the next hedge to go to.
    hinted: Option<usize>,
    /// Whether a hint was followed at once since the last hedge left: at most one is followed
    /// per interval, so two nodes naming each other cannot bounce the call at wire speed.
    redirected: bool,
}

impl Hedge {
    /// The hedges of an attempt sent at `now`.
    fn after(now: Instant, timing: Timing) -> Option<Hedge> {
        timing.hedge_after.map(|delay| Hedge {
            at: now + delay,
            node: None,
            hinted: None,
            redirected: false,
        })
    }
}

/// One client's calls, one at a time. The driver passes the number of nodes it knows with
/// every event, since leader hints may teach it new ones; node indexes are the driver's.
#[derive(Clone, Debug)]
pub(crate) struct CallMachine {
    timing: Timing,
    /// The node that answered the last call decisively; cleared by any setback.
    leader: Option<usize>,
    /// Where the next call starts when no leader is known: where the last one left off.
    next_node: usize,
    /// Nodes whose connection dropped or could not be made, and has not been made since.
    /// Invariant: no duplicates.
    down: Vec<usize>,
    call: Option<Call>,
}

impl CallMachine {
    /// A client whose first call starts at node `first`.
    pub(crate) fn new(timing: Timing, first: usize) -> CallMachine {
        CallMachine {
            timing,
            leader: None,
            next_node: first,
            down: Vec::new(),
            call: None,
        }
    }

    pub(crate) fn timing(&self) -> Timing {
        self.timing
    }

    /// Replaces the timing for the calls that begin from now on (a call in flight keeps
    /// its timers): a blocking GET lengthens it for its one call.
    pub(crate) fn set_timing(&mut self, timing: Timing) {
        self.timing = timing;
    }

    /// The node that answered the last call decisively, unless a setback came since.
    pub(crate) fn leader(&self) -> Option<usize> {
        self.leader
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.call.is_some()
    }

    /// Starts a call: the first attempt goes to the leader, else where the last call left
    /// off.
    ///
    /// Panics if a call is already in flight: one request at a time.
    pub(crate) fn begin<V>(&mut self, now: Instant, node_count: usize) -> Step<V> {
        assert!(
            self.call.is_none(),
            "a closed-loop client began a call while one was in flight"
        );
        assert!(node_count > 0, "a client needs at least one node");
        let target = self.live_from(
            self.leader.unwrap_or(self.next_node) % node_count,
            node_count,
        );
        let deadline = now + self.timing.deadline;
        self.call = Some(Call {
            started: now,
            target,
            attempt_until: (now + self.timing.attempt_timeout).min(deadline),
            deadline,
            refusals_in_round: 0,
            backoff: BACKOFF_MIN,
            resume: None,
            last: None,
            unreachable: Vec::new(),
            hedge: Hedge::after(now, self.timing),
        });
        Step::Send {
            node: target,
            retry: None,
        }
    }

    /// Drops the call in flight without an outcome (the driver met an error that retrying
    /// cannot mend). Where the next call starts is left as it was.
    pub(crate) fn abandon(&mut self) {
        self.call = None;
    }

    /// A reply from node `from` to the call in flight (the driver drops replies to earlier
    /// calls). A decisive reply ends the call even if it answers an earlier attempt on
    /// another node: same bytes, same session key, same reply. A refusal counts only from
    /// the node of the latest attempt, and not while backing off.
    pub(crate) fn on_answer<V>(
        &mut self,
        now: Instant,
        from: usize,
        answer: Answer<V>,
        node_count: usize,
    ) -> Step<V> {
        let Some(call) = self.call.as_ref() else {
            return Step::Wait; // A duplicate after the call ended.
        };
        match answer {
            Answer::Decisive(value) => {
                self.leader = Some(from);
                self.next_node = from;
                self.finish(now, CallResult::Answered(value))
            }
            Answer::Retry { code, hint } => {
                if call.resume.is_some() {
                    return Step::Wait;
                }
                if from != call.target {
                    // A hedge's refusal, or an earlier attempt's: the latest attempt is
                    // still out.
                    return self.on_hedge_refused(now, from, code, hint, node_count);
                }
                // A hint naming a node whose connection is down names a leader that was:
                // the refusing node has not heard of the new one yet.
                let hinted = hint.filter(|&hinted| {
                    hinted != from && hinted < node_count && !self.is_down(hinted, node_count)
                });
                let reason = match (code, hinted) {
                    (ErrorCode::NotLeader, Some(_)) => RetryReason::Redirect,
                    _ => RetryReason::Refused(code),
                };
                let next = Next {
                    node: hinted
                        .unwrap_or_else(|| self.live_from((from + 1) % node_count, node_count)),
                    reason,
                    counts_in_round: true,
                    node_count,
                };
                self.retry(now, Setback::Refused { node: from, code }, next)
            }
        }
    }

    /// The driver could not send the attempt to `node` (the latest attempt's target). A hedge
    /// that could not be sent is only lost: the next one leaves at its time.
    pub(crate) fn on_send_failed<V>(
        &mut self,
        now: Instant,
        node: usize,
        failure: SendFailure,
        node_count: usize,
    ) -> Step<V> {
        let after = self.live_from((node + 1) % node_count, node_count);
        let Some(call) = self.call.as_mut() else {
            return Step::Wait;
        };
        if node != call.target {
            return Step::Wait;
        }
        let next = |counts_in_round| Next {
            node: after,
            reason: RetryReason::Silence,
            counts_in_round,
            node_count,
        };
        match failure {
            // Lost at once: as good as a refusal for counting rounds, so a cluster whose
            // queues are all full is not hammered without a pause.
            SendFailure::QueueFull => self.retry(now, Setback::QueueFull { node }, next(true)),
            SendFailure::Unreachable => {
                if !call.unreachable.contains(&node) {
                    call.unreachable.push(node);
                }
                if call.unreachable.len() >= node_count {
                    self.leader = None;
                    return self.finish(now, CallResult::Unreachable);
                }
                self.retry(now, Setback::Unreachable { node }, next(false))
            }
        }
    }

    /// Called once `now` has reached [`CallMachine::wake_at`]: a back-off ends, an attempt
    /// was met with silence, or the deadline passed. Earlier calls are harmless.
    pub(crate) fn on_timer<V>(&mut self, now: Instant, node_count: usize) -> Step<V> {
        let timing = self.timing;
        let Some(target) = self.call.as_ref().map(|call| call.target % node_count) else {
            return Step::Wait;
        };
        // Where the call resumes after a back-off, and where silence sends it.
        let resume_node = self.live_from(target, node_count);
        let after = self.live_from((target + 1) % node_count, node_count);
        let Some(call) = self.call.as_mut() else {
            return Step::Wait;
        };
        if let Some((resume_at, reason)) = call.resume {
            if now < resume_at {
                return Step::Wait;
            }
            if now >= call.deadline {
                let last = call.last;
                return self.finish(now, CallResult::GaveUp { last });
            }
            call.resume = None;
            call.target = resume_node;
            call.attempt_until = (now + timing.attempt_timeout).min(call.deadline);
            call.hedge = Hedge::after(now, timing);
            return Step::Send {
                node: call.target,
                retry: Some(reason),
            };
        }
        if now < call.attempt_until {
            if call.hedge.is_some_and(|hedge| now >= hedge.at) {
                return self.hedge(now, node_count);
            }
            return Step::Wait;
        }
        let node = call.target;
        let next = Next {
            node: after,
            reason: RetryReason::Silence,
            counts_in_round: false,
            node_count,
        };
        self.retry(now, Setback::Silence { node }, next)
    }

    /// The connection to `node` dropped (the other end closed or reset it) or could not be
    /// made (refused). The node is skipped from now on, until
    /// [`CallMachine::on_connection_made`]. If the call waits on it, the call goes to the next
    /// node at once, as after silence (see the module docs); a drop of another node, or one
    /// during a back-off, changes only where later attempts go.
    pub(crate) fn on_connection_lost<V>(
        &mut self,
        now: Instant,
        node: usize,
        node_count: usize,
    ) -> Step<V> {
        if !self.down.contains(&node) {
            self.down.push(node);
        }
        if self.leader == Some(node) {
            self.leader = None;
        }
        let after = self.live_from((node + 1) % node_count, node_count);
        let Some(call) = self.call.as_ref() else {
            return Step::Wait;
        };
        if call.resume.is_some() {
            return Step::Wait;
        }
        if node != call.target {
            if call.hedge.is_some_and(|hedge| hedge.node == Some(node)) {
                // The latest hedge is lost: the next one leaves at once.
                return self.hedge(now, node_count);
            }
            return Step::Wait;
        }
        let next = Next {
            node: after,
            reason: RetryReason::Dropped,
            counts_in_round: true,
            node_count,
        };
        self.retry(now, Setback::Dropped { node }, next)
    }

    /// The connection to `node` is made (again): it is no longer skipped.
    pub(crate) fn on_connection_made(&mut self, node: usize) {
        self.down.retain(|&down| down != node);
    }

    /// Whether `node`'s connection is known to be down while some other node's is not: a
    /// node is skipped only while there is somewhere else to go.
    fn is_down(&self, node: usize, node_count: usize) -> bool {
        self.down.contains(&node) && (0..node_count).any(|other| !self.down.contains(&other))
    }

    /// `start`, or the first node after it (in turn) whose connection is not known to be
    /// down; `start` itself when every node is down.
    fn live_from(&self, start: usize, node_count: usize) -> usize {
        (0..node_count)
            .map(|offset| (start + offset) % node_count)
            .find(|&node| !self.down.contains(&node))
            .unwrap_or(start)
    }

    /// When [`CallMachine::on_timer`] must be called next; `None` when idle.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        let call = self.call.as_ref()?;
        Some(match (call.resume, call.hedge) {
            (Some((resume_at, _)), _) => resume_at,
            (None, Some(hedge)) => hedge.at.min(call.attempt_until),
            (None, None) => call.attempt_until,
        })
    }

    /// Sends the next hedge of the latest attempt: to the node a hedge's `NOT_LEADER` named,
    /// else to the next node in turn after the latest hedge's (after the attempt's node for
    /// the first hedge), never to the attempt's node nor to a node whose connection is down.
    /// With no such node, it waits for the next interval.
    fn hedge<V>(&mut self, now: Instant, node_count: usize) -> Step<V> {
        let down = &self.down;
        let Some(call) = self.call.as_mut() else {
            return Step::Wait;
        };
        let target = call.target;
        let Some(hedge) = call.hedge.as_mut() else {
            return Step::Wait;
        };
        hedge.at = now + HEDGE_INTERVAL;
        hedge.redirected = false;
        let usable = |node: usize| node != target && node < node_count && !down.contains(&node);
        let start = hedge.node.unwrap_or(target);
        let next = hedge
            .hinted
            .take()
            .filter(|&node| usable(node))
            .or_else(|| {
                (1..=node_count)
                    .map(|offset| (start + offset) % node_count)
                    .find(|&node| usable(node))
            });
        match next {
            Some(node) => {
                hedge.node = Some(node);
                Step::Send {
                    node,
                    retry: Some(RetryReason::Hedge),
                }
            }
            None => Step::Wait,
        }
    }

    /// A refusal from a node other than the latest attempt's. Only the latest hedge's
    /// counts, and only for where hedges go: a `NOT_LEADER` naming the node waited on means
    /// the other nodes still hear from it, so the wait goes on and the next hedge leaves at
    /// its time; one naming a third node sends a hedge there (at once, once per interval);
    /// any other refusal leaves the next hedge to go to the next node at its time. The
    /// call's own course (its attempt timeout, its round of refusals) is not touched.
    fn on_hedge_refused<V>(
        &mut self,
        now: Instant,
        from: usize,
        code: ErrorCode,
        hint: Option<usize>,
        node_count: usize,
    ) -> Step<V> {
        let down = &self.down;
        let Some(call) = self.call.as_mut() else {
            return Step::Wait;
        };
        let target = call.target;
        let Some(hedge) = call.hedge.as_mut().filter(|hedge| hedge.node == Some(from)) else {
            return Step::Wait; // An earlier attempt's or an earlier hedge's refusal.
        };
        let hinted = hint.filter(|&hinted| {
            code == ErrorCode::NotLeader
                && hinted != from
                && hinted != target
                && hinted < node_count
                && !down.contains(&hinted)
        });
        match hinted {
            Some(node) if !hedge.redirected => {
                hedge.redirected = true;
                hedge.node = Some(node);
                hedge.at = now + HEDGE_INTERVAL;
                Step::Send {
                    node,
                    retry: Some(RetryReason::Redirect),
                }
            }
            Some(node) => {
                hedge.hinted = Some(node);
                Step::Wait
            }
            None => Step::Wait,
        }
    }

    /// After a setback: gives up at the deadline, else moves the call to `next`, at once or,
    /// when a whole round of nodes refused, after a back-off.
    fn retry<V>(&mut self, now: Instant, setback: Setback, next: Next) -> Step<V> {
        let timing = self.timing;
        let attempt_timeout = timing.attempt_timeout;
        let call = self
            .call
            .as_mut()
            .expect("retry is only called with a call in flight");
        call.last = Some(setback);
        call.target = next.node;
        self.leader = None;
        self.next_node = next.node;
        if now >= call.deadline {
            return self.finish(
                now,
                CallResult::GaveUp {
                    last: Some(setback),
                },
            );
        }
        if next.counts_in_round {
            call.refusals_in_round += 1;
        }
        if call.refusals_in_round >= next.node_count {
            // Every node said it cannot serve: an election is probably under way.
            call.refusals_in_round = 0;
            let resume_at = (now + call.backoff).min(call.deadline);
            call.backoff = (call.backoff * 2).min(BACKOFF_MAX);
            call.resume = Some((resume_at, next.reason));
            call.attempt_until = call.deadline;
            call.hedge = None;
            return Step::Wait;
        }
        call.attempt_until = (now + attempt_timeout).min(call.deadline);
        call.hedge = Hedge::after(now, timing);
        Step::Send {
            node: next.node,
            retry: Some(next.reason),
        }
    }

    fn finish<V>(&mut self, now: Instant, result: CallResult<V>) -> Step<V> {
        let call = self
            .call
            .take()
            .expect("finish is only called with a call in flight");
        Step::Finished(Finish {
            latency: now.saturating_duration_since(call.started),
            result,
        })
    }
}

#[cfg(test)]
mod tests;
