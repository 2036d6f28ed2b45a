"""Output verification, the pure parts: evidence and agreement, the audit choice, one session's
comparisons, and the quarantine book."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from swarmd.errors import ProtocolError
from swarmd.membership.trust import MAX_PUBLISHED, Trust
from swarmd.ring.audit import Auditor, AuditPlan, SessionAudit
from swarmd.ring.samples import (
    Evidence,
    agree,
    digest_report,
    last_row,
    position_weights,
    row_distance,
    to_float32,
    weighted_rows,
)
from swarmd.types import TensorBlob
from swarmd.wire.messages import AuditSample, Hop


def row_msg(values: np.ndarray, step: int = 0) -> AuditSample:
    return AuditSample("s", step, TensorBlob("float32", (len(values),), values.astype("<f4").tobytes()), -1, (), ())


def test_last_row_takes_the_last_position_in_every_dtype() -> None:
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 6, 4)[:, :3]  # [1, 3, 4]
    blob = TensorBlob("float32", (1, 3, 4), x.tobytes())
    assert to_float32(last_row(blob).data, "float32").tolist() == [8, 9, 10, 11]
    half = TensorBlob("float16", (1, 3, 4), x.astype(np.float16).tobytes())
    assert to_float32(last_row(half).data, "float32").tolist() == [8, 9, 10, 11]
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)  # exact for these small integers
    assert to_float32(last_row(TensorBlob("bfloat16", (1, 3, 4), bf16.tobytes())).data, "float32").tolist() \
        == [8, 9, 10, 11]


def test_rows_agree_within_the_dtype_tolerance_only() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(64).astype(np.float32)
    near = a + 1e-5 * rng.standard_normal(64).astype(np.float32)
    bf16_near = a * (1 + 0.01 * rng.standard_normal(64)).astype(np.float32)
    for x, y, dtype, want in [(a, near, "float32", True), (a, bf16_near, "float32", False),
                              (a, bf16_near, "bfloat16", True), (a, -a, "bfloat16", False),
                              (a, a[:32], "float32", False)]:
        assert agree(Evidence(row=x), Evidence(row=y), dtype, True) is want
    assert row_distance(a, np.full(64, np.nan, dtype=np.float32)) == float("inf")
    assert not agree(Evidence(row=a), Evidence(token=3), "float32", True)


def test_digests_ignore_chunking_and_catch_a_changed_earlier_row() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 10, 16)).astype(np.float32)
    blob = TensorBlob("float32", (1, 10, 16), x.tobytes())
    whole = weighted_rows(blob, 100, seed=42)
    parts = sum(weighted_rows(TensorBlob("float32", (1, b - a, 16), x[:, a:b].tobytes()), 100 + a, seed=42)
                for a, b in ((0, 3), (3, 4), (4, 10)))
    assert np.allclose(whole, parts)
    w = position_weights(42, 100, 10)
    assert ((w >= 0.5) & (w < 1.5)).all() and len(set(w.tolist())) == 10
    assert not np.allclose(position_weights(43, 100, 10), w)  # another session's secret, other weights
    y = x.copy()
    y[0, 2] *= -1  # a liar changes a prompt row but not the last one
    liar = TensorBlob("float32", (1, 10, 16), y.tobytes())
    honest = Evidence.of(AuditSample("s", 0, digest_report(blob, whole), -1, (), ()))
    lying = Evidence.of(AuditSample("s", 0, digest_report(liar, weighted_rows(liar, 100, 42)), -1, (), ()))
    assert np.array_equal(honest.row, lying.row)  # the sampled row alone would pass
    assert not agree(honest, lying, "bfloat16", True)
    assert agree(honest, Evidence.of(AuditSample("s", 0, digest_report(blob, parts), -1, (), ())), "float32", True)


def test_tokens_agree_on_a_match_or_a_near_tie_only() -> None:
    judge = Evidence(token=5, top={5: 10.0, 9: 9.9995, 2: 4.0})
    assert agree(Evidence.token_only(5), judge, "float32", True)
    assert agree(Evidence.token_only(9), judge, "float32", True)  # within 1e-3 of the best: a tie
    assert not agree(Evidence.token_only(2), judge, "float32", True)  # 6 logits below: wrong
    assert agree(Evidence.token_only(2), judge, "float32", False)  # sampling can draw any listed token
    assert not agree(Evidence.token_only(77), judge, "float32", False)  # not even among the top logits
    assert not agree(Evidence.token_only(1), Evidence.token_only(2), "float32", True)


def test_evidence_refuses_malformed_reports() -> None:
    with pytest.raises(ProtocolError):
        Evidence.of(AuditSample("s", 0, TensorBlob("float16", (4,), b"\0" * 8), -1, (), ()))
    with pytest.raises(ProtocolError):
        Evidence.of(AuditSample("s", 0, None, 1, (1, 2), (0.5,)))


HOPS = {"a": Hop("a", "h:1", 0, 2), "b": Hop("b", "h:2", 2, 4), "b2": Hop("b2", "h:3", 2, 4),
        "b3": Hop("b3", "h:4", 2, 4)}


def replicas(start: int, end: int, leave_out: frozenset[str]) -> list[Hop]:
    return [h for h in HOPS.values() if (h.start, h.end) == (start, end) and h.node_id not in leave_out]


def test_only_the_feeder_and_the_receiver_of_the_audited_hop_are_told() -> None:
    v = HOPS["b2"]
    assert AuditPlan(1, v).insiders(3) == {0, 2}
    assert AuditPlan(0, v).insiders(3) == {2, 1}  # the last stage feeds hop 0 its next tokens
    assert AuditPlan(2, v).insiders(3) == {1}  # the entry itself observes the last hop's tokens
    assert AuditPlan(0, v).insiders(1) == set()  # a one-hop chain: the entry copies tokens to the shadow
    assert all(p.hop not in p.insiders(n) for n in range(1, 5) for p in (AuditPlan(h, v) for h in range(n)))


def test_auditor_vets_every_replica_then_samples_at_its_rate() -> None:
    chain = [HOPS["a"], HOPS["b"]]
    auditor = Auditor(0.25, probation_steps=10, replicas=replicas, seed=1)
    first = auditor.choose(chain)
    assert first is not None and (first.hop, first.verifier) == (1, HOPS["b2"])  # only [2, 4) has replicas
    assert first.seed != 0 and first.seed != auditor.choose(chain).seed  # type: ignore[union-attr]
    auditor.passed_step(*["b", "b2"] * 10)  # the serving stage is proven: sessions are drawn at the rate
    plans = [auditor.choose(chain) for _ in range(4000)]
    assert 800 < sum(p is not None for p in plans) < 1200  # 25%
    assert {p.verifier.node_id for p in plans if p is not None} == {"b3"}  # the least proven shadows
    assert Auditor(0.0, 10, replicas).choose(chain) is None
    assert Auditor(1.0, 10, lambda s, e, x: []).choose(chain) is None  # nothing to compare with


async def test_session_audit_compares_each_step_and_gives_up_on_silence() -> None:
    chain = [HOPS["a"], HOPS["b"], Hop("c", "h:5", 4, 6)]
    audit = SessionAudit(AuditPlan(1, HOPS["b2"]), chain, "float32", True)
    row = np.ones(8, dtype=np.float32)
    audit.receive("c", row_msg(row, 0))  # the next hop: what b really sent
    audit.receive("b2", row_msg(row, 0))  # the shadow
    audit.receive("a", row_msg(-row, 0))  # neither: ignored
    assert await audit.outcome(0, 1.0) is True
    audit.receive("c", row_msg(row, 1))
    audit.receive("b2", row_msg(-row, 1))
    assert await audit.outcome(1, 1.0) is False
    audit.receive("c", row_msg(row, 2))
    assert await audit.outcome(2, 0.05) is None  # the shadow never answered
    assert audit.abandoned is not None and "step 2" in audit.abandoned


async def test_session_audit_of_the_last_hop_uses_the_entrys_own_token() -> None:
    audit = SessionAudit(AuditPlan(1, HOPS["b2"]), [HOPS["a"], HOPS["b"]], "float32", True)
    waiter = asyncio.ensure_future(audit.outcome(0, 1.0))
    audit.receive("b2", AuditSample("s", 0, None, 4, (4, 8), (3.0, 1.0)))
    await asyncio.sleep(0)
    assert not waiter.done()
    audit.token(0, 8)  # the stage sent 8, two logits below the shadow's best: a wrong token
    assert await waiter is False


def test_trust_publishes_own_findings_until_they_expire_and_joins_gossiped_ones() -> None:
    t = Trust(quarantine_s=60)
    t.quarantine("x", now=0, why="wrong at step 3")
    assert t.published(59) == ("x",)
    assert t.distrusted(10, "me", {"p": ("y",), "q": ("y", "q"), "y": ("p",)}) == \
        {"x": ["me"], "y": ["p", "q"], "p": ["y"]}  # claims about oneself are ignored
    assert t.published(60) == ()
    for i in range(MAX_PUBLISHED + 5):
        t.quarantine(f"n{i}", now=100 + i, why="")
    assert len(t.published(101)) == MAX_PUBLISHED and "n0" not in t.published(101)
