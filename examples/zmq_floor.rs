//! The least one replicated write can cost over ZeroMQ on this machine, with no Raft, no
//! disk and no encoding: a floor to read rrmq's C=1 figures against (issue 14's targets).
//!
//! Three processes stand in for a 3-node cluster: a *relay* (the leader) with a ROUTER for
//! the client and a DEALER to each of two *echo servers* (the followers). For each request
//! the relay sends the body to both, waits for the first echo (a majority of three counts
//! the leader itself), and answers; the second echo is taken on the way, as a leader takes
//! its second ack. Every process has a single thread of its own plus libzmq's I/O thread, so
//! one round trip wakes 12 threads in turn (the client's and each process's I/O thread at
//! every hop); rrmq's own design adds its listener threads to that.
//!
//! It prints the round trip's percentiles as the client saw it, and the CPU the three
//! processes used per round trip (every thread, from `/proc/PID/task/*/schedstat`).
//!
//! ```sh
//! cargo run --release --example zmq_floor -- --round-trips 20000
//! chrt -b 0 target/release/examples/zmq_floor        # under SCHED_BATCH, as rrmq-node runs
//! ```
//!
//! `scripts/floor.sh` runs it beside the fdatasync CPU probe; docs/PERFORMANCE.md, "The floor
//! under C=1", has the figures.

use std::error::Error;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const WARM_UP_ROUND_TRIPS: usize = 2_000;
const BODY_BYTES: usize = 100;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--role-echo") => echo(port_arg(&args, 1)?),
        Some("--role-relay") => relay(
            port_arg(&args, 1)?,
            port_arg(&args, 2)?,
            port_arg(&args, 3)?,
        ),
        _ => {
            let round_trips = match args.as_slice() {
                [] => 20_000,
                [flag, n] if flag == "--round-trips" => n.parse()?,
                _ => return Err("usage: zmq_floor [--round-trips N]".into()),
            };
            measure(round_trips)
        }
    }
}

fn port_arg(args: &[String], position: usize) -> Result<u16> {
    let text = args.get(position).ok_or("missing port")?;
    Ok(text.parse()?)
}

fn endpoint(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

/// A follower's stand-in: answers every message with itself.
fn echo(port: u16) -> Result<()> {
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER)?;
    router.bind(&endpoint(port))?;
    loop {
        let frames = router.recv_multipart(0)?;
        router.send_multipart(frames, 0)?;
    }
}

/// The leader's stand-in: forwards each request to both followers, answers after the first
/// echo.
fn relay(port: u16, follower_a: u16, follower_b: u16) -> Result<()> {
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER)?;
    router.bind(&endpoint(port))?;
    let mut followers = Vec::new();
    for follower in [follower_a, follower_b] {
        let dealer = context.socket(zmq::DEALER)?;
        dealer.connect(&endpoint(follower))?;
        followers.push(dealer);
    }
    let (mut sent, mut echoed) = (0u64, 0u64);
    loop {
        let frames = router.recv_multipart(0)?;
        let body = frames.last().ok_or("empty message")?;
        for dealer in &followers {
            dealer.send(&body[..], 0)?;
            sent += 1;
        }
        // Both echoes of every earlier request, and one of this one.
        while echoed + 1 < sent {
            let mut items: Vec<zmq::PollItem> = followers
                .iter()
                .map(|dealer| dealer.as_poll_item(zmq::POLLIN))
                .collect();
            zmq::poll(&mut items, -1)?;
            for dealer in &followers {
                while dealer.recv_bytes(zmq::DONTWAIT).is_ok() {
                    echoed += 1;
                }
            }
        }
        router.send_multipart(frames, 0)?;
    }
}

/// Kills the stand-ins it started when dropped, whatever happened.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU nanoseconds used so far by every thread of `pid`.
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        let running: u64 = schedstat
            .split_whitespace()
            .next()
            .ok_or("empty schedstat")?
            .parse()?;
        total += running;
    }
    Ok(total)
}

fn measure(round_trips: usize) -> Result<()> {
    if round_trips == 0 {
        return Err("--round-trips must be at least 1".into());
    }
    let me = std::env::current_exe()?;
    let (relay_port, port_a, port_b) = (free_port()?, free_port()?, free_port()?);
    let mut processes = Processes(Vec::new());
    for port in [port_a, port_b] {
        processes.0.push(
            Command::new(&me)
                .arg("--role-echo")
                .arg(port.to_string())
                .spawn()?,
        );
    }
    processes.0.push(
        Command::new(&me)
            .arg("--role-relay")
            .args([relay_port, port_a, port_b].map(|port| port.to_string()))
            .spawn()?,
    );

    let context = zmq::Context::new();
    let client = context.socket(zmq::DEALER)?;
    client.set_rcvtimeo(5_000)?;
    client.connect(&endpoint(relay_port))?;
    let body = [7u8; BODY_BYTES];
    let round_trip = || -> Result<f64> {
        let started = Instant::now();
        client.send(&body[..], 0)?;
        client.recv_bytes(0)?;
        Ok(started.elapsed().as_secs_f64() * 1e6)
    };
    for _ in 0..WARM_UP_ROUND_TRIPS {
        round_trip()?;
    }
    let pids: Vec<u32> = processes.0.iter().map(Child::id).collect();
    let cpu_before: u64 = pids.iter().map(|&pid| cpu_ns(pid)).sum::<Result<u64>>()?;
    let mut micros = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        micros.push(round_trip()?);
    }
    let cpu_after: u64 = pids.iter().map(|&pid| cpu_ns(pid)).sum::<Result<u64>>()?;
    micros.sort_by(f64::total_cmp);
    let at =
        |fraction: f64| micros[((micros.len() as f64 * fraction) as usize).min(micros.len() - 1)];
    println!(
        "{round_trips} round trips: p10 {:.0} us, p50 {:.0} us, p90 {:.0} us, p99 {:.0} us; \
         the three processes' CPU {:.0} us per round trip",
        at(0.10),
        at(0.50),
        at(0.90),
        at(0.99),
        (cpu_after - cpu_before) as f64 / 1e3 / round_trips as f64,
    );
    Ok(())
}
