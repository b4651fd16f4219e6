//! `rrmq bench failover`: how long writes stop when the leader dies or stalls, as a client
//! sees it.
//!
//! Why it exists: "failover in milliseconds" is a claim about the whole path: the followers
//! noticing the leader is gone and electing another, and the client noticing its request
//! will not be answered and finding the new leader. Only a producer measuring its own
//! acknowledgements sees all of it. This starts a fresh local 3-node cluster (as
//! `--matrix` does, through the [`launcher`]), runs one closed-loop producer (C=1) with
//! the benchmark's driver (the client library's retry rules, connection drops included),
//! and fails the leader N times:
//!
//! - `kill`: SIGKILL; the leader's connections close at once. Restarted after the writes
//!   resume.
//! - `stop`: SIGSTOP; the leader keeps its connections but answers nothing, like a node
//!   that is merely slow, so the client leaves it only after its attempt timeout.
//!   SIGCONT after the writes resume.
//!
//! Per failure it reports the time from the signal to the first write acknowledged by
//! another node (a new leader), and the longest gap between two acknowledgements from the
//! last one before the signal until the next failure (so a disruption caused by the
//! restart counts too). Between failures it waits until every node answers, one leads and
//! replicates to all the others, then lets the producer run for `--settle`.
//!
//! What it owns: its clusters (stopped and removed on every path, as the matrix's), the
//! signal schedule and the report. What it must not do: wait without a bound (every wait
//! has one: `--recovery-timeout` per failure, [`HEALTH_WAIT`] for the cluster to heal), or
//! send a signal to anything but a node it started.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::driver::{self, Ack, Connections, Observer, Plan, Role};
use super::matrix::{utc_date, CellCluster};
use super::process::machine_description;
use super::report::format_bytes;
use super::{message_of, parse_duration, parse_size};
use crate::cli::launcher::{self, STATUS_ATTEMPT_TIMEOUT};
use crate::cli::{CliError, GlobalOptions};
use crate::client::call::Timing;
use crate::client::{Client, ClientOptions};
use crate::config::FsyncMode;
use crate::protocol::StatusReport;

/// Nodes in the cluster.
const NODE_COUNT: usize = 3;
/// How long the cluster may take to heal after a failure (restart, election, catch-up) on a
/// loaded machine.
pub(super) const HEALTH_WAIT: Duration = Duration::from_secs(60);
/// Between status rounds while waiting for the cluster to heal.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Most failures per signal.
const FAILURES_MAX: usize = 1_000;
/// Longest `--recovery-timeout` and `--settle`.
const WAIT_MAX: Duration = Duration::from_secs(600);

/// How the leader is failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailoverSignal {
    /// SIGKILL, then restart: connections drop at once
    Kill,
    /// SIGSTOP, then SIGCONT: no connection drops; the node is merely silent
    Stop,
    /// The kills, then the stops, each on a fresh cluster
    Both,
}

impl FailoverSignal {
    fn signals(self) -> Vec<Failure> {
        match self {
            FailoverSignal::Kill => vec![Failure::Kill],
            FailoverSignal::Stop => vec![Failure::Stop],
            FailoverSignal::Both => vec![Failure::Kill, Failure::Stop],
        }
    }
}

/// One way to fail the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Kill,
    Stop,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::Kill => "SIGKILL",
            Failure::Stop => "SIGSTOP",
        }
    }
}

/// rrmq bench failover: start a local 3-node cluster, produce at C=1, and fail its leader
/// N times (SIGKILL and restart, SIGSTOP and SIGCONT)
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Failures of the leader per signal
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub kills: usize,
    /// How to fail the leader
    #[arg(long, value_enum, default_value_t = FailoverSignal::Both)]
    pub signal: FailoverSignal,
    /// Give up waiting for writes to resume after a failure after this long (the failure
    /// is then reported without a recovery)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub recovery_timeout: Duration,
    /// Once the cluster is healthy again, produce this long before the next failure
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Message size in bytes (suffixes: KiB, MiB, K, M)
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_size)]
    pub size: usize,
    /// The nodes' fsync policy
    #[arg(long, value_enum, default_value_t = FsyncMode::Always)]
    pub fsync: FsyncMode,
    /// The node binary [default: rrmq-node next to this rrmq]
    #[arg(long, value_name = "PATH")]
    pub node_bin: Option<PathBuf>,
    /// Where the cluster's data dirs are created (and removed) [default: the temp dir]
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Keep the data dirs and node logs
    #[arg(long)]
    pub keep_data: bool,
}

impl FailoverArgs {
    fn validate(&self) -> Result<(), CliError> {
        if self.kills == 0 || self.kills > FAILURES_MAX {
            return Err(CliError::Usage(format!(
                "--kills must be between 1 and {FAILURES_MAX}, not {}",
                self.kills
            )));
        }
        if self.recovery_timeout.is_zero() || self.recovery_timeout > WAIT_MAX {
            return Err(CliError::Usage(format!(
                "--recovery-timeout must be more than zero and at most {WAIT_MAX:?}"
            )));
        }
        if self.settle > WAIT_MAX {
            return Err(CliError::Usage(format!(
                "--settle must be at most {WAIT_MAX:?}"
            )));
        }
        if self.size > crate::config::MESSAGE_BYTES_MAX_LIMIT {
            return Err(CliError::Usage(format!(
                "--size {} is over the largest message a node accepts",
                self.size
            )));
        }
        Ok(())
    }
}

/// One failure of the leader, as the producer saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct FailureReport {
    /// 1-based.
    pub number: usize,
    /// The node that led and was failed.
    pub leader: usize,
    /// From the signal to the first write acknowledged by another node; `None` if none
    /// came within the recovery timeout.
    pub recovery_ms: Option<f64>,
    /// The node that acknowledged it.
    pub acknowledged_by: Option<usize>,
    /// The longest time without an acknowledgement, from the last one before the signal
    /// until the next failure (or the end).
    pub longest_gap_ms: Option<f64>,
}

/// p50, p99 and max of a set of milliseconds (nearest rank); `None` for an empty set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(super) struct Summary {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Summary {
    pub(super) fn of(values: impl IntoIterator<Item = f64>) -> Summary {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        let rank = |quantile: f64| {
            let count = values.len();
            if count == 0 {
                return None;
            }
            let rank = ((quantile * count as f64).ceil() as usize).clamp(1, count);
            Some(values[rank - 1])
        };
        Summary {
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: values.last().copied(),
        }
    }
}

/// The failures of one signal, on one fresh cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct SignalReport {
    /// `SIGKILL` or `SIGSTOP`.
    pub signal: &'static str,
    pub failures: Vec<FailureReport>,
    /// Failures after which writes resumed within the recovery timeout.
    pub recovered: usize,
    /// Over the recovered failures.
    pub recovery: Summary,
    pub longest_gap: Summary,
    /// Writes acknowledged over the whole run of this signal.
    pub writes_acknowledged: u64,
}

impl SignalReport {
    fn new(signal: &'static str, failures: Vec<FailureReport>, writes: u64) -> SignalReport {
        SignalReport {
            signal,
            recovered: failures
                .iter()
                .filter(|failure| failure.recovery_ms.is_some())
                .count(),
            recovery: Summary::of(failures.iter().filter_map(|failure| failure.recovery_ms)),
            longest_gap: Summary::of(failures.iter().filter_map(|failure| failure.longest_gap_ms)),
            failures,
            writes_acknowledged: writes,
        }
    }
}

/// What `--json` prints.
#[derive(Clone, Debug, Serialize)]
pub(super) struct FailoverOutput {
    pub machine: String,
    pub date: String,
    pub nodes: usize,
    pub fsync: &'static str,
    pub message_bytes: usize,
    pub clients: usize,
    /// The producer's attempt timeout: how long it waits on a silent (stopped) node.
    pub attempt_timeout_ms: f64,
    /// The producer's hedge delay: after this much silence it asks another node too;
    /// `None`: hedging off.
    pub hedge_after_ms: Option<f64>,
    pub settle_ms: f64,
    pub runs: Vec<SignalReport>,
}

pub(super) fn run(
    global: &GlobalOptions,
    args: &FailoverArgs,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    if global.node.is_some() {
        return Err(CliError::Usage(
            "rrmq bench failover starts its own cluster; --node does not apply".into(),
        ));
    }
    args.validate()?;
    let node_bin = launcher::node_bin(args.node_bin.as_deref())?;
    let data_root = args.data_root.clone().unwrap_or_else(std::env::temp_dir);
    let timing = Timing {
        attempt_timeout: global
            .attempt_timeout
            .unwrap_or(crate::client::ATTEMPT_TIMEOUT_DEFAULT)
            .min(global.timeout),
        deadline: global.timeout,
        hedge_after: global.hedge_after.0,
    };
    let progress = !global.json;
    let machine = machine_description();
    let date = utc_date(SystemTime::now());
    if progress {
        eprintln!(
            "rrmq bench failover: {} failures of the leader per signal on a fresh \
             {NODE_COUNT}-node cluster, fsync {}; {machine}",
            args.kills,
            args.fsync.as_str()
        );
    }
    let mut runs = Vec::new();
    for failure in args.signal.signals() {
        let cluster = CellCluster::start(&node_bin, &data_root, args.fsync, args.keep_data)?;
        runs.push(run_signal(cluster, failure, args, timing, progress)?);
    }
    let output = FailoverOutput {
        machine,
        date,
        nodes: NODE_COUNT,
        fsync: args.fsync.as_str(),
        message_bytes: args.size,
        clients: 1,
        attempt_timeout_ms: milliseconds(timing.attempt_timeout),
        hedge_after_ms: timing.hedge_after.map(milliseconds),
        settle_ms: milliseconds(args.settle),
        runs,
    };
    let text = if global.json {
        serde_json::to_string_pretty(&output).expect("plain values serialize") + "\n"
    } else {
        failover_text(&output)
    };
    stdout
        .write_all(text.as_bytes())
        .map_err(CliError::io("cannot write to stdout"))
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Sets the stop flag when dropped, so the producer's thread ends on every path (an error
/// or a panic of the controller included) and the scope joining it cannot hang.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The failures of one signal on `cluster` (stopped and removed when this returns).
fn run_signal(
    mut cluster: CellCluster,
    failure: Failure,
    args: &FailoverArgs,
    timing: Timing,
    progress: bool,
) -> Result<SignalReport, CliError> {
    let addresses = cluster.addresses();
    let mut setup_client = Client::connect(ClientOptions {
        attempt_timeout: timing.attempt_timeout,
        deadline: timing.deadline,
        ..ClientOptions::new(addresses.clone())
    })?;
    let topic = format!("failover-{:08x}", rand::random::<u32>());
    setup_client.create_topic(&topic)?;
    let first_node = setup_client
        .leader()
        .and_then(|leader| addresses.iter().position(|node| node == leader))
        .unwrap_or(0);
    drop(setup_client);

    let plan = Plan {
        roles: vec![Role::Producer { topic }],
        message: message_of(args.size),
        measure_for: None,
        put_count: None,
        warmup: Duration::ZERO,
        timing,
        empty_pause: Duration::ZERO,
        connections: Connections::PerClient,
        progress: false,
        watch_pids: Vec::new(),
        batching: Default::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (acks, acked) = crossbeam_channel::unbounded();
    let observer = Observer {
        stop: Arc::clone(&stop),
        acks,
    };
    let (measured, producer) = std::thread::scope(|scope| {
        let producer =
            scope.spawn(|| driver::run_observed(&plan, addresses.clone(), first_node, observer));
        let stopper = StopOnDrop(stop);
        let mut controller = Controller {
            cluster: &mut cluster,
            acked,
            tracker: Tracker::default(),
            args,
            progress,
        };
        let measured = controller.fail_repeatedly(failure);
        drop(stopper);
        (measured, producer.join())
    });
    let producer = match producer {
        Ok(result) => result.map_err(|error| CliError::Cluster(format!("producer: {error}"))),
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let (failures, writes) = measured?;
    producer?;
    Ok(SignalReport::new(failure.name(), failures, writes))
}

/// Drives the failures while the producer runs on its own thread.
struct Controller<'a> {
    cluster: &'a mut CellCluster,
    acked: crossbeam_channel::Receiver<Ack>,
    tracker: Tracker,
    args: &'a FailoverArgs,
    progress: bool,
}

impl Controller<'_> {
    fn fail_repeatedly(&mut self, failure: Failure) -> Result<(Vec<FailureReport>, u64), CliError> {
        let mut status_client = Client::connect(ClientOptions {
            attempt_timeout: STATUS_ATTEMPT_TIMEOUT,
            deadline: STATUS_ATTEMPT_TIMEOUT,
            ..ClientOptions::new(self.cluster.addresses())
        })?;
        for number in 1..=self.args.kills {
            self.wait_healthy(&mut status_client)?;
            self.wait_for_writes()?;
            self.produce_for(self.args.settle)?;
            // Who leads now, after the settling: the node to fail.
            let leader = self.wait_healthy(&mut status_client)?;
            self.take_acks();
            let signalled = Instant::now();
            self.tracker.begin_failure(number, leader, signalled);
            match failure {
                Failure::Kill => {
                    self.cluster.nodes.kill(leader);
                }
                Failure::Stop => self
                    .cluster
                    .nodes
                    .signal(leader, libc::SIGSTOP)
                    .map_err(CliError::io(format!("cannot stop node {leader}")))?,
            }
            let until = signalled + self.args.recovery_timeout;
            while !self.tracker.recovered() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.next_ack(left)?;
            }
            match failure {
                Failure::Kill => {
                    self.cluster.nodes.spawn(leader, &[])?;
                }
                Failure::Stop => self
                    .cluster
                    .nodes
                    .signal(leader, libc::SIGCONT)
                    .map_err(CliError::io(format!("cannot continue node {leader}")))?,
            }
            if self.progress {
                let recovery = self
                    .tracker
                    .current_recovery()
                    .map_or_else(|| "none".to_string(), |ms| format!("{ms:.1} ms"));
                eprintln!(
                    "{} {number}/{}: leader node {leader}; first acknowledged write after \
                     {recovery}",
                    failure.name(),
                    self.args.kills
                );
            }
        }
        // The last failure's window ends once the cluster has healed and settled too.
        self.wait_healthy(&mut status_client)?;
        self.wait_for_writes()?;
        self.produce_for(self.args.settle)?;
        self.take_acks();
        Ok(std::mem::take(&mut self.tracker).finish(Instant::now()))
    }

    /// Waits until every node answers `status`, one leads, and it replicates to every
    /// other node; returns the leader. Acknowledgements keep arriving meanwhile: they wait
    /// in the channel with their times.
    fn wait_healthy(&mut self, client: &mut Client) -> Result<usize, CliError> {
        let until = Instant::now() + HEALTH_WAIT;
        loop {
            if let Some(exit) = self.cluster.nodes.reap_exited().into_iter().next() {
                return Err(CliError::Cluster(format!(
                    "node {} exited by itself ({:?}); logs in {}",
                    exit.index,
                    exit.status,
                    self.cluster.dir.display()
                )));
            }
            let statuses = client.status_all();
            let all_answered = statuses.iter().all(|(_, status)| status.is_ok());
            let leaders: Vec<(usize, StatusReport)> = statuses
                .into_iter()
                .enumerate()
                .filter_map(|(index, (_, status))| Some((index, status.ok()?)))
                .filter(|(_, status)| status.role == "Leader")
                .collect();
            // Exactly one claims to lead (a continued node may not have stepped down yet),
            // and it replicates to every other node.
            if let (true, [(index, status)]) = (all_answered, leaders.as_slice()) {
                let others_replicating = status
                    .peers
                    .iter()
                    .filter(|peer| peer.id != status.id && peer.state == "replicate")
                    .count();
                if others_replicating + 1 >= NODE_COUNT {
                    return Ok(*index);
                }
            }
            if Instant::now() >= until {
                return Err(CliError::Cluster(format!(
                    "the cluster did not heal within {HEALTH_WAIT:?} (logs in {})",
                    self.cluster.dir.display()
                )));
            }
            std::thread::sleep(HEALTH_POLL_INTERVAL);
        }
    }

    /// Waits for the next acknowledgement after now (the producer is writing).
    fn wait_for_writes(&mut self) -> Result<(), CliError> {
        self.take_acks();
        let from = Instant::now();
        let until = from + self.args.recovery_timeout;
        while self.tracker.last_ack().is_none_or(|last| last < from) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CliError::Cluster(format!(
                    "the producer acknowledged no write within {:?} of the cluster healing",
                    self.args.recovery_timeout
                )));
            }
            self.next_ack(left)?;
        }
        Ok(())
    }

    /// Takes acknowledgements for `time`.
    fn produce_for(&mut self, time: Duration) -> Result<(), CliError> {
        let until = Instant::now() + time;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.next_ack(left)?;
        }
    }

    /// Waits up to `within` for one acknowledgement; an error if the producer has stopped.
    fn next_ack(&mut self, within: Duration) -> Result<(), CliError> {
        match self.acked.recv_timeout(within) {
            Ok(ack) => {
                self.tracker.on_ack(ack);
                Ok(())
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(CliError::Cluster(
                "the producer stopped before the failures were done".into(),
            )),
        }
    }

    /// Takes every acknowledgement waiting.
    fn take_acks(&mut self) {
        for ack in self.acked.try_iter() {
            self.tracker.on_ack(ack);
        }
    }
}

/// Turns the stream of acknowledgements into per-failure figures.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    last_ack: Option<Instant>,
    writes: u64,
    current: Option<Open>,
    done: Vec<FailureReport>,
}

/// The failure being measured.
#[derive(Debug)]
struct Open {
    number: usize,
    leader: usize,
    signalled: Instant,
    /// When the gap that spans the signal began: the last acknowledgement before it.
    gap_from: Option<Instant>,
    recovered: Option<(Instant, usize)>,
    longest_gap: Option<Duration>,
}

impl Tracker {
    /// Closes the failure in progress at `at` and opens the next one. Acknowledgements must
    /// have been taken up to `at` first.
    pub(super) fn begin_failure(&mut self, number: usize, leader: usize, at: Instant) {
        self.close(at);
        self.current = Some(Open {
            number,
            leader,
            signalled: at,
            gap_from: self.last_ack,
            recovered: None,
            longest_gap: None,
        });
    }

    pub(super) fn on_ack(&mut self, ack: Ack) {
        self.writes += 1;
        if let Some(open) = &mut self.current {
            if let Some(from) = self.last_ack.or(open.gap_from) {
                let gap = ack.at.saturating_duration_since(from);
                open.longest_gap = Some(open.longest_gap.map_or(gap, |longest| longest.max(gap)));
            }
            if open.recovered.is_none() && ack.at > open.signalled && ack.node != open.leader {
                open.recovered = Some((ack.at, ack.node));
            }
        }
        self.last_ack = Some(self.last_ack.map_or(ack.at, |last| last.max(ack.at)));
    }

    pub(super) fn last_ack(&self) -> Option<Instant> {
        self.last_ack
    }

    /// Whether the failure in progress has its first acknowledgement from another node.
    pub(super) fn recovered(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|open| open.recovered.is_some())
    }

    fn current_recovery(&self) -> Option<f64> {
        let open = self.current.as_ref()?;
        let (at, _) = open.recovered?;
        Some(milliseconds(at.saturating_duration_since(open.signalled)))
    }

    /// Closes the last failure at `at`; the reports and the writes counted.
    pub(super) fn finish(mut self, at: Instant) -> (Vec<FailureReport>, u64) {
        self.close(at);
        (self.done, self.writes)
    }

    fn close(&mut self, at: Instant) {
        let Some(open) = self.current.take() else {
            return;
        };
        // A gap still open at the end counts too: the producer may not have resumed.
        let mut longest_gap = open.longest_gap;
        if let Some(from) = self.last_ack.or(open.gap_from) {
            let open_gap = at.saturating_duration_since(from);
            longest_gap = Some(longest_gap.map_or(open_gap, |longest| longest.max(open_gap)));
        }
        self.done.push(FailureReport {
            number: open.number,
            leader: open.leader,
            recovery_ms: open
                .recovered
                .map(|(when, _)| milliseconds(when.saturating_duration_since(open.signalled))),
            acknowledged_by: open.recovered.map(|(_, node)| node),
            longest_gap_ms: longest_gap.map(milliseconds),
        });
    }
}

/// The text report: a header, then per signal a markdown table and its summary.
pub(super) fn failover_text(output: &FailoverOutput) -> String {
    let mut text = format!(
        "rrmq bench failover, {}: {}-node local cluster, fsync {}, one producer (C=1) of {} \
         messages, client attempt timeout {:.1} s, {}, {:.1} s of writes between failures\n\
         machine: {}\n",
        output.date,
        output.nodes,
        output.fsync,
        format_bytes(output.message_bytes),
        output.attempt_timeout_ms / 1000.0,
        output.hedge_after_ms.map_or_else(
            || "no hedging".to_string(),
            |ms| format!("hedge after {ms:.0} ms")
        ),
        output.settle_ms / 1000.0,
        output.machine,
    );
    let ms = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
    for run in &output.runs {
        let how = match run.signal {
            "SIGKILL" => "SIGKILL of the leader, restarted after each",
            _ => "SIGSTOP of the leader, SIGCONT after each",
        };
        text.push_str(&format!(
            "\n{how} ({} times):\n\n\
             | # | leader | first write acknowledged after | by | longest gap |\n\
             |--:|--:|--:|--:|--:|\n",
            run.failures.len()
        ));
        for failure in &run.failures {
            text.push_str(&format!(
                "| {} | node {} | {} | {} | {} |\n",
                failure.number,
                failure.leader,
                failure
                    .recovery_ms
                    .map_or_else(|| "none".to_string(), |ms| format!("{ms:.1} ms")),
                failure
                    .acknowledged_by
                    .map_or_else(|| "-".to_string(), |node| format!("node {node}")),
                ms(failure.longest_gap_ms),
            ));
        }
        text.push_str(&format!(
            "\n{}: writes resumed after {} of {} failures; first write acknowledged after: \
             p50 {}, p99 {}, max {}; longest gap: p50 {}, p99 {}, max {}; {} writes \
             acknowledged in all\n",
            run.signal,
            run.recovered,
            run.failures.len(),
            ms(run.recovery.p50_ms),
            ms(run.recovery.p99_ms),
            ms(run.recovery.max_ms),
            ms(run.longest_gap.p50_ms),
            ms(run.longest_gap.p99_ms),
            ms(run.longest_gap.max_ms),
            run.writes_acknowledged,
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(start: Instant, at_ms: u64, node: usize) -> Ack {
        let at = start + Duration::from_millis(at_ms);
        Ack {
            begun: at,
            at,
            node,
        }
    }

    #[test]
    fn recovery_is_the_first_ack_from_another_node_and_gaps_span_the_signal() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut tracker = Tracker::default();
        tracker.on_ack(ack(start, 0, 0));
        tracker.on_ack(ack(start, 10, 0));
        tracker.begin_failure(1, 0, at(12));
        tracker.on_ack(ack(start, 13, 0)); // A reply already on its way from the old leader.
        assert!(!tracker.recovered());
        tracker.on_ack(ack(start, 150, 1));
        assert!(tracker.recovered());
        tracker.on_ack(ack(start, 151, 1));
        tracker.on_ack(ack(start, 400, 1)); // A pause while the old leader rejoins.
        tracker.on_ack(ack(start, 401, 1));
        tracker.begin_failure(2, 1, at(500));
        // No write resumes: the open gap counts up to the end.
        let (reports, writes) = tracker.finish(at(900));
        assert_eq!(writes, 7);
        assert_eq!(
            reports,
            vec![
                FailureReport {
                    number: 1,
                    leader: 0,
                    recovery_ms: Some(138.0),
                    acknowledged_by: Some(1),
                    longest_gap_ms: Some(249.0),
                },
                FailureReport {
                    number: 2,
                    leader: 1,
                    recovery_ms: None,
                    acknowledged_by: None,
                    longest_gap_ms: Some(499.0),
                },
            ]
        );
    }

    #[test]
    fn summaries_use_the_nearest_rank() {
        let summary = Summary::of((1..=100).map(f64::from));
        assert_eq!(
            (summary.p50_ms, summary.p99_ms, summary.max_ms),
            (Some(50.0), Some(99.0), Some(100.0))
        );
        let two = Summary::of([30.0, 10.0]);
        assert_eq!(
            (two.p50_ms, two.p99_ms, two.max_ms),
            (Some(10.0), Some(30.0), Some(30.0))
        );
        let none = Summary::of([]);
        assert_eq!((none.p50_ms, none.p99_ms, none.max_ms), (None, None, None));
    }

    #[test]
    fn the_text_report_has_a_row_per_failure_and_a_summary_per_signal() {
        let failures = vec![
            FailureReport {
                number: 1,
                leader: 2,
                recovery_ms: Some(85.25),
                acknowledged_by: Some(0),
                longest_gap_ms: Some(86.0),
            },
            FailureReport {
                number: 2,
                leader: 0,
                recovery_ms: None,
                acknowledged_by: None,
                longest_gap_ms: Some(30000.0),
            },
        ];
        let output = FailoverOutput {
            machine: "test machine".into(),
            date: "2026-12-02".into(),
            nodes: 3,
            fsync: "always",
            message_bytes: 100,
            clients: 1,
            attempt_timeout_ms: 2000.0,
            hedge_after_ms: Some(600.0),
            settle_ms: 1000.0,
            runs: vec![SignalReport::new("SIGKILL", failures, 1234)],
        };
        let text = failover_text(&output);
        assert!(
            text.contains("client attempt timeout 2.0 s, hedge after 600 ms,"),
            "{text}"
        );
        assert!(
            text.contains("| 1 | node 2 | 85.2 ms | node 0 | 86.0 ms |"),
            "{text}"
        );
        assert!(
            text.contains("| 2 | node 0 | none | - | 30000.0 ms |"),
            "{text}"
        );
        assert!(
            text.contains("writes resumed after 1 of 2 failures"),
            "{text}"
        );
        let json = serde_json::to_value(&output).expect("serializes");
        assert_eq!(json["runs"][0]["recovered"], 1);
        assert_eq!(json["runs"][0]["recovery"]["p50_ms"], 85.25);
        assert_eq!(
            json["runs"][0]["failures"][1]["recovery_ms"],
            serde_json::Value::Null
        );
    }
}
