"""The cluster form of the schema: replicated local tables + ``Distributed`` tables over them.

Layout (one source, ``schemas/clickhouse/*.sql`` rendered by ``migrations.render``):

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

import re
from typing import Any

from pipeline.config.policy import Policy
from pipeline.schema.migrations import apply as apply_migrations
from pipeline.schema.migrations import engines, render

LOCAL_SUFFIX = "_local"
# distributed_foreground_insert (ClickHouse >= 23.x; formerly insert_distributed_sync): an INSERT into
# a Distributed table returns only after every shard has acknowledged its part.
INSERT_SETTINGS = {"distributed_foreground_insert": 1}
_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s", re.IGNORECASE)
_SHARDING_BY_TABLE = {"applications": "sdk_app_id"}


def local_database(database: str) -> str:
    """Database holding the replicated local tables."""
    return database + LOCAL_SUFFIX


def created_tables(statements: list[str]) -> list[tuple[str, str]]:
    """(database, table) of every CREATE TABLE statement, in order."""
    return [(m.group(1), m.group(2)) for m in map(_CREATE.match, statements) if m]


def sharding_key(table: str, statement: str) -> str:
    """Sharding expression for ``table`` given its CREATE statement (see module docstring)."""
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


def statements(database: str, cluster: str, policy: Policy | None = None) -> list[str]:
    """The whole cluster schema in apply order (for ``imtel migrate --cluster NAME --print``)."""
    on_cluster = engines(cluster)["on_cluster"]
    return [f"CREATE DATABASE IF NOT EXISTS {local_database(database)} {on_cluster}",
            *local_statements(database, cluster, policy),
            *distributed_statements(database, cluster, policy)]


def apply(client: Any, database: str, cluster: str, policy: Policy | None = None) -> list[str]:
    """Apply pending migrations to ``<db>_local`` ON CLUSTER, then (re)create the Distributed layer.

    Idempotent: migrations are versioned in ``<db>_local.schema_migrations``; every Distributed
    statement is ``IF NOT EXISTS``. Returns the migrations applied now.
    """
    applied = apply_migrations(client, local_database(database), cluster, policy)
    for statement in distributed_statements(database, cluster, policy):
        client.command(statement)
    return applied
