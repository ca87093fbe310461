"""One topic of a client and the position it resumes from: the "nothing missed, nothing
repeated" part of the client, kept free of I/O so that it can be tested on its own.

The position is the gateway's (docs/protocol.md 7.2): the subscribe ack's `position`, raised
with the `source`/`partition`/`offset` of every live data message. After a reconnect the
subscribe carries it as `since`; `recovered: true` means the missed events follow and the
kept position stays (the replay raises it), `recovered: false` means the subscription starts
over (`on_reset`).

A snapshot subscription keeps **no** position until its `synced`: a connection lost during
the snapshot rows would otherwise resume live from the ack's position with half a snapshot
and never see the rest. Until `synced` a reconnect takes the snapshot again. (The TypeScript
client keeps the ack's position at once; this one deliberately does not.)
"""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Union

from .errors import GatewayError
from .messages import DataMessage, Position, RequestId, ResetMessage, SubscribeAck, SyncedMessage

if TYPE_CHECKING:
    from .client import Client

#: A callback may be a plain function or a coroutine function; a coroutine is awaited before
#: the next message is read, so a slow handler slows the connection (and so the gateway's
#: queue) rather than piling events up in memory.
Callback = Callable[[Any], Union[None, Awaitable[None]]]

#: What `on_reset` receives: the ack that said `recovered: false`, the error that refused the
#: kept position, or the gateway's `reset` message (records lost at the source).
ResetCause = Union[SubscribeAck, GatewayError, ResetMessage]


async def call(callback: Callable[..., Any] | None, *args: Any) -> None:
    """Calls an application callback, awaiting it when it is a coroutine."""
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class Subscription:
    """A subscription to one gateway topic; made by `Client.subscribe`, not directly.

    It survives reconnects: every data message reaches `on_event` once, in order per
    partition. It ends with `unsubscribe()`, `Client.close()`, or an error the gateway gives
    (INVALID_FILTER, FORBIDDEN, ...), which reaches `on_error`.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        on_event: Callable[[DataMessage], Any],
        *,
        filters: Mapping[str, Any] | None = None,
        snapshot: bool = False,
        presence: bool = False,
        on_presence: Callable[[Any], Any] | None = None,
        on_ack: Callable[[SubscribeAck], Any] | None = None,
        on_synced: Callable[[SyncedMessage], Any] | None = None,
        on_reset: Callable[[ResetCause], Any] | None = None,
        on_error: Callable[[GatewayError], Any] | None = None,
    ):
        self.topic = topic
        #: Server-side filters (protocol section 4), sent with every subscribe.
        self.filters = dict(filters) if filters else None
        #: Take a snapshot first, and again whenever the subscription starts over.
        self.snapshot = snapshot
        #: Receive the topic's presence changes through `on_presence` (protocol section 10).
        self.presence = presence
        self.on_presence = on_presence
        self.on_event = on_event
        self.on_ack = on_ack
        self.on_synced = on_synced
        self.on_reset = on_reset
        self.on_error = on_error
        #: Data messages dropped because they were at or below the kept position.
        self.duplicates_dropped = 0
        #: False after unsubscribe or after an error ended it.
        self.active = True
        self._client = client
        # Where a resume starts; None: the next subscribe starts afresh (snapshot if asked).
        self._kept: Position | None = None
        # A snapshot's ack position, kept once `synced` says the rows are all in.
        self._pending: Position | None = None
        # The id of the subscribe this connection waits on.
        self._awaiting: RequestId | None = None
        # The subscribe in flight carried `since`.
        self._resuming = False
        # Set at the first ack (a snapshot subscription: the first `synced`).
        self._ready = asyncio.Event()
        self._ended: BaseException | None = None

    @property
    def position(self) -> Position:
        """A copy of the kept position (empty until there is one)."""
        return dict(self._kept or {})

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Waits for the first ack, or for a snapshot subscription its first `synced`.
        Raises the error that ended the subscription, if one did."""
        waiter = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait_for(waiter, timeout)
        finally:
            waiter.cancel()
        if self._ended is not None:
            raise self._ended

    async def unsubscribe(self) -> None:
        if not self.active:
            return
        self.active = False
        await self._client._unsubscribe(self)

    def __repr__(self) -> str:
        return f"Subscription({self.topic!r}, position={self._kept}, active={self.active})"

    # ------------------------------------------------------------ the resume state machine

    def _request(self, request_id: RequestId) -> dict[str, Any]:
        """The subscribe message for this connection."""
        message: dict[str, Any] = {"action": "subscribe", "topic": self.topic, "id": request_id}
        if self.filters:
            message["filters"] = self.filters
        self._resuming = self._kept is not None
        self._pending = None
        if self._kept is not None:
            message["since"] = dict(self._kept)
        elif self.snapshot:
            message["snapshot"] = True
        if self.presence:
            message["presence"] = True
        self._awaiting = request_id
        return message

    def _acked(self, ack: SubscribeAck) -> bool:
        """Takes the ack's position; True when the subscription must start over."""
        self._awaiting = None
        if self._resuming:
            if ack.recovered is True:
                # The missed events follow: keep our own offsets, or they would count as
                # repeats; a partition we did not know starts at the ack's.
                self._kept = {**ack.position, **(self._kept or {})}
                return False
            # Starting over: the kept position belongs to the state the application drops.
            self._kept = None if self.snapshot else dict(ack.position)
            return True
        if ack.snapshot is not None:
            self._kept = None
            self._pending = dict(ack.position)
            return False
        self._kept = dict(ack.position)
        self._ready.set()
        return False

    def _synced(self) -> None:
        if self._pending is not None:
            self._kept = self._pending
            self._pending = None
        self._ready.set()

    def _restart(self) -> None:
        """Forgets the position: the next subscribe starts afresh (a new snapshot)."""
        self._kept = None
        self._pending = None

    def _end(self, error: BaseException) -> None:
        self.active = False
        self._ended = error
        self._ready.set()

    def _admit(self, message: DataMessage) -> bool:
        """True when the message is new to this subscription; raises the kept position."""
        # The gateway acks a subscribe before its first event, so data that comes while a
        # fresh subscribe waits for its ack belongs to the subscription it replaces.
        if self._awaiting is not None and not self._resuming:
            return False
        if message.snapshot:
            return True
        kept = self._kept
        if kept is None:
            # Live data is only sent after `synced`; nothing to dedupe against.
            return True
        key = message.key
        bare = str(message.partition)
        if key not in kept and bare in kept:
            key = bare  # a position with bare partition keys (one source topic)
        last = kept.get(key)
        if last is not None and message.offset <= last:
            self.duplicates_dropped += 1
            return False
        kept[key] = message.offset
        return True
