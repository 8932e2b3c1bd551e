"""The cluster schema (pipeline/schema/migrations.py) checked by the embedded ClickHouse engine (chDB).

chDB cannot run ON CLUSTER, Replicated or Distributed tables (no Keeper, no remote_servers), so:
1. its parser (``formatQuerySingleLine``) must accept every statement of the cluster schema;
2. each replicated local table, with only ``ON CLUSTER`` and the Replicated wrapper removed, is created
   next to the single-node schema in one store, and both must have the same columns (names, types,
   defaults, codecs) and the same engine clause (partitioning, ORDER BY, TTL, settings).
chDB allows one data folder per process, so the engine work runs in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHILD = r"""
import json, re, sys
import clickhouse_connect
from pipeline.schema import migrations

db, cluster, path = sys.argv[1:4]
client = clickhouse_connect.get_client(dsn="chdb://" + path)
def fmt(q):
    return client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": q}).result_rows[0][0]
rejected = []
for statement in migrations.cluster_statements(db, cluster):
    try:
        fmt(statement)
    except Exception as exc:
        rejected.append([statement, str(exc)[:300]])
migrations.apply(client, db)                                   # the single-node schema, for real
local_db = migrations.local_database(db)
client.command(f"CREATE DATABASE IF NOT EXISTS {local_db}")
unwrapped = []
for statement in migrations.local_statements(db, cluster):
    text = fmt(statement)
    plain = re.sub(r" ON CLUSTER \S+", "", text)
    plain = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(, )?", r"\1(", plain)
    unwrapped.append([text, plain])
    client.command(plain)
def describe(database):
    cols = client.query("SELECT table, name, type, default_kind, default_expression, compression_codec "
                        "FROM system.columns WHERE database = {d:String} ORDER BY table, position",
                        parameters={"d": database}).result_rows
    engines = client.query("SELECT name, engine, engine_full FROM system.tables WHERE database = {d:String}",
                           parameters={"d": database}).result_rows
    return {"columns": [list(r) for r in cols], "engines": {n: f for n, _, f in engines},
            "kinds": {n: e for n, e, _ in engines}}
json.dump({"rejected": rejected, "unwrapped": unwrapped, "single": describe(db),
           "cluster": describe(local_db)}, sys.stdout)
"""


@pytest.fixture(scope="module")
def engine_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = tmp_path_factory.mktemp("chdb-cluster-schema")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", CHILD, "imtel", "imtel", str(store)], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_engine_parser_accepts_every_cluster_statement(engine_report: dict) -> None:
    assert engine_report["rejected"] == []


def test_cluster_statements_are_replicated_and_on_cluster(engine_report: dict) -> None:
    for text, plain in engine_report["unwrapped"]:
        assert " ON CLUSTER imtel " in text
        if text.startswith("CREATE TABLE"):  # ALTERs (e.g. migration 007's settings) carry no engine
            assert "ENGINE = Replicated" in text and "/clickhouse/tables/{shard}/{database}/{table}" in text
        assert text != plain


def test_cluster_and_single_node_tables_have_same_columns_and_ttl(engine_report: dict) -> None:
    single, cluster = engine_report["single"], engine_report["cluster"]
    # schema_migrations is made by migrations.apply, not by the templates: compare the template tables.
    tables = {t for t, *_ in cluster["columns"]}
    assert [c for c in single["columns"] if c[0] in tables] == cluster["columns"]
    assert tables and tables <= set(single["engines"])
    for table in tables:
        assert cluster["engines"][table] == single["engines"][table], table
        # the registry's TTL counts from termination, as in the template; a view stores nothing itself
        if table != "applications" and single["kinds"][table] != "MaterializedView":
            assert " TTL " in single["engines"][table], f"{table} has no TTL"
