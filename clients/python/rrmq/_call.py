"""The retry policy of one client's calls, as a state machine without sockets or clocks.

This is a port of the Rust client's ``src/client/call.rs``: the same rules, so that the two
clients behave alike against the same cluster. In short: a call starts at the node that last
answered decisively (else where the last call left off). A ``NOT_LEADER`` that names the leader
sends the call there at once; any other refusal (``NOT_LEADER`` without a hint,
``UNAVAILABLE``, ``TIMEOUT``, ``SHUTTING_DOWN``) or a lost connection sends it to the next
node, and so does silence for one attempt timeout. After every node refused within one round,
the next attempt waits a back-off (50 ms, doubled up to 800 ms). While the node waited on is
silent past the hedge delay, the same request also goes to another node every 100 ms (the wait
on the first goes on: its reply still counts). At the deadline the call gives up, naming the
last setback. A decisive reply ends the call whichever attempt it answers: every attempt sends
the same bytes, hence the same ``(client_id, seq)``, and the cluster answers a repeat with the
first reply (PROTOCOL.md §5).

Times are floats in seconds from ``time.monotonic()``, passed in by the driver.
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

BACKOFF_MIN = 0.05
BACKOFF_MAX = 0.8
HEDGE_INTERVAL = 0.1

RETRYABLE_CODES = frozenset({"NOT_LEADER", "UNAVAILABLE", "TIMEOUT", "SHUTTING_DOWN"})


@dataclass
class Timing:
    """How long an attempt and a call may take, in seconds; ``hedge_after`` ``None``: never
    hedge."""

    attempt_timeout: float
    deadline: float
    hedge_after: Optional[float]


@dataclass
class Setback:
    """What an attempt met when it did not end the call: ``kind`` is ``"refused"`` (with
    ``code``), ``"silence"``, ``"dropped"`` or ``"unreachable"``."""

    kind: str
    node: int
    code: Optional[str] = None


# Steps the driver acts on.
@dataclass
class Send:
    node: int
    retry: Optional[str]  # None for the first attempt, else why ("redirect", "hedge", ...)


@dataclass
class Wait:
    pass


@dataclass
class Finished:
    """``answered`` holds the decisive reply; else ``unreachable`` tells whether no node could
    be connected to, and ``last`` is the last setback before the deadline."""

    answered: Any = None
    has_answer: bool = False
    unreachable: bool = False
    last: Optional[Setback] = None


Step = Any  # Send | Wait | Finished


@dataclass
class _Hedge:
    at: float
    node: Optional[int] = None
    hinted: Optional[int] = None
    redirected: bool = False


def _hedge_after(now: float, timing: Timing) -> Optional[_Hedge]:
    return None if timing.hedge_after is None else _Hedge(at=now + timing.hedge_after)


@dataclass
class _Call:
    started: float
    target: int
    attempt_until: float
    deadline: float
    refusals_in_round: int = 0
    backoff: float = BACKOFF_MIN
    resume: Optional[Tuple[float, str]] = None
    last: Optional[Setback] = None
    unreachable: Optional[List[int]] = None
    hedge: Optional[_Hedge] = None


class CallMachine:
    """One client's calls, one at a time. ``node_count`` is passed with every event, since
    leader hints may teach the driver new nodes."""

    def __init__(self, timing: Timing, first: int = 0) -> None:
        self.timing = timing
        self.leader: Optional[int] = None
        self._next_node = first
        self._down: List[int] = []
        self._call: Optional[_Call] = None

    def begin(self, now: float, node_count: int) -> Step:
        assert self._call is None, "one call at a time"
        start = self.leader if self.leader is not None else self._next_node
        target = self._live_from(start % node_count, node_count)
        deadline = now + self.timing.deadline
        self._call = _Call(
            started=now,
            target=target,
            attempt_until=min(now + self.timing.attempt_timeout, deadline),
            deadline=deadline,
            unreachable=[],
            hedge=_hedge_after(now, self.timing),
        )
        return Send(target, None)

    def abandon(self) -> None:
        self._call = None

    def wake_at(self) -> Optional[float]:
        call = self._call
        if call is None:
            return None
        if call.resume is not None:
            return call.resume[0]
        if call.hedge is not None:
            return min(call.hedge.at, call.attempt_until)
        return call.attempt_until

    def on_decisive(self, now: float, node: int, value: Any) -> Step:
        if self._call is None:
            return Wait()
        self.leader = node
        self._next_node = node
        self._call = None
        return Finished(answered=value, has_answer=True)

    def on_refused(
        self, now: float, node: int, code: str, hint: Optional[int], node_count: int
    ) -> Step:
        call = self._call
        if call is None or call.resume is not None:
            return Wait()
        if node != call.target:
            return self._on_hedge_refused(now, node, code, hint, node_count)
        hinted = hint
        if hinted is not None and (
            hinted == node or hinted >= node_count or self._is_down(hinted, node_count)
        ):
            hinted = None
        reason = "redirect" if code == "NOT_LEADER" and hinted is not None else "refused"
        target = hinted if hinted is not None else self._live_from((node + 1) % node_count, node_count)
        return self._retry(now, Setback("refused", node, code), target, reason, True, node_count)

    def on_send_failed(
        self, now: float, node: int, node_count: int, queue_full: bool = False
    ) -> Step:
        """The attempt to ``node`` could not be sent: its queue is full of requests the node
        never took (``queue_full``: as good as a refusal for counting rounds), or it cannot be
        connected to at all. A hedge that could not be sent is only lost."""
        after = self._live_from((node + 1) % node_count, node_count)
        call = self._call
        if call is None or node != call.target:
            return Wait()
        if queue_full:
            return self._retry(now, Setback("silence", node), after, "silence", True, node_count)
        assert call.unreachable is not None
        if node not in call.unreachable:
            call.unreachable.append(node)
        if len(call.unreachable) >= node_count:
            self.leader = None
            self._call = None
            return Finished(unreachable=True)
        return self._retry(now, Setback("unreachable", node), after, "silence", False, node_count)

    def on_timer(self, now: float, node_count: int) -> Step:
        call = self._call
        if call is None:
            return Wait()
        target = call.target % node_count
        resume_node = self._live_from(target, node_count)
        after = self._live_from((target + 1) % node_count, node_count)
        if call.resume is not None:
            resume_at, reason = call.resume
            if now < resume_at:
                return Wait()
            if now >= call.deadline:
                self._call = None
                return Finished(last=call.last)
            call.resume = None
            call.target = resume_node
            call.attempt_until = min(now + self.timing.attempt_timeout, call.deadline)
            call.hedge = _hedge_after(now, self.timing)
            return Send(call.target, reason)
        if now < call.attempt_until:
            if call.hedge is not None and now >= call.hedge.at:
                return self._hedge(now, node_count)
            return Wait()
        return self._retry(now, Setback("silence", call.target), after, "silence", False, node_count)

    def on_connection_lost(self, now: float, node: int, node_count: int) -> Step:
        if node not in self._down:
            self._down.append(node)
        if self.leader == node:
            self.leader = None
        after = self._live_from((node + 1) % node_count, node_count)
        call = self._call
        if call is None or call.resume is not None:
            return Wait()
        if node != call.target:
            if call.hedge is not None and call.hedge.node == node:
                return self._hedge(now, node_count)
            return Wait()
        return self._retry(now, Setback("dropped", node), after, "dropped", True, node_count)

    def on_connection_made(self, node: int) -> None:
        if node in self._down:
            self._down.remove(node)

    def _is_down(self, node: int, node_count: int) -> bool:
        return node in self._down and any(other not in self._down for other in range(node_count))

    def _live_from(self, start: int, node_count: int) -> int:
        for offset in range(node_count):
            node = (start + offset) % node_count
            if node not in self._down:
                return node
        return start

    def _hedge(self, now: float, node_count: int) -> Step:
        call = self._call
        if call is None or call.hedge is None:
            return Wait()
        hedge = call.hedge
        target = call.target
        hedge.at = now + HEDGE_INTERVAL
        hedge.redirected = False

        def usable(node: int) -> bool:
            return node != target and node < node_count and node not in self._down

        start = hedge.node if hedge.node is not None else target
        hinted, hedge.hinted = hedge.hinted, None
        chosen: Optional[int] = hinted if hinted is not None and usable(hinted) else None
        if chosen is None:
            for offset in range(1, node_count + 1):
                node = (start + offset) % node_count
                if usable(node):
                    chosen = node
                    break
        if chosen is None:
            return Wait()
        hedge.node = chosen
        return Send(chosen, "hedge")

    def _on_hedge_refused(
        self, now: float, node: int, code: str, hint: Optional[int], node_count: int
    ) -> Step:
        call = self._call
        if call is None or call.hedge is None or call.hedge.node != node:
            return Wait()
        hedge = call.hedge
        hinted = hint
        if hinted is not None and not (
            code == "NOT_LEADER"
            and hinted != node
            and hinted != call.target
            and hinted < node_count
            and hinted not in self._down
        ):
            hinted = None
        if hinted is None:
            return Wait()
        if not hedge.redirected:
            hedge.redirected = True
            hedge.node = hinted
            hedge.at = now + HEDGE_INTERVAL
            return Send(hinted, "redirect")
        hedge.hinted = hinted
        return Wait()

    def _retry(
        self,
        now: float,
        setback: Setback,
        node: int,
        reason: str,
        counts_in_round: bool,
        node_count: int,
    ) -> Step:
        call = self._call
        assert call is not None
        call.last = setback
        call.target = node
        self.leader = None
        self._next_node = node
        if now >= call.deadline:
            self._call = None
            return Finished(last=setback)
        if counts_in_round:
            call.refusals_in_round += 1
        if call.refusals_in_round >= node_count:
            # Every node said it cannot serve: an election is probably under way.
            call.refusals_in_round = 0
            call.resume = (min(now + call.backoff, call.deadline), reason)
            call.backoff = min(call.backoff * 2, BACKOFF_MAX)
            call.attempt_until = call.deadline
            call.hedge = None
            return Wait()
        call.attempt_until = min(now + self.timing.attempt_timeout, call.deadline)
        call.hedge = _hedge_after(now, self.timing)
        return Send(node, reason)
