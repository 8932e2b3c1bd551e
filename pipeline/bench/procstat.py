"""Per-process cost, read from the kernel: CPU seconds and peak resident memory.

Each contender runs as its own process, so ``/proc/PID/stat`` (user + system time of all its
threads, including the embedded ClickHouse engine's) and ``/proc/PID/status`` ``VmHWM`` (the
kernel's high-water mark of the resident set: a true peak, not a sample) describe it alone. After
exit, ``os.wait4`` gives the same numbers for the whole life of the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass

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
