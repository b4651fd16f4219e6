//! A blocking client for an rrmq cluster: the CLI, the end-to-end tests and the benchmark
//! talk to the cluster through it.
//!
//! Why it exists: talking to a replicated queue correctly is more than sending a request.
//! Only the leader answers topic and message operations, leaders change, nodes die, replies
//! get lost. This module finds the leader (following the `leader` hint of a `NOT_LEADER`
//! reply, else trying the nodes in turn), bounds every attempt and the whole call in time,
//! and retries safely. Those rules live in `call.rs`, a state machine without sockets or
//! clocks that the benchmark's load generator drives too; this module owns the sockets and
//! drives it blocking.
//!
//! Safe retries (PROTOCOL.md §5): each [`Client`] picks a random `client_id` and numbers its
//! topic PUT, message PUT and message GET requests with an increasing `seq`, starting at 1.
//! A retry after a lost reply, a `NOT_LEADER`, a `TIMEOUT` or an `UNAVAILABLE` re-sends the
//! same bytes, so the same `(client_id, seq)` pair, to whichever node is leader by then; the
//! cluster applies the pair at most once and answers a repeat with the first reply. The
//! cluster remembers only the last reply per client, so a client sends one request at a time:
//! every method takes `&mut self`. When the overall deadline passes without an answer, the
//! outcome of a write is unknown, and the error says so.
//!
//! Transport: version 2 MessagePack over ZeroMQ, one DEALER socket per node, created on first
//! use. Each request goes out as `[call tag, "", body]` and the node echoes the envelope, so a
//! reply names the call it answers. Every attempt of one call carries the same tag: a late
//! answer to an earlier attempt is as good as an answer to the latest one (same session key,
//! same reply), while a reply to an earlier call is stale and dropped. On a cluster that lists
//! clients (PROTOCOL.md §11), [`ClientOptions::with_key_pair`] makes each DEALER a CURVE
//! client with the client's key pair, expecting each node's public key from the config; a
//! node that refuses the key never answers, so that looks like a node that is down.
//!
//! Dropped connections: each DEALER has a socket monitor ([`crate::transport::monitor`])
//! polled beside it. When the connection to a node closes (its process died) or cannot be
//! made (nothing listens), the retry policy hears of it at once: a call waiting on that node
//! goes to another without waiting out the attempt timeout, and a status or stats request to
//! it ends with an error instead of a wait. A node that is merely slow keeps its connection,
//! so the attempt timeout still decides when to leave it.
//!
//! Hedges ([`ClientOptions::hedge_after`]): a node that stopped (SIGSTOP) keeps its
//! connection too; after the hedge delay of silence the call sends the same bytes to other
//! nodes as well, still listening to the first, so a stopped leader costs about one election
//! timeout instead of one attempt timeout (the rules are `call.rs`'s).
//!
//! What it must not do: keep more than one request of a session in flight, invent a new
//! `seq` for a retry, or wait without a deadline.

mod address;
pub(crate) mod call;
#[cfg(test)]
pub(crate) mod fake_node;
#[cfg(test)]
mod tests;

pub use address::{AddressError, NodeAddress};

use std::time::{Duration, Instant};

use self::call::{Answer, CallMachine, CallResult, SendFailure, Setback, Step, Timing};

use crate::config::keys::{Key, KeyPair};
use crate::config::ClusterConfig;
use crate::protocol::{
    decode_reply, encode_request, Encoding, ErrorCode, ErrorInfo, LeaderInfo, Operation, Outcome,
    Payload, Receipts, Reply, ReplyDecodeError, Request, SessionKey, StatsReport, StatusReport,
};
pub use crate::protocol::{
    Delivery, FetchOptions, MemberAddress, MemberInfo, TopicDetail, TopicSettings,
};
use crate::transport::monitor::{EventKind, Monitor};

/// How long one attempt waits for a reply before the client tries elsewhere.
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// How long one call may take in all, retries included.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(10);
/// How long the node a call waits on may stay silent before the same request goes to another
/// node too: the default election timeout's upper bound, by when the other nodes have a new
/// leader if the one waited on stopped when the request left (see `call.rs`).
pub const HEDGE_AFTER_DEFAULT: Duration = Duration::from_millis(600);

/// The largest reply accepted from a node: a 1 MiB message (the default limit) and its
/// framing fit with room to spare; a node configured for larger messages needs a client
/// configured to match.
pub const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Leader hints may name nodes the client was not told about (a client started with one
/// `--node`); it learns at most this many addresses, so a confused node cannot grow the list
/// without bound.
const NODES_MAX: usize = 256;

/// The protocol version the client speaks: version 2 carries error codes and leader hints.
const PROTOCOL_VERSION: u8 = 2;

/// The connection events the retry policy acts on: a connection made, one that could not be
/// made (refused; libzmq will retry), one that dropped.
pub(crate) const CONNECTION_EVENTS: [EventKind; 3] = [
    EventKind::Connected,
    EventKind::ConnectRetried,
    EventKind::Disconnected,
];

/// Where the cluster is and how patient to be with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// The nodes' client addresses. For a config, in config order, so a node's position is its
    /// id.
    pub nodes: Vec<NodeAddress>,
    /// How long one attempt on one node waits for its reply.
    pub attempt_timeout: Duration,
    /// How long one call may take in all, retries included.
    pub deadline: Duration,
    /// Silence from the node waited on for this long also sends the call to another node,
    /// and again every 100 ms while the silence lasts (the first node's reply still counts);
    /// `None`: never, only the attempt timeout leaves a silent node.
    pub hedge_after: Option<Duration>,
    /// CURVE (PROTOCOL.md §11 "Clients"): this client's own key pair and the nodes' public
    /// keys; `None` talks plain, as to a cluster without `clients`.
    pub curve: Option<ClientCurve>,
}

/// What a CURVE client needs: its own key pair (from `--key-file`) and each node's public
/// key (from the config), to know the server it talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCurve {
    pub own: KeyPair,
    /// Each node's client address with its public key.
    pub server_keys: Vec<(NodeAddress, Key)>,
}

impl ClientCurve {
    fn key_of(&self, node: &NodeAddress) -> Option<&Key> {
        self.server_keys
            .iter()
            .find(|(address, _)| address == node)
            .map(|(_, key)| key)
    }

    /// Makes `socket` (not yet connected) a CURVE client of `node`. A node without a public
    /// key in the config cannot complete the handshake: its attempts time out like a down
    /// node's, and a warning says why.
    pub fn configure(&self, socket: &zmq::Socket, node: &NodeAddress) -> Result<(), zmq::Error> {
        match self.key_of(node) {
            Some(server) => socket.set_curve_serverkey(server)?,
            None => log::warn!("{node}: no public key in the config; it cannot answer"),
        }
        socket.set_curve_publickey(&self.own.public)?;
        socket.set_curve_secretkey(&self.own.secret)
    }
}

impl ClientOptions {
    /// The given nodes with the default timeouts.
    pub fn new(nodes: Vec<NodeAddress>) -> ClientOptions {
        ClientOptions {
            nodes,
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            deadline: DEADLINE_DEFAULT,
            hedge_after: Some(HEDGE_AFTER_DEFAULT),
            curve: None,
        }
    }

    /// Talks CURVE with `own`, expecting each node's public key from `config`'s addresses
    /// (a node without one there cannot be reached: its handshake fails).
    pub fn with_key_pair(
        mut self,
        config: &ClusterConfig,
        own: KeyPair,
    ) -> Result<ClientOptions, AddressError> {
        let mut server_keys = Vec::new();
        for address in &config.addresses {
            if let Some(key) = address.public_key {
                server_keys.push((NodeAddress::new(address.ip.clone(), address.port)?, key));
            }
        }
        self.curve = Some(ClientCurve { own, server_keys });
        Ok(self)
    }

    /// Every node of a cluster config, in config order (so a node's position is its id), with
    /// the default timeouts.
    pub fn from_config(config: &ClusterConfig) -> Result<ClientOptions, AddressError> {
        let nodes = config
            .addresses
            .iter()
            .map(|address| NodeAddress::new(address.ip.clone(), address.port))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientOptions::new(nodes))
    }
}

const OUTCOME_UNKNOWN: &str = "the outcome is unknown: it may or may not have been applied";

/// Why a call failed. `Display` is one line for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node to talk to: the node list is empty")]
    NoNodes,
    #[error("{option} must be longer than zero")]
    ZeroDuration { option: &'static str },
    #[error("no such topic '{topic}'")]
    NoSuchTopic { topic: String },
    #[error("topic '{topic}' already exists")]
    TopicExists { topic: String },
    #[error("topic '{topic}' is empty")]
    Empty { topic: String },
    #[error("the cluster refused the request as malformed: {message}")]
    BadRequest { message: String },
    #[error("the cluster refused the request as too large: {message}")]
    TooLarge { message: String },
    /// The write would take the cluster over a quota (queued bytes or topic count, set in
    /// `config.json`); it changed nothing.
    #[error("the cluster refused the request, over a quota: {message}")]
    Quota { message: String },
    /// The request is outside the rights the cluster's `config.json` gives this client's key
    /// (produce, consume or admin on that topic); it changed nothing.
    #[error("the cluster refused the request, outside this client's rights: {message}")]
    Forbidden { message: String },
    /// PROTOCOL.md §8 `STALE_RECEIPT`: an ACK, NACK or TOUCH whose receipt is not the live
    /// lease's (the lease ended, the message was acknowledged, or the receipt was never
    /// issued). Nothing changed; the message may be (or have been) handed to another consumer.
    #[error(
        "stale receipt '{receipt}' in topic '{topic}': the lease ended, was settled, or never \
         existed; nothing changed"
    )]
    StaleReceipt { topic: String, receipt: String },
    /// PROTOCOL.md §12 `CHANGE_IN_PROGRESS`: another membership change is under way (an
    /// add whose learner is still catching up stays in progress until it is promoted or
    /// cancelled by a `member DELETE` of its id). Nothing changed.
    #[error("the cluster refused the membership change, another is in progress: {message}")]
    ChangeInProgress { message: String },
    /// The cluster no longer remembers this client's session, so it cannot tell whether the
    /// retried request was applied.
    #[error("the cluster forgot this client's session ({message}); {OUTCOME_UNKNOWN}")]
    SessionExpired { message: String },
    /// No answer before the deadline: nodes were silent or the leader could not commit in
    /// time.
    #[error(
        "no answer to {operation} within {elapsed:.1?} (last: {last_problem}){}",
        outcome_note(*outcome_unknown)
    )]
    Timeout {
        operation: String,
        elapsed: Duration,
        last_problem: String,
        /// True for writes: the request may have been applied.
        outcome_unknown: bool,
    },
    /// Nodes answered but none could serve before the deadline: no leader, or no quorum.
    #[error(
        "cluster unavailable for {operation} after {elapsed:.1?} (last: {last_problem}){}",
        outcome_note(*outcome_unknown)
    )]
    Unavailable {
        operation: String,
        elapsed: Duration,
        last_problem: String,
        /// True for writes: the request may have been applied.
        outcome_unknown: bool,
    },
    /// A code this client does not handle (e.g. `SHUTTING_DOWN` from the one node asked).
    #[error("{node} refused {operation}: {code}: {message}")]
    Refused {
        node: NodeAddress,
        operation: String,
        code: String,
        message: String,
    },
    #[error("{node}: ZeroMQ: {source}")]
    Transport {
        node: NodeAddress,
        source: zmq::Error,
    },
    #[error("{node}: {source}")]
    BadReply {
        node: NodeAddress,
        source: ReplyDecodeError,
    },
    /// A per-node report of the wrong kind.
    #[error("unexpected reply to {operation}: {detail}")]
    MismatchedReply { operation: String, detail: String },
    #[error("{node}: unexpected reply to {operation}: {detail}")]
    UnexpectedReply {
        node: NodeAddress,
        operation: String,
        detail: String,
    },
}

fn outcome_note(outcome_unknown: bool) -> String {
    if outcome_unknown {
        format!("; {OUTCOME_UNKNOWN}")
    } else {
        String::new()
    }
}

impl ClientError {
    /// True when the request may or may not have taken effect.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            ClientError::Timeout {
                outcome_unknown, ..
            }
            | ClientError::Unavailable {
                outcome_unknown, ..
            } => *outcome_unknown,
            ClientError::SessionExpired { .. } => true,
            _ => false,
        }
    }
}

/// A blocking client. One request at a time: see the module docs.
pub struct Client {
    // Sockets are declared before the context so they close first; the context's drop waits
    // for its sockets.
    /// `sockets[i]` talks to `addresses[i]`; `None` until first used.
    sockets: Vec<Option<zmq::Socket>>,
    /// `monitors[i]` watches `sockets[i]`'s connection. Invariant: `Some` only while
    /// `sockets[i]` is (it may be `None` beside an open socket if attaching failed).
    monitors: Vec<Option<Monitor>>,
    context: zmq::Context,
    /// Invariant: `addresses.len() == sockets.len()`, no duplicates, at most `NODES_MAX`.
    addresses: Vec<NodeAddress>,
    /// The retry policy: which node to try, when to give up. Its node indexes are
    /// positions in `addresses`.
    calls: CallMachine,
    client_id: String,
    /// The last `seq` used. Invariant: strictly increases with every session request of
    /// one `client_id`.
    seq: u64,
    /// Whether a request of this `client_id` is known to have been applied through the log,
    /// which opens the session on the nodes (see [`Client::note_session_outcome`]).
    session_open: bool,
    /// The tag of the last call; replies carrying an older tag are stale.
    call_tag: u64,
    /// CURVE keys, when the cluster lists clients.
    curve: Option<ClientCurve>,
}

impl Client {
    /// Checks the options and prepares the client. Nothing is sent yet: sockets connect on
    /// first use, so a node that is down costs nothing until it is needed.
    pub fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        if options.nodes.is_empty() {
            return Err(ClientError::NoNodes);
        }
        if options.attempt_timeout.is_zero() {
            return Err(ClientError::ZeroDuration {
                option: "the attempt timeout",
            });
        }
        if options.deadline.is_zero() {
            return Err(ClientError::ZeroDuration {
                option: "the deadline",
            });
        }
        if options.hedge_after.is_some_and(|delay| delay.is_zero()) {
            return Err(ClientError::ZeroDuration {
                option: "the hedge delay",
            });
        }
        let mut addresses: Vec<NodeAddress> = Vec::with_capacity(options.nodes.len());
        for node in options.nodes.into_iter().take(NODES_MAX) {
            if !addresses.contains(&node) {
                addresses.push(node);
            }
        }
        Ok(Client {
            sockets: addresses.iter().map(|_| None).collect(),
            monitors: addresses.iter().map(|_| None).collect(),
            context: zmq::Context::new(),
            addresses,
            calls: CallMachine::new(
                Timing {
                    attempt_timeout: options.attempt_timeout,
                    deadline: options.deadline,
                    hedge_after: options.hedge_after,
                },
                0,
            ),
            client_id: format!("{:016x}", rand::random::<u64>()),
            seq: 0,
            session_open: false,
            call_tag: 0,
            curve: options.curve,
        })
    }

    /// This client's session id, sent with every topic PUT, message PUT and message GET.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The nodes this client knows: those it was given, then those leader hints named.
    pub fn nodes(&self) -> &[NodeAddress] {
        &self.addresses
    }

    /// The node that last served a topic or message call, if any.
    pub fn leader(&self) -> Option<&NodeAddress> {
        self.calls.leader().map(|index| &self.addresses[index])
    }

    /// Creates a topic: `Ok(true)` if this call created it, `Ok(false)` if it already existed.
    pub fn create_topic(&mut self, topic: &str) -> Result<bool, ClientError> {
        let operation = Operation::CreateTopic {
            topic: topic.to_string(),
        };
        match self.call(operation, true)? {
            (_, Outcome::Done) => Ok(true),
            (_, Outcome::Failed(info)) if info.code == ErrorCode::TopicExists => Ok(false),
            (node, outcome) => Err(self.unexpected(node, outcome, topic, "create topic")),
        }
    }

    /// The topics, in creation order. A linearizable read on the leader.
    pub fn list_topics(&mut self) -> Result<Vec<String>, ClientError> {
        match self.call(Operation::ListTopics, false)? {
            (_, Outcome::Topics(topics)) => Ok(topics),
            (node, outcome) => Err(self.unexpected(node, outcome, "", "list topics")),
        }
    }

    /// Appends a message to a topic. `Ok` means it is committed: it survives the loss of any
    /// minority of nodes.
    pub fn put(&mut self, topic: &str, message: Payload) -> Result<(), ClientError> {
        let operation = Operation::Put {
            topic: topic.to_string(),
            message,
        };
        match self.call(operation, true)? {
            (_, Outcome::Done) => Ok(()),
            (node, outcome) => Err(self.unexpected(node, outcome, topic, "put")),
        }
    }

    /// Pops the oldest message of a topic; `Ok(None)` when the topic has none.
    pub fn get(&mut self, topic: &str) -> Result<Option<Payload>, ClientError> {
        let operation = Operation::Get {
            topic: topic.to_string(),
        };
        match self.call(operation, true)? {
            (_, Outcome::Message(message)) => Ok(Some(message)),
            (_, Outcome::Failed(info)) if info.code == ErrorCode::Empty => Ok(None),
            (node, outcome) => Err(self.unexpected(node, outcome, topic, "get")),
        }
    }

    /// A `message GET` with any of the options of PROTOCOL.md §8–§10: leased, blocking,
    /// batched. [`Fetched::Empty`] when nothing could be handed out (after the wait, if
    /// any). With `wait_ms`, the attempt timeout and the deadline of this one call grow by
    /// the wait: a blocking GET is legitimately silent that long. A retry (after a lost
    /// reply or a leader change) carries the same session key, so a retried leased GET gets
    /// the same messages and receipts, and it waits again on the new leader.
    pub fn fetch(&mut self, topic: &str, options: FetchOptions) -> Result<Fetched, ClientError> {
        let operation = Operation::Fetch {
            topic: topic.to_string(),
            options,
        };
        let wait = Duration::from_millis(options.wait_ms.unwrap_or(0));
        match self.call_waiting(operation, wait)? {
            (_, Outcome::Message(message)) => Ok(Fetched::Message(message)),
            (_, Outcome::Delivered(delivery)) => Ok(Fetched::Delivered(delivery)),
            (_, Outcome::Messages(messages)) => Ok(Fetched::Messages(messages)),
            (_, Outcome::Deliveries(deliveries)) => Ok(Fetched::Deliveries(deliveries)),
            (_, Outcome::Failed(info)) if info.code == ErrorCode::Empty => Ok(Fetched::Empty),
            (node, outcome) => Err(self.unexpected(node, outcome, topic, "get")),
        }
    }

    /// Leases the oldest visible message for `lease` (PROTOCOL.md §8): it stays in the topic,
    /// invisible to other consumers, until [`Client::ack`]ed, [`Client::nack`]ed or the lease
    /// ends. With `wait`, holds the request while the topic has nothing to hand out
    /// (PROTOCOL.md §9). `Ok(None)` when nothing came.
    pub fn get_leased(
        &mut self,
        topic: &str,
        lease: Duration,
        wait: Option<Duration>,
    ) -> Result<Option<Delivery>, ClientError> {
        let options = FetchOptions {
            lease_ms: Some(milliseconds(lease)),
            wait_ms: wait.map(milliseconds),
            max: None,
        };
        match self.fetch(topic, options)? {
            Fetched::Delivered(delivery) => Ok(Some(delivery)),
            Fetched::Empty => Ok(None),
            other => Err(self.unexpected_fetch(other, "leased get")),
        }
    }

    /// Pops the oldest message like [`Client::get`], waiting up to `wait` for one
    /// (PROTOCOL.md §9).
    pub fn get_wait(
        &mut self,
        topic: &str,
        wait: Duration,
    ) -> Result<Option<Payload>, ClientError> {
        let options = FetchOptions {
            lease_ms: None,
            wait_ms: Some(milliseconds(wait)),
            max: None,
        };
        match self.fetch(topic, options)? {
            Fetched::Message(message) => Ok(Some(message)),
            Fetched::Empty => Ok(None),
            other => Err(self.unexpected_fetch(other, "get")),
        }
    }

    /// Pops up to `max` messages in one request (PROTOCOL.md §10), waiting up to `wait` for
    /// the first one; empty when none came.
    pub fn get_batch(
        &mut self,
        topic: &str,
        max: u32,
        wait: Option<Duration>,
    ) -> Result<Vec<Payload>, ClientError> {
        let options = FetchOptions {
            lease_ms: None,
            wait_ms: wait.map(milliseconds),
            max: Some(max),
        };
        match self.fetch(topic, options)? {
            Fetched::Messages(messages) => Ok(messages),
            Fetched::Empty => Ok(Vec::new()),
            other => Err(self.unexpected_fetch(other, "batch get")),
        }
    }

    /// Leases up to `max` messages in one request, each with its own receipt; empty when none
    /// came.
    pub fn get_leased_batch(
        &mut self,
        topic: &str,
        max: u32,
        lease: Duration,
        wait: Option<Duration>,
    ) -> Result<Vec<Delivery>, ClientError> {
        let options = FetchOptions {
            lease_ms: Some(milliseconds(lease)),
            wait_ms: wait.map(milliseconds),
            max: Some(max),
        };
        match self.fetch(topic, options)? {
            Fetched::Deliveries(deliveries) => Ok(deliveries),
            Fetched::Empty => Ok(Vec::new()),
            other => Err(self.unexpected_fetch(other, "leased batch get")),
        }
    }

    /// Acknowledges a leased message: it is deleted. [`ClientError::StaleReceipt`] when the
    /// receipt is not the live lease's (it ended, was acknowledged, or was never issued):
    /// the message may then be handed to another consumer, or already was.
    pub fn ack(&mut self, topic: &str, receipt: &str) -> Result<(), ClientError> {
        self.settle(topic, receipt, Settle::Ack)
    }

    /// Gives a leased message back: visible again at once, in its place in the topic's order.
    /// [`ClientError::StaleReceipt`] as for [`Client::ack`].
    pub fn nack(&mut self, topic: &str, receipt: &str) -> Result<(), ClientError> {
        self.settle(topic, receipt, Settle::Nack)
    }

    /// Acknowledges several leased messages in one request (1 to 1,000 receipts); returns
    /// the receipts that were refused as stale (the others took effect).
    pub fn ack_many(
        &mut self,
        topic: &str,
        receipts: &[String],
    ) -> Result<Vec<String>, ClientError> {
        self.settle_many(topic, receipts, Settle::Ack)
    }

    /// Gives several leased messages back in one request; returns the stale receipts.
    pub fn nack_many(
        &mut self,
        topic: &str,
        receipts: &[String],
    ) -> Result<Vec<String>, ClientError> {
        self.settle_many(topic, receipts, Settle::Nack)
    }

    /// Extends a lease: it now ends `lease` from now. [`ClientError::StaleReceipt`] when the
    /// lease already ended.
    pub fn touch(
        &mut self,
        topic: &str,
        receipt: &str,
        lease: Duration,
    ) -> Result<(), ClientError> {
        let operation = Operation::Touch {
            topic: topic.to_string(),
            receipt: receipt.to_string(),
            lease_ms: milliseconds(lease),
        };
        match self.call(operation, true)? {
            (_, Outcome::Done) => Ok(()),
            (_, Outcome::Failed(info)) if info.code == ErrorCode::StaleReceipt => {
                Err(stale(topic, receipt))
            }
            (node, outcome) => Err(self.unexpected(node, outcome, topic, "touch")),
        }
    }

    /// Appends messages in one request and one log entry, all or none, in order
    /// (PROTOCOL.md §10: 1 to 1,000 messages, at most 4 MiB in all); returns how many.
    pub fn put_batch(&mut self, topic: &str, messages: Vec<Payload>) -> Result<u64, ClientError> {
        let operation = Operation::PutBatch {
            topic: topic.to_string(),
            messages,
        };
        match self.call(operation, true)? {
            (_, Outcome::Count(count)) => Ok(count),
            (node, outcome) => Err(self.unexpected(node, outcome, topic, "batch put")),
        }
    }

    /// Creates a topic with delivery settings (PROTOCOL.md §8): `Ok(true)` if this call
    /// created it, `Ok(false)` if it already existed (its settings are not changed).
    pub fn create_topic_with(
        &mut self,
        topic: &str,
        settings: TopicSettings,
    ) -> Result<bool, ClientError> {
        let operation = Operation::CreateTopicWith {
            topic: topic.to_string(),
            settings,
        };
        match self.call(operation, true)? {
            (_, Outcome::Done) => Ok(true),
            (_, Outcome::Failed(info)) if info.code == ErrorCode::TopicExists => Ok(false),
            (node, outcome) => Err(self.unexpected(node, outcome, topic, "create topic")),
        }
    }

    /// The topics in creation order with their counts and settings. A linearizable read on
    /// the leader.
    pub fn list_topic_details(&mut self) -> Result<Vec<TopicDetail>, ClientError> {
        match self.call(Operation::ListTopicDetails, false)? {
            (_, Outcome::TopicDetails(details)) => Ok(details),
            (node, outcome) => Err(self.unexpected(node, outcome, "", "list topics")),
        }
    }

    /// The cluster's acting membership as the leader sees it (PROTOCOL.md §12), learners
    /// with `voter: false`.
    pub fn list_members(&mut self) -> Result<Vec<MemberInfo>, ClientError> {
        match self.call(Operation::ListMembers, false)? {
            (_, Outcome::Members(members)) => Ok(members),
            (node, outcome) => Err(self.unexpected(node, outcome, "", "list members")),
        }
    }

    /// Adds a node: the leader makes it a learner and promotes it once it has caught up;
    /// returns once it is a voter. A timeout leaves the change in progress (retrying the
    /// same request waits for it again; [`Client::remove_member`] of its id cancels it).
    pub fn add_member(&mut self, member: MemberAddress) -> Result<(), ClientError> {
        let name = format!("add member {}", member.id);
        match self.call(Operation::AddMember { member }, false)? {
            (_, Outcome::Done) => Ok(()),
            (node, outcome) => Err(self.unexpected(node, outcome, "", &name)),
        }
    }

    /// Removes a member (voter or learner); returns once its removal is committed.
    pub fn remove_member(&mut self, id: u64) -> Result<(), ClientError> {
        match self.call(Operation::RemoveMember { id }, false)? {
            (_, Outcome::Done) => Ok(()),
            (node, outcome) => {
                Err(self.unexpected(node, outcome, "", &format!("remove member {id}")))
            }
        }
    }

    fn settle(&mut self, topic: &str, receipt: &str, how: Settle) -> Result<(), ClientError> {
        let receipts = Receipts::One(receipt.to_string());
        match self.call(how.operation(topic, receipts), true)? {
            (_, Outcome::Done) => Ok(()),
            (_, Outcome::Failed(info)) if info.code == ErrorCode::StaleReceipt => {
                Err(stale(topic, receipt))
            }
            (node, outcome) => Err(self.unexpected(node, outcome, topic, how.name())),
        }
    }

    fn settle_many(
        &mut self,
        topic: &str,
        receipts: &[String],
        how: Settle,
    ) -> Result<Vec<String>, ClientError> {
        let receipts = Receipts::Many(receipts.to_vec());
        match self.call(how.operation(topic, receipts), true)? {
            (_, Outcome::Stale(stale)) => Ok(stale),
            (node, outcome) => Err(self.unexpected(node, outcome, topic, how.name())),
        }
    }

    /// [`Client::call`] for a request the node may hold for `wait` before answering: the
    /// attempt timeout, the hedge delay and the deadline of this one call are lengthened by
    /// `wait`, so the silence of a blocked GET is not taken for a lost attempt.
    fn call_waiting(
        &mut self,
        operation: Operation,
        wait: Duration,
    ) -> Result<(usize, Outcome), ClientError> {
        if wait.is_zero() {
            return self.call(operation, true);
        }
        let normal = self.calls.timing();
        // Hedges too: a leader holding a blocked GET is silent by design, not stopped.
        self.calls.set_timing(Timing {
            attempt_timeout: normal.attempt_timeout + wait,
            deadline: normal.deadline + wait,
            hedge_after: normal.hedge_after.map(|delay| delay + wait),
        });
        let result = self.call(operation, true);
        self.calls.set_timing(normal);
        result
    }

    fn unexpected_fetch(&self, fetched: Fetched, operation: &str) -> ClientError {
        let detail = match fetched {
            Fetched::Empty => "EMPTY",
            Fetched::Message(_) => "a message without a receipt",
            Fetched::Delivered(_) => "a leased message",
            Fetched::Messages(_) => "a list of messages",
            Fetched::Deliveries(_) => "a list of leased messages",
        };
        ClientError::MismatchedReply {
            operation: operation.to_string(),
            detail: detail.to_string(),
        }
    }

    /// Asks one node for its status: one attempt, bounded by the attempt timeout, no retry
    /// elsewhere (every node answers status, and the caller asked about this one).
    pub fn status_of(&mut self, node: &NodeAddress) -> Result<StatusReport, ClientError> {
        let index = self.index_or_add(node);
        let reply = self.ask_each(&[index], Operation::Status).pop();
        status_from(reply.expect("one result per node asked"))
    }

    /// Asks every known node for its status at once, so unreachable nodes cost one attempt
    /// timeout in all. Results are in node order.
    pub fn status_all(&mut self) -> Vec<(NodeAddress, Result<StatusReport, ClientError>)> {
        let indexes: Vec<usize> = (0..self.addresses.len()).collect();
        let replies = self.ask_each(&indexes, Operation::Status);
        self.addresses
            .iter()
            .cloned()
            .zip(replies.into_iter().map(status_from))
            .collect()
    }

    /// Asks one node for the numbers of its applied state machine (with a digest, to compare
    /// nodes): one attempt, like [`Client::status_of`].
    pub fn stats_of(&mut self, node: &NodeAddress) -> Result<StatsReport, ClientError> {
        let index = self.index_or_add(node);
        let reply = self.ask_each(&[index], Operation::Stats).pop();
        stats_from(reply.expect("one result per node asked"))
    }

    /// Asks every known node for its state machine's numbers at once. In node order.
    pub fn stats_all(&mut self) -> Vec<(NodeAddress, Result<StatsReport, ClientError>)> {
        let indexes: Vec<usize> = (0..self.addresses.len()).collect();
        let replies = self.ask_each(&indexes, Operation::Stats);
        self.addresses
            .iter()
            .cloned()
            .zip(replies.into_iter().map(stats_from))
            .collect()
    }

    /// Sends one request that every node answers about itself (status, stats) to each of
    /// `indexes` at once and collects the replies for one attempt timeout. One result per
    /// index, in order; an `Outcome` reply (e.g. `SHUTTING_DOWN`) becomes its error.
    fn ask_each(
        &mut self,
        indexes: &[usize],
        operation: Operation,
    ) -> Vec<Result<Reply, ClientError>> {
        let started = Instant::now();
        let attempt_timeout = self.calls.timing().attempt_timeout;
        let until = started + attempt_timeout;
        let name = describe(&operation);
        let tag = self.next_call_tag();
        let body = encode_request(
            &Request {
                version: PROTOCOL_VERSION,
                session: None,
                operation,
            },
            Encoding::MsgPack,
        );
        let mut results: Vec<Option<Result<Reply, ClientError>>> =
            indexes.iter().map(|_| None).collect();
        self.drain_connection_events();
        for (slot, &index) in indexes.iter().enumerate() {
            if let Err(setback) = self.send(index, tag, &body) {
                results[slot] = Some(Err(match setback {
                    SendError::Transport(error) => error,
                    SendError::Full(problem) => self.timeout_error(&name, started, problem),
                }));
            }
        }
        while results.iter().any(Option::is_none) {
            let waiting: Vec<usize> = indexes
                .iter()
                .zip(&results)
                .filter(|(_, result)| result.is_none())
                .map(|(&index, _)| index)
                .collect();
            let (index, result) =
                match self.receive(tag, until, |index, _| waiting.contains(&index)) {
                    Ok(Received::Reply(index, Reply::Outcome { outcome, .. })) => {
                        (index, Err(self.unexpected(index, outcome, "", &name)))
                    }
                    Ok(Received::Reply(index, reply)) => (index, Ok(reply)),
                    Ok(Received::Lost(index, kind)) => {
                        // No call is in flight: this only tells the retry policy.
                        let _ = self.calls.on_connection_lost::<Reply>(
                            Instant::now(),
                            index,
                            self.addresses.len(),
                        );
                        // One attempt, never retried elsewhere: the caller asked this node.
                        let problem = connection_problem(&self.addresses[index], kind);
                        (index, Err(self.timeout_error(&name, started, problem)))
                    }
                    Ok(Received::Nothing) => break,
                    Err((index, error)) => (index, Err(error)),
                };
            if let Some(slot) = indexes.iter().position(|&asked| asked == index) {
                if results[slot].is_none() {
                    results[slot] = Some(result);
                }
            }
        }
        indexes
            .iter()
            .zip(results)
            .map(|(&index, result)| {
                result.unwrap_or_else(|| {
                    Err(self.timeout_error(
                        &name,
                        started,
                        format!(
                            "no reply from {} within {attempt_timeout:.1?}",
                            self.addresses[index]
                        ),
                    ))
                })
            })
            .collect()
    }

    /// Runs one topic or message operation to a decisive outcome: success, or a failure that
    /// retrying cannot change (`NO_SUCH_TOPIC`, `EMPTY`, ...). Returns the node that answered.
    /// The retry rules are [`call::CallMachine`]'s; this drives it with blocking sends and
    /// polls.
    fn call(
        &mut self,
        operation: Operation,
        with_session: bool,
    ) -> Result<(usize, Outcome), ClientError> {
        let started = Instant::now();
        let name = describe(&operation);
        let blocking = matches!(
            &operation,
            Operation::Fetch { options, .. } if options.wait_ms.is_some_and(|wait| wait > 0)
        );
        let result = self.call_once(operation, with_session, started, &name);
        if with_session && !self.session_open {
            self.note_session_outcome(&result, blocking);
        }
        result
    }

    /// Tracks whether this client's session is open on the nodes, and starts a new one when
    /// the next request could not be admitted.
    ///
    /// A node accepts an unknown `client_id` only at `seq` 0 or 1 (`queue::session`), and
    /// only a request applied through the log opens the session. Some replies are decided
    /// before the log: a gateway refusal (BAD_REQUEST, TOO_LARGE, FORBIDDEN, possibly QUOTA)
    /// and the EMPTY that ends a blocking GET's wait; a call that gave up may not have been
    /// applied either. After one of those, while no request of this `client_id` is known to
    /// have been applied, the next request (at seq 2) would be refused as SESSION_EXPIRED:
    /// so the client takes a new `client_id` instead. That is safe, since nothing of the old
    /// session can be replayed into the new one; at worst the cluster keeps one unused
    /// session. Replies that only the log gives (success, a plain EMPTY, NO_SUCH_TOPIC,
    /// TOPIC_EXISTS, STALE_RECEIPT) mark the session open, so a client polling an empty
    /// topic keeps one session.
    fn note_session_outcome(
        &mut self,
        result: &Result<(usize, Outcome), ClientError>,
        blocking: bool,
    ) {
        let applied = match result {
            Ok((_, Outcome::Failed(info))) => match info.code {
                ErrorCode::Empty => !blocking,
                ErrorCode::NoSuchTopic | ErrorCode::TopicExists | ErrorCode::StaleReceipt => true,
                _ => false,
            },
            Ok(_) => true,
            Err(_) => false,
        };
        if applied {
            self.session_open = true;
        } else {
            self.client_id = format!("{:016x}", rand::random::<u64>());
            self.seq = 0;
        }
    }

    /// One call of [`Client::call`], under the current `client_id`.
    fn call_once(
        &mut self,
        operation: Operation,
        with_session: bool,
        started: Instant,
        name: &str,
    ) -> Result<(usize, Outcome), ClientError> {
        let name = name.to_string();
        let session = with_session.then(|| {
            self.seq += 1;
            SessionKey {
                client_id: self.client_id.clone(),
                seq: self.seq,
            }
        });
        // Encoded once: every retry sends the same bytes, hence the same session key.
        let body = encode_request(
            &Request {
                version: PROTOCOL_VERSION,
                session,
                operation,
            },
            Encoding::MsgPack,
        );
        let tag = self.next_call_tag();
        // The last node that could not be connected to, to name in the error.
        let mut unreachable: Option<ClientError> = None;
        let mut answered_by = 0;
        // Connections that dropped since the last call are skipped from the first attempt.
        self.drain_connection_events();
        let mut step = self.calls.begin(started, self.addresses.len());
        loop {
            step = match step {
                Step::Send { node, .. } => match self.send(node, tag, &body) {
                    Ok(()) => Step::Wait,
                    Err(SendError::Transport(error)) => {
                        log::debug!("{name}: {error}");
                        unreachable = Some(error);
                        self.calls.on_send_failed(
                            Instant::now(),
                            node,
                            SendFailure::Unreachable,
                            self.addresses.len(),
                        )
                    }
                    Err(SendError::Full(problem)) => {
                        log::debug!("{name}: {problem}");
                        self.calls.on_send_failed(
                            Instant::now(),
                            node,
                            SendFailure::QueueFull,
                            self.addresses.len(),
                        )
                    }
                },
                Step::Wait => {
                    let until = self
                        .calls
                        .wake_at()
                        .expect("a call in flight always has a timer");
                    match self.receive(tag, until, |_, _| true) {
                        Ok(Received::Reply(node, reply)) => {
                            answered_by = node;
                            let answer = self.classify(&name, node, reply);
                            self.calls
                                .on_answer(Instant::now(), node, answer, self.addresses.len())
                        }
                        Ok(Received::Lost(node, kind)) => {
                            log::debug!(
                                "{name}: {}",
                                connection_problem(&self.addresses[node], kind)
                            );
                            self.calls.on_connection_lost(
                                Instant::now(),
                                node,
                                self.addresses.len(),
                            )
                        }
                        Ok(Received::Nothing) => {
                            self.calls.on_timer(Instant::now(), self.addresses.len())
                        }
                        Err((_, error)) => {
                            self.calls.abandon();
                            return Err(error);
                        }
                    }
                }
                Step::Finished(finish) => {
                    return match finish.result {
                        CallResult::Answered(Reply::Outcome { outcome, .. }) => {
                            Ok((answered_by, outcome))
                        }
                        CallResult::Answered(Reply::Status(_) | Reply::Stats(_)) => {
                            Err(ClientError::UnexpectedReply {
                                node: self.addresses[answered_by].clone(),
                                operation: name,
                                detail: "a status or stats report".to_string(),
                            })
                        }
                        CallResult::GaveUp { last } => Err(self.deadline_error(
                            &name,
                            started,
                            last,
                            unreachable,
                            with_session,
                        )),
                        CallResult::Unreachable => Err(unreachable.expect(
                            "the machine reports every node unreachable only after a failed \
                             connect",
                        )),
                    };
                }
            };
        }
    }

    /// What the retry policy needs to know of a reply to the call in flight: a leader hint
    /// becomes a node index, learning its address if new.
    fn classify(&mut self, name: &str, node: usize, reply: Reply) -> Answer<Reply> {
        match reply {
            Reply::Outcome { outcome, leader } => match retryable(&outcome) {
                Some(info) => {
                    log::debug!(
                        "{name}: {} answered {}: {}",
                        self.addresses[node],
                        info.code.as_str(),
                        info.message
                    );
                    Answer::Retry {
                        code: info.code,
                        hint: leader.and_then(|leader| self.learn(&leader)),
                    }
                }
                None => Answer::Decisive(Reply::Outcome { outcome, leader }),
            },
            other => Answer::Decisive(other),
        }
    }

    /// Queues `[tag, "", body]` for one node without blocking.
    fn send(&mut self, index: usize, tag: u64, body: &[u8]) -> Result<(), SendError> {
        let node = self.addresses[index].clone();
        let transport = |source| {
            SendError::Transport(ClientError::Transport {
                node: node.clone(),
                source,
            })
        };
        let frames: [&[u8]; 3] = [&tag.to_be_bytes(), &[], body];
        let socket = self.socket(index).map_err(transport)?;
        match socket.send_multipart(frames, zmq::DONTWAIT) {
            Ok(()) => Ok(()),
            Err(zmq::Error::EAGAIN) => {
                // The queue towards this node is full of requests it never took: drop them
                // with the socket, and count this attempt as lost.
                self.sockets[index] = None;
                self.monitors[index] = None;
                Err(SendError::Full(format!(
                    "{node}: the send queue is full (node unreachable)"
                )))
            }
            Err(source) => Err(transport(source)),
        }
    }

    /// Waits until `until` for a reply tagged `tag` that `accept` takes, or for a node's
    /// connection to drop or be refused. Replies to other calls are stale and dropped; so are
    /// frames that are not `[tag, "", body]`. A reply that carries the tag but cannot be
    /// decoded is an error of the node that sent it. A connection made (again) is passed to
    /// the retry policy on the way.
    fn receive(
        &mut self,
        tag: u64,
        until: Instant,
        mut accept: impl FnMut(usize, &Reply) -> bool,
    ) -> Result<Received, (usize, ClientError)> {
        let tag_bytes = tag.to_be_bytes();
        loop {
            let remaining = until.saturating_duration_since(Instant::now());
            let open: Vec<usize> = (0..self.sockets.len())
                .filter(|&index| self.sockets[index].is_some())
                .collect();
            let watched: Vec<usize> = (0..self.monitors.len())
                .filter(|&index| self.monitors[index].is_some())
                .collect();
            let (readable, signalled): (Vec<usize>, Vec<usize>) = {
                let sockets = open.iter().map(|&index| {
                    self.sockets[index]
                        .as_ref()
                        .expect("only open sockets are listed")
                        .as_poll_item(zmq::POLLIN)
                });
                let monitors = watched.iter().map(|&index| {
                    self.monitors[index]
                        .as_ref()
                        .expect("only attached monitors are listed")
                        .poll_item()
                });
                let mut items: Vec<zmq::PollItem> = sockets.chain(monitors).collect();
                match zmq::poll(&mut items, timeout_milliseconds(remaining)) {
                    Ok(_) | Err(zmq::Error::EINTR) => {}
                    Err(source) => {
                        let index = open.first().copied().unwrap_or(0);
                        return Err((
                            index,
                            ClientError::Transport {
                                node: self.addresses[index].clone(),
                                source,
                            },
                        ));
                    }
                }
                let (socket_items, monitor_items) = items.split_at(open.len());
                (
                    open.iter()
                        .zip(socket_items)
                        .filter(|(_, item)| item.is_readable())
                        .map(|(&index, _)| index)
                        .collect(),
                    watched
                        .iter()
                        .zip(monitor_items)
                        .filter(|(_, item)| item.is_readable())
                        .map(|(&index, _)| index)
                        .collect(),
                )
            };
            for index in readable {
                let socket = self.sockets[index]
                    .as_ref()
                    .expect("readable sockets are open");
                loop {
                    let frames = match socket.recv_multipart(zmq::DONTWAIT) {
                        Ok(frames) => frames,
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                        Err(source) => {
                            let node = self.addresses[index].clone();
                            return Err((index, ClientError::Transport { node, source }));
                        }
                    };
                    let body = match frames.as_slice() {
                        [frame_tag, empty, body] if empty.is_empty() && frame_tag.len() == 8 => {
                            if frame_tag.as_slice() != tag_bytes {
                                log::debug!("{}: dropped a stale reply", self.addresses[index]);
                                continue;
                            }
                            body
                        }
                        _ => {
                            log::debug!(
                                "{}: dropped a reply of {} frames that is not [tag, \"\", body]",
                                self.addresses[index],
                                frames.len()
                            );
                            continue;
                        }
                    };
                    let reply = decode_reply(body).map_err(|source| {
                        let node = self.addresses[index].clone();
                        (index, ClientError::BadReply { node, source })
                    })?;
                    if accept(index, &reply) {
                        return Ok(Received::Reply(index, reply));
                    }
                }
            }
            for index in signalled {
                if let Some(kind) = self.next_connection_loss(index) {
                    return Ok(Received::Lost(index, kind));
                }
            }
            if Instant::now() >= until {
                return Ok(Received::Nothing);
            }
        }
    }

    /// Reads node `index`'s connection events up to the first loss (returned; later ones
    /// wait for the next look), passing connections made to the retry policy.
    fn next_connection_loss(&mut self, index: usize) -> Option<EventKind> {
        loop {
            let monitor = self.monitors.get(index)?.as_ref()?;
            match monitor.next_event() {
                Ok(Some(event)) => match event.kind {
                    EventKind::Connected => self.calls.on_connection_made(index),
                    kind @ (EventKind::Disconnected | EventKind::ConnectRetried) => {
                        return Some(kind)
                    }
                    _ => {}
                },
                Ok(None) => return None,
                Err(error) => {
                    // The monitor is broken, not the connection: stop watching it.
                    log::debug!("{}: socket monitor: {error}", self.addresses[index]);
                    self.monitors[index] = None;
                    return None;
                }
            }
        }
    }

    /// Passes every connection event waiting to the retry policy (between calls, when no
    /// call waits on a node), so a call starts from what is known now.
    fn drain_connection_events(&mut self) {
        for index in 0..self.monitors.len() {
            while self.next_connection_loss(index).is_some() {
                let _ = self.calls.on_connection_lost::<Reply>(
                    Instant::now(),
                    index,
                    self.addresses.len(),
                );
            }
        }
    }

    fn socket(&mut self, index: usize) -> Result<&zmq::Socket, zmq::Error> {
        if self.sockets[index].is_none() {
            let socket = self.context.socket(zmq::DEALER)?;
            // Unsent requests die with the client: they must not delay its exit.
            socket.set_linger(0)?;
            socket.set_maxmsgsize(REPLY_BYTES_MAX as i64)?;
            if let Some(curve) = &self.curve {
                curve.configure(&socket, &self.addresses[index])?;
            }
            // Attached before connecting, so no event is missed. Without it the client still
            // works, leaving a dead node only after the attempt timeout.
            self.monitors[index] = match Monitor::attach(&self.context, &socket, &CONNECTION_EVENTS)
            {
                Ok(monitor) => Some(monitor),
                Err(error) => {
                    log::debug!("{}: no socket monitor: {error}", self.addresses[index]);
                    None
                }
            };
            socket.connect(&self.addresses[index].endpoint())?;
            self.sockets[index] = Some(socket);
        }
        Ok(self.sockets[index]
            .as_ref()
            .expect("the socket was just created"))
    }

    fn index_of(&self, node: &NodeAddress) -> Option<usize> {
        self.addresses.iter().position(|known| known == node)
    }

    /// The index of `node`, added to the known nodes if new (a caller may ask any node).
    fn index_or_add(&mut self, node: &NodeAddress) -> usize {
        self.index_of(node).unwrap_or_else(|| {
            self.addresses.push(node.clone());
            self.sockets.push(None);
            self.monitors.push(None);
            self.addresses.len() - 1
        })
    }

    /// The index of the node a leader hint names, learning its address if new.
    fn learn(&mut self, leader: &LeaderInfo) -> Option<usize> {
        let node = NodeAddress::new(leader.ip.clone(), leader.port).ok()?;
        if let Some(index) = self.index_of(&node) {
            return Some(index);
        }
        if self.addresses.len() >= NODES_MAX {
            return None;
        }
        self.addresses.push(node);
        self.sockets.push(None);
        self.monitors.push(None);
        Some(self.addresses.len() - 1)
    }

    fn next_call_tag(&mut self) -> u64 {
        self.call_tag += 1;
        self.call_tag
    }

    /// The error of a call that gave up at its deadline, naming its last setback.
    fn deadline_error(
        &self,
        operation: &str,
        started: Instant,
        last: Option<Setback>,
        unreachable: Option<ClientError>,
        outcome_unknown: bool,
    ) -> ClientError {
        let elapsed = started.elapsed();
        let operation = operation.to_string();
        let attempt_timeout = self.calls.timing().attempt_timeout;
        let silence = |last_problem: String| ClientError::Timeout {
            operation: operation.clone(),
            elapsed,
            last_problem,
            outcome_unknown,
        };
        match last {
            Some(Setback::Refused { node, code }) => ClientError::Unavailable {
                operation: operation.clone(),
                elapsed,
                last_problem: format!("{} answered {}", self.addresses[node], code.as_str()),
                outcome_unknown,
            },
            Some(Setback::Silence { node }) => silence(format!(
                "no reply from {} within {attempt_timeout:.1?}",
                self.addresses[node]
            )),
            Some(Setback::QueueFull { node }) => silence(format!(
                "{}: the send queue is full (node unreachable)",
                self.addresses[node]
            )),
            Some(Setback::Dropped { node }) => silence(format!(
                "the connection to {} dropped or was refused",
                self.addresses[node]
            )),
            Some(Setback::Unreachable { node }) => silence(match unreachable {
                Some(error) => error.to_string(),
                None => format!("{}: cannot connect", self.addresses[node]),
            }),
            None => silence("no attempt fitted in the deadline".to_string()),
        }
    }

    fn timeout_error(&self, operation: &str, started: Instant, problem: String) -> ClientError {
        ClientError::Timeout {
            operation: operation.to_string(),
            elapsed: started.elapsed(),
            last_problem: problem,
            outcome_unknown: false,
        }
    }

    /// The error for a decisive outcome the operation does not expect.
    fn unexpected(
        &self,
        node: usize,
        outcome: Outcome,
        topic: &str,
        operation: &str,
    ) -> ClientError {
        let node = self.addresses[node].clone();
        let topic = topic.to_string();
        match outcome {
            Outcome::Failed(ErrorInfo { code, message }) => match code {
                ErrorCode::NoSuchTopic => ClientError::NoSuchTopic { topic },
                ErrorCode::TopicExists => ClientError::TopicExists { topic },
                ErrorCode::Empty => ClientError::Empty { topic },
                ErrorCode::BadRequest => ClientError::BadRequest { message },
                ErrorCode::TooLarge => ClientError::TooLarge { message },
                ErrorCode::SessionExpired => ClientError::SessionExpired { message },
                ErrorCode::Quota => ClientError::Quota { message },
                ErrorCode::Forbidden => ClientError::Forbidden { message },
                ErrorCode::ChangeInProgress => ClientError::ChangeInProgress { message },
                other => ClientError::Refused {
                    node,
                    operation: operation.to_string(),
                    code: other.as_str().to_string(),
                    message,
                },
            },
            Outcome::Done => unexpected_detail(node, operation, "success without a value"),
            Outcome::Topics(_) => unexpected_detail(node, operation, "a topic list"),
            Outcome::Message(_) => unexpected_detail(node, operation, "a message"),
            Outcome::Delivered(_) => unexpected_detail(node, operation, "a leased message"),
            Outcome::Messages(_) | Outcome::Deliveries(_) => {
                unexpected_detail(node, operation, "a list of messages")
            }
            Outcome::Count(_) => unexpected_detail(node, operation, "a count"),
            Outcome::Stale(_) => unexpected_detail(node, operation, "a list of stale receipts"),
            Outcome::TopicDetails(_) => unexpected_detail(node, operation, "topic details"),
            Outcome::Members(_) => unexpected_detail(node, operation, "a member list"),
        }
    }
}

/// What a `message GET` handed out ([`Client::fetch`]): the reply's shape follows the
/// request's options (PROTOCOL.md §8–§10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// `EMPTY`: nothing to hand out (after the wait, if any).
    Empty,
    /// A plain or blocking GET popped this message.
    Message(Payload),
    /// A leased GET.
    Delivered(Delivery),
    /// A batch GET without lease: at least one message.
    Messages(Vec<Payload>),
    /// A leased batch GET: at least one delivery.
    Deliveries(Vec<Delivery>),
}

/// ACK or NACK: they differ only in the operation.
#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Nack,
}

impl Settle {
    fn operation(self, topic: &str, receipts: Receipts) -> Operation {
        let topic = topic.to_string();
        match self {
            Settle::Ack => Operation::Ack { topic, receipts },
            Settle::Nack => Operation::Nack { topic, receipts },
        }
    }

    fn name(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Nack => "nack",
        }
    }
}

fn stale(topic: &str, receipt: &str) -> ClientError {
    ClientError::StaleReceipt {
        topic: topic.to_string(),
        receipt: receipt.to_string(),
    }
}

/// A lease or wait on the wire: whole milliseconds, rounded up so a sub-millisecond
/// duration is not zero.
fn milliseconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

fn unexpected_detail(node: NodeAddress, operation: &str, detail: &str) -> ClientError {
    ClientError::UnexpectedReply {
        node,
        operation: operation.to_string(),
        detail: detail.to_string(),
    }
}

enum SendError {
    Transport(ClientError),
    Full(String),
}

/// What [`Client::receive`] met first.
enum Received {
    /// A reply from this node that the caller accepts.
    Reply(usize, Reply),
    /// The connection to this node dropped (`Disconnected`) or was refused
    /// (`ConnectRetried`).
    Lost(usize, EventKind),
    /// Nothing before the time given.
    Nothing,
}

/// How a lost connection reads in an error.
fn connection_problem(node: &NodeAddress, kind: EventKind) -> String {
    match kind {
        EventKind::ConnectRetried => format!("{node}: connection refused"),
        _ => format!("the connection to {node} dropped"),
    }
}

/// The failure of an answer that another attempt may turn into a success
/// ([`call::is_retryable`]). `None` for decisive outcomes.
fn retryable(outcome: &Outcome) -> Option<&ErrorInfo> {
    match outcome {
        Outcome::Failed(info) if call::is_retryable(info.code) => Some(info),
        _ => None,
    }
}

fn describe(operation: &Operation) -> String {
    match operation {
        Operation::CreateTopic { topic } => format!("create topic '{topic}'"),
        Operation::ListTopics => "list topics".to_string(),
        Operation::Put { topic, .. } => format!("put to '{topic}'"),
        Operation::Get { topic } => format!("get from '{topic}'"),
        Operation::Status => "status".to_string(),
        Operation::Stats => "stats".to_string(),
        Operation::Fault { .. } => "fault".to_string(),
        Operation::CreateTopicWith { topic, .. } => format!("create topic '{topic}'"),
        Operation::ListTopicDetails => "list topics".to_string(),
        Operation::PutBatch { topic, messages } => {
            format!("put {} messages to '{topic}'", messages.len())
        }
        Operation::Fetch { topic, .. } => format!("get from '{topic}'"),
        Operation::Ack { topic, .. } => format!("ack in '{topic}'"),
        Operation::Nack { topic, .. } => format!("nack in '{topic}'"),
        Operation::Touch { topic, .. } => format!("touch in '{topic}'"),
        Operation::ListMembers => "list members".to_string(),
        Operation::AddMember { member } => format!("add member {}", member.id),
        Operation::RemoveMember { id } => format!("remove member {id}"),
    }
}

fn status_from(reply: Result<Reply, ClientError>) -> Result<StatusReport, ClientError> {
    match reply? {
        Reply::Status(status) => Ok(status),
        other => Err(report_mismatch("status", &other)),
    }
}

fn stats_from(reply: Result<Reply, ClientError>) -> Result<StatsReport, ClientError> {
    match reply? {
        Reply::Stats(stats) => Ok(stats),
        other => Err(report_mismatch("stats", &other)),
    }
}

/// A node answered a status request with stats or the other way round.
fn report_mismatch(operation: &str, reply: &Reply) -> ClientError {
    ClientError::MismatchedReply {
        operation: operation.to_string(),
        detail: format!("{reply:?}"),
    }
}

/// A poll timeout in whole milliseconds, rounded up so a wait never ends early and spins.
fn timeout_milliseconds(remaining: Duration) -> i64 {
    let milliseconds = remaining.as_micros().div_ceil(1000);
    i64::try_from(milliseconds).unwrap_or(i64::MAX)
}
