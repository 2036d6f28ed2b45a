"""Per-session key/value cache: preallocated, fixed shape, written at explicit positions (gpt-fast style)."""

from __future__ import annotations

import torch

from ..errors import ContextLengthExceeded, InvalidRequest


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of K plus V for one token across ``num_layers`` layers."""
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    """K and V for the layers of one span and one session.

    ``k``/``v``: ``[L_span, B=1, H_kv, capacity, D]``. ``length`` counts positions already written.
    A step may start at ``length`` (append) or earlier (rewind, used when a history is replayed).
    """

    def __init__(
        self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_layers, 1, num_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0

    def check_step(self, start_pos: int, n: int) -> None:
        if start_pos < 0 or start_pos > self.length:
            raise InvalidRequest(f"step starts at position {start_pos} but the cache holds {self.length}")
        if start_pos + n > self.capacity:
            raise ContextLengthExceeded(
                f"step [{start_pos}, {start_pos + n}) exceeds the session's KV capacity {self.capacity}"
            )

    def update(
        self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` ``[1, H_kv, S, D]`` at ``start_pos``; return all keys/values up to the new end."""
        end = start_pos + k.shape[2]
        self.k[layer, :, :, start_pos:end] = k
        self.v[layer, :, :, start_pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def commit(self, end: int) -> None:
        self.length = end
