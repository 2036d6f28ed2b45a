"""Convert a GGUF file once per span and keep the result under the cache directory.

transformers' ``gguf_file=`` path de-quantises every tensor of the file (about 25 s for SmolLM2 on
two cores) and materialises the whole model. Here only the tensors of the requested span are read
from the memory-mapped file and de-quantised, then written as safetensors; the next start loads
that file in about a second. Config and tokenizer are taken from transformers once and cached too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelSourceError

log = logging.getLogger(__name__)

_FINGERPRINT_BYTES = 1 << 20


def fingerprint(path: Path) -> str:
    """A cheap content id: size plus a hash of the first and last MiB (GGUF files are large)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(size - _FINGERPRINT_BYTES, _FINGERPRINT_BYTES))
            h.update(f.read(_FINGERPRINT_BYTES))
    return h.hexdigest()[:16]


def cache_dir_for(cache_root: Path, gguf_path: Path) -> Path:
    return cache_root / "gguf" / f"{gguf_path.stem}-{fingerprint(gguf_path)}"


def ensure_meta(cache_dir: Path, gguf_path: Path) -> Path:
    """Make sure ``cache_dir`` holds config.json and the tokenizer converted from the GGUF file."""
    if (cache_dir / "config.json").is_file() and (cache_dir / "tokenizer_config.json").is_file():
        return cache_dir
    from transformers import AutoConfig, AutoTokenizer

    log.info("reading config and tokenizer from %s (once; cached in %s)", gguf_path.name, cache_dir)
    try:
        config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # transformers raises many kinds for a bad file
        raise ModelSourceError(f"cannot read GGUF metadata from {gguf_path}: {exc}") from exc
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".meta-", dir=cache_dir.parent))
    try:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.txt").write_text(str(gguf_path) + "\n")
        cache_dir.mkdir(exist_ok=True)
        for item in tmp.iterdir():
            os.replace(item, cache_dir / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def span_file(cache_dir: Path, start: int, end: int, dtype: torch.dtype, keys: Iterable[str]) -> Path:
    """One file per (span, dtype, tensor set): a changed set of tensors never reads a stale file."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:8]
    return cache_dir / f"span-{start}-{end}-{str(dtype).removeprefix('torch.')}-{digest}.safetensors"


def ensure_span(
    cache_dir: Path, gguf_path: Path, hf_keys: Iterable[str], num_layers: int, start: int, end: int,
    dtype: torch.dtype,
) -> Path:
    """Convert the tensors named by ``hf_keys`` (transformers names) into a cached safetensors file."""
    keys = list(hf_keys)
    out = span_file(cache_dir, start, end, dtype, keys)
    if out.is_file():
        return out
    from safetensors.torch import save_file

    tensors = convert_tensors(gguf_path, keys, num_layers)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, out)
    log.info("cached converted span [%d, %d) in %s", start, end, out)
    return out


def convert_tensors(gguf_path: Path, hf_keys: list[str], num_layers: int) -> dict[str, torch.Tensor]:
    """Read and de-quantise only the GGUF tensors behind ``hf_keys``."""
    from gguf import MODEL_ARCH_NAMES, GGUFReader, dequantize, get_tensor_name_map

    reader = GGUFReader(str(gguf_path))
    arch_field = reader.get_field("general.architecture")
    if arch_field is None:
        raise ModelSourceError(f"{gguf_path}: no general.architecture field")
    arch_name = bytes(arch_field.parts[arch_field.data[0]]).decode()
    arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch_name), None)
    if arch is None:
        raise ModelSourceError(f"{gguf_path}: unknown GGUF architecture {arch_name!r}")
    name_map = get_tensor_name_map(arch, num_layers)
    by_name = {t.name: t for t in reader.tensors}
    heads = _int_field(reader, f"{arch_name}.attention.head_count")
    kv_heads = _int_field(reader, f"{arch_name}.attention.head_count_kv") or heads

    out: dict[str, torch.Tensor] = {}
    total = len(hf_keys)
    for i, key in enumerate(hf_keys):
        stem, _, suffix = key.rpartition(".")
        source_key = "model.embed_tokens.weight" if key == "lm_head.weight" and "output.weight" not in by_name \
            else key
        if source_key != key:  # tied embeddings: the GGUF has no separate output matrix
            stem, _, suffix = source_key.rpartition(".")
        gguf_stem = name_map.get_name(stem)
        tensor = by_name.get(f"{gguf_stem}.{suffix}") if gguf_stem else None
        if tensor is None:
            raise ModelSourceError(f"{gguf_path}: tensor for {key} not found")
        weights = dequantize(tensor.data, tensor.tensor_type)
        if arch_name == "llama" and heads and suffix == "weight":
            if ".attn_q" in tensor.name:
                weights = _unpermute(weights, heads)
            elif ".attn_k" in tensor.name:
                weights = _unpermute(weights, kv_heads or heads)
        out[key] = torch.from_numpy(np.array(weights, copy=True))
        if (i + 1) % 16 == 0 or i + 1 == total:
            log.info("converting GGUF tensors: %d/%d", i + 1, total)
    return out


def _int_field(reader: object, name: str) -> int | None:
    field = reader.get_field(name)  # type: ignore[attr-defined]
    if field is None:
        return None
    return int(field.parts[field.data[0]][0])


def _unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q/k rows (interleaved pairs back to halves)."""
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)
