"""The WebSocket client: one connection, kept open until `close()`, carrying every
subscription across reconnects.

One task owns the connection (`_run`): it connects, authenticates, (re)subscribes every
subscription and reads messages in order, calling the application's callbacks inline, so an
`on_reset` never overtakes the events before it and a slow async callback slows the reading
(the gateway then waits, protocol section 5) instead of filling memory. When the connection
ends it waits a full-jitter backoff and starts again; positions live in the subscriptions,
so a new connection resumes them. Dead connections are found by the `websockets` library's
own ping frames (`heartbeat`).

With a token callable, the token is fetched at every connect and a fresh one is sent in an
`auth` message before the current one's `exp`; a 4001/4002 close is then cured by
reconnecting with a fresh token. With a fixed token, it ends the client (`Unauthorized`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from typing import Any, Callable, Mapping

import websockets
from websockets.asyncio.client import ClientConnection, connect

from .backoff import STABLE_AFTER, backoff_delay
from .errors import ClientError, GatewayError, ProtocolError, TokenError, Unauthorized
from .messages import (
    AuthAck,
    DataMessage,
    ErrorMessage,
    PingMessage,
    PresenceMessage,
    RequestId,
    ResetMessage,
    SubscribeAck,
    SyncedMessage,
    parse_message,
)
from .subscription import ResetCause, Subscription, call
from .tokens import TokenSource, obtain, refresh_delay

log = logging.getLogger("cdc_gateway_client")

#: Close codes of protocol section 3.5 that the client acts on.
UNAUTHORIZED = 4001
AUTH_TIMEOUT = 4002
#: The close code the client uses when it drops a connection itself.
CLIENT_DROP = 4000
#: Wait before retrying a subscribe refused with RATE_LIMITED, or a failed token refresh.
RETRY_AFTER = 1.0


class ConnectionState(str, enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Client:
    """A cdc-gateway client. Use as `async with Client(url) as client:` or call
    `await client.connect()` and `await client.close()`.

    `url` is the gateway's `/ws` endpoint, e.g. `ws://127.0.0.1:8080/ws`.
    """

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource | None = None,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        refresh_margin: float = 30.0,
        heartbeat: float | None = 20.0,
        open_timeout: float = 10.0,
        parse_float: Callable[[str], Any] = float,
        on_state: Callable[[ConnectionState], None] | None = None,
        on_error: Callable[[ClientError], None] | None = None,
    ):
        self.url = url
        #: A JWT, or a callable (plain or async) returning a fresh one (`tokens` module).
        self.token = token
        #: Reconnect delays: uniform in [0, min(max_delay, min_delay * 2**attempt)).
        self.min_delay = min_delay
        self.max_delay = max_delay
        #: A fresh token is sent this long before `exp` (or at half the remaining lifetime).
        self.refresh_margin = refresh_margin
        #: Ping-frame interval, and how long a pong may take; None turns them off.
        self.heartbeat = heartbeat
        self.open_timeout = open_timeout
        #: `decimal.Decimal` keeps the gateway's exact decimals exact.
        self.parse_float = parse_float
        #: Plain callables (not coroutines): connection state changes, connection errors.
        self.on_state = on_state
        self.on_error = on_error
        #: Connections opened so far (for monitoring and tests).
        self.connects = 0
        self._state = ConnectionState.CONNECTING
        self._ever_opened = False
        self._subscriptions: dict[str, Subscription] = {}
        self._pending: dict[RequestId, tuple[str, str | None]] = {}
        # Presence questions awaiting their answer, by request id.
        self._presence_waiters: dict[RequestId, asyncio.Future[PresenceMessage]] = {}
        self._next_id = 1
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self._refresh_timer: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._reconnect_delay: float | None = None
        self._current_token: str | None = None
        self._failure: ClientError | None = None

    # ------------------------------------------------------------ the application's API

    @property
    def state(self) -> ConnectionState:
        return self._state

    async def connect(self) -> None:
        """Starts connecting (and reconnecting) in the background; returns at once."""
        if self._state is ConnectionState.CLOSED:
            raise ClientError("the client is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"cdc-gateway-client {self.url}")

    async def wait_open(self, timeout: float | None = None) -> None:
        """Waits until the connection is open (authenticated). Raises what ended the client,
        if it ended."""
        waiter = asyncio.ensure_future(self._opened.wait())
        try:
            await asyncio.wait_for(waiter, timeout)
        finally:
            waiter.cancel()
        if self._failure is not None:
            raise self._failure

    async def subscribe(
        self,
        topic: str,
        on_event: Callable[[DataMessage], Any],
        *,
        filters: Mapping[str, Any] | None = None,
        snapshot: bool = False,
        presence: bool = False,
        on_presence: Callable[[PresenceMessage], Any] | None = None,
        on_ack: Callable[[SubscribeAck], Any] | None = None,
        on_synced: Callable[[SyncedMessage], Any] | None = None,
        on_reset: Callable[[ResetCause], Any] | None = None,
        on_error: Callable[[GatewayError], Any] | None = None,
    ) -> Subscription:
        """Subscribes to a gateway topic (`cdc.<entity>` or `cdc.<entity>.<id>`); one
        subscription per topic per client. Returns at once; `await sub.wait_ready()` waits
        for the gateway's ack (and the snapshot, when asked for).

        `on_event` receives every data message once, in order per partition, across
        reconnects. `on_reset` means events may have been missed: drop what was built from
        earlier events (a snapshot subscription receives a fresh snapshot next).
        """
        if self._state is ConnectionState.CLOSED:
            raise ClientError("the client is closed")
        if topic in self._subscriptions:
            raise ValueError(f"already subscribed to {topic} (one subscription per topic per client)")
        sub = Subscription(
            self, topic, on_event, filters=filters, snapshot=snapshot,
            presence=presence, on_presence=on_presence,
            on_ack=on_ack, on_synced=on_synced, on_reset=on_reset, on_error=on_error,
        )
        self._subscriptions[topic] = sub
        if self._state is ConnectionState.OPEN:
            await self._send_subscribe(sub)
        return sub

    async def presence(self, topic: str, timeout: float = 10.0) -> PresenceMessage:
        """Who watches `topic` over every replica: its subscriber count and, under
        `--auth jwt`, the users (token subjects). Raises `GatewayError` (FORBIDDEN for a
        topic the token may not read), `ClientError` when not connected or the connection
        drops before the answer, `asyncio.TimeoutError` after `timeout` seconds."""
        if self._state is not ConnectionState.OPEN:
            raise ClientError(f"not connected ({self._state.value})")
        request_id = self._request("presence", topic)
        answer: asyncio.Future[PresenceMessage] = asyncio.get_running_loop().create_future()
        self._presence_waiters[request_id] = answer
        try:
            await self._send({"action": "presence", "topic": topic, "id": request_id})
            return await asyncio.wait_for(asyncio.shield(answer), timeout)
        finally:
            self._presence_waiters.pop(request_id, None)

    async def reconnect(self, delay: float = 0.0) -> None:
        """Drops the connection and reconnects after `delay` seconds, resuming every
        subscription: for applications that know the network changed, and for tests."""
        if self._state is ConnectionState.CLOSED:
            return
        self._reconnect_delay = delay
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close(CLIENT_DROP, "reconnect requested")

    async def close(self) -> None:
        """Closes the connection for good; every subscription stops."""
        if self._state is ConnectionState.CLOSED and self._task is None:
            return
        self._set_state(ConnectionState.CLOSED)
        task, self._task = self._task, None
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close(1000, "client closed")
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._cancel_timers()
        for sub in self._subscriptions.values():
            sub.active = False
        self._opened.set()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ the connection task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while self._state is not ConnectionState.CLOSED:
            opened_at: float | None = None
            close_code: int | None = None
            close_reason = ""
            try:
                token = None if self.token is None else await obtain(self.token)
                async with connect(
                    self.url,
                    open_timeout=self.open_timeout,
                    ping_interval=self.heartbeat,
                    ping_timeout=self.heartbeat,
                    close_timeout=2,
                    max_size=None,
                    max_queue=64,
                ) as ws:
                    opened_at = loop.time()
                    self._ws = ws
                    self.connects += 1
                    try:
                        await self._session(ws, token)
                    except websockets.ConnectionClosed:
                        pass
                    close_code, close_reason = ws.close_code, ws.close_reason or ""
            except TokenError as e:
                self._report(e)
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as e:
                log.debug("connection to %s failed: %r", self.url, e)
            finally:
                self._ws = None
                self._connection_ended()
                if self._state is ConnectionState.OPEN:
                    self._set_state(ConnectionState.RECONNECTING)
            if self._state is ConnectionState.CLOSED:
                return
            if close_code in (UNAUTHORIZED, AUTH_TIMEOUT) and not callable(self.token):
                self._failure = Unauthorized(close_code, close_reason)
                self._report(self._failure)
                self._set_state(ConnectionState.CLOSED)
                self._opened.set()
                for sub in self._subscriptions.values():
                    sub._end(self._failure)
                self._task = None
                return
            if opened_at is not None and loop.time() - opened_at >= STABLE_AFTER:
                attempt = 0
            if self._reconnect_delay is not None:
                delay, self._reconnect_delay = self._reconnect_delay, None
            else:
                delay = backoff_delay(attempt, self.min_delay, self.max_delay)
                attempt += 1
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection, token: str | None) -> None:
        self._pending = {}
        for waiter in self._presence_waiters.values():
            if not waiter.done():
                waiter.set_exception(ClientError("the connection dropped before the presence answer"))
        self._current_token = token
        if token is not None:
            await self._send({"action": "auth", "token": token, "id": self._request("auth")})
        else:
            await self._ready()
        async for text in ws:
            if self._ws is not ws:
                return  # dropped by reconnect() or close(): nothing more from it counts
            try:
                message = parse_message(text, self.parse_float)
            except ProtocolError as e:
                self._report(e)
                continue
            await self._handle(message)

    async def _ready(self) -> None:
        """The connection may carry subscriptions: (re)subscribe every one."""
        self._ever_opened = True
        self._set_state(ConnectionState.OPEN)
        self._opened.set()
        for sub in list(self._subscriptions.values()):
            if sub.active and self._subscriptions.get(sub.topic) is sub:
                await self._send_subscribe(sub)

    async def _handle(self, message: Any) -> None:
        if isinstance(message, DataMessage):
            sub = self._subscriptions.get(message.topic)
            if sub is not None and sub._admit(message):
                await self._call(sub.on_event, message)
        elif isinstance(message, SubscribeAck):
            if message.id is not None:
                self._pending.pop(message.id, None)
            await self._subscribed(message)
        elif isinstance(message, AuthAck):
            if message.id is not None:
                self._pending.pop(message.id, None)
            await self._authenticated()
        elif isinstance(message, SyncedMessage):
            sub = self._subscriptions.get(message.topic)
            if sub is not None and sub._awaiting is None:
                sub._synced()
                await self._call(sub.on_synced, message)
        elif isinstance(message, ResetMessage):
            sub = self._subscriptions.get(message.topic)
            if sub is not None:
                await self._reset(sub, message)
        elif isinstance(message, ErrorMessage):
            await self._failed(message)
        elif isinstance(message, PresenceMessage):
            if message.id is not None:
                self._pending.pop(message.id, None)
                waiter = self._presence_waiters.get(message.id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
            else:
                sub = self._subscriptions.get(message.topic)
                if sub is not None and sub.presence and sub.on_presence is not None:
                    await self._call(sub.on_presence, message)
        elif isinstance(message, PingMessage):
            await self._send({"action": "pong"})

    async def _authenticated(self) -> None:
        self._schedule_refresh()
        if self._state is not ConnectionState.OPEN:
            await self._ready()

    async def _subscribed(self, ack: SubscribeAck) -> None:
        sub = self._subscriptions.get(ack.topic)
        # An ack of a subscribe this connection no longer waits for (replaced) is stale.
        if sub is None or (ack.id is not None and sub._awaiting != ack.id):
            return
        start_over = sub._acked(ack)
        await self._call(sub.on_ack, ack)
        if start_over:
            await self._reset(sub, ack)

    async def _reset(self, sub: Subscription, cause: ResetCause) -> None:
        """The subscription cannot go on from its state: the application drops it, and a
        snapshot subscription is made again, taking the rows as they now stand."""
        refused = isinstance(cause, GatewayError)
        if refused or sub.snapshot:
            sub._restart()
        await self._call(sub.on_reset, cause)
        if not sub.active or self._subscriptions.get(sub.topic) is not sub:
            return
        if sub.snapshot or refused:
            await self._send_subscribe(sub)

    async def _failed(self, message: ErrorMessage) -> None:
        error = GatewayError(message.code, message.message, message.topic, message.id)
        waiter = self._presence_waiters.get(message.id) if message.id is not None else None
        if waiter is not None:
            self._pending.pop(message.id, None)
            if not waiter.done():
                waiter.set_exception(error)
            return
        pending = self._pending.pop(message.id, None) if message.id is not None else None
        topic = pending[1] if pending is not None and pending[0] == "subscribe" else message.topic
        sub = self._subscriptions.get(topic) if topic is not None else None
        about_subscription = sub is not None and (
            (pending is not None and pending[0] == "subscribe")
            or (pending is None and message.code == "FORBIDDEN")
        )
        if sub is None or not about_subscription:
            self._report(error)
            return
        if message.code == "INVALID_MESSAGE" and pending is not None and sub._resuming:
            # The gateway refused the kept position itself: start over, as after
            # `recovered: false`.
            sub._awaiting = None
            await self._reset(sub, error)
            return
        if message.code == "RATE_LIMITED":
            sub._awaiting = None
            self._later(RETRY_AFTER, self._retry_subscribe(sub))
        else:
            del self._subscriptions[sub.topic]
            sub._end(error)
        if sub.on_error is not None:
            await self._call(sub.on_error, error)
        else:
            self._report(error)

    async def _retry_subscribe(self, sub: Subscription) -> None:
        if sub.active and self._subscriptions.get(sub.topic) is sub and self._state is ConnectionState.OPEN:
            await self._send_subscribe(sub)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subscriptions.get(sub.topic) is not sub:
            return
        del self._subscriptions[sub.topic]
        if self._state is ConnectionState.OPEN:
            await self._send({"action": "unsubscribe", "topic": sub.topic, "id": self._request("unsubscribe")})

    # ------------------------------------------------------------ tokens

    def _schedule_refresh(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        token = self._current_token
        if not callable(self.token) or token is None:
            return
        delay = refresh_delay(token, self.refresh_margin)
        if delay is not None:
            self._refresh_timer = self._later(delay, self._refresh(self._ws))

    async def _refresh(self, ws: ClientConnection | None) -> None:
        try:
            token = await obtain(self.token)  # type: ignore[arg-type]
        except TokenError as e:
            self._report(e)
            self._refresh_timer = self._later(RETRY_AFTER, self._refresh(ws))
            return
        if ws is None or self._ws is not ws or self._state is not ConnectionState.OPEN:
            return
        self._current_token = token
        await self._send({"action": "auth", "token": token, "id": self._request("auth")})

    # ------------------------------------------------------------ plumbing

    async def _send_subscribe(self, sub: Subscription) -> None:
        await self._send(sub._request(self._request("subscribe", sub.topic)))

    def _request(self, kind: str, topic: str | None = None) -> int:
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = (kind, topic)
        return request_id

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(json.dumps(message))
        except websockets.ConnectionClosed:
            # The reading loop sees the close too and reconnects.
            pass

    def _later(self, delay: float, coroutine: Any) -> asyncio.Task[None]:
        """Runs `coroutine` after `delay`, unless the connection ends first."""

        async def timer() -> None:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                coroutine.close()
                raise
            try:
                await coroutine
            except Exception as e:  # noqa: BLE001 - reported, never lost in a task
                self._report(ClientError(f"a timer failed: {e!r}"))

        task = asyncio.create_task(timer())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)
        return task

    def _cancel_timers(self) -> None:
        for task in list(self._timers):
            task.cancel()
        self._timers.clear()

    def _connection_ended(self) -> None:
        self._cancel_timers()
        self._opened.clear()
        for sub in self._subscriptions.values():
            sub._awaiting = None

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self._state = state
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:  # noqa: BLE001 - an application callback never breaks the client
                log.exception("on_state raised")

    def _report(self, error: ClientError) -> None:
        if self.on_error is None:
            log.warning("%s", error)
            return
        try:
            self.on_error(error)
        except Exception:  # noqa: BLE001
            log.exception("on_error raised")

    async def _call(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        """Runs an application callback; what it raises is reported, never breaks the client."""
        try:
            await call(callback, *args)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            log.exception("a subscription callback raised")
            self._report(ClientError(f"a callback raised: {e!r}"))
