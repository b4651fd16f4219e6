//! Soak: put and get at the same rate for a while; every node's data dir must stay under a
//! fixed bound (WAL segments are deleted after snapshots), and memory must not grow with the
//! number of operations. `RRMQ_SOAK_SECS` sets the duration (default 10 s, short for CI).

mod common;
#[path = "common/snapshots.rs"]
mod snapshots;

use common::{Cluster, LEADER_DEADLINE};
use snapshots::{dir_bytes, get_message, pipeline, put_topic, puts, rss_kib, write_all};
use std::time::{Duration, Instant};

/// Two snapshots of a near-empty queue, the log since the older one (at most ~2 x 400
/// entries of ~150 bytes) and segment granularity (16 KiB): far below this. Without
/// compaction, 10 s of this load writes several megabytes.
const DATA_DIR_BYTES_MAX: u64 = 1024 * 1024;

#[test]
fn steady_put_and_get_keeps_the_data_dir_bounded() {
    let seconds: u64 = std::env::var("RRMQ_SOAK_SECS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10);
    let cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-entries",
            "400",
            "--snapshot-log-margin",
            "50",
            "--wal-segment-bytes",
            "16384",
        ],
    );
    cluster.wait_for_leader(LEADER_DEADLINE);
    write_all(&cluster, &[put_topic("t")]);
    let started = Instant::now();
    let mut sizes_max = [0u64; 3];
    let mut rss_first_third: Option<Vec<u64>> = None;
    let mut operations = 0u64;
    let mut round = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
        // 100 puts then 100 gets: the queue never holds more than 100 messages.
        let mut requests = puts("t", round * 100, 100, 100);
        requests.extend((0..100).map(|_| get_message("t")));
        let replies = pipeline(&cluster, leader, &requests, 64);
        let failed = replies
            .iter()
            .filter(|reply| reply["success"] != true)
            .count();
        assert_eq!(
            failed,
            0,
            "round {round}: {failed} requests failed: {:?}",
            replies.iter().find(|reply| reply["success"] != true)
        );
        operations += requests.len() as u64;
        round += 1;
        for (index, size_max) in sizes_max.iter_mut().enumerate() {
            let size = dir_bytes(&cluster.data_dir(index));
            *size_max = (*size_max).max(size);
            assert!(
                size <= DATA_DIR_BYTES_MAX,
                "node {index}'s data dir holds {size} bytes after {operations} operations"
            );
        }
        if rss_first_third.is_none() && started.elapsed() >= Duration::from_secs(seconds) / 3 {
            rss_first_third = Some(
                pids(&cluster)
                    .iter()
                    .filter_map(|pid| rss_kib(*pid))
                    .collect(),
            );
        }
    }
    let rss_end: Vec<u64> = pids(&cluster)
        .iter()
        .filter_map(|pid| rss_kib(*pid))
        .collect();
    eprintln!(
        "soak: {operations} operations in {:?}; data dir max bytes per node {sizes_max:?}; \
         RSS KiB at a third {rss_first_third:?}, at the end {rss_end:?}",
        started.elapsed()
    );
    // Memory: generous (allocators keep what they freed), but far below what an
    // uncompacted log would grow to over a long soak.
    if let Some(first) = rss_first_third {
        for (index, (first, end)) in first.iter().zip(&rss_end).enumerate() {
            assert!(
                *end <= first + 16 * 1024,
                "node {index}'s memory grew from {first} KiB to {end} KiB"
            );
        }
    }
}

fn pids(cluster: &Cluster) -> Vec<u32> {
    cluster.nodes.pids()
}
