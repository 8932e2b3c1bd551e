"""Grafana dashboards as code (grafana-foundation-sdk) and the list of every panel query.

``python -m pipeline.monitoring.dashboards`` writes ``grafana/dashboards/<uid>.json``; ``--check`` exits 1 when
the committed JSON differs from what this module builds. Four dashboards:

* ``imtel-api-overview``: success/error rate, latency percentiles and volume per app, the apps burning
  their error budget fastest (Prometheus, real time); top failing interfaces and causes (ClickHouse).
* ``imtel-app-drilldown``: multi-select ``sdk_app_id`` (and ``interface``): per-interface success rate
  and latency, error codes and causes over time, region/platform breakdown, slowest requests.
* ``imtel-pipeline-health``: events in/out, dead letters by reason, consumer lag, insert latency and
  batch sizes, end-to-end freshness, restarts and rebalances (Prometheus).
* ``imtel-data-retention``: rows, oldest row and expiry per table against the retention policy,
  parts and disk usage (ClickHouse ``system.parts``), oldest-row age gauges (Prometheus).

Real-time panels read Prometheus; history and drill-downs read ClickHouse through the
``grafana-clickhouse-datasource`` plugin with its macros. :func:`panel_queries` lists every query of
every panel and variable, with PromQL variables and ClickHouse macros expanded for a given time range
and variable values (:func:`expand_sql` mimics the plugin), so tests can run them on real engines.
ClickHouse panels and the app picker name apps from the ``applications`` registry ("name (id)"; the
bare id when the registry does not know the app).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

from pipeline.config.policy import load_policy
from pipeline.monitoring.slo import load_spec

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "grafana" / "dashboards"
DB = "imtel"
JOB = 'job="imtel"'
PROM = dash_m.DataSourceRef(type_val="prometheus", uid="imtel-prometheus")
CH = dash_m.DataSourceRef(type_val="grafana-clickhouse-datasource", uid="imtel-clickhouse")
CH_PLUGIN_VERSION = "4.10.1"
TAGS = ["imtel"]

AnyPanel = cogbuilder.Builder[dash_m.Panel]


# --- ClickHouse query (the SDK has no builder for this plugin) -----------------------------------


class ClickHouseQuery(cogvariants.Dataquery):
    """A raw-SQL query of grafana-clickhouse-datasource (plugin v4 query model)."""

    def __init__(self, sql: str, ref_id: str = "A", table_format: bool = False) -> None:
        self.sql, self.ref_id, self.table_format = sql, ref_id, table_format

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": CH.to_json(),
            "editorType": "sql",
            "format": 1 if self.table_format else 0,  # plugin Format: 0 time series, 1 table
            "pluginVersion": CH_PLUGIN_VERSION,
            "queryType": "table" if self.table_format else "timeseries",
            "rawSql": self.sql,
            "refId": self.ref_id,
        }


class SQL(cogbuilder.Builder[ClickHouseQuery]):
    def __init__(self, sql: str, ref_id: str = "A", table_format: bool = False) -> None:
        self._internal = ClickHouseQuery(_dedent(sql), ref_id, table_format)

    def build(self) -> ClickHouseQuery:
        return self._internal


def _dedent(sql: str) -> str:
    lines = [line.rstrip() for line in sql.strip("\n").splitlines()]
    indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return "\n".join(x[indent:] for x in lines)


def promql(expr: str, legend: str = "", ref_id: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref_id).datasource(PROM)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


# --- panels ------------------------------------------------------------------------------------


def _targets(panel: Any, targets: Sequence[cogbuilder.Builder[Any]]) -> None:
    for target in targets:
        panel.with_target(target)


def ts(
    title: str,
    targets: Sequence[cogbuilder.Builder[Any]],
    unit: str = "short",
    desc: str = "",
    ds: dash_m.DataSourceRef = PROM,
    stack: bool = False,
    min_val: float | None = None,
    max_val: float | None = None,
    interval: str | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(ds)
        .unit(unit)
        .fill_opacity(10)
        .line_width(1)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_m.LegendDisplayMode.TABLE)
            .placement(common_m.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_m.TooltipDisplayMode.MULTI)
            .sort(common_m.SortOrder.DESCENDING)
        )
    )
    if desc:
        panel = panel.description(desc)
    if stack:
        panel = panel.stacking(common.StackingConfig().mode(common_m.StackingMode.NORMAL)).fill_opacity(40)
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if interval:
        panel = panel.interval(interval)
    _targets(panel, targets)
    return panel


def _steps(steps: Sequence[tuple[float | None, str]]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=v, color=c) for v, c in steps])
    )


def stat_panel(
    title: str,
    target: cogbuilder.Builder[Any],
    unit: str = "short",
    desc: str = "",
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    ds: dash_m.DataSourceRef = PROM,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(ds)
        .unit(unit)
        .thresholds(_steps(steps))
        .color_mode(common_m.BigValueColorMode.VALUE)
        .graph_mode(common_m.BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if desc:
        panel = panel.description(desc)
    panel.with_target(target)
    return panel


def table_panel(
    title: str,
    targets: Sequence[cogbuilder.Builder[Any]],
    desc: str = "",
    ds: dash_m.DataSourceRef = CH,
    unit: str = "short",
) -> table.Panel:
    panel = table.Panel().title(title).datasource(ds).unit(unit)
    if desc:
        panel = panel.description(desc)
    _targets(panel, targets)
    return panel


def bar_panel(
    title: str,
    targets: Sequence[cogbuilder.Builder[Any]],
    unit: str = "short",
    desc: str = "",
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    ds: dash_m.DataSourceRef = PROM,
    max_val: float | None = None,
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .datasource(ds)
        .unit(unit)
        .thresholds(_steps(steps))
        .orientation(common_m.VizOrientation.HORIZONTAL)
        .display_mode(common_m.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    if desc:
        panel = panel.description(desc)
    if max_val is not None:
        panel = panel.min(0).max(max_val)
    _targets(panel, targets)
    return panel


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self, board: dashboard.Dashboard) -> None:
        self.board, self.x, self.y, self.row_h, self.next_id = board, 0, 0, 0, 1

    def row(self, title: str) -> None:
        self._newline()
        self.board.with_row(
            dashboard.Row(title).id(self.next_id).grid_pos(dash_m.GridPos(h=1, w=24, x=0, y=self.y))
        )
        self.next_id += 1
        self.y += 1

    def add(self, panel: Any, w: int = 12, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel.id(self.next_id).grid_pos(dash_m.GridPos(h=h, w=w, x=self.x, y=self.y))
        self.board.with_panel(panel)
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0


def new_board(uid: str, title: str, desc: str, time_from: str, refresh: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(desc)
        .tags(TAGS)
        .timezone("utc")
        .editable()
        .time(time_from, "now")
        .refresh(refresh)
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard.DashboardLink("IM telemetry")
            .type(dash_m.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


# --- shared SQL fragments ----------------------------------------------------------------------

APPS_FILTER = "$__conditionalAll(sdk_app_id IN (${sdk_app_id:singlequote}), $sdk_app_id)"
IFACE_FILTER = "$__conditionalAll(interface IN (${interface:singlequote}), $interface)"
# The registry names apps when it knows them; panels keep working with bare ids otherwise.
APP_NAMES = (
    f"(SELECT sdk_app_id, argMax(name, updated_at) AS app_name FROM {DB}.applications GROUP BY sdk_app_id)"
)
# Series label / option text of an app joined as ``s`` with APP_NAMES as ``n``: "name (id)", or the id.
APP_LABEL = (
    "if(ifNull(n.app_name, '') = '', toString(s.sdk_app_id), "
    "concat(n.app_name, ' (', toString(s.sdk_app_id), ')'))"
)


def rate_by_app(outcome: str | None = None, window: str = "$__rate_interval", extra: str = "") -> str:
    sel = f'{JOB},outcome="{outcome}"' if outcome else JOB
    return f"sum by (app) (rate(imtel_requests_total{{{sel}{extra}}}[{window}]))"


def latency_quantile(q: float, by: str = "app", extra: str = "") -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate(imtel_request_latency_seconds_bucket{{{JOB}{extra}}}[$__rate_interval])))"
    )


# --- 1. IM API overview --------------------------------------------------------------------------


def api_overview() -> dashboard.Dashboard:
    spec = load_spec()
    budget = 1 - spec.availability_objective
    lat_budget = 1 - spec.latency_objective
    le = repr(float(spec.latency_threshold_s))
    board = new_board(
        "imtel-api-overview",
        "IM API overview",
        "Success rate, errors and latency of the IM server APIs per application. Real-time panels: "
        "Prometheus (apps beyond the top-N are 'other'); history and causes: ClickHouse.",
        "now-6h",
        "30s",
    )
    lay = Layout(board)
    lay.row("Now (Prometheus)")
    total = f"sum(rate(imtel_requests_total{{{JOB}}}[5m]))"
    lay.add(
        stat_panel(
            "Success rate (5m)",
            promql(f'sum(rate(imtel_requests_total{{{JOB},outcome="success"}}[5m])) / {total}'),
            "percentunit",
            f"SLO: {spec.availability_objective:.3%} of requests succeed.",
            (
                (None, "red"),
                (spec.availability_objective - 4 * budget, "orange"),
                (spec.availability_objective, "green"),
            ),
        ),
        w=6,
        h=5,
    )
    lay.add(stat_panel("Requests/s", promql(total), "reqps"), w=6, h=5)
    lay.add(
        stat_panel(
            "p99 latency (5m)",
            promql(
                f"histogram_quantile(0.99, sum by (le) "
                f"(rate(imtel_request_latency_seconds_bucket{{{JOB}}}[5m])))"
            ),
            "s",
            steps=((None, "green"), (spec.latency_threshold_s, "red")),
        ),
        w=6,
        h=5,
    )
    lay.add(
        stat_panel(
            "Requests within " + f"{spec.latency_threshold_s * 1000:g} ms (5m)",
            promql(
                f'sum(rate(imtel_request_latency_seconds_bucket{{{JOB},le="{le}"}}[5m])) / '
                f"sum(rate(imtel_request_latency_seconds_count{{{JOB}}}[5m]))"
            ),
            "percentunit",
            f"SLO: {spec.latency_objective:.1%}.",
            ((None, "red"), (spec.latency_objective, "green")),
        ),
        w=6,
        h=5,
    )
    lay.add(
        ts(
            "Success rate per app",
            [promql(f"{rate_by_app('success')} / {rate_by_app()}", "{{app}}")],
            "percentunit",
            max_val=1,
        ),
        w=12,
    )
    lay.add(
        ts("Error rate per app (failed requests/s)", [promql(rate_by_app("failure"), "{{app}}")], "reqps"),
        w=12,
    )
    lay.add(
        ts(
            "Latency p50 / p95 / p99 per app",
            [
                promql(latency_quantile(q), f"{{{{app}}}} p{round(q * 100)}", ref)
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            "s",
        ),
        w=12,
    )
    lay.add(ts("Request volume per app", [promql(rate_by_app(), "{{app}}")], "reqps", stack=True), w=12)
    burn = (
        f"topk(10,\n  ({rate_by_app('failure', '1h')} or {rate_by_app(None, '1h')} * 0)\n"
        f"  / {rate_by_app(None, '1h')}\n) / {budget:g}"
    )
    slow_burn = (
        f'topk(10,\n  (1 - sum by (app) (rate(imtel_request_latency_seconds_bucket{{{JOB},le="{le}"}}[1h]))\n'
        f"  / sum by (app) (rate(imtel_request_latency_seconds_count{{{JOB}}}[1h])))\n) / {lat_budget:g}"
    )
    lay.add(
        bar_panel(
            "Fastest error-budget burn (availability, 1h)",
            [promql(burn, "{{app}}", instant=True)],
            "x",
            "Burn rate = 1h error ratio / error budget. 14.4x pages (with 5m), 1x spends the "
            "30-day budget exactly.",
            ((None, "green"), (1, "yellow"), (6, "orange"), (14.4, "red")),
        ),
        w=12,
    )
    lay.add(
        bar_panel(
            "Fastest error-budget burn (latency, 1h)",
            [promql(slow_burn, "{{app}}", instant=True)],
            "x",
            "Burn rate = 1h share of requests slower than the threshold / latency budget.",
            ((None, "green"), (1, "yellow"), (6, "orange"), (14.4, "red")),
        ),
        w=12,
    )

    lay.row("History and causes (ClickHouse)")
    lay.add(
        ts(
            "Success rate per app (interface_stats_1m)",
            [
                SQL(f"""
        SELECT s.time AS time, {APP_LABEL} AS app, s.success_rate AS success_rate
        FROM (
            SELECT $__timeInterval(minute) AS time, sdk_app_id,
                   1 - sum(failures) / nullIf(sum(requests), 0) AS success_rate
            FROM {DB}.interface_stats_1m
            WHERE $__timeFilter(minute) AND source = 'log'
            GROUP BY time, sdk_app_id
        ) AS s
        LEFT JOIN {APP_NAMES} AS n ON n.sdk_app_id = s.sdk_app_id
        ORDER BY time""")
            ],
            "percentunit",
            ds=CH,
            max_val=1,
            interval="1m",
        ),
        w=12,
    )
    lay.add(
        ts(
            "p95 latency per app (interface_stats_1m)",
            [
                SQL(f"""
        SELECT s.time AS time, {APP_LABEL} AS app, s.p95_ms AS p95_ms
        FROM (
            SELECT $__timeInterval(minute) AS time, sdk_app_id,
                   quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q)[3] AS p95_ms
            FROM {DB}.interface_stats_1m
            WHERE $__timeFilter(minute) AND source = 'log'
            GROUP BY time, sdk_app_id
        ) AS s
        LEFT JOIN {APP_NAMES} AS n ON n.sdk_app_id = s.sdk_app_id
        ORDER BY time""")
            ],
            "ms",
            ds=CH,
            interval="1m",
        ),
        w=12,
    )
    lay.add(
        table_panel(
            "Top failing interfaces",
            [
                SQL(
                    f"""
        SELECT interface, sum(requests) AS total, sum(failures) AS failed,
               failed / nullIf(total, 0) AS error_ratio,
               uniqExactIf(sdk_app_id, failures > 0) AS apps_affected
        FROM {DB}.interface_stats_1m
        WHERE $__timeFilter(minute) AND source = 'log'
        GROUP BY interface
        HAVING failed > 0
        ORDER BY failed DESC
        LIMIT 20""",
                    table_format=True,
                )
            ],
        ),
        w=10,
        h=9,
    )
    lay.add(
        table_panel(
            "Top exception causes of failing interfaces",
            [
                SQL(
                    f"""
        SELECT interface, error_code, exception, count() AS failures,
               uniqExact(sdk_app_id) AS apps, max(request_time) AS last_seen
        FROM {DB}.request_logs
        WHERE $__timeFilter(request_time) AND error_code != 0
        GROUP BY interface, error_code, exception
        ORDER BY failures DESC
        LIMIT 20""",
                    table_format=True,
                )
            ],
            "From the raw request logs (7 days).",
        ),
        w=14,
        h=9,
    )
    lay.add(
        table_panel(
            "Apps by failures",
            [
                SQL(
                    f"""
        SELECT s.sdk_app_id AS sdk_app_id, n.app_name AS app_name, s.total AS requests,
               s.failed AS failures, s.failed / nullIf(s.total, 0) AS error_ratio,
               s.latency_ms / nullIf(s.total, 0) AS avg_latency_ms
        FROM (
            SELECT sdk_app_id, sum(requests) AS total, sum(failures) AS failed,
                   sum(latency_sum_ms) AS latency_ms
            FROM {DB}.interface_stats_1m
            WHERE $__timeFilter(minute) AND source = 'log'
            GROUP BY sdk_app_id
        ) AS s
        LEFT JOIN {APP_NAMES} AS n ON n.sdk_app_id = s.sdk_app_id
        ORDER BY failures DESC
        LIMIT 50""",
                    table_format=True,
                )
            ],
            "App names come from the applications registry when it has them.",
        ),
        w=24,
        h=9,
    )
    return board


# --- 2. Application drill-down -------------------------------------------------------------------


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
        dashboard.QueryVariable("sdk_app_id")
        .label("App (sdk_app_id)")
        .datasource(CH)
        .description("Apps with traffic in the time range, named from the applications registry when it knows them.")
        .query(
            # two columns: the plugin takes the first as the value (the id the panels filter on) and the
            # second as the text shown in the picker
            f"SELECT toString(s.sdk_app_id) AS value, {APP_LABEL} AS text\n"
            f"FROM (SELECT DISTINCT sdk_app_id FROM {DB}.interface_stats_1m WHERE $__timeFilter(minute)) AS s\n"
            f"LEFT JOIN {APP_NAMES} AS n ON n.sdk_app_id = s.sdk_app_id\n"
            "ORDER BY text"
        )
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dash_m.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )
    board.with_variable(
        dashboard.QueryVariable("interface")
        .label("Interface")
        .datasource(CH)
        .query(
            f"SELECT DISTINCT interface FROM {DB}.interface_stats_1m "
            f"WHERE $__timeFilter(minute) AND {APPS_FILTER} ORDER BY 1"
        )
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dash_m.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )
    lay = Layout(board)
    app_sel = ',app=~"$sdk_app_id"'
    lay.row("Now (Prometheus; apps beyond the top-N are only in ClickHouse)")
    lay.add(
        ts(
            "Success rate",
            [promql(f"{rate_by_app('success', extra=app_sel)} / {rate_by_app(extra=app_sel)}", "{{app}}")],
            "percentunit",
            max_val=1,
        ),
        w=8,
    )
    lay.add(ts("Latency p99", [promql(latency_quantile(0.99, extra=app_sel), "{{app}}")], "s"), w=8)
    lay.add(ts("Requests/s", [promql(rate_by_app(extra=app_sel), "{{app}}")], "reqps"), w=8)

    where_stats = f"$__timeFilter(minute) AND source = 'log' AND {APPS_FILTER} AND {IFACE_FILTER}"
    where_logs = f"$__timeFilter(request_time) AND {APPS_FILTER} AND {IFACE_FILTER}"
    lay.row("Interfaces (interface_stats_1m)")
    lay.add(
        ts(
            "Success rate per interface",
            [
                SQL(f"""
        SELECT $__timeInterval(minute) AS time, interface,
               1 - sum(failures) / nullIf(sum(requests), 0) AS success_rate
        FROM {DB}.interface_stats_1m
        WHERE {where_stats}
        GROUP BY time, interface
        ORDER BY time""")
            ],
            "percentunit",
            ds=CH,
            max_val=1,
            interval="1m",
        ),
        w=12,
    )
    lay.add(
        ts(
            "p95 latency per interface",
            [
                SQL(f"""
        SELECT $__timeInterval(minute) AS time, interface,
               quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q)[3] AS p95_ms
        FROM {DB}.interface_stats_1m
        WHERE {where_stats}
        GROUP BY time, interface
        ORDER BY time""")
            ],
            "ms",
            ds=CH,
            interval="1m",
        ),
        w=12,
    )
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
        ts(
            "Failures by error code",
            [
                SQL(f"""
        SELECT $__timeInterval(request_time) AS time, toString(error_code) AS code, count() AS failures
        FROM {DB}.request_logs
        WHERE {where_logs} AND error_code != 0
        GROUP BY time, code
        ORDER BY time""")
            ],
            ds=CH,
            stack=True,
        ),
        w=12,
    )
    lay.add(
        table_panel(
            "Exception causes",
            [
                SQL(
                    f"""
        SELECT interface, error_code, exception, count() AS failures,
               min(request_time) AS first_seen, max(request_time) AS last_seen
        FROM {DB}.request_logs
        WHERE {where_logs} AND error_code != 0
        GROUP BY interface, error_code, exception
        ORDER BY failures DESC
        LIMIT 50""",
                    table_format=True,
                )
            ],
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
    lay.add(
        ts(
            "Requests by region",
            [
                SQL(f"""
        SELECT $__timeInterval(request_time) AS time, region, count() AS requests
        FROM {DB}.request_logs
        WHERE {where_logs}
        GROUP BY time, region
        ORDER BY time""")
            ],
            ds=CH,
            stack=True,
        ),
        w=12,
    )
    lay.add(
        ts(
            "Error ratio by platform",
            [
                SQL(f"""
        SELECT $__timeInterval(request_time) AS time, platform,
               countIf(error_code != 0) / count() AS error_ratio
        FROM {DB}.request_logs
        WHERE {where_logs}
        GROUP BY time, platform
        ORDER BY time""")
            ],
            "percentunit",
            ds=CH,
        ),
        w=12,
    )

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
        LEFT JOIN {APP_NAMES} AS n ON n.sdk_app_id = s.sdk_app_id
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


# --- 3. Pipeline health --------------------------------------------------------------------------


def pipeline_health() -> dashboard.Dashboard:
    spec = load_spec()
    p = spec.pipeline
    board = new_board(
        "imtel-pipeline-health",
        "IM telemetry pipeline health",
        "Kafka -> workers -> ClickHouse: throughput, dead letters, lag, inserts, freshness, restarts.",
        "now-3h",
        "30s",
    )
    lay = Layout(board)
    lag = f"max by (topic, partition) (imtel_consumer_lag{{{JOB}}})"
    lay.row("Status")
    lay.add(
        stat_panel("Workers up", promql(f"sum(up{{{JOB}}})"), steps=((None, "red"), (1, "green"))), w=4, h=4
    )
    lay.add(
        stat_panel(
            "ClickHouse reachable (workers)",
            promql(f"sum(imtel_clickhouse_up{{{JOB}}})"),
            steps=((None, "red"), (1, "green")),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat_panel(
            "Workers paused",
            promql(f"sum(imtel_consumption_paused{{{JOB}}})"),
            steps=((None, "green"), (1, "red")),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat_panel(
            "Consumer lag (records)",
            promql(f"sum({lag})"),
            steps=((None, "green"), (float(p["consumer_lag_records"]), "red")),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat_panel(
            "Freshness p99 (5m)",
            promql(
                f"histogram_quantile(0.99, sum by (le) (rate(imtel_freshness_seconds_bucket{{{JOB}}}[5m])))"
            ),
            "s",
            steps=((None, "green"), (float(p["freshness_p99_seconds"]), "red")),
        ),
        w=4,
        h=4,
    )
    lay.add(
        stat_panel(
            "Since last write",
            promql(f"time() - max(imtel_last_write_timestamp_seconds{{{JOB}}})"),
            "s",
            steps=((None, "green"), (float(p["write_stall_seconds"]), "red")),
        ),
        w=4,
        h=4,
    )

    lay.row("Throughput")
    lay.add(
        ts(
            "Records in (consumed) by topic",
            [
                promql(
                    f"sum by (topic) (rate(imtel_records_consumed_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}}",
                ),
                promql(
                    f"sum by (topic) (rate(imtel_messages_consumed_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}} messages",
                    "B",
                ),
                promql(
                    # 0 until a replay skips anything (the counter only exists once it did)
                    f"sum by (topic) (rate(imtel_records_skipped_total{{{JOB}}}[$__rate_interval]))\n"
                    f"or sum by (topic) (rate(imtel_records_consumed_total{{{JOB}}}[$__rate_interval])) * 0",
                    "{{topic}} skipped (replay)",
                    "C",
                ),
            ],
            "ops",
        ),
        w=12,
    )
    lay.add(
        ts(
            "Rows out (acknowledged by ClickHouse) by table",
            [
                promql(
                    f"sum by (table) (rate(imtel_rows_written_total{{{JOB}}}[$__rate_interval]))", "{{table}}"
                ),
                promql(
                    f"sum(rate(imtel_offset_commits_total{{{JOB}}}[$__rate_interval]))", "offset commits", "B"
                ),
            ],
            "ops",
        ),
        w=12,
    )
    lay.add(
        ts(
            "Dead letters by reason",
            [
                promql(
                    f"sum by (topic, reason) (rate(imtel_records_invalid_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}} {{reason}}",
                ),
                promql(
                    f"sum by (topic) (rate(imtel_dead_letters_produced_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}} produced",
                    "B",
                ),
            ],
            "ops",
            stack=False,
        ),
        w=12,
    )
    lay.add(
        ts(
            "Dead-letter ratio by topic",
            [
                promql(
                    f"sum by (topic) (rate(imtel_records_invalid_total{{{JOB}}}[$__rate_interval]))\n"
                    f"/ sum by (topic) (rate(imtel_records_consumed_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}}",
                )
            ],
            "percentunit",
            f"Alert above {float(p['dead_letter_ratio']):.0%} for 10 minutes.",
        ),
        w=12,
    )

    lay.row("Kafka consumer")
    lay.add(ts("Consumer lag by partition", [promql(lag, "{{topic}}/{{partition}}")], "short"), w=12)
    lay.add(
        ts(
            "Assigned partitions by worker",
            [
                promql(
                    f"sum by (instance, topic) (imtel_assigned_partitions{{{JOB}}})", "{{instance}} {{topic}}"
                )
            ],
        ),
        w=12,
    )

    lay.row("ClickHouse inserts")
    lay.add(
        ts(
            "Insert latency p50 / p99 by table",
            [
                promql(
                    f"histogram_quantile({q}, sum by (table, le) "
                    f"(rate(imtel_insert_duration_seconds_bucket{{{JOB}}}[$__rate_interval])))",
                    f"{{{{table}}}} p{round(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.99, "B"))
            ],
            "s",
        ),
        w=8,
    )
    lay.add(
        ts(
            "Batch size (rows per insert)",
            [
                promql(
                    f"sum by (table) (rate(imtel_insert_batch_rows_sum{{{JOB}}}[$__rate_interval]))\n"
                    f"/ sum by (table) (rate(imtel_insert_batch_rows_count{{{JOB}}}[$__rate_interval]))",
                    "{{table}} avg",
                ),
                promql(
                    f"histogram_quantile(0.99, sum by (table, le) "
                    f"(rate(imtel_insert_batch_rows_bucket{{{JOB}}}[$__rate_interval])))",
                    "{{table}} p99",
                    "B",
                ),
            ],
        ),
        w=8,
    )
    lay.add(
        ts(
            "Insert failures by kind",
            [
                promql(
                    # a flat 0 per table while nothing failed, rather than "No data"
                    f"sum by (table, kind) (rate(imtel_insert_failures_total{{{JOB}}}[$__rate_interval]))\n"
                    f"or on (table) sum by (table) (rate(imtel_rows_written_total{{{JOB}}}[$__rate_interval])) * 0",
                    "{{table}} {{kind}}",
                )
            ],
            "ops",
        ),
        w=8,
    )

    lay.row("Freshness")
    lay.add(
        ts(
            "End-to-end freshness (event time -> queryable)",
            [
                promql(
                    f"histogram_quantile({q}, sum by (le) (rate(imtel_freshness_seconds_bucket{{{JOB}}}"
                    "[$__rate_interval])))",
                    f"p{round(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            "s",
        ),
        w=12,
    )
    lay.add(
        ts(
            "Time since last acknowledged write",
            [
                promql(
                    f"time() - max by (instance) (imtel_last_write_timestamp_seconds{{{JOB}}})",
                    "{{instance}}",
                )
            ],
            "s",
        ),
        w=12,
    )

    lay.row("Workers")
    lay.add(
        ts(
            "Restarts (process start time changes)",
            [promql(f"changes(process_start_time_seconds{{{JOB}}}[$__rate_interval])", "{{instance}}")],
        ),
        w=6,
    )
    lay.add(
        ts(
            "Rebalances",
            [
                promql(
                    f"sum by (event) (increase(imtel_rebalances_total{{{JOB}}}[$__rate_interval]))",
                    "{{event}}",
                ),
                promql(
                    f"sum(increase(imtel_recovery_rebuilt_minutes_total{{{JOB}}}[$__rate_interval]))",
                    "recovery: minutes rebuilt",
                    "B",
                ),
            ],
        ),
        w=6,
    )
    lay.add(
        ts(
            "CPU",
            [promql(f"rate(process_cpu_seconds_total{{{JOB}}}[$__rate_interval])", "{{instance}}")],
            "percentunit",
        ),
        w=6,
    )
    lay.add(
        ts("Memory (RSS)", [promql(f"process_resident_memory_bytes{{{JOB}}}", "{{instance}}")], "bytes"), w=6
    )
    lay.add(
        table_panel(
            "Versions running",
            [promql(f"count by (version) (imtel_build_info{{{JOB}}})", "{{version}}", instant=True)],
            ds=PROM,
        ),
        w=24,
        h=5,
    )
    return board


# --- 4. Data retention ---------------------------------------------------------------------------

TIME_COLUMNS = {
    "request_logs": "request_time",
    "monitoring_samples": "window_start",
    "interface_stats_1m": "minute",
    "dead_letters": "ingest_time",
    "applications": "updated_at",
}


def retention_tables() -> list[tuple[str, str, int]]:
    """(table, policy name, retention days) for every table the policy names, in policy order."""
    return [
        (t, c.policy_name, c.retention_days)
        for c in load_policy().categories.values()
        for t in c.tables
        if t in TIME_COLUMNS
    ]


def data_retention() -> dashboard.Dashboard:
    board = new_board(
        "imtel-data-retention",
        "IM telemetry data retention",
        "Rows, oldest row and expiry of every table against the retention policy "
        "(schemas/retention.yaml); parts and disk usage.",
        "now-8d",
        "5m",
    )
    lay = Layout(board)
    tables = retention_tables()
    lay.row("Against the policy")
    union = "\nUNION ALL\n".join(
        f"SELECT '{t}' AS table, '{name}' AS policy, {days} AS policy_days, count() AS rows,\n"
        f"       min({TIME_COLUMNS[t]}) AS oldest, max({TIME_COLUMNS[t]}) AS newest,\n"
        f"       dateDiff('second', min({TIME_COLUMNS[t]}), now()) / 86400 AS oldest_age_days\n"
        f"FROM {DB}.{t}"
        for t, name, days in tables
        if t != "applications"
    )
    lay.add(
        table_panel(
            "Oldest row per table vs policy",
            [SQL(union, table_format=True)],
            "oldest_age_days may exceed policy_days by up to one partition (a day for logs, an hour "
            "for monitoring data) plus the hourly TTL merge; the ImtelRetentionExceeded alert "
            "allows for that. Configuration Data is kept while an app is in use.",
        ),
        w=24,
        h=7,
    )
    ages = " or\n".join(
        f'max by (table) (imtel_oldest_row_age_seconds{{{JOB},table="{t}"}}) / {days * 86400}'
        for t, _, days in tables
        if t != "applications"
    )
    lay.add(
        bar_panel(
            "Oldest row age / retention (Prometheus)",
            [promql(ages, "{{table}}", instant=True)],
            "percentunit",
            "1 = the oldest row is as old as the policy allows.",
            ((None, "green"), (0.9, "orange"), (1, "red")),
            max_val=1.2,
        ),
        w=12,
    )
    lay.add(
        table_panel(
            "Applications registry (Configuration Data)",
            [
                SQL(
                    f"""
        SELECT status, count() AS apps, countIf(terminated_at IS NOT NULL) AS terminated,
               min(terminated_at) AS oldest_termination
        FROM (
            SELECT sdk_app_id, argMax(status, updated_at) AS status,
                   argMax(terminated_at, updated_at) AS terminated_at
            FROM {DB}.applications
            GROUP BY sdk_app_id
        )
        GROUP BY status
        ORDER BY status""",
                    table_format=True,
                )
            ],
            "Terminated apps are deleted 60 days after termination (TTL).",
        ),
        w=12,
    )

    lay.row("Storage (system.parts)")
    lay.add(
        table_panel(
            "Parts and disk usage per table",
            [
                SQL(
                    f"""
        SELECT table, count() AS parts, uniqExact(partition) AS partitions, sum(rows) AS rows,
               sum(bytes_on_disk) AS bytes_on_disk,
               sum(data_uncompressed_bytes) / nullIf(sum(data_compressed_bytes), 0) AS compression_ratio,
               minIf(delete_ttl_info_min, delete_ttl_info_min > toDateTime(0)) AS next_ttl_expiry
        FROM system.parts
        WHERE database = '{DB}' AND active
        GROUP BY table
        ORDER BY bytes_on_disk DESC""",
                    table_format=True,
                )
            ],
            unit="short",
        ),
        w=14,
        h=8,
    )
    lay.add(
        bar_panel(
            "Disk usage per table",
            [
                SQL(
                    f"""
        SELECT table, sum(bytes_on_disk) AS bytes_on_disk
        FROM system.parts
        WHERE database = '{DB}' AND active
        GROUP BY table
        ORDER BY bytes_on_disk DESC""",
                    table_format=True,
                )
            ],
            "bytes",
            ds=CH,
        ),
        w=10,
        h=8,
    )
    lay.add(
        table_panel(
            "Partitions (oldest first)",
            [
                SQL(
                    f"""
        SELECT table, partition, count() AS parts, sum(rows) AS rows, sum(bytes_on_disk) AS bytes_on_disk,
               min(delete_ttl_info_min) AS ttl_expires
        FROM system.parts
        WHERE database = '{DB}' AND active AND table != 'schema_migrations'
        GROUP BY table, partition
        ORDER BY table, partition
        LIMIT 500""",
                    table_format=True,
                )
            ],
        ),
        w=24,
        h=9,
    )

    lay.row("Rows over time")
    for t, _, _ in tables:
        if t == "applications":
            continue
        col = TIME_COLUMNS[t]
        lay.add(
            ts(
                f"{t} rows by event time",
                [
                    SQL(f"""
            SELECT $__timeInterval({col}) AS time, count() AS rows
            FROM {DB}.{t}
            WHERE $__timeFilter({col})
            GROUP BY time
            ORDER BY time""")
                ],
                ds=CH,
                interval="1h",
            ),
            w=12,
            h=7,
        )
    return board


BUILDERS = (api_overview, app_drilldown, pipeline_health, data_retention)


# --- output ------------------------------------------------------------------------------------


def build_all() -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON (as Grafana imports it)."""
    out = {}
    for make in BUILDERS:
        model = json.loads(json.dumps(make().build(), cls=JSONEncoder))
        out[model["uid"]] = model
    return out


def render_all() -> dict[str, str]:
    """File name -> file content of every dashboard."""
    return {
        f"{uid}.json": json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for uid, model in build_all().items()
    }


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_all().items():
        (out_dir / name).write_text(text)
        paths.append(out_dir / name)
    return paths


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """Files under out_dir that differ from, are missing from, or are not in the generated set."""
    expected = render_all()
    bad = [n for n, t in expected.items() if not (out_dir / n).exists() or (out_dir / n).read_text() != t]
    bad += sorted(p.name for p in out_dir.glob("*.json") if p.name not in expected)
    return bad


# --- query listing and macro expansion -----------------------------------------------------------

ALL = "$__all"


@dataclass(frozen=True)
class PanelQuery:
    """One query of a panel (or of a template variable) with its expansion."""

    dashboard: str  # dashboard uid
    panel: str  # panel title, or "variable <name>"
    ref_id: str
    kind: str  # "promql" | "clickhouse"
    raw: str  # as stored in the dashboard JSON
    expanded: str  # variables and macros replaced, ready for the engine
    instant: bool = False


def _values(variables: Mapping[str, Sequence[str] | str | None], name: str) -> list[str] | None:
    """Selected values of a variable; None means All (or not given)."""
    value = variables.get(name)
    if value is None or value == ALL or value == [ALL]:
        return None
    return [value] if isinstance(value, str) else list(value)


def _format(
    values: list[str] | None, fmt: str, all_values: Sequence[str] | None, all_value: str | None
) -> str:
    if values is None:
        if all_value is not None:
            return all_value
        values = list(all_values or [])
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "regex":  # Grafana's default for multi-value variables in PromQL
        escaped = [re.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\1", v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    raise ValueError(f"unsupported variable format {fmt!r}")


_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)")


def substitute(
    text: str,
    variables: Mapping[str, Sequence[str] | str | None],
    default_fmt: str,
    all_values: Mapping[str, Sequence[str]] | None = None,
    all_value: Mapping[str, str] | None = None,
) -> str:
    """Replace ``$var`` / ``${var}`` / ``${var:fmt}`` like Grafana's template service."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        fmt = m.group(2) or default_fmt
        return _format(
            _values(variables, name), fmt, (all_values or {}).get(name), (all_value or {}).get(name)
        )

    return _VAR.sub(repl, text)


def _macro_args(text: str, open_paren: int) -> tuple[list[str], int]:
    """Arguments of the macro whose '(' is at open_paren (commas at depth 1 split), and the end index."""
    depth, args, start = 0, [], open_paren + 1
    for i in range(open_paren, len(text)):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(text[start:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(text[start:i])
            start = i + 1
    raise ValueError(f"unbalanced macro arguments in: {text[open_paren : open_paren + 80]!r}")


def _replace_macro(sql: str, name: str, fn: Any) -> str:
    token = f"$__{name}("
    while (at := sql.find(token)) != -1:
        args, end = _macro_args(sql, at + len(token) - 1)
        sql = sql[:at] + fn([a.strip() for a in args]) + sql[end:]
    return sql


def interval_seconds(start: datetime, end: datetime, min_interval_s: int = 1, max_points: int = 1000) -> int:
    """Grafana-like $__interval: range / max data points, rounded up to a whole second, >= min."""
    span = max((end - start).total_seconds(), 1)
    return max(min_interval_s, int(-(-span // max_points)))


def expand_sql(
    sql: str,
    start: datetime,
    end: datetime,
    variables: Mapping[str, Sequence[str] | str | None] | None = None,
    interval_s: int | None = None,
) -> str:
    """Expand the grafana-clickhouse-datasource macros and template variables.

    Order as in the plugin: ``$__conditionalAll`` (frontend, before variables), variables, then the
    backend macros ``$__timeFilter``, ``$__timeFilter_ms``, ``$__timeInterval``, ``$__timeInterval_ms``,
    ``$__interval_s``, ``$__fromTime``, ``$__toTime``, ``$__dateFilter``."""
    variables = variables or {}
    f, t = int(start.timestamp()), int(end.timestamp())
    f_ms, t_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    step = interval_s or interval_seconds(start, end)

    def conditional_all(args: list[str]) -> str:
        if len(args) != 2:
            raise ValueError(f"$__conditionalAll takes 2 arguments, got {args}")
        m = re.search(r"\$\{?(\w+)", args[1])
        return "1=1" if m is None or _values(variables, m.group(1)) is None else args[0]

    sql = _replace_macro(sql, "conditionalAll", conditional_all)
    sql = substitute(sql, variables, "singlequote", all_value={})
    sql = _replace_macro(
        sql,
        "timeFilter_ms",
        lambda a: (
            f"{a[0]} >= fromUnixTimestamp64Milli({f_ms}) AND {a[0]} <= fromUnixTimestamp64Milli({t_ms})"
        ),
    )
    sql = _replace_macro(
        sql, "timeFilter", lambda a: f"{a[0]} >= toDateTime({f}) AND {a[0]} <= toDateTime({t})"
    )
    sql = _replace_macro(
        sql,
        "dateFilter",
        lambda a: f"{a[0]} >= toDate('{start:%Y-%m-%d}') AND {a[0]} <= toDate('{end:%Y-%m-%d}')",
    )
    sql = _replace_macro(
        sql,
        "timeInterval_ms",
        lambda a: f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {step * 1000} millisecond)",
    )
    sql = _replace_macro(
        sql, "timeInterval", lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {step} second)"
    )
    sql = (
        sql.replace("$__fromTime", f"toDateTime({f})")
        .replace("$__toTime", f"toDateTime({t})")
        .replace("$__interval_s", str(step))
    )
    if "$" in sql:
        raise ValueError(f"unexpanded macro or variable left in SQL: {sql}")
    return sql


def expand_promql(
    expr: str,
    start: datetime,
    end: datetime,
    variables: Mapping[str, Sequence[str] | str | None] | None = None,
    scrape_interval_s: int = 15,
    interval_s: int | None = None,
) -> str:
    """Expand Grafana's PromQL variables: ``$__rate_interval``, ``$__interval``, ``$__range`` and
    template variables (multi-value as a regex; All as the variable's all value, ``.*``)."""
    variables = variables or {}
    step = interval_s or max(scrape_interval_s, interval_seconds(start, end))
    rng = max(int((end - start).total_seconds()), 1)
    expr = (
        expr.replace("$__rate_interval", f"{max(step + scrape_interval_s, 4 * scrape_interval_s)}s")
        .replace("$__interval", f"{step}s")
        .replace("$__range", f"{rng}s")
    )
    expr = substitute(expr, variables, "regex", all_value={k: ".*" for k in ("sdk_app_id", "interface")})
    if "$" in expr:
        raise ValueError(f"unexpanded variable left in PromQL: {expr}")
    return expr


def _min_interval_s(panel: Mapping[str, Any]) -> int:
    text = panel.get("interval") or ""
    m = re.match(r"^(\d+)([smhd])$", text)
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] if m else 1


def _panels(model: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(
    start: datetime | None = None,
    end: datetime | None = None,
    variables: Mapping[str, Sequence[str] | str | None] | None = None,
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[PanelQuery]:
    """Every query of every dashboard (panels and template variables), expanded for a time range
    (default: the last hour) and variable values (default: All)."""
    end = end or datetime.now(UTC).replace(microsecond=0)
    start = start or end - timedelta(hours=1)
    variables = variables or {}
    out = []
    for uid, model in (dashboards or build_all()).items():
        for var in model.get("templating", {}).get("list", []):
            if var.get("datasource", {}).get("type") == CH.type_val:
                out.append(
                    PanelQuery(
                        uid,
                        f"variable {var['name']}",
                        "var",
                        "clickhouse",
                        var["query"],
                        expand_sql(var["query"], start, end, variables),
                    )
                )
        for panel in _panels(model):
            for target in panel.get("targets", []):
                if "rawSql" in target:
                    step = interval_seconds(start, end, _min_interval_s(panel))
                    out.append(
                        PanelQuery(
                            uid,
                            panel["title"],
                            target["refId"],
                            "clickhouse",
                            target["rawSql"],
                            expand_sql(target["rawSql"], start, end, variables, step),
                        )
                    )
                elif "expr" in target:
                    out.append(
                        PanelQuery(
                            uid,
                            panel["title"],
                            target["refId"],
                            "promql",
                            target["expr"],
                            expand_promql(target["expr"], start, end, variables),
                            bool(target.get("instant")),
                        )
                    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.monitoring.dashboards", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if grafana/dashboards/*.json is stale")
    parser.add_argument(
        "--list", action="store_true", help="print every panel query, expanded for the last hour"
    )
    args = parser.parse_args(argv)
    if args.list:
        for q in panel_queries():
            print(f"-- {q.dashboard} / {q.panel} [{q.ref_id}] ({q.kind})\n{q.expanded}\n")
        return 0
    if args.check:
        bad = stale()
        for name in bad:
            print(f"grafana/dashboards/{name} is stale: run `python -m pipeline.monitoring.dashboards`",
                  file=sys.stderr)
        return 1 if bad else 0
    for path in write():
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
