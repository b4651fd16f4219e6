//! Node-to-node transport: one-way Raft messages over ZeroMQ, and the threads around them.
//! The bytes they travel as are [`super::wire`]'s.
//!
//! Every node binds a ROUTER on its internal port and connects one DEALER to each peer's
//! internal port. A message goes out on the sender's DEALER and comes in on the receiver's
//! ROUTER; a response is just another message going the other way on the responder's own
//! DEALER. There is no request/response pairing to get stuck on: a lost message is resent by
//! Raft (heartbeats, probes), so sends never wait. The DEALERs use `ZMQ_IMMEDIATE` and
//! `DONTWAIT`, so a message for a peer that is down or whose queue is full is dropped at once
//! instead of stalling the node loop or piling up in memory.
//!
//! Outbound, no thread: the node loop owns the DEALERs, and [`PeerTransport::send`] encodes
//! each message and hands it to ZeroMQ on the loop's own thread. Why: a thread between the
//! loop and the socket would add a thread wake-up to every hop of the request path (leader
//! to followers, followers back), and on a loaded machine each wake-up waits for a core;
//! encoding is cheap next to that (`benches/hot_path.rs`), and ZeroMQ's I/O thread does the
//! writing. Figures: docs/PERFORMANCE.md, "Peer messages sent from the loop". What `send`
//! must never do: block. Every send is `DONTWAIT` on a DEALER with `ZMQ_IMMEDIATE` and a
//! bounded queue, so a peer that is down or slow costs a dropped message, never a stalled
//! loop.
//!
//! The same goes for the WAL thread: the votes and acks that wait for its fsync leave on a
//! second set of DEALERs it owns ([`PeerTransport::connect_dealers`] makes one: a
//! [`PeerDealers`], same options, same injected faults), right after the sync, so they do
//! not wait for a hand-off to the loop. A node's messages to one peer therefore travel on
//! two connections and may arrive out of order; Raft does not mind (`node::wal_thread` says
//! why).
//!
//! Inbound, one thread: the receiver owns the ROUTER, decodes each frame
//! ([`super::wire::decode_peer_frame`]), and puts Raft messages on the node loop's event
//! channel (it has to poll the ROUTER, which the loop, blocked on its channel, cannot). A
//! frame that does not decode or fails the envelope check (another cluster, another node, a
//! sender that is not a peer) is dropped with a debug log.
//!
//! Connections: [`PeerTransport::start`] also starts a watcher thread ([`super::watch`])
//! on monitors of the loop's DEALERs and of the ROUTER. When a DEALER's connection drops
//! (the peer's process died: its kernel closed the connection) the node loop hears of it
//! as a [`PeerConnection`] event at once, and again when it comes back; the core uses that
//! to replace a dead leader within a few heartbeats instead of an election timeout
//! (`raft::Core::peer_connection_lost`). Refused handshakes on the ROUTER are logged there.
//!
//! Snapshots: [`PeerTransport::start`] also starts the two threads of
//! [`super::snapshot_transfer`]. An `InstallSnapshot` handed to [`PeerTransport::send`] goes
//! to the snapshot sender, which streams the file on a third set of DEALERs, its own;
//! snapshot chunks arriving at the ROUTER go to the snapshot receiver, whose acks leave on
//! the snapshot sender's DEALERs. This module starts and feeds those threads; what they do
//! is theirs, and they import nothing from here.
//!
//! Keys (PROTOCOL.md §11): in a keyed cluster ([`PeerCurve`]) the ROUTER is a CURVE server
//! with the node's secret key and every DEALER of every set is a CURVE client that expects
//! its target's pinned public key. CURVE alone would admit any client key (ZAP fails open),
//! so [`super::zap`]'s handler is bound first and admits only the members' keys, naming each
//! connection by its member's id; the receiver drops (and logs, rate-limited) a frame whose
//! claimed sender is not that id, so a member's key cannot speak for another member. The
//! keys follow the membership ([`PeerTransport::set_peer_keys`], a shared
//! [`super::zap::MemberKeys`]): a DEALER to an added peer expects the key from its member
//! `info`, the handler admits it, and once a member's removal commits its key is refused at
//! the next handshake and the receiver drops (and logs) the frames of a connection it had
//! opened before.

use super::fault::PeerFaults;
use super::log_limit::{LogLimiter, LOG_INTERVAL};
use super::monitor::Monitor;
use super::snapshot_transfer::{
    self as transfer, Following, FollowingCell, ReceiveLimits, SenderInput, SenderSettings,
    SnapshotReceiver, SnapshotReport, SnapshotSender,
};
use super::watch::{self, PeerConnection, Watched, Watcher};
use super::wire::{
    decode_peer_frame, encode_peer_message, PeerFilter, PeerFrame, SnapshotChunk, TransferFrame,
};
use super::zap::MemberKeys;
use super::{
    bind_router_with, wait_for_socket_or_bell, zmq_context, Doorbell, DoorbellListener, Frames,
    TransportError,
};
use crate::config::clients::SharedClients;
use crate::config::keys::{Key, KeyPair};
use crate::config::NodeConfig;
use crate::raft::{Message, MessageBody, NodeId, Term};
use crate::storage::FsyncPolicy;
use crossbeam_channel::Sender;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Messages queued for one peer before new ones are dropped (ZMQ_SNDHWM). The core bounds
/// appends in flight per follower far below this; the rest is heartbeats and votes.
pub const PEER_SEND_QUEUE_MAX: i32 = 1024;

/// Reconnect quickly after a peer restarts, backing off to a second while it stays down.
const RECONNECT_INTERVAL_MS: i32 = 100;
const RECONNECT_INTERVAL_MAX_MS: i32 = 1000;

/// In a keyed cluster, how long a DEALER may go without ever getting a connection before
/// it connects afresh ([`PeerDealers::send`]).
const NEVER_CONNECTED_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// In a keyed cluster, how long the sends of a DEALER that had a connection may find none
/// (or a full queue) before it connects afresh: three times libzmq's longest reconnect
/// interval ([`Dealer`]).
const STUCK_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// Frames read per wakeup before checking for a stop request.
const RECEIVE_BATCH_MAX: usize = 256;

/// Snapshot chunks queued for one follower's connection, at most (the transfer window keeps
/// fewer in flight).
const SNAPSHOT_SEND_QUEUE_MAX: i32 = 2 * transfer::WINDOW_CHUNKS as i32;

/// Where to bind and whom to connect to.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    pub filter: PeerFilter,
    /// `tcp://host:internal_port` with `host` an IP literal.
    pub bind_endpoint: String,
    /// Each peer's internal endpoint.
    pub peers: Vec<(NodeId, String)>,
    /// Whether any endpoint is IPv6 (ZMQ_IPV6 also keeps IPv4 working).
    pub ipv6: bool,
    /// ZMQ_MAXMSGSIZE on the ROUTER: larger frames are refused before allocation.
    pub frame_bytes_max: usize,
    pub send_queue_max: i32,
    /// The data dir: snapshots are sent from it and received into it.
    pub snapshot_dir: PathBuf,
    pub snapshot_chunk_bytes: usize,
    /// 0: no cap.
    pub snapshot_send_bytes_per_second: u64,
    /// A snapshot transfer without acknowledged progress for this long is given up.
    pub snapshot_stall_timeout: std::time::Duration,
    /// Whether received snapshots are fsynced before they are delivered.
    pub fsync: FsyncPolicy,
    /// The largest snapshot transfer the receiver takes, and the free disk it keeps.
    pub snapshot_receive_limits: ReceiveLimits,
    /// CURVE on the peer port (a keyed cluster), or plain TCP.
    pub curve: Option<PeerCurve>,
}

/// A keyed cluster's peer port: the ROUTER is a CURVE server with `own`'s secret key and
/// admits only `members` (through the ZAP handler, [`super::zap`]); every DEALER is a CURVE
/// client with `own`'s pair that expects its target's key from `members`.
#[derive(Clone, Debug)]
pub struct PeerCurve {
    pub own: KeyPair,
    /// Every member's id and public key, this node's included; shared by every clone of the
    /// settings, and replaced as the membership changes ([`PeerTransport::set_peer_keys`]).
    pub members: Arc<MemberKeys>,
    /// The client list the ZAP handler also admits on the client port (one handler per
    /// context, and this transport starts it), when the config lists `clients`.
    pub clients: Option<Arc<SharedClients>>,
}

impl PeerCurve {
    /// Keys for `members` (every member, this node included), admitted from the start.
    pub fn new(own: KeyPair, members: Vec<(NodeId, Key)>) -> PeerCurve {
        PeerCurve {
            own,
            members: Arc::new(MemberKeys::new(members)),
            clients: None,
        }
    }
}

impl PeerSettings {
    pub fn from_config(config: &NodeConfig) -> Result<PeerSettings, TransportError> {
        let own = config.address();
        let host = super::resolve_host(&own.ip)?;
        let peers: Vec<(NodeId, String)> = config
            .cluster
            .voters()
            .into_iter()
            .filter(|id| *id != config.id)
            .map(|id| {
                let address = config
                    .cluster
                    .address(id)
                    .expect("voters come from the config");
                // A peer's name that does not resolve yet is left to ZeroMQ, which retries
                // on every reconnect: that peer's host may simply not be up yet.
                let host = super::resolve_host(&address.ip).unwrap_or_else(|error| {
                    log::warn!("node {id}: {error}; connecting by name");
                    address.ip.clone()
                });
                (
                    id,
                    crate::config::tcp_endpoint(&host, address.internal_port),
                )
            })
            .collect();
        let ipv6 = host.contains(':') || peers.iter().any(|(_, endpoint)| endpoint.contains('['));
        Ok(PeerSettings {
            filter: PeerFilter {
                cluster_id: config.cluster.cluster_id,
                me: config.id,
                node_count: config.cluster.node_count(),
            },
            bind_endpoint: crate::config::tcp_endpoint(&host, own.internal_port),
            peers,
            ipv6,
            frame_bytes_max: config.peer_frame_bytes_max(),
            send_queue_max: PEER_SEND_QUEUE_MAX,
            snapshot_dir: config.data_dir.clone(),
            snapshot_chunk_bytes: config.snapshot.chunk_bytes,
            snapshot_send_bytes_per_second: config.snapshot.send_bytes_per_second,
            snapshot_stall_timeout: transfer::STALL_TIMEOUT,
            fsync: FsyncPolicy::from(config.fsync),
            snapshot_receive_limits: ReceiveLimits::default(),
            curve: match (&config.key_pair, config.cluster.peer_keys()) {
                (Some(own), Some(members)) => Some(PeerCurve::new(own.clone(), members)),
                _ => None,
            },
        })
    }
}

impl PeerSettings {
    /// What the snapshot sender thread needs of these settings.
    fn sender_settings(&self) -> SenderSettings {
        SenderSettings {
            dir: self.snapshot_dir.clone(),
            chunk_bytes: self.snapshot_chunk_bytes,
            bytes_per_second: self.snapshot_send_bytes_per_second,
            cluster_id: self.filter.cluster_id,
            stall_timeout: self.snapshot_stall_timeout,
        }
    }
}

/// The running peer transport. Owned by the node loop, and used on its thread only: it holds
/// the loop's Raft DEALERs (zmq sockets are `Send` but not `Sync`).
pub struct PeerTransport {
    /// One DEALER per peer; the node loop encodes and sends on them itself.
    dealers: PeerDealers,
    /// To connect another set of DEALERs for another thread ([`PeerTransport::connect_dealers`]).
    context: zmq::Context,
    settings: PeerSettings,
    snapshot_outbox: Sender<SenderInput>,
    stop_receiver: Doorbell,
    /// Tells the snapshot threads to stop waiting on a full event channel.
    stopping: Arc<AtomicBool>,
    /// Whom the node loop follows, for the snapshot receiver ([`PeerTransport::follow`]).
    following: Arc<FollowingCell>,
    threads: Vec<JoinHandle<()>>,
    /// Tests only: peers to drop messages to and from; empty unless the node loop sets it.
    faults: Arc<PeerFaults>,
    /// Reads the monitors of the loop's DEALERs and of the ROUTER ([`super::watch`]).
    watcher: Option<Watcher>,
}

/// One DEALER per peer, for the Raft messages one thread sends: the node loop owns one set
/// (inside [`PeerTransport`]) and the WAL thread another, for the acks and votes it sends
/// right after the sync they wait for. Each set is used on one thread only.
///
/// Every set obeys the same rules: `ZMQ_IMMEDIATE`, a bounded queue (`ZMQ_SNDHWM`),
/// `DONTWAIT` sends that drop the message when the peer is not connected or its queue is
/// full (Raft resends), linger 0, and the node's injected faults ([`PeerFaults`]). Messages
/// on two sets to the same peer travel on two connections and may overtake each other;
/// Raft tolerates reordering (see `node::wal_thread`). `InstallSnapshot` never goes through
/// a set: it names a file that the snapshot sender streams ([`PeerTransport::send`]).
pub struct PeerDealers {
    dealers: RefCell<HashMap<NodeId, Dealer>>,
    cluster_id: u64,
    faults: Arc<PeerFaults>,
    /// The peers to connect to; a set catches up with it on its next send.
    directory: Arc<PeerDirectory>,
    /// The directory's generation the set last caught up with.
    seen_generation: Cell<u64>,
    /// To connect a DEALER to a peer added later.
    context: zmq::Context,
    settings: PeerSettings,
    /// The peers whose DEALER this set connected afresh since the last
    /// [`PeerDealers::take_reconnected`]; kept only for the loop's set.
    reconnected: RefCell<Option<Vec<NodeId>>>,
}

/// One DEALER of a set, whether it ever had a connection, and since when its sends fail.
///
/// Why: a CURVE handshake the other end refuses (its ZAP handler does not know this node's
/// key yet: it has not appended the entry that adds this node, or it has just restarted
/// from a config that predates this node and not read its log yet) is a protocol error to
/// libzmq, which then gives up on that endpoint for good instead of reconnecting. So in a
/// keyed cluster a DEALER whose sends have found no connection for a while connects afresh
/// (disconnect, connect: the same socket, so its monitor stays): after
/// [`NEVER_CONNECTED_RETRY`] if it never had a connection, after [`STUCK_RETRY`] if it had
/// one. The longer wait for the latter: a drop libzmq reconnects by itself within a second,
/// and a queue full for that long (also `EAGAIN`) belongs to a peer that reads nothing, whose
/// queued frames Raft will resend anyway.
struct Dealer {
    socket: zmq::Socket,
    endpoint: String,
    connected: Cell<bool>,
    /// When the sends began to fail (set by the first failing send after a success, or by a
    /// fresh connect); `None` while they succeed.
    failing_since: Cell<Option<std::time::Instant>>,
}

impl Dealer {
    fn new(socket: zmq::Socket, endpoint: &str) -> Dealer {
        Dealer {
            socket,
            endpoint: endpoint.to_string(),
            connected: Cell::new(false),
            failing_since: Cell::new(Some(std::time::Instant::now())),
        }
    }

    fn sent(&self) {
        self.connected.set(true);
        self.failing_since.set(None);
    }

    /// After a send found no connection: connects afresh if its sends have failed for long
    /// (see [`Dealer`]). True when it did.
    fn retry_if_stuck(&self, peer: NodeId) -> bool {
        let now = std::time::Instant::now();
        let Some(since) = self.failing_since.get() else {
            self.failing_since.set(Some(now));
            return false;
        };
        let patience = if self.connected.get() {
            STUCK_RETRY
        } else {
            NEVER_CONNECTED_RETRY
        };
        if now.duration_since(since) < patience {
            return false;
        }
        self.failing_since.set(Some(now));
        // Gone already when libzmq gave up on it; connect again either way.
        let _ = self.socket.disconnect(&self.endpoint);
        match self.socket.connect(&self.endpoint) {
            Ok(()) => log::debug!("node {peer}: no connection for {patience:?}; connecting afresh"),
            Err(error) => log::warn!("node {peer}: reconnect to {}: {error}", self.endpoint),
        }
        true
    }
}

/// The peers a node connects to, shared by every DEALER set and the peer receiver: the node
/// loop replaces it when the membership changes ([`PeerTransport::set_peers`]), and each
/// set connects to added peers and closes removed ones on its next send. One atomic load
/// per send tells whether anything changed.
#[derive(Debug)]
pub struct PeerDirectory {
    generation: AtomicU64,
    peers: Mutex<Vec<(NodeId, String)>>,
}

impl PeerDirectory {
    pub fn new(peers: Vec<(NodeId, String)>) -> PeerDirectory {
        PeerDirectory {
            generation: AtomicU64::new(0),
            peers: Mutex::new(peers),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The peers and the generation they belong to.
    fn snapshot(&self) -> (u64, Vec<(NodeId, String)>) {
        let peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (self.generation(), peers.clone())
    }

    /// Replaces the peers; false when they were the same already.
    fn replace(&self, next: Vec<(NodeId, String)>) -> bool {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *peers == next {
            return false;
        }
        *peers = next;
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }
}

impl PeerDealers {
    /// Connects one DEALER to each peer in `settings` (the connections come up in the
    /// background; until then sends are dropped).
    pub fn connect(
        context: &zmq::Context,
        settings: &PeerSettings,
        faults: Arc<PeerFaults>,
        directory: Arc<PeerDirectory>,
    ) -> Result<PeerDealers, TransportError> {
        let (generation, peers) = directory.snapshot();
        let mut dealers = HashMap::new();
        for (id, endpoint) in &peers {
            let socket = connect_dealer(context, settings, *id, endpoint, settings.send_queue_max)?;
            dealers.insert(*id, Dealer::new(socket, endpoint));
        }
        Ok(PeerDealers {
            dealers: RefCell::new(dealers),
            cluster_id: settings.filter.cluster_id,
            faults,
            directory,
            seen_generation: Cell::new(generation),
            context: context.clone(),
            settings: settings.clone(),
            reconnected: RefCell::new(None),
        })
    }

    /// The peers this set connected afresh since the last call (the loop's set only, see
    /// [`PeerTransport::send`]).
    fn take_reconnected(&self) -> Vec<NodeId> {
        self.reconnected
            .borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Connects to the directory's added peers and closes the removed ones' DEALERs.
    fn catch_up(&self) {
        let (generation, peers) = self.directory.snapshot();
        let mut dealers = self.dealers.borrow_mut();
        dealers.retain(|id, _| peers.iter().any(|(peer, _)| peer == id));
        for (id, endpoint) in &peers {
            if dealers.contains_key(id) {
                continue;
            }
            match connect_dealer(
                &self.context,
                &self.settings,
                *id,
                endpoint,
                self.settings.send_queue_max,
            ) {
                Ok(dealer) => {
                    dealers.insert(*id, Dealer::new(dealer, endpoint));
                }
                Err(error) => log::error!("cannot connect to node {id} at {endpoint}: {error}"),
            }
        }
        self.seen_generation.set(generation);
    }

    /// A monitor on each DEALER of this set, for the connection watcher: a connection that
    /// drops is how a follower learns at once that its leader's process died. Attached
    /// after the connects, which misses at most the first handshake (reported as nothing).
    fn watch(&self, context: &zmq::Context) -> Result<Vec<Watched>, TransportError> {
        let dealers = self.dealers.borrow();
        let mut watched = Vec::with_capacity(dealers.len());
        for (&peer, dealer) in dealers.iter() {
            let monitor = zmq_context(
                "peer DEALER monitor",
                Monitor::attach(context, &dealer.socket, &watch::DEALER_EVENTS),
            )?;
            watched.push(Watched::Peer { peer, monitor });
        }
        Ok(watched)
    }

    /// Encodes `message` and hands it to ZeroMQ for its peer, on the caller's thread. Never
    /// blocks: a message for a peer that is not connected or whose queue is full is dropped.
    ///
    /// Panics on an `InstallSnapshot`: its file goes through the snapshot sender, and only a
    /// leader sends one, in `Ready::messages`, which the loop hands to [`PeerTransport::send`].
    pub fn send(&self, message: &Message) {
        assert!(
            !matches!(message.body, MessageBody::InstallSnapshot { .. }),
            "an InstallSnapshot to node {} must go to the snapshot sender",
            message.to
        );
        if self.faults.drops_to(message.to) {
            log::trace!("fault injection: message to node {} dropped", message.to);
            return;
        }
        if self.directory.generation() != self.seen_generation.get() {
            self.catch_up();
        }
        let dealers = self.dealers.borrow();
        let Some(dealer) = dealers.get(&message.to) else {
            // The core only addresses voters from the config; this is a bug upstream, but not
            // one worth taking the node down for.
            log::error!("no connection to node {}; message dropped", message.to);
            return;
        };
        let frame = encode_peer_message(self.cluster_id, message);
        match dealer.socket.send(frame, zmq::DONTWAIT) {
            Ok(()) => dealer.sent(),
            // Not connected (ZMQ_IMMEDIATE) or its queue is full: Raft will resend.
            Err(zmq::Error::EAGAIN) => {
                log::trace!("node {} unreachable; message dropped", message.to);
                if self.settings.curve.is_some() && dealer.retry_if_stuck(message.to) {
                    if let Some(reconnected) = self.reconnected.borrow_mut().as_mut() {
                        reconnected.push(message.to);
                    }
                }
            }
            Err(error) => log::warn!("send to node {}: {error}", message.to),
        }
    }
}

/// One DEALER to peer `id`'s internal port (a CURVE client in a keyed cluster).
fn connect_dealer(
    context: &zmq::Context,
    settings: &PeerSettings,
    id: NodeId,
    endpoint: &str,
    send_queue_max: i32,
) -> Result<zmq::Socket, TransportError> {
    let dealer = zmq_context("peer DEALER", context.socket(zmq::DEALER))?;
    if let Some(curve) = &settings.curve {
        let server_key = curve.members.key_of(id).ok_or(TransportError::Zmq {
            context: "peer DEALER: no public key for the peer",
            source: zmq::Error::EINVAL,
        })?;
        zmq_context(
            "peer DEALER server key",
            dealer.set_curve_serverkey(&server_key),
        )?;
        zmq_context(
            "peer DEALER public key",
            dealer.set_curve_publickey(&curve.own.public),
        )?;
        zmq_context(
            "peer DEALER secret key",
            dealer.set_curve_secretkey(&curve.own.secret),
        )?;
    }
    zmq_context("peer DEALER linger", dealer.set_linger(0))?;
    zmq_context("peer DEALER ipv6", dealer.set_ipv6(settings.ipv6))?;
    zmq_context("peer DEALER immediate", dealer.set_immediate(true))?;
    zmq_context("peer DEALER sndhwm", dealer.set_sndhwm(send_queue_max))?;
    zmq_context(
        "peer DEALER reconnect",
        dealer.set_reconnect_ivl(RECONNECT_INTERVAL_MS),
    )?;
    zmq_context(
        "peer DEALER reconnect max",
        dealer.set_reconnect_ivl_max(RECONNECT_INTERVAL_MAX_MS),
    )?;
    dealer
        .connect(endpoint)
        .map_err(|source| TransportError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(dealer)
}

fn spawn(
    name: &'static str,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, TransportError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(|source| TransportError::Spawn { name, source })
}

/// Starts the connection watcher on the monitors of the loop's `dealers` (drops and
/// recoveries go to `events`) and of the `router` (refused handshakes are logged).
fn start_watcher<E>(
    context: &zmq::Context,
    settings: &PeerSettings,
    router: &zmq::Socket,
    dealers: &PeerDealers,
    events: &Sender<E>,
    stopping: &Arc<AtomicBool>,
) -> Result<Watcher, TransportError>
where
    E: From<PeerConnection> + Send + 'static,
{
    let mut watched = dealers.watch(context)?;
    watched.push(Watched::Listener {
        purpose: "internal port",
        endpoint: settings.bind_endpoint.clone(),
        monitor: zmq_context(
            "peer ROUTER monitor",
            Monitor::attach(context, router, &watch::LISTENER_EVENTS),
        )?,
    });
    Watcher::start(
        "peer-watch",
        watched,
        watch::report_to(events.clone(), stopping.clone()),
    )
}

impl PeerTransport {
    /// Binds the ROUTER (so a port in use is reported here, as a value), connects the
    /// DEALERs and starts the receiver, the two snapshot threads and the connection
    /// watcher. Inbound messages and connection changes go to
    /// `events`. Call it on the thread that will call [`PeerTransport::send`], or move the
    /// transport there before the first send.
    pub fn start<E>(
        context: &zmq::Context,
        settings: PeerSettings,
        events: Sender<E>,
    ) -> Result<PeerTransport, TransportError>
    where
        E: From<Message> + From<SnapshotReport> + From<PeerConnection> + Send + 'static,
    {
        let stopping = Arc::new(AtomicBool::new(false));
        // A start that fails half way stops what it started (the ZAP handler).
        let mut started = StopUnlessStarted {
            stopping: stopping.clone(),
            started: false,
        };
        let mut threads = Vec::new();
        let faults = Arc::new(PeerFaults::default());
        if let Some(curve) = &settings.curve {
            // Before any CURVE socket binds: without a handler, CURVE admits any client key.
            threads.push(super::zap::start(
                context,
                curve.members.clone(),
                curve.clients.clone(),
                stopping.clone(),
                faults.clone(),
            )?);
        }
        let curve = settings.curve.clone();
        let router = bind_router_with(
            context,
            "internal port",
            &settings.bind_endpoint,
            settings.ipv6,
            settings.frame_bytes_max,
            |router| {
                let Some(curve) = &curve else {
                    return Ok(());
                };
                zmq_context("peer ROUTER curve server", router.set_curve_server(true))?;
                zmq_context(
                    "peer ROUTER secret key",
                    router.set_curve_secretkey(&curve.own.secret),
                )?;
                zmq_context(
                    "peer ROUTER ZAP domain",
                    router.set_zap_domain(super::zap::PEER_DOMAIN),
                )
            },
        )?;

        let directory = Arc::new(PeerDirectory::new(settings.peers.clone()));
        let dealers = PeerDealers::connect(context, &settings, faults.clone(), directory.clone())?;
        // The loop's set tells which peers it connected afresh: the snapshot sender's DEALER
        // to that peer is replaced then too (see `Dealer`).
        *dealers.reconnected.borrow_mut() = Some(Vec::new());
        let watcher = start_watcher(context, &settings, &router, &dealers, &events, &stopping)?;
        let mut snapshot_dealers = HashMap::new();
        for (id, endpoint) in &settings.peers {
            snapshot_dealers.insert(
                *id,
                connect_dealer(context, &settings, *id, endpoint, SNAPSHOT_SEND_QUEUE_MAX)?,
            );
        }

        let (stop_receiver, stop_listener) = super::doorbell()?;
        let (snapshot_outbox, snapshot_inbox) = crossbeam_channel::unbounded();
        let (chunks, chunk_inbox) = crossbeam_channel::bounded(transfer::CHUNK_QUEUE_MAX);

        let filter = settings.filter;
        let receiver_directory = directory.clone();
        let keyed = settings.curve.as_ref().map(|curve| curve.members.clone());
        let inbound = Inbound {
            events: events.clone(),
            chunks,
            acks: snapshot_outbox.clone(),
        };
        threads.push(spawn("peer-receiver", {
            let faults = faults.clone();
            move || {
                receive_loop(
                    router,
                    stop_listener,
                    (filter, &receiver_directory),
                    keyed,
                    inbound,
                    &faults,
                )
            }
        })?);

        let sender = SnapshotSender::new(
            settings.sender_settings(),
            snapshot_dealers,
            events.clone(),
            stopping.clone(),
            faults.clone(),
        );
        threads.push(spawn("snapshot-sender", move || {
            sender.run(snapshot_inbox)
        })?);

        let receiver = SnapshotReceiver::new(
            settings.filter.me,
            settings.snapshot_dir.clone(),
            settings.fsync,
            settings.snapshot_receive_limits,
        );
        // Until the node loop says otherwise: no leader known, so no chunk is taken.
        let following = Arc::new(FollowingCell::default());
        let acks = snapshot_outbox.clone();
        let receiver_stopping = stopping.clone();
        threads.push(spawn("snapshot-receiver", {
            let following = following.clone();
            move || {
                transfer::receive_loop(
                    receiver,
                    chunk_inbox,
                    following,
                    acks,
                    events,
                    receiver_stopping,
                )
            }
        })?);

        started.started = true;
        Ok(PeerTransport {
            dealers,
            context: context.clone(),
            settings,
            snapshot_outbox,
            stop_receiver,
            stopping,
            following,
            threads,
            faults,
            watcher: Some(watcher),
        })
    }

    /// The injected faults the transport threads obey (tests only; see `transport::fault`).
    pub fn faults(&self) -> &PeerFaults {
        &self.faults
    }

    /// Encodes each message and hands it to ZeroMQ for its peer, on the caller's thread (the
    /// node loop's). Never blocks: `DONTWAIT` on a DEALER with `ZMQ_IMMEDIATE` drops a message
    /// for a peer that is not connected or whose queue is full, and Raft resends. An
    /// `InstallSnapshot` goes to the snapshot sender, which streams the snapshot file it
    /// names and reports the outcome as a [`SnapshotReport`] event.
    pub fn send(&self, messages: Vec<Message>) {
        for message in messages {
            if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                let to = message.to;
                if self
                    .snapshot_outbox
                    .send(SenderInput::Send(message))
                    .is_err()
                {
                    log::debug!(
                        "snapshot sender has stopped; InstallSnapshot to node {to} dropped"
                    );
                }
                continue;
            }
            self.dealers.send(&message);
        }
        for id in self.dealers.take_reconnected() {
            self.reconnect_snapshot_dealer(id);
        }
    }

    /// Gives the snapshot sender a fresh DEALER to `id` (it never had a connection: see
    /// `Dealer`).
    fn reconnect_snapshot_dealer(&self, id: NodeId) {
        let (_, peers) = self.dealers.directory.snapshot();
        let Some((_, endpoint)) = peers.iter().find(|(peer, _)| *peer == id) else {
            return;
        };
        match connect_dealer(
            &self.context,
            &self.settings,
            id,
            endpoint,
            SNAPSHOT_SEND_QUEUE_MAX,
        ) {
            Ok(dealer) => {
                let _ = self.snapshot_outbox.send(SenderInput::Connect(id, dealer));
            }
            Err(error) => log::error!("cannot connect to node {id} at {endpoint}: {error}"),
        }
    }

    /// Connects another set of DEALERs to the peers, with the same options and the same
    /// injected faults as the loop's, for another thread to send on (the WAL thread's acks).
    pub fn connect_dealers(&self) -> Result<PeerDealers, TransportError> {
        PeerDealers::connect(
            &self.context,
            &self.settings,
            self.faults.clone(),
            self.dealers.directory.clone(),
        )
    }

    /// Follows a membership change: `peers` (every member but this node, with its internal
    /// endpoint) replaces the peers this node connects to. Every DEALER set (the loop's, the
    /// WAL thread's) connects to added peers and closes removed ones on its next send, the
    /// snapshot sender at once, and the receiver takes frames from the added ones.
    pub fn set_peers(&self, peers: Vec<(NodeId, String)>) {
        let (_, before) = self.dealers.directory.snapshot();
        if !self.dealers.directory.replace(peers.clone()) {
            return;
        }
        for (id, endpoint) in &peers {
            if before
                .iter()
                .any(|(peer, known)| peer == id && known == endpoint)
            {
                continue;
            }
            match connect_dealer(
                &self.context,
                &self.settings,
                *id,
                endpoint,
                SNAPSHOT_SEND_QUEUE_MAX,
            ) {
                Ok(dealer) => {
                    let _ = self.snapshot_outbox.send(SenderInput::Connect(*id, dealer));
                }
                Err(error) => log::error!("cannot connect to node {id} at {endpoint}: {error}"),
            }
        }
        for (id, _) in &before {
            if !peers.iter().any(|(peer, _)| peer == id) {
                let _ = self.snapshot_outbox.send(SenderInput::Disconnect(*id));
            }
        }
        log::info!(
            "peers now {:?}",
            peers.iter().map(|(id, _)| id.0).collect::<Vec<_>>()
        );
    }

    /// Follows a membership change in a keyed cluster: `keys` (every member's public key,
    /// this node's included) replaces the keys the ZAP handler admits on the peer port (and,
    /// for `stats` and `status`, on the client port) and the keys DEALERs to added peers
    /// expect. Call it before [`PeerTransport::set_peers`] with the same membership, so a
    /// DEALER to an added peer finds its key. Nothing in a cluster without keys.
    pub fn set_peer_keys(&self, keys: Vec<(NodeId, Key)>) {
        let Some(curve) = &self.settings.curve else {
            return;
        };
        let (added, removed) = curve.members.replace(keys);
        if !added.is_empty() || !removed.is_empty() {
            let ids = |ids: Vec<NodeId>| ids.iter().map(|id| id.0).collect::<Vec<_>>();
            log::info!(
                "peer keys: admitting the keys of nodes {:?}, no longer those of nodes {:?}",
                ids(added),
                ids(removed)
            );
        }
    }

    /// The member keys the ZAP handler admits, in a keyed cluster.
    pub fn member_keys(&self) -> Option<Arc<MemberKeys>> {
        self.settings
            .curve
            .as_ref()
            .map(|curve| curve.members.clone())
    }

    /// Tells the snapshot receiver whom this node follows, in which term (`leader` is this
    /// node itself when it leads, `None` when it knows no leader): it takes chunks only from
    /// that leader in that term, and drops a transfer in progress from anyone else. Call it
    /// whenever the core's term or leader changes. Never blocks for long.
    pub fn follow(&self, term: Term, leader: Option<NodeId>) {
        self.following.set(Following { term, leader });
    }

    /// Drops every snapshot transfer in progress (this node stopped leading), reporting
    /// nothing: the new leader decides what followers need.
    pub fn cancel_snapshot_transfers(&self) {
        let _ = self.snapshot_outbox.send(SenderInput::CancelAll);
    }

    /// Stops the transport threads and closes the sockets (linger 0: peers resend whatever
    /// was in flight to the next leader).
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            watcher.stop();
        }
        let _ = self.snapshot_outbox.send(SenderInput::Stop);
        self.stop_receiver.ring();
        // The snapshot receiver stops when the peer receiver, which feeds it, has gone.
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                log::error!("a peer transport thread panicked");
            }
        }
    }
}

impl Drop for PeerTransport {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Raises the stop flag on drop unless the start got through.
struct StopUnlessStarted {
    stopping: Arc<AtomicBool>,
    started: bool,
}

impl Drop for StopUnlessStarted {
    fn drop(&mut self) {
        if !self.started {
            self.stopping.store(true, Ordering::Relaxed);
        }
    }
}

/// Where the peer receiver puts what it decodes.
struct Inbound<E> {
    events: Sender<E>,
    /// To the snapshot receiver; bounded, a chunk that does not fit is dropped.
    chunks: Sender<SnapshotChunk>,
    /// To the snapshot sender.
    acks: Sender<SenderInput>,
}

fn receive_loop<E>(
    router: zmq::Socket,
    stop: DoorbellListener,
    (mut filter, directory): (PeerFilter, &PeerDirectory),
    keyed: Option<Arc<MemberKeys>>,
    inbound: Inbound<E>,
    faults: &PeerFaults,
) where
    E: From<Message>,
{
    let mut impostors = LogLimiter::new(LOG_INTERVAL);
    let mut removed = LogLimiter::new(LOG_INTERVAL);
    // The admitted members' keys as of `keys_generation`, re-read when they change.
    let mut keys_generation = None;
    let mut admitted: Arc<Vec<(NodeId, Key)>> = Arc::default();
    // None: the first pass reads the directory, which `set_peers` may have changed between
    // the transport's start and this thread's first instruction.
    let mut seen_generation: Option<u64> = None;
    let socket = match router.get_fd() {
        Ok(fd) => fd,
        Err(error) => {
            log::error!("peer receiver: ZMQ_FD: {error}");
            return;
        }
    };
    // Read until EAGAIN before every wait: `wait_for_socket_or_bell` needs the ROUTER's
    // last operation to be a recv that found nothing. This thread never sends on it.
    let mut drained = false;
    loop {
        if drained {
            match wait_for_socket_or_bell(socket, &stop) {
                Ok(woken) if woken.bell => return,
                Ok(_) => {}
                Err(error) => {
                    log::error!("peer receiver: poll: {error}");
                    return;
                }
            }
        } else if stop.rung() {
            return;
        }
        drained = false;
        // Peers added since: their frames pass the filter from now on.
        if Some(directory.generation()) != seen_generation {
            let (generation, peers) = directory.snapshot();
            let highest = peers.iter().map(|(id, _)| id.0 + 1).max().unwrap_or(0);
            filter.node_count = filter
                .node_count
                .max(usize::try_from(highest).unwrap_or(usize::MAX));
            seen_generation = Some(generation);
        }
        for _ in 0..RECEIVE_BATCH_MAX {
            let (frames, user_id) = match recv_frames(&router, keyed.is_some()) {
                Ok(received) => received,
                Err(zmq::Error::EAGAIN) => {
                    drained = true;
                    break;
                }
                Err(zmq::Error::EINTR) => continue,
                Err(error) => {
                    log::error!("peer receiver: recv: {error}");
                    return;
                }
            };
            // [identity, body]: DEALERs send one frame; the ROUTER prepends the identity.
            let [_identity, body] = frames.as_slice() else {
                log::debug!("peer frame with {} parts dropped", frames.len());
                continue;
            };
            let decoded = decode_peer_frame(body, &filter);
            if let Ok(frame) = &decoded {
                let from = match frame {
                    PeerFrame::Raft(message) => message.from,
                    PeerFrame::Transfer(TransferFrame::Chunk(chunk)) => chunk.from,
                    PeerFrame::Transfer(TransferFrame::Ack(ack)) => ack.from,
                };
                if let Some(keys) = &keyed {
                    if user_id.as_deref() != Some(from.to_string().as_str()) {
                        impostors.record(1);
                        if let Some(count) = impostors.take_due(std::time::Instant::now()) {
                            log::warn!(
                                "dropped {count} forged peer frame(s); latest claims node \
                                 {from} but its connection authenticated as node {}",
                                user_id.as_deref().unwrap_or("(none)")
                            );
                        }
                        continue;
                    }
                    // A connection made while its node was a member outlives the removal.
                    if keys_generation != Some(keys.generation()) {
                        keys_generation = Some(keys.generation());
                        admitted = keys.current();
                    }
                    if !admitted.iter().any(|(id, _)| *id == from) {
                        removed.record(1);
                        if let Some(count) = removed.take_due(std::time::Instant::now()) {
                            log::warn!(
                                "dropped {count} peer frame(s) from node {from}, no longer a \
                                 member (its key is no longer admitted)"
                            );
                        }
                        continue;
                    }
                }
                if faults.drops_from(from) {
                    log::trace!("fault injection: message from node {from} dropped");
                    continue;
                }
            }
            match decoded {
                Ok(PeerFrame::Raft(message)) => {
                    if inbound.events.send(E::from(message)).is_err() {
                        return; // The node loop has exited.
                    }
                }
                Ok(PeerFrame::Transfer(TransferFrame::Chunk(chunk))) => {
                    // Never wait on the disk here: heartbeats queue behind us.
                    if inbound.chunks.try_send(chunk).is_err() {
                        log::debug!("snapshot receiver busy; chunk dropped (it will be resent)");
                    }
                }
                Ok(PeerFrame::Transfer(TransferFrame::Ack(ack))) => {
                    let _ = inbound.acks.send(SenderInput::Ack(ack));
                }
                Err(error) => log::debug!("peer message dropped: {error}"),
            }
        }
    }
}

/// One whole message from the ROUTER without waiting, and, when `keyed`, the ZAP user id
/// libzmq attached to it (the id of the member whose key its connection presented).
fn recv_frames(router: &zmq::Socket, keyed: bool) -> Result<(Frames, Option<String>), zmq::Error> {
    if !keyed {
        return router
            .recv_multipart(zmq::DONTWAIT)
            .map(|frames| (frames, None));
    }
    let mut frames = Vec::new();
    let mut user_id = None;
    loop {
        let flags = if frames.is_empty() { zmq::DONTWAIT } else { 0 };
        let mut message = router.recv_msg(flags)?;
        let more = message.get_more();
        if !more {
            user_id = message.gets("User-Id").map(str::to_owned);
        }
        frames.push(message.to_vec());
        if !more {
            return Ok((frames, user_id));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::raft::{Entry, EntryId, EntryPayload, LogIndex, Term};
    use crate::transport::ports::free_port;
    use crate::transport::wire::tests::message;
    use bytes::Bytes;
    use std::time::Duration;

    const CLUSTER: u64 = 0xfeed;

    /// Two distinct free loopback ports, for a node and its one peer.
    pub(crate) fn two_ports() -> Vec<u16> {
        crate::transport::ports::free_ports(2).expect("free loopback ports")
    }

    fn settings(me: u64, ports: &[u16]) -> PeerSettings {
        settings_with(
            me,
            ports,
            &std::env::temp_dir(),
            1024,
            0,
            transfer::STALL_TIMEOUT,
        )
    }

    /// Peer settings for node `me` of a loopback cluster on `ports`, with the snapshot
    /// streaming knobs a test chooses.
    pub(crate) fn settings_with(
        me: u64,
        ports: &[u16],
        snapshot_dir: &std::path::Path,
        snapshot_chunk_bytes: usize,
        snapshot_send_bytes_per_second: u64,
        snapshot_stall_timeout: Duration,
    ) -> PeerSettings {
        PeerSettings {
            filter: PeerFilter {
                cluster_id: CLUSTER,
                me: NodeId(me),
                node_count: ports.len(),
            },
            bind_endpoint: format!("tcp://127.0.0.1:{}", ports[me as usize]),
            peers: (0..ports.len() as u64)
                .filter(|id| *id != me)
                .map(|id| {
                    (
                        NodeId(id),
                        format!("tcp://127.0.0.1:{}", ports[id as usize]),
                    )
                })
                .collect(),
            ipv6: false,
            frame_bytes_max: 2 << 20,
            send_queue_max: PEER_SEND_QUEUE_MAX,
            snapshot_dir: snapshot_dir.to_path_buf(),
            snapshot_chunk_bytes,
            snapshot_send_bytes_per_second,
            snapshot_stall_timeout,
            fsync: FsyncPolicy::Never,
            snapshot_receive_limits: ReceiveLimits::default(),
            curve: None,
        }
    }

    /// What a transport under test hands its node loop.
    #[derive(Debug, PartialEq)]
    pub(crate) enum TestEvent {
        Message(Message),
        Report(SnapshotReport),
        Connection(PeerConnection),
    }

    impl From<Message> for TestEvent {
        fn from(message: Message) -> TestEvent {
            TestEvent::Message(message)
        }
    }

    impl From<PeerConnection> for TestEvent {
        fn from(change: PeerConnection) -> TestEvent {
            TestEvent::Connection(change)
        }
    }

    impl From<SnapshotReport> for TestEvent {
        fn from(report: SnapshotReport) -> TestEvent {
            TestEvent::Report(report)
        }
    }

    #[test]
    fn keyed_transports_talk_over_curve() {
        let ports = two_ports();
        let pairs: Vec<KeyPair> = (0..2)
            .map(|_| KeyPair::generate().expect("keypair"))
            .collect();
        let members: Vec<(NodeId, Key)> = pairs
            .iter()
            .enumerate()
            .map(|(id, pair)| (NodeId(id as u64), pair.public))
            .collect();
        let keyed = |me: usize| PeerSettings {
            curve: Some(PeerCurve::new(pairs[me].clone(), members.clone())),
            ..settings(me as u64, &ports)
        };
        // One context per node: each binds its own ZAP handler.
        let (context_0, context_1) = (zmq::Context::new(), zmq::Context::new());
        let (events_0, _inbox_0) = crossbeam_channel::unbounded::<TestEvent>();
        let (events_1, inbox_1) = crossbeam_channel::unbounded::<TestEvent>();
        let node_0 = PeerTransport::start(&context_0, keyed(0), events_0).expect("0");
        let node_1 = PeerTransport::start(&context_1, keyed(1), events_1).expect("1");
        let ping = heartbeat(0, 1);
        let received = (0..100).find_map(|_| {
            node_0.send(vec![ping.clone()]);
            inbox_1.recv_timeout(Duration::from_millis(100)).ok()
        });
        assert_eq!(received, Some(TestEvent::Message(ping)));
        node_0.stop();
        node_1.stop();
    }

    /// The first message of the expected kind that arrives within about 10 s, resending
    /// `message` on `from` every 100 ms (a DEALER drops messages until it is connected).
    fn resend_until_received(
        from: &PeerTransport,
        message: &Message,
        inbox: &crossbeam_channel::Receiver<TestEvent>,
    ) -> Option<TestEvent> {
        (0..100).find_map(|_| {
            from.send(vec![message.clone()]);
            std::iter::from_fn(|| inbox.recv_timeout(Duration::from_millis(100)).ok())
                .find(|event| matches!(event, TestEvent::Message(_)))
        })
    }

    #[test]
    fn set_peers_connects_to_an_added_peer_and_takes_its_frames() {
        let context = zmq::Context::new();
        let ports = crate::transport::ports::free_ports(3).expect("free loopback ports");
        // Node 0 starts knowing node 1 only; node 2 (added later) knows everyone.
        let mut only_1 = settings(0, &ports);
        only_1.peers.retain(|(id, _)| *id == NodeId(1));
        only_1.filter.node_count = 2;
        let (events_0, inbox_0) = crossbeam_channel::unbounded::<TestEvent>();
        let (events_2, inbox_2) = crossbeam_channel::unbounded::<TestEvent>();
        let node_0 = PeerTransport::start(&context, only_1, events_0).expect("0");
        let node_2 = PeerTransport::start(&context, settings(2, &ports), events_2).expect("2");
        node_0.set_peers(settings(0, &ports).peers);
        let to_2 = heartbeat(0, 2);
        assert_eq!(
            resend_until_received(&node_0, &to_2, &inbox_2),
            Some(TestEvent::Message(to_2))
        );
        // And node 0's receiver now takes node 2's frames.
        let to_0 = heartbeat(2, 0);
        assert_eq!(
            resend_until_received(&node_2, &to_0, &inbox_0),
            Some(TestEvent::Message(to_0))
        );
        node_0.stop();
        node_2.stop();
    }

    /// Keyed nodes 0 and 2 of three, running; node 0 starts knowing nodes 0 and 1 only (its
    /// key list and its peers), as a member before node 2 was added.
    struct KeyedNodeAdded {
        ports: Vec<u16>,
        all: Vec<(NodeId, Key)>,
        node_0: PeerTransport,
        node_2: PeerTransport,
        inbox_0: crossbeam_channel::Receiver<TestEvent>,
        inbox_2: crossbeam_channel::Receiver<TestEvent>,
        _contexts: (zmq::Context, zmq::Context),
    }

    impl KeyedNodeAdded {
        fn start() -> KeyedNodeAdded {
            let ports = crate::transport::ports::free_ports(3).expect("free loopback ports");
            let pairs: Vec<KeyPair> = (0..3)
                .map(|_| KeyPair::generate().expect("keypair"))
                .collect();
            let all: Vec<(NodeId, Key)> = pairs
                .iter()
                .enumerate()
                .map(|(id, pair)| (NodeId(id as u64), pair.public))
                .collect();
            let keyed = |me: usize, keys: Vec<(NodeId, Key)>| PeerSettings {
                curve: Some(PeerCurve::new(pairs[me].clone(), keys)),
                ..settings(me as u64, &ports)
            };
            let mut first = keyed(0, all[..2].to_vec());
            first.peers.retain(|(id, _)| *id == NodeId(1));
            first.filter.node_count = 2;
            let (context_0, context_2) = (zmq::Context::new(), zmq::Context::new());
            let (events_0, inbox_0) = crossbeam_channel::unbounded::<TestEvent>();
            let (events_2, inbox_2) = crossbeam_channel::unbounded::<TestEvent>();
            let node_0 = PeerTransport::start(&context_0, first, events_0).expect("0");
            let node_2 =
                PeerTransport::start(&context_2, keyed(2, all.clone()), events_2).expect("2");
            KeyedNodeAdded {
                ports,
                all,
                node_0,
                node_2,
                inbox_0,
                inbox_2,
                _contexts: (context_0, context_2),
            }
        }

        /// Node 0 learns that node 2 was added: its key first, then its connection.
        fn admit_node_2(&self) {
            self.node_0.set_peer_keys(self.all.clone());
            self.node_0.set_peers(settings(0, &self.ports).peers);
        }

        fn stop(self) {
            self.node_0.stop();
            self.node_2.stop();
        }
    }

    fn heartbeat(from: u64, to: u64) -> Message {
        message(
            from,
            to,
            MessageBody::Heartbeat {
                commit: LogIndex(1),
                read_round: 1,
            },
        )
    }

    #[test]
    fn keyed_peers_follow_set_peer_keys_in_and_out() {
        let nodes = KeyedNodeAdded::start();
        nodes.admit_node_2();
        let to_2 = heartbeat(0, 2);
        assert_eq!(
            resend_until_received(&nodes.node_0, &to_2, &nodes.inbox_2),
            Some(TestEvent::Message(to_2)),
            "node 0's DEALER expects node 2's key"
        );
        let to_0 = heartbeat(2, 0);
        assert_eq!(
            resend_until_received(&nodes.node_2, &to_0, &nodes.inbox_0),
            Some(TestEvent::Message(to_0.clone())),
            "node 0 admits node 2's key"
        );
        // Node 2's removal commits: its open connection's frames are dropped from now on.
        nodes.node_0.set_peer_keys(nodes.all[..2].to_vec());
        while nodes
            .inbox_0
            .recv_timeout(Duration::from_millis(200))
            .is_ok()
        {}
        for _ in 0..20 {
            nodes.node_2.send(vec![to_0.clone()]);
        }
        let late =
            std::iter::from_fn(|| nodes.inbox_0.recv_timeout(Duration::from_millis(500)).ok())
                .find(|event| matches!(event, TestEvent::Message(_)));
        assert_eq!(late, None, "a removed member's frames are dropped");
        nodes.stop();
    }

    #[test]
    fn a_peer_refused_before_its_key_was_admitted_gets_through_once_it_is() {
        let nodes = KeyedNodeAdded::start();
        let to_0 = heartbeat(2, 0);
        // Refused while node 0 does not know node 2's key: node 2's DEALER reports the
        // connection to node 0 closed (libzmq then gives up on it).
        let closed = TestEvent::Connection(PeerConnection {
            peer: NodeId(0),
            up: false,
        });
        let refused = (0..100).any(|_| {
            nodes.node_2.send(vec![to_0.clone()]);
            std::iter::from_fn(|| nodes.inbox_2.recv_timeout(Duration::from_millis(100)).ok())
                .any(|event| event == closed)
        });
        assert!(refused, "node 0 refuses node 2's handshake");
        assert!(
            nodes.inbox_0.try_recv().is_err(),
            "nothing arrives while refused"
        );
        nodes.admit_node_2();
        assert_eq!(
            resend_until_received(&nodes.node_2, &to_0, &nodes.inbox_0),
            Some(TestEvent::Message(to_0)),
            "node 2 gets through once node 0 admits its key"
        );
        nodes.stop();
    }

    #[test]
    fn messages_cross_between_two_nodes_and_responses_come_back() {
        let context = zmq::Context::new();
        let ports = two_ports();
        let (events_0, inbox_0) = crossbeam_channel::unbounded::<TestEvent>();
        let (events_1, inbox_1) = crossbeam_channel::unbounded::<TestEvent>();
        let node_0 = PeerTransport::start(&context, settings(0, &ports), events_0).expect("0");
        let node_1 = PeerTransport::start(&context, settings(1, &ports), events_1).expect("1");

        // The DEALER drops messages until its connection is up (ZMQ_IMMEDIATE), as Raft
        // expects of a lossy network: resend until one arrives, like a heartbeat would.
        let ping = heartbeat(0, 1);
        let received = (0..100).find_map(|_| {
            node_0.send(vec![ping.clone()]);
            inbox_1.recv_timeout(Duration::from_millis(100)).ok()
        });
        assert_eq!(received, Some(TestEvent::Message(ping)));

        let pong = message(1, 0, MessageBody::HeartbeatResponse { read_round: 1 });
        let received = (0..100).find_map(|_| {
            node_1.send(vec![pong.clone()]);
            inbox_0.recv_timeout(Duration::from_millis(100)).ok()
        });
        assert_eq!(received, Some(TestEvent::Message(pong)));
        node_0.stop();
        node_1.stop();
    }

    #[test]
    fn injected_faults_drop_messages_per_direction_until_healed() {
        let context = zmq::Context::new();
        let ports = two_ports();
        let (events_0, _inbox_0) = crossbeam_channel::unbounded::<TestEvent>();
        let (events_1, inbox_1) = crossbeam_channel::unbounded::<TestEvent>();
        let node_0 = PeerTransport::start(&context, settings(0, &ports), events_0).expect("0");
        let node_1 = PeerTransport::start(&context, settings(1, &ports), events_1).expect("1");
        let ping = message(0, 1, MessageBody::HeartbeatResponse { read_round: 1 });
        let connected = (0..100).any(|_| {
            node_0.send(vec![ping.clone()]);
            inbox_1.recv_timeout(Duration::from_millis(100)).is_ok()
        });
        assert!(connected, "the healthy link delivers");
        while inbox_1.recv_timeout(Duration::from_millis(200)).is_ok() {}

        let cases: [(&str, &PeerTransport, &[NodeId], &[NodeId]); 2] = [
            ("sender drops to 1", &node_0, &[NodeId(1)], &[]),
            ("receiver drops from 0", &node_1, &[], &[NodeId(0)]),
        ];
        for (name, faulty, drop_to, drop_from) in cases {
            faulty.faults().set(drop_to, drop_from);
            for _ in 0..20 {
                node_0.send(vec![ping.clone()]);
            }
            assert_eq!(
                inbox_1.recv_timeout(Duration::from_millis(500)).ok(),
                None,
                "{name}: nothing arrives"
            );
            faulty.faults().set(&[], &[]);
            let healed = (0..100).any(|_| {
                node_0.send(vec![ping.clone()]);
                inbox_1.recv_timeout(Duration::from_millis(100)).is_ok()
            });
            assert!(healed, "{name}: delivered again once healed");
            while inbox_1.recv_timeout(Duration::from_millis(200)).is_ok() {}
        }
        node_0.stop();
        node_1.stop();
    }

    #[test]
    fn a_dead_peer_never_blocks_sends() {
        let context = zmq::Context::new();
        let ports = two_ports();
        let (events, _inbox) = crossbeam_channel::unbounded::<TestEvent>();
        let node = PeerTransport::start(&context, settings(0, &ports), events).expect("start");
        let big = message(
            0,
            1,
            MessageBody::AppendEntries {
                prev: EntryId::default(),
                entries: vec![Entry {
                    term: Term(1),
                    index: LogIndex(1),
                    payload: EntryPayload::Command(Bytes::from(vec![0u8; 64 * 1024])),
                }],
                commit: LogIndex(0),
            },
        );
        for _ in 0..10_000 {
            node.send(vec![big.clone()]);
        }
        node.stop(); // Reached at all: no send waited for the dead peer.
    }

    #[test]
    fn binding_a_port_in_use_is_an_error_value() {
        let context = zmq::Context::new();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let (events, _inbox) = crossbeam_channel::unbounded::<TestEvent>();
        let error = PeerTransport::start(
            &context,
            settings(0, &[port, free_port().expect("a free port")]),
            events,
        )
        .err()
        .expect("port in use");
        assert_eq!(
            error.to_string(),
            format!("cannot bind tcp://127.0.0.1:{port} (internal port): Address already in use")
        );
    }
}
