"""Retention audit: the policy file against a live deployment, with a verdict.

Facts are gathered by I/O functions (``table_facts`` from ClickHouse, ``topic_facts`` from Kafka) into
plain JSON-able dicts, so a running worker can gather the ClickHouse half for the CLI when it owns
the embedded store (``/audit``). ``evaluate`` is pure: facts + policy -> checks.

A check's status is ``ok``, ``drift`` (differs from what migrations/topics would set, but within the
policy: reported, fails only with ``--strict``) or ``violation`` (data may live longer than the
policy allows, or nobody can tell: the audit fails). What is checked:

- **tables**: the TTL from ``system.tables`` (parsed: the shortest unconditional DELETE rule must fire
  within the policy's days), and the age of the oldest row (from the TTL's time column; for the
  registry, the oldest termination). An oldest row past the limit + ``grace`` (TTL deletions happen at
  merges, at most ``merge_with_ttl_timeout`` = 1 h apart) is a violation.
- **topics**: ``cleanup.policy`` must delete, and ``retention.ms`` + ``segment.ms`` + the broker's
  retention check must stay within the limit of what the topic carries (the dead-letter topic: the
  shortest category, as it keeps raw payloads), and so must the oldest record each topic still stores
  (the timestamp of the record at each partition's start). A config the broker does not report means "broker
  default": a real Kafka reports every effective value, the bundled broker only what a topic was
  created with, so an absent ``retention.ms`` is a violation (Kafka's default is 7 days, the bundled
  broker's is forever), never an ok.
- **apps** with their own shorter retention: the oldest row of each such app per table.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config.policy import DAY_MS, Policy
from pipeline.ops.registry import APP_SCOPED_TABLES
from pipeline.schema import migrations
from pipeline.schema.topics import TopicSpec

OK, DRIFT, VIOLATION = "ok", "drift", "violation"
INTERNAL_TABLES = frozenset({"schema_migrations"})
# Engines that store no rows of their own, so retention does not apply to them: a Distributed table
# (its shards' local tables are audited) and a view (migration 009's write into interface_stats_1m,
# which is audited; a view without TO keeps its rows in an inner table, listed and audited by itself).
STORELESS_ENGINES = frozenset({"Distributed", "MaterializedView", "View"})
KAFKA_DEFAULT_SEGMENT_MS = 7 * DAY_MS  # log.roll.hours = 168
DEFAULT_GRACE_S = 3600  # merge_with_ttl_timeout of the tables


@dataclass(frozen=True)
class Check:
    """One line of the audit."""

    kind: str  # table | topic | app
    name: str
    policy: str
    actual: str
    oldest: str
    status: str
    detail: str = ""
    limit_s: int | None = None  # the policy's limit, in seconds
    oldest_s: float | None = None  # age of the oldest row, in seconds


@dataclass
class Report:
    """All checks, notes, and the verdict."""

    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    def failures(self, strict: bool = False) -> list[Check]:
        bad = {VIOLATION, DRIFT} if strict else {VIOLATION}
        return [c for c in self.checks if c.status in bad]

    def verdict(self, strict: bool = False) -> str:
        return "fail" if self.failures(strict) else "pass"

    def as_dict(self, strict: bool = False) -> dict[str, Any]:
        return {"verdict": self.verdict(strict), "checks": [asdict(c) for c in self.checks], "notes": self.notes}


def human(seconds: float | None) -> str:
    """``604800`` -> ``7d``; ``600900`` -> ``6d22h55m``; None -> ``-``."""
    if seconds is None:
        return "-"
    s, parts = round(seconds), []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts) or f"{s}s"


# -- facts (I/O) -----------------------------------------------------------------------------------


def table_facts(store: Any, cluster: str = "") -> dict[str, Any]:
    """What ClickHouse holds: every table's engine and TTL, the oldest row per table, and per-app ages
    for apps with their own retention. JSON-able (served by the worker's ``/audit``)."""
    databases = [store.db] + ([store.db + "_local"] if cluster else [])
    tables: list[dict[str, Any]] = [
        {"database": str(d), "table": str(n), "engine": str(e), "ttl": migrations.ttl_clause(str(f))}
        for d, n, e, f in store.query(
            "SELECT database, name, engine, engine_full FROM system.tables WHERE database IN "
            "{dbs:Array(String)} ORDER BY database, name", {"dbs": databases}).result_rows]
    columns: dict[str, set[str]] = {}
    for t, c in store.query("SELECT table, name FROM system.columns WHERE database IN {dbs:Array(String)}",
                            {"dbs": databases}).result_rows:
        columns.setdefault(str(t), set()).add(str(c))
    # the column each TTL counts from (on a cluster the TTL sits on the local table), then the oldest
    # row through the table the pipeline reads (min() of a partition-key column reads part metadata)
    counted_from = {e["table"]: c for e in tables if (c := ttl_column(e["ttl"], columns.get(e["table"], set())))}
    oldest: dict[str, Any] = {}
    for entry in tables:
        column = counted_from.get(entry["table"])
        if entry["database"] == store.db and column:
            rows = store.query(f"SELECT count(), dateDiff('second', min({quote_identifier(column)}), now()) "
                               f"FROM {qualified(store.db, entry['table'])}").result_rows
            count = int(rows[0][0])  # min() of no rows is 1970, not NULL
            age = _num(rows[0][1]) if count else None
            oldest[entry["table"]] = {"column": column, "rows": count, "oldest_age_s": age}
    return {"database": store.db, "tables": tables, "oldest": oldest, "apps": _app_facts(store, tables)}


def quote_identifier(name: str) -> str:
    """``name`` as one ClickHouse identifier, in backticks, whatever characters it holds.

    Table and column names here are read from ``system.tables`` / ``system.columns``: whoever may create
    a table in the database chooses them, so they are quoted, never spliced in as they are (a name like
    ``t`; DROP TABLE x; --`` would otherwise end the identifier and run as SQL). Inside backticks
    ClickHouse reads backslash escapes, so the backslash is escaped first, then the backtick."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def qualified(database: str, table: str) -> str:
    """``database.table``, each part quoted (see ``quote_identifier``)."""
    return f"{quote_identifier(database)}.{quote_identifier(table)}"


def ttl_column(ttl: str | None, columns: set[str]) -> str | None:
    """The column a TTL counts from: the first identifier of its first rule that is a column."""
    rules = migrations.parse_ttl(ttl)
    if not rules:
        return None
    return next((w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rules[0].base) if w in columns), None)


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _app_facts(store: Any, tables: list[dict[str, Any]]) -> dict[str, Any]:
    from pipeline.ops.registry import retention_overrides

    names = {t["table"] for t in tables if t["database"] == store.db}
    if "applications" not in names:
        return {"retention_days": {}, "oldest_age_s": {}}
    overrides = retention_overrides(store)
    ages: dict[str, dict[str, float]] = {}
    for table, column in APP_SCOPED_TABLES.items():
        if overrides and table in names:
            rows = store.query(f"SELECT sdk_app_id, dateDiff('second', min({quote_identifier(column)}), now()) "
                               f"FROM {qualified(store.db, table)} "
                               "WHERE sdk_app_id IN {apps:Array(UInt32)} GROUP BY sdk_app_id",
                               {"apps": sorted(overrides)}).result_rows
            ages[table] = {str(a): float(age) for a, age in rows}
    return {"retention_days": {str(a): d for a, d in overrides.items()}, "oldest_age_s": ages}


def topic_facts(settings: Any, specs: list[TopicSpec]) -> dict[str, Any]:
    """Topic -> the configs the broker reports (None: missing), and the age of the oldest record each
    topic still stores; ``{"error": ...}`` when unreachable."""
    from pipeline.schema.topics import describe_topics, oldest_record_ages

    try:
        configs = describe_topics(settings, [s.name for s in specs])
        return {"configs": configs, "oldest_age_s": oldest_record_ages(settings, [n for n, c in configs.items() if c])}
    except Exception as exc:  # any client failure: the topics are unknown, which the audit reports
        return {"error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}


# -- evaluation (pure) -----------------------------------------------------------------------------


def evaluate(tables: dict[str, Any], topics: dict[str, Any], specs: list[TopicSpec], policy: Policy,
             cluster: str = "", grace_s: int = DEFAULT_GRACE_S) -> Report:
    """Facts + policy -> the report (see the module docstring for the rules)."""
    report = Report(evaluate_tables(tables, policy, cluster, grace_s) + evaluate_topics(topics, specs, policy)
                    + evaluate_apps(tables, policy, grace_s))
    if any(t["engine"] == "Distributed" for t in tables["tables"]):
        report.notes.append(f"{tables['database']}.* are Distributed tables (they store nothing): TTLs are "
                            f"checked on {tables['database']}_local.*, row ages through the Distributed tables")
    return report


def _policy_text(table: str, policy: Policy) -> str:
    category = policy.category_of_table(table)
    if category is None:
        return f"{table.replace('_', ' ').capitalize()} {policy.records[table]}d"
    after = " after termination" if category.key == "configuration_data" else ""
    return f"{category.policy_name} {category.retention_days}d{after}"


def evaluate_tables(facts: dict[str, Any], policy: Policy, cluster: str, grace_s: int) -> list[Check]:
    days = policy.audited_table_days()
    desired = migrations.desired_ttls(facts["database"], cluster, policy)
    checks, seen = [], set()
    for t in facts["tables"]:
        name, table = f"{t['database']}.{t['table']}", t["table"]
        if t["engine"] in STORELESS_ENGINES or table in INTERNAL_TABLES:
            continue
        seen.add(table)
        if table not in days:
            checks.append(Check("table", name, "-", t["ttl"] or "no TTL", "-", DRIFT,
                                "not in the retention policy: add it to schemas/retention.yaml or drop it"))
            continue
        limit_s = days[table] * 86_400
        age = (facts["oldest"].get(table) or {}).get("oldest_age_s")
        checks.append(_table_check(name, t["ttl"], desired.get(table), limit_s, age, grace_s,
                                   _policy_text(table, policy)))
    for table in sorted(set(days) - seen):
        checks.append(Check("table", f"{facts['database']}.{table}", _policy_text(table, policy), "missing", "-",
                            DRIFT, "table does not exist: run imtel migrate"))
    return checks


def _table_check(name: str, ttl: str | None, desired: str | None, limit_s: int, age: float | None,
                 grace_s: int, policy_text: str) -> Check:
    keeps = migrations.guaranteed_seconds(migrations.parse_ttl(ttl))
    actual = f"TTL {ttl}" if ttl else "no TTL"
    status, detail = OK, ""
    if keeps is None:
        status, detail = VIOLATION, f"{name}: no unconditional TTL DELETE rule, rows are never deleted"
    elif keeps > limit_s:
        status, detail = VIOLATION, f"{name}: TTL keeps rows {human(keeps)}, policy allows {human(limit_s)}"
    elif age is not None and age > limit_s + grace_s:
        status, detail = VIOLATION, (f"{name}: oldest row is {human(age)} old, policy allows {human(limit_s)} "
                                     "(parts written under a longer TTL expire at merges, or now with "
                                     "ALTER TABLE ... MATERIALIZE TTL)")
    elif desired is not None and not migrations.same_ttl(ttl, desired):
        status, detail = DRIFT, f"{name}: TTL differs from the migrations' ({desired}); imtel migrate resets it"
    return Check("table", name, policy_text, actual, human(age), status, detail, limit_s, age)


def evaluate_topics(facts: dict[str, Any], specs: list[TopicSpec], policy: Policy) -> list[Check]:
    limits = policy.topic_limit_ms()
    checks = []
    for spec in specs:
        limit = limits[spec.logical]
        policy_text = f"<= {human(limit / 1000)}" + (" (shortest it carries)" if spec.logical == "dead_letters" else "")
        if "error" in facts:
            checks.append(Check("topic", spec.name, policy_text, "unknown", "-", VIOLATION,
                                f"{spec.name}: cannot read its configs ({facts['error']})", limit // 1000))
            continue
        age = (facts.get("oldest_age_s") or {}).get(spec.name)
        checks.append(_topic_check(spec, facts["configs"].get(spec.name), limit, policy, policy_text, age))
    return checks


def _topic_check(spec: TopicSpec, config: dict[str, str] | None, limit_ms: int, policy: Policy,
                 policy_text: str, age: float | None = None) -> Check:
    """A topic's configs against its limit, then what it really stores: configs prove what the broker
    was told, the oldest record's timestamp proves that it deleted (a broker whose retention check
    never runs, or a config that is not applied, shows up only here)."""
    name, actual, status, detail = spec.name, "missing", DRIFT, f"{spec.name}: topic does not exist (imtel topics)"
    if config is not None:
        actual, status, detail = _topic_status(spec, config, limit_ms, policy)
    if age is not None and age * 1000 > limit_ms and status != VIOLATION:
        status, detail = VIOLATION, (f"{name}: its oldest record is {human(age)} old, policy allows "
                                     f"{human(limit_ms / 1000)}: the broker is not deleting it")
    return Check("topic", name, policy_text, actual, human(age), status, detail, limit_ms // 1000, age)


def _topic_status(spec: TopicSpec, config: dict[str, str], limit_ms: int, policy: Policy) -> tuple[str, str, str]:
    """(actual, status, detail) of an existing topic's configs against its limit."""
    name = spec.name
    cleanup = config.get("cleanup.policy", "delete")
    retention, segment = config.get("retention.ms"), config.get("segment.ms")
    if "delete" not in cleanup.split(","):
        return f"cleanup.policy={cleanup}", VIOLATION, f"{name}: cleanup.policy={cleanup} never deletes records by age"
    if retention is None:
        return "retention.ms not set", VIOLATION, (
            f"{name}: retention.ms not reported, so the broker default applies (Kafka: 7d; the bundled broker: "
            "forever); set it with imtel topics")
    if int(retention) < 0:
        return "retention.ms=-1 (forever)", VIOLATION, f"{name}: retention.ms=-1 keeps records forever"
    segment_ms = int(segment) if segment is not None else KAFKA_DEFAULT_SEGMENT_MS
    worst = int(retention) + segment_ms + policy.kafka.retention_check_ms
    actual = (f"retention {human(int(retention) / 1000)} + segment {human(segment_ms / 1000)}"
              f"{'' if segment is not None else ' (default)'} + check {human(policy.kafka.retention_check_ms / 1000)}"
              f" = {human(worst / 1000)}")
    if worst > limit_ms:
        return actual, VIOLATION, (f"{name}: records may live {human(worst / 1000)}, policy allows "
                                   f"{human(limit_ms / 1000)}")
    differs = {k: config.get(k, "unset") for k, v in spec.config.items() if config.get(k) != v}
    if differs:
        return actual, DRIFT, f"{name}: differs from imtel topics: " + ", ".join(
            f"{k}={v} (want {spec.config[k]})" for k, v in differs.items())
    return actual, OK, ""


def evaluate_apps(facts: dict[str, Any], policy: Policy, grace_s: int) -> list[Check]:
    apps = facts.get("apps") or {}
    checks = []
    for app, days in sorted((apps.get("retention_days") or {}).items()):
        for table, ages in sorted((apps.get("oldest_age_s") or {}).items()):
            category = policy.category_of_table(table)
            if category is None or category.key not in policy.per_app_caps or days >= category.retention_days:
                continue
            age, limit_s = ages.get(app), days * 86_400
            name = f"app {app} {table}"
            late = age is not None and age > limit_s + grace_s
            detail = f"{name}: oldest row is {human(age)} old, the app's retention is {days}d" if late else ""
            checks.append(Check("app", name, f"app retention {days}d", f"{days}d", human(age),
                                VIOLATION if late else OK, detail, limit_s, age))
    return checks


# -- output ----------------------------------------------------------------------------------------


def render_text(report: Report, strict: bool = False) -> str:
    """The audit as an aligned table, then the verdict naming whatever failed."""
    head = ["KIND", "NAME", "POLICY", "ACTUAL", "OLDEST", "STATUS"]
    rows = [head] + [[c.kind, c.name, c.policy, c.actual, c.oldest, c.status.upper()] for c in report.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"  {c.status}: {c.detail}" for c in report.checks if c.detail]
    lines += [f"note: {n}" for n in report.notes]
    failed = report.failures(strict)
    if failed:
        lines.append(f"verdict: FAIL ({len(failed)} of {len(report.checks)} checks): "
                     + "; ".join(c.name for c in failed))
    else:
        drift = sum(c.status == DRIFT for c in report.checks)
        lines.append(f"verdict: PASS ({len(report.checks)} checks{f', {drift} drift' if drift else ''})")
    return "\n".join(lines) + "\n"


def render_json(report: Report, strict: bool = False) -> str:
    return json.dumps(report.as_dict(strict), indent=2) + "\n"
