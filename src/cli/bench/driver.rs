//! The load generator: ONE thread driving every simulated client through `zmq::poll`.
//!
//! Why one thread: the nodes and the benchmark share the machine's cores, so every cycle the
//! benchmark burns is taken from the cluster it measures. A thread and a ZeroMQ context per
//! simulated client would cost a context switch per reply and an I/O thread each; here all
//! clients share one context (one I/O thread) and one poll loop.
//!
//! Each simulated client is closed-loop: one call in flight, the next one begun when the last
//! ended. It has its own `client_id` and numbers its writes with `seq` (PROTOCOL.md §5); a
//! call is encoded once, when it begins, so every retry carries the same `(client_id, seq)`.
//! The retry rules are the client library's ([`crate::client::call`], one state machine per
//! simulated client); this module owns the sockets, the clock and the bookkeeping around
//! them.
//!
//! Sockets: with [`Connections::PerClient`] (the default) each client has its own DEALER
//! per node it talks to, so the node sees one TCP connection per client, as with real
//! clients; with [`Connections::Shared`] all clients share one DEALER per node. Either way a
//! request goes out as `[tag, "", body]`, where the 8-byte tag is the client's index and its
//! call number, and the node echoes the envelope, so a reply finds its client and a reply to
//! an earlier call is recognised as stale.
//!
//! Dropped connections: each DEALER has a socket monitor ([`crate::transport::monitor`]) in
//! the same poll, and a connection that drops or is refused is passed to the state machine
//! of every client using that socket, as the client library does: a call waiting on a dead
//! node moves on at once. Monitors cost two more sockets per DEALER, and ZeroMQ allows 1023
//! per context; a run that would need more (per-client connections for more than about a
//! hundred clients on three nodes) goes without them, its clients leaving a dead node after
//! the attempt timeout. A node that is silent but connected (stopped) is hedged around by
//! the state machine after `Timing::hedge_after`: its hedges are sends like any other, and a
//! reply from any node the call was sent to finds the client by its tag.
//!
//! What it must not do: sleep (it waits only in `zmq::poll`, with the nearest deadline as
//! timeout), keep a client's second call in flight, or count a call that ended outside the
//! measured window.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::process::{own_cpu, process_cpu, process_rss_kib};
use super::report::{
    progress_line, CallResult, CpuTime, Finish, OperationKind, ProcessReport, Recorder, Verdict,
};
use crate::client::call::{self, CallMachine, SendFailure, Timing};
use crate::client::{ClientCurve, NodeAddress, CONNECTION_EVENTS, REPLY_BYTES_MAX};
use crate::protocol::{
    decode_reply, encode_request, Encoding, ErrorCode, FetchOptions, LeaderInfo, Operation,
    Outcome, Payload, Receipts, Reply, Request, SessionKey,
};
use crate::transport::monitor::{EventKind, Monitor};

/// Leader hints may name nodes the benchmark was not told about; it learns at most this many.
const NODES_MAX: usize = 64;

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Sockets per process are limited by ZeroMQ (1023 by default); with one DEALER per client
/// and node, this many clients stay below it even if each talks to three nodes.
pub(super) const CLIENTS_MAX: usize = 300;

/// ZeroMQ's default limit of sockets per context, less a margin: a run monitors its
/// connections only if a DEALER and its monitor's two sockets per client group and node fit.
const SOCKETS_MAX: usize = 1000;

/// With an [`Observer`], the longest the loop waits before looking at its stop flag.
const OBSERVER_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How simulated clients share connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Connections {
    /// One DEALER (one TCP connection) per client and node, as separate client processes.
    PerClient,
    /// One DEALER per node for all clients: cheaper for the benchmark, kinder to the node.
    Shared,
}

/// A reply as a simulated client's state machine sees it.
pub(super) type Answer = call::Answer<Verdict>;
type Step = call::Step<Verdict>;

/// What one simulated client does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// PUTs `Plan::message` to `topic`, call after call.
    Producer { topic: String },
    /// GETs from `topic`; stops at the first EMPTY when `until_empty`, else pauses
    /// `Plan::empty_pause` and tries again.
    Consumer { topic: String, until_empty: bool },
}

impl Role {
    fn kind(&self) -> OperationKind {
        match self {
            Role::Producer { .. } => OperationKind::Put,
            Role::Consumer { .. } => OperationKind::Get,
        }
    }
}

/// One run of the driver.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    /// One entry per simulated client.
    pub roles: Vec<Role>,
    /// What producers put.
    pub message: Payload,
    /// Stop measuring (and abandon calls in flight) after this long; `None`: run until every
    /// client is done (a PUT count spent, consumers drained).
    pub measure_for: Option<Duration>,
    /// Producers together begin at most this many PUTs.
    pub put_count: Option<u64>,
    /// Calls that end before this much time has passed are not counted.
    pub warmup: Duration,
    pub timing: Timing,
    pub empty_pause: Duration,
    pub connections: Connections,
    /// Redraw a progress line on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Processes whose CPU time over the measured phase (and RSS at its end) is reported.
    pub watch_pids: Vec<u32>,
    /// Batch PUTs, batch / leased / blocking GETs and ACKs (PROTOCOL.md §8–§10); the default
    /// is one plain PUT or GET per call.
    pub batching: Batching,
}

/// How producers and consumers use the v2 delivery options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Batching {
    /// Each PUT is a batch PUT of this many messages (`put_count` still counts messages).
    pub put_batch: Option<u32>,
    /// The options of every GET; all `None`: a plain GET.
    pub fetch: FetchOptions,
    /// Consumers ACK the receipts of their leased GETs.
    pub ack: bool,
    /// With `ack`: how a consumer's ACKs relate to its GETs.
    pub ack_mode: AckMode,
}

/// How a consumer with [`Batching::ack`] sends its ACKs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum AckMode {
    /// Each consumer has an acker of its own (its own `client_id` and connection): the ACK
    /// of batch k is in flight while the consumer's GET of batch k+1 is, and the consumer
    /// begins GET k+2 only once ACK k has ended, so at most one batch waits unacknowledged
    /// beside the one being acknowledged.
    #[default]
    Pipelined,
    /// The consumer ACKs a batch's receipts before its next GET: one call in flight.
    Inline,
}

/// What a run measured.
#[derive(Debug)]
pub(super) struct RunResult {
    pub recorder: Recorder,
    /// The measured phase: from the end of the warmup to the end of the run (duration mode)
    /// or to the last call's end (count and drain modes).
    pub elapsed: Duration,
    pub bench_cpu: CpuTime,
    pub watched: Vec<ProcessReport>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum DriverError {
    #[error("{node}: ZeroMQ: {source}")]
    Socket {
        node: NodeAddress,
        source: zmq::Error,
    },
    #[error("ZeroMQ poll: {0}")]
    Poll(zmq::Error),
}

/// Watches a run from another thread (the failover benchmark): every acknowledged PUT is
/// reported as it happens, and the run ends soon after `stop` is set.
#[derive(Clone, Debug)]
pub(super) struct Observer {
    pub stop: Arc<AtomicBool>,
    /// Unbounded, so the driver never blocks on it; the observer drains it as it goes.
    pub acks: crossbeam_channel::Sender<Ack>,
}

/// One acknowledged PUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ack {
    /// When its call began.
    pub begun: Instant,
    /// When the acknowledgement arrived.
    pub at: Instant,
    /// The node that acknowledged it (an index into the run's node list).
    pub node: usize,
}

struct SimulatedClient {
    role: Role,
    machine: CallMachine,
    client_id: String,
    seq: u64,
    /// Numbers this client's calls; the low half of the tag.
    call_number: u32,
    /// The current call, encoded once.
    body: Vec<u8>,
    /// Which connection group's sockets it uses.
    group: usize,
    /// After EMPTY in a mixed run: the next GET waits until then.
    idle_until: Option<Instant>,
    /// The node of the last reply handed to the machine.
    answered_by: usize,
    done: bool,
    /// What the current call is.
    kind: OperationKind,
    /// Receipts of leased messages not yet in an ACK (with `Batching::ack`): the
    /// consumer's own (inline), or its acker's (pipelined).
    receipts: Vec<String>,
    /// How many receipts the current ACK names.
    acking: usize,
    /// With [`AckMode::Pipelined`]: who acknowledges for whom.
    pairing: Pairing,
    /// A pipelined consumer whose previous batch still waits for its acker: its next GET
    /// begins when the acker takes that batch.
    held: bool,
}

/// The link between a pipelined consumer and its acker (both simulated clients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pairing {
    Alone,
    /// A consumer whose receipts go to this client.
    AckedBy(usize),
    /// The acker of this consumer.
    AcksFor(usize),
}

/// `tag = client index (u32, big-endian) | call number (u32, big-endian)`.
fn tag(client: usize, call_number: u32) -> [u8; 8] {
    let mut tag = [0u8; 8];
    tag[..4].copy_from_slice(&(client as u32).to_be_bytes());
    tag[4..].copy_from_slice(&call_number.to_be_bytes());
    tag
}

fn parse_tag(frame: &[u8]) -> Option<(usize, u32)> {
    let bytes: [u8; 8] = frame.try_into().ok()?;
    let client = u32::from_be_bytes(bytes[..4].try_into().expect("4 of 8 bytes"));
    let call = u32::from_be_bytes(bytes[4..].try_into().expect("4 of 8 bytes"));
    Some((client as usize, call))
}

/// Turns a reply into what the client machine acts on; a leader hint becomes a node index
/// through `resolve`.
pub(super) fn classify(reply: Reply, resolve: impl FnOnce(&LeaderInfo) -> Option<usize>) -> Answer {
    match reply {
        Reply::Outcome { outcome, leader } => match outcome {
            Outcome::Done => Answer::Decisive(Verdict::Done),
            Outcome::Message(_) => Answer::Decisive(Verdict::Message),
            Outcome::Delivered(_) => Answer::Decisive(Verdict::Batch(1)),
            Outcome::Messages(messages) => {
                Answer::Decisive(Verdict::Batch(count_of(messages.len())))
            }
            Outcome::Deliveries(deliveries) => {
                Answer::Decisive(Verdict::Batch(count_of(deliveries.len())))
            }
            Outcome::Count(count) => {
                Answer::Decisive(Verdict::Batch(u32::try_from(count).unwrap_or(u32::MAX)))
            }
            // The receipts acknowledged are the ones sent less these: the caller knows.
            Outcome::Stale(stale) => Answer::Decisive(Verdict::Batch(count_of(stale.len()))),
            Outcome::Topics(_) | Outcome::TopicDetails(_) | Outcome::Members(_) => {
                Answer::Decisive(Verdict::Unexpected)
            }
            Outcome::Failed(info) if call::is_retryable(info.code) => Answer::Retry {
                code: info.code,
                hint: leader.as_ref().and_then(resolve),
            },
            Outcome::Failed(info) if info.code == ErrorCode::Empty => {
                Answer::Decisive(Verdict::Empty)
            }
            Outcome::Failed(info) => Answer::Decisive(Verdict::Failed(info.code)),
        },
        Reply::Status(_) | Reply::Stats(_) => Answer::Decisive(Verdict::Unexpected),
    }
}

fn count_of(length: usize) -> u32 {
    u32::try_from(length).unwrap_or(u32::MAX)
}

/// Runs a plan against `nodes`; the first call of every client goes to `first_node` (the
/// leader, when the caller found it). `at_window_edge` is called when the measured window
/// opens (after the warmup) and when it closes, so the caller can read counters (the nodes'
/// WAL statistics) over exactly the window the figures cover.
#[cfg(test)]
pub(super) fn run(
    plan: &Plan,
    nodes: Vec<NodeAddress>,
    first_node: usize,
    at_window_edge: &mut dyn FnMut(),
) -> Result<RunResult, DriverError> {
    run_keyed(plan, nodes, first_node, None, at_window_edge)
}

/// As [`run`]; with `curve`, every DEALER is a CURVE client (`--key-file`).
pub(super) fn run_keyed(
    plan: &Plan,
    nodes: Vec<NodeAddress>,
    first_node: usize,
    curve: Option<ClientCurve>,
    at_window_edge: &mut dyn FnMut(),
) -> Result<RunResult, DriverError> {
    let mut driver = Driver::new(plan, nodes, first_node);
    driver.curve = curve;
    driver.run(at_window_edge)
}

/// As [`run`], reporting each acknowledged PUT to `observer` and stopping when it says so.
pub(super) fn run_observed(
    plan: &Plan,
    nodes: Vec<NodeAddress>,
    first_node: usize,
    observer: Observer,
) -> Result<RunResult, DriverError> {
    let mut driver = Driver::new(plan, nodes, first_node);
    driver.observer = Some(observer);
    driver.run(&mut || {})
}

struct Driver<'a> {
    // Sockets before the context: they must close first.
    /// `sockets[group][node]`, created on first use.
    sockets: Vec<Vec<Option<zmq::Socket>>>,
    /// `monitors[group][node]` watches `sockets[group][node]`'s connection. Invariant: `Some`
    /// only beside an open socket.
    monitors: Vec<Vec<Option<Monitor>>>,
    /// Whether sockets get monitors: only if they all fit in the context (see the module
    /// docs), and only towards the nodes the run started with.
    monitored_nodes: usize,
    context: zmq::Context,
    plan: &'a Plan,
    nodes: Vec<NodeAddress>,
    /// CURVE keys (`--key-file`), or plain.
    curve: Option<ClientCurve>,
    clients: Vec<SimulatedClient>,
    recorder: Recorder,
    puts_begun: u64,
    measure_from: Instant,
    /// When the last call ended, for count and drain modes.
    last_finish: Option<Instant>,
    observer: Option<Observer>,
}

impl<'a> Driver<'a> {
    fn new(plan: &'a Plan, nodes: Vec<NodeAddress>, first_node: usize) -> Driver<'a> {
        let run_id: u32 = rand::random();
        // Pipelined ACKs: one acker per consumer, after all the plan's roles.
        let mut pairings = vec![Pairing::Alone; plan.roles.len()];
        let mut roles = plan.roles.clone();
        if plan.batching.ack && plan.batching.ack_mode == AckMode::Pipelined {
            for (consumer, role) in plan.roles.iter().enumerate() {
                if let Role::Consumer { .. } = role {
                    pairings[consumer] = Pairing::AckedBy(roles.len());
                    pairings.push(Pairing::AcksFor(consumer));
                    roles.push(role.clone());
                }
            }
        }
        let groups = match plan.connections {
            Connections::PerClient => roles.len(),
            Connections::Shared => 1,
        };
        let clients = roles
            .iter()
            .zip(pairings)
            .enumerate()
            .map(|(index, (role, pairing))| SimulatedClient {
                role: role.clone(),
                machine: CallMachine::new(plan.timing, first_node),
                client_id: format!("bench-{run_id:08x}-{index}"),
                seq: 0,
                call_number: 0,
                body: Vec::new(),
                group: match plan.connections {
                    Connections::PerClient => index,
                    Connections::Shared => 0,
                },
                idle_until: None,
                answered_by: first_node,
                done: false,
                kind: match pairing {
                    Pairing::AcksFor(_) => OperationKind::Ack,
                    _ => role.kind(),
                },
                receipts: Vec::new(),
                acking: 0,
                pairing,
                held: false,
            })
            .collect();
        let monitored_nodes = if groups * nodes.len() * 3 <= SOCKETS_MAX {
            nodes.len()
        } else {
            0
        };
        Driver {
            sockets: (0..groups).map(|_| Vec::new()).collect(),
            monitors: (0..groups).map(|_| Vec::new()).collect(),
            monitored_nodes,
            context: zmq::Context::new(),
            plan,
            nodes,
            curve: None,
            clients,
            recorder: Recorder::new(),
            puts_begun: 0,
            measure_from: Instant::now() + plan.warmup,
            last_finish: None,
            observer: None,
        }
    }

    fn run(mut self, at_window_edge: &mut dyn FnMut()) -> Result<RunResult, DriverError> {
        let started = Instant::now();
        self.measure_from = started + self.plan.warmup;
        let end = self.plan.measure_for.map(|time| self.measure_from + time);
        let progress = self.plan.progress && std::io::stderr().is_terminal();
        let mut next_progress = started + PROGRESS_INTERVAL;
        let mut last_progress = started;
        let mut measuring = self.plan.warmup.is_zero();
        if measuring {
            at_window_edge();
        }
        let mut cpu_at_start = (own_cpu(), self.watched_cpu());

        for client in 0..self.clients.len() {
            self.begin_next(client, started)?;
        }
        loop {
            let now = Instant::now();
            if !measuring && now >= self.measure_from {
                measuring = true;
                at_window_edge();
                cpu_at_start = (own_cpu(), self.watched_cpu());
                self.recorder = Recorder::new();
            }
            if end.is_some_and(|end| now >= end) {
                break;
            }
            if self.clients.iter().all(|client| client.done) {
                break;
            }
            if let Some(observer) = &self.observer {
                if observer.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            if progress && now >= next_progress {
                let intervals = self.recorder.take_intervals();
                let line = progress_line(
                    now.saturating_duration_since(started),
                    &intervals,
                    now.saturating_duration_since(last_progress),
                    self.recorder.error_count(),
                );
                eprint!("\r{line}\x1b[K");
                last_progress = now;
                next_progress = now + PROGRESS_INTERVAL;
            }

            let mut wake = end.unwrap_or(now + Duration::from_secs(3600));
            if !measuring {
                wake = wake.min(self.measure_from);
            }
            if progress {
                wake = wake.min(next_progress);
            }
            for client in &self.clients {
                if let Some(at) = client.machine.wake_at() {
                    wake = wake.min(at);
                }
                if let Some(at) = client.idle_until {
                    wake = wake.min(at);
                }
            }
            if self.observer.is_some() {
                wake = wake.min(now + OBSERVER_POLL_INTERVAL);
            }
            let (readable, signalled) = self.poll(wake.saturating_duration_since(now))?;
            let now = Instant::now();
            for (group, node) in readable {
                self.receive(group, node, now)?;
            }
            for (group, node) in signalled {
                self.on_connection_events(group, node, now)?;
            }
            for client in 0..self.clients.len() {
                self.on_time(client, now)?;
            }
        }
        if progress {
            eprint!("\r\x1b[K");
        }
        if measuring {
            at_window_edge();
        }

        let finished = Instant::now();
        let measured_until = match end {
            Some(end) => finished.min(end.max(self.measure_from)),
            None => self.last_finish.unwrap_or(finished),
        };
        let elapsed = measured_until.saturating_duration_since(self.measure_from);
        let (own_start, watched_start) = cpu_at_start;
        let watched = self
            .plan
            .watch_pids
            .iter()
            .zip(watched_start)
            .map(|(&pid, start)| ProcessReport {
                pid,
                cpu: match (process_cpu(pid), start) {
                    (Some(now), Some(start)) => now.minus(start),
                    _ => CpuTime::default(),
                },
                rss_kib: process_rss_kib(pid),
            })
            .collect();
        let mut recorder = Recorder::new();
        std::mem::swap(&mut recorder, &mut self.recorder);
        Ok(RunResult {
            recorder,
            elapsed,
            bench_cpu: own_cpu().minus(own_start),
            watched,
        })
    }

    fn watched_cpu(&self) -> Vec<Option<CpuTime>> {
        self.plan
            .watch_pids
            .iter()
            .map(|&pid| process_cpu(pid))
            .collect()
    }

    /// Waits up to `timeout` for replies and connection events; returns the `(group, node)`
    /// of readable sockets, then of monitors with events waiting.
    #[allow(clippy::type_complexity)]
    fn poll(
        &self,
        timeout: Duration,
    ) -> Result<(Vec<(usize, usize)>, Vec<(usize, usize)>), DriverError> {
        let mut slots = Vec::new();
        let mut items = Vec::new();
        for (group, sockets) in self.sockets.iter().enumerate() {
            for (node, socket) in sockets.iter().enumerate() {
                if let Some(socket) = socket {
                    slots.push((group, node));
                    items.push(socket.as_poll_item(zmq::POLLIN));
                }
            }
        }
        let sockets_polled = slots.len();
        for (group, monitors) in self.monitors.iter().enumerate() {
            for (node, monitor) in monitors.iter().enumerate() {
                if let Some(monitor) = monitor {
                    slots.push((group, node));
                    items.push(monitor.poll_item());
                }
            }
        }
        // Rounded up, so a wait never ends early and spins. With no item (every client
        // paused), ZeroMQ's poll just waits for the timeout.
        let milliseconds = i64::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i64::MAX);
        match zmq::poll(&mut items, milliseconds) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(error) => return Err(DriverError::Poll(error)),
        }
        let mut readable = Vec::new();
        let mut signalled = Vec::new();
        for (position, (slot, item)) in slots.into_iter().zip(&items).enumerate() {
            if item.is_readable() {
                if position < sockets_polled {
                    readable.push(slot);
                } else {
                    signalled.push(slot);
                }
            }
        }
        Ok((readable, signalled))
    }

    /// Reads the connection events of one socket and passes them to the machine of every
    /// client using it: a connection made, or one dropped or refused (which moves a call
    /// waiting on that node at once).
    fn on_connection_events(
        &mut self,
        group: usize,
        node: usize,
        now: Instant,
    ) -> Result<(), DriverError> {
        loop {
            let Some(monitor) = self.monitors[group].get(node).and_then(Option::as_ref) else {
                return Ok(());
            };
            let event = match monitor.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(()),
                Err(error) => {
                    // The monitor is broken, not the connection: stop watching it.
                    log::debug!("{}: socket monitor: {error}", self.nodes[node]);
                    self.monitors[group][node] = None;
                    return Ok(());
                }
            };
            let clients: Vec<usize> = match self.plan.connections {
                Connections::PerClient => vec![group],
                Connections::Shared => (0..self.clients.len()).collect(),
            };
            let node_count = self.nodes.len();
            match event.kind {
                EventKind::Connected => {
                    for client in clients {
                        self.clients[client].machine.on_connection_made(node);
                    }
                }
                EventKind::Disconnected | EventKind::ConnectRetried => {
                    for client in clients {
                        let step = self.clients[client]
                            .machine
                            .on_connection_lost(now, node, node_count);
                        self.act(client, step, now)?;
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads every reply waiting on one socket and hands each to its client.
    fn receive(&mut self, group: usize, node: usize, now: Instant) -> Result<(), DriverError> {
        loop {
            let Some(socket) = self.sockets[group].get(node).and_then(Option::as_ref) else {
                return Ok(());
            };
            let frames = match socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(()),
                Err(source) => {
                    return Err(DriverError::Socket {
                        node: self.nodes[node].clone(),
                        source,
                    })
                }
            };
            let [tag_frame, empty, body] = frames.as_slice() else {
                log::debug!(
                    "{}: dropped a reply that is not [tag, \"\", body]",
                    self.nodes[node]
                );
                continue;
            };
            let Some((client, call_number)) = parse_tag(tag_frame).filter(|_| empty.is_empty())
            else {
                log::debug!("{}: dropped a reply with a bad tag", self.nodes[node]);
                continue;
            };
            let current = self.clients.get(client).is_some_and(|simulated| {
                simulated.call_number == call_number
                    && simulated.machine.is_busy()
                    && simulated.group == group
            });
            if !current {
                continue; // A late reply to a call that already ended.
            }
            let answer = match decode_reply(body) {
                Ok(reply) => {
                    let simulated = &self.clients[client];
                    let acking = simulated.kind == OperationKind::Ack;
                    let sent = simulated.acking;
                    if self.plan.batching.ack && !acking {
                        if let Reply::Outcome { outcome, .. } = &reply {
                            let receipts = match outcome {
                                Outcome::Delivered(delivery) => vec![delivery.receipt.clone()],
                                Outcome::Deliveries(deliveries) => deliveries
                                    .iter()
                                    .map(|delivery| delivery.receipt.clone())
                                    .collect(),
                                _ => Vec::new(),
                            };
                            let holder = match simulated.pairing {
                                Pairing::AckedBy(acker) => acker,
                                _ => client,
                            };
                            self.clients[holder].receipts.extend(receipts);
                        }
                    }
                    match classify(reply, |leader| self.learn(leader)) {
                        Answer::Decisive(Verdict::Batch(stale)) if acking => {
                            Answer::Decisive(Verdict::Acked {
                                acked: count_of(sent).saturating_sub(stale),
                                stale,
                            })
                        }
                        answer => answer,
                    }
                }
                Err(error) => {
                    log::debug!("{}: {error}", self.nodes[node]);
                    Answer::Decisive(Verdict::Unexpected)
                }
            };
            let node_count = self.nodes.len();
            self.clients[client].answered_by = node;
            let step = self.clients[client]
                .machine
                .on_answer(now, node, answer, node_count);
            self.act(client, step, now)?;
        }
    }

    /// Fires the client's timer if due, and begins its next call after an EMPTY pause.
    fn on_time(&mut self, client: usize, now: Instant) -> Result<(), DriverError> {
        let simulated = &mut self.clients[client];
        if simulated.done {
            return Ok(());
        }
        if let Some(at) = simulated.idle_until {
            if now >= at {
                simulated.idle_until = None;
                return self.begin_next(client, now);
            }
            return Ok(());
        }
        if simulated.machine.wake_at().is_some_and(|at| now >= at) {
            let node_count = self.nodes.len();
            let step = self.clients[client].machine.on_timer(now, node_count);
            self.act(client, step, now)?;
        }
        Ok(())
    }

    fn act(&mut self, client: usize, mut step: Step, now: Instant) -> Result<(), DriverError> {
        loop {
            match step {
                Step::Wait => return Ok(()),
                Step::Send { node, retry } => {
                    if let Some(reason) = retry {
                        if now >= self.measure_from {
                            let kind = self.clients[client].kind;
                            self.recorder.record_retry(kind, reason);
                        }
                    }
                    if self.send(client, node)? {
                        return Ok(());
                    }
                    let node_count = self.nodes.len();
                    step = self.clients[client].machine.on_send_failed(
                        now,
                        node,
                        SendFailure::QueueFull,
                        node_count,
                    );
                }
                Step::Finished(finish) => return self.on_finish(client, finish, now),
            }
        }
    }

    fn on_finish(
        &mut self,
        client: usize,
        finish: Finish,
        now: Instant,
    ) -> Result<(), DriverError> {
        let kind = self.clients[client].kind;
        if let (Some(observer), OperationKind::Put, CallResult::Answered(Verdict::Done)) =
            (&self.observer, kind, finish.result)
        {
            // Unbounded: never blocks. A receiver that has gone only ends the reports.
            let _ = observer.acks.send(Ack {
                begun: now.checked_sub(finish.latency).unwrap_or(now),
                at: now,
                node: self.clients[client].answered_by,
            });
        }
        if now >= self.measure_from {
            self.recorder.record(kind, finish);
            self.last_finish = Some(now);
        }
        let empty = matches!(finish.result, CallResult::Answered(Verdict::Empty));
        let simulated = &mut self.clients[client];
        if let (Role::Consumer { until_empty, .. }, true, false) = (
            &simulated.role,
            empty,
            matches!(simulated.pairing, Pairing::AcksFor(_)),
        ) {
            if *until_empty {
                simulated.done = true;
                self.close_group_if_done(client);
                if let Pairing::AckedBy(acker) = self.clients[client].pairing {
                    if !self.clients[acker].machine.is_busy() {
                        return self.begin_next(acker, now);
                    }
                }
                return Ok(());
            }
            simulated.idle_until = Some(now + self.plan.empty_pause);
            return Ok(());
        }
        self.begin_next(client, now)
    }

    /// Encodes the client's next call and sends its first attempt, unless the client is out
    /// of work.
    fn begin_next(&mut self, client: usize, now: Instant) -> Result<(), DriverError> {
        match self.clients[client].pairing {
            Pairing::AcksFor(consumer) => return self.begin_ack(client, consumer, now),
            Pairing::AckedBy(acker) if !self.clients[acker].receipts.is_empty() => {
                if self.clients[acker].machine.is_busy() {
                    // The previous batch waits for the acker: so does the next GET.
                    self.clients[client].held = true;
                    return Ok(());
                }
                self.begin_ack(acker, client, now)?;
            }
            _ => {}
        }
        let plan = self.plan;
        let simulated = &mut self.clients[client];
        let batching = &plan.batching;
        let operation = match &simulated.role {
            Role::Producer { topic } => {
                if plan.put_count.is_some_and(|count| self.puts_begun >= count) {
                    simulated.done = true;
                    self.close_group_if_done(client);
                    return Ok(());
                }
                simulated.kind = OperationKind::Put;
                match batching.put_batch {
                    Some(batch) => {
                        let left = plan
                            .put_count
                            .map_or(u64::MAX, |count| count - self.puts_begun);
                        let size = u64::from(batch).min(left);
                        self.puts_begun += size;
                        Operation::PutBatch {
                            topic: topic.clone(),
                            messages: vec![plan.message.clone(); size as usize],
                        }
                    }
                    None => {
                        self.puts_begun += 1;
                        Operation::Put {
                            topic: topic.clone(),
                            message: plan.message.clone(),
                        }
                    }
                }
            }
            Role::Consumer { topic, .. } if batching.ack && !simulated.receipts.is_empty() => {
                simulated.kind = OperationKind::Ack;
                let receipts = std::mem::take(&mut simulated.receipts);
                simulated.acking = receipts.len();
                Operation::Ack {
                    topic: topic.clone(),
                    receipts: Receipts::Many(receipts),
                }
            }
            Role::Consumer { topic, .. } => {
                simulated.kind = OperationKind::Get;
                if batching.fetch == FetchOptions::default() {
                    Operation::Get {
                        topic: topic.clone(),
                    }
                } else {
                    Operation::Fetch {
                        topic: topic.clone(),
                        options: batching.fetch,
                    }
                }
            }
        };
        self.begin_call(client, operation, now)
    }

    /// A pipelined acker's next step: an ACK of every receipt its consumer handed it, then
    /// the consumer's held GET, if any; with nothing to ACK it idles, or is done once its
    /// consumer is.
    fn begin_ack(
        &mut self,
        acker: usize,
        consumer: usize,
        now: Instant,
    ) -> Result<(), DriverError> {
        let consumer_done = self.clients[consumer].done;
        let simulated = &mut self.clients[acker];
        if simulated.receipts.is_empty() {
            if consumer_done && !simulated.done {
                simulated.done = true;
                self.close_group_if_done(acker);
            }
            return Ok(());
        }
        let Role::Consumer { topic, .. } = &simulated.role else {
            unreachable!("an acker has its consumer's role");
        };
        let receipts = std::mem::take(&mut simulated.receipts);
        simulated.acking = receipts.len();
        let operation = Operation::Ack {
            topic: topic.clone(),
            receipts: Receipts::Many(receipts),
        };
        self.begin_call(acker, operation, now)?;
        if std::mem::take(&mut self.clients[consumer].held) {
            self.begin_next(consumer, now)?;
        }
        Ok(())
    }

    /// Numbers, encodes and sends the client's next call.
    fn begin_call(
        &mut self,
        client: usize,
        operation: Operation,
        now: Instant,
    ) -> Result<(), DriverError> {
        let simulated = &mut self.clients[client];
        simulated.seq += 1;
        simulated.call_number = simulated.call_number.wrapping_add(1);
        simulated.body = encode_request(
            &Request {
                version: 2,
                session: Some(SessionKey {
                    client_id: simulated.client_id.clone(),
                    seq: simulated.seq,
                }),
                operation,
            },
            Encoding::MsgPack,
        );
        let step = simulated.machine.begin(now, self.nodes.len());
        self.act(client, step, now)
    }

    /// Per-client sockets of a client that is done are closed, so the poll set shrinks.
    fn close_group_if_done(&mut self, client: usize) {
        if self.plan.connections == Connections::PerClient {
            let group = self.clients[client].group;
            self.sockets[group].clear();
            self.monitors[group].clear();
        }
    }

    /// Queues the client's current call for `node` without blocking; `false` when the queue
    /// is full (a node that takes nothing): the socket is dropped with the requests it never
    /// took, and the attempt is lost.
    fn send(&mut self, client: usize, node: usize) -> Result<bool, DriverError> {
        let group = self.clients[client].group;
        let frame_tag = tag(client, self.clients[client].call_number);
        self.open_socket(group, node)?;
        let socket = self.sockets[group][node]
            .as_ref()
            .expect("open_socket leaves the socket open");
        let frames: [&[u8]; 3] = [&frame_tag, &[], &self.clients[client].body];
        match socket.send_multipart(frames, zmq::DONTWAIT) {
            Ok(()) => Ok(true),
            Err(zmq::Error::EAGAIN) => {
                log::debug!("{}: send queue full; dropping the socket", self.nodes[node]);
                self.sockets[group][node] = None;
                self.monitors[group][node] = None;
                Ok(false)
            }
            Err(source) => Err(DriverError::Socket {
                node: self.nodes[node].clone(),
                source,
            }),
        }
    }

    /// Creates and connects the DEALER of `group` towards `node` unless it exists.
    fn open_socket(&mut self, group: usize, node: usize) -> Result<(), DriverError> {
        let sockets = &mut self.sockets[group];
        if sockets.len() <= node {
            sockets.resize_with(node + 1, || None);
        }
        if sockets[node].is_none() {
            let address = &self.nodes[node];
            let fail = |source| DriverError::Socket {
                node: address.clone(),
                source,
            };
            let socket = self.context.socket(zmq::DEALER).map_err(fail)?;
            socket.set_linger(0).map_err(fail)?;
            socket
                .set_maxmsgsize(REPLY_BYTES_MAX as i64)
                .map_err(fail)?;
            if let Some(curve) = &self.curve {
                curve.configure(&socket, address).map_err(fail)?;
            }
            let monitors = &mut self.monitors[group];
            if monitors.len() <= node {
                monitors.resize_with(node + 1, || None);
            }
            // Attached before connecting, so no event is missed; without it the clients still
            // work, leaving a dead node after the attempt timeout.
            if node < self.monitored_nodes {
                monitors[node] = match Monitor::attach(&self.context, &socket, &CONNECTION_EVENTS) {
                    Ok(monitor) => Some(monitor),
                    Err(error) => {
                        log::debug!("{address}: no socket monitor: {error}");
                        None
                    }
                };
            }
            socket.connect(&address.endpoint()).map_err(fail)?;
            sockets[node] = Some(socket);
        }
        Ok(())
    }

    /// The index of the node a leader hint names, learning its address if new.
    fn learn(&mut self, leader: &LeaderInfo) -> Option<usize> {
        let address = NodeAddress::new(leader.ip.clone(), leader.port).ok()?;
        if let Some(index) = self.nodes.iter().position(|known| *known == address) {
            return Some(index);
        }
        if self.nodes.len() >= NODES_MAX {
            return None;
        }
        self.nodes.push(address);
        Some(self.nodes.len() - 1)
    }
}

#[cfg(test)]
mod tests;
