//! The runtime of one node: it opens storage, binds the sockets, starts the threads, and runs
//! the single loop that owns the Raft core and the queue (the log store lives on the WAL
//! thread, which the loop alone feeds).
//!
//! Threads and what they own:
//!
//! ```text
//!   client thread ──ClientRequest──┐                     ┌──Reply──> client thread (ROUTER)
//!   peer receiver ──Message────────┤ one bounded channel │
//!   timer ─────────Tick────────────┼────> node loop ─────┼──frames, DONTWAIT──> peers
//!   signals ───────Shutdown────────┤   (Core, Queue,     │  (the loop's own DEALERs)
//!   peer watcher ──PeerConnection──┤    DEALERs)         │
//!   WAL thread ────Persisted───────┘                     └──Batch─────> WAL thread
//!                                                         (+ acks)     (LogStore, DEALERs)
//!                                                                        │ acks and votes,
//!                                                                        └─after the sync──> peers
//! ```
//!
//! Everything that can change the node's state arrives as one [`Event`] on one channel, so
//! the loop sees a single, ordered history and needs no locks. The loop never blocks on a
//! socket or a slow peer: replies leave through an unbounded mailbox whose size is bounded
//! by the requests in flight; peer messages are encoded and handed to ZeroMQ by the loop
//! itself with `DONTWAIT` (a full queue or a down peer drops the message, Raft resends), so
//! a PUT wakes no peer-sender thread on its way out (see `transport::peer`).
//!
//! The WAL thread owns the log store: the loop hands it each `Ready`'s writes and goes on
//! stepping the core while it fsyncs; it publishes "durable through batch N", which the loop
//! reads every round, and wakes the loop with an [`Event`] only while the loop waits for it
//! (see `wal_thread`, and `node_loop` for why the fsync left the loop). The votes and acks
//! that wait for a sync ride on the batch, and the WAL thread sends them itself on a second
//! set of DEALERs right after the sync, rather than handing them back to the loop.
//!
//! Snapshots add three helpers that keep slow work off the loop: a writer thread serializes
//! a cheap copy of the queue to a snapshot file, a loader thread decodes a snapshot received
//! from the leader (both in `snapshots`), and the transport streams snapshot files (see
//! `transport::snapshot_transfer`). Each reports back as an [`Event`]; the loop alone changes the
//! core and the queue, and alone decides what the WAL thread writes.
//!
//! Where things are: `node_loop` (dispatch, `Ready` processing and apply, with admission
//! and shutdown beside it), [`persist_pipeline`] (which writes go in which numbered batch,
//! and what waits for which batch: pure, and driven by the simulator too), `wal_thread`,
//! `snapshots`, `status` (status and stats replies), `event`, `pending` (requests waiting
//! for their entry or read), `waiters` (blocking GETs parked on the leader), `metrics` (what
//! the loop publishes to the metrics endpoint, `crate::metrics`), [`recovery`]
//! (startup), `startup_checks` (the open files
//! limit, the warning that a cluster without keys is open), `log_limit` (rate-limited
//! warnings for what peers can trigger at will), `reload` (SIGHUP re-reads the client
//! list on the signal thread, into the list the client transport shares, never through the
//! loop) and `peer_finder` (a thread that asks the nodes this node knows for the members it
//! has no address for, while it knows no leader; it reports back as an [`Event`]).
//!
//! What it must not do: touch bytes on the wire (the transport does) or decide anything about
//! consensus (the core does).

pub mod cluster_id;
mod event;
mod lease_clock;
mod log_limit;
pub mod members;
mod metrics;
mod node_loop;
mod peer_finder;
mod pending;
pub mod persist_pipeline;
pub mod recovery;
mod reload;
mod snapshots;
mod startup_checks;
mod status;
mod wait;
mod waiters;
mod wal_thread;

pub use event::{Event, LoadedSnapshot, PersistReport, SnapshotSaved};

pub use crate::config::NodeArgs;

use crate::config::clients::SharedClients;
use crate::config::{ConfigError, NodeConfig};
use crate::metrics::http::{MetricsBindError, MetricsServer};
use crate::metrics::Metrics;
use crate::raft::Core;
use crate::storage::{FsyncPolicy, StorageError, Wal, WalOptions};
use crate::transport::client::{ClientCurve, ClientSettings, ClientTransport};
use crate::transport::peer::{PeerSettings, PeerTransport};
use crate::transport::TransportError;
use crossbeam_channel::Sender;
use recovery::RecoveryError;
use reload::ClientReload;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Events waiting for the node loop, at most. A full channel makes the transport threads
/// wait, and ZeroMQ's queues behind them push back on clients and peers.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Why a node could not start. `Display` is the one line `rrmq-node` prints.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Metrics(#[from] MetricsBindError),
    #[error("{path}: {source}")]
    Storage { path: String, source: StorageError },
    /// Another node has the data dir open; the error names the dir and the holder.
    #[error("{0}")]
    DataDirInUse(StorageError),
    /// The snapshot files and the log cannot be reconciled, or cannot be read.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    ClusterId(#[from] cluster_id::ClusterIdError),
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
pub fn run(mut config: NodeConfig) -> Result<(), NodeError> {
    // First: every thread started from here on inherits it.
    match startup_checks::set_sched_policy(config.sched_policy) {
        Ok(()) => log::debug!("scheduling policy {:?}", config.sched_policy),
        Err(error) => log::warn!(
            "could not set the scheduling policy {:?} (--sched-policy): {error}; the \
             kernel's default applies",
            config.sched_policy
        ),
    }
    // Before the peer transport, which stamps it on every message.
    // Recorded (written down, logged) once the data dir is locked, below.
    let cluster_id = cluster_id::resolve(&mut config)?;
    // Before the sockets: every connection they accept holds a file.
    let open_files = startup_checks::raise_open_files_limit();
    let (events, inbox) = crossbeam_channel::bounded::<Event>(EVENT_CHANNEL_CAPACITY);
    // One list, shared by the ZAP handler (handshakes), the client transport (each request)
    // and the reload (SIGHUP swaps it).
    let client_list = config
        .cluster
        .clients
        .clone()
        .map(|list| Arc::new(SharedClients::new(list)));
    let signals = SignalThread::start(
        events.clone(),
        ClientReload {
            clients: client_list.clone(),
            path: config.config_path.clone(),
            peers_keyed: config.cluster.is_keyed(),
        },
    )?;

    let context = zmq::Context::new();
    let mut peer_settings = PeerSettings::from_config(&config)?;
    let mut client_settings = ClientSettings::from_config(&config)?;
    if let Some(list) = &client_list {
        // `clients` is only accepted in a keyed config, which a node starts only with its key.
        let (Some(curve), Some(own)) = (&mut peer_settings.curve, &config.key_pair) else {
            return Err(NodeError::Config(ConfigError::Invalid {
                path: config.config_path.display().to_string(),
                reason: "\"clients\" needs the addresses to carry \"public_key\"".into(),
            }));
        };
        curve.clients = Some(list.clone());
        client_settings.curve = Some(ClientCurve {
            secret: own.secret,
            clients: list.clone(),
            members: curve.members.clone(),
        });
    }
    // The peer transport binds the ZAP handler, which must be in place before any CURVE
    // socket binds (ZAP fails open), the client port's included: peers start first.
    // With `metrics_port`, the endpoint binds next to the other ports, so a port in use is
    // the startup error line; the loop, the client thread and the WAL thread update it.
    let metrics = config.metrics_port().map(|_| Arc::new(Metrics::new()));
    client_settings.metrics = metrics.clone();
    let peers = PeerTransport::start(&context, peer_settings, events.clone())?;
    let clients = ClientTransport::start(&context, client_settings, events.clone())?;
    let metrics_server = match (config.metrics_port(), &metrics) {
        (Some(port), Some(metrics)) => Some(MetricsServer::start(
            &crate::transport::resolve_host(&config.address().ip)?,
            port,
            metrics.clone(),
            metrics::before_scrape(config.data_dir.clone()),
        )?),
        _ => None,
    };

    let fsync = FsyncPolicy::from(config.fsync);
    let (mut store, wal_restored) = Wal::open(
        &config.data_dir,
        WalOptions {
            segment_bytes_max: config.wal_segment_bytes_max,
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
    cluster_id.record()?;
    let queue_config = config.queue_config();
    let recovered = recovery::recover(
        &config.data_dir,
        fsync,
        &mut store,
        wal_restored,
        queue_config,
    )?;
    let restored = recovered.restored;
    let restored_entries = restored.entries.len();
    let restored_hard_state = restored.hard_state;
    let snapshot = restored.snapshot.clone();
    let mut core = Core::new(
        config.id,
        members::initial_membership(&config.cluster, config.id, config.join),
        config.raft.clone(),
        restored,
        rand::random(),
    );
    if config.rejoin {
        core.abstain_until_caught_up();
    }
    let queue = recovered.queue;
    let timer = spawn_timer(config.tick, events.clone())?;

    log::info!(
        "node {} of {} serving clients on {} and peers on {} (data {}, fsync {}, term {}, \
         snapshot {} with {} messages loaded in {} ms, {} log entries restored)",
        config.id,
        config.cluster.node_count(),
        config.address().client_endpoint(),
        config.address().internal_endpoint(),
        config.data_dir.display(),
        config.fsync.as_str(),
        restored_hard_state.term,
        snapshot.last,
        queue.stats().messages,
        recovered.load_duration.as_millis(),
        restored_entries,
    );
    open_files.log();
    startup_checks::warn_if_open_to_other_hosts(&config);
    node_loop::NodeLoop::new(node_loop::NodeParts {
        config,
        core,
        store: Box::new(store),
        queue,
        clients,
        peers,
        events,
        durable_hard_state: restored_hard_state,
        snapshot,
        previous_snapshot: recovered.previous_snapshot,
        metrics,
    })?
    .run(&inbox);
    drop(metrics_server);

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

/// Turns SIGTERM and SIGINT into [`Event::Shutdown`], and handles SIGHUP on its own thread
/// ([`ClientReload`]): the reload touches only the shared client list, never the loop.
struct SignalThread {
    handle: signal_hook::iterator::Handle,
    thread: JoinHandle<()>,
}

impl SignalThread {
    fn start(events: Sender<Event>, reload: ClientReload) -> Result<SignalThread, NodeError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(NodeError::Signals)?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    log::debug!("signal {signal}");
                    if signal == SIGHUP {
                        let (level, line) = reload.on_sighup();
                        log::log!(level, "{line}");
                    } else if events.send(Event::Shutdown).is_err() {
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
