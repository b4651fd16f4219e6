//! The workload: producers putting unique messages and consumers popping them, concurrently,
//! through the client library (so its `client_id`/`seq` retries are under test too), each
//! operation recorded with its invocation and completion.
//!
//! A producer `p{i}` puts `p{i}-1`, `p{i}-2`, ... one at a time, each to a topic it picks at
//! random, so a message names its producer and its place in that producer's order. A
//! consumer pops from a random topic and pauses briefly when it finds the topic empty.
//! Every worker has its own client (its own session) and stops when told, after finishing
//! the operation in hand.
//!
//! Outcomes: a client `Ok` is `ok`; an error the client says may have taken effect, or one
//! this module cannot classify, is `unknown`; only errors that prove nothing happened
//! (`NO_SUCH_TOPIC`, `BAD_REQUEST`, ...) are `fail`. Erring towards unknown can only make
//! the checker more lenient, never blame the cluster wrongly.

use crate::history::{Event, History, Op, Outcome};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rrmq::client::{Client, ClientError, ClientOptions, NodeAddress};
use rrmq::protocol::Payload;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a patient worker's call may take: longer than most faults, so its outcomes are
/// known (an unknown outcome weakens the checks), bounded so a worker always comes back.
pub const PATIENT_DEADLINE: Duration = Duration::from_secs(20);

/// How long an impatient worker's call may take: shorter than many faults, so that unknown
/// outcomes, abandoned retries and late duplicates of them are exercised too.
pub const IMPATIENT_DEADLINE: Duration = Duration::from_millis(1500);

/// Options for the workload's clients, with the patient deadline.
pub fn client_options(ports: &[u16]) -> ClientOptions {
    let nodes = ports
        .iter()
        .map(|port| NodeAddress::new("127.0.0.1", *port).expect("a loopback address"))
        .collect();
    ClientOptions {
        nodes,
        attempt_timeout: Duration::from_millis(1000),
        deadline: PATIENT_DEADLINE,
        hedge_after: Some(rrmq::client::HEDGE_AFTER_DEFAULT),
        curve: None,
    }
}

pub fn connect(options: &ClientOptions) -> Client {
    Client::connect(options.clone()).expect("valid client options")
}

/// Whether an error proves the operation did not take effect.
fn outcome_of(error: &ClientError) -> Outcome {
    if error.is_outcome_unknown() {
        return Outcome::Unknown;
    }
    match error {
        ClientError::NoSuchTopic { .. }
        | ClientError::TopicExists { .. }
        | ClientError::Empty { .. }
        | ClientError::BadRequest { .. }
        | ClientError::TooLarge { .. } => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

fn text_of(payload: Payload) -> String {
    match payload {
        Payload::Text(text) => text,
        Payload::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Puts `value` to `topic` as `process`, recording both ends. Returns the outcome.
pub fn put(
    history: &History,
    client: &mut Client,
    process: &str,
    topic: &str,
    value: &str,
) -> Outcome {
    let id = history.next_id();
    history.record(Event::Invoke {
        id,
        process: process.to_string(),
        op: Op::Put,
        topic: topic.to_string(),
        value: Some(value.to_string()),
    });
    let result = client.put(topic, Payload::Text(value.to_string()));
    let (outcome, error) = match result {
        Ok(()) => (Outcome::Ok, None),
        Err(error) => (outcome_of(&error), Some(error.to_string())),
    };
    history.record(Event::Complete {
        id,
        process: process.to_string(),
        op: Op::Put,
        topic: topic.to_string(),
        outcome,
        value: Some(value.to_string()),
        error,
    });
    outcome
}

/// Pops from `topic` as `process`, recording both ends. Returns the outcome and, when `ok`,
/// the message or `None` if the topic was empty.
pub fn get(
    history: &History,
    client: &mut Client,
    process: &str,
    topic: &str,
) -> (Outcome, Option<String>) {
    let id = history.next_id();
    history.record(Event::Invoke {
        id,
        process: process.to_string(),
        op: Op::Get,
        topic: topic.to_string(),
        value: None,
    });
    let result = client.get(topic);
    let (outcome, value, error) = match result {
        Ok(message) => (Outcome::Ok, message.map(text_of), None),
        Err(error) => (outcome_of(&error), None, Some(error.to_string())),
    };
    history.record(Event::Complete {
        id,
        process: process.to_string(),
        op: Op::Get,
        topic: topic.to_string(),
        outcome,
        value: value.clone(),
        error,
    });
    (outcome, value)
}

/// Producer `index`: puts `p{index}-{n}` for n = 1, 2, ... until `stop`.
pub fn produce(
    history: &History,
    options: &ClientOptions,
    topics: &[String],
    index: usize,
    seed: u64,
    stop: &AtomicBool,
) {
    let process = format!("p{index}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client = connect(options);
    let mut number = 0u64;
    while !stop.load(Ordering::Relaxed) {
        number += 1;
        let topic = &topics[rng.gen_range(0..topics.len())];
        put(
            history,
            &mut client,
            &process,
            topic,
            &format!("{process}-{number}"),
        );
    }
}

/// Consumer `index`: pops from random topics until `stop`.
pub fn consume(
    history: &History,
    options: &ClientOptions,
    topics: &[String],
    index: usize,
    seed: u64,
    stop: &AtomicBool,
) {
    let process = format!("c{index}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client = connect(options);
    while !stop.load(Ordering::Relaxed) {
        let topic = &topics[rng.gen_range(0..topics.len())];
        if let (Outcome::Ok, None) = get(history, &mut client, &process, topic) {
            // Empty: let the producers get ahead instead of spinning on the leader.
            std::thread::sleep(Duration::from_millis(rng.gen_range(5..30)));
        }
    }
}
