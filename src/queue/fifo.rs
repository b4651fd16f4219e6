//! One topic's messages, oldest first, packed back to back in byte segments.
//!
//! Why not a `VecDeque<Payload>`: every queued message would cost a 24-byte slot (up to 48
//! with the deque's spare capacity) plus its own heap allocation (glibc rounds a 100-byte
//! payload up to a 112-byte chunk): about 40 bytes of overhead per 100-byte message, 38 MiB
//! for the 1-million-message target. Here a message costs its bytes plus a 4-byte header,
//! and the allocator sees one allocation per segment instead of one per message.
//!
//! ```text
//! segment = record*            (records never straddle two segments)
//! record  = { header: u32 LE | bytes: [u8; header & 0x7fff_ffff] }
//!           header bit 31 set: the message was Payload::Text (bytes are valid UTF-8)
//! ```
//!
//! Memory is released as messages are popped: a segment is freed once its last record is
//! read, and a front segment whose read prefix dwarfs its unread rest is compacted and
//! shrunk (amortised: the bytes moved are at most 1/8 of the bytes read since the last
//! compaction). A new segment starts small and doubles up to [`SEGMENT_BYTES_TARGET`], so a
//! topic holding one small message holds a small allocation.
//!
//! Equality is logical (same messages in the same order), never physical: a node restored
//! from a snapshot packs its segments differently from one that applied the log.
//!
//! # Cheap clones for snapshots
//!
//! Segments are `Arc`-shared, so `clone` copies one pointer per segment (about 3,200 for a
//! million 100-byte messages), not the messages: that is what lets the node serialize a
//! consistent view of a large queue on another thread without pausing. A segment is
//! immutable while shared. Writing to a shared one copies it first (copy-on-write): a push
//! copies at most the partly filled tail segment, and compacting the front copies only its
//! unread rest; popping whole segments copies nothing. So after a clone, the original pays
//! at most two segment copies (64 KiB) per topic, once.
//!
//! This type must not know about topics, sessions or the log: it is a FIFO of payloads.

use super::command::PayloadRef;
use crate::protocol::Payload;
use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

/// What a queued message costs besides its bytes: the queue's quota counts it too.
pub const RECORD_HEADER_BYTES: usize = 4;
const TEXT_FLAG: u32 = 1 << 31;

/// The largest message a record header can describe (2 GiB - 1). The protocol's limit
/// (1 MiB by default) is far below; this only keeps the header honest.
pub const MESSAGE_BYTES_MAX: usize = (TEXT_FLAG - 1) as usize;

/// Segments grow up to this size; a larger record gets a segment of its own.
pub const SEGMENT_BYTES_TARGET: usize = 32 * 1024;

/// A new segment's first capacity when the topic was empty.
const SEGMENT_BYTES_INITIAL: usize = 128;

/// The front segment is compacted once at least this many bytes were read from it...
const COMPACT_READ_BYTES_MIN: usize = 1024;
/// ...and the read prefix is at least this many times the unread rest.
const COMPACT_READ_TO_UNREAD_RATIO: usize = 8;
/// A compacted segment with more capacity than this shrinks to twice what it holds.
const SHRINK_CAPACITY_MIN: usize = 4096;

/// A message longer than [`MESSAGE_BYTES_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageTooLarge {
    pub bytes: usize,
}

#[derive(Clone, Default)]
pub struct MessageFifo {
    /// Invariant: no segment is empty, and the front segment has unread bytes from
    /// `front_offset` on; `segments.is_empty()` exactly when `len == 0`. A segment shared
    /// with a clone (a snapshot view) is never written: see the module docs.
    segments: VecDeque<Arc<Vec<u8>>>,
    /// Where the oldest unread record starts in `segments[0]`. Invariant: a record
    /// boundary; 0 when there is no segment.
    front_offset: usize,
    /// Messages queued.
    len: usize,
    /// Sum of the queued messages' lengths (headers not counted).
    payload_bytes: usize,
}

/// A stored message, borrowed: what [`MessageFifo::iter`] yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredMessage<'a> {
    pub text: bool,
    pub bytes: &'a [u8],
}

impl StoredMessage<'_> {
    pub fn to_payload(self) -> Payload {
        payload_from_record(self.text, self.bytes.to_vec())
    }
}

fn payload_from_record(text: bool, bytes: Vec<u8>) -> Payload {
    if text {
        Payload::Text(String::from_utf8(bytes).expect("a text record holds the bytes of a String"))
    } else {
        Payload::Binary(bytes)
    }
}

fn parse_header(segment: &[u8], offset: usize) -> (bool, usize) {
    let header: [u8; RECORD_HEADER_BYTES] = segment[offset..offset + RECORD_HEADER_BYTES]
        .try_into()
        .expect("the slice is exactly RECORD_HEADER_BYTES long");
    let header = u32::from_le_bytes(header);
    (header & TEXT_FLAG != 0, (header & !TEXT_FLAG) as usize)
}

impl MessageFifo {
    pub fn new() -> MessageFifo {
        MessageFifo::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Appends a message at the back.
    pub fn push(&mut self, payload: &Payload) -> Result<(), MessageTooLarge> {
        self.push_ref(payload.into())
    }

    /// [`MessageFifo::push`] of a borrowed message.
    pub fn push_ref(&mut self, payload: PayloadRef<'_>) -> Result<(), MessageTooLarge> {
        let (text, bytes) = (payload.is_text(), payload.bytes());
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(MessageTooLarge { bytes: bytes.len() });
        }
        let header = bytes.len() as u32 | if text { TEXT_FLAG } else { 0 };
        let segment = self.segment_with_room(RECORD_HEADER_BYTES + bytes.len());
        segment.extend_from_slice(&header.to_le_bytes());
        segment.extend_from_slice(bytes);
        self.len += 1;
        self.payload_bytes += bytes.len();
        Ok(())
    }

    /// The segment the next record of `record_bytes` goes to, with capacity reserved. A tail
    /// segment shared with a clone is copied first.
    fn segment_with_room(&mut self, record_bytes: usize) -> &mut Vec<u8> {
        let had_segments = !self.segments.is_empty();
        let tail_capacity = self.segments.back().and_then(|last| {
            let needed = last.len() + record_bytes;
            if needed <= last.capacity() {
                Some(last.capacity())
            } else if needed <= SEGMENT_BYTES_TARGET {
                // Grow by doubling, but never past the target: a reallocation copies.
                Some((last.capacity() * 2).clamp(needed, SEGMENT_BYTES_TARGET))
            } else {
                None
            }
        });
        if let Some(capacity) = tail_capacity {
            let last = Arc::make_mut(self.segments.back_mut().expect("checked just above"));
            if last.capacity() < capacity {
                last.reserve_exact(capacity - last.len());
            }
            return last;
        }
        // A backlog is building up: go straight to a full-size segment rather than
        // doubling through small ones.
        let capacity = if had_segments {
            SEGMENT_BYTES_TARGET.max(record_bytes)
        } else {
            SEGMENT_BYTES_INITIAL.max(record_bytes)
        };
        self.segments
            .push_back(Arc::new(Vec::with_capacity(capacity)));
        Arc::get_mut(self.segments.back_mut().expect("just pushed"))
            .expect("a segment just created is not shared")
    }

    /// Removes and returns the oldest message.
    pub fn pop(&mut self) -> Option<Payload> {
        let front = self.segments.front()?;
        let (text, length) = parse_header(front, self.front_offset);
        let start = self.front_offset + RECORD_HEADER_BYTES;
        let end = start + length;
        let bytes = front[start..end].to_vec();
        self.front_offset = end;
        let unread = front.len() - end;
        if unread == 0 {
            self.segments.pop_front();
            self.front_offset = 0;
            self.maybe_shrink_segment_deque();
        } else if end >= COMPACT_READ_BYTES_MIN && end >= COMPACT_READ_TO_UNREAD_RATIO * unread {
            let slot = self.segments.front_mut().expect("read from just above");
            // Small segments keep their room (the steady state of a producer just ahead of
            // its consumer then never reallocates); large ones give it back.
            let keep_capacity = if slot.capacity() > SHRINK_CAPACITY_MIN {
                unread * 2
            } else {
                slot.capacity()
            };
            match Arc::get_mut(slot) {
                Some(front) => {
                    front.drain(..end);
                    front.shrink_to(keep_capacity);
                }
                None => {
                    // Shared with a snapshot view: copy only the unread rest.
                    let mut rest = Vec::with_capacity(keep_capacity.max(unread));
                    rest.extend_from_slice(&slot[end..]);
                    *slot = Arc::new(rest);
                }
            }
            self.front_offset = 0;
        }
        self.len -= 1;
        self.payload_bytes -= length;
        Some(payload_from_record(text, bytes))
    }

    fn maybe_shrink_segment_deque(&mut self) {
        let capacity = self.segments.capacity();
        if self.segments.is_empty() {
            // Many topics sit empty: they should cost nothing on the heap.
            self.segments = VecDeque::new();
        } else if capacity > 8 && self.segments.len() * 4 <= capacity {
            self.segments.shrink_to(self.segments.len() * 2);
        }
    }

    /// The queued messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = StoredMessage<'_>> + '_ {
        self.segments
            .iter()
            .enumerate()
            .flat_map(move |(position, segment)| {
                let start = if position == 0 { self.front_offset } else { 0 };
                Records {
                    segment: segment.as_slice(),
                    offset: start,
                }
            })
    }

    /// Panics if a structural invariant is broken. O(messages); for tests and debug builds.
    pub fn check_invariants(&self) {
        if self.segments.is_empty() {
            assert_eq!(self.len, 0, "no segment but {} messages counted", self.len);
            assert_eq!(self.front_offset, 0, "no segment but a front offset");
        }
        let mut count = 0;
        let mut bytes = 0;
        for (position, segment) in self.segments.iter().enumerate() {
            assert!(!segment.is_empty(), "segment {position} is empty");
            let mut offset = if position == 0 { self.front_offset } else { 0 };
            assert!(
                offset < segment.len(),
                "segment {position} has nothing unread"
            );
            while offset < segment.len() {
                assert!(
                    offset + RECORD_HEADER_BYTES <= segment.len(),
                    "segment {position}: header at {offset} straddles the end"
                );
                let (text, length) = parse_header(segment, offset);
                let end = offset + RECORD_HEADER_BYTES + length;
                assert!(
                    end <= segment.len(),
                    "segment {position}: record at {offset} straddles the end"
                );
                if text {
                    let record = &segment[offset + RECORD_HEADER_BYTES..end];
                    assert!(
                        std::str::from_utf8(record).is_ok(),
                        "segment {position}: text record at {offset} is not UTF-8"
                    );
                }
                count += 1;
                bytes += length;
                offset = end;
            }
        }
        assert_eq!(count, self.len, "records counted vs len");
        assert_eq!(bytes, self.payload_bytes, "record bytes vs payload_bytes");
    }
}

struct Records<'a> {
    segment: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = StoredMessage<'a>;

    fn next(&mut self) -> Option<StoredMessage<'a>> {
        if self.offset >= self.segment.len() {
            return None;
        }
        let (text, length) = parse_header(self.segment, self.offset);
        let start = self.offset + RECORD_HEADER_BYTES;
        self.offset = start + length;
        Some(StoredMessage {
            text,
            bytes: &self.segment[start..self.offset],
        })
    }
}

impl PartialEq for MessageFifo {
    fn eq(&self, other: &MessageFifo) -> bool {
        self.len == other.len
            && self.payload_bytes == other.payload_bytes
            && self.iter().eq(other.iter())
    }
}

impl Eq for MessageFifo {}

impl fmt::Debug for MessageFifo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let mut list = f.debug_list();
        for message in self.iter().take(SHOWN) {
            list.entry(&message.to_payload());
        }
        if self.len > SHOWN {
            list.entry(&format_args!("... {} more", self.len - SHOWN));
        }
        list.finish()
    }
}

/// Serializes exactly like [`Payload`]'s derive, without building a `Payload`.
impl Serialize for StoredMessage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.text {
            let text =
                std::str::from_utf8(self.bytes).expect("a text record holds the bytes of a String");
            serializer.serialize_newtype_variant("Payload", 0, "Text", text)
        } else {
            serializer.serialize_newtype_variant(
                "Payload",
                1,
                "Binary",
                serde_bytes::Bytes::new(self.bytes),
            )
        }
    }
}

/// A sequence of payloads, oldest first: the snapshot form. Streams; builds no `Vec`.
impl Serialize for MessageFifo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(self.len))?;
        for message in self.iter() {
            sequence.serialize_element(&message)?;
        }
        sequence.end()
    }
}

impl<'de> Deserialize<'de> for MessageFifo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MessageFifo, D::Error> {
        struct FifoVisitor;

        impl<'de> Visitor<'de> for FifoVisitor {
            type Value = MessageFifo;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of payloads")
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut sequence: A,
            ) -> Result<MessageFifo, A::Error> {
                let mut fifo = MessageFifo::new();
                while let Some(payload) = sequence.next_element::<Payload>()? {
                    fifo.push(&payload).map_err(|error| {
                        serde::de::Error::custom(format!(
                            "message of {} bytes is over {MESSAGE_BYTES_MAX}",
                            error.bytes
                        ))
                    })?;
                }
                Ok(fifo)
            }
        }

        deserializer.deserialize_seq(FifoVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl MessageFifo {
        /// Heap bytes held (segment capacities and the segment deque), for memory
        /// accounting. Segments shared with a clone are counted by both.
        pub(crate) fn heap_bytes(&self) -> usize {
            let segments: usize = self.segments.iter().map(|segment| segment.capacity()).sum();
            segments + self.segments.capacity() * std::mem::size_of::<Arc<Vec<u8>>>()
        }
    }

    fn text(s: &str) -> Payload {
        Payload::Text(s.to_string())
    }

    fn binary(length: usize, fill: u8) -> Payload {
        Payload::Binary(vec![fill; length])
    }

    #[test]
    fn pops_in_push_order_and_keeps_the_payload_kind() {
        let pushed = [
            text("one"),
            binary(0, 0),
            text(""),
            binary(3, 0xff),
            text("ünïcödé"),
            binary(SEGMENT_BYTES_TARGET + 10, 7),
            text("after the big one"),
        ];
        let mut fifo = MessageFifo::new();
        for payload in &pushed {
            fifo.push(payload).expect("small payload");
            fifo.check_invariants();
        }
        assert_eq!(fifo.len(), pushed.len());
        let collected: Vec<Payload> = fifo.iter().map(StoredMessage::to_payload).collect();
        assert_eq!(collected, pushed);
        for (case, payload) in pushed.iter().enumerate() {
            assert_eq!(fifo.pop().as_ref(), Some(payload), "case {case}");
            fifo.check_invariants();
        }
        assert_eq!(fifo.pop(), None);
        assert_eq!(fifo.heap_bytes(), 0, "an emptied fifo holds no segment");
    }

    #[test]
    fn overhead_is_a_header_per_message() {
        // 100k messages of 100 bytes: the shape of the benchmark target, scaled down 10x.
        let messages = 100_000;
        let mut fifo = MessageFifo::new();
        for n in 0..messages {
            fifo.push(&binary(100, n as u8)).expect("small payload");
        }
        let payload = messages * 100;
        let overhead = fifo.heap_bytes() - payload;
        // 4 header bytes, plus at most one record's worth of slack per 32 KiB segment.
        assert!(
            overhead <= messages * 6,
            "overhead {overhead} bytes for {messages} messages ({} per message)",
            overhead / messages
        );
    }

    #[test]
    fn popping_releases_memory() {
        let mut fifo = MessageFifo::new();
        for n in 0..100_000 {
            fifo.push(&binary(100, n as u8)).expect("small payload");
        }
        for _ in 0..99_999 {
            fifo.pop().expect("not yet empty");
        }
        fifo.check_invariants();
        assert!(
            fifo.heap_bytes() <= 4096,
            "{} bytes held for one message",
            fifo.heap_bytes()
        );
        fifo.pop().expect("one left");
        assert_eq!(fifo.heap_bytes(), 0);
    }

    #[test]
    fn steady_state_with_a_small_backlog_stays_small() {
        // A producer one message ahead of its consumer must not grow a segment forever.
        let mut fifo = MessageFifo::new();
        fifo.push(&binary(100, 0)).expect("small payload");
        let mut held_max = 0;
        for n in 0..100_000 {
            fifo.push(&binary(100, n as u8)).expect("small payload");
            fifo.pop().expect("one queued");
            held_max = held_max.max(fifo.heap_bytes());
        }
        fifo.check_invariants();
        assert!(
            held_max <= 4096,
            "held up to {held_max} bytes for a backlog of 1"
        );
    }

    #[test]
    fn equality_ignores_segment_layout() {
        let mut churned = MessageFifo::new();
        let mut fresh = MessageFifo::new();
        for n in 0..2000 {
            churned.push(&binary(50, n as u8)).expect("small payload");
        }
        for _ in 0..1990 {
            churned.pop();
        }
        for n in 1990..2000 {
            fresh.push(&binary(50, n as u8)).expect("small payload");
        }
        assert_eq!(churned, fresh);
        fresh.pop();
        assert_ne!(churned, fresh);
    }

    #[test]
    fn snapshot_form_is_a_payload_sequence() {
        let mut fifo = MessageFifo::new();
        let payloads = vec![text("a"), binary(2, 9), text("")];
        for payload in &payloads {
            fifo.push(payload).expect("small payload");
        }
        let encoded = rmp_serde::to_vec(&fifo).expect("encoding to a Vec");
        assert_eq!(
            encoded,
            rmp_serde::to_vec(&payloads).expect("encoding to a Vec")
        );
        let decoded: MessageFifo = rmp_serde::from_slice(&encoded).expect("round trip");
        decoded.check_invariants();
        assert_eq!(decoded, fifo);
    }

    #[test]
    fn a_clone_shares_segments_and_never_sees_later_changes() {
        let mut fifo = MessageFifo::new();
        for n in 0..10_000 {
            fifo.push(&binary(100, n as u8)).expect("small payload");
        }
        let view = fifo.clone();
        for (position, (original, copy)) in fifo.segments.iter().zip(&view.segments).enumerate() {
            assert!(Arc::ptr_eq(original, copy), "segment {position} was copied");
        }
        let before: Vec<Payload> = view.iter().map(StoredMessage::to_payload).collect();
        // Pops that compact the shared front segment, pushes into the shared tail.
        for n in 0..5_000 {
            fifo.pop().expect("queued");
            fifo.push(&text(&format!("new {n}")))
                .expect("small payload");
            fifo.check_invariants();
        }
        view.check_invariants();
        let after: Vec<Payload> = view.iter().map(StoredMessage::to_payload).collect();
        assert_eq!(after, before, "the view changed under the writer");
        let shared = fifo
            .segments
            .iter()
            .filter(|segment| {
                view.segments
                    .iter()
                    .any(|other| Arc::ptr_eq(segment, other))
            })
            .count();
        assert!(shared > 0, "untouched middle segments are still shared");
    }

    fn payload_strategy() -> impl Strategy<Value = Payload> {
        let small = prop_oneof![
            ".{0,40}".prop_map(Payload::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Payload::Binary),
        ];
        let large = (0usize..(SEGMENT_BYTES_TARGET + 2000), any::<u8>())
            .prop_map(|(length, fill)| Payload::Binary(vec![fill; length]));
        prop_oneof![8 => small, 1 => large]
    }

    #[derive(Clone, Debug)]
    enum Step {
        Push(Payload),
        Pop,
        Clone,
    }

    proptest! {
        #[test]
        fn behaves_like_a_vecdeque(steps in proptest::collection::vec(
            prop_oneof![3 => payload_strategy().prop_map(Step::Push), 2 => Just(Step::Pop)],
            0..300,
        )) {
            let mut fifo = MessageFifo::new();
            let mut model: VecDeque<Payload> = VecDeque::new();
            for (number, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Push(payload) => {
                        fifo.push(&payload).expect("small payload");
                        model.push_back(payload);
                    }
                    Step::Pop => prop_assert_eq!(fifo.pop(), model.pop_front(), "step {}", number),
                    Step::Clone => unreachable!("this strategy makes no clones"),
                }
                fifo.check_invariants();
                prop_assert_eq!(fifo.len(), model.len(), "step {}", number);
                let model_bytes: usize = model.iter().map(Payload::len).sum();
                prop_assert_eq!(fifo.payload_bytes(), model_bytes, "step {}", number);
                // Memory stays proportional to what is queued.
                let held_max = 2 * (model_bytes + 4 * model.len()) + 2 * SEGMENT_BYTES_TARGET;
                prop_assert!(fifo.heap_bytes() <= held_max, "step {}: {} > {}", number, fifo.heap_bytes(), held_max);
            }
            let remaining: Vec<Payload> = fifo.iter().map(StoredMessage::to_payload).collect();
            prop_assert_eq!(remaining, Vec::from(model));
        }

        #[test]
        fn clones_taken_at_any_point_keep_their_contents(steps in proptest::collection::vec(
            prop_oneof![
                3 => payload_strategy().prop_map(Step::Push),
                2 => Just(Step::Pop),
                1 => Just(Step::Clone),
            ],
            0..300,
        )) {
            let mut fifo = MessageFifo::new();
            let mut model: VecDeque<Payload> = VecDeque::new();
            let mut views: Vec<(MessageFifo, Vec<Payload>)> = Vec::new();
            for (number, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Push(payload) => {
                        fifo.push(&payload).expect("small payload");
                        model.push_back(payload);
                    }
                    Step::Pop => prop_assert_eq!(fifo.pop(), model.pop_front(), "step {}", number),
                    Step::Clone => views.push((fifo.clone(), Vec::from(model.clone()))),
                }
            }
            for (number, (view, expected)) in views.iter().enumerate() {
                view.check_invariants();
                let held: Vec<Payload> = view.iter().map(StoredMessage::to_payload).collect();
                prop_assert_eq!(&held, expected, "view {}", number);
            }
            let remaining: Vec<Payload> = fifo.iter().map(StoredMessage::to_payload).collect();
            prop_assert_eq!(remaining, Vec::from(model));
        }
    }
}
