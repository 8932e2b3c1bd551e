"""Named, parameterised performance-analysis queries: the SRE's first questions during an incident.

Each query is SQL with ClickHouse bound parameters (``{name:Type}``): user input never becomes SQL
text. ``parse_params`` validates and types what a user typed (``minutes=30``, ``from=now-2h``,
``app=1400000001``) into the bound values; an unknown query, an unknown parameter or a value out of
range is a ``QueryError`` naming it. The CLI runs the queries directly against the store, or through a
running worker's ``/queries/{name}`` endpoint when that worker owns the embedded store.

Time range: ``minutes=N`` (the last N minutes, default 15), or ``from=``/``to=`` as ISO-8601 times
(UTC unless an offset is given), epoch seconds or milliseconds, or Grafana-style relative times
(``now``, ``now-90m``, ``now-2h``, ``now-1d``). Queries on ``interface_stats_1m`` have minute
resolution (every minute that overlaps the range counts); queries on ``request_logs`` are exact.

App names come from the ``applications`` registry (latest row per app wins: ``argMax`` over
``updated_at``, or ``FINAL``), with the numeric ``sdk_app_id`` when the registry does not know it.

The same data gives the same answer: every ORDER BY ends on the row's key columns, and the "top"
lists count exactly with a fixed tie order, so a report rendered by a worker and one rendered
directly agree, and a LIMIT never picks between tied rows at random.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

DB = "imtel"
MAX_RANGE = timedelta(days=31)
MAX_POINTS = 10_000


class QueryError(ValueError):
    """Unknown query or bad parameter; the message names it."""


@dataclass(frozen=True)
class Param:
    """A typed, bounded parameter as the user gives it (``name=value``).

    ``ch_type`` is the ClickHouse type it is bound as under its own name; ``None`` for the time-range
    parameters, which are resolved together into ``start_ms``/``end_ms``."""

    name: str
    ch_type: str | None
    default: Any
    parse: Callable[[str], Any]
    check: Callable[[Any], bool] = lambda v: True
    rule: str = ""


@dataclass(frozen=True)
class NamedQuery:
    """A query of the library."""

    name: str
    doc: str
    sql: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    @property
    def ranged(self) -> bool:
        return any(p.name == "minutes" for p in self.params)

    def bound_types(self) -> dict[str, str]:
        """Every bound parameter of the SQL and its ClickHouse type."""
        out = {p.name: p.ch_type for p in self.params if p.ch_type is not None}
        if self.ranged:
            out |= {"start_ms": "Int64", "end_ms": "Int64"}
        return out


def _whole(text: str) -> int:
    """A whole decimal number; ``int()`` alone would accept ``1_000`` and surrounding blanks."""
    if not re.fullmatch(r"-?[0-9]{1,12}", text):
        raise ValueError(text)
    return int(text)


_RELATIVE = re.compile(r"^now(?:-(\d{1,6})([smhdw]))?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A point in time: ``now``/``now-15m``, ISO-8601 (UTC unless it has an offset), or epoch s/ms."""
    now = now or datetime.now(UTC)
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        amount, unit = match.groups()
        return now - timedelta(seconds=int(amount) * _UNIT_S[unit]) if amount else now
    if re.fullmatch(r"[0-9]{9,13}(\.[0-9]+)?", text):
        value = float(text)
        return datetime.fromtimestamp(value / 1000 if value >= 1e11 else value, UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(text) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


TIME_RULE = "a time: now, now-15m (s/m/h/d/w), ISO-8601 like 2026-11-22T12:00:00Z, or epoch seconds/ms"
MINUTES = Param("minutes", None, 15, _whole, lambda v: 1 <= v <= 44_640, "a whole number of minutes, 1..44640")
FROM = Param("from", None, None, parse_time, rule=TIME_RULE)
TO = Param("to", None, None, parse_time, rule=TIME_RULE)
RANGE = (MINUTES, FROM, TO)
LIMIT = Param("limit", "UInt32", 20, _whole, lambda v: 1 <= v <= 1000, "1..1000")
APP = Param("app", "UInt32", 0, _whole, lambda v: 0 <= v <= 4_294_967_295, "an sdk_app_id (0 = all apps)")
ONE_APP = Param("app", "UInt32", None, _whole, lambda v: 1 <= v <= 4_294_967_295, "an sdk_app_id (required)")
MIN_REQUESTS = Param("min_requests", "UInt32", 20, _whole, lambda v: 0 <= v <= 100_000_000,
                     "a whole number of requests, 0..100000000")
BY = Param("by", "String", "region", str, lambda v: v in ("region", "platform"), "region or platform")
STEP = Param("step", "UInt32", 60, _whole, lambda v: 1 <= v <= 86_400, "a whole number of seconds, 1..86400")

# --- SQL fragments (inserted by _sql; they contain bound parameters, never user text) -------------

_FRAGMENTS = {
    "start": "fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')",
    "end": "fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')",
    # the period of the same length just before [start, end)
    "before": "fromUnixTimestamp64Milli(2 * {start_ms:Int64} - {end_ms:Int64}, 'UTC')",
    "app_filter": "({app:UInt32} = 0 OR sdk_app_id = {app:UInt32})",
    "names": "(SELECT sdk_app_id, argMax(name, updated_at) AS app_name FROM {db}.applications GROUP BY sdk_app_id)",
}
_FRAGMENTS["log_range"] = f"request_time >= {_FRAGMENTS['start']} AND request_time < {_FRAGMENTS['end']}"
_FRAGMENTS["stats_range"] = f"minute >= toStartOfMinute({_FRAGMENTS['start']}) AND minute < {_FRAGMENTS['end']}"


def _top3(column: str, condition: str) -> str:
    """The three most frequent values of ``column`` among rows meeting ``condition``, exactly counted.

    Not ``topK``: that sketch is approximate and orders tied values by how parallel threads merged
    their states, so the same data gave a report "ap-guangzhou, ap-seoul" in one run and "ap-seoul,
    ap-guangzhou" in the next. Counting every distinct value is cheap here (interfaces, regions, codes
    and causes have few distinct values per group); ties go to the smaller value. The analyzer
    computes the repeated ``sumMapIf`` once."""
    counts = f"sumMapIf([{column}], [toUInt64(1)], {condition})"
    return (f"arrayMap(p -> p.1, arraySlice(arraySort(p -> (-p.2, p.1), "
            f"arrayZip({counts}.1, {counts}.2)), 1, 3))")


def _sql(text: str) -> str:
    """Insert the shared fragments (``<<name>>``; ``<<app_name:x>>`` names the app of alias x;
    ``<<top3:c>>``/``<<top3_failed:c>>`` the most frequent values of column c among all/failed rows)."""

    def repl(m: re.Match[str]) -> str:
        key, _, alias = m.group(1).partition(":")
        if key == "app_name":
            return f"if(ifNull(n.app_name, '') = '', toString({alias}.sdk_app_id), n.app_name)"
        if key in ("top3", "top3_failed"):
            return _top3(alias, "error_code != 0" if key == "top3_failed" else "1")
        return _FRAGMENTS[key]

    return re.sub(r"<<([\w:]+)>>", repl, text)


QUERIES: dict[str, NamedQuery] = {q.name: q for q in [
    NamedQuery(
        "app_health",
        "Per-app success rate and latency percentiles (avg, p50/p90/p95/p99, max) over a range; worst "
        "success rate first among apps with at least min_requests requests.",
        _sql("""SELECT s.sdk_app_id AS sdk_app_id, <<app_name:s>> AS app_name, s.n_requests AS n_requests,
       s.n_failures AS n_failures, s.success_rate AS success_rate, s.avg_ms AS avg_ms, s.p50_ms AS p50_ms,
       s.p90_ms AS p90_ms, s.p95_ms AS p95_ms, s.p99_ms AS p99_ms, s.max_ms AS max_ms
FROM (
    SELECT sdk_app_id, sum(requests) AS n_requests, sum(failures) AS n_failures,
           round(1 - n_failures / n_requests, 5) AS success_rate,
           round(sum(latency_sum_ms) / n_requests, 1) AS avg_ms,
           quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q) AS q,
           q[1] AS p50_ms, q[2] AS p90_ms, q[3] AS p95_ms, q[4] AS p99_ms, max(latency_max_ms) AS max_ms
    FROM {db}.interface_stats_1m
    WHERE source = 'log' AND <<stats_range>> AND <<app_filter>>
    GROUP BY sdk_app_id
) AS s
LEFT JOIN <<names>> AS n ON n.sdk_app_id = s.sdk_app_id
ORDER BY s.n_requests >= {min_requests:UInt32} DESC, s.success_rate ASC, s.n_requests DESC, s.sdk_app_id
LIMIT {limit:UInt32}"""), (*RANGE, APP, MIN_REQUESTS, LIMIT)),
    NamedQuery(
        "top_failing",
        "Interfaces with the most failed requests, their error rate and most frequent causes and codes.",
        _sql("""SELECT f.sdk_app_id AS sdk_app_id, <<app_name:f>> AS app_name, f.interface AS interface,
       f.failures AS failures, f.requests AS requests, f.error_rate AS error_rate,
       f.top_causes AS top_causes, f.top_codes AS top_codes
FROM (
    SELECT sdk_app_id, interface, countIf(error_code != 0) AS failures, count() AS requests,
           round(failures / requests, 5) AS error_rate,
           <<top3_failed:exception>> AS top_causes, <<top3_failed:error_code>> AS top_codes
    FROM {db}.request_logs
    WHERE <<log_range>> AND <<app_filter>>
    GROUP BY sdk_app_id, interface
    HAVING failures > 0
) AS f
LEFT JOIN <<names>> AS n ON n.sdk_app_id = f.sdk_app_id
ORDER BY f.failures DESC, f.error_rate DESC, f.sdk_app_id, f.interface
LIMIT {limit:UInt32}"""), (*RANGE, APP, LIMIT)),
    NamedQuery(
        "slow_interfaces",
        "Slowest app x interface pairs by p95 latency (pairs with at least min_requests requests).",
        _sql("""SELECT l.sdk_app_id AS sdk_app_id, <<app_name:l>> AS app_name, l.interface AS interface,
       l.requests AS requests, l.avg_ms AS avg_ms, l.p50_ms AS p50_ms, l.p95_ms AS p95_ms, l.p99_ms AS p99_ms,
       l.max_ms AS max_ms
FROM (
    SELECT sdk_app_id, interface, sum(requests) AS requests, round(sum(latency_sum_ms) / requests, 1) AS avg_ms,
           quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q) AS q,
           q[1] AS p50_ms, q[3] AS p95_ms, q[4] AS p99_ms, max(latency_max_ms) AS max_ms
    FROM {db}.interface_stats_1m
    WHERE source = 'log' AND <<stats_range>> AND <<app_filter>>
    GROUP BY sdk_app_id, interface
    HAVING requests >= {min_requests:UInt32}
) AS l
LEFT JOIN <<names>> AS n ON n.sdk_app_id = l.sdk_app_id
ORDER BY l.p95_ms DESC, l.requests DESC, l.sdk_app_id, l.interface
LIMIT {limit:UInt32}"""), (*RANGE, APP, MIN_REQUESTS, LIMIT)),
    NamedQuery(
        "top_causes",
        "Most frequent exception causes (error code + cause) per app, their share of the app's failures, "
        "the interfaces and regions they hit, first and last seen.",
        _sql("""SELECT c.sdk_app_id AS sdk_app_id, <<app_name:c>> AS app_name, c.error_code AS error_code,
       c.exception AS exception, c.failures AS failures, c.share_of_app_failures AS share_of_app_failures,
       c.top_interfaces AS top_interfaces, c.top_regions AS top_regions, c.first_seen AS first_seen,
       c.last_seen AS last_seen
FROM (
    SELECT sdk_app_id, error_code, exception, count() AS failures,
           round(failures / sum(failures) OVER (PARTITION BY sdk_app_id), 5) AS share_of_app_failures,
           <<top3:interface>> AS top_interfaces, <<top3:region>> AS top_regions,
           min(request_time) AS first_seen, max(request_time) AS last_seen
    FROM {db}.request_logs
    WHERE <<log_range>> AND <<app_filter>> AND error_code != 0
    GROUP BY sdk_app_id, error_code, exception
) AS c
LEFT JOIN <<names>> AS n ON n.sdk_app_id = c.sdk_app_id
ORDER BY c.failures DESC, c.sdk_app_id, c.error_code, c.exception
LIMIT {limit:UInt32}"""), (*RANGE, APP, LIMIT)),
    NamedQuery(
        "error_rate_change",
        "Per-app error rate in the range against the period of the same length just before it; the "
        "largest increase first (apps with at least min_requests requests in the range).",
        _sql("""SELECT d.sdk_app_id AS sdk_app_id, <<app_name:d>> AS app_name,
       d.requests_before AS requests_before, d.error_rate_before AS error_rate_before,
       d.requests_now AS requests_now, d.error_rate_now AS error_rate_now,
       round(d.error_rate_now - ifNull(d.error_rate_before, 0), 5) AS change,
       if(d.error_rate_before > 0, round(d.error_rate_now / d.error_rate_before, 2), NULL) AS ratio
FROM (
    SELECT sdk_app_id,
           countIf(request_time < <<start>>) AS requests_before,
           countIf(request_time < <<start>> AND error_code != 0) AS failures_before,
           countIf(request_time >= <<start>>) AS requests_now,
           countIf(request_time >= <<start>> AND error_code != 0) AS failures_now,
           if(requests_before = 0, NULL, round(failures_before / requests_before, 5)) AS error_rate_before,
           round(failures_now / requests_now, 5) AS error_rate_now
    FROM {db}.request_logs
    WHERE request_time >= <<before>> AND request_time < <<end>> AND <<app_filter>>
    GROUP BY sdk_app_id
    HAVING requests_now >= greatest({min_requests:UInt32}, 1)
) AS d
LEFT JOIN <<names>> AS n ON n.sdk_app_id = d.sdk_app_id
ORDER BY change DESC, d.requests_now DESC, d.sdk_app_id
LIMIT {limit:UInt32}"""), (*RANGE, APP, MIN_REQUESTS, LIMIT)),
    NamedQuery(
        "breakdown",
        "Requests, error rate, latency percentiles and top causes by region or platform (by=region|platform); "
        "highest error rate first among values with at least min_requests requests.",
        _sql("""SELECT {by:String} AS dimension, b.value AS value, b.requests AS requests, b.failures AS failures,
       b.error_rate AS error_rate, b.p50_ms AS p50_ms, b.p95_ms AS p95_ms, b.p99_ms AS p99_ms,
       b.top_causes AS top_causes
FROM (
    SELECT if({by:String} = 'platform', platform, region) AS value, count() AS requests,
           countIf(error_code != 0) AS failures, round(failures / requests, 5) AS error_rate,
           quantilesTiming(0.5, 0.95, 0.99)(latency_ms) AS q, q[1] AS p50_ms, q[2] AS p95_ms, q[3] AS p99_ms,
           <<top3_failed:exception>> AS top_causes
    FROM {db}.request_logs
    WHERE <<log_range>> AND <<app_filter>>
    GROUP BY value
) AS b
ORDER BY b.requests >= {min_requests:UInt32} DESC, b.error_rate DESC, b.requests DESC, b.value
LIMIT {limit:UInt32}"""), (*RANGE, APP, BY, MIN_REQUESTS, LIMIT)),
    NamedQuery(
        "app_timeseries",
        "One app over time: requests, failures, error rate and latency p50/p95/p99 per step seconds "
        "(default: per minute).",
        _sql("""SELECT t.time AS time, t.requests AS requests, t.failures AS failures, t.error_rate AS error_rate,
       t.p50_ms AS p50_ms, t.p95_ms AS p95_ms, t.p99_ms AS p99_ms, t.max_ms AS max_ms
FROM (
    SELECT toStartOfInterval(request_time, toIntervalSecond({step:UInt32})) AS time, count() AS requests,
           countIf(error_code != 0) AS failures, round(failures / requests, 5) AS error_rate,
           quantilesTiming(0.5, 0.95, 0.99)(latency_ms) AS q, q[1] AS p50_ms, q[2] AS p95_ms, q[3] AS p99_ms,
           max(latency_ms) AS max_ms
    FROM {db}.request_logs
    WHERE <<log_range>> AND sdk_app_id = {app:UInt32}
    GROUP BY time
) AS t
ORDER BY t.time"""), (*RANGE, ONE_APP, STEP)),
    NamedQuery(
        "apps",
        "The application registry (Configuration Data): name, status, creation and termination of each app.",
        """SELECT sdk_app_id, name, status, created_at, terminated_at, retention_days, updated_at
FROM {db}.applications FINAL
WHERE ({app:UInt32} = 0 OR sdk_app_id = {app:UInt32})
ORDER BY sdk_app_id
LIMIT {limit:UInt32}""", (APP, LIMIT)),
]}


@dataclass
class Result:
    """Column names and rows of a query result."""

    columns: list[str]
    rows: list[list[Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": [[_jsonable(v) for v in r] for r in self.rows]}


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, float) and v != v:  # NaN is not JSON
        return None
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _resolve_range(typed: dict[str, Any], given: set[str], now: datetime) -> tuple[datetime, datetime]:
    if "minutes" in given and "from" in given:
        raise QueryError("parameter minutes must not be combined with from (give minutes and/or to, or from/to)")
    end = typed["to"] or now
    start = typed["from"] or end - timedelta(minutes=typed["minutes"])
    if start >= end:
        raise QueryError("parameter from must be before to")
    if end - start > MAX_RANGE:
        raise QueryError(f"parameter from must be at most {MAX_RANGE.days} days before to")
    return start, end


def parse_params(name: str, raw: dict[str, str], now: datetime | None = None) -> dict[str, Any]:
    """Validate and type the parameters of a named query into its bound parameters.

    Unknown names are errors (a typo must not silently fall back to a default). The time range is
    resolved here, once, into ``start_ms``/``end_ms``."""
    query = QUERIES.get(name)
    if query is None:
        raise QueryError(f"unknown query {name!r}; known: {', '.join(sorted(QUERIES))}")
    known = {p.name: p for p in query.params}
    unknown = set(raw) - set(known)
    if unknown:
        raise QueryError(f"query {name} has no parameter {sorted(unknown)[0]!r}; it takes {', '.join(known)}")
    now = now or datetime.now(UTC)
    typed: dict[str, Any] = {}
    for p in query.params:
        if p.name not in raw:
            if p.default is None and p.ch_type is not None:
                raise QueryError(f"parameter {p.name} is required: {p.rule}")
            typed[p.name] = p.default
            continue
        try:
            value = parse_time(raw[p.name], now) if p.parse is parse_time else p.parse(raw[p.name])
        except (ValueError, OverflowError, OSError):
            raise QueryError(f"parameter {p.name} must be {p.rule}") from None
        if not p.check(value):
            raise QueryError(f"parameter {p.name} must be {p.rule}")
        typed[p.name] = value
    out = {p.name: typed[p.name] for p in query.params if p.ch_type is not None}
    if query.ranged:
        start, end = _resolve_range(typed, set(raw), now)
        out["start_ms"], out["end_ms"] = _ms(start), _ms(end)
        if "step" in out and (out["end_ms"] - out["start_ms"]) / 1000 / out["step"] > MAX_POINTS:
            raise QueryError(f"parameter step must be at least {(end - start).total_seconds() / MAX_POINTS:.0f} "
                             f"seconds for this range (at most {MAX_POINTS} points)")
    return out


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def run(store: Any, name: str, params: dict[str, Any]) -> Result:
    """Run a named query with parameters from ``parse_params``."""
    query = QUERIES[name]
    result = store.query(query.sql.replace("{db}", store.db), params)
    return Result(list(result.column_names), [list(r) for r in result.result_rows])


def oldest_row_ages(store: Any) -> dict[str, float]:
    """Age in seconds of the oldest stored row per table, from part metadata (no table scan)."""
    rows = store.query(
        "SELECT table, dateDiff('second', min(min_time), now()) FROM system.parts "
        "WHERE database = {db:String} AND active AND min_time > toDateTime(0) GROUP BY table",
        {"db": store.db}).result_rows
    date_rows = store.query(
        "SELECT table, dateDiff('second', toDateTime(min(min_date)), now()) FROM system.parts "
        "WHERE database = {db:String} AND active AND min_date > toDate(0) GROUP BY table",
        {"db": store.db}).result_rows
    return {str(t): float(max(a, 0)) for t, a in [*date_rows, *rows]}
