//! The history of a nemesis run: every operation's invocation and completion, every fault
//! and its healing, every status sample, one JSON object per line in the run's directory.
//!
//! Why a file: the checker reads the history back from it, so a kept file can be checked
//! again, read by a person, or fed to another tool (it is close to Jepsen's history format).
//! Records are written under one lock with the timestamp taken inside it, so line order is
//! time order, and each line is flushed at once: a run that dies keeps what it saw.
//!
//! Timestamps bracket the real operation: an invocation is recorded before the request
//! leaves, a completion after the reply arrived. So "A completed before B was invoked" in
//! the history implies it in reality, which is what the checker's real-time rules need.
//!
//! What it must not do: interpret anything (the checker does).

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Put,
    /// A plain GET: pops.
    Get,
    /// A leased GET (PROTOCOL.md §8-§10): `lease` on the invocation, `delivered` on the
    /// completion.
    Lease,
    /// ACK of the invocation's `receipts`.
    Ack,
    /// NACK of the invocation's `receipts`.
    Nack,
}

/// The options of a leased GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub lease_ms: u64,
    /// `max` (a batch) when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// One message a leased GET handed out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leased {
    pub value: String,
    pub receipt: String,
    pub deliveries: u64,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: it took effect (for a get, `value` is the message, or none if empty).
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// May or may not have taken effect (deadline passed, session lost, ...).
    Unknown,
}

/// Whether a fault begins or ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Heal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A client is about to send an operation. `value` is the message of a put.
    Invoke {
        id: u64,
        process: String,
        op: Op,
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// A leased GET's options.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<LeaseRequest>,
        /// An ACK's or NACK's receipts; `many` says whether they went as `receipts` (a
        /// list, even of one) or as the single `receipt`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipts: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        many: bool,
    },
    /// The client returned. `value`: a put's message, or the message a get popped.
    Complete {
        id: u64,
        process: String,
        op: Op,
        topic: String,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// What a leased GET handed out (empty when the topic was).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivered: Option<Vec<Leased>>,
        /// The receipts an ACK or NACK was refused for (`STALE_RECEIPT`): a batch's `stale`
        /// list with outcome `ok`, or the single receipt with outcome `fail`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stale: Option<Vec<String>>,
    },
    /// A topic the harness created, with its delivery settings (PROTOCOL.md §8).
    Topic {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_deliveries: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_letter: Option<String>,
    },
    /// The nemesis started or healed a fault.
    Nemesis {
        phase: Phase,
        kind: String,
        detail: String,
    },
    /// One node's answer to `status`.
    Status {
        node: u64,
        role: String,
        term: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader: Option<u64>,
        commit_index: u64,
    },
    /// How long after the last fault healed the cluster took a write again; `ok` is false if
    /// it did not within the bound.
    Recovery {
        ok: bool,
        elapsed_ms: u64,
        bound_ms: u64,
    },
    /// Whether every node applied the same state in the end (same index, same digest).
    Convergence { ok: bool, detail: String },
    /// One step of the membership nemesis: a fresh node `start`ed with `--join`, an
    /// attempt at `member PUT` (`put`) of it or `member DELETE` (`delete`) of the node it
    /// replaces (`ok` when the cluster answered success, else `detail` has the error), and
    /// the removed node's process `stop`ped for good.
    Member {
        action: String,
        node: u64,
        ok: bool,
        detail: String,
    },
    /// Whether every live member agreed on the membership at the end (the leader's `member
    /// GET` against the nodes the harness keeps running and their status).
    Membership { ok: bool, detail: String },
    /// Anything else worth seeing in context (a node that exited on its own, the drain's
    /// end...); `problem` marks a finding the checker must report.
    Note {
        text: String,
        #[serde(default)]
        problem: bool,
    },
}

/// One line of the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the run started.
    pub t_ms: f64,
    #[serde(flatten)]
    pub event: Event,
}

/// The writer shared by every thread of a run.
pub struct History {
    path: PathBuf,
    started: Instant,
    file: Mutex<File>,
    next_id: AtomicU64,
}

impl History {
    pub fn create(path: &Path) -> History {
        let file = File::create(path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        History {
            path: path.to_path_buf(),
            started: Instant::now(),
            file: Mutex::new(file),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh operation id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// Appends one line, stamped with the time inside the lock (so lines are in time order).
    pub fn record(&self, event: Event) {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let record = Record {
            t_ms: (self.now_ms() * 1000.0).round() / 1000.0,
            event,
        };
        let mut line = serde_json::to_vec(&record).expect("a record always encodes as JSON");
        line.push(b'\n');
        file.write_all(&line)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", self.path.display()));
    }
}

/// Reads a history file back; record `i` is on line `i + 1`.
pub fn read(path: &Path) -> Vec<Record> {
    let file = File::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(index, line)| {
            let line = line.unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            serde_json::from_str(&line).unwrap_or_else(|error| {
                panic!("{} line {}: {error}: {line}", path.display(), index + 1)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_file_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("history.jsonl");
        let history = History::create(&path);
        let events = vec![
            Event::Invoke {
                id: 1,
                process: "p0".into(),
                op: Op::Put,
                topic: "t0".into(),
                value: Some("p0-1".into()),
                lease: None,
                receipts: None,
                many: false,
            },
            Event::Invoke {
                id: 2,
                process: "l0".into(),
                op: Op::Lease,
                topic: "tl0".into(),
                value: None,
                lease: Some(LeaseRequest {
                    lease_ms: 2500,
                    max: Some(3),
                    wait_ms: None,
                }),
                receipts: None,
                many: false,
            },
            Event::Complete {
                id: 2,
                process: "l0".into(),
                op: Op::Lease,
                topic: "tl0".into(),
                outcome: Outcome::Ok,
                value: None,
                error: None,
                delivered: Some(vec![Leased {
                    value: "p0-2".into(),
                    receipt: "r9".into(),
                    deliveries: 2,
                }]),
                stale: None,
            },
            Event::Invoke {
                id: 3,
                process: "l0".into(),
                op: Op::Ack,
                topic: "tl0".into(),
                value: None,
                lease: None,
                receipts: Some(vec!["r9".into()]),
                many: true,
            },
            Event::Complete {
                id: 3,
                process: "l0".into(),
                op: Op::Ack,
                topic: "tl0".into(),
                outcome: Outcome::Ok,
                value: None,
                error: None,
                delivered: None,
                stale: Some(vec![]),
            },
            Event::Topic {
                name: "tl1".into(),
                max_deliveries: Some(2),
                dead_letter: Some("tdl1".into()),
            },
            Event::Nemesis {
                phase: Phase::Start,
                kind: "kill".into(),
                detail: "node 1".into(),
            },
            Event::Complete {
                id: 1,
                process: "p0".into(),
                op: Op::Put,
                topic: "t0".into(),
                outcome: Outcome::Unknown,
                value: Some("p0-1".into()),
                error: Some("deadline".into()),
                delivered: None,
                stale: None,
            },
            Event::Status {
                node: 2,
                role: "Leader".into(),
                term: 3,
                leader: Some(2),
                commit_index: 9,
            },
            Event::Recovery {
                ok: true,
                elapsed_ms: 12,
                bound_ms: 100,
            },
            Event::Member {
                action: "put".into(),
                node: 3,
                ok: false,
                detail: "TIMEOUT".into(),
            },
            Event::Membership {
                ok: true,
                detail: "members [0, 2, 3]".into(),
            },
            Event::Note {
                text: "x".into(),
                problem: false,
            },
        ];
        for event in &events {
            history.record(event.clone());
        }
        let records = read(&path);
        let read_events: Vec<Event> = records.iter().map(|record| record.event.clone()).collect();
        assert_eq!(read_events, events);
        assert!(records.windows(2).all(|pair| pair[0].t_ms <= pair[1].t_ms));
    }
}
