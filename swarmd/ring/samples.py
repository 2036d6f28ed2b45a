"""Output verification evidence: one position's output, as a stage reports it, and the rule that says
whether two reports of the same step agree (pure numpy; no torch outside the engine).

Two honest replicas never compute bit-identical outputs once batching, kernels or devices differ, so
agreement is a tolerance that depends on the dtype the stages run in: hidden rows are compared by
relative L2 distance; tokens must match, except where the logits show a near-tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ProtocolError
from ..types import TensorBlob
from ..wire.messages import AuditSample

# Relative L2 distance ||a - b|| / max(||a||, ||b||) that two honest replicas stay within. float32 on a
# CPU: batched vs alone differ by ~1e-6; bf16 on a GPU rounds per batch size, about 1e-2 after 16 layers.
ROW_TOLERANCE = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 6e-2}
# Two honest last stages may pick different tokens only when their logits nearly tie: the judge's logit
# of the other token is within this of its best.
LOGIT_MARGIN = {"float32": 1e-3, "float16": 0.1, "bfloat16": 0.5}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def to_float32(data: bytes, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if dtype == "float16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if dtype == "bfloat16":  # the upper half of a float32
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    raise ProtocolError(f"no float conversion for dtype {dtype!r}")


def last_row(blob: TensorBlob) -> TensorBlob:
    """The hidden state of the last position of ``[1, S, D]`` (in any wire dtype) as float32 ``[D]``."""
    d = int(blob.shape[-1])
    size = _ITEMSIZE[blob.dtype]
    row = to_float32(bytes(blob.data[len(blob.data) - d * size:]), blob.dtype)
    return TensorBlob("float32", (d,), row.tobytes())


_MASK = (1 << 64) - 1


def position_weights(seed: int, start: int, n: int) -> np.ndarray:
    """Secret per-position weights in [0.5, 1.5) (a splitmix64 hash of seed and position): the digest of
    rows ``[start, start + n)`` does not depend on how positions were split into forwards, and a stage
    that does not know ``seed`` cannot alter rows so that the digest stays the same."""
    with np.errstate(over="ignore"):
        z = np.arange(start, start + n, dtype=np.uint64) + np.uint64(seed & _MASK) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return 0.5 + (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def weighted_rows(blob: TensorBlob, start: int, seed: int) -> np.ndarray:
    """``sum_p w(p) * x_p`` over the rows of ``[1, n, D]`` at positions ``start ...`` (float64 ``[D]``)."""
    d = int(blob.shape[-1])
    rows = to_float32(bytes(blob.data), blob.dtype).reshape(-1, d).astype(np.float64)
    return position_weights(seed, start, rows.shape[0]) @ rows


def digest_report(blob: TensorBlob, digest: np.ndarray) -> TensorBlob:
    """The last row and the digest, as a report carries them: float32 ``[2, D]``."""
    last = to_float32(last_row(blob).data, "float32")
    both = np.stack([last, digest.astype(np.float32)])
    return TensorBlob("float32", tuple(both.shape), both.tobytes())


@dataclass(frozen=True)
class Evidence:
    """What one party says step ``step``'s output was: a hidden row (and the digest of the rows since the
    last report), or a token with its top logits."""

    row: np.ndarray | None = None
    token: int = -1
    top: dict[int, float] = field(default_factory=dict)
    digest: np.ndarray | None = None

    @classmethod
    def of(cls, msg: AuditSample) -> Evidence:
        if msg.row is not None:
            shape = msg.row.shape
            if msg.row.dtype != "float32" or not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 2)):
                raise ProtocolError("an audit row must be float32 [D] or [2, D]")
            values = to_float32(msg.row.data, "float32")
            if len(shape) == 2:
                return cls(row=values[: shape[1]], digest=values[shape[1]:])
            return cls(row=values)
        if len(msg.top_ids) != len(msg.top_logits):
            raise ProtocolError("audit top ids and logits differ in length")
        return cls(token=msg.token, top=dict(zip(msg.top_ids, msg.top_logits, strict=True)))

    @classmethod
    def token_only(cls, token: int) -> Evidence:
        return cls(token=token)


def row_distance(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    scale = max(float(np.linalg.norm(a)), float(np.linalg.norm(b)), 1e-12)
    dist = float(np.linalg.norm(a - b)) / scale
    return dist if math.isfinite(dist) else math.inf


def agree(a: Evidence, b: Evidence, dtype: str, greedy: bool) -> bool:
    """Whether two reports of one step are the same output within what honest replicas differ by."""
    if a.row is not None or b.row is not None:
        if a.row is None or b.row is None:
            return False
        tolerance = ROW_TOLERANCE.get(dtype, ROW_TOLERANCE["bfloat16"])
        if a.digest is not None and b.digest is not None and row_distance(a.digest, b.digest) > tolerance:
            return False  # some earlier row of this step differs: the next stage's cache is not what it should be
        return row_distance(a.row, b.row) <= tolerance
    if a.token == b.token:
        return True
    for judge, other in ((a, b), (b, a)):
        if judge.top:
            mine = judge.top.get(other.token)
            if mine is None:
                return False  # not even among the judge's largest logits
            # Sampling with one seed draws the same token from two nearly equal distributions except at a
            # boundary of the cumulative order, where any two listed tokens can meet; greedy needs a tie.
            return not greedy or max(judge.top.values()) - mine <= LOGIT_MARGIN.get(dtype, 0.5)
    return False
