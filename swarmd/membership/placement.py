"""Leaderless placement: which node holds which decoder layers, computed identically on every node. Pure.

Every node runs ``place`` on its own view of the swarm and gets the same ``Plan``: inputs are sorted by
node id, every tie is broken by node id, and nothing is random. The rules, in order of priority:

1. Only nodes whose state is eligible (``serving``, ``joining``), whose speed is a finite positive number and
   whose memory holds at least one layer get a span; draining, unmeasured and too-small nodes get None.
2. The nodes are partitioned into as many complete pipelines as memory allows (``max_pipelines`` caps it;
   grouping is a deterministic heuristic, see ``chains.pipelines``): each pipeline is a chain of contiguous
   spans over all layers, so every layer has exactly that many replicas. Within a pipeline the slowest
   stage (layers x seconds per layer) is made as fast as possible, which makes spans proportional to speed
   up to whole layers, capped by what each node's memory holds (the first span also holds the embedding,
   the last the head, every layer its KV reserve); among equally fast splits the one nearest to speed
   proportion wins. A node whose share would only slow its pipeline holds nothing (a standby).
3. If even all nodes together cannot hold one chain, the plan covers the longest prefix of layers it can,
   ``complete`` is False and ``uncovered`` lists the rest.
4. Hysteresis: the nodes' current spans are kept unchanged when they are still valid (each fits its node's
   memory, they cover as many layers as the new plan, every layer keeps min(new plan's floor,
   ``min_replicas``) replicas) and their estimated step time is within ``1 + hysteresis`` of the new plan's.
5. ``transition_steps`` orders the moves make-before-break (see its docstring for the invariant).

Step time is seconds per token of the whole swarm at full load: 1 / max flow through the layer boundaries,
each span an edge of capacity 1 / (its layers x its node's seconds per layer). For one pipeline this is its
slowest stage; k equal pipelines take 1/k of it. Spans only chain at equal boundaries, as in the router.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from ..errors import ConfigError
from .chains import Capacity, pipelines, prefix

Span = tuple[int, int]  # decoder layers [start, end)

_EPS = 1e-9  # relative float slack when comparing step times


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """What one member offers, as the view knows it."""

    node_id: str
    memory_bytes: int  # for weights plus KV reserve
    seconds_per_layer: float  # measured time of one decoder layer for one decode step
    state: str = "serving"  # membership state: serving | joining | draining | ...
    current_span: Span | None = None  # layers [start, end) it holds now


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Memory the model needs: the first span also holds the embedding, the last the head."""

    num_layers: int
    bytes_per_layer: int  # weights of one decoder layer
    embed_bytes: int = 0  # token embedding, held with layer 0
    head_bytes: int = 0  # final norm and LM head, held with the last layer
    kv_bytes_per_layer_reserve: int = 0  # KV cache kept free for every layer held

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.bytes_per_layer < 1:
            raise ConfigError(f"model needs at least one layer of at least one byte, got {self}")
        if min(self.embed_bytes, self.head_bytes, self.kv_bytes_per_layer_reserve) < 0:
            raise ConfigError(f"model byte counts must not be negative, got {self}")

    def span_bytes(self, span: Span) -> int:
        """Memory a node needs to hold ``span``: its layers, their KV reserve, and embedding/head at the ends."""
        start, end = span
        return (
            (end - start) * (self.bytes_per_layer + self.kv_bytes_per_layer_reserve)
            + (self.embed_bytes if start == 0 else 0)
            + (self.head_bytes if end == self.num_layers else 0)
        )


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    # Layers should be held by at least this many nodes whenever memory allows; hysteresis never keeps
    # current spans that give fewer (unless the new plan gives fewer too).
    min_replicas: int = 2
    # Keep the current spans unless the new plan's step time beats theirs by more than this fraction.
    hysteresis: float = 0.15
    # Most complete pipelines to build; 0: as many as memory allows.
    max_pipelines: int = 0
    # Membership states that may hold layers; any other state (draining, leaving, ...) gets no span.
    eligible_states: frozenset[str] = frozenset({"serving", "joining"})

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ConfigError(f"min_replicas must be at least 1, got {self.min_replicas}")
        if not self.hysteresis >= 0:
            raise ConfigError(f"hysteresis must be a non-negative fraction, got {self.hysteresis}")
        if self.max_pipelines < 0:
            raise ConfigError(f"max_pipelines must be 0 (no cap) or positive, got {self.max_pipelines}")


@dataclass(frozen=True, slots=True)
class Move:
    """One node's span changes from ``old_span`` to ``new_span`` (None: no layers)."""

    node_id: str
    old_span: Span | None
    new_span: Span | None


@dataclass(frozen=True, slots=True)
class Plan:
    spans: Mapping[str, Span | None]  # every node of the view, in node-id order: its span or None (read-only)
    replicas: tuple[int, ...]  # how many nodes hold each layer
    moves: tuple[Move, ...]  # nodes whose span differs from their current one, in node-id order
    complete: bool  # a chain of spans carries a token through every layer
    uncovered: tuple[int, ...]  # layers no node holds
    replicated: bool  # every layer is held by at least min_replicas nodes
    step_seconds: float  # estimated seconds per token at full load (module docstring); inf if not complete
    ideal_step_seconds: float  # the same for the freshly computed spans (differs only when kept)
    kept: bool  # hysteresis kept the current spans


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a transition.

    ``load``: the node brings up ``span`` (its new span) and keeps serving its old one meanwhile.
    ``drop``: the node releases ``span`` (its old span); layers also in its new span stay loaded.
    """

    action: Literal["load", "drop"]
    node_id: str
    span: Span


def _eligible(node: NodeCapacity, config: PlacementConfig) -> bool:
    spl = node.seconds_per_layer
    return node.state in config.eligible_states and math.isfinite(spl) and spl > 0


def _capacity(node: NodeCapacity, shape: ModelShape) -> Capacity:
    per_layer = shape.bytes_per_layer + shape.kv_bytes_per_layer_reserve

    def layers(budget: int) -> int:
        return max(0, min(shape.num_layers, budget // per_layer))

    mem = node.memory_bytes
    whole = mem >= shape.span_bytes((0, shape.num_layers))
    first, last = layers(mem - shape.embed_bytes), layers(mem - shape.head_bytes)
    return Capacity(node.node_id, node.seconds_per_layer, layers(mem), first, last, whole)


# --- step time: max flow through the layer boundaries ---------------------------------------------


@dataclass(slots=True)
class _Edge:
    to: int
    cap: float
    rev: int  # index of the reverse edge in graph[to]


def _step_seconds(spans: Mapping[str, Span | None], spl: Mapping[str, float], num_layers: int) -> float:
    """Seconds per token of the swarm at full load: 1 / max flow from boundary 0 to ``num_layers``."""
    graph: list[list[_Edge]] = [[] for _ in range(num_layers + 1)]
    for node_id, span in spans.items():
        if span is not None:
            start, end = span
            graph[start].append(_Edge(end, 1.0 / ((end - start) * spl[node_id]), len(graph[end])))
            graph[end].append(_Edge(start, 0.0, len(graph[start]) - 1))
    tiny = _EPS * max((e.cap for edges in graph for e in edges), default=0.0)
    flow = 0.0
    while True:  # Edmonds-Karp: shortest augmenting paths, so it ends after O(V E) rounds
        came: dict[int, tuple[int, int]] = {0: (-1, -1)}
        queue = deque([0])
        while queue and num_layers not in came:
            v = queue.popleft()
            for i, e in enumerate(graph[v]):
                if e.cap > tiny and e.to not in came:
                    came[e.to] = (v, i)
                    queue.append(e.to)
        if num_layers not in came:
            break
        path: list[_Edge] = []
        v = num_layers
        while v != 0:
            u, i = came[v]
            path.append(graph[u][i])
            v = u
        push = min(e.cap for e in path)
        for e in path:
            e.cap -= push
            graph[e.to][e.rev].cap += push
        flow += push
    return 1.0 / flow if flow > 0 else math.inf


def _replicas(spans: Mapping[str, Span | None], num_layers: int) -> tuple[int, ...]:
    counts = [0] * num_layers
    for span in spans.values():
        if span is not None:
            for layer in range(*span):
                counts[layer] += 1
    return tuple(counts)


def _valid_span(span: Span | None, node: NodeCapacity, shape: ModelShape) -> bool:
    return span is not None and 0 <= span[0] < span[1] <= shape.num_layers and (
        shape.span_bytes(span) <= node.memory_bytes
    )


# --- the plan ------------------------------------------------------------------------------------------


def place(nodes: Iterable[NodeCapacity], shape: ModelShape, config: PlacementConfig | None = None) -> Plan:
    """The spans every node should hold, from one view of the swarm (module docstring has the rules).

    ``nodes`` is the whole view, this node included, in any order; node ids must be unique.
    """
    config = config or PlacementConfig()
    view = sorted(nodes, key=lambda n: n.node_id)
    if len({n.node_id for n in view}) != len(view):
        raise ValueError("node ids in a placement view must be unique")
    num_layers = shape.num_layers
    eligible = [n for n in view if _eligible(n, config)]
    usable = [c for c in (_capacity(n, shape) for n in eligible) if c.mid >= 1]
    spl = {n.node_id: n.seconds_per_layer for n in eligible}

    ideal: dict[str, Span | None] = {n.node_id: None for n in view}
    chains = pipelines(usable, num_layers, config.max_pipelines)
    if chains is None:
        ideal.update(prefix(usable, num_layers))
    else:
        ideal.update((node_id, span) for chain in chains for node_id, span in chain.spans)
    ideal_replicas = _replicas(ideal, num_layers)
    ideal_step = _step_seconds(ideal, spl, num_layers)

    target, replicas, step, kept = ideal, ideal_replicas, ideal_step, False
    current = {n.node_id: (n.current_span if n.node_id in spl else None) for n in view}
    if all(_valid_span(n.current_span, n, shape) for n in eligible if n.current_span is not None):
        cur_replicas = _replicas(current, num_layers)
        cur_step = _step_seconds(current, spl, num_layers)
        floor = min(min(ideal_replicas), config.min_replicas)
        if (
            sum(r > 0 for r in cur_replicas) >= sum(r > 0 for r in ideal_replicas)
            and min(cur_replicas) >= floor
            and (math.isinf(ideal_step) or cur_step <= ideal_step * (1 + config.hysteresis) * (1 + _EPS))
        ):
            target, replicas, step, kept = current, cur_replicas, cur_step, True

    moves = tuple(
        Move(n.node_id, n.current_span, target[n.node_id]) for n in view if n.current_span != target[n.node_id]
    )
    return Plan(
        spans=MappingProxyType(target),
        replicas=replicas,
        moves=moves,
        complete=math.isfinite(step),
        uncovered=tuple(layer for layer, r in enumerate(replicas) if r == 0),
        replicated=min(replicas) >= config.min_replicas,
        step_seconds=step,
        ideal_step_seconds=ideal_step,
        kept=kept,
    )


# --- make-before-break ---------------------------------------------------------------------------------


def _layers(span: Span | None) -> set[int]:
    return set() if span is None else set(range(*span))


def transition_steps(current: Mapping[str, Span | None], target: Mapping[str, Span | None]) -> tuple[Step, ...]:
    """Order the loads and drops that take the swarm from ``current`` to ``target`` spans, make-before-break.

    ``current`` should list every node holding layers now (including those that keep their span: they
    carry coverage meanwhile); a node missing from a mapping holds nothing there. Invariant, after every step:

    * a node that gets a new span loads it before it drops its old one (it briefly holds both);
    * every layer is held by at least ``min(holders now, holders in target)`` nodes, so a layer held
      before and after the transition is never left without a holder;
    * after the last step every node holds exactly its target span.

    Drops happen as early as the invariant allows (freeing memory soon); ties go by node id.
    """
    ids = sorted(set(current) | set(target))
    held = {i: _layers(current.get(i)) for i in ids}
    final = {i: _layers(target.get(i)) for i in ids}
    count: dict[int, int] = {}
    for layers in held.values():
        for layer in layers:
            count[layer] = count.get(layer, 0) + 1
    need = {layer: min(n, sum(layer in f for f in final.values())) for layer, n in count.items()}
    loads = {i: new for i in ids if (new := target.get(i)) is not None and new != current.get(i)}
    drops = {i: old for i in ids if (old := current.get(i)) is not None and old != target.get(i)}
    steps: list[Step] = []

    def drop_safe(i: str) -> bool:
        return i not in loads and all(count[layer] > need[layer] for layer in held[i] - final[i])

    while loads or drops:
        ready = next((i for i in drops if drop_safe(i)), None)
        if ready is not None:
            for layer in held[ready] - final[ready]:
                count[layer] -= 1
            held[ready] = set(final[ready])
            steps.append(Step("drop", ready, drops.pop(ready)))
        elif loads:
            i = next(iter(loads))
            for layer in final[i] - held[i]:
                count[layer] = count.get(layer, 0) + 1
                need.setdefault(layer, 0)
            held[i] |= final[i]
            steps.append(Step("load", i, loads.pop(i)))
        else:  # pragma: no cover - after all loads every holding contains its target, so each drop is safe
            raise RuntimeError("transition stuck: no safe drop after all loads")
    return tuple(steps)
