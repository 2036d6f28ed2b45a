"""Read configuration at the edge: flags > ``SWARMD_*`` environment > TOML file > defaults.

One table lists every option once; argparse flags, environment names and TOML keys derive from it,
and ``--print-config`` reports where each effective value came from.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import (
    ApiConfig,
    EngineConfig,
    ModelConfig,
    NetConfig,
    NodeConfig,
    default_cache_dir,
    default_socket_path,
    parse_hostport,
    parse_size,
)
from ..errors import ConfigError


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected a boolean, got {text!r}")


def _hostport(text: str) -> str:
    parse_hostport(text)
    return text


def _level(text: str) -> str:
    up = text.upper()
    if up not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"unknown log level {text!r}")
    return up


def _dtype(text: str) -> str:
    if text not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"unknown dtype {text!r}; choose float32, bfloat16 or float16")
    return text


def _gossip(text: str) -> str:
    if text not in ("lan", "local"):
        raise ConfigError(f"unknown gossip profile {text!r}; choose lan or local")
    return text


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"expected a share between 0 and 1, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ConfigError(f"expected a whole number of at least 1, got {text!r}")
    return value


@dataclass(frozen=True)
class Option:
    flag: str  # "--memory-budget"
    section: str  # "model", "engine", "api", "net" or "" for NodeConfig itself
    field: str
    parse: Callable[[str], Any]
    help: str
    kind: str = "value"  # "value", "bool" (store_true flag), "list" (repeatable)

    @property
    def key(self) -> str:  # TOML key
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return "SWARMD_" + self.key.upper()


OPTIONS: tuple[Option, ...] = (
    Option("--model", "model", "source", str, "transformers dir, .gguf file, smollm2-135m-instruct or random:CONFIG"),
    Option("--seed", "model", "seed", int, "seed for random:CONFIG weights"),
    Option("--cache-dir", "model", "cache_dir", Path, "where converted GGUF spans are cached"),
    Option("--layers", "engine", "layers", str, "span START:END held here, auto or none"),
    Option("--device", "engine", "device", str, "cpu, cuda or cuda:N"),
    Option("--dtype", "engine", "dtype", _dtype, "float32, bfloat16 or float16"),
    Option("--threads", "engine", "threads", int, "torch threads (0: torch's default)"),
    Option("--tensor-parallel", "engine", "tensor_parallel", _positive,
           "split each span over this many GPUs of this node (cuda:N, N+1, ...; 1: off)"),
    Option("--memory-budget", "engine", "memory_budget", parse_size, "bytes for weights + KV cache, e.g. 4GiB"),
    Option("--kv-budget", "engine", "kv_default_bytes", parse_size, "KV cache bytes when no memory budget"),
    Option("--kv-wait", "engine", "kv_wait_s", float, "seconds a session waits for KV memory before 503"),
    Option("--step-timeout", "engine", "step_timeout_s", float, "upper bound on one forward step (s)"),
    Option("--max-batch-tokens", "engine", "max_batch_tokens", int,
           "most positions in one batched forward (continuous batching)"),
    Option("--no-cuda-graphs", "engine", "cuda_graphs", lambda s: not _bool(s),
           "on a GPU, launch decode steps op by op instead of replaying CUDA graphs", kind="bool"),
    Option("--graph-max-batch", "engine", "graph_max_batch", int,
           "largest decode batch a CUDA graph is captured for (bigger batches run eagerly)"),
    Option("--socket", "api", "socket", Path, "local API Unix socket"),
    Option("--api-listen", "api", "listen", _hostport, "optional TCP API listener HOST:PORT"),
    Option("--api-token-file", "api", "token_file", Path, "bearer token file for --api-listen"),
    Option("--max-request-size", "api", "max_body_bytes", parse_size, "largest request body"),
    Option("--max-sessions", "api", "max_sessions", int, "concurrent generations accepted here"),
    Option("--max-sessions-per-client", "api", "max_sessions_per_client", int,
           "concurrent generations one TCP API client may hold (429 beyond)"),
    Option("--client-write-timeout", "api", "client_write_timeout_s", float,
           "seconds a streaming client may read nothing before it is dropped"),
    Option("--default-max-tokens", "api", "default_max_tokens", int, "max_tokens when a request has none"),
    Option("--listen", "net", "listen", _hostport, "peer-to-peer TCP address"),
    Option("--peer", "net", "peers", _hostport, "seed peer HOST:PORT (repeatable)", kind="list"),
    Option("--no-mdns", "net", "mdns", lambda s: not _bool(s), "disable mDNS discovery", kind="bool"),
    Option("--key-file", "net", "key_file", Path, "swarm key file (from swarmctl keygen)"),
    Option("--insecure", "net", "insecure", _bool, "run without a swarm key", kind="bool"),
    Option("--old-key-file", "net", "old_key_files", Path, "older swarm key still accepted (repeatable)",
           kind="list"),
    Option("--prefill-chunk", "net", "prefill_chunk", int, "prompt positions per pipelined prefill chunk"),
    Option("--session-idle", "net", "session_idle_s", float, "seconds before an idle stage session is freed"),
    Option("--stall-timeout", "net", "stall_timeout_s", float,
           "shortest wait for a decode token before its chain counts as failed (s)"),
    Option("--recovery-timeout", "net", "recovery_timeout_s", float,
           "how long a failed generation is replayed onto other chains before the error is returned (0: off)"),
    Option("--gossip", "net", "gossip", _gossip, "gossip timings: lan (default) or local (loopback swarms)"),
    Option("--settle", "net", "settle_s", float, "seconds placement waits for the view to settle"),
    Option("--seconds-per-layer", "engine", "seconds_per_layer", float,
           "this node's speed for placement (default: measured at start)"),
    Option("--spot-check", "net", "spot_check", _rate,
           "share of sessions whose outputs a second replica verifies (0-1; 0: off)"),
    Option("--probation-steps", "net", "probation_steps", int,
           "checked steps a node must pass before it is spot-checked only at --spot-check's rate"),
    Option("--quarantine", "net", "quarantine_s", float, "seconds a member found computing wrong stays out"),
    Option("--spot-check-seed", "net", "spot_check_seed", int, "seed of the spot-check draws (tests)"),
    Option("--identity-file", "net", "identity_file", Path,
           "this node's Ed25519 identity key (default: state dir, per --node-id)"),
    Option("--test-corrupt-output", "engine", "corrupt_output", _bool,
           "TESTS ONLY: negate every output this node computes", kind="bool"),
    Option("--node-id", "", "node_id", str, "this node's id (default: hostname + random suffix)"),
    Option("--log-level", "", "log_level", _level, "DEBUG, INFO, WARNING or ERROR"),
    Option("--drain-timeout", "", "drain_timeout_s", float, "seconds in-flight sessions get on shutdown"),
)
_BY_KEY = {o.key: o for o in OPTIONS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarmd", description="swarmd: serve one LLM from a swarm of machines")
    p.add_argument("--config", type=Path, default=None, help="TOML config file")
    p.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    for o in OPTIONS:
        if o.kind == "bool":
            p.add_argument(o.flag, action="store_const", const="true", default=None, help=o.help)
        elif o.kind == "list":
            p.add_argument(o.flag, action="append", default=None, help=o.help)
        else:
            p.add_argument(o.flag, default=None, help=o.help)
    return p


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(_BY_KEY))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}")
    return data


def _toml_value(o: Option, value: Any, where: str) -> Any:
    try:
        if o.kind == "list":
            if not isinstance(value, list):
                raise ConfigError(f"{o.key} must be a list of strings")
            return tuple(o.parse(str(v)) for v in value)
        if o.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{o.key} must be true or false")
            return o.parse(str(value))
        return o.parse(str(value))
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{where}: {o.key}: {exc}") from None


def _text_value(o: Option, text: str | Sequence[str], where: str) -> Any:
    try:
        if o.kind == "list":
            items = text if isinstance(text, list) else [t for t in str(text).split(",") if t.strip()]
            return tuple(o.parse(t.strip()) for t in items)
        return o.parse(str(text))
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def default_config_files(env: Mapping[str, str]) -> list[Path]:
    user = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "swarmd" / "swarmd.toml"
    return [p for p in (Path("/etc/swarmd/swarmd.toml"), user) if p.is_file()]


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[NodeConfig, dict[str, str], argparse.Namespace]:
    """Return the effective config, where each value came from, and the parsed flags."""
    env = dict(os.environ) if env is None else dict(env)
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    config_path = args.config or (Path(env["SWARMD_CONFIG"]) if env.get("SWARMD_CONFIG") else None)
    files = [config_path] if config_path else default_config_files(env)
    for path in files:
        for key, raw in _from_toml(path).items():
            values[key] = _toml_value(_BY_KEY[key], raw, str(path))
            origin[key] = f"file {path}"
    for o in OPTIONS:
        if o.env in env and env[o.env] != "":
            values[o.key] = _text_value(o, env[o.env], o.env)
            origin[o.key] = f"env {o.env}"
        given = getattr(args, o.key)
        if given is not None:
            values[o.key] = _text_value(o, given, o.flag)
            origin[o.key] = f"flag {o.flag}"
    sections: dict[str, dict[str, Any]] = {"model": {}, "engine": {}, "api": {}, "net": {}, "": {}}
    for key, value in values.items():
        o = _BY_KEY[key]
        sections[o.section][o.field] = value
    if "socket" not in values:
        sections["api"]["socket"] = default_socket_path(env)
    if "cache_dir" not in values:
        sections["model"]["cache_dir"] = default_cache_dir(env)
    try:
        cfg = NodeConfig(
            **sections[""],
            model=replace(ModelConfig(), **sections["model"]),
            engine=replace(EngineConfig(), **sections["engine"]),
            api=replace(ApiConfig(), **sections["api"]),
            net=replace(NetConfig(), **sections["net"]),
        )
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    for o in OPTIONS:
        origin.setdefault(o.key, "default")
    return cfg, origin, args


def describe(cfg: NodeConfig, origin: Mapping[str, str]) -> str:
    """The effective configuration as TOML-like lines, each with its source."""
    lines = []
    for o in OPTIONS:
        section = getattr(cfg, o.section) if o.section else cfg
        value = getattr(section, o.field)
        if o.key == "no_mdns":
            value = not value
        shown = [str(v) for v in value] if isinstance(value, tuple) else (
            str(value) if isinstance(value, Path) else value)
        lines.append(f"{o.key} = {_toml_repr(shown)}  # {origin[o.key]}")
    return "\n".join(lines)


def _toml_repr(value: Any) -> str:
    if value is None:
        return '""  # unset'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_repr(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
