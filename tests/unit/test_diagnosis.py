"""``doctor.diagnose``: facts in, findings and a plain-words verdict out (no daemon, no network)."""

from __future__ import annotations

from typing import Any

from swarmd.doctor import diagnose
from swarmd.wire.messages import PROTOCOL_VERSION

PROTO = str(PROTOCOL_VERSION)


def facts(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "node_id": "me", "state": "serving", "uptime_s": 60.0, "key_id": "k1", "seeds": [],
        "protocol": PROTOCOL_VERSION,
        "interfaces": [{"name": "lo", "up": True, "loopback": True, "multicast": False, "ipv4": ["127.0.0.1/8"]},
                       {"name": "eth0", "up": True, "loopback": False, "multicast": True, "ipv4": ["10.0.0.5/24"]}],
        "mdns": {"enabled": True, "running": True, "name": "me._swarmd._tcp.local.", "addresses": ["10.0.0.5"],
                 "sightings": [{"node_id": "a", "addresses": ["10.0.0.1"], "port": 7070, "key_id": "k1",
                                "proto": PROTO, "age_s": 1.0}]},
        "members": [{"node_id": "a", "addr": "10.0.0.1:7070", "state": "alive", "mdns": True, "clock_skew_s": 0.01}],
        "probes": [{"addr": "10.0.0.1:7070", "outcome": "ok", "node_id": "a", "rtt_ms": 0.4, "sources": ["mdns"]}],
        "refusals": [], "can_serve": True,
    }
    base.update(over)
    return base


def levels(doc: dict[str, Any], level: str) -> list[str]:
    return [f"{f['check']}: {f['message']}" for f in doc["findings"] if f["level"] == level]


def test_healthy_swarm() -> None:
    doc = diagnose(facts())
    assert doc["healthy"] and doc["in_swarm"] and levels(doc, "fail") == [] and levels(doc, "warn") == []
    assert doc["verdict"].startswith("in the swarm with 1 other live member(s): a")


def test_other_key_seed_is_why_it_is_out() -> None:
    doc = diagnose(facts(members=[], seeds=["10.0.0.1:7070"], mdns={"enabled": False},
                         probes=[{"addr": "10.0.0.1:7070", "outcome": "other_key", "sources": ["seed"]}]))
    assert not doc["healthy"] and not doc["in_swarm"]
    assert "holds none of this node's swarm keys" in doc["verdict"] and doc["verdict"].startswith("not in the swarm")


def test_blocked_multicast_needs_announcers_and_silence() -> None:
    quiet = {"enabled": True, "running": True, "name": "me", "addresses": [], "sightings": []}
    doc = diagnose(facts(mdns=quiet, seeds=["10.0.0.1:7070"]))
    assert any("multicast looks blocked" in m and "a announce" in m for m in levels(doc, "fail"))
    # Too early to tell, or the members do not announce themselves: no verdict on multicast.
    assert not levels(diagnose(facts(mdns=quiet, uptime_s=3.0)), "fail")
    silent_member = [dict(facts()["members"][0], mdns=False)]
    assert not levels(diagnose(facts(mdns=quiet, members=silent_member)), "fail")
    # Nobody known, nothing heard, no seeds: alone or blocked, and it says both.
    alone = diagnose(facts(mdns=quiet, members=[], probes=[]))
    assert any("no swarmd node answered on mDNS" in m for m in levels(alone, "fail"))


def test_interface_with_multicast_off() -> None:
    ifaces = [{"name": "eth0", "up": True, "loopback": False, "multicast": False, "ipv4": ["10.0.0.5/24"]}]
    doc = diagnose(facts(interfaces=ifaces))
    assert any("eth0" in m and "multicast switched off" in m for m in levels(doc, "fail"))
    assert any("no network interface" in m for m in levels(diagnose(facts(interfaces=[])), "fail"))


def test_duplicate_ids_foreign_keys_skew_and_refusals() -> None:
    sightings = [{"node_id": "me", "addresses": ["10.0.0.9"], "port": 7070, "key_id": "k1", "proto": PROTO, "age_s": 1},
                 {"node_id": "x", "addresses": ["10.0.0.7"], "port": 7070, "key_id": "k2", "proto": PROTO, "age_s": 1}]
    members = [{"node_id": "a", "addr": "10.0.0.1:7070", "state": "alive", "mdns": True, "clock_skew_s": -42.0}]
    refusals = [{"host": "10.0.0.8", "age_s": 5.0, "reason": "auth", "message": "peer holds no key of this swarm"},
                {"host": "10.0.0.9", "age_s": 9.0, "reason": "incompatible", "message": "peer uses this node's id"},
                {"host": "10.0.0.6", "age_s": 4000.0, "reason": "auth", "message": "old"}]
    doc = diagnose(facts(mdns=dict(facts()["mdns"], sightings=sightings), members=members, refusals=refusals))
    fail, warn = levels(doc, "fail"), levels(doc, "warn")
    assert any("10.0.0.9" in m and "this node's id" in m and "--node-id" in m for m in fail)
    assert any("x at 10.0.0.7" in m and "another swarm key" in m for m in warn)
    assert any("42.0 s behind" in m for m in warn)
    assert any("10.0.0.8" in m and "none of this swarm's keys" in m for m in warn)
    assert any("10.0.0.9" in m and "--node-id" in m for m in warn)
    assert not any("10.0.0.6" in m for m in warn)  # older than the window


def test_dead_member_not_answering_is_only_a_warning() -> None:
    members = [{"node_id": "a", "addr": "10.0.0.1:7070", "state": "dead", "mdns": True, "clock_skew_s": None},
               {"node_id": "b", "addr": "10.0.0.2:7070", "state": "alive", "mdns": True, "clock_skew_s": None}]
    probes = [{"addr": "10.0.0.1:7070", "outcome": "refused", "node_id": None, "sources": ["member"]},
              {"addr": "10.0.0.2:7070", "outcome": "timeout", "node_id": None, "sources": ["member"]}]
    doc = diagnose(facts(members=members, probes=probes))
    assert any("a at 10.0.0.1" in m for m in levels(doc, "warn"))
    assert any("b at 10.0.0.2" in m and "firewall" in m for m in levels(doc, "fail"))


def test_no_full_route_is_a_failure_even_in_the_swarm() -> None:
    doc = diagnose(facts(can_serve=False))
    assert doc["in_swarm"] and not doc["healthy"] and "503" in doc["verdict"]


def test_other_release_self_address_and_probes_while_starting() -> None:
    sightings = [{"node_id": "old", "addresses": ["10.0.0.3"], "port": 7070, "key_id": "k1", "proto": "1",
                  "age_s": 1.0}]
    probes = [{"addr": "10.0.0.5:7070", "outcome": "self", "node_id": "me", "sources": ["seed"]}]
    doc = diagnose(facts(mdns=dict(facts()["mdns"], sightings=sightings), probes=probes))
    assert any("old at 10.0.0.3" in m and "protocol 1" in m for m in levels(doc, "warn"))
    assert any("10.0.0.5:7070" in m and "this node itself" in m for m in levels(doc, "ok"))
    assert not levels(doc, "fail")
    starting = diagnose(facts(state="starting", probes=[], probes_skipped="still starting"))
    assert any("not probed" in m for m in levels(starting, "warn")) and not starting["healthy"]


def test_mdns_grace_counts_from_discovery_start() -> None:
    quiet = {"enabled": True, "running": True, "name": "me", "addresses": [], "sightings": [], "uptime_s": 4.0}
    assert not levels(diagnose(facts(mdns=quiet, uptime_s=900.0)), "fail")  # long load, mDNS just started
