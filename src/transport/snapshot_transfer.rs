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
//!        | Refused { reason }        will not take this transfer (stale term, not the
//!                                    leader, too large, bad data)
//! ```
//!
//! The sender keeps at most [`WINDOW_CHUNKS`] chunks unacknowledged; with no progress for
//! [`RESEND_AFTER`] it goes back to the last acknowledged offset (go-back-N; this also
//! re-asks for a lost `Delivered`), and after [`STALL_TIMEOUT`] without progress it gives
//! up. Either end reports to its node loop: the sender a [`SnapshotReport`]
//! (`Core::report_snapshot`), the receiver the `InstallSnapshot` message. A chunk's last
//! byte is at `total_bytes`: that is the last chunk.
//!
//! The receiver holds at most one transfer. A chunk at offset 0 of another transfer (a
//! newer snapshot, a restarted transfer) replaces it; the replaced partial file is deleted
//! at once. A transfer that stops mid-way (leader crash) is deleted after
//! [`RECEIVE_IDLE_TIMEOUT`], and leftovers of a crash at startup. So an interrupted transfer
//! never leaves a half-installed snapshot.
//!
//! # Whose chunks are taken
//!
//! Anyone who reaches the internal port can send a chunk frame, so the receiver writes a
//! byte only for the node its node loop follows, in the loop's current term (the loop
//! publishes both, [`Following`], through `PeerTransport::follow`); a new term or leader
//! deletes the transfer in progress. A real leader's chunks meet these rules: it sends a
//! snapshot only to a follower that answered its appends in its term. A chunk from a term
//! ahead, or before this node knows its leader, is left unanswered, so a real leader resends
//! it a moment later ([`RESEND_AFTER`]); a stale term or another node's claim is answered
//! `Refused`. The first chunk's `total_bytes` must be under [`ReceiveLimits`]' cap and fit
//! on the data dir's disk with a margin, every later chunk must announce the same file, and
//! no byte is written past it. Refusals are logged, one line a second at most, with their
//! count and the sender each chunk claims.
//!
//! What it must not do: know the peer transport. The peer transport starts these threads
//! and hands them their sockets, settings and channels (`PeerTransport::start`); frames are
//! encoded with [`super::wire`].

use super::fault::PeerFaults;
use super::log_limit::{LogLimiter, LOG_INTERVAL};
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
use std::sync::{Arc, Mutex, PoisonError};
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The membership gained this peer: stream to it on this DEALER (made by the node
    /// loop's transport, moved here).
    Connect(NodeId, zmq::Socket),
    /// The membership lost this peer: close its DEALER.
    Disconnect(NodeId),
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
            SenderInput::Connect(peer, dealer) => {
                self.dealers.insert(peer, dealer);
            }
            SenderInput::Disconnect(peer) => {
                self.dealers.remove(&peer);
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
        let MessageBody::InstallSnapshot { snapshot } = message.body.clone() else {
            log::error!("snapshot sender given a {:?}; ignored", message.body);
            return;
        };
        let to = message.to;
        if let Some(transfer) = self.transfers.get(&to) {
            if transfer.snapshot.last == snapshot.last && transfer.message.term == message.term {
                return; // The core asked again while it is on its way.
            }
        }
        let path = snapshot_file::snapshot_path(&self.settings.dir, &snapshot);
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
                let snapshot = transfer.snapshot.clone();
                self.transfers.remove(&ack.from);
                self.report(ack.from, snapshot, true);
            }
            AckStatus::Refused { reason } => {
                log::warn!(
                    "node {} refused snapshot {}: {reason}",
                    ack.from,
                    transfer.snapshot.last
                );
                let snapshot = transfer.snapshot.clone();
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
                self.report(to, transfer.snapshot.clone(), false);
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
        snapshot: transfer.snapshot.clone(),
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

/// Whom this node follows, and in which term: the one sender whose chunks the receiver
/// takes. The node loop publishes it ([`FollowingCell`]) whenever its core's term or leader
/// changes; a leader publishes itself, so it takes no chunks at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Following {
    pub term: Term,
    /// `None`: no leader known in `term` (an election is on, or none was heard of yet).
    pub leader: Option<NodeId>,
}

/// The node loop's latest [`Following`], shared with the snapshot receiver thread. A lock
/// rather than two atomics, so the receiver never sees a term with another term's leader;
/// it is taken once per chunk and once per change of leader, never contended for long.
#[derive(Debug, Default)]
pub struct FollowingCell(Mutex<Following>);

impl FollowingCell {
    pub fn set(&self, following: Following) {
        // The lock only guards a plain copy: a panic elsewhere cannot leave it half written.
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = following;
    }

    pub fn get(&self) -> Following {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The largest snapshot file the receiver takes, whatever the leader announces (the default
/// of `PeerSettings::snapshot_receive_limits`). Generous on purpose: a real snapshot holds
/// every queued message, and no setting bounds the queued bytes, so the cap only stops
/// announcements no real queue reaches; the free disk check below is the tighter one.
pub const RECEIVE_BYTES_MAX: u64 = 64 << 30;
/// Disk space the receiver leaves free in the data dir beyond an announced file: a snapshot
/// that would fill the disk would stop the WAL, and with it the node.
pub const FREE_DISK_MARGIN_BYTES: u64 = 256 << 20;

/// What a transfer may announce, at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveLimits {
    /// A `total_bytes` over this is refused.
    pub bytes_max: u64,
    /// A `total_bytes` over the data dir's free space minus this is refused.
    pub free_disk_margin_bytes: u64,
}

impl Default for ReceiveLimits {
    fn default() -> ReceiveLimits {
        ReceiveLimits {
            bytes_max: RECEIVE_BYTES_MAX,
            free_disk_margin_bytes: FREE_DISK_MARGIN_BYTES,
        }
    }
}

/// Why the receiver would not take a chunk. Nothing of a refused chunk is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum Refusal {
    /// Older than this node's term: a deposed leader's (answered, so it stops).
    #[error("term {term} is behind this node's term {current}")]
    StaleTerm { term: Term, current: Term },
    /// A newer term, or this node knows no leader in it yet: a real new leader may be a
    /// step ahead of this node's loop. Not answered, so a real sender resends after
    /// [`RESEND_AFTER`], by when this node may follow it.
    #[error("not following anyone in term {term} yet")]
    NotFollowingYet { term: Term },
    /// Another node leads this term (or this node does): no real leader sends this.
    #[error("this node follows node {leader} in term {term}")]
    NotTheLeader { leader: NodeId, term: Term },
    #[error("announces {total_bytes} bytes, more than the {bytes_max} bytes a snapshot may have")]
    TooLarge { total_bytes: u64, bytes_max: u64 },
    #[error(
        "announces {total_bytes} bytes, more than the data dir's {free_bytes} free bytes \
         less a margin of {margin_bytes}"
    )]
    DiskFull {
        total_bytes: u64,
        free_bytes: u64,
        margin_bytes: u64,
    },
    #[error("cannot tell the data dir's free space: {0}")]
    FreeSpaceUnknown(String),
    /// A chunk of the transfer in progress that disagrees with its first chunk.
    #[error("disagrees with the transfer's first chunk (snapshot, size or checksum)")]
    Inconsistent,
}

impl Refusal {
    /// Whether the claimed sender is told (`Refused`) rather than left to resend.
    fn is_answered(&self) -> bool {
        !matches!(self, Refusal::NotFollowingYet { .. })
    }
}

/// Checks that `chunk` comes from the node this node follows, in its current term.
fn check_sender(chunk: &SnapshotChunk, following: Following) -> Result<(), Refusal> {
    if chunk.term < following.term {
        return Err(Refusal::StaleTerm {
            term: chunk.term,
            current: following.term,
        });
    }
    let Some(leader) = following.leader.filter(|_| chunk.term == following.term) else {
        return Err(Refusal::NotFollowingYet { term: chunk.term });
    };
    if leader != chunk.from {
        return Err(Refusal::NotTheLeader {
            leader,
            term: following.term,
        });
    }
    Ok(())
}

/// The bytes free to an unprivileged writer on the file system holding `dir`.
fn free_disk_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stats` is a
    // plain C struct that statvfs fills in (all zeroes is a valid value of it).
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // The field types differ between platforms.
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// Refusals come in floods when forged: one log line a second at most, with a count.
#[derive(Debug)]
struct RefusalLog {
    limiter: LogLimiter,
    /// The last refusal, described in the next line.
    last: String,
}

impl Default for RefusalLog {
    fn default() -> RefusalLog {
        RefusalLog {
            limiter: LogLimiter::new(LOG_INTERVAL),
            last: String::new(),
        }
    }
}

impl RefusalLog {
    /// Counts a refusal; returns the line to log now, if one is due.
    fn refused(&mut self, description: String, now: Instant) -> Option<String> {
        self.limiter.record(1);
        self.last = description;
        self.flush(now)
    }

    /// The line for the refusals not logged yet, unless one was logged less than
    /// [`LOG_INTERVAL`] ago.
    fn flush(&mut self, now: Instant) -> Option<String> {
        let count = self.limiter.take_due(now)?;
        Some(format!(
            "snapshot chunks refused: {count} since the last report; the last: {}",
            self.last
        ))
    }
}

struct Receiving {
    from: NodeId,
    term: Term,
    transfer_id: u64,
    /// What the first chunk announced; every later chunk must say the same.
    total_bytes: u64,
    file_crc: u32,
    incoming: IncomingSnapshot,
    active_at: Instant,
}

impl Receiving {
    fn agrees_with(&self, chunk: &SnapshotChunk) -> bool {
        *self.incoming.meta() == chunk.snapshot
            && self.total_bytes == chunk.total_bytes
            && self.file_crc == chunk.file_crc
    }
}

/// The receiving end's state: at most one transfer, from the node this node follows in its
/// current term, of a size the limits and the disk allow. Pure apart from the files it
/// writes and the free space it asks the file system for, so it is tested without sockets.
pub(crate) struct SnapshotReceiver {
    me: NodeId,
    dir: PathBuf,
    fsync: FsyncPolicy,
    limits: ReceiveLimits,
    /// Invariant: from `following.leader`, in `following.term`, of the `Following` last
    /// passed in (a change abandons it).
    receiving: Option<Receiving>,
    /// The last transfer delivered, to answer its repeated last chunk with `Delivered`.
    delivered: Option<(NodeId, u64)>,
    refusals: RefusalLog,
}

/// What handling one chunk produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReceiverOutput {
    pub(crate) ack: Option<SnapshotAck>,
    /// The whole snapshot arrived intact: deliver this `InstallSnapshot` to the node loop.
    pub(crate) deliver: Option<Message>,
}

impl SnapshotReceiver {
    pub(crate) fn new(
        me: NodeId,
        dir: PathBuf,
        fsync: FsyncPolicy,
        limits: ReceiveLimits,
    ) -> SnapshotReceiver {
        SnapshotReceiver {
            me,
            dir,
            fsync,
            limits,
            receiving: None,
            delivered: None,
            refusals: RefusalLog::default(),
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
            snapshot: chunk.snapshot.clone(),
            transfer_id: chunk.transfer_id,
            status,
        }
    }

    /// Logs `refusal` (rate-limited) and answers it, if it is answered.
    fn refuse(&mut self, chunk: &SnapshotChunk, refusal: Refusal, now: Instant) -> ReceiverOutput {
        let description = format!(
            "from node {} (as claimed), term {}, snapshot {}, {} bytes announced: {refusal}",
            chunk.from, chunk.term, chunk.snapshot.last, chunk.total_bytes
        );
        if let Some(line) = self.refusals.refused(description, now) {
            log::warn!("{line}");
        }
        if !refusal.is_answered() {
            return ReceiverOutput::default();
        }
        self.reply(
            chunk,
            AckStatus::Refused {
                reason: refusal.to_string(),
            },
        )
    }

    /// Deletes the transfer in progress unless it still comes from the node this node
    /// follows, in the current term: a new term or leader ends it.
    fn abandon_unless_following(&mut self, following: Following) {
        let followed = self.receiving.as_ref().is_some_and(|receiving| {
            (Some(receiving.from), receiving.term) == (following.leader, following.term)
        });
        if followed {
            return;
        }
        if let Some(receiving) = self.receiving.take() {
            let leader = match following.leader {
                Some(leader) => format!("node {leader} leads"),
                None => "no leader known".to_string(),
            };
            log::info!(
                "abandoning snapshot {} from node {} in term {} after {} bytes: now term {}, {leader}",
                receiving.incoming.meta().last,
                receiving.from,
                receiving.term,
                receiving.incoming.written_bytes(),
                following.term,
            );
        }
    }

    /// Whether a file of `total_bytes` may be received: under the cap, and fits on the disk
    /// with the margin to spare.
    fn check_size(&self, total_bytes: u64) -> Result<(), Refusal> {
        if total_bytes > self.limits.bytes_max {
            return Err(Refusal::TooLarge {
                total_bytes,
                bytes_max: self.limits.bytes_max,
            });
        }
        let free_bytes = free_disk_bytes(&self.dir)
            .map_err(|error| Refusal::FreeSpaceUnknown(error.to_string()))?;
        if total_bytes > free_bytes.saturating_sub(self.limits.free_disk_margin_bytes) {
            return Err(Refusal::DiskFull {
                total_bytes,
                free_bytes,
                margin_bytes: self.limits.free_disk_margin_bytes,
            });
        }
        Ok(())
    }

    /// Takes one chunk, if it comes from the node this node follows (`following`) in its
    /// term and stays within the limits; writes it if it is the next one expected.
    pub(crate) fn on_chunk(
        &mut self,
        chunk: SnapshotChunk,
        following: Following,
        now: Instant,
    ) -> ReceiverOutput {
        self.abandon_unless_following(following);
        if let Err(refusal) = check_sender(&chunk, following) {
            return self.refuse(&chunk, refusal, now);
        }
        if self.delivered == Some((chunk.from, chunk.transfer_id)) {
            return self.reply(&chunk, AckStatus::Delivered);
        }
        let current = match &self.receiving {
            Some(receiving)
                if (receiving.from, receiving.transfer_id) == (chunk.from, chunk.transfer_id) =>
            {
                if !receiving.agrees_with(&chunk) {
                    self.receiving = None; // Deletes its partial file.
                    return self.refuse(&chunk, Refusal::Inconsistent, now);
                }
                true
            }
            _ => false,
        };
        if !current {
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
            if let Err(refusal) = self.check_size(chunk.total_bytes) {
                return self.refuse(&chunk, refusal, now);
            }
            let incoming =
                match IncomingSnapshot::create(&self.dir, chunk.snapshot.clone(), self.fsync) {
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
                total_bytes: chunk.total_bytes,
                file_crc: chunk.file_crc,
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

    /// Deletes a transfer that went quiet (its leader crashed), or whose sender this node
    /// no longer follows in the current term (`following`: a new term or leader), and logs
    /// the refusals the rate limit held back.
    pub(crate) fn expire(&mut self, following: Following, now: Instant) {
        self.abandon_unless_following(following);
        if let Some(line) = self.refusals.flush(now) {
            log::warn!("{line}");
        }
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
    following: Arc<FollowingCell>,
    acks: Sender<SenderInput>,
    events: Sender<E>,
    stopping: Arc<AtomicBool>,
) where
    E: From<Message>,
{
    loop {
        match chunks.recv_timeout(Duration::from_secs(1)) {
            Ok(chunk) => {
                let output = receiver.on_chunk(chunk, following.get(), Instant::now());
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
        receiver.expire(following.get(), Instant::now());
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

    /// A receiver for node 1 into `dir`, with the default limits.
    fn receiver_in(dir: &Path) -> SnapshotReceiver {
        SnapshotReceiver::new(
            NodeId(1),
            dir.to_path_buf(),
            FsyncPolicy::Never,
            ReceiveLimits::default(),
        )
    }

    /// This node follows `leader` in `term`.
    fn following(term: u64, leader: u64) -> Following {
        Following {
            term: Term(term),
            leader: Some(NodeId(leader)),
        }
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .expect("list")
            .map(|entry| entry.expect("entry").path())
            .collect()
    }

    #[test]
    fn the_receiver_takes_chunks_in_order_and_delivers_only_a_whole_checked_file() {
        let source = tempfile::tempdir().expect("dir");
        let file = snapshot_bytes(source.path(), meta(2, 40), 5000);
        let dir = tempfile::tempdir().expect("dir");
        let mut receiver = receiver_in(dir.path());
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
            let output = receiver.on_chunk(
                chunk_of(&file, snapshot.clone(), 3, 7, range),
                following(3, 0),
                now,
            );
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
                assert_eq!(
                    message.body,
                    MessageBody::InstallSnapshot {
                        snapshot: snapshot.clone()
                    }
                );
                assert_eq!(
                    std::fs::read(received_path(dir.path(), &snapshot)).expect("received file"),
                    file
                );
            } else if number < 5 {
                assert!(
                    !received_path(dir.path(), &snapshot).exists(),
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
        let mut receiver = receiver_in(dir.path());
        let now = Instant::now();
        let total = file.len();
        let good = chunk_of(&file, meta(2, 40), 3, 7, 0..1500);
        file[2000] ^= 0x40;
        let bad = chunk_of(&file, meta(2, 40), 3, 7, 1500..total);
        assert_eq!(
            status(&receiver.on_chunk(good, following(3, 0), now)),
            Some(AckStatus::Received { bytes: 1500 })
        );
        let output = receiver.on_chunk(bad, following(3, 0), now);
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
    fn a_transfer_ends_when_its_leader_or_term_changes_or_it_goes_quiet() {
        let source = tempfile::tempdir().expect("dir");
        let old_file = snapshot_bytes(source.path(), meta(2, 40), 3000);
        let new_file = snapshot_bytes(source.path(), meta(4, 90), 3000);
        let dir = tempfile::tempdir().expect("dir");
        let mut receiver = receiver_in(dir.path());
        let now = Instant::now();
        let count = || files_in(dir.path()).len();
        // The leader of term 3 starts, then restarts the transfer (a new id): the first
        // partial file goes at once.
        receiver.on_chunk(
            chunk_of(&old_file, meta(2, 40), 3, 1, 0..1000),
            following(3, 0),
            now,
        );
        assert_eq!(count(), 1, "one partial file");
        let again = chunk_of(&old_file, meta(2, 40), 3, 2, 0..1500);
        assert_eq!(
            status(&receiver.on_chunk(again, following(3, 0), now)),
            Some(AckStatus::Received { bytes: 1500 })
        );
        assert_eq!(count(), 1, "only the restarted transfer's partial file");
        // An election: node 2 leads term 5. The transfer of term 3 ends as soon as the
        // receiver hears of it, whether from a tick or a chunk.
        receiver.expire(following(5, 2), now);
        assert_eq!(count(), 0, "a transfer from a deposed leader is deleted");
        let mut newer = chunk_of(&new_file, meta(4, 90), 5, 3, 0..1000);
        newer.from = NodeId(2);
        assert_eq!(
            status(&receiver.on_chunk(newer, following(5, 2), now)),
            Some(AckStatus::Received { bytes: 1000 })
        );
        assert_eq!(count(), 1, "the new leader's partial file");
        // A late chunk of the old transfer (term 3) is refused, and changes nothing.
        let late = chunk_of(&old_file, meta(2, 40), 3, 2, 0..1000);
        assert!(matches!(
            status(&receiver.on_chunk(late, following(5, 2), now)),
            Some(AckStatus::Refused { .. })
        ));
        assert_eq!(count(), 1);
        // The new one goes quiet: deleted after the idle timeout.
        receiver.expire(following(5, 2), now + RECEIVE_IDLE_TIMEOUT / 2);
        assert_eq!(count(), 1, "not yet idle");
        receiver.expire(following(5, 2), now + RECEIVE_IDLE_TIMEOUT);
        assert_eq!(count(), 0, "an idle transfer is deleted");
        // A transfer ends too when this node stops knowing a leader (an election is on).
        let mut again = chunk_of(&new_file, meta(4, 90), 5, 4, 0..1000);
        again.from = NodeId(2);
        receiver.on_chunk(again, following(5, 2), now);
        assert_eq!(count(), 1);
        receiver.expire(
            Following {
                term: Term(5),
                leader: None,
            },
            now,
        );
        assert_eq!(
            count(),
            0,
            "a transfer ends when its leader is no longer known"
        );
    }

    /// One chunk at offset 0 that the receiver must refuse, and whether the claimed sender
    /// is answered `Refused` (else nothing: a real leader resends once this node follows it).
    struct RefusalCase {
        name: &'static str,
        following: Following,
        from: u64,
        term: u64,
        total_bytes: u64,
        limits: ReceiveLimits,
        answered: bool,
        reason: &'static str,
    }

    #[test]
    fn the_receiver_refuses_chunks_from_anyone_but_its_leader_in_its_term_and_oversized_ones() {
        const TIB: u64 = 1 << 40;
        let source = tempfile::tempdir().expect("dir");
        let file = snapshot_bytes(source.path(), meta(2, 40), 3000);
        let real = file.len() as u64;
        let limits = ReceiveLimits::default();
        let case = |name, following, from, term, total_bytes| RefusalCase {
            name,
            following,
            from,
            term,
            total_bytes,
            limits,
            answered: true,
            reason: "",
        };
        let cases = vec![
            RefusalCase {
                answered: false,
                reason: "not following anyone in term 3 yet",
                ..case("no leader known yet", Following::default(), 0, 3, real)
            },
            RefusalCase {
                answered: false,
                reason: "not following anyone in term 3 yet",
                ..case(
                    "no leader known in this term",
                    Following {
                        term: Term(3),
                        leader: None,
                    },
                    0,
                    3,
                    real,
                )
            },
            RefusalCase {
                answered: false,
                reason: "not following anyone in term 9 yet",
                ..case("a term ahead of ours", following(3, 0), 0, 9, real)
            },
            RefusalCase {
                reason: "term 2 is behind this node's term 3",
                ..case("a term behind ours", following(3, 0), 0, 2, real)
            },
            RefusalCase {
                reason: "this node follows node 2 in term 3",
                ..case("another node leads", following(3, 2), 0, 3, real)
            },
            RefusalCase {
                reason: "this node follows node 1 in term 3",
                ..case("this node leads", following(3, 1), 0, 3, real)
            },
            RefusalCase {
                reason: "more than the 68719476736 bytes a snapshot may have",
                ..case("1 TiB from the leader", following(3, 0), 0, 3, TIB)
            },
            RefusalCase {
                limits: ReceiveLimits {
                    bytes_max: real - 1,
                    ..limits
                },
                reason: "bytes a snapshot may have",
                ..case("one byte over a small cap", following(3, 0), 0, 3, real)
            },
            RefusalCase {
                limits: ReceiveLimits {
                    free_disk_margin_bytes: u64::MAX,
                    ..limits
                },
                reason: "free bytes less a margin of",
                ..case("more than the free disk", following(3, 0), 0, 3, real)
            },
        ];
        for case in cases {
            let name = case.name;
            let dir = tempfile::tempdir().expect("dir");
            let mut receiver = SnapshotReceiver::new(
                NodeId(1),
                dir.path().to_path_buf(),
                FsyncPolicy::Never,
                case.limits,
            );
            let mut chunk = chunk_of(&file, meta(2, 40), case.term, 7, 0..1000);
            chunk.from = NodeId(case.from);
            chunk.total_bytes = case.total_bytes;
            let output = receiver.on_chunk(chunk, case.following, Instant::now());
            assert!(output.deliver.is_none(), "{name}");
            match status(&output) {
                Some(AckStatus::Refused { reason }) => {
                    assert!(case.answered, "{name}: answered {reason:?}");
                    assert!(reason.contains(case.reason), "{name}: {reason:?}");
                }
                None => assert!(!case.answered, "{name}: not answered"),
                other => panic!("{name}: {other:?}"),
            }
            assert_eq!(files_in(dir.path()), Vec::<PathBuf>::new(), "{name}");
        }
        // Sanity: the same chunk from the leader, of its real size, is taken.
        let dir = tempfile::tempdir().expect("dir");
        let mut receiver = receiver_in(dir.path());
        let output = receiver.on_chunk(
            chunk_of(&file, meta(2, 40), 3, 7, 0..1000),
            following(3, 0),
            Instant::now(),
        );
        assert_eq!(status(&output), Some(AckStatus::Received { bytes: 1000 }));
    }

    #[test]
    fn a_chunk_that_changes_the_announced_size_or_runs_past_it_is_refused_and_nothing_stays() {
        let source = tempfile::tempdir().expect("dir");
        let file = snapshot_bytes(source.path(), meta(2, 40), 3000);
        let now = Instant::now();
        type Change = fn(&mut SnapshotChunk);
        let changes: Vec<(&str, Change)> = vec![
            ("a bigger size", |chunk| chunk.total_bytes = 1 << 40),
            ("a smaller size", |chunk| chunk.total_bytes -= 1),
            ("another checksum", |chunk| chunk.file_crc ^= 1),
            ("another snapshot", |chunk| chunk.snapshot = meta(2, 41)),
            ("more data than announced", |chunk| {
                chunk.data = Bytes::from(vec![0u8; chunk.total_bytes as usize])
            }),
        ];
        for (name, change) in changes {
            let dir = tempfile::tempdir().expect("dir");
            let mut receiver = receiver_in(dir.path());
            let first = chunk_of(&file, meta(2, 40), 3, 7, 0..1000);
            assert_eq!(
                status(&receiver.on_chunk(first, following(3, 0), now)),
                Some(AckStatus::Received { bytes: 1000 }),
                "{name}"
            );
            let mut second = chunk_of(&file, meta(2, 40), 3, 7, 1000..2000);
            change(&mut second);
            let output = receiver.on_chunk(second, following(3, 0), now);
            assert!(
                matches!(status(&output), Some(AckStatus::Refused { .. })),
                "{name}: {output:?}"
            );
            assert_eq!(files_in(dir.path()), Vec::<PathBuf>::new(), "{name}");
        }
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second_with_a_count() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        let first = log.refused("from node 2 (as claimed): first".to_string(), at(0));
        assert_eq!(
            first.as_deref(),
            Some("snapshot chunks refused: 1 since the last report; the last: from node 2 (as claimed): first")
        );
        for millis in 1..1000 {
            assert_eq!(log.refused(format!("number {millis}"), at(millis)), None);
        }
        assert_eq!(log.flush(at(999)), None, "not a second yet");
        assert_eq!(
            log.flush(at(1000)).as_deref(),
            Some("snapshot chunks refused: 999 since the last report; the last: number 999")
        );
        assert_eq!(log.flush(at(5000)), None, "nothing new, nothing logged");
        assert!(log.refused("later".to_string(), at(5000)).is_some());
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
        let file = snapshot_bytes(leader_dir.path(), snapshot.clone(), 1_200_000);
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
        let message = install_message(snapshot.clone());
        leader.send(vec![message.clone()]);
        // Not yet following node 0: its chunks are left unanswered and nothing is written,
        // until the follower's loop says whom it follows; then the leader's resends go in.
        std::thread::sleep(Duration::from_millis(500));
        assert!(follower_inbox.try_recv().is_err(), "delivered too early");
        assert_eq!(files_in(follower_dir.path()), Vec::<PathBuf>::new());
        follower.follow(Term(3), Some(NodeId(0)));
        let delivered = follower_inbox
            .recv_timeout(Duration::from_secs(60))
            .expect("the follower's node loop gets the message");
        assert_eq!(delivered, TestEvent::Message(message));
        let received = std::fs::read(received_path(follower_dir.path(), &snapshot)).expect("file");
        assert!(received == file, "the received file differs");
        let report = leader_inbox
            .recv_timeout(Duration::from_secs(60))
            .expect("the leader's node loop gets a report");
        assert_eq!(
            report,
            TestEvent::Report(SnapshotReport {
                to: NodeId(1),
                snapshot: snapshot.clone(),
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
        assert!(snapshot_path(leader_dir.path(), &snapshot).exists());
    }

    #[test]
    fn a_transfer_to_a_dead_follower_is_reported_failed_and_cancelling_reports_nothing() {
        let context = zmq::Context::new();
        let ports = two_ports();
        let leader_dir = tempfile::tempdir().expect("dir");
        let snapshot = meta(2, 500);
        snapshot_bytes(leader_dir.path(), snapshot.clone(), 100_000);
        let (events, inbox) = crossbeam_channel::unbounded::<TestEvent>();
        let leader =
            PeerTransport::start(&context, settings(0, &ports, leader_dir.path(), 0), events)
                .expect("leader");
        leader.send(vec![install_message(snapshot.clone())]);
        leader.cancel_snapshot_transfers();
        assert!(
            inbox.recv_timeout(Duration::from_secs(4)).is_err(),
            "a cancelled transfer reports nothing"
        );
        leader.send(vec![install_message(snapshot.clone())]);
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
