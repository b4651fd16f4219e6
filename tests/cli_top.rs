//! End to end: `rrmq top` in its non-terminal mode (stdout piped) against a live three-node
//! cluster while a background client puts messages: every refresh has a line per node with
//! exactly one leader and its term, the leader's requests/s becomes positive, the busy
//! topic's depth appears, and `--iterations` stops it by itself. Then a node is killed: top
//! shows it as down and still exits 0.

mod common;

use common::Cluster;
use rrmq::client::{Client, ClientOptions, NodeAddress};
use rrmq::protocol::Payload;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXIT_OK: i32 = 0;
const TOPIC: &str = "top-orders";

/// One node line of a refresh, as `key=value` pairs.
struct NodeLine {
    node: String,
    fields: Vec<(String, String)>,
    down: bool,
}

impl NodeLine {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// One refresh: its node lines and its topics line.
struct Refresh {
    nodes: Vec<NodeLine>,
    topics: String,
}

/// Groups top's lines by their timestamp (the first word); a refresh ends with its topics
/// line.
fn refreshes(stdout: &str) -> Vec<Refresh> {
    let mut refreshes = Vec::new();
    let mut nodes = Vec::new();
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        let _timestamp = words.next();
        let rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|word| word.starts_with("topics")) {
            refreshes.push(Refresh {
                nodes: std::mem::take(&mut nodes),
                topics: rest.join(" "),
            });
            continue;
        }
        let fields: Vec<(String, String)> = rest
            .iter()
            .filter_map(|word| word.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let node = fields
            .iter()
            .find(|(key, _)| key == "node")
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("a node line without node=: {line}"));
        nodes.push(NodeLine {
            node,
            fields,
            down: rest.contains(&"down"),
        });
    }
    refreshes
}

fn top(cluster: &Cluster, iterations: &str) -> (common::Run, Vec<Refresh>) {
    let run = cluster.rrmq(&["top", "--iterations", iterations, "--interval", "1s"]);
    run.assert_code(EXIT_OK, "top");
    let refreshes = refreshes(&run.stdout_text());
    assert_eq!(
        refreshes.len(),
        iterations.parse::<usize>().expect("a number"),
        "one refresh per iteration: {}",
        run.describe()
    );
    (run, refreshes)
}

#[test]
fn top_shows_every_node_the_leader_rates_and_topic_depths_then_a_node_down() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader_via_rrmq();
    cluster
        .rrmq(&["topic", "create", TOPIC])
        .assert_code(EXIT_OK, "create the topic");

    // A background producer, through the library client (leader following, retries).
    let stop = Arc::new(AtomicBool::new(false));
    let put = Arc::new(AtomicU64::new(0));
    let nodes: Vec<NodeAddress> = cluster
        .ports
        .iter()
        .map(|ports| NodeAddress::new("127.0.0.1", ports.port).expect("an address"))
        .collect();
    let producer = {
        let (stop, put) = (stop.clone(), put.clone());
        std::thread::spawn(move || {
            let mut options = ClientOptions::new(nodes);
            options.deadline = Duration::from_secs(30);
            let mut client = Client::connect(options).expect("a client");
            let mut number = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if client
                    .put(TOPIC, Payload::Text(format!("m{number}")))
                    .is_ok()
                {
                    put.fetch_add(1, Ordering::SeqCst);
                }
                number += 1;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while put.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the producer put nothing in 30s");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The rate needs two refreshes that both see the leader; an election in between (a
    // loaded machine) only delays it, so poll with a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (run, seen) = loop {
        let (run, seen) = top(&cluster, "3");
        let last = seen.last().expect("three refreshes");
        let rate_shown = last.nodes.iter().any(|node| {
            node.get("role") == Some("Leader")
                && node
                    .get("requests/s")
                    .and_then(|rate| rate.parse::<f64>().ok())
                    .is_some_and(|rate| rate > 0.0)
        });
        let depth_shown = last.topics.contains(&format!("{TOPIC} ready="))
            && !last.topics.contains(&format!("{TOPIC} ready=0 "));
        // An election between refreshes (a loaded machine) shows a refresh without a
        // leader: that run proves nothing either way, so top runs again.
        let one_leader_each = seen.iter().all(|refresh| {
            refresh
                .nodes
                .iter()
                .filter(|node| node.get("role") == Some("Leader"))
                .count()
                == 1
        });
        if rate_shown && depth_shown && one_leader_each {
            break (run, seen);
        }
        assert!(
            Instant::now() < deadline,
            "no run with one leader per refresh, positive requests/s on the leader and the \
             depth of {TOPIC} within 120s; last: {}",
            run.describe()
        );
    };
    stop.store(true, Ordering::SeqCst);
    producer.join().expect("the producer thread");

    for (number, refresh) in seen.iter().enumerate() {
        let mut ids: Vec<&str> = refresh
            .nodes
            .iter()
            .map(|node| node.node.as_str())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["0", "1", "2"], "refresh {number}: {}", run.describe());
        assert!(
            refresh.nodes.iter().all(|node| !node.down),
            "refresh {number}: all up: {}",
            run.describe()
        );
        let leaders: Vec<&NodeLine> = refresh
            .nodes
            .iter()
            .filter(|node| node.get("role") == Some("Leader"))
            .collect();
        assert_eq!(leaders.len(), 1, "refresh {number}: {}", run.describe());
        let term: u64 = leaders[0]
            .get("term")
            .and_then(|term| term.parse().ok())
            .unwrap_or_else(|| panic!("refresh {number}: a term: {}", run.describe()));
        assert!(term >= 1, "{}", run.describe());
        for node in &refresh.nodes {
            let node_term: u64 = node
                .get("term")
                .and_then(|term| term.parse().ok())
                .unwrap_or_else(|| panic!("refresh {number}: a term: {}", run.describe()));
            assert!(
                node_term <= term,
                "no node is ahead of the leader's term: {}",
                run.describe()
            );
            for key in ["commit", "applied", "lag", "fsyncs/s", "entries/fsync"] {
                assert!(
                    node.get(key).is_some(),
                    "{key} on every line: {}",
                    run.describe()
                );
            }
        }
    }
    assert!(
        seen[0]
            .nodes
            .iter()
            .all(|node| node.get("requests/s") == Some("-")),
        "no rate on the first refresh: {}",
        run.describe()
    );

    // A killed node is shown as down, and top still exits 0 after its iterations.
    let leader_line = seen
        .last()
        .and_then(|refresh| {
            refresh
                .nodes
                .iter()
                .find(|node| node.get("role") == Some("Leader"))
        })
        .map(|node| node.node.clone())
        .expect("a leader");
    let victim = if leader_line == "2" { 1 } else { 2 };
    cluster.kill(victim);
    let (run, seen) = top(&cluster, "2");
    let victim_line = seen
        .last()
        .and_then(|refresh| {
            refresh
                .nodes
                .iter()
                .find(|node| node.node == victim.to_string())
        })
        .unwrap_or_else(|| panic!("node {victim} still listed: {}", run.describe()));
    assert!(
        victim_line.down,
        "node {victim} is down: {}",
        run.describe()
    );
}
