"""The retry policy (rrmq._call) event by event, without sockets or clocks: the same cases as
the Rust client's src/client/call/tests.rs, on a 3-node cluster; times in seconds."""

from rrmq._call import CallMachine, Finished, Send, Setback, Timing, Wait

PLAIN = Timing(attempt_timeout=0.1, deadline=1.0, hedge_after=None)
HEDGING = Timing(attempt_timeout=2.0, deadline=3.0, hedge_after=0.6)
N = 3


def started(timing: Timing = PLAIN) -> CallMachine:
    machine = CallMachine(timing)
    assert machine.begin(0.0, N) == Send(0, None)
    return machine


def test_a_not_leader_hint_redirects_and_the_next_call_starts_at_the_answering_node() -> None:
    machine = started()
    assert machine.on_refused(0.001, 0, "NOT_LEADER", 2, N) == Send(2, "redirect")
    done = machine.on_decisive(0.004, 2, "done")
    assert isinstance(done, Finished) and done.has_answer and done.answered == "done"
    assert machine.leader == 2
    assert machine.begin(1.0, N) == Send(2, None)


def test_a_refusal_without_hint_goes_to_the_next_node_and_a_round_backs_off() -> None:
    machine = started()
    assert machine.on_refused(0.001, 0, "NOT_LEADER", None, N) == Send(1, "refused")
    assert machine.on_refused(0.002, 1, "NOT_LEADER", None, N) == Send(2, "refused")
    assert machine.on_refused(0.003, 2, "UNAVAILABLE", None, N) == Wait()
    assert abs(machine.wake_at() - 0.053) < 1e-9
    assert machine.on_timer(0.052, N) == Wait()
    assert machine.on_timer(machine.wake_at(), N) == Send(0, "refused")


def test_silence_moves_on_each_attempt_timeout_and_gives_up_at_the_deadline() -> None:
    machine = started()
    assert machine.on_timer(0.099, N) == Wait()
    assert machine.on_timer(0.1, N) == Send(1, "silence")
    assert machine.on_timer(0.2, N) == Send(2, "silence")
    # A decisive answer to an earlier attempt ends the call: same bytes, same session key.
    assert isinstance(machine.on_decisive(0.21, 0, "done"), Finished)

    machine = started()
    machine.on_timer(0.1, N)
    done = machine.on_timer(1.0, N)
    assert isinstance(done, Finished) and not done.has_answer
    assert done.last == Setback("silence", 1)


def test_a_refusal_from_an_earlier_attempt_and_an_unknown_hint_are_ignored() -> None:
    machine = started()
    assert machine.on_refused(0.001, 0, "NOT_LEADER", 2, N) == Send(2, "redirect")
    assert machine.on_refused(0.002, 0, "NOT_LEADER", None, N) == Wait()
    machine = started()
    assert machine.on_refused(0.001, 0, "NOT_LEADER", 7, N) == Send(1, "refused")


def test_a_dropped_connection_moves_the_call_at_once_and_is_skipped_until_made() -> None:
    machine = started()
    assert machine.on_connection_lost(0.01, 0, N) == Send(1, "dropped")
    assert isinstance(machine.on_decisive(0.02, 1, "done"), Finished)
    # Node 1 drops while idle: the next call skips it.
    machine.on_connection_lost(0.03, 1, N)
    assert machine.begin(0.04, N) == Send(2, None)
    machine.on_decisive(0.05, 2, "done")
    machine.on_connection_made(1)
    machine.on_connection_lost(0.06, 2, N)
    assert machine.begin(0.07, N) == Send(1, None)  # 0 and 2 are down, 1 is back


def test_silence_past_the_hedge_delay_sends_the_call_to_other_nodes_too() -> None:
    machine = started(HEDGING)
    assert machine.on_timer(0.599, N) == Wait()
    assert machine.on_timer(0.6, N) == Send(1, "hedge")
    # A hint naming the node waited on: it is slow, not stopped; the next hedge at its time.
    assert machine.on_refused(0.601, 1, "NOT_LEADER", 0, N) == Wait()
    assert machine.on_timer(0.65, N) == Wait()
    assert machine.on_timer(0.7, N) == Send(2, "hedge")
    # A hint naming a third node: a hedge there at once.
    assert machine.on_refused(0.701, 2, "NOT_LEADER", 1, N) == Send(1, "redirect")
    # The node waited on still counts.
    assert isinstance(machine.on_decisive(0.75, 0, "done"), Finished)


def test_every_node_unreachable_ends_the_call() -> None:
    machine = started()
    assert machine.on_send_failed(0.0, 0, N) == Send(1, "silence")
    assert machine.on_send_failed(0.0, 1, N) == Send(2, "silence")
    done = machine.on_send_failed(0.0, 2, N)
    assert isinstance(done, Finished) and done.unreachable
