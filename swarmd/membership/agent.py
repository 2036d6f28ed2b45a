"""A gossip-only swarm member without a model: the real transport, handshake and SWIM driver, for
measuring membership at scale (``scripts/bench_gossip.py``) with many cheap processes. Never imports torch.

    python -m swarmd.membership.agent --listen 127.0.0.1:0 --key-file K [--seed HOST:PORT]... [--node-id ID]

Prints JSON lines on stdout: ``ready`` (its address), ``view`` (whenever its member states change, with
the monotonic time, which is shared by every process of the host) and ``bytes`` (wire bytes every second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import NetConfig
from ..keys import read_key_file
from ..transport.connection import WIRE_BYTES
from ..transport.mesh import Mesh
from ..wire.codec import encode_meta
from ..wire.crypto import Keyring
from ..wire.messages import PROTOCOL_VERSION, Hello, Message, NodeMeta, SpanState
from .service import Membership
from .swim import MemberChanged, Swim
from .swim_config import SwimConfig


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    keyring = Keyring([read_key_file(args.key_file)]) if args.key_file else None
    cfg = NetConfig(listen=args.listen, peers=tuple(args.seed or ()), mdns=False, insecure=keyring is None)
    states: dict[str, str] = {}
    membership: Membership | None = None

    def hello(addr: str) -> Hello:
        return Hello(args.node_id, addr, "agent", "none", 0, 0, -1, -1, "none")

    def dispatch(msg: Message, sender: str) -> None:
        if membership is not None:
            membership.receive(msg, sender)

    def changed(change: MemberChanged) -> None:
        m = change.member
        if change.removed:
            states.pop(m.node_id, None)
        else:
            states[m.node_id] = m.state
        counts = {s: sum(1 for v in states.values() if v == s) for s in ("alive", "suspect", "dead", "left")}
        emit("view", **counts, dead_ids=sorted(k for k, v in states.items() if v in ("dead", "left")))

    mesh = Mesh(cfg, keyring, args.node_id, hello, dispatch, lambda node_id: None)
    await mesh.start()
    addr = mesh.advertised
    swim_cfg = SwimConfig.local() if args.gossip == "local" else SwimConfig.lan()
    # A realistic metadata record (what a daemon holding layers publishes), so gossip carries real sizes.
    meta = NodeMeta("0.1.0", PROTOCOL_VERSION, "smollm2-135m-instruct", 30, "cpu", 8 << 30, 4, 0.0012,
                    (SpanState(0, 15, "serving"),), 0, 0, "serving", False)
    membership = Membership(Swim(args.node_id, addr, swim_cfg, meta=encode_meta(meta)), mesh.post, changed,
                            connect=mesh.connect)
    membership.start(cfg.peers)
    emit("ready", addr=addr, node_id=args.node_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            async with asyncio.timeout(1.0):
                await stop.wait()
        except TimeoutError:
            emit("bytes", out=WIRE_BYTES["out"], inb=WIRE_BYTES["in"], sent=dict(membership.sent))
    await membership.stop(leave=True)
    await mesh.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="swarmd-gossip-agent")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--seed", action="append")
    p.add_argument("--node-id", required=True)
    p.add_argument("--key-file", type=Path)
    p.add_argument("--gossip", choices=("lan", "local"), default="lan")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
