"""The pure parts without a gateway: messages, backoff, token expiry, the resume state of a
subscription, the live table's fold, SSE positions."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from cdc_gateway_client import (
    DataMessage,
    LiveTable,
    ProtocolError,
    SubscribeAck,
    SyncedMessage,
    backoff_delay,
    format_event_id,
    parse_event_id,
    parse_message,
    refresh_delay,
    token_expiry,
)
from cdc_gateway_client.subscription import Subscription

from support import sign_jwt


def data(offset: int, row_id: str = "1", *, partition: int = 0, snapshot: bool = False, leave: bool = False,
         operation: str = "update", row: dict | None = None) -> DataMessage:
    message = {
        "type": "data", "topic": "cdc.order", "source": "src", "partition": partition, "offset": offset,
        "timestamp": "2026-12-01T10:00:00.000Z",
        "payload": {"entity_type": "order", "entity_id": row_id, "operation": operation,
                    "data": None if operation in ("delete", "truncate") else (row or {"id": row_id, "o": offset}),
                    "before": None, "timestamp": "2026-12-01T10:00:00Z"},
    }
    if snapshot:
        message["snapshot"] = True
    if leave:
        message["leave"] = True
    parsed = parse_message(json.dumps(message))
    assert isinstance(parsed, DataMessage)
    return parsed


def ack(position: dict, *, recovered: bool | None = None, snapshot: bool = False, id: int = 1) -> SubscribeAck:
    message: dict = {"type": "ack", "action": "subscribe", "topic": "cdc.order", "position": position, "id": id}
    if recovered is not None:
        message["recovered"] = recovered
    if snapshot:
        message["snapshot"] = {"rows": 0, "complete": True}
    parsed = parse_message(json.dumps(message))
    assert isinstance(parsed, SubscribeAck)
    return parsed


def test_messages_parse_typed_and_refuse_malformed():
    m = parse_message('{"type":"data","topic":"cdc.order","source":"s","partition":1,"offset":7,'
                      '"timestamp":"t","payload":{"entity_type":"order","entity_id":"7","operation":"delete",'
                      '"data":null,"before":{"id":7,"amount":1.50},"timestamp":"t"},"leave":true}',
                      parse_float=Decimal)
    assert isinstance(m, DataMessage) and m.leave and not m.snapshot and m.key == "s:1"
    assert m.payload.row == {"id": 7, "amount": Decimal("1.50")}
    assert parse_message('{"type":"synced","topic":"cdc.x"}') == SyncedMessage("cdc.x")
    r = parse_message('{"type":"reset","topic":"cdc.x","reason":"records_lost",'
                      '"source":"s","partition":0,"from":3,"to":9}')
    assert (r.first, r.last) == (3, 9)
    for bad in ["[1]", "nope", '{"type":"data","topic":"cdc.x"}', '{"type":"ack","action":"subscribe","topic":"t",'
                '"position":{"s:0":"1"}}', '{"type":"martian"}']:
        with pytest.raises(ProtocolError):
            parse_message(bad)


def test_backoff_is_full_jitter_capped():
    assert backoff_delay(0, 0.5, 30, random=lambda: 0.999) == pytest.approx(0.4995)
    assert backoff_delay(3, 0.5, 30, random=lambda: 0.5) == pytest.approx(2.0)
    assert backoff_delay(100, 0.5, 30, random=lambda: 0.999) < 30
    assert backoff_delay(5, 0.5, 30, random=lambda: 0.0) == 0


def test_token_expiry_and_refresh_delay():
    now = time.time()
    token = sign_jwt("s", {"exp": int(now) + 100})
    assert token_expiry(token) == int(now) + 100
    assert refresh_delay(token, 30, now=int(now)) == pytest.approx(70)
    # A short token is refreshed at half its remaining lifetime, not at once.
    assert refresh_delay(sign_jwt("s", {"exp": int(now) + 10}), 30, now=int(now)) == pytest.approx(5)
    assert token_expiry("not-a-jwt") is None and token_expiry(sign_jwt("s", {})) is None


def test_subscription_keeps_no_position_before_synced():
    sub = Subscription(None, "cdc.order", lambda m: None, snapshot=True)  # type: ignore[arg-type]
    first = sub._request(1)
    assert first.get("snapshot") is True and "since" not in first
    sub._acked(ack({"src:0": 10}, snapshot=True, id=1))
    assert sub._admit(data(4, snapshot=True))
    assert sub.position == {}, "no position while the snapshot rows arrive"
    # The connection drops here: the next subscribe takes the snapshot again.
    again = sub._request(2)
    assert again.get("snapshot") is True and "since" not in again
    sub._acked(ack({"src:0": 12}, snapshot=True, id=2))
    sub._synced()
    assert sub.position == {"src:0": 12}
    assert sub._admit(data(13)) and not sub._admit(data(13)) and sub.duplicates_dropped == 1
    resumed = sub._request(3)
    assert resumed["since"] == {"src:0": 13} and "snapshot" not in resumed


def test_subscription_resume_keeps_its_offsets_and_starts_over_when_not_recovered():
    sub = Subscription(None, "cdc.order", lambda m: None)  # type: ignore[arg-type]
    sub._request(1)
    sub._acked(ack({"src:0": 5, "src:1": -1}, id=1))
    assert sub._admit(data(6)) and sub._admit(data(3, partition=1))
    sub._request(2)
    # Recovered: the gateway's position may be ahead; ours stays, the replay fills it in.
    assert not sub._acked(ack({"src:0": 9, "src:1": 3, "src:2": 0}, recovered=True, id=2))
    assert sub.position == {"src:0": 6, "src:1": 3, "src:2": 0}
    assert not sub._admit(data(6)) and sub._admit(data(7))
    sub._request(3)
    assert sub._acked(ack({"src:0": 20, "src:1": 20, "src:2": 20}, recovered=False, id=3)), "start over"
    assert sub.position == {"src:0": 20, "src:1": 20, "src:2": 20}


def test_subscription_drops_data_of_the_subscription_it_replaces():
    sub = Subscription(None, "cdc.order", lambda m: None)  # type: ignore[arg-type]
    sub._request(1)
    assert not sub._admit(data(1)), "data before the first ack belongs to an older subscription"


def test_live_table_swaps_a_snapshot_in_as_a_difference():
    table = LiveTable()
    changes = []
    table.on_change(lambda c: changes.append((c.kind, c.id)))
    table.apply(ack({"src:0": 3}, snapshot=True))
    table.apply(data(1, "a", snapshot=True))
    table.apply(data(2, "b", snapshot=True))
    table.apply(data(3, "c", snapshot=True, operation="delete"))
    assert len(table) == 0 and not table.synced, "nothing shows before synced"
    table.apply(SyncedMessage("cdc.order"))
    assert sorted(table.rows) == ["a", "b"] and sorted(changes) == [("upsert", "a"), ("upsert", "b")]
    table.apply(data(4, "a", leave=True))
    table.apply(data(5, "d", operation="insert"))
    assert sorted(table.rows) == ["b", "d"]
    # A reset: the new snapshot replaces the rows, and only the difference is emitted.
    changes.clear()
    table.apply(ack({"src:0": 9}, snapshot=True))
    table.apply(data(2, "b", snapshot=True))
    table.apply(data(8, "e", snapshot=True))
    assert sorted(table.rows) == ["b", "d"], "the old rows stay until the new snapshot is in"
    table.apply(SyncedMessage("cdc.order"))
    assert sorted(table.rows) == ["b", "e"] and sorted(changes) == [("remove", "d"), ("upsert", "e")]
    table.apply(data(10, "x", operation="truncate"))
    assert len(table) == 0


def test_sse_positions_round_trip():
    position = {"shop.orders:0": 12, "shop.orders:1": -1}
    assert format_event_id(position) == "shop.orders:0:12,shop.orders:1:-1"
    assert parse_event_id(format_event_id(position)) == position
    assert parse_event_id("0:5,1:7") == {"0": 5, "1": 7}
