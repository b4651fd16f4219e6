//! Requests: bytes -> [`Request`] on the node (every request passes here, so it is the hot
//! path), and [`Request`] -> bytes in the client library.
//!
//! Decoding is two steps. First an encoding-specific parser pulls the seven known fields out
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
//! - The test-only `fault` request names nodes in arrays (`drop_to`, `drop_from`). Arrays are
//!   the only containers read: into a 64-bit set when every item is an id below
//!   [`FAULT_NODE_IDS_MAX`], without allocating; any other array is skipped as before.
//!
//! Encoding (client side) writes maps with string keys and omits `v` when it is 1, so a
//! version-1 request looks exactly like one from an existing client.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::msgpack::{ReadError, Reader, Token};
use super::{
    detect_encoding, Encoding, ErrorCode, ErrorInfo, Intent, Limits, Operation, Payload, Request,
    RequestError, SessionKey, FAULT_NODE_IDS_MAX,
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
            ("message", "GET") => Intent::Get { topic: topic()? },
            ("status", "GET") => Intent::Status,
            ("stats", "GET") => Intent::Stats,
            ("fault", "PUT") => Intent::Fault,
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
    let (kind, method, topic, message) = match &request.operation {
        Operation::CreateTopic { topic } => ("topic", "PUT", Some(topic.as_str()), None),
        Operation::ListTopics => ("topic", "GET", None, None),
        Operation::Put { topic, message } => (
            "message",
            "PUT",
            Some(topic.as_str()),
            Some(PayloadWire(message)),
        ),
        Operation::Get { topic } => ("message", "GET", Some(topic.as_str()), None),
        Operation::Status => ("status", "GET", None, None),
        Operation::Stats => ("stats", "GET", None, None),
        Operation::Fault { .. } => ("fault", "PUT", None, None),
    };
    let (drop_to, drop_from, stop_zap_handler) = match &request.operation {
        Operation::Fault {
            drop_to,
            drop_from,
            stop_zap_handler,
        } => (
            Some(drop_to.as_slice()),
            Some(drop_from.as_slice()),
            stop_zap_handler.then_some(true),
        ),
        _ => (None, None, None),
    };
    let wire = RequestWire {
        kind,
        method,
        version: (request.version != 1).then_some(request.version),
        topic,
        message,
        client_id: request.session.as_ref().map(|key| key.client_id.as_str()),
        seq: request.session.as_ref().map(|key| key.seq),
        drop_to,
        drop_from,
        stop_zap_handler,
    };
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
    /// An array of node ids, each below [`FAULT_NODE_IDS_MAX`], as a set (bit `i` = id `i`).
    NodeIds(u64),
    /// Any other array.
    Array,
    Map,
    Extension,
}

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
            Field::NodeIds(_) | Field::Array => "an array",
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

/// Turns a token into a field, skipping a container's items (an array's are read as node
/// ids while they are ids).
fn msgpack_field<'a>(reader: &mut Reader<'a>, token: Token<'a>) -> Result<Field<'a>, ReadError> {
    if let Token::Array(items) = token {
        return msgpack_node_ids(reader, items);
    }
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

/// Reads an array's `items` as a set of node ids; at the first item that is not one, skips
/// the rest. Each item read consumes at least one byte, so a huge claimed count ends at the
/// end of the body.
fn msgpack_node_ids<'a>(reader: &mut Reader<'a>, items: u32) -> Result<Field<'a>, ReadError> {
    let mut ids = 0u64;
    for read in 0..items {
        match reader.next_token()? {
            Token::Unsigned(id) if id < FAULT_NODE_IDS_MAX => ids |= 1 << id,
            other => {
                reader.skip_contents(other)?;
                reader.skip_values(u64::from(items - read - 1))?;
                return Ok(Field::Array);
            }
        }
    }
    Ok(Field::NodeIds(ids))
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
        let mut ids = Some(0u64);
        while let Some(NodeIdItem(item)) = seq.next_element()? {
            ids = match (ids, item) {
                (Some(ids), Some(id)) => Some(ids | 1 << id),
                _ => None,
            };
        }
        Ok(ids.map_or(Field::Array, Field::NodeIds))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Map)
    }
}

/// One item of a JSON array: `Some(id)` for a node id below [`FAULT_NODE_IDS_MAX`], `None`
/// for anything else (skipped whole, like an unknown value).
struct NodeIdItem(Option<u64>);

impl<'de> Deserialize<'de> for NodeIdItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeIdItem, D::Error> {
        struct ItemVisitor;

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = NodeIdItem;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any value")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<NodeIdItem, E> {
                Ok(NodeIdItem((value < FAULT_NODE_IDS_MAX).then_some(value)))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<NodeIdItem, E> {
                Ok(NodeIdItem(
                    u64::try_from(value)
                        .ok()
                        .filter(|id| *id < FAULT_NODE_IDS_MAX),
                ))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NodeIdItem, E> {
                Ok(NodeIdItem(None))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NodeIdItem, E> {
                Ok(NodeIdItem(None))
            }

            fn visit_unit<E: de::Error>(self) -> Result<NodeIdItem, E> {
                Ok(NodeIdItem(None))
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<NodeIdItem, E> {
                Ok(NodeIdItem(None))
            }

            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<NodeIdItem, E> {
                Ok(NodeIdItem(None))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeIdItem, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NodeIdItem(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeIdItem, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NodeIdItem(None))
            }
        }

        deserializer.deserialize_any(ItemVisitor)
    }
}

// ---------------------------------------------------------------------------------------
// Step 2: validate the fields, the same way for both encodings.

/// The request's fields are checked in a fixed order (`v`, `type`, `method`, `topic`,
/// `message`, `client_id`, `seq`) and the first problem is reported.
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
    let (operation, uses_session) = match (kind.as_ref(), method.as_ref()) {
        ("topic", "PUT") => {
            let topic = validate_topic(fields.topic, encoding, limits)?;
            (Operation::CreateTopic { topic }, true)
        }
        ("topic", "GET") => (Operation::ListTopics, false),
        ("message", "PUT") => {
            let topic = validate_topic(fields.topic, encoding, limits)?;
            let message = validate_message(fields.message, encoding, limits)?;
            (Operation::Put { topic, message }, true)
        }
        ("message", "GET") => {
            let topic = validate_topic(fields.topic, encoding, limits)?;
            (Operation::Get { topic }, true)
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
        ("topic" | "message", _) => {
            return Err(bad_request(format!(
                "unknown method {method:?} for type {kind:?}: expected \"GET\" or \"PUT\""
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
                "unknown type {kind:?}: expected \"topic\", \"message\" or \"status\""
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
    let topic = required_text(Key::Topic, field, encoding)?;
    if topic.is_empty() {
        return Err(bad_request("field `topic` must not be empty"));
    }
    if topic.len() > limits.topic_bytes_max {
        return Err(too_large("`topic`", topic.len(), limits.topic_bytes_max));
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
    match field {
        None => Ok(Vec::new()),
        Some(Field::NodeIds(ids)) => Ok((0..FAULT_NODE_IDS_MAX)
            .filter(|id| ids & (1 << id) != 0)
            .collect()),
        Some(other) => Err(wrong_type(
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
