//! `rrmq-node --sched-policy`: every thread of a running node, ours and libzmq's, runs under
//! the policy asked for (SCHED_BATCH by default), read from `/proc/PID/task/*/stat`.
#![cfg(target_os = "linux")]

mod common;

use common::Cluster;

/// The scheduling policy of every thread of process `pid` (field 41 of `stat`).
fn thread_policies(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's threads");
    tasks
        .map(|task| {
            let path = task.expect("a thread").path().join("stat");
            let stat = std::fs::read_to_string(&path).expect("its stat");
            // The command name may hold spaces: fields are counted after its closing ')',
            // where field 3 (the state) begins.
            let (_, after_name) = stat.rsplit_once(')').expect("a stat line");
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            fields[41 - 3].parse().expect("a policy number")
        })
        .collect()
}

#[test]
fn every_thread_runs_under_sched_batch_by_default_and_normal_on_request() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    for (flags, expected) in [
        (&[][..], SCHED_BATCH),
        (&["--sched-policy", "normal"][..], SCHED_OTHER),
    ] {
        let cluster = Cluster::start_with(1, flags);
        cluster.wait_for_leader(common::LEADER_DEADLINE);
        let pid = cluster.nodes.pid(0).expect("node 0 runs");
        let policies = thread_policies(pid);
        // The loop, WAL, client, peer, timer and signal threads and libzmq's: more than five.
        assert!(policies.len() > 5, "{flags:?}: {policies:?}");
        assert!(
            policies.iter().all(|policy| *policy == expected),
            "{flags:?}: every thread under policy {expected}: {policies:?}"
        );
    }
}
