//! Fault injection on real clusters with a history checker: does the queue ever lose or
//! duplicate an acknowledged message?
//!
//! Each test starts a cluster of `rrmq-node` processes (real data dirs, `--fsync always`,
//! the test-only `--fault-injection`), runs producers and consumers through the client
//! library while a seeded nemesis kills, restarts, pauses and partitions nodes, heals
//! everything, drains every topic, and checks the recorded history (see `nemesis/checker.rs`
//! for the properties, `nemesis/nemesis.rs` for the faults). Some consumers lease
//! (PROTOCOL.md §8-§10), and ACK, NACK or drop what they get, on a topic without a delivery
//! limit and one with `max_deliveries` and a dead-letter topic, so acknowledged delivery is
//! under the same faults: no message lost or ACKed twice, never two holders at once.
//!
//! One scenario adds the membership nemesis: every third fault replaces a member by a fresh
//! node at a new address while another fault holds, and the end checks that every member
//! agrees on the membership (see `nemesis/nemesis.rs`, `nemesis/nodes.rs`).
//!
//! One scenario runs keyed (peer keys and a `clients` list; the workload's clients use a
//! listed key), so the checker also holds with CURVE on both ports.
//!
//! Short by default (a few seeds, 20 s of faults each); longer on demand:
//!
//! ```text
//! RRMQ_NEMESIS_SECS=600 cargo test --test nemesis five_nodes -- --nocapture
//! RRMQ_NEMESIS_SEED=1234 cargo test --test nemesis three_nodes -- --nocapture
//! ```
//!
//! Seeds are random unless `RRMQ_NEMESIS_SEED` is set, and always printed (the output shows
//! on failure, or with `--nocapture`). A seed fixes the fault schedule and the workload's
//! choices; thread timing and leader elections stay the machine's.

#[path = "nemesis/checker.rs"]
mod checker;
mod common;
#[path = "nemesis/harness.rs"]
mod harness;
#[path = "nemesis/history.rs"]
mod history;
#[path = "nemesis/nemesis.rs"]
mod nemesis;
#[path = "nemesis/nodes.rs"]
mod nodes;
#[path = "nemesis/workload.rs"]
mod workload;

use harness::RunConfig;
use nemesis::{FaultKind, Timing};
use std::time::Duration;

/// Seconds of faults per run unless `RRMQ_NEMESIS_SECS` says otherwise.
const SHORT_RUN_SECS: u64 = 20;

fn seconds() -> u64 {
    match std::env::var("RRMQ_NEMESIS_SECS") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("RRMQ_NEMESIS_SECS={text:?} is not a number of seconds")),
        Err(_) => SHORT_RUN_SECS,
    }
}

fn seed() -> u64 {
    match std::env::var("RRMQ_NEMESIS_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("RRMQ_NEMESIS_SEED={text:?} is not an unsigned integer")),
        Err(_) => rand::random(),
    }
}

fn config(name: &str, nodes: usize, kinds: &[FaultKind]) -> RunConfig {
    RunConfig {
        name: name.to_string(),
        nodes,
        duration: Duration::from_secs(seconds()),
        seed: seed(),
        producers: 3,
        consumers: 3,
        leasing_consumers: 3,
        topics: 3,
        timing: Timing {
            hold_ms: 500..5000,
            gap_ms: 200..1500,
        },
        kinds: kinds.to_vec(),
        keyed: false,
        replace_every: None,
    }
}

#[test]
fn three_nodes_under_mixed_faults() {
    harness::run(&config("three_nodes", 3, &FaultKind::ALL));
}

/// The same with CURVE on both ports and the workload a listed client with produce and
/// consume rights only: keys change nothing the checker can see.
#[test]
fn three_nodes_keyed_under_mixed_faults() {
    harness::run(&RunConfig {
        keyed: true,
        ..config("three_nodes_keyed", 3, &FaultKind::ALL)
    });
}

#[test]
fn five_nodes_under_mixed_faults() {
    harness::run(&config("five_nodes", 5, &FaultKind::ALL));
}

/// The membership nemesis on top of every other fault: every third fault (the second one
/// first, so a short run has one too) replaces a random member, sometimes the leader, by a
/// fresh node at a new address while another fault holds; the workload, the faults and the
/// final checks follow the members as they change, and at the end every member must agree
/// on the membership.
#[test]
fn three_nodes_membership_under_mixed_faults() {
    harness::run(&RunConfig {
        replace_every: Some(3),
        ..config("three_nodes_membership", 3, &FaultKind::ALL)
    });
}

#[test]
fn three_nodes_under_partitions_and_pauses() {
    harness::run(&config(
        "three_nodes_network",
        3,
        &[
            FaultKind::IsolateLeader,
            FaultKind::Split,
            FaultKind::OneWay,
            FaultKind::Bridge,
            FaultKind::PauseLeader,
            FaultKind::PauseRandom,
        ],
    ));
}

/// Checks a kept history again (a failed run keeps its directory), e.g. after a change to
/// the checker: `RRMQ_NEMESIS_HISTORY=/tmp/.tmpXXXX/history.jsonl cargo test --test nemesis
/// recheck -- --ignored --nocapture`.
#[test]
#[ignore = "reads the history file named by RRMQ_NEMESIS_HISTORY"]
fn recheck_a_kept_history() {
    let Ok(path) = std::env::var("RRMQ_NEMESIS_HISTORY") else {
        panic!("set RRMQ_NEMESIS_HISTORY to a history.jsonl to check");
    };
    let records = history::read(std::path::Path::new(&path));
    let (summary, violations) = checker::check(&records);
    println!("{}", summary.render());
    if !violations.is_empty() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        panic!(
            "{} violations{}",
            violations.len(),
            checker::render(&violations, &lines, 4)
        );
    }
}
