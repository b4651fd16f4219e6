//! Hostile input on the membership paths (PROTOCOL.md §12), with real nodes: a frame is
//! hostile until its sender is authenticated, and an unkeyed peer port authenticates
//! nobody.
//!
//! - A node started with `--join` trusts the first `stats` reply that carries a cluster id.
//!   A fake node listed in its config that answers garbage (not MessagePack, oversized,
//!   wrong types, nested past any sane depth, several frames) must be refused cleanly: the
//!   joining node keeps asking and takes the id of the real member that answers.
//! - Forged peer frames on an unkeyed peer port, claiming to come from a member that does
//!   not lead: heartbeats and appends in the leader's own term, appends carrying a
//!   membership that breaks its invariants (duplicate ids, no voter), a bare
//!   `InstallSnapshot` (the real one only ever arrives through the snapshot transfer),
//!   snapshot chunks announcing a forged membership, and random bytes. Every node must keep
//!   running, the membership must not change, and the cluster must keep committing.

mod common;
#[path = "common/members.rs"]
mod members;

use common::{Cluster, Wire, FAST_FLAGS, RRMQ_NODE};
use members::Extra;
use rrmq::raft::{
    Entry, EntryId, EntryPayload, LogIndex, Member, Membership, Message, MessageBody, NodeId,
    SnapshotMeta, Term,
};
use rrmq::transport::wire::{
    encode_peer_message, encode_transfer_frame, SnapshotChunk, TransferFrame,
};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// The garbage a fake member answers `stats` with, in turn.
fn garbage_replies() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let wrong_types = rmpv::Value::Map(vec![
        ("success".into(), true.into()),
        ("cluster_id".into(), "not a number".into()),
        ("id".into(), rmpv::Value::from(-5)),
        ("last_applied".into(), rmpv::Value::Array(vec![1.into()])),
        ("digest".into(), rmpv::Value::F64(0.5)),
    ]);
    let negative_id = rmpv::Value::Map(vec![
        ("success".into(), true.into()),
        ("cluster_id".into(), rmpv::Value::from(-1)),
    ]);
    let encode = |value: &rmpv::Value| {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).expect("encode");
        bytes
    };
    // A MessagePack bin header claiming 4 GiB, with a few bytes behind it.
    let mut lying_length = vec![0xc6, 0xff, 0xff, 0xff, 0xff];
    lying_length.extend_from_slice(b"short");
    vec![
        ("bytes that are not MessagePack", vec![vec![0xc1; 64]]),
        ("an empty frame", vec![Vec::new()]),
        ("wrong types", vec![encode(&wrong_types)]),
        ("a negative cluster id", vec![encode(&negative_id)]),
        ("a length that lies", vec![lying_length]),
        // 1,000,000 nested one-element arrays: a recursive decoder without a depth limit
        // overflows its stack.
        ("nested a million deep", vec![vec![0x91; 1_000_000]]),
        ("8 MiB of zeros", vec![vec![0; 8 << 20]]),
        ("three frames", vec![vec![0x80], vec![0x80], vec![0x80]]),
    ]
}

/// A ROUTER on `port` that answers every request with the next of [`garbage_replies`]
/// until `stop`; counts the requests in `asked`.
fn fake_member(port: u16, asked: &AtomicUsize, stop: &AtomicBool) {
    let replies = garbage_replies();
    answering_member(port, stop, || {
        let turn = asked.fetch_add(1, Ordering::Relaxed);
        replies[turn % replies.len()].1.clone()
    });
}

/// A ROUTER on `port` that answers every request, until `stop`, with the request's
/// envelope (identity, and the empty delimiter if any) followed by the frames of `answer`.
fn answering_member(port: u16, stop: &AtomicBool, mut answer: impl FnMut() -> Vec<Vec<u8>>) {
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER).expect("ROUTER");
    router.set_linger(0).expect("linger");
    router.set_rcvtimeo(100).expect("rcvtimeo");
    router
        .bind(&format!("tcp://127.0.0.1:{port}"))
        .expect("bind the fake member");
    while !stop.load(Ordering::Relaxed) {
        let Ok(frames) = router.recv_multipart(0) else {
            continue;
        };
        let envelope_len = frames
            .iter()
            .position(|frame| frame.is_empty())
            .map_or(1, |delimiter| delimiter + 1);
        let mut reply: Vec<Vec<u8>> = frames[..envelope_len.min(frames.len())].to_vec();
        reply.extend(answer());
        let _ = router.send_multipart(reply, zmq::DONTWAIT);
    }
}

/// `rrmq-node CONFIG 2 --join`, data in `DIR/node-join`, its log in `log_path`.
fn spawn_join(cluster: &Cluster, config: &Path, log_path: &Path) -> Extra {
    let log = std::fs::File::create(log_path).expect("log file");
    Extra(
        Command::new(RRMQ_NODE)
            .arg(config)
            .arg("2")
            .arg("--join")
            .arg("--data-dir")
            .arg(cluster.dir.path().join("node-join"))
            .args(FAST_FLAGS)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rrmq-node --join"),
    )
}

#[test]
fn a_joining_node_refuses_garbage_stats_from_a_fake_member_and_takes_the_real_id() {
    let cluster = Cluster::start(1);
    let real = cluster
        .stats(0, Duration::from_secs(10))
        .expect("the real member's stats");
    let real_id = real["cluster_id"].as_u64().expect("a cluster id");
    assert_ne!(real_id, 0);

    // The joining node's config: the fake member first, then the real one, then itself.
    let fake_port = free_port();
    let address =
        |port: u16| json!({"ip": "127.0.0.1", "port": port, "internal_port": free_port()});
    let config = json!({"addresses": [
        address(fake_port),
        {"ip": "127.0.0.1", "port": cluster.ports[0].port,
         "internal_port": cluster.ports[0].internal_port},
        address(free_port()),
    ]});
    let config_path = cluster.dir.path().join("config-join.json");
    std::fs::write(&config_path, config.to_string()).expect("write the config");
    let data_dir = cluster.dir.path().join("node-join");
    let log_path = cluster.dir.path().join("node-join.log");

    let asked = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| fake_member(fake_port, &asked, &stop));
        // The real member answers too: the joining node would take its id at once and
        // never see the garbage. So it is paused until the fake has answered every kind of
        // garbage twice.
        let pid = cluster.nodes.pid(0).expect("the real member runs");
        let signal = |signal| {
            // SAFETY: `kill` has no memory effects; the pid is our own child's.
            let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
            assert_eq!(result, 0, "signal {signal}");
        };
        signal(libc::SIGSTOP);
        let mut joining = spawn_join(&cluster, &config_path, &log_path);
        let kinds = garbage_replies().len();
        let deadline = Instant::now() + Duration::from_secs(90);
        while asked.load(Ordering::Relaxed) < 2 * kinds {
            if let Ok(Some(status)) = joining.0.try_wait() {
                signal(libc::SIGCONT);
                stop.store(true, Ordering::Relaxed);
                panic!(
                    "the joining node exited ({status}) on garbage from a fake member: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                signal(libc::SIGCONT);
                stop.store(true, Ordering::Relaxed);
                panic!(
                    "the fake member was asked only {} times",
                    asked.load(Ordering::Relaxed)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(libc::SIGCONT);
        // Now the real member answers: its id is taken, the fake's garbage never was.
        let id_file = data_dir.join("cluster_id");
        let deadline = Instant::now() + Duration::from_secs(60);
        let recorded = loop {
            if let Some(id) = std::fs::read_to_string(&id_file)
                .ok()
                .and_then(|text| u64::from_str_radix(text.trim(), 16).ok())
            {
                break id;
            }
            assert!(
                Instant::now() < deadline,
                "the joining node never recorded a cluster id: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            recorded, real_id,
            "the joining node took another cluster's id"
        );
        assert!(
            matches!(joining.0.try_wait(), Ok(None)),
            "the joining node exited"
        );
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(!log.contains("panicked"), "{log}");
    });
}

/// A member's `info` as the node layer writes it: `[ip, port, internal_port, key?]`.
fn info(port: u16) -> bytes::Bytes {
    bytes::Bytes::from(
        rmp_serde::to_vec(&("127.0.0.1", port, port, Option::<Vec<u8>>::None)).expect("encode"),
    )
}

fn member(id: u64, voter: bool) -> Member {
    Member {
        id: NodeId(id),
        voter,
        info: info(1),
    }
}

/// Memberships that break the invariants every real one keeps.
fn invalid_memberships() -> Vec<Membership> {
    vec![
        // Duplicate ids.
        Membership {
            members: vec![member(0, true), member(0, true), member(1, true)],
            retired: Vec::new(),
        },
        // Members but no voter.
        Membership {
            members: vec![member(0, false), member(1, false)],
            retired: Vec::new(),
        },
        // Not sorted.
        Membership {
            members: vec![member(2, true), member(0, true)],
            retired: Vec::new(),
        },
        // A member that is retired.
        Membership {
            members: vec![member(0, true), member(1, true)],
            retired: vec![NodeId(1)],
        },
    ]
}

#[test]
fn forged_membership_frames_on_an_unkeyed_peer_port_change_nothing() {
    let cluster = Cluster::start(3);
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(30));
    cluster
        .rrmq(&["topic", "create", "t"])
        .assert_code(0, "topic create");
    cluster.rrmq(&["put", "t", "m1"]).assert_code(0, "put");
    let stats = cluster
        .stats(leader, Duration::from_secs(10))
        .expect("stats");
    let cluster_id = stats["cluster_id"].as_u64().expect("a cluster id");
    let followers: Vec<usize> = (0..3).filter(|node| *node != leader).collect();
    let forger = followers[0];

    let context = zmq::Context::new();
    for target in 0..3 {
        let status = cluster
            .status(target, Duration::from_secs(10))
            .expect("status");
        let last = status["last_log_index"].as_u64().expect("last_log_index");
        let dealer = cluster.peer_dealer(&context, target, None);
        // Claims to come from a member that does not lead (or, sent to that member, from
        // the other follower), in the current term.
        let from = if target == forger {
            followers[1]
        } else {
            forger
        };
        let message = |body: MessageBody| {
            encode_peer_message(
                cluster_id,
                &Message {
                    from: NodeId(from as u64),
                    to: NodeId(target as u64),
                    term: Term(term),
                    body,
                },
            )
        };
        let mut frames = vec![message(MessageBody::Heartbeat {
            commit: LogIndex(last),
            read_round: 0,
        })];
        for membership in invalid_memberships().into_iter().chain([
            // Well formed, but a membership of the forger alone.
            Membership::from_voters([NodeId(from as u64)]),
        ]) {
            frames.push(message(MessageBody::AppendEntries {
                prev: EntryId::new(Term(term), LogIndex(last)),
                entries: vec![Entry {
                    term: Term(term),
                    index: LogIndex(last + 1),
                    payload: EntryPayload::Membership(membership.clone()),
                }],
                commit: LogIndex(last + 1),
            }));
            let snapshot = SnapshotMeta {
                last: EntryId::new(Term(term), LogIndex(last + 100)),
                membership: membership.clone(),
            };
            frames.push(message(MessageBody::InstallSnapshot {
                snapshot: snapshot.clone(),
            }));
            // Snapshot chunks, also claiming to come from the real leader.
            for sender in [from, leader] {
                let data = vec![0x5a; 64];
                frames.push(encode_transfer_frame(
                    cluster_id,
                    &TransferFrame::Chunk(SnapshotChunk {
                        from: NodeId(sender as u64),
                        to: NodeId(target as u64),
                        term: Term(term),
                        snapshot: snapshot.clone(),
                        transfer_id: 7,
                        offset: 0,
                        total_bytes: data.len() as u64,
                        file_crc: crc32c::crc32c(&data),
                        data: bytes::Bytes::from(data),
                    }),
                ));
            }
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for length in [0usize, 1, 3, 9, 40, 300, 5000] {
            let noise: Vec<u8> = (0..length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            frames.push(noise);
        }
        for frame in &frames {
            dealer
                .send(frame.as_slice(), 0)
                .expect("send a forged frame");
        }
    }

    // Every node keeps running and answering.
    let mut cluster = cluster;
    std::thread::sleep(Duration::from_millis(500));
    for node in 0..3 {
        assert!(
            cluster.is_alive(node),
            "node {node} died on forged frames: {}",
            cluster.log(node)
        );
        assert!(
            cluster.status(node, Duration::from_secs(10)).is_some(),
            "node {node} does not answer status"
        );
    }
    // The membership is the one it was, and the cluster commits.
    cluster
        .rrmq(&["put", "t", "m2"])
        .assert_code(0, "put after the forged frames");
    let members = cluster.rrmq(&["--json", "member", "list"]);
    members.assert_code(0, "member list");
    let members: Value = serde_json::from_str(&members.stdout_text()).expect("JSON");
    let listed: Vec<(u64, bool)> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|member| (member["id"].as_u64().expect("id"), member["voter"] == true))
        .collect();
    assert_eq!(listed, vec![(0, true), (1, true), (2, true)]);
    // Every node holds the same state at the same index (no forged entry applied).
    let applied = cluster.leader_applied(Duration::from_secs(30));
    let converged = cluster.wait_converged(applied, Duration::from_secs(60));
    assert_eq!(converged["success"], json!(true));
    for node in 0..3 {
        assert!(
            cluster.is_alive(node),
            "node {node} died: {}",
            cluster.log(node)
        );
        let reply = cluster.client(node).call(
            Wire::MsgPack,
            &json!({"v": 2, "type": "status", "method": "GET"}),
        );
        assert!(reply["term"].as_u64().is_some(), "{reply}");
    }
}

/// A ROUTER on `port` that answers every request until `stop` with a well-formed `stats` of
/// cluster `cluster_id`, whose `members` are `members` (as `member GET` lists them).
fn lying_member(port: u16, cluster_id: u64, members: &Value, stop: &AtomicBool) {
    let stats = json!({"success": true, "id": 1, "last_applied": 0, "digest": 0,
                       "topic_count": 0, "message_count": 0, "payload_bytes": 0,
                       "session_count": 0, "cluster_id": cluster_id, "members": members});
    let body = rmp_serde::to_vec_named(&stats).expect("encode");
    answering_member(port, stop, || vec![body.clone()]);
}

/// A node that knows no leader asks the nodes it knows for the members they act on
/// (`node::peer_finder`). A node of its config that lies there, claiming a voter nobody
/// added and another address for a real member, gets no further than a connection to the
/// invented node: the real member's address stands, the invented node never becomes a
/// member, and the asking node is added and catches up as usual.
#[test]
fn a_lying_answer_about_the_members_opens_a_connection_and_changes_no_membership() {
    let cluster = Cluster::start(1);
    cluster
        .rrmq(&["topic", "create", "t"])
        .assert_code(0, "topic create");
    let real = cluster
        .stats(0, Duration::from_secs(10))
        .expect("the real member's stats");
    let cluster_id = real["cluster_id"].as_u64().expect("a cluster id");
    // The joining node's config: the real member, the liar, itself. A `--join` node knows
    // no leader until it is added: it asks.
    let liar_port = free_port();
    let address =
        |port: u16| json!({"ip": "127.0.0.1", "port": port, "internal_port": free_port()});
    let joining_address = address(free_port());
    let config = json!({"addresses": [
        {"ip": "127.0.0.1", "port": cluster.ports[0].port,
         "internal_port": cluster.ports[0].internal_port},
        address(liar_port),
        joining_address,
    ]});
    let config_path = cluster.dir.path().join("config-join.json");
    std::fs::write(&config_path, config.to_string()).expect("write the config");
    let lies = json!([
        {"id": 0, "ip": "127.0.0.1", "port": free_port(), "internal_port": free_port(),
         "voter": true},
        {"id": 9, "ip": "127.0.0.1", "port": free_port(), "internal_port": free_port(),
         "voter": true},
    ]);
    let log_path = cluster.dir.path().join("node-join.log");
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| lying_member(liar_port, cluster_id, &lies, &stop));
        let joining = spawn_join(&cluster, &config_path, &log_path);
        let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !log_text().contains("name nodes [9]") {
            assert!(
                Instant::now() < deadline,
                "the joining node never took the invented node's address: {}",
                log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Added through the real member (a config without the liar): it catches up.
        let cli_config = json!({"addresses": [config["addresses"][0], address(free_port()),
                                              config["addresses"][2]]});
        let cli_path = cluster.dir.path().join("config-cli.json");
        std::fs::write(&cli_path, cli_config.to_string()).expect("write the config");
        let cli_text = cli_path.to_str().expect("UTF-8 path");
        let add = common::rrmq(
            &[
                "--config",
                cli_text,
                "--timeout",
                "90s",
                "member",
                "add",
                "2",
            ],
            b"",
            cluster.dir.path(),
        );
        if add.code != Some(0) {
            eprintln!("{}", log_text());
        }
        add.assert_code(0, "member add");
        stop.store(true, Ordering::Relaxed);
        let members = common::rrmq(
            &["--config", cli_text, "--json", "member", "list"],
            b"",
            cluster.dir.path(),
        );
        members.assert_code(0, "member list");
        let ids: Vec<u64> = members.json()["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|member| member["id"].as_u64())
            .collect();
        assert_eq!(ids, vec![0, 2], "{}", members.describe());
        // The joined node's own membership names the real member at its real address.
        let mut client = common::Client::connect(
            u16::try_from(joining_address["port"].as_u64().expect("a port")).expect("a port"),
        );
        let stats = client
            .call_with_timeout(
                Wire::MsgPack,
                &json!({"type": "stats", "method": "GET"}),
                Duration::from_secs(10),
            )
            .expect("the joined node's stats");
        let own: Vec<(u64, u64)> = stats["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|member| Some((member["id"].as_u64()?, member["port"].as_u64()?)))
            .collect();
        assert_eq!(
            own,
            vec![
                (0, u64::from(cluster.ports[0].port)),
                (2, joining_address["port"].as_u64().expect("a port"))
            ],
            "{stats}"
        );
        drop(joining);
        assert!(!log_text().contains("panicked"), "{}", log_text());
    });
}
