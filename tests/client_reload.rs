//! End-to-end: what a node does on SIGHUP (PROTOCOL.md §11 "Reload"). The swap itself, and
//! a broken file leaving the list in force, are unit tests (`node::reload`,
//! `config::clients`); a node with `clients` needs peer keys, which this test does not set
//! up. Here: a SIGHUP does not stop a node, which says in its log what it did.

mod common;

use common::{Cluster, REPLY_DEADLINE};
use std::time::{Duration, Instant};

#[test]
fn a_sighup_keeps_a_node_without_clients_serving_and_is_logged() {
    let mut cluster = Cluster::start(1);
    cluster.signal(0, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.log(0).contains("SIGHUP") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = cluster.log(0);
    assert!(
        log.contains("SIGHUP: nothing reloaded") && log.contains("a restart is needed"),
        "no reload line:\n{log}"
    );
    assert!(cluster.is_running(0), "the node stopped on SIGHUP:\n{log}");
    assert!(
        cluster.status(0, REPLY_DEADLINE).is_some(),
        "no status after SIGHUP:\n{log}"
    );
}
