//! End-to-end tests of one node on the wire: every reference behaviour of PROTOCOL.md §3–§6
//! in MessagePack and JSON, comparing whole replies, plus §7 shutdown.

mod common;

use common::{without_error_message, Client, Cluster, Wire, REPLY_DEADLINE};
use serde_json::{json, Value};
use std::time::Duration;

const WIRES: [Wire; 2] = [Wire::MsgPack, Wire::Json];

/// Runs `(request, expected reply)` pairs in order, comparing whole replies (error messages
/// masked, see `without_error_message`).
fn expect_replies(client: &mut Client, wire: Wire, cases: &[(Value, Value)]) {
    for (number, (request, expected)) in cases.iter().enumerate() {
        let reply = without_error_message(client.call(wire, request));
        assert_eq!(&reply, expected, "{wire:?} case {number}: {request}");
    }
}

#[test]
fn version_1_replies_carry_exactly_the_protocol_keys() {
    let cluster = Cluster::start(1);
    let (_, term) = cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let ok = json!({"success": true});
    let no = json!({"success": false});
    // The first wire sees an empty topic list; the second sees the first's topics.
    let mut created: Vec<String> = Vec::new();
    for wire in WIRES {
        let a = format!("{wire:?}-a");
        let b = format!("{wire:?}-b");
        let topics_before = json!({"success": true, "topics": created.clone()});
        created.push(a.clone());
        created.push(b.clone());
        let topics_after = json!({"success": true, "topics": created.clone()});
        let cases = vec![
            (json!({"type": "topic", "method": "GET"}), topics_before),
            (
                json!({"type": "topic", "method": "PUT", "topic": a}),
                ok.clone(),
            ),
            (
                json!({"type": "topic", "method": "PUT", "topic": a}),
                no.clone(),
            ),
            (
                json!({"type": "topic", "method": "PUT", "topic": b}),
                ok.clone(),
            ),
            (json!({"type": "topic", "method": "GET"}), topics_after),
            (
                json!({"type": "message", "method": "PUT", "topic": "nope", "message": "x"}),
                no.clone(),
            ),
            (
                json!({"type": "message", "method": "GET", "topic": a}),
                no.clone(),
            ),
            (
                json!({"type": "message", "method": "GET", "topic": "nope"}),
                no.clone(),
            ),
            (
                json!({"type": "message", "method": "PUT", "topic": a, "message": "first"}),
                ok.clone(),
            ),
            (
                json!({"type": "message", "method": "PUT", "topic": a, "message": "second"}),
                ok.clone(),
            ),
            (
                json!({"type": "message", "method": "PUT", "topic": b, "message": "other"}),
                ok.clone(),
            ),
            (
                json!({"type": "message", "method": "GET", "topic": a}),
                json!({"success": true, "message": "first"}),
            ),
            (
                json!({"type": "message", "method": "GET", "topic": a}),
                json!({"success": true, "message": "second"}),
            ),
            (
                json!({"type": "message", "method": "GET", "topic": a}),
                no.clone(),
            ),
            (
                json!({"type": "message", "method": "GET", "topic": b}),
                json!({"success": true, "message": "other"}),
            ),
            // Unknown keys are ignored; `v: 1` is version 1.
            (
                json!({"type": "topic", "method": "PUT", "topic": format!("{wire:?}-c"),
                       "v": 1, "color": "blue"}),
                ok.clone(),
            ),
            (
                json!({"type": "status", "method": "GET"}),
                json!({"role": "Leader", "term": term}),
            ),
        ];
        created.push(format!("{wire:?}-c"));
        expect_replies(&mut client, wire, &cases);
    }
}

#[test]
fn version_2_replies_add_error_codes_leader_and_status_details() {
    let cluster = Cluster::start(1);
    let (_, term) = cluster.wait_for_leader(common::LEADER_DEADLINE);
    let leader = json!({"id": 0, "ip": "127.0.0.1", "port": cluster.ports[0].port});
    let mut client = cluster.client(0);
    let failed = |code: &str| json!({"success": false, "error": {"code": code, "message": "*"}, "leader": leader});
    let ok = json!({"success": true, "leader": leader});
    for wire in WIRES {
        let t = format!("{wire:?}-t");
        let cases = vec![
            (
                json!({"v": 2, "type": "topic", "method": "PUT", "topic": t}),
                ok.clone(),
            ),
            (
                json!({"v": 2, "type": "topic", "method": "PUT", "topic": t}),
                failed("TOPIC_EXISTS"),
            ),
            (
                json!({"v": 2, "type": "message", "method": "GET", "topic": t}),
                failed("EMPTY"),
            ),
            (
                json!({"v": 2, "type": "message", "method": "GET", "topic": "none"}),
                failed("NO_SUCH_TOPIC"),
            ),
            (
                json!({"v": 2, "type": "message", "method": "PUT", "topic": "none",
                       "message": "m"}),
                failed("NO_SUCH_TOPIC"),
            ),
            (
                json!({"v": 2, "type": "message", "method": "PUT", "topic": t, "message": "m"}),
                ok.clone(),
            ),
            (
                json!({"v": 2, "type": "message", "method": "GET", "topic": t}),
                json!({"success": true, "message": "m", "leader": leader}),
            ),
        ];
        expect_replies(&mut client, wire, &cases);
    }

    // Binary messages come back as binary (MessagePack only).
    let bytes = json!({"$bin": [0, 1, 2, 254, 255]});
    let cases = vec![
        (
            json!({"v": 2, "type": "message", "method": "PUT", "topic": "MsgPack-t",
                   "message": bytes}),
            ok.clone(),
        ),
        (
            json!({"v": 2, "type": "message", "method": "GET", "topic": "MsgPack-t"}),
            json!({"success": true, "message": bytes, "leader": leader}),
        ),
    ];
    expect_replies(&mut client, Wire::MsgPack, &cases);

    // Status: every v2 field, consistent with what was applied.
    for wire in WIRES {
        let status = client.call(wire, &json!({"v": 2, "type": "status", "method": "GET"}));
        assert_eq!(status["role"], "Leader", "{wire:?}: {status}");
        assert_eq!(status["term"], term, "{wire:?}: {status}");
        assert_eq!(status["id"], 0, "{wire:?}: {status}");
        assert_eq!(status["leader"], 0, "{wire:?}: {status}");
        let commit = status["commit_index"].as_u64().expect("commit_index");
        let applied = status["last_applied"].as_u64().expect("last_applied");
        let last = status["last_log_index"].as_u64().expect("last_log_index");
        assert!(
            commit >= 17,
            "{wire:?}: 16 writes and a no-op committed: {status}"
        );
        assert_eq!(
            applied, commit,
            "{wire:?}: a single node applies what it commits"
        );
        assert_eq!(
            last, commit,
            "{wire:?}: nothing uncommitted is left: {status}"
        );
        // Every entry of this fresh node's log went through its WAL, in batches of one
        // sync each (at least one, at most one per entry).
        let wal_entries = status["wal_entries"].as_u64().expect("wal_entries");
        let wal_syncs = status["wal_syncs"].as_u64().expect("wal_syncs");
        assert!(
            wal_entries >= last,
            "{wire:?}: all {last} entries were persisted: {status}"
        );
        assert!(
            (1..=wal_entries).contains(&wal_syncs),
            "{wire:?}: between 1 and one sync per entry: {status}"
        );
    }
}

#[test]
fn a_repeated_client_id_and_seq_takes_effect_once_with_the_same_reply() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let leader = json!({"id": 0, "ip": "127.0.0.1", "port": cluster.ports[0].port});
    let put = |message: &str, seq: u64| {
        json!({"v": 2, "type": "message", "method": "PUT", "topic": "t", "message": message,
               "client_id": "writer", "seq": seq})
    };
    let get = |seq: u64| {
        json!({"v": 2, "type": "message", "method": "GET", "topic": "t",
               "client_id": "reader", "seq": seq})
    };
    let ok = json!({"success": true, "leader": leader});
    let popped = |message: &str| json!({"success": true, "message": message, "leader": leader});
    let cases = vec![
        (
            json!({"type": "topic", "method": "PUT", "topic": "t"}),
            json!({"success": true}),
        ),
        (put("one", 1), ok.clone()),
        (put("one", 1), ok.clone()), // A retry: not put twice.
        (put("two", 2), ok.clone()),
        (get(1), popped("one")),
        (get(1), popped("one")), // A retried GET gets the same message, and pops nothing.
        (get(2), popped("two")),
        (
            json!({"type": "message", "method": "GET", "topic": "t"}),
            json!({"success": false}),
        ),
    ];
    expect_replies(&mut client, Wire::MsgPack, &cases);
}

#[test]
fn bad_input_is_refused_and_the_node_keeps_serving() {
    let cluster = Cluster::start_with(1, &["--message-bytes-max", "1000"]);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let error = |code: &str| json!({"success": false, "error": {"code": code, "message": "*"}});
    let bad = error("BAD_REQUEST");
    let too_large = error("TOO_LARGE");
    let long_topic = "t".repeat(256);
    let long_message = "m".repeat(1001);
    // (wire, body, expected reply). The reply's encoding is the request's.
    let msgpack = |value: Value| common::encode(Wire::MsgPack, &value);
    let cases: Vec<(Wire, Vec<u8>, Value)> = vec![
        (Wire::MsgPack, b"\xc1 not msgpack".to_vec(), bad.clone()),
        (Wire::MsgPack, b"".to_vec(), bad.clone()),
        (Wire::MsgPack, msgpack(json!([1, 2, 3])), bad.clone()),
        (Wire::MsgPack, msgpack(json!("a string")), bad.clone()),
        (Wire::Json, b"{\"type\": ".to_vec(), bad.clone()),
        (Wire::Json, b"  {not json}".to_vec(), bad.clone()),
        (
            Wire::MsgPack,
            msgpack(json!({"method": "GET"})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "topic"})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "queue", "method": "GET"})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "topic", "method": "DELETE"})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": 1, "method": "GET"})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "topic", "method": "PUT"})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "topic", "method": "PUT", "topic": 5})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "topic", "method": "PUT", "topic": ""})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "message", "method": "PUT", "topic": "t"})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "message", "method": "PUT", "topic": "t", "message": 7})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "topic", "method": "GET", "v": 99})),
            bad.clone(),
        ),
        (
            Wire::MsgPack,
            msgpack(json!({"type": "topic", "method": "PUT", "topic": long_topic})),
            too_large.clone(),
        ),
        (
            Wire::Json,
            common::encode(
                Wire::Json,
                &json!({"type": "message", "method": "PUT", "topic": "t",
                        "message": long_message}),
            ),
            too_large.clone(),
        ),
        (
            Wire::Json,
            common::encode(
                Wire::Json,
                &json!({"type": "message", "method": "PUT", "topic": "t", "message": [1, 2]}),
            ),
            bad.clone(),
        ),
    ];
    let status = json!({"type": "status", "method": "GET"});
    for (number, (wire, body, expected)) in cases.iter().enumerate() {
        let reply = client
            .bytes(body, REPLY_DEADLINE)
            .unwrap_or_else(|| panic!("case {number}: no reply"));
        let reply = without_error_message(common::decode(*wire, &reply));
        assert_eq!(
            &reply,
            expected,
            "case {number}: {:?}",
            String::from_utf8_lossy(body)
        );
        let alive = client.call(Wire::MsgPack, &status);
        assert_eq!(alive["role"], "Leader", "case {number}: node still serving");
    }

    // More than one body frame after the envelope.
    let body = msgpack(json!({"type": "status", "method": "GET"}));
    let reply = client
        .raw(&[&body, &body], REPLY_DEADLINE)
        .expect("a reply to two body frames");
    assert_eq!(reply.len(), 1, "one body frame back");
    assert_eq!(
        without_error_message(common::decode(Wire::MsgPack, &reply[0])),
        bad
    );

    // A frame over the hard cap is dropped by the socket layer (the connection with it):
    // no reply, and the node keeps serving others. The cap fits a 4 MiB batch (PROTOCOL.md
    // §10) and a little more, so 8 MiB is well over it.
    let huge = vec![b'x'; 8 * 1024 * 1024];
    assert_eq!(client.bytes(&huge, Duration::from_millis(1500)), None);
    let mut other = cluster.client(0);
    assert_eq!(other.call(Wire::MsgPack, &status)["role"], "Leader");

    // Nothing was changed by any of it.
    let topics = other.call(Wire::Json, &json!({"type": "topic", "method": "GET"}));
    assert_eq!(topics, json!({"success": true, "topics": []}));
}

#[test]
fn req_and_bare_dealer_clients_get_their_own_envelope_back() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let endpoint = format!("tcp://127.0.0.1:{}", cluster.ports[0].port);
    let context = zmq::Context::new();
    let body = common::encode(Wire::MsgPack, &json!({"type": "topic", "method": "GET"}));
    let expected = json!({"success": true, "topics": []});

    let req = context.socket(zmq::REQ).expect("REQ");
    req.set_linger(0).expect("linger");
    req.set_rcvtimeo(10_000).expect("timeout");
    req.connect(&endpoint).expect("connect");
    for _ in 0..3 {
        req.send(&body, 0).expect("send");
        let reply = req.recv_multipart(0).expect("a reply within 10 s");
        assert_eq!(reply.len(), 1);
        assert_eq!(common::decode(Wire::MsgPack, &reply[0]), expected);
    }

    let dealer = context.socket(zmq::DEALER).expect("DEALER");
    dealer.set_linger(0).expect("linger");
    dealer.set_rcvtimeo(10_000).expect("timeout");
    dealer.connect(&endpoint).expect("connect");
    dealer.send(&body, 0).expect("send");
    let reply = dealer.recv_multipart(0).expect("a reply within 10 s");
    assert_eq!(reply.len(), 1, "no delimiter was sent, none comes back");
    assert_eq!(common::decode(Wire::MsgPack, &reply[0]), expected);
}

#[test]
fn sigterm_exits_zero_promptly() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let put = json!({"type": "topic", "method": "PUT", "topic": "t"});
    assert_eq!(client.call(Wire::MsgPack, &put), json!({"success": true}));
    let (status, took) = cluster
        .terminate(0, Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    // PROTOCOL.md §7 says about a second; allow for a loaded machine.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_killed_node_restarts_with_what_it_acknowledged() {
    let mut cluster = Cluster::start_with(1, &["--fsync", "always"]);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let cases = vec![
        (
            json!({"type": "topic", "method": "PUT", "topic": "t"}),
            json!({"success": true}),
        ),
        (
            json!({"type": "message", "method": "PUT", "topic": "t", "message": "a"}),
            json!({"success": true}),
        ),
        (
            json!({"type": "message", "method": "PUT", "topic": "t", "message": "b"}),
            json!({"success": true}),
        ),
        (
            json!({"type": "message", "method": "GET", "topic": "t"}),
            json!({"success": true, "message": "a"}),
        ),
    ];
    expect_replies(&mut client, Wire::MsgPack, &cases);
    cluster.kill(0);
    cluster.spawn(0);
    assert!(cluster.wait_all_up(common::LEADER_DEADLINE));
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let cases = vec![
        (
            json!({"type": "topic", "method": "GET"}),
            json!({"success": true, "topics": ["t"]}),
        ),
        (
            json!({"type": "message", "method": "GET", "topic": "t"}),
            json!({"success": true, "message": "b"}),
        ),
        (
            json!({"type": "message", "method": "GET", "topic": "t"}),
            json!({"success": false}),
        ),
    ];
    expect_replies(&mut client, Wire::Json, &cases);
}
