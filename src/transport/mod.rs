//! The ZeroMQ side of a node: its sockets, the threads that poll them, and the peer wire format.
//!
//! Why it exists: the node loop must never wait on a socket, and a ZeroMQ socket must only
//! be used by the thread that owns it. So each socket that must be *polled* (the two
//! ROUTERs) gets a transport thread, which turns inbound frames into values for the node loop
//! (over the node's one bounded event channel); the client thread also turns the loop's
//! replies back into frames. Sockets that only *send*, and never block doing it, stay with
//! the thread whose messages they carry:
//!
//! ```text
//!   socket                         owned by              carries
//!   client ROUTER                  client thread         requests in, replies out
//!   peer ROUTER                    peer receiver thread  every peer frame in
//!   DEALER per peer                node loop             Raft messages (DONTWAIT)
//!   DEALER per peer, second set    WAL thread            votes and acks, right after the sync
//!   DEALER per peer, third set     snapshot sender       snapshot chunks and acks
//!   doorbell (an eventfd)          ringer and listener   "look at your channel"
//!   monitor PAIRs (inproc)         watcher threads       connection events of the loop's
//!                                                        DEALERs and of the ROUTERs
//! ```
//!
//! Two sets of Raft DEALERs mean a node's messages to one peer may arrive out of order;
//! Raft does not mind (`node::wal_thread` says why).
//!
//! - [`client`]: the client ROUTER. Splits envelope from body, decodes, answers bad input on
//!   the spot, forwards good requests, sends replies with the envelope they came with.
//! - [`peer`]: the peer transport the node loop holds: the ROUTER and its receiver thread,
//!   the DEALER sets ([`peer::PeerDealers`]), and the snapshot threads it starts.
//!   Fire-and-forget: Raft resends what is lost.
//! - [`snapshot_transfer`]: streaming snapshot files to followers in acknowledged chunks,
//!   and receiving them into the data dir, off the node loop.
//! - [`wire`]: the one peer wire format, Raft frames and snapshot transfer frames: layout,
//!   encode, decode, and the envelope check. Pure; both of the above use it.
//! - [`fault`]: tests only: the peers to drop messages to and from (`--fault-injection`).
//! - [`log_limit`]: at most one log line a second per kind of refused input, with a count.
//! - [`monitor`]: what libzmq knows about a socket's connections, as events to poll;
//!   [`watch`]: the threads that read them, telling the node loop when a peer's connection
//!   drops or comes back, and logging refused handshakes on both ROUTERs.
//! - [`zap`]: the ZAP handler that admits only the members' CURVE keys on the peer port
//!   (keyed clusters; without it CURVE admits anyone who knows the server's key), as the
//!   membership changes ([`zap::MemberKeys`]).
//! - [`ports`]: picking free loopback ports, for the local-cluster launcher and the tests.
//!
//! Imports inside this module go one way: `peer` -> `snapshot_transfer` -> `wire`, and
//! `peer` -> `wire`; `wire` imports nothing of the transport.
//!
//! A thread that waits on sockets cannot also block on a crossbeam channel, and `zmq::poll`
//! cannot wait on a channel. A [`mailbox`] pairs a channel with a "doorbell": the producer
//! sends on the channel, then rings; the consumer polls the doorbell beside its sockets and
//! drains the channel when it rings. Nothing sleeps and polls. The client thread and the
//! peer receiver wait on exactly their ROUTER and their doorbell, with one `poll` syscall
//! (`wait_for_socket_or_bell`) instead of `zmq::poll`'s half dozen. The doorbell is a plain
//! Linux eventfd that `zmq::poll` watches as a file descriptor, not a ZeroMQ socket: a ring
//! is one `write` and a drain one `read`, where an inproc socket pair costs ZeroMQ's own
//! signalling on both ends and a `ZMQ_EVENTS` check (a `poll` syscall) in every `zmq::poll`
//! of the consumer, once per request on the client thread's path.
//!
//! What this module must not do: look inside requests beyond decoding them, or hold state
//! that outlives a request's round trip (the node loop owns all of that).

pub mod client;
pub mod counters;
pub mod fault;
pub mod log_limit;
pub mod monitor;
pub mod peer;
pub mod ports;
pub mod snapshot_transfer;
pub mod watch;
pub mod wire;
pub mod zap;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Frames of a ZeroMQ message, as received.
pub type Frames = Vec<Vec<u8>>;

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The operator's problem, typically "Address already in use": its own line on stderr.
    #[error("cannot bind {endpoint} ({purpose}): {source}")]
    Bind {
        endpoint: String,
        purpose: &'static str,
        source: zmq::Error,
    },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: zmq::Error,
    },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("ZeroMQ: {context}: {source}")]
    Zmq {
        context: &'static str,
        source: zmq::Error,
    },
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    Doorbell(std::io::Error),
}

/// Wraps a ZeroMQ error with what was being done, for setup code.
pub(crate) fn zmq_context<T>(
    context: &'static str,
    result: Result<T, zmq::Error>,
) -> Result<T, TransportError> {
    result.map_err(|source| TransportError::Zmq { context, source })
}

/// How often a ROUTER sends a ZMTP PING on each connection it accepted (ZMQ_HEARTBEAT_IVL).
/// The other side's libzmq answers with a PONG on its own I/O thread, so a live client or
/// peer answers even while its application is busy or idle.
pub const HEARTBEAT_INTERVAL_MS: i32 = 1000;

/// A connection from which no whole message (a PONG counts) arrives within this long after
/// a PING is closed (ZMQ_HEARTBEAT_TIMEOUT), and the frame it was halfway through sending is
/// freed with it: without this, a client that sends most of a large frame and stalls pins
/// that memory for as long as its TCP connection lives.
///
/// Generous, because a false drop costs a reconnect and the requests in flight on it:
/// - one frame must arrive within this time, since ZMTP cannot interleave the PONG with it
///   (the largest client frame, 64 MiB, needs a link of about 7 MB/s);
/// - a node whose consumer thread stalls this long stops reading its sockets (the ROUTER's
///   queue is full), and its connections are dropped too; Raft and the clients' retries
///   recover from that.
pub const HEARTBEAT_TIMEOUT_MS: i32 = 10_000;

/// Sent in each PING (ZMQ_HEARTBEAT_TTL): the other side closes its connection to this node
/// if it hears nothing for this long, and reconnects. Since a live node PINGs every
/// [`HEARTBEAT_INTERVAL_MS`], this only fires when the node (or the path to it) is gone
/// without a TCP reset, which TCP alone would notice only after minutes.
pub const HEARTBEAT_TTL_MS: i32 = 10_000;

/// A ROUTER bound on `endpoint` for `purpose` ("client port", "internal port"): linger 0, so
/// closing never waits on unsent replies; frames over `frame_bytes_max` are refused by the
/// socket layer before they are allocated; ZMTP heartbeats drop a connection that stops
/// answering (see [`HEARTBEAT_TIMEOUT_MS`]), and libzmq's handshake timeout (ZMQ_HANDSHAKE_IVL,
/// 30 s by default) one that never finishes its greeting. A port in use comes back as
/// `TransportError::Bind`. `setup` runs on the socket before it binds (CURVE options must be
/// set by then).
pub(crate) fn bind_router_with(
    context: &zmq::Context,
    purpose: &'static str,
    endpoint: &str,
    ipv6: bool,
    frame_bytes_max: usize,
    setup: impl FnOnce(&zmq::Socket) -> Result<(), TransportError>,
) -> Result<zmq::Socket, TransportError> {
    let router = zmq_context("ROUTER socket", context.socket(zmq::ROUTER))?;
    setup(&router)?;
    zmq_context("ROUTER linger", router.set_linger(0))?;
    zmq_context("ROUTER ipv6", router.set_ipv6(ipv6))?;
    let frame_bytes_max = i64::try_from(frame_bytes_max).unwrap_or(i64::MAX);
    zmq_context("ROUTER maxmsgsize", router.set_maxmsgsize(frame_bytes_max))?;
    zmq_context(
        "ROUTER heartbeat interval",
        router.set_heartbeat_ivl(HEARTBEAT_INTERVAL_MS),
    )?;
    zmq_context(
        "ROUTER heartbeat timeout",
        router.set_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS),
    )?;
    zmq_context(
        "ROUTER heartbeat TTL",
        router.set_heartbeat_ttl(HEARTBEAT_TTL_MS),
    )?;
    router
        .bind(endpoint)
        .map_err(|source| TransportError::Bind {
            endpoint: endpoint.to_string(),
            purpose,
            source,
        })?;
    Ok(router)
}

/// `host` as an IP literal. ZeroMQ binds interfaces and IP literals, not host names, so a
/// name such as `localhost` is resolved here, once, at startup. Peers resolve names the same
/// way before connecting: left to ZeroMQ, `localhost` may become `::1` on one side and
/// `127.0.0.1` on the other. IPv4 is preferred, as most clients use it.
pub fn resolve_host(host: &str) -> Result<String, TransportError> {
    use std::net::ToSocketAddrs;
    if host.parse::<std::net::IpAddr>().is_ok() || host == "*" {
        return Ok(host.to_string());
    }
    let mut addresses = (host, 0)
        .to_socket_addrs()
        .map_err(|error| TransportError::Resolve {
            host: host.to_string(),
            reason: error.to_string(),
        })?;
    let all: Vec<_> = addresses.by_ref().collect();
    all.iter()
        .find(|address| address.is_ipv4())
        .or_else(|| all.first())
        .map(|address| address.ip().to_string())
        .ok_or_else(|| TransportError::Resolve {
            host: host.to_string(),
            reason: "no address".to_string(),
        })
}

/// The producer's end of a doorbell: rings a [`DoorbellListener`] on another thread.
pub struct Doorbell {
    fd: Arc<OwnedFd>,
}

/// The consumer's end of a doorbell: poll it beside the thread's other sockets.
pub struct DoorbellListener {
    fd: Arc<OwnedFd>,
}

/// A connected doorbell pair: one non-blocking eventfd, shared by both ends (closed when
/// both are dropped).
pub fn doorbell() -> Result<(Doorbell, DoorbellListener), TransportError> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
    // nothing else owns.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(TransportError::Doorbell(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else (checked above).
    let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    Ok((Doorbell { fd: fd.clone() }, DoorbellListener { fd }))
}

impl Doorbell {
    /// Wakes the listener. Never blocks: the eventfd's counter only saturates after 2^64 - 2
    /// rings nobody drained, and then the listener is awake anyway.
    pub fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer of 8 to a descriptor we own.
        let written = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if written < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::WouldBlock {
                log::debug!("doorbell: {error}");
            }
        }
    }
}

impl DoorbellListener {
    pub fn poll_item(&self) -> zmq::PollItem<'_> {
        zmq::PollItem::from_fd(self.fd.as_raw_fd(), zmq::POLLIN)
    }

    /// Consumes every queued ring without waiting, and says whether there was any.
    pub fn rung(&self) -> bool {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer of 8 from a descriptor we own.
        let read =
            unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        read == count.len() as isize
    }

    /// Consumes every queued ring. Call before draining the channel it guards, so that a
    /// ring for an item sent after the drain is never lost.
    pub fn drain(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer of 8 from a descriptor we own.
        // One read resets the counter; EAGAIN means nothing was rung.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

/// Which of a transport thread's two wake-up sources fired ([`wait_for_socket_or_bell`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Woken {
    /// The socket's `ZMQ_FD` signalled: its mailbox has commands (a message may be in).
    pub(crate) socket: bool,
    pub(crate) bell: bool,
}

/// Blocks until `socket`'s `ZMQ_FD` or `bell` is readable: one `poll` syscall.
///
/// Why not `zmq::poll`: for a ZeroMQ socket it polls once with a zero timeout, then checks
/// `ZMQ_EVENTS` (a `poll` of the socket's mailbox, and a `read` when signalled) before it
/// blocks, and checks `ZMQ_EVENTS` again after: about six syscalls per wake-up, on the
/// client thread's and the peer receiver's path of every request. This is sound only under
/// `ZMQ_FD`'s edge-triggered contract, which the caller keeps: the last operation on the
/// socket before calling this was a `recv` that returned `EAGAIN` (which processes the
/// socket's pending commands and leaves its mailbox waiting for the next signal), with no
/// send in between (a send may consume a signal for incoming messages).
pub(crate) fn wait_for_socket_or_bell(
    socket: std::os::fd::RawFd,
    bell: &DoorbellListener,
) -> std::io::Result<Woken> {
    let mut fds = [
        libc::pollfd {
            fd: socket,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: bell.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a live array of two pollfds, and its length is passed with it.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready >= 0 {
            let fired = |fd: &libc::pollfd| fd.revents != 0;
            return Ok(Woken {
                socket: fired(&fds[0]),
                bell: fired(&fds[1]),
            });
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The sending side of a channel whose receiver waits in `zmq::poll`.
pub struct MailboxSender<T> {
    channel: Sender<T>,
    doorbell: Doorbell,
}

/// The receiving side: poll [`MailboxReceiver::poll_item`], then [`MailboxReceiver::drain`].
pub struct MailboxReceiver<T> {
    channel: Receiver<T>,
    doorbell: DoorbellListener,
}

/// An unbounded mailbox. Unbounded because its producer is the node loop, which must never
/// block; what flows through it is bounded by the requests in flight.
pub fn mailbox<T>() -> Result<(MailboxSender<T>, MailboxReceiver<T>), TransportError> {
    let (ringer, listener) = doorbell()?;
    let (sender, receiver) = crossbeam_channel::unbounded();
    Ok((
        MailboxSender {
            channel: sender,
            doorbell: ringer,
        },
        MailboxReceiver {
            channel: receiver,
            doorbell: listener,
        },
    ))
}

/// The receiver is gone (its thread has exited).
#[derive(Debug, PartialEq, Eq)]
pub struct Disconnected;

impl<T> MailboxSender<T> {
    /// Queues `item` and wakes the receiver.
    pub fn send(&self, item: T) -> Result<(), Disconnected> {
        self.channel.send(item).map_err(|_| Disconnected)?;
        self.doorbell.ring();
        Ok(())
    }

    /// Queues items without waking the receiver; follow with [`MailboxSender::ring`].
    pub fn queue(&self, item: T) -> Result<(), Disconnected> {
        self.channel.send(item).map_err(|_| Disconnected)
    }

    pub fn ring(&self) {
        self.doorbell.ring();
    }
}

impl<T> MailboxReceiver<T> {
    pub fn poll_item(&self) -> zmq::PollItem<'_> {
        self.doorbell.poll_item()
    }

    /// The doorbell, for [`wait_for_socket_or_bell`].
    pub(crate) fn doorbell(&self) -> &DoorbellListener {
        &self.doorbell
    }

    /// Everything queued so far. `Err(Disconnected)` once the sender is gone and the channel
    /// is empty.
    pub fn drain(&self) -> Result<Vec<T>, Disconnected> {
        self.doorbell.drain();
        let mut items = Vec::new();
        loop {
            match self.channel.try_recv() {
                Ok(item) => items.push(item),
                Err(TryRecvError::Empty) => return Ok(items),
                Err(TryRecvError::Disconnected) if items.is_empty() => return Err(Disconnected),
                Err(TryRecvError::Disconnected) => return Ok(items),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn mailbox_wakes_a_polling_thread_for_every_item() {
        let (sender, receiver) = mailbox::<u32>().expect("mailbox");
        let consumer = std::thread::spawn(move || {
            let mut received = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while received.len() < 1000 && Instant::now() < deadline {
                let mut items = [receiver.poll_item()];
                zmq::poll(&mut items, 1000).expect("poll");
                match receiver.drain() {
                    Ok(batch) => received.extend(batch),
                    Err(Disconnected) => break,
                }
            }
            received
        });
        for item in 0..1000 {
            sender.send(item).expect("consumer alive");
        }
        let received = consumer.join().expect("consumer thread");
        assert_eq!(received, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn drain_reports_a_gone_sender_only_when_empty() {
        let (sender, receiver) = mailbox::<u32>().expect("mailbox");
        sender.send(7).expect("receiver alive");
        drop(sender);
        assert_eq!(receiver.drain(), Ok(vec![7]));
        assert_eq!(receiver.drain(), Err(Disconnected));
    }

    #[test]
    fn ringing_never_blocks_when_nobody_listens() {
        let (ringer, _listener) = doorbell().expect("doorbell");
        for _ in 0..100_000 {
            ringer.ring();
        }
    }

    #[test]
    fn bind_router_sets_the_frame_cap_and_heartbeats() {
        let context = zmq::Context::new();
        let router = bind_router_with(
            &context,
            "test port",
            "tcp://127.0.0.1:*",
            false,
            12345,
            |_| Ok(()),
        )
        .expect("bind an ephemeral port");
        assert_eq!(router.get_maxmsgsize().expect("maxmsgsize"), 12345);
        assert_eq!(
            router.get_heartbeat_ivl().expect("interval"),
            HEARTBEAT_INTERVAL_MS
        );
        assert_eq!(
            router.get_heartbeat_timeout().expect("timeout"),
            HEARTBEAT_TIMEOUT_MS
        );
        assert_eq!(router.get_heartbeat_ttl().expect("ttl"), HEARTBEAT_TTL_MS);
    }

    #[test]
    fn resolve_host_resolves_names_and_keeps_literals() {
        assert_eq!(resolve_host("127.0.0.1").expect("literal"), "127.0.0.1");
        assert_eq!(resolve_host("::1").expect("literal"), "::1");
        assert_eq!(resolve_host("localhost").expect("resolves"), "127.0.0.1");
        assert!(resolve_host("no-such-host.invalid").is_err());
    }
}
