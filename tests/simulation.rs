//! Deterministic simulation of the Raft core and the queue replicated with it: thousands of
//! random failure schedules — with snapshots, compaction and InstallSnapshot, and clients
//! retrying with `(client_id, seq)` — each checked for Election Safety, Log Matching, State
//! Machine Safety, Leader Completeness, commit monotonicity, the core's own invariants,
//! linearizable reads, snapshots of the committed prefix, identical replicated state and
//! exactly-once operations, leases (never two on one message, redelivery in order, only live
//! receipts count) after every step, every message's fate at the end, then for liveness
//! once the network heals. Half the five-node schedules also change the membership (add a
//! learner, promote it, remove or demote a voter, the leader included), checked for
//! overlapping majorities between the newest leader's membership and the committed one. See `tests/sim/mod.rs` for the design.
//!
//! A failure prints `RRMQ_SIM_SEED=<seed>`; rerun with it to replay the same schedule.
//! `RRMQ_SIM_RUNS=<n>` explores more seeds (`RRMQ_SIM_FIRST_SEED` says where to start).

mod sim;

/// Schedules per default `cargo test` run: enough to catch the injected bugs listed in the
/// harness's report within a minute or two on a small machine.
const DEFAULT_RUNS: u64 = 3000;

#[test]
fn random_schedules_keep_raft_safe_and_live() {
    let plan = sim::RunPlan::from_env(DEFAULT_RUNS);
    let totals = sim::run_plan(&plan);
    println!("{totals}");
    // A harness that stopped exercising the core would pass vacuously.
    let summary = &totals.summary;
    assert!(
        summary.committed_entries >= totals.runs,
        "too little committed: {totals}"
    );
    assert!(summary.answered_reads > 0, "no read answered: {totals}");
    assert!(
        summary.answered_operations > 0,
        "no session operation answered: {totals}"
    );
    if totals.runs >= 100 {
        // Rarer events, but a few hundred schedules always see them.
        assert!(
            summary.snapshots_installed > 0 && summary.restarts_from_snapshot > 0,
            "no snapshot installed or restarted from: {totals}"
        );
        assert!(
            summary.replays > 0 && summary.retries > 0,
            "no retry recognised by the session table: {totals}"
        );
        assert!(
            summary.pipelined_readies > 0 && summary.grouped_batches > 0,
            "no Ready taken while a batch was unfinished, or no sync group: {totals}"
        );
        assert!(
            summary.expired_sessions > 0,
            "no session ever expired: {totals}"
        );
        assert!(
            summary.leader_connection_drops > 0,
            "no follower was ever told its connection to the leader dropped: {totals}"
        );
        assert!(
            summary.membership_changes > 0,
            "no membership change was ever accepted: {totals}"
        );
        assert!(
            summary.quota_refusals > 0,
            "no command was ever refused by a quota: {totals}"
        );
        assert!(
            summary.leases_granted > 0
                && summary.acks > 0
                && summary.given_back > 0
                && summary.dead_lettered > 0,
            "no lease granted, ACKed, given back or dead-lettered: {totals}"
        );
    }
}

#[test]
fn a_seed_replays_exactly_the_same_schedule() {
    const SEED: u64 = 42;
    let first = sim::run_one(SEED, 0).expect("seed 42 passes");
    let second = sim::run_one(SEED, 0).expect("seed 42 passes");
    assert_eq!(first, second, "same seed, same schedule and outcome");
    assert!(first.committed_entries > 0 && first.terms_with_leader > 0);
}
