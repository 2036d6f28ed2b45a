"""``swarmctl doctor``'s reasoning: facts in, findings and a verdict in plain words out. No I/O.

The facts are gathered inside the daemon (``doctor_checks.gather``: interfaces, mDNS sightings, a fresh
connection and handshake to every seed, mDNS-found and member address, refusals this node's listener
made, clocks heard in Hellos); this module turns them into findings an operator can act on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"
SKEW_WARN_S = 2.0  # clocks further apart than this make logs and timestamps disagree
MDNS_GRACE_S = 15.0  # how long mDNS gets to hear announcements before silence means something
REFUSAL_WINDOW_S = 600.0  # refusals older than this are history, not a finding

# What a failed probe means, in words; {detail} is the low-level reason.
PROBE_WORDS = {
    "refused": "connection refused: nothing listens on that port (swarmd is not running there, or it uses "
               "another --listen port)",
    "timeout": "no answer to a TCP connection: a firewall drops traffic to that port, or the host is down or "
               "unroutable",
    "unreachable": "cannot reach that host ({detail}): no route to it from here",
    "other_key": "the peer closed the connection on this node's key offer: it holds none of this node's swarm "
                 "keys (it belongs to another swarm), one side runs --insecure, or it runs another swarmd "
                 "release (protocol version)",
    "auth": "handshake failed: {detail}",
    "version": "protocol versions differ ({detail}): run the same swarmd release on every node",
    "refused_hello": "the peer accepted the swarm key but closed the link on this node's Hello: it serves "
                     "another model, it banned this node, or it uses this node's id",
    "incompatible": "{detail}",
    "duplicate_id": "that peer uses this node's id: give each node a unique --node-id",
    "self": "this node itself (the address leads back here)",
    "error": "{detail}",
}
REFUSAL_WORDS = {
    "auth": "it holds none of this swarm's keys (another swarm key, or it runs --insecure)",
    "version": "it speaks another protocol version",
    "incompatible": "{message}",
}


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warn | fail
    check: str  # interfaces, mdns, peer, clock, refusal, swarm
    message: str


def _probe_finding(p: dict[str, Any], member: dict[str, Any] | None) -> Finding:
    node_id = p.get("node_id") or (member or {}).get("node_id")
    member_state = (member or {}).get("state")
    who = f"{node_id} at {p['addr']}" if node_id else p["addr"]
    via = "/".join(p.get("sources", [])) or "?"
    if p["outcome"] == "self":
        return Finding(OK, "peer", f"{p['addr']} ({via}): {PROBE_WORDS['self']}")
    if p["outcome"] == "ok":
        rtt = f", round trip {p['rtt_ms']:.1f} ms" if p.get("rtt_ms") is not None else ""
        return Finding(OK, "peer", f"{who} ({via}): reachable, swarm key and handshake ok{rtt}")
    words = PROBE_WORDS.get(p["outcome"], "{detail}").format(detail=p.get("detail", ""))
    # A member already known dead or gone is expected not to answer.
    level = WARN if member_state in ("dead", "left") and p["outcome"] in ("refused", "timeout", "unreachable") \
        else FAIL
    return Finding(level, "peer", f"{who} ({via}): {words}")


def _interfaces(facts: dict[str, Any], out: list[Finding]) -> None:
    ifaces = [i for i in facts.get("interfaces", []) if not i.get("loopback")]
    up = [i for i in ifaces if i.get("up") and i.get("ipv4")]
    if not up:
        out.append(Finding(FAIL, "interfaces", "no network interface is up with an IPv4 address: this node "
                                               "can reach no other machine"))
        return
    for i in up:
        addrs = ", ".join(i["ipv4"])
        if facts.get("mdns", {}).get("enabled") and not i.get("multicast"):
            out.append(Finding(FAIL, "interfaces", f"{i['name']} ({addrs}) has multicast switched off: mDNS "
                                                   f"cannot find peers through it (ip link set {i['name']} "
                                                   "multicast on), or use --peer"))
        else:
            out.append(Finding(OK, "interfaces", f"{i['name']} up, {addrs}"
                                                 + (", multicast on" if i.get("multicast") else "")))


def _mdns(facts: dict[str, Any], out: list[Finding]) -> None:
    md = facts.get("mdns", {})
    node_id, key_id = facts.get("node_id"), facts.get("key_id")
    seeds = facts.get("seeds", [])
    if not md.get("enabled"):
        level = OK if seeds else FAIL
        tail = "peers come only from --peer seeds" if seeds else "and no --peer seed is set: this node has no way " \
                                                                 "to find peers"
        out.append(Finding(level, "mdns", f"mDNS is off (--no-mdns): {tail}"))
        return
    if not md.get("running"):
        out.append(Finding(FAIL, "mdns", f"mDNS could not start: {md.get('error') or 'unknown error'}"))
        return
    out.append(Finding(OK, "mdns", f"registered as {md.get('name')} on {', '.join(md.get('addresses', []))}"))
    proto = str(facts.get("protocol", ""))
    others = [s for s in md.get("sightings", []) if s["node_id"] != node_id]
    same = [s for s in others if s["key_id"] == key_id and s["proto"] == proto]
    foreign = [s for s in others if s["key_id"] != key_id]
    for s in others:
        if s["key_id"] == key_id and s["proto"] != proto:
            out.append(Finding(WARN, "mdns", f"{s['node_id']} at {', '.join(s['addresses'])} holds this swarm's key "
                                             f"but speaks protocol {s['proto'] or '?'} (this node {proto}): run "
                                             "the same swarmd release on every node"))
    dups = [s for s in md.get("sightings", []) if s["node_id"] == node_id]
    for s in dups:
        out.append(Finding(FAIL, "mdns", f"another machine ({', '.join(s['addresses'])}) announces this node's id "
                                         f"{node_id!r}: give each node a unique --node-id"))
    for s in foreign:
        out.append(Finding(WARN, "mdns", f"{s['node_id']} at {', '.join(s['addresses'])} runs swarmd with another "
                                         f"swarm key (key id {s['key_id'] or 'none: --insecure'}, this node's "
                                         f"{key_id or 'none'}): it cannot join this swarm; copy this swarm's "
                                         "key file to it if it should"))
    if same:
        out.append(Finding(OK, "mdns", f"heard {len(same)} member(s) of this swarm: "
                                       + ", ".join(sorted(s["node_id"] for s in same))))
    listened = md.get("uptime_s", facts.get("uptime_s", 0.0))  # since discovery started
    if listened < MDNS_GRACE_S:
        return
    sighted = {s["node_id"] for s in md.get("sightings", [])}
    announcers = sorted(m["node_id"] for m in facts.get("members", [])
                        if m.get("state") == "alive" and m.get("mdns") and m["node_id"] not in sighted)
    if announcers and not sighted:
        out.append(Finding(FAIL, "mdns", f"multicast looks blocked: {', '.join(announcers)} announce themselves "
                                         f"by mDNS, but not one announcement reached this node in "
                                         f"{listened:.0f} s. Let UDP port 5353 to 224.0.0.251 through (host "
                                         "firewall, switch IGMP snooping, Wi-Fi client isolation); --peer seeds "
                                         "work without multicast"))
    elif not sighted and not facts.get("members") and not seeds:
        out.append(Finding(FAIL, "mdns", f"no swarmd node answered on mDNS in {listened:.0f} s and no "
                                         "--peer seed is set: either no other node runs on this LAN, or multicast "
                                         "is blocked (UDP 5353 to 224.0.0.251); give this node a --peer seed"))


def _clocks(facts: dict[str, Any], out: list[Finding]) -> None:
    for m in facts.get("members", []):
        skew = m.get("clock_skew_s")
        if skew is not None and abs(skew) > SKEW_WARN_S:
            side = "ahead of" if skew > 0 else "behind"
            out.append(Finding(WARN, "clock", f"{m['node_id']}'s clock is {abs(skew):.1f} s {side} this node's: "
                                              "logs and timestamps disagree (run NTP / systemd-timesyncd)"))


def _refusals(facts: dict[str, Any], out: list[Finding]) -> None:
    for r in facts.get("refusals", []):
        if r.get("age_s", 0.0) > REFUSAL_WINDOW_S:
            continue
        words = REFUSAL_WORDS.get(r["reason"], "{message}").format(message=r.get("message", ""))
        if "this node's id" in r.get("message", ""):
            words = "it uses this node's id: give each node a unique --node-id"
        out.append(Finding(WARN, "refusal", f"{r['host']} tried to join {r['age_s']:.0f} s ago and was refused: "
                                            f"{words}"))


def diagnose(facts: dict[str, Any]) -> dict[str, Any]:
    """``{"findings": [...], "verdict": str, "in_swarm": bool, "healthy": bool}`` from ``gather``'s facts."""
    out: list[Finding] = []
    if facts.get("state") == "starting":
        out.append(Finding(FAIL, "swarm", f"still starting: {facts.get('loading') or 'loading'}"))
    _interfaces(facts, out)
    _mdns(facts, out)
    states = {m["node_id"]: m.get("state") for m in facts.get("members", [])}
    if facts.get("probes_skipped"):
        out.append(Finding(WARN, "peer", f"peers not probed: {facts['probes_skipped']}"))
    by_addr = {m["addr"]: m for m in facts.get("members", [])}
    for p in facts.get("probes", []):
        out.append(_probe_finding(p, by_addr.get(p["addr"])))
    _clocks(facts, out)
    _refusals(facts, out)
    alive = sorted(n for n, s in states.items() if s == "alive")
    if alive:
        verdict = f"in the swarm with {len(alive)} other live member(s): {', '.join(alive)}"
        if not facts.get("can_serve"):
            verdict += "; but no chain of live members covers every layer, so requests get 503 until one does"
            out.append(Finding(FAIL, "swarm", "no chain of live members covers every layer"))
    else:
        reasons = [f.message for f in out if f.level == FAIL and f.check in ("interfaces", "mdns", "peer")]
        if reasons:
            verdict = "not in the swarm: " + "; ".join(reasons)
        elif facts.get("can_serve"):
            verdict = "alone: no other member is known, and this node serves every layer itself"
        else:
            verdict = "not in the swarm: no other member is known"
    return {"findings": [asdict(f) for f in out], "verdict": verdict, "in_swarm": bool(alive),
            "healthy": not any(f.level == FAIL for f in out)}
