//! Admission: client requests in, answers out. Each request is answered at once (`status`,
//! `stats`, `fault`, or a refusal: shutting down, halted, not the leader, too many bytes
//! uncommitted) or proposed as it arrives (writes) or registered as a read (`ReadIndex`),
//! and then waits in `PendingRequests` until applied, overwritten, confirmed or expired;
//! requests never wait for one another.
//!
//! The bound on uncommitted bytes (`--uncommitted-bytes-max`) answers `UNAVAILABLE`, not
//! `QUOTA`: it is this leader's state, not the cluster's, it passes as soon as the
//! followers catch up, and the write was not proposed, so a retry (which every client
//! already does on `UNAVAILABLE`, with back-off) is safe and likely to succeed. `QUOTA`
//! (queued bytes, topic count) is decided by the replicated queue at apply time.

use super::NodeLoop;
use crate::node::pending::UncommittedBytes;
use crate::node::status::{self, NodeView};
use crate::protocol::{ErrorCode, ErrorInfo, Operation, Outcome, Reply};
use crate::queue::{Command, LoggedCommand};
use crate::raft::{NodeId, ProposeError, Role};
use crate::transport::client::{ClientRequest, Ticket};
use std::time::Instant;

impl NodeLoop {
    pub(super) fn on_client_request(&mut self, client_request: ClientRequest) {
        let ClientRequest {
            ticket,
            request,
            received_at,
        } = client_request;
        let operation = request.operation;
        if operation == Operation::Status {
            let reply = status::status(&NodeView {
                config: &self.config,
                core: &self.core,
                applied: self.applied,
                halted: self.halted,
                wal: self.wal_counters(),
            });
            self.clients.reply(ticket, reply);
            return;
        }
        if operation == Operation::Stats {
            let reply = status::stats(self.config.id, &self.queue, self.applied);
            self.clients.reply(ticket, reply);
            return;
        }
        if let Operation::Fault { drop_to, drop_from } = operation {
            self.on_fault(ticket, &drop_to, &drop_from);
            return;
        }
        if self.shutdown.is_some() {
            self.fail(
                ticket,
                ErrorCode::ShuttingDown,
                "the node is shutting down; retry on another node",
            );
            return;
        }
        if self.halted {
            self.fail(
                ticket,
                ErrorCode::Unavailable,
                "this node has stopped serving (its log says why); use another node",
            );
            return;
        }
        // From arrival at the socket, so time queued behind other events counts. One client
        // thread stamps them in channel order, so deadlines stay in arrival order.
        let deadline = received_at + self.config.request_timeout;
        let command = match operation {
            Operation::Status | Operation::Stats | Operation::Fault { .. } => {
                unreachable!("answered above")
            }
            Operation::ListTopics => {
                let read_id = self.next_read_id;
                self.next_read_id += 1;
                match self.core.read_index(read_id) {
                    Ok(()) => self.pending.add_read(read_id, ticket, deadline),
                    Err(error) => self.refused(ticket, error),
                }
                return;
            }
            Operation::CreateTopic { topic } => Command::CreateTopic { topic },
            Operation::Put { topic, message } => Command::Put { topic, message },
            Operation::Get { topic } => Command::Get { topic },
        };
        let bytes = LoggedCommand {
            session: request.session,
            command,
        }
        .encode();
        let size = UncommittedBytes::size_of(bytes.len());
        let leading = (self.core.role() == Role::Leader).then(|| self.core.term());
        self.uncommitted.release(leading, self.core.commit_index());
        if leading.is_some()
            && !self
                .uncommitted
                .admits(size, self.config.uncommitted_bytes_max)
        {
            log::debug!(
                "request {ticket:?} refused: {} bytes uncommitted",
                self.uncommitted.bytes()
            );
            self.fail(
                ticket,
                ErrorCode::Unavailable,
                &format!(
                    "the leader has {} bytes of writes waiting to commit, its limit \
                     (--uncommitted-bytes-max {}); not applied, retry shortly",
                    self.uncommitted.bytes(),
                    self.config.uncommitted_bytes_max
                ),
            );
            return;
        }
        match self.core.propose(bytes) {
            Ok(entry) => {
                log::trace!("request {ticket:?} proposed at {entry}");
                self.uncommitted.add(entry, size);
                if let Some(overwritten) = self.pending.add_write(entry, ticket, deadline) {
                    self.answer_lost(overwritten);
                }
            }
            Err(error) => self.refused(ticket, error),
        }
    }

    /// Tests only (`transport::fault`): from now on, drop peer messages to and from the named
    /// nodes. Refused unless the node was started with `--fault-injection`.
    fn on_fault(&mut self, ticket: Ticket, drop_to: &[u64], drop_from: &[u64]) {
        if !self.config.fault_injection {
            self.fail(
                ticket,
                ErrorCode::BadRequest,
                "fault injection is for tests only and is off: start the node with \
                 --fault-injection to enable it",
            );
            return;
        }
        log::warn!("fault injection: dropping messages to {drop_to:?} and from {drop_from:?}");
        let to: Vec<NodeId> = drop_to.iter().map(|id| NodeId(*id)).collect();
        let from: Vec<NodeId> = drop_from.iter().map(|id| NodeId(*id)).collect();
        self.peers.faults().set(&to, &from);
        self.answer(ticket, Outcome::Done);
    }

    fn refused(&mut self, ticket: Ticket, error: ProposeError) {
        match error {
            ProposeError::NotLeader { .. } => {
                self.fail(ticket, ErrorCode::NotLeader, "this node is not the leader")
            }
            ProposeError::TransferInProgress => self.fail(
                ticket,
                ErrorCode::Unavailable,
                "leadership is being transferred; retry shortly",
            ),
            ProposeError::TooManyPendingReads => self.fail(
                ticket,
                ErrorCode::Unavailable,
                "too many reads in flight; retry shortly",
            ),
            ProposeError::UnknownPeer(peer) => {
                unreachable!("reads and proposals name no peer, yet the core named {peer}")
            }
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        for ticket in self.pending.take_expired(now) {
            self.fail(
                ticket,
                ErrorCode::Timeout,
                &format!(
                    "not committed within {} ms; the outcome is unknown",
                    self.config.request_timeout.as_millis()
                ),
            );
        }
    }

    /// A write whose entry was overwritten by a new leader: it never took effect.
    pub(super) fn answer_lost(&mut self, ticket: Ticket) {
        if self.core.role() == Role::Leader {
            self.fail(
                ticket,
                ErrorCode::Unavailable,
                "leadership changed before the request committed; it was not applied",
            );
        } else {
            self.fail(
                ticket,
                ErrorCode::NotLeader,
                "leadership changed before the request committed; it was not applied",
            );
        }
    }

    pub(super) fn fail(&mut self, ticket: Ticket, code: ErrorCode, message: &str) {
        self.answer(ticket, Outcome::Failed(ErrorInfo::new(code, message)));
    }

    pub(super) fn answer(&mut self, ticket: Ticket, outcome: Outcome) {
        let leader = status::leader_info(&self.config, &self.core, self.halted);
        self.clients
            .reply(ticket, Reply::Outcome { outcome, leader });
    }
}
