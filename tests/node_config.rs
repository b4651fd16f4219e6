//! PROTOCOL.md §1: a node refuses a bad configuration with one clear stderr line and a
//! non-zero exit, without a panic or a backtrace.

mod common;

use common::run_to_exit;
use rrmq::cli::launcher::{config_json, NodePorts};
use std::time::Duration;

const EXIT_DEADLINE: Duration = Duration::from_secs(20);

fn three_nodes() -> Vec<NodePorts> {
    NodePorts::free(3).expect("free loopback ports")
}

/// Runs the node and asserts it failed with exactly the line `expected` (a prefix when
/// `expected` ends with `…`).
fn assert_refused(dir: &std::path::Path, args: &[&str], expected: &str) {
    let (status, stderr) = run_to_exit(dir, args, EXIT_DEADLINE);
    let status = status.unwrap_or_else(|| panic!("{args:?}: did not exit; stderr: {stderr}"));
    assert!(!status.success(), "{args:?}: exit status {status}");
    assert!(status.code().is_some(), "{args:?}: killed by a signal");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one stderr line, got: {stderr}");
    match expected.strip_suffix('…') {
        Some(prefix) => assert!(lines[0].starts_with(prefix), "{args:?}: {stderr}"),
        None => assert_eq!(lines[0], expected, "{args:?}"),
    }
}

#[test]
fn bad_config_files_give_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = config_json("127.0.0.1", &three_nodes());
    let duplicate = r#"{"addresses": [
        {"ip": "127.0.0.1", "port": 20001, "internal_port": 20002},
        {"ip": "127.0.0.1", "port": 20001, "internal_port": 20003}]}"#;
    let files = [
        ("good.json", good.as_str()),
        ("broken.json", "{\"addresses\": [ {\"ip\": "),
        ("duplicate.json", duplicate),
        ("empty.json", r#"{"addresses": []}"#),
        (
            "port.json",
            r#"{"addresses": [{"ip": "127.0.0.1", "port": 99999, "internal_port": 2}]}"#,
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let cases: &[(&[&str], &str)] = &[
        (
            &["missing.json", "0"],
            "rrmq-node: missing.json: cannot read: No such file or directory (os error 2)",
        ),
        (
            &["broken.json", "0"],
            "rrmq-node: broken.json: invalid JSON: EOF while parsing a value at line 1 column 23",
        ),
        (
            &["good.json", "5"],
            "rrmq-node: good.json: index 5 out of range (3 nodes)",
        ),
        (
            &["duplicate.json", "0"],
            "rrmq-node: duplicate.json: duplicate address 127.0.0.1:20001 (addresses[0] and \
             addresses[1])",
        ),
        (
            &["empty.json", "0"],
            "rrmq-node: empty.json: the address list is empty",
        ),
        (
            &["port.json", "0"],
            "rrmq-node: port.json: addresses[0].port: 99999 is not a valid port (1-65535)",
        ),
        (
            &["good.json", "0", "--heartbeat-ms", "400"],
            "rrmq-node: --heartbeat-ms: 400 ms must be below the minimum election timeout \
             (300 ms), or followers start elections against a live leader",
        ),
        (
            &["good.json"],
            "rrmq-node: the following required arguments were not provided…",
        ),
        (
            &["good.json", "-1"],
            "rrmq-node: unexpected argument '-1' found…",
        ),
        (
            &["good.json", "0", "--fsync", "sometimes"],
            "rrmq-node: invalid value 'sometimes'…",
        ),
    ];
    for (args, expected) in cases {
        assert_refused(dir.path(), args, expected);
    }
}

#[test]
fn a_port_in_use_gives_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = three_nodes();
    std::fs::write(
        dir.path().join("config.json"),
        config_json("127.0.0.1", &ports),
    )
    .expect("write");
    let data = dir.path().join("data");
    let data = data.to_str().expect("UTF-8 path");

    let taken = std::net::TcpListener::bind(("127.0.0.1", ports[1].port)).expect("bind");
    assert_refused(
        dir.path(),
        &["config.json", "1", "--data-dir", data],
        &format!(
            "rrmq-node: cannot bind tcp://127.0.0.1:{} (client port): Address already in use",
            ports[1].port
        ),
    );
    drop(taken);

    let taken = std::net::TcpListener::bind(("127.0.0.1", ports[2].internal_port)).expect("bind");
    assert_refused(
        dir.path(),
        &["config.json", "2", "--data-dir", data],
        &format!(
            "rrmq-node: cannot bind tcp://127.0.0.1:{} (internal port): Address already in use",
            ports[2].internal_port
        ),
    );
    drop(taken);
}

#[test]
fn a_metrics_port_in_use_or_repeated_gives_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = NodePorts::free(1).expect("free loopback ports");
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let metrics_port = taken.local_addr().expect("local address").port();
    let config = |metrics_port: u16| {
        format!(
            r#"{{"addresses": [{{"ip": "127.0.0.1", "port": {}, "internal_port": {},
                "metrics_port": {metrics_port}}}]}}"#,
            ports[0].port, ports[0].internal_port
        )
    };
    std::fs::write(dir.path().join("config.json"), config(metrics_port)).expect("write");
    let data = dir.path().join("data");
    let data = data.to_str().expect("UTF-8 path");
    assert_refused(
        dir.path(),
        &["config.json", "0", "--data-dir", data],
        &format!(
            "rrmq-node: cannot bind http://127.0.0.1:{metrics_port} (metrics port): Address \
             already in use"
        ),
    );
    drop(taken);
    std::fs::write(dir.path().join("config.json"), config(ports[0].port)).expect("write");
    assert_refused(
        dir.path(),
        &["config.json", "0", "--data-dir", data],
        &format!(
            "rrmq-node: config.json: duplicate address 127.0.0.1:{} (addresses[0] and \
             addresses[0])",
            ports[0].port
        ),
    );
}

#[test]
fn a_data_dir_in_use_gives_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("UTF-8 path");
    // Two configs with different ports, so that only the data dir is shared.
    std::fs::write(
        dir.path().join("a.json"),
        config_json("127.0.0.1", &three_nodes()),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.json"),
        config_json("127.0.0.1", &three_nodes()),
    )
    .expect("write");
    let mut first = std::process::Command::new(common::RRMQ_NODE)
        .args(["a.json", "0", "--data-dir", data])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until the first node holds the lock (its WAL exists).
    let deadline = std::time::Instant::now() + EXIT_DEADLINE;
    while !dir.path().join("data").join("LOCK").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "first node never opened its WAL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_refused(
        dir.path(),
        &["b.json", "0", "--data-dir", data],
        &format!("rrmq-node: data dir {data} is in use by …"),
    );
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn a_corrupt_cluster_id_file_gives_one_line_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("config.json"),
        config_json("127.0.0.1", &three_nodes()),
    )
    .expect("write");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let file = data.join("cluster_id");
    let garbage = "not a cluster id\u{0}\u{ff}";
    std::fs::write(&file, garbage).expect("write the file");
    let data_text = data.to_str().expect("UTF-8 path");
    assert_refused(
        dir.path(),
        &["config.json", "0", "--data-dir", data_text],
        &format!(
            "rrmq-node: {}: not a cluster id (expected 16 hex digits): …",
            file.display()
        ),
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("the file is still there"),
        garbage,
        "the node must not overwrite a file it cannot read"
    );
}
