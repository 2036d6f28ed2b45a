"""Per-node identity: an Ed25519 key pair. The swarm key decides who may talk at all; the identity key
decides who said what. Every member signs its own gossiped record (address, incarnation, metadata,
leave), so no member can forge another's state, spans or liveness (proto_spec.md §11.6).

Keys are ``cryptography``'s Ed25519 (audited, constant time): nothing here is hand-rolled.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError
from .codec import encode_attestation

PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
FINGERPRINT_CHARS = 16  # hex of the first 8 bytes of SHA-256(public key): what bans name


def fingerprint(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:FINGERPRINT_CHARS]


def attestation(node_id: str, addr: str, incarnation: int, meta_version: int, meta: bytes, left: bool) -> bytes:
    """The bytes a member signs about itself: everything of its gossip record that only it may change."""
    return encode_attestation(node_id, addr, incarnation, meta_version, meta, left)


def hello_proof(binding: bytes, node_id: str) -> bytes:
    """What a node signs in its Hello: this connection's handshake transcript and the node id it claims."""
    return b"swarmd-hello-v1\0" + binding + node_id.encode()


def verify(public: bytes, data: bytes, signature: bytes) -> bool:
    if len(public) != PUBLIC_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    private: Ed25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_seed(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        key = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(key, key.public_key().public_bytes_raw())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def load_or_create(path: Path) -> Identity:
    """The identity kept in ``path`` (base64 of the 32-byte private seed, mode 0600), created on first use."""
    if path.exists():
        try:
            seed = base64.b64decode(path.read_text().strip(), validate=True)
            if len(seed) != 32:
                raise ValueError("not 32 bytes")
        except (ValueError, OSError) as exc:
            raise ConfigError(f"identity file {path} is not a base64 32-byte key: {exc}") from None
        return Identity.from_seed(seed)
    ident = Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    seed = ident.private.private_bytes_raw()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(seed).decode() + "\n")
    return ident
