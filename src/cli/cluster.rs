//! `rrmq cluster`: runs every node of a config on this machine, as child processes of
//! `rrmq-node`, until Ctrl-C or SIGTERM. For trying rrmq out and for demos; a real
//! deployment runs one `rrmq-node` per machine under its own supervisor.
//!
//! What it owns: the operator's view of a [`LocalCluster`] (the launcher starts, watches and
//! stops the children, detached from the terminal's signals): where each node listens,
//! which one was elected, a line on stderr when one dies unexpectedly, and on a stop signal
//! an orderly stop (SIGTERM, a grace period, SIGKILL for what is left) with a summary.
//!
//! What it must not do: restart nodes on its own (a crashed node is news for the operator,
//! not something to hide), or exit while a child it started is still running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::launcher::{self, LocalCluster, NodeExit, NodeSetup, STATUS_ATTEMPT_TIMEOUT};
use super::{parse_duration, CliError};
use crate::client::{Client, ClientOptions};
use crate::config::{ClusterConfig, FsyncMode};

/// How often the launcher looks at its children and at the stop flag.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

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

pub(super) fn run(
    config_path: &Path,
    args: &ClusterArgs,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let config = ClusterConfig::load(config_path)?;
    let node_bin = launcher::node_bin(args.node_bin.as_deref())?;

    // Before any child exists: a signal from now on stops the cluster in order.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(CliError::io("cannot install the signal handler"))?;
    }

    let mut setup = NodeSetup::new(node_bin, config_path.to_path_buf(), args.data_root.clone());
    setup.detach = true;
    if let Some(fsync) = args.fsync {
        setup.flags = vec!["--fsync".into(), fsync.as_str().into()];
    }
    let mut cluster = LocalCluster::new(setup, &config)?;
    // Exits seen while running, reported again (if they failed) when the cluster stops.
    let mut exits = Vec::new();
    let watched = start_and_watch(&mut cluster, &config, args, &stop, stdout, &mut exits);
    // Also on an error: no child outlives the launcher.
    let stopped = (cluster.unreaped_count() > 0).then(|| stop_and_report(&mut cluster, exits));
    watched?;
    if let Some(stopped) = stopped {
        let _ = print(stdout, stopped);
    }
    Ok(())
}

fn print(stdout: &mut dyn Write, line: String) -> Result<(), CliError> {
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(CliError::io("cannot write to stdout"))
}

/// Starts the nodes, announces them and the first leader, then watches them until the stop
/// flag is set. An error if every node has exited.
fn start_and_watch(
    cluster: &mut LocalCluster,
    config: &ClusterConfig,
    args: &ClusterArgs,
    stop: &AtomicBool,
    stdout: &mut dyn Write,
    exits: &mut Vec<NodeExit>,
) -> Result<(), CliError> {
    for index in 0..cluster.size() {
        let data_dir = cluster.setup().data_dir(index);
        std::fs::create_dir_all(&data_dir).map_err(CliError::io(format!(
            "{}: cannot create",
            data_dir.display()
        )))?;
    }
    for (index, address) in config.addresses.iter().enumerate() {
        let pid = cluster.spawn(index, &[])?;
        print(
            stdout,
            format!(
                "node {index}: pid {pid}, clients {}, peers {}, data {}",
                address.client_endpoint(),
                address.internal_endpoint(),
                cluster.setup().data_dir(index).display()
            ),
        )?;
    }

    let mut options = ClientOptions::new(cluster.addresses().to_vec());
    options.attempt_timeout = STATUS_ATTEMPT_TIMEOUT;
    options.deadline = STATUS_ATTEMPT_TIMEOUT;
    let mut client = Client::connect(options)?;
    let waiting_until = Instant::now() + args.leader_wait;
    let mut leader_announced = false;
    while !stop.load(Ordering::SeqCst) {
        if watch(cluster, exits) == 0 {
            return Err(CliError::Cluster("every node has exited".to_string()));
        }
        if let Some((address, status)) = launcher::status_round(&mut client).leader {
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
        if watch(cluster, exits) == 0 {
            return Err(CliError::Cluster("every node has exited".to_string()));
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
    Ok(())
}

/// Reaps children that exited on their own, saying so on stderr. Returns how many still
/// run.
fn watch(cluster: &mut LocalCluster, exits: &mut Vec<NodeExit>) -> usize {
    for exit in cluster.reap_exited() {
        match &exit.status {
            Ok(status) => {
                eprintln!(
                    "rrmq cluster: node {} (pid {}) exited unexpectedly: {status}",
                    exit.index, exit.pid
                );
                exits.push(exit);
            }
            Err(error) => eprintln!(
                "rrmq cluster: cannot check node {} (pid {}): {error}",
                exit.index, exit.pid
            ),
        }
    }
    cluster.unreaped_count()
}

/// Stops the cluster, reports on stderr every node that ended badly (now or before) and
/// any that had to be killed; returns a one-line summary.
fn stop_and_report(cluster: &mut LocalCluster, mut exits: Vec<NodeExit>) -> String {
    let report = cluster.stop();
    exits.extend(report.exits);
    exits.sort_by_key(|exit| exit.index);
    for exit in &exits {
        match &exit.status {
            Ok(status) if !status.success() => eprintln!(
                "rrmq cluster: node {} (pid {}) stopped with {status}",
                exit.index, exit.pid
            ),
            _ => {}
        }
    }
    if report.killed.is_empty() {
        "cluster stopped".to_string()
    } else {
        let killed: Vec<String> = report.killed.iter().map(usize::to_string).collect();
        eprintln!(
            "rrmq cluster: killed node(s) {} after {:.1?} without exiting",
            killed.join(", "),
            cluster.setup().stop_grace
        );
        "cluster stopped (some nodes had to be killed)".to_string()
    }
}
