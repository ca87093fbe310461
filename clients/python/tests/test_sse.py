"""The SSE reader against the real gateway: snapshot, synced, live, a resume with
Last-Event-ID across a gateway restart (counted by source, partition and offset against the
broker), a live table over SSE, and a refusal before the stream starts."""

from __future__ import annotations

import asyncio
import collections

import pytest

from cdc_gateway_client import DataMessage, LiveTable, SseError, SseReader, SubscribeAck, SyncedMessage

from support import order, until


async def test_sse_snapshot_live_and_resume_across_a_gateway_restart(tansu, topic, gateway, producer):
    source = topic(3)
    gw = gateway(source)
    ends: dict[int, int] = {}

    async def produce(first: int, count: int) -> None:
        for n in range(first, first + count):
            partition, offset = await producer.asend(source, str(n % 10), order(n % 10, n))
            ends[partition] = max(ends.get(partition, 0), offset + 1)

    await produce(0, 30)
    await gw.caught_up(30)
    reader = SseReader(gw.http_url, "cdc.order", snapshot=True, min_delay=0.05, max_delay=0.5)
    log: list[str] = []
    live: collections.Counter[tuple[str, int, int]] = collections.Counter()
    acks: list[SubscribeAck] = []

    async def read() -> None:
        async for message in reader:
            if isinstance(message, SubscribeAck):
                acks.append(message)
                log.append("ack")
            elif isinstance(message, SyncedMessage):
                log.append("synced")
            elif isinstance(message, DataMessage):
                log.append("snapshot" if message.snapshot else "live")
                if not message.snapshot:
                    live[(message.source, message.partition, message.offset)] += 1

    task = asyncio.create_task(read())
    try:
        await until(lambda: "synced" in log, "the snapshot is synced")
        assert log == ["ack"] + ["snapshot"] * 10 + ["synced"], log
        await produce(30, 30)
        await until(lambda: len(live) == 30, "30 live events")

        # Restart the gateway; records produced while it is down come by the resume.
        await asyncio.to_thread(gw.terminate)
        await produce(60, 30)
        await gw.astart()
        await produce(90, 30)
        await until(lambda: len(live) >= 90, "every live record after the restart", 60)
        await asyncio.sleep(0.5)
    finally:
        await reader.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    in_broker = await asyncio.to_thread(tansu.read_topic, source, ends)
    first30 = {k for k in in_broker if k not in live}
    assert len(first30) == 30, "the 30 records before the stream are the snapshot's, not live"
    assert [k for k, c in live.items() if c > 1] == [], "no record twice"
    assert set(live) == in_broker - first30, "every later record, nothing else"
    assert reader.connects == 2
    assert acks[-1].recovered is True, acks[-1]
    assert log.count("snapshot") == 10, "no second snapshot: the stream resumed"


async def test_live_table_over_sse(topic, gateway, producer):
    source = topic(2)
    gw = gateway(source)
    for n in range(4):
        await producer.asend(source, str(n), order(n, n))
    await gw.caught_up(4)
    table = LiveTable.over_sse(SseReader(gw.http_url, "cdc.order", snapshot=True, filters={"row.tenant": "acme"}))
    try:
        await table.wait_synced(30)
        assert sorted(table.rows) == ["0", "1", "2", "3"]
        await producer.asend(source, "0", order(0, 10, "delete"))
        await producer.asend(source, "1", order(1, 11, tenant="globex"))
        await producer.asend(source, "2", order(2, 12))
        await until(lambda: table.get("2", {}).get("n") == 12 and len(table) == 2, "delete, leave, update")
        assert sorted(table.rows) == ["2", "3"]
    finally:
        await table.close()


async def test_sse_refusal_is_an_error(topic, gateway):
    gw = gateway(topic(1))
    reader = SseReader(gw.http_url, "cdc.order", filters={"data.x": {"between": 1}})
    with pytest.raises(SseError) as refused:
        async for _ in reader:
            pass
    assert refused.value.status == 400 and refused.value.code == "INVALID_FILTER"
