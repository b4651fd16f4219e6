//! The retry policy event by event: no sockets, no clock; times are offsets from a start.

use super::*;

const TIMING: Timing = Timing {
    attempt_timeout: Duration::from_millis(100),
    deadline: Duration::from_millis(1000),
    hedge_after: None,
};

/// A patient attempt timeout, as in the defaults, with hedges after 600 ms of silence.
const HEDGING: Timing = Timing {
    attempt_timeout: Duration::from_millis(2000),
    deadline: Duration::from_millis(3000),
    hedge_after: Some(Duration::from_millis(600)),
};

/// The decisive answer the tests pass through: the machine never looks inside it.
type Value = &'static str;

fn at(start: Instant, milliseconds: u64) -> Instant {
    start + Duration::from_millis(milliseconds)
}

fn send(node: usize, retry: Option<RetryReason>) -> Step<Value> {
    Step::Send { node, retry }
}

fn finished(latency_ms: u64, result: CallResult<Value>) -> Step<Value> {
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
        answer: Answer<Value>,
    },
    Timer {
        at_ms: u64,
    },
    SendFailed {
        at_ms: u64,
        node: usize,
        failure: SendFailure,
    },
    /// The connection to `node` dropped or was refused.
    Dropped {
        at_ms: u64,
        node: usize,
    },
    /// The connection to `node` was made again.
    Made {
        node: usize,
    },
}

const NOT_LEADER_HINT_2: Answer<Value> = Answer::Retry {
    code: ErrorCode::NotLeader,
    hint: Some(2),
};
const NOT_LEADER_NO_HINT: Answer<Value> = Answer::Retry {
    code: ErrorCode::NotLeader,
    hint: None,
};
const DONE: Answer<Value> = Answer::Decisive("done");
const ANSWERED: CallResult<Value> = CallResult::Answered("done");

/// Events, each with the step the machine must answer.
type Script = Vec<(Event, Step<Value>)>;

fn step(machine: &mut CallMachine, start: Instant, event: Event) -> Step<Value> {
    match event {
        Event::Reply {
            at_ms,
            from,
            answer,
        } => machine.on_answer(at(start, at_ms), from, answer, 3),
        Event::Timer { at_ms } => machine.on_timer(at(start, at_ms), 3),
        Event::SendFailed {
            at_ms,
            node,
            failure,
        } => machine.on_send_failed(at(start, at_ms), node, failure, 3),
        Event::Dropped { at_ms, node } => machine.on_connection_lost(at(start, at_ms), node, 3),
        Event::Made { node } => {
            machine.on_connection_made(node);
            Step::Wait
        }
    }
}

#[test]
fn calls_follow_the_retry_rules() {
    use Event::{Dropped, Made, Reply, SendFailed, Timer};
    let cases: Vec<(&str, Script)> = vec![
        (
            "answered at once",
            vec![(
                Reply {
                    at_ms: 3,
                    from: 0,
                    answer: DONE,
                },
                finished(3, ANSWERED),
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
                    finished(4, ANSWERED),
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
                    finished(120, ANSWERED),
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
            "while backing off, a refusal is ignored and a decisive answer ends the call",
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
                        answer: NOT_LEADER_NO_HINT,
                    },
                    Step::Wait,
                ),
                (
                    Reply {
                        at_ms: 4,
                        from: 0,
                        answer: NOT_LEADER_NO_HINT,
                    },
                    Step::Wait,
                ),
                (
                    Reply {
                        at_ms: 5,
                        from: 1,
                        answer: DONE,
                    },
                    finished(5, ANSWERED),
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
                            last: Some(Setback::Refused {
                                node: 1,
                                code: ErrorCode::Timeout,
                            }),
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
                    finished(
                        1000,
                        CallResult::GaveUp {
                            last: Some(Setback::Silence { node: 1 }),
                        },
                    ),
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
        (
            "a full send queue loses the attempt at once and counts in the round",
            vec![
                (
                    SendFailed {
                        at_ms: 1,
                        node: 0,
                        failure: SendFailure::QueueFull,
                    },
                    send(1, Some(RetryReason::Silence)),
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
                    SendFailed {
                        at_ms: 3,
                        node: 2,
                        failure: SendFailure::QueueFull,
                    },
                    Step::Wait,
                ),
                (Timer { at_ms: 53 }, send(0, Some(RetryReason::Silence))),
            ],
        ),
        (
            "an unreachable node is skipped; when every node is, the call ends",
            vec![
                (
                    SendFailed {
                        at_ms: 0,
                        node: 0,
                        failure: SendFailure::Unreachable,
                    },
                    send(1, Some(RetryReason::Silence)),
                ),
                (
                    SendFailed {
                        at_ms: 0,
                        node: 1,
                        failure: SendFailure::Unreachable,
                    },
                    send(2, Some(RetryReason::Silence)),
                ),
                (
                    SendFailed {
                        at_ms: 1,
                        node: 2,
                        failure: SendFailure::Unreachable,
                    },
                    finished(1, CallResult::Unreachable),
                ),
            ],
        ),
        (
            "unreachable nodes do not count as refusals",
            vec![
                (
                    SendFailed {
                        at_ms: 0,
                        node: 0,
                        failure: SendFailure::Unreachable,
                    },
                    send(1, Some(RetryReason::Silence)),
                ),
                (
                    Reply {
                        at_ms: 1,
                        from: 1,
                        answer: NOT_LEADER_NO_HINT,
                    },
                    send(2, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                ),
                (
                    Reply {
                        at_ms: 2,
                        from: 2,
                        answer: NOT_LEADER_NO_HINT,
                    },
                    send(0, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                ),
                (
                    SendFailed {
                        at_ms: 2,
                        node: 0,
                        failure: SendFailure::Unreachable,
                    },
                    send(1, Some(RetryReason::Silence)),
                ),
            ],
        ),
        (
            "a drop of the node waited on sends the call to the next node at once",
            vec![
                (
                    Dropped { at_ms: 7, node: 0 },
                    send(1, Some(RetryReason::Dropped)),
                ),
                (
                    Reply {
                        at_ms: 9,
                        from: 1,
                        answer: DONE,
                    },
                    finished(9, ANSWERED),
                ),
            ],
        ),
        (
            "the attempt timeout still applies to a node that keeps its connection",
            vec![
                (Timer { at_ms: 99 }, Step::Wait),
                (Timer { at_ms: 100 }, send(1, Some(RetryReason::Silence))),
            ],
        ),
        (
            "a drop of another node only makes later attempts skip it",
            vec![
                (Dropped { at_ms: 1, node: 1 }, Step::Wait),
                (Timer { at_ms: 100 }, send(2, Some(RetryReason::Silence))),
                (Timer { at_ms: 200 }, send(0, Some(RetryReason::Silence))),
            ],
        ),
        (
            "a drop of an earlier attempt's node does not move the call",
            vec![
                (Timer { at_ms: 100 }, send(1, Some(RetryReason::Silence))),
                (
                    Dropped {
                        at_ms: 101,
                        node: 0,
                    },
                    Step::Wait,
                ),
                (Timer { at_ms: 200 }, send(2, Some(RetryReason::Silence))),
                (Timer { at_ms: 300 }, send(1, Some(RetryReason::Silence))),
            ],
        ),
        (
            "a hint naming a node whose connection dropped is not followed",
            vec![
                (Dropped { at_ms: 1, node: 2 }, Step::Wait),
                (
                    Reply {
                        at_ms: 2,
                        from: 0,
                        answer: NOT_LEADER_HINT_2,
                    },
                    send(1, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                ),
            ],
        ),
        (
            "a node whose connection is made again is tried again",
            vec![
                (Dropped { at_ms: 1, node: 1 }, Step::Wait),
                (Made { node: 1 }, Step::Wait),
                (Timer { at_ms: 100 }, send(1, Some(RetryReason::Silence))),
            ],
        ),
        (
            "with every connection down, nodes are tried in turn",
            vec![
                (Dropped { at_ms: 1, node: 1 }, Step::Wait),
                (Dropped { at_ms: 1, node: 2 }, Step::Wait),
                (
                    Dropped { at_ms: 2, node: 0 },
                    send(1, Some(RetryReason::Dropped)),
                ),
                (Timer { at_ms: 102 }, send(2, Some(RetryReason::Silence))),
            ],
        ),
        (
            "a drop counts in the round of refusals",
            vec![
                (
                    Dropped { at_ms: 1, node: 0 },
                    send(1, Some(RetryReason::Dropped)),
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
                        answer: NOT_LEADER_NO_HINT,
                    },
                    Step::Wait,
                ),
                (
                    Timer { at_ms: 53 },
                    send(1, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                ),
            ],
        ),
        (
            "a drop during a back-off moves the resumed attempt past the node",
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
                        answer: NOT_LEADER_NO_HINT,
                    },
                    Step::Wait,
                ),
                (Dropped { at_ms: 10, node: 0 }, Step::Wait),
                (
                    Timer { at_ms: 53 },
                    send(1, Some(RetryReason::Refused(ErrorCode::NotLeader))),
                ),
            ],
        ),
        (
            "a drop at the deadline gives up, naming it",
            vec![
                (Timer { at_ms: 100 }, send(1, Some(RetryReason::Silence))),
                (
                    Dropped {
                        at_ms: 1000,
                        node: 1,
                    },
                    finished(
                        1000,
                        CallResult::GaveUp {
                            last: Some(Setback::Dropped { node: 1 }),
                        },
                    ),
                ),
            ],
        ),
    ];
    run_scripts(TIMING, cases);
}

/// Runs each script on a fresh machine whose first attempt goes to node 0.
fn run_scripts(timing: Timing, cases: Vec<(&str, Script)>) {
    for (number, (name, events)) in cases.into_iter().enumerate() {
        let start = Instant::now();
        let mut machine = CallMachine::new(timing, 0);
        assert_eq!(
            machine.begin::<Value>(start, 3),
            send(0, None),
            "case {number} ({name}): first attempt"
        );
        for (position, (event, expected)) in events.into_iter().enumerate() {
            assert_eq!(
                step(&mut machine, start, event),
                expected,
                "case {number} ({name}), event {position}: {event:?}"
            );
        }
    }
}

const NOT_LEADER_HINT_0: Answer<Value> = Answer::Retry {
    code: ErrorCode::NotLeader,
    hint: Some(0),
};
const NOT_LEADER_HINT_1: Answer<Value> = Answer::Retry {
    code: ErrorCode::NotLeader,
    hint: Some(1),
};
const UNAVAILABLE: Answer<Value> = Answer::Retry {
    code: ErrorCode::Unavailable,
    hint: None,
};

fn hedge(node: usize) -> Step<Value> {
    send(node, Some(RetryReason::Hedge))
}

/// Node 0 (the first attempt's) is silent, as a stopped leader is: its connection holds.
#[test]
fn silence_past_the_hedge_delay_sends_the_call_to_other_nodes_too() {
    use Event::{Dropped, Reply, Timer};
    let cases: Vec<(&str, Script)> = vec![
        (
            "before the hedge delay nothing; after it a hedge to the next node",
            vec![
                (Timer { at_ms: 599 }, Step::Wait),
                (Timer { at_ms: 600 }, hedge(1)),
                (
                    Reply {
                        at_ms: 603,
                        from: 1,
                        answer: DONE,
                    },
                    finished(603, ANSWERED),
                ),
            ],
        ),
        (
            "a hint naming the node waited on: no redirect, the next hedge at its time",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (
                    Reply {
                        at_ms: 601,
                        from: 1,
                        answer: NOT_LEADER_HINT_0,
                    },
                    Step::Wait,
                ),
                (Timer { at_ms: 650 }, Step::Wait),
                (Timer { at_ms: 700 }, hedge(2)),
            ],
        ),
        (
            "a hint naming a third node: a hedge there at once",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (
                    Reply {
                        at_ms: 601,
                        from: 1,
                        answer: NOT_LEADER_HINT_2,
                    },
                    send(2, Some(RetryReason::Redirect)),
                ),
                (
                    Reply {
                        at_ms: 604,
                        from: 2,
                        answer: DONE,
                    },
                    finished(604, ANSWERED),
                ),
            ],
        ),
        (
            "the node waited on still counts: its late reply ends the call",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (
                    Reply {
                        at_ms: 601,
                        from: 1,
                        answer: NOT_LEADER_HINT_0,
                    },
                    Step::Wait,
                ),
                (
                    Reply {
                        at_ms: 650,
                        from: 0,
                        answer: DONE,
                    },
                    finished(650, ANSWERED),
                ),
            ],
        ),
        (
            "hedges go on every interval, in turn, never to the node waited on",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (Timer { at_ms: 700 }, hedge(2)),
                (Timer { at_ms: 800 }, hedge(1)),
                (
                    Reply {
                        at_ms: 801,
                        from: 1,
                        answer: UNAVAILABLE,
                    },
                    Step::Wait,
                ),
                (Timer { at_ms: 900 }, hedge(2)),
            ],
        ),
        (
            "two nodes naming each other: one redirect at once per interval",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (
                    Reply {
                        at_ms: 601,
                        from: 1,
                        answer: NOT_LEADER_HINT_2,
                    },
                    send(2, Some(RetryReason::Redirect)),
                ),
                (
                    Reply {
                        at_ms: 602,
                        from: 2,
                        answer: NOT_LEADER_HINT_1,
                    },
                    Step::Wait,
                ),
                (Timer { at_ms: 701 }, hedge(1)),
            ],
        ),
        (
            "a refusal from a hedge's node does not move the call off the node waited on",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (
                    Reply {
                        at_ms: 601,
                        from: 1,
                        answer: NOT_LEADER_NO_HINT,
                    },
                    Step::Wait,
                ),
                (Timer { at_ms: 2000 }, send(1, Some(RetryReason::Silence))),
            ],
        ),
        (
            "the attempt timeout still moves the call; its hedges start over",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (Timer { at_ms: 2000 }, send(1, Some(RetryReason::Silence))),
                (Timer { at_ms: 2599 }, Step::Wait),
                (Timer { at_ms: 2600 }, hedge(2)),
            ],
        ),
        (
            "a lost hedge sends the next one at once, past nodes that are down",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (
                    Dropped {
                        at_ms: 610,
                        node: 1,
                    },
                    hedge(2),
                ),
                (Timer { at_ms: 710 }, hedge(2)),
            ],
        ),
        (
            "with no other node reachable, no hedge",
            vec![
                (Dropped { at_ms: 10, node: 1 }, Step::Wait),
                (Dropped { at_ms: 11, node: 2 }, Step::Wait),
                (Timer { at_ms: 600 }, Step::Wait),
                (Timer { at_ms: 700 }, Step::Wait),
            ],
        ),
        (
            "the deadline ends a call whose every node is silent",
            vec![
                (Timer { at_ms: 600 }, hedge(1)),
                (Timer { at_ms: 2000 }, send(1, Some(RetryReason::Silence))),
                (Timer { at_ms: 2600 }, hedge(2)),
                (Timer { at_ms: 2700 }, hedge(0)),
                (Timer { at_ms: 2800 }, hedge(2)),
                (Timer { at_ms: 2900 }, hedge(0)),
                (
                    Timer { at_ms: 3000 },
                    finished(
                        3000,
                        CallResult::GaveUp {
                            last: Some(Setback::Silence { node: 1 }),
                        },
                    ),
                ),
            ],
        ),
    ];
    run_scripts(HEDGING, cases);
}

#[test]
fn wake_at_includes_the_next_hedge_and_a_back_off_stops_hedging() {
    let start = Instant::now();
    let mut machine = CallMachine::new(HEDGING, 0);
    machine.begin::<Value>(start, 3);
    assert_eq!(machine.wake_at(), Some(at(start, 600)), "the hedge delay");
    assert_eq!(machine.on_timer::<Value>(at(start, 600), 3), hedge(1));
    assert_eq!(
        machine.wake_at(),
        Some(at(start, 700)),
        "the hedge interval"
    );
    // Node 0 answers after all: a refusal from the node waited on moves the call as ever,
    // and the hedges start over from the new attempt.
    assert_eq!(
        machine.on_answer(at(start, 650), 0, NOT_LEADER_HINT_2, 3),
        send(2, Some(RetryReason::Redirect))
    );
    assert_eq!(machine.wake_at(), Some(at(start, 1250)));
    assert_eq!(machine.on_timer::<Value>(at(start, 1250), 3), hedge(0));
    // A full round of refusals backs off; no hedge leaves while it lasts.
    assert_eq!(
        machine.on_answer(at(start, 1260), 2, NOT_LEADER_NO_HINT, 3),
        send(0, Some(RetryReason::Refused(ErrorCode::NotLeader)))
    );
    assert_eq!(
        machine.on_answer(at(start, 1261), 0, NOT_LEADER_NO_HINT, 3),
        Step::Wait
    );
    assert_eq!(
        machine.wake_at(),
        Some(at(start, 1311)),
        "back-off of 50 ms"
    );
    assert_eq!(machine.on_timer::<Value>(at(start, 1300), 3), Step::Wait);
    assert_eq!(
        machine.on_timer::<Value>(at(start, 1311), 3),
        send(1, Some(RetryReason::Refused(ErrorCode::NotLeader)))
    );
    assert_eq!(
        machine.wake_at(),
        Some(at(start, 1911)),
        "hedges start over after the back-off"
    );
}

#[test]
fn the_next_call_starts_at_the_node_that_answered() {
    let start = Instant::now();
    let mut machine = CallMachine::new(TIMING, 0);
    machine.begin::<Value>(start, 3);
    machine.on_answer(at(start, 1), 0, NOT_LEADER_HINT_2, 3);
    assert_eq!(machine.leader(), None, "a setback forgets the leader");
    let step = machine.on_answer(at(start, 2), 2, DONE, 3);
    assert!(matches!(step, Step::Finished(_)), "{step:?}");
    assert!(!machine.is_busy());
    assert_eq!(machine.leader(), Some(2));
    assert_eq!(machine.wake_at(), None, "an idle client has no timer");
    assert_eq!(machine.begin::<Value>(at(start, 3), 3), send(2, None));
}

#[test]
fn the_next_call_skips_a_leader_whose_connection_dropped_while_idle() {
    let start = Instant::now();
    let mut machine = CallMachine::new(TIMING, 0);
    machine.begin::<Value>(start, 3);
    machine.on_answer(at(start, 1), 0, DONE, 3);
    assert_eq!(machine.leader(), Some(0));
    assert_eq!(
        machine.on_connection_lost::<Value>(at(start, 2), 0, 3),
        Step::Wait
    );
    assert_eq!(machine.leader(), None, "a dropped leader is forgotten");
    assert_eq!(machine.begin::<Value>(at(start, 3), 3), send(1, None));
    machine.abandon();
    machine.on_connection_made(0);
    assert_eq!(
        machine.begin::<Value>(at(start, 4), 3),
        send(0, None),
        "where the last call left off, once its connection is back"
    );
}

#[test]
fn after_giving_up_the_next_call_starts_where_the_last_one_left_off() {
    let start = Instant::now();
    let mut machine = CallMachine::new(TIMING, 0);
    machine.begin::<Value>(start, 3);
    machine.on_timer::<Value>(at(start, 100), 3);
    let step = machine.on_timer::<Value>(at(start, 1000), 3);
    assert!(
        matches!(
            step,
            Step::Finished(Finish {
                result: CallResult::GaveUp { .. },
                ..
            })
        ),
        "{step:?}"
    );
    assert_eq!(machine.leader(), None);
    assert_eq!(machine.begin::<Value>(at(start, 1001), 3), send(2, None));
}

#[test]
fn wake_at_follows_the_attempt_and_the_back_off() {
    let start = Instant::now();
    let mut machine = CallMachine::new(TIMING, 0);
    machine.begin::<Value>(start, 1);
    assert_eq!(machine.wake_at(), Some(at(start, 100)), "attempt timeout");
    let step = machine.on_answer(at(start, 5), 0, NOT_LEADER_NO_HINT, 1);
    assert_eq!(step, Step::Wait, "a one-node round of refusals backs off");
    assert_eq!(machine.wake_at(), Some(at(start, 55)), "back-off of 50 ms");
    assert_eq!(
        machine.on_timer::<Value>(at(start, 55), 1),
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
fn the_back_off_is_capped_and_never_passes_the_deadline() {
    let timing = Timing {
        attempt_timeout: Duration::from_millis(100),
        deadline: Duration::from_secs(60),
        hedge_after: None,
    };
    let start = Instant::now();
    let mut machine = CallMachine::new(timing, 0);
    machine.begin::<Value>(start, 1);
    let mut now = start;
    let mut pauses = Vec::new();
    for _ in 0..7 {
        machine.on_answer(now, 0, NOT_LEADER_NO_HINT, 1);
        let resume = machine.wake_at().expect("backing off");
        pauses.push(resume - now);
        now = resume;
        machine.on_timer::<Value>(now, 1);
    }
    let milliseconds: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
    assert_eq!(milliseconds, [50, 100, 200, 400, 800, 800, 800]);

    let mut machine = CallMachine::new(TIMING, 0);
    machine.begin::<Value>(start, 1);
    machine.on_answer(at(start, 990), 0, NOT_LEADER_NO_HINT, 1);
    assert_eq!(
        machine.wake_at(),
        Some(at(start, 1000)),
        "cut at the deadline"
    );
    assert_eq!(
        machine.on_timer::<Value>(at(start, 1000), 1),
        finished(
            1000,
            CallResult::GaveUp {
                last: Some(Setback::Refused {
                    node: 0,
                    code: ErrorCode::NotLeader
                })
            }
        )
    );
}

#[test]
fn a_reply_when_idle_is_ignored_and_an_abandoned_call_frees_the_client() {
    let start = Instant::now();
    let mut machine = CallMachine::new(TIMING, 0);
    assert_eq!(machine.on_answer(start, 0, DONE, 3), Step::Wait);
    assert_eq!(machine.on_timer::<Value>(start, 3), Step::Wait);
    machine.begin::<Value>(start, 3);
    machine.abandon();
    assert!(!machine.is_busy());
    assert_eq!(machine.begin::<Value>(start, 3), send(0, None));
}

#[test]
#[should_panic(expected = "closed-loop")]
fn beginning_twice_is_a_bug() {
    let start = Instant::now();
    let mut machine = CallMachine::new(TIMING, 0);
    machine.begin::<Value>(start, 3);
    machine.begin::<Value>(start, 3);
}

#[test]
fn only_not_here_not_now_codes_are_retried() {
    let cases = [
        (ErrorCode::NotLeader, true),
        (ErrorCode::Unavailable, true),
        (ErrorCode::Timeout, true),
        (ErrorCode::ShuttingDown, true),
        (ErrorCode::NoSuchTopic, false),
        (ErrorCode::TopicExists, false),
        (ErrorCode::Empty, false),
        (ErrorCode::BadRequest, false),
        (ErrorCode::TooLarge, false),
        (ErrorCode::SessionExpired, false),
        (ErrorCode::Quota, false),
        (ErrorCode::Forbidden, false),
        (ErrorCode::Unspecified, false),
    ];
    for (number, (code, expected)) in cases.into_iter().enumerate() {
        assert_eq!(is_retryable(code), expected, "case {number}: {code:?}");
    }
}
