//! End-to-end: a keyed client port (PROTOCOL.md §11 "Clients", "Reload"). With `clients` in
//! the config, only CURVE connections with a listed key get answers; a listed client outside
//! its rights gets `FORBIDDEN` and changes nothing; a SIGHUP adds and removes clients on
//! connections that are already open.

mod common;

use common::{Cluster, Wire, LEADER_DEADLINE};
use rrmq::config::keys::{self, KeyPair};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a request that must get no reply is given.
const SILENCE: Duration = Duration::from_secs(2);

fn error_code(reply: &Value) -> Option<&str> {
    reply["error"]["code"].as_str()
}

fn topics(cluster: &Cluster) -> Value {
    let reply = cluster
        .client(0)
        .call(Wire::MsgPack, &json!({"type": "topic", "method": "GET"}));
    reply["topics"].clone()
}

#[test]
fn a_keyed_client_port_answers_only_listed_keys_within_their_rights() {
    let cluster = Cluster::start_with_clients(
        1,
        &[],
        &[
            ("alice", json!({"produce": ["orders*"]})),
            ("bob", json!({"consume": ["orders*"], "admin": true})),
        ],
    );
    cluster.wait_for_leader(LEADER_DEADLINE);
    let status = json!({"type": "status", "method": "GET", "v": 2});

    // Plain, and with a key nobody listed: no reply at all.
    let mut plain = cluster.client_as(0, None);
    assert_eq!(
        plain.call_with_timeout(Wire::MsgPack, &status, SILENCE),
        None
    );
    let stranger = KeyPair::generate().expect("a key pair");
    let mut unknown = cluster.client_as(0, Some(&stranger));
    assert_eq!(
        unknown.call_with_timeout(Wire::MsgPack, &status, SILENCE),
        None
    );
    assert!(
        wait_for_log(&cluster, 0, "client handshake(s); latest from 127.0.0.1", 1),
        "the refused handshake is logged with its address:\n{}",
        cluster.log(0)
    );

    // The harness (admin) creates topics.
    let mut harness = cluster.client(0);
    for topic in ["orders-1", "other"] {
        let reply = harness.call(
            Wire::MsgPack,
            &json!({"type": "topic", "method": "PUT", "topic": topic, "v": 2}),
        );
        assert_eq!(reply["success"], true, "{reply}");
    }

    // alice may produce to orders*, and nothing else.
    let mut alice = cluster.client_as(0, Some(cluster.client_key("alice")));
    let reply = alice.call(Wire::MsgPack, &status);
    assert!(
        reply.get("role").is_some() || reply["success"] != false,
        "{reply}"
    );
    let put = |topic: &str| json!({"type": "message", "method": "PUT", "topic": topic, "message": "m", "v": 2});
    let reply = alice.call(Wire::MsgPack, &put("orders-1"));
    assert_eq!(reply["success"], true, "{reply}");
    let reply = alice.call(Wire::MsgPack, &put("other"));
    assert_eq!(error_code(&reply), Some("FORBIDDEN"), "{reply}");
    let get = json!({"type": "message", "method": "GET", "topic": "orders-1", "v": 2});
    let reply = alice.call(Wire::MsgPack, &get);
    assert_eq!(error_code(&reply), Some("FORBIDDEN"), "{reply}");
    // v1 says only `success: false`; JSON too.
    let reply = alice.call(
        Wire::Json,
        &json!({"type": "message", "method": "GET", "topic": "orders-1"}),
    );
    assert_eq!(reply["success"], false, "{reply}");
    // A non-admin cannot create topics, and the list is unchanged.
    let before = topics(&cluster);
    let reply = alice.call(
        Wire::MsgPack,
        &json!({"type": "topic", "method": "PUT", "topic": "orders-new", "v": 2}),
    );
    assert_eq!(error_code(&reply), Some("FORBIDDEN"), "{reply}");
    assert_eq!(topics(&cluster), before);

    // Nothing alice was refused changed anything: the one message she put is still there,
    // for bob (consume orders*) to take.
    let mut bob = cluster.client_as(0, Some(cluster.client_key("bob")));
    let reply = bob.call(Wire::MsgPack, &get);
    assert_eq!(reply["success"], true, "{reply}");
    let reply = bob.call(Wire::MsgPack, &get);
    assert_eq!(error_code(&reply), Some("EMPTY"), "{reply}");
    let reply = bob.call(
        Wire::MsgPack,
        &json!({"type": "message", "method": "GET", "topic": "other", "v": 2}),
    );
    assert_eq!(error_code(&reply), Some("FORBIDDEN"), "{reply}");
    // bob is an admin: he may create topics.
    let reply = bob.call(
        Wire::MsgPack,
        &json!({"type": "topic", "method": "PUT", "topic": "orders-2", "v": 2}),
    );
    assert_eq!(reply["success"], true, "{reply}");

    // The CLI with --key-file: alice may put to orders-1, not create a topic; without a key
    // the CLI gets no answer.
    let alice_file = cluster.client_key_file("alice");
    let alice_file = alice_file.to_str().expect("utf-8");
    let run = cluster.rrmq(&["--key-file", alice_file, "put", "orders-1", "via-cli"]);
    run.assert_code(0, "rrmq put with alice's key");
    let run = cluster.rrmq(&["--key-file", alice_file, "topic", "create", "cli-topic"]);
    assert_ne!(run.code, Some(0), "alice created a topic: {}", run.stderr);
    let run = cluster.rrmq(&["--timeout", "2s", "put", "orders-1", "plain"]);
    assert_ne!(
        run.code,
        Some(0),
        "a plain CLI was answered: {}",
        run.stderr
    );
    let bob_file = cluster.client_key_file("bob");
    let run = cluster.rrmq(&[
        "--key-file",
        bob_file.to_str().expect("utf-8"),
        "get",
        "orders-1",
    ]);
    run.assert_code(0, "rrmq get with bob's key");
    assert_eq!(run.stdout_text(), "via-cli\n");

    // rrmq bench over CURVE (it creates its topics: the harness's admin key).
    let harness_file = cluster.client_key_file("harness");
    let run = cluster.rrmq(&[
        "--key-file",
        harness_file.to_str().expect("utf-8"),
        "--json",
        "bench",
        "produce",
        "--count",
        "200",
        "-c",
        "2",
    ]);
    run.assert_code(0, "rrmq bench with the harness's key");
    let report: Value = serde_json::from_slice(&run.stdout).expect("a JSON report");
    assert_eq!(report["operations"][0]["completed"], 200, "{report}");
}

/// PROTOCOL.md §11: rights are checked before anything else in the request. A request to a
/// topic the client may not use is `FORBIDDEN` however malformed its other fields are; one
/// too malformed to name its type, method or topic is still `BAD_REQUEST`; a request within
/// the rights is validated as before.
#[test]
fn rights_are_checked_before_the_rest_of_the_request_is_validated() {
    let cluster =
        Cluster::start_with_clients(1, &[], &[("alice", json!({"produce": ["orders*"]}))]);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let mut harness = cluster.client(0);
    let reply = harness.call(
        Wire::MsgPack,
        &json!({"type": "topic", "method": "PUT", "topic": "orders", "v": 2}),
    );
    assert_eq!(reply["success"], true, "{reply}");
    let mut alice = cluster.client_as(0, Some(cluster.client_key("alice")));
    // Over the 1 MiB message limit, far under the frame cap.
    let too_long = "x".repeat(1024 * 1024 + 1);
    let put = |topic: &str, message: Value| json!({"type": "message", "method": "PUT", "topic": topic, "message": message, "v": 2});

    let forbidden = [
        ("an over-long message", put("secret", json!(too_long))),
        ("a message that is a number", put("secret", json!(7))),
        (
            "no message and a broken client_id",
            json!({"type": "message", "method": "PUT", "topic": "secret", "client_id": 5, "v": 2}),
        ),
        ("an over-long topic", put(&"s".repeat(300), json!("m"))),
        (
            "a GET with a broken seq",
            json!({"type": "message", "method": "GET", "topic": "orders", "client_id": "c", "seq": "x", "v": 2}),
        ),
        (
            "a leased GET with lease_ms out of range",
            json!({"type": "message", "method": "GET", "topic": "orders", "lease_ms": 0, "v": 2}),
        ),
        (
            "an ACK whose receipt is a number",
            json!({"type": "message", "method": "ACK", "topic": "orders", "receipt": 5, "v": 2}),
        ),
        (
            "a NACK of a receipt never issued",
            json!({"type": "message", "method": "NACK", "topic": "orders", "receipt": "1.1", "v": 2}),
        ),
        (
            "a TOUCH without lease_ms",
            json!({"type": "message", "method": "TOUCH", "topic": "orders", "receipt": "1.1", "v": 2}),
        ),
        (
            "a batch PUT with too many messages",
            json!({"type": "message", "method": "PUT", "topic": "secret", "messages": vec!["m"; 1_001], "v": 2}),
        ),
        (
            "a topic PUT with delivery settings, for a client without admin",
            json!({"type": "topic", "method": "PUT", "topic": "orders-dlq", "max_deliveries": 0, "v": 2}),
        ),
    ];
    for wire in [Wire::MsgPack, Wire::Json] {
        for (what, request) in &forbidden {
            let reply = alice.call(wire, request);
            assert_eq!(
                error_code(&reply),
                Some("FORBIDDEN"),
                "{wire:?}, {what}: {reply}"
            );
        }
    }
    // v1: `success: false` only, as for any v1 refusal.
    let mut v1 = put("secret", json!(too_long));
    v1.as_object_mut().expect("a map").remove("v");
    let reply = alice.call(Wire::MsgPack, &v1);
    assert_eq!(reply, json!({"success": false}));

    // Too malformed to name what it wants: BAD_REQUEST, as before.
    let nameless = [
        json!({"method": "PUT", "topic": "secret", "v": 2}),
        json!({"type": "message", "method": "PUT", "topic": 5, "message": "m", "v": 2}),
        json!({"type": "message", "method": "POST", "topic": "secret", "v": 2}),
    ];
    for request in &nameless {
        let reply = alice.call(Wire::MsgPack, request);
        assert_eq!(
            error_code(&reply),
            Some("BAD_REQUEST"),
            "{request}: {reply}"
        );
    }
    // Within the rights, the rest is validated as always.
    let reply = alice.call(Wire::MsgPack, &put("orders", json!(too_long)));
    assert_eq!(error_code(&reply), Some("TOO_LARGE"), "{reply}");
    let reply = alice.call(Wire::MsgPack, &put("orders", json!(7)));
    assert_eq!(error_code(&reply), Some("BAD_REQUEST"), "{reply}");
    let reply = alice.call(Wire::MsgPack, &put("orders", json!("fine")));
    assert_eq!(reply["success"], true, "{reply}");
}

fn wait_for_log(cluster: &Cluster, index: usize, needle: &str, count: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cluster.log(index).matches(needle).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sighup_adds_and_removes_clients_on_open_connections() {
    let mut cluster =
        Cluster::start_with_clients(1, &[], &[("alice", json!({"produce": ["orders*"]}))]);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let reply = cluster.client(0).call(
        Wire::MsgPack,
        &json!({"type": "topic", "method": "PUT", "topic": "orders", "v": 2}),
    );
    assert_eq!(reply["success"], true, "{reply}");
    let put =
        json!({"type": "message", "method": "PUT", "topic": "orders", "message": "m", "v": 2});

    let mut alice = cluster.client_as(0, Some(cluster.client_key("alice")));
    assert_eq!(alice.call(Wire::MsgPack, &put)["success"], true);

    // carol is not listed yet: nothing.
    let carol_file = cluster.dir.path().join("client-carol.key");
    let carol = keys::write_new_key_file(&carol_file).expect("carol's key file");
    let carol_file = carol_file.to_str().expect("utf-8").to_string();
    let mut carol_client = cluster.client_as(0, Some(&carol));
    assert_eq!(
        carol_client.call_with_timeout(Wire::MsgPack, &put, SILENCE),
        None
    );

    // Reload: carol in, alice out.
    let text = std::fs::read_to_string(&cluster.config_path).expect("read the config");
    let mut config: Value = serde_json::from_str(&text).expect("JSON");
    let clients = config["clients"].as_array_mut().expect("a clients list");
    clients.retain(|client| client["name"] != "alice");
    clients.push(
        json!({"name": "carol", "public_key": keys::z85_encode(&carol.public),
                        "produce": ["orders"]}),
    );
    std::fs::write(&cluster.config_path, config.to_string()).expect("write the config");
    cluster.signal(0, libc::SIGHUP);
    assert!(
        wait_for_log(&cluster, 0, "SIGHUP: reloaded clients", 1),
        "{}",
        cluster.log(0)
    );

    // alice's connection, open since before the reload: no reply any more.
    assert_eq!(alice.call_with_timeout(Wire::MsgPack, &put, SILENCE), None);
    // carol, through the CLI: answered.
    let run = cluster.rrmq(&["--key-file", &carol_file, "put", "orders", "from-carol"]);
    run.assert_code(0, "rrmq put with carol's key after the reload");
    let mut carol_client = cluster.client_as(0, Some(&carol));
    assert_eq!(carol_client.call(Wire::MsgPack, &put)["success"], true);
}
