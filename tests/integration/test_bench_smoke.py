"""Smoke test of the benchmark harness on real parts (its own bundled broker, chDB stores, the worker).

Runs ``imtel bench --quick`` with tiny counts on the batched workload, twice per contender, for the
pipeline (in process and over HTTP to ``imtel engine`` in its own process) and the limit contenders,
and checks the results document: its structure, that every measurement was verified against the
produced workload (row count and aggregate checksum equal), that both runs and their windows are
kept beside the medians, that the engine process was measured beside the worker (its CPU until it
was idle again included), and that the table, the Markdown and the goal verdicts are there. Speeds
are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MEASUREMENT_KEYS = {"contender", "workload", "records", "seconds", "records_per_s", "cpu_seconds",
                    "cpu_s_per_million", "peak_rss_mb", "correct", "problems", "notes", "extra"}


def test_quick_bench_writes_verified_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "bench", "--quick", "--contenders", "pipeline,pipeline-http,limit",
         "--workloads", "b", "--freshness-seconds", "0", "--timeout", "40", "--repeats", "2", "--out", str(out),
         "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())

    assert results["quick"] is True
    assert set(results["workloads"]) == {"b"}
    wl = results["workloads"]["b"]
    assert wl["records"] == 20_000 and wl["partitions"] == 4 and wl["messages"] < wl["records"]
    assert wl["checksum"]["rows"] == 20_000

    runs = {r["contender"]: r for r in results["throughput"]}
    assert set(runs) == {"pipeline", "pipeline-http", "limit-consume", "limit-insert"}
    for name, run in runs.items():
        assert set(run) >= MEASUREMENT_KEYS, name
        assert run["workload"] == "b" and run["records"] == 20_000
        assert run["correct"] is True, f"{name}: {run['problems']}"
        assert run["problems"] == []
        assert run["records_per_s"] > 0 and run["peak_rss_mb"] > 0
        assert len(run["runs"]) == 2 and run["windows_s"] == [r["seconds"] for r in run["runs"]], name
        assert all(r["correct"] and r["seconds"] > 0 for r in run["runs"]), name
        assert run["spread"]["seconds"] == [min(run["windows_s"]), max(run["windows_s"])], name
    assert runs["pipeline"]["extra"]["store_rows"] == 20_000
    assert runs["limit-insert"]["extra"]["store_rows"] == 20_000
    # over HTTP: the store the engine process served holds the workload, the engine was measured on
    # its own and stopped cleanly (SIGTERM -> store closed, exit 0)
    assert runs["pipeline-http"]["extra"]["store_rows"] == 20_000
    engine = runs["pipeline-http"]["extra"]["engine"]
    assert engine["returncode"] == 0 and engine["peak_rss_mb"] > 0 and engine["cpu_seconds"] is not None
    assert engine["settled_cpu_seconds"] >= engine["cpu_seconds"] and engine["settle_s"] is not None
    assert [w["rule"] for w in results["windows"]["rows"]] == [""] * 4  # 2 short runs: flagged, not hidden
    assert results["windows"]["measured_s"] > 0 and "neither the median of 3 runs" in proc.stdout

    assert set(results["ratios"]["b"]) == {"pipeline-http", "limit-consume", "limit-insert"}
    goals = {g["goal"]: g for g in results["goals"]}
    rss = goals["peak RSS of the worker, ClickHouse over HTTP"]
    assert rss["value"] == runs["pipeline-http"]["peak_rss_mb"] and "the engine process beside it" in rss["why"]
    assert goals["peak RSS embedded, everything in one process"]["value"] == runs["pipeline"]["peak_rss_mb"]
    cpu = goals["worker CPU, batched messages (workload b), ClickHouse over HTTP"]
    assert cpu["met"] in (True, False) and "consume + decode alone costs" in cpu["why"]
    assert goals["engine CPU per million stored records (workload b)"]["met"] in (True, False)
    assert goals["worker CPU, one record per message (workload a), ClickHouse over HTTP"]["met"] is None  # not run
    assert goals["metrics and logging cost"]["met"] is None
    assert results["machine"]["cpus"] >= 1 and results["versions"]["confluent-kafka"] != "?"
    assert results["capacity"]["b"]["records_per_s"] == runs["pipeline"]["records_per_s"]

    markdown = out.with_suffix(".md").read_text()
    assert "| workload | contender |" in markdown and "imtel pipeline" in markdown
    assert "records/s" in proc.stdout and "goals:" in proc.stdout
    for g in results["goals"]:  # every goal printed with its verdict
        mark = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        assert f"{g['goal']}: {g['shown']} (goal {g['target']}) — {mark}" in proc.stdout
    assert "ceilings (records/s):" in proc.stdout
    assert not (tmp_path / "work").exists()  # scratch stores removed unless --keep
