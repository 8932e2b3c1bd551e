"""Named, parameterised performance-analysis queries.

Each query is SQL with ClickHouse bound parameters (``{name:Type}``): user input never becomes SQL
text. Parameters are validated and typed by ``parse_params`` before they reach the engine. The CLI
runs them directly against the store, or through a running worker's ``/queries/{name}`` endpoint when
that worker owns the embedded store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

DB = "imtel"


class QueryError(ValueError):
    """Unknown query or bad parameter; the message names it."""


@dataclass(frozen=True)
class Param:
    """A typed query parameter with bounds."""

    name: str
    ch_type: str
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


MINUTES = Param("minutes", "UInt32", 15, int, lambda v: 1 <= v <= 2880, "a whole number of minutes, 1..2880")
LIMIT = Param("limit", "UInt32", 20, int, lambda v: 1 <= v <= 1000, "1..1000")
APP = Param("app", "UInt32", 0, int, lambda v: 0 <= v <= 4_294_967_295, "an sdk_app_id (0 = all apps)")

QUERIES: dict[str, NamedQuery] = {q.name: q for q in [
    NamedQuery(
        "app_health", "Per-app success rate, average and p50/p99 latency over the last N minutes.",
        """SELECT sdk_app_id, sum(requests) AS n_requests, sum(failures) AS n_failures,
       round(1 - n_failures / n_requests, 5) AS success_rate,
       round(sum(latency_sum_ms) / n_requests, 1) AS avg_ms,
       quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q)[1] AS p50_ms,
       quantilesTimingMerge(0.5, 0.9, 0.95, 0.99)(latency_q)[4] AS p99_ms
FROM {db}.interface_stats_1m
WHERE source = 'log' AND minute >= toStartOfMinute(now() - toIntervalMinute({minutes:UInt32}))
  AND ({app:UInt32} = 0 OR sdk_app_id = {app:UInt32})
GROUP BY sdk_app_id ORDER BY n_requests DESC LIMIT {limit:UInt32}""", (MINUTES, APP, LIMIT)),
    NamedQuery(
        "top_failing", "Top failing interfaces with their most frequent exception causes.",
        """SELECT sdk_app_id, interface, count() AS failures,
       round(count() / any(total), 5) AS error_rate,
       topK(3)(exception) AS top_causes, topK(3)(error_code) AS top_codes
FROM {db}.request_logs AS l
INNER JOIN (SELECT sdk_app_id, interface, count() AS total FROM {db}.request_logs
            WHERE request_time >= now64(3) - toIntervalMinute({minutes:UInt32})
            GROUP BY sdk_app_id, interface) AS t USING (sdk_app_id, interface)
WHERE l.request_time >= now64(3) - toIntervalMinute({minutes:UInt32}) AND l.error_code != 0
  AND ({app:UInt32} = 0 OR sdk_app_id = {app:UInt32})
GROUP BY sdk_app_id, interface ORDER BY failures DESC LIMIT {limit:UInt32}""", (MINUTES, APP, LIMIT)),
]}


@dataclass
class Result:
    """Column names and rows of a query result."""

    columns: list[str]
    rows: list[list[Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": [[_jsonable(v) for v in r] for r in self.rows]}


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def parse_params(name: str, raw: dict[str, str]) -> dict[str, Any]:
    """Validate and type the parameters of a named query; unknown names are errors."""
    query = QUERIES.get(name)
    if query is None:
        raise QueryError(f"unknown query {name!r}; known: {', '.join(sorted(QUERIES))}")
    known = {p.name: p for p in query.params}
    unknown = set(raw) - set(known)
    if unknown:
        raise QueryError(f"query {name} has no parameter {sorted(unknown)[0]!r}; it takes {', '.join(known)}")
    out = {}
    for p in query.params:
        try:
            value = p.parse(raw[p.name]) if p.name in raw else p.default
        except ValueError:
            raise QueryError(f"parameter {p.name} must be {p.rule}") from None
        if not p.check(value):
            raise QueryError(f"parameter {p.name} must be {p.rule}")
        out[p.name] = value
    return out


def run(store: Any, name: str, params: dict[str, Any]) -> Result:
    """Run a named query with validated parameters."""
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
