//! Issue 5 acceptance: a request repeated with the same `(client_id, seq)` takes effect at
//! most once and gets the same reply, whichever node leads by then, across crashes of the
//! leader and restarts of the whole cluster; the session table's evictions are the same on
//! every node. Raw ZeroMQ + MessagePack, so the tests choose every key and every resend.

mod common;

use common::{
    create_topic_request, error_code, get_request, put_request, without_error_message,
    without_leader, Cluster, SessionClient, LEADER_DEADLINE, REPLY_DEADLINE,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);
const RETRY_DEADLINE: Duration = Duration::from_secs(30);

/// One attempt at node `index`, panicking without a reply.
fn send(client: &mut SessionClient, index: usize, request: &Value, seq: u64) -> Value {
    client
        .send_once(index, request, seq, REPLY_DEADLINE)
        .unwrap_or_else(|| panic!("node {index}: no reply to seq {seq} {request}"))
}

/// Retries `request` at `seq` until a definite reply, panicking after the deadline.
fn retry(client: &mut SessionClient, request: &Value, seq: u64) -> Value {
    client
        .retry(request, seq, Instant::now() + RETRY_DEADLINE)
        .unwrap_or_else(|| panic!("no definite reply to seq {seq} {request}"))
}

fn message_count(cluster: &Cluster, index: usize) -> u64 {
    let stats = cluster.stats(index, REPLY_DEADLINE).expect("stats");
    stats["message_count"].as_u64().expect("message_count")
}

/// A linearizable read at the leader: once answered, the leader has applied everything
/// committed before, including whatever an earlier leader committed.
fn barrier(cluster: &Cluster, leader: usize) {
    let mut client = cluster.client(leader);
    let reply = client.call(
        common::Wire::MsgPack,
        &json!({"v": 2, "type": "topic", "method": "GET"}),
    );
    assert_eq!(reply["success"], true, "barrier at node {leader}: {reply}");
}

#[test]
fn a_repeated_put_or_get_takes_effect_once_with_the_same_reply_even_at_a_new_leader() {
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut writer = SessionClient::new(&cluster, "writer");
    let mut reader = SessionClient::new(&cluster, "reader");
    let created = send(&mut writer, leader, &create_topic_request("t"), 1);
    assert_eq!(without_leader(created.clone()), json!({"success": true}));
    let created_again = send(&mut writer, leader, &create_topic_request("t"), 1);
    assert_eq!(
        created_again, created,
        "a repeated topic PUT: the same reply"
    );

    // The same PUT twice: one message, the same reply.
    let first = send(&mut writer, leader, &put_request("t", "m1"), 2);
    let second = send(&mut writer, leader, &put_request("t", "m1"), 2);
    assert_eq!(without_leader(first.clone()), json!({"success": true}));
    assert_eq!(second, first, "a repeated PUT: the same reply");
    assert_eq!(message_count(&cluster, leader), 1, "put once");
    for (seq, message) in [(3, "m2"), (4, "m3")] {
        let reply = send(&mut writer, leader, &put_request("t", message), seq);
        assert_eq!(reply["success"], true, "{message}: {reply}");
    }

    // The same GET twice: the same message, popped once.
    let first = send(&mut reader, leader, &get_request("t"), 1);
    let second = send(&mut reader, leader, &get_request("t"), 1);
    assert_eq!(
        without_leader(first.clone()),
        json!({"success": true, "message": "m1"})
    );
    assert_eq!(second, first, "a repeated GET: the same reply");
    assert_eq!(message_count(&cluster, leader), 2, "popped once");
    let popped = send(&mut reader, leader, &get_request("t"), 2);
    assert_eq!(popped["message"], "m2", "{popped}");

    // The leader dies; the new one knows every session: repeats change nothing there either.
    cluster.kill(leader);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let put_again = retry(&mut writer, &put_request("t", "m3"), 4);
    assert_eq!(without_leader(put_again), json!({"success": true}));
    let get_again = retry(&mut reader, &get_request("t"), 2);
    assert_eq!(
        without_leader(get_again),
        json!({"success": true, "message": "m2"}),
        "the new leader replays the popped message, pops nothing"
    );
    // The retries found the new leader.
    assert_ne!(writer.target, leader);
    assert_eq!(message_count(&cluster, writer.target), 1, "only m3 is left");
    let last = retry(&mut reader, &get_request("t"), 3);
    assert_eq!(
        without_leader(last),
        json!({"success": true, "message": "m3"})
    );
    let empty = without_error_message(retry(&mut reader, &get_request("t"), 4));
    assert_eq!(error_code(&empty), Some("EMPTY"), "{empty}");
}

#[test]
fn a_get_whose_reply_was_lost_returns_the_same_message_when_retried() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let mut writer = SessionClient::new(&cluster, "writer");
    writer.call_ok(&create_topic_request("t"), REPLY_DEADLINE);
    for message in ["a", "b"] {
        let reply = writer.call_ok(&put_request("t", message), REPLY_DEADLINE);
        assert_eq!(reply["success"], true, "{reply}");
    }

    // A DEALER sends the GET and goes away without reading the reply: the reply is lost.
    let reader = SessionClient::new(&cluster, "reader");
    let body = common::encode(common::Wire::MsgPack, &reader.keyed(&get_request("t"), 1));
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).expect("socket");
    socket.set_linger(1000).expect("linger");
    socket
        .connect(&format!("tcp://127.0.0.1:{}", cluster.ports[0].port))
        .expect("connect");
    socket.send_multipart([&b""[..], &body], 0).expect("send");
    // Wait until the pop took effect, so the retry is a retry and not the first attempt.
    let deadline = Instant::now() + REPLY_DEADLINE;
    while message_count(&cluster, 0) != 1 {
        assert!(Instant::now() < deadline, "the first GET never took effect");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(socket);

    let mut reader = reader;
    let retried = send(&mut reader, 0, &get_request("t"), 1);
    assert_eq!(
        without_leader(retried),
        json!({"success": true, "message": "a"}),
        "the retry gets the message the lost reply carried"
    );
    assert_eq!(message_count(&cluster, 0), 1, "nothing more was popped");
    let next = send(&mut reader, 0, &get_request("t"), 2);
    assert_eq!(
        without_leader(next),
        json!({"success": true, "message": "b"})
    );
}

#[test]
fn a_put_whose_leader_is_killed_on_receipt_exists_once_after_retrying_at_the_new_leader() {
    // Different delays between the send and the SIGKILL: with none the request is usually
    // lost with the leader, with a few milliseconds it has usually committed.
    const DELAYS_MS: &[u64] = &[0, 2, 5, 20];
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut writer = SessionClient::new(&cluster, "writer");
    writer.target = leader;
    writer.call_ok(&create_topic_request("t"), REPLY_DEADLINE);
    let mut committed_before_retry = Vec::new();
    for (round, delay_ms) in DELAYS_MS.iter().enumerate() {
        let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
        barrier(&cluster, leader);
        let count_before = message_count(&cluster, leader);
        let message = format!("round-{round}");
        let request = put_request("t", &message);
        let seq = writer.seq;
        writer.seq += 1;
        // Send and do not wait for the reply: the leader dies with it in flight.
        let context = zmq::Context::new();
        let socket = context.socket(zmq::DEALER).expect("socket");
        socket.set_linger(0).expect("linger");
        socket
            .connect(&format!("tcp://127.0.0.1:{}", cluster.ports[leader].port))
            .expect("connect");
        let body = common::encode(common::Wire::MsgPack, &writer.keyed(&request, seq));
        socket.send_multipart([&b""[..], &body], 0).expect("send");
        std::thread::sleep(Duration::from_millis(*delay_ms));
        cluster.kill(leader);

        let (new_leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
        barrier(&cluster, new_leader);
        let committed = message_count(&cluster, new_leader) == count_before + 1;
        committed_before_retry.push(committed);
        writer.target = new_leader;
        let reply = retry(&mut writer, &request, seq);
        assert_eq!(
            without_leader(reply),
            json!({"success": true}),
            "round {round}"
        );
        cluster.spawn(leader);
        assert!(
            cluster.wait_all_up(LEADER_DEADLINE),
            "round {round}: restart"
        );
    }
    eprintln!("first attempt committed before the retry, per round: {committed_before_retry:?}");

    let stats = cluster.wait_converged(cluster.leader_applied(LEADER_DEADLINE), CONVERGE_DEADLINE);
    assert_eq!(stats["message_count"], json!(DELAYS_MS.len()), "{stats}");
    let drained = SessionClient::new(&cluster, "drainer").drain("t", RETRY_DEADLINE);
    let expected: Vec<String> = (0..DELAYS_MS.len())
        .map(|round| format!("round-{round}"))
        .collect();
    assert_eq!(drained, expected, "each PUT exactly once, in order");
}

#[test]
fn sessions_survive_a_full_cluster_restart() {
    let mut cluster = Cluster::start_with(3, &["--fsync", "always"]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut writer = SessionClient::new(&cluster, "writer");
    let mut reader = SessionClient::new(&cluster, "reader");
    writer.target = leader;
    reader.target = leader;
    send(&mut writer, leader, &create_topic_request("t"), 1);
    let put_reply = send(&mut writer, leader, &put_request("t", "a"), 2);
    send(&mut writer, leader, &put_request("t", "b"), 3);
    let get_reply = send(&mut reader, leader, &get_request("t"), 1);
    assert_eq!(get_reply["message"], "a", "{get_reply}");

    cluster.kill_all();
    for index in 0..3 {
        cluster.spawn(index);
    }
    assert!(
        cluster.wait_all_up(LEADER_DEADLINE),
        "restarted nodes answer"
    );
    cluster.wait_for_leader(LEADER_DEADLINE);

    let put_again = retry(&mut writer, &put_request("t", "b"), 3);
    assert_eq!(without_leader(put_again), without_leader(put_reply));
    let get_again = retry(&mut reader, &get_request("t"), 1);
    assert_eq!(
        without_leader(get_again),
        without_leader(get_reply),
        "the original GET reply, after the restart"
    );
    let stats = cluster.wait_converged(cluster.leader_applied(LEADER_DEADLINE), CONVERGE_DEADLINE);
    assert_eq!(stats["message_count"], json!(1), "only b is left: {stats}");
    assert_eq!(stats["session_count"], json!(2), "{stats}");
    let next = retry(&mut reader, &get_request("t"), 2);
    assert_eq!(
        without_leader(next),
        json!({"success": true, "message": "b"})
    );
}

#[test]
fn every_node_forgets_the_same_sessions_and_a_forgotten_retry_is_refused() {
    const SESSIONS_MAX: usize = 3;
    const CLIENTS: usize = 5;
    let mut cluster = Cluster::start_with(3, &["--sessions-max", "3"]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut admin = cluster.client(leader);
    let created = admin.call(common::Wire::MsgPack, &create_topic_request("t"));
    assert_eq!(created, json!({"success": true}));
    let mut clients: Vec<SessionClient> = (0..CLIENTS)
        .map(|number| {
            let mut client = SessionClient::new(&cluster, &format!("client-{number}"));
            client.target = leader;
            client
        })
        .collect();
    // Each puts twice in turn; the least recently used are forgotten, in log order.
    for (number, client) in clients.iter_mut().enumerate() {
        for part in 1..=2 {
            let message = format!("m{number}-{part}");
            let reply = client.call_ok(&put_request("t", &message), REPLY_DEADLINE);
            assert_eq!(reply["success"], true, "{message}: {reply}");
        }
    }
    let leader_stats = cluster.stats(leader, REPLY_DEADLINE).expect("stats");
    let applied = leader_stats["last_applied"].as_u64().expect("applied");
    let stats = cluster.wait_converged(applied, CONVERGE_DEADLINE);
    assert_eq!(stats["session_count"], json!(SESSIONS_MAX), "{stats}");

    // The leader dies: the new one must have forgotten exactly the same clients.
    cluster.kill(leader);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let forgotten = CLIENTS - SESSIONS_MAX;
    for (number, client) in clients.iter_mut().enumerate() {
        let last = put_request("t", &format!("m{number}-2"));
        let reply = retry(client, &last, 2);
        if number < forgotten {
            // A forgotten client's stale retry: refused, never applied again.
            let reply = without_error_message(reply);
            assert_eq!(
                error_code(&reply),
                Some("SESSION_EXPIRED"),
                "forgotten client {number}: {reply}"
            );
            assert_eq!(reply["success"], false, "{reply}");
        } else {
            // A remembered client's retry of its last request: the original reply.
            assert_eq!(
                without_leader(reply),
                json!({"success": true}),
                "remembered client {number}"
            );
        }
    }
    cluster.spawn(leader);
    assert!(cluster.wait_all_up(LEADER_DEADLINE), "restart");
    let stats = cluster.wait_converged(applied, CONVERGE_DEADLINE);
    assert_eq!(
        stats["message_count"],
        json!(2 * CLIENTS),
        "nothing applied twice"
    );
    assert_eq!(stats["session_count"], json!(SESSIONS_MAX), "{stats}");
}
