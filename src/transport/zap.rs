//! The node's ZAP handler (ZeroMQ RFC 27, ZAP/1.0): who may complete a CURVE handshake.
//!
//! Why it exists: ZAP fails open. A CURVE server with no handler bound on
//! `inproc://zeromq.zap.01` in its context admits every client that knows the server's
//! public key, whatever the client's own key. So a keyed node binds this handler before it
//! binds any CURVE socket, admits on the peer port ([`PEER_DOMAIN`]) only the members' public
//! keys, and names each admitted connection by the node id whose key it presented (the ZAP
//! user id, which libzmq attaches to every message of that connection as `User-Id`). The peer
//! receiver then drops a frame whose claimed sender is not that id.
//!
//! The members' keys are a [`MemberKeys`], which follows the membership the node acts on
//! (PROTOCOL.md §12): the node loop replaces it whenever it changes its peer connections
//! (`PeerTransport::set_peer_keys`), so an added member's key is admitted as soon as this
//! node appends the entry that adds it, and a removed member's key stays admitted until its
//! removal commits, as its connections do. Ids are never reused and a member's key never
//! changes, so an id's key is the same in every list that holds it. A handshake is checked
//! once, when the connection is made: a connection from a member removed since stays open,
//! and the peer receiver drops its frames ([`MemberKeys::contains`]).
//!
//! When the config lists `clients`, the same handler (libzmq allows one per context) also
//! answers the client port ([`CLIENT_DOMAIN`]): it admits only keys in the list in force at
//! the moment of the handshake (a SIGHUP swaps it), and names the connection by the client's
//! Z85 public key, which the client transport looks up again for each request. It also
//! admits there the keys of the current members, named `node ID` ([`peer_user_id`]), for
//! `stats` and `status` only: that is how a node started with `--join` asks the members for
//! the cluster id (`node::cluster_id`) once its `member PUT` has made it a learner, without
//! its key being listed as a client. The client transport checks that right first, before
//! anything else of the request. A key listed as a client keeps its client rights.
//!
//! Its death would leave the node failing open, so it is fatal: the process exits with
//! status 70 and one error line (log and stderr), unless the transport is stopping. A `fault`
//! request with `stop_zap_handler` (tests only, `--fault-injection`) ends the thread to show
//! it (tests/security_peers.rs).

use super::fault::PeerFaults;
use super::log_limit::{LogLimiter, LOG_INTERVAL};
use super::{zmq_context, TransportError};
use crate::config::clients::{ClientList, SharedClients};
use crate::config::keys::{z85_encode, Key};
use crate::raft::NodeId;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

/// Where libzmq sends ZAP requests (fixed by RFC 27).
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// The ZAP domain of the peer ROUTER (`ZMQ_ZAP_DOMAIN`).
pub const PEER_DOMAIN: &str = "peer";
/// The ZAP domain of the client ROUTER when the config lists `clients`.
pub const CLIENT_DOMAIN: &str = "client";
/// How often the handler looks at its stop flag.
const STOP_POLL_MS: i64 = 100;
/// The exit status of a node whose ZAP handler died.
const EXIT_ZAP_DEAD: i32 = 70;

/// The ZAP user id of a member's connection to the client port: `node ID`. Never a listed
/// client's (those are 40-character Z85 keys, which have no space).
pub fn peer_user_id(id: NodeId) -> String {
    format!("node {id}")
}

/// The member a client-port `User-Id` names, if it is a [`peer_user_id`].
pub fn parse_peer_user_id(user_id: &str) -> Option<NodeId> {
    user_id
        .strip_prefix("node ")
        .and_then(|id| id.parse().ok())
        .map(NodeId)
}

/// The public key of every member this node admits on its peer port (its own included),
/// shared by the ZAP handler, the peer receiver, every DEALER set (the key a DEALER expects
/// of its peer) and the client transport. Replaced as a whole by the node loop; one atomic
/// load tells a reader whether its copy is still the current one.
#[derive(Debug)]
pub struct MemberKeys {
    generation: AtomicU64,
    keys: RwLock<Arc<Vec<(NodeId, Key)>>>,
}

impl MemberKeys {
    pub fn new(keys: Vec<(NodeId, Key)>) -> MemberKeys {
        MemberKeys {
            generation: AtomicU64::new(0),
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    /// Changes each time the keys are replaced by different ones.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<Vec<(NodeId, Key)>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Member `id`'s key, if it is admitted.
    pub fn key_of(&self, id: NodeId) -> Option<Key> {
        self.current()
            .iter()
            .find(|(member, _)| *member == id)
            .map(|(_, key)| *key)
    }

    /// Whether member `id` is admitted.
    pub fn contains(&self, id: NodeId) -> bool {
        self.key_of(id).is_some()
    }

    /// Replaces the keys; returns the ids added and removed (both empty: nothing changed).
    pub fn replace(&self, next: Vec<(NodeId, Key)>) -> (Vec<NodeId>, Vec<NodeId>) {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let has = |list: &[(NodeId, Key)], entry: &(NodeId, Key)| list.contains(entry);
        let added: Vec<NodeId> = next
            .iter()
            .filter(|entry| !has(&keys, entry))
            .map(|(id, _)| *id)
            .collect();
        let removed: Vec<NodeId> = keys
            .iter()
            .filter(|entry| !has(&next, entry))
            .map(|(id, _)| *id)
            .collect();
        if !added.is_empty() || !removed.is_empty() {
            *keys = Arc::new(next);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        (added, removed)
    }
}

/// What the handler answers to one request: (status code, status text, user id). `clients`
/// is the client list in force, when the client port speaks CURVE.
pub fn decide(
    members: &[(NodeId, Key)],
    clients: Option<&ClientList>,
    request: &[Vec<u8>],
) -> (&'static str, String, String) {
    // version, request id, domain, address, identity, mechanism, credentials...
    if request.len() < 6 || request[0] != b"1.0" {
        return ("500", "malformed ZAP request".into(), String::new());
    }
    let domain = request[2].as_slice();
    let mechanism = &request[5];
    let for_clients = match (domain, clients) {
        (d, _) if d == PEER_DOMAIN.as_bytes() => false,
        (d, Some(_)) if d == CLIENT_DOMAIN.as_bytes() => true,
        _ => return ("400", "unknown domain".into(), String::new()),
    };
    if mechanism.as_slice() != b"CURVE" || request.len() != 7 {
        return ("400", "CURVE required".into(), String::new());
    }
    let Ok(key) = <Key>::try_from(request[6].as_slice()) else {
        return ("400", "malformed CURVE key".into(), String::new());
    };
    let member = members.iter().find(|(_, member)| *member == key);
    if let (true, Some(clients)) = (for_clients, clients) {
        return match (clients.by_key(&key), member) {
            (Some(client), _) => ("200", "OK".into(), client.public_key_z85.clone()),
            // A member, for `stats` and `status` only (the client transport sees to that).
            (None, Some((id, _))) => ("200", "OK".into(), peer_user_id(*id)),
            (None, None) => (
                "400",
                "neither a listed client's key nor a member's".into(),
                String::new(),
            ),
        };
    }
    match member {
        Some((id, _)) => ("200", "OK".into(), id.to_string()),
        None => ("400", "not a member's key".into(), String::new()),
    }
}

/// Exits the process when the handler thread ends while the transport is not stopping
/// (an error, or a panic unwinding through it).
struct FatalUnlessStopping(Arc<AtomicBool>);

impl Drop for FatalUnlessStopping {
    fn drop(&mut self) {
        if !self.0.load(Ordering::Relaxed) {
            let line = "ZAP handler died: CURVE peers could no longer be authenticated; exiting";
            log::error!("{line}");
            eprintln!("rrmq-node: {line}");
            std::process::exit(EXIT_ZAP_DEAD);
        }
    }
}

/// Binds the handler in `context` (on the caller's thread, so it is in place when this
/// returns) and starts its thread, which admits `members` (as they are at each handshake)
/// on the peer port, and the clients listed in `clients` (if any) and the members on the
/// client port, until `stopping`.
pub fn start(
    context: &zmq::Context,
    members: Arc<MemberKeys>,
    clients: Option<Arc<SharedClients>>,
    stopping: Arc<AtomicBool>,
    faults: Arc<PeerFaults>,
) -> Result<JoinHandle<()>, TransportError> {
    let socket = zmq_context("ZAP REP socket", context.socket(zmq::REP))?;
    zmq_context("ZAP linger", socket.set_linger(0))?;
    socket
        .bind(ZAP_ENDPOINT)
        .map_err(|source| TransportError::Bind {
            endpoint: ZAP_ENDPOINT.to_string(),
            purpose: "ZAP handler",
            source,
        })?;
    std::thread::Builder::new()
        .name("zap-handler".into())
        .spawn(move || {
            let _fatal = FatalUnlessStopping(stopping.clone());
            serve(&socket, &members, clients.as_deref(), &stopping, &faults);
        })
        .map_err(|source| TransportError::Spawn {
            name: "zap-handler",
            source,
        })
}

fn serve(
    socket: &zmq::Socket,
    members: &MemberKeys,
    clients: Option<&SharedClients>,
    stopping: &AtomicBool,
    faults: &PeerFaults,
) {
    let mut peer_refusals = LogLimiter::new(LOG_INTERVAL);
    let mut client_refusals = LogLimiter::new(LOG_INTERVAL);
    while !stopping.load(Ordering::Relaxed) {
        if faults.zap_handler_stopped() {
            log::error!("ZAP handler: stopped by an injected fault");
            return;
        }
        match socket.poll(zmq::POLLIN, STOP_POLL_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(error) => {
                log::error!("ZAP handler: poll: {error}");
                return;
            }
        }
        let request = match socket.recv_multipart(0) {
            Ok(request) => request,
            Err(zmq::Error::EINTR) => continue,
            Err(error) => {
                log::error!("ZAP handler: recv: {error}");
                return;
            }
        };
        let list = clients.map(SharedClients::current);
        let (code, text, user_id) = decide(&members.current(), list.as_deref(), &request);
        if code != "200" {
            let for_clients = request.get(2).map(Vec::as_slice) == Some(CLIENT_DOMAIN.as_bytes());
            let (refusals, port) = if for_clients {
                (&mut client_refusals, "client")
            } else {
                (&mut peer_refusals, "peer")
            };
            refusals.record(1);
            if let Some(count) = refusals.take_due(Instant::now()) {
                let address = request
                    .get(3)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .unwrap_or_default();
                let key = request
                    .get(6)
                    .and_then(|k| <Key>::try_from(k.as_slice()).ok())
                    .map(|k| z85_encode(&k))
                    .unwrap_or_else(|| "none".into());
                log::warn!(
                    "refused {count} {port} handshake(s); latest from {address} with key {key}: \
                     {text}"
                );
            }
        }
        let request_id: &[u8] = request.get(1).map(Vec::as_slice).unwrap_or(b"");
        let reply: [&[u8]; 6] = [
            b"1.0",
            request_id,
            code.as_bytes(),
            text.as_bytes(),
            user_id.as_bytes(),
            b"",
        ];
        if let Err(error) = socket.send_multipart(reply, 0) {
            log::error!("ZAP handler: send: {error}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(domain: &str, mechanism: &str, key: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut frames = vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            domain.as_bytes().to_vec(),
            b"127.0.0.1".to_vec(),
            Vec::new(),
            mechanism.as_bytes().to_vec(),
        ];
        if let Some(key) = key {
            frames.push(key.to_vec());
        }
        frames
    }

    #[test]
    fn admits_only_members_keys_on_the_peer_domain_and_names_them() {
        let members = vec![(NodeId(0), [1u8; 32]), (NodeId(2), [2u8; 32])];
        let member = request(PEER_DOMAIN, "CURVE", Some(&[2u8; 32]));
        assert_eq!(decide(&members, None, &member).0, "200");
        assert_eq!(decide(&members, None, &member).2, "2");
        let stranger = request(PEER_DOMAIN, "CURVE", Some(&[3u8; 32]));
        assert_eq!(decide(&members, None, &stranger).0, "400");
        assert_eq!(decide(&members, None, &stranger).2, "");
        let other_domain = request("client", "CURVE", Some(&[1u8; 32]));
        assert_eq!(decide(&members, None, &other_domain).0, "400");
        let plain = request(PEER_DOMAIN, "NULL", None);
        assert_eq!(decide(&members, None, &plain).0, "400");
        let short_key = request(PEER_DOMAIN, "CURVE", Some(&[1u8; 31]));
        assert_eq!(decide(&members, None, &short_key).0, "400");
        assert_eq!(decide(&members, None, &[b"1.0".to_vec()]).0, "500");
        let mut wrong_version = member.clone();
        wrong_version[0] = b"2.0".to_vec();
        assert_eq!(decide(&members, None, &wrong_version).0, "500");
    }

    #[test]
    fn member_keys_report_what_a_replacement_adds_and_removes() {
        let keys = MemberKeys::new(vec![(NodeId(0), [1u8; 32]), (NodeId(1), [2u8; 32])]);
        let before = keys.generation();
        assert_eq!(
            keys.replace(vec![(NodeId(0), [1u8; 32]), (NodeId(1), [2u8; 32])]),
            (vec![], vec![])
        );
        assert_eq!(keys.generation(), before, "the same keys change nothing");
        assert_eq!(
            keys.replace(vec![(NodeId(0), [1u8; 32]), (NodeId(3), [4u8; 32])]),
            (vec![NodeId(3)], vec![NodeId(1)])
        );
        assert_ne!(keys.generation(), before);
        assert_eq!(keys.key_of(NodeId(3)), Some([4u8; 32]));
        assert!(!keys.contains(NodeId(1)));
        // The handler decides on the keys in force: node 1's key is refused now.
        let old = request(PEER_DOMAIN, "CURVE", Some(&[2u8; 32]));
        assert_eq!(decide(&keys.current(), None, &old).0, "400");
        let new = request(PEER_DOMAIN, "CURVE", Some(&[4u8; 32]));
        assert_eq!(decide(&keys.current(), None, &new).2, "3");
    }

    #[test]
    fn admits_only_listed_clients_on_the_client_domain_and_names_them_by_key() {
        let members = vec![(NodeId(0), [1u8; 32])];
        let listed = crate::config::keys::z85_encode(&[5u8; 32]);
        let list = ClientList::from_json(&serde_json::json!([
            {"name": "alice", "public_key": listed, "produce": ["*"]}
        ]))
        .expect("a valid list");
        let client = request(CLIENT_DOMAIN, "CURVE", Some(&[5u8; 32]));
        assert_eq!(decide(&members, Some(&list), &client).0, "200");
        assert_eq!(decide(&members, Some(&list), &client).2, listed);
        // A member's key is admitted too, named as a member (for `stats` and `status` only,
        // which the client transport enforces); a stranger's is not; without a list the
        // domain is unknown.
        let member = request(CLIENT_DOMAIN, "CURVE", Some(&[1u8; 32]));
        assert_eq!(decide(&members, Some(&list), &member).0, "200");
        assert_eq!(decide(&members, Some(&list), &member).2, "node 0");
        assert_eq!(parse_peer_user_id("node 0"), Some(NodeId(0)));
        assert_eq!(parse_peer_user_id(&listed), None);
        let stranger = request(CLIENT_DOMAIN, "CURVE", Some(&[9u8; 32]));
        assert_eq!(decide(&members, Some(&list), &stranger).0, "400");
        assert_eq!(decide(&members, None, &client).0, "400");
        // A client's key is not a member's.
        let on_peer_port = request(PEER_DOMAIN, "CURVE", Some(&[5u8; 32]));
        assert_eq!(decide(&members, Some(&list), &on_peer_port).0, "400");
        let plain = request(CLIENT_DOMAIN, "NULL", None);
        assert_eq!(decide(&members, Some(&list), &plain).0, "400");
    }
}
