//! A fake rrmq node for the benchmark's tests: a ROUTER on a free loopback port, answering
//! like a follower (NOT_LEADER with a leader hint) or like a leader (topic creation, status,
//! PUT and GET against a message counter, optionally silent once per call), and recording
//! every `(client_id, seq)` it sees.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::client::NodeAddress;
use crate::protocol::{
    decode_request, encode_reply, Encoding, ErrorCode, ErrorInfo, LeaderInfo, Limits, Operation,
    Outcome, Payload, PeerProgress, Reply, StatusReport,
};

#[derive(Clone)]
pub(super) enum Behaviour {
    /// Answers everything but status NOT_LEADER, naming the leader at this port.
    Follower { leader_port: u16 },
    /// Serves topic creation, PUTs and GETs; `silent_first_seq`: ignores the first attempt of
    /// every call with this seq; `messages`: how many a GET can pop before EMPTY (each PUT
    /// adds one).
    Leader {
        silent_first_seq: Option<u64>,
        messages: u64,
    },
}

/// What a fake node saw: every session key of every attempt, in arrival order.
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

pub(super) struct FakeNode {
    pub(super) port: u16,
    seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeNode {
    pub(super) fn start(
        behaviour_for_port: impl FnOnce(u16) -> Behaviour + Send + 'static,
    ) -> FakeNode {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::ROUTER).expect("a ROUTER");
        socket.set_linger(0).expect("linger");
        socket.bind("tcp://127.0.0.1:*").expect("bind a free port");
        let endpoint = socket
            .get_last_endpoint()
            .expect("an endpoint")
            .expect("UTF-8");
        let port: u16 = endpoint
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("a port in the endpoint");
        let behaviour = behaviour_for_port(port);
        let seen: Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || serve(&context, socket, behaviour, &seen, &stop))
        };
        FakeNode {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub(super) fn address(&self) -> NodeAddress {
        NodeAddress::new("127.0.0.1", self.port).expect("a valid address")
    }

    /// Every session key received, in order (requests without one are not listed).
    pub(super) fn seen(&self) -> Vec<(String, u64)> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the fake node does not panic");
        }
    }
}

fn status(leader: bool) -> Reply {
    Reply::Status(StatusReport {
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
    })
}

fn serve(
    _context: &zmq::Context,
    socket: zmq::Socket,
    behaviour: Behaviour,
    seen: &Seen,
    stop: &AtomicBool,
) {
    let mut messages_left = match behaviour {
        Behaviour::Leader { messages, .. } => messages,
        Behaviour::Follower { .. } => 0,
    };
    let mut attempts: BTreeMap<(String, u64), u32> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        if socket.poll(zmq::POLLIN, 20).expect("poll") == 0 {
            continue;
        }
        let mut frames = socket.recv_multipart(0).expect("receive");
        let body = frames.pop().expect("a body frame");
        let (request, _) = decode_request(&body, &Limits::default()).expect("a valid request");
        let mut attempt = 0;
        if let Some(session) = &request.session {
            let key = (session.client_id.clone(), session.seq);
            seen.lock().expect("not poisoned").push(key.clone());
            let count = attempts.entry(key).or_default();
            *count += 1;
            attempt = *count;
        }
        let reply = match (&behaviour, request.operation) {
            (Behaviour::Follower { .. }, Operation::Status) => status(false),
            (Behaviour::Follower { leader_port }, _) => Reply::Outcome {
                outcome: Outcome::Failed(ErrorInfo::new(ErrorCode::NotLeader, "follower")),
                leader: Some(LeaderInfo {
                    id: 0,
                    ip: "127.0.0.1".to_string(),
                    port: *leader_port,
                }),
            },
            (
                Behaviour::Leader {
                    silent_first_seq, ..
                },
                _,
            ) if attempt == 1
                && request
                    .session
                    .as_ref()
                    .is_some_and(|session| Some(session.seq) == *silent_first_seq) =>
            {
                continue; // Lost, as far as the client can tell.
            }
            (Behaviour::Leader { .. }, Operation::Status) => status(true),
            (Behaviour::Leader { .. }, operation) => {
                let outcome = match operation {
                    Operation::CreateTopic { .. } => Outcome::Done,
                    Operation::Put { .. } => {
                        messages_left += 1;
                        Outcome::Done
                    }
                    Operation::Get { .. } if messages_left > 0 => {
                        messages_left -= 1;
                        Outcome::Message(Payload::Text("m".to_string()))
                    }
                    Operation::Get { .. } => {
                        Outcome::Failed(ErrorInfo::new(ErrorCode::Empty, "empty"))
                    }
                    other => panic!("the bench sent {other:?}"),
                };
                Reply::Outcome {
                    outcome,
                    leader: None,
                }
            }
        };
        frames.push(encode_reply(&reply, 2, Encoding::MsgPack));
        socket.send_multipart(frames, 0).expect("send");
    }
}
