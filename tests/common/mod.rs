//! Helpers for end-to-end tests on the real binaries: clusters of `rrmq-node` child
//! processes (the library's launcher) on free loopback ports, each in its own temp dir,
//! killed and reaped on drop; raw ZeroMQ clients that speak the wire format directly (so the
//! tests check bytes, not a client library); and runs of the `rrmq` command.
//!
//! Everything waits by polling with generous deadlines: the tests must pass on a loaded
//! 2-core machine. At most two clusters run at once per test binary.
#![allow(dead_code)]

use rrmq::cli::launcher::{write_config, LocalCluster, NodePorts, NodeSetup};
use rrmq::config::keys::{self, KeyPair};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub const RRMQ_NODE: &str = env!("CARGO_BIN_EXE_rrmq-node");
pub const RRMQ: &str = env!("CARGO_BIN_EXE_rrmq");

/// Generous: elections take 300-600 ms, but a loaded machine stretches everything.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(20);
pub const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// Timing flags for test nodes: the defaults, durable storage off for speed unless a test
/// asks for it.
pub const FAST_FLAGS: &[&str] = &["--fsync", "never", "--request-timeout-ms", "3000"];

// ---- At most two clusters at once ---------------------------------------------------------

static RUNNING: Mutex<usize> = Mutex::new(0);
static RUNNING_CHANGED: Condvar = Condvar::new();
const CLUSTERS_AT_ONCE_MAX: usize = 2;

pub struct Permit;

impl Permit {
    pub fn acquire() -> Permit {
        let mut running = RUNNING.lock().unwrap_or_else(|poison| poison.into_inner());
        while *running >= CLUSTERS_AT_ONCE_MAX {
            running = RUNNING_CHANGED
                .wait(running)
                .unwrap_or_else(|poison| poison.into_inner());
        }
        *running += 1;
        Permit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|poison| poison.into_inner());
        *running -= 1;
        RUNNING_CHANGED.notify_one();
    }
}

// ---- Cluster --------------------------------------------------------------------------------

/// A cluster of `rrmq-node` children on loopback ([`LocalCluster`], the launcher `rrmq
/// cluster` uses), in its own temp dir: node INDEX keeps its data in `DIR/node-INDEX` and
/// appends its output to `DIR/node-INDEX.log`. Nodes are killed (SIGKILL) and reaped on drop.
pub struct Cluster {
    /// The node processes: spawn, signal, kill and reap single nodes here.
    pub nodes: LocalCluster,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub ports: Vec<NodePorts>,
    /// A keyed cluster's key pairs, node INDEX's at INDEX (its key file is
    /// `DIR/node-INDEX.key`); empty for a plain one.
    pub keys: Vec<KeyPair>,
    /// With a `clients` list ([`Cluster::start_with_clients`]): each listed client's name and
    /// key pair (its key file is `DIR/client-NAME.key`), the harness's own admin client
    /// `harness` first, which [`Cluster::client`] uses.
    pub client_keys: Vec<(String, KeyPair)>,
    /// Held for the cluster's life; `None` only while a failed start hands it on.
    permit: Option<Permit>,
}

impl Cluster {
    /// A DEALER on node `index`'s peer (internal) port, as a peer's would be, for tests that
    /// forge peer frames: a CURVE client with `keys` (expecting the node's real public key),
    /// or plain. Frames still queued when it is dropped are sent within a second.
    pub fn peer_dealer(
        &self,
        context: &zmq::Context,
        index: usize,
        keys: Option<&KeyPair>,
    ) -> zmq::Socket {
        let dealer = context.socket(zmq::DEALER).expect("DEALER");
        dealer.set_linger(1000).expect("linger");
        if let Some(keys) = keys {
            dealer
                .set_curve_serverkey(&self.keys[index].public)
                .expect("server key");
            dealer
                .set_curve_publickey(&keys.public)
                .expect("public key");
            dealer
                .set_curve_secretkey(&keys.secret)
                .expect("secret key");
        }
        dealer
            .connect(&format!(
                "tcp://127.0.0.1:{}",
                self.ports[index].internal_port
            ))
            .expect("connect to the peer port");
        dealer
    }

    /// Starts `size` nodes with [`FAST_FLAGS`] and waits until each answers `status`.
    pub fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &[])
    }

    pub fn start_with(size: usize, flags: &[&str]) -> Cluster {
        Cluster::start_on("127.0.0.1", size, flags)
    }

    /// As [`Cluster::start_with`], with `host` written as every node's `ip`.
    pub fn start_on(host: &str, size: usize, flags: &[&str]) -> Cluster {
        Cluster::start_configured_on(host, size, flags, &json!({}))
    }

    /// As [`Cluster::start_with`], keyed (PROTOCOL.md §11): fresh key pairs, each address
    /// carrying its node's public key, each node started with `--key-file`.
    pub fn start_keyed(size: usize, flags: &[&str]) -> Cluster {
        Cluster::start_all("127.0.0.1", size, flags, &json!({}), true, &[])
    }

    /// As [`Cluster::start_keyed`], with a `clients` list (PROTOCOL.md §11): `clients` are
    /// (name, rights) where rights is a JSON object of `produce`, `consume`, `admin`; each
    /// gets a fresh key pair and key file `DIR/client-NAME.key`. A client `harness` with every
    /// right is listed first, for the harness's own requests.
    pub fn start_with_clients(size: usize, flags: &[&str], clients: &[(&str, Value)]) -> Cluster {
        Cluster::start_all("127.0.0.1", size, flags, &json!({}), true, clients)
    }

    /// As [`Cluster::start_with`], with the keys of `settings` (a JSON object) added to the
    /// config file every node reads: the settings all nodes share (`sessions_max`, quotas).
    pub fn start_configured(size: usize, flags: &[&str], settings: &Value) -> Cluster {
        Cluster::start_configured_on("127.0.0.1", size, flags, settings)
    }

    fn start_configured_on(host: &str, size: usize, flags: &[&str], settings: &Value) -> Cluster {
        Cluster::start_all(host, size, flags, settings, false, &[])
    }

    /// As [`Cluster::start_with`], each address with a free `metrics_port` (see
    /// [`Cluster::metrics_address`]).
    pub fn start_with_metrics(size: usize, flags: &[&str]) -> Cluster {
        Cluster::start_all(
            "127.0.0.1",
            size,
            flags,
            &json!({ METRICS_PORTS: true }),
            false,
            &[],
        )
    }

    /// `127.0.0.1:PORT`: node `index`'s `metrics_port` (a cluster started with
    /// [`Cluster::start_with_metrics`]).
    pub fn metrics_address(&self, index: usize) -> String {
        let text = std::fs::read_to_string(&self.config_path).expect("read the config");
        let config: Value = serde_json::from_str(&text).expect("the config is JSON");
        let port = config["addresses"][index]["metrics_port"]
            .as_u64()
            .expect("the cluster was started with metrics ports");
        format!("127.0.0.1:{port}")
    }

    fn start_all(
        host: &str,
        size: usize,
        flags: &[&str],
        settings: &Value,
        keyed: bool,
        clients: &[(&str, Value)],
    ) -> Cluster {
        let flags_all: Vec<OsString> = FAST_FLAGS.iter().chain(flags).map(OsString::from).collect();
        // Another process may take a port between our check and the node's bind: retry.
        let mut permit = Some(Permit::acquire());
        for attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let (config_path, ports) =
                write_config(dir.path(), host, size).expect("write the config");
            add_settings(&config_path, settings);
            let mut setup = NodeSetup::new(
                RRMQ_NODE.into(),
                config_path.clone(),
                dir.path().to_path_buf(),
            );
            let keys = if keyed {
                let (keys, files) = add_keys(&config_path, dir.path(), size);
                setup.key_files = files;
                keys
            } else {
                Vec::new()
            };
            let client_keys = if clients.is_empty() {
                Vec::new()
            } else {
                add_clients(&config_path, dir.path(), clients)
            };
            setup.flags = flags_all.clone();
            setup.env = vec![("RUST_LOG".into(), "info".into())];
            setup.log_dir = Some(dir.path().to_path_buf());
            // A test's nodes are killed at its end; nothing they would do on SIGTERM matters.
            setup.stop_grace = Duration::ZERO;
            let mut cluster = Cluster {
                nodes: LocalCluster::load(setup).expect("a valid generated config"),
                dir,
                config_path,
                ports,
                keys,
                client_keys,
                permit: permit.take(),
            };
            for index in 0..size {
                cluster.spawn(index);
            }
            if cluster.wait_all_up(LEADER_DEADLINE) {
                return cluster;
            }
            cluster.kill_all();
            let logs: String = (0..size).map(|index| cluster.log(index)).collect();
            if !logs.contains("cannot bind") {
                cluster.dump_logs();
                panic!("a cluster of {size} did not start");
            }
            eprintln!("cluster start attempt {attempt}: a port was taken; retrying on others");
            permit = cluster.permit.take();
        }
        panic!("could not start a cluster of {size}");
    }

    pub fn size(&self) -> usize {
        self.nodes.size()
    }

    pub fn log_path(&self, index: usize) -> PathBuf {
        self.nodes
            .setup()
            .log_path(index)
            .expect("test nodes log to files")
    }

    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.nodes.setup().data_dir(index)
    }

    /// Starts node `index` (again), appending its output to its log file.
    pub fn spawn(&mut self, index: usize) {
        self.spawn_with(index, &[]);
    }

    /// Starts node `index` (again) with flags on top of the cluster's own.
    pub fn spawn_with(&mut self, index: usize, flags: &[&str]) {
        if let Err(error) = self.nodes.spawn(index, flags) {
            panic!("spawn rrmq-node: {error}");
        }
    }

    /// Waits until every running node answers `status`; false if one exited or time ran out.
    pub fn wait_all_up(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        for index in 0..self.size() {
            loop {
                if let Some(status) = self.nodes.exited(index) {
                    eprintln!("node {index} exited early: {status}");
                    return false;
                }
                if self.status(index, Duration::from_millis(500)).is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    return false;
                }
            }
        }
        true
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, index: usize) {
        self.nodes.kill(index);
    }

    pub fn kill_all(&mut self) {
        for index in 0..self.size() {
            self.kill(index);
        }
    }

    pub fn signal(&mut self, index: usize, signal: libc::c_int) {
        if let Err(error) = self.nodes.signal(index, signal) {
            panic!("signal {signal} to node {index}: {error}");
        }
    }

    /// Sends SIGTERM and waits for the exit; `None` if it did not exit within `within`.
    pub fn terminate(&mut self, index: usize, within: Duration) -> Option<(ExitStatus, Duration)> {
        self.signal(index, libc::SIGTERM);
        let started = Instant::now();
        let status = self.nodes.wait_exit(index, within)?;
        Some((status, started.elapsed()))
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.nodes.is_running(index)
    }

    pub fn client(&self, index: usize) -> Client {
        match self.client_keys.first() {
            Some((_, pair)) => self.client_as(index, Some(pair)),
            None => Client::connect(self.ports[index].port),
        }
    }

    /// A client of node `index` with `keys` (a CURVE client expecting the node's real public
    /// key), or plain.
    pub fn client_as(&self, index: usize, keys: Option<&KeyPair>) -> Client {
        let curve = keys.map(|pair| (self.keys[index].public, pair.clone()));
        Client::connect_with(self.ports[index].port, curve)
    }

    /// The key pair of the listed client `name`.
    pub fn client_key(&self, name: &str) -> &KeyPair {
        self.client_keys
            .iter()
            .find(|(listed, _)| listed == name)
            .map(|(_, pair)| pair)
            .unwrap_or_else(|| panic!("no client {name}"))
    }

    /// `options` for the client library as the listed client `name` (CURVE with its key,
    /// the nodes' public keys from the config); unchanged on a cluster without `clients`.
    pub fn library_options_as(
        &self,
        name: &str,
        options: rrmq::client::ClientOptions,
    ) -> rrmq::client::ClientOptions {
        if self.client_keys.is_empty() {
            return options;
        }
        let config = rrmq::config::ClusterConfig::load(&self.config_path).expect("the config");
        options
            .with_key_pair(&config, self.client_key(name).clone())
            .expect("loopback addresses")
    }

    /// The key file of the listed client `name`.
    pub fn client_key_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("client-{name}.key"))
    }

    /// The node's v2 status, or None if it did not answer in time.
    pub fn status(&self, index: usize, within: Duration) -> Option<Value> {
        let mut client = self.client(index);
        client.call_with_timeout(
            Wire::MsgPack,
            &json!({"type": "status", "method": "GET", "v": 2}),
            within,
        )
    }

    /// Polls until exactly one running node is leader and every running node that answers
    /// agrees on its term. Returns its index and term.
    pub fn wait_for_leader(&self, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.leader_now() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no single leader within {within:?}; statuses: {:?}",
                self.statuses()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn statuses(&self) -> Vec<Option<Value>> {
        (0..self.size())
            .map(|index| {
                if self.is_running(index) {
                    self.status(index, Duration::from_millis(1000))
                } else {
                    None
                }
            })
            .collect()
    }

    /// One leader among the running nodes, all of which answer and agree on the term.
    pub fn leader_now(&self) -> Option<(usize, u64)> {
        let statuses = self.statuses();
        let mut leaders = Vec::new();
        let mut terms = Vec::new();
        for (index, status) in statuses.iter().enumerate() {
            if !self.is_running(index) {
                continue;
            }
            let status = status.as_ref()?;
            let term = status["term"].as_u64()?;
            terms.push(term);
            if status["role"] == "Leader" {
                leaders.push((index, term));
            }
        }
        match leaders.as_slice() {
            [(index, term)] if terms.iter().all(|other| other == term) => Some((*index, *term)),
            _ => None,
        }
    }

    /// Prints the tail of every node's log (on failure).
    pub fn dump_logs(&self) {
        for index in 0..self.size() {
            let mut text = String::new();
            if let Ok(mut file) = File::open(self.log_path(index)) {
                let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
                let _ = file.seek(SeekFrom::Start(length.saturating_sub(6000)));
                let _ = file.read_to_string(&mut text);
            }
            eprintln!("---- node {index} log (tail) ----\n{text}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.kill_all();
    }
}

// ---- The rrmq command -----------------------------------------------------------------------

/// How long a cluster may take to elect its first leader when watched through `rrmq`
/// processes (each poll starts one) on a loaded machine.
pub const CLI_LEADER_DEADLINE: Duration = Duration::from_secs(60);

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

    pub fn json(&self) -> Value {
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

impl Cluster {
    /// `rrmq --config CONFIG ARGS`.
    pub fn rrmq(&self, args: &[&str]) -> Run {
        self.rrmq_with_stdin(args, b"")
    }

    pub fn rrmq_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let config = self.config_path.to_str().expect("a UTF-8 temp path");
        let mut full = vec!["--config", config, "--timeout", "30s"];
        full.extend_from_slice(args);
        rrmq(&full, stdin, self.dir.path())
    }

    /// Polls `rrmq status --json` until exactly one node says it leads; returns its id.
    pub fn wait_for_leader_via_rrmq(&self) -> u64 {
        let config = self.config_path.to_str().expect("a UTF-8 temp path");
        let deadline = Instant::now() + CLI_LEADER_DEADLINE;
        let mut last = String::new();
        while Instant::now() < deadline {
            let run = rrmq(
                &["--config", config, "--timeout", "2s", "--json", "status"],
                b"",
                self.dir.path(),
            );
            if let Ok(value) = serde_json::from_slice::<Value>(&run.stdout) {
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
        panic!("no single leader within {CLI_LEADER_DEADLINE:?}; last status: {last}");
    }
}

/// Writes a key file `DIR/node-INDEX.key` per node and each node's public key into its
/// address in the config at `path`; returns the pairs and the files.
fn add_keys(path: &Path, dir: &Path, size: usize) -> (Vec<KeyPair>, Vec<PathBuf>) {
    let text = std::fs::read_to_string(path).expect("read the config");
    let mut config: Value = serde_json::from_str(&text).expect("the generated config is JSON");
    let addresses = config["addresses"]
        .as_array_mut()
        .expect("the generated config has addresses");
    let mut keys = Vec::new();
    let mut files = Vec::new();
    for (index, address) in addresses.iter_mut().enumerate().take(size) {
        let file = dir.join(format!("node-{index}.key"));
        let pair = keys::write_new_key_file(&file).expect("write a key file");
        address["public_key"] = json!(keys::z85_encode(&pair.public));
        keys.push(pair);
        files.push(file);
    }
    std::fs::write(path, config.to_string()).expect("write the config");
    (keys, files)
}

/// Writes a key file per client (and the harness's own admin client first) and the
/// `clients` list into the config at `path`.
fn add_clients(path: &Path, dir: &Path, clients: &[(&str, Value)]) -> Vec<(String, KeyPair)> {
    let text = std::fs::read_to_string(path).expect("read the config");
    let mut config: Value = serde_json::from_str(&text).expect("the generated config is JSON");
    let harness = json!({"produce": ["*"], "consume": ["*"], "admin": true});
    let mut list = Vec::new();
    let mut pairs = Vec::new();
    for (name, rights) in std::iter::once(&("harness", harness)).chain(clients) {
        let file = dir.join(format!("client-{name}.key"));
        let pair = keys::write_new_key_file(&file).expect("write a client key file");
        let mut entry = rights.clone();
        entry["name"] = json!(name);
        entry["public_key"] = json!(keys::z85_encode(&pair.public));
        list.push(entry);
        pairs.push((name.to_string(), pair));
    }
    config["clients"] = Value::Array(list);
    std::fs::write(path, config.to_string()).expect("write the config");
    pairs
}

/// Adds the keys of `settings` (a JSON object) to the config file at `path`.
/// A pseudo-setting for [`add_settings`]: give every address a free `metrics_port`.
const METRICS_PORTS: &str = "test harness: metrics ports";

fn add_settings(path: &Path, settings: &Value) {
    let settings = settings.as_object().expect("settings are a JSON object");
    if settings.is_empty() {
        return;
    }
    let text = std::fs::read_to_string(path).expect("read the config");
    let mut config: Value = serde_json::from_str(&text).expect("the generated config is JSON");
    let object = config.as_object_mut().expect("the config is a JSON object");
    for (key, value) in settings {
        if key == METRICS_PORTS {
            let addresses = object["addresses"]
                .as_array_mut()
                .expect("the generated config lists addresses");
            // Free now, and none of the ports the config already names (free too, until
            // the nodes bind them).
            let taken: Vec<u64> = addresses
                .iter()
                .flat_map(|address| [&address["port"], &address["internal_port"]])
                .filter_map(Value::as_u64)
                .collect();
            let ports: Vec<u16> = rrmq::transport::ports::free_ports(addresses.len() * 4)
                .expect("free ports")
                .into_iter()
                .filter(|port| !taken.contains(&u64::from(*port)))
                .collect();
            assert!(ports.len() >= addresses.len(), "not enough free ports");
            for (address, port) in addresses.iter_mut().zip(ports) {
                address["metrics_port"] = json!(port);
            }
            continue;
        }
        object.insert(key.clone(), value.clone());
    }
    std::fs::write(path, config.to_string()).expect("write the config");
}

// ---- Wire-level client ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    MsgPack,
    Json,
}

/// A DEALER that talks like REQ (empty delimiter, one body frame), but can give up on a
/// request without wedging: after a timeout it reconnects, so a late reply cannot be taken
/// for the next request's.
pub struct Client {
    context: zmq::Context,
    socket: zmq::Socket,
    port: u16,
    /// CURVE: the node's public key and this client's pair; `None` is plain.
    curve: Option<(keys::Key, KeyPair)>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Client::connect_with(port, None)
    }

    /// With `curve` (the node's public key, this client's key pair), a CURVE client.
    pub fn connect_with(port: u16, curve: Option<(keys::Key, KeyPair)>) -> Client {
        let context = zmq::Context::new();
        let socket = Client::socket(&context, port, curve.as_ref());
        Client {
            context,
            socket,
            port,
            curve,
        }
    }

    fn socket(
        context: &zmq::Context,
        port: u16,
        curve: Option<&(keys::Key, KeyPair)>,
    ) -> zmq::Socket {
        let socket = context.socket(zmq::DEALER).expect("socket");
        socket.set_linger(0).expect("linger");
        if let Some((server, own)) = curve {
            socket.set_curve_serverkey(server).expect("server key");
            socket.set_curve_publickey(&own.public).expect("public key");
            socket.set_curve_secretkey(&own.secret).expect("secret key");
        }
        socket
            .connect(&format!("tcp://127.0.0.1:{port}"))
            .expect("connect");
        socket
    }

    fn reconnect(&mut self) {
        self.socket = Client::socket(&self.context, self.port, self.curve.as_ref());
    }

    /// Sends raw frames (after the empty delimiter) and returns the reply's frames after the
    /// delimiter, or None on timeout.
    pub fn raw(&mut self, body_frames: &[&[u8]], within: Duration) -> Option<Vec<Vec<u8>>> {
        let mut frames: Vec<&[u8]> = vec![b""];
        frames.extend_from_slice(body_frames);
        self.socket.send_multipart(frames, 0).expect("send");
        if self
            .socket
            .poll(zmq::POLLIN, within.as_millis() as i64)
            .expect("poll")
            == 0
        {
            self.reconnect();
            return None;
        }
        let mut reply = self.socket.recv_multipart(0).expect("recv");
        assert_eq!(
            reply.first().map(Vec::len),
            Some(0),
            "reply starts with the delimiter"
        );
        reply.remove(0);
        Some(reply)
    }

    /// Sends `body` bytes; returns the one reply body frame.
    pub fn bytes(&mut self, body: &[u8], within: Duration) -> Option<Vec<u8>> {
        let mut reply = self.raw(&[body], within)?;
        assert_eq!(reply.len(), 1, "exactly one body frame in the reply");
        reply.pop()
    }

    /// Encodes `request` in `wire`, sends it, decodes the reply in the same encoding.
    pub fn call_with_timeout(
        &mut self,
        wire: Wire,
        request: &Value,
        within: Duration,
    ) -> Option<Value> {
        let body = encode(wire, request);
        let reply = self.bytes(&body, within)?;
        Some(decode(wire, &reply))
    }

    /// As [`Client::call_with_timeout`], panicking if no reply comes within the deadline.
    pub fn call(&mut self, wire: Wire, request: &Value) -> Value {
        self.call_with_timeout(wire, request, REPLY_DEADLINE)
            .unwrap_or_else(|| panic!("no reply to {request} within {REPLY_DEADLINE:?}"))
    }
}

/// JSON values to MessagePack: objects become maps with string keys, `{"$bin": [..]}`
/// becomes a binary.
pub fn to_msgpack(value: &Value) -> rmpv::Value {
    match value {
        Value::Null => rmpv::Value::Nil,
        Value::Bool(flag) => rmpv::Value::Boolean(*flag),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                rmpv::Value::from(unsigned)
            } else if let Some(signed) = number.as_i64() {
                rmpv::Value::from(signed)
            } else {
                rmpv::Value::from(number.as_f64().expect("a number"))
            }
        }
        Value::String(text) => rmpv::Value::from(text.as_str()),
        Value::Array(items) => rmpv::Value::Array(items.iter().map(to_msgpack).collect()),
        Value::Object(map) => {
            if let (1, Some(Value::Array(bytes))) = (map.len(), map.get("$bin")) {
                return rmpv::Value::Binary(
                    bytes
                        .iter()
                        .map(|byte| byte.as_u64().expect("byte") as u8)
                        .collect(),
                );
            }
            rmpv::Value::Map(
                map.iter()
                    .map(|(key, value)| (rmpv::Value::from(key.as_str()), to_msgpack(value)))
                    .collect(),
            )
        }
    }
}

/// MessagePack to JSON for comparison (maps compare regardless of key order). Binaries
/// become `{"$bin": [..]}`; a non-string key fails the test.
pub fn from_msgpack(value: &rmpv::Value) -> Value {
    match value {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(flag) => Value::Bool(*flag),
        rmpv::Value::Integer(integer) => {
            if let Some(unsigned) = integer.as_u64() {
                json!(unsigned)
            } else {
                json!(integer.as_i64().expect("integer"))
            }
        }
        rmpv::Value::F32(float) => json!(float),
        rmpv::Value::F64(float) => json!(float),
        rmpv::Value::String(text) => {
            Value::String(text.as_str().expect("UTF-8 string in reply").to_string())
        }
        rmpv::Value::Binary(bytes) => json!({ "$bin": bytes }),
        rmpv::Value::Array(items) => Value::Array(items.iter().map(from_msgpack).collect()),
        rmpv::Value::Map(pairs) => Value::Object(
            pairs
                .iter()
                .map(|(key, value)| {
                    let key = key
                        .as_str()
                        .expect("reply map keys are strings")
                        .to_string();
                    (key, from_msgpack(value))
                })
                .collect(),
        ),
        rmpv::Value::Ext(kind, _) => panic!("unexpected ext type {kind} in reply"),
    }
}

pub fn encode(wire: Wire, value: &Value) -> Vec<u8> {
    match wire {
        Wire::Json => serde_json::to_vec(value).expect("JSON"),
        Wire::MsgPack => {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &to_msgpack(value)).expect("MessagePack");
            bytes
        }
    }
}

pub fn decode(wire: Wire, body: &[u8]) -> Value {
    match wire {
        Wire::Json => serde_json::from_slice(body)
            .unwrap_or_else(|error| panic!("reply is not JSON ({error}): {body:?}")),
        Wire::MsgPack => {
            let mut reader = body;
            let value = rmpv::decode::read_value(&mut reader)
                .unwrap_or_else(|error| panic!("reply is not MessagePack ({error}): {body:?}"));
            assert!(reader.is_empty(), "trailing bytes after the reply");
            from_msgpack(&value)
        }
    }
}

/// A reply with `error.message` replaced by `"*"`: messages are for humans, codes for tests.
pub fn without_error_message(mut reply: Value) -> Value {
    if let Some(error) = reply.get_mut("error").and_then(Value::as_object_mut) {
        if error.contains_key("message") {
            assert!(
                error["message"]
                    .as_str()
                    .is_some_and(|message| !message.is_empty()),
                "error.message must be a non-empty string: {error:?}"
            );
            error.insert("message".into(), json!("*"));
        }
    }
    reply
}

/// Runs `rrmq-node` with `args` in `dir` and returns (exit status, stderr), killing it if it
/// has not exited within `within`.
pub fn run_to_exit(dir: &Path, args: &[&str], within: Duration) -> (Option<ExitStatus>, String) {
    let stderr_path = dir.join(format!("stderr-{}.txt", rand::random::<u32>()));
    let stderr = File::create(&stderr_path).expect("stderr file");
    let mut child = Command::new(RRMQ_NODE)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    (status, text)
}

// ---- Comparing state machines ---------------------------------------------------------------

impl Cluster {
    /// The node's `stats` (last_applied, digest, counts), or None if it did not answer.
    pub fn stats(&self, index: usize, within: Duration) -> Option<Value> {
        let mut client = self.client(index);
        let reply = client.call_with_timeout(
            Wire::MsgPack,
            &json!({"type": "stats", "method": "GET"}),
            within,
        )?;
        assert_eq!(reply["success"], true, "node {index}: stats {reply}");
        Some(reply)
    }

    /// Polls until every running node reports the same `last_applied` (at least
    /// `applied_min`) and returns that node's stats. Two nodes at the same `last_applied`
    /// with different digests have diverged: that fails at once, whenever it is seen.
    pub fn wait_converged(&self, applied_min: u64, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<usize> = (0..self.size())
                .filter(|index| self.is_running(*index))
                .collect();
            let stats: Vec<(usize, Value)> = running
                .iter()
                .filter_map(|index| {
                    self.stats(*index, Duration::from_millis(2000))
                        .map(|stats| (*index, stats))
                })
                .collect();
            assert_same_digest_at_same_applied(&stats);
            let applied: Vec<u64> = stats
                .iter()
                .map(|(_, stats)| stats["last_applied"].as_u64().expect("last_applied"))
                .collect();
            if stats.len() == running.len()
                && applied.windows(2).all(|pair| pair[0] == pair[1])
                && applied.first().is_some_and(|first| *first >= applied_min)
            {
                return stats[0].1.clone();
            }
            assert!(
                Instant::now() < deadline,
                "nodes {running:?} did not converge within {within:?} (applied at least \
                 {applied_min}): {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a leader, has it confirm its leadership with a linearizable read (so it has
    /// applied everything committed before, its own term's first entry included), and returns
    /// its `last_applied`: what every node must reach to have caught up.
    pub fn leader_applied(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let (leader, _) = self.wait_for_leader(within);
            let read = json!({"v": 2, "type": "topic", "method": "GET"});
            let confirmed = self
                .client(leader)
                .call_with_timeout(Wire::MsgPack, &read, REPLY_DEADLINE)
                .is_some_and(|reply| reply["success"] == true);
            if confirmed {
                if let Some(stats) = self.stats(leader, REPLY_DEADLINE) {
                    return stats["last_applied"].as_u64().expect("last_applied");
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader confirmed a read within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for node `index` to exit by itself; `None` if it is still running after
    /// `within` (or was not running). The node is then forgotten (reaped).
    pub fn wait_exit(&mut self, index: usize, within: Duration) -> Option<ExitStatus> {
        self.nodes.wait_exit(index, within)
    }

    /// Whether node `index`'s process is still alive (not exited, whatever its state).
    pub fn is_alive(&mut self, index: usize) -> bool {
        self.nodes.is_alive(index)
    }

    /// The node's log so far.
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.log_path(index)).unwrap_or_default()
    }
}

/// Panics if two of `stats` (node index, stats reply) are at the same `last_applied` with
/// different digests.
pub fn assert_same_digest_at_same_applied(stats: &[(usize, Value)]) {
    for (position, (first, first_stats)) in stats.iter().enumerate() {
        for (second, second_stats) in &stats[position + 1..] {
            if first_stats["last_applied"] == second_stats["last_applied"] {
                assert_eq!(
                    first_stats["digest"], second_stats["digest"],
                    "nodes {first} and {second} diverged at the same last_applied: \
                     {first_stats} vs {second_stats}"
                );
            }
        }
    }
}

// ---- A client that retries with (client_id, seq) -------------------------------------------

/// The error code of a v2 failure, if `reply` is one.
pub fn error_code(reply: &Value) -> Option<&str> {
    reply.get("error")?.get("code")?.as_str()
}

/// A reply without its `leader` hint, which names whoever leads at the time: a retry that
/// reached a new leader gets the same reply otherwise.
pub fn without_leader(mut reply: Value) -> Value {
    if let Some(map) = reply.as_object_mut() {
        map.remove("leader");
    }
    reply
}

/// Speaks v2 with an idempotency key, the way a production client must (PROTOCOL.md §5):
/// each request gets the next `seq`, and is resent with the *same* `(client_id, seq)` to
/// whichever node may lead now until a definite answer comes, so a retry can never apply a
/// command twice. Raw wire, so that tests control exactly what is sent.
pub struct SessionClient {
    ports: Vec<u16>,
    clients: Vec<Option<Client>>,
    pub client_id: String,
    /// The seq the next request gets.
    pub seq: u64,
    /// Where the next attempt goes: the last leader seen or hinted.
    pub target: usize,
    /// How long one attempt waits for a reply before trying elsewhere.
    pub attempt_timeout: Duration,
    /// Attempts made so far (all requests), for reports.
    pub attempts: u64,
}

/// Codes after which the same request may be sent again: the outcome is unknown or the
/// request never reached a leader.
const RETRY_CODES: &[&str] = &["NOT_LEADER", "TIMEOUT", "UNAVAILABLE", "SHUTTING_DOWN"];

impl SessionClient {
    pub fn new(cluster: &Cluster, client_id: &str) -> SessionClient {
        SessionClient::with_ports(
            cluster.ports.iter().map(|ports| ports.port).collect(),
            client_id,
        )
    }

    /// For threads, which cannot borrow the cluster.
    pub fn with_ports(ports: Vec<u16>, client_id: &str) -> SessionClient {
        SessionClient {
            clients: ports.iter().map(|_| None).collect(),
            ports,
            client_id: client_id.to_string(),
            seq: 1,
            target: 0,
            attempt_timeout: Duration::from_secs(2),
            attempts: 0,
        }
    }

    /// `request` with v2 and this client's key at `seq`.
    pub fn keyed(&self, request: &Value, seq: u64) -> Value {
        let mut request = request.clone();
        request["v"] = json!(2);
        request["client_id"] = json!(self.client_id);
        request["seq"] = json!(seq);
        request
    }

    /// One attempt of `request` keyed at `seq` to node `index`: its reply, or None on timeout.
    pub fn send_once(
        &mut self,
        index: usize,
        request: &Value,
        seq: u64,
        within: Duration,
    ) -> Option<Value> {
        let keyed = self.keyed(request, seq);
        let port = self.ports[index];
        let client = self.clients[index].get_or_insert_with(|| Client::connect(port));
        self.attempts += 1;
        client.call_with_timeout(Wire::MsgPack, &keyed, within)
    }

    /// Sends `request` with the next seq, retrying the same pair until a definite reply (a
    /// success, or a failure that is not worth retrying, e.g. `EMPTY`), or `None` once
    /// `deadline` has passed (outcome unknown). The seq is used up either way.
    pub fn call(&mut self, request: &Value, deadline: Instant) -> Option<Value> {
        let seq = self.seq;
        self.seq += 1;
        self.retry(request, seq, deadline)
    }

    /// As [`SessionClient::call`], panicking without a definite reply within `within`.
    pub fn call_ok(&mut self, request: &Value, within: Duration) -> Value {
        let seq = self.seq;
        self.call(request, Instant::now() + within)
            .unwrap_or_else(|| {
                let mut shown = request.to_string();
                if shown.len() > 200 {
                    let cut = (0..=200).rev().find(|at| shown.is_char_boundary(*at));
                    shown.truncate(cut.unwrap_or(0));
                    shown.push_str("...");
                }
                panic!(
                    "{}: no definite reply to seq {seq} {shown} within {within:?}",
                    self.client_id
                )
            })
    }

    /// Sends `request` keyed at `seq` (again), following leader hints, until a definite
    /// reply or the deadline.
    pub fn retry(&mut self, request: &Value, seq: u64, deadline: Instant) -> Option<Value> {
        let node_count = self.ports.len();
        while Instant::now() < deadline {
            let target = self.target;
            let within = self
                .attempt_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let Some(reply) = self.send_once(target, request, seq, within) else {
                self.target = (target + 1) % node_count;
                continue;
            };
            let code = error_code(&reply);
            if !code.is_some_and(|code| RETRY_CODES.contains(&code)) {
                return Some(reply);
            }
            match reply["leader"]["id"].as_u64() {
                Some(leader) if leader as usize != target => self.target = leader as usize,
                Some(_) if code != Some("TIMEOUT") => {
                    // The node names itself but cannot serve now: let things settle.
                    std::thread::sleep(Duration::from_millis(50));
                }
                Some(_) => {}
                None => {
                    self.target = (target + 1) % node_count;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        None
    }

    /// Pops every message of `topic` (each GET keyed, so none is lost to a retry) and
    /// returns them as text.
    pub fn drain(&mut self, topic: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let get = json!({"type": "message", "method": "GET", "topic": topic});
        let mut messages = Vec::new();
        loop {
            let reply = self
                .call(&get, deadline)
                .unwrap_or_else(|| panic!("draining {topic}: no reply within {within:?}"));
            if error_code(&reply) == Some("EMPTY") {
                return messages;
            }
            assert_eq!(reply["success"], true, "draining {topic}: {reply}");
            let message = reply["message"].as_str().expect("a text message");
            messages.push(message.to_string());
        }
    }
}

pub fn create_topic_request(topic: &str) -> Value {
    json!({"type": "topic", "method": "PUT", "topic": topic})
}

pub fn put_request(topic: &str, message: &str) -> Value {
    json!({"type": "message", "method": "PUT", "topic": topic, "message": message})
}

pub fn get_request(topic: &str) -> Value {
    json!({"type": "message", "method": "GET", "topic": topic})
}
