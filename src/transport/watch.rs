//! The connection watchers: a thread per transport that reads its sockets' monitors
//! ([`super::monitor`]) and acts on what libzmq knows about their connections.
//!
//! Why a thread of its own: the sockets it watches belong to threads that cannot poll
//! monitors. The loop's peer DEALERs are used by the node loop, which blocks on its event
//! channel; the ROUTERs' threads sit on the request path, where an extra socket in every
//! poll costs each request a little. Monitor events are rare (a connection opens, closes or
//! fails its handshake), so one idle thread that wakes only for them costs nothing per
//! request. A monitor's PAIR socket is an ordinary socket owned by this thread; the socket
//! it watches stays with its own thread.
//!
//! What it does with them:
//!
//! - **Peer DEALERs** (the node loop's set, one per peer): a connection that closes
//!   (`Disconnected`: the peer's process died, or the connection was reset) is reported to
//!   the node loop as [`PeerConnection`] `up: false`; once a handshake succeeds again (the
//!   peer restarted, libzmq reconnected), `up: true`. Only changes are reported: nothing at
//!   startup, one report per drop and one per recovery. The core uses the drop of its
//!   leader's connection to pre-vote early (`raft::Core::peer_connection_lost`, which says
//!   why that is safe). A peer that is merely slow or cut off by a partition closes nothing
//!   and is reported nothing: ZMTP heartbeats run only on the ROUTERs, with a TTL of
//!   [`super::HEARTBEAT_TTL_MS`], far beyond any election timeout.
//! - **ROUTERs** (client port, internal port): each handshake refused (a plain client on a
//!   CURVE port, a wrong server key, garbage) is logged as a warning, and each handshake the
//!   other end abandoned (closed half way through the greeting: a client that gave up, a
//!   port scanner, or a plain client that saw the mismatch before this node did) at info
//!   level; each kind at most once per [`LOG_INTERVAL`] per port, with a count, the port's
//!   endpoint and, best effort, the remote address: libzmq names only the port in these
//!   events, so the address is read with `getpeername` on the descriptor of the `Accepted`
//!   event and matched to the failure by the `Disconnected` event that follows it on the
//!   same descriptor. A connection refused before this thread read its `Accepted` event has no
//!   address left to read ("address unknown"). A key the ZAP handler refuses is logged
//!   there, with the key ([`super::zap`]); here only at debug level. Each refusal, and the
//!   number of connections open, is also counted for the metrics endpoint
//!   ([`super::counters`]).
//!
//! What it must not do: block on the node loop's channel without watching the stop flag
//! (the loop stops the transport while the channel may be full), or log once per event.

use super::log_limit::{LogLimiter, LOG_INTERVAL};
use super::monitor::{EventKind, Monitor, MonitorEvent};
use super::{doorbell, Doorbell, DoorbellListener, TransportError};
use crate::raft::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the peer watcher tells the node loop: this node's connection to `peer` dropped
/// (`up: false`) or came back after a drop (`up: true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerConnection {
    pub peer: NodeId,
    pub up: bool,
}

/// The events a DEALER to a peer is monitored for.
pub const DEALER_EVENTS: [EventKind; 2] = [EventKind::Disconnected, EventKind::HandshakeSucceeded];

/// The events a ROUTER is monitored for.
pub const LISTENER_EVENTS: [EventKind; 5] = [
    EventKind::Accepted,
    EventKind::Disconnected,
    EventKind::HandshakeFailedNoDetail,
    EventKind::HandshakeFailedProtocol,
    EventKind::HandshakeFailedAuth,
];

/// How long a refused handshake waits for its `Disconnected` event (to learn the address)
/// or a rate-limited line waits for the next refusal, before it is logged anyway.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long one attempt to hand a report to a full event channel waits before checking
/// the stop flag again.
const SEND_RETRY: Duration = Duration::from_millis(100);

/// One monitored socket.
pub enum Watched {
    /// The node loop's DEALER to `peer`.
    Peer { peer: NodeId, monitor: Monitor },
    /// A ROUTER bound on `endpoint`, serving `purpose` ("client port", "internal port").
    Listener {
        purpose: &'static str,
        endpoint: String,
        monitor: Monitor,
    },
}

/// A running watcher thread; stopping (or dropping) it joins the thread.
pub struct Watcher {
    stop: Doorbell,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts thread `name` reading the monitors in `watched`. Peer connection changes go to
    /// `report`, which returns false once nobody listens (the thread then stops reporting).
    pub fn start(
        name: &'static str,
        watched: Vec<Watched>,
        report: impl FnMut(PeerConnection) -> bool + Send + 'static,
    ) -> Result<Watcher, TransportError> {
        let (stop, stop_listener) = doorbell()?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(watched, stop_listener, report))
            .map_err(|source| TransportError::Spawn { name, source })?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and closes its monitor sockets.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.ring();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("a connection watcher thread panicked");
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// A `report` for [`Watcher::start`] that hands each change to the node loop's channel,
/// waiting while it is full unless `stopping` is raised.
pub fn report_to<E>(
    events: crossbeam_channel::Sender<E>,
    stopping: Arc<AtomicBool>,
) -> impl FnMut(PeerConnection) -> bool + Send + 'static
where
    E: From<PeerConnection> + Send + 'static,
{
    move |change| {
        let mut event = E::from(change);
        loop {
            match events.send_timeout(event, SEND_RETRY) {
                Ok(()) => return true,
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                    if stopping.load(Ordering::Relaxed) {
                        return false;
                    }
                    event = back;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }
}

/// Per watched socket, what the thread remembers between events.
enum State {
    Peer {
        peer: NodeId,
        /// A drop was reported and no handshake has succeeded since.
        down: bool,
    },
    Listener(Box<RefusalLog>),
}

fn run(
    watched: Vec<Watched>,
    stop: DoorbellListener,
    mut report: impl FnMut(PeerConnection) -> bool,
) {
    let mut monitors = Vec::with_capacity(watched.len());
    let mut states = Vec::with_capacity(watched.len());
    for watched in watched {
        match watched {
            Watched::Peer { peer, monitor } => {
                monitors.push(monitor);
                states.push(State::Peer { peer, down: false });
            }
            Watched::Listener {
                purpose,
                endpoint,
                monitor,
            } => {
                monitors.push(monitor);
                states.push(State::Listener(Box::new(RefusalLog::new(
                    purpose, endpoint,
                ))));
            }
        }
    }
    let mut reporting = true;
    loop {
        let flush_due = states.iter().any(|state| match state {
            State::Listener(log) => log.has_unlogged(),
            State::Peer { .. } => false,
        });
        let timeout_ms = if flush_due {
            i64::try_from(FLUSH_INTERVAL.as_millis()).unwrap_or(1000)
        } else {
            -1
        };
        let ready: Vec<bool> = {
            let mut items: Vec<zmq::PollItem<'_>> = Vec::with_capacity(monitors.len() + 1);
            items.push(stop.poll_item());
            items.extend(monitors.iter().map(Monitor::poll_item));
            match zmq::poll(&mut items, timeout_ms) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(error) => {
                    log::error!("connection watcher: poll: {error}");
                    return;
                }
            }
            items.iter().map(zmq::PollItem::is_readable).collect()
        };
        if ready[0] {
            return;
        }
        for (position, monitor) in monitors.iter().enumerate() {
            if !ready[position + 1] {
                continue;
            }
            loop {
                let event = match monitor.next_event() {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    Err(error) => {
                        log::error!("connection watcher: {error}");
                        return;
                    }
                };
                match &mut states[position] {
                    State::Peer { peer, down } => {
                        let Some(change) = peer_change(*peer, down, &event) else {
                            continue;
                        };
                        if change.up {
                            log::info!("connection to node {} restored", change.peer);
                        } else {
                            log::info!("connection to node {} dropped", change.peer);
                        }
                        if reporting {
                            reporting = report(change);
                        }
                    }
                    State::Listener(log) => log.on_event(&event, Instant::now()),
                }
            }
        }
        let now = Instant::now();
        for state in &mut states {
            if let State::Listener(log) = state {
                log.flush(now);
            }
        }
    }
}

/// The change to report for `event` on the DEALER to `peer`, given whether it is `down`
/// (updated): a drop when it was up, a recovery when it was down, else nothing.
fn peer_change(peer: NodeId, down: &mut bool, event: &MonitorEvent) -> Option<PeerConnection> {
    let up = match event.kind {
        EventKind::Disconnected => false,
        EventKind::HandshakeSucceeded => true,
        _ => return None,
    };
    if *down != up {
        return None;
    }
    *down = !up;
    Some(PeerConnection { peer, up })
}

/// Why a handshake was refused, in words, from its event.
fn describe_refusal(kind: EventKind, value: u32) -> String {
    match kind {
        EventKind::HandshakeFailedProtocol => {
            let what = match value {
                0x1100_0002 => "security mechanism mismatch (e.g. a plain client on a CURVE port)",
                0x1100_0001 => {
                    "cryptographic error (e.g. a CURVE client with the wrong server key)"
                }
                0x1000_0000..=0x10ff_ffff => "ZMTP protocol error",
                0x2000_0000..=0x20ff_ffff => "ZAP error",
                _ => "protocol error",
            };
            format!("{what} (code {value:#x})")
        }
        EventKind::HandshakeFailedAuth => {
            format!("authentication refused (ZAP status {value})")
        }
        _ => format!(
            "connection closed during the handshake ({})",
            std::io::Error::from_raw_os_error(i32::try_from(value).unwrap_or(0))
        ),
    }
}

/// The remote address of the connection behind descriptor `fd`, if it is still open.
fn peer_address(fd: u32) -> Option<SocketAddr> {
    use std::os::fd::FromRawFd;
    let fd = i32::try_from(fd).ok()?;
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor is only borrowed: `ManuallyDrop` never closes it, and the
    // stream is dropped (forgotten) before this function returns. If libzmq closed it
    // meanwhile, `getpeername` fails (EBADF/ENOTSOCK) and `None` comes back; if the number
    // was reused, the address is another connection's: best effort, as documented.
    let stream = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    stream.peer_addr().ok()
}

/// How a handshake failed, for logging: each class has its own rate limit and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// This node refused it (a protocol error: a plain client on a CURVE port, a wrong
    /// server key, garbage): a warning.
    Refused,
    /// The other end went away half way through the greeting, or never finished it (a
    /// client that gave up, a port scanner, or the other end seeing the mismatch first):
    /// common and mostly harmless, so at info level.
    Abandoned,
}

impl Class {
    const ALL: [Class; 2] = [Class::Refused, Class::Abandoned];

    fn of(kind: EventKind) -> Class {
        match kind {
            EventKind::HandshakeFailedNoDetail => Class::Abandoned,
            _ => Class::Refused,
        }
    }

    fn position(self) -> usize {
        match self {
            Class::Refused => 0,
            Class::Abandoned => 1,
        }
    }
}

/// The refused handshakes of one ROUTER, logged rate-limited (see the module docs).
struct RefusalLog {
    purpose: &'static str,
    endpoint: String,
    /// Connections accepted and not yet disconnected: descriptor -> remote address. Bounded
    /// by the descriptors in use: a reused descriptor's next `Accepted` replaces its entry.
    accepted: HashMap<u32, Option<SocketAddr>>,
    /// A failed handshake waiting for its `Disconnected` event (which names the
    /// descriptor, hence the address), with when it came.
    waiting: Option<(EventKind, u32, Instant)>,
    /// Per [`Class`]: the rate limit, and the latest failure counted but not yet logged
    /// (what, from where).
    limiters: [LogLimiter; 2],
    latest: [Option<(String, String)>; 2],
}

impl RefusalLog {
    fn new(purpose: &'static str, endpoint: String) -> RefusalLog {
        RefusalLog {
            purpose,
            endpoint,
            accepted: HashMap::new(),
            waiting: None,
            limiters: [LogLimiter::new(LOG_INTERVAL), LogLimiter::new(LOG_INTERVAL)],
            latest: [None, None],
        }
    }

    fn has_unlogged(&self) -> bool {
        self.waiting.is_some() || self.latest.iter().any(Option::is_some)
    }

    fn on_event(&mut self, event: &MonitorEvent, now: Instant) {
        let counters = super::counters::for_purpose(self.purpose);
        match event.kind {
            EventKind::Accepted => {
                self.accepted.insert(event.value, peer_address(event.value));
                counters.set_connections(self.accepted.len());
            }
            EventKind::HandshakeFailedNoDetail
            | EventKind::HandshakeFailedProtocol
            | EventKind::HandshakeFailedAuth => {
                counters.refused();
                if let Some((kind, value, _)) = self.waiting.take() {
                    self.failed(kind, value, None, now);
                }
                self.waiting = Some((event.kind, event.value, now));
            }
            EventKind::Disconnected => {
                let address = self.accepted.remove(&event.value).flatten();
                counters.set_connections(self.accepted.len());
                if let Some((kind, value, _)) = self.waiting.take() {
                    self.failed(kind, value, address, now);
                }
            }
            _ => {}
        }
    }

    /// Counts one failed handshake and logs if a line is due.
    fn failed(&mut self, kind: EventKind, value: u32, address: Option<SocketAddr>, now: Instant) {
        let what = describe_refusal(kind, value);
        let from = address.map_or_else(|| "address unknown".to_string(), |a| a.to_string());
        if kind == EventKind::HandshakeFailedAuth {
            // The ZAP handler logged it, with the key (see the module docs).
            log::debug!(
                "{} {}: handshake from {from} refused: {what}",
                self.purpose,
                self.endpoint
            );
            return;
        }
        let class = Class::of(kind);
        self.limiters[class.position()].record(1);
        self.latest[class.position()] = Some((what, from));
        self.log_if_due(class, now);
    }

    fn log_if_due(&mut self, class: Class, now: Instant) {
        let position = class.position();
        if self.latest[position].is_none() {
            return;
        }
        let Some(count) = self.limiters[position].take_due(now) else {
            return;
        };
        let Some((what, from)) = self.latest[position].take() else {
            return;
        };
        let (purpose, endpoint) = (self.purpose, &self.endpoint);
        match class {
            Class::Refused => log::warn!(
                "{purpose} {endpoint}: refused {count} handshake(s); latest from {from}: {what}"
            ),
            Class::Abandoned => log::info!(
                "{purpose} {endpoint}: {count} handshake(s) not finished; latest from {from}: \
                 {what}"
            ),
        }
    }

    /// Logs what waited long enough: a failure whose `Disconnected` never came, and counts
    /// the rate limit held back.
    fn flush(&mut self, now: Instant) {
        if let Some((kind, value, at)) = self.waiting {
            if now.saturating_duration_since(at) >= FLUSH_INTERVAL {
                self.waiting = None;
                self.failed(kind, value, None, now);
            }
        }
        for class in Class::ALL {
            self.log_if_due(class, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> MonitorEvent {
        MonitorEvent {
            kind,
            value: 7,
            endpoint: "tcp://127.0.0.1:1".into(),
        }
    }

    #[test]
    fn a_peer_is_reported_down_once_per_drop_and_up_only_after_a_drop() {
        let peer = NodeId(2);
        let mut down = false;
        let cases = [
            (
                EventKind::HandshakeSucceeded,
                None,
                "first connection: nothing",
            ),
            (EventKind::Disconnected, Some(false), "a drop is reported"),
            (EventKind::Disconnected, None, "still down: nothing more"),
            (EventKind::Accepted, None, "other events: nothing"),
            (EventKind::HandshakeSucceeded, Some(true), "back up"),
            (EventKind::HandshakeSucceeded, None, "already up"),
        ];
        for (case, (kind, expected, name)) in cases.into_iter().enumerate() {
            let change = peer_change(peer, &mut down, &event(kind));
            assert_eq!(
                change,
                expected.map(|up| PeerConnection { peer, up }),
                "case {case}: {name}"
            );
        }
    }

    #[test]
    fn a_refusal_takes_the_address_of_the_connection_that_disconnects_after_it() {
        let start = Instant::now();
        let mut log = RefusalLog::new("client port", "tcp://127.0.0.1:1".into());
        log.accepted
            .insert(7, Some("127.0.0.1:4242".parse().expect("address")));
        log.on_event(
            &MonitorEvent {
                kind: EventKind::HandshakeFailedProtocol,
                value: 0x1100_0002,
                endpoint: "tcp://127.0.0.1:1".into(),
            },
            start,
        );
        assert!(log.has_unlogged(), "waits for the Disconnected event");
        log.on_event(&event(EventKind::Disconnected), start);
        assert!(!log.has_unlogged(), "the first line is logged at once");
        assert!(log.accepted.is_empty(), "the connection is forgotten");

        // Within the interval: counted, held back, logged by a later flush.
        log.on_event(&event(EventKind::HandshakeFailedProtocol), start);
        log.on_event(&event(EventKind::Disconnected), start);
        assert!(log.has_unlogged());
        // An abandoned handshake has its own limit: its first line is due at once.
        log.on_event(&event(EventKind::HandshakeFailedNoDetail), start);
        log.on_event(&event(EventKind::Disconnected), start);
        assert!(log.latest[Class::Abandoned.position()].is_none());
        log.flush(start + Duration::from_millis(10));
        assert!(log.has_unlogged(), "still within the interval");
        log.flush(start + LOG_INTERVAL);
        assert!(!log.has_unlogged());

        // A refusal whose Disconnected never comes is logged after FLUSH_INTERVAL.
        let later = start + 10 * LOG_INTERVAL;
        log.on_event(&event(EventKind::HandshakeFailedProtocol), later);
        log.flush(later);
        assert!(log.has_unlogged());
        log.flush(later + FLUSH_INTERVAL);
        assert!(!log.has_unlogged());
    }

    #[test]
    fn refusals_are_described_without_trusting_the_value() {
        assert!(
            describe_refusal(EventKind::HandshakeFailedProtocol, 0x1100_0002)
                .contains("plain client on a CURVE port")
        );
        assert!(describe_refusal(EventKind::HandshakeFailedAuth, 400).contains("400"));
        assert!(
            describe_refusal(EventKind::HandshakeFailedNoDetail, u32::MAX)
                .contains("closed during the handshake")
        );
        assert_eq!(peer_address(u32::MAX), None);
    }

    #[test]
    fn a_watched_dealer_reports_its_peer_down_when_the_peer_closes_and_up_when_it_returns(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let context = zmq::Context::new();
        let port = crate::transport::ports::free_port()?;
        let endpoint = format!("tcp://127.0.0.1:{port}");
        let bind = |context: &zmq::Context| -> Result<zmq::Socket, zmq::Error> {
            let router = context.socket(zmq::ROUTER)?;
            router.set_linger(0)?;
            router.bind(&endpoint)?;
            Ok(router)
        };
        let router = bind(&context)?;
        let dealer = context.socket(zmq::DEALER)?;
        dealer.set_linger(0)?;
        dealer.set_reconnect_ivl(50)?;
        let monitor = Monitor::attach(&context, &dealer, &DEALER_EVENTS)?;
        dealer.connect(&endpoint)?;
        let (events, inbox) = crossbeam_channel::unbounded::<PeerConnection>();
        let watcher = Watcher::start(
            "test-watch",
            vec![Watched::Peer {
                peer: NodeId(1),
                monitor,
            }],
            report_to(events, Arc::new(AtomicBool::new(false))),
        )?;
        // Wait until the connection is up (a message gets through), then close the far end.
        dealer.send("ping", 0)?;
        let mut items = [router.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 10_000)?;
        assert!(items[0].is_readable(), "the DEALER connected");
        drop(router);
        let down = inbox.recv_timeout(Duration::from_secs(10))?;
        assert_eq!(
            down,
            PeerConnection {
                peer: NodeId(1),
                up: false
            }
        );
        // libzmq closes the old listener on its I/O thread: the port may take a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let _router = loop {
            match bind(&context) {
                Ok(router) => break router,
                Err(zmq::Error::EADDRINUSE) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => return Err(error.into()),
            }
        };
        let up = inbox.recv_timeout(Duration::from_secs(10))?;
        assert_eq!(
            up,
            PeerConnection {
                peer: NodeId(1),
                up: true
            }
        );
        watcher.stop();
        Ok(())
    }
}
