"""Decode attention straight from the paged KV pool: one query token per row, keys read page by page.

``paged_decode`` is a Triton kernel in the flash-decoding style: each program takes one row, one KV head
(with every query head that shares it, so grouped-query attention reads each key once) and one slice of
the row's keys; a second small kernel merges the slices by their log-sum-exp. No padded copy of the keys
is ever made: the page table is read inside the kernel. Sliding windows cut the key range per layer.
All shapes are static for a given batch, so the kernels can be captured in a CUDA graph; the lengths and
the page table are device tensors read at run time.

``paged_decode_reference`` walks the same pages in plain torch (float32): the test oracle on CPUs, and the
path taken where Triton is missing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton ships with torch's CUDA builds; on a CPU-only install it may be absent.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

MAX_SPLITS = 32
BLOCK_N = 64  # keys per inner step (four pages of 16)
LOG2E = 1.4426950408889634


def triton_available() -> bool:
    return triton is not None


def splits_for(rows: int, kv_heads: int, sms: int) -> int:
    """Key slices per (row, KV head): enough programs to cover the multiprocessors about twice over."""
    want = max(1, -(-2 * sms // max(1, rows * kv_heads)))
    return min(MAX_SPLITS, 1 << (want - 1).bit_length())


if triton is not None:

    @triton.jit
    def _split_kernel(
        q_ptr, k_ptr, v_ptr, table_ptr, lens_ptr, out_ptr, part_ptr, lse_ptr,
        stride_qb, stride_qh, stride_tb, stride_lb, stride_slot, stride_kh,
        scale_log2, window,
        G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, SPLITS: tl.constexpr,
        BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        s = tl.program_id(2)
        H = tl.num_programs(1) * G
        length = tl.load(lens_ptr + b * stride_lb).to(tl.int32)
        lo = 0
        if window > 0:
            lo = tl.maximum(length - window, 0)
        per = tl.cdiv(tl.cdiv(length - lo, SPLITS), BLOCK_N) * BLOCK_N
        start = lo + s * per
        end = tl.minimum(start + per, length)

        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        g_mask = offs_g < G
        d_mask = offs_d < D
        heads = kvh * G + offs_g
        q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=g_mask[:, None] & d_mask[None, :], other=0.0)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            t = n0 + tl.arange(0, BLOCK_N)
            t_mask = t < end
            page = tl.load(table_ptr + b * stride_tb + t // PAGE, mask=t_mask, other=0).to(tl.int64)
            slot = page * PAGE + t % PAGE
            kv_off = slot[:, None] * stride_slot + kvh * stride_kh + offs_d[None, :]
            kv_mask = t_mask[:, None] & d_mask[None, :]
            k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
            scores = tl.dot(q, tl.trans(k)) * scale_log2  # [G, N], base-2 logits
            scores = tl.where(t_mask[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            p = tl.exp2(scores - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        safe_l = tl.where(l_i > 0, l_i, 1.0)
        o = acc / safe_l[:, None]
        o_mask = g_mask[:, None] & d_mask[None, :]
        if SPLITS == 1:
            tl.store(out_ptr + (b * H + heads[:, None]) * D + offs_d[None, :], o.to(out_ptr.dtype.element_ty),
                     mask=o_mask)
        else:
            lse = tl.where(l_i > 0, m_i + tl.log2(safe_l), float("-inf"))
            row = (b * H + heads) * SPLITS + s
            tl.store(part_ptr + row[:, None] * D + offs_d[None, :], o, mask=o_mask)
            tl.store(lse_ptr + row, lse, mask=g_mask)

    @triton.jit
    def _combine_kernel(
        part_ptr, lse_ptr, out_ptr,
        D: tl.constexpr, SPLITS: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        bh = tl.program_id(0)
        offs_s = tl.arange(0, SPLITS)
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        lse = tl.load(lse_ptr + bh * SPLITS + offs_s)
        m = tl.max(lse, 0)
        m = tl.where(m == float("-inf"), 0.0, m)
        w = tl.where(lse == float("-inf"), 0.0, tl.exp2(lse - m))
        parts = tl.load(part_ptr + (bh * SPLITS + offs_s)[:, None] * D + offs_d[None, :],
                        mask=d_mask[None, :], other=0.0)
        total = tl.sum(w, 0)
        o = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
        tl.store(out_ptr + bh * D + offs_d, o.to(out_ptr.dtype.element_ty), mask=d_mask)


def paged_decode(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, table: torch.Tensor, lens: torch.Tensor,
    *, scale: float, window: int | None = None, splits: int | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query token per row over that row's pages.

    q ``[B, H, D]``; k_pool, v_pool ``[P, page, Hkv, D]`` (one layer of the pool, contiguous); table
    ``[B, W]`` page ids (only the first ``ceil(len / page)`` of a row are read); lens ``[B]`` keys per row,
    this step's own key included (0: the row is padding and gets zeros). Returns ``[B, H, D]`` in q's dtype.
    table and lens may be strided views (columns of one step buffer): only their last dimension must be dense.
    """
    assert table.stride(-1) == 1, "the page table's rows must be contiguous"
    assert triton is not None, "paged_decode needs triton (paged_decode_reference does not)"
    rows, heads, dim = q.shape
    _, page, kv_heads, _ = k_pool.shape
    group = heads // kv_heads
    if q.stride(-1) != 1:
        q = q.contiguous()
    assert k_pool.is_contiguous() and v_pool.is_contiguous() and k_pool.shape == v_pool.shape
    if splits is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 8
        splits = splits_for(rows, kv_heads, sms)
    if out is None:
        out = torch.empty((rows, heads, dim), dtype=q.dtype, device=q.device)
    if splits > 1:
        part = torch.empty((rows * heads * splits, dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((rows * heads * splits,), dtype=torch.float32, device=q.device)
    else:
        part = lse = out
    block_d = triton.next_power_of_2(dim)
    _split_kernel[(rows, kv_heads, splits)](
        q, k_pool, v_pool, table, lens, out, part, lse,
        q.stride(0), q.stride(1), table.stride(0), lens.stride(0), kv_heads * dim, dim,
        scale * LOG2E, int(window or 0),
        G=group, D=dim, PAGE=page, SPLITS=splits, BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_D=block_d, BLOCK_N=BLOCK_N, num_warps=4, num_stages=2,
    )
    if splits > 1:
        _combine_kernel[(rows * heads,)](part, lse, out, D=dim, SPLITS=splits, BLOCK_D=block_d, num_warps=4)
    return out


def paged_decode_reference(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, table: torch.Tensor, lens: torch.Tensor,
    *, scale: float, window: int | None = None,
) -> torch.Tensor:
    """The same function as :func:`paged_decode`, one row at a time in float32 (oracle and fallback)."""
    rows, heads, dim = q.shape
    page, kv_heads = k_pool.shape[1], k_pool.shape[2]
    out = torch.zeros((rows, heads, dim), dtype=q.dtype, device=q.device)
    for b, length in enumerate(lens.tolist()):
        if length <= 0:
            continue
        pages = table[b, : -(-length // page)].long()
        keys = k_pool[pages].reshape(-1, kv_heads, dim)[:length].float()
        vals = v_pool[pages].reshape(-1, kv_heads, dim)[:length].float()
        lo = max(0, length - window) if window else 0
        keys, vals = keys[lo:].transpose(0, 1), vals[lo:].transpose(0, 1)  # [Hkv, K, D]
        qb = q[b].float().view(kv_heads, heads // kv_heads, dim)  # [Hkv, G, D]
        o = F.scaled_dot_product_attention(qb, keys, vals, scale=scale)
        out[b] = o.reshape(heads, dim).to(q.dtype)
    return out
