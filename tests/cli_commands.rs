//! End to end: the `rrmq` commands against a live three-node cluster of `rrmq-node`
//! processes. One cluster, one test walking through the commands in order, because a
//! cluster is expensive on a loaded machine and the steps build on each other.

mod common;

use common::Cluster;

/// Exit codes documented in `rrmq --help`.
const EXIT_OK: i32 = 0;
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_FOUND: i32 = 3;

#[test]
fn rrmq_commands_drive_a_three_node_cluster() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader_via_rrmq();

    // Topics: none, then created once, then listed.
    let run = cluster.rrmq(&["topic", "list"]);
    run.assert_code(EXIT_OK, "list with no topics");
    assert!(run.stdout.is_empty(), "{}", run.describe());
    let run = cluster.rrmq(&["--json", "topic", "list"]);
    run.assert_code(EXIT_OK, "json list with no topics");
    assert_eq!(run.json(), serde_json::json!({"topics": []}));

    let run = cluster.rrmq(&["topic", "create", "orders"]);
    run.assert_code(EXIT_OK, "create");
    assert!(run.stdout_text().contains("created"), "{}", run.describe());
    let run = cluster.rrmq(&["--json", "topic", "create", "orders"]);
    run.assert_code(EXIT_OK, "create again");
    assert_eq!(
        run.json(),
        serde_json::json!({"topic": "orders", "created": false})
    );
    cluster
        .rrmq(&["topic", "create", "audit"])
        .assert_code(EXIT_OK, "create a second topic");
    let run = cluster.rrmq(&["topic", "list"]);
    run.assert_code(EXIT_OK, "list");
    assert_eq!(run.stdout_text(), "orders\naudit\n", "creation order");

    // Messages: an argument, text from stdin, binary from stdin; FIFO, byte for byte.
    let binary: &[u8] = &[0, 255, b'\n', 128, 0, 13];
    let run = cluster.rrmq(&["put", "orders", "hello world"]);
    run.assert_code(EXIT_OK, "put an argument");
    assert!(run.stdout.is_empty(), "put is quiet: {}", run.describe());
    cluster
        .rrmq_with_stdin(&["put", "orders", "-"], b"line one\nline two\n")
        .assert_code(EXIT_OK, "put text from stdin");
    cluster
        .rrmq_with_stdin(&["put", "orders", "-"], binary)
        .assert_code(EXIT_OK, "put binary from stdin");
    let run = cluster.rrmq(&["--json", "put", "orders", "fourth"]);
    run.assert_code(EXIT_OK, "json put");
    assert_eq!(run.json()["success"], true);

    let run = cluster.rrmq(&["get", "orders"]);
    run.assert_code(EXIT_OK, "get the argument");
    assert_eq!(run.stdout, b"hello world\n", "text gets a newline");
    let run = cluster.rrmq(&["get", "--raw", "orders"]);
    run.assert_code(EXIT_OK, "get stdin text raw");
    assert_eq!(
        run.stdout, b"line one\nline two\n",
        "--raw keeps text exact"
    );
    let run = cluster.rrmq(&["get", "orders"]);
    run.assert_code(EXIT_OK, "get binary");
    assert_eq!(run.stdout, binary, "binary comes back byte for byte");
    let run = cluster.rrmq(&["--json", "get", "orders"]);
    run.assert_code(EXIT_OK, "json get");
    assert_eq!(
        run.json(),
        serde_json::json!({"topic": "orders", "message": "fourth", "binary": false})
    );

    // Empty and missing topics: exit 3, nothing on stdout, one line on stderr.
    for (number, args) in [
        &["get", "orders"][..],
        &["get", "missing"],
        &["put", "missing", "x"],
    ]
    .iter()
    .enumerate()
    {
        let run = cluster.rrmq(args);
        run.assert_code(EXIT_NOT_FOUND, &format!("case {number}: {args:?}"));
        assert!(run.stdout.is_empty(), "case {number}: {}", run.describe());
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "case {number}: {}",
            run.describe()
        );
        assert!(run.stderr.starts_with("rrmq: "), "case {number}");
    }

    // Usage errors exit 2.
    cluster
        .rrmq(&["put", "orders"])
        .assert_code(EXIT_USAGE, "missing argument");

    // Status: a row per node, exactly one leader, the same in JSON.
    let run = cluster.rrmq(&["status"]);
    run.assert_code(EXIT_OK, "status");
    let text = run.stdout_text();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .take(3)
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert_eq!(
        rows.iter().filter(|cells| cells[2] == "Leader").count(),
        1,
        "{text}"
    );
    assert!(
        rows.iter()
            .all(|cells| cells[2] == "Leader" || cells[2] == "Follower"),
        "{text}"
    );
    let run = cluster.rrmq(&["--json", "status"]);
    run.assert_code(EXIT_OK, "json status");
    let status = run.json();
    let nodes = status["nodes"].as_array().expect("a node list");
    assert_eq!(nodes.len(), 3, "{status}");
    assert!(
        nodes.iter().all(|node| node["reachable"] == true),
        "{status}"
    );
    let leaders: Vec<&serde_json::Value> = nodes
        .iter()
        .filter(|node| node["role"] == "Leader")
        .collect();
    assert_eq!(leaders.len(), 1, "{status}");
    assert!(nodes
        .iter()
        .all(|node| node["commit_index"].as_u64().is_some()));

    // --node: one follower's address is enough, the leader hint does the rest.
    let follower = (0..3)
        .find(|&id| id != leader as usize)
        .expect("a follower");
    let address = format!("127.0.0.1:{}", cluster.ports[follower].port);
    let run = cluster.rrmq(&["--node", &address, "topic", "list"]);
    run.assert_code(EXIT_OK, "list through a follower");
    assert_eq!(run.stdout_text(), "orders\naudit\n");

    // A follower down: status says so and still succeeds; the majority still serves.
    cluster.kill(follower);
    let run = cluster.rrmq(&["--attempt-timeout", "1s", "status"]);
    run.assert_code(EXIT_OK, "status with a node down");
    let text = run.stdout_text();
    let down = text
        .lines()
        .find(|line| line.contains("unreachable"))
        .unwrap_or_else(|| panic!("no unreachable row: {text}"));
    assert!(down.starts_with(&follower.to_string()), "{text}");
    cluster
        .rrmq(&["put", "audit", "still here"])
        .assert_code(EXIT_OK, "put with a node down");
    let run = cluster.rrmq(&["get", "audit"]);
    run.assert_code(EXIT_OK, "get with a node down");
    assert_eq!(run.stdout, b"still here\n");
}
