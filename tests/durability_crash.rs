//! Issue 4 acceptance, crash injection: under a concurrent write (and pop) load on a 3-node
//! cluster with `--fsync always`, a random node (often the leader) is SIGKILLed at random
//! moments and restarted, many times. At the end the nodes agree, and nothing acknowledged
//! is lost or duplicated: every acknowledged PUT is popped exactly once, in each writer's
//! order. The writers and consumers are the client library (`rrmq::client`), which retries
//! with the same `(client_id, seq)`, so a retry cannot duplicate; a request abandoned at its
//! deadline is "unknown" and may appear at most once.
//!
//! Knobs: `RRMQ_CRASH_ROUNDS` (kills, default 12), `RRMQ_CRASH_SEED` (replays the schedule
//! of kills; the timing of the machine is not replayed).

mod common;

use common::{create_topic_request, Cluster, SessionClient, LEADER_DEADLINE, REPLY_DEADLINE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rrmq::client::{Client, ClientError, ClientOptions, NodeAddress};
use rrmq::protocol::Payload;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 3;
const CONSUMERS: usize = 2;
const ROUNDS_DEFAULT: usize = 12;
/// How long one request may be retried before it is abandoned as "unknown".
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// How long one attempt waits before the client tries another node.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the cluster may take to make progress again after a kill.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(40);

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

#[derive(Default)]
struct Outcomes {
    /// Acknowledged PUTs.
    acked: BTreeSet<String>,
    /// PUTs abandoned at their deadline: may or may not have taken effect.
    unknown: BTreeSet<String>,
    /// What each consumer popped, in order.
    popped: Vec<Vec<String>>,
    /// GETs abandoned at their deadline: each may have popped a message nobody saw.
    pops_abandoned: usize,
}

/// `w<writer>-<number>` -> (writer, number).
fn parse(message: &str) -> (usize, usize) {
    let (writer, number) = message
        .strip_prefix('w')
        .and_then(|rest| rest.split_once('-'))
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    (
        writer.parse().expect("writer"),
        number.parse().expect("number"),
    )
}

/// Within `sequence`, each writer's messages come in the order it put them.
fn assert_writer_order(what: &str, sequence: &[String]) {
    let mut last: HashMap<usize, usize> = HashMap::new();
    for message in sequence {
        let (writer, number) = parse(message);
        if let Some(previous) = last.insert(writer, number) {
            assert!(
                previous < number,
                "{what}: {message} came after w{writer}-{previous:05}"
            );
        }
    }
}

/// A client library instance with this test's patience.
fn library_client(ports: &[u16]) -> Client {
    let nodes = ports
        .iter()
        .map(|port| NodeAddress::new("127.0.0.1", *port).expect("a valid address"))
        .collect();
    let options = ClientOptions {
        attempt_timeout: ATTEMPT_TIMEOUT,
        deadline: CALL_DEADLINE,
        ..ClientOptions::new(nodes)
    };
    Client::connect(options).expect("client options")
}

fn writer_thread(
    ports: Vec<u16>,
    writer: usize,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let mut client = library_client(&ports);
    let mut number = 0;
    while !stop.load(Ordering::SeqCst) {
        let message = format!("w{writer}-{number:05}");
        number += 1;
        let result = client.put("t", Payload::Text(message.clone()));
        let mut outcomes = outcomes.lock().unwrap_or_else(|poison| poison.into_inner());
        match result {
            Ok(()) => {
                outcomes.acked.insert(message);
                acked_count.fetch_add(1, Ordering::SeqCst);
            }
            // Far fewer clients than the session limit: the cluster must remember them all.
            Err(error @ ClientError::SessionExpired { .. }) => panic!("{message}: {error}"),
            Err(error) if error.is_outcome_unknown() => {
                eprintln!("{message}: outcome unknown: {error}");
                outcomes.unknown.insert(message);
            }
            Err(error) => panic!("{message}: {error}"),
        }
    }
}

fn consumer_thread(
    ports: Vec<u16>,
    consumer: usize,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let mut client = library_client(&ports);
    while !stop.load(Ordering::SeqCst) {
        let result = client.get("t");
        let mut outcomes = outcomes.lock().unwrap_or_else(|poison| poison.into_inner());
        match result {
            Ok(Some(Payload::Text(message))) => outcomes.popped[consumer].push(message),
            Ok(Some(Payload::Binary(bytes))) => panic!("a binary message {bytes:?}"),
            Ok(None) => {
                drop(outcomes);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error @ (ClientError::Timeout { .. } | ClientError::Unavailable { .. })) => {
                eprintln!("consumer {consumer}: a GET abandoned, outcome unknown: {error}");
                outcomes.pops_abandoned += 1;
            }
            Err(error) => panic!("consumer {consumer}: {error}"),
        }
    }
}

/// Waits until at least `more` further PUTs were acknowledged.
fn wait_for_progress(acked_count: &AtomicUsize, more: usize, cluster: &Cluster) {
    let target = acked_count.load(Ordering::SeqCst) + more;
    let deadline = Instant::now() + PROGRESS_DEADLINE;
    while acked_count.load(Ordering::SeqCst) < target {
        if Instant::now() > deadline {
            panic!(
                "no progress within {PROGRESS_DEADLINE:?}: {} acknowledged; statuses {:?}",
                acked_count.load(Ordering::SeqCst),
                cluster.statuses()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn random_sigkills_under_load_lose_and_duplicate_nothing_acknowledged() {
    let started = Instant::now();
    let rounds = env_number("RRMQ_CRASH_ROUNDS").map_or(ROUNDS_DEFAULT, |rounds| rounds as usize);
    let seed = env_number("RRMQ_CRASH_SEED").unwrap_or_else(rand::random);
    eprintln!("RRMQ_CRASH_SEED={seed} RRMQ_CRASH_ROUNDS={rounds}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let mut cluster = Cluster::start_with(3, &["--fsync", "always"]);
    cluster.wait_for_leader(LEADER_DEADLINE);
    let mut admin = SessionClient::new(&cluster, "admin");
    let reply = admin.call_ok(&create_topic_request("t"), REPLY_DEADLINE);
    assert_eq!(reply["success"], true, "{reply}");

    let ports: Vec<u16> = cluster.ports.iter().map(|ports| ports.port).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Outcomes {
        popped: vec![Vec::new(); CONSUMERS],
        ..Outcomes::default()
    }));
    let mut threads = Vec::new();
    for writer in 0..WRITERS {
        let (ports, stop, acked_count, outcomes) = (
            ports.clone(),
            stop.clone(),
            acked_count.clone(),
            outcomes.clone(),
        );
        threads.push(std::thread::spawn(move || {
            writer_thread(ports, writer, stop, acked_count, outcomes)
        }));
    }
    for consumer in 0..CONSUMERS {
        let (ports, stop, outcomes) = (ports.clone(), stop.clone(), outcomes.clone());
        threads.push(std::thread::spawn(move || {
            consumer_thread(ports, consumer, stop, outcomes)
        }));
    }

    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..rounds {
        // The load runs again (so a kill hits a working cluster), then a random moment.
        wait_for_progress(&acked_count, 3, &cluster);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        let leader = cluster.leader_now().map(|(leader, _)| leader);
        let victim = match leader {
            Some(leader) if rng.gen_bool(0.5) => leader,
            _ => rng.gen_range(0..cluster.size()),
        };
        let role = if Some(victim) == leader {
            "leader"
        } else {
            "other"
        };
        *kills.entry(role).or_default() += 1;
        eprintln!(
            "round {round}: SIGKILL node {victim} ({role}) after {} acknowledged",
            acked_count.load(Ordering::SeqCst)
        );
        cluster.kill(victim);
        // Sometimes the others take writes while it is down.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..600)));
        cluster.spawn(victim);
        assert!(
            cluster.wait_all_up(LEADER_DEADLINE),
            "round {round}: node {victim} restarts"
        );
    }
    wait_for_progress(&acked_count, 3, &cluster);
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().expect("client thread");
    }

    eprintln!("load stopped after {:?}", started.elapsed());
    cluster.wait_for_leader(LEADER_DEADLINE);
    let stats = cluster.wait_converged(
        cluster.leader_applied(LEADER_DEADLINE),
        Duration::from_secs(60),
    );
    eprintln!("converged after {:?}", started.elapsed());
    let drained = SessionClient::new(&cluster, "drainer").drain("t", Duration::from_secs(120));
    let outcomes = outcomes.lock().unwrap_or_else(|poison| poison.into_inner());
    assert_eq!(
        stats["message_count"].as_u64(),
        Some(drained.len() as u64),
        "the drain saw what every node held: {stats}"
    );

    // Each message handed out at most once, each writer's in order.
    for (consumer, popped) in outcomes.popped.iter().enumerate() {
        assert_writer_order(&format!("popped by consumer {consumer}"), popped);
    }
    assert_writer_order("drained", &drained);
    let mut seen = BTreeSet::new();
    for message in outcomes.popped.iter().flatten().chain(&drained) {
        assert!(seen.insert(message.clone()), "{message} handed out twice");
        assert!(
            outcomes.acked.contains(message) || outcomes.unknown.contains(message),
            "{message} was never put"
        );
    }
    // Nothing acknowledged lost (beyond what an abandoned GET may have taken).
    let lost: Vec<&String> = outcomes.acked.difference(&seen).collect();
    assert!(
        lost.len() <= outcomes.pops_abandoned,
        "{} acknowledged messages lost ({} GETs abandoned): {lost:?}",
        lost.len(),
        outcomes.pops_abandoned
    );

    let torn_tails: usize = (0..cluster.size())
        .map(|index| cluster.log(index).matches("cutting a torn tail").count())
        .sum();
    eprintln!(
        "{rounds} kills {kills:?}: {} acknowledged, {} unknown, {} popped under load, {} \
         drained, {} GETs abandoned, {torn_tails} torn tails cut, {:?} in all",
        outcomes.acked.len(),
        outcomes.unknown.len(),
        outcomes.popped.iter().map(Vec::len).sum::<usize>(),
        drained.len(),
        outcomes.pops_abandoned,
        started.elapsed()
    );
}
