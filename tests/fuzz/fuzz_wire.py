#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of everything that parses peer bytes: the frame decoder
fed in arbitrary splits, then each frame through the message codec (with and without the handshake's
tag filter), the node-metadata decoder, the AEAD frame opener and the client/server handshake.

Invariant: bad input raises a ``ProtocolError`` (``DecodeError``/``AuthError``) and nothing else; a
message that decodes re-encodes to a body that decodes to the same message. Any other exception is a
crash: atheris stops and writes the input as ``crash-*``, which then belongs in ``corpus/`` as a
regression seed (``tests/fuzz/test_fuzz.py`` replays every seed in CI, then fuzzes for a bounded time).

    python tests/fuzz/fuzz_wire.py tests/fuzz/corpus -max_total_time=60
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from swarmd.errors import ProtocolError
    from swarmd.wire import codec
    from swarmd.wire.crypto import ClientHandshake, FrameSealer, Keyring, ServerHandshake
    from swarmd.wire.framing import FrameDecoder
    from swarmd.wire.messages import HANDSHAKE_TAGS, ClientAuth, ClientHello, ServerHello

KEY = bytes(range(32))
SEAL_KEY = bytes(range(32, 64))


def one_input(data: bytes) -> None:
    """``data``: a mode byte, a 2-byte frame cap, then the bytes under test (seeds are built that way)."""
    if len(data) < 3:
        return
    mode, cap, rest = data[0] % 5, 1 + int.from_bytes(data[1:3], "big"), data[3:]
    try:
        if mode == 0:  # frames in arbitrary splits, then every body as a message
            dec = FrameDecoder(cap)
            step = max(1, len(rest) // 7 or 1)
            for i in range(0, len(rest), step):
                for body in dec.feed(rest[i: i + step]):
                    decode_and_round_trip(body)
        elif mode == 1:
            decode_and_round_trip(rest, HANDSHAKE_TAGS)
        elif mode == 2:
            meta = codec.decode_meta(rest)
            assert codec.decode_meta(codec.encode_meta(meta)) == meta
        elif mode == 3:  # a sealed frame: forged bytes must fail authentication, never crash
            FrameSealer(SEAL_KEY).open(rest)
        else:  # a handshake driven by hostile messages
            server = ServerHandshake(Keyring([KEY]))
            msg = codec.decode(rest, HANDSHAKE_TAGS)
            if isinstance(msg, ClientHello):
                server.on_client_hello(msg)
            elif isinstance(msg, ClientAuth):
                server.on_client_auth(msg)
            elif isinstance(msg, ServerHello):
                ClientHandshake(Keyring([KEY])).on_server_hello(msg)
    except ProtocolError:
        pass


def decode_and_round_trip(body: bytes, allowed: frozenset[int] | None = None) -> None:
    msg = codec.decode(body, allowed)
    assert codec.decode(codec.encode(msg)) == msg


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
