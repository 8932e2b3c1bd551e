"""The aggregate is folded by the store in the insert itself (migration 009's views), exactly once.

Runs the pipeline's own ``ClickHouseStore`` on a real chDB engine (in a child process: one store per
process). What a worker's write does when an acknowledgement is lost is replayed by hand, step by
step, and after each step ``interface_stats_1m`` is compared with a recomputation from the raw rows:

- a retried insert with the same deduplication token: the raw table drops the block, and so must the
  aggregate table (ClickHouse runs the view on a deduplicated block; without the aggregate table's
  own deduplication window the retry would count the block twice: the test proves the window works);
- a split insert (rows ClickHouse refused as bad data are isolated by halving the block), one slice
  retried;
- the crash recovery's rebuild of a partition's minutes, twice in a row (two crashes): identical
  rebuilt blocks must not be dropped as duplicates;
- the same for ``monitoring_samples`` (source ``sample``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent("""
    import json, sys, time
    import pyarrow as pa
    from pipeline.monitoring.metrics import Metrics
    from pipeline.schema import migrations
    from pipeline.sinks.clickhouse import ClickHouseStore, connect
    from pipeline.sinks.protocol import LOGS, SAMPLES
    from tests.support.verify import RAW_AGGREGATES, STORED_AGGREGATES

    SAMPLES_RAW = '''SELECT toStartOfMinute(window_start) AS m, sdk_app_id, interface, sum(requests), sum(failures),
        toUInt64(sum(round(latency_avg_ms * requests))), max(latency_max_ms) FROM imtel.monitoring_samples
        GROUP BY m, sdk_app_id, interface ORDER BY m, sdk_app_id, interface'''
    SAMPLES_STORED = '''SELECT minute AS m, sdk_app_id, interface, sum(requests), sum(failures), sum(latency_sum_ms),
        max(latency_max_ms) FROM imtel.interface_stats_1m WHERE source = 'sample'
        GROUP BY m, sdk_app_id, interface ORDER BY m, sdk_app_id, interface'''

    client = connect("chdb://" + sys.argv[1])
    migrations.apply(client, "imtel")
    store = ClickHouseStore(client, "imtel", Metrics())
    now_ms = int(time.time() * 1000) // 60_000 * 60_000  # the run's clock: inside every TTL

    def logs(batch, n, partition):
        return pa.table({
            "request_time": pa.array([now_ms - 60_000 * (i % 3) + i for i in range(n)], pa.timestamp("ms", "UTC")),
            "sdk_app_id": pa.array([1400000000 + i % 4 for i in range(n)], pa.uint32()),
            "interface": [f"v4/i{i % 5}" for i in range(n)],
            "request_id": [f"{batch}-{i}" for i in range(n)],
            "client_net": ["203.0.113.0/24"] * n,
            "latency_ms": pa.array([(i * 37) % 900 for i in range(n)], pa.uint32()),
            "error_code": pa.array([70001 if i % 7 == 0 else 0 for i in range(n)], pa.int32()),
            "exception": [""] * n, "region": ["r"] * n, "platform": ["p"] * n, "src_topic_id": ["t"] * n,
            "src_partition": pa.array([partition] * n, pa.uint16()),
            "src_offset": pa.array(range(n), pa.uint64()), "src_index": pa.array([0] * n, pa.uint32())})

    def samples(batch, n):
        return pa.table({
            "window_start": pa.array([now_ms - 60_000 * (i % 2) for i in range(n)], pa.timestamp("ms", "UTC")),
            "sdk_app_id": pa.array([1400000000 + i % 3 for i in range(n)], pa.uint32()),
            "interface": [f"v4/i{i % 2}" for i in range(n)],
            "window_seconds": pa.array([60] * n, pa.uint16()),
            "requests": pa.array([10 + i for i in range(n)], pa.uint32()),
            "failures": pa.array([i % 3 for i in range(n)], pa.uint32()),
            "latency_avg_ms": pa.array([1.5 * i for i in range(n)], pa.float64()),
            "latency_max_ms": pa.array([i * 9 for i in range(n)], pa.uint32()),
            "reporter": ["sdk"] * n, "src_topic_id": ["t2"] * n, "src_partition": pa.array([0] * n, pa.uint16()),
            "src_offset": pa.array(range(n), pa.uint64()), "src_index": pa.array([0] * n, pa.uint32())})

    def state(step):
        raw, folded = client.query(RAW_AGGREGATES).result_rows, client.query(STORED_AGGREGATES).result_rows
        sraw, sfolded = client.query(SAMPLES_RAW).result_rows, client.query(SAMPLES_STORED).result_rows
        count = client.query("SELECT count(), sum(requests) FROM imtel.interface_stats_1m").result_rows[0]
        print(json.dumps({"step": step, "logs": int(client.query("SELECT count() FROM imtel.request_logs")
                                                    .result_rows[0][0]),
                          "groups": len(raw), "logs_equal": [list(map(str, r)) for r in raw] ==
                          [list(map(str, r)) for r in folded], "samples_equal": sraw == sfolded and bool(sraw),
                          "requests": int(count[1])}))

    first = logs(1, 1000, 0)
    store.insert_arrow("request_logs", first, token="1:request_logs:0:1000"); state("insert")
    store.insert_arrow("request_logs", first, token="1:request_logs:0:1000"); state("retry")
    second = logs(2, 800, 1)
    for lo, hi in ((0, 400), (400, 800), (0, 400)):
        store.insert_arrow("request_logs", second.slice(lo, hi - lo), token=f"2:request_logs:{lo}:{hi}")
    state("split, one slice retried")
    found = store.recover(LOGS, "t", 1, 0)
    state("recovered")
    store.rebuild(LOGS, 1, sorted({now_ms // 1000 // 60 * 60 - 60 * k for k in range(3)}))
    state("rebuilt again")
    s = samples(3, 40)
    store.insert_arrow("monitoring_samples", s, token="3:monitoring_samples:0:40")
    store.insert_arrow("monitoring_samples", s, token="3:monitoring_samples:0:40")
    store.rebuild(SAMPLES, 0, sorted({now_ms // 1000 // 60 * 60 - 60 * k for k in range(2)}))
    store.rebuild(SAMPLES, 0, sorted({now_ms // 1000 // 60 * 60 - 60 * k for k in range(2)}))
    state("samples")
    print(json.dumps({"recovered_keys": len(found.keys), "recovered_minutes": found.minutes}))
""")


def test_the_views_fold_each_stored_row_exactly_once(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=180, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    *steps, recovery = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_step = {s["step"]: s for s in steps}
    assert [s["logs"] for s in steps] == [1000, 1000, 1800, 1800, 1800, 1800]
    assert all(s["logs_equal"] for s in steps), steps
    # the requests in the aggregate table: each raw row once, however often its block was sent
    assert by_step["retry"]["requests"] == by_step["insert"]["requests"] == 1000
    assert by_step["rebuilt again"]["requests"] == by_step["split, one slice retried"]["requests"] == 1800
    assert by_step["samples"]["samples_equal"]
    assert by_step["samples"]["requests"] == 1800 + sum(10 + i for i in range(40))
    assert recovery == {"recovered_keys": 800, "recovered_minutes": 3}


PENDING = textwrap.dedent("""
    import json, sys
    from pipeline.schema import migrations
    from pipeline.sinks.clickhouse import connect

    client = connect("chdb://" + sys.argv[1])
    out = {"fresh": migrations.pending(client, "imtel")}
    migrations.apply(client, "imtel")
    out["applied"] = migrations.pending(client, "imtel")
    client.command("ALTER TABLE imtel.schema_migrations DELETE WHERE version = 9 SETTINGS mutations_sync = 2")
    out["without 009"] = migrations.pending(client, "imtel")
    migrations.apply(client, "imtel_local")  # what the migration Job leaves on a shard, minus ON CLUSTER
    out["cluster"] = migrations.pending(client, "imtel", "imtel")
    print(json.dumps(out))
""")


def test_pending_migrations_are_read_from_the_store(tmp_path: Path) -> None:
    """What a worker on a cluster checks before it starts (``worker/run.py``, ``require_schema``)."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", PENDING, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=180, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["fresh"][:2] == ["001_request_logs", "002_monitoring_samples"]
    assert out["fresh"][-2:] == ["009_stats_views", "010_drop_ingest_batch"]
    assert out["applied"] == [] and out["without 009"] == ["009_stats_views"] and out["cluster"] == []
