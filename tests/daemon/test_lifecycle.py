"""swarmd as a real process: sd_notify readiness, swarmctl, key checks, clean SIGTERM with drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import shared_cache_dir, uds_client

pytestmark = pytest.mark.daemon


def swarmctl(*args: str, sock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarmd.cli.swarmctl", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=120)


class Daemon:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.sock = tmp / "api.sock"
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), SWARMD_CACHE_DIR=str(shared_cache_dir()))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swarmd.cli.swarmd_main", "--socket", str(self.sock), "--node-id", "d1",
             "--drain-timeout", "10", "--no-mdns", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_for(self, prefix: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.messages:
                if line.startswith(prefix):
                    return line
            try:
                self.messages.extend(self.notify.recv(4096).decode().splitlines())
            except TimeoutError as exc:
                if self.proc.poll() is not None:
                    out = self.proc.stdout.read()  # type: ignore[union-attr]
                    raise AssertionError(f"swarmd exited {self.proc.returncode}: {out}") from exc
        raise AssertionError(f"no {prefix} in {self.messages}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.notify.close()


def test_ready_status_chat_and_sigterm_drain(short_tmp: Path, key_file: Path,
                                             tiny_models: dict[str, Path]) -> None:
    d = Daemon(short_tmp, "--model", str(tiny_models["llama"]), "--key-file", str(key_file))
    try:
        d.wait_for("READY=1")
        assert any(m.startswith("STATUS=") for m in d.messages)
        st = swarmctl("status", sock=d.sock)
        assert st.returncode == 0, st.stderr
        assert "serving" in st.stdout and "tiny-llama" in st.stdout
        doc = json.loads(swarmctl("status", "--json", sock=d.sock).stdout)
        assert doc["node_id"] == "d1" and doc["layers"] == [0, 4]
        chat = swarmctl("chat", "hello", "--max-tokens", "8", "--temperature", "0", sock=d.sock)
        assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr

        # SIGTERM while a stream is in flight: the stream still completes, then the daemon exits.
        body = {"prompt": "The", "max_tokens": 300, "temperature": 0}
        with uds_client(str(d.sock)) as c:
            want = c.post("/v1/completions", json=body).json()
        events: list[str] = []

        def consume() -> None:
            with uds_client(str(d.sock)) as c, c.stream(
                "POST", "/v1/completions", json=dict(body, stream=True)
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line)

        reader = threading.Thread(target=consume)
        reader.start()
        deadline = time.monotonic() + 30
        while len(events) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for("STOPPING=1", timeout=10)
        reader.join(30)
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[6:])["choices"][0] for e in events[:-1]]
        assert "".join(ch["text"] for ch in chunks) == want["choices"][0]["text"]  # nothing lost
        assert chunks[-1]["finish_reason"] == want["choices"][0]["finish_reason"]
        assert d.proc.wait(30) == 0
        assert not d.sock.exists()
        assert swarmctl("status", sock=d.sock).returncode == 2  # unreachable now
    finally:
        d.close()


def test_refuses_to_start_without_key(short_tmp: Path, tiny_models: dict[str, Path]) -> None:
    out = subprocess.run([sys.executable, "-m", "swarmd.cli.swarmd_main", "--no-mdns", "--model",
                          str(tiny_models["llama"]), "--socket", str(short_tmp / "s.sock")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "swarm key" in out.stderr and "--insecure" in out.stderr


def test_refuses_world_readable_key(short_tmp: Path, key_file: Path) -> None:
    key_file.chmod(0o644)
    out = subprocess.run([sys.executable, "-m", "swarmd.cli.swarmd_main", "--no-mdns", "--key-file", str(key_file),
                          "--socket", str(short_tmp / "s.sock")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "chmod 600" in out.stderr


def test_missing_model_path_is_a_clear_error(short_tmp: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "swarmd.cli.swarmd_main", "--no-mdns", "--insecure", "--model",
                          str(short_tmp / "nope"), "--socket", str(short_tmp / "s.sock")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "model path does not exist" in out.stderr
    assert not (short_tmp / "s.sock").exists()


def test_print_config_names_sources(short_tmp: Path) -> None:
    cfg = short_tmp / "swarmd.toml"
    cfg.write_text('threads = 3\nlayers = "0:2"\n')
    out = subprocess.run([sys.executable, "-m", "swarmd.cli.swarmd_main", "--config", str(cfg), "--threads", "5",
                          "--print-config"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, SWARMD_DTYPE="bfloat16"))
    assert out.returncode == 0, out.stderr
    lines = {ln.split(" = ")[0]: ln for ln in out.stdout.splitlines()}
    assert "5" in lines["threads"] and "flag --threads" in lines["threads"]
    assert "0:2" in lines["layers"] and f"file {cfg}" in lines["layers"]
    assert "bfloat16" in lines["dtype"] and "env SWARMD_DTYPE" in lines["dtype"]
    assert "default" in lines["device"]


def test_swarmctl_never_imports_torch() -> None:
    code = ("import sys, swarmd.cli.swarmctl as m; m.build_parser(); "
            "bad = [k for k in ('torch', 'transformers', 'aiohttp', 'numpy') if k in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
