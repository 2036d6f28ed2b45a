"""A few Swim nodes on a fake clock with zero-latency delivery, for unit tests.

Every ``Send`` is delivered at once (breadth first) unless its link is blocked or its receiver is
down; every effect is recorded so tests can assert on what was said and what each node concluded.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import TypeVar

from swarmd.clock import FakeClock
from swarmd.membership.swim import Effect, MemberChanged, Send, Swim, SwimConfig
from swarmd.membership.swim_messages import ALIVE, MemberUpdate, PushPull, SwimMessage

M = TypeVar("M", bound=SwimMessage)


def addr(node_id: str) -> str:
    return f"{node_id}.lan:7946"


def claim(node_id: str, state: str, incarnation: int = 0, by: str = "", meta_version: int = 0,
          meta: bytes = b"") -> MemberUpdate:
    return MemberUpdate(node_id, addr(node_id), incarnation, state, meta_version, meta, by or node_id)


def introduce(node: Swim, *ids: str, sender: str = "zz", now: float = 0.0) -> None:
    """Teach ``node`` that ``ids`` are alive (a push-pull from a stranger that asks no reply)."""
    node.receive(PushPull(sender, addr(sender), False, False, tuple(claim(i, ALIVE) for i in ids)), now)


class Mini:
    def __init__(self, *ids: str, config: SwimConfig | None = None, seed: int = 0) -> None:
        self.config = config or SwimConfig.local()
        self.clock = FakeClock()
        self.nodes = {i: Swim(i, addr(i), self.config, random.Random(f"{seed}/{i}")) for i in ids}
        self._by_addr = {addr(i): n for i, n in self.nodes.items()}
        self.blocked: set[tuple[str, str]] = set()  # (from id, to id) links that drop everything
        self.down: set[str] = set()  # nodes that neither receive nor tick
        self.sent: list[tuple[float, str, Send]] = []  # (time, from id, send), delivered or not
        self.changes: list[tuple[float, str, MemberChanged]] = []  # (time, observer id, change)

    @property
    def now(self) -> float:
        return self.clock.now()

    def __getitem__(self, node_id: str) -> Swim:
        return self.nodes[node_id]

    def restart(self, node_id: str) -> Swim:
        """Replace a node by a fresh process with the same id and address (incarnation 0, empty table)."""
        fresh = Swim(node_id, addr(node_id), self.config, random.Random(f"restart/{node_id}"))
        self.nodes[node_id] = self._by_addr[addr(node_id)] = fresh
        self.down.discard(node_id)
        return fresh

    def block(self, a: str, b: str) -> None:
        self.blocked |= {(a, b), (b, a)}

    def handle(self, origin: str, effects: Iterable[Effect]) -> None:
        work = deque((origin, e) for e in effects)
        while work:
            src, e = work.popleft()
            if isinstance(e, MemberChanged):
                self.changes.append((self.now, src, e))
                continue
            self.sent.append((self.now, src, e))
            dest = self._by_addr.get(e.to_addr)
            if dest is None or dest.self_id in self.down or (src, dest.self_id) in self.blocked:
                continue
            work.extend((dest.self_id, x) for x in dest.receive(e.msg, self.now))

    def deliver(self, to: str, msg: SwimMessage) -> None:
        """Hand ``to`` one message from outside the cluster (a crafted claim)."""
        self.handle(to, self.nodes[to].receive(msg, self.now))

    def run(self, seconds: float, dt: float = 0.005) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.clock.advance(dt)
            for node_id, node in self.nodes.items():
                if node_id not in self.down:
                    self.handle(node_id, node.tick(self.now))

    def join_all(self, settle: float = 0.5) -> None:
        """Everyone joins through the first node, then the cluster runs ``settle`` seconds."""
        first, *rest = self.nodes
        for node_id in rest:
            self.handle(node_id, self.nodes[node_id].join([addr(first)], self.now))
        self.run(settle)

    # --- views --------------------------------------------------------------------------------

    def state(self, observer: str, about: str) -> str | None:
        m = self.nodes[observer].member(about)
        return None if m is None else m.state

    def seen(self, observer: str, about: str, since: float = 0.0) -> list[tuple[float, str]]:
        """(time, state) of every change ``observer`` reported about ``about`` from ``since`` on."""
        return [(t, c.member.state) for t, o, c in self.changes
                if o == observer and c.member.node_id == about and t >= since]

    def messages(self, kind: type[M], src: str | None = None, to: str | None = None) -> list[M]:
        """Every ``kind`` message sent so far (delivered or not), optionally only from ``src`` / to ``to``."""
        return [s.msg for _, f, s in self.sent
                if isinstance(s.msg, kind) and (src is None or f == src) and (to is None or s.to_addr == addr(to))]
