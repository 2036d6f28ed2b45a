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

from ..errors import InvalidRequest
from ..types import LayerSpan
from .kv_cache import PAGE_TOKENS, KVCache, KVPool, kv_bytes_per_token
from .paged_attention import paged_decode, triton_available
from .sources import ModelSource
from .step_plan import Row, StepPlan, plan_step
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


def check_rows(rows: list[Row]) -> None:
    """What can refuse a batch before any work: two steps of one session, a step outside its cache."""
    if len({id(r.cache) for r in rows}) != len(rows):
        raise InvalidRequest("a batch holds two steps of one session")
    for r in rows:
        r.cache.check_step(r.start_pos, r.n)


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

    @property
    def samples(self) -> bool:
        return self.lm_head is not None

    def dead(self) -> list[str]:
        return []  # one device, in this process: nothing can be lost apart from the node

    def kill_workers(self) -> None:
        pass

    def close(self) -> None:
        pass

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

    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.span.count, self.shape.num_kv_heads, self.shape.head_dim, self.dtype)

    def new_pool(self, pages: int, page_tokens: int = PAGE_TOKENS) -> KVPool:
        return KVPool(self.span.count, self.shape.num_kv_heads, self.shape.head_dim, pages, self.dtype,
                      self.device, page_tokens)

    def new_cache(self, capacity: int) -> KVCache:
        """A cache in a pool of its own (tools and tests; the engine shares one pool among sessions)."""
        pool = self.new_pool(-(-capacity // PAGE_TOKENS))
        return pool.allocate(capacity)

    # --- compute ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, start_pos: int, cache: KVCache) -> torch.Tensor:
        """One step of one session: token ids ``[1, S]`` (first span) or hidden states ``[1, S, D]`` in;
        hidden states ``[1, S, D]`` out, or float32 logits of the last position ``[1, V]`` (last span)."""
        out = self.forward_batch([Row(inputs[0], start_pos, cache)])[0]
        assert out is not None
        return out.unsqueeze(0) if self.lm_head is not None else out

    @torch.inference_mode()
    def forward_batch(self, rows: list[Row]) -> list[torch.Tensor | None]:
        """One batched step over rows of different sessions (each session at most once).

        Returns per row (in the given order): hidden states ``[1, S, D]``; on the last span float32 logits
        ``[V]`` of the row's last position, or None for a row that asked for no logits.
        """
        if not rows:
            return []
        check_rows(rows)
        pool = rows[0].cache.pool
        plan = plan_step(rows, self.device)
        flat = [rows[i].x for i in plan.order]
        if self.embed is not None:
            ids = (torch.cat(flat) if len(flat) > 1 else flat[0]).to(self.device)
            h = self.embed(ids.unsqueeze(0))  # [1, T, D]
        else:
            x = torch.cat(flat) if len(flat) > 1 else flat[0]
            h = x.to(device=self.device, dtype=self.dtype).unsqueeze(0)
        cos, sin = self.rotary(h, plan.positions)  # [1, T, Dh]
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [T, 1, Dh]
        chunk_masks: dict[tuple[int, int | None], torch.Tensor | None] = {}
        for i, layer in enumerate(self.layers):
            h = self._layer(layer, i, h, cos, sin, plan, pool, chunk_masks)
        for r in rows:
            r.cache.commit(r.start_pos + r.n)
        if self.lm_head is None:
            return [h[:, plan.offsets[i]: plan.offsets[i] + r.n] for i, r in enumerate(rows)]
        assert self.norm is not None
        wanted = [i for i, r in enumerate(rows) if r.logits]
        out: list[torch.Tensor | None] = [None] * len(rows)
        if wanted:
            last = torch.tensor([plan.offsets[i] + rows[i].n - 1 for i in wanted], device=self.device)
            logits = self.lm_head(self.norm(h[0, last])).float()  # [R, V]
            for j, i in enumerate(wanted):
                out[i] = logits[j]
        return out

    def _chunk_mask(self, start_pos: int, n: int, window: int | None) -> torch.Tensor | None:
        """Mask of a multi-token row: boolean ``[S, K]`` (True = attend), a bias, or None (sdpa's causal)."""
        kv_len = start_pos + n
        if window is None or kv_len <= window:
            if start_pos == 0:
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
        self, layer: Any, idx: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: StepPlan,
        pool: KVPool, chunk_masks: dict[tuple[int, int | None], torch.Tensor | None],
    ) -> torch.Tensor:
        attn = layer.self_attn
        t = x.shape[1]
        hd, hkv = self.shape.head_dim, self.shape.num_kv_heads
        y = layer.input_layernorm(x)
        fused = getattr(attn, "swarmd_qkv", None)  # set by decode_graph.DecodeStep on a GPU: one GEMM, not three
        if fused is not None:
            qkv = F.linear(y, *fused)[0]
            nq, nk = self.shape.num_heads * hd, hkv * hd
            q = qkv[:, :nq].view(t, -1, hd)
            k = qkv[:, nq: nq + nk].view(t, -1, hd)
            v = qkv[:, nq + nk:].view(t, -1, hd)
        else:
            q = attn.q_proj(y).view(t, -1, hd)  # [T, H, Dh]
            k = attn.k_proj(y).view(t, -1, hd)  # [T, Hkv, Dh]
            v = attn.v_proj(y).view(t, -1, hd)
        if hasattr(attn, "q_norm"):  # Qwen3-style per-head norms
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        pool_k, pool_v = pool.k[idx], pool.v[idx]  # [P, page, Hkv, Dh]
        pool_k.view(-1, hkv, hd).index_copy_(0, plan.slots, k.to(pool_k.dtype))
        pool_v.view(-1, hkv, hd).index_copy_(0, plan.slots, v.to(pool_v.dtype))
        window = self.windows[idx]
        outs = []
        if plan.decode:
            outs.append(self._decode_attention(attn, q[: plan.decode], pool_k, pool_v, plan, window))
        for c in plan.chunks:
            keys = pool_k[c.page_index].view(1, -1, hkv, hd)[:, : c.kv_len].transpose(1, 2)  # [1, Hkv, K, Dh]
            vals = pool_v[c.page_index].view(1, -1, hkv, hd)[:, : c.kv_len].transpose(1, 2)
            if (c.offset, window) not in chunk_masks:
                chunk_masks[(c.offset, window)] = self._chunk_mask(c.start_pos, c.n, window)
            mask = chunk_masks[(c.offset, window)]
            qc = q[c.offset: c.offset + c.n].transpose(0, 1).unsqueeze(0)  # [1, H, S, Dh]
            o = F.scaled_dot_product_attention(
                qc, keys, vals, attn_mask=mask, is_causal=mask is None, scale=attn.scaling,
                enable_gqa=self.shape.num_heads != hkv,
            )  # [1, H, S, Dh]
            outs.append(o[0].transpose(0, 1).reshape(c.n, -1))
        out = torch.cat(outs) if len(outs) > 1 else outs[0]  # [T, H*Dh]
        h = x + attn.o_proj(out.unsqueeze(0))
        mlp = layer.mlp
        gate_up = getattr(mlp, "swarmd_gate_up", None)
        if gate_up is not None:
            gate, up = F.linear(layer.post_attention_layernorm(h), gate_up).chunk(2, dim=-1)
            return h + mlp.down_proj(mlp.act_fn(gate) * up)
        return h + mlp(layer.post_attention_layernorm(h))

    def _decode_attention(
        self, attn: Any, q: torch.Tensor, pool_k: torch.Tensor, pool_v: torch.Tensor, plan: StepPlan,
        window: int | None,
    ) -> torch.Tensor:
        """Single-token rows at once. The query heads that share a KV head ride as that head's query
        positions (``[Bd, Hkv, G, Dh]``), so grouped-query attention needs no repeated keys."""
        bd = plan.decode
        hd, hkv = self.shape.head_dim, self.shape.num_kv_heads
        assert plan.decode_index is not None
        if self.device.type == "cuda" and triton_available():  # straight from the pages, no padded copy
            o = paged_decode(q.contiguous(), pool_k, pool_v, plan.decode_index, plan.lens_tensor(self.device),
                             scale=float(attn.scaling), window=window)
            return o.reshape(bd, -1)
        keys = pool_k[plan.decode_index].view(bd, -1, hkv, hd)  # [Bd, K, Hkv, Dh]
        vals = pool_v[plan.decode_index].view(bd, -1, hkv, hd)
        if bd == 1:  # exact length (and window): no mask, the fastest kernels
            kv = plan.decode_lens[0]
            lo = max(0, kv - window) if window is not None else 0
            keys, vals = keys[:, lo:kv], vals[:, lo:kv]
            mask = None
        else:
            mask = plan.decode_mask(window, keys.shape[1], self.device)
        o = F.scaled_dot_product_attention(
            q.view(bd, hkv, -1, hd), keys.transpose(1, 2), vals.transpose(1, 2), attn_mask=mask,
            scale=attn.scaling,
        )  # [Bd, Hkv, G, Dh]
        return o.reshape(bd, -1)
