//! `member GET/PUT/DELETE` (PROTOCOL.md §12): what decodes to what, what is refused, the
//! rights a request names, and the exact replies (compared whole).

use super::*;

fn member(method: &str, pairs: &[(&'static str, Value)]) -> Value {
    let method: &'static str = match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        other => other.to_string().leak(),
    };
    let mut all = vec![
        ("v", Value::from(2)),
        ("type", text("member")),
        ("method", text(method)),
    ];
    all.extend(pairs.iter().cloned());
    map(&all)
}

fn addresses(id: u64, public_key: Option<&str>) -> Vec<(&'static str, Value)> {
    let mut pairs = vec![
        ("id", Value::from(id)),
        ("ip", text("10.0.0.4")),
        ("port", Value::from(7000)),
        ("internal_port", Value::from(7001)),
    ];
    if let Some(key) = public_key {
        pairs.push(("public_key", text(key)));
    }
    pairs
}

fn address(id: u64, public_key: Option<&str>) -> MemberAddress {
    MemberAddress {
        id,
        ip: "10.0.0.4".into(),
        port: 7000,
        internal_port: 7001,
        public_key: public_key.map(str::to_string),
    }
}

const KEY: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

#[test]
fn member_requests_decode_in_both_encodings() {
    let limits = tiny_limits();
    let cases: Vec<(&str, Value, Operation)> = vec![
        ("list", member("GET", &[]), Operation::ListMembers),
        (
            "add",
            member("PUT", &addresses(3, None)),
            Operation::AddMember {
                member: address(3, None),
            },
        ),
        (
            "add with a key",
            member("PUT", &addresses(7, Some(KEY))),
            Operation::AddMember {
                member: address(7, Some(KEY)),
            },
        ),
        (
            "remove",
            member("DELETE", &[("id", Value::from(2))]),
            Operation::RemoveMember { id: 2 },
        ),
        (
            "a session is ignored: membership changes are not sessions' business",
            member(
                "DELETE",
                &[
                    ("id", Value::from(2)),
                    ("client_id", text("c")),
                    ("seq", Value::from(1)),
                ],
            ),
            Operation::RemoveMember { id: 2 },
        ),
    ];
    for (name, value, operation) in cases {
        let expected = request(2, None, operation);
        assert_eq!(
            decode_request(&msgpack(&value), &limits),
            Ok((expected.clone(), Encoding::MsgPack)),
            "{name} in MessagePack"
        );
        assert_eq!(
            decode_request(&json(&value), &limits),
            Ok((expected.clone(), Encoding::Json)),
            "{name} in JSON"
        );
        // What the client library sends decodes to the same request.
        for encoding in [Encoding::MsgPack, Encoding::Json] {
            let body = encode_request(&expected, encoding);
            assert_eq!(
                decode_request(&body, &limits),
                Ok((expected.clone(), encoding)),
                "{name} encoded by the client"
            );
        }
    }
}

#[test]
fn bad_member_requests_are_refused_in_both_encodings() {
    let without = |key: &str| -> Vec<(&'static str, Value)> {
        addresses(3, None)
            .into_iter()
            .filter(|(name, _)| *name != key)
            .collect()
    };
    let with = |key: &'static str, value: Value| -> Vec<(&'static str, Value)> {
        let mut pairs = without(key);
        pairs.push((key, value));
        pairs
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "version 1",
            map(&[("type", text("member")), ("method", text("GET"))]),
            "needs \"v\": 2",
        ),
        ("unknown method", member("POST", &[]), "unknown method"),
        (
            "missing id",
            member("PUT", &without("id")),
            "missing field `id`",
        ),
        (
            "id not a number",
            member("PUT", &with("id", text("3"))),
            "field `id`",
        ),
        (
            "negative id",
            member("DELETE", &[("id", Value::from(-1))]),
            "field `id`",
        ),
        (
            "missing ip",
            member("PUT", &without("ip")),
            "missing field `ip`",
        ),
        (
            "empty ip",
            member("PUT", &with("ip", text(" "))),
            "`ip` must not be empty",
        ),
        (
            "missing port",
            member("PUT", &without("port")),
            "missing field `port`",
        ),
        (
            "missing internal port",
            member("PUT", &without("internal_port")),
            "missing field `internal_port`",
        ),
        (
            "port 0",
            member("PUT", &with("port", Value::from(0))),
            "field `port`",
        ),
        (
            "port over 65535",
            member("PUT", &with("internal_port", Value::from(65_536))),
            "field `internal_port`",
        ),
        (
            "short key",
            member("PUT", &with("public_key", text("abc"))),
            "field `public_key`",
        ),
        (
            "key not text",
            member("PUT", &with("public_key", Value::from(1))),
            "field `public_key`",
        ),
        (
            "delete without id",
            member("DELETE", &[]),
            "missing field `id`",
        ),
    ];
    for (name, value, needle) in &cases {
        assert_refused(
            name,
            &msgpack(value),
            Encoding::MsgPack,
            ErrorCode::BadRequest,
            needle,
        );
        assert_refused(
            name,
            &json(value),
            Encoding::Json,
            ErrorCode::BadRequest,
            needle,
        );
    }
}

#[test]
fn member_requests_name_their_rights_before_validation() {
    let cases = [
        (member("GET", &[]), Intent::ListMembers),
        (member("PUT", &[]), Intent::ChangeMembers),
        (
            member("DELETE", &[("id", text("x"))]),
            Intent::ChangeMembers,
        ),
    ];
    for (value, intent) in cases {
        let body = msgpack(&value);
        let parsed = parse_request(&body).expect("a map");
        assert_eq!(parsed.head().map(|head| head.intent), Some(intent));
    }
    assert_eq!(Operation::ListMembers.intent(), Intent::ListMembers);
    assert_eq!(
        Operation::RemoveMember { id: 1 }.intent(),
        Intent::ChangeMembers
    );
}

#[test]
fn member_replies_are_exact() {
    let members = vec![
        MemberInfo {
            address: MemberAddress {
                id: 0,
                ip: "127.0.0.1".into(),
                port: 8567,
                internal_port: 8568,
                public_key: None,
            },
            voter: true,
        },
        MemberInfo {
            address: address(3, Some(KEY)),
            voter: false,
        },
    ];
    let expected = map(&[
        ("success", Value::Boolean(true)),
        (
            "members",
            Value::Array(vec![
                map(&[
                    ("id", Value::from(0)),
                    ("ip", text("127.0.0.1")),
                    ("port", Value::from(8567)),
                    ("internal_port", Value::from(8568)),
                    ("voter", Value::Boolean(true)),
                ]),
                map(&[
                    ("id", Value::from(3)),
                    ("ip", text("10.0.0.4")),
                    ("port", Value::from(7000)),
                    ("internal_port", Value::from(7001)),
                    ("voter", Value::Boolean(false)),
                    ("public_key", text(KEY)),
                ]),
            ]),
        ),
    ]);
    let reply = outcome(Outcome::Members(members), None);
    assert_reply("member list", &reply, 2, &expected);
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        assert_eq!(
            decode_reply(&encode_reply(&reply, 2, encoding)),
            Ok(reply.clone()),
            "the member list decodes back from {encoding}"
        );
    }
    let refused = outcome(
        failed(ErrorCode::ChangeInProgress, "node 3 is being added"),
        None,
    );
    assert_reply(
        "change in progress",
        &refused,
        2,
        &map(&[
            ("success", Value::Boolean(false)),
            (
                "error",
                map(&[
                    ("code", text("CHANGE_IN_PROGRESS")),
                    ("message", text("node 3 is being added")),
                ]),
            ),
        ]),
    );
    assert_eq!(
        decode_reply(&encode_reply(&refused, 2, Encoding::Json)),
        Ok(refused.clone())
    );
    assert_reply(
        "added",
        &outcome(Outcome::Done, None),
        2,
        &map(&[("success", Value::Boolean(true))]),
    );
}

#[test]
fn a_stats_reply_carries_the_members_the_node_acts_on_and_decodes_back() {
    let stats = StatsReport {
        id: 1,
        last_applied: 9,
        digest: 7,
        topic_count: 0,
        message_count: 0,
        payload_bytes: 0,
        session_count: 0,
        cluster_id: 0xfeed,
        members: vec![MemberInfo {
            address: address(3, Some(KEY)),
            voter: true,
        }],
    };
    let reply = Reply::Stats(stats.clone());
    for encoding in [Encoding::MsgPack, Encoding::Json] {
        assert_eq!(
            decode_reply(&encode_reply(&reply, 2, encoding)),
            Ok(reply.clone()),
            "stats with members decode back from {encoding}"
        );
    }
    // From a node that predates `members`: none.
    let mut old = StatsReport {
        members: Vec::new(),
        ..stats
    };
    let body = map(&[
        ("success", Value::Boolean(true)),
        ("id", Value::from(old.id)),
        ("last_applied", Value::from(old.last_applied)),
        ("digest", Value::from(old.digest)),
        ("topic_count", Value::from(0)),
        ("message_count", Value::from(0)),
        ("payload_bytes", Value::from(0)),
        ("session_count", Value::from(0)),
    ]);
    old.cluster_id = 0;
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &body).expect("encode");
    assert_eq!(decode_reply(&bytes), Ok(Reply::Stats(old)));
}
