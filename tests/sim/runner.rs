//! Turns seeds into runs and a failed run into a report that reproduces it.
//!
//! Environment knobs:
//! - `RRMQ_SIM_SEED=<seed>`: run just that seed (the failure report prints it);
//! - `RRMQ_SIM_RUNS=<n>`: run `n` seeds instead of the default count;
//! - `RRMQ_SIM_FIRST_SEED=<seed>`: the first of the `n` consecutive seeds (default 0), so a
//!   long exploration can continue where the last one stopped;
//! - `RRMQ_SIM_TRACE=<n>`: how many recent events a failure report shows (default 80).
//!
//! A panic inside the core (a broken `check_invariants` or internal assertion) is caught
//! and reported like a checker's violation, with the seed and the trace.

use super::scenario::Scenario;
use super::simulation::{RunSummary, Simulation};
use super::{property, Violation};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

const TRACE_EVENTS_DEFAULT: usize = 80;

/// Which seeds to run.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub seeds: Vec<u64>,
    pub trace_capacity: usize,
}

impl RunPlan {
    pub fn from_env(default_runs: u64) -> RunPlan {
        let trace_capacity =
            env_number("RRMQ_SIM_TRACE").map_or(TRACE_EVENTS_DEFAULT, |n| n as usize);
        if let Some(seed) = env_number("RRMQ_SIM_SEED") {
            return RunPlan {
                seeds: vec![seed],
                trace_capacity,
            };
        }
        let runs = env_number("RRMQ_SIM_RUNS").unwrap_or(default_runs);
        let first = env_number("RRMQ_SIM_FIRST_SEED").unwrap_or(0);
        RunPlan {
            seeds: (first..first.saturating_add(runs)).collect(),
            trace_capacity,
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
            "{} schedules in {:.1?}: {} ticks, {} terms with a leader, {} entries committed, {} writes acknowledged, {} reads answered, {} crashes, {} messages sent ({} lost); slowest liveness phase {} ticks",
            self.runs,
            self.elapsed,
            s.ticks,
            s.terms_with_leader,
            s.committed_entries,
            s.acknowledged_writes,
            s.answered_reads,
            s.crashes,
            s.messages_sent,
            s.messages_lost,
            s.liveness_ticks
        )
    }
}

/// Runs every seed of the plan; panics with the report of the first failure.
pub fn run_plan(plan: &RunPlan) -> Totals {
    let started = Instant::now();
    let mut totals = Totals::default();
    for &seed in &plan.seeds {
        match run_one(seed, plan.trace_capacity) {
            Ok(summary) => {
                totals.runs += 1;
                let sum = &mut totals.summary;
                sum.ticks += summary.ticks;
                sum.committed_entries += summary.committed_entries;
                sum.acknowledged_writes += summary.acknowledged_writes;
                sum.answered_reads += summary.answered_reads;
                sum.terms_with_leader += summary.terms_with_leader;
                sum.crashes += summary.crashes;
                sum.messages_sent += summary.messages_sent;
                sum.messages_lost += summary.messages_lost;
                sum.liveness_ticks = sum.liveness_ticks.max(summary.liveness_ticks);
            }
            Err(failure) => panic!("{failure}\n(after {} passing schedules)", totals.runs),
        }
    }
    totals.elapsed = started.elapsed();
    totals
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(number) => Some(number),
        Err(_) => panic!("{name} must be a non-negative integer, got {value:?}"),
    }
}
