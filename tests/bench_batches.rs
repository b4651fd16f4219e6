//! `rrmq bench` with the v2 delivery options against a real local 3-node cluster: `produce
//! --batch`, `consume --max`, `consume --ack` (with and without `--max`, pipelined and
//! inline), `consume --wait`, and `wakeup` (blocked consumers, one PUT at a time).
//! Each run is short; the assertions are on what the report counts (messages put, handed out
//! and acknowledged), never on speed, which is what the benchmark itself is for.

mod common;

use common::Cluster;
use rrmq::client::{Client, ClientOptions, NodeAddress};
use rrmq::protocol::TopicDetail;
use serde_json::Value;

/// Runs `rrmq --json bench ARGS` and returns the report's operation named `name`.
fn bench(cluster: &Cluster, args: &[&str]) -> Value {
    let mut full = vec!["--json", "bench"];
    full.extend_from_slice(args);
    let run = cluster.rrmq(&full);
    run.assert_code(0, &format!("rrmq bench {args:?}"));
    serde_json::from_slice(&run.stdout).expect("a JSON report")
}

fn operation<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["operations"]
        .as_array()
        .and_then(|operations| {
            operations
                .iter()
                .find(|operation| operation["operation"] == name)
        })
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

/// Every topic with its ready and leased counts, in creation order.
fn topic_details(cluster: &Cluster) -> Vec<TopicDetail> {
    let nodes = cluster
        .ports
        .iter()
        .map(|ports| NodeAddress::new("127.0.0.1", ports.port).expect("address"))
        .collect();
    let mut client = Client::connect(ClientOptions::new(nodes)).expect("a client");
    client.list_topic_details().expect("topic details")
}

fn no_errors(operation: &Value) {
    assert_eq!(operation["errors"], serde_json::json!({}), "{operation}");
}

#[test]
fn bench_batches_leases_acks_and_waits_count_every_message() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader_via_rrmq();

    // produce --batch 10 --count 250: 25 requests carrying 250 messages.
    let report = bench(
        &cluster,
        &["produce", "--batch", "10", "--count", "250", "-c", "4"],
    );
    let put = operation(&report, "put");
    no_errors(put);
    assert_eq!(put["completed"], 25, "{report}");
    assert_eq!(put["messages"], 250, "{report}");
    assert!(put["messages_per_second"].as_f64().is_some(), "{report}");

    // consume --max 10: 300 messages in batches; each consumer's last GET is EMPTY.
    let report = bench(
        &cluster,
        &["consume", "--max", "10", "--messages", "300", "-c", "3"],
    );
    let get = operation(&report, "get");
    no_errors(get);
    assert_eq!(get["messages"], 300, "{report}");
    assert_eq!(get["empty"], 3, "{report}");
    assert!(
        get["completed"].as_u64().is_some_and(|calls| calls >= 30),
        "{report}"
    );

    let mut details = topic_details(&cluster);
    // consume --max 10 --ack: every prefilled message leased and acknowledged exactly once,
    // none refused as stale, and the topic ends empty (each consumer's last GET answered
    // EMPTY); with the ACKs pipelined (the default) and inline.
    for mode in [None, Some("--ack-inline")] {
        let mut args = vec![
            "consume",
            "--max",
            "10",
            "--ack",
            "--messages",
            "200",
            "-c",
            "2",
        ];
        args.extend(mode);
        let report = bench(&cluster, &args);
        let get = operation(&report, "get");
        let ack = operation(&report, "ack");
        no_errors(get);
        no_errors(ack);
        assert_eq!(get["messages"], 200, "{mode:?}: {report}");
        assert_eq!(ack["messages"], 200, "{mode:?}: {report}");
        assert_eq!(ack["stale_receipts"], 0, "{mode:?}: {report}");
        assert_eq!(get["empty"], 2, "{mode:?}: {report}");
        let before = details.len();
        details = topic_details(&cluster);
        for topic in &details[before..] {
            assert_eq!(
                (topic.ready, topic.leased),
                (0, 0),
                "{mode:?}: {topic:?}: every message acknowledged, none left leased"
            );
        }
    }

    // consume --ack without --max: one leased GET and one ACK per message.
    let report = bench(
        &cluster,
        &["consume", "--ack", "--messages", "30", "-c", "2"],
    );
    let ack = operation(&report, "ack");
    no_errors(ack);
    assert_eq!(ack["completed"], 30, "{report}");
    assert_eq!(ack["messages"], 30, "{report}");

    // consume --wait: blocking GETs drain the topic, then each waits once and gets EMPTY.
    let report = bench(
        &cluster,
        &["consume", "--wait", "200ms", "--messages", "20", "-c", "2"],
    );
    let get = operation(&report, "get");
    no_errors(get);
    assert_eq!(get["completed"], 20, "{report}");
    assert_eq!(get["empty"], 2, "{report}");

    // Without the new flags, the report has no message counts (output unchanged).
    let report = bench(&cluster, &["produce", "--count", "20"]);
    let put = operation(&report, "put");
    assert_eq!(put["completed"], 20, "{report}");
    assert!(put.get("messages").is_none(), "{report}");
}

#[test]
fn bench_wakeup_times_every_round_and_loses_no_message() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader_via_rrmq();
    let report = {
        let run = cluster.rrmq(&[
            "--json",
            "bench",
            "wakeup",
            "-c",
            "3",
            "--rounds",
            "30",
            "--interval",
            "5ms",
        ]);
        run.assert_code(0, "rrmq bench wakeup");
        serde_json::from_slice::<Value>(&run.stdout).expect("a JSON report")
    };
    assert_eq!(report["rounds"], 30, "{report}");
    assert_eq!(
        report["received"], 30,
        "every round's message received: {report}"
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["put_errors"], 0, "{report}");
    let wakeup = &report["wakeup_after_put_reply_ms"];
    for field in ["p50", "p90", "p99", "min", "max"] {
        assert!(wakeup[field].as_f64().is_some(), "{field}: {report}");
    }
    assert!(wakeup["negative"].as_u64().is_some(), "{report}");
    // The message left the producer before it reached a consumer: never negative.
    assert!(
        report["received_after_put_sent_ms"]["min"]
            .as_f64()
            .is_some_and(|min| min >= 0.0),
        "{report}"
    );
}

/// `RRMQ_BENCH_CONNECTIONS` chooses the connections when `--connections` is not given (how
/// scripts/compare.sh runs peerbench's own `rrmq bench` command with one shared connection),
/// and the flag still wins over it.
#[test]
fn the_connections_come_from_the_environment_unless_the_flag_is_given() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader_via_rrmq();
    let config = cluster.config_path.to_str().expect("a UTF-8 temp path");
    let run = |extra: &[&str]| -> Value {
        let mut args = vec![
            "--config",
            config,
            "--timeout",
            "30s",
            "--json",
            "bench",
            "produce",
            "--count",
            "40",
            "-c",
            "4",
        ];
        args.extend_from_slice(extra);
        let output = std::process::Command::new(common::RRMQ)
            .args(&args)
            .env("RRMQ_BENCH_CONNECTIONS", "shared")
            .output()
            .expect("run rrmq bench");
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("a JSON report")
    };
    let report = run(&[]);
    assert_eq!(report["parameters"]["connections"], "shared", "{report}");
    assert_eq!(operation(&report, "put")["completed"], 40, "{report}");
    let report = run(&["--connections", "per-client"]);
    assert_eq!(
        report["parameters"]["connections"], "per-client",
        "{report}"
    );
}
