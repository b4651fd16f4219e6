//! `rrmq cluster`: runs every node of a config on this machine, as child processes of
//! `rrmq-node`, until Ctrl-C or SIGTERM. For trying rrmq out and for demos; a real
//! deployment runs one `rrmq-node` per machine under its own supervisor.
//!
//! What it owns: the operator's view of a [`LocalCluster`] (the launcher starts, watches and
//! stops the children, detached from the terminal's signals): where each node listens,
//! which one was elected, a line on stderr when one dies unexpectedly, and on a stop signal
//! an orderly stop (SIGTERM, a grace period, SIGKILL for what is left) with a summary.
//!
//! With `--secure` it starts a keyed cluster (PROTOCOL.md §11) from a plain config, so
//! trying CURVE takes one command: a key file per node and one admin client key in the data
//! root (mode 0600; a second run reuses them, since the keys are part of the cluster id and
//! new ones would orphan the data), a keyed copy of the config beside them (each address
//! with its node's public key, one `clients` entry `admin` with every right), the nodes
//! started with `--key-file`, the leader found with the admin key, and the `rrmq` command
//! line that talks to it printed. A config that already carries keys is refused: its keys
//! have secret halves this launcher does not have.
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
use crate::config::keys::{self, KeyPair};
use crate::config::{ClusterConfig, FsyncMode};

/// The keyed config `--secure` writes into the data root.
pub const SECURE_CONFIG_FILE: &str = "config-secure.json";
/// The admin client's key file `--secure` writes into the data root.
pub const ADMIN_KEY_FILE: &str = "admin.key";

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
    /// Start it keyed (CURVE on both ports): key files for the nodes and an admin client,
    /// and a keyed copy of the config, are written into --data-root (existing key files
    /// are reused); prints the rrmq command line that talks to it
    #[arg(long)]
    pub secure: bool,
}

pub(super) fn run(
    config_path: &Path,
    args: &ClusterArgs,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let plain = ClusterConfig::load(config_path)?;
    let node_bin = launcher::node_bin(args.node_bin.as_deref())?;
    let secure = if args.secure {
        Some(make_secure(config_path, &plain, &args.data_root)?)
    } else {
        None
    };
    let (config, config_path) = match &secure {
        Some(secure) => (secure.config.clone(), secure.config_path.as_path()),
        None => (plain, config_path),
    };

    // Before any child exists: a signal from now on stops the cluster in order.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(CliError::io("cannot install the signal handler"))?;
    }

    let mut setup = NodeSetup::new(node_bin, config_path.to_path_buf(), args.data_root.clone());
    setup.detach = true;
    if let Some(secure) = &secure {
        setup.key_files = secure.node_key_files.clone();
    }
    if let Some(fsync) = args.fsync {
        setup.flags = vec!["--fsync".into(), fsync.as_str().into()];
    }
    let mut cluster = LocalCluster::new(setup, &config)?;
    // Exits seen while running, reported again (if they failed) when the cluster stops.
    let mut exits = Vec::new();
    let watched = start_and_watch(
        &mut cluster,
        &config,
        secure.as_ref(),
        args,
        &stop,
        stdout,
        &mut exits,
    );
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
    secure: Option<&Secure>,
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
    if let Some(secure) = secure {
        print(
            stdout,
            format!(
                "keyed: node keys {}, admin client key {} ({})",
                secure
                    .admin_key_file
                    .with_file_name("node-INDEX.key")
                    .display(),
                shell_word(&secure.admin_key_file),
                if secure.keys_reused { "reused" } else { "new" },
            ),
        )?;
        print(
            stdout,
            format!(
                "use it with: rrmq --config {} --key-file {} COMMAND",
                shell_word(&secure.config_path),
                shell_word(&secure.admin_key_file)
            ),
        )?;
        options = options
            .with_key_pair(config, secure.admin.clone())
            .map_err(|error| CliError::Cluster(error.to_string()))?;
    }
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

/// What `--secure` prepared in the data root.
#[derive(Debug)]
struct Secure {
    /// The keyed config the nodes are started with.
    config_path: PathBuf,
    config: ClusterConfig,
    /// Node INDEX's key file.
    node_key_files: Vec<PathBuf>,
    admin_key_file: PathBuf,
    admin: KeyPair,
    /// Whether every key file was there already.
    keys_reused: bool,
}

/// Writes (or reuses) the key files and the keyed config for `plain` into `data_root` (see
/// the module docs). Paths are absolute, so the printed command line works from anywhere.
fn make_secure(
    config_path: &Path,
    plain: &ClusterConfig,
    data_root: &Path,
) -> Result<Secure, CliError> {
    if plain.addresses.iter().any(|a| a.public_key.is_some()) || plain.clients.is_some() {
        return Err(CliError::Usage(format!(
            "{}: already carries keys (\"public_key\" or \"clients\"); --secure makes its own \
             from a config without them",
            config_path.display()
        )));
    }
    std::fs::create_dir_all(data_root).map_err(CliError::io(format!(
        "{}: cannot create",
        data_root.display()
    )))?;
    let data_root = data_root.canonicalize().map_err(CliError::io(format!(
        "{}: cannot resolve",
        data_root.display()
    )))?;
    let mut keys_reused = true;
    let mut key = |path: PathBuf| -> Result<(PathBuf, KeyPair), CliError> {
        let pair = if path.exists() {
            keys::load_key_file(&path)
        } else {
            keys_reused = false;
            keys::write_new_key_file(&path)
        }
        .map_err(|error| CliError::Key(error.to_string()))?;
        Ok((path, pair))
    };
    let mut node_key_files = Vec::new();
    let mut node_keys = Vec::new();
    for index in 0..plain.addresses.len() {
        let (path, pair) = key(data_root.join(format!("node-{index}.key")))?;
        node_key_files.push(path);
        node_keys.push(pair.public);
    }
    let (admin_key_file, admin) = key(data_root.join(ADMIN_KEY_FILE))?;

    // The operator's file as written (settings kept), plus the keys.
    let text = std::fs::read_to_string(config_path).map_err(CliError::io(format!(
        "{}: cannot read",
        config_path.display()
    )))?;
    let mut document: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| CliError::Cluster(format!("{}: {error}", config_path.display())))?;
    let addresses = document
        .get_mut("addresses")
        .and_then(serde_json::Value::as_array_mut)
        .filter(|addresses| addresses.len() == node_keys.len())
        .ok_or_else(|| {
            CliError::Cluster(format!(
                "{}: \"addresses\" changed while being read",
                config_path.display()
            ))
        })?;
    for (address, public) in addresses.iter_mut().zip(&node_keys) {
        if let Some(address) = address.as_object_mut() {
            address.insert("public_key".into(), keys::z85_encode(public).into());
        }
    }
    if let Some(document) = document.as_object_mut() {
        document.insert(
            "clients".into(),
            serde_json::json!([{
                "name": "admin",
                "public_key": keys::z85_encode(&admin.public),
                "produce": ["*"],
                "consume": ["*"],
                "admin": true,
            }]),
        );
    }
    let keyed_path = data_root.join(SECURE_CONFIG_FILE);
    let keyed_text = serde_json::to_string_pretty(&document)
        .map_err(|error| CliError::Cluster(format!("cannot write the keyed config: {error}")))?
        + "\n";
    std::fs::write(&keyed_path, keyed_text).map_err(CliError::io(format!(
        "{}: cannot write",
        keyed_path.display()
    )))?;
    let config = ClusterConfig::load(&keyed_path)?;
    Ok(Secure {
        config_path: keyed_path,
        config,
        node_key_files,
        admin_key_file,
        admin,
        keys_reused,
    })
}

/// `path` as one shell word: as is when that is safe, single-quoted otherwise.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:=@%".contains(c));
    if plain && !text.is_empty() {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn secure_writes_keys_once_and_a_keyed_config_that_keeps_the_settings() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, _) = launcher::write_config(dir.path(), "127.0.0.1", 3).expect("write");
        let mut document: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        document["sessions_max"] = 77.into();
        std::fs::write(&path, document.to_string()).expect("write");
        let plain = ClusterConfig::load(&path).expect("valid");
        let root = dir.path().join("data");

        let first = make_secure(&path, &plain, &root).expect("keyed");
        assert!(!first.keys_reused);
        assert!(first.config_path.is_absolute());
        assert_eq!(first.node_key_files.len(), 3);
        for file in first.node_key_files.iter().chain([&first.admin_key_file]) {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
        let config = &first.config;
        for (index, address) in config.addresses.iter().enumerate() {
            let pair = keys::load_key_file(&first.node_key_files[index]).expect("key");
            assert_eq!(address.public_key, Some(pair.public), "node {index}");
        }
        let clients = config.clients.as_ref().expect("a clients list");
        let admin = clients.by_key(&first.admin.public).expect("admin listed");
        assert!(admin.rights.admin);
        assert!(admin.rights.may_produce("any") && admin.rights.may_consume("any"));
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&first.config_path).expect("read"))
                .expect("json");
        assert_eq!(written["sessions_max"], 77, "settings are kept");

        // A second run reuses every key, so the cluster id (and the data) stays valid.
        let second = make_secure(&path, &plain, &root).expect("keyed again");
        assert!(second.keys_reused);
        assert_eq!(second.admin, first.admin);
        assert_eq!(second.config.cluster_id, first.config.cluster_id);

        // A config with keys already is refused with a usage error naming it.
        let error = make_secure(&first.config_path, &first.config, &root).expect_err("keyed");
        assert!(matches!(error, CliError::Usage(_)), "{error}");
        assert!(
            error.to_string().contains("already carries keys"),
            "{error}"
        );
    }

    #[test]
    fn paths_are_printed_as_one_shell_word() {
        assert_eq!(shell_word(Path::new("/tmp/a-b_c.key")), "/tmp/a-b_c.key");
        assert_eq!(shell_word(Path::new("/tmp/my keys/a")), "'/tmp/my keys/a'");
        assert_eq!(shell_word(Path::new("/tmp/it's")), "'/tmp/it'\\''s'");
    }
}
