"""A FastAPI service that keeps one live table through cdc-gateway and re-exposes a filtered
view of it to its own users.

The service holds the gateway token (its own, server-side) and one snapshot subscription; it
never hands the gateway to its users. Each user sees the rows of their tenant only:

    GET /rows           the tenant's rows, as they stand now
    GET /rows/{id}      one row, or 404
    GET /events         SSE: `event: rows` with every row of the tenant, then `upsert` and
                        `remove` events as they change (a row that moves to another tenant
                        is a `remove`)
    GET /healthz        200 once the table holds its first snapshot, else 503

The user's tenant comes from the `X-Tenant` header: a stand-in for the service's real
authentication, which is the part to replace.

    pip install './clients/python[examples]'
    CDC_GATEWAY_URL=ws://127.0.0.1:8080/ws TABLE_TOPIC=cdc.order \\
        uvicorn fastapi_table:app --app-dir clients/python/examples --port 9000
    curl -H 'X-Tenant: acme' localhost:9000/rows

Settings (environment): CDC_GATEWAY_URL, TABLE_TOPIC (default cdc.order), TABLE_FILTERS
(JSON, gateway-side filters, e.g. {"row.status": {"ne": "cancelled"}}), TENANT_FIELD (default
tenant), CDC_GATEWAY_TOKEN (a JWT, under --auth jwt).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any, AsyncIterator, Mapping

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from cdc_gateway_client import Client, LiveTable, RowChange

#: Changes queued per SSE user; one that falls this far behind is ended (its EventSource
#: reconnects and gets the rows afresh) instead of holding memory for ever.
USER_QUEUE = 1000


def create_app(
    gateway_url: str | None = None,
    topic: str | None = None,
    filters: Mapping[str, Any] | None = None,
    tenant_field: str | None = None,
    token: str | None = None,
) -> FastAPI:
    gateway_url = gateway_url or os.environ.get("CDC_GATEWAY_URL", "ws://127.0.0.1:8080/ws")
    topic = topic or os.environ.get("TABLE_TOPIC", "cdc.order")
    if filters is None and os.environ.get("TABLE_FILTERS"):
        filters = json.loads(os.environ["TABLE_FILTERS"])
    field = tenant_field or os.environ.get("TENANT_FIELD", "tenant")
    token = token or os.environ.get("CDC_GATEWAY_TOKEN") or None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Client(gateway_url, token=token) as client:
            app.state.table = await LiveTable.subscribe(client, topic, filters=filters)
            yield
            await app.state.table.close()

    app = FastAPI(title="live table", lifespan=lifespan)

    def table(request: Request) -> LiveTable:
        return request.app.state.table

    def visible(row: Mapping[str, Any] | None, tenant: str) -> bool:
        return row is not None and row.get(field) == tenant

    def rows_of(t: LiveTable, tenant: str) -> dict[str, Any]:
        return {row_id: row for row_id, row in t.rows.items() if visible(row, tenant)}

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        synced = table(request).synced
        return JSONResponse({"synced": synced}, status_code=200 if synced else 503)

    @app.get("/rows")
    async def rows(request: Request, x_tenant: str = Header()) -> dict[str, Any]:
        t = table(request)
        return {"synced": t.synced, "rows": rows_of(t, x_tenant)}

    @app.get("/rows/{row_id}")
    async def row(row_id: str, request: Request, x_tenant: str = Header()) -> dict[str, Any]:
        found = table(request).get(row_id)
        if not visible(found, x_tenant):
            raise HTTPException(404, "no such row")
        return found

    @app.get("/events")
    async def events(request: Request, x_tenant: str = Header()) -> StreamingResponse:
        t = table(request)
        queue: asyncio.Queue[RowChange | None] = asyncio.Queue(USER_QUEUE)

        def on_change(change: RowChange) -> None:
            was, now = visible(change.previous, x_tenant), visible(change.row, x_tenant)
            if not (was or now):
                return
            if queue.full():
                # Too far behind: end this user's stream; its EventSource reconnects and
                # gets the rows afresh. The end marker takes the place of the last change.
                stop_listening()
                queue.get_nowait()
                queue.put_nowait(None)
                return
            if now:
                queue.put_nowait(change)
            else:
                queue.put_nowait(RowChange("remove", change.id, None, None))

        # Taken together, with no await between: no change falls between them.
        initial = rows_of(t, x_tenant)
        stop_listening = t.on_change(on_change)

        async def stream() -> AsyncIterator[str]:
            try:
                yield sse("rows", initial)
                while True:
                    try:
                        change = await asyncio.wait_for(queue.get(), 15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if change is None:
                        return
                    if change.kind == "upsert":
                        yield sse("upsert", {"id": change.id, "row": change.row})
                    else:
                        yield sse("remove", {"id": change.id})
            finally:
                stop_listening()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


app = create_app()
