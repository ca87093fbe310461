"""Resume across a gateway killed mid-stream, and the reset path when it cannot resume.

Deliveries are counted by (source topic, partition, offset) against an independent read of
the broker (confluent-kafka), not against what the test believes it produced.
"""

from __future__ import annotations

import asyncio
import collections
import time

from cdc_gateway_client import Client, ConnectionState, LiveTable, SubscribeAck

from support import order, until


async def test_gateway_killed_mid_stream_every_record_arrives_exactly_once(tansu, topic, gateway, producer):
    source = topic(3)
    gw = gateway(source)
    states: list[ConnectionState] = []
    client = Client(gw.ws_url, min_delay=0.05, max_delay=0.5, on_state=states.append)
    received: collections.Counter[tuple[str, int, int]] = collections.Counter()
    acks: list[SubscribeAck] = []
    resets: list[object] = []
    async with client:
        sub = await client.subscribe(
            "cdc.order",
            lambda m: received.update([(m.source, m.partition, m.offset)]),
            on_ack=acks.append,
            on_reset=resets.append,
        )
        await sub.wait_ready(30)

        total, kill_after, back_by = 400, 150, 300
        ends: dict[int, int] = {}
        at: dict[str, int] = {}
        produced = 0

        async def restart() -> None:
            await gw.astart()
            at["produced_when_back"] = produced

        async def produce() -> None:
            nonlocal produced
            for n in range(total):
                partition, offset = await producer.asend(source, str(n % 40), order(n % 40, n))
                produced += 1
                ends[partition] = max(ends.get(partition, 0), offset + 1)
                if n == kill_after:
                    # Mid-stream: the client is receiving, and most records are still to come.
                    await until(lambda: len(received) >= 50, "the client receives before the kill")
                    gw.kill()
                    at.update(received_at_kill=len(received), produced_at_kill=produced)
                    restarting = asyncio.create_task(restart())
                if n == back_by:
                    # The last records go to the restarted gateway, live behind the replay.
                    await restarting
                await asyncio.sleep(0.003)

        await asyncio.wait_for(produce(), 120)
        # The kill came mid-stream: the client had records still to receive, records were
        # produced while the gateway was down (only the resume can deliver those) and after
        # it was back (live, behind the replay).
        assert at["received_at_kill"] < total, at
        assert at["produced_at_kill"] < at["produced_when_back"] < total, f"not mid-stream: {at}"

        in_broker = await asyncio.to_thread(tansu.read_topic, source, ends)
        assert len(in_broker) == total, "the broker holds every record"
        assert {p for _, p, _ in in_broker} == {0, 1, 2}, "records went to every partition"
        # Whatever arrives; the assertions below say what is missing or repeated.
        try:
            await until(lambda: len(received) >= len(in_broker), "every record after the restart", 60)
        except AssertionError:
            pass
        await asyncio.sleep(0.5)  # anything late would be a repeat or a stray

        assert [k for k, c in received.items() if c > 1] == [], "no record delivered twice"
        assert sorted(set(received) - in_broker) == [], "nothing that is not in the broker"
        assert sorted(in_broker - set(received)) == [], "nothing missed"
        assert resets == [], "the restarted gateway resumed the subscription"
        assert client.connects >= 2 and ConnectionState.RECONNECTING in states
        assert acks[-1].recovered is True, acks[-1]


async def test_on_reset_when_the_gateway_cannot_resume(topic, gateway, producer):
    source = topic(1)
    # No history: every resume is answered `recovered: false`.
    gw = gateway(source, "--history-events", "0")
    async with Client(gw.ws_url, min_delay=0.05, max_delay=0.5) as client:
        live: list[int] = []
        resets: list[object] = []
        sub = await client.subscribe("cdc.order", lambda m: live.append(m.offset), on_reset=resets.append)
        table = await LiveTable.subscribe(client, "cdc.order.1")
        await sub.wait_ready(30)
        await table.wait_synced(30)
        for n in range(5):
            await producer.asend(source, "1", order(1, n))
        await until(lambda: len(live) == 5 and table.get("1", {}).get("n") == 4, "5 live events")

        await client.reconnect()
        await until(lambda: len(resets) == 1, "on_reset after the reconnect")
        cause = resets[0]
        assert isinstance(cause, SubscribeAck) and cause.recovered is False, cause
        # A plain subscription goes on live from the new position ...
        await producer.asend(source, "1", order(1, 5))
        await until(lambda: len(live) == 6, "the live event after the reset")
        assert live == sorted(live) and len(set(live)) == 6
        # ... and the table took a fresh snapshot: its row is the latest.
        await until(lambda: table.get("1", {}).get("n") == 5, "the table follows after its re-snapshot")
        assert table.subscription is not None and table.subscription.position, "kept again after synced"


async def test_a_connection_lost_during_the_snapshot_takes_the_snapshot_again(topic, gateway, producer):
    """The TypeScript client keeps the ack's position before the snapshot rows arrive, so a
    connection lost in the middle resumes live with half a table. This one must not."""
    source = topic(3)
    gw = gateway(source)
    rows = 120
    for n in range(rows):
        await producer.asend(source, str(n), order(n, n))
    await gw.caught_up(rows)
    async with Client(gw.ws_url, min_delay=0.05, max_delay=0.5) as client:
        acks: list[SubscribeAck] = []
        synced: list[float] = []
        seen_snapshot_rows = 0
        dropped_at: list[int] = []

        table = LiveTable()

        async def on_event(message) -> None:
            # Slow on purpose, so that the snapshot is still arriving when the link drops.
            nonlocal seen_snapshot_rows
            table.apply(message)
            if message.snapshot:
                seen_snapshot_rows += 1
                if seen_snapshot_rows == 10 and not dropped_at:
                    dropped_at.append(len(synced))
                    asyncio.create_task(client.reconnect())
                await asyncio.sleep(0.002)

        sub = await client.subscribe(
            "cdc.order", on_event, snapshot=True,
            on_ack=lambda a: (acks.append(a), table.apply(a)),
            on_synced=lambda s: (synced.append(time.monotonic()), table.apply(s)),
        )
        await sub.wait_ready(60)
        assert dropped_at == [0], "the connection dropped before the first snapshot synced"
        assert len(acks) == 2, acks
        assert all(a.snapshot is not None and a.recovered is None for a in acks), (
            "the second subscribe asked for a snapshot again, not to resume")
        assert len(synced) == 1
        assert sorted(table.rows, key=int) == [str(n) for n in range(rows)], "the whole table"
        assert client.connects == 2
