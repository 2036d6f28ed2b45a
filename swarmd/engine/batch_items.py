"""What the engine keeps per session and per queued step (plain records, shared by the asyncio side and
the worker thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..types import SamplingParams, TensorBlob, TopLogits
from .kv_budget import Reservation
from .kv_cache import KVCache


@dataclass
class Session:
    pages: int
    reservation: Reservation
    cache: KVCache | None = None  # allocated by the worker thread at the session's first step
    closed: bool = False
    last_done: float = 0.0  # loop time its last step's result was delivered
    gap: float | None = None  # how long its next step usually takes to arrive after that
    finished: bool = False  # its decode loop in the engine ended: no step is due until the ring sends one
    cont: Continuation | None = None  # its decode loop in the engine, while one runs


@dataclass(eq=False)
class Continuation:
    """A session decoding inside the engine (``Engine.decode``): each sampled token is its next step's input."""

    prompt_len: int
    stop: frozenset[int]
    max_tokens: int
    params: SamplingParams
    seed: int
    results: asyncio.Queue[tuple[int, int] | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def ends(self, step: int, token: int) -> bool:
        return token in self.stop or step + 1 >= self.max_tokens


@dataclass(eq=False)
class Step:
    session_id: str
    session: Session
    tokens: Sequence[int]
    hidden: TensorBlob | None
    start_pos: int
    sampling: tuple[SamplingParams, int, int] | None
    future: asyncio.Future[int | TensorBlob | TopLogits | None]
    report: bool = False  # last span: return the top logits with the token (output verification)
    queued_at: float = 0.0  # loop time it was queued (metrics: queue wait)
    cont: Continuation | None = None  # results go to the session's decode loop, not to ``future``

    @property
    def tokens_in(self) -> int:
        return len(self.tokens) if self.hidden is None else int(self.hidden.shape[1])
