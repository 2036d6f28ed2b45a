"""Choose the next token from logits. Deterministic per (seed, step) so a replayed session agrees."""

from __future__ import annotations

import hashlib

import torch

from ..types import SamplingParams


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A generator for one (seed, step). Hashed, so every bit of the seed reaches the low 32 bits that
    torch's CPU generator keeps."""
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


def sample(logits: torch.Tensor, params: SamplingParams, seed: int, step: int) -> int:
    """logits: ``[V]`` float32. Greedy when temperature is 0; else temperature, top-k, top-p, draw."""
    if params.greedy:
        return int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1.0 - params.top_p)
        drop_sorted[-1] = False  # always keep the most likely token
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(dim=-1)
    gen = step_generator(seed, step, logits.device)
    return int(torch.multinomial(probs, 1, generator=gen).item())
