"""What SREs look at, checked against the running pipeline with an injected incident.

A real broker, ``imtel worker`` and a real Prometheus server (Debian's, scraping the worker every second,
with the generated rule files loaded) run while the test produces 20 s of healthy IM traffic and then
~22 s of an incident: app A's ``v4/openim/sendmsg`` becomes 10x slower and fails with one cause (95% of
its requests in ap-singapore, 40% elsewhere). Then:

* every PromQL expression of every dashboard panel (variables and ``$__rate_interval`` expanded, for
  All apps and for app A) and every recording rule returns data through Prometheus' HTTP API, the
  recorded error ratio of A is above the page threshold and its page alert is active;
* every named query, asked through the worker that owns the embedded store, returns the incident it
  is designed to find (app, interface, cause, region) with app names from the registry;
* ``imtel report`` writes the same report through the worker and directly from the store, and it
  renders in headless Chromium with its charts and without console errors;
* the raw series Prometheus scraped, exported and replayed by ``promtool test rules`` against
  ``alerts/slo.rules.yml``, make A's availability page alert fire (and not a healthy app's), while the
  healthy phase alone fires nothing;
* every ClickHouse panel SQL, with the plugin's macros expanded, runs on the store and returns rows.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from confluent_kafka import Producer

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.monitoring.boards import build_all
from tests.support import grafana_macros

from ..chromium import CHROMIUM, MEASURE_REPORT, open_page
from .conftest import free_port, run_sql

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                       reason="Prometheus not installed (Debian: apt-get install prometheus; CI installs it)"),
]

ROOT = Path(__file__).resolve().parents[2]
RATE = 300  # records/s
HEALTHY_S, INCIDENT_S = 20.0, 22.0
TRAFFIC = Traffic(seed=7)
A, QUIET = TRAFFIC.apps[0], TRAFFIC.apps[1]  # the two busiest apps
IFACE, REGION = "v4/openim/sendmsg", "ap-singapore"
CODE, CAUSE = 10002, "internal server error: message store shard unavailable"
NAMES = {A: "Acme Chat", QUIET: "Beta Social"}


class IncidentTraffic(Traffic):
    """Generator traffic where A and the quiet app meet their 99.9% SLO (0.02% failures; the generator
    gives every app 0.1-2%, which burns that budget at up to 20x) and, once ``active``, app A's sendmsg
    is 10x slower and fails with one cause (95% of its requests in ap-singapore, 40% elsewhere)."""

    active = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app_error[A] = self.app_error[QUIET] = 0.0002

    def request_log(self, now_ms: int) -> dict[str, Any]:
        rec = super().request_log(now_ms)
        if self.active and rec["sdk_app_id"] == A and rec["interface"] == IFACE:
            rec["latency_ms"] = min(rec["latency_ms"] * 10, 3_600_000)
            if self.rng.random() < (0.95 if rec["region"] == REGION else 0.4):
                rec["error_code"], rec["exception"] = CODE, CAUSE
        return rec


# --- processes -------------------------------------------------------------------------------------


def wait_for(what: str, probe: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_json(url: str, timeout: float = 30, token: str | None = None) -> Any:
    """GET JSON; ``token``: the worker's bearer token (its data endpoints need it)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture
def prometheus(tmp_path: Path, pipeline_env: dict[str, str]) -> Iterator[str]:
    """A Prometheus server scraping the worker's /metrics every second, with the generated rules."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted((ROOT / "alerts").glob("*.rules.yml"))],
        "scrape_configs": [{"job_name": "imtel", "static_configs": [
            {"targets": [f"127.0.0.1:{pipeline_env['IMTEL_WEB_PORT']}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus ready", lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200, 30)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.fixture
def worker(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=pipeline_env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    port = pipeline_env["IMTEL_WEB_PORT"]
    try:
        wait_for("worker ready", lambda: http_json(f"http://127.0.0.1:{port}/readyz", 2)["ready"], 60)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


# --- traffic ---------------------------------------------------------------------------------------


def produce(settings: Settings) -> dict[str, Any]:
    """Registry names, then the healthy phase, then the incident; returns counts and phase times."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20})
    for app, name in NAMES.items():
        producer.produce(settings.topic_applications, key=str(app).encode(),
                         value=msgspec.json.encode({"sdk_app_id": app, "name": name, "status": "active"}))
    traffic = IncidentTraffic(seed=7, invalid_ratio=0.01)
    valid = sent = 0
    start = time.time()
    switch = start + HEALTHY_S
    last_samples = 0.0
    while (now := time.time()) < switch + INCIDENT_S:
        traffic.active = now >= switch
        due = int((now - start) * RATE) - sent
        for key, value, ok in traffic.messages(int(now * 1000), due):
            producer.produce(settings.topic_request_logs, key=key, value=value)
            valid += ok
        sent += max(due, 0)
        if now - last_samples >= 2:
            last_samples = now
            for _ in range(20):
                sample = traffic.monitoring_sample(int(now * 1000))
                producer.produce(settings.topic_monitoring_samples, key=str(sample["sdk_app_id"]).encode(),
                                 value=msgspec.json.encode(sample))
        producer.poll(0)
        time.sleep(0.05)
    producer.flush(30)
    return {"valid": valid, "start": start, "switch": switch, "end": time.time()}


def rows_written(port: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(r'^imtel_rows_written_total\{table="request_logs"\} (\S+)$', body, re.M)
    return float(match.group(1)) if match else 0.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


# --- Prometheus --------------------------------------------------------------------------------------


def prom(url: str, path: str, **params: Any) -> list[dict[str, Any]]:
    body = http_json(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    values = [s["value"] for s in result if "value" in s] + [v for s in result for v in s.get("values", [])]
    return any(v[1] not in ("NaN", "+Inf", "-Inf") for v in values)


def promtool_series(results: list[dict[str, Any]], start: int, end: int) -> list[dict[str, str]]:
    """Scraped series as promtool input: one value per second from ``start``, ``_`` where none."""
    out = []
    for series in results:
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        selector = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        by_t = {int(float(t)): v for t, v in series["values"]}
        out.append({"series": selector,
                    "values": " ".join(str(float(by_t[t])) if t in by_t else "_" for t in range(start, end + 1))})
    return out


def run_promtool(tmp_path: Path, name: str, tests: list[dict[str, Any]]) -> None:
    path = tmp_path / f"{name}.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(ROOT / "alerts" / "slo.rules.yml")],
                                    "evaluation_interval": "1m", "tests": tests}, width=10_000))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{name}: {proc.stdout[-3000:]}{proc.stderr[-2000:]}"


# --- the test ------------------------------------------------------------------------------------------


def test_dashboards_alerts_queries_and_report_on_a_live_incident(
        pipeline_env: dict[str, str], prometheus: str, worker: subprocess.Popen[bytes], tmp_path: Path) -> None:
    settings = Settings.from_env(pipeline_env)
    port = pipeline_env["IMTEL_WEB_PORT"]
    base = f"http://127.0.0.1:{port}"
    wait_for("first scrape", lambda: prom(prometheus, "query", query='up{job="imtel"} == 1'), 20)
    prom_start = time.time()

    phases: dict[str, Any] = {}
    producer = threading.Thread(target=lambda: phases.update(produce(settings)), daemon=True)
    producer.start()
    producer.join(HEALTHY_S + INCIDENT_S + 30)
    assert phases, "producer did not finish"
    wait_for("every valid record stored", lambda: rows_written(port) >= phases["valid"], 30)
    assert rows_written(port) == phases["valid"]  # exactly once
    t_switch, t_end = phases["switch"], time.time()
    incident = {"from": iso(t_switch), "to": iso(t_end)}

    # --- named queries through the worker that owns the store ---------------------------------------
    def query(name: str, **params: Any) -> list[dict[str, Any]]:
        token = Path(pipeline_env["IMTEL_DATA_DIR"], "worker.token").read_text()  # written by the worker at start
        result = http_json(f"{base}/queries/{name}?{urllib.parse.urlencode(params)}", token=token)
        return [dict(zip(result["columns"], r, strict=True)) for r in result["rows"]]

    health = query("app_health", **incident, min_requests=100, limit=100)
    assert (health[0]["sdk_app_id"], health[0]["app_name"]) == (A, NAMES[A]), health[:3]
    assert {r["sdk_app_id"]: r["app_name"] for r in health}[TRAFFIC.apps[5]] == str(TRAFFIC.apps[5])  # no name
    failing = query("top_failing", **incident)
    assert (failing[0]["sdk_app_id"], failing[0]["interface"]) == (A, IFACE) and failing[0]["top_causes"][0] == CAUSE
    slow = query("slow_interfaces", **incident, min_requests=50)
    assert (slow[0]["sdk_app_id"], slow[0]["interface"]) == (A, IFACE), slow[:3]
    causes = query("top_causes", **incident)
    assert (causes[0]["sdk_app_id"], causes[0]["error_code"], causes[0]["exception"]) == (A, CODE, CAUSE)
    assert causes[0]["top_interfaces"][0] == IFACE and causes[0]["top_regions"][0] == REGION
    change = query("error_rate_change", **incident, min_requests=100)
    assert change[0]["sdk_app_id"] == A and change[0]["change"] > 0.05, change[:3]
    regions = query("breakdown", **incident, app=A, by="region", min_requests=20)
    assert regions[0]["value"] == REGION and regions[0]["top_causes"][0] == CAUSE, regions[:3]
    assert len(query("breakdown", **incident, app=A, by="platform")) >= 5
    series = query("app_timeseries", **{"from": iso(phases["start"]), "to": iso(t_end)}, app=A, step=5)
    full = [r for r in series if r["requests"] >= 100]  # not the partial first/last steps
    before = [r["error_rate"] for r in full if datetime.fromisoformat(r["time"]).timestamp() < t_switch - 5]
    after = [r["error_rate"] for r in full if datetime.fromisoformat(r["time"]).timestamp() >= t_switch + 5]
    assert before and after and min(after) > 5 * max(max(before), 0.01), (before, after)
    assert {r["sdk_app_id"]: r["name"] for r in query("apps")} == NAMES
    cli = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", "top_causes", f"app={A}", "limit=3",
                          f"from={incident['from']}", f"to={incident['to']}", "--format", "json"],
                         env=pipeline_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert cli.returncode == 0 and json.loads(cli.stdout)[0]["exception"] == CAUSE, cli.stderr[-2000:]

    # --- the report, through the worker ------------------------------------------------------------
    report_range = ["--app", str(A), "--from", iso(phases["start"] - 10), "--to", iso(t_end + 5)]
    via_worker = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", *report_range, "--out",
                                 str(tmp_path / "worker.html")], env=pipeline_env, capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
    assert via_worker.returncode == 0 and "wrote" in via_worker.stdout, via_worker.stderr[-2000:]

    # --- Prometheus: every panel expression and recording rule returns data ----------------------------
    wait_for("oldest-row gauge scraped (the worker sets it every minute)",
             lambda: prom(prometheus, "query", query="imtel_oldest_row_age_seconds"), 45)
    now = time.time()
    start_dt, end_dt = datetime.fromtimestamp(prom_start, UTC), datetime.fromtimestamp(now, UTC)
    models = build_all()
    empty: list[str] = []
    checked = 0
    for variables in ({}, {"sdk_app_id": [str(A)]}):
        for q in grafana_macros.panel_queries(start_dt, end_dt, variables, models):
            if q.kind != "promql":
                continue
            expr = grafana_macros.expand_promql(q.raw, start_dt, end_dt, variables, scrape_interval_s=1)
            result = (prom(prometheus, "query", query=expr, time=now) if q.instant else
                      prom(prometheus, "query_range", query=expr, start=prom_start, end=now, step=1))
            checked += 1
            if not has_finite_value(result):
                empty.append(f"{q.dashboard} / {q.panel} [{q.ref_id}] {variables}: {expr}")
    assert checked >= 80 and not empty, "panels without data:\n" + "\n".join(empty)
    rules = [r for f in sorted((ROOT / "alerts").glob("*.rules.yml"))
             for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "record" in r]
    assert len(rules) >= 21
    no_data = [r["record"] for r in rules if not has_finite_value(prom(prometheus, "query", query=r["expr"], time=now))]
    assert not no_data, f"recording rules without data: {no_data}"
    ratio = prom(prometheus, "query", query=f'app:imtel_requests_errors:ratio_rate5m{{app="{A}"}}')
    assert float(ratio[0]["value"][1]) > 14.4 * 0.001
    alerts = prom(prometheus, "query", query='ALERTS{alertname="ImtelAvailabilityBudgetBurnFast"}')
    assert {a["metric"]["app"] for a in alerts} >= {str(A)} and str(QUIET) not in {a["metric"]["app"] for a in alerts}

    # --- promtool: the page alert fires on the real scraped series --------------------------------------
    t0, t1 = int(phases["start"]) - 2, int(t_end) + 2
    raw = prom(prometheus, "query_range", start=t0, end=t1, step=1, query=(
        '{__name__=~"imtel_requests_total|imtel_request_latency_seconds_bucket|imtel_request_latency_seconds_count",'
        f'app=~"{A}|{QUIET}"}}'))
    assert len(raw) == 2 * (2 + 11 + 1)  # per app: 2 outcomes, 10 bucket edges + +Inf, the count
    labels = {"alertname": "ImtelAvailabilityBudgetBurnFast", "alertstate": "firing", "app": str(A),
              "service": "im-api", "severity": "page", "slo": "availability"}
    firing = "ALERTS{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    run_promtool(tmp_path, "incident", [{
        "name": "real scraped series: healthy phase then the incident",
        "interval": "1s", "input_series": promtool_series(raw, t0, t1),
        "promql_expr_test": [
            {"expr": 'ALERTS{alertname="ImtelAvailabilityBudgetBurnFast",alertstate="firing"}', "eval_time": "4m",
             "exp_samples": [{"labels": firing, "value": 1}]},
            # the healthy app burns budget slowly (a ticket may be pending) but pages nobody
            {"expr": f'ALERTS{{app="{QUIET}",severity="page"}}', "eval_time": "4m", "exp_samples": []},
        ],
    }])
    healthy_end = int(t_switch) - 3
    run_promtool(tmp_path, "healthy", [{
        "name": "real scraped series: the healthy phase alone pages nobody",
        "interval": "1s", "input_series": promtool_series(raw, t0, healthy_end),
        "promql_expr_test": [{"expr": 'ALERTS{severity="page"}', "eval_time": "4m", "exp_samples": []}],
        "alert_rule_test": [{"eval_time": "4m", "alertname": name, "exp_alerts": []}
                            for name in ("ImtelAvailabilityBudgetBurnFast", "ImtelLatencyBudgetBurnFast")],
    }])

    # --- stop the worker: the store is free for panel SQL and a direct report ------------------------
    worker.send_signal(signal.SIGINT)
    worker.wait(30)
    direct = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", *report_range, "--out",
                             str(tmp_path / "direct.html")], env=pipeline_env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert direct.returncode == 0, direct.stderr[-2000:]

    def without_generated(path: Path) -> str:
        return re.sub(r"generated [0-9: -]+ UTC", "generated _", path.read_text())

    html = without_generated(tmp_path / "worker.html")
    assert html == without_generated(tmp_path / "direct.html")
    assert NAMES[A] in html and CAUSE in html and REGION in html

    store = Path(pipeline_env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    sql_start, sql_end = datetime.fromtimestamp(phases["start"] - 120, UTC), datetime.fromtimestamp(t_end + 60, UTC)
    panel_sql = [q for variables in ({}, {"sdk_app_id": [str(A)], "interface": [IFACE]})
                 for q in grafana_macros.panel_queries(sql_start, sql_end, variables, models) if q.kind == "clickhouse"]
    assert len(panel_sql) >= 40
    results = run_sql(store, [q.expanded for q in panel_sql], migrate=False)
    no_rows = [f"{q.dashboard} / {q.panel}" for q, rows in zip(panel_sql, results, strict=True) if not rows]
    assert not no_rows, f"ClickHouse panels without rows: {no_rows}"
    variable = next(rows for q, rows in zip(panel_sql, results, strict=True) if q.panel == "variable sdk_app_id")
    assert [str(A), f"{NAMES[A]} ({A})"] in variable  # the picker shows the registry name

    # --- the report in a real browser -------------------------------------------------------------------
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium; CI installs it)")
    page = open_page((tmp_path / "worker.html").as_uri(), MEASURE_REPORT)
    (tmp_path / "report.png").write_bytes(page.screenshot)
    assert page.errors == [], page.errors
    measured = json.loads(page.evaluated)
    shown = {c["name"]: c for c in measured["charts"]}
    assert set(shown) == {"latency", "error-rate", "requests", "top-causes"}
    assert all(c["width"] > 300 and c["noData"] == 0 for c in shown.values()), shown
    assert shown["latency"]["lines"] >= 3 and shown["top-causes"]["bars"] >= 1
    assert f"{NAMES[A]} ({A})" in measured["title"]
