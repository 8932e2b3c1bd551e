"""`imtel audit` against the real embedded engine and the bundled broker: a fresh deployment passes;
a TTL or a topic retention changed by hand fails naming the table / topic until `imtel migrate` /
`imtel topics` set them back; a policy change applied by the migrations shows up in `system.tables`
(without a MATERIALIZE TTL mutation) and in the audit, which reports the rows older than the new
limit until `MATERIALIZE TTL` removes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config.policy import DAY_MS, POLICY_FILE
from tests.support.kafka_io import alter_topic

from .conftest import run_sql

pytestmark = pytest.mark.integration
LOG_COLUMNS = "(request_time, sdk_app_id, interface, request_id, client_net, latency_ms, error_code, region, platform)"


def imtel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def audit(env: dict[str, str], *args: str) -> tuple[int, dict]:
    proc = imtel(env, "audit", "--format", "json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def statuses(doc: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["checks"]}


def test_fresh_deployment_passes_and_hand_changes_fail(pipeline_env: dict[str, str]) -> None:
    env, dlq = pipeline_env, pipeline_env["IMTEL_TOPIC_DEAD_LETTERS"]
    assert imtel(env, "migrate").returncode == 0
    assert imtel(env, "topics").returncode == 0
    code, doc = audit(env)
    assert code == 0 and doc["verdict"] == "pass", doc
    assert set(statuses(doc).values()) == {"ok"} and len(doc["checks"]) == 10

    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    run_sql(store, ["ALTER TABLE imtel.request_logs MODIFY TTL toDate(request_time) + INTERVAL 30 DAY"], migrate=False)
    alter_topic(env["IMTEL_KAFKA_BOOTSTRAP"], dlq, retention_ms=str(7 * DAY_MS))
    proc = imtel(env, "audit")
    assert proc.returncode == 1
    verdict = proc.stdout.strip().splitlines()[-1]
    assert verdict.startswith("verdict: FAIL (2 of 10 checks)") and "imtel.request_logs" in verdict and dlq in verdict
    assert "imtel.request_logs: TTL keeps rows 30d, policy allows 7d" in proc.stdout
    assert f"{dlq}: records may live 7d1h5m, policy allows 2d" in proc.stdout

    migrated, topics = imtel(env, "migrate"), imtel(env, "topics")  # both set back what the policy says
    assert "ttl request_logs: toDate(request_time) + INTERVAL 7 DAY" in migrated.stdout
    assert f"{dlq}: retention.ms {7 * DAY_MS} -> {2 * DAY_MS - 3_900_000}" in topics.stdout
    assert imtel(env, "migrate").stdout.startswith("applied: nothing")  # and only once


def test_policy_change_through_migrations_and_old_rows(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    env, logs = pipeline_env, pipeline_env["IMTEL_TOPIC_REQUEST_LOGS"]
    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    run_sql(store, [f"INSERT INTO imtel.request_logs {LOG_COLUMNS} VALUES "
                    "(now64(3) - INTERVAL 5 DAY, 1, 'v4/openim/sendmsg', 'old', '203.0.113.0/24', 5, 0, 'r', 'p'), "
                    "(now64(3) - INTERVAL 1 HOUR, 1, 'v4/openim/sendmsg', 'new', '203.0.113.0/24', 5, 0, 'r', 'p')"])
    policy = tmp_path / "retention.yaml"
    policy.write_text(POLICY_FILE.read_text().replace("retention_days: 7", "retention_days: 3"))

    migrated = imtel(env, "migrate", "--policy", str(policy))
    assert "ttl request_logs: toDate(request_time) + INTERVAL 3 DAY" in migrated.stdout, migrated.stderr
    assert "ttl dead_letters: toDate(ingest_time) + INTERVAL 3 DAY" in migrated.stdout
    assert "MATERIALIZE TTL" in migrated.stdout  # says what happens to the rows already stored
    assert logs in imtel(env, "topics", "--policy", str(policy)).stdout

    code, doc = audit(env, "--policy", str(policy))  # the new TTLs are the policy's; the 5-day row is not
    assert code == 1 and doc["verdict"] == "fail"
    failed = {c["name"]: c for c in doc["checks"] if c["status"] != "ok"}
    assert list(failed) == ["imtel.request_logs"]
    assert "oldest row is 5d old, policy allows 3d" in failed["imtel.request_logs"]["detail"]
    assert failed["imtel.request_logs"]["limit_s"] == 3 * 86_400
    topic = next(c for c in doc["checks"] if c["name"] == logs)
    assert topic["status"] == "ok" and topic["actual"].startswith("retention 2d22h55m + segment 1h")

    engines, mutations, _, rows = run_sql(store, [
        "SELECT name, engine_full FROM system.tables WHERE database = 'imtel' AND name IN ('request_logs', "
        "'dead_letters') ORDER BY name",
        # 010's DROP INDEX / DROP COLUMN are mutations (of tables empty when it ran): the TTL's are counted
        "SELECT count() FROM system.mutations WHERE database = 'imtel' AND command LIKE '%TTL%'",
        "ALTER TABLE imtel.request_logs MATERIALIZE TTL SETTINGS mutations_sync = 2",
        "SELECT request_id FROM imtel.request_logs"], migrate=False)
    assert all("TTL " in e and "toIntervalDay(3)" in e for _, e in engines), engines
    assert mutations == [[0]]  # materialize_ttl_after_modify = 0: nothing was rewritten by surprise
    assert rows == [["new"]]  # the operator's MATERIALIZE TTL applied the new period to the stored part
    code, doc = audit(env, "--policy", str(policy))
    assert code == 0 and set(statuses(doc).values()) == {"ok"}, doc


def test_cluster_statements_parse(tmp_path: Path) -> None:
    """chDB cannot run ON CLUSTER, but its parser checks the statements the cluster form sends."""
    from pipeline.schema import migrations

    class Recorder:
        def __init__(self) -> None:
            self.commands: list[str] = []

        def query(self, sql: str) -> object:
            rows = [("request_logs", "MergeTree ORDER BY x TTL toDate(request_time) + toIntervalDay(30)")]
            return type("R", (), {"result_rows": rows})()

        def command(self, sql: str) -> None:
            self.commands.append(sql)

    client = Recorder()
    migrations.reconcile_ttls(client, "imtel_local", "main")
    statements = [*client.commands,
                  f"ALTER TABLE {migrations.data_table('imtel', 'request_logs', 'main')} DELETE WHERE "
                  "sdk_app_id = {app:UInt32} SETTINGS mutations_sync = 2",
                  f"OPTIMIZE TABLE {migrations.data_table('imtel', 'applications', 'main')} FINAL"]
    quoted = [s.replace("\\", "\\\\").replace("'", "\\'") for s in statements]
    parsed = run_sql(tmp_path / "store", [f"SELECT formatQuerySingleLine('{q}')" for q in quoted], migrate=False)
    assert parsed[0][0][0] == ("ALTER TABLE imtel_local.request_logs ON CLUSTER main (MODIFY TTL toDate(request_time) "
                               "+ toIntervalDay(7)) SETTINGS materialize_ttl_after_modify = 0")
    assert "imtel_local.request_logs ON CLUSTER main (DELETE WHERE sdk_app_id = {app:UInt32})" in parsed[1][0][0]
    assert parsed[2][0][0].startswith("OPTIMIZE TABLE imtel_local.applications ON CLUSTER main FINAL")
