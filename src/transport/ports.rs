//! Free loopback ports for nodes started on this machine: by the local cluster launcher
//! (`rrmq bench --matrix`, the end-to-end tests) and by unit tests that bind real sockets.
//!
//! Why below the kernel's ephemeral range (32768 and up on Linux): a port the kernel handed
//! out for `127.0.0.1:0` is also one it may hand to the next outgoing connection (another
//! node's DEALER, another test's client) in the moment between choosing it and the node
//! binding it. Ports in 20000-31999 are never chosen that way, so only another listener can
//! take one, which the caller sees as a failed bind and may retry on fresh ports.
//!
//! What it must not do: promise more than "free right now". Nothing here reserves a port.

use std::io;
use std::net::TcpListener;

/// Where ports are picked: below the Linux ephemeral range (32768-60999 by default).
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;
/// Candidates tried per port before giving up: the range is nearly always mostly free.
const ATTEMPTS_PER_PORT: usize = 1_000;

/// A loopback port that is free right now.
pub fn free_port() -> io::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `count` distinct loopback ports, each free right now: all are held open together while
/// choosing, so no two are alike.
pub fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut held = Vec::with_capacity(count);
    let mut last_error = None;
    for _ in 0..count.saturating_mul(ATTEMPTS_PER_PORT) {
        if held.len() == count {
            break;
        }
        let port = rng.gen_range(PORT_RANGE);
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => held.push((port, listener)),
            Err(error) => last_error = Some(error),
        }
    }
    if held.len() < count {
        let reason = last_error.map_or_else(|| "no candidate".to_string(), |e| e.to_string());
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "no {count} free loopback ports in {}-{} (last: {reason})",
                PORT_RANGE.start,
                PORT_RANGE.end - 1
            ),
        ));
    }
    Ok(held.into_iter().map(|(port, _listener)| port).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports = free_ports(16).expect("free ports");
        assert_eq!(ports.len(), 16);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 16, "duplicates in {ports:?}");
        for port in ports {
            assert!(PORT_RANGE.contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).expect("free after the call");
        }
        assert!(PORT_RANGE.contains(&free_port().expect("a free port")));
    }
}
