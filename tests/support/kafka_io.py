"""Kafka I/O for fault tests: a producer that remembers where Kafka put each message, a topic reader.

Tests compare the store with what Kafka *acknowledged* (topic, partition, offset per message), not with
what they meant to send, and read topics by direct assignment (no consumer group: on the bundled broker
a group join waits a whole rebalance timeout, and a reader must never disturb the pipeline's group).
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from pipeline.config.kafka import produce_blocking


def alter_topic(bootstrap: str, topic: str, **configs: str) -> None:
    """Set topic configs by hand (``retention_ms="1000"`` sets ``retention.ms``), as an operator would
    with ``kafka-configs --alter --add-config``: an incremental alter, other configs untouched."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the answers are in
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(10)


@dataclass(frozen=True)
class Placed:
    """Where Kafka stored one produced message."""

    topic: str
    partition: int
    offset: int


class RecordingProducer:
    """Produces messages tagged by the caller and records where each acknowledged message landed."""

    def __init__(self, bootstrap: str, **conf: Any) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "acks": "all",
                                  "message.max.bytes": 4_000_000, **conf})
        self.placed: dict[Hashable, Placed] = {}
        self.errors: list[str] = []

    def send(self, topic: str, value: bytes | None, key: bytes | None, tag: Hashable) -> None:
        """Queue one message; ``tag`` names it in ``placed`` once Kafka acknowledged it."""
        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                self.errors.append(f"{tag!r}: {err.str()}")
            else:
                self.placed[tag] = Placed(msg.topic(), msg.partition(), msg.offset())

        produce_blocking(self.producer, topic, value, key, on_delivery=delivered)
        self.producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every acknowledgement; fail if Kafka refused or lost any message."""
        remaining = self.producer.flush(timeout)
        assert remaining == 0, f"{remaining} messages not acknowledged within {timeout:.0f}s"
        assert not self.errors, f"produce failed: {self.errors[:3]}"

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset after the last acknowledged message of ``topic`` (what a consumer
        group that consumed everything has committed). Exact, unlike the bundled broker's watermarks."""
        out: dict[int, int] = {}
        for p in self.placed.values():
            if p.topic == topic:
                out[p.partition] = max(out.get(p.partition, 0), p.offset + 1)
        return out


@dataclass(frozen=True)
class Received:
    """One message read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def read_topic(bootstrap: str, topic: str, at_least: int, timeout: float = 60.0,
               settle: float = 1.5) -> list[Received]:
    """Every message of ``topic`` from the beginning: reads until at least ``at_least`` arrived and
    then ``settle`` more seconds without a new one (so a duplicate written late is seen too)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "imtel-test-reader",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[Received] = []
        deadline, last_new = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(500, 0.2) if m.error() is None]
            if batch:
                last_new = time.monotonic()
                out += [Received(m.partition() or 0, m.offset() or 0, m.key(), m.value(), _headers(m)) for m in batch]
            elif len(out) >= at_least and time.monotonic() - last_new >= settle:
                return out
        raise AssertionError(f"{topic}: read {len(out)} messages in {timeout:.0f}s, expected at least {at_least}")
    finally:
        consumer.close()


def _headers(msg: Any) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, value in msg.headers() or []:
        out[name] = value.encode() if isinstance(value, str) else (value or b"")
    return out


def committed(bootstrap: str, group: str, topics: dict[str, int]) -> dict[tuple[str, int], int]:
    """The group's committed offsets (OffsetFetch only: this client never joins the group);
    ``topics`` maps topic -> partition count. Partitions without a commit are left out."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10) if tp.offset >= 0}
    finally:
        consumer.close()


@dataclass
class FakeMessage:
    """The part of a Kafka message the processor reads."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value
