//! End-to-end: forged snapshot transfer frames, sent straight to a node's internal port by
//! a process that is not a member, write nothing to its data dir and do not disturb it.
//!
//! The frames are the library's own (`rrmq::transport::wire`), so they pass every envelope
//! check (version, cluster id, addresses): what refuses them is the snapshot receiver's rule
//! that it takes chunks only from the node it follows, in its current term, of a size under
//! the cap and the free disk.

mod common;

use common::{Cluster, Wire, LEADER_DEADLINE};
use rrmq::config::ClusterConfig;
use rrmq::raft::{EntryId, LogIndex, NodeId, SnapshotMeta, Term};
use rrmq::storage::snapshot_file::{received_path, snapshot_path, write_snapshot};
use rrmq::storage::FsyncPolicy;
use rrmq::transport::wire::{encode_transfer_frame, SnapshotChunk, TransferFrame};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIB: u64 = 1 << 40;
/// Bytes per forged chunk (the nodes' default chunk size).
const CHUNK_BYTES: usize = 256 * 1024;
/// Bytes of data each forged transfer sends: enough to see, were it written.
const FORGED_BYTES: usize = 16 << 20;
/// How much a node's data dir may grow while it is flooded with forged chunks and serves
/// nothing else: less than one chunk (the hard state may be rewritten, nothing more).
const GROWTH_BYTES_MAX: u64 = (CHUNK_BYTES / 2) as u64;

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => found.extend(files_under(&path)),
            Ok(meta) => found.push((path, meta.len())),
            Err(_) => {}
        }
    }
    found
}

fn bytes_under(dir: &Path) -> u64 {
    files_under(dir).iter().map(|(_, len)| len).sum()
}

/// One forged transfer: what it claims.
struct Forged {
    from: u64,
    to: u64,
    term: u64,
    total_bytes: u64,
    transfer_id: u64,
}

/// Sends `FORGED_BYTES` of chunks of one forged transfer, in order, paced so that a receiver
/// taking them would write them all (its queue holds a few chunks).
fn send_forged(socket: &zmq::Socket, cluster_id: u64, forged: &Forged) {
    let data = bytes::Bytes::from(vec![0x5au8; CHUNK_BYTES]);
    for (number, offset) in (0..FORGED_BYTES).step_by(CHUNK_BYTES).enumerate() {
        let chunk = SnapshotChunk {
            from: NodeId(forged.from),
            to: NodeId(forged.to),
            term: Term(forged.term),
            snapshot: SnapshotMeta::at(EntryId::new(Term(forged.term), LogIndex(1_000_000))),
            transfer_id: forged.transfer_id,
            offset: offset as u64,
            data: data.clone(),
            total_bytes: forged.total_bytes,
            file_crc: 0x1234_5678,
        };
        let frame = encode_transfer_frame(cluster_id, &TransferFrame::Chunk(chunk));
        socket.send(frame, 0).expect("send");
        if number % 4 == 3 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a whole, well-formed snapshot file (right length, right checksum) as one forged
/// transfer; the file's own length is announced, not `forged.total_bytes`.
fn send_forged_complete_snapshot(
    socket: &zmq::Socket,
    cluster_id: u64,
    forged: &Forged,
    snapshot: SnapshotMeta,
) {
    let source = tempfile::tempdir().expect("dir");
    let written = write_snapshot(
        source.path(),
        snapshot.clone(),
        FsyncPolicy::Never,
        |writer| writer.write_all(&[0x42; 10_000]),
    )
    .expect("write a snapshot file");
    let file = std::fs::read(&written.path).expect("read it back");
    for (number, piece) in file.chunks(4096).enumerate() {
        let chunk = SnapshotChunk {
            from: NodeId(forged.from),
            to: NodeId(forged.to),
            term: Term(forged.term),
            snapshot: snapshot.clone(),
            transfer_id: forged.transfer_id,
            offset: (number * 4096) as u64,
            data: bytes::Bytes::copy_from_slice(piece),
            total_bytes: written.len_bytes,
            file_crc: written.crc,
        };
        let frame = encode_transfer_frame(cluster_id, &TransferFrame::Chunk(chunk));
        socket.send(frame, 0).expect("send");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until node `index`'s log has `count` lines containing every one of `parts` (or the
/// deadline passes); returns whether it did.
fn wait_for_log_lines(cluster: &Cluster, index: usize, parts: &[&str], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let log = cluster.log(index);
        if log
            .lines()
            .any(|line| parts.iter().all(|part| line.contains(part)))
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A topic PUT, a message PUT and a GET of it through node `index` all succeed.
fn assert_serves(cluster: &Cluster, index: usize, topic: &str) {
    let mut client = cluster.client(index);
    let put = |client: &mut common::Client, request| {
        let reply = client.call(Wire::MsgPack, &request);
        assert_eq!(reply["success"], true, "{request} -> {reply}");
        reply
    };
    put(
        &mut client,
        json!({"type": "topic", "method": "PUT", "topic": topic, "v": 2}),
    );
    put(
        &mut client,
        json!({"type": "message", "method": "PUT", "topic": topic, "message": "real", "v": 2}),
    );
    let got = put(
        &mut client,
        json!({"type": "message", "method": "GET", "topic": topic, "v": 2}),
    );
    assert_eq!(got["message"], "real", "{got}");
}

/// Asserts node `index`'s data dir grew by at most `GROWTH_BYTES_MAX` since `before` and
/// holds no partial or received snapshot file.
fn assert_nothing_written(cluster: &Cluster, index: usize, before: u64, what: &str) {
    let dir = cluster.data_dir(index);
    let after = bytes_under(&dir);
    assert!(
        after <= before + GROWTH_BYTES_MAX,
        "{what}: node {index}'s data dir grew from {before} to {after} bytes: {:?}",
        files_under(&dir)
    );
    let leftovers: Vec<_> = files_under(&dir)
        .into_iter()
        .filter(|(path, _)| {
            let name = path.to_string_lossy();
            name.ends_with(".partial") || name.ends_with(".received")
        })
        .collect();
    assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
}

#[test]
fn forged_snapshot_chunks_are_refused_write_nothing_and_the_cluster_keeps_serving() {
    let cluster = Cluster::start(3);
    let (leader, term) = cluster.wait_for_leader(LEADER_DEADLINE);
    let cluster_id = ClusterConfig::load(&cluster.config_path)
        .expect("the test's config")
        .cluster_id;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let context = zmq::Context::new();
    let to_follower = cluster.peer_dealer(&context, follower, None);
    let to_leader = cluster.peer_dealer(&context, leader, None);
    let before: Vec<u64> = (0..3)
        .map(|index| bytes_under(&cluster.data_dir(index)))
        .collect();

    // One forged transfer after the other, each announcing 1 TiB, each waited for in the
    // receiving node's log (a refusal line names the last refusal; one line a second).
    // (b) From the real leader's id in the current term: refused for its size.
    // (a) From a node that does not lead; from the leader's id in a term ahead and a term
    //     behind; and to the leader itself, which follows nobody.
    let phases = [
        (
            leader,
            follower,
            term,
            "bytes a snapshot may have".to_string(),
        ),
        (
            other,
            follower,
            term,
            format!("this node follows node {leader} in term {term}"),
        ),
        (
            leader,
            follower,
            term + 1,
            format!("not following anyone in term {} yet", term + 1),
        ),
        (
            leader,
            follower,
            term - 1,
            format!("term {} is behind this node's term {term}", term - 1),
        ),
        (
            follower,
            leader,
            term,
            format!("this node follows node {leader} in term {term}"),
        ),
    ];
    for (number, (from, to, claimed_term, reason)) in phases.into_iter().enumerate() {
        let socket = if to == leader {
            &to_leader
        } else {
            &to_follower
        };
        send_forged(
            socket,
            cluster_id,
            &Forged {
                from: from as u64,
                to: to as u64,
                term: claimed_term,
                total_bytes: TIB,
                transfer_id: 100 + number as u64,
            },
        );
        let claim = format!("from node {from} (as claimed), term {claimed_term}");
        let parts = [
            "snapshot chunks refused",
            &claim,
            "1099511627776 bytes",
            &reason,
        ];
        let seen = wait_for_log_lines(&cluster, to, &parts, Duration::from_secs(10));
        // Checked after each transfer: the next one could replace (delete) its file.
        assert_nothing_written(&cluster, to, before[to], &claim);
        assert!(seen, "node {to} logged no refusal {parts:?}");
    }
    // (c) A complete, well-formed snapshot file (right size and checksum) from a node that
    // does not lead.
    let forged_snapshot = SnapshotMeta::at(EntryId::new(Term(term), LogIndex(5_000)));
    send_forged_complete_snapshot(
        &to_follower,
        cluster_id,
        &Forged {
            from: other as u64,
            to: follower as u64,
            term,
            total_bytes: 0,
            transfer_id: 300,
        },
        forged_snapshot.clone(),
    );
    let claim = format!(
        "from node {other} (as claimed), term {term}, snapshot {}",
        forged_snapshot.last
    );
    let parts = ["snapshot chunks refused", &claim];
    let seen = wait_for_log_lines(&cluster, follower, &parts, Duration::from_secs(10));
    // Stragglers in the receivers' queues.
    std::thread::sleep(Duration::from_millis(500));
    for (index, before) in before.iter().enumerate() {
        assert_nothing_written(&cluster, index, *before, "in the end");
    }
    for path in [
        snapshot_path(&cluster.data_dir(follower), &forged_snapshot),
        received_path(&cluster.data_dir(follower), &forged_snapshot),
    ] {
        assert!(!path.exists(), "the forged snapshot reached {path:?}");
    }
    assert!(seen, "node {follower} logged no refusal {parts:?}");

    // Every node keeps serving; the forged terms were not adopted.
    let (leader_after, term_after) = cluster.wait_for_leader(LEADER_DEADLINE);
    assert_serves(&cluster, leader_after, "after-forgery");
    for index in 0..3 {
        let status = cluster
            .status(index, Duration::from_secs(5))
            .expect("status");
        assert!(
            status["term"].as_u64().expect("term") <= term_after,
            "node {index}: {status}"
        );
    }
    if term_after == term {
        assert_eq!(
            leader_after, leader,
            "a leader change without a term change"
        );
    }
}
