"""Executes this node's part of the leaderless plan (``membership/placement.py``), one step at a time:
``membership/rebalance.next_action`` says what, this class does it on the node's ``StageHost``.

Owned by the node: ``run`` is its one task; ``view_changed`` is called on every relevant change of the
gossiped view, and the placer re-plans once the view has been quiet for ``settle_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .membership.placement import Plan
from .membership.rebalance import Action, next_action
from .ring.router import Holder, plan_chain
from .ring.stage_host import Span, StageHost

log = logging.getLogger(__name__)


class Placer:
    def __init__(self, node_id: str, host: StageHost, num_layers: int, settle_s: float,
                 plan: Callable[[], Plan | None], holders: Callable[[], list[Holder]],
                 load_span: Callable[[Span], Awaitable[None]], publish: Callable[[], None],
                 accepting: Callable[[], bool]) -> None:
        self.node_id = node_id
        self.host = host
        self.num_layers = num_layers
        self.settle_s = settle_s
        self._plan = plan
        self._holders = holders
        self._load_span = load_span
        self._publish = publish
        self._accepting = accepting
        self.last_plan: Plan | None = None
        self._changed = asyncio.Event()
        self._last_change = 0.0

    def view_changed(self) -> None:
        self._last_change = time.monotonic()
        self._changed.set()

    async def first(self) -> None:
        """Take this node's first layers (an old span cannot exist yet, so this ends after the load)."""
        for _ in range(4):
            if not await self.step():
                break

    async def run(self) -> None:
        """Re-plan when the view changes (after it settled) and every second while a move is under way."""
        while True:
            try:
                async with asyncio.timeout(1.0):
                    await self._changed.wait()
            except TimeoutError:
                pass
            self._changed.clear()
            quiet = time.monotonic() - self._last_change
            if quiet < self.settle_s:
                await asyncio.sleep(self.settle_s - quiet)
                continue
            try:
                while await self.step():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed load is retried at the next round
                log.exception("placement step failed")
                await asyncio.sleep(self.settle_s)

    async def step(self) -> bool:
        """Take one step towards this node's part of the plan; True when something was done."""
        plan = self._plan()
        if plan is None or self.node_id not in plan.spans:
            return False
        self.last_plan = plan
        target = plan.spans[self.node_id] if self._accepting() else None
        slots = {span: slot.state for span, slot in self.host.slots.items()}
        # A rebalance is in no hurry: in-flight sessions finish on the old span (they are bounded by
        # max_tokens and the idle sweep); only its memory waits.
        action = next_action(target, slots, self._covered_without, lambda span: self.host.sessions(span) == 0)
        if action is None:
            return False
        await self._act(action)
        return True

    async def _act(self, action: Action) -> None:
        span = action.span
        log.info("placement: %s layers [%d, %d)", action.kind, *span)
        if action.kind == "load":
            await self._load_span(span)
        elif action.kind == "serve":
            self.host.slots[span].state = "serving"
        elif action.kind == "drain":
            self.host.drain(span)
        elif action.kind == "drop":
            await self.host.drop(span)
        self._publish()

    def _covered_without(self, span: Span) -> bool:
        holders = [h for h in self._holders() if not (h.node_id == self.node_id and (h.start, h.end) == span)]
        return plan_chain(holders, self.num_layers) is not None
