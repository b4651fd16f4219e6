//! Tests of the wire codec as its users see it: request bodies in, `Request`s or errors out;
//! replies out, compared whole as generic values (so an extra key fails the test); round
//! trips and no-panic properties over generated input.

use proptest::prelude::*;
use rmpv::Value;

use super::*;

// ---------------------------------------------------------------------------------------
// Helpers.

fn msgpack(value: &Value) -> Vec<u8> {
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, value).expect("writing to a Vec cannot fail");
    body
}

/// A map with string keys, in the given order.
fn map(pairs: &[(&str, Value)]) -> Value {
    Value::Map(
        pairs
            .iter()
            .map(|(key, value)| (Value::from(*key), value.clone()))
            .collect(),
    )
}

fn text(value: &str) -> Value {
    Value::from(value)
}

/// The JSON twin of a MessagePack value with string keys and no binaries.
fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(value) => serde_json::Value::Bool(*value),
        Value::Integer(integer) => match (integer.as_u64(), integer.as_i64()) {
            (Some(unsigned), _) => serde_json::Value::from(unsigned),
            (None, Some(signed)) => serde_json::Value::from(signed),
            (None, None) => unreachable!("an rmpv integer is a u64 or an i64"),
        },
        Value::F32(float) => serde_json::Value::from(f64::from(*float)),
        Value::F64(float) => serde_json::Value::from(*float),
        Value::String(text) => serde_json::Value::from(text.as_str().expect("UTF-8 in tests")),
        Value::Binary(bytes) => serde_json::Value::from(bytes.clone()),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(pairs) => serde_json::Value::Object(
            pairs
                .iter()
                .map(|(key, value)| {
                    let key = key.as_str().expect("string keys in tests").to_owned();
                    (key, to_json(value))
                })
                .collect(),
        ),
        Value::Ext(..) => panic!("no JSON twin for an extension"),
    }
}

fn json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(&to_json(value)).expect("a JSON value always encodes")
}

/// Reads a whole MessagePack body back as a generic value; nothing may follow it.
fn read_msgpack(body: &[u8]) -> Value {
    let mut rest = body;
    let value = rmpv::decode::read_value(&mut rest).expect("the codec wrote valid MessagePack");
    assert!(rest.is_empty(), "{} bytes follow the value", rest.len());
    value
}

fn read_json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("the codec wrote valid JSON")
}

/// Small limits so that TOO_LARGE cases stay small.
fn tiny_limits() -> Limits {
    Limits {
        topic_bytes_max: 8,
        message_bytes_max: 16,
        client_id_bytes_max: 4,
    }
}

fn request(version: u8, session: Option<(&str, u64)>, operation: Operation) -> Request {
    Request {
        version,
        session: session.map(|(client_id, seq)| SessionKey {
            client_id: client_id.to_owned(),
            seq,
        }),
        operation,
    }
}

fn create_topic(topic: &str) -> Operation {
    Operation::CreateTopic {
        topic: topic.to_owned(),
    }
}

fn put(topic: &str, message: Payload) -> Operation {
    Operation::Put {
        topic: topic.to_owned(),
        message,
    }
}

fn get(topic: &str) -> Operation {
    Operation::Get {
        topic: topic.to_owned(),
    }
}

fn text_payload(text: &str) -> Payload {
    Payload::Text(text.to_owned())
}

// ---------------------------------------------------------------------------------------
// Encoding detection.

#[test]
fn encoding_is_json_exactly_when_the_first_non_blank_byte_is_a_brace() {
    let cases: [(&[u8], Encoding); 9] = [
        (b"{}", Encoding::Json),
        (b" \t\r\n{", Encoding::Json),
        (b"", Encoding::MsgPack),
        (b"   ", Encoding::MsgPack),
        (b"[{}]", Encoding::MsgPack),
        (&[0x81, 0xa1, b'v', 0x01], Encoding::MsgPack),
        // A form feed or a BOM is not JSON whitespace.
        (b"\x0c{}", Encoding::MsgPack),
        (b"\xef\xbb\xbf{}", Encoding::MsgPack),
        (b"x{", Encoding::MsgPack),
    ];
    for (number, (body, expected)) in cases.into_iter().enumerate() {
        assert_eq!(detect_encoding(body), expected, "case {number}: {body:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Requests that must be accepted, in both encodings.

#[test]
fn valid_requests_decode_in_both_encodings() {
    let limits = tiny_limits();
    let nested = Value::Array(vec![map(&[("a", Value::Array(vec![Value::Nil]))])]);
    let cases: Vec<(&str, Value, Request)> = vec![
        (
            "topic PUT",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
            ]),
            request(1, None, create_topic("t")),
        ),
        (
            "topic GET",
            map(&[("type", text("topic")), ("method", text("GET"))]),
            request(1, None, Operation::ListTopics),
        ),
        (
            "message PUT",
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("message", text("hello")),
            ]),
            request(1, None, put("t", text_payload("hello"))),
        ),
        (
            "message GET",
            map(&[
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", text("t")),
            ]),
            request(1, None, get("t")),
        ),
        (
            "status GET",
            map(&[("type", text("status")), ("method", text("GET"))]),
            request(1, None, Operation::Status),
        ),
        (
            "explicit v 1",
            map(&[
                ("v", Value::from(1)),
                ("type", text("status")),
                ("method", text("GET")),
            ]),
            request(1, None, Operation::Status),
        ),
        (
            "v 2",
            map(&[
                ("type", text("status")),
                ("method", text("GET")),
                ("v", Value::from(2)),
            ]),
            request(2, None, Operation::Status),
        ),
        (
            "session on topic PUT",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("client_id", text("c1")),
                ("seq", Value::from(7)),
            ]),
            request(1, Some(("c1", 7)), create_topic("t")),
        ),
        (
            "session on message PUT, seq u64::MAX, v 2",
            map(&[
                ("v", Value::from(2)),
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("message", text("m")),
                ("client_id", text("c")),
                ("seq", Value::from(u64::MAX)),
            ]),
            request(2, Some(("c", u64::MAX)), put("t", text_payload("m"))),
        ),
        (
            "session on message GET, seq 0",
            map(&[
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", text("t")),
                ("client_id", text("c")),
                ("seq", Value::from(0)),
            ]),
            request(1, Some(("c", 0)), get("t")),
        ),
        (
            "session checked but dropped on topic GET",
            map(&[
                ("type", text("topic")),
                ("method", text("GET")),
                ("client_id", text("c")),
                ("seq", Value::from(1)),
            ]),
            request(1, None, Operation::ListTopics),
        ),
        (
            "session checked but dropped on status",
            map(&[
                ("type", text("status")),
                ("method", text("GET")),
                ("client_id", text("c")),
                ("seq", Value::from(1)),
            ]),
            request(1, None, Operation::Status),
        ),
        (
            "unknown keys ignored, however nested",
            map(&[
                ("type", text("topic")),
                ("method", text("GET")),
                ("extra", nested.clone()),
                ("V", text("not v")),
                ("Type", Value::from(3)),
            ]),
            request(1, None, Operation::ListTopics),
        ),
        (
            "fields an operation does not use are ignored",
            map(&[
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", text("t")),
                ("message", nested),
            ]),
            request(1, None, get("t")),
        ),
        (
            "empty message, multibyte topic at the limit",
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("é€€")),
                ("message", text("")),
            ]),
            request(1, None, put("é€€", text_payload(""))),
        ),
        (
            "message and client id at their limits",
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("message", text("0123456789abcdef")),
                ("client_id", text("abcd")),
                ("seq", Value::from(1)),
            ]),
            request(
                1,
                Some(("abcd", 1)),
                put("t", text_payload("0123456789abcdef")),
            ),
        ),
    ];
    for (name, body, expected) in cases {
        for (encoding, bytes) in [
            (Encoding::MsgPack, msgpack(&body)),
            (Encoding::Json, json(&body)),
        ] {
            assert_eq!(
                decode_request(&bytes, &limits),
                Ok((expected.clone(), encoding)),
                "case {name:?} in {encoding}"
            );
        }
    }
}

#[test]
fn valid_requests_specific_to_messagepack() {
    let limits = tiny_limits();
    let cases: Vec<(&str, Vec<u8>, Request)> = vec![
        (
            "binary message",
            msgpack(&map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("message", Value::Binary(vec![0, 159, 255])),
            ])),
            request(1, None, put("t", Payload::Binary(vec![0, 159, 255]))),
        ),
        (
            "binary message at the limit",
            msgpack(&map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("message", Value::Binary(vec![1; 16])),
            ])),
            request(1, None, put("t", Payload::Binary(vec![1; 16]))),
        ),
        (
            "keys that are not strings are ignored, values and all",
            msgpack(&Value::Map(vec![
                (Value::from(1), text("x")),
                (Value::Nil, Value::Nil),
                (Value::Binary(b"type".to_vec()), text("message")),
                (
                    Value::Array(vec![text("type")]),
                    Value::Array(vec![Value::Nil; 3]),
                ),
                (map(&[("type", text("topic"))]), map(&[("a", Value::Nil)])),
                (text("type"), text("status")),
                (Value::Ext(3, vec![1, 2]), Value::F64(1.0)),
                (text("method"), text("GET")),
            ])),
            request(1, None, Operation::Status),
        ),
        (
            "v and seq written with signed-integer markers",
            {
                // {"v": int8 2, "type": "topic", "method": "PUT", "topic": "t",
                //  "client_id": "c", "seq": int64 9}
                let mut body = vec![0x86, 0xa1, b'v', 0xd0, 0x02];
                body.extend(msgpack(&text("type")));
                body.extend(msgpack(&text("topic")));
                body.extend(msgpack(&text("method")));
                body.extend(msgpack(&text("PUT")));
                body.extend(msgpack(&text("topic")));
                body.extend(msgpack(&text("t")));
                body.extend(msgpack(&text("client_id")));
                body.extend(msgpack(&text("c")));
                body.extend(msgpack(&text("seq")));
                body.extend([0xd3, 0, 0, 0, 0, 0, 0, 0, 9]);
                body
            },
            request(2, Some(("c", 9)), create_topic("t")),
        ),
        (
            "an unknown key nested a million levels deep",
            {
                let mut body = vec![0x83];
                body.extend(msgpack(&text("type")));
                body.extend(msgpack(&text("status")));
                body.extend(msgpack(&text("deep")));
                body.extend(std::iter::repeat_n(0x91, 1_000_000));
                body.push(0xc0);
                body.extend(msgpack(&text("method")));
                body.extend(msgpack(&text("GET")));
                body
            },
            request(1, None, Operation::Status),
        ),
    ];
    for (name, body, expected) in cases {
        assert_eq!(
            decode_request(&body, &limits),
            Ok((expected, Encoding::MsgPack)),
            "case {name:?}"
        );
    }
}

#[test]
fn valid_requests_specific_to_json() {
    let limits = tiny_limits();
    let deep = format!(
        r#"{{"type": "status", "deep": {}{}, "method": "GET"}}"#,
        "[".repeat(1_000_000),
        "]".repeat(1_000_000)
    );
    let cases: Vec<(&str, Vec<u8>, Request)> = vec![
        (
            "leading and trailing whitespace, escapes in strings and keys",
            b" \r\n\t{\"typ\\u0065\": \"topic\", \"method\": \"PUT\", \"topic\": \"\\u00e9\\n\"} \n"
                .to_vec(),
            request(1, None, create_topic("é\n")),
        ),
        (
            "non-ASCII UTF-8 message",
            r#"{"type":"message","method":"PUT","topic":"t","message":"日本語"}"#.into(),
            request(1, None, put("t", text_payload("日本語"))),
        ),
        (
            "an unknown key nested a million levels deep",
            deep.into_bytes(),
            request(1, None, Operation::Status),
        ),
    ];
    for (name, body, expected) in cases {
        assert_eq!(
            decode_request(&body, &limits),
            Ok((expected, Encoding::Json)),
            "case {name:?}"
        );
    }
}

#[test]
fn default_limits_are_255_byte_topics_and_1_mib_messages() {
    let limits = Limits::default();
    let put_body = |topic: &str, message: Value| {
        msgpack(&map(&[
            ("type", text("message")),
            ("method", text("PUT")),
            ("topic", text(topic)),
            ("message", message),
        ]))
    };
    let topic_255 = "t".repeat(255);
    let mib = 1024 * 1024;
    let accepted = [
        put_body(&topic_255, text("m")),
        put_body("t", Value::Binary(vec![0; mib])),
        put_body("t", text(&"m".repeat(mib))),
    ];
    for (number, body) in accepted.iter().enumerate() {
        assert!(
            decode_request(body, &limits).is_ok(),
            "accepted case {number}"
        );
    }
    let refused = [
        put_body(&"t".repeat(256), text("m")),
        put_body("t", Value::Binary(vec![0; mib + 1])),
        put_body("t", text(&"m".repeat(mib + 1))),
    ];
    for (number, body) in refused.iter().enumerate() {
        let code = decode_request(body, &limits).map_err(|error| error.error.code);
        assert_eq!(code, Err(ErrorCode::TooLarge), "refused case {number}");
    }
}

// The test-only `fault` request (the node refuses it unless started with
// `--fault-injection`; here only its decoding).

fn fault(drop_to: &[u64], drop_from: &[u64]) -> Operation {
    Operation::Fault {
        drop_to: drop_to.to_vec(),
        drop_from: drop_from.to_vec(),
        stop_zap_handler: false,
    }
}

fn ids(ids: &[u64]) -> Value {
    Value::Array(ids.iter().map(|id| Value::from(*id)).collect())
}

#[test]
fn fault_requests_decode_node_id_sets_in_both_encodings() {
    let fault_put = |extra: &[(&str, Value)]| {
        let mut pairs = vec![("type", text("fault")), ("method", text("PUT"))];
        pairs.extend(extra.iter().cloned());
        map(&pairs)
    };
    let cases: Vec<(&str, Value, Operation)> = vec![
        ("no lists: heal", fault_put(&[]), fault(&[], &[])),
        (
            "empty lists",
            fault_put(&[("drop_to", ids(&[])), ("drop_from", ids(&[]))]),
            fault(&[], &[]),
        ),
        (
            "sorted, duplicates folded",
            fault_put(&[("drop_to", ids(&[4, 0, 4, 63])), ("drop_from", ids(&[2]))]),
            fault(&[0, 4, 63], &[2]),
        ),
        (
            "one direction only",
            fault_put(&[("drop_from", ids(&[1, 2]))]),
            fault(&[], &[1, 2]),
        ),
        (
            "a session is ignored",
            fault_put(&[
                ("drop_to", ids(&[1])),
                ("client_id", text("c")),
                ("seq", Value::from(3)),
            ]),
            fault(&[1], &[]),
        ),
        (
            "the ZAP handler stopped",
            fault_put(&[("stop_zap_handler", Value::from(true))]),
            Operation::Fault {
                drop_to: Vec::new(),
                drop_from: Vec::new(),
                stop_zap_handler: true,
            },
        ),
        (
            "the ZAP handler left alone",
            fault_put(&[("stop_zap_handler", Value::from(false))]),
            fault(&[], &[]),
        ),
    ];
    for (name, body, expected) in cases {
        for (encoding, bytes) in [
            (Encoding::MsgPack, msgpack(&body)),
            (Encoding::Json, json(&body)),
        ] {
            assert_eq!(
                decode_request(&bytes, &tiny_limits()),
                Ok((request(1, None, expected.clone()), encoding)),
                "case {name:?} in {encoding}"
            );
        }
    }
}

#[test]
fn fault_requests_with_bad_node_lists_are_refused_in_both_encodings() {
    let fault_put = |key: &str, value: Value| {
        map(&[
            ("type", text("fault")),
            ("method", text("PUT")),
            (key, value),
        ])
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "id 64",
            fault_put("drop_to", ids(&[1, 64])),
            "field `drop_to` must be an array of node ids (integers below 64), got an array",
        ),
        (
            "a string item",
            fault_put("drop_from", Value::Array(vec![Value::from(1), text("2")])),
            "field `drop_from` must be an array of node ids",
        ),
        (
            "a nested array",
            fault_put("drop_to", Value::Array(vec![ids(&[1]), Value::from(2)])),
            "field `drop_to` must be an array of node ids",
        ),
        (
            "a negative id",
            fault_put("drop_to", Value::Array(vec![Value::from(-1)])),
            "field `drop_to` must be an array of node ids",
        ),
        (
            "not an array",
            fault_put("drop_to", Value::from(1)),
            "field `drop_to` must be an array of node ids (integers below 64), got an integer",
        ),
        (
            "stop_zap_handler not a boolean",
            fault_put("stop_zap_handler", Value::from(1)),
            "field `stop_zap_handler` must be a boolean, got an integer",
        ),
        (
            "GET",
            map(&[("type", text("fault")), ("method", text("GET"))]),
            "unknown method \"GET\" for type \"fault\": expected \"PUT\"",
        ),
    ];
    for (name, body, needle) in cases {
        assert_refused(
            name,
            &msgpack(&body),
            Encoding::MsgPack,
            ErrorCode::BadRequest,
            needle,
        );
        assert_refused(
            name,
            &json(&body),
            Encoding::Json,
            ErrorCode::BadRequest,
            needle,
        );
    }
}

#[test]
fn a_node_id_array_elsewhere_is_still_just_an_array() {
    let body = map(&[
        ("type", text("topic")),
        ("method", text("PUT")),
        ("topic", ids(&[1, 2])),
    ]);
    for (encoding, bytes) in [
        (Encoding::MsgPack, msgpack(&body)),
        (Encoding::Json, json(&body)),
    ] {
        assert_refused(
            "topic as ids",
            &bytes,
            encoding,
            ErrorCode::BadRequest,
            "field `topic` must be a string, got an array",
        );
    }
    // An array claiming more items than the body holds ends at the body's end.
    let mut truncated = msgpack(&map(&[("type", text("fault")), ("method", text("PUT"))]));
    truncated[0] += 1; // One more pair: `drop_to` and an array of 2^32-1 ids.
    truncated.extend_from_slice(&[0xa7]);
    truncated.extend_from_slice(b"drop_to");
    truncated.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02]);
    assert_refused(
        "huge array",
        &truncated,
        Encoding::MsgPack,
        ErrorCode::BadRequest,
        "not valid MessagePack",
    );
}

// ---------------------------------------------------------------------------------------
// Bad input (PROTOCOL.md §6): every case with its code and a message naming the problem.

fn assert_refused(name: &str, body: &[u8], encoding: Encoding, code: ErrorCode, needle: &str) {
    match decode_request(body, &tiny_limits()) {
        Ok(decoded) => panic!("case {name:?} in {encoding}: accepted as {decoded:?}"),
        Err(error) => {
            assert_eq!(error.encoding, encoding, "case {name:?}: encoding");
            assert_eq!(
                error.error.code, code,
                "case {name:?} in {encoding}: {error}"
            );
            assert!(
                error.error.message.contains(needle),
                "case {name:?} in {encoding}: message {:?} does not contain {needle:?}",
                error.error.message
            );
        }
    }
}

#[test]
fn bad_fields_are_refused_in_both_encodings() {
    use ErrorCode::{BadRequest, TooLarge};
    let topic_put = |extra: &[(&str, Value)]| {
        let mut pairs = vec![
            ("type", text("topic")),
            ("method", text("PUT")),
            ("topic", text("t")),
        ];
        pairs.extend(extra.iter().cloned());
        map(&pairs)
    };
    let message_put = |message: Value| {
        map(&[
            ("type", text("message")),
            ("method", text("PUT")),
            ("topic", text("t")),
            ("message", message),
        ])
    };
    let status = |extra: &[(&str, Value)]| {
        let mut pairs = vec![("type", text("status")), ("method", text("GET"))];
        pairs.extend(extra.iter().cloned());
        map(&pairs)
    };
    let cases: Vec<(&str, Value, ErrorCode, &str)> = vec![
        ("empty map", map(&[]), BadRequest, "missing field `type`"),
        (
            "missing type",
            map(&[("method", text("GET"))]),
            BadRequest,
            "missing field `type`",
        ),
        (
            "missing method",
            map(&[("type", text("topic"))]),
            BadRequest,
            "missing field `method`",
        ),
        (
            "type not a string",
            map(&[("type", Value::from(1)), ("method", text("GET"))]),
            BadRequest,
            "field `type` must be a string, got an integer",
        ),
        (
            "method null",
            map(&[("type", text("topic")), ("method", Value::Nil)]),
            BadRequest,
            "field `method` must be a string",
        ),
        (
            "unknown type",
            map(&[("type", text("queue")), ("method", text("GET"))]),
            BadRequest,
            "unknown type \"queue\"",
        ),
        (
            "unknown method",
            map(&[("type", text("topic")), ("method", text("DELETE"))]),
            BadRequest,
            "unknown method \"DELETE\" for type \"topic\"",
        ),
        (
            "methods are case-sensitive",
            map(&[
                ("type", text("message")),
                ("method", text("get")),
                ("topic", text("t")),
            ]),
            BadRequest,
            "unknown method \"get\"",
        ),
        (
            "status PUT",
            map(&[("type", text("status")), ("method", text("PUT"))]),
            BadRequest,
            "unknown method \"PUT\" for type \"status\"",
        ),
        (
            "topic PUT without topic",
            map(&[("type", text("topic")), ("method", text("PUT"))]),
            BadRequest,
            "missing field `topic`",
        ),
        (
            "topic not a string",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", Value::from(5)),
            ]),
            BadRequest,
            "field `topic` must be a string, got an integer",
        ),
        (
            "empty topic",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("")),
            ]),
            BadRequest,
            "field `topic` must not be empty",
        ),
        (
            "topic over the limit",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("123456789")),
            ]),
            TooLarge,
            "`topic` is 9 bytes; the limit is 8",
        ),
        (
            "topic over the limit in bytes, not characters",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("ééééé")),
            ]),
            TooLarge,
            "`topic` is 10 bytes",
        ),
        (
            "message PUT without message",
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("t")),
            ]),
            BadRequest,
            "missing field `message`",
        ),
        (
            "message PUT without topic",
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("message", text("m")),
            ]),
            BadRequest,
            "missing field `topic`",
        ),
        (
            "message an integer",
            message_put(Value::from(1)),
            BadRequest,
            "field `message` must be",
        ),
        (
            "message a boolean",
            message_put(Value::Boolean(true)),
            BadRequest,
            "got a boolean",
        ),
        (
            "message null",
            message_put(Value::Nil),
            BadRequest,
            "field `message` must be",
        ),
        (
            "message an array",
            message_put(Value::Array(vec![])),
            BadRequest,
            "got an array",
        ),
        (
            "message a map",
            message_put(map(&[])),
            BadRequest,
            "field `message` must be",
        ),
        (
            "message over the limit",
            message_put(text("0123456789abcdefg")),
            TooLarge,
            "`message` is 17 bytes; the limit is 16",
        ),
        (
            "message GET without topic",
            map(&[("type", text("message")), ("method", text("GET"))]),
            BadRequest,
            "missing field `topic`",
        ),
        (
            "message GET topic an array",
            map(&[
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", Value::Array(vec![])),
            ]),
            BadRequest,
            "field `topic` must be a string, got an array",
        ),
        (
            "v 3",
            status(&[("v", Value::from(3))]),
            BadRequest,
            "unsupported protocol version `v`: 3",
        ),
        (
            "v 0",
            status(&[("v", Value::from(0))]),
            BadRequest,
            "unsupported protocol version `v`: 0",
        ),
        (
            "v 256",
            status(&[("v", Value::from(256))]),
            BadRequest,
            "unsupported protocol version",
        ),
        (
            "v a string",
            status(&[("v", text("2"))]),
            BadRequest,
            "field `v` must be the integer 1 or 2, got a string",
        ),
        (
            "v negative",
            status(&[("v", Value::from(-1))]),
            BadRequest,
            "field `v` must be",
        ),
        (
            "v a float",
            status(&[("v", Value::F64(2.0))]),
            BadRequest,
            "got a floating-point number",
        ),
        (
            "v null",
            status(&[("v", Value::Nil)]),
            BadRequest,
            "field `v` must be",
        ),
        (
            "client_id without seq",
            topic_put(&[("client_id", text("c"))]),
            BadRequest,
            "field `client_id` needs `seq`",
        ),
        (
            "seq without client_id",
            topic_put(&[("seq", Value::from(1))]),
            BadRequest,
            "field `seq` needs `client_id`",
        ),
        (
            "client_id an integer",
            topic_put(&[("client_id", Value::from(1)), ("seq", Value::from(1))]),
            BadRequest,
            "field `client_id` must be a string",
        ),
        (
            "client_id empty",
            topic_put(&[("client_id", text("")), ("seq", Value::from(1))]),
            BadRequest,
            "field `client_id` must not be empty",
        ),
        (
            "client_id over the limit",
            topic_put(&[("client_id", text("abcde")), ("seq", Value::from(1))]),
            TooLarge,
            "`client_id` is 5 bytes; the limit is 4",
        ),
        (
            "seq negative",
            topic_put(&[("client_id", text("c")), ("seq", Value::from(-1))]),
            BadRequest,
            "field `seq` must be an unsigned integer, got a negative integer",
        ),
        (
            "seq a string",
            topic_put(&[("client_id", text("c")), ("seq", text("1"))]),
            BadRequest,
            "field `seq` must be an unsigned integer, got a string",
        ),
        (
            "seq a float",
            topic_put(&[("client_id", text("c")), ("seq", Value::F64(1.0))]),
            BadRequest,
            "field `seq` must be an unsigned integer",
        ),
        (
            "seq type-checked even on status",
            status(&[("client_id", text("c")), ("seq", Value::Boolean(true))]),
            BadRequest,
            "field `seq` must be an unsigned integer",
        ),
        (
            "client_id type-checked even on topic GET",
            map(&[
                ("type", text("topic")),
                ("method", text("GET")),
                ("client_id", Value::Array(vec![])),
                ("seq", Value::from(1)),
            ]),
            BadRequest,
            "field `client_id` must be a string",
        ),
        (
            "half a session even on status",
            status(&[("seq", Value::from(1))]),
            BadRequest,
            "field `seq` needs `client_id`",
        ),
    ];
    for (name, body, code, needle) in cases {
        assert_refused(name, &msgpack(&body), Encoding::MsgPack, code, needle);
        assert_refused(name, &json(&body), Encoding::Json, code, needle);
    }
}

#[test]
fn bad_messagepack_bodies_are_refused() {
    use ErrorCode::{BadRequest, TooLarge};
    let status_prefix = |pairs: u8| {
        let mut body = vec![0x80 | pairs];
        body.extend(msgpack(&text("type")));
        body.extend(msgpack(&text("status")));
        body.extend(msgpack(&text("method")));
        body.extend(msgpack(&text("GET")));
        body
    };
    let with_key = |key: &str, value: &[u8]| {
        let mut body = status_prefix(3);
        body.extend(msgpack(&text(key)));
        body.extend(value);
        body
    };
    let message_put = |message: &[u8]| {
        let mut body = vec![0x84];
        for part in ["type", "message", "method", "PUT", "topic", "t", "message"] {
            body.extend(msgpack(&text(part)));
        }
        body.extend(message);
        body
    };
    let four_gib_str = [0xdb, 0xff, 0xff, 0xff, 0xff, b'a'];
    let cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = vec![
        ("empty body", vec![], BadRequest, "body is empty"),
        (
            "blank body",
            b"  \n".to_vec(),
            BadRequest,
            "must be a MessagePack map or a JSON object, got an integer",
        ),
        (
            "an array",
            msgpack(&Value::Array(vec![text("type")])),
            BadRequest,
            "got an array",
        ),
        (
            "a string",
            msgpack(&text("status")),
            BadRequest,
            "got a string",
        ),
        ("nil", vec![0xc0], BadRequest, "got nil"),
        (
            "a JSON array",
            b"[1]".to_vec(),
            BadRequest,
            "got an integer",
        ),
        (
            "the reserved marker",
            vec![0xc1],
            BadRequest,
            "0xc1 at offset 0",
        ),
        (
            "a reserved marker as a value",
            with_key("x", &[0xc1]),
            BadRequest,
            "is not a MessagePack marker",
        ),
        (
            "a map cut short",
            status_prefix(3),
            BadRequest,
            "ends in the middle of a value",
        ),
        (
            "a key cut short",
            {
                let mut body = status_prefix(3);
                body.extend([0xa5, b'a']);
                body
            },
            BadRequest,
            "ends in the middle",
        ),
        (
            "a value cut short",
            with_key("seq", &[0xcf, 0, 0]),
            BadRequest,
            "ends in the middle",
        ),
        (
            "str32 claiming 4 GiB as a value",
            with_key("x", &four_gib_str),
            BadRequest,
            "ends in the middle",
        ),
        (
            "str32 claiming 4 GiB as a known value",
            message_put(&four_gib_str),
            BadRequest,
            "ends in the middle",
        ),
        (
            "str32 claiming 4 GiB as a key",
            {
                let mut body = status_prefix(3);
                body.extend(four_gib_str);
                body
            },
            BadRequest,
            "ends in the middle",
        ),
        (
            "bin32 claiming 4 GiB",
            message_put(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0]),
            BadRequest,
            "ends in the middle",
        ),
        (
            "map32 claiming 4 billion pairs",
            vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'v', 1],
            BadRequest,
            "ends in the middle",
        ),
        (
            "array32 claiming 4 billion items as a value",
            with_key("x", &[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]),
            BadRequest,
            "ends in the middle",
        ),
        (
            "a million levels of nesting, cut short",
            with_key("x", &[0x91; 1_000_000]),
            BadRequest,
            "ends in the middle",
        ),
        (
            "trailing bytes",
            {
                let mut body = status_prefix(2);
                body.push(0xc0);
                body
            },
            BadRequest,
            "1 bytes follow the request map",
        ),
        (
            "a second map",
            {
                let mut body = status_prefix(2);
                body.extend(status_prefix(2));
                body
            },
            BadRequest,
            "follow the request map",
        ),
        (
            "type given twice",
            {
                let mut body = status_prefix(3);
                body.extend(msgpack(&text("type")));
                body.extend(msgpack(&text("topic")));
                body
            },
            BadRequest,
            "field `type` appears more than once",
        ),
        (
            "message deeply nested",
            message_put(&[[0x91; 100_000].as_slice(), &[0xc0]].concat()),
            BadRequest,
            "field `message` must be a string or binary data, got an array",
        ),
        (
            "message an extension",
            message_put(&[0xd4, 1, 2]),
            BadRequest,
            "got a MessagePack extension",
        ),
        (
            "message a str that is not UTF-8",
            message_put(&[0xa2, 0xff, 0xfe]),
            BadRequest,
            "got a string that is not valid UTF-8",
        ),
        (
            "message binary over the limit",
            message_put(&msgpack(&Value::Binary(vec![0; 17]))),
            TooLarge,
            "`message` is 17 bytes",
        ),
        (
            "topic binary",
            {
                let mut body = vec![0x83];
                for part in ["type", "topic", "method", "PUT", "topic"] {
                    body.extend(msgpack(&text(part)));
                }
                body.extend(msgpack(&Value::Binary(b"t".to_vec())));
                body
            },
            BadRequest,
            "field `topic` must be a string, got binary data",
        ),
        (
            "type a str that is not UTF-8",
            {
                let mut body = vec![0x82, 0xa4];
                body.extend(b"type");
                body.extend([0xa1, 0xff]);
                body.extend(msgpack(&text("method")));
                body.extend(msgpack(&text("GET")));
                body
            },
            BadRequest,
            "field `type` must be a string, got a string that is not valid UTF-8",
        ),
    ];
    for (name, body, code, needle) in cases {
        assert_refused(name, &body, Encoding::MsgPack, code, needle);
    }
}

#[test]
fn bad_json_bodies_are_refused() {
    use ErrorCode::BadRequest;
    let deep_message = format!(
        r#"{{"type":"message","method":"PUT","topic":"t","message":{}{}}}"#,
        "[".repeat(1_000_000),
        "]".repeat(1_000_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a lone brace", b"{".to_vec(), "body is not valid JSON"),
        ("cut short", br#"{"type": "status", "method": "GE"#.to_vec(), "body is not valid JSON"),
        ("trailing characters", br#"{"type":"status","method":"GET"} x"#.to_vec(), "body is not valid JSON: trailing characters"),
        ("a second object", br#"{"type":"status","method":"GET"}{}"#.to_vec(), "body is not valid JSON"),
        ("single quotes", b"{'type': 'status'}".to_vec(), "body is not valid JSON"),
        ("invalid UTF-8 in a string", b"{\"type\": \"st\xffatus\", \"method\": \"GET\"}".to_vec(), "body is not valid JSON"),
        ("a lone surrogate escape", br#"{"type": "\ud800", "method": "GET"}"#.to_vec(), "body is not valid JSON"),
        ("type given twice", br#"{"type":"status","method":"GET","type":"topic"}"#.to_vec(), "field `type` appears more than once"),
        ("message an array of bytes", br#"{"type":"message","method":"PUT","topic":"t","message":[104,105]}"#.to_vec(), "JSON carries text only"),
        ("message deeply nested", deep_message.into_bytes(), "field `message` must be a string"),
        ("seq over u64::MAX", br#"{"type":"topic","method":"PUT","topic":"t","client_id":"c","seq":18446744073709551616}"#.to_vec(), "field `seq` must be an unsigned integer, got a floating-point number"),
        ("type an object", br#"{"type":{},"method":"GET"}"#.to_vec(), "field `type` must be a string, got an object"),
        ("method null", br#"{"type":"status","method":null}"#.to_vec(), "got null"),
    ];
    for (name, body, needle) in cases {
        assert_refused(name, &body, Encoding::Json, BadRequest, needle);
    }
}

// ---------------------------------------------------------------------------------------
// Request encoding (client side).

/// A keyed client port checks rights on what a request names before validating the rest
/// (PROTOCOL.md §11): `head` names the version and intent of a request that is otherwise
/// invalid, and nothing for one that does not name them.
#[test]
fn a_request_names_its_intent_before_its_other_fields_are_validated() {
    let limits = tiny_limits();
    let long = "x".repeat(limits.message_bytes_max + 1);
    let named: Vec<(&str, Value, u8, Intent<'static>)> = vec![
        (
            "over-long message",
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("secret")),
                ("message", text(&long)),
            ]),
            1,
            Intent::Put { topic: "secret" },
        ),
        (
            "message of the wrong type, v2",
            map(&[
                ("v", Value::from(2)),
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("secret")),
                ("message", Value::from(7)),
            ]),
            2,
            Intent::Put { topic: "secret" },
        ),
        (
            "message missing, bad client_id",
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("secret")),
                ("client_id", Value::from(3)),
            ]),
            1,
            Intent::Put { topic: "secret" },
        ),
        (
            "empty topic",
            map(&[
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", text("")),
            ]),
            1,
            Intent::Get { topic: "" },
        ),
        (
            "create, topic over the limit",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text(&long)),
            ]),
            1,
            Intent::CreateTopic { topic: "" },
        ),
        (
            "ACK with a receipt that is not a string",
            map(&[
                ("v", Value::from(2)),
                ("type", text("message")),
                ("method", text("ACK")),
                ("topic", text("secret")),
                ("receipt", Value::from(7)),
            ]),
            2,
            Intent::Get { topic: "secret" },
        ),
        (
            "TOUCH with lease_ms out of range",
            map(&[
                ("v", Value::from(2)),
                ("type", text("message")),
                ("method", text("TOUCH")),
                ("topic", text("secret")),
                ("receipt", text("1.1")),
                ("lease_ms", Value::from(0)),
            ]),
            2,
            Intent::Get { topic: "secret" },
        ),
        (
            "batch PUT with too many messages",
            map(&[
                ("v", Value::from(2)),
                ("type", text("message")),
                ("method", text("PUT")),
                ("topic", text("secret")),
                ("messages", Value::Array(vec![text("m"); 1_001])),
            ]),
            2,
            Intent::Put { topic: "secret" },
        ),
        (
            "fault with a bad node list",
            map(&[
                ("type", text("fault")),
                ("method", text("PUT")),
                ("drop_to", text("x")),
            ]),
            1,
            Intent::Fault,
        ),
    ];
    for (name, value, version, intent) in &named {
        for body in [msgpack(value), json(value)] {
            let parsed = parse_request(&body).expect(name);
            let head = parsed
                .head()
                .unwrap_or_else(|| panic!("{name}: names nothing"));
            assert_eq!(head.version, *version, "{name}");
            match (head.intent, intent) {
                // The over-long topic is compared by length only.
                (Intent::CreateTopic { topic }, Intent::CreateTopic { .. }) => {
                    assert_eq!(topic.len(), long.len(), "{name}")
                }
                (got, want) => assert_eq!(got, *want, "{name}"),
            }
            assert!(
                parsed.validate(&limits).is_err(),
                "{name}: invalid after all"
            );
        }
    }

    let nameless: Vec<(&str, Value)> = vec![
        (
            "no type",
            map(&[("method", text("PUT")), ("topic", text("t"))]),
        ),
        (
            "type not text",
            map(&[("type", Value::from(1)), ("method", text("PUT"))]),
        ),
        (
            "unknown method",
            map(&[
                ("type", text("message")),
                ("method", text("POST")),
                ("topic", text("t")),
            ]),
        ),
        (
            "topic missing",
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("message", text("m")),
            ]),
        ),
        (
            "topic not text",
            map(&[
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", Value::from(5)),
            ]),
        ),
        (
            "topic twice",
            Value::Map(vec![
                (text("type"), text("message")),
                (text("method"), text("GET")),
                (text("topic"), text("open")),
                (text("topic"), text("secret")),
            ]),
        ),
        (
            "unsupported version",
            map(&[
                ("v", Value::from(9)),
                ("type", text("status")),
                ("method", text("GET")),
            ]),
        ),
    ];
    for (name, value) in &nameless {
        let body = msgpack(value);
        let parsed = parse_request(&body).expect(name);
        assert_eq!(parsed.head(), None, "{name}");
        let error = parsed.validate(&limits).expect_err(name);
        assert_eq!(error.error.code, ErrorCode::BadRequest, "{name}");
    }
    assert!(parse_request(b"\xc1").is_err(), "not MessagePack at all");
}

#[test]
fn encode_request_writes_maps_with_string_keys_and_omits_v_1() {
    let cases: Vec<(Request, Value)> = vec![
        (
            request(1, None, Operation::ListTopics),
            map(&[("type", text("topic")), ("method", text("GET"))]),
        ),
        (
            request(2, Some(("c", 3)), put("t", Payload::Binary(vec![1, 2]))),
            map(&[
                ("type", text("message")),
                ("method", text("PUT")),
                ("v", Value::from(2)),
                ("topic", text("t")),
                ("message", Value::Binary(vec![1, 2])),
                ("client_id", text("c")),
                ("seq", Value::from(3)),
            ]),
        ),
        (
            request(1, None, get("t")),
            map(&[
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", text("t")),
            ]),
        ),
    ];
    for (number, (request, expected)) in cases.into_iter().enumerate() {
        let body = encode_request(&request, Encoding::MsgPack);
        assert_eq!(
            read_msgpack(&body),
            expected,
            "case {number} in MessagePack"
        );
        let body = encode_request(&request, Encoding::Json);
        assert_eq!(
            read_json(&body),
            to_json(&expected),
            "case {number} in JSON"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Replies: compared whole, so any extra key fails.

fn outcome(outcome: Outcome, leader: Option<LeaderInfo>) -> Reply {
    Reply::Outcome { outcome, leader }
}

fn failed(code: ErrorCode, message: &str) -> Outcome {
    Outcome::Failed(ErrorInfo::new(code, message))
}

fn leader_info() -> LeaderInfo {
    LeaderInfo {
        id: 2,
        ip: "10.0.0.3".to_owned(),
        port: 8889,
    }
}

fn leader_value() -> Value {
    map(&[
        ("id", Value::from(2)),
        ("ip", text("10.0.0.3")),
        ("port", Value::from(8889)),
    ])
}

fn full_status() -> StatusReport {
    StatusReport {
        role: "Leader".to_owned(),
        term: 7,
        id: 1,
        leader: Some(1),
        commit_index: 40,
        last_applied: 39,
        last_log_index: 41,
        peers: vec![
            PeerProgress {
                id: 0,
                match_index: 41,
                next_index: 42,
                state: "replicate".to_owned(),
            },
            PeerProgress {
                id: 2,
                match_index: 0,
                next_index: 30,
                state: "probe".to_owned(),
            },
        ],
        fsync: "always".to_owned(),
        wal_syncs: 12,
        wal_entries: 41,
        requests: 97,
    }
}

/// Checks one reply in both encodings against its expected generic value. In JSON, a
/// binary message is an array of byte values (`to_json` of a bin).
fn assert_reply(name: &str, reply: &Reply, version: u8, expected: &Value) {
    let body = encode_reply(reply, version, Encoding::MsgPack);
    assert_eq!(
        &read_msgpack(&body),
        expected,
        "case {name:?} v{version} in MessagePack"
    );
    let body = encode_reply(reply, version, Encoding::Json);
    assert_eq!(
        read_json(&body),
        to_json(expected),
        "case {name:?} v{version} in JSON"
    );
}

#[test]
fn version_1_replies_carry_exactly_the_keys_of_section_3() {
    let success = |pairs: &[(&str, Value)]| {
        let mut all = vec![("success", Value::Boolean(true))];
        all.extend(pairs.iter().cloned());
        map(&all)
    };
    let plain_failure = map(&[("success", Value::Boolean(false))]);
    let mut cases: Vec<(&str, Reply, Value)> = vec![
        ("done", outcome(Outcome::Done, None), success(&[])),
        (
            "done, leader known",
            outcome(Outcome::Done, Some(leader_info())),
            success(&[]),
        ),
        (
            "no topics",
            outcome(Outcome::Topics(vec![]), None),
            success(&[("topics", Value::Array(vec![]))]),
        ),
        (
            "topics in order",
            outcome(
                Outcome::Topics(vec!["b".into(), "a".into()]),
                Some(leader_info()),
            ),
            success(&[("topics", Value::Array(vec![text("b"), text("a")]))]),
        ),
        (
            "text message",
            outcome(Outcome::Message(text_payload("hi")), None),
            success(&[("message", text("hi"))]),
        ),
        (
            "empty text message",
            outcome(Outcome::Message(text_payload("")), None),
            success(&[("message", text(""))]),
        ),
        (
            "binary message",
            outcome(Outcome::Message(Payload::Binary(vec![0, 255])), None),
            success(&[("message", Value::Binary(vec![0, 255]))]),
        ),
        (
            "status",
            Reply::Status(full_status()),
            map(&[("role", text("Leader")), ("term", Value::from(7))]),
        ),
        (
            "bad request keeps its error",
            outcome(
                failed(ErrorCode::BadRequest, "missing field `type`"),
                Some(leader_info()),
            ),
            map(&[
                ("success", Value::Boolean(false)),
                (
                    "error",
                    map(&[
                        ("code", text("BAD_REQUEST")),
                        ("message", text("missing field `type`")),
                    ]),
                ),
            ]),
        ),
        (
            "too large keeps its error",
            outcome(failed(ErrorCode::TooLarge, "big"), None),
            map(&[
                ("success", Value::Boolean(false)),
                (
                    "error",
                    map(&[("code", text("TOO_LARGE")), ("message", text("big"))]),
                ),
            ]),
        ),
    ];
    for code in [
        ErrorCode::NoSuchTopic,
        ErrorCode::TopicExists,
        ErrorCode::Empty,
        ErrorCode::NotLeader,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::SessionExpired,
        ErrorCode::Quota,
        ErrorCode::Forbidden,
        ErrorCode::Unspecified,
    ] {
        cases.push((
            code.as_str(),
            outcome(failed(code, "why"), Some(leader_info())),
            plain_failure.clone(),
        ));
    }
    for (name, reply, expected) in &cases {
        assert_reply(name, reply, 1, expected);
    }
}

#[test]
fn version_1_failure_bytes_are_exactly_what_existing_clients_compare() {
    let reply = outcome(failed(ErrorCode::NotLeader, "not me"), Some(leader_info()));
    assert_eq!(
        encode_reply(&reply, 1, Encoding::Json),
        br#"{"success":false}"#
    );
    let mut expected = vec![0x81, 0xa7];
    expected.extend(b"success");
    expected.push(0xc2);
    assert_eq!(encode_reply(&reply, 1, Encoding::MsgPack), expected);

    let status = Reply::Status(full_status());
    assert_eq!(
        encode_reply(&status, 1, Encoding::Json),
        br#"{"role":"Leader","term":7}"#
    );
}

#[test]
fn version_2_replies_carry_error_leader_and_status_details() {
    let error =
        |code: &str, message: &str| map(&[("code", text(code)), ("message", text(message))]);
    let cases: Vec<(&str, Reply, Value)> = vec![
        (
            "done with leader",
            outcome(Outcome::Done, Some(leader_info())),
            map(&[
                ("success", Value::Boolean(true)),
                ("leader", leader_value()),
            ]),
        ),
        (
            "done, leader unknown",
            outcome(Outcome::Done, None),
            map(&[("success", Value::Boolean(true))]),
        ),
        (
            "topics with leader",
            outcome(Outcome::Topics(vec!["a".into()]), Some(leader_info())),
            map(&[
                ("success", Value::Boolean(true)),
                ("topics", Value::Array(vec![text("a")])),
                ("leader", leader_value()),
            ]),
        ),
        (
            "binary message",
            outcome(Outcome::Message(Payload::Binary(vec![9])), None),
            map(&[
                ("success", Value::Boolean(true)),
                ("message", Value::Binary(vec![9])),
            ]),
        ),
        (
            "not leader, leader known",
            outcome(
                failed(ErrorCode::NotLeader, "node 0 is a follower"),
                Some(leader_info()),
            ),
            map(&[
                ("success", Value::Boolean(false)),
                ("error", error("NOT_LEADER", "node 0 is a follower")),
                ("leader", leader_value()),
            ]),
        ),
        (
            "timeout, leader unknown",
            outcome(failed(ErrorCode::Timeout, "outcome unknown"), None),
            map(&[
                ("success", Value::Boolean(false)),
                ("error", error("TIMEOUT", "outcome unknown")),
            ]),
        ),
        (
            "empty",
            outcome(failed(ErrorCode::Empty, ""), None),
            map(&[
                ("success", Value::Boolean(false)),
                ("error", error("EMPTY", "")),
            ]),
        ),
        (
            "forbidden",
            outcome(
                failed(
                    ErrorCode::Forbidden,
                    "this client may not consume topic \"orders\"",
                ),
                Some(leader_info()),
            ),
            map(&[
                ("success", Value::Boolean(false)),
                (
                    "error",
                    error("FORBIDDEN", "this client may not consume topic \"orders\""),
                ),
                ("leader", leader_value()),
            ]),
        ),
        (
            "leader status",
            Reply::Status(full_status()),
            map(&[
                ("role", text("Leader")),
                ("term", Value::from(7)),
                ("id", Value::from(1)),
                ("leader", Value::from(1)),
                ("commit_index", Value::from(40)),
                ("last_applied", Value::from(39)),
                ("last_log_index", Value::from(41)),
                (
                    "peers",
                    Value::Array(vec![
                        map(&[
                            ("id", Value::from(0)),
                            ("match_index", Value::from(41)),
                            ("next_index", Value::from(42)),
                            ("state", text("replicate")),
                        ]),
                        map(&[
                            ("id", Value::from(2)),
                            ("match_index", Value::from(0)),
                            ("next_index", Value::from(30)),
                            ("state", text("probe")),
                        ]),
                    ]),
                ),
                ("fsync", text("always")),
                ("wal_syncs", Value::from(12)),
                ("wal_entries", Value::from(41)),
                ("requests", Value::from(97)),
            ]),
        ),
        (
            "candidate status: no leader, no peers",
            Reply::Status(StatusReport {
                role: "Candidate".into(),
                leader: None,
                peers: vec![],
                fsync: "never".into(),
                wal_syncs: 0,
                wal_entries: 3,
                ..full_status()
            }),
            map(&[
                ("role", text("Candidate")),
                ("term", Value::from(7)),
                ("id", Value::from(1)),
                ("commit_index", Value::from(40)),
                ("last_applied", Value::from(39)),
                ("last_log_index", Value::from(41)),
                ("fsync", text("never")),
                ("wal_syncs", Value::from(0)),
                ("wal_entries", Value::from(3)),
                ("requests", Value::from(97)),
            ]),
        ),
    ];
    for (name, reply, expected) in &cases {
        assert_reply(name, reply, 2, expected);
    }
}

#[test]
fn request_errors_carry_error_in_the_request_encoding() {
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        let error = RequestError {
            encoding,
            error: ErrorInfo::new(
                ErrorCode::TooLarge,
                "`topic` is 300 bytes; the limit is 255",
            ),
        };
        let expected = map(&[
            ("success", Value::Boolean(false)),
            (
                "error",
                map(&[
                    ("code", text("TOO_LARGE")),
                    ("message", text("`topic` is 300 bytes; the limit is 255")),
                ]),
            ),
        ]);
        let body = encode_request_error(&error);
        match encoding {
            Encoding::MsgPack => assert_eq!(read_msgpack(&body), expected),
            Encoding::Json => assert_eq!(read_json(&body), to_json(&expected)),
        }
        assert_eq!(
            decode_reply(&body),
            Ok(outcome(Outcome::Failed(error.error.clone()), None)),
            "{encoding}"
        );
    }
}

#[test]
fn a_decode_failure_round_trips_into_its_error_reply() {
    let body = br#"{"type":"topic","method":"PUT"}"#;
    let error = decode_request(body, &Limits::default()).expect_err("topic is missing");
    let reply = encode_request_error(&error);
    assert_eq!(
        read_json(&reply),
        serde_json::json!({"success": false, "error": {"code": "BAD_REQUEST", "message": "missing field `topic`"}})
    );
}

// ---------------------------------------------------------------------------------------
// Reply decoding (client side).

#[test]
fn decode_reply_reads_version_1_replies() {
    let v1_failure = failed(
        ErrorCode::Unspecified,
        "the node did not say why (a version 1 reply)",
    );
    let cases: Vec<(&str, Value, Reply)> = vec![
        (
            "done",
            map(&[("success", Value::Boolean(true))]),
            outcome(Outcome::Done, None),
        ),
        (
            "failure without a reason",
            map(&[("success", Value::Boolean(false))]),
            outcome(v1_failure, None),
        ),
        (
            "topics",
            map(&[
                ("success", Value::Boolean(true)),
                ("topics", Value::Array(vec![text("a")])),
            ]),
            outcome(Outcome::Topics(vec!["a".into()]), None),
        ),
        (
            "message",
            map(&[("success", Value::Boolean(true)), ("message", text("m"))]),
            outcome(Outcome::Message(text_payload("m")), None),
        ),
        (
            "status",
            map(&[("role", text("Follower")), ("term", Value::from(3))]),
            Reply::Status(StatusReport {
                role: "Follower".into(),
                term: 3,
                id: 0,
                leader: None,
                commit_index: 0,
                last_applied: 0,
                last_log_index: 0,
                peers: vec![],
                fsync: String::new(),
                wal_syncs: 0,
                wal_entries: 0,
                requests: 0,
            }),
        ),
        (
            "unknown code kept in the message",
            map(&[
                ("success", Value::Boolean(false)),
                (
                    "error",
                    map(&[
                        ("code", text("QUOTA_EXCEEDED")),
                        ("message", text("slow down")),
                    ]),
                ),
            ]),
            outcome(
                failed(ErrorCode::Unspecified, "QUOTA_EXCEEDED: slow down"),
                None,
            ),
        ),
        (
            "unknown keys ignored, leader null",
            map(&[
                ("success", Value::Boolean(true)),
                ("extra", Value::Array(vec![])),
                ("leader", Value::Nil),
            ]),
            outcome(Outcome::Done, None),
        ),
        (
            "error without message",
            map(&[
                ("success", Value::Boolean(false)),
                ("error", map(&[("code", text("EMPTY"))])),
            ]),
            outcome(failed(ErrorCode::Empty, ""), None),
        ),
    ];
    for (name, body, expected) in cases {
        assert_eq!(
            decode_reply(&msgpack(&body)),
            Ok(expected.clone()),
            "case {name:?} in MessagePack"
        );
        assert_eq!(
            decode_reply(&json(&body)),
            Ok(expected),
            "case {name:?} in JSON"
        );
    }
}

#[test]
fn decode_reply_ignores_keys_that_are_not_strings() {
    let body = msgpack(&Value::Map(vec![
        (Value::from(1), Value::Boolean(false)),
        (text("success"), Value::Boolean(true)),
        (Value::Nil, text("x")),
    ]));
    assert_eq!(decode_reply(&body), Ok(outcome(Outcome::Done, None)));
}

#[test]
fn decode_reply_refuses_what_is_not_a_reply() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "not valid MessagePack"),
        (
            "not a map",
            msgpack(&Value::Array(vec![])),
            "the reply is not a map",
        ),
        (
            "neither success nor role",
            msgpack(&map(&[])),
            "neither `success` nor `role`",
        ),
        (
            "success a string",
            msgpack(&map(&[("success", text("true"))])),
            "`success` is not a boolean",
        ),
        (
            "term missing",
            msgpack(&map(&[("role", text("Leader"))])),
            "`term` is missing",
        ),
        (
            "term negative",
            msgpack(&map(&[("role", text("Leader")), ("term", Value::from(-1))])),
            "`term` is negative",
        ),
        (
            "port over 65535",
            msgpack(&map(&[
                ("success", Value::Boolean(true)),
                (
                    "leader",
                    map(&[
                        ("id", Value::from(1)),
                        ("ip", text("h")),
                        ("port", Value::from(70_000)),
                    ]),
                ),
            ])),
            "over 65535",
        ),
        (
            "topics and message",
            msgpack(&map(&[
                ("success", Value::Boolean(true)),
                ("topics", Value::Array(vec![])),
                ("message", text("m")),
            ])),
            "more than one of `topics`, `message`",
        ),
        (
            "message an array of non-bytes",
            json(&map(&[
                ("success", Value::Boolean(true)),
                ("message", Value::Array(vec![Value::from(256)])),
            ])),
            "not of byte values",
        ),
        (
            "trailing bytes",
            [
                msgpack(&map(&[("success", Value::Boolean(true))])),
                vec![0xc0],
            ]
            .concat(),
            "1 bytes follow",
        ),
        (
            "str32 claiming 4 GiB",
            vec![0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b's'],
            "not valid MessagePack",
        ),
        (
            "map32 claiming 4 billion pairs",
            vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0],
            "not valid MessagePack",
        ),
        (
            "nesting too deep",
            [vec![0x81, 0xa1, b'x'], vec![0x91; 100_000], vec![0xc0]].concat(),
            "not valid MessagePack",
        ),
        (
            "JSON nesting too deep",
            [b"{\"x\":".to_vec(), vec![b'['; 100_000]].concat(),
            "not valid JSON",
        ),
        (
            "JSON cut short",
            b"{\"success\": tr".to_vec(),
            "not valid JSON",
        ),
    ];
    for (name, body, needle) in cases {
        match decode_reply(&body) {
            Ok(reply) => panic!("case {name:?}: decoded as {reply:?}"),
            Err(error) => assert!(
                error.message.contains(needle),
                "case {name:?}: {error} does not contain {needle:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties.

fn arbitrary_text(length_chars_max: usize) -> impl Strategy<Value = String> {
    // Any characters, control characters and non-ASCII included.
    proptest::collection::vec(any::<char>(), 0..=length_chars_max)
        .prop_map(|chars| chars.into_iter().collect())
}

/// Non-empty, and at most 4 bytes per char keeps it within the default limits.
fn arbitrary_name(length_chars_max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 1..=length_chars_max)
        .prop_map(|chars| chars.into_iter().collect())
}

fn arbitrary_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        arbitrary_text(40).prop_map(Payload::Text),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Binary),
    ]
}

/// A `fault` request's node list: sorted, without duplicates, below 64.
fn arbitrary_node_ids() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::btree_set(0u64..FAULT_NODE_IDS_MAX, 0..6)
        .prop_map(|ids| ids.into_iter().collect())
}

fn arbitrary_request() -> impl Strategy<Value = Request> {
    let operation = prop_oneof![
        arbitrary_name(60).prop_map(|topic| Operation::CreateTopic { topic }),
        Just(Operation::ListTopics),
        (arbitrary_name(60), arbitrary_payload())
            .prop_map(|(topic, message)| Operation::Put { topic, message }),
        arbitrary_name(60).prop_map(|topic| Operation::Get { topic }),
        Just(Operation::Status),
        (arbitrary_node_ids(), arbitrary_node_ids(), any::<bool>()).prop_map(
            |(drop_to, drop_from, stop_zap_handler)| Operation::Fault {
                drop_to,
                drop_from,
                stop_zap_handler
            }
        ),
    ];
    let session = proptest::option::of(
        (arbitrary_name(16), any::<u64>())
            .prop_map(|(client_id, seq)| SessionKey { client_id, seq }),
    );
    let operation = prop_oneof![3 => operation, 2 => arbitrary_version_2_operation()];
    (1u8..=2, session, operation).prop_map(|(version, session, operation)| {
        // Only writes carry a session: the node drops it elsewhere.
        let session = match operation {
            Operation::ListTopics
            | Operation::ListTopicDetails
            | Operation::Status
            | Operation::Fault { .. } => None,
            _ => session,
        };
        let version_2_only = !matches!(
            operation,
            Operation::CreateTopic { .. }
                | Operation::ListTopics
                | Operation::Put { .. }
                | Operation::Get { .. }
                | Operation::Status
                | Operation::Fault { .. }
        );
        Request {
            version: if version_2_only { 2 } else { version },
            session,
            operation,
        }
    })
}

/// The operations of PROTOCOL.md §8–§10, each in the form it decodes to (a fetch with at
/// least one option, settings with at least one value, lists not empty).
fn arbitrary_version_2_operation() -> impl Strategy<Value = Operation> {
    let receipts = prop_oneof![
        arbitrary_text(20).prop_map(Receipts::One),
        proptest::collection::vec(arbitrary_text(20), 1..5).prop_map(Receipts::Many),
    ];
    let options = (
        proptest::option::of(1..=LEASE_MS_MAX),
        proptest::option::of(0..=WAIT_MS_MAX),
        proptest::option::of(1..=BATCH_ITEMS_MAX as u32),
    )
        .prop_filter("at least one option", |(lease_ms, wait_ms, max)| {
            lease_ms.is_some() || wait_ms.is_some() || max.is_some()
        })
        .prop_map(|(lease_ms, wait_ms, max)| FetchOptions {
            lease_ms,
            wait_ms,
            max,
        });
    let settings = (
        proptest::option::of(1..u64::MAX),
        proptest::option::of(arbitrary_name(20)),
    )
        .prop_filter("at least one setting", |(max, dead_letter)| {
            max.is_some() || dead_letter.is_some()
        });
    prop_oneof![
        (arbitrary_name(20), settings)
            .prop_filter("not its own dead letter", |(topic, (_, dead_letter))| {
                dead_letter.as_ref() != Some(topic)
            })
            .prop_map(|(topic, (max_deliveries, dead_letter))| {
                Operation::CreateTopicWith {
                    topic,
                    settings: TopicSettings {
                        max_deliveries,
                        dead_letter,
                    },
                }
            }),
        Just(Operation::ListTopicDetails),
        (
            arbitrary_name(20),
            proptest::collection::vec(arbitrary_payload(), 1..5)
        )
            .prop_map(|(topic, messages)| Operation::PutBatch { topic, messages }),
        (arbitrary_name(20), options)
            .prop_map(|(topic, options)| Operation::Fetch { topic, options }),
        (arbitrary_name(20), receipts.clone())
            .prop_map(|(topic, receipts)| Operation::Ack { topic, receipts }),
        (arbitrary_name(20), receipts)
            .prop_map(|(topic, receipts)| Operation::Nack { topic, receipts }),
        (arbitrary_name(20), arbitrary_text(20), 1..=LEASE_MS_MAX).prop_map(
            |(topic, receipt, lease_ms)| Operation::Touch {
                topic,
                receipt,
                lease_ms
            }
        ),
    ]
}

const ALL_CODES: [ErrorCode; 15] = ErrorCode::ALL;

fn arbitrary_delivery() -> impl Strategy<Value = Delivery> {
    (arbitrary_payload(), arbitrary_text(20), any::<u64>()).prop_map(
        |(message, receipt, deliveries)| Delivery {
            message,
            receipt,
            deliveries,
        },
    )
}

fn arbitrary_topic_detail() -> impl Strategy<Value = TopicDetail> {
    (
        arbitrary_name(10),
        any::<[u64; 3]>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(arbitrary_name(10)),
    )
        .prop_map(|(name, numbers, max_deliveries, dead_letter)| TopicDetail {
            name,
            ready: numbers[0],
            leased: numbers[1],
            max_deliveries,
            dead_letter,
            discarded: numbers[2],
        })
}

fn arbitrary_reply() -> impl Strategy<Value = Reply> {
    let error = (
        proptest::sample::select(ALL_CODES.to_vec()),
        arbitrary_text(30),
    )
        .prop_map(|(code, message)| ErrorInfo { code, message });
    let outcome = prop_oneof![
        Just(Outcome::Done),
        proptest::collection::vec(arbitrary_name(10), 0..5).prop_map(Outcome::Topics),
        arbitrary_payload().prop_map(Outcome::Message),
        error.prop_map(Outcome::Failed),
        arbitrary_delivery().prop_map(Outcome::Delivered),
        proptest::collection::vec(arbitrary_payload(), 0..4).prop_map(Outcome::Messages),
        // Not empty: an empty list reads back as `Messages` / `Topics`.
        proptest::collection::vec(arbitrary_delivery(), 1..4).prop_map(Outcome::Deliveries),
        any::<u64>().prop_map(Outcome::Count),
        proptest::collection::vec(arbitrary_text(10), 0..4).prop_map(Outcome::Stale),
        proptest::collection::vec(arbitrary_topic_detail(), 1..4).prop_map(Outcome::TopicDetails),
    ];
    let leader =
        proptest::option::of(
            (any::<u64>(), arbitrary_text(20), any::<u16>())
                .prop_map(|(id, ip, port)| LeaderInfo { id, ip, port }),
        );
    let peer = (any::<u64>(), any::<u64>(), any::<u64>(), arbitrary_text(10)).prop_map(
        |(id, match_index, next_index, state)| PeerProgress {
            id,
            match_index,
            next_index,
            state,
        },
    );
    let status = (
        arbitrary_text(10),
        any::<[u64; 8]>(),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(peer, 0..4),
        arbitrary_text(8),
    )
        .prop_map(|(role, numbers, leader, peers, fsync)| StatusReport {
            role,
            term: numbers[0],
            id: numbers[1],
            leader,
            commit_index: numbers[2],
            last_applied: numbers[3],
            last_log_index: numbers[4],
            peers,
            fsync,
            wal_syncs: numbers[5],
            wal_entries: numbers[6],
            requests: numbers[7],
        });
    let stats = (any::<[u64; 6]>(), any::<u32>()).prop_map(|(numbers, digest)| StatsReport {
        id: numbers[0],
        last_applied: numbers[1],
        digest,
        topic_count: numbers[2],
        message_count: numbers[3],
        payload_bytes: numbers[4],
        session_count: numbers[5],
        cluster_id: numbers[0] ^ 1,
        members: Vec::new(),
    });
    prop_oneof![
        (outcome, leader).prop_map(|(outcome, leader)| Reply::Outcome { outcome, leader }),
        status.prop_map(Reply::Status),
        stats.prop_map(Reply::Stats),
    ]
}

/// What a version 1 reply can tell a client about `reply`.
fn as_seen_in_version_1(reply: Reply) -> Reply {
    match reply {
        Reply::Outcome { outcome, .. } => {
            let outcome = match outcome {
                Outcome::Failed(error)
                    if !matches!(error.code, ErrorCode::BadRequest | ErrorCode::TooLarge) =>
                {
                    failed(
                        ErrorCode::Unspecified,
                        "the node did not say why (a version 1 reply)",
                    )
                }
                other => other,
            };
            Reply::Outcome {
                outcome,
                leader: None,
            }
        }
        Reply::Status(status) => Reply::Status(StatusReport {
            role: status.role,
            term: status.term,
            id: 0,
            leader: None,
            commit_index: 0,
            last_applied: 0,
            last_log_index: 0,
            peers: vec![],
            fsync: String::new(),
            wal_syncs: 0,
            wal_entries: 0,
            requests: 0,
        }),
        // Not a version 1 operation: one form whatever the version.
        stats @ Reply::Stats(_) => stats,
    }
}

/// Bodies near valid ones: an encoded request or reply, cut short or with one byte changed.
fn near_valid_body() -> impl Strategy<Value = Vec<u8>> {
    let encoding = prop_oneof![Just(Encoding::MsgPack), Just(Encoding::Json)];
    let valid = prop_oneof![
        (arbitrary_request(), encoding.clone())
            .prop_map(|(request, encoding)| encode_request(&request, encoding)),
        (arbitrary_reply(), 1u8..=2, encoding)
            .prop_map(|(reply, version, encoding)| encode_reply(&reply, version, encoding)),
    ];
    (
        valid,
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(mut body, index, byte, truncate)| {
            if !body.is_empty() {
                let position = index.index(body.len());
                if truncate {
                    body.truncate(position);
                } else {
                    body[position] = byte;
                }
            }
            body
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(request in arbitrary_request()) {
        let limits = Limits::default();
        let body = encode_request(&request, Encoding::MsgPack);
        prop_assert_eq!(decode_request(&body, &limits), Ok((request.clone(), Encoding::MsgPack)));

        let body = encode_request(&request, Encoding::Json);
        let binary = match &request.operation {
            Operation::Put { message, .. } => matches!(message, Payload::Binary(_)),
            Operation::PutBatch { messages, .. } => {
                messages.iter().any(|message| matches!(message, Payload::Binary(_)))
            }
            _ => false,
        };
        if binary {
            let code = decode_request(&body, &limits).map_err(|error| error.error.code);
            prop_assert_eq!(code, Err(ErrorCode::BadRequest));
        } else {
            prop_assert_eq!(decode_request(&body, &limits), Ok((request, Encoding::Json)));
        }
    }

    #[test]
    fn version_2_replies_round_trip(reply in arbitrary_reply()) {
        for encoding in [Encoding::MsgPack, Encoding::Json] {
            let body = encode_reply(&reply, 2, encoding);
            prop_assert_eq!(decode_reply(&body), Ok(reply.clone()), "{}", encoding);
        }
    }

    #[test]
    fn version_1_replies_decode_to_what_they_can_say(reply in arbitrary_reply()) {
        let expected = as_seen_in_version_1(reply.clone());
        for encoding in [Encoding::MsgPack, Encoding::Json] {
            let body = encode_reply(&reply, 1, encoding);
            prop_assert_eq!(decode_reply(&body), Ok(expected.clone()), "{}", encoding);
        }
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        json_prefix in any::<bool>(),
    ) {
        let body = if json_prefix { [b"{".as_slice(), &body].concat() } else { body };
        let _ = decode_request(&body, &Limits::default());
        let _ = decode_request(&body, &tiny_limits());
        let _ = decode_reply(&body);
    }

    #[test]
    fn decoders_never_panic_on_damaged_valid_bodies(body in near_valid_body()) {
        let _ = decode_request(&body, &Limits::default());
        let _ = decode_reply(&body);
    }

    /// Whatever the request, a refusal is BAD_REQUEST or TOO_LARGE in the body's encoding.
    #[test]
    fn refusals_are_bad_request_or_too_large(body in near_valid_body()) {
        if let Err(error) = decode_request(&body, &tiny_limits()) {
            prop_assert!(matches!(error.error.code, ErrorCode::BadRequest | ErrorCode::TooLarge));
            prop_assert_eq!(error.encoding, detect_encoding(&body));
        }
    }
}

mod delivery;
mod membership;
