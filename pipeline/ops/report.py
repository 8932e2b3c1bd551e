"""Incident-review report: one app, one time range, one self-contained HTML file.

``collect`` asks the named queries (``pipeline/ops/queries.py``) through a *runner* — a function from a
query name and its raw parameters to ``{"columns", "rows"}`` — so the same report comes from a running
worker's HTTP endpoint (it owns the embedded store) or straight from a store. ``render`` is pure: data
in, HTML out, with inline SVG charts (``pipeline/ops/charts.py``) and inline CSS; no script, no font, no
fetch (a Content-Security-Policy forbids any), so the file can be attached to a ticket and opened
offline years later. Everything that comes from data (app names from the registry, exception texts) is
escaped.

Sections: summary (requests, success rate, error rate against the previous period of the same length,
latency percentiles), latency percentiles over time, error rate over time, requests and failures over
time, top exception causes, failing and slow interfaces, regions and platforms, registry entry.

The charts mark incomplete buckets (``incomplete_buckets``): the step that is still running when the
report is generated (``ReportData.generated``, the clock) or that the range cuts. Its counts are partial:
the requests-and-failures chart leaves them out (a shaded band says the step is incomplete) instead
of drawing a sudden drop in traffic; the ratio charts (latency percentiles, error rate), which a part
of a step still estimates, draw them hollow and dashed over the same band.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from pipeline.ops import charts, queries

Runner = Callable[[str, dict[str, str]], dict[str, Any]]
Row = dict[str, Any]
STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
TARGET_POINTS = 120
DEFAULT_RANGE = timedelta(hours=1)


class ReportError(ValueError):
    """A report request that cannot be served; the message names the parameter."""


@dataclass(frozen=True)
class ReportRequest:
    """Which app and which range, already validated."""

    app: int
    start: datetime
    end: datetime

    @property
    def step_s(self) -> int:
        return choose_step(self.start, self.end)


def choose_step(start: datetime, end: datetime, points: int = TARGET_POINTS) -> int:
    """The smallest round step that draws the range in at most ``points`` points per series."""
    span = (end - start).total_seconds()
    return next((s for s in STEPS_S if span / s <= points), STEPS_S[-1])


def parse_request(raw: dict[str, str], now: datetime | None = None) -> ReportRequest:
    """``app`` (required), ``from`` (default: an hour before ``to``), ``to`` (default: now)."""
    now = now or datetime.now(UTC)
    unknown = set(raw) - {"app", "from", "to"}
    if unknown:
        raise ReportError(f"report has no parameter {sorted(unknown)[0]!r}; it takes app, from, to")
    if "app" not in raw:
        raise ReportError("parameter app is required: an sdk_app_id")
    try:
        app = queries._whole(raw["app"])
    except ValueError:
        app = 0
    if not 1 <= app <= 4_294_967_295:
        raise ReportError("parameter app must be an sdk_app_id (1..4294967295)")
    times: dict[str, datetime | None] = {}
    for key in ("from", "to"):
        try:
            times[key] = queries.parse_time(raw[key], now) if key in raw else None
        except (ValueError, OverflowError, OSError):
            raise ReportError(f"parameter {key} must be {queries.TIME_RULE}") from None
    end = times["to"] or now
    start = times["from"] or end - DEFAULT_RANGE
    if start >= end:
        raise ReportError("parameter from must be before to")
    if end - start > queries.MAX_RANGE:
        raise ReportError(f"parameter from must be at most {queries.MAX_RANGE.days} days before to")
    return ReportRequest(app, start, end)


@dataclass
class ReportData:
    """Everything a report shows, as the named queries returned it."""

    request: ReportRequest
    generated: datetime
    app_name: str
    summary: Row | None
    change: Row | None
    series: list[Row] = field(default_factory=list)
    causes: list[Row] = field(default_factory=list)
    failing: list[Row] = field(default_factory=list)
    slow: list[Row] = field(default_factory=list)
    regions: list[Row] = field(default_factory=list)
    platforms: list[Row] = field(default_factory=list)
    registry: Row | None = None


def _rows(result: dict[str, Any]) -> list[Row]:
    return [dict(zip(result["columns"], r, strict=True)) for r in result["rows"]]


def collect(run: Runner, req: ReportRequest, now: datetime | None = None) -> ReportData:
    """Ask every query the report needs, for one app and one absolute range (so all sections agree)."""
    base = {"app": str(req.app), "from": req.start.isoformat(), "to": req.end.isoformat()}

    def rows(name: str, **extra: str) -> list[Row]:
        return _rows(run(name, {**base, **extra}))

    summary = next(iter(rows("app_health", min_requests="0", limit="1")), None)
    registry = next(iter(_rows(run("apps", {"app": str(req.app), "limit": "1"}))), None)
    name = (registry or {}).get("name") or (summary or {}).get("app_name") or str(req.app)
    return ReportData(
        request=req,
        generated=now or datetime.now(UTC),
        app_name=str(name),
        summary=summary,
        change=next(iter(rows("error_rate_change", min_requests="0", limit="1")), None),
        series=rows("app_timeseries", step=str(req.step_s)),
        causes=rows("top_causes", limit="10"),
        failing=rows("top_failing", limit="10"),
        slow=rows("slow_interfaces", min_requests="1", limit="10"),
        regions=rows("breakdown", by="region", min_requests="0", limit="50"),
        platforms=rows("breakdown", by="platform", min_requests="0", limit="50"),
        registry=registry,
    )


def store_runner(store: Any) -> Runner:
    """A runner that queries a store directly (the process must own it)."""

    def run(name: str, raw: dict[str, str]) -> dict[str, Any]:
        return queries.run(store, name, queries.parse_params(name, raw)).as_dict()

    return run


# --- rendering (pure) ------------------------------------------------------------------------------


def _pct(v: Any) -> str:
    return "\u2013" if v is None else f"{float(v) * 100:.2f}%"


def _ms(v: Any) -> str:
    return "\u2013" if v is None else f"{float(v):,.0f} ms"


def _count(v: Any) -> str:
    return "\u2013" if v is None else f"{int(v):,}"


def _text(v: Any) -> str:
    if v is None:
        return "\u2013"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v if str(x)) or "\u2013"
    return str(v)


def _when(v: Any) -> str:
    if v is None:
        return "\u2013"
    return _utc(v).strftime("%Y-%m-%d %H:%M:%S")


def _utc(v: Any) -> datetime:
    moment = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _pp(v: Any) -> str:
    if v is None:
        return "\u2013"
    return f"{float(v) * 100:+.2f} pp"


Column = tuple[str, str, Callable[[Any], str]]


def _table(table_id: str, columns: Sequence[Column], rows: Sequence[Row], empty: str) -> str:
    if not rows:
        return f'<p class="empty" data-table="{table_id}">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(fmt(row.get(key)))}</td>" for key, _, fmt in columns) + "</tr>"
        for row in rows)
    return f'<table data-table="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _card(title: str, value: str, note: str = "", tone: str = "") -> str:
    note_html = f"<small>{escape(note)}</small>" if note else ""
    return f'<div class="card {tone}"><span>{escape(title)}</span><b>{escape(value)}</b>{note_html}</div>'


def _series(rows: Sequence[Row], key: str, scale: float = 1.0) -> list[tuple[float, float | None]]:
    out = []
    for row in rows:
        value = row.get(key)
        number = None if value is None else float(value) * scale
        out.append((_utc(row["time"]).timestamp(), number if number is None or math.isfinite(number) else None))
    return out


def incomplete_buckets(rows: Sequence[Row], req: ReportRequest, step: int, now: datetime) -> list[tuple[float, float]]:
    """[start, end) of the series' buckets that do not hold a whole step of data: the one the clock
    (``now``) or the end of the range cuts (the last, still filling), and one starting before the range
    (its first part is outside the query)."""
    start, limit = req.start.timestamp(), min(req.end, now).timestamp()
    spans = []
    for row in rows:
        t = _utc(row["time"]).timestamp()
        if t < start or t + step > limit:
            spans.append((t, t + step))
    return spans


def _whole(points: list[tuple[float, float | None]], spans: Sequence[tuple[float, float]]
           ) -> list[tuple[float, float | None]]:
    """The points outside incomplete buckets (a partial count is not comparable with whole steps)."""
    return [(t, v) for t, v in points if not any(a <= t < b for a, b in spans)]


def _gaps(points: list[tuple[float, float | None]], step: int) -> list[tuple[float, float | None]]:
    """Insert a gap where steps are missing (no requests), so a line does not bridge an outage."""
    out: list[tuple[float, float | None]] = []
    for t, v in points:
        if out and t - out[-1][0] > step * 1.5:
            out.append((out[-1][0] + step, None))
        out.append((t, v))
    return out


def _summary(d: ReportData) -> str:
    s, c = d.summary, d.change
    if s is None:
        return '<p class="empty" data-table="summary">No requests from this app in the range.</p>'
    rate_now = c.get("error_rate_now") if c else 1 - float(s["success_rate"])
    before = c.get("error_rate_before") if c else None
    change = c.get("change") if c else None
    worse = change is not None and float(change) > 0.001
    cards = [
        _card("Requests", _count(s.get("n_requests")), f"{_count(s.get('n_failures'))} failed"),
        _card("Success rate", _pct(s.get("success_rate"))),
        _card("Error rate", _pct(rate_now), f"previous period {_pct(before)} ({_pp(change)})",
              "bad" if worse else ""),
        _card("Latency p50", _ms(s.get("p50_ms"))),
        _card("Latency p95", _ms(s.get("p95_ms"))),
        _card("Latency p99", _ms(s.get("p99_ms")), f"max {_ms(s.get('max_ms'))}"),
    ]
    return f'<div class="cards" data-table="summary">{"".join(cards)}</div>'


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:20px 32px}header h1{margin:0 0 6px;font-size:22px}
header p{margin:0;color:#c9cfdb;font-size:13px}main{padding:8px 32px 32px;max-width:1000px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:16px;margin:0 0 12px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 120px;border:1px solid #e1e4ea;border-radius:6px;padding:10px 12px}
.card span{display:block;font-size:12px;color:#5b6474}.card b{display:block;font-size:20px;margin:4px 0}
.card small{color:#5b6474;font-size:11px}.card.bad{border-color:#c23b5a;background:#fdf2f4}
table{border-collapse:collapse;width:100%;font-size:12px}th,td{text-align:left;padding:5px 8px;
border-bottom:1px solid #eceef2;vertical-align:top}th{background:#f2f4f7;font-weight:600}
svg.chart{max-width:100%;height:auto;display:block}.empty{color:#6c757d;font-style:italic}
footer{color:#6c757d;font-size:12px;padding:0 32px 24px}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def render(d: ReportData) -> str:
    """The report as one HTML document (no external resource of any kind)."""
    req, step = d.request, d.request.step_s
    x0, x1 = req.start.timestamp(), req.end.timestamp()
    series = d.series
    partial = incomplete_buckets(series, req, step, d.generated)
    latency = charts.line_chart(
        "latency", "Latency percentiles over time (ms)",
        [charts.Series(f"p{q}", _gaps(_series(series, f"p{q}_ms"), step), color)
         for q, color in ((50, charts.PALETTE[0]), (95, charts.PALETTE[1]), (99, charts.PALETTE[2]))],
        x0, x1, lambda v: f"{v:,.0f} ms", incomplete=partial)
    errors = charts.line_chart(
        "error-rate", "Error rate over time",
        [charts.Series("error rate", _gaps(_series(series, "error_rate"), step), charts.PALETTE[2])],
        x0, x1, lambda v: f"{v * 100:.3g}%", incomplete=partial)
    volume = charts.line_chart(
        "requests", "Requests and failures per step",
        [charts.Series("requests", _gaps(_whole(_series(series, "requests"), partial), step), charts.PALETTE[0]),
         charts.Series("failures", _gaps(_whole(_series(series, "failures"), partial), step), charts.PALETTE[2])],
        x0, x1, lambda v: f"{v:,.0f}", incomplete=partial)
    causes = charts.bar_chart(
        "top-causes", "Top exception causes (failed requests)",
        [(f"{r['error_code']} \u00b7 {r['exception'] or '(no cause given)'}", float(r["failures"]))
         for r in d.causes], lambda v: f"{v:,.0f}")
    title = f"{d.app_name} ({req.app})" if d.app_name != str(req.app) else str(req.app)
    span = f"{_when(req.start)} \u2192 {_when(req.end)} UTC"
    registry = ""
    if d.registry:
        r = d.registry
        registry = (f"Registry: status {escape(_text(r.get('status')))}, created {escape(_when(r.get('created_at')))}"
                    + (f", terminated {escape(_when(r.get('terminated_at')))}" if r.get("terminated_at") else ""))
    step_text = (f"{step} s" if step < 60 else f"{step // 60} min") + (" (incomplete steps shaded)" if partial else "")
    cause_cols: list[Column] = [
        ("error_code", "Code", _text), ("exception", "Cause", _text), ("failures", "Failures", _count),
        ("share_of_app_failures", "Share", _pct), ("top_interfaces", "Interfaces", _text),
        ("top_regions", "Regions", _text), ("first_seen", "First seen (UTC)", _when),
        ("last_seen", "Last seen (UTC)", _when)]
    failing_cols: list[Column] = [
        ("interface", "Interface", _text), ("failures", "Failures", _count), ("requests", "Requests", _count),
        ("error_rate", "Error rate", _pct), ("top_causes", "Top causes", _text), ("top_codes", "Codes", _text)]
    slow_cols: list[Column] = [
        ("interface", "Interface", _text), ("requests", "Requests", _count), ("avg_ms", "Avg", _ms),
        ("p50_ms", "p50", _ms), ("p95_ms", "p95", _ms), ("p99_ms", "p99", _ms), ("max_ms", "Max", _ms)]
    dim_cols: list[Column] = [
        ("value", "Value", _text), ("requests", "Requests", _count), ("failures", "Failures", _count),
        ("error_rate", "Error rate", _pct), ("p50_ms", "p50", _ms), ("p95_ms", "p95", _ms), ("p99_ms", "p99", _ms),
        ("top_causes", "Top causes", _text)]
    sections = [
        ("Summary", _summary(d)),
        ("Latency percentiles over time", latency),
        ("Error rate over time", errors),
        ("Requests and failures", volume),
        ("Top exception causes", causes + _table("causes", cause_cols, d.causes, "No failed requests.")),
        ("Failing interfaces", _table("failing", failing_cols, d.failing, "No failed requests.")),
        ("Slowest interfaces (p95)", _table("slow", slow_cols, d.slow, "No requests.")),
        ("By region", _table("regions", dim_cols, d.regions, "No requests.")),
        ("By platform", _table("platforms", dim_cols, d.platforms, "No requests.")),
    ]
    body = "".join(f'<section><h2>{escape(h)}</h2>{content}</section>' for h, content in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Incident review: {escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>Incident review: {escape(title)}</h1>"
        f"<p>{escape(span)} \u00b7 step {escape(step_text)} \u00b7 generated {escape(_when(d.generated))} UTC"
        f"{' · ' + registry if registry else ''}</p></header>"
        f"<main>{body}</main>"
        "<footer>imtel report \u00b7 from ClickHouse request_logs (exact) and interface_stats_1m (per minute) "
        "\u00b7 self-contained: no script, no network</footer>"
        "</body></html>\n"
    )
