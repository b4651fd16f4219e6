use super::*;
use crate::config::permissions::{check, Forbidden, Right};
use crate::protocol::{Operation, Payload};
use std::io::Write;

fn key(byte: u8) -> String {
    match zmq::z85_encode(&[byte; 32]) {
        Ok(text) => text,
        Err(error) => panic!("z85_encode: {error}"),
    }
}

fn parse(text: &str) -> Result<ClientList, String> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => panic!("test JSON {text:?}: {error}"),
    };
    ClientList::from_json(&value)
}

fn two_clients() -> String {
    format!(
        r#"[{{"name": "alice", "public_key": "{}", "produce": ["orders*"], "consume": ["orders*"], "admin": false}},
            {{"name": "ops", "public_key": "{}", "admin": true}}]"#,
        key(1),
        key(2)
    )
}

#[test]
fn parses_the_protocol_example() {
    let list = parse(&two_clients()).expect("valid clients");
    assert_eq!(list.len(), 2);
    let alice = list.by_key(&[1; 32]).expect("alice is listed");
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.public_key_z85, key(1));
    assert!(alice.rights.may_produce("orders-eu"));
    assert!(alice.rights.may_consume("orders"));
    assert!(!alice.rights.admin);
    let ops = list.by_z85(&key(2)).expect("ops is listed");
    assert_eq!(ops.name, "ops");
    assert!(ops.rights.admin);
    assert!(ops.rights.produce.is_empty() && ops.rights.consume.is_empty());
    assert!(list.by_key(&[3; 32]).is_none());
    assert!(list.by_z85("not a key").is_none());
    assert!(parse("[]").expect("an empty list").is_empty());
}

#[test]
fn z85_keys_are_checked() {
    assert_eq!(parse_z85_key(&key(7)), Ok([7; 32]));
    // The same as libzmq's encoder and decoder on keys that are valid.
    let varied: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(255))
        .collect();
    let text = zmq::z85_encode(&varied).expect("encode");
    assert_eq!(parse_z85_key(&text).map(Vec::from), Ok(varied.clone()));
    assert_eq!(zmq::z85_decode(&text).ok(), Some(varied));
    for bytes in [[0u8; 32], [255u8; 32]] {
        let text = zmq::z85_encode(&bytes).expect("encode");
        assert_eq!(parse_z85_key(&text), Ok(bytes));
    }
    // The examples of ZeroMQ RFC 26 (CurveZMQ).
    assert!(parse_z85_key("Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID").is_ok());
    for bad in [
        "",
        "short",
        &key(7)[..39],
        &format!("{}A", key(7)),
        "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hI\"",
        "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hI~",
        "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hI,",
        "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hIé",
        "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hI ",
        // Five Z85 characters worth more than 2^32.
        "%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%",
    ] {
        assert!(parse_z85_key(bad).is_err(), "{bad:?} was taken as a key");
    }
}

#[test]
fn bad_lists_give_one_clear_line() {
    let k1 = key(1);
    let k2 = key(2);
    let cases: Vec<(String, String)> = vec![
        (r#"{}"#.into(), "\"clients\": expected a list, found an object".into()),
        (r#"[7]"#.into(), "clients[0]: expected an object, found a number".into()),
        (
            format!(r#"[{{"public_key": "{k1}"}}]"#),
            "clients[0]: missing \"name\"".into(),
        ),
        (
            format!(r#"[{{"name": " ", "public_key": "{k1}"}}]"#),
            "clients[0].name: empty".into(),
        ),
        (
            format!(r#"[{{"name": 3, "public_key": "{k1}"}}]"#),
            "clients[0].name: expected a string, found a number".into(),
        ),
        (
            r#"[{"name": "a"}]"#.into(),
            "clients[0]: missing \"public_key\"".into(),
        ),
        (
            r#"[{"name": "a", "public_key": "abc"}]"#.into(),
            "clients[0].public_key: a key is 40 Z85 characters, found 3".into(),
        ),
        (
            format!(r#"[{{"name": "a", "public_key": "{k1}", "consumes": ["t"]}}]"#),
            "clients[0]: unknown field \"consumes\" (expected name, public_key, produce, consume, admin)".into(),
        ),
        (
            format!(r#"[{{"name": "a", "public_key": "{k1}", "produce": "t"}}]"#),
            "clients[0].produce: expected a list, found a string".into(),
        ),
        (
            format!(r#"[{{"name": "a", "public_key": "{k1}", "consume": [1]}}]"#),
            "clients[0].consume[0]: expected a string, found a number".into(),
        ),
        (
            format!(r#"[{{"name": "a", "public_key": "{k1}", "consume": ["ok", "a*b"]}}]"#),
            "clients[0].consume[1]: \"a*b\": a '*' is allowed only at the end".into(),
        ),
        (
            format!(r#"[{{"name": "a", "public_key": "{k1}", "produce": ["**"]}}]"#),
            "clients[0].produce[0]: \"**\": a '*' is allowed only at the end".into(),
        ),
        (
            format!(r#"[{{"name": "a", "public_key": "{k1}", "produce": [""]}}]"#),
            "clients[0].produce[0]: \"\": empty (write \"*\" for every topic)".into(),
        ),
        (
            format!(r#"[{{"name": "a", "public_key": "{k1}", "admin": "yes"}}]"#),
            "clients[0].admin: expected true or false, found a string".into(),
        ),
        (
            format!(
                r#"[{{"name": "a", "public_key": "{k1}"}}, {{"name": "a", "public_key": "{k2}"}}]"#
            ),
            "duplicate client name \"a\" (clients[0] and clients[1])".into(),
        ),
        (
            format!(
                r#"[{{"name": "a", "public_key": "{k1}"}}, {{"name": "b", "public_key": "{k1}"}}]"#
            ),
            format!("duplicate public_key {k1} (clients[0] and clients[1])"),
        ),
    ];
    for (number, (text, expected)) in cases.iter().enumerate() {
        match parse(text) {
            Ok(list) => panic!("case {number}: {text} parsed as {list:?}"),
            Err(line) => {
                assert_eq!(&line, expected, "case {number}: {text}");
                assert!(!line.contains('\n'), "case {number}: {line}");
            }
        }
    }
}

#[test]
fn clients_need_keyed_addresses() {
    assert!(check_clients_allowed(false, false).is_ok());
    assert!(check_clients_allowed(false, true).is_ok());
    assert!(check_clients_allowed(true, true).is_ok());
    assert_eq!(
        check_clients_allowed(true, false),
        Err("\"clients\" needs the addresses to carry \"public_key\" (PROTOCOL.md §11)".into())
    );
}

fn file_text(clients: Option<&str>) -> String {
    let clients = clients
        .map(|list| format!(r#", "clients": {list}"#))
        .unwrap_or_default();
    format!(r#"{{"addresses": [{{"ip": "127.0.0.1", "port": 1, "internal_port": 2}}]{clients}}}"#)
}

fn config_file(clients: Option<&str>) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(file_text(clients).as_bytes())
        .expect("write temp file");
    file
}

fn rewrite(file: &tempfile::NamedTempFile, text: &str) {
    std::fs::write(file.path(), text).expect("rewrite temp file");
}

fn names(list: &ClientList) -> Vec<&str> {
    list.clients()
        .iter()
        .map(|client| client.name.as_str())
        .collect()
}

#[test]
fn a_reload_swaps_in_a_good_list_and_keeps_the_old_one_on_a_bad_file() {
    let file = config_file(Some(&two_clients()));
    let first = reload_clients(file.path(), true).expect("a good file");
    assert_eq!(names(&first), ["alice", "ops"]);
    let shared = SharedClients::new(first);
    let before = shared.current();

    // Alice removed, bob added with alice's key, ops unchanged.
    let changed = format!(
        r#"[{{"name": "bob", "public_key": "{}", "consume": ["*"]}},
            {{"name": "ops", "public_key": "{}", "admin": true}}]"#,
        key(1),
        key(2)
    );
    rewrite(&file, &file_text(Some(&changed)));
    let now = shared.reload(file.path(), true).expect("a good file");
    assert_eq!(names(&now), ["bob", "ops"]);
    assert_eq!(names(&shared.current()), ["bob", "ops"]);
    // A reader that took the list before the swap keeps a whole, consistent list.
    assert_eq!(names(&before), ["alice", "ops"]);
    let bob = shared
        .current()
        .by_key(&[1; 32])
        .cloned()
        .expect("bob has key 1");
    assert_eq!(
        check(&bob.rights, &Operation::Get { topic: "x".into() }),
        Ok(())
    );
    assert_eq!(
        check(
            &bob.rights,
            &Operation::Put {
                topic: "x".into(),
                message: Payload::Text("m".into())
            }
        ),
        Err(Forbidden {
            right: Right::Produce,
            topic: Some("x".into())
        })
    );

    // Broken files: each refused with one line naming the file; the list stays.
    let path = file.path().display().to_string();
    let broken: Vec<(String, String)> = vec![
        ("{\"addresses\": [".into(), format!("{path}: invalid JSON")),
        (
            "[1, 2]".into(),
            format!("{path}: expected a JSON object, found a list"),
        ),
        (
            r#"{"clients": [{"name": "x", "public_key": "short"}]}"#.into(),
            format!("{path}: clients[0].public_key: a key is 40 Z85 characters, found 5"),
        ),
        (
            format!(
                r#"{{"clients": [{{"name": "x", "public_key": "{}", "produce": ["a*b"]}}]}}"#,
                key(9)
            ),
            format!("{path}: clients[0].produce[0]: \"a*b\": a '*' is allowed only at the end"),
        ),
    ];
    for (text, expected) in broken {
        rewrite(&file, &text);
        let error = shared
            .reload(file.path(), true)
            .expect_err("a broken file is refused")
            .to_string();
        assert!(error.starts_with(&expected), "{error:?} for {text:?}");
        assert!(!error.contains('\n'), "{error:?}");
        assert_eq!(names(&shared.current()), ["bob", "ops"], "after {text:?}");
    }

    // Clients on a node whose peers carry no keys: refused, the list stays.
    rewrite(&file, &format!(r#"{{"clients": {changed}}}"#));
    let error = shared
        .reload(file.path(), false)
        .expect_err("clients without peer keys")
        .to_string();
    assert!(error.contains("needs the addresses to carry"), "{error}");
    assert_eq!(names(&shared.current()), ["bob", "ops"]);

    // A file gone: refused, the list stays.
    let gone = file.path().to_path_buf();
    drop(file);
    let error = shared.reload(&gone, true).expect_err("no file").to_string();
    assert!(error.contains("cannot read"), "{error}");
    assert_eq!(names(&shared.current()), ["bob", "ops"]);
}

#[test]
fn a_reload_of_a_file_without_clients_admits_nobody() {
    let file = config_file(None);
    let shared = SharedClients::new(parse(&two_clients()).expect("valid clients"));
    let now = shared.reload(file.path(), true).expect("a good file");
    assert!(now.is_empty());
    assert!(shared.current().by_key(&[1; 32]).is_none());
}

#[test]
fn access_is_decided_by_the_user_id_key_and_the_rights() {
    let list = parse(&two_clients()).expect("valid clients");
    let get = |topic: &str| Operation::Get {
        topic: topic.into(),
    };
    let alice = list.by_key(&[1; 32]).expect("alice");
    assert_eq!(list.access(&key(1), &get("orders")), Access::Allowed(alice));
    let refusal = Forbidden {
        right: Right::Consume,
        topic: Some("audit".into()),
    };
    assert_eq!(
        list.access(&key(1), &get("audit")),
        Access::Forbidden(alice, refusal.clone())
    );
    let error = crate::protocol::ErrorInfo::from(refusal);
    assert_eq!(error.code, crate::protocol::ErrorCode::Forbidden);
    assert_eq!(error.message, "this client may not consume topic \"audit\"");
    assert_eq!(list.access(&key(3), &Operation::Status), Access::Unlisted);
    assert_eq!(list.access("", &Operation::Status), Access::Unlisted);
    assert_eq!(
        list.access(&key(2), &Operation::ListTopics),
        Access::Allowed(list.by_key(&[2; 32]).expect("ops"))
    );
    // What a body names before validation is judged the same way.
    assert_eq!(
        list.access_intent(&key(1), crate::protocol::Intent::Get { topic: "audit" }),
        list.access(&key(1), &get("audit"))
    );
    assert_eq!(
        list.access_intent(&key(1), crate::protocol::Intent::Get { topic: "orders" }),
        Access::Allowed(alice)
    );
}
