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
//! A leasing consumer `l{i}` takes messages under a lease (PROTOCOL.md §8-§10: sometimes a
//! batch, sometimes a blocking GET), and for each one either ACKs it (sometimes several
//! receipts in one request), NACKs it, or "crashes": drops the receipt without a word, so
//! the message must come back when the lease ends. Some dropped receipts are ACKed much
//! later, as a consumer that woke up would, to see stale receipts refused.
//!
//! Outcomes: a client `Ok` is `ok`; an error the client says may have taken effect, or one
//! this module cannot classify, is `unknown`; only errors that prove nothing happened
//! (`NO_SUCH_TOPIC`, `BAD_REQUEST`, ...) are `fail`. Erring towards unknown can only make
//! the checker more lenient, never blame the cluster wrongly.

use crate::history::{Event, History, LeaseRequest, Leased, Op, Outcome};
use crate::nodes::Directory;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rrmq::client::{Client, ClientError, ClientOptions, FetchOptions, Fetched, NodeAddress};
use rrmq::protocol::Payload;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

/// A worker's client that follows the membership: when the [`Directory`] changes (a node
/// added or removed), the next operation goes through a new client of the current
/// members. Only between operations, so no retry in flight is cut short; the new client's
/// session is a new one, which the checker does not mind.
pub struct Following<'a> {
    directory: &'a Directory,
    options: ClientOptions,
    epoch: u64,
    client: Client,
}

impl<'a> Following<'a> {
    /// A client with `options` as given; from the directory's first change on, with its
    /// addresses.
    pub fn new(directory: &'a Directory, options: &ClientOptions) -> Following<'a> {
        Following {
            directory,
            options: options.clone(),
            epoch: directory.epoch(),
            client: connect(options),
        }
    }

    pub fn client(&mut self) -> &mut Client {
        if self.directory.epoch() != self.epoch {
            let (epoch, nodes) = self.directory.get();
            self.epoch = epoch;
            self.client = connect(&ClientOptions {
                nodes,
                ..self.options.clone()
            });
        }
        &mut self.client
    }
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
        lease: None,
        receipts: None,
        many: false,
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
        delivered: None,
        stale: None,
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
        lease: None,
        receipts: None,
        many: false,
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
        delivered: None,
        stale: None,
    });
    (outcome, value)
}

/// Producer `index`: puts `p{index}-{n}` for n = 1, 2, ... until `stop`.
pub fn produce(
    history: &History,
    directory: &Directory,
    options: &ClientOptions,
    topics: &[String],
    index: usize,
    seed: u64,
    stop: &AtomicBool,
) {
    let process = format!("p{index}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client = Following::new(directory, options);
    let mut number = 0u64;
    while !stop.load(Ordering::Relaxed) {
        number += 1;
        let topic = &topics[rng.gen_range(0..topics.len())];
        put(
            history,
            client.client(),
            &process,
            topic,
            &format!("{process}-{number}"),
        );
    }
}

/// Consumer `index`: pops from random topics until `stop`.
pub fn consume(
    history: &History,
    directory: &Directory,
    options: &ClientOptions,
    topics: &[String],
    index: usize,
    seed: u64,
    stop: &AtomicBool,
) {
    let process = format!("c{index}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client = Following::new(directory, options);
    while !stop.load(Ordering::Relaxed) {
        let topic = &topics[rng.gen_range(0..topics.len())];
        if let (Outcome::Ok, None) = get(history, client.client(), &process, topic) {
            // Empty: let the producers get ahead instead of spinning on the leader.
            std::thread::sleep(Duration::from_millis(rng.gen_range(5..30)));
        }
    }
}

/// A leased GET of `topic` as `process`, recording both ends. Returns the outcome and what
/// it handed out (empty when the topic was).
pub fn lease(
    history: &History,
    client: &mut Client,
    process: &str,
    topic: &str,
    request: LeaseRequest,
) -> (Outcome, Vec<Leased>) {
    let id = history.next_id();
    history.record(Event::Invoke {
        id,
        process: process.to_string(),
        op: Op::Lease,
        topic: topic.to_string(),
        value: None,
        lease: Some(request),
        receipts: None,
        many: false,
    });
    let options = FetchOptions {
        lease_ms: Some(request.lease_ms),
        wait_ms: request.wait_ms,
        max: request.max,
    };
    let leased = |delivery: rrmq::client::Delivery| Leased {
        value: text_of(delivery.message),
        receipt: delivery.receipt,
        deliveries: delivery.deliveries,
    };
    let (outcome, delivered, error) = match client.fetch(topic, options) {
        Ok(Fetched::Empty) => (Outcome::Ok, Vec::new(), None),
        Ok(Fetched::Delivered(delivery)) => (Outcome::Ok, vec![leased(delivery)], None),
        Ok(Fetched::Deliveries(deliveries)) => (
            Outcome::Ok,
            deliveries.into_iter().map(leased).collect(),
            None,
        ),
        // A reply of the wrong shape: whatever it was, this consumer cannot use it.
        Ok(other) => (
            Outcome::Unknown,
            Vec::new(),
            Some(format!("unexpected reply to a leased GET: {other:?}")),
        ),
        Err(error) => (outcome_of(&error), Vec::new(), Some(error.to_string())),
    };
    history.record(Event::Complete {
        id,
        process: process.to_string(),
        op: Op::Lease,
        topic: topic.to_string(),
        outcome,
        value: None,
        error,
        delivered: Some(delivered.clone()),
        stale: None,
    });
    (outcome, delivered)
}

/// ACKs or NACKs `receipts` of `topic` as `process`, recording both ends: one receipt in
/// the single form unless `many`, else the `receipts` list. Returns the outcome.
pub fn settle(
    history: &History,
    client: &mut Client,
    process: &str,
    op: Op,
    topic: &str,
    receipts: &[String],
    many: bool,
) -> Outcome {
    let many = many || receipts.len() != 1;
    let id = history.next_id();
    history.record(Event::Invoke {
        id,
        process: process.to_string(),
        op,
        topic: topic.to_string(),
        value: None,
        lease: None,
        receipts: Some(receipts.to_vec()),
        many,
    });
    let result = match (op, many) {
        (Op::Ack, true) => client.ack_many(topic, receipts),
        (Op::Nack, true) => client.nack_many(topic, receipts),
        (Op::Ack, false) => client.ack(topic, &receipts[0]).map(|()| Vec::new()),
        (Op::Nack, false) => client.nack(topic, &receipts[0]).map(|()| Vec::new()),
        _ => unreachable!("settle takes ACK or NACK"),
    };
    let (outcome, stale, error) = match result {
        Ok(stale) => (Outcome::Ok, Some(stale), None),
        Err(ClientError::StaleReceipt { receipt, .. }) => (
            Outcome::Fail,
            Some(vec![receipt]),
            Some("STALE_RECEIPT".to_string()),
        ),
        Err(error) => (outcome_of(&error), None, Some(error.to_string())),
    };
    history.record(Event::Complete {
        id,
        process: process.to_string(),
        op,
        topic: topic.to_string(),
        outcome,
        value: None,
        error,
        delivered: None,
        stale,
    });
    outcome
}

/// Lease lengths a leasing consumer picks from: short ones end often (redeliveries), long
/// ones give the checker's holder rule room to bite.
const LEASE_MS: [u64; 4] = [300, 1000, 2500, 4000];

/// Leasing consumer `index`: leases from random topics of `topics` until `stop`, settling
/// each message as the module docs say. On `limited` (a topic with `max_deliveries`) it
/// gives up on messages more often, so that some are dead-lettered.
#[allow(clippy::too_many_arguments)]
pub fn lease_consume(
    history: &History,
    directory: &Directory,
    options: &ClientOptions,
    topics: &[String],
    limited: &str,
    index: usize,
    seed: u64,
    stop: &AtomicBool,
) {
    let process = format!("l{index}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client = Following::new(directory, options);
    // Receipts dropped by a "crash" that this consumer will ACK anyway, and when.
    let mut zombies: Vec<(Instant, String, String)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(position) = zombies.iter().position(|(due, ..)| *due <= Instant::now()) {
            let (_, topic, receipt) = zombies.swap_remove(position);
            settle(
                history,
                client.client(),
                &process,
                Op::Ack,
                &topic,
                &[receipt],
                false,
            );
            continue;
        }
        let topic = topics[rng.gen_range(0..topics.len())].as_str();
        let request = LeaseRequest {
            lease_ms: LEASE_MS[rng.gen_range(0..LEASE_MS.len())],
            max: rng.gen_bool(0.5).then(|| rng.gen_range(2..=10)),
            wait_ms: rng.gen_bool(0.3).then(|| rng.gen_range(200..1500)),
        };
        let (outcome, delivered) = lease(history, client.client(), &process, topic, request);
        if delivered.is_empty() {
            if outcome == Outcome::Ok && request.wait_ms.is_none() {
                std::thread::sleep(Duration::from_millis(rng.gen_range(5..30)));
            }
            continue;
        }
        // Work on them a little, within the shortest lease.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..50)));
        let give_up = if topic == limited { 0.25 } else { 0.1 };
        let (mut acks, mut nacks) = (Vec::new(), Vec::new());
        for item in delivered {
            if rng.gen_bool(give_up) {
                if rng.gen_bool(0.3) {
                    let late = Duration::from_millis(request.lease_ms + rng.gen_range(0..2000));
                    zombies.push((Instant::now() + late, topic.to_string(), item.receipt));
                }
            } else if rng.gen_bool(give_up) {
                nacks.push(item.receipt);
            } else {
                acks.push(item.receipt);
            }
        }
        for (op, receipts) in [(Op::Nack, nacks), (Op::Ack, acks)] {
            if receipts.is_empty() {
            } else if receipts.len() > 1 && rng.gen_bool(0.6) || rng.gen_bool(0.2) {
                settle(
                    history,
                    client.client(),
                    &process,
                    op,
                    topic,
                    &receipts,
                    true,
                );
            } else {
                for receipt in receipts {
                    settle(
                        history,
                        client.client(),
                        &process,
                        op,
                        topic,
                        &[receipt],
                        false,
                    );
                }
            }
        }
    }
}
