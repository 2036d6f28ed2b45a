"""The seam between a session's entry node and the stages that compute it.

:class:`Pipeline` is what a generation needs: open a session along a chain of stages, run a step
(token ids in at the first stage, the sampled token out of the last), close. :class:`LocalPipeline`
serves it from one engine holding every layer; the ring implementation (several nodes) plugs in here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..errors import NotReady
from ..types import SamplingParams


class Pipeline(Protocol):
    async def open(self, session_id: str, capacity: int) -> None: ...

    async def step(
        self, session_id: str, token_ids: Sequence[int], start_pos: int,
        sampling: tuple[SamplingParams, int, int],
    ) -> int: ...

    async def close(self, session_id: str) -> None: ...


class EngineLike(Protocol):
    async def open_session(self, session_id: str, capacity: int) -> None: ...

    async def step(self, session_id: str, inputs: Sequence[int], start_pos: int,
                   sampling: tuple[SamplingParams, int, int] | None = None) -> object: ...

    async def close_session(self, session_id: str) -> None: ...


class LocalPipeline:
    """Every layer on this node: the whole chain is one engine call."""

    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine

    async def open(self, session_id: str, capacity: int) -> None:
        await self.engine.open_session(session_id, capacity)

    async def step(
        self, session_id: str, token_ids: Sequence[int], start_pos: int,
        sampling: tuple[SamplingParams, int, int],
    ) -> int:
        out = await self.engine.step(session_id, token_ids, start_pos, sampling)
        if not isinstance(out, int):
            raise NotReady("this node's span does not end at the model's last layer")
        return out

    async def close(self, session_id: str) -> None:
        await self.engine.close_session(session_id)
