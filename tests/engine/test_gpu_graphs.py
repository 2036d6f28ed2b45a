"""GPU only (``-m gpu``; skipped without CUDA): decode graphs captured for every bucket and replayed, a
session joining and leaving mid-graph, sliding windows, and graph vs eager agreement in bf16 (the first
greedy divergence and its logit margin are printed, as bench/gpu_tests.txt records)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from test_decode_graph import check_static_path, load  # noqa: E402  (tests/engine on sys.path)

from swarmd.config import EngineConfig
from swarmd.engine.decode_graph import DecodeGraphs, DecodeStep
from swarmd.engine.paged_attention import paged_decode, paged_decode_reference
from swarmd.engine.runtime import Engine
from swarmd.engine.step_plan import Row
from swarmd.types import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
GREEDY = SamplingParams(0.0, 1.0, 0, 0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("span", [(0, 4), (1, 3), (2, 4)])
def test_captured_graphs_equal_eager_in_float32(arch: str, span: tuple[int, int], tiny_models: dict[str, Path],
                                                tmp_path: Path) -> None:
    worst = check_static_path(tiny_models[arch], tmp_path, span, device="cuda", capture=True, atol=2e-3, rtol=2e-3)
    print(f"{arch} {span} fp32: largest difference {worst['abs']:.2e}, argmax mismatches {worst['argmax_mismatch']}")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_captured_graphs_follow_eager_in_bf16(arch: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    worst = check_static_path(tiny_models[arch], tmp_path, (0, 4), device="cuda", dtype=torch.bfloat16,
                              capture=True, atol=0.15, rtol=0.05)
    print(f"{arch} bf16: largest logit difference {worst['abs']:.3f}, argmax mismatches {worst['argmax_mismatch']}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 32, 8, 128, [3000], None), (64, 32, 8, 128, [200] * 63 + [0], None),
                                   (7, 16, 4, 64, [1, 17, 64, 500, 4096, 33, 2], 256)])
def test_paged_kernel_in_low_precision(dtype: torch.dtype, shape) -> None:
    rows, heads, kv_heads, dim, lens, window = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    pages = sum(-(-n // 16) for n in lens) + 8
    q = torch.randn(rows, heads, dim, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(pages, 16, kv_heads, dim, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(pages, 16, kv_heads, dim, device="cuda", dtype=dtype, generator=g)
    width = max(-(-n // 16) for n in lens)
    perm = torch.randperm(pages, device="cuda", generator=g)
    table = torch.zeros(rows, width, dtype=torch.int32, device="cuda")
    at = 0
    for b, n in enumerate(lens):
        need = -(-n // 16)
        table[b, :need] = perm[at: at + need]
        at += need
    lens_t = torch.tensor(lens, dtype=torch.int32, device="cuda")
    got = paged_decode(q, k, v, table, lens_t, scale=dim ** -0.5, window=window)
    ref = paged_decode_reference(q.float(), k.float(), v.float(), table, lens_t, scale=dim ** -0.5, window=window)
    err = float((got.float() - ref).norm() / ref.norm())
    print(f"paged kernel {dtype} rows={rows} lens={lens[:3]}..: relative error {err:.2e}")
    assert err < 1e-2


async def test_engine_replays_graphs_for_concurrent_sessions(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    stage = load(tiny_models["llama"], tmp_path, device="cuda")
    ref = load(tiny_models["llama"], tmp_path, device="cuda")
    prompts = [[5, 17, 42, 99, 3, 250, 7], [1, 2, 3], list(range(10, 40)), [300], [8, 9]]
    want = []
    for p in prompts:
        cache = ref.new_cache(64)
        tok = [int(ref.forward(torch.tensor([p]), 0, cache)[0].argmax())]
        for k in range(1, 16):
            tok.append(int(ref.forward(torch.tensor([[tok[-1]]]), len(p) + k - 1, cache)[0].argmax()))
        want.append(tok)
    engine = Engine(stage, EngineConfig(device="cuda", graph_max_batch=8),
                    kv_budget_bytes=5 * 64 * stage.kv_bytes_per_token())
    engine.prepare()
    info = engine.graph_info
    assert info is not None and info["captured"] == len(info["batch_sizes"])
    print(f"engine graphs: {info}")

    async def session(i: int, prompt: list[int]) -> list[int]:
        await asyncio.sleep(0.005 * i)
        sid = f"s{i}"
        await engine.open_session(sid, 64)
        out = [await engine.forward(sid, prompt, None, 0, (GREEDY, 0, 0))]
        for k in range(1, 16):
            out.append(await engine.forward(sid, [out[-1]], None, len(prompt) + k - 1, (GREEDY, 0, k)))
        await engine.close_session(sid)
        return out  # type: ignore[return-value]

    try:
        got = await asyncio.gather(*(session(i, p) for i, p in enumerate(prompts)))
        mismatched = sum(a != b for a, b in zip(got, want, strict=True))
        print(f"engine fp32 on cuda: {mismatched}/{len(prompts)} sessions differ from eager alone")
        assert mismatched == 0
        assert engine.graph_steps > 0
    finally:
        await engine.close()


def test_graph_memory_and_capture_time_are_reported(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    stage = load(tiny_models["mistral"], tmp_path, device="cuda", dtype=torch.bfloat16)
    pool = stage.new_pool(65)
    graphs = DecodeGraphs(DecodeStep(stage, stage.max_context), pool, 64, capture=True)
    assert set(graphs.graphs) == set(graphs.buckets)
    assert graphs.capture_s > 0 and graphs.graph_bytes >= 0
    cache = pool.allocate(64)
    stage.forward_batch([Row(torch.tensor([1, 2, 3], device="cuda"), 0, cache)])
    out, ids = graphs.run([Row(torch.tensor([4], device="cuda"), 3, cache)])
    assert ids is not None and int(ids[0]) == int(out[0].argmax())
