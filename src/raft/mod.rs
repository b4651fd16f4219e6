//! The Raft consensus core: a deterministic state machine with no I/O.
//!
//! `Core` reads no clock, opens no socket or file, spawns no thread and owns its own seeded
//! RNG. Inputs arrive as method calls (`tick`, `step`, `propose`, `read_index`,
//! `transfer_leader`, `on_persisted`); everything the outside world must do comes back in a
//! [`Ready`]. The same inputs always give the same outputs, which is what lets
//! `tests/simulation.rs` explore thousands of failure schedules from a seed. This is the
//! shape of etcd-io/raft's `Ready` loop and tikv/raft-rs's `RawNode`.
//!
//! The runtime's loop around it:
//!
//! 1. feed inputs;
//! 2. `if core.has_ready() { let rd = core.ready(); ... }`;
//! 3. send `rd.messages` at once (a leader's appends may leave before its own copy is
//!    durable: Raft dissertation §10.2.1);
//! 4. persist `rd.hard_state` and `rd.entries` (durably: fsync), then send
//!    `rd.messages_after_persist` (votes and append acknowledgements promise durability) and
//!    call `core.on_persisted(last entry id of rd.entries)`;
//! 5. apply `rd.committed` in order and answer `rd.read_states` once applied far enough.

pub mod message;

pub use message::{
    AppendResult, Entry, EntryId, EntryPayload, HardState, LogIndex, Message, MessageBody,
    NodeId, RejectHint, Term,
};

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's role (Raft §5.1). PreVote campaigning (dissertation §9.6) is reported as
/// `Candidate` to clients; `PreCandidate` exists so the core can tell them apart.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    /// The name clients see in `status` replies: PROTOCOL.md §3 knows three roles.
    pub fn client_name(self) -> &'static str {
        match self {
            Role::Follower => "Follower",
            Role::PreCandidate | Role::Candidate => "Candidate",
            Role::Leader => "Leader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.client_name())
    }
}
