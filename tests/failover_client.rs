//! Issue 14, failover as a client sees it: the client library leaves a leader whose process
//! died as soon as its connection drops, not after its attempt timeout; a leader that is
//! stopped (its connections stay up) is hedged around after the hedge delay; and `rrmq bench
//! failover` measures both paths end to end (report shape only: speed is for the benchmark
//! itself, not for tests).

mod common;

use common::{rrmq, Cluster, Permit, LEADER_DEADLINE, RRMQ_NODE};
use rrmq::client::{Client, ClientOptions, NodeAddress};
use rrmq::protocol::Payload;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Far longer than anything else the test waits for: a call that ends before one attempt
/// timeout has passed was moved on by the dropped connection or a hedge, not by the timer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The nodes of a started cluster as the client library names them.
fn addresses_of(cluster: &Cluster) -> Vec<NodeAddress> {
    cluster
        .ports
        .iter()
        .map(|ports| NodeAddress::new("127.0.0.1", ports.port).expect("address"))
        .collect()
}

#[test]
fn a_put_at_a_stopped_leader_is_hedged_to_the_new_leader_and_applied_once() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let addresses = addresses_of(&cluster);
    // Hedging as by default; the attempt timeout is far out of reach, and a stopped process
    // keeps its connections, so neither the timer nor a drop can move the call.
    let (mut client, leader) =
        client_after_a_put(&addresses, ClientOptions::new(addresses.clone()));

    cluster.signal(leader, libc::SIGSTOP);
    let sent = Instant::now();
    let result = client.put("t", Payload::Text("during".into()));
    let elapsed = sent.elapsed();
    if let Err(error) = result {
        cluster.signal(leader, libc::SIGCONT);
        cluster.dump_logs();
        panic!("the put to a stopped leader failed: {error}");
    }
    assert!(
        elapsed < ATTEMPT_TIMEOUT,
        "answered {elapsed:?} after sending: the attempt timeout, not a hedge, moved the call"
    );
    assert!(
        client
            .leader()
            .is_some_and(|answered| *answered != addresses[leader]),
        "another node answered"
    );
    // Applied once, though the request also waits in the stopped leader's socket.
    let messages: Vec<Option<Payload>> = (0..3)
        .map(|_| client.get("t").expect("get at the new leader"))
        .collect();
    assert_eq!(
        messages,
        vec![
            Some(Payload::Text("before".into())),
            Some(Payload::Text("during".into())),
            None
        ]
    );

    // Resumed, the old leader reads the request it was sent and learns it was deposed; the
    // cluster agrees on one leader and term again, and the request was still applied once.
    cluster.signal(leader, libc::SIGCONT);
    cluster.wait_for_leader(LEADER_DEADLINE);
    assert_eq!(
        client.get("t").expect("get after the old leader resumed"),
        None
    );
}

#[test]
fn a_put_at_a_killed_leader_completes_elsewhere_before_its_attempt_timeout() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let addresses = addresses_of(&cluster);
    // No hedges: only the dropped connection may move the call.
    let (mut client, leader) = client_after_a_put(
        &addresses,
        ClientOptions {
            hedge_after: None,
            ..ClientOptions::new(addresses.clone())
        },
    );

    // Stopped, the leader answers nothing: the next put waits on it (or is about to be
    // sent to it) when it is killed. Which of the two it is does not matter here; the
    // client library's unit test with a fake node pins the request already at the node.
    cluster.signal(leader, libc::SIGSTOP);
    let sent = Instant::now();
    let put = std::thread::spawn(move || {
        let result = client.put("t", Payload::Text("during".into()));
        (result, client)
    });
    cluster.kill(leader); // Its connections close: the client's drops.

    let (result, mut client) = put.join().expect("the caller does not panic");
    result.unwrap_or_else(|error| {
        cluster.dump_logs();
        panic!("the pending put failed: {error}")
    });
    assert!(
        sent.elapsed() < ATTEMPT_TIMEOUT,
        "answered {:?} after sending: the attempt timeout, not the drop, moved the call",
        sent.elapsed()
    );
    assert_ne!(
        client.leader(),
        Some(&addresses[leader]),
        "a new leader answered"
    );
    // Applied once: the killed leader never acknowledged it, and the retry carried the same
    // session key.
    let messages: Vec<Option<Payload>> = (0..3)
        .map(|_| client.get("t").expect("get at the new leader"))
        .collect();
    assert_eq!(
        messages,
        vec![
            Some(Payload::Text("before".into())),
            Some(Payload::Text("during".into())),
            None
        ]
    );
}

#[test]
fn bench_failover_reports_a_recovery_for_every_failure_of_either_kind() {
    let _permit = Permit::acquire(); // The benchmark starts a cluster of its own.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_root = dir.path().join("data");
    std::fs::create_dir(&data_root).expect("data root");
    let data_root_text = data_root.to_str().expect("a UTF-8 temp path");
    let run = rrmq(
        &[
            "--json",
            "--attempt-timeout",
            "1s",
            "bench",
            "failover",
            "--kills",
            "2",
            "--signal",
            "both",
            "--settle",
            "200ms",
            "--fsync",
            "never",
            "--node-bin",
            RRMQ_NODE,
            "--data-root",
            data_root_text,
        ],
        b"",
        dir.path(),
    );
    run.assert_code(0, "rrmq bench failover");
    let report = run.json();
    assert_eq!(report["nodes"], 3, "{report}");
    assert_eq!(report["clients"], 1, "{report}");
    assert_eq!(report["attempt_timeout_ms"], 1000.0, "{report}");
    assert_eq!(report["hedge_after_ms"], 600.0, "{report}");
    let runs = report["runs"].as_array().expect("runs");
    let signals: Vec<&str> = runs
        .iter()
        .filter_map(|run| run["signal"].as_str())
        .collect();
    assert_eq!(signals, ["SIGKILL", "SIGSTOP"], "{report}");
    for run in runs {
        let signal = &run["signal"];
        let failures = run["failures"].as_array().expect("failures");
        assert_eq!(failures.len(), 2, "{signal}: {run}");
        for (position, failure) in failures.iter().enumerate() {
            assert_eq!(failure["number"], position + 1, "{signal}: {failure}");
            let recovery = failure["recovery_ms"].as_f64();
            assert!(
                recovery.is_some_and(|ms| ms > 0.0),
                "{signal}: writes did not resume: {failure}"
            );
            assert!(failure["longest_gap_ms"].as_f64().is_some(), "{failure}");
            let leader = failure["leader"].as_u64().expect("leader");
            let by = failure["acknowledged_by"].as_u64().expect("a new leader");
            assert_ne!(by, leader, "{signal}: the failed leader cannot acknowledge");
            assert!(by < 3 && leader < 3, "{failure}");
        }
        assert_eq!(run["recovered"], 2, "{signal}: {run}");
        for summary in ["recovery", "longest_gap"] {
            for key in ["p50_ms", "p99_ms", "max_ms"] {
                assert!(
                    run[summary][key].as_f64().is_some(),
                    "{signal}: {summary}.{key}: {run}"
                );
            }
        }
        assert!(
            run["writes_acknowledged"].as_u64().is_some_and(|n| n > 0),
            "{run}"
        );
    }
    let left: Vec<Value> = std::fs::read_dir(&data_root)
        .expect("data root")
        .filter_map(Result::ok)
        .map(|entry| Value::from(entry.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(left.is_empty(), "data dirs left behind: {left:?}");
}

/// A client with `options` (its attempt timeout far out of reach) that created topic `t` and
/// put "before" there, and the index of the leader that acknowledged it.
fn client_after_a_put(addresses: &[NodeAddress], options: ClientOptions) -> (Client, usize) {
    let mut client = Client::connect(ClientOptions {
        attempt_timeout: ATTEMPT_TIMEOUT,
        deadline: Duration::from_secs(120),
        ..options
    })
    .expect("options");
    client.create_topic("t").expect("create the topic");
    client
        .put("t", Payload::Text("before".into()))
        .expect("put at the leader");
    let leader_address = client.leader().cloned().expect("a put finds the leader");
    let leader = addresses
        .iter()
        .position(|address| *address == leader_address)
        .expect("the leader is a configured node");
    (client, leader)
}
