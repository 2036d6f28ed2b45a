"""types.py: LayerSpan holds [start, end) inside the model, and knows whether it holds embedding or head."""

from __future__ import annotations

import dataclasses

import pytest

from swarmd.types import LayerSpan, SamplingParams

VALID = [(0, 1, 1), (0, 32, 32), (5, 6, 32), (31, 32, 32), (3, 10, 12)]


@pytest.mark.parametrize(("start", "end", "n"), VALID)
def test_valid_spans(start: int, end: int, n: int) -> None:
    span = LayerSpan(start, end, n)
    assert span.count == end - start
    assert span.as_list() == [start, end]
    assert str(span) == f"[{start}, {end})"


@pytest.mark.parametrize(
    ("start", "end", "n"),
    [(-1, 4, 8), (4, 4, 8), (5, 4, 8), (0, 9, 8), (8, 9, 8), (0, 0, 0), (0, 1, 0)],
)
def test_invalid_spans(start: int, end: int, n: int) -> None:
    with pytest.raises(ValueError, match="layer span"):
        LayerSpan(start, end, n)


@pytest.mark.parametrize(
    ("span", "first", "last"),
    [
        (LayerSpan(0, 32, 32), True, True),
        (LayerSpan(0, 16, 32), True, False),
        (LayerSpan(16, 32, 32), False, True),
        (LayerSpan(8, 24, 32), False, False),
    ],
)
def test_first_and_last(span: LayerSpan, first: bool, last: bool) -> None:
    assert span.is_first is first
    assert span.is_last is last


def test_span_is_frozen() -> None:
    span = LayerSpan(0, 4, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        span.end = 8  # type: ignore[misc]


@pytest.mark.parametrize(("temperature", "greedy"), [(0.0, True), (-1.0, True), (1e-6, False), (1.0, False)])
def test_sampling_params_greedy(temperature: float, greedy: bool) -> None:
    assert SamplingParams(temperature=temperature).greedy is greedy
