"""Continuous batching: steps of different sessions run as one forward and give what they give alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from swarmd.config import EngineConfig
from swarmd.engine.kv_cache import KVCache
from swarmd.engine.loader import load_config
from swarmd.engine.runtime import Engine
from swarmd.engine.sources import resolve_source
from swarmd.engine.stage import StageModel
from swarmd.engine.step_plan import Row
from swarmd.errors import KVBudgetExceeded
from swarmd.types import LayerSpan, SamplingParams

GREEDY = SamplingParams(0.0, 1.0, 0, 0)
PROMPTS = [[5, 17, 42, 99, 3, 250, 7], [1, 2, 3], list(range(10, 40)), [300]]


def load(model_dir: Path, tmp: Path, start: int = 0, end: int = 4) -> StageModel:
    source = resolve_source(str(model_dir))
    config = load_config(source, tmp)
    return StageModel.load(source, config, LayerSpan(start, end, config.num_hidden_layers),
                           device=torch.device("cpu"), dtype=torch.float32, cache_root=tmp, seed=0)


def alone(stage: StageModel, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and logits of one session run by itself."""
    cache = stage.new_cache(64)
    logits = stage.forward(torch.tensor([prompt]), 0, cache)[0]
    tokens, seen = [int(logits.argmax())], [logits]
    for i in range(steps - 1):
        logits = stage.forward(torch.tensor([[tokens[-1]]]), len(prompt) + i, cache)[0]
        tokens.append(int(logits.argmax()))
        seen.append(logits)
    return tokens, seen


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_batched_sessions_match_each_session_alone(arch: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Sessions start at different times, so most batches mix a prefill with decode steps of different
    lengths (mistral's 16-token window is crossed on the way)."""
    stage = load(tiny_models[arch], tmp_path)
    steps = 24
    want = [alone(stage, p, steps) for p in PROMPTS]
    pool = stage.new_pool(64)
    caches: list[KVCache] = [pool.allocate(64) for _ in PROMPTS]
    got: list[list[int]] = [[] for _ in PROMPTS]
    logits_seen: list[list[torch.Tensor]] = [[] for _ in PROMPTS]
    batch_sizes = []
    for tick in range(steps + len(PROMPTS) - 1):
        rows, who = [], []
        for s, prompt in enumerate(PROMPTS):
            k = tick - s  # session s joins at tick s
            if not 0 <= k < steps:
                continue
            x = torch.tensor(prompt) if k == 0 else torch.tensor([got[s][-1]])
            rows.append(Row(x, 0 if k == 0 else len(prompt) + k - 1, caches[s]))
            who.append(s)
        batch_sizes.append(len(rows))
        for s, out in zip(who, stage.forward_batch(rows), strict=True):
            assert out is not None
            got[s].append(int(out.argmax()))
            logits_seen[s].append(out)
    assert max(batch_sizes) == len(PROMPTS)
    for s in range(len(PROMPTS)):
        assert got[s] == want[s][0], (arch, s)
        for a, b in zip(logits_seen[s], want[s][1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_split_spans_batch_hidden_states_too(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    first, second = load(tiny_models["llama"], tmp_path, 0, 2), load(tiny_models["llama"], tmp_path, 2, 4)
    whole = load(tiny_models["llama"], tmp_path)
    p1, p2 = first.new_pool(16), second.new_pool(16)
    c1 = [p1.allocate(64) for _ in range(2)]
    c2 = [p2.allocate(64) for _ in range(2)]
    rows = [Row(torch.tensor(PROMPTS[0]), 0, c1[0]), Row(torch.tensor(PROMPTS[2]), 0, c1[1])]
    hidden = first.forward_batch(rows)
    assert [h.shape[1] for h in hidden if h is not None] == [len(PROMPTS[0]), len(PROMPTS[2])]
    rows2 = [Row(h[0], 0, c, logits=i == 1) for i, (h, c) in enumerate(zip(hidden, c2, strict=True)) if h is not None]
    out = second.forward_batch(rows2)
    assert out[0] is None  # a chunk that asked for no logits gets none
    assert out[1] is not None
    torch.testing.assert_close(out[1], alone(whole, PROMPTS[2], 1)[1][0], atol=1e-5, rtol=1e-5)


def test_pool_hands_out_zeroed_pages_and_takes_them_back(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    stage = load(tiny_models["llama"], tmp_path)
    pool = stage.new_pool(4, page_tokens=16)
    a = pool.allocate(40)  # 3 pages
    assert len(a.pages) == 3 and a.capacity == 48 and pool.free_pages == 1
    with pytest.raises(KVBudgetExceeded):
        pool.allocate(17)
    stage.forward_batch([Row(torch.tensor(PROMPTS[2]), 0, a)])
    assert bool(pool.k[:, a.pages].abs().sum() > 0)
    pool.release(a)
    assert pool.free_pages == 4
    b = pool.allocate(64)
    assert torch.count_nonzero(pool.k[:, b.pages]) == 0  # nothing of the last session leaks into the next


def test_a_batch_refuses_two_steps_of_one_session(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    stage = load(tiny_models["llama"], tmp_path)
    cache = stage.new_cache(32)
    with pytest.raises(Exception, match="two steps of one session"):
        stage.forward_batch([Row(torch.tensor([1, 2]), 0, cache), Row(torch.tensor([3]), 2, cache)])


async def test_engine_batches_concurrent_sessions_and_each_gets_its_own_tokens(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    stage = load(tiny_models["qwen2"], tmp_path)
    want = [alone(stage, p, 12)[0] for p in PROMPTS]
    engine = Engine(stage, EngineConfig(), kv_budget_bytes=4 * 64 * stage.kv_bytes_per_token())

    async def session(i: int, prompt: list[int]) -> list[int]:
        sid = f"s{i}"
        await engine.open_session(sid, 64)
        out = [await engine.forward(sid, prompt, None, 0, (GREEDY, 0, 0))]
        for k in range(1, 12):
            out.append(await engine.forward(sid, [out[-1]], None, len(prompt) + k - 1, (GREEDY, 0, k)))
        await engine.close_session(sid)
        return out  # type: ignore[return-value]

    try:
        got = await asyncio.gather(*(session(i, p) for i, p in enumerate(PROMPTS)))
        assert got == want
        # Steps really shared forwards: far fewer batches than steps.
        assert engine.batched_steps == 12 * len(PROMPTS)
        assert engine.batches <= engine.batched_steps // 2
        assert engine.budget.used == 0 and engine._pool is not None and engine._pool.free_pages == engine.pages
    finally:
        await engine.close()


async def test_one_bad_step_fails_alone(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    stage = load(tiny_models["llama"], tmp_path)
    engine = Engine(stage, EngineConfig(), kv_budget_bytes=4 * 64 * stage.kv_bytes_per_token())
    try:
        await engine.open_session("good", 32)
        await engine.open_session("bad", 32)
        results = await asyncio.gather(
            engine.forward("good", [1, 2, 3], None, 0, (GREEDY, 0, 0)),
            engine.forward("bad", [10**6], None, 0, (GREEDY, 0, 0)),  # outside the vocabulary
            engine.forward("bad", [1], None, 5, (GREEDY, 0, 0)),  # queued behind it; position beyond the cache
            return_exceptions=True,
        )
        assert isinstance(results[0], int)
        assert "vocabulary" in str(results[1])
        assert "position 5" in str(results[2])
        assert results[0] == alone(stage, [1, 2, 3], 1)[0][0]
    finally:
        await engine.close()


async def test_kv_pages_are_reserved_at_open_and_refused_when_full(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    stage = load(tiny_models["llama"], tmp_path)
    engine = Engine(stage, EngineConfig(), kv_budget_bytes=64 * stage.kv_bytes_per_token())  # 4 pages
    try:
        await engine.open_session("a", 40)  # 3 pages
        with pytest.raises(KVBudgetExceeded):
            await engine.open_session("b", 20)  # 2 pages
        await engine.open_session("c", 16)  # the last page
        await engine.close_session("a")
        await engine.open_session("b", 20)
    finally:
        await engine.close()


async def test_hidden_states_with_nan_fail_only_their_own_step(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The finiteness check runs on the device for the whole batch; a bad row is dropped from it."""
    from swarmd.engine.wire_tensors import tensor_to_blob

    stage = load(tiny_models["llama"], tmp_path, 2, 4)
    engine = Engine(stage, EngineConfig(), kv_budget_bytes=4 * 64 * stage.kv_bytes_per_token())
    good = torch.randn(1, 5, stage.hidden_size)
    bad = good.clone()
    bad[0, 3, 7] = float("nan")
    try:
        await engine.open_session("good", 32)
        await engine.open_session("bad", 32)
        results = await asyncio.gather(
            engine.forward("bad", [], tensor_to_blob(bad), 0, (GREEDY, 0, 0)),
            engine.forward("good", [], tensor_to_blob(good), 0, (GREEDY, 0, 0)),
            return_exceptions=True,
        )
        assert "NaN or Inf" in str(results[0])
        want = stage.forward(good, 0, stage.new_cache(32))
        assert results[1] == int(want.argmax())
    finally:
        await engine.close()


async def test_sessions_decoding_inside_the_engine_get_their_alone_tokens(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Engine.decode (a span that is the whole ring): each token is fed back by the engine itself; the
    sessions share batches, end at their own max_tokens or stop token, and equal each session alone."""
    stage = load(tiny_models["llama"], tmp_path)
    want = [alone(stage, p, 14)[0] for p in PROMPTS]
    engine = Engine(stage, EngineConfig(), kv_budget_bytes=4 * 64 * stage.kv_bytes_per_token())
    lengths = [14, 9, 14, 5]
    stops = [frozenset(), frozenset(), frozenset({want[2][6]}), frozenset()]  # session 2 stops at a token

    async def session(i: int, prompt: list[int]) -> list[tuple[int, int]]:
        sid = f"d{i}"
        await engine.open_session(sid, 64)
        out = [x async for x in engine.decode(sid, prompt, None, 0, GREEDY, 0, 0, prompt_len=len(prompt),
                                              stop=stops[i], max_tokens=lengths[i])]
        await engine.close_session(sid)
        return out

    try:
        got = await asyncio.gather(*(session(i, p) for i, p in enumerate(PROMPTS)))
        for i, seq in enumerate(got):
            steps, tokens = [s for s, _ in seq], [t for _, t in seq]
            end = want[i].index(want[2][6]) + 1 if i == 2 else lengths[i]
            assert tokens == want[i][:end]
            assert steps == list(range(len(tokens)))
        assert engine.batches < engine.batched_steps  # shared forwards
        assert engine.budget.used == 0 and not engine._queue
    finally:
        await engine.close()


async def test_leaving_an_engine_decode_early_stops_its_steps(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    stage = load(tiny_models["llama"], tmp_path)
    engine = Engine(stage, EngineConfig(), kv_budget_bytes=2 * 64 * stage.kv_bytes_per_token())
    try:
        await engine.open_session("a", 64)
        seen = []
        async for step, _ in engine.decode("a", PROMPTS[0], None, 0, GREEDY, 0, 0, prompt_len=len(PROMPTS[0]),
                                           stop=frozenset(), max_tokens=40):
            seen.append(step)
            if step == 3:
                break
        await asyncio.sleep(0.05)
        ran = engine.batched_steps
        await asyncio.sleep(0.05)
        assert seen == [0, 1, 2, 3]
        assert engine.batched_steps == ran <= 6  # nothing more runs for it (one step may have been in flight)
        assert not engine._queue
        # A session closed while the engine decodes it: the decode ends with an error, nothing leaks.
        await engine.open_session("b", 64)
        agen = engine.decode("b", PROMPTS[1], None, 0, GREEDY, 0, 0, prompt_len=len(PROMPTS[1]),
                             stop=frozenset(), max_tokens=40)
        await agen.__anext__()
        await engine.close_session("b")
        with pytest.raises(Exception, match="closed"):
            while True:
                await agen.__anext__()
        await engine.close_session("a")
        assert engine.budget.used == 0
    finally:
        await engine.close()
