"""A harness for running the Python client against real ``rrmq-node`` processes.

Each cluster lives in a fresh temp dir (its config, data dirs, key files and one log file per
node) on free loopback ports, and its nodes are child processes of the test: killed
(SIGKILL) by their handles, never by name, and reaped at the end. The binaries come from
``RRMQ_NODE_BIN`` and ``RRMQ_BIN`` (default ``target/debug/rrmq-node`` and
``target/debug/rrmq`` under the repo root); building them is CI's job (``scripts/test.sh``
runs ``cargo test`` first).

Everything waits by polling with generous deadlines: the tests must pass on a loaded 2-core
machine where other clusters run too.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
# The package's source, ahead of any installed copy: tests check this checkout.
sys.path.insert(0, str(HERE.parent))

import rrmq  # noqa: E402

NODE_BIN = Path(os.environ.get("RRMQ_NODE_BIN", REPO_ROOT / "target" / "debug" / "rrmq-node"))
RRMQ_BIN = Path(os.environ.get("RRMQ_BIN", REPO_ROOT / "target" / "debug" / "rrmq"))

#: Elections take 300-600 ms, but a loaded machine stretches everything.
LEADER_DEADLINE = 60.0
#: Each client call's own deadline in the tests: long enough to ride out an election under load.
CALL_TIMEOUT = 30.0
NODE_FLAGS = ["--fsync", "never", "--request-timeout-ms", "3000"]


def require_binary(path: Path, variable: str) -> None:
    if not path.is_file():
        pytest.fail(
            f"{path} does not exist: build it with `cargo build --bins` (scripts/test.sh does) "
            f"or point {variable} at it",
            pytrace=False,
        )


def free_ports(count: int) -> List[int]:
    """Ports nothing listens on right now (another process may take one before the node binds
    it: the cluster start retries then)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def keygen(path: Path) -> str:
    """Writes a key file with ``rrmq keygen`` and returns its public key."""
    require_binary(RRMQ_BIN, "RRMQ_BIN")
    done = subprocess.run(
        [str(RRMQ_BIN), "keygen", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"rrmq keygen failed: {done.stderr}"
    public = done.stdout.strip().splitlines()[-1].strip()
    assert len(public) == 40, f"rrmq keygen printed {done.stdout!r}"
    return public


class Cluster:
    """``size`` nodes of one cluster. Keyed (``keyed``), each node has its key file and its
    address its ``public_key``; with ``clients`` ((name, rights) pairs, rights a dict of
    ``produce``, ``consume``, ``admin``) the config lists them, each with a fresh key file
    ``client-NAME.key``, after a ``harness`` client with every right that the harness itself
    uses."""

    def __init__(
        self,
        directory: Path,
        size: int = 3,
        keyed: bool = False,
        clients: Sequence[Tuple[str, Dict[str, object]]] = (),
    ) -> None:
        require_binary(NODE_BIN, "RRMQ_NODE_BIN")
        self.dir = directory
        self.size = size
        self.keyed = keyed or bool(clients)
        self.client_names = ["harness"] + [name for name, _ in clients] if clients else []
        self._rights = dict(clients)
        self.processes: List[Optional[subprocess.Popen]] = [None] * size
        self.config_path = directory / "config.json"
        self.key_files: List[Path] = []
        for attempt in range(5):
            self._write_config()
            for index in range(size):
                self.spawn(index)
            if self._wait_all_up(LEADER_DEADLINE):
                return
            self.kill_all()
            logs = "".join(self.log(index) for index in range(size))
            if "bind" not in logs:
                pytest.fail(f"a cluster of {size} did not start:\n{logs}", pytrace=False)
            # A port was taken between the check and the bind: again, on other ports.
        pytest.fail(f"could not start a cluster of {size} (ports kept being taken)")

    def _write_config(self) -> None:
        ports = free_ports(2 * self.size)
        addresses = []
        self.key_files = []
        for index in range(self.size):
            address: Dict[str, object] = {
                "ip": "127.0.0.1",
                "port": ports[2 * index],
                "internal_port": ports[2 * index + 1],
            }
            if self.keyed:
                key_file = self.dir / f"node-{index}.key"
                if key_file.exists():
                    key_file.unlink()
                address["public_key"] = keygen(key_file)
                self.key_files.append(key_file)
            addresses.append(address)
        config: Dict[str, object] = {"addresses": addresses}
        if self.client_names:
            listed = []
            for name in self.client_names:
                key_file = self.client_key_file(name)
                if key_file.exists():
                    key_file.unlink()
                rights = self._rights.get(
                    name, {"produce": ["*"], "consume": ["*"], "admin": True}
                )
                listed.append({"name": name, "public_key": keygen(key_file), **rights})
            config["clients"] = listed
        self.config_path.write_text(json.dumps(config, indent=2))

    def client_key_file(self, name: str) -> Path:
        return self.dir / f"client-{name}.key"

    def log_path(self, index: int) -> Path:
        return self.dir / f"node-{index}.log"

    def log(self, index: int) -> str:
        try:
            return self.log_path(index).read_text(errors="replace")
        except OSError:
            return ""

    def spawn(self, index: int) -> None:
        """Starts node ``index`` (again, on its data), appending its output to its log."""
        assert self.processes[index] is None, f"node {index} is running"
        command = [
            str(NODE_BIN),
            str(self.config_path),
            str(index),
            "--data-dir",
            str(self.dir / f"node-{index}"),
            *NODE_FLAGS,
        ]
        if self.keyed:
            command += ["--key-file", str(self.key_files[index])]
        with open(self.log_path(index), "ab") as log:
            self.processes[index] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, RUST_LOG="info"),
            )

    def kill(self, index: int) -> None:
        """SIGKILLs node ``index`` (the process this harness started) and reaps it."""
        process = self.processes[index]
        if process is not None:
            process.kill()
            process.wait()
            self.processes[index] = None

    def kill_all(self) -> None:
        for index in range(self.size):
            self.kill(index)

    def client(self, name: Optional[str] = None, **options: object) -> rrmq.Client:
        """A client from the config (with ``name``'s key, the harness's on a keyed cluster
        when no name is given), with a call deadline of :data:`CALL_TIMEOUT`."""
        key_file = None
        if self.client_names:
            key_file = self.client_key_file(name or "harness")
        options.setdefault("timeout", CALL_TIMEOUT)
        return rrmq.Client.from_config(self.config_path, key_file=key_file, **options)

    def statuses(self) -> List[Optional[rrmq.Status]]:
        """Every node's status, ``None`` for a node that did not answer in a second."""
        with self.client(attempt_timeout=1.0) as probe:
            return [
                result if isinstance(result, rrmq.Status) else None
                for _, result in probe.status_all()
            ]

    def _wait_all_up(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if any(process is None or process.poll() is not None for process in self.processes):
                return False
            if all(status is not None for status in self.statuses()):
                return True
            time.sleep(0.1)
        return False

    def wait_for_leader(self, within: float = LEADER_DEADLINE, other_than: Optional[int] = None) -> int:
        """Polls until one running node (not ``other_than``) says it leads, in the highest term
        any node reports; returns its index."""
        deadline = time.monotonic() + within
        seen: List[Optional[rrmq.Status]] = []
        while time.monotonic() < deadline:
            seen = self.statuses()
            terms = [status.term for status in seen if status is not None]
            leaders = [
                index
                for index, status in enumerate(seen)
                if status is not None
                and status.is_leader
                and status.term == max(terms)
                and index != other_than
                and self.processes[index] is not None
            ]
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.1)
        raise AssertionError(f"no leader within {within} s: {seen}")

    def close(self) -> None:
        self.kill_all()

    def dump_logs(self) -> str:
        return "\n".join(f"---- node {index}\n{self.log(index)[-4000:]}" for index in range(self.size))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A plain 3-node cluster shared by a module's tests (each uses its own topics)."""
    running = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A plain 3-node cluster for one test (one that kills nodes)."""
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[rrmq.Client]:
    with cluster.client() as made:
        yield made
