"""Per-process cost, read from the kernel: CPU seconds and peak resident memory.

Each contender runs as its own process, so ``/proc/PID/stat`` (user + system time of all its
threads, including the embedded ClickHouse engine's) and ``/proc/PID/status`` ``VmHWM`` (the
kernel's high-water mark of the resident set: a true peak, not a sample) describe it alone. After
exit, ``os.wait4`` gives the same numbers for the whole life of the process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Self

from pipeline.dev.bench.sampler import Sampler

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by a live process (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's peak resident set size of a live process, in MB (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class CpuMeter(Sampler):
    """CPU seconds of one long-lived process (the bench's broker), sampled every ``interval`` seconds
    on a daemon thread, so that its cost inside any contender's window can be read once the window is
    known (windows are reported by the contenders after the fact)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(interval, "bench-cpu-meter")
        self.pid = pid

    def measure(self) -> float | None:
        return cpu_seconds(self.pid)

    def start(self) -> Self:
        self.sample()  # a sample at the start: every later window lies after it
        return super().start()

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds the process used within ``[start, end]`` (epoch seconds)."""
        return cpu_between(self.samples, start, end)


def cpu_between(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """CPU seconds used within ``[start, end]`` from cumulative ``(time, cpu)`` samples, linearly
    interpolated between the samples around each end (pure). None unless samples cover the window."""
    if end < start or len(samples) < 2 or not samples[0][0] <= start or not end <= samples[-1][0]:
        return None

    def at(t: float) -> float:
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if t0 <= t <= t1:
                return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
        return samples[-1][1]

    return max(0.0, at(end) - at(start))


@dataclass
class Exit:
    """How a contender process ended, and what it cost over its whole life."""

    returncode: int
    cpu_seconds: float
    peak_rss_mb: float


def exited(proc: subprocess.Popen) -> bool:
    """True once the process ended; does not reap it (its rusage stays for ``stop``)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> Exit:
    """SIGTERM a contender, wait up to ``timeout`` (then SIGKILL), and reap it with its rusage.

    Never use ``Popen.poll``/``wait`` on a contender: they reap it and its rusage would be lost."""
    if not exited(proc):
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not exited(proc):
        if time.monotonic() > deadline:
            _signal(proc, signal.SIGKILL)
            break
        time.sleep(0.05)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Exit(proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
