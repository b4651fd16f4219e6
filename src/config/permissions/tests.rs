use super::*;
use crate::protocol::Payload;

fn pattern(text: &str) -> TopicPattern {
    match TopicPattern::parse(text) {
        Ok(pattern) => pattern,
        Err(reason) => panic!("{text:?} should parse: {reason}"),
    }
}

#[test]
fn patterns_match_exactly_or_by_prefix() {
    // (pattern, topic, matches)
    let cases: &[(&str, &str, bool)] = &[
        ("orders", "orders", true),
        ("orders", "orders2", false),
        ("orders", "order", false),
        ("orders", "Orders", false),
        ("orders", "", false),
        ("orders", " orders", false),
        ("orders*", "orders", true),
        ("orders*", "orders-eu", true),
        ("orders*", "orders*", true),
        ("orders*", "order", false),
        ("orders*", "ORDERS-eu", false),
        ("orders*", "", false),
        ("*", "", true),
        ("*", "anything", true),
        ("*", "*", true),
        ("*", "ünïcødé", true),
        ("ü*", "über", true),
        ("ü*", "u", false),
        // A prefix is a prefix of the text, not of bytes that split a character.
        ("é", "e\u{301}", false),
        ("日本*", "日本語", true),
        ("日本語", "日本", false),
        ("a b*", "a b c", true),
        ("a\u{0}*", "a\u{0}b", true),
        ("a\u{0}*", "a", false),
    ];
    for (number, (text, topic, expected)) in cases.iter().enumerate() {
        assert_eq!(
            pattern(text).matches(topic),
            *expected,
            "case {number}: {text:?} against {topic:?}"
        );
    }
}

#[test]
fn a_star_anywhere_but_the_end_and_the_empty_pattern_are_refused() {
    for text in ["", "**", "a**", "*a", "a*b", "*a*", "a*b*", "***"] {
        let refused = TopicPattern::parse(text);
        assert!(refused.is_err(), "{text:?} parsed as {refused:?}");
    }
}

#[test]
fn patterns_print_as_written() {
    for text in ["orders", "orders*", "*", "ü*"] {
        assert_eq!(pattern(text).to_string(), text);
    }
}

fn rights(produce: &[&str], consume: &[&str], admin: bool) -> ClientRights {
    ClientRights {
        produce: produce.iter().map(|text| pattern(text)).collect(),
        consume: consume.iter().map(|text| pattern(text)).collect(),
        admin,
    }
}

fn put(topic: &str) -> Operation {
    Operation::Put {
        topic: topic.into(),
        message: Payload::Text("m".into()),
    }
}

fn get(topic: &str) -> Operation {
    Operation::Get {
        topic: topic.into(),
    }
}

fn create(topic: &str) -> Operation {
    Operation::CreateTopic {
        topic: topic.into(),
    }
}

fn fault() -> Operation {
    Operation::Fault {
        drop_to: vec![1],
        drop_from: vec![],
        stop_zap_handler: false,
    }
}

#[test]
fn each_operation_needs_its_right() {
    let producer = rights(&["orders*"], &[], false);
    let consumer = rights(&[], &["orders*", "audit"], false);
    let admin = rights(&[], &[], true);
    let nobody = rights(&[], &[], false);
    let everything = rights(&["*"], &["*"], true);
    let refused = |right, topic: Option<&str>| {
        Err(Forbidden {
            right,
            topic: topic.map(str::to_string),
        })
    };
    // (who, operation, expected)
    let cases: Vec<(&str, &ClientRights, Operation, Result<(), Forbidden>)> = vec![
        ("producer", &producer, put("orders"), Ok(())),
        ("producer", &producer, put("orders-eu"), Ok(())),
        (
            "producer",
            &producer,
            put("audit"),
            refused(Right::Produce, Some("audit")),
        ),
        (
            "producer",
            &producer,
            get("orders"),
            refused(Right::Consume, Some("orders")),
        ),
        (
            "producer",
            &producer,
            create("orders-new"),
            refused(Right::Admin, Some("orders-new")),
        ),
        ("producer", &producer, Operation::ListTopics, Ok(())),
        ("producer", &producer, Operation::Status, Ok(())),
        ("producer", &producer, Operation::Stats, Ok(())),
        ("producer", &producer, fault(), refused(Right::Admin, None)),
        ("consumer", &consumer, get("orders-eu"), Ok(())),
        ("consumer", &consumer, get("audit"), Ok(())),
        (
            "consumer",
            &consumer,
            get("audit2"),
            refused(Right::Consume, Some("audit2")),
        ),
        (
            "consumer",
            &consumer,
            put("audit"),
            refused(Right::Produce, Some("audit")),
        ),
        ("admin", &admin, create("anything"), Ok(())),
        ("admin", &admin, fault(), Ok(())),
        (
            "admin",
            &admin,
            put("t"),
            refused(Right::Produce, Some("t")),
        ),
        (
            "admin",
            &admin,
            get("t"),
            refused(Right::Consume, Some("t")),
        ),
        ("admin", &admin, Operation::ListTopics, Ok(())),
        ("nobody", &nobody, Operation::ListTopics, Ok(())),
        ("nobody", &nobody, Operation::Status, Ok(())),
        ("nobody", &nobody, Operation::Stats, Ok(())),
        (
            "nobody",
            &nobody,
            put(""),
            refused(Right::Produce, Some("")),
        ),
        (
            "nobody",
            &nobody,
            get(""),
            refused(Right::Consume, Some("")),
        ),
        (
            "nobody",
            &nobody,
            create(""),
            refused(Right::Admin, Some("")),
        ),
        ("nobody", &nobody, fault(), refused(Right::Admin, None)),
        ("everything", &everything, put(""), Ok(())),
        ("everything", &everything, get("ü"), Ok(())),
        ("everything", &everything, create("x"), Ok(())),
        ("everything", &everything, fault(), Ok(())),
    ];
    for (number, (who, client, operation, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            check(client, &operation),
            expected,
            "case {number}: {who} {operation:?}"
        );
    }
}

#[test]
fn a_refusal_says_which_right_and_topic() {
    let client = rights(&[], &[], false);
    let refusal = check(&client, &put("orders")).expect_err("no produce right");
    assert_eq!(
        refusal.to_string(),
        "this client may not produce topic \"orders\""
    );
    let refusal = check(&client, &fault()).expect_err("no admin right");
    assert_eq!(refusal.to_string(), "this client lacks the admin right");
}
