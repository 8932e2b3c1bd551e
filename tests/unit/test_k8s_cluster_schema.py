"""The cluster schema's layout: replicated locals in <db>_local, a Distributed table over each."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.schema import migrations

DB, CLUSTER = "imtel", "imtel"


def test_local_schema_is_the_migrations_rendered_for_the_local_database() -> None:
    rendered = [s for m in migrations.render("imtel_local", CLUSTER) for s in m.statements]
    assert migrations.local_statements(DB, CLUSTER) == rendered
    for statement in rendered:
        if statement.startswith("CREATE TABLE"):
            assert "ON CLUSTER 'imtel'" in statement
            assert re.search(r"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/\{shard\}/", statement)


def test_every_local_table_has_a_distributed_table_with_the_same_name() -> None:
    local = migrations.created_tables(migrations.local_statements(DB, CLUSTER))
    dist = migrations.distributed_statements(DB, CLUSTER)
    assert dist[0] == "CREATE DATABASE IF NOT EXISTS imtel ON CLUSTER 'imtel'"
    assert migrations.created_tables(dist) == [(DB, t) for _, t in local]
    for (_, table), statement in zip(local, dist[1:], strict=True):
        assert f" AS imtel_local.{table} " in statement  # columns come from the local table itself
        assert f"ENGINE = Distributed('imtel', 'imtel_local', '{table}', " in statement


def test_partition_owned_tables_shard_by_kafka_partition() -> None:
    dist = {t: s for (_, t), s in zip(migrations.created_tables(migrations.distributed_statements(
        DB, CLUSTER)), migrations.distributed_statements(DB, CLUSTER)[1:], strict=True)}
    for table in ("request_logs", "monitoring_samples", "interface_stats_1m"):
        assert dist[table].endswith(", src_partition)")


def test_apply_runs_migrations_on_the_local_database_then_the_distributed_layer() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.commands: list[str] = []

        def command(self, sql: str) -> None:
            self.commands.append(sql)

        def query(self, sql: str, parameters: object = None) -> object:
            return type("R", (), {"result_rows": []})()

        def insert(self, *args: object, **kwargs: object) -> None:
            pass

    client = Recorder()
    applied = migrations.apply_cluster(client, DB, CLUSTER)
    assert applied and client.commands[0] == "CREATE DATABASE IF NOT EXISTS imtel_local ON CLUSTER 'imtel'"
    assert client.commands[-len(migrations.distributed_statements(DB, CLUSTER)):] == \
        migrations.distributed_statements(DB, CLUSTER)
    assert migrations.INSERT_SETTINGS == {"distributed_foreground_insert": 1,
                                          "deduplicate_blocks_in_dependent_materialized_views": 1}


def test_the_worker_clickhouse_profile_makes_distributed_inserts_synchronous() -> None:
    """The workers commit Kafka offsets once an INSERT returns: on a cluster that is only safe when the
    Distributed insert waited for every shard, so the profile of the worker's user (k8s/) must carry
    INSERT_SETTINGS. The migration and Grafana users never insert rows."""
    chi = yaml.safe_load((Path(__file__).resolve().parents[2] / "k8s/base/clickhouse/installation.yaml").read_text())
    config = chi["spec"]["configuration"]
    profile = config["users"]["imtel_worker/profile"]
    for setting, value in migrations.INSERT_SETTINGS.items():
        assert config["profiles"][f"{profile}/{setting}"] == value


def test_columns_a_migration_adds_reach_the_distributed_tables() -> None:
    """A cluster created before migration 008: its Distributed ``dead_letters`` lacks the new columns."""
    local = [("dead_letters", "ingest_time", "DateTime64(3, 'UTC')"), ("dead_letters", "reason", "String"),
             ("dead_letters", "sdk_app_id", "UInt32"), ("dead_letters", "replay_count", "UInt8"),
             ("request_logs", "request_time", "DateTime64(3, 'UTC')"), ("schema_migrations", "version", "UInt32")]
    dist = [("dead_letters", "ingest_time", "DateTime64(3, 'UTC')"), ("dead_letters", "reason", "String"),
            ("request_logs", "request_time", "DateTime64(3, 'UTC')")]
    assert migrations.distributed_column_fixes(local, dist, DB, CLUSTER) == [
        "ALTER TABLE imtel.dead_letters ON CLUSTER 'imtel' ADD COLUMN IF NOT EXISTS sdk_app_id UInt32 AFTER reason",
        "ALTER TABLE imtel.dead_letters ON CLUSTER 'imtel' ADD COLUMN IF NOT EXISTS replay_count UInt8 "
        "AFTER sdk_app_id"]
    assert migrations.distributed_column_fixes(local, local, DB, CLUSTER) == []


def test_columns_a_migration_drops_leave_the_distributed_tables() -> None:
    """A cluster created before migration 010: its Distributed raw tables still have ``ingest_batch``,
    and would forward it to shards whose local tables no longer do."""
    local = [("request_logs", "request_time", "DateTime64(3, 'UTC')"), ("request_logs", "src_index", "UInt32"),
             ("request_logs", "ingest_time", "DateTime64(3, 'UTC')"), ("monitoring_samples", "src_index", "UInt32")]
    dist = [("request_logs", "request_time", "DateTime64(3, 'UTC')"), ("request_logs", "src_index", "UInt32"),
            ("request_logs", "ingest_batch", "UInt64"), ("request_logs", "ingest_time", "DateTime64(3, 'UTC')"),
            ("monitoring_samples", "src_index", "UInt32"), ("monitoring_samples", "ingest_batch", "UInt64")]
    assert migrations.distributed_column_fixes(local, dist, DB, CLUSTER) == [
        "ALTER TABLE imtel.request_logs ON CLUSTER 'imtel' DROP COLUMN IF EXISTS ingest_batch",
        "ALTER TABLE imtel.monitoring_samples ON CLUSTER 'imtel' DROP COLUMN IF EXISTS ingest_batch"]


def test_each_shards_views_fold_its_local_raw_table_into_its_local_aggregate() -> None:
    """Migration 009 on a cluster: an insert through a Distributed table lands in one shard's local raw
    table, so the view must sit on that local table and write the local aggregate table. The views get
    no Distributed table (they store nothing), and their SELECT is the recovery's (schema/aggregates.py)."""
    from pipeline.schema import aggregates

    views = [s for s in migrations.cluster_statements(DB, CLUSTER) if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == 2
    for table, statement in zip(("request_logs", "monitoring_samples"), views, strict=True):
        assert statement.startswith(f"CREATE MATERIALIZED VIEW IF NOT EXISTS imtel_local.{table}_stats "
                                    f"ON CLUSTER 'imtel' TO imtel_local.interface_stats_1m AS\n")
        assert statement.endswith(aggregates.stats_select(table, "imtel_local"))
    assert not [s for s in migrations.distributed_statements(DB, CLUSTER) if "_stats " in s]
