"""Small value types shared across the package (no I/O, no torch)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LayerSpan:
    """Decoder layers ``[start, end)`` of a model with ``num_layers`` layers."""

    start: int
    end: int
    num_layers: int

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.end <= self.num_layers):
            raise ValueError(
                f"layer span [{self.start}, {self.end}) is not inside a model of {self.num_layers} layers"
            )

    @property
    def is_first(self) -> bool:
        """Holds the token embedding."""
        return self.start == 0

    @property
    def is_last(self) -> bool:
        """Holds the final norm and the LM head."""
        return self.end == self.num_layers

    @property
    def count(self) -> int:
        return self.end - self.start

    def as_list(self) -> list[int]:
        return [self.start, self.end]

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How the next token is chosen. ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class TopLogits:
    """What a last stage reports instead of only a token when its output is being verified."""

    token: int  # the token it samples, as it would have sent it on
    ids: tuple[int, ...]  # the largest logits, largest first
    logits: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A tokenised prompt and everything that decides when generation stops."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class TensorBlob:
    """Raw little-endian tensor bytes as they cross the wire. ``dtype``: float32, float16 or bfloat16."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"


class NodeState(enum.StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    DEGRADED = "degraded"
