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

use super::waiting::BlockingGet;
use super::NodeLoop;
use crate::node::pending::UncommittedBytes;
use crate::node::status::{self, NodeView};
use crate::protocol::{ErrorCode, ErrorInfo, Operation, Outcome, Reply, Request, SessionKey};
use crate::queue::{Command, LoggedCommand};
use crate::raft::{NodeId, ProposeError, Role};
use crate::transport::client::{ClientRequest, Ticket};
use std::time::Instant;

/// How far past a lease's deadline the leader's lease clock must be before it proposes the
/// lease's end. The deadline was stamped when the grant was proposed, a commit earlier than
/// its answer; the margin covers that commit, so that a lease ends no earlier than `lease_ms`
/// after the answer, and still within about a second after (PROTOCOL.md §8).
const LEASE_END_MARGIN_MS: u64 = 500;

/// The most requests a leader holds until it can read its lease clock (a few round trips
/// after its election): beyond, they are answered `UNAVAILABLE` at once.
const AWAITING_CLOCK_MAX: usize = 10_000;

/// Whether the command for `operation` carries the lease clock's time (a lease granted or
/// renewed).
fn needs_lease_clock(operation: &Operation) -> bool {
    match operation {
        Operation::Fetch { options, .. } => options.lease_ms.is_some(),
        Operation::Touch { .. } => true,
        _ => false,
    }
}

impl NodeLoop {
    pub(super) fn on_client_request(&mut self, client_request: ClientRequest) {
        let ticket = client_request.ticket;
        let operation = &client_request.request.operation;
        if *operation == Operation::Status {
            let reply = status::status(&NodeView {
                config: &self.config,
                core: &self.core,
                applied: self.applied,
                halted: self.halted,
                wal: self.wal_counters(),
                requests: self.requests,
            });
            self.clients.reply(ticket, reply);
            return;
        }
        if *operation == Operation::Stats {
            let reply = status::stats(
                self.config.id,
                self.config.cluster.cluster_id,
                &self.queue,
                self.applied,
                crate::node::members::list(self.core.membership(), &self.book),
            );
            self.clients.reply(ticket, reply);
            return;
        }
        self.requests += 1;
        self.admit(client_request);
    }

    /// Answers or proposes a request other than `status` and `stats`.
    fn admit(&mut self, client_request: ClientRequest) {
        let ClientRequest {
            ticket,
            request,
            received_at,
        } = client_request;
        let operation = request.operation;
        if let Operation::Fault {
            drop_to,
            drop_from,
            stop_zap_handler,
        } = operation
        {
            self.on_fault(ticket, &drop_to, &drop_from, stop_zap_handler);
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
        if self.core.is_removed() && self.core.role() != Role::Leader {
            self.fail(
                ticket,
                ErrorCode::NotLeader,
                "this node was removed from the cluster (PROTOCOL.md §12) and serves no \
                 more requests; use the cluster's members (rrmq member list)",
            );
            return;
        }
        // From arrival at the socket, so time queued behind other events counts. One client
        // thread stamps them in channel order, so deadlines stay in arrival order.
        let deadline = received_at + self.config.request_timeout;
        if matches!(
            operation,
            Operation::ListMembers | Operation::AddMember { .. } | Operation::RemoveMember { .. }
        ) {
            self.on_member_request(ticket, operation, deadline);
            return;
        }
        if needs_lease_clock(&operation)
            && self.core.role() == Role::Leader
            && !self.caught_up_in_term()
        {
            let request = Request {
                operation,
                ..request
            };
            self.await_lease_clock(ClientRequest {
                ticket,
                request,
                received_at,
            });
            return;
        }
        let waiter =
            match self.admit_blocking_get(ticket, &operation, &request.session, received_at) {
                BlockingGet::Held => return,
                BlockingGet::Propose(waiter) => waiter,
            };
        let command = match operation {
            Operation::Status
            | Operation::Stats
            | Operation::Fault { .. }
            | Operation::ListMembers
            | Operation::AddMember { .. }
            | Operation::RemoveMember { .. } => {
                unreachable!("answered above")
            }
            Operation::ListTopics | Operation::ListTopicDetails => {
                let read_id = self.next_read_id;
                self.next_read_id += 1;
                match self.core.read_index(read_id) {
                    Ok(()) => {
                        if operation == Operation::ListTopicDetails {
                            self.detail_reads.insert(ticket);
                        }
                        self.pending.add_read(read_id, ticket, deadline)
                    }
                    Err(error) => self.refused(ticket, error),
                }
                return;
            }
            // Leases are stamped with the cluster's lease clock (`lease_clock`): a leader
            // that cannot read it yet holds the requests that need it (above), so the
            // placeholder only reaches commands that carry no time, or a proposal that a
            // node not leading refuses. `wait_ms` is handled above (`waiting`).
            operation => {
                let now_ms = self.lease_clock_ms().unwrap_or(0);
                match Command::from_operation(operation, now_ms) {
                    Ok(command) => command,
                    Err(read) => unreachable!("reads are answered above, not {read:?}"),
                }
            }
        };
        if self.propose_command(ticket, request.session, command, deadline) {
            if let Some(waiter) = waiter {
                self.waiters.start(waiter);
            }
        }
    }

    /// Proposes `command` for `ticket`, unless the bound on uncommitted bytes or the core
    /// refuses it (then `ticket` is answered). True if proposed: the ticket then waits in
    /// `pending` for its entry.
    pub(super) fn propose_command(
        &mut self,
        ticket: Ticket,
        session: Option<SessionKey>,
        command: Command,
        deadline: Instant,
    ) -> bool {
        let logged = LoggedCommand { session, command };
        let bytes = logged.encode();
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
            return false;
        }
        match self.core.propose(bytes) {
            Ok(entry) => {
                log::trace!("request {ticket:?} proposed at {entry}");
                self.uncommitted.add(entry, size);
                self.note_proposed_get(entry, &logged.command);
                if let Some(overwritten) = self.pending.add_write(entry, ticket, deadline) {
                    self.answer_lost(overwritten);
                }
                true
            }
            Err(error) => {
                self.refused(ticket, error);
                false
            }
        }
    }

    /// Tests only (`transport::fault`): from now on, drop peer messages to and from the named
    /// nodes. Refused unless the node was started with `--fault-injection`.
    fn on_fault(
        &mut self,
        ticket: Ticket,
        drop_to: &[u64],
        drop_from: &[u64],
        stop_zap_handler: bool,
    ) {
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
        if stop_zap_handler {
            log::warn!("fault injection: stopping the ZAP handler");
            self.peers.faults().stop_zap_handler();
        }
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
            ProposeError::ChangeInProgress
            | ProposeError::LeaderNotReady
            | ProposeError::InvalidChange(_) => {
                unreachable!("reads and proposals change no membership, yet the core said {error}")
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

    /// At each tick, on a leader that has caught up in its term (`lease_clock`): once its
    /// lease clock passes the earliest lease deadline by [`LEASE_END_MARGIN_MS`], proposes
    /// `EndLeases`, which ends every lease due by then (PROTOCOL.md §8); one proposal at a
    /// time: the next waits until this one is applied (or a new term began, in which it may
    /// have been overwritten). While leases are live and nothing else carried the clock
    /// lately, proposes a `Clock` entry.
    pub(super) fn maybe_end_leases(&mut self) {
        if self.halted || self.shutdown.is_some() {
            return;
        }
        let Some(now_ms) = self.lease_clock_ms() else {
            return;
        };
        let next_deadline = self.queue.next_lease_deadline();
        if let Some(clock_ms) = self.lease_clock.clock_entry_due(
            self.core.term(),
            self.queue.clock_ms(),
            next_deadline.is_some(),
            Instant::now(),
        ) {
            if self
                .propose_own(Command::Clock { now_ms: clock_ms })
                .is_some()
            {
                self.lease_clock.clock_proposed(Instant::now());
            }
        }
        // A proposal of an earlier term may have been overwritten and never apply.
        let term = self.core.term();
        if self
            .lease_end_proposed
            .is_some_and(|entry| entry.term == term && entry.index > self.applied)
        {
            return;
        }
        let Some(deadline_ms) = next_deadline else {
            return;
        };
        let now_ms = now_ms.saturating_sub(LEASE_END_MARGIN_MS);
        if deadline_ms > now_ms {
            return;
        }
        if let Some(entry) = self.propose_own(Command::EndLeases { now_ms }) {
            log::debug!("leases due by {now_ms} ms end at {entry}");
            self.lease_end_proposed = Some(entry);
        }
    }

    /// Proposes a command of the leader's own (no session, no client waiting).
    fn propose_own(&mut self, command: Command) -> Option<crate::raft::EntryId> {
        let bytes = LoggedCommand {
            session: None,
            command,
        }
        .encode();
        let size = UncommittedBytes::size_of(bytes.len());
        match self.core.propose(bytes) {
            Ok(entry) => {
                self.uncommitted.add(entry, size);
                Some(entry)
            }
            Err(error) => {
                log::debug!("lease clock entry not proposed: {error:?}");
                None
            }
        }
    }

    /// The lease clock's time now, in ms, on a leader that has applied every entry of
    /// earlier terms: what a leased GET, TOUCH, `EndLeases` or `Clock` entry proposed now
    /// carries. None on any other node, which must propose nothing that carries a time
    /// (`lease_clock`: why it never ends a lease early).
    pub(super) fn lease_clock_ms(&mut self) -> Option<u64> {
        if self.core.role() != Role::Leader || !self.caught_up_in_term() {
            return None;
        }
        let (term, log_ms) = (self.core.term(), self.queue.clock_ms());
        Some(self.lease_clock.read(term, log_ms, Instant::now()))
    }

    /// Holds a request that needs the lease clock until this leader has caught up in its
    /// term, usually one commit after its election (see
    /// [`NodeLoop::release_awaiting_clock`]).
    fn await_lease_clock(&mut self, request: ClientRequest) {
        if self.awaiting_clock.len() >= AWAITING_CLOCK_MAX {
            self.fail(
                request.ticket,
                ErrorCode::Unavailable,
                "this leader was just elected and holds too many requests until it has caught \
                 up; nothing was done, retry shortly",
            );
            return;
        }
        self.awaiting_clock.push(request);
    }

    /// Once per round: the requests held for the lease clock go on once this leader has
    /// caught up, or once it no longer leads (refused then as any request would be); while
    /// it still catches up, those past their deadline are refused (nothing was proposed).
    pub(super) fn release_awaiting_clock(&mut self, now: Instant) {
        if self.awaiting_clock.is_empty() {
            return;
        }
        let leading = !self.halted && self.shutdown.is_none() && self.core.role() == Role::Leader;
        if leading && !self.caught_up_in_term() {
            let timeout = self.config.request_timeout;
            let (late, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting_clock)
                .into_iter()
                .partition(|request| request.received_at + timeout <= now);
            self.awaiting_clock = held;
            for request in late {
                self.fail(
                    request.ticket,
                    ErrorCode::Unavailable,
                    "this leader was elected moments ago and has not caught up yet; nothing \
                     was done, retry shortly",
                );
            }
            return;
        }
        for request in std::mem::take(&mut self.awaiting_clock) {
            self.admit(request);
        }
    }

    pub(super) fn fail(&mut self, ticket: Ticket, code: ErrorCode, message: &str) {
        self.answer(ticket, Outcome::Failed(ErrorInfo::new(code, message)));
    }

    pub(super) fn answer(&mut self, ticket: Ticket, outcome: Outcome) {
        // Empty unless someone asked for topic details: one branch on the hot path.
        let outcome = if self.detail_reads.is_empty() {
            outcome
        } else {
            match outcome {
                Outcome::Topics(_) if self.detail_reads.remove(&ticket) => {
                    Outcome::TopicDetails(self.queue.topic_details())
                }
                outcome => {
                    self.detail_reads.remove(&ticket);
                    outcome
                }
            }
        };
        // Empty unless a blocking GET's entry is in flight: it ends with this answer, and so
        // do the requests a retry of it superseded (`waiting`).
        let superseded = if self.waiters.has_in_flight() {
            self.superseded_replies(ticket, &outcome)
        } else {
            Vec::new()
        };
        let leader = status::leader_info(&self.book, &self.core, self.halted);
        for (older, outcome) in superseded {
            let leader = leader.clone();
            self.clients
                .reply(older, Reply::Outcome { outcome, leader });
        }
        self.clients
            .reply(ticket, Reply::Outcome { outcome, leader });
    }
}
