//! The node's answers about itself: `status` (the core's view, for clients, tools and
//! `rrmq bench`) and `stats` (the state machine's, for comparing replicas), and the leader
//! hint every reply carries.
//!
//! Why apart from the loop: these are read-only views over the loop's state, with rules of
//! their own about what a halted node may claim; the loop only asks for them.

use crate::config::NodeConfig;
use crate::protocol::{LeaderInfo, MemberInfo, PeerProgress, Reply, StatsReport, StatusReport};
use crate::queue::Queue;
use crate::raft::{Core, LogIndex, NodeId, Role};

/// Sync groups made durable (one `sync` each; under `--fsync never` the store skips the
/// fsync, but the group is still counted) and log entries made durable, since start. Shown
/// in v2 `status` so `rrmq bench` can report entries per fsync.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct WalCounters {
    pub(super) syncs: u64,
    pub(super) entries: u64,
}

/// What `status` reads.
pub(super) struct NodeView<'a> {
    pub(super) config: &'a NodeConfig,
    pub(super) core: &'a Core,
    /// The last index applied to the queue (or installed with a snapshot).
    pub(super) applied: LogIndex,
    /// The node stopped participating after a storage failure.
    pub(super) halted: bool,
    pub(super) wal: WalCounters,
    /// Client requests taken in since start, `status` and `stats` aside.
    pub(super) requests: u64,
}

/// The `status` reply.
pub(super) fn status(view: &NodeView<'_>) -> Reply {
    let status = view.core.status();
    // A halted node takes no part in Raft: it must not claim to lead (clients and tools
    // find the leader by status), nor vouch for another leader it no longer hears from.
    let (role, leader) = if view.halted {
        (Role::Follower.client_name(), None)
    } else {
        (status.role.client_name(), status.leader)
    };
    let peers = if view.halted {
        &[][..]
    } else {
        &status.progress[..]
    };
    Reply::Status(StatusReport {
        role: role.to_string(),
        term: status.term.0,
        id: status.id.0,
        leader: leader.map(|leader| leader.0),
        commit_index: status.commit_index.0,
        last_applied: view.applied.0,
        last_log_index: status.last_index.0,
        peers: peers
            .iter()
            .map(|progress| PeerProgress {
                id: progress.id.0,
                match_index: progress.match_index.0,
                next_index: progress.next_index.0,
                state: if progress.replicating {
                    "replicate"
                } else {
                    "probe"
                }
                .to_string(),
            })
            .collect(),
        fsync: view.config.fsync.as_str().to_string(),
        wal_syncs: view.wal.syncs,
        wal_entries: view.wal.entries,
        requests: view.requests,
    })
}

/// The `stats` reply: the state machine at `applied`, and `members`, the membership the
/// node acts on (a lagging node learns its leader's address from it: `peer_finder`).
pub(super) fn stats(
    id: NodeId,
    cluster_id: u64,
    queue: &Queue,
    applied: LogIndex,
    members: Vec<MemberInfo>,
) -> Reply {
    let stats = queue.stats();
    Reply::Stats(StatsReport {
        id: id.0,
        last_applied: applied.0,
        digest: queue.digest(),
        topic_count: stats.topics as u64,
        message_count: stats.messages as u64,
        payload_bytes: stats.payload_bytes as u64,
        session_count: stats.sessions as u64,
        cluster_id,
        members,
    })
}

/// The leader's client address, for v2 replies and NOT_LEADER hints. None once halted: the
/// core is frozen in whatever role it had, and a halted node must not send clients back to
/// itself while the others elect a new leader.
pub(super) fn leader_info(
    book: &super::members::AddressBook,
    core: &Core,
    halted: bool,
) -> Option<LeaderInfo> {
    if halted {
        return None;
    }
    let leader = core.leader()?;
    let address = book.get(leader)?;
    Some(LeaderInfo {
        id: leader.0,
        ip: address.ip.clone(),
        port: address.port,
    })
}
