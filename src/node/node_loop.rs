//! The node loop: the one thread that owns the Raft core, the log store and the queue.
//!
//! Each round: block for one event, drain a bounded batch more, then work off the core's
//! `Ready`s (the order is the core's contract, see `raft` module docs):
//!
//! 1. send `messages` (a leader's appends may leave before its own copy is durable);
//! 2. persist the hard state and entries with ONE sync for the whole batch (group commit:
//!    every proposal that arrived in the batch shares it);
//! 3. send `messages_after_persist` (votes and acks promise durability) and report
//!    `on_persisted`;
//! 4. apply `committed` to the queue and answer the writes waiting there, but only if the
//!    applied entry is the one they proposed (same term), else a new leader overwrote it;
//! 5. release reads whose leadership was confirmed once applied reaches their index.
//!
//! Then expire late requests (TIMEOUT: outcome unknown), log role changes, ring the client
//! thread. Requests never wait for one another: each is proposed as it arrives.
//!
//! A storage error stops the node from participating at all (no more ticks, messages or
//! proposals: an fsync that failed may have lost data, so retrying could acknowledge what is
//! not on disk). It keeps answering `status`, and everything else `UNAVAILABLE`, so the
//! operator sees the logged error without the process crash-looping under a supervisor.

use super::pending::{PendingRequests, WriteEnd};
use super::Event;
use crate::config::NodeConfig;
use crate::protocol::{
    ErrorCode, ErrorInfo, LeaderInfo, Operation, Outcome, PeerProgress, Reply, StatsReport,
    StatusReport,
};
use crate::queue::{Command, LoggedCommand, Queue};
use crate::raft::{
    Core, Entry, EntryPayload, HardState, LogIndex, NodeId, ProposeError, Ready, Role, Term,
};
use crate::storage::{LogStore, StorageError};
use crate::transport::client::{ClientRequest, ClientTransport, Ticket};
use crate::transport::peer::PeerTransport;
use crossbeam_channel::Receiver;
use std::time::{Duration, Instant};

/// Events handled per round before the core's output is processed: bounds the latency a
/// burst adds to everything queued behind it, while still batching syncs.
const EVENT_BATCH_MAX: usize = 512;

/// How long a leader that was asked to stop waits for its leadership transfer (and for the
/// requests in flight to be answered) before giving up (PROTOCOL.md §7: exit within ~1 s).
const SHUTDOWN_TRANSFER_WAIT: Duration = Duration::from_millis(300);

struct Shutdown {
    /// Stop waiting at this instant, whatever is still in flight.
    give_up_at: Instant,
}

pub(super) struct NodeLoop {
    config: NodeConfig,
    core: Core,
    store: Box<dyn LogStore + Send>,
    queue: Queue,
    clients: ClientTransport,
    peers: PeerTransport,
    pending: PendingRequests,
    next_read_id: u64,
    /// The last index applied to `queue`.
    applied: LogIndex,
    /// The hard state last made durable, to sync only when term or vote changed.
    durable_hard_state: HardState,
    /// Set after a storage error (or a snapshot it cannot install): the node no longer
    /// participates in Raft and answers everything but `status` UNAVAILABLE.
    halted: bool,
    shutdown: Option<Shutdown>,
    /// What was last logged, to log changes only.
    observed: (Role, Term, Option<NodeId>),
}

impl NodeLoop {
    pub(super) fn new(
        config: NodeConfig,
        core: Core,
        store: Box<dyn LogStore + Send>,
        queue: Queue,
        clients: ClientTransport,
        peers: PeerTransport,
        durable_hard_state: HardState,
    ) -> NodeLoop {
        let observed = (core.role(), core.term(), core.leader());
        NodeLoop {
            config,
            core,
            store,
            queue,
            clients,
            peers,
            pending: PendingRequests::new(),
            next_read_id: 0,
            applied: LogIndex::ZERO,
            durable_hard_state,
            halted: false,
            shutdown: None,
            observed,
        }
    }

    /// Runs until shutdown has completed, then stops the transport threads.
    pub(super) fn run(mut self, events: &Receiver<Event>) {
        loop {
            // With work left over (a long log being applied slice by slice), only look for
            // events; otherwise sleep until one comes.
            let first = if !self.halted && self.core.has_ready() {
                match events.try_recv() {
                    Ok(event) => Some(event),
                    Err(crossbeam_channel::TryRecvError::Empty) => None,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                }
            } else {
                match events.recv() {
                    Ok(event) => Some(event),
                    Err(_) => break, // Every producer is gone; nothing more can happen.
                }
            };
            if let Some(first) = first {
                self.handle(first);
            }
            for _ in 0..EVENT_BATCH_MAX {
                match events.try_recv() {
                    Ok(event) => self.handle(event),
                    Err(_) => break,
                }
            }
            self.process_ready();
            self.expire(Instant::now());
            self.log_changes();
            self.clients.flush();
            if self.shutdown_done() {
                break;
            }
        }
        self.finish();
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Client(request) => self.on_client_request(request),
            Event::Peer(message) => {
                if !self.halted {
                    self.core.step(message);
                }
            }
            Event::Tick => {
                if !self.halted {
                    self.core.tick();
                }
            }
            Event::Shutdown => self.on_shutdown(),
        }
    }

    fn on_client_request(&mut self, client_request: ClientRequest) {
        let ClientRequest {
            ticket,
            request,
            received_at,
        } = client_request;
        let operation = request.operation;
        if operation == Operation::Status {
            let reply = self.status();
            self.clients.reply(ticket, reply);
            return;
        }
        if operation == Operation::Stats {
            let reply = self.stats();
            self.clients.reply(ticket, reply);
            return;
        }
        if let Operation::Fault { drop_to, drop_from } = operation {
            self.on_fault(ticket, &drop_to, &drop_from);
            return;
        }
        if self.shutdown.is_some() {
            self.fail(
                ticket,
                ErrorCode::ShuttingDown,
                "the node is shutting down; retry on another node",
            );
            return;
        }
        if self.halted {
            self.fail(
                ticket,
                ErrorCode::Unavailable,
                "this node has stopped serving (its log says why); use another node",
            );
            return;
        }
        // From arrival at the socket, so time queued behind other events counts. One client
        // thread stamps them in channel order, so deadlines stay in arrival order.
        let deadline = received_at + self.config.request_timeout;
        let command = match operation {
            Operation::Status | Operation::Stats | Operation::Fault { .. } => {
                unreachable!("answered above")
            }
            Operation::ListTopics => {
                let read_id = self.next_read_id;
                self.next_read_id += 1;
                match self.core.read_index(read_id) {
                    Ok(()) => self.pending.add_read(read_id, ticket, deadline),
                    Err(error) => self.refused(ticket, error),
                }
                return;
            }
            Operation::CreateTopic { topic } => Command::CreateTopic { topic },
            Operation::Put { topic, message } => Command::Put { topic, message },
            Operation::Get { topic } => Command::Get { topic },
        };
        let bytes = LoggedCommand {
            session: request.session,
            command,
        }
        .encode();
        match self.core.propose(bytes) {
            Ok(entry) => {
                log::trace!("request {ticket:?} proposed at {entry}");
                if let Some(overwritten) = self.pending.add_write(entry, ticket, deadline) {
                    self.answer_lost(overwritten);
                }
            }
            Err(error) => self.refused(ticket, error),
        }
    }

    /// Tests only (`transport::fault`): from now on, drop peer messages to and from the named
    /// nodes. Refused unless the node was started with `--fault-injection`.
    fn on_fault(&mut self, ticket: Ticket, drop_to: &[u64], drop_from: &[u64]) {
        if !self.config.fault_injection {
            self.fail(
                ticket,
                ErrorCode::BadRequest,
                "fault injection is for tests only and is off: start the node with \
                 --fault-injection to enable it",
            );
            return;
        }
        log::warn!("fault injection: dropping messages to {drop_to:?} and from {drop_from:?}");
        let to: Vec<NodeId> = drop_to.iter().map(|id| NodeId(*id)).collect();
        let from: Vec<NodeId> = drop_from.iter().map(|id| NodeId(*id)).collect();
        self.peers.faults().set(&to, &from);
        self.answer(ticket, Outcome::Done);
    }

    fn refused(&mut self, ticket: Ticket, error: ProposeError) {
        match error {
            ProposeError::NotLeader { .. } => {
                self.fail(ticket, ErrorCode::NotLeader, "this node is not the leader")
            }
            ProposeError::TransferInProgress => self.fail(
                ticket,
                ErrorCode::Unavailable,
                "leadership is being transferred; retry shortly",
            ),
            ProposeError::TooManyPendingReads => self.fail(
                ticket,
                ErrorCode::Unavailable,
                "too many reads in flight; retry shortly",
            ),
            ProposeError::UnknownPeer(peer) => {
                unreachable!("reads and proposals name no peer, yet the core named {peer}")
            }
        }
    }

    /// Handles Readies until the core has none, or until a slice of committed entries was
    /// applied: the rest waits for the next round, so events (status, ticks, peers) are
    /// served in between while a restarted node replays a long log.
    fn process_ready(&mut self) {
        while !self.halted && self.core.has_ready() {
            let applied_before = self.applied;
            let ready = self.core.ready();
            let Ready {
                snapshot,
                hard_state,
                entries,
                messages,
                messages_after_persist,
                committed,
                read_states,
                aborted_reads,
            } = ready;
            if let Some(snapshot) = snapshot {
                // Only a leader that compacted its log sends one, and no node of this version
                // compacts: a peer runs a newer version. Installing needs the snapshot's data,
                // which this transport does not carry, so stop rather than diverge.
                log::error!(
                    "the leader sent a snapshot (up to {}), which this version cannot install; \
                     no longer serving (upgrade this node)",
                    snapshot.last
                );
                self.stop_participating("this node cannot follow the leader; upgrade it");
                return;
            }
            self.peers.send(messages);
            if let Err(error) = self.persist(hard_state, &entries) {
                self.on_storage_failure(error);
                return;
            }
            self.peers.send(messages_after_persist);
            if let Some(last) = entries.last() {
                self.core.on_persisted(last.id());
            }
            self.apply(committed);
            for read in read_states {
                self.pending.confirm_read(read.read_id, read.index);
            }
            for read_id in aborted_reads {
                if let Some(ticket) = self.pending.abort_read(read_id) {
                    self.fail(
                        ticket,
                        ErrorCode::NotLeader,
                        "leadership was lost before the read was confirmed",
                    );
                }
            }
            let ready_reads = self.pending.take_ready_reads(self.applied);
            if !ready_reads.is_empty() {
                let topics = self.queue.topics();
                for ticket in ready_reads {
                    self.answer(ticket, Outcome::Topics(topics.clone()));
                }
            }
            if self.applied != applied_before {
                break;
            }
        }
    }

    /// Makes `hard_state` and `entries` durable: one sync, and none at all when only the
    /// commit index moved (it is a hint on restart, see `LogStore::set_hard_state`).
    fn persist(
        &mut self,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        let mut must_sync = !entries.is_empty();
        if let Some(hard_state) = hard_state {
            self.store.set_hard_state(&hard_state)?;
            must_sync |= hard_state.term != self.durable_hard_state.term
                || hard_state.vote != self.durable_hard_state.vote;
        }
        if !entries.is_empty() {
            self.store.append(entries)?;
        }
        if must_sync {
            self.store.sync()?;
        }
        if let Some(hard_state) = hard_state {
            self.durable_hard_state = hard_state;
        }
        Ok(())
    }

    fn on_storage_failure(&mut self, error: StorageError) {
        log::error!(
            "storage failed, no longer serving (restart the node once the disk is fixed): \
             {error}"
        );
        self.stop_participating("this node's storage failed; the outcome is unknown");
    }

    /// Fail-stop without exiting: no more ticks, messages or proposals; pending requests
    /// are answered UNAVAILABLE with `why`.
    fn stop_participating(&mut self, why: &str) {
        self.halted = true;
        for ticket in self.pending.take_all() {
            self.fail(ticket, ErrorCode::Unavailable, why);
        }
    }

    fn apply(&mut self, committed: Vec<Entry>) {
        for entry in committed {
            assert_eq!(
                entry.index,
                self.applied.next(),
                "node {}: committed entries must be applied in order",
                self.config.id
            );
            let outcome = match &entry.payload {
                EntryPayload::Noop => None,
                EntryPayload::Command(bytes) => Some(self.queue.apply(entry.index, bytes)),
            };
            self.applied = entry.index;
            match (self.pending.take_write(entry.id()), outcome) {
                (None, _) => {}
                (Some((ticket, WriteEnd::Applied)), Some(outcome)) => {
                    log::trace!("request {ticket:?} applied at {}", entry.id());
                    self.answer(ticket, outcome);
                }
                (Some((ticket, _)), _) => self.answer_lost(ticket),
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        for ticket in self.pending.take_expired(now) {
            self.fail(
                ticket,
                ErrorCode::Timeout,
                &format!(
                    "not committed within {} ms; the outcome is unknown",
                    self.config.request_timeout.as_millis()
                ),
            );
        }
    }

    /// A write whose entry was overwritten by a new leader: it never took effect.
    fn answer_lost(&mut self, ticket: Ticket) {
        if self.core.role() == Role::Leader {
            self.fail(
                ticket,
                ErrorCode::Unavailable,
                "leadership changed before the request committed; it was not applied",
            );
        } else {
            self.fail(
                ticket,
                ErrorCode::NotLeader,
                "leadership changed before the request committed; it was not applied",
            );
        }
    }

    fn fail(&mut self, ticket: Ticket, code: ErrorCode, message: &str) {
        self.answer(ticket, Outcome::Failed(ErrorInfo::new(code, message)));
    }

    fn answer(&mut self, ticket: Ticket, outcome: Outcome) {
        let leader = self.leader_info();
        self.clients
            .reply(ticket, Reply::Outcome { outcome, leader });
    }

    /// The leader's client address, for v2 replies and NOT_LEADER hints. None once halted:
    /// the core is frozen in whatever role it had, and a halted node must not send clients
    /// back to itself while the others elect a new leader.
    fn leader_info(&self) -> Option<LeaderInfo> {
        if self.halted {
            return None;
        }
        let leader = self.core.leader()?;
        let address = self.config.cluster.address(leader)?;
        Some(LeaderInfo {
            id: leader.0,
            ip: address.ip.clone(),
            port: address.port,
        })
    }

    fn stats(&self) -> Reply {
        let stats = self.queue.stats();
        Reply::Stats(StatsReport {
            id: self.config.id.0,
            last_applied: self.applied.0,
            digest: self.queue.digest(),
            topic_count: stats.topics as u64,
            message_count: stats.messages as u64,
            payload_bytes: stats.payload_bytes as u64,
            session_count: stats.sessions as u64,
        })
    }

    fn status(&self) -> Reply {
        let status = self.core.status();
        // A halted node takes no part in Raft: it must not claim to lead (clients and tools
        // find the leader by status), nor vouch for another leader it no longer hears from.
        let (role, leader) = if self.halted {
            (Role::Follower.client_name(), None)
        } else {
            (status.role.client_name(), status.leader)
        };
        let peers = if self.halted {
            &[][..]
        } else {
            &status.progress[..]
        };
        Reply::Status(StatusReport {
            role: role.to_string(),
            term: status.term.0,
            id: status.id.0,
            leader: leader.map(|leader| leader.0),
            commit_index: status.commit_index.0,
            last_applied: self.applied.0,
            last_log_index: status.last_index.0,
            peers: peers
                .iter()
                .map(|progress| PeerProgress {
                    id: progress.id.0,
                    match_index: progress.match_index.0,
                    next_index: progress.next_index.0,
                    state: if progress.replicating {
                        "replicate"
                    } else {
                        "probe"
                    }
                    .to_string(),
                })
                .collect(),
            fsync: self.config.fsync.as_str().to_string(),
        })
    }

    fn log_changes(&mut self) {
        let now = (self.core.role(), self.core.term(), self.core.leader());
        if now == self.observed {
            return;
        }
        let (role, term, leader) = now;
        // The core logs elections and step-downs at info; learning who leads is ours to say.
        match (role, leader) {
            (Role::Leader, _) => log::debug!("became leader in term {term}"),
            (Role::Follower, Some(leader)) => {
                log::info!("following node {leader} in term {term}")
            }
            (Role::Follower, None) => log::debug!("follower without a leader in term {term}"),
            (Role::PreCandidate, _) => log::debug!("pre-campaigning after term {term}"),
            (Role::Candidate, _) => log::debug!("campaigning in term {term}"),
        }
        self.observed = now;
    }

    /// SIGTERM/SIGINT: stop taking requests; a leader hands leadership to its most
    /// up-to-date peer so the cluster does not wait out an election timeout. A second
    /// signal stops waiting.
    fn on_shutdown(&mut self) {
        let now = Instant::now();
        if let Some(shutdown) = &mut self.shutdown {
            log::info!("second signal: stopping now");
            shutdown.give_up_at = now;
            return;
        }
        log::info!("shutting down");
        self.shutdown = Some(Shutdown {
            give_up_at: now + SHUTDOWN_TRANSFER_WAIT,
        });
        if self.halted || self.core.role() != Role::Leader {
            return;
        }
        let status = self.core.status();
        let Some(target) = status
            .progress
            .iter()
            .filter(|progress| progress.id != self.config.id)
            .max_by_key(|progress| progress.match_index)
        else {
            return; // A single-node cluster: nobody to hand over to.
        };
        match self.core.transfer_leader(target.id) {
            Ok(()) => log::info!("handing leadership to node {}", target.id),
            Err(error) => log::info!("cannot hand leadership to node {}: {error}", target.id),
        }
    }

    /// Shutdown may complete once this node no longer leads (or never did) and nothing it
    /// started is unanswered, or when the wait is over.
    fn shutdown_done(&self) -> bool {
        let Some(shutdown) = &self.shutdown else {
            return false;
        };
        let is_leader = !self.halted && self.core.role() == Role::Leader;
        let single_node = self.config.cluster.node_count() == 1;
        let settled = self.pending.is_empty() && (!is_leader || single_node);
        settled || Instant::now() >= shutdown.give_up_at
    }

    /// Answers what is left, makes what was acknowledged durable, and stops the transports.
    fn finish(mut self) {
        for ticket in self.pending.take_all() {
            self.fail(
                ticket,
                ErrorCode::ShuttingDown,
                "the node is shutting down; the outcome is unknown",
            );
        }
        if !self.halted {
            // Everything acknowledged was synced before its reply; this catches the lazily
            // persisted commit index.
            if let Err(error) = self.store.sync() {
                log::error!("final sync failed: {error}");
            }
        }
        self.clients.flush();
        self.clients.stop();
        self.peers.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, NodeArgs};
    use crate::protocol::{decode_reply, encode_request, Encoding, Request};
    use crate::queue::QueueConfig;
    use crate::storage::{MemStore, RestoredState};
    use crate::transport::client::{ClientSettings, ClientTransport};
    use crate::transport::peer::{PeerSettings, PeerTransport};
    use clap::Parser;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A store whose every call fails once `broken` is set, as a dying disk does.
    struct BreakableStore {
        inner: MemStore,
        broken: Arc<AtomicBool>,
    }

    impl BreakableStore {
        fn check(&self) -> Result<(), StorageError> {
            if self.broken.load(Ordering::SeqCst) {
                Err(StorageError::Io(std::io::Error::other(
                    "injected fsync failure",
                )))
            } else {
                Ok(())
            }
        }
    }

    impl LogStore for BreakableStore {
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            self.check()?;
            self.inner.append(entries)
        }

        fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
            self.check()?;
            self.inner.set_hard_state(hard_state)
        }

        fn sync(&mut self) -> Result<(), StorageError> {
            self.check()?;
            self.inner.sync()
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port")
    }

    fn call(socket: &zmq::Socket, operation: Operation) -> Reply {
        let request = Request {
            version: 2,
            session: None,
            operation,
        };
        socket
            .send_multipart([&b""[..], &encode_request(&request, Encoding::MsgPack)], 0)
            .expect("send");
        assert!(
            socket.poll(zmq::POLLIN, 10_000).expect("poll") > 0,
            "no reply in 10 s"
        );
        let frames = socket.recv_multipart(0).expect("recv");
        decode_reply(frames.last().expect("a body")).expect("a reply")
    }

    fn failure_code(reply: &Reply) -> Option<ErrorCode> {
        match reply {
            Reply::Outcome {
                outcome: Outcome::Failed(error),
                ..
            } => Some(error.code),
            _ => None,
        }
    }

    #[test]
    fn a_storage_failure_stops_acknowledging_but_keeps_answering() {
        let (port, internal_port) = (free_port(), free_port());
        let text = format!(
            r#"{{"addresses": [{{"ip": "127.0.0.1", "port": {port}, "internal_port": {internal_port}}}]}}"#
        );
        let cluster = ClusterConfig::parse(&text, "test").expect("config");
        let args = NodeArgs::try_parse_from(["rrmq-node", "test", "0"]).expect("args");
        let config = NodeConfig::new(&args, cluster).expect("node config");

        let context = zmq::Context::new();
        let (events, inbox) = crossbeam_channel::bounded::<Event>(64);
        let clients = ClientTransport::start(
            &context,
            ClientSettings::from_config(&config).expect("settings"),
            events.clone(),
        )
        .expect("client transport");
        let peers = PeerTransport::start(
            &context,
            PeerSettings::from_config(&config).expect("settings"),
            events.clone(),
        )
        .expect("peer transport");
        let core = Core::new(
            config.id,
            config.cluster.voters(),
            config.raft.clone(),
            RestoredState::default(),
            7,
        );
        let broken = Arc::new(AtomicBool::new(false));
        let store = BreakableStore {
            inner: MemStore::new(),
            broken: broken.clone(),
        };
        let queue = Queue::new(QueueConfig::default());
        let node = NodeLoop::new(
            config,
            core,
            Box::new(store),
            queue,
            clients,
            peers,
            HardState::default(),
        );
        let node = std::thread::spawn(move || node.run(&inbox));
        let ticker_events = events.clone();
        let ticker = std::thread::spawn(move || {
            while ticker_events.send(Event::Tick).is_ok() {
                std::thread::sleep(Duration::from_millis(10));
            }
        });

        let socket = context.socket(zmq::DEALER).expect("socket");
        socket.set_linger(0).expect("linger");
        socket
            .connect(&format!("tcp://127.0.0.1:{port}"))
            .expect("connect");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(call(&socket, Operation::Status), Reply::Status(ref s) if s.role == "Leader")
        {
            assert!(Instant::now() < deadline, "no leader");
            std::thread::sleep(Duration::from_millis(20));
        }
        let create = Operation::CreateTopic { topic: "t".into() };
        assert_eq!(failure_code(&call(&socket, create)), None, "created");

        broken.store(true, Ordering::SeqCst);
        let put = Operation::Put {
            topic: "t".into(),
            message: crate::protocol::Payload::Text("m".into()),
        };
        assert_eq!(
            failure_code(&call(&socket, put.clone())),
            Some(ErrorCode::Unavailable),
            "the write that hit the failure is not acknowledged"
        );
        for operation in [
            put,
            Operation::ListTopics,
            Operation::Get { topic: "t".into() },
        ] {
            assert_eq!(
                failure_code(&call(&socket, operation.clone())),
                Some(ErrorCode::Unavailable),
                "{operation:?} after the failure"
            );
        }
        match call(&socket, Operation::Status) {
            Reply::Status(status) => {
                assert_eq!(
                    status.role, "Follower",
                    "a halted node does not claim to lead"
                );
                assert_eq!(status.leader, None);
                assert!(status.peers.is_empty());
            }
            other => panic!("status is still answered, got {other:?}"),
        }
        let put = Operation::Put {
            topic: "t".into(),
            message: crate::protocol::Payload::Text("m".into()),
        };
        assert!(
            matches!(call(&socket, put), Reply::Outcome { leader: None, .. }),
            "no leader hint back to the halted node"
        );

        events.send(Event::Shutdown).expect("loop alive");
        node.join().expect("the loop ends without panicking");
        drop(events);
        ticker.join().expect("ticker");
    }

    /// Runs a one-node loop with `flags` (no ticks: `fault` needs no leader) until the
    /// returned sender gets `Shutdown`; returns a socket connected to its client port.
    fn start_idle_node(
        flags: &[&str],
    ) -> (
        zmq::Context,
        zmq::Socket,
        crossbeam_channel::Sender<Event>,
        std::thread::JoinHandle<()>,
    ) {
        let (port, internal_port) = (free_port(), free_port());
        let text = format!(
            r#"{{"addresses": [{{"ip": "127.0.0.1", "port": {port}, "internal_port": {internal_port}}}]}}"#
        );
        let cluster = ClusterConfig::parse(&text, "test").expect("config");
        let args =
            NodeArgs::try_parse_from(["rrmq-node", "test", "0"].iter().chain(flags)).expect("args");
        let config = NodeConfig::new(&args, cluster).expect("node config");
        let context = zmq::Context::new();
        let (events, inbox) = crossbeam_channel::bounded::<Event>(64);
        let clients = ClientTransport::start(
            &context,
            ClientSettings::from_config(&config).expect("settings"),
            events.clone(),
        )
        .expect("client transport");
        let peers = PeerTransport::start(
            &context,
            PeerSettings::from_config(&config).expect("settings"),
            events.clone(),
        )
        .expect("peer transport");
        let core = Core::new(
            config.id,
            config.cluster.voters(),
            config.raft.clone(),
            RestoredState::default(),
            7,
        );
        let node = NodeLoop::new(
            config,
            core,
            Box::new(MemStore::new()),
            Queue::new(QueueConfig::default()),
            clients,
            peers,
            HardState::default(),
        );
        let node = std::thread::spawn(move || node.run(&inbox));
        let socket = context.socket(zmq::DEALER).expect("socket");
        socket.set_linger(0).expect("linger");
        socket
            .connect(&format!("tcp://127.0.0.1:{port}"))
            .expect("connect");
        (context, socket, events, node)
    }

    #[test]
    fn fault_requests_are_refused_without_the_test_flag_and_obeyed_with_it() {
        let fault = Operation::Fault {
            drop_to: vec![1, 2],
            drop_from: vec![2],
        };
        let cases: [(&[&str], Option<ErrorCode>); 2] = [
            (&[], Some(ErrorCode::BadRequest)),
            (&["--fault-injection"], None),
        ];
        for (number, (flags, expected)) in cases.into_iter().enumerate() {
            let (_context, socket, events, node) = start_idle_node(flags);
            let reply = call(&socket, fault.clone());
            assert_eq!(failure_code(&reply), expected, "case {number}: {reply:?}");
            if let Reply::Outcome {
                outcome: Outcome::Failed(error),
                ..
            } = &reply
            {
                assert!(
                    error.message.contains("--fault-injection"),
                    "case {number}: the refusal names the flag: {}",
                    error.message
                );
            }
            events.send(Event::Shutdown).expect("loop alive");
            node.join().expect("the loop ends without panicking");
        }
    }
}
