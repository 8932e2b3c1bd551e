"""A value sampled on a daemon thread for a whole bench run, read afterwards for any window.

The contenders report their measurement windows after the fact, so whatever the bench wants to know
about a window (the host's speed, the broker's CPU) is sampled all along and looked up later.
"""

from __future__ import annotations

import threading
import time
from typing import Self


class Sampler:
    """``(epoch seconds, value)`` from ``measure`` every ``interval`` seconds until ``stop``; a None
    value (nothing to measure just then) is not recorded."""

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def measure(self) -> float | None:
        raise NotImplementedError

    def sample(self) -> None:
        at, value = time.time(), self.measure()
        if value is not None:
            self.samples.append((at, value))

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
