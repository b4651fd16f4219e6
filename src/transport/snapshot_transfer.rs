//! Snapshot streaming: how a snapshot file crosses from a leader to a follower.
//!
//! The core's `InstallSnapshot` message carries no data. When the node loop hands one to the
//! peer transport, the **snapshot sender** thread streams the leader's snapshot file in
//! chunks on DEALERs of its own (one TCP connection per follower, apart from the Raft
//! traffic, so heartbeats never wait behind megabytes of chunks). The follower's peer
//! receiver passes chunks to its **snapshot receiver** thread, which appends them to a
//! `.partial` file in the data dir, checks the whole file at the end, renames it
//! `.received`, and only then delivers the `InstallSnapshot` message to the node loop. The
//! node loop installs that file (see `node`). The receiver's acks go back to the leader
//! through the snapshot sender, on its DEALERs: the Raft DEALERs belong to the node loop and
//! the WAL thread, and a socket stays on its thread.
//!
//! Why threads of their own: reading, writing and fsyncing a large file must not stall the
//! node loop or the peer receiver (a follower that stops reading heartbeats for the length
//! of an fsync would start elections). Why a window and acknowledgements: chunks must not
//! pile up in ZeroMQ queues (bounded memory on both sides), and a lost chunk must be noticed.
//!
//! # Protocol
//!
//! Two frames, whose layout is [`super::wire`]'s ([`SnapshotChunk`], [`SnapshotAck`]):
//!
//! ```text
//! chunk = { from, to, term, snapshot, transfer_id, offset, data, total_bytes, file_crc }
//! ack   = { from, to, term, snapshot, transfer_id, status }
//! status = Received { bytes }        everything before `bytes` is written
//!        | ResendFrom { offset }     a gap: send again from `offset`
//!        | Delivered                 checked whole and handed to the node loop
//!        | Refused { reason }        will not take this transfer (stale term, bad data)
//! ```
//!
//! The sender keeps at most [`WINDOW_CHUNKS`] chunks unacknowledged; with no progress for
//! [`RESEND_AFTER`] it goes back to the last acknowledged offset (go-back-N; this also
//! re-asks for a lost `Delivered`), and after [`STALL_TIMEOUT`] without progress it gives
//! up. Either end reports to its node loop: the sender a [`SnapshotReport`]
//! (`Core::report_snapshot`), the receiver the `InstallSnapshot` message. A chunk's last
//! byte is at `total_bytes`: that is the last chunk.
//!
//! The receiver holds at most one transfer. A chunk at offset 0 of another transfer (a new
//! leader, a newer snapshot, a restarted transfer) replaces it, unless its term is older;
//! the replaced partial file is deleted at once. A transfer that stops mid-way (leader
//! crash) is deleted after [`RECEIVE_IDLE_TIMEOUT`], and leftovers of a crash at startup.
//! So an interrupted transfer never leaves a half-installed snapshot.
//!
//! What it must not do: know the peer transport. The peer transport starts these threads
//! and hands them their sockets, settings and channels (`PeerTransport::start`); frames are
//! encoded with [`super::wire`].

use super::fault::PeerFaults;
use super::wire::{encode_transfer_frame, AckStatus, SnapshotAck, SnapshotChunk, TransferFrame};
use crate::raft::{Message, MessageBody, NodeId, SnapshotMeta, Term};
use crate::storage::snapshot_file::{self, IncomingSnapshot};
use crate::storage::{FsyncPolicy, StorageError};
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Chunks sent and not yet acknowledged, at most, per transfer.
pub const WINDOW_CHUNKS: u64 = 4;
/// No acknowledged progress for this long: send again from the last acknowledged offset.
pub const RESEND_AFTER: Duration = Duration::from_secs(1);
/// No acknowledged progress for this long: give up and report the transfer failed (the
/// default of `PeerSettings::snapshot_stall_timeout`).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// A transfer the receiver heard nothing of for this long is deleted.
pub const RECEIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks waiting for the receiver thread, at most; more are dropped (and resent).
pub const CHUNK_QUEUE_MAX: usize = 2 * WINDOW_CHUNKS as usize;

/// How a transfer ended, for the sender's node loop (`Core::report_snapshot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    pub to: NodeId,
    pub snapshot: SnapshotMeta,
    pub delivered: bool,
}

/// What the snapshot sender thread is told.
pub(crate) enum SenderInput {
    /// Stream the snapshot named in this `InstallSnapshot` message.
    Send(Message),
    /// A follower acknowledged chunks of one of our transfers.
    Ack(SnapshotAck),
    /// Our snapshot receiver acknowledges chunks from the leader: sent on our DEALER to it
    /// (the Raft DEALERs belong to the node loop and the WAL thread).
    Acknowledge(SnapshotAck),
    /// This node is no longer leader: drop every transfer, report nothing.
    CancelAll,
    Stop,
}

/// Sends `event` unless the transport is stopping; a full channel is waited on, a stop is
/// noticed within 100 ms (so stopping never hangs on a node loop that has gone).
fn send_event<E, T>(events: &Sender<E>, item: T, stopping: &AtomicBool) -> bool
where
    E: From<T>,
{
    let mut event = E::from(item);
    loop {
        match events.send_timeout(event, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                if stopping.load(Ordering::Relaxed) {
                    return false;
                }
                event = back;
            }
        }
    }
}

// ---- Sender ---------------------------------------------------------------------------------

/// Where the sender finds snapshot files, and how fast it may stream them.
#[derive(Clone, Debug)]
pub struct SenderSettings {
    pub dir: PathBuf,
    pub chunk_bytes: usize,
    /// 0: no cap.
    pub bytes_per_second: u64,
    pub cluster_id: u64,
    /// No acknowledged progress for this long: give up.
    pub stall_timeout: Duration,
}

struct Transfer {
    message: Message,
    snapshot: SnapshotMeta,
    transfer_id: u64,
    file: File,
    total_bytes: u64,
    file_crc: u32,
    /// The next byte to send.
    next_offset: u64,
    /// Every byte before this is acknowledged.
    acked_offset: u64,
    /// When the acknowledged offset last moved (or the transfer started).
    progress_at: Instant,
    /// When the last go-back-N happened (or the transfer started).
    resent_at: Instant,
    /// The rate cap: no chunk leaves before this.
    send_at: Instant,
}

pub(crate) struct SnapshotSender<E> {
    settings: SenderSettings,
    dealers: HashMap<NodeId, zmq::Socket>,
    events: Sender<E>,
    stopping: Arc<AtomicBool>,
    transfers: HashMap<NodeId, Transfer>,
    /// A send met a full or disconnected socket: try again soon.
    blocked: bool,
    /// Tests only: peers whose chunks are dropped as if lost (see `transport::fault`).
    faults: Arc<PeerFaults>,
}

impl<E> SnapshotSender<E>
where
    E: From<SnapshotReport>,
{
    pub(crate) fn new(
        settings: SenderSettings,
        dealers: HashMap<NodeId, zmq::Socket>,
        events: Sender<E>,
        stopping: Arc<AtomicBool>,
        faults: Arc<PeerFaults>,
    ) -> SnapshotSender<E> {
        SnapshotSender {
            settings,
            dealers,
            events,
            stopping,
            transfers: HashMap::new(),
            blocked: false,
            faults,
        }
    }

    pub(crate) fn run(mut self, inputs: Receiver<SenderInput>) {
        loop {
            let wait = self.next_wake(Instant::now());
            match inputs.recv_timeout(wait) {
                Ok(SenderInput::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(input) => {
                    if !self.handle(input) {
                        return;
                    }
                    while let Ok(input) = inputs.try_recv() {
                        if !self.handle(input) {
                            return;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.pump(Instant::now());
        }
    }

    /// How long the thread may sleep: until the next chunk may leave or a timer fires.
    fn next_wake(&self, now: Instant) -> Duration {
        if self.transfers.is_empty() {
            return Duration::from_secs(3600);
        }
        if self.blocked {
            return Duration::from_millis(10);
        }
        let mut wake = now + Duration::from_millis(200);
        for transfer in self.transfers.values() {
            if transfer.next_offset < transfer.total_bytes
                && transfer.next_offset - transfer.acked_offset
                    < WINDOW_CHUNKS * self.settings.chunk_bytes as u64
            {
                wake = wake.min(transfer.send_at);
            }
        }
        wake.saturating_duration_since(now)
    }

    /// Returns false on `Stop`.
    fn handle(&mut self, input: SenderInput) -> bool {
        match input {
            SenderInput::Send(message) => self.start(message),
            SenderInput::Ack(ack) => self.on_ack(ack),
            SenderInput::Acknowledge(ack) => self.acknowledge(ack),
            SenderInput::CancelAll => {
                if !self.transfers.is_empty() {
                    log::info!("no longer leader: snapshot transfers cancelled");
                }
                self.transfers.clear();
            }
            SenderInput::Stop => return false,
        }
        true
    }

    /// Sends our receiver's ack to the leader streaming to us. Never waits: a lost ack makes
    /// the leader resend (go-back-N).
    fn acknowledge(&self, ack: SnapshotAck) {
        if self.faults.drops_to(ack.to) {
            log::trace!("fault injection: snapshot ack to node {} dropped", ack.to);
            return;
        }
        let Some(dealer) = self.dealers.get(&ack.to) else {
            log::error!("no connection to node {}; snapshot ack dropped", ack.to);
            return;
        };
        let frame = encode_transfer_frame(self.settings.cluster_id, &TransferFrame::Ack(ack));
        if let Err(error) = dealer.send(frame, zmq::DONTWAIT) {
            log::trace!("snapshot ack dropped: {error}");
        }
    }

    fn start(&mut self, message: Message) {
        let MessageBody::InstallSnapshot { snapshot } = message.body else {
            log::error!("snapshot sender given a {:?}; ignored", message.body);
            return;
        };
        let to = message.to;
        if let Some(transfer) = self.transfers.get(&to) {
            if transfer.snapshot == snapshot && transfer.message.term == message.term {
                return; // The core asked again while it is on its way.
            }
        }
        let path = snapshot_file::snapshot_path(&self.settings.dir, snapshot);
        let (file, info) = match snapshot_file::open_for_sending(&path) {
            Ok(opened) => opened,
            Err(error) => {
                log::error!(
                    "cannot send snapshot {} to node {to}: {error}",
                    snapshot.last
                );
                self.report(to, snapshot, false);
                return;
            }
        };
        log::info!(
            "streaming snapshot {} ({} bytes) to node {to}",
            snapshot.last,
            info.len_bytes
        );
        let now = Instant::now();
        self.transfers.insert(
            to,
            Transfer {
                message,
                snapshot,
                transfer_id: rand::random(),
                file,
                total_bytes: info.len_bytes,
                file_crc: info.crc,
                next_offset: 0,
                acked_offset: 0,
                progress_at: now,
                resent_at: now,
                send_at: now,
            },
        );
    }

    fn on_ack(&mut self, ack: SnapshotAck) {
        let Some(transfer) = self.transfers.get_mut(&ack.from) else {
            return;
        };
        if transfer.transfer_id != ack.transfer_id {
            return; // From a transfer since replaced.
        }
        let now = Instant::now();
        match ack.status {
            AckStatus::Received { bytes } => {
                let bytes = bytes.min(transfer.total_bytes);
                if bytes > transfer.acked_offset {
                    transfer.acked_offset = bytes;
                    transfer.next_offset = transfer.next_offset.max(bytes);
                    transfer.progress_at = now;
                    transfer.resent_at = now;
                }
            }
            AckStatus::ResendFrom { offset } => {
                let offset = offset.min(transfer.total_bytes);
                transfer.acked_offset = offset;
                transfer.next_offset = offset;
                transfer.resent_at = now;
            }
            AckStatus::Delivered => {
                log::info!(
                    "snapshot {} delivered to node {}",
                    transfer.snapshot.last,
                    ack.from
                );
                let snapshot = transfer.snapshot;
                self.transfers.remove(&ack.from);
                self.report(ack.from, snapshot, true);
            }
            AckStatus::Refused { reason } => {
                log::warn!(
                    "node {} refused snapshot {}: {reason}",
                    ack.from,
                    transfer.snapshot.last
                );
                let snapshot = transfer.snapshot;
                self.transfers.remove(&ack.from);
                self.report(ack.from, snapshot, false);
            }
        }
    }

    fn report(&self, to: NodeId, snapshot: SnapshotMeta, delivered: bool) {
        let report = SnapshotReport {
            to,
            snapshot,
            delivered,
        };
        send_event(&self.events, report, &self.stopping);
    }

    /// Sends what windows and rate caps allow; handles timeouts.
    fn pump(&mut self, now: Instant) {
        self.blocked = false;
        let mut failed = Vec::new();
        let window_bytes = WINDOW_CHUNKS * self.settings.chunk_bytes as u64;
        for (to, transfer) in &mut self.transfers {
            if now.duration_since(transfer.progress_at) >= self.settings.stall_timeout {
                failed.push(*to);
                continue;
            }
            if now.duration_since(transfer.resent_at) >= RESEND_AFTER {
                // Nothing acknowledged for a while: chunks or acks were lost. Once all bytes
                // are acknowledged this resends the last chunk, which re-asks for Delivered.
                transfer.resent_at = now;
                let last_chunk_start = transfer.total_bytes.saturating_sub(1).saturating_sub(
                    (transfer.total_bytes.saturating_sub(1)) % self.settings.chunk_bytes as u64,
                );
                transfer.next_offset = transfer.acked_offset.min(last_chunk_start);
            }
            let Some(dealer) = self.dealers.get(to) else {
                failed.push(*to);
                continue;
            };
            while transfer.next_offset < transfer.total_bytes
                && transfer.next_offset < transfer.acked_offset + window_bytes
                && now >= transfer.send_at
            {
                let dropped = self.faults.drops_to(*to);
                match send_chunk(dealer, &self.settings, transfer, now, dropped) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.blocked = true;
                        break;
                    }
                    Err(error) => {
                        log::error!(
                            "reading snapshot {} for node {to}: {error}",
                            transfer.snapshot.last
                        );
                        failed.push(*to);
                        break;
                    }
                }
            }
        }
        for to in failed {
            if let Some(transfer) = self.transfers.remove(&to) {
                log::warn!(
                    "snapshot {} to node {to}: no progress for {:?}, giving up",
                    transfer.snapshot.last,
                    self.settings.stall_timeout
                );
                self.report(to, transfer.snapshot, false);
            }
        }
    }
}

/// Reads and sends the chunk at `transfer.next_offset`. `Ok(false)`: the socket would block
/// (peer down or queue full), try again later.
fn send_chunk(
    dealer: &zmq::Socket,
    settings: &SenderSettings,
    transfer: &mut Transfer,
    now: Instant,
    dropped_by_fault: bool,
) -> std::io::Result<bool> {
    let length = (transfer.total_bytes - transfer.next_offset).min(settings.chunk_bytes as u64);
    let mut data = vec![0u8; length as usize];
    transfer
        .file
        .read_exact_at(&mut data, transfer.next_offset)?;
    let chunk = SnapshotChunk {
        from: transfer.message.from,
        to: transfer.message.to,
        term: transfer.message.term,
        snapshot: transfer.snapshot,
        transfer_id: transfer.transfer_id,
        offset: transfer.next_offset,
        data: Bytes::from(data),
        total_bytes: transfer.total_bytes,
        file_crc: transfer.file_crc,
    };
    let frame = encode_transfer_frame(settings.cluster_id, &TransferFrame::Chunk(chunk));
    // A fault-injected drop counts as sent and lost: go-back-N deals with it as with a loss.
    let sent = if dropped_by_fault {
        Ok(())
    } else {
        dealer.send(frame, zmq::DONTWAIT)
    };
    match sent {
        Ok(()) => {}
        Err(zmq::Error::EAGAIN) => return Ok(false),
        Err(error) => {
            log::warn!(
                "sending a snapshot chunk to node {}: {error}",
                transfer.message.to
            );
            return Ok(false);
        }
    }
    transfer.next_offset += length;
    if settings.bytes_per_second > 0 {
        let spacing = Duration::from_secs_f64(length as f64 / settings.bytes_per_second as f64);
        transfer.send_at = transfer.send_at.max(now) + spacing;
    }
    Ok(true)
}

// ---- Receiver -------------------------------------------------------------------------------

struct Receiving {
    from: NodeId,
    term: Term,
    transfer_id: u64,
    incoming: IncomingSnapshot,
    active_at: Instant,
}

/// The receiving end's state: at most one transfer. Pure apart from the files it writes, so
/// it is tested without sockets.
pub(crate) struct SnapshotReceiver {
    me: NodeId,
    dir: PathBuf,
    fsync: FsyncPolicy,
    receiving: Option<Receiving>,
    /// The last transfer delivered, to answer its repeated last chunk with `Delivered`.
    delivered: Option<(NodeId, u64)>,
}

/// What handling one chunk produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReceiverOutput {
    pub(crate) ack: Option<SnapshotAck>,
    /// The whole snapshot arrived intact: deliver this `InstallSnapshot` to the node loop.
    pub(crate) deliver: Option<Message>,
}

impl SnapshotReceiver {
    pub(crate) fn new(me: NodeId, dir: PathBuf, fsync: FsyncPolicy) -> SnapshotReceiver {
        SnapshotReceiver {
            me,
            dir,
            fsync,
            receiving: None,
            delivered: None,
        }
    }

    fn reply(&self, chunk: &SnapshotChunk, status: AckStatus) -> ReceiverOutput {
        ReceiverOutput {
            ack: Some(self.ack(chunk, status)),
            deliver: None,
        }
    }

    fn ack(&self, chunk: &SnapshotChunk, status: AckStatus) -> SnapshotAck {
        SnapshotAck {
            from: self.me,
            to: chunk.from,
            term: chunk.term,
            snapshot: chunk.snapshot,
            transfer_id: chunk.transfer_id,
            status,
        }
    }

    pub(crate) fn on_chunk(&mut self, chunk: SnapshotChunk, now: Instant) -> ReceiverOutput {
        if self.delivered == Some((chunk.from, chunk.transfer_id)) {
            return self.reply(&chunk, AckStatus::Delivered);
        }
        let current = self.receiving.as_ref().is_some_and(|receiving| {
            (receiving.from, receiving.transfer_id) == (chunk.from, chunk.transfer_id)
        });
        if !current {
            if let Some(receiving) = &self.receiving {
                if chunk.term < receiving.term {
                    return self.reply(
                        &chunk,
                        AckStatus::Refused {
                            reason: format!(
                                "receiving a snapshot from node {} in the newer term {}",
                                receiving.from, receiving.term
                            ),
                        },
                    );
                }
            }
            if chunk.offset != 0 {
                // Unknown to us (we restarted, or replaced it): from the start, please.
                return self.reply(&chunk, AckStatus::ResendFrom { offset: 0 });
            }
            if let Some(replaced) = self.receiving.take() {
                log::info!(
                    "abandoning snapshot {} from node {} after {} bytes: node {} sends {}",
                    replaced.incoming.meta().last,
                    replaced.from,
                    replaced.incoming.written_bytes(),
                    chunk.from,
                    chunk.snapshot.last
                );
                drop(replaced); // Deletes its partial file before a new one may take its name.
            }
            let incoming = match IncomingSnapshot::create(&self.dir, chunk.snapshot, self.fsync) {
                Ok(incoming) => incoming,
                Err(error) => {
                    log::error!("cannot receive snapshot {}: {error}", chunk.snapshot.last);
                    return self.reply(
                        &chunk,
                        AckStatus::Refused {
                            reason: error.to_string(),
                        },
                    );
                }
            };
            log::info!(
                "receiving snapshot {} ({} bytes) from node {}",
                chunk.snapshot.last,
                chunk.total_bytes,
                chunk.from
            );
            self.receiving = Some(Receiving {
                from: chunk.from,
                term: chunk.term,
                transfer_id: chunk.transfer_id,
                incoming,
                active_at: now,
            });
        }
        let receiving = self.receiving.as_mut().expect("set just above");
        receiving.active_at = now;
        let written = receiving.incoming.written_bytes();
        if chunk.offset < written {
            return self.reply(&chunk, AckStatus::Received { bytes: written });
        }
        if chunk.offset > written {
            return self.reply(&chunk, AckStatus::ResendFrom { offset: written });
        }
        let result = if chunk.offset + chunk.data.len() as u64 > chunk.total_bytes {
            Err(StorageError::Invalid(format!(
                "chunk at {} of {} bytes runs past the announced {} bytes",
                chunk.offset,
                chunk.data.len(),
                chunk.total_bytes
            )))
        } else {
            receiving.incoming.append(&chunk.data)
        };
        if let Err(error) = result {
            self.receiving = None;
            log::error!("receiving snapshot {}: {error}", chunk.snapshot.last);
            return self.reply(
                &chunk,
                AckStatus::Refused {
                    reason: error.to_string(),
                },
            );
        }
        if !chunk.is_last() {
            return self.reply(
                &chunk,
                AckStatus::Received {
                    bytes: written + chunk.data.len() as u64,
                },
            );
        }
        let receiving = self.receiving.take().expect("set just above");
        match receiving.incoming.finish(chunk.total_bytes, chunk.file_crc) {
            Ok(path) => {
                log::info!(
                    "received snapshot {} from node {} into {}",
                    chunk.snapshot.last,
                    chunk.from,
                    path.display()
                );
                self.delivered = Some((chunk.from, chunk.transfer_id));
                ReceiverOutput {
                    ack: Some(self.ack(&chunk, AckStatus::Delivered)),
                    deliver: Some(Message {
                        from: chunk.from,
                        to: self.me,
                        term: chunk.term,
                        body: MessageBody::InstallSnapshot {
                            snapshot: chunk.snapshot,
                        },
                    }),
                }
            }
            Err(error) => {
                log::error!("snapshot {} refused: {error}", chunk.snapshot.last);
                self.reply(
                    &chunk,
                    AckStatus::Refused {
                        reason: error.to_string(),
                    },
                )
            }
        }
    }

    /// Deletes a transfer that went quiet (its leader crashed or was deposed).
    pub(crate) fn expire(&mut self, now: Instant) {
        let idle = self.receiving.as_ref().is_some_and(|receiving| {
            now.duration_since(receiving.active_at) >= RECEIVE_IDLE_TIMEOUT
        });
        if idle {
            if let Some(receiving) = self.receiving.take() {
                log::info!(
                    "abandoning snapshot {} from node {}: nothing received for {RECEIVE_IDLE_TIMEOUT:?}",
                    receiving.incoming.meta().last,
                    receiving.from
                );
            }
        }
    }
}

/// The snapshot receiver thread: chunks in, acks out through the snapshot sender (which owns
/// this node's snapshot DEALERs), whole snapshots to the node loop.
pub(crate) fn receive_loop<E>(
    mut receiver: SnapshotReceiver,
    chunks: Receiver<SnapshotChunk>,
    acks: Sender<SenderInput>,
    events: Sender<E>,
    stopping: Arc<AtomicBool>,
) where
    E: From<Message>,
{
    loop {
        match chunks.recv_timeout(Duration::from_secs(1)) {
            Ok(chunk) => {
                let output = receiver.on_chunk(chunk, Instant::now());
                // Deliver before acknowledging: the leader's success report must not come
                // before the message is on its way to our node loop.
                if let Some(message) = output.deliver {
                    if !send_event(&events, message, &stopping) {
                        return;
                    }
                }
                if let Some(ack) = output.ack {
                    let _ = acks.send(SenderInput::Acknowledge(ack));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        receiver.expire(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::snapshot_file::{received_path, snapshot_path, write_snapshot};
    // Test-only: the end-to-end tests below stream through a whole `PeerTransport`.
    use crate::transport::peer::tests::{settings_with, two_ports, TestEvent};
    use crate::transport::peer::{PeerSettings, PeerTransport};
    use crate::transport::wire::tests::{chunk_of, meta};
    use std::path::Path;

    /// A complete snapshot file's bytes, written through the storage module.
    fn snapshot_bytes(dir: &Path, snapshot: SnapshotMeta, body_bytes: usize) -> Vec<u8> {
        let body: Vec<u8> = (0..body_bytes).map(|n| (n % 251) as u8).collect();
        let file = write_snapshot(dir, snapshot, FsyncPolicy::Never, |writer| {
            writer.write_all(&body)
        })
        .expect("write");
        std::fs::read(file.path).expect("read")
    }

    fn status(output: &ReceiverOutput) -> Option<AckStatus> {
        output.ack.as_ref().map(|ack| ack.status.clone())
    }

    #[test]
    fn the_receiver_takes_chunks_in_order_and_delivers_only_a_whole_checked_file() {
        let source = tempfile::tempdir().expect("dir");
        let file = snapshot_bytes(source.path(), meta(2, 40), 5000);
        let dir = tempfile::tempdir().expect("dir");
        let mut receiver =
            SnapshotReceiver::new(NodeId(1), dir.path().to_path_buf(), FsyncPolicy::Never);
        let now = Instant::now();
        let snapshot = meta(2, 40);
        let total = file.len();
        // (chunk range, expected ack) in the order they arrive.
        let steps: Vec<(std::ops::Range<usize>, AckStatus)> = vec![
            (1000..2000, AckStatus::ResendFrom { offset: 0 }),
            (0..1000, AckStatus::Received { bytes: 1000 }),
            (2000..3000, AckStatus::ResendFrom { offset: 1000 }),
            (0..1000, AckStatus::Received { bytes: 1000 }),
            (1000..2000, AckStatus::Received { bytes: 2000 }),
            (2000..total, AckStatus::Delivered),
            (2000..total, AckStatus::Delivered),
        ];
        for (number, (range, expected)) in steps.into_iter().enumerate() {
            let last = range.end == total;
            let output = receiver.on_chunk(chunk_of(&file, snapshot, 3, 7, range), now);
            assert_eq!(status(&output), Some(expected.clone()), "step {number}");
            let delivered = output.deliver.is_some();
            assert_eq!(
                delivered,
                last && number == 5,
                "step {number}: delivered exactly once, at the end"
            );
            if delivered {
                let message = output.deliver.expect("checked");
                assert_eq!(message.term, Term(3));
                assert_eq!(message.body, MessageBody::InstallSnapshot { snapshot });
                assert_eq!(
                    std::fs::read(received_path(dir.path(), snapshot)).expect("received file"),
                    file
                );
            } else if number < 5 {
                assert!(
                    !received_path(dir.path(), snapshot).exists(),
                    "step {number}"
                );
            }
        }
    }

    #[test]
    fn a_damaged_transfer_is_refused_and_leaves_no_file() {
        let source = tempfile::tempdir().expect("dir");
        let mut file = snapshot_bytes(source.path(), meta(2, 40), 3000);
        let dir = tempfile::tempdir().expect("dir");
        let mut receiver =
            SnapshotReceiver::new(NodeId(1), dir.path().to_path_buf(), FsyncPolicy::Never);
        let now = Instant::now();
        let total = file.len();
        let good = chunk_of(&file, meta(2, 40), 3, 7, 0..1500);
        file[2000] ^= 0x40;
        let bad = chunk_of(&file, meta(2, 40), 3, 7, 1500..total);
        assert_eq!(
            status(&receiver.on_chunk(good, now)),
            Some(AckStatus::Received { bytes: 1500 })
        );
        let output = receiver.on_chunk(bad, now);
        assert!(
            matches!(status(&output), Some(AckStatus::Refused { .. })),
            "{output:?}"
        );
        assert!(output.deliver.is_none());
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("list").count(),
            0,
            "files left behind"
        );
    }

    #[test]
    fn a_new_transfer_replaces_an_interrupted_one_unless_its_term_is_older() {
        let source = tempfile::tempdir().expect("dir");
        let old_file = snapshot_bytes(source.path(), meta(2, 40), 3000);
        let new_file = snapshot_bytes(source.path(), meta(4, 90), 3000);
        let dir = tempfile::tempdir().expect("dir");
        let mut receiver =
            SnapshotReceiver::new(NodeId(1), dir.path().to_path_buf(), FsyncPolicy::Never);
        let now = Instant::now();
        let count = || std::fs::read_dir(dir.path()).expect("list").count();
        // The leader of term 3 starts, then dies half way.
        receiver.on_chunk(chunk_of(&old_file, meta(2, 40), 3, 1, 0..1000), now);
        assert_eq!(count(), 1, "one partial file");
        // The leader of term 5 sends a newer snapshot: the partial one goes at once.
        let mut newer = chunk_of(&new_file, meta(4, 90), 5, 2, 0..1000);
        newer.from = NodeId(2);
        assert_eq!(
            status(&receiver.on_chunk(newer, now)),
            Some(AckStatus::Received { bytes: 1000 })
        );
        assert_eq!(count(), 1, "only the new partial file");
        // A late chunk of the old transfer (term 3) is refused.
        let late = chunk_of(&old_file, meta(2, 40), 3, 9, 0..1000);
        assert!(matches!(
            status(&receiver.on_chunk(late, now)),
            Some(AckStatus::Refused { .. })
        ));
        // The new one goes quiet: deleted after the idle timeout.
        receiver.expire(now + RECEIVE_IDLE_TIMEOUT / 2);
        assert_eq!(count(), 1, "not yet idle");
        receiver.expire(now + RECEIVE_IDLE_TIMEOUT);
        assert_eq!(count(), 0, "an idle transfer is deleted");
    }

    fn settings(me: u64, ports: &[u16], dir: &Path, rate: u64) -> PeerSettings {
        settings_with(me, ports, dir, 4096, rate, Duration::from_secs(2))
    }

    fn install_message(snapshot: SnapshotMeta) -> Message {
        Message {
            from: NodeId(0),
            to: NodeId(1),
            term: Term(3),
            body: MessageBody::InstallSnapshot { snapshot },
        }
    }

    #[test]
    fn a_snapshot_streams_between_two_transports_and_both_ends_are_told() {
        let context = zmq::Context::new();
        let ports = two_ports();
        let leader_dir = tempfile::tempdir().expect("dir");
        let follower_dir = tempfile::tempdir().expect("dir");
        let snapshot = meta(2, 500);
        // About 300 chunks of 4 KiB: far more than the window.
        let file = snapshot_bytes(leader_dir.path(), snapshot, 1_200_000);
        let (leader_events, leader_inbox) = crossbeam_channel::unbounded::<TestEvent>();
        let (follower_events, follower_inbox) = crossbeam_channel::unbounded::<TestEvent>();
        let leader = PeerTransport::start(
            &context,
            settings(0, &ports, leader_dir.path(), 0),
            leader_events,
        )
        .expect("leader");
        let follower = PeerTransport::start(
            &context,
            settings(1, &ports, follower_dir.path(), 0),
            follower_events,
        )
        .expect("follower");
        let message = install_message(snapshot);
        leader.send(vec![message.clone()]);
        let delivered = follower_inbox
            .recv_timeout(Duration::from_secs(60))
            .expect("the follower's node loop gets the message");
        assert_eq!(delivered, TestEvent::Message(message));
        let received = std::fs::read(received_path(follower_dir.path(), snapshot)).expect("file");
        assert!(received == file, "the received file differs");
        let report = leader_inbox
            .recv_timeout(Duration::from_secs(60))
            .expect("the leader's node loop gets a report");
        assert_eq!(
            report,
            TestEvent::Report(SnapshotReport {
                to: NodeId(1),
                snapshot,
                delivered: true
            })
        );
        // A snapshot the leader does not have is reported failed at once.
        leader.send(vec![install_message(meta(2, 501))]);
        let report = leader_inbox
            .recv_timeout(Duration::from_secs(10))
            .expect("a report");
        assert!(
            matches!(
                report,
                TestEvent::Report(SnapshotReport {
                    delivered: false,
                    ..
                })
            ),
            "{report:?}"
        );
        leader.stop();
        follower.stop();
        assert!(snapshot_path(leader_dir.path(), snapshot).exists());
    }

    #[test]
    fn a_transfer_to_a_dead_follower_is_reported_failed_and_cancelling_reports_nothing() {
        let context = zmq::Context::new();
        let ports = two_ports();
        let leader_dir = tempfile::tempdir().expect("dir");
        let snapshot = meta(2, 500);
        snapshot_bytes(leader_dir.path(), snapshot, 100_000);
        let (events, inbox) = crossbeam_channel::unbounded::<TestEvent>();
        let leader =
            PeerTransport::start(&context, settings(0, &ports, leader_dir.path(), 0), events)
                .expect("leader");
        leader.send(vec![install_message(snapshot)]);
        leader.cancel_snapshot_transfers();
        assert!(
            inbox.recv_timeout(Duration::from_secs(4)).is_err(),
            "a cancelled transfer reports nothing"
        );
        leader.send(vec![install_message(snapshot)]);
        let report = inbox
            .recv_timeout(Duration::from_secs(20))
            .expect("a report");
        assert_eq!(
            report,
            TestEvent::Report(SnapshotReport {
                to: NodeId(1),
                snapshot,
                delivered: false
            })
        );
        leader.stop();
    }
}
