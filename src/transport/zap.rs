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
//! When the config lists `clients`, the same handler (libzmq allows one per context) also
//! answers the client port ([`CLIENT_DOMAIN`]): it admits only keys in the list in force at
//! the moment of the handshake (a SIGHUP swaps it), and names the connection by the client's
//! Z85 public key, which the client transport looks up again for each request.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    if let (true, Some(clients)) = (for_clients, clients) {
        return match clients.by_key(&key) {
            Some(client) => ("200", "OK".into(), client.public_key_z85.clone()),
            None => ("400", "not a listed client's key".into(), String::new()),
        };
    }
    match members.iter().find(|(_, member)| *member == key) {
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
/// returns) and starts its thread, which admits `members` on the peer port, and the clients
/// listed in `clients` (if any) on the client port, until `stopping`.
pub fn start(
    context: &zmq::Context,
    members: Vec<(NodeId, Key)>,
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
    members: &[(NodeId, Key)],
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
        let (code, text, user_id) = decide(members, list.as_deref(), &request);
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
        // A member's key is not a client's, and without a list the domain is unknown.
        let member = request(CLIENT_DOMAIN, "CURVE", Some(&[1u8; 32]));
        assert_eq!(decide(&members, Some(&list), &member).0, "400");
        assert_eq!(decide(&members, None, &client).0, "400");
        // A client's key is not a member's.
        let on_peer_port = request(PEER_DOMAIN, "CURVE", Some(&[5u8; 32]));
        assert_eq!(decide(&members, Some(&list), &on_peer_port).0, "400");
        let plain = request(CLIENT_DOMAIN, "NULL", None);
        assert_eq!(decide(&members, Some(&list), &plain).0, "400");
    }
}
