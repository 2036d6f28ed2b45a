"""Run MdnsDiscovery for a while inside a namespace; print each candidate found as a JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from swarmd.discovery.mdns import Candidate, MdnsDiscovery


async def main(args: argparse.Namespace) -> None:
    def found(c: Candidate) -> None:
        print(json.dumps({"node_id": c.node_id, "addr": c.addr}), flush=True)

    disc = MdnsDiscovery(args.node, args.key, args.port, found, addresses=[args.addr])
    await disc.start()
    try:
        await asyncio.sleep(args.seconds)
    finally:
        await disc.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for name in ("--node", "--key", "--addr"):
        ap.add_argument(name, required=True)
    ap.add_argument("--port", type=int, default=7070)
    ap.add_argument("--seconds", type=float, default=6.0)
    asyncio.run(main(ap.parse_args()))
    sys.exit(0)
