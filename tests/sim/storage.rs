//! One node's durable storage: what survives a crash.
//!
//! It holds exactly what the runtime finished persisting — the last hard state and the log —
//! and applies the `Ready` rule that entries starting at or below the stored last index
//! replace the stored suffix from there. A `Ready` is persisted atomically (one fsync for the
//! hard state and the entries, as the WAL does); a crash before that keeps none of it.

use super::{property, Violation};
use rrmq::raft::{Entry, HardState, LogIndex, NodeId};
use rrmq::storage::RestoredState;

#[derive(Default)]
pub struct DurableStorage {
    hard_state: HardState,
    /// Invariant: `entries[i].index == i + 1`.
    entries: Vec<Entry>,
}

impl DurableStorage {
    /// Makes a `Ready`'s hard state and entries durable, checking that the core asked for
    /// something storage can do.
    pub fn persist(
        &mut self,
        node: NodeId,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        if let Some(first) = entries.first() {
            let stored_last = LogIndex(self.entries.len() as u64);
            if first.index == LogIndex::ZERO || first.index > stored_last.next() {
                return Err(Violation::new(
                    property::READY_CONTRACT,
                    format!(
                        "n{node}: Ready entries start at {} but storage ends at {stored_last}: a gap",
                        first.index
                    ),
                ));
            }
            for (offset, entry) in entries.iter().enumerate() {
                if entry.index.0 != first.index.0 + offset as u64 {
                    return Err(Violation::new(
                        property::READY_CONTRACT,
                        format!(
                            "n{node}: Ready entries are not contiguous at {}",
                            entry.index
                        ),
                    ));
                }
            }
            // Replacing a durable entry the node already reported committed would lose it.
            let durable_commit = self.hard_state.commit;
            for entry in entries
                .iter()
                .take_while(|entry| entry.index <= durable_commit)
            {
                if let Some(stored) = self.entries.get(entry.index.0 as usize - 1) {
                    if stored != entry {
                        return Err(Violation::new(
                            property::STATE_MACHINE_SAFETY,
                            format!(
                                "n{node}: Ready overwrites durable committed entry {} with {}",
                                stored.id(),
                                entry.id()
                            ),
                        ));
                    }
                }
            }
            self.entries.truncate(first.index.0 as usize - 1);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        Ok(())
    }

    /// What a restarted core resumes from.
    pub fn restored_state(&self) -> RestoredState {
        RestoredState {
            snapshot: Default::default(),
            hard_state: self.hard_state,
            entries: self.entries.clone(),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}
