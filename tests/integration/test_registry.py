"""The application registry on the real engine and broker: an app terminated more than 2 months ago
disappears after a merge (and never comes back as active); per-app retention deletes exactly the
app's rows past its limit, which the audit reports before and clears after; and the CLI works while
the embedded pipeline runs (updates through the topic, reads / audit / erasure through the worker)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import run_sql

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


def imtel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def run_registry(store: Path, body: str) -> object:
    """Run registry code against the store in a child process (chDB: one process per store)."""
    script = textwrap.dedent("""
        import json, time
        import clickhouse_connect
        from pipeline.schema import migrations
        from pipeline.ops import registry
        from pipeline.monitoring.metrics import Metrics
        from pipeline.sinks.clickhouse import ClickHouseStore
        client = clickhouse_connect.get_client(dsn="chdb://{store}")
        migrations.apply(client, "imtel")
        store = ClickHouseStore(client, "imtel", Metrics())
        now_ms = int(time.time() * 1000)
        def update(**fields):
            return json.dumps(fields).encode()
    """).format(store=store) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_terminated_apps_disappear_two_months_after_termination(tmp_path: Path) -> None:
    out = run_registry(tmp_path / "store", """
        import datetime
        from pipeline.config.policy import load_policy
        day = 86_400_000
        def row(app, name, status="active", terminated_days_ago=None, version_age_s=0):
            u = registry.make_update(sdk_app_id=app, name=name, status=status, created_at=now_ms - 100 * day,
                                     terminated_at=None if terminated_days_ago is None else
                                     now_ms - terminated_days_ago * day)
            r = registry.row(u)
            r[-1] = r[-1] - datetime.timedelta(seconds=version_age_s)
            return r
        # app 1: two versions, the later one terminated 61 days ago (faked times, written together: a
        # termination is merged with the app's older versions when it is applied, see apply_update).
        # TTL merges wait until the "before" look: a background one may otherwise drop app 1 first.
        client.command("SYSTEM STOP TTL MERGES imtel.applications")
        store.client.insert("imtel.applications", [row(1, "old", version_age_s=10),
                                                   row(1, "renamed", "terminated", 61),
                                                   row(2, "ended recently", "terminated", 10),
                                                   row(3, "in use")], column_names=registry.COLUMNS)
        registry.apply_update(store, b'{"sdk_app_id": 4, "name": "x", "retention_days": 0}')  # invalid: skipped
        before = [a["sdk_app_id"] for a in registry.list_apps(store)]
        client.command("SYSTEM START TTL MERGES imtel.applications")
        client.command("OPTIMIZE TABLE imtel.applications FINAL")
        after = [(a["sdk_app_id"], a["status"]) for a in registry.list_apps(store)]
        raw = client.query("SELECT sdk_app_id, count() FROM imtel.applications GROUP BY sdk_app_id "
                           "ORDER BY sdk_app_id").result_rows

        # app 5 terminated through the topic path: its older version is merged away right then
        registry.apply_update(store, update(sdk_app_id=5, name="demo", created_at=now_ms))
        registry.apply_update(store, update(sdk_app_id=5, name="demo", status="terminated", created_at=now_ms))
        app5 = client.query("SELECT status FROM imtel.applications WHERE sdk_app_id = 5").result_rows

        # app 6: a terminated version left alone in its own part (a failed merge) is merged by the worker
        client.command("SYSTEM STOP MERGES imtel.applications")
        registry.apply_update(store, update(sdk_app_id=6, name="demo", created_at=now_ms))
        store.client.insert("imtel.applications", [row(6, "demo", "terminated", 0)], column_names=registry.COLUMNS)
        parts = client.query("SELECT count() FROM system.parts WHERE table = 'applications' AND active").result_rows
        client.command("SYSTEM START MERGES imtel.applications")
        done = [registry.enforce_app_retention(store, load_policy()) for _ in range(2)]
        app6 = client.query("SELECT status FROM imtel.applications WHERE sdk_app_id = 6").result_rows
        print(json.dumps({"before": before, "after": after, "raw": [list(r) for r in raw], "app5": app5,
                          "parts": parts[0][0], "done": done, "app6": app6}))
    """)
    assert out == {  # type: ignore[comparison-overlap]
        "before": [1, 2, 3], "after": [[2, "terminated"], [3, "active"]],
        "raw": [[2, 1], [3, 1]],  # no older version of app 1 left behind to bring it back as active
        "app5": [["terminated"]],
        "parts": 3, "done": [["applications: merged the versions of terminated apps"], []], "app6": [["terminated"]],
    }


def test_per_app_retention_is_enforced_and_audited(pipeline_env: dict[str, str]) -> None:
    env, store = pipeline_env, Path(pipeline_env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    a, b, c = 1400000001, 1400000002, 1400000003  # a: 2 days, b: the policy, c: 1 day
    logs = ", ".join(f"(now64(3) - INTERVAL {age}, {app}, 'i', '{app}-{n}', '203.0.113.0/24', 5, 0, 'r', 'p')"
                     for n, (app, age) in enumerate([(a, "3 DAY"), (a, "1 HOUR"), (b, "3 DAY")]))
    run_sql(store, [
        "INSERT INTO imtel.applications (sdk_app_id, name, status, created_at, retention_days) VALUES "
        f"({a}, 'short', 'active', now(), 2), ({b}, 'policy', 'active', now(), NULL), ({c}, 'shortest', 'active', "
        "now(), 1)",
        "INSERT INTO imtel.request_logs (request_time, sdk_app_id, interface, request_id, client_net, latency_ms, "
        f"error_code, region, platform) VALUES {logs}",
        "INSERT INTO imtel.monitoring_samples (window_start, sdk_app_id, interface, window_seconds, requests, "
        f"failures, latency_avg_ms, reporter) VALUES (now64(3) - INTERVAL 30 HOUR, {a}, 'i', 60, 1, 0, 1, 'g'), "
        f"(now64(3) - INTERVAL 30 HOUR, {c}, 'i', 60, 1, 0, 1, 'g')",
    ])
    before = imtel(env, "audit", "--format", "json")
    assert before.returncode == 1, before.stderr
    failed = sorted(ch["name"] for ch in json.loads(before.stdout)["checks"] if ch["status"] == "violation")
    # c's sample was also folded into interface_stats_1m (migration 009's view): past c's day there too
    assert failed == [f"app {a} request_logs", f"app {c} interface_stats_1m", f"app {c} monitoring_samples"]

    enforced = imtel(env, "apps", "enforce")
    assert enforced.returncode == 0, enforced.stderr
    assert "request_logs: 1 rows of 1 app(s) with 2-day retention" in enforced.stdout
    assert "monitoring_samples: 1 rows of 1 app(s) with 1-day retention" in enforced.stdout
    assert "interface_stats_1m: 1 rows of 1 app(s) with 1-day retention" in enforced.stdout
    after = imtel(env, "audit", "--format", "json")
    checks = {ch["name"]: ch["status"] for ch in json.loads(after.stdout)["checks"]}
    assert after.returncode == 0 and checks[f"app {a} request_logs"] == "ok", after.stdout
    assert checks[f"app {c} interface_stats_1m"] == "ok", after.stdout
    rows = run_sql(store, ["SELECT request_id FROM imtel.request_logs ORDER BY request_id",
                           "SELECT sdk_app_id FROM imtel.monitoring_samples"], migrate=False)
    assert rows == [[[f"{a}-1"], [f"{b}-2"]], [[a]]]  # a's old row gone; b (policy) and a's 2-day sample stay


def test_cli_while_the_pipeline_runs(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    env, port = pipeline_env, pipeline_env["IMTEL_WEB_PORT"]
    a, b = 1400000011, 1400000012
    log_file = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env, stdout=log_file,
                              stderr=subprocess.STDOUT)

    def apps() -> dict[int, dict]:  # what `imtel apps list` reads, polled without a process per try
        token = Path(env["IMTEL_DATA_DIR"], "worker.token")  # what the CLI sends, written by the worker at start
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/apps",
                                             headers={"Authorization": f"Bearer {token.read_text()}"})
            with urllib.request.urlopen(request, timeout=5) as resp:
                return {x["sdk_app_id"]: x for x in json.loads(resp.read())}
        except OSError:
            return {}

    def up(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 45
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {(tmp_path / 'worker.log').read_text()}"
            time.sleep(0.5)

    try:
        wait(lambda: up(f"http://127.0.0.1:{port}/healthz"), f"the worker on port {port}")
        assert imtel(env, "apps", "add", str(a), "Demo chat", "--retention-days", "3").returncode == 0
        assert imtel(env, "apps", "add", str(b), "Other").returncode == 0
        wait(lambda: set(apps()) == {a, b}, "the registry agent")
        terminated = imtel(env, "apps", "terminate", str(b))
        assert terminated.returncode == 0 and "terminated" in terminated.stdout, terminated.stderr
        wait(lambda: apps()[b]["status"] == "terminated", "the termination")
        listed = imtel(env, "apps", "list", "--format", "json")
        assert [(x["sdk_app_id"], x["name"], x["status"], x["retention_days"]) for x in json.loads(listed.stdout)] == [
            (a, "Demo chat", "active", 3), (b, "Other", "terminated", None)]

        audited = imtel(env, "audit", "--format", "json")  # the store is the worker's: only /audit can read it
        assert audited.returncode == 0, audited.stdout + audited.stderr
        assert f"app {a} request_logs" in {ch["name"] for ch in json.loads(audited.stdout)["checks"]}
        erased = imtel(env, "erase", "--app", str(a), "--format", "json")
        assert erased.returncode == 0 and json.loads(erased.stdout)["complete"], erased.stderr
        assert "enforces per-app retention" in imtel(env, "apps", "enforce").stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log_file.close()
    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    rows = run_sql(store, ["SELECT sdk_app_id, status FROM imtel.applications ORDER BY sdk_app_id, updated_at",
                           "SELECT DISTINCT sdk_app_id FROM imtel.erasure_log"], migrate=False)
    assert rows == [[[a, "active"], [b, "terminated"]], [[a]]]  # b's versions merged on termination
