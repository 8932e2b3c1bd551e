"""Attack test of a real worker's web port: only ``/metrics``, ``/healthz`` and ``/readyz`` answer without
the per-run token; the data endpoints refuse unauthenticated, rebound (foreign ``Host``) and page-made
(``Origin``) requests; faust's own pages are gone; the CLI still finds the token by itself."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.workers import WorkerProcess, wait_for

DATA = [("GET", "/queries/app_health"), ("GET", "/report?app=1400000001&from=now-31d"), ("GET", "/audit"),
        ("GET", "/apps"), ("POST", "/erase"), ("GET", "/deadletters")]
FAUST_PAGES = ["/router", "/table", "/", "/graph", "/stats/", "/performance"]


def call(port: str, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of one request; an HTTP error is an answer here, not an exception."""
    data = b'{"app": 1400000001}' if method == "POST" else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def worker(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A worker process on the pipeline's embedded store; yields its web port once it is ready."""
    proc = WorkerProcess("worker", pipeline_env, tmp_path).start()
    port = pipeline_env["IMTEL_WEB_PORT"]
    try:
        wait_for(lambda: _ready(port), 60, "the worker ready", workers=[proc])
        yield port
    finally:
        proc.stop(30)


def _ready(port: str) -> bool:
    try:
        return call(port, "/readyz")[0] == 200
    except OSError:
        return False


def test_only_the_scrape_and_probe_paths_are_open(worker: str, pipeline_env: dict[str, str]) -> None:
    port = worker
    token_file = Path(pipeline_env["IMTEL_DATA_DIR"], "worker.token")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    auth = {"Authorization": f"Bearer {token}"}

    for path in ("/metrics", "/healthz", "/readyz"):
        assert call(port, path)[0] == 200, path
    for method, path in DATA:
        status, body = call(port, path, method)
        assert status == 401 and b"token" in body, (method, path, status, body[:200])
        assert call(port, path, method, {"Authorization": f"Bearer {token[:-1]}x"})[0] == 401, path
        assert call(port, path, method, {"Authorization": token})[0] == 401, path  # not a bearer credential
        # DNS rebinding: the page's own name as Host, the right peer; a cross-site page: an Origin
        assert call(port, path, method, {**auth, "Host": f"attacker.example:{port}"})[0] == 403, path
        assert call(port, path, method, {**auth, "Origin": "http://attacker.example"})[0] == 403, path
        assert call(port, path, method, {**auth, "Sec-Fetch-Site": "cross-site"})[0] == 403, path
    for path in FAUST_PAGES:
        assert call(port, path)[0] == 404, path
        assert call(port, path, headers=auth)[0] == 404, path  # off, not merely guarded

    status, body = call(port, "/apps", headers=auth)
    assert status == 200 and json.loads(body) == []
    status, body = call(port, "/queries/app_health", headers={**auth, "Host": f"localhost:{port}"})
    assert status == 200 and "columns" in json.loads(body)


def test_the_cli_finds_the_token_itself(worker: str, pipeline_env: dict[str, str]) -> None:
    """The store is the worker's (chDB: one process): these commands can only have read it through the
    worker's endpoints, with the token they found in IMTEL_DATA_DIR."""
    for args in (["query", "app_health", "--format", "json"], ["apps", "list", "--format", "json"],
                 ["audit", "--format", "json"]):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=pipeline_env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode in (0, 1) and proc.stdout.strip().startswith(("[", "{")), (args, proc.stderr)
    erased = subprocess.run([sys.executable, "-m", "pipeline.cli", "erase", "--app", "1400000001", "--format", "json"],
                            env=pipeline_env, capture_output=True, text=True, timeout=120)
    assert erased.returncode == 0 and json.loads(erased.stdout)["sdk_app_id"] == 1400000001, erased.stderr
    wrong = subprocess.run([sys.executable, "-m", "pipeline.cli", "apps", "list"], capture_output=True, text=True,
                           env={**pipeline_env, "IMTEL_WEB_TOKEN": "x" * 40}, timeout=120)
    assert wrong.returncode != 0 and "refused the token" in wrong.stderr and "x" * 40 not in wrong.stderr
