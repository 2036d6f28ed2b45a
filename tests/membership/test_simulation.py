"""Many Swim state machines on an in-memory network: simulated time, seeded RNG, loss and latency.

The network is event-driven: a heap of message deliveries and node wake-ups, each node woken at its
own ``next_deadline()``. Nothing sleeps, so a minute of simulated cluster time takes well under a second
of wall time per few dozen nodes.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from swarmd.membership.swim import Effect, MemberChanged, Swim, SwimConfig
from swarmd.membership.swim_messages import ALIVE, DEAD, LEFT, SUSPECT, SwimMessage


@dataclass(order=True)
class _Event:
    at: float
    order: int
    addr: str = field(compare=False)
    msg: SwimMessage | None = field(compare=False)  # None: a wake-up


class Network:
    def __init__(self, config: SwimConfig, seed: int, loss: float = 0.0,
                 latency: tuple[float, float] = (0.0005, 0.005)) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.loss = loss
        self.latency = latency
        self.now = 0.0
        self.nodes: dict[str, Swim] = {}
        self.killed: set[str] = set()
        self.paused_until: dict[str, float] = {}
        self.changes: list[tuple[float, str, MemberChanged]] = []  # (time, observer, change)
        self.sent = self.dropped = 0
        self._heap: list[_Event] = []
        self._order = 0
        self._wake: dict[str, float] = {}  # each node's earliest pending wake-up
        self._joins: dict[str, list[str]] = {}  # seeds a node joins through at its first wake-up

    @staticmethod
    def addr(i: int) -> str:
        return f"10.0.{i // 250}.{i % 250 + 1}:7946"

    def add(self, i: int, seeds: list[str], at: float = 0.0) -> Swim:
        addr = self.addr(i)
        node = Swim(f"n{i:03d}", addr, self.config, random.Random(self.rng.random()))
        self.nodes[addr] = node
        self._wake[addr] = math.inf
        if seeds:
            self._joins[addr] = seeds
        self._schedule(at, addr, None)
        return node

    def kill(self, addr: str) -> None:
        self.killed.add(addr)

    def pause(self, addr: str, seconds: float) -> None:
        self.paused_until[addr] = self.now + seconds
        self._wake[addr] = math.inf
        self._schedule(self.now + seconds, addr, None)

    def _schedule(self, at: float, addr: str, msg: SwimMessage | None) -> None:
        self._order += 1
        if msg is None:
            if at >= self._wake[addr]:
                return
            self._wake[addr] = at
        heapq.heappush(self._heap, _Event(at, self._order, addr, msg))

    def apply(self, addr: str, effects: list[Effect]) -> None:
        """Record what ``addr`` concluded and put what it sent on the wire (maybe lost, later delivered)."""
        for e in effects:
            if isinstance(e, MemberChanged):
                self.changes.append((self.now, addr, e))
                continue
            self.sent += 1
            if e.to_addr not in self.nodes or self.rng.random() < self.loss:
                self.dropped += 1
                continue
            self._schedule(self.now + self.rng.uniform(*self.latency), e.to_addr, e.msg)

    def run(self, until: float, stop: Callable[[], bool] | None = None, check_every: float = 0.1) -> float | None:
        """Run to ``until``; with ``stop``, return the first check time at which it holds (else None)."""
        next_check = self.now
        while self._heap and self._heap[0].at <= until:
            ev = heapq.heappop(self._heap)
            while stop is not None and ev.at >= next_check:
                self.now = next_check
                if stop():
                    heapq.heappush(self._heap, ev)
                    return self.now
                next_check += check_every
            self.now = ev.at
            node = self.nodes[ev.addr]
            if ev.addr in self.killed or self.now < self.paused_until.get(ev.addr, -1.0):
                continue  # a stopped process neither wakes nor reads; what arrives meanwhile is lost
            if ev.msg is None:
                if ev.at != self._wake[ev.addr]:
                    continue  # superseded wake-up
                self._wake[ev.addr] = math.inf
                seeds = self._joins.pop(ev.addr, None)
                if seeds is not None:
                    self.apply(ev.addr, node.join(seeds, self.now))
                self.apply(ev.addr, node.tick(self.now))
                due = node.next_deadline()
                assert due > self.now, f"{node.self_id}: next deadline {due} not after tick at {self.now}"
            else:
                self.apply(ev.addr, node.receive(ev.msg, self.now))
            due = node.next_deadline()
            if due < math.inf:
                self._schedule(max(due, self.now), ev.addr, None)
        self.now = until
        return None if stop is None or not stop() else until

    # --- views --------------------------------------------------------------------------------

    def running(self) -> list[Swim]:
        return [n for a, n in self.nodes.items() if a not in self.killed]

    def converged(self, states: tuple[str, ...] = (ALIVE,)) -> bool:
        """Every running node lists exactly the running nodes in ``states`` (default: all alive)."""
        want = {n.self_id for n in self.running()}
        return all({m.node_id for m in n.members() if m.state in states} == want for n in self.running())

    def knows_everyone(self) -> bool:
        """Membership agrees: every running node lists every running node as alive or suspect."""
        return self.converged((ALIVE, SUSPECT))

    def verdicts(self) -> list[tuple[float, str, str, str]]:
        """(time, observer, member, state) of every dead/left conclusion so far."""
        return [(t, o, c.member.node_id, c.member.state) for t, o, c in self.changes if c.member.state in (DEAD, LEFT)]

    def all_see(self, node_id: str, states: tuple[str, ...]) -> bool:
        """Every other running node holds ``node_id`` in ``states`` (or has already dropped its tombstone)."""
        return all((m := n.member(node_id)) is None or m.state in states
                   for n in self.running() if n.self_id != node_id)


def start_cluster(n: int, config: SwimConfig, seed: int, loss: float = 0.0) -> Network:
    net = Network(config, seed, loss)
    net.add(0, [])
    for i in range(1, n):
        net.add(i, [net.addr(0)], at=net.rng.uniform(0.0, 0.5))
    return net


def test_64_nodes_join_through_one_seed_and_converge() -> None:
    net = start_cluster(64, SwimConfig.lan(), seed=1)
    t = net.run(until=30.0, stop=net.converged)
    assert t is not None and t < 10.0, f"64 nodes converged at t={t} s (simulated)"
    # Steady state stays converged, and nobody was ever suspected.
    assert net.run(until=t + 10.0) is None and net.converged()
    assert not [c for _, _, c in net.changes if c.member.state != ALIVE]
    assert net.dropped == 0


def test_64_nodes_converge_with_10_percent_loss() -> None:
    net = start_cluster(64, SwimConfig.lan(), seed=2, loss=0.10)
    t = net.run(until=60.0, stop=net.knows_everyone)
    assert t is not None and t < 15.0, f"64 nodes with 10% loss agreed on membership at t={t} s (simulated)"
    # Loss makes some probes fail (members are suspected, then refute), but nobody is judged dead,
    # and a moment with every member alive everywhere comes too.
    t_all = net.run(until=40.0, stop=net.converged)
    assert t_all is not None and t_all < 30.0, f"all alive everywhere first at t={t_all} s (simulated)"
    net.run(until=40.0)
    assert net.verdicts() == [] and net.knows_everyone()
    assert net.dropped > 0.05 * net.sent


def test_killed_node_is_declared_dead_by_everyone() -> None:
    net = start_cluster(64, SwimConfig.lan(), seed=3)
    t0 = net.run(until=30.0, stop=net.converged)
    assert t0 is not None
    victim = net.nodes[net.addr(7)]
    net.kill(net.addr(7))
    t = net.run(until=t0 + 60.0, stop=lambda: net.all_see(victim.self_id, (DEAD,)))
    assert t is not None and t - t0 < 15.0, f"dead everywhere {t and t - t0} s after the kill"
    # ... and nobody else was judged; the others stay converged among themselves.
    assert {member for _, _, member, _ in net.verdicts()} == {victim.self_id}
    assert net.converged()


def test_killed_node_is_detected_despite_loss() -> None:
    net = start_cluster(24, SwimConfig.lan(), seed=4, loss=0.05)
    t0 = net.run(until=40.0, stop=net.converged)
    assert t0 is not None
    victim = net.nodes[net.addr(5)]
    net.kill(net.addr(5))
    t = net.run(until=t0 + 60.0, stop=lambda: net.all_see(victim.self_id, (DEAD,)))
    assert t is not None and t - t0 < 20.0, f"dead everywhere {t and t - t0} s after the kill"
    assert {member for _, _, member, _ in net.verdicts()} == {victim.self_id}


def test_briefly_paused_node_is_suspected_but_never_declared_dead() -> None:
    config = SwimConfig.lan()
    net = start_cluster(32, config, seed=5)
    t0 = net.run(until=30.0, stop=net.converged)
    assert t0 is not None
    sleeper = net.nodes[net.addr(11)]
    lo = config.suspicion_mult * math.log10(32) * config.probe_interval  # shortest suspicion timeout
    # ~97% of seeds have some probe hit a 2.1 s pause; this one does (asserted below).
    net.pause(net.addr(11), seconds=0.7 * lo)
    assert net.run(until=t0 + 30.0) is None
    about = [c.member.state for _, _, c in net.changes if c.member.node_id == sleeper.self_id]
    assert SUSPECT in about  # the pause was noticed ...
    assert net.verdicts() == []  # ... but nobody was ever judged
    assert sleeper.incarnation >= 1  # it refuted the suspicion
    assert net.converged()


def test_leave_spreads_to_everyone() -> None:
    net = start_cluster(16, SwimConfig.local(), seed=6)
    t0 = net.run(until=20.0, stop=net.converged)
    assert t0 is not None
    leaver = net.nodes[net.addr(3)]
    net.apply(net.addr(3), leaver.leave(net.now))
    t = net.run(until=t0 + 10.0, stop=lambda: net.all_see(leaver.self_id, (LEFT,)))
    assert t is not None and t - t0 < 2.0
    assert {(member, state) for _, _, member, state in net.verdicts()} == {(leaver.self_id, LEFT)}


def test_meta_update_spreads_to_everyone() -> None:
    net = start_cluster(32, SwimConfig.lan(), seed=7)
    t0 = net.run(until=30.0, stop=net.converged)
    assert t0 is not None
    owner = net.nodes[net.addr(9)]
    owner.set_meta(b"span=0:12", net.now)

    def everyone_has_it() -> bool:
        return all((m := n.member(owner.self_id)) is not None and m.meta == b"span=0:12" for n in net.running())

    t = net.run(until=t0 + 20.0, stop=everyone_has_it)
    assert t is not None and t - t0 < 5.0, f"meta everywhere {t and t - t0} s after set_meta"
