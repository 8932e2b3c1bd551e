"""pipeline/ops/report.py and pipeline/ops/charts.py: the incident-review report is one self-contained HTML file
(no script, no external resource, a CSP that forbids both), escapes everything that comes from data,
asks every query with parameters the query accepts and one absolute range, and renders in real headless
Chromium with its charts laid out and no console error (the checker itself is shown to catch console
errors, exceptions, failed loads and CSP violations)."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.ops import charts, queries, report

from ..chromium import CHROMIUM, MEASURE_REPORT, open_page

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
START = END - timedelta(hours=1)
APP = 1400000001
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium not installed (Debian: apt-get install chromium; CI installs it)")


def incident_data(name: str = "Acme <Chat> & \"friends\"") -> report.ReportData:
    """An hour at 30 s steps: error rate and latency jump at 11:35, no traffic 11:20-11:22."""
    req = report.ReportRequest(APP, START, END)
    series, t = [], START
    while t < END:
        bad = t >= START + timedelta(minutes=35)
        if not START + timedelta(minutes=20) <= t < START + timedelta(minutes=22):
            series.append({"time": t.isoformat(), "requests": 300, "failures": 60 if bad else 2,
                           "error_rate": 0.2 if bad else 0.0067, "p50_ms": 280 if bad else 35,
                           "p95_ms": 720 if bad else 90, "p99_ms": 1200 if bad else 150, "max_ms": 2400})
        t += timedelta(seconds=req.step_s)
    causes = [{"error_code": 10002, "exception": "msg store <shard 7> timeout", "failures": 1300,
               "share_of_app_failures": 0.9, "top_interfaces": ["v4/openim/sendmsg"], "top_regions": ["ap-singapore"],
               "first_seen": (START + timedelta(minutes=35)).isoformat(), "last_seen": END.isoformat()},
              {"error_code": 70001, "exception": "UserSig expired", "failures": 140, "share_of_app_failures": 0.1,
               "top_interfaces": ["a", "b"], "top_regions": ["x"], "first_seen": START.isoformat(),
               "last_seen": END.isoformat()}]
    breakdown = [{"dimension": "region", "value": "ap-singapore", "requests": 3000, "failures": 1300,
                  "error_rate": 0.43, "p50_ms": 300, "p95_ms": 900, "p99_ms": 1000, "top_causes": ["msg store"]}]
    return report.ReportData(
        req, END, name,
        {"n_requests": 34200, "n_failures": 1440, "success_rate": 0.9579, "p50_ms": 40, "p95_ms": 600,
         "p99_ms": 1200, "max_ms": 2400},
        {"error_rate_before": 0.0067, "error_rate_now": 0.042, "change": 0.0353}, series, causes,
        [{"interface": "v4/openim/sendmsg", "failures": 1300, "requests": 9000, "error_rate": 0.14,
          "top_causes": ["msg store"], "top_codes": [10002]}],
        [{"interface": "v4/openim/sendmsg", "requests": 9000, "avg_ms": 300, "p50_ms": 250, "p95_ms": 700,
          "p99_ms": 1100, "max_ms": 2400}],
        breakdown, [], {"status": "active", "created_at": "2026-01-01T00:00:00+00:00", "terminated_at": None})


def empty_data() -> report.ReportData:
    return report.ReportData(report.ReportRequest(APP, START, END), END, str(APP), None, None)


# --- pure rendering ------------------------------------------------------------------------------


def test_self_contained_and_escaped() -> None:
    html = report.render(incident_data())
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html.lower()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # the only URL is the SVG namespace, which is a name, not a fetch
    assert set(re.findall(r"(?:https?:)?//[\w.-]+[^\s\"'<>]*", html)) == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"""(src|href)\s*=""", html)
    assert "Acme &lt;Chat&gt; &amp; &quot;friends&quot; (1400000001)" in html
    assert "msg store &lt;shard 7&gt; timeout" in html and "<shard 7>" not in html


def test_charts_and_sections() -> None:
    html = report.render(incident_data())
    assert re.findall(r'data-chart="([\w-]+)"', html) == ["latency", "error-rate", "requests", "top-causes"]
    latency = html[html.index('data-chart="latency"'):html.index('data-chart="error-rate"')]
    # p50/p95/p99, each broken in two by the 2-minute gap without traffic
    assert latency.count('class="series"') == 6
    assert html.count('class="bar"') == 2
    for title in ("Summary", "Latency percentiles over time", "Error rate over time", "Top exception causes",
                  "Failing interfaces", "Slowest interfaces (p95)", "By region", "By platform"):
        assert f"<h2>{title}</h2>" in html
    assert "4.20%" in html and "+3.53 pp" in html  # error rate now vs the previous period


def test_empty_range_still_renders() -> None:
    html = report.render(empty_data())
    assert "No requests from this app in the range." in html
    assert html.count('class="no-data"') == 4 and 'class="series"' not in html
    assert "<title>Incident review: 1400000001</title>" in html


def test_chart_primitives() -> None:
    assert charts.value_ticks(0.37) == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4]
    assert charts.value_ticks(1200)[-1] == 1250 and charts.value_ticks(0)[-1] == 1.0
    assert charts.time_ticks(0, 3600) == [float(t) for t in range(0, 3601, 600)]
    assert charts.time_label(90, 120) == "00:01:30" and charts.time_label(90, 7200) == "00:01"
    svg = charts.line_chart("x", "x", [charts.Series("a", [(0, 1.0), (10, None), (20, 2.0), (30, 3.0)], "#000")],
                            0, 30, str)
    assert svg.count('class="series"') == 1 and svg.count("<circle") == 3  # the lone point is a dot


def test_step_and_request_parsing() -> None:
    assert report.choose_step(START, END) == 30
    assert report.choose_step(END - timedelta(minutes=2), END) == 1
    assert report.choose_step(END - timedelta(days=7), END) == 7200
    req = report.parse_request({"app": "7", "from": "now-2h"}, now=END)
    assert (req.app, req.start, req.end) == (7, END - timedelta(hours=2), END)
    assert report.parse_request({"app": "7"}, now=END).start == END - timedelta(hours=1)
    for raw, message in [
        ({}, "app is required"), ({"app": "0"}, "parameter app"), ({"app": "x"}, "parameter app"),
        ({"app": "1", "from": "soon"}, "parameter from"),
        ({"app": "1", "from": "now-1h", "to": "now-2h"}, "from must be before to"),
        ({"app": "1", "from": "now-60d"}, "31 days"), ({"app": "1", "db": "x"}, "'db'"),
    ]:
        with pytest.raises(report.ReportError, match=message):
            report.parse_request(raw, now=END)


def test_collect_asks_valid_queries_for_one_absolute_range() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def run(name: str, raw: dict[str, str]) -> dict[str, Any]:
        calls.append((name, queries.parse_params(name, raw, now=END + timedelta(hours=5))))  # validates
        columns = {"apps": ["sdk_app_id", "name"], "app_health": ["sdk_app_id", "app_name"]}.get(name, [])
        rows = {"apps": [[APP, "Registry name"]], "app_health": [[APP, "Registry name"]]}.get(name, [])
        return {"columns": columns, "rows": rows}

    data = report.collect(run, report.ReportRequest(APP, START, END), now=END)
    assert data.app_name == "Registry name"
    assert {n for n, _ in calls} == {"app_health", "apps", "error_rate_change", "app_timeseries", "top_causes",
                                    "top_failing", "slow_interfaces", "breakdown"}
    for name, params in calls:
        assert params["app"] == APP
        if name != "apps":  # the registry has no range; everything else the same absolute one
            assert (params["start_ms"], params["end_ms"]) == (START.timestamp() * 1000, END.timestamp() * 1000)
    assert {p["by"] for n, p in calls if n == "breakdown"} == {"region", "platform"}


# --- real headless Chromium -------------------------------------------------------------------------


def check_in_chromium(html: str, tmp_path: Path, name: str = "report") -> dict[str, Any]:
    """Open a rendered report; assert no console/network/CSP error; return the measurements."""
    path = tmp_path / f"{name}.html"
    path.write_text(html)
    page = open_page(path.as_uri(), MEASURE_REPORT)
    (tmp_path / f"{name}.png").write_bytes(page.screenshot)
    assert page.errors == [], page.errors
    assert page.screenshot.startswith(b"\x89PNG")
    return dict(json.loads(page.evaluated))


@needs_chromium
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    m = check_in_chromium(report.render(incident_data()), tmp_path)
    assert m["title"] == 'Incident review: Acme <Chat> & "friends" (1400000001)' and m["scripts"] == 0
    charts_by_name = {c["name"]: c for c in m["charts"]}
    assert list(charts_by_name) == ["latency", "error-rate", "requests", "top-causes"]
    for chart in charts_by_name.values():
        assert chart["width"] > 300 and chart["height"] > 50 and chart["noData"] == 0, chart
    assert charts_by_name["latency"]["lines"] == 6 and charts_by_name["top-causes"]["bars"] == 2
    tables = {t["name"]: t for t in m["tables"]}
    assert tables["causes"]["rows"] == 2 and tables["regions"]["rows"] == 1
    assert "msg store <shard 7> timeout" in m["text"]


@needs_chromium
def test_chromium_check_catches_console_errors_failed_loads_and_csp(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><title>x</title><img src="missing.png">'
                   '<script>console.error("boom"); throw new Error("kaput")</script>')
    errors = " | ".join(open_page(bad.as_uri()).errors)
    assert "console.error: boom" in errors and "kaput" in errors and "ERR_FILE_NOT_FOUND" in errors
    blocked = tmp_path / "blocked.html"
    blocked.write_text(report.render(empty_data()).replace("</body>", "<script>console.log(1)</script></body>"))
    assert any("Content Security Policy" in e for e in open_page(blocked.as_uri()).errors)
