"""Broker failover, as a Kafka cluster fails: three KRaft nodes on loopback (replication factor 3,
``min.insync.replicas`` 2, producers with ``acks=all`` and idempotence), a worker ingesting a steady
stream, and the leader of the busiest partition killed with SIGKILL mid-stream, then brought back.

What must hold: every record Kafka acknowledged is stored exactly once (by request id, so a producer
retry that doubled a record on the topic would show too), ingestion resumes once a new leader is
elected, and the old leader rejoins as a follower. The figures are printed for the closing note.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline.config.settings import Settings
from pipeline.dev.kafka_server import KafkaCluster
from pipeline.schema.topics import ensure_topics
from tests.support.workers import Stream, WorkerProcess, wait_for, worker_env

from .conftest import TEST_BROKER_GROUP_CONFIG, free_port, run_sql

pytestmark = pytest.mark.integration

PARTITIONS, RATE, RECORDS = 3, 300, 9_000


def test_killing_the_leader_of_a_busy_partition_loses_and_doubles_nothing(pipeline_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    cluster = KafkaCluster(3, tmp_path / "cluster", extra=TEST_BROKER_GROUP_CONFIG).start()
    try:
        env = worker_env({**pipeline_env, "IMTEL_KAFKA_BOOTSTRAP": cluster.bootstrap},
                         pipeline_env["IMTEL_CLICKHOUSE_DSN"], tmp_path, "w1", free_port(),
                         topic_partitions=str(PARTITIONS), topic_replication="3")
        s = Settings.from_env(env)
        ensure_topics(s)
        worker = WorkerProcess("w1", env, tmp_path).start()
        wait_for(lambda: worker.assigned() == 2 * PARTITIONS, 90, "assignment", workers=[worker])
        stream = Stream(cluster.bootstrap, s.topic_request_logs, rate=RATE, total=RECORDS, seed=5)
        stream.producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 20,
                                    "enable.idempotence": True})
        stream.start()
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 1_500, 60,
                 "steady ingestion", workers=[worker])
        victim = cluster.leader_of(s.topic_request_logs, 0)
        cluster.kill(victim)
        killed_at = time.monotonic()
        written = worker.metric("imtel_rows_written_total", table="request_logs")
        wait_for(lambda: cluster.leader_of(s.topic_request_logs, 0, timeout=5) != victim, 60, "a new leader")
        elected_s = time.monotonic() - killed_at
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > written + RATE, 60,
                 "ingestion resuming without the old leader", workers=[worker])
        resumed_s = time.monotonic() - killed_at
        time.sleep(3.0)
        cluster.start_node(victim)
        stream.join(120)
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= len(stream.delivered),
                 120, "every acknowledged record stored", workers=[worker])
        assert worker.stop(60) == 0, worker.log_text()[-3000:]
    finally:
        cluster.stop()

    (rows,) = run_sql(Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://")),
                      ["SELECT request_id FROM imtel.request_logs"], migrate=False)
    count, ids = len(rows), {str(r[0]) for r in rows}
    figures = {"produced": len(stream.sent), "acknowledged": len(stream.delivered), "failed": stream.failed,
               "stored": count, "lost": len(set(stream.delivered) - ids), "doubled": count - len(ids),
               "killed_node": victim, "new_leader_after_s": round(elected_s, 1),
               "ingestion_resumed_after_s": round(resumed_s, 1)}
    (tmp_path / "figures-failover.json").write_text(json.dumps(figures))
    print(f"\n[failover figures] {json.dumps(figures)}")
    assert stream.failed == 0 and len(stream.delivered) == RECORDS, figures
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
    assert ids == set(stream.delivered)

