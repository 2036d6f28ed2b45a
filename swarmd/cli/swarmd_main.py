"""``swarmd``: the daemon's entry point. Reads config, sets up logging and the loop, runs one Node."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..config import NCCL_SAFE_ENV, NodeConfig
from ..errors import SwarmdError
from ..keys import find_key, read_key_file
from ..wire.crypto import Keyring
from .settings import describe, load_config

SWITCH_INTERVAL_S = 0.0002
log = logging.getLogger("swarmd")


def _environment_defaults() -> None:
    """Set before torch is imported; a value already in the environment wins."""
    # OpenMP threads sleep right after each parallel region instead of spinning: a stage waits on the
    # network between steps, and spinning threads would steal the cores of the other processes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Nothing is ever fetched from a model hub; keep third-party progress bars out of the journal.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.update(NCCL_SAFE_ENV)  # always, not a default: inherited by tensor-parallel workers too


async def _amain(cfg: NodeConfig, keyring: Keyring | None) -> None:
    from ..node import Node

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Node(cfg, keyring).run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg, origin, args = load_config(argv)
    except SwarmdError as exc:
        print(f"swarmd: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(describe(cfg, origin))
        return 0
    logging.basicConfig(level=cfg.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        key = find_key(cfg.net.key_file)
        old_keys = [read_key_file(p) for p in cfg.net.old_key_files]
    except SwarmdError as exc:
        log.error("%s", exc)
        return 2
    if key is None and not cfg.net.insecure:
        log.error("no swarm key: pass --key-file FILE (create one with 'swarmctl keygen'), "
                  "or --insecure to run without authentication")
        return 2
    if key is None:
        log.warning("RUNNING INSECURE: no swarm key, peers are not authenticated and traffic is not encrypted")
    _environment_defaults()
    # The engine thread takes the GIL back several times a step (each torch call releases it); each time it
    # waits up to the switch interval behind the event loop's per-token work (5 ms by default). Emulated
    # 7 ms forwards, 64 sessions, 2-core CPU: 5 ms 5,750 tokens/s, 0.5 ms 6,400; a GPU graph step of 7.9 ms
    # took 12 ms in the daemon at 0.5 ms (a GIL hand-off per row then; now one per step or so).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    try:
        runner(_amain(cfg, Keyring([key, *old_keys]) if key is not None else None))
    except SwarmdError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
