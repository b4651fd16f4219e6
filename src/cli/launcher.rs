//! The local-cluster launcher: `rrmq-node` child processes on this machine, started from one
//! config and held by their handles. `rrmq cluster` runs an operator's config with it,
//! `rrmq bench --matrix` a freshly generated cluster per cell, and the end-to-end tests
//! their clusters, which also kill, pause and restart single nodes.
//!
//! Why one launcher: starting a node, watching it and stopping it without leaving orphans
//! has details (process groups, a parent-death signal, SIGCONT before SIGTERM for a paused
//! node, reaping) that must be right everywhere a cluster is started.
//!
//! What it owns: the children. Node INDEX runs as `rrmq-node CONFIG INDEX --data-dir
//! DATA_ROOT/node-INDEX` followed by the setup's flags and the spawn's own, its output either
//! the launcher's or appended to `LOG_DIR/node-INDEX.log`. Stopping sends SIGTERM, allows a
//! grace period, then SIGKILLs what is left; dropping a [`LocalCluster`] stops it, so an error
//! or a panic leaves no node behind. It also writes configs on free loopback ports, and
//! waits for a leader.
//!
//! What it must not do: print (the caller decides what an exit means and how to say it), or
//! restart a node on its own (a crashed node is news, not something to hide).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::CliError;
use crate::client::{Client, ClientOptions, NodeAddress};
use crate::config::ClusterConfig;
use crate::protocol::StatusReport;

/// How long stopped nodes get to exit after SIGTERM before they are killed. A node exits
/// within about a second (PROTOCOL.md §7); this leaves room for a loaded machine.
pub const STOP_GRACE_DEFAULT: Duration = Duration::from_secs(5);
/// How long one status round waits for a node while looking for the leader.
pub const STATUS_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often children are checked while waiting for one to exit.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Between status rounds: nothing to poll on until the nodes have elected.
const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A node's two ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePorts {
    /// Where it serves clients.
    pub port: u16,
    /// Where it talks to its peers.
    pub internal_port: u16,
}

impl NodePorts {
    /// Ports for `count` nodes, all distinct and free right now (see [`crate::transport::ports`]).
    pub fn free(count: usize) -> io::Result<Vec<NodePorts>> {
        let ports = crate::transport::ports::free_ports(count.saturating_mul(2))?;
        Ok(ports
            .chunks(2)
            .map(|pair| NodePorts {
                port: pair[0],
                internal_port: pair[1],
            })
            .collect())
    }
}

/// A cluster config (PROTOCOL.md §1) with every node on `host` (an IP, or a name that
/// resolves to this machine).
pub fn config_json(host: &str, ports: &[NodePorts]) -> String {
    let addresses: Vec<serde_json::Value> = ports
        .iter()
        .map(|ports| {
            serde_json::json!({"ip": host, "port": ports.port, "internal_port": ports.internal_port})
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "addresses": addresses }))
        .expect("plain values serialize")
        + "\n"
}

/// Writes `DIR/config.json` for `count` nodes on `host` and free loopback ports; returns
/// its path and the ports.
pub fn write_config(
    dir: &Path,
    host: &str,
    count: usize,
) -> Result<(PathBuf, Vec<NodePorts>), CliError> {
    let ports = NodePorts::free(count).map_err(CliError::io("cannot find a free loopback port"))?;
    let path = dir.join("config.json");
    std::fs::write(&path, config_json(host, &ports))
        .map_err(CliError::io(format!("{}: cannot write", path.display())))?;
    Ok((path, ports))
}

/// The node binary: `explicit`, or `rrmq-node` beside the running executable; an error if
/// there is no such file.
pub fn node_bin(explicit: Option<&Path>) -> Result<PathBuf, CliError> {
    let node_bin = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let exe =
                std::env::current_exe().map_err(CliError::io("cannot locate this executable"))?;
            let directory = exe.parent().ok_or_else(|| {
                CliError::Cluster(format!("{}: has no parent directory", exe.display()))
            })?;
            directory.join(format!("rrmq-node{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !node_bin.is_file() {
        return Err(CliError::Cluster(format!(
            "{}: node binary not found (use --node-bin PATH)",
            node_bin.display()
        )));
    }
    Ok(node_bin)
}

/// How the nodes of a [`LocalCluster`] are started and stopped.
#[derive(Clone, Debug)]
pub struct NodeSetup {
    /// The `rrmq-node` binary.
    pub node_bin: PathBuf,
    /// The cluster config every node is started with.
    pub config_path: PathBuf,
    /// Node INDEX keeps its data in `DATA_ROOT/node-INDEX`.
    pub data_root: PathBuf,
    /// Flags after `--data-dir`, for every node.
    pub flags: Vec<OsString>,
    /// Environment variables set for every node.
    pub env: Vec<(OsString, OsString)>,
    /// Where each node's stdout and stderr go: appended to `LOG_DIR/node-INDEX.log`, or, if
    /// `None`, the launcher's own.
    pub log_dir: Option<PathBuf>,
    /// Start each node in its own process group, so a terminal's Ctrl-C reaches only the
    /// launcher, which then stops the nodes in order; on Linux, also have the kernel send the
    /// node SIGTERM if the launcher dies without doing so (e.g. SIGKILL). Only for a
    /// launcher that spawns from one long-lived thread: the kernel sends that signal when the
    /// spawning *thread* ends.
    pub detach: bool,
    /// How long [`LocalCluster::stop`] waits between SIGTERM and SIGKILL; zero sends SIGKILL
    /// at once.
    pub stop_grace: Duration,
    /// Node INDEX is given `--key-file key_files[INDEX]` (a keyed cluster); empty: none.
    pub key_files: Vec<PathBuf>,
}

impl NodeSetup {
    /// No flags, no environment, the launcher's output, not detached,
    /// [`STOP_GRACE_DEFAULT`].
    pub fn new(node_bin: PathBuf, config_path: PathBuf, data_root: PathBuf) -> NodeSetup {
        NodeSetup {
            node_bin,
            config_path,
            data_root,
            flags: Vec::new(),
            env: Vec::new(),
            log_dir: None,
            detach: false,
            stop_grace: STOP_GRACE_DEFAULT,
            key_files: Vec::new(),
        }
    }

    /// Node `index`'s data dir.
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.data_root.join(format!("node-{index}"))
    }

    /// Node `index`'s log file, if the nodes write to log files.
    pub fn log_path(&self, index: usize) -> Option<PathBuf> {
        self.log_dir
            .as_ref()
            .map(|dir| dir.join(format!("node-{index}.log")))
    }
}

/// A node process that ended (or, in `status`, could not be waited for).
#[derive(Debug)]
pub struct NodeExit {
    pub index: usize,
    pub pid: u32,
    pub status: io::Result<ExitStatus>,
}

/// What [`LocalCluster::stop`] did.
#[derive(Debug, Default)]
pub struct StopReport {
    /// Every node that was running, with how it ended.
    pub exits: Vec<NodeExit>,
    /// Nodes that had to be killed after the grace period.
    pub killed: Vec<usize>,
}

/// One round of status requests to every node.
#[derive(Debug)]
pub struct StatusRound {
    /// A node that says it leads, with its status.
    pub leader: Option<(NodeAddress, StatusReport)>,
    /// Whether every node answered.
    pub all_answered: bool,
}

/// Asks every node of `client` for its status once.
pub fn status_round(client: &mut Client) -> StatusRound {
    let statuses = client.status_all();
    let all_answered = statuses.iter().all(|(_, status)| status.is_ok());
    let leader = statuses.into_iter().find_map(|(address, result)| {
        result
            .ok()
            .filter(|status| status.role == "Leader")
            .map(|status| (address, status))
    });
    StatusRound {
        leader,
        all_answered,
    }
}

/// One started node, until it is reaped.
#[derive(Debug)]
struct NodeProcess {
    child: Child,
    /// Paused with SIGSTOP (and not continued since).
    paused: bool,
}

/// The nodes of one config on this machine. Each slot holds a node's process from its spawn
/// until it is reaped (killed, stopped, or seen to have exited); then it may be spawned
/// again. Dropping it stops every node still running.
#[derive(Debug)]
pub struct LocalCluster {
    setup: NodeSetup,
    /// The nodes' client addresses, in config order.
    addresses: Vec<NodeAddress>,
    nodes: Vec<Option<NodeProcess>>,
}

impl LocalCluster {
    /// The nodes of `config` (the one at `setup.config_path`); none is started yet.
    pub fn new(setup: NodeSetup, config: &ClusterConfig) -> Result<LocalCluster, CliError> {
        let addresses = ClientOptions::from_config(config)
            .map_err(|error| {
                CliError::Cluster(format!("{}: {error}", setup.config_path.display()))
            })?
            .nodes;
        Ok(LocalCluster {
            nodes: addresses.iter().map(|_| None).collect(),
            addresses,
            setup,
        })
    }

    /// As [`LocalCluster::new`], reading the config from `setup.config_path`.
    pub fn load(setup: NodeSetup) -> Result<LocalCluster, CliError> {
        let config = ClusterConfig::load(&setup.config_path)?;
        LocalCluster::new(setup, &config)
    }

    pub fn setup(&self) -> &NodeSetup {
        &self.setup
    }

    /// The nodes' client addresses, in config order (a node's position is its id).
    pub fn addresses(&self) -> &[NodeAddress] {
        &self.addresses
    }

    /// Nodes in the config.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Spawns every node, in index order.
    pub fn start_all(&mut self) -> Result<(), CliError> {
        for index in 0..self.size() {
            self.spawn(index, &[])?;
        }
        Ok(())
    }

    /// Starts node `index` (again), with `flags` after the setup's own; returns its pid. An
    /// error if it still runs.
    pub fn spawn(&mut self, index: usize, flags: &[&str]) -> Result<u32, CliError> {
        let size = self.size();
        let slot = self.nodes.get_mut(index).ok_or_else(|| {
            CliError::Cluster(format!("node {index}: the config has {size} nodes"))
        })?;
        if slot.is_some() {
            return Err(CliError::Cluster(format!(
                "node {index} is already running"
            )));
        }
        let setup = &self.setup;
        let mut command = Command::new(&setup.node_bin);
        command
            .arg(&setup.config_path)
            .arg(index.to_string())
            .arg("--data-dir")
            .arg(setup.data_dir(index));
        if let Some(key_file) = setup.key_files.get(index) {
            command.arg("--key-file").arg(key_file);
        }
        command
            .args(&setup.flags)
            .args(flags)
            .envs(setup.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null());
        if let Some(log_path) = setup.log_path(index) {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(CliError::io(format!("{}: cannot open", log_path.display())))?;
            let log_too = log
                .try_clone()
                .map_err(CliError::io(format!("{}: cannot open", log_path.display())))?;
            command.stdout(log).stderr(log_too);
        }
        if setup.detach {
            detach_from_terminal_signals(&mut command);
        }
        let child = command.spawn().map_err(CliError::io(format!(
            "cannot start node {index} ({})",
            setup.node_bin.display()
        )))?;
        let pid = child.id();
        *slot = Some(NodeProcess {
            child,
            paused: false,
        });
        Ok(pid)
    }

    /// Node `index`'s pid, if it has been spawned and not reaped.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.process(index).map(|node| node.child.id())
    }

    /// The pids of the nodes not reaped, in index order.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .flatten()
            .map(|node| node.child.id())
            .collect()
    }

    /// Whether node `index` has been spawned, not reaped, and not paused.
    pub fn is_running(&self, index: usize) -> bool {
        self.process(index).is_some_and(|node| !node.paused)
    }

    /// Whether node `index`'s process exists and has not exited (paused or not).
    pub fn is_alive(&mut self, index: usize) -> bool {
        self.nodes
            .get_mut(index)
            .and_then(Option::as_mut)
            .is_some_and(|node| matches!(node.child.try_wait(), Ok(None)))
    }

    /// Node `index`'s exit status if its process has exited, leaving it to be reaped.
    pub fn exited(&mut self, index: usize) -> Option<ExitStatus> {
        let node = self.nodes.get_mut(index)?.as_mut()?;
        node.child.try_wait().ok().flatten()
    }

    /// Reaps node `index` if its process has exited: its status, once.
    pub fn reap(&mut self, index: usize) -> Option<ExitStatus> {
        let slot = self.nodes.get_mut(index)?;
        let status = slot.as_mut()?.child.try_wait().ok().flatten()?;
        *slot = None;
        Some(status)
    }

    /// Reaps every node that has exited by itself since the last look; a node that cannot be
    /// waited for is reported with the error and kept.
    pub fn reap_exited(&mut self) -> Vec<NodeExit> {
        let mut exits = Vec::new();
        for (index, slot) in self.nodes.iter_mut().enumerate() {
            let Some(node) = slot else { continue };
            let pid = node.child.id();
            let status = match node.child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => {
                    *slot = None;
                    Ok(status)
                }
                Err(error) => Err(error),
            };
            exits.push(NodeExit { index, pid, status });
        }
        exits
    }

    /// Nodes spawned and not reaped.
    pub fn unreaped_count(&self) -> usize {
        self.nodes.iter().flatten().count()
    }

    /// Waits up to `within` for node `index` to exit by itself and reaps it; `None` if it
    /// was not running or is still running.
    pub fn wait_exit(&mut self, index: usize, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            self.process(index)?;
            if let Some(status) = self.reap(index) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(EXIT_POLL_INTERVAL);
        }
    }

    /// Sends `signal` to node `index`, remembering SIGSTOP and SIGCONT for
    /// [`LocalCluster::is_running`] and for stopping.
    pub fn signal(&mut self, index: usize, signal: libc::c_int) -> io::Result<()> {
        let node = self
            .nodes
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or_else(|| io::Error::other(format!("node {index} is not running")))?;
        send_signal(&node.child, signal)?;
        if signal == libc::SIGSTOP {
            node.paused = true;
        } else if signal == libc::SIGCONT {
            node.paused = false;
        }
        Ok(())
    }

    /// SIGKILL for node `index` (paused or not), and reaps it; nothing if it is not running.
    pub fn kill(&mut self, index: usize) -> Option<ExitStatus> {
        let mut node = self.nodes.get_mut(index)?.take()?;
        let _ = node.child.kill();
        node.child.wait().ok()
    }

    /// Stops every node: SIGCONT for paused ones, SIGTERM, up to `stop_grace` to exit, then
    /// SIGKILL for what is left (at once if the grace is zero). Reaps all.
    pub fn stop(&mut self) -> StopReport {
        let grace = self.setup.stop_grace;
        let mut report = StopReport::default();
        if !grace.is_zero() {
            for node in self.nodes.iter_mut().flatten() {
                if node.paused {
                    let _ = send_signal(&node.child, libc::SIGCONT);
                    node.paused = false;
                }
                let _ = send_signal(&node.child, libc::SIGTERM);
            }
            let grace_until = Instant::now() + grace;
            loop {
                let mut running = 0;
                for (index, slot) in self.nodes.iter_mut().enumerate() {
                    let Some(node) = slot else { continue };
                    match node.child.try_wait() {
                        Ok(Some(status)) => {
                            report.exits.push(NodeExit {
                                index,
                                pid: node.child.id(),
                                status: Ok(status),
                            });
                            *slot = None;
                        }
                        // Err: cannot be waited for; it is killed below.
                        Ok(None) | Err(_) => running += 1,
                    }
                }
                if running == 0 || Instant::now() >= grace_until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (index, slot) in self.nodes.iter_mut().enumerate() {
            let Some(mut node) = slot.take() else {
                continue;
            };
            report.killed.push(index);
            let _ = node.child.kill();
            report.exits.push(NodeExit {
                index,
                pid: node.child.id(),
                status: node.child.wait(),
            });
        }
        report.exits.sort_by_key(|exit| exit.index);
        report
    }

    /// Polls status until every node answers and one says it leads. A node that exits
    /// meanwhile is an error, and so is no leader within `within`.
    pub fn wait_for_leader(&mut self, within: Duration) -> Result<(), CliError> {
        let mut options = ClientOptions::new(self.addresses.clone());
        options.attempt_timeout = STATUS_ATTEMPT_TIMEOUT;
        options.deadline = STATUS_ATTEMPT_TIMEOUT;
        let mut client = Client::connect(options)?;
        let until = Instant::now() + within;
        let logs = self
            .setup
            .log_dir
            .clone()
            .unwrap_or_else(|| self.setup.data_root.clone());
        loop {
            if let Some(exit) = self.reap_exited().into_iter().next() {
                let status = match &exit.status {
                    Ok(status) => status.to_string(),
                    Err(error) => format!("an unknown status ({error})"),
                };
                let log = self
                    .setup
                    .log_path(exit.index)
                    .unwrap_or_else(|| logs.clone());
                return Err(CliError::Cluster(format!(
                    "node {} exited at startup with {status} (see {})",
                    exit.index,
                    log.display()
                )));
            }
            let round = status_round(&mut client);
            if round.all_answered && round.leader.is_some() {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(CliError::Cluster(format!(
                    "no leader within {within:?} (logs in {})",
                    logs.display()
                )));
            }
            std::thread::sleep(LEADER_POLL_INTERVAL);
        }
    }

    fn process(&self, index: usize) -> Option<&NodeProcess> {
        self.nodes.get(index).and_then(Option::as_ref)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.unreaped_count() > 0 {
            self.stop();
        }
    }
}

fn send_signal(child: &Child, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: kill has no memory effects; the pid is our own unreaped child, so it cannot
    // have been reused by another process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// See [`NodeSetup::detach`].
fn detach_from_terminal_signals(command: &mut Command) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_load_with_distinct_ports() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, ports) = write_config(dir.path(), "127.0.0.1", 3).expect("write");
        let config = ClusterConfig::load(&path).expect("a valid config");
        assert_eq!(config.addresses.len(), 3);
        for (address, ports) in config.addresses.iter().zip(&ports) {
            assert_eq!(address.ip, "127.0.0.1");
            assert_eq!(
                (address.port, address.internal_port),
                (ports.port, ports.internal_port)
            );
        }
        let setup = NodeSetup::new("rrmq-node".into(), path, dir.path().to_path_buf());
        let cluster = LocalCluster::new(setup, &config).expect("addresses");
        assert_eq!(cluster.size(), 3);
        assert_eq!(
            cluster.addresses()[2].to_string(),
            format!("127.0.0.1:{}", ports[2].port)
        );
        assert_eq!(cluster.setup().data_dir(1), dir.path().join("node-1"));
        assert_eq!(cluster.setup().log_path(1), None);
        assert_eq!(cluster.pids(), Vec::<u32>::new());
    }

    #[test]
    fn a_cluster_stops_children_paused_or_not_and_reports_how_they_ended() {
        // A script that ignores the node's arguments and sleeps stands in for rrmq-node.
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, _) = write_config(dir.path(), "127.0.0.1", 3).expect("write");
        let script = dir.path().join("node.sh");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").expect("write");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let mut setup = NodeSetup::new(script, path, dir.path().to_path_buf());
        setup.log_dir = Some(dir.path().to_path_buf());
        setup.stop_grace = Duration::from_secs(5);
        let mut cluster = LocalCluster::load(setup).expect("config");
        cluster.start_all().expect("spawn");
        assert_eq!(cluster.pids().len(), 3);
        assert!(cluster.spawn(0, &[]).is_err(), "node 0 runs already");
        cluster.signal(1, libc::SIGSTOP).expect("pause");
        assert!(!cluster.is_running(1));
        assert!(cluster.is_alive(1));
        assert!(cluster.kill(2).is_some());
        assert_eq!(cluster.pid(2), None);
        assert_eq!(cluster.wait_exit(2, Duration::ZERO), None);
        let report = cluster.stop();
        assert_eq!(report.killed, Vec::<usize>::new(), "SIGTERM ends sleep");
        let stopped: Vec<usize> = report.exits.iter().map(|exit| exit.index).collect();
        assert_eq!(stopped, vec![0, 1]);
        assert_eq!(cluster.unreaped_count(), 0);
    }
}
