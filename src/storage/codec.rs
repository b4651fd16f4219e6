//! Byte formats of the data dir: the record framing shared by log segments and the hard
//! state file, the batch record that carries entries, and the hard state payload.
//!
//! Hand-written rather than rmp-serde: the format is small, fixed and on the hot path, and
//! every field is checked with its exact bounds when read back. This module does no I/O; it
//! must never panic on bytes read from disk (they may be torn, zeroed or corrupted).
//! All integers are little-endian.

use crate::raft::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, Member, Membership, NodeId, SnapshotMeta,
    Term,
};
use bytes::Bytes;

/// `len: u32` then `crc32c: u32`.
pub(crate) const RECORD_HEADER_BYTES: usize = 8;
/// `offset: u64 | kind: u8 | item_count: u32` at the start of a batch payload.
pub(crate) const BATCH_HEADER_BYTES: usize = 13;

const KIND_BATCH: u8 = 1;
const ITEM_ENTRY: u8 = 1;
const ITEM_COMMIT: u8 = 2;
const ITEM_SNAPSHOT: u8 = 3;
const PAYLOAD_NOOP: u8 = 0;
const PAYLOAD_COMMAND: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;
const HARD_STATE_VERSION: u8 = 1;
/// `version: u8 | term: u64 | vote_present: u8 | vote: u64 | commit: u64`.
const HARD_STATE_PAYLOAD_BYTES: usize = 26;

// record  = { len: u32 | crc32c: u32 | payload: [u8; len] }
//
//   +--------+--------+-----------------------------+
//   | len    | crc32c | payload (len bytes)         |
//   | 4 B LE | 4 B LE |                             |
//   +--------+--------+-----------------------------+
//
//   crc32c = crc32c(len's 4 bytes ++ payload): a flipped length bit fails the check too.
//
// batch payload (log segments; one record per sync, so a torn write only ever hits the
// last record of the last segment):
//
//   payload = { offset: u64 | kind: u8 = 1 | item_count: u32 | item * item_count }
//   item    = { tag: u8 = 1 | term: u64 | index: u64 | payload_kind: u8 = 0 }        Noop
//           | { tag: u8 = 1 | term: u64 | index: u64 | payload_kind: u8 = 1
//                 | data_len: u32 | data: [u8; data_len] }                          Command
//           | { tag: u8 = 1 | term: u64 | index: u64 | payload_kind: u8 = 2
//                 | membership }                                                 Membership
//           | { tag: u8 = 2 | commit: u64 }                                  commit hint
//           | { tag: u8 = 3 | term: u64 | index: u64 }           log restarts after a snapshot
//
//   A snapshot item (a follower installed the leader's snapshot `index@term`) drops every
//   entry before it; the next entry is `index + 1`.
//
//   `offset` is the record's own byte offset in its segment. Recovery uses it to tell a
//   record that really starts at a position from bytes (say, inside a command) that merely
//   look like one; a copy of a record anywhere else fails this check.
//
//   membership = { member_count: u32 | member * member_count
//                  | retired_count: u32 | retired_id: u64 * retired_count }
//   member     = { id: u64 | voter: u8 (0 or 1) | info_len: u32 | info: [u8; info_len] }
//
//   Members and retired ids are written sorted and read back checked (sorted, unique, no
//   member retired, a voter unless empty): a membership that breaks its invariants is a
//   decoding error.
//
// hard state payload (the `hard_state` file holds exactly one record):
//
//   payload = { version: u8 = 1 | term: u64 | vote_present: u8 | vote: u64 | commit: u64 }

/// The checksum of a record: over the length field and the payload.
fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// The bytes of one batch record under construction: header space is reserved at the front
/// and filled in by [`BatchWriter::finish`] once the record's offset is known, so the whole
/// record goes to the file in one write without copying.
pub(crate) struct BatchWriter {
    /// Invariant: starts with `RECORD_HEADER_BYTES + BATCH_HEADER_BYTES` reserved bytes.
    buffer: Vec<u8>,
    item_count: u32,
    entry_count: usize,
    /// The highest index of an entry or snapshot item in this batch, `ZERO` if none.
    index_max: LogIndex,
    /// Whether the batch holds a snapshot item.
    has_snapshot: bool,
}

impl BatchWriter {
    pub(crate) fn new() -> BatchWriter {
        BatchWriter {
            buffer: vec![0; RECORD_HEADER_BYTES + BATCH_HEADER_BYTES],
            item_count: 0,
            entry_count: 0,
            index_max: LogIndex::ZERO,
            has_snapshot: false,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.buffer
            .truncate(RECORD_HEADER_BYTES + BATCH_HEADER_BYTES);
        self.item_count = 0;
        self.entry_count = 0;
        self.index_max = LogIndex::ZERO;
        self.has_snapshot = false;
    }

    /// Whether the batch changes the log (entries or a snapshot item): it must be written.
    pub(crate) fn changes_log(&self) -> bool {
        self.entry_count > 0 || self.has_snapshot
    }

    pub(crate) fn has_snapshot(&self) -> bool {
        self.has_snapshot
    }

    /// The size the record will have on disk.
    pub(crate) fn record_bytes(&self) -> usize {
        self.buffer.len()
    }

    pub(crate) fn index_max(&self) -> LogIndex {
        self.index_max
    }

    /// How many bytes `entry` adds to a batch.
    pub(crate) fn entry_bytes(entry: &Entry) -> usize {
        match &entry.payload {
            EntryPayload::Noop => 18,
            EntryPayload::Command(data) => 22 + data.len(),
            EntryPayload::Membership(membership) => 18 + membership_bytes(membership),
        }
    }

    /// Whether `extra_bytes` more still fit the `len: u32` of one record.
    pub(crate) fn fits(&self, extra_bytes: usize) -> bool {
        let payload_bytes = self.buffer.len() - RECORD_HEADER_BYTES;
        payload_bytes
            .checked_add(extra_bytes)
            .is_some_and(|total| total <= u32::MAX as usize)
    }

    /// Appends an entry. The caller checks `fits` first (a command's length must fit a u32).
    pub(crate) fn push_entry(&mut self, entry: &Entry) {
        self.buffer.push(ITEM_ENTRY);
        self.buffer.extend_from_slice(&entry.term.0.to_le_bytes());
        self.buffer.extend_from_slice(&entry.index.0.to_le_bytes());
        match &entry.payload {
            EntryPayload::Noop => self.buffer.push(PAYLOAD_NOOP),
            EntryPayload::Command(data) => {
                let data_len = u32::try_from(data.len())
                    .expect("the caller checked with fits() that the command fits a u32");
                self.buffer.push(PAYLOAD_COMMAND);
                self.buffer.extend_from_slice(&data_len.to_le_bytes());
                self.buffer.extend_from_slice(data);
            }
            EntryPayload::Membership(membership) => {
                self.buffer.push(PAYLOAD_MEMBERSHIP);
                encode_membership(&mut self.buffer, membership);
            }
        }
        self.item_count += 1;
        self.entry_count += 1;
        // An overwrite inside one batch may lower the last index, never the highest index
        // the record holds, which is what segment compaction needs.
        self.index_max = self.index_max.max(entry.index);
    }

    /// The log restarts after `snapshot`: replay drops every entry before this item.
    pub(crate) fn push_snapshot(&mut self, snapshot: &SnapshotMeta) {
        self.buffer.push(ITEM_SNAPSHOT);
        self.buffer
            .extend_from_slice(&snapshot.last.term.0.to_le_bytes());
        self.buffer
            .extend_from_slice(&snapshot.last.index.0.to_le_bytes());
        self.item_count += 1;
        self.has_snapshot = true;
        self.index_max = self.index_max.max(snapshot.index());
    }

    /// How many bytes a snapshot item adds to a batch.
    pub(crate) const SNAPSHOT_ITEM_BYTES: usize = 17;

    pub(crate) fn push_commit(&mut self, commit: LogIndex) {
        self.buffer.push(ITEM_COMMIT);
        self.buffer.extend_from_slice(&commit.0.to_le_bytes());
        self.item_count += 1;
    }

    /// Fills in the headers for a record placed at `offset` in its segment and returns the
    /// complete record, ready for one write.
    pub(crate) fn finish(&mut self, offset: u64) -> &[u8] {
        let len = u32::try_from(self.buffer.len() - RECORD_HEADER_BYTES)
            .expect("fits() keeps every batch payload within u32");
        let len_bytes = len.to_le_bytes();
        self.buffer[8..16].copy_from_slice(&offset.to_le_bytes());
        self.buffer[16] = KIND_BATCH;
        self.buffer[17..21].copy_from_slice(&self.item_count.to_le_bytes());
        let crc = record_crc(len_bytes, &self.buffer[RECORD_HEADER_BYTES..]);
        self.buffer[0..4].copy_from_slice(&len_bytes);
        self.buffer[4..8].copy_from_slice(&crc.to_le_bytes());
        // Pair assertion: what we are about to write must read back as written.
        debug_assert!(matches!(
            read_record(&self.buffer, 0),
            RecordRead::Valid { end, .. } if end == self.buffer.len()
        ));
        &self.buffer
    }
}

/// What a batch record holds, in write order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Entry(Entry),
    Commit(LogIndex),
    Snapshot(SnapshotMeta),
}

/// The result of reading the record framed at some offset of a file's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecordRead<'a> {
    /// No bytes left: a clean end.
    End,
    /// A record whose checksum matches; the next one starts at `end`.
    Valid { payload: &'a [u8], end: usize },
    /// Torn, zeroed or corrupted bytes.
    Bad { reason: String },
}

/// Reads the framing of the record at `offset`; checks the length and the checksum only.
pub(crate) fn read_record(bytes: &[u8], offset: usize) -> RecordRead<'_> {
    let Some(rest) = bytes.get(offset..) else {
        return RecordRead::Bad {
            reason: "offset past the end of the file".to_string(),
        };
    };
    if rest.is_empty() {
        return RecordRead::End;
    }
    if rest.len() < RECORD_HEADER_BYTES {
        return RecordRead::Bad {
            reason: format!("incomplete record header ({} bytes left)", rest.len()),
        };
    }
    let len_bytes: [u8; 4] = rest[0..4].try_into().expect("slice of 4 bytes");
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("slice of 4 bytes"));
    let len = u32::from_le_bytes(len_bytes) as usize;
    let Some(payload) = rest.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len) else {
        return RecordRead::Bad {
            reason: format!(
                "record of {len} bytes runs past the end of the file ({} bytes left)",
                rest.len() - RECORD_HEADER_BYTES
            ),
        };
    };
    if record_crc(len_bytes, payload) != crc {
        return RecordRead::Bad {
            reason: format!("checksum mismatch in a record of {len} bytes"),
        };
    }
    RecordRead::Valid {
        payload,
        end: offset + RECORD_HEADER_BYTES + len,
    }
}

/// Whether a genuine batch record starts at `offset`: framing and checksum valid, and the
/// record names `offset` as its own position. Used to tell a torn tail (nothing valid after
/// the bad bytes) from corruption inside the log (valid records after them).
pub(crate) fn batch_record_starts_at(bytes: &[u8], offset: usize) -> bool {
    // Cheap filters first: this runs at every byte offset after a bad record.
    let Some(header) = bytes.get(offset..offset + RECORD_HEADER_BYTES + 8) else {
        return false;
    };
    let len = u32::from_le_bytes(header[0..4].try_into().expect("slice of 4 bytes")) as usize;
    let claimed = u64::from_le_bytes(header[8..16].try_into().expect("slice of 8 bytes"));
    if len < BATCH_HEADER_BYTES || claimed != offset as u64 {
        return false;
    }
    matches!(read_record(bytes, offset), RecordRead::Valid { .. })
}

/// Where the run of zero bytes that ends `bytes` starts (`bytes.len()` if the last byte is
/// not zero, 0 if all are zero). Recovery calls it on every torn-looking tail: a fresh
/// segment's preallocated space is megabytes of zeros, so it compares a block at a time
/// against a zero block (a memcmp, fast even in a debug build).
pub(crate) fn zero_tail_start(bytes: &[u8]) -> usize {
    const BLOCK_BYTES: usize = 4096;
    static ZERO_BLOCK: [u8; BLOCK_BYTES] = [0; BLOCK_BYTES];
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK_BYTES);
        let block = &bytes[start..end];
        if block != &ZERO_BLOCK[..block.len()] {
            let last = block
                .iter()
                .rposition(|byte| *byte != 0)
                .expect("the block has a non-zero byte");
            return start + last + 1;
        }
        end = start;
    }
    0
}

/// A bounds-checked cursor over a payload: every read is an error, never a panic, when the
/// bytes run out.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .position
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "payload ends inside {what} (at payload byte {} of {})",
                    self.position,
                    self.bytes.len()
                )
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_le_bytes(
            bytes.try_into().expect("slice of 4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let bytes = self.take(8, what)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().expect("slice of 8 bytes"),
        ))
    }

    fn finished(&self) -> bool {
        self.position == self.bytes.len()
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }
}

/// Decodes a batch payload that passed its checksum. `offset` is where the record sits in
/// its segment. An error here means a record that was written this way: a software bug or an
/// unknown format, never a torn write.
pub(crate) fn decode_batch(payload: &[u8], offset: u64) -> Result<Vec<Item>, String> {
    let mut reader = Reader {
        bytes: payload,
        position: 0,
    };
    let claimed = reader.u64("the record offset")?;
    if claimed != offset {
        return Err(format!("record claims to sit at byte {claimed}"));
    }
    let kind = reader.u8("the record kind")?;
    if kind != KIND_BATCH {
        return Err(format!("unknown record kind {kind}"));
    }
    let item_count = reader.u32("the item count")?;
    // Do not trust the count for an allocation: each item takes at least 9 bytes.
    let mut items = Vec::with_capacity((item_count as usize).min(payload.len() / 9));
    for _ in 0..item_count {
        match reader.u8("an item tag")? {
            ITEM_ENTRY => {
                let term = Term(reader.u64("an entry term")?);
                let index = LogIndex(reader.u64("an entry index")?);
                let payload = match reader.u8("an entry payload kind")? {
                    PAYLOAD_NOOP => EntryPayload::Noop,
                    PAYLOAD_COMMAND => {
                        let data_len = reader.u32("a command length")? as usize;
                        let data = reader.take(data_len, "a command")?;
                        EntryPayload::Command(Bytes::copy_from_slice(data))
                    }
                    PAYLOAD_MEMBERSHIP => EntryPayload::Membership(decode_membership(&mut reader)?),
                    other => return Err(format!("unknown entry payload kind {other}")),
                };
                items.push(Item::Entry(Entry {
                    term,
                    index,
                    payload,
                }));
            }
            ITEM_COMMIT => items.push(Item::Commit(LogIndex(reader.u64("a commit index")?))),
            ITEM_SNAPSHOT => {
                let term = Term(reader.u64("a snapshot term")?);
                let index = LogIndex(reader.u64("a snapshot index")?);
                items.push(Item::Snapshot(SnapshotMeta::at(EntryId::new(term, index))));
            }
            other => return Err(format!("unknown item tag {other}")),
        }
    }
    if !reader.finished() {
        return Err(format!(
            "{} unexpected bytes after {item_count} items",
            payload.len() - reader.position
        ));
    }
    Ok(items)
}

/// How many bytes [`encode_membership`] writes for `membership`.
pub(crate) fn membership_bytes(membership: &Membership) -> usize {
    8 + membership
        .members
        .iter()
        .map(|member| 13 + member.info.len())
        .sum::<usize>()
        + 8 * membership.retired.len()
}

/// Appends `membership` in the layout of the module docs. Panics only if a count or an
/// info does not fit a u32 (a membership is a handful of small members).
pub(crate) fn encode_membership(buffer: &mut Vec<u8>, membership: &Membership) {
    let count = |len: usize| u32::try_from(len).expect("a membership fits u32 counts");
    buffer.extend_from_slice(&count(membership.members.len()).to_le_bytes());
    for member in &membership.members {
        buffer.extend_from_slice(&member.id.0.to_le_bytes());
        buffer.push(u8::from(member.voter));
        buffer.extend_from_slice(&count(member.info.len()).to_le_bytes());
        buffer.extend_from_slice(&member.info);
    }
    buffer.extend_from_slice(&count(membership.retired.len()).to_le_bytes());
    for id in &membership.retired {
        buffer.extend_from_slice(&id.0.to_le_bytes());
    }
}

/// Reads a membership written by [`encode_membership`] and checks its invariants.
fn decode_membership(reader: &mut Reader<'_>) -> Result<Membership, String> {
    let member_count = reader.u32("a member count")?;
    // Do not trust counts for allocations: each member takes at least 13 bytes.
    let mut members = Vec::with_capacity((member_count as usize).min(reader.remaining() / 13));
    for _ in 0..member_count {
        let id = NodeId(reader.u64("a member id")?);
        let voter = match reader.u8("a member's voter flag")? {
            0 => false,
            1 => true,
            other => return Err(format!("bad voter flag {other}")),
        };
        let info_len = reader.u32("a member info length")? as usize;
        let info = Bytes::copy_from_slice(reader.take(info_len, "a member info")?);
        members.push(Member { id, voter, info });
    }
    let retired_count = reader.u32("a retired count")?;
    let mut retired = Vec::with_capacity((retired_count as usize).min(reader.remaining() / 8));
    for _ in 0..retired_count {
        retired.push(NodeId(reader.u64("a retired id")?));
    }
    let membership = Membership { members, retired };
    membership
        .check_well_formed()
        .map_err(|reason| format!("bad membership: {reason}"))?;
    Ok(membership)
}

/// Decodes a whole byte string holding exactly one membership (the snapshot file header
/// carries one).
#[allow(dead_code)] // read by the snapshot file format (next)
pub(crate) fn decode_membership_bytes(bytes: &[u8]) -> Result<Membership, String> {
    let mut reader = Reader { bytes, position: 0 };
    let membership = decode_membership(&mut reader)?;
    if !reader.finished() {
        return Err("unexpected bytes after the membership".to_string());
    }
    Ok(membership)
}

/// The complete contents of a `hard_state` file: one framed record.
pub(crate) fn encode_hard_state(hard_state: &HardState) -> Vec<u8> {
    let mut payload = Vec::with_capacity(HARD_STATE_PAYLOAD_BYTES);
    payload.push(HARD_STATE_VERSION);
    payload.extend_from_slice(&hard_state.term.0.to_le_bytes());
    payload.push(u8::from(hard_state.vote.is_some()));
    payload.extend_from_slice(&hard_state.vote.map_or(0, |vote| vote.0).to_le_bytes());
    payload.extend_from_slice(&hard_state.commit.0.to_le_bytes());
    debug_assert_eq!(payload.len(), HARD_STATE_PAYLOAD_BYTES);
    let len_bytes = (HARD_STATE_PAYLOAD_BYTES as u32).to_le_bytes();
    let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES + HARD_STATE_PAYLOAD_BYTES);
    bytes.extend_from_slice(&len_bytes);
    bytes.extend_from_slice(&record_crc(len_bytes, &payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

pub(crate) fn decode_hard_state(bytes: &[u8]) -> Result<HardState, String> {
    let payload = match read_record(bytes, 0) {
        RecordRead::Valid { payload, end } if end == bytes.len() => payload,
        RecordRead::Valid { end, .. } => {
            return Err(format!(
                "{} unexpected bytes after the record",
                bytes.len() - end
            ))
        }
        RecordRead::End => return Err("empty file".to_string()),
        RecordRead::Bad { reason } => return Err(reason),
    };
    let mut reader = Reader {
        bytes: payload,
        position: 0,
    };
    let version = reader.u8("the version")?;
    if version != HARD_STATE_VERSION {
        return Err(format!("unknown hard state version {version}"));
    }
    let term = Term(reader.u64("the term")?);
    let vote_present = reader.u8("the vote flag")?;
    let vote = reader.u64("the vote")?;
    let commit = LogIndex(reader.u64("the commit index")?);
    let vote = match vote_present {
        0 => None,
        1 => Some(NodeId(vote)),
        other => return Err(format!("bad vote flag {other}")),
    };
    if !reader.finished() {
        return Err("unexpected bytes after the hard state".to_string());
    }
    Ok(HardState { term, vote, commit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item_strategy() -> impl Strategy<Value = Item> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(term, index)| Item::Entry(Entry {
                term: Term(term),
                index: LogIndex(index),
                payload: EntryPayload::Noop,
            })),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(term, index, data)| Item::Entry(Entry {
                    term: Term(term),
                    index: LogIndex(index),
                    payload: EntryPayload::Command(Bytes::from(data)),
                })),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::btree_map(
                    any::<u64>(),
                    (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)),
                    0..6
                ),
                proptest::collection::btree_set(any::<u64>(), 0..4)
            )
                .prop_map(|(term, index, members, retired)| {
                    // Well formed: the first member votes (every membership written does).
                    let members = members
                        .into_iter()
                        .filter(|(id, _)| !retired.contains(id))
                        .enumerate()
                        .map(|(position, (id, (voter, info)))| Member {
                            id: NodeId(id),
                            voter: voter || position == 0,
                            info: Bytes::from(info),
                        })
                        .collect();
                    let retired = retired.into_iter().map(NodeId).collect();
                    Item::Entry(Entry {
                        term: Term(term),
                        index: LogIndex(index),
                        payload: EntryPayload::Membership(Membership { members, retired }),
                    })
                }),
            any::<u64>().prop_map(|commit| Item::Commit(LogIndex(commit))),
            (any::<u64>(), any::<u64>()).prop_map(|(term, index)| Item::Snapshot(
                SnapshotMeta::at(EntryId::new(Term(term), LogIndex(index)))
            )),
        ]
    }

    fn encode(items: &[Item], offset: u64) -> Vec<u8> {
        let mut batch = BatchWriter::new();
        for item in items {
            match item {
                Item::Entry(entry) => {
                    assert!(batch.fits(BatchWriter::entry_bytes(entry)));
                    let before = batch.record_bytes();
                    batch.push_entry(entry);
                    assert_eq!(
                        batch.record_bytes() - before,
                        BatchWriter::entry_bytes(entry)
                    );
                }
                Item::Commit(commit) => batch.push_commit(*commit),
                Item::Snapshot(snapshot) => {
                    let before = batch.record_bytes();
                    batch.push_snapshot(snapshot);
                    assert_eq!(
                        batch.record_bytes() - before,
                        BatchWriter::SNAPSHOT_ITEM_BYTES
                    );
                }
            }
        }
        batch.finish(offset).to_vec()
    }

    proptest! {
        #[test]
        fn batch_round_trips(items in proptest::collection::vec(item_strategy(), 0..20),
                             offset in any::<u64>()) {
            let bytes = encode(&items, offset);
            let RecordRead::Valid { payload, end } = read_record(&bytes, 0) else {
                panic!("record does not read back");
            };
            prop_assert_eq!(end, bytes.len());
            prop_assert_eq!(decode_batch(payload, offset), Ok(items));
            // A record names its own offset: found where it was placed, nowhere else.
            prop_assert_eq!(batch_record_starts_at(&bytes, 0), offset == 0);
        }

        #[test]
        fn any_flipped_bit_is_detected(items in proptest::collection::vec(item_strategy(), 1..5),
                                       bit in any::<proptest::sample::Index>()) {
            let mut bytes = encode(&items, 0);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!matches!(read_record(&bytes, 0), RecordRead::Valid { .. }),
                "bit {} flipped went unnoticed", bit);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                offset in 0usize..210) {
            let _ = read_record(&bytes, offset);
            let _ = batch_record_starts_at(&bytes, offset);
            let _ = decode_batch(&bytes, 0);
            let _ = decode_hard_state(&bytes);
        }

        #[test]
        fn zero_tail_start_finds_where_the_trailing_zeros_begin(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            zeros in prop_oneof![0usize..10, 4090usize..4100, 9000usize..9000 + 1],
        ) {
            let mut bytes = data.clone();
            bytes.resize(data.len() + zeros, 0);
            let expected = bytes.iter().rposition(|byte| *byte != 0).map_or(0, |at| at + 1);
            prop_assert_eq!(zero_tail_start(&bytes), expected);
        }

        #[test]
        fn hard_state_round_trips(term in any::<u64>(), vote in any::<Option<u64>>(),
                                  commit in any::<u64>()) {
            let hard_state = HardState {
                term: Term(term),
                vote: vote.map(NodeId),
                commit: LogIndex(commit),
            };
            prop_assert_eq!(decode_hard_state(&encode_hard_state(&hard_state)), Ok(hard_state));
        }
    }

    /// Memberships as hostile bytes could describe them: ids in any order, repeated,
    /// retired while members, every voter flag.
    fn any_membership() -> impl Strategy<Value = Membership> {
        (
            proptest::collection::vec(
                (
                    0u64..6,
                    any::<bool>(),
                    proptest::collection::vec(any::<u8>(), 0..12),
                ),
                0..6,
            ),
            proptest::collection::vec(0u64..6, 0..3),
        )
            .prop_map(|(members, retired)| Membership {
                members: members
                    .into_iter()
                    .map(|(id, voter, info)| Member {
                        id: NodeId(id),
                        voter,
                        info: Bytes::from(info),
                    })
                    .collect(),
                retired: retired.into_iter().map(NodeId).collect(),
            })
    }

    fn membership_encoded(membership: &Membership) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_membership(&mut bytes, membership);
        bytes
    }

    proptest! {
        #[test]
        fn hostile_membership_bytes_never_panic_nor_decode_ill_formed(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(membership) = decode_membership_bytes(&bytes) {
                prop_assert_eq!(membership.check_well_formed(), Ok(()));
            }
        }

        #[test]
        fn a_membership_decodes_iff_well_formed(membership in any_membership()) {
            let decoded = decode_membership_bytes(&membership_encoded(&membership));
            match membership.check_well_formed() {
                Ok(()) => prop_assert_eq!(decoded, Ok(membership)),
                Err(_) => prop_assert!(decoded.is_err(), "{:?} decoded", membership),
            }
        }

        #[test]
        fn mutated_memberships_never_panic_nor_decode_ill_formed(
            membership in any_membership(),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<proptest::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = membership_encoded(&membership);
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if let Ok(decoded) = decode_membership_bytes(&bytes) {
                prop_assert_eq!(decoded.check_well_formed(), Ok(()));
            }
            // The same bytes inside a batch record's entry.
            let mut payload = 0u64.to_le_bytes().to_vec();
            payload.extend_from_slice(&[KIND_BATCH, 1, 0, 0, 0, ITEM_ENTRY]);
            payload.extend_from_slice(&1u64.to_le_bytes());
            payload.extend_from_slice(&1u64.to_le_bytes());
            payload.push(PAYLOAD_MEMBERSHIP);
            payload.extend_from_slice(&bytes);
            if let Ok(items) = decode_batch(&payload, 0) {
                for item in items {
                    if let Item::Entry(Entry { payload: EntryPayload::Membership(decoded), .. }) = item {
                        prop_assert_eq!(decoded.check_well_formed(), Ok(()));
                    }
                }
            }
        }
    }

    #[test]
    fn ill_formed_memberships_are_refused() {
        let member = |id: u64, voter: bool| Member {
            id: NodeId(id),
            voter,
            info: Bytes::new(),
        };
        let cases = [
            (
                "duplicate ids",
                vec![member(1, true), member(1, true)],
                vec![],
            ),
            ("no voter", vec![member(1, false), member(2, false)], vec![]),
            ("unsorted", vec![member(2, true), member(1, true)], vec![]),
            ("a retired member", vec![member(1, true)], vec![NodeId(1)]),
            (
                "retired ids repeated",
                vec![member(1, true)],
                vec![NodeId(2), NodeId(2)],
            ),
        ];
        for (name, members, retired) in cases {
            let bytes = membership_encoded(&Membership { members, retired });
            assert!(decode_membership_bytes(&bytes).is_err(), "{name} decoded");
        }
        // An empty membership ("not known here") is well formed.
        let empty = membership_encoded(&Membership::default());
        assert_eq!(decode_membership_bytes(&empty), Ok(Membership::default()));
    }

    #[test]
    fn zeros_are_never_a_record() {
        // Recovery takes zeros after the last record for unused preallocated space; that
        // relies on a zeroed header never framing a record, however many zeros follow.
        for len in [0, 1, 7, 8, 9, 16, 64, 4096] {
            let zeros = vec![0u8; len];
            assert!(
                !matches!(read_record(&zeros, 0), RecordRead::Valid { .. }),
                "{len} zeros read as a record"
            );
            assert!(!batch_record_starts_at(&zeros, 0), "{len} zeros");
        }
        assert_eq!(zero_tail_start(&[0; 64 * 1024]), 0);
        let mut bytes = vec![0u8; 64 * 1024];
        bytes[4096] = 1;
        assert_eq!(zero_tail_start(&bytes), 4097);
    }

    #[test]
    fn record_elsewhere_is_not_taken_for_one_here() {
        // A valid record copied to another position (as inside a command) names its old
        // offset, so a scan does not mistake it for a record.
        let record = encode(&[Item::Commit(LogIndex(7))], 0);
        let mut bytes = vec![0u8; 5];
        bytes.extend_from_slice(&record);
        assert!(!batch_record_starts_at(&bytes, 5));
        let moved = encode(&[Item::Commit(LogIndex(7))], 5);
        bytes.truncate(5);
        bytes.extend_from_slice(&moved);
        assert!(batch_record_starts_at(&bytes, 5));
    }

    #[test]
    fn decode_rejects_bad_payloads() {
        let cases: [(&str, Vec<u8>, u64); 4] = [
            ("empty", vec![], 0),
            ("wrong offset", encode(&[], 9)[8..].to_vec(), 0),
            (
                "unknown kind",
                [&0u64.to_le_bytes()[..], &[9, 0, 0, 0, 0]].concat(),
                0,
            ),
            (
                "count larger than items",
                [&0u64.to_le_bytes()[..], &[1, 1, 0, 0, 0]].concat(),
                0,
            ),
        ];
        for (number, (name, payload, offset)) in cases.iter().enumerate() {
            assert!(
                decode_batch(payload, *offset).is_err(),
                "case {number} ({name}) decoded"
            );
        }
    }
}
