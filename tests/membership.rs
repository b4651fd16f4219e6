//! Membership changes at runtime with real nodes (PROTOCOL.md §12): a node started with
//! `--join` is added with `rrmq member add` (a learner, then a voter), keeps the data
//! written before and after, and is removed again with `rrmq member remove`. A cluster
//! grows from three to five under load without losing or duplicating an acknowledged
//! message, shrinks from five to three (its leader among the removed), and replaces a dead
//! node by a fresh one at a new address that then counts in the majority.

mod common;
#[path = "common/members.rs"]
mod members;

use std::time::{Duration, Instant};

use common::{Cluster, Wire};
use members::{
    cli, client_port, member_add, member_remove, spawn_joining, voters, wait_for_applied,
    wait_for_members,
};
use serde_json::{json, Value};

/// Writes `DIR/config-grown.json`: the cluster's config with one more address on fresh
/// ports; returns its path and the new node's index.
fn grown_config(cluster: &Cluster) -> (std::path::PathBuf, usize) {
    config_plus_one(cluster, &cluster.config_path, "config-grown.json")
}

/// A cluster of three whose topic `t` holds one message, `before`; and its leader.
fn cluster_of_three_holding_before() -> (Cluster, usize) {
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30));
    cluster
        .rrmq(&["topic", "create", "t"])
        .assert_code(0, "topic create");
    cluster
        .rrmq(&["put", "t", "before"])
        .assert_code(0, "put before");
    (cluster, leader)
}

#[test]
fn a_joining_node_is_added_as_a_voter_catches_up_and_is_removed_again() {
    let (cluster, _) = cluster_of_three_holding_before();

    let (grown, index) = grown_config(&cluster);
    let _joining = spawn_joining(&cluster, &grown, index, None);
    let index_text = index.to_string();
    let add = cli(&cluster, &grown, "90s", &["member", "add", &index_text]);
    if add.code != Some(0) {
        cluster.dump_logs();
    }
    add.assert_code(0, "member add");
    let members = wait_for_members(&cluster, &grown, |members| voters(members).len() == 4);
    assert_eq!(voters(&members), vec![0, 1, 2, 3]);

    // A second add while nothing is in progress of a used id is refused.
    let again = cli(&cluster, &grown, "10s", &["member", "add", "1"]);
    assert_ne!(
        again.code,
        Some(0),
        "re-adding a member's id: {}",
        again.describe()
    );

    // The cluster of four keeps serving, and the new node holds the message put before.
    cluster
        .rrmq(&["put", "t", "after"])
        .assert_code(0, "put after");
    let remove = cli(&cluster, &grown, "60s", &["member", "remove", &index_text]);
    remove.assert_code(0, "member remove");
    let members = wait_for_members(&cluster, &grown, |members| members.len() == 3);
    assert_eq!(voters(&members), vec![0, 1, 2]);
    let first = cluster.rrmq(&["get", "t"]);
    first.assert_code(0, "get");
    assert_eq!(first.stdout_text(), "before\n");
}

#[test]
fn removing_the_leader_answers_then_another_node_leads_and_the_removed_one_refuses() {
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30));
    cluster
        .rrmq(&["topic", "create", "t"])
        .assert_code(0, "topic create");
    let config = &cluster.config_path;
    let leader_text = leader.to_string();
    let remove = cli(&cluster, config, "60s", &["member", "remove", &leader_text]);
    if remove.code != Some(0) {
        cluster.dump_logs();
    }
    remove.assert_code(0, "member remove of the leader");
    let members = wait_for_members(&cluster, config, |members| members.len() == 2);
    let expected: Vec<u64> = (0..3u64).filter(|id| *id as usize != leader).collect();
    assert_eq!(voters(&members), expected);
    // The two left commit on their own.
    cluster
        .rrmq(&["put", "t", "m"])
        .assert_code(0, "put after removing the leader");
    // The removed node refuses (NOT_LEADER), saying why, asked directly on the wire (the
    // CLI would follow its leader hint to a member).
    let reply = cluster.client(leader).call(
        Wire::Json,
        &json!({"v": 2, "type": "topic", "method": "GET"}),
    );
    assert_eq!(reply["success"], json!(false), "{reply}");
    assert_eq!(reply["error"]["code"], json!("NOT_LEADER"), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("removed")),
        "{reply}"
    );
}

#[test]
fn an_add_whose_learner_never_catches_up_stays_in_progress_until_deleted() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(30));
    // The new node is never started: its learner cannot catch up.
    let (grown, index) = grown_config(&cluster);
    let index_text = index.to_string();
    let add = cli(&cluster, &grown, "8s", &["member", "add", &index_text]);
    add.assert_code(4, "member add of a node that never runs times out");
    let other = cli(&cluster, &grown, "8s", &["member", "remove", "1"]);
    other.assert_code(4, "a second change while the add is in progress");
    assert!(other.stderr.contains("in progress"), "{}", other.describe());
    let cancel = cli(&cluster, &grown, "30s", &["member", "remove", &index_text]);
    cancel.assert_code(0, "a member DELETE of the learner cancels the add");
    let members = wait_for_members(&cluster, &grown, |members| members.len() == 3);
    assert_eq!(voters(&members), vec![0, 1, 2]);
}

#[test]
fn a_cluster_restarted_after_a_change_uses_the_membership_from_its_log() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(30));
    let (grown, index) = grown_config(&cluster);
    let index_text = index.to_string();
    let joining = spawn_joining(&cluster, &grown, index, None);
    cli(&cluster, &grown, "90s", &["member", "add", &index_text]).assert_code(0, "member add");
    // Everyone down, then up again: nodes 0-2 from the original config.json, which does
    // not list node 3.
    drop(joining);
    cluster.kill_all();
    for node in 0..3 {
        cluster.spawn(node);
    }
    let _restarted = spawn_joining(&cluster, &grown, index, None);
    let members = wait_for_members(&cluster, &grown, |members| voters(members).len() == 4);
    assert_eq!(voters(&members), vec![0, 1, 2, 3]);
    cluster
        .rrmq(&["topic", "create", "after"])
        .assert_code(0, "the four commit");
}

#[test]
fn a_removed_node_restarted_does_not_disrupt_the_cluster() {
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30));
    let removed = (leader + 1) % 3;
    let config = &cluster.config_path;
    let removed_text = removed.to_string();
    cli(
        &cluster,
        config,
        "60s",
        &["member", "remove", &removed_text],
    )
    .assert_code(0, "member remove");
    let (_, term_before) = cluster.wait_for_leader(Duration::from_secs(30));
    cluster.kill(removed);
    cluster.spawn(removed);
    // It finds its removal in its own log and says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(cluster.log_path(removed))
        .unwrap_or_default()
        .contains("was removed from the cluster")
    {
        assert!(
            Instant::now() < deadline,
            "the restarted node never noticed its removal"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster
        .rrmq(&["topic", "create", "t"])
        .assert_code(0, "topic create");
    for number in 0..20 {
        cluster
            .rrmq(&["put", "t", &number.to_string()])
            .assert_code(0, "put while the removed node runs");
    }
    let (_, term_after) = cluster.wait_for_leader(Duration::from_secs(30));
    assert_eq!(
        term_after, term_before,
        "the removed node forced an election"
    );
}

/// Writes `DIR/NAME`: the config at `base` with one more address on fresh ports; returns
/// its path and the new node's index.
fn config_plus_one(
    cluster: &Cluster,
    base: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, usize) {
    let text = std::fs::read_to_string(base).expect("read the config");
    let mut config: Value = serde_json::from_str(&text).expect("JSON");
    let addresses = config["addresses"].as_array_mut().expect("addresses");
    let index = addresses.len();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port()
    };
    let (port, internal_port) = (port(), port());
    addresses.push(json!({"ip": "127.0.0.1", "port": port, "internal_port": internal_port}));
    let path = cluster.dir.path().join(name);
    std::fs::write(&path, config.to_string()).expect("write the grown config");
    (path, index)
}

/// Pops every message of `topic` through `config` until it is empty.
fn drain(cluster: &Cluster, config: &std::path::Path, topic: &str) -> Vec<String> {
    let mut messages = Vec::new();
    loop {
        let get = cli(cluster, config, "30s", &["get", topic]);
        match get.code {
            Some(0) => messages.push(get.stdout_text().trim_end().to_string()),
            Some(3) => return messages,
            _ => panic!("get while draining: {}", get.describe()),
        }
    }
}

#[test]
fn grow_from_three_to_five_under_load_loses_and_duplicates_nothing() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(30));
    cluster
        .rrmq(&["topic", "create", "t"])
        .assert_code(0, "topic create");
    let (four, third) = config_plus_one(&cluster, &cluster.config_path, "config-4.json");
    let (five, fourth) = config_plus_one(&cluster, &four, "config-5.json");
    assert_eq!((third, fourth), (3, 4));

    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::sync::atomic::AtomicU64::new(0);
    let ((acknowledged, attempted), drained) = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            // Numbered puts until both adds are done (bounded by count and time).
            let deadline = Instant::now() + Duration::from_secs(240);
            let mut acknowledged = Vec::new();
            let mut attempted = 0u64;
            while attempted < 2000
                && Instant::now() < deadline
                && !stop.load(std::sync::atomic::Ordering::SeqCst)
            {
                let put = cli(
                    &cluster,
                    &cluster.config_path,
                    "30s",
                    &["put", "t", &attempted.to_string()],
                );
                if put.code == Some(0) {
                    acknowledged.push(attempted);
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                attempted += 1;
            }
            (acknowledged, attempted)
        });
        // The load runs before, during and after both changes.
        let wait_for_acks = |count: u64| {
            let deadline = Instant::now() + Duration::from_secs(120);
            while acked.load(std::sync::atomic::Ordering::SeqCst) < count {
                assert!(
                    Instant::now() < deadline,
                    "the producer never reached {count} acknowledged puts"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for_acks(5);
        let _third = spawn_joining(&cluster, &five, third, None);
        member_add(&cluster, &four, third);
        let _fourth = spawn_joining(&cluster, &five, fourth, None);
        member_add(&cluster, &five, fourth);
        let members = wait_for_members(&cluster, &five, |members| voters(members).len() == 5);
        assert_eq!(voters(&members), vec![0, 1, 2, 3, 4]);
        wait_for_acks(acked.load(std::sync::atomic::Ordering::SeqCst) + 5);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let produced = producer.join().expect("the producer thread");
        // The joined nodes stay up (their handles live here) until the drain is done.
        let drained = drain(&cluster, &five, "t");
        (produced, drained)
    });
    assert!(
        acknowledged.len() >= 10,
        "too few puts acknowledged: {} of {attempted}",
        acknowledged.len()
    );
    let numbers: Vec<u64> = drained
        .iter()
        .map(|text| {
            text.parse()
                .unwrap_or_else(|_| panic!("not a number: {text:?}"))
        })
        .collect();
    // In order and never twice (a put that was not acknowledged may or may not be there).
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "out of order or duplicated: {numbers:?}"
    );
    let missing: Vec<u64> = acknowledged
        .iter()
        .filter(|number| numbers.binary_search(number).is_err())
        .copied()
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

#[test]
fn shrink_from_five_to_three_removing_the_leader_keeps_serving() {
    let cluster = Cluster::start(5);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(30));
    cluster
        .rrmq(&["topic", "create", "t"])
        .assert_code(0, "topic create");
    cluster
        .rrmq(&["put", "t", "before"])
        .assert_code(0, "put before");
    let config = cluster.config_path.clone();
    member_remove(&cluster, &config, leader);
    wait_for_members(&cluster, &config, |members| members.len() == 4);
    let other = (leader + 1) % 5;
    member_remove(&cluster, &config, other);
    let members = wait_for_members(&cluster, &config, |members| members.len() == 3);
    let expected: Vec<u64> = (0..5u64)
        .filter(|id| *id as usize != leader && *id as usize != other)
        .collect();
    assert_eq!(voters(&members), expected);
    cluster
        .rrmq(&["put", "t", "after"])
        .assert_code(0, "put with three voters left");
    for expected in ["before", "after"] {
        let get = cluster.rrmq(&["get", "t"]);
        get.assert_code(0, "get");
        assert_eq!(get.stdout_text(), format!("{expected}\n"));
    }
}

#[test]
fn a_killed_node_replaced_by_a_fresh_one_at_a_new_address_leaves_a_voting_majority() {
    let (mut cluster, leader) = cluster_of_three_holding_before();
    // A follower dies for good.
    let dead = (leader + 1) % 3;
    cluster.kill(dead);
    let (grown, index) = config_plus_one(&cluster, &cluster.config_path, "config-replace.json");
    let _fresh = spawn_joining(&cluster, &grown, index, None);
    let replace = cli(
        &cluster,
        &grown,
        "120s",
        &["member", "replace", &dead.to_string(), &index.to_string()],
    );
    if replace.code != Some(0) {
        cluster.dump_logs();
    }
    replace.assert_code(0, "member replace");
    let members = wait_for_members(&cluster, &grown, |members| members.len() == 3);
    let mut expected: Vec<u64> = (0..3u64).filter(|id| *id as usize != dead).collect();
    expected.push(index as u64);
    assert_eq!(voters(&members), expected);
    // Kill another original node: the one left and the fresh one are a majority of three
    // only if the fresh one votes.
    // A follower if the leader is known among them (the fresh node may lead, which the
    // harness's status polls of nodes 0-2 do not see).
    let leader = cluster.leader_now().map(|(leader, _)| leader);
    let second = (0..3)
        .find(|node| *node != dead && Some(*node) != leader)
        .expect("two originals are left");
    cluster.kill(second);
    let put = cli(&cluster, &grown, "60s", &["put", "t", "after"]);
    if put.code != Some(0) {
        cluster.dump_logs();
    }
    put.assert_code(0, "put with one original and the fresh node");
    for expected in ["before", "after"] {
        let get = cli(&cluster, &grown, "60s", &["get", "t"]);
        get.assert_code(0, "get");
        assert_eq!(get.stdout_text(), format!("{expected}\n"));
    }
}

/// A node added while a node that was itself added later leads replays the log from the
/// start, acting on the old memberships in it, which do not list that leader: it must keep
/// its connection to the leader (from its config) or it never catches up. Found by the
/// membership nemesis (a replacement stuck "in progress" after earlier replacements had
/// made a fresh node leader).
#[test]
fn a_node_added_under_a_leader_the_old_log_does_not_know_catches_up() {
    let (cluster, _) = cluster_of_three_holding_before();
    let (four, third) = config_plus_one(&cluster, &cluster.config_path, "config-4.json");
    let (five, fourth) = config_plus_one(&cluster, &four, "config-5.json");
    let (six, fifth) = config_plus_one(&cluster, &five, "config-6.json");
    let _third = spawn_joining(&cluster, &five, third, None);
    member_add(&cluster, &four, third);
    // More than one AppendEntries (1 MiB) of log after the membership {0, 1, 2, 3}, so
    // that a node replaying it acts on that membership for a while.
    let config = rrmq::config::ClusterConfig::load(&four).expect("the config");
    let mut client = rrmq::client::Client::connect(
        rrmq::client::ClientOptions::from_config(&config).expect("client options"),
    )
    .expect("a client");
    for _ in 0..5 {
        client
            .put("t", rrmq::protocol::Payload::Text("x".repeat(300_000)))
            .expect("a large put");
    }
    let _fourth = spawn_joining(&cluster, &five, fourth, None);
    member_add(&cluster, &five, fourth);
    // Node 4 alone is left, and leads: no membership before its add lists it.
    for old in 0..4 {
        member_remove(&cluster, &five, old);
    }
    let members = wait_for_members(&cluster, &five, |members| members.len() == 1);
    assert_eq!(voters(&members), vec![4]);
    // A fresh node catches up from the start of the log.
    let _fifth = spawn_joining(&cluster, &six, fifth, None);
    member_add(&cluster, &six, fifth);
    let members = wait_for_members(&cluster, &six, |members| voters(members).len() == 2);
    assert_eq!(voters(&members), vec![4, 5]);
    let get = cli(&cluster, &six, "60s", &["get", "t"]);
    get.assert_code(0, "get");
    assert_eq!(get.stdout_text(), "before\n");
}

/// The v2 `status` of the node on client port `port`, if it answers within a second.
fn status_at(port: u16) -> Option<Value> {
    common::Client::connect(port).call_with_timeout(
        Wire::MsgPack,
        &json!({"type": "status", "method": "GET", "v": 2}),
        Duration::from_secs(1),
    )
}

/// Polls node `index` until it leads or another node of `config` does (60 s); true when
/// `index` leads.
fn leads(config: &std::path::Path, index: usize, others: &[usize]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if status_at(client_port(config, index)).is_some_and(|status| status["role"] == "Leader") {
            return true;
        }
        if others.iter().any(|other| {
            status_at(client_port(config, *other)).is_some_and(|status| status["role"] == "Leader")
        }) {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "no leader among {index} and {others:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node killed while a node was added, which then leads, restarts knowing neither from
/// its config nor from its log: it must learn the leader's address (from a member it knows)
/// to hear the leader's frames and answer them. Found by the membership nemesis (seed
/// 16001: the lagging node stayed behind until leadership moved to a node it knew).
#[test]
fn a_restarted_node_that_never_heard_of_its_leader_catches_up() {
    let (mut cluster, leader) = cluster_of_three_holding_before();
    let lagging = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.kill(lagging);
    let (four, fresh) = config_plus_one(&cluster, &cluster.config_path, "config-4.json");
    let _fresh = spawn_joining(&cluster, &four, fresh, None);
    member_add(&cluster, &four, fresh);
    // Voters {lagging, other, fresh}: the lagging node's config and log know only `other`
    // (and the removed leader, killed for good).
    member_remove(&cluster, &four, leader);
    cluster.kill(leader);
    // The fresh node leads: while `other` does, it hands leadership over as it shuts down
    // (the fresh node is the one caught up), then comes back.
    let mut handovers = 0;
    while !leads(&four, fresh, &[other]) {
        handovers += 1;
        assert!(handovers <= 5, "node {fresh} never led");
        cluster.terminate(other, Duration::from_secs(10));
        cluster.spawn(other);
    }
    let put = cli(&cluster, &four, "60s", &["put", "t", "after"]);
    put.assert_code(0, "put under the fresh leader");
    let leader_status = status_at(client_port(&four, fresh)).expect("the fresh leader answers");
    assert_eq!(leader_status["role"], "Leader", "{leader_status}");
    let commit = leader_status["commit_index"]
        .as_u64()
        .expect("commit_index");
    cluster.spawn(lagging);
    wait_for_applied(&cluster, lagging, commit);
}
