"""A bundled-broker process owned by one test: to kill and restart it, or to keep a test's consumer
groups (and the dead members a kill -9 leaves behind) away from the session broker other tests share."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline import embedded


class BrokerProcess:
    """One Tansu broker on a fixed loopback port (memory storage: a restart starts empty)."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port, self.log_path = port, log_path
        self.bootstrap = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BrokerProcess:
        self.proc = embedded.start_broker(self.port, self.log_path)
        return self

    def kill(self) -> None:
        """SIGKILL: connections drop, every topic, record, group and committed offset is gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        embedded.stop(self.proc)
