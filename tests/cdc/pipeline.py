"""A real CDC pipeline for tests: Postgres -> real Debezium (relay.py) -> tansu (Kafka protocol).

Every part runs on loopback, on free ports, in a throwaway temp dir, and stops by itself:
- Postgres: initdb + pg_ctl as the `postgres` user (initdb refuses root), wal_level=logical,
  trust auth on 127.0.0.1. A detached watchdog stops the cluster (and removes its dir) when the
  process that started it exits or after `max_seconds`.
- tansu: `tansu broker --storage-engine memory://tansu/` (as tests/e2e/support.rs starts it);
  memory storage forgets everything when it stops. Runs under coreutils `timeout` and dies with
  its parent (PR_SET_PDEATHSIG).
- Debezium: `relay.py` in the venv from scripts/install-debezium.sh, log in <run dir>/debezium-*.log,
  file offset store in the run dir, so `restart_debezium()` re-sends what it had not committed.

Needs the venv's python (psycopg, confluent_kafka):
  PY=$(bash scripts/install-debezium.sh); $PY tests/cdc/capture_fixtures.py

    with Pipeline(tables=["public.orders"]) as p:
        p.run_sql(SCHEMA_SQL)
        p.start_debezium(schemas=True)
        p.run_sql("insert into orders ...")
        p.wait_carried()
        records = p.read_topic("shop.public.orders")
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("CDC_GATEWAY_CACHE", Path.home() / ".cache/cdc-gateway"))

MARKER_SQL = """
create table if not exists cdc_marker (id bigserial primary key, at timestamptz not null default now());
"""


# ---------------------------------------------------------------- process helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM when the thread that started it ends."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(cmd: list[str], log: Path, max_seconds: float, cwd: Path | None = None,
          env: dict | None = None) -> subprocess.Popen:
    """Starts `cmd` bounded in time (coreutils timeout, SIGKILL 10 s after SIGTERM) and tied to
    this process (it gets SIGTERM if we die; timeout forwards it)."""
    out = open(log, "ab")
    try:
        return subprocess.Popen(
            ["timeout", "-k", "10", str(int(max_seconds)), *cmd],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, preexec_fn=_die_with_parent,
        )
    finally:
        out.close()


def stop_process(proc: subprocess.Popen | None, grace: float = 30) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


# ---------------------------------------------------------------- installs

def postgres_bin() -> Path:
    out = subprocess.run(["bash", str(REPO / "scripts/install-postgres.sh")], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return Path(out)


def tansu_bin() -> Path:
    if os.environ.get("CDC_GATEWAY_TANSU"):
        return Path(os.environ["CDC_GATEWAY_TANSU"])
    path = CACHE / "tansu/bin/tansu"
    if not path.exists():
        raise RuntimeError("tansu is not installed: run scripts/install-tansu.sh")
    return path


def venv_python() -> str:
    path = CACHE / "debezium-venv/bin/python"
    if not path.exists():
        raise RuntimeError("Debezium is not installed: run scripts/install-debezium.sh")
    return str(path)


# ---------------------------------------------------------------- Postgres

class Postgres:
    """A throwaway cluster: `initdb` + `pg_ctl` as the postgres user, wal_level=logical.
    `root` is created owned by postgres; its parent must be searchable by postgres."""

    def __init__(self, root: Path, max_seconds: float = 1800):
        self.bin = postgres_bin()
        self.port = free_port()
        self.root = root
        self.data = root / "pgdata"
        self.log = root / "postgres.log"
        pg = pwd.getpwnam("postgres")
        root.mkdir(parents=True, exist_ok=True)
        os.chown(root, pg.pw_uid, pg.pw_gid)
        as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                     "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        opts = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={root}", "-c wal_level=logical",
            "-c max_replication_slots=10", "-c max_wal_senders=10", "-c fsync=off",
            "-c synchronous_commit=off", "-c full_page_writes=off", "-c shared_buffers=32MB",
        ])
        as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                     "-o", opts, "-w", "-t", "60", "start"])
        self.postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        # Stops the cluster when this process exits (or after max_seconds), even if we crash;
        # by its pid if pg_ctl cannot (its data dir removed).
        watchdog = (
            f'end=$(( $(date +%s) + {int(max_seconds)} )); '
            f'while kill -0 {os.getpid()} 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done; '
            f'runuser -u postgres -- {self.bin}/pg_ctl -D {self.data} stop -m fast -t 30 >/dev/null 2>&1 '
            f'|| kill -QUIT {self.postmaster} 2>/dev/null'
        )
        self.watchdog = subprocess.Popen(["sh", "-c", watchdog], start_new_session=True,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def connect(self, autocommit: bool = True):
        import psycopg

        return psycopg.connect(self.dsn, autocommit=autocommit)

    def stop(self):
        if self.data.exists():
            try:
                as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast",
                             "-t", "30"])
            except RuntimeError:
                try:
                    os.kill(self.postmaster, signal.SIGQUIT)  # immediate shutdown
                except ProcessLookupError:
                    pass
        if self.watchdog.poll() is None:
            self.watchdog.terminate()


# ---------------------------------------------------------------- tansu

class Tansu:
    """tansu with memory storage, as tests/e2e/support.rs starts it."""

    def __init__(self, root: Path, max_seconds: float = 1800):
        self.port = free_port()
        self.root = root
        self.max_seconds = max_seconds
        self.log = root / f"tansu-{self.port}.log"
        self.proc = None
        self.start()

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = spawn([str(tansu_bin()), "broker", "--storage-engine", "memory://tansu/",
                           "--listener-url", url, "--advertised-listener-url", url],
                          self.log, self.max_seconds)
        if not wait_for_port(self.port, 30):
            raise RuntimeError(f"tansu did not open port {self.port}:\n{tail(self.log)}")

    def stop(self):
        stop_process(self.proc, grace=10)

    def create_topics(self, names: list[str], partitions: int = 3):
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.brokers})
        futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names],
                                      operation_timeout=30, request_timeout=30)
        for name, f in futures.items():
            try:
                f.result(30)
            except KafkaException as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise

    def read_topic(self, topic: str, timeout: float = 30,
                   ends: dict[int, int] | None = None) -> list[dict]:
        """Every record now in `topic`, as read back from the broker: dicts with topic,
        partition, offset, key and value (bytes or None), ordered by partition then offset.

        `ends` (partition -> next offset, e.g. from the producer's acks) says where each
        partition ends. Without it the broker's high watermark is used, but tansu 0.6.0's
        (memory storage) lags: it reports the last batch's base offset + 1, not the last
        record's, so reading stops early; a reader then keeps polling until 2 s pass with
        nothing new."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.brokers, "group.id": "cdc-tests-reader",
                      "enable.auto.commit": False, "auto.offset.reset": "earliest",
                      "enable.partition.eof": True})
        try:
            md = c.list_topics(topic, timeout=timeout).topics[topic]
            if md.error is not None:
                raise RuntimeError(f"{topic}: {md.error}")
            parts = sorted(md.partitions)
            pending = {}
            for p in parts:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                end = ends.get(p, 0) if ends is not None else high
                if end > low:
                    pending[p] = end
            out: list[dict] = []
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            deadline = time.monotonic() + timeout
            quiet_until = time.monotonic() + 2
            while time.monotonic() < deadline:
                if not pending and (ends is not None or time.monotonic() > quiet_until):
                    break
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.error() is not None:
                    if m.error().code() == -191:  # _PARTITION_EOF
                        continue
                    raise RuntimeError(str(m.error()))
                quiet_until = time.monotonic() + 2
                out.append({"topic": m.topic(), "partition": m.partition(),
                            "offset": m.offset(), "key": m.key(), "value": m.value()})
                if m.offset() + 1 >= pending.get(m.partition(), 1 << 62):
                    pending.pop(m.partition(), None)
            if pending:
                raise RuntimeError(f"{topic}: did not read to the end of {pending}")
            out.sort(key=lambda r: (r["partition"], r["offset"]))
            return out
        finally:
            c.close()


# ---------------------------------------------------------------- the pipeline

class Pipeline:
    """Postgres + tansu + Debezium relay in one temp dir. Use as a context manager."""

    def __init__(self, tables: list[str], prefix: str = "shop", partitions: int = 3,
                 max_seconds: float = 1800, keep: bool = False):
        self.tables = tables
        self.prefix = prefix
        self.partitions = partitions
        self.max_seconds = max_seconds
        self.keep = keep or bool(os.environ.get("CDC_KEEP"))
        self.root = Path(tempfile.mkdtemp(prefix="cdc-pipeline-"))
        os.chmod(self.root, 0o755)
        self.postgres = self.tansu = self.relay = None
        self.relay_args: list[str] = []
        self.relay_runs = 0
        self.progress = self.root / "progress.json"
        self.offsets = self.root / "offsets.dat"
        self.topics = [f"{prefix}.{t}" for t in tables]
        try:
            self.postgres = Postgres(self.root / "pg", max_seconds)
            self.tansu = Tansu(self.root, max_seconds)
            self.tansu.create_topics(self.topics, partitions)
            self.run_sql(MARKER_SQL)
        except BaseException:
            self.close()
            raise

    # -- context
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.stop_debezium()
        if self.tansu is not None:
            self.tansu.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            print(f"kept {self.root}", file=sys.stderr)

    # -- SQL
    def run_sql(self, sql: str, params=None):
        """Runs `sql` (one or more statements; a transaction of its own unless it says
        BEGIN/COMMIT itself) and returns the last statement's rows, if any."""
        with self.postgres.connect() as conn:
            cur = conn.execute(sql, params) if params is not None else conn.execute(sql)
            try:
                return cur.fetchall()
            except Exception:
                return None

    # -- Debezium
    @property
    def debezium_log(self) -> Path:
        return self.root / f"debezium-{self.relay_runs}.log"

    def start_debezium(self, schemas: bool = True, extra: list[str] | None = None,
                       timeout: float = 180, offset_flush_ms: int = 1000):
        """Starts relay.py and waits until Debezium streams (a marker inserted now arrives).
        Offsets are written to the file store every `offset_flush_ms` (and when it stops)."""
        self.relay_args = [
            "--pg-port", str(self.postgres.port), "--brokers", self.tansu.brokers,
            "--prefix", self.prefix, "--tables", ",".join(self.tables),
            "--schemas" if schemas else "--no-schemas",
            "--offsets", str(self.offsets), "--progress", str(self.progress),
            "--offset-flush-ms", str(offset_flush_ms), "--max-seconds", str(int(self.max_seconds)),
            *(extra or []),
        ]
        self._spawn_relay()
        self.wait_carried(timeout=timeout)

    def _spawn_relay(self):
        self.relay_runs += 1
        self.relay = spawn([venv_python(), str(HERE / "relay.py"), *self.relay_args],
                           self.debezium_log, self.max_seconds + 30, cwd=self.root)

    def stop_debezium(self, grace: float = 40, kill: bool = False) -> int | None:
        """Stops the relay: SIGTERM (the engine closes and commits the offsets of every batch
        it flushed), or with `kill` SIGKILL to its whole process group, like a crash (offsets
        stay as last written, up to offset.flush.interval.ms old)."""
        if kill and self.relay is not None and self.relay.poll() is None:
            os.killpg(self.relay.pid, signal.SIGKILL)  # `timeout` leads the group
            self.relay.wait(10)
        code = stop_process(self.relay, grace)
        self.relay = None
        return code

    def restart_debezium(self, timeout: float = 180, kill: bool = False,
                         offset_flush_ms: int | None = None):
        """Stops Debezium and starts it again from the file offset store: what it had not
        committed (everything after the last offset written, with `kill`) is sent again.
        `offset_flush_ms` changes how often the new run writes its offsets."""
        self.stop_debezium(kill=kill)
        if offset_flush_ms is not None:
            at = self.relay_args.index("--offset-flush-ms")
            self.relay_args[at + 1] = str(offset_flush_ms)
        self._spawn_relay()
        self.wait_carried(timeout=timeout)

    def carried_marker(self) -> int:
        try:
            return int(json.loads(self.progress.read_text()).get("marker", 0))
        except (OSError, ValueError):
            return 0

    def wait_carried(self, timeout: float = 60) -> int:
        """Waits until everything committed so far is in the broker: inserts a marker row (a
        transaction of its own, after the caller's) and waits for the relay to say it flushed
        the batch holding it. Markers go in again every few seconds while Debezium is still
        starting (a marker committed before the slot existed is only seen by the snapshot)."""
        deadline = time.monotonic() + timeout
        marker = 0
        last_insert = 0.0
        while True:
            if self.relay is None or self.relay.poll() is not None:
                raise RuntimeError(f"Debezium relay is not running:\n{tail(self.debezium_log)}")
            now = time.monotonic()
            if now - last_insert > 5:
                marker = self.run_sql("insert into cdc_marker default values returning id")[0][0]
                last_insert = now
            if self.carried_marker() >= marker:
                return marker
            if now > deadline:
                raise TimeoutError(f"marker {marker} not carried in {timeout}s "
                                   f"(relay at {self.carried_marker()}):\n{tail(self.debezium_log)}")
            time.sleep(0.1)

    def run_and_carry(self, sql: str, timeout: float = 60):
        rows = self.run_sql(sql)
        self.wait_carried(timeout)
        return rows

    # -- reading back
    def relay_ends(self, topic: str) -> dict[int, int]:
        """partition -> next offset, from the broker's acks to the relay (every run)."""
        try:
            ends = json.loads(self.progress.read_text()).get("ends", {})
        except (OSError, ValueError):
            ends = {}
        out = {}
        for tp, end in ends.items():
            t, _, p = tp.rpartition(":")
            if t == topic:
                out[int(p)] = int(end)
        return out

    def read_topic(self, topic: str, timeout: float = 300) -> list[dict]:
        """Every record the relay has put in `topic` (up to the ends its acks reported);
        a table of 100,000 rows with schemas is about 400 MB to read back."""
        return self.tansu.read_topic(topic, timeout=timeout, ends=self.relay_ends(topic))

    def read_all(self) -> list[dict]:
        out = []
        for t in self.topics:
            out.extend(self.read_topic(t))
        return out
