//! Refused handshakes are logged (issue 13's "loud logs"), rate-limited: a plain client on a
//! keyed client port and a plain peer on a keyed peer port get nothing, and the node's log
//! names the port. The refusals happen inside libzmq; only its socket monitor sees them
//! (`transport::watch`).

mod common;

use common::{encode, Client, Cluster, Wire, LEADER_DEADLINE};
use serde_json::json;
use std::time::{Duration, Instant};

/// Polls node `index`'s log until a line contains every one of `parts`; returns it.
fn wait_for_log_line(cluster: &Cluster, index: usize, parts: &[&str]) -> Option<String> {
    let deadline = Instant::now() + LEADER_DEADLINE;
    while Instant::now() < deadline {
        let log = cluster.log(index);
        if let Some(line) = log
            .lines()
            .find(|line| parts.iter().all(|part| line.contains(part)))
        {
            return Some(line.to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn plain_handshakes_on_keyed_ports_get_nothing_and_are_logged_with_the_port() {
    let cluster = Cluster::start_with_clients(1, &[], &[("alice", json!({"consume": ["orders"]}))]);
    let client_port = cluster.ports[0].port;
    let internal_port = cluster.ports[0].internal_port;

    let mut plain = Client::connect(client_port);
    let status = encode(Wire::MsgPack, &json!({"type": "status", "method": "GET"}));
    assert_eq!(
        plain.bytes(&status, Duration::from_secs(2)),
        None,
        "a plain client gets no reply from a keyed client port"
    );
    let client_endpoint = format!("client port tcp://127.0.0.1:{client_port}");
    let line = wait_for_log_line(
        &cluster,
        0,
        &[&client_endpoint, "refused", "mechanism mismatch"],
    );
    assert!(
        line.is_some(),
        "no refused-handshake line for the client port in:\n{}",
        cluster.log(0)
    );

    let context = zmq::Context::new();
    let peer = cluster.peer_dealer(&context, 0, None);
    peer.send(&b"not a frame"[..], 0).expect("queued");
    // Whichever end reads the other's greeting first gives up: the node refuses it, or sees
    // the connection closed during the handshake.
    let internal_endpoint = format!("internal port tcp://127.0.0.1:{internal_port}");
    let line = wait_for_log_line(&cluster, 0, &[&internal_endpoint, "handshake"]);
    assert!(
        line.is_some(),
        "no failed-handshake line for the internal port in:\n{}",
        cluster.log(0)
    );

    // The plain client keeps reconnecting (and being refused) while it lives, several times
    // a second: one line counts them all, rather than one line per attempt.
    let deadline = Instant::now() + LEADER_DEADLINE;
    let counted = loop {
        let log = cluster.log(0);
        let counted = log.lines().any(|line| {
            line.contains(&client_endpoint)
                && line
                    .split("refused ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|count| count.parse::<u64>().ok())
                    .is_some_and(|count| count >= 2)
        });
        if counted || Instant::now() > deadline {
            break counted;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        counted,
        "no rate-limited line counting several refusals in:\n{}",
        cluster.log(0)
    );
    drop(plain);
}
