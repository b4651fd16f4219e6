//! Where a node serves clients: a host and a port, as an operator writes them (`--node
//! HOST:PORT`) or as a config or a leader hint gives them.
//!
//! Parsing lives here so that every address the client connects to has been checked once:
//! the `zmq` crate panics on an endpoint containing a NUL byte, so nothing unchecked may
//! reach `connect`.

use std::fmt;
use std::str::FromStr;

/// A node's client address. Hosts are kept as written (an IPv4 or IPv6 address or a host
/// name): nodes report their leader with the host from the cluster config, so comparing
/// strings finds the same node again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    /// Without brackets, also for IPv6.
    pub host: String,
    pub port: u16,
}

/// Why a `HOST:PORT` string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad node address '{input}': {reason} (expected HOST:PORT, e.g. 127.0.0.1:8567 or [::1]:8567)"
)]
pub struct AddressError {
    pub input: String,
    pub reason: &'static str,
}

impl NodeAddress {
    /// Checks a host and port from a trusted-shape source (a config, a leader hint).
    pub fn new(host: impl Into<String>, port: u16) -> Result<NodeAddress, AddressError> {
        let host = host.into();
        let fail = |reason| AddressError {
            input: format!("{host}:{port}"),
            reason,
        };
        if host.is_empty() {
            return Err(fail("the host is empty"));
        }
        if host
            .chars()
            .any(|character| character.is_control() || character.is_whitespace())
        {
            return Err(fail("the host contains a blank or control character"));
        }
        if host.contains(['/', '[', ']']) {
            return Err(fail("the host contains '/', '[' or ']'"));
        }
        if port == 0 {
            return Err(fail("port 0 is not a port one can connect to"));
        }
        Ok(NodeAddress { host, port })
    }

    /// The ZeroMQ endpoint, `tcp://host:port`, with IPv6 addresses bracketed.
    pub fn endpoint(&self) -> String {
        format!("tcp://{self}")
    }

    fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6() {
            write!(formatter, "[{}]:{}", self.host, self.port)
        } else {
            write!(formatter, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for NodeAddress {
    type Err = AddressError;

    /// `HOST:PORT`, `[IPV6]:PORT`; an optional `tcp://` prefix is accepted.
    fn from_str(input: &str) -> Result<NodeAddress, AddressError> {
        let fail = |reason| AddressError {
            input: input.to_string(),
            reason,
        };
        let text = input.strip_prefix("tcp://").unwrap_or(input);
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| fail("'[' without a matching ']'"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| fail("no ':PORT' after ']'"))?;
            (host, port)
        } else {
            let (host, port) = text.rsplit_once(':').ok_or_else(|| fail("no ':PORT'"))?;
            if host.contains(':') {
                return Err(fail("an IPv6 address must be written in brackets"));
            }
            (host, port)
        };
        let port: u16 = port
            .parse()
            .map_err(|_| fail("the port is not a number from 1 to 65535"))?;
        NodeAddress::new(host, port).map_err(|error| fail(error.reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_refuses_what_zmq_cannot_take() {
        let cases: [(&str, Option<(&str, u16)>); 14] = [
            ("127.0.0.1:8567", Some(("127.0.0.1", 8567))),
            ("localhost:1", Some(("localhost", 1))),
            ("tcp://10.0.0.1:9123", Some(("10.0.0.1", 9123))),
            ("[::1]:8889", Some(("::1", 8889))),
            ("[fe80::1]:65535", Some(("fe80::1", 65535))),
            ("::1:8889", None),
            ("127.0.0.1", None),
            ("127.0.0.1:", None),
            ("127.0.0.1:0", None),
            ("127.0.0.1:65536", None),
            (":8567", None),
            ("[::1]8889", None),
            ("bad\0host:1", None),
            ("a b:1", None),
        ];
        for (number, (input, expected)) in cases.into_iter().enumerate() {
            let parsed = input.parse::<NodeAddress>();
            match expected {
                Some((host, port)) => {
                    let address = parsed.unwrap_or_else(|error| panic!("case {number}: {error}"));
                    assert_eq!(
                        (address.host.as_str(), address.port),
                        (host, port),
                        "case {number}"
                    );
                }
                None => assert!(parsed.is_err(), "case {number}: {input:?} accepted"),
            }
        }
    }

    #[test]
    fn endpoint_brackets_ipv6_only() {
        let v4 = NodeAddress::new("127.0.0.1", 8567).expect("valid");
        let v6 = NodeAddress::new("::1", 8567).expect("valid");
        assert_eq!(v4.endpoint(), "tcp://127.0.0.1:8567");
        assert_eq!(v6.endpoint(), "tcp://[::1]:8567");
        assert_eq!(v6.to_string().parse::<NodeAddress>(), Ok(v6));
    }
}
