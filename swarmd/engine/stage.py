"""One span of decoder layers, run with explicit positions against a preallocated KV cache.

The decoder layers, norms, MLPs and rotary embedding are transformers' own modules (so numerics match
``generate``); attention is driven here so that the cache layout, positions and masks are ours and do
not depend on transformers' cache API, which changes between releases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from ..types import LayerSpan
from .kv_cache import KVCache
from .sources import ModelSource
from .weights import load_tensors

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AttentionShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int


def attention_shape(config: object) -> AttentionShape:
    heads = int(config.num_attention_heads)  # type: ignore[attr-defined]
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads  # type: ignore[attr-defined]
    return AttentionShape(heads, kv, int(head_dim))


def sliding_windows(config: object, span: LayerSpan) -> list[int | None]:
    """The attention window of each held layer (None: full causal attention)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    out: list[int | None] = []
    for i in range(span.start, span.end):
        if layer_types is not None:
            out.append(window if layer_types[i] == "sliding_attention" and window else None)
        elif getattr(config, "model_type", "") == "mistral" and window:
            out.append(int(window))
        else:
            out.append(None)
    return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class StageModel:
    """Embedding (first span only), decoder layers ``[start, end)``, final norm and LM head (last only)."""

    def __init__(
        self, config: object, span: LayerSpan, *, embed: nn.Module | None, layers: list[nn.Module],
        rotary: nn.Module, norm: nn.Module | None, lm_head: nn.Module | None, device: torch.device,
        dtype: torch.dtype, weight_keys: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.weight_keys = weight_keys  # transformers names of the tensors this span loaded
        self.span = span
        self.embed = embed
        self.layers = layers
        self.rotary = rotary
        self.norm = norm
        self.lm_head = lm_head
        self.device = device
        self.dtype = dtype
        self.shape = attention_shape(config)
        self.windows = sliding_windows(config, span)
        self.hidden_size = int(config.hidden_size)  # type: ignore[attr-defined]
        self.vocab_size = int(config.vocab_size)  # type: ignore[attr-defined]
        self.max_context = int(getattr(config, "max_position_embeddings", 2048))

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, source: ModelSource, config: object, span: LayerSpan, *, device: torch.device,
        dtype: torch.dtype, cache_root: Path, seed: int, progress: Progress | None = None,
    ) -> StageModel:
        """Build the span's modules on the meta device, then fill in only the span's weights."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        body = skeleton.model
        modules: dict[str, nn.Module] = {f"model.layers.{i}": body.layers[i] for i in range(span.start, span.end)}
        if span.is_first:
            modules["model.embed_tokens"] = body.embed_tokens
        if span.is_last:
            modules["model.norm"] = body.norm
            modules["lm_head"] = skeleton.lm_head
        # Tied embeddings on a node that holds both ends: load the matrix once and share it.
        share_head = span.is_first and span.is_last and bool(getattr(config, "tie_word_embeddings", False))
        shapes = {
            f"{prefix}.{name}": p.shape
            for prefix, mod in modules.items()
            for name, p in mod.state_dict(keep_vars=True).items()
            if not (share_head and prefix == "lm_head")
        }
        tensors = load_tensors(
            source, shapes, num_layers=span.num_layers, start=span.start, end=span.end, dtype=dtype,
            device=device, cache_root=cache_root, seed=seed,
            init_std=float(getattr(config, "initializer_range", 0.02)), progress=progress,
        )
        for prefix, mod in modules.items():
            if share_head and prefix == "lm_head":
                continue
            own = {k.removeprefix(prefix + "."): v for k, v in tensors.items() if k.startswith(prefix + ".")}
            mod.load_state_dict(own, strict=True, assign=True)
            mod.to(device).eval()
        if share_head:
            modules["lm_head"].weight = modules["model.embed_tokens"].weight
        with torch.device(device):
            rotary = type(body.rotary_emb)(config=config)
        rotary.eval()
        del tensors, skeleton
        return cls(
            config, span, embed=modules.get("model.embed_tokens"),
            layers=[modules[f"model.layers.{i}"] for i in range(span.start, span.end)], rotary=rotary,
            norm=modules.get("model.norm"), lm_head=modules.get("lm_head"), device=device, dtype=dtype,
            weight_keys=tuple(shapes),
        )

    def parameter_bytes(self) -> int:
        mods = [m for m in (self.embed, self.norm, self.lm_head, *self.layers) if m is not None]
        seen: set[int] = set()
        total = 0
        for m in mods:
            for p in m.parameters():
                if p.data_ptr() not in seen:
                    seen.add(p.data_ptr())
                    total += p.numel() * p.element_size()
        return total

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(
            self.span.count, self.shape.num_kv_heads, self.shape.head_dim, capacity, self.dtype, self.device
        )

    # --- compute ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, start_pos: int, cache: KVCache) -> torch.Tensor:
        """Run one step for one session.

        inputs: token ids ``[1, S]`` (first span) or hidden states ``[1, S, D]``.
        Returns hidden states ``[1, S, D]``, or float32 logits of the last position ``[1, V]`` (last span).
        """
        n = inputs.shape[1]
        cache.check_step(start_pos, n)
        if self.embed is not None:
            h = self.embed(inputs.to(self.device))  # [1, S, D]
        else:
            h = inputs.to(device=self.device, dtype=self.dtype)
        positions = torch.arange(start_pos, start_pos + n, device=self.device).unsqueeze(0)  # [1, S]
        cos, sin = self.rotary(h, positions)  # [1, S, Dh]
        masks: dict[int | None, torch.Tensor | None] = {}
        for i, layer in enumerate(self.layers):
            window = self.windows[i]
            if window not in masks:
                masks[window] = self._mask(start_pos, n, window)
            h = self._layer(layer, i, h, cos, sin, start_pos, cache, masks[window])
        cache.commit(start_pos + n)
        if self.lm_head is None:
            return h
        assert self.norm is not None
        last = self.norm(h[:, -1:, :])
        return self.lm_head(last)[:, -1, :].float()  # [1, V]

    def _mask(self, start_pos: int, n: int, window: int | None) -> torch.Tensor | None:
        """Boolean ``[S, K]`` mask (True = attend), or None where sdpa's causal flag suffices."""
        kv_len = start_pos + n
        if window is None or kv_len <= window:
            if start_pos == 0 or n == 1:
                return None
            if self.device.type == "cuda":
                # A later prefill chunk: causal aligned to the bottom right. As a bias object SDPA keeps its
                # flash/efficient kernels; a boolean mask sent it to a slow path (a 2,048-token prompt in
                # chunks of 256 took 226 ms instead of 61 in one chunk; H200, Llama-3-8B).
                return causal_lower_right(n, kv_len)  # type: ignore[no-any-return]
        q_pos = torch.arange(start_pos, kv_len, device=self.device).unsqueeze(1)  # [S, 1]
        k_pos = torch.arange(kv_len, device=self.device).unsqueeze(0)  # [1, K]
        allowed = k_pos <= q_pos
        if window is not None:
            allowed &= (q_pos - k_pos) < window
        return allowed

    def _layer(
        self, layer: Any, idx: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        start_pos: int, cache: KVCache, mask: torch.Tensor | None,
    ) -> torch.Tensor:
        attn = layer.self_attn
        b, s, _ = x.shape
        hd = self.shape.head_dim
        y = layer.input_layernorm(x)
        q = attn.q_proj(y).view(b, s, -1, hd)
        k = attn.k_proj(y).view(b, s, -1, hd)
        v = attn.v_proj(y).view(b, s, -1, hd).transpose(1, 2)  # [B, Hkv, S, Dh]
        if hasattr(attn, "q_norm"):  # Qwen3-style per-head norms
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, S, Dh]
        c, sn = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * c + rotate_half(q) * sn
        k = k * c + rotate_half(k) * sn
        keys, values = cache.update(idx, start_pos, k, v)  # [B, Hkv, K, Dh]
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=mask is None and s > 1, scale=attn.scaling,
            enable_gqa=self.shape.num_heads != self.shape.num_kv_heads,
        )  # [B, H, S, Dh]
        out = attn.o_proj(out.transpose(1, 2).reshape(b, s, -1))
        h = x + out
        return h + layer.mlp(layer.post_attention_layernorm(h))
