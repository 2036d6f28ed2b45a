#!/usr/bin/env python3
"""Resident memory of a node holding half the layers vs the whole model (embedded SmolLM2 by default).

Each span loads in a fresh child process (after one warm-up run that fills the conversion cache), runs
one 8-token step so every weight page is resident, and reports its RSS before loading (interpreter +
torch + transformers), after the step, and its peak (VmHWM).
Writes bench/span_memory.json and bench/span_memory.md.

    python scripts/bench_span_memory.py [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def child(model: str, layers: str, cache: str) -> None:
    import torch
    import transformers  # noqa: F401

    from swarmd.config import EngineConfig, ModelConfig
    from swarmd.engine.runtime import load_model

    before = _status_kib("VmRSS")
    loaded = load_model(ModelConfig(source=model, cache_dir=Path(cache)), EngineConfig(layers=layers, threads=2))
    stage = loaded.stage
    # One real step touches every weight page (safetensors weights are memory-mapped until used).
    x = (torch.arange(8).unsqueeze(0) if stage.embed is not None
         else torch.randn(1, 8, stage.hidden_size, dtype=stage.dtype))
    stage.forward(x, 0, stage.new_cache(8))
    print(json.dumps({
        "layers": layers, "rss_before_mib": before / 1024, "rss_after_mib": _status_kib("VmRSS") / 1024,
        "peak_mib": _status_kib("VmHWM") / 1024, "weights_mib": loaded.stage.parameter_bytes() / 2**20,
        "num_layers": loaded.num_layers,
    }))


def run_child(model: str, layers: str, cache: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", layers, "--model", model, "--cache", cache],
                         capture_output=True, text=True, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cache", default=str(REPO / ".cache" / "swarmd"))
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.child, args.cache)
        return
    n = run_child(args.model, "auto", args.cache)["num_layers"]
    spans = [f"0:{n}", f"0:{n // 2}", f"{n // 2}:{n}"]
    for s in spans:  # warm the conversion cache so the measured runs only load
        run_child(args.model, s, args.cache)
    rows = [run_child(args.model, s, args.cache) for s in spans]
    full = rows[0]
    for r in rows:
        r["loaded_mib"] = r["rss_after_mib"] - r["rss_before_mib"]
        r["loaded_vs_full"] = r["loaded_mib"] / (full["rss_after_mib"] - full["rss_before_mib"])
        r["peak_vs_full"] = r["peak_mib"] / full["peak_mib"]
    out_dir = REPO / "bench"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "span_memory.json").write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Resident memory by layer span ({args.model}, {n} layers, float32, CPU)",
        "",
        "`python scripts/bench_span_memory.py` — each span in a fresh process after a cache warm-up.",
        "",
        "| span | weights MiB | RSS added by loading + one step, MiB | vs whole | peak RSS MiB | vs whole |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['layers']} | {r['weights_mib']:.0f} | {r['loaded_mib']:.0f} | "
                     f"{r['loaded_vs_full']:.2f} | {r['peak_mib']:.0f} | {r['peak_vs_full']:.2f} |")
    (out_dir / "span_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
