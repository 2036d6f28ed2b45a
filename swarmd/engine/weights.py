"""Fetch exactly the tensors of one layer span: from safetensors, a cached GGUF span, or a seeded RNG.

Nothing outside the span is ever read into memory: safetensors files are opened lazily and only
the needed keys are materialised.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ModelSourceError
from . import gguf_cache
from .sources import ModelSource

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def load_tensors(
    source: ModelSource, shapes: dict[str, torch.Size], *, num_layers: int, start: int, end: int,
    dtype: torch.dtype, device: torch.device, cache_root: Path, seed: int, init_std: float,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``{key: tensor}`` in ``dtype`` for every transformers parameter name in ``shapes``."""
    keys = list(shapes)
    if source.kind == "random":
        return _random_tensors(shapes, dtype, device, seed, init_std, progress)
    if source.kind == "gguf":
        assert source.path is not None
        cache_dir = gguf_cache.cache_dir_for(cache_root, source.path)
        path = gguf_cache.ensure_span(cache_dir, source.path, keys, num_layers, start, end, dtype)
        return _read_safetensors({k: path for k in keys}, keys, dtype, progress)
    assert source.path is not None
    return _read_safetensors(_locate_keys(source.path, keys), keys, dtype, progress)


def _locate_keys(model_dir: Path, keys: Sequence[str]) -> dict[str, Path]:
    """Map each key to the safetensors shard holding it (tied lm_head falls back to the embedding)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        where = {k: model_dir / v for k, v in weight_map.items()}
    else:
        where = {}
        for shard in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                where.update({k: shard for k in f.keys()})
    out: dict[str, Path] = {}
    for key in keys:
        if key in where:
            out[key] = where[key]
        elif key == "lm_head.weight" and "model.embed_tokens.weight" in where:
            out[key] = where["model.embed_tokens.weight"]
        else:
            raise ModelSourceError(f"{model_dir}: weight {key} is missing from the safetensors files")
    return out


def _read_safetensors(
    where: dict[str, Path], keys: Sequence[str], dtype: torch.dtype, progress: Progress | None
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(where[key], []).append(key)
    done = 0
    for path, file_keys in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            for key in file_keys:
                name = key if key in names else "model.embed_tokens.weight"  # tied lm_head
                out[key] = f.get_tensor(name).to(dtype)
                done += 1
                if progress:
                    progress(done, len(keys))
    return out


def _random_tensors(
    shapes: dict[str, torch.Size], dtype: torch.dtype, device: torch.device, seed: int, init_std: float,
    progress: Progress | None,
) -> dict[str, torch.Tensor]:
    """Deterministic weights: each tensor's RNG is seeded from (seed, name), so spans agree across nodes.

    Generated on the target device (fast on a GPU); identical across nodes of the same device type.
    """
    out: dict[str, torch.Tensor] = {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key.endswith("norm.weight"):
            t = torch.ones(shape, dtype=dtype, device=device)
        elif key.endswith(".bias"):
            t = torch.zeros(shape, dtype=dtype, device=device)
        else:
            digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
            gen = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            t = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, init_std, generator=gen)
        out[key] = t
        if progress:
            progress(i + 1, len(shapes))
    return out
