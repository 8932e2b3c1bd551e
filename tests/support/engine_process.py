"""``imtel engine`` as a real process for the tests that talk to it: started on a free port with its
own store and token, stopped with the test module (``running_engine``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Engine:
    """The running engine: its process, port and the token it generated."""

    proc: subprocess.Popen[bytes]
    port: int
    token: str
    token_file: Path

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    def client(self, **kwargs: Any) -> Any:
        return clickhouse_connect.get_client(host="127.0.0.1", port=self.port, username="default",
                                             password=self.token, **kwargs)


@contextmanager
def running_engine(work: Path, *extra_args: str, start_s: float = 60.0) -> Iterator[Engine]:
    """An engine on a store under ``work`` (its log in ``work/engine.log``), ready when yielded."""
    ready = work / "ready.json"
    with open(work / "engine.log", "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "engine", "--store", str(work / "store"),
                                 "--port", "0", "--ready-file", str(ready), *extra_args], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_s
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (work / "engine.log").read_text()[-2000:]
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        token_file = Path(info["password_file"])
        yield Engine(proc, int(info["data"][0]), token_file.read_text().strip(), token_file)
    finally:
        proc.terminate()
        proc.wait(15)
