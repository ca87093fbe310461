"""Fixtures: one tansu broker for the session; per test a fresh source topic, a gateway
process, a producer. Each is torn down (processes killed) when its test ends."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Gateway, Producer, Tansu  # noqa: E402

_topics = itertools.count()


@pytest.fixture(scope="session")
def tansu() -> Iterator[Tansu]:
    broker = Tansu()
    yield broker
    broker.stop()


@pytest.fixture
def topic(tansu: Tansu) -> Callable[[int], str]:
    """Makes a fresh source topic with `partitions` partitions."""

    def make(partitions: int = 3) -> str:
        name = f"cdc-py-{os.getpid()}-{next(_topics)}"
        tansu.create_topic(name, partitions)
        return name

    return make


@pytest.fixture
def gateway(tansu: Tansu) -> Iterator[Callable[..., Gateway]]:
    """Starts gateways over a topic; every one is killed at the end of the test."""
    started: list[Gateway] = []

    def start(topic: str, *extra: str) -> Gateway:
        gw = Gateway(tansu.brokers, topic, list(extra))
        started.append(gw)
        gw.start()
        return gw

    yield start
    for gw in started:
        gw.kill()


@pytest.fixture
def producer(tansu: Tansu) -> Iterator[Producer]:
    p = tansu.producer()
    yield p
    p.close()
