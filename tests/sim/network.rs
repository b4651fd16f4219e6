//! The simulated network between the cores: it drops, delays, reorders and duplicates
//! messages, and cuts links, one direction at a time (TigerBeetle
//! `src/testing/packet_simulator.zig`).
//!
//! A cut link loses what is sent over it and what was still in flight on it when it is
//! delivered, so a partition takes effect at once. Messages to a crashed node are lost on
//! delivery; messages from a node that crashed after sending them still arrive, as in a real
//! network.
//!
//! An `InstallSnapshot` travels with the leader's snapshot data (the transport streams it in
//! chunks and delivers the message only once it is complete), may take longer than other
//! messages, and is lost like them. The transport of the sending node learns of a loss: the
//! loss is reported in [`Network::take_lost_snapshots`] so the runtime can tell the core.

use super::scenario::NetworkFaults;
use super::storage::SnapshotData;
use super::trace::{Event, MessageSummary, Trace};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rrmq::raft::{Message, MessageBody, NodeId};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A message and, for an `InstallSnapshot`, the snapshot's data.
#[derive(Clone)]
pub struct Envelope {
    pub message: Message,
    pub snapshot: Option<Arc<SnapshotData>>,
}

struct InFlight {
    deliver_at_tick: u64,
    /// Random: orders messages due in the same tick, so they arrive shuffled.
    order_key: u64,
    envelope: Envelope,
}

pub struct Network {
    faults: NetworkFaults,
    in_flight: Vec<InFlight>,
    /// Directed links `(from, to)` that lose every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Snapshot transfers lost since the last `take_lost_snapshots`: (leader, follower).
    lost_snapshots: Vec<(NodeId, NodeId)>,
    pub sent_count: u64,
    pub lost_count: u64,
}

impl Network {
    pub fn new(faults: NetworkFaults) -> Network {
        Network {
            faults,
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            lost_snapshots: Vec::new(),
            sent_count: 0,
            lost_count: 0,
        }
    }

    pub fn set_faults(&mut self, faults: NetworkFaults) {
        self.faults = faults;
    }

    pub fn send(&mut self, envelope: Envelope, now: u64, rng: &mut ChaCha8Rng, trace: &mut Trace) {
        self.sent_count += 1;
        let message = &envelope.message;
        if self.cut.contains(&(message.from, message.to)) {
            self.lose(message, "partition", now, trace);
            return;
        }
        if rng.gen_bool(self.faults.drop_chance) {
            self.lose(message, "dropped", now, trace);
            return;
        }
        if rng.gen_bool(self.faults.duplicate_chance) {
            self.enqueue(envelope.clone(), now, rng);
        }
        self.enqueue(envelope, now, rng);
    }

    fn enqueue(&mut self, envelope: Envelope, now: u64, rng: &mut ChaCha8Rng) {
        let mut delay_ticks = if rng.gen_bool(self.faults.long_delay_chance) {
            rng.gen_range(self.faults.delay_ticks_min..=self.faults.long_delay_ticks_max)
        } else {
            rng.gen_range(self.faults.delay_ticks_min..=self.faults.delay_ticks_max)
        };
        if envelope.snapshot.is_some() {
            delay_ticks += rng.gen_range(0..=self.faults.snapshot_extra_delay_ticks_max);
        }
        self.in_flight.push(InFlight {
            deliver_at_tick: now + delay_ticks,
            order_key: rng.gen(),
            envelope,
        });
    }

    /// The messages due by `now`, in random order, minus those on links cut meanwhile.
    pub fn take_due(&mut self, now: u64, trace: &mut Trace) -> Vec<Envelope> {
        let (mut due, waiting): (Vec<InFlight>, Vec<InFlight>) =
            std::mem::take(&mut self.in_flight)
                .into_iter()
                .partition(|in_flight| in_flight.deliver_at_tick <= now);
        self.in_flight = waiting;
        due.sort_by_key(|in_flight| in_flight.order_key);
        let mut delivered = Vec::with_capacity(due.len());
        for in_flight in due {
            let message = &in_flight.envelope.message;
            if self.cut.contains(&(message.from, message.to)) {
                self.lose(message, "partition", now, trace);
            } else {
                delivered.push(in_flight.envelope);
            }
        }
        delivered
    }

    pub fn lose(&mut self, message: &Message, why: &'static str, now: u64, trace: &mut Trace) {
        self.lost_count += 1;
        if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
            self.lost_snapshots.push((message.from, message.to));
        }
        trace.record(
            now,
            Event::Lost {
                message: MessageSummary::of(message),
                why,
            },
        );
    }

    /// Snapshot transfers lost since the last call, as (leader, follower).
    pub fn take_lost_snapshots(&mut self) -> Vec<(NodeId, NodeId)> {
        std::mem::take(&mut self.lost_snapshots)
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Replaces the partition by `cut` (directed links).
    pub fn partition(&mut self, cut: BTreeSet<(NodeId, NodeId)>) {
        self.cut = cut;
    }
}
