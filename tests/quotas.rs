//! Issue 13, quotas: a cluster whose `config.json` sets `topics_max` and `queued_bytes_max`
//! refuses a topic create or a PUT beyond them with `QUOTA` (v2) or exactly
//! `{"success": false}` (v1), changes nothing on any node, and accepts PUTs again once
//! consumers made room. Real node processes, raw ZeroMQ + MessagePack/JSON.

mod common;

use common::{
    create_topic_request, error_code, get_request, put_request, without_leader, Cluster,
    SessionClient, Wire, LEADER_DEADLINE,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOPICS_MAX: u64 = 3;
const QUEUED_BYTES_MAX: u64 = 10 * 1024;
/// What a queued message counts besides its length (its record header).
const MESSAGE_OVERHEAD_BYTES: u64 = 4;
/// Ten of these count 10 * 1004 = 10,040 of the 10,240 queued bytes allowed.
const MESSAGE_BYTES: usize = 1000;

const RETRY_WITHIN: Duration = Duration::from_secs(30);
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

fn settings() -> Value {
    json!({"topics_max": TOPICS_MAX, "queued_bytes_max": QUEUED_BYTES_MAX})
}

/// Message `n`: its number, padded to [`MESSAGE_BYTES`].
fn message(n: usize) -> String {
    let mut text = format!("m{n:03}-");
    text.extend(std::iter::repeat_n('.', MESSAGE_BYTES - text.len()));
    text
}

/// A v1 request answered by a node that led, in one term, both before and after: its
/// `{"success": false}` is then the state machine's answer, not a follower's.
fn v1_at_leader(cluster: &Cluster, wire: Wire, request: &Value) -> Value {
    let deadline = Instant::now() + RETRY_WITHIN;
    loop {
        let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
        let reply = cluster.client(leader).call(wire, request);
        if cluster.leader_now() == Some((leader, term)) {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "no stable leader to ask {request}"
        );
    }
}

fn assert_quota(reply: &Value, what: &str, mentions: &str) {
    assert_eq!(reply["success"], false, "{what}: {reply}");
    assert_eq!(error_code(reply), Some("QUOTA"), "{what}: {reply}");
    let text = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(text.contains(mentions), "{what}: {reply}");
}

fn assert_done(reply: Value, what: &str) {
    assert_eq!(without_leader(reply), json!({"success": true}), "{what}");
}

/// Every node has applied all the leader committed, with the same digest; its stats.
fn converged(cluster: &Cluster) -> Value {
    let applied = cluster.leader_applied(CONVERGE_WITHIN);
    cluster.wait_converged(applied, CONVERGE_WITHIN)
}

#[test]
fn quota_refusals_change_nothing_and_room_comes_back_after_consuming() {
    // Frequent snapshots: the restart below loads one.
    let mut cluster = Cluster::start_configured(3, &["--snapshot-entries", "8"], &settings());
    let mut client = SessionClient::new(&cluster, "quotas");
    let call = |client: &mut SessionClient, request: &Value| client.call_ok(request, RETRY_WITHIN);

    // Topics: three fit, a fourth does not.
    for topic in ["a", "b", "c"] {
        assert_done(call(&mut client, &create_topic_request(topic)), topic);
    }
    let refused = call(&mut client, &create_topic_request("d"));
    assert_quota(&refused, "a fourth topic", "topics_max");
    for wire in [Wire::MsgPack, Wire::Json] {
        assert_eq!(
            v1_at_leader(&cluster, wire, &create_topic_request("d")),
            json!({"success": false}),
            "v1 ({wire:?}): exactly the keys of PROTOCOL.md §3"
        );
    }
    let listed = call(&mut client, &json!({"type": "topic", "method": "GET"}));
    assert_eq!(listed["topics"], json!(["a", "b", "c"]), "{listed}");

    // Bytes: ten messages, then 196 bytes fill the quota exactly; not even an empty
    // message fits after that.
    for n in 0..10 {
        assert_done(call(&mut client, &put_request("a", &message(n))), "a put");
    }
    let filler = "x".repeat(196);
    assert_done(
        call(&mut client, &put_request("b", &filler)),
        "exactly full",
    );
    let refused = call(&mut client, &put_request("b", ""));
    assert_quota(&refused, "an empty message when full", "queued_bytes_max");
    assert_eq!(
        v1_at_leader(&cluster, Wire::MsgPack, &put_request("a", "x")),
        json!({"success": false}),
        "v1: exactly the keys of PROTOCOL.md §3"
    );

    // Nothing changed, on any node: eleven messages, the same state everywhere.
    let stats = converged(&cluster);
    assert_eq!(stats["topic_count"], TOPICS_MAX, "{stats}");
    assert_eq!(stats["message_count"], 11, "{stats}");
    let payload = 10 * MESSAGE_BYTES as u64 + 196;
    assert_eq!(stats["payload_bytes"], payload, "{stats}");
    assert_eq!(payload + 11 * MESSAGE_OVERHEAD_BYTES, QUEUED_BYTES_MAX);

    // A GET still hands out the oldest message; its room takes one message, not two.
    let got = call(&mut client, &get_request("a"));
    assert_eq!(got["message"], message(0), "{got}");
    assert_done(
        call(&mut client, &put_request("a", &message(10))),
        "room again",
    );
    let put_11 = put_request("a", &message(11));
    let seq = client.seq;
    let refused = call(&mut client, &put_11);
    assert_quota(
        &refused,
        "a second message in one message's room",
        "queued_bytes_max",
    );

    // The session recorded the refusal: a retry of that seq gets it again, even once
    // another client made room, and does not queue the message; the next seq does.
    let mut consumer = SessionClient::new(&cluster, "consumer");
    let got = call(&mut consumer, &get_request("a"));
    assert_eq!(got["message"], message(1), "{got}");
    let retried = client
        .retry(&put_11, seq, Instant::now() + RETRY_WITHIN)
        .expect("a definite reply to the retry");
    assert_eq!(
        without_leader(retried),
        without_leader(refused),
        "a retry gets the first reply"
    );
    assert_done(call(&mut client, &put_11), "a new seq");

    // Every message that was accepted, once, in order; none that was refused.
    let expected: Vec<String> = (2..12).map(message).collect();
    assert_eq!(client.drain("a", RETRY_WITHIN), expected);
    assert_eq!(client.drain("b", RETRY_WITHIN), vec![filler]);
    assert_eq!(client.drain("c", RETRY_WITHIN), Vec::<String>::new());
    let stats = converged(&cluster);
    assert_eq!(stats["message_count"], 0, "{stats}");
    assert_eq!(stats["payload_bytes"], 0, "{stats}");

    // Emptied, the quota takes a full load again.
    for n in 0..10 {
        assert_done(
            call(&mut client, &put_request("c", &message(n))),
            "refilled",
        );
    }
    let refused = call(&mut client, &put_request("c", &message(10)));
    assert_quota(&refused, "over again", "queued_bytes_max");

    // Restarted from snapshots and logs, the cluster decides the same: the quotas come
    // from the config, what counts against them from the recovered state.
    cluster.kill_all();
    for index in 0..cluster.size() {
        cluster.spawn(index);
    }
    let mut client = SessionClient::new(&cluster, "after-restart");
    let refused = client.call_ok(&put_request("c", &message(10)), RETRY_WITHIN);
    assert_quota(&refused, "after a restart", "queued_bytes_max");
    let refused = client.call_ok(&create_topic_request("d"), RETRY_WITHIN);
    assert_quota(&refused, "after a restart", "topics_max");
    let stats = converged(&cluster);
    assert_eq!(stats["message_count"], 10, "{stats}");
    let logs: String = (0..cluster.size())
        .map(|index| cluster.log(index))
        .collect();
    let loaded = logs
        .lines()
        .filter(|line| line.contains("messages loaded in"))
        .any(|line| !line.contains("snapshot 0@0 "));
    assert!(loaded, "a node restarted from a snapshot:\n{logs}");
}

#[test]
fn a_node_started_with_a_flag_that_disagrees_with_the_config_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = settings();
    config["addresses"] = json!([{"ip": "127.0.0.1", "port": 1, "internal_port": 2}]);
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).expect("write the config");
    for (flag, value) in [("--topics-max", "4"), ("--queued-bytes-max", "10241")] {
        let output = std::process::Command::new(common::RRMQ_NODE)
            .arg(&path)
            .args(["0", flag, value])
            .current_dir(dir.path())
            .output()
            .expect("run rrmq-node");
        assert!(!output.status.success(), "{flag} {value} must be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("disagrees"), "{stderr}");
    }
}
