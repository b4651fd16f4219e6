//! The client-facing socket: a ROUTER on `tcp://ip:port` and the thread that owns it.
//!
//! The thread splits each message into its routing envelope and its one body frame, decodes
//! the body, and answers bad input on the spot (PROTOCOL.md §6: it never reaches the core).
//! A good request goes to the node loop as a [`ClientRequest`] with a [`Ticket`]; the thread
//! keeps the envelope, version and encoding under that ticket and, when the node loop's
//! [`Reply`] comes back through the mailbox, encodes it and sends it with the envelope the
//! request came with. The node loop never sees bytes or envelopes.
//!
//! Envelope rules (PROTOCOL.md §2): a REQ client's message arrives as `[identity, "", body]`,
//! a bare DEALER's as `[identity, body]`, and one that passed through more ROUTERs as
//! `[identity, identity, ..., "", body]`. The envelope is everything up to and including the
//! first empty frame, or just the identity when there is none; exactly one frame must remain.
//!
//! Frames over the hard cap (ZMQ_MAXMSGSIZE) are refused by ZeroMQ, which drops the
//! connection without allocating them; a client that stops answering ZMTP heartbeats, for
//! instance halfway through a large frame, is dropped and the frame freed
//! ([`super::HEARTBEAT_TIMEOUT_MS`]). Replies are sent with DONTWAIT: ROUTER drops a reply
//! to a client that is gone or not reading, rather than blocking everyone else.
//!
//! With a client list (PROTOCOL.md §11 "Clients") the ROUTER is a CURVE server in ZAP domain
//! [`super::zap::CLIENT_DOMAIN`]: the ZAP handler admits only listed keys and names each
//! connection by its key (`User-Id`). Each request is then checked against the list in force
//! now, first of all: a key no longer listed (a reload removed it while its connection stayed
//! open) gets no reply, as an unknown key would; a request outside the client's rights gets
//! `FORBIDDEN` here and never reaches the node loop. The rights are checked on what the
//! parsed body names (type, method, topic) before the rest is validated, so a request to a
//! forbidden topic is `FORBIDDEN` whatever else is wrong with it.
//!
//! The handler also admits the current members' keys on this port, named `node ID`
//! ([`super::zap::peer_user_id`]), so that a node started with `--join` can ask for the
//! cluster id without being listed as a client. Such a connection may ask for `stats` and
//! `status` and nothing else: every other request is `FORBIDDEN`, checked just as first as a
//! client's rights; one from a node no longer a member gets no reply.
//! With a metrics endpoint (`metrics_port`), this thread counts every request by type and
//! outcome, with its latency from arrival to reply (`crate::metrics::requests`): it is the
//! one place every request passes twice, whether the node loop answered it or this thread
//! did.

use super::monitor::Monitor;
use super::watch::{self, Watched, Watcher};
use super::zap::{parse_peer_user_id, MemberKeys};
use super::{
    bind_router_with, mailbox, wait_for_socket_or_bell, zmq_context, Frames, MailboxReceiver,
    MailboxSender, TransportError, Woken,
};
use crate::config::clients::{Access, SharedClients};
use crate::config::keys::Key;
use crate::config::NodeConfig;
use crate::metrics::requests::{outcome_label, request_type, RequestRecorder, INVALID_TYPE};
use crate::metrics::Metrics;
use crate::protocol::{
    detect_encoding, encode_reply, encode_request_error, parse_request, Encoding, ErrorCode,
    ErrorInfo, Intent, Limits, Outcome, Reply, Request, RequestError,
};
use crossbeam_channel::Sender;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Messages read per wakeup before replies get their turn.
const RECEIVE_BATCH_MAX: usize = 256;

/// How long closing the socket may wait to flush the last replies on shutdown.
const CLOSE_LINGER_MS: i32 = 100;

/// Names one request in flight between the client thread and the node loop.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// A decoded request on its way to the node loop.
#[derive(Clone, Debug)]
pub struct ClientRequest {
    /// Hand it back with the reply.
    pub ticket: Ticket,
    pub request: Request,
    pub received_at: Instant,
}

enum ClientCommand {
    Reply { ticket: Ticket, reply: Reply },
    Stop,
}

#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// `tcp://host:port` with `host` an IP literal.
    pub bind_endpoint: String,
    pub ipv6: bool,
    pub limits: Limits,
    /// ZMQ_MAXMSGSIZE.
    pub frame_bytes_max: usize,
    /// CURVE and per-request rights, when the config lists `clients`; plain otherwise.
    pub curve: Option<ClientCurve>,
    /// Where to count requests by type and outcome, with their latency (`metrics_port`
    /// set); `None` records nothing.
    pub metrics: Option<Arc<Metrics>>,
}

/// A keyed client port: the ROUTER is a CURVE server with the node's own secret key, and
/// every request is checked against `clients` (the list a SIGHUP swaps). The ZAP handler
/// that admits the handshakes must be bound in the same context first.
#[derive(Clone, Debug)]
pub struct ClientCurve {
    pub secret: Key,
    pub clients: Arc<SharedClients>,
    /// The members' keys, admitted for `stats` and `status` only (the peer transport's).
    pub members: Arc<MemberKeys>,
}

impl ClientSettings {
    pub fn from_config(config: &NodeConfig) -> Result<ClientSettings, TransportError> {
        let own = config.address();
        let host = super::resolve_host(&own.ip)?;
        Ok(ClientSettings {
            bind_endpoint: crate::config::tcp_endpoint(&host, own.port),
            ipv6: host.contains(':'),
            limits: config.limits.clone(),
            frame_bytes_max: config.client_frame_bytes_max(),
            curve: None,
            metrics: None,
        })
    }
}

/// The running client transport; the node loop owns it and answers through it.
pub struct ClientTransport {
    replies: MailboxSender<ClientCommand>,
    /// Replies queued since the last ring.
    unrung: Cell<bool>,
    thread: Option<JoinHandle<()>>,
    /// Logs the ROUTER's refused handshakes (rate-limited, with the address when it can);
    /// stopped when the transport is dropped.
    _watcher: Watcher,
}

/// Starts the thread that logs `router`'s refused handshakes ([`super::watch`]): off the
/// client thread, whose every poll is on the request path.
fn watch_refused_handshakes(
    context: &zmq::Context,
    router: &zmq::Socket,
    endpoint: &str,
) -> Result<Watcher, TransportError> {
    let monitor = zmq_context(
        "client ROUTER monitor",
        Monitor::attach(context, router, &watch::LISTENER_EVENTS),
    )?;
    let watched = vec![Watched::Listener {
        purpose: "client port",
        endpoint: endpoint.to_string(),
        monitor,
    }];
    Watcher::start("client-watch", watched, |_| true)
}

impl ClientTransport {
    /// Binds the ROUTER (a port in use is reported here, as a value) and starts the thread.
    pub fn start<E>(
        context: &zmq::Context,
        settings: ClientSettings,
        events: Sender<E>,
    ) -> Result<ClientTransport, TransportError>
    where
        E: From<ClientRequest> + Send + 'static,
    {
        let curve = settings.curve.clone();
        let router = bind_router_with(
            context,
            "client port",
            &settings.bind_endpoint,
            settings.ipv6,
            settings.frame_bytes_max,
            |router| {
                let Some(curve) = &curve else {
                    return Ok(());
                };
                zmq_context("client ROUTER curve server", router.set_curve_server(true))?;
                zmq_context(
                    "client ROUTER secret key",
                    router.set_curve_secretkey(&curve.secret),
                )?;
                zmq_context(
                    "client ROUTER ZAP domain",
                    router.set_zap_domain(super::zap::CLIENT_DOMAIN),
                )
            },
        )?;
        let watcher = watch_refused_handshakes(context, &router, &settings.bind_endpoint)?;
        let (replies, inbox) = mailbox()?;
        let limits = settings.limits;
        let (clients, members) = match settings.curve {
            Some(curve) => (Some(curve.clients), Some(curve.members)),
            None => (None, None),
        };
        let recorder = settings.metrics.map(RequestRecorder::new);
        let thread = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                ClientThread {
                    router,
                    inbox,
                    events,
                    limits,
                    clients,
                    members,
                    pending: HashMap::new(),
                    next_ticket: 0,
                    recorder,
                }
                .run()
            })
            .map_err(|source| TransportError::Spawn {
                name: "client",
                source,
            })?;
        Ok(ClientTransport {
            replies,
            unrung: Cell::new(false),
            thread: Some(thread),
            _watcher: watcher,
        })
    }

    /// Queues the reply to `ticket`; it leaves at the next [`ClientTransport::flush`].
    pub fn reply(&self, ticket: Ticket, reply: Reply) {
        if self
            .replies
            .queue(ClientCommand::Reply { ticket, reply })
            .is_err()
        {
            log::debug!("client thread has stopped; reply dropped");
        }
        self.unrung.set(true);
    }

    /// Wakes the client thread for the replies queued since the last flush.
    pub fn flush(&self) {
        if self.unrung.replace(false) {
            self.replies.ring();
        }
    }

    /// Sends every queued reply, answers whatever is still pending SHUTTING_DOWN, closes the
    /// socket (waiting at most ~100 ms for replies to leave) and joins the thread.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let _ = self.replies.send(ClientCommand::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the client thread panicked");
            }
        }
    }
}

impl Drop for ClientTransport {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// What the thread keeps of a request while the node loop works on it.
struct Pending {
    envelope: Frames,
    version: u8,
    encoding: Encoding,
    /// The request's type label and arrival, for the metrics.
    kind: &'static str,
    received_at: Instant,
}

struct ClientThread<E> {
    router: zmq::Socket,
    inbox: MailboxReceiver<ClientCommand>,
    events: Sender<E>,
    limits: Limits,
    /// The client list each request is checked against, on a keyed client port.
    clients: Option<Arc<SharedClients>>,
    /// The members whose connections may ask for `stats` and `status`, on a keyed port.
    members: Option<Arc<MemberKeys>>,
    /// Invariant: holds exactly the tickets sent to the node loop and not yet answered.
    pending: HashMap<Ticket, Pending>,
    next_ticket: u64,
    recorder: Option<RequestRecorder>,
}

impl<E: From<ClientRequest>> ClientThread<E> {
    fn run(mut self) {
        let socket = match self.router.get_fd() {
            Ok(fd) => fd,
            Err(error) => {
                log::error!("client thread: ZMQ_FD: {error}");
                return;
            }
        };
        // Nothing read yet: look at both before the first wait.
        let mut woken = Woken {
            socket: true,
            bell: true,
        };
        loop {
            if woken.bell {
                let commands = match self.inbox.drain() {
                    Ok(commands) => commands,
                    Err(_) => return, // The node loop is gone without a word.
                };
                for command in commands {
                    match command {
                        ClientCommand::Reply { ticket, reply } => self.send_reply(ticket, &reply),
                        ClientCommand::Stop => {
                            self.finish();
                            return;
                        }
                    }
                }
            }
            // Read until EAGAIN whatever woke us, after the replies: a send may have taken
            // the signal of a request that arrived meanwhile, and the wait below needs the
            // socket's last operation to be a recv that found nothing.
            let mut drained = false;
            for _ in 0..RECEIVE_BATCH_MAX {
                match recv_frames(&self.router, self.clients.is_some()) {
                    Ok((frames, user_id)) => self.handle(frames, user_id),
                    Err(zmq::Error::EAGAIN) => {
                        drained = true;
                        break;
                    }
                    Err(zmq::Error::EINTR) => continue,
                    Err(error) => {
                        log::error!("client thread: recv: {error}");
                        return;
                    }
                }
            }
            woken = if drained {
                match wait_for_socket_or_bell(socket, self.inbox.doorbell()) {
                    Ok(woken) => woken,
                    Err(error) => {
                        log::error!("client thread: poll: {error}");
                        return;
                    }
                }
            } else {
                // More requests queued: give the replies their turn, then read on.
                Woken {
                    socket: true,
                    bell: true,
                }
            };
        }
    }

    fn handle(&mut self, frames: Frames, user_id: Option<String>) {
        let received_at = Instant::now();
        // A keyed port: a connection whose key is not (or no longer) listed, nor a current
        // member's, gets nothing.
        let mut peer = None;
        let list = match &self.clients {
            None => None,
            Some(clients) => {
                let list = clients.current();
                let listed = user_id
                    .as_deref()
                    .is_some_and(|key| list.by_z85(key).is_some());
                if !listed {
                    peer = user_id
                        .as_deref()
                        .and_then(parse_peer_user_id)
                        .filter(|id| self.members.as_ref().is_some_and(|keys| keys.contains(*id)));
                    if peer.is_none() {
                        log::debug!("request from an unlisted client key dropped");
                        return;
                    }
                }
                Some(list)
            }
        };
        let (envelope, body) = split_envelope(frames);
        let [body] = body.as_slice() else {
            let encoding = body
                .first()
                .map_or(Encoding::MsgPack, |first| detect_encoding(first));
            let error = RequestError {
                encoding,
                error: ErrorInfo::new(
                    ErrorCode::BadRequest,
                    format!(
                        "expected one body frame after the envelope, got {}",
                        body.len()
                    ),
                ),
            };
            self.record_refused(error.error.code, received_at);
            self.send(envelope, encode_request_error(&error));
            return;
        };
        let parsed = match parse_request(body) {
            Ok(parsed) => parsed,
            Err(error) => {
                log::debug!("bad request: {}", error.error.message);
                self.record_refused(error.error.code, received_at);
                self.send(envelope, encode_request_error(&error));
                return;
            }
        };
        // A member's connection: `stats` and `status` only, decided before anything else.
        if let Some(id) = peer {
            let head = parsed.head();
            if !head.is_some_and(|head| matches!(head.intent, Intent::Stats | Intent::Status)) {
                log::debug!("node {id}: only stats and status are open to a member's key");
                let error = ErrorInfo::new(
                    ErrorCode::Forbidden,
                    "a member's key may only ask for stats and status on the client port",
                );
                let body = match head {
                    Some(head) => encode_reply(
                        &Reply::Outcome {
                            outcome: Outcome::Failed(error),
                            leader: None,
                        },
                        head.version,
                        parsed.encoding(),
                    ),
                    None => encode_request_error(&RequestError {
                        encoding: parsed.encoding(),
                        error,
                    }),
                };
                self.send(envelope, body);
                return;
            }
        }
        // Rights first (PROTOCOL.md §11): on what the request names, before its other fields
        // are validated. One too malformed to name anything is left to the validation.
        let client_list = list.as_ref().filter(|_| peer.is_none());
        if let (Some(list), Some(user_id), Some(head)) = (client_list, &user_id, parsed.head()) {
            match list.access_intent(user_id, head.intent) {
                Access::Allowed(_) => {}
                Access::Forbidden(client, refusal) => {
                    log::debug!("client {}: {refusal}", client.name);
                    let reply = Reply::Outcome {
                        outcome: Outcome::Failed(refusal.into()),
                        leader: None,
                    };
                    let body = encode_reply(&reply, head.version, parsed.encoding());
                    self.record_refused(ErrorCode::Forbidden, received_at);
                    self.send(envelope, body);
                    return;
                }
                Access::Unlisted => return,
            }
        }
        let encoding = parsed.encoding();
        match parsed.validate(&self.limits) {
            Ok(request) => {
                let ticket = Ticket(self.next_ticket);
                self.next_ticket += 1;
                log::trace!("request {ticket:?}: {request:?}");
                self.pending.insert(
                    ticket,
                    Pending {
                        envelope,
                        version: request.version,
                        encoding,
                        kind: request_type(&request.operation),
                        received_at,
                    },
                );
                let forwarded = ClientRequest {
                    ticket,
                    request,
                    received_at,
                };
                // Blocks only while the node loop's channel is full: backpressure, bounded
                // by ZeroMQ's receive queue behind us.
                if self.events.send(E::from(forwarded)).is_err() {
                    self.send_reply(ticket, &shutting_down());
                }
            }
            Err(error) => {
                log::debug!("bad request: {}", error.error.message);
                self.record_refused(error.error.code, received_at);
                self.send(envelope, encode_request_error(&error));
            }
        }
    }

    /// A request answered here, before it was understood well enough to have a type.
    fn record_refused(&mut self, code: ErrorCode, received_at: Instant) {
        if let Some(recorder) = &mut self.recorder {
            recorder.record(INVALID_TYPE, code.as_str(), received_at);
        }
    }

    fn send_reply(&mut self, ticket: Ticket, reply: &Reply) {
        let Some(pending) = self.pending.remove(&ticket) else {
            // Broken invariant in the node loop (a second reply); the client already has one.
            log::error!("reply to unknown request {ticket:?} dropped");
            return;
        };
        let body = encode_reply(reply, pending.version, pending.encoding);
        self.send(pending.envelope, body);
        if let Some(recorder) = &mut self.recorder {
            recorder.record(pending.kind, outcome_label(reply), pending.received_at);
        }
    }

    fn send(&self, mut frames: Frames, body: Vec<u8>) {
        frames.push(body);
        match self.router.send_multipart(frames, zmq::DONTWAIT) {
            Ok(()) => {}
            // The client is gone or not reading (its queue is full): ROUTER drops the reply.
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => {
                log::debug!("reply dropped: client unreachable")
            }
            Err(error) => log::warn!("reply not sent: {error}"),
        }
    }

    fn finish(&mut self) {
        let tickets: Vec<Ticket> = self.pending.keys().copied().collect();
        for ticket in tickets {
            self.send_reply(ticket, &shutting_down());
        }
        if let Err(error) = self.router.set_linger(CLOSE_LINGER_MS) {
            log::debug!("client ROUTER linger: {error}");
        }
    }
}

fn shutting_down() -> Reply {
    Reply::Outcome {
        outcome: Outcome::Failed(ErrorInfo::new(
            ErrorCode::ShuttingDown,
            "the node is shutting down; retry on another node",
        )),
        leader: None,
    }
}

/// One whole message from the ROUTER without waiting, and, when `keyed`, the ZAP user id
/// libzmq attached to it (the Z85 public key the connection presented).
fn recv_frames(router: &zmq::Socket, keyed: bool) -> Result<(Frames, Option<String>), zmq::Error> {
    if !keyed {
        return router
            .recv_multipart(zmq::DONTWAIT)
            .map(|frames| (frames, None));
    }
    let mut frames = Vec::new();
    loop {
        let flags = if frames.is_empty() { zmq::DONTWAIT } else { 0 };
        let mut message = router.recv_msg(flags)?;
        let more = message.get_more();
        if !more {
            let user_id = message.gets("User-Id").map(str::to_owned);
            frames.push(message.to_vec());
            return Ok((frames, user_id));
        }
        frames.push(message.to_vec());
    }
}

/// Splits a ROUTER message into (envelope, body frames). See the module docs.
pub fn split_envelope(mut frames: Frames) -> (Frames, Frames) {
    let envelope_length = frames
        .iter()
        .skip(1)
        .position(|frame| frame.is_empty())
        .map_or(1, |delimiter| delimiter + 2);
    let body = frames.split_off(envelope_length.min(frames.len()));
    (frames, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Frames {
        parts.iter().map(|part| part.to_vec()).collect()
    }

    #[test]
    fn envelopes_split_as_req_dealer_and_proxies_send_them() {
        let cases: Vec<(Frames, Frames, Frames)> = vec![
            // REQ: identity, delimiter, body.
            (
                frames(&[b"id", b"", b"body"]),
                frames(&[b"id", b""]),
                frames(&[b"body"]),
            ),
            // Bare DEALER: identity, body.
            (
                frames(&[b"id", b"body"]),
                frames(&[b"id"]),
                frames(&[b"body"]),
            ),
            // Through a proxy: two identities, delimiter, body.
            (
                frames(&[b"id1", b"id2", b"", b"body"]),
                frames(&[b"id1", b"id2", b""]),
                frames(&[b"body"]),
            ),
            // Two body frames: both kept, so the caller can refuse them.
            (
                frames(&[b"id", b"", b"a", b"b"]),
                frames(&[b"id", b""]),
                frames(&[b"a", b"b"]),
            ),
            (
                frames(&[b"id", b"a", b"b"]),
                frames(&[b"id"]),
                frames(&[b"a", b"b"]),
            ),
            // No body at all.
            (frames(&[b"id", b""]), frames(&[b"id", b""]), frames(&[])),
            (frames(&[b"id"]), frames(&[b"id"]), frames(&[])),
            // An empty identity is still the identity, not a delimiter.
            (
                frames(&[b"", b"", b"body"]),
                frames(&[b"", b""]),
                frames(&[b"body"]),
            ),
        ];
        for (number, (input, envelope, body)) in cases.into_iter().enumerate() {
            assert_eq!(split_envelope(input), (envelope, body), "case {number}");
        }
    }
}
