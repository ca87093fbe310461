"""Where a token comes from and when a fresh one is due.

A token is a string or a callable (plain or async) that returns one. A callable is called at
every connect and again before the current token's `exp`, so a connection outlives any
number of token lifetimes; a fixed string ends with its `exp` (the gateway closes with 4001).
The client only reads `exp`; the gateway checks the signature.
"""

from __future__ import annotations

import base64
import inspect
import json
import time
from typing import Awaitable, Callable, Union

from .errors import TokenError

TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]]]


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT in epoch seconds, or None when it has none or is no JWT."""
    parts = token.split(".")
    if len(parts) < 2:
        return None
    try:
        body = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(body))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


def refresh_delay(token: str, margin: float, now: float | None = None) -> float | None:
    """Seconds until a fresh token should be sent: `margin` before `exp`, or at half the
    remaining lifetime when that is shorter (a 10 s token with a 30 s margin is refreshed
    after 5 s, not at once). None for a token without `exp`."""
    expiry = token_expiry(token)
    if expiry is None:
        return None
    remaining = expiry - (time.time() if now is None else now)
    return max(0.0, remaining - min(margin, remaining / 2))


async def obtain(source: TokenSource) -> str:
    """The current token of `source`; a failing callable becomes a `TokenError`."""
    if isinstance(source, str):
        return source
    try:
        token = source()
        if inspect.isawaitable(token):
            token = await token
    except Exception as e:  # noqa: BLE001 - whatever the application's callable raises
        raise TokenError(f"the token callback failed: {e!r}") from e
    if not isinstance(token, str) or not token:
        raise TokenError(f"the token callback returned {token!r}, not a token")
    return token
