//! The nodes of a nemesis run by id, as the membership stands: the cluster's initial nodes
//! (started from `config.json`, node id = its index there) and the nodes the membership
//! nemesis added since (each started once with `--join` from its own config file, which
//! lists every address handed out so far plus its own, so that ids stay config indexes and
//! are never reused), minus the nodes it removed (stopped for good).
//!
//! Why a layer of its own: the faults, the workload's clients, the status sampler and the
//! final checks must all follow the current membership, not the config the run began with.
//! The workload's threads read the current client addresses from a shared [`Directory`],
//! whose epoch tells them when to reconnect.

use crate::common::{Client as RawClient, Cluster, FAST_FLAGS, RRMQ_NODE};
use rrmq::cli::launcher::NodePorts;
use rrmq::client::NodeAddress;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client addresses of the current members (and of a node being added), with an epoch
/// that grows at every change.
#[derive(Default)]
pub struct Directory {
    inner: Mutex<(u64, Vec<NodeAddress>)>,
}

impl Directory {
    pub fn new(addresses: Vec<NodeAddress>) -> Directory {
        Directory {
            inner: Mutex::new((0, addresses)),
        }
    }

    /// The epoch and the addresses.
    pub fn get(&self) -> (u64, Vec<NodeAddress>) {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub fn epoch(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .0
    }

    fn set(&self, addresses: Vec<NodeAddress>) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        inner.0 += 1;
        inner.1 = addresses;
    }
}

/// A node added by the membership nemesis, outside the cluster's launcher.
struct Joined {
    config: PathBuf,
    process: Option<Child>,
    paused: bool,
}

pub struct Nodes {
    pub cluster: Cluster,
    /// Every id handed out, in order: its ports (index = id).
    ports: Vec<NodePorts>,
    joined: BTreeMap<usize, Joined>,
    /// The current members' ids, ascending; a node being added joins the list once its
    /// process runs (the faults may then hit it too).
    members: Vec<usize>,
    /// Ids removed from the cluster; never started again.
    removed: Vec<usize>,
    pub directory: Arc<Directory>,
}

fn address(port: u16) -> NodeAddress {
    NodeAddress::new("127.0.0.1", port).expect("a loopback address")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl Nodes {
    pub fn new(cluster: Cluster) -> Nodes {
        let ports = cluster.ports.clone();
        let members: Vec<usize> = (0..ports.len()).collect();
        let directory = Arc::new(Directory::new(
            ports.iter().map(|ports| address(ports.port)).collect(),
        ));
        Nodes {
            cluster,
            ports,
            joined: BTreeMap::new(),
            members,
            removed: Vec::new(),
            directory,
        }
    }

    /// The current members' ids, ascending.
    pub fn members(&self) -> Vec<usize> {
        self.members.clone()
    }

    pub fn ports(&self, id: usize) -> &NodePorts {
        &self.ports[id]
    }

    pub fn address(&self, id: usize) -> NodeAddress {
        address(self.ports[id].port)
    }

    /// The current members' client addresses.
    pub fn addresses(&self) -> Vec<NodeAddress> {
        self.members.iter().map(|id| self.address(*id)).collect()
    }

    fn publish(&self) {
        self.directory.set(self.addresses());
    }

    fn initial(&self, id: usize) -> bool {
        id < self.cluster.size()
    }

    pub fn log_path(&self, id: usize) -> PathBuf {
        self.cluster.dir.path().join(format!("node-{id}.log"))
    }

    /// A new id with fresh ports, its config file (every address so far plus its own),
    /// and its process started with `--join`; it joins the member list (not yet the
    /// cluster's membership: that takes a `member PUT`).
    pub fn start_joining(&mut self, flags: &[&str]) -> usize {
        let id = self.ports.len();
        let ports = self.fresh_ports();
        self.ports.push(ports);
        let text = std::fs::read_to_string(&self.cluster.config_path).expect("read the config");
        let mut config: Value = serde_json::from_str(&text).expect("the config is JSON");
        config["addresses"] = Value::Array(
            self.ports
                .iter()
                .map(|ports| {
                    json!({"ip": "127.0.0.1", "port": ports.port,
                           "internal_port": ports.internal_port})
                })
                .collect(),
        );
        let path = self.cluster.dir.path().join(format!("config-{id}.json"));
        std::fs::write(&path, config.to_string()).expect("write the joining node's config");
        self.joined.insert(
            id,
            Joined {
                config: path,
                process: None,
                paused: false,
            },
        );
        self.spawn_joined(id, flags);
        self.members.push(id);
        self.publish();
        id
    }

    /// Two free ports that no id was ever given: the system hands out the ports of stopped
    /// nodes again, and a config that lists an address twice is refused.
    fn fresh_ports(&self) -> NodePorts {
        let used = |port: u16| {
            self.ports
                .iter()
                .any(|ports| ports.port == port || ports.internal_port == port)
        };
        loop {
            let (port, internal_port) = (free_port(), free_port());
            if port != internal_port && !used(port) && !used(internal_port) {
                return NodePorts {
                    port,
                    internal_port,
                };
            }
        }
    }

    /// Starts a joined node's process (again), with `flags` on top of [`FAST_FLAGS`].
    fn spawn_joined(&mut self, id: usize, flags: &[&str]) {
        let log_path = self.log_path(id);
        let data_dir = self.cluster.dir.path().join(format!("node-{id}"));
        let joined = self.joined.get_mut(&id).expect("a joined node");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("the node's log file");
        let log_too = log.try_clone().expect("the node's log file");
        let child = Command::new(RRMQ_NODE)
            .arg(&joined.config)
            .arg(id.to_string())
            .arg("--join")
            .arg("--data-dir")
            .arg(data_dir)
            .args(FAST_FLAGS)
            .args(flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .expect("spawn rrmq-node --join");
        joined.process = Some(child);
        joined.paused = false;
    }

    /// The node is no longer a member: stopped for good, never started again.
    pub fn retire(&mut self, id: usize) {
        self.kill(id);
        self.members.retain(|member| *member != id);
        self.removed.push(id);
        self.publish();
    }

    /// Restarts a killed member on its data dir (a joined node with `--join` again, so that
    /// a restart before it learned anything cannot take its config for the membership).
    pub fn spawn(&mut self, id: usize, flags: &[&str]) {
        assert!(!self.removed.contains(&id), "node {id} was removed");
        if self.initial(id) {
            self.cluster.spawn(id);
        } else {
            self.spawn_joined(id, flags);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, id: usize) {
        if self.initial(id) {
            self.cluster.kill(id);
        } else if let Some(joined) = self.joined.get_mut(&id) {
            if let Some(mut child) = joined.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            joined.paused = false;
        }
    }

    pub fn signal(&mut self, id: usize, signal: libc::c_int) {
        if self.initial(id) {
            self.cluster.signal(id, signal);
            return;
        }
        let joined = self.joined.get_mut(&id).expect("a joined node");
        let child = joined
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits");
        // SAFETY: `kill` has no memory effects; the pid is our unreaped child's.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "signal {signal} to node {id}");
        match signal {
            libc::SIGSTOP => joined.paused = true,
            libc::SIGCONT => joined.paused = false,
            _ => {}
        }
    }

    /// Spawned, not reaped, not paused.
    pub fn is_running(&self, id: usize) -> bool {
        if self.initial(id) {
            return self.cluster.is_running(id);
        }
        self.joined
            .get(&id)
            .is_some_and(|joined| joined.process.is_some() && !joined.paused)
    }

    /// Reaps the node if its process exited: its status, once.
    pub fn reap(&mut self, id: usize) -> Option<ExitStatus> {
        if self.initial(id) {
            return self.cluster.nodes.reap(id);
        }
        let joined = self.joined.get_mut(&id)?;
        let status = joined.process.as_mut()?.try_wait().ok().flatten()?;
        joined.process = None;
        Some(status)
    }

    /// A raw client of the node (the harness's admin one on a keyed cluster).
    pub fn client(&self, id: usize) -> RawClient {
        if self.initial(id) {
            self.cluster.client(id)
        } else {
            RawClient::connect(self.ports[id].port)
        }
    }

    /// The node's v2 status, or None if it did not answer in time.
    pub fn status(&self, id: usize, within: Duration) -> Option<Value> {
        self.client(id).call_with_timeout(
            crate::common::Wire::MsgPack,
            &json!({"type": "status", "method": "GET", "v": 2}),
            within,
        )
    }

    pub fn kill_all(&mut self) {
        self.cluster.kill_all();
        let ids: Vec<usize> = self.joined.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let ids: Vec<usize> = self.joined.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}
