//! The cluster's id, fixed for the cluster's life.
//!
//! Peers stamp a cluster id on every message so that nodes of two clusters never mix logs
//! (`transport::wire`). It used to be only a digest of `config.json`'s addresses, which
//! stops working once members change at runtime: a node added later is started from a
//! file that lists more addresses, and a restarted node may be given an updated file. So
//! the id is decided once and kept in the data dir (`cluster_id`, hex):
//!
//! - a node that starts without the file and without `--join` is one of the initial
//!   members: the id is the digest of its config's addresses, as every initial member
//!   computes it from the same file, and it is written down;
//! - a node started with `--join` and no file asks the nodes its config lists for their
//!   `stats` (which carry `cluster_id`), until one answers, and writes that down. In a
//!   cluster that lists `clients` the client port speaks CURVE and admits only listed keys,
//!   and the members' keys for `stats` and `status` only (`transport::zap`): the node asks
//!   with its own key, which the members admit once its `member PUT` has made it a learner
//!   (the PUT carries the key), so it waits for that add, not for its key to be listed as a
//!   client. Rights stay checked before anything else: that key gets nothing but `stats`
//!   and `status`;
//! - from then on the file wins over the config, whatever the config says.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientOptions};
use crate::config::NodeConfig;

/// The file in the data dir.
const FILE_NAME: &str = "cluster_id";

/// How long a joining node asks the members for the id before it gives up.
const JOIN_ASK_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the id could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum ClusterIdError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a cluster id (expected 16 hex digits): {text:?}")]
    Corrupt { path: String, text: String },
    #[error("--join: no member answered with the cluster id within {0:?} (are the other nodes of the config running?)")]
    NoMemberAnswered(Duration),
}

/// Sets `config.cluster.cluster_id` to this cluster's id (see the module docs). What is
/// left to do, writing the id down on the first start and logging where it came from, waits
/// for [`Resolved::record`], which the node calls once it holds the data dir's lock: a
/// node refused for a data dir in use must neither write there nor log before its one
/// error line.
pub fn resolve(config: &mut NodeConfig) -> Result<Resolved, ClusterIdError> {
    let path = config.data_dir.join(FILE_NAME);
    let dir = config.data_dir.clone();
    if let Some(id) = read(&path)? {
        let note = (id != config.cluster.cluster_id).then(|| {
            format!(
                "cluster id {id:#x} from {} (the config's addresses alone would give {:#x}: \
                 members changed since the cluster began)",
                path.display(),
                config.cluster.cluster_id
            )
        });
        config.cluster.cluster_id = id;
        return Ok(Resolved {
            path,
            dir,
            write: None,
            note,
        });
    }
    let mut note = None;
    if config.join {
        config.cluster.cluster_id = ask_members(config)?;
        note = Some(format!(
            "joining cluster {:#x} (learned from its members)",
            config.cluster.cluster_id
        ));
    }
    Ok(Resolved {
        path,
        dir,
        write: Some(config.cluster.cluster_id),
        note,
    })
}

/// The cluster id decided by [`resolve`], not yet written down or logged.
#[must_use = "the id must be recorded once the data dir is locked"]
pub struct Resolved {
    path: PathBuf,
    dir: PathBuf,
    /// The id to write down: none was in the data dir.
    write: Option<u64>,
    /// Where the id came from, when that is worth a line in the log.
    note: Option<String>,
}

impl Resolved {
    /// Logs where the id came from and writes it to the data dir if it was not there.
    pub fn record(self) -> Result<(), ClusterIdError> {
        if let Some(note) = &self.note {
            log::info!("{note}");
        }
        match self.write {
            Some(id) => write(&self.path, &self.dir, id),
            None => Ok(()),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterIdError + '_ {
    move |source| ClusterIdError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read(path: &Path) -> Result<Option<u64>, ClusterIdError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(path)(error)),
    };
    u64::from_str_radix(text.trim(), 16)
        .map(Some)
        .map_err(|_| ClusterIdError::Corrupt {
            path: path.display().to_string(),
            text: text.chars().take(40).collect(),
        })
}

/// Writes the id durably: a temporary file, fsynced, renamed, the directory fsynced.
fn write(path: &Path, dir: &Path, id: u64) -> Result<(), ClusterIdError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let temporary: PathBuf = dir.join(format!("{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&temporary).map_err(io_error(&temporary))?;
    writeln!(file, "{id:016x}").map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))
}

/// Asks every other node of the config for its `stats` until one gives a cluster id.
fn ask_members(config: &NodeConfig) -> Result<u64, ClusterIdError> {
    let started = Instant::now();
    let mut logged = false;
    while started.elapsed() < JOIN_ASK_TIMEOUT {
        if let Some(id) = ask_once(config) {
            return Ok(id);
        }
        if !logged {
            if config.cluster.clients.is_some() {
                log::info!(
                    "--join: waiting for a member of the config to answer (the members answer \
                     this node's key once `rrmq member add` has made it a learner)"
                );
            } else {
                log::info!("--join: waiting for a member of the config to answer");
            }
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(ClusterIdError::NoMemberAnswered(JOIN_ASK_TIMEOUT))
}

fn ask_once(config: &NodeConfig) -> Option<u64> {
    let mut options = match ClientOptions::from_config(&config.cluster) {
        Ok(options) => options,
        Err(error) => {
            log::warn!("--join: {error}");
            return None;
        }
    };
    // The client port speaks CURVE only when the cluster lists clients; then the members
    // admit this node's key once it is a learner (see the module docs).
    if let (Some(pair), Some(_)) = (&config.key_pair, &config.cluster.clients) {
        options = options.with_key_pair(&config.cluster, pair.clone()).ok()?;
    }
    options.attempt_timeout = Duration::from_secs(1);
    options.deadline = Duration::from_secs(2);
    let mut client = Client::connect(options).ok()?;
    let own = config.address().client_endpoint();
    client
        .stats_all()
        .into_iter()
        .filter(|(address, _)| format!("tcp://{address}") != own)
        .find_map(|(_, stats)| stats.ok().map(|stats| stats.cluster_id))
        .filter(|id| *id != 0)
}
