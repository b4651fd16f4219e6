//! End-to-end tests of acknowledged delivery and batches (PROTOCOL.md §8 and §10) on real
//! nodes: whole replies on the wire, a lease ending by the leader's clock, a lease that
//! survives a SIGKILL of the leader, and batch PUTs that take effect all or none.

mod common;

use common::{without_error_message, Cluster, SessionClient, Wire, FAST_FLAGS, REPLY_DEADLINE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WIRES: [Wire; 2] = [Wire::MsgPack, Wire::Json];

/// The reply without `leader` (a version 2 extra whose value depends on the run) and with
/// error messages masked.
fn plain(mut reply: Value) -> Value {
    if let Some(map) = reply.as_object_mut() {
        map.remove("leader");
    }
    without_error_message(reply)
}

fn stale() -> Value {
    json!({"success": false, "error": {"code": "STALE_RECEIPT", "message": "*"}})
}

#[test]
fn leases_batches_and_dead_letters_on_the_wire() {
    let cluster = Cluster::start_with(1, FAST_FLAGS);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    for wire in WIRES {
        let topic = format!("{wire:?}");
        let dead = format!("{wire:?}-dead");
        let mut call = |request: Value| plain(client.call(wire, &request));
        assert_eq!(
            call(
                json!({"v": 2, "type": "topic", "method": "PUT", "topic": topic,
                        "max_deliveries": 2, "dead_letter": dead})
            ),
            json!({"success": true})
        );
        assert_eq!(
            call(
                json!({"v": 2, "type": "message", "method": "PUT", "topic": topic,
                        "messages": ["a", "b", "c"]})
            ),
            json!({"success": true, "count": 3})
        );
        // A forgotten `v` never turns a lease into a pop.
        assert_eq!(
            call(json!({"type": "message", "method": "GET", "topic": topic, "lease_ms": 10})),
            json!({"success": false, "error": {"code": "BAD_REQUEST", "message": "*"}})
        );
        let first = call(
            json!({"v": 2, "type": "message", "method": "GET", "topic": topic,
                                "lease_ms": 60_000}),
        );
        let receipt = first["receipt"].clone();
        assert!(receipt.is_string(), "{first}");
        assert_eq!(
            first,
            json!({"success": true, "message": "a", "receipt": receipt, "deliveries": 1})
        );
        // Invisible to every other GET; v1 replies are unchanged.
        assert_eq!(
            call(json!({"type": "message", "method": "GET", "topic": topic})),
            json!({"success": true, "message": "b"})
        );
        assert_eq!(
            call(json!({"v": 2, "type": "topic", "method": "GET", "detail": true}))["topics"]
                [if wire == Wire::MsgPack { 0 } else { 2 }],
            json!({"name": topic, "ready": 1, "leased": 1, "max_deliveries": 2,
                   "dead_letter": dead, "discarded": 0})
        );
        // NACK: back in place, before "c".
        assert_eq!(
            call(
                json!({"v": 2, "type": "message", "method": "NACK", "topic": topic,
                        "receipt": receipt})
            ),
            json!({"success": true})
        );
        assert_eq!(
            call(
                json!({"v": 2, "type": "message", "method": "ACK", "topic": topic,
                        "receipt": receipt})
            ),
            stale()
        );
        let batch = call(
            json!({"v": 2, "type": "message", "method": "GET", "topic": topic,
                                "lease_ms": 60_000, "max": 5}),
        );
        let items = batch["messages"].as_array().expect("a list").clone();
        assert_eq!(items.len(), 2, "{batch}");
        assert_eq!(
            (&items[0]["message"], &items[0]["deliveries"]),
            (&json!("a"), &json!(2))
        );
        assert_eq!(
            (&items[1]["message"], &items[1]["deliveries"]),
            (&json!("c"), &json!(1))
        );
        // "a" comes back a second time: to the dead-letter topic, created for it.
        let receipts: Vec<Value> = items.iter().map(|item| item["receipt"].clone()).collect();
        assert_eq!(
            call(
                json!({"v": 2, "type": "message", "method": "NACK", "topic": topic,
                        "receipts": [receipts[0], "never-issued"]})
            ),
            json!({"success": true, "stale": ["never-issued"]})
        );
        assert_eq!(
            call(
                json!({"v": 2, "type": "message", "method": "ACK", "topic": topic,
                        "receipts": [receipts[1]]})
            ),
            json!({"success": true, "stale": []})
        );
        assert_eq!(
            call(json!({"v": 2, "type": "message", "method": "GET", "topic": dead, "max": 1})),
            json!({"success": true, "messages": ["a"]})
        );
        assert_eq!(
            call(json!({"v": 2, "type": "message", "method": "GET", "topic": topic})),
            json!({"success": false, "error": {"code": "EMPTY", "message": "*"}})
        );
    }
}

#[test]
fn an_unacknowledged_lease_ends_and_the_message_is_handed_out_again() {
    let cluster = Cluster::start_with(1, FAST_FLAGS);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let mut call = |request: Value| plain(client.call(Wire::MsgPack, &request));
    call(json!({"type": "topic", "method": "PUT", "topic": "t"}));
    call(json!({"type": "message", "method": "PUT", "topic": "t", "message": "work"}));
    let first = call(
        json!({"v": 2, "type": "message", "method": "GET", "topic": "t",
                            "lease_ms": 200}),
    );
    assert_eq!(first["deliveries"], 1, "{first}");
    // The consumer "crashes": no ACK. The leader ends the lease on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let reply = call(
            json!({"v": 2, "type": "message", "method": "GET", "topic": "t",
                                "lease_ms": 60_000}),
        );
        if reply["success"] == true {
            break reply;
        }
        assert_eq!(reply["error"]["code"], "EMPTY", "{reply}");
        assert!(Instant::now() < deadline, "the lease never ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (&second["message"], &second["deliveries"]),
        (&json!("work"), &json!(2))
    );
    assert_eq!(
        call(
            json!({"v": 2, "type": "message", "method": "ACK", "topic": "t",
                    "receipt": first["receipt"]})
        ),
        stale()
    );
    assert_eq!(
        call(
            json!({"v": 2, "type": "message", "method": "ACK", "topic": "t",
                    "receipt": second["receipt"]})
        ),
        json!({"success": true})
    );
}

#[test]
fn a_lease_survives_a_sigkill_of_the_leader() {
    let mut cluster = Cluster::start_with(3, FAST_FLAGS);
    let (leader, _) = cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = SessionClient::new(&cluster, "consumer");
    let within = REPLY_DEADLINE * 3;
    client.call_ok(
        &json!({"type": "topic", "method": "PUT", "topic": "t"}),
        within,
    );
    client.call_ok(
        &json!({"type": "message", "method": "PUT", "topic": "t", "messages": ["m", "n"]}),
        within,
    );
    let leased = client.call_ok(
        &json!({"type": "message", "method": "GET", "topic": "t", "lease_ms": 120_000}),
        within,
    );
    assert_eq!(leased["message"], "m", "{leased}");

    cluster.kill(leader);
    let (new_leader, _) = cluster.wait_for_leader(common::LEADER_DEADLINE);
    assert_ne!(new_leader, leader);
    // The new leader knows the lease: "m" is not handed out again, "n" is next.
    let next = client.call_ok(
        &json!({"type": "message", "method": "GET", "topic": "t", "lease_ms": 120_000}),
        within,
    );
    assert_eq!(next["message"], "n", "{next}");
    let detail = client.call_ok(
        &json!({"type": "topic", "method": "GET", "detail": true}),
        within,
    );
    assert_eq!(
        detail["topics"][0],
        json!({"name": "t", "ready": 0, "leased": 2, "max_deliveries": null,
               "dead_letter": null, "discarded": 0})
    );
    // The holder's ACK to the new leader counts.
    for receipt in [&leased["receipt"], &next["receipt"]] {
        let reply = client.call_ok(
            &json!({"type": "message", "method": "ACK", "topic": "t", "receipt": receipt}),
            within,
        );
        assert_eq!(plain(reply), json!({"success": true}));
    }
    let empty = client.call_ok(
        &json!({"type": "message", "method": "GET", "topic": "t"}),
        within,
    );
    assert_eq!(empty["error"]["code"], "EMPTY", "{empty}");
}

/// Sends `request` (a message GET) until the message leased by a GET sent at `asked` for
/// `lease` is handed out again, every answer before that EMPTY (polled until `deadline`;
/// `leader` names who should end the lease); it must come `lease` or more after `asked`.
/// Returns the reply and how many EMPTY answers came first.
fn leased_message_again(
    client: &mut SessionClient,
    request: &Value,
    within: Duration,
    (asked, lease): (Instant, Duration),
    deadline: Instant,
    leader: &str,
) -> (Value, usize) {
    let mut empties = 0;
    loop {
        let reply = client.call_ok(request, within);
        // The reply came after the grant it carries.
        let after = asked.elapsed();
        if reply["success"] == true {
            assert!(
                after >= lease,
                "handed out again {after:?} after the leased GET was sent, before its \
                 {lease:?} lease ended: {reply}"
            );
            return (reply, empties);
        }
        assert_eq!(reply["error"]["code"], "EMPTY", "{reply}");
        empties += 1;
        assert!(
            Instant::now() < deadline,
            "the lease never ended under {leader}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The new leader ends a lease granted by the old one by the cluster's lease clock, which
/// it continues (no wall clock is read): not before the lease's length has passed since
/// the grant, and soon after.
#[test]
fn a_lease_granted_by_a_killed_leader_ends_on_time_under_the_next() {
    const LEASE: Duration = Duration::from_secs(3);
    let mut cluster = Cluster::start_with(3, FAST_FLAGS);
    let (leader, _) = cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut holder = SessionClient::new(&cluster, "holder");
    let within = REPLY_DEADLINE * 3;
    holder.call_ok(
        &json!({"type": "topic", "method": "PUT", "topic": "t"}),
        within,
    );
    holder.call_ok(
        &json!({"type": "message", "method": "PUT", "topic": "t", "message": "m"}),
        within,
    );
    // The lease is granted after this instant: every later hand-out must come LEASE or
    // more after it.
    let asked = Instant::now();
    let leased = holder.call_ok(
        &json!({"type": "message", "method": "GET", "topic": "t", "lease_ms": LEASE.as_millis() as u64}),
        within,
    );
    assert_eq!(
        (&leased["message"], &leased["deliveries"]),
        (&json!("m"), &json!(1)),
        "{leased}"
    );
    cluster.kill(leader);

    let mut other = SessionClient::new(&cluster, "other");
    let deadline = asked + Duration::from_secs(20);
    let (again, empties) = leased_message_again(
        &mut other,
        &json!({"type": "message", "method": "GET", "topic": "t", "lease_ms": 60_000}),
        within,
        (asked, LEASE),
        deadline,
        "the new leader",
    );
    assert!(
        empties > 0,
        "the new leader was never asked while the lease held"
    );
    assert_eq!(
        (&again["message"], &again["deliveries"]),
        (&json!("m"), &json!(2)),
        "{again}"
    );
    // The first holder's lease ended: its ACK no longer counts.
    let late = holder.call_ok(
        &json!({"type": "message", "method": "ACK", "topic": "t", "receipt": leased["receipt"]}),
        within,
    );
    assert_eq!(late["error"]["code"], "STALE_RECEIPT", "{late}");
}

/// A lease granted by a leader whose lease clock started late (its node had just
/// restarted) is not ended early by a later leader whose node ran far longer: each leader
/// starts its clock from the log when it has caught up, not from what it read in an earlier
/// term or as a follower. The first version of the lease clock let node 2, up 8 s longer
/// than the restarted nodes 0 and 1 while nothing in the log carried a time, read 8 s
/// ahead of them and end a 3 s lease of theirs at once (the membership nemesis, seed
/// 16002, found it).
#[test]
fn a_lease_outlives_a_handover_to_a_node_that_has_run_longer() {
    const LEASE: Duration = Duration::from_secs(3);
    let mut cluster = Cluster::start_with(3, FAST_FLAGS);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let within = REPLY_DEADLINE * 3;
    let mut client = SessionClient::new(&cluster, "setup");
    client.call_ok(
        &json!({"type": "topic", "method": "PUT", "topic": "t"}),
        within,
    );
    client.call_ok(
        &json!({"type": "message", "method": "PUT", "topic": "t", "message": "m"}),
        within,
    );
    // Nothing carries a time while no lease is live: node 2's uptime is all it could run
    // ahead by. Then nodes 0 and 1 restart (node 2 paused, so one of them leads).
    std::thread::sleep(LEASE * 2 + Duration::from_secs(2));
    cluster.signal(2, libc::SIGSTOP);
    for index in [0, 1] {
        cluster.kill(index);
        cluster.spawn(index);
        let up_by = Instant::now() + common::LEADER_DEADLINE;
        while cluster.status(index, Duration::from_millis(500)).is_none() {
            assert!(Instant::now() < up_by, "node {index} did not come up");
        }
    }
    let applied = cluster.leader_applied(common::LEADER_DEADLINE);
    cluster.signal(2, libc::SIGCONT);
    let (grantor, _) = cluster.wait_for_leader(common::LEADER_DEADLINE);
    assert_ne!(
        grantor, 2,
        "node 2 was paused while 0 and 1 elected a leader"
    );
    cluster.wait_converged(applied, common::LEADER_DEADLINE);

    let mut holder = SessionClient::new(&cluster, "holder");
    let asked = Instant::now();
    let leased = holder.call_ok(
        &json!({"type": "message", "method": "GET", "topic": "t", "lease_ms": LEASE.as_millis() as u64}),
        within,
    );
    assert_eq!(
        (&leased["message"], &leased["deliveries"]),
        (&json!("m"), &json!(1)),
        "{leased}"
    );
    // Every node has the grant; then the grantor hands over on SIGTERM to its most
    // up-to-date follower: node 2, with the third node paused meanwhile (the leader's clock
    // entries go on, so the paused one falls behind; on a tie the highest id is taken).
    let granted = cluster.leader_applied(common::LEADER_DEADLINE);
    cluster.wait_converged(granted, common::LEADER_DEADLINE);
    let third = 1 - grantor;
    cluster.signal(third, libc::SIGSTOP);
    cluster.terminate(grantor, common::LEADER_DEADLINE);
    let (successor, _) = cluster.wait_for_leader(common::LEADER_DEADLINE);
    cluster.signal(third, libc::SIGCONT);
    assert_eq!(
        successor, 2,
        "node {grantor} handed over to node {successor}, not node 2"
    );

    let mut other = SessionClient::new(&cluster, "other");
    let deadline = asked + Duration::from_secs(30);
    let (again, _) = leased_message_again(
        &mut other,
        &json!({"type": "message", "method": "GET", "topic": "t"}),
        within,
        (asked, LEASE),
        deadline,
        "node 2",
    );
    assert_eq!(again["message"], "m", "{again}");
}

/// While a lease is live the leader appends clock entries (a next leader's clock starts
/// close to its own), and they end nothing; with no lease live it writes nothing.
#[test]
fn the_leader_appends_clock_entries_only_while_a_lease_is_live() {
    let cluster = Cluster::start_with(1, FAST_FLAGS);
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let mut call = |request: Value| plain(client.call(Wire::MsgPack, &request));
    call(json!({"type": "topic", "method": "PUT", "topic": "t"}));
    call(json!({"type": "message", "method": "PUT", "topic": "t", "message": "m"}));
    let leased = call(
        json!({"v": 2, "type": "message", "method": "GET", "topic": "t", "lease_ms": 600_000}),
    );
    assert_eq!(leased["message"], "m", "{leased}");
    let mut last_index = || {
        let status = call(json!({"v": 2, "type": "status", "method": "GET"}));
        status["last_log_index"]
            .as_u64()
            .unwrap_or_else(|| panic!("no last_log_index in {status}"))
    };
    let granted = last_index();
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_index() < granted + 3 {
        assert!(
            Instant::now() < deadline,
            "no clock entries while a lease is live"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut call = |request: Value| plain(client.call(Wire::MsgPack, &request));
    assert_eq!(
        call(
            json!({"v": 2, "type": "message", "method": "ACK", "topic": "t",
                    "receipt": leased["receipt"]})
        ),
        json!({"success": true}),
        "the clock entries ended no lease"
    );
    let status = call(json!({"v": 2, "type": "status", "method": "GET"}));
    let idle = status["last_log_index"].as_u64();
    // Several clock-entry intervals with nothing leased: nothing is written.
    std::thread::sleep(Duration::from_millis(2_000));
    let status = call(json!({"v": 2, "type": "status", "method": "GET"}));
    assert_eq!(status["last_log_index"].as_u64(), idle, "{status}");
}

#[test]
fn a_batch_put_is_all_or_none() {
    let cluster = Cluster::start_configured(1, FAST_FLAGS, &json!({"queued_bytes_max": 10_000}));
    cluster.wait_for_leader(common::LEADER_DEADLINE);
    let mut client = cluster.client(0);
    let mut call = |request: Value| plain(client.call(Wire::Json, &request));
    assert_eq!(
        call(json!({"v": 2, "type": "topic", "method": "PUT", "topic": "t"})),
        json!({"success": true})
    );
    let get = json!({"v": 2, "type": "message", "method": "GET", "topic": "t"});
    let empty = json!({"success": false, "error": {"code": "EMPTY", "message": "*"}});

    // One message over the 1 MiB limit refuses the whole batch.
    let huge = "x".repeat(1024 * 1024 + 1);
    let refused = call(
        json!({"v": 2, "type": "message", "method": "PUT", "topic": "t",
                "messages": ["small", huge, "after"]}),
    );
    let code = refused["error"]["code"].as_str().unwrap_or_default();
    assert!(
        refused["success"] == false && (code == "TOO_LARGE" || code == "BAD_REQUEST"),
        "{refused}"
    );
    assert_eq!(
        call(get.clone()),
        empty,
        "nothing of the refused batch was put"
    );

    // A batch that would go past `queued_bytes_max` is refused whole too.
    let messages: Vec<String> = (0..20).map(|n| format!("{n:0>1000}")).collect();
    let refused = call(
        json!({"v": 2, "type": "message", "method": "PUT", "topic": "t",
                "messages": messages}),
    );
    assert_eq!(
        refused,
        json!({"success": false, "error": {"code": "QUOTA", "message": "*"}})
    );
    assert_eq!(
        call(get.clone()),
        empty,
        "nothing of the over-quota batch was put"
    );

    // One that fits goes in whole, in order.
    assert_eq!(
        call(
            json!({"v": 2, "type": "message", "method": "PUT", "topic": "t",
                    "messages": &messages[..5]})
        ),
        json!({"success": true, "count": 5})
    );
    let all = call(json!({"v": 2, "type": "message", "method": "GET", "topic": "t", "max": 100}));
    assert_eq!(all, json!({"success": true, "messages": &messages[..5]}));
}
