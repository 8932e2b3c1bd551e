"""The benchmark's Kafka side: a dedicated bundled broker, its topics, producing, and progress probes.

Topics are created with explicit ``retention.ms``/``retention.bytes``/``cleanup.policy``: the bundled
broker's DescribeConfigs answers only with configs given at creation, and Quix Streams
reads ``retention.ms`` from that answer (it raises ``KeyError: 'retention.ms'`` on an empty one).

End offsets come from the producer's delivery reports, not from ListOffsets: the bundled broker's
high watermark is the base offset of the last batch + 1, too low for batched produce.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.config.kafka import produce_blocking
from pipeline.config.settings import Settings
from pipeline.dev.bench.workload import Message
from pipeline.schema.topics import topic_specs

PARTITIONS = 4


def topic_config() -> dict[str, str]:
    """The configs the pipeline gives its request-log topic (``pipeline.schema.topics``), retention.bytes explicit."""
    spec = next(s for s in topic_specs(Settings.from_env({})) if s.logical == "request_logs")
    return {"retention.bytes": "-1", **spec.config}


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = PARTITIONS) -> None:
    """Create fresh topics (``partitions`` each, explicit configs); fails if one already exists."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1, config=topic_config()) for n in names],
                                  operation_timeout=15)
    for fut in futures.values():
        fut.result()


@dataclass
class Produced:
    """What went into one topic: messages, records and the end offset of every partition."""

    topic: str
    messages: int = 0
    records: int = 0
    end_offsets: dict[int, int] = field(default_factory=dict)

    def note(self, partition: int, offset: int, records: int) -> None:
        self.messages += 1
        self.records += records
        self.end_offsets[partition] = max(self.end_offsets.get(partition, 0), offset + 1)


class TopicWriter:
    """Produces messages to several topics, tracking acknowledged offsets per topic."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                                  "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1_048_576,
                                  "message.max.bytes": 8_000_000, "compression.type": "none"})
        self.produced: dict[str, Produced] = {}
        self.errors: list[str] = []

    def send(self, topic: str, msg: Message) -> None:
        produced = self.produced.setdefault(topic, Produced(topic))

        def acked(err: Any, m: Any) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                produced.note(m.partition(), m.offset(), msg.records)

        produce_blocking(self.producer, topic, msg.value, msg.key, on_delivery=acked)
        self.producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every delivery report; raises if anything was not acknowledged."""
        left = self.producer.flush(timeout)
        if left or self.errors:
            raise RuntimeError(f"producing failed: {left} unacknowledged, errors: {self.errors[:3]}")


class CommitProbe:
    """Polls a group's committed offsets against the end offsets (one reusable consumer, no join)."""

    def __init__(self, bootstrap: str, group: str, topic: str, end_offsets: dict[int, int]) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self.topic, self.end = topic, dict(end_offsets)

    def offsets(self) -> dict[int, int]:
        try:
            tps = self.consumer.committed([TopicPartition(self.topic, p) for p in self.end], timeout=5)
        except KafkaException:
            return {}
        return {tp.partition: tp.offset for tp in tps}

    def done(self) -> bool:
        """True once every partition's committed offset reached its end offset."""
        got = self.offsets()
        return bool(got) and all(got.get(p, -1) >= end for p, end in self.end.items())

    def close(self) -> None:
        self.consumer.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
