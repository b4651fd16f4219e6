//! The metrics endpoint on real nodes (`metrics_port`): `/metrics` is scraped over HTTP and
//! parsed with a Prometheus text parser (`prometheus-parse`), as Prometheus would read it.
//! Counters move with requests, the role gauge follows an election, the leader shows lag
//! for a paused follower, `/readyz` fails on a partitioned node and recovers, `/healthz`
//! answers.
//!
//! Every check polls with a generous deadline: a scrape shows what the node loop last
//! published, a few milliseconds to a tick behind.

mod common;

use common::{put_request, Cluster, Wire, LEADER_DEADLINE, REPLY_DEADLINE};
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use std::time::{Duration, Instant};

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` on node `index`'s metrics port: status and body.
fn http_get(cluster: &Cluster, index: usize, path: &str) -> Option<(u16, String)> {
    rrmq::metrics::http::get(&cluster.metrics_address(index), path, HTTP_TIMEOUT)
}

/// Node `index`'s `/metrics`, parsed.
fn scrape_node(cluster: &Cluster, index: usize) -> Option<Scrape> {
    let (status, body) = http_get(cluster, index, "/metrics")?;
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    let lines = body.lines().map(|line| Ok(line.to_string()));
    Some(Scrape::parse(lines).expect("the exposition parses"))
}

/// The value of the sample `name` whose labels include `labels` (0 for a counter or series
/// not created yet is the caller's business: `None` here).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, wanted)| sample.labels.get(key) == Some(*wanted))
        })
        .and_then(|sample| match sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => Some(value),
            _ => None,
        })
}

/// Polls node `index`'s metrics until `check` holds; panics with the last scrape after
/// `within`.
fn wait_for_metrics(
    cluster: &Cluster,
    index: usize,
    within: Duration,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        if let Some(scrape) = scrape_node(cluster, index) {
            if check(&scrape) {
                return scrape;
            }
            if Instant::now() >= deadline {
                cluster.dump_logs();
                let shown: Vec<String> = scrape
                    .samples
                    .iter()
                    .map(|sample| {
                        format!("{} {:?} {:?}", sample.metric, sample.labels, sample.value)
                    })
                    .collect();
                panic!("node {index}: {what} not seen within {within:?}; last scrape:\n{shown:#?}");
            }
        } else {
            assert!(
                Instant::now() < deadline,
                "node {index}: /metrics did not answer within {within:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls node `index`'s `path` until it answers `status`; returns the body.
fn wait_for_status(
    cluster: &Cluster,
    index: usize,
    path: &str,
    status: u16,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some((got, body)) = http_get(cluster, index, path) {
            if got == status {
                return body;
            }
            last = Some((got, body));
        }
        if Instant::now() >= deadline {
            cluster.dump_logs();
            panic!(
                "node {index}: {path} did not answer {status} within {within:?}; last: {last:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Observations in the (unlabelled) histogram `name`: its `+Inf` bucket.
fn histogram_count(scrape: &Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .find(|sample| sample.metric == name)
        .map_or(0.0, |sample| match &sample.value {
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
            _ => 0.0,
        })
}

fn role(scrape: &Scrape, role: &str) -> Option<f64> {
    value(scrape, "rrmq_role", &[("role", role)])
}

fn put_ok(scrape: &Scrape) -> f64 {
    value(
        scrape,
        "rrmq_requests_total",
        &[("type", "put"), ("outcome", "ok")],
    )
    .unwrap_or(0.0)
}

/// PUTs `count` messages to `topic` through the leader, each answered with success.
fn put_messages(cluster: &Cluster, leader: usize, topic: &str, count: usize) {
    let mut client = cluster.client(leader);
    for number in 0..count {
        let reply = client
            .call_with_timeout(
                Wire::MsgPack,
                &put_request(topic, &format!("m{number}")),
                REPLY_DEADLINE,
            )
            .expect("a reply to the PUT");
        assert_eq!(reply["success"], true, "PUT {number}: {reply}");
    }
}

fn create_topic(cluster: &Cluster, leader: usize, topic: &str) {
    let mut client = cluster.client(leader);
    let reply = client
        .call_with_timeout(
            Wire::MsgPack,
            &common::create_topic_request(topic),
            REPLY_DEADLINE,
        )
        .expect("a reply to the topic create");
    assert_eq!(reply["success"], true, "{reply}");
}

#[test]
fn counters_move_with_requests_and_every_node_is_healthy_and_ready() {
    let cluster = Cluster::start_with_metrics(3, &[]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    for index in 0..3 {
        assert_eq!(
            wait_for_status(&cluster, index, "/healthz", 200, LEADER_DEADLINE),
            "ok\n"
        );
        wait_for_status(&cluster, index, "/readyz", 200, LEADER_DEADLINE);
        assert_eq!(
            http_get(&cluster, index, "/nothing-here").map(|(status, _)| status),
            Some(404)
        );
    }
    create_topic(&cluster, leader, "t");
    let before = scrape_node(&cluster, leader).expect("the leader's /metrics");
    let puts_before = put_ok(&before);
    let commits_before = value(&before, "rrmq_commits_total", &[]).expect("commits");
    let proposals_before = value(&before, "rrmq_proposals_total", &[]).expect("proposals");

    const PUTS: usize = 20;
    put_messages(&cluster, leader, "t", PUTS);
    let target = PUTS as f64;
    let after = wait_for_metrics(&cluster, leader, REPLY_DEADLINE, "the PUTs counted", |s| {
        put_ok(s) >= puts_before + target
            && value(s, "rrmq_commits_total", &[]).unwrap_or(0.0) >= commits_before + target
            && value(s, "rrmq_topic_messages", &[("topic", "t")]) == Some(target)
    });
    assert_eq!(
        put_ok(&after),
        puts_before + target,
        "each PUT counted once"
    );
    assert!(
        value(&after, "rrmq_proposals_total", &[]).expect("proposals") >= proposals_before + target
    );
    assert_eq!(role(&after, "leader"), Some(1.0));
    assert_eq!(role(&after, "follower"), Some(0.0));
    assert_eq!(value(&after, "rrmq_ready", &[]), Some(1.0));
    // The request latency histogram counted them too.
    let latency_count = after
        .samples
        .iter()
        .find(|sample| {
            sample.metric == "rrmq_request_duration_seconds"
                && sample.labels.get("type") == Some("put")
        })
        .map(|sample| match &sample.value {
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
            _ => 0.0,
        });
    assert!(latency_count.unwrap_or(0.0) >= target, "{latency_count:?}");
    // So did the WAL thread's syncs (counted under --fsync never too: the group is still
    // one sync call).
    assert!(histogram_count(&after, "rrmq_entries_per_fsync") >= 1.0);
    assert!(histogram_count(&after, "rrmq_fsync_duration_seconds") >= 1.0);

    // A client connection held open shows (the socket monitor counts it).
    let mut held = cluster.client(leader);
    held.call(
        Wire::MsgPack,
        &json!({"type": "status", "method": "GET", "v": 2}),
    );
    wait_for_metrics(
        &cluster,
        leader,
        REPLY_DEADLINE,
        "a client connection",
        |s| {
            value(s, "rrmq_client_connections", &[]).unwrap_or(0.0) >= 1.0
                && value(
                    s,
                    "rrmq_requests_total",
                    &[("type", "status"), ("outcome", "ok")],
                )
                .unwrap_or(0.0)
                    >= 1.0
        },
    );
    drop(held);

    // The followers apply the same entries and know who leads.
    for follower in (0..3).filter(|index| *index != leader) {
        let applied = value(&after, "rrmq_commit_index", &[]).expect("commit index");
        let scrape = wait_for_metrics(&cluster, follower, REPLY_DEADLINE, "caught up", |s| {
            value(s, "rrmq_applied_index", &[]).unwrap_or(0.0) >= applied
        });
        assert_eq!(role(&scrape, "follower"), Some(1.0));
        assert_eq!(value(&scrape, "rrmq_leader_id", &[]), Some(leader as f64));
    }
}

#[test]
fn role_gauge_follows_an_election_and_lag_appears_for_a_paused_follower() {
    let mut cluster = Cluster::start_with_metrics(3, &[]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    create_topic(&cluster, leader, "t");
    let paused = (leader + 1) % 3;
    let peer = paused.to_string();
    let lag = |scrape: &Scrape| value(scrape, "rrmq_peer_lag_entries", &[("peer", &peer)]);
    wait_for_metrics(&cluster, leader, REPLY_DEADLINE, "no lag at rest", |s| {
        lag(s) == Some(0.0)
    });

    cluster.signal(paused, libc::SIGSTOP);
    // A majority (the leader and the other follower) still commits.
    put_messages(&cluster, leader, "t", 10);
    let scrape = wait_for_metrics(
        &cluster,
        leader,
        REPLY_DEADLINE,
        "lag for the paused peer",
        // Published every 100 ms: a first look may predate the last PUTs.
        |s| lag(s).unwrap_or(0.0) >= 10.0,
    );
    assert!(lag(&scrape).unwrap_or(0.0) >= 10.0, "{:?}", lag(&scrape));
    let other = (0..3)
        .find(|index| *index != leader && *index != paused)
        .expect("a third node");
    cluster.signal(paused, libc::SIGCONT);
    wait_for_metrics(
        &cluster,
        leader,
        LEADER_DEADLINE,
        "the lag back to 0",
        |s| {
            lag(s) == Some(0.0)
                && value(s, "rrmq_peer_lag_entries", &[("peer", &other.to_string())]) == Some(0.0)
        },
    );

    // The leader dies: one of the others becomes leader, and its role gauge says so.
    let elections_won: Vec<f64> = (0..3)
        .map(|index| {
            scrape_node(&cluster, index)
                .and_then(|s| value(&s, "rrmq_elections_won_total", &[]))
                .unwrap_or(0.0)
        })
        .collect();
    cluster.kill(leader);
    let deadline = Instant::now() + LEADER_DEADLINE;
    let new_leader = loop {
        let found = (0..3).filter(|index| *index != leader).find(|index| {
            scrape_node(&cluster, *index).is_some_and(|s| role(&s, "leader") == Some(1.0))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader in the role gauges"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let scrape = scrape_node(&cluster, new_leader).expect("the new leader's metrics");
    assert_eq!(role(&scrape, "follower"), Some(0.0));
    assert_eq!(
        value(&scrape, "rrmq_leader_id", &[]),
        Some(new_leader as f64)
    );
    assert!(
        value(&scrape, "rrmq_elections_won_total", &[]).unwrap_or(0.0) > elections_won[new_leader]
    );
    assert!(value(&scrape, "rrmq_elections_started_total", &[]).unwrap_or(0.0) >= 1.0);
}

#[test]
fn readyz_fails_on_a_partitioned_node_and_recovers() {
    let cluster = Cluster::start_with_metrics(3, &["--fault-injection"]);
    let (leader, _) = cluster.wait_for_leader(LEADER_DEADLINE);
    let cut = (leader + 1) % 3;
    wait_for_status(&cluster, cut, "/readyz", 200, LEADER_DEADLINE);
    let others: Vec<usize> = (0..3).filter(|index| *index != cut).collect();
    let mut client = cluster.client(cut);
    let partition = json!({"type": "fault", "method": "PUT", "v": 2,
                           "drop_to": others, "drop_from": others});
    assert_eq!(client.call(Wire::MsgPack, &partition)["success"], true);

    // Cut off, it stops hearing the leader and, once its election timeout passes, knows
    // none; it still serves HTTP.
    let reason = wait_for_status(&cluster, cut, "/readyz", 503, LEADER_DEADLINE);
    assert!(reason.starts_with("not ready:"), "{reason}");
    assert_eq!(
        wait_for_status(&cluster, cut, "/healthz", 200, REPLY_DEADLINE),
        "ok\n"
    );
    let scrape = scrape_node(&cluster, cut).expect("the cut node's metrics");
    assert_eq!(value(&scrape, "rrmq_ready", &[]), Some(0.0));
    // The rest of the cluster stays ready (a leader and a follower are a majority).
    wait_for_status(&cluster, leader, "/readyz", 200, LEADER_DEADLINE);

    let heal = json!({"type": "fault", "method": "PUT", "v": 2, "drop_to": [], "drop_from": []});
    assert_eq!(client.call(Wire::MsgPack, &heal)["success"], true);
    wait_for_status(&cluster, cut, "/readyz", 200, LEADER_DEADLINE);
}
