//! `rrmq bench` with the v2 delivery options against a real local 3-node cluster: `produce
//! --batch`, `consume --max`, `consume --ack` (with and without `--max`) and `consume --wait`.
//! Each run is short; the assertions are on what the report counts (messages put, handed out
//! and acknowledged), never on speed, which is what the benchmark itself is for.

mod common;

use common::Cluster;
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

    // consume --max 10 --ack: every prefilled message leased and acknowledged exactly once,
    // and the topic ends empty (each consumer's last GET answered EMPTY).
    let report = bench(
        &cluster,
        &[
            "consume",
            "--max",
            "10",
            "--ack",
            "--messages",
            "200",
            "-c",
            "2",
        ],
    );
    let get = operation(&report, "get");
    let ack = operation(&report, "ack");
    no_errors(get);
    no_errors(ack);
    assert_eq!(get["messages"], 200, "{report}");
    assert_eq!(ack["messages"], 200, "{report}");
    assert_eq!(get["empty"], 2, "{report}");

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
