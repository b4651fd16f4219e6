//! What a node adjusts and checks about its process and its exposure at startup, before it
//! serves: how its threads are scheduled, the limit on open files, and the warning that a
//! cluster without keys is open to whoever reaches its ports (PROTOCOL.md §11).
//!
//! Why here: both are about the host the node runs on, not about the node's state, and
//! `node::run` should read as the order of startup, not as its details.
//!
//! What it must not do: fail the start. A limit that cannot be raised or an address that is
//! open is the operator's choice; the node says so in its log and serves.

use crate::config::{NodeConfig, SchedPolicy};
use std::net::IpAddr;

/// Sets the scheduling policy of the calling thread, which every thread it starts from then
/// on inherits (threads are created with the creator's policy); so call it first, before
/// the node or libzmq starts any.
///
/// Why SCHED_BATCH by default: one request crosses several threads on the leader and on
/// each follower, and with the default policy every wake-up preempts the thread running,
/// which then hands over with one message where a moment later there would have been
/// several. Under SCHED_BATCH a woken thread waits for the running one to block or use up
/// its slice; idle CPUs still run it at once. Measured faster at every load and a lower
/// latency at one client (docs/PERFORMANCE.md, "SCHED_BATCH"). The timers (heartbeats every
/// 50 ms, elections after 300 ms) tolerate the few milliseconds a slice may add.
pub(crate) fn set_sched_policy(policy: SchedPolicy) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let policy = match policy {
            SchedPolicy::Batch => libc::SCHED_BATCH,
            SchedPolicy::Normal => libc::SCHED_OTHER,
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler only reads the struct it is given; pid 0 is this thread.
        if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = policy;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "scheduling policies are set on Linux only",
        ))
    }
}

/// What [`raise_open_files_limit`] did.
#[derive(Debug)]
pub(crate) enum OpenFilesLimit {
    /// The soft limit was below the hard limit and now equals it.
    Raised {
        from: u64,
        to: u64,
    },
    /// The soft limit already was the hard limit.
    AtHard(u64),
    Failed(std::io::Error),
}

/// Raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit.
///
/// Every client connection holds a file. At the limit libzmq cannot accept: new clients get
/// no greeting and its I/O thread retries the accept on every poll, spinning a core, while
/// connections already open keep being served (see `tests/hardening_resources.rs`). The
/// common soft default of 1024 is reached by a thousand idle clients; the hard limit
/// (often 512Ki or more) is what the operator allowed. The WAL and snapshots need files too,
/// and at the limit they fail.
pub(crate) fn raise_open_files_limit() -> OpenFilesLimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return OpenFilesLimit::Failed(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return OpenFilesLimit::AtHard(limit.rlim_cur);
    }
    let from = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return OpenFilesLimit::Failed(std::io::Error::last_os_error());
    }
    OpenFilesLimit::Raised {
        from,
        to: limit.rlim_max,
    }
}

impl OpenFilesLimit {
    pub(crate) fn log(&self) {
        match self {
            OpenFilesLimit::Raised { from, to } => {
                log::info!("open files: soft limit raised from {from} to the hard limit, {to}")
            }
            OpenFilesLimit::AtHard(limit) => {
                log::debug!("open files: soft limit already at the hard limit, {limit}")
            }
            OpenFilesLimit::Failed(error) => {
                log::warn!("open files: cannot raise the soft limit to the hard limit: {error}")
            }
        }
    }
}

/// Whether `host` (an IP literal, or `*` for every interface, as the transport binds it) is
/// reachable only from this machine.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host.parse::<IpAddr>()
        .map(|ip| ip.to_canonical().is_loopback())
        .unwrap_or(false)
}

/// PROTOCOL.md §11: without keys the cluster is open, and a node whose `ip` is not a
/// loopback address says so. With peer keys the peer port is closed to outsiders, but the
/// client port stays plain (client keys are not implemented yet), so that is still said.
pub(crate) fn warn_if_open_to_other_hosts(config: &NodeConfig) {
    let own = config.address();
    // The transport has resolved the same name moments ago; if it cannot now, the address
    // is not known to be loopback, so warn.
    let host = crate::transport::resolve_host(&own.ip).unwrap_or_else(|_| own.ip.clone());
    if is_loopback_host(&host) {
        return;
    }
    let resolved = if host == own.ip {
        String::new()
    } else {
        format!(" ({host})")
    };
    if config.cluster.is_keyed() {
        log::warn!(
            "node {} serves clients on {}{resolved} port {} without client keys: anyone who \
             reaches it can read, write and delete every topic; keep it behind a firewall",
            config.id,
            own.ip,
            own.port,
        );
        return;
    }
    log::warn!(
        "node {} serves on {}{resolved} without keys: anyone who reaches port {} can read, \
         write and delete every topic, and anyone who reaches port {} can pose as a cluster \
         member; bind a loopback address or keep both ports behind a firewall",
        config.id,
        own.ip,
        own.port,
        own.internal_port,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_count_as_loopback() {
        let cases = [
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("0.0.0.0", false),
            ("::", false),
            ("*", false),
            ("10.0.0.1", false),
            ("192.168.1.20", false),
            ("fe80::1", false),
            ("localhost", false), // a name: the caller resolves it first
        ];
        for (number, (host, loopback)) in cases.into_iter().enumerate() {
            assert_eq!(is_loopback_host(host), loopback, "case {number}: {host}");
        }
    }

    #[test]
    fn raising_the_open_files_limit_leaves_it_at_the_hard_limit() {
        let outcome = raise_open_files_limit();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert!(!matches!(outcome, OpenFilesLimit::Failed(_)), "{outcome:?}");
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_policy_set_on_a_thread_is_inherited_by_the_threads_it_starts() {
        // A thread of its own, so the test harness's threads keep their policy.
        let policies = std::thread::spawn(|| {
            // SAFETY: sched_getscheduler takes no pointer; pid 0 is the calling thread.
            let current = || unsafe { libc::sched_getscheduler(0) };
            set_sched_policy(SchedPolicy::Batch).expect("SCHED_BATCH needs no privilege");
            let own = current();
            let child = std::thread::spawn(current).join().expect("no panic");
            set_sched_policy(SchedPolicy::Normal).expect("back to SCHED_OTHER");
            let back = current();
            (own, child, back)
        })
        .join()
        .expect("no panic");
        assert_eq!(
            policies,
            (libc::SCHED_BATCH, libc::SCHED_BATCH, libc::SCHED_OTHER)
        );
    }
}
