//! Membership changes in keyed clusters (PROTOCOL.md §11, §12) with real nodes: the peer
//! port's CURVE keys follow the membership. A node with its own key, started with `--join`
//! from a config that lists it with that key, is added with `rrmq member add` (an admin
//! client's `--key-file`) in a cluster that lists clients without listing the new node's key:
//! it learns the cluster id from the members, is admitted by their ZAP handlers, catches up,
//! is promoted and counts in the majority; `member replace` does the same for another node. A
//! node whose key is not the one added is refused and never becomes a voter while the cluster
//! serves on, and once a member's removal commits its key is refused on the peer port, and
//! the frames of a connection it opened before are dropped and logged.

mod common;
#[path = "common/members.rs"]
mod members;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{rrmq, Cluster, Wire, LEADER_DEADLINE};
use members::{
    cli, cli_ok, client_port, log_text, spawn_joining, voters, wait_for_applied, wait_for_log_line,
    wait_for_members, Extra,
};
use rrmq::config::keys::{self, KeyPair};
use rrmq::config::ClusterConfig;
use rrmq::raft::{LogIndex, Message, MessageBody, NodeId, Term};
use rrmq::transport::wire::encode_peer_message;
use serde_json::{json, Value};

/// Writes `DIR/NAME`: the config at `base` plus one address on fresh ports carrying a fresh
/// public key, whose key file is `DIR/node-INDEX.key`. Returns the path, the new index and
/// the new node's key pair.
fn config_plus_keyed(cluster: &Cluster, base: &Path, name: &str) -> (PathBuf, usize, KeyPair) {
    let text = std::fs::read_to_string(base).expect("read the config");
    let mut config: Value = serde_json::from_str(&text).expect("JSON");
    let addresses = config["addresses"].as_array_mut().expect("addresses");
    let index = addresses.len();
    let pair = keys::write_new_key_file(&cluster.dir.path().join(format!("node-{index}.key")))
        .expect("write a key file");
    let ports = rrmq::transport::ports::free_ports(2).expect("free ports");
    addresses.push(json!({
        "ip": "127.0.0.1",
        "port": ports[0],
        "internal_port": ports[1],
        "public_key": keys::z85_encode(&pair.public),
    }));
    let path = cluster.dir.path().join(name);
    std::fs::write(&path, config.to_string()).expect("write the grown config");
    (path, index, pair)
}

/// Starts node `index` of `config` with `--join` and its own key file, then adds it with
/// `rrmq member add` (120 s), which must succeed.
fn join_and_add(cluster: &Cluster, config: &Path, index: usize) -> Extra {
    let joining = spawn_joining(cluster, config, index, Some(&node_key_file(cluster, index)));
    cli_ok(
        cluster,
        config,
        "120s",
        &["member", "add", &index.to_string()],
    );
    joining
}

fn node_key_file(cluster: &Cluster, index: usize) -> PathBuf {
    cluster.dir.path().join(format!("node-{index}.key"))
}

fn request(reply_to: &mut common::Client, body: Value) -> Value {
    reply_to.call(Wire::Json, &body)
}

#[test]
fn a_keyed_cluster_adds_and_replaces_nodes_with_their_own_keys() {
    let mut cluster = Cluster::start_with_clients(3, &[], &[("alice", json!({"produce": ["t"]}))]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let config = cluster.config_path.clone();
    cli_ok(&cluster, &config, "30s", &["topic", "create", "t"]);
    cli_ok(&cluster, &config, "30s", &["put", "t", "before"]);

    // A member PUT without the new node's key, or with a malformed one, is BAD_REQUEST.
    let mut admin = cluster.client(leader);
    let put = |public_key: Option<&str>| {
        let mut body = json!({"v": 2, "type": "member", "method": "PUT", "id": 3,
                              "ip": "127.0.0.1", "port": 1, "internal_port": 2});
        if let Some(key) = public_key {
            body["public_key"] = json!(key);
        }
        body
    };
    for (what, key) in [("no key", None), ("a malformed key", Some("not-a-key"))] {
        let reply = request(&mut admin, put(key));
        assert_eq!(reply["success"], json!(false), "{what}: {reply}");
        assert_eq!(
            reply["error"]["code"],
            json!("BAD_REQUEST"),
            "{what}: {reply}"
        );
    }

    // Node 3: its own key, listed in its config only, not as a client. `--join` learns the
    // cluster id from the members once the add has made it a learner.
    let (four, third, third_pair) = config_plus_keyed(&cluster, &config, "config-4.json");
    let _third = join_and_add(&cluster, &four, third);
    let members = wait_for_members(&cluster, &four, |members| voters(members).len() == 4);
    assert_eq!(voters(&members), vec![0, 1, 2, 3]);
    let listed_key = members
        .iter()
        .find(|member| member["id"] == json!(third))
        .map(|member| member["public_key"].clone());
    assert_eq!(
        listed_key,
        Some(json!(keys::z85_encode(&third_pair.public))),
        "{members:?}"
    );
    cli_ok(&cluster, &four, "30s", &["put", "t", "after"]);

    // A member's key on the client port: stats and status, nothing else.
    let mut as_member = cluster.client_as(0, Some(&cluster.keys[1]));
    let status = request(
        &mut as_member,
        json!({"v": 2, "type": "status", "method": "GET"}),
    );
    assert_eq!(status["id"], json!(0), "{status}");
    let refused = request(
        &mut as_member,
        json!({"v": 2, "type": "message", "method": "GET", "topic": "t"}),
    );
    assert_eq!(refused["error"]["code"], json!("FORBIDDEN"), "{refused}");

    // Replace a follower by node 4 (its own key too).
    let follower = (0..3)
        .find(|node| Some(*node) != cluster.leader_now().map(|(leader, _)| leader))
        .expect("a follower among the originals");
    let (five, fourth, _) = config_plus_keyed(&cluster, &four, "config-5.json");
    let _fourth = spawn_joining(
        &cluster,
        &five,
        fourth,
        Some(&node_key_file(&cluster, fourth)),
    );
    cli_ok(
        &cluster,
        &five,
        "120s",
        &[
            "member",
            "replace",
            &follower.to_string(),
            &fourth.to_string(),
        ],
    );
    let members = wait_for_members(&cluster, &five, |members| members.len() == 4);
    let mut expected: Vec<u64> = (0..3u64).filter(|id| *id as usize != follower).collect();
    expected.extend([3, 4]);
    assert_eq!(voters(&members), expected);
    cluster.kill(follower);

    // Kill one more original: the one left and the two new nodes are three of four voters,
    // a majority only with both new nodes voting.
    let leader = cluster.leader_now().map(|(leader, _)| leader);
    let second = (0..3)
        .find(|node| *node != follower && Some(*node) != leader)
        .expect("two originals are left");
    cluster.kill(second);
    cli_ok(&cluster, &five, "60s", &["put", "t", "last"]);
    for expected in ["before", "after", "last"] {
        let get = cli_ok(&cluster, &five, "60s", &["get", "t"]);
        assert_eq!(get.stdout_text(), format!("{expected}\n"));
    }
}

#[test]
fn a_node_whose_key_was_not_added_is_refused_and_the_cluster_serves_on() {
    let cluster = Cluster::start_with_clients(3, &[], &[("alice", json!({"produce": ["t"]}))]);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let config = cluster.config_path.clone();
    cli_ok(&cluster, &config, "30s", &["topic", "create", "t"]);
    // The config says node 3 has one key; the process runs with another.
    let (four, third, _) = config_plus_keyed(&cluster, &config, "config-4.json");
    let stranger_file = cluster.dir.path().join("stranger.key");
    let stranger = keys::write_new_key_file(&stranger_file).expect("a key file");
    let stranger_z85 = keys::z85_encode(&stranger.public);
    // It knows the cluster id (the members would not tell its key): copied in beforehand.
    let data = cluster.dir.path().join(format!("node-{third}"));
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::copy(
        cluster.data_dir(0).join("cluster_id"),
        data.join("cluster_id"),
    )
    .expect("copy the cluster id");
    // Its own config names its key for node 3 (a node checks its key file against it).
    let mut own: Value =
        serde_json::from_str(&std::fs::read_to_string(&four).expect("read")).expect("JSON");
    own["addresses"][third]["public_key"] = json!(stranger_z85);
    let own_path = cluster.dir.path().join("config-stranger.json");
    std::fs::write(&own_path, own.to_string()).expect("write the stranger's config");
    let _stranger = spawn_joining(&cluster, &own_path, third, Some(&stranger_file));

    // The add of node 3 (with the config's key) cannot complete: its learner never hears
    // from the leader nor the leader from it. TIMEOUT, the add left in progress.
    let add = cli(
        &cluster,
        &four,
        "10s",
        &["member", "add", &third.to_string()],
    );
    add.assert_code(4, "member add of a node running with another key");
    assert!(
        wait_for_log_line(
            &cluster,
            &[0, 1, 2],
            &["refused", "peer handshake", &stranger_z85]
        ),
        "no member logged refusing the stranger's key"
    );
    // It is no voter; the cluster serves on; cancelling the add leaves the three.
    let members = wait_for_members(&cluster, &four, |members| members.len() == 4);
    assert_eq!(voters(&members), vec![0, 1, 2]);
    cli_ok(&cluster, &four, "30s", &["put", "t", "m"]);
    cli_ok(
        &cluster,
        &four,
        "30s",
        &["member", "remove", &third.to_string()],
    );
    let members = wait_for_members(&cluster, &four, |members| members.len() == 3);
    assert_eq!(voters(&members), vec![0, 1, 2]);
    let get = cli_ok(&cluster, &four, "30s", &["get", "t"]);
    assert_eq!(get.stdout_text(), "m\n");
    assert!(
        !log_text(&cluster, third).contains("became leader"),
        "the stranger must not lead"
    );
}

/// A DEALER on node `index`'s peer port with `keys`, as [`Cluster::peer_dealer`], that
/// returns once its CURVE handshake succeeded (None if not within 60 s). The monitor is
/// attached before the connect, so the handshake cannot be missed.
fn admitted_peer_dealer(
    cluster: &Cluster,
    context: &zmq::Context,
    index: usize,
    keys: &KeyPair,
) -> Option<zmq::Socket> {
    let dealer = context.socket(zmq::DEALER).expect("DEALER");
    dealer.set_linger(1000).expect("linger");
    dealer
        .set_curve_serverkey(&cluster.keys[index].public)
        .expect("server key");
    dealer
        .set_curve_publickey(&keys.public)
        .expect("public key");
    dealer
        .set_curve_secretkey(&keys.secret)
        .expect("secret key");
    let endpoint = "inproc://admitted-peer-dealer";
    dealer
        .monitor(endpoint, zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32)
        .expect("monitor");
    let monitor = context.socket(zmq::PAIR).expect("PAIR");
    monitor.connect(endpoint).expect("connect the monitor");
    monitor.set_rcvtimeo(60_000).expect("receive timeout");
    dealer
        .connect(&format!(
            "tcp://127.0.0.1:{}",
            cluster.ports[index].internal_port
        ))
        .expect("connect to the peer port");
    monitor.recv_multipart(0).ok().map(|_| dealer)
}

#[test]
fn a_removed_members_key_is_refused_and_its_open_connection_dropped() {
    let cluster = Cluster::start_keyed(3, &[]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let removed = (leader + 1) % 3;
    let target = (leader + 2) % 3;
    let cluster_id = ClusterConfig::load(&cluster.config_path)
        .expect("config")
        .cluster_id;
    let cluster_id = match std::fs::read_to_string(cluster.data_dir(target).join("cluster_id")) {
        Ok(text) => u64::from_str_radix(text.trim(), 16).expect("a hex cluster id"),
        Err(_) => cluster_id,
    };
    // A connection with the soon-removed node's key, opened while it is a member.
    let context = zmq::Context::new();
    let open = admitted_peer_dealer(&cluster, &context, target, &cluster.keys[removed])
        .expect("the member's key is admitted while it is a member");

    let config = cluster.config_path.clone();
    cli_ok(
        &cluster,
        &config,
        "60s",
        &["member", "remove", &removed.to_string()],
    );
    wait_for_members(&cluster, &config, |members| members.len() == 2);
    assert!(
        wait_for_log_line(
            &cluster,
            &[target],
            &[
                "peer keys",
                "no longer those of nodes",
                &format!("[{removed}]")
            ]
        ),
        "node {target} never dropped node {removed}'s key"
    );

    // Heartbeats "from" the removed node at a far higher term, on the open connection.
    let term = cluster
        .statuses()
        .into_iter()
        .flatten()
        .filter_map(|status| status["term"].as_u64())
        .max()
        .expect("a status");
    let forged = term + 1000;
    let message = Message {
        from: NodeId(removed as u64),
        to: NodeId(target as u64),
        term: Term(forged),
        body: MessageBody::Heartbeat {
            commit: LogIndex(0),
            read_round: 0,
        },
    };
    let frame = encode_peer_message(cluster_id, &message);
    let fresh = cluster.peer_dealer(&context, target, Some(&cluster.keys[removed]));
    let logged = |needles: &[&str]| {
        log_text(&cluster, target)
            .lines()
            .any(|line| needles.iter().all(|needle| line.contains(needle)))
    };
    let from_removed = format!("from node {removed}, no longer a member");
    let removed_z85 = keys::z85_encode(&cluster.keys[removed].public);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(logged(&[&from_removed]) && logged(&["refused", "peer handshake", &removed_z85])) {
        assert!(
            Instant::now() < deadline,
            "node {target} logged neither the dropped frames nor the refused handshake"
        );
        let _ = open.send(frame.as_slice(), zmq::DONTWAIT);
        let _ = fresh.send(frame.as_slice(), zmq::DONTWAIT);
        std::thread::sleep(Duration::from_millis(50));
    }
    for (index, status) in cluster.statuses().into_iter().enumerate() {
        if let Some(status) = status {
            let term = status["term"].as_u64().expect("a term");
            assert!(term < forged, "node {index} took the forged term: {status}");
        }
    }
    // The two left serve on.
    cli_ok(&cluster, &config, "30s", &["topic", "create", "t"]);
}

#[test]
fn a_keyed_cluster_without_clients_adds_a_node_whose_join_asks_on_the_plain_client_port() {
    let cluster = Cluster::start_keyed(3, &[]);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let config = cluster.config_path.clone();
    cli_ok(&cluster, &config, "30s", &["topic", "create", "t"]);
    cli_ok(&cluster, &config, "30s", &["put", "t", "before"]);
    let (four, third, _) = config_plus_keyed(&cluster, &config, "config-4.json");
    let _third = join_and_add(&cluster, &four, third);
    let members = wait_for_members(&cluster, &four, |members| voters(members).len() == 4);
    assert_eq!(voters(&members), vec![0, 1, 2, 3]);
    assert!(
        log_text(&cluster, third).contains("joining cluster"),
        "node {third} learned the cluster id from the members"
    );
    cli_ok(&cluster, &four, "30s", &["put", "t", "after"]);
    for expected in ["before", "after"] {
        let get = cli_ok(&cluster, &four, "30s", &["get", "t"]);
        assert_eq!(get.stdout_text(), format!("{expected}\n"));
    }
}

#[test]
fn a_keyed_cluster_restarted_after_an_add_takes_the_new_key_from_its_log() {
    let mut cluster = Cluster::start_keyed(3, &[]);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let config = cluster.config_path.clone();
    let (four, third, _) = config_plus_keyed(&cluster, &config, "config-4.json");
    let key_file = node_key_file(&cluster, third);
    let joining = join_and_add(&cluster, &four, third);
    // Everyone down, then up again: nodes 0-2 from the original config.json, which neither
    // lists node 3 nor its key; only their logs do.
    drop(joining);
    cluster.kill_all();
    for node in 0..3 {
        cluster.spawn(node);
    }
    let _restarted = spawn_joining(&cluster, &four, third, Some(&key_file));
    let members = wait_for_members(&cluster, &four, |members| voters(members).len() == 4);
    assert_eq!(voters(&members), vec![0, 1, 2, 3]);
    // Three of four must vote: with an original down, the majority needs node 3.
    let leader = cluster.leader_now().map(|(leader, _)| leader);
    let down: Vec<usize> = (0..3).filter(|node| Some(*node) != leader).collect();
    cluster.kill(down[0]);
    cli_ok(&cluster, &four, "60s", &["topic", "create", "after"]);
}

#[test]
fn a_keyed_join_started_before_its_add_catches_up_by_snapshot_and_votes() {
    // Small snapshots, so the leader no longer has the start of its log for the new node.
    let mut cluster = Cluster::start_keyed(
        3,
        &["--snapshot-entries", "20", "--snapshot-log-margin", "5"],
    );
    cluster.wait_for_leader(LEADER_DEADLINE);
    let config = cluster.config_path.clone();
    cli_ok(&cluster, &config, "30s", &["topic", "create", "t"]);
    let lines: String = (0..100).map(|number| format!("{number}\n")).collect();
    let batch = rrmq(
        &[
            "--config",
            config.to_str().expect("UTF-8 path"),
            "--timeout",
            "60s",
            "put",
            "t",
            "--batch",
        ],
        lines.as_bytes(),
        cluster.dir.path(),
    );
    batch.assert_code(0, "put --batch");
    for number in 0..30 {
        cli_ok(
            &cluster,
            &config,
            "30s",
            &["put", "t", &format!("single-{number}")],
        );
    }
    // Node 3 starts (and is refused by every member) before the add; without clients it
    // learns the cluster id on the plain client port at once.
    let (four, third, _) = config_plus_keyed(&cluster, &config, "config-4.json");
    let _third = spawn_joining(
        &cluster,
        &four,
        third,
        Some(&node_key_file(&cluster, third)),
    );
    assert!(
        wait_for_log_line(&cluster, &[0, 1, 2], &["refused", "peer handshake"]),
        "the members refuse node {third} before it is added"
    );
    cli_ok(
        &cluster,
        &four,
        "120s",
        &["member", "add", &third.to_string()],
    );
    assert!(
        wait_for_log_line(&cluster, &[third], &["installed snapshot"]),
        "node {third} caught up by snapshot"
    );
    // Four voters: with an original down, the majority needs node 3.
    let leader = cluster.leader_now().map(|(leader, _)| leader);
    let down = (0..3)
        .find(|node| Some(*node) != leader)
        .expect("a follower among the originals");
    cluster.kill(down);
    cli_ok(&cluster, &four, "60s", &["put", "t", "after"]);
    let first = cli_ok(&cluster, &four, "60s", &["get", "t"]);
    assert_eq!(first.stdout_text(), "0\n");
}

/// The keyed twin of `membership.rs`'s
/// `a_restarted_node_that_never_heard_of_its_leader_catches_up`: the restarted node knows
/// neither the leader's address nor its key; it learns both from a member it knows, over
/// the client port's CURVE (its own key, admitted for `stats`), and its ZAP handler then
/// admits the leader.
#[test]
fn a_restarted_keyed_node_that_never_heard_of_its_leader_learns_its_key_and_catches_up() {
    let mut cluster = Cluster::start_with_clients(3, &[], &[("alice", json!({"consume": ["t"]}))]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let config = cluster.config_path.clone();
    cli_ok(&cluster, &config, "30s", &["topic", "create", "t"]);
    cli_ok(&cluster, &config, "30s", &["put", "t", "before"]);
    let lagging = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.kill(lagging);
    let (four, fresh, fresh_pair) = config_plus_keyed(&cluster, &config, "config-4.json");
    let _fresh = join_and_add(&cluster, &four, fresh);
    cli_ok(
        &cluster,
        &four,
        "60s",
        &["member", "remove", &leader.to_string()],
    );
    cluster.kill(leader);
    let harness = cluster.client_key("harness").clone();
    let fresh_port = client_port(&four, fresh);
    let role = |status: Option<Value>| status.map(|status| status["role"].clone());
    let fresh_role = || {
        let mut client =
            common::Client::connect_with(fresh_port, Some((fresh_pair.public, harness.clone())));
        role(client.call_with_timeout(
            Wire::MsgPack,
            &json!({"type": "status", "method": "GET", "v": 2}),
            Duration::from_secs(1),
        ))
    };
    // The fresh node leads: while `other` does, it hands leadership over as it shuts down,
    // and comes back from the original config, which does not list the fresh node: its
    // ZAP handler refuses the fresh node's key until its log is read, and the fresh node's
    // DEALER, refused then, must connect afresh (`Dealer` in src/transport/peer.rs).
    let mut handovers = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "node {fresh} never led");
        if fresh_role() == Some(json!("Leader")) {
            break;
        }
        if role(cluster.status(other, Duration::from_secs(1))) == Some(json!("Leader")) {
            handovers += 1;
            assert!(handovers <= 5, "node {fresh} never led");
            cluster.terminate(other, Duration::from_secs(10));
            cluster.spawn(other);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cli_ok(&cluster, &four, "60s", &["put", "t", "after"]);
    let mut client =
        common::Client::connect_with(fresh_port, Some((fresh_pair.public, harness.clone())));
    let leader_status = client
        .call_with_timeout(
            Wire::MsgPack,
            &json!({"type": "status", "method": "GET", "v": 2}),
            Duration::from_secs(5),
        )
        .expect("the fresh leader answers");
    let commit = leader_status["commit_index"]
        .as_u64()
        .expect("commit_index");
    cluster.spawn(lagging);
    wait_for_applied(&cluster, lagging, commit);
}
