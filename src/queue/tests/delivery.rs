//! Acknowledged delivery and batches (PROTOCOL.md §8 and §10): one test per rule, then a
//! seeded randomized run against the invariants every replica must keep.

use super::*;
use crate::protocol::{Delivery, TopicDetail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn text(message: &str) -> Payload {
    Payload::Text(message.to_string())
}

fn create_with(topic: &str, max_deliveries: Option<u64>, dead_letter: Option<&str>) -> Command {
    Command::CreateTopicWith {
        topic: topic.to_string(),
        settings: TopicSettings {
            max_deliveries,
            dead_letter: dead_letter.map(str::to_string),
        },
    }
}

fn put_batch(topic: &str, messages: &[&str]) -> Command {
    Command::PutBatch {
        topic: topic.to_string(),
        messages: messages.iter().map(|message| text(message)).collect(),
    }
}

fn lease(topic: &str, now_ms: u64, lease_ms: u64) -> Command {
    Command::GetLeased {
        topic: topic.to_string(),
        lease: LeaseTime::starting(now_ms, lease_ms),
    }
}

fn get_batch(topic: &str, max: u32, lease: Option<(u64, u64)>) -> Command {
    Command::GetBatch {
        topic: topic.to_string(),
        max,
        lease: lease.map(|(now_ms, lease_ms)| LeaseTime::starting(now_ms, lease_ms)),
    }
}

fn ack(topic: &str, receipt: &str) -> Command {
    Command::Ack {
        topic: topic.to_string(),
        receipt: receipt.to_string(),
    }
}

fn nack(topic: &str, receipt: &str) -> Command {
    Command::Nack {
        topic: topic.to_string(),
        receipt: receipt.to_string(),
    }
}

fn touch(topic: &str, receipt: &str, now_ms: u64, lease_ms: u64) -> Command {
    Command::Touch {
        topic: topic.to_string(),
        receipt: receipt.to_string(),
        lease: LeaseTime::starting(now_ms, lease_ms),
    }
}

fn end_leases(now_ms: u64) -> Command {
    Command::EndLeases { now_ms }
}

/// Applies one unkeyed command at the next index, checking invariants.
fn step(queue: &mut Queue, command: Command) -> Outcome {
    run(queue, &[plain(command)]).remove(0)
}

fn delivered(outcome: Outcome) -> Delivery {
    match outcome {
        Outcome::Delivered(delivery) => delivery,
        other => panic!("expected a leased message, got {other:?}"),
    }
}

fn code(outcome: &Outcome) -> Option<ErrorCode> {
    match outcome {
        Outcome::Failed(error) => Some(error.code),
        _ => None,
    }
}

fn texts(outcome: Outcome) -> Vec<String> {
    let payloads = match outcome {
        Outcome::Messages(messages) => messages,
        Outcome::Deliveries(deliveries) => deliveries.into_iter().map(|d| d.message).collect(),
        Outcome::Message(message) => vec![message],
        other => panic!("expected messages, got {other:?}"),
    };
    payloads
        .into_iter()
        .map(|payload| match payload {
            Payload::Text(text) => text,
            Payload::Binary(bytes) => panic!("binary {bytes:?}"),
        })
        .collect()
}

/// Pops everything ready in `topic`, oldest first.
fn drain(queue: &mut Queue, topic: &str) -> Vec<String> {
    match step(queue, get_batch(topic, BATCH_ITEMS_MAX_FOR_TESTS, None)) {
        Outcome::Failed(error) if error.code == ErrorCode::Empty => Vec::new(),
        outcome => texts(outcome),
    }
}

const BATCH_ITEMS_MAX_FOR_TESTS: u32 = 1_000;

fn detail(queue: &Queue, topic: &str) -> TopicDetail {
    queue
        .topic_details()
        .into_iter()
        .find(|detail| detail.name == topic)
        .unwrap_or_else(|| panic!("no topic {topic:?}"))
}

fn queue_with(topic: &str, messages: &[&str]) -> Queue {
    let mut queue = Queue::new(QueueConfig::default());
    step(&mut queue, create(topic));
    if !messages.is_empty() {
        assert_eq!(
            step(&mut queue, put_batch(topic, messages)),
            Outcome::Count(messages.len() as u64)
        );
    }
    queue
}

#[test]
fn a_leased_message_stays_invisible_until_acked_then_is_deleted() {
    let mut queue = queue_with("t", &["a", "b"]);
    let first = delivered(step(&mut queue, lease("t", 0, 1_000)));
    assert_eq!(first.message, text("a"));
    assert_eq!(first.deliveries, 1);
    assert_eq!(queue.queued("t"), Some(2), "a leased message is still held");
    let detail_now = detail(&queue, "t");
    assert_eq!((detail_now.ready, detail_now.leased), (1, 1));
    // Every other GET skips it.
    assert_eq!(step(&mut queue, get("t")), message("b"));
    assert_eq!(code(&step(&mut queue, get("t"))), Some(ErrorCode::Empty));
    assert_eq!(step(&mut queue, ack("t", &first.receipt)), Outcome::Done);
    assert_eq!(queue.stats().messages, 0);
    assert_eq!(queue.stats().payload_bytes, 0);
    // Already acknowledged: stale, and nothing changes.
    let before = queue.topics.clone();
    for command in [
        ack("t", &first.receipt),
        nack("t", &first.receipt),
        touch("t", &first.receipt, 5, 10),
    ] {
        assert_eq!(
            code(&step(&mut queue, command)),
            Some(ErrorCode::StaleReceipt)
        );
    }
    assert_eq!(queue.topics, before);
}

#[test]
fn receipts_never_issued_are_stale_and_look_alikes_too() {
    let mut queue = queue_with("t", &["a"]);
    let leased = delivered(step(&mut queue, lease("t", 0, 1_000)));
    let (index, seq) = leased.receipt.split_once('.').expect("index.seq");
    let look_alikes = [
        String::new(),
        "garbage".to_string(),
        format!("+{index}.{seq}"),
        format!("0{index}.{seq}"),
        format!("{index}.+{seq}"),
        format!("{}.{seq}", index.parse::<u64>().expect("number") + 1),
        format!("{index}.{seq}.0"),
    ];
    for (case, receipt) in look_alikes.iter().enumerate() {
        assert_eq!(
            code(&step(&mut queue, ack("t", receipt))),
            Some(ErrorCode::StaleReceipt),
            "case {case}: {receipt:?}"
        );
    }
    // On another topic, or a missing one.
    step(&mut queue, create("u"));
    assert_eq!(
        code(&step(&mut queue, ack("u", &leased.receipt))),
        Some(ErrorCode::StaleReceipt)
    );
    assert_eq!(
        code(&step(&mut queue, ack("missing", &leased.receipt))),
        Some(ErrorCode::NoSuchTopic)
    );
    assert_eq!(step(&mut queue, ack("t", &leased.receipt)), Outcome::Done);
}

#[test]
fn a_nacked_message_goes_back_before_everything_put_after_it() {
    let mut queue = queue_with("t", &["a", "b", "c"]);
    let a = delivered(step(&mut queue, lease("t", 0, 1_000)));
    let b = delivered(step(&mut queue, lease("t", 0, 1_000)));
    step(&mut queue, put("t", "d"));
    // Returned out of order: the order is still the put order.
    assert_eq!(step(&mut queue, nack("t", &b.receipt)), Outcome::Done);
    assert_eq!(step(&mut queue, nack("t", &a.receipt)), Outcome::Done);
    assert_eq!(detail(&queue, "t").ready, 4);
    let again = delivered(step(&mut queue, lease("t", 1, 1_000)));
    assert_eq!(again.message, text("a"));
    assert_eq!(again.deliveries, 2, "the second leased delivery of a");
    assert_ne!(again.receipt, a.receipt, "a new lease, a new receipt");
    assert_eq!(
        code(&step(&mut queue, ack("t", &a.receipt))),
        Some(ErrorCode::StaleReceipt),
        "the first holder's receipt no longer counts"
    );
    step(&mut queue, nack("t", &again.receipt));
    assert_eq!(drain(&mut queue, "t"), ["a", "b", "c", "d"]);
}

#[test]
fn a_lease_ends_with_the_first_end_leases_at_or_after_its_deadline() {
    let mut queue = queue_with("t", &["a", "b"]);
    let a = delivered(step(&mut queue, lease("t", 1_000, 100)));
    assert_eq!(queue.next_lease_deadline(), Some(1_100));
    assert_eq!(queue.leases_due(1_099).count(), 0);
    let due: Vec<(String, String, u64)> = queue
        .leases_due(1_100)
        .map(|(topic, receipt, deadline)| (topic.to_string(), receipt, deadline))
        .collect();
    assert_eq!(due, [("t".to_string(), a.receipt.clone(), 1_100)]);

    step(&mut queue, end_leases(1_099));
    assert_eq!(detail(&queue, "t").leased, 1, "not yet due");
    step(&mut queue, end_leases(1_100));
    assert_eq!(detail(&queue, "t").leased, 0);
    assert_eq!(queue.next_lease_deadline(), None);
    assert_eq!(queue.clock_ms(), 1_100);
    assert_eq!(
        code(&step(&mut queue, ack("t", &a.receipt))),
        Some(ErrorCode::StaleReceipt),
        "the lease ended"
    );
    let again = delivered(step(&mut queue, lease("t", 1_200, 100)));
    assert_eq!((again.message, again.deliveries), (text("a"), 2));
}

#[test]
fn a_clock_entry_advances_the_log_clock_and_nothing_else() {
    let mut queue = queue_with("t", &["a", "b"]);
    let a = delivered(step(&mut queue, lease("t", 1_000, 100)));
    let before = detail(&queue, "t");
    assert_eq!(
        step(&mut queue, Command::Clock { now_ms: 1_050 }),
        Outcome::Done
    );
    assert_eq!(queue.clock_ms(), 1_050);
    assert_eq!(
        detail(&queue, "t"),
        before,
        "no lease ends by a clock entry"
    );
    assert_eq!(queue.next_lease_deadline(), Some(1_100));
    // A clock never goes back, whatever an entry carries.
    step(&mut queue, Command::Clock { now_ms: 10 });
    assert_eq!(queue.clock_ms(), 1_050);
    // Snapshots carry it.
    let mut bytes = Vec::new();
    queue
        .encode_snapshot(&mut bytes)
        .expect("encoding into a Vec");
    let restored = Queue::decode_snapshot(queue.config().clone(), bytes.as_slice()).expect("own");
    assert_eq!(restored.clock_ms(), 1_050);
    assert_eq!(restored, queue);
    step(&mut queue, end_leases(1_100));
    assert_eq!(
        code(&step(&mut queue, ack("t", &a.receipt))),
        Some(ErrorCode::StaleReceipt)
    );
}

/// A new leader may propose a grant before it applied its predecessor's last entries, with
/// a clock behind theirs: the lease then starts at the log's clock and keeps its length.
#[test]
fn a_lease_stamped_behind_the_log_clock_starts_at_it() {
    let mut queue = queue_with("t", &["a", "b"]);
    step(&mut queue, Command::Clock { now_ms: 5_000 });
    delivered(step(&mut queue, lease("t", 4_000, 300)));
    assert_eq!(queue.next_lease_deadline(), Some(5_300));
    assert_eq!(queue.clock_ms(), 5_000);
    step(&mut queue, get_batch("t", 1, Some((4_900, 200))));
    assert_eq!(
        queue
            .leases_due(u64::MAX)
            .map(|due| due.2)
            .collect::<Vec<_>>(),
        [5_200, 5_300]
    );
    step(&mut queue, end_leases(5_299));
    assert_eq!(detail(&queue, "t").leased, 1);
    let receipt = queue
        .leases_due(u64::MAX)
        .next()
        .map(|due| due.1)
        .expect("a's lease is left");
    // A TOUCH too.
    step(&mut queue, touch("t", &receipt, 5_100, 1_000));
    assert_eq!(queue.next_lease_deadline(), Some(6_299));
}

#[test]
fn touch_moves_the_deadline_of_a_live_lease_only() {
    let mut queue = queue_with("t", &["a"]);
    let a = delivered(step(&mut queue, lease("t", 0, 100)));
    assert_eq!(
        step(&mut queue, touch("t", &a.receipt, 50, 450)),
        Outcome::Done
    );
    assert_eq!(queue.next_lease_deadline(), Some(500));
    step(&mut queue, end_leases(100));
    assert_eq!(detail(&queue, "t").leased, 1, "touched past 100");
    // A TOUCH may also shorten.
    assert_eq!(
        step(&mut queue, touch("t", &a.receipt, 150, 10)),
        Outcome::Done
    );
    step(&mut queue, end_leases(160));
    assert_eq!(detail(&queue, "t").leased, 0);
    assert_eq!(
        code(&step(&mut queue, touch("t", &a.receipt, 170, 10))),
        Some(ErrorCode::StaleReceipt)
    );
}

#[test]
fn end_leases_returns_due_messages_in_place_whatever_their_deadlines() {
    let mut queue = queue_with("t", &["a", "b", "c"]);
    step(&mut queue, lease("t", 0, 300)); // a, due last
    step(&mut queue, lease("t", 0, 100)); // b
    step(&mut queue, lease("t", 0, 200)); // c
    step(&mut queue, end_leases(1_000));
    assert_eq!(drain(&mut queue, "t"), ["a", "b", "c"]);
}

#[test]
fn the_delivery_limit_moves_a_message_to_the_end_of_its_dead_letter_topic() {
    let mut queue = Queue::new(QueueConfig::default());
    step(&mut queue, create_with("t", Some(2), Some("dlq")));
    step(&mut queue, put_batch("t", &["poison", "fine"]));
    // Two deliveries are allowed; the second return moves it.
    let first = delivered(step(&mut queue, lease("t", 0, 10)));
    step(&mut queue, nack("t", &first.receipt));
    assert_eq!(queue.queued("dlq"), None, "not yet");
    let second = delivered(step(&mut queue, lease("t", 0, 10)));
    assert_eq!(second.deliveries, 2);
    step(&mut queue, end_leases(10));
    assert_eq!(queue.topics(), ["t", "dlq"], "created when first needed");
    assert_eq!(drain(&mut queue, "t"), ["fine"]);
    assert_eq!(drain(&mut queue, "dlq"), ["poison"]);
    assert_eq!(detail(&queue, "t").discarded, 0);

    // To the end of an existing dead-letter topic, as a new message there.
    step(&mut queue, put("dlq", "already there"));
    step(&mut queue, put("t", "again"));
    for _ in 0..2 {
        let leased = delivered(step(&mut queue, lease("t", 20, 10)));
        step(&mut queue, nack("t", &leased.receipt));
    }
    let moved = delivered(step(&mut queue, lease("dlq", 30, 10)));
    assert_eq!(moved.message, text("already there"));
    let moved = delivered(step(&mut queue, lease("dlq", 30, 10)));
    assert_eq!((moved.message, moved.deliveries), (text("again"), 1));
}

#[test]
fn without_a_dead_letter_topic_the_message_is_discarded_and_counted() {
    let mut queue = Queue::new(QueueConfig::default());
    step(&mut queue, create_with("t", Some(1), None));
    step(&mut queue, put_batch("t", &["a", "b"]));
    let a = delivered(step(&mut queue, lease("t", 0, 10)));
    step(&mut queue, nack("t", &a.receipt));
    assert_eq!(
        detail(&queue, "t"),
        TopicDetail {
            name: "t".into(),
            ready: 1,
            leased: 0,
            max_deliveries: Some(1),
            dead_letter: None,
            discarded: 1,
        }
    );
    assert_eq!(queue.stats().messages, 1);
    assert_eq!(queue.stats().payload_bytes, 1);
    assert_eq!(drain(&mut queue, "t"), ["b"]);
}

#[test]
fn a_plain_get_of_a_returned_message_pops_it_and_never_dead_letters() {
    let mut queue = Queue::new(QueueConfig::default());
    step(&mut queue, create_with("t", Some(2), None));
    step(&mut queue, put("t", "a"));
    step(&mut queue, lease("t", 0, 10));
    step(&mut queue, end_leases(10));
    assert_eq!(step(&mut queue, get("t")), message("a"));
    assert_eq!(detail(&queue, "t").discarded, 0);
    assert_eq!(queue.stats().messages, 0);
}

#[test]
fn held_messages_lists_a_topic_in_its_order_leased_ones_included() {
    let mut queue = queue_with("t", &["a", "b", "c", "d"]);
    let a = delivered(step(&mut queue, lease("t", 0, 10)));
    let b = delivered(step(&mut queue, lease("t", 0, 10)));
    step(&mut queue, lease("t", 0, 10));
    step(&mut queue, nack("t", &b.receipt));
    step(&mut queue, put("t", "e"));
    let held = queue.held_messages("t").expect("a topic");
    let expected: Vec<Payload> = ["a", "b", "c", "d", "e"].map(text).to_vec();
    assert_eq!(held, expected);
    step(&mut queue, ack("t", &a.receipt));
    assert_eq!(queue.held_messages("t").expect("a topic"), expected[1..]);
    assert_eq!(queue.held_messages("missing"), None);
}

#[test]
fn invalid_settings_in_the_log_change_nothing() {
    let mut queue = Queue::new(QueueConfig::default());
    for (case, command) in [
        create_with("t", Some(0), None),
        create_with("t", None, Some("t")),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            code(&step(&mut queue, command)),
            Some(ErrorCode::BadRequest),
            "case {case}"
        );
    }
    assert!(queue.topics().is_empty());
    assert_eq!(
        code(&step(&mut queue, create_with("t", Some(3), Some("d")))),
        None
    );
    assert_eq!(
        code(&step(&mut queue, create_with("t", None, None))),
        Some(ErrorCode::TopicExists)
    );
}

#[test]
fn a_batch_put_is_all_or_none() {
    let config = QueueConfig {
        queued_bytes_max: 3 * charge(1),
        ..QueueConfig::default()
    };
    let mut queue = Queue::new(config);
    step(&mut queue, create("t"));
    assert_eq!(
        code(&step(&mut queue, put_batch("missing", &["a"]))),
        Some(ErrorCode::NoSuchTopic)
    );
    assert_eq!(
        step(&mut queue, put_batch("t", &["a", "b"])),
        Outcome::Count(2)
    );
    assert_eq!(
        code(&step(&mut queue, put_batch("t", &["c", "d"]))),
        Some(ErrorCode::Quota),
        "one would fit, two do not: none is queued"
    );
    assert_eq!(queue.queued("t"), Some(2));
    assert_eq!(step(&mut queue, put_batch("t", &["c"])), Outcome::Count(1));
    assert_eq!(drain(&mut queue, "t"), ["a", "b", "c"]);
}

#[test]
fn quotas_count_leased_messages() {
    let config = QueueConfig {
        queued_bytes_max: 2 * charge(1),
        ..QueueConfig::default()
    };
    let mut queue = Queue::new(config);
    step(&mut queue, create("t"));
    step(&mut queue, put_batch("t", &["a", "b"]));
    let a = delivered(step(&mut queue, lease("t", 0, 10)));
    assert_eq!(queue.queued_bytes(), 2 * charge(1));
    assert_eq!(
        code(&step(&mut queue, put("t", "c"))),
        Some(ErrorCode::Quota)
    );
    step(&mut queue, ack("t", &a.receipt));
    assert_eq!(step(&mut queue, put("t", "c")), Outcome::Done);
}

#[test]
fn a_batch_get_hands_out_up_to_max_in_order() {
    let mut queue = queue_with("t", &["a", "b", "c"]);
    assert_eq!(
        step(&mut queue, get_batch("t", 2, None)),
        Outcome::Messages(vec![text("a"), text("b")])
    );
    let leased = match step(&mut queue, get_batch("t", 5, Some((0, 10)))) {
        Outcome::Deliveries(deliveries) => deliveries,
        other => panic!("{other:?}"),
    };
    assert_eq!(leased.len(), 1);
    assert_eq!((&leased[0].message, leased[0].deliveries), (&text("c"), 1));
    assert_eq!(
        code(&step(&mut queue, get_batch("t", 5, Some((0, 10))))),
        Some(ErrorCode::Empty)
    );
    assert_eq!(
        code(&step(&mut queue, get_batch("missing", 1, None))),
        Some(ErrorCode::NoSuchTopic)
    );
    // One entry, many leases: the receipts differ.
    step(&mut queue, put_batch("t", &["d", "e", "f"]));
    let leased = match step(&mut queue, get_batch("t", 3, Some((0, 10)))) {
        Outcome::Deliveries(deliveries) => deliveries,
        other => panic!("{other:?}"),
    };
    let mut receipts: Vec<&str> = leased.iter().map(|d| d.receipt.as_str()).collect();
    receipts.sort();
    receipts.dedup();
    assert_eq!(receipts.len(), 3);
}

#[test]
fn a_batch_get_stops_before_its_reply_carries_more_than_the_batch_bytes() {
    let mut queue = Queue::new(QueueConfig::default());
    step(&mut queue, create("t"));
    let half = BATCH_MESSAGE_BYTES_MAX / 2;
    for fill in [1u8, 2, 3] {
        step(
            &mut queue,
            Command::Put {
                topic: "t".into(),
                message: Payload::Binary(vec![fill; half]),
            },
        );
    }
    match step(&mut queue, get_batch("t", 3, None)) {
        Outcome::Messages(messages) => assert_eq!(messages.len(), 2),
        other => panic!("{other:?}"),
    }
    // One message over the batch bytes is still handed out alone.
    step(
        &mut queue,
        Command::Put {
            topic: "u".into(),
            message: Payload::Binary(Vec::new()),
        },
    );
    match step(&mut queue, get_batch("t", 3, None)) {
        Outcome::Messages(messages) => assert_eq!(messages.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn receipt_lists_settle_each_live_lease_and_list_the_others() {
    let mut queue = queue_with("t", &["a", "b", "c"]);
    let a = delivered(step(&mut queue, lease("t", 0, 10)));
    let b = delivered(step(&mut queue, lease("t", 0, 10)));
    let c = delivered(step(&mut queue, lease("t", 0, 10)));
    let outcome = step(
        &mut queue,
        Command::AckBatch {
            topic: "t".into(),
            receipts: vec![a.receipt.clone(), "bogus".into(), a.receipt.clone()],
        },
    );
    assert_eq!(
        outcome,
        Outcome::Stale(vec!["bogus".into(), a.receipt.clone()]),
        "a repeated receipt is stale the second time"
    );
    let outcome = step(
        &mut queue,
        Command::NackBatch {
            topic: "t".into(),
            receipts: vec![c.receipt.clone(), a.receipt.clone(), b.receipt.clone()],
        },
    );
    assert_eq!(outcome, Outcome::Stale(vec![a.receipt.clone()]));
    assert_eq!(drain(&mut queue, "t"), ["b", "c"]);
}

#[test]
fn a_retried_leased_get_gets_the_same_message_and_receipt() {
    let mut queue = queue_with("t", &["a", "b"]);
    let commands = [
        keyed("c", 1, lease("t", 0, 100)),
        keyed("c", 1, lease("t", 5, 100)),
    ];
    let outcomes = run(&mut queue, &commands);
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(detail(&queue, "t").leased, 1, "one lease, not two");
    assert_eq!(
        queue.next_lease_deadline(),
        Some(100),
        "the first entry's deadline"
    );
    // A retried ACK answers Done again, not STALE_RECEIPT.
    let receipt = delivered(outcomes[0].clone()).receipt;
    let outcomes = run(
        &mut queue,
        &[
            keyed("c", 2, ack("t", &receipt)),
            keyed("c", 2, ack("t", &receipt)),
        ],
    );
    assert_eq!(outcomes, [Outcome::Done, Outcome::Done]);
}

#[test]
fn a_retried_batch_takes_effect_once_and_gets_the_first_reply() {
    let mut queue = queue_with("t", &[]);
    let batch = keyed("c", 1, put_batch("t", &["a", "b"]));
    let outcomes = run(&mut queue, &[batch.clone(), batch]);
    assert_eq!(outcomes, [Outcome::Count(2), Outcome::Count(2)]);
    assert_eq!(queue.queued("t"), Some(2));
    let get = keyed("c", 2, get_batch("t", 5, Some((0, 10))));
    let outcomes = run(&mut queue, &[get.clone(), get]);
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(detail(&queue, "t").leased, 2);
    // Kept replies are counted against the session bytes: messages and receipts.
    let kept = queue.sessions.get("c").expect("session").outcome.clone();
    assert_eq!(
        session::session_bytes("c", &kept),
        1 + 2
            + match &*kept {
                Outcome::Deliveries(deliveries) => {
                    deliveries.iter().map(|d| d.receipt.len()).sum::<usize>()
                }
                other => panic!("{other:?}"),
            }
    );
}

#[test]
fn snapshots_carry_leases_settings_counts_and_the_clock() {
    let mut queue = Queue::new(config(3));
    run(
        &mut queue,
        &[
            plain(create_with("t", Some(2), Some("dlq"))),
            plain(create_with("u", Some(1), None)),
            plain(put_batch("t", &["a", "b", "c", "d"])),
            plain(put_batch("u", &["x", "y"])),
        ],
    );
    let a = delivered(step(&mut queue, lease("t", 100, 50)));
    step(&mut queue, nack("t", &a.receipt));
    step(&mut queue, get_batch("t", 2, Some((110, 500))));
    step(&mut queue, lease("u", 120, 10));
    step(&mut queue, end_leases(130)); // x discarded
    run(&mut queue, &[keyed("k", 1, lease("u", 140, 1_000))]);

    let mut bytes = Vec::new();
    queue
        .encode_snapshot(&mut bytes)
        .expect("encoding into a Vec");
    let mut restored = Queue::decode_snapshot(config(3), bytes.as_slice()).expect("own");
    restored.check_invariants();
    assert_eq!(restored, queue);
    assert_eq!(restored.digest(), queue.digest());
    assert_eq!(restored.topic_details(), queue.topic_details());
    assert_eq!(restored.clock_ms(), 140);
    assert_eq!(restored.next_lease_deadline(), queue.next_lease_deadline());
    // And they go on the same way.
    let rest = [
        plain(end_leases(700)),
        plain(get_batch("t", 10, Some((700, 10)))),
        plain(end_leases(710)),
        plain(get_batch("t", 10, None)),
        plain(get_batch("dlq", 10, None)),
    ];
    assert_eq!(run(&mut restored, &rest), run(&mut queue, &rest));
    assert_eq!(restored, queue);
}

#[test]
fn a_format_1_snapshot_is_still_read() {
    let mut queue = Queue::new(config(3));
    run(
        &mut queue,
        &[
            plain(create("t")),
            plain(create("empty")),
            plain(put("t", "a")),
            keyed("k", 1, put("t", "b")),
        ],
    );
    // The format 1 layout, written by hand as the previous release did.
    let mut bytes = Vec::new();
    rmp_serde::encode::write(&mut bytes, &1u32).expect("into a Vec");
    let topics: Vec<(&str, Vec<Payload>)> =
        vec![("t", vec![text("a"), text("b")]), ("empty", Vec::new())];
    let sessions = vec![("k", 1u64, Outcome::Done, 4u64)];
    rmp_serde::encode::write(&mut bytes, &(4u64, topics, sessions)).expect("into a Vec");
    let restored = Queue::decode_snapshot(config(3), bytes.as_slice()).expect("format 1");
    restored.check_invariants();
    assert_eq!(restored, queue);
}

#[test]
fn snapshots_with_inconsistent_leases_are_refused() {
    let mut queue = queue_with("t", &["a", "b"]);
    step(&mut queue, lease("t", 0, 10));
    let good = queue.clone();
    type Corruption = Box<dyn Fn(&mut Queue)>;
    let cases: Vec<(&str, Corruption)> = vec![
        (
            "lease at a fresh seq",
            Box::new(|queue: &mut Queue| {
                let lease = queue.topics[0].leased.pop_first().expect("one").1;
                queue.topics[0].leased.insert(1, lease);
            }),
        ),
        (
            "leased and returned",
            Box::new(|queue: &mut Queue| {
                let lease = queue.topics[0].leased[&0].clone();
                queue.topics[0].returned.insert(
                    0,
                    topic::Returned {
                        message: lease.message,
                        deliveries: 1,
                    },
                );
            }),
        ),
        (
            "zero deliveries",
            Box::new(|queue: &mut Queue| {
                queue.topics[0].leased.get_mut(&0).expect("one").deliveries = 0;
            }),
        ),
        (
            "own dead letter",
            Box::new(|queue: &mut Queue| {
                queue.topics[0].settings.dead_letter = Some("t".into());
            }),
        ),
        (
            "max_deliveries 0",
            Box::new(|queue: &mut Queue| {
                queue.topics[0].settings.max_deliveries = Some(0);
            }),
        ),
    ];
    for (name, corrupt) in cases {
        let mut broken = good.clone();
        corrupt(&mut broken);
        let mut bytes = Vec::new();
        broken.encode_snapshot(&mut bytes).expect("into a Vec");
        assert!(
            matches!(
                Queue::decode_snapshot(QueueConfig::default(), bytes.as_slice()),
                Err(SnapshotError::Invalid(_))
            ),
            "case {name}"
        );
    }
}

// ---- Randomized run: invariants of acknowledged delivery ----

/// What the test knows about one lease it was granted.
struct Held {
    topic: &'static str,
    id: u64,
    deadline_ms: u64,
}

/// The test's own bookkeeping, from the outcomes alone.
#[derive(Default)]
struct Ledger {
    next_id: u64,
    /// Messages acknowledged by a PUT, by id.
    put: BTreeSet<u64>,
    /// ACKed (each at most once), popped by a plain GET.
    acked: BTreeSet<u64>,
    popped: BTreeSet<u64>,
    /// Leases believed live, by receipt.
    live: HashMap<String, Held>,
    /// Receipts whose lease is known to be over.
    dead: Vec<String>,
}

fn id_of(payload: &Payload) -> u64 {
    match payload {
        Payload::Text(text) => text
            .strip_prefix('m')
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("not a test message: {text:?}")),
        Payload::Binary(_) => panic!("the run puts text only"),
    }
}

const TOPICS: [&str; 3] = ["t", "u", "v"];
const DEAD_LETTER: &str = "dlq";

/// Every message the queue holds, as `(topic, seq, id, leased)`.
fn held(queue: &Queue) -> Vec<(String, u64, u64, bool)> {
    let mut all = Vec::new();
    for topic in &queue.topics {
        let fresh_first = topic.next_seq - topic.messages.len() as u64;
        for (offset, message) in topic.messages.iter().enumerate() {
            let id = id_of(&message.to_payload());
            all.push((topic.name.clone(), fresh_first + offset as u64, id, false));
        }
        for (&seq, returned) in &topic.returned {
            all.push((topic.name.clone(), seq, id_of(&returned.message), false));
        }
        for (&seq, lease) in &topic.leased {
            all.push((topic.name.clone(), seq, id_of(&lease.message), true));
        }
    }
    all
}

fn check_ledger(queue: &Queue, ledger: &Ledger, seed: u64, step_number: usize) {
    let context = format!("seed {seed}, step {step_number}");
    let held = held(queue);
    // No message is held twice (so never by two leases), none is both held and gone.
    let mut ids: Vec<u64> = held.iter().map(|(_, _, id, _)| *id).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "{context}: a message is held twice");
    for id in &ids {
        assert!(ledger.put.contains(id), "{context}: phantom m{id}");
        assert!(
            !ledger.acked.contains(id),
            "{context}: m{id} acked yet held"
        );
        assert!(
            !ledger.popped.contains(id),
            "{context}: m{id} popped yet held"
        );
    }
    // Every message put is acked once, popped, still held, or discarded: the counts add up.
    let discarded: u64 = queue.topics.iter().map(|topic| topic.discarded).sum();
    assert_eq!(
        ledger.put.len() as u64,
        ledger.acked.len() as u64 + ledger.popped.len() as u64 + ids.len() as u64 + discarded,
        "{context}: messages lost or invented"
    );
    // The leases the test believes live are exactly the queue's.
    let mut leased: Vec<u64> = held
        .iter()
        .filter(|(_, _, _, leased)| *leased)
        .map(|(_, _, id, _)| *id)
        .collect();
    leased.sort_unstable();
    let mut believed: Vec<u64> = ledger.live.values().map(|held| held.id).collect();
    believed.sort_unstable();
    assert_eq!(leased, believed, "{context}: live leases");
    // Within a source topic, seq order is put order, so ready messages leave oldest first.
    for topic in TOPICS {
        let mut in_topic: Vec<(u64, u64)> = held
            .iter()
            .filter(|(name, ..)| name == topic)
            .map(|(_, seq, id, _)| (*seq, *id))
            .collect();
        in_topic.sort_unstable();
        assert!(
            in_topic.windows(2).all(|pair| pair[0].1 < pair[1].1),
            "{context}: topic {topic} out of put order: {in_topic:?}"
        );
    }
}

/// The id a plain GET of `topic` must hand out: the oldest ready message.
fn oldest_ready(queue: &Queue, topic: &str) -> Option<u64> {
    held(queue)
        .into_iter()
        .filter(|(name, _, _, leased)| name == topic && !leased)
        .min_by_key(|(_, seq, _, _)| *seq)
        .map(|(_, _, id, _)| id)
}

fn random_receipts(rng: &mut ChaCha8Rng, ledger: &Ledger, count: usize) -> Vec<String> {
    let live: Vec<&String> = ledger.live.keys().collect();
    (0..count)
        .map(|_| match rng.gen_range(0..10) {
            0..=6 if !live.is_empty() => {
                let mut sorted = live.clone();
                sorted.sort();
                sorted[rng.gen_range(0..sorted.len())].clone()
            }
            0..=8 if !ledger.dead.is_empty() => {
                ledger.dead[rng.gen_range(0..ledger.dead.len())].clone()
            }
            _ => format!("{}.{}", rng.gen_range(0..50), rng.gen_range(0..50)),
        })
        .collect()
}

/// No message is handed out more often than its topic's `max_deliveries` (the randomized
/// run creates "t" with 3 and "u" with 2).
fn check_delivery_limit(topic: &str, delivery: &Delivery, context: &str) {
    let limit = match topic {
        "t" => 3,
        "u" => 2,
        _ => u64::MAX,
    };
    assert!(
        (1..=limit).contains(&delivery.deliveries),
        "{context}: delivery {} of a message in {topic}",
        delivery.deliveries
    );
}

/// Ends the lease `receipt` in the ledger; false if it was not live.
fn settle(ledger: &mut Ledger, context: &str, receipt: &String, acked: bool) -> bool {
    match ledger.live.remove(receipt) {
        Some(held) => {
            if acked {
                assert!(
                    ledger.acked.insert(held.id),
                    "{context}: m{} acked twice",
                    held.id
                );
            }
            ledger.dead.push(receipt.clone());
            true
        }
        None => false,
    }
}

/// Applies `command`, checks its outcome against the ledger, and updates the ledger.
fn apply_and_record(
    queue: &mut Queue,
    ledger: &mut Ledger,
    command: LoggedCommand,
    context: &str,
) -> Outcome {
    let topic_of = |name: &str| -> &'static str {
        TOPICS
            .into_iter()
            .chain([DEAD_LETTER])
            .find(|topic| *topic == name)
            .expect("a known topic")
    };
    let expected_plain_get = match &command.command {
        Command::Get { topic }
        | Command::GetBatch {
            topic, lease: None, ..
        } => oldest_ready(queue, topic),
        _ => None,
    };
    let outcome = run(queue, std::slice::from_ref(&command)).remove(0);
    match (&command.command, &outcome) {
        (Command::Put { message, .. }, Outcome::Done) => {
            ledger.put.insert(id_of(message));
        }
        (Command::PutBatch { messages, .. }, Outcome::Count(count)) => {
            assert_eq!(*count, messages.len() as u64);
            ledger.put.extend(messages.iter().map(id_of));
        }
        (Command::Get { .. }, Outcome::Message(message)) => {
            assert_eq!(
                Some(id_of(message)),
                expected_plain_get,
                "{context}: oldest first"
            );
            ledger.popped.insert(id_of(message));
        }
        (Command::GetBatch { lease: None, .. }, Outcome::Messages(messages)) => {
            assert_eq!(
                messages.first().map(id_of),
                expected_plain_get,
                "{context}: oldest first"
            );
            ledger.popped.extend(messages.iter().map(id_of));
        }
        (Command::GetLeased { topic, lease }, Outcome::Delivered(delivery)) => {
            check_delivery_limit(topic, delivery, context);
            let held = Held {
                topic: topic_of(topic),
                id: id_of(&delivery.message),
                deadline_ms: lease.deadline_ms,
            };
            assert!(ledger.live.insert(delivery.receipt.clone(), held).is_none());
        }
        (
            Command::GetBatch {
                topic,
                lease: Some(lease),
                ..
            },
            Outcome::Deliveries(deliveries),
        ) => {
            for delivery in deliveries {
                check_delivery_limit(topic, delivery, context);
                let held = Held {
                    topic: topic_of(topic),
                    id: id_of(&delivery.message),
                    deadline_ms: lease.deadline_ms,
                };
                assert!(ledger.live.insert(delivery.receipt.clone(), held).is_none());
            }
        }
        (Command::Ack { topic, receipt }, outcome)
        | (Command::Nack { topic, receipt }, outcome) => {
            let live = ledger
                .live
                .get(receipt)
                .is_some_and(|held| held.topic == topic);
            assert_eq!(*outcome == Outcome::Done, live, "{context}: {receipt:?}");
            if live {
                settle(
                    ledger,
                    context,
                    receipt,
                    matches!(command.command, Command::Ack { .. }),
                );
            } else {
                assert!(
                    matches!(
                        code(outcome),
                        Some(ErrorCode::StaleReceipt | ErrorCode::NoSuchTopic)
                    ),
                    "{context}: {outcome:?}"
                );
            }
        }
        (Command::AckBatch { receipts, .. } | Command::NackBatch { receipts, .. }, outcome) => {
            if code(outcome) == Some(ErrorCode::NoSuchTopic) {
                assert!(
                    receipts
                        .iter()
                        .all(|receipt| !ledger.live.contains_key(receipt)),
                    "{context}"
                );
                return outcome.clone();
            }
            let acked = matches!(command.command, Command::AckBatch { .. });
            let mut stale = Vec::new();
            for receipt in receipts {
                if !settle(ledger, context, receipt, acked) {
                    stale.push(receipt.clone());
                }
            }
            assert_eq!(*outcome, Outcome::Stale(stale), "{context}");
        }
        (Command::Touch { receipt, lease, .. }, outcome) => match ledger.live.get_mut(receipt) {
            Some(held) => {
                assert_eq!(*outcome, Outcome::Done, "{context}");
                held.deadline_ms = lease.deadline_ms;
            }
            None => assert!(
                matches!(
                    code(outcome),
                    Some(ErrorCode::StaleReceipt | ErrorCode::NoSuchTopic)
                ),
                "{context}: {outcome:?}"
            ),
        },
        (Command::EndLeases { now_ms }, Outcome::Done) => {
            let mut ended: Vec<String> = ledger
                .live
                .iter()
                .filter(|(_, held)| held.deadline_ms <= *now_ms)
                .map(|(receipt, _)| receipt.clone())
                .collect();
            ended.sort();
            for receipt in ended {
                settle(ledger, context, &receipt, false);
            }
        }
        (_, Outcome::Failed(error)) => assert!(
            matches!(error.code, ErrorCode::Empty | ErrorCode::NoSuchTopic),
            "{context}: {error:?}"
        ),
        (command, outcome) => panic!("{context}: {command:?} answered {outcome:?}"),
    }
    outcome
}

#[test]
fn randomized_leases_keep_every_message_accounted_for() {
    let seeds: u64 = std::env::var("RRMQ_QUEUE_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(24);
    for seed in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut queue = Queue::new(QueueConfig::default());
        let mut ledger = Ledger::default();
        run(
            &mut queue,
            &[
                plain(create_with("t", Some(3), Some(DEAD_LETTER))),
                plain(create_with("u", Some(2), None)),
                plain(create("v")),
            ],
        );
        let mut now_ms = 0u64;
        let mut seq = 0u64;
        for step_number in 0..600 {
            now_ms += rng.gen_range(0..20);
            let topic = if rng.gen_range(0..8) == 0 {
                DEAD_LETTER
            } else {
                TOPICS[rng.gen_range(0..TOPICS.len())]
            };
            let lease_time = LeaseTime::starting(now_ms, rng.gen_range(1..60));
            let command = match rng.gen_range(0..100) {
                0..=19 => {
                    let count = rng.gen_range(1..4);
                    let messages = (0..count)
                        .map(|_| {
                            ledger.next_id += 1;
                            text(&format!("m{}", ledger.next_id))
                        })
                        .collect();
                    Command::PutBatch {
                        topic: topic.to_string(),
                        messages,
                    }
                }
                20..=24 => {
                    ledger.next_id += 1;
                    put(topic, &format!("m{}", ledger.next_id))
                }
                25..=29 => get(topic),
                30..=32 => get_batch(topic, rng.gen_range(1..4), None),
                33..=49 => Command::GetLeased {
                    topic: topic.to_string(),
                    lease: lease_time,
                },
                50..=57 => Command::GetBatch {
                    topic: topic.to_string(),
                    max: rng.gen_range(1..5),
                    lease: Some(lease_time),
                },
                58..=69 => {
                    let receipt = random_receipts(&mut rng, &ledger, 1).remove(0);
                    let topic = ledger.live.get(&receipt).map_or(topic, |held| held.topic);
                    if rng.gen_bool(0.6) {
                        ack(topic, &receipt)
                    } else {
                        nack(topic, &receipt)
                    }
                }
                70..=77 => {
                    let count = rng.gen_range(1..5);
                    let receipts = random_receipts(&mut rng, &ledger, count);
                    let topic = receipts
                        .iter()
                        .find_map(|receipt| ledger.live.get(receipt))
                        .map_or(topic, |held| held.topic);
                    // Receipts of other topics are stale here: the ledger only settles
                    // those of this topic.
                    let receipts: Vec<String> = receipts
                        .into_iter()
                        .filter(|receipt| {
                            ledger
                                .live
                                .get(receipt)
                                .is_none_or(|held| held.topic == topic)
                        })
                        .collect();
                    if receipts.is_empty() {
                        end_leases(now_ms)
                    } else if rng.gen_bool(0.5) {
                        Command::AckBatch {
                            topic: topic.to_string(),
                            receipts,
                        }
                    } else {
                        Command::NackBatch {
                            topic: topic.to_string(),
                            receipts,
                        }
                    }
                }
                78..=85 => {
                    let receipt = random_receipts(&mut rng, &ledger, 1).remove(0);
                    let topic = ledger.live.get(&receipt).map_or(topic, |held| held.topic);
                    Command::Touch {
                        topic: topic.to_string(),
                        receipt,
                        lease: lease_time,
                    }
                }
                _ => end_leases(now_ms),
            };
            let context = format!("seed {seed}, step {step_number}: {command:?}");
            let keyed_command = if rng.gen_bool(0.3) {
                seq += 1;
                keyed("client", seq, command)
            } else {
                plain(command)
            };
            let first = apply_and_record(&mut queue, &mut ledger, keyed_command.clone(), &context);
            check_ledger(&queue, &ledger, seed, step_number);
            // A retry of a keyed command: the first reply again, and no change.
            if keyed_command.session.is_some() && rng.gen_bool(0.3) {
                let topics = queue.topics.clone();
                let again = run(&mut queue, std::slice::from_ref(&keyed_command)).remove(0);
                assert_eq!(again, first, "{context}: retry");
                assert_eq!(
                    queue.topics, topics,
                    "{context}: a retry changed the topics"
                );
            }
            // Now and then, go on from a snapshot instead.
            if rng.gen_range(0..50) == 0 {
                let mut bytes = Vec::new();
                queue.encode_snapshot(&mut bytes).expect("into a Vec");
                let restored = Queue::decode_snapshot(QueueConfig::default(), bytes.as_slice())
                    .expect("own snapshot");
                assert_eq!(restored, queue, "{context}: snapshot round trip");
                assert_eq!(restored.digest(), queue.digest(), "{context}");
                queue = restored;
            }
        }
        // In the end every lease ends, and every message is accounted for.
        let last = now_ms + 1_000;
        apply_and_record(
            &mut queue,
            &mut ledger,
            plain(end_leases(last)),
            &format!("seed {seed}: last end"),
        );
        check_ledger(&queue, &ledger, seed, usize::MAX);
        assert!(ledger.live.is_empty());
        assert_eq!(queue.next_lease_deadline(), None);
    }
}
