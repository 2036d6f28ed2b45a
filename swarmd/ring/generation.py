"""One generation seen from its entry node: prompt in, text deltas out, token history kept.

The history (prompt plus every sampled token) is what a replacement stage replays to rebuild its
KV cache after a failure; sampling is seeded per step, so a replayed session draws the same tokens.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType

from ..types import FinishReason, GenerationRequest
from .pipeline import Pipeline
from .textstream import TextStream

log = logging.getLogger(__name__)


class Generation:
    """Use as ``async with Generation(...) as g: async for delta in g.stream(): ...``.

    Leaving the block (normally, on error or on cancellation) frees the session's KV caches at once.
    """

    def __init__(
        self, pipeline: Pipeline, request: GenerationRequest, decode: Callable[[Sequence[int]], str], *,
        prefill_chunk: int = 512,
    ) -> None:
        self.pipeline = pipeline
        self.request = request
        self.session_id = uuid.uuid4().hex
        self.seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(63)
        self.history: list[int] = list(request.prompt_ids)
        self.text = TextStream(decode, request.stop)
        self.prefill_chunk = max(1, prefill_chunk)
        self.finish_reason: FinishReason | None = None
        self._opened = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.history) - len(self.request.prompt_ids)

    async def __aenter__(self) -> Generation:
        await self.pipeline.open(self.session_id, self.prompt_tokens + self.request.max_tokens)
        self._opened = True
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._opened:
            self._opened = False
            await self.pipeline.close(self.session_id)

    async def _next_token(self, step: int) -> int:
        """Feed whatever the stages have not seen yet; the last stage returns the next token."""
        params = (self.request.sampling, self.seed, step)
        if step == 0:
            prompt = self.request.prompt_ids
            pos = 0
            while len(prompt) - pos > self.prefill_chunk:  # earlier chunks: fill the caches only
                await self.pipeline.step(self.session_id, prompt[pos:pos + self.prefill_chunk], pos, params)
                pos += self.prefill_chunk
            return await self.pipeline.step(self.session_id, prompt[pos:], pos, params)
        return await self.pipeline.step(self.session_id, self.history[-1:], len(self.history) - 1, params)

    async def stream(self) -> AsyncIterator[str]:
        """Yield text deltas until a stop token, a stop string or ``max_tokens``."""
        req = self.request
        for step in range(req.max_tokens):
            token = await self._next_token(step)
            if token in req.stop_token_ids:
                self.finish_reason = FinishReason.STOP
                break
            self.history.append(token)
            delta = self.text.push(token)
            if delta:
                yield delta
            if self.text.stopped:
                self.finish_reason = FinishReason.STOP
                break
        else:
            self.finish_reason = FinishReason.LENGTH
        tail = self.text.flush()
        if tail:
            yield tail

    async def run(self) -> str:
        """Generate to the end and return the whole text."""
        return "".join([d async for d in self.stream()])
