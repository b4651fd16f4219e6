//! The queue's snapshot form: its whole state as one MessagePack stream, and a digest of it.
//!
//! The form is logical (topics, their messages oldest first, sessions oldest first), not the
//! in-memory layout, so it is the same on every node that applied the same entries and it
//! survives changes to how messages are packed in memory. Both directions stream: encoding
//! walks the state without copying it, decoding pushes each message as it is read.
//!
//! ```text
//! snapshot = format: uint (= 1), body
//! body     = [ last_applied: uint,
//!              topics:   [ [name: str, [payload, ...oldest first]], ...creation order ],
//!              sessions: [ [client_id: str, seq: uint, outcome, last_used: uint], ...oldest first ] ]
//! ```
//!
//! Integrity (checksums, atomic file replacement) is the caller's job: this module trusts
//! nothing it reads, but cannot tell a flipped bit inside a message from the real thing.

use super::fifo::MessageFifo;
use super::session::{Session, Sessions};
use super::{Queue, QueueConfig, Topic};
use crate::protocol::Outcome;
use crate::raft::LogIndex;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::HashMap;
use std::io::{self, Read, Write};

const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot write failed: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("snapshot is not readable: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("snapshot read failed: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot format {found} is not supported (this build reads {SNAPSHOT_FORMAT})")]
    Format { found: u32 },
    #[error("snapshot is inconsistent: {0}")]
    Invalid(String),
}

#[derive(Serialize)]
struct BodyRef<'a> {
    last_applied: LogIndex,
    topics: TopicsRef<'a>,
    sessions: SessionsRef<'a>,
}

struct TopicsRef<'a>(&'a [Topic]);

impl Serialize for TopicsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|topic| (&topic.name, &topic.messages)))
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

#[derive(Deserialize)]
struct Body {
    last_applied: LogIndex,
    topics: Vec<(String, MessageFifo)>,
    sessions: Vec<(String, u64, Outcome, LogIndex)>,
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
        if format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format { found: format });
        }
        let body = Body::deserialize(&mut deserializer)?;
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
        for (name, messages) in body.topics {
            if queue.topic_index.contains_key(&name) {
                return Err(SnapshotError::Invalid(format!(
                    "topic {name:?} appears twice"
                )));
            }
            queue.messages += messages.len();
            queue.payload_bytes += messages.payload_bytes();
            queue.topic_index.insert(name.clone(), queue.topics.len());
            queue.topics.push(Topic { name, messages });
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
    /// keeps applying. O(topics + sessions + message segments); copies no message and no
    /// kept reply (both are shared, copy-on-write: see `fifo`). For a million 100-byte
    /// messages in one topic that is about 3,200 pointer copies.
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
