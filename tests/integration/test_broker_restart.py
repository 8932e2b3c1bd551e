"""Broker restart while the worker runs: ``kill -9`` the broker, start it again on the same port.

The bundled broker keeps everything in memory, so it comes back empty: no topics, no consumer group,
no committed offsets. Without any operator action the worker must reconnect, recreate its topics
(``KafkaBatchSource._ensure_topics_soon``) and store every record produced after the restart, exactly
once. The traps: the consumer's fetch positions and the recovery keys of the old topics point past
the start of the new, empty topics (a worker that kept them would skip the first new records); the
old rows are keyed by the old topics' ids, the new records by the new ids (offsets start at 0 again
and must not be mistaken for records already stored).
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
from confluent_kafka.admin import AdminClient

from pipeline.generate import Traffic
from pipeline.settings import Settings
from pipeline.topics import ensure_topics
from tests.support.brokers import BrokerProcess
from tests.support.kafka_io import RecordingProducer, committed
from tests.support.workers import WorkerProcess, wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration

PARTITIONS = 4
SAMPLES = 200


def produce(bootstrap: str, topic: str, traffic: Traffic, count: int) -> tuple[RecordingProducer, list[str]]:
    producer, ids, now_ms = RecordingProducer(bootstrap), [], int(time.time() * 1000)
    for n in range(count):
        r = traffic.request_log(now_ms)
        ids.append(r["request_id"])
        producer.send(topic, msgspec.json.encode(r), str(r["sdk_app_id"]).encode(), n)
    producer.flush()
    return producer, ids


def partitions_of(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Partition count per existing topic (missing topics left out)."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    return {t: len(md.topics[t].partitions) for t in topics if t in md.topics and md.topics[t].error is None}


def test_worker_survives_a_broker_restart_and_recreates_its_topics(pipeline_env: dict[str, str],
                                                                   own_broker: BrokerProcess, tmp_path: Path) -> None:
    env = {**pipeline_env, "IMTEL_KAFKA_BOOTSTRAP": own_broker.bootstrap}
    s = Settings.from_env(env)
    ensure_topics(s)
    logs, bootstrap = s.topic_request_logs, own_broker.bootstrap
    traffic = Traffic(apps=6, seed=41)
    worker = WorkerProcess("worker", env, tmp_path).start()
    try:
        wait_for(lambda: worker.assigned() == 2 * PARTITIONS, 60, "assignment", workers=[worker])
        _, before = produce(bootstrap, logs, traffic, 3_000)
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= len(before), 60,
                 "the records produced before the restart stored")

        own_broker.kill()
        time.sleep(2.0)  # the worker notices: connections refused, requests time out
        own_broker.start()
        topics = [s.topic_request_logs, s.topic_monitoring_samples, s.topic_dead_letters, s.topic_applications]
        wait_for(lambda: set(partitions_of(bootstrap, topics)) >= set(topics[:3]), 60,
                 "the worker to recreate its topics on the empty broker")
        assert partitions_of(bootstrap, [logs])[logs] == PARTITIONS
        assert worker.alive(), worker.log_text()[-3000:]

        producer, after = produce(bootstrap, logs, traffic, 2_000)
        sample_producer = RecordingProducer(bootstrap)
        for n in range(SAMPLES):
            sample = traffic.monitoring_sample(int(time.time() * 1000))
            sample_producer.send(s.topic_monitoring_samples, msgspec.json.encode(sample), b"1", n)
        sample_producer.flush()
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= len(before) + len(after),
                 90, "the records produced after the restart stored")
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="monitoring_samples") >= SAMPLES, 60,
                 "the monitoring samples produced after the restart stored (their topic recreated and consumed)")
        ends = {(logs, p): o for p, o in producer.end_offsets(logs).items()}
        wait_for(lambda: committed(bootstrap, env["IMTEL_CONSUMER_GROUP"], {logs: PARTITIONS}) == ends, 30,
                 "the new topics' offsets committed by the worker's new group")
        time.sleep(1.0)  # a record written twice would be counted by now
        written = worker.metric("imtel_rows_written_total", table="request_logs")
    finally:
        code = worker.stop(60)
    log = worker.log_text()
    assert code == 0, log[-3000:]
    assert written == len(before) + len(after)
    assert "recreated" in log, "the topics were not recreated by the worker"

    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    ids, counts, topic_ids = run_sql(store, [
        "SELECT request_id FROM imtel.request_logs", "SELECT count(), uniqExact(request_id) FROM imtel.request_logs",
        "SELECT uniqExact(src_topic_id) FROM imtel.request_logs"], migrate=False)
    assert counts == [[len(before) + len(after)] * 2], "records lost or doubled across the broker restart"
    assert {r[0] for r in ids} == set(before) | set(after)
    assert topic_ids == [[2]], "the recreated topic must be a new identity (its offsets start at 0 again)"
