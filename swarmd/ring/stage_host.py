"""The stages one node runs: usually one span, two while a rebalance moves it (make-before-break).

Each span has its own engine and ``StageService``; the host routes stage messages to the right one:
``SessionOpen`` by the span the chain asks of this hop, later messages by the session they belong to.
A span is ``loading`` (not yet routable), ``serving``, or ``draining`` (refuses new sessions, finishes
the ones it has, then is dropped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..engine.interface import EngineHandle
from ..wire.messages import Forward, Hop, Message, SessionClose, SessionError, SessionOpen
from .stage_service import StageService

log = logging.getLogger(__name__)

Span = tuple[int, int]
Send = Callable[..., Awaitable[None]]


@dataclass
class Slot:
    span: Span
    state: str  # loading | serving | draining
    engine: EngineHandle | None = None  # once loaded
    service: StageService | None = None


class StageHost:
    def __init__(self, node_id: str, send: Send, idle_timeout_s: float, spawn: Callable[[Any], None]) -> None:
        self.node_id = node_id
        self.send = send
        self.idle_timeout_s = idle_timeout_s
        self._spawn = spawn
        self.slots: dict[Span, Slot] = {}

    # --- which spans ------------------------------------------------------------------------------

    def loading(self, span: Span) -> Slot:
        slot = self.slots.get(span)
        if slot is None:
            slot = self.slots[span] = Slot(span, "loading")
        return slot

    def serve(self, span: Span, engine: EngineHandle) -> None:
        """The engine for ``span`` is loaded: route new sessions to it."""
        slot = self.loading(span)
        slot.engine = engine
        slot.service = StageService(engine, self.node_id, self.send, self.idle_timeout_s)
        slot.service.start()
        slot.state = "serving"

    def drain(self, span: Span) -> None:
        slot = self.slots.get(span)
        if slot is not None and slot.state == "serving":
            slot.state = "draining"

    def sessions(self, span: Span) -> int:
        slot = self.slots.get(span)
        return len(slot.service.sessions) if slot is not None and slot.service is not None else 0

    async def drop(self, span: Span) -> None:
        """Stop the span's stage (its sessions are closed) and free its engine."""
        slot = self.slots.pop(span, None)
        if slot is None:
            return
        if slot.service is not None:
            await slot.service.stop()
        if slot.engine is not None:
            await slot.engine.close()
        log.info("dropped layers [%d, %d)", *span)

    async def stop(self) -> None:
        await asyncio.gather(*(self.drop(span) for span in list(self.slots)), return_exceptions=True)

    def serving(self) -> list[Span]:
        return sorted(s.span for s in self.slots.values() if s.state == "serving")

    def primary(self) -> Slot | None:
        """The newest serving span (what this node reports as its ``layers``)."""
        serving = [s for s in self.slots.values() if s.state == "serving"]
        return serving[-1] if serving else None

    @property
    def session_count(self) -> int:
        return sum(len(s.service.sessions) for s in self.slots.values() if s.service is not None)

    @property
    def queue_depth(self) -> int:
        return sum(sess.queue.qsize() + len(sess.pending) for s in self.slots.values() if s.service is not None
                   for sess in s.service.sessions.values())

    # --- routing ----------------------------------------------------------------------------------

    def handle(self, msg: Message, sender: str) -> None:
        if isinstance(msg, SessionOpen):
            span = (msg.chain[msg.hop].start, msg.chain[msg.hop].end) if 0 <= msg.hop < len(msg.chain) else None
            slot = self.slots.get(span) if span is not None else None
            if slot is None or slot.state != "serving" or slot.service is None:
                why = "this node holds no layers" if not self.slots else \
                    f"this node does not serve layers {list(span) if span else '?'} now"
                self._refuse(msg.entry, SessionError(msg.session_id, self.node_id, "not_ready", why, 1.0))
                return
            slot.service.handle(msg, sender)
            return
        if isinstance(msg, (Forward, SessionClose)):
            for slot in self.slots.values():
                if slot.service is not None and msg.session_id in slot.service.sessions:
                    slot.service.handle(msg, sender)
                    return
            if isinstance(msg, SessionClose):  # may race its open: every stage remembers it
                for slot in self.slots.values():
                    if slot.service is not None:
                        slot.service.handle(msg, sender)

    def _refuse(self, to: Hop, reply: SessionError) -> None:
        self._spawn(self.send(to, reply))
