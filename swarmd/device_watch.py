"""A tensor-parallel node's guard: when one of its GPU worker processes dies, the span it shared cannot
run another step (a collective would wait for ever), so the node leaves the swarm at once and exits
non-zero; its entries' sessions fail over to replicas and systemd restarts it (``Restart=on-failure``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

EXIT_DEVICE_LOST = 70  # EX_SOFTWARE: systemd's Restart=on-failure starts the node again
POLL_S = 0.5
LEAVE_TIMEOUT_S = 3.0


def lost_workers(node: Node) -> list[str]:
    out = []
    for slot in list(node.host.slots.values()):
        if slot.engine is not None:
            out += [f"{w} of span {slot.span[0]}:{slot.span[1]}" for w in slot.engine.stage.dead()]
    return out


async def watch_workers(node: Node) -> None:
    """Owned by the node while it serves; ends the process when a worker is lost."""
    while True:
        await asyncio.sleep(POLL_S)
        lost = lost_workers(node)
        if not lost:
            continue
        log.error("tensor-parallel worker lost: %s. This node leaves the swarm and exits (%d) so that its spans "
                  "fail over; its engine thread may be stuck in a collective, so no drain is attempted",
                  "; ".join(lost), EXIT_DEVICE_LOST)
        try:
            node.notifier.stopping()
            for slot in list(node.host.slots.values()):
                if slot.engine is not None:
                    slot.engine.stage.kill_workers()
            if node.membership is not None:
                async with asyncio.timeout(LEAVE_TIMEOUT_S):
                    await node.membership.stop(leave=True)
        except BaseException as exc:  # noqa: BLE001 - the exit below happens whatever the leave did
            log.warning("leave announcement incomplete: %r", exc)
        finally:
            node.cfg.api.socket.unlink(missing_ok=True)
            logging.shutdown()
            os._exit(EXIT_DEVICE_LOST)
