"""ring/entry.py: opening a session tells an unreachable stage (silent: not even its pings answer) from a
busy one (answers pings, accepts late), so a partition costs one accept window and a busy stage none."""

from __future__ import annotations

import asyncio
import time

import pytest

from swarmd.errors import NoChain, Unresponsive
from swarmd.ring.entry import RingEntry
from swarmd.types import GenerationRequest, SamplingParams
from swarmd.wire.messages import Hop, SessionAccepted, SessionOpen

REQ = GenerationRequest((1, 2, 3), 4, SamplingParams(0.0, 1.0, 0, 1))
CHAIN = [Hop("a", "", 0, 2), Hop("b", "", 2, 4)]


class Stages:
    """``accept_after``: node -> seconds until it accepts (None: never); ``silent``: never heard from."""

    def __init__(self, accept_after: dict[str, float | None], silent: set[str]) -> None:
        self.accept_after = accept_after
        self.silent = silent
        self.nudged: list[str] = []
        self.entry = RingEntry(Hop("e", "", 0, 0), self.send, lambda avoid, exclude: None if exclude else CHAIN,
                               accept_timeout_s=0.2, answered_since=self.answered_since, nudge=self.nudged.append)

    async def send(self, hop: Hop, *msgs: object) -> None:
        for msg in msgs:
            if isinstance(msg, SessionOpen) and self.accept_after[hop.node_id] is not None:
                delay = self.accept_after[hop.node_id]
                assert delay is not None
                asyncio.get_running_loop().call_later(
                    delay, self.entry.handle, SessionAccepted(msg.session_id, hop.node_id), hop.node_id)

    def answered_since(self, node_id: str, since: float) -> bool:
        return node_id not in self.silent


async def test_a_silent_stage_is_named_after_one_accept_window() -> None:
    world = Stages({"a": 0.0, "b": None}, silent={"b"})
    started = time.monotonic()
    with pytest.raises(Unresponsive) as info:
        await world.entry.open("s1", REQ, 7, timeout=10.0)
    assert info.value.nodes == {"b"} and info.value.failed_node == "b" and info.value.status == 503
    assert time.monotonic() - started < 0.5
    assert world.entry.sessions == {}  # the half-open session was closed


async def test_a_busy_stage_that_answers_pings_is_waited_for() -> None:
    world = Stages({"a": 0.0, "b": 0.7}, silent=set())
    sess = await world.entry.open("s2", REQ, 7, timeout=10.0)
    assert sess.chain == CHAIN and "s2" in world.entry.sessions
    assert world.nudged.count("b") >= 3  # pinged when opened and at every window it was still waiting


async def test_a_busy_stage_is_given_up_at_the_open_timeout() -> None:
    world = Stages({"a": 0.0, "b": None}, silent=set())
    with pytest.raises(Unresponsive) as info:
        await world.entry.open("s3", REQ, 7, timeout=0.5)
    assert info.value.nodes == {"b"}


async def test_no_chain_is_raised_before_anything_is_sent() -> None:
    world = Stages({"a": 0.0, "b": 0.0}, silent=set())
    with pytest.raises(NoChain):
        await world.entry.open("s4", REQ, 7, timeout=1.0, exclude=frozenset({"b"}))
    assert world.nudged == []
