//! The simulated clients and their oracle: which proposals were answered, which reads were
//! answered, and whether every read saw everything that completed before it was issued.
//!
//! Two kinds of writers propose queue commands (see `workload.rs`):
//! - *session clients*, each with at most one operation outstanding (create a topic, PUT,
//!   GET, and the version 2 commands: leased GETs whose receipts the client keeps, a few at a
//!   time, to ACK, NACK or TOUCH later, or forget) keyed by `(client_id, seq)`. A client retries its operation with the same key,
//!   at whichever node it now believes leads, whenever it was refused or not answered within
//!   its timeout — through leader changes, crashes and lost replies — until it is answered.
//!   `SESSION_EXPIRED` is an answer too: the client then starts over with a new `client_id`
//!   (PROTOCOL.md §5), and its operation's outcome stays unknown.
//! - *unkeyed writers*, bursts of PUTs without a session that are never retried.
//!
//! A proposal is *answered* when the node it was proposed to applies the entry `propose`
//! returned, with the same term (a runtime answers the client then); the reply may still be
//! lost on its way. A proposal whose entry was overwritten, or whose node crashed, is never
//! answered: it may commit or not, and its client times out. A read is answered by the node
//! it was issued to, once that node has applied up to the index the core confirmed.
//!
//! Linearizable reads: a read must return an index at or above the *observed index* at the
//! time it was issued — the highest applied index any completed client operation observed
//! (the entry of an answer a client received, or the applied index an earlier read was
//! answered at).

use super::trace::ReplySummary;
use super::workload::{entry_key, CommandKey};
use super::{property, Violation};
use bytes::Bytes;
use rrmq::protocol::{ErrorCode, Outcome};
use rrmq::queue::{Command, LoggedCommand};
use rrmq::raft::{Entry, EntryId, LogIndex, NodeId, ReadState};
use std::collections::{BTreeMap, HashMap};

/// A proposal a node accepted and has not applied yet.
struct PendingWrite {
    entry: EntryId,
    command: CommandKey,
    logged: LoggedCommand,
    /// The session client waiting for it, if any.
    client: Option<usize>,
}

/// The answer a node gives to a proposal it applied.
pub struct Reply {
    pub client: Option<usize>,
    pub command: CommandKey,
    pub logged: LoggedCommand,
    pub entry: EntryId,
    pub outcome: Outcome,
}

/// A session client's operation, outstanding until answered.
pub struct Operation {
    pub key: CommandKey,
    pub logged: LoggedCommand,
    pub bytes: Bytes,
    /// When to send the next attempt: at once for a new operation, after the timeout for
    /// one a node accepted, soon for one refused (at once if the refusal named the leader).
    pub send_at: u64,
    /// Whether some node accepted an attempt (a later attempt is then a retry).
    pub accepted: bool,
}

/// One client process. After `SESSION_EXPIRED` it continues as a new client instance.
pub struct SessionClient {
    /// The client instance: `client_id = "c<client>"`.
    pub client: u64,
    pub next_seq: u64,
    pub outstanding: Option<Operation>,
    /// The node it sends requests to (see `Simulation::client_target`).
    pub leader_guess: Option<usize>,
    /// `(topic, receipt)` of the leases it was answered with and has not settled yet (it
    /// forgets the oldest beyond a few: a consumer that crashed mid-work).
    pub receipts: Vec<(String, String)>,
}

/// Receipts a session client remembers at most.
const RECEIPTS_KEPT: usize = 6;

struct PendingRead {
    node: usize,
    /// The observed index when the read was issued: the read must return at least this.
    must_see: LogIndex,
    /// The index the core confirmed, once it did.
    confirmed_index: Option<LogIndex>,
}

pub struct ClientOracle {
    next_client: u64,
    next_message: u64,
    next_probe: u64,
    next_read_id: u64,
    pub sessions: Vec<SessionClient>,
    /// Per node: proposals it accepted and has not applied yet, by index.
    pending_writes: Vec<BTreeMap<LogIndex, PendingWrite>>,
    pending_reads: BTreeMap<u64, PendingRead>,
    /// Per operation: the first answer other than `SESSION_EXPIRED` a client received.
    first_answers: HashMap<CommandKey, Outcome>,
    observed_index: LogIndex,
    /// Unkeyed PUTs answered.
    pub acknowledged_writes: u64,
    /// Session operations answered (the first answer of each).
    pub answered_operations: u64,
    /// Attempts after the first, over all session operations.
    pub retries: u64,
    pub answered_reads: u64,
    /// Operations answered `SESSION_EXPIRED` (the client then starts over).
    pub expired_sessions: u64,
}

pub fn is_session_expired(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Failed(error) if error.code == ErrorCode::SessionExpired)
}

impl ClientOracle {
    pub fn new(node_count: usize, session_clients: usize) -> ClientOracle {
        let mut oracle = ClientOracle {
            next_client: 1,
            next_message: 1,
            next_probe: 1,
            next_read_id: 1,
            sessions: Vec::new(),
            pending_writes: (0..node_count).map(|_| BTreeMap::new()).collect(),
            pending_reads: BTreeMap::new(),
            first_answers: HashMap::new(),
            observed_index: LogIndex::ZERO,
            acknowledged_writes: 0,
            answered_operations: 0,
            retries: 0,
            answered_reads: 0,
            expired_sessions: 0,
        };
        for _ in 0..session_clients {
            let client = oracle.next_client();
            oracle.sessions.push(SessionClient {
                client,
                next_seq: 1,
                outstanding: None,
                leader_guess: None,
                receipts: Vec::new(),
            });
        }
        oracle
    }

    fn next_client(&mut self) -> u64 {
        let client = self.next_client;
        self.next_client += 1;
        client
    }

    /// A message id never used before.
    pub fn next_message(&mut self) -> u64 {
        let message = self.next_message;
        self.next_message += 1;
        message
    }

    pub fn next_probe(&mut self) -> u64 {
        let probe = self.next_probe;
        self.next_probe += 1;
        probe
    }

    pub fn next_read_id(&mut self) -> u64 {
        let read_id = self.next_read_id;
        self.next_read_id += 1;
        read_id
    }

    /// Session client `slot` starts its next operation, `logged` (built for its current
    /// client instance and `next_seq`, which this consumes).
    pub fn start_operation(
        &mut self,
        slot: usize,
        key: CommandKey,
        logged: LoggedCommand,
        now: u64,
    ) {
        let session = &mut self.sessions[slot];
        assert!(session.outstanding.is_none(), "one operation at a time");
        session.next_seq += 1;
        session.outstanding = Some(Operation {
            key,
            bytes: logged.encode(),
            logged,
            send_at: now,
            accepted: false,
        });
    }

    /// Node `position` accepted `logged` (operation `command`) as `entry`.
    pub fn proposed(
        &mut self,
        position: usize,
        client: Option<usize>,
        command: CommandKey,
        logged: LoggedCommand,
        entry: EntryId,
    ) {
        self.pending_writes[position].insert(
            entry.index,
            PendingWrite {
                entry,
                command,
                logged,
                client,
            },
        );
    }

    /// Node `position` applied `entry`, which gave `outcome` (`None`: a no-op). Returns the
    /// reply it sends, if it accepted the proposal of that entry.
    pub fn applied(
        &mut self,
        position: usize,
        node: NodeId,
        entry: &Entry,
        outcome: Option<&Outcome>,
    ) -> Result<Option<Reply>, Violation> {
        let Some(pending) = self.pending_writes[position].remove(&entry.index) else {
            return Ok(None);
        };
        if entry.id() != pending.entry {
            // Overwritten by another leader: unknown outcome, and no reply.
            return Ok(None);
        }
        let (Some(outcome), true) = (outcome, entry_key(entry) == Some(pending.command)) else {
            return Err(Violation::new(
                property::CLIENT_ORACLE,
                format!(
                    "n{node}: propose returned {} for {}, but that entry carries {:?}",
                    pending.entry,
                    pending.command,
                    entry_key(entry)
                ),
            ));
        };
        Ok(Some(Reply {
            client: pending.client,
            command: pending.command,
            logged: pending.logged,
            entry: pending.entry,
            outcome: outcome.clone(),
        }))
    }

    /// `reply` reached its client. Returns the new client instance if the client starts
    /// over (its session expired). `executed_again_allowed`: the operation is the documented
    /// exception (a first command whose session may have been forgotten, executed again), so
    /// its answers may differ.
    pub fn reply_delivered(
        &mut self,
        reply: &Reply,
        executed_again_allowed: bool,
    ) -> Result<Option<u64>, Violation> {
        self.observed_index = self.observed_index.max(reply.entry.index);
        if !is_session_expired(&reply.outcome) && !executed_again_allowed {
            let first = self
                .first_answers
                .entry(reply.command)
                .or_insert_with(|| reply.outcome.clone());
            if *first != reply.outcome {
                return Err(Violation::new(
                    property::EXACTLY_ONCE,
                    format!(
                        "{} answered {} (from {}), but an earlier attempt was answered {}",
                        reply.command,
                        ReplySummary::of(&reply.outcome),
                        reply.entry,
                        ReplySummary::of(first)
                    ),
                ));
            }
        }
        let Some(slot) = reply.client else {
            self.acknowledged_writes += 1;
            return Ok(None);
        };
        let session = &mut self.sessions[slot];
        let waiting = session
            .outstanding
            .as_ref()
            .is_some_and(|operation| operation.key == reply.command);
        if !waiting {
            // A late answer to an attempt of an operation already answered.
            return Ok(None);
        }
        session.outstanding = None;
        let leased_from = match &reply.logged.command {
            Command::GetLeased { topic, .. } | Command::GetBatch { topic, .. } => Some(topic),
            _ => None,
        };
        let deliveries = match &reply.outcome {
            Outcome::Delivered(delivery) => std::slice::from_ref(delivery),
            Outcome::Deliveries(deliveries) => deliveries.as_slice(),
            _ => &[],
        };
        if let Some(topic) = leased_from {
            for delivery in deliveries {
                session
                    .receipts
                    .push((topic.clone(), delivery.receipt.clone()));
            }
            let forgotten = session.receipts.len().saturating_sub(RECEIPTS_KEPT);
            session.receipts.drain(..forgotten);
        }
        self.answered_operations += 1;
        if !is_session_expired(&reply.outcome) {
            return Ok(None);
        }
        self.expired_sessions += 1;
        let client = self.next_client();
        let session = &mut self.sessions[slot];
        session.client = client;
        session.next_seq = 1;
        Ok(Some(client))
    }

    /// Whether any session client still waits for an answer.
    pub fn operations_outstanding(&self) -> bool {
        self.sessions
            .iter()
            .any(|session| session.outstanding.is_some())
    }

    pub fn read_issued(&mut self, position: usize, read_id: u64) {
        self.pending_reads.insert(
            read_id,
            PendingRead {
                node: position,
                must_see: self.observed_index,
                confirmed_index: None,
            },
        );
    }

    /// The core refused the read (not leader, too many pending): the client got an error.
    pub fn read_refused(&mut self, read_id: u64) {
        self.pending_reads.remove(&read_id);
    }

    pub fn read_confirmed(
        &mut self,
        position: usize,
        node: NodeId,
        read_state: ReadState,
    ) -> Result<(), Violation> {
        let read_id = read_state.read_id;
        let Some(read) = self
            .pending_reads
            .get_mut(&read_id)
            .filter(|read| read.node == position && read.confirmed_index.is_none())
        else {
            return Err(Violation::new(
                property::READY_CONTRACT,
                format!("n{node} confirms read r{read_id}, which it has no pending record of"),
            ));
        };
        if read_state.index < read.must_see {
            return Err(Violation::new(
                property::LINEARIZABLE_READS,
                format!(
                    "n{node} confirms read r{read_id} at index {}, but a client observed index {} \
                     before the read was issued",
                    read_state.index, read.must_see
                ),
            ));
        }
        read.confirmed_index = Some(read_state.index);
        Ok(())
    }

    pub fn read_aborted(
        &mut self,
        position: usize,
        node: NodeId,
        read_id: u64,
    ) -> Result<(), Violation> {
        match self.pending_reads.get(&read_id) {
            Some(read) if read.node == position && read.confirmed_index.is_none() => {
                self.pending_reads.remove(&read_id);
                Ok(())
            }
            _ => Err(Violation::new(
                property::READY_CONTRACT,
                format!("n{node} aborts read r{read_id}, which it has no pending record of"),
            )),
        }
    }

    /// Node `position` has applied up to `applied`: answer its confirmed reads that allows.
    pub fn answer_reads(&mut self, position: usize, applied: LogIndex) {
        let answerable: Vec<u64> = self
            .pending_reads
            .iter()
            .filter(|(_, read)| {
                read.node == position && read.confirmed_index.is_some_and(|index| index <= applied)
            })
            .map(|(&read_id, _)| read_id)
            .collect();
        for read_id in answerable {
            self.pending_reads.remove(&read_id);
            self.answered_reads += 1;
            self.observed_index = self.observed_index.max(applied);
        }
    }

    /// Node `position` installed a snapshot up to `index`: it never applies the entries the
    /// snapshot covers itself, so it never answers proposals there (their clients time out).
    pub fn snapshot_installed(&mut self, position: usize, index: LogIndex) {
        self.pending_writes[position].retain(|&pending, _| pending > index);
    }

    /// Everything waiting at node `position` is lost with it: its clients time out.
    pub fn crashed(&mut self, position: usize) {
        self.pending_writes[position].clear();
        self.pending_reads.retain(|_, read| read.node != position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::workload::{encode, message, session_command, unkeyed_put, TOPICS};
    use rrmq::protocol::ErrorInfo;
    use rrmq::raft::{EntryPayload, Term};

    fn put_entry(term: u64, index: u64, message_id: u64) -> (LoggedCommand, Entry) {
        let logged = unkeyed_put(TOPICS[0], message(message_id, 3));
        let entry = Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Command(encode(&logged)),
        };
        (logged, entry)
    }

    #[test]
    fn a_read_must_see_every_write_acknowledged_before_it_was_issued() {
        let mut oracle = ClientOracle::new(2, 0);
        let early_read = oracle.next_read_id();
        oracle.read_issued(1, early_read);
        let (logged, entry) = put_entry(1, 4, 5);
        oracle.proposed(0, None, CommandKey::Unkeyed(5), logged, entry.id());
        let reply = oracle
            .applied(0, NodeId(0), &entry, Some(&Outcome::Done))
            .expect("the proposed entry")
            .expect("a reply");
        oracle.reply_delivered(&reply, false).expect("first answer");
        let late_read = oracle.next_read_id();
        oracle.read_issued(1, late_read);
        // Issued before the acknowledgement: any index will do.
        let early = ReadState {
            read_id: early_read,
            index: LogIndex(2),
        };
        assert!(oracle.read_confirmed(1, NodeId(1), early).is_ok());
        let stale = ReadState {
            read_id: late_read,
            index: LogIndex(3),
        };
        let error = oracle.read_confirmed(1, NodeId(1), stale);
        assert_eq!(
            error.map_err(|v| v.property),
            Err(property::LINEARIZABLE_READS)
        );
    }

    #[test]
    fn an_answered_read_raises_what_later_reads_must_see() {
        let mut oracle = ClientOracle::new(1, 0);
        let first = oracle.next_read_id();
        oracle.read_issued(0, first);
        let confirmed = ReadState {
            read_id: first,
            index: LogIndex(2),
        };
        oracle
            .read_confirmed(0, NodeId(0), confirmed)
            .expect("nothing observed yet");
        oracle.answer_reads(0, LogIndex(6));
        let second = oracle.next_read_id();
        oracle.read_issued(0, second);
        let stale = ReadState {
            read_id: second,
            index: LogIndex(5),
        };
        assert!(oracle.read_confirmed(0, NodeId(0), stale).is_err());
    }

    #[test]
    fn an_overwritten_proposal_is_not_answered() {
        let mut oracle = ClientOracle::new(1, 0);
        let (logged, entry) = put_entry(1, 3, 9);
        oracle.proposed(0, None, CommandKey::Unkeyed(9), logged, entry.id());
        let (_, other) = put_entry(2, 3, 10);
        let reply = oracle.applied(0, NodeId(0), &other, Some(&Outcome::Done));
        assert!(matches!(reply, Ok(None)));
    }

    #[test]
    fn retries_must_get_the_first_answer_and_an_expired_session_starts_over() {
        let mut oracle = ClientOracle::new(1, 1);
        let client = oracle.sessions[0].client;
        let key = CommandKey::Session { client, seq: 1 };
        let logged = session_command(
            client,
            1,
            Command::CreateTopic {
                topic: TOPICS[0].into(),
            },
        );
        oracle.start_operation(0, key, logged.clone(), 0);
        let reply = |outcome: Outcome, index: u64| Reply {
            client: Some(0),
            command: key,
            logged: logged.clone(),
            entry: EntryId::new(Term(1), LogIndex(index)),
            outcome,
        };
        assert_eq!(
            oracle.reply_delivered(&reply(Outcome::Done, 1), false),
            Ok(None)
        );
        assert!(!oracle.operations_outstanding());
        let other = Outcome::Failed(ErrorInfo::new(ErrorCode::TopicExists, "exists"));
        let error = oracle.reply_delivered(&reply(other, 2), false);
        assert_eq!(error.map_err(|v| v.property), Err(property::EXACTLY_ONCE));

        let next = CommandKey::Session { client, seq: 2 };
        oracle.start_operation(0, next, logged.clone(), 0);
        let expired = Reply {
            command: next,
            ..reply(
                Outcome::Failed(ErrorInfo::new(ErrorCode::SessionExpired, "gone")),
                3,
            )
        };
        let renewed = oracle.reply_delivered(&expired, false).expect("an answer");
        assert!(renewed.is_some_and(|renewed| renewed != client));
        assert_eq!(oracle.sessions[0].next_seq, 1);
    }
}
