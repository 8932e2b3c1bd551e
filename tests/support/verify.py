"""Read-back checks shared by the fault tests: exactly-once rows and aggregates vs the raw rows.

Both run on the real engine (through the shim's never-faulted admin listener): the aggregate check
recomputes every (minute, app, interface) from ``request_logs`` and compares it with what the pipeline
folded into ``interface_stats_1m``, including the merged latency quantile states.
"""

from __future__ import annotations

from typing import Any

from .shim_process import ShimProcess

RAW_AGGREGATES = """
SELECT toStartOfMinute(request_time) AS m, sdk_app_id, interface, count(), countIf(error_code != 0),
       sum(latency_ms), max(latency_ms), quantilesTiming(0.5, 0.9, 0.95, 0.99)(latency_ms)
FROM imtel.request_logs GROUP BY m, sdk_app_id, interface ORDER BY m, sdk_app_id, interface"""
STORED_AGGREGATES = """
SELECT minute AS m, sdk_app_id, interface, sum(requests), sum(failures), sum(latency_sum_ms), max(latency_max_ms),
       quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q)
FROM imtel.interface_stats_1m WHERE source = 'log' GROUP BY m, sdk_app_id, interface
ORDER BY m, sdk_app_id, interface"""


def stored_ids(shim: ShimProcess) -> tuple[int, set[str]]:
    """(row count, distinct request ids) of ``request_logs``."""
    rows = shim.query("SELECT request_id FROM imtel.request_logs")
    return len(rows), {str(r[0]) for r in rows}


def duplicates(shim: ShimProcess) -> int:
    """Rows beyond the first per request id."""
    return int(shim.query("SELECT count() - uniqExact(request_id) FROM imtel.request_logs")[0][0])


def aggregates(shim: ShimProcess) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(recomputed from raw rows, folded by the pipeline) per minute x app x interface."""
    return shim.query(RAW_AGGREGATES), shim.query(STORED_AGGREGATES)
