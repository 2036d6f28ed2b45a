"""Paged key/value cache: one preallocated pool per span, pages handed to sessions (vLLM-style blocks).

The pool holds ``[L_span, pages, page_tokens, H_kv, D]`` for K and for V. A session owns a list of
pages big enough for its capacity; position ``p`` of a session lives in slot
``pages[p // page_tokens] * page_tokens + p % page_tokens``. Steps of different sessions write their
K/V with one indexed store per layer and read them back with one gather, so sessions of any length
run in one batched forward.
"""

from __future__ import annotations

import torch

from ..errors import ContextLengthExceeded, InvalidRequest, KVBudgetExceeded

PAGE_TOKENS = 16


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of K plus V for one token across ``num_layers`` layers."""
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVPool:
    """The pages of one span. Allocated once with ``torch.empty`` (on a CPU the kernel commits memory only
    as pages are first written); a page is zeroed when handed out, so masked reads never meet NaN garbage."""

    def __init__(
        self, num_layers: int, num_kv_heads: int, head_dim: int, pages: int, dtype: torch.dtype,
        device: torch.device, page_tokens: int = PAGE_TOKENS,
    ) -> None:
        if pages < 1:
            raise KVBudgetExceeded("the KV budget does not hold a single page")
        shape = (num_layers, pages, page_tokens, num_kv_heads, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.page_tokens = page_tokens
        self.pages = pages
        self.device = device
        self._free = list(range(pages - 1, -1, -1))  # a stack: recently freed pages are reused first

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def pages_for(self, capacity: int) -> int:
        return -(-capacity // self.page_tokens)

    def allocate(self, capacity: int) -> KVCache:
        need = self.pages_for(capacity)
        if need > len(self._free):
            raise KVBudgetExceeded(f"{need} KV pages needed, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(need)]
        index = torch.tensor(pages, dtype=torch.long, device=self.device)
        self.k[:, index] = 0
        self.v[:, index] = 0
        return KVCache(self, pages, index)

    def reserve_scratch(self) -> int:
        """Take one page out of circulation for good: padding rows of a captured decode batch write there."""
        if not self._free:
            raise KVBudgetExceeded("no KV page left for the decode graphs' scratch page")
        page = self._free.pop(0)  # the highest-numbered page: the last to be handed out
        self.k[:, page] = 0
        self.v[:, page] = 0
        return page

    def release(self, cache: KVCache) -> None:
        if cache.pool is self and cache.pages:
            self._free.extend(reversed(cache.pages))
            cache.pages = []


class KVCache:
    """One session's pages in a pool. ``length`` counts positions already written; a step may start at
    ``length`` (append) or earlier (rewind, used when a history is replayed)."""

    def __init__(self, pool: KVPool, pages: list[int], index: torch.Tensor) -> None:
        self.pool = pool
        self.pages = pages
        self.index = index  # the pages as a device tensor, for gathers
        self.capacity = len(pages) * pool.page_tokens
        self.length = 0

    def check_step(self, start_pos: int, n: int) -> None:
        if start_pos < 0 or start_pos > self.length:
            raise InvalidRequest(f"step starts at position {start_pos} but the cache holds {self.length}")
        if start_pos + n > self.capacity:
            raise ContextLengthExceeded(
                f"step [{start_pos}, {start_pos + n}) exceeds the session's KV capacity {self.capacity}"
            )

    def slots(self, start_pos: int, n: int) -> list[int]:
        """Flat pool slots of positions ``[start_pos, start_pos + n)``."""
        t = self.pool.page_tokens
        return [self.pages[p // t] * t + p % t for p in range(start_pos, start_pos + n)]

    def commit(self, end: int) -> None:
        self.length = end
