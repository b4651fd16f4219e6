//! `rrmq cluster`: runs every node of a config on this machine, as child processes of
//! `rrmq-node`, until Ctrl-C or SIGTERM. For trying rrmq out and for demos; a real
//! deployment runs one `rrmq-node` per machine under its own supervisor.
//!
//! What it owns: the children. It starts them (each in its own process group, so a Ctrl-C in
//! the terminal reaches the launcher alone and the nodes are stopped in order; and, on Linux,
//! with a parent-death signal, so they do not outlive a launcher that was killed), reports
//! where they listen and which one was elected, says on stderr when one dies unexpectedly,
//! and on a stop signal sends SIGTERM to each, waits for them with a deadline, then SIGKILLs
//! what is left.
//!
//! What it must not do: restart nodes on its own (a crashed node is news for the operator,
//! not something to hide), or exit while a child it started is still running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{parse_duration, CliError};
use crate::client::{Client, ClientOptions};
use crate::config::{ClusterConfig, FsyncMode};

/// How long stopped nodes get to exit after SIGTERM before they are killed. A node exits
/// within about a second (PROTOCOL.md §7); this leaves room for a loaded machine.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the launcher looks at its children and at the stop flag.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How long one status round waits for a node while looking for the leader.
const STATUS_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The node binary [default: rrmq-node next to this rrmq]
    #[arg(long, value_name = "PATH")]
    pub node_bin: Option<PathBuf>,
    /// Where the nodes keep their data, one directory each: DIR/node-INDEX
    #[arg(long, value_name = "DIR", default_value = "data")]
    pub data_root: PathBuf,
    /// Passed to every node: fsync before acknowledging (always) or leave it to the OS (never)
    #[arg(long, value_enum)]
    pub fsync: Option<FsyncMode>,
    /// How long to wait for the first leader before saying there is none yet
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub leader_wait: Duration,
}

/// One started node.
struct NodeProcess {
    index: usize,
    child: Child,
    /// Set once the child has been reaped.
    exit: Option<ExitStatus>,
}

/// The started nodes. Dropping it stops them, so an error while starting (or a panic) does
/// not leave orphans behind.
struct Fleet {
    nodes: Vec<NodeProcess>,
}

pub(super) fn run(
    config_path: &Path,
    args: &ClusterArgs,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let config = ClusterConfig::load(config_path)?;
    let node_bin = match &args.node_bin {
        Some(path) => path.clone(),
        None => default_node_bin()?,
    };
    if !node_bin.is_file() {
        return Err(CliError::Cluster(format!(
            "{}: node binary not found (use --node-bin PATH)",
            node_bin.display()
        )));
    }

    // Before any child exists: a signal from now on stops the cluster in order.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(CliError::io("cannot install the signal handler"))?;
    }

    let print = |stdout: &mut dyn Write, line: String| {
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(CliError::io("cannot write to stdout"))
    };

    let mut fleet = Fleet { nodes: Vec::new() };
    for (index, address) in config.addresses.iter().enumerate() {
        let data_dir = args.data_root.join(format!("node-{index}"));
        std::fs::create_dir_all(&data_dir).map_err(CliError::io(format!(
            "{}: cannot create",
            data_dir.display()
        )))?;
        let mut command = Command::new(&node_bin);
        command
            .arg(config_path)
            .arg(index.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null());
        if let Some(fsync) = args.fsync {
            command.arg("--fsync").arg(fsync.as_str());
        }
        detach_from_terminal_signals(&mut command);
        let child = command.spawn().map_err(CliError::io(format!(
            "cannot start node {index} ({})",
            node_bin.display()
        )))?;
        print(
            stdout,
            format!(
                "node {index}: pid {}, clients {}, peers {}, data {}",
                child.id(),
                address.client_endpoint(),
                address.internal_endpoint(),
                data_dir.display()
            ),
        )?;
        fleet.nodes.push(NodeProcess {
            index,
            child,
            exit: None,
        });
    }

    let mut options = ClientOptions::from_config(&config)
        .map_err(|error| CliError::Cluster(format!("{}: {error}", config_path.display())))?;
    options.attempt_timeout = STATUS_ATTEMPT_TIMEOUT;
    options.deadline = STATUS_ATTEMPT_TIMEOUT;
    let mut client = Client::connect(options)?;
    let waiting_until = Instant::now() + args.leader_wait;
    let mut leader_announced = false;
    while !stop.load(Ordering::SeqCst) {
        if fleet.reap_unexpected() == 0 {
            return Err(CliError::Cluster("every node has exited".to_string()));
        }
        let leader = client
            .status_all()
            .into_iter()
            .find_map(|(address, result)| {
                result
                    .ok()
                    .filter(|status| status.role == "Leader")
                    .map(|status| (address, status))
            });
        if let Some((address, status)) = leader {
            print(
                stdout,
                format!(
                    "leader: node {} at {address} (term {})",
                    status.id, status.term
                ),
            )?;
            leader_announced = true;
            break;
        }
        if Instant::now() >= waiting_until {
            eprintln!(
                "rrmq cluster: no leader elected after {:.1?}; still running",
                args.leader_wait
            );
            break;
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
    drop(client);
    if !stop.load(Ordering::SeqCst) {
        print(
            stdout,
            format!(
                "cluster running{}; Ctrl-C or SIGTERM stops it",
                if leader_announced {
                    ""
                } else {
                    " (no leader yet)"
                }
            ),
        )?;
    }

    while !stop.load(Ordering::SeqCst) {
        if fleet.reap_unexpected() == 0 {
            return Err(CliError::Cluster("every node has exited".to_string()));
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
    let stopped = fleet.stop();
    let _ = print(stdout, stopped);
    Ok(())
}

/// `rrmq-node` in the directory of the running `rrmq`.
pub(super) fn default_node_bin() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(CliError::io("cannot locate this executable"))?;
    let directory = exe
        .parent()
        .ok_or_else(|| CliError::Cluster(format!("{}: has no parent directory", exe.display())))?;
    Ok(directory.join(format!("rrmq-node{}", std::env::consts::EXE_SUFFIX)))
}

/// Puts the child in its own process group, so a terminal's Ctrl-C reaches only the
/// launcher, which then stops the nodes in order; on Linux, also asks the kernel to send the
/// child SIGTERM if the launcher dies without doing so (e.g. SIGKILL).
pub(super) fn detach_from_terminal_signals(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid); it allocates nothing.
        let launcher = std::process::id() as libc::pid_t;
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The launcher may have died between fork and prctl.
                if libc::getppid() != launcher {
                    return Err(std::io::Error::other("the launcher has exited"));
                }
                Ok(())
            });
        }
    }
}

impl Fleet {
    /// Reaps children that exited on their own, saying so on stderr. Returns how many still
    /// run.
    fn reap_unexpected(&mut self) -> usize {
        for node in &mut self.nodes {
            if node.exit.is_some() {
                continue;
            }
            match node.child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!(
                        "rrmq cluster: node {} (pid {}) exited unexpectedly: {status}",
                        node.index,
                        node.child.id()
                    );
                    node.exit = Some(status);
                }
                Ok(None) => {}
                Err(error) => eprintln!(
                    "rrmq cluster: cannot check node {} (pid {}): {error}",
                    node.index,
                    node.child.id()
                ),
            }
        }
        self.nodes.iter().filter(|node| node.exit.is_none()).count()
    }

    /// SIGTERM to every running child, a grace period, then SIGKILL for what is left; reaps
    /// all. Returns a one-line summary.
    fn stop(&mut self) -> String {
        for node in self.nodes.iter().filter(|node| node.exit.is_none()) {
            signal(&node.child, libc::SIGTERM);
        }
        let grace_until = Instant::now() + STOP_GRACE;
        loop {
            let mut running = 0;
            for node in self.nodes.iter_mut().filter(|node| node.exit.is_none()) {
                match node.child.try_wait() {
                    Ok(Some(status)) => node.exit = Some(status),
                    Ok(None) => running += 1,
                    // Cannot be waited for: nothing more to do with it here.
                    Err(_) => running += 1,
                }
            }
            if running == 0 || Instant::now() >= grace_until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut killed = Vec::new();
        for node in self.nodes.iter_mut().filter(|node| node.exit.is_none()) {
            killed.push(node.index.to_string());
            let _ = node.child.kill();
            node.exit = node.child.wait().ok();
        }
        for node in &self.nodes {
            if let Some(status) = node.exit.filter(|status| !status.success()) {
                eprintln!(
                    "rrmq cluster: node {} (pid {}) stopped with {status}",
                    node.index,
                    node.child.id()
                );
            }
        }
        if killed.is_empty() {
            "cluster stopped".to_string()
        } else {
            eprintln!(
                "rrmq cluster: killed node(s) {} after {:.1?} without exiting",
                killed.join(", "),
                STOP_GRACE
            );
            "cluster stopped (some nodes had to be killed)".to_string()
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if self.nodes.iter().any(|node| node.exit.is_none()) {
            self.stop();
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill has no memory effects; the pid is our own unreaped child, so it cannot
    // have been reused by another process.
    unsafe {
        libc::kill(pid, signal);
    }
}
