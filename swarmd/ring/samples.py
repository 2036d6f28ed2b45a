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


@dataclass(frozen=True)
class Evidence:
    """What one party says step ``step``'s output was: a hidden row, or a token with its top logits."""

    row: np.ndarray | None = None
    token: int = -1
    top: dict[int, float] = field(default_factory=dict)

    @classmethod
    def of(cls, msg: AuditSample) -> Evidence:
        if msg.row is not None:
            if msg.row.dtype != "float32" or len(msg.row.shape) != 1:
                raise ProtocolError("an audit row must be float32 [D]")
            return cls(row=to_float32(msg.row.data, "float32"))
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
        return row_distance(a.row, b.row) <= ROW_TOLERANCE.get(dtype, ROW_TOLERANCE["bfloat16"])
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
