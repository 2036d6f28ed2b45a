#!/usr/bin/env python3
"""One GPU, one run: swarmd's engine vs transformers ``generate`` vs the memory-bandwidth limit.

Rows, every one measured in the same run on cuda:0 (the same random-weight model shape, bf16):
  * limit              the bandwidth floor of one decode step: bytes of the model's weights in bf16 (from its
                       parameter count) / the device-to-device copy rate (a 4 GiB tensor copy timed with CUDA
                       events, median of 20 reps, bytes read + bytes written);
  * generate           transformers eager ``generate`` (dynamic cache);
  * generate_compiled  ``generate`` with a static cache and torch.compile, as transformers 5.x documents it:
                       with a static cache ``generate`` compiles the decode step with
                       ``generation_config.compile_config`` (here ``CompileConfig(fullgraph=True,
                       mode="reduce-overhead")``: CUDA graphs). Run the way that is fastest for a user: one fresh
                       process per batch size (one shape to compile, nothing recompiled or re-recorded for other
                       shapes), a ``StaticCache`` sized to the runs (128 + tokens, rounded up to 64: a static cache
                       attends over all of its slots every step, so one sized for the 2048-token TTFT prompt made
                       batch 64 slower than eager) made once and ``reset()`` before each call (its addresses stay:
                       the CUDA graphs recorded at warm-up replay; a new cache per call re-records them). If that
                       fails: generate's own ``cache_implementation="static"``, then ``fullgraph=False`` (noted as
                       the fallback). ``--compile-style forward`` instead wraps ``model.forward`` in
                       ``torch.compile`` (the older recipe; prefill compiled too);
  * ring1              one swarmd daemon holding every layer on cuda:0;
  * ring2_one_gpu      two daemons splitting the layers (0:16 and 16:32 for 32 layers), both on cuda:0.

Each row: decode ms/token at one session (the median of 3 runs, spread in ``decode_ms_runs``; ring: the median
gap between streamed tokens; generate: (a 64-token run - a 4-token run) / 60, the steady per-token cost, with
``decode_mean_ms`` = (64-token run - TTFT) / 64 beside it), time to first token for a 128- and a 2048-token
prompt, tokens/s of 1, 16 and 64 concurrent sessions (128-token prompts, 64 greedy tokens; ``generate``: one
batch of that size, the median of 3 runs, each shape run twice before; every run's time is in the child's log
and the tok/s run times in the notes, so a recompile shows as an outlier). Ring rows add decode p99,
batched-vs-alone agreement of greedy outputs and the daemons' own status counters. ``generate`` rows run in
child processes (eager: one, compiled: one per batch size; their GPU memory is freed for the daemons; a child
that hangs is killed after ``--row-timeout`` and the cells it did measure are kept). OUT.json and OUT.md are
written after every row; rows of an earlier OUT.json of the same model, GPU and token count that this run does
not measure are kept (``--fresh`` drops them). The run ends with a compact table on stdout.

    python scripts/bench_gpu.py [--rows limit,generate,generate_compiled,ring1,ring2_one_gpu] [--out bench/gpu_engine]
    SWARMD_BENCH_DEVICE=cpu python scripts/bench_gpu.py --smoke     # random:tiny-llama: checks this script
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
PROMPTS = (128, 2048)
CONCURRENCY = (1, 16, 64)
ROWS = ("generate", "generate_compiled", "ring1", "ring2_one_gpu")
DECODE_RUNS = 3


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def bench_device() -> str:
    """cuda:0, or SWARMD_BENCH_DEVICE (``cpu``: a smoke test of this script)."""
    return os.environ.get("SWARMD_BENCH_DEVICE") or "cuda:0"


def hf_config(model: str) -> Any:
    """The transformers config of a ``random:PRESET`` or ``random:path/config.json`` model."""
    from transformers import AutoConfig

    from swarmd.engine.sources import resolve_source

    src = resolve_source(model)
    if src.kind != "random" or src.random_config is None:
        raise SystemExit(f"bench_gpu.py measures random:CONFIG models, not {model!r}")
    spec = dict(src.random_config)
    return AutoConfig.for_model(str(spec.pop("model_type")), **spec)


def param_count(cfg: Any) -> int:
    """Parameters of the whole model (shared tensors once), built on the meta device: no memory, no init."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return sum(p.numel() for p in model.parameters())


def copy_rate(device: str, gib: float, reps: int) -> dict[str, float]:
    """Device-to-device copy rate in bytes/s, counting bytes read + bytes written (median of ``reps``)."""
    import torch

    nbytes = int(gib * 2**30)
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cuda = device.startswith("cuda")
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    t = statistics.median(times)
    return {"bytes_per_s": 2 * nbytes / t, "copy_bytes": nbytes, "reps": reps, "median_s": t,
            "min_s": min(times), "max_s": max(times)}


# --- transformers generate (run in child processes: --child ROW --child-batches B,...) -----------------------

BATCH_PROMPT = 128  # prompt length of the decode runs and of the tokens/s batches
CELL_PREFIXES = ("decode_", "ttft_", "tps_")  # keys of measured cells; a part's other keys describe how


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def measure_generate(model_name: str, device: str, tokens: int, prompts: tuple[int, ...] = PROMPTS,
                     concurrency: tuple[int, ...] = CONCURRENCY, compiled: bool = False,
                     compile_style: str = "auto", batches: tuple[int, ...] | None = None,
                     save: Callable[[dict[str, object]], None] | None = None) -> dict[str, object]:
    """Eager or compiled ``generate``, in this process, for the batch sizes ``batches`` (default: 1 and every
    concurrency). Batch 1: decode ms/token after a 128-token prompt (steady and mean, median of 3 runs) and TTFT
    per prompt length (``max_new_tokens=1``, best of 3); every batch size of ``concurrency`` in ``batches``:
    tokens/s of one batch (median of 3 runs). Every timed shape runs twice first (compiled: the 1st run compiles
    and records the CUDA graphs, the 2nd shows they replay); every run's time is printed. Compiled: the static
    cache is sized to the runs (``round_up(128 + tokens, 64)``; a longer TTFT prompt gets its own), made once and
    ``reset()`` between calls, so its addresses stay and the recorded CUDA graphs replay. A cell that fails holds
    its error string; ``save`` gets the cells after each one."""
    import inspect

    import torch
    import transformers
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    batches = tuple(sorted(set(concurrency) | {1})) if batches is None else tuple(sorted(set(batches)))
    cfg = hf_config(model_name)
    cuda = device.startswith("cuda")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    vocab = int(cfg.vocab_size)
    out: dict[str, object] = {"torch": torch.__version__, "transformers": transformers.__version__,
                              "attn_implementation": getattr(model.config, "_attn_implementation", None),
                              "batches": list(batches)}

    def put(key: str, value: object) -> None:
        out[key] = value
        print(f"  {key} = {value}", flush=True)
        if save is not None:
            save(out)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def ids(b: int, n: int) -> torch.Tensor:
        g = torch.Generator(device).manual_seed(1000 * n + b)
        return torch.randint(0, vocab, (b, n), device=device, generator=g)

    def err(exc: BaseException) -> str:
        return f"error: {type(exc).__name__}: {str(exc)[:600]}"

    # The cache of every decode and tokens/s call: 128 prompt tokens + up to tokens + 1 new ones. Sized to the runs,
    # not to the longest TTFT prompt: a static cache attends over all max_cache_len positions every step (masked;
    # with a mask SDPA also repeats the GQA K/V heads), so a 2,120-slot cache made batch 64 slower than eager.
    cache_len = round_up(BATCH_PROMPT + tokens, 64)
    # transformers >= 5.2x names the generate/forward argument ``cache`` (``past_key_values`` is deprecated)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    caches: dict[tuple[int, int], Any] = {}
    state: dict[str, Any] = {"explicit": False}  # compiled: our own StaticCache per shape (else generate's)

    def cache_args(b: int, need: int) -> dict[str, Any]:
        if not state["explicit"]:
            return {}
        length = cache_len if need <= cache_len else round_up(need, 64)
        cache = caches.get((b, length))
        if cache is None:
            from transformers import StaticCache

            cache = caches[(b, length)] = StaticCache(config=model.config, max_cache_len=length)
            # allocated (and marked as static addresses) now, not lazily in the first prefill: a compiled prefill
            # (--compile-style forward) would allocate them inside the graph, unmarked, and compile twice
            text = model.config.get_text_config(decoder=True)
            heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            try:
                cache.early_initialization(batch_size=b, num_heads=heads, head_dim=head_dim, dtype=model.dtype,
                                           device=model.device)
            except (AttributeError, TypeError, ValueError) as exc:  # left to the first prefill (lazy)
                print(f"  StaticCache.early_initialization failed ({exc}); the first prefill allocates it", flush=True)
        else:
            cache.reset()  # zeroes keys, values and lengths in place: the tensors (and their addresses) stay
        return {cache_kw: cache}

    def gen(b: int, n: int, new: int) -> float:
        x = ids(b, n)
        sync()
        t = time.perf_counter()
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0, **cache_args(b, n + new - 1))  # the reset is timed: a user's per-call cost
        sync()
        return time.perf_counter() - t

    def graphs() -> int:
        return int(counters["stats"]["unique_graphs"])

    original_forward = model.forward

    def setup_compile(explicit: bool, fullgraph: bool) -> str:
        from transformers import CompileConfig

        gc = model.generation_config
        torch._dynamo.reset()
        caches.clear()
        if hasattr(model, "_compiled_call"):
            del model._compiled_call
        model.forward = original_forward
        state["explicit"] = explicit
        # explicit: generate takes the cache it is given (cache_implementation must then be unset)
        gc.cache_implementation = None if explicit else "static"
        gc.max_cache_len = None if explicit else cache_len
        mode = "reduce-overhead" if cuda else "default"  # CUDA graphs; on CPU (smoke) plain inductor
        how = (f"StaticCache(max_cache_len={cache_len}) made once per batch size, passed as {cache_kw}=, reset() "
               "before each call" if explicit else
               f"cache_implementation='static', max_cache_len={cache_len} (generate makes a new cache every call)")
        if compile_style == "forward":
            model.forward = torch.compile(original_forward, mode=mode, fullgraph=fullgraph, dynamic=False)
            gc.disable_compile = True  # generate must not wrap the compiled forward a second time
            return (f"{how}; model.forward = torch.compile(model.forward, mode={mode!r}, fullgraph={fullgraph}, "
                    "dynamic=False) (prefill compiled too)")
        gc.disable_compile = False
        cc = CompileConfig(fullgraph=fullgraph, mode=mode)
        if not cuda:
            cc._compile_all_devices = True  # type: ignore[assignment]  # compile on CPU too
        gc.compile_config = cc
        return (f"{how}; compile_config=CompileConfig(fullgraph={fullgraph}, mode={mode!r}) (generate compiles the "
                "decode step; prefill eager)")

    k = min(4, tokens // 2)  # decode steps of the short run: its per-call costs are those of the long run
    one = 1 in batches  # this process measures decode ms/token and TTFT
    ttft_short = sorted(n for n in set(prompts) | {BATCH_PROMPT} if n <= cache_len) if one else []
    ttft_long = sorted(n for n in set(prompts) if n > cache_len) if one else []  # timed last (see below)
    shapes = list(dict.fromkeys(
        ([(1, BATCH_PROMPT, 1 + k), (1, BATCH_PROMPT, 1 + tokens)] if one else [])
        + [(b, BATCH_PROMPT, tokens) for b in batches if b in concurrency] + [(1, n, 1) for n in ttft_short]))
    warmup: dict[str, list[float]] = {}

    def warm(b: int, n: int, new: int) -> None:
        warmup[f"b{b}_p{n}_new{new}"] = times = [round(gen(b, n, new), 3) for _ in range(2)]
        print(f"  warm-up b{b} p{n} new{new}: {times} s", flush=True)

    broken: str | None = None  # why nothing here is measured
    t0 = time.perf_counter()
    if compiled:
        # what a user does next when a configuration fails: generate's own static cache, then fullgraph=False
        attempts = [(True, True), (False, True), (False, False)]
        failed: list[str] = []
        for i, (explicit, fullgraph) in enumerate(attempts):
            out["config"] = setup_compile(explicit, fullgraph)
            warmup.clear()
            g0 = graphs()
            try:
                for shape in shapes:
                    warm(*shape)
                if graphs() == g0:
                    raise RuntimeError("generate did not compile anything at warm-up (auto-compile criteria not met)")
                break
            except Exception as exc:  # noqa: BLE001 - the next configuration is tried; the error is reported
                traceback.print_exc()
                failed.append(f"{'own StaticCache' if explicit else 'generate static cache'}, fullgraph={fullgraph} "
                              f"failed: {err(exc)[:300]}")
                if i == len(attempts) - 1:
                    broken = err(exc)
        if failed:
            put("fallback", "; ".join(failed) + ("" if broken else f"; used: {out['config']}"))
        put("graphs_compiled_at_warmup", graphs())
        put("compile_total_s", round(time.perf_counter() - t0, 2))
    else:
        try:
            for shape in shapes:
                warm(*shape)
        except Exception as exc:  # noqa: BLE001
            broken = err(exc)
    put("warmup_s", warmup)
    put("warmup_total_s", round(time.perf_counter() - t0, 2))
    late: list[str] = []  # timed runs that compiled something (a recompile: that run is an outlier)

    def timed(b: int, n: int, new: int) -> float:
        g = graphs()
        t = gen(b, n, new)
        mark = ""
        if compiled and graphs() != g:
            late.append(f"b{b}_p{n}_new{new}")
            mark = f"  <- compiled {graphs() - g} graph(s) in this timed run"
        print(f"  run b{b} p{n} new{new}: {1000 * t:.1f} ms{mark}", flush=True)
        return t

    runs: list[tuple[float, float]] = []
    decode_err: list[str] = []

    def decode_run() -> None:
        if broken or decode_err:
            return
        try:
            runs.append((timed(1, BATCH_PROMPT, 1 + k), timed(1, BATCH_PROMPT, 1 + tokens)))
        except Exception as exc:  # noqa: BLE001
            decode_err.append(err(exc))

    def ttft(n: int, warm_first: bool = False) -> None:
        try:
            if broken:
                raise RuntimeError(broken)
            if warm_first:
                warm(1, n, 1)
            put(f"ttft_{n}_ms", 1000 * min(timed(1, n, 1) for _ in range(3)))
        except Exception as exc:  # noqa: BLE001
            put(f"ttft_{n}_ms", broken or err(exc))

    def tps(b: int) -> None:
        try:
            if broken:
                raise RuntimeError(broken)
            times = [timed(b, BATCH_PROMPT, tokens) for _ in range(DECODE_RUNS)]
            out[f"tps_{b}_runs_s"] = [round(t, 4) for t in times]
            put(f"tps_{b}", b * tokens / statistics.median(times))
        except Exception as exc:  # noqa: BLE001
            put(f"tps_{b}", broken or err(exc))

    if one:
        decode_run()
        for n in ttft_short:
            ttft(n)
        decode_run()
        if 1 in concurrency:
            tps(1)
        decode_run()
        # A prompt longer than cache_len last: in the fallback (generate's cache) generate keeps the longest cache
        # it ever made (model._previous_max_cache_length) and every later call would use one that long.
        for n in ttft_long:
            ttft(n, warm_first=True)
    for b in batches:
        if b != 1 and b in concurrency:
            tps(b)
    if one:
        ttft128 = out.get(f"ttft_{BATCH_PROMPT}_ms")
        if runs and isinstance(ttft128, float):
            # decode_ms: the steady per-token cost, (long run - short run) / the steps between them, comparable to
            # the ring rows' median gap between streamed tokens; decode_mean_ms: (long run - TTFT) / tokens, which
            # also spreads per-call costs over the tokens.
            per = [1000 * (w - s) / (tokens - k) for s, w in runs]
            out["decode_ms_runs"] = per
            out["decode_mean_ms"] = statistics.median(1000 * (w - ttft128 / 1000) / tokens for _, w in runs)
            put("decode_ms", statistics.median(per))
        else:
            put("decode_ms", broken or (decode_err or ["error: no decode run"])[0])
    if compiled:
        put("compiled_in_timed_runs", late)
        put("cudagraph_skips", int(counters["inductor"]["cudagraph_skips"]))
    return out


def reference(preset: str, tokens: int) -> dict[str, object]:
    """Eager ``generate`` on cuda:0, in this process (scripts/bench_tp.py); its GPU memory freed after."""
    import gc

    import torch

    out = measure_generate(f"random:{preset}", "cuda:0", tokens)
    gc.collect()
    torch.cuda.empty_cache()
    return out


def generate_groups(row: str, concurrency: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The batch sizes of each child process of a generate row: eager all in one; compiled one fresh process per
    batch size (its own compiled graph for that one shape, its own CUDA graph pool, nothing left from the others)."""
    sizes = sorted(set(concurrency) | {1})
    return [(b,) for b in sizes] if row == "generate_compiled" else [tuple(sizes)]


def group_keys(prompts: tuple[int, ...], concurrency: tuple[int, ...], group: tuple[int, ...]) -> list[str]:
    """The cells one child process measures."""
    keys = ["decode_ms", *(f"ttft_{n}_ms" for n in prompts)] if 1 in group else []
    return keys + [f"tps_{b}" for b in group if b in concurrency]


def generate_child(args: argparse.Namespace, row: str, group: tuple[int, ...], stem: Path) -> dict[str, object]:
    """Run one child process of a ``generate`` row; keep what it measured if it fails or runs out of time."""
    part, log = stem.with_suffix(".json"), stem.with_suffix(".log")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", row, "--child-out", str(part),
           "--child-batches", ",".join(map(str, group)),
           "--model", args.model, "--tokens", str(args.tokens), "--prompts", ",".join(map(str, args.prompts)),
           "--concurrency", ",".join(map(str, args.concurrency)), "--compile-style", args.compile_style]
    t = time.perf_counter()
    why = None
    with open(log, "wb") as f:
        # its own process group: a timeout ends the child and its compile workers, nothing else
        child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            rc = child.wait(args.row_timeout)
            if rc != 0:
                why = f"error: child exited with status {rc}"
        except subprocess.TimeoutExpired:
            why = f"error: timed out after {args.row_timeout:.0f}s (--row-timeout)"
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    out: dict[str, object] = json.loads(part.read_text()) if part.is_file() else {}
    out["wall_s"] = round(time.perf_counter() - t, 1)
    out["log"] = str(log)
    if why is not None:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"{row} {group}: {why}; last lines of its log:\n  " + "\n  ".join(tail), flush=True)
        for key in group_keys(args.prompts, args.concurrency, group):
            out.setdefault(key, why)
        out["error"] = why + "\n" + "\n".join(tail[-8:])
    return out


def generate_row(args: argparse.Namespace, row: str, logdir: Path) -> dict[str, object]:
    """A ``generate`` row from its child processes: the cells of each at the top, the rest of each (config,
    fallback, warm-up and compile times, per-run times, errors) under ``parts``."""
    out: dict[str, object] = {}
    parts: dict[str, dict[str, object]] = {}
    spent = 0.0
    for group in generate_groups(row, args.concurrency):
        name = "b" + ",".join(map(str, group))
        print(f"  {row} {name} ... (log: {logdir / f'{row}_{name}.log'})", flush=True)
        if row == "generate_compiled" and spent > args.compile_budget:
            why = f"error: compile budget of {args.compile_budget:.0f}s spent before batch {name}"
            part: dict[str, object] = {k: why for k in group_keys(args.prompts, args.concurrency, group)}
            part["error"] = why
        else:
            part = generate_child(args, row, group, logdir / f"{row}_{name}")
        c = part.get("compile_total_s")
        spent += float(c) if isinstance(c, int | float) else 0.0
        out.update({k: v for k, v in part.items() if k.startswith(CELL_PREFIXES)})
        parts[name] = {k: v for k, v in part.items() if not k.startswith(CELL_PREFIXES)}
        for key in ("torch", "transformers", "attn_implementation", "config"):
            if key in part:
                out.setdefault(key, part[key])
    out["parts"] = parts
    if row == "generate_compiled":
        out["compile_total_s"] = round(spent, 2)
    errors = [f"{name}: {str(p['error']).splitlines()[0]}" for name, p in parts.items() if "error" in p]
    if errors:
        out["error"] = "; ".join(errors)
    return out


# --- the ring, over HTTP on Unix sockets -------------------------------------------------------


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 600) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def request(sock: str, method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:  # type: ignore[type-arg]
    c = UnixHTTP(sock)
    try:
        c.request(method, url, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def stream_times(sock: str, prompt: list[int], n: int) -> list[float]:
    """Monotonic arrival time of each streamed token chunk, the request's start first."""
    c = UnixHTTP(sock)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                           "stream": True}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    stamps = [t0]
    for raw in r:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            stamps.extend(time.perf_counter() for _ in chunk["choices"])
    c.close()
    return stamps


def start_ring(root: Path, model: str, gpus: int, layers: int, threads: int = 0,
               devices: list[str] | None = None, kv: str | None = None) -> list[subprocess.Popen[bytes]]:
    """``gpus`` daemons splitting ``layers`` evenly; daemon i on ``devices[i]`` (default: cuda:i, or every one
    on SWARMD_BENCH_DEVICE when set), each with a KV budget of ``kv`` (default SWARMD_BENCH_KV or 16GiB)."""
    from swarmd.keys import generate_key

    key = root / "swarm.key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    ports = []
    for _ in range(gpus):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cuts = [round(i * layers / gpus) for i in range(gpus + 1)]
    if devices is None:
        devices = [os.environ.get("SWARMD_BENCH_DEVICE") or f"cuda:{i}" for i in range(gpus)]
    kv = kv or os.environ.get("SWARMD_BENCH_KV", "16GiB")
    procs = []
    for i in range(gpus):
        peers = [x for j, p in enumerate(ports) if j != i for x in ("--peer", f"127.0.0.1:{p}")]
        args = [sys.executable, "-m", "swarmd.cli.swarmd_main", "--model", model, "--device", devices[i],
                "--layers", f"{cuts[i]}:{cuts[i + 1]}", "--listen", f"127.0.0.1:{ports[i]}", "--node-id", f"gpu{i}",
                "--socket", str(root / f"n{i}.sock"), "--key-file", str(key), "--no-mdns", "--gossip", "local",
                "--seconds-per-layer", "0.0005", "--kv-budget", kv, "--threads", str(threads), *peers]
        procs.append(subprocess.Popen(args, stdout=open(root / f"n{i}.log", "wb"), stderr=subprocess.STDOUT,
                                      cwd=REPO))
    deadline = time.monotonic() + 300
    while True:
        try:
            if request(str(root / "n0.sock"), "GET", "/health")[0] == 200:
                return procs
        except OSError:
            pass
        for i, p in enumerate(procs):
            if p.poll() is not None:
                stop_all(procs, grace_s=10)
                raise RuntimeError(f"daemon {i} exited:\n{(root / f'n{i}.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            stop_all(procs, grace_s=10)
            raise RuntimeError("ring did not become ready:\n" + (root / "n0.log").read_text()[-3000:])
        time.sleep(0.5)


def stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = 60) -> None:
    """SIGTERM every daemon (they drain), then SIGKILL whatever is still up after ``grace_s``."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()


def concurrent_tps(sock: str, sessions: int, tokens: int, vocab: int, rng: Any) -> float:
    """Generated tokens per second of ``sessions`` greedy completions (128-token prompts) run at once."""
    done: list[int] = []
    errors: list[str] = []

    def one() -> None:
        prompt = [rng.randrange(vocab) for _ in range(128)]
        try:
            status, body = request(sock, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": tokens,
                                                                     "temperature": 0})
            assert status == 200, body[:300]
            done.append(int(json.loads(body)["usage"]["completion_tokens"]))
        except Exception as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=one) for _ in range(sessions)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise RuntimeError(f"{len(errors)}/{sessions} sessions failed: {errors[0]}")
    return sum(done) / (time.perf_counter() - t)


def decode_phase_tps(sock: str, sessions: int, tokens: int, vocab: int, rng: Any) -> dict[str, float]:
    """``sessions`` streaming greedy completions at once: tokens/s while every one of them is decoding (from
    the last session's first token to the first session's last), the figure to hold against the engine's
    bare graph step at that batch size; prefill and the ramp at either end are left out."""
    stamps: list[list[float]] = [[] for _ in range(sessions)]
    prompts = [[rng.randrange(vocab) for _ in range(128)] for _ in range(sessions)]
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            stamps[i] = stream_times(sock, prompts[i], tokens)[1:]
        except Exception as exc:  # noqa: BLE001 - raised below
            errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors or not all(stamps):
        raise RuntimeError(f"{len(errors)}/{sessions} streams failed: {errors[:1]}")
    start, end = max(s[0] for s in stamps), min(s[-1] for s in stamps)
    inside = sum(start < t <= end for s in stamps for t in s)
    return {"tps": inside / (end - start) if end > start else 0.0, "window_s": end - start, "tokens": inside}


def complete(sock: str, prompt: list[int], tokens: int) -> str:
    status, body = request(sock, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": tokens, "temperature": 0})
    assert status == 200, body[:300]
    return str(json.loads(body)["choices"][0]["text"])


def batch_agreement(sock: str, vocab: int, tokens: int, sessions: int = 16) -> dict[str, object]:
    """Greedy output of each session run alone vs the same sessions run at once (batched at every stage)."""
    import random

    rng = random.Random(1)
    prompts = [[rng.randrange(vocab) for _ in range(64)] for _ in range(sessions)]
    alone = [complete(sock, p, tokens) for p in prompts]
    again = [complete(sock, p, tokens) for p in prompts[:4]]  # control: is one session alone repeatable?
    together: list[str] = [""] * sessions

    def one(i: int) -> None:
        together[i] = complete(sock, prompts[i], tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    diverged = [None if a == b else next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                                          min(len(a), len(b)))
                for a, b in zip(alone, together, strict=True)]
    return {"batch_identical": sum(d is None for d in diverged), "batch_sessions": sessions,
            "alone_repeat_identical": sum(a == b for a, b in zip(alone, again, strict=False)),
            "batch_first_divergence_chars": [d for d in diverged if d is not None]}


STATUS_KEYS = ("node_id", "layers", "spans", "device", "seconds_per_layer", "memory_budget_bytes", "sessions",
               "kv_cache", "batching", "failover", "ring")


def daemon_status(sock: str) -> object:
    """The daemon's GET /v1/swarm/status: its engine counters and spans (the rest, e.g. peers, left out)."""
    try:
        code, body = request(sock, "GET", "/v1/swarm/status")
        doc = json.loads(body)
    except (OSError, ValueError) as exc:
        return f"error: {exc}"
    if code != 200 or not isinstance(doc, dict):
        return f"error: status {code}"
    return {k: v for k, v in doc.items() if k in STATUS_KEYS or "engine" in k}


def engine_step_ms(status: dict[str, object]) -> dict[str, float]:
    """The first daemon's median graph step per batch size, from its status document (ring of one: all of it)."""
    for doc in status.values():
        graphs = ((doc or {}).get("batching") or {}).get("decode_graphs") if isinstance(doc, dict) else None
        if isinstance(graphs, dict) and isinstance(graphs.get("step_ms"), dict):
            return {str(k): float(v) for k, v in graphs["step_ms"].items()}
    return {}


def ring(model: str, gpus: int, layers: int, vocab: int, tokens: int, threads: int = 0,
         devices: list[str] | None = None, prompts: tuple[int, ...] = PROMPTS,
         concurrency: tuple[int, ...] = CONCURRENCY, kv: str | None = None) -> dict[str, object]:
    import random

    rng = random.Random(0)
    root = Path(tempfile.mkdtemp(prefix="swb-", dir="/tmp"))
    out: dict[str, object] = {"devices": devices or [bench_device()] * gpus}
    t0 = time.perf_counter()
    procs = start_ring(root, model, gpus, layers, threads, devices, kv)
    out["startup_s"] = round(time.perf_counter() - t0, 1)
    sock = str(root / "n0.sock")
    runs: list[float] = []
    gaps_all: list[float] = []

    def decode_run() -> None:
        stamps = stream_times(sock, [rng.randrange(vocab) for _ in range(128)], tokens + 1)
        gaps = [1000 * (b - a) for a, b in zip(stamps[2:], stamps[3:], strict=False)]  # after the first token
        runs.append(statistics.median(gaps))
        gaps_all.extend(gaps)

    try:
        stream_times(sock, [rng.randrange(vocab) for _ in range(16)], 4)  # warm-up
        concurrent_tps(sock, max(concurrency), 4, vocab, rng)  # warm-up of the batched path
        decode_run()
        for n in prompts:
            out[f"ttft_{n}_ms"] = 1000 * min(
                (lambda s: s[1] - s[0])(stream_times(sock, [rng.randrange(vocab) for _ in range(n)], 1))
                for _ in range(3))
        decode_run()
        for b in concurrency:
            out[f"tps_{b}"] = concurrent_tps(sock, b, tokens, vocab, rng)
        decode_run()
        top = max(concurrency)
        phase = decode_phase_tps(sock, top, max(tokens, 128), vocab, rng)
        out[f"tps_{top}_decode"] = phase["tps"]
        out[f"tps_{top}_decode_window_s"] = phase["window_s"]
        out["decode_ms"] = statistics.median(runs)
        out["decode_ms_runs"] = runs
        out["decode_p99_ms"] = pct(gaps_all, 0.99)
        out.update(batch_agreement(sock, vocab, tokens))
        out["status"] = {f"gpu{i}": daemon_status(str(root / f"n{i}.sock")) for i in range(gpus)}
        steps = engine_step_ms(out["status"])
        if steps:  # the engine's bare graph step, measured inside the daemon during this row
            out["graph_step_ms"] = steps
            if str(top) in steps:
                out[f"graph_tps_{top}"] = 1000 * top / steps[str(top)]
    except Exception as exc:  # noqa: BLE001 - the cells measured so far are kept
        if runs and "decode_ms" not in out:
            out["decode_ms"], out["decode_ms_runs"] = statistics.median(runs), runs
        out["error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
        logs = "\n".join(f"--- n{i}.log\n" + (root / f"n{i}.log").read_text(errors="replace")[-1500:]
                         for i in range(gpus))
        print(f"ring of {gpus} failed: {out['error']}\n{logs}", flush=True)
    finally:
        stop_all(procs)
    return out


# --- output ----------------------------------------------------------------------------------------


def fnum(x: object, digits: int = 2) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "-" if x is None else "err"
    return f"{x:.{digits}f}"


def ratio(a: object, b: object) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b and not isinstance(a, bool):
        return float(a) / float(b)
    return None


def table(results: dict[str, Any], prompts: tuple[int, ...]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, cells and notes of the comparison table (one line per setup, the limit first)."""
    rows: dict[str, dict[str, object]] = results["rows"]
    gen, comp = rows.get("generate", {}), rows.get("generate_compiled", {})
    lim = results.get("limit_ms_per_token")
    short, long_ = prompts[0], prompts[-1]
    head = ["setup", "decode ms/token", "vs generate_compiled", "vs limit", f"TTFT {short} ms", "vs generate",
            f"TTFT {long_} ms", "vs generate", "tok/s @1", "tok/s @16", "tok/s @64", "@64 vs generate_compiled"]
    cells = [["limit (weights / copy rate)", fnum(lim), fnum(ratio(lim, comp.get("decode_ms"))),
              fnum(1.0 if lim else None), "-", "-", "-", "-", "-", "-", "-", "-"]]
    notes = []
    for name, r in rows.items():
        if "skipped" in r:
            notes.append(f"{name}: skipped ({r['skipped']})")
            continue
        d = r.get("decode_ms")
        dr = r.get("decode_ms_runs")
        dtext = fnum(d) + (f" ({min(dr):.2f}–{max(dr):.2f})" if isinstance(dr, list) and len(dr) > 1 else "")
        ts, tl = r.get(f"ttft_{short}_ms"), r.get(f"ttft_{long_}_ms")
        cells.append([name, dtext, fnum(ratio(d, comp.get("decode_ms"))), fnum(ratio(d, lim)),
                      fnum(ts, 1), fnum(ratio(ts, gen.get(f"ttft_{short}_ms"))),
                      fnum(tl, 1), fnum(ratio(tl, gen.get(f"ttft_{long_}_ms"))),
                      fnum(r.get("tps_1"), 1), fnum(r.get("tps_16"), 1), fnum(r.get("tps_64"), 1),
                      fnum(ratio(r.get("tps_64"), comp.get("tps_64")))])
        errs = sorted({str(v).splitlines()[0][:300] for k, v in r.items()
                       if isinstance(v, str) and v.startswith("error")} | ({str(r["error"]).splitlines()[0][:300]}
                                                                          if "error" in r else set()))
        for e in errs:
            notes.append(f"{name}: {e}")
        if "batch_sessions" in r:
            notes.append(f"{name}: decode p99 {fnum(r.get('decode_p99_ms'))} ms; {r['batch_identical']}/"
                         f"{r['batch_sessions']} sessions run at once gave the same greedy text as alone (first "
                         f"differing character: {r['batch_first_divergence_chars'] or 'none'}; control: "
                         f"{r.get('alone_repeat_identical')}/4 sessions run alone twice gave the same text).")
        phase = next((k for k in r if k.startswith("tps_") and k.endswith("_decode")), None)
        if phase is not None:
            b = phase[4:-7]
            bare = r.get(f"graph_tps_{b}")
            notes.append(f"{name}: {b} streaming sessions while all decode: {fnum(r[phase], 1)} tok/s through the API"
                         + (f", the engine's own graph steps at batch {b} (in the daemon, same run): "
                            f"{fnum(bare, 1)} tok/s, ratio {fnum(ratio(r[phase], bare))}" if bare else "")
                         + (f"; graph step ms by batch size: {r['graph_step_ms']}" if r.get("graph_step_ms") else ""))
        if "decode_mean_ms" in r:
            notes.append(f"{name}: decode counting per-call costs, (long run - TTFT) / tokens: "
                         f"{fnum(r['decode_mean_ms'])} ms/token")
        notes += generate_notes(name, r)
    return head, cells, notes


def generate_notes(name: str, r: dict[str, object]) -> list[str]:
    """How a generate row was measured: its configuration(s), fallbacks, warm-up/compile time per child process,
    recompiles in timed runs, skipped CUDA graphs and the per-run times of the tokens/s cells."""
    parts = r.get("parts")
    if not isinstance(parts, dict):  # a row of an earlier OUT.json (one process for every batch size)
        if "config" not in r:
            return []
        return [f"{name}: {r['config']}" + (f"; {r['fallback']}" if "fallback" in r else "")
                + (f"; warm-up/compile {r['compile_total_s']} s" if "compile_total_s" in r else "")]
    notes = []
    configs = {str(p["config"]) for p in parts.values() if "config" in p}
    if len(configs) == 1:
        notes.append(f"{name}: {configs.pop()}")
    else:
        notes += [f"{name} {pn}: {p['config']}" for pn, p in parts.items() if "config" in p]
    key = "compile_total_s" if any("compile_total_s" in p for p in parts.values()) else "warmup_total_s"
    per = ", ".join(f"{pn} {p[key]} s" for pn, p in parts.items() if key in p)
    if per:
        what = "warm-up/compile" if key == "compile_total_s" else "warm-up"
        notes.append(f"{name}: {len(parts)} process(es), {what} (2 runs of every timed shape): {per}; fallback: "
                     + ("; ".join(f"{pn}: {p['fallback']}" for pn, p in parts.items() if "fallback" in p) or "none"))
    late = {pn: p["compiled_in_timed_runs"] for pn, p in parts.items() if p.get("compiled_in_timed_runs")}
    skips = {pn: p["cudagraph_skips"] for pn, p in parts.items() if p.get("cudagraph_skips")}
    if late or skips:
        notes.append(f"{name}: WARNING: compiled during timed runs: {late or 'never'}; CUDA graphs skipped: "
                     f"{skips or 'never'}")
    runs = [f"@{k[4:-7]} " + "/".join(f"{t:.3f}" for t in v) for k, v in r.items()
            if k.startswith("tps_") and k.endswith("_runs_s") and isinstance(v, list)]
    if runs:
        notes.append(f"{name}: tok/s runs, seconds each (median taken): " + ", ".join(runs))
    return notes


def save(out: Path, results: dict[str, Any], meta: dict[str, Any], prompts: tuple[int, ...]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    head, cells, notes = table(results, prompts)
    lines = [f"# swarmd vs transformers generate vs the bandwidth limit, one GPU ({results['model']}, bf16, "
             f"{results['gpu']})", "",
             f"`{meta['command']}` — every row measured in the same run on one device "
             f"(rows kept from an earlier run: {', '.join(meta['kept']) or 'none'}). "
             f"{results['tokens']} greedy tokens per session; tok/s @B: B sessions of {BATCH_PROMPT}-token prompts "
             "at once (generate: one batch of B, the median of 3 runs after 2 warm-up runs). decode: median of 3 "
             "runs (min–max). generate_compiled: one fresh process per batch size, its static cache sized to the "
             "runs (prompt + new tokens).", ""]
    if meta.get("limit"):
        lim = meta["limit"]
        lines += [f"Limit: {lim['params']:,} parameters = {lim['weights_bytes'] / 1e9:.3f} GB in bf16, "
                  f"read once per decode step, at {results['copy_tb_s']:.3f} TB/s (a {lim['copy_gib']:g} GiB "
                  f"device-to-device copy, median of {lim['reps']}, bytes read + written) = "
                  f"{fnum(results['limit_ms_per_token'], 3)} ms/token.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def print_compact(results: dict[str, Any], prompts: tuple[int, ...]) -> None:
    head, cells, notes = table(results, prompts)
    short = ["setup", "dec ms", "xGC", "xLim", f"ttft{prompts[0]}", "xGen", f"ttft{prompts[-1]}", "xGen",
             "tps@1", "tps@16", "tps@64", "@64xGC"]
    rows = [short] + [[c[0].split(" (")[0][:18]] + c[1:] for c in cells]
    widths = [max(len(r[i]) for r in rows) for i in range(len(short))]
    print(f"\n{results['gpu']} | {results['model']} | copy {fnum(results.get('copy_tb_s'), 3)} TB/s | "
          f"limit {fnum(results.get('limit_ms_per_token'), 3)} ms/token")
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    for n in notes:
        print("- " + n[:400])
    sys.stdout.flush()


def ints(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(","))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="random:PRESET (default random:llama-3-8b; --smoke: tiny-llama)")
    ap.add_argument("--tokens", type=int, default=None, help="greedy tokens per session (default 64; --smoke: 8)")
    ap.add_argument("--prompts", type=ints, default=None,
                    help="TTFT prompt lengths (default 128,2048; --smoke: 128,1024, tiny-llama's context is 2048)")
    ap.add_argument("--concurrency", type=ints, default=CONCURRENCY)
    ap.add_argument("--rows", default=None, help="comma list of limit," + ",".join(ROWS) + " (default all)")
    ap.add_argument("--out", default=None, help="OUT.json and OUT.md (default bench/gpu_engine; --smoke: /tmp/...)")
    ap.add_argument("--smoke", action="store_true", help="random:tiny-llama, few tokens: a check of this script")
    ap.add_argument("--fresh", action="store_true", help="do not keep rows of an earlier OUT.json")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per daemon (0: torch's default)")
    ap.add_argument("--copy-gib", type=float, default=None, help="size of the timed copy (default 4; --smoke 0.0625)")
    ap.add_argument("--copy-reps", type=int, default=20)
    ap.add_argument("--compile-style", choices=("auto", "forward"), default="auto",
                    help="auto: generate compiles the decode step (transformers 5.x); forward: torch.compile(forward)")
    ap.add_argument("--compile-budget", type=float, default=400.0,
                    help="seconds of compile warm-up (all batch sizes together) after which the remaining batch "
                         "sizes of generate_compiled are not run")
    ap.add_argument("--row-timeout", type=float, default=900.0,
                    help="seconds each child process of a generate row may run (generate_compiled: one per batch size)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-batches", type=ints, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = args.model or ("random:tiny-llama" if args.smoke else "random:llama-3-8b")
    args.tokens = args.tokens or (8 if args.smoke else 64)
    args.prompts = args.prompts or ((128, 1024) if args.smoke else PROMPTS)
    device = bench_device()

    if args.child:  # one generate row, in this (child) process
        part = Path(args.child_out)

        def put(cells: dict[str, object]) -> None:
            part.write_text(json.dumps(cells))

        measure_generate(args.model, device, args.tokens, args.prompts, args.concurrency,
                         compiled=args.child == "generate_compiled", compile_style=args.compile_style,
                         batches=args.child_batches, save=put)
        return

    import torch

    wanted = [r.strip() for r in (args.rows or ",".join(("limit", *ROWS))).split(",") if r.strip()]
    unknown = sorted(set(wanted) - {"limit", *ROWS})
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from limit,{','.join(ROWS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA device (SWARMD_BENCH_DEVICE=cpu with --smoke checks the script on a CPU)")
    out = Path(args.out or ("/tmp/swarmd_bench_gpu_smoke" if args.smoke else REPO / "bench" / "gpu_engine"))
    gpu = torch.cuda.get_device_name(int(device.partition(":")[2] or 0)) if device.startswith("cuda") else "cpu"
    cfg = hf_config(args.model)
    layers, vocab = int(cfg.num_hidden_layers), int(cfg.vocab_size)

    results: dict[str, Any] = {"gpu": gpu, "limit_ms_per_token": None, "copy_tb_s": None, "model": args.model,
                               "tokens": args.tokens, "rows": {r: {"skipped": "not measured"} for r in ROWS}}
    meta: dict[str, Any] = {"command": " ".join(["python scripts/bench_gpu.py", *sys.argv[1:]]), "kept": [],
                            "limit": None}
    old_path = out.with_suffix(".json")
    if not args.fresh and old_path.is_file():
        try:
            old = json.loads(old_path.read_text())
            if all(old.get(k) == results[k] for k in ("gpu", "model", "tokens")):
                for r in ROWS:
                    if r not in wanted and "skipped" not in old.get("rows", {}).get(r, {"skipped": 1}):
                        results["rows"][r] = old["rows"][r]
                        meta["kept"].append(r)
                if "limit" not in wanted and old.get("limit_ms_per_token") is not None:
                    results["limit_ms_per_token"], results["copy_tb_s"] = old["limit_ms_per_token"], old["copy_tb_s"]
                    meta["kept"].append("limit")
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for r in ROWS:
        if r not in wanted and r not in meta["kept"]:
            results["rows"][r] = {"skipped": "not in --rows"}

    def done(name: str, t: float) -> None:
        save(out, results, meta, args.prompts)
        print(f"[{time.strftime('%H:%M:%S')}] {name} done in {time.perf_counter() - t:.0f}s -> "
              f"{out.with_suffix('.json')}", flush=True)

    if "limit" in wanted:
        t = time.perf_counter()
        params = param_count(cfg)
        gib = args.copy_gib or (0.0625 if args.smoke else 4.0)
        rate = copy_rate(device, gib, args.copy_reps)
        weights = 2 * params
        results["copy_tb_s"] = rate["bytes_per_s"] / 1e12
        results["limit_ms_per_token"] = 1000 * weights / rate["bytes_per_s"]
        meta["limit"] = {"params": params, "weights_bytes": weights, "copy_gib": gib, "reps": args.copy_reps}
        done("limit", t)
    logdir = Path(tempfile.mkdtemp(prefix="swb-gen-", dir="/tmp"))
    for name in [r for r in wanted if r in ROWS]:  # in the order asked for
        t = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        if name == "generate_compiled" and not device.startswith("cuda") and args.rows is None:
            results["rows"][name] = {"skipped": "CUDA graphs need a GPU (name the row in --rows to compile on CPU)"}
        elif name.startswith("generate"):
            results["rows"][name] = generate_row(args, name, logdir)
        else:
            n = 1 if name == "ring1" else 2
            try:
                results["rows"][name] = ring(args.model, n, layers, vocab, args.tokens, args.threads, [device] * n,
                                             args.prompts, args.concurrency)
            except Exception as exc:  # noqa: BLE001 - a failed ring is reported, the other rows kept
                results["rows"][name] = {"error": str(exc)[-2000:]}
                print(exc, flush=True)
        results["rows"][name]["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        done(name, t)
    print_compact(results, args.prompts)


if __name__ == "__main__":
    main()
