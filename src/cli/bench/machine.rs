//! One simulated client's call, as a state machine without sockets or clocks: the driver
//! feeds it the time, the replies (already classified) and timer expiries, and it says what
//! to do next: send the call's bytes to a node, wait, or report the call finished.
//!
//! Why it exists apart from the driver: the retry rules are where a benchmark quietly lies
//! (a retry that double-counts, a redirect that is never followed, a call that waits
//! forever), and here they can be tested reply by reply. The rules are the client library's
//! (`crate::client`): follow a `NOT_LEADER` leader hint at once, otherwise try the next node;
//! after every node refused in one round, back off (doubling, capped); after silence for one
//! attempt timeout, try the next node; give up at the call's deadline. Every attempt of a
//! call sends the same bytes, hence the same `(client_id, seq)`, so a retried write takes
//! effect at most once.
//!
//! What it must not do: pick a new `seq` for a retry (the driver encodes a call once, when it
//! begins), or ever wait without a deadline.

use std::time::{Duration, Instant};

use crate::protocol::ErrorCode;

/// The pause after every node refused within one round, doubled while it lasts.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub(super) const BACKOFF_MAX: Duration = Duration::from_millis(800);

/// How long an attempt and a call may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Timing {
    /// Silence for this long sends the call to the next node.
    pub attempt_timeout: Duration,
    /// The call gives up this long after it began.
    pub deadline: Duration,
}

/// A decisive reply: retrying cannot change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// `success: true` to a PUT.
    Done,
    /// `success: true` with a message, to a GET.
    Message,
    /// `EMPTY` to a GET: the topic has no message left.
    Empty,
    /// Any other decisive failure (`NO_SUCH_TOPIC`, `TOO_LARGE`, `SESSION_EXPIRED`...).
    Failed(ErrorCode),
    /// A reply that makes no sense for the operation (a topic list, a status report).
    Unexpected,
}

/// A reply as the machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Decisive(Verdict),
    /// The node cannot serve now (`NOT_LEADER`, `UNAVAILABLE`, `TIMEOUT`, `SHUTTING_DOWN`);
    /// `hint` is the node index its leader hint names, when it named one.
    Retry {
        code: ErrorCode,
        hint: Option<usize>,
    },
}

/// Why an attempt after the first was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RetryReason {
    /// A `NOT_LEADER` named the leader: straight there.
    Redirect,
    /// A node refused without naming another: next node (or, after a round of refusals,
    /// the same ones after a back-off).
    Refused(ErrorCode),
    /// No reply within the attempt timeout.
    Silence,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CallResult {
    Answered(Verdict),
    /// The deadline passed; for a write the outcome is unknown. `last` is the last refusal,
    /// `None` if the last attempt met silence.
    GaveUp {
        last: Option<ErrorCode>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Finish {
    /// From the call's first send to its end, retries included: what a user waits.
    pub latency: Duration,
    pub result: CallResult,
}

/// What the driver does next for this client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Send the call's bytes to this node; `retry` is `None` for the first attempt.
    Send {
        node: usize,
        retry: Option<RetryReason>,
    },
    /// Nothing until a reply arrives or [`ClientMachine::wake_at`] passes.
    Wait,
    Finished(Finish),
}

#[derive(Clone, Debug)]
struct Call {
    started: Instant,
    /// The node of the latest attempt.
    target: usize,
    /// Silence until then means the attempt is lost. Invariant: `attempt_until <= deadline`.
    attempt_until: Instant,
    deadline: Instant,
    /// Refusals since the last back-off; a full round of them means no node can serve.
    refusals_in_round: usize,
    backoff: Duration,
    /// Backing off: the next attempt leaves then, with this reason.
    resume: Option<(Instant, RetryReason)>,
    last_refusal: Option<ErrorCode>,
}

/// One closed-loop client: at most one call at a time.
#[derive(Clone, Debug)]
pub(super) struct ClientMachine {
    timing: Timing,
    /// Where the next call starts: the node that answered the last one decisively.
    preferred: usize,
    call: Option<Call>,
}

impl ClientMachine {
    /// A client that starts its first call at node `first`.
    pub(super) fn new(timing: Timing, first: usize) -> ClientMachine {
        ClientMachine {
            timing,
            preferred: first,
            call: None,
        }
    }

    pub(super) fn is_busy(&self) -> bool {
        self.call.is_some()
    }

    /// Starts a call: the first attempt goes to the node that served the last one.
    ///
    /// Panics if a call is already in flight: the client is closed-loop.
    pub(super) fn begin(&mut self, now: Instant, node_count: usize) -> Step {
        assert!(
            self.call.is_none(),
            "a closed-loop client began a call while one was in flight"
        );
        assert!(node_count > 0, "a client needs at least one node");
        let target = self.preferred % node_count;
        let deadline = now + self.timing.deadline;
        self.call = Some(Call {
            started: now,
            target,
            attempt_until: (now + self.timing.attempt_timeout).min(deadline),
            deadline,
            refusals_in_round: 0,
            backoff: BACKOFF_MIN,
            resume: None,
            last_refusal: None,
        });
        Step::Send {
            node: target,
            retry: None,
        }
    }

    /// A reply from node `from` to the call in flight (the driver drops replies to earlier
    /// calls). A decisive reply ends the call even if it answers an earlier attempt on
    /// another node: same bytes, same session key, same reply.
    pub(super) fn on_answer(
        &mut self,
        now: Instant,
        from: usize,
        answer: Answer,
        node_count: usize,
    ) -> Step {
        let Some(call) = self.call.as_mut() else {
            return Step::Wait; // A duplicate after the call ended.
        };
        match answer {
            Answer::Decisive(verdict) => {
                self.preferred = from;
                self.finish(now, CallResult::Answered(verdict))
            }
            Answer::Retry { code, hint } => {
                if from != call.target || call.resume.is_some() {
                    // An earlier attempt's refusal: the latest attempt is still out.
                    return Step::Wait;
                }
                call.last_refusal = Some(code);
                if now >= call.deadline {
                    let last = call.last_refusal;
                    return self.finish(now, CallResult::GaveUp { last });
                }
                call.refusals_in_round += 1;
                let hinted = hint.filter(|&hinted| hinted != from && hinted < node_count);
                let reason = match (code, hinted) {
                    (ErrorCode::NotLeader, Some(_)) => RetryReason::Redirect,
                    _ => RetryReason::Refused(code),
                };
                call.target = hinted.unwrap_or((call.target + 1) % node_count);
                if call.refusals_in_round >= node_count {
                    // Every node said it cannot serve: an election is probably under way.
                    call.refusals_in_round = 0;
                    let resume_at = (now + call.backoff).min(call.deadline);
                    call.backoff = (call.backoff * 2).min(BACKOFF_MAX);
                    call.resume = Some((resume_at, reason));
                    call.attempt_until = call.deadline;
                    return Step::Wait;
                }
                call.attempt_until = (now + self.timing.attempt_timeout).min(call.deadline);
                Step::Send {
                    node: call.target,
                    retry: Some(reason),
                }
            }
        }
    }

    /// Called once `now` has reached [`ClientMachine::wake_at`]: a back-off ends, an attempt
    /// was met with silence, or the deadline passed.
    pub(super) fn on_timer(&mut self, now: Instant, node_count: usize) -> Step {
        let timing = self.timing;
        let Some(call) = self.call.as_mut() else {
            return Step::Wait;
        };
        if let Some((resume_at, reason)) = call.resume {
            if now < resume_at {
                return Step::Wait;
            }
            if now >= call.deadline {
                let last = call.last_refusal;
                return self.finish(now, CallResult::GaveUp { last });
            }
            call.resume = None;
            call.target %= node_count;
            call.attempt_until = (now + timing.attempt_timeout).min(call.deadline);
            return Step::Send {
                node: call.target,
                retry: Some(reason),
            };
        }
        if now < call.attempt_until {
            return Step::Wait;
        }
        if now >= call.deadline {
            return self.finish(now, CallResult::GaveUp { last: None });
        }
        call.last_refusal = None;
        call.target = (call.target + 1) % node_count;
        call.attempt_until = (now + timing.attempt_timeout).min(call.deadline);
        Step::Send {
            node: call.target,
            retry: Some(RetryReason::Silence),
        }
    }

    /// When [`ClientMachine::on_timer`] must be called next; `None` when idle.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        let call = self.call.as_ref()?;
        Some(match call.resume {
            Some((resume_at, _)) => resume_at,
            None => call.attempt_until,
        })
    }

    fn finish(&mut self, now: Instant, result: CallResult) -> Step {
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
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        attempt_timeout: Duration::from_millis(100),
        deadline: Duration::from_millis(1000),
    };

    fn at(start: Instant, milliseconds: u64) -> Instant {
        start + Duration::from_millis(milliseconds)
    }

    fn send(node: usize, retry: Option<RetryReason>) -> Step {
        Step::Send { node, retry }
    }

    fn finished(latency_ms: u64, result: CallResult) -> Step {
        Step::Finished(Finish {
            latency: Duration::from_millis(latency_ms),
            result,
        })
    }

    /// What happens to a call, one event at a time, on a 3-node cluster.
    #[derive(Clone, Copy, Debug)]
    enum Event {
        Reply {
            at_ms: u64,
            from: usize,
            answer: Answer,
        },
        Timer {
            at_ms: u64,
        },
    }

    const NOT_LEADER_HINT_2: Answer = Answer::Retry {
        code: ErrorCode::NotLeader,
        hint: Some(2),
    };
    const NOT_LEADER_NO_HINT: Answer = Answer::Retry {
        code: ErrorCode::NotLeader,
        hint: None,
    };
    const DONE: Answer = Answer::Decisive(Verdict::Done);

    #[test]
    fn calls_follow_the_client_library_retry_rules() {
        use Event::{Reply, Timer};
        let cases: Vec<(&str, Vec<(Event, Step)>)> = vec![
            (
                "answered at once",
                vec![(
                    Reply {
                        at_ms: 3,
                        from: 0,
                        answer: DONE,
                    },
                    finished(3, CallResult::Answered(Verdict::Done)),
                )],
            ),
            (
                "redirect to the hinted leader, same call",
                vec![
                    (
                        Reply {
                            at_ms: 1,
                            from: 0,
                            answer: NOT_LEADER_HINT_2,
                        },
                        send(2, Some(RetryReason::Redirect)),
                    ),
                    (
                        Reply {
                            at_ms: 4,
                            from: 2,
                            answer: DONE,
                        },
                        finished(4, CallResult::Answered(Verdict::Done)),
                    ),
                ],
            ),
            (
                "no hint: next node",
                vec![(
                    Reply {
                        at_ms: 1,
                        from: 0,
                        answer: NOT_LEADER_NO_HINT,
                    },
                    send(1, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                )],
            ),
            (
                "a refusal from an earlier attempt's node is ignored",
                vec![
                    (
                        Reply {
                            at_ms: 1,
                            from: 0,
                            answer: NOT_LEADER_HINT_2,
                        },
                        send(2, Some(RetryReason::Redirect)),
                    ),
                    (
                        Reply {
                            at_ms: 2,
                            from: 0,
                            answer: NOT_LEADER_NO_HINT,
                        },
                        Step::Wait,
                    ),
                ],
            ),
            (
                "a decisive answer to an earlier attempt ends the call",
                vec![
                    (Timer { at_ms: 100 }, send(1, Some(RetryReason::Silence))),
                    (
                        Reply {
                            at_ms: 120,
                            from: 0,
                            answer: DONE,
                        },
                        finished(120, CallResult::Answered(Verdict::Done)),
                    ),
                ],
            ),
            (
                "a timer before the attempt timeout does nothing",
                vec![(Timer { at_ms: 99 }, Step::Wait)],
            ),
            (
                "silence: next node each attempt timeout",
                vec![
                    (Timer { at_ms: 100 }, send(1, Some(RetryReason::Silence))),
                    (Timer { at_ms: 200 }, send(2, Some(RetryReason::Silence))),
                    (Timer { at_ms: 300 }, send(0, Some(RetryReason::Silence))),
                ],
            ),
            (
                "a full round of refusals backs off, then resumes",
                vec![
                    (
                        Reply {
                            at_ms: 1,
                            from: 0,
                            answer: NOT_LEADER_NO_HINT,
                        },
                        send(1, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                    ),
                    (
                        Reply {
                            at_ms: 2,
                            from: 1,
                            answer: NOT_LEADER_NO_HINT,
                        },
                        send(2, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                    ),
                    (
                        Reply {
                            at_ms: 3,
                            from: 2,
                            answer: Answer::Retry {
                                code: ErrorCode::Unavailable,
                                hint: None,
                            },
                        },
                        Step::Wait,
                    ),
                    (Timer { at_ms: 52 }, Step::Wait),
                    (
                        Timer { at_ms: 53 },
                        send(0, Some(RetryReason::Refused(ErrorCode::Unavailable))),
                    ),
                ],
            ),
            (
                "a refusal past the deadline gives up, naming it",
                vec![
                    (Timer { at_ms: 100 }, send(1, Some(RetryReason::Silence))),
                    (
                        Reply {
                            at_ms: 1000,
                            from: 1,
                            answer: Answer::Retry {
                                code: ErrorCode::Timeout,
                                hint: None,
                            },
                        },
                        finished(
                            1000,
                            CallResult::GaveUp {
                                last: Some(ErrorCode::Timeout),
                            },
                        ),
                    ),
                ],
            ),
            (
                "silence up to the deadline gives up",
                vec![
                    (Timer { at_ms: 100 }, send(1, Some(RetryReason::Silence))),
                    (
                        Timer { at_ms: 1000 },
                        finished(1000, CallResult::GaveUp { last: None }),
                    ),
                ],
            ),
            (
                "a hint naming an unknown node index is ignored",
                vec![(
                    Reply {
                        at_ms: 1,
                        from: 0,
                        answer: Answer::Retry {
                            code: ErrorCode::NotLeader,
                            hint: Some(7),
                        },
                    },
                    send(1, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                )],
            ),
        ];
        for (number, (name, events)) in cases.into_iter().enumerate() {
            let start = Instant::now();
            let mut machine = ClientMachine::new(TIMING, 0);
            assert_eq!(
                machine.begin(start, 3),
                send(0, None),
                "case {number} ({name}): first attempt"
            );
            for (position, (event, expected)) in events.into_iter().enumerate() {
                let step = match event {
                    Event::Reply {
                        at_ms,
                        from,
                        answer,
                    } => machine.on_answer(at(start, at_ms), from, answer, 3),
                    Event::Timer { at_ms } => machine.on_timer(at(start, at_ms), 3),
                };
                assert_eq!(
                    step, expected,
                    "case {number} ({name}), event {position}: {event:?}"
                );
            }
        }
    }

    #[test]
    fn the_next_call_starts_at_the_node_that_answered() {
        let start = Instant::now();
        let mut machine = ClientMachine::new(TIMING, 0);
        machine.begin(start, 3);
        machine.on_answer(at(start, 1), 0, NOT_LEADER_HINT_2, 3);
        let step = machine.on_answer(at(start, 2), 2, DONE, 3);
        assert!(matches!(step, Step::Finished(_)), "{step:?}");
        assert!(!machine.is_busy());
        assert_eq!(machine.wake_at(), None, "an idle client has no timer");
        assert_eq!(machine.begin(at(start, 3), 3), send(2, None));
    }

    #[test]
    fn wake_at_follows_the_attempt_and_the_back_off() {
        let start = Instant::now();
        let mut machine = ClientMachine::new(TIMING, 0);
        machine.begin(start, 1);
        assert_eq!(machine.wake_at(), Some(at(start, 100)), "attempt timeout");
        let step = machine.on_answer(at(start, 5), 0, NOT_LEADER_NO_HINT, 1);
        assert_eq!(step, Step::Wait, "a one-node round of refusals backs off");
        assert_eq!(machine.wake_at(), Some(at(start, 55)), "back-off of 50 ms");
        assert_eq!(
            machine.on_timer(at(start, 55), 1),
            send(0, Some(RetryReason::Refused(ErrorCode::NotLeader)))
        );
        machine.on_answer(at(start, 60), 0, NOT_LEADER_NO_HINT, 1);
        assert_eq!(
            machine.wake_at(),
            Some(at(start, 160)),
            "the back-off doubles while the refusals last"
        );
    }

    #[test]
    fn a_reply_when_idle_is_ignored() {
        let start = Instant::now();
        let mut machine = ClientMachine::new(TIMING, 0);
        assert_eq!(machine.on_answer(start, 0, DONE, 3), Step::Wait);
        assert_eq!(machine.on_timer(start, 3), Step::Wait);
    }

    #[test]
    #[should_panic(expected = "closed-loop")]
    fn beginning_twice_is_a_bug() {
        let start = Instant::now();
        let mut machine = ClientMachine::new(TIMING, 0);
        machine.begin(start, 3);
        machine.begin(start, 3);
    }
}
