"""The index tensors of one batched forward: which pool slot each token writes, which pages each row reads.

Rows are steps of different sessions (a decode token, or a prefill chunk). All tokens of a step run
flat through the projections and MLPs; attention is grouped: every single-token row at once (their
keys gathered into one padded batch with a per-row length mask), and each longer row on its own
(a prefill chunk is big enough to fill the device by itself). Built from Python ints, then moved to
the device in a handful of copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .kv_cache import KVCache


@dataclass
class Row:
    x: torch.Tensor  # [S] token ids (first span) or [S, D] hidden states
    start_pos: int
    cache: KVCache
    logits: bool = True  # last span: compute logits of the row's last position
    # The token ids as Python ints too (first span): reading them back out of ``x`` one by one costs a GIL
    # release and re-acquisition each, which waits behind the event loop (decode_graph.DecodeGraphs.run).
    ids: tuple[int, ...] | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Chunk:
    """A row attended on its own: ``n`` queries at flat offset ``offset`` over ``kv_len`` keys."""

    offset: int
    n: int
    start_pos: int
    kv_len: int
    page_index: torch.Tensor  # [pages read]


@dataclass
class StepPlan:
    order: list[int]  # row indices in flat order: decode rows first, then chunks
    offsets: list[int]  # flat offset of each row (in the caller's row order)
    tokens: int
    positions: torch.Tensor  # [1, T]
    slots: torch.Tensor  # [T] flat pool slot of each token
    decode: int  # number of single-token rows at the front
    decode_index: torch.Tensor | None  # [Bd, P] pages read by each decode row (padded)
    decode_lens: list[int]  # keys of each decode row, after this step's write
    chunks: list[Chunk]
    _decode_masks: dict[int | None, torch.Tensor | None] = field(default_factory=dict)
    _len_tensor: torch.Tensor | None = None

    def lens_tensor(self, device: torch.device) -> torch.Tensor:
        """``[Bd]`` keys of each decode row, on the device (made once per step)."""
        if self._len_tensor is None:
            self._len_tensor = torch.tensor(self.decode_lens, device=device).view(-1, 1)
        return self._len_tensor.view(-1)

    def decode_mask(self, window: int | None, keys: int, device: torch.device) -> torch.Tensor | None:
        """Boolean ``[Bd, 1, 1, keys]`` (True = attend) for the padded decode batch, per attention window."""
        if window in self._decode_masks:
            return self._decode_masks[window]
        if self.decode == 1 and window is None:
            mask = None
        else:
            lens = self.lens_tensor(device).view(-1, 1)
            k_pos = torch.arange(keys, device=device).view(1, -1)
            allowed = k_pos < lens
            if window is not None:
                allowed &= k_pos >= lens - window
            mask = allowed.view(self.decode, 1, 1, keys)
        self._decode_masks[window] = mask
        return mask


def plan_step(rows: list[Row], device: torch.device) -> StepPlan:
    decode = [i for i, r in enumerate(rows) if r.n == 1]
    chunked = [i for i, r in enumerate(rows) if r.n != 1]
    order = decode + chunked
    offsets = [0] * len(rows)
    positions: list[int] = []
    slots: list[int] = []
    for i in order:
        r = rows[i]
        offsets[i] = len(positions)
        positions.extend(range(r.start_pos, r.start_pos + r.n))
        slots.extend(r.cache.slots(r.start_pos, r.n))
    decode_index = None
    decode_lens = [rows[i].start_pos + 1 for i in decode]
    if decode:
        page_tokens = rows[decode[0]].cache.pool.page_tokens
        width = max(-(-kv // page_tokens) for kv in decode_lens)
        table = []
        for i, kv in zip(decode, decode_lens, strict=True):
            pages = rows[i].cache.pages[: -(-kv // page_tokens)]
            table.append(pages + [pages[0]] * (width - len(pages)))  # padding: masked off
        decode_index = torch.tensor(table, dtype=torch.long).to(device, non_blocking=True)
    chunks = []
    for i in chunked:
        r = rows[i]
        kv_len = r.start_pos + r.n
        need = -(-kv_len // r.cache.pool.page_tokens)
        chunks.append(Chunk(offsets[i], r.n, r.start_pos, kv_len, r.cache.index[:need]))
    pos = torch.tensor(positions, dtype=torch.long).to(device, non_blocking=True).view(1, -1)
    slot = torch.tensor(slots, dtype=torch.long).to(device, non_blocking=True)
    return StepPlan(order, offsets, len(positions), pos, slot, len(decode), decode_index, decode_lens, chunks)
