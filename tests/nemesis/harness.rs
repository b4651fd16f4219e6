//! One nemesis run, start to verdict: a real cluster (`rrmq-node` processes on loopback,
//! real data dirs, `--fsync always`, `--fault-injection`; keyed if the run says so, with the
//! workload as a listed client that may only produce and consume its topics, and the
//! harness's admin key for topics, faults and status), a concurrent workload through
//! the client library, the nemesis, a status sampler, then healing, a recovery probe, a
//! drain of every topic with a fresh client, a convergence check across nodes, and the
//! checker over the history file.
//!
//! Everything a run produces lives in the cluster's temp dir: `history.jsonl` and each
//! node's `node-{i}.log` and `data-{i}/`. On a violation the dir is kept and its path
//! printed with the violations and the history lines around them; the test then fails. The
//! dir is also kept when the harness itself fails (its path is printed at the start).

use crate::checker;
use crate::common::Cluster;
use crate::history::{self, Event, History, Outcome};
use crate::nemesis::{check_alive, FaultKind, Nemesis, Timing};
use crate::nodes::{Directory, Nodes};
use crate::workload::{self, Following};
use rrmq::client::{Client, ClientOptions, TopicSettings};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the cluster may take to accept a write once the last fault has healed. Generous:
/// elections take a second or two, a loaded 2-core machine stretches that.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(30);

/// How long the workload keeps running on the healed cluster before it stops.
const QUIET_AFTER_HEAL: Duration = Duration::from_secs(2);

/// How often every node's status is sampled.
const STATUS_INTERVAL: Duration = Duration::from_millis(200);

/// The drain gives up (and reports a problem) after this long without popping anything.
const DRAIN_STALL_MAX: Duration = Duration::from_secs(60);

/// How long the nodes may take to apply the same last index after the drain.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Names the run in the output.
    pub name: String,
    pub nodes: usize,
    /// How long faults are injected.
    pub duration: Duration,
    pub seed: u64,
    pub producers: usize,
    pub consumers: usize,
    /// Consumers that lease, ACK, NACK and "crash" (see `workload::lease_consume`).
    pub leasing_consumers: usize,
    /// Plain topics `t0`, `t1`, ...; the leased topics come on top (see [`LeasedTopics`]).
    pub topics: usize,
    pub timing: Timing,
    pub kinds: Vec<FaultKind>,
    /// CURVE on both ports (PROTOCOL.md §11): peer keys, and a `clients` list in which the
    /// workload's key may produce and consume `t*`, nothing else.
    pub keyed: bool,
    /// The membership nemesis: every this many faults (the second fault first) a random
    /// member is replaced by a fresh node while another fault holds (see
    /// [`FaultKind::Replace`]). Not with `keyed` (a keyed cluster cannot add a node yet).
    pub replace_every: Option<usize>,
}

/// The topics of leased delivery: `tl0` without a delivery limit, `tl1` with
/// `max_deliveries` and `tdl1` as its dead-letter topic. Producers put to the first two,
/// plain consumers pop `tl0` too (a pop must never take a leased message), leasing
/// consumers lease from all three.
struct LeasedTopics;

impl LeasedTopics {
    const FREE: &'static str = "tl0";
    const LIMITED: &'static str = "tl1";
    const DEAD_LETTER: &'static str = "tdl1";
    /// Low, so that messages given up on twice are dead-lettered often.
    const MAX_DELIVERIES: u64 = 2;
}

/// The workload's client name on a keyed cluster.
const WORKLOAD_CLIENT: &str = "workload";

/// Runs the whole thing; panics with the report if the checker finds a violation.
pub fn run(config: &RunConfig) {
    let started = Instant::now();
    let flags = ["--fsync", "always", "--fault-injection"];
    assert!(
        !(config.keyed && config.replace_every.is_some()),
        "a keyed cluster cannot add a node yet"
    );
    let cluster = if config.keyed {
        Cluster::start_with_clients(
            config.nodes,
            &flags,
            &[(
                WORKLOAD_CLIENT,
                serde_json::json!({"produce": ["t*"], "consume": ["t*"]}),
            )],
        )
    } else {
        Cluster::start_with(config.nodes, &flags)
    };
    let mut nodes = Nodes::new(cluster);
    let directory = nodes.directory.clone();
    let cluster = &mut nodes.cluster;
    // Kept unless the run passes: whatever fails (a check, or the harness itself), the
    // history and the nodes' logs and data stay for a look.
    cluster.dir.disable_cleanup(true);
    let history = History::create(&cluster.dir.path().join("history.jsonl"));
    println!(
        "nemesis {}: seed {} (rerun: RRMQ_NEMESIS_SEED={} RRMQ_NEMESIS_SECS={}), {} nodes{}, \
         {} s of faults, dir {}",
        config.name,
        config.seed,
        config.seed,
        config.duration.as_secs(),
        config.nodes,
        if config.keyed { ", keyed" } else { "" },
        config.duration.as_secs(),
        cluster.dir.path().display()
    );
    let ports: Vec<u16> = cluster.ports.iter().map(|ports| ports.port).collect();
    let options = cluster.library_options_as(WORKLOAD_CLIENT, workload::client_options(&ports));
    let plain: Vec<String> = (0..config.topics)
        .map(|index| format!("t{index}"))
        .collect();
    // Creating topics takes the admin right, which the workload lacks on a keyed cluster.
    let admin = cluster.library_options_as("harness", workload::client_options(&ports));
    create_topics(&admin, &history, &plain);
    create_leased_topics(&admin, &history);
    // Producers put to every topic but the dead-letter one; plain consumers pop the plain
    // topics and the free leased one; leasing consumers lease from the leased ones.
    let put_topics: Vec<String> = plain
        .iter()
        .cloned()
        .chain([
            LeasedTopics::FREE.to_string(),
            LeasedTopics::LIMITED.to_string(),
        ])
        .collect();
    let pop_topics: Vec<String> = plain
        .iter()
        .cloned()
        .chain([LeasedTopics::FREE.to_string()])
        .collect();
    let lease_topics: Vec<String> = [
        LeasedTopics::FREE,
        LeasedTopics::LIMITED,
        LeasedTopics::DEAD_LETTER,
    ]
    .map(str::to_string)
    .to_vec();
    let all_topics: Vec<String> = put_topics
        .iter()
        .cloned()
        .chain([LeasedTopics::DEAD_LETTER.to_string()])
        .collect();

    let stop_workload = AtomicBool::new(false);
    let stop_sampler = AtomicBool::new(false);
    // Worker 0 of each kind gives up early, so unknown outcomes happen; the rest wait.
    let impatient = ClientOptions {
        deadline: workload::IMPATIENT_DEADLINE,
        ..options.clone()
    };
    let options_of = |index: usize| if index == 0 { &impatient } else { &options };
    let faults = std::thread::scope(|scope| {
        let directory: &Directory = &directory;
        for index in 0..config.producers {
            let seed = config.seed.wrapping_add(1 + index as u64);
            let (history, options, topics, stop) =
                (&history, options_of(index), &put_topics, &stop_workload);
            scope.spawn(move || {
                workload::produce(history, directory, options, topics, index, seed, stop)
            });
        }
        for index in 0..config.consumers {
            let seed = config.seed.wrapping_add(1001 + index as u64);
            let (history, options, topics, stop) =
                (&history, options_of(index), &pop_topics, &stop_workload);
            scope.spawn(move || {
                workload::consume(history, directory, options, topics, index, seed, stop)
            });
        }
        for index in 0..config.leasing_consumers {
            let seed = config.seed.wrapping_add(2001 + index as u64);
            let (history, options, topics, stop) =
                (&history, options_of(index), &lease_topics, &stop_workload);
            scope.spawn(move || {
                let limited = LeasedTopics::LIMITED;
                workload::lease_consume(
                    history, directory, options, topics, limited, index, seed, stop,
                )
            });
        }
        scope.spawn(|| sample_status(&history, directory, &options, &stop_sampler));
        // Stops the workers however this closure ends: a panic here must not leave the scope
        // waiting forever for threads that loop until told to stop.
        let _stop = StopOnDrop(&[&stop_workload, &stop_sampler]);

        let mut nemesis = Nemesis::new(
            &mut nodes,
            &history,
            config.seed,
            config.timing.clone(),
            config.kinds.clone(),
        );
        if let Some(every) = config.replace_every {
            nemesis = nemesis.with_replacements(every, &flags);
        }
        let faults = nemesis.run(config.duration);
        let replaced = nemesis.replaced;
        drop(nemesis);
        // From here on, the current members only.
        let options = following(&options, directory);
        probe_recovery(&history, &options, &plain[0]);
        std::thread::sleep(QUIET_AFTER_HEAL);
        (faults, replaced)
    });
    let (faults, replaced) = faults;
    let options = following(&options, &directory);
    let admin = following(&admin, &directory);
    check_alive(&mut nodes, &history, &flags);
    drain(&history, &options, &all_topics);
    converge(&history, &options);
    check_membership(&history, &admin, &nodes);
    check_alive(&mut nodes, &history, &flags);

    let records = history::read(history.path());
    let (summary, violations) = checker::check(&records);
    println!(
        "nemesis {}: {faults} faults ({replaced} replacements; members now {:?}) in {:.1} s \
         (whole run {:.1} s)\n{}",
        config.name,
        nodes.members(),
        config.duration.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        summary.render()
    );
    if violations.is_empty() {
        println!(
            "nemesis {}: seed {}: no violation",
            config.name, config.seed
        );
        nodes.cluster.dir.disable_cleanup(false);
        return;
    }
    let text = std::fs::read_to_string(history.path()).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let report = checker::render(&violations, &lines, 4);
    nodes.kill_all();
    let kept = nodes.cluster.dir.path();
    panic!(
        "nemesis {}: seed {}: {} violations (checks: {:?}){report}\n\
         history and node logs kept in {} (history.jsonl, node-*.log, data-*/); rerun with \
         RRMQ_NEMESIS_SEED={}",
        config.name,
        config.seed,
        violations.len(),
        violations
            .iter()
            .map(|violation| violation.check)
            .collect::<std::collections::BTreeSet<_>>(),
        kept.display(),
        config.seed,
    );
}

/// Sets every flag when dropped.
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Creates the topics before any fault, retrying until each exists.
fn create_topics(options: &ClientOptions, history: &History, topics: &[String]) {
    for topic in topics {
        create_topic(options, history, topic, TopicSettings::default());
    }
}

/// Creates the [`LeasedTopics`], the dead-letter one first.
fn create_leased_topics(options: &ClientOptions, history: &History) {
    create_topic(
        options,
        history,
        LeasedTopics::DEAD_LETTER,
        TopicSettings::default(),
    );
    create_topic(
        options,
        history,
        LeasedTopics::FREE,
        TopicSettings::default(),
    );
    let limited = TopicSettings {
        max_deliveries: Some(LeasedTopics::MAX_DELIVERIES),
        dead_letter: Some(LeasedTopics::DEAD_LETTER.to_string()),
    };
    create_topic(options, history, LeasedTopics::LIMITED, limited);
}

/// Creates one topic, retrying until it exists, and records it with its settings.
fn create_topic(options: &ClientOptions, history: &History, topic: &str, settings: TopicSettings) {
    let mut client = workload::connect(options);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.create_topic_with(topic, settings.clone()) {
            Ok(_) => break,
            Err(error) => assert!(
                Instant::now() < deadline,
                "cannot create topic {topic}: {error}"
            ),
        }
    }
    history.record(Event::Topic {
        name: topic.to_string(),
        max_deliveries: settings.max_deliveries,
        dead_letter: settings.dead_letter,
    });
}

/// `options` with the current members' addresses, unless the membership never changed
/// (a keyed run's options carry the nodes' keys by address, and stay as they are).
fn following(options: &ClientOptions, directory: &Directory) -> ClientOptions {
    let (epoch, nodes) = directory.get();
    if epoch == 0 {
        return options.clone();
    }
    ClientOptions {
        nodes,
        ..options.clone()
    }
}

/// Records every member's status every [`STATUS_INTERVAL`] until `stop`.
fn sample_status(
    history: &History,
    directory: &Directory,
    options: &ClientOptions,
    stop: &AtomicBool,
) {
    let options = ClientOptions {
        attempt_timeout: Duration::from_millis(300),
        ..options.clone()
    };
    let mut client = Following::new(directory, &options);
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for (_, status) in client.client().status_all() {
            if let Ok(status) = status {
                history.record(Event::Status {
                    node: status.id,
                    role: status.role,
                    term: status.term,
                    leader: status.leader,
                    commit_index: status.commit_index,
                });
            }
        }
        std::thread::sleep(STATUS_INTERVAL.saturating_sub(round.elapsed()));
    }
}

/// Once every fault has healed: how long until the cluster takes a write?
fn probe_recovery(history: &History, options: &ClientOptions, topic: &str) {
    let started = Instant::now();
    let mut client = workload::connect(&ClientOptions {
        deadline: RECOVERY_BOUND,
        ..options.clone()
    });
    let outcome = workload::put(history, &mut client, "probe", topic, "probe-1");
    let elapsed = started.elapsed();
    history.record(Event::Recovery {
        ok: outcome == Outcome::Ok && elapsed <= RECOVERY_BOUND,
        elapsed_ms: elapsed.as_millis() as u64,
        bound_ms: RECOVERY_BOUND.as_millis() as u64,
    });
}

/// Pops every topic empty with a fresh client, recording each pop, until no topic has a
/// message left, ready or leased: messages under a lease (a "crashed" consumer's) come back
/// when it ends, or go to the dead-letter topic, so the drain goes round again until
/// `topic GET` with `detail` shows every topic empty. A long run may leave a long backlog,
/// so only a stall is a problem, not the time it takes.
fn drain(history: &History, options: &ClientOptions, topics: &[String]) {
    let mut client = workload::connect(options);
    let mut progress = Instant::now();
    loop {
        for topic in topics {
            loop {
                if progress.elapsed() > DRAIN_STALL_MAX {
                    history.record(Event::Note {
                        text: format!(
                            "the drain popped nothing for {DRAIN_STALL_MAX:?} (at {topic})"
                        ),
                        problem: true,
                    });
                    return;
                }
                match workload::get(history, &mut client, "drain", topic) {
                    (Outcome::Ok, None) => break,
                    (Outcome::Ok, Some(_)) => progress = Instant::now(),
                    // Unknown or failed: try again (the checker accounts for the uncertainty).
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        match client.list_topic_details() {
            Ok(details) => {
                let left: Vec<String> = details
                    .iter()
                    .filter(|detail| detail.ready + detail.leased > 0)
                    .map(|detail| {
                        format!(
                            "{}: {} ready, {} leased",
                            detail.name, detail.ready, detail.leased
                        )
                    })
                    .collect();
                if left.is_empty() {
                    break;
                }
                if progress.elapsed() > DRAIN_STALL_MAX {
                    history.record(Event::Note {
                        text: format!(
                            "the drain popped nothing for {DRAIN_STALL_MAX:?}; left: {}",
                            left.join(", ")
                        ),
                        problem: true,
                    });
                    return;
                }
            }
            Err(error) => history.record(Event::Note {
                text: format!("the drain could not list topics: {error}"),
                problem: false,
            }),
        }
        // Leases still running: they end within seconds.
        std::thread::sleep(Duration::from_millis(200));
    }
    history.record(Event::Note {
        text: "drain finished: every topic answered EMPTY, none with a message leased".to_string(),
        problem: false,
    });
}

/// Waits until every node has applied the same index, then compares their state digests.
fn converge(history: &History, options: &ClientOptions) {
    let mut client = workload::connect(options);
    let deadline = Instant::now() + CONVERGENCE_DEADLINE;
    let mut last;
    loop {
        let stats = client.stats_all();
        let reports: Vec<_> = stats
            .iter()
            .filter_map(|(_, report)| report.as_ref().ok())
            .collect();
        last = format!(
            "{:?}",
            reports
                .iter()
                .map(|report| (report.id, report.last_applied, report.digest))
                .collect::<Vec<_>>()
        );
        if reports.len() == stats.len() {
            let first = reports[0];
            if reports
                .iter()
                .all(|report| report.last_applied == first.last_applied)
            {
                let same = reports.iter().all(|report| {
                    report.digest == first.digest && report.message_count == first.message_count
                });
                history.record(Event::Convergence {
                    ok: same,
                    detail: format!("(node, last applied, digest): {last}"),
                });
                return;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    history.record(Event::Convergence {
        ok: false,
        detail: format!(
            "not every node applied the same index within {CONVERGENCE_DEADLINE:?}: (node, \
             last applied, digest): {last}"
        ),
    });
}

/// How long the members may take to agree on the membership after the drain.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(30);

/// Checks that every live member agrees on the membership: the leader's `member GET` lists
/// exactly the members the harness keeps running, all voters, at their addresses; each of
/// them answers `status` with its own id, the leader's term and the leader's id; the
/// leader replicates to exactly the others. Polled, as a follower that was just restarted
/// may still be catching up.
fn check_membership(history: &History, options: &ClientOptions, nodes: &Nodes) {
    let expected: Vec<u64> = nodes.members().iter().map(|id| *id as u64).collect();
    let mut client = workload::connect(options);
    let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
    let last = loop {
        let why = match members_agree(&mut client, nodes, &expected) {
            Ok(detail) => {
                history.record(Event::Membership { ok: true, detail });
                return;
            }
            Err(why) => why,
        };
        if Instant::now() > deadline {
            break why;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    history.record(Event::Membership {
        ok: false,
        detail: format!(
            "the members did not agree within {MEMBERSHIP_DEADLINE:?} on the membership \
             {expected:?} (all voters): {last}"
        ),
    });
}

fn members_agree(client: &mut Client, nodes: &Nodes, expected: &[u64]) -> Result<String, String> {
    let members = client
        .list_members()
        .map_err(|error| format!("member GET: {error}"))?;
    let mut listed: Vec<(u64, bool, u16)> = members
        .iter()
        .map(|member| (member.address.id, member.voter, member.address.port))
        .collect();
    listed.sort_unstable();
    let wanted: Vec<(u64, bool, u16)> = expected
        .iter()
        .map(|id| (*id, true, nodes.ports(*id as usize).port))
        .collect();
    if listed != wanted {
        return Err(format!(
            "member GET lists (id, voter, port) {listed:?}, the harness runs {wanted:?}"
        ));
    }
    let mut reports = Vec::new();
    for id in expected {
        let status = client
            .status_of(&nodes.address(*id as usize))
            .map_err(|error| format!("node {id} does not answer status: {error}"))?;
        if status.id != *id {
            return Err(format!("node {id}'s status says it is node {}", status.id));
        }
        reports.push(status);
    }
    let leaders: Vec<&rrmq::protocol::StatusReport> = reports
        .iter()
        .filter(|status| status.role == "Leader")
        .collect();
    let [leader] = leaders[..] else {
        return Err(format!(
            "{} members say they lead (roles {:?})",
            leaders.len(),
            reports
                .iter()
                .map(|status| (status.id, status.role.as_str(), status.term))
                .collect::<Vec<_>>()
        ));
    };
    if let Some(other) = reports
        .iter()
        .find(|status| status.term != leader.term || status.leader != Some(leader.id))
    {
        return Err(format!(
            "node {} is in term {} with leader {:?}, node {} leads term {}",
            other.id, other.term, other.leader, leader.id, leader.term
        ));
    }
    let mut replicated: Vec<u64> = leader.peers.iter().map(|peer| peer.id).collect();
    replicated.push(leader.id);
    replicated.sort_unstable();
    replicated.dedup();
    if replicated != expected {
        return Err(format!(
            "leader {} replicates to {:?} (itself included), not to the members {expected:?}",
            leader.id, replicated
        ));
    }
    Ok(format!(
        "members {expected:?}, all voters; node {} leads term {} and replicates to the others, \
         which follow it",
        leader.id, leader.term
    ))
}
