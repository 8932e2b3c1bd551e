"""The retention policy file drives the ClickHouse TTLs and the Kafka topics' retention.ms: the rendered DDL
carries the policy's days for every table it names, and follows the policy when the policy changes."""

from __future__ import annotations

import dataclasses
import re

import pytest

from pipeline.config.policy import DAY_MS, Policy, load_policy
from pipeline.config.settings import Settings
from pipeline.schema.migrations import render
from pipeline.schema.topics import topic_specs

EXPECTED_DAYS = {"request_logs": 7, "dead_letters": 7, "interface_stats_1m": 2, "monitoring_samples": 2,
                 "applications": 60}
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)")
_TTL = re.compile(r"^TTL\s.*?\bINTERVAL\s+(\d+)\s+DAY\b", re.MULTILINE)


def ttl_days(policy: Policy | None = None, cluster: str = "") -> dict[str, list[int]]:
    """Table -> the INTERVAL n DAY values of its TTL clause(s), from the rendered migrations."""
    out: dict[str, list[int]] = {}
    for migration in render("imtel", cluster, policy):
        for statement in migration.statements:
            match = _CREATE.search(statement)
            if match:
                assert match.group(1) == "imtel"
                out[match.group(2)] = [int(d) for d in _TTL.findall(statement)]
    return out


def test_policy_file_days() -> None:
    assert load_policy().table_days() == EXPECTED_DAYS


@pytest.mark.parametrize("cluster", ["", "main"])
def test_ddl_ttl_matches_policy(cluster: str) -> None:
    ddl = ttl_days(cluster=cluster)
    for table, days in load_policy().table_days().items():
        assert table in ddl, f"policy table {table} has no CREATE TABLE"
        assert ddl[table] == [days], f"{table}: TTL {ddl[table]} != policy {days} days"
    for table, days in EXPECTED_DAYS.items():
        assert ddl[table] == [days]


def _changed(policy: Policy, days: dict[str, int]) -> Policy:
    cats = {k: dataclasses.replace(c, retention_days=days.get(k, c.retention_days))
            for k, c in policy.categories.items()}
    return dataclasses.replace(policy, categories=cats)


@pytest.mark.parametrize("days", [
    {"log_data": 3},
    {"monitoring_data": 1},
    {"configuration_data": 30},
    {"log_data": 14, "monitoring_data": 5, "configuration_data": 90},
])
def test_ddl_follows_a_changed_policy(days: dict[str, int]) -> None:
    policy = _changed(load_policy(), days)
    ddl = ttl_days(policy)
    for table, want in policy.table_days().items():
        assert ddl[table] == [want]
    assert ddl != ttl_days()  # the default policy gives a different DDL, so a stale TTL would be caught


def test_unrendered_placeholders_absent() -> None:
    for migration in render("imtel"):
        for statement in migration.statements:
            assert "_days}" not in statement
            assert "{db}" not in statement


# Kafka deletes whole segments on a periodic check: retention.ms leaves room for segment.ms (1 h) and
# the broker's retention check (5 min), so a record never outlives the policy (schemas/retention.yaml).
HEADROOM_MS = 3_600_000 + 300_000


def test_topic_retention_from_policy() -> None:
    specs = {s.logical: s for s in topic_specs(Settings())}
    assert specs["request_logs"].config["retention.ms"] == str(7 * DAY_MS - HEADROOM_MS) == str(600_900_000)
    assert specs["monitoring_samples"].config["retention.ms"] == str(2 * DAY_MS - HEADROOM_MS)
    assert specs["dead_letters"].config["retention.ms"] == str(2 * DAY_MS - HEADROOM_MS)
    assert specs["applications"].config["retention.ms"] == str(60 * DAY_MS - HEADROOM_MS)
    assert specs["applications"].config["cleanup.policy"] == "compact,delete"
    for spec in specs.values():
        assert spec.config["segment.ms"] == "3600000"
        assert "delete" in spec.config["cleanup.policy"].split(",")
    assert specs["request_logs"].name == Settings().topic_request_logs


def test_topic_retention_follows_policy() -> None:
    policy = _changed(load_policy(), {"log_data": 1, "monitoring_data": 3})
    specs = {s.logical: s for s in topic_specs(Settings(), policy)}
    assert specs["request_logs"].config["retention.ms"] == str(DAY_MS - HEADROOM_MS)
    assert specs["monitoring_samples"].config["retention.ms"] == str(3 * DAY_MS - HEADROOM_MS)
    assert specs["dead_letters"].config["retention.ms"] == str(DAY_MS - HEADROOM_MS)  # min of what it carries
