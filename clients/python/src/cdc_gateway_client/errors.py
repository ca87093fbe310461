"""Everything the client reports as an exception, one type per cause.

A subscription's failure (`GatewayError`) reaches its `on_error`; a connection's failure
reaches the client's. Only two things end a client for good: `Unauthorized` (the gateway
refused a token that cannot change, 4001/4002) and `close()`.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error this package raises or reports."""


class GatewayError(ClientError):
    """A protocol error reply (`{"type":"error"}`) as an exception."""

    def __init__(self, code: str, message: str, topic: str | None = None, request_id: Any = None):
        super().__init__(f"{code}: {message}")
        #: One of `messages.ErrorCode` (INVALID_FILTER, FORBIDDEN, ...).
        self.code = code
        self.message = message
        self.topic = topic
        self.request_id = request_id


class Unauthorized(ClientError):
    """The gateway closed the connection with 4001 (bad or expired token) or 4002 (no token in
    time) and the token is fixed, so reconnecting cannot cure it."""

    def __init__(self, close_code: int, reason: str):
        super().__init__(f"connection closed: {close_code} {reason}".strip())
        self.close_code = close_code
        self.reason = reason


class TokenError(ClientError):
    """The token callback raised; the client retries with backoff."""


class ProtocolError(ClientError):
    """The gateway sent something that is not a message of the protocol."""


class SseError(ClientError):
    """`/sse` refused the stream before it started (HTTP 4xx/5xx with `{code, message}`)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
