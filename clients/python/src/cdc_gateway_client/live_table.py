"""A live table: the rows of one topic by id, as they stand now, kept by a snapshot
subscription and the changes after it.

The table is a fold of the subscription's messages (`apply`), so the WebSocket client and the
SSE reader feed it alike. Inserts and updates set a row, deletes and leave events (a row that
moved out of the filters) drop it, a truncate empties the table. A snapshot is collected
apart and swapped in whole at `synced`, as the difference to the rows held before: after a
reset (or a reconnect during the snapshot) readers go on seeing the old rows until the new
ones are complete, and listeners receive only what changed, never a table that blinks empty.
"""

from __future__ import annotations

import asyncio
import logging
import types
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from .client import Client
from .messages import ChangeEvent, DataMessage, SubscribeAck, SyncedMessage
from .sse import SseReader
from .subscription import Subscription

log = logging.getLogger("cdc_gateway_client")

Row = dict[str, Any]


@dataclass(frozen=True)
class RowChange:
    """One row of the table changed: it was set (`upsert`) or dropped (`remove`)."""

    kind: Literal["upsert", "remove"]
    id: str
    #: The row now; None for a remove.
    row: Row | None
    #: The row before, when the table held it.
    previous: Row | None


def entity_id(event: ChangeEvent) -> str | None:
    return event.entity_id


class LiveTable:
    """Rows by id of one gateway topic. Make one with `LiveTable.subscribe(client, topic)`
    or `LiveTable.over_sse(reader)`, or feed `apply` yourself."""

    def __init__(self, key: Callable[[ChangeEvent], str | None] = entity_id):
        #: The row's id within the table; the gateway's entity id by default.
        self.key = key
        self._rows: dict[str, Row] = {}
        # A snapshot being collected; swapped in at `synced`.
        self._staging: dict[str, Row] | None = None
        self._synced = asyncio.Event()
        self._listeners: list[Callable[[RowChange], None]] = []
        self._subscription: Subscription | None = None
        self._reader: SseReader | None = None
        self._task: asyncio.Task[None] | None = None
        #: Changes applied so far (a cheap "did anything change" for pollers).
        self.version = 0

    # ------------------------------------------------------------ constructors

    @classmethod
    async def subscribe(
        cls,
        client: Client,
        topic: str,
        *,
        filters: Mapping[str, Any] | None = None,
        key: Callable[[ChangeEvent], str | None] = entity_id,
    ) -> LiveTable:
        """A table kept by a snapshot subscription of `client` (which resumes it across
        reconnects and takes a fresh snapshot when it cannot)."""
        table = cls(key)
        table._subscription = await client.subscribe(
            topic, table.apply, filters=filters, snapshot=True,
            on_ack=table.apply, on_synced=table.apply,
        )
        return table

    @classmethod
    def over_sse(cls, reader: SseReader, key: Callable[[ChangeEvent], str | None] = entity_id) -> LiveTable:
        """A table kept by an SSE stream of one topic, read in a task of its own."""
        if not reader.snapshot or len(reader.topics) != 1:
            raise ValueError("a live table needs an SSE reader of one topic with snapshot=True")
        table = cls(key)
        table._reader = reader

        async def follow() -> None:
            async for message in reader:
                table.apply(message)

        table._task = asyncio.create_task(follow(), name=f"live table over {reader.url}")
        return table

    async def close(self) -> None:
        """Stops following (the client, when there is one, stays open)."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._reader is not None:
            await self._reader.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # ------------------------------------------------------------ reading

    @property
    def rows(self) -> Mapping[str, Row]:
        """The rows by id, read-only."""
        return types.MappingProxyType(self._rows)

    @property
    def synced(self) -> bool:
        """True once a first snapshot has been swapped in."""
        return self._synced.is_set()

    @property
    def subscription(self) -> Subscription | None:
        return self._subscription

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Waits for the first snapshot. Over SSE, raises what ended the stream (an
        `SseError` for a refused topic or filter) instead of waiting it out."""
        waiter = asyncio.ensure_future(self._synced.wait())
        watched: set[asyncio.Future[Any]] = {waiter}
        if self._task is not None:
            watched.add(self._task)
        try:
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._task is not None and self._task.done() and not self._task.cancelled():
            exc = self._task.exception()
            if exc is not None:
                raise exc
        if not self._synced.is_set():
            raise TimeoutError(f"the live table was not synced within {timeout}s")

    def on_change(self, listener: Callable[[RowChange], None]) -> Callable[[], None]:
        """Calls `listener` (a plain function) with every change of the table, after it is
        applied; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._rows

    def __getitem__(self, row_id: str) -> Row:
        return self._rows[row_id]

    def get(self, row_id: str, default: Any = None) -> Any:
        return self._rows.get(row_id, default)

    # ------------------------------------------------------------ the fold

    def apply(self, message: Any) -> None:
        """Applies one message of the subscription: an ack that starts a snapshot, a data
        message, or `synced`. Other messages are ignored."""
        if isinstance(message, SubscribeAck):
            if message.snapshot is not None:
                self._staging = {}
        elif isinstance(message, SyncedMessage):
            if self._staging is not None:
                self._swap(self._staging)
                self._staging = None
            self._synced.set()
        elif isinstance(message, DataMessage):
            self._apply_data(message)

    def _apply_data(self, message: DataMessage) -> None:
        event = message.payload
        if self._staging is not None:
            _fold(self._staging, self.key(event), event, message.leave)
            return
        if event.operation == "truncate":
            self._swap({})
            return
        row_id = self.key(event)
        if row_id is None:
            return
        previous = self._rows.get(row_id)
        _fold(self._rows, row_id, event, message.leave)
        now = self._rows.get(row_id)
        if now is not None:
            self._emit(RowChange("upsert", row_id, now, previous))
        elif previous is not None:
            self._emit(RowChange("remove", row_id, None, previous))

    def _swap(self, rows: dict[str, Row]) -> None:
        old, self._rows = self._rows, rows
        for row_id, gone in old.items():
            if row_id not in rows:
                self._emit(RowChange("remove", row_id, None, gone))
        for row_id, row in rows.items():
            held = old.get(row_id)
            if held != row:
                self._emit(RowChange("upsert", row_id, row, held))

    def _emit(self, change: RowChange) -> None:
        self.version += 1
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # noqa: BLE001 - a listener never breaks the table
                log.exception("a live table listener raised")


def _fold(rows: dict[str, Row], row_id: str | None, event: ChangeEvent, leave: bool) -> None:
    if event.operation == "truncate":
        rows.clear()
        return
    if row_id is None:
        return
    row = event.data
    if row is not None and not leave and event.operation != "delete":
        rows[row_id] = row
    else:
        rows.pop(row_id, None)
