//! The version 2 fields of PROTOCOL.md §8–§10 (leases, waits, batches, delivery settings):
//! what decodes to what, what is refused with which code, and the exact replies.

use super::*;

fn v2(pairs: &[(&str, Value)]) -> Value {
    let mut all = vec![("v", Value::from(2))];
    all.extend(pairs.iter().cloned());
    map(&all)
}

fn message_request(method: &str, pairs: &[(&str, Value)]) -> Vec<(&'static str, Value)> {
    let method: &'static str = match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "ACK" => "ACK",
        "NACK" => "NACK",
        "TOUCH" => "TOUCH",
        other => panic!("method {other}"),
    };
    let mut all: Vec<(&'static str, Value)> = vec![
        ("type", text("message")),
        ("method", text(method)),
        ("topic", text("t")),
    ];
    for (key, value) in pairs {
        let key: &'static str = Box::leak(key.to_string().into_boxed_str());
        all.push((key, value.clone()));
    }
    all
}

fn with_v2(pairs: Vec<(&'static str, Value)>) -> Value {
    let mut all = vec![("v", Value::from(2))];
    all.extend(pairs);
    map(&all)
}

fn without_v(pairs: Vec<(&'static str, Value)>) -> Value {
    map(&pairs)
}

fn fetch(lease_ms: Option<u64>, wait_ms: Option<u64>, max: Option<u32>) -> Operation {
    Operation::Fetch {
        topic: "t".into(),
        options: FetchOptions {
            lease_ms,
            wait_ms,
            max,
        },
    }
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|item| text(item)).collect())
}

/// Decodes `value` in both encodings (JSON when it has no binary) and expects `expected`.
fn assert_decodes(name: &str, value: &Value, expected: &Request) {
    let limits = tiny_limits();
    assert_eq!(
        decode_request(&msgpack(value), &limits),
        Ok((expected.clone(), Encoding::MsgPack)),
        "case {name:?} in MessagePack"
    );
    assert_eq!(
        decode_request(&json(value), &limits),
        Ok((expected.clone(), Encoding::Json)),
        "case {name:?} in JSON"
    );
}

fn assert_refused_both(name: &str, value: &Value, code: ErrorCode, needle: &str) {
    assert_refused(name, &msgpack(value), Encoding::MsgPack, code, needle);
    assert_refused(name, &json(value), Encoding::Json, code, needle);
}

#[test]
fn version_2_fields_decode_in_both_encodings() {
    let receipts = |items: &[&str]| Receipts::Many(items.iter().map(|s| s.to_string()).collect());
    let cases: Vec<(&str, Value, Request)> = vec![
        (
            "leased GET",
            with_v2(message_request("GET", &[("lease_ms", Value::from(30_000))])),
            request(2, None, fetch(Some(30_000), None, None)),
        ),
        (
            "lease bounds",
            with_v2(message_request(
                "GET",
                &[
                    ("lease_ms", Value::from(LEASE_MS_MAX)),
                    ("max", Value::from(1)),
                ],
            )),
            request(2, None, fetch(Some(LEASE_MS_MAX), None, Some(1))),
        ),
        (
            "wait 0 and 60000",
            with_v2(message_request(
                "GET",
                &[("wait_ms", Value::from(0)), ("max", Value::from(1_000))],
            )),
            request(2, None, fetch(None, Some(0), Some(1_000))),
        ),
        (
            "wait, lease and max with a session",
            with_v2(message_request(
                "GET",
                &[
                    ("wait_ms", Value::from(60_000)),
                    ("lease_ms", Value::from(1)),
                    ("max", Value::from(7)),
                    ("client_id", text("c")),
                    ("seq", Value::from(3)),
                ],
            )),
            request(2, Some(("c", 3)), fetch(Some(1), Some(60_000), Some(7))),
        ),
        (
            "plain v2 GET stays a GET",
            with_v2(message_request("GET", &[])),
            request(2, None, get("t")),
        ),
        (
            "batch PUT",
            with_v2(message_request(
                "PUT",
                &[("messages", strings(&["a", "", "c"]))],
            )),
            request(
                2,
                None,
                Operation::PutBatch {
                    topic: "t".into(),
                    messages: vec![text_payload("a"), text_payload(""), text_payload("c")],
                },
            ),
        ),
        (
            "ACK",
            with_v2(message_request("ACK", &[("receipt", text("1.2"))])),
            request(
                2,
                None,
                Operation::Ack {
                    topic: "t".into(),
                    receipts: Receipts::One("1.2".into()),
                },
            ),
        ),
        (
            "NACK list with a session",
            with_v2(message_request(
                "NACK",
                &[
                    ("receipts", strings(&["1.2", "x"])),
                    ("client_id", text("c")),
                    ("seq", Value::from(1)),
                ],
            )),
            request(
                2,
                Some(("c", 1)),
                Operation::Nack {
                    topic: "t".into(),
                    receipts: receipts(&["1.2", "x"]),
                },
            ),
        ),
        (
            "ACK of a receipt never issued is the queue's to refuse",
            with_v2(message_request("ACK", &[("receipt", text(""))])),
            request(
                2,
                None,
                Operation::Ack {
                    topic: "t".into(),
                    receipts: Receipts::One(String::new()),
                },
            ),
        ),
        (
            "TOUCH",
            with_v2(message_request(
                "TOUCH",
                &[("receipt", text("r")), ("lease_ms", Value::from(5))],
            )),
            request(
                2,
                None,
                Operation::Touch {
                    topic: "t".into(),
                    receipt: "r".into(),
                    lease_ms: 5,
                },
            ),
        ),
        (
            "topic PUT with settings",
            v2(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("max_deliveries", Value::from(5)),
                ("dead_letter", text("t-dlq")),
            ]),
            request(
                2,
                None,
                Operation::CreateTopicWith {
                    topic: "t".into(),
                    settings: TopicSettings {
                        max_deliveries: Some(5),
                        dead_letter: Some("t-dlq".into()),
                    },
                },
            ),
        ),
        (
            "topic PUT with null settings",
            v2(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("max_deliveries", Value::Nil),
                ("dead_letter", Value::Nil),
            ]),
            request(2, None, create_topic("t")),
        ),
        (
            "topic GET with detail",
            v2(&[
                ("type", text("topic")),
                ("method", text("GET")),
                ("detail", Value::Boolean(true)),
            ]),
            request(2, None, Operation::ListTopicDetails),
        ),
        (
            "topic GET with detail false",
            map(&[
                ("type", text("topic")),
                ("method", text("GET")),
                ("detail", Value::Boolean(false)),
            ]),
            request(1, None, Operation::ListTopics),
        ),
        (
            "receipt elsewhere is ignored like any unknown key",
            map(&[
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", text("t")),
                ("receipt", Value::from(3)),
            ]),
            request(1, None, get("t")),
        ),
    ];
    for (name, value, expected) in &cases {
        assert_decodes(name, value, expected);
    }
}

#[test]
fn binary_batch_items_need_messagepack() {
    let value = with_v2(message_request(
        "PUT",
        &[(
            "messages",
            Value::Array(vec![Value::Binary(vec![0, 1]), text("x")]),
        )],
    ));
    assert_eq!(
        decode_request(&msgpack(&value), &tiny_limits()),
        Ok((
            request(
                2,
                None,
                Operation::PutBatch {
                    topic: "t".into(),
                    messages: vec![Payload::Binary(vec![0, 1]), text_payload("x")],
                },
            ),
            Encoding::MsgPack
        ))
    );
    assert_refused(
        "binary item in JSON",
        &json(&value),
        Encoding::Json,
        ErrorCode::BadRequest,
        "item 0 of field `message` must be a string",
    );
}

#[test]
fn version_2_fields_without_v_2_are_bad_requests() {
    use ErrorCode::BadRequest;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "lease_ms",
            without_v(message_request("GET", &[("lease_ms", Value::from(10))])),
            "field `lease_ms` needs \"v\": 2",
        ),
        (
            "wait_ms",
            without_v(message_request("GET", &[("wait_ms", Value::from(10))])),
            "field `wait_ms` needs",
        ),
        (
            "max",
            without_v(message_request("GET", &[("max", Value::from(10))])),
            "field `max` needs",
        ),
        (
            "messages",
            without_v(message_request("PUT", &[("messages", strings(&["a"]))])),
            "field `messages` needs",
        ),
        (
            "receipts on any request",
            map(&[
                ("type", text("status")),
                ("method", text("GET")),
                ("receipts", strings(&["a"])),
            ]),
            "field `receipts` needs",
        ),
        (
            "lease_ms even when invalid",
            map(&[
                ("v", Value::from(1)),
                ("type", text("message")),
                ("method", text("GET")),
                ("topic", text("t")),
                ("lease_ms", text("soon")),
            ]),
            "field `lease_ms` needs",
        ),
        (
            "ACK",
            without_v(message_request("ACK", &[("receipt", text("r"))])),
            "method \"ACK\" needs",
        ),
        (
            "NACK",
            without_v(message_request("NACK", &[("receipt", text("r"))])),
            "method \"NACK\" needs",
        ),
        (
            "TOUCH",
            without_v(message_request(
                "TOUCH",
                &[("receipt", text("r")), ("lease_ms", Value::from(1))],
            )),
            "field `lease_ms` needs",
        ),
        (
            "max_deliveries",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("max_deliveries", Value::from(3)),
            ]),
            "field `max_deliveries` needs",
        ),
        (
            "dead_letter",
            map(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("dead_letter", text("d")),
            ]),
            "field `dead_letter` needs",
        ),
        (
            "detail",
            map(&[
                ("type", text("topic")),
                ("method", text("GET")),
                ("detail", Value::Boolean(true)),
            ]),
            "field `detail` needs",
        ),
    ];
    for (name, value, needle) in &cases {
        assert_refused_both(name, value, BadRequest, needle);
    }
}

#[test]
fn version_2_fields_out_of_range_or_of_the_wrong_type_are_refused() {
    use ErrorCode::{BadRequest, TooLarge};
    let many = |count: usize| strings(&vec!["r"; count]);
    let cases: Vec<(&str, Value, ErrorCode, &str)> = vec![
        (
            "lease 0",
            with_v2(message_request("GET", &[("lease_ms", Value::from(0))])),
            BadRequest,
            "`lease_ms` is 0: it must be between 1 and 43200000",
        ),
        (
            "lease over 12 hours",
            with_v2(message_request(
                "GET",
                &[("lease_ms", Value::from(LEASE_MS_MAX + 1))],
            )),
            BadRequest,
            "between 1 and 43200000",
        ),
        (
            "lease negative",
            with_v2(message_request("GET", &[("lease_ms", Value::from(-1))])),
            BadRequest,
            "`lease_ms` must be an integer between 1 and 43200000, got a negative integer",
        ),
        (
            "lease a string",
            with_v2(message_request("GET", &[("lease_ms", text("30s"))])),
            BadRequest,
            "got a string",
        ),
        (
            "wait over a minute",
            with_v2(message_request("GET", &[("wait_ms", Value::from(60_001))])),
            BadRequest,
            "`wait_ms` is 60001: it must be between 0 and 60000",
        ),
        (
            "wait a float",
            with_v2(message_request("GET", &[("wait_ms", Value::F64(1.5))])),
            BadRequest,
            "got a floating-point number",
        ),
        (
            "max 0",
            with_v2(message_request("GET", &[("max", Value::from(0))])),
            BadRequest,
            "`max` is 0: it must be between 1 and 1000",
        ),
        (
            "max 1001",
            with_v2(message_request("GET", &[("max", Value::from(1_001))])),
            BadRequest,
            "between 1 and 1000",
        ),
        (
            "message and messages",
            with_v2(message_request(
                "PUT",
                &[("message", text("a")), ("messages", strings(&["b"]))],
            )),
            BadRequest,
            "exclude each other",
        ),
        (
            "no message at all",
            with_v2(message_request("PUT", &[])),
            BadRequest,
            "missing field `message`",
        ),
        (
            "messages empty",
            with_v2(message_request("PUT", &[("messages", strings(&[]))])),
            BadRequest,
            "`messages` must not be empty",
        ),
        (
            "messages not an array",
            with_v2(message_request("PUT", &[("messages", text("a"))])),
            BadRequest,
            "`messages` must be an array of messages, got a string",
        ),
        (
            "1001 messages",
            with_v2(message_request("PUT", &[("messages", many(1_001))])),
            TooLarge,
            "`messages` has 1001 items; the limit is 1000",
        ),
        (
            "a message over the limit",
            with_v2(message_request(
                "PUT",
                &[("messages", strings(&["ok", &"x".repeat(17)]))],
            )),
            TooLarge,
            "item 1 of `message` is 17 bytes",
        ),
        (
            "an item not a message",
            with_v2(message_request(
                "PUT",
                &[("messages", Value::Array(vec![text("a"), Value::from(1)]))],
            )),
            BadRequest,
            "item 1 of field `message` must be",
        ),
        (
            "a nested array item",
            with_v2(message_request(
                "PUT",
                &[("messages", Value::Array(vec![strings(&["a"])]))],
            )),
            BadRequest,
            "got an array",
        ),
        (
            "ACK without receipt",
            with_v2(message_request("ACK", &[])),
            BadRequest,
            "missing field `receipt` (or `receipts`)",
        ),
        (
            "ACK with both",
            with_v2(message_request(
                "ACK",
                &[("receipt", text("a")), ("receipts", strings(&["b"]))],
            )),
            BadRequest,
            "exclude each other",
        ),
        (
            "receipt not a string",
            with_v2(message_request("NACK", &[("receipt", Value::from(12))])),
            BadRequest,
            "`receipt` must be a string, got an integer",
        ),
        (
            "receipt too long",
            with_v2(message_request(
                "ACK",
                &[("receipt", text(&"r".repeat(RECEIPT_BYTES_MAX + 1)))],
            )),
            TooLarge,
            "`receipt` is 129 bytes",
        ),
        (
            "receipts empty",
            with_v2(message_request("ACK", &[("receipts", strings(&[]))])),
            BadRequest,
            "`receipts` must not be empty",
        ),
        (
            "1001 receipts",
            with_v2(message_request("ACK", &[("receipts", many(1_001))])),
            TooLarge,
            "`receipts` has 1001 items",
        ),
        (
            "a receipt in a list not a string",
            with_v2(message_request(
                "ACK",
                &[("receipts", Value::Array(vec![text("a"), Value::Nil]))],
            )),
            BadRequest,
            "`receipts` must be an array of strings",
        ),
        (
            "TOUCH without lease",
            with_v2(message_request("TOUCH", &[("receipt", text("r"))])),
            BadRequest,
            "missing field `lease_ms`",
        ),
        (
            "TOUCH without receipt",
            with_v2(message_request("TOUCH", &[("lease_ms", Value::from(1))])),
            BadRequest,
            "missing field `receipt`",
        ),
        (
            "TOUCH lease 0",
            with_v2(message_request(
                "TOUCH",
                &[("receipt", text("r")), ("lease_ms", Value::from(0))],
            )),
            BadRequest,
            "`lease_ms` is 0",
        ),
        (
            "max_deliveries 0",
            v2(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("max_deliveries", Value::from(0)),
            ]),
            BadRequest,
            "`max_deliveries` is 0",
        ),
        (
            "max_deliveries a string",
            v2(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("max_deliveries", text("3")),
            ]),
            BadRequest,
            "`max_deliveries` must be an integer",
        ),
        (
            "dead_letter the topic itself",
            v2(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("dead_letter", text("t")),
            ]),
            BadRequest,
            "names the topic itself",
        ),
        (
            "dead_letter empty",
            v2(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("dead_letter", text("")),
            ]),
            BadRequest,
            "`dead_letter` must not be empty",
        ),
        (
            "dead_letter too long",
            v2(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("dead_letter", text("123456789")),
            ]),
            TooLarge,
            "`dead_letter` is 9 bytes; the limit is 8",
        ),
        (
            "dead_letter not a string",
            v2(&[
                ("type", text("topic")),
                ("method", text("PUT")),
                ("topic", text("t")),
                ("dead_letter", Value::from(1)),
            ]),
            BadRequest,
            "`dead_letter` must be a string",
        ),
        (
            "detail not a boolean",
            v2(&[
                ("type", text("topic")),
                ("method", text("GET")),
                ("detail", text("yes")),
            ]),
            BadRequest,
            "`detail` must be a boolean",
        ),
    ];
    for (name, value, code, needle) in &cases {
        assert_refused_both(name, value, *code, needle);
    }
    assert_refused_both(
        "unknown message method",
        &v2(&[
            ("type", text("message")),
            ("method", text("PEEK")),
            ("topic", text("t")),
        ]),
        BadRequest,
        "expected \"GET\", \"PUT\", \"ACK\", \"NACK\" or \"TOUCH\"",
    );
}

#[test]
fn a_batch_is_limited_to_4_mib_of_messages_and_the_frame_cap_fits_the_largest() {
    let limits = Limits::default();
    // 1000 messages of 4194 bytes: 4,194,000 bytes, just under 4 MiB.
    let item = "x".repeat(BATCH_MESSAGE_BYTES_MAX / BATCH_ITEMS_MAX);
    let largest = Request {
        version: 2,
        session: Some(SessionKey {
            client_id: "c".repeat(limits.client_id_bytes_max),
            seq: u64::MAX,
        }),
        operation: Operation::PutBatch {
            topic: "t".repeat(limits.topic_bytes_max),
            messages: vec![Payload::Text(item.clone()); BATCH_ITEMS_MAX],
        },
    };
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        let body = encode_request(&largest, encoding);
        assert!(
            body.len() <= limits.frame_bytes_max(1024),
            "{encoding}: {} bytes over the cap {}",
            body.len(),
            limits.frame_bytes_max(1024)
        );
        assert_eq!(
            decode_request(&body, &limits),
            Ok((largest.clone(), encoding))
        );
    }
    assert!(limits.frame_bytes_max(0) > limits.message_bytes_max);
    // One byte more than 4 MiB in all is refused, though every message is within its limit.
    let mut messages = vec![Payload::Text(item); 999];
    let rest = BATCH_MESSAGE_BYTES_MAX - 999 * (BATCH_MESSAGE_BYTES_MAX / BATCH_ITEMS_MAX) + 1;
    messages.push(Payload::Text("y".repeat(rest)));
    let over = Request {
        version: 2,
        session: None,
        operation: Operation::PutBatch {
            topic: "t".into(),
            messages,
        },
    };
    let body = encode_request(&over, Encoding::MsgPack);
    assert_refused(
        "4 MiB + 1",
        &body,
        Encoding::MsgPack,
        ErrorCode::TooLarge,
        "`messages` in all is 4194305 bytes; the limit is 4194304",
    );
}

#[test]
fn a_huge_claimed_array_costs_what_the_body_holds() {
    // array32 claiming 4 billion items, holding two.
    let mut body = msgpack(&with_v2(message_request("PUT", &[])));
    body[0] += 1; // one more pair in the fixmap
    body.extend_from_slice(&[0xa8]);
    body.extend_from_slice(b"messages");
    body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xa1, b'a', 0xa1, b'b']);
    assert_refused(
        "claimed array",
        &body,
        Encoding::MsgPack,
        ErrorCode::BadRequest,
        "not valid MessagePack",
    );
}

#[test]
fn version_2_replies_of_leases_and_batches_are_exactly_these() {
    let delivery = |message: &str, receipt: &str, deliveries: u64| Delivery {
        message: text_payload(message),
        receipt: receipt.into(),
        deliveries,
    };
    let success = |pairs: &[(&str, Value)]| {
        let mut all = vec![("success", Value::Boolean(true))];
        all.extend(pairs.iter().cloned());
        map(&all)
    };
    let cases: Vec<(&str, Outcome, Value)> = vec![
        (
            "leased GET",
            Outcome::Delivered(delivery("m", "7.0", 1)),
            success(&[
                ("message", text("m")),
                ("receipt", text("7.0")),
                ("deliveries", Value::from(1)),
            ]),
        ),
        (
            "batch GET",
            Outcome::Messages(vec![text_payload("a"), Payload::Binary(vec![1])]),
            success(&[(
                "messages",
                Value::Array(vec![text("a"), Value::Binary(vec![1])]),
            )]),
        ),
        (
            "batch GET of one",
            Outcome::Messages(vec![text_payload("a")]),
            success(&[("messages", Value::Array(vec![text("a")]))]),
        ),
        (
            "leased batch GET",
            Outcome::Deliveries(vec![delivery("a", "9.1", 1), delivery("b", "9.2", 3)]),
            success(&[(
                "messages",
                Value::Array(vec![
                    map(&[
                        ("message", text("a")),
                        ("receipt", text("9.1")),
                        ("deliveries", Value::from(1)),
                    ]),
                    map(&[
                        ("message", text("b")),
                        ("receipt", text("9.2")),
                        ("deliveries", Value::from(3)),
                    ]),
                ]),
            )]),
        ),
        (
            "batch PUT",
            Outcome::Count(3),
            success(&[("count", Value::from(3))]),
        ),
        (
            "receipts list",
            Outcome::Stale(vec!["x".into()]),
            success(&[("stale", strings(&["x"]))]),
        ),
        (
            "receipts list, none stale",
            Outcome::Stale(vec![]),
            success(&[("stale", strings(&[]))]),
        ),
        (
            "topic details",
            Outcome::TopicDetails(vec![
                TopicDetail {
                    name: "t".into(),
                    ready: 2,
                    leased: 1,
                    max_deliveries: Some(5),
                    dead_letter: Some("d".into()),
                    discarded: 0,
                },
                TopicDetail {
                    name: "d".into(),
                    ready: 0,
                    leased: 0,
                    max_deliveries: None,
                    dead_letter: None,
                    discarded: 4,
                },
            ]),
            success(&[(
                "topics",
                Value::Array(vec![
                    map(&[
                        ("name", text("t")),
                        ("ready", Value::from(2)),
                        ("leased", Value::from(1)),
                        ("max_deliveries", Value::from(5)),
                        ("dead_letter", text("d")),
                        ("discarded", Value::from(0)),
                    ]),
                    map(&[
                        ("name", text("d")),
                        ("ready", Value::from(0)),
                        ("leased", Value::from(0)),
                        ("max_deliveries", Value::Nil),
                        ("dead_letter", Value::Nil),
                        ("discarded", Value::from(4)),
                    ]),
                ]),
            )]),
        ),
        (
            "stale receipt",
            failed(ErrorCode::StaleReceipt, "lease ended"),
            map(&[
                ("success", Value::Boolean(false)),
                (
                    "error",
                    map(&[
                        ("code", text("STALE_RECEIPT")),
                        ("message", text("lease ended")),
                    ]),
                ),
            ]),
        ),
    ];
    for (name, case_outcome, expected) in &cases {
        let reply = outcome(case_outcome.clone(), None);
        assert_reply(name, &reply, 2, expected);
        assert_eq!(
            decode_reply(&encode_reply(&reply, 2, Encoding::MsgPack)),
            Ok(reply.clone()),
            "case {name:?} decodes back"
        );
    }
    // A version 1 request never gets these, but a failure is still exactly {"success": false}.
    assert_reply(
        "stale receipt v1",
        &outcome(failed(ErrorCode::StaleReceipt, "x"), None),
        1,
        &map(&[("success", Value::Boolean(false))]),
    );
}
