//! End-to-end: restarting from a snapshot plus the log after it gives exactly the state a
//! full replay gives, and a damaged snapshot file falls back to the previous one.

mod common;
#[path = "common/snapshots.rs"]
mod snapshots;

use common::{Cluster, LEADER_DEADLINE};
use serde_json::Value;
use snapshots::{
    files_ending, get_message, keyed, oldest_segment, put_message, put_topic, puts, snapshot_index,
    stats, wait_converged, write_all, SMALL_SNAPSHOT_FLAGS,
};
use std::time::Duration;

/// Topics, puts to both, gets, and session-keyed requests: every part of the state.
fn workload(round: usize) -> Vec<Value> {
    let mut requests = Vec::new();
    if round == 0 {
        requests.push(put_topic("a"));
        requests.push(put_topic("b"));
    }
    let base = round * 10_000;
    for number in 0..1500 {
        let topic = if number % 3 == 0 { "b" } else { "a" };
        requests.push(put_message(topic, &format!("m{}", base + number)));
        if number % 4 == 3 {
            requests.push(get_message("a"));
        }
        if number % 10 == 0 {
            let seq = (base + number) as u64 / 10 + 1;
            requests.push(keyed(put_message("b", &format!("k{seq}")), "client-k", seq));
        }
    }
    requests
}

fn digest_and_applied(cluster: &Cluster) -> (Value, Value) {
    let stats = stats(cluster, 0).expect("stats");
    (stats["digest"].clone(), stats["last_applied"].clone())
}

#[test]
fn restart_from_snapshot_and_tail_matches_a_full_replay() {
    // `with` takes snapshots and compacts; `without` never does in this test (the defaults'
    // thresholds are far away), so its restart replays the whole log.
    let mut with = Cluster::start_with(1, SMALL_SNAPSHOT_FLAGS);
    let mut without = Cluster::start(1);
    for cluster in [&with, &without] {
        cluster.wait_for_leader(LEADER_DEADLINE);
        write_all(cluster, &workload(0));
    }
    let dir = with.data_dir(0);
    let snapshots = files_ending(&dir, ".snap");
    assert!(!snapshots.is_empty(), "no snapshot was taken");
    // A third may exist for a moment: written, not yet retired by the node loop.
    assert!(
        snapshots.len() <= 3,
        "old snapshots are not deleted: {snapshots:?}"
    );
    // Snapshots are written in the background: give the last one a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while oldest_segment(&dir) == 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no WAL segment was deleted: {:?}",
            files_ending(&dir, ".wal")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(oldest_segment(&without.data_dir(0)), 1);
    let before = digest_and_applied(&with);
    assert_eq!(
        before,
        digest_and_applied(&without),
        "same commands, same state"
    );

    // SIGKILL: nothing but what is on disk survives. The restart must use the snapshot
    // (the log's start was deleted) and replay the tail.
    for cluster in [&mut with, &mut without] {
        cluster.kill(0);
        cluster.spawn(0);
        assert!(cluster.wait_all_up(LEADER_DEADLINE), "restart failed");
        cluster.wait_for_leader(LEADER_DEADLINE);
    }
    let log = std::fs::read_to_string(with.log_path(0)).expect("log");
    let startup = log
        .lines()
        .rfind(|line| line.contains("serving clients"))
        .expect("a startup line");
    assert!(
        !startup.contains("snapshot 0@0"),
        "the restart did not load a snapshot: {startup}"
    );
    let after = wait_converged(&with, &[0], Duration::from_secs(10));
    let replayed = wait_converged(&without, &[0], Duration::from_secs(10));
    assert_eq!(
        after["digest"], before.0,
        "restart from snapshot + tail changed the state"
    );
    assert_eq!(
        replayed["digest"], before.0,
        "a full replay changed the state"
    );

    // The log continues after the snapshot: more of the same on both, same state again.
    for cluster in [&with, &without] {
        write_all(cluster, &workload(1));
    }
    assert_eq!(digest_and_applied(&with), digest_and_applied(&without));
    let newest = files_ending(&dir, ".snap")
        .last()
        .map(|path| snapshot_index(path));
    assert!(
        newest > snapshots.last().map(|path| snapshot_index(path)),
        "no new snapshot"
    );
}

/// Flips a byte in the middle of `path`.
fn damage(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let mut cluster = Cluster::start_with(1, SMALL_SNAPSHOT_FLAGS);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let mut requests = vec![put_topic("t")];
    requests.extend(puts("t", 0, 1500, 200));
    write_all(&cluster, &requests);
    let before = stats(&cluster, 0).expect("stats");
    let dir = cluster.data_dir(0);
    cluster
        .terminate(0, Duration::from_secs(10))
        .expect("exits on SIGTERM");
    let snapshots = files_ending(&dir, ".snap");
    assert!(snapshots.len() >= 2, "two snapshots kept: {snapshots:?}");

    let newest = snapshots.last().expect("a snapshot").clone();
    damage(&newest);
    cluster.spawn(0);
    assert!(
        cluster.wait_all_up(LEADER_DEADLINE),
        "no restart after one damaged snapshot"
    );
    cluster.wait_for_leader(LEADER_DEADLINE);
    let after = wait_converged(&cluster, &[0], Duration::from_secs(10));
    assert_eq!(
        after["digest"], before["digest"],
        "state after falling back"
    );
    assert_eq!(after["message_count"], before["message_count"]);
    let log = std::fs::read_to_string(cluster.log_path(0)).expect("log");
    assert!(
        log.contains("is damaged"),
        "no warning about the damaged snapshot"
    );
    let mut set_aside = newest.clone().into_os_string();
    set_aside.push(".corrupt");
    assert!(
        std::path::Path::new(&set_aside).exists(),
        "the damaged file was not set aside"
    );

    // Damage the one it fell back to as well, once the log no longer reaches back to it
    // (a new snapshot compacted the WAL past it): nothing is left to resume from, and the
    // node says so instead of starting with a wrong state.
    write_all(&cluster, &puts("t", 1500, 1500, 200));
    cluster
        .terminate(0, Duration::from_secs(10))
        .expect("exits on SIGTERM");
    for path in files_ending(&dir, ".snap") {
        damage(&path);
    }
    cluster.spawn(0);
    let status = cluster
        .wait_exit(0, Duration::from_secs(20))
        .expect("exits");
    assert!(!status.success(), "started without a usable snapshot");
    let log = std::fs::read_to_string(cluster.log_path(0)).expect("log");
    assert!(
        log.contains("delete its data dir"),
        "the error does not say how to recover:\n{log}"
    );
}

/// The benchmark behind the README's restart figure: 1 million queued 100-byte messages
/// (default snapshot thresholds), then SIGKILL and restart, timed until the node serves the
/// same state again. Also reports the longest loop pause the logs recorded for taking a
/// snapshot view. Run with
/// `cargo test --release --test snapshot_restart measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_restart_with_a_million_queued_messages() {
    const MESSAGES: usize = 1_000_000;
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let started = std::time::Instant::now();
    write_all(&cluster, &[put_topic("t")]);
    for first in (0..MESSAGES).step_by(50_000) {
        write_all(&cluster, &puts("t", first, 50_000, 100));
    }
    let filled = started.elapsed();
    let before = wait_converged(&cluster, &[0], Duration::from_secs(60));
    assert_eq!(before["message_count"], MESSAGES);
    // Let the last snapshot finish writing, as a node that ran for a while would have.
    std::thread::sleep(Duration::from_secs(5));
    let dir = cluster.data_dir(0);
    let snapshot_bytes: Vec<u64> = files_ending(&dir, ".snap")
        .iter()
        .map(|path| std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0))
        .collect();
    let wal_bytes: u64 = files_ending(&dir, ".wal")
        .iter()
        .map(|path| std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0))
        .sum();
    cluster.kill(0);
    let restart = std::time::Instant::now();
    cluster.spawn(0);
    assert!(
        cluster.wait_all_up(Duration::from_secs(120)),
        "restart failed"
    );
    let answering = restart.elapsed();
    let after = wait_converged(&cluster, &[0], Duration::from_secs(120));
    let serving = restart.elapsed();
    assert_eq!(after["digest"], before["digest"]);
    let log = std::fs::read_to_string(cluster.log_path(0)).expect("log");
    let pause_max_us = log
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("the loop paused ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .max();
    let write_ms: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(" written: "))
        .map(|line| line.split_once(" written: ").map_or("", |(_, rest)| rest))
        .collect();
    let startup = log
        .lines()
        .rfind(|line| line.contains("serving clients"))
        .unwrap_or("");
    println!(
        "filled {MESSAGES} messages in {filled:?}; snapshot files {snapshot_bytes:?} bytes, \
         WAL {wal_bytes} bytes; restart: answering status after {answering:?}, same state \
         (digest) after {serving:?}; longest loop pause for a snapshot view {pause_max_us:?} \
         us\nlast snapshot writes: {:?}\nstartup: {startup}",
        &write_ms[write_ms.len().saturating_sub(3)..]
    );
}
