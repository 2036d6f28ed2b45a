"""engine/paged_attention.py: the Triton decode kernel (run by Triton's interpreter on a CPU) equals the
plain-torch page walk, which equals SDPA over the keys laid out in order; windows, grouped heads, splits,
padding rows and pages in any order."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from swarmd.engine import paged_attention as pa

needs_triton = pytest.mark.skipif(not pa.triton_available(), reason="triton is not installed")
PAGE = 16


def make_case(seed: int, rows: int, heads: int, kv_heads: int, dim: int, lens: list[int], pages: int = 40,
              dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, dim, generator=g).to(dtype)
    k_pool = torch.randn(pages, PAGE, kv_heads, dim, generator=g).to(dtype)
    v_pool = torch.randn(pages, PAGE, kv_heads, dim, generator=g).to(dtype)
    width = max(1, max(-(-n // PAGE) for n in lens))
    perm = torch.randperm(pages, generator=g)  # pages of a row are scattered through the pool
    table = perm[: rows * width].view(rows, width).to(torch.int32)
    return q, k_pool, v_pool, table, torch.tensor(lens, dtype=torch.int32)


def sdpa_in_order(q, k_pool, v_pool, table, lens, scale, window):
    """Keys laid out position by position from the page table, then SDPA with an explicit mask."""
    rows, heads, dim = q.shape
    kv_heads = k_pool.shape[2]
    out = torch.zeros_like(q, dtype=torch.float32)
    for b in range(rows):
        n = int(lens[b])
        if n == 0:
            continue
        keys = torch.stack([k_pool[table[b, p // PAGE], p % PAGE] for p in range(n)])  # [n, Hkv, D]
        vals = torch.stack([v_pool[table[b, p // PAGE], p % PAGE] for p in range(n)])
        allowed = torch.ones(n, dtype=torch.bool)
        if window:
            allowed[: max(0, n - window)] = False
        rep = heads // kv_heads
        k = keys.float().repeat_interleave(rep, dim=1).transpose(0, 1)  # [H, n, D]
        v = vals.float().repeat_interleave(rep, dim=1).transpose(0, 1)
        o = F.scaled_dot_product_attention(q[b].float().unsqueeze(1), k, v, attn_mask=allowed.view(1, 1, n),
                                           scale=scale)
        out[b] = o[:, 0]
    return out


CASES = [
    # rows, heads, kv_heads, dim, lens, window
    (1, 4, 2, 16, [1], None),
    (3, 8, 2, 32, [5, 17, 64], None),
    (4, 4, 4, 16, [100, 3, 0, 33], None),  # a padding row (length 0) gets zeros
    (2, 6, 2, 64, [90, 40], 24),  # a sliding window shorter than the context
    (2, 4, 1, 16, [129, 16], 200),  # a window longer than the context changes nothing
]


@pytest.mark.parametrize("case", CASES)
def test_reference_equals_sdpa_in_order(case) -> None:
    rows, heads, kv_heads, dim, lens, window = case
    q, k, v, table, lens_t = make_case(1, rows, heads, kv_heads, dim, lens)
    scale = dim ** -0.5
    ref = pa.paged_decode_reference(q, k, v, table, lens_t, scale=scale, window=window)
    want = sdpa_in_order(q, k, v, table, lens_t, scale, window)
    torch.testing.assert_close(ref.float(), want, atol=1e-5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("case", CASES)
def test_triton_kernel_equals_reference(case, splits: int) -> None:
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
        pytest.skip("no GPU and the triton interpreter is off (tests/conftest.py turns it on)")
    rows, heads, kv_heads, dim, lens, window = case
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, table, lens_t = (t.to(device) for t in make_case(2, rows, heads, kv_heads, dim, lens))
    scale = dim ** -0.5
    out = torch.full_like(q, float("nan"))  # every element must be written
    got = pa.paged_decode(q, k, v, table, lens_t, scale=scale, window=window, splits=splits, out=out)
    ref = pa.paged_decode_reference(q, k, v, table, lens_t, scale=scale, window=window)
    assert torch.isfinite(got).all()
    tol = 1e-5 if device == "cpu" else 3e-3  # tf32 dots on a GPU
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)


@needs_triton
def test_triton_kernel_reads_strided_lengths_and_tables() -> None:
    """The decode graphs pass the lengths and page tables as columns of one int32 step buffer."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
        pytest.skip("no GPU and the triton interpreter is off")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lens = [9, 70, 1, 33]
    q, k, v, table, lens_t = (t.to(device) for t in make_case(3, 4, 4, 2, 16, lens))
    step = torch.full((4, 3 + table.shape[1]), 10**6, dtype=torch.int32, device=device)  # poison around them
    step[:, 1] = lens_t
    step[:, 3:] = table
    got = pa.paged_decode(q, k, v, step[:, 3:], step[:, 1], scale=0.25, splits=2)
    ref = pa.paged_decode_reference(q, k, v, table, lens_t, scale=0.25)
    tol = 1e-5 if device == "cpu" else 3e-3
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
