//! The CPU cost of each step a message PUT takes through a 3-node cluster, measured one
//! step at a time in one process: time per call and heap allocations per call.
//!
//! Why: `rrmq bench` measures the whole path, where thread hand-offs, fsyncs and the
//! machine's other work dominate; this isolates the encoding, copying and allocation work,
//! so a change to one step shows up here undiluted. The steps, in the order a PUT meets them:
//!
//! 1. the client thread decodes the request (`protocol::decode_request`);
//! 2. the node loop re-encodes it as the log entry's command (`LoggedCommand::encode`);
//! 3. the leader encodes one AppendEntries per follower (`encode_peer_message`), and each
//!    follower decodes one (`decode_peer_message`);
//! 4. every node writes the entry to its WAL (`Wal::append` + `sync`, fsync off here: the
//!    fsync is a device cost, measured by `rrmq bench --matrix`'s header);
//! 5. every node applies it (`Queue::apply`, which decodes the command again);
//! 6. the client thread encodes the reply (`protocol::encode_reply`).
//!
//! Then what a queued 100-byte message keeps in memory: its entry in the Raft log (kept in
//! memory, and never compacted until snapshots land) and its place in the queue.
//!
//! Run: `cargo bench --bench hot_path` (RRMQ_BENCH_ITERATIONS=N to change the count).
//! A plain `main` (no criterion): the numbers are for comparing before and after a change on
//! the same machine, not for statistics.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rrmq::protocol::{
    decode_request, encode_reply, encode_request, Encoding, Limits, Operation, Outcome, Payload,
    Reply, Request, SessionKey,
};
use rrmq::queue::{Command, LoggedCommand, Queue, QueueConfig};
use rrmq::raft::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, Message, MessageBody, NodeId, Term,
};
use rrmq::storage::{FsyncPolicy, LogStore, Wal, WalOptions};
use rrmq::transport::wire::{decode_peer_message, encode_peer_message, PeerFilter};

/// Counts every allocation, so each step can report how many it makes.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated and not yet freed (requested sizes, without the allocator's overhead).
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        System.dealloc(pointer, layout)
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        System.realloc(pointer, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const MESSAGE_BYTES: usize = 100;
const CLUSTER_ID: u64 = 0x5eed;

/// Runs `step` `iterations` times and prints one table row.
fn measure(name: &str, iterations: u64, mut step: impl FnMut(u64)) {
    for warmup in 0..iterations.min(1000) {
        step(warmup);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let bytes = ALLOCATED_BYTES.load(Ordering::Relaxed);
    let started = Instant::now();
    for iteration in 0..iterations {
        step(iteration);
    }
    let elapsed = started.elapsed();
    let per = |total: u64| total as f64 / iterations as f64;
    println!(
        "| {name} | {:.2} | {:.1} | {:.0} |",
        elapsed.as_secs_f64() * 1e6 / iterations as f64,
        per(ALLOCATIONS.load(Ordering::Relaxed) - allocations),
        per(ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes),
    );
}

/// The session key of the `call`th PUT overall, 64 clients taking turns: each client's
/// `seq` starts at 1 and grows by one, as the queue's sessions require.
fn session(call: u64) -> SessionKey {
    SessionKey {
        client_id: format!("bench-client-{}", call % 64),
        seq: call / 64 + 1,
    }
}

fn put_request(call: u64) -> Request {
    Request {
        version: 2,
        session: Some(session(call)),
        operation: Operation::Put {
            topic: "bench".to_string(),
            message: Payload::Binary(vec![b'x'; MESSAGE_BYTES]),
        },
    }
}

fn logged_put(call: u64) -> LoggedCommand {
    LoggedCommand {
        session: Some(session(call)),
        command: Command::Put {
            topic: "bench".to_string(),
            message: Payload::Binary(vec![b'x'; MESSAGE_BYTES]),
        },
    }
}

fn entry(index: u64) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Command(logged_put(index).encode()),
    }
}

fn append_entries(first_index: u64, count: u64) -> Message {
    Message {
        from: NodeId(0),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::AppendEntries {
            prev: EntryId::new(Term(1), LogIndex(first_index - 1)),
            entries: (first_index..first_index + count).map(entry).collect(),
            commit: LogIndex(first_index - 1),
        },
    }
}

fn main() {
    let iterations: u64 = std::env::var("RRMQ_BENCH_ITERATIONS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20_000);
    println!("{iterations} iterations, {MESSAGE_BYTES}-byte binary messages\n");
    println!("| step | µs per call | allocations per call | bytes allocated per call |");
    println!("|---|--:|--:|--:|");

    let limits = Limits::default();
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|seq| encode_request(&put_request(seq), Encoding::MsgPack))
        .collect();
    measure("1. decode_request (client thread)", iterations, |i| {
        black_box(decode_request(&bodies[(i % 64) as usize], &limits).is_ok());
    });

    let commands: Vec<LoggedCommand> = (0..64).map(logged_put).collect();
    measure("2. LoggedCommand::encode (node loop)", iterations, |i| {
        black_box(commands[(i % 64) as usize].encode());
    });

    let one = append_entries(2, 1);
    measure(
        "3a. encode_peer_message, AppendEntries of 1 (x2 per entry on the leader)",
        iterations,
        |_| {
            black_box(encode_peer_message(CLUSTER_ID, &one));
        },
    );
    let sixteen = append_entries(2, 16);
    measure(
        "3b. encode_peer_message, AppendEntries of 16 (per 16 entries)",
        iterations / 16,
        |_| {
            black_box(encode_peer_message(CLUSTER_ID, &sixteen));
        },
    );
    let filter = PeerFilter {
        cluster_id: CLUSTER_ID,
        me: NodeId(1),
        node_count: 3,
    };
    let one_frame = encode_peer_message(CLUSTER_ID, &one);
    measure(
        "3c. decode_peer_message, AppendEntries of 1 (follower)",
        iterations,
        |_| {
            black_box(decode_peer_message(&one_frame, &filter).is_ok());
        },
    );

    let dir = std::env::temp_dir().join(format!("rrmq-hot-path-{}", std::process::id()));
    match Wal::open(
        &dir,
        WalOptions {
            segment_bytes_max: 1 << 30,
            fsync: FsyncPolicy::Never,
        },
    ) {
        Ok((mut wal, _)) => {
            let hard_state = HardState {
                term: Term(1),
                vote: Some(NodeId(0)),
                commit: LogIndex(0),
            };
            let ready = wal
                .set_hard_state(&hard_state)
                .and_then(|()| wal.sync())
                .is_ok();
            if ready {
                let mut next = 1;
                let prepared: Vec<Entry> = (1..=64).map(entry).collect();
                measure(
                    "4. Wal append + sync of 1 entry (fsync off: the write syscall only)",
                    iterations,
                    |i| {
                        let mut batch = prepared[(i % 64) as usize].clone();
                        batch.index = LogIndex(next);
                        next += 1;
                        black_box(wal.append(&[batch]).and_then(|()| wal.sync()).is_ok());
                    },
                );
            }
        }
        Err(error) => println!("| 4. Wal append + sync | skipped: {error} | | |"),
    }
    let _ = std::fs::remove_dir_all(&dir);

    let mut queue = Queue::new(QueueConfig::default());
    let create = LoggedCommand {
        session: None,
        command: Command::CreateTopic {
            topic: "bench".to_string(),
        },
    }
    .encode();
    let _ = queue.apply(LogIndex(1), &create);
    let encoded: Vec<_> = (0..iterations + 1000)
        .map(|call| logged_put(call).encode())
        .collect();
    let mut index = 1;
    measure(
        "5. Queue::apply of a PUT (decodes the command again)",
        iterations,
        |_| {
            index += 1;
            let outcome = queue.apply(LogIndex(index), &encoded[(index - 2) as usize]);
            assert_eq!(outcome, Outcome::Done, "a PUT is applied, not refused");
        },
    );

    let reply = Reply::Outcome {
        outcome: Outcome::Done,
        leader: None,
    };
    measure("6. encode_reply (client thread)", iterations, |_| {
        black_box(encode_reply(&reply, 2, Encoding::MsgPack));
    });

    memory_per_message(iterations.max(10_000));
}

/// Live heap bytes per queued message: the leader's log entry (the command as the node loop
/// encodes it), a follower's (decoded from an AppendEntries), and the queue's copy.
fn memory_per_message(count: u64) {
    use std::collections::VecDeque;
    println!("\n{count} messages of {MESSAGE_BYTES} bytes kept:\n");
    println!("| what is kept | live heap bytes per message |");
    println!("|---|--:|");
    let live = || LIVE_BYTES.load(Ordering::Relaxed);
    let per_message = |before: u64| (live() - before) as f64 / count as f64;

    let command = rmp_serde::to_vec(&logged_put(1)).expect("a command encodes");
    println!(
        "| one command: {} bytes encoded, in a Vec of capacity {} | |",
        command.len(),
        command.capacity()
    );
    println!(
        "| size_of::<Entry>() = {} bytes (inline in the log's VecDeque) | |",
        std::mem::size_of::<Entry>()
    );

    let before = live();
    let leader_log: VecDeque<Entry> = (1..=count).map(entry).collect();
    println!(
        "| leader's Raft log entry (LoggedCommand::encode) | {:.0} |",
        per_message(before)
    );
    drop(leader_log);

    let frames: Vec<Vec<u8>> = (0..count / 16)
        .map(|batch| encode_peer_message(CLUSTER_ID, &append_entries(2 + batch * 16, 16)))
        .collect();
    let filter = PeerFilter {
        cluster_id: CLUSTER_ID,
        me: NodeId(1),
        node_count: 3,
    };
    let before = live();
    let mut follower_log: VecDeque<Entry> = VecDeque::new();
    for frame in &frames {
        if let Ok(Message {
            body: MessageBody::AppendEntries { entries, .. },
            ..
        }) = decode_peer_message(frame, &filter)
        {
            follower_log.extend(entries);
        }
    }
    let kept = follower_log.len().max(1) as f64;
    println!(
        "| follower's Raft log entry (decoded from AppendEntries of 16) | {:.0} |",
        (live() - before) as f64 / kept
    );
    drop(follower_log);
    drop(frames);

    let mut queue = Queue::new(QueueConfig::default());
    let create = LoggedCommand {
        session: None,
        command: Command::CreateTopic {
            topic: "bench".to_string(),
        },
    }
    .encode();
    let _ = queue.apply(LogIndex(1), &create);
    let commands: Vec<_> = (0..count).map(|call| logged_put(call).encode()).collect();
    let before = live();
    let mut refused = 0;
    for (offset, command) in commands.iter().enumerate() {
        if queue.apply(LogIndex(2 + offset as u64), command) != Outcome::Done {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "every PUT is applied, none refused");
    println!(
        "| queue (64 client sessions, their last replies included) | {:.0} |",
        per_message(before)
    );
}
