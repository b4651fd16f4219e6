//! End to end: the `rrmq` delivery commands (PROTOCOL.md §8–§10: leased GET, ACK, NACK,
//! TOUCH, dead letters, topic details, batches, `consume`) against a live three-node cluster
//! of `rrmq-node` processes, through the real `rrmq` binary. One cluster, one test walking
//! through the commands, because a cluster is expensive on a loaded machine; a second cluster
//! for the consumer SIGKILLed mid-work, whose message must come back after its lease and not
//! before (a kill there would disturb the walk-through).
//!
//! One step needs a GET that actually blocks (a waiter started before a PUT gets its
//! message); the other uses of `--wait` are correct with an answer at once too.

mod common;

use common::Cluster;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Exit codes documented in `rrmq --help`.
const EXIT_OK: i32 = 0;
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_STALE: i32 = 5;

/// The `topic list --detail --json` entry of `topic`.
fn detail(cluster: &Cluster, topic: &str) -> Value {
    let run = cluster.rrmq(&["--json", "topic", "list", "--detail"]);
    run.assert_code(EXIT_OK, "list --detail");
    run.json()["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|entry| entry["name"] == topic).cloned())
        .unwrap_or_else(|| panic!("no '{topic}' in {}", run.describe()))
}

/// `get --lease 30s --json`: the message and its receipt.
fn lease(cluster: &Cluster, topic: &str) -> (String, String, u64) {
    let run = cluster.rrmq(&["--json", "get", topic, "--lease", "30s"]);
    run.assert_code(EXIT_OK, "leased get");
    let value = run.json();
    let receipt = value["receipt"]
        .as_str()
        .unwrap_or_else(|| panic!("no receipt: {}", run.describe()))
        .to_string();
    let message = value["message"].as_str().expect("text").to_string();
    let deliveries = value["deliveries"].as_u64().expect("a count");
    (message, receipt, deliveries)
}

#[test]
fn rrmq_delivery_commands_lease_ack_nack_dead_letter_consume_and_batch() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader_via_rrmq();

    // put --batch: 2,500 lines in order, in three requests of at most 1,000.
    cluster
        .rrmq(&["topic", "create", "bulk"])
        .assert_code(EXIT_OK, "create bulk");
    let lines: Vec<String> = (0..2500).map(|number| format!("m{number:04}")).collect();
    let input = lines.join("\n") + "\n";
    let run = cluster.rrmq_with_stdin(&["--json", "put", "bulk", "--batch"], input.as_bytes());
    run.assert_code(EXIT_OK, "put --batch");
    assert_eq!(
        run.json(),
        json!({"topic": "bulk", "success": true, "count": 2500, "batches": 3})
    );
    let mut got: Vec<String> = Vec::new();
    while got.len() < lines.len() {
        let run = cluster.rrmq(&["--json", "get", "bulk", "--max", "1000"]);
        run.assert_code(EXIT_OK, "get --max");
        let value = run.json();
        let messages = value["messages"].as_array().expect("a list").clone();
        assert!(!messages.is_empty(), "{}", run.describe());
        got.extend(
            messages
                .iter()
                .map(|item| item["message"].as_str().expect("text").to_string()),
        );
    }
    assert_eq!(got, lines, "every line, in order");
    cluster
        .rrmq(&["get", "bulk", "--max", "5"])
        .assert_code(EXIT_NOT_FOUND, "batch get on an empty topic");

    // Lease, receipt printed, ACK, topic empty.
    cluster
        .rrmq(&["topic", "create", "work"])
        .assert_code(EXIT_OK, "create work");
    for message in ["first", "second"] {
        cluster
            .rrmq(&["put", "work", message])
            .assert_code(EXIT_OK, "put");
    }
    let (message, first_receipt, deliveries) = lease(&cluster, "work");
    assert_eq!((message.as_str(), deliveries), ("first", 1));
    let run = cluster.rrmq(&["get", "work", "--lease", "30s"]);
    run.assert_code(EXIT_OK, "leased get, human format");
    let text = run.stdout_text();
    let mut text_lines = text.lines();
    let header: Vec<&str> = text_lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header.len(), 4, "{text}");
    assert_eq!(
        (header[0], header[2], header[3]),
        ("receipt", "deliveries", "1")
    );
    let second_receipt = header[1].to_string();
    assert_eq!(text_lines.next(), Some("second"), "{text}");
    let leased = detail(&cluster, "work");
    assert_eq!(
        (&leased["ready"], &leased["leased"]),
        (&json!(0), &json!(2))
    );
    cluster
        .rrmq(&["touch", "work", &second_receipt, "--lease", "20s"])
        .assert_code(EXIT_OK, "touch a live lease");
    cluster
        .rrmq(&["ack", "work", &first_receipt])
        .assert_code(EXIT_OK, "ack");
    let run = cluster.rrmq(&["--json", "ack", "work", &second_receipt]);
    run.assert_code(EXIT_OK, "json ack");
    assert_eq!(run.json()["stale"], json!([]));
    let emptied = detail(&cluster, "work");
    assert_eq!(
        emptied,
        json!({"name": "work", "ready": 0, "leased": 0, "max_deliveries": null,
               "dead_letter": null, "discarded": 0})
    );
    cluster
        .rrmq(&["get", "work"])
        .assert_code(EXIT_NOT_FOUND, "nothing left after the ACKs");

    // A stale receipt: a clear error, exit 5, for every form.
    for (number, args) in [
        &["ack", "work", first_receipt.as_str()][..],
        &["nack", "work", second_receipt.as_str()],
        &["touch", "work", first_receipt.as_str(), "--lease", "5s"],
        &["ack", "work", "999999.1"],
    ]
    .iter()
    .enumerate()
    {
        let run = cluster.rrmq(args);
        run.assert_code(EXIT_STALE, &format!("case {number}: {args:?}"));
        assert!(run.stdout.is_empty(), "case {number}: {}", run.describe());
        assert!(
            run.stderr.starts_with("rrmq: stale receipt"),
            "case {number}: {}",
            run.describe()
        );
    }
    cluster
        .rrmq(&["put", "work", "third"])
        .assert_code(EXIT_OK, "put");
    let (_, live, _) = lease(&cluster, "work");
    let run = cluster.rrmq(&["--json", "ack", "work", &live, &first_receipt]);
    run.assert_code(EXIT_STALE, "a list with one stale receipt");
    assert_eq!(
        run.json(),
        json!({"topic": "work", "acked": 1, "stale": [first_receipt]})
    );
    assert!(run.stderr.contains(&first_receipt), "{}", run.describe());
    assert_eq!(
        detail(&cluster, "work")["leased"],
        0,
        "the live one took effect"
    );

    // NACK: the message comes back first, delivered twice.
    cluster
        .rrmq(&["topic", "create", "redo"])
        .assert_code(EXIT_OK, "create redo");
    for message in ["x", "y"] {
        cluster
            .rrmq(&["put", "redo", message])
            .assert_code(EXIT_OK, "put");
    }
    let (message, receipt, _) = lease(&cluster, "redo");
    assert_eq!(message, "x");
    cluster
        .rrmq(&["nack", "redo", &receipt])
        .assert_code(EXIT_OK, "nack");
    let (message, receipt, deliveries) = lease(&cluster, "redo");
    assert_eq!((message.as_str(), deliveries), ("x", 2), "back first");
    cluster
        .rrmq(&["ack", "redo", &receipt])
        .assert_code(EXIT_OK, "ack");
    let run = cluster.rrmq(&["get", "redo", "--wait", "1s"]);
    run.assert_code(EXIT_OK, "get --wait with a message ready");
    assert_eq!(run.stdout, b"y\n");
    cluster
        .rrmq(&["get", "redo", "--wait", "1s"])
        .assert_code(EXIT_NOT_FOUND, "get --wait on an empty topic ends EMPTY");

    // A blocking leased GET started on an empty topic gets the message of a PUT made after
    // it started (whichever reaches the leader first: the test cannot tell, and both must
    // end with the waiter holding the message).
    let config = cluster.config_path.to_str().expect("a UTF-8 temp path");
    let waiter = std::process::Command::new(common::RRMQ)
        .args([
            "--config", config, "--json", "get", "redo", "--lease", "30s",
        ])
        .args(["--wait", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn a blocking rrmq get");
    cluster
        .rrmq(&["put", "redo", "late"])
        .assert_code(EXIT_OK, "put while a GET waits");
    let output = waiter.wait_with_output().expect("the blocking get ends");
    assert_eq!(output.status.code(), Some(EXIT_OK), "{output:?}");
    let value: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(value["message"], "late", "{value}");
    let receipt = value["receipt"].as_str().expect("a receipt").to_string();
    cluster
        .rrmq(&["ack", "redo", &receipt])
        .assert_code(EXIT_OK, "ack the message the waiter got");

    // consume --exec false: NACKed each time, dead-lettered after two deliveries.
    let run = cluster.rrmq(&[
        "--json",
        "topic",
        "create",
        "poison",
        "--max-deliveries",
        "2",
        "--dead-letter",
        "dlq",
    ]);
    run.assert_code(EXIT_OK, "create with a delivery limit");
    assert_eq!(run.json(), json!({"topic": "poison", "created": true}));
    cluster
        .rrmq(&["put", "poison", "bad"])
        .assert_code(EXIT_OK, "put");
    let run = cluster.rrmq(&[
        "--json", "consume", "poison", "--exec", "false", "--count", "2", "--wait", "1s",
    ]);
    run.assert_code(EXIT_OK, "consume --exec false");
    let reports: Vec<Value> = run
        .stdout_text()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(reports.len(), 2, "{}", run.describe());
    assert!(reports.iter().all(|report| report["acked"] == false));
    assert_eq!(
        reports
            .iter()
            .map(|report| report["deliveries"].as_u64())
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    let poison = detail(&cluster, "poison");
    assert_eq!(
        poison,
        json!({"name": "poison", "ready": 0, "leased": 0, "max_deliveries": 2,
               "dead_letter": "dlq", "discarded": 0})
    );
    let run = cluster.rrmq(&["get", "dlq"]);
    run.assert_code(EXIT_OK, "the message is in the dead letter");
    assert_eq!(run.stdout, b"bad\n");
    let run = cluster.rrmq(&["topic", "list", "--detail"]);
    run.assert_code(EXIT_OK, "detail table");
    let table = run.stdout_text();
    assert!(table.starts_with("NAME"), "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with("poison "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row, ["poison", "0", "0", "2", "dlq", "0"], "{table}");

    // consume --exec 'cat >> FILE' --count 3: three ACKed, in order; the fourth stays.
    cluster
        .rrmq(&["topic", "create", "feed"])
        .assert_code(EXIT_OK, "create feed");
    cluster
        .rrmq_with_stdin(&["put", "feed", "--batch"], b"one\ntwo\nthree\nfour\n")
        .assert_code(EXIT_OK, "put --batch");
    let file = cluster.dir.path().join("consumed.txt");
    let command = format!("cat >> '{}'; echo >> '{}'", file.display(), file.display());
    cluster
        .rrmq(&[
            "consume", "feed", "--exec", &command, "--count", "3", "--wait", "1s",
        ])
        .assert_code(EXIT_OK, "consume --exec cat");
    let written = std::fs::read_to_string(&file).expect("the command wrote the file");
    assert_eq!(written, "one\ntwo\nthree\n");
    let feed = detail(&cluster, "feed");
    assert_eq!((&feed["ready"], &feed["leased"]), (&json!(1), &json!(0)));
    let run = cluster.rrmq(&["consume", "feed", "--count", "1", "--wait", "1s"]);
    run.assert_code(EXIT_OK, "consume prints");
    assert_eq!(run.stdout, b"four\n");
    assert_eq!(detail(&cluster, "feed")["ready"], 0, "printed and ACKed");

    // consume stops cleanly on SIGTERM: the message in hand is finished and ACKed, exit 0.
    // The command creates a file first, so the test knows the handlers are installed.
    cluster
        .rrmq(&["put", "feed", "last"])
        .assert_code(EXIT_OK, "put");
    let ready = cluster.dir.path().join("ready");
    let command = format!("touch '{}'; sleep 1; cat > /dev/null", ready.display());
    let mut consumer = std::process::Command::new(common::RRMQ)
        .args(["--config", config, "consume", "feed", "--wait", "1s"])
        .args(["--exec", &command])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn rrmq consume");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "the consumer never ran its command"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(consumer.id()).expect("a pid");
    // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = consumer.try_wait().expect("wait for the consumer") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "consume did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(EXIT_OK), "stopped cleanly: {status:?}");
    let feed = detail(&cluster, "feed");
    assert_eq!(
        (&feed["ready"], &feed["leased"]),
        (&json!(0), &json!(0)),
        "the message in hand was finished and ACKed"
    );
}

/// Kills a process group this test started, when dropped (also on a failed assertion, so no
/// `sleep` outlives the test).
struct GroupGuard {
    child: std::process::Child,
}

impl GroupGuard {
    /// SIGKILL to the whole group (`rrmq consume`, its `sh`, its `sleep`), then reaps the child.
    fn kill(&mut self) {
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group led by our own child, started with
            // `process_group(0)` and not yet waited for.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn rrmq_consumer_killed_mid_work_gets_its_message_redelivered_after_the_lease() {
    use std::os::unix::process::CommandExt;

    let cluster = Cluster::start(3);
    cluster.wait_for_leader_via_rrmq();
    cluster
        .rrmq(&["topic", "create", "jobs"])
        .assert_code(EXIT_OK, "create jobs");
    cluster
        .rrmq(&["put", "jobs", "job-1"])
        .assert_code(EXIT_OK, "put");

    // The lease cannot have been granted before this instant, so it cannot end before
    // `started + 2s`: every GET answered before then must be EMPTY.
    let config = cluster.config_path.to_str().expect("a UTF-8 temp path");
    let started = Instant::now();
    let lease = Duration::from_secs(2);
    let child = std::process::Command::new(common::RRMQ)
        .args(["--config", config, "consume", "jobs", "--lease", "2s"])
        .args(["--exec", "sleep 60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn rrmq consume");
    let mut consumer = GroupGuard { child };

    let deadline = Instant::now() + Duration::from_secs(60);
    while detail(&cluster, "jobs")["leased"] != json!(1) {
        assert!(Instant::now() < deadline, "the consumer never leased job-1");
        std::thread::sleep(Duration::from_millis(50));
    }
    consumer.kill();

    // Another consumer polls with non-blocking leased GETs until the lease has ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut empties = 0;
    let value = loop {
        let run = cluster.rrmq(&["--json", "get", "jobs", "--lease", "5s"]);
        let answered = Instant::now();
        if run.code == Some(EXIT_OK) {
            assert!(
                answered >= started + lease,
                "a GET got the message while the killed consumer's lease held: {}",
                run.describe()
            );
            break run.json();
        }
        run.assert_code(EXIT_NOT_FOUND, "EMPTY while the lease holds");
        empties += 1;
        assert!(
            Instant::now() < deadline,
            "job-1 was never redelivered ({empties} EMPTY answers)"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(value["message"], "job-1", "{value}");
    assert_eq!(value["deliveries"], 2, "the second delivery: {value}");
    let receipt = value["receipt"].as_str().expect("a receipt").to_string();
    cluster
        .rrmq(&["ack", "jobs", &receipt])
        .assert_code(EXIT_OK, "the second consumer ACKs");
    let done = detail(&cluster, "jobs");
    assert_eq!((&done["ready"], &done["leased"]), (&json!(0), &json!(0)));
}
