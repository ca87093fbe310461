"""Regenerates tests/fixtures/debezium/{schemas,plain,avro}.jsonl from a real pipeline.

Postgres 15 -> Debezium 3.6.3 (pydbzengine, Postgres connector, pgoutput, JsonConverter) ->
relay.py -> tansu, then every record read back from tansu, one JSON line each:
  {"topic", "partition", "offset", "key", "value"}  (key/value: the record's bytes as UTF-8, or null)
ordered by topic, partition, offset. One run per converter setting (schemas.enable true/false,
and Confluent's AvroConverter), each on a fresh cluster and broker, running the same SQL
(SCENARIO below). The Avro run's key and value are base64 (`key_base64`, `value_base64`: they
are binary), and the schemas it registered (in the stand-in registry, schema_registry.py) go
to avro-schemas.json, `{"<id>": "<schema>"}`.

  PY=$(bash scripts/install-debezium.sh); bash scripts/install-postgres.sh; bash scripts/install-tansu.sh
  $PY tests/cdc/capture_fixtures.py            # both files
  $PY tests/cdc/capture_fixtures.py --only plain --out /tmp/x
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline  # noqa: E402

OUT = pipeline.REPO / "tests/fixtures/debezium"
TABLES = ["public.orders", "public.line_items"]

# Defaults every Postgres user has: REPLICA IDENTITY DEFAULT, default TOAST storage.
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
  blob bytea,
  due time
);
create table line_items (
  order_id bigint,
  line_no int,
  amount numeric,
  sku text,
  primary key (order_id, line_no)
);
-- ~10 KB of hex from an md5 chain: pglz finds no repeats, so it is stored out of line (TOAST).
create function big_text(seed text) returns text language sql as $$
  select string_agg(md5(seed || i::text), '' order by i) from generate_series(1, 320) i
$$;
-- A row that exists before Debezium starts: the initial snapshot reads it (op "r").
insert into orders (id, tenant, amount, qty, price, ship_date, updated_at, seen_at, meta, note,
                    tags, active, ref, status, blob, due)
values (100, 'acme', 5.00, 1, 0.5, '2024-01-01', '2024-01-01 00:00:00', '2024-01-01 00:00:00+00',
        '{"src": "snapshot"}', 'short note', '{snap}', true,
        '00000000-0000-0000-0000-000000000100', 'new', '\\x00', '00:00:00');
"""

# (label, sql): each step is its own transaction (unless it says begin/commit) and is carried
# to the broker before the next one runs.
SCENARIO = [
    ("insert, every column set",
     """insert into orders values (1, 'acme', 1234.56, 3, 19.99, '2024-03-01',
        '2024-03-01 12:34:56.789012', '2024-03-01 12:34:56.789012+02',
        '{"gift": true, "lines": [1, 2], "note": "ünïcødé"}', big_text('first'),
        '{red,"with space",null}', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'new',
        '\\xdeadbeef00ff', '23:59:59.999999')"""),
    ("insert, NULLs in every nullable column",
     "insert into orders (id, tenant) values (2, 'globex')"),
    ("update every column type except the TOASTed note (note arrives as __debezium_unavailable_value)",
     """update orders set amount = -0.01, qty = -7, price = 'NaN', ship_date = '1969-12-31',
        updated_at = '1969-12-31 23:59:59.5', seen_at = '2030-06-15 08:00:00-07',
        meta = '[1, {"a": null}]', tags = '{}', active = false,
        ref = 'ffffffff-ffff-ffff-ffff-ffffffffffff', status = 'paid', blob = '\\x',
        due = '00:00:00' where id = 1"""),
    ("update of the NULL row: every column from NULL to a value",
     """update orders set amount = 99999999.99, qty = 2147483647, price = 1e308, ship_date = '9999-12-31',
        updated_at = '2000-02-29 00:00:00', seen_at = '2000-02-29 00:00:00+00', meta = '"s"',
        note = 'small', tags = '{a}', active = true, ref = gen_random_uuid(),
        status = 'shipped', blob = '\\x01', due = '12:00:00' where id = 2"""),
    ("update of the TOASTed column",
     "update orders set note = big_text('second') where id = 1"),
    ("a row moving between tenants (note unchanged, so unavailable again)",
     "update orders set tenant = 'globex' where id = 1"),
    ("update back to NULLs",
     "update orders set amount = null, meta = null, tags = null, status = null, blob = null where id = 2"),
    ("a multi-row transaction",
     """begin;
        insert into orders (id, tenant, amount, note) values (3, 'acme', 10.00, 'three');
        insert into orders (id, tenant, amount, note) values (4, 'initech', 20.00, 'four');
        update orders set qty = 42 where id in (2, 3);
        delete from orders where id = 4;
        commit"""),
    ("delete (then the tombstone)",
     "delete from orders where id = 2"),
    ("a primary key change (Debezium: delete + tombstone of the old key, create of the new)",
     "update orders set id = 5 where id = 3"),
    ("second table: numeric without scale (VariableScaleDecimal), composite key",
     """insert into line_items values (1, 1, 12.5, 'sku-1'), (1, 2, 3.14159265358979323846, 'sku-2'),
        (5, 1, 100, 'sku-3'), (5, 2, -0.000001, null)"""),
    ("second table: update and delete",
     """begin;
        update line_items set amount = 1e20 where order_id = 1 and line_no = 1;
        delete from line_items where order_id = 1 and line_no = 2;
        commit"""),
]


def check_toasted(p: pipeline.Pipeline):
    rows = p.run_sql("""select pg_relation_size(reltoastrelid) from pg_class
                        where oid = 'orders'::regclass""")
    assert rows and rows[0][0] > 0, "orders.note was not TOASTed"
    ext = p.run_sql("select pg_column_size(note), length(note) from orders where id = 1")
    return rows[0][0], ext[0]


def capture(schemas: bool, out: Path, registry=None) -> int:
    started = time.monotonic()
    with pipeline.Pipeline(tables=TABLES, max_seconds=900) as p:
        p.run_sql(SCHEMA)
        extra = [] if registry is None else ["--format", "avro", "--schema-registry-url", registry.url]
        p.start_debezium(schemas=schemas, extra=extra)
        print(f"debezium streaming after {time.monotonic() - started:.1f}s", file=sys.stderr)
        for label, sql in SCENARIO:
            p.run_sql(sql)
            p.wait_carried()
            print(f"  carried: {label}", file=sys.stderr)
        toast = check_toasted(p)
        print(f"  toast relation {toast[0]} bytes; note: {toast[1][0]} bytes stored for "
              f"{toast[1][1]} chars", file=sys.stderr)
        records = p.read_all()
        code = p.stop_debezium()
        if code not in (0, None):
            raise RuntimeError(f"relay exited {code}:\n{pipeline.tail(p.debezium_log)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in records:
            line = {"topic": r["topic"], "partition": r["partition"], "offset": r["offset"]}
            for field in ("key", "value"):
                if registry is not None:
                    line[f"{field}_base64"] = (None if r[field] is None
                                               else base64.b64encode(r[field]).decode())
                else:
                    line[field] = None if r[field] is None else r[field].decode("utf-8")
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    if registry is not None:
        schemas_out = out.parent / "avro-schemas.json"
        with open(schemas_out, "w") as f:
            json.dump({str(i + 1): s for i, s in enumerate(registry.schemas)}, f, indent=1)
            f.write("\n")
    print(f"{out}: {len(records)} records, {out.stat().st_size} bytes, "
          f"{time.monotonic() - started:.0f}s", file=sys.stderr)
    return len(records)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", choices=["schemas", "plain", "avro"])
    a = ap.parse_args(argv)
    for name, schemas in (("schemas", True), ("plain", False)):
        if a.only in (None, name):
            capture(schemas, a.out / f"{name}.jsonl")
    if a.only in (None, "avro"):
        from schema_registry import SchemaRegistry

        with SchemaRegistry() as registry:
            capture(True, a.out / "avro.jsonl", registry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
