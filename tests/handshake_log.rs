//! Refused handshakes are logged (issue 13's "loud logs"), rate-limited: a plain client on a
//! keyed client port and a plain peer on a keyed peer port get nothing, and the node's log
//! names the port. The refusals happen inside libzmq; only its socket monitor sees them
//! (`transport::watch`).

mod common;

use common::{encode, Client, Cluster, Wire, LEADER_DEADLINE};
use serde_json::json;
use std::time::{Duration, Instant};

/// Polls node 0's log, from byte `after` on, until a line contains every one of `parts`;
/// returns it.
fn wait_for_log_line(cluster: &Cluster, after: usize, parts: &[&str]) -> Option<String> {
    let deadline = Instant::now() + LEADER_DEADLINE;
    while Instant::now() < deadline {
        let log = cluster.log(0);
        if let Some(line) = log
            .get(after..)
            .unwrap_or("")
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

    // Whichever end reads the other's greeting first gives up: the node refuses it (a
    // warning: "mechanism mismatch"), or sees the connection closed during the handshake
    // (an info line). Either way a line names the port.
    let before = cluster.log(0).len();
    let mut plain = Client::connect(client_port);
    let status = encode(Wire::MsgPack, &json!({"type": "status", "method": "GET"}));
    assert_eq!(
        plain.bytes(&status, Duration::from_secs(2)),
        None,
        "a plain client gets no reply from a keyed client port"
    );
    let client_endpoint = format!("client port tcp://127.0.0.1:{client_port}");
    let line = wait_for_log_line(&cluster, before, &[&client_endpoint, "handshake"]);
    assert!(
        line.is_some(),
        "no failed-handshake line for the client port in:\n{}",
        cluster.log(0)
    );

    let before = cluster.log(0).len();
    let context = zmq::Context::new();
    let peer = cluster.peer_dealer(&context, 0, None);
    peer.send(&b"not a frame"[..], 0).expect("queued");
    let internal_endpoint = format!("internal port tcp://127.0.0.1:{internal_port}");
    let line = wait_for_log_line(&cluster, before, &[&internal_endpoint, "handshake"]);
    assert!(
        line.is_some(),
        "no failed-handshake line for the internal port in:\n{}",
        cluster.log(0)
    );

    // A burst of plain clients: every failed handshake is counted, in a few lines (at most
    // one a second per port and kind), not one line each. At least one of them loses the
    // race and is refused by the node itself.
    let before = cluster.log(0).len();
    let burst: Vec<Client> = (0..BURST).map(|_| Client::connect(client_port)).collect();
    let deadline = Instant::now() + LEADER_DEADLINE;
    let (lines, counted) = loop {
        let log = cluster.log(0);
        let (lines, counted) = counts_logged(log.get(before..).unwrap_or(""), &client_endpoint);
        if counted >= BURST || Instant::now() > deadline {
            break (lines, counted);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        counted >= BURST,
        "{counted} failed handshakes counted for {BURST} plain clients in:\n{}",
        cluster.log(0)
    );
    assert!(
        lines * 3 <= counted,
        "{lines} lines for {counted} failed handshakes: not rate-limited"
    );
    let refused = wait_for_log_line(
        &cluster,
        0,
        &[&client_endpoint, "refused", "mechanism mismatch"],
    );
    assert!(
        refused.is_some(),
        "no warning that a plain client was refused in:\n{}",
        cluster.log(0)
    );
    drop(burst);
    drop(plain);
}

/// Plain clients connecting at once.
const BURST: u64 = 30;

/// In `log`, the lines about failed handshakes on `endpoint`, and the failures they count
/// (the number before "handshake(s)").
fn counts_logged(log: &str, endpoint: &str) -> (u64, u64) {
    let counts: Vec<u64> = log
        .lines()
        .filter(|line| line.contains(endpoint))
        .filter_map(|line| {
            let before = line.split(" handshake(s)").next()?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    (counts.len() as u64, counts.iter().sum())
}
