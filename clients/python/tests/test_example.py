"""The FastAPI example (examples/fastapi_table.py) run under uvicorn against the real
gateway: its users see their tenant's rows only, and its SSE endpoint follows changes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import uvicorn

from support import free_port, order, until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import fastapi_table  # noqa: E402


async def test_fastapi_example_serves_each_tenant_its_rows(topic, gateway, producer):
    source = topic(2)
    gw = gateway(source)
    for n in range(6):
        await producer.asend(source, str(n), order(n, n, tenant="acme" if n % 2 else "globex"))
    # A gateway-side filter too: cancelled orders never reach the service.
    await producer.asend(source, "7", order(7, 7, tenant="acme", status="cancelled"))
    await gw.caught_up(7)
    app = fastapi_table.create_app(gw.ws_url, "cdc.order", filters={"row.status": {"ne": "cancelled"}})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            async def ready() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await asyncio.wait_for(_poll(ready), 30)
            acme = (await http.get("/rows", headers={"X-Tenant": "acme"})).json()
            assert acme["synced"] and sorted(acme["rows"]) == ["1", "3", "5"]
            assert (await http.get("/rows/2", headers={"X-Tenant": "acme"})).status_code == 404
            assert (await http.get("/rows/2", headers={"X-Tenant": "globex"})).json()["n"] == 2

            events: list[tuple[str, dict]] = []

            async def follow() -> None:
                async with http.stream("GET", "/events", headers={"X-Tenant": "acme"}, timeout=None) as r:
                    event = None
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            events.append((event, json.loads(line[6:])))

            follower = asyncio.create_task(follow())
            await until(lambda: len(events) == 1, "the initial rows")
            assert events[0][0] == "rows" and sorted(events[0][1]) == ["1", "3", "5"]
            await producer.asend(source, "3", order(3, 33, tenant="globex"))  # leaves acme
            await producer.asend(source, "2", order(2, 22, tenant="acme"))  # joins acme
            await producer.asend(source, "4", order(4, 44, tenant="globex"))  # not acme's business
            await producer.asend(source, "1", order(1, 11, tenant="acme", status="cancelled"))  # leaves the filter
            await until(lambda: len(events) == 4, "three changes of acme's rows")
            assert sorted((e, d["id"]) for e, d in events[1:]) == [("remove", "1"), ("remove", "3"), ("upsert", "2")]
            acme = (await http.get("/rows", headers={"X-Tenant": "acme"})).json()
            assert sorted(acme["rows"]) == ["2", "5"]
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 20)


async def _poll(check) -> None:
    while not await check():
        await asyncio.sleep(0.05)
