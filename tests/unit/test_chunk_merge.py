"""A stage joins prefill chunks queued behind each other into one forward, and nothing else."""

from __future__ import annotations

import asyncio

from swarmd.ring.stage_service import StageService, StageSession, join_chunks
from swarmd.types import TensorBlob
from swarmd.wire.messages import Forward, Hop, SessionOpen


def tokens(start: int, n: int, *, sample: bool = False, step: int = 0) -> Forward:
    return Forward("s", start, step, sample, tuple(range(start, start + n)), None)


def hidden(start: int, n: int, *, d: int = 4, dtype: str = "float32", sample: bool = False) -> Forward:
    data = bytes([start % 256]) * (n * d * 4)
    return Forward("s", start, 0, sample, (), TensorBlob(dtype, (1, n, d), data))


def test_consecutive_token_chunks_join_and_keep_the_last_ones_sampling() -> None:
    joined = join_chunks(tokens(0, 3), tokens(3, 2, sample=True, step=7), limit=16)
    assert joined == Forward("s", 0, 7, True, (0, 1, 2, 3, 4), None)


def test_consecutive_hidden_chunks_join_bytes_in_order() -> None:
    a, b = hidden(0, 2), hidden(2, 3)
    joined = join_chunks(a, b, limit=16)
    assert joined is not None and joined.hidden is not None
    assert joined.hidden.shape == (1, 5, 4)
    assert joined.hidden.data == a.hidden.data + b.hidden.data  # type: ignore[union-attr]


def test_what_does_not_join() -> None:
    assert join_chunks(tokens(0, 3, sample=True), tokens(3, 1), 16) is None  # the first one samples
    assert join_chunks(tokens(0, 3), tokens(4, 1), 16) is None  # a gap
    assert join_chunks(tokens(0, 3), tokens(0, 3), 16) is None  # a rewind
    assert join_chunks(tokens(0, 10), tokens(10, 7), 16) is None  # over the limit
    assert join_chunks(hidden(0, 2), hidden(2, 2, d=8), 16) is None  # different widths
    assert join_chunks(hidden(0, 2), hidden(2, 2, dtype="float16"), 16) is None
    assert join_chunks(tokens(0, 2), hidden(2, 2), 16) is None


class FakeEngine:
    max_batch_tokens = 8


def session(hops: int) -> StageSession:
    chain = tuple(Hop(f"n{i}", f"127.0.0.1:{i + 1}", i, i + 1) for i in range(hops))
    return StageSession(SessionOpen("s", chain[0], chain, 0, 64, 10, 4, 0.0, 1.0, 0, 0, ()))


async def test_the_last_stage_merges_what_is_queued_and_holds_back_the_rest() -> None:
    service = StageService(FakeEngine(), "n0", send=None, idle_timeout_s=60)  # type: ignore[arg-type]
    sess = session(1)
    for fwd in (tokens(2, 3), tokens(5, 3), tokens(8, 3, sample=True)):
        sess.queue.put_nowait(fwd)
    first = service._merge(sess, tokens(0, 2))
    assert first == Forward("s", 0, 0, False, tuple(range(8)), None)  # 2 + 3 + 3 = the limit of 8
    assert list(sess.pending) == [tokens(8, 3, sample=True)] and sess.queue.empty()
    await asyncio.sleep(0)


async def test_a_stage_with_stages_after_it_splits_a_waiting_prompt_in_two() -> None:
    """Pipelined prefill: half now, so the next stage works on it while this one runs the rest."""
    service = StageService(FakeEngine(), "n0", send=None, idle_timeout_s=60)  # type: ignore[arg-type]
    sess = session(2)
    for fwd in (tokens(1, 1), tokens(2, 1), tokens(3, 1), tokens(4, 1, sample=True)):
        sess.queue.put_nowait(fwd)
    first = service._merge(sess, tokens(0, 1))  # 5 positions waiting: 3 now
    assert first.tokens == (0, 1, 2) and not first.sample
    second = service._merge(sess, sess.pending.popleft())  # the rest at once
    assert second.tokens == (3, 4) and second.sample and not sess.pending
