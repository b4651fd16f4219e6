//! A hand-driven network of Raft cores for the scenario tests in `tests/raft_scenarios.rs`.
//!
//! Why it exists: the classic Raft traps (Figure 8, stale candidates, PreVote, CheckQuorum,
//! leader lease, transfer, ReadIndex) need exact situations — logs with chosen terms, one
//! message delivered and the next one lost — that a randomized simulation reaches only by
//! luck. [`Net`] owns a few [`Core`]s, a simulated stable storage per node and one outbox;
//! nothing moves unless the test says so: time passes only for the nodes a test ticks,
//! messages move only when a test delivers them, and a node's `Ready` is processed (sent,
//! persisted, applied) in the order the runtime contract in `rrmq::raft` prescribes.
//!
//! What it owns: the cores, what each node has made durable (enough to restart it), every
//! `Ready` each node produced, every message delivered or dropped.
//!
//! What it must not do: reach into a core through anything but the public API (if a test
//! needs a back door, the API lacks something), use randomness beyond the fixed seeds handed
//! to the cores, or read a clock.

#![allow(dead_code)] // each test binary uses a different part of the harness

use bytes::Bytes;
use rrmq::raft::InitialState;
use rrmq::raft::{
    Core, Entry, EntryId, EntryPayload, HardState, LogIndex, Message, MessageBody, NodeId,
    RaftConfig, ReadState, Ready, Role, Term,
};
use std::collections::{BTreeMap, BTreeSet};

pub const S1: NodeId = NodeId(1);
pub const S2: NodeId = NodeId(2);
pub const S3: NodeId = NodeId(3);
pub const S4: NodeId = NodeId(4);
pub const S5: NodeId = NodeId(5);

/// Small timeouts so scenarios stay short: elections after 10..20 ticks, heartbeats every 2.
pub fn test_config() -> RaftConfig {
    RaftConfig {
        election_ticks_min: 10,
        election_ticks_max: 20,
        heartbeat_ticks: 2,
        append_bytes_max: 1024 * 1024,
        inflight_appends_max: 8,
        committed_bytes_max: 1024 * 1024,
        pending_reads_max: 16,
        snapshot_timeout_ticks: 200,
        pre_vote: true,
        check_quorum: true,
    }
}

/// The payload the harness gives a prepared entry, so an overwritten entry is recognizable.
pub fn prepared_entry(term: u64, index: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Command(Bytes::from(format!("prepared {index}@{term}"))),
    }
}

/// Terms of a log written as runs: `runs(&[(1, 1), (2, 50)])` is one entry of term 1 and
/// fifty of term 2.
pub fn runs(runs: &[(u64, usize)]) -> Vec<u64> {
    runs.iter()
        .flat_map(|&(term, count)| std::iter::repeat_n(term, count))
        .collect()
}

/// What one node has on stable storage when the scenario starts.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    term: u64,
    vote: Option<NodeId>,
    commit: u64,
    log_terms: Vec<u64>,
}

impl Setup {
    /// An empty node at term 0.
    pub fn fresh() -> Setup {
        Setup::default()
    }

    /// A node whose log holds entries `1..` with these terms; its term is the last one until
    /// [`Setup::term`] says otherwise.
    pub fn log(log_terms: &[u64]) -> Setup {
        Setup {
            term: log_terms.last().copied().unwrap_or(0),
            vote: None,
            commit: 0,
            log_terms: log_terms.to_vec(),
        }
    }

    pub fn term(mut self, term: u64) -> Setup {
        self.term = term;
        self
    }

    pub fn vote(mut self, vote: NodeId) -> Setup {
        self.vote = Some(vote);
        self
    }

    pub fn commit(mut self, commit: u64) -> Setup {
        self.commit = commit;
        self
    }

    pub fn restored(&self) -> InitialState {
        InitialState {
            snapshot: Default::default(),
            hard_state: HardState {
                term: Term(self.term),
                vote: self.vote,
                commit: LogIndex(self.commit),
            },
            entries: self
                .log_terms
                .iter()
                .enumerate()
                .map(|(position, &term)| prepared_entry(term, position as u64 + 1))
                .collect(),
        }
    }
}

/// One node: its core and everything the harness observed or stored for it.
pub struct Node {
    pub core: Core,
    /// What survived on disk: exactly what was persisted, nothing handed out but unpersisted.
    pub storage: InitialState,
    pub applied: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub aborted_reads: Vec<u64>,
    /// Every `Ready` this node handed out, in order.
    pub readies: Vec<Ready>,
    /// A stalled node still receives messages, but the harness does not call `ready()` on it:
    /// the test drives its I/O by hand (a slow disk, or a crash between two steps).
    stalled: bool,
    restarts: u64,
}

/// A hand-driven network: see the module docs.
pub struct Net {
    config: RaftConfig,
    voters: Vec<NodeId>,
    nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered or dropped, in sending order.
    outbox: Vec<Message>,
    /// One-way cuts: a message from `.0` to `.1` is dropped at delivery.
    cuts: BTreeSet<(NodeId, NodeId)>,
    /// Finer cuts: a message any of these match is dropped at delivery.
    drop_rules: Vec<DropRule>,
    delivered: Vec<Message>,
    dropped: Vec<Message>,
}

/// Decides whether a message is lost on the wire.
type DropRule = Box<dyn Fn(&Message) -> bool>;

const SETTLE_ROUNDS_MAX: usize = 10_000;
const READIES_PER_PROCESS_MAX: usize = 100;

impl Net {
    /// `size` empty nodes `S1..`.
    pub fn new(size: u64, config: RaftConfig) -> Net {
        Net::with_setups(config, (0..size).map(|_| Setup::fresh()).collect())
    }

    /// One node per setup, `S1` from `setups[0]` on.
    pub fn with_setups(config: RaftConfig, setups: Vec<Setup>) -> Net {
        let voters: Vec<NodeId> = (1..=setups.len() as u64).map(NodeId).collect();
        let nodes = voters
            .iter()
            .zip(&setups)
            .map(|(&id, setup)| {
                let storage = setup.restored();
                let core = Core::new(
                    id,
                    rrmq::raft::Membership::from_voters(voters.clone()),
                    config.clone(),
                    storage.clone(),
                    seed(id, 0),
                );
                core.check_invariants();
                let node = Node {
                    core,
                    storage,
                    applied: Vec::new(),
                    read_states: Vec::new(),
                    aborted_reads: Vec::new(),
                    readies: Vec::new(),
                    stalled: false,
                    restarts: 0,
                };
                (id, node)
            })
            .collect();
        Net {
            config,
            voters,
            nodes,
            outbox: Vec::new(),
            cuts: BTreeSet::new(),
            drop_rules: Vec::new(),
            delivered: Vec::new(),
            dropped: Vec::new(),
        }
    }

    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.voters.clone()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        match self.nodes.get(&id) {
            Some(node) => node,
            None => panic!("no node {id}"),
        }
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        match self.nodes.get_mut(&id) {
            Some(node) => node,
            None => panic!("no node {id}"),
        }
    }

    pub fn core(&self, id: NodeId) -> &Core {
        &self.node(id).core
    }

    /// For inputs other than ticks and messages: `propose`, `read_index`, `transfer_leader`.
    pub fn core_mut(&mut self, id: NodeId) -> &mut Core {
        &mut self.node_mut(id).core
    }

    /// Terms of `id`'s log, index 1 first.
    pub fn log_terms(&self, id: NodeId) -> Vec<u64> {
        let core = self.core(id);
        (1..=core.last_index().0)
            .map(|index| match core.entry(LogIndex(index)) {
                Some(entry) => entry.term.0,
                None => panic!("node {id} has no entry {index} below its last index"),
            })
            .collect()
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.voters
            .iter()
            .copied()
            .filter(|&id| self.core(id).role() == Role::Leader)
            .collect()
    }

    // ---- Time -----------------------------------------------------------------------------

    pub fn tick(&mut self, id: NodeId) {
        let core = self.core_mut(id);
        core.tick();
        core.check_invariants();
    }

    pub fn tick_all(&mut self) {
        for id in self.ids() {
            self.tick(id);
        }
    }

    /// Ticks `id` until it asks for votes (a pre-vote or a vote), processing its `Ready`
    /// after every tick. Panics if it does not within the longest election timeout.
    pub fn campaign(&mut self, id: NodeId) {
        for _ in 0..self.config.election_ticks_max {
            let before = self.outbox.len();
            self.tick(id);
            self.process(id);
            let asked = self.outbox[before..].iter().any(|message| {
                message.from == id && matches!(message.body, MessageBody::RequestVote { .. })
            });
            if asked {
                return;
            }
        }
        panic!(
            "node {id} did not campaign within {} ticks",
            self.config.election_ticks_max
        );
    }

    /// Campaigns `id` on a quiet network and delivers everything; `id` must win.
    pub fn elect(&mut self, id: NodeId) {
        self.campaign(id);
        self.deliver_all();
        assert_eq!(
            self.core(id).role(),
            Role::Leader,
            "node {id} should have won the election"
        );
    }

    /// Ticks the leader `id` until it sends heartbeats, then delivers everything: followers
    /// learn the commit index.
    pub fn heartbeat(&mut self, id: NodeId) {
        for _ in 0..self.config.heartbeat_ticks {
            self.tick(id);
        }
        self.deliver_all();
    }

    // ---- Ready processing -----------------------------------------------------------------

    /// Handles every `Ready` of `id` as the runtime would (unless stalled) and returns them.
    pub fn process(&mut self, id: NodeId) -> Vec<Ready> {
        let mut handled = Vec::new();
        if self.node(id).stalled {
            return handled;
        }
        while self.core(id).has_ready() {
            assert!(
                handled.len() < READIES_PER_PROCESS_MAX,
                "node {id} keeps reporting has_ready() after {READIES_PER_PROCESS_MAX} readies"
            );
            let ready = self.take_ready(id);
            self.send(ready.messages.clone());
            handled.push(ready.clone());
            self.persist(id, ready);
        }
        handled
    }

    /// Processes every node's `Ready`.
    pub fn collect(&mut self) {
        for id in self.ids() {
            self.process(id);
        }
    }

    /// Takes `id`'s `Ready` without acting on it: the test does the runtime's part by hand
    /// (typically `send(ready.messages)`, later `persist(id, ready)`).
    pub fn take_ready(&mut self, id: NodeId) -> Ready {
        let core = self.core_mut(id);
        let ready = core.ready();
        core.check_invariants();
        ready
    }

    /// The runtime's steps after sending `ready.messages`: make the hard state and entries
    /// durable, send `messages_after_persist`, report `on_persisted`, apply `committed`,
    /// record the reads.
    pub fn persist(&mut self, id: NodeId, ready: Ready) {
        let node = self.node_mut(id);
        if let Some(hard_state) = ready.hard_state {
            node.storage.hard_state = hard_state;
        }
        if let Some(first) = ready.entries.first() {
            let keep = first.index.0.saturating_sub(1) as usize;
            assert!(
                keep <= node.storage.entries.len(),
                "node {id}: entries from {} leave a gap after {} stored",
                first.index,
                node.storage.entries.len()
            );
            node.storage.entries.truncate(keep);
            node.storage.entries.extend(ready.entries.iter().cloned());
        }
        if let Some(last) = ready.entries.last() {
            node.core.on_persisted(last.id());
        }
        node.applied.extend(ready.committed.iter().cloned());
        node.read_states.extend(ready.read_states.iter().copied());
        node.aborted_reads
            .extend(ready.aborted_reads.iter().copied());
        node.core.check_invariants();
        let after_persist = ready.messages_after_persist.clone();
        node.readies.push(ready);
        self.send(after_persist);
    }

    pub fn stall(&mut self, id: NodeId) {
        self.node_mut(id).stalled = true;
    }

    pub fn unstall(&mut self, id: NodeId) {
        self.node_mut(id).stalled = false;
    }

    /// Crash and restart: a new core from what `id` made durable, with a fresh seed.
    pub fn restart(&mut self, id: NodeId) {
        let storage = self.node(id).storage.clone();
        self.restart_from(id, storage);
    }

    /// Restart from a chosen storage state (e.g. one that lost its vote, to show why it must
    /// not).
    pub fn restart_from(&mut self, id: NodeId, storage: InitialState) {
        let voters = self.voters.clone();
        let config = self.config.clone();
        let node = self.node_mut(id);
        node.restarts += 1;
        node.core = Core::new(
            id,
            rrmq::raft::Membership::from_voters(voters),
            config,
            storage.clone(),
            seed(id, node.restarts),
        );
        node.core.check_invariants();
        node.storage = storage;
        node.stalled = false;
    }

    // ---- Network ----------------------------------------------------------------------------

    pub fn send(&mut self, messages: Vec<Message>) {
        self.outbox.extend(messages);
    }

    /// Processes every node's `Ready`, then hands out the undelivered messages.
    pub fn take_outbox(&mut self) -> Vec<Message> {
        self.collect();
        std::mem::take(&mut self.outbox)
    }

    /// Processes every node's `Ready`, then removes and returns the undelivered messages that
    /// match (lost on the wire, or held back by the test to deliver later with `send`).
    pub fn drop_where(&mut self, predicate: impl Fn(&Message) -> bool) -> Vec<Message> {
        self.collect();
        let (taken, kept) = std::mem::take(&mut self.outbox)
            .into_iter()
            .partition(|message| predicate(message));
        self.outbox = kept;
        taken
    }

    /// Delivers one message now, unless a cut drops it.
    pub fn deliver(&mut self, message: Message) {
        let cut = self.cuts.contains(&(message.from, message.to))
            || self.drop_rules.iter().any(|rule| rule(&message));
        if cut {
            self.dropped.push(message);
            return;
        }
        self.delivered.push(message.clone());
        let core = self.core_mut(message.to);
        core.step(message);
        core.check_invariants();
    }

    /// One hop: processes every `Ready`, then delivers exactly the messages sent so far.
    pub fn deliver_round(&mut self) {
        for message in self.take_outbox() {
            self.deliver(message);
        }
    }

    /// Delivers until nothing is left to send.
    pub fn deliver_all(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let messages = self.take_outbox();
            if messages.is_empty() {
                return;
            }
            for message in messages {
                self.deliver(message);
            }
        }
        panic!("the network did not settle within {SETTLE_ROUNDS_MAX} rounds");
    }

    /// Delivers the oldest message, one at a time (processing every `Ready` in between),
    /// until `condition` holds. Panics if the network runs dry first.
    pub fn deliver_until(&mut self, condition: impl Fn(&Net) -> bool) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            self.collect();
            if condition(self) {
                return;
            }
            if self.outbox.is_empty() {
                panic!("the network ran dry before the condition held");
            }
            let message = self.outbox.remove(0);
            self.deliver(message);
        }
        panic!("the condition did not hold within {SETTLE_ROUNDS_MAX} deliveries");
    }

    /// Drops every message from `from` to `to` (one way) until `heal`.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cuts.insert((from, to));
    }

    /// Cuts `id` off from everyone, both ways.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut(id, other);
                self.cut(other, id);
            }
        }
    }

    /// Drops every message that matches `rule` until `heal`, e.g. only the appends to a node.
    pub fn cut_where(&mut self, rule: impl Fn(&Message) -> bool + 'static) {
        self.drop_rules.push(Box::new(rule));
    }

    pub fn heal(&mut self) {
        self.cuts.clear();
        self.drop_rules.clear();
    }

    /// Every message delivered so far, in delivery order.
    pub fn delivered(&self) -> &[Message] {
        &self.delivered
    }

    /// Every message a cut dropped so far.
    pub fn dropped(&self) -> &[Message] {
        &self.dropped
    }

    /// Forgets the delivered and dropped traces, to look only at what follows.
    pub fn clear_traces(&mut self) {
        self.delivered.clear();
        self.dropped.clear();
    }
}

fn seed(id: NodeId, restarts: u64) -> u64 {
    1000 * id.0 + restarts
}

/// The entry id of `id`'s last entry.
pub fn last_id(net: &Net, id: NodeId) -> EntryId {
    let core = net.core(id);
    let last = core.last_index();
    match core.entry(last) {
        Some(entry) => entry.id(),
        None => EntryId::new(Term(0), last),
    }
}

pub fn is_vote_response(message: &Message, granted: bool) -> bool {
    matches!(
        message.body,
        MessageBody::RequestVoteResponse { pre_vote: false, granted: g } if g == granted
    )
}
