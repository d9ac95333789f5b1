"""The transmit-limited broadcast queue that feeds piggybacked gossip."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from idunno.membership.broadcast import BroadcastQueue
from idunno.membership.codec import encode_update
from idunno.membership.messages import Alive, Dead, Suspect, Update

BIG = 10_000


def _size(updates: list[Update]) -> int:
    return sum(len(encode_update(u)) for u in updates)


def test_empty_queue_hands_out_nothing() -> None:
    q = BroadcastQueue()
    assert len(q) == 0
    assert q.take(BIG, limit=5) == []


def test_newer_update_about_the_same_member_replaces_the_older() -> None:
    q = BroadcastQueue()
    q.queue(Alive("a", "A", 0))
    q.queue(Alive("b", "B", 0))
    q.queue(Suspect("a", 0, "c"))
    q.queue(Dead("a", 0, "c"))
    assert len(q) == 2
    assert sorted(q.pending(), key=lambda u: u.name) == [Dead("a", 0, "c"), Alive("b", "B", 0)]
    assert Counter(u.name for u in q.take(BIG, limit=5)) == {"a": 1, "b": 1}


def test_replacement_resets_the_transmit_count() -> None:
    q = BroadcastQueue()
    q.queue(Alive("a", "A", 0))
    q.take(BIG, limit=2)
    q.queue(Alive("a", "A", 1))  # the newer one gets its full share of transmissions
    assert q.take(BIG, limit=2) == [Alive("a", "A", 1)]
    assert q.take(BIG, limit=2) == [Alive("a", "A", 1)]
    assert q.take(BIG, limit=2) == []


def test_fewest_transmits_first_then_newest_first() -> None:
    q = BroadcastQueue()
    a, b, c = Alive("a", "A", 0), Alive("b", "B", 0), Alive("c", "C", 0)
    one = len(encode_update(a))
    for u in (a, b, c):
        q.queue(u)
    # Room for one update at a time: newest first among the untransmitted ...
    assert q.take(one, limit=10) == [c]
    assert q.take(one, limit=10) == [b]
    assert q.take(one, limit=10) == [a]
    # ... then everyone has one transmission: newest first again.
    assert q.take(one, limit=10) == [c]
    d = Alive("d", "D", 0)
    q.queue(d)  # a fresh update jumps the queue
    assert q.take(one, limit=10) == [d]
    assert q.take(BIG, limit=10) == [d, b, a, c]


def test_byte_budget_is_respected() -> None:
    q = BroadcastQueue()
    ups = [Suspect(f"member-{i:02d}", i, "accuser") for i in range(20)]
    for u in ups:
        q.queue(u)
    one = len(encode_update(ups[0]))
    for budget in (0, one - 1, one, 2 * one, 5 * one + 3):
        taken = q.take(budget, limit=100)
        assert _size(taken) <= budget
        assert len(taken) == budget // one


def test_an_update_too_big_for_the_budget_does_not_block_smaller_ones() -> None:
    q = BroadcastQueue()
    small = Alive("s", "S", 0)
    big = Alive("b" * 200, "B" * 200, 0)
    q.queue(small)
    q.queue(big)  # newer, so first in line, but it does not fit
    assert q.take(len(encode_update(small)), limit=5) == [small]
    assert q.take(BIG, limit=5) == [big, small]


def test_update_is_dropped_after_the_limit() -> None:
    q = BroadcastQueue()
    u = Suspect("a", 3, "b")
    q.queue(u)
    assert [q.take(BIG, limit=3) for _ in range(4)] == [[u], [u], [u], []]
    assert len(q) == 0
    assert q.pending() == []


def test_first_leads_and_is_not_duplicated() -> None:
    q = BroadcastQueue()
    a, b = Alive("a", "A", 0), Suspect("b", 0, "a")
    q.queue(a)
    q.queue(b)
    assert q.take(BIG, limit=2, first=a) == [a, b]
    # `first` rode along without spending one of a's two queued transmissions.
    assert [q.take(BIG, limit=2) for _ in range(3)] == [[a, b], [a], []]


def test_first_that_does_not_fit_is_left_out() -> None:
    q = BroadcastQueue()
    first = Alive("x" * 100, "y" * 100, 0)
    assert q.take(10, limit=2, first=first) == []


def test_first_counts_against_the_budget() -> None:
    q = BroadcastQueue()
    first, queued = Alive("f", "F", 0), Alive("q", "Q", 0)
    q.queue(queued)
    budget = len(encode_update(first)) + len(encode_update(queued)) - 1
    assert q.take(budget, limit=2, first=first) == [first]
    assert q.pending() == [queued]


members = st.sampled_from("abcdefgh")
accusers = st.sampled_from("xyz")
incarnations = st.integers(0, 10)
updates = st.one_of(
    st.builds(Alive, members, st.text(min_size=1, max_size=30), incarnations),
    st.builds(Suspect, members, incarnations, accusers),
    st.builds(Dead, members, incarnations, accusers),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(updates, st.integers(0, 300)), max_size=60),
    st.integers(1, 6),
)
def test_queue_invariants_under_random_use(ops: list[Update | int], limit: int) -> None:
    """Random interleavings of queue(update) and take(budget): every packet fits its budget,
    mentions each member once, and no queued update is sent more than `limit` times."""
    q = BroadcastQueue()
    sent: Counter[Update] = Counter()
    latest: dict[str, Update] = {}
    for op in ops:
        if isinstance(op, int):
            taken = q.take(op, limit)
            assert _size(taken) <= op
            assert len({u.name for u in taken}) == len(taken)
            assert all(latest[u.name] == u for u in taken)  # never a superseded update
            sent.update(taken)
        else:
            q.queue(op)
            latest[op.name] = op
            sent[op] = 0  # re-queued: a fresh allowance
        assert len(q) <= len(latest)
        assert all(n <= limit for n in sent.values())
