"""Versioned, idempotent ClickHouse migrations rendered from ``schemas/clickhouse/*.sql``.

Each file is a template: ``{db}``, ``{on_cluster}``, engine placeholders and the retention days of
the policy file. The same templates give the single-node schema (default) and the cluster schema
(``ON CLUSTER`` + Replicated engines), so both always carry the same columns and TTLs.
Applied versions are recorded in ``schema_migrations``; re-running applies only what is new.

Policy changes: the TTL days are rendered into the templates, so an applied ``CREATE TABLE IF NOT
EXISTS`` cannot follow a changed policy. ``reconcile_ttls`` (run by every ``apply``) compares each
table's TTL in ``system.tables`` with the rendered template and runs ``ALTER TABLE ... MODIFY TTL``
where they differ, with ``materialize_ttl_after_modify = 0``: the new TTL applies to new parts and to
parts rewritten by merges, and no mutation rewrites every stored partition by surprise. Stored parts
keep the expiry they were written with until merged or until the operator runs
``ALTER TABLE ... MATERIALIZE TTL`` (the retention audit reports rows older than the new policy).

The cluster form: replicated local tables + ``Distributed`` tables over them.

Layout (one source, ``schemas/clickhouse/*.sql`` rendered by ``render``):

- ``<db>_local.<table>``: the migrations rendered for database ``<db>_local`` with ``ON CLUSTER`` and
  Replicated engines (Keeper path ``/clickhouse/tables/{shard}/<db>_local/<table>``). Same columns,
  ORDER BY and TTL as the single-node table, because it *is* the same template.
- ``<db>.<table>``: ``Distributed(cluster, <db>_local, <table>, sharding key)`` ``AS`` the local table,
  so its columns are the local table's by construction. The pipeline reads and writes these names,
  exactly as it does on a single node; TTLs act on the local tables (a Distributed table stores nothing).

Sharding key: ``src_partition`` wherever the table has it, so all rows of one Kafka partition live on
one shard. A worker batch spanning partitions is split per shard; if one shard's insert fails, each
partition is still either fully written or not at all, which keeps the per-partition recovery of
request_logs/interface_stats_1m exact. Tables without it shard by ``sdk_app_id`` (the registry, so
ReplacingMergeTree versions of one app meet on one shard) or ``rand()``.

Writes must be synchronous (``INSERT_SETTINGS``): with a background Distributed insert the server
acknowledges rows it has only queued, and the worker would commit Kafka offsets too early.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pipeline.config.policy import SCHEMAS_DIR, Policy, load_policy
from pipeline.schema import aggregates

MIGRATIONS_DIR = SCHEMAS_DIR / "clickhouse"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s", re.IGNORECASE)
# Interval terms of a TTL expression, as written in templates (INTERVAL 7 DAY) and as ClickHouse
# shows them in system.tables (toIntervalDay(7)). Months/quarters/years count at their longest.
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "week": 604_800,
                 "month": 31 * 86_400, "quarter": 92 * 86_400, "year": 366 * 86_400}
_INTERVAL = re.compile(
    r"\s*\+\s*(?:toInterval(?P<fn_unit>Second|Minute|Hour|Day|Week|Month|Quarter|Year)\(\s*(?P<fn_n>\d+)\s*\)"
    r"|INTERVAL\s+'?(?P<kw_n>\d+)\s*(?P<kw_unit>SECOND|MINUTE|HOUR|DAY|WEEK|MONTH|QUARTER|YEAR)S?'?)",
    re.IGNORECASE)
_ACTION = re.compile(r"\s(DELETE|TO\s+DISK|TO\s+VOLUME|RECOMPRESS|WHERE|GROUP\s+BY|SET)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Migration:
    """One rendered migration file."""

    version: int
    name: str
    statements: tuple[str, ...]
    checksum: str

    @property
    def label(self) -> str:
        """How people see it (``006_erasure_log``): its file name without ``.sql``."""
        return f"{self.version:03d}_{self.name}"


def plain(database: str) -> str:
    """``database``, refused unless it is a plain identifier: it is written into SQL text."""
    if not database.isidentifier():
        raise ValueError(f"database name {database!r} is not a plain identifier")
    return database


def check_cluster_name(cluster: str) -> str:
    """A cluster name goes into SQL text (``ON CLUSTER '...'``): only plain names are accepted."""
    if cluster and not _CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster name {cluster!r} is not a plain name (letters, digits, _ . -)")
    return cluster


def engines(cluster: str) -> dict[str, str]:
    """Engine clauses for single-node or replicated (Keeper paths per shard) tables."""
    check_cluster_name(cluster)
    if not cluster:
        return {"on_cluster": "", "engine_mergetree": "MergeTree",
                "engine_aggregating": "AggregatingMergeTree",
                "engine_replacing": "ReplacingMergeTree(updated_at)"}
    path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
    return {"on_cluster": f"ON CLUSTER '{cluster}'",
            "engine_mergetree": f"ReplicatedMergeTree({path})",
            "engine_aggregating": f"ReplicatedAggregatingMergeTree({path})",
            "engine_replacing": f"ReplicatedReplacingMergeTree({path}, updated_at)"}


def data_table(database: str, table: str, cluster: str = "") -> str:
    """Where the rows of ``table`` live, for ``ALTER ... DELETE`` and ``OPTIMIZE``: the table itself
    on a single node; the replicated local table ``ON CLUSTER`` in the cluster form (a Distributed
    table stores nothing, see ``apply_cluster``)."""
    if not cluster:
        return f"{database}.{table}"
    return f"{local_database(database)}.{table} {engines(cluster)['on_cluster']}"


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` at line ends, dropping comment-only chunks."""
    out = []
    for chunk in re.split(r";\s*(?:\n|$)", sql):
        body = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
        if body:
            out.append(body)
    return out


def render(database: str, cluster: str = "", policy: Policy | None = None) -> list[Migration]:
    """All migrations, rendered for a database (and cluster), in version order."""
    policy = policy or load_policy()
    values: dict[str, Any] = {"db": database, **engines(cluster), **policy.template_values(),
                              **aggregates.template_values(database)}
    out = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            continue
        text = path.read_text().format(**values)
        out.append(Migration(int(match.group(1)), match.group(2), tuple(split_statements(text)),
                             hashlib.sha256(text.encode()).hexdigest()[:16]))
    return out


def apply(client: Any, database: str, cluster: str = "", policy: Policy | None = None) -> list[str]:
    """Create the database, apply pending migrations and reconcile TTLs with the policy.

    Returns what changed now: migration names (``006_erasure_log``) and TTL changes (``ttl ...``)."""
    on_cluster = engines(cluster)["on_cluster"]
    client.command(f"CREATE DATABASE IF NOT EXISTS {database} {on_cluster}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations {on_cluster} "
        "(version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()) "
        f"ENGINE = {engines(cluster)['engine_replacing'].replace('updated_at', 'applied_at')} ORDER BY version"
    )
    done = applied_versions(client, database)
    applied = []
    for migration in render(database, cluster, policy):
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert(f"{database}.schema_migrations", [[migration.version, migration.name, migration.checksum]],
                      column_names=["version", "name", "checksum"])
        applied.append(migration.label)
    return applied + reconcile_ttls(client, database, cluster, policy)


def applied_versions(client: Any, database: str) -> set[int]:
    """The versions ``database.schema_migrations`` records (the table must exist)."""
    return {int(row[0]) for row in client.query(f"SELECT version FROM {plain(database)}.schema_migrations").result_rows}


def pending(client: Any, database: str, cluster: str = "", policy: Policy | None = None) -> list[str]:
    """The migrations this code renders that the store has not applied (``009_stats_views``, ...), read
    from ``schema_migrations`` of the database they go to (``<db>_local`` on a cluster).

    Why a worker asks: on a cluster the migration Job applies the schema, not the workers, and a worker
    must not write into a schema older than its code. Since migration 009 the store folds each insert
    into ``interface_stats_1m``; a worker on an older schema would store rows without their aggregate."""
    target = plain(local_database(database) if cluster else database)
    exists = client.query("SELECT count() FROM system.tables WHERE database = {d:String} AND name = "
                          "'schema_migrations'", parameters={"d": target}).result_rows[0][0]
    done = applied_versions(client, target) if exists else set()
    return [m.label for m in render(target, cluster, policy) if m.version not in done]


# -- TTL reconciliation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TtlRule:
    """One rule of a TTL clause, reduced to what retention depends on."""

    base: str  # the expression without its interval terms, whitespace removed
    seconds: int  # sum of its interval terms: the rule fires this long after ``base`` (upper bound)
    unconditional_delete: bool  # plain DELETE: no WHERE/GROUP BY, not a move or recompression
    text: str


def _mask(text: str) -> str:
    """``text`` with everything inside parentheses or quotes replaced by ``_`` (same length), so that
    keywords and commas found in the mask are top-level ones of the original."""
    out, depth, quote = [], 0, ""
    for ch in text:
        if quote:
            out.append("_")
            if ch == quote:
                quote = ""
            continue
        if ch in "'`\"":
            quote = ch
            out.append("_")
        elif ch == "(":
            depth += 1
            out.append("_")
        elif ch == ")":
            depth = max(depth - 1, 0)
            out.append("_")
        else:
            out.append("_" if depth else ch)
    return "".join(out)


def ttl_clause(sql: str) -> str | None:
    """The table TTL clause of a CREATE statement or of ``system.tables.engine_full`` (None: no TTL)."""
    masked = _mask(sql)
    start = re.search(r"(?:^|\s)TTL\s", masked)
    if not start:
        return None
    end = re.search(r"\sSETTINGS\s", masked[start.end():])
    body = sql[start.end(): start.end() + end.start() if end else len(sql)]
    return body.strip() or None


def parse_ttl(clause: str | None) -> list[TtlRule]:
    """Split a TTL clause into rules and read their intervals (see ``TtlRule``)."""
    if not clause:
        return []
    rules, masked, pos = [], _mask(clause), 0
    for cut in [m.start() for m in re.finditer(",", masked)] + [len(clause)]:
        text, mask = clause[pos:cut].strip(), masked[pos:cut].strip()
        pos = cut + 1
        action = _ACTION.search(" " + mask)
        expr = text[: action.start() - 1] if action else text
        kind = action.group(1).upper() if action else "DELETE"
        conditional = bool(action and re.search(r"\b(WHERE|GROUP\s+BY)\b", mask, re.IGNORECASE))
        seconds = 0
        for m in _INTERVAL.finditer(expr):
            unit = (m.group("fn_unit") or m.group("kw_unit")).lower()
            seconds += int(m.group("fn_n") or m.group("kw_n")) * _UNIT_SECONDS[unit]
        base = re.sub(r"\s+", "", _INTERVAL.sub("", expr))
        rules.append(TtlRule(base, seconds, kind == "DELETE" and not conditional, text))
    return rules


def guaranteed_seconds(rules: list[TtlRule]) -> int | None:
    """How long after its base a row is deleted at the latest (None: no unconditional DELETE rule)."""
    deletes = [r.seconds for r in rules if r.unconditional_delete]
    return min(deletes) if deletes else None


def _meaning(clause: str | None) -> list[tuple[str, int, bool]]:
    return [(r.base, r.seconds, r.unconditional_delete) for r in parse_ttl(clause)]


def same_ttl(a: str | None, b: str | None) -> bool:
    """Equal retention meaning, whatever the spelling (``INTERVAL 7 DAY`` == ``toIntervalDay(7)``)."""
    return _meaning(a) == _meaning(b)


def desired_ttls(database: str, cluster: str = "", policy: Policy | None = None) -> dict[str, str]:
    """Table -> TTL clause of its rendered template (the policy's days filled in)."""
    out = {}
    for migration in render(database, cluster, policy):
        for statement in migration.statements:
            match, clause = _CREATE.match(statement), ttl_clause(statement)
            if match and clause:
                out[match.group(2)] = clause
    return out


def actual_ttls(client: Any, database: str) -> dict[str, str | None]:
    """Table -> TTL clause as the server has it (``system.tables.engine_full``). The database name is
    a checked identifier (it is part of every statement here), so it is written into the SQL."""
    rows = client.query(f"SELECT name, engine_full FROM system.tables WHERE database = '{plain(database)}'"
                        ).result_rows
    return {str(name): ttl_clause(str(engine_full)) for name, engine_full in rows}


def reconcile_ttls(client: Any, database: str, cluster: str = "", policy: Policy | None = None) -> list[str]:
    """Bring every table's TTL to the rendered template (``MODIFY TTL``, no materialisation)."""
    on_cluster = engines(cluster)["on_cluster"]
    actual = actual_ttls(client, database)
    changed = []
    for table, want in desired_ttls(database, cluster, policy).items():
        if table not in actual or same_ttl(want, actual[table]):
            continue
        target = f"{database}.{table} {on_cluster}".rstrip()
        client.command(f"ALTER TABLE {target} MODIFY TTL {want} SETTINGS materialize_ttl_after_modify = 0")
        changed.append(f"ttl {table}: {want}")
    return changed


# -- the cluster form ---------------------------------------------------------------------------
LOCAL_SUFFIX = "_local"
# distributed_foreground_insert (ClickHouse >= 23.x; formerly insert_distributed_sync): an INSERT into
# a Distributed table returns only after every shard has acknowledged its part.
# deduplicate_blocks_in_dependent_materialized_views: a retried insert that a Replicated raw table drops
# as a duplicate still runs migration 009's view; this makes the view's target drop the view's block too
# (1 by default in chDB 26.9, where tests/integration/test_stats_views.py checks the behaviour; said
# explicitly here so the servers' version or profile defaults cannot fold a retried block twice).
INSERT_SETTINGS = {"distributed_foreground_insert": 1, "deduplicate_blocks_in_dependent_materialized_views": 1}
_SHARDING_BY_TABLE = {"applications": "sdk_app_id"}


def local_database(database: str) -> str:
    """Database holding the replicated local tables."""
    return database + LOCAL_SUFFIX


def created_tables(statements: list[str]) -> list[tuple[str, str]]:
    """(database, table) of every CREATE TABLE statement, in order."""
    return [(m.group(1), m.group(2)) for m in map(_CREATE.match, statements) if m]


def sharding_key(table: str, statement: str) -> str:
    """Sharding expression for ``table`` given its CREATE statement (see the cluster form above)."""
    if re.search(r"^\s*src_partition\s", statement, re.MULTILINE):
        return "src_partition"
    return _SHARDING_BY_TABLE.get(table, "rand()")


def local_statements(database: str, cluster: str, policy: Policy | None = None) -> list[str]:
    """The replicated local schema: every migration rendered for ``<db>_local`` ON CLUSTER."""
    return [s for m in render(local_database(database), cluster, policy) for s in m.statements]


def distributed_statements(database: str, cluster: str, policy: Policy | None = None) -> list[str]:
    """CREATE DATABASE + one Distributed table per local table, all ON CLUSTER, idempotent."""
    if not cluster:
        raise ValueError("the Distributed layer needs a cluster name")
    local_db = local_database(database)
    on_cluster = engines(cluster)["on_cluster"]
    out = [f"CREATE DATABASE IF NOT EXISTS {database} {on_cluster}"]
    for statement in local_statements(database, cluster, policy):
        match = _CREATE.match(statement)
        if not match:
            continue
        table = match.group(2)
        key = sharding_key(table, statement)
        out.append(f"CREATE TABLE IF NOT EXISTS {database}.{table} {on_cluster} AS {local_db}.{table} "
                   f"ENGINE = Distributed('{cluster}', '{local_db}', '{table}', {key})")
    return out


def script(database: str, cluster: str = "", policy: Policy | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(label, statements) of the whole schema in apply order, for review before a migration runs
    (``imtel migrate --print``): every migration rendered for ``database``, or on a cluster for
    ``<db>_local`` ON CLUSTER between the local database's creation and the Distributed tables.
    What ``apply`` decides from the server's state (the migrations already applied, TTL reconciliation,
    the Distributed tables' column fixes) is not in it."""
    if not cluster:
        return [(m.label, m.statements) for m in render(database, "", policy)]
    on_cluster = engines(cluster)["on_cluster"]
    return [("local database", (f"CREATE DATABASE IF NOT EXISTS {local_database(database)} {on_cluster}",)),
            *((m.label, m.statements) for m in render(local_database(database), cluster, policy)),
            ("distributed tables", tuple(distributed_statements(database, cluster, policy)))]


def cluster_statements(database: str, cluster: str, policy: Policy | None = None) -> list[str]:
    """The whole cluster schema in apply order (``script``'s statements)."""
    return [s for _, statements in script(database, cluster, policy) for s in statements]


def apply_cluster(client: Any, database: str, cluster: str, policy: Policy | None = None) -> list[str]:
    """Apply pending migrations to ``<db>_local`` ON CLUSTER, then (re)create the Distributed layer.

    Idempotent: migrations are versioned in ``<db>_local.schema_migrations``; every Distributed
    statement is ``IF NOT EXISTS``. Returns the migrations applied now.
    """
    applied = apply(client, local_database(database), cluster, policy)
    for statement in distributed_statements(database, cluster, policy):
        client.command(statement)
    columns = "SELECT table, name, type FROM system.columns WHERE database = {d:String} ORDER BY table, position"
    local, dist = ([tuple(r) for r in client.query(columns, parameters={"d": d}).result_rows]
                   for d in (local_database(database), database))
    for statement in distributed_column_fixes(local, dist, database, cluster):
        client.command(statement)
    return applied


def distributed_column_fixes(local: list[tuple[str, str, str]], dist: list[tuple[str, str, str]], database: str,
                             cluster: str) -> list[str]:
    """``ALTER ... ADD/DROP COLUMN`` for the Distributed tables, from (table, column, type) rows of
    ``system.columns`` in apply order. A Distributed table is created once ``AS`` its local table, so
    a column a later migration adds to the local table (e.g. 008 on ``dead_letters``) is missing from
    it, and every insert naming that column would fail on a cluster that predates the migration; a
    column a later migration drops (010's ``ingest_batch``) would stay on it, and the Distributed
    table would forward that column to shards that no longer have it."""
    have = {(table, name) for table, name, _ in dist}
    kept = {(table, name) for table, name, _ in local}
    tables = {table for table, _, _ in dist}
    on_cluster = engines(cluster)["on_cluster"]
    out: list[str] = []
    previous: dict[str, str] = {}
    for table, name, kind in local:
        if table in tables and (table, name) not in have:
            after = f" AFTER {previous[table]}" if table in previous else " FIRST"
            out.append(f"ALTER TABLE {database}.{table} {on_cluster} ADD COLUMN IF NOT EXISTS {name} {kind}{after}")
        previous[table] = name
    local_tables = {table for table, _, _ in local}
    for table, name, _ in dist:
        if table in local_tables and (table, name) not in kept:
            out.append(f"ALTER TABLE {database}.{table} {on_cluster} DROP COLUMN IF EXISTS {name}")
    return out
