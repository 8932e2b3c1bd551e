"""Graceful stop: SIGTERM mid-stream flushes what is buffered and commits it before the worker exits
(exit code 0); the restarted worker resumes exactly after the committed offsets: no gap, no repeat.

Rows are held in the buffer on purpose (``IMTEL_BATCH_MAX_SECONDS=60``, a huge record limit): at the
SIGTERM nothing of them has been written yet, so only the stop path can have stored and committed
them. Right after the exit, each partition's committed offset must be the stored maximum offset + 1,
and a clean stop leaves the next worker nothing to skip (``imtel_records_skipped_total`` stays 0).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.schema.topics import ensure_topics
from tests.support.kafka_io import RecordingProducer, committed
from tests.support.workers import WorkerProcess, wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration

PARTITIONS = 4


def produce(producer: RecordingProducer, topic: str, traffic: Traffic, count: int, tag: str) -> list[str]:
    """``count`` request logs (every 10th message a JSON array of 10); returns their request ids."""
    ids: list[str] = []
    now_ms = int(time.time() * 1000)
    n = 0
    while len(ids) < count:
        batch = [traffic.request_log(now_ms) for _ in range(10 if n % 10 == 9 else 1)]
        ids += [r["request_id"] for r in batch]
        value = msgspec.json.encode(batch if len(batch) > 1 else batch[0])
        producer.send(topic, value, str(batch[0]["sdk_app_id"]).encode(), (tag, n))
        n += 1
    producer.flush()
    return ids


def test_sigterm_flushes_commits_and_the_restart_resumes_without_gap_or_repeat(
        pipeline_env: dict[str, str], tmp_path: Path) -> None:
    env = {**pipeline_env, "IMTEL_BATCH_MAX_SECONDS": "60", "IMTEL_BATCH_MAX_RECORDS": "1000000"}
    s = Settings.from_env(env)
    ensure_topics(s)
    logs = s.topic_request_logs
    bootstrap, group = env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_CONSUMER_GROUP"]
    producer, traffic = RecordingProducer(bootstrap), Traffic(apps=8, seed=31)
    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))

    first = WorkerProcess("first", env, tmp_path).start()
    wait_for(lambda: first.assigned() == 2 * PARTITIONS, 60, "the first worker's assignment", workers=[first])
    before = produce(producer, logs, traffic, 6_000, "before")
    wait_for(lambda: first.metric("imtel_records_consumed_total", topic=logs) >= len(before), 60,
             "every record consumed (and buffered)")
    assert first.metric("imtel_rows_written_total", table="request_logs") == 0, "a flush happened before SIGTERM"
    code = first.stop(60)
    assert code == 0, first.log_text()[-3000:]

    ends = producer.end_offsets(logs)
    offsets = committed(bootstrap, group, {logs: PARTITIONS})
    stored_max: Any
    (stored_max,) = run_sql(store, ["SELECT src_partition, max(src_offset), count() FROM imtel.request_logs "
                                    "GROUP BY src_partition ORDER BY src_partition"], migrate=False)
    assert {(logs, int(p)): int(o) + 1 for p, o, _ in stored_max} == offsets, "committed != stored max + 1"
    assert offsets == {(logs, p): o for p, o in ends.items()}, "not everything consumed was committed"
    assert sum(int(n) for _, _, n in stored_max) == len(before)

    after = produce(producer, logs, traffic, 4_000, "after")
    second = WorkerProcess("second", {**env, "IMTEL_BATCH_MAX_SECONDS": "0.3"}, tmp_path).start()
    try:
        wait_for(lambda: second.metric("imtel_rows_written_total", table="request_logs") >= len(after), 90,
                 "the records produced after the stop stored")
        time.sleep(1.0)  # a replayed (repeated) record would be written by now
        written = second.metric("imtel_rows_written_total", table="request_logs")
        consumed = second.metric("imtel_records_consumed_total", topic=logs)
        skipped = second.metric("imtel_records_skipped_total")
    finally:
        assert second.stop(60) == 0, second.log_text()[-3000:]
    assert (written, consumed, skipped) == (len(after), len(after), 0), "the restart re-read or skipped records"
    assert "were already stored" not in second.log_text()

    (ids, counts) = run_sql(store, ["SELECT request_id FROM imtel.request_logs",
                                    "SELECT count(), uniqExact(request_id) FROM imtel.request_logs"], migrate=False)
    assert counts == [[len(before) + len(after)] * 2]
    assert {r[0] for r in ids} == set(before) | set(after)
    assert committed(bootstrap, group, {logs: PARTITIONS}) == {(logs, p): o
                                                               for p, o in producer.end_offsets(logs).items()}
