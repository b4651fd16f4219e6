//! A deterministic simulator for the Raft core: a cluster of `rrmq::raft::Core`s on a lossy,
//! partitionable network, with crashing nodes, slow disks and clients, all driven by one
//! seed.
//!
//! Why: consensus bugs live in rare interleavings (a vote lost here, a crash between a
//! `Ready` and its fsync there) that hand-written scenarios never reach. Thousands of random
//! schedules, each checked after every step, do (TigerBeetle `src/vopr.zig`, etcd
//! `rafttest/`).
//!
//! What it owns: the simulated world around the cores — network ([`network`], which also
//! carries snapshot data), durable storage per node with its snapshot ([`storage`]; the log
//! is a `MemStore`), the runtime loop of each node with its state machine, the real
//! `rrmq::queue::Queue`
//! ([`node`]), the clients that retry with `(client_id, seq)` and their oracle ([`client`],
//! [`workload`]) — and the safety checkers, one per property: Raft's in [`checkers`], the
//! state machine's (exactly once, replicas agree) in [`state_machine`]. [`simulation`]
//! drives one run; [`runner`] turns seeds into runs and failures into reports.
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
//! - a new property: a checker in `checkers.rs` or `state_machine.rs` with a unit test that
//!   makes it fail, fed from `Checkers::after_step` or the runtime hooks, and a name in
//!   [`property`];
//! - a new operation: a `Command` in `workload.rs` that can be traced back to its client
//!   operation from its bytes, and its effects in `ExactlyOnce::observe`.
//!
//! Persistence is pipelined as in the real node (`rrmq::node`'s loop and WAL thread): a node
//! applies a `Ready`'s committed entries and sends its messages when it takes it, queues its
//! writes as a batch, and keeps taking `Ready`s while earlier batches wait for the disk;
//! batches become durable in order, in sync groups, and only then do their votes and acks
//! leave and the core hear `on_persisted` ([`node`] has the details and the crash points).
//!
//! Snapshots: nodes save snapshots of their state machine at random points and compact
//! their logs (storage sometimes later), crash and restart from the snapshot plus the log
//! after it, and followers behind a compacted log catch up through `InstallSnapshot`, whose
//! data travels (slowly, and may be lost, sometimes reported to the leader's core) beside the
//! message. A log that starts after a snapshot is checked through the snapshot: its last
//! entry must be committed history and its data must have been made from the committed
//! prefix (a chained hash travels with it), and a node that installs one has applied that
//! prefix as far as `CommittedHistory` is concerned.
//!
//! Leases: session clients also send the version 2 commands (leased GETs, ACK / NACK / TOUCH
//! of receipts they hold, now and then of stale ones, batches, topics with a delivery limit
//! and dead-letter topic), and a leader proposes `EndLeases` when the simulated lease clock
//! passes the earliest deadline its state machine holds: a minimal equivalent of the real
//! node's `maybe_end_leases` (`src/node/node_loop/admission.rs`, not a module the simulator
//! can share), without its safety margin. `state_machine.rs` says what is checked.
//!
//! Client sessions: session clients keep one operation outstanding and retry it with the same
//! `(client_id, seq)` until answered; unkeyed writers put without sessions. A command may
//! then commit as often as it was proposed; the session table, checked from the outside by
//! the effects along the committed history, must make each operation take effect once.

pub mod checkers;
pub mod client;
pub mod network;
pub mod node;
pub mod runner;
pub mod scenario;
pub mod simulation;
pub mod state_machine;
pub mod storage;
pub mod trace;
pub mod workload;

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
    pub const CLIENT_ORACLE: &str =
        "client oracle (a command commits at most as often as it was proposed)";
    pub const EXACTLY_ONCE: &str =
        "exactly once (an operation takes effect once; every answer to it is the first one)";
    pub const REPLICA_STATE: &str =
        "replicated state (every state machine equals the reference at the same applied index)";
    pub const LEASES: &str = "leases (no message is held under two live leases at once; a \
         leased GET hands out the next ready messages in order; only live receipts count)";
    pub const FATES: &str = "fates (every message put is at the end exactly one of acked once, \
         popped once, held, dead-lettered once or discarded and counted)";
    pub const SNAPSHOTS: &str = "snapshots (a snapshot is of the committed prefix it claims)";
    pub const READY_CONTRACT: &str = "Ready contract";
    pub const HONEST_TERMS: &str =
        "honest terms (no core drops a message between honest nodes, or refuses to campaign, \
         for its terms)";
    pub const MEMBERSHIP: &str = "membership (the newest leader's membership overlaps the \
         committed one in every majority; only voters campaign)";
    pub const CORE_PANIC: &str = "core invariant (panic inside the core)";
    pub const LIVENESS: &str = "liveness (leader elected and a fresh proposal committed)";
}

pub use runner::{run_one, run_plan, RunPlan};
