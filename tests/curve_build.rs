//! The libzmq this crate links has CURVE (built by build.rs with libsodium, PROTOCOL.md §11),
//! and CURVE works on a real TCP connection.
//!
//! This file uses only the `zmq` crate on purpose: such a test binary does not link the rrmq
//! rlib, so it checks that build.rs also names libzmq and libsodium for binaries that reach
//! ZeroMQ only through `zmq`.
//!
//! No ZAP handler is bound here, so the CURVE server admits any client that knows its public
//! key, whatever the client's own key: these tests show encryption and server authentication
//! (a client without the right server key gets nothing through), not client authentication.

use std::time::{Duration, Instant};

/// How long a test waits for something that should happen.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a test watches for something that must not happen after the handshake failed.
const QUIET: Duration = Duration::from_millis(500);

#[test]
fn libzmq_has_curve() {
    assert_eq!(zmq::has("curve"), Some(true));
}

struct Server {
    router: zmq::Socket,
    endpoint: String,
    public_key: [u8; 32],
    monitor: zmq::Socket,
}

/// A ROUTER with CURVE on, bound to an ephemeral loopback port, and a monitor of its
/// handshake events.
fn curve_server(context: &zmq::Context, name: &str) -> Server {
    let keys = zmq::CurveKeyPair::new().expect("server keypair");
    let router = context.socket(zmq::ROUTER).expect("router");
    router.set_linger(0).expect("linger");
    router.set_curve_server(true).expect("curve server");
    router
        .set_curve_secretkey(&keys.secret_key)
        .expect("server secret key");
    let monitor_endpoint = format!("inproc://curve-monitor-{name}");
    router
        .monitor(
            &monitor_endpoint,
            (zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32)
                | (zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32)
                | (zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32)
                | (zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32),
        )
        .expect("monitor");
    let monitor = context.socket(zmq::PAIR).expect("monitor socket");
    monitor.set_linger(0).expect("linger");
    monitor.connect(&monitor_endpoint).expect("monitor connect");
    router.bind("tcp://127.0.0.1:*").expect("bind");
    let endpoint = router
        .get_last_endpoint()
        .expect("last endpoint")
        .expect("endpoint is UTF-8");
    Server {
        router,
        endpoint,
        public_key: keys.public_key,
        monitor,
    }
}

/// A DEALER with its own fresh keypair that expects `server_key` (CURVE client), or a plain
/// DEALER when `server_key` is None.
fn client(context: &zmq::Context, endpoint: &str, server_key: Option<&[u8; 32]>) -> zmq::Socket {
    let dealer = context.socket(zmq::DEALER).expect("dealer");
    dealer.set_linger(0).expect("linger");
    if let Some(server_key) = server_key {
        let keys = zmq::CurveKeyPair::new().expect("client keypair");
        dealer.set_curve_serverkey(server_key).expect("server key");
        dealer
            .set_curve_publickey(&keys.public_key)
            .expect("client public key");
        dealer
            .set_curve_secretkey(&keys.secret_key)
            .expect("client secret key");
    }
    dealer.connect(endpoint).expect("connect");
    dealer
}

/// Waits up to `timeout` for a message on `socket`.
fn recv_within(socket: &zmq::Socket, timeout: Duration) -> Option<Vec<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        let ready = socket.poll(zmq::POLLIN, millis).expect("poll");
        if ready > 0 {
            return Some(socket.recv_multipart(0).expect("recv"));
        }
        if left.is_zero() {
            return None;
        }
    }
}

/// The next handshake event of the server's monitor, within DEADLINE.
fn next_handshake_event(server: &Server) -> zmq::SocketEvent {
    let frames = recv_within(&server.monitor, DEADLINE).expect("a handshake event in time");
    let head = frames.first().expect("event frame");
    let raw = u16::from_le_bytes([head[0], head[1]]);
    zmq::SocketEvent::from_raw(raw)
}

#[test]
fn curve_round_trip_on_loopback() {
    let context = zmq::Context::new();
    let server = curve_server(&context, "round-trip");
    let dealer = client(&context, &server.endpoint, Some(&server.public_key));

    dealer.send("ping", 0).expect("send");
    let request = recv_within(&server.router, DEADLINE).expect("request in time");
    assert_eq!(request.len(), 2, "identity and body");
    assert_eq!(request[1], b"ping");
    assert_eq!(
        next_handshake_event(&server),
        zmq::SocketEvent::HANDSHAKE_SUCCEEDED
    );

    server
        .router
        .send_multipart([request[0].as_slice(), b"pong"], 0)
        .expect("reply");
    let reply = recv_within(&dealer, DEADLINE).expect("reply in time");
    assert_eq!(reply, vec![b"pong".to_vec()]);
}

#[test]
fn client_with_wrong_server_key_gets_nothing_through() {
    let context = zmq::Context::new();
    let server = curve_server(&context, "wrong-key");
    let wrong = zmq::CurveKeyPair::new().expect("keypair").public_key;
    let dealer = client(&context, &server.endpoint, Some(&wrong));

    dealer.send("ping", 0).expect("send");
    assert_eq!(
        next_handshake_event(&server),
        zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL
    );
    assert_eq!(recv_within(&server.router, QUIET), None);
}

#[test]
fn plain_client_gets_nothing_through() {
    let context = zmq::Context::new();
    let server = curve_server(&context, "plain");
    let dealer = client(&context, &server.endpoint, None);

    dealer.send("ping", 0).expect("send");
    assert_eq!(
        next_handshake_event(&server),
        zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL
    );
    assert_eq!(recv_within(&server.router, QUIET), None);
}
