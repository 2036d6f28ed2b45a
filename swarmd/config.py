"""Frozen configuration dataclasses. Read (TOML, env, flags) only at the edge: ``cli/settings.py``.

Every component receives its own section, so tests build one with short timings directly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


# NVLink multicast (NVLS) stays off in the daemon and every child process: it needs fabric-manager support that
# shared and virtualised hosts often lack, and a failed multicast setup can hang the first collective.
NCCL_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class ModelConfig:
    # Model source: a transformers directory, a .gguf file, "smollm2-135m-instruct" or "random:CONFIG".
    source: str = DEFAULT_MODEL
    # Seed for random:CONFIG weights; every node derives identical weights for its own span from it.
    seed: int = 0
    # Where converted GGUF spans, configs and tokenizers are cached.
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())


@dataclass(frozen=True)
class EngineConfig:
    # Decoder-layer span held here: "START:END" (pinned), "none" (an entry only) or "auto" (placement decides).
    layers: str = "auto"
    # torch device: "cpu", "cuda" or "cuda:N".
    device: str = "cpu"
    # Weight and activation dtype; None picks float32 on cpu and bfloat16 on cuda.
    dtype: str | None = None
    # torch intra-op threads; 0 leaves torch's default.
    threads: int = 0
    # Devices one span is split over by tensor parallelism (cuda:N, N+1, ... from ``device``; on cpu: processes,
    # for tests). 1: no tensor parallelism.
    tensor_parallel: int = 1
    # Memory for weights plus KV cache in bytes, offered to placement; None: half of the available RAM
    # (80% of free GPU memory on cuda) for placement, and kv_default_bytes for the KV cache.
    memory_budget: int | None = None
    # KV cache budget when no memory budget is given.
    kv_default_bytes: int = 2 * 1024**3
    # How long a new session waits for KV memory before the request gets 503.
    kv_wait_s: float = 0.0
    # Upper bound on one forward step (prefill chunk or decode) before it is reported as failed.
    step_timeout_s: float = 120.0
    # Continuous batching: the most positions (decode tokens plus prefill chunk tokens) of one batched
    # forward; queued prefill chunks of one session are merged up to this size.
    max_batch_tokens: int = 2048
    # On a GPU, decode steps replay CUDA graphs captured at load time (False: every step launches op by op).
    cuda_graphs: bool = True
    # The largest decode batch a graph is captured for (buckets 1, 2, 4, 8, 16, 24, 32, 48, 64, ... up to it);
    # a bigger decode batch runs eagerly.
    graph_max_batch: int = 128
    # Seconds of one decoder layer per decode token, as placement sees this node; None: measure at start.
    seconds_per_layer: float | None = None
    # Tests only: this node negates every output it computes (a dishonest or broken member), so that
    # output verification can be shown to catch it. Never set it on a real node.
    corrupt_output: bool = False


@dataclass(frozen=True)
class ApiConfig:
    # Unix socket of the local API (mode 0660).
    socket: Path = field(default_factory=lambda: default_socket_path())
    # Optional TCP listener "HOST:PORT" for the API; requires token_file.
    listen: str | None = None
    # File holding the bearer token that the TCP listener requires.
    token_file: Path | None = None
    # Largest accepted request body in bytes (413 above it).
    max_body_bytes: int = 1024 * 1024
    # Concurrent generations this node accepts as entry; more get 503 + Retry-After.
    max_sessions: int = 64
    # max_tokens used when a request gives none (capped by the context left).
    default_max_tokens: int = 1024
    # Concurrent generations one client of the TCP listener may hold (by address); more get 429 +
    # Retry-After. Local socket users are trusted (file permissions) and limited by max_sessions only.
    max_sessions_per_client: int = 16
    # A streaming client that reads nothing for this long is dropped and its session freed.
    client_write_timeout_s: float = 30.0


@dataclass(frozen=True)
class NetConfig:
    # Peer-to-peer TCP address (port 0 picks a free port).
    listen: str = "0.0.0.0:0"
    # Static seed peers "HOST:PORT".
    peers: tuple[str, ...] = ()
    # Discover peers with mDNS.
    mdns: bool = True
    # Swarm key file (base64, 32 bytes).
    key_file: Path | None = None
    # Run without a swarm key (loud warning).
    insecure: bool = False
    # Older swarm keys still accepted during a rotation (files, like key_file).
    old_key_files: tuple[Path, ...] = ()
    # Deadline for the whole handshake of a new connection.
    handshake_timeout_s: float = 5.0
    # Deadline for a TCP connect to a peer.
    connect_timeout_s: float = 3.0
    # Deadline for the rest of a frame once its length has arrived, and for a send to drain.
    io_timeout_s: float = 10.0
    # Liveness: a ping this often on every outgoing connection; a connection silent for dead_after_s closes.
    ping_interval_s: float = 2.0
    dead_after_s: float = 8.0
    # A link pings only while it carried ring traffic within this window; idle links stay open silently
    # (SWIM gossip, not link pings, decides who is alive), and the listener closes an inbound
    # connection silent for link_idle_s.
    keepalive_window_s: float = 30.0
    link_idle_s: float = 300.0
    # Reconnect backoff bounds for outgoing connections (doubling with jitter).
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 5.0
    # Incoming connections accepted at once; more are closed immediately.
    max_connections: int = 128
    # Largest frame accepted after the handshake (hidden states of one prefill chunk must fit).
    max_frame_bytes: int = 64 * 1024 * 1024
    # Entry: how long opening a session may take in all. A stage that has not accepted it and answered no
    # ping on our link (pinged at once) for accept_timeout_s is unreachable (partition, frozen):
    # it is left out and another chain tried at once; with no chain left the client gets 503 + Retry-After.
    open_timeout_s: float = 10.0
    accept_timeout_s: float = 0.5
    # Stage: a session with no traffic for this long is closed and its KV cache freed.
    session_idle_s: float = 120.0
    # Prompt positions per prefill chunk sent into the ring (chunks are pipelined across stages).
    prefill_chunk: int = 256
    # Data-plane failure detection: a decode token later than max(stall_timeout_s, 20 expected steps)
    # means its chain failed; the entry then replays the session onto another chain, retrying for up to
    # recovery_timeout_s (0 turns replay off: a failure ends the generation with an error).
    stall_timeout_s: float = 2.0
    recovery_timeout_s: float = 10.0
    # Gossip timings: "lan" (probe every 0.5 s) or "local" (0.1 s; loopback test swarms).
    gossip: str = "lan"
    # Placement waits this long after start (to hear its peers) and after the last change of the view
    # before it loads or drops layers, so a burst of joins causes one rebalance, not several.
    settle_s: float = 2.0
    # Output verification (entry side): the share of sessions whose steps are also computed by a second
    # replica of one of their stages and compared (0 turns it off). A node this entry has not yet seen
    # pass probation_steps checked steps is checked on every session that has a replica to compare with.
    # A member found wrong by a third replica is quarantined for quarantine_s, gossiped to the swarm.
    spot_check: float = 0.0
    probation_steps: int = 32
    quarantine_s: float = 3600.0
    # Seed of the spot-check draws (tests: reproducible choices); None draws from the OS.
    spot_check_seed: int | None = None
    # This node's Ed25519 identity key (created on first start). None: <state dir>/identity-<node id>.key
    # when --node-id is given, else a new key per run (the default node id is new per run too).
    identity_file: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = ""
    log_level: str = "INFO"
    # Time allowed for in-flight sessions to finish on SIGTERM before they are cancelled.
    drain_timeout_s: float = 30.0
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    net: NetConfig = field(default_factory=NetConfig)


# --- defaults that depend on the environment ---------------------------------------------------


def default_socket_path(env: dict[str, str] | None = None) -> Path:
    """``$SWARMD_SOCKET``, else the systemd runtime directory, else ``$XDG_RUNTIME_DIR/swarmd``."""
    env = dict(os.environ) if env is None else env
    if env.get("SWARMD_SOCKET"):
        return Path(env["SWARMD_SOCKET"])
    if env.get("RUNTIME_DIRECTORY"):  # set by systemd's RuntimeDirectory=
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "swarmd.sock"
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "swarmd" / "swarmd.sock"
    if os.geteuid() == 0:
        return Path("/run/swarmd/swarmd.sock")
    return Path(f"/tmp/swarmd-{os.geteuid()}/swarmd.sock")


def default_cache_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("CACHE_DIRECTORY"):  # set by systemd's CacheDirectory=
        return Path(env["CACHE_DIRECTORY"].split(":")[0])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "swarmd"
    return Path.home() / ".cache" / "swarmd"


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=), else ``$XDG_STATE_HOME/swarmd``, else ~/.local/state/swarmd."""
    env = dict(os.environ) if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "swarmd"
    return Path.home() / ".local" / "state" / "swarmd"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(text: str) -> int:
    """``"512MiB"``, ``"2G"``, ``"1024"`` -> bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (examples: 512MiB, 2GiB, 1000000)")
    unit = (m.group(2) or "").lower().removesuffix("b")
    if unit not in _UNITS:
        raise ConfigError(f"unknown size unit in {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    try:
        port = int(port_text) if sep and port_text.isascii() else -1
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", port
