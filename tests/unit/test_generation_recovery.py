"""ring/generation.py: a failed session is replayed onto another chain; the client sees every token once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from swarmd.errors import NoChain, NotReady, StepTimeout, SwarmdError, Unresponsive
from swarmd.ring.entry import StageFailed, Token
from swarmd.ring.generation import Generation
from swarmd.types import GenerationRequest, SamplingParams
from swarmd.wire.messages import Hop

PROMPT = [5, 6, 7]


def token_at(step: int) -> int:
    return 10 + (step * 7) % 50  # what any healthy chain samples at ``step`` (deterministic, like the ring)


class FakeRing:
    def __init__(self, world: World, session_id: str, chain: list[Hop]) -> None:
        self.world = world
        self.session_id = session_id
        self.chain = chain
        self.next_step: int | None = None
        self.closed = ""
        self.fed: tuple[list[int], int] | None = None

    async def feed(self, token_ids: Sequence[int], start_pos: int, chunk: int, step: int = 0) -> None:
        assert start_pos == 0
        self.fed = (list(token_ids), step)
        self.next_step = step

    async def next_token(self, timeout: float) -> Token:
        self.world.timeouts.append(timeout)
        assert self.next_step is not None
        step = self.next_step
        fail = self.world.fail_at.pop(step, None) if self.chain[-1].node_id in self.world.flaky else None
        if fail == "timeout":
            raise StepTimeout("no token")
        if fail is not None:
            err = StageFailed(f"lost {fail}")
            err.failed_node = fail
            raise err
        self.next_step = step + 1
        await asyncio.sleep(0)
        return Token(step, token_at(step), False)

    async def close(self, reason: str) -> None:
        self.closed = reason


class World:
    """Chains a..b (flaky last stage b) and a..c (healthy replica c)."""

    def __init__(self, fail_at: dict[int, str], open_failures: int = 0) -> None:
        self.fail_at = fail_at
        self.flaky = {"b"}
        self.open_failures = open_failures
        self.silent: set[str] = set()  # stages that never accept (behind a partition)
        self.gone: set[str] = set()  # stages no live member holds any more
        self.opened: list[tuple[frozenset[str], FakeRing]] = []
        self.excluded: list[frozenset[str]] = []
        self.timeouts: list[float] = []

    async def open(self, session_id: str, request: GenerationRequest, seed: int, timeout: float,
                   avoid: frozenset[str] = frozenset(), exclude: frozenset[str] = frozenset()) -> FakeRing:
        self.excluded.append(exclude)
        if self.open_failures:
            self.open_failures -= 1
            raise NotReady("no chain yet")
        usable = [n for n in ("b", "c") if n not in exclude | self.gone]
        if "a" in exclude | self.gone or not usable:
            raise NoChain("no chain")
        last = usable[-1] if "b" in avoid else usable[0]
        silent = {"a", last} & self.silent
        if silent:
            await asyncio.sleep(min(timeout, 0.05))
            raise Unresponsive("no accept", frozenset(silent))
        ring = FakeRing(self, session_id, [Hop("a", "", 0, 2), Hop(last, "", 2, 4)])
        self.opened.append((avoid, ring))
        return ring


def request(n: int) -> GenerationRequest:
    return GenerationRequest(tuple(PROMPT), n, SamplingParams(0.0, 1.0, 0, 1))


async def run(world: World, n: int, recovery: float = 5.0) -> tuple[list[int], Generation]:
    gen = Generation(world, request(n), lambda ids: "".join(chr(65 + i % 26) for i in ids),
                     recovery_timeout_s=recovery)
    async with gen:
        async for _ in gen.stream():
            pass
    return gen.history[len(PROMPT):], gen


async def test_replay_after_a_lost_stage_gives_every_token_once() -> None:
    world = World({6: "b"})
    tokens, gen = await run(world, 12)
    assert tokens == [token_at(s) for s in range(12)]
    (avoid0, first), (avoid1, second) = world.opened
    assert avoid0 == frozenset() and avoid1 == {"b"} and second.chain[-1].node_id == "c"
    assert first.closed == "replaced"
    assert second.fed == (PROMPT + [token_at(s) for s in range(6)], 6)  # history replayed, step 6 sampled next
    assert len(gen.recoveries) == 1 and gen.recoveries[0].at_step == 6 and gen.recoveries[0].failed_node == "b"


async def test_failure_in_the_first_token_replays_the_prompt_alone() -> None:
    world = World({0: "b"})
    tokens, _ = await run(world, 4)
    assert tokens == [token_at(s) for s in range(4)]
    assert world.opened[1][1].fed == (PROMPT, 0)


async def test_stall_avoids_every_node_of_the_old_chain() -> None:
    world = World({3: "timeout"})
    tokens, _ = await run(world, 6)
    assert tokens == [token_at(s) for s in range(6)]
    assert world.opened[1][0] == {"a", "b"}


async def test_open_failures_during_recovery_are_retried_with_backoff() -> None:
    world = World({2: "b"})
    gen = Generation(world, request(5), lambda ids: "", recovery_timeout_s=5.0)
    async with gen:
        world.open_failures = 3  # the next three opens fail
        async for _ in gen.stream():
            pass
    assert gen.history[len(PROMPT):] == [token_at(s) for s in range(5)]
    assert gen.recoveries[0].attempts == 4


async def test_no_recovery_when_it_is_off_or_hopeless() -> None:
    with pytest.raises(StageFailed):
        await run(World({1: "b"}), 4, recovery=0.0)
    world = World({1: "b"})
    gen = Generation(world, request(4), lambda ids: "", recovery_timeout_s=0.3)
    with pytest.raises(SwarmdError) as info:
        async with gen:
            world.open_failures = 10_000
            async for _ in gen.stream():
                pass
    assert isinstance(info.value, NotReady)  # the last error, after the recovery timeout


async def test_a_stage_that_never_accepts_is_left_out_for_the_whole_generation() -> None:
    world = World({4: "b"})
    world.silent = {"b"}
    gen = Generation(world, request(8), lambda ids: "", recovery_timeout_s=5.0)
    async with gen:
        assert gen._ring is not None and gen._ring.chain[-1].node_id == "c"
        assert gen.session_id == gen._ring.session_id
        async for _ in gen.stream():
            pass
    assert gen.history[len(PROMPT):] == [token_at(s) for s in range(8)]
    assert world.excluded == [frozenset(), frozenset({"b"})]


async def test_no_chain_left_is_a_prompt_503_not_a_wait() -> None:
    world = World({})
    world.silent = {"b", "c"}  # the other side of a partition
    gen = Generation(world, request(4), lambda ids: "", recovery_timeout_s=5.0,
                     open_timeout_s=10.0)
    started = time.monotonic()
    with pytest.raises(NoChain) as info:
        async with gen:
            pass
    assert time.monotonic() - started < 1.0
    assert info.value.status == 503 and info.value.retry_after_s >= 1
    assert world.excluded[-1] == {"b", "c"}


async def test_recovery_with_no_replica_left_fails_at_once() -> None:
    world = World({3: "b"})
    gen = Generation(world, request(6), lambda ids: "", recovery_timeout_s=5.0)
    started = time.monotonic()
    with pytest.raises(NoChain):
        async with gen:
            world.gone = {"b", "c"}  # the only holders of layers 2-4 died
            async for _ in gen.stream():
                pass
    assert time.monotonic() - started < 1.0
    assert gen.history[len(PROMPT):] == [token_at(s) for s in range(3)]


async def test_first_token_deadline_scales_with_the_fed_positions_and_the_chain_speed() -> None:
    world = World({2: "b"})
    gen = Generation(world, request(4), lambda ids: "", token_timeout_s=120.0, stall_timeout_s=2.0,
                     step_estimate_s=0.01, recovery_timeout_s=5.0)
    async with gen:
        async for _ in gen.stream():
            pass
    # prompt of 3 fed: 2 + 3 x 0.01; decode steps: 2; after the replay of 3 + 2 tokens: 2 + 5 x 0.01
    assert world.timeouts == pytest.approx([2.03, 2.0, 2.0, 2.05, 2.0])
    slow = World({})
    gen = Generation(slow, request(1), lambda ids: "", token_timeout_s=3.0, stall_timeout_s=2.0, step_estimate_s=1.0)
    async with gen:
        async for _ in gen.stream():
            pass
    assert slow.timeouts == [3.0]  # never past the cap


async def test_stall_deadline_grows_with_the_sessions_sharing_the_chain() -> None:
    world = World({})
    sharing = {"n": 1}
    seen: list[list[str]] = []

    def load(nodes: Sequence[str]) -> int:
        seen.append(list(nodes))
        return sharing["n"]

    gen = Generation(world, request(3), lambda ids: "".join(chr(65 + i % 26) for i in ids), token_timeout_s=60.0,
                     stall_timeout_s=2.0, step_estimate_s=0.05, load=load)
    async with gen:
        stream = gen.stream()
        await stream.__anext__()  # the first token (after the prompt): 2 + 3 x 0.05
        sharing["n"] = 10  # a burst of sessions arrives
        async for _ in stream:
            pass
    # alone: max(2, 20 x 0.05) = 2 (+ 3 fed x 0.05 for the first); with 10 sharing: 20 x 0.05 x 10 = 10
    assert world.timeouts == pytest.approx([2.15, 10.0, 10.0])
    assert seen and all(nodes == ["a", "b"] for nodes in seen)
