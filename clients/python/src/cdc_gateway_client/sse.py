"""Reading `/sse` (docs/protocol.md 7.4), for environments where WebSockets cannot go:
proxies that only pass plain HTTP, serverless functions, read-only dashboards.

An `SseReader` is an async iterator of the same typed messages the WebSocket client sees
(`SubscribeAck`, `DataMessage`, `SyncedMessage`, `ResetMessage`), over one or more topics
in one stream. It reconnects with backoff and resumes with `Last-Event-ID`, the stream's
own position; the same rules as the WebSocket client apply:

- with `snapshot=True` it keeps no position until every topic's `synced` has arrived, so
  a stream lost during the snapshot takes it again instead of resuming live with half of it;
- an ack with `recovered: false` (or a `reset`) calls `on_reset`; a snapshot stream then
  starts over with a fresh snapshot, a live one goes on from the new position;
- a data message at or below the kept offset of its partition is dropped, never repeated.

A stream also ends when its token expires (the gateway ends it): with a token callable the
reader reconnects at once with a fresh token and resumes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Callable, Iterable, Mapping

import httpx

from .backoff import STABLE_AFTER, backoff_delay
from .errors import ClientError, ProtocolError, SseError, TokenError
from .messages import (
    DataMessage,
    Position,
    ResetMessage,
    ServerMessage,
    SubscribeAck,
    SyncedMessage,
    parse_message,
)
from .subscription import ResetCause, call
from .tokens import TokenSource, obtain

log = logging.getLogger("cdc_gateway_client")

#: Refusals that another try cannot change (a bad topic or filter, a forbidden topic).
_FATAL = {400, 403, 404, 405}


def format_event_id(position: Position) -> str:
    """A position as an SSE id: `topic:partition:offset` entries joined by `,`."""
    return ",".join(f"{key}:{offset}" for key, offset in sorted(position.items()))


def parse_event_id(text: str) -> Position:
    """The position an SSE `id:` names (`t:p:o,...`, or `p:o,...`)."""
    position: Position = {}
    for entry in filter(None, text.split(",")):
        key, _, offset = entry.rpartition(":")
        if not key:
            raise ProtocolError(f"not a position: {text!r}")
        position[key] = int(offset)
    return position


class SseReader:
    """`async for message in SseReader("http://127.0.0.1:8080", ["cdc.order"]):`

    `url` is the gateway's base URL or its `/sse` endpoint. Iteration ends only with
    `close()` or an error no reconnect can cure (`SseError` for a 400/403, `TokenError`
    never: the token callable is retried).
    """

    def __init__(
        self,
        url: str,
        topics: str | Iterable[str],
        *,
        filters: Mapping[str, Any] | None = None,
        snapshot: bool = False,
        since: Position | None = None,
        token: TokenSource | None = None,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        open_timeout: float = 10.0,
        read_timeout: float = 60.0,
        parse_float: Callable[[str], Any] = float,
        on_reset: Callable[[ResetCause], Any] | None = None,
        on_error: Callable[[ClientError], None] | None = None,
    ):
        base = url.rstrip("/")
        self.url = base if base.endswith("/sse") else f"{base}/sse"
        self.topics = [topics] if isinstance(topics, str) else list(dict.fromkeys(topics))
        if not self.topics:
            raise ValueError("an SSE stream needs at least one topic")
        self.filters = dict(filters) if filters else None
        self.snapshot = snapshot
        self.token = token
        self.min_delay = min_delay
        self.max_delay = max_delay
        #: The gateway sends a keep-alive comment at least every `--ping-interval`; a stream
        #: silent for longer than this is taken for dead and reopened.
        self.timeout = httpx.Timeout(open_timeout, read=read_timeout)
        self.parse_float = parse_float
        self.on_reset = on_reset
        self.on_error = on_error
        #: Streams opened so far.
        self.connects = 0
        #: Data messages dropped because they were at or below the kept position.
        self.duplicates_dropped = 0
        # The stream's position; None: the next stream starts afresh (snapshot if asked).
        self._kept: Position | None = dict(since) if since else None
        self._closed = False
        self._response: httpx.Response | None = None

    @property
    def position(self) -> Position:
        return dict(self._kept or {})

    async def close(self) -> None:
        self._closed = True
        if self._response is not None:
            await self._response.aclose()

    def __aiter__(self) -> AsyncIterator[ServerMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[ServerMessage]:
        loop = asyncio.get_running_loop()
        attempt = 0
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            while not self._closed:
                opened_at: float | None = None
                try:
                    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
                    if self.token is not None:
                        headers["Authorization"] = f"Bearer {await obtain(self.token)}"
                    resuming = self._kept is not None
                    if resuming:
                        headers["Last-Event-ID"] = format_event_id(self._kept or {})
                    async with http.stream("GET", self.url, params=self._params(resuming), headers=headers) as response:
                        self._response = response
                        if response.status_code != 200:
                            await self._refused(response)
                        opened_at = loop.time()
                        self.connects += 1
                        async for message in self._stream(response, resuming):
                            yield message
                except TokenError as e:
                    self._report(e)
                except SseError as e:
                    if e.status in _FATAL or (e.status == 401 and not callable(self.token)):
                        raise
                    self._report(e)
                except (httpx.TransportError, httpx.StreamError, ProtocolError) as e:
                    if self._closed:
                        return
                    log.debug("SSE stream %s ended: %r", self.url, e)
                finally:
                    self._response = None
                if self._closed:
                    return
                if opened_at is not None and loop.time() - opened_at >= STABLE_AFTER:
                    attempt = 0
                await asyncio.sleep(backoff_delay(attempt, self.min_delay, self.max_delay))
                attempt += 1

    def _params(self, resuming: bool) -> list[tuple[str, str | int | float | bool | None]]:
        params: list[tuple[str, str | int | float | bool | None]] = [("topic", t) for t in self.topics]
        if self.filters:
            params.append(("filters", json.dumps(self.filters)))
        if self.snapshot and not resuming:
            params.append(("snapshot", "1"))
        return params

    async def _refused(self, response: httpx.Response) -> None:
        body = await response.aread()
        try:
            detail = json.loads(body)
            code, message = str(detail["code"]), str(detail.get("message", ""))
        except (ValueError, KeyError, TypeError):
            code, message = "HTTP_ERROR", body[:200].decode(errors="replace")
        raise SseError(response.status_code, code, message)

    async def _stream(self, response: httpx.Response, resuming: bool) -> AsyncIterator[ServerMessage]:
        """The messages of one stream, with the resume rules applied."""
        # Topics whose snapshot rows are still coming; the position is kept once none is.
        unsynced = set(self.topics) if self.snapshot and not resuming else set()
        # The acks' position of a snapshot stream, kept at the last `synced`.
        pending: Position = {}
        async for event, data, event_id in _events(response):
            if event not in ("data", "ack", "synced", "reset", "error"):
                continue
            message = parse_message(data, self.parse_float)
            if isinstance(message, SubscribeAck):
                yield message
                if resuming and message.recovered is not True:
                    if await self._start_over(message):
                        return
                elif resuming:
                    self._kept = {**message.position, **(self._kept or {})}
                elif unsynced:
                    pending.update(message.position)
                else:
                    self._kept = {**message.position, **(self._kept or {})}
            elif isinstance(message, DataMessage):
                kept = self._kept
                if not message.snapshot and kept is not None:
                    last = kept.get(message.key)
                    if last is not None and message.offset <= last:
                        self.duplicates_dropped += 1
                        continue
                    kept[message.key] = message.offset
                    if event_id:
                        # The gateway's own account of the stream's position: what an
                        # EventSource would send back.
                        self._kept = {**kept, **parse_event_id(event_id)}
                yield message
            elif isinstance(message, SyncedMessage):
                unsynced.discard(message.topic)
                if not unsynced and self._kept is None:
                    self._kept = pending
                yield message
            elif isinstance(message, ResetMessage):
                yield message
                if await self._start_over(message):
                    return
            else:
                yield message

    async def _start_over(self, cause: ResetCause) -> bool:
        """`on_reset`; True when the stream must be opened again with a fresh snapshot."""
        await call(self.on_reset, cause)
        if self.snapshot:
            self._kept = None
            return True
        if isinstance(cause, SubscribeAck):
            # A live stream goes on from where the gateway starts it.
            self._kept = dict(cause.position)
        return False

    def _report(self, error: ClientError) -> None:
        if self.on_error is None:
            log.warning("%s", error)
        else:
            self.on_error(error)


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, str, str | None]]:
    """Server-sent events as (event, data, id), per the HTML living standard's parsing."""
    event, event_id = "message", None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
