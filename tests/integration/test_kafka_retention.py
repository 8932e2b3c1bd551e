"""Retention and compaction on a real Kafka broker: what the topics' configs promise really happens.

Kafka deletes whole segments once their newest record is older than ``retention.ms``, and only segments
that are no longer active, at the broker's retention check. The topics here are created by the pipeline
itself (``ensure_topics``, what ``imtel topics`` and the worker run), then only their timing is
shortened for the test (``segment.ms``, ``retention.ms``), as an operator would with ``kafka-configs``.
The audit's reading of what is actually stored (the oldest record per topic) is checked on the same
broker: it sees a record past the policy even when every config is right.
"""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from pipeline.config.policy import DAY_MS, load_policy
from pipeline.config.settings import Settings
from pipeline.ops import audit, registry
from pipeline.schema.topics import ensure_topics, oldest_record_ages, topic_specs
from tests.support.kafka_io import alter_topic
from tests.support.workers import wait_for

pytestmark = pytest.mark.integration


def settings_for(broker: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env({"IMTEL_KAFKA_BOOTSTRAP": broker, "IMTEL_TOPIC_REQUEST_LOGS": f"logs-{tag}",
                              "IMTEL_TOPIC_MONITORING_SAMPLES": f"samples-{tag}",
                              "IMTEL_TOPIC_DEAD_LETTERS": f"dlq-{tag}", "IMTEL_TOPIC_APPLICATIONS": f"apps-{tag}",
                              "IMTEL_TOPIC_PARTITIONS": "1"})


def produce(broker: str, topic: str, records: list[tuple[bytes, bytes]], timestamp_ms: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": broker, "acks": "all", "linger.ms": 0})
    for key, value in records:
        producer.produce(topic, value, key, timestamp=timestamp_ms or 0)
    assert producer.flush(15) == 0


def read_all(broker: str, topic: str) -> list[tuple[int, bytes, bytes]]:
    """(offset, key, value) of every record the topic's only partition still stores."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"read-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out, deadline = [], time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                break  # end of partition
            out.append((msg.offset(), msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def low_watermark(broker: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "watermarks"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[0])
    finally:
        consumer.close()


def test_a_topics_retention_really_deletes_old_segments(broker: str) -> None:
    """A real Kafka rolls an expired active segment at its retention check and deletes it: the
    partition's start moves past every record, which no config read could show."""
    s = settings_for(broker)
    ensure_topics(s)
    logs = s.topic_request_logs
    alter_topic(broker, logs, retention_ms="3000", segment_ms="1000")
    produce(broker, logs, [(b"1", b'{"n": %d}' % i) for i in range(50)])
    assert low_watermark(broker, logs) == 0 and len(read_all(broker, logs)) == 50
    assert 0 <= (oldest_record_ages(s, [logs])[logs] or -1) < 60
    wait_for(lambda: low_watermark(broker, logs) == 50, 60, "the broker to delete the expired segment")
    assert read_all(broker, logs) == [] and oldest_record_ages(s, [logs])[logs] is None


def test_the_audit_reads_what_a_topic_stores_not_only_its_configs(broker: str) -> None:
    """Right configs, yet a record stamped 8 days ago is stored (its segment is still active, so the
    broker cannot delete it yet): the audit reports that topic as a violation, naming the age."""
    s = settings_for(broker)
    ensure_topics(s)
    logs = s.topic_request_logs
    produce(broker, logs, [(b"1", b"{}")], timestamp_ms=int(time.time() * 1000) - 8 * DAY_MS)
    specs, policy = topic_specs(s), load_policy()
    report = audit.evaluate({"database": "imtel", "tables": [], "oldest": {}}, audit.topic_facts(s, specs), specs,
                            policy)
    checks = {c.name: c for c in report.checks if c.kind == "topic"}
    assert checks[logs].status == audit.VIOLATION and "oldest record is 8d old" in checks[logs].detail
    assert all(checks[t].status == audit.OK for t in (s.topic_monitoring_samples, s.topic_dead_letters,
                                                      s.topic_applications)), report.checks


def test_compaction_of_the_registry_topic_keeps_the_latest_state_per_app(broker: str) -> None:
    s = settings_for(broker)
    ensure_topics(s)
    apps = s.topic_applications
    alter_topic(broker, apps, segment_ms="500", min_cleanable_dirty_ratio="0.01", min_compaction_lag_ms="0")
    history = {1400000001: ["Acme", "Acme Chat", "Acme Chat Pro"], 1400000002: ["Beta", "Beta Social"]}
    for version in range(3):
        produce(broker, apps, [(str(app).encode(), msgspec.json.encode(registry.make_update(
            sdk_app_id=app, name=names[version], status="active"))) for app, names in history.items()
            if version < len(names)])
        time.sleep(0.6)  # each version in a segment of its own
    produce(broker, apps, [(b"0", b"roll")])  # rolls the last versions' segment: only the active one is kept whole

    def compacted() -> list[tuple[int, bytes, bytes]] | None:
        stored = [r for r in read_all(broker, apps) if r[1] != b"0"]
        return stored if len(stored) == len(history) else None

    stored = wait_for(compacted, 60, "the log cleaner to compact the registry topic")
    latest = {int(k): msgspec.json.decode(v)["name"] for _, k, v in stored}
    assert latest == {app: names[-1] for app, names in history.items()}
