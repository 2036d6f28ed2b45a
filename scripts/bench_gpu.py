#!/usr/bin/env python3
"""One GPU, one run: swarmd's engine vs transformers ``generate`` vs the memory-bandwidth limit.

Rows, every one measured in the same run on cuda:0 (the same random-weight model shape, bf16):
  * limit              the bandwidth floor of one decode step: bytes of the model's weights in bf16 (from its
                       parameter count) / the device-to-device copy rate (a 4 GiB tensor copy timed with CUDA
                       events, median of 20 reps, bytes read + bytes written);
  * generate           transformers eager ``generate`` (dynamic cache);
  * generate_compiled  ``generate`` with the static cache and torch.compile, as transformers 5.x documents it:
                       ``generation_config.cache_implementation = "static"`` makes ``generate`` compile the decode
                       step with ``generation_config.compile_config`` (here ``CompileConfig(fullgraph=True,
                       mode="reduce-overhead")``: CUDA graphs); ``max_cache_len`` is fixed so every call has one
                       cache shape. Every batch size and prompt length is run at warm-up, before any timing;
                       ``--compile-style forward`` instead wraps ``model.forward`` in ``torch.compile`` (the older
                       recipe; prefill compiled too);
  * ring1              one swarmd daemon holding every layer on cuda:0;
  * ring2_one_gpu      two daemons splitting the layers (0:16 and 16:32 for 32 layers), both on cuda:0.

Each row: decode ms/token at one session (the median of 3 runs, spread in ``decode_ms_runs``; ring: the median
gap between streamed tokens; generate: (a 64-token run - a 4-token run) / 60, the steady per-token cost, with
``decode_mean_ms`` = (64-token run - TTFT) / 64 beside it), time to first token for a 128- and a 2048-token
prompt, tokens/s of 1, 16 and 64 concurrent sessions (128-token prompts, 64 greedy tokens; ``generate``: one
batch of that size). Ring rows add decode p99, batched-vs-alone agreement of greedy outputs and the daemons' own
status counters. ``generate`` rows run in a child process (its GPU memory is freed for the daemons; a compile
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


# --- transformers generate (run in a child process: --child ROW) ------------------------------------------------


def measure_generate(model_name: str, device: str, tokens: int, prompts: tuple[int, ...] = PROMPTS,
                     concurrency: tuple[int, ...] = CONCURRENCY, compiled: bool = False,
                     compile_style: str = "auto", compile_budget_s: float = 400.0,
                     save: Callable[[dict[str, object]], None] | None = None) -> dict[str, object]:
    """Eager or compiled ``generate``: decode ms/token after a 128-token prompt (steady and mean, median of 3
    runs), TTFT per prompt length (``max_new_tokens=1``, best of 3) and tokens/s of one batch of each size.
    A cell that fails holds its error string; ``save`` gets the cells after each one."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(model_name)
    cuda = device.startswith("cuda")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    vocab = int(cfg.vocab_size)
    out: dict[str, object] = {"torch": torch.__version__}
    import transformers

    out["transformers"] = transformers.__version__

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

    def gen(x: torch.Tensor, n: int) -> float:
        sync()
        t = time.perf_counter()
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=0)
        sync()
        return time.perf_counter() - t

    def err(exc: BaseException) -> str:
        return f"error: {type(exc).__name__}: {str(exc)[:600]}"

    original_forward = model.forward

    def setup_compile(fullgraph: bool) -> str:
        from transformers import CompileConfig

        gc = model.generation_config
        gc.cache_implementation = "static"
        gc.max_cache_len = max(prompts) + tokens + 8  # one cache shape for every call: no recompile by length
        mode = "reduce-overhead" if cuda else "default"  # CUDA graphs; on CPU (smoke) plain inductor
        torch._dynamo.reset()
        if hasattr(model, "_compiled_call"):
            del model._compiled_call
        if compile_style == "forward":
            model.forward = torch.compile(original_forward, mode=mode, fullgraph=fullgraph)
            gc.disable_compile = True  # generate must not wrap the compiled forward a second time
            return (f"cache_implementation=static, max_cache_len={gc.max_cache_len}, model.forward = "
                    f"torch.compile(model.forward, mode={mode!r}, fullgraph={fullgraph})")
        cc = CompileConfig(fullgraph=fullgraph, mode=mode)
        if not cuda:
            cc._compile_all_devices = True  # type: ignore[assignment]  # compile on CPU too
        gc.compile_config = cc
        return (f"cache_implementation=static, max_cache_len={gc.max_cache_len}, "
                f"compile_config=CompileConfig(fullgraph={fullgraph}, mode={mode!r}) (generate compiles the "
                "decode step; prefill eager)")

    # Warm-up: every shape the timed runs use, compiled (if compiling) here and not in the timed runs.
    broken: dict[int, str] = {}  # batch size -> why it is not measured
    if compiled:
        put("config", setup_compile(fullgraph=True))
        compile_s: dict[str, float] = {}
        t0 = time.perf_counter()
        shapes = [(1, max(prompts), 1), *((1, n, 1) for n in prompts if n != max(prompts)),
                  *((b, 128, tokens) for b in sorted(set(concurrency) | {1}))]
        for b, n, new in shapes:
            if b in broken:
                continue
            if time.perf_counter() - t0 > compile_budget_s:
                broken[b] = f"error: compile budget of {compile_budget_s:.0f}s spent before batch {b}"
                continue
            try:
                t = time.perf_counter()
                for _ in range(2):  # the 2nd run: CUDA graphs recorded, nothing left to compile
                    gen(ids(b, n), new)
                compile_s[f"b{b}_p{n}_new{new}"] = round(time.perf_counter() - t, 2)
            except Exception as exc:  # noqa: BLE001 - the error goes into the cell, the other cells are kept
                if b == 1 and "fallback" not in out:
                    # fullgraph=True not possible: what a user does next is fullgraph=False; warm-up again
                    put("fallback", f"fullgraph=True failed ({err(exc)[:300]}); fullgraph=False used")
                    out["config"] = setup_compile(fullgraph=False)
                    try:
                        t = time.perf_counter()
                        for bb, nn, nw in shapes[: shapes.index((b, n, new)) + 1]:
                            for _ in range(2):
                                gen(ids(bb, nn), nw)
                        compile_s[f"b{b}_p{n}_new{new}"] = round(time.perf_counter() - t, 2)
                        continue
                    except Exception as exc2:  # noqa: BLE001
                        exc = exc2
                broken[b] = err(exc)
                traceback.print_exc()
        put("compile_s", compile_s)
        put("compile_total_s", round(time.perf_counter() - t0, 2))
    else:
        gen(ids(1, max(prompts)), 1)
        for b in sorted(set(concurrency) | {1}):
            gen(ids(b, 128), tokens + 1 if b == 1 else 4)

    k = min(4, tokens // 2)  # decode steps of the short run: its per-call costs are those of the long run

    def decode_run() -> None:
        if 1 in broken:
            return
        try:
            runs.append((gen(ids(1, 128), 1 + k), gen(ids(1, 128), 1 + tokens)))
        except Exception as exc:  # noqa: BLE001
            broken[1] = err(exc)

    runs: list[tuple[float, float]] = []
    decode_run()
    for n in sorted(set(prompts) | {128}):  # 128: the decode runs' prompt
        try:
            if 1 in broken:
                raise RuntimeError(broken[1])
            put(f"ttft_{n}_ms", 1000 * min(gen(ids(1, n), 1) for _ in range(3)))
        except Exception as exc:  # noqa: BLE001
            put(f"ttft_{n}_ms", err(exc) if 1 not in broken else broken[1])
    decode_run()
    for b in concurrency:
        if b in broken:
            put(f"tps_{b}", broken[b])
            continue
        try:
            put(f"tps_{b}", b * tokens / min(gen(ids(b, 128), tokens) for _ in range(2)))
        except Exception as exc:  # noqa: BLE001
            put(f"tps_{b}", err(exc))
    decode_run()
    ttft = out.get("ttft_128_ms")
    if runs and isinstance(ttft, float):
        # decode_ms: the steady per-token cost, (long run - short run) / the steps between them, comparable to
        # the ring rows' median gap between streamed tokens; decode_mean_ms: (long run - TTFT) / tokens, which
        # also spreads per-call costs (e.g. CUDA graphs re-recorded for a new static cache) over the tokens.
        per = [1000 * (w - s) / (tokens - k) for s, w in runs]
        out["decode_ms_runs"] = per
        out["decode_mean_ms"] = statistics.median(1000 * (w - ttft / 1000) / tokens for _, w in runs)
        put("decode_ms", statistics.median(per))
    else:
        put("decode_ms", broken.get(1, "error: no decode run"))
    return out


def reference(preset: str, tokens: int) -> dict[str, object]:
    """Eager ``generate`` on cuda:0, in this process (scripts/bench_tp.py); its GPU memory freed after."""
    import gc

    import torch

    out = measure_generate(f"random:{preset}", "cuda:0", tokens)
    gc.collect()
    torch.cuda.empty_cache()
    return out


def generate_row(args: argparse.Namespace, row: str, logdir: Path) -> dict[str, object]:
    """Run one ``generate`` row in a child process; keep what it measured if it fails or runs out of time."""
    part = logdir / f"{row}.json"
    log = logdir / f"{row}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", row, "--child-out", str(part),
           "--model", args.model, "--tokens", str(args.tokens), "--prompts", ",".join(map(str, args.prompts)),
           "--concurrency", ",".join(map(str, args.concurrency)), "--compile-style", args.compile_style,
           "--compile-budget", str(args.compile_budget)]
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
    if why is not None:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"{row}: {why}; last lines of its log:\n  " + "\n  ".join(tail), flush=True)
        for key in row_keys(args.prompts, args.concurrency):
            out.setdefault(key, why)
        out["error"] = why + "\n" + "\n".join(tail[-8:])
    return out


def row_keys(prompts: tuple[int, ...], concurrency: tuple[int, ...]) -> list[str]:
    return ["decode_ms", *(f"ttft_{n}_ms" for n in prompts), *(f"tps_{b}" for b in concurrency)]


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
        out["decode_ms"] = statistics.median(runs)
        out["decode_ms_runs"] = runs
        out["decode_p99_ms"] = pct(gaps_all, 0.99)
        out.update(batch_agreement(sock, vocab, tokens))
        out["status"] = {f"gpu{i}": daemon_status(str(root / f"n{i}.sock")) for i in range(gpus)}
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
        if "decode_mean_ms" in r:
            notes.append(f"{name}: decode counting per-call costs, (long run - TTFT) / tokens: "
                         f"{fnum(r['decode_mean_ms'])} ms/token")
        if "config" in r:
            notes.append(f"{name}: {r['config']}" + (f"; {r['fallback']}" if "fallback" in r else "")
                         + (f"; warm-up/compile {r['compile_total_s']} s" if "compile_total_s" in r else ""))
    return head, cells, notes


def save(out: Path, results: dict[str, Any], meta: dict[str, Any], prompts: tuple[int, ...]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    head, cells, notes = table(results, prompts)
    lines = [f"# swarmd vs transformers generate vs the bandwidth limit, one GPU ({results['model']}, bf16, "
             f"{results['gpu']})", "",
             f"`{meta['command']}` — every row measured in the same run on one device "
             f"(rows kept from an earlier run: {', '.join(meta['kept']) or 'none'}). "
             f"{results['tokens']} greedy tokens per session; tok/s @B: B sessions of {prompts[0]}-token prompts "
             "at once (generate: one batch of B). decode: median of 3 runs (min–max).", ""]
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
                    help="seconds of compile warm-up after which the remaining batch sizes are not compiled")
    ap.add_argument("--row-timeout", type=float, default=900.0, help="seconds a generate row's child may run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
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
                         compile_budget_s=args.compile_budget, save=put)
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
    for name in ROWS:
        if name not in wanted:
            continue
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
