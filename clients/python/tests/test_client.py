"""The Python client against real rrmq-node clusters: FIFO put/get, leader following, retries
across leader kills that neither duplicate nor lose, leased consume (ACK, NACK, lease expiry,
TOUCH), blocking waits, the consume loop, and CURVE keys with client rights."""

import signal
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest

import rrmq
from conftest import CALL_TIMEOUT, Cluster, keygen


def test_put_and_get_are_fifo_and_empty_is_none(client: rrmq.Client) -> None:
    assert client.create_topic("fifo") is True
    assert client.create_topic("fifo") is False
    assert "fifo" in client.list_topics()
    sent: List[rrmq.Message] = [f"m{i}" for i in range(10)] + [b"\x00bytes\xff"]
    for message in sent:
        client.put("fifo", message)
    assert client.put_batch("fifo", ["b1", "b2", "b3"]) == 3
    got = [client.get("fifo") for _ in range(len(sent))]
    assert got == sent
    assert client.get_batch("fifo", 10) == ["b1", "b2", "b3"]
    assert client.get("fifo") is None
    assert client.get_batch("fifo", 10) == []


def test_errors_carry_the_protocol_code(client: rrmq.Client) -> None:
    with pytest.raises(rrmq.NoSuchTopic) as raised:
        client.put("no-such-topic", "x")
    assert raised.value.code == "NO_SUCH_TOPIC"
    with pytest.raises(rrmq.NoSuchTopic):
        client.get("no-such-topic", wait=5)
    with pytest.raises(rrmq.BadRequest) as bad:
        client.create_topic("")
    assert bad.value.code == "BAD_REQUEST"
    client.create_topic("codes")
    with pytest.raises(rrmq.StaleReceipt) as stale:
        client.ack("codes", "never-issued")
    assert stale.value.code == "STALE_RECEIPT"
    assert isinstance(stale.value, rrmq.RrmqError)


def test_a_client_that_starts_at_a_follower_follows_the_leader(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    follower = (leader + 1) % cluster.size
    nodes = rrmq.load_config(cluster.config_path)
    # The follower first: its NOT_LEADER names the leader, and the client goes there.
    ordered = [nodes[follower]] + [node for index, node in enumerate(nodes) if index != follower]
    with rrmq.Client(ordered, timeout=CALL_TIMEOUT) as client:
        client.create_topic("follow")
        client.put("follow", "x")
        assert client.leader == nodes[cluster.wait_for_leader()]
        assert client.get("follow") == "x"
    statuses = cluster.statuses()
    assert statuses[follower] is not None and statuses[follower].role == "Follower"


def test_status_reports_role_and_term(cluster: Cluster, client: rrmq.Client) -> None:
    leader = cluster.wait_for_leader()
    status = client.status(leader)
    assert status.is_leader and status.term >= 1 and status.id == leader
    roles = [result.role for _, result in client.status_all() if isinstance(result, rrmq.Status)]
    assert sorted(roles) == ["Follower", "Follower", "Leader"]


def test_ack_deletes_and_nack_redelivers_in_order(client: rrmq.Client) -> None:
    client.create_topic("leased")
    client.put_batch("leased", ["a", "b", "c"])
    first = client.get_leased("leased", lease=60)
    assert [(d.message, d.deliveries) for d in first] == [("a", 1)]
    second = client.get_leased("leased", lease=60, max=10)
    assert [d.message for d in second] == ["b", "c"]
    # Every message is leased: nothing to hand out.
    assert client.get_leased("leased", lease=60) == []
    assert client.get("leased") is None

    client.ack("leased", first[0])
    client.nack("leased", second[0].receipt)
    # b goes back to its place, before anything put later.
    client.put("leased", "d")
    again = client.get_leased("leased", lease=60, max=10)
    assert [(d.message, d.deliveries) for d in again] == [("b", 2), ("d", 1)]
    # A settled receipt is stale.
    with pytest.raises(rrmq.StaleReceipt):
        client.ack("leased", first[0])
    # In one request: the live receipts take effect, the unknown one is reported stale.
    assert client.ack_many("leased", [again[0], again[1], second[1], "bogus"]) == ["bogus"]
    assert client.get_leased("leased", lease=60) == []
    [detail] = [topic for topic in client.list_topics(detail=True) if topic["name"] == "leased"]
    assert (detail["ready"], detail["leased"]) == (0, 0)


def test_an_expired_lease_redelivers_and_its_receipt_goes_stale(client: rrmq.Client) -> None:
    client.create_topic("expiry")
    client.put("expiry", "job")
    [held] = client.get_leased("expiry", lease=0.3)
    # Not acknowledged: once the lease ends the message comes back (within the wait).
    [again] = client.get_leased("expiry", lease=60, wait=30)
    assert (again.message, again.deliveries) == ("job", 2)
    assert again.receipt != held.receipt
    with pytest.raises(rrmq.StaleReceipt):
        client.ack("expiry", held)
    client.ack("expiry", again)
    assert client.get("expiry") is None


def test_touch_extends_a_lease(client: rrmq.Client) -> None:
    client.create_topic("touch")
    client.put("touch", "slow job")
    [held] = client.get_leased("touch", lease=2)
    client.touch("touch", held, lease=300)
    # Well past the first lease's end, the message is still held.
    assert client.get_leased("touch", lease=60, wait=4) == []
    client.ack("touch", held)
    with pytest.raises(rrmq.StaleReceipt):
        client.touch("touch", held, lease=10)


def test_a_blocking_get_returns_a_message_put_while_it_waits(cluster: Cluster) -> None:
    with cluster.client() as producer, cluster.client() as consumer:
        producer.create_topic("waiting")
        got: List[Optional[rrmq.Message]] = []

        def consume() -> None:
            got.append(consumer.get("waiting", wait=50))

        waiter = threading.Thread(target=consume)
        waiter.start()
        # Let the GET reach the leader first (it is fine if it does not: it must still get it).
        time.sleep(0.5)
        producer.put("waiting", "wake up")
        waiter.join(timeout=120)
        assert not waiter.is_alive()
        assert got == ["wake up"]
        # Nothing left: a short wait ends empty.
        assert consumer.get("waiting", wait=0.2) is None
        assert consumer.get_leased("waiting", lease=5, wait=0.2) == []


def test_consume_acks_handled_messages_and_retries_failed_ones(client: rrmq.Client) -> None:
    client.create_topic("loop")
    client.put_batch("loop", [f"job{i}" for i in range(5)])
    attempts: List[rrmq.Delivery] = []

    def handler(delivery: rrmq.Delivery) -> None:
        attempts.append(delivery)
        if delivery.message == "job2" and delivery.deliveries == 1:
            raise RuntimeError("first try fails")

    handled = client.consume("loop", handler, lease=60, wait=2, max=2, until_empty=True)
    assert handled == 5
    assert sorted(d.message for d in attempts if not (d.message == "job2" and d.deliveries == 1)) == [
        f"job{i}" for i in range(5)
    ]
    assert [d.deliveries for d in attempts if d.message == "job2"] == [1, 2]
    assert client.get("loop") is None
    [detail] = [topic for topic in client.list_topics(detail=True) if topic["name"] == "loop"]
    assert (detail["ready"], detail["leased"]) == (0, 0)


class LeaderKiller:
    """Kills the leader ``kills`` times while a worker thread makes calls: kill K (a SIGKILL of
    the leader process, then a wait for a new leader and a restart of the killed node, so the
    next kill leaves a quorum) comes once the worker has made ``phase * K + 5`` calls, and the
    worker may not begin call ``phase * (K + 1)`` before kill K was made. So every kill lands
    while the worker is making calls, whatever the speed of either."""

    def __init__(self, cluster: Cluster, kills: int, phase: int) -> None:
        self.cluster, self.kills, self.phase = cluster, kills, phase
        self.progress = 0
        self.made = 0
        self.finished = False
        self.changed = threading.Condition()

    def before_call(self, index: int) -> None:
        """The worker, before its call number ``index`` (from 0)."""
        with self.changed:
            needed = min(index // self.phase, self.kills)
            assert self.changed.wait_for(lambda: self.made >= needed, timeout=300)

    def after_call(self) -> None:
        with self.changed:
            self.progress += 1
            self.changed.notify_all()

    def finish(self) -> None:
        with self.changed:
            self.finished = True
            self.changed.notify_all()

    def run(self) -> None:
        """The killing, on the test's own thread."""
        for kill in range(self.kills):
            with self.changed:
                self.changed.wait_for(
                    lambda: self.finished or self.progress >= self.phase * kill + 5, timeout=300
                )
                if self.finished:
                    return
            leader = self.cluster.wait_for_leader()
            self.cluster.kill(leader)
            with self.changed:
                self.made += 1
                self.changed.notify_all()
            self.cluster.wait_for_leader(other_than=leader)
            self.cluster.spawn(leader)


def test_retries_across_leader_kills_neither_duplicate_nor_lose(own_cluster: Cluster) -> None:
    cluster = own_cluster
    count = 60
    with cluster.client() as client:
        client.create_topic("kills")
        errors: List[BaseException] = []

        # Puts, with 3 leader kills among them.
        killer = LeaderKiller(cluster, kills=3, phase=15)

        def produce() -> None:
            try:
                for i in range(count):
                    killer.before_call(i)
                    client.put("kills", f"m{i}")
                    killer.after_call()
            except BaseException as error:  # reported below
                errors.append(error)
            finally:
                killer.finish()

        producer = threading.Thread(target=produce)
        producer.start()
        killer.run()
        producer.join(timeout=600)
        assert not producer.is_alive() and not errors, f"{errors}\n{cluster.dump_logs()}"
        assert killer.made == 3

        # Pops, with 2 more kills among them: each message exactly once, in order.
        got: List[rrmq.Message] = []
        killer = LeaderKiller(cluster, kills=2, phase=20)

        def drain() -> None:
            try:
                for i in range(count + 1):
                    killer.before_call(i)
                    message = client.get("kills")
                    killer.after_call()
                    if message is None:
                        break
                    got.append(message)
            except BaseException as error:
                errors.append(error)
            finally:
                killer.finish()

        consumer = threading.Thread(target=drain)
        consumer.start()
        killer.run()
        consumer.join(timeout=600)
        assert not consumer.is_alive() and not errors, f"{errors}\n{cluster.dump_logs()}"
        assert killer.made == 2
        assert got == [f"m{i}" for i in range(count)]
        assert client.get("kills") is None


def test_a_stopped_leader_is_hedged_around(own_cluster: Cluster) -> None:
    cluster = own_cluster
    leader = cluster.wait_for_leader()
    # The attempt timeout is beyond the deadline: only a hedge can take the call elsewhere.
    with cluster.client(attempt_timeout=60, timeout=40) as client:
        client.create_topic("stopped")
        client.put("stopped", "before")
        assert client.leader == client.nodes[leader]
        process = cluster.processes[leader]
        assert process is not None
        process.send_signal(signal.SIGSTOP)  # keeps its connections, answers nothing
        try:
            client.put("stopped", "during")
            assert client.leader != client.nodes[leader]
        finally:
            process.send_signal(signal.SIGCONT)
        assert client.get("stopped") == "before"
        assert client.get("stopped") == "during"
        assert client.get("stopped") is None


def test_curve_keys_and_client_rights(tmp_path: Path) -> None:
    cluster = Cluster(
        tmp_path,
        clients=[
            ("writer", {"produce": ["py-*"], "consume": ["py-*"], "admin": True}),
            ("reader", {"produce": [], "consume": ["py-*"], "admin": False}),
        ],
    )
    try:
        cluster.wait_for_leader()
        with cluster.client("writer") as writer:
            assert writer.create_topic("py-secure") is True
            writer.put("py-secure", "secret")
            with pytest.raises(rrmq.Forbidden) as forbidden:
                writer.put("other", "outside py-*")
            assert forbidden.value.code == "FORBIDDEN"
        with cluster.client("reader") as reader:
            with pytest.raises(rrmq.Forbidden):
                reader.put("py-secure", "not allowed")
            [delivery] = reader.get_leased("py-secure", lease=30)
            assert delivery.message == "secret"
            reader.ack("py-secure", delivery)

        # A key the cluster does not list gets no reply at all.
        stranger = tmp_path / "stranger.key"
        keygen(stranger)
        with rrmq.Client.from_config(
            cluster.config_path, key_file=stranger, timeout=3, attempt_timeout=1
        ) as outsider:
            with pytest.raises(rrmq.Timeout) as timed_out:
                outsider.list_topics()
            assert timed_out.value.code == "TIMEOUT"
        # A plain client (no key file) neither.
        with rrmq.Client.from_config(cluster.config_path, timeout=3, attempt_timeout=1) as plain:
            with pytest.raises(rrmq.Timeout):
                plain.list_topics()
    finally:
        cluster.close()


def test_a_bad_key_file_is_a_config_error(tmp_path: Path, cluster: Cluster) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(rrmq.ConfigError):
        rrmq.read_key_file(bad)
    with pytest.raises(rrmq.ConfigError):
        rrmq.read_key_file(tmp_path / "missing.key")
    # A key file for a config whose nodes have no public keys: refused up front.
    good = tmp_path / "good.key"
    keygen(good)
    with pytest.raises(rrmq.ConfigError):
        rrmq.Client.from_config(cluster.config_path, key_file=good)


def test_a_first_request_answered_outside_the_log_leaves_the_client_usable(
    cluster: Cluster,
) -> None:
    # BAD_REQUEST is refused before the log, and a blocking GET whose wait ends EMPTY is
    # answered outside it: neither opens a session, and the next request must not be refused
    # as SESSION_EXPIRED (the cluster takes a new client_id only at seq 0 or 1).
    with cluster.client() as fresh:
        with pytest.raises(rrmq.BadRequest):
            fresh.create_topic("")
        assert fresh.create_topic("after-refusal") is True
        fresh.put("after-refusal", "ok")
        assert fresh.get("after-refusal") == "ok"
    with cluster.client() as waiter:
        assert waiter.get("after-refusal", wait=0.2) is None
        assert waiter.get_leased("after-refusal", lease=5, wait=0.2) == []
        waiter.put("after-refusal", "again")
        [delivery] = waiter.get_leased("after-refusal", lease=5, wait=5)
        waiter.ack("after-refusal", delivery)
    # A consumer that starts on an empty topic keeps going once messages come.
    with cluster.client() as producer, cluster.client() as consumer:
        got: List[str] = []
        loop = threading.Thread(
            target=lambda: consumer.consume(
                "after-refusal", lambda d: got.append(d.message), wait=0.3, limit=1
            )
        )
        loop.start()
        time.sleep(1)  # a few empty waits first (fine if fewer: it must get the message anyway)
        producer.put("after-refusal", "late")
        loop.join(timeout=120)
        assert not loop.is_alive() and got == ["late"]


def test_polling_an_empty_topic_keeps_one_session(cluster: Cluster, client: rrmq.Client) -> None:
    # A plain EMPTY is applied through the log and opens the session: a client whose first
    # calls poll an empty topic must not start a new client_id each time (each would take a
    # place in the cluster's bounded session table).
    with cluster.client() as admin:
        admin.create_topic("polled")
    first = client.client_id
    for _ in range(3):
        assert client.get("polled") is None
    assert client.client_id == first
    client.put("polled", "x")
    assert client.get("polled") == "x"
