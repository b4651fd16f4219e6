//! Replies: [`Reply`] -> bytes on the node, bytes -> [`Reply`] in the client library.
//!
//! Encoding writes each reply shape through one borrowed `Serialize` struct, so JSON and
//! MessagePack always carry the same keys and the payload is never copied on the way out.
//! MessagePack goes through `rmp_serde::to_vec_named` (maps with string keys, never the
//! array form of structs); text is str, binary is bin. JSON has no bytes: a binary message
//! popped by a JSON request is sent as an array of byte values, which loses nothing (the
//! message has already been popped when the reply is encoded, so refusing is not an option).
//!
//! Version 1 replies carry exactly the keys of PROTOCOL.md §3, because existing clients
//! compare whole replies; the one exception is `error` on BAD_REQUEST/TOO_LARGE, which §6
//! sends whatever the version. Any version >= 2 gets the version 2 extensions of §5.
//!
//! Decoding (client side) reads both versions and both encodings into a generic
//! `rmpv::Value` first (JSON via `serde_json::Value`), depth-limited, then interprets it.
//! That costs a few allocations per reply, which is fine off the node's hot path.
//! A reply with `role` is a status reply. A failure without `error` (a version 1 reply) or
//! with a code this build does not know decodes as [`ErrorCode::Unspecified`]; an unknown
//! code is kept at the front of the message, e.g. `"QUOTA_EXCEEDED: ..."`.
//! Version 1 status replies lack the version 2 fields: they decode as 0, `None`, empty.

use rmpv::Value;
use serde::{Serialize, Serializer};

use super::request::PayloadWire;
use super::{
    detect_encoding, Delivery, Encoding, ErrorCode, ErrorInfo, LeaderInfo, MemberAddress,
    MemberInfo, Outcome, Payload, PeerProgress, Reply, ReplyDecodeError, RequestError, StatsReport,
    StatusReport, TopicDetail,
};

/// Encodes a reply in the request's encoding. `version` is the request's: 1 gets exactly the
/// keys of PROTOCOL.md §3, 2 (or more) the extensions of §5.
pub fn encode_reply(reply: &Reply, version: u8, encoding: Encoding) -> Vec<u8> {
    let extended = version >= 2;
    match reply {
        Reply::Outcome { outcome, leader } => {
            let leader = leader.as_ref().filter(|_| extended);
            encode(&OutcomeWire::new(outcome, leader, extended), encoding)
        }
        Reply::Status(status) => encode(&StatusWire::new(status, extended), encoding),
        Reply::Stats(stats) => encode(&StatsWire::new(stats), encoding),
    }
}

/// Encodes the answer to a request that could not be decoded:
/// `{"success": false, "error": {"code": ..., "message": ...}}`, with `error` whatever the
/// version (PROTOCOL.md §6), in the encoding the body was recognised as.
pub fn encode_request_error(error: &RequestError) -> Vec<u8> {
    let wire = OutcomeWire {
        error: Some(ErrorWire::new(&error.error)),
        ..OutcomeWire::failure()
    };
    encode(&wire, error.encoding)
}

fn encode<T: Serialize>(wire: &T, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::MsgPack => rmp_serde::to_vec_named(wire)
            .expect("maps with string keys of strings, integers and bytes always encode"),
        Encoding::Json => serde_json::to_vec(wire)
            .expect("maps with string keys of strings, integers and bytes always encode"),
    }
}

/// `{"success", "topics"?, "message"?, "receipt"?, "deliveries"?, "messages"?, "count"?,
/// "stale"?, "error"?, "leader"?}`: absent keys are not written.
#[derive(Serialize)]
struct OutcomeWire<'a> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<TopicsWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<PayloadWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<MessagesWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<MembersWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<LeaderWire<'a>>,
}

impl<'a> OutcomeWire<'a> {
    fn failure() -> Self {
        OutcomeWire {
            success: false,
            topics: None,
            message: None,
            receipt: None,
            deliveries: None,
            messages: None,
            count: None,
            stale: None,
            members: None,
            error: None,
            leader: None,
        }
    }

    fn new(outcome: &'a Outcome, leader: Option<&'a LeaderInfo>, extended: bool) -> Self {
        let mut wire = OutcomeWire {
            success: true,
            leader: leader.map(LeaderWire::new),
            ..OutcomeWire::failure()
        };
        match outcome {
            Outcome::Done => {}
            Outcome::Topics(topics) => wire.topics = Some(TopicsWire::Names(topics)),
            Outcome::Message(payload) => wire.message = Some(PayloadWire(payload)),
            Outcome::Failed(error) => {
                wire.success = false;
                // PROTOCOL.md §6: bad input gets `error` whatever the version.
                let always = matches!(error.code, ErrorCode::BadRequest | ErrorCode::TooLarge);
                if extended || always {
                    wire.error = Some(ErrorWire::new(error));
                }
            }
            Outcome::Delivered(delivery) => {
                wire.message = Some(PayloadWire(&delivery.message));
                wire.receipt = Some(&delivery.receipt);
                wire.deliveries = Some(delivery.deliveries);
            }
            Outcome::Messages(messages) => wire.messages = Some(MessagesWire::Plain(messages)),
            Outcome::Deliveries(deliveries) => {
                wire.messages = Some(MessagesWire::Leased(deliveries))
            }
            Outcome::Count(count) => wire.count = Some(*count),
            Outcome::Stale(stale) => wire.stale = Some(stale),
            Outcome::TopicDetails(details) => wire.topics = Some(TopicsWire::Details(details)),
            Outcome::Members(members) => wire.members = Some(MembersWire(members)),
        }
        wire
    }
}

/// `topics`: names, or with `detail` one map per topic (PROTOCOL.md §8).
enum TopicsWire<'a> {
    Names(&'a [String]),
    Details(&'a [TopicDetail]),
}

impl Serialize for TopicsWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TopicsWire::Names(names) => serializer.collect_seq(names.iter()),
            TopicsWire::Details(details) => {
                serializer.collect_seq(details.iter().map(|detail| TopicDetailWire {
                    name: &detail.name,
                    ready: detail.ready,
                    leased: detail.leased,
                    max_deliveries: detail.max_deliveries,
                    dead_letter: detail.dead_letter.as_deref(),
                    discarded: detail.discarded,
                }))
            }
        }
    }
}

/// `max_deliveries` and `dead_letter` are `null` when unset: always written.
#[derive(Serialize)]
struct TopicDetailWire<'a> {
    name: &'a str,
    ready: u64,
    leased: u64,
    max_deliveries: Option<u64>,
    dead_letter: Option<&'a str>,
    discarded: u64,
}

/// `messages` of a batch GET: the messages themselves, or, leased, one map per message
/// (PROTOCOL.md §10).
enum MessagesWire<'a> {
    Plain(&'a [Payload]),
    Leased(&'a [Delivery]),
}

impl Serialize for MessagesWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MessagesWire::Plain(messages) => {
                serializer.collect_seq(messages.iter().map(PayloadWire))
            }
            MessagesWire::Leased(deliveries) => {
                serializer.collect_seq(deliveries.iter().map(|delivery| DeliveryWire {
                    message: PayloadWire(&delivery.message),
                    receipt: &delivery.receipt,
                    deliveries: delivery.deliveries,
                }))
            }
        }
    }
}

#[derive(Serialize)]
struct DeliveryWire<'a> {
    message: PayloadWire<'a>,
    receipt: &'a str,
    deliveries: u64,
}

/// `members` of a `member GET` (PROTOCOL.md §12): `public_key` only when the member has one.
struct MembersWire<'a>(&'a [MemberInfo]);

impl Serialize for MembersWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|member| MemberWire {
            id: member.address.id,
            ip: &member.address.ip,
            port: member.address.port,
            internal_port: member.address.internal_port,
            voter: member.voter,
            public_key: member.address.public_key.as_deref(),
        }))
    }
}

#[derive(Serialize)]
struct MemberWire<'a> {
    id: u64,
    ip: &'a str,
    port: u16,
    internal_port: u16,
    voter: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorWire<'a> {
    code: &'static str,
    message: &'a str,
}

impl<'a> ErrorWire<'a> {
    fn new(error: &'a ErrorInfo) -> Self {
        ErrorWire {
            code: error.code.as_str(),
            message: &error.message,
        }
    }
}

#[derive(Serialize)]
struct LeaderWire<'a> {
    id: u64,
    ip: &'a str,
    port: u16,
}

impl<'a> LeaderWire<'a> {
    fn new(leader: &'a LeaderInfo) -> Self {
        LeaderWire {
            id: leader.id,
            ip: &leader.ip,
            port: leader.port,
        }
    }
}

/// `{"role", "term"}`, and in version 2 the node's progress; `leader` only when known,
/// `peers` only when there are some (on the leader).
#[derive(Serialize)]
struct StatusWire<'a> {
    role: &'a str,
    term: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_applied: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_log_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<PeersWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fsync: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_syncs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_entries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<u64>,
}

impl<'a> StatusWire<'a> {
    fn new(status: &'a StatusReport, extended: bool) -> Self {
        let mut wire = StatusWire {
            role: &status.role,
            term: status.term,
            id: None,
            leader: None,
            commit_index: None,
            last_applied: None,
            last_log_index: None,
            peers: None,
            fsync: None,
            wal_syncs: None,
            wal_entries: None,
            requests: None,
        };
        if extended {
            wire.id = Some(status.id);
            wire.leader = status.leader;
            wire.commit_index = Some(status.commit_index);
            wire.last_applied = Some(status.last_applied);
            wire.last_log_index = Some(status.last_log_index);
            wire.peers = (!status.peers.is_empty()).then_some(PeersWire(&status.peers));
            wire.fsync = Some(&status.fsync);
            wire.wal_syncs = Some(status.wal_syncs);
            wire.wal_entries = Some(status.wal_entries);
            wire.requests = Some(status.requests);
        }
        wire
    }
}

/// `stats` is not a version 1 operation, so its reply has one form.
#[derive(Serialize)]
struct StatsWire<'a> {
    success: bool,
    id: u64,
    last_applied: u64,
    digest: u32,
    topic_count: u64,
    message_count: u64,
    payload_bytes: u64,
    session_count: u64,
    cluster_id: u64,
    members: MembersWire<'a>,
}

impl<'a> StatsWire<'a> {
    fn new(stats: &'a StatsReport) -> StatsWire<'a> {
        StatsWire {
            success: true,
            id: stats.id,
            last_applied: stats.last_applied,
            digest: stats.digest,
            topic_count: stats.topic_count,
            message_count: stats.message_count,
            payload_bytes: stats.payload_bytes,
            session_count: stats.session_count,
            cluster_id: stats.cluster_id,
            members: MembersWire(&stats.members),
        }
    }
}

struct PeersWire<'a>(&'a [PeerProgress]);

impl Serialize for PeersWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|peer| PeerWire {
            id: peer.id,
            match_index: peer.match_index,
            next_index: peer.next_index,
            state: &peer.state,
        }))
    }
}

#[derive(Serialize)]
struct PeerWire<'a> {
    id: u64,
    match_index: u64,
    next_index: u64,
    state: &'a str,
}

// ---------------------------------------------------------------------------------------
// Decoding (client side).

/// How deep rmpv may recurse. rmpv counts about two levels per container and three per
/// string; the deepest reply (status -> peers -> peer -> state) needs 9.
const REPLY_DEPTH_MAX: usize = 32;

/// Decodes a version 1 or 2 reply in either encoding (the encoding is recognised like a
/// request's). Never panics; nesting deeper than any reply fails cleanly.
pub fn decode_reply(body: &[u8]) -> Result<Reply, ReplyDecodeError> {
    let encoding = detect_encoding(body);
    let fail = |message: String| ReplyDecodeError { encoding, message };
    let value = match encoding {
        Encoding::MsgPack => {
            let mut rest = body;
            let value = rmpv::decode::read_value_with_max_depth(&mut rest, REPLY_DEPTH_MAX)
                .map_err(|error| fail(format!("not valid MessagePack: {error}")))?;
            if !rest.is_empty() {
                return Err(fail(format!("{} bytes follow the reply map", rest.len())));
            }
            value
        }
        Encoding::Json => serde_json::from_slice(body)
            .map(json_to_value)
            .map_err(|error| fail(format!("not valid JSON: {error}")))?,
    };
    interpret(value).map_err(fail)
}

/// serde_json's own recursion limit (128) bounds this recursion.
fn json_to_value(json: serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(value) => Value::Boolean(value),
        serde_json::Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                Value::from(unsigned)
            } else if let Some(signed) = number.as_i64() {
                Value::from(signed)
            } else {
                number.as_f64().map_or(Value::Nil, Value::F64)
            }
        }
        serde_json::Value::String(text) => Value::from(text),
        serde_json::Value::Array(items) => {
            Value::Array(items.into_iter().map(json_to_value).collect())
        }
        serde_json::Value::Object(object) => Value::Map(
            object
                .into_iter()
                .map(|(key, value)| (Value::from(key), json_to_value(value)))
                .collect(),
        ),
    }
}

/// A map's entries with string keys; entries with other keys are dropped.
struct Entries(Vec<(String, Value)>);

impl Entries {
    fn from_value(what: &str, value: Value) -> Result<Entries, String> {
        let Value::Map(pairs) = value else {
            return Err(format!("{what} is not a map"));
        };
        let entries = pairs
            .into_iter()
            .filter_map(|(key, value)| match key {
                Value::String(key) => key.into_str().map(|key| (key, value)),
                _ => None,
            })
            .collect();
        Ok(Entries(entries))
    }

    /// Removes and returns the first value under `key`.
    fn take(&mut self, key: &str) -> Option<Value> {
        let position = self.0.iter().position(|(name, _)| name == key)?;
        Some(self.0.swap_remove(position).1)
    }

    fn take_u64(&mut self, key: &str) -> Result<Option<u64>, String> {
        match self.take(key) {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Integer(integer)) => integer
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("`{key}` is negative")),
            Some(other) => Err(format!("`{key}` is not an integer: it is {}", kind(&other))),
        }
    }

    fn required_u64(&mut self, key: &str) -> Result<u64, String> {
        self.take_u64(key)?
            .ok_or_else(|| format!("`{key}` is missing"))
    }

    fn take_text(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => text(key, value).map(Some),
        }
    }

    fn required_text(&mut self, key: &str) -> Result<String, String> {
        self.take_text(key)?
            .ok_or_else(|| format!("`{key}` is missing"))
    }
}

fn text(what: &str, value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => text
            .into_str()
            .ok_or_else(|| format!("`{what}` is not valid UTF-8")),
        other => Err(format!("`{what}` is not a string: it is {}", kind(&other))),
    }
}

/// What a value is, for error messages (never the value itself: it may be huge).
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a floating-point number",
        Value::String(_) => "a string",
        Value::Binary(_) => "binary data",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension",
    }
}

fn interpret(value: Value) -> Result<Reply, String> {
    let mut entries = Entries::from_value("the reply", value)?;
    if entries.0.iter().any(|(key, _)| key == "role") {
        return interpret_status(entries).map(Reply::Status);
    }
    if entries.0.iter().any(|(key, _)| key == "digest") {
        return interpret_stats(entries).map(Reply::Stats);
    }
    let success = match entries.take("success") {
        Some(Value::Boolean(success)) => success,
        Some(other) => {
            return Err(format!(
                "`success` is not a boolean: it is {}",
                kind(&other)
            ))
        }
        None => return Err("neither `success` nor `role` is present".to_owned()),
    };
    let leader = match entries.take("leader") {
        None | Some(Value::Nil) => None,
        Some(value) => Some(interpret_leader(value)?),
    };
    let outcome = if success {
        interpret_success(&mut entries)?
    } else {
        match entries.take("error") {
            None | Some(Value::Nil) => Outcome::Failed(ErrorInfo::new(
                ErrorCode::Unspecified,
                "the node did not say why (a version 1 reply)",
            )),
            Some(error) => Outcome::Failed(interpret_error(error)?),
        }
    };
    Ok(Reply::Outcome { outcome, leader })
}

/// The value a successful reply carries: at most one of `topics`, `message` (with
/// `receipt` and `deliveries` when leased), `messages`, `count`, `stale`.
fn interpret_success(entries: &mut Entries) -> Result<Outcome, String> {
    let topics = entries.take("topics");
    let message = entries.take("message");
    let messages = entries.take("messages");
    let count = entries.take_u64("count")?;
    let stale = entries.take("stale");
    let members = entries.take("members");
    let present = [
        topics.is_some(),
        message.is_some(),
        messages.is_some(),
        count.is_some(),
        stale.is_some(),
        members.is_some(),
    ];
    if present.iter().filter(|present| **present).count() > 1 {
        return Err(
            "more than one of `topics`, `message`, `messages`, `count`, `stale`, `members` is \
             present"
                .into(),
        );
    }
    if let Some(members) = members {
        return interpret_members(members);
    }
    if let Some(topics) = topics {
        return interpret_topics(topics);
    }
    if let Some(message) = message {
        let message = interpret_payload(message)?;
        return Ok(match entries.take_text("receipt")? {
            None => Outcome::Message(message),
            Some(receipt) => Outcome::Delivered(Delivery {
                message,
                receipt,
                deliveries: entries.required_u64("deliveries")?,
            }),
        });
    }
    if let Some(messages) = messages {
        return interpret_messages(messages);
    }
    if let Some(count) = count {
        return Ok(Outcome::Count(count));
    }
    if let Some(stale) = stale {
        let Value::Array(items) = stale else {
            return Err(format!("`stale` is not an array: it is {}", kind(&stale)));
        };
        return items
            .into_iter()
            .map(|item| text("stale", item))
            .collect::<Result<_, _>>()
            .map(Outcome::Stale);
    }
    Ok(Outcome::Done)
}

/// `messages`: payloads, or (leased) maps with `message`, `receipt` and `deliveries`.
fn interpret_messages(value: Value) -> Result<Outcome, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "`messages` is not an array: it is {}",
            kind(&value)
        ));
    };
    if !items.first().is_some_and(Value::is_map) {
        return items
            .into_iter()
            .map(interpret_payload)
            .collect::<Result<_, _>>()
            .map(Outcome::Messages);
    }
    items
        .into_iter()
        .map(|item| {
            let mut item = Entries::from_value("an item of `messages`", item)?;
            let message = item
                .take("message")
                .ok_or_else(|| "an item of `messages` has no `message`".to_string())?;
            Ok(Delivery {
                message: interpret_payload(message)?,
                receipt: item.required_text("receipt")?,
                deliveries: item.required_u64("deliveries")?,
            })
        })
        .collect::<Result<_, String>>()
        .map(Outcome::Deliveries)
}

/// `members` of a `member GET`: one map per member.
fn interpret_members(value: Value) -> Result<Outcome, String> {
    members_of(value).map(Outcome::Members)
}

/// `members` (of a `member GET` or a `stats`): one map per member.
fn members_of(value: Value) -> Result<Vec<MemberInfo>, String> {
    let Value::Array(items) = value else {
        return Err(format!("`members` is not an array: it is {}", kind(&value)));
    };
    let port = |member: &mut Entries, key: &str| -> Result<u16, String> {
        let port = member.required_u64(key)?;
        u16::try_from(port).map_err(|_| format!("member `{key}` {port} is over 65535"))
    };
    items
        .into_iter()
        .map(|item| {
            let mut member = Entries::from_value("an item of `members`", item)?;
            let voter = match member.take("voter") {
                Some(Value::Boolean(voter)) => voter,
                Some(other) => {
                    return Err(format!("`voter` is not a boolean: it is {}", kind(&other)))
                }
                None => return Err("`voter` is missing".to_string()),
            };
            Ok(MemberInfo {
                address: MemberAddress {
                    id: member.required_u64("id")?,
                    ip: member.required_text("ip")?,
                    port: port(&mut member, "port")?,
                    internal_port: port(&mut member, "internal_port")?,
                    public_key: match member.take("public_key") {
                        None | Some(Value::Nil) => None,
                        Some(value) => Some(text("public_key", value)?),
                    },
                },
                voter,
            })
        })
        .collect()
}

fn interpret_leader(value: Value) -> Result<LeaderInfo, String> {
    let mut leader = Entries::from_value("`leader`", value)?;
    let port = leader.required_u64("port")?;
    Ok(LeaderInfo {
        id: leader.required_u64("id")?,
        ip: leader.required_text("ip")?,
        port: u16::try_from(port).map_err(|_| format!("leader `port` {port} is over 65535"))?,
    })
}

/// Names, or (with `detail`) one map per topic.
fn interpret_topics(value: Value) -> Result<Outcome, String> {
    let Value::Array(items) = value else {
        return Err(format!("`topics` is not an array: it is {}", kind(&value)));
    };
    if !items.first().is_some_and(Value::is_map) {
        return items
            .into_iter()
            .map(|item| text("topics", item))
            .collect::<Result<_, _>>()
            .map(Outcome::Topics);
    }
    items
        .into_iter()
        .map(|item| {
            let mut topic = Entries::from_value("an item of `topics`", item)?;
            Ok(TopicDetail {
                name: topic.required_text("name")?,
                ready: topic.required_u64("ready")?,
                leased: topic.required_u64("leased")?,
                max_deliveries: topic.take_u64("max_deliveries")?,
                dead_letter: match topic.take("dead_letter") {
                    None | Some(Value::Nil) => None,
                    Some(value) => Some(text("dead_letter", value)?),
                },
                discarded: topic.required_u64("discarded")?,
            })
        })
        .collect::<Result<_, String>>()
        .map(Outcome::TopicDetails)
}

/// A str is text, a bin is binary, and (from JSON, which has no bytes) an array of byte
/// values is binary too.
fn interpret_payload(value: Value) -> Result<Payload, String> {
    match value {
        Value::String(_) => text("message", value).map(Payload::Text),
        Value::Binary(bytes) => Ok(Payload::Binary(bytes)),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_u64().and_then(|byte| u8::try_from(byte).ok()))
            .collect::<Option<Vec<u8>>>()
            .map(Payload::Binary)
            .ok_or_else(|| "`message` is an array but not of byte values".to_owned()),
        other => Err(format!(
            "`message` is neither a string nor bytes: it is {}",
            kind(&other)
        )),
    }
}

fn interpret_error(value: Value) -> Result<ErrorInfo, String> {
    let mut error = Entries::from_value("`error`", value)?;
    let code = error.required_text("code")?;
    let message = error.take_text("message")?.unwrap_or_default();
    Ok(match ErrorCode::parse(&code) {
        Some(code) => ErrorInfo::new(code, message),
        None => ErrorInfo::new(ErrorCode::Unspecified, format!("{code}: {message}")),
    })
}

fn interpret_status(mut entries: Entries) -> Result<StatusReport, String> {
    let peers = match entries.take("peers") {
        None | Some(Value::Nil) => Vec::new(),
        Some(Value::Array(peers)) => peers
            .into_iter()
            .map(interpret_peer)
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("`peers` is not an array: it is {}", kind(&other))),
    };
    Ok(StatusReport {
        role: entries.required_text("role")?,
        term: entries.required_u64("term")?,
        id: entries.take_u64("id")?.unwrap_or(0),
        leader: entries.take_u64("leader")?,
        commit_index: entries.take_u64("commit_index")?.unwrap_or(0),
        last_applied: entries.take_u64("last_applied")?.unwrap_or(0),
        last_log_index: entries.take_u64("last_log_index")?.unwrap_or(0),
        peers,
        fsync: entries.take_text("fsync")?.unwrap_or_default(),
        wal_syncs: entries.take_u64("wal_syncs")?.unwrap_or(0),
        wal_entries: entries.take_u64("wal_entries")?.unwrap_or(0),
        requests: entries.take_u64("requests")?.unwrap_or(0),
    })
}

fn interpret_stats(mut entries: Entries) -> Result<StatsReport, String> {
    let digest = entries.required_u64("digest")?;
    Ok(StatsReport {
        id: entries.required_u64("id")?,
        last_applied: entries.required_u64("last_applied")?,
        digest: u32::try_from(digest).map_err(|_| format!("`digest` {digest} is over 32 bits"))?,
        topic_count: entries.required_u64("topic_count")?,
        message_count: entries.required_u64("message_count")?,
        payload_bytes: entries.required_u64("payload_bytes")?,
        session_count: entries.required_u64("session_count")?,
        cluster_id: entries.take_u64("cluster_id")?.unwrap_or(0),
        members: match entries.take("members") {
            None | Some(Value::Nil) => Vec::new(),
            Some(members) => members_of(members)?,
        },
    })
}

fn interpret_peer(value: Value) -> Result<PeerProgress, String> {
    let mut peer = Entries::from_value("a peer", value)?;
    Ok(PeerProgress {
        id: peer.required_u64("id")?,
        match_index: peer.required_u64("match_index")?,
        next_index: peer.required_u64("next_index")?,
        state: peer.required_text("state")?,
    })
}
