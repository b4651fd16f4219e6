//! What a leader knows about one follower's log, and how fast it may send to it.
//!
//! A follower is either being *probed* (its position is unknown: one AppendEntries at a time,
//! moving `next_index` back on each rejection) or *replicated* to (its position is known:
//! AppendEntries are pipelined optimistically, at most `inflight_appends_max` unacknowledged).
//! This is etcd-io/raft's `tracker.Progress` reduced to what rrmq needs.

use super::message::LogIndex;
use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// One append at a time. `paused` is set after sending and cleared by any reply.
    Probe { paused: bool },
    /// Pipelining. Each in-flight append is remembered by its last index.
    Replicate { inflight: VecDeque<LogIndex> },
    /// A snapshot up to `index` is on its way; nothing else is sent until the follower
    /// acknowledges it or `elapsed_ticks` reaches the snapshot timeout.
    Snapshot { index: LogIndex, elapsed_ticks: u32 },
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log. Invariant: `match_index < next_index`.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    pub state: ReplicationState,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Highest ReadIndex round this follower acknowledged in the current term.
    pub read_round_acked: u64,
}

impl Progress {
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ReplicationState::Probe { paused: false },
            recent_active: false,
            read_round_acked: 0,
        }
    }

    /// Whether another append may be sent now.
    pub fn can_send(&self, inflight_appends_max: usize) -> bool {
        match &self.state {
            ReplicationState::Probe { paused } => !paused,
            ReplicationState::Replicate { inflight } => inflight.len() < inflight_appends_max,
            ReplicationState::Snapshot { .. } => false,
        }
    }

    /// Records that an append ending at `last_index` was sent.
    pub fn sent(&mut self, last_index: LogIndex, carried_entries: bool) {
        match &mut self.state {
            ReplicationState::Probe { paused } => *paused = true,
            ReplicationState::Replicate { inflight } => {
                if carried_entries {
                    inflight.push_back(last_index);
                    self.next_index = last_index.next();
                }
            }
            ReplicationState::Snapshot { .. } => {}
        }
    }

    /// Records that a snapshot up to `index` was sent.
    pub fn sent_snapshot(&mut self, index: LogIndex) {
        self.state = ReplicationState::Snapshot {
            index,
            elapsed_ticks: 0,
        };
    }

    /// The follower acknowledged up to `index`. Returns whether `match_index` moved.
    pub fn accept(&mut self, index: LogIndex) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index.next());
        match &mut self.state {
            ReplicationState::Snapshot {
                index: snapshot, ..
            } if index < *snapshot => {}
            ReplicationState::Probe { .. } | ReplicationState::Snapshot { .. } => {
                // Its position is known now: start pipelining from just after it.
                self.state = ReplicationState::Replicate {
                    inflight: VecDeque::new(),
                };
            }
            ReplicationState::Replicate { inflight } => {
                while inflight.front().is_some_and(|&last| last <= index) {
                    inflight.pop_front();
                }
            }
        }
        moved
    }

    /// Back to probing from `next_index` (after a rejection or a lost pipeline).
    pub fn probe_from(&mut self, next_index: LogIndex) {
        self.next_index = next_index.max(self.match_index.next());
        self.state = ReplicationState::Probe { paused: false };
    }

    /// The follower's log now ends at `last_index`, below what it acknowledged (it lost
    /// data): match only that much and probe from just after it.
    pub fn forget_match_above(&mut self, last_index: LogIndex) {
        self.match_index = self.match_index.min(last_index);
        self.probe_from(last_index.next());
    }

    /// A heartbeat reply shows the follower is alive: let a paused probe go again, and
    /// release one slot of a full pipeline so a window stuck on lost appends can move.
    pub fn resume(&mut self, inflight_appends_max: usize) {
        match &mut self.state {
            ReplicationState::Probe { paused } => *paused = false,
            ReplicationState::Replicate { inflight } => {
                if inflight.len() >= inflight_appends_max {
                    inflight.pop_front();
                }
            }
            ReplicationState::Snapshot { .. } => {}
        }
    }

    /// Counts a tick while a snapshot is on its way; returns true when it is overdue.
    pub fn snapshot_overdue(&mut self, snapshot_timeout_ticks: u32) -> bool {
        match &mut self.state {
            ReplicationState::Snapshot { elapsed_ticks, .. } => {
                *elapsed_ticks += 1;
                *elapsed_ticks >= snapshot_timeout_ticks
            }
            _ => false,
        }
    }

    pub fn is_receiving_snapshot(&self) -> bool {
        matches!(self.state, ReplicationState::Snapshot { .. })
    }

    pub fn is_replicating(&self) -> bool {
        matches!(self.state, ReplicationState::Replicate { .. })
    }
}
