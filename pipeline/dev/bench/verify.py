"""What a contender left in its store, and whether it equals the produced workload.

``python -m pipeline.dev.bench.verify STORE [FRESH_FROM_MS]`` runs after the contender exited (chDB lets
one process open a store at a time) and prints one JSON object: the raw row count, the distinct
record origins (a duplicate or a loss shows here), per-app requests/failures/latency sums from
``interface_stats_1m`` (source ``log``), and, given an event-time cut, freshness quantiles from the
rows themselves (``ingest_time``, set by the engine at insert, minus ``request_time``).
``compare`` is pure: it judges that answer against the harness's ``Expected``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pipeline.dev.bench.workload import Expected

DB = "imtel"


def inspect(store: str, fresh_from_ms: int | None = None, database: str = DB) -> dict[str, Any]:
    """Counts and checksums of one store (opens it: call only when no contender holds it)."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{store}")
    rows, distinct = client.query(
        f"SELECT count(), uniqExact(src_topic_id, src_partition, src_offset, src_index) FROM {database}.request_logs"
    ).result_rows[0]
    per_app = {str(r[0]): [int(r[1]), int(r[2]), int(r[3])] for r in client.query(
        f"SELECT sdk_app_id, sum(requests), sum(failures), sum(latency_sum_ms) FROM {database}.interface_stats_1m "
        "WHERE source = 'log' GROUP BY sdk_app_id").result_rows}
    out: dict[str, Any] = {"rows": int(rows), "distinct": int(distinct), "per_app": per_app}
    if fresh_from_ms is not None:
        q = client.query(
            "SELECT count(), quantilesExact(0.5, 0.99)(dateDiff('millisecond', request_time, ingest_time)) "
            f"FROM {database}.request_logs WHERE request_time >= fromUnixTimestamp64Milli({{f:Int64}}, 'UTC')",
            parameters={"f": fresh_from_ms}).result_rows[0]
        out["fresh"] = {"rows": int(q[0]), "p50_s": q[1][0] / 1000.0 if q[0] else None,
                        "p99_s": q[1][1] / 1000.0 if q[0] else None}
    return out


def compare(found: dict[str, Any], expected: Expected) -> list[str]:
    """Every way the store differs from the workload (empty: correct)."""
    problems = []
    if found["rows"] != expected.rows:
        problems.append(f"request_logs has {found['rows']} rows, expected {expected.rows}")
    if found["distinct"] != found["rows"]:
        problems.append(f"{found['rows'] - found['distinct']} duplicate rows (same Kafka origin)")
    want = {str(k): v for k, v in expected.per_app.items()}
    got = found.get("per_app", {})
    wrong = sorted(set(want) ^ set(got) | {a for a in set(want) & set(got) if want[a] != got[a]})
    if wrong:
        problems.append(f"interface_stats_1m differs for {len(wrong)} apps (requests, failures or latency sum)")
    return problems


if __name__ == "__main__":
    cut = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(inspect(sys.argv[1], cut)))
