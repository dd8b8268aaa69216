"""The routing order as pure functions (routing/order.py): owner, team, queue; longest available; FIFO."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from routing.order import AvailableAgent, Caller, fifo, plan, ranked


def agent(id: str, team: str, queues: tuple[str, ...], since: int) -> AvailableAgent:
    return AvailableAgent(id, team, frozenset(queues), since)


POOL = [
    agent("ann", "sales", ("support",), 300),
    agent("ben", "support", ("support",), 200),
    agent("cat", "support", ("support",), 100),
    agent("dan", "support", ("billing",), 50),  # the owner's team but not serving the queue
    agent("eve", "sales", ("sales",), 10),  # owner of some customers, serves another queue
]


def test_no_customer_is_the_queue_step_longest_available_first() -> None:
    assert ranked(Caller("CA1", "support", 0), POOL) == ["cat", "ben", "ann"]


def test_owner_then_team_serving_the_queue_then_queue() -> None:
    caller = Caller("CA1", "support", 0, owner="eve", owner_team="support")
    # the owner gets their customer's call whatever queues they serve; then support-team agents serving
    # the queue (longest first); dan is on the team but not in the queue; then anyone serving the queue
    assert ranked(caller, POOL) == ["eve", "cat", "ben", "ann"]


def test_owner_team_is_used_when_the_owner_is_away() -> None:
    caller = Caller("CA1", "support", 0, owner="zed", owner_team="sales")
    assert ranked(caller, POOL) == ["ann", "cat", "ben"]


def test_configured_order_is_honoured() -> None:
    caller = Caller("CA1", "support", 0, owner="eve", owner_team="support")
    assert ranked(caller, POOL, order=("queue",)) == ["cat", "ben", "ann"]
    assert ranked(caller, POOL, order=("team", "owner")) == ["cat", "ben", "eve"]


def test_ties_in_available_time_are_broken_by_id() -> None:
    pool = [agent("b", "t", ("q",), 5), agent("a", "t", ("q",), 5)]
    assert ranked(Caller("CA1", "q", 0), pool) == ["a", "b"]


def test_limit() -> None:
    pool = [agent(f"a{i:03}", "t", ("q",), i) for i in range(100)]
    assert ranked(Caller("CA1", "q", 0), pool, limit=3) == ["a000", "a001", "a002"]


def test_fifo_across_queues_and_requeues() -> None:
    callers = [Caller("CA3", "sales", 30), Caller("CA1", "support", 10), Caller("CA2", "support", 10)]
    assert [c.call_sid for c in fifo(callers)] == ["CA1", "CA2", "CA3"]


def test_plan_gives_earlier_callers_their_first_choice() -> None:
    callers = [Caller("late", "support", 20), Caller("early", "support", 10)]
    out = plan(callers, POOL)
    assert [(c.call_sid, cands[0]) for c, cands in out] == [("early", "cat"), ("late", "ben")]


def test_plan_skips_callers_nobody_can_take() -> None:
    callers = [Caller("CA1", "nobody-serves-this", 1), Caller("CA2", "sales", 2)]
    out = plan(callers, POOL)
    assert [(c.call_sid, cands) for c, cands in out] == [("CA2", ["eve"])]


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1000)), min_size=0, max_size=30),
       st.lists(st.integers(0, 10_000), min_size=0, max_size=30))
def test_plan_never_gives_one_first_choice_twice(agents: list[tuple[int, int]], entered: list[int]) -> None:
    pool = [agent(f"a{i}", f"t{team}", ("q",), since) for i, (team, since) in enumerate(agents)]
    callers = [Caller(f"CA{i}", "q", ms) for i, ms in enumerate(entered)]
    out = plan(callers, pool)
    firsts = [cands[0] for _, cands in out]
    assert len(firsts) == len(set(firsts)) == min(len(pool), len(callers))
    served = [c.entered_ms for c, _ in out]
    assert served == sorted(served)
    # the longest-available agent goes to the longest-waiting caller
    if out:
        assert firsts[0] == min(pool, key=lambda a: (a.available_since_ms, a.id)).id
