"""Broker restart while the worker runs: ``kill -9`` the real Kafka broker mid-stream and start it again
on the same port with its log directory kept, as a broker pod comes back on its persistent volume.

Records acknowledged (``acks=all``) before the kill are on disk; some are not yet consumed when the broker
dies, the worker's offsets are committed up to somewhere in between, and the worker reconnects on its
own. Everything produced before, during the outage (the producer retries) and after must be stored
exactly once: no loss from the kill, no doubles from re-reading what was stored but not committed, the
same topic identity throughout (nothing recreated).
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
from confluent_kafka.admin import AdminClient

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.schema.topics import ensure_topics
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


def test_nothing_is_lost_or_doubled_across_a_real_broker_restart(pipeline_env: dict[str, str],
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
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= 1_000, 60,
                 "the first records stored")
        _, mid = produce(bootstrap, logs, traffic, 3_000)  # acknowledged; the worker is still reading them
        own_broker.kill()
        time.sleep(3.0)  # the worker notices: connections refused, requests time out
        own_broker.start()
        assert partitions_of(bootstrap, [logs])[logs] == PARTITIONS
        assert worker.alive(), worker.log_text()[-3000:]

        producer, after = produce(bootstrap, logs, traffic, 2_000)
        sample_producer = RecordingProducer(bootstrap)
        for n in range(SAMPLES):
            sample = traffic.monitoring_sample(int(time.time() * 1000))
            sample_producer.send(s.topic_monitoring_samples, msgspec.json.encode(sample), b"1", n)
        sample_producer.flush()
        total = len(before) + len(mid) + len(after)
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= total, 120,
                 "every record produced before, around and after the restart stored", workers=[worker])
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="monitoring_samples") >= SAMPLES, 60,
                 "the monitoring samples produced after the restart stored")
        ends = {(logs, p): o for p, o in producer.end_offsets(logs).items()}
        wait_for(lambda: committed(bootstrap, env["IMTEL_CONSUMER_GROUP"], {logs: PARTITIONS}) == ends, 30,
                 "the offsets committed up to the end")
    finally:
        code = worker.stop(60)
    log = worker.log_text()
    assert code == 0, log[-3000:]
    assert "recreated" not in log, "a real broker keeps its topics: nothing may be recreated"

    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    ids, counts, topic_ids = run_sql(store, [
        "SELECT request_id FROM imtel.request_logs", "SELECT count(), uniqExact(request_id) FROM imtel.request_logs",
        "SELECT uniqExact(src_topic_id) FROM imtel.request_logs"], migrate=False)
    produced = set(before) | set(mid) | set(after)
    stored = {r[0] for r in ids}
    figures = {"produced": len(produced), "stored": counts[0][0], "lost": len(produced - stored),
               "doubled": counts[0][0] - counts[0][1]}
    print(f"\n[broker-restart figures] {figures}")
    assert counts == [[len(produced)] * 2], f"records lost or doubled across the broker restart: {figures}"
    assert stored == produced
    assert topic_ids == [[1]], "the topic kept its identity across the restart"
