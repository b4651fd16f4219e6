"""A blocking client for an rrmq cluster.

Talking to a replicated queue correctly is more than sending a request: only the leader
answers topic and message operations, leaders change, nodes die, replies get lost. This client
behaves like the Rust client library (``src/client/``): it reads the nodes from the cluster's
``config.json``, follows the ``leader`` hint of a ``NOT_LEADER`` reply, tries the next node on
silence or a dropped connection, hedges to another node when the one waited on stays silent,
bounds every attempt and every call in time, and retries safely.

Safe retries (PROTOCOL.md §5): each :class:`Client` picks a random ``client_id`` and numbers
its writes (topic PUT, message PUT, every message GET, ACK, NACK, TOUCH) with an increasing
``seq``. A retry re-sends the same bytes, so the same ``(client_id, seq)``, to whichever node
leads by then; the cluster applies the pair at most once and answers a repeat with the first
reply. So a put retried across a leader change is stored once, and a popped message retried
across one is handed out once. A session opens with the first request the cluster applies; a
refusal before that (``FORBIDDEN``, ``BAD_REQUEST``, ``TOO_LARGE``, or the ``EMPTY`` that ends a
blocking GET's wait) opens none, so the client then starts a new ``client_id`` rather than go
on at a ``seq`` the cluster would refuse as ``SESSION_EXPIRED``. The cluster remembers only the last reply per client, so a
client sends one request at a time: a :class:`Client` is not thread-safe; give each thread its
own.

Transport: MessagePack, protocol version 2, over one ZeroMQ DEALER socket per node, created on
first use. Each request goes out as ``[call tag, "", body]`` and the node echoes the envelope,
so a reply names the call it answers; replies to earlier calls are dropped. With a key file
(PROTOCOL.md §11) each DEALER is a CURVE client with the client's key pair and each node's
public key from the config; a node that refuses the key never answers, which looks like a node
that is down (the call ends with :class:`rrmq.Timeout`).
"""

import json
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

from . import _call as policy
from .errors import (
    OUTCOME_UNKNOWN,
    ConfigError,
    RrmqError,
    StaleReceipt,
    Timeout,
    Unavailable,
    UnexpectedReply,
    from_code,
)

log = logging.getLogger("rrmq")

#: A message as put and got: text, or bytes (sent as MessagePack binary).
Message = Union[str, bytes]

#: How long one attempt waits for a reply before the client tries elsewhere (seconds).
ATTEMPT_TIMEOUT_DEFAULT = 2.0
#: How long one call may take in all, retries included (seconds).
TIMEOUT_DEFAULT = 10.0
#: Silence from the node waited on for this long also sends the call to another node: the
#: default election timeout's upper bound, by when a new leader exists if that node stopped.
HEDGE_AFTER_DEFAULT = 0.6
#: The largest reply accepted from a node.
REPLY_BYTES_MAX = 64 * 1024 * 1024
#: Leader hints may name nodes the client was not told about; it learns at most this many.
NODES_MAX = 256

_PROTOCOL_VERSION = 2
#: Decisive refusals the cluster may make without applying anything through its log.
_REFUSED_BEFORE_THE_LOG = frozenset({"FORBIDDEN", "BAD_REQUEST", "TOO_LARGE"})
_CONNECTION_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED


@dataclass(frozen=True)
class Node:
    """A node's client address, and its CURVE public key (Z85) when the config gives one."""

    host: str
    port: int
    public_key: Optional[str] = field(default=None, compare=False)

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint, ``tcp://host:port``, IPv6 addresses bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def __str__(self) -> str:
        return self.endpoint[len("tcp://") :]


@dataclass(frozen=True)
class Delivery:
    """A leased message (PROTOCOL.md §8): ``receipt`` settles it with :meth:`Client.ack`,
    :meth:`Client.nack` or :meth:`Client.touch`; ``deliveries`` counts its deliveries, 1 the
    first time."""

    message: Message
    receipt: str
    deliveries: int


@dataclass(frozen=True)
class Status:
    """One node's answer to ``status`` (PROTOCOL.md §5): its role and term, and the v2
    fields; ``raw`` is the whole reply (with e.g. ``peers`` on the leader)."""

    role: str
    term: int
    id: Optional[int]
    leader: Optional[int]
    commit_index: Optional[int]
    last_applied: Optional[int]
    last_log_index: Optional[int]
    raw: Dict[str, Any]

    @property
    def is_leader(self) -> bool:
        return self.role == "Leader"


@dataclass(frozen=True)
class Member:
    """A cluster member as the leader lists it (PROTOCOL.md §12): a voter, or a learner
    (``voter`` false) still catching up before its promotion. ``public_key`` (Z85) is set in
    a keyed cluster."""

    id: int
    host: str
    port: int
    internal_port: int
    voter: bool = True
    public_key: Optional[str] = None

    @property
    def node(self) -> Node:
        """Its client address, as :meth:`Client.status` takes it."""
        return Node(self.host, self.port, self.public_key)


def read_key_file(path: Union[str, "os.PathLike[str]"]) -> Tuple[bytes, bytes]:
    """Reads a key file as ``rrmq keygen`` writes it (its first line is the 40-character Z85
    CURVE secret key) and returns ``(secret, public)`` in Z85, the public key derived from the
    secret one. Raises :class:`rrmq.ConfigError` for a missing, unreadable or malformed file."""
    try:
        with open(path, "r", encoding="ascii") as file:
            secret = file.readline().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read key file: {error}") from None
    if len(secret) != 40:
        raise ConfigError(f"{path}: a key is 40 Z85 characters, found {len(secret)}")
    try:
        public = zmq.curve_public(secret.encode("ascii"))
    except (zmq.ZMQError, ValueError) as error:
        raise ConfigError(f"{path}: not a Z85 CURVE secret key: {error}") from None
    return secret.encode("ascii"), public


def load_config(path: Union[str, "os.PathLike[str]"]) -> List[Node]:
    """The nodes of a cluster config (PROTOCOL.md §1), in config order, so a node's position is
    its id; each with its ``public_key`` when the address carries one."""
    try:
        with open(path, "r", encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read the cluster config: {error}") from None
    addresses = config.get("addresses") if isinstance(config, dict) else None
    if not isinstance(addresses, list) or not addresses:
        raise ConfigError(f"{path}: no 'addresses' list")
    nodes = []
    for position, address in enumerate(addresses):
        try:
            host, port = address["ip"], address["port"]
            key = address.get("public_key")
        except (TypeError, KeyError):
            raise ConfigError(f"{path}: address {position} lacks 'ip' or 'port'") from None
        if not isinstance(host, str) or not host or not isinstance(port, int):
            raise ConfigError(f"{path}: address {position}: bad 'ip' or 'port'")
        if key is not None and not isinstance(key, str):
            raise ConfigError(f"{path}: address {position}: 'public_key' is not a string")
        nodes.append(Node(host, port, key))
    return nodes


def _milliseconds(seconds: float) -> int:
    """A lease or wait on the wire: whole milliseconds, rounded up so a tiny duration is not
    zero."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    return int(-(-round(seconds * 1_000_000) // 1000))


class Client:
    """A blocking client of one rrmq cluster. One request at a time: not thread-safe.

    Times are in seconds. ``timeout`` bounds each call, retries included;
    ``attempt_timeout`` is how long one node may stay silent before the call moves on;
    ``hedge_after`` (``None``: never) is how long it may stay silent before the same request
    also goes to another node. Use :meth:`from_config` to read the nodes (and their keys) from
    the cluster's ``config.json``.
    """

    def __init__(
        self,
        nodes: Sequence[Union[Node, str, Tuple[str, int]]],
        *,
        key_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        timeout: float = TIMEOUT_DEFAULT,
        attempt_timeout: float = ATTEMPT_TIMEOUT_DEFAULT,
        hedge_after: Optional[float] = HEDGE_AFTER_DEFAULT,
    ) -> None:
        if timeout <= 0 or attempt_timeout <= 0 or (hedge_after is not None and hedge_after <= 0):
            raise ValueError("timeout, attempt_timeout and hedge_after must be above zero")
        self._nodes: List[Node] = []
        for node in nodes:
            parsed = _parse_node(node)
            if parsed not in self._nodes and len(self._nodes) < NODES_MAX:
                self._nodes.append(parsed)
        if not self._nodes:
            raise ConfigError("no node to talk to: the node list is empty")
        self._server_keys = {node: node.public_key for node in self._nodes if node.public_key}
        self._curve: Optional[Tuple[bytes, bytes]] = None
        if key_file is not None:
            self._curve = read_key_file(key_file)
            missing = [str(node) for node in self._nodes if node not in self._server_keys]
            if missing:
                raise ConfigError(
                    f"a key file was given but these nodes have no public key in the config: "
                    f"{', '.join(missing)}"
                )
        self._context = zmq.Context()
        self._sockets: List[Optional[zmq.Socket]] = [None] * len(self._nodes)
        self._monitors: List[Optional[zmq.Socket]] = [None] * len(self._nodes)
        self._timing = policy.Timing(attempt_timeout, timeout, hedge_after)
        self._calls = policy.CallMachine(self._timing)
        self._client_id = os.urandom(8).hex()
        self._seq = 0
        # Whether the cluster has applied a request of this session (see _call).
        self._session_open = False
        self._tag = 0

    @classmethod
    def from_config(
        cls,
        path: Union[str, "os.PathLike[str]"],
        key_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        timeout: float = TIMEOUT_DEFAULT,
        **options: Any,
    ) -> "Client":
        """A client of the cluster described by ``config.json`` at ``path``. On a cluster
        that lists ``clients`` (PROTOCOL.md §11), give this client's key file (written by
        ``rrmq keygen``): the client then talks CURVE, expecting each node's ``public_key``
        from the config. Other keyword options are those of :class:`Client`."""
        return cls(load_config(path), key_file=key_file, timeout=timeout, **options)

    # ---- life ------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the sockets at once; requests not yet sent are dropped."""
        for index in range(len(self._nodes)):
            self._close_socket(index)
        self._context.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def client_id(self) -> str:
        """This client's session id, sent with every write."""
        return self._client_id

    @property
    def nodes(self) -> List[Node]:
        """The nodes this client knows: those it was given, then those leader hints named."""
        return list(self._nodes)

    @property
    def leader(self) -> Optional[Node]:
        """The node that last served a topic or message call, if no setback came since."""
        index = self._calls.leader
        return None if index is None else self._nodes[index]

    # ---- topics ----------------------------------------------------------------------------

    def create_topic(
        self,
        topic: str,
        *,
        max_deliveries: Optional[int] = None,
        dead_letter: Optional[str] = None,
    ) -> bool:
        """Creates a topic: ``True`` if this call created it, ``False`` if it already existed
        (its settings are then left as they are). ``max_deliveries`` and ``dead_letter`` are
        the delivery limit of PROTOCOL.md §8."""
        request: Dict[str, Any] = {"type": "topic", "method": "PUT", "topic": topic}
        if max_deliveries is not None:
            request["max_deliveries"] = max_deliveries
        if dead_letter is not None:
            request["dead_letter"] = dead_letter
        reply = self._call(request, "create topic", topic)
        if reply.get("success") is True:
            return True
        if _code(reply) == "TOPIC_EXISTS":
            return False
        raise self._failure(reply, topic)

    def list_topics(self, detail: bool = False) -> List[Any]:
        """The topic names in creation order (a linearizable read on the leader). With
        ``detail``, one dict per topic with ``name``, ``ready``, ``leased``,
        ``max_deliveries``, ``dead_letter`` and ``discarded``."""
        request: Dict[str, Any] = {"type": "topic", "method": "GET"}
        if detail:
            request["detail"] = True
        reply = self._call(request, "list topics", "", session=False)
        topics = reply.get("topics")
        if reply.get("success") is True and isinstance(topics, list):
            return topics
        raise self._failure(reply, "")

    # ---- producing -------------------------------------------------------------------------

    def put(self, topic: str, message: Message) -> None:
        """Appends a message (``str`` or ``bytes``) to a topic. Returning means it is
        committed: it survives the loss of any minority of nodes. Raises
        :class:`rrmq.NoSuchTopic` if the topic does not exist."""
        self._expect_success(
            {"type": "message", "method": "PUT", "topic": topic, "message": message},
            "put",
            topic,
        )

    def put_batch(self, topic: str, messages: Iterable[Message]) -> int:
        """Appends messages in order in one request, all or none (PROTOCOL.md §10: 1 to 1,000
        messages, at most 4 MiB in all); returns how many."""
        request = {"type": "message", "method": "PUT", "topic": topic, "messages": list(messages)}
        reply = self._call(request, "batch put", topic)
        count = reply.get("count")
        if reply.get("success") is True and isinstance(count, int):
            return count
        raise self._failure(reply, topic)

    # ---- consuming -------------------------------------------------------------------------

    def get(self, topic: str, wait: Optional[float] = None) -> Optional[Message]:
        """Pops the oldest message of a topic; ``None`` when it has none. With ``wait``
        (seconds, up to 60), the leader holds the request until a message comes or the wait
        ends (PROTOCOL.md §9). A popped message is handed out once, also when the call was
        retried across a leader change; once returned, it is gone from the cluster."""
        reply = self._fetch(topic, wait=wait)
        if reply is None:
            return None
        if "message" in reply:
            return reply["message"]
        raise self._unexpected(reply, "get")

    def get_batch(self, topic: str, max: int, wait: Optional[float] = None) -> List[Message]:
        """Pops up to ``max`` messages (1 to 1,000) in one request, waiting up to ``wait``
        seconds for the first; ``[]`` when none came."""
        reply = self._fetch(topic, wait=wait, max=max)
        if reply is None:
            return []
        messages = reply.get("messages")
        if isinstance(messages, list):
            return messages
        if "message" in reply:
            return [reply["message"]]
        raise self._unexpected(reply, "batch get")

    def get_leased(
        self,
        topic: str,
        lease: float = 30.0,
        max: int = 1,
        wait: Optional[float] = None,
    ) -> List[Delivery]:
        """Leases up to ``max`` of the oldest visible messages for ``lease`` seconds
        (PROTOCOL.md §8): they stay in the topic, invisible to other consumers, until
        acknowledged (:meth:`ack`), given back (:meth:`nack`) or the lease ends; then they
        are handed out again, in their place in the topic's order. With ``wait``, holds the
        request while the topic has nothing to hand out. ``[]`` when nothing came. A retried
        call gets the same messages and receipts."""
        reply = self._fetch(topic, wait=wait, max=max, lease=lease)
        if reply is None:
            return []
        items = reply.get("messages") if "messages" in reply else [reply]
        if not isinstance(items, list):
            raise self._unexpected(reply, "leased get")
        deliveries = []
        for item in items:
            try:
                deliveries.append(
                    Delivery(item["message"], str(item["receipt"]), int(item["deliveries"]))
                )
            except (TypeError, KeyError, ValueError):
                raise self._unexpected(reply, "leased get") from None
        return deliveries

    def ack(self, topic: str, receipt: Union[str, Delivery]) -> None:
        """Acknowledges a leased message: it is deleted. Raises :class:`rrmq.StaleReceipt`
        when the receipt is not the live lease's (it ended, was settled, or never existed)."""
        self._settle("ACK", topic, receipt)

    def nack(self, topic: str, receipt: Union[str, Delivery]) -> None:
        """Gives a leased message back: visible again at once, in its place in the topic's
        order. Raises :class:`rrmq.StaleReceipt` as :meth:`ack` does."""
        self._settle("NACK", topic, receipt)

    def ack_many(self, topic: str, receipts: Iterable[Union[str, Delivery]]) -> List[str]:
        """Acknowledges several leased messages in one request (1 to 1,000); returns the
        receipts refused as stale (the others took effect)."""
        return self._settle_many("ACK", topic, receipts)

    def nack_many(self, topic: str, receipts: Iterable[Union[str, Delivery]]) -> List[str]:
        """Gives several leased messages back in one request; returns the stale receipts."""
        return self._settle_many("NACK", topic, receipts)

    def touch(self, topic: str, receipt: Union[str, Delivery], lease: float) -> None:
        """Extends a lease: it now ends ``lease`` seconds from now. Raises
        :class:`rrmq.StaleReceipt` when the lease already ended."""
        receipt = _receipt(receipt)
        request = {
            "type": "message",
            "method": "TOUCH",
            "topic": topic,
            "receipt": receipt,
            "lease_ms": _milliseconds(lease),
        }
        reply = self._call(request, "touch", topic)
        if reply.get("success") is not True:
            raise self._failure(reply, topic, receipt)

    def consume(
        self,
        topic: str,
        handler: Callable[[Delivery], Any],
        *,
        lease: float = 30.0,
        wait: float = 5.0,
        max: int = 1,
        limit: Optional[int] = None,
        until_empty: bool = False,
    ) -> int:
        """Runs a consumer loop: leases messages (up to ``max`` at a time, blocking up to
        ``wait`` seconds for them) and calls ``handler(delivery)`` for each. When the handler
        returns, the message is acknowledged; when it raises, the message is given back
        (NACK) for a later delivery and the exception is logged, not raised. A handler that
        needs longer than ``lease`` may call :meth:`touch` with ``delivery.receipt``. A lease
        that ended anyway (the ACK is stale) is logged: the message will be handed out again.

        Stops after ``limit`` messages were handled successfully, or, with ``until_empty``,
        at the first wait that brings nothing; otherwise it runs until an error the client
        cannot retry (e.g. :class:`rrmq.Timeout` when no leader answers for ``timeout``) or
        ``KeyboardInterrupt``. Returns the number of messages acknowledged.
        """
        handled = 0
        while limit is None or handled < limit:
            want = max if limit is None else min(max, limit - handled)
            deliveries = self.get_leased(topic, lease=lease, max=want, wait=wait)
            if not deliveries:
                if until_empty:
                    break
                continue
            for delivery in deliveries:
                try:
                    handler(delivery)
                except Exception:  # the handler's failure: give the message back
                    log.exception("%s: handler failed; giving the message back", topic)
                    try:
                        self.nack(topic, delivery)
                    except StaleReceipt:
                        log.warning("%s: the lease ended before the NACK", topic)
                    continue
                try:
                    self.ack(topic, delivery)
                    handled += 1
                except StaleReceipt:
                    log.warning(
                        "%s: the lease ended before the ACK; the message will come again", topic
                    )
        return handled

    # ---- membership (PROTOCOL.md §12) ---------------------------------------------------------

    def list_members(self) -> List[Member]:
        """The cluster's members as the leader sees them, learners with ``voter`` false."""
        reply = self._call({"type": "member", "method": "GET"}, "list members", "", session=False)
        members = reply.get("members")
        if reply.get("success") is not True or not isinstance(members, list):
            raise self._failure(reply, "")
        listed = []
        for member in members:
            try:
                listed.append(
                    Member(
                        id=int(member["id"]),
                        host=str(member["ip"]),
                        port=int(member["port"]),
                        internal_port=int(member["internal_port"]),
                        voter=bool(member.get("voter", True)),
                        public_key=member.get("public_key"),
                    )
                )
            except (TypeError, KeyError, ValueError):
                raise self._unexpected(reply, "list members") from None
        return listed

    def add_member(self, member: Member) -> None:
        """Adds a node: the leader makes it a learner and promotes it to voter once it has
        caught up; returns once it votes. Start the node first (``rrmq-node CONFIG INDEX
        --join``) and give ``member`` its id (never used before) and addresses, and its
        ``public_key`` in a keyed cluster. Catching up can take longer than a normal call:
        use a client with a ``timeout`` to match. On :class:`rrmq.Timeout` the change stays in
        progress (calling again waits for it again; :meth:`remove_member` of its id cancels
        it). Raises :class:`rrmq.ChangeInProgress` while another change is under way and
        :class:`rrmq.BadRequest` for a used id or address."""
        request: Dict[str, Any] = {
            "type": "member",
            "method": "PUT",
            "id": member.id,
            "ip": member.host,
            "port": member.port,
            "internal_port": member.internal_port,
        }
        if member.public_key is not None:
            request["public_key"] = member.public_key
        reply = self._call(request, f"add member {member.id}", "", session=False)
        if reply.get("success") is not True:
            raise self._failure(reply, "")

    def remove_member(self, id: int) -> None:
        """Removes a member, voter or learner (the leader too: it hands over once its removal
        is committed); returns once the removal is committed."""
        request = {"type": "member", "method": "DELETE", "id": id}
        reply = self._call(request, f"remove member {id}", "", session=False)
        if reply.get("success") is not True:
            raise self._failure(reply, "")

    # ---- status ----------------------------------------------------------------------------

    def status(self, node: Union[int, Node]) -> Status:
        """Asks one node (its index in :attr:`nodes`, or a :class:`Node`) for its status: one
        attempt, bounded by the attempt timeout, not retried elsewhere (every node answers
        status, and the caller asked about this one)."""
        index = node if isinstance(node, int) else self._index_or_add(node)
        result = self._ask_each([index], {"type": "status", "method": "GET"})[0]
        if isinstance(result, RrmqError):
            raise result
        return result

    def status_all(self) -> List[Tuple[Node, Union[Status, RrmqError]]]:
        """Asks every known node for its status at once, so unreachable nodes cost one
        attempt timeout in all. In node order; a node that did not answer has its error."""
        indexes = list(range(len(self._nodes)))
        results = self._ask_each(indexes, {"type": "status", "method": "GET"})
        return list(zip(self._nodes, results))

    # ---- internals -------------------------------------------------------------------------

    def _expect_success(self, request: Dict[str, Any], name: str, topic: str) -> None:
        reply = self._call(request, name, topic)
        if reply.get("success") is not True:
            raise self._failure(reply, topic)

    def _fetch(
        self,
        topic: str,
        *,
        wait: Optional[float] = None,
        max: Optional[int] = None,
        lease: Optional[float] = None,
    ) -> Optional[Dict[str, Any]]:
        """A message GET with the options of PROTOCOL.md §8-§10; ``None`` on ``EMPTY``. With
        ``wait``, this call's attempt timeout, hedge delay and deadline grow by it: a blocked
        GET is legitimately silent that long."""
        request: Dict[str, Any] = {"type": "message", "method": "GET", "topic": topic}
        if lease is not None:
            request["lease_ms"] = _milliseconds(lease)
        if wait is not None:
            request["wait_ms"] = _milliseconds(wait)
        if max is not None and max != 1:
            request["max"] = max
        reply = self._call(request, "get", topic, wait=wait or 0.0)
        if reply.get("success") is True:
            return reply
        if _code(reply) == "EMPTY":
            return None
        raise self._failure(reply, topic)

    def _settle(self, method: str, topic: str, receipt: Union[str, Delivery]) -> None:
        receipt = _receipt(receipt)
        request = {"type": "message", "method": method, "topic": topic, "receipt": receipt}
        reply = self._call(request, method.lower(), topic)
        if reply.get("success") is not True:
            raise self._failure(reply, topic, receipt)

    def _settle_many(
        self, method: str, topic: str, receipts: Iterable[Union[str, Delivery]]
    ) -> List[str]:
        request = {
            "type": "message",
            "method": method,
            "topic": topic,
            "receipts": [_receipt(receipt) for receipt in receipts],
        }
        reply = self._call(request, method.lower(), topic)
        stale = reply.get("stale")
        if reply.get("success") is True and isinstance(stale, list):
            return stale
        raise self._failure(reply, topic)

    def _failure(self, reply: Dict[str, Any], topic: str, receipt: str = "") -> RrmqError:
        """The exception for a decisive refusal."""
        code = _code(reply)
        if code is None:
            return self._unexpected(reply, "request")
        error = reply.get("error")
        message = error.get("message", "") if isinstance(error, dict) else ""
        if code == "STALE_RECEIPT":
            return StaleReceipt(
                f"stale receipt {receipt!r} in topic {topic!r}: the lease ended, was settled, "
                f"or never existed; nothing changed",
                topic,
                receipt,
            )
        if code == "NO_SUCH_TOPIC":
            return from_code(code, f"no such topic {topic!r}")
        if code == "SESSION_EXPIRED":
            return from_code(code, f"the cluster forgot this client's session ({message}); {OUTCOME_UNKNOWN}")
        return from_code(code, message or code)

    @staticmethod
    def _unexpected(reply: Any, operation: str) -> RrmqError:
        return UnexpectedReply(f"unexpected reply to {operation}: {reply!r}")

    def _next_tag(self) -> int:
        self._tag += 1
        return self._tag

    def _call(
        self,
        request: Dict[str, Any],
        name: str,
        topic: str,
        *,
        session: bool = True,
        wait: float = 0.0,
    ) -> Dict[str, Any]:
        """Runs one topic or message request to a decisive reply (success, or a failure that
        retrying cannot change) and returns it. The retry rules are :mod:`rrmq._call`'s; this
        drives them with non-blocking sends and polls."""
        started = time.monotonic()
        what = f"{name} {topic!r}" if topic else name
        request = dict(request, v=_PROTOCOL_VERSION)
        if session:
            self._seq += 1
            request["client_id"] = self._client_id
            request["seq"] = self._seq
        # Encoded once: every attempt sends the same bytes, hence the same session key.
        body = msgpack.packb(request, use_bin_type=True)
        tag = self._next_tag()
        normal = self._timing
        if wait > 0:
            self._calls.timing = policy.Timing(
                normal.attempt_timeout + wait,
                normal.deadline + wait,
                None if normal.hedge_after is None else normal.hedge_after + wait,
            )
        try:
            reply = self._drive(body, tag, what, started, outcome_unknown=session)
        finally:
            self._calls.timing = normal
        if session and not self._session_open:
            code = _code(reply)
            # A refusal before the log opens no session, and the cluster takes an unknown
            # client_id only at seq 0 or 1: the next request, at seq 2, would be refused as
            # SESSION_EXPIRED. Such refusals are the ones the gateway makes (rights, malformed
            # or oversized requests) and the EMPTY that ends a blocking GET's wait. After one,
            # while no request of this session was applied, the client starts a new session
            # (safe: nothing of the old one can be replayed into it). Other replies were
            # applied through the log, which opened the session.
            if code in _REFUSED_BEFORE_THE_LOG or (code == "EMPTY" and wait > 0):
                self._client_id = os.urandom(8).hex()
                self._seq = 0
            elif reply.get("success") is True or code is not None:
                self._session_open = True
        return reply

    def _drive(
        self, body: bytes, tag: int, what: str, started: float, outcome_unknown: bool
    ) -> Dict[str, Any]:
        unreachable: Optional[str] = None
        self._drain_connection_events()
        step = self._calls.begin(time.monotonic(), len(self._nodes))
        while True:
            if isinstance(step, policy.Send):
                if step.retry is not None:
                    log.debug("%s: attempt to %s (%s)", what, self._nodes[step.node], step.retry)
                try:
                    self._send(step.node, tag, body)
                    step = policy.Wait()
                except zmq.Again:
                    # The queue towards this node is full of requests it never took: drop
                    # them with the socket, and count this attempt as lost.
                    self._close_socket(step.node)
                    step = self._calls.on_send_failed(
                        time.monotonic(), step.node, len(self._nodes), queue_full=True
                    )
                except zmq.ZMQError as error:
                    unreachable = f"{self._nodes[step.node]}: {error}"
                    step = self._calls.on_send_failed(time.monotonic(), step.node, len(self._nodes))
            elif isinstance(step, policy.Wait):
                until = self._calls.wake_at()
                assert until is not None, "a call in flight always has a timer"
                event = self._receive(tag, until, None)
                now = time.monotonic()
                if event[0] == "reply":
                    _, node, reply = event
                    code = _code(reply)
                    if reply.get("success") is False and code in policy.RETRYABLE_CODES:
                        log.debug("%s: %s answered %s", what, self._nodes[node], code)
                        hint = self._learn(reply.get("leader"))
                        step = self._calls.on_refused(now, node, code, hint, len(self._nodes))
                    else:
                        step = self._calls.on_decisive(now, node, reply)
                elif event[0] == "lost":
                    step = self._calls.on_connection_lost(now, event[1], len(self._nodes))
                else:
                    step = self._calls.on_timer(now, len(self._nodes))
            else:
                assert isinstance(step, policy.Finished)
                if step.has_answer:
                    return step.answered
                elapsed = time.monotonic() - started
                if step.unreachable:
                    raise Timeout(
                        f"no node could be connected to for {what} (last: {unreachable})",
                        "TIMEOUT",
                        False,
                    )
                raise self._gave_up(what, elapsed, step.last, outcome_unknown)

    def _gave_up(
        self, what: str, elapsed: float, last: Optional[policy.Setback], outcome_unknown: bool
    ) -> RrmqError:
        note = f"; {OUTCOME_UNKNOWN}" if outcome_unknown else ""
        if last is not None and last.kind == "refused":
            problem = f"{self._nodes[last.node]} answered {last.code}"
            return Unavailable(
                f"cluster unavailable for {what} after {elapsed:.1f}s (last: {problem}){note}",
                "UNAVAILABLE",
                outcome_unknown,
            )
        if last is None:
            problem = "no attempt fitted in the deadline"
        elif last.kind == "dropped":
            problem = f"the connection to {self._nodes[last.node]} dropped or was refused"
        elif last.kind == "unreachable":
            problem = f"{self._nodes[last.node]}: cannot connect"
        else:
            problem = (
                f"no reply from {self._nodes[last.node]} within "
                f"{self._calls.timing.attempt_timeout:.1f}s"
            )
        return Timeout(
            f"no answer to {what} within {elapsed:.1f}s (last: {problem}){note}",
            "TIMEOUT",
            outcome_unknown,
        )

    def _ask_each(
        self, indexes: List[int], request: Dict[str, Any]
    ) -> List[Union[Status, RrmqError]]:
        """Sends a request every node answers about itself to each of ``indexes`` at once and
        collects the replies for one attempt timeout. One result per index, in order."""
        started = time.monotonic()
        until = started + self._timing.attempt_timeout
        body = msgpack.packb(dict(request, v=_PROTOCOL_VERSION), use_bin_type=True)
        tag = self._next_tag()
        results: Dict[int, Union[Status, RrmqError]] = {}
        self._drain_connection_events()
        for index in indexes:
            try:
                self._send(index, tag, body)
            except zmq.ZMQError as error:
                if isinstance(error, zmq.Again):
                    self._close_socket(index)
                results[index] = Timeout(f"status: {self._nodes[index]}: {error}", "TIMEOUT", False)
        while any(index not in results for index in indexes):
            waiting = [index for index in indexes if index not in results]
            event = self._receive(tag, until, waiting)
            if event[0] == "reply":
                _, index, reply = event
                results.setdefault(index, _status_from(reply, self._nodes[index]))
            elif event[0] == "lost":
                index = event[1]
                self._calls.on_connection_lost(time.monotonic(), index, len(self._nodes))
                results.setdefault(
                    index,
                    Timeout(
                        f"status: the connection to {self._nodes[index]} dropped or was refused",
                        "TIMEOUT",
                        False,
                    ),
                )
            else:
                break
        timeout = self._timing.attempt_timeout
        return [
            results.get(
                index,
                Timeout(
                    f"status: no reply from {self._nodes[index]} within {timeout:.1f}s",
                    "TIMEOUT",
                    False,
                ),
            )
            for index in indexes
        ]

    def _socket(self, index: int) -> zmq.Socket:
        socket = self._sockets[index]
        if socket is not None:
            return socket
        node = self._nodes[index]
        socket = self._context.socket(zmq.DEALER)
        # Unsent requests die with the client: they must not delay its exit.
        socket.linger = 0
        socket.maxmsgsize = REPLY_BYTES_MAX
        if ":" in node.host:
            socket.ipv6 = True
        if self._curve is not None:
            server_key = self._server_keys.get(node)
            if server_key is None:
                log.warning("%s: no public key in the config; it cannot answer", node)
            else:
                socket.curve_serverkey = server_key.encode("ascii")
            socket.curve_secretkey, socket.curve_publickey = self._curve
        # Attached before connecting, so no event is missed.
        try:
            self._monitors[index] = socket.get_monitor_socket(_CONNECTION_EVENTS)
        except zmq.ZMQError as error:
            log.debug("%s: no socket monitor: %s", node, error)
        try:
            socket.connect(node.endpoint)
        except zmq.ZMQError:
            self._sockets[index] = socket
            self._close_socket(index)
            raise
        self._sockets[index] = socket
        return socket

    def _close_socket(self, index: int) -> None:
        socket, monitor = self._sockets[index], self._monitors[index]
        self._sockets[index] = self._monitors[index] = None
        if socket is not None and monitor is not None:
            try:
                socket.disable_monitor()
            except zmq.ZMQError:
                pass
        if monitor is not None:
            monitor.close(linger=0)
        if socket is not None:
            socket.close(linger=0)

    def _send(self, index: int, tag: int, body: bytes) -> None:
        self._socket(index).send_multipart([struct.pack(">Q", tag), b"", body], zmq.NOBLOCK)

    def _receive(
        self, tag: int, until: float, only: Optional[List[int]]
    ) -> Tuple[Any, ...]:
        """Waits until ``until`` for a reply tagged ``tag`` (from one of ``only``, when given)
        or for a node's connection to drop or be refused. Returns ``("reply", index, dict)``,
        ``("lost", index)`` or ``("nothing",)``. Replies to other calls and frames that are
        not ``[tag, "", body]`` are dropped."""
        expected = struct.pack(">Q", tag)
        while True:
            poller = zmq.Poller()
            for index, socket in enumerate(self._sockets):
                if socket is not None:
                    poller.register(socket, zmq.POLLIN)
            for index, monitor in enumerate(self._monitors):
                if monitor is not None:
                    poller.register(monitor, zmq.POLLIN)
            remaining = until - time.monotonic()
            ready = dict(poller.poll(max(0, int(-(-remaining * 1000 // 1)))))
            for index, monitor in enumerate(self._monitors):
                if monitor is None or monitor not in ready:
                    continue
                lost = self._next_connection_loss(index)
                if lost and (only is None or index in only):
                    return ("lost", index)
                if lost:
                    self._calls.on_connection_lost(time.monotonic(), index, len(self._nodes))
            for index, socket in enumerate(self._sockets):
                if socket is None or socket not in ready:
                    continue
                while True:
                    try:
                        frames = socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) != 3 or frames[0] != expected or frames[1] != b"":
                        continue  # stale, or not a reply
                    if only is not None and index not in only:
                        continue
                    try:
                        reply = msgpack.unpackb(frames[2], raw=False)
                    except (ValueError, msgpack.UnpackException) as error:
                        raise UnexpectedReply(
                            f"{self._nodes[index]}: reply is not MessagePack: {error}"
                        ) from None
                    if not isinstance(reply, dict):
                        raise UnexpectedReply(f"{self._nodes[index]}: reply is not a map: {reply!r}")
                    return ("reply", index, reply)
            if time.monotonic() >= until:
                return ("nothing",)

    def _next_connection_loss(self, index: int) -> bool:
        """Reads node ``index``'s waiting monitor events; true if one says the connection
        dropped or was refused (a connection made clears the node's down mark)."""
        lost = False
        while True:
            monitor = self._monitors[index]
            if monitor is None:
                return lost
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
                event = parse_monitor_message(frames)["event"]
            except zmq.Again:
                return lost
            except (zmq.ZMQError, ValueError, KeyError) as error:
                log.debug("%s: socket monitor: %s", self._nodes[index], error)
                self._monitors[index] = None
                monitor.close(linger=0)
                return lost
            if event == zmq.EVENT_CONNECTED:
                self._calls.on_connection_made(index)
                lost = False
            elif event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_DISCONNECTED):
                lost = True

    def _drain_connection_events(self) -> None:
        """Passes every waiting connection event to the retry policy before a call."""
        for index in range(len(self._monitors)):
            if self._next_connection_loss(index):
                self._calls.on_connection_lost(time.monotonic(), index, len(self._nodes))

    def _index_or_add(self, node: Node) -> int:
        if node in self._nodes:
            return self._nodes.index(node)
        self._nodes.append(node)
        self._sockets.append(None)
        self._monitors.append(None)
        return len(self._nodes) - 1

    def _learn(self, leader: Any) -> Optional[int]:
        """The index of the node a leader hint names, learning its address if new."""
        if not isinstance(leader, dict):
            return None
        host, port = leader.get("ip"), leader.get("port")
        if not isinstance(host, str) or not host or not isinstance(port, int) or port <= 0:
            return None
        node = Node(host, port)
        if node in self._nodes:
            return self._nodes.index(node)
        if len(self._nodes) >= NODES_MAX:
            return None
        return self._index_or_add(node)


def _parse_node(node: Union[Node, str, Tuple[str, int]]) -> Node:
    if isinstance(node, Node):
        return node
    if isinstance(node, tuple):
        return Node(node[0], int(node[1]))
    text = node[len("tcp://") :] if node.startswith("tcp://") else node
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bad node address {node!r}: expected HOST:PORT")
    return Node(host.strip("[]"), int(port))


def _code(reply: Dict[str, Any]) -> Optional[str]:
    error = reply.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error["code"]
    return None


def _receipt(receipt: Union[str, Delivery]) -> str:
    return receipt.receipt if isinstance(receipt, Delivery) else receipt


def _status_from(reply: Dict[str, Any], node: Node) -> Union[Status, RrmqError]:
    role, term = reply.get("role"), reply.get("term")
    if not isinstance(role, str) or not isinstance(term, int):
        code = _code(reply)
        if code is not None:
            error = reply.get("error")
            message = error.get("message", "") if isinstance(error, dict) else ""
            return from_code(code, f"{node}: {message}")
        return UnexpectedReply(f"{node}: unexpected reply to status: {reply!r}")
    return Status(
        role=role,
        term=term,
        id=reply.get("id"),
        leader=reply.get("leader"),
        commit_index=reply.get("commit_index"),
        last_applied=reply.get("last_applied"),
        last_log_index=reply.get("last_log_index"),
        raw=reply,
    )
