"""The engine in its own process for one benchmark run: ``imtel engine`` on a fresh store.

In production the worker talks HTTP to a ClickHouse server, so its own memory does not hold the
engine's. The benchmark reproduces that topology on one machine: ``imtel engine`` owns the run's
store and serves it on a free loopback port, the worker gets ``IMTEL_CLICKHOUSE_DSN=http://...``
(with the engine's generated token as the DSN's user-info: the engine always authenticates, and
the DSN is the one setting the runner passes), and both processes are measured, each from the
kernel (``procstat``): the engine's cost is reported next to the worker's, never folded away.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

from pipeline.dev.bench import procstat
from pipeline.dev.bench.processes import log_tail, spawn


@dataclass
class EngineProcess:
    """A running ``imtel engine``: its process, store, data port and credentials."""

    proc: Popen
    store: Path
    port: int
    log: Path
    user: str = "default"
    password: str = ""

    @property
    def dsn(self) -> str:
        """The worker's ``IMTEL_CLICKHOUSE_DSN`` (the token is URL-safe; redacted wherever settings are shown)."""
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float | None:
        return procstat.cpu_seconds(self.proc.pid)

    def stop(self) -> procstat.Exit:
        """SIGTERM (the engine closes its store), reap it, and its whole-life CPU and peak RSS."""
        return procstat.stop(self.proc)


def start_engine(run_dir: Path, timeout: float = 60.0) -> EngineProcess:
    """``imtel engine`` on ``run_dir/store`` and a free port; returns once it serves (RuntimeError if not)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    store, ready, log = run_dir / "store", run_dir / "engine-ready.json", run_dir / "engine.log"
    ready.unlink(missing_ok=True)
    proc = spawn([sys.executable, "-m", "pipeline.cli", "engine", "--store", str(store), "--port", "0",
                  "--ready-file", str(ready)], log)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if procstat.exited(proc) or time.monotonic() > deadline:
            procstat.stop(proc)
            raise RuntimeError(f"imtel engine did not start: {log_tail(log)}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    password = Path(info["password_file"]).read_text().strip()
    return EngineProcess(proc, store, int(info["data"][0]), log, str(info["user"]), password)
