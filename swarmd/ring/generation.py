"""One generation seen from its entry node: prompt in, text deltas out, token history kept.

The history (prompt plus every sampled token) is what a replacement chain replays to rebuild its KV
caches after a failure; sampling is seeded per step, so a replayed session draws the same tokens.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Protocol

from ..errors import ProtocolError
from ..types import FinishReason, GenerationRequest
from .entry import Token
from .textstream import TextStream

log = logging.getLogger(__name__)


class TokenSource(Protocol):
    """An open ring session as the generation sees it."""

    async def feed(self, token_ids: Sequence[int], start_pos: int, chunk: int) -> None: ...
    async def next_token(self, timeout: float) -> Token: ...
    async def close(self, reason: str) -> None: ...


class Opener(Protocol):
    async def open(self, session_id: str, request: GenerationRequest, seed: int, timeout: float) -> TokenSource: ...


class Generation:
    """Use as ``async with Generation(...) as g: async for delta in g.stream(): ...``.

    Leaving the block (normally, on error or on cancellation) closes the session on every stage at once.
    """

    def __init__(
        self, opener: Opener, request: GenerationRequest, decode: Callable[[Sequence[int]], str], *,
        prefill_chunk: int = 256, open_timeout_s: float = 10.0, token_timeout_s: float = 120.0,
    ) -> None:
        self.opener = opener
        self.request = request
        self.session_id = uuid.uuid4().hex
        self.seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(63)
        self.history: list[int] = list(request.prompt_ids)
        self.text = TextStream(decode, request.stop)
        self.prefill_chunk = max(1, prefill_chunk)
        self.open_timeout_s = open_timeout_s
        self.token_timeout_s = token_timeout_s
        self.finish_reason: FinishReason | None = None
        self._ring: TokenSource | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.history) - len(self.request.prompt_ids)

    async def __aenter__(self) -> Generation:
        self._ring = await self.opener.open(self.session_id, self.request, self.seed, self.open_timeout_s)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            await ring.close("finished" if et is None else "aborted")

    async def stream(self) -> AsyncIterator[str]:
        """Yield text deltas until a stop token, a stop string or ``max_tokens``."""
        assert self._ring is not None, "use 'async with'"
        ring, req = self._ring, self.request
        await ring.feed(req.prompt_ids, 0, self.prefill_chunk)
        for step in range(req.max_tokens):
            tok = await ring.next_token(self.token_timeout_s)
            if tok.step != step:
                raise ProtocolError(f"ring sent step {tok.step} while step {step} was due")
            token = tok.token
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
