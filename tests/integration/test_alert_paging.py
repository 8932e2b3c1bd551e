"""Only the incident pages: ``imtel embedded --incident-app X`` scraped by real Prometheus servers.

The issue: on a real Prometheus 2.42 scraping ``imtel embedded --incident-app 1400000001``, the fast-burn
page fired for 13 apps and was pending for 11 more, because the generator gave every app a 0.1-2%
baseline error rate against the 99.9% SLO (up to 20x its budget). The test runs the same command
(Tansu broker, embedded store, worker, generator at 300 records/s) with two Prometheus 2.42 servers
scraping the worker's ``/metrics`` every second, the generated ``alerts/*.rules.yml`` loaded and evaluated
every second, and reads ``ALERTS`` through the HTTP API every two seconds:

* **fresh**: an empty Prometheus, as in the issue: every window holds only the minutes since the start.
  X's availability page fires once its ``for`` has passed; no other app's page fires. (An app whose first
  error comes within its first ~70 requests may be *pending* for a few seconds: 1 failure out of 70 is
  over the 1.44% bound in both windows until more requests arrive. Reported, not a page.)
* **history**: the rules' windows are long (page 1h/5m and 6h/30m, ticket 1d/2h and 3d/6h) and a test
  cannot wait for them, so this server's TSDB is backfilled (``promtool tsdb create-blocks-from
  openmetrics``) with a day of the same generated traffic (``Traffic.simulate``: the generator's model
  on a compressed clock) in which X's incident began ``LEAD_S`` before the embedded run started; the
  scraped counters continue it (their restart at 0 is a counter reset, which ``rate`` handles). Then:
  X's availability page goes pending when the 1h window's error ratio crosses 14.4x the budget and
  fires ``for`` later, within the rule's detection time from the incident's start; no other app's page
  is ever even pending; the availability ticket (slow burn) is active for X, whose budget really burns,
  and for no other app (the healthy apps and the noisy one burn 0.05-0.6x). A ticket *fires* only after
  ``for: 15m`` of that: longer than a test, so the test checks the condition Prometheus holds for it.

It also checks that the generator registered its apps' names: the named queries and the report of the
running embedded process show them.

Set ``IMTEL_ALERT_PAGING_BASELINE=legacy`` to run the same test against the generator's old baselines
(0.1-2% errors, 1% slow tail, no noisy app) for 5 minutes, as in the issue: it fails, and its message
counts the apps that paged. ``IMTEL_ALERT_PAGING_OBSERVE_S=300`` watches the current baselines as long.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.dev import generate
from pipeline.dev.generate import Incident, Traffic
from pipeline.monitoring import slo
from tests.support import prometheus
from tests.support.prometheus import PrometheusServer

from .conftest import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not prometheus.available(),
                       reason="Prometheus not installed (Debian: apt-get install prometheus; CI installs it)"),
]

RATE = 300.0  # records/s, the embedded default
X = Traffic(seed=7).apps[0]  # 1400000001, the incident app (the busiest)
HISTORY_S, STEP_S = 86_400, 60  # a day of backfilled history, one sample a minute
LEAD_S = 120  # the incident began this long before the embedded run (in the history): a multiple of STEP_S
SLACK_S = 30  # the pipeline's own delay (batching, 1 s scrapes and evaluations) on top of a rule's timing
LEGACY = os.environ.get("IMTEL_ALERT_PAGING_BASELINE") == "legacy"
# watch this long after traffic starts instead of stopping once the expected alerts are seen (the issue: 300)
OBSERVE_S = float(os.environ.get("IMTEL_ALERT_PAGING_OBSERVE_S") or (300 if LEGACY else 0))
LEGACY_PATCH = ("import pipeline.dev.generate as g\n"
                "g.HEALTHY_ERROR_RATE, g.TAIL, g.NOISY_APP = (0.001, 0.02), 0.01, 10 ** 9\n")


def crossing_s(spec: slo.Spec, severity: str, base: float, bad: float, budget: float) -> float:
    """Seconds after an incident starts (error ratio ``base`` -> ``bad``, history before it) until some
    window pair of the ``severity`` alert has both windows above its bound; long windows cover at most
    the backfilled history."""
    alert = next(a for a in spec.burn_alerts if a.severity == severity)
    times = []
    for pair in alert.windows:
        bound = pair.burn_rate * budget
        if bad <= bound:
            continue
        windows = [min(slo.duration_seconds(w), HISTORY_S) for w in (pair.long, pair.short)]
        times.append(max(0.0, *(w * (bound - base) / (bad - base) for w in windows)))
    return min(times, default=float("inf"))


@pytest.fixture
def legacy_baselines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str | None:
    """With IMTEL_ALERT_PAGING_BASELINE=legacy: the old baselines here and in every child (sitecustomize)."""
    if not LEGACY:
        return None
    monkeypatch.setattr(generate, "HEALTHY_ERROR_RATE", (0.001, 0.02))
    monkeypatch.setattr(generate, "TAIL", 0.01)
    monkeypatch.setattr(generate, "NOISY_APP", 10**9)
    site = tmp_path / "legacy-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(LEGACY_PATCH)
    return str(site)


@pytest.fixture
def embedded_env(tmp_path: Path, legacy_baselines: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMTEL_")}
    if legacy_baselines:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [legacy_baselines, env.get("PYTHONPATH")]))
    return {**env, "IMTEL_EMBEDDED_BROKER": "tansu", "IMTEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "IMTEL_WEB_PORT": str(free_port()), "IMTEL_DATA_DIR": str(tmp_path / "data"),
            "IMTEL_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'data' / 'ch'}"}


@pytest.fixture
def servers(tmp_path: Path, embedded_env: dict[str, str]) -> Iterator[dict[str, PrometheusServer]]:
    target = f"127.0.0.1:{embedded_env['IMTEL_WEB_PORT']}"
    out = {"fresh": PrometheusServer(tmp_path / "prom-fresh", [target]),
           "history": PrometheusServer(tmp_path / "prom-history", [target])}
    try:
        yield out
    finally:
        for server in out.values():
            server.stop()


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def requests_seen(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return f'imtel_requests_total{{app="{X}"'.encode() in resp.read()
    except OSError:
        return False


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def test_only_the_incident_app_pages(tmp_path: Path, embedded_env: dict[str, str],
                                     servers: dict[str, PrometheusServer]) -> None:
    spec = slo.load_spec()
    budget = 1 - spec.availability_objective
    page_for = slo.duration_seconds(next(a.for_ for a in spec.burn_alerts if a.severity == "page"))
    traffic = Traffic(seed=7, incident=Incident(X))
    base, bad = traffic.app_error[X], traffic.incident.error_rate if traffic.incident else 0.0
    page_cross = crossing_s(spec, "page", base, bad, budget)
    ticket_cross = crossing_s(spec, "ticket", base, bad, budget)
    detection = page_cross + page_for  # the rule's detection time, from the incident's start
    port = embedded_env["IMTEL_WEB_PORT"]
    fresh, hist = servers["fresh"], servers["history"]
    fresh.start()

    t_start = time.time()
    t_incident = t_start - LEAD_S
    log = open(tmp_path / "embedded.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "embedded", "--rate", str(RATE),
                             "--incident-app", str(X)], env=embedded_env, cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT)
    # (server, alertname, app, state) -> first time seen
    seen: dict[tuple[str, str, str, str], float] = {}
    last: dict[tuple[str, str, str, str], float] = {}  # ... last time seen
    names: dict[str, Any] = {}
    try:
        labels = {"job": spec.job, "instance": f"127.0.0.1:{port}"}
        hist.backfill(prometheus.history(traffic, t_start - HISTORY_S, t_start, RATE, STEP_S,
                                         spec.latency_threshold_s, labels, incident_from=t_incident))
        hist.start()
        t_hist = time.time()
        deadline = time.monotonic() + 60
        while not requests_seen(port):
            assert proc.poll() is None and time.monotonic() < deadline, "embedded run without traffic"
            time.sleep(0.5)
        t_traffic = time.time()

        def firing(server: str, alert: str = "ImtelAvailabilityBudgetBurnFast") -> float | None:
            return seen.get((server, alert, str(X), "firing"))

        # the page can fire no earlier than its ``for`` after a server's first evaluation with the data
        latest = max(t_incident + detection, t_hist + page_for, t_traffic + page_for) + SLACK_S
        stop_at = t_traffic + OBSERVE_S if OBSERVE_S else latest + 15
        while time.time() < stop_at:
            now = time.time()
            for name, server in (("fresh", fresh), ("history", hist)):
                for a in server.query('ALERTS{service="im-api"}'):
                    m = a["metric"]
                    seen.setdefault((name, m["alertname"], m["app"], m["alertstate"]), now)
                    last[(name, m["alertname"], m["app"], m["alertstate"])] = now
            done = [firing("fresh"), firing("history"),
                    seen.get(("history", "ImtelAvailabilityBudgetBurnSlow", str(X), "pending"))]
            if all(done) and now > max(t for t in done if t) + 6 and not OBSERVE_S:
                break
            assert proc.poll() is None, (tmp_path / "embedded.log").read_text()[-3000:]
            time.sleep(2)

        # --- names: the generator registered its apps; queries and the report show them ----------------
        window = ["from=" + iso(t_traffic - 5), "to=" + iso(time.time())]
        health = cli(embedded_env, tmp_path, "query", "app_health", *window, "min_requests=1", "limit=100",
                     "--format", "json")
        assert health.returncode == 0, health.stderr[-2000:]
        names = {str(r["sdk_app_id"]): r["app_name"] for r in json.loads(health.stdout)}
        out = tmp_path / "report.html"
        rep = cli(embedded_env, tmp_path, "report", "--app", str(X), "--from", iso(t_traffic - 5), "--out", str(out))
        assert rep.returncode == 0, rep.stderr[-2000:]
        report_html = out.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()

    def apps(server: str, severity_alerts: tuple[str, ...], state: str | None = None,
             timed: bool = False) -> dict[str, list[str]]:
        """App -> "alert:state" seen on ``server`` (``timed``: with how long it was seen pending)."""
        out: dict[str, list[str]] = {}
        for (s, alert, app, st) in seen:
            if s == server and alert in severity_alerts and (state is None or st == state):
                seconds = last[(s, alert, app, st)] - seen[(s, alert, app, st)]
                out.setdefault(app, []).append(f"{alert}:{st}" + (f" ~{seconds:.0f}s" if timed else ""))
        return {k: sorted(set(v)) for k, v in sorted(out.items())}

    pages = ("ImtelAvailabilityBudgetBurnFast", "ImtelLatencyBudgetBurnFast")
    tickets = ("ImtelAvailabilityBudgetBurnSlow", "ImtelLatencyBudgetBurnSlow")
    summary = {
        "baselines": "legacy" if LEGACY else "current",
        "incident_app": X, "rule_detection_s": round(detection), "ticket_condition_s": round(ticket_cross),
        "history_started_s_after_run": round(t_hist - t_start, 1),
        "traffic_seen_s_after_run": round(t_traffic - t_start, 1),
        **{srv: {
            "apps_page_firing": len(apps(srv, pages, "firing")),
            "apps_page_pending_only": len(set(apps(srv, pages)) - set(apps(srv, pages, "firing"))),
            "apps_ticket_active": len(apps(srv, tickets)),
            "x_page_firing_s_after_incident": round(t - t_incident) if (t := firing(srv)) else None,
        } for srv in ("fresh", "history")},
        "pages": {srv: apps(srv, pages, timed=True) for srv in ("fresh", "history")},
        "tickets": {srv: apps(srv, tickets, timed=True) for srv in ("fresh", "history")},
    }
    print("alert paging summary:", json.dumps(summary, indent=1))
    why = json.dumps(summary, indent=1)

    # fresh Prometheus (the setup): X's page fires, no other app's page fires
    assert firing("fresh"), why
    assert set(apps("fresh", pages, "firing")) == {str(X)}, why
    # with a day of history: X's availability page crosses with the 1h window, fires within the detection time
    pending = seen.get(("history", "ImtelAvailabilityBudgetBurnFast", str(X), "pending"))
    fired = firing("history")
    assert pending and fired, why
    assert pending >= t_incident + page_cross - 10, f"pending before the 1h window crossed the bound: {why}"
    assert fired <= latest, f"later than the rule's detection time: {why}"
    # ... and nobody else's page is even pending; the ticket's condition holds for X alone
    assert apps("history", pages) == {str(X): ["ImtelAvailabilityBudgetBurnFast:firing",
                                              "ImtelAvailabilityBudgetBurnFast:pending"]}, why
    assert apps("history", tickets) == {str(X): ["ImtelAvailabilityBudgetBurnSlow:pending"]}, why

    # names from the registry the generator published
    expected = {str(a): n for a, n in traffic.names.items()}
    assert names and all(names[a] == expected[a] for a in names), names
    assert names[str(X)] == traffic.names[X] and f"{traffic.names[X]} ({X})" in report_html
