//! The peer wire format: every frame that crosses from one node's internal port to another's.
//!
//! Why one module: Raft messages and snapshot transfer frames travel on the same ports, share
//! one header (wire version, cluster id), and the peer receiver must tell them apart with one
//! decoder. Keeping both layouts, their encoders, the decoder and its errors here means one
//! file answers "what bytes go between nodes"; the modules whose threads send and receive
//! them (`peer`, `snapshot_transfer`) use this one, and it uses neither.
//!
//! What it owns: [`PEER_WIRE_VERSION`], the frame layouts below, the bodies of transfer frames
//! ([`SnapshotChunk`], [`SnapshotAck`]), and the envelope check every inbound frame passes
//! ([`PeerFilter`], [`PeerDecodeError`]).
//!
//! ```text
//! frame    = raft | transfer                   one ZeroMQ frame, MessagePack arrays
//! raft     = [ version: u8 | cluster_id: u64 | message: raft::Message ]
//! transfer = [ version: u8 | cluster_id: u64 | kind: u8 | body ]
//!   kind 1: body = SnapshotChunk (data as bin)    kind 2: body = SnapshotAck
//! ```
//!
//! One Raft message per frame (an AppendEntries batch is one frame). A frame from another
//! cluster (different `cluster_id`, i.e. another config file), for another node, or from a
//! node that is not a peer is refused with a [`PeerDecodeError`]: that is a misconfiguration
//! or a stray process on a reused port, not an attack this layer defends against. A frame
//! carrying a membership that breaks its invariants (in an append's entry, or announced with
//! a snapshot) is refused as malformed: the decoder does not check them, the core needs them.
//!
//! What it must not do: touch sockets, files or threads. It is pure, so the codec is tested
//! (and benchmarked, `benches/hot_path.rs`) without a network.

use crate::raft::{EntryPayload, Message, MessageBody, NodeId, SnapshotMeta, Term};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Bumped when `raft::Message`'s encoding, or a transfer frame's, changes incompatibly.
pub const PEER_WIRE_VERSION: u8 = 1;

/// Why an inbound frame was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerDecodeError {
    #[error("malformed peer frame: {0}")]
    Malformed(String),
    #[error("peer wire version {0}, expected {PEER_WIRE_VERSION}")]
    WrongVersion(u8),
    #[error("message from another cluster (cluster id {0:#x})")]
    OtherCluster(u64),
    #[error("message for node {0}")]
    WrongRecipient(NodeId),
    #[error("message from unknown node {0}")]
    UnknownSender(NodeId),
}

/// What an inbound frame must match to be accepted.
#[derive(Clone, Copy, Debug)]
pub struct PeerFilter {
    pub cluster_id: u64,
    pub me: NodeId,
    pub node_count: usize,
}

/// What arrives on the peer port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFrame {
    Raft(Message),
    Transfer(TransferFrame),
}

/// A frame of the snapshot transfer protocol (as opposed to a Raft message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferFrame {
    Chunk(SnapshotChunk),
    Ack(SnapshotAck),
}

/// One piece of a snapshot file on its way from a leader to a follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub from: NodeId,
    pub to: NodeId,
    /// The term of the `InstallSnapshot` message this transfer delivers.
    pub term: Term,
    pub snapshot: SnapshotMeta,
    /// Tells two transfers of one snapshot apart (a transfer started again after a failure).
    pub transfer_id: u64,
    /// Where `data` goes in the file.
    pub offset: u64,
    pub data: Bytes,
    /// The file's length: the chunk ending there is the last.
    pub total_bytes: u64,
    /// The file's checksum (its trailer), compared by the receiver at the end.
    pub file_crc: u32,
}

impl SnapshotChunk {
    pub fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 == self.total_bytes
    }
}

/// What the receiver of a chunk answers (see `snapshot_transfer` for what the sender does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    /// Everything before `bytes` is written.
    Received { bytes: u64 },
    /// A gap: send again from `offset`.
    ResendFrom { offset: u64 },
    /// Checked whole and handed to the node loop.
    Delivered,
    /// Will not take this transfer (stale term, not the leader, too large, bad data).
    Refused { reason: String },
}

/// The receiver's answer to a chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAck {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub snapshot: SnapshotMeta,
    pub transfer_id: u64,
    pub status: AckStatus,
}

// ---- Raft frames ------------------------------------------------------------------------------

// raft frame = MessagePack array [ version: u8 | cluster_id: u64 | message: raft::Message ]
//   (message as rmp_serde's compact encoding: structs as arrays, enums as { variant: fields },
//   command payloads as bin)
pub fn encode_peer_message(cluster_id: u64, message: &Message) -> Vec<u8> {
    // Sized up front: entries carrying a batch of messages would otherwise be copied at every
    // doubling. ZeroMQ takes the frame without a copy (the spare capacity is given back by
    // shrinking the allocation, in place), so the estimate may err on the large side.
    const HEADER_BYTES: usize = 96;
    let entries_bytes = match &message.body {
        MessageBody::AppendEntries { entries, .. } => {
            entries.iter().map(|entry| entry.size_bytes()).sum()
        }
        _ => 0,
    };
    let mut frame = Vec::with_capacity(HEADER_BYTES + entries_bytes);
    rmp_serde::encode::write(&mut frame, &(PEER_WIRE_VERSION, cluster_id, message))
        .expect("a Raft message has only serializable fields and no maps with non-string keys");
    frame
}

/// Decodes a frame that must be a Raft message (a transfer frame is `Malformed` here).
pub fn decode_peer_message(frame: &[u8], filter: &PeerFilter) -> Result<Message, PeerDecodeError> {
    match decode_peer_frame(frame, filter)? {
        PeerFrame::Raft(message) => Ok(message),
        PeerFrame::Transfer(_) => Err(PeerDecodeError::Malformed(
            "a snapshot transfer frame, not a Raft message".to_string(),
        )),
    }
}

// ---- Transfer frames --------------------------------------------------------------------------

const KIND_CHUNK: u8 = 1;
const KIND_ACK: u8 = 2;

// transfer frame = MessagePack array [ version: u8 | cluster_id: u64 | kind: u8 | body ]
//   kind 1: body = SnapshotChunk (data as bin)    kind 2: body = SnapshotAck
//
// Four elements where a Raft message frame has three: old nodes drop it as malformed.
pub fn encode_transfer_frame(cluster_id: u64, frame: &TransferFrame) -> Vec<u8> {
    let encoded = match frame {
        TransferFrame::Chunk(chunk) => {
            rmp_serde::to_vec(&(PEER_WIRE_VERSION, cluster_id, KIND_CHUNK, chunk))
        }
        TransferFrame::Ack(ack) => {
            rmp_serde::to_vec(&(PEER_WIRE_VERSION, cluster_id, KIND_ACK, ack))
        }
    };
    encoded.expect("a transfer frame has only serializable fields and no maps")
}

/// Decodes a four-element frame; the caller checks the version, cluster and addresses.
fn decode_transfer_frame(frame: &[u8]) -> Result<(u8, u64, TransferFrame), String> {
    let (version, cluster_id, kind, _): (u8, u64, u8, serde::de::IgnoredAny) =
        rmp_serde::from_slice(frame).map_err(|error| error.to_string())?;
    let decoded = match kind {
        KIND_CHUNK => {
            let (_, _, _, chunk): (u8, u64, u8, SnapshotChunk) =
                rmp_serde::from_slice(frame).map_err(|error| error.to_string())?;
            TransferFrame::Chunk(chunk)
        }
        KIND_ACK => {
            let (_, _, _, ack): (u8, u64, u8, SnapshotAck) =
                rmp_serde::from_slice(frame).map_err(|error| error.to_string())?;
            TransferFrame::Ack(ack)
        }
        other => return Err(format!("unknown transfer frame kind {other}")),
    };
    Ok((version, cluster_id, decoded))
}

// ---- Either -----------------------------------------------------------------------------------

/// MessagePack's one-byte header of a three- and a four-element array: a Raft frame and a
/// transfer frame.
const FIXARRAY_3: u8 = 0x93;
const FIXARRAY_4: u8 = 0x94;

/// Decodes any peer frame and checks its envelope against `filter`.
pub fn decode_peer_frame(frame: &[u8], filter: &PeerFilter) -> Result<PeerFrame, PeerDecodeError> {
    if frame.first() == Some(&FIXARRAY_4) {
        let (version, cluster_id, decoded) = decode_transfer_frame(frame).map_err(|reason| {
            match rmp_serde::from_slice::<(u8, serde::de::IgnoredAny)>(frame) {
                Ok((version, _)) if version != PEER_WIRE_VERSION => {
                    PeerDecodeError::WrongVersion(version)
                }
                _ => PeerDecodeError::Malformed(reason),
            }
        })?;
        if version != PEER_WIRE_VERSION {
            return Err(PeerDecodeError::WrongVersion(version));
        }
        let (from, to) = match &decoded {
            TransferFrame::Chunk(chunk) => (chunk.from, chunk.to),
            TransferFrame::Ack(ack) => (ack.from, ack.to),
        };
        check_envelope(filter, cluster_id, from, to)?;
        let snapshot = match &decoded {
            TransferFrame::Chunk(chunk) => &chunk.snapshot,
            TransferFrame::Ack(ack) => &ack.snapshot,
        };
        check_membership(&snapshot.membership)?;
        return Ok(PeerFrame::Transfer(decoded));
    }
    if frame.first() != Some(&FIXARRAY_3) {
        return Err(PeerDecodeError::Malformed(
            "not a three- or four-element array".to_string(),
        ));
    }
    let (version, cluster_id, message): (u8, u64, Message) = match rmp_serde::from_slice(frame) {
        Ok(decoded) => decoded,
        Err(error) => {
            // Name a version mismatch rather than the decode failure it causes.
            let header: Result<(u8, u64, serde::de::IgnoredAny), _> = rmp_serde::from_slice(frame);
            return Err(match header {
                Ok((version, _, _)) if version != PEER_WIRE_VERSION => {
                    PeerDecodeError::WrongVersion(version)
                }
                _ => PeerDecodeError::Malformed(error.to_string()),
            });
        }
    };
    if version != PEER_WIRE_VERSION {
        return Err(PeerDecodeError::WrongVersion(version));
    }
    check_envelope(filter, cluster_id, message.from, message.to)?;
    match &message.body {
        MessageBody::AppendEntries { entries, .. } => {
            for entry in entries {
                if let EntryPayload::Membership(membership) = &entry.payload {
                    check_membership(membership)?;
                }
            }
        }
        MessageBody::InstallSnapshot { snapshot } => check_membership(&snapshot.membership)?,
        _ => {}
    }
    Ok(PeerFrame::Raft(message))
}

/// A membership from the network must keep the invariants every membership the cluster
/// writes keeps ([`crate::raft::Membership::check_well_formed`]: ids sorted and unique, no
/// member retired, a voter unless empty); the decoder alone does not check them, and the
/// core relies on them.
fn check_membership(membership: &crate::raft::Membership) -> Result<(), PeerDecodeError> {
    membership
        .check_well_formed()
        .map_err(|reason| PeerDecodeError::Malformed(format!("bad membership: {reason}")))
}

fn check_envelope(
    filter: &PeerFilter,
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
) -> Result<(), PeerDecodeError> {
    if cluster_id != filter.cluster_id {
        return Err(PeerDecodeError::OtherCluster(cluster_id));
    }
    if to != filter.me {
        return Err(PeerDecodeError::WrongRecipient(to));
    }
    let known = usize::try_from(from.0).is_ok_and(|from| from < filter.node_count);
    if !known || from == filter.me {
        return Err(PeerDecodeError::UnknownSender(from));
    }
    Ok(())
}

/// The codec's tests, and fixtures the transport's other tests share (`message`, `meta`,
/// `chunk_of`).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::raft::{
        AppendResult, Entry, EntryId, EntryPayload, LogIndex, MessageBody, RejectHint,
    };

    const CLUSTER: u64 = 0xfeed;

    fn filter(me: u64) -> PeerFilter {
        PeerFilter {
            cluster_id: CLUSTER,
            me: NodeId(me),
            node_count: 3,
        }
    }

    /// A message of term 7 from `from` to `to`.
    pub(crate) fn message(from: u64, to: u64, body: MessageBody) -> Message {
        Message {
            from: NodeId(from),
            to: NodeId(to),
            term: Term(7),
            body,
        }
    }

    fn every_kind_of_message() -> Vec<Message> {
        let entries = vec![
            Entry {
                term: Term(6),
                index: LogIndex(10),
                payload: EntryPayload::Noop,
            },
            Entry {
                term: Term(7),
                index: LogIndex(11),
                payload: EntryPayload::Command(Bytes::from(vec![0u8, 1, 2, 255])),
            },
        ];
        vec![
            message(
                0,
                1,
                MessageBody::RequestVote {
                    pre_vote: true,
                    last_log: EntryId::new(Term(6), LogIndex(9)),
                    leadership_transfer: false,
                },
            ),
            message(
                0,
                1,
                MessageBody::RequestVoteResponse {
                    pre_vote: false,
                    granted: true,
                },
            ),
            message(
                0,
                1,
                MessageBody::AppendEntries {
                    prev: EntryId::new(Term(6), LogIndex(9)),
                    entries,
                    commit: LogIndex(8),
                },
            ),
            message(
                0,
                1,
                MessageBody::AppendEntriesResponse(AppendResult::Accepted {
                    match_index: LogIndex(11),
                }),
            ),
            message(
                0,
                1,
                MessageBody::AppendEntriesResponse(AppendResult::Rejected {
                    prev_index: LogIndex(9),
                    hint: RejectHint::ConflictingTerm {
                        conflict_term: Term(3),
                        first_index: LogIndex(4),
                    },
                }),
            ),
            message(
                0,
                1,
                MessageBody::AppendEntriesResponse(AppendResult::Rejected {
                    prev_index: LogIndex(9),
                    hint: RejectHint::LogTooShort {
                        last_index: LogIndex(2),
                    },
                }),
            ),
            message(
                0,
                1,
                MessageBody::Heartbeat {
                    commit: LogIndex(3),
                    read_round: 12,
                },
            ),
            message(0, 1, MessageBody::HeartbeatResponse { read_round: 12 }),
            message(0, 1, MessageBody::TimeoutNow),
            message(
                0,
                1,
                MessageBody::InstallSnapshot {
                    snapshot: SnapshotMeta::at(EntryId::new(Term(5), LogIndex(100))),
                },
            ),
        ]
    }

    /// The bytes of one frame of each kind, as the wire format has them: a change here is
    /// a change of `PEER_WIRE_VERSION`, not a refactoring.
    fn golden_frames() -> Vec<(PeerFrame, &'static str)> {
        let raft = [
            "9301cdfeed9400010781ab52657175657374566f746593c3920609c2",
            "9301cdfeed9400010781b352657175657374566f7465526573706f6e736592c2c3",
            "9301cdfeed9400010781ad417070656e64456e7472696573939206099293060aa44e6f6f7093070b81\
             a7436f6d6d616e64c404000102ff08",
            "9301cdfeed9400010781b5417070656e64456e7472696573526573706f6e736581a84163636570746564\
             910b",
            "9301cdfeed9400010781b5417070656e64456e7472696573526573706f6e736581a852656a6563746564\
             920981af436f6e666c696374696e675465726d920304",
            "9301cdfeed9400010781b5417070656e64456e7472696573526573706f6e736581a852656a6563746564\
             920981ab4c6f67546f6f53686f72749102",
            "9301cdfeed9400010781a948656172746265617492030c",
            "9301cdfeed9400010781b1486561727462656174526573706f6e7365910c",
            "9301cdfeed94000107aa54696d656f75744e6f77",
            "9301cdfeed9400010781af496e7374616c6c536e617073686f749192920564929090",
        ];
        let mut frames: Vec<(PeerFrame, &'static str)> = every_kind_of_message()
            .into_iter()
            .map(PeerFrame::Raft)
            .zip(raft)
            .collect();
        let snapshot = SnapshotMeta::at(EntryId::new(Term(5), LogIndex(100)));
        let chunk = SnapshotChunk {
            from: NodeId(0),
            to: NodeId(1),
            term: Term(7),
            snapshot: snapshot.clone(),
            transfer_id: 0x0123_4567_89ab_cdef,
            offset: 4096,
            data: Bytes::from(vec![0u8, 1, 2, 255]),
            total_bytes: 8192,
            file_crc: 0xdead_beef,
        };
        frames.push((
            PeerFrame::Transfer(TransferFrame::Chunk(chunk)),
            "9401cdfeed019900010792920564929090cf0123456789abcdefcd1000c404000102ffcd2000cedeadbeef",
        ));
        let acks = [
            (
                AckStatus::Received { bytes: 4100 },
                "9401cdfeed029601000792920564929090cf0123456789abcdef81a8526563656976656491cd1004",
            ),
            (
                AckStatus::ResendFrom { offset: 4096 },
                "9401cdfeed029601000792920564929090cf0123456789abcdef81aa526573656e6446726f6d91cd1000",
            ),
            (
                AckStatus::Delivered,
                "9401cdfeed029601000792920564929090cf0123456789abcdefa944656c697665726564",
            ),
            (
                AckStatus::Refused {
                    reason: "stale term".to_string(),
                },
                "9401cdfeed029601000792920564929090cf0123456789abcdef81a75265667573656491aa7374616c652074\
                 65726d",
            ),
        ];
        for (status, hex) in acks {
            let ack = SnapshotAck {
                from: NodeId(1),
                to: NodeId(0),
                term: Term(7),
                snapshot: snapshot.clone(),
                transfer_id: 0x0123_4567_89ab_cdef,
                status,
            };
            frames.push((PeerFrame::Transfer(TransferFrame::Ack(ack)), hex));
        }
        frames
    }

    #[test]
    fn every_frame_kind_encodes_to_its_pinned_bytes_and_back() {
        for (number, (frame, hex)) in golden_frames().into_iter().enumerate() {
            let (bytes, to) = match &frame {
                PeerFrame::Raft(message) => (encode_peer_message(CLUSTER, message), message.to),
                PeerFrame::Transfer(transfer) => {
                    let to = match transfer {
                        TransferFrame::Chunk(chunk) => chunk.to,
                        TransferFrame::Ack(ack) => ack.to,
                    };
                    (encode_transfer_frame(CLUSTER, transfer), to)
                }
            };
            let encoded: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(encoded, hex, "case {number}: {frame:?}");
            assert_eq!(
                decode_peer_frame(&bytes, &filter(to.0)),
                Ok(frame),
                "case {number}"
            );
        }
    }

    #[test]
    fn every_message_kind_round_trips() {
        for (number, original) in every_kind_of_message().into_iter().enumerate() {
            let frame = encode_peer_message(CLUSTER, &original);
            let decoded = decode_peer_message(&frame, &filter(1));
            assert_eq!(decoded, Ok(original), "case {number}");
        }
    }

    #[test]
    fn command_payloads_are_encoded_as_binary_not_integer_arrays() {
        let payload = vec![0xabu8; 1000];
        let original = message(
            0,
            1,
            MessageBody::AppendEntries {
                prev: EntryId::default(),
                entries: vec![Entry {
                    term: Term(1),
                    index: LogIndex(1),
                    payload: EntryPayload::Command(Bytes::from(payload)),
                }],
                commit: LogIndex(0),
            },
        );
        let frame = encode_peer_message(CLUSTER, &original);
        assert!(
            frame.len() < 1100,
            "{} bytes for a 1000-byte payload",
            frame.len()
        );
    }

    #[test]
    fn foreign_and_misaddressed_frames_are_refused() {
        let good = message(0, 1, MessageBody::TimeoutNow);
        let cases: Vec<(Vec<u8>, PeerDecodeError)> = vec![
            (
                encode_peer_message(0xbad, &good),
                PeerDecodeError::OtherCluster(0xbad),
            ),
            (
                encode_peer_message(CLUSTER, &message(0, 2, MessageBody::TimeoutNow)),
                PeerDecodeError::WrongRecipient(NodeId(2)),
            ),
            (
                encode_peer_message(CLUSTER, &message(1, 1, MessageBody::TimeoutNow)),
                PeerDecodeError::UnknownSender(NodeId(1)),
            ),
            (
                encode_peer_message(CLUSTER, &message(3, 1, MessageBody::TimeoutNow)),
                PeerDecodeError::UnknownSender(NodeId(3)),
            ),
            (
                rmp_serde::to_vec(&(2u8, CLUSTER, "something new")).expect("encodes"),
                PeerDecodeError::WrongVersion(2),
            ),
        ];
        for (number, (frame, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                decode_peer_message(&frame, &filter(1)),
                Err(expected),
                "case {number}"
            );
        }
        for (number, garbage) in [&b""[..], b"\xc1", b"{\"type\": 1}", b"\x93\x01"]
            .iter()
            .enumerate()
        {
            assert!(
                matches!(
                    decode_peer_message(garbage, &filter(1)),
                    Err(PeerDecodeError::Malformed(_))
                ),
                "garbage case {number}"
            );
        }
    }

    pub(crate) fn meta(term: u64, index: u64) -> SnapshotMeta {
        SnapshotMeta::at(EntryId::new(Term(term), LogIndex(index)))
    }

    /// The chunk of `file` at `range`, from node 0 to node 1, with the file's CRC taken from
    /// its last four bytes (where a snapshot file keeps it).
    pub(crate) fn chunk_of(
        file: &[u8],
        snapshot: SnapshotMeta,
        term: u64,
        transfer_id: u64,
        range: std::ops::Range<usize>,
    ) -> SnapshotChunk {
        SnapshotChunk {
            from: NodeId(0),
            to: NodeId(1),
            term: Term(term),
            snapshot,
            transfer_id,
            offset: range.start as u64,
            data: Bytes::copy_from_slice(&file[range]),
            total_bytes: file.len() as u64,
            file_crc: u32::from_le_bytes(file[file.len() - 4..].try_into().expect("4 bytes")),
        }
    }

    #[test]
    fn transfer_frames_round_trip_and_are_told_from_raft_messages() {
        let file = vec![7u8; 100];
        let frames = vec![
            TransferFrame::Chunk(chunk_of(&file, meta(2, 5), 3, 9, 10..60)),
            TransferFrame::Ack(SnapshotAck {
                from: NodeId(0),
                to: NodeId(1),
                term: Term(3),
                snapshot: meta(2, 5),
                transfer_id: 9,
                status: AckStatus::Refused {
                    reason: "no".into(),
                },
            }),
        ];
        for (number, frame) in frames.into_iter().enumerate() {
            let bytes = encode_transfer_frame(CLUSTER, &frame);
            assert_eq!(
                decode_peer_frame(&bytes, &filter(1)),
                Ok(PeerFrame::Transfer(frame.clone())),
                "case {number}"
            );
            assert!(
                decode_peer_frame(&bytes, &filter(2)).is_err(),
                "case {number}: for another node"
            );
            assert!(
                decode_peer_frame(&encode_transfer_frame(0xbad, &frame), &filter(1)).is_err(),
                "case {number}: from another cluster"
            );
        }
        let big = chunk_of(&vec![1u8; 10_000], meta(1, 1), 1, 1, 0..10_000);
        let bytes = encode_transfer_frame(CLUSTER, &TransferFrame::Chunk(big));
        assert!(
            bytes.len() < 10_200,
            "chunk data is binary: {} bytes",
            bytes.len()
        );
    }

    /// Memberships whose invariants are broken, as a forged frame could carry them.
    fn ill_formed_memberships() -> Vec<crate::raft::Membership> {
        use crate::raft::{Member, Membership};
        let member = |id: u64, voter: bool| Member {
            id: NodeId(id),
            voter,
            info: Bytes::new(),
        };
        vec![
            Membership {
                members: vec![member(0, true), member(0, true)],
                retired: Vec::new(),
            },
            Membership {
                members: vec![member(0, false), member(1, false)],
                retired: Vec::new(),
            },
            Membership {
                members: vec![member(2, true), member(0, true)],
                retired: Vec::new(),
            },
            Membership {
                members: vec![member(0, true)],
                retired: vec![NodeId(0)],
            },
        ]
    }

    /// A frame that carries `membership`, of kind `which`: 0 an append of it, 1 an
    /// `InstallSnapshot`, 2 a snapshot chunk, 3 a snapshot ack (the last three in a
    /// snapshot's meta).
    fn membership_frame(which: usize, membership: &crate::raft::Membership) -> Vec<u8> {
        let snapshot = SnapshotMeta {
            last: EntryId::new(Term(5), LogIndex(100)),
            membership: membership.clone(),
        };
        match which {
            0 => encode_peer_message(
                CLUSTER,
                &message(
                    0,
                    1,
                    MessageBody::AppendEntries {
                        prev: EntryId::new(Term(6), LogIndex(9)),
                        entries: vec![Entry {
                            term: Term(6),
                            index: LogIndex(10),
                            payload: EntryPayload::Membership(membership.clone()),
                        }],
                        commit: LogIndex(8),
                    },
                ),
            ),
            1 => encode_peer_message(
                CLUSTER,
                &message(0, 1, MessageBody::InstallSnapshot { snapshot }),
            ),
            2 => encode_transfer_frame(
                CLUSTER,
                &TransferFrame::Chunk(SnapshotChunk {
                    from: NodeId(0),
                    to: NodeId(1),
                    term: Term(7),
                    snapshot,
                    transfer_id: 1,
                    offset: 0,
                    data: Bytes::from_static(b"data"),
                    total_bytes: 4,
                    file_crc: 0,
                }),
            ),
            _ => encode_transfer_frame(
                CLUSTER,
                &TransferFrame::Ack(SnapshotAck {
                    from: NodeId(0),
                    to: NodeId(1),
                    term: Term(7),
                    snapshot,
                    transfer_id: 1,
                    status: AckStatus::Delivered,
                }),
            ),
        }
    }

    #[test]
    fn frames_carrying_an_ill_formed_membership_are_refused() {
        for membership in ill_formed_memberships() {
            // An append, an `InstallSnapshot` and a chunk.
            for frame in (0..3).map(|which| membership_frame(which, &membership)) {
                assert!(
                    matches!(
                        decode_peer_frame(&frame, &filter(1)),
                        Err(PeerDecodeError::Malformed(reason)) if reason.contains("membership")
                    ),
                    "{membership:?} accepted"
                );
            }
        }
        // A well-formed one passes.
        let good = crate::raft::Membership::from_voters([NodeId(0), NodeId(1)]);
        let append = message(
            0,
            1,
            MessageBody::AppendEntries {
                prev: EntryId::new(Term(6), LogIndex(9)),
                entries: vec![Entry {
                    term: Term(6),
                    index: LogIndex(10),
                    payload: EntryPayload::Membership(good),
                }],
                commit: LogIndex(8),
            },
        );
        let frame = encode_peer_message(CLUSTER, &append);
        assert_eq!(decode_peer_message(&frame, &filter(1)), Ok(append));
    }

    /// Every membership a decoded frame carries is well formed.
    fn memberships_well_formed(frame: &PeerFrame) -> bool {
        let snapshot = match frame {
            PeerFrame::Raft(message) => match &message.body {
                MessageBody::AppendEntries { entries, .. } => {
                    return entries.iter().all(|entry| match &entry.payload {
                        EntryPayload::Membership(membership) => {
                            membership.check_well_formed().is_ok()
                        }
                        _ => true,
                    })
                }
                MessageBody::InstallSnapshot { snapshot } => snapshot,
                _ => return true,
            },
            PeerFrame::Transfer(TransferFrame::Chunk(chunk)) => &chunk.snapshot,
            PeerFrame::Transfer(TransferFrame::Ack(ack)) => &ack.snapshot,
        };
        snapshot.membership.check_well_formed().is_ok()
    }

    proptest::proptest! {
        #[test]
        fn hostile_frames_never_panic_nor_carry_an_ill_formed_membership(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            if let Ok(frame) = decode_peer_frame(&bytes, &filter(1)) {
                proptest::prop_assert!(memberships_well_formed(&frame), "{:?}", frame);
            }
        }

        #[test]
        fn mutated_membership_frames_never_panic_nor_carry_an_ill_formed_membership(
            which in 0usize..4,
            voters in proptest::collection::vec(proptest::prelude::any::<bool>(), 1..4),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(),
                 proptest::prelude::any::<u8>()),
                1..4,
            ),
        ) {
            use crate::raft::{Member, Membership};
            let membership = Membership {
                members: voters
                    .iter()
                    .enumerate()
                    .map(|(id, voter)| Member {
                        id: NodeId(id as u64),
                        voter: *voter,
                        info: Bytes::from_static(b"info"),
                    })
                    .collect(),
                retired: vec![NodeId(7)],
            };
            let mut frame = membership_frame(which, &membership);
            for (at, value) in edits {
                let at = at.index(frame.len());
                frame[at] = value;
            }
            if let Ok(decoded) = decode_peer_frame(&frame, &filter(1)) {
                proptest::prop_assert!(memberships_well_formed(&decoded), "{:?}", decoded);
            }
        }
    }
}
