"""membership/broadcast.py: the transmit-limited queue of piggy-backed updates."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.membership.broadcast import BroadcastQueue


def queue(max_items: int = 100) -> BroadcastQueue[str]:
    return BroadcastQueue(max_items, size_of=len)


def test_newer_update_for_a_key_replaces_the_older_and_restarts_its_count() -> None:
    q = queue()
    q.put("n1", "alive-1")
    assert q.take(limit=5, max_entries=10, max_bytes=100) == ["alive-1"]
    assert q.transmits("n1") == 1
    q.put("n1", "suspect-1")
    assert len(q) == 1 and q.get("n1") == "suspect-1" and q.transmits("n1") == 0


def test_each_update_is_sent_at_most_limit_times() -> None:
    q = queue()
    q.put("n1", "x")
    sent = [q.take(limit=3, max_entries=10, max_bytes=100) for _ in range(5)]
    assert sent == [["x"], ["x"], ["x"], [], []]
    assert "n1" not in q and q.dropped == 0


def test_least_sent_first_then_newest_first() -> None:
    q = queue()
    q.put("a", "a")
    q.take(limit=10, max_entries=10, max_bytes=100)  # a sent once
    q.put("b", "b")
    q.put("c", "c")
    assert q.take(limit=10, max_entries=2, max_bytes=100) == ["c", "b"]
    assert q.take(limit=10, max_entries=3, max_bytes=100) == ["c", "b", "a"]


def test_entry_and_byte_budgets() -> None:
    q = queue()
    for key, value in [("a", "1234"), ("b", "12345678"), ("c", "12")]:
        q.put(key, value)
    assert q.take(limit=10, max_entries=1, max_bytes=100) == ["12"]  # newest first
    # b (8 bytes) does not fit 6; a and then the once-sent c do.
    assert q.take(limit=10, max_entries=10, max_bytes=6) == ["1234", "12"]
    assert q.transmits("b") == 0  # skipped, still queued for a roomier message
    assert q.take(limit=10, max_entries=10, max_bytes=100) == ["12345678", "1234", "12"]


def test_zero_entries_takes_nothing() -> None:
    q = queue()
    q.put("a", "a")
    assert q.take(limit=10, max_entries=0, max_bytes=100) == []
    assert q.transmits("a") == 0


def test_full_queue_drops_the_most_sent_then_oldest() -> None:
    q = queue(max_items=3)
    q.put("a", "a")
    q.put("b", "b")
    q.take(limit=10, max_entries=1, max_bytes=100)  # b (newest) sent once
    q.put("c", "c")
    q.put("d", "d")  # over by one: b is the most sent
    assert sorted(k for k in "abcd" if k in q) == ["a", "c", "d"]
    q.put("e", "e")  # all unsent now: the oldest (a) goes
    assert sorted(k for k in "abcde" if k in q) == ["c", "d", "e"]
    assert q.dropped == 2


def test_rejects_an_empty_bound() -> None:
    with pytest.raises(ValueError):
        BroadcastQueue(0, size_of=len)


# ("put", key, value length, _) or ("take", _, max entries, max bytes)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("abcdefgh"), st.integers(0, 12), st.just(0)),
        st.tuples(st.just("take"), st.just(""), st.integers(0, 4), st.integers(0, 40)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, limit=st.integers(1, 4), max_items=st.integers(1, 6))
def test_bounds_hold_under_any_sequence(ops: list[tuple[str, str, int, int]], limit: int, max_items: int) -> None:
    q = queue(max_items)
    sent: Counter[str] = Counter()  # times each key's current update was handed out
    for op, key, x, y in ops:
        if op == "put":
            q.put(key, key + "." * x)  # the value names its key
            sent[key] = 0
        else:
            got = q.take(limit, x, y)
            assert len(got) <= x and sum(map(len, got)) <= y
            assert len({v[0] for v in got}) == len(got)  # one update per key per message
            sent.update(v[0] for v in got)
        assert len(q) <= max_items
        assert all(n <= limit for n in sent.values())
        assert all(q.transmits(k) == sent[k] for k in sent if k in q)
