"""Real parts for the end-to-end tests, as clients/js/test/support.mjs has them: a tansu
broker on a free loopback port, the gateway binary as a child process (stopped with SIGTERM
or SIGKILL, restarted on the same port), a confluent-kafka producer and an independent
reader of the broker (no code of the client's or the gateway's). Every process is bounded in
time, dies with the test process, and is killed when its fixture ends.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable

LOGS = Path(tempfile.gettempdir()) / "cdc-gateway-python-tests"
LOGS.mkdir(parents=True, exist_ok=True)
#: No child outlives this, whatever happens to the test process.
MAX_SECONDS = 600


def gateway_binary() -> str:
    path = os.environ.get("CDC_GATEWAY_BIN") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/cdc-gateway/target")) / "debug/cdc-gateway"
    )
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no gateway binary at {path}: set CDC_GATEWAY_BIN")
    return path


def tansu_binary() -> str:
    path = os.environ.get("CDC_GATEWAY_TANSU") or str(Path.home() / ".cache/cdc-gateway/tansu/bin/tansu")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no tansu at {path}: run scripts/install-tansu.sh (or set CDC_GATEWAY_TANSU)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    """Starts `args` with its output in `log`; it dies with this process and within
    MAX_SECONDS. The process is the program itself (no wrapper), so a signal reaches it."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 15) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Waits until `predicate()` holds, or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(0.02)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- tansu and Kafka clients


class Tansu:
    """tansu with in-memory storage, as the Rust and JS tests start it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.log = LOGS / f"tansu-{self.port}.log"
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = spawn(
            [tansu_binary(), "broker", "--storage-engine", "memory://tansu/",
             "--listener-url", url, "--advertised-listener-url", url],
            self.log,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not start:\n{tail(self.log)}") from None
                time.sleep(0.05)

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc, signal.SIGKILL)

    def create_topic(self, name: str, partitions: int) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.brokers})
        futures = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30, request_timeout=30)
        for future in futures.values():
            future.result(30)

    def producer(self) -> Producer:
        return Producer(self.brokers)

    def read_topic(self, topic: str, ends: dict[int, int], timeout: float = 30) -> set[tuple[str, int, int]]:
        """Every record of `topic` read back from the broker, as (topic, partition, offset).

        `ends` (partition -> next offset) says where to stop: tansu 0.6.0's high watermark
        (memory storage) lags the last record, so it cannot be trusted to end a read.
        """
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({
            "bootstrap.servers": self.brokers, "group.id": f"reader-{topic}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
        })
        try:
            md = consumer.list_topics(topic, timeout=timeout).topics[topic]
            parts = sorted(md.partitions)
            pending = {p: ends[p] for p in parts if ends.get(p, 0) > 0}
            consumer.assign([TopicPartition(topic, p, 0) for p in parts])
            out: set[tuple[str, int, int]] = set()
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic}: could not read to the end of {pending}")
                m = consumer.poll(0.2)
                if m is None or m.error() is not None:
                    continue
                out.add((m.topic(), m.partition(), m.offset()))
                if m.offset() + 1 >= pending.get(m.partition(), 1 << 62):
                    pending.pop(m.partition(), None)
            return out
        finally:
            consumer.close()


class Producer:
    """Produces JSON records; `send` returns the (partition, offset) the broker gave."""

    def __init__(self, brokers: str):
        from confluent_kafka import Producer as KafkaProducer

        self._producer = KafkaProducer({"bootstrap.servers": brokers, "acks": "all", "linger.ms": 0})

    def send(self, topic: str, key: str, value: dict[str, Any]) -> tuple[int, int]:
        result: list[Any] = []
        self._producer.produce(
            topic, key=key.encode(), value=json.dumps(value).encode(),
            on_delivery=lambda err, msg: result.append(err or (msg.partition(), msg.offset())),
        )
        deadline = time.monotonic() + 30
        while not result:
            if time.monotonic() > deadline:
                raise AssertionError("the broker did not acknowledge a record within 30 s")
            self._producer.poll(0.05)
        if not isinstance(result[0], tuple):
            raise AssertionError(f"produce failed: {result[0]}")
        return result[0]

    async def asend(self, topic: str, key: str, value: dict[str, Any]) -> tuple[int, int]:
        """`send` on a thread, so the event loop (and the client on it) keeps running."""
        return await asyncio.to_thread(self.send, topic, key, value)

    def close(self) -> None:
        self._producer.flush(10)


# ---------------------------------------------------------------- the gateway


class Gateway:
    """The gateway binary on a fixed port, restartable there with the same group id, so a
    restart starts from the offsets it committed (and warms its history from Kafka)."""

    def __init__(self, brokers: str, topic: str, extra: list[str] | None = None):
        self.port = free_port()
        self.topic = topic
        self.args = [
            gateway_binary(), "--brokers", brokers, "--source-topics", topic,
            "--group-id", f"gw-py-{self.port}", "--listen", f"127.0.0.1:{self.port}",
            "--auto-offset-reset", "earliest", "--log-level", "info,cdc_gateway=debug",
            *(extra or []),
        ]
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return LOGS / f"gateway-{self.port}-{self.runs}.log"

    def start(self, timeout: float = 60) -> None:
        """Starts the process (again) and waits until /readyz answers 200."""
        self.runs += 1
        self.proc = spawn(self.args, self.log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited at startup:\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway was not ready within {timeout}s:\n{tail(self.log)}")
            time.sleep(0.05)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    def dispatched(self) -> int:
        """Records the gateway has dispatched (its metrics): a snapshot taken after this
        reaches `n` holds them."""
        with urllib.request.urlopen(f"{self.http_url}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("cdc_gateway_events_consumed_total{") and 'result="dispatched"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    async def caught_up(self, records: int, timeout: float = 30) -> None:
        """Waits until the gateway has dispatched `records` records."""
        deadline = time.monotonic() + timeout
        while (n := await asyncio.to_thread(self.dispatched)) < records:
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway dispatched {n} of {records} records in {timeout}s")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no drain, no last commit, sockets cut."""
        stop(self.proc, signal.SIGKILL)
        self.proc = None

    def terminate(self) -> int | None:
        code = stop(self.proc, signal.SIGTERM)
        self.proc = None
        return code


# ---------------------------------------------------------------- records and tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(secret: str, claims: dict[str, Any]) -> str:
    """An HS256 JWT, signed here (no JWT library)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


def order(row_id: int, n: int, operation: str = "update", **fields: Any) -> dict[str, Any]:
    """A simple-envelope change of one order."""
    data = None if operation == "delete" else {
        "id": row_id, "n": n, "status": "paid", "amount": n % 500, "tenant": "acme", **fields,
    }
    before = {"id": row_id} if operation == "delete" else None
    return {
        "entity_type": "order", "entity_id": str(row_id), "operation": operation,
        "data": data, "before": before, "timestamp": "2026-12-01T10:00:00Z",
    }
