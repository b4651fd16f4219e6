//! The checker: reads a run's history and says whether the queue kept its promises.
//!
//! One function per property, each returning the violations it found with the history lines
//! that show them:
//!
//! - `check_consumption`: every consumed message was put (`phantom`), to the topic it was
//!   consumed from (`wrong_topic`), by a put that did not definitely fail
//!   (`failed_put_consumed`), and not before that put began (`consumed_before_put`); no
//!   message was consumed twice (`duplicate`). Unknown-outcome puts may be consumed, at most
//!   once like the rest.
//! - `check_lost`: every acknowledged put was consumed during the run or in the drain
//!   (`lost`). The one excuse: a get whose outcome is unknown may have popped a message
//!   nobody saw. Each such get can excuse at most one message of its topic, put before that
//!   get ended; the check is Hall's condition for that matching, so it never blames a
//!   history that some assignment of pops explains.
//! - `check_order`: a producer's messages on one topic are consumed in the order it put
//!   them. Producers put one message at a time, so put order is their numbering; pops are
//!   linearizable, so a later message's pop that completed before an earlier message's pop
//!   began is a violation (`order`).
//! - `check_leaders`: at most one node says it is leader in any term, over all status
//!   samples (`leaders_per_term`).
//! - `check_run`: the cluster took a write within the bound after the last fault healed
//!   (`recovery`), every node ended with the same applied state (`convergence`), and the
//!   harness noted no problem such as a node that exited on its own (`problem`).
//!
//! What it must not do: trust timing beyond the history's real-time order, or accept a
//! history it cannot explain.

use crate::history::{Event, Op, Outcome, Phase, Record};
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
    pub consumed_in_drain: usize,
    pub faults: BTreeMap<String, usize>,
    /// Time with a fault in force, from each start to its heal.
    pub fault_ms: f64,
    pub status_samples: usize,
    pub max_term: u64,
    pub leaders_seen: usize,
    pub recovery_ms: Option<u64>,
    pub duration_ms: f64,
}

impl Summary {
    pub fn render(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, count)| format!("{kind} x{count}"))
            .collect();
        format!(
            "puts: {} ok, {} failed, {} unknown; gets: {} messages ({} in the drain), {} empty, \
             {} failed, {} unknown; {} never completed\n\
             faults ({}, in force {:.1} s): {}\n\
             status samples: {}, terms up to {}, {} leaderships seen; recovery after the last \
             heal: {}; history spans {:.1} s",
            self.puts_ok,
            self.puts_failed,
            self.puts_unknown,
            self.gets_message,
            self.consumed_in_drain,
            self.gets_empty,
            self.gets_failed,
            self.gets_unknown,
            self.never_completed,
            self.faults.values().sum::<usize>(),
            self.fault_ms / 1000.0,
            faults.join(", "),
            self.status_samples,
            self.max_term,
            self.leaders_seen,
            self.recovery_ms
                .map_or("not measured".to_string(), |ms| format!("{ms} ms")),
            self.duration_ms / 1000.0,
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
    completion: Option<Completion>,
}

#[derive(Clone, Debug)]
struct Completion {
    line: usize,
    ms: f64,
    outcome: Outcome,
    value: Option<String>,
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

/// The operations of a history, in invocation order, and the puts by message.
struct Operations {
    all: Vec<Operation>,
    put_by_value: HashMap<String, usize>,
    /// Indexes into `all` of the successful gets of each message, in completion order.
    pops_by_value: HashMap<String, Vec<usize>>,
}

fn operations(records: &[Record], violations: &mut Vec<Violation>) -> Operations {
    let mut all: Vec<Operation> = Vec::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    for (index, record) in records.iter().enumerate() {
        let line = index + 1;
        match &record.event {
            Event::Invoke {
                id,
                process,
                op,
                topic,
                value,
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
                    completion: None,
                });
            }
            Event::Complete {
                id, outcome, value, ..
            } => match by_id.get(id) {
                Some(&position) if all[position].completion.is_none() => {
                    all[position].completion = Some(Completion {
                        line,
                        ms: record.t_ms,
                        outcome: *outcome,
                        value: value.clone(),
                    });
                }
                _ => violations.push(Violation {
                    check: "history",
                    message: format!("completion of operation {id}, which is not pending"),
                    lines: vec![line],
                }),
            },
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
    let mut pops: Vec<usize> = (0..all.len())
        .filter(|&position| all[position].popped().is_some())
        .collect();
    pops.sort_by(|a, b| all[*a].complete_ms().total_cmp(&all[*b].complete_ms()));
    let mut pops_by_value: HashMap<String, Vec<usize>> = HashMap::new();
    for position in pops {
        let value = all[position]
            .popped()
            .expect("filtered on pops")
            .to_string();
        pops_by_value.entry(value).or_default().push(position);
    }
    Operations {
        all,
        put_by_value,
        pops_by_value,
    }
}

/// Runs every check. Violations come sorted by first line.
pub fn check(records: &[Record]) -> (Summary, Vec<Violation>) {
    let mut violations = Vec::new();
    let operations = operations(records, &mut violations);
    check_consumption(&operations, &mut violations);
    check_lost(&operations, &mut violations);
    check_order(&operations, &mut violations);
    check_leaders(records, &mut violations);
    check_run(records, &mut violations);
    violations.sort_by_key(|violation| violation.lines.first().copied().unwrap_or(0));
    (summary(records, &operations), violations)
}

fn check_consumption(operations: &Operations, violations: &mut Vec<Violation>) {
    let mut values: Vec<&String> = operations.pops_by_value.keys().collect();
    values.sort();
    for value in values {
        let pops = &operations.pops_by_value[value];
        let first = &operations.all[pops[0]];
        let Some(&put_position) = operations.put_by_value.get(value) else {
            violations.push(Violation {
                check: "phantom",
                message: format!(
                    "{} popped {value:?} from {:?}, a message nobody ever put",
                    first.process, first.topic
                ),
                lines: first.lines(),
            });
            continue;
        };
        let put = &operations.all[put_position];
        if pops.len() > 1 {
            let mut lines = put.lines();
            let who: Vec<String> = pops
                .iter()
                .map(|&position| {
                    let pop = &operations.all[position];
                    lines.extend(pop.lines());
                    format!("{} at {:.0} ms", pop.process, pop.complete_ms())
                })
                .collect();
            violations.push(Violation {
                check: "duplicate",
                message: format!(
                    "{value:?} (put {:?} by {}) was consumed {} times: {}",
                    put.outcome(),
                    put.process,
                    pops.len(),
                    who.join(", ")
                ),
                lines,
            });
        }
        for &position in pops {
            let pop = &operations.all[position];
            let mut lines = put.lines();
            lines.extend(pop.lines());
            if pop.topic != put.topic {
                violations.push(Violation {
                    check: "wrong_topic",
                    message: format!(
                        "{value:?} was put to {:?} but popped from {:?}",
                        put.topic, pop.topic
                    ),
                    lines: lines.clone(),
                });
            }
            if put.outcome() == Outcome::Fail {
                violations.push(Violation {
                    check: "failed_put_consumed",
                    message: format!(
                        "{value:?} was popped by {} although its put definitely failed",
                        pop.process
                    ),
                    lines: lines.clone(),
                });
            }
            if pop.complete_ms() < put.invoke_ms {
                violations.push(Violation {
                    check: "consumed_before_put",
                    message: format!(
                        "{value:?} was popped at {:.0} ms, before its put began at {:.0} ms",
                        pop.complete_ms(),
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
    let mut missing: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    let mut unknown_gets: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for operation in &operations.all {
        match (operation.op, operation.outcome()) {
            (Op::Put, Outcome::Ok) => {
                let value = operation.put_value.as_deref().unwrap_or_default();
                if !operations.pops_by_value.contains_key(value) {
                    missing.entry(&operation.topic).or_default().push(operation);
                }
            }
            (Op::Get, Outcome::Unknown) => unknown_gets
                .entry(&operation.topic)
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
                "{} acknowledged messages on {topic:?} were never consumed, not in the run nor \
                 in the drain, and only {} gets of unknown outcome could have taken them: {}{}",
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

/// `p3-17` -> 17: producers number their messages.
fn sequence_number(value: &str) -> Option<u64> {
    value.rsplit_once('-')?.1.parse().ok()
}

fn check_order(operations: &Operations, violations: &mut Vec<Violation>) {
    // (producer, topic) -> (number, first pop)
    let mut streams: BTreeMap<(&str, &str), Vec<(u64, &Operation)>> = BTreeMap::new();
    for (value, pops) in &operations.pops_by_value {
        let Some(&put_position) = operations.put_by_value.get(value) else {
            continue; // A phantom: reported above.
        };
        let put = &operations.all[put_position];
        let Some(number) = sequence_number(value) else {
            continue;
        };
        let pop = &operations.all[pops[0]];
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
    let mut summary = Summary::default();
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
        }
    }
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

    /// Builds histories line by line, one millisecond apart.
    #[derive(Default)]
    struct Builder {
        records: Vec<Record>,
        next_id: u64,
    }

    impl Builder {
        fn push(&mut self, event: Event) {
            let t_ms = self.records.len() as f64;
            self.records.push(Record { t_ms, event });
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
