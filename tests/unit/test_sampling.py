"""engine/sampling.py: greedy is argmax; draws are deterministic per (seed, step) and follow the filters."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from swarmd.engine.sampling import sample
from swarmd.types import SamplingParams


def random_logits(seed: int, vocab: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=g) * 3.0


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_argmax(seed: int) -> None:
    logits = random_logits(seed)
    params = SamplingParams(temperature=0.0)
    assert sample(logits, params, seed=123, step=seed) == int(torch.argmax(logits))


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.0])
def test_top_k_one_is_argmax_at_any_temperature(temperature: float) -> None:
    logits = random_logits(7)
    params = SamplingParams(temperature=temperature, top_k=1)
    assert {sample(logits, params, seed=s, step=s * 3) for s in range(30)} == {int(torch.argmax(logits))}


@pytest.mark.parametrize("top_p", [1e-6, 0.0])  # the API accepts top_p = 0
def test_tiny_top_p_keeps_only_the_top_token(top_p: float) -> None:
    logits = torch.tensor([1.0, 3.0, 2.5, 0.0, 2.9])
    params = SamplingParams(temperature=1.5, top_p=top_p)
    assert {sample(logits, params, seed=s, step=0) for s in range(50)} == {1}


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    params = SamplingParams(temperature=1.0, top_p=0.7)  # needs the top two tokens
    drawn = {sample(probs.log(), params, seed=1, step=s) for s in range(300)}
    assert drawn == {0, 1}


def test_top_k_restricts_the_draw() -> None:
    logits = torch.tensor([0.0, 5.0, 4.9, 4.8, 0.1, 4.7])
    params = SamplingParams(temperature=5.0, top_k=3)
    drawn = {sample(logits, params, seed=2, step=s) for s in range(300)}
    assert drawn == {1, 2, 3}


def test_same_seed_and_step_give_the_same_token() -> None:
    logits = torch.zeros(1000)  # uniform: any difference in the generator shows
    params = SamplingParams(temperature=1.0)
    for step in range(20):
        first = sample(logits, params, seed=42, step=step)
        assert sample(logits.clone(), params, seed=42, step=step) == first


def test_different_seeds_give_different_sequences() -> None:
    logits = torch.zeros(1000)
    params = SamplingParams(temperature=1.0)
    seqs = {seed: [sample(logits, params, seed=seed, step=s) for s in range(16)] for seed in (0, 1, 2, 99991)}
    assert len({tuple(v) for v in seqs.values()}) == len(seqs)
    # and within one sequence the steps do not repeat one draw
    assert len(set(seqs[0])) > 8


@pytest.mark.parametrize(("a", "b"), [(0, 2**32), (7, 7 + 5 * 2**32), (1, 1 + 2**62)])
def test_seeds_differing_only_in_high_bits_give_different_sequences(a: int, b: int) -> None:
    logits = torch.zeros(1000)
    params = SamplingParams(temperature=1.0)
    seq_a = [sample(logits, params, seed=a, step=s) for s in range(16)]
    seq_b = [sample(logits, params, seed=b, step=s) for s in range(16)]
    assert seq_a != seq_b


def test_temperature_sampling_follows_softmax() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    temperature = 0.8
    params = SamplingParams(temperature=temperature)
    n = 4000
    counts = Counter(sample(logits, params, seed=9, step=s) for s in range(n))
    expected = torch.softmax(logits / temperature, dim=-1).tolist()
    for token, p in enumerate(expected):
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(counts[token] / n - p) < 5 * sd + 1e-3, (token, counts[token] / n, p)


def test_higher_temperature_flattens_the_distribution() -> None:
    logits = torch.tensor([0.0, 2.0])
    cold = sum(sample(logits, SamplingParams(temperature=0.25), seed=3, step=s) == 0 for s in range(2000))
    hot = sum(sample(logits, SamplingParams(temperature=2.0), seed=3, step=s) == 0 for s in range(2000))
    assert cold < 20  # p(0) = 3.4e-4
    assert 400 < hot < 700  # p(0) = 0.27


def test_a_batch_samples_each_row_as_alone() -> None:
    """Rows of one batch (greedy and drawn, different filters and seeds) get the token each gets alone:
    every operation is row by row, so a row's token never depends on what it was batched with."""
    from swarmd.engine.sampling import sample_batch

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 300, generator=g) * 2.5
    draws = [(SamplingParams(temperature=0.0), 1, 0), (SamplingParams(temperature=0.7), 2, 3),
             (SamplingParams(temperature=1.3, top_k=5), 3, 1), (SamplingParams(temperature=1.0, top_p=0.5), 4, 9),
             (SamplingParams(temperature=0.9, top_k=40, top_p=0.8), 5, 2), (SamplingParams(temperature=2.0), 6, 7)]
    together = sample_batch(logits, draws)
    alone = [sample(logits[i], p, seed, step) for i, (p, seed, step) in enumerate(draws)]
    assert together == alone
    assert together[0] == int(logits[0].argmax())
    # the same rows in another order and with other company
    order = [5, 3, 0, 1, 4, 2]
    again = sample_batch(logits[order], [draws[i] for i in order])
    assert again == [together[i] for i in order]
