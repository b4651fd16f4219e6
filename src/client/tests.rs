//! The client's retry, redirect and timeout logic against fake nodes (`fake_node.rs`):
//! in-process ROUTER sockets on loopback, each run by a thread that answers with canned
//! replies and records every request it decoded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fake_node::{outcome_reply, Answer, FakeNode};
use super::*;

fn failed(code: ErrorCode) -> Outcome {
    Outcome::Failed(ErrorInfo::new(code, format!("fake {}", code.as_str())))
}

fn client(nodes: &[&FakeNode], attempt_timeout_ms: u64, deadline_ms: u64) -> Client {
    Client::connect(ClientOptions {
        nodes: nodes.iter().map(|node| node.address.clone()).collect(),
        attempt_timeout: Duration::from_millis(attempt_timeout_ms),
        deadline: Duration::from_millis(deadline_ms),
        hedge_after: None,
        curve: None,
    })
    .expect("valid options")
}

fn status(id: u64, role: &str) -> StatusReport {
    StatusReport {
        role: role.to_string(),
        term: 3,
        id,
        leader: Some(0),
        commit_index: 5,
        last_applied: 5,
        last_log_index: 6,
        peers: Vec::new(),
        fsync: "always".to_string(),
        wal_syncs: 0,
        wal_entries: 0,
        requests: 0,
    }
}

#[test]
fn not_leader_hint_leads_straight_to_the_leader_and_is_remembered() {
    let leader = FakeNode::answering(Outcome::Done, None);
    let bystander = FakeNode::answering(Outcome::Done, None);
    let follower = FakeNode::answering(failed(ErrorCode::NotLeader), Some(leader.leader_info(2)));
    let mut client = client(&[&follower, &bystander, &leader], 2_000, 10_000);

    assert!(client.create_topic("orders").expect("created"));
    client
        .put("orders", Payload::Text("one".into()))
        .expect("put");

    assert_eq!(
        follower.requests().len(),
        1,
        "only the first call asks the follower"
    );
    assert_eq!(
        bystander.requests().len(),
        0,
        "the hint skips the nodes in between"
    );
    assert_eq!(leader.requests().len(), 2);
    assert_eq!(client.leader(), Some(&leader.address));
    assert_eq!(
        follower.requests()[0],
        leader.requests()[0],
        "the redirect re-sends the same request"
    );
}

#[test]
fn hint_to_an_unknown_node_is_learned() {
    let leader = FakeNode::answering(Outcome::Topics(vec!["a".into()]), None);
    let follower = FakeNode::answering(failed(ErrorCode::NotLeader), Some(leader.leader_info(7)));
    let mut client = client(&[&follower], 2_000, 10_000);

    assert_eq!(client.list_topics().expect("listed"), ["a"]);
    assert_eq!(
        client.nodes(),
        [follower.address.clone(), leader.address.clone()]
    );
}

#[test]
fn without_a_hint_the_nodes_are_tried_in_turn() {
    let follower = FakeNode::answering(failed(ErrorCode::NotLeader), None);
    let candidate = FakeNode::answering(failed(ErrorCode::Unavailable), None);
    let leader = FakeNode::answering(Outcome::Message(Payload::Binary(vec![0, 255])), None);
    let mut client = client(&[&follower, &candidate, &leader], 2_000, 10_000);

    assert_eq!(
        client.get("orders").expect("popped"),
        Some(Payload::Binary(vec![0, 255]))
    );
    let sent = [&follower, &candidate, &leader].map(|node| node.requests());
    assert!(sent.iter().all(|requests| requests.len() == 1), "{sent:?}");
    assert!(
        sent.iter().all(|requests| requests[0] == sent[0][0]),
        "{sent:?}"
    );
}

#[test]
fn silent_node_is_left_after_the_attempt_timeout_with_the_same_session_key() {
    let silent = FakeNode::silent();
    let leader = FakeNode::answering(Outcome::Done, None);
    let mut client = client(&[&silent, &leader], 200, 10_000);

    client
        .put("orders", Payload::Text("one".into()))
        .expect("put");

    let lost = silent.wait_for_requests(1);
    let served = leader.requests();
    assert_eq!(lost.len(), 1);
    assert_eq!(served.len(), 1);
    assert_eq!(lost[0], served[0], "the retry is the same request");
    let session = served[0]
        .session
        .clone()
        .expect("a put carries a session key");
    assert_eq!(session.client_id, client.client_id());
    assert_eq!(session.seq, 1);
    assert_eq!(served[0].version, 2);
}

#[test]
fn a_silent_node_that_keeps_its_connection_is_hedged_around_with_the_same_request() {
    // Thirty seconds per attempt and no drop (the silent node stays up): only a hedge can
    // explain an answer before then.
    let stopped = FakeNode::silent();
    let leader = FakeNode::leader(None, 0);
    let follower = FakeNode::follower_of(&leader);
    let mut client = Client::connect(ClientOptions {
        nodes: vec![
            stopped.address.clone(),
            follower.address.clone(),
            leader.address.clone(),
        ],
        attempt_timeout: Duration::from_secs(30),
        deadline: Duration::from_secs(120),
        hedge_after: Some(Duration::from_millis(100)),
        curve: None,
    })
    .expect("valid options");
    let started = Instant::now();
    client
        .put("orders", Payload::Text("one".into()))
        .expect("answered by the leader the follower names");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered after {:?}: the attempt timeout, not a hedge, moved the call",
        started.elapsed()
    );
    let waited_on = stopped.wait_for_requests(1);
    let refused = follower.wait_for_requests(1);
    let served = leader.requests();
    assert_eq!(served.len(), 1);
    assert_eq!(waited_on[0], served[0], "the hedge is the same request");
    assert_eq!(refused[0], served[0], "the hedge is the same request");
    assert_eq!(client.leader(), Some(&leader.address));
}

#[test]
fn a_dropped_connection_sends_the_pending_call_elsewhere_without_waiting_out_the_attempt() {
    // Thirty seconds per attempt: only the drop can explain an answer before then.
    let doomed = FakeNode::silent();
    let leader = FakeNode::leader(None, 0);
    let mut client = client(&[&doomed, &leader], 30_000, 120_000);
    let started = Instant::now();
    let put = std::thread::spawn(move || {
        let result = client.put("orders", Payload::Text("one".into()));
        (result, client)
    });
    let pending = doomed.wait_for_requests(1);
    assert_eq!(pending.len(), 1, "the first attempt waits on node 0");
    drop(doomed); // Closes its socket: the client's connection drops.
    let (result, client) = put.join().expect("the caller does not panic");
    result.expect("answered by the other node");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered after {:?}: the attempt timeout, not the drop, moved the call",
        started.elapsed()
    );
    let served = leader.requests();
    assert_eq!(served.len(), 1);
    assert_eq!(pending[0], served[0], "the retry is the same request");
    assert_eq!(
        served[0].session.as_ref().map(|session| session.seq),
        Some(1),
        "same session key"
    );
    assert_eq!(client.leader(), Some(&leader.address));
}

#[test]
fn a_refused_connection_is_left_at_once_and_reported_by_status() {
    let port = crate::transport::ports::free_port().expect("a free port");
    let nobody = NodeAddress::new("127.0.0.1", port).expect("address");
    let leader = FakeNode::leader(None, 0);
    let mut client = Client::connect(ClientOptions {
        nodes: vec![nobody.clone(), leader.address.clone()],
        attempt_timeout: Duration::from_secs(30),
        deadline: Duration::from_secs(120),
        hedge_after: None,
        curve: None,
    })
    .expect("valid options");
    let started = Instant::now();
    client
        .put("orders", Payload::Text("one".into()))
        .expect("answered by the node that listens");
    let status = client.status_of(&nobody);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}: a refused connection was waited on for the attempt timeout",
        started.elapsed()
    );
    match status {
        Err(ClientError::Timeout { last_problem, .. }) => {
            assert!(last_problem.contains("refused"), "{last_problem}")
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert_eq!(leader.requests().len(), 1);
}

#[test]
fn retries_keep_the_seq_and_the_next_call_takes_the_next_one() {
    // Ignores the first request, answers every later one.
    let node = FakeNode::start(Box::new(|number, _| {
        if number == 0 {
            Vec::new()
        } else {
            vec![(number, outcome_reply(Outcome::Done, None))]
        }
    }));
    let mut client = client(&[&node], 200, 10_000);

    client
        .put("orders", Payload::Text("one".into()))
        .expect("first put");
    client
        .put("orders", Payload::Text("two".into()))
        .expect("second put");
    assert!(client.create_topic("more").expect("created"));
    client
        .list_topics()
        .expect_err("a Done reply to a list is unexpected");

    let requests = node.requests();
    let keys: Vec<Option<(String, u64)>> = requests
        .iter()
        .map(|request| {
            request
                .session
                .as_ref()
                .map(|key| (key.client_id.clone(), key.seq))
        })
        .collect();
    let id = client.client_id().to_string();
    assert_eq!(
        keys,
        [
            Some((id.clone(), 1)),
            Some((id.clone(), 1)),
            Some((id.clone(), 2)),
            Some((id, 3)),
            None,
        ],
        "reads carry no session key"
    );
    assert_eq!(requests[0], requests[1]);
}

#[test]
fn stale_reply_to_an_earlier_call_is_dropped() {
    // Request 0 (call 1) is held until request 2 (call 2) arrives; then its reply goes out
    // just before the reply to request 2, on the same socket.
    let node = FakeNode::start(Box::new(|number, _| {
        let topics = |number: usize| {
            outcome_reply(
                Outcome::Topics(vec![format!("answer to request {number}")]),
                None,
            )
        };
        match number {
            0 => Vec::new(),
            2 => vec![(0, topics(0)), (2, topics(2))],
            _ => vec![(number, topics(number))],
        }
    }));
    let mut client = client(&[&node], 200, 10_000);

    assert_eq!(
        client.list_topics().expect("first list"),
        ["answer to request 1"],
        "call 1 is answered by its retry"
    );
    assert_eq!(
        client.list_topics().expect("second list"),
        ["answer to request 2"],
        "the late reply to call 1 must not answer call 2"
    );
}

#[test]
fn late_reply_to_an_earlier_attempt_of_the_same_call_is_accepted() {
    // The first node answers its first request only after the client has moved on to the
    // second node, which never answers, and ignores later requests: only that late reply can
    // end the call.
    let slow_release = Arc::new(AtomicBool::new(false));
    let slow = {
        let release = Arc::clone(&slow_release);
        FakeNode::start(Box::new(move |number, _| {
            let deadline = Instant::now() + Duration::from_secs(10);
            if number > 0 {
                return Vec::new();
            }
            while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            vec![(number, outcome_reply(Outcome::Done, None))]
        }))
    };
    let silent = {
        let release = Arc::clone(&slow_release);
        FakeNode::start(Box::new(move |_, _| {
            release.store(true, Ordering::SeqCst);
            Vec::new()
        }))
    };
    let mut client = client(&[&slow, &silent], 200, 10_000);

    client
        .put("orders", Payload::Text("one".into()))
        .expect("put");
    assert_eq!(client.leader(), Some(&slow.address));
}

#[test]
fn no_answer_before_the_deadline_is_a_timeout_and_says_when_the_outcome_is_unknown() {
    let silent = FakeNode::silent();
    let mut client = client(&[&silent], 100, 400);

    let started = Instant::now();
    let error = client
        .put("orders", Payload::Text("one".into()))
        .expect_err("nobody answers");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        matches!(
            error,
            ClientError::Timeout {
                outcome_unknown: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_outcome_unknown());
    assert!(error.to_string().contains("outcome is unknown"), "{error}");

    let error = client.list_topics().expect_err("nobody answers");
    assert!(
        matches!(
            error,
            ClientError::Timeout {
                outcome_unknown: false,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.to_string().contains("outcome"), "{error}");

    let requests = silent.wait_for_requests(3);
    let first = requests[0].session.clone().expect("a session key");
    assert!(
        requests
            .iter()
            .filter(|request| request.session.is_some())
            .all(|request| request.session.as_ref() == Some(&first)),
        "every retry of the put carries the same key: {requests:?}"
    );
}

#[test]
fn refusals_until_the_deadline_end_as_unavailable() {
    let nodes = [
        FakeNode::answering(failed(ErrorCode::Unavailable), None),
        FakeNode::answering(failed(ErrorCode::NotLeader), None),
    ];
    let mut client = client(&[&nodes[0], &nodes[1]], 200, 600);

    let error = client.create_topic("orders").expect_err("no leader");
    assert!(
        matches!(
            error,
            ClientError::Unavailable {
                outcome_unknown: true,
                ..
            }
        ),
        "{error:?}"
    );
    // Backing off between rounds: a few rounds, not thousands.
    let asked: usize = nodes.iter().map(|node| node.requests().len()).sum();
    assert!((2..100).contains(&asked), "{asked} requests in 600ms");
}

#[test]
fn decisive_failures_become_typed_results() {
    type Check = fn(&mut Client) -> Result<String, String>;
    let cases: [(ErrorCode, Check); 9] = [
        (ErrorCode::TopicExists, |client| {
            client
                .create_topic("t")
                .map(|created| format!("created {created}"))
                .map_err(|e| format!("{e:?}"))
        }),
        (ErrorCode::Empty, |client| {
            client
                .get("t")
                .map(|message| format!("{message:?}"))
                .map_err(|e| format!("{e:?}"))
        }),
        (ErrorCode::NoSuchTopic, |client| {
            client
                .put("t", Payload::Text("m".into()))
                .map(|()| "put".into())
                .map_err(|e| format!("{e:?}"))
        }),
        (ErrorCode::BadRequest, |client| {
            client
                .get("t")
                .map(|_| "got".into())
                .map_err(|e| format!("{e:?}"))
        }),
        (ErrorCode::TooLarge, |client| {
            client
                .put("t", Payload::Text("m".into()))
                .map(|()| "put".into())
                .map_err(|e| format!("{e:?}"))
        }),
        (ErrorCode::SessionExpired, |client| {
            client
                .get("t")
                .map(|_| "got".into())
                .map_err(|e| format!("{e:?}"))
        }),
        (ErrorCode::Quota, |client| {
            client
                .put("t", Payload::Text("m".into()))
                .map(|()| "put".into())
                .map_err(|e| format!("{e:?}"))
        }),
        (ErrorCode::Forbidden, |client| {
            client
                .get("t")
                .map(|_| "got".into())
                .map_err(|e| format!("{e:?}"))
        }),
        (ErrorCode::Unspecified, |client| {
            client
                .create_topic("t")
                .map(|created| format!("created {created}"))
                .map_err(|e| format!("{e:?}"))
        }),
    ];
    let expected = [
        Ok("created false"),
        Ok("None"),
        Err("NoSuchTopic"),
        Err("BadRequest"),
        Err("TooLarge"),
        Err("SessionExpired"),
        Err("Quota"),
        Err("Forbidden"),
        Err("Refused"),
    ];
    for (number, ((code, check), expected)) in cases.into_iter().zip(expected).enumerate() {
        let node = FakeNode::answering(failed(code), None);
        let mut client = client(&[&node], 2_000, 10_000);
        let result = check(&mut client);
        match (expected, &result) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "case {number} ({code:?})"),
            (Err(want), Err(got)) => {
                assert!(got.starts_with(want), "case {number} ({code:?}): {got}")
            }
            _ => panic!("case {number} ({code:?}): expected {expected:?}, got {result:?}"),
        }
        assert_eq!(
            node.requests().len(),
            1,
            "case {number}: a decisive answer is not retried"
        );
    }
}

#[test]
fn undecodable_reply_is_an_error_not_a_retry() {
    let node = FakeNode::start(Box::new(|number, _| {
        vec![(number, Answer::Raw(vec![0xc1]))]
    }));
    let mut client = client(&[&node], 2_000, 10_000);

    let error = client.list_topics().expect_err("garbage");
    assert!(matches!(error, ClientError::BadReply { .. }), "{error:?}");
    assert_eq!(node.requests().len(), 1);
}

#[test]
fn status_all_asks_every_node_at_once_and_reports_the_silent_ones() {
    let leader = FakeNode::start(Box::new(|number, _| {
        vec![(number, Answer::Reply(Reply::Status(status(0, "Leader"))))]
    }));
    let silent = FakeNode::silent();
    let follower = FakeNode::start(Box::new(|number, _| {
        vec![(number, Answer::Reply(Reply::Status(status(2, "Follower"))))]
    }));
    let mut client = client(&[&leader, &silent, &follower], 300, 10_000);

    let results = client.status_all();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].0, leader.address);
    assert_eq!(
        results[0]
            .1
            .as_ref()
            .map(|status| status.role.as_str())
            .ok(),
        Some("Leader")
    );
    assert!(
        matches!(
            &results[1].1,
            Err(ClientError::Timeout {
                outcome_unknown: false,
                ..
            })
        ),
        "{:?}",
        results[1].1
    );
    assert_eq!(results[2].1.as_ref().map(|status| status.id).ok(), Some(2));

    let one = client
        .status_of(&follower.address)
        .expect("the follower answers");
    assert_eq!(one.role, "Follower");
    assert!(silent
        .wait_for_requests(1)
        .iter()
        .all(|request| request.operation == Operation::Status));
}

#[test]
fn empty_node_lists_and_zero_durations_are_refused() {
    let node = NodeAddress::new("127.0.0.1", 1).expect("valid");
    let cases: [(Vec<NodeAddress>, u64, u64); 3] = [
        (Vec::new(), 1_000, 1_000),
        (vec![node.clone()], 0, 1_000),
        (vec![node], 1_000, 0),
    ];
    for (number, (nodes, attempt_ms, deadline_ms)) in cases.into_iter().enumerate() {
        let result = Client::connect(ClientOptions {
            nodes,
            attempt_timeout: Duration::from_millis(attempt_ms),
            deadline: Duration::from_millis(deadline_ms),
            hedge_after: None,
            curve: None,
        });
        assert!(result.is_err(), "case {number} accepted");
    }
}

#[test]
fn stats_come_from_each_node_and_a_wrong_report_kind_is_an_error() {
    let stats = StatsReport {
        id: 0,
        last_applied: 9,
        digest: 0xdead_beef,
        topic_count: 1,
        message_count: 2,
        payload_bytes: 3,
        session_count: 4,
        cluster_id: 5,
        members: Vec::new(),
    };
    let node = {
        let stats = stats.clone();
        // Answers stats to everything, status requests included.
        FakeNode::start(Box::new(move |number, _| {
            vec![(number, Answer::Reply(Reply::Stats(stats.clone())))]
        }))
    };
    let mut client = client(&[&node], 2_000, 10_000);

    let all = client.stats_all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.as_ref().ok(), Some(&stats));
    assert_eq!(client.stats_of(&node.address).ok(), Some(stats));
    let error = client
        .status_of(&node.address)
        .expect_err("stats is not status");
    assert!(
        matches!(error, ClientError::MismatchedReply { .. }),
        "{error:?}"
    );
    let operations: Vec<Operation> = node
        .requests()
        .into_iter()
        .map(|request| request.operation)
        .collect();
    assert_eq!(
        operations,
        [Operation::Stats, Operation::Stats, Operation::Status]
    );
}

#[test]
fn a_blocking_get_is_not_retried_while_the_node_holds_it_for_the_wait() {
    // The fake holds the GET for longer than one attempt timeout and the hedge delay, as a
    // node does while a blocking GET waits; both grow by the wait for this call, so the
    // client keeps waiting instead of re-sending or hedging.
    let delivery = Delivery {
        message: Payload::Text("late".into()),
        receipt: "7.1".into(),
        deliveries: 1,
    };
    let answer = delivery.clone();
    let node = FakeNode::start(Box::new(move |number, request| {
        let outcome = match &request.operation {
            Operation::Fetch { .. } => {
                std::thread::sleep(Duration::from_millis(900));
                Outcome::Delivered(answer.clone())
            }
            _ => Outcome::Done,
        };
        vec![(number, outcome_reply(outcome, None))]
    }));
    // A second node that a retry or a hedge would reach.
    let follower = FakeNode::follower_of(&node);
    let mut client = Client::connect(ClientOptions {
        nodes: vec![node.address.clone(), follower.address.clone()],
        attempt_timeout: Duration::from_millis(300),
        deadline: Duration::from_millis(1_000),
        hedge_after: Some(Duration::from_millis(200)),
        curve: None,
    })
    .expect("valid options");

    let got = client
        .get_leased(
            "jobs",
            Duration::from_secs(30),
            Some(Duration::from_secs(5)),
        )
        .expect("answered within the lengthened attempt");
    assert_eq!(got, Some(delivery));
    let requests = node.requests();
    assert_eq!(requests.len(), 1, "no retry during the wait: {requests:?}");
    assert!(
        follower.requests().is_empty(),
        "no hedge during the wait: {:?}",
        follower.requests()
    );
    assert_eq!(
        requests[0].operation,
        Operation::Fetch {
            topic: "jobs".into(),
            options: FetchOptions {
                lease_ms: Some(30_000),
                wait_ms: Some(5_000),
                max: None,
            },
        }
    );
    assert!(
        requests[0].session.is_some(),
        "a leased GET is a session write"
    );

    assert_eq!(
        client.calls.timing().attempt_timeout,
        Duration::from_millis(300),
        "the next call has the normal timing again"
    );
    client.ack("jobs", "7.1").expect("done after the wait");
}

#[test]
fn acks_map_stale_receipts_and_batches_report_counts_and_stale_lists() {
    let node = FakeNode::start(Box::new(|number, request| {
        let outcome = match &request.operation {
            Operation::Ack {
                receipts: Receipts::One(receipt),
                ..
            } if receipt == "1.1" => Outcome::Done,
            Operation::Ack {
                receipts: Receipts::One(_),
                ..
            }
            | Operation::Touch { .. } => failed(ErrorCode::StaleReceipt),
            Operation::Nack {
                receipts: Receipts::Many(receipts),
                ..
            } => Outcome::Stale(receipts[1..].to_vec()),
            Operation::PutBatch { messages, .. } => Outcome::Count(messages.len() as u64),
            Operation::ListTopicDetails => Outcome::TopicDetails(vec![TopicDetail {
                name: "jobs".into(),
                ready: 2,
                leased: 1,
                max_deliveries: Some(3),
                dead_letter: Some("dlq".into()),
                discarded: 0,
            }]),
            Operation::CreateTopicWith { .. } => failed(ErrorCode::TopicExists),
            Operation::Fetch { .. } => failed(ErrorCode::Empty),
            other => panic!("unexpected {other:?}"),
        };
        vec![(number, outcome_reply(outcome, None))]
    }));
    let mut client = client(&[&node], 2_000, 10_000);

    client.ack("jobs", "1.1").expect("the live receipt");
    match client.ack("jobs", "9.9") {
        Err(ClientError::StaleReceipt { topic, receipt }) => {
            assert_eq!((topic.as_str(), receipt.as_str()), ("jobs", "9.9"))
        }
        other => panic!("expected a stale receipt, got {other:?}"),
    }
    assert!(matches!(
        client.touch("jobs", "9.9", Duration::from_secs(1)),
        Err(ClientError::StaleReceipt { .. })
    ));
    let receipts = vec!["1.1".to_string(), "2.2".to_string(), "3.3".to_string()];
    assert_eq!(
        client.nack_many("jobs", &receipts).expect("answered"),
        ["2.2", "3.3"]
    );
    let messages = vec![Payload::Text("a".into()), Payload::Text("b".into())];
    assert_eq!(client.put_batch("jobs", messages).expect("put"), 2);
    assert_eq!(client.list_topic_details().expect("listed")[0].leased, 1);
    let settings = TopicSettings {
        max_deliveries: Some(3),
        dead_letter: Some("dlq".into()),
    };
    assert!(!client.create_topic_with("jobs", settings).expect("exists"));
    assert_eq!(
        client.get_batch("jobs", 10, None).expect("empty"),
        Vec::<Payload>::new()
    );
    assert_eq!(
        client
            .get_leased("jobs", Duration::from_micros(1), None)
            .expect("empty"),
        None
    );
    let sent = node.requests();
    match &sent.last().expect("sent").operation {
        Operation::Fetch { options, .. } => {
            assert_eq!(
                options.lease_ms,
                Some(1),
                "a sub-millisecond lease rounds up"
            )
        }
        other => panic!("{other:?}"),
    }
    let seqs: Vec<u64> = node
        .session_keys()
        .into_iter()
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every write in a session"
    );
}

#[test]
fn a_session_refused_before_the_log_is_replaced_by_a_new_one_until_one_is_applied() {
    // Answers: BAD_REQUEST (a gateway refusal), EMPTY after a blocking wait, Done (applied:
    // the session opens), a plain EMPTY, then Done to everything.
    let node = FakeNode::start(Box::new(|number, _| {
        let outcome = match number {
            0 => failed(ErrorCode::BadRequest),
            1 | 3 => failed(ErrorCode::Empty),
            _ => Outcome::Done,
        };
        vec![(number, outcome_reply(outcome, None))]
    }));
    let mut client = client(&[&node], 2_000, 10_000);

    client
        .put("orders", Payload::Text("refused".into()))
        .expect_err("BAD_REQUEST");
    assert_eq!(
        client
            .get_wait("orders", Duration::from_millis(10))
            .expect("EMPTY after the wait"),
        None
    );
    client
        .put("orders", Payload::Text("applied".into()))
        .expect("put");
    assert_eq!(client.get("orders").expect("a plain EMPTY"), None);
    client
        .put("orders", Payload::Text("next".into()))
        .expect("put");

    let keys: Vec<(String, u64)> = node
        .requests()
        .iter()
        .map(|request| {
            let key = request.session.as_ref().expect("a session key");
            (key.client_id.clone(), key.seq)
        })
        .collect();
    // Each refusal before the log leaves the next request at seq 1 of a new client_id; the
    // session opened by the applied put keeps its id through the plain EMPTY.
    assert_eq!(
        keys.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        [1, 1, 1, 2, 3]
    );
    assert_ne!(keys[0].0, keys[1].0);
    assert_ne!(keys[1].0, keys[2].0);
    assert_eq!(keys[2].0, keys[3].0);
    assert_eq!(keys[3].0, keys[4].0);
    assert_eq!(keys[4].0, client.client_id());
}
