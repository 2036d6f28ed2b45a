"""membership/rebalance.py: the gossiped view as placement inputs, and this node's next make-before-break move."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from swarmd.membership.placement import ModelShape, NodeCapacity, place
from swarmd.membership.rebalance import Action, Span, capacity_of, model_shape, next_action, primary
from swarmd.wire.messages import NodeMeta, SpanState

TARGET: Span = (0, 8)
OLD: Span = (8, 16)


def meta(memory_bytes: int = 1000, dtype_bytes: int = 4, seconds_per_layer: float = 0.01,
         spans: tuple[SpanState, ...] = (), health: str = "serving", pinned: bool = False,
         num_layers: int = 16) -> NodeMeta:
    return NodeMeta("swarmd/test", 1, "tiny", num_layers, "cpu", memory_bytes, dtype_bytes, seconds_per_layer,
                    spans, 0, 0, health, pinned)


def always(value: bool) -> Callable[[Span], bool]:
    return lambda span: value


def only(*spans: Span) -> Callable[[Span], bool]:
    return lambda span: span in spans


def never_asked(span: Span) -> bool:
    raise AssertionError(f"not expected to be asked about {span}")


# --- next_action --------------------------------------------------------------------------------------


def test_loads_the_target_when_not_held() -> None:
    assert next_action(TARGET, {}, never_asked, never_asked) == Action("load", TARGET)


def test_loads_the_target_before_touching_an_old_span() -> None:
    # Make-before-break: the new span comes first, even when the old one could go.
    slots = {OLD: "serving", (16, 24): "draining"}
    assert next_action(TARGET, slots, always(True), always(True)) == Action("load", TARGET)


def test_serves_a_draining_target_again() -> None:
    assert next_action(TARGET, {TARGET: "draining"}, never_asked, never_asked) == Action("serve", TARGET)


def test_does_nothing_while_the_target_is_loading() -> None:
    assert next_action(TARGET, {TARGET: "loading"}, always(True), always(True)) is None


def test_does_nothing_when_the_target_is_served_alone() -> None:
    assert next_action(TARGET, {TARGET: "serving"}, always(True), always(True)) is None


def test_drains_an_old_serving_span_only_when_the_swarm_is_covered_without_it() -> None:
    slots = {TARGET: "serving", OLD: "serving"}
    assert next_action(TARGET, slots, always(True), always(False)) == Action("drain", OLD)
    assert next_action(TARGET, slots, always(False), always(True)) is None


def test_covered_without_is_asked_about_the_old_span_only() -> None:
    asked: list[Span] = []

    def covered(span: Span) -> bool:
        asked.append(span)
        return False

    next_action(TARGET, {TARGET: "serving", OLD: "serving"}, covered, always(True))
    assert asked == [OLD]


def test_drops_a_draining_span_only_once_drained() -> None:
    slots = {TARGET: "serving", OLD: "draining"}
    assert next_action(TARGET, slots, always(True), always(True)) == Action("drop", OLD)
    assert next_action(TARGET, slots, always(True), always(False)) is None


def test_never_drains_or_drops_the_target() -> None:
    assert next_action(TARGET, {TARGET: "serving"}, always(True), always(True)) is None
    # A draining target is served again, never dropped.
    assert next_action(TARGET, {TARGET: "draining"}, always(True), always(True)) == Action("serve", TARGET)


def test_drain_comes_before_drop() -> None:
    slots = {TARGET: "serving", (16, 24): "draining", OLD: "serving"}
    assert next_action(TARGET, slots, always(True), always(True)) == Action("drain", OLD)
    assert next_action(TARGET, slots, always(False), always(True)) == Action("drop", (16, 24))


def test_without_a_target_old_spans_drain_when_covered() -> None:
    assert next_action(None, {OLD: "serving"}, always(True), never_asked) == Action("drain", OLD)
    assert next_action(None, {OLD: "serving"}, always(False), always(True)) is None
    assert next_action(None, {OLD: "draining"}, always(True), always(True)) == Action("drop", OLD)
    assert next_action(None, {}, never_asked, never_asked) is None


def test_without_a_target_a_loading_span_is_left_alone() -> None:
    assert next_action(None, {OLD: "loading"}, always(True), always(True)) is None


def test_spans_are_visited_in_sorted_order_whatever_the_slot_order() -> None:
    spans: list[Span] = [(24, 32), (0, 8), (16, 24), (8, 16)]
    for order in (spans, spans[::-1], sorted(spans)):
        slots = {s: "serving" for s in order}
        assert next_action(None, slots, always(True), always(True)) == Action("drain", (0, 8))
        assert next_action(None, slots, only((16, 24), (24, 32)), always(True)) == Action("drain", (16, 24))
        draining = {s: "draining" for s in order}
        assert next_action(None, draining, always(True), only((8, 16), (24, 32))) == Action("drop", (8, 16))


# --- primary and capacity_of --------------------------------------------------------------------------


def test_primary_is_the_newest_span_not_draining() -> None:
    assert primary(()) is None
    assert primary([SpanState(0, 8, "draining")]) is None
    assert primary((SpanState(0, 8, "serving"), SpanState(8, 16, "loading"))) == (8, 16)
    assert primary((SpanState(0, 8, "serving"), SpanState(8, 16, "draining"))) == (0, 8)
    assert primary((SpanState(8, 16, "loading"), SpanState(0, 8, "serving"))) == (0, 8)


def test_capacity_of_a_serving_node() -> None:
    cap = capacity_of("n1", meta(memory_bytes=4000, seconds_per_layer=0.02, spans=(SpanState(0, 8, "serving"),)))
    assert cap == NodeCapacity("n1", 4000, 0.02, "serving", (0, 8))


def test_pinned_and_unmeasured_members_are_left_alone() -> None:
    assert capacity_of("n1", meta(pinned=True)) is None
    assert capacity_of("n1", meta(seconds_per_layer=0.0)) is None
    assert capacity_of("n1", meta(dtype_bytes=0)) is None


@pytest.mark.parametrize(("health", "state"), [("draining", "draining"), ("starting", "joining"),
                                                ("serving", "serving"), ("degraded", "serving")])
def test_health_becomes_a_placement_state(health: str, state: str) -> None:
    cap = capacity_of("n1", meta(health=health))
    assert cap is not None and cap.state == state


@pytest.mark.parametrize(("memory", "dtype_bytes", "float32"), [(1000, 2, 2000), (1000, 4, 1000), (1001, 2, 2002),
                                                                  (1000, 1, 4000), (999, 8, 499)])
def test_memory_is_compared_as_float32(memory: int, dtype_bytes: int, float32: int) -> None:
    cap = capacity_of("n1", meta(memory_bytes=memory, dtype_bytes=dtype_bytes))
    assert cap is not None and cap.memory_bytes == float32


def test_current_span_is_the_primary_span() -> None:
    spans = (SpanState(0, 8, "serving"), SpanState(8, 16, "loading"), SpanState(4, 12, "draining"))
    cap = capacity_of("n1", meta(spans=spans))
    assert cap is not None and cap.current_span == (8, 16)
    only_draining = capacity_of("n1", meta(spans=(SpanState(0, 8, "draining"),)))
    assert only_draining is not None and only_draining.current_span is None


# --- model_shape --------------------------------------------------------------------------------------


def test_model_shape_is_in_float32_bytes() -> None:
    shape = model_shape(num_layers=12, params_per_layer=100, embed_params=30, head_params=20, kv_per_token_layer=8,
                        reserve_tokens=256)
    assert shape == ModelShape(12, 400, 120, 80, 8 * 4 * 256)


def test_model_shape_without_kv_reserve() -> None:
    shape = model_shape(4, 10, 0, 0, 16, 0)
    assert (shape.bytes_per_layer, shape.embed_bytes, shape.head_bytes, shape.kv_bytes_per_layer_reserve) == (
        40, 0, 0, 0)


# --- with placement ------------------------------------------------------------------------------------


def test_every_node_computes_the_same_plan_with_two_replicas() -> None:
    layers = 8
    shape = model_shape(layers, params_per_layer=1000, embed_params=500, head_params=500, kv_per_token_layer=2,
                        reserve_tokens=16)
    whole = shape.span_bytes((0, layers))
    # bfloat16 nodes whose memory holds a bit more than half the model once counted as float32.
    per_node = whole * 6 // 10 // 2
    metas = {f"n{i}": meta(memory_bytes=per_node, dtype_bytes=2, seconds_per_layer=0.01, num_layers=layers)
             for i in range(4)}
    for m in metas.values():
        cap = capacity_of("x", m)
        assert cap is not None and cap.memory_bytes < whole  # nobody holds the model alone

    rng = random.Random(7)
    plans = []
    for self_id in metas:  # each node: itself first, then its view of the others in arbitrary order
        others = [(i, m) for i, m in metas.items() if i != self_id]
        rng.shuffle(others)
        caps = [capacity_of(i, m) for i, m in [(self_id, metas[self_id]), *others]]
        plans.append(place([c for c in caps if c is not None], shape))
    first = plans[0]
    assert all(dict(p.spans) == dict(first.spans) for p in plans)
    assert first.complete and first.replicas == (2,) * layers

    # Every span fits its node's memory as float32 (2 bytes per weight count double).
    for node_id, span in first.spans.items():
        assert span is not None and shape.span_bytes(span) <= metas[node_id].memory_bytes * 2


def test_plan_keeps_current_spans_published_in_meta() -> None:
    layers = 8
    shape = model_shape(layers, 1000, 0, 0, 0, 0)
    halves = {"n0": (0, 4), "n1": (4, 8), "n2": (0, 4), "n3": (4, 8)}
    metas = {i: meta(memory_bytes=shape.span_bytes((0, layers)) * 6 // 10, num_layers=layers,
                     spans=(SpanState(*span, "serving"),)) for i, span in halves.items()}
    caps = [capacity_of(i, m) for i, m in metas.items()]
    plan = place([c for c in caps if c is not None], shape)
    assert plan.kept and dict(plan.spans) == halves and not plan.moves
    # A node that announces it is draining gets no span and the rest still cover every layer.
    metas["n3"] = dataclasses.replace(metas["n3"], health="draining")
    caps = [capacity_of(i, m) for i, m in metas.items()]
    plan = place([c for c in caps if c is not None], shape)
    assert plan.spans["n3"] is None and plan.complete
