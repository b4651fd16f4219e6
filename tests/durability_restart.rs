//! Issue 4 acceptance, restarts: with `--fsync always`, what a node acknowledged survives
//! SIGKILL of every node, and a node that was down (or lost its disk) catches up from the
//! others until its state machine is the same as theirs (same digest at the same applied
//! index, from the `stats` operation).

mod common;

use common::{
    create_topic_request, put_request, Cluster, SessionClient, LEADER_DEADLINE, REPLY_DEADLINE,
};
use serde_json::json;
use std::time::Duration;

const DURABLE: &[&str] = &["--fsync", "always"];
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

/// Puts `messages` one after the other, each acknowledged.
fn put_all(client: &mut SessionClient, topic: &str, messages: &[String]) {
    for message in messages {
        let reply = client.call_ok(&put_request(topic, message), REPLY_DEADLINE);
        assert_eq!(reply["success"], true, "put {message}: {reply}");
    }
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|number| format!("{prefix}{number:04}")).collect()
}

/// Puts N, pops a few, SIGKILLs every node at once, restarts them all: the nodes agree, and
/// draining gives exactly the acknowledged messages not yet popped, in order.
fn kill_everything_and_restart(size: usize) {
    const PUT: usize = 120;
    const POPPED_BEFORE: usize = 7;
    let mut cluster = Cluster::start_with(size, DURABLE);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let mut writer = SessionClient::new(&cluster, "writer");
    let reply = writer.call_ok(&create_topic_request("t"), REPLY_DEADLINE);
    assert_eq!(reply["success"], true, "{reply}");
    let messages = numbered("m", 0..PUT);
    put_all(&mut writer, "t", &messages);
    let mut reader = SessionClient::new(&cluster, "reader");
    for expected in &messages[..POPPED_BEFORE] {
        let reply = reader.call_ok(&common::get_request("t"), REPLY_DEADLINE);
        assert_eq!(reply["message"], json!(expected), "{reply}");
    }

    cluster.kill_all();
    for index in 0..size {
        cluster.spawn(index);
    }
    assert!(
        cluster.wait_all_up(LEADER_DEADLINE),
        "restarted nodes answer"
    );
    cluster.wait_for_leader(LEADER_DEADLINE);
    // Every node replays the same log: same state at the same index, before anything else.
    let stats = cluster.wait_converged(cluster.leader_applied(LEADER_DEADLINE), CONVERGE_DEADLINE);
    assert_eq!(
        stats["message_count"],
        json!(PUT - POPPED_BEFORE),
        "size {size}: {stats}"
    );

    let drained = SessionClient::new(&cluster, "drainer").drain("t", DRAIN_DEADLINE);
    assert_eq!(
        drained,
        messages[POPPED_BEFORE..],
        "size {size}: exactly the acknowledged messages, in order"
    );
}

#[test]
fn a_three_node_cluster_killed_at_once_keeps_exactly_what_it_acknowledged_in_order() {
    kill_everything_and_restart(3);
}

#[test]
fn a_single_node_killed_keeps_exactly_what_it_acknowledged_in_order() {
    kill_everything_and_restart(1);
}

#[test]
fn a_leader_killed_while_the_others_take_writes_catches_up_after_restart() {
    let mut cluster = Cluster::start_with(3, DURABLE);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let mut writer = SessionClient::new(&cluster, "writer");
    let reply = writer.call_ok(&create_topic_request("t"), REPLY_DEADLINE);
    assert_eq!(reply["success"], true, "{reply}");
    let before = numbered("before", 0..30);
    put_all(&mut writer, "t", &before);

    // The leader: it restarts as a follower, and may hold entries it never committed.
    let (victim, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    cluster.kill(victim);
    let during = numbered("during", 0..60);
    put_all(&mut writer, "t", &during);
    let stats_without =
        cluster.wait_converged(cluster.leader_applied(LEADER_DEADLINE), CONVERGE_DEADLINE);

    cluster.spawn(victim);
    assert!(
        cluster.wait_all_up(LEADER_DEADLINE),
        "restarted node answers"
    );
    let after = numbered("after", 0..20);
    put_all(&mut writer, "t", &after);
    let applied_min = stats_without["last_applied"].as_u64().expect("applied") + 20;
    let stats = cluster.wait_converged(applied_min, CONVERGE_DEADLINE);
    let victim_stats = cluster.stats(victim, REPLY_DEADLINE).expect("victim stats");
    assert_eq!(victim_stats["digest"], stats["digest"], "{victim_stats}");
    assert_eq!(victim_stats["message_count"], json!(110), "{victim_stats}");

    // The restarted node holds everything: the cluster still has it all without another.
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let other = (0..3)
        .find(|index| *index != victim && *index != leader)
        .expect("a third node");
    cluster.kill(other);
    let drained = SessionClient::new(&cluster, "drainer").drain("t", DRAIN_DEADLINE);
    let expected: Vec<String> = [before, during, after].concat();
    assert_eq!(drained, expected);
}

#[test]
fn a_follower_whose_data_dir_was_wiped_rejoins_and_catches_up() {
    let mut cluster = Cluster::start_with(3, DURABLE);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut writer = SessionClient::new(&cluster, "writer");
    writer.target = leader;
    let reply = writer.call_ok(&create_topic_request("t"), REPLY_DEADLINE);
    assert_eq!(reply["success"], true, "{reply}");
    let before = numbered("before", 0..40);
    put_all(&mut writer, "t", &before);

    let follower = (0..3).find(|index| *index != leader).expect("a follower");
    cluster.kill(follower);
    let data_dir = cluster.data_dir(follower);
    std::fs::remove_dir_all(&data_dir).expect("wipe the follower's data dir");
    let during = numbered("during", 0..20);
    put_all(&mut writer, "t", &during);

    cluster.spawn_with(follower, &["--rejoin"]);
    assert!(cluster.wait_all_up(LEADER_DEADLINE), "wiped node answers");
    let after = numbered("after", 0..20);
    put_all(&mut writer, "t", &after);
    let leader_stats = cluster.stats(leader, REPLY_DEADLINE).expect("leader stats");
    let applied = leader_stats["last_applied"].as_u64().expect("applied");
    let stats = cluster.wait_converged(applied, CONVERGE_DEADLINE);
    assert_eq!(stats["message_count"], json!(80), "{stats}");

    // Every commit from now on needs the wiped node: it is one of the two left.
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let other = if leader != follower {
        leader
    } else {
        (0..3)
            .find(|index| *index != follower)
            .expect("another node")
    };
    cluster.kill(other);
    let last = vec!["last".to_string()];
    put_all(&mut writer, "t", &last);
    let drained = SessionClient::new(&cluster, "drainer").drain("t", DRAIN_DEADLINE);
    let expected: Vec<String> = [before, during, after, last].concat();
    assert_eq!(drained, expected);
}
