//! The node's configuration: the cluster file (`config.json`, PROTOCOL.md §1) and the
//! command-line flags, validated into one [`NodeConfig`] before anything starts.
//!
//! Why a module of its own: every bad input an operator can give (an unreadable file, a port
//! of 70000, a heartbeat slower than the election timeout) must be refused up front with one
//! clear line, never discovered later as a panic or a cluster that cannot elect a leader. So
//! the raw inputs ([`NodeArgs`], the JSON value) are turned into validated types here and the
//! rest of the crate only ever sees those (ripgrep's low-level args -> high-level args).
//!
//! What it must not do: open sockets, files other than the config, or start anything.

pub mod clients;
pub mod keys;
pub mod permissions;

use crate::protocol::Limits;
use crate::queue::{
    QueueConfig, QUEUED_BYTES_MAX_DEFAULT, SESSIONS_MAX_LIMIT, TOPICS_MAX_DEFAULT, TOPICS_MAX_LIMIT,
};
use crate::raft::{NodeId, RaftConfig};
use clients::ClientList;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration was refused. `Display` gives the one line the binary prints.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    InvalidJson {
        path: String,
        source: serde_json::Error,
    },
    /// The JSON is well formed but not a cluster description (e.g. `addresses` missing).
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: the address list is empty")]
    EmptyAddressList { path: String },
    #[error("{path}: addresses[{node}].{field}: {value} is not a valid port (1-65535)")]
    BadPort {
        path: String,
        node: usize,
        field: &'static str,
        value: String,
    },
    #[error("{path}: duplicate address {address} (addresses[{first}] and addresses[{second}])")]
    DuplicateAddress {
        path: String,
        address: String,
        first: usize,
        second: usize,
    },
    #[error("{path}: index {index} out of range ({count} nodes)")]
    IndexOutOfRange {
        path: String,
        index: u64,
        count: usize,
    },
    /// A flag, or a combination of flags, that cannot work.
    #[error("{option}: {reason}")]
    BadOption {
        option: &'static str,
        reason: String,
    },
}

/// One node's addresses as written in `config.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// An IPv4 or IPv6 address or a host name, as written.
    pub ip: String,
    /// Where the node serves clients.
    pub port: u16,
    /// Where the node talks to its peers.
    pub internal_port: u16,
    /// `"public_key"`: the node's CURVE public key. Invariant (checked by
    /// [`ClusterConfig::parse`]): all addresses carry one or none does.
    pub public_key: Option<keys::Key>,
}

impl Address {
    /// `tcp://ip:port` for the client port (IPv6 addresses bracketed).
    pub fn client_endpoint(&self) -> String {
        tcp_endpoint(&self.ip, self.port)
    }

    /// `tcp://ip:internal_port` for the peer port.
    pub fn internal_endpoint(&self) -> String {
        tcp_endpoint(&self.ip, self.internal_port)
    }

    pub fn is_ipv6(&self) -> bool {
        self.ip.contains(':')
    }
}

/// A ZeroMQ TCP endpoint; IPv6 literals need brackets.
pub fn tcp_endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6() {
            write!(f, "[{}]:{}", self.ip, self.port)
        } else {
            write!(f, "{}:{}", self.ip, self.port)
        }
    }
}

/// The validated cluster description: the same file on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Invariant: not empty; no two (host, port) pairs alike across all client and internal
    /// ports. A node's id is its position here.
    pub addresses: Vec<Address>,
    /// A stable digest of `addresses`. Peers stamp it on every message so that nodes started
    /// from different files (say, an old cluster's node still running on a reused port)
    /// ignore each other instead of mixing two clusters' logs.
    pub cluster_id: u64,
    /// `"sessions_max"`: how many client sessions the replicated state machine remembers.
    /// It decides which sessions are forgotten, in log order, so every node must use the same
    /// number: it belongs in the one file all nodes share, not in a per-node flag.
    pub sessions_max: Option<usize>,
    /// `"queued_bytes_max"`: the most bytes queued over all topics (each message counted as
    /// its length plus 4); a PUT beyond it is refused with `QUOTA`. Decided at apply time,
    /// so, like `sessions_max`, one number for every node.
    pub queued_bytes_max: Option<usize>,
    /// `"topics_max"`: the most topics; a create beyond it is refused with `QUOTA`. One
    /// number for every node, like `sessions_max`.
    pub topics_max: Option<usize>,
    /// `"clients"`: the client allow-list with each client's rights (PROTOCOL.md §11), or
    /// `None` when the file has none and the client port stays plain. A SIGHUP re-reads it
    /// ([`clients::reload_clients`]) into the node's [`clients::SharedClients`].
    pub clients: Option<ClientList>,
    /// `"metrics_port"` of each address (same order as `addresses`): where that node serves
    /// `/metrics`, `/healthz` and `/readyz` over HTTP, on its `ip`; `None` (absent) keeps
    /// that node's metrics off. Kept beside `addresses` rather than in [`Address`]: it is
    /// local to the node, so it is not part of the cluster id (turning metrics on does not
    /// make a node a stranger to its peers) and members added later have none.
    /// Invariant: as long as `addresses`; no port equal to another port of the file on the
    /// same host.
    pub metrics_ports: Vec<Option<u16>>,
}

/// Client sessions remembered when the config does not say.
pub const SESSIONS_MAX_DEFAULT: usize = 10_000;

/// How many bytes of proposals a leader lets wait for commit when `--uncommitted-bytes-max`
/// does not say: far above what commit latency times a fast client's rate needs (64
/// clients with 1 MiB messages in flight at once), far below a node's memory. It bounds
/// what a leader that cannot commit (no quorum) piles up in its log before it refuses.
pub const UNCOMMITTED_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;

impl ClusterConfig {
    /// Reads and validates `path`. Errors name the path as given, for the one stderr line.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: shown.clone(),
            source,
        })?;
        ClusterConfig::parse(&text, &shown)
    }

    /// Parses the text of a config file; `path` only labels errors.
    pub fn parse(text: &str, path: &str) -> Result<ClusterConfig, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ConfigError::InvalidJson {
                path: path.to_string(),
                source,
            })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_string(),
            reason,
        };
        let object = value
            .as_object()
            .ok_or_else(|| invalid(format!("expected a JSON object, found {}", kind(&value))))?;
        let list = object
            .get("addresses")
            .ok_or_else(|| invalid("missing \"addresses\"".to_string()))?;
        let list = list.as_array().ok_or_else(|| {
            invalid(format!(
                "\"addresses\": expected a list, found {}",
                kind(list)
            ))
        })?;
        if list.is_empty() {
            return Err(ConfigError::EmptyAddressList {
                path: path.to_string(),
            });
        }
        let mut addresses = Vec::with_capacity(list.len());
        let mut metrics_ports = Vec::with_capacity(list.len());
        for (node, entry) in list.iter().enumerate() {
            let entry = entry.as_object().ok_or_else(|| {
                invalid(format!(
                    "addresses[{node}]: expected an object, found {}",
                    kind(entry)
                ))
            })?;
            let ip = match entry.get("ip") {
                Some(serde_json::Value::String(ip)) if !ip.trim().is_empty() => ip.trim(),
                Some(serde_json::Value::String(_)) => {
                    return Err(invalid(format!("addresses[{node}].ip: empty")))
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "addresses[{node}].ip: expected a string, found {}",
                        kind(other)
                    )))
                }
                None => return Err(invalid(format!("addresses[{node}]: missing \"ip\""))),
            };
            let port = parse_port(path, node, "port", entry.get("port"))?;
            let internal_port =
                parse_port(path, node, "internal_port", entry.get("internal_port"))?;
            let metrics_port = match entry.get("metrics_port") {
                None => None,
                value => Some(parse_port(path, node, "metrics_port", value)?),
            };
            metrics_ports.push(metrics_port);
            let public_key = match entry.get("public_key") {
                None => None,
                Some(serde_json::Value::String(text)) => {
                    Some(keys::z85_decode(text).map_err(|error| {
                        invalid(format!("addresses[{node}].public_key: {error}"))
                    })?)
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "addresses[{node}].public_key: expected a string, found {}",
                        kind(other)
                    )))
                }
            };
            addresses.push(Address {
                ip: ip.to_string(),
                port,
                internal_port,
                public_key,
            });
        }
        let keyed = addresses.iter().filter(|a| a.public_key.is_some()).count();
        if keyed != 0 && keyed != addresses.len() {
            let missing = addresses
                .iter()
                .position(|a| a.public_key.is_none())
                .unwrap_or(0);
            return Err(invalid(format!(
                "addresses[{missing}]: missing \"public_key\" ({keyed} of {} addresses \
                 carry one: all or none must)",
                addresses.len()
            )));
        }
        check_duplicates(path, &addresses, &metrics_ports)?;
        let cluster_id = cluster_id(&addresses);
        let count = |key: &str, max: usize| -> Result<Option<usize>, ConfigError> {
            let Some(value) = object.get(key) else {
                return Ok(None);
            };
            match value.as_u64().and_then(|count| usize::try_from(count).ok()) {
                Some(count) if (1..=max).contains(&count) => Ok(Some(count)),
                _ => Err(invalid(format!(
                    "\"{key}\": expected a whole number {}, found {value}",
                    range_text(max)
                ))),
            }
        };
        let clients = match object.get("clients") {
            None => None,
            Some(value) => {
                let list = ClientList::from_json(value).map_err(invalid)?;
                clients::check_clients_allowed(true, peers_keyed(&addresses)).map_err(invalid)?;
                Some(list)
            }
        };
        Ok(ClusterConfig {
            addresses,
            cluster_id,
            clients,
            sessions_max: count("sessions_max", SESSIONS_MAX_LIMIT)?,
            queued_bytes_max: count("queued_bytes_max", usize::MAX)?,
            topics_max: count("topics_max", TOPICS_MAX_LIMIT)?,
            metrics_ports,
        })
    }

    pub fn node_count(&self) -> usize {
        self.addresses.len()
    }

    /// Every node's id, in order.
    pub fn voters(&self) -> Vec<NodeId> {
        (0..self.addresses.len() as u64).map(NodeId).collect()
    }

    pub fn address(&self, id: NodeId) -> Option<&Address> {
        usize::try_from(id.0)
            .ok()
            .and_then(|index| self.addresses.get(index))
    }

    /// Whether `id` names a node of this cluster.
    pub fn contains(&self, id: NodeId) -> bool {
        self.address(id).is_some()
    }

    /// Whether the addresses carry public keys (then all of them do): the peer port speaks
    /// CURVE.
    pub fn is_keyed(&self) -> bool {
        peers_keyed(&self.addresses)
    }

    /// Every node's id and public key, when the cluster is keyed.
    pub fn peer_keys(&self) -> Option<Vec<(NodeId, keys::Key)>> {
        self.addresses
            .iter()
            .enumerate()
            .map(|(index, a)| a.public_key.map(|key| (NodeId(index as u64), key)))
            .collect()
    }
}

/// The node's own key pair from `--key-file`, checked against its entry in the config; none
/// for an unkeyed cluster.
fn node_key_pair(args: &NodeArgs, address: &Address) -> Result<Option<keys::KeyPair>, ConfigError> {
    let bad = |reason: String| ConfigError::BadOption {
        option: "--key-file",
        reason,
    };
    let Some(expected) = address.public_key else {
        return match &args.key_file {
            None => Ok(None),
            Some(_) => Err(bad(
                "the config's addresses carry no \"public_key\", so the peer port has no \
                 keys to use"
                    .into(),
            )),
        };
    };
    let Some(path) = &args.key_file else {
        return Err(bad(
            "required: the config's addresses carry public keys (CURVE)".into(),
        ));
    };
    if zmq::has("curve") != Some(true) {
        return Err(bad(
            "this build's libzmq has no CURVE, and the config carries keys".into(),
        ));
    }
    let pair = keys::load_key_file(path).map_err(|error| bad(error.to_string()))?;
    if pair.public != expected {
        return Err(bad(format!(
            "{}: its public key {} is not node {}'s in the config ({})",
            path.display(),
            keys::z85_encode(&pair.public),
            args.index,
            keys::z85_encode(&expected)
        )));
    }
    Ok(Some(pair))
}

/// Whether these addresses carry public keys.
/// Whether the addresses carry public keys (parsing makes sure it is all of them or none).
fn peers_keyed(addresses: &[Address]) -> bool {
    !addresses.is_empty() && addresses.iter().all(|address| address.public_key.is_some())
}

/// `1..=max` as an error message says it; "at least 1" when there is no real maximum.
fn range_text(max: usize) -> String {
    if max == usize::MAX {
        "of at least 1".to_string()
    } else {
        format!("in 1..={max}")
    }
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_port(
    path: &str,
    node: usize,
    field: &'static str,
    value: Option<&serde_json::Value>,
) -> Result<u16, ConfigError> {
    let bad = |value: String| ConfigError::BadPort {
        path: path.to_string(),
        node,
        field,
        value,
    };
    match value {
        None => Err(ConfigError::Invalid {
            path: path.to_string(),
            reason: format!("addresses[{node}]: missing \"{field}\""),
        }),
        Some(serde_json::Value::Number(number)) => match number.as_u64() {
            Some(port) if (1..=u64::from(u16::MAX)).contains(&port) => {
                Ok(u16::try_from(port).expect("checked to be in 1..=65535"))
            }
            _ => Err(bad(number.to_string())),
        },
        Some(other) => Err(bad(other.to_string())),
    }
}

/// A host written two ways (`::1` and `0:0::1`, `LOCALHOST` and `localhost`) is one host.
fn canonical_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// Two sockets cannot be bound on one (host, port): a client port equal to another node's
/// internal port is as fatal as two equal client ports, and so is a metrics port equal to
/// any other.
fn check_duplicates(
    path: &str,
    addresses: &[Address],
    metrics_ports: &[Option<u16>],
) -> Result<(), ConfigError> {
    let mut seen: HashMap<(String, u16), usize> = HashMap::new();
    for (node, address) in addresses.iter().enumerate() {
        let metrics_port = metrics_ports.get(node).copied().flatten();
        for port in [address.port, address.internal_port]
            .into_iter()
            .chain(metrics_port)
        {
            let key = (canonical_host(&address.ip), port);
            if let Some(&first) = seen.get(&key) {
                let shown = Address {
                    ip: address.ip.clone(),
                    port,
                    internal_port: port,
                    public_key: None,
                };
                return Err(ConfigError::DuplicateAddress {
                    path: path.to_string(),
                    address: shown.to_string(),
                    first,
                    second: node,
                });
            }
            seen.insert(key, node);
        }
    }
    Ok(())
}

/// FNV-1a over the addresses as written: stable across Rust versions and platforms, unlike
/// `DefaultHasher`, so every node of one file computes the same id.
fn cluster_id(addresses: &[Address]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for address in addresses {
        feed(address.ip.as_bytes());
        feed(&[0]);
        feed(&address.port.to_be_bytes());
        feed(&address.internal_port.to_be_bytes());
        // Only keyed clusters feed keys, so an unkeyed cluster keeps its id.
        if let Some(key) = &address.public_key {
            feed(b"curve");
            feed(key);
        }
        feed(&[0xff]);
    }
    hash
}

/// How hard the node works to make acknowledged writes durable.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// fsync before acknowledging: an acknowledged write survives a power loss.
    Always,
    /// Leave flushing to the OS: faster, but a machine crash may lose acknowledged writes
    /// (a process crash does not).
    Never,
}

impl FsyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Never => "never",
        }
    }
}

/// How the kernel schedules the node's threads (Linux; elsewhere the node logs that it
/// leaves the default).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedPolicy {
    /// SCHED_BATCH: a woken thread does not preempt the one running, so each wake-up finds
    /// more work waiting (docs/PERFORMANCE.md, "SCHED_BATCH").
    Batch,
    /// SCHED_OTHER, the kernel's default.
    Normal,
}

/// The one translation from the operator's setting to the storage layer's policy (storage
/// sits below config and knows nothing of flags or config files).
impl From<FsyncMode> for crate::storage::FsyncPolicy {
    fn from(mode: FsyncMode) -> crate::storage::FsyncPolicy {
        match mode {
            FsyncMode::Always => crate::storage::FsyncPolicy::Always,
            FsyncMode::Never => crate::storage::FsyncPolicy::Never,
        }
    }
}

/// An election timeout range in milliseconds, written `MIN-MAX`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ElectionTimeoutRange {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl std::str::FromStr for ElectionTimeoutRange {
    type Err = String;

    fn from_str(text: &str) -> Result<ElectionTimeoutRange, String> {
        let (min, max) = text
            .split_once('-')
            .ok_or_else(|| format!("expected MIN-MAX in milliseconds, found {text:?}"))?;
        let parse = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|_| format!("expected MIN-MAX in milliseconds, found {text:?}"))
        };
        Ok(ElectionTimeoutRange {
            min_ms: parse(min)?,
            max_ms: parse(max)?,
        })
    }
}

/// `rrmq-node` command-line flags, before validation.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "rrmq-node",
    version,
    about = "Runs one node of an rrmq cluster (a message queue replicated with Raft).",
    // A later flag wins, so wrapper scripts can append overrides to a default command line.
    args_override_self = true
)]
pub struct NodeArgs {
    /// The cluster file: {"addresses": [{"ip", "port", "internal_port"}, ...]}.
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,

    /// This node's position in the config's addresses (0-based): its id.
    #[arg(value_name = "INDEX")]
    pub index: u64,

    /// Where the write-ahead log lives [default: data/<ip>-<port>, relative to the current
    /// directory].
    // The `<ip>` placeholders are for `--help`, not HTML.
    #[allow(rustdoc::invalid_html_tags)]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// `always`: fsync before acknowledging. `never`: survive process crashes only.
    #[arg(long, value_enum, default_value_t = FsyncMode::Always)]
    pub fsync: FsyncMode,

    /// How the kernel schedules the node's threads (Linux): `batch` (SCHED_BATCH) lets a
    /// woken thread wait for the running one instead of preempting it, so each wake-up
    /// carries more work; `normal` is the kernel's default. Needs no privilege.
    #[arg(long, value_enum, default_value_t = SchedPolicy::Batch)]
    pub sched_policy: SchedPolicy,

    /// The Raft clock's resolution: every timeout below is counted in ticks of this length.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pub tick_ms: u64,

    /// How often a leader tells followers it is alive.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub heartbeat_ms: u64,

    /// A follower that hears nothing from a leader for a random time in this range starts an
    /// election.
    #[arg(long, value_name = "MIN-MAX", default_value = "300-600")]
    pub election_timeout_ms: ElectionTimeoutRange,

    /// A request not committed within this time is answered TIMEOUT (outcome unknown).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub request_timeout_ms: u64,

    /// Longest topic name accepted, in bytes of UTF-8.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().topic_bytes_max)]
    pub topic_bytes_max: usize,

    /// Largest message accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().message_bytes_max)]
    pub message_bytes_max: usize,

    /// How many clients' last replies the cluster remembers for safe retries (client_id/seq)
    /// [default: the config's "sessions_max", else 10000]. Set it in the config: every node
    /// must use the same number, and a flag that disagrees with the config is refused.
    #[arg(long, value_name = "COUNT")]
    pub sessions_max: Option<usize>,

    /// Quota: the most bytes queued over all topics, each message counted as its length
    /// plus 4; a PUT beyond it is refused with QUOTA [default: the config's
    /// "queued_bytes_max", else 2 GiB]. Set it in the config: every node must use the same
    /// number, and a flag that disagrees with the config is refused.
    #[arg(long, value_name = "BYTES")]
    pub queued_bytes_max: Option<usize>,

    /// Quota: the most topics; a create beyond it is refused with QUOTA [default: the
    /// config's "topics_max", else 10000]. Set it in the config, like --queued-bytes-max.
    #[arg(long, value_name = "COUNT")]
    pub topics_max: Option<usize>,

    /// The most bytes of proposals this node, as leader, lets wait for commit; a write
    /// beyond it is refused at once with UNAVAILABLE (retry shortly), so a leader that
    /// cannot commit (no quorum) does not pile up entries until it runs out of memory.
    #[arg(long, value_name = "BYTES", default_value_t = UNCOMMITTED_BYTES_MAX_DEFAULT)]
    pub uncommitted_bytes_max: usize,

    /// Restart after losing this node's data (its data dir was wiped, e.g. after corruption):
    /// the node neither votes nor campaigns until it has caught up with a leader, so it
    /// cannot help elect a leader that lacks entries it used to hold, nor vote twice in a
    /// term. Needs a live leader (a majority of intact nodes).
    #[arg(long)]
    pub rejoin: bool,

    /// Start as a new member of a running cluster (PROTOCOL.md §12): CONFIG lists at least
    /// one current member and this node at INDEX. The node neither votes nor campaigns
    /// until the leader has made it a member (`rrmq member add`), then catches up like any
    /// follower. On its first start it asks the members for the cluster's id.
    #[arg(long, conflicts_with = "rejoin")]
    pub join: bool,

    /// Take a snapshot of the state machine (and compact the log) once this many entries
    /// were applied since the last one...
    #[arg(long, value_name = "COUNT", default_value_t = SnapshotConfig::default().entries_max)]
    pub snapshot_entries: u64,

    /// ...or once the entries applied since the last one hold this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = SnapshotConfig::default().log_bytes_max)]
    pub snapshot_bytes: u64,

    /// Entries kept in memory before a snapshot's index, so that a follower slightly behind
    /// catches up from the log instead of needing the whole snapshot.
    #[arg(long, value_name = "COUNT", default_value_t = SnapshotConfig::default().log_margin_entries)]
    pub snapshot_log_margin: u64,

    /// Size of the chunks a snapshot is streamed to a follower in.
    #[arg(long, value_name = "BYTES", default_value_t = SnapshotConfig::default().chunk_bytes)]
    pub snapshot_chunk_bytes: usize,

    /// Caps the rate at which a leader streams a snapshot to one follower (0: no cap), to
    /// leave bandwidth for replication.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub snapshot_send_bytes_per_sec: u64,

    /// A new WAL segment starts when the current one would pass this size; compaction
    /// deletes whole segments, so this is the granularity at which disk space is freed.
    #[arg(long, value_name = "BYTES", default_value_t = WAL_SEGMENT_BYTES_DEFAULT)]
    pub wal_segment_bytes: u64,

    /// Log filter, e.g. `info` or `rrmq=debug` [default: $RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// TESTS ONLY: accept `fault` requests, which make this node drop messages to or from
    /// chosen peers (simulated network partitions, for the fault-injection suite). Never in
    /// production: any client could then cut the node off from its cluster. Without it,
    /// `fault` requests are refused as BAD_REQUEST.
    #[arg(long)]
    pub fault_injection: bool,

    /// This node's CURVE key file (first line: its Z85 secret key; `rrmq keygen` writes
    /// one). Required when the config's addresses carry `public_key`s, and it must match
    /// this node's.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// Everything a node needs to start, validated.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub cluster: ClusterConfig,
    /// The cluster file as named on the command line, which a SIGHUP reads `clients` from
    /// again.
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub fsync: FsyncMode,
    pub sched_policy: SchedPolicy,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Timeouts converted to ticks. Invariant: `heartbeat_ticks < election_ticks_min <
    /// election_ticks_max`.
    pub raft: RaftConfig,
    pub request_timeout: Duration,
    pub limits: Limits,
    pub sessions_max: usize,
    /// Quota on the bytes queued over all topics (replicated behaviour: see `queue`).
    pub queued_bytes_max: usize,
    /// Quota on the topic count (replicated behaviour: see `queue`).
    pub topics_max: usize,
    /// A leader refuses a write while its uncommitted proposals hold this many bytes (one
    /// is always let through when none waits). Local to the node, not replicated.
    pub uncommitted_bytes_max: usize,
    /// Tests only: whether `fault` requests are obeyed (`--fault-injection`).
    pub fault_injection: bool,
    /// Abstain from elections until caught up (`--rejoin`).
    pub rejoin: bool,
    /// Start outside the membership, waiting to be added (`--join`).
    pub join: bool,
    pub snapshot: SnapshotConfig,
    /// WAL segments roll over at this size.
    pub wal_segment_bytes_max: u64,
    /// This node's CURVE key pair (`--key-file`), when the cluster is keyed. Invariant:
    /// present exactly when `cluster.is_keyed()`, its public key this node's entry's.
    pub key_pair: Option<keys::KeyPair>,
}

/// When to take snapshots and how to ship them.
///
/// The defaults bound what a restart replays and what the log holds to 100,000 entries or
/// 64 MiB since the last snapshot, whichever comes first: at 100-byte messages a restart
/// replays at most ~15 MB of log on top of loading the snapshot, and the data dir holds two
/// snapshots plus the log since the older one. A snapshot costs a write of the whole state,
/// so a larger state may deserve a larger threshold (write amplification is state size /
/// threshold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Snapshot once this many entries were applied since the last one. Invariant: >= 1.
    pub entries_max: u64,
    /// Or once the entries applied since the last one hold this many bytes. Invariant: >= 1.
    pub log_bytes_max: u64,
    /// Entries kept in the in-memory log before a snapshot's index.
    pub log_margin_entries: u64,
    /// Chunk size for streaming a snapshot to a follower. Invariant: within
    /// `SNAPSHOT_CHUNK_BYTES_MIN..=SNAPSHOT_CHUNK_BYTES_MAX`.
    pub chunk_bytes: usize,
    /// Streaming rate cap per follower, bytes per second; 0: none.
    pub send_bytes_per_second: u64,
}

impl Default for SnapshotConfig {
    fn default() -> SnapshotConfig {
        SnapshotConfig {
            entries_max: 100_000,
            log_bytes_max: 64 * 1024 * 1024,
            log_margin_entries: 10_000,
            chunk_bytes: 256 * 1024,
            send_bytes_per_second: 0,
        }
    }
}

pub const SNAPSHOT_CHUNK_BYTES_MIN: usize = 1024;
/// A chunk must fit one peer frame, whose cap is above 2 MiB (see `peer_frame_bytes_max`).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;
pub const WAL_SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
pub const WAL_SEGMENT_BYTES_MIN: u64 = 4096;
/// Far above any sane margin; low enough that a typo does not keep the whole log in memory.
pub const SNAPSHOT_LOG_MARGIN_MAX: u64 = 10_000_000;

/// Largest message a node can be configured to accept: frames must fit comfortably in memory
/// and in one WAL record.
pub const MESSAGE_BYTES_MAX_LIMIT: usize = 64 * 1024 * 1024;

/// Slack on top of the payload limits for the rest of a frame (keys, topic, envelope).
pub const FRAME_SLACK_BYTES: usize = 64 * 1024;

impl NodeConfig {
    /// Loads the cluster file named in `args` and validates every flag against it.
    pub fn from_args(args: &NodeArgs) -> Result<NodeConfig, ConfigError> {
        let cluster = ClusterConfig::load(&args.config)?;
        NodeConfig::new(args, cluster)
    }

    /// Validates `args` against an already loaded cluster.
    pub fn new(args: &NodeArgs, cluster: ClusterConfig) -> Result<NodeConfig, ConfigError> {
        let address = usize::try_from(args.index)
            .ok()
            .and_then(|index| cluster.addresses.get(index))
            .ok_or_else(|| ConfigError::IndexOutOfRange {
                path: args.config.display().to_string(),
                index: args.index,
                count: cluster.node_count(),
            })?;
        let data_dir = args.data_dir.clone().unwrap_or_else(|| {
            PathBuf::from("data").join(format!("{}-{}", address.ip, address.port))
        });

        let bad = |option: &'static str, reason: String| ConfigError::BadOption { option, reason };
        if args.tick_ms == 0 {
            return Err(bad("--tick-ms", "must be at least 1".into()));
        }
        let tick_ms = args.tick_ms;
        let to_ticks = |option: &'static str, ms: u64| -> Result<u32, ConfigError> {
            if ms < tick_ms {
                return Err(bad(
                    option,
                    format!("{ms} ms is shorter than one tick ({tick_ms} ms)"),
                ));
            }
            u32::try_from(ms / tick_ms)
                .map_err(|_| bad(option, format!("{ms} ms is too many ticks of {tick_ms} ms")))
        };
        let heartbeat_ticks = to_ticks("--heartbeat-ms", args.heartbeat_ms)?;
        let election = args.election_timeout_ms;
        let election_ticks_min = to_ticks("--election-timeout-ms", election.min_ms)?;
        let election_ticks_max = to_ticks("--election-timeout-ms", election.max_ms)?;
        if election_ticks_max <= election_ticks_min {
            return Err(bad(
                "--election-timeout-ms",
                format!(
                    "the maximum ({} ms) must exceed the minimum ({} ms) by at least one tick \
                     ({tick_ms} ms), or every node times out at once and elections split",
                    election.max_ms, election.min_ms
                ),
            ));
        }
        if heartbeat_ticks >= election_ticks_min {
            return Err(bad(
                "--heartbeat-ms",
                format!(
                    "{} ms must be below the minimum election timeout ({} ms), or followers \
                     start elections against a live leader",
                    args.heartbeat_ms, election.min_ms
                ),
            ));
        }
        if args.request_timeout_ms == 0 {
            return Err(bad("--request-timeout-ms", "must be at least 1".into()));
        }
        if args.topic_bytes_max == 0 || args.topic_bytes_max > 64 * 1024 {
            return Err(bad(
                "--topic-bytes-max",
                format!("{} is outside 1..=65536", args.topic_bytes_max),
            ));
        }
        if args.message_bytes_max == 0 || args.message_bytes_max > MESSAGE_BYTES_MAX_LIMIT {
            return Err(bad(
                "--message-bytes-max",
                format!(
                    "{} is outside 1..={MESSAGE_BYTES_MAX_LIMIT}",
                    args.message_bytes_max
                ),
            ));
        }
        let sessions_max = replicated_setting(
            ("--sessions-max", "sessions_max"),
            args.sessions_max,
            cluster.sessions_max,
            SESSIONS_MAX_DEFAULT,
            SESSIONS_MAX_LIMIT,
        )?;
        let queued_bytes_max = replicated_setting(
            ("--queued-bytes-max", "queued_bytes_max"),
            args.queued_bytes_max,
            cluster.queued_bytes_max,
            QUEUED_BYTES_MAX_DEFAULT,
            usize::MAX,
        )?;
        let topics_max = replicated_setting(
            ("--topics-max", "topics_max"),
            args.topics_max,
            cluster.topics_max,
            TOPICS_MAX_DEFAULT,
            TOPICS_MAX_LIMIT,
        )?;
        if args.uncommitted_bytes_max == 0 {
            return Err(bad("--uncommitted-bytes-max", "must be at least 1".into()));
        }

        if args.snapshot_entries == 0 {
            return Err(bad("--snapshot-entries", "must be at least 1".into()));
        }
        if args.snapshot_bytes == 0 {
            return Err(bad("--snapshot-bytes", "must be at least 1".into()));
        }
        if args.snapshot_log_margin > SNAPSHOT_LOG_MARGIN_MAX {
            return Err(bad(
                "--snapshot-log-margin",
                format!(
                    "{} is over {SNAPSHOT_LOG_MARGIN_MAX}",
                    args.snapshot_log_margin
                ),
            ));
        }
        if !(SNAPSHOT_CHUNK_BYTES_MIN..=SNAPSHOT_CHUNK_BYTES_MAX)
            .contains(&args.snapshot_chunk_bytes)
        {
            return Err(bad(
                "--snapshot-chunk-bytes",
                format!(
                    "{} is outside {SNAPSHOT_CHUNK_BYTES_MIN}..={SNAPSHOT_CHUNK_BYTES_MAX}",
                    args.snapshot_chunk_bytes
                ),
            ));
        }
        if args.wal_segment_bytes < WAL_SEGMENT_BYTES_MIN {
            return Err(bad(
                "--wal-segment-bytes",
                format!(
                    "{} is below {WAL_SEGMENT_BYTES_MIN}",
                    args.wal_segment_bytes
                ),
            ));
        }

        let raft = RaftConfig {
            election_ticks_min,
            election_ticks_max,
            heartbeat_ticks,
            ..RaftConfig::default()
        };
        let limits = Limits {
            topic_bytes_max: args.topic_bytes_max,
            message_bytes_max: args.message_bytes_max,
            ..Limits::default()
        };
        let key_pair = node_key_pair(args, address)?;
        Ok(NodeConfig {
            id: NodeId(args.index),
            cluster: cluster.clone(),
            config_path: args.config.clone(),
            data_dir,
            fsync: args.fsync,
            sched_policy: args.sched_policy,
            tick: Duration::from_millis(tick_ms),
            raft,
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            limits,
            sessions_max,
            queued_bytes_max,
            topics_max,
            uncommitted_bytes_max: args.uncommitted_bytes_max,
            fault_injection: args.fault_injection,
            rejoin: args.rejoin,
            join: args.join,
            snapshot: SnapshotConfig {
                entries_max: args.snapshot_entries,
                log_bytes_max: args.snapshot_bytes,
                log_margin_entries: args.snapshot_log_margin,
                chunk_bytes: args.snapshot_chunk_bytes,
                send_bytes_per_second: args.snapshot_send_bytes_per_sec,
            },
            wal_segment_bytes_max: args.wal_segment_bytes,
            key_pair,
        })
    }

    /// The replicated state machine's settings, as every node of the cluster has them.
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            sessions_max: self.sessions_max,
            queued_bytes_max: self.queued_bytes_max,
            topics_max: self.topics_max,
            ..QueueConfig::default()
        }
    }

    /// This node's `metrics_port`, if its address has one (a member added later has none).
    pub fn metrics_port(&self) -> Option<u16> {
        let node = usize::try_from(self.id.0).ok()?;
        self.cluster.metrics_ports.get(node).copied().flatten()
    }

    /// This node's own addresses.
    pub fn address(&self) -> &Address {
        self.cluster
            .address(self.id)
            .expect("NodeConfig::new checked that the id is in range")
    }

    /// The hard cap on a client frame (ZMQ_MAXMSGSIZE): a body over it is refused by the
    /// socket layer before it is allocated. Bodies between the message limit and the cap get
    /// TOO_LARGE from the decoder. JSON escapes count against it.
    pub fn client_frame_bytes_max(&self) -> usize {
        self.limits.frame_bytes_max(FRAME_SLACK_BYTES)
    }

    /// The hard cap on a peer frame: one AppendEntries holds up to `append_bytes_max` of
    /// entries, and at least one entry however large, so one largest entry more.
    pub fn peer_frame_bytes_max(&self) -> usize {
        self.raft.append_bytes_max + self.client_frame_bytes_max() + FRAME_SLACK_BYTES
    }
}

/// A setting of the replicated state machine: the config's value, else the default. The
/// flag exists for scripts that pass one; one that disagrees with the config is refused,
/// since nodes with different values would diverge.
fn replicated_setting(
    (option, key): (&'static str, &str),
    flag: Option<usize>,
    config: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let bad = |reason: String| ConfigError::BadOption { option, reason };
    let value = match (flag, config) {
        (Some(flag), Some(config)) if flag != config => {
            return Err(bad(format!(
                "{flag} disagrees with the config's \"{key}\" {config}; every node must use \
                 the same number"
            )))
        }
        (Some(flag), _) => flag,
        (None, Some(config)) => config,
        (None, None) => default,
    };
    if value == 0 || value > max {
        return Err(bad(if max == usize::MAX {
            format!("{value} is below 1")
        } else {
            format!("{value} is outside 1..={max}")
        }));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const THREE_NODES: &str = r#"{
        "addresses": [
            {"ip": "127.0.0.1", "port": 8567, "internal_port": 8568},
            {"ip": "127.0.0.1", "port": 9123, "internal_port": 9124},
            {"ip": "127.0.0.1", "port": 8889, "internal_port": 8890}
        ]
    }"#;

    #[test]
    fn parses_the_protocol_example() {
        let config = ClusterConfig::parse(THREE_NODES, "config.json").expect("valid config");
        assert_eq!(config.node_count(), 3);
        assert_eq!(
            config.addresses[1],
            Address {
                ip: "127.0.0.1".into(),
                port: 9123,
                internal_port: 9124,
                public_key: None,
            }
        );
        assert_eq!(config.voters(), vec![NodeId(0), NodeId(1), NodeId(2)]);
        assert_eq!(config.address(NodeId(3)), None);
        assert_eq!(
            config.addresses[2].internal_endpoint(),
            "tcp://127.0.0.1:8890"
        );
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let text = r#"{"version": 7, "addresses": [
            {"ip": "::1", "port": 1, "internal_port": 2, "zone": "a"}], "extra": {}}"#;
        let config = ClusterConfig::parse(text, "c").expect("valid config");
        assert_eq!(config.addresses[0].client_endpoint(), "tcp://[::1]:1");
    }

    #[test]
    fn bad_files_give_one_clear_line() {
        let cases: &[(&str, &str)] = &[
            (
                "{",
                "c.json: invalid JSON: EOF while parsing an object at line 1 column 1",
            ),
            ("[]", "c.json: expected a JSON object, found a list"),
            ("{}", "c.json: missing \"addresses\""),
            (
                r#"{"addresses": 3}"#,
                "c.json: \"addresses\": expected a list, found a number",
            ),
            (r#"{"addresses": []}"#, "c.json: the address list is empty"),
            (
                r#"{"addresses": [{"ip": "a", "port": 70000, "internal_port": 2}]}"#,
                "c.json: addresses[0].port: 70000 is not a valid port (1-65535)",
            ),
            (
                r#"{"addresses": [{"ip": "a", "port": 1, "internal_port": 0}]}"#,
                "c.json: addresses[0].internal_port: 0 is not a valid port (1-65535)",
            ),
            (
                r#"{"addresses": [{"ip": "a", "port": "80", "internal_port": 2}]}"#,
                "c.json: addresses[0].port: \"80\" is not a valid port (1-65535)",
            ),
            (
                r#"{"addresses": [{"ip": "a", "port": -1, "internal_port": 2}]}"#,
                "c.json: addresses[0].port: -1 is not a valid port (1-65535)",
            ),
            (
                r#"{"addresses": [{"ip": "a", "port": 1.5, "internal_port": 2}]}"#,
                "c.json: addresses[0].port: 1.5 is not a valid port (1-65535)",
            ),
            (
                r#"{"addresses": [{"ip": "a", "internal_port": 2}]}"#,
                "c.json: addresses[0]: missing \"port\"",
            ),
            (
                r#"{"addresses": [{"ip": "", "port": 1, "internal_port": 2}]}"#,
                "c.json: addresses[0].ip: empty",
            ),
            (
                r#"{"addresses": [{"ip": 5, "port": 1, "internal_port": 2}]}"#,
                "c.json: addresses[0].ip: expected a string, found a number",
            ),
            (
                r#"{"addresses": ["x"]}"#,
                "c.json: addresses[0]: expected an object, found a string",
            ),
            (
                r#"{"addresses": [
                    {"ip": "127.0.0.1", "port": 1, "internal_port": 2},
                    {"ip": "127.0.0.1", "port": 1, "internal_port": 3}]}"#,
                "c.json: duplicate address 127.0.0.1:1 (addresses[0] and addresses[1])",
            ),
            (
                r#"{"addresses": [{"ip": "h", "port": 1, "internal_port": 1}]}"#,
                "c.json: duplicate address h:1 (addresses[0] and addresses[0])",
            ),
            (
                r#"{"addresses": [
                    {"ip": "::1", "port": 1, "internal_port": 2},
                    {"ip": "0:0::1", "port": 3, "internal_port": 2}]}"#,
                "c.json: duplicate address [0:0::1]:2 (addresses[0] and addresses[1])",
            ),
            (
                r#"{"addresses": [
                    {"ip": "LocalHost", "port": 1, "internal_port": 2},
                    {"ip": "localhost", "port": 2, "internal_port": 3}]}"#,
                "c.json: duplicate address localhost:2 (addresses[0] and addresses[1])",
            ),
        ];
        for (number, (text, expected)) in cases.iter().enumerate() {
            let error = ClusterConfig::parse(text, "c.json").expect_err(text);
            assert_eq!(error.to_string(), *expected, "case {number}: {text}");
            assert!(!error.to_string().contains('\n'), "case {number}: one line");
        }
    }

    #[test]
    fn clients_are_refused_while_the_addresses_carry_no_keys() {
        let key = zmq::z85_encode(&[1; 32]).expect("encode");
        let text = format!(
            r#"{{"addresses": [{{"ip": "127.0.0.1", "port": 1, "internal_port": 2}}],
                "clients": [{{"name": "alice", "public_key": "{key}", "produce": ["o*"]}}]}}"#
        );
        let error = ClusterConfig::parse(&text, "c.json").expect_err("no peer keys");
        assert_eq!(
            error.to_string(),
            "c.json: \"clients\" needs the addresses to carry \"public_key\" (PROTOCOL.md §11)"
        );
        // A wrong list is named before that, so one pass shows what to fix in it.
        let bad = text.replace("o*", "o*x");
        let error = ClusterConfig::parse(&bad, "c.json").expect_err("bad pattern");
        assert_eq!(
            error.to_string(),
            "c.json: clients[0].produce[0]: \"o*x\": a '*' is allowed only at the end"
        );
        let config = ClusterConfig::parse(THREE_NODES, "c.json").expect("valid config");
        assert_eq!(config.clients, None);
    }

    #[test]
    fn metrics_port_is_optional_per_address_and_outside_the_cluster_id() {
        let plain = r#"{"addresses": [
            {"ip": "127.0.0.1", "port": 1, "internal_port": 2},
            {"ip": "127.0.0.1", "port": 3, "internal_port": 4}]}"#;
        let with_metrics = r#"{"addresses": [
            {"ip": "127.0.0.1", "port": 1, "internal_port": 2, "metrics_port": 5},
            {"ip": "127.0.0.1", "port": 3, "internal_port": 4}]}"#;
        let plain = ClusterConfig::parse(plain, "c").expect("valid config");
        let with_metrics = ClusterConfig::parse(with_metrics, "c").expect("valid config");
        assert_eq!(plain.metrics_ports, vec![None, None]);
        assert_eq!(with_metrics.metrics_ports, vec![Some(5), None]);
        assert_eq!(plain.cluster_id, with_metrics.cluster_id);
        let cases = [
            (
                r#"{"addresses": [{"ip": "h", "port": 1, "internal_port": 2, "metrics_port": 0}]}"#,
                "c.json: addresses[0].metrics_port: 0 is not a valid port (1-65535)",
            ),
            (
                r#"{"addresses": [{"ip": "h", "port": 1, "internal_port": 2, "metrics_port": "x"}]}"#,
                "c.json: addresses[0].metrics_port: \"x\" is not a valid port (1-65535)",
            ),
            (
                r#"{"addresses": [{"ip": "h", "port": 1, "internal_port": 2, "metrics_port": 2}]}"#,
                "c.json: duplicate address h:2 (addresses[0] and addresses[0])",
            ),
            (
                r#"{"addresses": [
                    {"ip": "h", "port": 1, "internal_port": 2, "metrics_port": 9},
                    {"ip": "h", "port": 3, "internal_port": 4, "metrics_port": 9}]}"#,
                "c.json: duplicate address h:9 (addresses[0] and addresses[1])",
            ),
        ];
        for (text, expected) in cases {
            let error = ClusterConfig::parse(text, "c.json").expect_err(text);
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn different_hosts_on_one_port_are_not_duplicates() {
        let text = r#"{"addresses": [
            {"ip": "127.0.0.1", "port": 1, "internal_port": 2},
            {"ip": "127.0.0.2", "port": 1, "internal_port": 2}]}"#;
        assert!(ClusterConfig::parse(text, "c").is_ok());
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let error = ClusterConfig::load(Path::new("/nonexistent/config.json")).expect_err("");
        assert!(
            error
                .to_string()
                .starts_with("/nonexistent/config.json: cannot read: "),
            "{error}"
        );
    }

    #[test]
    fn cluster_id_is_stable_and_depends_on_every_address_field() {
        let base = ClusterConfig::parse(THREE_NODES, "c")
            .expect("valid")
            .cluster_id;
        // Pinned: nodes built by different compilers and versions must agree.
        assert_eq!(base, 0xcff6_d5bc_9fd3_e81a);
        assert_eq!(base, cluster_id_reference(THREE_NODES));
        let variants = [
            THREE_NODES.replace("8567", "8569"),
            THREE_NODES.replace("8568", "8569"),
            THREE_NODES.replace(
                "\"127.0.0.1\", \"port\": 9123",
                "\"127.0.0.2\", \"port\": 9123",
            ),
            // Same addresses, another order: another cluster (ids would differ).
            r#"{"addresses": [
                {"ip": "127.0.0.1", "port": 9123, "internal_port": 9124},
                {"ip": "127.0.0.1", "port": 8567, "internal_port": 8568},
                {"ip": "127.0.0.1", "port": 8889, "internal_port": 8890}]}"#
                .to_string(),
        ];
        for (number, text) in variants.iter().enumerate() {
            let other = ClusterConfig::parse(text, "c").expect("valid").cluster_id;
            assert_ne!(other, base, "case {number}");
        }
    }

    /// THREE_NODES with a public key on every address (`keys` of them, from the first).
    fn keyed(pairs: &[keys::KeyPair], count: usize) -> String {
        let mut text = THREE_NODES.to_string();
        for (number, port) in ["8568", "9124", "8890"].iter().enumerate().take(count) {
            let key = keys::z85_encode(&pairs[number].public);
            text = text.replacen(
                &format!("\"internal_port\": {port}"),
                &format!("\"internal_port\": {port}, \"public_key\": \"{key}\""),
                1,
            );
        }
        text
    }

    #[test]
    fn public_keys_are_all_or_none_and_folded_into_the_cluster_id() {
        let pairs: Vec<keys::KeyPair> = (0..3)
            .map(|_| keys::KeyPair::generate().expect("keypair"))
            .collect();
        let plain = ClusterConfig::parse(THREE_NODES, "c").expect("valid");
        assert!(!plain.is_keyed());
        assert!(plain.peer_keys().is_none());
        let full = ClusterConfig::parse(&keyed(&pairs, 3), "c").expect("valid");
        assert!(full.is_keyed());
        assert_eq!(full.addresses[1].public_key, Some(pairs[1].public));
        assert_ne!(full.cluster_id, plain.cluster_id);
        let error = ClusterConfig::parse(&keyed(&pairs, 2), "c").expect_err("some keys");
        assert!(error.to_string().contains("addresses[2]"), "{error}");
        let bad = THREE_NODES.replacen("8568", "8568, \"public_key\": \"short\"", 1);
        let error = ClusterConfig::parse(&bad, "c").expect_err("bad key");
        assert!(error.to_string().contains("public_key"), "{error}");
    }

    #[test]
    fn a_keyed_node_needs_its_own_matching_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pairs: Vec<keys::KeyPair> = (0..3)
            .map(|_| keys::KeyPair::generate().expect("keypair"))
            .collect();
        let cluster = ClusterConfig::parse(&keyed(&pairs, 3), "config.json").expect("valid");
        let own = dir.path().join("own.key");
        std::fs::write(&own, format!("{}\n", keys::z85_encode(&pairs[1].secret))).expect("write");
        let other = dir.path().join("other.key");
        std::fs::write(&other, format!("{}\n", keys::z85_encode(&pairs[0].secret))).expect("write");
        let with = |extra: &[&str]| NodeConfig::new(&args(extra).expect("flags"), cluster.clone());
        let config = with(&["--key-file", own.to_str().expect("utf-8")]).expect("valid");
        assert_eq!(config.key_pair, Some(pairs[1].clone()));
        for extra in [
            vec![],
            vec!["--key-file", other.to_str().expect("utf-8")],
            vec!["--key-file", "/nonexistent/key"],
        ] {
            let error = with(&extra).expect_err("refused");
            assert!(error.to_string().starts_with("--key-file: "), "{error}");
        }
        let error = node_config(&["--key-file", own.to_str().expect("utf-8")]).expect_err("plain");
        assert!(error.to_string().starts_with("--key-file: "), "{error}");
    }

    /// FNV-1a written out independently of `cluster_id`'s closure, as a cross-check.
    fn cluster_id_reference(text: &str) -> u64 {
        let config = ClusterConfig::parse(text, "c").expect("valid");
        let mut bytes = Vec::new();
        for address in &config.addresses {
            bytes.extend_from_slice(address.ip.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(&address.port.to_be_bytes());
            bytes.extend_from_slice(&address.internal_port.to_be_bytes());
            bytes.push(0xff);
        }
        bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    fn args(extra: &[&str]) -> Result<NodeArgs, clap::Error> {
        let mut argv = vec!["rrmq-node", "config.json", "1"];
        argv.extend_from_slice(extra);
        NodeArgs::try_parse_from(argv)
    }

    fn node_config(extra: &[&str]) -> Result<NodeConfig, ConfigError> {
        let cluster = ClusterConfig::parse(THREE_NODES, "config.json").expect("valid");
        NodeConfig::new(&args(extra).expect("flags parse"), cluster)
    }

    #[test]
    fn sessions_max_comes_from_the_shared_config_and_a_disagreeing_flag_is_refused() {
        let with_key = THREE_NODES.replacen('{', r#"{"sessions_max": 3,"#, 1);
        let cluster = ClusterConfig::parse(&with_key, "config.json").expect("valid");
        assert_eq!(cluster.sessions_max, Some(3));
        let from_config =
            NodeConfig::new(&args(&[]).expect("flags parse"), cluster.clone()).expect("valid");
        assert_eq!(from_config.sessions_max, 3);
        let agreeing = NodeConfig::new(
            &args(&["--sessions-max", "3"]).expect("flags parse"),
            cluster.clone(),
        )
        .expect("a flag equal to the config is fine");
        assert_eq!(agreeing.sessions_max, 3);
        let error = NodeConfig::new(
            &args(&["--sessions-max", "4"]).expect("flags parse"),
            cluster,
        )
        .expect_err("a disagreeing flag is refused");
        assert!(error.to_string().contains("disagrees"), "{error}");
        assert_eq!(
            node_config(&[]).expect("valid").sessions_max,
            SESSIONS_MAX_DEFAULT
        );
        for bad in ["0", "-1", "\"10\"", "1.5", "99999999999"] {
            let text = THREE_NODES.replacen('{', &format!(r#"{{"sessions_max": {bad},"#), 1);
            let error = ClusterConfig::parse(&text, "config.json").expect_err(bad);
            assert!(error.to_string().contains("sessions_max"), "{bad}: {error}");
        }
    }

    #[test]
    fn quotas_come_from_the_shared_config_and_a_disagreeing_flag_is_refused() {
        let with_keys =
            THREE_NODES.replacen('{', r#"{"queued_bytes_max": 10240, "topics_max": 3,"#, 1);
        let cluster = ClusterConfig::parse(&with_keys, "config.json").expect("valid");
        assert_eq!(cluster.queued_bytes_max, Some(10240));
        assert_eq!(cluster.topics_max, Some(3));
        let from_config =
            NodeConfig::new(&args(&[]).expect("flags parse"), cluster.clone()).expect("valid");
        assert_eq!(
            from_config.queue_config(),
            QueueConfig {
                queued_bytes_max: 10240,
                topics_max: 3,
                ..QueueConfig::default()
            }
        );
        let agreeing = NodeConfig::new(
            &args(&["--queued-bytes-max", "10240", "--topics-max", "3"]).expect("flags parse"),
            cluster.clone(),
        )
        .expect("flags equal to the config are fine");
        assert_eq!(agreeing.queue_config(), from_config.queue_config());
        for (flags, expected) in [
            (
                ["--queued-bytes-max", "10241"],
                "--queued-bytes-max: 10241 disagrees with the config's \"queued_bytes_max\" \
                 10240; every node must use the same number",
            ),
            (
                ["--topics-max", "4"],
                "--topics-max: 4 disagrees with the config's \"topics_max\" 3; every node \
                 must use the same number",
            ),
        ] {
            let error = NodeConfig::new(&args(&flags).expect("flags parse"), cluster.clone())
                .expect_err("a disagreeing flag is refused");
            assert_eq!(error.to_string(), expected);
        }
        // Without the keys: the flag, else the documented defaults.
        let defaults = node_config(&[]).expect("valid");
        assert_eq!(defaults.queued_bytes_max, 2 * 1024 * 1024 * 1024);
        assert_eq!(defaults.topics_max, 10_000);
        assert_eq!(defaults.queue_config(), QueueConfig::default());
        let flagged = node_config(&["--queued-bytes-max", "5", "--topics-max", "6"]).expect("ok");
        assert_eq!((flagged.queued_bytes_max, flagged.topics_max), (5, 6));

        let cases = [
            (
                "queued_bytes_max",
                "0",
                "expected a whole number of at least 1, found 0",
            ),
            (
                "queued_bytes_max",
                "-1",
                "expected a whole number of at least 1, found -1",
            ),
            (
                "queued_bytes_max",
                "\"8GiB\"",
                "expected a whole number of at least 1",
            ),
            (
                "queued_bytes_max",
                "1.5",
                "expected a whole number of at least 1",
            ),
            (
                "topics_max",
                "0",
                "expected a whole number in 1..=1048576, found 0",
            ),
            (
                "topics_max",
                "1048577",
                "expected a whole number in 1..=1048576",
            ),
            (
                "topics_max",
                "null",
                "expected a whole number in 1..=1048576, found null",
            ),
        ];
        for (key, bad, expected) in cases {
            let text = THREE_NODES.replacen('{', &format!(r#"{{"{key}": {bad},"#), 1);
            let error = ClusterConfig::parse(&text, "config.json").expect_err(bad);
            let line = error.to_string();
            assert!(
                line.starts_with(&format!("config.json: \"{key}\": {expected}")),
                "{key} = {bad}: {line}"
            );
        }
    }

    #[test]
    fn defaults_give_the_documented_timing() {
        let config = node_config(&[]).expect("defaults are valid");
        assert_eq!(config.id, NodeId(1));
        assert_eq!(config.data_dir, PathBuf::from("data/127.0.0.1-9123"));
        assert_eq!(config.fsync, FsyncMode::Always);
        assert_eq!(config.tick, Duration::from_millis(10));
        assert_eq!(config.raft.heartbeat_ticks, 5);
        assert_eq!(config.raft.election_ticks_min, 30);
        assert_eq!(config.raft.election_ticks_max, 60);
        assert_eq!(config.request_timeout, Duration::from_millis(2000));
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.address().port, 9123);
        assert_eq!(config.snapshot, SnapshotConfig::default());
        assert_eq!(config.wal_segment_bytes_max, WAL_SEGMENT_BYTES_DEFAULT);
        assert_eq!(config.uncommitted_bytes_max, 64 * 1024 * 1024);
    }

    #[test]
    fn flags_are_applied() {
        let config = node_config(&[
            "--data-dir",
            "/tmp/x",
            "--fsync",
            "never",
            "--tick-ms",
            "5",
            "--heartbeat-ms",
            "20",
            "--election-timeout-ms",
            "100-200",
            "--request-timeout-ms",
            "500",
            "--topic-bytes-max",
            "10",
            "--message-bytes-max",
            "100",
            "--sessions-max",
            "7",
            "--snapshot-entries",
            "500",
            "--snapshot-bytes",
            "65536",
            "--snapshot-log-margin",
            "0",
            "--snapshot-chunk-bytes",
            "4096",
            "--snapshot-send-bytes-per-sec",
            "1000000",
            "--wal-segment-bytes",
            "8192",
            "--uncommitted-bytes-max",
            "1000",
        ])
        .expect("valid flags");
        assert_eq!(config.uncommitted_bytes_max, 1000);
        assert_eq!(
            config.snapshot,
            SnapshotConfig {
                entries_max: 500,
                log_bytes_max: 65536,
                log_margin_entries: 0,
                chunk_bytes: 4096,
                send_bytes_per_second: 1_000_000,
            }
        );
        assert_eq!(config.wal_segment_bytes_max, 8192);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.fsync, FsyncMode::Never);
        assert_eq!(config.raft.heartbeat_ticks, 4);
        assert_eq!(config.raft.election_ticks_min, 20);
        assert_eq!(config.raft.election_ticks_max, 40);
        assert_eq!(config.request_timeout, Duration::from_millis(500));
        assert_eq!(config.limits.topic_bytes_max, 10);
        assert_eq!(config.limits.message_bytes_max, 100);
        assert_eq!(config.sessions_max, 7);
        assert!(config.client_frame_bytes_max() > 100);
        assert!(config.peer_frame_bytes_max() > config.raft.append_bytes_max + 100);
    }

    #[test]
    fn bad_flag_combinations_are_refused() {
        let cases: &[(&[&str], &str)] = &[
            (&["--tick-ms", "0"], "--tick-ms: must be at least 1"),
            (
                &["--heartbeat-ms", "5"],
                "--heartbeat-ms: 5 ms is shorter than one tick (10 ms)",
            ),
            (
                &["--heartbeat-ms", "300"],
                "--heartbeat-ms: 300 ms must be below the minimum election timeout (300 ms), \
                 or followers start elections against a live leader",
            ),
            (
                &["--election-timeout-ms", "300-300"],
                "--election-timeout-ms: the maximum (300 ms) must exceed the minimum (300 ms) \
                 by at least one tick (10 ms), or every node times out at once and elections \
                 split",
            ),
            (
                &["--election-timeout-ms", "600-300"],
                "--election-timeout-ms: the maximum (300 ms) must exceed the minimum (600 ms) \
                 by at least one tick (10 ms), or every node times out at once and elections \
                 split",
            ),
            (
                &["--request-timeout-ms", "0"],
                "--request-timeout-ms: must be at least 1",
            ),
            (
                &["--topic-bytes-max", "0"],
                "--topic-bytes-max: 0 is outside 1..=65536",
            ),
            (
                &["--message-bytes-max", "0"],
                "--message-bytes-max: 0 is outside 1..=67108864",
            ),
            (
                &["--sessions-max", "0"],
                "--sessions-max: 0 is outside 1..=16777216",
            ),
            (
                &["--queued-bytes-max", "0"],
                "--queued-bytes-max: 0 is below 1",
            ),
            (
                &["--topics-max", "0"],
                "--topics-max: 0 is outside 1..=1048576",
            ),
            (
                &["--topics-max", "1048577"],
                "--topics-max: 1048577 is outside 1..=1048576",
            ),
            (
                &["--uncommitted-bytes-max", "0"],
                "--uncommitted-bytes-max: must be at least 1",
            ),
            (
                &["--snapshot-entries", "0"],
                "--snapshot-entries: must be at least 1",
            ),
            (
                &["--snapshot-bytes", "0"],
                "--snapshot-bytes: must be at least 1",
            ),
            (
                &["--snapshot-log-margin", "10000001"],
                "--snapshot-log-margin: 10000001 is over 10000000",
            ),
            (
                &["--snapshot-chunk-bytes", "100"],
                "--snapshot-chunk-bytes: 100 is outside 1024..=1048576",
            ),
            (
                &["--snapshot-chunk-bytes", "2000000"],
                "--snapshot-chunk-bytes: 2000000 is outside 1024..=1048576",
            ),
            (
                &["--wal-segment-bytes", "100"],
                "--wal-segment-bytes: 100 is below 4096",
            ),
        ];
        for (number, (flags, expected)) in cases.iter().enumerate() {
            let error = node_config(flags).expect_err("must be refused");
            assert_eq!(error.to_string(), *expected, "case {number}: {flags:?}");
        }
    }

    #[test]
    fn index_out_of_range_names_the_node_count() {
        let cluster = ClusterConfig::parse(THREE_NODES, "config.json").expect("valid");
        let args = NodeArgs::try_parse_from(["rrmq-node", "config.json", "5"]).expect("parses");
        let error = NodeConfig::new(&args, cluster).expect_err("out of range");
        assert_eq!(
            error.to_string(),
            "config.json: index 5 out of range (3 nodes)"
        );
    }

    #[test]
    fn malformed_flags_are_refused_by_the_parser() {
        let cases: &[&[&str]] = &[
            &["--fsync", "sometimes"],
            &["--election-timeout-ms", "300"],
            &["--election-timeout-ms", "a-b"],
            &["--tick-ms", "-1"],
        ];
        for (number, flags) in cases.iter().enumerate() {
            assert!(args(flags).is_err(), "case {number}: {flags:?}");
        }
        assert!(NodeArgs::try_parse_from(["rrmq-node", "c.json", "-1"]).is_err());
        assert!(NodeArgs::try_parse_from(["rrmq-node", "c.json"]).is_err());
    }
}
