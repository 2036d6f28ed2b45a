"""Write current-format seeds into tests/fuzz/corpus (``v<protocol>-*``): every example message of the codec
tests framed (mode 0), the handshake messages at today's protocol version (modes 1 and 4), and a node meta
(mode 2). Run it after a change to the wire format; old seeds stay (they still exercise the refusals).

    python tests/fuzz/make_seeds.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "unit"))

from test_wire_codec import EXAMPLES  # noqa: E402

from swarmd.wire import codec  # noqa: E402
from swarmd.wire.framing import frame  # noqa: E402
from swarmd.wire.messages import PROTOCOL_VERSION, ClientHello, NodeMeta, ServerHello, SpanState  # noqa: E402

CAP = (1 << 16) - 1


def seed(mode: int, body: bytes) -> bytes:
    return bytes([mode]) + CAP.to_bytes(2, "big") + body


def main() -> None:
    out: dict[str, bytes] = {}
    for msg in EXAMPLES:
        if isinstance(msg, (ClientHello, ServerHello)):
            msg = dataclasses.replace(msg, version=PROTOCOL_VERSION)
        name = type(msg).__name__
        body = codec.encode(msg)
        out[f"frame-{name}"] = seed(0, frame(body))
        if msg.TAG <= 3:
            out[f"handshake-{name}"] = seed(1, body)
            out[f"drive-{name}"] = seed(4, body)
    meta = NodeMeta("swarmd/0.1", PROTOCOL_VERSION, "tiny-llama", 4, "cpu", 1 << 30, 4, 0.001,
                    (SpanState(0, 2, "serving"),), 0, 0, "serving", False, ("n2",), ("0123456789abcdef",))
    out["meta"] = seed(2, codec.encode_meta(meta))
    for name, data in out.items():
        digest = hashlib.sha256(data).hexdigest()[:8]
        (HERE / "corpus" / f"v{PROTOCOL_VERSION}-{name}-{digest}").write_bytes(data)
    print(f"wrote {len(out)} seeds")


if __name__ == "__main__":
    main()
