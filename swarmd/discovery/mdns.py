"""mDNS (DNS-SD) announcement and browsing of ``_swarmd._tcp.local.`` with python-zeroconf.

The TXT record is small and public: ``txtvers``, the protocol version, the node id, a short id of the
swarm key (``key_id``, which reveals nothing about the key) and the port. Services of another swarm
(another key id) are not contacted. Every candidate goes to ``on_candidate``; the mesh then connects and
the handshake decides. Every swarmd service heard (of this swarm or not, our own id from another host
too) is kept as a ``Sighting`` for ``swarmctl doctor``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..wire.messages import PROTOCOL_VERSION

log = logging.getLogger(__name__)

SERVICE_TYPE = "_swarmd._tcp.local."
TXT_VERSION = "1"
MAX_INSTANCE = 63
MAX_SIGHTINGS = 128  # services remembered for diagnosis; the oldest is forgotten first


@dataclass(frozen=True)
class Candidate:
    node_id: str
    addr: str  # "HOST:PORT"


def instance_name(node_id: str) -> str:
    """A DNS-SD instance label of at most 63 bytes (UTF-8)."""
    raw = node_id.encode()[:MAX_INSTANCE]
    return raw.decode(errors="ignore") or "swarmd"


def txt_record(node_id: str, key_id: str, port: int) -> dict[str, str]:
    return {"txtvers": TXT_VERSION, "proto": str(PROTOCOL_VERSION), "id": node_id[:128], "key": key_id,
            "port": str(port)}


@dataclass(frozen=True)
class Sighting:
    """A swarmd service heard on the LAN, whatever its swarm: what ``swarmctl doctor`` reasons about."""

    name: str  # the DNS-SD instance name
    node_id: str
    addresses: tuple[str, ...]
    port: int
    key_id: str
    proto: str
    seen_at: float  # time.time()


def sighting_of(name: str, props: dict[bytes, bytes | None], addresses: list[str], port: int) -> Sighting:
    def get(k: str) -> str:
        v = props.get(k.encode())
        return v.decode(errors="replace")[:128] if isinstance(v, bytes) else ""

    return Sighting(name[:255], get("id"), tuple(addresses[:8]), port, get("key")[:64], get("proto")[:8], time.time())


def parse_txt(props: dict[bytes, bytes | None], addresses: list[str], port: int, *, own_id: str,
              key_id: str) -> Candidate | None:
    """A candidate from a resolved service, or None when it is us, of another swarm, or malformed."""

    def get(k: str) -> str:
        v = props.get(k.encode())
        return v.decode(errors="replace") if isinstance(v, bytes) else ""

    if get("txtvers") != TXT_VERSION or get("proto") != str(PROTOCOL_VERSION):
        return None
    node_id = get("id")
    if not node_id or node_id == own_id or get("key") != key_id or not 0 < port < 65536:
        return None
    usable: list[str] = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if ip.version == 4:  # IPv4 first: what the peer listener binds by default
            usable.insert(0, str(ip))
        elif not ip.is_link_local:
            usable.append(f"[{ip}]")
    if not usable:
        return None
    return Candidate(node_id, f"{usable[0]}:{port}")


class MdnsDiscovery:
    """Owns one AsyncZeroconf: registers this node, browses for others, resolves them in owned tasks."""

    def __init__(self, node_id: str, key_id: str, port: int, on_candidate: Callable[[Candidate], object],
                 addresses: list[str] | None = None) -> None:
        self.node_id = node_id
        self.key_id = key_id
        self.port = port
        self.on_candidate = on_candidate
        self.addresses = addresses
        self._zc: object | None = None
        self._browser: object | None = None
        self._info: object | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.seen: dict[str, Candidate] = {}
        self.sightings: OrderedDict[str, Sighting] = OrderedDict()  # instance name -> what it announced
        self.registered = False
        self.started_at = time.monotonic()

    async def start(self) -> None:
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        self._state_added = (ServiceStateChange.Added, ServiceStateChange.Updated)
        self._state_removed = ServiceStateChange.Removed
        self.started_at = time.monotonic()
        zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._zc = zc
        addrs = self.addresses or _local_addresses()
        info = AsyncServiceInfo(
            SERVICE_TYPE, f"{instance_name(self.node_id)}.{SERVICE_TYPE}", port=self.port,
            properties=txt_record(self.node_id, self.key_id, self.port),
            parsed_addresses=addrs, server=f"{instance_name(self.node_id)}.local.",
        )
        self._info = info
        await zc.async_register_service(info, allow_name_change=True)
        self.registered = True
        self._browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        log.info("mDNS: announcing %s on %s port %d", SERVICE_TYPE, ",".join(addrs), self.port)

    def _on_change(self, zeroconf: object, service_type: str, name: str, state_change: object) -> None:
        if state_change == self._state_removed:  # a goodbye, or its records expired: forget the sighting
            self.sightings.pop(name, None)
            return
        if state_change not in self._state_added:
            return
        task = asyncio.ensure_future(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 3000):  # type: ignore[attr-defined]
            return
        props, addresses, port = dict(info.properties), info.parsed_addresses(), int(info.port or 0)
        if self._info is None or name != self._info.name:  # type: ignore[attr-defined]
            self.sightings[name] = sighting_of(name, props, addresses, port)
            self.sightings.move_to_end(name)
            while len(self.sightings) > MAX_SIGHTINGS:
                self.sightings.popitem(last=False)
        cand = parse_txt(props, addresses, port, own_id=self.node_id, key_id=self.key_id)
        if cand is None:
            return
        if self.seen.get(cand.node_id) != cand:
            self.seen[cand.node_id] = cand
            log.info("mDNS: found %s at %s", cand.node_id, cand.addr)
        self.on_candidate(cand)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        zc = self._zc
        if zc is None:
            return
        self._zc = None
        if self._browser is not None:
            await self._browser.async_cancel()  # type: ignore[attr-defined]
        if self._info is not None:
            await zc.async_unregister_service(self._info)  # type: ignore[attr-defined]
        await zc.async_close()  # type: ignore[attr-defined]


def _local_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of this host's interfaces (ifaddr comes with zeroconf)."""
    import ifaddr

    out = {str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
           if isinstance(ip.ip, str) and not ip.ip.startswith("127.")}
    return sorted(out) or ["127.0.0.1"]
