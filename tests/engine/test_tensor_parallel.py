"""Tensor parallelism of a span, on CPU processes with Gloo (the same code runs NCCL between GPUs):
a span split over two ranks computes what the whole span computes, for the first, a middle and the last
span, with batched rows of several sessions, prefill then decode; and a daemon with
``--tensor-parallel 2`` answers like transformers' ``generate``, then leaves and exits when a worker dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from cluster import free_port, write_key
from helpers import shared_cache_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarmd.config import EngineConfig, ModelConfig
from swarmd.engine.runtime import load_meta, load_stage
from swarmd.engine.step_plan import Row
from swarmd.engine.tensor_parallel import layer_plan
from swarmd.engine.tp_stage import TPStage
from swarmd.types import LayerSpan


def stages(model_dir: Path, cache: Path, start: int, end: int) -> tuple[object, TPStage]:
    model_cfg = ModelConfig(source=str(model_dir), cache_dir=cache)
    loaded = load_meta(model_cfg, EngineConfig())
    span = LayerSpan(start, end, loaded.num_layers)
    whole = load_stage(loaded, model_cfg, EngineConfig(dtype="float32", threads=1), span)
    split = load_stage(loaded, model_cfg, EngineConfig(dtype="float32", threads=1, tensor_parallel=2), span)
    assert isinstance(split, TPStage)
    return whole, split


def run(stage: object, inputs: list[torch.Tensor], caches: list[object], start: list[int]) -> list[torch.Tensor]:
    rows = [Row(x, s, c) for x, s, c in zip(inputs, start, caches, strict=True)]
    return [o for o in stage.forward_batch(rows) if o is not None]  # type: ignore[attr-defined]


def test_plan_comes_from_transformers(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoConfig

    plan = layer_plan(AutoConfig.from_pretrained(tiny_models["llama"]))
    assert plan["self_attn.o_proj"] == "rowwise" and plan["mlp.gate_proj"] == "colwise" and len(plan) == 7


@pytest.mark.parametrize(("start", "end"), [(0, 4), (1, 3), (2, 4)])
def test_split_span_computes_what_the_whole_span_computes(tiny_models: dict[str, Path], tmp_path: Path,
                                                          start: int, end: int) -> None:
    whole, split = stages(tiny_models["llama"], tmp_path, start, end)
    try:
        # Each rank holds half the heads and MLP features (and half the KV cache per token).
        assert split.inner.shape.num_heads * 2 == whole.shape.num_heads  # type: ignore[attr-defined]
        assert split.kv_bytes_per_token() == whole.kv_bytes_per_token()  # type: ignore[attr-defined]
        pools = [whole.new_pool(8), split.new_pool(8)]  # type: ignore[attr-defined]
        caches = [[p.allocate(40), p.allocate(40)] for p in pools]
        gen = torch.Generator().manual_seed(1)
        first = start == 0
        prompts = [torch.randint(0, 384, (n,), generator=gen) if first else torch.randn(n, 64, generator=gen)
                   for n in (7, 11)]
        outs = [run(st, prompts, cs, [0, 0]) for st, cs in zip((whole, split), caches, strict=True)]
        for a, b in zip(*outs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        pos = [7, 11]
        for _ in range(5):  # decode steps of both sessions in one batch
            step = [torch.randint(0, 384, (1,), generator=gen) if first else torch.randn(1, 64, generator=gen)
                    for _ in pos]
            outs = [run(st, step, cs, pos) for st, cs in zip((whole, split), caches, strict=True)]
            for a, b in zip(*outs, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            pos = [p + 1 for p in pos]
        reused = list(caches[1][0].pages)
        for pool, cs in zip(pools, caches, strict=True):  # freed pages go to the next session, on every rank
            pool.release(cs[0])
        again = pools[1].allocate(40)
        assert sorted(again.pages) == sorted(reused)  # the worker must zero and reuse exactly these
        out = run(split, [prompts[0]], [again], [0])
        ref = run(whole, [prompts[0]], [pools[0].allocate(40)], [0])
        torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-4)
        # Rank 0 failing after the workers were told: the span reports itself broken (the node then exits).
        assert split.dead() == []

        def fail(rows: list[Row]) -> list[torch.Tensor | None]:
            raise RuntimeError("device error")

        split.inner.forward_batch = fail  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            run(split, [step[0]], [again], [7])
        assert split.dead() == ["rank 0 (RuntimeError: device error)"]
    finally:
        split.close()
    assert not any(p.is_alive() for p in split.procs)


@pytest.mark.daemon
def test_daemon_with_two_ranks_answers_like_generate_and_exits_when_a_worker_dies(
        tiny_models: dict[str, Path], short_tmp: Path) -> None:
    model_dir = tiny_models["llama"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("The quick brown fox jumps over the lazy dog.")["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    want = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    want = want[: want.index(2)] if 2 in want else want
    sock = short_tmp / "tp.sock"
    log = short_tmp / "tp.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmd.cli.swarmd_main", "--model", str(model_dir), "--tensor-parallel", "2",
         "--device", "cpu", "--threads", "1", "--no-mdns", "--listen", f"127.0.0.1:{free_port()}", "--socket",
         str(sock), "--key-file", str(write_key(short_tmp / "k")), "--node-id", "tp0", "--layers", "0:4"],
        env=dict(os.environ, SWARMD_CACHE_DIR=str(shared_cache_dir())), stdout=log.open("wb"),
        stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=60) as c:
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if c.get("http://x/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            r = c.post("http://x/v1/completions", json={"prompt": ids, "max_tokens": 24, "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == tok.decode(want, skip_special_tokens=True)
            doc = c.get("http://x/v1/swarm/status").json()
            assert doc["device"] == "cpu"
        children = psutil.Process(proc.pid).children(recursive=True)
        workers = [p for p in children if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 1, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
        workers[0].send_signal(signal.SIGKILL)
        assert proc.wait(30) == 70
        text = log.read_text()
        assert "tensor-parallel worker lost" in text and "leaves the swarm" in text
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_plan_fallback_divisibility_and_devices() -> None:
    from types import SimpleNamespace

    from swarmd.engine.tensor_parallel import DEFAULT_PLAN, check_divisible
    from swarmd.engine.tp_stage import rank_devices
    from swarmd.errors import ConfigError

    assert layer_plan(SimpleNamespace()) == DEFAULT_PLAN  # no plan in the config: the Llama family's
    with pytest.raises(ConfigError, match="unsupported TP plan style"):
        layer_plan(SimpleNamespace(base_model_tp_plan={"layers.*.mlp.up_proj": "sequence_parallel"}))
    with pytest.raises(ConfigError, match="colwise_rep"):  # gathers its output: not a plain column split
        layer_plan(SimpleNamespace(base_model_tp_plan={"layers.*.mlp.up_proj": "colwise_rep"}))
    from transformers import Qwen3Config

    qwen3 = layer_plan(Qwen3Config())  # per-head q/k norms are replicated: kept whole
    assert qwen3 == DEFAULT_PLAN
    cfg = SimpleNamespace(num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336)
    check_divisible(cfg, 2)
    check_divisible(cfg, 8)
    with pytest.raises(ConfigError, match="key/value heads"):
        check_divisible(cfg, 16)
    assert rank_devices("cpu", 3) == ["cpu", "cpu", "cpu"]
    if not torch.cuda.is_available():
        assert rank_devices("cuda:2", 2) == ["cuda:2", "cuda:3"]
