//! End-to-end tests of what a node does against clients that hold its resources (issue 13,
//! "Resources"): a connection stalled halfway through a large frame is dropped by the ZMTP
//! heartbeat and the frame's memory given back; the soft limit on open files is raised at
//! startup; at the limit, a connection already open keeps being served.
//!
//! The stalled client is a raw TCP socket that speaks just enough ZMTP 3.0 (RFC 23) by hand:
//! the greeting, a READY command, and the header and first bytes of one long frame. It never
//! answers the node's PINGs, as a stuck or hostile client would not.

mod common;

use common::{Client, Cluster, Wire, FAST_FLAGS, LEADER_DEADLINE, REPLY_DEADLINE, RRMQ_NODE};
use rrmq::cli::launcher::{write_config, NodePorts};
use rrmq::transport::{HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The largest message a node accepts (the config's limit), so its frame cap is above the
/// frame the stalled client announces.
const MESSAGE_BYTES_MAX: &str = "67108864";

/// What the stalled client announces, and how much of it it sends: enough that the node's
/// resident memory shows it.
const ANNOUNCED_FRAME_BYTES: u64 = 50_000_000;
const SENT_FRAME_BYTES: usize = 40_000_000;

/// Heartbeats close a silent connection one interval and one timeout after its last whole
/// message; the rest is slack for a loaded machine.
const RELEASE_DEADLINE: Duration =
    Duration::from_millis(HEARTBEAT_INTERVAL_MS as u64 + HEARTBEAT_TIMEOUT_MS as u64 + 30_000);

// ---- ZMTP 3.0 by hand -------------------------------------------------------------------------

/// greeting = { signature: 0xFF, 8 x 0x00, 0x7F | version: 3, 0 | mechanism: "NULL" padded
/// to 20 bytes | as-server: 0 | filler: 31 x 0x00 }, 64 bytes.
fn zmtp_greeting() -> [u8; 64] {
    let mut greeting = [0u8; 64];
    greeting[0] = 0xFF;
    greeting[9] = 0x7F;
    greeting[10] = 3;
    greeting[11] = 0;
    greeting[12..16].copy_from_slice(b"NULL");
    greeting
}

/// command = { flags: 0x04 (short command) | size: u8 | name-size: u8 | "READY" |
/// property* }, property = { name-size: u8 | name | value-size: u32 BE | value }.
fn ready_command(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    let value_bytes = u32::try_from(socket_type.len()).expect("a short socket type");
    body.extend_from_slice(&value_bytes.to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut command = vec![0x04, u8::try_from(body.len()).expect("a short command")];
    command.extend_from_slice(&body);
    command
}

/// frame header = { flags: 0x02 (long, last frame) | size: u64 BE }.
fn long_frame_header(size: u64) -> Vec<u8> {
    let mut header = vec![0x02];
    header.extend_from_slice(&size.to_be_bytes());
    header
}

/// A TCP connection to `port` that has greeted the node as a ZMTP 3.0 DEALER.
fn raw_dealer(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    stream
        .write_all(&zmtp_greeting())
        .expect("send the greeting");
    stream
        .write_all(&ready_command("DEALER"))
        .expect("send READY");
    stream
}

/// Reads and discards what the node sends (its greeting, READY, PINGs) until it closes the
/// connection; how long that took, or None if it stayed open for `within`.
fn wait_closed(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    let mut buffer = [0u8; 4096];
    while started.elapsed() < within {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            // A reset is a close too (the node closes with linger 0).
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

// ---- The node process, from /proc -------------------------------------------------------------

fn rss_bytes(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node's /proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// Polls until `condition` holds on the node's RSS; the last value seen, and whether it held.
fn wait_rss(pid: u32, within: Duration, condition: impl Fn(u64) -> bool) -> (u64, bool) {
    let deadline = Instant::now() + within;
    loop {
        let rss = rss_bytes(pid);
        if condition(rss) {
            return (rss, true);
        }
        if Instant::now() > deadline {
            return (rss, false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The (soft, hard) limit on open files of process `pid`, from /proc/PID/limits.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits =
        std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("the node's /proc limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a 'Max open files' line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files   SOFT   HARD   files"
    (fields[3].to_string(), fields[4].to_string())
}

fn open_fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the node's /proc fd dir")
        .count()
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the node's stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks = |index: usize| -> u64 { fields[index].parse().expect("a tick count") };
    ticks(11) + ticks(12)
}

fn status_request() -> Value {
    json!({"type": "status", "method": "GET", "v": 2})
}

// ---- Stalled half-sent frames -----------------------------------------------------------------

/// Sends the node most of a long frame on the port `port_of` picks, stalls, and checks that
/// the node drops the connection and gives the memory back, serving status all along.
fn a_stalled_half_sent_frame_is_released(port_of: fn(&NodePorts) -> u16) {
    let cluster = Cluster::start_with(1, &["--message-bytes-max", MESSAGE_BYTES_MAX]);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let pid = cluster.nodes.pid(0).expect("the node runs");
    let baseline = rss_bytes(pid);

    let mut stalled = raw_dealer(port_of(&cluster.ports[0]));
    stalled
        .write_all(&long_frame_header(ANNOUNCED_FRAME_BYTES))
        .expect("send the frame header");
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < SENT_FRAME_BYTES {
        stalled.write_all(&chunk).expect("send part of the frame");
        sent += chunk.len();
    }
    let stalled_at = Instant::now();

    // The node holds the half frame: the test would prove nothing otherwise.
    let held_bytes = (SENT_FRAME_BYTES as u64) * 3 / 4;
    let (held, holds) = wait_rss(pid, Duration::from_secs(5), |rss| {
        rss >= baseline + held_bytes
    });
    assert!(
        holds,
        "the node's RSS did not grow with the half-sent frame: {baseline} -> {held} bytes"
    );

    let mut client = Client::connect(cluster.ports[0].port);
    let status = client.call_with_timeout(Wire::MsgPack, &status_request(), REPLY_DEADLINE);
    assert!(status.is_some(), "no status while a frame is stalled");

    let closed_after = wait_closed(
        &mut stalled,
        RELEASE_DEADLINE.saturating_sub(stalled_at.elapsed()),
    );
    let closed_after = closed_after.map(|_| stalled_at.elapsed());
    assert!(
        closed_after.is_some(),
        "the node kept a stalled connection open for {RELEASE_DEADLINE:?}"
    );

    let released_bytes = baseline + (SENT_FRAME_BYTES as u64) / 4;
    let (released, is_released) =
        wait_rss(pid, Duration::from_secs(10), |rss| rss <= released_bytes);
    assert!(
        is_released,
        "the node's RSS stayed pinned after dropping the connection: {baseline} before, \
         {held} held, {released} after"
    );
    let status = client.call_with_timeout(Wire::MsgPack, &status_request(), REPLY_DEADLINE);
    assert!(
        status.is_some(),
        "no status after the stalled connection was dropped"
    );
    eprintln!(
        "RSS {} MB before, {} MB with the half frame, {} MB after; closed {:?} after the stall",
        baseline >> 20,
        held >> 20,
        released >> 20,
        closed_after.unwrap_or_default()
    );
}

#[test]
fn a_stalled_half_sent_frame_on_the_client_port_is_released() {
    a_stalled_half_sent_frame_is_released(|ports| ports.port);
}

#[test]
fn a_stalled_half_sent_frame_on_the_peer_port_is_released() {
    a_stalled_half_sent_frame_is_released(|ports| ports.internal_port);
}

// ---- Open files -------------------------------------------------------------------------------

/// A node started by hand with a soft limit on open files below its hard limit.
struct LimitedNode {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for LimitedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_with_soft_open_files_limit(soft: libc::rlim_t) -> LimitedNode {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let (config_path, _) = write_config(dir.path(), "127.0.0.1", 1).expect("write the config");
    let mut command = Command::new(RRMQ_NODE);
    command
        .arg(&config_path)
        .arg("0")
        .arg("--data-dir")
        .arg(dir.path().join("node-0"))
        .args(FAST_FLAGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure calls only getrlimit and setrlimit, which
    // are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = soft.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawn rrmq-node");
    LimitedNode { child, _dir: dir }
}

#[test]
fn the_node_raises_its_soft_open_files_limit_to_the_hard_limit() {
    let node = spawn_with_soft_open_files_limit(256);
    let pid = node.child.id();
    let deadline = Instant::now() + LEADER_DEADLINE;
    let (mut soft, mut hard) = open_files_limits(pid);
    if hard == "256" {
        eprintln!("the hard limit is 256 here; nothing to raise");
        return;
    }
    while soft != hard && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        (soft, hard) = open_files_limits(pid);
    }
    assert_eq!(
        soft, hard,
        "the node's soft limit on open files was not raised"
    );
}

/// Lowers the limit on open files of running process `pid` (soft and hard) to `limit`.
fn set_open_files_limit(pid: u32, limit: u64) {
    let limit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: prlimit reads `limit` and writes nothing (no old-limit pointer).
    let result = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// libzmq cannot refuse connections over a cap, and at EMFILE its listener leaves them in
/// the kernel's backlog: they get no greeting, and the node's I/O thread retries the accept
/// on every poll (it spins a core while at the limit). What must hold: a connection that
/// was open before keeps being served, and new ones are served again once files are free.
#[test]
fn at_the_open_files_limit_an_open_connection_keeps_getting_status() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let pid = cluster.nodes.pid(0).expect("the node runs");
    let port = cluster.ports[0].port;
    let mut old_client = Client::connect(port);
    assert!(old_client
        .call_with_timeout(Wire::MsgPack, &status_request(), REPLY_DEADLINE)
        .is_some());

    let headroom = 8;
    set_open_files_limit(pid, (open_fd_count(pid) + headroom) as u64);

    // More connections than the node has files left; each asks for status.
    let context = zmq::Context::new();
    let extra: Vec<zmq::Socket> = (0..headroom * 3)
        .map(|_| {
            let socket = context.socket(zmq::DEALER).expect("socket");
            socket.set_linger(0).expect("linger");
            socket
                .connect(&format!("tcp://127.0.0.1:{port}"))
                .expect("connect");
            let body = common::encode(Wire::MsgPack, &status_request());
            socket
                .send_multipart([&b""[..], &body[..]], 0)
                .expect("queue a status request");
            socket
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answered = vec![false; extra.len()];
    while Instant::now() < deadline {
        for (index, socket) in extra.iter().enumerate() {
            if !answered[index] && socket.poll(zmq::POLLIN, 0).expect("poll") > 0 {
                socket.recv_multipart(0).expect("recv");
                answered[index] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let answered_count = answered.iter().filter(|answered| **answered).count();
    assert!(
        answered_count < extra.len(),
        "every connection was served: the limit was not reached"
    );

    let ticks_before = cpu_ticks(pid);
    let measured_from = Instant::now();
    for round in 0..3 {
        let status = old_client.call_with_timeout(Wire::MsgPack, &status_request(), REPLY_DEADLINE);
        assert!(
            status.is_some(),
            "round {round}: no status at the open files limit"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // SAFETY: sysconf has no memory effects.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    eprintln!(
        "{answered_count} of {} new connections served at the limit; the node used {:.0} % \
         of a core meanwhile",
        extra.len(),
        100.0 * (cpu_ticks(pid) - ticks_before) as f64
            / ticks_per_second
            / measured_from.elapsed().as_secs_f64()
    );

    // Files free again: new connections are served.
    drop(extra);
    drop(context);
    let deadline = Instant::now() + REPLY_DEADLINE;
    loop {
        let mut new_client = Client::connect(port);
        if new_client
            .call_with_timeout(Wire::MsgPack, &status_request(), Duration::from_secs(1))
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection served after files were freed"
        );
    }
}

// ---- The warning that a cluster without keys is open ------------------------------------------

const OPEN_WARNING: &str = "without keys";

#[test]
fn a_node_on_a_non_loopback_address_warns_that_it_is_open() {
    {
        let open = Cluster::start_on("0.0.0.0", 1, &[]);
        // Up means serving status, which comes after the startup log.
        let log = open.log(0);
        assert!(
            log.contains(OPEN_WARNING) && log.contains("WARN"),
            "no warning from a node on 0.0.0.0:\n{log}"
        );
    }
    let loopback = Cluster::start(1);
    let log = loopback.log(0);
    assert!(
        !log.contains(OPEN_WARNING),
        "a node on 127.0.0.1 warned:\n{log}"
    );
}
