//! The HTTP endpoint on `metrics_port`: `GET /metrics` (the OpenMetrics text of
//! [`Metrics`]), `/healthz` and `/readyz`; anything else is 404.
//!
//! Served by `tiny_http` on a thread of its own (`metrics`), never the node loop: a scrape
//! reads atomics and formats text, and a slow or stuck scraper holds up nobody but itself.
//! The listener is bound by [`MetricsServer::start`], before the node loop runs, so a port
//! in use is reported as the node's one startup error line.
//!
//! - `/healthz`: 200 while the process serves and its node loop keeps turning (the loop
//!   publishes at least once per tick); 503 if the loop has not turned for
//!   [`LOOP_STALL_MS`].
//! - `/readyz`: 200 when the node knows a leader and has applied up to the leader's
//!   commit index as last heard (the leader's own on the leader); 503 with a one-line
//!   reason otherwise (no leader: a partitioned or isolated node, an election; behind;
//!   halted; shutting down).

use super::Metrics;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

/// `/healthz` fails once the node loop has not turned for this long (it turns at least
/// once per tick, 50 ms by default, and a snapshot or a long log is worked off in slices).
pub const LOOP_STALL_MS: u64 = 30_000;

/// Called before each `/metrics` answer, on the HTTP thread: refreshes the values read at
/// scrape time (sizes on disk, the transport's counters).
pub type BeforeScrape = Box<dyn Fn(&Metrics) + Send>;

/// The metrics port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind http://{address} (metrics port): {reason}")]
pub struct MetricsBindError {
    pub address: String,
    pub reason: String,
}

/// The running endpoint; dropping it stops the thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `host:port` (host an IP literal) and starts the thread.
    pub fn start(
        host: &str,
        port: u16,
        metrics: Arc<Metrics>,
        before_scrape: BeforeScrape,
    ) -> Result<MetricsServer, MetricsBindError> {
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let bind_error = |error: &dyn std::fmt::Display| MetricsBindError {
            address: address.clone(),
            reason: without_os_error(&error.to_string()),
        };
        let listener = TcpListener::bind(&address).map_err(|error| bind_error(&error))?;
        no_delay(&listener);
        let server =
            tiny_http::Server::from_listener(listener, None).map_err(|error| bind_error(&error))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&serving, &metrics, &before_scrape))
            .map_err(|error| bind_error(&error))?;
        log::info!("serving /metrics, /healthz and /readyz on http://{address}");
        Ok(MetricsServer {
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the metrics thread panicked");
            }
        }
    }
}

/// Sets TCP_NODELAY on the listener, which Linux passes on to every accepted connection.
/// Without it a scraper that keeps its connection alive (Prometheus does) waits 40 ms for
/// every answer after the first: `tiny_http` writes the head and the body separately, and
/// Nagle holds the body back until the scraper's delayed ACK of the head.
fn no_delay(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor owned by `listener`, and a pointer to a c_int of the
    // length given, as setsockopt(2) requires.
    let result = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        log::warn!(
            "metrics port: TCP_NODELAY not set ({}); kept-alive scrapes may wait 40 ms",
            std::io::Error::last_os_error()
        );
    }
}

/// `Address already in use (os error 98)` -> `Address already in use`, as the other ports'
/// bind errors read.
fn without_os_error(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text.to_string(),
    }
}

fn serve(server: &tiny_http::Server, metrics: &Metrics, before_scrape: &BeforeScrape) {
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            // `unblock` (shutdown) or the listener failed: either way, done.
            Err(_) => return,
        };
        let (status, content_type, body) = answer(request.method(), request.url(), metrics, || {
            before_scrape(metrics)
        });
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
            .unwrap_or_else(|()| {
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain"[..])
                    .unwrap_or_else(|()| unreachable!("a constant, valid header"))
            });
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header);
        if let Err(error) = request.respond(response) {
            log::debug!("metrics: reply not sent: {error}");
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Status, content type and body for one request.
fn answer(
    method: &tiny_http::Method,
    url: &str,
    metrics: &Metrics,
    before_scrape: impl FnOnce(),
) -> (u16, &'static str, String) {
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return (405, TEXT, "only GET\n".to_string());
    }
    let path = url.split('?').next().unwrap_or(url);
    match path {
        "/metrics" => {
            before_scrape();
            (200, OPENMETRICS, metrics.encode())
        }
        "/healthz" => {
            let turned = metrics.readiness.loop_turned_ms();
            let now = metrics.clock_ms();
            if turned != 0 && now.saturating_sub(turned) > LOOP_STALL_MS {
                let seconds = now.saturating_sub(turned) / 1000;
                (
                    503,
                    TEXT,
                    format!("the node loop has not turned for {seconds} s\n"),
                )
            } else {
                (200, TEXT, "ok\n".to_string())
            }
        }
        "/readyz" => match metrics.readiness.check() {
            Ok(()) => (200, TEXT, "ready\n".to_string()),
            Err(reason) => (503, TEXT, format!("not ready: {reason}\n")),
        },
        _ => (
            404,
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    }
}

/// Reads `host:port`'s answer to `GET path`: status and body. For tests and tools
/// (`rrmq top` may scrape with it); `None` on any I/O or parse failure.
pub fn get(address: &str, path: &str, timeout: std::time::Duration) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let address: std::net::SocketAddr = address.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    parse_response(&response)
}

/// Status and body of a whole HTTP/1.1 response (plain or chunked body).
fn parse_response(response: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_string()));
    }
    let mut rest = body;
    let mut decoded = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some((status, decoded));
        }
        decoded.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_errors_read_like_the_other_ports() {
        assert_eq!(
            without_os_error("Address already in use (os error 98)"),
            "Address already in use"
        );
        assert_eq!(without_os_error("odd"), "odd");
    }

    #[test]
    fn the_listener_hands_out_connections_without_nagle() {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        no_delay(&listener);
        let address = listener.local_addr().expect("bound");
        let _client = std::net::TcpStream::connect(address).expect("connects");
        let (accepted, _) = listener.accept().expect("accepts");
        let mut value: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket and a c_int-sized buffer with its length, as getsockopt(2)
        // requires.
        let result = unsafe {
            libc::getsockopt(
                accepted.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                std::ptr::addr_of_mut!(value).cast(),
                &mut length,
            )
        };
        assert_eq!(result, 0);
        assert_ne!(value, 0, "the accepted connection inherits TCP_NODELAY");
    }

    #[test]
    fn chunked_and_plain_responses_parse() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nno\n";
        assert_eq!(parse_response(plain), Some((503, "no\n".to_string())));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, "abcde".to_string())));
    }

    #[test]
    fn endpoints_answer_by_path_and_readiness() {
        let metrics = Metrics::new();
        let get = tiny_http::Method::Get;
        let (status, _, body) = answer(&get, "/readyz", &metrics, || {});
        assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
        metrics
            .readiness
            .publish(super::super::NotReady::Behind, 3, 7, 1);
        let (status, _, body) = answer(&get, "/readyz", &metrics, || {});
        assert_eq!(status, 503);
        assert!(body.contains("applied 3 is behind the leader's commit index 7"));
        metrics
            .readiness
            .publish(super::super::NotReady::None, 7, 7, 1);
        assert_eq!(answer(&get, "/readyz?x", &metrics, || {}).0, 200);
        assert_eq!(answer(&get, "/healthz", &metrics, || {}).0, 200);
        assert_eq!(answer(&get, "/nope", &metrics, || {}).0, 404);
        assert_eq!(
            answer(&tiny_http::Method::Post, "/metrics", &metrics, || {}).0,
            405
        );
        let mut scraped = false;
        let (status, _, body) = answer(&get, "/metrics", &metrics, || scraped = true);
        assert!(scraped);
        assert_eq!(status, 200);
        assert!(body.contains("rrmq_role{role=\"leader\"} 0"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
