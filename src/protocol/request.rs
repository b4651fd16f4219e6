//! Requests: bytes -> [`Request`] on the node (every request passes here, so it is the hot
//! path), and [`Request`] -> bytes in the client library.
//!
//! Decoding is two steps. First an encoding-specific parser pulls the known fields out
//! of the body as loosely typed [`Field`]s, borrowing from the body, and skips everything
//! else without allocating: the MessagePack side uses the zero-copy reader in `msgpack.rs`,
//! the JSON side a serde visitor on `serde_json` that ignores unknown values in place. Then
//! one shared validation turns the fields into a [`Request`], so both encodings give the
//! same verdicts and the same error messages. Strings are copied exactly once, from the body
//! into the owned `Request`. The two steps are public ([`parse_request`],
//! [`ParsedRequest::validate`]) because a keyed client port checks the client's rights in
//! between, on [`ParsedRequest::head`]: PROTOCOL.md §11 puts rights before anything else.
//!
//! Decisions where PROTOCOL.md is silent:
//! - A known key given twice is BAD_REQUEST: parsers disagree on which copy wins, and a
//!   request that means different things to different readers is not one to act on.
//! - `topic` and `message` are only looked at by the operations that use them (anywhere else
//!   they are ignored like unknown keys); `client_id`/`seq` are type-checked on every
//!   operation, because a broken idempotency key is a client bug worth reporting.
//! - A `client_id` over the limit is TOO_LARGE (every "over a limit" is), an empty one
//!   BAD_REQUEST. An empty `message` is allowed.
//! - `type` and `method` are case-sensitive, as written in §3.
//! - A MessagePack str that is not UTF-8 is BAD_REQUEST for the fields read as text; binary
//!   messages must use bin.
//! - Arrays are the only containers read (`messages`, `receipts`, and the test-only `fault`
//!   request's `drop_to`/`drop_from`): their first [`LIST_ITEMS_KEPT`] items as scalar
//!   fields, anything nested in them skipped; maps are skipped whole.
//! - Version 2 (PROTOCOL.md §8–§10): `lease_ms`, `wait_ms`, `max`, `messages` and `receipts`
//!   on a request without `"v": 2` are BAD_REQUEST whatever the operation, even when their
//!   value is invalid, so that a forgotten `v` never turns a lease into a pop. The same holds,
//!   on the operations that use them, for `max_deliveries`, `dead_letter` and `detail: true`,
//!   and for the methods ACK, NACK and TOUCH. `detail: false` and `null` settings mean
//!   absent. `receipt` is ignored where it is not used, like `topic` and `message`.
//! - A request that carries none of the version 2 fields decodes to the same operation as
//!   before (`Get`, `CreateTopic`, `ListTopics`), so the node handles it exactly as in
//!   version 1.
//! - `message` with `messages`, or `receipt` with `receipts`: BAD_REQUEST (one or the other).
//!   Lists: empty is BAD_REQUEST, over [`BATCH_ITEMS_MAX`] items TOO_LARGE; a batch's
//!   messages over [`BATCH_MESSAGE_BYTES_MAX`] in all TOO_LARGE, checked before any is
//!   copied. A receipt is any string up to [`RECEIPT_BYTES_MAX`] bytes (longer: TOO_LARGE);
//!   whether it names a lease is the queue's to say (`STALE_RECEIPT`).
//! - Range errors (`lease_ms` 0, `max` 1001, `max_deliveries` 0) are BAD_REQUEST: they are
//!   not sizes.
//!
//! Encoding (client side) writes maps with string keys and omits `v` when it is 1, so a
//! version-1 request looks exactly like one from an existing client.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::msgpack::{ReadError, Reader, Token};
use super::{
    detect_encoding, Encoding, ErrorCode, ErrorInfo, FetchOptions, Intent, Limits, MemberAddress,
    Operation, Payload, Receipts, Request, RequestError, SessionKey, TopicSettings,
    BATCH_ITEMS_MAX, BATCH_MESSAGE_BYTES_MAX, FAULT_NODE_IDS_MAX, LEASE_MS_MAX, RECEIPT_BYTES_MAX,
    WAIT_MS_MAX,
};

/// The protocol versions this node speaks.
pub const VERSIONS_SUPPORTED: [u8; 2] = [1, 2];

/// Decodes and validates one request body (PROTOCOL.md §2–§6). The encoding is decided by
/// the first non-blank byte (`{` means JSON) and returned, so the reply can use it; an error
/// carries it too. Never panics, allocates nothing before the body has proved to hold what
/// its headers claim, and skips unknown values without recursion.
pub fn decode_request(body: &[u8], limits: &Limits) -> Result<(Request, Encoding), RequestError> {
    let parsed = parse_request(body)?;
    let encoding = parsed.encoding;
    Ok((parsed.validate(limits)?, encoding))
}

/// The first half of [`decode_request`]: the body parsed into its known fields, none of them
/// validated yet. A body that is not one map (or object) of its encoding is refused here.
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest<'_>, RequestError> {
    let encoding = detect_encoding(body);
    let fields = match encoding {
        Encoding::MsgPack => parse_msgpack(body),
        Encoding::Json => parse_json(body),
    };
    match fields {
        Ok(fields) => Ok(ParsedRequest { fields, encoding }),
        Err(error) => Err(RequestError { encoding, error }),
    }
}

/// A request body parsed but not validated, borrowing from the body.
#[derive(Debug)]
pub struct ParsedRequest<'a> {
    fields: Fields<'a>,
    encoding: Encoding,
}

/// What a parsed request names before validation: its version (for the reply) and its
/// intent (for a rights check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub version: u8,
    pub intent: Intent<'a>,
}

impl<'a> ParsedRequest<'a> {
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The version, type, method and topic, read without validating anything else (a
    /// message of any length or type, a bad `client_id`, an over-long or empty topic): what
    /// a rights check needs, so it can come first (PROTOCOL.md §11). `None` for a request
    /// too malformed to name them: an unsupported `v`, `type` or `method` missing, not text,
    /// given twice or unknown, or a `topic` the operation needs missing, not text or given
    /// twice; [`ParsedRequest::validate`] then says what is wrong.
    pub fn head(&self) -> Option<RequestHead<'_>> {
        let fields = &self.fields;
        if matches!(
            fields.duplicate,
            Some(Key::Version | Key::Type | Key::Method | Key::Topic)
        ) {
            return None;
        }
        let version = validate_version(fields.version.clone(), self.encoding).ok()?;
        let topic = || field_text(&fields.topic);
        let text = field_text;
        let intent = match (text(&fields.kind)?, text(&fields.method)?) {
            ("topic", "PUT") => Intent::CreateTopic { topic: topic()? },
            ("topic", "GET") => Intent::ListTopics,
            ("message", "PUT") => Intent::Put { topic: topic()? },
            ("message", "GET" | "ACK" | "NACK" | "TOUCH") => Intent::Get { topic: topic()? },
            ("status", "GET") => Intent::Status,
            ("stats", "GET") => Intent::Stats,
            ("fault", "PUT") => Intent::Fault,
            ("member", "GET") => Intent::ListMembers,
            ("member", "PUT" | "DELETE") => Intent::ChangeMembers,
            _ => return None,
        };
        Some(RequestHead { version, intent })
    }

    /// The second half of [`decode_request`]: every field checked, [`Limits`] enforced.
    pub fn validate(self, limits: &Limits) -> Result<Request, RequestError> {
        let encoding = self.encoding;
        validate(self.fields, encoding, limits).map_err(|error| RequestError { encoding, error })
    }
}

/// Encodes a request as a client sends it: a map with string keys, without `v` when the
/// version is 1. A binary message cannot be carried by JSON: it is written as an array of
/// byte values, which the node refuses as BAD_REQUEST; use MessagePack for binary messages.
pub fn encode_request(request: &Request, encoding: Encoding) -> Vec<u8> {
    let mut wire = RequestWire {
        kind: "message",
        method: "GET",
        version: (request.version != 1).then_some(request.version),
        topic: None,
        message: None,
        client_id: request.session.as_ref().map(|key| key.client_id.as_str()),
        seq: request.session.as_ref().map(|key| key.seq),
        stop_zap_handler: None,
        drop_to: None,
        drop_from: None,
        lease_ms: None,
        wait_ms: None,
        max: None,
        messages: None,
        receipt: None,
        receipts: None,
        max_deliveries: None,
        dead_letter: None,
        detail: None,
        id: None,
        ip: None,
        port: None,
        internal_port: None,
        public_key: None,
    };
    match &request.operation {
        Operation::CreateTopic { topic } => {
            (wire.kind, wire.method, wire.topic) = ("topic", "PUT", Some(topic.as_str()));
        }
        Operation::CreateTopicWith { topic, settings } => {
            (wire.kind, wire.method, wire.topic) = ("topic", "PUT", Some(topic.as_str()));
            wire.max_deliveries = settings.max_deliveries;
            wire.dead_letter = settings.dead_letter.as_deref();
        }
        Operation::ListTopics => (wire.kind, wire.method) = ("topic", "GET"),
        Operation::ListTopicDetails => {
            (wire.kind, wire.method, wire.detail) = ("topic", "GET", Some(true));
        }
        Operation::Put { topic, message } => {
            (wire.method, wire.topic) = ("PUT", Some(topic.as_str()));
            wire.message = Some(PayloadWire(message));
        }
        Operation::PutBatch { topic, messages } => {
            (wire.method, wire.topic) = ("PUT", Some(topic.as_str()));
            wire.messages = Some(PayloadsWire(messages));
        }
        Operation::Get { topic } => wire.topic = Some(topic),
        Operation::Fetch { topic, options } => {
            wire.topic = Some(topic);
            wire.lease_ms = options.lease_ms;
            wire.wait_ms = options.wait_ms;
            wire.max = options.max;
        }
        Operation::Ack { topic, receipts } | Operation::Nack { topic, receipts } => {
            wire.method = match request.operation {
                Operation::Ack { .. } => "ACK",
                _ => "NACK",
            };
            wire.topic = Some(topic);
            match receipts {
                Receipts::One(receipt) => wire.receipt = Some(receipt),
                Receipts::Many(receipts) => wire.receipts = Some(receipts),
            }
        }
        Operation::Touch {
            topic,
            receipt,
            lease_ms,
        } => {
            (wire.method, wire.topic) = ("TOUCH", Some(topic.as_str()));
            wire.receipt = Some(receipt);
            wire.lease_ms = Some(*lease_ms);
        }
        Operation::Status => (wire.kind, wire.method) = ("status", "GET"),
        Operation::Stats => (wire.kind, wire.method) = ("stats", "GET"),
        Operation::Fault {
            drop_to,
            drop_from,
            stop_zap_handler,
        } => {
            (wire.kind, wire.method) = ("fault", "PUT");
            wire.drop_to = Some(drop_to);
            wire.drop_from = Some(drop_from);
            wire.stop_zap_handler = stop_zap_handler.then_some(true);
        }
        Operation::ListMembers => (wire.kind, wire.method) = ("member", "GET"),
        Operation::AddMember { member } => {
            (wire.kind, wire.method) = ("member", "PUT");
            wire.id = Some(member.id);
            wire.ip = Some(&member.ip);
            wire.port = Some(member.port);
            wire.internal_port = Some(member.internal_port);
            wire.public_key = member.public_key.as_deref();
        }
        Operation::RemoveMember { id } => {
            (wire.kind, wire.method, wire.id) = ("member", "DELETE", Some(*id));
        }
    }
    match encoding {
        Encoding::MsgPack => rmp_serde::to_vec_named(&wire)
            .expect("a map of strings, integers and bytes always encodes as MessagePack"),
        Encoding::Json => serde_json::to_vec(&wire)
            .expect("a map with string keys of strings, integers and bytes always encodes as JSON"),
    }
}

/// The request map on the wire; fields that are `None` are left out.
#[derive(Serialize)]
struct RequestWire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    method: &'static str,
    #[serde(rename = "v", skip_serializing_if = "Option::is_none")]
    version: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<PayloadWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_to: Option<&'a [u64]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_from: Option<&'a [u64]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_zap_handler: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<PayloadsWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipts: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_deliveries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    internal_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<&'a str>,
}

/// A list of payloads, each as [`PayloadWire`].
struct PayloadsWire<'a>(&'a [Payload]);

impl Serialize for PayloadsWire<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(PayloadWire))
    }
}

/// A payload as the protocol carries it: text as a string, binary as MessagePack bin (and,
/// in JSON, which has no bytes, as an array of byte values).
pub(super) struct PayloadWire<'a>(pub(super) &'a Payload);

impl Serialize for PayloadWire<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Payload::Text(text) => serializer.serialize_str(text),
            Payload::Binary(bytes) => serializer.serialize_bytes(bytes),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Step 1: pull the known fields out of the body.

/// The keys a request may carry. Anything else is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Version,
    Type,
    Method,
    Topic,
    Message,
    ClientId,
    Seq,
    DropTo,
    DropFrom,
    StopZapHandler,
    LeaseMs,
    WaitMs,
    Max,
    Messages,
    Receipt,
    Receipts,
    MaxDeliveries,
    DeadLetter,
    Detail,
    Id,
    Ip,
    Port,
    InternalPort,
    CurvePublic,
}

impl Key {
    fn from_bytes(name: &[u8]) -> Option<Key> {
        match name {
            b"v" => Some(Key::Version),
            b"type" => Some(Key::Type),
            b"method" => Some(Key::Method),
            b"topic" => Some(Key::Topic),
            b"message" => Some(Key::Message),
            b"client_id" => Some(Key::ClientId),
            b"seq" => Some(Key::Seq),
            b"drop_to" => Some(Key::DropTo),
            b"drop_from" => Some(Key::DropFrom),
            b"stop_zap_handler" => Some(Key::StopZapHandler),
            b"lease_ms" => Some(Key::LeaseMs),
            b"wait_ms" => Some(Key::WaitMs),
            b"max" => Some(Key::Max),
            b"messages" => Some(Key::Messages),
            b"receipt" => Some(Key::Receipt),
            b"receipts" => Some(Key::Receipts),
            b"max_deliveries" => Some(Key::MaxDeliveries),
            b"dead_letter" => Some(Key::DeadLetter),
            b"detail" => Some(Key::Detail),
            b"id" => Some(Key::Id),
            b"ip" => Some(Key::Ip),
            b"port" => Some(Key::Port),
            b"internal_port" => Some(Key::InternalPort),
            b"public_key" => Some(Key::CurvePublic),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Key::Version => "v",
            Key::Type => "type",
            Key::Method => "method",
            Key::Topic => "topic",
            Key::Message => "message",
            Key::ClientId => "client_id",
            Key::Seq => "seq",
            Key::DropTo => "drop_to",
            Key::DropFrom => "drop_from",
            Key::StopZapHandler => "stop_zap_handler",
            Key::LeaseMs => "lease_ms",
            Key::WaitMs => "wait_ms",
            Key::Max => "max",
            Key::Messages => "messages",
            Key::Receipt => "receipt",
            Key::Receipts => "receipts",
            Key::MaxDeliveries => "max_deliveries",
            Key::DeadLetter => "dead_letter",
            Key::Detail => "detail",
            Key::Id => "id",
            Key::Ip => "ip",
            Key::Port => "port",
            Key::InternalPort => "internal_port",
            Key::CurvePublic => "public_key",
        }
    }
}

/// A field's value, typed only as loosely as the wire types it. Containers are skipped
/// and remembered by kind only: no request field may be one.
#[derive(Clone, Debug, PartialEq)]
enum Field<'a> {
    Nil,
    Boolean(bool),
    Unsigned(u64),
    Negative(i64),
    Float(f64),
    Text(Cow<'a, str>),
    /// A MessagePack str whose bytes are not UTF-8.
    InvalidText,
    Binary(Cow<'a, [u8]>),
    /// An array: its first [`LIST_ITEMS_KEPT`] items (each a scalar, or [`Field::Array`] /
    /// [`Field::Map`] for a nested container, skipped), and how many it has.
    List {
        items: Vec<Field<'a>>,
        count: u64,
    },
    /// A container nested inside an array: skipped, remembered by kind only.
    Array,
    Map,
    Extension,
}

/// The most array items kept: one more than any list field may have, so that "too many" is
/// still seen. The rest are skipped, so an array costs at most this many `Field`s.
const LIST_ITEMS_KEPT: usize = BATCH_ITEMS_MAX + 1;

impl Field<'_> {
    /// "a string", "an integer"...: for "must be X, got Y" messages, in the words of the
    /// request's encoding.
    fn describe(&self, encoding: Encoding) -> &'static str {
        let json = encoding == Encoding::Json;
        match self {
            Field::Nil if json => "null",
            Field::Nil => "nil",
            Field::Boolean(_) => "a boolean",
            Field::Unsigned(_) => "an integer",
            Field::Negative(_) => "a negative integer",
            Field::Float(_) => "a floating-point number",
            Field::Text(_) => "a string",
            Field::InvalidText => "a string that is not valid UTF-8",
            Field::Binary(_) => "binary data",
            Field::List { .. } | Field::Array => "an array",
            Field::Map if json => "an object",
            Field::Map => "a map",
            Field::Extension => "a MessagePack extension",
        }
    }
}

/// The known fields of one body, before validation.
#[derive(Default, Debug)]
struct Fields<'a> {
    version: Option<Field<'a>>,
    kind: Option<Field<'a>>,
    method: Option<Field<'a>>,
    topic: Option<Field<'a>>,
    message: Option<Field<'a>>,
    client_id: Option<Field<'a>>,
    seq: Option<Field<'a>>,
    drop_to: Option<Field<'a>>,
    drop_from: Option<Field<'a>>,
    stop_zap_handler: Option<Field<'a>>,
    lease_ms: Option<Field<'a>>,
    wait_ms: Option<Field<'a>>,
    max: Option<Field<'a>>,
    messages: Option<Field<'a>>,
    receipt: Option<Field<'a>>,
    receipts: Option<Field<'a>>,
    max_deliveries: Option<Field<'a>>,
    dead_letter: Option<Field<'a>>,
    detail: Option<Field<'a>>,
    id: Option<Field<'a>>,
    ip: Option<Field<'a>>,
    port: Option<Field<'a>>,
    internal_port: Option<Field<'a>>,
    public_key: Option<Field<'a>>,
    /// The first known key that appeared twice.
    duplicate: Option<Key>,
}

impl<'a> Fields<'a> {
    fn slot(&mut self, key: Key) -> &mut Option<Field<'a>> {
        match key {
            Key::Version => &mut self.version,
            Key::Type => &mut self.kind,
            Key::Method => &mut self.method,
            Key::Topic => &mut self.topic,
            Key::Message => &mut self.message,
            Key::ClientId => &mut self.client_id,
            Key::Seq => &mut self.seq,
            Key::DropTo => &mut self.drop_to,
            Key::DropFrom => &mut self.drop_from,
            Key::StopZapHandler => &mut self.stop_zap_handler,
            Key::LeaseMs => &mut self.lease_ms,
            Key::WaitMs => &mut self.wait_ms,
            Key::Max => &mut self.max,
            Key::Messages => &mut self.messages,
            Key::Receipt => &mut self.receipt,
            Key::Receipts => &mut self.receipts,
            Key::MaxDeliveries => &mut self.max_deliveries,
            Key::DeadLetter => &mut self.dead_letter,
            Key::Detail => &mut self.detail,
            Key::Id => &mut self.id,
            Key::Ip => &mut self.ip,
            Key::Port => &mut self.port,
            Key::InternalPort => &mut self.internal_port,
            Key::CurvePublic => &mut self.public_key,
        }
    }

    fn insert(&mut self, key: Key, field: Field<'a>) {
        let slot = self.slot(key);
        if slot.is_some() {
            self.duplicate.get_or_insert(key);
        } else {
            *slot = Some(field);
        }
    }
}

/// A field's text, if it is text.
fn field_text<'b>(field: &'b Option<Field<'_>>) -> Option<&'b str> {
    match field {
        Some(Field::Text(text)) => Some(text.as_ref()),
        _ => None,
    }
}

fn bad_request(message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new(ErrorCode::BadRequest, message)
}

fn not_msgpack(error: ReadError) -> ErrorInfo {
    bad_request(format!("body is not valid MessagePack: {error}"))
}

/// Reads a MessagePack body: one map, nothing after it. Known keys are read as fields,
/// everything else (unknown keys, keys that are not strings, and their values) is skipped.
fn parse_msgpack(body: &[u8]) -> Result<Fields<'_>, ErrorInfo> {
    if body.is_empty() {
        return Err(bad_request(
            "body is empty: expected a MessagePack map or a JSON object",
        ));
    }
    let mut reader = Reader::new(body);
    let pairs = match reader.next_token().map_err(not_msgpack)? {
        Token::Map(pairs) => pairs,
        other => {
            let field = msgpack_field(&mut reader, other).map_err(not_msgpack)?;
            return Err(bad_request(format!(
                "body must be a MessagePack map or a JSON object, got {}",
                field.describe(Encoding::MsgPack)
            )));
        }
    };
    let mut fields = Fields::default();
    for _ in 0..pairs {
        let key_token = reader.next_token().map_err(not_msgpack)?;
        let key = match key_token {
            Token::Str(name) => Key::from_bytes(name),
            other => {
                reader.skip_contents(other).map_err(not_msgpack)?;
                None
            }
        };
        match key {
            Some(key) => {
                let value_token = reader.next_token().map_err(not_msgpack)?;
                let field = msgpack_field(&mut reader, value_token).map_err(not_msgpack)?;
                fields.insert(key, field);
            }
            None => reader.skip_values(1).map_err(not_msgpack)?,
        }
    }
    if reader.remaining_bytes() > 0 {
        return Err(bad_request(format!(
            "body is not valid MessagePack: {} bytes follow the request map (from byte {})",
            reader.remaining_bytes(),
            reader.position()
        )));
    }
    Ok(fields)
}

/// Turns a token into a field; an array's first items are read as fields too (see
/// [`Field::List`]), anything nested deeper is skipped.
fn msgpack_field<'a>(reader: &mut Reader<'a>, token: Token<'a>) -> Result<Field<'a>, ReadError> {
    if let Token::Array(items) = token {
        return msgpack_list(reader, items);
    }
    msgpack_scalar(reader, token)
}

/// A token as a field, a container skipped whole and remembered by kind.
fn msgpack_scalar<'a>(reader: &mut Reader<'a>, token: Token<'a>) -> Result<Field<'a>, ReadError> {
    reader.skip_contents(token)?;
    Ok(match token {
        Token::Nil => Field::Nil,
        Token::Boolean(value) => Field::Boolean(value),
        Token::Unsigned(value) => Field::Unsigned(value),
        Token::Negative(value) => Field::Negative(value),
        Token::Float(value) => Field::Float(value),
        Token::Str(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Field::Text(Cow::Borrowed(text)),
            Err(_) => Field::InvalidText,
        },
        Token::Bin(bytes) => Field::Binary(Cow::Borrowed(bytes)),
        Token::Array(_) => Field::Array,
        Token::Map(_) => Field::Map,
        Token::Extension => Field::Extension,
    })
}

/// Reads an array of `count` items: the first [`LIST_ITEMS_KEPT`] as fields, the rest
/// skipped. Each item read consumes at least one byte, so the list never holds more items
/// than the body has bytes, whatever the header claims.
fn msgpack_list<'a>(reader: &mut Reader<'a>, count: u32) -> Result<Field<'a>, ReadError> {
    let mut items = Vec::new();
    for read in 0..count {
        if items.len() == LIST_ITEMS_KEPT {
            reader.skip_values(u64::from(count - read))?;
            break;
        }
        let token = reader.next_token()?;
        items.push(msgpack_scalar(reader, token)?);
    }
    Ok(Field::List {
        items,
        count: u64::from(count),
    })
}

/// Reads a JSON body: one object, nothing but whitespace after it. serde_json skips
/// unknown values iteratively and borrows strings without escapes.
fn parse_json(body: &[u8]) -> Result<Fields<'_>, ErrorInfo> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let fields = deserializer
        .deserialize_map(FieldsVisitor)
        .and_then(|fields| deserializer.end().map(|()| fields))
        .map_err(|error| bad_request(format!("body is not valid JSON: {error}")))?;
    Ok(fields)
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(KeyName(key)) = map.next_key()? {
            match key {
                Some(key) => {
                    let field: Field<'de> = map.next_value()?;
                    fields.insert(key, field);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// A JSON key, matched without allocating; `None` for unknown keys.
struct KeyName(Option<Key>);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeyName, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = KeyName;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string key")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<KeyName, E> {
                Ok(KeyName(Key::from_bytes(name.as_bytes())))
            }

            fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<KeyName, E> {
                Ok(KeyName(Key::from_bytes(name)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Field<'de>, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Nil)
    }

    fn visit_none<E: de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Nil)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Field<'de>, E> {
        Ok(Field::Boolean(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Field<'de>, E> {
        Ok(Field::Unsigned(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Field<'de>, E> {
        Ok(match u64::try_from(value) {
            Ok(unsigned) => Field::Unsigned(unsigned),
            Err(_) => Field::Negative(value),
        })
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Field<'de>, E> {
        Ok(Field::Float(value))
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Field<'de>, E> {
        Ok(Field::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Field<'de>, E> {
        Ok(Field::Text(Cow::Owned(text)))
    }

    fn visit_borrowed_bytes<E: de::Error>(self, bytes: &'de [u8]) -> Result<Field<'de>, E> {
        Ok(Field::Binary(Cow::Borrowed(bytes)))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Field<'de>, E> {
        Ok(Field::Binary(Cow::Owned(bytes.to_vec())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
        let mut items = Vec::new();
        let mut count = 0u64;
        loop {
            if items.len() < LIST_ITEMS_KEPT {
                match seq.next_element::<ItemField<'de>>()? {
                    Some(ItemField(item)) => items.push(item),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            count += 1;
        }
        Ok(Field::List { items, count })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Map)
    }
}

/// One item of a JSON array: a scalar as a [`Field`], a nested container skipped whole
/// (like an unknown value) and remembered by kind.
struct ItemField<'a>(Field<'a>);

impl<'de> Deserialize<'de> for ItemField<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ItemField<'de>, D::Error> {
        struct ItemVisitor;

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = ItemField<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any value")
            }

            fn visit_unit<E: de::Error>(self) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_unit().map(ItemField)
            }

            fn visit_none<E: de::Error>(self) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_none().map(ItemField)
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_bool(value).map(ItemField)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_u64(value).map(ItemField)
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_i64(value).map(ItemField)
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_f64(value).map(ItemField)
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_borrowed_str(text).map(ItemField)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_str(text).map(ItemField)
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_string(text).map(ItemField)
            }

            fn visit_borrowed_bytes<E: de::Error>(
                self,
                bytes: &'de [u8],
            ) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_borrowed_bytes(bytes).map(ItemField)
            }

            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<ItemField<'de>, E> {
                FieldVisitor.visit_bytes(bytes).map(ItemField)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ItemField<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ItemField(Field::Array))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ItemField<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ItemField(Field::Map))
            }
        }

        deserializer.deserialize_any(ItemVisitor)
    }
}

// ---------------------------------------------------------------------------------------
// Step 2: validate the fields, the same way for both encodings.

/// The request's fields are checked in a fixed order (`v`, `type`, `method`, the fields
/// that need version 2, `topic`, the operation's other fields, `client_id`, `seq`) and the
/// first problem is reported.
fn validate(fields: Fields<'_>, encoding: Encoding, limits: &Limits) -> Result<Request, ErrorInfo> {
    if let Some(key) = fields.duplicate {
        return Err(bad_request(format!(
            "field `{}` appears more than once",
            key.name()
        )));
    }
    let version = validate_version(fields.version, encoding)?;
    let kind = required_text(Key::Type, fields.kind, encoding)?;
    let method = required_text(Key::Method, fields.method, encoding)?;
    // PROTOCOL.md §8: these need `"v": 2` on any request, so that a forgotten `v` never
    // turns a lease into a pop.
    if version < 2 {
        let version_2_only = [
            (Key::LeaseMs, fields.lease_ms.is_some()),
            (Key::WaitMs, fields.wait_ms.is_some()),
            (Key::Max, fields.max.is_some()),
            (Key::Messages, fields.messages.is_some()),
            (Key::Receipts, fields.receipts.is_some()),
        ];
        if let Some((key, _)) = version_2_only.iter().find(|(_, present)| *present) {
            return Err(needs_version_2(&format!("field `{}`", key.name())));
        }
    }
    let extended = version >= 2;
    let (operation, uses_session) = match (kind.as_ref(), method.as_ref()) {
        ("topic", "PUT") => {
            let topic = validate_topic(fields.topic, encoding, limits)?;
            let settings = validate_settings(
                &topic,
                fields.max_deliveries,
                fields.dead_letter,
                extended,
                encoding,
                limits,
            )?;
            let operation = if settings == TopicSettings::default() {
                Operation::CreateTopic { topic }
            } else {
                Operation::CreateTopicWith { topic, settings }
            };
            (operation, true)
        }
        ("topic", "GET") => match fields.detail {
            None | Some(Field::Boolean(false)) => (Operation::ListTopics, false),
            Some(Field::Boolean(true)) if extended => (Operation::ListTopicDetails, false),
            Some(Field::Boolean(true)) => return Err(needs_version_2("field `detail`")),
            Some(other) => return Err(wrong_type(Key::Detail, "a boolean", &other, encoding)),
        },
        ("message", "PUT") => {
            let topic = validate_topic(fields.topic, encoding, limits)?;
            match (fields.message, fields.messages) {
                (Some(_), Some(_)) => {
                    return Err(bad_request(
                        "fields `message` and `messages` exclude each other: send one",
                    ))
                }
                (message, None) => {
                    let message = validate_message(message, encoding, limits)?;
                    (Operation::Put { topic, message }, true)
                }
                (None, Some(messages)) => {
                    let messages = validate_messages(messages, encoding, limits)?;
                    (Operation::PutBatch { topic, messages }, true)
                }
            }
        }
        ("message", "GET") => {
            let topic = validate_topic(fields.topic, encoding, limits)?;
            let options = FetchOptions {
                lease_ms: validate_lease_ms(fields.lease_ms, encoding)?,
                wait_ms: validate_range(Key::WaitMs, fields.wait_ms, 0, WAIT_MS_MAX, encoding)?,
                max: validate_range(Key::Max, fields.max, 1, BATCH_ITEMS_MAX as u64, encoding)?
                    .map(|max| u32::try_from(max).expect("at most BATCH_ITEMS_MAX")),
            };
            let operation = if options == FetchOptions::default() {
                Operation::Get { topic }
            } else {
                Operation::Fetch { topic, options }
            };
            (operation, true)
        }
        ("message", "ACK" | "NACK" | "TOUCH") if !extended => {
            return Err(needs_version_2(&format!("method {method:?}")))
        }
        ("message", "ACK" | "NACK") => {
            let topic = validate_topic(fields.topic, encoding, limits)?;
            let receipts = match (fields.receipt, fields.receipts) {
                (Some(_), Some(_)) => {
                    return Err(bad_request(
                        "fields `receipt` and `receipts` exclude each other: send one",
                    ))
                }
                (None, None) => return Err(bad_request("missing field `receipt` (or `receipts`)")),
                (Some(receipt), None) => Receipts::One(validate_receipt(receipt, encoding)?),
                (None, Some(receipts)) => Receipts::Many(validate_receipts(receipts, encoding)?),
            };
            let operation = if method == "ACK" {
                Operation::Ack { topic, receipts }
            } else {
                Operation::Nack { topic, receipts }
            };
            (operation, true)
        }
        ("message", "TOUCH") => {
            let topic = validate_topic(fields.topic, encoding, limits)?;
            let Some(receipt) = fields.receipt else {
                return Err(bad_request("missing field `receipt`"));
            };
            let receipt = validate_receipt(receipt, encoding)?;
            let Some(lease_ms) = validate_lease_ms(fields.lease_ms, encoding)? else {
                return Err(bad_request("missing field `lease_ms`"));
            };
            (
                Operation::Touch {
                    topic,
                    receipt,
                    lease_ms,
                },
                true,
            )
        }
        ("status", "GET") => (Operation::Status, false),
        ("stats", "GET") => (Operation::Stats, false),
        ("fault", "PUT") => {
            let drop_to = validate_node_ids(Key::DropTo, fields.drop_to, encoding)?;
            let drop_from = validate_node_ids(Key::DropFrom, fields.drop_from, encoding)?;
            let stop_zap_handler = match fields.stop_zap_handler {
                None => false,
                Some(Field::Boolean(stop)) => stop,
                Some(other) => {
                    return Err(wrong_type(
                        Key::StopZapHandler,
                        "a boolean",
                        &other,
                        encoding,
                    ))
                }
            };
            (
                Operation::Fault {
                    drop_to,
                    drop_from,
                    stop_zap_handler,
                },
                false,
            )
        }
        ("member", "GET" | "PUT" | "DELETE") if !extended => {
            return Err(needs_version_2("type \"member\""))
        }
        ("member", "GET") => (Operation::ListMembers, false),
        ("member", "PUT") => {
            let id = validate_member_id(fields.id, encoding)?;
            let ip = required_text(Key::Ip, fields.ip, encoding)?;
            let ip = ip.trim();
            if ip.is_empty() {
                return Err(bad_request("field `ip` must not be empty"));
            }
            if ip.len() > MEMBER_HOST_BYTES_MAX {
                return Err(too_large("`ip`", ip.len(), MEMBER_HOST_BYTES_MAX));
            }
            let port = validate_port(Key::Port, fields.port, encoding)?;
            let internal_port = validate_port(Key::InternalPort, fields.internal_port, encoding)?;
            let public_key = match fields.public_key {
                None | Some(Field::Nil) => None,
                Some(Field::Text(key)) if key.len() == PUBLIC_KEY_Z85_CHARS => {
                    Some(key.into_owned())
                }
                Some(Field::Text(key)) => {
                    return Err(bad_request(format!(
                        "field `public_key` must be {PUBLIC_KEY_Z85_CHARS} characters of \
                         Z85, got {}",
                        key.len()
                    )))
                }
                Some(other) => {
                    return Err(wrong_type(Key::CurvePublic, "a string", &other, encoding))
                }
            };
            let member = MemberAddress {
                id,
                ip: ip.to_string(),
                port,
                internal_port,
                public_key,
            };
            (Operation::AddMember { member }, false)
        }
        ("member", "DELETE") => {
            let id = validate_member_id(fields.id, encoding)?;
            (Operation::RemoveMember { id }, false)
        }
        ("member", _) => {
            return Err(bad_request(format!(
                "unknown method {method:?} for type {kind:?}: expected \"GET\", \"PUT\" or \
                 \"DELETE\""
            )))
        }
        ("topic", _) => {
            return Err(bad_request(format!(
                "unknown method {method:?} for type {kind:?}: expected \"GET\" or \"PUT\""
            )))
        }
        ("message", _) => {
            return Err(bad_request(format!(
                "unknown method {method:?} for type {kind:?}: expected \"GET\", \"PUT\", \
                 \"ACK\", \"NACK\" or \"TOUCH\""
            )))
        }
        ("fault", _) => {
            return Err(bad_request(format!(
                "unknown method {method:?} for type {kind:?}: expected \"PUT\""
            )))
        }
        ("status" | "stats", _) => {
            return Err(bad_request(format!(
                "unknown method {method:?} for type {kind:?}: expected \"GET\""
            )))
        }
        _ => {
            return Err(bad_request(format!(
                "unknown type {kind:?}: expected \"topic\", \"message\", \"status\" or \
                 \"member\""
            )))
        }
    };
    let session = validate_session(fields.client_id, fields.seq, encoding, limits)?;
    Ok(Request {
        version,
        session: if uses_session { session } else { None },
        operation,
    })
}

/// The longest host name a `member PUT` may carry (DNS names are at most 253 bytes).
const MEMBER_HOST_BYTES_MAX: usize = 255;
/// A CURVE public key in Z85.
const PUBLIC_KEY_Z85_CHARS: usize = 40;

/// A member's `id`: required, an unsigned integer.
fn validate_member_id(field: Option<Field<'_>>, encoding: Encoding) -> Result<u64, ErrorInfo> {
    match field {
        Some(Field::Unsigned(id)) => Ok(id),
        Some(other) => Err(wrong_type(
            Key::Id,
            "a node id (an unsigned integer)",
            &other,
            encoding,
        )),
        None => Err(bad_request("missing field `id`")),
    }
}

/// A required port, 1 to 65535.
fn validate_port(key: Key, field: Option<Field<'_>>, encoding: Encoding) -> Result<u16, ErrorInfo> {
    if field.is_none() {
        return Err(bad_request(format!("missing field `{}`", key.name())));
    }
    let port = validate_range(key, field, 1, u64::from(u16::MAX), encoding)?
        .expect("present, checked above");
    Ok(u16::try_from(port).expect("at most 65535"))
}

fn needs_version_2(what: &str) -> ErrorInfo {
    bad_request(format!(
        "{what} needs \"v\": 2 (PROTOCOL.md §8-§10); without it the request would mean \
         something else"
    ))
}

/// An unsigned integer field within `min..=max`; absent is `None`.
fn validate_range(
    key: Key,
    field: Option<Field<'_>>,
    min: u64,
    max: u64,
    encoding: Encoding,
) -> Result<Option<u64>, ErrorInfo> {
    match field {
        None => Ok(None),
        Some(Field::Unsigned(value)) if (min..=max).contains(&value) => Ok(Some(value)),
        Some(Field::Unsigned(value)) => Err(bad_request(format!(
            "field `{}` is {value}: it must be between {min} and {max}",
            key.name()
        ))),
        Some(other) => Err(wrong_type(
            key,
            &format!("an integer between {min} and {max}"),
            &other,
            encoding,
        )),
    }
}

fn validate_lease_ms(
    field: Option<Field<'_>>,
    encoding: Encoding,
) -> Result<Option<u64>, ErrorInfo> {
    validate_range(Key::LeaseMs, field, 1, LEASE_MS_MAX, encoding)
}

/// `max_deliveries` (at least 1) and `dead_letter` (a topic name, not the topic itself) of a
/// topic PUT; `null` is the same as absent.
fn validate_settings(
    topic: &str,
    max_deliveries: Option<Field<'_>>,
    dead_letter: Option<Field<'_>>,
    extended: bool,
    encoding: Encoding,
    limits: &Limits,
) -> Result<TopicSettings, ErrorInfo> {
    let max_deliveries = max_deliveries.filter(|field| *field != Field::Nil);
    let dead_letter = dead_letter.filter(|field| *field != Field::Nil);
    if !extended {
        if max_deliveries.is_some() {
            return Err(needs_version_2("field `max_deliveries`"));
        }
        if dead_letter.is_some() {
            return Err(needs_version_2("field `dead_letter`"));
        }
    }
    let max_deliveries = validate_range(Key::MaxDeliveries, max_deliveries, 1, u64::MAX, encoding)?;
    let dead_letter = match dead_letter {
        None => None,
        Some(field) => {
            let name = validate_topic_name(Key::DeadLetter, Some(field), encoding, limits)?;
            if name == topic {
                return Err(bad_request(
                    "field `dead_letter` names the topic itself: a topic cannot be its own \
                     dead-letter topic",
                ));
            }
            Some(name)
        }
    };
    Ok(TopicSettings {
        max_deliveries,
        dead_letter,
    })
}

/// A batch PUT's `messages`: 1 to [`BATCH_ITEMS_MAX`] messages, each within the message
/// limit, at most [`BATCH_MESSAGE_BYTES_MAX`] in all.
fn validate_messages(
    field: Field<'_>,
    encoding: Encoding,
    limits: &Limits,
) -> Result<Vec<Payload>, ErrorInfo> {
    let Field::List { items, count } = field else {
        return Err(wrong_type(
            Key::Messages,
            "an array of messages",
            &field,
            encoding,
        ));
    };
    check_list_length(Key::Messages, count)?;
    let total_bytes: usize = items
        .iter()
        .map(|item| match item {
            Field::Text(text) => text.len(),
            Field::Binary(bytes) => bytes.len(),
            _ => 0,
        })
        .sum();
    if total_bytes > BATCH_MESSAGE_BYTES_MAX {
        return Err(too_large(
            "`messages` in all",
            total_bytes,
            BATCH_MESSAGE_BYTES_MAX,
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(position, item)| {
            validate_message(Some(item), encoding, limits).map_err(|error| ErrorInfo {
                message: format!("item {position} of {}", error.message),
                ..error
            })
        })
        .collect()
}

fn check_list_length(key: Key, count: u64) -> Result<(), ErrorInfo> {
    if count == 0 {
        return Err(bad_request(format!(
            "field `{}` must not be empty",
            key.name()
        )));
    }
    if count > BATCH_ITEMS_MAX as u64 {
        return Err(ErrorInfo::new(
            ErrorCode::TooLarge,
            format!(
                "field `{}` has {count} items; the limit is {BATCH_ITEMS_MAX}",
                key.name()
            ),
        ));
    }
    Ok(())
}

/// A receipt: any string (one never issued is answered `STALE_RECEIPT` by the queue), at
/// most [`RECEIPT_BYTES_MAX`] bytes.
fn validate_receipt(field: Field<'_>, encoding: Encoding) -> Result<String, ErrorInfo> {
    match field {
        Field::Text(text) if text.len() > RECEIPT_BYTES_MAX => {
            Err(too_large("`receipt`", text.len(), RECEIPT_BYTES_MAX))
        }
        Field::Text(text) => Ok(text.into_owned()),
        other => Err(wrong_type(Key::Receipt, "a string", &other, encoding)),
    }
}

fn validate_receipts(field: Field<'_>, encoding: Encoding) -> Result<Vec<String>, ErrorInfo> {
    let Field::List { items, count } = field else {
        return Err(wrong_type(
            Key::Receipts,
            "an array of strings",
            &field,
            encoding,
        ));
    };
    check_list_length(Key::Receipts, count)?;
    items
        .into_iter()
        .map(|item| match item {
            Field::Text(text) if text.len() > RECEIPT_BYTES_MAX => Err(too_large(
                "an item of `receipts`",
                text.len(),
                RECEIPT_BYTES_MAX,
            )),
            Field::Text(text) => Ok(text.into_owned()),
            other => Err(wrong_type(
                Key::Receipts,
                "an array of strings",
                &other,
                encoding,
            )),
        })
        .collect()
}

fn wrong_type(key: Key, expected: &str, field: &Field<'_>, encoding: Encoding) -> ErrorInfo {
    bad_request(format!(
        "field `{}` must be {expected}, got {}",
        key.name(),
        field.describe(encoding)
    ))
}

fn validate_version(field: Option<Field<'_>>, encoding: Encoding) -> Result<u8, ErrorInfo> {
    match field {
        None => Ok(1),
        Some(Field::Unsigned(version)) => match u8::try_from(version) {
            Ok(version) if VERSIONS_SUPPORTED.contains(&version) => Ok(version),
            _ => Err(bad_request(format!(
                "unsupported protocol version `v`: {version} (this node speaks 1 and 2)"
            ))),
        },
        Some(other) => Err(wrong_type(
            Key::Version,
            "the integer 1 or 2",
            &other,
            encoding,
        )),
    }
}

/// A field that must be present and a UTF-8 string.
fn required_text<'a>(
    key: Key,
    field: Option<Field<'a>>,
    encoding: Encoding,
) -> Result<Cow<'a, str>, ErrorInfo> {
    match field {
        Some(Field::Text(text)) => Ok(text),
        Some(other) => Err(wrong_type(key, "a string", &other, encoding)),
        None => Err(bad_request(format!("missing field `{}`", key.name()))),
    }
}

fn too_large(what: &str, length_bytes: usize, limit_bytes: usize) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::TooLarge,
        format!("{what} is {length_bytes} bytes; the limit is {limit_bytes}"),
    )
}

fn validate_topic(
    field: Option<Field<'_>>,
    encoding: Encoding,
    limits: &Limits,
) -> Result<String, ErrorInfo> {
    validate_topic_name(Key::Topic, field, encoding, limits)
}

/// A topic name (`topic`, `dead_letter`): 1 to `topic_bytes_max` bytes of UTF-8.
fn validate_topic_name(
    key: Key,
    field: Option<Field<'_>>,
    encoding: Encoding,
    limits: &Limits,
) -> Result<String, ErrorInfo> {
    let topic = required_text(key, field, encoding)?;
    if topic.is_empty() {
        return Err(bad_request(format!(
            "field `{}` must not be empty",
            key.name()
        )));
    }
    if topic.len() > limits.topic_bytes_max {
        return Err(too_large(
            &format!("`{}`", key.name()),
            topic.len(),
            limits.topic_bytes_max,
        ));
    }
    Ok(topic.into_owned())
}

fn validate_message(
    field: Option<Field<'_>>,
    encoding: Encoding,
    limits: &Limits,
) -> Result<Payload, ErrorInfo> {
    // Lengths are checked before the copy out of the body: an oversized message is never
    // copied.
    let message = match field {
        Some(Field::Text(text)) => {
            check_message_length(text.len(), limits)?;
            Payload::Text(text.into_owned())
        }
        Some(Field::Binary(bytes)) => {
            check_message_length(bytes.len(), limits)?;
            Payload::Binary(bytes.into_owned())
        }
        Some(other) => {
            let expected = match encoding {
                Encoding::MsgPack => "a string or binary data",
                Encoding::Json => {
                    "a string (JSON carries text only; send bytes as MessagePack bin)"
                }
            };
            return Err(wrong_type(Key::Message, expected, &other, encoding));
        }
        None => return Err(bad_request("missing field `message`")),
    };
    Ok(message)
}

fn check_message_length(length_bytes: usize, limits: &Limits) -> Result<(), ErrorInfo> {
    if length_bytes > limits.message_bytes_max {
        return Err(too_large(
            "`message`",
            length_bytes,
            limits.message_bytes_max,
        ));
    }
    Ok(())
}

/// A `fault` request's node list: absent means none. Sorted, without duplicates.
fn validate_node_ids(
    key: Key,
    field: Option<Field<'_>>,
    encoding: Encoding,
) -> Result<Vec<u64>, ErrorInfo> {
    let ids = match &field {
        None => return Ok(Vec::new()),
        Some(Field::List { items, count }) if items.len() as u64 == *count => {
            items.iter().try_fold(0u64, |ids, item| match item {
                Field::Unsigned(id) if *id < FAULT_NODE_IDS_MAX => Some(ids | 1 << id),
                _ => None,
            })
        }
        Some(_) => None,
    };
    match (ids, field) {
        (Some(ids), _) => Ok((0..FAULT_NODE_IDS_MAX)
            .filter(|id| ids & (1 << id) != 0)
            .collect()),
        (None, None) => Ok(Vec::new()),
        (None, Some(other)) => Err(wrong_type(
            key,
            "an array of node ids (integers below 64)",
            &other,
            encoding,
        )),
    }
}

fn validate_session(
    client_id: Option<Field<'_>>,
    seq: Option<Field<'_>>,
    encoding: Encoding,
    limits: &Limits,
) -> Result<Option<SessionKey>, ErrorInfo> {
    let client_id = match client_id {
        None => None,
        Some(Field::Text(text)) => {
            if text.is_empty() {
                return Err(bad_request("field `client_id` must not be empty"));
            }
            if text.len() > limits.client_id_bytes_max {
                return Err(too_large(
                    "`client_id`",
                    text.len(),
                    limits.client_id_bytes_max,
                ));
            }
            Some(text)
        }
        Some(other) => return Err(wrong_type(Key::ClientId, "a string", &other, encoding)),
    };
    let seq = match seq {
        None => None,
        Some(Field::Unsigned(seq)) => Some(seq),
        Some(other) => {
            return Err(wrong_type(
                Key::Seq,
                "an unsigned integer",
                &other,
                encoding,
            ))
        }
    };
    match (client_id, seq) {
        (Some(client_id), Some(seq)) => Ok(Some(SessionKey {
            client_id: client_id.into_owned(),
            seq,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad_request(
            "field `client_id` needs `seq` with it (they form one idempotency key)",
        )),
        (None, Some(_)) => Err(bad_request(
            "field `seq` needs `client_id` with it (they form one idempotency key)",
        )),
    }
}
