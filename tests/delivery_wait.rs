//! End-to-end tests of blocking GET (PROTOCOL.md §9) on real nodes: a waiting GET is
//! answered by a later PUT, waiters are served in arrival order, a wait ends `EMPTY`, and a
//! node that stops leading or shuts down answers its waiters at once, and a retry that
//! joins a waiting request with its session key answers both with one reply.
//!
//! Requests that wait are sent on a raw DEALER without waiting for the reply, so that a test
//! can put messages meanwhile; two waiters on one connection arrive in the order sent, and
//! are told apart by their wire (a reply comes in its request's encoding).

mod common;

use common::{decode, encode, error_code, Cluster, Wire, LEADER_DEADLINE, REPLY_DEADLINE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A GET that waits longer than any test runs.
const LONG_WAIT_MS: u64 = 20_000;

/// A connection whose requests are sent at once and whose replies are read later.
struct Pipelined {
    _context: zmq::Context,
    socket: zmq::Socket,
}

impl Pipelined {
    fn connect(cluster: &Cluster, index: usize) -> Pipelined {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::DEALER).expect("socket");
        socket.set_linger(0).expect("linger");
        socket
            .connect(&format!("tcp://127.0.0.1:{}", cluster.ports[index].port))
            .expect("connect");
        Pipelined {
            _context: context,
            socket,
        }
    }

    fn send(&self, wire: Wire, request: &Value) {
        let body = encode(wire, request);
        self.socket
            .send_multipart([&b""[..], &body[..]], 0)
            .expect("send");
    }

    /// The next reply and its wire, or None within `within`.
    fn receive(&self, within: Duration) -> Option<(Wire, Value)> {
        let ready = self
            .socket
            .poll(zmq::POLLIN, within.as_millis() as i64)
            .expect("poll");
        if ready == 0 {
            return None;
        }
        let frames = self.socket.recv_multipart(0).expect("recv");
        let body = frames.last().expect("a body frame");
        let wire = if body.first() == Some(&b'{') {
            Wire::Json
        } else {
            Wire::MsgPack
        };
        Some((wire, decode(wire, body)))
    }

    fn expect_reply(&self, what: &str) -> (Wire, Value) {
        self.receive(REPLY_DEADLINE)
            .unwrap_or_else(|| panic!("no reply to {what} within {REPLY_DEADLINE:?}"))
    }

    /// Nothing may be answered yet: the topic is empty.
    fn expect_silence(&self, what: &str) {
        if let Some((_, reply)) = self.receive(Duration::from_millis(300)) {
            panic!("{what} was answered while the topic was empty: {reply}");
        }
    }
}

fn blocking_get(topic: &str, wait_ms: u64) -> Value {
    json!({"v": 2, "type": "message", "method": "GET", "topic": topic, "wait_ms": wait_ms})
}

fn put(topic: &str, message: &str) -> Value {
    json!({"type": "message", "method": "PUT", "topic": topic, "message": message})
}

fn single_node() -> Cluster {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(0);
    for topic in ["t", "leased", "batch"] {
        let reply = client.call(
            Wire::MsgPack,
            &json!({"type": "topic", "method": "PUT", "topic": topic}),
        );
        assert_eq!(reply["success"], true, "{reply}");
    }
    cluster
}

#[test]
fn waiters_are_answered_by_later_puts_in_arrival_order() {
    let cluster = single_node();
    let mut producer = cluster.client(0);
    let waiting = Pipelined::connect(&cluster, 0);
    let started = Instant::now();
    waiting.send(Wire::MsgPack, &blocking_get("t", LONG_WAIT_MS));
    waiting.send(Wire::Json, &blocking_get("t", LONG_WAIT_MS));
    waiting.expect_silence("a blocking GET");
    for message in ["first", "second"] {
        let reply = producer.call(Wire::MsgPack, &put("t", message));
        assert_eq!(reply["success"], true, "{reply}");
    }
    let mut replies = [waiting.expect_reply("GET"), waiting.expect_reply("GET")];
    replies.sort_by_key(|(wire, _)| *wire == Wire::Json);
    let messages: Vec<(&Value, &Value)> = replies
        .iter()
        .map(|(_, reply)| (&reply["success"], &reply["message"]))
        .collect();
    // The msgpack GET arrived first: it gets the first message.
    assert_eq!(
        messages,
        [
            (&json!(true), &json!("first")),
            (&json!(true), &json!("second"))
        ],
        "{replies:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(LONG_WAIT_MS / 2),
        "answered by the PUT, not by the end of the wait"
    );
}

#[test]
fn a_wait_ends_empty_and_a_missing_topic_is_answered_at_once() {
    let cluster = single_node();
    let mut client = cluster.client(0);
    let started = Instant::now();
    let reply = client.call(Wire::MsgPack, &blocking_get("t", 300));
    assert_eq!(error_code(&reply), Some("EMPTY"), "{reply}");
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "EMPTY after {:?}, before the wait ended",
        started.elapsed()
    );
    // `call` gives up after REPLY_DEADLINE, well before the wait would end.
    let reply = client.call(Wire::Json, &blocking_get("nowhere", LONG_WAIT_MS));
    assert_eq!(error_code(&reply), Some("NO_SUCH_TOPIC"), "{reply}");
    // A message that is there is handed out without waiting.
    client.call(Wire::MsgPack, &put("t", "ready"));
    let reply = client.call(Wire::MsgPack, &blocking_get("t", LONG_WAIT_MS));
    assert_eq!(reply["message"], "ready", "{reply}");
}

#[test]
fn leased_and_batch_waiters_are_answered_as_soon_as_a_message_is_there() {
    let cluster = single_node();
    let mut producer = cluster.client(0);
    let waiting = Pipelined::connect(&cluster, 0);
    waiting.send(
        Wire::MsgPack,
        &json!({"v": 2, "type": "message", "method": "GET", "topic": "leased",
                "lease_ms": 60_000, "wait_ms": LONG_WAIT_MS}),
    );
    waiting.expect_silence("a leased blocking GET");
    producer.call(Wire::MsgPack, &put("leased", "work"));
    let (_, reply) = waiting.expect_reply("the leased GET");
    assert_eq!(
        (&reply["success"], &reply["message"], &reply["deliveries"]),
        (&json!(true), &json!("work"), &json!(1)),
        "{reply}"
    );
    let receipt = reply["receipt"].clone();
    assert!(receipt.is_string(), "{reply}");
    let ack = producer.call(
        Wire::MsgPack,
        &json!({"v": 2, "type": "message", "method": "ACK", "topic": "leased",
                "receipt": receipt}),
    );
    assert_eq!(ack["success"], true, "{ack}");

    waiting.send(
        Wire::MsgPack,
        &json!({"v": 2, "type": "message", "method": "GET", "topic": "batch", "max": 100,
                "wait_ms": LONG_WAIT_MS}),
    );
    waiting.expect_silence("a batch blocking GET");
    producer.call(Wire::MsgPack, &put("batch", "one"));
    let (_, reply) = waiting.expect_reply("the batch GET");
    assert_eq!(reply["success"], true, "{reply}");
    let messages = reply["messages"].as_array().expect("a list");
    assert!(!messages.is_empty() && messages[0] == "one", "{reply}");
}

#[test]
fn a_node_shutting_down_answers_its_waiters() {
    let mut cluster = single_node();
    let waiting = Pipelined::connect(&cluster, 0);
    waiting.send(Wire::MsgPack, &blocking_get("t", LONG_WAIT_MS));
    waiting.expect_silence("a blocking GET");
    cluster.signal(0, libc::SIGTERM);
    let (_, reply) = waiting.expect_reply("the GET at shutdown");
    assert_eq!(error_code(&reply), Some("SHUTTING_DOWN"), "{reply}");
}

#[test]
fn a_leader_that_loses_leadership_answers_its_waiters_not_leader() {
    let cluster = Cluster::start_with(3, &["--fault-injection"]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(leader);
    let reply = client.call(
        Wire::MsgPack,
        &json!({"type": "topic", "method": "PUT", "topic": "t"}),
    );
    assert_eq!(reply["success"], true, "{reply}");
    let waiting = Pipelined::connect(&cluster, leader);
    waiting.send(Wire::MsgPack, &blocking_get("t", LONG_WAIT_MS));
    waiting.expect_silence("a blocking GET");
    // Cut the leader off; the others elect a new one.
    let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let cut = json!({"type": "fault", "method": "PUT", "v": 2,
                     "drop_to": others, "drop_from": others});
    assert_eq!(client.call(Wire::MsgPack, &cut)["success"], true);
    let deadline = Instant::now() + LEADER_DEADLINE;
    let reply = loop {
        if let Some(reply) = waiting.receive(Duration::from_millis(200)) {
            break reply.1;
        }
        // Heal once another node leads: the old leader then learns of the new term, if it
        // has not stepped down on its own already.
        let another_leads = cluster
            .statuses()
            .iter()
            .enumerate()
            .any(|(index, status)| {
                index != leader
                    && status
                        .as_ref()
                        .is_some_and(|status| status["role"] == "Leader")
            });
        if another_leads {
            let heal = json!({"type": "fault", "method": "PUT", "v": 2,
                              "drop_to": [], "drop_from": []});
            client.call(Wire::MsgPack, &heal);
        }
        assert!(
            Instant::now() < deadline,
            "the old leader never answered its waiter"
        );
    };
    assert_eq!(error_code(&reply), Some("NOT_LEADER"), "{reply}");
    // The hint, when the old leader knows one already, names the new leader.
    assert!(
        reply
            .get("leader")
            .is_none_or(|hint| hint["id"] != json!(leader)),
        "{reply}"
    );
}

#[test]
fn a_retry_of_a_waiting_get_takes_its_place_and_both_get_its_one_reply() {
    let cluster = single_node();
    let mut producer = cluster.client(0);
    let waiting = Pipelined::connect(&cluster, 0);
    let keyed = json!({"v": 2, "type": "message", "method": "GET", "topic": "t",
                       "wait_ms": LONG_WAIT_MS, "client_id": "retrying", "seq": 1});
    waiting.send(Wire::MsgPack, &keyed);
    waiting.expect_silence("a blocking GET");
    // The retry (same client_id and seq, same connection: the same envelope, as a client
    // library's retry carries the same call tag) takes the waiting request's place. The
    // older request is not answered on its own: an EMPTY now would read as the retry's
    // answer, and the message the retry takes later would reach no one.
    waiting.send(Wire::Json, &keyed);
    waiting.expect_silence("the superseded GET and its retry");
    for message in ["only", "next"] {
        producer.call(Wire::MsgPack, &put("t", message));
    }
    let mut replies = [
        waiting.expect_reply("a GET of the key"),
        waiting.expect_reply("the other GET of the key"),
    ];
    replies.sort_by_key(|(wire, _)| *wire == Wire::Json);
    let answered: Vec<(Wire, &Value)> = replies
        .iter()
        .map(|(wire, reply)| (*wire, &reply["message"]))
        .collect();
    assert_eq!(
        answered,
        [
            (Wire::MsgPack, &json!("only")),
            (Wire::Json, &json!("only"))
        ],
        "both requests of the key get the one reply: {replies:?}"
    );
    // One message for the key: the second one is still queued.
    let reply = producer.call(Wire::MsgPack, &put("t", "last"));
    assert_eq!(reply["success"], true);
    let reply = producer.call(
        Wire::MsgPack,
        &json!({"v": 2, "type": "message", "method": "GET", "topic": "t", "max": 10}),
    );
    assert_eq!(reply["messages"], json!(["next", "last"]), "{reply}");

    // A wait that ends: both requests are answered EMPTY together, at the end of the
    // retry's wait, not at the first request's.
    let wait_ms = 1_500;
    let keyed = json!({"v": 2, "type": "message", "method": "GET", "topic": "t",
                       "wait_ms": wait_ms, "client_id": "retrying", "seq": 2});
    waiting.send(Wire::MsgPack, &keyed);
    waiting.expect_silence("a blocking GET");
    let retried = Instant::now();
    waiting.send(Wire::Json, &keyed);
    let replies = [
        waiting.expect_reply("a GET of the key"),
        waiting.expect_reply("the other GET of the key"),
    ];
    let answered_after = retried.elapsed();
    for (_, reply) in &replies {
        assert_eq!(error_code(reply), Some("EMPTY"), "{replies:?}");
    }
    assert!(
        answered_after >= Duration::from_millis(wait_ms - 20),
        "answered {answered_after:?} after the retry, before the retry's wait of {wait_ms} ms \
         ended: {replies:?}"
    );
}
