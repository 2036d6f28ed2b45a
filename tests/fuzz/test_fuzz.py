"""The coverage-guided fuzz target in CI: every corpus seed (and every crash ever found, saved there as a
seed) is replayed, then atheris fuzzes for a bounded time (``SWARMD_FUZZ_SECONDS``, default 60)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"


def test_every_seed_replays_without_a_crash() -> None:
    sys.path.insert(0, str(HERE))
    try:
        import fuzz_wire
    finally:
        sys.path.remove(str(HERE))
    seeds = sorted(CORPUS.iterdir())
    assert len(seeds) >= 30
    for seed in seeds:
        fuzz_wire.one_input(seed.read_bytes())  # raises on a crash


def test_bounded_fuzz_run_finds_no_crash(tmp_path: Path) -> None:
    seconds = int(os.environ.get("SWARMD_FUZZ_SECONDS", "60"))
    # libFuzzer's RSS limit reads the process's peak RSS, which a child forked from a large pytest process
    # inherits across exec (2.3 GB late in a CI run): the limit is set far above that.
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    out = subprocess.run(
        [sys.executable, str(HERE / "fuzz_wire.py"), str(corpus), f"-max_total_time={seconds}", "-timeout=10",
         "-rss_limit_mb=16384", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=seconds + 120, cwd=tmp_path,
    )
    log = out.stdout + out.stderr
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert out.returncode == 0 and not crashes, f"crash inputs {crashes} (add them to {CORPUS}):\n{log[-4000:]}"
    done = [line for line in log.splitlines() if "DONE" in line]
    assert done, log[-2000:]
    print(f"fuzzed {seconds}s: {done[-1].strip()}")
