"""Layer spans: only the held layers are materialised, and two halves chained equal the whole."""

from __future__ import annotations

from pathlib import Path

import torch

from swarmd.engine.loader import load_config
from swarmd.engine.sources import resolve_source
from swarmd.engine.stage import StageModel
from swarmd.types import LayerSpan


def load(model_dir: Path, start: int, end: int, tmp: Path) -> StageModel:
    source = resolve_source(str(model_dir))
    config = load_config(source, tmp)
    n = config.num_hidden_layers
    return StageModel.load(source, config, LayerSpan(start, end, n), device=torch.device("cpu"),
                           dtype=torch.float32, cache_root=tmp, seed=0)


def test_half_span_holds_half_the_layer_weights(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    d = tiny_models["llama"]
    full = load(d, 0, 4, tmp_path)
    first = load(d, 0, 2, tmp_path)
    second = load(d, 2, 4, tmp_path)
    # Only the held layers exist as modules: nothing else was materialised.
    assert len(first.layers) == 2 and first.lm_head is None and first.norm is None
    assert second.embed is None and second.lm_head is not None
    layer_bytes = sum(p.numel() * 4 for p in full.layers[0].parameters())
    embed_bytes = full.embed.weight.numel() * 4  # type: ignore[union-attr]
    assert first.parameter_bytes() == 2 * layer_bytes + embed_bytes
    assert first.parameter_bytes() + second.parameter_bytes() == full.parameter_bytes()


def test_two_spans_chained_equal_the_whole_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    for arch in ("llama", "qwen2", "mistral"):
        d = tiny_models[arch]
        full, first, second = load(d, 0, 4, tmp_path), load(d, 0, 2, tmp_path), load(d, 2, 4, tmp_path)
        ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
        c_full, c1, c2 = full.new_cache(64), first.new_cache(64), second.new_cache(64)
        want = full.forward(ids, 0, c_full)
        got = second.forward(first.forward(ids, 0, c1), 0, c2)
        assert torch.allclose(want, got, atol=1e-5), arch
        # Decode steps keep agreeing, through the caches of both halves.
        for pos in range(ids.shape[1], ids.shape[1] + 5):
            nxt = want.argmax(-1, keepdim=True)
            want = full.forward(nxt, pos, c_full)
            got = second.forward(first.forward(nxt, pos, c1), pos, c2)
            assert torch.allclose(want, got, atol=1e-5), (arch, pos)


def test_random_preset_spans_agree_across_loads(tmp_path: Path) -> None:
    """random:CONFIG weights are a function of (seed, name): every node builds identical spans."""
    source = resolve_source("random:tiny-llama")
    config = load_config(source, tmp_path)
    a = StageModel.load(source, config, LayerSpan(2, 4, 4), device=torch.device("cpu"), dtype=torch.float32,
                        cache_root=tmp_path, seed=7)
    b = StageModel.load(source, config, LayerSpan(0, 4, 4), device=torch.device("cpu"), dtype=torch.float32,
                        cache_root=tmp_path, seed=7)
    c = StageModel.load(source, config, LayerSpan(2, 4, 4), device=torch.device("cpu"), dtype=torch.float32,
                        cache_root=tmp_path, seed=8)
    wa = a.layers[0].self_attn.q_proj.weight
    assert torch.equal(wa, b.layers[2].self_attn.q_proj.weight)
    assert not torch.equal(wa, c.layers[0].self_attn.q_proj.weight)


def test_rewind_replays_to_the_same_logits(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A step may restart at an earlier position (replay after failure) and must reproduce its output."""
    stage = load(tiny_models["qwen2"], 0, 4, tmp_path)
    cache = stage.new_cache(32)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    first = stage.forward(ids, 0, cache)
    stage.forward(torch.tensor([[9]]), 6, cache)
    again = stage.forward(ids, 0, cache)
    assert torch.allclose(first, again, atol=1e-6)
    assert cache.length == 6
