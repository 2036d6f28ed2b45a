#!/usr/bin/env python3
"""GPU: a ring of swarmd daemons (one per GPU, loopback, encrypted links) vs single-GPU transformers
``generate``, the same random-weight model shape, same machine, one run.

Measures, for ``generate`` on cuda:0 and for rings of 1 daemon (cuda:0) and of every visible GPU:
  * time to first token for a 128- and a 2048-token prompt;
  * decode ms/token p50/p99 at one session (64 greedy tokens);
  * aggregate tokens/s at 1, 16 and 64 concurrent sessions (``generate``: one batch of that size).
Writes OUT.json and OUT.md. The stdlib speaks HTTP to the daemons (no extra packages on the GPU box).

    python scripts/bench_gpu.py [--model random:llama-3-8b] [--out bench/gpu_llama3_8b]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
PROMPTS = (128, 2048)
CONCURRENCY = (1, 16, 64)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


# --- single-GPU reference ----------------------------------------------------------------------


def reference(preset: str, tokens: int) -> dict[str, object]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from swarmd.engine.sources import RANDOM_PRESETS

    spec = dict(RANDOM_PRESETS[preset])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    with torch.device("cuda:0"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    vocab = int(cfg.vocab_size)

    def ids(b: int, n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (b, n), device="cuda:0", generator=torch.Generator("cuda:0").manual_seed(n))

    def gen(x: torch.Tensor, n: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    gen(ids(1, 128), tokens + 1)  # warm-up with the measured shapes
    out: dict[str, object] = {}
    for n in PROMPTS:
        out[f"ttft_{n}_ms"] = 1000 * min(gen(ids(1, n), 1) for _ in range(3))
    whole = min(gen(ids(1, 128), tokens + 1) for _ in range(2))
    out["decode_ms"] = 1000 * (whole - float(out["ttft_128_ms"]) / 1000) / tokens  # mean over the decode steps
    for b in CONCURRENCY:
        gen(ids(b, 128), 4)  # warm-up at this batch size
        out[f"tps_{b}"] = b * tokens / min(gen(ids(b, 128), tokens) for _ in range(2))
    import gc

    model = None  # free the GPU for the daemons
    gc.collect()
    torch.cuda.empty_cache()
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


def start_ring(root: Path, model: str, gpus: int, layers: int, threads: int = 0) -> list[subprocess.Popen[bytes]]:
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
    procs = []
    for i in range(gpus):
        peers = [x for j, p in enumerate(ports) if j != i for x in ("--peer", f"127.0.0.1:{p}")]
        device = os.environ.get("SWARMD_BENCH_DEVICE") or f"cuda:{i}"  # "cpu": a smoke test of this script
        args = [sys.executable, "-m", "swarmd.cli.swarmd_main", "--model", model, "--device", device,
                "--layers", f"{cuts[i]}:{cuts[i + 1]}", "--listen", f"127.0.0.1:{ports[i]}", "--node-id", f"gpu{i}",
                "--socket", str(root / f"n{i}.sock"), "--key-file", str(key), "--no-mdns", "--gossip", "local",
                "--seconds-per-layer", "0.0005", "--kv-budget", os.environ.get("SWARMD_BENCH_KV", "16GiB"),
                "--threads", str(threads), *peers]
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
                raise RuntimeError(f"daemon {i} exited:\n{(root / f'n{i}.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
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

    def one() -> None:
        prompt = [rng.randrange(vocab) for _ in range(128)]
        status, body = request(sock, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": tokens,
                                                                 "temperature": 0})
        assert status == 200, body[:300]
        done.append(int(json.loads(body)["usage"]["completion_tokens"]))

    threads = [threading.Thread(target=one) for _ in range(sessions)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
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


def ring(model: str, gpus: int, layers: int, vocab: int, tokens: int, threads: int = 0) -> dict[str, object]:
    import random

    rng = random.Random(0)
    root = Path(tempfile.mkdtemp(prefix="swb-", dir="/tmp"))
    procs = start_ring(root, model, gpus, layers, threads)
    sock = str(root / "n0.sock")
    out: dict[str, object] = {}
    try:
        stream_times(sock, [rng.randrange(vocab) for _ in range(16)], 4)  # warm-up
        for n in PROMPTS:
            out[f"ttft_{n}_ms"] = 1000 * min(
                (lambda s: s[1] - s[0])(stream_times(sock, [rng.randrange(vocab) for _ in range(n)], 1))
                for _ in range(3))
        stamps = stream_times(sock, [rng.randrange(vocab) for _ in range(128)], tokens + 1)
        gaps = [1000 * (b - a) for a, b in zip(stamps[2:], stamps[3:], strict=False)]
        out["decode_ms"] = statistics.median(gaps)
        out["decode_p99_ms"] = pct(gaps, 0.99)
        for b in CONCURRENCY:
            out[f"tps_{b}"] = concurrent_tps(sock, b, tokens, vocab, rng)
        out.update(batch_agreement(sock, vocab, tokens))
    finally:
        stop_all(procs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama-3-8b")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--gpus", type=int, default=0, help="ring size besides 1 (0: every visible GPU)")
    ap.add_argument("--out", default=str(REPO / "bench" / "gpu_llama3_8b"))
    ap.add_argument("--threads", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                    help="torch CPU threads per daemon, comma-separated: one ring per value (0: torch's default)")
    args = ap.parse_args()
    import torch

    from swarmd.engine.sources import RANDOM_PRESETS

    preset = args.model.removeprefix("random:")
    layers, vocab = int(RANDOM_PRESETS[preset]["num_hidden_layers"]), int(RANDOM_PRESETS[preset]["vocab_size"])
    gpus = args.gpus or torch.cuda.device_count()
    results: dict[str, object] = {"model": args.model, "gpu": torch.cuda.get_device_name(0),
                                  "gpus": torch.cuda.device_count(), "tokens": args.tokens, "rows": {}}
    rows: dict[str, dict[str, object]] = results["rows"]  # type: ignore[assignment]
    out = Path(args.out)

    def save() -> None:
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        head = ("| setup | TTFT 128 ms | TTFT 2048 ms | decode ms/token | vs generate | tok/s @1 | tok/s @16 "
                "| tok/s @64 | @64 vs generate |")
        lines = [f"# Ring vs single-GPU generate ({args.model}, bf16, {results['gpu']})", "",
                 f"`{' '.join(['python scripts/bench_gpu.py', *sys.argv[1:]])}` on {results['gpus']} × "
                 f"{results['gpu']} — every row measured in the same run.", "",
                 head, "|---|---|---|---|---|---|---|---|---|"]
        base = rows.get("generate (1 GPU)", {})
        for name, r in rows.items():
            def ratio(key: str, r: dict[str, object] = r) -> float | None:
                a, b = r.get(key), base.get(key)
                return float(a) / float(b) if isinstance(a, float) and isinstance(b, float) and b else None  # type: ignore[arg-type]

            cells = [r.get("ttft_128_ms"), r.get("ttft_2048_ms"), r.get("decode_ms"), ratio("decode_ms"),
                     r.get("tps_1"), r.get("tps_16"), r.get("tps_64"), ratio("tps_64")]
            lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
        for name, r in rows.items():
            if "batch_sessions" in r:
                lines.append(f"\n{name}: {r['batch_identical']}/{r['batch_sessions']} sessions run at once gave the "
                             f"same greedy text as alone (first differing character: "
                             f"{r['batch_first_divergence_chars'] or 'none'}; control: "
                             f"{r.get('alone_repeat_identical')}/4 sessions run alone twice gave the same text).")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    rows["generate (1 GPU)"] = reference(preset, args.tokens)
    save()
    for n in sorted({1, gpus}):
        for threads in args.threads:
            name = f"ring of {n} (1 daemon/GPU)" + (f", --threads {threads}" if len(args.threads) > 1 else "")
            try:
                rows[name] = ring(args.model, n, layers, vocab, args.tokens, threads)
            except Exception as exc:  # noqa: BLE001 - a failed ring is reported, the other rows kept
                rows[name] = {"error": str(exc)[-2000:]}
                print(exc, flush=True)
            save()


if __name__ == "__main__":
    main()
