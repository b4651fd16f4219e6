//! rrmq: a distributed message queue whose nodes agree on one state with Raft.
//!
//! Module map (see `../shared/STYLE.md` for the reasoning behind the split):
//!
//! - [`config`]: `config.json` and command-line flags, validated into one `NodeConfig`.
//! - [`raft`]: the consensus core. No sockets, files, clocks, threads or global RNG:
//!   inputs in (ticks, peer messages, proposals), a [`raft::Ready`] out.
//! - [`storage`]: where the core's log and hard state become durable (`LogStore`).
//! - [`queue`]: the replicated state machine: topics, FIFO queues, client sessions.
//! - [`protocol`]: the client wire format (MessagePack or JSON) and its limits.
//! - [`transport`]: the ZeroMQ threads (client ROUTER, peer ROUTER/DEALERs) and the peer codec.
//! - [`node`]: the runtime that wires threads and channels around the single-threaded core.
//! - [`client`]: a blocking client that finds the leader and retries safely.
//! - [`cli`]: the `rrmq` command (topic, put, get, status, cluster, bench).
//!
//! How a request flows: the client thread decodes a body and hands a `Request` to the node
//! loop over a crossbeam channel; the loop proposes it to the core, sends the entry to the
//! followers on its own DEALERs and hands it to the WAL thread to fsync; once the entry is
//! persisted on a majority and committed, the loop applies it to the queue and sends the reply
//! back to the client thread, ringing an inproc doorbell so the thread wakes without polling.

pub mod cli;
pub mod client;
pub mod config;
pub mod node;
pub mod protocol;
pub mod queue;
pub mod raft;
pub mod storage;
pub mod transport;
