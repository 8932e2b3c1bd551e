"""Run ``imtel engine`` (``pipeline/dev/engine/``) with its fault admin listener explicitly
enabled as a child process, and drive it from a test: DSNs, faults, SQL for assertions.

The engine process owns the chDB store (one process per store); the test process never opens it. Test
assertions read through the admin listener, which speaks the same HTTP interface but is never
faulted, so what a test checks is what the real engine holds.

The engine always authenticates: it generates its token into the store (``engine.token``, 0600) and
names that file in its ready file. ``dsn()`` carries the token as the DSN's user-info, so a worker
given it (``IMTEL_CLICKHOUSE_DSN``) authenticates without anything else; ``base_url()`` carries none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

SHIM = Path(__file__).with_name("ch_http_shim.py")  # the same server as a script (``--password`` for auth tests)
REPO = Path(__file__).resolve().parents[2]


class ShimProcess:
    """One shim child process: ``listeners`` faultable data ports + one admin port over one store."""

    def __init__(self, store: Path, workdir: Path, listeners: int = 1) -> None:
        self.store, self.workdir, self.listeners = store, workdir, listeners
        self.proc: subprocess.Popen[bytes] | None = None
        self.data_ports: list[int] = []
        self.admin_port = 0
        self.user, self.password, self.password_file = "default", "", Path()
        self._client: Any = None

    def __enter__(self) -> ShimProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        ready = self.workdir / "shim-ready.json"
        ready.unlink(missing_ok=True)
        log = open(self.workdir / "shim.log", "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "engine", "--store", str(self.store),
                                      "--port", "0", "--listeners", str(self.listeners), "--fault-admin-port", "0",
                                      "--ready-file", str(ready)], cwd=REPO,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"imtel engine did not start: {self.log_tail()}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.data_ports, self.admin_port = list(info["data"]), int(info["admin"])
        self.user, self.password = str(info["user"]), Path(info["password_file"]).read_text().strip()
        self.password_file = Path(info["password_file"])

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, chars: int = 2000) -> str:
        path = self.workdir / "shim.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def dsn(self, listener: int = 0) -> str:
        """What a worker sets as ``IMTEL_CLICKHOUSE_DSN`` to reach the store through ``listener``
        (with the engine's credentials: the token is URL-safe, no quoting needed)."""
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.data_ports[listener]}"

    def base_url(self, listener: int = 0) -> str:
        """The listener's URL without credentials (for requests that must be refused)."""
        return f"http://127.0.0.1:{self.data_ports[listener]}"

    def auth_headers(self) -> dict[str, str]:
        """The headers clickhouse-connect sends to authenticate."""
        return {"X-ClickHouse-User": self.user, "X-ClickHouse-Key": self.password}

    # -- faults -------------------------------------------------------------------------------------
    def fault(self, mode: str, listener: int = 0, **spec: Any) -> dict[str, Any]:
        """Inject a fault (see ``pipeline.dev.engine_faults``); returns it as the engine recorded it."""
        return self._control("POST", {"mode": mode, "listener": listener, **spec})

    def faults(self) -> list[dict[str, Any]]:
        """Every fault injected so far, with ``hits`` and ``in_flight``."""
        return list(self._control("GET")["faults"])

    def clear(self) -> None:
        self._control("DELETE")

    def _control(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/__faults", data=data, method=method,
                                         headers={"Content-Type": "application/json", **self.auth_headers()})
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    # -- SQL through the admin listener -------------------------------------------------------------
    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of a read query, run by the engine (bound parameters, never formatted in)."""
        if self._client is None:
            import clickhouse_connect

            self._client = clickhouse_connect.get_client(host="127.0.0.1", port=self.admin_port, username=self.user,
                                                         password=self.password, send_receive_timeout=120)
        return [tuple(r) for r in self._client.query(sql, parameters=parameters or {}).result_rows]
