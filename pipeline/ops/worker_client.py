"""The one client of a running worker's HTTP API, for the ops commands (query, report, audit, erase,
apps, deadletters): with an embedded store only the worker may open it, so they ask the worker.

It finds the worker's token itself (``IMTEL_WEB_TOKEN``, else the per-run file the worker wrote into
``IMTEL_DATA_DIR``), so an operator never types it; when no worker answers it says so (None) and the
command opens the store directly instead (``from_store``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config.settings import Settings

WORKER_TOKEN_FILE = "worker.token"  # pipeline.worker.app.TOKEN_FILE (not imported: that would load faust)
OPEN_WORKER_PATHS = ("/metrics", "/healthz", "/readyz")


class WorkerError(Exception):
    """The worker answered with an error: a one-line message for the operator."""


def worker_token(s: Settings) -> str | None:
    """The token of the worker's data endpoints, found without the user typing it: IMTEL_WEB_TOKEN(_FILE),
    else the per-run file the worker wrote into IMTEL_DATA_DIR (0600, so only its user reads it). None
    when there is neither: no worker of this data folder has run."""
    if s.web_token:
        return s.web_token
    try:
        return (Path(s.data_dir) / WORKER_TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def worker_url(s: Settings, path: str) -> str:
    """URL of ``path`` on the worker's web port: a wildcard bind (0.0.0.0, ::) is reached on loopback, whose
    name the worker answers (it refuses other Host names on its data endpoints)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(s.web_host, s.web_host)
    return f"http://{f'[{host}]' if ':' in host else host}:{s.web_port}{path}"


def call(s: Settings, path: str, body: dict[str, Any] | None = None, timeout: float = 300) -> bytes | None:
    """GET ``path`` (or POST ``body`` as JSON) on a running worker, with its token: the raw answer, or None
    when no worker answers (or, for a data endpoint, no token exists to ask one with). An error the
    worker returns is a ``WorkerError``."""
    headers = {"Content-Type": "application/json"}
    if not path.startswith(OPEN_WORKER_PATHS):
        token = worker_token(s)
        if token is None:
            return None
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(worker_url(s, path), data=data, method="GET" if body is None else "POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = str(json.loads(exc.read()).get("error", exc))
        except ValueError:
            message = f"the worker on port {s.web_port} answered {exc.code} for {path.split('?')[0]}"
        if exc.code == 401:
            message += (f" (the worker on port {s.web_port} refused the token of {s.data_dir}/{WORKER_TOKEN_FILE}: "
                        "is it another pipeline's worker? use its IMTEL_DATA_DIR or IMTEL_WEB_TOKEN)")
        raise WorkerError(message) from None
    except (urllib.error.URLError, OSError):
        return None


def ask(s: Settings, path: str, body: dict[str, Any] | None = None, timeout: float = 300) -> Any:
    """``call``, its answer decoded from JSON (None when no worker answers)."""
    answer = call(s, path, body, timeout)
    return None if answer is None else json.loads(answer)


def direct_store(s: Settings) -> Any:
    """The store opened here: a ClickHouse server, or an embedded store no worker holds."""
    from pipeline.monitoring.metrics import Metrics
    from pipeline.sinks.clickhouse import ClickHouseStore, connect

    return ClickHouseStore(connect(s.clickhouse_url, s.clickhouse_user, s.clickhouse_password),
                           s.clickhouse_database, Metrics())


def from_store(s: Settings, path: str, direct: Callable[[Any], Any], body: dict[str, Any] | None = None,
               timeout: float = 300) -> Any:
    """Ask the running worker when the store is embedded, else (or when none runs) call ``direct(store)``."""
    if s.embedded_store:
        answer = ask(s, path, body, timeout)
        if answer is not None:
            return answer
    return direct(direct_store(s))
