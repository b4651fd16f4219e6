//! The checker: reads a run's history and says whether the queue kept its promises.
//!
//! One function per property, each returning the violations it found with the history lines
//! that show them:
//!
//! A message is *handed out* by a plain get (a pop) or a leased get, and *consumed* by a
//! pop or by an ACK whose reply says it took effect (PROTOCOL.md §8).
//!
//! - `check_consumption`: every message handed out was put (`phantom`), to the topic it
//!   came from or to the topic whose dead-letter topic that is (`wrong_topic`), by a put
//!   that did not definitely fail (`failed_put_consumed`), and not before that put began
//!   (`consumed_before_put`); no message was consumed twice (`duplicate`: two pops, two
//!   successful ACKs, or one of each). Unknown-outcome puts may be consumed, at most once
//!   like the rest.
//! - `check_lost`: every acknowledged put was consumed during the run or in the drain
//!   (`lost`), from its topic or its dead-letter topic. Two excuses: an ACK of unknown
//!   outcome of one of its receipts, unless the message was handed out again after that
//!   ACK ended (then it did not take effect); and a plain get whose outcome is unknown, which
//!   may have popped a message nobody saw. Each such get can excuse at most one message of
//!   its topic, put before that get ended; the check is Hall's condition for that matching,
//!   so it never blames a history that some assignment of pops explains. (A leased get of
//!   unknown outcome excuses nothing: its lease ends and the message comes back.)
//! - `check_order`: a producer's messages on one topic are handed out the first time in
//!   the order it put them. Producers put one message at a time, so put order is their
//!   numbering; a first delivery is a pop or a lease with delivery count 1 (a pop that a
//!   leased get of unknown outcome may have preceded is not known to be one), and these are
//!   linearizable, so a later message's that completed before an earlier message's began is
//!   a violation (`order`).
//! - `check_leases`: one holder at a time (`double_holder`), with a margin for the lease
//!   clock ([`LEASE_EARLY_MARGIN_MS`]); delivery counts distinct, growing and within
//!   `max_deliveries` (`deliveries`, `over_limit`); nothing handed out after it was
//!   consumed or dead-lettered (`resurrected`); no successful ACK or NACK of a receipt known
//!   to be stale (`stale_settled`), and no receipt refused while its lease surely held
//!   (`lease_ended_early`). Details at the function.
//! - `check_leaders`: at most one node says it is leader in any term, over all status
//!   samples (`leaders_per_term`).
//! - `check_run`: the cluster took a write within the bound after the last fault healed
//!   (`recovery`), every node ended with the same applied state (`convergence`), every live
//!   member agreed on the membership at the end (`membership`: the leader's `member GET`
//!   against the members the harness runs and their status), and the harness noted no
//!   problem such as a node that exited on its own or a replacement that never finished
//!   (`problem`).
//!
//! What it must not do: trust timing beyond the history's real-time order, or accept a
//! history it cannot explain.

use crate::history::{Event, Leased, Op, Outcome, Phase, Record};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property: `lost`, `duplicate`, `order`, ...
    pub check: &'static str,
    pub message: String,
    /// The history lines (1-based) that show it.
    pub lines: Vec<usize>,
}

/// Counts for the run's report.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub puts_ok: usize,
    pub puts_failed: usize,
    pub puts_unknown: usize,
    pub gets_message: usize,
    pub gets_empty: usize,
    pub gets_failed: usize,
    pub gets_unknown: usize,
    pub never_completed: usize,
    /// Every operation invoked: puts, gets, leased gets, ACKs and NACKs.
    pub operations: usize,
    pub consumed_in_drain: usize,
    /// Leased GETs that handed out messages, found the topic empty, failed, or ended
    /// unknown.
    pub leases_message: usize,
    pub leases_empty: usize,
    pub leases_failed: usize,
    pub leases_unknown: usize,
    /// Messages handed out under a lease, and those of them that were redeliveries.
    pub messages_leased: usize,
    pub redeliveries: usize,
    /// Receipts ACKed or NACKed: took effect, refused as stale, outcome unknown.
    pub acked: usize,
    pub ack_stale: usize,
    pub ack_unknown: usize,
    pub nacked: usize,
    pub nack_stale: usize,
    pub nack_unknown: usize,
    /// Leases whose holder "crashed": no ACK or NACK sent within the lease.
    pub dropped: usize,
    /// Messages handed out from a dead-letter topic (in the run or the drain).
    pub dead_lettered: usize,
    pub faults: BTreeMap<String, usize>,
    /// Time with a fault in force, from each start to its heal.
    pub fault_ms: f64,
    pub status_samples: usize,
    pub max_term: u64,
    pub leaders_seen: usize,
    pub recovery_ms: Option<u64>,
    pub duration_ms: f64,
    /// The membership nemesis: nodes replaced (the old one removed and stopped), and the
    /// `member PUT` and `member DELETE` attempts it took (each retry counts).
    pub replacements: usize,
    pub member_puts: usize,
    pub member_deletes: usize,
}

impl Summary {
    pub fn render(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, count)| format!("{kind} x{count}"))
            .collect();
        format!(
            "{} operations; puts: {} ok, {} failed, {} unknown; gets: {} messages ({} in the \
             drain), {} empty, \
             {} failed, {} unknown; {} never completed\n\
             leased gets: {} with messages, {} empty, {} failed, {} unknown; {} messages \
             leased ({} redeliveries), ACKed {} (stale {}, unknown {}), NACKed {} (stale {}, \
             unknown {}), {} leases unsettled within their length (\"crashed\" holders); {} \
             messages dead-lettered\n\
             faults ({}, in force {:.1} s): {}\n\
             status samples: {}, terms up to {}, {} leaderships seen; recovery after the last \
             heal: {}; history spans {:.1} s\n\
             membership: {} replacements ({} member PUT and {} member DELETE attempts)",
            self.operations,
            self.puts_ok,
            self.puts_failed,
            self.puts_unknown,
            self.gets_message,
            self.consumed_in_drain,
            self.gets_empty,
            self.gets_failed,
            self.gets_unknown,
            self.never_completed,
            self.leases_message,
            self.leases_empty,
            self.leases_failed,
            self.leases_unknown,
            self.messages_leased,
            self.redeliveries,
            self.acked,
            self.ack_stale,
            self.ack_unknown,
            self.nacked,
            self.nack_stale,
            self.nack_unknown,
            self.dropped,
            self.dead_lettered,
            self.faults.values().sum::<usize>(),
            self.fault_ms / 1000.0,
            faults.join(", "),
            self.status_samples,
            self.max_term,
            self.leaders_seen,
            self.recovery_ms
                .map_or("not measured".to_string(), |ms| format!("{ms} ms")),
            self.duration_ms / 1000.0,
            self.replacements,
            self.member_puts,
            self.member_deletes,
        )
    }
}

/// One operation, invocation and completion joined.
#[derive(Clone, Debug)]
struct Operation {
    process: String,
    op: Op,
    topic: String,
    invoke_line: usize,
    invoke_ms: f64,
    /// The put's message.
    put_value: Option<String>,
    /// A leased GET's lease length.
    lease_ms: Option<u64>,
    /// An ACK's or NACK's receipts.
    receipts: Vec<String>,
    completion: Option<Completion>,
}

#[derive(Clone, Debug)]
struct Completion {
    line: usize,
    ms: f64,
    outcome: Outcome,
    value: Option<String>,
    delivered: Vec<Leased>,
    stale: Vec<String>,
}

impl Operation {
    fn outcome(&self) -> Outcome {
        // Never completed (the process died): it may have taken effect.
        self.completion
            .as_ref()
            .map_or(Outcome::Unknown, |completion| completion.outcome)
    }

    fn complete_ms(&self) -> f64 {
        self.completion
            .as_ref()
            .map_or(f64::INFINITY, |completion| completion.ms)
    }

    fn lines(&self) -> Vec<usize> {
        let mut lines = vec![self.invoke_line];
        lines.extend(self.completion.as_ref().map(|completion| completion.line));
        lines
    }

    /// Whether an ACK or NACK took effect for `receipt` for sure (`Some(true)`), for sure
    /// not (`Some(false)`), or may have (`None`).
    fn settled(&self, receipt: &str) -> Option<bool> {
        match &self.completion {
            None => None,
            Some(completion) => match completion.outcome {
                Outcome::Unknown => None,
                Outcome::Fail => Some(false),
                Outcome::Ok => Some(!completion.stale.iter().any(|stale| stale == receipt)),
            },
        }
    }

    /// Whether an ACK or NACK was refused `receipt` as stale.
    fn refused_stale(&self, receipt: &str) -> bool {
        self.completion
            .as_ref()
            .is_some_and(|completion| completion.stale.iter().any(|stale| stale == receipt))
    }

    /// The message a get popped.
    fn popped(&self) -> Option<&str> {
        match (&self.op, &self.completion) {
            (
                Op::Get,
                Some(Completion {
                    outcome: Outcome::Ok,
                    value: Some(value),
                    ..
                }),
            ) => Some(value),
            _ => None,
        }
    }
}

/// One message handed out: popped by a plain get, or leased.
#[derive(Clone, Debug)]
struct Delivery {
    /// Index into `Operations::all` of the get.
    op: usize,
    topic: String,
    /// For a lease: its receipt, delivery count and length.
    lease: Option<(String, u64, u64)>,
}

impl Delivery {
    fn receipt(&self) -> Option<&str> {
        self.lease.as_ref().map(|(receipt, ..)| receipt.as_str())
    }

    fn count(&self) -> Option<u64> {
        self.lease.as_ref().map(|(_, count, _)| *count)
    }
}

/// A message leaving the queue for good: popped, or ACKed by an ACK that said so.
#[derive(Clone, Debug)]
struct Consumption {
    op: usize,
    /// The receipt, for an ACK.
    receipt: Option<String>,
}

/// The operations of a history, in invocation order, and the puts by message.
struct Operations {
    all: Vec<Operation>,
    put_by_value: HashMap<String, usize>,
    /// Every message handed out, popped or leased, in completion order.
    deliveries_by_value: HashMap<String, Vec<Delivery>>,
    /// Pops and successful ACKs of each message.
    consumptions_by_value: HashMap<String, Vec<Consumption>>,
    /// Indexes into `all` of the ACKs and NACKs naming each receipt, in invocation order.
    settles_by_receipt: HashMap<String, Vec<usize>>,
    /// Topic settings as recorded: `max_deliveries` by topic, and dead-letter topics.
    max_deliveries: HashMap<String, u64>,
    dead_letter_of: HashMap<String, String>,
}

impl Operations {
    /// The topic whose messages a topic holds: a dead-letter topic's source, else itself.
    fn group<'a>(&'a self, topic: &'a str) -> &'a str {
        self.dead_letter_of
            .iter()
            .find(|(_, dead)| dead.as_str() == topic)
            .map_or(topic, |(source, _)| source.as_str())
    }
}

fn operations(records: &[Record], violations: &mut Vec<Violation>) -> Operations {
    let mut all: Vec<Operation> = Vec::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    let mut max_deliveries: HashMap<String, u64> = HashMap::new();
    let mut dead_letter_of: HashMap<String, String> = HashMap::new();
    for (index, record) in records.iter().enumerate() {
        let line = index + 1;
        match &record.event {
            Event::Invoke {
                id,
                process,
                op,
                topic,
                value,
                lease,
                receipts,
                ..
            } => {
                if by_id.insert(*id, all.len()).is_some() {
                    violations.push(Violation {
                        check: "history",
                        message: format!("operation id {id} invoked twice"),
                        lines: vec![line],
                    });
                }
                all.push(Operation {
                    process: process.clone(),
                    op: *op,
                    topic: topic.clone(),
                    invoke_line: line,
                    invoke_ms: record.t_ms,
                    put_value: value.clone(),
                    lease_ms: lease.map(|lease| lease.lease_ms),
                    receipts: receipts.clone().unwrap_or_default(),
                    completion: None,
                });
            }
            Event::Complete {
                id,
                outcome,
                value,
                delivered,
                stale,
                ..
            } => match by_id.get(id) {
                Some(&position) if all[position].completion.is_none() => {
                    all[position].completion = Some(Completion {
                        line,
                        ms: record.t_ms,
                        outcome: *outcome,
                        value: value.clone(),
                        delivered: delivered.clone().unwrap_or_default(),
                        stale: stale.clone().unwrap_or_default(),
                    });
                }
                _ => violations.push(Violation {
                    check: "history",
                    message: format!("completion of operation {id}, which is not pending"),
                    lines: vec![line],
                }),
            },
            Event::Topic {
                name,
                max_deliveries: limit,
                dead_letter,
            } => {
                if let Some(limit) = limit {
                    max_deliveries.insert(name.clone(), *limit);
                }
                if let Some(dead_letter) = dead_letter {
                    dead_letter_of.insert(name.clone(), dead_letter.clone());
                }
            }
            _ => {}
        }
    }
    let mut put_by_value: HashMap<String, usize> = HashMap::new();
    for (position, operation) in all.iter().enumerate() {
        if let (Op::Put, Some(value)) = (operation.op, &operation.put_value) {
            if let Some(first) = put_by_value.insert(value.clone(), position) {
                violations.push(Violation {
                    check: "history",
                    message: format!("message {value:?} was put twice: messages must be unique"),
                    lines: vec![all[first].invoke_line, operation.invoke_line],
                });
            }
        }
    }
    // Every delivery, popped or leased, in completion order.
    let mut gets: Vec<usize> = (0..all.len())
        .filter(|&position| matches!(all[position].op, Op::Get | Op::Lease))
        .collect();
    gets.sort_by(|a, b| all[*a].complete_ms().total_cmp(&all[*b].complete_ms()));
    let mut deliveries_by_value: HashMap<String, Vec<Delivery>> = HashMap::new();
    let mut consumptions_by_value: HashMap<String, Vec<Consumption>> = HashMap::new();
    let mut value_of_receipt: HashMap<String, String> = HashMap::new();
    for position in gets {
        let operation = &all[position];
        if let Some(value) = operation.popped() {
            deliveries_by_value
                .entry(value.to_string())
                .or_default()
                .push(Delivery {
                    op: position,
                    topic: operation.topic.clone(),
                    lease: None,
                });
            consumptions_by_value
                .entry(value.to_string())
                .or_default()
                .push(Consumption {
                    op: position,
                    receipt: None,
                });
        }
        if let (Op::Lease, Some(completion)) = (operation.op, &operation.completion) {
            for item in &completion.delivered {
                let lease_ms = operation.lease_ms.unwrap_or_default();
                deliveries_by_value
                    .entry(item.value.clone())
                    .or_default()
                    .push(Delivery {
                        op: position,
                        topic: operation.topic.clone(),
                        lease: Some((item.receipt.clone(), item.deliveries, lease_ms)),
                    });
                if let Some(other) =
                    value_of_receipt.insert(item.receipt.clone(), item.value.clone())
                {
                    if other != item.value {
                        violations.push(Violation {
                            check: "receipt",
                            message: format!(
                                "receipt {:?} leased both {other:?} and {:?}",
                                item.receipt, item.value
                            ),
                            lines: operation.lines(),
                        });
                    }
                }
            }
        }
    }
    let mut settles_by_receipt: HashMap<String, Vec<usize>> = HashMap::new();
    for (position, operation) in all.iter().enumerate() {
        if !matches!(operation.op, Op::Ack | Op::Nack) {
            continue;
        }
        for receipt in &operation.receipts {
            settles_by_receipt
                .entry(receipt.clone())
                .or_default()
                .push(position);
            if operation.op == Op::Ack && operation.settled(receipt) == Some(true) {
                if let Some(value) = value_of_receipt.get(receipt) {
                    consumptions_by_value
                        .entry(value.clone())
                        .or_default()
                        .push(Consumption {
                            op: position,
                            receipt: Some(receipt.clone()),
                        });
                }
            }
        }
    }
    for consumptions in consumptions_by_value.values_mut() {
        consumptions.sort_by(|a, b| all[a.op].complete_ms().total_cmp(&all[b.op].complete_ms()));
    }
    Operations {
        all,
        put_by_value,
        deliveries_by_value,
        consumptions_by_value,
        settles_by_receipt,
        max_deliveries,
        dead_letter_of,
    }
}

/// Runs every check. Violations come sorted by first line.
pub fn check(records: &[Record]) -> (Summary, Vec<Violation>) {
    let mut violations = Vec::new();
    let operations = operations(records, &mut violations);
    check_consumption(&operations, &mut violations);
    check_lost(&operations, &mut violations);
    check_order(&operations, &mut violations);
    check_leases(&operations, &mut violations);
    check_leaders(records, &mut violations);
    check_run(records, &mut violations);
    violations.sort_by_key(|violation| violation.lines.first().copied().unwrap_or(0));
    (summary(records, &operations), violations)
}

fn check_consumption(operations: &Operations, violations: &mut Vec<Violation>) {
    let mut values: Vec<&String> = operations.deliveries_by_value.keys().collect();
    values.sort();
    for value in values {
        let deliveries = &operations.deliveries_by_value[value];
        let first = &operations.all[deliveries[0].op];
        let Some(&put_position) = operations.put_by_value.get(value) else {
            violations.push(Violation {
                check: "phantom",
                message: format!(
                    "{} got {value:?} from {:?}, a message nobody ever put",
                    first.process, first.topic
                ),
                lines: first.lines(),
            });
            continue;
        };
        let put = &operations.all[put_position];
        let consumptions = operations
            .consumptions_by_value
            .get(value)
            .map_or(&[][..], Vec::as_slice);
        if consumptions.len() > 1 {
            let mut lines = put.lines();
            let who: Vec<String> = consumptions
                .iter()
                .map(|consumption| {
                    let operation = &operations.all[consumption.op];
                    lines.extend(operation.lines());
                    let how = match &consumption.receipt {
                        None => "popped".to_string(),
                        Some(receipt) => format!("ACKed {receipt:?}"),
                    };
                    format!(
                        "{} {how} at {:.0} ms",
                        operation.process,
                        operation.complete_ms()
                    )
                })
                .collect();
            violations.push(Violation {
                check: "duplicate",
                message: format!(
                    "{value:?} (put {:?} by {}) was consumed {} times (pops and successful \
                     ACKs): {}",
                    put.outcome(),
                    put.process,
                    consumptions.len(),
                    who.join(", ")
                ),
                lines,
            });
        }
        let dead_letter = operations.dead_letter_of.get(&put.topic);
        for delivery in deliveries {
            let get = &operations.all[delivery.op];
            let mut lines = put.lines();
            lines.extend(get.lines());
            if delivery.topic != put.topic && dead_letter != Some(&delivery.topic) {
                violations.push(Violation {
                    check: "wrong_topic",
                    message: format!(
                        "{value:?} was put to {:?} but handed out from {:?}",
                        put.topic, delivery.topic
                    ),
                    lines: lines.clone(),
                });
            }
            if put.outcome() == Outcome::Fail {
                violations.push(Violation {
                    check: "failed_put_consumed",
                    message: format!(
                        "{value:?} was handed to {} although its put definitely failed",
                        get.process
                    ),
                    lines: lines.clone(),
                });
            }
            if get.complete_ms() < put.invoke_ms {
                violations.push(Violation {
                    check: "consumed_before_put",
                    message: format!(
                        "{value:?} was handed out at {:.0} ms, before its put began at {:.0} ms",
                        get.complete_ms(),
                        put.invoke_ms
                    ),
                    lines,
                });
            }
        }
    }
}

fn check_lost(operations: &Operations, violations: &mut Vec<Violation>) {
    // Per topic: acknowledged puts never consumed, and gets that may have popped unseen.
    // A message's group is its topic and that topic's dead-letter topic: a plain get of
    // either may have popped it.
    let mut missing: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    let mut unknown_gets: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for operation in &operations.all {
        match (operation.op, operation.outcome()) {
            (Op::Put, Outcome::Ok) => {
                let value = operation.put_value.as_deref().unwrap_or_default();
                if !operations.consumptions_by_value.contains_key(value)
                    && !maybe_acked(operations, value)
                {
                    missing
                        .entry(operations.group(&operation.topic))
                        .or_default()
                        .push(operation);
                }
            }
            (Op::Get, Outcome::Unknown) => unknown_gets
                .entry(operations.group(&operation.topic))
                .or_default()
                .push(operation.complete_ms()),
            _ => {}
        }
    }
    for (topic, mut lost) in missing {
        let gets = unknown_gets.get(topic).cloned().unwrap_or_default();
        // Hall's condition for matching each missing message to a distinct unknown get that
        // ended after the put began: the sets of possible gets are nested, so checking the
        // k latest-invoked messages against the gets that ended after the k-th suffices.
        lost.sort_by(|a, b| b.invoke_ms.total_cmp(&a.invoke_ms));
        let unexplained = lost.iter().enumerate().find(|(k, put)| {
            let candidates = gets.iter().filter(|&&ended| ended > put.invoke_ms).count();
            candidates < k + 1
        });
        if unexplained.is_none() {
            continue;
        }
        lost.sort_by(|a, b| a.invoke_ms.total_cmp(&b.invoke_ms));
        let shown: Vec<&str> = lost
            .iter()
            .take(10)
            .map(|put| put.put_value.as_deref().unwrap_or_default())
            .collect();
        violations.push(Violation {
            check: "lost",
            message: format!(
                "{} acknowledged messages on {topic:?} (or its dead-letter topic) were never \
                 consumed (popped, or ACKed by an ACK that may have taken effect), not in the \
                 run nor in the drain, and only {} gets of unknown outcome could have taken \
                 them: {}{}",
                lost.len(),
                gets.len(),
                shown.join(", "),
                if lost.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
            lines: lost.iter().take(5).flat_map(|put| put.lines()).collect(),
        });
    }
}

/// Whether an ACK of unknown outcome may have deleted `value`: one of its receipts was
/// ACKed so, and nothing handed the message out again after that ACK ended (if it had
/// taken effect, the message would be gone, so a later delivery proves it did not).
fn maybe_acked(operations: &Operations, value: &str) -> bool {
    let deliveries = operations
        .deliveries_by_value
        .get(value)
        .map_or(&[][..], Vec::as_slice);
    deliveries
        .iter()
        .filter_map(Delivery::receipt)
        .any(|receipt| {
            operations
                .settles_by_receipt
                .get(receipt)
                .into_iter()
                .flatten()
                .map(|&position| &operations.all[position])
                .filter(|settle| settle.op == Op::Ack && settle.settled(receipt).is_none())
                .any(|ack| {
                    deliveries
                        .iter()
                        .all(|later| operations.all[later.op].invoke_ms <= ack.complete_ms())
                })
        })
}

/// `p3-17` -> 17: producers number their messages.
fn sequence_number(value: &str) -> Option<u64> {
    value.rsplit_once('-')?.1.parse().ok()
}

fn check_order(operations: &Operations, violations: &mut Vec<Violation>) {
    // (producer, topic) -> (number, first pop)
    let mut streams: BTreeMap<(&str, &str), Vec<(u64, &Operation)>> = BTreeMap::new();
    let mut unknown_leases: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for operation in &operations.all {
        if operation.op == Op::Lease && operation.outcome() == Outcome::Unknown {
            unknown_leases
                .entry(operation.topic.as_str())
                .or_default()
                .push(operation);
        }
    }
    // A message's first delivery from its own topic: its first pop, or its lease with
    // delivery count 1 (a redelivery goes back to its place, but a message is handed out
    // the first time in put order; a dead-letter topic has an order of its own).
    for (value, deliveries) in &operations.deliveries_by_value {
        let Some(&put_position) = operations.put_by_value.get(value) else {
            continue; // A phantom: reported above.
        };
        let put = &operations.all[put_position];
        let Some(number) = sequence_number(value) else {
            continue;
        };
        // A lease with delivery count 1 is the first delivery, wherever it sits among the
        // completions: a pop can complete before it when the lease ended before its reply
        // came (a reply replayed to a retry after a leader change).
        let own_topic = |delivery: &&Delivery| delivery.topic == put.topic;
        let Some(first) = deliveries
            .iter()
            .filter(own_topic)
            .find(|delivery| delivery.count() == Some(1))
            .or_else(|| {
                deliveries
                    .iter()
                    .filter(own_topic)
                    .find(|delivery| delivery.count().is_none())
            })
        else {
            continue;
        };
        let pop = &operations.all[first.op];
        // A pop is not known to be the first delivery if a leased get of unknown outcome
        // may have leased the message before (its lease then ended unseen).
        let maybe_leased_unseen = first.lease.is_none()
            && unknown_leases
                .get(put.topic.as_str())
                .is_some_and(|leases| {
                    leases.iter().any(|lease| {
                        lease.invoke_ms < pop.complete_ms() && lease.complete_ms() > put.invoke_ms
                    })
                });
        if maybe_leased_unseen {
            continue;
        }
        streams
            .entry((put.process.as_str(), put.topic.as_str()))
            .or_default()
            .push((number, pop));
    }
    for ((producer, topic), mut stream) in streams {
        stream.sort_by_key(|(number, _)| *number);
        // The earlier message whose pop began latest so far.
        let mut latest_begin: Option<(u64, &Operation)> = None;
        for &(number, pop) in &stream {
            if let Some((earlier, earlier_pop)) = latest_begin {
                if pop.complete_ms() < earlier_pop.invoke_ms {
                    let mut lines = pop.lines();
                    lines.extend(earlier_pop.lines());
                    violations.push(Violation {
                        check: "order",
                        message: format!(
                            "{producer} put {producer}-{earlier} before {producer}-{number} on \
                             {topic:?}, yet {producer}-{number} was popped (by {}, done at \
                             {:.0} ms) before the pop of {producer}-{earlier} began (by {}, at \
                             {:.0} ms)",
                            pop.process,
                            pop.complete_ms(),
                            earlier_pop.process,
                            earlier_pop.invoke_ms
                        ),
                        lines,
                    });
                    // One report per stream is enough to see the problem.
                    break;
                }
            }
            if latest_begin.is_none_or(|(_, latest)| pop.invoke_ms > latest.invoke_ms) {
                latest_begin = Some((number, pop));
            }
        }
    }
}

/// How much earlier than `lease_ms` after its GET was invoked the checker lets a lease end.
/// PROTOCOL.md §8 promises that a lease ends no earlier than `lease_ms` after the GET was
/// answered (which is after it was invoked), also across leader changes: the lease clock
/// (`src/node/lease_clock.rs`) only ever lags real time. The looser wording allows
/// a new leader to end a lease early by up to the election time (300-600 ms in the test
/// clusters); this margin covers that and scheduling noise, and still leaves most of a
/// 2.5 or 4 s lease under the rule.
pub const LEASE_EARLY_MARGIN_MS: f64 = 1000.0;

/// `check_leases`: the properties of leased delivery (PROTOCOL.md §8), per message:
///
/// - `double_holder`: no message is handed out (leased or popped) while a lease on it
///   surely still holds: from the lease's GET reply until `lease_ms` after its invocation,
///   less [`LEASE_EARLY_MARGIN_MS`], or until its holder's NACK or ACK (one that may have
///   taken effect) was invoked. Which of two leases on one topic came first is told by
///   their delivery counts; a delivery from the dead-letter topic comes after every lease
///   on the source; otherwise only real-time order counts.
/// - `deliveries`: two leases of the message on one topic never share a delivery count,
///   counts never go backwards in real time, and a topic's `max_deliveries` is never
///   exceeded (`over_limit`).
/// - `resurrected`: nothing hands the message out once it was consumed (a pop or a
///   successful ACK completed before the get began; two pops are `duplicate`'s), and the
///   source topic never hands it out after its dead-letter topic did.
/// - `stale_settled`: an ACK or NACK that the reply says took effect, for a receipt the
///   checker knows was stale when it was sent: another holder had the message since, it
///   was dead-lettered, or the receipt was already ACKed or NACKed successfully.
/// - `lease_ended_early`: an ACK or NACK refused as stale although the lease surely still
///   held (as for `double_holder`) and nothing settled it before.
fn check_leases(operations: &Operations, violations: &mut Vec<Violation>) {
    let mut values: Vec<&String> = operations.deliveries_by_value.keys().collect();
    values.sort();
    for value in values {
        let deliveries = &operations.deliveries_by_value[value];
        check_holders(operations, value, deliveries, violations);
        check_counts(operations, value, deliveries, violations);
        check_resurrection(operations, value, deliveries, violations);
        check_settles(operations, value, deliveries, violations);
    }
}

/// Whether delivery `a` surely was handed out before delivery `b` (see `check_leases`).
fn surely_before(operations: &Operations, a: &Delivery, b: &Delivery) -> bool {
    if a.topic == b.topic {
        if let (Some(first), Some(second)) = (a.count(), b.count()) {
            return first < second;
        }
    } else if operations.dead_letter_of.get(&a.topic) == Some(&b.topic) {
        return true;
    }
    operations.all[a.op].complete_ms() < operations.all[b.op].invoke_ms
}

/// The earliest a lease may have ended, in history time: `lease_ms` after its GET was
/// invoked, less the margin, or the invocation of its holder's first ACK or NACK that may
/// have taken effect. `None` for a pop.
fn earliest_end(operations: &Operations, delivery: &Delivery) -> Option<f64> {
    let (receipt, _, lease_ms) = delivery.lease.as_ref()?;
    let get = &operations.all[delivery.op];
    let expiry = get.invoke_ms + *lease_ms as f64 - LEASE_EARLY_MARGIN_MS;
    let settled = operations
        .settles_by_receipt
        .get(receipt)
        .into_iter()
        .flatten()
        .map(|&position| &operations.all[position])
        .filter(|settle| settle.settled(receipt) != Some(false))
        .map(|settle| settle.invoke_ms)
        .fold(f64::INFINITY, f64::min);
    Some(expiry.min(settled))
}

fn describe(operations: &Operations, delivery: &Delivery) -> String {
    let get = &operations.all[delivery.op];
    match &delivery.lease {
        None => format!(
            "popped by {} from {:?} ({:.0}-{:.0} ms)",
            get.process,
            delivery.topic,
            get.invoke_ms,
            get.complete_ms()
        ),
        Some((receipt, count, lease_ms)) => format!(
            "leased by {} from {:?} for {lease_ms} ms ({:.0}-{:.0} ms, receipt {receipt:?}, \
             delivery {count})",
            get.process,
            delivery.topic,
            get.invoke_ms,
            get.complete_ms()
        ),
    }
}

fn check_holders(
    operations: &Operations,
    value: &str,
    deliveries: &[Delivery],
    violations: &mut Vec<Violation>,
) {
    for holder in deliveries {
        let Some(end) = earliest_end(operations, holder) else {
            continue;
        };
        for other in deliveries {
            if other.op == holder.op && other.receipt() == holder.receipt() {
                continue;
            }
            let got = operations.all[other.op].complete_ms();
            // The other grant came before `got`, the lease's end after `end`.
            if got < end && surely_before(operations, holder, other) {
                let mut lines = operations.all[holder.op].lines();
                lines.extend(operations.all[other.op].lines());
                violations.push(Violation {
                    check: "double_holder",
                    message: format!(
                        "{value:?} was {}, and then {}, while the first lease surely held \
                         (until at least {end:.0} ms)",
                        describe(operations, holder),
                        describe(operations, other)
                    ),
                    lines,
                });
            }
        }
    }
}

fn check_counts(
    operations: &Operations,
    value: &str,
    deliveries: &[Delivery],
    violations: &mut Vec<Violation>,
) {
    for (index, a) in deliveries.iter().enumerate() {
        let Some(count) = a.count() else {
            continue;
        };
        let get = &operations.all[a.op];
        if let Some(&limit) = operations.max_deliveries.get(&a.topic) {
            if count > limit {
                violations.push(Violation {
                    check: "over_limit",
                    message: format!(
                        "{value:?} was {}, beyond max_deliveries {limit}",
                        describe(operations, a)
                    ),
                    lines: get.lines(),
                });
            }
        }
        for b in &deliveries[index + 1..] {
            let Some(other) = b.count() else {
                continue;
            };
            if a.topic != b.topic || a.receipt() == b.receipt() {
                continue;
            }
            let other_get = &operations.all[b.op];
            let backwards = (count > other && get.complete_ms() < other_get.invoke_ms)
                || (other > count && other_get.complete_ms() < get.invoke_ms);
            if count == other || backwards {
                let mut lines = get.lines();
                lines.extend(other_get.lines());
                violations.push(Violation {
                    check: "deliveries",
                    message: format!(
                        "{value:?} was {}, and {}: delivery counts must be distinct and grow",
                        describe(operations, a),
                        describe(operations, b)
                    ),
                    lines,
                });
            }
        }
    }
}

fn check_resurrection(
    operations: &Operations,
    value: &str,
    deliveries: &[Delivery],
    violations: &mut Vec<Violation>,
) {
    let consumptions = operations
        .consumptions_by_value
        .get(value)
        .map_or(&[][..], Vec::as_slice);
    for delivery in deliveries {
        let get = &operations.all[delivery.op];
        // Two pops of one message are `duplicate`'s to report.
        let consumed = consumptions.iter().find(|consumption| {
            consumption.op != delivery.op
                && (delivery.lease.is_some() || consumption.receipt.is_some())
                && operations.all[consumption.op].complete_ms() < get.invoke_ms
        });
        let dead_lettered = deliveries.iter().find(|other| {
            operations.dead_letter_of.get(&delivery.topic) == Some(&other.topic)
                && operations.all[other.op].complete_ms() < get.invoke_ms
        });
        let earlier = match (consumed, dead_lettered) {
            (Some(consumption), _) => {
                let operation = &operations.all[consumption.op];
                let how = match &consumption.receipt {
                    Some(receipt) => format!("ACKed ({receipt:?}) by {}", operation.process),
                    None => format!("popped by {}", operation.process),
                };
                Some((how, operation.complete_ms(), operation.lines()))
            }
            (None, Some(other)) => {
                let operation = &operations.all[other.op];
                let how = format!("handed out from dead-letter topic {:?}", other.topic);
                Some((how, operation.complete_ms(), operation.lines()))
            }
            (None, None) => None,
        };
        if let Some((how, at, mut lines)) = earlier {
            lines.extend(get.lines());
            violations.push(Violation {
                check: "resurrected",
                message: format!(
                    "{value:?} was {how} at {at:.0} ms, and then {}",
                    describe(operations, delivery)
                ),
                lines,
            });
        }
    }
}

fn check_settles(
    operations: &Operations,
    value: &str,
    deliveries: &[Delivery],
    violations: &mut Vec<Violation>,
) {
    for holder in deliveries {
        let Some(receipt) = holder.receipt() else {
            continue;
        };
        let settles: Vec<&Operation> = operations
            .settles_by_receipt
            .get(receipt)
            .into_iter()
            .flatten()
            .map(|&position| &operations.all[position])
            .collect();
        let get = &operations.all[holder.op];
        for settle in &settles {
            let name = if settle.op == Op::Ack { "ACK" } else { "NACK" };
            if settle.settled(receipt) == Some(true) {
                let newer = deliveries.iter().find(|other| {
                    other.receipt() != Some(receipt)
                        && surely_before(operations, holder, other)
                        && operations.all[other.op].complete_ms() < settle.invoke_ms
                });
                let settled_before = settles.iter().find(|earlier| {
                    earlier.settled(receipt) == Some(true)
                        && earlier.complete_ms() < settle.invoke_ms
                });
                let why = match (newer, settled_before) {
                    (Some(other), _) => Some((
                        format!("it was then {}", describe(operations, other)),
                        operations.all[other.op].lines(),
                    )),
                    (None, Some(earlier)) => Some((
                        format!("{} had already settled it", earlier.process),
                        earlier.lines(),
                    )),
                    (None, None) => None,
                };
                if let Some((why, mut lines)) = why {
                    lines.extend(get.lines());
                    lines.extend(settle.lines());
                    violations.push(Violation {
                        check: "stale_settled",
                        message: format!(
                            "{} {name}ed {receipt:?} of {value:?} ({}) successfully, but {why} \
                             before that {name} was sent",
                            settle.process,
                            describe(operations, holder)
                        ),
                        lines,
                    });
                }
            }
            if settle.refused_stale(receipt) {
                let expiry = get.invoke_ms
                    + holder.lease.as_ref().map_or(0, |lease| lease.2) as f64
                    - LEASE_EARLY_MARGIN_MS;
                let settled_before = settles.iter().any(|earlier| {
                    !std::ptr::eq(*earlier, *settle)
                        && earlier.invoke_ms < settle.complete_ms()
                        && earlier.settled(receipt) != Some(false)
                });
                if settle.complete_ms() < expiry && !settled_before {
                    let mut lines = get.lines();
                    lines.extend(settle.lines());
                    violations.push(Violation {
                        check: "lease_ended_early",
                        message: format!(
                            "{}'s {name} of {receipt:?} of {value:?} ({}) was refused as stale \
                             at {:.0} ms, while the lease surely held until at least {expiry:.0} \
                             ms",
                            settle.process,
                            describe(operations, holder),
                            settle.complete_ms()
                        ),
                        lines,
                    });
                }
            }
        }
    }
}

fn check_leaders(records: &[Record], violations: &mut Vec<Violation>) {
    let mut leaders: BTreeMap<u64, BTreeMap<u64, usize>> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        if let Event::Status {
            node, role, term, ..
        } = &record.event
        {
            if role == "Leader" {
                leaders
                    .entry(*term)
                    .or_default()
                    .entry(*node)
                    .or_insert(index + 1);
            }
        }
    }
    for (term, nodes) in leaders {
        if nodes.len() > 1 {
            let names: Vec<String> = nodes.keys().map(|node| format!("node {node}")).collect();
            violations.push(Violation {
                check: "leaders_per_term",
                message: format!("{} all said they led term {term}", names.join(" and ")),
                lines: nodes.values().copied().collect(),
            });
        }
    }
}

fn check_run(records: &[Record], violations: &mut Vec<Violation>) {
    let mut recovered = false;
    for (index, record) in records.iter().enumerate() {
        let line = index + 1;
        match &record.event {
            Event::Recovery {
                ok,
                elapsed_ms,
                bound_ms,
            } => {
                recovered = true;
                if !ok {
                    violations.push(Violation {
                        check: "recovery",
                        message: format!(
                            "the cluster took no write within {bound_ms} ms of the last fault \
                             healing (gave up after {elapsed_ms} ms)"
                        ),
                        lines: vec![line],
                    });
                }
            }
            Event::Convergence { ok: false, detail } => violations.push(Violation {
                check: "convergence",
                message: format!("the nodes did not end with the same state: {detail}"),
                lines: vec![line],
            }),
            Event::Membership { ok: false, detail } => violations.push(Violation {
                check: "membership",
                message: detail.clone(),
                lines: vec![line],
            }),
            Event::Note {
                text,
                problem: true,
            } => violations.push(Violation {
                check: "problem",
                message: text.clone(),
                lines: vec![line],
            }),
            _ => {}
        }
    }
    if !recovered {
        violations.push(Violation {
            check: "recovery",
            message: "the history has no recovery probe after the last fault".to_string(),
            lines: Vec::new(),
        });
    }
}

fn summary(records: &[Record], operations: &Operations) -> Summary {
    let mut summary = Summary {
        operations: operations.all.len(),
        ..Summary::default()
    };
    for operation in &operations.all {
        if operation.completion.is_none() {
            summary.never_completed += 1;
        }
        match (operation.op, operation.outcome()) {
            (Op::Put, Outcome::Ok) => summary.puts_ok += 1,
            (Op::Put, Outcome::Fail) => summary.puts_failed += 1,
            (Op::Put, Outcome::Unknown) => summary.puts_unknown += 1,
            (Op::Get, Outcome::Ok) if operation.popped().is_some() => {
                summary.gets_message += 1;
                if operation.process == "drain" {
                    summary.consumed_in_drain += 1;
                }
            }
            (Op::Get, Outcome::Ok) => summary.gets_empty += 1,
            (Op::Get, Outcome::Fail) => summary.gets_failed += 1,
            (Op::Get, Outcome::Unknown) => summary.gets_unknown += 1,
            (Op::Lease, Outcome::Ok) => {
                let delivered = operation
                    .completion
                    .as_ref()
                    .map_or(&[][..], |completion| completion.delivered.as_slice());
                if delivered.is_empty() {
                    summary.leases_empty += 1;
                } else {
                    summary.leases_message += 1;
                    summary.messages_leased += delivered.len();
                    summary.redeliveries +=
                        delivered.iter().filter(|item| item.deliveries > 1).count();
                }
            }
            (Op::Lease, Outcome::Fail) => summary.leases_failed += 1,
            (Op::Lease, Outcome::Unknown) => summary.leases_unknown += 1,
            (Op::Ack | Op::Nack, _) => {
                for receipt in &operation.receipts {
                    let (done, stale, unknown) = if operation.op == Op::Ack {
                        (
                            &mut summary.acked,
                            &mut summary.ack_stale,
                            &mut summary.ack_unknown,
                        )
                    } else {
                        (
                            &mut summary.nacked,
                            &mut summary.nack_stale,
                            &mut summary.nack_unknown,
                        )
                    };
                    match operation.settled(receipt) {
                        Some(true) => *done += 1,
                        None => *unknown += 1,
                        Some(false) if operation.refused_stale(receipt) => *stale += 1,
                        Some(false) => {}
                    }
                }
            }
        }
    }
    let mut dead_lettered: BTreeSet<&str> = BTreeSet::new();
    for (value, deliveries) in &operations.deliveries_by_value {
        for delivery in deliveries {
            if operations.group(&delivery.topic) != delivery.topic {
                dead_lettered.insert(value);
            }
            let Some((receipt, _, lease_ms)) = &delivery.lease else {
                continue;
            };
            let get = &operations.all[delivery.op];
            let settled_in_time = operations
                .settles_by_receipt
                .get(receipt)
                .into_iter()
                .flatten()
                .any(|&position| {
                    operations.all[position].invoke_ms < get.complete_ms() + *lease_ms as f64
                });
            if !settled_in_time {
                summary.dropped += 1;
            }
        }
    }
    summary.dead_lettered = dead_lettered.len();
    let mut leaderships: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut fault_started_ms: Option<f64> = None;
    for record in records {
        match &record.event {
            Event::Nemesis {
                phase: Phase::Start,
                kind,
                ..
            } => {
                *summary.faults.entry(kind.clone()).or_default() += 1;
                fault_started_ms = Some(record.t_ms);
            }
            Event::Nemesis {
                phase: Phase::Heal, ..
            } => {
                if let Some(started) = fault_started_ms.take() {
                    summary.fault_ms += record.t_ms - started;
                }
            }
            Event::Status {
                node, role, term, ..
            } => {
                summary.status_samples += 1;
                summary.max_term = summary.max_term.max(*term);
                if role == "Leader" {
                    leaderships.insert((*term, *node));
                }
            }
            Event::Recovery { elapsed_ms, .. } => summary.recovery_ms = Some(*elapsed_ms),
            Event::Member { action, ok, .. } => match action.as_str() {
                "stop" if *ok => summary.replacements += 1,
                "put" => summary.member_puts += 1,
                "delete" => summary.member_deletes += 1,
                _ => {}
            },
            _ => {}
        }
    }
    summary.leaders_seen = leaderships.len();
    summary.duration_ms = records.last().map_or(0.0, |record| record.t_ms);
    summary
}

/// The violations, each with the history lines around the ones that show it (`>>` marks
/// them), for a person to read.
pub fn render(violations: &[Violation], history_lines: &[String], context: usize) -> String {
    let mut text = String::new();
    for (number, violation) in violations.iter().enumerate().take(20) {
        let _ = writeln!(
            text,
            "\nVIOLATION {} [{}]: {}",
            number + 1,
            violation.check,
            violation.message
        );
        let marked: BTreeSet<usize> = violation.lines.iter().copied().collect();
        let mut shown: BTreeSet<usize> = BTreeSet::new();
        for &line in marked.iter().take(6) {
            let first = line.saturating_sub(context).max(1);
            let last = (line + context).min(history_lines.len());
            shown.extend(first..=last);
        }
        let mut previous = 0;
        for line in shown {
            if previous != 0 && line != previous + 1 {
                let _ = writeln!(text, "       ...");
            }
            let mark = if marked.contains(&line) { ">>" } else { "  " };
            let _ = writeln!(
                text,
                "{mark}{line:>6} {}",
                history_lines.get(line - 1).map_or("", String::as_str)
            );
            previous = line;
        }
    }
    if violations.len() > 20 {
        let _ = writeln!(text, "\n... and {} more violations", violations.len() - 20);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::history::LeaseRequest;

    /// Builds histories line by line, one millisecond apart unless told to wait.
    #[derive(Default)]
    struct Builder {
        records: Vec<Record>,
        next_id: u64,
        now_ms: f64,
    }

    impl Builder {
        fn push(&mut self, event: Event) {
            let t_ms = self.now_ms;
            self.now_ms += 1.0;
            self.records.push(Record { t_ms, event });
        }

        /// Lets `ms` milliseconds pass before the next line.
        fn wait(&mut self, ms: u64) {
            self.now_ms += ms as f64;
        }

        fn topic(&mut self, name: &str, max_deliveries: Option<u64>, dead_letter: Option<&str>) {
            self.push(Event::Topic {
                name: name.into(),
                max_deliveries,
                dead_letter: dead_letter.map(str::to_string),
            });
        }

        /// A leased GET of `lease_ms` handing out `items` (value, receipt, delivery count).
        fn lease(
            &mut self,
            process: &str,
            topic: &str,
            lease_ms: u64,
            outcome: Outcome,
            items: &[(&str, &str, u64)],
        ) {
            self.next_id += 1;
            let id = self.next_id;
            self.push(Event::Invoke {
                id,
                process: process.into(),
                op: Op::Lease,
                topic: topic.into(),
                value: None,
                lease: Some(LeaseRequest {
                    lease_ms,
                    max: (items.len() > 1).then_some(5),
                    wait_ms: None,
                }),
                receipts: None,
                many: false,
            });
            let delivered = items
                .iter()
                .map(|(value, receipt, deliveries)| Leased {
                    value: (*value).into(),
                    receipt: (*receipt).into(),
                    deliveries: *deliveries,
                })
                .collect();
            self.push(Event::Complete {
                id,
                process: process.into(),
                op: Op::Lease,
                topic: topic.into(),
                outcome,
                value: None,
                error: None,
                delivered: Some(delivered),
                stale: None,
            });
        }

        /// An ACK or NACK of `receipts` whose reply refused `stale` (with outcome `Ok`, a
        /// batch's list; with `Fail`, the single receipt's `STALE_RECEIPT`).
        fn settle(
            &mut self,
            process: &str,
            op: Op,
            topic: &str,
            receipts: &[&str],
            outcome: Outcome,
            stale: &[&str],
        ) {
            self.next_id += 1;
            let id = self.next_id;
            self.push(Event::Invoke {
                id,
                process: process.into(),
                op,
                topic: topic.into(),
                value: None,
                lease: None,
                receipts: Some(receipts.iter().map(|r| r.to_string()).collect()),
                many: receipts.len() > 1,
            });
            self.push(Event::Complete {
                id,
                process: process.into(),
                op,
                topic: topic.into(),
                outcome,
                value: None,
                error: None,
                delivered: None,
                stale: (outcome != Outcome::Unknown)
                    .then(|| stale.iter().map(|r| r.to_string()).collect()),
            });
        }

        fn ack(&mut self, process: &str, topic: &str, receipt: &str, outcome: Outcome) {
            let stale: &[&str] = if outcome == Outcome::Fail {
                &[receipt]
            } else {
                &[]
            };
            self.settle(process, Op::Ack, topic, &[receipt], outcome, stale);
        }

        fn invoke(&mut self, process: &str, op: Op, topic: &str, value: Option<&str>) -> u64 {
            self.next_id += 1;
            let id = self.next_id;
            self.push(Event::Invoke {
                id,
                process: process.into(),
                op,
                topic: topic.into(),
                value: value.map(str::to_string),
                lease: None,
                receipts: None,
                many: false,
            });
            id
        }

        fn complete(&mut self, id: u64, outcome: Outcome, value: Option<&str>) {
            let (process, op, topic) = self
                .records
                .iter()
                .find_map(|record| match &record.event {
                    Event::Invoke {
                        id: invoked,
                        process,
                        op,
                        topic,
                        ..
                    } if *invoked == id => Some((process.clone(), *op, topic.clone())),
                    _ => None,
                })
                .expect("invoked first");
            self.push(Event::Complete {
                id,
                process,
                op,
                topic,
                outcome,
                value: value.map(str::to_string),
                error: None,
                delivered: None,
                stale: None,
            });
        }

        fn put(&mut self, process: &str, topic: &str, value: &str, outcome: Outcome) {
            let id = self.invoke(process, Op::Put, topic, Some(value));
            self.complete(id, outcome, Some(value));
        }

        fn get(&mut self, process: &str, topic: &str, outcome: Outcome, value: Option<&str>) {
            let id = self.invoke(process, Op::Get, topic, None);
            self.complete(id, outcome, value);
        }

        fn status(&mut self, node: u64, role: &str, term: u64) {
            self.push(Event::Status {
                node,
                role: role.into(),
                term,
                leader: None,
                commit_index: 0,
            });
        }

        fn recovered(&mut self) {
            self.push(Event::Recovery {
                ok: true,
                elapsed_ms: 5,
                bound_ms: 100,
            });
        }

        fn checks_failed(&self) -> Vec<&'static str> {
            let (_, violations) = check(&self.records);
            let mut checks: Vec<&'static str> =
                violations.iter().map(|violation| violation.check).collect();
            checks.dedup();
            checks
        }
    }

    /// A clean history with every allowed kind of uncertainty.
    fn clean() -> Builder {
        let mut history = Builder::default();
        history.status(0, "Leader", 1);
        history.put("p0", "t0", "p0-1", Outcome::Ok);
        history.put("p0", "t0", "p0-2", Outcome::Unknown); // Applied after all.
        history.put("p0", "t0", "p0-3", Outcome::Unknown); // Never applied.
        history.put("p0", "t0", "p0-4", Outcome::Ok);
        history.put("p0", "t0", "p0-5", Outcome::Ok); // Popped by an unknown get.
        history.put("p1", "t1", "p1-1", Outcome::Fail);
        history.status(1, "Leader", 2);
        history.status(0, "Follower", 2);
        history.get("c0", "t0", Outcome::Ok, Some("p0-1"));
        history.get("c0", "t0", Outcome::Ok, Some("p0-2"));
        history.get("c1", "t1", Outcome::Ok, None);
        history.get("c0", "t0", Outcome::Ok, Some("p0-4"));
        history.get("c1", "t0", Outcome::Unknown, None);
        history.get("c1", "t0", Outcome::Fail, None);
        history.recovered();
        history.get("drain", "t0", Outcome::Ok, None);
        history
    }

    #[test]
    fn a_clean_history_passes_with_unknown_outcomes_accounted_for() {
        let history = clean();
        let (summary, violations) = check(&history.records);
        assert_eq!(violations, Vec::new());
        assert_eq!(summary.puts_ok, 3);
        assert_eq!(summary.puts_unknown, 2);
        assert_eq!(summary.gets_message, 3);
        assert_eq!(summary.gets_unknown, 1);
        assert_eq!(summary.leaders_seen, 2);
    }

    #[test]
    fn each_kind_of_violation_is_caught_by_its_check() {
        type Breaker = fn(&mut Builder);
        let cases: Vec<(&str, Breaker, Vec<&str>)> = vec![
            (
                "an acknowledged put never consumed, no unknown get to blame",
                |history| history.put("p2", "t2", "p2-1", Outcome::Ok),
                vec!["lost"],
            ),
            (
                "three acknowledged puts lost, two unknown gets to blame",
                |history| {
                    history.put("p0", "t0", "p0-6", Outcome::Ok);
                    history.put("p0", "t0", "p0-7", Outcome::Ok);
                    history.get("c1", "t0", Outcome::Unknown, None);
                },
                vec!["lost"],
            ),
            (
                "an unknown get that ended before the put began excuses nothing",
                |history| {
                    history.get("c2", "t2", Outcome::Unknown, None);
                    history.put("p2", "t2", "p2-1", Outcome::Ok);
                },
                vec!["lost"],
            ),
            (
                "a message consumed twice",
                |history| history.get("drain", "t0", Outcome::Ok, Some("p0-4")),
                vec!["duplicate"],
            ),
            (
                "an unknown put consumed twice",
                |history| history.get("c1", "t0", Outcome::Ok, Some("p0-2")),
                vec!["duplicate"],
            ),
            (
                "a message nobody put",
                |history| history.get("c0", "t1", Outcome::Ok, Some("p9-1")),
                vec!["phantom"],
            ),
            (
                "a message whose put failed",
                |history| history.get("c0", "t1", Outcome::Ok, Some("p1-1")),
                vec!["failed_put_consumed"],
            ),
            (
                "a message popped from another topic",
                |history| {
                    history.put("p2", "t2", "p2-1", Outcome::Ok);
                    history.get("c0", "t1", Outcome::Ok, Some("p2-1"));
                },
                vec!["wrong_topic"],
            ),
            (
                "a message popped before its put began",
                |history| {
                    history.get("c0", "t2", Outcome::Ok, Some("p2-1"));
                    history.put("p2", "t2", "p2-1", Outcome::Ok);
                },
                vec!["consumed_before_put"],
            ),
            (
                "a producer's later message popped first",
                |history| {
                    history.put("p2", "t2", "p2-1", Outcome::Ok);
                    history.put("p2", "t2", "p2-2", Outcome::Ok);
                    history.get("c0", "t2", Outcome::Ok, Some("p2-2"));
                    history.get("c0", "t2", Outcome::Ok, Some("p2-1"));
                },
                vec!["order"],
            ),
            (
                "two leaders in one term",
                |history| history.status(2, "Leader", 2),
                vec!["leaders_per_term"],
            ),
            (
                "no write accepted after the faults healed",
                |history| {
                    history.push(Event::Recovery {
                        ok: false,
                        elapsed_ms: 100,
                        bound_ms: 100,
                    })
                },
                vec!["recovery"],
            ),
            (
                "diverged replicas",
                |history| {
                    history.push(Event::Convergence {
                        ok: false,
                        detail: "digests differ".into(),
                    })
                },
                vec!["convergence"],
            ),
            (
                "members that disagree on the membership at the end",
                |history| {
                    history.push(Event::Member {
                        action: "stop".into(),
                        node: 1,
                        ok: true,
                        detail: "removed and stopped".into(),
                    });
                    history.push(Event::Membership {
                        ok: false,
                        detail: "member GET lists [0, 2], node 3 answers as a member".into(),
                    })
                },
                vec!["membership"],
            ),
            (
                "a node that exited on its own",
                |history| {
                    history.push(Event::Note {
                        text: "node 1 exited".into(),
                        problem: true,
                    })
                },
                vec!["problem"],
            ),
        ];
        for (name, breaker, expected) in cases {
            let mut history = clean();
            breaker(&mut history);
            assert_eq!(history.checks_failed(), expected, "case {name:?}");
        }
    }

    /// A clean history of leased delivery with the uncertainty it allows: a crashed holder
    /// whose message came back, a late ACK refused as stale, NACKs, a batch ACK, an ACK of
    /// unknown outcome, a message dead-lettered and drained from the dead-letter topic.
    fn clean_leases() -> Builder {
        let mut history = Builder::default();
        history.topic("tdl1", None, None);
        history.topic("tl0", None, None);
        history.topic("tl1", Some(2), Some("tdl1"));
        history.put("p0", "tl0", "p0-1", Outcome::Ok);
        history.put("p0", "tl0", "p0-2", Outcome::Ok);
        history.put("p0", "tl0", "p0-3", Outcome::Ok);
        history.put("p0", "tl1", "p0-4", Outcome::Ok);
        // p0-1: the holder crashes; after its lease another gets it and ACKs; the first
        // holder's late ACK is refused.
        history.lease("l0", "tl0", 2500, Outcome::Ok, &[("p0-1", "r1", 1)]);
        // p0-2 and p0-3 in one batch: p0-2 NACKed, p0-3 ACKed with unknown outcome.
        history.lease(
            "l1",
            "tl0",
            1000,
            Outcome::Ok,
            &[("p0-2", "r2", 1), ("p0-3", "r3", 1)],
        );
        history.settle("l1", Op::Nack, "tl0", &["r2"], Outcome::Ok, &[]);
        history.ack("l1", "tl0", "r3", Outcome::Unknown);
        history.lease("l1", "tl0", 1000, Outcome::Ok, &[("p0-2", "r4", 2)]);
        history.settle("l1", Op::Ack, "tl0", &["r4"], Outcome::Ok, &[]);
        // p0-4, on the limited topic: given up on twice, then dead-lettered.
        history.lease("l1", "tl1", 300, Outcome::Ok, &[("p0-4", "r5", 1)]);
        history.settle("l1", Op::Nack, "tl1", &["r5"], Outcome::Ok, &[]);
        history.lease("l1", "tl1", 300, Outcome::Ok, &[("p0-4", "r6", 2)]);
        history.wait(2600);
        history.lease("l1", "tl0", 2500, Outcome::Ok, &[("p0-1", "r7", 2)]);
        history.ack("l0", "tl0", "r1", Outcome::Fail);
        history.settle("l1", Op::Ack, "tl0", &["r7"], Outcome::Ok, &[]);
        history.lease("l0", "tl1", 1000, Outcome::Unknown, &[]);
        history.recovered();
        history.get("drain", "tl0", Outcome::Ok, None);
        history.get("drain", "tl1", Outcome::Ok, None);
        history.get("drain", "tdl1", Outcome::Ok, Some("p0-4"));
        history.get("drain", "tdl1", Outcome::Ok, None);
        history
    }

    #[test]
    fn a_clean_history_of_leases_passes() {
        let history = clean_leases();
        let (summary, violations) = check(&history.records);
        assert_eq!(violations, Vec::new());
        assert_eq!(summary.leases_message, 6);
        assert_eq!(summary.leases_unknown, 1);
        assert_eq!(summary.messages_leased, 7);
        assert_eq!(summary.redeliveries, 3);
        assert_eq!(
            (summary.acked, summary.ack_stale, summary.ack_unknown),
            (2, 1, 1)
        );
        assert_eq!(summary.nacked, 2);
        // r1 (crashed) and r6 (dead-lettered).
        assert_eq!(summary.dropped, 2);
        assert_eq!(summary.dead_lettered, 1);
    }

    #[test]
    fn each_kind_of_lease_violation_is_caught_by_its_check() {
        type Breaker = fn(&mut Builder);
        let cases: Vec<(&str, Breaker, Vec<&str>)> = vec![
            (
                "a leased message handed to a second consumer while the lease holds",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 2500, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.wait(100);
                    history.lease("l1", "tl0", 2500, Outcome::Ok, &[("p1-1", "s2", 2)]);
                    history.settle("l1", Op::Ack, "tl0", &["s2"], Outcome::Ok, &[]);
                },
                vec!["double_holder"],
            ),
            (
                "a leased message popped by a plain get while the lease holds",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 4000, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.wait(2000);
                    history.get("c0", "tl0", Outcome::Ok, Some("p1-1"));
                },
                vec!["double_holder"],
            ),
            (
                "a crashed holder's message that never came back",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 300, Outcome::Ok, &[("p1-1", "s1", 1)]);
                },
                vec!["lost"],
            ),
            (
                "an ACK of unknown outcome that did not take effect (redelivered after it), \
                 then the message lost",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 300, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.ack("l0", "tl0", "s1", Outcome::Unknown);
                    history.wait(500);
                    history.lease("l1", "tl0", 300, Outcome::Ok, &[("p1-1", "s2", 2)]);
                },
                vec!["lost"],
            ),
            (
                "a leased message nobody put",
                |history| {
                    history.lease("l0", "tl0", 300, Outcome::Ok, &[("p9-1", "s1", 1)]);
                    history.settle("l0", Op::Ack, "tl0", &["s1"], Outcome::Ok, &[]);
                },
                vec!["phantom"],
            ),
            (
                "one receipt ACKed twice with success",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 2500, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.settle("l0", Op::Ack, "tl0", &["s1"], Outcome::Ok, &[]);
                    history.settle("l0", Op::Ack, "tl0", &["s1"], Outcome::Ok, &[]);
                },
                vec!["duplicate", "stale_settled"],
            ),
            (
                "a message ACKed by two holders one after the other",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 300, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.settle("l0", Op::Ack, "tl0", &["s1"], Outcome::Ok, &[]);
                    history.wait(500);
                    history.lease("l1", "tl0", 300, Outcome::Ok, &[("p1-1", "s2", 2)]);
                    history.settle("l1", Op::Ack, "tl0", &["s2"], Outcome::Ok, &[]);
                },
                vec!["duplicate", "resurrected"],
            ),
            (
                "an ACK that succeeded with a receipt known to be stale",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 300, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.wait(1000);
                    history.lease("l1", "tl0", 300, Outcome::Ok, &[("p1-1", "s2", 2)]);
                    history.settle("l0", Op::Ack, "tl0", &["s1"], Outcome::Ok, &[]);
                },
                vec!["stale_settled"],
            ),
            (
                "a receipt refused as stale while its lease surely held",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 4000, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.ack("l0", "tl0", "s1", Outcome::Fail);
                    history.wait(5000);
                    history.get("drain", "tl0", Outcome::Ok, Some("p1-1"));
                },
                vec!["lease_ended_early"],
            ),
            (
                "a batch ACK that listed a live receipt as stale",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 4000, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.settle("l0", Op::Ack, "tl0", &["s1"], Outcome::Ok, &["s1"]);
                    history.wait(5000);
                    history.get("drain", "tl0", Outcome::Ok, Some("p1-1"));
                },
                vec!["lease_ended_early"],
            ),
            (
                "a message delivered more often than max_deliveries",
                |history| {
                    history.put("p1", "tl1", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl1", 300, Outcome::Ok, &[("p1-1", "s3", 3)]);
                    history.settle("l0", Op::Ack, "tl1", &["s3"], Outcome::Ok, &[]);
                },
                vec!["over_limit"],
            ),
            (
                "two leases with the same delivery count",
                |history| {
                    history.put("p1", "tl0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 300, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.wait(1000);
                    history.lease("l1", "tl0", 300, Outcome::Ok, &[("p1-1", "s2", 1)]);
                    history.settle("l1", Op::Ack, "tl0", &["s2"], Outcome::Ok, &[]);
                },
                vec!["deliveries"],
            ),
            (
                "a dead-lettered message handed out again by its source topic",
                |history| {
                    history.put("p1", "tl1", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl1", 300, Outcome::Ok, &[("p1-1", "s1", 2)]);
                    history.wait(1000);
                    history.lease("l1", "tdl1", 300, Outcome::Ok, &[("p1-1", "s2", 1)]);
                    history.settle("l1", Op::Nack, "tdl1", &["s2"], Outcome::Ok, &[]);
                    history.wait(1000);
                    history.get("c0", "tl1", Outcome::Ok, Some("p1-1"));
                },
                vec!["resurrected"],
            ),
            (
                "a leased message put to another topic",
                |history| {
                    history.put("p1", "t0", "p1-1", Outcome::Ok);
                    history.lease("l0", "tl0", 300, Outcome::Ok, &[("p1-1", "s1", 1)]);
                    history.settle("l0", Op::Ack, "tl0", &["s1"], Outcome::Ok, &[]);
                },
                vec!["wrong_topic"],
            ),
        ];
        for (what, breaker, expected) in cases {
            let mut history = clean_leases();
            breaker(&mut history);
            let mut failed = history.checks_failed();
            failed.sort();
            failed.dedup();
            let mut expected = expected;
            expected.sort();
            assert_eq!(failed, expected, "{what}");
        }
    }

    /// A leased get of unknown outcome may have taken messages that come back later, out of
    /// the order in which later messages were popped meanwhile.
    #[test]
    fn pops_after_an_unknown_lease_may_be_out_of_order() {
        let mut history = clean_leases();
        history.put("p1", "tl0", "p1-1", Outcome::Ok);
        history.put("p1", "tl0", "p1-2", Outcome::Ok);
        history.lease("l0", "tl0", 1000, Outcome::Unknown, &[]);
        history.get("c0", "tl0", Outcome::Ok, Some("p1-2"));
        history.wait(1500);
        history.get("c0", "tl0", Outcome::Ok, Some("p1-1"));
        assert_eq!(history.checks_failed(), Vec::<&str>::new());
        // Without the unknown lease, that order is a violation.
        let mut history = clean_leases();
        history.put("p1", "tl0", "p1-1", Outcome::Ok);
        history.put("p1", "tl0", "p1-2", Outcome::Ok);
        history.get("c0", "tl0", Outcome::Ok, Some("p1-2"));
        history.get("c0", "tl0", Outcome::Ok, Some("p1-1"));
        assert_eq!(history.checks_failed(), vec!["order"]);
    }

    /// A lease with delivery count 1 is the message's first delivery even when its reply
    /// completes after a pop of the same message: the lease ended before the reply came (a
    /// reply replayed to a retry after a leader change). Seen in a long membership run.
    #[test]
    fn a_first_lease_whose_reply_comes_after_a_pop_is_the_first_delivery() {
        let mut history = clean_leases();
        history.put("p1", "tl0", "p1-1", Outcome::Ok);
        history.put("p1", "tl0", "p1-2", Outcome::Ok);
        history.next_id += 1;
        let id = history.next_id;
        history.push(Event::Invoke {
            id,
            process: "l0".into(),
            op: Op::Lease,
            topic: "tl0".into(),
            value: None,
            lease: Some(LeaseRequest {
                lease_ms: 300,
                max: None,
                wait_ms: None,
            }),
            receipts: None,
            many: false,
        });
        history.wait(1000);
        history.lease("l1", "tl0", 1000, Outcome::Ok, &[("p1-2", "r2", 1)]);
        history.get("c0", "tl0", Outcome::Ok, Some("p1-1"));
        history.push(Event::Complete {
            id,
            process: "l0".into(),
            op: Op::Lease,
            topic: "tl0".into(),
            outcome: Outcome::Ok,
            value: None,
            error: None,
            delivered: Some(vec![Leased {
                value: "p1-1".into(),
                receipt: "r1".into(),
                deliveries: 1,
            }]),
            stale: None,
        });
        history.settle("l1", Op::Ack, "tl0", &["r2"], Outcome::Ok, &[]);
        assert!(
            !history.checks_failed().contains(&"order"),
            "{:?}",
            history.checks_failed()
        );
    }

    /// The holder rule is no stricter than the contract: a second holder right after the
    /// lease's length (less the margin) since the first GET began, or right after the
    /// holder's NACK began, is fine.
    #[test]
    fn a_second_holder_after_the_lease_or_a_nack_passes() {
        let mut history = clean_leases();
        history.put("p1", "tl0", "p1-1", Outcome::Ok);
        history.put("p1", "tl0", "p1-2", Outcome::Ok);
        history.lease("l0", "tl0", 2500, Outcome::Ok, &[("p1-1", "s1", 1)]);
        history.wait(2500 - LEASE_EARLY_MARGIN_MS as u64);
        history.lease("l1", "tl0", 2500, Outcome::Ok, &[("p1-1", "s2", 2)]);
        history.settle("l1", Op::Ack, "tl0", &["s2"], Outcome::Ok, &[]);
        history.lease("l0", "tl0", 4000, Outcome::Ok, &[("p1-2", "s3", 1)]);
        history.settle("l0", Op::Nack, "tl0", &["s3"], Outcome::Unknown, &[]);
        history.lease("l1", "tl0", 4000, Outcome::Ok, &[("p1-2", "s4", 2)]);
        history.settle("l1", Op::Ack, "tl0", &["s4"], Outcome::Ok, &[]);
        assert_eq!(history.checks_failed(), Vec::<&str>::new());
    }

    #[test]
    fn concurrent_pops_may_complete_in_either_order() {
        let mut history = clean();
        history.put("p2", "t2", "p2-1", Outcome::Ok);
        history.put("p2", "t2", "p2-2", Outcome::Ok);
        // c1's pop of p2-1 begins before c0's pop of p2-2 ends, but ends after it.
        let first = history.invoke("c1", Op::Get, "t2", None);
        history.get("c0", "t2", Outcome::Ok, Some("p2-2"));
        history.complete(first, Outcome::Ok, Some("p2-1"));
        assert_eq!(history.checks_failed(), Vec::<&str>::new());
    }

    #[test]
    fn a_history_without_a_recovery_probe_fails() {
        let mut history = clean();
        history
            .records
            .retain(|record| !matches!(record.event, Event::Recovery { .. }));
        assert_eq!(history.checks_failed(), vec!["recovery"]);
    }

    #[test]
    fn render_marks_the_lines_of_a_violation_with_context() {
        let violation = Violation {
            check: "lost",
            message: "m".into(),
            lines: vec![3, 9],
        };
        let lines: Vec<String> = (1..=12).map(|line| format!("line {line}")).collect();
        let text = render(&[violation], &lines, 1);
        assert!(text.contains("VIOLATION 1 [lost]: m"), "{text}");
        assert!(text.contains(">>     3 line 3"), "{text}");
        assert!(text.contains("       2 line 2"), "{text}");
        assert!(text.contains("       ..."), "{text}");
        assert!(!text.contains("line 6"), "{text}");
    }
}
