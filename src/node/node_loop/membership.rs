//! Membership requests (PROTOCOL.md §12) on the leader, and the loop's side of a
//! membership change.
//!
//! - `member GET` lists the membership the leader acts on, learners with `voter: false`.
//! - `member PUT` proposes the node as a learner; once its match index reaches the commit
//!   index (it has caught up) the leader proposes its promotion, and the request is
//!   answered once the promotion is committed. Past the request timeout it is answered
//!   `TIMEOUT` and the add stays in progress: the same PUT again waits for it anew (the
//!   client library retries `TIMEOUT`), a `member DELETE` of the id cancels it (removes
//!   the learner), anything else gets `CHANGE_IN_PROGRESS`.
//! - `member DELETE` proposes the removal and is answered once it is committed; a removal
//!   of the leader itself is answered then too, before the core hands over. A DELETE of an
//!   id already removed answers success (a retried DELETE), of an id never a member
//!   `BAD_REQUEST`.
//!
//! One change at a time: the core refuses a change while the last one is uncommitted, and
//! this module while an add waits for its learner.
//!
//! When the membership the core acts on changes (`Ready::membership`), the address book and
//! the peer connections follow it, and in a keyed cluster the peer keys too: the keys the
//! ZAP handler admits and the DEALERs expect come from the members' `info`, not from
//! `config.json` ([`follow_members`]).
//!
//! A node that has known no leader for a while asks the nodes it knows for the members it
//! has no address for (`node::peer_finder`): a leader added while it was down, which
//! neither its config nor its log names, is heard only once the node connects to it. What
//! it learns that way is kept apart ([`Finding`]) and used for connections (and keys) only,
//! never for the membership, and only for ids that neither the config nor the log give.

use super::NodeLoop;
use crate::config::{Address, NodeConfig};
use crate::node::members::{self, AddressBook};
use crate::node::peer_finder::{KnownNode, MembersFound, FIND_AFTER_ELECTION_TIMEOUTS};
use crate::protocol::{ErrorCode, MemberAddress, Operation, Outcome};
use crate::raft::{Member, Membership, NodeId, ProposeError, Role};
use crate::transport::client::Ticket;
use crate::transport::peer::PeerTransport;
use std::collections::BTreeMap;
use std::time::Instant;

/// What a waiting membership request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaited {
    /// The node is a voter in the committed membership.
    Voter(NodeId),
    /// The node is no longer a member in the committed membership.
    Gone(NodeId),
}

#[derive(Debug)]
struct Waiting {
    ticket: Ticket,
    deadline: Instant,
    awaited: Awaited,
}

/// The loop's side of the peer finder.
#[derive(Debug, Default)]
pub(super) struct Finding {
    /// Since when no leader is known; `None` while one is.
    leaderless_since: Option<Instant>,
    /// When the finder was last asked.
    asked_at: Option<Instant>,
    /// Members the answers named that neither the config nor the log give an address for:
    /// connected to (their keys admitted), and nothing more.
    learned: BTreeMap<NodeId, Address>,
}

/// The membership requests this leader works on.
#[derive(Debug, Default)]
pub(super) struct MemberChanges {
    /// The learner being added, promoted once caught up.
    adding: Option<NodeId>,
    waiting: Vec<Waiting>,
}

impl NodeLoop {
    pub(super) fn on_member_request(
        &mut self,
        ticket: Ticket,
        operation: Operation,
        deadline: Instant,
    ) {
        if self.core.role() != Role::Leader {
            self.fail(
                ticket,
                ErrorCode::NotLeader,
                "this node is not the leader; membership is the leader's to answer and change",
            );
            return;
        }
        match operation {
            Operation::ListMembers => {
                let list = members::list(self.core.membership(), &self.book);
                self.answer(ticket, Outcome::Members(list));
            }
            Operation::AddMember { member } => self.on_add_member(ticket, &member, deadline),
            Operation::RemoveMember { id } => self.on_remove_member(ticket, NodeId(id), deadline),
            other => unreachable!("not a membership request: {other:?}"),
        }
    }

    fn on_add_member(&mut self, ticket: Ticket, member: &MemberAddress, deadline: Instant) {
        let id = NodeId(member.id);
        let address = match members::address_of(member) {
            Ok(address) => address,
            Err(error) => return self.fail(ticket, ErrorCode::BadRequest, &error),
        };
        if self.config.cluster.is_keyed() && address.public_key.is_none() {
            return self.fail(
                ticket,
                ErrorCode::BadRequest,
                "this cluster is keyed: a member PUT must carry the new node's public_key",
            );
        }
        let membership = self.core.membership().clone();
        if membership.is_retired(id) {
            return self.fail(
                ticket,
                ErrorCode::BadRequest,
                &format!("id {id} was used by a removed member; ids are never reused"),
            );
        }
        if let Some(existing) = membership.get(id) {
            // The same add again (a retry after TIMEOUT): wait for it anew.
            if !existing.voter && self.book.get(id) == Some(&address) {
                self.member_changes.adding = Some(id);
                self.wait_for(ticket, deadline, Awaited::Voter(id));
                return;
            }
            return self.fail(
                ticket,
                ErrorCode::BadRequest,
                &format!("id {id} is already a member"),
            );
        }
        if let Some(user) = self.book.port_in_use(&address, id) {
            return self.fail(
                ticket,
                ErrorCode::BadRequest,
                &format!(
                    "member {user} already uses one of these ports on {}",
                    address.ip
                ),
            );
        }
        if let Some(adding) = self.member_changes.adding {
            return self.fail(
                ticket,
                ErrorCode::ChangeInProgress,
                &format!("node {adding} is being added (a member DELETE of it cancels that)"),
            );
        }
        let mut next = membership;
        next.members.push(Member {
            id,
            voter: false,
            info: members::encode_info(&address),
        });
        next.normalize();
        if self.propose_change(ticket, next) {
            log::info!("adding node {id} at {address} as a learner");
            self.member_changes.adding = Some(id);
            self.wait_for(ticket, deadline, Awaited::Voter(id));
        }
    }

    fn on_remove_member(&mut self, ticket: Ticket, id: NodeId, deadline: Instant) {
        let membership = self.core.membership().clone();
        if !membership.contains(id) {
            if membership.is_retired(id) {
                // Already removed: a retried DELETE.
                return self.answer(ticket, Outcome::Done);
            }
            return self.fail(
                ticket,
                ErrorCode::BadRequest,
                &format!("node {id} is not a member"),
            );
        }
        let cancels = self.member_changes.adding == Some(id);
        if !cancels {
            if let Some(adding) = self.member_changes.adding {
                return self.fail(
                    ticket,
                    ErrorCode::ChangeInProgress,
                    &format!("node {adding} is being added (a member DELETE of it cancels that)"),
                );
            }
        }
        let mut next = membership;
        next.members.retain(|member| member.id != id);
        next.retired.push(id);
        next.normalize();
        if self.propose_change(ticket, next) {
            log::info!("removing node {id}");
            if cancels {
                log::info!("the add of node {id} is cancelled");
                self.member_changes.adding = None;
                let cancelled: Vec<Ticket> = self
                    .take_waiting(|awaited| awaited == Awaited::Voter(id))
                    .collect();
                for waiting in cancelled {
                    self.fail(
                        waiting,
                        ErrorCode::BadRequest,
                        &format!("the add of node {id} was cancelled by a member DELETE"),
                    );
                }
            }
            self.wait_for(ticket, deadline, Awaited::Gone(id));
        }
    }

    /// Proposes `next`; on refusal answers `ticket` and returns false.
    fn propose_change(&mut self, ticket: Ticket, next: Membership) -> bool {
        match self.core.propose_membership(next) {
            Ok(entry) => {
                log::debug!("membership change proposed at {entry}");
                true
            }
            Err(error) => {
                self.refused_change(ticket, error);
                false
            }
        }
    }

    fn refused_change(&mut self, ticket: Ticket, error: ProposeError) {
        let (code, message) = match error {
            ProposeError::ChangeInProgress => (
                ErrorCode::ChangeInProgress,
                "another membership change is not committed yet".to_string(),
            ),
            ProposeError::InvalidChange(why) => (ErrorCode::BadRequest, why),
            ProposeError::NotLeader { .. } => (
                ErrorCode::NotLeader,
                "this node is not the leader".to_string(),
            ),
            ProposeError::LeaderNotReady | ProposeError::TransferInProgress => (
                ErrorCode::Unavailable,
                "the leader is not ready for a membership change yet; retry shortly".to_string(),
            ),
            other => (ErrorCode::Unavailable, other.to_string()),
        };
        self.fail(ticket, code, &message);
    }

    fn wait_for(&mut self, ticket: Ticket, deadline: Instant, awaited: Awaited) {
        self.member_changes.waiting.push(Waiting {
            ticket,
            deadline,
            awaited,
        });
    }

    fn take_waiting(
        &mut self,
        mut which: impl FnMut(Awaited) -> bool,
    ) -> impl Iterator<Item = Ticket> {
        let (taken, kept): (Vec<Waiting>, Vec<Waiting>) =
            std::mem::take(&mut self.member_changes.waiting)
                .into_iter()
                .partition(|waiting| which(waiting.awaited));
        self.member_changes.waiting = kept;
        taken.into_iter().map(|waiting| waiting.ticket)
    }

    /// Every round: answers the membership requests whose change is committed, promotes a
    /// learner that has caught up, and answers late ones `TIMEOUT` (the change stays in
    /// progress) or, after a leadership change, `NOT_LEADER`.
    pub(super) fn tend_member_changes(&mut self, now: Instant) {
        if self.member_changes.adding.is_none() && self.member_changes.waiting.is_empty() {
            return;
        }
        let committed = self.core.committed_membership().clone();
        let done: Vec<Ticket> = self
            .take_waiting(|awaited| match awaited {
                Awaited::Voter(id) => committed.is_voter(id),
                Awaited::Gone(id) => !committed.contains(id) && committed.is_retired(id),
            })
            .collect();
        for ticket in done {
            self.answer(ticket, Outcome::Done);
        }
        if self.core.role() != Role::Leader || self.halted {
            self.member_changes.adding = None;
            let lost: Vec<Ticket> = self.take_waiting(|_| true).collect();
            for ticket in lost {
                self.fail(
                    ticket,
                    ErrorCode::NotLeader,
                    "leadership changed before the membership change was done; it may or may \
                     not take effect (member GET on the new leader tells)",
                );
            }
            return;
        }
        if let Some(id) = self.member_changes.adding {
            if committed.is_voter(id) {
                self.member_changes.adding = None;
            } else if !self.core.membership().contains(id) {
                // Its learner entry was overwritten: nothing is in progress any more.
                self.member_changes.adding = None;
            } else if !self.core.membership().is_voter(id) && !self.core.change_in_progress() {
                self.maybe_promote(id);
            }
        }
        let late: Vec<Ticket> = self
            .member_changes
            .waiting
            .iter()
            .filter(|waiting| waiting.deadline <= now)
            .map(|waiting| waiting.ticket)
            .collect();
        if !late.is_empty() {
            self.member_changes
                .waiting
                .retain(|waiting| waiting.deadline > now);
            for ticket in late {
                self.fail(
                    ticket,
                    ErrorCode::Timeout,
                    "the membership change is not done yet (a learner still catching up, or \
                     the change not committed); it stays in progress",
                );
            }
        }
    }

    /// Proposes the learner's promotion once its log reaches the commit index.
    fn maybe_promote(&mut self, id: NodeId) {
        let status = self.core.status();
        let commit = status.commit_index;
        let caught_up = status
            .progress
            .iter()
            .any(|progress| progress.id == id && progress.match_index >= commit);
        if !caught_up {
            return;
        }
        let mut next = self.core.membership().clone();
        for member in &mut next.members {
            if member.id == id {
                member.voter = true;
            }
        }
        match self.core.propose_membership(next) {
            Ok(entry) => log::info!("node {id} has caught up; promoted to voter at {entry}"),
            Err(error) => log::debug!("promotion of node {id} not proposed yet: {error}"),
        }
    }

    /// The membership the core acts on changed: the address book and the peer connections
    /// follow it.
    pub(super) fn on_membership(&mut self, membership: &Membership) {
        self.book = AddressBook::new(membership, &self.config.cluster);
        self.connect_peers();
        log::info!(
            "membership: voters {:?}, learners {:?}",
            membership
                .voters()
                .iter()
                .map(|id| id.0)
                .collect::<Vec<_>>(),
            membership
                .learners()
                .iter()
                .map(|id| id.0)
                .collect::<Vec<_>>()
        );
        if membership.is_retired(self.config.id) && !self.removed_logged {
            self.removed_logged = true;
            log::warn!(
                "this node (id {}) was removed from the cluster: it no longer votes, \
                 campaigns or serves clients; stop it and wipe its data dir",
                self.config.id
            );
        }
    }

    /// Connects to the members of the acting membership and, while a change is in progress,
    /// to those of the last committed one too: a node being removed must still receive the
    /// entry that removes it (the core replicates to it until that entry commits), so that
    /// it knows, even after a restart, that it was removed. And to every node of the config
    /// file that the acting membership has not retired: a node that replays an old part of
    /// the log (a node just added, catching up from the start) acts on an old membership,
    /// which may not list the leader it replicates from (added since); without a connection
    /// to it, its answers are dropped and it never catches up. Called when the acting
    /// membership changes and when a membership entry commits.
    ///
    /// And to the members the peer finder learned of that the log does not name (yet): see
    /// [`NodeLoop::on_members_found`].
    pub(super) fn connect_peers(&mut self) {
        let (book, acting) = (&self.book, self.core.membership());
        self.finding
            .learned
            .retain(|id, _| book.get(*id).is_none() && !acting.is_retired(*id));
        follow_members(
            &self.peers,
            &self.config,
            &self.book,
            self.core.membership(),
            self.core.committed_membership(),
            &self.finding.learned,
        );
    }

    /// Every round: once no leader has been known for [`FIND_AFTER_ELECTION_TIMEOUTS`]
    /// election timeouts, and again as often while that lasts, asks the peer finder for the
    /// members this node has no address for. Not on a leader, a removed, halted or stopping
    /// node.
    pub(super) fn maybe_find_peers(&mut self, now: Instant) {
        let finding = &mut self.finding;
        if self.halted
            || self.shutdown.is_some()
            || self.core.is_removed()
            || self.core.leader().is_some()
        {
            finding.leaderless_since = None;
            return;
        }
        let wait =
            self.config.tick * self.config.raft.election_ticks_max * FIND_AFTER_ELECTION_TIMEOUTS;
        let since = *finding.leaderless_since.get_or_insert(now);
        let asked_lately = finding
            .asked_at
            .is_some_and(|asked| now.duration_since(asked) < wait);
        if now.duration_since(since) < wait || asked_lately {
            return;
        }
        let first = finding.asked_at.is_none_or(|asked| asked < since);
        finding.asked_at = Some(now);
        let known = self.known_nodes();
        let ids: Vec<u64> = known.iter().map(|node| node.id.0).collect();
        if first {
            log::info!(
                "no leader known for {:?}: asking nodes {ids:?} for the members this node has \
                 no address for",
                now.duration_since(since)
            );
        } else {
            log::debug!("still no leader known: asking nodes {ids:?} again");
        }
        self.finder.ask(known);
    }

    /// The nodes to ask: the members of the acting membership, then the config's nodes it
    /// has not retired; never this node, never one only the finder told of.
    fn known_nodes(&self) -> Vec<KnownNode> {
        let me = self.config.id;
        let acting = self.core.membership();
        let mut known: Vec<KnownNode> = self
            .book
            .iter()
            .map(|(id, address)| KnownNode {
                id,
                address: address.clone(),
            })
            .collect();
        for (index, address) in self.config.cluster.addresses.iter().enumerate() {
            let id = NodeId(index as u64);
            if !acting.is_retired(id) && !known.iter().any(|node| node.id == id) {
                known.push(KnownNode {
                    id,
                    address: address.clone(),
                });
            }
        }
        known.retain(|node| node.id != me);
        known
    }

    /// The peer finder's answer: keeps, of the members it names, those this node has no
    /// address for (neither the config nor the acting or committed membership gives one,
    /// and the acting membership has not retired them), and connects to them. They stay
    /// out of the membership: that comes from the log alone, so an answer cannot make a
    /// node a member or a voter here, only a peer connected to.
    pub(super) fn on_members_found(&mut self, found: MembersFound) {
        let MembersFound(Some(members)) = found else {
            return; // Nobody answered: keep what was learned before.
        };
        let me = self.config.id;
        let acting = self.core.membership();
        let committed = self.core.committed_membership();
        let learned: BTreeMap<NodeId, Address> = members
            .into_iter()
            .filter(|(id, _)| {
                *id != me
                    && self.book.get(*id).is_none()
                    && !committed.contains(*id)
                    && !acting.is_retired(*id)
                    && self.config.cluster.address(*id).is_none()
            })
            .collect();
        if learned == self.finding.learned {
            return;
        }
        if !learned.is_empty() {
            log::info!(
                "the members this node knows name nodes {:?}, which its config and log do \
                 not: connecting to them",
                learned.keys().map(|id| id.0).collect::<Vec<_>>()
            );
        }
        self.finding.learned = learned;
        self.connect_peers();
    }
}

/// Points the peer transport at the members of `acting` and of `committed`, at the nodes
/// of `config.json` that `acting_members` has not retired, and at the `learned` ones it has
/// not retired either (see [`NodeLoop::connect_peers`]), in that order of precedence for an
/// id listed twice: their connections and, in a keyed cluster, their keys, set
/// first so that a DEALER to an added peer finds its key. The same union for both: a node
/// being removed is admitted on the peer port until its removal commits, as long as it is
/// connected to. This node's own key is always admitted.
pub(super) fn follow_members(
    peers: &PeerTransport,
    config: &NodeConfig,
    acting: &AddressBook,
    acting_members: &Membership,
    committed: &Membership,
    learned: &BTreeMap<NodeId, Address>,
) {
    let me = config.id;
    let committed = AddressBook::new(committed, &config.cluster);
    let unretired: Vec<(NodeId, &Address)> = config
        .cluster
        .addresses
        .iter()
        .enumerate()
        .map(|(index, address)| (NodeId(index as u64), address))
        .chain(learned.iter().map(|(id, address)| (*id, address)))
        .filter(|(id, _)| *id != me && !acting_members.is_retired(*id))
        .collect();
    let mut links = acting.peers(me);
    let extra_links = committed.peers(me).into_iter().chain(
        unretired
            .iter()
            .map(|(id, address)| (*id, address.internal_endpoint())),
    );
    for (id, endpoint) in extra_links {
        if !links.iter().any(|(known, _)| *known == id) {
            links.push((id, endpoint));
        }
    }
    if let Some(own) = &config.key_pair {
        let mut keys = acting.keys();
        let extra_keys = committed.keys().into_iter().chain(
            unretired
                .iter()
                .filter_map(|(id, address)| Some((*id, address.public_key?))),
        );
        for (id, key) in extra_keys {
            if !keys.iter().any(|(known, _)| *known == id) {
                keys.push((id, key));
            }
        }
        keys.retain(|(id, _)| *id != me);
        keys.push((me, own.public));
        keys.sort_by_key(|(id, _)| *id);
        peers.set_peer_keys(keys);
    }
    peers.set_peers(links);
}
