"""The panel toolkit the dashboards are built from: datasources, PromQL and ClickHouse query builders,
panel constructors, the grid layout and the common dashboard frame.

Real-time panels read Prometheus; history and drill-downs read ClickHouse through the
``grafana-clickhouse-datasource`` plugin (raw SQL with its macros), for which the SDK has no builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

DB = "imtel"
JOB = 'job="imtel"'
PROM = dash_m.DataSourceRef(type_val="prometheus", uid="imtel-prometheus")
CH = dash_m.DataSourceRef(type_val="grafana-clickhouse-datasource", uid="imtel-clickhouse")
CH_PLUGIN_VERSION = "4.10.1"
TAGS = ["imtel"]
# Threshold steps of a panel: (from value, colour), the first from None (minus infinity).
Steps = Sequence[tuple[float | None, str]]
GREEN: Steps = ((None, "green"),)
Query = cogbuilder.Builder[Any]


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


_Panel = TypeVar("_Panel", timeseries.Panel, stat.Panel, table.Panel, bargauge.Panel)


def _frame(
    panel: _Panel, title: str, ds: dash_m.DataSourceRef, unit: str, desc: str, targets: Sequence[Query]
) -> _Panel:
    """What every panel has: a title, a datasource, a unit, the description when there is one, the queries."""
    panel = panel.title(title).datasource(ds).unit(unit)
    if desc:
        panel = panel.description(desc)
    for target in targets:
        panel.with_target(target)
    return panel


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
    if stack:
        panel = panel.stacking(common.StackingConfig().mode(common_m.StackingMode.NORMAL)).fill_opacity(40)
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if interval:
        panel = panel.interval(interval)
    return _frame(panel, title, ds, unit, desc, targets)


def red_from(limit: float) -> Steps:
    """Green, red from ``limit`` up."""
    return ((None, "green"), (limit, "red"))


_Reduced = TypeVar("_Reduced", stat.Panel, bargauge.Panel)


def _last_value(panel: _Reduced, steps: Steps) -> _Reduced:
    """A panel of each series' last value, coloured by threshold steps."""
    thresholds = (
        dashboard.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=v, color=c) for v, c in steps])
    )
    return panel.thresholds(thresholds).reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))


def stat_panel(
    title: str,
    target: cogbuilder.Builder[Any],
    unit: str = "short",
    desc: str = "",
    steps: Steps = GREEN,
    ds: dash_m.DataSourceRef = PROM,
) -> stat.Panel:
    panel = (
        _last_value(stat.Panel(), steps)
        .color_mode(common_m.BigValueColorMode.VALUE)
        .graph_mode(common_m.BigValueGraphMode.AREA)
    )
    return _frame(panel, title, ds, unit, desc, [target])


def table_panel(
    title: str,
    targets: Sequence[cogbuilder.Builder[Any]],
    desc: str = "",
    ds: dash_m.DataSourceRef = CH,
    unit: str = "short",
) -> table.Panel:
    return _frame(table.Panel(), title, ds, unit, desc, targets)


def bar_panel(
    title: str,
    targets: Sequence[cogbuilder.Builder[Any]],
    unit: str = "short",
    desc: str = "",
    steps: Steps = GREEN,
    ds: dash_m.DataSourceRef = PROM,
    max_val: float | None = None,
) -> bargauge.Panel:
    panel = (
        _last_value(bargauge.Panel(), steps)
        .orientation(common_m.VizOrientation.HORIZONTAL)
        .display_mode(common_m.BarGaugeDisplayMode.GRADIENT)
    )
    if max_val is not None:
        panel = panel.min(0).max(max_val)
    return _frame(panel, title, ds, unit, desc, targets)


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
