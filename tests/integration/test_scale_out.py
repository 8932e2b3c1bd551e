"""Scale-out (issue 3 item 6; issue 6's local check): three workers in one consumer group share the
partitions, rebalance when one leaves or dies, and every record is stored exactly once.

How this is honest: the bundled broker is a real Tansu process and the workers are three real
``imtel worker`` processes in one consumer group (dynamic membership, own metrics port each). They
share one real ClickHouse engine the only way several processes can share chDB: through
``tests/support/ch_http_shim.py``, a separate process that owns the store and serves ClickHouse's HTTP
interface (one listener per worker, one engine). That is what a shared ClickHouse server changes
compared with the embedded store: the worker that takes a partition over sees the rows its previous
owner stored. The test makes that case certain rather than lucky: it holds the answer to worker 2's
insert in the shim (the raw rows of its batch and their aggregate are stored, its offsets not yet
committed) and SIGKILLs it there; the survivor must skip exactly those records on replay and rebuild
their aggregate minutes.
Expectations come from outside the workers: what Kafka acknowledged to the producer, and the store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.config.settings import Settings
from pipeline.schema.topics import ensure_topics
from tests.support.shim_process import ShimProcess
from tests.support.verify import aggregates, stored_ids
from tests.support.workers import Stream, WorkerProcess, wait_for, worker_env

from .conftest import free_port

pytestmark = pytest.mark.integration

PARTITIONS = 6
RECORDS, RATE = 33_000, 700
# Tansu waits the whole rebalance timeout (= max.poll.interval.ms) on every join, and a killed
# member lingers for the session timeout (= min(30 s, max.poll.interval.ms)): keep both at 6 s.
TUNING = {"topic_partitions": str(PARTITIONS), "kafka_max_poll_interval_ms": "6000", "batch_max_seconds": "0.3",
          "batch_max_records": "5000", "consume_max_messages": "1000"}
HOLD_STORED = r"^\s*INSERT INTO imtel\.request_logs"


def spread(workers: list[WorkerProcess], topic: str) -> dict[str, int] | None:
    """{worker: partitions of ``topic``} when every worker owns some and together they own all."""
    owned = {w.name: int(w.metric("imtel_assigned_partitions", topic=topic)) for w in workers}
    return owned if all(owned.values()) and sum(owned.values()) == PARTITIONS else None


def test_three_workers_share_partitions_and_take_over(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    with ShimProcess(tmp_path / "store", tmp_path, listeners=3) as shim:
        envs = [worker_env(pipeline_env, shim.dsn(i), tmp_path, f"w{i + 1}", free_port(), **TUNING) for i in range(3)]
        ensure_topics(Settings.from_env(envs[0]))
        w1, w2, w3 = (WorkerProcess(f"w{i + 1}", env, tmp_path) for i, env in enumerate(envs))
        topic = envs[0]["IMTEL_TOPIC_REQUEST_LOGS"]
        stream = Stream(envs[0]["IMTEL_KAFKA_BOOTSTRAP"], topic, rate=RATE, total=RECORDS, seed=21)
        timeline: dict[str, object] = {}
        start = time.monotonic()

        def mark(event: str, value: object = None) -> None:
            timeline[event] = value if value is not None else round(time.monotonic() - start, 1)

        try:
            w1.start()
            stream.start()
            mark("w1 owns all", wait_for(lambda: spread([w1], topic), 60, "w1's assignment", workers=[w1]))
            w2.start()
            mark("w1+w2", wait_for(lambda: spread([w1, w2], topic), 60, "the partitions spread over w1, w2",
                                      workers=[w1, w2]))
            w3.start()
            mark("w1+w2+w3", wait_for(lambda: spread([w1, w2, w3], topic), 60,
                                          "the partitions spread over three", workers=[w1, w2, w3]))
            mark("three workers at")
            wait_for(lambda: all(w.metric("imtel_rows_written_total", table="request_logs") > 0 for w in (w1, w2, w3)),
                     30, "every worker writing", workers=[w1, w2, w3])
            written = {w.name: w.metric("imtel_rows_written_total", table="request_logs") for w in (w1, w2, w3)}

            assert w3.stop() == 0, w3.log_text()[-3000:]  # SIGTERM: flush, commit, leave the group
            mark("after w3 left", wait_for(lambda: spread([w1, w2], topic), 60, "w1, w2 taking w3's partitions",
                                              workers=[w1, w2]))
            mark("w3 left, rebalanced at")

            # the insert runs, then its answer is held: the rows are stored, the worker has not heard so
            hold = shim.fault("stall", listener=1, seconds=3.0, limit=1, after=True, match=HOLD_STORED)
            wait_for(lambda: any(f["id"] == hold["id"] and f["in_flight"] for f in shim.faults()), 30,
                     "w2 between storing a batch and committing it", workers=[w1, w2])
            w2.kill()  # SIGKILL with rows stored past its committed offsets
            mark("w2 killed at")
            mark("after w2 died", wait_for(lambda: spread([w1], topic), 60, "w1 taking over every partition",
                                              workers=[w1]))
            mark("w1 alone at")
            stream.join(120)
            wait_for(lambda: stored_ids(shim)[0] >= len(stream.delivered), 90, "every acknowledged record stored",
                     workers=[w1])
            mark("all stored at")
            skipped = w1.metric("imtel_records_skipped_total", topic=topic)
            rebuilt = w1.metric("imtel_recovery_rebuilt_minutes_total")
            assert w1.stop() == 0, w1.log_text()[-3000:]
        finally:
            stream.stop()
            for w in (w1, w2, w3):
                if w.alive():
                    w.kill()
        count, ids = stored_ids(shim)
        raw, folded = aggregates(shim)

    assert len(stream.delivered) == RECORDS and stream.failed == 0
    lost, duplicated = len(set(stream.delivered) - ids), count - len(ids)
    assert (lost, duplicated) == (0, 0), f"{lost} records lost, {duplicated} stored twice"
    assert ids == set(stream.delivered)
    assert raw == folded and len(raw) > 10
    # the survivor found w2's stored-but-uncommitted rows through the shared store and skipped them
    assert skipped > 0 and rebuilt > 0, (skipped, rebuilt)
    assert "were already stored" in w1.log_text()
    figures = {"records_checked": len(stream.delivered), "lost": lost, "duplicated": duplicated,
               "skipped_on_takeover": skipped, "rebuilt_minutes": rebuilt, "rows_written_by_worker": written,
               "timeline_s": timeline}
    (tmp_path / "figures-scale-out.json").write_text(json.dumps(figures))
    print(f"\n[scale-out figures] {json.dumps(figures)}")
