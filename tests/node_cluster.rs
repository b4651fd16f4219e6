//! End-to-end tests of clusters of real nodes: elections, failover, not-leader replies,
//! concurrency, process stops and shutdown. Kept few and bounded: each starts real processes
//! on a shared, possibly loaded machine.

mod common;

use common::{without_error_message, Cluster, Wire, LEADER_DEADLINE, REPLY_DEADLINE};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

fn put_topic(topic: &str) -> Value {
    json!({"type": "topic", "method": "PUT", "topic": topic})
}

fn put_message(topic: &str, message: &str) -> Value {
    json!({"type": "message", "method": "PUT", "topic": topic, "message": message})
}

fn get_message(topic: &str) -> Value {
    json!({"type": "message", "method": "GET", "topic": topic})
}

/// Samples every node's status for `duration`, asserting no term ever has two leaders.
/// Returns the leaders seen per term.
fn sample_leaders(cluster: &Cluster, duration: Duration) -> BTreeMap<u64, usize> {
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        for (index, status) in cluster.statuses().into_iter().enumerate() {
            let Some(status) = status else { continue };
            if status["role"] != "Leader" {
                continue;
            }
            let term = status["term"].as_u64().expect("term");
            let previous = leaders.insert(term, index);
            assert!(
                previous.is_none_or(|previous| previous == index),
                "two leaders in term {term}: {previous:?} and {index}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    leaders
}

/// Pops every message of `topic` from the leader at `index`.
fn drain(cluster: &Cluster, index: usize, topic: &str) -> Vec<String> {
    let mut client = cluster.client(index);
    let mut messages = Vec::new();
    loop {
        let reply = client.call(Wire::MsgPack, &get_message(topic));
        if reply == json!({"success": false}) {
            return messages;
        }
        let message = reply["message"].as_str().expect("a text message");
        messages.push(message.to_string());
    }
}

#[test]
fn three_and_five_node_clusters_elect_exactly_one_leader() {
    for size in [3, 5] {
        let cluster = Cluster::start(size);
        let leaders = sample_leaders(&cluster, Duration::from_secs(2));
        let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
        let leaders_after = sample_leaders(&cluster, Duration::from_secs(1));
        assert!(
            leaders.values().chain(leaders_after.values()).count() >= 1,
            "size {size}: a leader was seen"
        );
        // Stable: the leader found is still the one, in the same term.
        assert_eq!(cluster.leader_now(), Some((leader, term)), "size {size}");
        let statuses = cluster.statuses();
        let followers = statuses
            .iter()
            .flatten()
            .filter(|status| status["role"] == "Follower")
            .count();
        assert_eq!(followers, size - 1, "size {size}: {statuses:?}");
    }
}

#[test]
fn followers_answer_not_leader_with_a_leader_hint() {
    let cluster = Cluster::start(3);
    let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let hint = json!({"id": leader, "ip": "127.0.0.1", "port": cluster.ports[leader].port});
    let not_leader_v2 =
        json!({"success": false, "error": {"code": "NOT_LEADER", "message": "*"}, "leader": hint});
    for follower in (0..3).filter(|index| *index != leader) {
        let mut client = cluster.client(follower);
        // A follower learns the leader from its first heartbeat: wait for that.
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            let reply = client.call(
                Wire::MsgPack,
                &json!({"v": 2, "type": "topic", "method": "GET"}),
            );
            if reply.get("leader").is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "follower {follower} never learned the leader"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for wire in [Wire::MsgPack, Wire::Json] {
            let requests = [
                put_topic("t"),
                json!({"type": "topic", "method": "GET"}),
                put_message("t", "m"),
                get_message("t"),
            ];
            for request in requests {
                let reply = client.call(wire, &request);
                assert_eq!(reply, json!({"success": false}), "{wire:?} v1 {request}");
                let mut request_v2 = request.clone();
                request_v2["v"] = json!(2);
                let reply = without_error_message(client.call(wire, &request_v2));
                assert_eq!(reply, not_leader_v2, "{wire:?} v2 {request}");
            }
            let status = client.call(wire, &json!({"type": "status", "method": "GET"}));
            assert_eq!(
                status,
                json!({"role": "Follower", "term": term}),
                "{wire:?}"
            );
        }
    }
    // Nothing was changed.
    let reply = cluster
        .client(leader)
        .call(Wire::MsgPack, &json!({"type": "topic", "method": "GET"}));
    assert_eq!(reply, json!({"success": true, "topics": []}));
}

#[test]
fn killing_the_leader_elects_a_new_one_that_serves_what_the_old_one_committed() {
    // Host names work as well as IP literals (PROTOCOL.md §1).
    let mut cluster = Cluster::start_on("localhost", 3, &[]);
    let (old_leader, old_term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(old_leader);
    assert_eq!(
        client.call(Wire::MsgPack, &put_topic("t")),
        json!({"success": true})
    );
    for message in ["m1", "m2", "m3"] {
        let reply = client.call(Wire::MsgPack, &put_message("t", message));
        assert_eq!(reply, json!({"success": true}), "{message}");
    }
    assert_eq!(
        client.call(Wire::MsgPack, &get_message("t")),
        json!({"success": true, "message": "m1"})
    );

    cluster.kill(old_leader);
    let (new_leader, new_term) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_ne!(new_leader, old_leader);
    assert!(new_term > old_term, "{new_term} > {old_term}");
    let mut client = cluster.client(new_leader);
    assert_eq!(
        client.call(Wire::Json, &json!({"type": "topic", "method": "GET"})),
        json!({"success": true, "topics": ["t"]})
    );
    assert_eq!(drain(&cluster, new_leader, "t"), vec!["m2", "m3"]);
}

#[test]
fn many_clients_at_once_get_each_message_exactly_once_in_order() {
    const PRODUCERS: usize = 6;
    const MESSAGES_PER_PRODUCER: usize = 40;
    const CONSUMERS: usize = 3;
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let port = cluster.ports[leader].port;
    let mut client = cluster.client(leader);
    assert_eq!(
        client.call(Wire::MsgPack, &put_topic("t")),
        json!({"success": true})
    );

    let total = PRODUCERS * MESSAGES_PER_PRODUCER;
    let consumed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            std::thread::spawn(move || {
                let mut client = common::Client::connect(port);
                for sequence in 0..MESSAGES_PER_PRODUCER {
                    let message = format!("{producer}:{sequence}");
                    let wire = if producer % 2 == 0 {
                        Wire::MsgPack
                    } else {
                        Wire::Json
                    };
                    let reply = client.call(wire, &put_message("t", &message));
                    assert_eq!(reply, json!({"success": true}), "put {message}");
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let consumed = consumed.clone();
            std::thread::spawn(move || {
                let mut client = common::Client::connect(port);
                let mut received = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                while consumed.load(std::sync::atomic::Ordering::SeqCst) < total {
                    assert!(Instant::now() < deadline, "consumers stalled");
                    let reply = client.call(Wire::MsgPack, &get_message("t"));
                    if let Some(message) = reply["message"].as_str() {
                        received.push(message.to_string());
                        consumed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        assert_eq!(reply, json!({"success": false}));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                received
            })
        })
        .collect();
    for producer in producers {
        producer.join().expect("producer");
    }
    let mut seen = HashSet::new();
    for consumer in consumers {
        let received = consumer.join().expect("consumer");
        // Within what one consumer popped, each producer's messages come in put order.
        let mut last: BTreeMap<usize, usize> = BTreeMap::new();
        for message in received {
            let (producer, sequence) = message.split_once(':').expect("producer:sequence");
            let producer: usize = producer.parse().expect("producer");
            let sequence: usize = sequence.parse().expect("sequence");
            if let Some(previous) = last.insert(producer, sequence) {
                assert!(
                    previous < sequence,
                    "{producer}: {sequence} popped after {previous}"
                );
            }
            assert!(seen.insert(message.clone()), "{message} popped twice");
        }
    }
    assert_eq!(seen.len(), total, "every message popped exactly once");
    assert_eq!(
        client.call(Wire::MsgPack, &get_message("t")),
        json!({"success": false})
    );
}

#[test]
fn a_stopped_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let mut cluster = Cluster::start(3);
    let (old_leader, old_term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(old_leader);
    assert_eq!(
        client.call(Wire::MsgPack, &put_topic("t")),
        json!({"success": true})
    );
    assert_eq!(
        client.call(Wire::MsgPack, &put_message("t", "before")),
        json!({"success": true})
    );

    cluster.signal(old_leader, libc::SIGSTOP);
    // A request to the frozen leader: it cannot be answered now, and must never take effect
    // since the old leader has lost its majority.
    let mut stranded = cluster.client(old_leader);
    let stranded_request = common::encode(
        Wire::MsgPack,
        &json!({"v": 2, "type": "message", "method": "PUT", "topic": "t", "message": "stranded"}),
    );
    assert_eq!(
        stranded.bytes(&stranded_request, Duration::from_millis(200)),
        None
    );
    let mut stranded = cluster.client(old_leader);
    let stranded_socket_request = stranded_request.clone();

    let (new_leader, new_term) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_ne!(new_leader, old_leader);
    assert!(new_term > old_term);
    let mut client = cluster.client(new_leader);
    assert_eq!(
        client.call(Wire::MsgPack, &put_message("t", "during")),
        json!({"success": true})
    );

    // Sent while frozen, read after the thaw.
    let thawed = std::thread::spawn(move || {
        stranded.bytes(&stranded_socket_request, Duration::from_secs(15))
    });
    std::thread::sleep(Duration::from_millis(100));
    cluster.signal(old_leader, libc::SIGCONT);
    let reply = thawed
        .join()
        .expect("thread")
        .expect("the thawed node answers");
    let reply = common::decode(Wire::MsgPack, &reply);
    assert_eq!(
        reply["success"], false,
        "a deposed leader cannot commit: {reply}"
    );

    // One leader again, every node agreeing on its term.
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(leader);
    assert_eq!(
        client.call(Wire::MsgPack, &put_message("t", "after")),
        json!({"success": true})
    );
    assert_eq!(
        drain(&cluster, leader, "t"),
        vec!["before", "during", "after"]
    );
}

#[test]
fn sigterm_on_the_leader_exits_zero_and_hands_over_leadership() {
    let mut cluster = Cluster::start(3);
    let (old_leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(old_leader);
    assert_eq!(
        client.call(Wire::MsgPack, &put_topic("t")),
        json!({"success": true})
    );
    assert_eq!(
        client.call(Wire::MsgPack, &put_message("t", "kept")),
        json!({"success": true})
    );

    let (status, took) = cluster
        .terminate(old_leader, Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let log = std::fs::read_to_string(cluster.log_path(old_leader)).expect("log");
    assert!(log.contains("handing leadership to node"), "{log}");

    let (new_leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_eq!(drain(&cluster, new_leader, "t"), vec!["kept"]);
    // The remaining two still make a majority of three.
    let mut client = cluster.client(new_leader);
    let reply = client.call_with_timeout(Wire::MsgPack, &put_message("t", "x"), REPLY_DEADLINE);
    assert_eq!(reply, Some(json!({"success": true})));
}

#[test]
fn a_whole_cluster_killed_and_restarted_keeps_every_acknowledged_message() {
    let mut cluster = Cluster::start_with(3, &["--fsync", "always"]);
    let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(leader);
    assert_eq!(
        client.call(Wire::MsgPack, &put_topic("t")),
        json!({"success": true})
    );
    for number in 0..20 {
        let reply = client.call(Wire::MsgPack, &put_message("t", &format!("m{number}")));
        assert_eq!(reply, json!({"success": true}), "m{number}");
    }
    for number in 0..5 {
        let reply = client.call(Wire::MsgPack, &get_message("t"));
        assert_eq!(
            reply,
            json!({"success": true, "message": format!("m{number}")})
        );
    }

    cluster.kill_all();
    for index in 0..3 {
        cluster.spawn(index);
    }
    assert!(
        cluster.wait_all_up(LEADER_DEADLINE),
        "restarted nodes answer"
    );
    let (leader, new_term) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert!(
        new_term > term,
        "terms survive restarts: {new_term} > {term}"
    );
    let mut client = cluster.client(leader);
    assert_eq!(
        client.call(Wire::MsgPack, &json!({"type": "topic", "method": "GET"})),
        json!({"success": true, "topics": ["t"]})
    );
    let expected: Vec<String> = (5..20).map(|number| format!("m{number}")).collect();
    assert_eq!(drain(&cluster, leader, "t"), expected);
}

/// A leader whose followers are all gone: its requests can never commit.
fn leader_without_followers() -> (Cluster, usize) {
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut client = cluster.client(leader);
    assert_eq!(
        client.call(Wire::MsgPack, &put_topic("t")),
        json!({"success": true})
    );
    for follower in (0..3).filter(|index| *index != leader) {
        cluster.kill(follower);
    }
    (cluster, leader)
}

fn put_v2(message: &str) -> Value {
    json!({"v": 2, "type": "message", "method": "PUT", "topic": "t", "message": message})
}

#[test]
fn without_a_quorum_a_request_is_answered_timeout_within_the_request_timeout() {
    let (cluster, leader) = leader_without_followers();
    let mut client = cluster.client(leader);
    // Proposed before the leader notices it lost its quorum (an election timeout, 300 ms+),
    // so it waits for its deadline (3 s in tests): outcome unknown.
    let started = Instant::now();
    let reply = client
        .call_with_timeout(Wire::MsgPack, &put_v2("lost"), Duration::from_secs(8))
        .expect("answered without a quorum");
    let took = started.elapsed();
    let reply = without_error_message(reply);
    eprintln!("no quorum: {reply} after {took:?}");
    let code = reply["error"]["code"].as_str().expect("v2 error code");
    if code == "TIMEOUT" {
        assert!(
            took >= Duration::from_millis(2900),
            "not before the deadline: {took:?}"
        );
    } else {
        // Only if the machine was so slow the leader stepped down before the request came.
        assert_eq!(code, "NOT_LEADER", "{reply}");
    }
    assert_eq!(reply["success"], false);
}

#[test]
fn sigterm_answers_the_requests_in_flight_and_exits_zero() {
    let (mut cluster, leader) = leader_without_followers();
    let port = cluster.ports[leader].port;
    let in_flight = std::thread::spawn(move || {
        let mut client = common::Client::connect(port);
        client.call_with_timeout(Wire::MsgPack, &put_v2("in flight"), Duration::from_secs(8))
    });
    std::thread::sleep(Duration::from_millis(150));
    let (status, took) = cluster
        .terminate(leader, Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let reply = in_flight
        .join()
        .expect("thread")
        .expect("answered before exit");
    let reply = without_error_message(reply);
    eprintln!("in flight at SIGTERM: {reply} (exit after {took:?})");
    assert_eq!(reply["success"], false, "{reply}");
    let code = reply["error"]["code"].as_str().expect("v2 error code");
    assert!(["SHUTTING_DOWN", "NOT_LEADER"].contains(&code), "{reply}");
}
