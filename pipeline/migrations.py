"""Versioned, idempotent ClickHouse migrations rendered from ``schemas/clickhouse/*.sql``.

Each file is a template: ``{db}``, ``{on_cluster}``, engine placeholders and the retention days of
the policy file. The same templates give the single-node schema (default) and the cluster schema
(``ON CLUSTER`` + Replicated engines), so both always carry the same columns and TTLs.
Applied versions are recorded in ``schema_migrations``; re-running applies only what is new.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .policy import SCHEMAS_DIR, Policy, load_policy

MIGRATIONS_DIR = SCHEMAS_DIR / "clickhouse"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One rendered migration file."""

    version: int
    name: str
    statements: tuple[str, ...]
    checksum: str


def engines(cluster: str) -> dict[str, str]:
    """Engine clauses for single-node or replicated (Keeper paths per shard) tables."""
    if not cluster:
        return {"on_cluster": "", "engine_mergetree": "MergeTree",
                "engine_aggregating": "AggregatingMergeTree",
                "engine_replacing": "ReplacingMergeTree(updated_at)"}
    path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
    return {"on_cluster": f"ON CLUSTER '{cluster}'",
            "engine_mergetree": f"ReplicatedMergeTree({path})",
            "engine_aggregating": f"ReplicatedAggregatingMergeTree({path})",
            "engine_replacing": f"ReplicatedReplacingMergeTree({path}, updated_at)"}


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
    values: dict[str, Any] = {"db": database, **engines(cluster), **policy.template_values()}
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
    """Create the database and apply pending migrations; returns the names applied now."""
    on_cluster = engines(cluster)["on_cluster"]
    client.command(f"CREATE DATABASE IF NOT EXISTS {database} {on_cluster}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations {on_cluster} "
        "(version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()) "
        f"ENGINE = {engines(cluster)['engine_replacing'].replace('updated_at', 'applied_at')} ORDER BY version"
    )
    done = {row[0] for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows}
    applied = []
    for migration in render(database, cluster, policy):
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert(f"{database}.schema_migrations", [[migration.version, migration.name, migration.checksum]],
                      column_names=["version", "name", "checksum"])
        applied.append(f"{migration.version:03d}_{migration.name}")
    return applied
