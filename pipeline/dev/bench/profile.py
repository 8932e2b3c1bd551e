"""Where the worker's CPU goes: a py-spy profile of one extra pipeline run, and what metrics cost.

The goal "metrics and logging cost <= 5% of CPU" is a share of CPU, which a profiler measures and
a stopwatch cannot: the harness reruns the pipeline on the batched workload with py-spy attached
(sampling from outside at 250 Hz, ``--nonblocking``, from the first record to the last commit) and counts the
samples whose stack passes through ``prometheus_client``, ``pipeline/monitoring/metrics.py`` or ``logging``.
Only stacks holding the GIL are sampled (``--gil``): metrics and logging code always holds it, so
those samples / 250 Hz are the seconds it ran. Divided by the worker's CPU seconds over the same
window (the run is the production topology: the worker writing over HTTP to the engine in its own
process, so the engine's CPU is not in the denominator), that is the goal's share of CPU. The share
of all samples (of Python time only) is reported beside it: it used to be the judged number, a
fair upper bound while Python did most of the work, but with the native decoder doing the records'
work outside the GIL it counts a few samples of per-batch counter updates against very little.
That run's speed is not reported (a sampler slows its target a little); the throughput table comes
from the runs without it. ``analyse`` is pure: collapsed stacks in, shares and top frames out.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RATE_HZ = 250
METRICS = ("/prometheus_client/", "/pipeline/monitoring/metrics.py")
LOGGING = ("/logging/",)
OWN = "/pipeline/"
ENTRY = "/pipeline/cli.py"  # the process entry: under every stack of the main thread, says nothing


@dataclass
class Profile:
    """Shares of the sampled CPU time and the heaviest frames."""

    samples: int = 0
    metrics_share: float | None = None  # of all samples (Python time)
    logging_share: float | None = None
    metrics_samples: int = 0
    logging_samples: int = 0
    worker_cpu_s: float | None = None  # the worker's CPU seconds over the sampled window
    metrics_cpu_share: float | None = None  # of the worker's CPU (see the module docstring)
    logging_cpu_share: float | None = None
    top_self: list[tuple[str, float]] = field(default_factory=list)  # leaf frames
    top_pipeline: list[tuple[str, float]] = field(default_factory=list)  # pipeline functions, inclusive
    # (without the entry points under every stack: the CLI, the worker's main loop)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def of_cpu(self, worker_cpu_s: float | None) -> Profile:
        """The metrics and logging shares of the worker's CPU over the window (None without it)."""
        self.worker_cpu_s = worker_cpu_s
        if worker_cpu_s:
            self.metrics_cpu_share = round(self.metrics_samples / RATE_HZ / worker_cpu_s, 4)
            self.logging_cpu_share = round(self.logging_samples / RATE_HZ / worker_cpu_s, 4)
        return self


def spy_binary() -> str | None:
    """py-spy from the project's virtualenv (a dev dependency), else from PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("py-spy", path=path)


def start(pid: int, out: Path) -> subprocess.Popen | None:
    """Attach py-spy to a running process; None when py-spy is not installed."""
    binary = spy_binary()
    if binary is None:
        return None
    cmd = [binary, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw", "--full-filenames",
           "--nolineno", "--nonblocking", "--gil", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def finish(spy: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """Stop sampling (SIGINT makes py-spy write its output) and wait for the file."""
    if spy is None or spy.poll() is not None:
        return
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(5)


def _frames(stack: str) -> list[str]:
    return [f.strip() for f in stack.split(";") if f.strip()]


def _path(frame: str) -> str:
    return frame.rsplit("(", 1)[-1].rstrip(")") if "(" in frame else ""


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py)`` -> ``func (pkg/mod.py)``."""
    name, path = frame.rsplit(" (", 1)[0] if " (" in frame else frame, _path(frame)
    path = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", path)
    if OWN in path:
        path = "pipeline/" + path.rsplit(OWN, 1)[1]
    return f"{name} ({path})" if path else name


def analyse(collapsed: str, top: int = 10) -> Profile:
    """Shares of samples through metrics and logging code, top leaf frames, top pipeline functions."""
    total, metrics, logging = 0, 0, 0
    leaf: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), _frames(stack)
        total += count
        paths = [_path(f) for f in frames]
        metrics += count if any(m in p for p in paths for m in METRICS) else 0
        logging += count if any(m in p for p in paths for m in LOGGING) else 0
        if frames:
            leaf[_short(frames[-1])] += count
        for f in {f for f in frames if OWN in _path(f) and not _path(f).endswith(ENTRY)}:
            own[_short(f)] += count
    if total == 0:
        return Profile(note="no samples")
    return Profile(total, round(metrics / total, 4), round(logging / total, 4), metrics, logging,
                   top_self=[(f, round(n / total, 4)) for f, n in leaf.most_common(top)],
                   top_pipeline=[(f, round(n / total, 4)) for f, n in own.most_common() if n < 0.95 * total][:top])


def read(out: Path) -> Profile:
    """Analyse a py-spy raw output file (a missing file gives an empty profile with a note)."""
    try:
        return analyse(out.read_text())
    except OSError as exc:
        return Profile(note=f"no profile written ({exc.strerror})")
