"""PromQL and ClickHouse SQL fragments shared by the API overview and application drill-down boards."""

from __future__ import annotations

import textwrap

from grafana_foundation_sdk.builders import timeseries

from pipeline.monitoring.panels import CH, DB, JOB, SQL, ts

# The registry names apps when it knows them; panels keep working with bare ids otherwise.
APP_NAMES = (
    f"(SELECT sdk_app_id, argMax(name, updated_at) AS app_name FROM {DB}.applications GROUP BY sdk_app_id)"
)
# Series label / option text of an app joined as ``s`` with APP_NAMES as ``n``: "name (id)", or the id.
APP_LABEL = (
    "if(ifNull(n.app_name, '') = '', toString(s.sdk_app_id), "
    "concat(n.app_name, ' (', toString(s.sdk_app_id), ')'))"
)
JOIN_APP_NAMES = f"LEFT JOIN {APP_NAMES} AS n ON n.sdk_app_id = s.sdk_app_id"
# The interface_stats_1m rows the boards chart: the time range, aggregated from the request logs.
LOG_STATS = "$__timeFilter(minute) AND source = 'log'"
# The per-minute measures charted from interface_stats_1m: column -> (aggregate, unit, top of the y axis).
STATS_MEASURES: dict[str, tuple[str, str, float | None]] = {
    "success_rate": ("1 - sum(failures) / nullIf(sum(requests), 0)", "percentunit", 1),
    "p95_ms": ("quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q)[3]", "ms", None),
}


def rate_by_app(outcome: str | None = None, window: str = "$__rate_interval", extra: str = "") -> str:
    sel = f'{JOB},outcome="{outcome}"' if outcome else JOB
    return f"sum by (app) (rate(imtel_requests_total{{{sel}{extra}}}[{window}]))"


def success_ratio_by_app(extra: str = "") -> str:
    """Share of requests that succeed per app (Prometheus; ``extra`` narrows the selector)."""
    return f"{rate_by_app('success', extra=extra)} / {rate_by_app(extra=extra)}"


def latency_quantile(q: float, by: str = "app", extra: str = "") -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate(imtel_request_latency_seconds_bucket{{{JOB}{extra}}}[$__rate_interval])))"
    )


def exception_causes(columns: str, where: str, limit: int) -> str:
    """Failed requests per interface, error code and exception (request_logs), the most first, with ``columns``."""
    return (
        "SELECT interface, error_code, exception, count() AS failures,\n"
        f"       {columns}\n"
        f"FROM {DB}.request_logs\n"
        f"WHERE {where} AND error_code != 0\n"
        "GROUP BY interface, error_code, exception\n"
        "ORDER BY failures DESC\n"
        f"LIMIT {limit}"
    )


def series_sql(table: str, time_column: str, columns: str, where: str, key: str, order: bool = True) -> str:
    """A ClickHouse time series: ``columns`` (the key first) per Grafana interval of ``time_column``, one series
    per ``key``."""
    sql = (
        f"SELECT $__timeInterval({time_column}) AS time, {columns}\n"
        f"FROM {DB}.{table}\n"
        f"WHERE {where}\n"
        f"GROUP BY time, {key}"
    )
    return f"{sql}\nORDER BY time" if order else sql


def stats_ts(title: str, column: str, by: str, where: str = LOG_STATS) -> timeseries.Panel:
    """A per-minute series of one measure of interface_stats_1m (a key of STATS_MEASURES) per ``by``, a column;
    per ``"app"`` it groups by sdk_app_id and names the series from the registry."""
    value, unit, max_val = STATS_MEASURES[column]
    if by != "app":
        sql = series_sql("interface_stats_1m", "minute", f"{by},\n       {value} AS {column}", where, by)
    else:
        inner = series_sql(
            "interface_stats_1m", "minute", f"sdk_app_id,\n       {value} AS {column}", where, "sdk_app_id", False
        )
        sql = (
            f"SELECT s.time AS time, {APP_LABEL} AS app, s.{column} AS {column}\n"
            f"FROM (\n{textwrap.indent(inner, '    ')}\n) AS s\n"
            f"{JOIN_APP_NAMES}\n"
            "ORDER BY time"
        )
    return ts(title, [SQL(sql)], unit, ds=CH, max_val=max_val, interval="1m")
