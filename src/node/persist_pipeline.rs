//! The persistence pipeline: which of a `Ready`'s writes go to storage as which numbered
//! batch, and what waits for which batch to be durable.
//!
//! Why it exists: its rule is the subtlest one of the runtime and it is safety-critical (Raft
//! §5.4 relies on it): *a vote or an append acknowledgement leaves only after every batch
//! before it, its own included, is durable*, and a leader counts its own copy of an entry
//! toward the majority only from then on (`Core::on_persisted`). Storage syncs batches in
//! order while the runtime keeps stepping the core, so a `Ready` may be taken while the
//! batches of earlier ones are still in flight; this module decides what may leave at once
//! and what must wait. Both the node loop (over the WAL thread) and the simulator
//! (`tests/sim/node.rs`, over its modelled disk) drive this one piece, so the rule the
//! simulator checks is the rule the node runs.
//!
//! What it owns:
//! - batch numbers: from 1, ascending without gaps, one per batch that needs a sync (entries,
//!   an installed snapshot, a term or vote change). A batch that needs none (it carries only
//!   messages that wait for the batches before it) keeps the number of the batch before it;
//! - a hard state that changed only in its commit index: it needs no sync (a lost commit
//!   index is relearned from the leader), so it is not handed to storage on its own, which
//!   would wake the storage thread, and the runtime after it, once per commit. It is held
//!   here and rides on the next batch handed over for another reason (or is taken at
//!   shutdown, [`PersistPipeline::take_unwritten_hard_state`]);
//! - the hard state last handed to storage or held, to tell the two apart;
//! - how far storage reported batches durable, and what waits for that: the `Ready`'s
//!   `messages_after_persist` ride on its batch (storage's side sends them right after the
//!   sync of the group the batch is in), and the `on_persisted` report for its last entry
//!   waits here until [`PersistPipeline::on_durable`] releases it.
//!
//! What it must not do: any I/O. It returns what to hand to storage, what to send now and
//! what to report to the core; the caller does it, in that order.

use crate::raft::{Entry, EntryId, HardState, Message, MessageBody, NodeId, SnapshotMeta};
use std::collections::VecDeque;

/// The parts of a `Ready` that are persisted, or wait for persistence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadyWrites {
    /// A snapshot from the leader that the log restarts after (its file is already durable).
    pub snapshot: Option<SnapshotMeta>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    /// Votes and acks: they promise that `hard_state` and `entries` are durable. Never an
    /// `InstallSnapshot` (only a leader sends one, as leader traffic in `Ready::messages`).
    pub messages_after_persist: Vec<Message>,
}

/// What storage must write, in this order, after every batch handed over before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistBatch {
    /// Numbered from 1, ascending without gaps among batches that need a sync; a batch that
    /// needs none carries the number of the batch before it (0: none yet).
    pub number: u64,
    /// A snapshot from the leader that the log restarts after (its file is already durable).
    pub snapshot: Option<SnapshotMeta>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    /// Whether the batch needs a sync (entries, an installed snapshot, a term or vote
    /// change); a commit-only hard state rides along with the next sync.
    pub must_sync: bool,
    /// Messages that wait for this batch and every one before it to be durable: send them
    /// right after the sync of the group this batch is in (a batch may carry only these, to
    /// wait for the batches before it). Never an `InstallSnapshot`.
    pub messages_after_sync: Vec<Message>,
}

/// What the caller does with one `Ready`'s writes, in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Handoff {
    /// Hand to storage behind every batch before it. `None`: nothing to write or wait for.
    pub batch: Option<PersistBatch>,
    /// Send now: every batch they depend on is durable already (none is in flight).
    pub send_now: Vec<Message>,
    /// Report to `Core::on_persisted` now, for the same reason.
    pub persisted_now: Option<EntryId>,
}

/// The pipeline of one node's (or one simulated node's) storage. See the module docs.
#[derive(Debug)]
pub struct PersistPipeline {
    /// For panic messages.
    node: NodeId,
    /// The number of the last batch that needed a sync, handed to storage (0: none).
    batches_sent: u64,
    /// Storage reported every batch up to this one durable.
    /// Invariant: `durable_through <= batches_sent`.
    durable_through: u64,
    /// The hard state last handed to storage or held in `unwritten_hard_state` (at start:
    /// the durable one).
    written_hard_state: HardState,
    /// A hard state newer than storage's only in its commit index, not yet handed over: it
    /// rides on the next batch.
    unwritten_hard_state: Option<HardState>,
    /// `(batch, last entry)` whose `on_persisted` report waits for `batch` to be durable.
    /// Invariant: `batch` ascending, each above `durable_through`.
    waiting: VecDeque<(u64, EntryId)>,
}

impl PersistPipeline {
    /// A pipeline over storage that holds `durable_hard_state`, with nothing in flight.
    pub fn new(node: NodeId, durable_hard_state: HardState) -> PersistPipeline {
        PersistPipeline {
            node,
            batches_sent: 0,
            durable_through: 0,
            written_hard_state: durable_hard_state,
            unwritten_hard_state: None,
            waiting: VecDeque::new(),
        }
    }

    /// Takes one `Ready`'s writes, in `Ready` order. With nothing in flight and nothing that
    /// needs a sync, its messages (and the report, if any) are released at once; otherwise
    /// its messages ride on its batch (or on an otherwise empty one queued behind the
    /// batches in flight: an ack for entries that arrived twice still waits for the batch
    /// that carries them), and the report waits for [`PersistPipeline::on_durable`].
    pub fn persist(&mut self, writes: ReadyWrites) -> Handoff {
        let ReadyWrites {
            snapshot,
            hard_state,
            entries,
            messages_after_persist: messages,
        } = writes;
        debug_assert!(
            !messages
                .iter()
                .any(|message| matches!(message.body, MessageBody::InstallSnapshot { .. })),
            "node {}: an InstallSnapshot among the messages after persist",
            self.node
        );
        let last_entry = entries.last().map(Entry::id);
        let mut must_sync = snapshot.is_some() || !entries.is_empty();
        if let Some(hard_state) = hard_state {
            // Raft Figure 2: term and vote are durable before any message that depends on
            // them; a commit index that moved alone may be lost (and relearned).
            must_sync |= (hard_state.term, hard_state.vote)
                != (self.written_hard_state.term, self.written_hard_state.vote);
            self.written_hard_state = hard_state;
            // The newest hard state supersedes one held back.
            self.unwritten_hard_state = Some(hard_state);
        }
        if must_sync {
            self.batches_sent += 1;
        }
        if self.durable_through == self.batches_sent {
            // Nothing in flight and nothing to sync (so no entries either): the messages
            // leave at once, and a commit-only hard state waits for the next batch.
            return Handoff {
                batch: None,
                send_now: messages,
                persisted_now: last_entry,
            };
        }
        if !must_sync && messages.is_empty() {
            // Only a commit-only hard state: it waits for the next batch.
            return Handoff::default();
        }
        if let Some(last) = last_entry {
            self.waiting.push_back((self.batches_sent, last));
        }
        Handoff {
            batch: Some(PersistBatch {
                number: self.batches_sent,
                snapshot,
                // Whatever hard state is not written yet: free to take along, the batch
                // goes to storage anyway.
                hard_state: self.unwritten_hard_state.take(),
                entries,
                must_sync,
                messages_after_sync: messages,
            }),
            send_now: Vec::new(),
            persisted_now: None,
        }
    }

    /// Storage made every batch up to `through_batch` durable. Returns the entries to report
    /// to `Core::on_persisted`, oldest first. Reports may repeat or come out of order (a batch
    /// that needed no sync shares its number with the one before it); an older one changes
    /// nothing.
    ///
    /// Panics if `through_batch` was never handed out: storage made up a batch (a bug).
    pub fn on_durable(&mut self, through_batch: u64) -> Vec<EntryId> {
        assert!(
            through_batch <= self.batches_sent,
            "node {}: batch {through_batch} reported durable, only {} sent",
            self.node,
            self.batches_sent
        );
        self.durable_through = self.durable_through.max(through_batch);
        let released = self
            .waiting
            .iter()
            .take_while(|(batch, _)| *batch <= self.durable_through)
            .count();
        self.waiting
            .drain(..released)
            .map(|(_, last)| last)
            .collect()
    }

    /// The oldest batch whose durability something still waits for (an `on_persisted`
    /// report), if any.
    pub fn first_waiting_batch(&self) -> Option<u64> {
        self.waiting.front().map(|(batch, _)| *batch)
    }

    /// The commit-only hard state not handed to storage yet, if any: written at shutdown,
    /// after the last batch, so a clean restart starts from the last known commit index.
    pub fn take_unwritten_hard_state(&mut self) -> Option<HardState> {
        self.unwritten_hard_state.take()
    }

    /// Storage failed: nothing waiting is ever released (what it promises may not be on
    /// disk).
    pub fn abandon(&mut self) {
        self.waiting.clear();
    }
}

#[cfg(test)]
mod tests;
