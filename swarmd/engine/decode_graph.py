"""Decode steps as CUDA graphs: the whole span's forward for a batch of single-token rows, replayed.

A decode step of a big model on a GPU is bound by reading the weights once; launched op by op from Python
it is bound by the CPU instead (about 25 kernels a layer). So at load time the span's decode forward is
captured once per batch-size bucket over static buffers (token ids or hidden states; each row's position,
KV slot, length and page table), and a step copies its rows into the bucket's buffers (one host-to-device
copy of the indices) and replays the graph.

:class:`DecodeStep` is that forward, written for static shapes: q, k and v in one matrix product, gate and
up in another (the separate weights become views of the fused ones, so no memory is added), rotary angles
from a table, the KV write as one indexed store, attention by :func:`paged_attention.paged_decode` straight
from the pool, greedy ids taken inside the graph. :class:`DecodeGraphs` owns the buffers and the graphs; on
a CPU (tests) it runs the same forward over the same buffers without capturing.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .kv_cache import KVPool
from .paged_attention import paged_decode, paged_decode_reference, splits_for, triton_available
from .stage import StageModel, rotate_half
from .step_plan import Row

log = logging.getLogger(__name__)

META = 4  # leading int32 columns of a row's step data: position, KV slot, keys, token id
BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
_NO_TABLE_ROPE = {"dynamic", "longrope"}  # rotary angles that depend on the sequence length, not just position


def graph_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes captured: the standard ladder up to ``max_batch`` (which is always included)."""
    out = [b for b in BUCKETS if b < max_batch]
    return (*out, max(1, max_batch))


def unsupported_reason(stage: Any) -> str | None:
    """Why a span cannot take the graph path (None: it can)."""
    if type(stage) is not StageModel:
        return "not a single-device span"
    cfg = stage.config
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rope, dict) and (rope.get("rope_type") or rope.get("type")) in _NO_TABLE_ROPE:
        return f"rotary scaling {rope.get('rope_type') or rope.get('type')!r} depends on the sequence length"
    for layer in stage.layers:
        attn: Any = layer.self_attn
        if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "attention without separate q/k/v projections"
        if getattr(attn.q_proj, "bias", None) is None and getattr(attn.k_proj, "bias", None) is not None:
            return "bias on k but not q"
    return None


@dataclass
class _Layer:
    qkv: torch.Tensor  # [(H + 2 Hkv) Dh, D]
    qkv_bias: torch.Tensor | None
    gate_up: torch.Tensor | None  # [2 F, D]; None: the layer's own MLP module runs
    window: int | None
    module: Any


def _fuse(mods: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several linears, which then read views of it: no memory is added."""
    weight = torch.cat([m.weight.data for m in mods])
    biases = [getattr(m, "bias", None) for m in mods]
    bias = torch.cat([b.data for b in biases if b is not None]) if all(b is not None for b in biases) else None
    at = 0
    for m in mods:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[at: at + n], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[at: at + n], requires_grad=False)
        at += n
    return weight, bias


class DecodeStep:
    """The decode forward of one span over static shapes (see the module docstring)."""

    def __init__(self, stage: StageModel, max_context: int, *, triton_kernel: bool | None = None,
                 fuse_eager: bool | None = None) -> None:
        """``triton_kernel``: attention by the Triton kernel (default: on CUDA) or the torch page walk. Tests
        force the kernel on a CPU, where Triton's interpreter runs it. ``fuse_eager``: the span's eager
        forward (prefill chunks) uses the fused weights too (default: on CUDA; CPUs keep their exact path)."""
        self.stage = stage
        self.shape = stage.shape
        self.layers: list[_Layer] = []
        for layer, window in zip(stage.layers, stage.windows, strict=True):
            attn: Any = layer.self_attn
            qkv, bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            mlp: Any = layer.mlp
            gate_up = None
            if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")) and \
                    getattr(mlp.gate_proj, "bias", None) is None:
                gate_up, _ = _fuse([mlp.gate_proj, mlp.up_proj])
            self.layers.append(_Layer(qkv, bias, gate_up, window, layer))
            if stage.device.type == "cuda" if fuse_eager is None else fuse_eager:
                attn.swarmd_qkv = (qkv, bias)
                if gate_up is not None:
                    mlp.swarmd_gate_up = gate_up
        with torch.inference_mode():
            probe = torch.empty(1, dtype=stage.dtype, device=stage.device)
            pos = torch.arange(max_context, device=stage.device).unsqueeze(0)
            cos, sin = stage.rotary(probe, pos)
        self.cos, self.sin = cos[0], sin[0]  # [max_context, Dh]
        self.use_triton = (stage.device.type == "cuda" if triton_kernel is None else triton_kernel) \
            and triton_available()
        self.splits: dict[int, int] = {}

    def _attention(self, q: torch.Tensor, idx: int, pool: KVPool, table: torch.Tensor, lens: torch.Tensor,
                   window: int | None, scale: float) -> torch.Tensor:
        k, v = pool.k[idx], pool.v[idx]
        if self.use_triton:
            rows = q.shape[0]
            if rows not in self.splits:
                sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 8
                self.splits[rows] = splits_for(rows, self.shape.num_kv_heads, sms)
            return paged_decode(q, k, v, table, lens, scale=scale, window=window, splits=self.splits[rows])
        return paged_decode_reference(q, k, v, table, lens, scale=scale, window=window)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, meta: torch.Tensor, pool: KVPool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: ``[B, D]`` hidden states (not read on the first span); meta ``[B, META + W]`` int32: position,
        KV slot, keys after this step (0 for padding rows), token id (first span), then the page table.
        Returns hidden states ``[B, D]`` (or float32 logits ``[B, V]`` on the last span) and, on the last
        span, the greedy ids ``[B]``."""
        st = self.stage
        hd, h_q, h_kv = self.shape.head_dim, self.shape.num_heads, self.shape.num_kv_heads
        positions = meta[:, 0].long()
        slots = meta[:, 1].long()
        lens = meta[:, 2]
        table = meta[:, META:]
        rows = meta.shape[0]
        h = st.embed(meta[:, 3].long()) if st.embed is not None else x.to(st.dtype)  # [B, D]
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # [B, 1, Dh]
        nq, nk = h_q * hd, h_kv * hd
        for i, lay in enumerate(self.layers):
            layer = lay.module
            attn = layer.self_attn
            y = layer.input_layernorm(h)
            qkv = F.linear(y, lay.qkv, lay.qkv_bias)
            q = qkv[:, :nq].view(rows, h_q, hd)
            k = qkv[:, nq: nq + nk].view(rows, h_kv, hd)
            v = qkv[:, nq + nk:].view(rows, h_kv, hd)
            if hasattr(attn, "q_norm"):
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            pool.k[i].view(-1, h_kv, hd).index_copy_(0, slots, k.to(pool.k.dtype))
            pool.v[i].view(-1, h_kv, hd).index_copy_(0, slots, v.to(pool.v.dtype))
            o = self._attention(q.contiguous(), i, pool, table, lens, lay.window, float(attn.scaling))
            h = h + attn.o_proj(o.view(rows, -1))
            y = layer.post_attention_layernorm(h)
            if lay.gate_up is not None:
                mlp = layer.mlp
                gate, up = F.linear(y, lay.gate_up).chunk(2, dim=-1)
                h = h + mlp.down_proj(mlp.act_fn(gate) * up)
            else:
                h = h + layer.mlp(y)
        if st.lm_head is None:
            return h, None
        assert st.norm is not None
        logits = st.lm_head(st.norm(h)).float()
        return logits, logits.argmax(-1)


class DecodeGraphs:
    """Static buffers and one captured graph per bucket. ``run`` takes decode rows (one token each)."""

    def __init__(self, step: DecodeStep, pool: KVPool, max_batch: int, *, capture: bool) -> None:
        st = step.stage
        self.step = step
        self.pool = pool
        self.device = st.device
        self.buckets = graph_buckets(max_batch)
        self.max_batch = self.buckets[-1]
        self.width = -(-step.cos.shape[0] // pool.page_tokens)  # pages of the longest context
        self.first = st.embed is not None
        self.last = st.lm_head is not None
        rows = self.max_batch
        self.x = torch.zeros(1 if self.first else rows, st.hidden_size, dtype=st.dtype, device=self.device)
        self.meta = torch.zeros(rows, META + self.width, dtype=torch.int32, device=self.device)
        self._host = torch.zeros(rows, META + self.width, dtype=torch.int32,
                                 pin_memory=self.device.type == "cuda")
        self._np = self._host.numpy()  # the same memory: numpy's item writes cost a fraction of torch's
        # Results come back through pinned buffers and an event: waiting on the event releases the GIL, so
        # the event loop runs while the GPU works (a blocking .tolist() would hold it for the whole step).
        pinned = self.device.type == "cuda"
        self._ids_host = torch.zeros(rows, dtype=torch.long, pin_memory=pinned)
        self._out_host = (None if self.last else
                          torch.zeros(rows, st.hidden_size, dtype=st.dtype, pin_memory=pinned))
        self._wait = pinned  # results wait for the device (CUDA) or are there already (CPU)
        self.scratch_slot = pool.reserve_scratch() * pool.page_tokens  # where padding rows write their K/V
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.capture_s = 0.0
        self.graph_bytes = 0
        if capture:
            self._capture()

    def _capture(self) -> None:
        started = time.monotonic()
        self._pad_meta(self.max_batch)
        self.meta.copy_(self._host)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: Triton compiles, cuBLAS picks its kernels
            for b in self.buckets:
                self.step.forward(self._x(b), self.meta[:b], self.pool)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        gc.collect()
        torch.cuda.empty_cache()  # as torch.cuda.graph does at each capture: what follows is the graphs'
        before = torch.cuda.memory_reserved(self.device)
        mempool = torch.cuda.graph_pool_handle()
        for b in reversed(self.buckets):  # largest first: the smaller ones reuse its memory
            graph = torch.cuda.CUDAGraph()
            # thread_local: another span of this node (a make-before-break move) may be stepping meanwhile
            with torch.cuda.graph(graph, pool=mempool, capture_error_mode="thread_local"):
                self.outputs[b] = self.step.forward(self._x(b), self.meta[:b], self.pool)
            self.graphs[b] = graph
        torch.cuda.synchronize(self.device)
        self.graph_bytes = torch.cuda.memory_reserved(self.device) - before
        self.capture_s = time.monotonic() - started

    def _x(self, b: int) -> torch.Tensor:
        return self.x if self.first else self.x[:b]

    def _pad_meta(self, upto: int, start: int = 0) -> None:
        pad = self._np[start:upto, :META]
        pad[:] = 0
        pad[:, 1] = self.scratch_slot

    def fits(self, rows: list[Row]) -> bool:
        return 0 < len(rows) <= self.max_batch and all(r.n == 1 and r.start_pos < self.step.cos.shape[0]
                                                       for r in rows)

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def run(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One decode step of ``rows`` (each ``n == 1``; checked by the caller). Returns the first
        ``len(rows)`` rows of the output and of the greedy ids, both already on the host except the
        last span's logits (hidden states on the host; logits on the device, greedy ids on the host)."""
        n = len(rows)
        b = self.bucket(n)
        host = self._np
        page_tokens = self.pool.page_tokens
        for j, r in enumerate(rows):
            pos = r.start_pos
            pages = r.cache.pages
            used = pos // page_tokens + 1
            line = host[j]
            line[0] = pos
            line[1] = pages[pos // page_tokens] * page_tokens + pos % page_tokens
            line[2] = pos + 1
            line[3] = (r.ids[0] if r.ids is not None else int(r.x[0])) if self.first else 0
            line[META: META + used] = pages[:used]
        if b > n:
            self._pad_meta(b, n)
        self.meta[:b].copy_(self._host[:b], non_blocking=True)
        if not self.first:
            self.x[:n].copy_(torch.cat([r.x for r in rows]) if n > 1 else rows[0].x)
        if b in self.graphs:
            self.graphs[b].replay()
            out, ids_out = self.outputs[b]
        else:
            out, ids_out = self.step.forward(self._x(b), self.meta[:b], self.pool)
        for r in rows:
            r.cache.commit(r.start_pos + 1)
        if not self._wait:  # CPU: nothing to wait for
            return out[:n], (ids_out[:n] if ids_out is not None else None)
        if ids_out is not None:
            self._ids_host[:n].copy_(ids_out[:n], non_blocking=True)
        else:
            assert self._out_host is not None
            self._out_host[:n].copy_(out[:n], non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()  # GIL released while the GPU finishes
        if ids_out is not None:
            return out[:n], self._ids_host[:n]
        assert self._out_host is not None
        return self._out_host[:n], None


def build_graphs(stage: StageModel, pool: KVPool, max_batch: int, *, capture: bool,
                 on_log: Callable[[str], None] | None = None) -> DecodeGraphs | None:
    """Fuse the span's weights and capture its decode graphs; None (with a log line) where it cannot."""
    reason = unsupported_reason(stage)
    if reason is not None:
        log.info("decode graphs off for %s: %s", stage.span, reason)
        return None
    step = DecodeStep(stage, stage.max_context)
    graphs = DecodeGraphs(step, pool, max_batch, capture=capture)
    if capture:
        msg = (f"captured decode graphs for {stage.span}: {len(graphs.graphs)} batch sizes up to "
               f"{graphs.max_batch} in {graphs.capture_s:.2f}s, {graphs.graph_bytes / 2**20:.0f} MiB")
        log.info("%s", msg)
        if on_log is not None:
            on_log(msg)
    return graphs
