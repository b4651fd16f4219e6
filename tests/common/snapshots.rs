//! Helpers for the snapshot tests (`tests/snapshot_*.rs`): a pipelined writer that keeps
//! many requests in flight (compaction needs thousands of entries, and one at a time is
//! slow), state comparison through the `stats` operation, and data dir inspection.
//!
//! Included by path (`#[path = "common/snapshots.rs"] mod snapshots;`) next to `mod common;`.
#![allow(dead_code)]

use crate::common::{decode, encode, Cluster, Wire, LEADER_DEADLINE};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Flags that make snapshots frequent and WAL segments small, so a test of a few thousand
/// entries sees many snapshots and segment deletions.
pub const SMALL_SNAPSHOT_FLAGS: &[&str] = &[
    "--snapshot-entries",
    "300",
    "--snapshot-log-margin",
    "20",
    "--wal-segment-bytes",
    "16384",
];

pub fn put_topic(topic: &str) -> Value {
    json!({"type": "topic", "method": "PUT", "topic": topic, "v": 2})
}

pub fn put_message(topic: &str, message: &str) -> Value {
    json!({"type": "message", "method": "PUT", "topic": topic, "message": message, "v": 2})
}

pub fn get_message(topic: &str) -> Value {
    json!({"type": "message", "method": "GET", "topic": topic, "v": 2})
}

/// Adds a client_id/seq pair, so the requests open and use sessions.
pub fn keyed(mut request: Value, client_id: &str, seq: u64) -> Value {
    request["client_id"] = json!(client_id);
    request["seq"] = json!(seq);
    request
}

/// Sends `requests` to node `index` with up to `in_flight` outstanding, in order (one
/// DEALER keeps them ordered), and returns the replies in request order. Panics if a reply
/// is missing after `REPLY_DEADLINE`-ish silence.
pub fn pipeline(
    cluster: &Cluster,
    index: usize,
    requests: &[Value],
    in_flight: usize,
) -> Vec<Value> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).expect("socket");
    socket.set_linger(0).expect("linger");
    socket
        .connect(&format!("tcp://127.0.0.1:{}", cluster.ports[index].port))
        .expect("connect");
    let mut replies: Vec<Option<Value>> = vec![None; requests.len()];
    let mut sent = 0;
    let mut received = 0;
    while received < requests.len() {
        while sent < requests.len() && sent - received < in_flight {
            // A frame carrying the request's position, echoed back in the envelope.
            let tag = (sent as u64).to_le_bytes();
            let body = encode(Wire::MsgPack, &requests[sent]);
            socket
                .send_multipart([&tag[..], b"", &body], 0)
                .expect("send");
            sent += 1;
        }
        assert!(
            socket.poll(zmq::POLLIN, 20_000).expect("poll") > 0,
            "no reply within 20 s ({received} of {} answered)",
            requests.len()
        );
        let frames = socket.recv_multipart(0).expect("recv");
        let [tag, _empty, body] = frames.as_slice() else {
            panic!("unexpected reply frames {frames:?}");
        };
        let position = u64::from_le_bytes(tag.as_slice().try_into().expect("tag")) as usize;
        replies[position] = Some(decode(Wire::MsgPack, body));
        received += 1;
    }
    replies
        .into_iter()
        .map(|reply| reply.expect("every reply"))
        .collect()
}

/// Sends `requests` to the current leader, asserting each succeeds. Retries the whole batch
/// elsewhere only if the first reply says NOT_LEADER (nothing was applied then).
pub fn write_all(cluster: &Cluster, requests: &[Value]) {
    let deadline = Instant::now() + LEADER_DEADLINE;
    for batch in requests.chunks(500) {
        loop {
            let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
            let replies = pipeline(cluster, leader, batch, 64);
            if replies[0]["error"]["code"] == "NOT_LEADER" && Instant::now() < deadline {
                continue;
            }
            for (position, reply) in replies.iter().enumerate() {
                assert_eq!(
                    reply["success"],
                    json!(true),
                    "request {} ({}) failed: {reply}",
                    position,
                    batch[position]
                );
            }
            break;
        }
    }
}

/// `count` messages of about `bytes` bytes for `topic`, numbered from `first`.
pub fn puts(topic: &str, first: usize, count: usize, bytes: usize) -> Vec<Value> {
    (first..first + count)
        .map(|number| {
            let mut message = format!("{topic}-{number}-");
            while message.len() < bytes {
                message.push('x');
            }
            put_message(topic, &message)
        })
        .collect()
}

/// The node's `stats` reply (`last_applied`, `digest`, counts), or None if it did not answer.
pub fn stats(cluster: &Cluster, index: usize) -> Option<Value> {
    let mut client = cluster.client(index);
    client.call_with_timeout(
        Wire::MsgPack,
        &json!({"type": "stats", "method": "GET"}),
        Duration::from_secs(2),
    )
}

/// Polls until every node in `nodes` reports the same `last_applied` and `digest`, and
/// returns that stats reply. Panics after `within`, showing what each node reported.
pub fn wait_converged(cluster: &Cluster, nodes: &[usize], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let all: Vec<Option<Value>> = nodes.iter().map(|index| stats(cluster, *index)).collect();
        if let Some(Some(first)) = all.first() {
            let same = all.iter().all(|other| {
                other.as_ref().is_some_and(|other| {
                    other["last_applied"] == first["last_applied"]
                        && other["digest"] == first["digest"]
                })
            });
            if same {
                return first.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "nodes {nodes:?} did not converge within {within:?}: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Files in `dir` whose names end with `suffix`, sorted.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.ends_with(suffix))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The index a snapshot file name says it covers.
pub fn snapshot_index(path: &Path) -> u64 {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a name");
    name.strip_prefix("snapshot-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|index| index.parse().ok())
        .unwrap_or_else(|| panic!("not a snapshot file name: {name}"))
}

/// The sequence number of the oldest WAL segment in `dir`.
pub fn oldest_segment(dir: &Path) -> u64 {
    let segments = files_ending(dir, ".wal");
    let first = segments.first().expect("a segment");
    let name = first
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a name");
    name.trim_start_matches("segment-")
        .trim_end_matches(".wal")
        .parse()
        .expect("a segment number")
}

/// Bytes of all files in `dir` (not recursive: a data dir is flat).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Resident memory of a process, from /proc, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Polls until `path`'s log contains `needle`; false if `within` passes first.
pub fn wait_for_log(cluster: &Cluster, index: usize, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(cluster.log_path(index)).unwrap_or_default();
        if text.contains(needle) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
