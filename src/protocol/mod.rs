//! The client wire format: what a request and a reply look like on the wire (PROTOCOL.md
//! §2–§6), and the limits that keep bad input away from the core.
//!
//! A body is a MessagePack map or a JSON object; the reply uses the request's encoding.
//! Replies to version-1 requests carry exactly the keys of PROTOCOL.md §3, because existing
//! clients compare whole replies; version 2 adds `error` and `leader`.
//!
//! The types here are shared: the queue state machine produces [`Outcome`]s (and remembers
//! them per client session), the node wraps them in [`Reply`]s, the client library decodes
//! them again.
//!
//! The codec, by side:
//! - node: [`decode_request`] (validates every field, enforces [`Limits`]), then
//!   [`encode_reply`] or, for bad input, [`encode_request_error`]; a keyed client port
//!   splits it in two, [`parse_request`] then [`ParsedRequest::validate`], to check the
//!   client's rights on [`ParsedRequest::head`] in between;
//! - client: [`encode_request`] and [`decode_reply`].
//!
//! The codec must not know about Raft, topics' contents or sockets: it only turns bytes into
//! values and back. Decoding never panics on any input, never allocates more than the body
//! proves it holds, and never recurses on attacker-controlled nesting (see `msgpack.rs`).
//! Capping the frame size is the socket layer's job (e.g. ZMQ_MAXMSGSIZE), done before a
//! body reaches this module.

mod msgpack;
mod reply;
mod request;
#[cfg(test)]
mod tests;

pub use reply::{decode_reply, encode_reply, encode_request_error};
pub use request::{
    decode_request, encode_request, parse_request, ParsedRequest, RequestHead, VERSIONS_SUPPORTED,
};

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How a body was encoded. A body whose first non-blank byte is `{` is JSON.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Encoding {
    MsgPack,
    Json,
}

impl fmt::Display for Encoding {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Encoding::MsgPack => "MessagePack",
            Encoding::Json => "JSON",
        })
    }
}

/// The bytes JSON allows before a value (RFC 8259 §2).
fn is_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// PROTOCOL.md §2: a body whose first non-blank byte is `{` is JSON; anything else is read
/// as MessagePack. Unambiguous for valid requests: a MessagePack map never starts with a
/// blank or `{` (those bytes are small integers).
pub fn detect_encoding(body: &[u8]) -> Encoding {
    match body.iter().find(|byte| !is_blank(**byte)) {
        Some(b'{') => Encoding::Json,
        _ => Encoding::MsgPack,
    }
}

/// A message as a client put it: GET returns it in the same form. JSON carries text only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Text(String),
    Binary(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(text) => text.len(),
            Payload::Binary(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// PROTOCOL.md §5 idempotency key: a request repeated with the same pair takes effect at most
/// once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    pub client_id: String,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    CreateTopic {
        topic: String,
    },
    ListTopics,
    Put {
        topic: String,
        message: Payload,
    },
    Get {
        topic: String,
    },
    Status,
    /// `{"type": "stats", "method": "GET"}`: this node's applied state machine in numbers,
    /// with a digest, so operators and tests can compare nodes. Answered by any node from
    /// its own state; the digest costs time proportional to the state.
    Stats,
    /// `{"type": "fault", "method": "PUT", "drop_to": [ids], "drop_from": [ids]}`: TESTS
    /// ONLY. This node drops every peer message to a node in `drop_to` and from a node in
    /// `drop_from`, replacing what the previous fault request set (empty lists heal), so a
    /// test can partition a cluster of real processes (tests/nemesis.rs). A node answers it
    /// only when started with `--fault-injection`; otherwise it is BAD_REQUEST. Ids are
    /// sorted, without duplicates, each below [`FAULT_NODE_IDS_MAX`].
    Fault {
        drop_to: Vec<u64>,
        drop_from: Vec<u64>,
        /// `"stop_zap_handler": true` (absent: false): the ZAP handler thread ends as if it
        /// had failed, which a keyed node must treat as fatal (it exits; see
        /// `transport::zap`). No effect on a node without keys, which has no handler.
        stop_zap_handler: bool,
    },
    // Version 2 only (PROTOCOL.md §8–§10). The plain forms above stay for requests that
    // carry none of these fields, so a version 1 request is decoded exactly as before.
    /// `topic PUT` with `max_deliveries` and/or `dead_letter`.
    CreateTopicWith {
        topic: String,
        settings: TopicSettings,
    },
    /// `topic GET` with `"detail": true`.
    ListTopicDetails,
    /// `message PUT` with `messages`: all or none, in one log entry.
    PutBatch {
        topic: String,
        messages: Vec<Payload>,
    },
    /// `message GET` with at least one of `lease_ms`, `wait_ms`, `max`.
    Fetch {
        topic: String,
        options: FetchOptions,
    },
    /// `message ACK`: the leased messages are deleted.
    Ack {
        topic: String,
        receipts: Receipts,
    },
    /// `message NACK`: the leased messages are visible again at once.
    Nack {
        topic: String,
        receipts: Receipts,
    },
    /// `message TOUCH`: the lease now ends `lease_ms` from now.
    Touch {
        topic: String,
        receipt: String,
        lease_ms: u64,
    },
    /// `member GET` (PROTOCOL.md §12): the acting membership, learners included.
    ListMembers,
    /// `member PUT`: add the node as a learner, promote it once it has caught up; answered
    /// once it is a voter.
    AddMember {
        member: MemberAddress,
    },
    /// `member DELETE`: answered once the node is no longer a member.
    RemoveMember {
        id: u64,
    },
}

/// What a request asks to do, as far as a client's rights go (PROTOCOL.md §11): its type,
/// method and topic, borrowed. It is read from the body before the other fields are
/// validated ([`ParsedRequest::head`]), so a keyed client port can answer `FORBIDDEN`
/// before anything else, and from a validated request with [`Operation::intent`], so both
/// ways meet in one rights check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent<'a> {
    /// `topic PUT`, with or without delivery settings.
    CreateTopic {
        topic: &'a str,
    },
    /// `topic GET`, with or without `detail`.
    ListTopics,
    /// `message PUT`, one message or a batch.
    Put {
        topic: &'a str,
    },
    /// Every consuming form: `message GET` (pop, leased, blocking, batch), `ACK`, `NACK`,
    /// `TOUCH`.
    Get {
        topic: &'a str,
    },
    Status,
    Stats,
    Fault,
    /// `member GET`: any listed client.
    ListMembers,
    /// `member PUT` and `member DELETE`: `admin` (PROTOCOL.md §11).
    ChangeMembers,
}

impl Operation {
    /// What this operation asks to do, for a rights check.
    pub fn intent(&self) -> Intent<'_> {
        match self {
            Operation::CreateTopic { topic } => Intent::CreateTopic { topic },
            Operation::ListTopics => Intent::ListTopics,
            Operation::Put { topic, message: _ } => Intent::Put { topic },
            Operation::Get { topic } => Intent::Get { topic },
            Operation::Status => Intent::Status,
            Operation::Stats => Intent::Stats,
            Operation::Fault { .. } => Intent::Fault,
            Operation::CreateTopicWith { topic, settings: _ } => Intent::CreateTopic { topic },
            Operation::ListTopicDetails => Intent::ListTopics,
            Operation::PutBatch { topic, messages: _ } => Intent::Put { topic },
            Operation::Fetch { topic, options: _ }
            | Operation::Ack { topic, receipts: _ }
            | Operation::Nack { topic, receipts: _ }
            | Operation::Touch {
                topic,
                receipt: _,
                lease_ms: _,
            } => Intent::Get { topic },
            Operation::ListMembers => Intent::ListMembers,
            Operation::AddMember { .. } | Operation::RemoveMember { .. } => Intent::ChangeMembers,
        }
    }
}

/// A node as a `member PUT` names it (PROTOCOL.md §12): its id (never used before) and the
/// addresses it serves on, as `config.json` writes them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberAddress {
    pub id: u64,
    pub ip: String,
    pub port: u16,
    pub internal_port: u16,
    /// The node's CURVE public key in Z85 (40 characters), required in a keyed cluster.
    pub public_key: Option<String>,
}

/// One member as `member GET` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub address: MemberAddress,
    /// False for a learner: replicated to, not counted in quorums or elections.
    pub voter: bool,
}

/// A topic's delivery settings (PROTOCOL.md §8), fixed when it is created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TopicSettings {
    /// A message delivered this many times under a lease that comes back once more is
    /// dead-lettered. `None`: no limit. Invariant: at least 1.
    pub max_deliveries: Option<u64>,
    /// Where dead-lettered messages go; `None`: they are discarded and counted. Never the
    /// topic itself.
    pub dead_letter: Option<String>,
}

/// How a `message GET` hands out (PROTOCOL.md §8–§10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FetchOptions {
    /// Lease the messages for this long instead of popping them; within
    /// 1..=[`LEASE_MS_MAX`].
    pub lease_ms: Option<u64>,
    /// Hold the request this long while nothing can be handed out; within
    /// 0..=[`WAIT_MS_MAX`].
    pub wait_ms: Option<u64>,
    /// Hand out up to this many, answered as a list; within 1..=[`BATCH_ITEMS_MAX`].
    pub max: Option<u32>,
}

/// The receipts an ACK or NACK names: the single form answers `STALE_RECEIPT`, the list
/// form lists the refused ones in `stale`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Receipts {
    One(String),
    Many(Vec<String>),
}

impl Receipts {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Receipts::One(receipt) => std::slice::from_ref(receipt),
            Receipts::Many(receipts) => receipts,
        }
    }
}

/// PROTOCOL.md §8: the longest lease, 12 hours.
pub const LEASE_MS_MAX: u64 = 43_200_000;
/// PROTOCOL.md §9: the longest wait of a blocking GET.
pub const WAIT_MS_MAX: u64 = 60_000;
/// PROTOCOL.md §10: the most items in `messages`, `max` and `receipts`.
pub const BATCH_ITEMS_MAX: usize = 1_000;
/// PROTOCOL.md §10: the most message bytes one batch PUT carries. A batch GET stops adding
/// messages before its reply would carry more (it always carries at least one), so a reply
/// stays within what a client's frame cap takes.
pub const BATCH_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// The longest receipt string accepted; receipts this node issues are far shorter.
pub const RECEIPT_BYTES_MAX: usize = 128;

/// Node ids a `fault` request can name: they travel as a 64-bit set.
pub const FAULT_NODE_IDS_MAX: u64 = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// 1 unless the request said `v: 2`.
    pub version: u8,
    pub session: Option<SessionKey>,
    pub operation: Operation,
}

/// PROTOCOL.md §5 error codes, plus `SESSION_EXPIRED` for a retry whose session the cluster
/// has forgotten, `QUOTA` for a write refused by one of the cluster's quotas (queued bytes,
/// topic count: see `queue`), `FORBIDDEN` for a request outside the client's rights
/// (PROTOCOL.md §11), and `UNSPECIFIED` for what a client cannot know.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    NoSuchTopic,
    TopicExists,
    Empty,
    NotLeader,
    BadRequest,
    TooLarge,
    Timeout,
    Unavailable,
    ShuttingDown,
    SessionExpired,
    /// The write would take the cluster over a quota of `config.json` (`queued_bytes_max`,
    /// `topics_max`); it changed nothing. Decisive, like `NO_SUCH_TOPIC`: the same request
    /// gets the same answer until consumers make room (or the operator raises the quota).
    Quota,
    /// The request is outside the rights `config.json` gives the client's key (PROTOCOL.md
    /// §11, see `config::permissions`); it changed nothing. Decisive: the same request gets
    /// the same answer until an operator changes the client's rights.
    Forbidden,
    /// Client side only, never produced by a node: a version 1 failure (which says no more
    /// than `{"success": false}`), or a code this build does not know (the code is then kept
    /// at the front of the message).
    Unspecified,
    /// PROTOCOL.md §8: an ACK, NACK or TOUCH whose receipt was never issued, is already
    /// acknowledged, or whose lease has ended. Changed nothing. (After the older codes, so
    /// that the variant order of the stored session outcomes never changes.)
    StaleReceipt,
    /// PROTOCOL.md §12: a membership change was asked while another is in progress.
    /// Changed nothing; retry once the first one is done (or cancel an add stuck waiting
    /// for its learner with a DELETE of that id).
    ChangeInProgress,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoSuchTopic => "NO_SUCH_TOPIC",
            ErrorCode::TopicExists => "TOPIC_EXISTS",
            ErrorCode::Empty => "EMPTY",
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::SessionExpired => "SESSION_EXPIRED",
            ErrorCode::Quota => "QUOTA",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::Unspecified => "UNSPECIFIED",
            ErrorCode::StaleReceipt => "STALE_RECEIPT",
            ErrorCode::ChangeInProgress => "CHANGE_IN_PROGRESS",
        }
    }

    /// Every code, for parsing and for tests that must cover them all.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::NoSuchTopic,
        ErrorCode::TopicExists,
        ErrorCode::Empty,
        ErrorCode::NotLeader,
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::SessionExpired,
        ErrorCode::Quota,
        ErrorCode::Forbidden,
        ErrorCode::Unspecified,
        ErrorCode::StaleReceipt,
        ErrorCode::ChangeInProgress,
    ];

    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == code)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorInfo {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            code,
            message: message.into(),
        }
    }
}

/// The result of a topic or message operation, as the state machine produced it. Stored in
/// client sessions, so it is serializable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `{"success": true}`
    Done,
    /// `{"success": true, "topics": [...]}`
    Topics(Vec<String>),
    /// `{"success": true, "message": ...}`
    Message(Payload),
    /// `{"success": false}` (v1) or with `error` (v2, and always for BAD_REQUEST/TOO_LARGE).
    Failed(ErrorInfo),
    // The variants below answer version 2 requests only (PROTOCOL.md §8–§10). New variants
    // go at the end: sessions store outcomes in snapshots.
    /// A leased GET: `{"success": true, "message": m, "receipt": r, "deliveries": k}`.
    Delivered(Delivery),
    /// A batch GET without lease: `{"success": true, "messages": [m, ...]}`.
    Messages(Vec<Payload>),
    /// A leased batch GET: `{"success": true, "messages": [{"message", "receipt",
    /// "deliveries"}, ...]}`.
    Deliveries(Vec<Delivery>),
    /// A batch PUT: `{"success": true, "count": n}`.
    Count(u64),
    /// ACK or NACK with `receipts`: `{"success": true, "stale": [r, ...]}`, the receipts
    /// that were refused.
    Stale(Vec<String>),
    /// `topic GET` with `detail`: `{"success": true, "topics": [{...}, ...]}`.
    TopicDetails(Vec<TopicDetail>),
    /// `member GET` (PROTOCOL.md §12): `{"success": true, "members": [{"id", "ip", "port",
    /// "internal_port", "voter", "public_key"?}, ...]}`. Never stored in a session.
    Members(Vec<MemberInfo>),
}

/// One message handed out under a lease (PROTOCOL.md §8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub message: Payload,
    /// Opaque to clients; names this lease and no other, ever.
    pub receipt: String,
    /// How many times the message was handed out under a lease, this time included.
    pub deliveries: u64,
}

/// One topic as `topic GET` with `detail` describes it (PROTOCOL.md §8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDetail {
    pub name: String,
    /// Messages that can be handed out now.
    pub ready: u64,
    /// Messages under a live lease.
    pub leased: u64,
    pub max_deliveries: Option<u64>,
    pub dead_letter: Option<String>,
    /// Messages dropped after `max_deliveries` because the topic has no `dead_letter`.
    pub discarded: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    pub id: u64,
    pub ip: String,
    pub port: u16,
}

/// A follower's replication progress as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    pub match_index: u64,
    pub next_index: u64,
    /// "probe" or "replicate".
    pub state: String,
}

/// `status` reply. v1 carries only `role` and `term`; v2 carries the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    /// "Leader", "Follower" or "Candidate".
    pub role: String,
    pub term: u64,
    pub id: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub last_applied: u64,
    pub last_log_index: u64,
    /// Only on the leader.
    pub peers: Vec<PeerProgress>,
    /// "always" or "never".
    pub fsync: String,
    /// Batches this node made durable since it started: fsync calls made, or under
    /// `fsync: never` the batches that would have synced. 0 when the reply lacked the key.
    pub wal_syncs: u64,
    /// Log entries this node appended to its WAL since it started. 0 when absent.
    pub wal_entries: u64,
    /// Client requests this node took in since it started, `status` and `stats` aside
    /// (monotonic; `rrmq top` shows its rate). 0 when absent.
    pub requests: u64,
}

/// `stats` reply: the node's applied state machine. Two nodes with the same `last_applied`
/// have the same `digest` unless their states diverged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsReport {
    pub id: u64,
    pub last_applied: u64,
    /// CRC32C of the state machine's snapshot form.
    pub digest: u32,
    pub topic_count: u64,
    pub message_count: u64,
    pub payload_bytes: u64,
    pub session_count: u64,
    /// The id peers stamp on their messages (`config`'s `cluster_id`), fixed for the
    /// cluster's life: a node started with `--join` learns it here. 0 when absent.
    pub cluster_id: u64,
    /// The membership this node acts on, listed as `member GET` lists the leader's: on a
    /// follower it may lag the leader's. A node that lost track of its leader learns the
    /// leader's address here (`node::peer_finder`). Empty when absent.
    pub members: Vec<MemberInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Outcome {
        outcome: Outcome,
        /// Sent in v2 replies whenever the node knows the leader.
        leader: Option<LeaderInfo>,
    },
    Status(StatusReport),
    Stats(StatsReport),
}

/// A request the node refuses before it reaches the core: `error.code` is `BadRequest` or
/// `TooLarge`, and the answer ([`encode_request_error`]) uses `encoding`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", error.code.as_str(), error.message)]
pub struct RequestError {
    /// The encoding the body was recognised as: the reply uses it.
    pub encoding: Encoding,
    pub error: ErrorInfo,
}

/// A reply the client cannot make sense of: not a map in its encoding, or a known key with a
/// value of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode the {encoding} reply: {message}")]
pub struct ReplyDecodeError {
    pub encoding: Encoding,
    pub message: String,
}

/// Limits on client input (PROTOCOL.md §6), configurable per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub topic_bytes_max: usize,
    pub message_bytes_max: usize,
    pub client_id_bytes_max: usize,
}

impl Limits {
    /// The hard cap on a client frame (ZMQ_MAXMSGSIZE): a body over it is refused by the
    /// socket layer before it is allocated. It fits the largest single message and, since
    /// PROTOCOL.md §10 lets the cap grow to fit, the largest batch: [`BATCH_MESSAGE_BYTES_MAX`]
    /// of messages plus [`BATCH_ITEMS_MAX`] item headers (a JSON string's quotes and comma,
    /// or a MessagePack header of up to 5 bytes), then the topic and client id. JSON
    /// escapes count against it. `slack_bytes` covers the other fields.
    pub fn frame_bytes_max(&self, slack_bytes: usize) -> usize {
        const ITEM_HEADER_BYTES: usize = 5;
        let batch = BATCH_MESSAGE_BYTES_MAX + BATCH_ITEMS_MAX * ITEM_HEADER_BYTES;
        self.message_bytes_max.max(batch)
            + self.topic_bytes_max
            + self.client_id_bytes_max
            + slack_bytes
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            topic_bytes_max: 255,
            message_bytes_max: 1024 * 1024,
            client_id_bytes_max: 64,
        }
    }
}

/// Payloads are cheap to clone through the core: conversions for callers that hold `Bytes`.
impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Payload {
        Payload::Binary(bytes.to_vec())
    }
}
