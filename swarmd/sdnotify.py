"""systemd's readiness protocol: one datagram per message to ``$NOTIFY_SOCKET``. No dependency.

``WATCHDOG_USEC`` (with ``WATCHDOG_PID``) says how often systemd expects ``WATCHDOG=1``; ``swarmd.watchdog``
sends the pings.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``READY=1``, ``STATUS=…``, ``STOPPING=1``, ``WATCHDOG=1``; a no-op outside systemd."""

    def __init__(self, address: str | None = None, watchdog_s: float | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        if address:
            # A leading '@' names an abstract socket.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_s = watchdog_s if watchdog_s is not None else watchdog_interval()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd wants ``WATCHDOG=1`` (``WatchdogSec=``); None when it wants none."""
        return self._watchdog_s if self.enabled else None

    def send(self, *lines: str) -> bool:
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self._address, exc)
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, like ``sd_watchdog_enabled``: None when unset, not a positive integer,
    or meant for another process (``$WATCHDOG_PID`` set and not this process's id)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    try:
        value = int(usec)
    except ValueError:
        if usec:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if value <= 0:
        return None
    wanted_pid = env.get("WATCHDOG_PID", "")
    if wanted_pid:
        try:
            if int(wanted_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            log.warning("ignoring WATCHDOG_PID=%r: not an integer", wanted_pid)
            return None
    return value / 1_000_000
