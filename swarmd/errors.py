"""One hierarchy for every error swarmd raises on purpose.

Each error carries an HTTP status and an OpenAI-style ``type``/``code`` so the API
layer can turn it into a response without a lookup table. Errors that are also a
builtin kind derive from that builtin too (a timeout is a ``TimeoutError``).
"""

from __future__ import annotations


class SwarmdError(Exception):
    """Base class of every deliberate swarmd error."""

    status = 500
    type = "server_error"
    code = "internal_error"
    failed_node: str | None = None  # ring errors: the stage that failed, when known

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- configuration and model sources (raised at start-up) --------------------------------


class ConfigError(SwarmdError, ValueError):
    code = "config_error"


class ModelSourceError(SwarmdError):
    """The model path is missing, its format unknown or its architecture unsupported."""

    code = "model_source_error"


class UnsupportedArchitecture(ModelSourceError):
    code = "unsupported_architecture"


# --- request errors (4xx) -----------------------------------------------------------------


class InvalidRequest(SwarmdError, ValueError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Forbidden(InvalidRequest):
    """Not allowed from where the request came (e.g. administration over the TCP listener)."""

    status = 403
    code = "forbidden"


class NotFound(InvalidRequest):
    """The request names something this node does not know (a member, a route)."""

    status = 404
    code = "not_found"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


# --- capacity errors (503 + Retry-After) ----------------------------------------------------


class CapacityError(SwarmdError):
    status = 503
    type = "server_error"
    code = "unavailable"
    retry_after_s = 1


class NotReady(CapacityError):
    code = "not_ready"


class NoChain(NotReady):
    """No chain of reachable nodes covers every layer (a span has no live holder, or this node's side of a
    partition lacks one). Raised at once rather than waited out; placement may load the span elsewhere."""

    code = "no_chain"
    retry_after_s = 2


class Unresponsive(NotReady):
    """Stages of a chain did not accept a new session in time (unreachable, frozen or overloaded)."""

    code = "stage_unresponsive"

    def __init__(self, message: str, nodes: frozenset[str]) -> None:
        super().__init__(message)
        self.nodes = nodes
        self.failed_node = min(nodes) if nodes else None


class TooManyRequests(CapacityError):
    """One client holds as many concurrent generations as it may: 429 + Retry-After."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class KVBudgetExceeded(CapacityError, MemoryError):
    code = "kv_budget_exceeded"


class ShuttingDown(CapacityError):
    code = "shutting_down"


# --- timeouts ----------------------------------------------------------------------------------


class StepTimeout(SwarmdError, TimeoutError):
    status = 504
    code = "step_timeout"


# --- peer protocol (a peer's bad input closes that connection only) ----------------------------


class ProtocolError(SwarmdError):
    """A peer sent something that breaks the protocol. ``reason`` is a short label for logs and metrics."""

    code = "protocol_error"

    def __init__(self, message: str, reason: str = "protocol") -> None:
        super().__init__(message)
        self.reason = reason


class DecodeError(ProtocolError):
    code = "decode_error"


class AuthError(ProtocolError):
    """The handshake failed, or a frame failed authentication (bad MAC, replay, reorder)."""

    code = "auth_error"


class PeerUnavailable(SwarmdError, ConnectionError):
    """No live connection to a peer right now."""

    status = 503
    code = "peer_unavailable"
