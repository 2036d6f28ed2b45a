"""The engine's seam, declared: what ``ring/``, the node, status, metrics and the device watch may use of
a span and of its engine. Torch-free, so those modules never import torch to name the types.

Three implementations stand behind :class:`Stage`: the single-device ``stage.StageModel`` (eager on a CPU,
CUDA graphs for decode on a GPU), and ``tp_stage.TPStage`` (a span split over several devices). One stands
behind :class:`EngineHandle`: ``runtime.Engine`` (continuous batching over any Stage).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from ..types import LayerSpan, SamplingParams, TensorBlob, TopLogits

StepResult = int | TensorBlob | TopLogits | None
Sampling = tuple[SamplingParams, int, int]  # parameters, the session's seed, the step


class Stage(Protocol):
    """One span of decoder layers, loaded."""

    @property
    def span(self) -> LayerSpan: ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_context(self) -> int: ...

    @property
    def samples(self) -> bool:
        """This span holds the LM head: its steps end in a sampled token."""
        ...

    def parameter_bytes(self) -> int: ...

    def kv_bytes_per_token(self) -> int: ...

    def dead(self) -> list[str]:
        """Parts of the span that are gone for good (a tensor-parallel worker); empty while healthy."""
        ...

    def kill_workers(self) -> None:
        """Stop any helper processes at once (the node is about to exit)."""
        ...

    def close(self) -> None:
        """Blocking: release what the span holds beyond its tensors."""
        ...


class KVBudgetView(Protocol):
    @property
    def capacity(self) -> int: ...

    @property
    def used(self) -> int: ...

    @property
    def sessions(self) -> int: ...


class EngineHandle(Protocol):
    """Sessions and their steps on one span (continuous batching behind it)."""

    @property
    def stage(self) -> Stage: ...

    @property
    def budget(self) -> KVBudgetView: ...

    @property
    def max_batch_tokens(self) -> int: ...

    @property
    def batches(self) -> int: ...

    @property
    def batched_steps(self) -> int: ...

    observe: Callable[[tuple[int, int], float, float], None] | None

    @property
    def graph_info(self) -> dict[str, object] | None: ...

    def prepare(self, static_decode: bool | None = None) -> None: ...

    async def open_session(self, session_id: str, capacity: int) -> None: ...

    async def close_session(self, session_id: str) -> None: ...

    async def forward(self, session_id: str, tokens: Sequence[int], hidden: TensorBlob | None, start_pos: int,
                      sampling: Sampling | None, report: bool = False) -> StepResult: ...

    def decode(self, session_id: str, tokens: Sequence[int], hidden: TensorBlob | None, start_pos: int,
               params: SamplingParams, seed: int, step: int, *, prompt_len: int, stop: frozenset[int],
               max_tokens: int) -> AsyncIterator[tuple[int, int]]:
        """A sampled step, then the session decodes inside the engine (a span that is the whole ring):
        yields (step, token) until a stop token or ``max_tokens``."""
        ...

    async def close(self) -> None: ...
