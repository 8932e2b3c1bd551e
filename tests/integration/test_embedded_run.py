"""The README's first command: `imtel embedded` gets traffic into ClickHouse within a minute, and a
second terminal can run named queries against the store the running process owns. On the bundled
broker (the default, so it cannot rot) and on a real Apache Kafka node (``--broker kafka``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", ["tansu", "kafka"])
def test_embedded_run_headless(tmp_path: Path, broker: str) -> None:
    web, kafka = free_port(), free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "IMTEL_EMBEDDED_BROKER": broker,
           "IMTEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}", "IMTEL_WEB_PORT": str(web),
           "IMTEL_DATA_DIR": str(tmp_path / "data"), "IMTEL_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'data' / 'ch'}"}
    out = open(tmp_path / "embedded.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "embedded", "--rate", "300"], env=env,
                            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    rows: list[dict] = []
    try:
        deadline = time.monotonic() + (60 if broker == "tansu" else 120)  # a cold JVM, jars fetched once
        while time.monotonic() < deadline and not rows:
            time.sleep(3)
            q = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", "app_health", "minutes=10",
                                "--format", "json"], env=env, capture_output=True, text=True, timeout=30)
            if q.returncode == 0 and q.stdout.strip().startswith("["):
                rows = json.loads(q.stdout)
        time.sleep(6)  # at least one live progress line (printed every 5 s)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        out.close()
    log = (tmp_path / "embedded.log").read_text()
    assert rows, log[-3000:]
    assert all(0 <= r["success_rate"] <= 1 and r["n_requests"] > 0 for r in rows)
    assert "[imtel]" in log and "rec/s" in log and f"({broker})" in log
    assert proc.returncode in (0, -signal.SIGINT), log[-3000:]
