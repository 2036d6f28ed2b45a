"""A live daemon against malformed frames and keyless or replaying peers: each costs only that connection."""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
from cluster import Cluster, write_key
from helpers import shared_cache_dir

from swarmd.keys import read_key_file
from swarmd.types import TensorBlob
from swarmd.wire import codec
from swarmd.wire.crypto import ClientHandshake, FrameSealer, Keyring
from swarmd.wire.framing import frame
from swarmd.wire.messages import ClientAuth, Forward, Hello, Ping, Pong, ServerHello

pytestmark = pytest.mark.ring


class RawPeer:
    """A hand-driven peer: plain sockets, our own framing, so every byte can be wrong on purpose."""

    def __init__(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.send_seal = FrameSealer(None)
        self.recv_seal = FrameSealer(None)

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes:
        (n,) = struct.unpack(">I", self._exact(4))
        return self.recv_seal.open(self._exact(n))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def handshake(self, key: bytes) -> None:
        hs = ClientHandshake(Keyring([key]))
        self.raw(frame(codec.encode(hs.hello())))
        reply = codec.decode(self.read_frame())
        assert isinstance(reply, ServerHello)
        auth, keys = hs.on_server_hello(reply)
        self.raw(frame(codec.encode(auth)))
        self.send_seal, self.recv_seal = FrameSealer(keys.send), FrameSealer(keys.recv)

    def sealed(self, body: bytes) -> bytes:
        return frame(self.send_seal.seal(body))

    def hello(self, node: str = "raw-peer") -> None:
        self.raw(self.sealed(codec.encode(Hello(node, "127.0.0.1:9", "test", "tiny-llama", 4, 64, -1, -1, "cpu"))))
        assert isinstance(codec.decode(self.read_frame()), Hello)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the daemon closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return False


@pytest.fixture(scope="module")
def daemon(tiny_models: dict[str, Path]) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="swh-", dir="/tmp"))
    cluster = Cluster(root, str(tiny_models["llama"]), ["0:4"], shared_cache_dir()).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def still_serves(cluster: Cluster) -> dict:  # type: ignore[type-arg]
    d = cluster.daemons[0]
    assert d.alive()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.sock)), timeout=30) as c:
        r = c.post("http://x/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200
        return c.get("http://x/v1/swarm/status").json()


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


@pytest.mark.parametrize("case", ["bad_mac", "replayed", "reordered", "invalid_msgpack", "unknown_tag",
                                  "wrong_types", "bad_tensor", "oversized", "message_before_hello"])
def test_bad_frame_after_handshake_closes_connection(daemon: Cluster, case: str) -> None:
    key = read_key_file(daemon.key)  # type: ignore[arg-type]
    peer = RawPeer(daemon.daemons[0].addr)
    peer.handshake(key)
    if case == "message_before_hello":
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
