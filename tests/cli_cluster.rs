//! End to end: `rrmq cluster` starts the nodes of a config, the CLI can use them, and
//! SIGTERM stops them all and exits 0; with `--secure` the cluster is keyed, and only the
//! printed command line (keyed config, admin key file) gets answers.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{rrmq, Run, CLI_LEADER_DEADLINE, RRMQ};
use rrmq::cli::launcher::write_config;

/// The launcher under test; on drop (a failed test) it is stopped, and its nodes with it.
struct Launcher {
    child: Child,
    node_pids: Vec<i32>,
    /// Its stdout, line by line.
    lines: mpsc::Receiver<String>,
    /// The lines read up to the leader's.
    seen: Vec<String>,
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

impl Launcher {
    /// Runs `rrmq --config CONFIG cluster --data-root DIR/data --fsync never EXTRA...` and
    /// reads its output up to the leader's line: "node I: pid N, ..." for each node, then
    /// "leader: node I at ...".
    fn start(dir: &Path, config: &Path, extra: &[&str]) -> Launcher {
        let mut child = Command::new(RRMQ)
            .arg("--config")
            .arg(config)
            .arg("cluster")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--fsync")
            .arg("never")
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rrmq cluster");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut launcher = Launcher {
            child,
            node_pids: Vec::new(),
            lines,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + CLI_LEADER_DEADLINE;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = launcher
                .lines
                .recv_timeout(remaining)
                .unwrap_or_else(|_| panic!("no leader line; output so far: {:#?}", launcher.seen));
            if let Some(pid) = line
                .split_once(": pid ")
                .and_then(|(_, rest)| rest.split(',').next())
                .and_then(|pid| pid.parse().ok())
            {
                launcher.node_pids.push(pid);
            }
            let leader = line.starts_with("leader: node ");
            launcher.seen.push(line);
            if leader {
                break;
            }
        }
        launcher
    }

    /// SIGTERM; asserts it exits 0 with every node gone and says "cluster stopped".
    fn stop(mut self) {
        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        let launcher_pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        unsafe {
            libc::kill(launcher_pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the launcher") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "rrmq cluster did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "rrmq cluster exit status");
        for &pid in &self.node_pids {
            assert!(!alive(pid), "node pid {pid} outlived the launcher");
        }
        // The reader thread ends at EOF, once the launcher and every node have exited.
        let mut rest = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            rest.push(line);
        }
        assert!(
            rest.iter().any(|line| line == "cluster stopped"),
            "{rest:#?}"
        );
    }
}

#[test]
fn rrmq_cluster_runs_a_usable_cluster_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (config, _) = write_config(dir.path(), "127.0.0.1", 3).expect("write the config");
    let launcher = Launcher::start(dir.path(), &config, &[]);
    assert_eq!(launcher.node_pids.len(), 3, "{:#?}", launcher.seen);

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
    launcher.stop();
}

/// The word after `flag` in `line`.
fn word_after<'a>(line: &'a str, flag: &str) -> &'a str {
    line.split_once(flag)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {flag} in {line:?}"))
}

#[test]
fn rrmq_cluster_secure_runs_a_keyed_cluster_that_only_the_printed_command_line_can_use() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (config, _) = write_config(dir.path(), "127.0.0.1", 3).expect("write the config");
    let config_arg = config.to_str().expect("a UTF-8 temp path");
    let launcher = Launcher::start(dir.path(), &config, &["--secure"]);
    assert_eq!(launcher.node_pids.len(), 3, "{:#?}", launcher.seen);
    let usage = launcher
        .seen
        .iter()
        .find(|line| line.starts_with("use it with: rrmq "))
        .unwrap_or_else(|| panic!("no command line printed: {:#?}", launcher.seen))
        .clone();
    let keyed_config = word_after(&usage, "--config ").to_string();
    let key_file = word_after(&usage, "--key-file ").to_string();
    let data = dir
        .path()
        .join("data")
        .canonicalize()
        .expect("the data root");
    for file in [&keyed_config, &key_file] {
        assert!(
            Path::new(file).starts_with(&data),
            "{file} is not in the data root"
        );
    }
    for index in 0..3 {
        let key = data.join(format!("node-{index}.key"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key)
            .expect("a node key file")
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600, "{}", key.display());
    }

    let keyed = |args: &[&str]| -> Run {
        let mut full = vec![
            "--config",
            &keyed_config,
            "--key-file",
            &key_file,
            "--timeout",
            "30s",
        ];
        full.extend_from_slice(args);
        rrmq(&full, b"", dir.path())
    };
    keyed(&["topic", "create", "jobs"]).assert_code(0, "create with the admin key");
    keyed(&["put", "jobs", "secret"]).assert_code(0, "put with the admin key");

    // Without the key (the plain config, or the keyed one without --key-file): no answer.
    for config in [config_arg, keyed_config.as_str()] {
        let run = rrmq(
            &["--config", config, "--timeout", "2s", "get", "jobs"],
            b"",
            dir.path(),
        );
        assert_eq!(
            run.code,
            Some(rrmq::cli::EXIT_UNAVAILABLE as i32),
            "a plain client was answered ({config}): {}",
            run.describe()
        );
    }

    // The message the plain clients could not take is still there.
    let run = keyed(&["get", "jobs"]);
    run.assert_code(0, "get with the admin key");
    assert_eq!(run.stdout, b"secret\n");
    keyed(&["put", "jobs", "kept"]).assert_code(0, "put before the restart");
    launcher.stop();

    // A second run reuses the keys (they are part of the cluster id), so the data is the
    // same cluster's: the message put before is still there.
    let launcher = Launcher::start(dir.path(), &config, &["--secure"]);
    assert!(
        launcher
            .seen
            .iter()
            .any(|line| line.starts_with("keyed:") && line.ends_with("(reused)")),
        "{:#?}",
        launcher.seen
    );
    let run = keyed(&["get", "jobs"]);
    run.assert_code(0, "get after the restart");
    assert_eq!(run.stdout, b"kept\n");
    launcher.stop();
}
