//! End to end: `rrmq cluster` starts the nodes of a config, the CLI can use them, and
//! SIGTERM stops them all and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{rrmq, CLI_LEADER_DEADLINE, RRMQ};
use rrmq::cli::launcher::write_config;

/// The launcher under test; on drop (a failed test) it is stopped, and its nodes with it.
struct Launcher {
    child: Child,
    node_pids: Vec<i32>,
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for &pid in &self.node_pids {
            // SAFETY: kill has no memory effects. These pids were our grandchildren a moment
            // ago; this only runs when the test failed before they were reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn rrmq_cluster_runs_a_usable_cluster_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (config, _) = write_config(dir.path(), "127.0.0.1", 3).expect("write the config");
    let mut child = Command::new(RRMQ)
        .arg("--config")
        .arg(&config)
        .arg("cluster")
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--fsync")
        .arg("never")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rrmq cluster");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut launcher = Launcher {
        child,
        node_pids: Vec::new(),
    };
    let (lines_sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });

    // "node I: pid N, ..." for each node, then "leader: node I at ...".
    let deadline = Instant::now() + CLI_LEADER_DEADLINE;
    let mut seen = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("no leader line; output so far: {seen:#?}"));
        if let Some(pid) = line
            .split_once(": pid ")
            .and_then(|(_, rest)| rest.split(',').next())
            .and_then(|pid| pid.parse().ok())
        {
            launcher.node_pids.push(pid);
        }
        let leader = line.starts_with("leader: node ");
        seen.push(line);
        if leader {
            break;
        }
    }
    assert_eq!(launcher.node_pids.len(), 3, "{seen:#?}");

    let config_arg = config.to_str().expect("a UTF-8 temp path");
    let cli = |args: &[&str]| {
        let mut full = vec!["--config", config_arg, "--timeout", "30s"];
        full.extend_from_slice(args);
        rrmq(&full, b"", dir.path())
    };
    cli(&["topic", "create", "jobs"]).assert_code(0, "create");
    cli(&["put", "jobs", "first"]).assert_code(0, "put");
    let run = cli(&["get", "jobs"]);
    run.assert_code(0, "get");
    assert_eq!(run.stdout, b"first\n");

    // SAFETY: kill has no memory effects; the pid is our unreaped child.
    let launcher_pid = i32::try_from(launcher.child.id()).expect("a pid fits in i32");
    unsafe {
        libc::kill(launcher_pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = launcher.child.try_wait().expect("wait for the launcher") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "rrmq cluster did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "rrmq cluster exit status");
    for &pid in &launcher.node_pids {
        assert!(!alive(pid), "node pid {pid} outlived the launcher");
    }
    // The reader thread ends at EOF, once the launcher and every node have exited.
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|line| line == "cluster stopped"),
        "{rest:#?}"
    );
}
