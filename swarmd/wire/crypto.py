"""Mutual authentication with the swarm key, per-direction session keys, and AEAD on every frame.

Handshake (three plaintext frames, each at most a few hundred bytes, under a short deadline):

    client -> server  ClientHello(version, key_ids, nonce_c)
    server -> client  ServerHello(version, key_id, nonce_s, mac_s = HMAC(K, "server" | T))
    client -> server  ClientAuth(mac_c = HMAC(K, "client" | T))

with ``T = SHA-256("swarmd-hs" | version | key_id | nonce_c | nonce_s)``. Each side checks the other's
MAC in constant time. Session keys: ``HKDF-SHA256(K, salt = nonce_c | nonce_s, info = dir | T)`` for
``dir`` in {c2s, s2c}. Frames are then sealed with ChaCha20-Poly1305 under a 96-bit nonce that is the
direction's frame counter, so a replayed, reordered, dropped or altered frame fails to open.
Sans-I/O: the asyncio transport moves the messages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AuthError
from .messages import PROTOCOL_VERSION, ClientAuth, ClientHello, ServerHello

NONCE_BYTES = 32
KEY_ID_BYTES = 8
MAX_KEYS = 4
TAG_BYTES = 16


def key_id(key: bytes) -> bytes:
    """A short public id of a key (reveals nothing about the key itself)."""
    return hmac.new(key, b"swarmd key id v1", hashlib.sha256).digest()[:KEY_ID_BYTES]


class Keyring:
    """The current swarm key first, then older ones still accepted during a rotation."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self.keys = keys[:MAX_KEYS]
        self._by_id = {key_id(k): k for k in self.keys}

    def ids(self) -> tuple[bytes, ...]:
        return tuple(key_id(k) for k in self.keys)

    def get(self, kid: bytes) -> bytes | None:
        return self._by_id.get(kid)

    @property
    def public_id(self) -> str:
        return key_id(self.keys[0]).hex()


@dataclass(frozen=True)
class SessionKeys:
    send: bytes | None  # None: insecure mode, frames travel in the clear
    recv: bytes | None
    # Unique to this connection (the handshake transcript): what a peer signs with its identity key in
    # its Hello, so a proof cannot be replayed on another connection.
    binding: bytes = b""


def _insecure_binding(nonce_c: bytes, nonce_s: bytes) -> bytes:
    return hashlib.sha256(b"swarmd-hs-insecure" + PROTOCOL_VERSION.to_bytes(4, "big") + nonce_c + nonce_s).digest()


def _transcript(kid: bytes, nonce_c: bytes, nonce_s: bytes) -> bytes:
    return hashlib.sha256(b"swarmd-hs" + PROTOCOL_VERSION.to_bytes(4, "big") + kid + nonce_c + nonce_s).digest()


def _mac(key: bytes, label: bytes, transcript: bytes) -> bytes:
    return hmac.new(key, label + transcript, hashlib.sha256).digest()


def _derive(key: bytes, nonce_c: bytes, nonce_s: bytes, label: bytes, transcript: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce_c + nonce_s, info=label + transcript).derive(key)


def _check_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise AuthError(f"peer speaks protocol version {version}, this node {PROTOCOL_VERSION}", "version")


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise AuthError("handshake nonce has the wrong length", "handshake")


class ClientHandshake:
    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        self.nonce = secrets.token_bytes(NONCE_BYTES)

    def hello(self) -> ClientHello:
        return ClientHello(PROTOCOL_VERSION, self.keyring.ids() if self.keyring else (), self.nonce)

    def on_server_hello(self, msg: ServerHello) -> tuple[ClientAuth, SessionKeys]:
        _check_version(msg.version)
        _check_nonce(msg.nonce)
        if self.keyring is None:
            if msg.key_id or msg.mac:
                raise AuthError("peer requires a swarm key; this node runs insecure", "auth")
            return ClientAuth(b""), SessionKeys(None, None, _insecure_binding(self.nonce, msg.nonce))
        key = self.keyring.get(msg.key_id)
        if key is None:
            raise AuthError("peer chose a key this node does not hold", "auth")
        t = _transcript(msg.key_id, self.nonce, msg.nonce)
        if not hmac.compare_digest(msg.mac, _mac(key, b"server", t)):
            raise AuthError("peer failed to prove it holds the swarm key", "auth")
        keys = SessionKeys(send=_derive(key, self.nonce, msg.nonce, b"c2s", t),
                           recv=_derive(key, self.nonce, msg.nonce, b"s2c", t), binding=t)
        return ClientAuth(_mac(key, b"client", t)), keys


class ServerHandshake:
    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self._key: bytes | None = None
        self._kid = b""
        self._client_nonce = b""

    def on_client_hello(self, msg: ClientHello) -> ServerHello:
        _check_version(msg.version)
        _check_nonce(msg.nonce)
        self._client_nonce = msg.nonce
        if self.keyring is None:
            if msg.key_ids:
                raise AuthError("peer has a swarm key; this node runs insecure", "auth")
            return ServerHello(PROTOCOL_VERSION, b"", self.nonce, b"")
        for kid in msg.key_ids[:MAX_KEYS]:
            key = self.keyring.get(kid)
            if key is not None:
                self._key, self._kid = key, kid
                break
        else:
            raise AuthError("peer holds no key of this swarm", "auth")
        t = _transcript(self._kid, msg.nonce, self.nonce)
        return ServerHello(PROTOCOL_VERSION, self._kid, self.nonce, _mac(self._key, b"server", t))

    def on_client_auth(self, msg: ClientAuth) -> SessionKeys:
        if self.keyring is None:
            if msg.mac:
                raise AuthError("unexpected MAC from an insecure peer", "auth")
            return SessionKeys(None, None, _insecure_binding(self._client_nonce, self.nonce))
        if self._key is None:
            raise AuthError("ClientAuth before ClientHello", "handshake")
        t = _transcript(self._kid, self._client_nonce, self.nonce)
        if not hmac.compare_digest(msg.mac, _mac(self._key, b"client", t)):
            raise AuthError("peer failed to prove it holds the swarm key", "auth")
        return SessionKeys(send=_derive(self._key, self._client_nonce, self.nonce, b"s2c", t),
                           recv=_derive(self._key, self._client_nonce, self.nonce, b"c2s", t), binding=t)


class FrameSealer:
    """Seals (or opens) the frames of one direction; the frame counter is the AEAD nonce."""

    def __init__(self, key: bytes | None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.seq = 0

    @property
    def overhead(self) -> int:
        return TAG_BYTES if self._aead is not None else 0

    def seal(self, body: bytes) -> bytes:
        if self._aead is None:
            return body
        nonce = self.seq.to_bytes(12, "big")
        self.seq += 1
        return self._aead.encrypt(nonce, body, None)

    def open(self, data: bytes) -> bytes:
        if self._aead is None:
            return data
        nonce = self.seq.to_bytes(12, "big")
        try:
            body = self._aead.decrypt(nonce, data, None)
        except InvalidTag:
            raise AuthError(f"frame {self.seq} failed authentication (altered, replayed or reordered)", "bad_mac") \
                from None
        self.seq += 1
        return body
