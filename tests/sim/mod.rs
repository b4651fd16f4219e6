//! A deterministic simulator for the Raft core: a cluster of `rrmq::raft::Core`s on a lossy,
//! partitionable network, with crashing nodes, slow disks and clients, all driven by one
//! seed.
//!
//! Why: consensus bugs live in rare interleavings (a vote lost here, a crash between a
//! `Ready` and its fsync there) that hand-written scenarios never reach. Thousands of random
//! schedules, each checked after every step, do (TigerBeetle `src/vopr.zig`, etcd
//! `rafttest/`).
//!
//! What it owns: the simulated world around the cores — network ([`network`]), durable
//! storage per node ([`storage`]), the runtime loop of each node ([`node`]), the clients and
//! their oracle ([`client`]) — and the safety checkers ([`checkers`]), one per property.
//! [`simulation`] drives one run; [`runner`] turns seeds into runs and failures into reports.
//!
//! What it must not do: reach into the core. Everything goes through the public `Core` API,
//! as a real runtime would; if the simulator needs a back door, the API lacks something.
//! Nothing here may read a clock, the OS RNG or iterate a `HashMap` in a way that affects
//! choices: the seed alone decides the schedule, so `RRMQ_SIM_SEED=<seed>` replays it.
//!
//! Determinism rule for extensions: every random choice comes from `Simulation::rng`;
//! checkers never draw from it (adding a checker must not change the schedules).
//!
//! Extending it:
//! - a new fault: a knob in `scenario.rs` (drawn per run), applied in `simulation.rs`
//!   (`inject_faults`) or `node.rs` (the runtime loop), and an `Event` for the trace;
//! - a new property: a checker in `checkers.rs` with a unit test that makes it fail, fed
//!   from `Checkers::after_step` or the runtime hooks, and a name in [`property`];
//! - snapshots: `DurableStorage` gains the snapshot (and `persist` its install rule),
//!   `LogMatching`'s views and `CommittedHistory`'s per-node cursors start at the snapshot
//!   index, and a restarted node's state machine starts from the snapshot instead of empty;
//! - client sessions: `ClientOracle` already gives every command a unique id; retries of a
//!   timed-out command would reuse it, and the history's at-most-once check then becomes
//!   "applied at most once by the session table" rather than "committed at most once".

pub mod checkers;
pub mod client;
pub mod network;
pub mod node;
pub mod runner;
pub mod scenario;
pub mod simulation;
pub mod storage;
pub mod trace;

/// A broken safety (or liveness) property: the run stops at the first one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(property: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            property,
            detail: detail.into(),
        }
    }
}

/// The properties, named as the failure report names them.
pub mod property {
    pub const ELECTION_SAFETY: &str = "Election Safety (at most one leader per term)";
    pub const LOG_MATCHING: &str = "Log Matching";
    pub const STATE_MACHINE_SAFETY: &str =
        "State Machine Safety (committed entries are never lost or changed)";
    pub const LEADER_COMPLETENESS: &str = "Leader Completeness";
    pub const COMMIT_MONOTONIC: &str = "commit index never decreases on a live node";
    pub const LINEARIZABLE_READS: &str = "linearizable reads";
    pub const CLIENT_ORACLE: &str = "client oracle (acknowledged writes, at most once)";
    pub const READY_CONTRACT: &str = "Ready contract";
    pub const CORE_PANIC: &str = "core invariant (panic inside the core)";
    pub const LIVENESS: &str = "liveness (leader elected and a fresh proposal committed)";
}

pub use runner::{run_one, run_plan, RunPlan};
