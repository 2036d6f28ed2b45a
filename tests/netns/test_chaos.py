"""Chaos in network namespaces: one daemon per namespace, found by real multicast mDNS, joined through the
lab's user-space switch, which loses, delays and cuts frames (the CI kernel has no netem). Every answer is
checked against single-process greedy ``generate``.

- ``kill -9`` of a stage at token 100 of a streamed generation, then ``SIGSTOP`` of a stage for 3 s: the
  stream goes on with exactly generate's tokens, and the frozen daemon is never declared dead;
- a 3/3 partition: the side with every layer keeps answering; the side without answers 503 with
  Retry-After within 2 s; after healing the six daemons hold one view within 35 s;
- an asymmetric partition (A and C cannot reach each other, both reach B): nobody is declared dead and
  every request from either side is answered correctly;
- 5% loss and 20 ± 10 ms delay on every link under a request a second: all answered, nobody declared dead;
- a rolling restart (SIGTERM, drain, start again) of every daemon under steady load: at least 99% of the
  requests succeed and none is wrong.

``SWARMD_PARTITION_S`` (default 60) and ``SWARMD_CHAOS_S`` (default 150) set how long the partition and
the lossy network last.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from cluster import write_key
from model_factory import make_tiny_model
from netns_lab import Lab, available
from netns_swarm import NetSwarm, Outcome, complete, status, try_status
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = [pytest.mark.netns, pytest.mark.chaos,
              pytest.mark.skipif(available() is not None, reason=str(available()))]

PROMPT = "The quick brown fox jumps over the lazy dog."
TOKENS = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], str]:
    """A 4-layer model, the prompt's ids and generate's greedy answer."""
    model = make_tiny_model(tmp_path_factory.mktemp("chaos") / "m4", "llama", layers=4, never_eos=True)
    tok = AutoTokenizer.from_pretrained(model)
    ids = tok(PROMPT)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    out = ref.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)[0, len(ids):].tolist()
    return model, ids, tok.decode(out, skip_special_tokens=True)


def swarm(lab: Lab, root: Path, model: Path, spans: list[str], *extra: str) -> NetSwarm:
    return NetSwarm(lab, root, model, write_key(root / "swarm.key"), spans, list(extra)).start()


def wrong(outcomes: list[Outcome], want: str) -> list[Outcome]:
    return [o for o in outcomes if o.status == 200 and o.text != want]


def stream(sock: Path, ids: list[int], n: int, at: int, act: Callable[[], None]) -> tuple[str, dict, float]:  # type: ignore[type-arg]
    """Stream a greedy completion, calling ``act`` once ``at`` tokens arrived; (text, usage, largest gap)."""
    pieces: list[str] = []
    stamps: list[float] = []
    usage: dict = {}  # type: ignore[type-arg]
    body = {"prompt": ids, "max_tokens": n, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as c:
        with c.stream("POST", "http://x/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    usage = chunk.get("usage") or usage
                    for choice in chunk["choices"]:
                        pieces.append(choice["text"])
                        stamps.append(time.monotonic())
                        if len(stamps) == at:
                            act()
    return "".join(pieces), usage, max(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def test_kill_9_and_sigstop_of_stages_mid_stream(short_tmp: Path, tiny: tuple[Path, list[int], str]) -> None:
    model, ids, _ = tiny
    tok = AutoTokenizer.from_pretrained(model)
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    want = tok.decode(ref.generate(torch.tensor([ids]), max_new_tokens=200, do_sample=False)[0, len(ids):].tolist(),
                      skip_special_tokens=True)
    with Lab(4) as lab:
        sw = swarm(lab, short_tmp, model, ["0:2", "0:2", "2:4", "2:4"])
        try:
            sw.wait_for(sw.one_view, "four daemons in one view")
            last = int(status(sw.sock(0))["ring"][-1].removeprefix("ns"))
            assert last != 0
            text, usage, gap = stream(sw.sock(0), ids, 200, 100, lambda: sw.procs[last].send_signal(signal.SIGKILL))
            assert (text, usage["completion_tokens"]) == (want, 200), sw.logs_tail()
            kill_gap = gap
            sw.procs[last].wait(10)
            sw.launch(last)  # back as a standby, so the stall below has a replica to go to
            sw.wait_for(lambda: sw.one_view() and status(sw.sock(0))["layer_replicas"]["min"] >= 2, "the replica back")
            frozen = int(status(sw.sock(0))["ring"][-1].removeprefix("ns"))
            stopped: list[float] = []
            verdicts = sw.declared_dead()  # the kill's; the freeze must add none

            def freeze() -> None:
                sw.procs[frozen].send_signal(signal.SIGSTOP)
                stopped.append(time.monotonic())

            try:
                text, usage, gap = stream(sw.sock(0), ids, 200, 100, freeze)
                time.sleep(max(0.0, stopped[0] + 3.0 - time.monotonic()))
            finally:
                sw.procs[frozen].send_signal(signal.SIGCONT)
            assert (text, usage["completion_tokens"]) == (want, 200), sw.logs_tail()
            time.sleep(6.0)  # past any suspicion timeout: a wrong verdict would have been reached by now
            assert sw.declared_dead() == verdicts, (verdicts, sw.declared_dead(), sw.logs_tail())
            print(f"netns kill -9 of ns{last} at token 100: largest gap {kill_gap * 1000:.0f} ms; "
                  f"SIGSTOP of ns{frozen} for 3 s: largest gap {gap:.2f} s, nobody declared it dead")
        finally:
            sw.stop()


def test_partition_3_3_minority_answers_503_fast_and_views_merge_after_healing(
        short_tmp: Path, tiny: tuple[Path, list[int], str]) -> None:
    model, ids, want = tiny
    hold_s = float(os.environ.get("SWARMD_PARTITION_S", "60"))
    # Side X (0, 1, 2) holds every layer; side Y (3, 4, 5) lacks layers 0-2.
    with Lab(6, switch=True) as lab:
        sw = swarm(lab, short_tmp, model, ["0:2", "2:4", "0:2", "2:4", "2:4", "none"])
        try:
            sw.wait_for(sw.one_view, "six daemons in one view")
            for i in range(6):
                o = complete(sw.sock(i), ids, TOKENS, i)
                assert (o.status, o.text) == (200, want), (i, o, sw.logs_tail())
            lab.partition([0, 1, 2], [3, 4, 5])
            cut_at = time.monotonic()
            outcomes: list[Outcome] = []
            turn = 0
            while time.monotonic() - cut_at < hold_s:
                entry = turn % 6
                outcomes.append(complete(sw.sock(entry), ids, TOKENS, entry))
                turn += 1
                time.sleep(0.3)
            if os.environ.get("SWARMD_CHAOS_DEBUG"):
                for o in outcomes:
                    print(f"{o.started - cut_at:7.2f} ns{o.entry} {o.status} {o.seconds:.2f}s {o.error[:160]}")
                for i in (3, 4, 5):
                    print(f"--- ns{i}", *[ln for ln in sw.log(i).read_text().splitlines()
                                          if "WARNING" in ln or "dead" in ln or "suspect" in ln][-25:], sep="\n")
            x_side = [o for o in outcomes if o.entry < 3]
            y_side = [o for o in outcomes if o.entry >= 3]
            assert x_side and all(o.status == 200 and o.text == want for o in x_side), \
                ([o for o in x_side if o.status != 200 or o.text != want], sw.logs_tail())
            assert y_side and all(o.status == 503 and o.retry_after and int(o.retry_after) >= 1 for o in y_side), \
                ([o for o in y_side if o.status != 503], sw.logs_tail())
            slowest = max(o.seconds for o in y_side)
            assert slowest <= 2.0, ([o for o in y_side if o.seconds > 2.0], sw.logs_tail())
            first_y = min(o.started for o in y_side) - cut_at

            lab.block([])
            merged_in = sw.wait_for(sw.one_view, "one view after healing", timeout=35)
            for i in range(6):
                o = complete(sw.sock(i), ids, TOKENS, i)
                assert (o.status, o.text) == (200, want), (i, o, sw.logs_tail())
            print(f"partition {hold_s:.0f} s: {len(x_side)} majority requests answered, {len(y_side)} minority "
                  f"requests refused (first {first_y:.2f} s after the cut, slowest 503 in {slowest:.2f} s); "
                  f"one view {merged_in:.1f} s after healing")
        finally:
            sw.stop()


def test_asymmetric_partition_kills_nobody_and_every_request_is_answered(
        short_tmp: Path, tiny: tuple[Path, list[int], str]) -> None:
    model, ids, want = tiny
    with Lab(4, switch=True) as lab:
        sw = swarm(lab, short_tmp, model, ["0:2", "2:4", "2:4", "0:2"])
        try:
            sw.wait_for(sw.one_view, "four daemons in one view")
            lab.block([(0, 2), (2, 0)])  # A = ns0 and C = ns2 cannot reach each other; both reach ns1, ns3
            outcomes = []
            started = time.monotonic()
            while time.monotonic() - started < 20:
                for entry in (0, 2, 1):
                    outcomes.append(complete(sw.sock(entry), ids, TOKENS, entry))
            bad = [o for o in outcomes if o.status != 200 or o.text != want]
            assert not bad, (bad, sw.logs_tail())
            assert not sw.declared_dead(), (sw.declared_dead(), sw.logs_tail())
            lab.block([])
            assert all(p["state"] == "alive" for p in status(sw.sock(0))["peers"])
            print(f"asymmetric partition 20 s: {len(outcomes)} requests from both sides, all answered")
        finally:
            sw.stop()


def test_lossy_slow_network_answers_everything_and_kills_nobody(
        short_tmp: Path, tiny: tuple[Path, list[int], str]) -> None:
    model, ids, want = tiny
    run_s = float(os.environ.get("SWARMD_CHAOS_S", "150"))
    with Lab(4, switch=True) as lab:
        sw = swarm(lab, short_tmp, model, ["0:2", "0:2", "2:4", "2:4"])
        try:
            sw.wait_for(sw.one_view, "four daemons in one view")
            lab.impair(loss=0.05, delay=0.02, jitter=0.01)
            futures: list[Future[Outcome]] = []
            with ThreadPoolExecutor(16) as pool:
                started = time.monotonic()
                n = 0
                while time.monotonic() - started < run_s:
                    futures.append(pool.submit(complete, sw.sock(n % 4), ids, TOKENS, n % 4))
                    n += 1
                    time.sleep(max(0.0, started + n - time.monotonic()))  # one request a second
            outcomes = [f.result() for f in futures]
            lab.impair()
            bad = [o for o in outcomes if o.status != 200 or o.text != want]
            assert not bad, (bad, sw.logs_tail())
            assert not sw.declared_dead(), (sw.declared_dead(), sw.logs_tail())
            secs = sorted(o.seconds for o in outcomes)
            print(f"5% loss, 20±10 ms: {len(outcomes)} requests over {run_s:.0f} s all answered; "
                  f"latency p50 {secs[len(secs) // 2]:.2f} s, max {secs[-1]:.2f} s")
        finally:
            sw.stop()


def test_rolling_restart_under_load_keeps_99_percent(short_tmp: Path, tiny: tuple[Path, list[int], str]) -> None:
    model, ids, want = tiny
    with Lab(4) as lab:
        sw = swarm(lab, short_tmp, model, ["0:2", "0:2", "2:4", "2:4"], "--drain-timeout", "5")
        try:
            sw.wait_for(sw.one_view, "four daemons in one view")
            restarting: set[int] = set()
            outcomes: list[Outcome] = []
            stop = threading.Event()
            rng = random.Random(7)

            def load() -> None:  # a client that uses whichever daemon is not being restarted
                with ThreadPoolExecutor(8) as pool:
                    futures = []
                    while not stop.is_set():
                        entry = rng.choice([i for i in range(4) if i not in restarting])
                        futures.append(pool.submit(complete, sw.sock(entry), ids, TOKENS, entry))
                        time.sleep(0.5)
                    outcomes.extend(f.result() for f in futures)

            loader = threading.Thread(target=load)
            loader.start()
            try:
                for i in range(4):
                    restarting.add(i)
                    time.sleep(1.0)  # requests already sent to it are in flight: SIGTERM drains them
                    sw.procs[i].send_signal(signal.SIGTERM)
                    assert sw.procs[i].wait(30) == 0, sw.logs_tail()
                    sw.launch(i)
                    sw.wait_for(sw.one_view, f"ns{i} back in the view")
                    sw.wait_for(lambda: (try_status(sw.sock(0)) or {"layer_replicas": {"min": 0}})
                                ["layer_replicas"]["min"] >= 2, "both replicas of every span")
                    restarting.discard(i)
                    time.sleep(2.0)
            finally:
                stop.set()
                loader.join()
            ok = [o for o in outcomes if o.status == 200]
            assert not wrong(outcomes, want), (wrong(outcomes, want), sw.logs_tail())
            assert len(ok) >= 0.99 * len(outcomes), ([o for o in outcomes if o.status != 200], sw.logs_tail())
            print(f"rolling restart of 4 daemons: {len(ok)}/{len(outcomes)} requests answered, none wrong")
        finally:
            sw.stop()
