"""The gateway's messages (docs/protocol.md sections 3 and 7) as frozen dataclasses.

Parsed once, at the edge: everything past `parse_message` sees typed values, so a frame the
client does not understand fails here as a `ProtocolError` instead of as a `KeyError` deep in
the resume logic. Fields the protocol adds later are ignored (the gateway ignores unknown
fields too); `DataMessage.raw` keeps the message as sent, for re-serving it unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Union

from .errors import ProtocolError

#: A resume position: `"<source topic>:<partition>"` -> the offset of the last record.
Position = dict[str, int]

#: A request id, echoed in the reply.
RequestId = Union[str, int]

Operation = Literal["insert", "update", "delete", "snapshot", "truncate"]

#: Error codes of protocol section 3.4 (the gateway may add more; `code` is a plain str).
ErrorCode = Literal[
    "INVALID_MESSAGE",
    "UNKNOWN_ACTION",
    "INVALID_TOPIC",
    "INVALID_FILTER",
    "FORBIDDEN",
    "TOO_MANY_SUBSCRIPTIONS",
    "RATE_LIMITED",
    "NOT_SUBSCRIBED",
    "UNAUTHENTICATED",
]


@dataclass(frozen=True)
class ChangeEvent:
    """One change of one row: the normalized event, a data message's `payload`."""

    entity_type: str
    #: None for a truncate, which has no row.
    entity_id: str | None
    operation: Operation
    #: The row after the change; None for deletes and truncates.
    data: dict[str, Any] | None
    #: The row before the change, when the gateway or the source knows it.
    before: dict[str, Any] | None
    #: RFC 3339, when the change happened at the source.
    timestamp: str

    @property
    def row(self) -> dict[str, Any] | None:
        """The row as it now stands (`data`, else `before`): what `row.` filters read."""
        return self.data if self.data is not None else self.before


@dataclass(frozen=True)
class DataMessage:
    """One event on one subscribed topic: live, a snapshot row, or a leave."""

    topic: str
    payload: ChangeEvent
    #: Kafka topic, partition and offset of the source record: the event's identity.
    source: str
    partition: int
    offset: int
    #: RFC 3339, when the gateway queued it.
    timestamp: str
    #: A row of the snapshot that precedes live events.
    snapshot: bool = False
    #: The update moved the row out of the subscription's filters: drop the row.
    leave: bool = False
    #: The message as the gateway sent it.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def key(self) -> str:
        """The position key of the record's partition, `"<source>:<partition>"`."""
        return f"{self.source}:{self.partition}"


@dataclass(frozen=True)
class SnapshotInfo:
    rows: int
    #: True is a promise: the rows are exactly the entity's rows (after filters).
    complete: bool


@dataclass(frozen=True)
class SubscribeAck:
    topic: str
    #: Where the subscription starts, for every partition the gateway reads.
    position: Position
    #: Present when the subscribe carried `since`: whether the missed events follow.
    recovered: bool | None = None
    #: Present when the subscribe asked for a snapshot.
    snapshot: SnapshotInfo | None = None
    id: RequestId | None = None


@dataclass(frozen=True)
class AuthAck:
    id: RequestId | None = None


@dataclass(frozen=True)
class UnsubscribeAck:
    topic: str
    id: RequestId | None = None


@dataclass(frozen=True)
class SyncedMessage:
    """The snapshot rows of `topic` have all arrived; every later event is live."""

    topic: str


@dataclass(frozen=True)
class ResetMessage:
    """Source records were lost before the gateway read them (retention): rebuild state."""

    topic: str
    reason: str
    source: str | None = None
    partition: int | None = None
    first: int | None = None
    last: int | None = None


@dataclass(frozen=True)
class ErrorMessage:
    code: str
    message: str
    id: RequestId | None = None
    #: The topic concerned, on errors about a topic.
    topic: str | None = None


@dataclass(frozen=True)
class PingMessage:
    timestamp: Any = None


@dataclass(frozen=True)
class PongMessage:
    timestamp: Any = None
    id: RequestId | None = None


@dataclass(frozen=True)
class PresenceMessage:
    """Who watches `topic` over every replica (protocol section 10): the answer to
    `Client.presence` (with its `id`), or a change sent to a subscription made with
    `presence=True` (with `joins` and `leaves`). `users` are token subjects, sent under
    `--auth jwt` only."""

    topic: str
    subscribers: int
    users: tuple[str, ...] = ()
    joins: tuple[str, ...] = ()
    leaves: tuple[str, ...] = ()
    id: RequestId | None = None


ServerMessage = Union[
    DataMessage,
    SubscribeAck,
    AuthAck,
    UnsubscribeAck,
    SyncedMessage,
    ResetMessage,
    ErrorMessage,
    PingMessage,
    PongMessage,
    PresenceMessage,
]


def parse_message(text: str | bytes, parse_float: Callable[[str], Any] = float) -> ServerMessage:
    """One frame (or SSE `data:`) of the gateway as a typed message.

    `parse_float=decimal.Decimal` keeps decimals exact (the gateway sends a `numeric` column
    as an exact JSON number).
    """
    try:
        obj = json.loads(text, parse_float=parse_float)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message is not a JSON object")
    try:
        return _from_dict(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed {obj.get('type')!r} message: {e!r}") from None


def _from_dict(m: dict[str, Any]) -> ServerMessage:
    kind = m["type"]
    if kind == "data":
        p = m["payload"]
        payload = ChangeEvent(
            entity_type=_str(p["entity_type"]),
            entity_id=None if p.get("entity_id") is None else str(p["entity_id"]),
            operation=p["operation"],
            data=_row(p.get("data")),
            before=_row(p.get("before")),
            timestamp=p.get("timestamp", ""),
        )
        return DataMessage(
            topic=_str(m["topic"]),
            payload=payload,
            source=_str(m["source"]),
            partition=_int(m["partition"]),
            offset=_int(m["offset"]),
            timestamp=m.get("timestamp", ""),
            snapshot=m.get("snapshot") is True,
            leave=m.get("leave") is True,
            raw=m,
        )
    if kind == "ack":
        action = m["action"]
        if action == "subscribe":
            snap = m.get("snapshot")
            return SubscribeAck(
                topic=_str(m["topic"]),
                position=_position(m["position"]),
                recovered=m.get("recovered"),
                snapshot=None if snap is None else SnapshotInfo(_int(snap["rows"]), snap["complete"] is True),
                id=m.get("id"),
            )
        if action == "auth":
            return AuthAck(id=m.get("id"))
        if action == "unsubscribe":
            return UnsubscribeAck(topic=_str(m["topic"]), id=m.get("id"))
        raise ValueError(f"unknown ack action {action!r}")
    if kind == "synced":
        return SyncedMessage(topic=_str(m["topic"]))
    if kind == "reset":
        return ResetMessage(
            topic=_str(m["topic"]),
            reason=m.get("reason", ""),
            source=m.get("source"),
            partition=m.get("partition"),
            first=m.get("from"),
            last=m.get("to"),
        )
    if kind == "error":
        return ErrorMessage(code=_str(m["code"]), message=m.get("message", ""), id=m.get("id"), topic=m.get("topic"))
    if kind == "ping":
        return PingMessage(timestamp=m.get("timestamp"))
    if kind == "pong":
        return PongMessage(timestamp=m.get("timestamp"), id=m.get("id"))
    if kind == "presence":
        names = lambda key: tuple(_str(u) for u in m.get(key, []))  # noqa: E731
        return PresenceMessage(
            topic=_str(m["topic"]),
            subscribers=_int(m["subscribers"]),
            users=names("users"),
            joins=names("joins"),
            leaves=names("leaves"),
            id=m.get("id"),
        )
    raise ValueError(f"unknown type {kind!r}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _row(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"a row is an object or null, got {value!r}")
    return value


def _position(value: Any) -> Position:
    if not isinstance(value, dict):
        raise TypeError(f"a position is an object, got {value!r}")
    return {_str(k): _int(v) for k, v in value.items()}
