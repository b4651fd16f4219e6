//! `rrmq consume`: a consumer that cannot lose work, as a loop of client calls: a blocking
//! leased GET, then the work (print the message, or run `--exec CMD` with it on stdin), then
//! ACK, or NACK when the command failed, so the message comes back (and, past the topic's
//! `max_deliveries`, goes to its dead letter).
//!
//! Why it is careful: a consumer stopped with Ctrl-C or SIGTERM must not drop a message it
//! holds. A signal only sets a flag: the loop finishes the message in hand (waits for the
//! command, then ACKs or NACKs), and a message that arrives after the signal is NACKed at
//! once, so it goes back without waiting out its lease. A second Ctrl-C ends the process at
//! once (the lease then simply runs out). Every wait is bounded: the GET by `--wait`, the
//! calls by `--timeout`, the command by itself (its lease is extended while it runs).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::commands::{delivery_json, message_output};
use super::CliError;
use crate::client::{Client, ClientError, Delivery};
use crate::protocol::Payload;

/// How often the loop looks at the stop flag and the command while it waits.
const POLL: Duration = Duration::from_millis(20);

/// A GET answered `EMPTY` well before its wait ended (a node that does not hold requests):
/// the next one leaves after this pause, so an empty topic is not polled in a hot loop.
const EMPTY_PAUSE: Duration = Duration::from_millis(250);

/// What `rrmq consume` was asked to do.
pub(super) struct Plan<'a> {
    pub topic: &'a str,
    pub lease: Duration,
    pub wait: Duration,
    pub exec: Option<&'a str>,
    pub count: Option<u64>,
    pub raw: bool,
    pub json: bool,
}

pub(super) fn run(
    client: &mut Client,
    plan: &Plan<'_>,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The second signal ends the process; the first only asks the loop to stop.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
            .map_err(CliError::io("cannot install the signal handlers"))?;
    }
    let mut handled = 0u64;
    while plan.count.is_none_or(|count| handled < count) && !stop.load(Ordering::SeqCst) {
        let asked = Instant::now();
        let Some(delivery) = client.get_leased(plan.topic, plan.lease, Some(plan.wait))? else {
            if asked.elapsed() < plan.wait / 2 {
                pause(EMPTY_PAUSE.min(plan.wait), &stop);
            }
            continue;
        };
        if stop.load(Ordering::SeqCst) {
            settle(client, plan.topic, &delivery.receipt, false)?;
            break;
        }
        let done = match plan.exec {
            None => {
                let bytes = if plan.json {
                    (delivery_json(plan.topic, &delivery).to_string() + "\n").into_bytes()
                } else {
                    message_output(delivery.message.clone(), plan.raw)
                };
                stdout
                    .write_all(&bytes)
                    .and_then(|()| stdout.flush())
                    .map_err(CliError::io("cannot write to stdout"))?;
                true
            }
            Some(command) => match execute(client, plan, command, &delivery) {
                Ok(succeeded) => {
                    if plan.json {
                        let line = json!({
                            "topic": plan.topic,
                            "receipt": delivery.receipt,
                            "deliveries": delivery.deliveries,
                            "acked": succeeded,
                        });
                        stdout
                            .write_all((line.to_string() + "\n").as_bytes())
                            .and_then(|()| stdout.flush())
                            .map_err(CliError::io("cannot write to stdout"))?;
                    }
                    succeeded
                }
                Err(error) => {
                    settle(client, plan.topic, &delivery.receipt, false)?;
                    return Err(error);
                }
            },
        };
        settle(client, plan.topic, &delivery.receipt, done)?;
        handled += 1;
    }
    Ok(())
}

/// ACK or NACK one receipt. A stale one is not fatal to the loop: the lease ended while the
/// work ran, so the message was (or will be) handed out again; stderr says so.
fn settle(client: &mut Client, topic: &str, receipt: &str, ack: bool) -> Result<(), CliError> {
    let result = if ack {
        client.ack(topic, receipt)
    } else {
        client.nack(topic, receipt)
    };
    match result {
        Ok(()) => Ok(()),
        Err(error @ ClientError::StaleReceipt { .. }) => {
            eprintln!("rrmq: {error}");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Runs `sh -c command` with the message on stdin, extending the lease while it runs;
/// `Ok(true)` when it exited 0.
fn execute(
    client: &mut Client,
    plan: &Plan<'_>,
    command: &str,
    delivery: &Delivery,
) -> Result<bool, CliError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(CliError::io(format!("cannot run '{command}'")))?;
    let bytes = match &delivery.message {
        Payload::Text(text) => text.as_bytes().to_vec(),
        Payload::Binary(bytes) => bytes.clone(),
    };
    // Written from a thread: a command that reads nothing (or late) must not block the loop
    // that extends the lease.
    let writer = child.stdin.take().map(|mut input| {
        std::thread::spawn(move || {
            // A command that exits without reading closes the pipe: not an error.
            let _ = input.write_all(&bytes);
        })
    });
    let status = wait_extending(client, plan, &delivery.receipt, &mut child)?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Ok(status.success())
}

/// Waits for the command, touching the lease every third of it.
fn wait_extending(
    client: &mut Client,
    plan: &Plan<'_>,
    receipt: &str,
    child: &mut Child,
) -> Result<std::process::ExitStatus, CliError> {
    let every = (plan.lease / 3).max(POLL);
    let mut touch_at = Instant::now() + every;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(CliError::io("cannot wait for the command"))?
        {
            return Ok(status);
        }
        if Instant::now() >= touch_at {
            if let Err(error) = client.touch(plan.topic, receipt, plan.lease) {
                eprintln!("rrmq: extending the lease: {error}");
            }
            touch_at = Instant::now() + every;
        }
        std::thread::sleep(POLL);
    }
}

/// Sleeps for `duration`, or less if the stop flag is set.
fn pause(duration: Duration, stop: &AtomicBool) {
    let until = Instant::now() + duration;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep(POLL.min(until - now));
    }
}
