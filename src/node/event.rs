//! The node loop's inputs: everything that can change the node's state arrives as one
//! [`Event`] on one channel, so the loop sees a single, ordered history and needs no locks.
//! The helper threads (WAL, snapshot writer and loader, snapshot sender) report back the
//! same way.

use super::peer_finder::MembersFound;
use crate::queue::Queue;
use crate::raft::{Message, SnapshotMeta};
use crate::storage::{SnapshotFile, StorageError};
use crate::transport::client::ClientRequest;
use crate::transport::snapshot_transfer::SnapshotReport;
use crate::transport::watch::PeerConnection;
use std::time::Duration;

/// One input to the node loop.
#[derive(Debug)]
pub enum Event {
    Client(ClientRequest),
    Peer(Message),
    /// One unit of the core's logical clock.
    Tick,
    /// SIGTERM or SIGINT.
    Shutdown,
    /// The snapshot sender finished (or gave up) streaming a snapshot to a follower.
    SnapshotSent(SnapshotReport),
    /// The writer thread finished writing this node's snapshot.
    SnapshotSaved(SnapshotSaved),
    /// The loader thread decoded a snapshot received from the leader.
    SnapshotLoaded(Box<LoadedSnapshot>),
    /// The WAL thread made batches durable, or failed.
    Persisted(PersistReport),
    /// This node's connection to a peer dropped (its process died) or came back.
    PeerConnection(PeerConnection),
    /// The peer finder asked the members this node knows for theirs (`peer_finder`).
    MembersFound(MembersFound),
}

impl From<PeerConnection> for Event {
    fn from(change: PeerConnection) -> Event {
        Event::PeerConnection(change)
    }
}

/// What the snapshot writer thread reports.
#[derive(Debug)]
pub struct SnapshotSaved {
    pub meta: SnapshotMeta,
    /// The file, or why it could not be written.
    pub result: Result<SnapshotFile, String>,
    /// Serializing and writing it, fsync included (off the node loop).
    pub write_duration: Duration,
}

/// What the snapshot loader thread reports: the `InstallSnapshot` message whose file it
/// decoded, and the queue decoded from it.
pub struct LoadedSnapshot {
    pub message: Message,
    pub snapshot: SnapshotMeta,
    pub result: Result<Queue, String>,
    pub load_duration: Duration,
}

impl std::fmt::Debug for LoadedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSnapshot")
            .field("snapshot", &self.snapshot)
            .field("ok", &self.result.is_ok())
            .finish_non_exhaustive()
    }
}

impl From<SnapshotReport> for Event {
    fn from(report: SnapshotReport) -> Event {
        Event::SnapshotSent(report)
    }
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

/// What the WAL thread reports to the loop, as [`Event::Persisted`] (see `wal_thread`).
#[derive(Debug)]
pub enum PersistReport {
    /// Every batch numbered up to `through_batch` is durable (or needed no sync).
    Durable {
        through_batch: u64,
        /// Whether this group cost a `sync` (counted in v2 status as `wal_syncs`).
        synced: bool,
        /// Log entries the group appended (`wal_entries`).
        entries: u64,
    },
    /// The store failed: nothing after the last `Durable` report may be acknowledged.
    Failed(StorageError),
}
