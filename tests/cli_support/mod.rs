//! Shared by the `tests/cli_*.rs` end-to-end tests: a config on free loopback ports in a
//! temp dir, `rrmq-node` children that are killed and reaped on drop, and helpers that run
//! the `rrmq` binary. Everything waits by polling with generous deadlines: the tests run on
//! loaded 2-core machines.

#![allow(dead_code)] // Each test file uses its own subset.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect its first leader on a loaded machine.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(60);

pub const RRMQ: &str = env!("CARGO_BIN_EXE_rrmq");
pub const RRMQ_NODE: &str = env!("CARGO_BIN_EXE_rrmq-node");

/// `count` distinct free TCP ports on 127.0.0.1: all are held open together while asking,
/// so they differ; another process may still take one before the node binds it (rare).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("a bound address").port())
        .collect()
}

/// Writes a config of `nodes` loopback nodes into `dir` and returns its path and the
/// client ports.
pub fn write_config(dir: &Path, nodes: usize) -> (PathBuf, Vec<u16>) {
    let ports = free_ports(nodes * 2);
    let addresses: Vec<String> = ports
        .chunks(2)
        .map(|pair| {
            format!(
                r#"{{"ip": "127.0.0.1", "port": {}, "internal_port": {}}}"#,
                pair[0], pair[1]
            )
        })
        .collect();
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        format!("{{\"addresses\": [\n  {}\n]}}\n", addresses.join(",\n  ")),
    )
    .expect("write the config");
    (path, ports.chunks(2).map(|pair| pair[0]).collect())
}

/// One `rrmq` invocation's result, with the exit code unwrapped (`None`: killed by a signal).
pub struct Run {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {}", self.describe()))
    }

    /// For failure messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}, stdout {:?}, stderr {:?}",
            self.code,
            self.stdout_text(),
            self.stderr
        )
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32, what: &str) -> &Run {
        assert_eq!(self.code, Some(code), "{what}: {}", self.describe());
        self
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `rrmq ARGS` with `stdin` and waits for it. `rrmq` bounds itself with `--timeout`,
/// which every caller passes (or relies on the default of 10s).
pub fn rrmq(args: &[&str], stdin: &[u8], current_dir: &Path) -> Run {
    let mut child = Command::new(RRMQ)
        .args(args)
        .current_dir(current_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rrmq");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("write rrmq's stdin");
    drop(input);
    child.wait_with_output().expect("wait for rrmq").into()
}

/// A cluster of `rrmq-node` children on loopback, in its own temp dir.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
}

impl TestCluster {
    pub fn start(count: usize) -> TestCluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (config, ports) = write_config(dir.path(), count);
        let mut cluster = TestCluster {
            dir,
            config,
            ports,
            nodes: Vec::new(),
        };
        for index in 0..count {
            let child = cluster.spawn_node(index);
            cluster.nodes.push(Some(child));
        }
        cluster
    }

    fn spawn_node(&self, index: usize) -> Child {
        let log = std::fs::File::create(self.log_path(index)).expect("create a node log");
        Command::new(RRMQ_NODE)
            .arg(&self.config)
            .arg(index.to_string())
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{index}")))
            .arg("--fsync")
            .arg("never")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn rrmq-node")
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("node-{index}.log"))
    }

    /// `rrmq --config CONFIG ARGS`.
    pub fn rrmq(&self, args: &[&str]) -> Run {
        self.rrmq_with_stdin(args, b"")
    }

    pub fn rrmq_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let config = self.config.to_str().expect("a UTF-8 temp path");
        let mut full = vec!["--config", config, "--timeout", "30s"];
        full.extend_from_slice(args);
        rrmq(&full, stdin, self.dir.path())
    }

    /// Polls `rrmq status --json` until exactly one node says it leads; returns its id.
    pub fn wait_for_leader(&self) -> u64 {
        wait_for_leader(&self.config, self.dir.path())
    }

    /// Kills one node (SIGKILL) and reaps it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            for index in 0..self.nodes.len() {
                let log = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
                eprintln!("---- node {index} log ----\n{log}");
            }
        }
    }
}

/// Polls `rrmq --config CONFIG status --json` until exactly one node says it leads.
pub fn wait_for_leader(config: &Path, current_dir: &Path) -> u64 {
    let config = config.to_str().expect("a UTF-8 temp path");
    let deadline = Instant::now() + LEADER_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let run = rrmq(
            &["--config", config, "--timeout", "2s", "--json", "status"],
            b"",
            current_dir,
        );
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&run.stdout) {
            let leaders: Vec<u64> = value["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|node| node["role"] == "Leader")
                .filter_map(|node| node["id"].as_u64())
                .collect();
            if let [leader] = leaders.as_slice() {
                return *leader;
            }
        }
        last = run.describe();
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no single leader within {LEADER_DEADLINE:?}; last status: {last}");
}
