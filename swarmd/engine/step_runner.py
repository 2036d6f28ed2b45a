"""The engine's worker thread: one batched forward of queued steps, validated, run and sampled.

Everything here runs on the engine's single worker thread (never on the event loop). A step that cannot
run fails alone; the rest run as one forward: decode rows replay a CUDA graph where one was captured for
that batch size (``decode_graph``), prefill chunks run eagerly; the last span samples the whole batch at
once on the device.
"""

from __future__ import annotations

import collections
import logging
import statistics
import time
from typing import Any

import torch

from ..config import EngineConfig
from ..errors import InvalidRequest, SwarmdError
from ..types import TopLogits
from .batch_items import Session, Step
from .kv_cache import PAGE_TOKENS, KVPool
from .sampling import sample_batch
from .stage import StageModel, check_rows
from .step_plan import Row
from .wire_tensors import IMPLAUSIBLE, MAX_HIDDEN_ABS, NOT_FINITE, blob_to_tensor, tensor_to_blob

log = logging.getLogger(__name__)

# Logits a last stage reports per checked step (its entry compares the chosen token against them).
REPORT_TOP = 16
HOST_CHECK_TOKENS = 16  # hidden states of at most this many tokens are checked on the host


class StepRunner:
    """The KV pool, the decode graphs and the batched forward of one span."""

    def __init__(self, stage: StageModel, cfg: EngineConfig, pages: int) -> None:
        self.stage = stage
        self.cfg = cfg
        self.pages = pages
        self._pool: KVPool | None = None
        self._graphs: Any = None  # decode_graph.DecodeGraphs once prepare() built them
        self.graph_steps = 0  # batched forwards whose decode rows replayed a graph
        self._graph_ms: dict[int, collections.deque[float]] = {}  # bucket -> recent replay times, results back

    @property
    def pool(self) -> KVPool | None:
        return self._pool

    def release(self, sess: Session) -> None:
        if sess.cache is not None:
            sess.cache.pool.release(sess.cache)
            sess.cache = None

    def prepare(self, static_decode: bool | None = None) -> None:
        """Blocking (run off the loop, before the span serves): allocate the KV pool and, on a GPU, capture
        the decode graphs. ``static_decode`` forces the static decode path on or off (tests run it on a CPU,
        where nothing is captured); None: on for a single-device CUDA span unless ``cuda_graphs`` is off."""
        stage = self.stage
        on_cuda = stage.device.type == "cuda"
        if static_decode is None:
            static_decode = on_cuda and self.cfg.cuda_graphs
        if not static_decode or self._pool is not None:
            return
        from .decode_graph import build_graphs, unsupported_reason

        reason = unsupported_reason(stage)
        if reason is not None:
            log.info("decode graphs off for %s: %s", stage.span, reason)
            return
        self._pool = stage.new_pool(self.pages + 1)  # one page more: the graphs' scratch page
        limit = max(1, min(self.cfg.graph_max_batch, self.pages))
        self._graphs = build_graphs(stage, self._pool, limit, capture=on_cuda)

    @property
    def graph_info(self) -> dict[str, object] | None:
        g = self._graphs
        if g is None:
            return None
        return {"batch_sizes": list(g.buckets), "captured": len(g.graphs), "capture_s": round(g.capture_s, 3),
                "memory_bytes": g.graph_bytes, "steps": self.graph_steps,
                # the engine's bare step time per bucket (inputs in, graph replayed, results on the host)
                "step_ms": {b: round(statistics.median(list(t)), 3)
                            for b, t in sorted(list(self._graph_ms.items())) if t}}

    def run_batch(self, batch: list[Step]) -> list[Any]:
        """Worker thread: validate each step (a bad one fails alone), run the rest as one forward."""
        stage = self.stage
        results: list[Any] = [None] * len(batch)
        rows: list[Row] = []
        live: list[int] = []
        for i, step in enumerate(batch):
            try:
                rows.append(self._row(step))
                live.append(i)
            except SwarmdError as exc:
                results[i] = exc
        if rows and stage.embed is None:
            rows, live = self._finite_rows(rows, live, results)
        if not rows:
            return results
        outs, by_row = self._forward(rows)
        greedy_ids = None if by_row is None else {live[k]: tok for k, tok in by_row.items()}
        if self.cfg.corrupt_output:  # tests only: a member that computes wrong answers
            outs = [None if out is None else -out for out in outs]
            greedy_ids = None
        if stage.lm_head is None:
            hidden = [out[0] for out in outs if out is not None]
            if any(h.device.type != "cpu" for h in hidden):  # graph rows are on the host already
                hidden = [h.to(stage.device) for h in hidden]
            host = torch.cat(hidden).to("cpu") if len(hidden) > 1 else hidden[0].to("cpu")  # one copy off the GPU
            at = 0
            for i, row in zip(live, rows, strict=True):
                results[i] = tensor_to_blob(host[at: at + row.n].unsqueeze(0))
                at += row.n
            return results
        sampled = [(i, out) for i, out in zip(live, outs, strict=True) if out is not None]
        greedy = [(i, out) for i, out in sampled if batch[i].sampling[0].greedy]  # type: ignore[index]
        if greedy and greedy_ids is not None and all(i in greedy_ids for i, _ in greedy):
            for i, _ in greedy:
                results[i] = greedy_ids[i]
        elif greedy:
            tokens = torch.stack([out for _, out in greedy]).argmax(-1).tolist()
            for (i, _), tok in zip(greedy, tokens, strict=True):
                results[i] = int(tok)
        drawn = [(i, out) for i, out in sampled if results[i] is None]
        if drawn:  # the whole batch's draws at once on the device, one copy of the ids back
            tokens = sample_batch(torch.stack([out for _, out in drawn]), [batch[i].sampling for i, _ in drawn])  # type: ignore[misc]
            for (i, _), tok in zip(drawn, tokens, strict=True):
                results[i] = tok
        for i, out in sampled:
            if batch[i].report:
                top = torch.topk(out, min(REPORT_TOP, int(out.shape[-1])))
                results[i] = TopLogits(int(results[i]), tuple(int(t) for t in top.indices.tolist()),
                                       tuple(float(v) for v in top.values.tolist()))
        return results

    def _forward(self, rows: list[Row]) -> tuple[list[Any], dict[int, int] | None]:
        """The batch's forward: decode rows replay a graph where one fits, the rest run eagerly. Returns the
        per-row outputs (as ``StageModel.forward_batch``) and, from a graph on the last span, the greedy
        token of each decode row that asked for logits (None where no graph ran)."""
        graphs = self._graphs
        decode = [j for j, r in enumerate(rows) if r.n == 1]
        if graphs is None or not decode or not graphs.fits([rows[j] for j in decode]):
            return self.stage.forward_batch(rows), None
        check_rows(rows)
        started = time.perf_counter()
        out, ids = graphs.run([rows[j] for j in decode])
        self._graph_ms.setdefault(graphs.bucket(len(decode)), collections.deque(maxlen=256)).append(
            1000 * (time.perf_counter() - started))
        self.graph_steps += 1
        outs: list[Any] = [None] * len(rows)
        greedy: dict[int, int] = {}
        picked = ids.tolist() if ids is not None else []  # one small copy off the device
        for k, j in enumerate(decode):
            if ids is None:
                outs[j] = out[k: k + 1].unsqueeze(0)  # [1, 1, D]
            elif rows[j].logits:
                outs[j] = out[k]
                greedy[j] = int(picked[k])
        rest = [j for j, r in enumerate(rows) if r.n != 1]
        if rest:
            for j, o in zip(rest, self.stage.forward_batch([rows[j] for j in rest]), strict=True):
                outs[j] = o
        return outs, greedy

    def _finite_rows(self, rows: list[Row], live: list[int], results: list[Any]) -> tuple[list[Row], list[int]]:
        """Move the batch's hidden states to the device in one copy and drop rows holding NaN, Inf or
        values beyond ``MAX_HIDDEN_ABS`` (NaN fails the comparison too: one pass, one sync)."""
        host = torch.cat([r.x for r in rows]) if len(rows) > 1 else rows[0].x
        flat = host.to(self.stage.device)
        # A few decode rows are checked where they are (on the host): no device round trip before the forward.
        sane = (host if host.shape[0] <= HOST_CHECK_TOKENS else flat).abs() <= MAX_HIDDEN_ABS
        bad = set((~sane.all(dim=-1)).nonzero().flatten().tolist())  # token indices
        kept_rows, kept = [], []
        at = 0
        for i, row in zip(live, rows, strict=True):
            if bad.intersection(range(at, at + row.n)):
                nonfinite = not bool(torch.isfinite(flat[at: at + row.n]).all())
                results[i] = InvalidRequest(NOT_FINITE if nonfinite else IMPLAUSIBLE)
            else:
                kept_rows.append(Row(flat[at: at + row.n], row.start_pos, row.cache, row.logits))
                kept.append(i)
            at += row.n
        return kept_rows, kept

    def _row(self, step: Step) -> Row:
        stage = self.stage
        sess = step.session
        if sess.closed:
            raise InvalidRequest(f"session {step.session_id} closed")
        if sess.cache is None:
            if self._pool is None:
                self._pool = stage.new_pool(self.pages)
            sess.cache = self._pool.allocate(sess.pages * PAGE_TOKENS)
        if stage.embed is not None:
            if step.hidden is not None or not step.tokens:
                raise InvalidRequest("the first stage takes token ids, not hidden states")
            if any(not 0 <= t < stage.vocab_size for t in step.tokens):
                raise InvalidRequest("token id outside the vocabulary")
            x = torch.tensor(list(step.tokens), dtype=torch.long)
        else:
            if step.hidden is None or step.tokens:
                raise InvalidRequest(f"stage {stage.span} takes hidden states, not token ids")
            x = blob_to_tensor(step.hidden, stage.hidden_size, check_finite=False)[0]
        sess.cache.check_step(step.start_pos, int(x.shape[0]))
        ids = tuple(step.tokens) if stage.embed is not None else None
        return Row(x, step.start_pos, sess.cache, logits=step.sampling is not None, ids=ids)
