//! rrmq: a distributed message queue whose nodes agree on one state with Raft.
//!
//! Module map, lowest layer first. Each layer imports only from the layers below it (the
//! rule is written down in [`raft`]'s docs); within a module, imports go one way too.
//!
//! ```text
//! raft  ->  storage, queue, protocol  ->  config  ->  metrics  ->  transport  ->  client  ->  node, cli  ->  bin/
//! ```
//!
//! - [`raft`]: the consensus core. No sockets, files, clocks, threads or global RNG:
//!   inputs in (ticks, peer messages, proposals), a [`raft::Ready`] out.
//! - [`storage`]: where the core's log and hard state become durable (`LogStore`: the WAL,
//!   and `MemStore`, which the simulator runs on), and snapshot files.
//! - [`queue`]: the replicated state machine: topics, FIFO queues, client sessions.
//! - [`protocol`]: the client wire format (MessagePack or JSON) and its limits.
//! - [`config`]: `config.json` and command-line flags, validated into one `NodeConfig`.
//! - [`metrics`]: the metrics registry, readiness and the HTTP endpoint on `metrics_port`
//!   (`/metrics`, `/healthz`, `/readyz`); the threads below and above update it.
//! - [`transport`]: the ZeroMQ threads (client ROUTER, peer ROUTER), the DEALER sets, the
//!   one peer wire format (`transport::wire`), snapshot streaming and socket monitors
//!   (`transport::monitor`: connection drops and refused handshakes as events;
//!   `transport::watch`: the threads that report a peer's dropped connection to the node
//!   loop, for failover without waiting out the election timeout, and log refused
//!   handshakes).
//! - [`client`]: a blocking client that finds the leader and retries safely; its retry
//!   rules are one sans-I/O state machine (`client::call`) that the benchmark drives too.
//! - [`node`]: the runtime around the single-threaded core: the loop (dispatch, `Ready`,
//!   apply), the persistence pipeline it shares with the simulator, the WAL thread,
//!   snapshots, status.
//! - [`cli`]: the `rrmq` command (topic, put, get, status, cluster, bench) and the one
//!   local-cluster launcher (`cli::launcher`) that `rrmq cluster`, the benchmark and the
//!   tests start nodes with.
//!
//! How a PUT flows: the client thread decodes a body and hands a `Request` to the node
//! loop over a crossbeam channel; the loop proposes it to the core, sends the entry to the
//! followers on its own DEALERs and hands it to the WAL thread to fsync; once the entry is
//! persisted on a majority and committed, the loop applies it to the queue and sends the reply
//! back to the client thread, ringing a doorbell (an eventfd) so the thread wakes without polling.

pub mod cli;
pub mod client;
pub mod config;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod queue;
pub mod raft;
pub mod storage;
pub mod transport;
