"""membership/view.py: SwarmView folds SWIM member changes into peers with decoded, validated metadata."""

from __future__ import annotations

import pytest

from swarmd.membership.swim_messages import ALIVE, DEAD, LEFT, SUSPECT
from swarmd.membership.swim_types import Member, MemberChanged
from swarmd.membership.view import PeerView, SwarmView
from swarmd.wire.codec import encode_meta
from swarmd.wire.messages import NodeMeta, SpanState

MODEL = "tiny-llama"
LAYERS = 16


def meta(spans: tuple[SpanState, ...] = (SpanState(0, 8, "serving"),), health: str = "serving",
         model: str = MODEL, num_layers: int = LAYERS, sessions: int = 0) -> NodeMeta:
    return NodeMeta("swarmd/test", 1, model, num_layers, "cpu", 1 << 30, 2, 0.01, spans, sessions, 0, health, False)


def change(node_id: str, state: str = ALIVE, raw: bytes | NodeMeta = b"", addr: str = "", incarnation: int = 0,
           since: float = 1.0, removed: bool = False, previous: str | None = None) -> MemberChanged:
    body = encode_meta(raw) if isinstance(raw, NodeMeta) else raw
    member = Member(node_id, addr or f"{node_id}.lan:7000", incarnation, state, 1, body, since)
    return MemberChanged(member, previous, removed)


def view() -> SwarmView:
    return SwarmView("self", MODEL, LAYERS)


def test_new_member_with_valid_meta_is_exposed_decoded() -> None:
    v = view()
    m = meta(spans=(SpanState(0, 8, "serving"), SpanState(8, 16, "loading")))
    assert v.apply(change("b", raw=m, incarnation=3, since=2.5)) is True
    peer = v.peers["b"]
    assert peer == PeerView("b", "b.lan:7000", ALIVE, 3, 2.5, m, None)
    assert v.version == 1


def test_applying_the_same_change_again_is_no_change() -> None:
    v = view()
    v.apply(change("b", raw=meta()))
    assert v.apply(change("b", raw=meta())) is False
    assert v.version == 1


def test_a_new_state_address_or_meta_is_a_change() -> None:
    v = view()
    v.apply(change("b", raw=meta()))
    assert v.apply(change("b", SUSPECT, raw=meta())) is True
    assert v.apply(change("b", SUSPECT, raw=meta(), addr="b.lan:7001")) is True
    assert v.apply(change("b", SUSPECT, raw=meta(sessions=4), addr="b.lan:7001")) is True
    assert v.version == 4
    assert v.peers["b"].meta == meta(sessions=4)


def test_member_without_meta_yet_has_none_and_no_problem() -> None:
    v = view()
    assert v.apply(change("b")) is True
    assert (v.peers["b"].meta, v.peers["b"].meta_problem) == (None, None)


@pytest.mark.parametrize("raw", [b"\xc1", b"not msgpack at all", b"\x93\x01\x02\x03", b"\x91" * 10])
def test_unreadable_meta_is_kept_as_a_problem(raw: bytes) -> None:
    v = view()
    assert v.apply(change("b", raw=raw)) is True
    peer = v.peers["b"]
    assert peer.meta is None and peer.meta_problem
    assert peer.state == ALIVE  # the member itself is still known


@pytest.mark.parametrize("other", [meta(model="other-model"), meta(num_layers=LAYERS + 1)])
def test_meta_for_another_model_is_refused(other: NodeMeta) -> None:
    v = view()
    v.apply(change("b", raw=other))
    peer = v.peers["b"]
    assert peer.meta is None
    assert peer.meta_problem == f"serves {other.model} ({other.num_layers} layers)"


def test_a_view_without_a_model_takes_any_model() -> None:
    v = SwarmView("self")
    other = meta(model="other-model", num_layers=7, spans=(SpanState(0, 7, "serving"),))
    v.apply(change("b", raw=other))
    assert v.peers["b"].meta == other


@pytest.mark.parametrize("span", [SpanState(4, 4, "serving"), SpanState(8, 4, "serving"),
                                  SpanState(8, LAYERS + 1, "serving"), SpanState(-1, 4, "serving")])
def test_meta_with_an_invalid_span_is_refused(span: SpanState) -> None:
    v = view()
    v.apply(change("b", raw=meta(spans=(SpanState(0, 4, "serving"), span))))
    peer = v.peers["b"]
    assert (peer.meta, peer.meta_problem) == (None, "invalid layer span")


def test_span_up_to_the_last_layer_is_valid() -> None:
    v = view()
    v.apply(change("b", raw=meta(spans=(SpanState(0, LAYERS, "serving"),))))
    assert v.peers["b"].meta is not None


def test_meta_turning_bad_drops_the_good_meta() -> None:
    v = view()
    v.apply(change("b", raw=meta()))
    assert v.apply(change("b", raw=b"\xc1")) is True
    assert v.peers["b"].meta is None


def test_removed_member_is_deleted() -> None:
    v = view()
    v.apply(change("b", raw=meta()))
    assert v.apply(change("b", DEAD, raw=meta(), removed=True, previous=DEAD)) is True
    assert "b" not in v.peers
    assert v.version == 2
    assert v.apply(change("b", DEAD, removed=True, previous=DEAD)) is False  # already gone
    assert v.version == 2


def test_changes_about_self_are_ignored() -> None:
    v = view()
    assert v.apply(change("self", raw=meta())) is False
    assert v.apply(change("self", removed=True)) is False
    assert v.peers == {} and v.version == 0


def test_live_excludes_dead_and_left_and_is_sorted() -> None:
    v = view()
    for node_id, state in [("d", ALIVE), ("a", DEAD), ("c", SUSPECT), ("b", LEFT), ("e", ALIVE), ("aa", ALIVE)]:
        v.apply(change(node_id, state))
    assert [p.node_id for p in v.live()] == ["aa", "c", "d", "e"]
    assert all(p.live for p in v.live())
    assert not v.peers["a"].live and not v.peers["b"].live


def peer(m: NodeMeta | None) -> PeerView:
    return PeerView("b", "b.lan:7000", ALIVE, 0, 0.0, m)


def test_serving_spans_lists_only_serving_spans() -> None:
    spans = (SpanState(0, 4, "serving"), SpanState(4, 8, "loading"), SpanState(8, 12, "draining"),
             SpanState(12, 16, "serving"))
    assert peer(meta(spans=spans)).serving_spans() == [(0, 4), (12, 16)]
    assert peer(meta(spans=spans, health="degraded")).serving_spans() == [(0, 4), (12, 16)]


@pytest.mark.parametrize("health", ["draining", "starting"])
def test_serving_spans_empty_on_a_member_not_taking_sessions(health: str) -> None:
    assert peer(meta(health=health)).serving_spans() == []


def test_serving_spans_empty_without_meta() -> None:
    assert peer(None).serving_spans() == []
