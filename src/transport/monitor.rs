//! ZeroMQ socket monitors: what libzmq knows about a socket's connections, as events a thread
//! can poll beside its sockets.
//!
//! Why: a ZeroMQ socket hides its TCP connections. When the process at the other end dies,
//! libzmq sees the connection close at once and quietly reconnects; the application only
//! notices when an answer fails to arrive, a timeout later. A monitor reports those moments
//! (`Disconnected`, `HandshakeFailed*`, ...) so that the peer transport can tell the core
//! that the leader's connection dropped, the client library can retry elsewhere without
//! waiting out its attempt timeout, and the listeners can log refused handshakes.
//!
//! How: [`Monitor::attach`] asks libzmq to publish the socket's events on a fresh `inproc`
//! endpoint of the same context and connects a PAIR socket to it. The owning thread polls
//! that PAIR socket (it is an ordinary socket: put it in the same `zmq::poll` set) and calls
//! [`Monitor::next_event`] until it returns `None`. The PAIR socket belongs to the thread
//! that owns the monitored socket, like every ZeroMQ socket.
//!
//! The event frames come from libzmq, not from the network, but they are still parsed without
//! trusting their shape: an unknown event number or a short frame is skipped, never a panic
//! (the `zmq` crate's own `SocketEvent::from_raw` panics on numbers it does not know).

use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the inproc endpoints of monitors within one process.
static NEXT_MONITOR: AtomicU64 = AtomicU64::new(0);

/// What happened to one of the monitored socket's connections (libzmq's `ZMQ_EVENT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An outgoing connection was established (value: the fd).
    Connected,
    /// An outgoing connect is in progress (value: the error code).
    ConnectDelayed,
    /// An outgoing connect failed and will be retried (value: the retry interval in ms).
    ConnectRetried,
    /// The socket listens on the endpoint (value: the fd).
    Listening,
    /// Binding failed (value: the errno).
    BindFailed,
    /// An incoming connection was accepted (value: the fd).
    Accepted,
    /// Accepting failed (value: the errno).
    AcceptFailed,
    /// A connection's fd was closed (value: the fd).
    Closed,
    /// Closing failed (value: the errno).
    CloseFailed,
    /// A live connection was broken: the other end closed or reset it (value: the fd).
    Disconnected,
    /// The monitor itself stopped (the monitored socket was closed).
    MonitorStopped,
    /// The ZMTP handshake failed for a reason libzmq does not detail (value: the errno).
    HandshakeFailedNoDetail,
    /// The ZMTP handshake, including any CURVE/ZAP authentication, succeeded.
    HandshakeSucceeded,
    /// The other end broke the protocol, e.g. spoke plain to a CURVE socket (value: a
    /// `ZMQ_PROTOCOL_ERROR_*` code).
    HandshakeFailedProtocol,
    /// Authentication was refused, e.g. by the ZAP handler (value: the ZAP status code).
    HandshakeFailedAuth,
}

impl EventKind {
    /// Every kind, for building masks.
    pub const ALL: [EventKind; 15] = [
        EventKind::Connected,
        EventKind::ConnectDelayed,
        EventKind::ConnectRetried,
        EventKind::Listening,
        EventKind::BindFailed,
        EventKind::Accepted,
        EventKind::AcceptFailed,
        EventKind::Closed,
        EventKind::CloseFailed,
        EventKind::Disconnected,
        EventKind::MonitorStopped,
        EventKind::HandshakeFailedNoDetail,
        EventKind::HandshakeSucceeded,
        EventKind::HandshakeFailedProtocol,
        EventKind::HandshakeFailedAuth,
    ];

    /// libzmq's bit for this kind.
    pub fn raw(self) -> u16 {
        let event = match self {
            EventKind::Connected => zmq::SocketEvent::CONNECTED,
            EventKind::ConnectDelayed => zmq::SocketEvent::CONNECT_DELAYED,
            EventKind::ConnectRetried => zmq::SocketEvent::CONNECT_RETRIED,
            EventKind::Listening => zmq::SocketEvent::LISTENING,
            EventKind::BindFailed => zmq::SocketEvent::BIND_FAILED,
            EventKind::Accepted => zmq::SocketEvent::ACCEPTED,
            EventKind::AcceptFailed => zmq::SocketEvent::ACCEPT_FAILED,
            EventKind::Closed => zmq::SocketEvent::CLOSED,
            EventKind::CloseFailed => zmq::SocketEvent::CLOSE_FAILED,
            EventKind::Disconnected => zmq::SocketEvent::DISCONNECTED,
            EventKind::MonitorStopped => zmq::SocketEvent::MONITOR_STOPPED,
            EventKind::HandshakeFailedNoDetail => zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL,
            EventKind::HandshakeSucceeded => zmq::SocketEvent::HANDSHAKE_SUCCEEDED,
            EventKind::HandshakeFailedProtocol => zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL,
            EventKind::HandshakeFailedAuth => zmq::SocketEvent::HANDSHAKE_FAILED_AUTH,
        };
        event.to_raw()
    }

    /// The kind for libzmq's event number, `None` for a number this build does not know.
    pub fn from_raw(raw: u16) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.raw() == raw)
    }
}

/// One event read from a monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorEvent {
    /// What happened.
    pub kind: EventKind,
    /// The event's value; its meaning depends on the kind (see [`EventKind`]).
    pub value: u32,
    /// The endpoint concerned: the address connected to, or the address bound (for a
    /// listener's events libzmq names its own endpoint, not the remote one).
    pub endpoint: String,
}

impl MonitorEvent {
    /// Parses the two frames libzmq sends per event: 6 bytes (event number, value; native
    /// byte order) and the endpoint. `None` for a shape or number this code does not know.
    pub fn parse(head: &[u8], endpoint: &[u8]) -> Option<MonitorEvent> {
        let number: [u8; 2] = head.get(0..2)?.try_into().ok()?;
        let value: [u8; 4] = head.get(2..6)?.try_into().ok()?;
        if head.len() != 6 {
            return None;
        }
        Some(MonitorEvent {
            kind: EventKind::from_raw(u16::from_ne_bytes(number))?,
            value: u32::from_ne_bytes(value),
            endpoint: String::from_utf8_lossy(endpoint).into_owned(),
        })
    }
}

/// The receiving end of one socket's monitor.
pub struct Monitor {
    pair: zmq::Socket,
}

impl Monitor {
    /// Starts monitoring `socket` for `kinds` and connects the receiving end. Call it before
    /// the socket binds or connects, so no event is missed. `context` must be the socket's own
    /// context (inproc endpoints do not cross contexts).
    pub fn attach(
        context: &zmq::Context,
        socket: &zmq::Socket,
        kinds: &[EventKind],
    ) -> Result<Monitor, zmq::Error> {
        let endpoint = format!(
            "inproc://rrmq-monitor-{}",
            NEXT_MONITOR.fetch_add(1, Ordering::Relaxed)
        );
        let mask = kinds
            .iter()
            .fold(0i32, |mask, kind| mask | i32::from(kind.raw()));
        socket.monitor(&endpoint, mask)?;
        let pair = context.socket(zmq::PAIR)?;
        pair.set_linger(0)?;
        pair.connect(&endpoint)?;
        Ok(Monitor { pair })
    }

    /// The socket to poll for readability beside the thread's other sockets.
    pub fn socket(&self) -> &zmq::Socket {
        &self.pair
    }

    /// A poll item for [`Monitor::socket`], readable when an event is waiting.
    pub fn poll_item(&self) -> zmq::PollItem<'_> {
        self.pair.as_poll_item(zmq::POLLIN)
    }

    /// The next waiting event, without blocking; `None` when none is waiting. Frames of an
    /// unknown shape are skipped. An error of the PAIR socket itself (context terminated) is
    /// returned.
    pub fn next_event(&self) -> Result<Option<MonitorEvent>, zmq::Error> {
        loop {
            let frames = match self.pair.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(zmq::Error::EAGAIN) => return Ok(None),
                Err(error) => return Err(error),
            };
            if let [head, endpoint] = frames.as_slice() {
                if let Some(event) = MonitorEvent::parse(head, endpoint) {
                    return Ok(Some(event));
                }
            }
        }
    }

    /// Waits up to `timeout` for the next event (for tests and tools; threads with other
    /// sockets poll [`Monitor::socket`] instead).
    pub fn wait_event(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Option<MonitorEvent>, zmq::Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.next_event()? {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut items = [self.poll_item()];
            zmq::poll(
                &mut items,
                i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1),
            )?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_kind_round_trips_through_its_number() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_raw(kind.raw()), Some(kind));
        }
        assert_eq!(EventKind::from_raw(0x8000), None);
    }

    #[test]
    fn malformed_frames_are_refused_not_panicked_on() {
        assert_eq!(MonitorEvent::parse(&[], b"x"), None);
        assert_eq!(MonitorEvent::parse(&[1, 0, 0, 0, 0], b"x"), None);
        assert_eq!(MonitorEvent::parse(&[1, 0, 0, 0, 0, 0, 0], b"x"), None);
        let mut unknown = 0x8000u16.to_ne_bytes().to_vec();
        unknown.extend_from_slice(&7u32.to_ne_bytes());
        assert_eq!(MonitorEvent::parse(&unknown, b"x"), None);
        let mut disconnected = EventKind::Disconnected.raw().to_ne_bytes().to_vec();
        disconnected.extend_from_slice(&42u32.to_ne_bytes());
        assert_eq!(
            MonitorEvent::parse(&disconnected, b"tcp://127.0.0.1:1"),
            Some(MonitorEvent {
                kind: EventKind::Disconnected,
                value: 42,
                endpoint: "tcp://127.0.0.1:1".into(),
            })
        );
    }

    #[test]
    fn a_dealer_sees_its_connection_drop_when_the_other_end_closes() -> Result<(), zmq::Error> {
        let context = zmq::Context::new();
        let router = context.socket(zmq::ROUTER)?;
        router.set_linger(0)?;
        router.bind("tcp://127.0.0.1:*")?;
        let endpoint = router
            .get_last_endpoint()?
            .map_err(|_| zmq::Error::EINVAL)?;

        let dealer = context.socket(zmq::DEALER)?;
        dealer.set_linger(0)?;
        let monitor = Monitor::attach(
            &context,
            &dealer,
            &[EventKind::Connected, EventKind::Disconnected],
        )?;
        dealer.connect(&endpoint)?;

        let connected = monitor.wait_event(Duration::from_secs(10))?;
        assert_eq!(
            connected.map(|event| event.kind),
            Some(EventKind::Connected)
        );
        drop(router);
        let mut kinds = Vec::new();
        while let Some(event) = monitor.wait_event(Duration::from_secs(10))? {
            kinds.push(event.kind);
            if event.kind == EventKind::Disconnected {
                assert_eq!(event.endpoint, endpoint);
                return Ok(());
            }
        }
        panic!("no Disconnected event within 10 s; saw {kinds:?}");
    }
}
