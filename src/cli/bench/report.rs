//! What a benchmark run measured, and how it is shown: a text report for people, JSON for
//! scripts, a live progress line for a terminal, a markdown table for the matrix.
//!
//! It owns the numbers: one [`Recorder`] per run counts calls by operation and outcome and
//! keeps a latency histogram (hdrhistogram, microseconds, 3 significant digits) of the calls
//! that succeeded; [`Recorder::finish`] turns it into a [`Report`] of plain values.
//!
//! What it must not do: touch sockets or clocks (the driver passes times in), so every
//! number and every line of output can be tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::call::{self, RetryReason, Setback};
use crate::protocol::ErrorCode;

/// A decisive reply as the benchmark counts it: retrying cannot change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// `success: true` to a PUT.
    Done,
    /// `success: true` with a message, to a GET.
    Message,
    /// `EMPTY` to a GET: the topic has no message left.
    Empty,
    /// Any other decisive failure (`NO_SUCH_TOPIC`, `TOO_LARGE`, `SESSION_EXPIRED`...).
    Failed(ErrorCode),
    /// A reply that makes no sense for the operation (a topic list, a status report).
    Unexpected,
    /// `success: true` to a batch call (batch PUT, batch or leased GET, ACK of receipts):
    /// this many messages put, handed out or acknowledged. A batch GET of none is `Empty`.
    Batch(u32),
    /// `success: true` to an ACK of receipts: this many took effect, and the node refused
    /// `stale` of them as `STALE_RECEIPT` (their lease had ended, or they were acknowledged
    /// before).
    Acked { acked: u32, stale: u32 },
}

/// How a simulated client's call ended.
pub(super) type CallResult = call::CallResult<Verdict>;
/// A finished call, as the recorder takes it.
pub(super) type Finish = call::Finish<Verdict>;

/// Latencies are recorded in microseconds up to this; longer ones are clamped to it (a call
/// gives up long before).
const LATENCY_MICROSECONDS_MAX: u64 = 3_600_000_000;

/// The operations a benchmark client performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum OperationKind {
    /// `message PUT`.
    Put,
    /// `message GET`.
    Get,
    /// `message ACK` of leased messages' receipts.
    Ack,
}

impl OperationKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            OperationKind::Put => "put",
            OperationKind::Get => "get",
            OperationKind::Ack => "ack",
        }
    }
}

/// Counts and latencies of one operation kind.
#[derive(Debug)]
struct OperationRecord {
    /// Latencies of the calls that succeeded (a PUT acknowledged, a GET that got a message).
    latency: Histogram<u64>,
    /// GETs answered EMPTY: decisive, but not a message consumed.
    empty: u64,
    /// Calls that failed, by kind: the code of a decisive failure, or `gave up (...)`.
    errors: BTreeMap<String, u64>,
    /// Attempts after the first, by reason.
    retries: BTreeMap<String, u64>,
    /// Successful calls since the last progress line, and their latencies.
    interval_count: u64,
    interval_latency: Histogram<u64>,
    /// Messages the successful calls carried, when any call was a batch call (`None`: one
    /// message per call, and the report says nothing more).
    messages: Option<u64>,
    /// Receipts an ACK named that the node refused as stale (`None`: no ACK ended).
    stale: Option<u64>,
    /// Successful calls per second of the run, for `--plot`: bucket N holds the calls that
    /// ended in second N after the recorder was made (the start of the measured window).
    timeline: Vec<SecondBucket>,
}

/// One second of one operation's successful calls.
#[derive(Debug)]
struct SecondBucket {
    calls: u64,
    /// Messages the calls carried (one per plain call).
    messages: u64,
    latency: Histogram<u64>,
}

impl SecondBucket {
    fn new() -> SecondBucket {
        SecondBucket {
            calls: 0,
            messages: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_MICROSECONDS_MAX, 2)
                .expect("constant bounds are valid"),
        }
    }
}

/// One second of a run as `--plot` draws it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TimelinePoint {
    /// The second's end, from the start of the measured window.
    pub end_second: u64,
    pub calls: u64,
    pub messages: u64,
    /// `None` in a second without a successful call.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl OperationRecord {
    fn new() -> OperationRecord {
        OperationRecord {
            latency: Histogram::new_with_bounds(1, LATENCY_MICROSECONDS_MAX, 3)
                .expect("constant bounds are valid: 1 <= low, high >= 2 * low, 3 digits"),
            empty: 0,
            errors: BTreeMap::new(),
            retries: BTreeMap::new(),
            interval_count: 0,
            interval_latency: Histogram::new_with_bounds(1, LATENCY_MICROSECONDS_MAX, 2)
                .expect("constant bounds are valid"),
            messages: None,
            stale: None,
            timeline: Vec::new(),
        }
    }

    /// A successful call of `messages` messages that took `microseconds`, ending in `second`.
    fn succeeded(&mut self, second: usize, microseconds: u64, messages: u64) {
        self.latency.saturating_record(microseconds);
        self.interval_count += 1;
        self.interval_latency.saturating_record(microseconds);
        // A bounded series: a run longer than a day keeps counting in its last second.
        let second = second.min(TIMELINE_SECONDS_MAX - 1);
        while self.timeline.len() <= second {
            self.timeline.push(SecondBucket::new());
        }
        let bucket = &mut self.timeline[second];
        bucket.calls += 1;
        bucket.messages += messages;
        bucket.latency.saturating_record(microseconds);
    }

    fn timeline_points(&self) -> Vec<TimelinePoint> {
        let milliseconds = |bucket: &SecondBucket, quantile: f64| {
            (bucket.calls > 0).then(|| bucket.latency.value_at_quantile(quantile) as f64 / 1000.0)
        };
        self.timeline
            .iter()
            .enumerate()
            .map(|(second, bucket)| TimelinePoint {
                end_second: second as u64 + 1,
                calls: bucket.calls,
                messages: bucket.messages,
                p50_ms: milliseconds(bucket, 0.5),
                p99_ms: milliseconds(bucket, 0.99),
            })
            .collect()
    }
}

/// The longest per-second series a run keeps (a day).
const TIMELINE_SECONDS_MAX: usize = 86_400;

/// Collects the outcomes of a run's calls.
#[derive(Debug)]
pub(super) struct Recorder {
    operations: BTreeMap<OperationKind, OperationRecord>,
    /// When it was made: the origin of the per-second series.
    started: Instant,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub(super) fn new() -> Recorder {
        Recorder {
            operations: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    fn operation(&mut self, kind: OperationKind) -> &mut OperationRecord {
        self.operations
            .entry(kind)
            .or_insert_with(OperationRecord::new)
    }

    /// A finished call of `kind`.
    pub(super) fn record(&mut self, kind: OperationKind, finish: Finish) {
        let microseconds = u64::try_from(finish.latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_MICROSECONDS_MAX);
        let second = usize::try_from(self.started.elapsed().as_secs()).unwrap_or(usize::MAX);
        let record = self.operation(kind);
        match finish.result {
            CallResult::Answered(Verdict::Batch(count)) => {
                *record.messages.get_or_insert(0) += u64::from(count);
                record.succeeded(second, microseconds, u64::from(count));
            }
            CallResult::Answered(Verdict::Acked { acked, stale }) => {
                *record.messages.get_or_insert(0) += u64::from(acked);
                *record.stale.get_or_insert(0) += u64::from(stale);
                record.succeeded(second, microseconds, u64::from(acked));
            }
            CallResult::Answered(Verdict::Done | Verdict::Message) => {
                if let Some(messages) = record.messages.as_mut() {
                    *messages += 1;
                }
                record.succeeded(second, microseconds, 1);
            }
            CallResult::Answered(Verdict::Empty) => record.empty += 1,
            CallResult::Answered(Verdict::Failed(code)) => {
                *record.errors.entry(code.as_str().to_string()).or_default() += 1;
            }
            CallResult::Answered(Verdict::Unexpected) => {
                *record
                    .errors
                    .entry("UNEXPECTED_REPLY".to_string())
                    .or_default() += 1;
            }
            CallResult::GaveUp { last } => {
                let key = match last {
                    Some(Setback::Refused { code, .. }) => format!("GAVE_UP ({})", code.as_str()),
                    Some(Setback::Dropped { .. }) => "GAVE_UP (dropped)".to_string(),
                    _ => "GAVE_UP (silence)".to_string(),
                };
                *record.errors.entry(key).or_default() += 1;
            }
            // The driver ends the run instead when it cannot connect to a node.
            CallResult::Unreachable => {
                *record.errors.entry("UNREACHABLE".to_string()).or_default() += 1;
            }
        }
    }

    /// An attempt after the first.
    pub(super) fn record_retry(&mut self, kind: OperationKind, reason: RetryReason) {
        let key = match reason {
            RetryReason::Redirect => "redirect".to_string(),
            RetryReason::Refused(code) => code.as_str().to_string(),
            RetryReason::Silence => "silence".to_string(),
            RetryReason::Dropped => "dropped".to_string(),
            RetryReason::Hedge => "hedge".to_string(),
        };
        *self.operation(kind).retries.entry(key).or_default() += 1;
    }

    /// Per operation, the successful calls and their median latency since the last call,
    /// for a progress line.
    pub(super) fn take_intervals(&mut self) -> Vec<(OperationKind, u64, Duration)> {
        self.operations
            .iter_mut()
            .map(|(kind, record)| {
                let count = record.interval_count;
                let median = Duration::from_micros(record.interval_latency.value_at_quantile(0.5));
                record.interval_count = 0;
                record.interval_latency.reset();
                (*kind, count, median)
            })
            .collect()
    }

    /// Failed calls so far, all operations.
    pub(super) fn error_count(&self) -> u64 {
        self.operations
            .values()
            .flat_map(|record| record.errors.values())
            .sum()
    }

    /// The summary of a run that measured for `elapsed`.
    pub(super) fn finish(&self, elapsed: Duration) -> Vec<OperationReport> {
        let seconds = elapsed.as_secs_f64();
        self.operations
            .iter()
            .map(|(kind, record)| {
                let completed = record.latency.len();
                let milliseconds =
                    |quantile: f64| record.latency.value_at_quantile(quantile) as f64 / 1000.0;
                OperationReport {
                    operation: *kind,
                    completed,
                    empty: record.empty,
                    errors: record.errors.clone(),
                    retries: record.retries.clone(),
                    ops_per_second: if seconds > 0.0 {
                        completed as f64 / seconds
                    } else {
                        0.0
                    },
                    messages: record.messages,
                    stale_receipts: record.stale,
                    messages_per_second: record.messages.map(|messages| {
                        if seconds > 0.0 {
                            messages as f64 / seconds
                        } else {
                            0.0
                        }
                    }),
                    latency_ms: (completed > 0).then(|| LatencySummary {
                        p50: milliseconds(0.5),
                        p90: milliseconds(0.9),
                        p99: milliseconds(0.99),
                        p999: milliseconds(0.999),
                        max: record.latency.max() as f64 / 1000.0,
                        mean: record.latency.mean() / 1000.0,
                    }),
                    timeline: record.timeline_points(),
                }
            })
            .collect()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct OperationReport {
    pub operation: OperationKind,
    /// Successful calls in the measured time.
    pub completed: u64,
    pub empty: u64,
    pub errors: BTreeMap<String, u64>,
    pub retries: BTreeMap<String, u64>,
    pub ops_per_second: f64,
    /// Messages the successful calls carried, only for batch calls (`--batch`, `--max`,
    /// `--ack`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<f64>,
    /// For ACKs: receipts the node refused as `STALE_RECEIPT`; absent for other operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_receipts: Option<u64>,
    /// `None` when no call succeeded.
    pub latency_ms: Option<LatencySummary>,
    /// Per second of the measured window, for `--plot` (not in `--json`, which stays a
    /// summary).
    #[serde(skip)]
    pub timeline: Vec<TimelinePoint>,
}

/// One node as `status` described it before the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct NodeReport {
    pub address: String,
    /// `None` when the node did not answer.
    pub id: Option<u64>,
    pub role: Option<String>,
    pub fsync: Option<String>,
}

/// One node's write-ahead log over the measured window, from v2 `status` read just before
/// and just after it: how many entries it persisted and in how many syncs (fsync calls, or
/// under `fsync never` the batches that would have synced).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct WalReport {
    pub address: String,
    pub id: Option<u64>,
    pub role: Option<String>,
    pub entries: u64,
    pub syncs: u64,
    pub entries_per_second: f64,
    /// `None` when the node made no sync in the window.
    pub entries_per_sync: Option<f64>,
}

impl WalReport {
    /// The window's report from the counters `(wal_syncs, wal_entries)` before and after.
    pub(super) fn between(
        address: String,
        id: Option<u64>,
        role: Option<String>,
        before: (u64, u64),
        after: (u64, u64),
        elapsed_seconds: f64,
    ) -> WalReport {
        // A node that restarted in the window starts counting from zero again.
        let syncs = after.0.saturating_sub(before.0);
        let entries = after.1.saturating_sub(before.1);
        WalReport {
            address,
            id,
            role,
            entries,
            syncs,
            entries_per_second: entries as f64 / elapsed_seconds.max(f64::EPSILON),
            entries_per_sync: (syncs > 0).then(|| entries as f64 / syncs as f64),
        }
    }
}

/// The cluster the benchmark ran against.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct ClusterReport {
    /// From the leader's replication progress when it answered, else the nodes known.
    pub size: usize,
    pub leader: Option<u64>,
    pub nodes: Vec<NodeReport>,
}

/// CPU time spent in the measured phase, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub(super) struct CpuTime {
    pub user_seconds: f64,
    pub system_seconds: f64,
}

impl CpuTime {
    pub(super) fn total_seconds(self) -> f64 {
        self.user_seconds + self.system_seconds
    }

    pub(super) fn minus(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_seconds: (self.user_seconds - earlier.user_seconds).max(0.0),
            system_seconds: (self.system_seconds - earlier.system_seconds).max(0.0),
        }
    }

    /// As a share of one core over `elapsed`, in percent.
    pub(super) fn percent_of_core(self, elapsed: Duration) -> f64 {
        let seconds = elapsed.as_secs_f64();
        if seconds > 0.0 {
            100.0 * self.total_seconds() / seconds
        } else {
            0.0
        }
    }
}

/// A watched process (a node the bench started, or one named with --watch-pid).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct ProcessReport {
    pub pid: u32,
    pub cpu: CpuTime,
    /// VmRSS at the end of the run, in KiB.
    pub rss_kib: Option<u64>,
}

/// Everything about one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Report {
    /// `produce`, `consume` or `mixed`.
    pub workload: String,
    pub cluster: ClusterReport,
    /// The parameters, as `name -> value` text, in a stable order.
    pub parameters: BTreeMap<String, String>,
    pub elapsed_seconds: f64,
    pub operations: Vec<OperationReport>,
    /// The benchmark process itself (all threads, ZeroMQ's included).
    pub bench_cpu: CpuTime,
    pub bench_cpu_percent_of_core: f64,
    pub watched: Vec<ProcessReport>,
    /// Each node that answered `status` before and after the measured window.
    pub wal: Vec<WalReport>,
}

impl Report {
    pub(super) fn operation(&self, kind: OperationKind) -> Option<&OperationReport> {
        self.operations
            .iter()
            .find(|operation| operation.operation == kind)
    }

    /// All failed calls.
    pub(super) fn error_count(&self) -> u64 {
        self.operations
            .iter()
            .flat_map(|operation| operation.errors.values())
            .sum()
    }

    /// CPU of the watched processes over the measured phase, in percent of one core.
    pub(super) fn watched_cpu_percent(&self) -> Option<f64> {
        if self.watched.is_empty() {
            return None;
        }
        let total: f64 = self
            .watched
            .iter()
            .map(|process| process.cpu.total_seconds())
            .sum();
        Some(if self.elapsed_seconds > 0.0 {
            100.0 * total / self.elapsed_seconds
        } else {
            0.0
        })
    }

    /// The report for people.
    pub(super) fn to_text(&self) -> String {
        let mut text = String::new();
        let cluster = &self.cluster;
        let fsync: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| {
                let name = match node.id {
                    Some(id) => format!("node {id}"),
                    None => node.address.clone(),
                };
                format!("{name} {}", node.fsync.as_deref().unwrap_or("unknown"))
            })
            .collect();
        let leader = match cluster.leader {
            Some(id) => format!("leader node {id}"),
            None => "no leader seen".to_string(),
        };
        let _ = writeln!(
            text,
            "rrmq bench {}: {} node{} ({leader}); fsync: {}",
            self.workload,
            cluster.size,
            if cluster.size == 1 { "" } else { "s" },
            fsync.join(", ")
        );
        let parameters: Vec<String> = self
            .parameters
            .iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect();
        let _ = writeln!(text, "  {}", parameters.join(", "));
        let _ = writeln!(text, "  measured {:.2} s", self.elapsed_seconds);
        let _ = writeln!(text);
        let _ = writeln!(
            text,
            "  {:<4} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "completed", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for operation in &self.operations {
            let latency = |pick: fn(&LatencySummary) -> f64| {
                operation
                    .latency_ms
                    .as_ref()
                    .map(|summary| format_milliseconds(pick(summary)))
                    .unwrap_or_else(|| "-".to_string())
            };
            let _ = writeln!(
                text,
                "  {:<4} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                operation.operation.name(),
                thousands(operation.completed),
                thousands(operation.ops_per_second.round() as u64),
                latency(|summary| summary.p50),
                latency(|summary| summary.p90),
                latency(|summary| summary.p99),
                latency(|summary| summary.p999),
                latency(|summary| summary.max),
            );
        }
        let _ = writeln!(text);
        for operation in &self.operations {
            let name = operation.operation.name();
            let _ = writeln!(text, "  {name} errors: {}", counts(&operation.errors));
            let _ = writeln!(text, "  {name} retries: {}", counts(&operation.retries));
            if operation.empty > 0 {
                let _ = writeln!(text, "  {name} answered EMPTY: {}", operation.empty);
            }
            if let (Some(messages), Some(per_second)) =
                (operation.messages, operation.messages_per_second)
            {
                let _ = writeln!(
                    text,
                    "  {name} messages: {} ({} messages/s)",
                    thousands(messages),
                    thousands(per_second.round() as u64)
                );
            }
            if let Some(stale) = operation.stale_receipts {
                let _ = writeln!(text, "  {name} stale receipts: {}", thousands(stale));
            }
        }
        let _ = writeln!(
            text,
            "  bench CPU: {:.2} s user + {:.2} s system = {:.1}% of one core",
            self.bench_cpu.user_seconds,
            self.bench_cpu.system_seconds,
            self.bench_cpu_percent_of_core
        );
        for node in &self.wal {
            let name = match node.id {
                Some(id) => format!("node {id}"),
                None => node.address.clone(),
            };
            let role = node.role.as_deref().unwrap_or("unknown");
            let per_sync = node
                .entries_per_sync
                .map(|ratio| format!("{ratio:.1}"))
                .unwrap_or_else(|| "-".to_string());
            let _ = writeln!(
                text,
                "  {name} ({role}) WAL: {} entries/s persisted, {} entries in {} syncs, \
                 {per_sync} entries per fsync",
                thousands(node.entries_per_second.round() as u64),
                thousands(node.entries),
                thousands(node.syncs),
            );
        }
        for process in &self.watched {
            let rss = process
                .rss_kib
                .map(|kib| format!(", RSS {:.1} MiB", kib as f64 / 1024.0))
                .unwrap_or_default();
            let _ = writeln!(
                text,
                "  pid {}: {:.2} s user + {:.2} s system = {:.1}% of one core{rss}",
                process.pid,
                process.cpu.user_seconds,
                process.cpu.system_seconds,
                100.0 * process.cpu.total_seconds() / self.elapsed_seconds.max(f64::EPSILON),
            );
        }
        text
    }
}

/// `none`, or `NOT_LEADER 3, silence 1`.
fn counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_string();
    }
    counts
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1234567` -> `1,234,567`.
pub(super) fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Milliseconds with three significant digits at most, e.g. `0.412`, `3.21`, `12.3`, `1234`.
pub(super) fn format_milliseconds(milliseconds: f64) -> String {
    if milliseconds < 1.0 {
        format!("{milliseconds:.3}")
    } else if milliseconds < 10.0 {
        format!("{milliseconds:.2}")
    } else if milliseconds < 100.0 {
        format!("{milliseconds:.1}")
    } else {
        format!("{milliseconds:.0}")
    }
}

/// The live line on a terminal: elapsed time, then per operation the rate and median latency
/// of the last interval, then the error count so far.
pub(super) fn progress_line(
    elapsed: Duration,
    intervals: &[(OperationKind, u64, Duration)],
    interval: Duration,
    errors: u64,
) -> String {
    let seconds = interval.as_secs_f64().max(f64::EPSILON);
    let parts: Vec<String> = intervals
        .iter()
        .map(|(kind, count, median)| {
            format!(
                "{} {}/s p50 {} ms",
                kind.name(),
                thousands((*count as f64 / seconds).round() as u64),
                format_milliseconds(median.as_secs_f64() * 1000.0)
            )
        })
        .collect();
    format!(
        "{:>6.1}s  {}  errors {errors}",
        elapsed.as_secs_f64(),
        parts.join("  ")
    )
}

/// One row of the matrix table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct MatrixRow {
    pub workload: String,
    pub clients: usize,
    pub message_bytes: usize,
    pub report: Report,
}

/// The matrix as a markdown table.
pub(super) fn matrix_table(rows: &[MatrixRow]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "| workload | C | size | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | bench CPU | nodes CPU |"
    );
    let _ = writeln!(text, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let kind = if row.workload == "consume" {
            OperationKind::Get
        } else {
            OperationKind::Put
        };
        let operation = row.report.operation(kind);
        let latency = |pick: fn(&LatencySummary) -> f64| {
            operation
                .and_then(|operation| operation.latency_ms.as_ref())
                .map(|summary| format_milliseconds(pick(summary)))
                .unwrap_or_else(|| "-".to_string())
        };
        let rate = operation
            .map(|operation| thousands(operation.ops_per_second.round() as u64))
            .unwrap_or_else(|| "-".to_string());
        let nodes_cpu = row
            .report
            .watched_cpu_percent()
            .map(|percent| format!("{percent:.0}%"))
            .unwrap_or_else(|| "-".to_string());
        let _ = writeln!(
            text,
            "| {} | {} | {} | {rate} | {} | {} | {} | {} | {} | {} | {:.0}% | {nodes_cpu} |",
            row.workload,
            row.clients,
            format_bytes(row.message_bytes),
            latency(|summary| summary.p50),
            latency(|summary| summary.p90),
            latency(|summary| summary.p99),
            latency(|summary| summary.p999),
            latency(|summary| summary.max),
            row.report.error_count(),
            row.report.bench_cpu_percent_of_core,
        );
    }
    text
}

/// `100 B`, `1 KiB`, `1.5 KiB`, `1 MiB`.
pub(super) fn format_bytes(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    let scaled = |unit: usize, name: &str| {
        if bytes.is_multiple_of(unit) {
            format!("{} {name}", bytes / unit)
        } else {
            format!("{:.1} {name}", bytes as f64 / unit as f64)
        }
    };
    if bytes >= MIB {
        scaled(MIB, "MiB")
    } else if bytes >= KIB {
        scaled(KIB, "KiB")
    } else {
        format!("{bytes} B")
    }
}

/// Building blocks for other modules' tests.
#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    /// A PUT or GET answered with success after `microseconds`.
    pub(in crate::cli::bench) fn done(microseconds: u64) -> Finish {
        Finish {
            latency: Duration::from_micros(microseconds),
            result: CallResult::Answered(Verdict::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn finish(microseconds: u64, result: CallResult) -> Finish {
        Finish {
            latency: Duration::from_micros(microseconds),
            result,
        }
    }

    const DONE: CallResult = CallResult::Answered(Verdict::Done);

    #[test]
    fn percentiles_rates_and_outcomes_are_counted_apart() {
        let mut recorder = Recorder::new();
        for microseconds in 1..=1000 {
            recorder.record(OperationKind::Put, finish(microseconds, DONE));
        }
        recorder.record(
            OperationKind::Put,
            finish(5_000_000, CallResult::GaveUp { last: None }),
        );
        recorder.record(
            OperationKind::Put,
            finish(
                10,
                CallResult::Answered(Verdict::Failed(ErrorCode::NoSuchTopic)),
            ),
        );
        recorder.record(
            OperationKind::Get,
            finish(10, CallResult::Answered(Verdict::Empty)),
        );
        recorder.record(
            OperationKind::Get,
            finish(2000, CallResult::Answered(Verdict::Message)),
        );
        recorder.record_retry(OperationKind::Put, RetryReason::Redirect);
        recorder.record_retry(
            OperationKind::Put,
            RetryReason::Refused(ErrorCode::Unavailable),
        );
        recorder.record_retry(OperationKind::Put, RetryReason::Redirect);

        let operations = recorder.finish(Duration::from_secs(2));
        assert_eq!(operations.len(), 2, "{operations:?}");
        let put = &operations[0];
        assert_eq!(put.operation, OperationKind::Put, "put sorts first");
        assert_eq!(put.completed, 1000, "failures are not completions");
        assert_eq!(put.ops_per_second, 500.0);
        let latency = put.latency_ms.as_ref().expect("latencies were recorded");
        let cases = [
            ("p50", latency.p50, 0.5),
            ("p90", latency.p90, 0.9),
            ("p99", latency.p99, 0.99),
            ("p99.9", latency.p999, 0.999),
            ("max", latency.max, 1.0),
        ];
        for (name, measured, expected) in cases {
            assert!(
                (measured - expected).abs() <= expected * 0.002,
                "{name}: {measured} ms, expected {expected} ms"
            );
        }
        assert_eq!(
            put.errors,
            BTreeMap::from([
                ("GAVE_UP (silence)".to_string(), 1),
                ("NO_SUCH_TOPIC".to_string(), 1)
            ])
        );
        assert_eq!(
            put.retries,
            BTreeMap::from([("UNAVAILABLE".to_string(), 1), ("redirect".to_string(), 2)])
        );
        let get = &operations[1];
        assert_eq!((get.completed, get.empty), (1, 1));
        assert!(get.errors.is_empty());
    }

    #[test]
    fn an_operation_without_success_has_no_latency() {
        let mut recorder = Recorder::new();
        recorder.record(
            OperationKind::Get,
            finish(10, CallResult::Answered(Verdict::Empty)),
        );
        let operations = recorder.finish(Duration::ZERO);
        assert_eq!(operations[0].latency_ms, None);
        assert_eq!(operations[0].ops_per_second, 0.0, "no division by zero");
    }

    #[test]
    fn the_interval_resets_after_each_progress_line() {
        let mut recorder = Recorder::new();
        recorder.record(OperationKind::Put, finish(700, DONE));
        recorder.record(OperationKind::Put, finish(900, DONE));
        recorder.record(
            OperationKind::Put,
            finish(5, CallResult::GaveUp { last: None }),
        );
        let intervals = recorder.take_intervals();
        assert_eq!(intervals.len(), 1, "{intervals:?}");
        let (kind, count, median) = intervals[0];
        assert_eq!(
            (kind, count),
            (OperationKind::Put, 2),
            "failures do not count"
        );
        assert!(
            (Duration::from_micros(695)..=Duration::from_micros(705)).contains(&median),
            "{median:?}"
        );
        assert_eq!(
            recorder.take_intervals(),
            vec![(OperationKind::Put, 0, Duration::ZERO)]
        );
        assert_eq!(recorder.error_count(), 1);
    }

    #[test]
    fn numbers_are_formatted_for_people() {
        let cases: [(u64, &str); 6] = [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (15012, "15,012"),
            (1234567, "1,234,567"),
            (100000, "100,000"),
        ];
        for (number, (value, expected)) in cases.into_iter().enumerate() {
            assert_eq!(thousands(value), expected, "case {number}");
        }
        let cases: [(f64, &str); 5] = [
            (0.4123, "0.412"),
            (3.214, "3.21"),
            (12.34, "12.3"),
            (1234.4, "1234"),
            (0.0, "0.000"),
        ];
        for (number, (value, expected)) in cases.into_iter().enumerate() {
            assert_eq!(format_milliseconds(value), expected, "case {number}");
        }
        let cases: [(usize, &str); 5] = [
            (100, "100 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (1024 * 1024, "1 MiB"),
            (0, "0 B"),
        ];
        for (number, (value, expected)) in cases.into_iter().enumerate() {
            assert_eq!(format_bytes(value), expected, "case {number}");
        }
    }

    #[test]
    fn the_progress_line_shows_rate_median_and_errors() {
        let line = progress_line(
            Duration::from_millis(3500),
            &[(OperationKind::Put, 12345, Duration::from_micros(810))],
            Duration::from_secs(1),
            2,
        );
        assert_eq!(line, "   3.5s  put 12,345/s p50 0.810 ms  errors 2");
    }

    fn sample_report() -> Report {
        let mut recorder = Recorder::new();
        for microseconds in [500, 600, 700] {
            recorder.record(OperationKind::Put, finish(microseconds, DONE));
        }
        recorder.record_retry(OperationKind::Put, RetryReason::Redirect);
        Report {
            workload: "produce".to_string(),
            cluster: ClusterReport {
                size: 3,
                leader: Some(1),
                nodes: vec![
                    NodeReport {
                        address: "127.0.0.1:1".to_string(),
                        id: Some(0),
                        role: Some("Follower".to_string()),
                        fsync: Some("always".to_string()),
                    },
                    NodeReport {
                        address: "127.0.0.1:2".to_string(),
                        id: None,
                        role: None,
                        fsync: None,
                    },
                ],
            },
            parameters: BTreeMap::from([("clients".to_string(), "1".to_string())]),
            elapsed_seconds: 1.0,
            operations: recorder.finish(Duration::from_secs(1)),
            bench_cpu: CpuTime {
                user_seconds: 0.25,
                system_seconds: 0.5,
            },
            bench_cpu_percent_of_core: 75.0,
            watched: vec![ProcessReport {
                pid: 42,
                cpu: CpuTime {
                    user_seconds: 0.5,
                    system_seconds: 0.25,
                },
                rss_kib: Some(2048),
            }],
            wal: vec![
                WalReport::between(
                    "127.0.0.1:1".to_string(),
                    Some(1),
                    Some("Leader".to_string()),
                    (10, 100),
                    (410, 6100),
                    2.0,
                ),
                WalReport::between("127.0.0.1:2".to_string(), None, None, (5, 5), (5, 5), 2.0),
            ],
        }
    }

    #[test]
    fn the_text_report_names_the_cluster_the_numbers_and_the_costs() {
        let text = sample_report().to_text();
        let expected_lines = [
            "rrmq bench produce: 3 nodes (leader node 1); fsync: node 0 always, 127.0.0.1:2 unknown",
            "  clients 1",
            "  put           3          3     0.600     0.700     0.700     0.700     0.700",
            "  put errors: none",
            "  put retries: redirect 1",
            "  bench CPU: 0.25 s user + 0.50 s system = 75.0% of one core",
            "  pid 42: 0.50 s user + 0.25 s system = 75.0% of one core, RSS 2.0 MiB",
            "  node 1 (Leader) WAL: 3,000 entries/s persisted, 6,000 entries in 400 syncs, \
             15.0 entries per fsync",
            "  127.0.0.1:2 (unknown) WAL: 0 entries/s persisted, 0 entries in 0 syncs, \
             - entries per fsync",
        ];
        for (number, line) in expected_lines.iter().enumerate() {
            assert!(
                text.lines().any(|candidate| candidate == *line),
                "case {number}: no line {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn the_json_report_has_the_fields_scripts_read() {
        let value = serde_json::to_value(sample_report()).expect("a report serializes");
        let put = &value["operations"][0];
        assert_eq!(put["operation"], "put");
        assert_eq!(put["completed"], 3);
        assert_eq!(put["latency_ms"]["p50"], 0.6);
        assert_eq!(value["cluster"]["size"], 3);
        assert_eq!(value["cluster"]["nodes"][0]["fsync"], "always");
        assert_eq!(value["bench_cpu"]["user_seconds"], 0.25);
        assert_eq!(value["watched"][0]["rss_kib"], 2048);
        assert_eq!(value["wal"][0]["entries_per_second"], 3000.0);
        assert_eq!(value["wal"][0]["entries_per_sync"], 15.0);
        assert_eq!(value["wal"][1]["entries_per_sync"], serde_json::Value::Null);
    }

    #[test]
    fn the_matrix_table_is_markdown_with_one_row_per_cell() {
        let report = sample_report();
        let rows = vec![
            MatrixRow {
                workload: "produce".to_string(),
                clients: 64,
                message_bytes: 1024,
                report: report.clone(),
            },
            MatrixRow {
                workload: "consume".to_string(),
                clients: 16,
                message_bytes: 100,
                report,
            },
        ];
        let table = matrix_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].starts_with("|---|"), "{table}");
        assert_eq!(
            lines[2],
            "| produce | 64 | 1 KiB | 3 | 0.600 | 0.700 | 0.700 | 0.700 | 0.700 | 0 | 75% | 75% |"
        );
        assert_eq!(
            lines[3], "| consume | 16 | 100 B | - | - | - | - | - | - | 0 | 75% | 75% |",
            "a consume row reads the get operation, which this report lacks"
        );
        for line in &lines {
            assert_eq!(line.matches('|').count(), 13, "{line}");
        }
    }
}
