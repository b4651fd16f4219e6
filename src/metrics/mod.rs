//! The node's metrics and health, for Prometheus and orchestrators: one registry of
//! counters, gauges and histograms ([`Metrics`]), the readiness the node loop publishes
//! ([`Readiness`]), and the HTTP endpoint that serves both on `metrics_port` ([`http`]).
//!
//! Why this shape: the threads that know a value update it where they already hold it,
//! with an atomic store or a histogram observe, and nothing else; the HTTP thread alone
//! formats text, on its own OS thread, so a scrape never waits for (or delays) the node
//! loop. The node loop publishes its state once per turn through `node::metrics` (cheap
//! scalars every turn, per-peer and per-topic figures a few times a second); the client
//! thread records each request's type, outcome and latency ([`requests`]); the WAL thread
//! observes each sync; the transport's connection watcher counts connections and refused
//! handshakes (`transport::counters`), and the WAL's and snapshots' sizes on disk are read
//! from the data dir at scrape time.
//!
//! The registry is built with `prometheus-client` (the Prometheus project's Rust client),
//! which writes the OpenMetrics text format: metric names take the `rrmq_` prefix, the
//! unit (`_seconds`, `_bytes`) and, for counters, `_total`. Label sets are bounded: roles,
//! request types and error codes are fixed lists, peers are the members, and topics are
//! the busiest few plus `other`.
//!
//! Without `metrics_port` none of this is created: the loop, the client thread and the WAL
//! thread hold `None` and skip every update.

pub mod http;
pub mod requests;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

/// The roles the `rrmq_role` gauge has a series for (one of them is 1, the others 0).
pub const ROLES: [&str; 4] = ["leader", "follower", "candidate", "pre_candidate"];

/// How many topics get a series of their own in `rrmq_topic_*`; the rest add up in
/// `topic="other"`.
pub const TOPICS_SHOWN_MAX: usize = 10;

/// The label of the topics outside the busiest [`TOPICS_SHOWN_MAX`].
pub const OTHER_TOPICS: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

/// A request's type (`put`, `get`, `status`, ...) and outcome (`ok` or the error code).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub r#type: &'static str,
    pub outcome: &'static str,
}

/// A request's type alone (the latency histograms: one per type keeps the series few).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latencies: 50 µs to about 13 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// Every metric of one node. Cloning a metric clones a handle to the same value.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub role: Family<RoleLabels, Gauge>,
    pub term: Gauge,
    /// -1 while no leader is known.
    pub leader_id: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub last_log_index: Gauge,
    /// The commit index the leader last announced (its own on the leader).
    pub leader_commit_index: Gauge,
    /// 1 when `/readyz` answers 200.
    pub ready: Gauge,
    pub peer_match_index: Family<PeerLabels, Gauge>,
    pub peer_lag_entries: Family<PeerLabels, Gauge>,
    pub elections_started: Counter,
    pub elections_won: Counter,
    pub leader_changes: Counter,
    pub proposals: Counter,
    pub commits: Counter,
    pub applied_entries: Counter,
    pub fsync_duration: Histogram,
    pub entries_per_fsync: Histogram,
    pub wal_bytes: Gauge,
    pub wal_segments: Gauge,
    pub snapshots_written: Counter,
    pub snapshot_bytes: Gauge,
    pub snapshot_write_duration: Histogram,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<TypeLabels>,
    pub topics: Gauge,
    pub topic_messages: Family<TopicLabels, Gauge>,
    pub topic_bytes: Family<TopicLabels, Gauge>,
    pub messages: Gauge,
    pub message_bytes: Gauge,
    pub sessions: Gauge,
    pub client_connections: Gauge,
    pub handshakes_refused: Family<PortLabels, Counter>,
    pub uptime: Gauge<f64, AtomicU64>,
    started: Instant,
    pub readiness: Readiness,
}

/// Which listening port (`client` or `peer`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: &'static str,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rrmq");
        let role = Family::<RoleLabels, Gauge>::default();
        registry.register(
            "role",
            "1 for the role this node is in, 0 for the others",
            role.clone(),
        );
        for name in ROLES {
            role.get_or_create(&RoleLabels { role: name }).set(0);
        }
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let term = gauge(&mut registry, "term", "The current Raft term");
        let leader_id = gauge(
            &mut registry,
            "leader_id",
            "The id of the leader this node knows of, -1 for none",
        );
        leader_id.set(-1);
        let commit_index = gauge(
            &mut registry,
            "commit_index",
            "The highest log index known to be committed",
        );
        let applied_index = gauge(
            &mut registry,
            "applied_index",
            "The last log index applied to the queue",
        );
        let last_log_index = gauge(
            &mut registry,
            "last_log_index",
            "The index of the last entry in this node's log",
        );
        let leader_commit_index = gauge(
            &mut registry,
            "leader_commit_index",
            "The commit index the leader last announced to this node (the leader's own on \
             the leader)",
        );
        let ready = gauge(
            &mut registry,
            "ready",
            "1 when /readyz answers 200: a leader is known and its commit index is applied",
        );
        let peer_match_index = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_match_index",
            "On the leader: the last index each peer is known to hold",
            peer_match_index.clone(),
        );
        let peer_lag_entries = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_lag_entries",
            "On the leader: entries each peer is behind the leader's last index",
            peer_lag_entries.clone(),
        );
        let elections_started = counter(
            &mut registry,
            "elections_started",
            "Elections this node started (became candidate)",
        );
        let elections_won = counter(
            &mut registry,
            "elections_won",
            "Elections this node won (became leader)",
        );
        let leader_changes = counter(
            &mut registry,
            "leader_changes",
            "Times this node learned of a new leader",
        );
        let proposals = counter(
            &mut registry,
            "proposals",
            "Entries this node appended to its log as leader",
        );
        let commits = counter(
            &mut registry,
            "commits",
            "Entries this node saw committed (commit index advances)",
        );
        let applied_entries = counter(
            &mut registry,
            "applied_entries",
            "Entries applied to the queue (or installed with a snapshot)",
        );
        let fsync_duration = Histogram::new(exponential_buckets(0.000_025, 2.0, 16));
        registry.register_with_unit(
            "fsync_duration",
            "Time of one WAL sync (one fsync per sync group)",
            Unit::Seconds,
            fsync_duration.clone(),
        );
        let entries_per_fsync = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "entries_per_fsync",
            "Log entries made durable by one WAL sync",
            entries_per_fsync.clone(),
        );
        let wal_bytes = Gauge::default();
        registry.register_with_unit(
            "wal",
            "Bytes of the WAL's segment files (as allocated: a segment is preallocated)",
            Unit::Bytes,
            wal_bytes.clone(),
        );
        let wal_segments = gauge(&mut registry, "wal_segments", "The WAL's segment files");
        let snapshots_written = counter(
            &mut registry,
            "snapshots_written",
            "Snapshots this node wrote",
        );
        let snapshot_bytes = Gauge::default();
        registry.register_with_unit(
            "snapshot",
            "Size of the newest snapshot file",
            Unit::Bytes,
            snapshot_bytes.clone(),
        );
        let snapshot_write_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "snapshot_write_duration",
            "Time to serialize and write one snapshot (off the node loop)",
            Unit::Seconds,
            snapshot_write_duration.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests answered, by type and outcome (ok or the error code)",
            requests.clone(),
        );
        let request_duration: HistogramFamily<TypeLabels> =
            Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its reply leaving, by type",
            Unit::Seconds,
            request_duration.clone(),
        );
        let topics = gauge(&mut registry, "topics", "Topics in the applied queue");
        let topic_messages = Family::<TopicLabels, Gauge>::default();
        registry.register(
            "topic_messages",
            "Messages held per topic (ready and leased), the busiest topics and \"other\"",
            topic_messages.clone(),
        );
        let topic_bytes = Family::<TopicLabels, Gauge>::default();
        registry.register_with_unit(
            "topic",
            "Payload bytes held per topic, the busiest topics and \"other\"",
            Unit::Bytes,
            topic_bytes.clone(),
        );
        let messages = gauge(&mut registry, "messages", "Messages held over all topics");
        let message_bytes = Gauge::default();
        registry.register_with_unit(
            "message",
            "Payload bytes held over all topics",
            Unit::Bytes,
            message_bytes.clone(),
        );
        let sessions = gauge(
            &mut registry,
            "sessions",
            "Client sessions the queue remembers",
        );
        let client_connections = gauge(
            &mut registry,
            "client_connections",
            "Connections open on the client port",
        );
        let handshakes_refused = Family::<PortLabels, Counter>::default();
        registry.register(
            "handshakes_refused",
            "Handshakes refused on a listening port (a plain client on a keyed port, an \
             unknown key, garbage)",
            handshakes_refused.clone(),
        );
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "uptime",
            "Time since the node started",
            Unit::Seconds,
            uptime.clone(),
        );
        Metrics {
            registry,
            role,
            term,
            leader_id,
            commit_index,
            applied_index,
            last_log_index,
            leader_commit_index,
            ready,
            peer_match_index,
            peer_lag_entries,
            elections_started,
            elections_won,
            leader_changes,
            proposals,
            commits,
            applied_entries,
            fsync_duration,
            entries_per_fsync,
            wal_bytes,
            wal_segments,
            snapshots_written,
            snapshot_bytes,
            snapshot_write_duration,
            requests,
            request_duration,
            topics,
            topic_messages,
            topic_bytes,
            messages,
            message_bytes,
            sessions,
            client_connections,
            handshakes_refused,
            uptime,
            started: Instant::now(),
            readiness: Readiness::default(),
        }
    }

    /// The OpenMetrics text of every metric, after the values read at scrape time.
    pub fn encode(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut text = String::with_capacity(16 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Only a formatter error, which writing to a String never gives.
            log::error!("encoding the metrics: {error}");
        }
        text
    }
}

/// Why `/readyz` answers 503 (or that it answers 200).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NotReady {
    /// Not a reason: ready.
    None = 0,
    /// The node is starting: the loop has not published yet.
    Starting = 1,
    NoLeader = 2,
    /// Applied is behind the leader's commit index as last heard.
    Behind = 3,
    /// Stopped serving after a storage failure.
    Halted = 4,
    ShuttingDown = 5,
    /// Removed from the cluster's membership.
    Removed = 6,
}

impl NotReady {
    fn from_u8(value: u8) -> NotReady {
        match value {
            0 => NotReady::None,
            2 => NotReady::NoLeader,
            3 => NotReady::Behind,
            4 => NotReady::Halted,
            5 => NotReady::ShuttingDown,
            6 => NotReady::Removed,
            _ => NotReady::Starting,
        }
    }
}

/// What `/readyz` and `/healthz` read: written by the node loop, read by the HTTP thread.
#[derive(Debug)]
pub struct Readiness {
    reason: AtomicU8,
    applied: AtomicU64,
    leader_commit: AtomicU64,
    /// Milliseconds since [`Metrics`] was made, at the loop's last publish: `/healthz` fails
    /// when the loop stops turning.
    loop_turned_ms: AtomicU64,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness {
            reason: AtomicU8::new(NotReady::Starting as u8),
            applied: AtomicU64::new(0),
            leader_commit: AtomicU64::new(0),
            loop_turned_ms: AtomicU64::new(0),
        }
    }
}

impl Readiness {
    /// The loop's side, once per turn.
    pub fn publish(&self, reason: NotReady, applied: u64, leader_commit: u64, turned_ms: u64) {
        self.applied.store(applied, Ordering::Relaxed);
        self.leader_commit.store(leader_commit, Ordering::Relaxed);
        self.reason.store(reason as u8, Ordering::Relaxed);
        self.loop_turned_ms.store(turned_ms, Ordering::Relaxed);
    }

    /// `Ok` when ready, else the one-line reason `/readyz` answers with.
    pub fn check(&self) -> Result<(), String> {
        let applied = self.applied.load(Ordering::Relaxed);
        let leader_commit = self.leader_commit.load(Ordering::Relaxed);
        match NotReady::from_u8(self.reason.load(Ordering::Relaxed)) {
            NotReady::None => Ok(()),
            NotReady::Starting => Err("starting".to_string()),
            NotReady::NoLeader => Err("no leader known".to_string()),
            NotReady::Behind => Err(format!(
                "applied {applied} is behind the leader's commit index {leader_commit}"
            )),
            NotReady::Halted => Err("stopped serving after a storage failure".to_string()),
            NotReady::ShuttingDown => Err("shutting down".to_string()),
            NotReady::Removed => Err("removed from the cluster".to_string()),
        }
    }

    /// Milliseconds (on the [`Metrics`] clock) of the loop's last turn.
    pub fn loop_turned_ms(&self) -> u64 {
        self.loop_turned_ms.load(Ordering::Relaxed)
    }
}

impl Metrics {
    /// Milliseconds since this was made: the clock [`Readiness`] is stamped with.
    pub fn clock_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
