"""How a raw table folds into ``interface_stats_1m``: the one definition of the per-minute aggregate.

Two users, one text:
- migration 009 renders each ``*_stats`` materialized view from it (no filter), so every acknowledged
  insert into ``request_logs`` / ``monitoring_samples`` folds its own block into the aggregate in the
  same statement, under the insert's deduplication token (``interface_stats_1m`` keeps a window of
  tokens too: a retried insert the raw table drops adds nothing to the aggregate);
- the crash recovery (``sinks/clickhouse.py``, ``rebuild``) recomputes some minutes of one partition
  from the raw rows with the same text and a filter, after deleting them.
So an aggregate row is the same function of the raw rows however it was written, and a recomputation
from the raw rows always equals it (the crash and fault tests compare exactly that).

Columns are named as in ``interface_stats_1m``: a view writes into its target by column name. An
alias is visible to the whole SELECT, so an expression that needs a raw column an alias shadows
(``requests`` of a sample) names it through the table (``s.requests``).
"""

from __future__ import annotations

_LOGS = """SELECT toStartOfMinute(request_time) AS minute, sdk_app_id, interface, 'log' AS source, src_partition,
       count() AS requests, countIf(error_code != 0) AS failures, sum(latency_ms) AS latency_sum_ms,
       max(latency_ms) AS latency_max_ms, quantilesTimingState(0.5, 0.9, 0.95, 0.99)(latency_ms) AS latency_q
FROM {db}.request_logs{where}
GROUP BY minute, sdk_app_id, interface, src_partition"""
_SAMPLES = """SELECT toStartOfMinute(window_start) AS minute, sdk_app_id, interface, 'sample' AS source, src_partition,
       sum(requests) AS requests, sum(failures) AS failures,
       toUInt64(sum(round(s.latency_avg_ms * s.requests))) AS latency_sum_ms, max(latency_max_ms) AS latency_max_ms,
       quantilesTimingStateIf(0.5, 0.9, 0.95, 0.99)(toUInt32(0), 0) AS latency_q
FROM {db}.monitoring_samples AS s{where}
GROUP BY minute, sdk_app_id, interface, src_partition"""
_BY_TABLE = {"request_logs": _LOGS, "monitoring_samples": _SAMPLES}
STATS_TABLE = "interface_stats_1m"


def stats_select(table: str, db: str, where: str = "") -> str:
    """The aggregate of raw ``table`` (``request_logs`` or ``monitoring_samples``) in database ``db``,
    optionally over the rows matching ``where`` (SQL with bound ``{name:Type}`` parameters only)."""
    return _BY_TABLE[table].format(db=db, where=f" WHERE {where}" if where else "")


def template_values(db: str) -> dict[str, str]:
    """Placeholders of the migration templates: ``{stats_of_request_logs}`` and
    ``{stats_of_monitoring_samples}``, each the unfiltered aggregate of that table in ``db``."""
    return {f"stats_of_{table}": stats_select(table, db) for table in _BY_TABLE}
