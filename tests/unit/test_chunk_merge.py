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


async def test_a_stage_merges_what_is_queued_and_holds_back_the_rest() -> None:
    hop = Hop("n", "127.0.0.1:1", 0, 4)
    service = StageService(FakeEngine(), "n", send=None, idle_timeout_s=60)  # type: ignore[arg-type]
    sess = StageSession(SessionOpen("s", hop, (hop,), 0, 64, 10, 4, 0.0, 1.0, 0, 0, ()))
    for fwd in (tokens(2, 3), tokens(5, 3), tokens(8, 3, sample=True)):
        sess.queue.put_nowait(fwd)
    first = service._merge(sess, tokens(0, 2))
    assert first == Forward("s", 0, 0, False, tuple(range(8)), None)  # 2 + 3 + 3 = the limit of 8
    assert sess.held == tokens(8, 3, sample=True) and sess.queue.empty()
    await asyncio.sleep(0)
