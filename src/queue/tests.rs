use super::*;
use crate::protocol::{Payload, SessionKey};
use proptest::prelude::*;
use std::collections::VecDeque;

fn create(topic: &str) -> Command {
    Command::CreateTopic {
        topic: topic.to_string(),
    }
}

fn put(topic: &str, message: &str) -> Command {
    Command::Put {
        topic: topic.to_string(),
        message: Payload::Text(message.to_string()),
    }
}

fn get(topic: &str) -> Command {
    Command::Get {
        topic: topic.to_string(),
    }
}

fn plain(command: Command) -> LoggedCommand {
    LoggedCommand {
        session: None,
        command,
    }
}

fn keyed(client_id: &str, seq: u64, command: Command) -> LoggedCommand {
    LoggedCommand {
        session: Some(SessionKey {
            client_id: client_id.to_string(),
            seq,
        }),
        command,
    }
}

fn message(text: &str) -> Outcome {
    Outcome::Message(Payload::Text(text.to_string()))
}

/// An outcome with the failure text left out: tests pin codes, not wording.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Done,
    Message(Payload),
    Failed(ErrorCode),
    /// A version 2 outcome, whole.
    Other(Outcome),
}

fn seen(outcome: &Outcome) -> Seen {
    match outcome {
        Outcome::Done => Seen::Done,
        Outcome::Message(payload) => Seen::Message(payload.clone()),
        Outcome::Failed(error) => Seen::Failed(error.code),
        Outcome::Topics(topics) => panic!("a command produced a topic list {topics:?}"),
        Outcome::TopicDetails(topics) => panic!("a command produced topic details {topics:?}"),
        other => Seen::Other(other.clone()),
    }
}

fn seen_message(text: &str) -> Seen {
    Seen::Message(Payload::Text(text.to_string()))
}

fn config(sessions_max: usize) -> QueueConfig {
    QueueConfig {
        sessions_max,
        ..QueueConfig::default()
    }
}

fn quota_config(sessions_max: usize, queued_bytes_max: usize, topics_max: usize) -> QueueConfig {
    QueueConfig {
        sessions_max,
        queued_bytes_max,
        topics_max,
        ..QueueConfig::default()
    }
}

/// What a message of `length` bytes counts against `queued_bytes_max`.
fn charge(length: usize) -> usize {
    length + QUEUED_MESSAGE_OVERHEAD_BYTES
}

/// Applies `commands` at indexes 1, 2, ... through the byte path, checking invariants.
fn run(queue: &mut Queue, commands: &[LoggedCommand]) -> Vec<Outcome> {
    commands
        .iter()
        .map(|command| {
            let index = queue.last_applied().next();
            let outcome = queue.apply(index, &command.encode());
            queue.check_invariants();
            outcome
        })
        .collect()
}

fn messages_of(queue: &Queue, topic: &str) -> Vec<Payload> {
    let position = queue.topic_index[topic];
    queue.topics[position]
        .messages
        .iter()
        .map(|message| message.to_payload())
        .collect()
}

#[test]
fn operations() {
    use ErrorCode::*;
    // (command, expected outcome, topics after, queued in "a" after)
    let cases: Vec<(Command, Seen, Vec<&str>, Option<usize>)> = vec![
        (put("a", "m0"), Seen::Failed(NoSuchTopic), vec![], None),
        (get("a"), Seen::Failed(NoSuchTopic), vec![], None),
        (create("a"), Seen::Done, vec!["a"], Some(0)),
        (create("a"), Seen::Failed(TopicExists), vec!["a"], Some(0)),
        (get("a"), Seen::Failed(Empty), vec!["a"], Some(0)),
        (create("b"), Seen::Done, vec!["a", "b"], Some(0)),
        (create("0"), Seen::Done, vec!["a", "b", "0"], Some(0)),
        (put("a", "m1"), Seen::Done, vec!["a", "b", "0"], Some(1)),
        (put("a", "m2"), Seen::Done, vec!["a", "b", "0"], Some(2)),
        (put("b", "other"), Seen::Done, vec!["a", "b", "0"], Some(2)),
        (get("a"), seen_message("m1"), vec!["a", "b", "0"], Some(1)),
        (put("a", "m3"), Seen::Done, vec!["a", "b", "0"], Some(2)),
        (get("a"), seen_message("m2"), vec!["a", "b", "0"], Some(1)),
        (get("a"), seen_message("m3"), vec!["a", "b", "0"], Some(0)),
        (get("a"), Seen::Failed(Empty), vec!["a", "b", "0"], Some(0)),
        (
            get("b"),
            seen_message("other"),
            vec!["a", "b", "0"],
            Some(0),
        ),
    ];
    let mut queue = Queue::new(QueueConfig::default());
    for (case, (command, expected, topics, queued)) in cases.into_iter().enumerate() {
        let outcome = run(&mut queue, &[plain(command)]).remove(0);
        assert_eq!(seen(&outcome), expected, "case {case}");
        assert_eq!(queue.topics(), topics, "case {case}");
        assert_eq!(queue.queued("a"), queued, "case {case}");
    }
    assert_eq!(
        queue.stats().sessions,
        0,
        "commands without a key open no session"
    );
}

#[test]
fn stats_count_messages_and_bytes() {
    let mut queue = Queue::new(QueueConfig::default());
    run(
        &mut queue,
        &[
            plain(create("a")),
            plain(create("b")),
            plain(put("a", "12345")),
            plain(put("b", "123")),
            keyed("c", 1, put("b", "1")),
        ],
    );
    let expected = QueueStats {
        topics: 2,
        messages: 3,
        payload_bytes: 9,
        sessions: 1,
        session_bytes: 1,
    };
    assert_eq!(queue.stats(), expected);
    assert!(queue.message_heap_bytes() >= 9 + 3 * 4);
    run(&mut queue, &[plain(get("a"))]);
    assert_eq!(queue.stats().messages, 2);
    assert_eq!(queue.stats().payload_bytes, 4);
}

#[test]
fn undecodable_entry_is_a_bad_request_that_changes_nothing() {
    let mut queue = Queue::new(config(2));
    run(
        &mut queue,
        &[keyed("c", 1, create("a")), plain(put("a", "m"))],
    );
    let before = queue.clone();
    let mut truncated = plain(get("a")).encode().to_vec();
    truncated.pop();
    let cases: [&[u8]; 4] = [b"", b"\xc1", b"not msgpack at all", &truncated];
    for (case, bytes) in cases.iter().enumerate() {
        let index = queue.last_applied().next();
        let outcome = queue.apply(index, bytes);
        assert_eq!(
            seen(&outcome),
            Seen::Failed(ErrorCode::BadRequest),
            "case {case}"
        );
        let mut expected = before.clone();
        expected.last_applied = index;
        assert_eq!(queue, expected, "case {case}");
    }
}

#[test]
#[should_panic(expected = "entries must be applied once, in log order")]
fn applying_an_index_twice_panics() {
    let mut queue = Queue::new(QueueConfig::default());
    queue.apply_command(LogIndex(5), &plain(create("a")));
    queue.apply_command(LogIndex(5), &plain(create("b")));
}

#[test]
fn sessions() {
    use ErrorCode::*;
    struct Case {
        name: &'static str,
        /// Applied in order; each with the outcome it must produce.
        steps: Vec<(LoggedCommand, Seen)>,
        /// Messages left in topic "t" at the end.
        left: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "duplicate PUT queues one message and replies the same twice",
            steps: vec![
                (keyed("c", 1, put("t", "m")), Seen::Done),
                (keyed("c", 1, put("t", "m")), Seen::Done),
            ],
            left: vec!["m"],
        },
        Case {
            name: "duplicate GET returns the same message and pops one",
            steps: vec![
                (plain(put("t", "m1")), Seen::Done),
                (plain(put("t", "m2")), Seen::Done),
                (keyed("c", 1, get("t")), seen_message("m1")),
                (keyed("c", 1, get("t")), seen_message("m1")),
            ],
            left: vec!["m2"],
        },
        Case {
            name: "duplicate GET on an empty topic stays a failure after a PUT",
            steps: vec![
                (keyed("c", 1, get("t")), Seen::Failed(Empty)),
                (plain(put("t", "m")), Seen::Done),
                (keyed("c", 1, get("t")), Seen::Failed(Empty)),
            ],
            left: vec!["m"],
        },
        Case {
            name: "a failure is stored: repeated PUT to a missing topic fails again",
            steps: vec![
                (
                    keyed("c", 1, put("missing", "m")),
                    Seen::Failed(NoSuchTopic),
                ),
                (plain(create("missing")), Seen::Done),
                (
                    keyed("c", 1, put("missing", "m")),
                    Seen::Failed(NoSuchTopic),
                ),
                (keyed("c", 2, put("missing", "m")), Seen::Done),
            ],
            left: vec![],
        },
        Case {
            name: "duplicate CreateTopic replies Done twice",
            steps: vec![
                (keyed("c", 1, create("new")), Seen::Done),
                (keyed("c", 1, create("new")), Seen::Done),
                (keyed("c", 2, create("new")), Seen::Failed(TopicExists)),
            ],
            left: vec![],
        },
        Case {
            name: "stale seq is refused and applies nothing",
            steps: vec![
                (keyed("c", 1, put("t", "m1")), Seen::Done),
                (keyed("c", 2, put("t", "m2")), Seen::Done),
                (keyed("c", 1, put("t", "m1")), Seen::Failed(SessionExpired)),
                (keyed("c", 2, put("t", "m2")), Seen::Done),
            ],
            left: vec!["m1", "m2"],
        },
        Case {
            name: "seq may jump ahead",
            steps: vec![
                (keyed("c", 1, put("t", "m1")), Seen::Done),
                (keyed("c", 9, put("t", "m9")), Seen::Done),
                (keyed("c", 5, put("t", "m5")), Seen::Failed(SessionExpired)),
            ],
            left: vec!["m1", "m9"],
        },
        Case {
            name: "unknown client with seq above 1 is refused and applies nothing",
            steps: vec![
                (keyed("c", 2, put("t", "m")), Seen::Failed(SessionExpired)),
                (keyed("c", 2, put("t", "m")), Seen::Failed(SessionExpired)),
            ],
            left: vec![],
        },
        Case {
            name: "seq 0 opens a session like seq 1",
            steps: vec![
                (keyed("c", 0, put("t", "m0")), Seen::Done),
                (keyed("c", 0, put("t", "m0")), Seen::Done),
                (keyed("c", 1, put("t", "m1")), Seen::Done),
                (keyed("c", 0, put("t", "m0")), Seen::Failed(SessionExpired)),
            ],
            left: vec!["m0", "m1"],
        },
        Case {
            name: "clients do not share sessions",
            steps: vec![
                (keyed("c", 1, put("t", "from c")), Seen::Done),
                (keyed("d", 1, put("t", "from d")), Seen::Done),
                (keyed("c", 1, put("t", "from c")), Seen::Done),
            ],
            left: vec!["from c", "from d"],
        },
        Case {
            name: "commands without a key are never deduplicated",
            steps: vec![
                (plain(put("t", "m")), Seen::Done),
                (plain(put("t", "m")), Seen::Done),
            ],
            left: vec!["m", "m"],
        },
    ];
    for case in cases {
        let mut queue = Queue::new(QueueConfig::default());
        run(&mut queue, &[plain(create("t"))]);
        for (step, (command, expected)) in case.steps.iter().enumerate() {
            let outcome = run(&mut queue, std::slice::from_ref(command)).remove(0);
            assert_eq!(seen(&outcome), *expected, "{}: step {step}", case.name);
        }
        let left: Vec<Payload> = case
            .left
            .iter()
            .map(|m| Payload::Text(m.to_string()))
            .collect();
        assert_eq!(messages_of(&queue, "t"), left, "{}", case.name);
    }
}

#[test]
fn replay_returns_the_stored_outcome_and_changes_nothing_else() {
    let mut queue = Queue::new(QueueConfig::default());
    run(
        &mut queue,
        &[
            plain(create("t")),
            plain(put("t", "m1")),
            plain(put("t", "m2")),
            keyed("c", 1, get("t")),
            keyed("other", 1, put("t", "m3")),
        ],
    );
    let before = queue.clone();
    let outcomes = run(&mut queue, &[keyed("c", 1, get("t"))]);
    assert_eq!(
        outcomes,
        vec![message("m1")],
        "the exact outcome, message text included"
    );
    let mut expected = before;
    expected.last_applied = queue.last_applied();
    assert_eq!(
        queue, expected,
        "a replay must not even refresh the session's last use"
    );
}

#[test]
fn refusals_explain_what_to_do() {
    let mut queue = Queue::new(QueueConfig::default());
    let outcomes = run(
        &mut queue,
        &[
            keyed("c", 2, create("t")),
            keyed("d", 3, create("t")),
            keyed("d", 1, create("t")),
        ],
    );
    let Outcome::Failed(forgotten) = &outcomes[0] else {
        panic!("unknown client at seq 2 was not refused: {outcomes:?}");
    };
    assert!(
        forgotten.message.contains("new client_id"),
        "{}",
        forgotten.message
    );
    let Outcome::Failed(stale) = &outcomes[1] else {
        panic!("unknown client at seq 3 was not refused: {outcomes:?}");
    };
    assert_eq!(stale.code, ErrorCode::SessionExpired);
    assert_eq!(queue.stats().sessions, 1, "refusals open no session");
}

#[test]
fn eviction_forgets_the_least_recently_used() {
    use ErrorCode::*;
    // (sessions_max, steps, sessions left oldest first)
    struct Case {
        name: &'static str,
        sessions_max: usize,
        steps: Vec<(LoggedCommand, Seen)>,
        remembered: Vec<(&'static str, u64)>,
    }
    let cases = vec![
        Case {
            name: "third client evicts the first",
            sessions_max: 2,
            steps: vec![
                (keyed("a", 1, put("t", "a1")), Seen::Done),
                (keyed("b", 1, put("t", "b1")), Seen::Done),
                (keyed("c", 1, put("t", "c1")), Seen::Done),
                // a was forgotten: its next command cannot be checked against its last.
                (keyed("a", 2, put("t", "a2")), Seen::Failed(SessionExpired)),
                // b still is, and its retry is recognised.
                (keyed("b", 1, put("t", "b1")), Seen::Done),
            ],
            remembered: vec![("b", 1), ("c", 1)],
        },
        Case {
            name: "use refreshes: the least recently used goes, not the oldest",
            sessions_max: 2,
            steps: vec![
                (keyed("a", 1, put("t", "a1")), Seen::Done),
                (keyed("b", 1, put("t", "b1")), Seen::Done),
                (keyed("a", 2, put("t", "a2")), Seen::Done),
                (keyed("c", 1, put("t", "c1")), Seen::Done),
                (keyed("b", 2, put("t", "b2")), Seen::Failed(SessionExpired)),
                (keyed("a", 2, put("t", "a2")), Seen::Done),
            ],
            remembered: vec![("a", 2), ("c", 1)],
        },
        Case {
            name: "a replay does not refresh",
            sessions_max: 2,
            steps: vec![
                (keyed("a", 1, put("t", "a1")), Seen::Done),
                (keyed("b", 1, put("t", "b1")), Seen::Done),
                (keyed("a", 1, put("t", "a1")), Seen::Done),
                (keyed("c", 1, put("t", "c1")), Seen::Done),
                (keyed("a", 2, put("t", "a2")), Seen::Failed(SessionExpired)),
            ],
            remembered: vec![("b", 1), ("c", 1)],
        },
        Case {
            name: "refusals do not refresh or open",
            sessions_max: 3,
            steps: vec![
                (keyed("a", 2, put("t", "a1")), Seen::Failed(SessionExpired)),
                (keyed("b", 1, put("t", "b1")), Seen::Done),
                (keyed("c", 1, put("t", "c1")), Seen::Done),
                (keyed("d", 1, put("t", "d1")), Seen::Done),
                (keyed("b", 3, put("t", "b3")), Seen::Done),
                (keyed("c", 0, put("t", "c0")), Seen::Failed(SessionExpired)),
                (keyed("e", 1, put("t", "e1")), Seen::Done),
            ],
            remembered: vec![("d", 1), ("b", 3), ("e", 1)],
        },
        Case {
            name: "eviction order over three",
            sessions_max: 3,
            steps: vec![
                (keyed("a", 1, put("t", "a1")), Seen::Done),
                (keyed("b", 1, put("t", "b1")), Seen::Done),
                (keyed("c", 1, put("t", "c1")), Seen::Done),
                (keyed("b", 2, get("t")), seen_message("a1")),
                (keyed("a", 2, get("t")), seen_message("b1")),
                (keyed("d", 1, put("t", "d1")), Seen::Done),
                (keyed("e", 1, put("t", "e1")), Seen::Done),
                (keyed("b", 2, get("t")), Seen::Failed(SessionExpired)),
                (keyed("a", 2, get("t")), seen_message("b1")),
            ],
            remembered: vec![("a", 2), ("d", 1), ("e", 1)],
        },
    ];
    for case in cases {
        let mut queue = Queue::new(config(case.sessions_max));
        run(&mut queue, &[plain(create("t"))]);
        for (step, (command, expected)) in case.steps.iter().enumerate() {
            let outcome = run(&mut queue, std::slice::from_ref(command)).remove(0);
            assert_eq!(seen(&outcome), *expected, "{}: step {step}", case.name);
        }
        let remembered: Vec<(&str, u64)> = queue
            .sessions
            .iter_oldest_first()
            .map(|(client_id, session)| (client_id, session.seq))
            .collect();
        assert_eq!(remembered, case.remembered, "{}", case.name);
    }
}

#[test]
fn eviction_by_bytes_keeps_the_newest() {
    let big = "x".repeat(100);
    let mut queue = Queue::new(QueueConfig {
        sessions_max: 100,
        session_bytes_max: 250,
        ..QueueConfig::default()
    });
    run(&mut queue, &[plain(create("t"))]);
    for n in 0..5 {
        run(&mut queue, &[plain(put("t", &big))]);
        // A kept GET reply holds the message: 1 + 100 bytes per session.
        run(&mut queue, &[keyed(&n.to_string(), 1, get("t"))]);
    }
    let remembered: Vec<&str> = queue
        .sessions
        .iter_oldest_first()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(remembered, vec!["3", "4"]);
    assert_eq!(queue.stats().session_bytes, 202);

    // One session over the limit alone is kept: its client can still retry.
    let mut queue = Queue::new(QueueConfig {
        sessions_max: 100,
        session_bytes_max: 10,
        ..QueueConfig::default()
    });
    run(&mut queue, &[plain(create("t")), plain(put("t", &big))]);
    let first = run(&mut queue, &[keyed("c", 1, get("t"))]);
    let retry = run(&mut queue, &[keyed("c", 1, get("t"))]);
    assert_eq!(first, retry);
    assert_eq!(first, vec![message(&big)]);
}

#[test]
fn same_commands_same_state() {
    let commands = vec![
        keyed("a", 1, create("t")),
        plain(create("u")),
        keyed("b", 1, put("t", "1")),
        keyed("c", 1, put("u", "2")),
        keyed("a", 2, put("t", "3")),
        keyed("b", 2, get("t")),
        keyed("d", 1, put("t", "4")),
        keyed("b", 2, get("t")),
    ];
    let mut first = Queue::new(config(2));
    let mut second = Queue::new(config(2));
    let first_outcomes = run(&mut first, &commands);
    let second_outcomes = run(&mut second, &commands);
    assert_eq!(first_outcomes, second_outcomes);
    assert_eq!(first, second);
    assert_eq!(first.digest(), second.digest());

    run(&mut second, &[plain(get("t"))]);
    run(&mut first, &[plain(get("u"))]);
    assert_ne!(first, second, "different commands, different state");
    assert_ne!(first.digest(), second.digest());
}

#[test]
fn snapshot_round_trip() {
    let mut queue = Queue::new(config(3));
    run(
        &mut queue,
        &[
            plain(create("t")),
            plain(create("empty")),
            plain(put("t", "text")),
            keyed("a", 1, put("t", "a")),
            keyed("b", 1, get("t")),
            keyed("c", 1, get("missing")),
            keyed("a", 2, put("t", "a2")),
            keyed("d", 1, create("d")),
        ],
    );
    queue.apply_command(
        queue.last_applied().next(),
        &plain(Command::Put {
            topic: "t".into(),
            message: Payload::Binary(vec![0, 255, 1]),
        }),
    );
    let mut bytes = Vec::new();
    queue
        .encode_snapshot(&mut bytes)
        .expect("encoding into a Vec");
    let restored = Queue::decode_snapshot(config(3), bytes.as_slice()).expect("own snapshot");
    restored.check_invariants();
    assert_eq!(restored, queue);
    assert_eq!(restored.stats(), queue.stats());
    assert_eq!(restored.topics(), queue.topics());
    assert_eq!(restored.digest(), queue.digest());

    // Restoring with fewer sessions allowed forgets the least recently used, as applying would.
    let smaller = Queue::decode_snapshot(config(1), bytes.as_slice()).expect("own snapshot");
    smaller.check_invariants();
    let remembered: Vec<&str> = smaller
        .sessions
        .iter_oldest_first()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(remembered, vec!["d"]);

    // Errors, not panics, for anything that is not a snapshot.
    let mut trailing = bytes.clone();
    trailing.push(0);
    let mut wrong_format = bytes.clone();
    wrong_format[0] = 3;
    let cases: Vec<(&str, &[u8])> = vec![
        ("empty", b""),
        ("trailing", &trailing),
        ("format", &wrong_format),
        ("truncated", &bytes[..bytes.len() - 1]),
    ];
    for (name, input) in cases {
        assert!(
            Queue::decode_snapshot(config(3), input).is_err(),
            "case {name}"
        );
    }
    assert!(matches!(
        Queue::decode_snapshot(config(3), wrong_format.as_slice()),
        Err(SnapshotError::Format { found: 3 })
    ));
}

#[test]
fn a_snapshot_view_encodes_the_state_at_the_time_it_was_taken() {
    let mut queue = Queue::new(config(4));
    let mut commands = vec![plain(create("a")), plain(create("b"))];
    for n in 0..3000 {
        commands.push(keyed(
            &format!("c{}", n % 6),
            n / 6 + 1,
            put("a", &format!("m{n}")),
        ));
        if n % 3 == 0 {
            commands.push(plain(get("a")));
        }
    }
    run(&mut queue, &commands);
    let view = queue.snapshot_view();
    let mut expected = Vec::new();
    queue.encode_snapshot(&mut expected).expect("encode");
    // Change everything the view shares: messages at both ends, sessions, topics.
    let mut later = vec![plain(create("c")), plain(put("b", "x"))];
    for n in 0..2000 {
        later.push(keyed(&format!("c{}", n % 6), 1000 + n, get("a")));
        later.push(plain(put("a", &format!("later {n}"))));
    }
    run(&mut queue, &later);
    let mut encoded = Vec::new();
    view.encode_snapshot(&mut encoded).expect("encode");
    assert_eq!(encoded, expected, "the view moved with the queue");
    view.check_invariants();
    assert_ne!(view.digest(), queue.digest());
}

#[test]
fn snapshot_with_inconsistent_sessions_is_refused() {
    fn encode(last_applied: u64, sessions: Vec<(&str, u64, Outcome, u64)>) -> Vec<u8> {
        let mut bytes = rmp_serde::to_vec(&1u32).expect("encoding into a Vec");
        let topics: Vec<(String, Vec<Payload>)> = vec![];
        let sessions: Vec<(&str, u64, Outcome, LogIndex)> = sessions
            .into_iter()
            .map(|(id, seq, outcome, used)| (id, seq, outcome, LogIndex(used)))
            .collect();
        bytes.extend(
            rmp_serde::to_vec(&(LogIndex(last_applied), topics, sessions)).expect("encoding"),
        );
        bytes
    }
    let cases = vec![
        (
            "valid",
            encode(
                5,
                vec![("a", 1, Outcome::Done, 2), ("b", 1, Outcome::Done, 4)],
            ),
            true,
        ),
        (
            "out of order",
            encode(
                5,
                vec![("a", 1, Outcome::Done, 4), ("b", 1, Outcome::Done, 2)],
            ),
            false,
        ),
        (
            "same index",
            encode(
                5,
                vec![("a", 1, Outcome::Done, 4), ("b", 1, Outcome::Done, 4)],
            ),
            false,
        ),
        (
            "twice",
            encode(
                5,
                vec![("a", 1, Outcome::Done, 2), ("a", 2, Outcome::Done, 4)],
            ),
            false,
        ),
        ("future", encode(3, vec![("a", 1, Outcome::Done, 4)]), false),
    ];
    for (name, bytes, valid) in cases {
        let result = Queue::decode_snapshot(QueueConfig::default(), bytes.as_slice());
        assert_eq!(result.is_ok(), valid, "case {name}: {result:?}");
    }
}

#[test]
fn config_validation() {
    let cases = [
        (QueueConfig::default(), true),
        (config(1), true),
        (config(0), false),
        (config(SESSIONS_MAX_LIMIT), true),
        (config(SESSIONS_MAX_LIMIT + 1), false),
        (
            QueueConfig {
                session_bytes_max: 0,
                ..QueueConfig::default()
            },
            false,
        ),
        (quota_config(1, 1, 1), true),
        (quota_config(1, 0, 1), false),
        (quota_config(1, 1, 0), false),
        (quota_config(1, usize::MAX, TOPICS_MAX_LIMIT), true),
        (quota_config(1, 1, TOPICS_MAX_LIMIT + 1), false),
    ];
    for (case, (config, valid)) in cases.into_iter().enumerate() {
        assert_eq!(config.validate().is_ok(), valid, "case {case}: {config:?}");
    }
    let parsed: QueueConfig = serde_json::from_str(r#"{"sessions_max": 7, "unknown": 1}"#)
        .expect("missing fields default, unknown ones are ignored");
    assert_eq!(parsed, config(7));
    assert_eq!(QueueConfig::default().queued_bytes_max, 2 << 30);
    assert_eq!(QueueConfig::default().topics_max, 10_000);
}

#[test]
fn quotas_refuse_with_quota_and_change_nothing() {
    use ErrorCode::*;
    // Two topics; two 5-byte messages fill the queued bytes exactly.
    let mut queue = Queue::new(quota_config(10, 2 * charge(5), 2));
    // (command, expected outcome, topics after, queued bytes after)
    let cases: Vec<(Command, Seen, Vec<&str>, usize)> = vec![
        (create("a"), Seen::Done, vec!["a"], 0),
        (create("b"), Seen::Done, vec!["a", "b"], 0),
        (create("c"), Seen::Failed(Quota), vec!["a", "b"], 0),
        // The more precise answer first: it exists.
        (create("a"), Seen::Failed(TopicExists), vec!["a", "b"], 0),
        (put("a", "12345"), Seen::Done, vec!["a", "b"], charge(5)),
        (put("b", "67890"), Seen::Done, vec!["a", "b"], 2 * charge(5)),
        (
            put("a", "x"),
            Seen::Failed(Quota),
            vec!["a", "b"],
            2 * charge(5),
        ),
        // An empty message is not free: its header counts.
        (
            put("b", ""),
            Seen::Failed(Quota),
            vec!["a", "b"],
            2 * charge(5),
        ),
        (
            put("c", "x"),
            Seen::Failed(NoSuchTopic),
            vec!["a", "b"],
            2 * charge(5),
        ),
        (get("a"), seen_message("12345"), vec!["a", "b"], charge(5)),
        (
            put("a", "x"),
            Seen::Done,
            vec!["a", "b"],
            charge(5) + charge(1),
        ),
        // Exactly full is allowed: 9 + 5 + 4 = 18.
        (put("a", ""), Seen::Done, vec!["a", "b"], 2 * charge(5)),
        (
            put("a", ""),
            Seen::Failed(Quota),
            vec!["a", "b"],
            2 * charge(5),
        ),
        (
            get("b"),
            seen_message("67890"),
            vec!["a", "b"],
            charge(1) + charge(0),
        ),
        (get("a"), seen_message("x"), vec!["a", "b"], charge(0)),
        (get("a"), seen_message(""), vec!["a", "b"], 0),
        (create("c"), Seen::Failed(Quota), vec!["a", "b"], 0),
    ];
    let state = |queue: &Queue| {
        let contents: Vec<Vec<Payload>> = queue
            .topics()
            .iter()
            .map(|topic| messages_of(queue, topic))
            .collect();
        (queue.stats(), contents)
    };
    for (case, (command, expected, topics, queued_bytes)) in cases.into_iter().enumerate() {
        let before = state(&queue);
        let outcome = run(&mut queue, &[plain(command)]).remove(0);
        assert_eq!(seen(&outcome), expected, "case {case}");
        assert_eq!(queue.topics(), topics, "case {case}");
        assert_eq!(queue.queued_bytes(), queued_bytes, "case {case}");
        if let Seen::Failed(_) = expected {
            assert_eq!(
                state(&queue),
                before,
                "case {case}: a refusal changes nothing"
            );
        }
    }
}

#[test]
fn refusals_over_a_quota_say_which_and_how_much() {
    let mut queue = Queue::new(quota_config(10, charge(3), 1));
    let outcomes = run(
        &mut queue,
        &[
            plain(create("a")),
            plain(create("b")),
            plain(put("a", "abc")),
            plain(put("a", "d")),
        ],
    );
    let Outcome::Failed(topics) = &outcomes[1] else {
        panic!("refused: {:?}", outcomes[1]);
    };
    assert_eq!(
        topics.message,
        "topic \"b\" not created: the cluster holds 1 topics, its topics_max"
    );
    let Outcome::Failed(bytes) = &outcomes[3] else {
        panic!("refused: {:?}", outcomes[3]);
    };
    assert_eq!(
        bytes.message,
        "message not queued: 7 bytes are queued and it needs 5 more, over queued_bytes_max \
         (7); consume messages first"
    );
}

/// A session records a QUOTA refusal like any outcome: the retry gets it again, even once
/// there is room, and nothing is queued twice; the next seq is a new request.
#[test]
fn a_quota_refusal_is_recorded_in_the_session() {
    let mut queue = Queue::new(quota_config(10, charge(1), 10));
    let outcomes = run(
        &mut queue,
        &[
            keyed("p", 1, create("t")),
            keyed("p", 2, put("t", "1")),
            keyed("p", 3, put("t", "2")),
            keyed("c", 1, get("t")),
            keyed("p", 3, put("t", "2")),
            keyed("p", 4, put("t", "2")),
        ],
    );
    let codes: Vec<Seen> = outcomes.iter().map(seen).collect();
    assert_eq!(
        codes,
        vec![
            Seen::Done,
            Seen::Done,
            Seen::Failed(ErrorCode::Quota),
            seen_message("1"),
            Seen::Failed(ErrorCode::Quota),
            Seen::Done,
        ]
    );
    assert_eq!(messages_of(&queue, "t"), vec![Payload::Text("2".into())]);
}

/// Replicas with the same quotas decide the same refusals in log order: same outcomes,
/// same state, same digest; a replica restored from a snapshot taken while full goes on
/// deciding the same (the quotas come from the config, what counts against them from the
/// state).
#[test]
fn replicas_with_the_same_quotas_agree() {
    let config = || quota_config(3, 3 * charge(1), 2);
    let commands: Vec<LoggedCommand> = vec![
        keyed("a", 1, create("t")),
        plain(create("u")),
        plain(create("v")),
        keyed("b", 1, put("t", "1")),
        keyed("c", 1, put("u", "2")),
        keyed("a", 2, put("t", "3")),
        keyed("b", 2, put("t", "4")),
        keyed("d", 1, get("t")),
    ];
    let rest: Vec<LoggedCommand> = vec![
        keyed("b", 2, put("t", "4")),
        keyed("b", 3, put("t", "4")),
        plain(put("u", "5")),
        plain(get("u")),
        plain(put("u", "5")),
    ];
    let mut first = Queue::new(config());
    let mut second = Queue::new(config());
    let first_outcomes = run(&mut first, &commands);
    assert_eq!(first_outcomes, run(&mut second, &commands));
    assert_eq!(
        seen(&first_outcomes[6]),
        Seen::Failed(ErrorCode::Quota),
        "the fourth message is over"
    );
    assert_eq!(first, second);
    assert_eq!(first.digest(), second.digest());

    let mut bytes = Vec::new();
    first
        .encode_snapshot(&mut bytes)
        .expect("encoding into a Vec");
    let mut restored = Queue::decode_snapshot(config(), bytes.as_slice()).expect("own snapshot");
    assert_eq!(restored.digest(), first.digest());
    assert_eq!(restored.queued_bytes(), first.queued_bytes());
    let expected = run(&mut first, &rest);
    assert_eq!(run(&mut restored, &rest), expected);
    assert_eq!(
        expected.iter().map(seen).collect::<Vec<_>>(),
        vec![
            Seen::Failed(ErrorCode::Quota),
            Seen::Done,
            Seen::Failed(ErrorCode::Quota),
            seen_message("2"),
            Seen::Done,
        ]
    );
    assert_eq!(restored, first);
    assert_eq!(restored.digest(), first.digest());
}

/// A lowered quota keeps what is queued (GETs drain it) and refuses PUTs until the state
/// is back below it.
#[test]
fn a_state_over_a_lowered_quota_keeps_its_messages() {
    let mut queue = Queue::new(QueueConfig::default());
    run(
        &mut queue,
        &[
            plain(create("a")),
            plain(create("b")),
            plain(put("a", "1")),
            plain(put("a", "2")),
        ],
    );
    let mut bytes = Vec::new();
    queue
        .encode_snapshot(&mut bytes)
        .expect("encoding into a Vec");
    let mut lowered =
        Queue::decode_snapshot(quota_config(10, charge(1), 1), bytes.as_slice()).expect("valid");
    assert_eq!(lowered.topics(), vec!["a", "b"]);
    let outcomes = run(
        &mut lowered,
        &[
            plain(create("c")),
            plain(put("a", "3")),
            plain(get("a")),
            plain(put("a", "3")),
            plain(get("a")),
            plain(put("a", "3")),
        ],
    );
    assert_eq!(
        outcomes.iter().map(seen).collect::<Vec<_>>(),
        vec![
            Seen::Failed(ErrorCode::Quota),
            Seen::Failed(ErrorCode::Quota),
            seen_message("1"),
            Seen::Failed(ErrorCode::Quota),
            seen_message("2"),
            Seen::Done,
        ]
    );
}

#[test]
fn sizes() {
    // Pinned so a change in per-topic or per-session cost is a conscious one (module docs).
    // A topic also holds its delivery settings, its seq counter and two (empty, heap-free)
    // maps for returned and leased messages.
    assert_eq!(std::mem::size_of::<Topic>(), 184);
    assert_eq!(std::mem::size_of::<fifo::MessageFifo>(), 56);
    // The outcome lives behind an Arc (snapshot views share it): 16 bytes of counts plus
    // the Outcome itself, one allocation.
    assert_eq!(std::mem::size_of::<session::Session>(), 24);
    // A leased delivery (message, receipt, count) is held inline.
    assert_eq!(std::mem::size_of::<crate::protocol::Outcome>(), 64);
}

// ---- Model-based property test ----

/// The specification, written the plain way: a map of deques, a list of names, and a
/// session table scanned for the least recently used.
#[derive(Default)]
struct Model {
    topics: Vec<String>,
    queues: HashMap<String, VecDeque<Payload>>,
    /// client_id -> (seq, outcome, last use)
    sessions: HashMap<String, (u64, Seen, u64)>,
    sessions_max: usize,
    queued_bytes_max: usize,
    topics_max: usize,
}

impl Model {
    fn new(config: &QueueConfig) -> Model {
        Model {
            sessions_max: config.sessions_max,
            queued_bytes_max: config.queued_bytes_max,
            topics_max: config.topics_max,
            ..Model::default()
        }
    }

    /// Every queued message's length plus its header.
    fn queued_bytes(&self) -> usize {
        self.queues
            .values()
            .flatten()
            .map(|message| charge(message.len()))
            .sum()
    }
}

impl Model {
    fn execute(&mut self, command: &Command) -> Seen {
        match command {
            Command::CreateTopic { topic } => {
                if self.queues.contains_key(topic) {
                    return Seen::Failed(ErrorCode::TopicExists);
                }
                if self.topics.len() >= self.topics_max {
                    return Seen::Failed(ErrorCode::Quota);
                }
                self.topics.push(topic.clone());
                self.queues.insert(topic.clone(), VecDeque::new());
                Seen::Done
            }
            Command::Put { topic, message } => {
                let queued_bytes = self.queued_bytes();
                match self.queues.get_mut(topic) {
                    None => Seen::Failed(ErrorCode::NoSuchTopic),
                    Some(_) if queued_bytes + charge(message.len()) > self.queued_bytes_max => {
                        Seen::Failed(ErrorCode::Quota)
                    }
                    Some(queue) => {
                        queue.push_back(message.clone());
                        Seen::Done
                    }
                }
            }
            Command::Get { topic } => match self.queues.get_mut(topic) {
                None => Seen::Failed(ErrorCode::NoSuchTopic),
                Some(queue) => match queue.pop_front() {
                    None => Seen::Failed(ErrorCode::Empty),
                    Some(message) => Seen::Message(message),
                },
            },
            other => unreachable!("this model covers the version 1 commands only, not {other:?}"),
        }
    }

    fn apply(&mut self, index: u64, command: &LoggedCommand) -> Seen {
        let Some(key) = &command.session else {
            return self.execute(&command.command);
        };
        match self.sessions.get(&key.client_id) {
            Some((seq, outcome, _)) if *seq == key.seq => return outcome.clone(),
            Some((seq, _, _)) if *seq > key.seq => return Seen::Failed(ErrorCode::SessionExpired),
            None if key.seq > 1 => return Seen::Failed(ErrorCode::SessionExpired),
            _ => {}
        }
        let outcome = self.execute(&command.command);
        self.sessions
            .insert(key.client_id.clone(), (key.seq, outcome.clone(), index));
        if self.sessions.len() > self.sessions_max {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(id, _)| id.clone())
                .expect("not empty");
            self.sessions.remove(&oldest);
        }
        outcome
    }
}

fn command_strategy() -> impl Strategy<Value = LoggedCommand> {
    let topic = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string);
    let payload = prop_oneof![
        "[a-z]{0,6}".prop_map(Payload::Text),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(Payload::Binary),
    ];
    let command = prop_oneof![
        1 => topic.clone().prop_map(|topic| Command::CreateTopic { topic }),
        4 => (topic.clone(), payload).prop_map(|(topic, message)| Command::Put { topic, message }),
        3 => topic.prop_map(|topic| Command::Get { topic }),
    ];
    let session = prop_oneof![
        1 => Just(None),
        2 => (prop::sample::select(vec!["w", "x", "y", "z"]), 0u64..5).prop_map(|(client_id, seq)| {
            Some(SessionKey { client_id: client_id.to_string(), seq })
        }),
    ];
    (session, command).prop_map(|(session, command)| LoggedCommand { session, command })
}

/// Small session tables, and quotas from "hit at once" to "never hit".
fn config_strategy() -> impl Strategy<Value = QueueConfig> {
    let queued_bytes_max = prop_oneof![1usize..40, Just(QUEUED_BYTES_MAX_DEFAULT)];
    let topics_max = prop_oneof![1usize..4, Just(TOPICS_MAX_DEFAULT)];
    (1usize..4, queued_bytes_max, topics_max).prop_map(
        |(sessions_max, queued_bytes_max, topics_max)| {
            quota_config(sessions_max, queued_bytes_max, topics_max)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn behaves_like_the_model(
        config in config_strategy(),
        commands in proptest::collection::vec(command_strategy(), 0..120),
    ) {
        let mut queue = Queue::new(config.clone());
        let mut model = Model::new(&config);
        for (step, command) in commands.iter().enumerate() {
            let index = step as u64 + 1;
            let outcome = queue.apply(LogIndex(index), &command.encode());
            let expected = model.apply(index, command);
            prop_assert_eq!(seen(&outcome), expected, "step {}: {:?}", step, command);
            queue.check_invariants();
        }
        prop_assert_eq!(queue.topics(), model.topics.clone());
        for topic in ["a", "b", "c"] {
            let expected = model.queues.get(topic).map(VecDeque::len);
            prop_assert_eq!(queue.queued(topic), expected, "topic {}", topic);
            if let Some(messages) = model.queues.get(topic) {
                prop_assert_eq!(messages_of(&queue, topic), Vec::from(messages.clone()));
            }
        }
        let mut remembered: Vec<(String, u64)> = queue
            .sessions
            .iter_oldest_first()
            .map(|(id, session)| (id.to_string(), session.seq))
            .collect();
        remembered.sort();
        let mut expected: Vec<(String, u64)> =
            model.sessions.iter().map(|(id, (seq, _, _))| (id.clone(), *seq)).collect();
        expected.sort();
        prop_assert_eq!(remembered, expected);
    }

    /// A node restored from a snapshot taken at any point, then fed the rest of the log,
    /// ends equal to a node that applied the whole log: the snapshot carries everything
    /// that decides future outcomes, eviction order included.
    #[test]
    fn snapshot_then_rest_equals_whole_log(
        config in config_strategy(),
        commands in proptest::collection::vec(command_strategy(), 0..80),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(commands.len() + 1);
        let mut whole = Queue::new(config.clone());
        let whole_outcomes = run(&mut whole, &commands);

        let mut before = Queue::new(config.clone());
        let mut outcomes = run(&mut before, &commands[..cut]);
        let mut bytes = Vec::new();
        before.encode_snapshot(&mut bytes).expect("encoding into a Vec");
        let mut restored = Queue::decode_snapshot(config, bytes.as_slice())
            .expect("own snapshot");
        prop_assert_eq!(&restored, &before);
        outcomes.extend(run(&mut restored, &commands[cut..]));

        prop_assert_eq!(outcomes, whole_outcomes);
        prop_assert_eq!(&restored, &whole);
        prop_assert_eq!(restored.digest(), whole.digest());
    }

    #[test]
    fn snapshot_decode_never_panics(
        commands in proptest::collection::vec(command_strategy(), 0..20),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut queue = Queue::new(config(2));
        run(&mut queue, &commands);
        let mut bytes = Vec::new();
        queue.encode_snapshot(&mut bytes).expect("encoding into a Vec");
        for (position, value) in flips {
            let position = position.index(bytes.len());
            bytes[position] = value;
        }
        let length = cut.index(bytes.len() + 1);
        if let Ok(decoded) = Queue::decode_snapshot(config(2), &bytes[..length]) {
            decoded.check_invariants();
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_apply(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
        let mut queue = Queue::new(config(2));
        run(&mut queue, &[plain(create("a"))]);
        queue.apply(LogIndex(2), &bytes);
        queue.check_invariants();
    }
}

impl Queue {
    /// Heap bytes held by queued messages (payloads, headers, spare segment room).
    fn message_heap_bytes(&self) -> usize {
        self.topics
            .iter()
            .map(|topic| topic.messages.heap_bytes())
            .sum()
    }
}

mod delivery;
