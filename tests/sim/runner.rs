//! Turns seeds into runs and a failed run into a report that reproduces it.
//!
//! Environment knobs:
//! - `RRMQ_SIM_SEED=<seed>`: run just that seed (the failure report prints it);
//! - `RRMQ_SIM_RUNS=<n>`: run `n` seeds instead of the default count;
//! - `RRMQ_SIM_FIRST_SEED=<seed>`: the first of the `n` consecutive seeds (default 0), so a
//!   long exploration can continue where the last one stopped;
//! - `RRMQ_SIM_TRACE=<n>`: how many recent events a failure report shows (default 80);
//! - `RRMQ_SIM_THREADS=<n>`: threads to spread the runs over (default: up to 2 cores).
//!
//! A panic inside the core (a broken `check_invariants` or internal assertion) is caught
//! and reported like a checker's violation, with the seed and the trace.

use super::scenario::Scenario;
use super::simulation::{RunSummary, Simulation};
use super::{property, Violation};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const TRACE_EVENTS_DEFAULT: usize = 80;
/// Runs are independent, so they spread over cores; at most this many by default, to share
/// a small build machine politely.
const THREADS_DEFAULT_MAX: usize = 2;

/// Which seeds to run, and how.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub seeds: Vec<u64>,
    pub trace_capacity: usize,
    pub threads: usize,
}

impl RunPlan {
    pub fn from_env(default_runs: u64) -> RunPlan {
        let trace_capacity =
            env_number("RRMQ_SIM_TRACE").map_or(TRACE_EVENTS_DEFAULT, |n| n as usize);
        let threads = env_number("RRMQ_SIM_THREADS").map_or_else(
            || thread::available_parallelism().map_or(1, |n| n.get().min(THREADS_DEFAULT_MAX)),
            |n| n as usize,
        );
        if let Some(seed) = env_number("RRMQ_SIM_SEED") {
            return RunPlan {
                seeds: vec![seed],
                trace_capacity,
                threads,
            };
        }
        let runs = env_number("RRMQ_SIM_RUNS").unwrap_or(default_runs);
        let first = env_number("RRMQ_SIM_FIRST_SEED").unwrap_or(0);
        RunPlan {
            seeds: (first..first.saturating_add(runs)).collect(),
            trace_capacity,
            threads,
        }
    }
}

/// A run that broke a property.
pub struct Failure {
    pub seed: u64,
    pub violation: Violation,
    pub tick: u64,
    pub scenario: Box<Scenario>,
    pub trace: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation failed: RRMQ_SIM_SEED={}", self.seed)?;
        writeln!(f, "property: {}", self.violation.property)?;
        writeln!(f, "at tick {}: {}", self.tick, self.violation.detail)?;
        writeln!(f, "scenario: {:?}", self.scenario)?;
        write!(f, "{}", self.trace)?;
        write!(
            f,
            "reproduce: RRMQ_SIM_SEED={} cargo test --test simulation -- --nocapture",
            self.seed
        )
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs one seed to the end or to its first violation.
pub fn run_one(seed: u64, trace_capacity: usize) -> Result<RunSummary, Failure> {
    let mut simulation = Simulation::new(seed, trace_capacity);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| simulation.run()));
    let violation = match outcome {
        Ok(Ok(summary)) => return Ok(summary),
        Ok(Err(violation)) => violation,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|message| message.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string panic)".to_string());
            Violation::new(property::CORE_PANIC, message)
        }
    };
    Err(Failure {
        seed,
        violation,
        tick: simulation.now(),
        scenario: Box::new(simulation.scenario().clone()),
        trace: simulation.trace().to_string(),
    })
}

/// What a batch of runs did in total.
#[derive(Debug, Default)]
pub struct Totals {
    pub runs: u64,
    pub summary: RunSummary,
    pub elapsed: Duration,
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        write!(
            f,
            "{} schedules in {:.1?}: {} ticks, {} terms with a leader, {} entries committed, \
             {} unkeyed writes acknowledged, {} session operations answered ({} retries, \
             {} replays, {} SESSION_EXPIRED), {} QUOTA refusals, {} leases granted, {} ACKs, {} given back, {} dead-lettered or discarded, {} snapshots saved, {} installed, {} restarts \
             from a snapshot, {} Readies pipelined, {} batches synced in groups, {} state digests compared, {} reads answered, {} crashes ({} drops of a leader's connection reported), {} membership changes, {} messages sent \
             ({} lost); slowest liveness phase {} ticks",
            self.runs,
            self.elapsed,
            s.ticks,
            s.terms_with_leader,
            s.committed_entries,
            s.acknowledged_writes,
            s.answered_operations,
            s.retries,
            s.replays,
            s.expired_sessions,
            s.quota_refusals,
            s.leases_granted,
            s.acks,
            s.given_back,
            s.dead_lettered,
            s.snapshots_saved,
            s.snapshots_installed,
            s.restarts_from_snapshot,
            s.pipelined_readies,
            s.grouped_batches,
            s.digests_compared,
            s.answered_reads,
            s.crashes,
            s.leader_connection_drops,
            s.membership_changes,
            s.messages_sent,
            s.messages_lost,
            s.liveness_ticks
        )
    }
}

/// Runs every seed of the plan on `plan.threads` threads (each seed is independent, so
/// this changes no schedule); panics with the report of a failure — the one with the
/// lowest seed among those found before the threads stopped.
pub fn run_plan(plan: &RunPlan) -> Totals {
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let threads = plan.threads.max(1);
    let outcomes: Vec<(Totals, Option<Failure>)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let stop = &stop;
                scope.spawn(move || {
                    let seeds = plan.seeds.iter().skip(worker).step_by(threads);
                    run_seeds(seeds.copied(), plan.trace_capacity, stop)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a worker catches its runs' panics"))
            .collect()
    });
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for (worker_totals, failure) in outcomes {
        totals.add(&worker_totals);
        failures.extend(failure);
    }
    if let Some(failure) = failures.into_iter().min_by_key(|failure| failure.seed) {
        panic!("{failure}\n(after {} passing schedules)", totals.runs);
    }
    totals.elapsed = started.elapsed();
    totals
}

fn run_seeds(
    seeds: impl Iterator<Item = u64>,
    trace_capacity: usize,
    stop: &AtomicBool,
) -> (Totals, Option<Failure>) {
    let mut totals = Totals::default();
    for seed in seeds {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match run_one(seed, trace_capacity) {
            Ok(summary) => totals.add_run(&summary),
            Err(failure) => {
                stop.store(true, Ordering::Relaxed);
                return (totals, Some(failure));
            }
        }
    }
    (totals, None)
}

impl Totals {
    fn add_run(&mut self, run: &RunSummary) {
        self.runs += 1;
        accumulate(&mut self.summary, run);
    }

    fn add(&mut self, other: &Totals) {
        self.runs += other.runs;
        accumulate(&mut self.summary, &other.summary);
    }
}

/// Adds `run` to `sum`; the liveness phase is summed as its longest.
fn accumulate(sum: &mut RunSummary, run: &RunSummary) {
    sum.ticks += run.ticks;
    sum.committed_entries += run.committed_entries;
    sum.acknowledged_writes += run.acknowledged_writes;
    sum.answered_operations += run.answered_operations;
    sum.retries += run.retries;
    sum.expired_sessions += run.expired_sessions;
    sum.replays += run.replays;
    sum.quota_refusals += run.quota_refusals;
    sum.leases_granted += run.leases_granted;
    sum.acks += run.acks;
    sum.given_back += run.given_back;
    sum.dead_lettered += run.dead_lettered;
    sum.snapshots_saved += run.snapshots_saved;
    sum.snapshots_installed += run.snapshots_installed;
    sum.restarts_from_snapshot += run.restarts_from_snapshot;
    sum.pipelined_readies += run.pipelined_readies;
    sum.grouped_batches += run.grouped_batches;
    sum.digests_compared += run.digests_compared;
    sum.answered_reads += run.answered_reads;
    sum.terms_with_leader += run.terms_with_leader;
    sum.crashes += run.crashes;
    sum.leader_connection_drops += run.leader_connection_drops;
    sum.membership_changes += run.membership_changes;
    sum.messages_sent += run.messages_sent;
    sum.messages_lost += run.messages_lost;
    sum.liveness_ticks = sum.liveness_ticks.max(run.liveness_ticks);
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(number) => Some(number),
        Err(_) => panic!("{name} must be a non-negative integer, got {value:?}"),
    }
}
