//! Counters the transport's connection watchers keep for the metrics endpoint: connections
//! open on the client port and handshakes refused on each listening port.
//!
//! Why process-wide statics rather than a handle passed down: one node runs per process,
//! the watcher threads that see these events are started deep inside the transports, and
//! a relaxed atomic store costs them nothing whether or not anyone reads it. The node's
//! metrics endpoint reads them at scrape time (`node::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

/// One listening port's counters.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections accepted and not yet closed.
    connections: AtomicU64,
    /// Handshakes refused since start (any reason: wrong or unknown key, plain on a keyed
    /// port, garbage).
    handshakes_refused: AtomicU64,
}

impl ListenerCounters {
    pub const fn new() -> ListenerCounters {
        ListenerCounters {
            connections: AtomicU64::new(0),
            handshakes_refused: AtomicU64::new(0),
        }
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn handshakes_refused(&self) -> u64 {
        self.handshakes_refused.load(Ordering::Relaxed)
    }

    pub(super) fn set_connections(&self, open: usize) {
        self.connections
            .store(u64::try_from(open).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(super) fn refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// The client port's.
pub static CLIENT_PORT: ListenerCounters = ListenerCounters::new();

/// The internal (peer) port's.
pub static PEER_PORT: ListenerCounters = ListenerCounters::new();

/// The counters of the listener a watcher names by `purpose` (`"client port"` or not).
pub(super) fn for_purpose(purpose: &str) -> &'static ListenerCounters {
    if purpose == "client port" {
        &CLIENT_PORT
    } else {
        &PEER_PORT
    }
}
