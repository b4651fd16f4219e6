"""Membership through the Python client against real nodes (PROTOCOL.md §12), in the shape of
the Rust end-to-end test (``tests/membership.rs``): a node started with ``--join`` is added (a
learner, then a voter), holds the data written before, is refused a second add of a used id,
and is removed again; the members listed follow each step."""

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest

import rrmq
from conftest import LEADER_DEADLINE, NODE_BIN, NODE_FLAGS, Cluster, free_ports

#: Catching up and promotion on a loaded machine: as the Rust test's `--timeout 90s`.
ADD_TIMEOUT = 90.0


def grown_config(cluster: Cluster) -> Path:
    """``config-grown.json``: the cluster's config with one more address on free ports."""
    config = json.loads(cluster.config_path.read_text())
    port, internal_port = free_ports(2)
    config["addresses"].append({"ip": "127.0.0.1", "port": port, "internal_port": internal_port})
    path = cluster.dir / "config-grown.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def spawn_joining(cluster: Cluster, config: Path, index: int) -> subprocess.Popen:
    """Starts ``rrmq-node CONFIG INDEX --join`` (this test's own child, killed by handle)."""
    with open(cluster.dir / f"node-{index}.log", "ab") as log:
        return subprocess.Popen(
            [
                str(NODE_BIN),
                str(config),
                str(index),
                "--join",
                "--data-dir",
                str(cluster.dir / f"node-{index}"),
                *NODE_FLAGS,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, RUST_LOG="info"),
        )


def wait_for_members(
    client: rrmq.Client, check: Callable[[List[rrmq.Member]], bool], cluster: Cluster
) -> List[rrmq.Member]:
    """Polls ``list_members`` until ``check`` holds (the leader may change meanwhile)."""
    deadline = time.monotonic() + LEADER_DEADLINE
    members: List[rrmq.Member] = []
    while time.monotonic() < deadline:
        try:
            members = client.list_members()
        except (rrmq.Timeout, rrmq.Unavailable):
            members = []
        if check(members):
            return members
        time.sleep(0.2)
    raise AssertionError(f"members never matched: {members}\n{cluster.dump_logs()}")


def voters(members: List[rrmq.Member]) -> List[int]:
    return sorted(member.id for member in members if member.voter)


def leader_status(client: rrmq.Client) -> Optional[rrmq.Status]:
    for _, status in client.status_all():
        if isinstance(status, rrmq.Status) and status.is_leader:
            return status
    return None


def test_a_joining_node_is_added_as_a_voter_and_removed_again(own_cluster: Cluster) -> None:
    cluster = own_cluster
    cluster.wait_for_leader()
    with cluster.client() as client:
        members = client.list_members()
        assert voters(members) == [0, 1, 2]
        assert [member.id for member in members] == [0, 1, 2]
        nodes = rrmq.load_config(cluster.config_path)
        assert [member.node for member in members] == nodes, "the config's addresses"
        client.create_topic("members")
        client.put("members", "before")

    grown = grown_config(cluster)
    index = 3
    new_node = rrmq.load_config(grown)[index]
    address = json.loads(grown.read_text())["addresses"][index]
    joining = spawn_joining(cluster, grown, index)
    try:
        with rrmq.Client.from_config(grown, timeout=ADD_TIMEOUT) as client:
            member = rrmq.Member(
                id=index,
                host=new_node.host,
                port=new_node.port,
                internal_port=address["internal_port"],
            )
            try:
                client.add_member(member)
            except rrmq.RrmqError:
                pytest.fail(f"add_member failed:\n{cluster.dump_logs()}", pytrace=False)
            members = wait_for_members(client, lambda found: len(voters(found)) == 4, cluster)
            assert voters(members) == [0, 1, 2, 3]
            added = next(found for found in members if found.id == index)
            assert (added.host, added.port, added.internal_port) == (
                new_node.host,
                new_node.port,
                address["internal_port"],
            )

            # A used id is refused, and nothing changes.
            with pytest.raises(rrmq.BadRequest) as refused:
                client.add_member(rrmq.Member(id=1, host="127.0.0.1", port=1, internal_port=2))
            assert refused.value.code == "BAD_REQUEST"

            # The new node caught up: it applied the message put before it joined.
            client.put("members", "after")
            deadline = time.monotonic() + LEADER_DEADLINE
            while True:
                leader = leader_status(client)
                try:
                    mine = client.status(new_node)
                except rrmq.RrmqError:
                    mine = None
                if (
                    leader is not None
                    and mine is not None
                    and mine.last_applied is not None
                    and leader.commit_index is not None
                    and mine.last_applied >= leader.commit_index
                ):
                    break
                assert time.monotonic() < deadline, f"node {index} never caught up: {mine}"
                time.sleep(0.2)

            client.remove_member(index)
            members = wait_for_members(client, lambda found: len(found) == 3, cluster)
            assert voters(members) == [0, 1, 2]
            assert client.get("members") == "before"
            assert client.get("members") == "after"
    finally:
        joining.kill()
        joining.wait()
