"""Choose the next token from logits. Deterministic per (seed, step) so a replayed session agrees.

A whole batch is sampled at once on the logits' device, with one copy of the chosen ids to the host:
greedy rows take the argmax; the others are scaled by their temperature, cut by top-k and top-p, and
drawn by inverting the cumulative distribution at one uniform number per row, hashed from the session's
seed and the step. Every operation is row-wise, so a row's token does not depend on the batch it rode in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from ..types import SamplingParams

Draw = tuple[SamplingParams, int, int]  # the parameters, the session's seed, the step


def step_uniform(seed: int, step: int) -> float:
    """A number in [0, 1) fixed by (seed, step): 53 bits of a hash over every bit of both."""
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


def _filter(scores: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Top-k, then top-p, row by row over ``[R, V]`` temperature-scaled scores (-inf: cut)."""
    vocab = scores.shape[-1]
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(ks):
        kmax = max(ks)
        top = torch.topk(scores, kmax, dim=-1).values  # [R, kmax], descending
        at = torch.tensor([max(k, 1) - 1 for k in ks], device=scores.device).view(-1, 1)
        kth = top.gather(1, at)
        kth = torch.where(torch.tensor(ks, device=scores.device).view(-1, 1) > 0, kth, float("-inf"))
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = torch.tensor([p.top_p for p in params], dtype=scores.dtype, device=scores.device).view(-1, 1)
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1.0 - top_p)
        drop_sorted[:, -1] = False  # always keep the most likely token
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def sample_batch(logits: torch.Tensor, draws: Sequence[Draw]) -> list[int]:
    """logits ``[R, V]``; one (params, seed, step) per row. Returns the chosen token of every row."""
    rows = logits.shape[0]
    if rows == 0:
        return []
    picked = logits.argmax(dim=-1)
    drawn = [i for i, (p, _, _) in enumerate(draws) if not p.greedy]
    if drawn:
        idx = torch.tensor(drawn, device=logits.device)
        params = [draws[i][0] for i in drawn]
        temps = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=logits.device)
        scores = _filter(logits[idx].float() / temps.view(-1, 1), params)
        cdf = scores.softmax(dim=-1).double().cumsum(dim=-1)  # float64: the sum is exact enough over 10^5
        u = torch.tensor([step_uniform(seed, step) for _, seed, step in (draws[i] for i in drawn)],
                         dtype=torch.float64, device=logits.device).view(-1, 1)
        choice = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=logits.shape[-1] - 1)
        picked = picked.index_copy(0, idx, choice.view(-1))
    return [int(t) for t in picked.tolist()]


def sample(logits: torch.Tensor, params: SamplingParams, seed: int, step: int) -> int:
    """logits: ``[V]`` float32. One row of :func:`sample_batch`."""
    return sample_batch(logits.unsqueeze(0), [(params, seed, step)])[0]
