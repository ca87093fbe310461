"""Reconnect delays: full-jitter exponential backoff, as the TypeScript client has it.

Full jitter (uniform in [0, ceiling)) spreads the clients of a restarted gateway over the
window instead of bringing them back in lockstep; a connection that stayed open for
`STABLE_AFTER` seconds starts the sequence over.
"""

from __future__ import annotations

import random as _random
from typing import Callable

#: A connection open this long (seconds) resets the backoff.
STABLE_AFTER = 5.0


def backoff_delay(
    attempt: int,
    min_delay: float,
    max_delay: float,
    random: Callable[[], float] = _random.random,
) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based)."""
    ceiling = min(max_delay, min_delay * 2 ** min(attempt, 30))
    return random() * ceiling
