//! Fault injection, for tests only: which peers this node pretends it cannot reach.
//!
//! Why it exists: the end-to-end fault suite (tests/nemesis.rs) partitions clusters of real
//! `rrmq-node` processes — isolates the leader, splits majority from minority, loses messages
//! one way, leaves one node as a bridge between two halves — while clients keep talking to
//! every node. A node started with `--fault-injection` accepts a `fault` request naming the
//! peers to drop messages to and from; the peer transport's sends (on the node loop and the
//! WAL thread) and its receiver and snapshot threads consult [`PeerFaults`] for every
//! message. Without the flag the node refuses the request (BAD_REQUEST) and the sets stay
//! empty forever.
//!
//! Why here rather than Linux network namespaces (or iptables): those need root
//! (CAP_NET_ADMIN) and a veth pair or firewall rule per node, which `cargo test` on a
//! developer machine or in an unprivileged CI container does not have, and they would cut
//! client traffic too unless every node had a second interface. Dropping whole Raft messages
//! at the transport is exactly what Raft sees of a partition (its peer channel is already
//! fire-and-forget and lossy), works per direction and per peer, and changes in microseconds
//! without touching the processes. What it does not model: TCP effects such as stalled
//! connections and frames buffered during the partition and delivered after it; ZeroMQ hides
//! most of those from Raft anyway. The cost when off: one relaxed atomic load per message.
//!
//! What it must not do: exist in a way a production node could be steered by. The node loop
//! refuses `fault` requests unless the operator passed the test flag.

use crate::protocol::FAULT_NODE_IDS_MAX;
use crate::raft::NodeId;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The peers a node drops messages to and from: one bit per node id (ids below 64; a node
/// never names itself, and larger ids are never dropped).
#[derive(Debug, Default)]
pub struct PeerFaults {
    drop_to: AtomicU64,
    drop_from: AtomicU64,
    /// Set once by a `fault` request with `stop_zap_handler`: the ZAP handler thread ends.
    zap_handler_stop: AtomicBool,
}

fn bit(peer: NodeId) -> u64 {
    if peer.0 < FAULT_NODE_IDS_MAX {
        1 << peer.0
    } else {
        0
    }
}

fn mask(peers: &[NodeId]) -> u64 {
    peers.iter().fold(0, |mask, peer| mask | bit(*peer))
}

impl PeerFaults {
    /// From now on, drop every message to a node in `drop_to` and from a node in
    /// `drop_from`; empty slices heal. Replaces what was set before. Messages already handed
    /// to ZeroMQ still go out.
    pub fn set(&self, drop_to: &[NodeId], drop_from: &[NodeId]) {
        self.drop_to.store(mask(drop_to), Ordering::Relaxed);
        self.drop_from.store(mask(drop_from), Ordering::Relaxed);
    }

    /// Whether a message for `peer` is to be dropped instead of sent.
    pub fn drops_to(&self, peer: NodeId) -> bool {
        self.drop_to.load(Ordering::Relaxed) & bit(peer) != 0
    }

    /// Makes the ZAP handler thread end at its next look (within its stop poll), as if it
    /// had failed: the test of `transport::zap`'s rule that its death is fatal.
    pub fn stop_zap_handler(&self) {
        self.zap_handler_stop.store(true, Ordering::Relaxed);
    }

    /// Whether the ZAP handler is to end (see [`PeerFaults::stop_zap_handler`]).
    pub fn zap_handler_stopped(&self) -> bool {
        self.zap_handler_stop.load(Ordering::Relaxed)
    }

    /// Whether a message received from `peer` is to be dropped instead of delivered.
    pub fn drops_from(&self, peer: NodeId) -> bool {
        self.drop_from.load(Ordering::Relaxed) & bit(peer) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_exactly_the_named_peers_per_direction_until_healed() {
        let faults = PeerFaults::default();
        for id in 0..FAULT_NODE_IDS_MAX + 2 {
            assert!(!faults.drops_to(NodeId(id)), "fresh: to {id}");
            assert!(!faults.drops_from(NodeId(id)), "fresh: from {id}");
        }
        faults.set(&[NodeId(1), NodeId(63)], &[NodeId(2)]);
        let cases = [
            // (peer, dropped to, dropped from)
            (0, false, false),
            (1, true, false),
            (2, false, true),
            (3, false, false),
            (63, true, false),
            (64, false, false),
        ];
        for (peer, to, from) in cases {
            assert_eq!(faults.drops_to(NodeId(peer)), to, "to {peer}");
            assert_eq!(faults.drops_from(NodeId(peer)), from, "from {peer}");
        }
        faults.set(&[NodeId(2)], &[]);
        assert!(!faults.drops_to(NodeId(1)), "replaced, not added");
        assert!(faults.drops_to(NodeId(2)));
        assert!(!faults.drops_from(NodeId(2)));
        faults.set(&[], &[]);
        assert!((0..FAULT_NODE_IDS_MAX).all(|id| !faults.drops_to(NodeId(id))));
    }
}
