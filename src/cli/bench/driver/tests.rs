//! The driver against fake nodes (`crate::client::fake_node`): redirects, silence, draining,
//! and the measured window.

use super::*;
use crate::client::fake_node::FakeNode;
use crate::protocol::ErrorInfo;
use std::collections::BTreeMap;

fn plan(roles: Vec<Role>, connections: Connections) -> Plan {
    Plan {
        roles,
        message: Payload::Binary(vec![7; 10]),
        measure_for: None,
        put_count: None,
        warmup: Duration::ZERO,
        timing: Timing {
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(10),
            hedge_after: None,
        },
        empty_pause: Duration::ZERO,
        connections,
        progress: false,
        watch_pids: Vec::new(),
        batching: Default::default(),
    }
}

fn producers(count: usize) -> Vec<Role> {
    (0..count)
        .map(|_| Role::Producer {
            topic: "t".to_string(),
        })
        .collect()
}

#[test]
fn redirects_and_silence_are_retried_with_the_same_session_key() {
    for connections in [Connections::PerClient, Connections::Shared] {
        let leader = FakeNode::leader(Some(1), 0);
        let follower = FakeNode::follower_of(&leader);
        let plan = Plan {
            put_count: Some(20),
            ..plan(producers(4), connections)
        };
        let result = run(
            &plan,
            vec![follower.address.clone(), leader.address.clone()],
            0,
            &mut || {},
        )
        .expect("the run completes");

        let operations = result.recorder.finish(result.elapsed);
        let put = &operations[0];
        assert_eq!(put.completed, 20, "{connections:?}: {put:?}");
        assert!(put.errors.is_empty(), "{connections:?}: {put:?}");
        // Each client's first call: follower -> redirect -> leader (silent) -> silence ->
        // follower -> redirect -> leader (answers). Later calls start at the leader.
        assert_eq!(
            put.retries,
            BTreeMap::from([("redirect".to_string(), 8), ("silence".to_string(), 4)]),
            "{connections:?}"
        );

        let at_leader = leader.session_keys();
        let mut per_client: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (client_id, seq) in &at_leader {
            per_client.entry(client_id.clone()).or_default().push(*seq);
        }
        assert_eq!(
            per_client.len(),
            4,
            "{connections:?}: one session per client"
        );
        let mut distinct = 0;
        for (client_id, seqs) in &per_client {
            assert_eq!(
                &seqs[..2],
                &[1, 1],
                "{connections:?} {client_id}: the retry repeats seq 1"
            );
            let expected: Vec<u64> = (1..seqs.len() as u64).collect();
            assert_eq!(
                &seqs[1..],
                &expected[..],
                "{connections:?} {client_id}: one call at a time, seq without gaps"
            );
            distinct += expected.len();
        }
        assert_eq!(
            distinct, 20,
            "{connections:?}: exactly the count, no extra put"
        );
        assert_eq!(
            follower.session_keys().len(),
            8,
            "{connections:?}: the follower saw the two redirected attempts of each first call"
        );
    }
}

#[test]
fn consumers_drain_the_topic_and_stop_at_empty() {
    let leader = FakeNode::leader(None, 30);
    let roles = (0..3)
        .map(|_| Role::Consumer {
            topic: "t".to_string(),
            until_empty: true,
        })
        .collect();
    let result = run(
        &plan(roles, Connections::PerClient),
        vec![leader.address.clone()],
        0,
        &mut || {},
    )
    .expect("the run completes");
    let operations = result.recorder.finish(result.elapsed);
    let get = &operations[0];
    assert_eq!(get.operation, OperationKind::Get);
    assert_eq!((get.completed, get.empty), (30, 3), "{get:?}");
    assert!(get.latency_ms.is_some());
    assert!(result.elapsed > Duration::ZERO);
    assert_eq!(
        leader.session_keys().len(),
        33,
        "30 messages and one EMPTY per consumer"
    );
}

#[test]
fn a_duration_run_stops_on_time_and_abandons_nothing_it_counted() {
    let leader = FakeNode::leader(None, 0);
    let plan = Plan {
        measure_for: Some(Duration::from_millis(300)),
        warmup: Duration::from_millis(100),
        ..plan(producers(2), Connections::PerClient)
    };
    let started = Instant::now();
    // What the leader had seen when the window opened and when it closed.
    let mut seen_at_edges = Vec::new();
    let result = run(&plan, vec![leader.address.clone()], 0, &mut || {
        seen_at_edges.push(leader.session_keys().len())
    })
    .expect("the run completes");
    let took = started.elapsed();
    assert_eq!(
        seen_at_edges.len(),
        2,
        "opened and closed: {seen_at_edges:?}"
    );
    assert!(
        seen_at_edges[0] > 0 && seen_at_edges[1] > seen_at_edges[0],
        "the window opens after the warmup's calls and closes after its own: {seen_at_edges:?}"
    );
    assert!(
        took >= Duration::from_millis(400),
        "warmup plus measured time: {took:?}"
    );
    assert_eq!(
        result.elapsed,
        Duration::from_millis(300),
        "the measured window"
    );
    let operations = result.recorder.finish(result.elapsed);
    let put = &operations[0];
    let acknowledged = leader.session_keys().len() as u64;
    assert!(put.completed > 0, "{put:?}");
    assert!(
        put.completed < acknowledged,
        "calls during the warmup are not counted: {} of {acknowledged}",
        put.completed
    );
}

#[test]
fn tags_name_the_client_and_the_call() {
    let cases: [(usize, u32); 3] = [(0, 1), (299, 7), (12, u32::MAX)];
    for (number, (client, call)) in cases.into_iter().enumerate() {
        assert_eq!(
            parse_tag(&tag(client, call)),
            Some((client, call)),
            "case {number}"
        );
    }
    assert_eq!(parse_tag(b"short"), None);
}

#[test]
fn replies_are_classified_for_the_machine() {
    let failed = |code| Reply::Outcome {
        outcome: Outcome::Failed(ErrorInfo::new(code, "x")),
        leader: Some(LeaderInfo {
            id: 2,
            ip: "127.0.0.1".to_string(),
            port: 1,
        }),
    };
    let cases: Vec<(Reply, Answer)> = vec![
        (
            Reply::Outcome {
                outcome: Outcome::Done,
                leader: None,
            },
            Answer::Decisive(Verdict::Done),
        ),
        (
            Reply::Outcome {
                outcome: Outcome::Message(Payload::Text("m".into())),
                leader: None,
            },
            Answer::Decisive(Verdict::Message),
        ),
        (failed(ErrorCode::Empty), Answer::Decisive(Verdict::Empty)),
        (
            failed(ErrorCode::NoSuchTopic),
            Answer::Decisive(Verdict::Failed(ErrorCode::NoSuchTopic)),
        ),
        (
            failed(ErrorCode::NotLeader),
            Answer::Retry {
                code: ErrorCode::NotLeader,
                hint: Some(5),
            },
        ),
        (
            failed(ErrorCode::ShuttingDown),
            Answer::Retry {
                code: ErrorCode::ShuttingDown,
                hint: Some(5),
            },
        ),
        (
            Reply::Outcome {
                outcome: Outcome::Topics(vec![]),
                leader: None,
            },
            Answer::Decisive(Verdict::Unexpected),
        ),
    ];
    for (number, (reply, expected)) in cases.into_iter().enumerate() {
        assert_eq!(classify(reply, |_| Some(5)), expected, "case {number}");
    }
}

#[test]
fn a_dropped_connection_moves_waiting_clients_on_at_once_and_acks_are_observed() {
    for connections in [Connections::PerClient, Connections::Shared] {
        let doomed = FakeNode::silent();
        let leader = FakeNode::leader(None, 0);
        // Thirty seconds per attempt: only the drop can explain the calls ending sooner.
        let plan = Plan {
            put_count: Some(2),
            timing: Timing {
                attempt_timeout: Duration::from_secs(30),
                deadline: Duration::from_secs(120),
                hedge_after: None,
            },
            ..plan(producers(2), connections)
        };
        let nodes = vec![doomed.address.clone(), leader.address.clone()];
        let (acks, acked) = crossbeam_channel::unbounded();
        let observer = Observer {
            stop: Arc::new(AtomicBool::new(false)),
            acks,
        };
        let started = Instant::now();
        let result = std::thread::scope(|scope| {
            let run = scope.spawn(|| run_observed(&plan, nodes, 0, observer));
            let pending = doomed.wait_for_requests(2);
            assert_eq!(pending.len(), 2, "{connections:?}: both wait on node 0");
            drop(doomed); // Its socket closes: every connection to it drops.
            run.join().expect("the driver does not panic")
        })
        .expect("the run completes");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{connections:?}: took {:?}: the attempt timeout moved the calls, not the drop",
            started.elapsed()
        );
        let operations = result.recorder.finish(result.elapsed);
        let put = &operations[0];
        assert_eq!(put.completed, 2, "{connections:?}: {put:?}");
        assert_eq!(
            put.retries,
            BTreeMap::from([("dropped".to_string(), 2)]),
            "{connections:?}"
        );
        let acks: Vec<Ack> = acked.try_iter().collect();
        assert_eq!(acks.len(), 2, "{connections:?}: {acks:?}");
        assert!(
            acks.iter().all(|ack| ack.node == 1 && ack.begun <= ack.at),
            "{connections:?}: {acks:?}"
        );
    }
}

#[test]
fn an_observed_run_stops_when_told() {
    let leader = FakeNode::leader(None, 0);
    let plan = plan(producers(1), Connections::PerClient);
    let (acks, acked) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let observer = Observer {
        stop: Arc::clone(&stop),
        acks,
    };
    let result = std::thread::scope(|scope| {
        let run = scope.spawn(|| run_observed(&plan, vec![leader.address.clone()], 0, observer));
        // Endless producing until told: wait for a few acknowledgements first.
        let mut seen = 0;
        while seen < 3 {
            if acked.recv_timeout(Duration::from_secs(10)).is_err() {
                break;
            }
            seen += 1;
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(seen, 3, "acknowledgements are reported as they come");
        run.join().expect("the driver does not panic")
    })
    .expect("the run ends");
    assert!(result.recorder.finish(result.elapsed)[0].completed >= 3);
}
