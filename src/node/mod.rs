//! The runtime of one node: it opens storage, binds the sockets, starts the threads, and runs
//! the single loop that owns the Raft core, the log store and the queue.
//!
//! Threads and what they own:
//!
//! ```text
//!   client thread ──ClientRequest──┐                     ┌──Reply──> client thread (ROUTER)
//!   peer receiver ──Message────────┤ one bounded channel │
//!   timer ─────────Tick────────────┼────> node loop ─────┼──Vec<Message>──> peer sender
//!   signals ───────Shutdown────────┘ (Core, LogStore,    │                  (DEALERs)
//!                                      Queue)
//! ```
//!
//! Everything that can change the node's state arrives as one [`Event`] on one channel, so
//! the loop sees a single, ordered history and needs no locks. The loop never blocks on a
//! socket or a slow peer: replies and peer messages leave through unbounded mailboxes whose
//! size is bounded by the requests in flight and the core's replication window.
//!
//! What it must not do: touch bytes on the wire (the transport does) or decide anything about
//! consensus (the core does).

mod node_loop;
mod pending;

pub use crate::config::NodeArgs;

use crate::config::{ConfigError, NodeConfig};
use crate::queue::{Queue, QueueConfig};
use crate::raft::{Core, LogIndex, Message};
use crate::storage::{FsyncPolicy, StorageError, Wal, WalOptions};
use crate::transport::client::{ClientRequest, ClientSettings, ClientTransport};
use crate::transport::peer::{PeerSettings, PeerTransport};
use crate::transport::TransportError;
use crossbeam_channel::Sender;
use std::thread::JoinHandle;

/// Events waiting for the node loop, at most. A full channel makes the transport threads
/// wait, and ZeroMQ's queues behind them push back on clients and peers.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// WAL segments roll over at this size.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// One input to the node loop.
#[derive(Debug)]
pub enum Event {
    Client(ClientRequest),
    Peer(Message),
    /// One unit of the core's logical clock.
    Tick,
    /// SIGTERM or SIGINT.
    Shutdown,
}

impl From<ClientRequest> for Event {
    fn from(request: ClientRequest) -> Event {
        Event::Client(request)
    }
}

impl From<Message> for Event {
    fn from(message: Message) -> Event {
        Event::Peer(message)
    }
}

/// Why a node could not start. `Display` is the one line `rrmq-node` prints.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{path}: {source}")]
    Storage { path: String, source: StorageError },
    /// Another node has the data dir open; the error names the dir and the holder.
    #[error("{0}")]
    DataDirInUse(StorageError),
    #[error("{path}: holds a snapshot, which this version cannot load")]
    UnsupportedSnapshot { path: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
}

/// Loads the configuration named by `args`, then runs the node until SIGTERM/SIGINT.
pub fn run_with_args(args: &NodeArgs) -> Result<(), NodeError> {
    let config = NodeConfig::from_args(args)?;
    run(config)
}

/// Runs the node until SIGTERM or SIGINT, then shuts down cleanly (PROTOCOL.md §7).
///
/// Startup errors (a port in use, an unreadable WAL) come back as values before anything is
/// logged, so the caller can print them as its one line.
pub fn run(config: NodeConfig) -> Result<(), NodeError> {
    let (events, inbox) = crossbeam_channel::bounded::<Event>(EVENT_CHANNEL_CAPACITY);
    let signals = SignalThread::start(events.clone())?;

    let context = zmq::Context::new();
    let clients = ClientTransport::start(
        &context,
        ClientSettings::from_config(&config)?,
        events.clone(),
    )?;
    let peers = PeerTransport::start(
        &context,
        PeerSettings::from_config(&config)?,
        events.clone(),
    )?;

    let fsync = match config.fsync {
        crate::config::FsyncMode::Always => FsyncPolicy::Always,
        crate::config::FsyncMode::Never => FsyncPolicy::Never,
    };
    let (store, restored) = Wal::open(
        &config.data_dir,
        WalOptions {
            segment_bytes_max: WAL_SEGMENT_BYTES_MAX,
            fsync,
        },
    )
    .map_err(|source| match source {
        StorageError::Locked { .. } => NodeError::DataDirInUse(source),
        source => NodeError::Storage {
            path: config.data_dir.display().to_string(),
            source,
        },
    })?;
    if restored.snapshot.index() > LogIndex::ZERO {
        // The queue would have to be loaded from it; this version writes none, so the data
        // dir comes from a newer one.
        return Err(NodeError::UnsupportedSnapshot {
            path: config.data_dir.display().to_string(),
        });
    }
    let restored_entries = restored.entries.len();
    let restored_hard_state = restored.hard_state;
    let mut core = Core::new(
        config.id,
        config.cluster.voters(),
        config.raft.clone(),
        restored,
        rand::random(),
    );
    if config.rejoin {
        core.abstain_until_caught_up();
    }
    let queue = Queue::new(QueueConfig {
        sessions_max: config.sessions_max,
        ..QueueConfig::default()
    });
    let timer = spawn_timer(config.tick, events)?;

    log::info!(
        "node {} of {} serving clients on {} and peers on {} (data {}, fsync {}, term {}, {} \
         log entries restored)",
        config.id,
        config.cluster.node_count(),
        config.address().client_endpoint(),
        config.address().internal_endpoint(),
        config.data_dir.display(),
        config.fsync.as_str(),
        restored_hard_state.term,
        restored_entries,
    );
    node_loop::NodeLoop::new(
        config,
        core,
        Box::new(store),
        queue,
        clients,
        peers,
        restored_hard_state,
    )
    .run(&inbox);

    drop(inbox); // Lets the timer thread's next send fail, so it exits.
    if timer.join().is_err() {
        log::error!("the timer thread panicked");
    }
    signals.stop();
    log::info!("stopped");
    Ok(())
}

/// Sends a [`Event::Tick`] every `tick`; exits once the node loop has gone.
fn spawn_timer(
    tick: std::time::Duration,
    events: Sender<Event>,
) -> Result<JoinHandle<()>, NodeError> {
    std::thread::Builder::new()
        .name("timer".into())
        .spawn(move || {
            // A ticker drops ticks the loop is too busy to take rather than queueing them.
            let ticker = crossbeam_channel::tick(tick);
            for _ in ticker.iter() {
                if events.send(Event::Tick).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| NodeError::Spawn {
            name: "timer",
            source,
        })
}

/// Turns SIGTERM and SIGINT into [`Event::Shutdown`].
struct SignalThread {
    handle: signal_hook::iterator::Handle,
    thread: JoinHandle<()>,
}

impl SignalThread {
    fn start(events: Sender<Event>) -> Result<SignalThread, NodeError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(NodeError::Signals)?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    log::debug!("signal {signal}");
                    if events.send(Event::Shutdown).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| NodeError::Spawn {
                name: "signals",
                source,
            })?;
        Ok(SignalThread { handle, thread })
    }

    fn stop(self) {
        self.handle.close();
        if self.thread.join().is_err() {
            log::error!("the signal thread panicked");
        }
    }
}
