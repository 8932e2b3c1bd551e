"""The ``imtel-app-drilldown`` dashboard: for a multi-select ``sdk_app_id`` (and ``interface``),
per-interface success rate and latency, error codes and causes over time, region/platform breakdown
and the slowest requests."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, timeseries
from grafana_foundation_sdk.models import dashboard as dash_m

from pipeline.monitoring.boards.queries import (
    APP_LABEL,
    JOIN_APP_NAMES,
    LOG_STATS,
    exception_causes,
    latency_quantile,
    rate_by_app,
    series_sql,
    stats_ts,
    success_ratio_by_app,
)
from pipeline.monitoring.panels import CH, DB, SQL, Layout, new_board, promql, table_panel, ts

APPS_FILTER = "$__conditionalAll(sdk_app_id IN (${sdk_app_id:singlequote}), $sdk_app_id)"
IFACE_FILTER = "$__conditionalAll(interface IN (${interface:singlequote}), $interface)"


def picker(name: str) -> dashboard.QueryVariable:
    """A multi-select ClickHouse variable, "All" by default, its options queried again with the time range."""
    return (
        dashboard.QueryVariable(name)
        .datasource(CH)
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dash_m.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def logs_ts(
    title: str, columns: str, key: str, where: str, unit: str = "short", stack: bool = False
) -> timeseries.Panel:
    """A time series over request_logs: ``columns`` (the key first) per interval, one series per ``key``."""
    return ts(title, [SQL(series_sql("request_logs", "request_time", columns, where, key))], unit, ds=CH, stack=stack)


def app_drilldown() -> dashboard.Dashboard:
    board = new_board(
        "imtel-app-drilldown",
        "IM application drill-down",
        "One or more applications (sdk_app_id) in detail: interfaces, error codes and causes, "
        "regions and platforms, slowest requests. History from ClickHouse; 'now' from Prometheus.",
        "now-3h",
        "1m",
    )
    board.with_variable(
        picker("sdk_app_id")
        .label("App (sdk_app_id)")
        .description("Apps with traffic in the time range, named from the applications registry when it knows them.")
        .query(
            # two columns: the plugin takes the first as the value (the id the panels filter on) and the
            # second as the text shown in the picker
            f"SELECT toString(s.sdk_app_id) AS value, {APP_LABEL} AS text\n"
            f"FROM (SELECT DISTINCT sdk_app_id FROM {DB}.interface_stats_1m WHERE $__timeFilter(minute)) AS s\n"
            f"{JOIN_APP_NAMES}\n"
            "ORDER BY text"
        )
        .sort(dash_m.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )
    board.with_variable(
        picker("interface")
        .label("Interface")
        .query(
            f"SELECT DISTINCT interface FROM {DB}.interface_stats_1m "
            f"WHERE $__timeFilter(minute) AND {APPS_FILTER} ORDER BY 1"
        )
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
    )
    lay = Layout(board)
    app_sel = ',app=~"$sdk_app_id"'
    lay.row("Now (Prometheus; apps beyond the top-N are only in ClickHouse)")
    lay.add(ts("Success rate", [promql(success_ratio_by_app(app_sel), "{{app}}")], "percentunit", max_val=1), w=8)
    lay.add(ts("Latency p99", [promql(latency_quantile(0.99, extra=app_sel), "{{app}}")], "s"), w=8)
    lay.add(ts("Requests/s", [promql(rate_by_app(extra=app_sel), "{{app}}")], "reqps"), w=8)

    where_stats = f"{LOG_STATS} AND {APPS_FILTER} AND {IFACE_FILTER}"
    where_logs = f"$__timeFilter(request_time) AND {APPS_FILTER} AND {IFACE_FILTER}"
    lay.row("Interfaces (interface_stats_1m)")
    lay.add(stats_ts("Success rate per interface", "success_rate", "interface", where_stats), w=12)
    lay.add(stats_ts("p95 latency per interface", "p95_ms", "interface", where_stats), w=12)
    lay.add(
        table_panel(
            "Interfaces: volume, success rate and latency",
            [
                SQL(
                    f"""
        SELECT interface, sum(requests) AS total, sum(failures) AS failed,
               1 - failed / nullIf(total, 0) AS success_rate,
               sum(latency_sum_ms) / nullIf(total, 0) AS avg_ms,
               quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q) AS q,
               q[1] AS p50_ms, q[3] AS p95_ms, q[4] AS p99_ms, max(latency_max_ms) AS max_ms
        FROM {DB}.interface_stats_1m
        WHERE {where_stats}
        GROUP BY interface
        ORDER BY total DESC""",
                    table_format=True,
                )
            ],
        ),
        w=24,
        h=9,
    )

    lay.row("Errors (request_logs)")
    lay.add(
        logs_ts(
            "Failures by error code",
            "toString(error_code) AS code, count() AS failures",
            "code",
            f"{where_logs} AND error_code != 0",
            stack=True,
        ),
        w=12,
    )
    causes = "min(request_time) AS first_seen, max(request_time) AS last_seen"
    lay.add(
        table_panel(
            "Exception causes",
            [SQL(exception_causes(causes, where_logs, 50), table_format=True)],
        ),
        w=12,
    )

    lay.row("Regions and platforms (request_logs)")
    for dim in ("region", "platform"):
        lay.add(
            table_panel(
                f"By {dim}",
                [
                    SQL(
                        f"""
            SELECT {dim}, count() AS requests, countIf(error_code != 0) AS failures,
                   failures / requests AS error_ratio,
                   quantileTiming(0.5)(latency_ms) AS p50_ms, quantileTiming(0.95)(latency_ms) AS p95_ms
            FROM {DB}.request_logs
            WHERE {where_logs}
            GROUP BY {dim}
            ORDER BY requests DESC""",
                        table_format=True,
                    )
                ],
            ),
            w=12,
            h=7,
        )
    lay.add(logs_ts("Requests by region", "region, count() AS requests", "region", where_logs, stack=True), w=12)
    ratio = "platform,\n       countIf(error_code != 0) / count() AS error_ratio"
    lay.add(logs_ts("Error ratio by platform", ratio, "platform", where_logs, "percentunit"), w=12)

    lay.row("Slowest requests (request_logs)")
    lay.add(
        table_panel(
            "Slowest requests",
            [
                SQL(
                    f"""
        SELECT s.request_time AS request_time, s.sdk_app_id AS sdk_app_id,
               if(ifNull(n.app_name, '') = '', toString(s.sdk_app_id), n.app_name) AS app_name,
               s.interface AS interface, s.latency_ms AS latency_ms,
               s.error_code AS error_code, s.exception AS exception, s.region AS region,
               s.platform AS platform, s.client_net AS client_net, s.request_id AS request_id
        FROM (
            SELECT request_time, sdk_app_id, interface, latency_ms, error_code, exception,
                   region, platform, client_net, request_id
            FROM {DB}.request_logs
            WHERE {where_logs}
            ORDER BY latency_ms DESC
            LIMIT 100
        ) AS s
        {JOIN_APP_NAMES}
        ORDER BY s.latency_ms DESC""",
                    table_format=True,
                )
            ],
            "client_net is the minimised exit IP (prefix or keyed hash).",
        ),
        w=24,
        h=10,
    )
    return board
