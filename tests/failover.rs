//! Failover on real nodes: a leader whose process dies is replaced because its connections
//! closed, not because an election timeout ran out; a leader that is merely stopped (no
//! connection closes) is not replaced early.
//!
//! How this is shown without timing anything: the followers run with an election timeout
//! of 30 to 40 s. Without the dropped-connection path they cannot elect anyone for 30 s
//! after the leader's last heartbeat, so a new leader within 15 s of the SIGKILL can only
//! come from it, however loaded the machine. The first leader is a node started with the
//! usual timeout, so the test does not wait 30 s for it.

mod common;

use common::{Cluster, LEADER_DEADLINE};
use std::time::{Duration, Instant};

/// The followers' election timeout: far beyond anything the test waits for.
const LONG_ELECTION: &[&str] = &["--election-timeout-ms", "30000-40000"];
const USUAL_ELECTION: &[&str] = &["--election-timeout-ms", "300-600"];

/// Half the survivors' shortest election timeout: a leader elected within this long after
/// the kill was elected through the dropped connections.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(15);

/// Shorter than the ZMTP heartbeat TTL (10 s), after which even a stopped leader's
/// connections are closed by its followers.
const STOPPED_WINDOW: Duration = Duration::from_secs(3);

/// A 3-node cluster whose nodes all have the long election timeout, with node 0 restarted
/// with the usual one so that it leads soon. Returns the cluster and node 0's term.
fn cluster_led_by_node_0() -> (Cluster, u64) {
    let mut cluster = Cluster::start_with(3, LONG_ELECTION);
    cluster.kill(0);
    cluster.spawn_with(0, USUAL_ELECTION);
    let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_eq!(leader, 0, "only node 0 campaigns within 30 s");
    (cluster, term)
}

/// Polls until one running node leads in a term after `term`, for up to `within`.
fn new_leader_after(cluster: &Cluster, term: u64, within: Duration) -> Option<(usize, u64)> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some((leader, new_term)) = cluster.leader_now() {
            if new_term > term {
                return Some((leader, new_term));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_killed_leader_is_replaced_through_its_dropped_connections_again_and_again() {
    let (mut cluster, mut term) = cluster_led_by_node_0();
    let mut leader = 0;
    for round in 0..2 {
        cluster.kill(leader);
        let Some((new_leader, new_term)) = new_leader_after(&cluster, term, FAILOVER_DEADLINE)
        else {
            panic!(
                "round {round}: no new leader within {FAILOVER_DEADLINE:?} of killing node \
                 {leader}; the survivors' election timeout is 30 s, so the dropped \
                 connections should have started an election; statuses: {:?}",
                cluster.statuses()
            );
        };
        assert_ne!(new_leader, leader, "round {round}");
        // The killed node comes back (reconnecting, as a follower with the long timeout),
        // so the next round kills a leader that the restarted node follows.
        cluster.spawn_with(leader, LONG_ELECTION);
        assert!(
            cluster.wait_all_up(LEADER_DEADLINE),
            "round {round}: node {leader} restarts"
        );
        let (settled, settled_term) = cluster.wait_for_leader(LEADER_DEADLINE);
        assert_eq!(
            (settled, settled_term),
            (new_leader, new_term),
            "round {round}: the restarted node follows the new leader without disrupting it"
        );
        (leader, term) = (new_leader, new_term);
    }
}

#[test]
fn a_stopped_leader_closes_no_connection_and_is_not_replaced_early() {
    let (mut cluster, term) = cluster_led_by_node_0();
    cluster.signal(0, libc::SIGSTOP);
    let stopped_at = Instant::now();
    let mut replaced = None;
    while stopped_at.elapsed() < STOPPED_WINDOW {
        for index in [1, 2] {
            if let Some(status) = cluster.status(index, Duration::from_millis(1000)) {
                if status["role"] != "Follower" || status["term"].as_u64() != Some(term) {
                    replaced = Some((index, status));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.signal(0, libc::SIGCONT);
    assert_eq!(
        replaced, None,
        "nothing closed, so the followers wait for their 30 s election timeout"
    );
    let (leader, still) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_eq!((leader, still), (0, term), "node 0 leads on once resumed");
}
