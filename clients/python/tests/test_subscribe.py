"""Subscriptions against the real gateway: filters, snapshot then live, the live table
applying updates, deletes and leave events, and token refresh on a live connection."""

from __future__ import annotations

import asyncio
import time

import pytest

from cdc_gateway_client import Client, ConnectionState, DataMessage, GatewayError, LiveTable, Unauthorized

from support import order, sign_jwt, until


async def test_filters_deliver_exactly_the_matching_events(topic, gateway, producer):
    source = topic(2)
    gw = gateway(source)
    async with Client(gw.ws_url) as client:
        got: list[DataMessage] = []
        errors: list[GatewayError] = []
        sub = await client.subscribe(
            "cdc.order", got.append, filters={"data.status": "paid", "data.amount": {"gte": 100}},
        )
        bad = await client.subscribe(
            "cdc.customer", got.append, filters={"data.amount": {"between": [1, 2]}}, on_error=errors.append,
        )
        await sub.wait_ready(30)
        with pytest.raises(GatewayError) as refused:
            await bad.wait_ready(30)
        assert refused.value.code == "INVALID_FILTER" and errors[0].topic == "cdc.customer"
        assert not bad.active

        expected = set()
        for n in range(60):
            status = ["paid", "new", "shipped"][n % 3]
            amount = (n * 37) % 200
            partition, offset = await producer.asend(source, str(n), order(n, n, status=status, amount=amount))
            if status == "paid" and amount >= 100:
                expected.add((partition, offset))
        # A marker that matches, produced last on every partition: once each has arrived,
        # everything before it has been judged.
        markers = set()
        for k in range(8):
            partition, offset = await producer.asend(source, f"m{k}", order(1000 + k, 0, amount=100))
            markers.add((partition, offset))
        await until(lambda: markers <= {(m.partition, m.offset) for m in got}, "the markers")
        assert {(m.partition, m.offset) for m in got} - markers == expected
        assert len(got) == len(expected | markers), "each once"
        assert all(m.payload.data["status"] == "paid" and m.payload.data["amount"] >= 100 for m in got)


async def test_snapshot_then_live(topic, gateway, producer):
    source = topic(3)
    gw = gateway(source)
    for n in range(12):
        await producer.asend(source, str(n % 4), order(n % 4, n))
    await producer.asend(source, "3", order(3, 99, "delete"))
    await gw.caught_up(13)
    async with Client(gw.ws_url) as client:
        log: list[str] = []
        last: dict[str, DataMessage] = {}

        def on_event(m: DataMessage) -> None:
            log.append("snapshot" if m.snapshot else "live")
            last[m.payload.entity_id] = m

        sub = await client.subscribe(
            "cdc.order", on_event, snapshot=True,
            on_ack=lambda a: log.append(f"ack:{a.snapshot.rows if a.snapshot else None}"),
            on_synced=lambda s: log.append("synced"),
        )
        await sub.wait_ready(30)
        # The last event of every row, the delete included, before `synced`.
        assert log == ["ack:4"] + ["snapshot"] * 4 + ["synced"], log
        assert {k: (m.payload.operation, m.payload.data and m.payload.data["n"]) for k, m in last.items()} == {
            "0": ("update", 8), "1": ("update", 9), "2": ("update", 10), "3": ("delete", None),
        }
        assert sub.position, "a position is kept once synced"
        await producer.asend(source, "0", order(0, 100))
        await until(lambda: log[-1:] == ["live"], "a live event after synced")
        assert last["0"].payload.data["n"] == 100 and not last["0"].snapshot


async def test_live_table_applies_updates_deletes_and_leave_events(topic, gateway, producer):
    source = topic(3)
    gw = gateway(source)
    # Rows before the table exists: they come in its snapshot.
    for n in range(6):
        await producer.asend(source, str(n), order(n, n, tenant="acme"))
    await producer.asend(source, "6", order(6, 6, tenant="globex"))
    await gw.caught_up(7)
    async with Client(gw.ws_url) as client:
        table = await LiveTable.subscribe(client, "cdc.order", filters={"row.tenant": "acme"})
        await table.wait_synced(30)
        assert sorted(table.rows) == ["0", "1", "2", "3", "4", "5"]
        changes: list[tuple[str, str]] = []
        table.on_change(lambda c: changes.append((c.kind, c.id)))

        await producer.asend(source, "1", order(1, 11, tenant="acme", status="shipped"))  # update
        await producer.asend(source, "2", order(2, 12, "delete"))  # delete (key-only before)
        await producer.asend(source, "3", order(3, 13, tenant="globex"))  # leaves the filter
        await producer.asend(source, "6", order(6, 16, tenant="acme"))  # enters it
        await producer.asend(source, "7", order(7, 17, tenant="acme"))  # insert
        await until(lambda: len(changes) == 5, "five changes")
        assert sorted(table.rows) == ["0", "1", "4", "5", "6", "7"]
        assert table["1"]["status"] == "shipped" and table["6"]["n"] == 16
        assert sorted(changes) == sorted([
            ("upsert", "1"), ("remove", "2"), ("remove", "3"), ("upsert", "6"), ("upsert", "7"),
        ])
        # Later changes of the row that left are not the table's business.
        await producer.asend(source, "3", order(3, 23, tenant="globex"))
        await producer.asend(source, "0", order(0, 20, tenant="acme"))
        await until(lambda: table["0"]["n"] == 20, "the last update")
        assert "3" not in table and len(changes) == 6


async def test_token_callback_is_refreshed_before_exp(topic, gateway, producer):
    source = topic(1)
    secret = "python-client-tests-secret"
    gw = gateway(source, "--auth", "jwt", "--jwt-secret", secret, "--jwt-leeway", "0s")
    lifetime = 3

    def issue() -> str:
        return sign_jwt(secret, {"exp": int(time.time()) + lifetime, "topics": ["cdc.*"]})

    issued = 0

    async def fresh_token() -> str:
        nonlocal issued
        issued += 1
        return issue()

    errors: list[Exception] = []
    fixed_errors: list[Exception] = []
    refreshing = Client(gw.ws_url, token=fresh_token, on_error=errors.append)
    fixed = Client(gw.ws_url, token=issue(), on_error=fixed_errors.append)
    async with refreshing, fixed:
        seen: list[int] = []
        sub = await refreshing.subscribe("cdc.order", lambda m: seen.append(m.offset))
        await (await fixed.subscribe("cdc.order", lambda m: None)).wait_ready(30)
        await sub.wait_ready(30)
        # Three token lifetimes with records flowing.
        offsets = []
        end = time.monotonic() + 3 * lifetime
        n = 0
        while time.monotonic() < end:
            offsets.append((await producer.asend(source, "1", order(1, n)))[1])
            n += 1
            await asyncio.sleep(0.1)
        await until(lambda: len(seen) >= len(offsets), "every record on the refreshed connection")
        assert seen == offsets
        assert refreshing.connects == 1, "one connection throughout: no reconnect"
        assert refreshing.state is ConnectionState.OPEN
        assert issued >= 4, f"a fresh token before every expiry (issued {issued})"
        assert errors == []
        await until(lambda: fixed.state is ConnectionState.CLOSED, "the fixed token's connection ends at exp")
        assert isinstance(fixed_errors[0], Unauthorized) and fixed_errors[0].close_code == 4001


async def test_presence_is_asked_and_watched_named_by_token_subjects(topic, gateway, producer):
    source = topic(1)
    secret = "python-presence-secret"
    gw = gateway(source, "--auth", "jwt", "--jwt-secret", secret, "--presence-interval", "1s")

    def token(sub: str, topics: list[str]) -> str:
        return sign_jwt(secret, {"sub": sub, "exp": int(time.time()) + 600, "topics": topics})

    changes = []
    async with Client(gw.ws_url, token=token("alice", ["cdc.order"])) as alice:
        sub = await alice.subscribe(
            "cdc.order", lambda m: None, presence=True, on_presence=changes.append
        )
        await sub.wait_ready()
        await until(lambda: any(m.subscribers == 1 for m in changes), "alice sees herself")
        async with Client(gw.ws_url, token=token("bob", ["cdc.order"])) as bob:
            watching = await bob.subscribe("cdc.order", lambda m: None)
            await watching.wait_ready()
            await until(lambda: changes[-1].subscribers == 2, "bob joins")
            assert changes[-1].users == ("alice", "bob") and changes[-1].joins == ("bob",)
            asked = await alice.presence("cdc.order")
            assert (asked.subscribers, asked.users) == (2, ("alice", "bob"))
        await until(lambda: changes[-1].subscribers == 1, "bob leaves")
        assert changes[-1].leaves == ("bob",)
    async with Client(gw.ws_url, token=token("carol", ["cdc.customer"])) as carol:
        await carol.wait_open()
        with pytest.raises(GatewayError) as refused:
            await carol.presence("cdc.order")
        assert refused.value.code == "FORBIDDEN"
