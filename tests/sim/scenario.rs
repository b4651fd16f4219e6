//! The knobs of one run, all drawn from its seed.
//!
//! Each run gets its own mix of faults and limits ("swarm testing"): a run with no drops but
//! many crashes finds different bugs than one with a flaky network, and thousands of runs
//! cover the combinations. Timings are small (election timeouts of 8 to 21 ticks) so a run
//! covers many terms, and limits are sometimes tiny (one entry per append, one append in
//! flight) so the edges of flow control are hit (TigerBeetle `src/fuzz_tests.zig`,
//! `test_min`).

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rrmq::queue::QueueConfig;
use rrmq::raft::RaftConfig;

/// Raft §5.6 needs broadcast time well below the election timeout, or elections never
/// finish: a vote request and its answer each wait for a disk write and a network trip. The
/// fault phase may break that (it only checks safety); the liveness phase restores it, with
/// a worst case round trip of `2 * (1 + 2) = 6` ticks against elections of 8 ticks or more.
pub const CALM_DELAY_TICKS_MAX: u64 = 2;
pub const CALM_STORAGE_DELAY_TICKS_MAX: u64 = 1;

/// How the network misbehaves during the fault phase.
#[derive(Clone, Debug)]
pub struct NetworkFaults {
    pub drop_chance: f64,
    pub duplicate_chance: f64,
    /// Delivery takes `delay_ticks_min..=delay_ticks_max` ticks; messages sent in the same
    /// tick may overtake each other.
    pub delay_ticks_min: u64,
    pub delay_ticks_max: u64,
    /// Some messages linger much longer and arrive stale, from an older term.
    pub long_delay_chance: f64,
    pub long_delay_ticks_max: u64,
    /// A snapshot transfer takes up to this many ticks more than a message.
    pub snapshot_extra_delay_ticks_max: u64,
}

impl NetworkFaults {
    /// The healed network of the liveness phase: no partitions, drops or stale messages, and
    /// quick enough that an election round trip fits in an election timeout.
    pub fn calm(&self) -> NetworkFaults {
        NetworkFaults {
            drop_chance: 0.0,
            duplicate_chance: 0.0,
            delay_ticks_min: 1,
            delay_ticks_max: self.delay_ticks_max.min(CALM_DELAY_TICKS_MAX),
            long_delay_chance: 0.0,
            long_delay_ticks_max: 0,
            snapshot_extra_delay_ticks_max: self
                .snapshot_extra_delay_ticks_max
                .min(CALM_DELAY_TICKS_MAX),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub node_count: usize,
    pub raft: RaftConfig,
    pub network: NetworkFaults,
    /// Per tick: chance that the partition changes (heal, isolate, split, one-way cuts).
    pub partition_chance: f64,
    /// Per tick: chance that one live node crashes.
    pub crash_chance: f64,
    /// Per tick: chance that several nodes crash at once.
    pub power_failure_chance: f64,
    /// Per tick and crashed node: chance that it restarts.
    pub restart_chance: f64,
    /// Per `Ready`: chance that the node crashes between taking it and finishing it.
    pub crash_mid_ready_chance: f64,
    /// Per node: a `Ready` becomes durable `0..=this` ticks after it was taken (0: at once).
    pub storage_delay_ticks_max: Vec<u64>,
    /// Per `Ready`: chance that the disk stalls and takes `1..=storage_stall_ticks_max`
    /// ticks (an fsync stuck behind other I/O), opening a long window for crashes.
    pub storage_stall_chance: f64,
    pub storage_stall_ticks_max: u64,
    /// Per delivered message: chance that the node takes its `Ready` at once rather than at
    /// the end of the tick (varies batching).
    pub eager_ready_chance: f64,
    /// Per tick: chance of a burst of `1..=propose_burst_max` proposals.
    pub propose_chance: f64,
    pub propose_burst_max: usize,
    /// Extra payload bytes per command, at most (tiny `append_bytes_max` then splits batches).
    pub command_padding_bytes_max: usize,
    pub read_chance: f64,
    /// Clients, each with its own idea of who leads.
    pub client_count: usize,
    /// Per request: chance that a client tries a random live node instead of the one it
    /// believes is leader.
    pub client_wander_chance: f64,
    pub transfer_chance: f64,
    /// Per tick and live node: chance that it snapshots its state machine and compacts.
    pub snapshot_chance: f64,
    /// The log is compacted up to `0..=this` entries before the snapshot's index (entries
    /// kept spare slow followers a snapshot transfer).
    pub compaction_lag_entries_max: u64,
    /// Per snapshot: chance that storage leaves the covered log for later.
    pub lazy_compaction_chance: f64,
    /// Chance that the transport reports a lost snapshot transfer to the leader's core
    /// (`report_snapshot(false)`), and a delivered one (`report_snapshot(true)`); otherwise
    /// the core waits for its snapshot timeout.
    pub snapshot_report_chance: f64,
    /// Session clients: each has at most one operation outstanding and retries it, with the
    /// same `(client_id, seq)`, until it is answered.
    pub session_clients: usize,
    /// Per tick and idle session client: chance that it starts its next operation.
    pub operation_chance: f64,
    /// Share of PUTs among the operations (the rest are GETs).
    pub put_share: f64,
    /// Share of version 2 operations (PROTOCOL.md §8, §10: topics with a delivery limit,
    /// leased GETs, ACK / NACK / TOUCH, batches) among a session client's operations.
    pub v2_share: f64,
    /// A client retries an operation not answered within this many ticks.
    pub client_timeout_ticks: u64,
    /// Chance that a reply to a client is lost on its way.
    pub reply_drop_chance: f64,
    /// The state machine's limits; a small `sessions_max` makes evictions common, small
    /// quotas make `QUOTA` refusals common.
    pub queue: QueueConfig,
    pub fault_phase_ticks: u64,
    /// Crashed nodes left down during the liveness phase (at most a minority).
    pub nodes_left_down: usize,
    /// Chance per tick that the leader proposes a membership change (add a learner,
    /// promote it, remove or demote a voter, the leader included). In runs that have them,
    /// five nodes start with three voters and two nodes joining (`--join`), and no node is
    /// left down for the liveness phase (three voters cannot lose two).
    pub membership_change_chance: f64,
    /// Per live node, when another node crashes: chance that its transport reports the
    /// connection dropped (`Core::peer_connection_lost`: a dead process closes its TCP
    /// connections), and, when that node restarts, restored. A partition closes nothing, so
    /// it reports nothing.
    pub connection_report_chance: f64,
    /// A report arrives `0..=this` ticks after the crash or restart.
    pub connection_report_delay_ticks_max: u64,
    /// Per tick: chance that one live node's connection to another live node drops and
    /// comes back a few ticks later (a reset connection): a report about a node that is
    /// alive, which must not disrupt a leader.
    pub connection_flap_chance: f64,
}

impl Scenario {
    pub fn draw(rng: &mut ChaCha8Rng) -> Scenario {
        let node_count = *pick(rng, &[3, 5]);
        let election_ticks_min = rng.gen_range(8..=12);
        let election_ticks_max = election_ticks_min + rng.gen_range(4..=10);
        let raft = RaftConfig {
            election_ticks_min,
            election_ticks_max,
            heartbeat_ticks: rng.gen_range(1..=3),
            append_bytes_max: *pick(rng, &[1, 100, 1024 * 1024]),
            inflight_appends_max: *pick(rng, &[1, 2, 4, 64]),
            committed_bytes_max: *pick(rng, &[1, 100, 1024 * 1024]),
            pending_reads_max: *pick(rng, &[1, 4, 4096]),
            snapshot_timeout_ticks: election_ticks_max * *pick(rng, &[2, 6]),
            pre_vote: rng.gen_bool(0.8),
            check_quorum: rng.gen_bool(0.5),
        };
        let delay_ticks_max = *pick(rng, &[1, 2, 4, 8]);
        let network = NetworkFaults {
            drop_chance: *pick(rng, &[0.0, 0.02, 0.1, 0.3]),
            duplicate_chance: *pick(rng, &[0.0, 0.05, 0.2]),
            delay_ticks_min: 1,
            delay_ticks_max,
            long_delay_chance: *pick(rng, &[0.0, 0.01, 0.05]),
            long_delay_ticks_max: u64::from(election_ticks_max) * 3,
            snapshot_extra_delay_ticks_max: *pick(rng, &[0, 4, 20]),
        };
        let slow_storage_chance = *pick(rng, &[0.0, 0.3, 1.0]);
        let storage_delay_ticks_max = (0..node_count)
            .map(|_| {
                if rng.gen_bool(slow_storage_chance) {
                    rng.gen_range(1..=6)
                } else {
                    0
                }
            })
            .collect();
        let minority = (node_count - 1) / 2;
        let mut scenario = Scenario {
            node_count,
            raft,
            network,
            partition_chance: *pick(rng, &[0.0, 0.01, 0.03]),
            crash_chance: *pick(rng, &[0.0, 0.005, 0.02]),
            power_failure_chance: *pick(rng, &[0.0, 0.003, 0.01]),
            restart_chance: *pick(rng, &[0.02, 0.1, 0.5]),
            crash_mid_ready_chance: *pick(rng, &[0.0, 0.002, 0.01, 0.05]),
            storage_delay_ticks_max,
            storage_stall_chance: *pick(rng, &[0.0, 0.02, 0.1]),
            storage_stall_ticks_max: 2 * u64::from(election_ticks_max),
            eager_ready_chance: *pick(rng, &[0.0, 0.5]),
            propose_chance: *pick(rng, &[0.1, 0.3, 0.6]),
            propose_burst_max: *pick(rng, &[1, 4]),
            command_padding_bytes_max: *pick(rng, &[0, 200]),
            read_chance: *pick(rng, &[0.05, 0.3, 0.8]),
            client_count: *pick(rng, &[1, 3]),
            client_wander_chance: *pick(rng, &[0.1, 0.4]),
            transfer_chance: *pick(rng, &[0.0, 0.01]),
            snapshot_chance: *pick(rng, &[0.0, 0.01, 0.05, 0.2]),
            compaction_lag_entries_max: *pick(rng, &[0, 3, 30]),
            lazy_compaction_chance: *pick(rng, &[0.0, 0.3]),
            snapshot_report_chance: *pick(rng, &[0.0, 0.5, 1.0]),
            session_clients: *pick(rng, &[1, 2, 4]),
            operation_chance: *pick(rng, &[0.1, 0.5]),
            put_share: *pick(rng, &[0.5, 0.7]),
            v2_share: *pick(rng, &[0.0, 0.4, 0.8]),
            client_timeout_ticks: *pick(rng, &[6, 20, 60]),
            reply_drop_chance: *pick(rng, &[0.0, 0.1, 0.3]),
            queue: QueueConfig {
                sessions_max: *pick(rng, &[1, 2, 3, 10_000]),
                ..QueueConfig::default()
            },
            fault_phase_ticks: rng.gen_range(150..=400),
            nodes_left_down: if rng.gen_bool(0.3) {
                rng.gen_range(0..=minority)
            } else {
                0
            },
            connection_report_chance: 0.0,
            connection_report_delay_ticks_max: 0,
            connection_flap_chance: 0.0,
            membership_change_chance: 0.0,
        };
        // Drawn last, so that every draw above is what it was before quotas existed. Tight
        // quotas make QUOTA refusals common: replicas must agree on each (same digest) and
        // a refused PUT must leave nothing behind (the exactly-once checker).
        scenario.queue.queued_bytes_max = *pick(
            rng,
            &[40, 400, 4000, QueueConfig::default().queued_bytes_max],
        );
        scenario.queue.topics_max = *pick(rng, &[1, 2, QueueConfig::default().topics_max]);
        // Drawn after the quotas, for the same reason.
        scenario.connection_report_chance = *pick(rng, &[0.0, 0.5, 1.0, 1.0]);
        scenario.connection_report_delay_ticks_max = *pick(rng, &[0, 1, 3]);
        scenario.connection_flap_chance = *pick(rng, &[0.0, 0.01, 0.05]);
        // Drawn after the connection knobs, for the same reason.
        if scenario.node_count == 5 && rng.gen_bool(0.5) {
            scenario.membership_change_chance = *pick(rng, &[0.005, 0.02, 0.05]);
            scenario.nodes_left_down = 0;
        }
        scenario
    }

    /// The liveness phase must converge within this many ticks: time for a few dozen
    /// election rounds, plus time for the slowest follower to catch up on `log_length`
    /// entries one round trip at a time (with `append_bytes_max` tiny, one entry per round
    /// trip is all flow control allows).
    ///
    /// Then a snapshot transfer lost before healing may hold a follower until the snapshot
    /// timeout, and each client may need a few timeouts to find the leader and be answered.
    pub fn liveness_ticks_max(&self, log_length: u64) -> u64 {
        let elections = 40 * u64::from(self.raft.election_ticks_max);
        let round_trip_ticks =
            2 * self.network.calm().delay_ticks_max + CALM_STORAGE_DELAY_TICKS_MAX + 1;
        let snapshot_ticks = 2 * u64::from(self.raft.snapshot_timeout_ticks);
        let client_ticks = 4 * self.client_timeout_ticks;
        elections + log_length * round_trip_ticks + snapshot_ticks + client_ticks
    }
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, choices: &'a [T]) -> &'a T {
    choices.choose(rng).expect("choices are non-empty")
}
