//! The queue's snapshot form: its whole state as one MessagePack stream, and a digest of it.
//!
//! The form is logical (topics, their messages oldest first, sessions oldest first), not the
//! in-memory layout, so it is the same on every node that applied the same entries and it
//! survives changes to how messages are packed in memory. Both directions stream: encoding
//! walks the state without copying it, decoding pushes each message as it is read.
//!
//! ```text
//! snapshot = format: uint (= 2), body
//! body     = [ last_applied: uint,
//!              topics:   [ topic, ...creation order ],
//!              sessions: [ [client_id: str, seq: uint, outcome, last_used: uint], ...oldest first ],
//!              clock_ms: uint ]
//! topic    = [ name: str, [max_deliveries: nil | uint, dead_letter: nil | str],
//!              fresh:    [payload, ...oldest first],
//!              next_seq: uint,
//!              returned: [ [seq: uint, [payload, deliveries: uint]], ...by seq ],
//!              leased:   [ [seq: uint, [payload, deliveries: uint, granted_at: uint,
//!                                       deadline_ms: uint]], ...by seq ],
//!              discarded: uint ]
//! ```
//!
//! Format 1 (written before leases existed) is still read: its body is `[last_applied,
//! [[name, [payload, ...]], ...], sessions]`, a state with no lease, no setting, and seqs
//! numbered from 0 at each topic's oldest message.
//!
//! Integrity (checksums, atomic file replacement) is the caller's job: this module trusts
//! nothing it reads, but cannot tell a flipped bit inside a message from the real thing.

use super::fifo::MessageFifo;
use super::session::{Session, Sessions};
use super::topic::{Lease, Returned, Topic};
use super::{Queue, QueueConfig};
use crate::protocol::{Outcome, TopicSettings};
use crate::raft::LogIndex;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::HashMap;
use std::io::{self, Read, Write};

const SNAPSHOT_FORMAT: u32 = 2;
/// The format before leases: still read, never written.
const SNAPSHOT_FORMAT_V1: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot write failed: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("snapshot is not readable: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("snapshot read failed: {0}")]
    Io(#[from] io::Error),
    #[error(
        "snapshot format {found} is not supported (this build reads {SNAPSHOT_FORMAT_V1} and \
         {SNAPSHOT_FORMAT})"
    )]
    Format { found: u32 },
    #[error("snapshot is inconsistent: {0}")]
    Invalid(String),
}

#[derive(Serialize)]
struct BodyRef<'a> {
    last_applied: LogIndex,
    topics: TopicsRef<'a>,
    sessions: SessionsRef<'a>,
    clock_ms: u64,
}

struct TopicsRef<'a>(&'a [Topic]);

impl Serialize for TopicsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|topic| {
            (
                &topic.name,
                &topic.settings,
                &topic.messages,
                topic.next_seq,
                MapAsSeq(&topic.returned),
                MapAsSeq(&topic.leased),
                topic.discarded,
            )
        }))
    }
}

/// A map as a sequence of `[key, value]` pairs, in key order.
struct MapAsSeq<'a, V>(&'a std::collections::BTreeMap<u64, V>);

impl<V: Serialize> Serialize for MapAsSeq<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

struct SessionsRef<'a>(&'a Sessions);

impl Serialize for SessionsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter_oldest_first().map(|(client_id, session)| {
            (client_id, session.seq, &*session.outcome, session.last_used)
        }))
    }
}

type TopicBody = (
    String,
    TopicSettings,
    MessageFifo,
    u64,
    Vec<(u64, Returned)>,
    Vec<(u64, Lease)>,
    u64,
);

#[derive(Deserialize)]
struct Body {
    last_applied: LogIndex,
    topics: Vec<TopicBody>,
    sessions: Vec<(String, u64, Outcome, LogIndex)>,
    clock_ms: u64,
}

#[derive(Deserialize)]
struct BodyV1 {
    last_applied: LogIndex,
    topics: Vec<(String, MessageFifo)>,
    sessions: Vec<(String, u64, Outcome, LogIndex)>,
}

impl From<BodyV1> for Body {
    fn from(body: BodyV1) -> Body {
        Body {
            last_applied: body.last_applied,
            topics: body
                .topics
                .into_iter()
                .map(|(name, messages)| {
                    let next_seq = messages.len() as u64;
                    (
                        name,
                        TopicSettings::default(),
                        messages,
                        next_seq,
                        Vec::new(),
                        Vec::new(),
                        0,
                    )
                })
                .collect(),
            sessions: body.sessions,
            clock_ms: 0,
        }
    }
}

/// Checks one topic read from a snapshot against the invariants of [`Topic`].
fn restore_topic(topic: TopicBody) -> Result<Topic, SnapshotError> {
    let (name, settings, messages, next_seq, returned, leased, discarded) = topic;
    let invalid = |what: String| SnapshotError::Invalid(format!("topic {name:?}: {what}"));
    if settings.max_deliveries == Some(0) {
        return Err(invalid("max_deliveries 0".into()));
    }
    if settings.dead_letter.as_deref() == Some(name.as_str()) {
        return Err(invalid("it is its own dead_letter".into()));
    }
    let Some(fresh_first) = next_seq.checked_sub(messages.len() as u64) else {
        return Err(invalid(format!(
            "{} fresh messages but next seq {next_seq}",
            messages.len()
        )));
    };
    let mut restored = Topic::new(name.clone(), settings);
    restored.messages = messages;
    restored.next_seq = next_seq;
    restored.discarded = discarded;
    for (seq, message) in returned {
        if seq >= fresh_first || message.deliveries == 0 {
            return Err(invalid(format!("returned message {seq} is out of place")));
        }
        if restored.returned.insert(seq, message).is_some() {
            return Err(invalid(format!("returned message {seq} appears twice")));
        }
    }
    for (seq, lease) in leased {
        if seq >= fresh_first || lease.deliveries == 0 || restored.returned.contains_key(&seq) {
            return Err(invalid(format!("leased message {seq} is out of place")));
        }
        if restored.leased.insert(seq, lease).is_some() {
            return Err(invalid(format!("leased message {seq} appears twice")));
        }
    }
    Ok(restored)
}

/// A `Write` that only checksums what passes through.
struct Crc32cWriter {
    crc: u32,
}

impl Write for Crc32cWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Queue {
    /// Writes the whole state. Many small writes: give it a buffered writer.
    pub fn encode_snapshot<W: Write>(&self, mut writer: W) -> Result<(), SnapshotError> {
        rmp_serde::encode::write(&mut writer, &SNAPSHOT_FORMAT)?;
        let body = BodyRef {
            last_applied: self.last_applied,
            topics: TopicsRef(&self.topics),
            sessions: SessionsRef(&self.sessions),
            clock_ms: self.clock_ms,
        };
        rmp_serde::encode::write(&mut writer, &body)?;
        Ok(())
    }

    /// Reads a state written by [`Queue::encode_snapshot`]. Reads `reader` to its end: bytes
    /// after the snapshot are an error. If the snapshot holds more sessions than `config`
    /// allows, the least recently used are forgotten, as applying would have.
    ///
    /// Panics if `config` is invalid (see [`QueueConfig::validate`]).
    pub fn decode_snapshot<R: Read>(
        config: QueueConfig,
        mut reader: R,
    ) -> Result<Queue, SnapshotError> {
        let mut deserializer = rmp_serde::Deserializer::new(&mut reader);
        let format = u32::deserialize(&mut deserializer)?;
        let body = match format {
            SNAPSHOT_FORMAT => Body::deserialize(&mut deserializer)?,
            SNAPSHOT_FORMAT_V1 => Body::from(BodyV1::deserialize(&mut deserializer)?),
            found => return Err(SnapshotError::Format { found }),
        };
        drop(deserializer);
        let mut probe = [0u8; 1];
        if reader.read(&mut probe)? != 0 {
            return Err(SnapshotError::Invalid(
                "bytes after the end of the snapshot".into(),
            ));
        }

        let mut queue = Queue::new(config);
        queue.last_applied = body.last_applied;
        queue.topic_index = HashMap::with_capacity(body.topics.len());
        queue.clock_ms = body.clock_ms;
        for topic in body.topics {
            let topic = restore_topic(topic)?;
            if queue.topic_index.contains_key(&topic.name) {
                return Err(SnapshotError::Invalid(format!(
                    "topic {:?} appears twice",
                    topic.name
                )));
            }
            let position = queue.topics.len();
            queue.messages += topic.len();
            queue.payload_bytes += topic.payload_bytes();
            for (&seq, lease) in &topic.leased {
                queue.deadlines.insert((lease.deadline_ms, position, seq));
            }
            queue.topic_index.insert(topic.name.clone(), position);
            queue.topics.push(topic);
        }
        for (client_id, seq, outcome, last_used) in body.sessions {
            if last_used > body.last_applied {
                return Err(SnapshotError::Invalid(format!(
                    "session of {client_id:?} used at {last_used}, after the last applied index {}",
                    body.last_applied
                )));
            }
            let session = Session {
                seq,
                outcome: std::sync::Arc::new(outcome),
                last_used,
            };
            queue
                .sessions
                .restore(client_id, session)
                .map_err(SnapshotError::Invalid)?;
        }
        queue.sessions.evict_to(queue.config.session_limits());
        Ok(queue)
    }

    /// A consistent copy of the whole state, to serialize on another thread while this one
    /// keeps applying. O(topics + sessions + message segments + leased and returned
    /// messages); copies no packed message and no kept reply (both are shared,
    /// copy-on-write: see `fifo`), only the messages handed out under a lease and not yet
    /// ACKed, which are held one by one. For a million 100-byte messages in one topic that
    /// is about 3,200 pointer copies.
    pub fn snapshot_view(&self) -> Queue {
        self.clone()
    }

    /// A CRC32C of the snapshot form: equal states have equal digests, so nodes can compare
    /// their state machines without shipping them.
    pub fn digest(&self) -> u32 {
        let mut writer = Crc32cWriter { crc: 0 };
        self.encode_snapshot(&mut writer)
            .expect("encoding into a checksum cannot fail: its writes always succeed");
        writer.crc
    }
}
