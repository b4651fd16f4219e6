//! PROTOCOL.md §11, peers: a keyed cluster of real nodes speaks CURVE on its peer port and
//! takes peer frames only from its members' keys, each only for the node it claims to be.
//!
//! The fake peers here are DEALERs of the test process speaking the peer wire format (built
//! with the library's own encoder) with a fresh key pair, no key at all, or a real member's
//! key pair while claiming another member's id.

mod common;
#[path = "common/snapshots.rs"]
mod snapshots;

use common::{run_to_exit, Cluster, Wire, LEADER_DEADLINE};
use rrmq::cli::launcher::{config_json, NodePorts};
use rrmq::config::keys::{self, KeyPair};
use rrmq::config::ClusterConfig;
use rrmq::raft::{LogIndex, Message, MessageBody, NodeId, Term};
use rrmq::transport::wire::encode_peer_message;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long the fakes keep sending.
const FORGING: Duration = Duration::from_millis(1500);
/// Far above any term elections reach during a test.
const TERM_JUMP: u64 = 1000;

fn term_of(status: &Value) -> u64 {
    status["term"].as_u64().expect("a status carries the term")
}

/// Heartbeats "from" node `from` to node `to` at `term`, sent for [`FORGING`].
fn forge_heartbeats(dealer: &zmq::Socket, cluster_id: u64, from: usize, to: usize, term: u64) {
    let message = Message {
        from: NodeId(from as u64),
        to: NodeId(to as u64),
        term: Term(term),
        body: MessageBody::Heartbeat {
            commit: LogIndex(0),
            read_round: 0,
        },
    };
    let frame = encode_peer_message(cluster_id, &message);
    let until = Instant::now() + FORGING;
    while Instant::now() < until {
        let _ = dealer.send(frame.as_slice(), zmq::DONTWAIT);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts no running node's term reached `forged`.
fn assert_no_forged_term(cluster: &Cluster, forged: u64, what: &str) {
    for (index, status) in cluster.statuses().into_iter().enumerate() {
        if let Some(status) = status {
            assert!(
                term_of(&status) < forged,
                "{what}: node {index} took the forged term: {status}"
            );
        }
    }
}

/// Polls node `index`'s log for `needle`.
fn wait_for_log(cluster: &Cluster, index: usize, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cluster.log(index).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_keyed_cluster_elects_serves_and_survives_a_leader_kill() {
    let mut cluster = Cluster::start_keyed(3, &[]);
    let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(leader);
    let ok = |reply: Value, what: &str| assert_eq!(reply["success"], true, "{what}: {reply}");
    ok(
        client.call(
            Wire::MsgPack,
            &json!({"type": "topic", "method": "PUT", "topic": "t"}),
        ),
        "create",
    );
    for message in ["m1", "m2"] {
        ok(
            client.call(
                Wire::MsgPack,
                &json!({"type": "message", "method": "PUT", "topic": "t", "message": message}),
            ),
            message,
        );
    }
    let got = client.call(
        Wire::MsgPack,
        &json!({"type": "message", "method": "GET", "topic": "t"}),
    );
    assert_eq!(got["message"], "m1", "{got}");

    cluster.kill(leader);
    let (new_leader, new_term) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    let got = cluster.client(new_leader).call(
        Wire::MsgPack,
        &json!({"type": "message", "method": "GET", "topic": "t"}),
    );
    assert_eq!(
        got["message"], "m2",
        "the new leader serves what was committed: {got}"
    );
}

#[test]
fn a_fake_peer_with_its_own_keys_or_none_cannot_move_the_term() {
    let cluster = Cluster::start_keyed(3, &[]);
    let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let target = (leader + 1) % 3;
    let cluster_id = ClusterConfig::load(&cluster.config_path)
        .expect("config")
        .cluster_id;
    let context = zmq::Context::new();
    let forged = term + TERM_JUMP;

    let stranger = KeyPair::generate().expect("keypair");
    let keyed_fake = cluster.peer_dealer(&context, target, Some(&stranger));
    forge_heartbeats(&keyed_fake, cluster_id, leader, target, forged);
    let plain_fake = cluster.peer_dealer(&context, target, None);
    forge_heartbeats(&plain_fake, cluster_id, leader, target, forged);

    assert_no_forged_term(&cluster, forged, "fake peers");
    assert!(
        wait_for_log(&cluster, target, "refused"),
        "node {target} logs the refused handshake; log:\n{}",
        cluster.log(target)
    );
    let log = cluster.log(target);
    assert!(log.contains("peer handshake"), "{log}");
    assert!(log.contains(&keys::z85_encode(&stranger.public)), "{log}");
    assert!(
        log.contains("from 127.0.0.1"),
        "the refusal names the address: {log}"
    );
    // The cluster still works.
    cluster.wait_for_leader(LEADER_DEADLINE);
}

#[test]
fn a_member_key_claiming_another_node_is_dropped_and_logged() {
    let cluster = Cluster::start_keyed(3, &[]);
    let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let target = (leader + 1) % 3;
    let thief = (leader + 2) % 3;
    let cluster_id = ClusterConfig::load(&cluster.config_path)
        .expect("config")
        .cluster_id;
    let context = zmq::Context::new();
    let forged = term + TERM_JUMP;

    // A real member's key pair (as a compromised member has), claiming to be the leader.
    let impostor = cluster.peer_dealer(&context, target, Some(&cluster.keys[thief]));
    forge_heartbeats(&impostor, cluster_id, leader, target, forged);

    assert_no_forged_term(&cluster, forged, "impostor");
    assert!(
        wait_for_log(&cluster, target, "forged peer frame"),
        "node {target} logs the forged frames; log:\n{}",
        cluster.log(target)
    );
    let log = cluster.log(target);
    assert!(
        log.contains(&format!(
            "claims node {leader} but its connection authenticated as node {thief}"
        )),
        "{log}"
    );
}

#[test]
fn a_node_given_the_wrong_key_file_exits_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = NodePorts::free(2).expect("free ports");
    let mut config: Value =
        serde_json::from_str(&config_json("127.0.0.1", &ports)).expect("config JSON");
    let mut files = Vec::new();
    for index in 0..2 {
        let file = dir.path().join(format!("node-{index}.key"));
        let pair = keys::write_new_key_file(&file).expect("key file");
        config["addresses"][index]["public_key"] = json!(keys::z85_encode(&pair.public));
        files.push(file.to_str().expect("utf-8").to_string());
    }
    std::fs::write(dir.path().join("keyed.json"), config.to_string()).expect("write");
    std::fs::write(dir.path().join("garbage.key"), "not a key\n").expect("write");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let cases: &[(&[&str], &str)] = &[
        (&["--key-file", &files[1]], "is not node 0's in the config"),
        (&[], "--key-file: required"),
        (&["--key-file", "missing.key"], "cannot read key file"),
        (&["--key-file", "garbage.key"], "garbage.key"),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["keyed.json", "0", "--data-dir", data];
        args.extend_from_slice(extra);
        let (status, stderr) = run_to_exit(dir.path(), &args, Duration::from_secs(20));
        let status = status.unwrap_or_else(|| panic!("{args:?}: did not exit; {stderr}"));
        assert!(!status.success(), "{args:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got: {stderr}");
        assert!(lines[0].starts_with("rrmq-node: --key-file: "), "{stderr}");
        assert!(lines[0].contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn rrmq_keygen_writes_a_private_key_file_once_and_prints_its_public_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let run = common::rrmq(&["keygen", "node.key"], b"", dir.path());
    run.assert_code(0, "keygen");
    let printed = run.stdout_text();
    let path = dir.path().join("node.key");
    let pair = keys::load_key_file(&path).expect("a valid key file");
    assert_eq!(printed.trim_end(), keys::z85_encode(&pair.public));
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let again = common::rrmq(&["keygen", "node.key"], b"", dir.path());
    assert_ne!(again.code, Some(0), "refuses to overwrite");
    assert_eq!(again.stderr.lines().count(), 1, "{}", again.stderr);
    assert!(again.stdout.is_empty());
    assert_eq!(keys::load_key_file(&path).expect("unchanged"), pair);
}

#[test]
fn a_keyed_follower_kept_down_catches_up_through_a_snapshot_over_curve() {
    use snapshots::{
        put_topic, puts, wait_converged, wait_for_log, write_all, SMALL_SNAPSHOT_FLAGS,
    };
    let mut cluster = Cluster::start_keyed(3, SMALL_SNAPSHOT_FLAGS);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    write_all(&cluster, &[put_topic("t")]);
    let follower = (leader + 1) % 3;
    wait_converged(&cluster, &[0, 1, 2], Duration::from_secs(20));
    cluster.kill(follower);
    write_all(&cluster, &puts("t", 0, 2500, 100));
    cluster.spawn(follower);
    let converged = wait_converged(&cluster, &[0, 1, 2], Duration::from_secs(60));
    assert_eq!(converged["message_count"], 2500);
    assert!(
        wait_for_log(
            &cluster,
            follower,
            "installed snapshot",
            Duration::from_secs(1)
        ),
        "the follower caught up without InstallSnapshot"
    );
}

/// The ZAP handler's death is fatal (it would leave CURVE failing open): a `fault` request
/// that ends the handler thread makes the keyed node exit non-zero, saying why in one line.
#[test]
fn a_keyed_node_whose_zap_handler_dies_exits_non_zero_saying_why() {
    let mut cluster = Cluster::start_keyed(1, &["--fault-injection"]);
    cluster.wait_for_leader(LEADER_DEADLINE);
    assert!(cluster.is_alive(0));
    // The reply may or may not leave before the process exits; only the exit matters.
    let _ = cluster.client(0).call_with_timeout(
        Wire::MsgPack,
        &json!({"type": "fault", "method": "PUT", "v": 2, "stop_zap_handler": true}),
        Duration::from_secs(5),
    );
    let status = cluster
        .wait_exit(0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the node still runs:\n{}", cluster.log(0)));
    assert_eq!(status.code(), Some(70), "{status}:\n{}", cluster.log(0));
    let log = cluster.log(0);
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("ZAP handler died"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("rrmq-node: ZAP handler died")),
        "one stderr line says why:\n{log}"
    );
}
