"""The host's CPU speed while the contenders run, so that a slow run can be told from a slow host.

The cores of this machine are shared with other machines: the same code has run ~1.8x slower for an
hour, and single runs of the same contender have taken twice as long with no load or steal time
showing inside the machine. A calibration before and after the whole run misses a slowdown of a few
seconds, so a probe thread repeats a fixed small task every half second for the whole run and times
it in *its own thread's CPU time*: waiting for a core (the contenders keep both busy) does not count,
only the speed of the core while it runs. Each measurement gets the probe's median over its window,
relative to the fastest the task ran during the whole run (the idle moments between contenders
included): a single idle measurement at the start proved too noisy a reference. Sharing caches with
the contender costs the probe a little; a factor well above that says the host was slow during that
window. The probe costs ~1% of one core.
"""

from __future__ import annotations

import statistics
import time

import msgspec

from pipeline.dev.bench.sampler import Sampler

SLOW_FACTOR = 1.5  # a window whose probe median is this much slower than the run's best gets a caution


def _payload(records: int) -> bytes:
    """The fixed task's input: small JSON records, like the pipeline's own work."""
    return msgspec.json.encode([{"a": i, "b": "x" * (i % 40), "c": i * 0.5} for i in range(records)])


def _task(data: bytes) -> None:
    """The fixed task: decode the records and sum a field."""
    sum(item["a"] for item in msgspec.json.decode(data))


_PROBE = _payload(4_000)
_CALIBRATION = _payload(20_000)


def task_ms() -> float:
    """Thread CPU milliseconds of the probe's task (4k records)."""
    start = time.thread_time()
    _task(_PROBE)
    return (time.thread_time() - start) * 1000


def cpu_calibration_ms() -> float:
    """Milliseconds one core takes for the task on 20k records, best of 5, by the wall clock: taken
    at the start and end of a run. Runs on different days are only comparable through this: on a host
    whose cores are shared with other machines the same code ran ~1.8x slower from one hour to the
    next, with no load or steal time showing inside this machine."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        _task(_CALIBRATION)
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 2)


class SpeedProbe(Sampler):
    """Runs ``task_ms`` every ``interval`` seconds on a daemon thread until ``stop``."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(interval, "bench-speed-probe")
        self.baseline = min(task_ms() for _ in range(9))  # before any contender started

    def measure(self) -> float:
        return task_ms()

    def best(self) -> float:
        """The fastest the task ran so far (the reference of ``factor``)."""
        return min([self.baseline, *(ms for _, ms in self.samples)])

    def factor(self, start: float, end: float) -> float | None:
        """Median task time over ``[start, end]`` (epoch seconds) relative to ``best``; None when the
        window holds fewer than two samples."""
        return slowdown(self.samples, self.best(), start, end)


def slowdown(samples: list[tuple[float, float]], baseline: float, start: float, end: float) -> float | None:
    """Median of the samples taken within ``[start, end]`` divided by ``baseline`` (pure)."""
    inside = [ms for at, ms in samples if start <= at <= end]
    if len(inside) < 2 or baseline <= 0:
        return None
    return round(statistics.median(inside) / baseline, 2)
