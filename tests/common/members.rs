//! Helpers for the membership tests (`tests/membership.rs`, `tests/membership_keyed.rs`,
//! `tests/hostile_membership.rs`): a node started outside the harness's cluster with
//! `--join`, the `rrmq` command against a grown config, and polls on the member list, the
//! node logs and a node's progress. One copy, so the keyed and unkeyed tests drive their
//! nodes the same way.
//!
//! Included by path (`#[path = "common/members.rs"] mod members;`) next to `mod common;`.
#![allow(dead_code)]

use crate::common::{rrmq, Cluster, Run, FAST_FLAGS, RRMQ_NODE};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node process outside the harness's cluster, killed on drop.
pub struct Extra(pub Child);

impl Drop for Extra {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rrmq-node CONFIG INDEX --join [--key-file KEY_FILE]`, data in `DIR/node-INDEX`, its log
/// in `DIR/node-INDEX.log`.
pub fn spawn_joining(
    cluster: &Cluster,
    config: &Path,
    index: usize,
    key_file: Option<&Path>,
) -> Extra {
    let log = std::fs::File::create(cluster.dir.path().join(format!("node-{index}.log")))
        .expect("log file");
    let mut command = Command::new(RRMQ_NODE);
    command.arg(config).arg(index.to_string()).arg("--join");
    if let Some(key_file) = key_file {
        command.arg("--key-file").arg(key_file);
    }
    let child = command
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

/// `rrmq --config CONFIG --timeout TIMEOUT [--key-file HARNESS] ARGS...` in the cluster's
/// directory; with the harness's admin client key when the cluster lists clients.
pub fn cli(cluster: &Cluster, config: &Path, timeout: &str, args: &[&str]) -> Run {
    let key_file = cluster.client_key_file("harness");
    let mut all = vec![
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--timeout",
        timeout,
    ];
    if !cluster.client_keys.is_empty() {
        all.extend(["--key-file", key_file.to_str().expect("UTF-8 path")]);
    }
    all.extend_from_slice(args);
    rrmq(&all, b"", cluster.dir.path())
}

/// `cli` that must exit 0; dumps the logs first if not.
pub fn cli_ok(cluster: &Cluster, config: &Path, timeout: &str, args: &[&str]) -> Run {
    let run = cli(cluster, config, timeout, args);
    if run.code != Some(0) {
        cluster.dump_logs();
    }
    run.assert_code(0, &args.join(" "));
    run
}

/// `rrmq member add INDEX` through `config` (90 s), which must succeed.
pub fn member_add(cluster: &Cluster, config: &Path, index: usize) {
    cli_ok(
        cluster,
        config,
        "90s",
        &["member", "add", &index.to_string()],
    );
}

/// `rrmq member remove ID` through `config` (60 s), which must succeed.
pub fn member_remove(cluster: &Cluster, config: &Path, id: usize) {
    cli_ok(
        cluster,
        config,
        "60s",
        &["member", "remove", &id.to_string()],
    );
}

/// `rrmq member list --json` through `config`, polled until `check` holds (60 s).
pub fn wait_for_members(
    cluster: &Cluster,
    config: &Path,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = cli(cluster, config, "5s", &["--json", "member", "list"]);
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

/// The ids of the voters in a member list.
pub fn voters(members: &[Value]) -> Vec<u64> {
    members
        .iter()
        .filter(|member| member["voter"] == true)
        .filter_map(|member| member["id"].as_u64())
        .collect()
}

/// The text of the log `DIR/node-INDEX.log` (harness nodes and extras alike).
pub fn log_text(cluster: &Cluster, index: usize) -> String {
    std::fs::read_to_string(cluster.dir.path().join(format!("node-{index}.log")))
        .unwrap_or_default()
}

/// Polls the logs of `nodes` until one contains every one of `needles` on one line (60 s).
pub fn wait_for_log_line(cluster: &Cluster, nodes: &[usize], needles: &[&str]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let found = nodes.iter().any(|node| {
            log_text(cluster, *node)
                .lines()
                .any(|line| needles.iter().all(|needle| line.contains(needle)))
        });
        if found {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The client port in `config` of node `index`.
pub fn client_port(config: &Path, index: usize) -> u16 {
    let text = std::fs::read_to_string(config).expect("read the config");
    let config: Value = serde_json::from_str(&text).expect("JSON");
    let port = config["addresses"][index]["port"].as_u64().expect("a port");
    u16::try_from(port).expect("a port")
}

/// Polls harness node `node` until it has applied `commit` (60 s); dumps the logs and
/// panics if it never does.
pub fn wait_for_applied(cluster: &Cluster, node: usize, commit: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = cluster
            .status(node, Duration::from_secs(1))
            .and_then(|status| status["last_applied"].as_u64());
        if applied.is_some_and(|applied| applied >= commit) {
            break;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("node {node} never caught up to {commit} (applied: {applied:?})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
