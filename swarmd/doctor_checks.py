"""The facts ``swarmctl doctor`` reasons about, gathered inside the daemon (it holds the key, the mDNS
browser and the listener's memory): interfaces, mDNS, and a fresh TCP connection plus handshake to every
address this node could learn peers from. ``doctor.diagnose`` turns them into words.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import NetConfig, parse_hostport
from .errors import AuthError, ConfigError, ProtocolError
from .transport.connection import Connection
from .wire.crypto import Keyring
from .wire.messages import PROTOCOL_VERSION, Hello

if TYPE_CHECKING:
    from .node import Node
    from .transport.mesh import Mesh

PROBE_TIMEOUT_S = 3.0
MAX_PROBES = 32
IFF_UP, IFF_LOOPBACK, IFF_MULTICAST = 0x1, 0x8, 0x1000
SYS_NET = Path("/sys/class/net")


def interfaces() -> list[dict[str, Any]]:
    """Every interface with its flags (from sysfs) and IPv4 addresses (ifaddr, which zeroconf brings)."""
    import ifaddr

    v4: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        v4[adapter.name] = [f"{ip.ip}/{ip.network_prefix}" for ip in adapter.ips if isinstance(ip.ip, str)]
    out = []
    names = sorted({p.name for p in SYS_NET.iterdir()} if SYS_NET.is_dir() else set(v4))
    for name in names:
        try:
            flags = int((SYS_NET / name / "flags").read_text().strip(), 16)
        except (OSError, ValueError):
            flags = IFF_UP | IFF_MULTICAST
        out.append({"name": name, "up": bool(flags & IFF_UP), "loopback": bool(flags & IFF_LOOPBACK),
                    "multicast": bool(flags & IFF_MULTICAST), "ipv4": v4.get(name, [])})
    return out


async def probe(addr: str, cfg: NetConfig, keyring: Keyring | None, mesh: Mesh,
                timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Connect, run the handshake and swap Hellos, as a link would; say how far it got and why it stopped.
    The peer's Hello is judged by the mesh's own rules (identity proof, bans, model), as a link's would be."""
    out: dict[str, Any] = {"addr": addr, "outcome": "error", "detail": "", "node_id": None}
    try:
        host, port = parse_hostport(addr)
    except ConfigError as exc:
        return dict(out, detail=str(exc))
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host.strip("[]"), port)
    except TimeoutError:
        return dict(out, outcome="timeout", detail=f"no answer in {timeout:g} s")
    except ConnectionRefusedError:
        return dict(out, outcome="refused", detail="connection refused")
    except OSError as exc:
        return dict(out, outcome="unreachable", detail=exc.strerror or str(exc))
    out["rtt_ms"] = round((time.monotonic() - started) * 1000, 2)  # one TCP round trip
    conn = Connection(reader, writer, cfg)
    stage = "key"
    try:
        async with asyncio.timeout(timeout):
            await conn.client_handshake(keyring)
            stage = "hello"
            await conn.send(mesh.hello(conn.binding))
            reply = await conn.recv(timeout)
        if not isinstance(reply, Hello):
            return dict(out, outcome="error", detail=f"answered {type(reply).__name__} instead of Hello")
        out["node_id"] = reply.node_id
        if reply.node_id == mesh.node_id:
            if mesh.is_self(reply, conn.binding):
                return dict(out, outcome="self", detail="this node itself")
            return dict(out, outcome="duplicate_id", detail="same node id, another identity key")
        if reply.wall_ms > 0:
            out["clock_skew_s"] = round(reply.wall_ms / 1000 - time.time(), 3)
        why = mesh.judge(reply, conn.binding)
        if why is not None:
            return dict(out, outcome="incompatible", detail=why)
        return dict(out, outcome="ok", model=reply.model)
    except ProtocolError as exc:  # AuthError included: a bad MAC, "requires a key", another version
        outcome = "version" if exc.reason == "version" else "auth" if isinstance(exc, AuthError) else "error"
        return dict(out, outcome=outcome, detail=exc.message)
    except (asyncio.IncompleteReadError, ConnectionError):
        return dict(out, outcome="other_key" if stage == "key" else "refused_hello", detail="closed by the peer")
    except TimeoutError:
        return dict(out, outcome="timeout", detail=f"no {'ServerHello' if stage == 'key' else 'Hello'} within "
                                                   f"{timeout:g} s")
    finally:
        await conn.aclose()


def _targets(node: Node) -> dict[str, list[str]]:
    """Address -> how this node learned of it (seed, mdns, member), its own address left out."""
    own = {node.swim_addr, node.mesh.advertised, node.cfg.net.listen}
    found: dict[str, list[str]] = {}

    def add(addr: str, source: str) -> None:
        if addr and addr not in own and (addr in found or len(found) < MAX_PROBES):
            found.setdefault(addr, [])
            if source not in found[addr]:
                found[addr].append(source)

    for seed in node.cfg.net.peers:
        add(seed, "seed")
    disc = node.discovery
    if disc is not None:  # services of other swarms are reported from mDNS alone, not knocked on
        for s in list(disc.sightings.values()):
            if s.node_id != node.node_id and s.addresses and s.key_id == disc.key_id:
                v4 = [a for a in s.addresses if ":" not in a]
                add(f"{(v4 or list(s.addresses))[0]}:{s.port}", "mdns")
    for peer in node.view.peers.values():
        add(peer.addr, "member")
    return found


def _mdns_facts(node: Node) -> dict[str, Any]:
    disc = node.discovery
    facts: dict[str, Any] = {"enabled": node.cfg.net.mdns, "running": disc is not None,
                             "error": node.discovery_error}
    if disc is not None:
        info = disc._info  # noqa: SLF001 - the registered service's final name (zeroconf may rename it)
        facts.update(name=getattr(info, "name", None), registered=disc.registered,
                     uptime_s=round(time.monotonic() - disc.started_at, 1),
                     addresses=list(getattr(info, "parsed_addresses", lambda: [])()),
                     sightings=[{"node_id": s.node_id, "addresses": list(s.addresses), "port": s.port,
                                 "key_id": s.key_id, "proto": s.proto, "age_s": round(time.time() - s.seen_at, 1)}
                                for s in disc.sightings.values()])
    return facts


async def gather(node: Node) -> dict[str, Any]:
    # Until it has joined, this node's Hello names no listen address (and maybe no model): every peer
    # would refuse it, and remember refusing this host. Probe only once the mesh runs.
    ready = bool(node.swim_addr) and node.loaded is not None
    targets = _targets(node) if ready else {}
    probes = await asyncio.gather(*(probe(addr, node.cfg.net, node.keyring, node.mesh) for addr in targets))
    for p in probes:
        p["sources"] = targets[p["addr"]]
    now = time.time()
    members = []
    for peer in sorted(node.view.peers.values(), key=lambda p: p.node_id):
        skew, mdns = node.mesh.heard.get(peer.node_id, (None, False))
        members.append({"node_id": peer.node_id, "addr": peer.addr, "state": peer.state, "mdns": mdns,
                        "clock_skew_s": None if skew is None else round(skew, 3)})
    return {
        "node_id": node.node_id,
        "state": node.state.value,
        "loading": node._load_progress,  # noqa: SLF001
        "uptime_s": round(time.monotonic() - node._started, 1),  # noqa: SLF001
        "listen": node.swim_addr or node.mesh.advertised,
        "key_id": node.keyring.public_id if node.keyring is not None else "insecure",  # as mDNS announces it
        "protocol": PROTOCOL_VERSION,
        "seeds": list(node.cfg.net.peers),
        "interfaces": await asyncio.to_thread(interfaces),
        "mdns": _mdns_facts(node),
        "members": members,
        "probes": list(probes),
        "probes_skipped": None if ready else "this node is still starting (it has not joined yet)",
        "refusals": [{"host": host, "age_s": round(now - at, 1), "reason": label, "message": msg}
                     for host, (at, label, msg) in reversed(node.mesh.server.refusals.items())],
        "can_serve": node.can_serve(),
    }
