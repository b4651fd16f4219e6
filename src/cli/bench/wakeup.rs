//! `rrmq bench wakeup`: how soon a consumer blocked in a GET with `wait_ms` (PROTOCOL.md §9)
//! receives a message that another client puts.
//!
//! Why it exists: a blocking GET is only worth having if the wake-up is prompt, and the one
//! moment that matters to an application is when the producer has been told "stored" and
//! the consumer has the message. This measures exactly that: C consumers, each a client of
//! its own on its own thread, wait in blocking GETs on one fresh topic; one producer puts
//! one message per round, and the round's figure is (time the consumer has the reply) -
//! (time the producer has the PUT's reply), on one monotonic clock (one process). It can be
//! negative: the node answers the waiter once the GET it proposed for it commits, and that
//! reply may reach its consumer before the PUT's reply has reached the producer's thread.
//! Negative rounds are counted and reported, not clipped. The time from the PUT being sent
//! to the consumer having the message is reported beside it, and the PUT's own latency.
//!
//! Rounds are sequential: the producer waits until the round's message has been received
//! (or [`ROUND_TIMEOUT`] has passed: the round counts as lost), then `--interval`, so the
//! consumer that got it is waiting again before the next PUT. Each message carries its
//! round number; a message received twice is counted as a duplicate.
//!
//! What it must not do: wait without a bound (consumers stop after their current wait once
//! the rounds are over; the producer bounds each round), or judge the figures (a test
//! checks the counts; the numbers are for people).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::report::{format_bytes, format_milliseconds, ClusterReport};
use super::{cluster_report, parse_duration, parse_size, TOPIC_PREFIX_BYTES_MAX};
use crate::cli::{CliError, GlobalOptions};
use crate::client::{Client, ClientOptions, Fetched};
use crate::config::MESSAGE_BYTES_MAX_LIMIT;
use crate::protocol::{FetchOptions, Payload, WAIT_MS_MAX};

/// A round whose message no consumer has received this long after the PUT's reply counts as
/// lost, and the next round begins.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Most consumers and rounds.
const CONSUMERS_MAX: usize = 100;
const ROUNDS_MAX: u64 = 1_000_000;

/// Bytes of the round number at the start of every message.
const ROUND_BYTES: usize = 8;

/// rrmq bench wakeup: consumers blocked in GET --wait; one producer puts one message at a
/// time; how long from the PUT's reply to a consumer having the message
#[derive(Debug, Clone, clap::Args)]
pub struct WakeupArgs {
    /// Consumers, each a client of its own blocked in GET --wait
    #[arg(short = 'c', long, value_name = "C", default_value_t = 4)]
    pub consumers: usize,
    /// Messages put, one per round
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub rounds: u64,
    /// Pause after a round's message was received, before the next PUT (lets the consumer
    /// that got it wait again)
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// The wait_ms of each blocking GET
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Message size in bytes (at least 8: the round number)
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_size)]
    pub size: usize,
    /// The topic is PREFIX-RUNID
    #[arg(long, value_name = "PREFIX", default_value = "wakeup")]
    pub topic_prefix: String,
}

/// Percentiles of signed durations, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct SignedSummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Samples below zero.
    pub negative: u64,
}

impl SignedSummary {
    /// `None` without samples. Nearest-rank percentiles.
    fn of(microseconds: &[i64]) -> Option<SignedSummary> {
        if microseconds.is_empty() {
            return None;
        }
        let mut sorted = microseconds.to_vec();
        sorted.sort_unstable();
        let rank = |quantile: f64| {
            let position = (quantile * sorted.len() as f64).ceil() as usize;
            sorted[position.clamp(1, sorted.len()) - 1] as f64 / 1000.0
        };
        let sum: i128 = sorted.iter().map(|&value| i128::from(value)).sum();
        Some(SignedSummary {
            p50: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            min: sorted[0] as f64 / 1000.0,
            max: sorted[sorted.len() - 1] as f64 / 1000.0,
            mean: sum as f64 / sorted.len() as f64 / 1000.0,
            negative: sorted.iter().filter(|&&value| value < 0).count() as u64,
        })
    }

    fn to_text(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} min {} max {} mean {} (negative: {})",
            format_milliseconds(self.p50),
            format_milliseconds(self.p90),
            format_milliseconds(self.p99),
            format_milliseconds(self.min),
            format_milliseconds(self.max),
            format_milliseconds(self.mean),
            self.negative
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct WakeupReport {
    pub workload: String,
    pub cluster: ClusterReport,
    pub consumers: usize,
    pub rounds: u64,
    pub interval_ms: f64,
    pub wait_ms: u64,
    pub size: usize,
    /// Rounds whose message a consumer received.
    pub received: u64,
    /// Rounds whose message no consumer received within [`ROUND_TIMEOUT`].
    pub lost: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// PUTs that failed (their round is skipped, not lost).
    pub put_errors: u64,
    /// Consumer calls that failed (the consumer retries).
    pub get_errors: u64,
    /// (consumer has the message) - (producer has the PUT's reply).
    pub wakeup_after_put_reply_ms: Option<SignedSummary>,
    /// (consumer has the message) - (PUT sent).
    pub received_after_put_sent_ms: Option<SignedSummary>,
    /// The PUT's own latency.
    pub put_ms: Option<SignedSummary>,
}

impl WakeupReport {
    fn to_text(&self) -> String {
        let fsync: Vec<String> = self
            .cluster
            .nodes
            .iter()
            .map(|node| {
                let name = node
                    .id
                    .map_or_else(|| node.address.clone(), |id| format!("node {id}"));
                format!("{name} {}", node.fsync.as_deref().unwrap_or("unknown"))
            })
            .collect();
        let leader = self.cluster.leader.map_or_else(
            || "no leader seen".to_string(),
            |id| format!("leader node {id}"),
        );
        let summary = |summary: &Option<SignedSummary>| {
            summary
                .as_ref()
                .map_or_else(|| "no samples".to_string(), SignedSummary::to_text)
        };
        format!(
            "rrmq bench wakeup: {} nodes ({leader}); fsync: {}\n  consumers {}, rounds {}, \
             interval {:.1} ms, wait {} ms, size {}\n\n  received {} of {} (lost {}, \
             duplicates {}; PUT errors {}, GET errors {})\n  consumer has it, after the \
             PUT's reply, ms: {}\n  consumer has it, after the PUT was sent, ms: {}\n  PUT \
             latency, ms: {}\n",
            self.cluster.size,
            fsync.join(", "),
            self.consumers,
            self.rounds,
            self.interval_ms,
            self.wait_ms,
            format_bytes(self.size),
            self.received,
            self.rounds,
            self.lost,
            self.duplicates,
            self.put_errors,
            self.get_errors,
            summary(&self.wakeup_after_put_reply_ms),
            summary(&self.received_after_put_sent_ms),
            summary(&self.put_ms),
        )
    }
}

/// What a consumer thread tells the producer.
enum Heard {
    Message { round: u64, at: Instant },
    Error,
}

impl WakeupArgs {
    fn validate(&self) -> Result<(), CliError> {
        if self.consumers == 0 || self.consumers > CONSUMERS_MAX {
            return Err(CliError::Usage(format!(
                "--consumers must be between 1 and {CONSUMERS_MAX}, not {}",
                self.consumers
            )));
        }
        if self.rounds == 0 || self.rounds > ROUNDS_MAX {
            return Err(CliError::Usage(format!(
                "--rounds must be between 1 and {ROUNDS_MAX}, not {}",
                self.rounds
            )));
        }
        if self.wait.is_zero() || self.wait.as_millis() > u128::from(WAIT_MS_MAX) {
            return Err(CliError::Usage(format!(
                "--wait must be between 1 ms and {WAIT_MS_MAX} ms"
            )));
        }
        if self.size < ROUND_BYTES || self.size > MESSAGE_BYTES_MAX_LIMIT {
            return Err(CliError::Usage(format!(
                "--size must be between {ROUND_BYTES} and {MESSAGE_BYTES_MAX_LIMIT} bytes"
            )));
        }
        if self.topic_prefix.is_empty() || self.topic_prefix.len() > TOPIC_PREFIX_BYTES_MAX {
            return Err(CliError::Usage(format!(
                "--topic-prefix must be 1 to {TOPIC_PREFIX_BYTES_MAX} bytes"
            )));
        }
        Ok(())
    }
}

/// The message of `round`: its number, then padding up to `size`.
fn message_of_round(round: u64, size: usize) -> Payload {
    let mut bytes = round.to_be_bytes().to_vec();
    bytes.resize(size, b'w');
    Payload::Binary(bytes)
}

fn round_of(payload: &Payload) -> Option<u64> {
    let bytes = match payload {
        Payload::Binary(bytes) => bytes.as_slice(),
        Payload::Text(text) => text.as_bytes(),
    };
    Some(u64::from_be_bytes(
        bytes.get(..ROUND_BYTES)?.try_into().ok()?,
    ))
}

fn signed_microseconds(later: Instant, earlier: Instant) -> i64 {
    match later.checked_duration_since(earlier) {
        Some(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        None => -i64::try_from(earlier.duration_since(later).as_micros()).unwrap_or(i64::MAX),
    }
}

/// Runs `rrmq bench wakeup`.
pub(super) fn run(
    global: &GlobalOptions,
    args: &WakeupArgs,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    args.validate()?;
    let options = crate::cli::commands::client_options(global)?.0;
    let report = measure(options, args)?;
    let text = if global.json {
        serde_json::to_string_pretty(&report).expect("a report of plain values serializes") + "\n"
    } else {
        report.to_text()
    };
    stdout
        .write_all(text.as_bytes())
        .map_err(CliError::io("cannot write to stdout"))
}

fn measure(options: ClientOptions, args: &WakeupArgs) -> Result<WakeupReport, CliError> {
    let mut producer = Client::connect(options.clone())?;
    let run_id: u32 = rand::random();
    let topic = format!("{}-{run_id:08x}", args.topic_prefix);
    producer.create_topic(&topic)?;
    let (cluster, _, _) = cluster_report(&mut producer);
    let wait_ms = u64::try_from(args.wait.as_millis()).unwrap_or(WAIT_MS_MAX);

    let stop = Arc::new(AtomicBool::new(false));
    let (heard_sender, heard) = crossbeam_channel::unbounded::<Heard>();
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let mut client = Client::connect(options.clone())?;
        let (stop, heard_sender, topic) = (stop.clone(), heard_sender.clone(), topic.clone());
        consumers.push(thread::spawn(move || {
            let fetch = FetchOptions {
                wait_ms: Some(wait_ms),
                ..FetchOptions::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let heard = match client.fetch(&topic, fetch) {
                    Ok(Fetched::Message(payload)) => {
                        let at = Instant::now();
                        match round_of(&payload) {
                            Some(round) => Heard::Message { round, at },
                            None => Heard::Error,
                        }
                    }
                    Ok(Fetched::Empty) => continue,
                    Ok(_) | Err(_) => {
                        // Not hot: a failed call waited out its deadline or was refused.
                        thread::sleep(Duration::from_millis(10));
                        Heard::Error
                    }
                };
                if heard_sender.send(heard).is_err() {
                    return;
                }
            }
        }));
    }
    drop(heard_sender);

    let mut received = std::collections::HashSet::new();
    let (mut after_reply, mut after_sent, mut put_latency) = (Vec::new(), Vec::new(), Vec::new());
    let (mut duplicates, mut put_errors, mut get_errors) = (0u64, 0u64, 0u64);
    let mut note = |heard: Heard, received: &mut std::collections::HashSet<u64>| match heard {
        Heard::Message { round, .. } if !received.insert(round) => {
            duplicates += 1;
            None
        }
        Heard::Message { round, at } => Some((round, at)),
        Heard::Error => {
            get_errors += 1;
            None
        }
    };
    // The consumers' first GETs: let them reach the leader and wait there.
    thread::sleep(args.interval.max(Duration::from_millis(200)));
    for round in 1..=args.rounds {
        let sent = Instant::now();
        if producer
            .put(&topic, message_of_round(round, args.size))
            .is_err()
        {
            put_errors += 1;
            continue;
        }
        let replied = Instant::now();
        put_latency.push(signed_microseconds(replied, sent));
        let until = replied + ROUND_TIMEOUT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match heard.recv_timeout(left) {
                Ok(message) => {
                    if let Some((heard_round, at)) = note(message, &mut received) {
                        if heard_round == round {
                            after_reply.push(signed_microseconds(at, replied));
                            after_sent.push(signed_microseconds(at, sent));
                            break;
                        }
                        // A round given up on arrived late: received, but not timed.
                    }
                }
                Err(_) => break, // Lost, unless it arrives later.
            }
        }
        thread::sleep(args.interval);
    }
    stop.store(true, Ordering::Relaxed);
    for consumer in consumers {
        let _ = consumer.join();
    }
    // Anything heard after the last round (late arrivals of lost rounds, duplicates).
    for message in heard.try_iter() {
        note(message, &mut received);
    }
    // A PUT that failed may still have been applied (its outcome unknown): not counted.
    let lost = (args.rounds - put_errors).saturating_sub(received.len() as u64);
    Ok(WakeupReport {
        workload: "wakeup".to_string(),
        cluster,
        consumers: args.consumers,
        rounds: args.rounds,
        interval_ms: args.interval.as_secs_f64() * 1000.0,
        wait_ms,
        size: args.size,
        received: received.len() as u64,
        lost,
        duplicates,
        put_errors,
        get_errors,
        wakeup_after_put_reply_ms: SignedSummary::of(&after_reply),
        received_after_put_sent_ms: SignedSummary::of(&after_sent),
        put_ms: SignedSummary::of(&put_latency),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_summaries_keep_negative_samples() {
        let summary = SignedSummary::of(&[-500, 1_000, 2_000, 3_000]).expect("samples");
        assert_eq!(summary.negative, 1);
        assert_eq!(summary.min, -0.5);
        assert_eq!(summary.p50, 1.0);
        assert_eq!(summary.max, 3.0);
        assert_eq!(summary.mean, 1.375);
        assert!(SignedSummary::of(&[]).is_none());
        let now = Instant::now();
        let later = now + Duration::from_micros(250);
        assert_eq!(signed_microseconds(later, now), 250);
        assert_eq!(signed_microseconds(now, later), -250);
    }

    #[test]
    fn a_message_carries_its_round() {
        let message = message_of_round(42, 100);
        assert_eq!(round_of(&message), Some(42));
        assert!(matches!(&message, Payload::Binary(bytes) if bytes.len() == 100));
        assert_eq!(round_of(&Payload::Binary(vec![1, 2])), None);
    }
}
