//! The safety checkers, one per property, run after every call into a core.
//!
//! Each checker keeps just enough state to check its property incrementally, so checking
//! after every step stays cheap: Log Matching compares chained hashes of entries rather than
//! whole logs, Leader Completeness and State Machine Safety move a cursor over the committed
//! history. Checkers see the cores only through [`LogView`] and plain values (role, term,
//! commit index), and never draw randomness, so adding one does not change any schedule.
//!
//! The linearizable-read checker lives with the client model in `client.rs`, because it
//! needs to know which writes the clients saw acknowledged.

use super::client::command_id;
use super::trace::StableHasher;
use super::{property, Violation};
use rrmq::raft::{Core, Entry, EntryId, EntryPayload, LogIndex, NodeId, Role, Term};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Read access to a node's in-memory log: the `Core` in the simulation, a slice in tests.
pub trait LogView {
    fn entry_at(&self, index: LogIndex) -> Option<&Entry>;
}

impl LogView for Core {
    fn entry_at(&self, index: LogIndex) -> Option<&Entry> {
        self.entry(index)
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
}

impl Checkers {
    pub fn new(node_count: usize) -> Checkers {
        Checkers {
            election_safety: ElectionSafety::default(),
            commit_monotonic: CommitMonotonic::new(node_count),
            history: CommittedHistory::new(node_count),
            leader_completeness: LeaderCompleteness::new(node_count),
            log_matching: LogMatching::new(node_count),
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
        self.log_matching
            .restarted(position, core.id(), durable_entries)?;
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
/// it, in order, from the start — also after a restart, when it re-applies from scratch.
/// Each client command appears in it at most once.
pub struct CommittedHistory {
    entries: Vec<HistoryEntry>,
    /// Per node: its log was checked against the history up to here (reset on restart).
    checked: Vec<LogIndex>,
    index_of_command: HashMap<u64, LogIndex>,
}

impl CommittedHistory {
    pub fn new(node_count: usize) -> CommittedHistory {
        CommittedHistory {
            entries: Vec::new(),
            checked: vec![LogIndex::ZERO; node_count],
            index_of_command: HashMap::new(),
        }
    }

    pub fn len(&self) -> LogIndex {
        LogIndex(self.entries.len() as u64)
    }

    pub fn get(&self, index: LogIndex) -> Option<&HistoryEntry> {
        let position = usize::try_from(index.0).ok()?.checked_sub(1)?;
        self.entries.get(position)
    }

    /// Where a client command committed, if it did.
    pub fn index_of_command(&self, command: u64) -> Option<LogIndex> {
        self.index_of_command.get(&command).copied()
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
        if let Some(command) = command_id(&entry) {
            if let Some(earlier) = self.index_of_command.insert(command, index) {
                return Err(Violation::new(
                    property::CLIENT_ORACLE,
                    format!("command c{command} committed twice: at {earlier} and at {index}"),
                ));
            }
        }
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

    /// A restarted node's whole committed prefix is checked again.
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
            if known.known_committed_in < term && log.entry_at(index) != Some(&known.entry) {
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
/// `ready()`), so the cost is per new entry, not per log length.
pub struct LogMatching {
    /// The first chain seen for each entry id, and the node whose log held it.
    chain_of: HashMap<EntryId, (u64, NodeId)>,
    /// Per node: the chain hashes of its log as of its last `ready()`.
    views: Vec<Vec<(Term, u64)>>,
    /// Rotates over indexes to sample when comparing a view with the core.
    sample_cursor: u64,
}

impl LogMatching {
    pub fn new(node_count: usize) -> LogMatching {
        LogMatching {
            chain_of: HashMap::new(),
            views: vec![Vec::new(); node_count],
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
        let view_len = self.views[position].len() as u64;
        if first.index == LogIndex::ZERO || first.index.0 > view_len + 1 {
            return Err(Violation::new(
                property::READY_CONTRACT,
                format!(
                    "n{node}: Ready entries start at {} but its log ended at {view_len}",
                    first.index
                ),
            ));
        }
        self.views[position].truncate(first.index.0 as usize - 1);
        for entry in entries {
            let view = &mut self.views[position];
            if entry.index.0 != view.len() as u64 + 1 {
                return Err(Violation::new(
                    property::READY_CONTRACT,
                    format!("n{node}: Ready entries not contiguous at {}", entry.index),
                ));
            }
            let previous_chain = view.last().map_or(0, |&(_, chain)| chain);
            let chain = chain_hash(previous_chain, entry);
            view.push((entry.term, chain));
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

    pub fn restarted(
        &mut self,
        position: usize,
        node: NodeId,
        durable_entries: &[Entry],
    ) -> Result<(), Violation> {
        self.views[position].clear();
        self.handed_out(position, node, durable_entries)
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
        if last_index.0 != view.len() as u64 {
            return Err(Violation::new(
                property::READY_CONTRACT,
                format!(
                    "n{node}: the core's log ends at {last_index} but its Readies handed out \
                     a log ending at {}",
                    view.len()
                ),
            ));
        }
        if view.is_empty() {
            return Ok(());
        }
        self.sample_cursor = self.sample_cursor.wrapping_add(7919);
        let sampled = LogIndex(self.sample_cursor % view.len() as u64 + 1);
        let handed_out_term = view[sampled.0 as usize - 1].0;
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

fn chain_hash(previous_chain: u64, entry: &Entry) -> u64 {
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
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    //! Each checker must reject the violation it exists for: a harness whose checkers
    //! cannot fail proves nothing.
    use super::*;
    use bytes::Bytes;

    fn entry(term: u64, index: u64, command: Option<u64>) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: match command {
                Some(id) => EntryPayload::Command(Bytes::from(id.to_le_bytes().to_vec())),
                None => EntryPayload::Noop,
            },
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
}
