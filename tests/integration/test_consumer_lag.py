"""The worker's lag gauge (``imtel_consumer_lag``) on a real Kafka broker.

``KafkaBatchSource.update_lag`` reads each partition's log end with an admin client's ListOffsets
and the consumer's own position. The lag must stay true while consumption is paused (a failing
ClickHouse pauses it): that is when the backlog grows and the lag alert has to see it. The consumer's
cached watermarks would not (they only move with fetches), which is why the source does not use them
even though they would cost no round trip.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.config.settings import Settings
from pipeline.monitoring.metrics import Metrics
from pipeline.worker.consumer import KafkaBatchSource

pytestmark = pytest.mark.integration


def produce(broker: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": broker})
    for partition, n in per_partition.items():
        for i in range(n):
            producer.produce(topic, b"{}", key=str(i).encode(), partition=partition)
    assert producer.flush(30) == 0


def lag_of(metrics: Metrics, topic: str, partition: int) -> float | None:
    return metrics.registry.get_sample_value("imtel_consumer_lag", {"topic": topic, "partition": str(partition)})


def test_lag_is_log_end_less_position_and_grows_while_paused(broker: str) -> None:
    topic = f"lag-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    produce(broker, topic, {0: 100, 1: 40})

    metrics = Metrics()
    source = KafkaBatchSource(Settings.from_env({"IMTEL_KAFKA_BOOTSTRAP": broker}), None, metrics, None)  # type: ignore[arg-type]
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"g-{topic}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": False})
    try:
        parts = [TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)]
        consumer.assign(parts)
        source.consumer, source.assignment = consumer, [TopicPartition(topic, p.partition) for p in parts]

        # nothing consumed yet: no position, no lag reported (not a made-up 0)
        source.update_lag()
        assert lag_of(metrics, topic, 0) is None and lag_of(metrics, topic, 1) is None

        consumed = {0: 0, 1: 0}
        deadline = time.monotonic() + 60
        while consumed[0] < 30 or consumed[1] < 10:  # a poll may bring more than asked of a partition
            assert time.monotonic() < deadline, f"only {consumed} records consumed in 60 s"
            for m in consumer.consume(10, 5):
                partition = m.partition()
                if m.error() is None and partition is not None:
                    consumed[partition] += 1
        source.update_lag()
        assert lag_of(metrics, topic, 0) == 100 - consumed[0]
        assert lag_of(metrics, topic, 1) == 40 - consumed[1]

        # paused (as while ClickHouse fails): no fetch moves any cached watermark, the backlog grows
        consumer.pause(parts)
        produce(broker, topic, {1: 25})
        source.update_lag()
        assert lag_of(metrics, topic, 0) == 100 - consumed[0]
        assert lag_of(metrics, topic, 1) == 65 - consumed[1]
    finally:
        consumer.close()
