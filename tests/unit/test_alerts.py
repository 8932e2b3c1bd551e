"""SLO spec -> Prometheus rules: the committed rule files are what the spec generates, promtool accepts
them and their unit tests pass (a firing and a quiet case per alert), the burn-rate windows are the
issue's, and every alert has a summary, a description with the value and a runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.monitoring import slo
from pipeline.monitoring.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RUNBOOK = ROOT / "docs" / "runbook.md"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian: apt-get install prometheus; CI installs it)",
)


def exported_series() -> set[str]:
    """Series names the pipeline's registry exposes, plus process_* metrics and ``up``."""
    names = {"up", "process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes"}
    for metric in Metrics().registry.collect():
        if metric.type == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        else:
            names.add(f"{metric.name}_total" if metric.type == "counter" else metric.name)
    return names


def series_in(expr: str) -> set[str]:
    """Raw metric names an expression selects (recording-rule names excluded)."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b((?:imtel|process)_[a-z0-9_]+|up)\b(?=\s*[{\[)])", no_strings))


def rules() -> list[dict]:
    out = []
    for path in sorted(ALERTS.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def alerts() -> list[dict]:
    return [r for r in rules() if "alert" in r]


def test_committed_rules_equal_generated():
    assert not slo.stale(), "regenerate with `python -m pipeline.monitoring.slo`"
    assert sorted(p.name for p in ALERTS.glob("*.rules.yml")) == sorted(slo.render())


def test_burn_rate_windows_are_the_issues():
    spec = slo.load_spec()
    got = {a.severity: [(p.long, p.short, p.burn_rate) for p in a.windows] for a in spec.burn_alerts}
    assert got == {
        "page": [("1h", "5m", 14.4), ("6h", "30m", 6.0)],
        "ticket": [("1d", "2h", 3.0), ("3d", "6h", 1.0)],
    }
    assert spec.availability_objective == 0.999 and spec.latency_objective == 0.99
    assert spec.latency_threshold_s == 0.3


def test_each_pair_has_both_windows_and_the_low_traffic_guard():
    spec = slo.load_spec()
    by_name = {r["alert"]: r for r in alerts()}
    for kind, sli in (
        ("Availability", "requests_errors:ratio_rate"),
        ("Latency", "request_latency_slow:ratio_rate"),
    ):
        for alert in spec.burn_alerts:
            expr = by_name[f"Imtel{kind}BudgetBurn{alert.name_suffix}"]["expr"]
            for pair in alert.windows:
                bound = slo.num(
                    pair.burn_rate
                    * (
                        1
                        - (spec.availability_objective if kind == "Availability" else spec.latency_objective)
                    )
                )
                assert f"{sli}{pair.long} > {bound}" in expr
                assert f"{sli}{pair.short} > {bound}" in expr
                guard = (
                    f"app:imtel_requests:rate{pair.long} * {slo.duration_seconds(pair.long)} "
                    f">= {spec.min_requests}"
                )
                assert guard in expr


def test_recording_rules_cover_every_window():
    records = {r["record"] for r in rules() if "record" in r}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert set(slo.sli_record_names(window).values()) <= records


def test_every_alert_is_documented_and_described():
    runbook = RUNBOOK.read_text()
    sections = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbook, re.M)}
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)) and sorted(names) == sorted(slo.alert_names())
    for rule in alerts():
        name, ann = rule["alert"], rule["annotations"]
        assert ann["summary"] and "{{ $value" in ann["description"], name
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        anchor = ann["runbook_url"].split("#", 1)[1]
        assert ann["runbook_url"].startswith("docs/runbook.md#") and anchor in sections, name
        # the description names what the alert is about: the labels its result keeps
        kept = set(re.findall(r"by \(([a-z_]+)\)", rule["expr"])) & {"topic", "table"}
        if name.startswith(("ImtelAvailability", "ImtelLatency")):
            kept.add("app")
        if re.match(r"^(up|imtel_clickhouse_up|changes\(process_start_time_seconds)", rule["expr"]):
            kept.add("instance")
        for label in kept:
            assert f"$labels.{label}" in ann["description"], f"{name}: description lacks {label}"


def test_rules_use_only_exported_metrics():
    known = exported_series()
    for rule in rules():
        unknown = series_in(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"


def test_retention_bounds_follow_the_policy():
    bounds = slo.retention_bounds(10800)
    assert "request_logs" in bounds[7 * 86400 + 10800]
    assert "interface_stats_1m" in bounds[2 * 86400 + 10800]
    assert all("applications" not in tables for tables in bounds.values())


def test_spec_rejects_a_threshold_that_is_not_a_bucket_edge(tmp_path):
    text = (ALERTS / "slo.yaml").read_text().replace("threshold_seconds: 0.3", "threshold_seconds: 0.25")
    bad = tmp_path / "slo.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match="bucket edge"):
        slo.load_spec(bad)


def test_every_alert_has_a_firing_and_a_quiet_case():
    firing, quiet = set(), set()
    for path in sorted((ALERTS / "tests").glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(slo.alert_names())
    assert names - firing == set(), f"alerts without a firing case: {names - firing}"
    assert names - quiet == set(), f"alerts without a quiet case: {names - quiet}"


@needs_promtool
def test_promtool_check_rules():
    files = [str(p) for p in sorted(ALERTS.glob("*.rules.yml"))]
    result = subprocess.run(["promtool", "check", "rules", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules():
    files = [str(p) for p in sorted((ALERTS / "tests").glob("*.yml"))]
    result = subprocess.run(
        ["promtool", "test", "rules", *files], capture_output=True, text=True, cwd=ALERTS / "tests"
    )
    assert result.returncode == 0, result.stdout + result.stderr
