"""`imtel erase` on the real embedded engine: every row of the app goes (from disk, not just hidden),
nothing of other apps; aggregates only when asked; an audit record without personal data; re-running
is safe and logged; what Kafka keeps is said."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_sql

pytestmark = pytest.mark.integration
APP, OTHER = 1400000001, 1400000002
NET = "198.51.100.0/24"


def erase(env: dict[str, str], *args: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "erase", "--format", "json", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    assert NET not in proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def seed(store: Path) -> None:
    logs = ", ".join(f"(now64(3) - INTERVAL {m} MINUTE, {app}, 'v4/openim/sendmsg', 'r{app}-{m}', '{NET}', 5, 0, "
                     "'r', 'p')" for app in (APP, OTHER) for m in (1, 30, 600))
    samples = ", ".join(f"(now64(3) - INTERVAL {m} MINUTE, {app}, 'i', 60, 10, 1, 4.5, 'sdk')"
                        for app in (APP, OTHER) for m in (5, 50))
    stats = ", ".join(f"(toStartOfMinute(now() - INTERVAL {m} MINUTE), {app}, 'i', 'log', 0, 3)"
                      for app in (APP, OTHER) for m in (1, 2))
    run_sql(store, [
        "INSERT INTO imtel.request_logs (request_time, sdk_app_id, interface, request_id, client_net, latency_ms, "
        f"error_code, region, platform) VALUES {logs}",
        "INSERT INTO imtel.monitoring_samples (window_start, sdk_app_id, interface, window_seconds, requests, "
        f"failures, latency_avg_ms, reporter) VALUES {samples}",
        f"INSERT INTO imtel.interface_stats_1m (minute, sdk_app_id, interface, source, src_partition, requests) "
        f"VALUES {stats}",
        "INSERT INTO imtel.dead_letters (src_topic, src_topic_id, src_partition, src_offset, src_index, reason, "
        "detail, payload_bytes, ingest_batch) VALUES ('logs', 't', 0, 9, -1, 'invalid_json', 'not JSON', 12, 1)",
    ])


COUNTS = [f"SELECT sdk_app_id, count() FROM imtel.{t} GROUP BY sdk_app_id ORDER BY sdk_app_id"
          for t in ("request_logs", "monitoring_samples", "interface_stats_1m")]


def test_erasure_removes_the_app_and_nothing_else(pipeline_env: dict[str, str]) -> None:
    env = pipeline_env  # no worker runs here: the CLI opens the store itself
    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    seed(store)

    code, report = erase(env, "--app", str(APP), "--requested-by", "dpo", "--reference", "TICKET-42")
    assert code == 0 and report["complete"] and report["scope"] == "personal"
    assert {t["table"]: (t["rows_before"], t["rows_deleted"]) for t in report["tables"]} == {
        "request_logs": (3, 3), "monitoring_samples": (2, 2)}
    assert any(n.startswith(f"Kafka topic {env['IMTEL_TOPIC_DEAD_LETTERS']}: records of this app cannot be deleted")
               for n in report["notes"])
    code, again = erase(env, "--app", str(APP), "--aggregates")  # re-run: only the aggregates were left
    assert code == 0 and again["complete"] and again["scope"] == "personal+aggregates"
    # the app's aggregate rows: 2 inserted directly, 3 log minutes and 2 sample minutes folded in by the views
    assert {t["table"]: (t["rows_before"], t["rows_deleted"]) for t in again["tables"]} == {
        "request_logs": (0, 0), "monitoring_samples": (0, 0), "interface_stats_1m": (7, 7)}

    rows = run_sql(store, [*COUNTS,
                           "SELECT sum(rows) FROM system.parts WHERE database = 'imtel' AND table = 'request_logs' "
                           "AND active",
                           "SELECT count() FROM imtel.dead_letters",
                           "SELECT count() FROM system.mutations WHERE database = 'imtel' AND NOT is_done",
                           "SELECT erasure_id, sdk_app_id, scope, table_name, rows_before, rows_deleted, requested_by, "
                           "reference, note FROM imtel.erasure_log ORDER BY erased_at, table_name",
                           "SELECT * FROM imtel.erasure_log"], migrate=False)
    assert rows[0] == [[OTHER, 3]] and rows[1] == [[OTHER, 2]] and rows[2] == [[OTHER, 7]]  # others untouched
    assert rows[3] == [[3]]  # the parts were rewritten without the rows: gone from disk, not only masked
    assert rows[4] == [[1]] and rows[5] == [[0]]  # the ledger has nothing of the app; no mutation left running
    log = rows[6]
    assert len(log) == 2 + 3 and len({r[0] for r in log}) == 2  # one row per table, one id per run
    assert log[:2] == [[report["erasure_id"], APP, "personal", "monitoring_samples", 2, 2, "dpo", "TICKET-42",
                        "complete"],
                       [report["erasure_id"], APP, "personal", "request_logs", 3, 3, "dpo", "TICKET-42", "complete"]]
    assert NET not in json.dumps(rows[6:])  # the log holds counts, never the data
