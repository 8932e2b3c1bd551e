"""The pure parts behind per-app retention, erasure and the policy file: which rows per-app retention
deletes and when (never later than the app's limit), that the tables it touches count from the same
column as their TTL, the erasure report's Kafka notes, registry updates, and policy-file validation."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config.policy import POLICY_FILE, load_policy
from pipeline.ops import erasure, registry
from pipeline.schema import migrations

POLICY = load_policy()
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def test_plan_groups_apps_by_limit_and_skips_limits_the_policy_already_has() -> None:
    plan = registry.plan_deletions({7: 2, 8: 1, 9: 2, 10: 30}, POLICY, NOW)
    got = {(d.table, d.days): (d.apps, d.cutoff) for d in plan}
    midnight = lambda day: datetime(2026, 3, day, tzinfo=UTC)  # noqa: E731
    assert got == {
        ("request_logs", 1): ((8,), midnight(10)), ("request_logs", 2): ((7, 9), midnight(9)),
        ("monitoring_samples", 1): ((8,), midnight(10)), ("interface_stats_1m", 1): ((8,), midnight(10)),
    }  # 2 days is Monitoring Data's own limit; 30 days is longer than any: no effect
    assert registry.plan_deletions({}, POLICY, NOW) == []


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)),
       st.integers(min_value=1, max_value=6))
def test_no_row_outlives_its_app_limit_and_whole_days_go_together(now: datetime, days: int) -> None:
    (deletion,) = [d for d in registry.plan_deletions({1: days}, POLICY, now) if d.table == "request_logs"]
    ahead = timedelta(seconds=registry.ENFORCE_AHEAD_S)
    assert now - timedelta(days=days) < deletion.cutoff  # every row older than the limit is due now
    assert deletion.cutoff <= now + ahead - timedelta(days=days - 1)  # nothing younger than limit - 1 day - ahead
    assert deletion.cutoff.time() == datetime.min.time()  # whole days, like toDate(...) + N DAY TTLs


def test_app_scoped_tables_count_from_their_ttl_column_and_carry_the_app_id() -> None:
    desired = migrations.desired_ttls("imtel")
    statements = {m.name: " ".join(m.statements) for m in migrations.render("imtel")}
    for table, column in registry.APP_SCOPED_TABLES.items():
        base = migrations.parse_ttl(desired[table])[0].base
        assert column in re.findall(r"\w+", base), table
        ddl = next(s for s in statements.values() if f"imtel.{table} " in s)
        assert re.search(r"^\s*sdk_app_id\s+UInt32", ddl, re.MULTILINE), table
    assert set(registry.APP_SCOPED_TABLES) >= set(erasure.PERSONAL_TABLES + erasure.AGGREGATE_TABLES)


def test_registry_updates_keep_the_whole_state() -> None:
    stored = registry.jsonable([dict(zip(registry.COLUMNS, [1400000001, "Demo", "active",
                                                             datetime(2026, 1, 2, 3, 4, 5), None, 3, NOW],
                                          strict=True))])[0]
    update = registry.update_from_row(stored, status="terminated", terminated_at=1_700_000_000_000)
    assert (update.name, update.retention_days, update.created_at) == ("Demo", 3, 1_767_323_045_000)
    row = registry.row(update, NOW)
    assert row[2] == "terminated" and row[4] == datetime.fromtimestamp(1_700_000_000, UTC)
    reactivated = registry.row(registry.update_from_row(stored, status="active", terminated_at=1), NOW)
    assert reactivated[4] is None
    with pytest.raises(msgspec.ValidationError):
        registry.make_update(sdk_app_id=1, name="x", retention_days=0)
    with pytest.raises(msgspec.ValidationError):
        registry.make_update(sdk_app_id=0, name="x")


def test_erasure_notes_say_what_kafka_keeps_and_until_when() -> None:
    topics = {"request_logs": "logs", "monitoring_samples": "samples", "dead_letters": "dlq", "applications": "apps"}
    notes = erasure.kafka_notes(topics, POLICY, NOW)
    assert any(n.startswith("Kafka topic dlq:") and "2026-03-12 12:00" in n for n in notes)
    assert any(n.startswith("Kafka topic logs:") and "2026-03-17 12:00" in n for n in notes)
    assert not any("Kafka topic apps" in n for n in notes)  # configuration, not the app's personal data
    with pytest.raises(erasure.ErasureError):
        erasure.check_app(0)


def _policy_text(tmp_path: Path, old: str, new: str) -> Path:
    text = POLICY_FILE.read_text()
    assert old in text
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(("old", "new", "needle"), [
    ("segment_ms: 3600000", "segment_ms: 172800000", "shorter than every topic's limit"),
    ("caps: [log_data, monitoring_data]", "caps: [log_data, chat]", "unknown category 'chat'"),
    ("retention_days: 365", "retention_days: -1", "records.erasure_log.retention_days"),
    ("retention_check_ms: 300000", "retention_check_ms: 5m", "kafka.retention_check_ms"),
])
def test_a_broken_policy_file_is_one_clear_error(tmp_path: Path, old: str, new: str, needle: str) -> None:
    with pytest.raises(ValueError, match="is unusable") as info:
        load_policy(_policy_text(tmp_path, old, new))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_policy_records_and_templates() -> None:
    assert POLICY.records == {"erasure_log": 365}
    assert POLICY.audited_table_days()["erasure_log"] == 365
    assert POLICY.template_values()["erasure_log_days"] == 365
    assert POLICY.per_app_caps == ("log_data", "monitoring_data")
