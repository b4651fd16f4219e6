//! The simulated clients and their oracle: which writes were acknowledged, which reads were
//! answered, and whether every read saw everything that completed before it was issued.
//!
//! A write is *acknowledged* when the node it was proposed to applies the entry `propose`
//! returned, with the same term (a runtime answers the client then). A write whose entry was
//! overwritten, or whose node crashed, is *unknown*: it may commit or not, but at most once
//! (checked by the committed history). A read is answered by the node it was issued to, once
//! that node has applied up to the index the core confirmed.
//!
//! Linearizable reads: a read must return an index at or above the *observed index* at the
//! time it was issued — the highest applied index any completed client operation observed
//! (an acknowledged write's index, or the applied index an earlier read was answered at).

use super::{property, Violation};
use bytes::Bytes;
use rrmq::raft::{Entry, EntryId, EntryPayload, LogIndex, NodeId, ReadState};
use std::collections::BTreeMap;

/// A command is its id (8 bytes, little endian), then `padding` filler bytes.
pub fn encode_command(command: u64, padding: usize) -> Bytes {
    let mut bytes = command.to_le_bytes().to_vec();
    bytes.resize(8 + padding, 0xab);
    Bytes::from(bytes)
}

/// The client command an entry carries, if any.
pub fn command_id(entry: &Entry) -> Option<u64> {
    match &entry.payload {
        EntryPayload::Command(bytes) => {
            let id: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
            Some(u64::from_le_bytes(id))
        }
        EntryPayload::Noop => None,
    }
}

struct PendingWrite {
    entry: EntryId,
    command: u64,
}

struct PendingRead {
    node: usize,
    /// The observed index when the read was issued: the read must return at least this.
    must_see: LogIndex,
    /// The index the core confirmed, once it did.
    confirmed_index: Option<LogIndex>,
}

pub struct ClientOracle {
    next_command: u64,
    next_read_id: u64,
    /// Per node: proposals it accepted and has not applied yet, by index.
    pending_writes: Vec<BTreeMap<LogIndex, PendingWrite>>,
    pending_reads: BTreeMap<u64, PendingRead>,
    observed_index: LogIndex,
    pub acknowledged_writes: u64,
    pub answered_reads: u64,
}

impl ClientOracle {
    pub fn new(node_count: usize) -> ClientOracle {
        ClientOracle {
            next_command: 1,
            next_read_id: 1,
            pending_writes: (0..node_count).map(|_| BTreeMap::new()).collect(),
            pending_reads: BTreeMap::new(),
            observed_index: LogIndex::ZERO,
            acknowledged_writes: 0,
            answered_reads: 0,
        }
    }

    pub fn next_command(&mut self) -> u64 {
        let command = self.next_command;
        self.next_command += 1;
        command
    }

    pub fn next_read_id(&mut self) -> u64 {
        let read_id = self.next_read_id;
        self.next_read_id += 1;
        read_id
    }

    /// Node `position` accepted `command` as `entry`.
    pub fn proposed(&mut self, position: usize, command: u64, entry: EntryId) {
        self.pending_writes[position].insert(entry.index, PendingWrite { entry, command });
    }

    /// Node `position` applied `entry`. Returns the command it acknowledges, if any.
    pub fn applied(
        &mut self,
        position: usize,
        node: NodeId,
        entry: &Entry,
    ) -> Result<Option<u64>, Violation> {
        let Some(pending) = self.pending_writes[position].remove(&entry.index) else {
            return Ok(None);
        };
        if entry.id() != pending.entry {
            // Overwritten by another leader: unknown outcome, and no reply.
            return Ok(None);
        }
        if command_id(entry) != Some(pending.command) {
            return Err(Violation::new(
                property::CLIENT_ORACLE,
                format!(
                    "n{node}: propose returned {} for c{}, but that entry carries {:?}",
                    pending.entry,
                    pending.command,
                    command_id(entry)
                ),
            ));
        }
        self.acknowledged_writes += 1;
        self.observed_index = self.observed_index.max(entry.index);
        Ok(Some(pending.command))
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

    /// Everything waiting at node `position` is lost with it: its clients time out.
    pub fn crashed(&mut self, position: usize) {
        self.pending_writes[position].clear();
        self.pending_reads.retain(|_, read| read.node != position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rrmq::raft::Term;

    fn command_entry(term: u64, index: u64, command: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Command(encode_command(command, 3)),
        }
    }

    #[test]
    fn a_read_must_see_every_write_acknowledged_before_it_was_issued() {
        let mut oracle = ClientOracle::new(2);
        let early_read = oracle.next_read_id();
        oracle.read_issued(1, early_read);
        oracle.proposed(0, 5, EntryId::new(Term(1), LogIndex(4)));
        let acknowledged = oracle.applied(0, NodeId(0), &command_entry(1, 4, 5));
        assert_eq!(acknowledged, Ok(Some(5)));
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
        let mut oracle = ClientOracle::new(1);
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
    fn an_overwritten_proposal_is_not_acknowledged() {
        let mut oracle = ClientOracle::new(1);
        oracle.proposed(0, 9, EntryId::new(Term(1), LogIndex(3)));
        let other = oracle.applied(0, NodeId(0), &command_entry(2, 3, 10));
        assert_eq!(other, Ok(None));
        assert_eq!(oracle.acknowledged_writes, 0);
    }

    #[test]
    fn command_ids_round_trip_through_the_payload() {
        let entry = command_entry(1, 1, 0x0102_0304_0506_0708);
        assert_eq!(command_id(&entry), Some(0x0102_0304_0506_0708));
    }
}
