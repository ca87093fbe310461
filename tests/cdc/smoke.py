"""Checks the pipeline itself: rows are carried, keyed records land on the partition Kafka's
Java client would pick (murmur2), a graceful Debezium restart loses nothing, and a crashed
one (SIGKILL) re-sends what it had not committed.

  PY=$(bash scripts/install-debezium.sh); $PY tests/cdc/smoke.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline  # noqa: E402


def murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 (the Java client's default partitioner for keyed records)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = data[length - rest:]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, n: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % n


def ids(records):
    out = []
    for r in records:
        if r["value"] is not None:
            v = json.loads(r["value"])
            v = v.get("payload", v)
            if v["op"] in ("c", "r"):
                out.append(v["after"]["id"])
    return out


def main() -> int:
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        print(f"{'ok' if ok else 'FAIL'}: {name} {detail if not ok else ''}")
        passed += ok
        failed += not ok

    topic = "shop.public.items"
    with pipeline.Pipeline(tables=["public.items"], max_seconds=600) as p:
        p.run_sql("create table items (id bigint primary key, v text)")
        # A long offset flush interval, so a crash leaves the offsets behind what was sent.
        p.start_debezium(schemas=False, offset_flush_ms=600_000)
        p.run_sql("insert into items select g, 'a' from generate_series(1, 50) g")
        p.wait_carried()
        recs = p.read_topic(topic)
        check("inserts carried", sorted(ids(recs)) == list(range(1, 51)), ids(recs))
        bad = [r for r in recs if r["partition"] != java_partition(r["key"], 3)]
        check("murmur2 partitions", not bad, bad[:2])

        p.restart_debezium()  # graceful: the engine commits on close
        p.run_sql("insert into items select g, 'b' from generate_series(51, 60) g")
        p.wait_carried()
        got = ids(p.read_topic(topic))
        check("graceful restart: nothing lost, nothing repeated",
              sorted(got) == list(range(1, 61)), got)

        p.run_sql("insert into items select g, 'c' from generate_series(61, 70) g")
        p.wait_carried()
        p.restart_debezium(kill=True)  # crash: offsets still at the graceful stop's
        got = ids(p.read_topic(topic))
        check("crash restart: everything since the last offset flush re-sent",
              sorted(set(got)) == list(range(1, 71)) and got.count(61) == 2, got)
        log = p.debezium_log.read_text(errors="replace")
        check("Debezium log in a file", "PostgresConnector" in log or "postgres" in log.lower())
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
