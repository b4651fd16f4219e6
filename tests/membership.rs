//! Membership changes at runtime with real nodes (PROTOCOL.md §12): a node started with
//! `--join` is added with `rrmq member add` (a learner, then a voter), keeps the data
//! written before and after, and is removed again with `rrmq member remove`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{rrmq, Cluster, Run, Wire, FAST_FLAGS, RRMQ_NODE};
use serde_json::{json, Value};

/// A node process outside the harness's cluster, killed on drop.
struct Extra(Child);

impl Drop for Extra {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rrmq --config CONFIG --timeout TIMEOUT ARGS...`, run in the cluster's directory.
fn rrmq_with(cluster: &Cluster, config: &str, timeout: &str, args: &[&str]) -> Run {
    let mut all = vec!["--config", config, "--timeout", timeout];
    all.extend_from_slice(args);
    rrmq(&all, b"", cluster.dir.path())
}

/// Writes `DIR/config-grown.json`: the cluster's config with one more address on fresh
/// ports; returns its path and the new node's index.
fn grown_config(cluster: &Cluster) -> (std::path::PathBuf, usize) {
    let text = std::fs::read_to_string(&cluster.config_path).expect("read the config");
    let mut config: Value = serde_json::from_str(&text).expect("JSON");
    let addresses = config["addresses"].as_array_mut().expect("addresses");
    let index = addresses.len();
    let listener = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port()
    };
    let (port, internal_port) = (listener(()), listener(()));
    addresses
        .push(serde_json::json!({"ip": "127.0.0.1", "port": port, "internal_port": internal_port}));
    let path = cluster.dir.path().join("config-grown.json");
    std::fs::write(&path, config.to_string()).expect("write the grown config");
    (path, index)
}

fn spawn_joining(cluster: &Cluster, config: &std::path::Path, index: usize) -> Extra {
    let log = std::fs::File::create(cluster.dir.path().join(format!("node-{index}.log")))
        .expect("log file");
    let child = Command::new(RRMQ_NODE)
        .arg(config)
        .arg(index.to_string())
        .arg("--join")
        .arg("--data-dir")
        .arg(cluster.dir.path().join(format!("node-{index}")))
        .args(FAST_FLAGS)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn rrmq-node --join");
    Extra(child)
}

/// `rrmq member list --json` through `config`, polled until `check` holds (60 s).
fn wait_for_members(
    cluster: &Cluster,
    config: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = rrmq_with(cluster, config, "5s", &["--json", "member", "list"]);
        if let Some(members) = serde_json::from_str::<Value>(&run.stdout_text())
            .ok()
            .and_then(|value| value["members"].as_array().cloned())
        {
            if check(&members) {
                return members;
            }
        }
        assert!(
            Instant::now() < deadline,
            "members never matched: {}",
            run.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn voters(members: &[Value]) -> Vec<u64> {
    members
        .iter()
        .filter(|member| member["voter"] == true)
        .filter_map(|member| member["id"].as_u64())
        .collect()
}

#[test]
fn a_joining_node_is_added_as_a_voter_catches_up_and_is_removed_again() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(30));
    cluster
        .rrmq(&["topic", "create", "t"])
        .assert_code(0, "topic create");
    cluster
        .rrmq(&["put", "t", "before"])
        .assert_code(0, "put before");

    let (grown, index) = grown_config(&cluster);
    let grown_text = grown.to_str().expect("UTF-8 path");
    let _joining = spawn_joining(&cluster, &grown, index);
    let index_text = index.to_string();
    let add = rrmq_with(&cluster, grown_text, "90s", &["member", "add", &index_text]);
    if add.code != Some(0) {
        cluster.dump_logs();
    }
    add.assert_code(0, "member add");
    let members = wait_for_members(&cluster, grown_text, |members| voters(members).len() == 4);
    assert_eq!(voters(&members), vec![0, 1, 2, 3]);

    // A second add while nothing is in progress of a used id is refused.
    let again = rrmq_with(&cluster, grown_text, "10s", &["member", "add", "1"]);
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
    let remove = rrmq_with(
        &cluster,
        grown_text,
        "60s",
        &["member", "remove", &index_text],
    );
    remove.assert_code(0, "member remove");
    let members = wait_for_members(&cluster, grown_text, |members| members.len() == 3);
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
    let config = cluster.config_path.to_str().expect("UTF-8 path");
    let leader_text = leader.to_string();
    let remove = rrmq_with(&cluster, config, "60s", &["member", "remove", &leader_text]);
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
    let grown_text = grown.to_str().expect("UTF-8 path");
    let index_text = index.to_string();
    let add = rrmq_with(&cluster, grown_text, "8s", &["member", "add", &index_text]);
    add.assert_code(4, "member add of a node that never runs times out");
    let other = rrmq_with(&cluster, grown_text, "8s", &["member", "remove", "1"]);
    other.assert_code(4, "a second change while the add is in progress");
    assert!(other.stderr.contains("in progress"), "{}", other.describe());
    let cancel = rrmq_with(
        &cluster,
        grown_text,
        "30s",
        &["member", "remove", &index_text],
    );
    cancel.assert_code(0, "a member DELETE of the learner cancels the add");
    let members = wait_for_members(&cluster, grown_text, |members| members.len() == 3);
    assert_eq!(voters(&members), vec![0, 1, 2]);
}

#[test]
fn a_cluster_restarted_after_a_change_uses_the_membership_from_its_log() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(30));
    let (grown, index) = grown_config(&cluster);
    let grown_text = grown.to_str().expect("UTF-8 path");
    let index_text = index.to_string();
    let joining = spawn_joining(&cluster, &grown, index);
    rrmq_with(&cluster, grown_text, "90s", &["member", "add", &index_text])
        .assert_code(0, "member add");
    // Everyone down, then up again: nodes 0-2 from the original config.json, which does
    // not list node 3.
    drop(joining);
    cluster.kill_all();
    for node in 0..3 {
        cluster.spawn(node);
    }
    let _restarted = spawn_joining(&cluster, &grown, index);
    let members = wait_for_members(&cluster, grown_text, |members| voters(members).len() == 4);
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
    let config = cluster.config_path.to_str().expect("UTF-8 path");
    let removed_text = removed.to_string();
    rrmq_with(
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
