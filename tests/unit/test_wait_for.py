"""``tests.support.workers.wait_for``: a wait on a worker that has died fails at once and says why.

A CI log is all there is to read after a failed run, so the message must carry each worker's state
and the end of its log (the last CI failure said only "timed out after 60s")."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.workers import WorkerProcess, wait_for


def test_a_worker_that_exits_fails_the_wait_at_once_with_its_log(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMTEL_")}
    env.update({"IMTEL_WEB_PORT": "0", "IMTEL_DATA_DIR": str(tmp_path / "data"),
                "PYTHONPATH": str(Path(__file__).parents[2])})
    worker = WorkerProcess("w9", env, tmp_path).start()  # port 0 is refused: the worker exits with code 2
    start = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        wait_for(lambda: worker.assigned() > 0, 60, "w9's assignment", workers=[worker])
    message = str(failure.value)
    assert time.monotonic() - start < 30
    assert message.startswith("w9 exited waiting for w9's assignment")
    assert "exited 2" in message and "IMTEL_WEB_PORT" in message
