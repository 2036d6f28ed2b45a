"""swarmd under systemd: the sd_notify sequence (STATUS… READY WATCHDOG… STOPPING) of the real daemon, the unit
file (systemd-analyze verify and security), the example config, and scripts/install.sh into a temp root."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import shared_cache_dir

from swarmd.cli.settings import OPTIONS, load_config
from swarmd.keys import decode_key, generate_key

pytestmark = pytest.mark.daemon

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "swarmd.service"
EXAMPLE_CONFIG = REPO / "systemd" / "swarmd.toml"
INSTALL = REPO / "scripts" / "install.sh"
WATCHDOG_S = 1.0


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's: every datagram kept with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.lines: list[tuple[float, str]] = []

    def poll(self) -> None:
        try:
            while True:
                data = self.sock.recv(4096)
                now = time.monotonic()
                self.lines.extend((now, line) for line in data.decode().splitlines())
        except TimeoutError:
            pass

    def wait(self, proc: subprocess.Popen[str], done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s: {self.names()}")
            if proc.poll() is not None:
                self.poll()
                if done():
                    return
                raise AssertionError(f"swarmd exited {proc.returncode} before {what}: {proc.stdout.read()}")  # type: ignore[union-attr]
            self.poll()

    def names(self) -> list[str]:
        return [line for _, line in self.lines]

    def close(self) -> None:
        self.sock.close()


def test_notify_sequence_ready_watchdog_stopping(short_tmp: Path, key_file: Path,
                                                 tiny_models: dict[str, Path]) -> None:
    notify = NotifyListener(short_tmp / "notify.sock")
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_PID"}
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)),
               SWARMD_CACHE_DIR=str(shared_cache_dir()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmd.cli.swarmd_main", "--socket", str(short_tmp / "api.sock"), "--node-id", "w1",
         "--no-mdns", "--drain-timeout", "5", "--model", str(tiny_models["llama"]), "--key-file", str(key_file)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        names = notify.names
        notify.wait(proc, lambda: "READY=1" in names(), 120, "READY=1")
        ready = names().index("READY=1")
        notify.wait(proc, lambda: names()[ready:].count("WATCHDOG=1") >= 3, 20, "three WATCHDOG=1 after READY=1")
        proc.send_signal(signal.SIGTERM)
        notify.wait(proc, lambda: "STOPPING=1" in names(), 20, "STOPPING=1")
        assert proc.wait(60) == 0, proc.stdout.read()  # type: ignore[union-attr]
        notify.poll()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()

    seq = names()
    stopping = seq.index("STOPPING=1")
    loading = [m for m in seq[:ready] if m.startswith("STATUS=")]
    assert loading and loading[0].startswith("STATUS=loading"), seq  # STATUS= lines while loading
    assert "WATCHDOG=1" not in seq[:ready], seq  # the watchdog starts once the node serves
    assert seq[ready:stopping].count("WATCHDOG=1") >= 2, seq
    assert seq.count("READY=1") == 1 and seq.count("STOPPING=1") == 1
    assert ready < stopping
    # Pings come every WatchdogSec/3: never a gap that would make systemd act.
    pings = [t for t, m in notify.lines if m == "WATCHDOG=1"]
    stop_at = notify.lines[stopping][0]
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False) if b <= stop_at]
    assert gaps and max(gaps) < WATCHDOG_S, gaps


# --- the unit file --------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_notify_watchdog_and_hardening() -> None:
    s = unit_settings(UNIT.read_text())
    want = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "DynamicUser": "yes",
        "StateDirectory": "swarmd", "CacheDirectory": "swarmd", "RuntimeDirectory": "swarmd",
        "ConfigurationDirectory": "swarmd", "LoadCredential": "swarm.key:/etc/swarmd/swarm.key",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK", "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "", "ExecStart": "/opt/swarmd/venv/bin/swarmd",
    }
    for key, value in want.items():
        assert s.get(key) == [value], (key, s.get(key))
    watchdog = re.fullmatch(r"(\d+)s", s["WatchdogSec"][0])
    assert watchdog and 10 <= int(watchdog.group(1)) <= 120
    assert int(s["TimeoutStopSec"][0]) > 30  # above the default --drain-timeout
    assert "DeviceAllow" in UNIT.read_text()  # the note on GPU device access


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """CI (Debian, root) must run these checks: install systemd there when it is missing; skip only elsewhere."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("systemd-analyze is not installed and we are not root to install it")
    if shutil.which("apt-get") is None:
        pytest.fail("systemd-analyze is missing and apt-get is not available: install systemd's tools")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    out = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"], env=env,
                         capture_output=True, text=True, timeout=900)
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail(f"systemd-analyze is missing and `apt-get install systemd` did not provide it: {out.stderr}")
    return found


def swarmd_binary() -> Path:
    beside = Path(sys.executable).with_name("swarmd")
    found = beside if beside.exists() else Path(shutil.which("swarmd") or "")
    assert found.is_file(), "the swarmd entry point is not installed (pip install -e .)"
    return found


@pytest.fixture()
def unit_copy(short_tmp: Path) -> Path:
    """The unit with ExecStart= pointing at this environment's swarmd (verify checks that it exists)."""
    path = short_tmp / "swarmd.service"
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={swarmd_binary()}", UNIT.read_text())
    path.write_text(text)
    return path


def test_systemd_analyze_verify(systemd_analyze: str, unit_copy: Path) -> None:
    out = subprocess.run([systemd_analyze, "verify", "--man=no", str(unit_copy)], capture_output=True, text=True,
                         timeout=120)
    about_unit = [ln for ln in (out.stdout + out.stderr).splitlines() if "swarmd" in ln]
    assert out.returncode == 0 and not about_unit, out.stdout + out.stderr


def test_systemd_analyze_security_score(systemd_analyze: str, unit_copy: Path) -> None:
    out = subprocess.run([systemd_analyze, "security", "--offline=true", "--no-pager", str(unit_copy)],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 4.0, out.stdout


# --- the example config --------------------------------------------------------------------------------

_KEY_LINE = re.compile(r"^(#\s*)?([a-z_]+) = ")


def test_example_config_lists_every_option() -> None:
    keys = [m.group(2) for line in EXAMPLE_CONFIG.read_text().splitlines() if (m := _KEY_LINE.match(line))]
    assert sorted(keys) == sorted(o.key for o in OPTIONS), "systemd/swarmd.toml must list each option once"
    text = EXAMPLE_CONFIG.read_text()
    for o in OPTIONS:  # each option's help text (its start at least) is there too
        assert o.help[:20] in text, (o.key, o.help)


def test_example_config_loads(short_tmp: Path) -> None:
    cfg, origin, _ = load_config(["--config", str(EXAMPLE_CONFIG)], env={})
    assert cfg.net.listen == "0.0.0.0:7070" and origin["listen"].startswith("file ")
    assert cfg.net.key_file is None  # the service reads the systemd credential
    # Every commented example is valid too: uncomment them all and load again.
    lines = [re.sub(r"^#\s*(?=[a-z_]+ = )", "", ln) for ln in EXAMPLE_CONFIG.read_text().splitlines()]
    full = short_tmp / "all.toml"
    full.write_text("\n".join(lines) + "\n")
    cfg, origin, _ = load_config(["--config", str(full)], env={})
    assert all(origin[o.key].startswith("file ") for o in OPTIONS)
    assert cfg.net.peers == ("10.0.0.2:7070", "10.0.0.3:7070")


# --- scripts/install.sh ---------------------------------------------------------------------------------


def install(root: Path, *args: str, venv: bool = False, rc: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "SWARMCTL")}
    env["PYTHON"] = sys.executable
    out = subprocess.run(["bash", str(INSTALL), "--root", str(root), *([] if venv else ["--no-venv"]), *args],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == rc, out.stdout + out.stderr
    return out


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}


def test_install_into_root(short_tmp: Path) -> None:
    root = short_tmp / "root"
    install(root)
    etc = root / "etc" / "swarmd"
    unit = root / "etc" / "systemd" / "system" / "swarmd.service"
    assert unit.read_bytes() == UNIT.read_bytes() and stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert (etc / "swarmd.toml").read_bytes() == EXAMPLE_CONFIG.read_bytes()
    key = etc / "swarm.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    decode_key(key.read_text(), str(key))  # a valid generated key
    if os.geteuid() == 0 and shutil.which("systemd-sysusers"):
        assert re.search(r"(?m)^swarmd:", (root / "etc" / "passwd").read_text())
        assert re.search(r"(?m)^swarmd:", (root / "etc" / "group").read_text())
    if shutil.which("systemctl"):
        assert (root / "etc/systemd/system/multi-user.target.wants/swarmd.service").is_symlink()
    first = snapshot(root)

    # Another key for an installed swarm: refused (exit 1), the installed key untouched.
    other = short_tmp / "other.key"
    other.write_text(generate_key() + "\n")
    out = install(root, "--key", str(other), rc=1)
    assert "keeping it" in out.stderr and key.read_bytes() == first["etc/swarmd/swarm.key"][1]
    # Again, with a locally edited config: nothing is overwritten, the unit is refreshed.
    (etc / "swarmd.toml").write_text('log_level = "DEBUG"\n')
    unit.write_text("stale\n")
    install(root)
    assert (etc / "swarmd.toml").read_text() == 'log_level = "DEBUG"\n'
    assert unit.read_bytes() == UNIT.read_bytes()
    assert key.read_bytes() == first["etc/swarmd/swarm.key"][1]
    second = snapshot(root)
    install(root)
    assert snapshot(root) == second  # idempotent
    # A venv cannot be built under --root (it records its own path); a key that is a symlink is refused.
    assert "--no-venv" in install(root, venv=True, rc=2).stderr
    key.unlink()
    key.symlink_to(other)
    assert "symbolic link" in install(root, rc=1).stderr and key.is_symlink()


def test_install_copies_a_given_key(short_tmp: Path) -> None:
    root = short_tmp / "root"
    given = short_tmp / "given.key"
    given.write_text(generate_key() + "\n")
    given.chmod(0o644)
    install(root, "--key", str(given))
    key = root / "etc" / "swarmd" / "swarm.key"
    assert key.read_bytes() == given.read_bytes() and stat.S_IMODE(key.stat().st_mode) == 0o600
