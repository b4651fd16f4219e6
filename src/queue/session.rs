//! Client sessions: the table that makes a retried command take effect at most once
//! (PROTOCOL.md §5; Raft dissertation §6.3).
//!
//! Each client (`client_id`) numbers its commands with `seq`. The table keeps, per client,
//! the last `seq` applied, the [`Outcome`] it produced, and the log index of its last use.
//! Only the last reply per client is kept: a client has at most one command outstanding.
//!
//! The table is bounded by a number of sessions and by the bytes of the replies it keeps;
//! when a bound is exceeded, the session least recently used *in log order* is forgotten.
//! Because that order depends only on the log, every node forgets the same clients at the
//! same index, provided every node runs with the same [`SessionLimits`].
//!
//! This module decides admission and remembers outcomes; it never executes a command.

use crate::protocol::{ErrorCode, ErrorInfo, Outcome, Payload};
use crate::raft::LogIndex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Bounds on the session table. Part of the replicated behaviour: must be equal on all nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    pub sessions_max: usize,
    pub session_bytes_max: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The last `seq` applied for this client.
    pub seq: u64,
    /// What that command produced: the reply a retry of it gets. Shared, so that cloning
    /// the table for a snapshot copies no kept message.
    pub outcome: Arc<Outcome>,
    /// The index of the log entry that last applied a command of this client.
    pub last_used: LogIndex,
}

/// What to do with a command that carries a session key.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<'a> {
    /// New for this client: execute it, then [`Sessions::record`] the outcome.
    Execute,
    /// Already applied: answer with the stored outcome, change nothing.
    Replay(&'a Outcome),
    /// Cannot be answered safely: answer with this failure, change nothing.
    Refuse(ErrorInfo),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    by_client: HashMap<String, Session>,
    /// The eviction order, oldest first. Invariant: exactly one entry per session, keyed
    /// by its `last_used` (unique, since one log entry carries one command).
    by_last_used: BTreeMap<LogIndex, String>,
    /// Sum of [`session_bytes`] over all sessions.
    bytes: usize,
}

/// What a session costs beyond its fixed size: its client id and the messages (and
/// receipts) of a kept GET reply. A failure's text is not counted: it is short (it names at most a topic), and
/// counting it would make which sessions are forgotten depend on the wording of errors,
/// which may change between versions of the binary during a rolling upgrade.
pub fn session_bytes(client_id: &str, outcome: &Outcome) -> usize {
    let delivery_bytes =
        |delivery: &crate::protocol::Delivery| delivery.message.len() + delivery.receipt.len();
    let reply_bytes = match outcome {
        Outcome::Done | Outcome::Failed(_) | Outcome::Count(_) | Outcome::Members(_) => 0,
        Outcome::Topics(topics) => topics.iter().map(String::len).sum(),
        Outcome::Message(Payload::Text(text)) => text.len(),
        Outcome::Message(Payload::Binary(bytes)) => bytes.len(),
        Outcome::Delivered(delivery) => delivery_bytes(delivery),
        Outcome::Messages(messages) => messages.iter().map(Payload::len).sum(),
        Outcome::Deliveries(deliveries) => deliveries.iter().map(delivery_bytes).sum(),
        Outcome::Stale(receipts) => receipts.iter().map(String::len).sum(),
        Outcome::TopicDetails(details) => details
            .iter()
            .map(|detail| detail.name.len() + detail.dead_letter.as_ref().map_or(0, String::len))
            .sum(),
    };
    client_id.len() + reply_bytes
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, client_id: &str) -> Option<&Session> {
        self.by_client.get(client_id)
    }

    /// Sessions in eviction order, least recently used first.
    pub fn iter_oldest_first(&self) -> impl Iterator<Item = (&str, &Session)> + '_ {
        self.by_last_used.values().map(|client_id| {
            let session = self
                .by_client
                .get(client_id)
                .expect("every eviction-order entry names a session");
            (client_id.as_str(), session)
        })
    }

    /// Decides what a command keyed `(client_id, seq)` may do.
    ///
    /// `seq` 0 and 1 both open a session for an unknown client: the client library starts at
    /// 1, and accepting 0 costs nothing. A larger `seq` from an unknown client means its
    /// session was forgotten (evicted), so a retry of an already applied command cannot be
    /// recognised: refused, and the client must start over with a new `client_id`.
    pub fn admit(&self, client_id: &str, seq: u64) -> Admission<'_> {
        match self.by_client.get(client_id) {
            None if seq <= 1 => Admission::Execute,
            None => Admission::Refuse(ErrorInfo::new(
                ErrorCode::SessionExpired,
                format!(
                    "no session for client_id {client_id:?} at seq {seq}: it was forgotten to \
                     make room for other clients (or never opened, which needs seq 1); its \
                     earlier replies are lost, start a new client_id"
                ),
            )),
            Some(session) if seq == session.seq => Admission::Replay(&session.outcome),
            Some(session) if seq < session.seq => Admission::Refuse(ErrorInfo::new(
                ErrorCode::SessionExpired,
                format!(
                    "seq {seq} of client_id {client_id:?} is older than its last applied seq \
                     {}: only the reply to the last one is kept",
                    session.seq
                ),
            )),
            Some(_) => Admission::Execute,
        }
    }

    /// Remembers the outcome of the command `(client_id, seq)` applied at `index`, then
    /// forgets the least recently used sessions until the table is within `limits`. The
    /// session just recorded is never forgotten: it is the most recently used.
    ///
    /// Panics unless `index` is later than every session's last use (entries are applied
    /// once, in log order).
    pub fn record(
        &mut self,
        client_id: &str,
        seq: u64,
        outcome: Outcome,
        index: LogIndex,
        limits: SessionLimits,
    ) {
        if let Some((&newest, _)) = self.by_last_used.last_key_value() {
            assert!(
                newest < index,
                "session recorded at index {index} after one at {newest}: entries must be \
                 applied once, in log order"
            );
        }
        let added_bytes = session_bytes(client_id, &outcome);
        let session = Session {
            seq,
            outcome: Arc::new(outcome),
            last_used: index,
        };
        match self.by_client.get_mut(client_id) {
            Some(existing) => {
                assert!(
                    seq > existing.seq,
                    "record of seq {seq} after {}",
                    existing.seq
                );
                let removed = self.by_last_used.remove(&existing.last_used);
                assert!(
                    removed.is_some(),
                    "session of {client_id:?} missing from the eviction order"
                );
                self.bytes -= session_bytes(client_id, &existing.outcome);
                *existing = session;
            }
            None => {
                self.by_client.insert(client_id.to_string(), session);
            }
        }
        self.by_last_used.insert(index, client_id.to_string());
        self.bytes += added_bytes;
        self.evict_to(limits);
    }

    /// Forgets least recently used sessions while over a limit, keeping at least one.
    /// Each eviction is O(log n).
    pub fn evict_to(&mut self, limits: SessionLimits) {
        while self.by_client.len() > 1
            && (self.by_client.len() > limits.sessions_max || self.bytes > limits.session_bytes_max)
        {
            let (_, client_id) = self
                .by_last_used
                .pop_first()
                .expect("more than one session, so the eviction order is not empty");
            let session = self
                .by_client
                .remove(&client_id)
                .expect("every eviction-order entry names a session");
            self.bytes -= session_bytes(&client_id, &session.outcome);
        }
    }

    /// Restores a session from a snapshot. Sessions must come oldest first.
    pub fn restore(&mut self, client_id: String, session: Session) -> Result<(), String> {
        if let Some((&newest, _)) = self.by_last_used.last_key_value() {
            if newest >= session.last_used {
                return Err(format!(
                    "session of {client_id:?} last used at {} is not after {newest}",
                    session.last_used
                ));
            }
        }
        if self.by_client.contains_key(&client_id) {
            return Err(format!("client_id {client_id:?} has two sessions"));
        }
        self.bytes += session_bytes(&client_id, &session.outcome);
        self.by_last_used
            .insert(session.last_used, client_id.clone());
        self.by_client.insert(client_id, session);
        Ok(())
    }

    /// Panics if the two indexes disagree or the byte count drifted. O(sessions).
    pub fn check_invariants(&self) {
        assert_eq!(
            self.by_client.len(),
            self.by_last_used.len(),
            "sessions vs eviction order"
        );
        let mut bytes = 0;
        for (index, client_id) in &self.by_last_used {
            let session = self.by_client.get(client_id).unwrap_or_else(|| {
                panic!("eviction order names {client_id:?} at {index}, which has no session")
            });
            assert_eq!(session.last_used, *index, "last use of {client_id:?}");
            bytes += session_bytes(client_id, &session.outcome);
        }
        assert_eq!(bytes, self.bytes, "session bytes");
    }
}
