"""asyncio client of cdc-gateway: database changes from Kafka, over WebSocket or SSE.

    async with Client("ws://127.0.0.1:8080/ws", token=fresh_token) as client:
        table = await LiveTable.subscribe(client, "cdc.order", filters={"row.tenant": "acme"})
        await table.wait_synced(timeout=10)
        print(dict(table.rows))

Subscriptions resume after every reconnect from the position they kept: nothing missed,
nothing repeated; `on_reset` says when the gateway could not resume. See README.md.
"""

from .backoff import backoff_delay
from .client import Client, ConnectionState
from .errors import ClientError, GatewayError, ProtocolError, SseError, TokenError, Unauthorized
from .live_table import LiveTable, RowChange
from .messages import (
    AuthAck,
    ChangeEvent,
    DataMessage,
    ErrorCode,
    ErrorMessage,
    PingMessage,
    PongMessage,
    PresenceMessage,
    Position,
    ResetMessage,
    ServerMessage,
    SnapshotInfo,
    SubscribeAck,
    SyncedMessage,
    UnsubscribeAck,
    parse_message,
)
from .sse import SseReader, format_event_id, parse_event_id
from .subscription import ResetCause, Subscription
from .tokens import TokenSource, refresh_delay, token_expiry

__version__ = "0.1.0"

__all__ = [
    "AuthAck",
    "ChangeEvent",
    "Client",
    "ClientError",
    "ConnectionState",
    "DataMessage",
    "ErrorCode",
    "ErrorMessage",
    "GatewayError",
    "LiveTable",
    "PingMessage",
    "PongMessage",
    "PresenceMessage",
    "Position",
    "ProtocolError",
    "ResetCause",
    "ResetMessage",
    "RowChange",
    "ServerMessage",
    "SnapshotInfo",
    "SseError",
    "SseReader",
    "SubscribeAck",
    "Subscription",
    "SyncedMessage",
    "TokenError",
    "TokenSource",
    "Unauthorized",
    "UnsubscribeAck",
    "backoff_delay",
    "format_event_id",
    "parse_event_id",
    "parse_message",
    "refresh_delay",
    "token_expiry",
]
