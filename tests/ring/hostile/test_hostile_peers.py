"""A live daemon against malformed frames and keyless or replaying peers: each costs only that connection."""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import msgpack
import pytest
from cluster import Cluster, write_key
from helpers import shared_cache_dir
from hostile_peer import RawPeer, still_serves

from swarmd.keys import read_key_file
from swarmd.types import TensorBlob
from swarmd.wire import codec
from swarmd.wire.crypto import ClientHandshake, FrameSealer, Keyring
from swarmd.wire.framing import frame
from swarmd.wire.identity import hello_proof
from swarmd.wire.messages import ClientAuth, Forward, Gossip, Hello, MemberUpdate, Ping, Pong

pytestmark = pytest.mark.ring


PRE_HANDSHAKE = {
    "zero_length": struct.pack(">I", 0),
    "max_length": struct.pack(">I", 2**32 - 1),
    "just_over_cap": struct.pack(">I", 513) + b"\x00" * 513,
    "invalid_msgpack": frame(b"\x93\x01\xc1\xc1"),
    "unknown_tag": frame(msgpack.packb([99, 1, 2])),
    "wrong_field_types": frame(msgpack.packb([1, "one", [], b"x" * 32])),
    "trailing_garbage": frame(msgpack.packb([1, 1, [], b"x" * 32]) + b"junk"),
    "map_instead_of_array": frame(msgpack.packb({"tag": 1})),
    "handshake_out_of_order": frame(codec.encode(ClientAuth(b"x" * 32))),
    "unknown_protocol_version": frame(msgpack.packb([1, 99, [], b"n" * 32])),
    "wrong_top_level_type": frame(msgpack.packb(42)),
}


@pytest.mark.parametrize("case", sorted(PRE_HANDSHAKE))
def test_bad_frame_before_handshake_closes_connection(daemon: Cluster, case: str) -> None:
    peer = RawPeer(daemon.daemons[0].addr)
    peer.raw(PRE_HANDSHAKE[case])
    assert peer.closed_by_peer(), case
    still_serves(daemon)


def test_truncated_frame_then_close_and_stall(daemon: Cluster) -> None:
    peer = RawPeer(daemon.daemons[0].addr)
    peer.raw(struct.pack(">I", 100) + b"\x93\x01")
    peer.sock.close()
    stalled = RawPeer(daemon.daemons[0].addr)
    stalled.raw(struct.pack(">I", 100) + b"\x93")  # then nothing: the handshake deadline closes it
    assert stalled.closed_by_peer(timeout=10)
    still_serves(daemon)


def test_wrong_key_is_refused_and_learns_nothing(daemon: Cluster, tmp_path: Path) -> None:
    peer = RawPeer(daemon.daemons[0].addr)
    hs = ClientHandshake(Keyring([read_key_file(write_key(tmp_path / "other.key"))]))
    peer.raw(frame(codec.encode(hs.hello())))
    with pytest.raises(ConnectionError):
        peer.read_frame()  # closed without a ServerHello: no MAC, no node id, nothing
    status = still_serves(daemon)
    assert status["rejected_connections"].get("auth", 0) >= 1


# Bodies sealed with the right keys after a good handshake and Hello: only the parser can refuse them.
HOSTILE_BODIES = {
    "array_header_claims_2^32-1_items": b"\xdd\xff\xff\xff\xff\x0b",
    "map_header_claims_2^32-1_items": b"\xdf\xff\xff\xff\xff",
    "nesting_1000_deep": b"\x91" * 1000 + b"\x00",
    "string_longer_than_the_frame": b"\x92\x0b\xdb\x80\x00\x00\x00abc",
    "invalid_utf8": b"\x93\x19\xa2\xff\xfe\xa1x",
    "unknown_extension_type": b"\x92\x0b\xd4\x05\x00",
    "duplicate_and_non_string_map_keys": b"\x92\x0b\x82\x01\x02\x01\x03",
    "wrong_top_level_type": msgpack.packb("Ping"),
    "missing_field": msgpack.packb([25, "s"]),
    "extra_field": msgpack.packb([11, 1, 2]),
    "integer_2^64-1": msgpack.packb([11, 2**64 - 1]),
    "negative_integer": msgpack.packb([11, -5]),
    "absurd_tensor_dimensions": msgpack.packb([23, "s" * 32, 0, 0, False, [], ["float32", [2**31, 2**31], b"\0" * 8]]),
    "incarnation_2^63_in_gossip": msgpack.packb([34, "raw-x", [["node0", "127.0.0.1:1", 2**63, "alive", 0, b"",
                                                                   "raw-x", b"", b""]]]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
def test_hostile_body_after_handshake_closes_that_connection_only(daemon: Cluster, case: str) -> None:
    key = read_key_file(daemon.key)  # type: ignore[arg-type]
    bystander = RawPeer(daemon.daemons[0].addr)  # another peer's connection must survive
    bystander.handshake(key)
    bystander.hello()
    peer = RawPeer(daemon.daemons[0].addr)
    peer.handshake(key)
    peer.hello()
    peer.raw(peer.sealed(HOSTILE_BODIES[case]))
    assert peer.closed_by_peer(), case
    bystander.raw(bystander.sealed(codec.encode(Ping(7))))
    assert codec.decode(bystander.read_frame()) == Pong(7)
    still_serves(daemon)


@pytest.mark.parametrize("case", ["no_proof", "proof_of_another_connection", "node_id_of_another_key"])
def test_hello_without_a_valid_identity_proof_is_refused(daemon: Cluster, case: str) -> None:
    key = read_key_file(daemon.key)  # type: ignore[arg-type]
    first = RawPeer(daemon.daemons[0].addr)
    first.handshake(key)
    alice = f"alice-{case}"
    first.hello(alice)  # alice's node id is now pinned to first.identity
    peer = RawPeer(daemon.daemons[0].addr)
    peer.handshake(key)
    base = Hello("mallory", "127.0.0.1:9", "test", "tiny-llama", 4, 64, -1, -1, "cpu")
    if case == "no_proof":
        hello = base
    elif case == "proof_of_another_connection":  # a proof captured from alice's connection, replayed
        hello = replace(base, node_id=alice, identity=first.identity.public,
                        proof=first.identity.sign(hello_proof(first.binding, alice)))
    else:  # a valid proof, but of another key than the one alice's node id was first seen with
        hello = replace(base, node_id=alice, identity=peer.identity.public,
                        proof=peer.identity.sign(hello_proof(peer.binding, alice)))
    peer.raw(peer.sealed(codec.encode(hello)))
    assert peer.closed_by_peer(), case
    first.raw(first.sealed(codec.encode(Ping(3))))
    assert codec.decode(first.read_frame()) == Pong(3)
    assert still_serves(daemon)["rejected_connections"].get("incompatible", 0) >= 1


def test_stale_session_and_out_of_range_gossip_are_dropped_not_fatal(daemon: Cluster) -> None:
    peer = RawPeer(daemon.daemons[0].addr)
    peer.handshake(read_key_file(daemon.key))  # type: ignore[arg-type]
    peer.hello()
    nan = TensorBlob("float32", (1, 1, 64), struct.pack("<64f", *([float("nan")] * 64)))
    peer.raw(peer.sealed(codec.encode(Forward("f" * 32, 0, 0, True, (), nan))))  # no such session
    jump = MemberUpdate("ghost", "127.0.0.1:1", 2**62 + 1, "alive", 0, b"", "ghost")  # beyond SWIM's range
    peer.raw(peer.sealed(codec.encode(Gossip(peer.node_id, (jump,)))))
    peer.raw(peer.sealed(codec.encode(Ping(9))))
    assert codec.decode(peer.read_frame()) == Pong(9)  # still connected
    status = still_serves(daemon)
    assert status["gossip"]["dropped"].get("bad_update", 0) >= 1
    assert all(p["node_id"] != "ghost" for p in status["peers"])


def test_one_byte_per_second_is_cut_at_the_handshake_deadline(daemon: Cluster) -> None:
    peer = RawPeer(daemon.daemons[0].addr)
    hello = frame(codec.encode(ClientHandshake(Keyring([b"k" * 32])).hello()))
    started = time.monotonic()
    closed = False
    for byte in hello:
        try:
            peer.raw(bytes([byte]))
        except OSError:
            closed = True
            break
        if peer.closed_by_peer(timeout=1.0):
            closed = True
            break
    assert closed and time.monotonic() - started < 10, "a slow-drip handshake outlived the 5 s deadline"
    still_serves(daemon)


def test_connections_beyond_the_cap_are_refused_and_the_rest_keep_working(daemon: Cluster) -> None:
    addr = daemon.daemons[0].addr
    host, port = addr.rsplit(":", 1)
    socks = []
    try:
        for _ in range(128 + 8):  # NetConfig.max_connections
            socks.append(socket.create_connection((host, int(port)), timeout=5))
        time.sleep(0.5)
        status = still_serves(daemon)
        assert status["rejected_connections"].get("too_many_connections", 0) >= 8
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    peer = RawPeer(addr)
    peer.handshake(read_key_file(daemon.key))  # type: ignore[arg-type]
    peer.hello()


def test_a_peer_that_stops_reading_is_cut_off_not_buffered_for(daemon: Cluster) -> None:
    peer = RawPeer(daemon.daemons[0].addr)
    peer.handshake(read_key_file(daemon.key))  # type: ignore[arg-type]
    peer.hello()
    peer.sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 30
    closed = False
    while time.monotonic() < deadline and not closed:  # pings, and never a read of the pongs
        try:
            peer.sock.send(peer.sealed(codec.encode(Ping(sent))))
            sent += 1
        except BlockingIOError:
            time.sleep(0.05)  # the daemon stopped reading us: it waits for us to drain its pongs
        except OSError:
            closed = True
    assert closed or peer.closed_by_peer(timeout=20), f"still connected after {sent} unread pongs"
    still_serves(daemon)


@pytest.mark.parametrize("case", ["bad_mac", "replayed", "reordered", "invalid_msgpack", "unknown_tag",
                                  "wrong_types", "bad_tensor", "oversized", "message_before_hello",
                                  "old_key"])
def test_bad_frame_after_handshake_closes_connection(daemon: Cluster, case: str) -> None:
    key = read_key_file(daemon.key)  # type: ignore[arg-type]
    peer = RawPeer(daemon.daemons[0].addr)
    peer.handshake(key)
    if case == "old_key":  # frames sealed under a key this connection did not agree on (e.g. a rotated one)
        peer.send_seal = FrameSealer(b"o" * 32)
        peer.raw(peer.sealed(codec.encode(Hello("raw-peer", "127.0.0.1:9", "t", "tiny-llama", 4, 64, -1, -1, "c"))))
    elif case == "message_before_hello":
        peer.raw(peer.sealed(codec.encode(Ping(1))))
    else:
        peer.hello()
        if case == "bad_mac":
            body = bytearray(peer.sealed(codec.encode(Ping(1))))
            body[6] ^= 0xFF
            peer.raw(bytes(body))
        elif case == "replayed":
            captured = peer.sealed(codec.encode(Ping(1)))
            peer.raw(captured)
            assert isinstance(codec.decode(peer.read_frame()), Pong)  # Pong: accepted once
            peer.raw(captured)
        elif case == "reordered":
            first = peer.sealed(codec.encode(Ping(1)))
            second = peer.sealed(codec.encode(Ping(2)))
            peer.raw(second + first)
        elif case == "invalid_msgpack":
            peer.raw(peer.sealed(b"\x92\x0b\xc1"))
        elif case == "unknown_tag":
            peer.raw(peer.sealed(msgpack.packb([77, 1])))
        elif case == "wrong_types":
            peer.raw(peer.sealed(msgpack.packb([11, "not an int"])))
        elif case == "bad_tensor":
            blob = TensorBlob("float32", (1, 2, 8), b"\x00" * 10)
            peer.raw(peer.sealed(codec.encode(Forward("s" * 32, 0, 0, False, (), blob))))
        elif case == "oversized":
            peer.raw(struct.pack(">I", 2**31))
    assert peer.closed_by_peer(), case
    still_serves(daemon)


def test_keyless_daemon_cannot_join_a_keyed_ring(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="swk-", dir="/tmp"))
    try:
        good = Cluster(root, str(tiny_models["llama"]), ["0:2", "2:4"], shared_cache_dir())
        # node1 gets a different key: neither side accepts the other.
        intruder_key = write_key(root / "intruder.key")
        d1 = good.daemons[1]
        d1.args[d1.args.index("--key-file") + 1] = str(intruder_key)
        import os

        env = dict(os.environ, SWARMD_CACHE_DIR=str(shared_cache_dir()))
        for d in good.daemons:
            d.start(env)
        deadline = time.monotonic() + 120
        status = {}
        while time.monotonic() < deadline:
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(good.daemons[0].sock)), timeout=5) as c:
                    status = c.get("http://x/v1/swarm/status").json()
                    if status.get("rejected_connections", {}).get("auth", 0) >= 1:
                        health = c.get("http://x/health").status_code
                        r = c.post("http://x/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"no auth rejection seen: {status}\n{good.logs()}")
        assert health == 503 and r.status_code == 503 and "Retry-After" in r.headers
        assert all(p["state"] != "alive" for p in status["peers"])
        assert status["ring"] == []
    finally:
        good.stop()
        shutil.rmtree(root, ignore_errors=True)
