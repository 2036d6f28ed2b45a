"""The peer-to-peer wire: typed messages, their codec (the only msgpack user), framing and crypto.

Everything here is sans-I/O: bytes in, values or bytes out. ``proto_spec.md`` is the specification.
"""
