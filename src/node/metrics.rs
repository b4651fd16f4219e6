//! The node loop's side of the metrics endpoint (`crate::metrics`): what the loop knows,
//! published once per turn, and what the endpoint reads for itself at scrape time.
//!
//! Why apart from the loop: the loop calls [`MetricsPublisher::publish`] once per turn
//! with a read-only view of its state and goes on; everything about which figure changed,
//! what counts as an election or a leader change, when the node is ready, and how the
//! per-peer and per-topic series are bounded lives here. The scalars (role, term, indexes,
//! readiness) are compared with what was last published and stored only on change, a few
//! relaxed atomic stores at most; the per-peer progress (which the core hands out as a
//! fresh list) is published every [`PEERS_INTERVAL`], and the per-topic depths (a pass over
//! every topic) every [`TOPICS_INTERVAL`]: well within a 100 ms scrape's resolution for
//! the first, and a dashboard's for the second.
//!
//! Readiness (`/readyz`) needs the leader's commit index as last heard, which a follower's
//! core does not keep (it commits only what it holds): the loop hands each peer message to
//! [`MetricsPublisher::observe_peer_message`], which keeps the highest commit index the
//! current leader announced in `AppendEntries` and heartbeats.

use crate::metrics::http::BeforeScrape;
use crate::metrics::{
    Metrics, NotReady, PeerLabels, PortLabels, RoleLabels, TopicLabels, OTHER_TOPICS,
    TOPICS_SHOWN_MAX,
};
use crate::queue::Queue;
use crate::raft::{Core, LogIndex, Message, MessageBody, NodeId, Role, Term};
use crate::transport::counters;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the leader's per-peer match index and lag are published.
pub(super) const PEERS_INTERVAL: Duration = Duration::from_millis(100);

/// How often the per-topic depths (and the queue's totals) are published.
pub(super) const TOPICS_INTERVAL: Duration = Duration::from_secs(1);

/// What the loop shows the publisher each turn.
pub(super) struct LoopView<'a> {
    pub(super) core: &'a Core,
    pub(super) queue: &'a Queue,
    /// The last index applied to the queue (or installed with a snapshot).
    pub(super) applied: LogIndex,
    pub(super) halted: bool,
    pub(super) shutting_down: bool,
}

/// The scalars as last published.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Scalars {
    role: Role,
    term: Term,
    leader: Option<NodeId>,
    commit: LogIndex,
    last_index: LogIndex,
    applied: LogIndex,
}

pub(super) struct MetricsPublisher {
    metrics: Arc<Metrics>,
    last: Option<Scalars>,
    /// The highest commit index announced by `(leader, term)`.
    heard: Option<(NodeId, Term, LogIndex)>,
    /// The term of the last election counted as started (one per term).
    election_counted: Option<Term>,
    /// The leader last counted as a change.
    leader_counted: Option<(NodeId, Term)>,
    peers_shown: Vec<NodeId>,
    topics_shown: Vec<String>,
    peers_due: Instant,
    topics_due: Instant,
}

impl MetricsPublisher {
    pub(super) fn new(metrics: Arc<Metrics>) -> MetricsPublisher {
        let now = Instant::now();
        MetricsPublisher {
            metrics,
            last: None,
            heard: None,
            election_counted: None,
            leader_counted: None,
            peers_shown: Vec::new(),
            topics_shown: Vec::new(),
            peers_due: now,
            topics_due: now,
        }
    }

    /// Keeps the commit index a leader announces (`AppendEntries`, heartbeats): the highest
    /// per sender and term, for the readiness check.
    pub(super) fn observe_peer_message(&mut self, message: &Message) {
        let commit = match &message.body {
            MessageBody::AppendEntries { commit, .. } | MessageBody::Heartbeat { commit, .. } => {
                *commit
            }
            _ => return,
        };
        match &mut self.heard {
            Some((from, term, heard)) if *from == message.from && *term == message.term => {
                *heard = (*heard).max(commit);
            }
            _ => self.heard = Some((message.from, message.term, commit)),
        }
    }

    /// A snapshot was written (by the writer thread, reported to the loop).
    pub(super) fn snapshot_written(&self, write_duration: Duration) {
        self.metrics.snapshots_written.inc();
        self.metrics
            .snapshot_write_duration
            .observe(write_duration.as_secs_f64());
    }

    /// Once per loop turn.
    pub(super) fn publish(&mut self, view: &LoopView<'_>) {
        let core = view.core;
        let now = Scalars {
            role: core.role(),
            term: core.term(),
            leader: core.leader(),
            commit: core.commit_index(),
            last_index: core.last_index(),
            applied: view.applied,
        };
        if self.last != Some(now) {
            self.publish_scalars(now);
            self.last = Some(now);
        }
        self.publish_readiness(view, now);
        let clock = Instant::now();
        if clock >= self.peers_due {
            self.peers_due = clock + PEERS_INTERVAL;
            self.publish_peers(core, now);
        }
        if clock >= self.topics_due {
            self.topics_due = clock + TOPICS_INTERVAL;
            self.publish_queue(view.queue);
        }
    }

    fn publish_scalars(&mut self, now: Scalars) {
        let metrics = &self.metrics;
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let previous = self.last;
        if previous.map(|last| last.role) != Some(now.role) {
            for role in [
                Role::Leader,
                Role::Follower,
                Role::Candidate,
                Role::PreCandidate,
            ] {
                metrics
                    .role
                    .get_or_create(&RoleLabels {
                        role: role_label(role),
                    })
                    .set(i64::from(role == now.role));
            }
        }
        metrics.term.set(gauge(now.term.0));
        metrics
            .leader_id
            .set(now.leader.map_or(-1, |leader| gauge(leader.0)));
        metrics.commit_index.set(gauge(now.commit.0));
        metrics.last_log_index.set(gauge(now.last_index.0));
        metrics.applied_index.set(gauge(now.applied.0));
        // An election is counted once per term in which this node campaigned; a node that
        // won within one turn (a single node) was a candidate too.
        if matches!(now.role, Role::Candidate | Role::Leader)
            && self.election_counted != Some(now.term)
            && previous.is_some_and(|last| last.term != now.term || last.role != now.role)
        {
            self.election_counted = Some(now.term);
            metrics.elections_started.inc();
        }
        if let Some(last) = previous {
            if now.role == Role::Leader && (last.role != Role::Leader || last.term != now.term) {
                metrics.elections_won.inc();
            }
            if now.commit > last.commit {
                metrics.commits.inc_by(now.commit.0 - last.commit.0);
            }
            if now.applied > last.applied {
                metrics
                    .applied_entries
                    .inc_by(now.applied.0 - last.applied.0);
            }
            // As leader, the log grows only by this node's own proposals.
            if now.role == Role::Leader
                && last.role == Role::Leader
                && last.term == now.term
                && now.last_index > last.last_index
            {
                metrics
                    .proposals
                    .inc_by(now.last_index.0 - last.last_index.0);
            }
        }
        if let Some(leader) = now.leader {
            if self.leader_counted != Some((leader, now.term)) {
                let changed = self.leader_counted.map(|(known, _)| known) != Some(leader);
                if changed {
                    metrics.leader_changes.inc();
                }
                self.leader_counted = Some((leader, now.term));
            }
        }
    }

    fn publish_readiness(&self, view: &LoopView<'_>, now: Scalars) {
        let leader_commit = match now.leader {
            _ if now.role == Role::Leader => Some(now.commit),
            Some(leader) => Some(match self.heard {
                Some((from, term, commit)) if from == leader && term == now.term => {
                    commit.max(now.commit)
                }
                // No announcement of this leader yet: its commit is at least ours.
                _ => now.commit,
            }),
            None => None,
        };
        let reason = if view.halted {
            NotReady::Halted
        } else if view.shutting_down {
            NotReady::ShuttingDown
        } else if view.core.is_removed() {
            NotReady::Removed
        } else {
            match leader_commit {
                None => NotReady::NoLeader,
                Some(commit) if now.applied < commit => NotReady::Behind,
                Some(_) => NotReady::None,
            }
        };
        let leader_commit = leader_commit.unwrap_or(LogIndex::ZERO).0;
        self.metrics
            .leader_commit_index
            .set(i64::try_from(leader_commit).unwrap_or(i64::MAX));
        self.metrics.ready.set(i64::from(reason == NotReady::None));
        // At least 1: 0 means "not published yet" to `/healthz`.
        let turned_ms = self.metrics.clock_ms().max(1);
        self.metrics
            .readiness
            .publish(reason, now.applied.0, leader_commit, turned_ms);
    }

    /// The leader's view of each peer; nothing on other nodes.
    fn publish_peers(&mut self, core: &Core, now: Scalars) {
        let metrics = &self.metrics;
        let mut shown = Vec::new();
        if now.role == Role::Leader {
            for progress in core.status().progress {
                if progress.id == core.id() {
                    continue;
                }
                let labels = PeerLabels {
                    peer: progress.id.0.to_string(),
                };
                let lag = now.last_index.0.saturating_sub(progress.match_index.0);
                metrics
                    .peer_match_index
                    .get_or_create(&labels)
                    .set(i64::try_from(progress.match_index.0).unwrap_or(i64::MAX));
                metrics
                    .peer_lag_entries
                    .get_or_create(&labels)
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
                shown.push(progress.id);
            }
        }
        for gone in self.peers_shown.iter().filter(|peer| !shown.contains(peer)) {
            let labels = PeerLabels {
                peer: gone.0.to_string(),
            };
            metrics.peer_match_index.remove(&labels);
            metrics.peer_lag_entries.remove(&labels);
        }
        self.peers_shown = shown;
    }

    /// The busiest [`TOPICS_SHOWN_MAX`] topics by messages held, the rest as `other`, and
    /// the queue's totals.
    fn publish_queue(&mut self, queue: &Queue) {
        let metrics = &self.metrics;
        let stats = queue.stats();
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        metrics.topics.set(gauge(stats.topics));
        metrics.messages.set(gauge(stats.messages));
        metrics.message_bytes.set(gauge(stats.payload_bytes));
        metrics.sessions.set(gauge(stats.sessions));
        let mut depths: Vec<(&str, usize, usize)> = queue.topic_depths().collect();
        // Busiest first; by name among equals, so the set shown is stable.
        depths.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let (top, rest) = depths.split_at(depths.len().min(TOPICS_SHOWN_MAX));
        let mut shown: Vec<String> = Vec::with_capacity(top.len() + 1);
        for (name, messages, bytes) in top {
            let labels = TopicLabels {
                topic: (*name).to_string(),
            };
            metrics
                .topic_messages
                .get_or_create(&labels)
                .set(gauge(*messages));
            metrics
                .topic_bytes
                .get_or_create(&labels)
                .set(gauge(*bytes));
            shown.push(labels.topic);
        }
        if !rest.is_empty() {
            let labels = TopicLabels {
                topic: OTHER_TOPICS.to_string(),
            };
            let messages = rest.iter().map(|topic| topic.1).sum();
            let bytes = rest.iter().map(|topic| topic.2).sum();
            metrics
                .topic_messages
                .get_or_create(&labels)
                .set(gauge(messages));
            metrics.topic_bytes.get_or_create(&labels).set(gauge(bytes));
            shown.push(labels.topic);
        }
        for gone in self
            .topics_shown
            .iter()
            .filter(|topic| !shown.contains(topic))
        {
            let labels = TopicLabels {
                topic: gone.clone(),
            };
            metrics.topic_messages.remove(&labels);
            metrics.topic_bytes.remove(&labels);
        }
        self.topics_shown = shown;
    }
}

/// The `role` label of `role`.
fn role_label(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre_candidate",
    }
}

/// What the endpoint reads for itself before each scrape, on its own thread: the WAL's
/// segments and the newest snapshot's size in `data_dir`, and the transport's counters.
pub(super) fn before_scrape(data_dir: PathBuf) -> BeforeScrape {
    Box::new(move |metrics: &Metrics| {
        let (segments, wal_bytes, snapshot_bytes) = disk_usage(&data_dir);
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        metrics.wal_segments.set(gauge(segments));
        metrics.wal_bytes.set(gauge(wal_bytes));
        metrics.snapshot_bytes.set(gauge(snapshot_bytes));
        metrics
            .client_connections
            .set(gauge(counters::CLIENT_PORT.connections()));
        for (port, counters) in [
            ("client", &counters::CLIENT_PORT),
            ("peer", &counters::PEER_PORT),
        ] {
            // The watcher's count is the truth; the counter catches up with it.
            let counter = metrics
                .handshakes_refused
                .get_or_create(&PortLabels { port });
            let (seen, shown) = (counters.handshakes_refused(), counter.get());
            if seen > shown {
                counter.inc_by(seen - shown);
            }
        }
    })
}

/// `(WAL segments, their bytes, the newest snapshot file's bytes)` in `dir`; what cannot be
/// read counts as nothing (a scrape must not fail on a file deleted meanwhile).
fn disk_usage(dir: &std::path::Path) -> (u64, u64, u64) {
    let (mut segments, mut wal_bytes) = (0, 0);
    let mut newest_snapshot: Option<(String, u64)> = None;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0, 0);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(len) = entry.metadata().map(|metadata| metadata.len()) else {
            continue;
        };
        if name.starts_with("segment-") && name.ends_with(".wal") {
            segments += 1;
            wal_bytes += len;
        } else if name.starts_with("snapshot-") && name.ends_with(".snap") {
            // Names start with the zero-padded index: the greatest is the newest.
            if newest_snapshot
                .as_ref()
                .is_none_or(|(newest, _)| name > *newest)
            {
                newest_snapshot = Some((name, len));
            }
        }
    }
    (
        segments,
        wal_bytes,
        newest_snapshot.map_or(0, |(_, len)| len),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_segments_and_the_newest_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, len: usize| {
            std::fs::write(dir.path().join(name), vec![0u8; len]).expect("write")
        };
        write("segment-00000000000000000001.wal", 100);
        write("segment-00000000000000000002.wal", 50);
        write("snapshot-00000000000000000001-00000000000000000010.snap", 7);
        write("snapshot-00000000000000000002-00000000000000000020.snap", 9);
        write(
            "snapshot-00000000000000000003-00000000000000000030.snap.tmp",
            11,
        );
        write("hard_state", 3);
        assert_eq!(disk_usage(dir.path()), (2, 150, 9));
        assert_eq!(disk_usage(&dir.path().join("missing")), (0, 0, 0));
    }
}
