use super::*;
use crate::config::{ClusterConfig, NodeArgs};
use crate::protocol::{decode_reply, encode_request, Encoding, Operation, Reply, Request};
use crate::queue::QueueConfig;
use crate::raft::InitialState;
use crate::raft::SnapshotMeta;
use crate::storage::MemStore;
use crate::transport::client::{ClientSettings, ClientTransport};
use crate::transport::peer::{PeerSettings, PeerTransport};
use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    fn compact_to(&mut self, index: LogIndex) -> Result<(), StorageError> {
        self.check()?;
        self.inner.compact_to(index)
    }

    fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        self.check()?;
        self.inner.install_snapshot(snapshot)
    }
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

/// A store whose `sync` waits for a permit once `gated` is set: a disk that is slow
/// exactly when the test says so.
struct GatedStore {
    inner: MemStore,
    gated: Arc<AtomicBool>,
    permits: crossbeam_channel::Receiver<()>,
}

impl LogStore for GatedStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.inner.append(entries)
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.inner.set_hard_state(hard_state)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if self.gated.load(Ordering::SeqCst) {
            let _ = self.permits.recv();
        }
        self.inner.sync()
    }

    fn compact_to(&mut self, index: LogIndex) -> Result<(), StorageError> {
        self.inner.compact_to(index)
    }

    fn install_snapshot(&mut self, snapshot: SnapshotMeta) -> Result<(), StorageError> {
        self.inner.install_snapshot(snapshot)
    }
}

fn receive(socket: &zmq::Socket, timeout_ms: i64) -> Option<Reply> {
    if socket.poll(zmq::POLLIN, timeout_ms).expect("poll") == 0 {
        return None;
    }
    let frames = socket.recv_multipart(0).expect("recv");
    Some(decode_reply(frames.last().expect("a body")).expect("a reply"))
}

fn send(socket: &zmq::Socket, operation: Operation) {
    let request = Request {
        version: 2,
        session: None,
        operation,
    };
    socket
        .send_multipart([&b""[..], &encode_request(&request, Encoding::MsgPack)], 0)
        .expect("send");
}

#[test]
fn the_loop_keeps_answering_while_a_sync_is_slow_and_acknowledges_only_after_it() {
    let gated = Arc::new(AtomicBool::new(false));
    let (permit, permits) = crossbeam_channel::unbounded();
    let store = GatedStore {
        inner: MemStore::new(),
        gated: gated.clone(),
        permits,
    };
    let leader = TickingLeader::start(Box::new(store));
    let socket = &leader.socket;

    gated.store(true, Ordering::SeqCst);
    send(
        socket,
        Operation::Put {
            topic: "t".into(),
            message: crate::protocol::Payload::Text("m".into()),
        },
    );
    // The put's sync is stuck; the loop must still answer, and must not acknowledge
    // the put: a one-node leader commits only once its own copy is durable.
    send(socket, Operation::Status);
    match receive(socket, 10_000) {
        Some(Reply::Status(status)) => assert_eq!(
            status.wal_entries, 2,
            "the no-op and the create are durable, the put is not yet"
        ),
        other => panic!("status is answered during the sync, got {other:?}"),
    }
    assert!(
        receive(socket, 200).is_none(),
        "nothing is acknowledged before its sync returns"
    );
    permit.send(()).expect("the WAL thread waits");
    gated.store(false, Ordering::SeqCst);
    match receive(socket, 10_000) {
        Some(Reply::Outcome {
            outcome: Outcome::Done,
            ..
        }) => {}
        other => panic!("the put is acknowledged once durable, got {other:?}"),
    }
    match call(socket, Operation::Status) {
        Reply::Status(status) => {
            assert_eq!(status.wal_entries, 3, "the put is counted");
            assert_eq!(
                status.requests, 2,
                "the create and the put are counted as requests, the status polls are not"
            );
        }
        other => panic!("status, got {other:?}"),
    }

    leader.stop();
}

#[test]
fn a_storage_failure_stops_acknowledging_but_keeps_answering() {
    let broken = Arc::new(AtomicBool::new(false));
    let store = BreakableStore {
        inner: MemStore::new(),
        broken: broken.clone(),
    };
    let leader = TickingLeader::start(Box::new(store));
    let socket = &leader.socket;

    broken.store(true, Ordering::SeqCst);
    let put = Operation::Put {
        topic: "t".into(),
        message: crate::protocol::Payload::Text("m".into()),
    };
    assert_eq!(
        failure_code(&call(socket, put.clone())),
        Some(ErrorCode::Unavailable),
        "the write that hit the failure is not acknowledged"
    );
    for operation in [
        put,
        Operation::ListTopics,
        Operation::Get { topic: "t".into() },
    ] {
        assert_eq!(
            failure_code(&call(socket, operation.clone())),
            Some(ErrorCode::Unavailable),
            "{operation:?} after the failure"
        );
    }
    match call(socket, Operation::Status) {
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
        matches!(call(socket, put), Reply::Outcome { leader: None, .. }),
        "no leader hint back to the halted node"
    );

    leader.stop();
}

#[test]
fn a_leader_refuses_writes_over_its_uncommitted_bytes_until_they_commit() {
    let gated = Arc::new(AtomicBool::new(false));
    let (permit, permits) = crossbeam_channel::unbounded();
    let store = GatedStore {
        inner: MemStore::new(),
        gated: gated.clone(),
        permits,
    };
    // A 1000-byte message counts about 1150 bytes: two fit under 3000, a third does not.
    let leader = TickingLeader::start_with(&["--uncommitted-bytes-max", "3000"], Box::new(store));
    let socket = &leader.socket;
    let put = |fill: char| Operation::Put {
        topic: "t".into(),
        message: crate::protocol::Payload::Text(fill.to_string().repeat(1000)),
    };

    // The disk stalls: a one-node leader commits nothing until its own copy is durable.
    gated.store(true, Ordering::SeqCst);
    send(socket, put('a'));
    send(socket, put('b'));
    // Answered at once, while the two before it still wait.
    match call(socket, put('c')) {
        Reply::Outcome {
            outcome: Outcome::Failed(error),
            ..
        } => {
            assert_eq!(error.code, ErrorCode::Unavailable, "{error:?}");
            assert!(
                error.message.contains("--uncommitted-bytes-max 3000"),
                "{}",
                error.message
            );
        }
        other => panic!("the third write is refused, got {other:?}"),
    }
    gated.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        permit.send(()).expect("the WAL thread is alive");
    }
    for fill in ['a', 'b'] {
        match receive(socket, 10_000) {
            Some(Reply::Outcome {
                outcome: Outcome::Done,
                ..
            }) => {}
            other => panic!("the write of {fill:?} is acknowledged once durable: {other:?}"),
        }
    }
    assert_eq!(failure_code(&call(socket, put('d'))), None, "room again");
    for fill in ['a', 'b', 'd'] {
        match call(socket, Operation::Get { topic: "t".into() }) {
            Reply::Outcome {
                outcome: Outcome::Message(crate::protocol::Payload::Text(text)),
                ..
            } => assert_eq!(text, fill.to_string().repeat(1000)),
            other => panic!("message {fill:?}, got {other:?}"),
        }
    }
    assert_eq!(
        failure_code(&call(socket, Operation::Get { topic: "t".into() })),
        Some(ErrorCode::Empty),
        "the refused write was never applied"
    );

    leader.stop();
}

/// A one-node loop over a given store, ticked every 10 ms, elected and holding topic `t`.
struct TickingLeader {
    _context: zmq::Context,
    socket: zmq::Socket,
    events: crossbeam_channel::Sender<Event>,
    node: std::thread::JoinHandle<()>,
    ticker: std::thread::JoinHandle<()>,
}

impl TickingLeader {
    fn start(store: Box<dyn LogStore + Send>) -> TickingLeader {
        TickingLeader::start_with(&[], store)
    }

    fn start_with(flags: &[&str], store: Box<dyn LogStore + Send>) -> TickingLeader {
        let (context, socket, events, node) = start_node(flags, store);
        let ticker_events = events.clone();
        let ticker = std::thread::spawn(move || {
            while ticker_events.send(Event::Tick).is_ok() {
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(call(&socket, Operation::Status), Reply::Status(ref s) if s.role == "Leader")
        {
            assert!(Instant::now() < deadline, "no leader");
            std::thread::sleep(Duration::from_millis(20));
        }
        let create = Operation::CreateTopic { topic: "t".into() };
        assert_eq!(failure_code(&call(&socket, create)), None, "created");
        TickingLeader {
            _context: context,
            socket,
            events,
            node,
            ticker,
        }
    }

    fn stop(self) {
        self.events.send(Event::Shutdown).expect("loop alive");
        self.node.join().expect("the loop ends without panicking");
        drop(self.events);
        self.ticker.join().expect("ticker");
    }
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
    start_node(flags, Box::new(MemStore::new()))
}

/// Runs a one-node loop with `flags` over `store`, without a ticker, until the returned
/// sender gets `Shutdown`; returns a socket connected to its client port.
fn start_node(
    flags: &[&str],
    store: Box<dyn LogStore + Send>,
) -> (
    zmq::Context,
    zmq::Socket,
    crossbeam_channel::Sender<Event>,
    std::thread::JoinHandle<()>,
) {
    let (context, socket, events, node, _) = start_node_of(1, flags, store);
    (context, socket, events, node)
}

/// Runs node 0 of a `nodes`-node loopback cluster (the others are the test's to play)
/// with `flags` over `store`, without a ticker, until the returned sender gets
/// `Shutdown`; returns a socket connected to its client port, and the cluster config.
#[allow(clippy::type_complexity)]
fn start_node_of(
    nodes: usize,
    flags: &[&str],
    store: Box<dyn LogStore + Send>,
) -> (
    zmq::Context,
    zmq::Socket,
    crossbeam_channel::Sender<Event>,
    std::thread::JoinHandle<()>,
    ClusterConfig,
) {
    let ports = crate::transport::ports::free_ports(2 * nodes).expect("free loopback ports");
    let addresses: Vec<String> = ports
        .chunks(2)
        .map(|pair| {
            format!(
                r#"{{"ip": "127.0.0.1", "port": {}, "internal_port": {}}}"#,
                pair[0], pair[1]
            )
        })
        .collect();
    let text = format!(r#"{{"addresses": [{}]}}"#, addresses.join(", "));
    let cluster = ClusterConfig::parse(&text, "test").expect("config");
    let port = cluster.address(NodeId(0)).expect("node 0").port;
    let args =
        NodeArgs::try_parse_from(["rrmq-node", "test", "0"].iter().chain(flags)).expect("args");
    let config = NodeConfig::new(&args, cluster.clone()).expect("node config");
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
        crate::raft::Membership::from_voters(config.cluster.voters()),
        config.raft.clone(),
        InitialState::default(),
        7,
    );
    let node = NodeLoop::new(NodeParts {
        config,
        core,
        store,
        queue: Queue::new(QueueConfig::default()),
        clients,
        peers,
        events: events.clone(),
        durable_hard_state: HardState::default(),
        snapshot: SnapshotMeta::default(),
        previous_snapshot: SnapshotMeta::default(),
        metrics: None,
    })
    .expect("the WAL thread starts");
    let node = std::thread::spawn(move || node.run(&inbox));
    let socket = context.socket(zmq::DEALER).expect("socket");
    socket.set_linger(0).expect("linger");
    socket
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .expect("connect");
    (context, socket, events, node, cluster)
}

#[test]
fn a_follower_acknowledges_appends_only_after_their_sync() {
    let gated = Arc::new(AtomicBool::new(false));
    let (permit, permits) = crossbeam_channel::unbounded();
    let store = GatedStore {
        inner: MemStore::new(),
        gated: gated.clone(),
        permits,
    };
    // No ticker: node 0 never campaigns, and follows the test, which plays node 1.
    let (context, _client, events, node, cluster) = start_node_of(2, &[], Box::new(store));
    let leader_port = context.socket(zmq::ROUTER).expect("router");
    leader_port.set_linger(0).expect("linger");
    let internal_port = |id| cluster.address(NodeId(id)).expect("a node").internal_port;
    leader_port
        .bind(&format!("tcp://127.0.0.1:{}", internal_port(1)))
        .expect("bind");
    let to_follower = context.socket(zmq::DEALER).expect("dealer");
    to_follower.set_linger(0).expect("linger");
    to_follower
        .connect(&format!("tcp://127.0.0.1:{}", internal_port(0)))
        .expect("connect");
    let filter = crate::transport::wire::PeerFilter {
        cluster_id: cluster.cluster_id,
        me: NodeId(1),
        node_count: 2,
    };
    let append = |prev: u64, index: u64| {
        let message = Message {
            from: NodeId(1),
            to: NodeId(0),
            term: Term(1),
            body: MessageBody::AppendEntries {
                prev: EntryId::new(Term(u64::from(prev > 0)), LogIndex(prev)),
                entries: vec![Entry {
                    term: Term(1),
                    index: LogIndex(index),
                    payload: EntryPayload::Noop,
                }],
                commit: LogIndex::ZERO,
            },
        };
        let frame = crate::transport::wire::encode_peer_message(cluster.cluster_id, &message);
        to_follower.send(frame, 0).expect("send");
    };
    // Whatever node 0 sends node 1 next (an ack, here), within `timeout_ms`.
    let received = |timeout_ms: i64| -> Option<MessageBody> {
        if leader_port.poll(zmq::POLLIN, timeout_ms).expect("poll") == 0 {
            return None;
        }
        let frames = leader_port.recv_multipart(0).expect("recv");
        let body = frames.last().expect("a body");
        let message =
            crate::transport::wire::decode_peer_message(body, &filter).expect("a message");
        Some(message.body)
    };
    let accepted = |index| {
        Some(MessageBody::AppendEntriesResponse(
            crate::raft::AppendResult::Accepted {
                match_index: LogIndex(index),
            },
        ))
    };
    // Both directions drop messages until connected: resend entry 1 as a leader would.
    let connected = (0..100).any(|_| {
        append(0, 1);
        received(100).is_some()
    });
    assert!(connected, "node 0 acknowledges entry 1");
    while received(200).is_some() {}

    gated.store(true, Ordering::SeqCst);
    append(1, 2);
    assert_eq!(received(300), None, "no ack while entry 2's sync is held");
    // Entry 2 again: nothing new to write, but the ack waits for the batch in flight.
    append(1, 2);
    assert_eq!(received(300), None, "nor for entry 2 arriving twice");
    permit.send(()).expect("the WAL thread waits");
    gated.store(false, Ordering::SeqCst);
    assert_eq!(received(10_000), accepted(2), "acknowledged once durable");
    assert_eq!(received(10_000), accepted(2), "the second copy too");

    events.send(Event::Shutdown).expect("loop alive");
    node.join().expect("the loop ends without panicking");
}

#[test]
fn fault_requests_are_refused_without_the_test_flag_and_obeyed_with_it() {
    let fault = Operation::Fault {
        drop_to: vec![1, 2],
        drop_from: vec![2],
        stop_zap_handler: false,
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

/// PROTOCOL.md §8 through the node loop: a leased message is invisible, comes back once the
/// leader's clock passes its deadline (the leader proposes the lease's end on its own), and
/// `topic GET` with `detail` is answered with the counts.
#[test]
fn a_lease_ends_by_the_leaders_clock_and_the_message_is_handed_out_again() {
    use crate::protocol::{Delivery, FetchOptions, Payload};
    let leader = TickingLeader::start(Box::new(MemStore::new()));
    let socket = &leader.socket;
    let leased_get = |lease_ms: u64| Operation::Fetch {
        topic: "t".into(),
        options: FetchOptions {
            lease_ms: Some(lease_ms),
            ..FetchOptions::default()
        },
    };
    let put = Operation::Put {
        topic: "t".into(),
        message: Payload::Text("m".into()),
    };
    assert_eq!(failure_code(&call(socket, put)), None);
    let first = match call(socket, leased_get(50)) {
        Reply::Outcome {
            outcome: Outcome::Delivered(delivery),
            ..
        } => delivery,
        other => panic!("a leased message, got {other:?}"),
    };
    assert_eq!(first.deliveries, 1);
    match call(socket, Operation::ListTopicDetails) {
        Reply::Outcome {
            outcome: Outcome::TopicDetails(details),
            ..
        } => {
            assert_eq!(details.len(), 1);
            assert_eq!((details[0].ready, details[0].leased), (0, 1));
        }
        other => panic!("topic details, got {other:?}"),
    }
    // Nobody ACKs: the lease ends (after its 50 ms and the leader's margin) and the message
    // is handed out again, to whoever asks next.
    let deadline = Instant::now() + Duration::from_secs(20);
    let second: Delivery = loop {
        match call(socket, leased_get(60_000)) {
            Reply::Outcome {
                outcome: Outcome::Delivered(delivery),
                ..
            } => break delivery,
            reply => assert_eq!(failure_code(&reply), Some(ErrorCode::Empty), "{reply:?}"),
        }
        assert!(Instant::now() < deadline, "the lease never ended");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((second.message, second.deliveries), (first.message, 2));
    let ack = |receipt: &str| Operation::Ack {
        topic: "t".into(),
        receipts: crate::protocol::Receipts::One(receipt.into()),
    };
    assert_eq!(
        failure_code(&call(socket, ack(&first.receipt))),
        Some(ErrorCode::StaleReceipt),
        "the first holder's lease is over"
    );
    assert_eq!(failure_code(&call(socket, ack(&second.receipt))), None);
    leader.stop();
}

/// A leader that has not yet applied every entry of earlier terms may not read its lease
/// clock (`lease_clock`: an entry it has not applied may carry a later time). A leased GET
/// that reaches it then waits without being proposed, and is refused UNAVAILABLE (nothing
/// done) when its time is up, where a plain GET is proposed and times out (outcome
/// unknown); once the leader's first entry commits, leased GETs go through.
#[test]
fn a_leader_holds_leased_gets_until_it_has_caught_up_in_its_term() {
    use crate::protocol::{FetchOptions, Payload};
    let gated = Arc::new(AtomicBool::new(true));
    // Zero capacity: a permit passes only to a sync that is waiting for it.
    let (permit, permits) = crossbeam_channel::bounded(0);
    let store = GatedStore {
        inner: MemStore::new(),
        gated: gated.clone(),
        permits,
    };
    let (_context, socket, events, node) =
        start_node(&["--request-timeout-ms", "500"], Box::new(store));
    let ticker_events = events.clone();
    let ticker = std::thread::spawn(move || {
        while ticker_events.send(Event::Tick).is_ok() {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // Let syncs through one at a time until the node leads; its term's first entry then
    // waits for the next sync.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match call(&socket, Operation::Status) {
            Reply::Status(status) if status.role == "Leader" => break status,
            _ => {
                let _ = permit.try_send(());
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        status.last_applied < status.last_log_index,
        "the leader's first entry is still unapplied: {status:?}"
    );
    let leased_get = Operation::Fetch {
        topic: "t".into(),
        options: FetchOptions {
            lease_ms: Some(60_000),
            ..FetchOptions::default()
        },
    };
    assert_eq!(
        failure_code(&call(&socket, leased_get.clone())),
        Some(ErrorCode::Unavailable),
        "held, never proposed, refused when its time is up"
    );
    let plain_get = Operation::Get { topic: "t".into() };
    assert_eq!(
        failure_code(&call(&socket, plain_get)),
        Some(ErrorCode::Timeout),
        "proposed, and stuck behind the first entry"
    );
    gated.store(false, Ordering::SeqCst);
    let _ = permit.try_send(());
    let _ = permit.send_timeout((), Duration::from_millis(500));
    let create = Operation::CreateTopic { topic: "t".into() };
    assert_eq!(failure_code(&call(&socket, create)), None);
    let put = Operation::Put {
        topic: "t".into(),
        message: Payload::Text("m".into()),
    };
    assert_eq!(failure_code(&call(&socket, put)), None);
    match call(&socket, leased_get) {
        Reply::Outcome {
            outcome: Outcome::Delivered(delivery),
            ..
        } => assert_eq!(delivery.deliveries, 1),
        other => panic!("a leased message once caught up, got {other:?}"),
    }
    events.send(Event::Shutdown).expect("loop alive");
    node.join().expect("the loop ends without panicking");
    drop(events);
    ticker.join().expect("ticker");
}
