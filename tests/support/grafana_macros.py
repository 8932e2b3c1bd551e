"""Test-only emulation of how Grafana expands panel queries: the grafana-clickhouse-datasource macros
(``$__timeFilter``, ``$__conditionalAll``...), Grafana's PromQL variables and template variables, so tests
can run every dashboard query on real engines.

:func:`panel_queries` lists every query of every panel and template variable, expanded for a time range and
variable values; ``python -m tests.support.grafana_macros`` prints them for the last hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.monitoring.boards import build_all
from pipeline.monitoring.panels import CH

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


def iter_panels(model: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """Every panel of a dashboard JSON, rows and the panels inside collapsed rows included."""
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
        for panel in iter_panels(model):
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


def main() -> int:
    for q in panel_queries():
        print(f"-- {q.dashboard} / {q.panel} [{q.ref_id}] ({q.kind})\n{q.expanded}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
