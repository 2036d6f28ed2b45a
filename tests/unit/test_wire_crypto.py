"""wire/crypto.py: the three-message handshake, key rotation, insecure mode, and sealed frames."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmd.errors import AuthError, ProtocolError
from swarmd.wire.codec import decode, encode
from swarmd.wire.crypto import ClientHandshake, FrameSealer, Keyring, ServerHandshake, SessionKeys, key_id
from swarmd.wire.messages import HANDSHAKE_TAGS, PROTOCOL_VERSION, ClientAuth, ClientHello, ServerHello

OLD, NEW, OTHER = b"o" * 32, b"n" * 32, b"x" * 32


def wire(msg: Any) -> Any:
    """Send a handshake message through the codec, as the transport does."""
    return decode(encode(msg), HANDSHAKE_TAGS)


def handshake(client_keys: list[bytes] | None, server_keys: list[bytes] | None) -> tuple[SessionKeys, SessionKeys]:
    client = ClientHandshake(Keyring(client_keys) if client_keys else None)
    server = ServerHandshake(Keyring(server_keys) if server_keys else None)
    server_hello = wire(server.on_client_hello(wire(client.hello())))
    auth, client_session = client.on_server_hello(server_hello)
    return client_session, server.on_client_auth(wire(auth))


def check_pair(client: SessionKeys, server: SessionKeys) -> None:
    assert client.send is not None and client.recv is not None
    assert len(client.send) == len(client.recv) == 32
    assert client.send == server.recv and client.recv == server.send
    assert client.send != client.recv


def test_full_handshake_gives_matching_directional_keys() -> None:
    client, server = handshake([NEW], [NEW])
    check_pair(client, server)
    assert client.send != NEW and client.recv != NEW  # derived, never the swarm key itself
    again, _ = handshake([NEW], [NEW])
    assert again.send != client.send and again.recv != client.recv  # fresh nonces, fresh keys


def test_wrong_key_fails_on_the_server_before_it_answers() -> None:
    client = ClientHandshake(Keyring([OTHER]))
    server = ServerHandshake(Keyring([NEW]))
    reply = None
    with pytest.raises(AuthError) as info:
        reply = server.on_client_hello(client.hello())
    assert reply is None
    assert info.value.reason == "auth"
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize(("client_keys", "server_keys"), [([OLD], [NEW, OLD]), ([NEW, OLD], [OLD]),
                                                          ([NEW, OLD], [NEW, OLD]), ([OTHER, OLD], [NEW, OLD])])
def test_rotation(client_keys: list[bytes], server_keys: list[bytes]) -> None:
    check_pair(*handshake(client_keys, server_keys))


def test_server_chooses_the_clients_newest_shared_key() -> None:
    hello = ClientHandshake(Keyring([NEW, OLD])).hello()
    assert hello.key_ids == (key_id(NEW), key_id(OLD))
    assert hello.version == PROTOCOL_VERSION and len(hello.nonce) == 32
    assert NEW not in encode(hello) and OLD not in encode(hello)
    assert ServerHandshake(Keyring([OLD, NEW])).on_client_hello(hello).key_id == key_id(NEW)


def flip(mac: bytes) -> bytes:
    return bytes([mac[0] ^ 1]) + mac[1:]


@pytest.mark.parametrize("mac", [flip, lambda m: m[:-1], lambda m: b"", lambda m: m + b"\x00"])
def test_tampered_server_mac_fails_on_the_client(mac: Any) -> None:
    client = ClientHandshake(Keyring([NEW]))
    hello = ServerHandshake(Keyring([NEW])).on_client_hello(client.hello())
    with pytest.raises(AuthError) as info:
        client.on_server_hello(dataclasses.replace(hello, mac=mac(hello.mac)))
    assert info.value.reason == "auth"
    assert client.on_server_hello(hello)[1].send is not None  # the genuine one still passes


def test_tampered_client_mac_fails_on_the_server() -> None:
    client = ClientHandshake(Keyring([NEW]))
    server = ServerHandshake(Keyring([NEW]))
    server_hello = server.on_client_hello(client.hello())
    auth, _ = client.on_server_hello(server_hello)
    with pytest.raises(AuthError):
        server.on_client_auth(ClientAuth(flip(auth.mac)))
    with pytest.raises(AuthError):  # the server's own MAC reflected back is not the client's proof
        server.on_client_auth(ClientAuth(server_hello.mac))
    assert server.on_client_auth(auth).recv is not None  # the genuine one still passes


def test_server_hello_bound_to_both_nonces() -> None:
    server = ServerHandshake(Keyring([NEW]))
    replayed = server.on_client_hello(ClientHandshake(Keyring([NEW])).hello())
    with pytest.raises(AuthError):  # a ServerHello from another handshake
        ClientHandshake(Keyring([NEW])).on_server_hello(replayed)
    client = ClientHandshake(Keyring([NEW]))
    hello = ServerHandshake(Keyring([NEW])).on_client_hello(client.hello())
    with pytest.raises(AuthError):  # a swapped server nonce
        client.on_server_hello(dataclasses.replace(hello, nonce=flip(hello.nonce)))


def test_client_auth_before_client_hello() -> None:
    with pytest.raises(AuthError) as info:
        ServerHandshake(Keyring([NEW])).on_client_auth(ClientAuth(b"m" * 32))
    assert info.value.reason == "handshake"


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1])
def test_wrong_version(version: int) -> None:
    client = ClientHandshake(Keyring([NEW]))
    server = ServerHandshake(Keyring([NEW]))
    with pytest.raises(AuthError) as info:
        server.on_client_hello(dataclasses.replace(client.hello(), version=version))
    assert info.value.reason == "version"
    hello = server.on_client_hello(client.hello())
    with pytest.raises(AuthError) as info:
        client.on_server_hello(dataclasses.replace(hello, version=version))
    assert info.value.reason == "version"


@pytest.mark.parametrize("n", [0, 31, 33, 64])
@pytest.mark.parametrize("keys", [[NEW], None])
def test_bad_nonce_length(n: int, keys: list[bytes] | None) -> None:
    client = ClientHandshake(Keyring(keys) if keys else None)
    server = ServerHandshake(Keyring(keys) if keys else None)
    with pytest.raises(AuthError) as info:
        server.on_client_hello(dataclasses.replace(client.hello(), nonce=b"n" * n))
    assert info.value.reason == "handshake"
    hello = server.on_client_hello(client.hello())
    with pytest.raises(AuthError) as info:
        client.on_server_hello(dataclasses.replace(hello, nonce=b"n" * n))
    assert info.value.reason == "handshake"


def test_insecure_both_sides() -> None:
    client, server = handshake(None, None)
    assert client == server and (client.send, client.recv) == (None, None)
    assert len(client.binding) == 32  # still unique to the connection: Hello proofs bind to it
    assert handshake(None, None)[0].binding != client.binding


def test_insecure_client_against_keyed_server() -> None:
    with pytest.raises(AuthError):
        handshake(None, [NEW])
    keyed_hello = ServerHandshake(Keyring([NEW])).on_client_hello(ClientHandshake(Keyring([NEW])).hello())
    with pytest.raises(AuthError):  # and an insecure client never accepts a keyed answer
        ClientHandshake(None).on_server_hello(keyed_hello)
    server = ServerHandshake(None)
    server.on_client_hello(ClientHandshake(None).hello())
    with pytest.raises(AuthError):  # nor an insecure server a client MAC
        server.on_client_auth(ClientAuth(b"m" * 32))


def test_keyed_client_against_insecure_server() -> None:
    with pytest.raises(AuthError):
        handshake([NEW], None)
    client = ClientHandshake(Keyring([NEW]))
    insecure_hello = ServerHandshake(None).on_client_hello(ClientHandshake(None).hello())
    with pytest.raises(AuthError):  # a stripped (downgraded) ServerHello is refused
        client.on_server_hello(insecure_hello)


# --- keys and keyrings ---------------------------------------------------------------------------


def test_key_id_and_keyring() -> None:
    assert len(key_id(NEW)) == 8
    assert key_id(NEW) == key_id(bytes(NEW))
    assert len({key_id(k) for k in (OLD, NEW, OTHER)}) == 3
    ring = Keyring([NEW, OLD])
    assert ring.public_id == key_id(NEW).hex()
    assert ring.get(key_id(OLD)) == OLD and ring.get(key_id(OTHER)) is None
    with pytest.raises(ValueError):
        Keyring([])


# --- sealed frames -------------------------------------------------------------------------------


def sealer_pair() -> tuple[FrameSealer, FrameSealer]:
    client, server = handshake([NEW], [NEW])
    return FrameSealer(client.send), FrameSealer(server.recv)


def test_seal_open_many_frames() -> None:
    tx, rx = sealer_pair()
    for i in range(200):
        body = bytes([i % 256]) * (i + 1)
        sealed = tx.seal(body)
        assert len(sealed) == len(body) + tx.overhead
        assert sealed[: len(body)] != body or len(body) < 4
        assert rx.open(sealed) == body
    assert tx.seq == rx.seq == 200
    assert tx.seal(b"same") != tx.seal(b"same")  # the counter is the nonce


def test_overhead_directions_and_insecure_pass_through() -> None:
    assert FrameSealer(NEW).overhead == 16
    client, server = handshake([NEW], [NEW])
    with pytest.raises(AuthError):  # each direction has its own key
        FrameSealer(server.send).open(FrameSealer(client.send).seal(b"hi"))
    tx, rx = FrameSealer(None), FrameSealer(None)
    assert tx.overhead == 0
    assert tx.seal(b"plain") == b"plain" and rx.open(b"plain") == b"plain"


def expect_bad_mac(rx: FrameSealer, data: bytes) -> None:
    seq = rx.seq
    with pytest.raises(AuthError) as info:
        rx.open(data)
    assert info.value.reason == "bad_mac"
    assert rx.seq == seq  # a failed open does not advance the counter


def test_replay() -> None:
    tx, rx = sealer_pair()
    first = tx.seal(b"one")
    assert rx.open(first) == b"one"
    expect_bad_mac(rx, first)
    assert rx.open(tx.seal(b"two")) == b"two"


def test_reorder_and_drop() -> None:
    tx, rx = sealer_pair()
    first, second = tx.seal(b"one"), tx.seal(b"two")
    expect_bad_mac(rx, second)
    assert rx.open(first) == b"one"
    assert rx.open(second) == b"two"
    tx.seal(b"lost")
    expect_bad_mac(rx, tx.seal(b"four"))


def flip_bit(pos: int) -> Any:
    def mangle(data: bytes) -> bytes:
        buf = bytearray(data)
        buf[pos] ^= 0x01
        return bytes(buf)

    return mangle


MANGLE = [flip_bit(0), flip_bit(5), flip_bit(-1), flip_bit(12), *(lambda b, k=k: b[:k] for k in (0, 1, 15, 16, 27)),
          lambda b: b + b"\x00", lambda b: b"\x00" + b]


@pytest.mark.parametrize("mangle", MANGLE)
def test_altered_frame(mangle: Any) -> None:
    tx, rx = sealer_pair()
    sealed = tx.seal(b"a frame body")  # 12 + 16 = 28 bytes
    expect_bad_mac(rx, mangle(sealed))
    assert rx.open(sealed) == b"a frame body"


# --- properties: any field values a hostile peer can put in a handshake message --------------------------



VERSIONS = st.one_of(st.just(PROTOCOL_VERSION), st.integers(-1, 2**63 - 1))
SHORT = st.binary(max_size=40)


@given(VERSIONS, st.lists(st.one_of(st.just(key_id(NEW)), SHORT), max_size=6), SHORT)
def test_any_client_hello_is_answered_or_refused_with_an_auth_error(version: int, kids: list[bytes],
                                                                   nonce: bytes) -> None:
    server = ServerHandshake(Keyring([NEW]))
    try:
        reply = server.on_client_hello(ClientHello(version, tuple(kids), nonce))
    except AuthError:
        return
    assert version == PROTOCOL_VERSION and len(nonce) == 32 and key_id(NEW) in kids
    with pytest.raises(AuthError):  # without the key, no ClientAuth passes
        server.on_client_auth(ClientAuth(bytes(32)))
    assert reply.key_id == key_id(NEW)


@given(VERSIONS, SHORT, SHORT, SHORT)
def test_any_server_hello_without_the_key_is_refused(version: int, kid: bytes, nonce: bytes, mac: bytes) -> None:
    with pytest.raises(AuthError):
        ClientHandshake(Keyring([NEW])).on_server_hello(ServerHello(version, kid, nonce, mac))
