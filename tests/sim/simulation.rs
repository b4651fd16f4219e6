//! One simulated run: a fault phase, then a liveness phase, every choice drawn from the seed.
//!
//! Each tick: faults (partitions, crashes, restarts) and client requests arrive, every live
//! core ticks, the messages due are delivered in random order (lost snapshot transfers
//! reported to their leaders), every node finishes and takes its `Ready`s, some nodes save a
//! snapshot and compact, and every core's `check_invariants` runs. The checkers run after
//! every call into a core (see `node.rs`).
//!
//! The fault phase proves safety. The liveness phase then heals the network, speeds up the
//! disks, restarts all but at most a minority of the crashed nodes, and requires that within
//! a bounded number of ticks a leader is elected, a fresh proposal is applied on every live
//! node and every session client's outstanding operation is answered (TigerBeetle
//! `src/vopr.zig`: a safety phase, then a liveness phase). Last, the live nodes catch up and
//! their state machines are compared with the reference, and the reference's messages with
//! what the operations' effects left.

use super::checkers::{self, Checkers};
use super::client::ClientOracle;
use super::network::Network;
use super::node::SimNode;
use super::scenario::{Scenario, CALM_STORAGE_DELAY_TICKS_MAX};
use super::trace::{error_name, CrashPoint, Event, Trace};
use super::workload::{self, CommandKey, TOPICS};
use super::{property, Violation};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rrmq::protocol::TopicSettings;
use rrmq::queue::{Command, LeaseTime, LoggedCommand};
use rrmq::raft::{EntryId, Membership, NodeId, ProposeError, Role};
use std::collections::BTreeSet;
use std::fmt::Write;

/// What a run did, to report totals and to compare two runs of one seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub ticks: u64,
    pub committed_entries: u64,
    /// Unkeyed PUTs answered.
    pub acknowledged_writes: u64,
    /// Session operations answered, attempts after the first, answers `SESSION_EXPIRED`,
    /// and applications of a command the session table recognised as a retry.
    pub answered_operations: u64,
    pub retries: u64,
    pub expired_sessions: u64,
    pub replays: u64,
    /// Committed commands the state machine refused with `QUOTA`.
    pub quota_refusals: u64,
    /// Messages handed out under a lease, ACKed, given back (NACK or lease end), and moved
    /// to a dead-letter topic or discarded at their delivery limit.
    pub leases_granted: u64,
    pub acks: u64,
    pub given_back: u64,
    pub dead_lettered: u64,
    pub snapshots_saved: u64,
    pub snapshots_installed: u64,
    pub restarts_from_snapshot: u64,
    /// `Ready`s taken while batches of earlier ones were still unfinished, and batches
    /// made durable in a sync group with others.
    pub pipelined_readies: u64,
    pub grouped_batches: u64,
    /// Whole-state digests compared.
    pub digests_compared: u64,
    pub answered_reads: u64,
    pub terms_with_leader: u64,
    pub crashes: u64,
    /// Dropped connections reported to a follower about the leader it follows.
    pub leader_connection_drops: u64,
    /// Membership changes the leader accepted.
    pub membership_changes: u64,
    pub messages_sent: u64,
    pub messages_lost: u64,
    /// Ticks the liveness phase took to converge (in totals: the longest).
    pub liveness_ticks: u64,
    pub trace_digest: u64,
}

/// A client refused without learning who leads waits this long before trying again.
const REFUSED_BACKOFF_TICKS: u64 = 3;

pub struct Simulation {
    pub(super) rng: ChaCha8Rng,
    pub(super) scenario: Scenario,
    pub(super) now: u64,
    pub(super) voters: Vec<NodeId>,
    pub(super) nodes: Vec<SimNode>,
    pub(super) network: Network,
    pub(super) checkers: Checkers,
    pub(super) clients: ClientOracle,
    pub(super) trace: Trace,
    /// Off in the liveness phase: no more crashes or disk stalls there.
    pub(super) faults_enabled: bool,
    pub(super) crash_count: u64,
    pub(super) snapshots_saved: u64,
    pub(super) snapshots_installed: u64,
    pub(super) restarts_from_snapshot: u64,
    pub(super) pipelined_readies: u64,
    pub(super) grouped_batches: u64,
    /// Per unkeyed writer and reader: the node it sends requests to (see `client_target`).
    leader_guesses: Vec<Option<usize>>,
    /// Per node: its last `EndLeases` proposal (see `propose_lease_ends`).
    lease_end_proposed: Vec<Option<EntryId>>,
    /// How long the liveness phase took to converge.
    liveness_ticks: u64,
    /// Connection reports on their way to the cores, in the order they were scheduled.
    connection_reports: Vec<ConnectionReport>,
    leader_connection_drops: u64,
    membership_changes: u64,
    /// The highest term any node was seen in (for the membership checker).
    highest_term_seen: rrmq::raft::Term,
}

/// A transport's report that a node's connection to `peer` dropped (`lost`) or came back.
struct ConnectionReport {
    due_tick: u64,
    position: usize,
    peer: NodeId,
    lost: bool,
}

impl Simulation {
    pub fn new(seed: u64, trace_capacity: usize) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scenario = Scenario::draw(&mut rng);
        let all: Vec<NodeId> = (0..scenario.node_count as u64).map(NodeId).collect();
        // With membership changes, the last two nodes start outside the cluster (`--join`).
        let voters: Vec<NodeId> = if scenario.membership_change_chance > 0.0 {
            all[..3].to_vec()
        } else {
            all.clone()
        };
        let nodes = all
            .iter()
            .zip(&scenario.storage_delay_ticks_max)
            .map(|(&id, &storage_delay_ticks_max)| {
                SimNode::new(id, storage_delay_ticks_max, scenario.queue.clone())
            })
            .collect();
        let leader_guesses = vec![None; scenario.client_count];
        let scenario_node_count = scenario.node_count;
        Simulation {
            network: Network::new(scenario.network.clone()),
            checkers: Checkers::new(scenario.node_count, scenario.queue.clone()),
            clients: ClientOracle::new(scenario.node_count, scenario.session_clients),
            trace: Trace::new(trace_capacity),
            rng,
            now: 0,
            voters,
            nodes,
            scenario,
            faults_enabled: true,
            crash_count: 0,
            snapshots_saved: 0,
            snapshots_installed: 0,
            restarts_from_snapshot: 0,
            pipelined_readies: 0,
            grouped_batches: 0,
            leader_guesses,
            lease_end_proposed: vec![None; scenario_node_count],
            liveness_ticks: 0,
            connection_reports: Vec::new(),
            leader_connection_drops: 0,
            membership_changes: 0,
            highest_term_seen: rrmq::raft::Term(0),
        }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn run(&mut self) -> Result<RunSummary, Violation> {
        for position in 0..self.nodes.len() {
            self.start(position)?;
        }
        while self.now < self.scenario.fault_phase_ticks {
            self.inject_faults()?;
            self.client_requests()?;
            self.tick_cluster()?;
        }
        self.liveness_phase()?;
        self.final_checks()?;
        Ok(self.summary())
    }

    fn summary(&self) -> RunSummary {
        let exactly_once = &self.checkers.state_machine.exactly_once;
        RunSummary {
            ticks: self.now,
            committed_entries: self.checkers.history.len().0,
            acknowledged_writes: self.clients.acknowledged_writes,
            answered_operations: self.clients.answered_operations,
            retries: self.clients.retries,
            expired_sessions: self.clients.expired_sessions,
            replays: exactly_once.replays,
            quota_refusals: exactly_once.quota_refusals,
            leases_granted: exactly_once.counts.leases_granted,
            acks: exactly_once.counts.acks,
            given_back: exactly_once.counts.given_back,
            dead_lettered: exactly_once.counts.dead_lettered,
            snapshots_saved: self.snapshots_saved,
            snapshots_installed: self.snapshots_installed,
            restarts_from_snapshot: self.restarts_from_snapshot,
            pipelined_readies: self.pipelined_readies,
            grouped_batches: self.grouped_batches,
            digests_compared: self.checkers.state_machine.digests.compared,
            answered_reads: self.clients.answered_reads,
            terms_with_leader: self.checkers.election_safety.terms_with_leader() as u64,
            crashes: self.crash_count,
            leader_connection_drops: self.leader_connection_drops,
            membership_changes: self.membership_changes,
            messages_sent: self.network.sent_count,
            messages_lost: self.network.lost_count,
            liveness_ticks: self.liveness_ticks,
            trace_digest: self.trace.digest(),
        }
    }

    /// One tick of the whole cluster.
    fn tick_cluster(&mut self) -> Result<(), Violation> {
        self.deliver_connection_reports()?;
        for position in 0..self.nodes.len() {
            if let Some(core) = self.nodes[position].core.as_mut() {
                core.tick();
                self.after_step(position)?;
            }
        }
        for envelope in self.network.take_due(self.now, &mut self.trace) {
            self.deliver(envelope)?;
        }
        for (leader, follower) in self.network.take_lost_snapshots() {
            if self.rng.gen_bool(self.scenario.snapshot_report_chance) {
                self.report_snapshot(leader, follower, false)?;
            }
        }
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.shuffle(&mut self.rng);
        for position in order {
            self.process_ready(position)?;
        }
        for position in 0..self.nodes.len() {
            if self.nodes[position].is_up() && self.rng.gen_bool(self.scenario.snapshot_chance) {
                self.maybe_snapshot(position)?;
            }
        }
        for node in &self.nodes {
            if let Some(core) = &node.core {
                core.check_invariants();
                checkers::check_term_refusals(node.id, core.term_refusals())?;
            }
        }
        if self.scenario.membership_change_chance > 0.0 {
            self.check_memberships()?;
        }
        self.now += 1;
        Ok(())
    }

    // ---- Faults -------------------------------------------------------------------------

    fn inject_faults(&mut self) -> Result<(), Violation> {
        if self.rng.gen_bool(self.scenario.partition_chance) {
            self.change_partition();
        }
        if self.rng.gen_bool(self.scenario.crash_chance) {
            if let Some(position) = self.crash_target() {
                self.crash(position, CrashPoint::BetweenTicks);
            }
        }
        if self.rng.gen_bool(self.scenario.power_failure_chance) {
            // Correlated crashes (a rack loses power): what one node lost from its unfinished
            // Ready, the others may not be there to make up for.
            for position in self.live_positions() {
                if self.rng.gen_bool(0.6) {
                    self.crash(position, CrashPoint::BetweenTicks);
                }
            }
        }
        for position in 0..self.nodes.len() {
            if !self.nodes[position].is_up() && self.rng.gen_bool(self.scenario.restart_chance) {
                self.start(position)?;
            }
        }
        if self.rng.gen_bool(self.scenario.connection_flap_chance) {
            self.flap_connection();
        }
        if self.scenario.membership_change_chance > 0.0
            && self.rng.gen_bool(self.scenario.membership_change_chance)
        {
            self.change_membership();
        }
        Ok(())
    }

    /// The leader proposes one single-server change: promote a learner, else add a node
    /// that is neither a member nor removed as a learner, else remove or demote a voter
    /// (often itself) while at least three voters would be left... or promote back.
    fn change_membership(&mut self) {
        let Some(leader) = self.leader_position() else {
            return;
        };
        let Some(core) = self.nodes[leader].core.as_ref() else {
            return;
        };
        let current = core.membership().clone();
        let leader_id = self.nodes[leader].id;
        let spare: Vec<NodeId> = self
            .nodes
            .iter()
            .map(|node| node.id)
            .filter(|&id| !current.contains(id) && !current.is_retired(id))
            .collect();
        let learners = current.learners();
        let voters = current.voters();
        let next = if let Some(&learner) = learners.first() {
            current.with_role(learner, true)
        } else if !spare.is_empty() && (voters.len() < 4 || self.rng.gen_bool(0.5)) {
            let id = spare[self.rng.gen_range(0..spare.len())];
            current.with_learner(id, bytes::Bytes::from(format!("node {id}")))
        } else if voters.len() > 3 {
            let victim = if self.rng.gen_bool(0.3) {
                leader_id
            } else {
                voters[self.rng.gen_range(0..voters.len())]
            };
            if self.rng.gen_bool(0.7) {
                current.without(victim)
            } else {
                current.with_role(victim, false)
            }
        } else {
            return;
        };
        let Some(core) = self.nodes[leader].core.as_mut() else {
            return;
        };
        let outcome = core.propose_membership(next.clone());
        self.trace.record(
            self.now,
            Event::MembershipProposed {
                node: leader_id,
                voters: next.voters(),
                learners: next.learners(),
                outcome: outcome.as_ref().map(|id| id.index).map_err(error_name),
            },
        );
        if outcome.is_ok() {
            self.membership_changes += 1;
        }
    }

    /// The membership the cluster has committed, as far as the node that knows the most
    /// commits knows it.
    fn committed_membership(&self) -> Option<Membership> {
        self.nodes
            .iter()
            .filter_map(|node| node.core.as_ref())
            .max_by_key(|core| core.commit_index())
            .map(|core| core.committed_membership().clone())
    }

    /// Whether node `position` is a member of the committed membership (a removed or
    /// still-joining node is not expected to apply anything new).
    fn is_member(&self, committed: &Option<Membership>, position: usize) -> bool {
        committed
            .as_ref()
            .is_none_or(|membership| membership.contains(self.nodes[position].id))
    }

    /// Membership safety: a leader of the highest term any node reached acts on a
    /// membership whose majorities overlap those of the latest committed one (it holds
    /// every committed entry, and at most one change is in flight), so no two disjoint
    /// majorities can decide at once. (A stale leader of an older term may lag any number
    /// of changes: it can no longer commit.)
    fn check_memberships(&mut self) -> Result<(), Violation> {
        for core in self.nodes.iter().filter_map(|node| node.core.as_ref()) {
            self.highest_term_seen = self.highest_term_seen.max(core.term());
        }
        let Some(committed) = self.committed_membership() else {
            return Ok(());
        };
        let highest = self.highest_term_seen;
        let newest_leader = self
            .nodes
            .iter()
            .filter_map(|node| node.core.as_ref())
            .filter(|core| core.role() == Role::Leader && core.term() >= highest)
            .max_by_key(|core| core.term());
        if let Some(leader) = newest_leader {
            if !leader.membership().majorities_overlap(&committed) {
                return Err(Violation::new(
                    property::MEMBERSHIP,
                    format!(
                        "leader {} of term {} acts on voters {:?}, disjoint majorities with the \
                         committed voters {:?}",
                        leader.id(),
                        leader.term(),
                        leader.membership().voters(),
                        committed.voters()
                    ),
                ));
            }
            if leader.membership() != &committed && !leader.change_in_progress() {
                return Err(Violation::new(
                    property::MEMBERSHIP,
                    format!(
                        "leader {} of term {} acts on a committed membership other than the \
                         cluster's latest committed one",
                        leader.id(),
                        leader.term()
                    ),
                ));
            }
        }
        for node in &self.nodes {
            if let Some(core) = &node.core {
                // A leader removing (or demoting) itself leads until that change commits.
                let leaving_leader = core.role() == Role::Leader && core.change_in_progress();
                if core.role() != Role::Follower
                    && !leaving_leader
                    && !core.membership().is_voter(node.id)
                {
                    return Err(Violation::new(
                        property::MEMBERSHIP,
                        format!(
                            "node {} is {:?} but not a voter of the membership it acts on",
                            node.id,
                            core.role()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- Connection reports ---------------------------------------------------------------

    /// `peer` crashed (`lost`) or restarted: the transports of some live nodes notice, each
    /// a little later. A partition never comes here: it closes no connection.
    pub(super) fn schedule_connection_reports(&mut self, peer: NodeId, lost: bool) {
        for position in self.live_positions() {
            if self.nodes[position].id == peer
                || !self.rng.gen_bool(self.scenario.connection_report_chance)
            {
                continue;
            }
            let delay_ticks = self
                .rng
                .gen_range(0..=self.scenario.connection_report_delay_ticks_max);
            self.connection_reports.push(ConnectionReport {
                due_tick: self.now + delay_ticks,
                position,
                peer,
                lost,
            });
        }
    }

    /// A live node's connection to another live node (often the leader) resets: reported
    /// dropped now, restored a few ticks later.
    fn flap_connection(&mut self) {
        let live = self.live_positions();
        let Some(&position) = live.choose(&mut self.rng) else {
            return;
        };
        let peer = match self.leader_position() {
            Some(leader) if leader != position && self.rng.gen_bool(0.7) => leader,
            _ => match live.choose(&mut self.rng) {
                Some(&other) if other != position => other,
                _ => return,
            },
        };
        let peer = self.nodes[peer].id;
        let back_after_ticks = self
            .rng
            .gen_range(1..=u64::from(self.scenario.raft.election_ticks_max));
        for (delay_ticks, lost) in [(0, true), (back_after_ticks, false)] {
            self.connection_reports.push(ConnectionReport {
                due_tick: self.now + delay_ticks,
                position,
                peer,
                lost,
            });
        }
    }

    /// Hands the reports that are due to their cores (a report for a node that has crashed
    /// since is lost with it).
    fn deliver_connection_reports(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.connection_reports)
            .into_iter()
            .partition(|report| report.due_tick <= now);
        self.connection_reports = waiting;
        for report in due {
            let node = &mut self.nodes[report.position];
            let id = node.id;
            let Some(core) = node.core.as_mut() else {
                continue;
            };
            if report.lost {
                if core.role() == Role::Follower && core.leader() == Some(report.peer) {
                    self.leader_connection_drops += 1;
                }
                core.peer_connection_lost(report.peer);
            } else {
                core.peer_connection_restored(report.peer);
            }
            self.trace.record(
                now,
                Event::Connection {
                    node: id,
                    peer: report.peer,
                    lost: report.lost,
                },
            );
            self.after_step(report.position)?;
        }
        Ok(())
    }

    /// Crashes are most telling where they lose something: a node whose disk has not
    /// finished its last `Ready` (above all a leader, whose commit may count entries it has
    /// not persisted), or the leader. Otherwise any live node.
    fn crash_target(&mut self) -> Option<usize> {
        let busy_disk: Vec<usize> = (0..self.nodes.len())
            .filter(|&position| {
                self.nodes[position].is_up() && !self.nodes[position].unfinished.is_empty()
            })
            .collect();
        let leader = self.leader_position();
        match self.rng.gen_range(0..3) {
            0 if !busy_disk.is_empty() => {
                match leader.filter(|leader| busy_disk.contains(leader)) {
                    Some(leader) => Some(leader),
                    None => busy_disk.choose(&mut self.rng).copied(),
                }
            }
            1 if leader.is_some() => leader,
            _ => self.live_positions().choose(&mut self.rng).copied(),
        }
    }

    /// Replaces the partition: heal, isolate a node (often the leader), split the cluster
    /// in two (often with the leader in the minority), or cut links in one direction only.
    fn change_partition(&mut self) {
        let count = self.nodes.len();
        let all: Vec<NodeId> = self.nodes.iter().map(|node| node.id).collect();
        let mut cut = BTreeSet::new();
        let description = match self.rng.gen_range(0..7) {
            0 => "healed".to_string(),
            choice @ (1 | 2) => {
                let isolated = match self.leader_position() {
                    Some(leader) if choice == 2 => all[leader],
                    _ => all[self.rng.gen_range(0..count)],
                };
                for &other in all.iter().filter(|&&other| other != isolated) {
                    cut.insert((isolated, other));
                    cut.insert((other, isolated));
                }
                format!("n{isolated} isolated")
            }
            choice @ (3 | 4) => {
                // A random split, or the leader cut off with a few followers: the classic
                // stale leader that still hears from someone in its term.
                let mut shuffled = all.clone();
                shuffled.shuffle(&mut self.rng);
                if let Some(leader) = self.leader_position().filter(|_| choice == 4) {
                    let at = shuffled
                        .iter()
                        .position(|&id| id == all[leader])
                        .expect("the leader is a voter");
                    shuffled.swap(0, at);
                }
                let (minority, majority) = shuffled.split_at(self.rng.gen_range(1..=count / 2));
                for &a in minority {
                    for &b in majority {
                        cut.insert((a, b));
                        cut.insert((b, a));
                    }
                }
                format!("split {} | {}", names(minority), names(majority))
            }
            5 => {
                let node = all[self.rng.gen_range(0..count)];
                let deaf = self.rng.gen_bool(0.5);
                for &other in all.iter().filter(|&&other| other != node) {
                    cut.insert(if deaf { (other, node) } else { (node, other) });
                }
                format!(
                    "n{node} can {} but not {}",
                    if deaf { "send" } else { "receive" },
                    if deaf { "receive" } else { "send" }
                )
            }
            _ => {
                for &from in &all {
                    for &to in all.iter().filter(|&&to| to != from) {
                        if self.rng.gen_bool(0.3) {
                            cut.insert((from, to));
                        }
                    }
                }
                let mut links = String::from("one-way cuts:");
                for (from, to) in &cut {
                    let _ = write!(links, " n{from}->n{to}");
                }
                links
            }
        };
        self.network.partition(cut);
        self.trace
            .record(self.now, Event::Partition { description });
    }

    // ---- Clients ------------------------------------------------------------------------

    fn client_requests(&mut self) -> Result<(), Violation> {
        if self.rng.gen_bool(self.scenario.propose_chance) {
            let burst = self.rng.gen_range(1..=self.scenario.propose_burst_max);
            for _ in 0..burst {
                let client = self.rng.gen_range(0..self.leader_guesses.len());
                let guess = self.leader_guesses[client];
                if let Some(position) = self.client_target(guess) {
                    self.propose_unkeyed(client, position)?;
                }
            }
        }
        self.session_clients_act()?;
        self.propose_lease_ends()?;
        if self.rng.gen_bool(self.scenario.read_chance) {
            let client = self.rng.gen_range(0..self.leader_guesses.len());
            let guess = self.leader_guesses[client];
            if let Some(position) = self.client_target(guess) {
                self.read(client, position)?;
            }
        }
        if self.rng.gen_bool(self.scenario.transfer_chance) {
            if let Some(position) = self.leader_position() {
                let to = self.nodes[self.rng.gen_range(0..self.nodes.len())].id;
                self.transfer_leader(position, to)?;
            }
        }
        Ok(())
    }

    /// Each client sticks to the node it last saw accept a request, or that a refusal named
    /// as leader, so a deposed leader that does not know it yet keeps getting work from some
    /// clients (and grows a stale log suffix, and is asked for reads it must not confirm)
    /// while others already use the new leader. Sometimes, and when it knows no leader, a
    /// client tries a random live node.
    fn client_target(&mut self, guess: Option<usize>) -> Option<usize> {
        let guess = guess.filter(|&position| self.nodes[position].is_up());
        match guess {
            Some(position) if !self.rng.gen_bool(self.scenario.client_wander_chance) => {
                Some(position)
            }
            _ => self.live_positions().choose(&mut self.rng).copied(),
        }
    }

    /// What a client that believed `guess` learns from the answer of `position`.
    fn learn_leader(
        guess: Option<usize>,
        position: usize,
        refusal: Option<&ProposeError>,
    ) -> Option<usize> {
        match refusal {
            None => Some(position),
            Some(ProposeError::NotLeader { leader }) => leader.map(|leader| leader.0 as usize),
            Some(_) => guess,
        }
    }

    /// Unkeyed writer `client` puts a fresh message, once, at node `position`.
    fn propose_unkeyed(&mut self, client: usize, position: usize) -> Result<(), Violation> {
        let id = self.clients.next_message();
        let padding = self
            .rng
            .gen_range(0..=self.scenario.command_padding_bytes_max);
        let topic = TOPICS[self.rng.gen_range(0..TOPICS.len())];
        let logged = workload::unkeyed_put(topic, workload::message(id, padding));
        let bytes = logged.encode();
        let outcome = self.propose(position, None, CommandKey::Unkeyed(id), logged, bytes)?;
        let guess = self.leader_guesses[client];
        self.leader_guesses[client] = Self::learn_leader(guess, position, outcome.as_ref().err());
        Ok(())
    }

    /// Each session client with nothing outstanding may start an operation (in the fault
    /// phase); each with an operation refused or unanswered for its timeout sends it again.
    fn session_clients_act(&mut self) -> Result<(), Violation> {
        for slot in 0..self.clients.sessions.len() {
            if self.clients.sessions[slot].outstanding.is_none() {
                if !self.faults_enabled || !self.rng.gen_bool(self.scenario.operation_chance) {
                    continue;
                }
                self.start_operation(slot);
            }
            let operation = self.clients.sessions[slot]
                .outstanding
                .as_ref()
                .expect("started above or outstanding");
            if self.now >= operation.send_at {
                self.send_operation(slot)?;
            }
        }
        Ok(())
    }

    /// Session client `slot` starts its next operation: its first creates a topic (see
    /// `state_machine.rs` on why), sometimes with a delivery limit; then PUTs of fresh
    /// messages and GETs, and (`v2_share`) leased GETs, ACK / NACK / TOUCH of receipts it
    /// holds (now and then of one it made up or already settled), batch PUTs and GETs.
    fn start_operation(&mut self, slot: usize) {
        let session = &self.clients.sessions[slot];
        let (client, seq) = (session.client, session.next_seq);
        let topic = TOPICS[self.rng.gen_range(0..TOPICS.len())].to_string();
        let v2 = self.rng.gen_bool(self.scenario.v2_share);
        let command = if seq == 1 {
            if v2 {
                let settings = TopicSettings {
                    max_deliveries: Some(self.rng.gen_range(1..=3)),
                    dead_letter: self
                        .rng
                        .gen_bool(0.5)
                        .then(|| workload::DEAD_LETTER.to_string()),
                };
                Command::CreateTopicWith { topic, settings }
            } else {
                Command::CreateTopic { topic }
            }
        } else if v2 {
            self.v2_command(slot, topic)
        } else if self.rng.gen_bool(self.scenario.put_share) {
            let padding = self
                .rng
                .gen_range(0..=self.scenario.command_padding_bytes_max);
            let message = workload::message(self.clients.next_message(), padding);
            Command::Put { topic, message }
        } else {
            Command::Get { topic }
        };
        let logged = workload::session_command(client, seq, command);
        self.clients
            .start_operation(slot, CommandKey::Session { client, seq }, logged, self.now);
    }

    /// A lease of a few to a few hundred ticks from now, on the simulated lease clock.
    fn lease_time(&mut self) -> LeaseTime {
        let lease_ms = self.rng.gen_range(5..=100) * workload::TICK_MS;
        LeaseTime::starting(self.now * workload::TICK_MS, lease_ms)
    }

    /// A version 2 operation of session client `slot` (PROTOCOL.md §8, §10).
    fn v2_command(&mut self, slot: usize, topic: String) -> Command {
        let held = self.clients.sessions[slot].receipts.len();
        if held > 0 && self.rng.gen_bool(0.6) {
            let count = self.rng.gen_range(1..=held.min(3));
            let mut settled = Vec::new();
            for _ in 0..count {
                let pick = self
                    .rng
                    .gen_range(0..self.clients.sessions[slot].receipts.len());
                settled.push(self.clients.sessions[slot].receipts.remove(pick));
            }
            let (topic, receipt) = settled[0].clone();
            // A batch settles the receipts of one topic.
            let receipts: Vec<String> = settled
                .into_iter()
                .filter(|(other, _)| *other == topic)
                .map(|(_, receipt)| receipt)
                .collect();
            return match self.rng.gen_range(0..10) {
                0..=3 => Command::Ack { topic, receipt },
                4 => Command::Nack { topic, receipt },
                5 => {
                    let lease = self.lease_time();
                    // Still held: it may be settled later.
                    self.clients.sessions[slot]
                        .receipts
                        .push((topic.clone(), receipt.clone()));
                    Command::Touch {
                        topic,
                        receipt,
                        lease,
                    }
                }
                6..=8 => Command::AckBatch { topic, receipts },
                _ => Command::NackBatch { topic, receipts },
            };
        }
        match self.rng.gen_range(0..20) {
            0..=6 => {
                let lease = self.lease_time();
                Command::GetLeased { topic, lease }
            }
            7..=9 => {
                let lease = Some(self.lease_time());
                let max = self.rng.gen_range(1..=4);
                Command::GetBatch { topic, max, lease }
            }
            10 => {
                let max = self.rng.gen_range(1..=4);
                Command::GetBatch {
                    topic,
                    max,
                    lease: None,
                }
            }
            11..=17 => {
                let count = self.rng.gen_range(1..=4);
                let padding = self
                    .rng
                    .gen_range(0..=self.scenario.command_padding_bytes_max);
                let messages = (0..count)
                    .map(|_| workload::message(self.clients.next_message(), padding))
                    .collect();
                Command::PutBatch { topic, messages }
            }
            // A receipt never issued (or long settled).
            18 => Command::Ack {
                topic,
                receipt: format!("{}.0", self.rng.gen_range(1..50)),
            },
            _ => Command::Nack {
                topic,
                receipt: "stale".to_string(),
            },
        }
    }

    /// The minimal equivalent of the real node's `maybe_end_leases`
    /// (`src/node/node_loop/admission.rs`, which is not a pure module the simulator can
    /// share): a leader whose lease clock (the simulated time, never before the latest time
    /// its state machine applied) passed the earliest lease deadline proposes `EndLeases`,
    /// one at a time per term. Without the real node's safety margin: the simulated clocks
    /// agree.
    fn propose_lease_ends(&mut self) -> Result<(), Violation> {
        for position in 0..self.nodes.len() {
            let node = &self.nodes[position];
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            if core.role() != Role::Leader {
                continue;
            }
            let term = core.term();
            if self.lease_end_proposed[position]
                .is_some_and(|entry| entry.term == term && entry.index > node.applied_index())
            {
                continue;
            }
            let Some(deadline_ms) = node.state.next_lease_deadline() else {
                continue;
            };
            let now_ms = (self.now * workload::TICK_MS).max(node.state.clock_ms());
            if deadline_ms > now_ms {
                continue;
            }
            let key = CommandKey::LeaseEnd(now_ms);
            let bytes = workload::end_leases(now_ms).encode();
            let node = &mut self.nodes[position];
            let core = node.core.as_mut().expect("checked above");
            let outcome = core.propose(bytes);
            if let Ok(entry) = outcome {
                self.checkers.history.proposed(key);
                self.lease_end_proposed[position] = Some(entry);
            }
            self.trace.record(
                self.now,
                Event::Propose {
                    node: node.id,
                    command: key,
                    outcome: outcome.as_ref().map(|&entry| entry).map_err(error_name),
                },
            );
            self.after_step(position)?;
        }
        Ok(())
    }

    /// Session client `slot` sends (or sends again) its outstanding operation.
    fn send_operation(&mut self, slot: usize) -> Result<(), Violation> {
        let guess = self.clients.sessions[slot].leader_guess;
        let Some(position) = self.client_target(guess) else {
            return Ok(());
        };
        let operation = self.clients.sessions[slot]
            .outstanding
            .as_ref()
            .expect("the caller checked");
        let (key, logged, bytes) = (
            operation.key,
            operation.logged.clone(),
            operation.bytes.clone(),
        );
        let outcome = self.propose(position, Some(slot), key, logged, bytes)?;
        let session = &mut self.clients.sessions[slot];
        let refusal = outcome.as_ref().err();
        session.leader_guess = Self::learn_leader(guess, position, refusal);
        let Some(operation) = session.outstanding.as_mut() else {
            // Answered at once (a single node applying on the spot): nothing to retry.
            return Ok(());
        };
        if operation.accepted {
            self.clients.retries += 1;
        }
        operation.send_at = match refusal {
            None => {
                operation.accepted = true;
                self.now + self.scenario.client_timeout_ticks
            }
            // Redirected: straight to the leader it named.
            Some(ProposeError::NotLeader { leader: Some(_) }) => self.now + 1,
            // No leader known (an election, most likely): back off a little.
            Some(_) => self.now + REFUSED_BACKOFF_TICKS,
        };
        Ok(())
    }

    /// Proposes `logged` (operation `key`, encoded as `bytes`) to node `position` for session
    /// client `client` (if any).
    fn propose(
        &mut self,
        position: usize,
        client: Option<usize>,
        key: CommandKey,
        logged: LoggedCommand,
        bytes: bytes::Bytes,
    ) -> Result<Result<(), ProposeError>, Violation> {
        let node = &mut self.nodes[position];
        let core = node.core.as_mut().expect("clients only talk to live nodes");
        let outcome = core.propose(bytes);
        if let Ok(entry) = outcome {
            self.checkers.history.proposed(key);
            self.clients.proposed(position, client, key, logged, entry);
        }
        self.trace.record(
            self.now,
            Event::Propose {
                node: node.id,
                command: key,
                outcome: outcome.as_ref().map(|&entry| entry).map_err(error_name),
            },
        );
        self.after_step(position)?;
        Ok(outcome.map(|_| ()))
    }

    fn read(&mut self, client: usize, position: usize) -> Result<(), Violation> {
        let read_id = self.clients.next_read_id();
        let node = &mut self.nodes[position];
        let core = node.core.as_mut().expect("clients only talk to live nodes");
        // Registered first: the read must see what was observed before it was issued.
        self.clients.read_issued(position, read_id);
        let outcome = core.read_index(read_id);
        if outcome.is_err() {
            self.clients.read_refused(read_id);
        }
        self.trace.record(
            self.now,
            Event::ReadIssued {
                node: node.id,
                read_id,
                outcome: outcome.as_ref().map(|_| ()).map_err(error_name),
            },
        );
        let guess = self.leader_guesses[client];
        self.leader_guesses[client] = Self::learn_leader(guess, position, outcome.as_ref().err());
        self.after_step(position)
    }

    fn transfer_leader(&mut self, position: usize, to: NodeId) -> Result<(), Violation> {
        let node = &mut self.nodes[position];
        let core = node.core.as_mut().expect("only live leaders transfer");
        let outcome = core.transfer_leader(to);
        self.trace.record(
            self.now,
            Event::TransferLeader {
                node: node.id,
                to,
                outcome: outcome.map_err(|error| error_name(&error)),
            },
        );
        self.after_step(position)
    }

    // ---- Liveness -----------------------------------------------------------------------

    fn liveness_phase(&mut self) -> Result<(), Violation> {
        self.trace.record(self.now, Event::LivenessPhase);
        self.faults_enabled = false;
        self.network.heal();
        self.network.set_faults(self.scenario.network.calm());
        for node in &mut self.nodes {
            node.storage_delay_ticks_max = node
                .storage_delay_ticks_max
                .min(CALM_STORAGE_DELAY_TICKS_MAX);
        }
        let mut down: Vec<usize> = (0..self.nodes.len())
            .filter(|&position| !self.nodes[position].is_up())
            .collect();
        down.shuffle(&mut self.rng);
        let left_down = self.scenario.nodes_left_down.min(down.len());
        for &position in &down[left_down..] {
            self.start(position)?;
        }
        let longest_log = self
            .nodes
            .iter()
            .filter_map(|node| node.core.as_ref().map(|core| core.last_index().0))
            .max()
            .unwrap_or(0);
        let budget_ticks = self.scenario.liveness_ticks_max(longest_log);
        let started = self.now;
        let deadline = started + budget_ticks;
        let mut probes = Vec::new();
        let mut proposed_in = None;
        while self.now < deadline {
            if let Some(leader) = self.leader_position() {
                let term = self.nodes[leader].core.as_ref().map(|core| core.term());
                if proposed_in != Some((leader, term)) {
                    let probe = self.clients.next_probe();
                    let logged = workload::probe(probe);
                    let bytes = logged.encode();
                    let outcome =
                        self.propose(leader, None, CommandKey::Probe(probe), logged, bytes)?;
                    if outcome.is_ok() {
                        probes.push(probe);
                        proposed_in = Some((leader, term));
                    }
                }
            }
            self.session_clients_act()?;
            self.tick_cluster()?;
            let probe_applied = probes
                .iter()
                .any(|&probe| self.applied_on_every_live_node(probe));
            if probe_applied && !self.clients.operations_outstanding() {
                self.liveness_ticks = self.now - started;
                return Ok(());
            }
        }
        Err(Violation::new(
            property::LIVENESS,
            format!(
                "within {} ticks of healing: a fresh probe applied on every live node: {}, \
                 every client answered: {}; probes {:?}; {}",
                budget_ticks,
                probes
                    .iter()
                    .any(|&probe| self.applied_on_every_live_node(probe)),
                !self.clients.operations_outstanding(),
                probes,
                self.describe_nodes()
            ),
        ))
    }

    fn applied_on_every_live_node(&self, probe: u64) -> bool {
        let Some(index) = self.checkers.history.index_of_probe(probe) else {
            return false;
        };
        let committed = self.committed_membership();
        (0..self.nodes.len())
            .filter(|&position| {
                self.nodes[position].is_up() && self.is_member(&committed, position)
            })
            .all(|position| self.nodes[position].applied_index() >= index)
    }

    /// Once live: the live nodes catch up with the whole committed history (a few ticks of
    /// heartbeats), then every live state machine is compared with the reference, and the
    /// reference's messages with what the operations' effects left.
    fn final_checks(&mut self) -> Result<(), Violation> {
        let caught_up_ticks_max = 4 * u64::from(self.scenario.raft.election_ticks_max);
        for _ in 0..caught_up_ticks_max {
            let history = self.checkers.history.len();
            let committed = self.committed_membership();
            if (0..self.nodes.len())
                .filter(|&position| {
                    self.nodes[position].is_up() && self.is_member(&committed, position)
                })
                .all(|position| self.nodes[position].applied_index() == history)
            {
                break;
            }
            self.tick_cluster()?;
        }
        self.checkers.state_machine.finish()?;
        for node in self.nodes.iter().filter(|node| node.is_up()) {
            self.checkers
                .state_machine
                .check_state(node.id, node.applied_index(), &node.state)?;
        }
        Ok(())
    }

    fn describe_nodes(&self) -> String {
        let mut description = String::new();
        for node in &self.nodes {
            let _ = match &node.core {
                Some(core) => write!(
                    description,
                    "n{}: {:?} term {} leader {:?} commit {} applied {} last {}; ",
                    node.id,
                    core.role(),
                    core.term(),
                    core.leader(),
                    core.commit_index(),
                    node.applied_index(),
                    core.last_index()
                ),
                None => write!(description, "n{}: down; ", node.id),
            };
        }
        description
    }

    // ---- Helpers ------------------------------------------------------------------------

    fn live_positions(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&position| self.nodes[position].is_up())
            .collect()
    }

    /// The live leader with the highest term, if any.
    fn leader_position(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(position, node)| {
                let core = node.core.as_ref()?;
                (core.role() == Role::Leader).then_some((core.term(), position))
            })
            .max()
            .map(|(_, position)| position)
    }
}

fn names(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(|node| format!("n{node}")).collect();
    names.join(" ")
}
