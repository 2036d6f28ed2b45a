"""A hand-driven hostile peer and the probes of the live hostile catalogue (tests/ring/hostile/)."""

from __future__ import annotations

import socket
import struct
import time

import httpx
from cluster import Cluster

from swarmd.wire import codec
from swarmd.wire.crypto import ClientHandshake, FrameSealer, Keyring
from swarmd.wire.framing import frame
from swarmd.wire.identity import Identity, hello_proof
from swarmd.wire.messages import Hello, ServerHello


class RawPeer:
    """A hand-driven peer: plain sockets, our own framing, so every byte can be wrong on purpose."""

    def __init__(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.send_seal = FrameSealer(None)
        self.recv_seal = FrameSealer(None)
        self.identity = Identity.generate()
        self.binding = b""
        self.node_id = ""

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
        self.binding = keys.binding
        self.raw(frame(codec.encode(auth)))
        self.send_seal, self.recv_seal = FrameSealer(keys.send), FrameSealer(keys.recv)

    def sealed(self, body: bytes) -> bytes:
        return frame(self.send_seal.seal(body))

    def hello(self, node: str = "") -> None:
        """A Hello with a valid proof of this peer's own (fresh) identity key for this connection."""
        node = self.node_id = node or f"raw-{self.identity.fingerprint[:8]}"
        hello = Hello(node, "127.0.0.1:9", "test", "tiny-llama", 4, 64, -1, -1, "cpu", self.identity.public,
                      self.identity.sign(hello_proof(self.binding, node)))
        self.raw(self.sealed(codec.encode(hello)))
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


RSS_MB: dict[str, float] = {}  # the daemon's resident memory after warm-up (set by the catalogue's fixture)


def rss_mb(cluster: Cluster) -> float:
    proc = cluster.daemons[0].proc
    assert proc is not None
    with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def still_serves(cluster: Cluster) -> dict:  # type: ignore[type-arg]
    d = cluster.daemons[0]
    assert d.alive()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.sock)), timeout=30) as c:
        r = c.post("http://x/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200
        return c.get("http://x/v1/swarm/status").json()
