"""The mDNS TXT record: small, public, and filtered by swarm key id before anything connects."""

from __future__ import annotations

from swarmd.discovery.mdns import MAX_INSTANCE, instance_name, parse_txt, txt_record


def props(node: str = "n1", key: str = "k1", port: int = 7000, **extra: str) -> dict[bytes, bytes | None]:
    raw = dict(txt_record(node, key, port), **extra)
    return {k.encode(): v.encode() for k, v in raw.items()}


def test_record_is_small_and_reveals_only_the_key_id() -> None:
    rec = txt_record("node-a", "0123456789abcdef", 7070)
    assert set(rec) == {"txtvers", "proto", "id", "key", "port"}
    assert sum(len(k) + len(v) + 2 for k, v in rec.items()) < 200


def test_candidate_of_the_same_swarm() -> None:
    cand = parse_txt(props(), ["10.1.2.3"], 7000, own_id="me", key_id="k1")
    assert cand is not None and cand.node_id == "n1" and cand.addr == "10.1.2.3:7000"


def test_other_swarm_self_and_malformed_are_ignored() -> None:
    assert parse_txt(props(key="other"), ["10.1.2.3"], 7000, own_id="me", key_id="k1") is None
    assert parse_txt(props(node="me"), ["10.1.2.3"], 7000, own_id="me", key_id="k1") is None
    assert parse_txt(props(txtvers="9"), ["10.1.2.3"], 7000, own_id="me", key_id="k1") is None
    assert parse_txt(props(proto="99"), ["10.1.2.3"], 7000, own_id="me", key_id="k1") is None
    assert parse_txt(props(), ["not-an-ip"], 7000, own_id="me", key_id="k1") is None
    assert parse_txt(props(), ["10.1.2.3"], 0, own_id="me", key_id="k1") is None
    assert parse_txt({}, ["10.1.2.3"], 7000, own_id="me", key_id="k1") is None


def test_ipv4_preferred_and_link_local_v6_skipped() -> None:
    cand = parse_txt(props(), ["fe80::1", "2001:db8::5", "10.0.0.9"], 7000, own_id="me", key_id="k1")
    assert cand is not None and cand.addr == "10.0.0.9:7000"
    v6 = parse_txt(props(), ["fe80::1", "2001:db8::5"], 7000, own_id="me", key_id="k1")
    assert v6 is not None and v6.addr == "[2001:db8::5]:7000"


def test_instance_name_fits_one_dns_label() -> None:
    assert len(instance_name("x" * 200).encode()) <= MAX_INSTANCE
    assert len(instance_name("ü" * 40).encode()) <= MAX_INSTANCE  # never cut inside a character
    assert instance_name("") == "swarmd"
