//! A fake rrmq node for the tests of everything that talks to a cluster as a client (the
//! client library, the benchmark): a ROUTER on a free loopback port, run by a thread that
//! answers with replies chosen by a behaviour and records every request it decoded.
//!
//! Why one: the client's retry rules and the benchmark's driver are tested against the
//! same wire behaviour, so a fake that drifts from the real node drifts for both at once
//! and is fixed once. What it must not do: take part in a real cluster; it only answers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::NodeAddress;
use crate::protocol::{
    decode_request, encode_reply, Encoding, ErrorCode, ErrorInfo, LeaderInfo, Limits, Operation,
    Outcome, Payload, PeerProgress, Reply, Request, StatusReport,
};

/// What a fake node sends back: a reply, or raw bytes as the body.
pub(crate) enum Answer {
    Reply(Reply),
    Raw(Vec<u8>),
}

/// Given the number of the request (0-based, in arrival order) and the request, the replies
/// to send now, each with the number of the request whose envelope it goes back with. An
/// empty list leaves the request unanswered (for now: a later call may answer it).
pub(crate) type Behaviour = Box<dyn FnMut(usize, &Request) -> Vec<(usize, Answer)> + Send>;

pub(crate) struct FakeNode {
    pub(crate) address: NodeAddress,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeNode {
    pub(crate) fn start(mut behaviour: Behaviour) -> FakeNode {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::ROUTER).expect("a ROUTER socket");
        socket.set_linger(0).expect("set linger");
        socket.bind("tcp://127.0.0.1:*").expect("bind a free port");
        let endpoint = socket
            .get_last_endpoint()
            .expect("last endpoint")
            .expect("UTF-8 endpoint");
        let port = endpoint
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("a port in the endpoint");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let requests = Arc::clone(&requests);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let _context = context;
                let mut envelopes: Vec<Vec<Vec<u8>>> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if socket.poll(zmq::POLLIN, 20).expect("poll") == 0 {
                        continue;
                    }
                    let mut frames = socket.recv_multipart(0).expect("receive");
                    let body = frames.pop().expect("a body frame");
                    let (request, _) =
                        decode_request(&body, &Limits::default()).expect("a valid request");
                    let number = envelopes.len();
                    envelopes.push(frames);
                    requests.lock().expect("not poisoned").push(request.clone());
                    for (answered, answer) in behaviour(number, &request) {
                        let body = match answer {
                            Answer::Reply(reply) => encode_reply(&reply, 2, Encoding::MsgPack),
                            Answer::Raw(bytes) => bytes,
                        };
                        let mut message = envelopes[answered].clone();
                        message.push(body);
                        socket.send_multipart(message, 0).expect("send");
                    }
                }
            })
        };
        FakeNode {
            address: NodeAddress::new("127.0.0.1", port).expect("valid address"),
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// A node that answers every request with the same outcome.
    pub(crate) fn answering(outcome: Outcome, leader: Option<LeaderInfo>) -> FakeNode {
        FakeNode::start(Box::new(move |number, _| {
            vec![(number, outcome_reply(outcome.clone(), leader.clone()))]
        }))
    }

    pub(crate) fn silent() -> FakeNode {
        FakeNode::start(Box::new(|_, _| Vec::new()))
    }

    /// A follower: `status` as node 1, everything else `NOT_LEADER` naming `leader` (as
    /// node 0).
    pub(crate) fn follower_of(leader: &FakeNode) -> FakeNode {
        let hint = leader.leader_info(0);
        FakeNode::start(Box::new(move |number, request| {
            let reply = match request.operation {
                Operation::Status => Reply::Status(status(false)),
                _ => Reply::Outcome {
                    outcome: Outcome::Failed(ErrorInfo::new(ErrorCode::NotLeader, "follower")),
                    leader: Some(hint.clone()),
                },
            };
            vec![(number, Answer::Reply(reply))]
        }))
    }

    /// A leader (node 0, with node 1 in its progress) that serves topic creation, PUTs and
    /// GETs against a message counter: it starts with `messages`, each PUT adds one, each
    /// GET pops one or answers EMPTY. With `silent_first_seq`, the first attempt of every
    /// call numbered that `seq` is ignored (lost, as far as the client can tell).
    pub(crate) fn leader(silent_first_seq: Option<u64>, messages: u64) -> FakeNode {
        let mut messages_left = messages;
        let mut attempts: BTreeMap<(String, u64), u32> = BTreeMap::new();
        FakeNode::start(Box::new(move |number, request| {
            if let Some(session) = &request.session {
                let count = attempts
                    .entry((session.client_id.clone(), session.seq))
                    .or_default();
                *count += 1;
                if *count == 1 && Some(session.seq) == silent_first_seq {
                    return Vec::new();
                }
            }
            let outcome = match &request.operation {
                Operation::Status => {
                    return vec![(number, Answer::Reply(Reply::Status(status(true))))]
                }
                Operation::CreateTopic { .. } => Outcome::Done,
                Operation::Put { .. } => {
                    messages_left += 1;
                    Outcome::Done
                }
                Operation::Get { .. } if messages_left > 0 => {
                    messages_left -= 1;
                    Outcome::Message(Payload::Text("m".to_string()))
                }
                Operation::Get { .. } => Outcome::Failed(ErrorInfo::new(ErrorCode::Empty, "empty")),
                other => panic!("the fake leader does not serve {other:?}"),
            };
            vec![(number, outcome_reply(outcome, None))]
        }))
    }

    /// Every request decoded so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("not poisoned").clone()
    }

    /// Every session key received, in arrival order (requests without one are not listed).
    pub(crate) fn session_keys(&self) -> Vec<(String, u64)> {
        self.requests()
            .into_iter()
            .filter_map(|request| request.session)
            .map(|session| (session.client_id, session.seq))
            .collect()
    }

    /// Polls until the node has received `count` requests (replies to silence are not
    /// awaited by the client, so the fake may still be decoding).
    pub(crate) fn wait_for_requests(&self, count: usize) -> Vec<Request> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let requests = self.requests();
            if requests.len() >= count || Instant::now() >= deadline {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A leader hint naming this node as node `id`.
    pub(crate) fn leader_info(&self, id: u64) -> LeaderInfo {
        LeaderInfo {
            id,
            ip: self.address.host.clone(),
            port: self.address.port,
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

pub(crate) fn outcome_reply(outcome: Outcome, leader: Option<LeaderInfo>) -> Answer {
    Answer::Reply(Reply::Outcome { outcome, leader })
}

/// The status of the two-node cluster [`FakeNode::leader`] and [`FakeNode::follower_of`]
/// pretend to form.
fn status(leader: bool) -> StatusReport {
    StatusReport {
        role: if leader { "Leader" } else { "Follower" }.to_string(),
        term: 1,
        id: if leader { 0 } else { 1 },
        leader: Some(0),
        commit_index: 0,
        last_applied: 0,
        last_log_index: 0,
        peers: if leader {
            vec![PeerProgress {
                id: 1,
                match_index: 0,
                next_index: 1,
                state: "replicate".to_string(),
            }]
        } else {
            Vec::new()
        },
        fsync: "always".to_string(),
        wal_syncs: 0,
        wal_entries: 0,
        requests: 0,
    }
}
