"""A real Prometheus server (Debian's ``/usr/bin/prometheus``) for tests, optionally with history.

``PrometheusServer`` scrapes given targets every second with the generated rule files loaded and
evaluated every second, and answers PromQL through its HTTP API. ``history`` backfills its TSDB before
it starts (``promtool tsdb create-blocks-from openmetrics``): the counters ``Traffic.simulate`` draws for
hours of generated traffic, so rules over long windows (1h, 6h, 1d, 3d) see a realistic past instead of
the few minutes a test can afford to run. Only the series the SLO rules read are backfilled.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.dev.generate import Traffic
from pipeline.dev.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "alerts").glob("*.rules.yml"))


def available() -> bool:
    return shutil.which("prometheus") is not None and shutil.which("promtool") is not None


def history(traffic: Traffic, start_s: float, end_s: float, rate: float, step_s: float, threshold_s: float,
            labels: dict[str, str], incident_from: float | None = None) -> str:
    """OpenMetrics text of the SLO series (``imtel_requests_total`` by outcome, the latency histogram's
    ``le=threshold_s`` bucket and its count) of ``traffic`` from ``start_s`` to ``end_s``, as a worker with
    target ``labels`` (job, instance) would have exported them, one sample per ``step_s``."""
    steps = list(traffic.simulate(start_s, end_s, rate, step_s, [threshold_s], incident_from))
    base = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    le = repr(float(threshold_s))
    lines = ["# TYPE imtel_requests counter"]
    for app in traffic.apps:
        for outcome in ("failure", "success"):
            lines += [f'imtel_requests_total{{{base},app="{app}",outcome="{outcome}"}} '
                      f"{c[app].failures if outcome == 'failure' else c[app].requests - c[app].failures} {t:.3f}"
                      for t, c in steps]
    lines.append("# TYPE imtel_request_latency_seconds histogram")
    for app in traffic.apps:
        lines += [f'imtel_request_latency_seconds_bucket{{{base},app="{app}",le="{le}"}} {c[app].le[0]} {t:.3f}'
                  for t, c in steps]
        lines += [f'imtel_request_latency_seconds_count{{{base},app="{app}"}} {c[app].requests} {t:.3f}'
                  for t, c in steps]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class PrometheusServer:
    """One Prometheus process on a free loopback port (``start``/``stop``)."""

    def __init__(self, workdir: Path, targets: Sequence[str], job: str = "imtel") -> None:
        self.workdir, self.targets, self.job = workdir, list(targets), job
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.data = workdir / "tsdb"

    def backfill(self, openmetrics: str) -> None:
        """Write history into the TSDB (before ``start``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        source = self.workdir / "history.om.txt"
        source.write_text(openmetrics)
        proc = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.data)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"promtool backfill failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        source.unlink()

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in RULE_FILES],
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.workdir / 'prometheus.yml'}", f"--storage.tsdb.path={self.data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"Prometheus did not get ready: {self.log()[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, path: str, **params: Any) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} {params}: {body}")
        return list(body["data"]["result"])

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return self.api("query", query=expr, **({"time": at} if at is not None else {}))
