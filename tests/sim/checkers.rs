//! The safety checkers, one per property, run after every call into a core.
//!
//! Each checker keeps just enough state to check its property incrementally, so checking
//! after every step stays cheap: Log Matching compares chained hashes of entries rather than
//! whole logs, Leader Completeness and State Machine Safety move a cursor over the committed
//! history. Checkers see the cores only through [`LogView`] and plain values (role, term,
//! commit index), and never draw randomness, so adding one does not change any schedule.
//!
//! The linearizable-read checker lives with the client model in `client.rs`, because it
//! needs to know which writes the clients saw acknowledged; the state machine's checkers
//! (exactly-once, replicas agree) live in `state_machine.rs`.
//!
//! Snapshots: a log may start after a snapshot (compacted, installed from the leader, or
//! restored). Entries it covers are checked through the snapshot instead: its last entry
//! must be the committed history's entry at its index, and the data of a saved, installed or
//! restored snapshot carries the chained hash of the prefix it was made from, which must be
//! the history's ([`CommittedHistory::check_snapshot`]).

use super::state_machine::Reference;
use super::trace::StableHasher;
use super::workload::{entry_key, CommandKey};
use super::{property, Violation};
use rrmq::queue::QueueConfig;
use rrmq::raft::{
    Core, Entry, EntryId, EntryPayload, LogIndex, NodeId, Role, SnapshotMeta, Term, TermRefusals,
};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Read access to a node's in-memory log: the `Core` in the simulation, a slice in tests.
pub trait LogView {
    fn entry_at(&self, index: LogIndex) -> Option<&Entry>;

    /// The newest snapshot the node holds: entries up to its index may be gone from the log.
    fn snapshot_meta(&self) -> SnapshotMeta {
        SnapshotMeta::default()
    }
}

impl LogView for Core {
    fn entry_at(&self, index: LogIndex) -> Option<&Entry> {
        self.entry(index)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot().clone()
    }
}

impl LogView for [Entry] {
    fn entry_at(&self, index: LogIndex) -> Option<&Entry> {
        let position = usize::try_from(index.0).ok()?.checked_sub(1)?;
        self.get(position)
    }
}

/// All checkers of the simulation, fed by the node runtime.
pub struct Checkers {
    pub election_safety: ElectionSafety,
    pub commit_monotonic: CommitMonotonic,
    pub history: CommittedHistory,
    pub leader_completeness: LeaderCompleteness,
    pub log_matching: LogMatching,
    /// The state machine applied along the committed history, and its checkers.
    pub state_machine: Reference,
}

impl Checkers {
    pub fn new(node_count: usize, queue: QueueConfig) -> Checkers {
        Checkers {
            election_safety: ElectionSafety::default(),
            commit_monotonic: CommitMonotonic::new(node_count),
            history: CommittedHistory::new(node_count),
            leader_completeness: LeaderCompleteness::new(node_count),
            log_matching: LogMatching::new(node_count),
            state_machine: Reference::new(queue),
        }
    }

    /// After any call into the core of node `position`. Returns the new commit index when it
    /// moved, for the trace.
    pub fn after_step(
        &mut self,
        position: usize,
        core: &Core,
    ) -> Result<Option<LogIndex>, Violation> {
        self.election_safety
            .observe(core.id(), core.role(), core.term())?;
        let commit = core.commit_index();
        let moved = self.commit_monotonic.observe(position, core.id(), commit)?;
        self.history
            .observe_commit(position, core.id(), core.term(), commit, core)?;
        while self.state_machine.applied() < self.history.len() {
            let index = self.state_machine.applied().next();
            let known = self.history.get(index).expect("below the history's length");
            self.state_machine.apply(index, &known.entry)?;
        }
        self.leader_completeness.observe(
            position,
            core.id(),
            core.role(),
            core.term(),
            core,
            &self.history,
        )?;
        Ok(moved.then_some(commit))
    }

    /// A fresh core was built from node `position`'s durable storage.
    pub fn restarted(
        &mut self,
        position: usize,
        core: &Core,
        durable_entries: &[Entry],
    ) -> Result<(), Violation> {
        self.commit_monotonic
            .restarted(position, core.commit_index());
        self.history.restarted(position);
        self.leader_completeness.restarted(position);
        self.log_matching.restarted(
            position,
            core.id(),
            core.snapshot().clone(),
            durable_entries,
        )?;
        self.log_matching
            .check_against_core(position, core.id(), core.last_index(), core)
    }
}

/// Raft §5.2 Election Safety: at most one leader per term, ever.
#[derive(Default)]
pub struct ElectionSafety {
    leader_of_term: HashMap<Term, NodeId>,
}

impl ElectionSafety {
    pub fn observe(&mut self, node: NodeId, role: Role, term: Term) -> Result<(), Violation> {
        if role != Role::Leader {
            return Ok(());
        }
        let leader = *self.leader_of_term.entry(term).or_insert(node);
        if leader != node {
            return Err(Violation::new(
                property::ELECTION_SAFETY,
                format!("n{node} and n{leader} are both leaders of term {term}"),
            ));
        }
        Ok(())
    }

    pub fn terms_with_leader(&self) -> usize {
        self.leader_of_term.len()
    }
}

/// A live node's commit index never moves back (it may after a restart: the persisted
/// commit index is only a hint).
pub struct CommitMonotonic {
    seen: Vec<LogIndex>,
}

impl CommitMonotonic {
    pub fn new(node_count: usize) -> CommitMonotonic {
        CommitMonotonic {
            seen: vec![LogIndex::ZERO; node_count],
        }
    }

    /// Returns whether the commit index moved forward.
    pub fn observe(
        &mut self,
        position: usize,
        node: NodeId,
        commit: LogIndex,
    ) -> Result<bool, Violation> {
        let seen = self.seen[position];
        if commit < seen {
            return Err(Violation::new(
                property::COMMIT_MONOTONIC,
                format!("n{node}: commit index went back from {seen} to {commit}"),
            ));
        }
        self.seen[position] = commit;
        Ok(commit > seen)
    }

    pub fn restarted(&mut self, position: usize, commit: LogIndex) {
        self.seen[position] = commit;
    }
}

/// One committed entry of the global history.
pub struct HistoryEntry {
    pub entry: Entry,
    /// The term of the node that first reported it committed. It was committed in this term
    /// or an earlier one, so every leader of a later term must hold it.
    pub known_committed_in: Term,
}

/// Raft §5.4.3 State Machine Safety: there is one history of committed entries. Every
/// node's log agrees with it up to the node's commit index, and every node applies exactly
/// it, in order, from the start or from a snapshot of a prefix of it — also after a restart,
/// when it re-applies from its snapshot. A client command is committed at most as often as
/// it was proposed (a retry proposes it again; the session table, not Raft, then makes it
/// take effect once).
pub struct CommittedHistory {
    entries: Vec<HistoryEntry>,
    /// `chains[i]`: the chained hash of the entries `1..=i + 1` (see [`chain_hash`]).
    chains: Vec<u64>,
    /// Per node: its log was checked against the history up to here (reset on restart).
    checked: Vec<LogIndex>,
    proposals: HashMap<CommandKey, u32>,
    /// How often each command was committed, and where last.
    commits: HashMap<CommandKey, (u32, LogIndex)>,
    index_of_probe: HashMap<u64, LogIndex>,
}

impl CommittedHistory {
    pub fn new(node_count: usize) -> CommittedHistory {
        CommittedHistory {
            entries: Vec::new(),
            chains: Vec::new(),
            checked: vec![LogIndex::ZERO; node_count],
            proposals: HashMap::new(),
            commits: HashMap::new(),
            index_of_probe: HashMap::new(),
        }
    }

    pub fn len(&self) -> LogIndex {
        LogIndex(self.entries.len() as u64)
    }

    pub fn get(&self, index: LogIndex) -> Option<&HistoryEntry> {
        let position = usize::try_from(index.0).ok()?.checked_sub(1)?;
        self.entries.get(position)
    }

    /// The chained hash of the committed entries `1..=index`, if the history goes that far.
    pub fn chain_at(&self, index: LogIndex) -> Option<u64> {
        match usize::try_from(index.0).ok()?.checked_sub(1) {
            None => Some(0),
            Some(position) => self.chains.get(position).copied(),
        }
    }

    /// A core accepted a proposal of `command` (a first attempt or a retry).
    pub fn proposed(&mut self, command: CommandKey) {
        *self.proposals.entry(command).or_insert(0) += 1;
    }

    /// Where a liveness probe committed, if it did.
    pub fn index_of_probe(&self, probe: u64) -> Option<LogIndex> {
        self.index_of_probe.get(&probe).copied()
    }

    /// Node `node` holds a snapshot up to `meta` (saved from its own state machine,
    /// installed from the leader, or restored): its last entry is committed history, and the
    /// prefix its data was made from (`history_chain`, when the data is at hand) is the
    /// committed one.
    pub fn check_snapshot(
        &self,
        node: NodeId,
        meta: SnapshotMeta,
        history_chain: Option<u64>,
    ) -> Result<(), Violation> {
        if meta.index() == LogIndex::ZERO {
            return Ok(());
        }
        let known = self.get(meta.index()).map(|known| known.entry.id());
        if known != Some(meta.last) {
            return Err(Violation::new(
                property::SNAPSHOTS,
                format!(
                    "n{node} holds a snapshot up to {}, but the committed history has {known:?}                      there (it ends at {})",
                    meta.last,
                    self.len()
                ),
            ));
        }
        if let Some(chain) = history_chain {
            if Some(chain) != self.chain_at(meta.index()) {
                return Err(Violation::new(
                    property::SNAPSHOTS,
                    format!(
                        "n{node}'s snapshot up to {} was made from other entries than the                          committed history's",
                        meta.last
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Node `position` (in `term`) says its log is committed up to `commit`: those entries
    /// must agree with the history, and extend it where the node is the first to know.
    pub fn observe_commit(
        &mut self,
        position: usize,
        node: NodeId,
        term: Term,
        commit: LogIndex,
        log: &(impl LogView + ?Sized),
    ) -> Result<(), Violation> {
        let mut index = self.checked[position].next();
        while index <= commit {
            let Some(entry) = log.entry_at(index) else {
                let snapshot = log.snapshot_meta();
                if index <= snapshot.index() {
                    // Compacted or installed: the snapshot stands for the prefix.
                    self.check_snapshot(node, snapshot.clone(), None)?;
                    index = snapshot.index().next();
                    continue;
                }
                return Err(Violation::new(
                    property::STATE_MACHINE_SAFETY,
                    format!("n{node}: commit index {commit} but no entry at {index}"),
                ));
            };
            match self.get(index) {
                Some(known) if known.entry == *entry => {}
                Some(known) => {
                    return Err(Violation::new(
                        property::STATE_MACHINE_SAFETY,
                        format!(
                            "n{node} holds {} at committed index {index}, history has {} \
                             ({:?} vs {:?})",
                            entry.id(),
                            known.entry.id(),
                            entry.payload,
                            known.entry.payload
                        ),
                    ))
                }
                None => self.push(entry.clone(), term)?,
            }
            index = index.next();
        }
        self.checked[position] = self.checked[position].max(commit);
        Ok(())
    }

    fn push(&mut self, entry: Entry, known_committed_in: Term) -> Result<(), Violation> {
        let index = entry.index;
        if index != self.len().next() {
            // Unreachable as long as `observe_commit` walks contiguously.
            panic!("history gap: pushing {index} after {}", self.len());
        }
        if let Some(command) = entry_key(&entry) {
            let proposals = self.proposals.get(&command).copied().unwrap_or(0);
            let (commits, last) = self.commits.entry(command).or_insert((0, index));
            *commits += 1;
            if *commits > proposals {
                return Err(Violation::new(
                    property::CLIENT_ORACLE,
                    format!(
                        "{command} committed {commits} times (at {last} and at {index}) but                          proposed {proposals} times"
                    ),
                ));
            }
            *last = index;
            if let CommandKey::Probe(probe) = command {
                self.index_of_probe.insert(probe, index);
            }
        }
        let previous_chain = self.chains.last().copied().unwrap_or(0);
        self.chains.push(chain_hash(previous_chain, &entry));
        self.entries.push(HistoryEntry {
            entry,
            known_committed_in,
        });
        Ok(())
    }

    /// Node `position` applies `entry` as its `index`-th (first is 1).
    pub fn check_applied(
        &self,
        node: NodeId,
        index: LogIndex,
        entry: &Entry,
    ) -> Result<(), Violation> {
        if entry.index != index {
            return Err(Violation::new(
                property::STATE_MACHINE_SAFETY,
                format!(
                    "n{node} applies {} out of order: expected index {index}",
                    entry.id()
                ),
            ));
        }
        match self.get(index) {
            Some(known) if known.entry == *entry => Ok(()),
            Some(known) => Err(Violation::new(
                property::STATE_MACHINE_SAFETY,
                format!(
                    "n{node} applies {} at {index}, history has {}",
                    entry.id(),
                    known.entry.id()
                ),
            )),
            None => Err(Violation::new(
                property::STATE_MACHINE_SAFETY,
                format!(
                    "n{node} applies {} beyond the committed history (ends at {})",
                    entry.id(),
                    self.len()
                ),
            )),
        }
    }

    /// A restarted node's whole committed prefix is checked again (from its snapshot).
    pub fn restarted(&mut self, position: usize) {
        self.checked[position] = LogIndex::ZERO;
    }
}

/// Raft §5.4 Leader Completeness: a leader's log holds every entry committed in an earlier
/// term. Checked once per entry per leadership: a leader never removes entries from its log.
pub struct LeaderCompleteness {
    /// Per node: the term it leads and how far the history was checked against its log.
    checked: Vec<Option<(Term, LogIndex)>>,
}

impl LeaderCompleteness {
    pub fn new(node_count: usize) -> LeaderCompleteness {
        LeaderCompleteness {
            checked: vec![None; node_count],
        }
    }

    pub fn observe(
        &mut self,
        position: usize,
        node: NodeId,
        role: Role,
        term: Term,
        log: &(impl LogView + ?Sized),
        history: &CommittedHistory,
    ) -> Result<(), Violation> {
        if role != Role::Leader {
            self.checked[position] = None;
            return Ok(());
        }
        let checked_to = match self.checked[position] {
            Some((checked_term, index)) if checked_term == term => index,
            _ => LogIndex::ZERO,
        };
        let mut index = checked_to.next();
        while let Some(known) = history.get(index) {
            let snapshot = log.snapshot_meta();
            let held = log.entry_at(index);
            if held.is_none() && index <= snapshot.index() {
                // Compacted: the snapshot must be of the committed prefix.
                let committed = history.get(snapshot.index()).map(|known| known.entry.id());
                if committed != Some(snapshot.last) {
                    return Err(Violation::new(
                        property::LEADER_COMPLETENESS,
                        format!(
                            "n{node}, leader of term {term}, holds a snapshot up to {} where \
                             the committed history has {committed:?}",
                            snapshot.last
                        ),
                    ));
                }
                index = snapshot.index().next();
                continue;
            }
            if known.known_committed_in < term && held != Some(&known.entry) {
                return Err(Violation::new(
                    property::LEADER_COMPLETENESS,
                    format!(
                        "n{node}, leader of term {term}, lacks {} committed by term {}: holds {:?}",
                        known.entry.id(),
                        known.known_committed_in,
                        log.entry_at(index).map(Entry::id)
                    ),
                ));
            }
            index = index.next();
        }
        self.checked[position] = Some((term, history.len()));
        Ok(())
    }

    pub fn restarted(&mut self, position: usize) {
        self.checked[position] = None;
    }
}

/// Raft §5.3 Log Matching: if two logs hold an entry with the same index and term, they
/// are identical up to it.
///
/// Every entry a node's log ever held is given a chained hash (of its predecessor's chain,
/// its term, index and payload), and the first chain seen for each `EntryId` is remembered:
/// any log, at any time, holding that id with another chain has a different prefix. The
/// logs are followed through the entries each `Ready` hands out (the core's log right after
/// `ready()`), so the cost is per new entry, not per log length. A log that starts after a
/// snapshot starts from the chain of the snapshot's last entry.
pub struct LogMatching {
    /// The first chain seen for each entry id, and the node whose log held it.
    chain_of: HashMap<EntryId, (u64, NodeId)>,
    /// Per node: the chain hashes of its log as of its last `ready()`.
    views: Vec<LogChains>,
    /// Rotates over indexes to sample when comparing a view with the core.
    sample_cursor: u64,
}

/// One node's log as chain hashes.
#[derive(Clone, Default)]
struct LogChains {
    /// The index just before the first entry the log holds (its snapshot or compaction
    /// point), and that entry's chain.
    base: LogIndex,
    base_chain: u64,
    /// `chains[i]`: the term and chain of the entry at `base + 1 + i`.
    chains: VecDeque<(Term, u64)>,
}

impl LogChains {
    fn last_index(&self) -> LogIndex {
        LogIndex(self.base.0 + self.chains.len() as u64)
    }

    fn last_chain(&self) -> u64 {
        self.chains
            .back()
            .map_or(self.base_chain, |&(_, chain)| chain)
    }

    fn reset(&mut self, base: LogIndex, base_chain: u64) {
        self.base = base;
        self.base_chain = base_chain;
        self.chains.clear();
    }
}

impl LogMatching {
    pub fn new(node_count: usize) -> LogMatching {
        LogMatching {
            chain_of: HashMap::new(),
            views: vec![LogChains::default(); node_count],
            sample_cursor: 0,
        }
    }

    /// A `Ready` of node `position` handed out `entries`: its log now ends with them.
    pub fn handed_out(
        &mut self,
        position: usize,
        node: NodeId,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let view = &mut self.views[position];
        if first.index <= view.base || first.index > view.last_index().next() {
            return Err(Violation::new(
                property::READY_CONTRACT,
                format!(
                    "n{node}: Ready entries start at {} but its log holds {}..={}",
                    first.index,
                    view.base.next(),
                    view.last_index()
                ),
            ));
        }
        view.chains
            .truncate((first.index.0 - view.base.0 - 1) as usize);
        for entry in entries {
            let view = &mut self.views[position];
            if entry.index != view.last_index().next() {
                return Err(Violation::new(
                    property::READY_CONTRACT,
                    format!("n{node}: Ready entries not contiguous at {}", entry.index),
                ));
            }
            let chain = chain_hash(view.last_chain(), entry);
            view.chains.push_back((entry.term, chain));
            let (first_chain, first_node) =
                *self.chain_of.entry(entry.id()).or_insert((chain, node));
            if first_chain != chain {
                return Err(Violation::new(
                    property::LOG_MATCHING,
                    format!(
                        "n{node} holds {} with another payload or prefix than n{first_node} \
                         held it",
                        entry.id()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Node `position` compacted its log up to `compact_to` (a no-op at or below its start).
    pub fn compacted(&mut self, position: usize, compact_to: LogIndex) {
        let view = &mut self.views[position];
        if compact_to <= view.base {
            return;
        }
        let drop_count = (compact_to.0 - view.base.0) as usize;
        assert!(
            drop_count <= view.chains.len(),
            "compacting to {compact_to} past the log's end {}",
            view.last_index()
        );
        view.base_chain = view.chains[drop_count - 1].1;
        view.chains.drain(..drop_count);
        view.base = compact_to;
    }

    /// The chain of `snapshot`'s last entry, which some log must have held.
    fn snapshot_chain(&self, node: NodeId, snapshot: SnapshotMeta) -> Result<u64, Violation> {
        if snapshot.index() == LogIndex::ZERO {
            return Ok(0);
        }
        match self.chain_of.get(&snapshot.last) {
            Some(&(chain, _)) => Ok(chain),
            None => Err(Violation::new(
                property::SNAPSHOTS,
                format!(
                    "n{node} holds a snapshot up to {}, an entry no log ever held",
                    snapshot.last
                ),
            )),
        }
    }

    /// A `Ready` of node `position` installs `snapshot`: its log now starts after it, empty.
    pub fn installed(
        &mut self,
        position: usize,
        node: NodeId,
        snapshot: SnapshotMeta,
    ) -> Result<(), Violation> {
        let chain = self.snapshot_chain(node, snapshot.clone())?;
        self.views[position].reset(snapshot.index(), chain);
        Ok(())
    }

    /// Node `position` restarted from `snapshot` and the durable entries; the core drops
    /// those the snapshot covers.
    pub fn restarted(
        &mut self,
        position: usize,
        node: NodeId,
        snapshot: SnapshotMeta,
        durable_entries: &[Entry],
    ) -> Result<(), Violation> {
        let chain = self.snapshot_chain(node, snapshot.clone())?;
        self.views[position].reset(snapshot.index(), chain);
        let after = durable_entries
            .iter()
            .position(|entry| entry.index > snapshot.index())
            .unwrap_or(durable_entries.len());
        self.handed_out(position, node, &durable_entries[after..])
    }

    /// Right after `ready()`, the core's log is exactly what was handed out: compare the
    /// last index and one sampled entry's term.
    pub fn check_against_core(
        &mut self,
        position: usize,
        node: NodeId,
        last_index: LogIndex,
        log: &(impl LogView + ?Sized),
    ) -> Result<(), Violation> {
        let view = &self.views[position];
        if last_index != view.last_index() {
            return Err(Violation::new(
                property::READY_CONTRACT,
                format!(
                    "n{node}: the core's log ends at {last_index} but its Readies handed out \
                     a log ending at {}",
                    view.last_index()
                ),
            ));
        }
        if view.chains.is_empty() {
            return Ok(());
        }
        self.sample_cursor = self.sample_cursor.wrapping_add(7919);
        let offset = self.sample_cursor % view.chains.len() as u64;
        let sampled = LogIndex(view.base.0 + 1 + offset);
        let handed_out_term = view.chains[offset as usize].0;
        let core_term = log.entry_at(sampled).map(|entry| entry.term);
        if core_term != Some(handed_out_term) {
            return Err(Violation::new(
                property::READY_CONTRACT,
                format!(
                    "n{node}: entry {sampled} has term {core_term:?} in the core but \
                     {handed_out_term} as handed out"
                ),
            ));
        }
        Ok(())
    }
}

/// The chained hash of `entry` after a prefix whose chain is `previous_chain`.
pub fn chain_hash(previous_chain: u64, entry: &Entry) -> u64 {
    let mut hasher = StableHasher::default();
    previous_chain.hash(&mut hasher);
    entry.term.hash(&mut hasher);
    entry.index.hash(&mut hasher);
    match &entry.payload {
        EntryPayload::Noop => 0u8.hash(&mut hasher),
        EntryPayload::Command(command) => {
            1u8.hash(&mut hasher);
            command.hash(&mut hasher);
        }
        EntryPayload::Membership(membership) => {
            2u8.hash(&mut hasher);
            membership.hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// The core drops a message whose terms no honest node sends (`Core::term_refusals`): every
/// node here is honest, so one drop means the check refuses honest traffic (a duplicated,
/// reordered or stale message included), and a campaign refused means a term ran away.
pub fn check_term_refusals(node: NodeId, refusals: TermRefusals) -> Result<(), Violation> {
    if refusals == TermRefusals::default() {
        return Ok(());
    }
    Err(Violation::new(
        property::HONEST_TERMS,
        format!("n{node} refused honest traffic for its terms: {refusals:?}"),
    ))
}

#[cfg(test)]
mod tests {
    //! Each checker must reject the violation it exists for: a harness whose checkers
    //! cannot fail proves nothing.
    use super::*;
    use crate::sim::workload::{encode, message, unkeyed_put, TOPICS};

    /// A no-op, or an unkeyed PUT of message `command`.
    fn entry(term: u64, index: u64, command: Option<u64>) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: match command {
                Some(id) => EntryPayload::Command(encode(&unkeyed_put(TOPICS[0], message(id, 0)))),
                None => EntryPayload::Noop,
            },
        }
    }

    /// A log compacted up to `snapshot`, holding `entries` after it.
    struct CompactedLog {
        snapshot: SnapshotMeta,
        entries: Vec<Entry>,
    }

    impl LogView for CompactedLog {
        fn entry_at(&self, index: LogIndex) -> Option<&Entry> {
            self.entries.iter().find(|entry| entry.index == index)
        }

        fn snapshot_meta(&self) -> SnapshotMeta {
            self.snapshot.clone()
        }
    }

    fn meta(term: u64, index: u64) -> SnapshotMeta {
        SnapshotMeta::at(EntryId::new(Term(term), LogIndex(index)))
    }

    #[test]
    fn term_refusals_reject_any_drop_of_honest_traffic() {
        assert!(check_term_refusals(NodeId(0), TermRefusals::default()).is_ok());
        let refused = [
            TermRefusals {
                absurd_term: 1,
                ..TermRefusals::default()
            },
            TermRefusals {
                malformed: 1,
                ..TermRefusals::default()
            },
            TermRefusals {
                campaign_refused: 1,
                ..TermRefusals::default()
            },
        ];
        for (number, refusals) in refused.into_iter().enumerate() {
            assert_eq!(
                check_term_refusals(NodeId(0), refusals).map_err(|v| v.property),
                Err(property::HONEST_TERMS),
                "case {number}"
            );
        }
    }

    #[test]
    fn election_safety_rejects_a_second_leader_in_a_term() {
        let mut checker = ElectionSafety::default();
        assert!(checker.observe(NodeId(0), Role::Leader, Term(1)).is_ok());
        assert!(checker.observe(NodeId(1), Role::Follower, Term(1)).is_ok());
        assert!(checker.observe(NodeId(1), Role::Leader, Term(2)).is_ok());
        let error = checker.observe(NodeId(1), Role::Leader, Term(1));
        assert_eq!(
            error.map_err(|v| v.property),
            Err(property::ELECTION_SAFETY)
        );
    }

    #[test]
    fn commit_monotonic_rejects_a_commit_index_going_back_until_restart() {
        let mut checker = CommitMonotonic::new(1);
        assert_eq!(checker.observe(0, NodeId(0), LogIndex(3)), Ok(true));
        assert_eq!(checker.observe(0, NodeId(0), LogIndex(3)), Ok(false));
        assert!(checker.observe(0, NodeId(0), LogIndex(2)).is_err());
        checker.restarted(0, LogIndex(1));
        assert_eq!(checker.observe(0, NodeId(0), LogIndex(1)), Ok(false));
    }

    #[test]
    fn history_rejects_a_changed_committed_entry_a_wrong_apply_and_a_duplicate_command() {
        let mut history = CommittedHistory::new(2);
        history.proposed(CommandKey::Unkeyed(7));
        history.proposed(CommandKey::Unkeyed(8));
        let first: Vec<Entry> = vec![entry(1, 1, None), entry(1, 2, Some(7))];
        history
            .observe_commit(0, NodeId(0), Term(1), LogIndex(2), first.as_slice())
            .expect("first node defines the history");
        let second: Vec<Entry> = vec![entry(1, 1, None), entry(2, 2, Some(8))];
        let changed = history.observe_commit(1, NodeId(1), Term(2), LogIndex(2), second.as_slice());
        assert_eq!(
            changed.map_err(|v| v.property),
            Err(property::STATE_MACHINE_SAFETY)
        );
        assert!(history
            .check_applied(NodeId(1), LogIndex(1), &first[0])
            .is_ok());
        assert!(history
            .check_applied(NodeId(1), LogIndex(2), &first[0])
            .is_err());
        assert!(history
            .check_applied(NodeId(1), LogIndex(2), &second[1])
            .is_err());

        let duplicate: Vec<Entry> = vec![
            entry(1, 1, None),
            entry(1, 2, Some(7)),
            entry(3, 3, Some(7)),
        ];
        let twice =
            history.observe_commit(0, NodeId(0), Term(3), LogIndex(3), duplicate.as_slice());
        assert_eq!(twice.map_err(|v| v.property), Err(property::CLIENT_ORACLE));
    }

    #[test]
    fn leader_completeness_rejects_a_leader_missing_an_earlier_commit() {
        let mut history = CommittedHistory::new(2);
        history.proposed(CommandKey::Unkeyed(1));
        let log: Vec<Entry> = vec![entry(1, 1, None), entry(1, 2, Some(1))];
        history
            .observe_commit(0, NodeId(0), Term(1), LogIndex(2), log.as_slice())
            .expect("defines the history");
        let mut checker = LeaderCompleteness::new(2);
        let short: Vec<Entry> = vec![entry(1, 1, None)];
        // A leader of the same term may lag (it is the one that committed, later in time).
        assert!(checker
            .observe(
                1,
                NodeId(1),
                Role::Leader,
                Term(1),
                short.as_slice(),
                &history
            )
            .is_ok());
        let error = checker.observe(
            1,
            NodeId(1),
            Role::Leader,
            Term(2),
            short.as_slice(),
            &history,
        );
        assert_eq!(
            error.map_err(|v| v.property),
            Err(property::LEADER_COMPLETENESS)
        );
        assert!(checker
            .observe(
                1,
                NodeId(1),
                Role::Leader,
                Term(2),
                log.as_slice(),
                &history
            )
            .is_ok());
    }

    #[test]
    fn log_matching_rejects_the_same_entry_id_after_different_prefixes() {
        let mut checker = LogMatching::new(2);
        checker
            .handed_out(0, NodeId(0), &[entry(1, 1, Some(1)), entry(2, 2, None)])
            .expect("first log");
        // Same id 2@2, same prefix: fine, also when handed out again after a truncation.
        checker
            .handed_out(1, NodeId(1), &[entry(1, 1, Some(1)), entry(2, 2, None)])
            .expect("matching log");
        checker
            .handed_out(1, NodeId(1), &[entry(2, 2, None)])
            .expect("re-handed suffix");
        let mut other = LogMatching::new(2);
        other
            .handed_out(0, NodeId(0), &[entry(1, 1, Some(1)), entry(2, 2, None)])
            .expect("first log");
        let error = other.handed_out(1, NodeId(1), &[entry(1, 1, Some(9)), entry(2, 2, None)]);
        assert_eq!(error.map_err(|v| v.property), Err(property::LOG_MATCHING));
        let gap = other.handed_out(0, NodeId(0), &[entry(2, 4, None)]);
        assert_eq!(gap.map_err(|v| v.property), Err(property::READY_CONTRACT));
    }

    #[test]
    fn a_command_may_commit_as_often_as_it_was_proposed() {
        let mut history = CommittedHistory::new(1);
        history.proposed(CommandKey::Unkeyed(7));
        history.proposed(CommandKey::Unkeyed(7));
        let log: Vec<Entry> = vec![
            entry(1, 1, Some(7)),
            entry(1, 2, Some(7)),
            entry(1, 3, Some(7)),
        ];
        history
            .observe_commit(0, NodeId(0), Term(1), LogIndex(2), log.as_slice())
            .expect("proposed twice, committed twice");
        let third = history.observe_commit(0, NodeId(0), Term(1), LogIndex(3), log.as_slice());
        assert_eq!(third.map_err(|v| v.property), Err(property::CLIENT_ORACLE));
    }

    #[test]
    fn a_snapshot_stands_for_the_prefix_it_covers_and_must_be_of_the_committed_one() {
        let mut history = CommittedHistory::new(3);
        let full: Vec<Entry> = vec![entry(1, 1, None), entry(1, 2, None), entry(2, 3, None)];
        history
            .observe_commit(0, NodeId(0), Term(2), LogIndex(3), full.as_slice())
            .expect("defines the history");
        let compacted = CompactedLog {
            snapshot: meta(1, 2),
            entries: vec![entry(2, 3, None)],
        };
        history
            .observe_commit(1, NodeId(1), Term(2), LogIndex(3), &compacted)
            .expect("the snapshot covers 1..=2");
        let chain = history.chain_at(LogIndex(2));
        assert!(history.check_snapshot(NodeId(1), meta(1, 2), chain).is_ok());
        let wrong_data = history.check_snapshot(NodeId(1), meta(1, 2), Some(12345));
        assert_eq!(wrong_data.map_err(|v| v.property), Err(property::SNAPSHOTS));
        let wrong_term = CompactedLog {
            snapshot: meta(2, 2),
            entries: vec![entry(2, 3, None)],
        };
        let error = history.observe_commit(2, NodeId(2), Term(2), LogIndex(3), &wrong_term);
        assert_eq!(error.map_err(|v| v.property), Err(property::SNAPSHOTS));
        let mut leaders = LeaderCompleteness::new(3);
        let error = leaders.observe(2, NodeId(2), Role::Leader, Term(3), &wrong_term, &history);
        assert_eq!(
            error.map_err(|v| v.property),
            Err(property::LEADER_COMPLETENESS)
        );
        assert!(leaders
            .observe(1, NodeId(1), Role::Leader, Term(3), &compacted, &history)
            .is_ok());
    }

    #[test]
    fn log_matching_follows_compaction_and_installed_snapshots() {
        let mut checker = LogMatching::new(2);
        let log = [entry(1, 1, Some(1)), entry(1, 2, None), entry(2, 3, None)];
        checker
            .handed_out(0, NodeId(0), &log)
            .expect("leader's log");
        checker.compacted(0, LogIndex(2));
        let core = CompactedLog {
            snapshot: meta(1, 2),
            entries: vec![log[2].clone()],
        };
        for _ in 0..3 {
            checker
                .check_against_core(0, NodeId(0), LogIndex(3), &core)
                .expect("compacted view matches");
        }
        let stale = checker.handed_out(0, NodeId(0), &[entry(1, 2, None)]);
        assert_eq!(stale.map_err(|v| v.property), Err(property::READY_CONTRACT));
        checker
            .installed(1, NodeId(1), meta(1, 2))
            .expect("an entry the leader held");
        checker
            .handed_out(1, NodeId(1), &[entry(2, 3, None)])
            .expect("continues after the snapshot with the same chain");
        let unknown = checker.installed(1, NodeId(1), meta(5, 2));
        assert_eq!(unknown.map_err(|v| v.property), Err(property::SNAPSHOTS));
        checker.installed(1, NodeId(1), meta(1, 2)).expect("again");
        let diverging = checker.handed_out(1, NodeId(1), &[entry(2, 3, Some(9))]);
        assert_eq!(
            diverging.map_err(|v| v.property),
            Err(property::LOG_MATCHING)
        );
    }
}
