//! End-to-end tests of what an outsider who reaches a node's peer (internal) port can do to
//! a cluster of real nodes, without keys: forged frames in the peer wire format, built with
//! the library's own encoder, sent from a plain ZeroMQ DEALER as a peer's would be.
//!
//! Why: the core's scenario tests (`tests/raft_scenarios.rs`) show what a core does with
//! such a message; these show that the running node takes the same path (frame decoding,
//! the loop, persistence, status) and that the cluster goes on serving.

mod common;

use common::{Cluster, Wire, LEADER_DEADLINE, REPLY_DEADLINE};
use rrmq::config::ClusterConfig;
use rrmq::raft::{LogIndex, Message, MessageBody, NodeId, Term};
use rrmq::transport::wire::encode_peer_message;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A Heartbeat at term `u64::MAX`, claiming to come from node `from`.
fn forged_heartbeat(from: usize, to: usize) -> Message {
    Message {
        from: NodeId(from as u64),
        to: NodeId(to as u64),
        term: Term(u64::MAX),
        body: MessageBody::Heartbeat {
            commit: LogIndex(0),
            read_round: 0,
        },
    }
}

fn term_of(status: &Value) -> u64 {
    status["term"].as_u64().expect("a status carries the term")
}

/// Every running node's term, asserting each is sane; nodes that do not answer are skipped.
fn assert_terms_sane(cluster: &Cluster, when: &str) {
    for (index, status) in cluster.statuses().into_iter().enumerate() {
        if let Some(status) = status {
            let term = term_of(&status);
            assert!(
                Term(term).is_sane(),
                "{when}: node {index} adopted term {term}"
            );
        }
    }
}

/// Creates a topic, puts a message and gets it back through the leader at `leader`.
fn put_and_get(cluster: &Cluster, leader: usize, topic: &str) {
    let mut client = cluster.client(leader);
    let created = client.call(
        Wire::MsgPack,
        &json!({"type": "topic", "method": "PUT", "topic": topic}),
    );
    assert_eq!(created["success"], true, "create {topic}: {created}");
    let put = client.call(
        Wire::MsgPack,
        &json!({"type": "message", "method": "PUT", "topic": topic, "message": "hello"}),
    );
    assert_eq!(put["success"], true, "put to {topic}: {put}");
    let got = client.call(
        Wire::MsgPack,
        &json!({"type": "message", "method": "GET", "topic": topic}),
    );
    assert_eq!(got["message"], "hello", "get from {topic}: {got}");
}

/// The counts in node `index`'s "dropped N peer message(s) at a term beyond" lines.
fn absurd_term_drops_logged(cluster: &Cluster, index: usize) -> Vec<u64> {
    cluster
        .log(index)
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("dropped ")?;
            let (count, rest) = rest.split_once(' ')?;
            rest.contains("at a term beyond")
                .then(|| count.parse().ok())
                .flatten()
        })
        .collect()
}

#[test]
fn a_heartbeat_at_term_u64_max_is_dropped_and_the_cluster_keeps_electing_and_serving() {
    const FRAMES_PER_NODE: u64 = 50;
    let mut cluster = Cluster::start(3);
    let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let config = ClusterConfig::load(&cluster.config_path).expect("the cluster's config");

    // Every node gets forged heartbeats at u64::MAX, each claiming to come from another
    // member (the followers' from the leader, the leader's from a follower): a node that
    // adopted the term would persist it and spread it through its replies.
    let context = zmq::Context::new();
    let dealers: Vec<zmq::Socket> = (0..3)
        .map(|index| cluster.peer_dealer(&context, index, None))
        .collect();
    for (index, dealer) in dealers.iter().enumerate() {
        let claimed = if index == leader {
            (index + 1) % 3
        } else {
            leader
        };
        let frame = encode_peer_message(config.cluster_id, &forged_heartbeat(claimed, index));
        for _ in 0..FRAMES_PER_NODE {
            dealer.send(&frame, 0).expect("queue the forged frame");
        }
    }

    // Each node logs the drops, rate-limited: a line or two with the count, not fifty.
    let deadline = Instant::now() + REPLY_DEADLINE;
    for index in 0..3 {
        loop {
            let counts = absurd_term_drops_logged(&cluster, index);
            if counts.iter().sum::<u64>() == FRAMES_PER_NODE {
                assert!(
                    counts.len() <= 3,
                    "node {index}: one line per second at most: {counts:?}"
                );
                break;
            }
            if Instant::now() > deadline {
                cluster.dump_logs();
                panic!("node {index} did not log {FRAMES_PER_NODE} drops: {counts:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_terms_sane(&cluster, "after the forged frames");
    // Nothing happened: the same leader in the same term.
    assert_eq!(cluster.leader_now(), Some((leader, term)), "undisturbed");
    put_and_get(&cluster, leader, "before-failover");

    // A new election still succeeds: the terms were not exhausted.
    cluster.kill(leader);
    let (new_leader, new_term) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_ne!(new_leader, leader);
    assert!(
        new_term > term && Term(new_term).is_sane(),
        "term {term} -> {new_term}"
    );
    assert_terms_sane(&cluster, "after the failover");
    put_and_get(&cluster, new_leader, "after-failover");

    // The killed node restarts from its disk, which holds no absurd term, and rejoins.
    cluster.spawn(leader);
    assert!(
        cluster.wait_all_up(LEADER_DEADLINE),
        "node {leader} restarts"
    );
    let (_, rejoined_term) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert!(Term(rejoined_term).is_sane(), "term {rejoined_term}");
    assert_terms_sane(&cluster, "after the restart");
}
