//! `rrmq bench` arguments: what parses, what is refused before anything is sent, and the
//! plans a workload turns into.

use super::*;
use crate::cli::{Cli, Command, EXIT_USAGE};
use clap::Parser;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(["rrmq", "bench"].iter().chain(args.iter()).copied())
}

fn workload(args: &[&str]) -> Workload {
    match parse(args) {
        Ok(Cli {
            command: Command::Bench(args),
            ..
        }) => match args.workload {
            Some(BenchCommand::Workload(workload)) => workload,
            other => panic!("{other:?}"),
        },
        other => panic!("{args:?}: {other:?}"),
    }
}

const TIMING: Timing = Timing {
    attempt_timeout: Duration::from_secs(2),
    deadline: Duration::from_secs(10),
    hedge_after: None,
};

#[test]
fn sizes_parse_with_binary_suffixes() {
    let cases: [(&str, Option<usize>); 10] = [
        ("100", Some(100)),
        ("100B", Some(100)),
        ("1KiB", Some(1024)),
        ("1K", Some(1024)),
        ("2 MiB", Some(2 * 1024 * 1024)),
        ("0", Some(0)),
        ("", None),
        ("1.5K", None),
        ("10GiB", None),
        ("-1", None),
    ];
    for (number, (text, expected)) in cases.into_iter().enumerate() {
        assert_eq!(parse_size(text).ok(), expected, "case {number}: {text:?}");
    }
}

#[test]
fn clap_refuses_malformed_and_conflicting_arguments() {
    let bad: [&[&str]; 8] = [
        &["produce", "--count", "10", "--duration", "5s"],
        &["produce", "--count", "10", "--warmup", "1s"],
        &["produce", "--size", "lots"],
        &["produce", "--duration", "0"],
        &["--matrix", "produce"],
        &["--fsync", "never"],
        &["--matrix", "--cell", "mixed:4"],
        &["consume", "--messages", "-3"],
    ];
    for (number, args) in bad.iter().enumerate() {
        let error = parse(args).expect_err(&format!("case {number}: {args:?} accepted"));
        assert_eq!(error.exit_code(), i32::from(EXIT_USAGE), "case {number}");
    }
    let good: [&[&str]; 5] = [
        &["produce", "-c", "64", "--size", "1KiB", "--duration", "5s"],
        &["consume", "-c", "16", "--messages", "1000"],
        &["mixed", "--producers", "4", "--consumers", "4"],
        &["--matrix", "--fsync", "never", "--cell", "produce:64:100"],
        &[],
    ];
    for (number, args) in good.iter().enumerate() {
        parse(args).unwrap_or_else(|error| panic!("case {number}: {args:?}: {error}"));
    }
}

#[test]
fn validation_refuses_what_the_cluster_or_the_driver_cannot_take() {
    let cases: [(&[&str], &str); 9] = [
        (
            &["produce", "-c", "0"],
            "--clients must be between 1 and 300",
        ),
        (
            &["produce", "-c", "301"],
            "--clients must be between 1 and 300",
        ),
        (&["produce", "--count", "0"], "--count must be at least 1"),
        (&["produce", "--topics", "2"], "--topics must be between 1"),
        (&["produce", "--topics", "0"], "--topics must be between 1"),
        (&["produce", "--topic-prefix", ""], "--topic-prefix must be"),
        (&["produce", "--size", "65MiB"], "--size 68157440 is over"),
        (
            &["consume", "--messages", "0"],
            "--messages must be at least 1",
        ),
        (
            &["mixed", "--producers", "200", "--consumers", "101"],
            "--producers plus --consumers must be at most 300",
        ),
    ];
    for (number, (args, expected)) in cases.iter().enumerate() {
        let error = workload(args)
            .validate()
            .expect_err(&format!("case {number}: {args:?} accepted"));
        assert_eq!(error.exit_code(), EXIT_USAGE, "case {number}");
        assert!(
            error.to_string().contains(expected),
            "case {number}: {error} does not say {expected:?}"
        );
    }
    for (number, args) in [
        &["produce", "-c", "300", "--topics", "300", "--size", "1MiB"][..],
        &["consume", "-c", "1"][..],
    ]
    .iter()
    .enumerate()
    {
        workload(args)
            .validate()
            .unwrap_or_else(|error| panic!("case {number}: {args:?}: {error}"));
    }
}

#[test]
fn a_workload_without_one_or_the_matrix_is_a_usage_error() {
    let cli = parse(&[]).expect("bench alone parses");
    let Command::Bench(args) = &cli.command else {
        panic!("not bench: {cli:?}");
    };
    let error = run(&cli.global, args, &mut Vec::new()).expect_err("nothing to run");
    assert_eq!(error.exit_code(), EXIT_USAGE);
    assert!(error.to_string().contains("--matrix"), "{error}");
}

fn topics(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("t{index}")).collect()
}

fn topic_of(role: &Role) -> &str {
    match role {
        Role::Producer { topic } | Role::Consumer { topic, .. } => topic,
    }
}

#[test]
fn produce_spreads_clients_over_topics_and_runs_for_a_duration_or_a_count() {
    let phases = workload(&["produce", "-c", "5", "--topics", "2", "--size", "1KiB"]).phases(
        &topics(2),
        TIMING,
        false,
    );
    assert!(phases.fill.is_none());
    let plan = &phases.measure;
    let assigned: Vec<&str> = plan.roles.iter().map(topic_of).collect();
    assert_eq!(assigned, ["t0", "t1", "t0", "t1", "t0"]);
    assert!(plan
        .roles
        .iter()
        .all(|role| matches!(role, Role::Producer { .. })));
    assert_eq!(plan.message.len(), 1024);
    assert_eq!(plan.measure_for, Some(Duration::from_secs(10)), "default");
    assert_eq!(plan.put_count, None);
    assert_eq!(plan.timing, TIMING);
    assert_eq!(phases.parameters["clients"], "5");
    assert_eq!(phases.parameters["size"], "1 KiB");

    let phases = workload(&["produce", "--count", "500"]).phases(&topics(1), TIMING, false);
    assert_eq!(phases.measure.put_count, Some(500));
    assert_eq!(phases.measure.measure_for, None, "a count runs until spent");
    assert_eq!(phases.measure.warmup, Duration::ZERO);
}

#[test]
fn consume_fills_first_then_drains() {
    let phases = workload(&[
        "consume",
        "-c",
        "16",
        "--messages",
        "3000",
        "--fill-clients",
        "8",
        "--watch-pid",
        "42",
    ])
    .phases(&topics(1), TIMING, false);
    let fill = phases.fill.expect("consume fills");
    assert_eq!(fill.put_count, Some(3000));
    assert_eq!(fill.roles.len(), 8);
    assert!(fill.watch_pids.is_empty(), "the fill is not measured");
    let measure = &phases.measure;
    assert_eq!(measure.roles.len(), 16);
    assert!(measure.roles.iter().all(|role| matches!(
        role,
        Role::Consumer {
            until_empty: true,
            ..
        }
    )));
    assert_eq!(measure.measure_for, None, "until drained");
    assert_eq!(measure.watch_pids, vec![42]);

    let phases = workload(&["consume", "--messages", "5", "--fill-clients", "64"]).phases(
        &topics(1),
        TIMING,
        false,
    );
    assert_eq!(
        phases.fill.expect("consume fills").roles.len(),
        5,
        "no more fillers than messages"
    );
}

#[test]
fn mixed_runs_producers_and_patient_consumers() {
    let phases = workload(&[
        "mixed",
        "--producers",
        "3",
        "--consumers",
        "2",
        "--empty-pause",
        "5ms",
    ])
    .phases(&topics(1), TIMING, false);
    assert!(phases.fill.is_none(), "no pre-fill by default");
    let measure = &phases.measure;
    let producers = measure
        .roles
        .iter()
        .filter(|role| matches!(role, Role::Producer { .. }))
        .count();
    let patient = measure
        .roles
        .iter()
        .filter(|role| {
            matches!(
                role,
                Role::Consumer {
                    until_empty: false,
                    ..
                }
            )
        })
        .count();
    assert_eq!((producers, patient), (3, 2));
    assert_eq!(measure.empty_pause, Duration::from_millis(5));
    assert_eq!(measure.measure_for, Some(Duration::from_secs(10)));
}

#[test]
fn the_cluster_size_counts_the_leader_once() {
    use crate::protocol::PeerProgress;
    let peer = |id| PeerProgress {
        id,
        match_index: 0,
        next_index: 1,
        state: "replicate".to_string(),
    };
    let status = |peers: Vec<PeerProgress>| StatusReport {
        role: "Leader".to_string(),
        term: 1,
        id: 1,
        leader: Some(1),
        commit_index: 0,
        last_applied: 0,
        last_log_index: 0,
        peers,
        fsync: "always".to_string(),
        wal_syncs: 0,
        wal_entries: 0,
        requests: 0,
    };
    let cases: [(Vec<PeerProgress>, usize); 3] = [
        (vec![peer(0), peer(2)], 3),
        (vec![peer(0), peer(1), peer(2)], 3),
        (vec![], 1),
    ];
    for (number, (peers, expected)) in cases.into_iter().enumerate() {
        assert_eq!(voter_count(&status(peers)), expected, "case {number}");
    }
}

#[test]
fn a_consume_run_fills_a_fresh_topic_then_drains_it_and_reports_the_cluster() {
    use crate::client::fake_node::FakeNode;
    let leader = FakeNode::leader(None, 0);
    let follower = FakeNode::follower_of(&leader);
    let mut options = ClientOptions::new(vec![follower.address.clone(), leader.address.clone()]);
    options.attempt_timeout = Duration::from_secs(2);
    options.deadline = Duration::from_secs(10);
    let workload = workload(&[
        "consume",
        "-c",
        "3",
        "--messages",
        "40",
        "--fill-clients",
        "4",
    ]);

    let report = run_workload(options, &workload, false).expect("the run completes");

    assert_eq!(report.workload, "consume");
    assert_eq!(
        report.cluster.size, 2,
        "the leader and the follower in its progress"
    );
    assert_eq!(report.cluster.leader, Some(0));
    assert_eq!(report.cluster.nodes.len(), 2);
    for node in &report.cluster.nodes {
        assert_eq!(node.fsync.as_deref(), Some("always"), "{node:?}");
    }
    assert_eq!(report.parameters["messages"], "40");
    assert!(
        report.operation(OperationKind::Put).is_none(),
        "the fill is not measured"
    );
    let get = report
        .operation(OperationKind::Get)
        .expect("gets were measured");
    assert_eq!((get.completed, get.empty), (40, 3), "{get:?}");
    assert!(get.errors.is_empty(), "{get:?}");
    assert!(report.elapsed_seconds > 0.0);
    let at_leader = leader.session_keys();
    assert_eq!(
        at_leader.len(),
        1 + 40 + 43,
        "one topic creation, the fill's puts, the gets (each consumer's last one EMPTY)"
    );
}
