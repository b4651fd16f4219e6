//! End-to-end: a follower that missed more than the leader's log holds catches up through
//! InstallSnapshot, also when the leader dies in the middle of streaming the snapshot.

mod common;
#[path = "common/snapshots.rs"]
mod snapshots;

use common::{Cluster, LEADER_DEADLINE};
use snapshots::{
    files_ending, put_topic, puts, snapshot_index, stats, wait_converged, wait_for_log, write_all,
    SMALL_SNAPSHOT_FLAGS,
};
use std::time::{Duration, Instant};

/// The highest index of a snapshot file in node `index`'s data dir.
fn newest_snapshot(cluster: &Cluster, index: usize) -> u64 {
    files_ending(&cluster.data_dir(index), ".snap")
        .iter()
        .map(|path| snapshot_index(path))
        .max()
        .unwrap_or(0)
}

fn last_applied(cluster: &Cluster, index: usize) -> u64 {
    stats(cluster, index).expect("stats")["last_applied"]
        .as_u64()
        .expect("last_applied")
}

/// No transfer or install left half done in node `index`'s data dir.
fn assert_no_leftovers(cluster: &Cluster, index: usize) {
    let dir = cluster.data_dir(index);
    for suffix in [".partial", ".received", ".tmp"] {
        let left = files_ending(&dir, suffix);
        assert!(left.is_empty(), "node {index} left {left:?}");
    }
}

#[test]
fn a_follower_kept_down_rejoins_through_install_snapshot() {
    let mut cluster = Cluster::start_with(3, SMALL_SNAPSHOT_FLAGS);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let mut requests = vec![put_topic("t")];
    requests.extend(puts("t", 0, 200, 100));
    write_all(&cluster, &requests);
    let follower = (leader + 1) % 3;
    wait_converged(&cluster, &[0, 1, 2], Duration::from_secs(20));
    let behind = last_applied(&cluster, follower);
    cluster.kill(follower);

    // Enough writes that every live node compacts its log well past the follower.
    write_all(&cluster, &puts("t", 200, 2500, 100));
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert!(
        newest_snapshot(&cluster, leader) > behind + 300,
        "the leader did not compact past the follower ({behind})"
    );

    cluster.spawn(follower);
    let converged = wait_converged(&cluster, &[0, 1, 2], Duration::from_secs(60));
    assert_eq!(converged["message_count"], 2700);
    assert!(
        wait_for_log(
            &cluster,
            follower,
            "installed snapshot",
            Duration::from_secs(1)
        ),
        "the follower caught up without InstallSnapshot"
    );
    assert!(newest_snapshot(&cluster, follower) > behind);
    assert_no_leftovers(&cluster, follower);

    // It keeps following from the log after the snapshot.
    write_all(&cluster, &puts("t", 2700, 300, 100));
    wait_converged(&cluster, &[0, 1, 2], Duration::from_secs(30));
}

#[test]
fn killing_the_leader_in_the_middle_of_a_snapshot_transfer_still_converges() {
    // Big snapshots streamed slowly: about 3.5 MB at 1 MB/s.
    let mut flags = SMALL_SNAPSHOT_FLAGS.to_vec();
    flags.extend([
        "--snapshot-chunk-bytes",
        "16384",
        "--snapshot-send-bytes-per-sec",
        "1000000",
    ]);
    let mut cluster = Cluster::start_with(3, &flags);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    write_all(&cluster, &[put_topic("t")]);
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    wait_converged(&cluster, &[0, 1, 2], Duration::from_secs(20));
    cluster.kill(follower);
    write_all(&cluster, &puts("t", 0, 3300, 1000));
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);

    cluster.spawn(follower);
    // Wait until the transfer is under way, then kill the leader in its middle.
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_ending(&cluster.data_dir(follower), ".partial").is_empty() {
        assert!(Instant::now() < deadline, "no transfer started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !files_ending(&cluster.data_dir(follower), ".partial").is_empty(),
        "the transfer finished too quickly to be interrupted"
    );
    cluster.kill(leader);

    // The other node leads (the follower's log is behind) and sends its own snapshot.
    let (new_leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_eq!(
        new_leader, other,
        "the lagging follower cannot win an election"
    );
    let converged = wait_converged(&cluster, &[follower, other], Duration::from_secs(90));
    assert_eq!(converged["message_count"], 3300);
    assert!(
        wait_for_log(
            &cluster,
            follower,
            "installed snapshot",
            Duration::from_secs(1)
        ),
        "the follower converged without InstallSnapshot"
    );
    assert_no_leftovers(&cluster, follower);

    cluster.spawn(leader);
    write_all(&cluster, &puts("t", 3300, 100, 1000));
    let converged = wait_converged(&cluster, &[0, 1, 2], Duration::from_secs(90));
    assert_eq!(converged["message_count"], 3400);
}
