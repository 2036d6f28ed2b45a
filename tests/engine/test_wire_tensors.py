"""Hidden states on the wire: exact round trip per dtype; wrong shapes and non-finite values refused."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from swarmd.engine.wire_tensors import blob_to_tensor, tensor_to_blob
from swarmd.errors import InvalidRequest
from swarmd.types import TensorBlob


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    t = torch.randn(1, 5, 64).to(dtype)
    blob = tensor_to_blob(t)
    assert blob.dtype == str(dtype).removeprefix("torch.") and blob.shape == (1, 5, 64)
    assert len(blob.data) == t.numel() * t.element_size()
    assert torch.equal(blob_to_tensor(blob, 64), t)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_hidden_states_are_refused(bad: float) -> None:
    data = struct.pack("<f", 0.5) * 63 + struct.pack("<f", bad)
    with pytest.raises(InvalidRequest, match="NaN or Inf"):
        blob_to_tensor(TensorBlob("float32", (1, 1, 64), data), 64)


@pytest.mark.parametrize("shape", [(1, 2, 32), (2, 1, 64), (128,)])
def test_shape_must_match_the_model(shape: tuple[int, ...]) -> None:
    n = 1
    for d in shape:
        n *= d
    with pytest.raises(InvalidRequest, match="shape"):
        blob_to_tensor(TensorBlob("float32", shape, bytes(4 * n)), 64)


# --- properties: any blob the codec lets through ------------------------------------------------------


ITEM = {"float32": 4, "float16": 2, "bfloat16": 2}


@given(st.sampled_from(sorted(ITEM)), st.lists(st.integers(1, 6), min_size=1, max_size=4), st.data())
def test_any_blob_becomes_hidden_states_or_a_clear_refusal(dtype: str, shape: list[int], data: st.DataObject) -> None:
    n = 1
    for d in shape:
        n *= d
    raw = data.draw(st.binary(min_size=n * ITEM[dtype], max_size=n * ITEM[dtype]))
    try:
        t = blob_to_tensor(TensorBlob(dtype, tuple(shape), raw), 4)
    except InvalidRequest:
        return
    assert tuple(t.shape) == (1, shape[1], 4) and bool(torch.isfinite(t).all())
