"""The oracle test: what every dashboard shows must equal what Postgres holds.

Postgres -> real Debezium (relay.py, JsonConverter with or without schemas) -> tansu ->
two cdc-gateway replicas -> WebSocket and SSE clients that keep live tables, the way
ElectricSQL tests its shapes. A seeded random workload of SQL (inserts, updates of every
column type, rows moving between tenants, deletes, NULLs, a large TOASTed text updated and
left unchanged, multi-row transactions, bulk updates) runs while the clients read:

- unfiltered tables, tables under random filters (numeric, text, `in`, `exists`, dotted
  paths into jsonb), tables under a tenant-confined token (with and without a filter of
  their own), a table of row topics, and SSE streams, spread over both replicas;
- every table starts with `snapshot: true`, then follows live changes;
- in the middle: clients drop their connection and resume from the position they kept, one
  gateway is stopped with SIGTERM and started again, Debezium is killed and restarted (it
  re-sends what it had not flushed), the other gateway is killed with SIGKILL and started
  again; clients of a stopped gateway reconnect and resume.

At the end each table must equal `SELECT ... WHERE <the same predicate>` on Postgres, row
by row and value by value, and no subscription may have received one source record twice.
The seed is printed; `--seed N` replays a run. `--ops` bounds it (CI), `--soak` runs longer.
End-to-end latency (commit in Postgres -> client) is reported as p50/p99.

  PY=$(bash scripts/install-debezium.sh)
  $PY tests/cdc/oracle.py --gateway-bin target/debug/cdc-gateway --schemas
  $PY tests/cdc/oracle.py --gateway-bin target/debug/cdc-gateway --no-schemas --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline  # noqa: E402

import websockets  # noqa: E402

TENANTS = ["acme", "globex", "initech"]
STATUSES = ["new", "paid", "shipped", "cancelled"]
PLANS = ["gold", "silver", "bronze"]
SECRET = "oracle-secret-0123456789abcdef0123456789"
# Rows that tell a connection it has everything up to the end: one per partition, tenant
# acme (so confined tokens see them too), left out of every comparison.
SENTINEL_BASE = 900_000

SCHEMA = """
create type order_status as enum ('new', 'paid', 'shipped', 'cancelled');
create table orders (
    id bigint primary key,
    tenant text not null,
    amount numeric(12,2),
    qty int,
    price double precision,
    ship_date date,
    updated_at timestamp,
    seen_at timestamptz,
    meta jsonb,
    note text,
    tags text[],
    active boolean,
    ref uuid,
    status order_status,
    due time,
    blob bytea
);
"""
COLUMNS = ["id", "tenant", "amount", "qty", "price", "ship_date", "updated_at", "seen_at",
           "meta", "note", "tags", "active", "ref", "status", "due", "blob"]


def log(*args):
    print(f"[oracle {time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tokens

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims: dict) -> str:
    """An HS256 JWT, signed here (no JWT library: the gateway's own code is not used)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"exp": int(time.time()) + 7200, **claims}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


ADMIN = {"topics": ["cdc.orders", "cdc.orders.*"]}
ACME = {"topics": ["cdc.orders", "cdc.orders.*"], "filters": {"cdc.orders": {"row.tenant": "acme"}}}


# ---------------------------------------------------------------- the workload

class Workload:
    """Seeded random SQL. Keeps the ids it made, so that it updates and deletes real rows."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.ids: list[int] = []
        self.next_id = 1

    def note(self) -> str:
        # Hex of random bytes: compresses to about half, so 8 KB is TOASTed out of line.
        return "note-" + self.rng.randbytes(self.rng.choice([20, 4000, 6000])).hex()

    def maybe(self, value, nulls=0.15):
        return None if self.rng.random() < nulls else value

    def values(self) -> dict:
        r = self.rng
        return {
            "tenant": r.choice(TENANTS),
            "amount": self.maybe(Decimal(r.randint(0, 200_000)) / 100),
            "qty": self.maybe(r.randint(0, 20)),
            "price": self.maybe(round(r.uniform(-50, 5000), 3)),
            "ship_date": self.maybe(dt.date(2020, 1, 1) + dt.timedelta(days=r.randint(0, 3650))),
            "updated_at": self.maybe(dt.datetime(2024, 1, 1) + dt.timedelta(
                seconds=r.randint(0, 10**8), microseconds=r.randint(0, 999_999))),
            "seen_at": self.maybe(dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
                seconds=r.randint(0, 10**8), microseconds=r.choice([0, r.randint(0, 999_999)]))),
            "meta": self.maybe(self.meta()),
            "note": self.maybe(self.note(), 0.1),
            "tags": self.maybe([r.choice(["red", "green", "blue", "x,y", 'q"t'])
                                for _ in range(r.randint(0, 3))]),
            "active": self.maybe(r.random() < 0.5),
            "ref": self.maybe(str(__import__("uuid").UUID(int=r.getrandbits(128), version=4))),
            "status": self.maybe(r.choice(STATUSES)),
            "due": self.maybe(dt.time(r.randint(0, 23), r.randint(0, 59), r.randint(0, 59),
                                      r.choice([0, r.randint(0, 999_999)]))),
            "blob": self.maybe(r.randbytes(r.randint(0, 24))),
        }

    def meta(self):
        r = self.rng
        meta = {"plan": r.choice(PLANS + [None]), "n": r.randint(-5, 500),
                "nested": {"tier": r.randint(1, 3), "tags": ["a", "b"][: r.randint(0, 2)]}}
        if r.random() < 0.5:
            meta["vip"] = r.choice([True, False, None])
        return meta

    def insert(self) -> tuple[str, dict]:
        row = self.values()
        row["id"] = self.next_id
        self.next_id += 1
        self.ids.append(row["id"])
        return insert_sql(row)

    def update(self) -> tuple[str, dict] | None:
        if not self.ids:
            return None
        r = self.rng
        fresh = self.values()
        # A random subset of columns; `note` (TOASTed) is left unchanged most of the time.
        names = [c for c in COLUMNS[1:] if r.random() < (0.1 if c == "note" else 0.35)]
        if not names:
            names = [r.choice(["qty", "amount", "status", "meta", "tenant"])]
        params = {n: adapt(n, fresh[n]) for n in names}
        params["id"] = r.choice(self.ids)
        sets = ", ".join(f"{n} = %({n})s" for n in names)
        return f"update orders set {sets} where id = %(id)s", params

    def move_tenant(self) -> tuple[str, dict] | None:
        if not self.ids:
            return None
        return ("update orders set tenant = %(t)s, qty = coalesce(qty, 0) + 1 where id = %(id)s",
                {"t": self.rng.choice(TENANTS), "id": self.rng.choice(self.ids)})

    def delete(self) -> tuple[str, dict] | None:
        if len(self.ids) < 5:
            return None
        victim = self.ids.pop(self.rng.randrange(len(self.ids)))
        return "delete from orders where id = %(id)s", {"id": victim}

    def bulk(self) -> tuple[str, dict]:
        # A third of the table; in a large one (--bulk) a hundredth of that, so that the
        # clients' live events stay within what they can read.
        spread = " and id %% 100 = %(k)s" if len(self.ids) > 10_000 else ""
        return ("update orders set qty = coalesce(qty, 0) + 1, active = not coalesce(active, false) "
                "where tenant = %(t)s and id < %(s)s" + spread,
                {"t": self.rng.choice(TENANTS), "s": SENTINEL_BASE, "k": self.rng.randrange(100)})

    def step(self) -> list[tuple[str, dict]]:
        """One transaction: a list of statements."""
        r = self.rng.random()
        if r < 0.10:
            n = self.rng.randint(2, 6)
            return [s for s in (self.one() for _ in range(n)) if s]
        if r < 0.14:
            return [self.bulk()]
        one = self.one()
        return [one] if one else []

    def one(self):
        r = self.rng.random()
        if r < 0.32:
            return self.insert()
        if r < 0.70:
            return self.update()
        if r < 0.85:
            return self.move_tenant()
        return self.delete() or self.insert()


def adapt(name, value):
    from psycopg.types.json import Jsonb

    return Jsonb(value) if name == "meta" and value is not None else value


def insert_sql(row: dict) -> tuple[str, dict]:
    names = ", ".join(COLUMNS)
    values = ", ".join(f"%({c})s" for c in COLUMNS)
    return (f"insert into orders ({names}) values ({values})",
            {c: adapt(c, row.get(c)) for c in COLUMNS})


def bulk_sql(first: int, count: int) -> str:
    """`count` rows from id `first`, in one statement, varied from their id (every column,
    NULLs included, and about 400 bytes of note): a table larger than the old 100,000-row
    cache, written before Debezium starts so that it arrives through its initial snapshot."""
    return f"""
insert into orders ({", ".join(COLUMNS)})
select g,
       (array['acme','globex','initech'])[1 + g % 3],
       case when g % 7 = 0 then null else (g % 200000) / 100.0 end,
       case when g % 11 = 0 then null else g % 21 end,
       (g % 5000) * 1.25,
       date '2020-01-01' + (g % 3650),
       timestamp '2024-01-01' + g * interval '1 second' + (g % 1000) * interval '1 microsecond',
       timestamptz '2024-06-01 00:00:00+00' + g * interval '7 seconds',
       case when g % 13 = 0 then null else jsonb_build_object(
           'plan', (array['gold','silver','bronze'])[1 + g % 3], 'n', g % 500,
           'nested', jsonb_build_object('tier', 1 + g % 3, 'tags', '["a"]'::jsonb)) end,
       'bulk-' || repeat(md5(g::text), 12),
       array['red', 'x,y'],
       g % 2 = 0,
       md5(g::text)::uuid,
       (array['new','paid','shipped','cancelled'])[1 + g % 4]::order_status,
       time '00:00' + (g % 86400) * interval '1 second',
       decode(md5(g::text), 'hex')
from generate_series({first}, {first + count - 1}) g"""


def replayed_offsets(records: list[dict], schemas: bool) -> dict[tuple[str, int, int], int]:
    """From an independent read of the broker: every record that repeats a change already
    in the topic (a Debezium replay: the same `source.lsn`, a later offset), mapped to the
    offset of the first record of that change."""
    first: dict[int, tuple[str, int, int]] = {}
    repeats: dict[tuple[str, int, int], tuple[str, int, int]] = {}
    for r in sorted(records, key=lambda r: (r["partition"], r["offset"])):
        if r["value"] is None:
            continue
        value = json.loads(r["value"])
        value = value.get("payload", value) if schemas else value
        lsn = (value.get("source") or {}).get("lsn")
        if lsn is None or value.get("op") == "r":
            continue
        key = (r["topic"], r["partition"], r["offset"])
        if lsn in first:
            repeats[key] = first[lsn]
        else:
            first[lsn] = key
    return repeats


def run_transaction(pg: pipeline.Postgres, statements):
    if not statements:
        return
    with pg.connect(autocommit=False) as conn:
        with conn.transaction():
            for sql, params in statements:
                conn.execute(sql, params)


# ---------------------------------------------------------------- filters and their SQL

def filter_templates(rng: random.Random, schemas: bool) -> list[tuple[dict, str]]:
    """(gateway filter, the same predicate in SQL). Without the schema the gateway cannot
    read decimals, dates or jsonb (docs/values.md), so only what it can read is filtered."""
    x = rng.randint(0, 1500)
    k = rng.randint(2, 15)
    a, b = rng.sample(TENANTS, 2)
    s = rng.choice(STATUSES)
    p = rng.choice(PLANS)
    day = (dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 3650))).isoformat()
    common = [
        ({"row.tenant": {"in": [a, b]}}, f"tenant in ('{a}', '{b}')"),
        ({"row.status": s}, f"status = '{s}'"),
        ({"row.qty": {"lt": k}}, f"qty < {k}"),
        ({"row.tenant": {"ne": a}}, f"tenant <> '{a}'"),
    ]
    if not schemas:
        return common
    return common + [
        ({"row.amount": {"gte": x}}, f"amount >= {x}"),
        ({"row.meta.plan": p}, f"meta->>'plan' = '{p}'"),
        ({"row.meta.vip": {"exists": True}}, "meta ? 'vip'"),
        ({"row.meta.nested.tier": {"gte": 2}}, "(meta->'nested'->>'tier')::int >= 2"),
        ({"row.ship_date": {"gte": day}}, f"ship_date >= '{day}'"),
        ({"row.amount": {"lt": x}, "row.tenant": a}, f"amount < {x} and tenant = '{a}'"),
    ]


def random_filter(rng, schemas, tenant=True) -> tuple[dict, str]:
    templates = filter_templates(rng, schemas)
    if not tenant:
        templates = [t for t in templates if "tenant" not in t[1]]
    return rng.choice(templates)


def sentinel_filter(rng, schemas) -> tuple[dict, str, dict]:
    """A filter for a stream whose only topic is the entity (SSE applies a stream's filter to
    all its topics), with the values that make the sentinel rows pass it."""
    s, p, k = rng.choice(STATUSES), rng.choice(PLANS), rng.randint(2, 15)
    values = {"status": s, "qty": 0}
    templates = [
        ({"row.status": s}, f"status = '{s}'"),
        ({"row.qty": {"lt": k}}, f"qty < {k}"),
        ({"row.tenant": {"in": ["acme", "initech"]}}, "tenant in ('acme', 'initech')"),
    ]
    if schemas:
        x = rng.randint(0, 1500)
        values.update({"amount": Decimal("99999.99"), "ship_date": dt.date(2099, 1, 1),
                       "meta": {"plan": p, "vip": True, "nested": {"tier": 3}}})
        templates += [
            ({"row.amount": {"gte": x}}, f"amount >= {x}"),
            ({"row.meta.plan": p}, f"meta->>'plan' = '{p}'"),
            ({"row.meta.vip": {"exists": True}}, "meta ? 'vip'"),
            ({"row.meta.nested.tier": {"gte": 2}}, "(meta->'nested'->>'tier')::int >= 2"),
            ({"row.ship_date": {"gte": "2025-01-01"}}, "ship_date >= '2025-01-01'"),
        ]
    f, where = rng.choice(templates)
    return f, where, values


# ---------------------------------------------------------------- values, normalized

EPOCH = dt.datetime(1970, 1, 1)


def parse_time(text: str) -> dt.time:
    main, _, frac = text.partition(".")
    h, m, s = (int(v) for v in main.split(":"))
    return dt.time(h % 24, m, s, int((frac + "000000")[:6]) if frac else 0)


def client_value(column: str, value, schemas: bool):
    """A value as a client received it, as a Python value comparable with Postgres'."""
    if value is None:
        return None
    if column == "amount":
        return Decimal(str(value)) if schemas else Decimal(value)
    if column == "price":
        return float(value)
    if column == "ship_date":
        return dt.date.fromisoformat(value) if schemas else (EPOCH + dt.timedelta(days=value)).date()
    if column == "updated_at":
        return dt.datetime.fromisoformat(value) if schemas else EPOCH + dt.timedelta(microseconds=value)
    if column == "seen_at":
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if column == "meta":
        return value if schemas else json.loads(value)
    if column == "due":
        if schemas:
            return parse_time(value)
        return (EPOCH + dt.timedelta(microseconds=value)).time()
    if column == "blob":
        return base64.b64decode(value)
    return value


def db_value(column: str, value):
    if column == "ref" and value is not None:
        return str(value)
    if column == "blob" and value is not None:
        return bytes(value)
    if column == "amount" and value is not None:
        return Decimal(value)
    return value


def expected_rows(pg: pipeline.Postgres, where: str | None) -> dict[int, dict]:
    sql = f"select {', '.join(COLUMNS)} from orders where id < {SENTINEL_BASE}"
    if where:
        sql += f" and ({where})"
    with pg.connect() as conn:
        rows = conn.execute(sql).fetchall()
    return {r[0]: {c: db_value(c, v) for c, v in zip(COLUMNS, r)} for r in rows}


# ---------------------------------------------------------------- live tables

class Subscription:
    """One topic of a connection: its table, its kept position, what it received."""

    def __init__(self, topic: str, filters: dict | None):
        self.topic = topic
        self.filters = filters
        self.rows: dict[int, dict] = {}
        self.position: dict[str, int] | None = None  # kept only once synced
        self.synced = False
        self.waiting_for_ack = False
        self.seen: set[tuple[str, int, int]] = set()
        self.repeats: list[tuple[str, int, int]] = []
        # Every live (not snapshot) record delivered, across reloads: judged against the
        # broker's replays at the end.
        self.live: list[tuple[str, int, int]] = []
        self.incomplete = 0
        self.acks: list[dict] = []

    def subscribe_message(self) -> dict:
        msg = {"action": "subscribe", "topic": self.topic}
        if self.filters:
            msg["filters"] = self.filters
        if self.synced and self.position is not None:
            msg["since"] = self.position
        else:
            self.reload()
            msg["snapshot"] = True
        self.waiting_for_ack = True
        return msg

    def reload(self):
        self.rows.clear()
        self.synced = False
        self.position = None
        self.seen.clear()

    def on_ack(self, ack: dict) -> bool:
        """False when the subscription must be made again with a snapshot."""
        self.acks.append(ack)
        self.waiting_for_ack = False
        if "snapshot" in ack:
            if not ack["snapshot"].get("complete", False):
                self.incomplete += 1
            self.pending_position = dict(ack.get("position", {}))
            return True
        if ack.get("recovered") is True:
            return True
        return False

    def on_data(self, msg: dict, received: float, latencies: list | None):
        if self.waiting_for_ack:
            return  # from a subscription being replaced
        key = (msg["source"], msg["partition"], msg["offset"])
        payload = msg["payload"]
        if not msg.get("snapshot"):
            if key in self.seen:
                self.repeats.append(key)
            self.seen.add(key)
            self.live.append(key)
            if latencies is not None and payload.get("timestamp"):
                at = dt.datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
                latencies.append(received - at.timestamp())
            if self.position is not None:
                pk = f"{msg['source']}:{msg['partition']}"
                self.position[pk] = max(self.position.get(pk, -1), msg["offset"])
        rid = int(payload["entity_id"])
        if payload["operation"] in ("delete",) or msg.get("leave"):
            self.rows.pop(rid, None)
        elif payload["operation"] == "truncate":
            self.rows.clear()
        elif payload.get("data") is not None:
            self.rows[rid] = payload["data"]

    def on_synced(self):
        self.synced = True
        self.position = dict(getattr(self, "pending_position", {}) or {})

    def on_reset(self):
        self.reload()


class WsClient:
    """A WebSocket client (the `websockets` library) with subscriptions that resume."""

    def __init__(self, name: str, gateway: "Gateway", claims: dict, subs: list[Subscription],
                 wheres: dict[str, str | None], latencies: list | None = None):
        self.name = name
        self.gateway = gateway
        self.claims = claims
        self.subs = {s.topic: s for s in subs}
        self.wheres = wheres
        self.latencies = latencies
        self.ws = None
        self.stop = False
        self.connects = 0
        self.task = None
        self.recovered = {"true": 0, "false": 0}
        self.errors: list[str] = []

    async def run(self):
        while not self.stop:
            try:
                await self.session()
            except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
                pass
            except Exception as e:  # noqa: BLE001 - reported with the verdict
                self.errors.append(repr(e))
                return
            if not self.stop:
                await asyncio.sleep(0.3)

    async def session(self):
        url = f"ws://127.0.0.1:{self.gateway.port}/ws"
        headers = {"Authorization": f"Bearer {token(self.claims)}"}
        async with websockets.connect(url, additional_headers=headers, max_size=2**24,
                                      open_timeout=5, ping_interval=None) as ws:
            self.ws = ws
            self.connects += 1
            for sub in self.subs.values():
                await ws.send(json.dumps(sub.subscribe_message()))
            async for text in ws:
                received = time.time()
                msg = json.loads(text, parse_float=Decimal)
                kind = msg.get("type")
                sub = self.subs.get(msg.get("topic"))
                if kind == "data" and sub:
                    sub.on_data(msg, received, self.latencies)
                elif kind == "ack" and msg.get("action") == "subscribe" and sub:
                    if "recovered" in msg:
                        self.recovered["true" if msg["recovered"] else "false"] += 1
                    if not sub.on_ack(msg):
                        sub.reload()
                        await ws.send(json.dumps(sub.subscribe_message()))
                elif kind == "synced" and sub:
                    sub.on_synced()
                elif kind == "reset" and sub:
                    sub.on_reset()
                    await ws.send(json.dumps(sub.subscribe_message()))
                elif kind == "error":
                    raise RuntimeError(f"{self.name}: {msg}")

    async def drop(self):
        """Closes the connection as a network failure would; the client resumes."""
        if self.ws is not None:
            self.ws.transport.abort()

    def sentinels(self) -> dict[int, dict]:
        out = {}
        for sub in self.subs.values():
            out.update({k: v for k, v in sub.rows.items() if k >= SENTINEL_BASE})
        return out


class SseClient:
    """An SSE reader (urllib on a thread: no code of the gateway's) keeping one table."""

    def __init__(self, name, gateway, claims, sub: Subscription, where, latencies=None):
        self.name = name
        self.gateway = gateway
        self.claims = claims
        self.subs = {sub.topic: sub}
        self.sub = sub
        self.wheres = {sub.topic: where}
        self.latencies = latencies
        self.stop = False
        self.response = None
        self.last_id = None
        self.connects = 0
        self.recovered = {"true": 0, "false": 0}
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def url(self) -> str:
        query = [("topic", self.sub.topic)]
        if self.sub.filters:
            query.append(("filters", json.dumps(self.sub.filters)))
        if not (self.sub.synced and self.last_id):
            self.sub.reload()
            self.last_id = None
            query.append(("snapshot", "1"))
        return f"http://127.0.0.1:{self.gateway.port}/sse?{urllib.parse.urlencode(query)}"

    def run(self):
        import urllib.error

        while not self.stop:
            try:
                self.session()
            except urllib.error.HTTPError as e:
                if e.code not in (429, 502, 503):
                    self.errors.append(f"HTTP {e.code}: {e.read()[:200]!r}")
                    return
            except Exception:  # noqa: BLE001 - the stream ended or the gateway is away
                pass
            if not self.stop:
                time.sleep(0.3)

    def session(self):
        url = self.url()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token(self.claims)}"})
        if self.last_id:
            request.add_header("Last-Event-ID", self.last_id)
        with urllib.request.urlopen(request, timeout=30) as response:
            self.response = response
            self.connects += 1
            event, data, ident = None, [], None
            for raw in response:
                line = raw.decode().rstrip("\n").rstrip("\r")
                if line == "":
                    if data:
                        self.dispatch(event or "message", "\n".join(data), ident)
                    event, data, ident = None, [], None
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
                    elif field == "id":
                        ident = value
                if self.stop:
                    return

    def dispatch(self, event, data, ident):
        msg = json.loads(data, parse_float=Decimal)
        with self.lock:
            if event == "ack":
                if "recovered" in msg:
                    self.recovered["true" if msg["recovered"] else "false"] += 1
                if not self.sub.on_ack(msg):
                    # Reload: the next stream asks for a snapshot.
                    self.sub.reload()
                    self.last_id = None
                    self.response.close()
            elif event == "data":
                self.sub.on_data(msg, time.time(), self.latencies)
                if ident:
                    self.last_id = ident
            elif event == "synced":
                self.sub.on_synced()
            elif event == "reset":
                self.sub.on_reset()
                self.last_id = None
                self.response.close()

    def drop(self):
        if self.response is not None:
            try:
                self.response.fp.raw._sock.shutdown(2)  # noqa: SLF001 - a network failure
            except Exception:  # noqa: BLE001
                pass

    def sentinels(self):
        with self.lock:
            return {k: v for k, v in self.sub.rows.items() if k >= SENTINEL_BASE}


# ---------------------------------------------------------------- gateways

class Gateway:
    def __init__(self, name: str, binary: str, brokers: str, topic: str, root: Path, schemas: bool):
        self.name = name
        self.binary = binary
        self.port = pipeline.free_port()
        self.log = root / f"gateway-{name}.log"
        self.args = [
            binary, "--brokers", brokers, "--source-topics", topic, "--group-id", f"oracle-{name}",
            "--listen", f"127.0.0.1:{self.port}", "--auth", "jwt", "--jwt-secret", SECRET,
            "--auto-offset-reset", "earliest",
            # Row state must reach back to every row after a restart (docs/delivery.md).
            "--history-warmup", "1000000", "--history-events", "1000000",
            "--history-max-age", "1h", "--log-level", "info",
            # Its tables on disk: a restart reopens them and reads only what came after.
            "--table-store-path", str(root / f"tables-{name}"),
        ]
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        self.proc = pipeline.spawn(self.args, self.log, 1800)
        self.wait_ready()

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway {self.name} exited:\n{pipeline.tail(self.log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway {self.name} not ready:\n{pipeline.tail(self.log)}")

    def stop(self, kill=False):
        if self.proc is None:
            return
        if kill:
            self.kill_child()
        else:
            pipeline.stop_process(self.proc, grace=30)
        self.proc = None

    def kill_child(self):
        """SIGKILL the gateway itself (under `timeout`), not the wrapper."""
        import subprocess

        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        for pid in out.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        self.proc.wait(20)


# ---------------------------------------------------------------- the run

def compare(name: str, rows: dict[int, dict], expected: dict[int, dict], schemas: bool) -> list[str]:
    problems = []
    got = {k: v for k, v in rows.items() if k < SENTINEL_BASE}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        problems.append(f"{name}: {len(missing)} rows missing, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{name}: {len(extra)} rows it should not hold, e.g. {extra[:5]}")
    wrong = 0
    for rid in sorted(set(got) & set(expected)):
        for column in COLUMNS:
            want = expected[rid][column]
            if column not in got[rid]:
                have = "<field missing>"
            else:
                try:
                    have = client_value(column, got[rid][column], schemas)
                except Exception as e:  # noqa: BLE001
                    have = f"<unreadable {got[rid][column]!r}: {e}>"
            if column == "id" and isinstance(have, (int, str, Decimal)):
                have = int(have)
            if have != want:
                wrong += 1
                if wrong <= 8:
                    problems.append(f"{name}: row {rid} `{column}`: client {str(have)[:80]!r} "
                                    f"database {str(want)[:80]!r}")
    if wrong > 8:
        problems.append(f"{name}: {wrong} wrong values in all")
    return problems


async def run(args) -> int:
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    mode = "schemas" if args.schemas else "no-schemas"
    log(f"seed {seed} ({mode}); replay: --seed {seed} --{mode}")
    rng = random.Random(seed)
    work = Workload(rng)
    latencies: list[float] = []
    with pipeline.Pipeline(tables=["public.orders"], max_seconds=args.max_seconds) as p:
        p.run_sql(SCHEMA)
        # Rows that exist before Debezium starts reach Kafka through its initial snapshot.
        for _ in range(args.initial):
            run_transaction(p.postgres, [work.insert()])
        if args.bulk:
            p.run_sql(bulk_sql(work.next_id, args.bulk))
            work.ids.extend(range(work.next_id, work.next_id + args.bulk))
            work.next_id += args.bulk
            log(f"{args.bulk} rows written in bulk before Debezium starts")
        sentinels = list(range(SENTINEL_BASE, SENTINEL_BASE + 24))
        for sid in sentinels:
            sql, params = insert_sql({"id": sid, "tenant": "acme", "note": "start"})
            run_transaction(p.postgres, [(sql, params)])
        extra = [] if args.schemas else ["--prop", "decimal.handling.mode=string"]
        p.start_debezium(schemas=args.schemas, extra=extra)
        topic = "shop.public.orders"
        # One sentinel per partition, as Debezium's keys landed.
        by_partition = {}
        for record in p.read_topic(topic):
            key = json.loads(record["key"])
            sid = int(key.get("payload", key)["id"])
            if sid >= SENTINEL_BASE:
                by_partition.setdefault(record["partition"], sid)
        sentinels = sorted(by_partition.values())
        log(f"sentinels {by_partition}")
        gateways = [Gateway(n, args.gateway_bin, p.tansu.brokers, topic, p.root, args.schemas)
                    for n in ("one", "two")]
        for g in gateways:
            g.start()

        def with_sentinels(subs):
            return subs + [Subscription(f"cdc.orders.{s}", None) for s in sentinels]

        clients = []
        wheres: list[tuple[object, str, str | None, str]] = []  # client, topic, where, label

        def ws(name, gw, claims, topic_filter, where, lat=None):
            sub = Subscription("cdc.orders", topic_filter)
            c = WsClient(name, gw, claims, with_sentinels([sub]), {}, lat)
            clients.append(c)
            wheres.append((c, "cdc.orders", where, name))
            return c

        g1, g2 = gateways
        ws("ws-all-one", g1, ADMIN, None, None, latencies)
        ws("ws-all-two", g2, ADMIN, None, None)
        for i in range(args.filtered):
            f, where = random_filter(rng, args.schemas)
            ws(f"ws-filter-{i}({json.dumps(f)})", gateways[i % 2], ADMIN, f, where)
        ws("ws-acme", g1, ACME, None, "tenant = 'acme'")
        f, where = random_filter(rng, args.schemas, tenant=False)
        ws(f"ws-acme-filter({json.dumps(f)})", g2, ACME, f, f"tenant = 'acme' and ({where})")
        # Row topics: a few rows that exist now (some will be deleted or move).
        row_ids = rng.sample(work.ids, min(4, len(work.ids)))
        row_subs = [Subscription(f"cdc.orders.{i}", None) for i in row_ids]
        rows_client = WsClient("ws-rows", g2, ADMIN, with_sentinels(row_subs), {})
        clients.append(rows_client)
        sse_all = SseClient("sse-all", g1, ADMIN, Subscription("cdc.orders", None), None)
        sse_acme = SseClient("sse-acme", g2, ACME, Subscription("cdc.orders", None), "tenant = 'acme'")
        f, where, sentinel_values = sentinel_filter(rng, args.schemas)
        sse_filter = SseClient(f"sse-filter({json.dumps(f)})", g1, ADMIN,
                               Subscription("cdc.orders", f), where)
        sse_clients = [sse_all, sse_acme, sse_filter]
        for c in clients:
            c.task = asyncio.create_task(c.run())
        threads = [threading.Thread(target=c.run, daemon=True) for c in sse_clients]
        for t in threads:
            t.start()

        ops_done = 0

        async def ops(n):
            nonlocal ops_done
            for _ in range(n):
                await asyncio.to_thread(run_transaction, p.postgres, work.step())
                ops_done += 1
                if rng.random() < 0.2:
                    await asyncio.sleep(rng.uniform(0, 0.05))

        quarter = max(1, args.ops // 6)
        await asyncio.sleep(1)
        await ops(quarter)
        steady = list(latencies)  # before any disruption
        log("clients drop their connections and resume")
        for c in rng.sample(clients, 3):
            await c.drop()
        sse_all.drop()
        await ops(quarter)
        log("gateway one: SIGTERM, writes while it is down, start again")
        await asyncio.to_thread(g1.stop)
        await ops(quarter // 2)
        await asyncio.to_thread(g1.start)
        await ops(quarter)
        log("Debezium: restart with offsets flushed every 10 min, writes, SIGKILL, start "
            "again (it re-sends everything since)")
        await asyncio.to_thread(p.restart_debezium, 180, False, 600_000)
        await ops(quarter // 2)
        # Those changes in the broker (and their offsets not flushed) before the crash: only
        # then is a replay certain (a kill before the relay sent them made none at all).
        await asyncio.to_thread(p.wait_carried, 120)
        await asyncio.to_thread(p.restart_debezium, 180, True)
        await ops(quarter)
        log("gateway two: SIGKILL, writes while it is down, start again")
        await asyncio.to_thread(g2.stop, True)
        await ops(quarter // 2)
        await asyncio.to_thread(g2.start)
        await ops(args.ops - ops_done)
        log("gateway three: a new replica with a new store joins late; its clients take "
            "snapshots from it")
        g3 = Gateway("three", args.gateway_bin, p.tansu.brokers, topic, p.root, args.schemas)
        gateways.append(g3)
        await asyncio.to_thread(g3.start)
        for c in (ws("ws-all-late", g3, ADMIN, None, None),
                  ws("ws-acme-late", g3, ACME, None, "tenant = 'acme'")):
            c.task = asyncio.create_task(c.run())
        await ops(quarter // 2)
        log(f"{ops_done} transactions; waiting for the pipeline and every client")
        await asyncio.to_thread(p.wait_carried, 120)
        final = f"final-{seed}"
        for sid in sentinels:
            values = {**sentinel_values, "note": final}
            sets = ", ".join(f"{c} = %({c})s" for c in values)
            params = {c: adapt(c, v) for c, v in values.items()}
            await asyncio.to_thread(run_transaction, p.postgres,
                                    [(f"update orders set {sets} where id = %(id)s",
                                      {**params, "id": sid})])
        await asyncio.to_thread(p.wait_carried, 120)
        everyone = clients + sse_clients
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            behind = [c.name for c in everyone
                      if sorted(k for k, v in c.sentinels().items() if v.get("note") == final)
                      != sentinels]
            if not behind:
                break
            await asyncio.sleep(0.2)
        else:
            behind = [c.name for c in everyone
                      if sorted(k for k, v in c.sentinels().items() if v.get("note") == final)
                      != sentinels]
        for c in clients:
            c.stop = True
        for c in sse_clients:
            c.stop = True
            c.drop()
        for c in clients:
            await c.drop()
            c.task.cancel()
        problems = [f"{name}: never received the final sentinels" for name in behind]
        # Judge every table against the database.
        for c, tp, where, label in wheres:
            sub = c.subs[tp]
            problems += compare(label, sub.rows, expected_rows(p.postgres, where), args.schemas)
        for sub in row_subs:
            rid = int(sub.topic.rsplit(".", 1)[1])
            want = {k: v for k, v in expected_rows(p.postgres, f"id = {rid}").items()}
            problems += compare(f"ws-rows {sub.topic}", sub.rows, want, args.schemas)
        for c in sse_clients:
            problems += compare(c.name, c.sub.rows, expected_rows(p.postgres, c.wheres[c.sub.topic]),
                                args.schemas)
        for c in everyone:
            problems += [f"{c.name}: {e}" for e in c.errors]
            for sub in c.subs.values():
                if sub.repeats:
                    problems.append(f"{c.name} {sub.topic}: {len(sub.repeats)} records delivered "
                                    f"twice, e.g. {sub.repeats[:3]}")
        # Once per change, judged against an independent read of the broker: Debezium's
        # replays are there (records repeating an earlier record's source.lsn), and none
        # reached a client live.
        replays = replayed_offsets(p.read_topic(topic), args.schemas)
        if not replays:
            problems.append("the topic holds no Debezium replay: the restart proved nothing")
        for c in everyone:
            for sub in c.subs.values():
                got = [k for k in sub.live if k in replays]
                if got:
                    problems.append(f"{c.name} {sub.topic}: {len(got)} Debezium replays "
                                    f"delivered, e.g. {got[:3]} (first sent as {replays[got[0]]})")
        log(f"the topic holds {len(replays)} replayed records")
        total = len(expected_rows(p.postgres, None))
        log(f"database: {total} rows; tables: " + ", ".join(
            f"{c.name.split('(')[0]}={len([k for k in c.subs['cdc.orders'].rows if k < SENTINEL_BASE])}"
            for c, *_ in wheres) + f", sse-all={len([k for k in sse_all.sub.rows if k < SENTINEL_BASE])}")
        log("connects: " + ", ".join(f"{c.name.split('(')[0]}={c.connects}" for c in everyone)
            + "; resumes recovered: " + ", ".join(
                f"{c.name.split('(')[0]}={c.recovered['true']}/{c.recovered['false']}" for c in everyone))
        for label, sample in (("steady", steady), ("whole run, restarts included", latencies)):
            if sample:
                sample = sorted(sample)
                p50 = sample[len(sample) // 2]
                p99 = sample[min(len(sample) - 1, int(len(sample) * 0.99))]
                log(f"end-to-end latency, SQL commit -> client (live events of ws-all-one, "
                    f"{label}): p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over "
                    f"{len(sample)} events")
        for g in gateways:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{g.port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                replays = [l for l in text.splitlines() if l.startswith("cdc_gateway_source_replays_total")]
                images = [l for l in text.splitlines() if l.startswith("cdc_gateway_row_images_total")]
                log(f"gateway {g.name} (started {g.starts}x): {' '.join(replays)}; {'; '.join(images)}")
            except OSError as e:
                log(f"gateway {g.name}: no metrics: {e}")
        for g in gateways:
            g.stop()
        if problems:
            log(f"FAILED (seed {seed}, {mode}):")
            for line in problems:
                print("  " + line, file=sys.stderr)
            for g in gateways:
                log(f"gateway {g.name} log tail:\n{pipeline.tail(g.log, 15)}")
            return 1
        log(f"ok: every table equals its SELECT (seed {seed}, {mode})")
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bin", default=os.environ.get("CDC_GATEWAY_BIN"), required=False)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--schemas", dest="schemas", action="store_true", default=True)
    g.add_argument("--no-schemas", dest="schemas", action="store_false")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--ops", type=int, default=360, help="transactions in all (CI bound)")
    ap.add_argument("--initial", type=int, default=40, help="rows before Debezium starts")
    ap.add_argument("--bulk", type=int, default=0,
                    help="more rows before Debezium starts, in one statement (a large table)")
    ap.add_argument("--filtered", type=int, default=3, help="clients under random filters")
    ap.add_argument("--settle", type=float, default=120, help="seconds to wait for the clients")
    ap.add_argument("--soak", action="store_true", help="a longer run: 10x the transactions")
    ap.add_argument("--max-seconds", type=float, default=1500)
    args = ap.parse_args()
    if not args.gateway_bin:
        ap.error("--gateway-bin (or CDC_GATEWAY_BIN) is required")
    if args.soak:
        args.ops *= 10
        args.filtered *= 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
