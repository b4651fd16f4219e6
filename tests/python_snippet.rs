//! The README's Python client (Configuration, "Client keys") is run as written against a
//! real keyed cluster: the code between the `python-client-snippet` markers, with python3 and
//! the `rrmq` package of `clients/python` (taken from this checkout: `clients/python` is put
//! first on `PYTHONPATH`). With a listed key it creates a topic, puts, gets, leases and
//! acknowledges; with a key the cluster does not list it gets no reply and says so.
//!
//! python3 with pyzmq and msgpack is a test dependency (`scripts/test.sh` and `.ci/run`
//! install them): without them this test fails, saying what to install.

mod common;

use common::{Cluster, LEADER_DEADLINE};
use serde_json::json;
use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BEGIN: &str = "<!-- python-client-snippet:begin -->";
const END: &str = "<!-- python-client-snippet:end -->";
/// How long one run of the snippet may take (each of its calls gives up after 10 s).
const SNIPPET_DEADLINE: Duration = Duration::from_secs(90);

/// The Python code of the README's snippet, without its Markdown fence.
fn snippet() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find(BEGIN)
        .expect("the snippet's begin marker in README.md")
        + BEGIN.len();
    let length = readme[start..]
        .find(END)
        .expect("the snippet's end marker in README.md");
    let block = readme[start..start + length].trim();
    let code = block
        .strip_prefix("```python")
        .and_then(|rest| rest.strip_suffix("```"))
        .expect("the snippet is one ```python block");
    code.trim_start_matches('\n').to_string()
}

/// Fails, saying what to install, unless python3 can import zmq (with CURVE) and msgpack.
fn require_python_modules() {
    let check = "import zmq, msgpack; assert zmq.has('curve'), 'libzmq without CURVE'";
    let output = Command::new("python3").args(["-c", check]).output();
    let problem = match output {
        Ok(output) if output.status.success() => return,
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
        Err(error) => format!("cannot run python3: {error}"),
    };
    panic!(
        "this test runs the README's Python client and needs python3 with pyzmq and msgpack: \
         run `python3 -m pip install pyzmq msgpack` (or scripts/test.sh, which installs them \
         and runs the tests). python3 said: {problem}"
    );
}

/// `PYTHONPATH` with this checkout's Python client first.
fn python_path() -> OsString {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let mut paths = vec![package.clone()];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    // Joining fails only for a path containing the separator: then the package alone.
    std::env::join_paths(paths).unwrap_or_else(|_| package.into_os_string())
}

/// Runs the snippet file with `args`, killed after [`SNIPPET_DEADLINE`].
fn run_python(script: &Path, args: &[&Path]) -> Output {
    let mut child = Command::new("python3")
        .env("PYTHONPATH", python_path())
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let deadline = Instant::now() + SNIPPET_DEADLINE;
    while child.try_wait().expect("wait for python3").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("python3's output")
}

#[test]
fn the_readme_python_client_talks_curve_to_a_keyed_cluster() {
    require_python_modules();
    let code = snippet();
    let cluster = Cluster::start_with_clients(
        3,
        &[],
        &[(
            "python",
            json!({"produce": ["py-*"], "consume": ["py-*"], "admin": true}),
        )],
    );
    cluster.wait_for_leader(LEADER_DEADLINE);
    let script = cluster.dir.path().join("client.py");
    std::fs::write(&script, code).expect("write the snippet");
    let key_file = cluster.client_key_file("python");

    let output = run_python(&script, &[&cluster.config_path, &key_file]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    // What the snippet prints: created, the popped message, the leased one with its delivery
    // count, and the empty topic's None.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["True", "hi", "there 1", "None"],
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // A key the cluster does not list: no reply, and the snippet says so.
    let stranger = cluster.dir.path().join("stranger.key");
    rrmq::config::keys::write_new_key_file(&stranger).expect("a stranger's key");
    let output = run_python(&script, &[&cluster.config_path, &stranger]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a stranger was answered");
    assert!(stderr.contains("no reply"), "stderr:\n{stderr}");
}
