//! One topic: its messages in order, the ones handed out under a lease, and its delivery
//! settings (PROTOCOL.md §3 and §8).
//!
//! Why the split into three parts: a leased message stays in the topic, invisible, and a
//! message whose lease ends goes back to its place, before every message put after it. So
//! each message gets a sequence number when it is put (`seq`, per topic, never reused), and
//! a topic holds:
//!
//! - `fresh`: messages never handed out, oldest first, packed ([`MessageFifo`]); their seqs
//!   are the `fresh.len()` numbers just below `next_seq`, so they need not be stored;
//! - `returned`: messages that were leased and came back (lease end, NACK), by seq;
//! - `leased`: messages under a live lease, by seq.
//!
//! Every seq in `returned` or `leased` is below every seq in `fresh` (a message leaves
//! `fresh` from its front only), so the next message to hand out is the first of `returned`
//! if any, else the front of `fresh`: original order, whatever came back when.
//!
//! This type owns no cross-topic state (the lease deadline index, the byte counts, the
//! dead-letter moves): [`super::Queue`] does, and keeps them in step with what is here.

use super::command::PayloadRef;
use super::fifo::MessageFifo;
use crate::protocol::{Payload, TopicDetail, TopicSettings};
use crate::raft::LogIndex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A message that was handed out under a lease and is ready again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Returned {
    pub message: Payload,
    /// Leased deliveries so far. Invariant: at least 1.
    pub deliveries: u64,
}

/// A message under a live lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub message: Payload,
    /// Leased deliveries so far, this one included. Invariant: at least 1.
    pub deliveries: u64,
    /// The entry that granted this lease: with the seq, it makes the receipt.
    pub granted_at: LogIndex,
    /// On the leader's lease clock; the lease ends with the first `EndLeases` at or after it.
    pub deadline_ms: u64,
}

/// A message leaving the ready set, with what the queue needs to hand it out.
#[derive(Debug)]
pub struct Taken {
    pub seq: u64,
    pub message: Payload,
    /// Leased deliveries before this one.
    pub deliveries: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    pub settings: TopicSettings,
    /// Never handed out, oldest first. Invariant: their seqs are `next_seq - fresh.len()`
    /// up to `next_seq - 1`.
    pub messages: MessageFifo,
    /// The seq the next message put gets.
    pub next_seq: u64,
    /// Invariant: every key is below `next_seq - messages.len()`, and not in `leased`.
    pub returned: BTreeMap<u64, Returned>,
    /// Invariant: every key is below `next_seq - messages.len()`, and not in `returned`.
    pub leased: BTreeMap<u64, Lease>,
    /// Messages dropped after `max_deliveries` because no `dead_letter` is set.
    pub discarded: u64,
}

/// The receipt of the lease granted by the entry at `granted_at` on the message `seq`.
/// Unique forever: one entry grants leases in one topic, at most one per message.
pub fn receipt(granted_at: LogIndex, seq: u64) -> String {
    format!("{}.{seq}", granted_at.0)
}

/// The seq a receipt names, if it has the shape [`receipt`] writes. The caller still
/// compares the whole string with the live lease's receipt, so a look-alike (`+1.2`,
/// `01.2`) is stale.
fn receipt_seq(receipt: &str) -> Option<u64> {
    let (_, seq) = receipt.split_once('.')?;
    seq.parse().ok()
}

impl Topic {
    pub fn new(name: String, settings: TopicSettings) -> Topic {
        Topic {
            name,
            settings,
            messages: MessageFifo::new(),
            next_seq: 0,
            returned: BTreeMap::new(),
            leased: BTreeMap::new(),
            discarded: 0,
        }
    }

    /// Messages that can be handed out now.
    pub fn ready(&self) -> usize {
        self.messages.len() + self.returned.len()
    }

    /// Every message the topic holds: ready and leased.
    pub fn len(&self) -> usize {
        self.ready() + self.leased.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of every message the topic holds.
    pub fn payload_bytes(&self) -> usize {
        self.messages.payload_bytes()
            + self
                .returned
                .values()
                .map(|returned| returned.message.len())
                .sum::<usize>()
            + self
                .leased
                .values()
                .map(|lease| lease.message.len())
                .sum::<usize>()
    }

    /// The lengths of the ready messages in the order [`Topic::take_ready`] takes them:
    /// for sizing a batch before taking it.
    pub fn ready_lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.returned
            .values()
            .map(|returned| returned.message.len())
            .chain(self.messages.iter().map(|message| message.bytes.len()))
    }

    /// Appends a message put by a client. The caller checked its size.
    pub fn push(&mut self, message: &Payload) {
        self.push_ref(message.into());
    }

    /// [`Topic::push`] of a borrowed message.
    pub fn push_ref(&mut self, message: PayloadRef<'_>) {
        self.messages
            .push_ref(message)
            .expect("the caller checked the message against MESSAGE_BYTES_MAX");
        self.next_seq += 1;
    }

    /// Removes the next ready message: the oldest returned one, else the oldest fresh one.
    pub fn take_ready(&mut self) -> Option<Taken> {
        if let Some((seq, returned)) = self.returned.pop_first() {
            return Some(Taken {
                seq,
                message: returned.message,
                deliveries: returned.deliveries,
            });
        }
        let seq = self.next_seq - self.messages.len() as u64;
        let message = self.messages.pop()?;
        Some(Taken {
            seq,
            message,
            deliveries: 0,
        })
    }

    /// The live lease `receipt` names, if any.
    pub fn lease_of(&self, receipt_text: &str) -> Option<(u64, &Lease)> {
        let seq = receipt_seq(receipt_text)?;
        let lease = self.leased.get(&seq)?;
        (receipt(lease.granted_at, seq) == receipt_text).then_some((seq, lease))
    }

    pub fn detail(&self) -> TopicDetail {
        TopicDetail {
            name: self.name.clone(),
            ready: self.ready() as u64,
            leased: self.leased.len() as u64,
            max_deliveries: self.settings.max_deliveries,
            dead_letter: self.settings.dead_letter.clone(),
            discarded: self.discarded,
        }
    }

    /// Panics if a structural invariant is broken. O(messages).
    pub fn check_invariants(&self) {
        self.messages.check_invariants();
        let fresh_first = self
            .next_seq
            .checked_sub(self.messages.len() as u64)
            .unwrap_or_else(|| panic!("topic {:?}: more fresh messages than seqs", self.name));
        for (&seq, returned) in &self.returned {
            assert!(
                seq < fresh_first,
                "topic {:?}: returned seq {seq}",
                self.name
            );
            assert!(returned.deliveries >= 1, "returned without a delivery");
            assert!(
                !self.leased.contains_key(&seq),
                "topic {:?}: seq {seq} both returned and leased",
                self.name
            );
        }
        for (&seq, lease) in &self.leased {
            assert!(seq < fresh_first, "topic {:?}: leased seq {seq}", self.name);
            assert!(lease.deliveries >= 1, "lease without a delivery");
        }
        if let Some(max) = self.settings.max_deliveries {
            assert!(max >= 1, "topic {:?}: max_deliveries 0", self.name);
        }
        assert_ne!(
            self.settings.dead_letter.as_deref(),
            Some(self.name.as_str()),
            "a topic is its own dead letter"
        );
    }
}
