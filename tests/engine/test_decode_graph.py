"""engine/decode_graph.py on a CPU: the static decode forward (fused q/k/v and gate/up, rotary table,
paged attention from the pool) over the graphs' static buffers gives what the eager span gives, for every
bucket with its padding rows, as sessions join and leave; the engine takes that path and stays exact.
Capture and replay themselves need CUDA (tests/engine/test_gpu_graphs.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch

from swarmd.config import EngineConfig
from swarmd.engine.decode_graph import DecodeGraphs, DecodeStep, graph_buckets, unsupported_reason
from swarmd.engine.loader import load_config
from swarmd.engine.paged_attention import triton_available
from swarmd.engine.runtime import Engine
from swarmd.engine.sources import resolve_source
from swarmd.engine.stage import StageModel
from swarmd.engine.step_plan import Row
from swarmd.types import LayerSpan, SamplingParams

GREEDY = SamplingParams(0.0, 1.0, 0, 0)
PROMPTS = [[5, 17, 42, 99, 3, 250, 7], [1, 2, 3], list(range(10, 40)), [300], [8, 9]]


def load(model_dir: Path, tmp: Path, start: int = 0, end: int = 4, device: str = "cpu",
         dtype: torch.dtype = torch.float32) -> StageModel:
    source = resolve_source(str(model_dir))
    config = load_config(source, tmp)
    return StageModel.load(source, config, LayerSpan(start, end, config.num_hidden_layers),
                           device=torch.device(device), dtype=dtype, cache_root=tmp, seed=0)


def test_buckets_cover_every_batch_size_up_to_the_limit() -> None:
    assert graph_buckets(64) == (1, 2, 4, 8, 16, 24, 32, 48, 64)
    assert graph_buckets(40) == (1, 2, 4, 8, 16, 24, 32, 40)
    assert graph_buckets(1) == (1,)


def check_static_path(model_dir: Path, tmp: Path, span: tuple[int, int], *, device: str = "cpu",
                      dtype: torch.dtype = torch.float32, capture: bool = False, atol: float = 1e-5,
                      rtol: float = 1e-4, triton_kernel: bool | None = None) -> dict[str, float]:
    """Two copies of one span: one eager, one through DecodeGraphs (buckets of 1, 2, 4 and 5, so most steps
    carry padding rows). Sessions of different lengths decode together; mistral's 16-token window is
    crossed; one session leaves half-way and its pages go to a newcomer. Returns the largest differences."""
    eager = load(model_dir, tmp, *span, device=device, dtype=dtype)
    static = load(model_dir, tmp, *span, device=device, dtype=dtype)
    assert unsupported_reason(static) is None
    e_pool, s_pool = eager.new_pool(48), static.new_pool(49)
    graphs = DecodeGraphs(DecodeStep(static, static.max_context, triton_kernel=triton_kernel), s_pool, 5,
                          capture=capture)
    assert graphs.buckets == (1, 2, 4, 5)
    assert len(graphs.graphs) == (4 if capture else 0)
    g = torch.Generator().manual_seed(0)

    def inputs(n: int) -> torch.Tensor:
        if eager.embed is not None:
            return torch.randint(0, eager.vocab_size, (n,), generator=g).to(device)
        return torch.randn(n, eager.hidden_size, generator=g).to(device=device, dtype=dtype)

    worst = {"abs": 0.0, "argmax_mismatch": 0.0}
    live: dict[int, tuple] = {}
    for s, prompt in enumerate(PROMPTS[:4]):
        ec, sc = e_pool.allocate(96), s_pool.allocate(96)
        x = inputs(len(prompt))
        eager.forward_batch([Row(x, 0, ec)])
        static.forward_batch([Row(x, 0, sc)])
        live[s] = (ec, sc)
    assert s_pool.free_pages < 49 - 4  # the scratch page is out of circulation
    for step in range(24):
        if step == 10:  # one session leaves, a new one takes its pages
            ec, sc = live.pop(1)
            e_pool.release(ec)
            s_pool.release(sc)
            ec, sc = e_pool.allocate(96), s_pool.allocate(96)
            x = inputs(len(PROMPTS[4]))
            eager.forward_batch([Row(x, 0, ec)])
            static.forward_batch([Row(x, 0, sc)])
            live[4] = (ec, sc)
        who = sorted(live)[: 1 + step % len(live)]  # batches of 1..4 rows
        xs = [inputs(1) for _ in who]
        want = eager.forward_batch([Row(x, live[s][0].length, live[s][0]) for s, x in zip(who, xs, strict=True)])
        rows = [Row(x, live[s][1].length, live[s][1]) for s, x in zip(who, xs, strict=True)]
        got, ids = graphs.run(rows)
        assert got.shape[0] == len(who)
        for k, w in enumerate(want):
            row = got[k].to(w.device)  # a middle span's hidden states come back on the host
            w = w.reshape(row.shape)
            assert torch.isfinite(row).all()
            worst["abs"] = max(worst["abs"], float((row.float() - w.float()).abs().max()))
            torch.testing.assert_close(row.float(), w.float(), atol=atol, rtol=rtol)
            if ids is not None:
                assert int(ids[k]) == int(row.argmax())
                worst["argmax_mismatch"] += int(ids[k]) != int(w.argmax())
        for s in who:
            assert live[s][0].length == live[s][1].length
    # The separate projections read views of the fused weights: the span holds no second copy.
    assert static.parameter_bytes() == eager.parameter_bytes()
    return worst


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("span", [(0, 4), (0, 2), (2, 4)])
def test_static_decode_equals_the_eager_span(arch: str, span: tuple[int, int], tiny_models: dict[str, Path],
                                             tmp_path: Path) -> None:
    worst = check_static_path(tiny_models[arch], tmp_path, span)
    assert worst["argmax_mismatch"] == 0


@pytest.mark.skipif(not triton_available() or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs triton's interpreter (tests/conftest.py turns it on without a GPU)")
@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_static_decode_with_the_triton_kernel_equals_the_eager_span(arch: str, tiny_models: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """The same, with attention by the Triton kernel (interpreted) reading the step buffer's columns."""
    worst = check_static_path(tiny_models[arch], tmp_path, (0, 4), triton_kernel=True)
    assert worst["argmax_mismatch"] == 0


@pytest.mark.parametrize("arch", ["llama", "mistral"])
async def test_engine_on_the_static_path_gives_each_session_its_alone_tokens(
    arch: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    stage = load(tiny_models[arch], tmp_path)
    ref = load(tiny_models[arch], tmp_path)
    want = []
    for p in PROMPTS:
        cache = ref.new_cache(64)
        tok = [int(ref.forward(torch.tensor([p]), 0, cache)[0].argmax())]
        for k in range(1, 20):
            tok.append(int(ref.forward(torch.tensor([[tok[-1]]]), len(p) + k - 1, cache)[0].argmax()))
        want.append(tok)
    engine = Engine(stage, EngineConfig(graph_max_batch=3), kv_budget_bytes=5 * 64 * stage.kv_bytes_per_token())
    engine.prepare(static_decode=True)
    assert engine.graph_info is not None and engine.graph_info["batch_sizes"] == [1, 2, 3]

    async def session(i: int, prompt: list[int]) -> list[int]:
        await asyncio.sleep(0.01 * i)  # staggered: prefills land between decode batches
        sid = f"s{i}"
        await engine.open_session(sid, 64)
        out = [await engine.forward(sid, prompt, None, 0, (GREEDY, 0, 0))]
        for k in range(1, 20):
            out.append(await engine.forward(sid, [out[-1]], None, len(prompt) + k - 1, (GREEDY, 0, k)))
        await engine.close_session(sid)
        return out  # type: ignore[return-value]

    try:
        got = await asyncio.gather(*(session(i, p) for i, p in enumerate(PROMPTS)))
        assert got == want
        assert engine.graph_steps > 0  # decode batches took the static path (five sessions > 3: some eager)
        assert engine.budget.used == 0 and engine._pool is not None and engine._pool.free_pages == engine.pages
    finally:
        await engine.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_eager_prefill_over_fused_weights_equals_the_plain_span(arch: str, tiny_models: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """On a GPU the eager forward (prefill chunks, mixed batches) reads the fused q/k/v and gate/up weights."""
    plain = load(tiny_models[arch], tmp_path)
    fused = load(tiny_models[arch], tmp_path)
    DecodeStep(fused, fused.max_context, fuse_eager=True)
    assert hasattr(fused.layers[0].self_attn, "swarmd_qkv")
    a, b = plain.new_cache(64), fused.new_cache(64)
    for start, chunk in ((0, PROMPTS[2]), (len(PROMPTS[2]), PROMPTS[0])):
        x = torch.tensor(chunk)
        want = plain.forward_batch([Row(x, start, a)])[0]
        got = fused.forward_batch([Row(x, start, b)])[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
