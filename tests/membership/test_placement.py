"""membership/placement.py: pure, deterministic placement of layer spans, hysteresis and make-before-break."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.errors import ConfigError
from swarmd.membership.placement import (
    ModelShape,
    Move,
    NodeCapacity,
    PlacementConfig,
    Plan,
    Span,
    Step,
    place,
    transition_steps,
)

L = 32
LAYER = 1000  # bytes of one layer's weights
SHAPE = ModelShape(L, LAYER)  # no embedding, head or KV reserve: capacities are whole layers
FAT = ModelShape(L, LAYER, embed_bytes=3 * LAYER, head_bytes=2 * LAYER, kv_bytes_per_layer_reserve=LAYER // 2)
ONE = PlacementConfig(max_pipelines=1)  # force a single chain to look at stage sizes


def node(node_id: str, layers: float = L, spl: float = 0.01, state: str = "serving", span: Span | None = None,
         shape: ModelShape = SHAPE) -> NodeCapacity:
    """A node whose memory holds ``layers`` middle layers of ``shape``."""
    per = shape.bytes_per_layer + shape.kv_bytes_per_layer_reserve
    return NodeCapacity(node_id, int(layers * per), spl, state, span)


def ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


def held(plan: Plan) -> dict[str, Span]:
    return {i: s for i, s in plan.spans.items() if s is not None}


def sizes(plan: Plan) -> dict[str, int]:
    return {i: e - s for i, (s, e) in held(plan).items()}


def with_spans(nodes: list[NodeCapacity], spans: Mapping[str, Span | None]) -> list[NodeCapacity]:
    return [NodeCapacity(n.node_id, n.memory_bytes, n.seconds_per_layer, n.state, spans.get(n.node_id)) for n in nodes]


def assert_fits(plan: Plan, nodes: list[NodeCapacity], shape: ModelShape) -> None:
    by_id = {n.node_id: n for n in nodes}
    for node_id, span in held(plan).items():
        assert 0 <= span[0] < span[1] <= shape.num_layers
        assert shape.span_bytes(span) <= by_id[node_id].memory_bytes, (node_id, span)


# --- homogeneous swarms ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 9))
def test_homogeneous_whole_model_nodes_each_run_alone(n: int) -> None:
    plan = place([node(i) for i in ids(n)], SHAPE)
    assert all(span == (0, L) for span in plan.spans.values())
    assert plan.replicas == (n,) * L and plan.complete and plan.replicated == (n >= 2)
    assert plan.step_seconds == pytest.approx(L * 0.01 / n)
    assert plan.moves == tuple(Move(i, None, (0, L)) for i in ids(n))


@pytest.mark.parametrize("n", range(1, 9))
def test_homogeneous_half_model_nodes_pair_up(n: int) -> None:
    nodes = [node(i, layers=20, shape=FAT) for i in ids(n)]  # 20 middle layers; 18 next to embedding or head
    plan = place(nodes, FAT)
    assert_fits(plan, nodes, FAT)
    k = n // 2
    if k == 0:
        assert not plan.complete and held(plan) == {"n0": (0, 18)} and plan.uncovered == tuple(range(18, L))
        return
    assert plan.complete and not plan.uncovered and plan.replicated == (k >= 2)
    assert plan.replicas == (k,) * L  # disjoint chains: every layer once per pipeline
    if n % 2 == 0:
        assert sorted(held(plan).values()) == [(0, 16)] * k + [(16, 32)] * k
        assert plan.step_seconds == pytest.approx(0.16 / k)
    else:  # the odd node joins one pipeline: 3 stages of 11, 11, 10 layers
        assert sorted(sizes(plan).values()) == [10, 11, 11] + [16] * (2 * k - 2)
        assert plan.step_seconds == pytest.approx(1 / ((k - 1) / 0.16 + 1 / 0.11))


# --- heterogeneous speeds and memory ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spls",
    [(0.01, 0.02), (0.01, 0.02, 0.03), (0.01, 0.01, 0.04), (0.005, 0.01, 0.02, 0.04), (0.01, 0.011, 0.05, 0.1, 0.1)],
)
def test_stage_sizes_follow_speed(spls: tuple[float, ...]) -> None:
    plan = place([node(i, spl=s) for i, s in zip(ids(len(spls)), spls, strict=True)], SHAPE, ONE)
    speed = [1 / s for s in spls]
    for i, v in zip(ids(len(spls)), speed, strict=True):
        assert abs(sizes(plan).get(i, 0) - L * v / sum(speed)) <= 1, (i, sizes(plan))
    assert plan.complete and plan.replicas == (1,) * L


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0.01, 0.04), min_size=1, max_size=5), st.integers(24, 80))
def test_stage_sizes_near_proportional(spls: list[float], layers: int) -> None:
    # Each stage is within one layer of its speed share, except that rounding slow stages down (so the
    # slowest stage stays minimal) can push up to one more layer onto a faster one: < 2 layers off.
    nodes = [NodeCapacity(i, layers * LAYER, s) for i, s in zip(ids(len(spls)), spls, strict=True)]
    plan = place(nodes, ModelShape(layers, LAYER), ONE)
    total = sum(1 / s for s in spls)
    off = [abs(sizes(plan).get(i, 0) - layers / s / total) for i, s in zip(ids(len(spls)), spls, strict=True)]
    assert max(off) < 2, sizes(plan)
    assert plan.complete and sum(sizes(plan).values()) == layers


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 0.1), st.integers(1, 12)), min_size=1, max_size=4), st.integers(1, 12))
def test_stage_sizes_minimise_the_bottleneck(specs: list[tuple[float, int]], layers: int) -> None:
    nodes = [NodeCapacity(i, cap * LAYER, s) for i, (s, cap) in zip(ids(len(specs)), specs, strict=True)]
    plan = place(nodes, ModelShape(layers, LAYER), ONE)
    best = min(
        (max(n * s for n, (s, _) in zip(split, specs, strict=True))
         for split in itertools.product(*(range(min(cap, layers) + 1) for _, cap in specs)) if sum(split) == layers),
        default=math.inf,
    )
    assert plan.step_seconds == pytest.approx(best)
    if plan.complete:
        by_id = dict(zip(ids(len(specs)), specs, strict=True))
        assert max(n * by_id[i][0] for i, n in sizes(plan).items()) == pytest.approx(best)


def test_memory_caps_a_fast_node() -> None:
    plan = place([node("a", layers=4, spl=0.001), node("b"), node("c")], SHAPE, ONE)
    assert sizes(plan) == {"a": 4, "b": 14, "c": 14}  # a would take 30 layers on speed alone


def test_memory_caps_mixed() -> None:
    nodes = [node("a", layers=3), node("b", layers=10), node("c", layers=L)]
    plan = place(nodes, SHAPE, ONE)
    assert sizes(plan)["a"] == 3 and sizes(plan)["b"] == 10 and sizes(plan)["c"] == 19
    assert_fits(plan, nodes, SHAPE)


def test_embedding_and_head_go_where_they_fit() -> None:
    shape = ModelShape(L, LAYER, embed_bytes=10 * LAYER, head_bytes=10 * LAYER)
    # "a" and "b" hold 8 layers but neither embedding nor head; "x" and "z" hold 20 layers next to either.
    nodes = [node("a", 8, shape=shape), node("b", 8, shape=shape), node("x", 30, shape=shape),
             node("z", 30, shape=shape)]
    plan = place(nodes, shape)
    assert_fits(plan, nodes, shape)
    assert plan.complete and held(plan) == {"x": (0, 8), "a": (8, 16), "b": (16, 24), "z": (24, 32)}


def test_node_too_small_for_one_layer_gets_none() -> None:
    nodes = [node("a"), node("b"), node("tiny", layers=0.9)]
    plan = place(nodes, SHAPE)
    assert plan.spans["tiny"] is None and plan.complete
    assert place([node("tiny", layers=0.5)], SHAPE).spans == {"tiny": None}


def test_not_enough_memory_for_one_copy() -> None:
    nodes = [node("a", 10, shape=FAT), node("b", 8, shape=FAT), node("c", 6, shape=FAT)]
    plan = place(nodes, FAT)
    assert not plan.complete and not plan.replicated and math.isinf(plan.step_seconds)
    assert_fits(plan, nodes, FAT)
    covered = sum(sizes(plan).values())
    assert covered == 8 + 8 + 6  # a holds the embedding (costs 2 layers); the rest hold all they can
    assert plan.uncovered == tuple(range(covered, L))
    assert sorted(held(plan).values())[0][0] == 0  # a prefix: the chain can grow as nodes join


def test_nothing_usable_is_empty_and_incomplete() -> None:
    plan = place([node("a", state="draining"), node("b", spl=0.0), node("c", spl=math.nan)], SHAPE)
    assert held(plan) == {} and plan.uncovered == tuple(range(L)) and not plan.complete
    assert place([], SHAPE).replicas == (0,) * L


@pytest.mark.parametrize(
    "layers",
    [(16, 16, 16, 16), (32, 8, 8, 8, 8), (20, 12, 11, 21, 16, 16), (10, 11, 11, 10, 12, 10, 6, 6), (31, 33, 5)],
)
def test_two_copies_fit_so_every_layer_has_two_replicas(layers: tuple[int, ...]) -> None:
    nodes = [node(i, n, spl=0.01 * (1 + j % 3)) for j, (i, n) in enumerate(zip(ids(len(layers)), layers, strict=True))]
    plan = place(nodes, SHAPE)
    assert plan.complete and plan.replicated and min(plan.replicas) >= 2
    assert_fits(plan, nodes, SHAPE)


def test_max_pipelines_caps_replicas() -> None:
    plan = place([node(i) for i in ids(4)], SHAPE, PlacementConfig(max_pipelines=2))
    assert plan.replicas == (2,) * L and plan.complete


# --- hysteresis: joins, leaves, remeasured speeds -----------------------------------------------------------


def settled(nodes: list[NodeCapacity], config: PlacementConfig | None = None) -> list[NodeCapacity]:
    """The nodes holding what ``place`` gives them."""
    return with_spans(nodes, place(nodes, SHAPE, config).spans)


def test_same_view_keeps_everything() -> None:
    nodes = settled([node(i, 16) for i in ids(4)])
    plan = place(nodes, SHAPE)
    assert plan.kept and plan.moves == () and plan.step_seconds == pytest.approx(plan.ideal_step_seconds)


def test_remeasured_speeds_do_not_reshuffle() -> None:
    nodes = settled([node(i, 20, spl=s) for i, s in zip(ids(3), (0.01, 0.02, 0.03), strict=True)])
    assert [n.current_span for n in nodes] == [(0, 17), (17, 26), (26, 32)]
    jittered = [NodeCapacity(n.node_id, n.memory_bytes, n.seconds_per_layer * f, n.state, n.current_span)
                for n, f in zip(nodes, (1.08, 0.95, 1.1), strict=True)]
    plan = place(jittered, SHAPE)
    assert plan.kept and plan.moves == ()
    eager = place(jittered, SHAPE, PlacementConfig(hysteresis=0.0))  # without hysteresis it would move 2 nodes
    assert not eager.kept and len(eager.moves) == 2 and eager.step_seconds == plan.ideal_step_seconds


def test_slow_join_below_hysteresis_changes_nothing() -> None:
    nodes = settled([node(i, 16) for i in ids(4)])
    plan = place([*nodes, node("slow", 16, spl=0.05)], SHAPE)
    assert plan.ideal_step_seconds < plan.step_seconds <= plan.ideal_step_seconds * 1.15
    assert plan.kept and plan.moves == () and plan.spans["slow"] is None


def test_fast_join_above_hysteresis_replans() -> None:
    nodes = settled([node(i, 16) for i in ids(4)])
    plan = place([*nodes, node("fast", 16, spl=0.002)], SHAPE)
    assert not plan.kept and plan.spans["fast"] is not None
    assert plan.step_seconds < place(nodes, SHAPE).step_seconds / 1.15
    assert plan.complete and plan.replicated


def test_zero_hysteresis_takes_any_gain() -> None:
    nodes = settled([node(i, 16) for i in ids(4)])
    assert not place([*nodes, node("slow", 16, spl=0.05)], SHAPE, PlacementConfig(hysteresis=0.0)).kept


def test_leave_restores_replicas_when_memory_allows() -> None:
    nodes = settled([node(i, 16) for i in ids(5)])
    assert min(place(nodes, SHAPE).replicas) == 2
    gone = next(i for i, s in place(nodes, SHAPE).spans.items() if s is not None and s[1] - s[0] == 16)
    rest = [n for n in nodes if n.node_id != gone]
    plan = place(rest, SHAPE)
    assert not plan.kept and plan.complete and plan.replicated and min(plan.replicas) == 2


def test_leave_without_memory_for_two_copies_keeps_one() -> None:
    nodes = settled([node(i, 16) for i in ids(4)])
    plan = place(nodes[1:], SHAPE)
    assert plan.complete and not plan.replicated and plan.replicas == (1,) * L
    assert not plan.kept  # three nodes in one chain beat the broken pair by far more than 15 %


def test_leave_below_one_copy_is_incomplete() -> None:
    nodes = settled([node(i, 16) for i in ids(2)])
    plan = place(nodes[:1], SHAPE)
    assert not plan.complete and plan.uncovered == tuple(range(16, L))


def test_current_span_that_no_longer_fits_is_replaced() -> None:
    nodes = settled([node(i, 16) for i in ids(4)])
    shrunk = [NodeCapacity(nodes[0].node_id, 10 * LAYER, 0.01, "serving", nodes[0].current_span), *nodes[1:]]
    plan = place(shrunk, SHAPE)
    assert not plan.kept and sizes(plan).get("n0", 0) <= 10


def test_draining_node_gets_none_and_others_cover() -> None:
    nodes = settled([node(i, 16) for i in ids(5)])
    drained = [NodeCapacity(n.node_id, n.memory_bytes, n.seconds_per_layer, "draining" if n.node_id == "n0" else
                            n.state, n.current_span) for n in nodes]
    plan = place(drained, SHAPE)
    assert plan.spans["n0"] is None and plan.complete and plan.replicated
    assert Move("n0", nodes[0].current_span, None) in plan.moves


def test_joining_node_is_eligible_but_unknown_states_are_not() -> None:
    plan = place([node("a", state="joining"), node("b", state="suspect")], SHAPE)
    assert plan.spans == {"a": (0, L), "b": None}


def test_invalid_config_and_views() -> None:
    with pytest.raises(ConfigError):
        PlacementConfig(min_replicas=0)
    with pytest.raises(ConfigError):
        PlacementConfig(hysteresis=-0.1)
    with pytest.raises(ConfigError):
        ModelShape(0, LAYER)
    with pytest.raises(ValueError):
        place([node("a"), node("a")], SHAPE)


# --- determinism --------------------------------------------------------------------------------------------

spans_st = st.one_of(st.none(), st.tuples(st.integers(0, 15), st.integers(1, 16)).map(lambda t: (t[0], t[0] + t[1])))
node_st = st.builds(
    lambda layers, spl, state, span: (layers, spl, state, span),
    st.floats(0.5, 40), st.sampled_from([0.005, 0.01, 0.0105, 0.02, 0.05]),
    st.sampled_from(["serving", "serving", "joining", "draining"]), spans_st,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(node_st, min_size=0, max_size=8), st.randoms(use_true_random=False), st.sampled_from([SHAPE, FAT]))
def test_shuffled_views_give_the_same_plan(specs: list[tuple[float, float, str, Span | None]], rnd: object,
                                           shape: ModelShape) -> None:
    nodes = [node(f"n{j}", lay, spl, state, span, shape) for j, (lay, spl, state, span) in enumerate(specs)]
    shuffled = list(nodes)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    plan = place(nodes, shape)
    assert place(shuffled, shape) == plan
    assert list(plan.spans) == sorted(plan.spans)
    assert_fits(plan, nodes, shape)
    assert all(plan.spans[n.node_id] is None for n in nodes if n.state == "draining")
    assert plan.complete == (not plan.uncovered) or plan.kept


def test_same_plan_under_any_hash_seed() -> None:
    code = (
        "from swarmd.membership.placement import *\n"
        "shape = ModelShape(40, 1000, 3000, 2000, 300)\n"
        "nodes = [NodeCapacity(f'node-{i}', (5 + 7 * i % 23) * 1300, (0.01, 0.013, 0.02, 0.05)[i % 4],"
        " ('serving', 'joining', 'draining')[i % 5 % 3], (0, 10) if i % 3 else None) for i in range(11)]\n"
        "print(repr(place(nodes, shape)))\n"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1 and "Plan(" in outs.pop()


# --- make-before-break ----------------------------------------------------------------------------------------


def simulate(current: Mapping[str, Span | None], target: Mapping[str, Span | None], steps: tuple[Step, ...],
             layers: int) -> None:
    """Replay ``steps`` and check the documented invariant after each one."""
    hold = {i: set(range(*s)) if s else set() for i, s in current.items()}
    final = {i: set(range(*s)) if s else set() for i, s in target.items()}

    def count(h: Mapping[str, set[int]], layer: int) -> int:
        return sum(layer in s for s in h.values())

    floor = [min(count(hold, x), count(final, x)) for x in range(layers)]
    loaded: set[str] = set()
    for step in steps:
        if step.action == "load":
            assert step.span == target[step.node_id]
            hold.setdefault(step.node_id, set()).update(range(*step.span))
            loaded.add(step.node_id)
        else:
            assert step.span == current[step.node_id]
            assert target.get(step.node_id) is None or step.node_id in loaded  # make before break
            hold[step.node_id] = final.get(step.node_id, set())
        assert all(count(hold, x) >= floor[x] for x in range(layers)), step
    assert {i: s for i, s in hold.items() if s} == {i: s for i, s in final.items() if s}


def test_swap_loads_both_before_dropping() -> None:
    current: dict[str, Span | None] = {"a": (0, 16), "b": (16, 32)}
    target: dict[str, Span | None] = {"a": (16, 32), "b": (0, 16)}
    steps = transition_steps(current, target)
    assert [s.action for s in steps] == ["load", "load", "drop", "drop"]
    simulate(current, target, steps, L)


def test_drop_waits_for_the_replacement() -> None:
    current: dict[str, Span | None] = {"old": (0, 32), "x": None, "y": None}
    target: dict[str, Span | None] = {"old": None, "x": (0, 16), "y": (16, 32)}
    assert transition_steps(current, target) == (
        Step("load", "x", (0, 16)), Step("load", "y", (16, 32)), Step("drop", "old", (0, 32)),
    )


def test_drop_happens_as_soon_as_it_is_safe() -> None:
    current: dict[str, Span | None] = {"a": (0, 16), "b": (0, 32), "c": None}
    target: dict[str, Span | None] = {"a": None, "b": (0, 32), "c": (16, 32)}
    assert transition_steps(current, target) == (Step("drop", "a", (0, 16)), Step("load", "c", (16, 32)))


def test_plan_moves_replay_safely() -> None:
    before = settled([node(i, 16) for i in ids(4)])
    plan = place([*before[1:], node("fast", 16, spl=0.002)], SHAPE)
    current = {n.node_id: n.current_span for n in before}
    steps = transition_steps(current, plan.spans)
    assert {s.node_id for s in steps} == {m.node_id for m in plan.moves} | {"n0"}
    simulate(current, {**{i: None for i in current}, **plan.spans}, steps, L)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(ids(6)), st.tuples(spans_st, spans_st), max_size=6))
def test_transition_never_uncovers_a_layer(pairs: dict[str, tuple[Span | None, Span | None]]) -> None:
    current = {i: c for i, (c, _) in pairs.items()}
    target = {i: t for i, (_, t) in pairs.items()}
    steps = transition_steps(current, target)
    simulate(current, target, steps, 16)
    assert len(steps) == sum((c is not None and c != t) + (t is not None and c != t) for c, t in pairs.values())
