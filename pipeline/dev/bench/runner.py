"""Run one contender on one topic as its own process and measure it honestly.

The window is *first record consumed -> last row committed*: process start, imports, migrations and
the consumer-group join are excluded (a worker pays them once), the commit of the last offsets is
included. CPU seconds are the process's own (all threads, the embedded ClickHouse engine included)
over that window; peak RSS is the kernel's high-water mark over the process's whole life.

- The pipeline (``imtel worker``, configured by env) is observed from outside: ``/metrics`` until
  ``imtel_messages_polled_total`` moves (counted as a poll returns, before its records are processed;
  then polling stops, so scraping costs it nothing), then its
  consumer group's committed offsets until they reach the end of every partition.
- The other contenders write a status file (``status.py``): first record, rows acknowledged by
  ClickHouse, process CPU at both moments; the contenders that commit offsets (faust, Quix) are also
  done only once their group's committed offsets reached the end.

Afterwards the store is opened by ``verify`` in a child process and compared with the workload: a
measurement whose store differs is void.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.dev.bench import procstat, profile, verify
from pipeline.dev.bench.broker import CommitProbe, Produced
from pipeline.dev.bench.options import REPO
from pipeline.dev.bench.processes import log_tail, spawn
from pipeline.dev.bench.status import Job, read_status
from pipeline.dev.bench.workload import Expected
from pipeline.dev.ports import free_port

if TYPE_CHECKING:
    from pipeline.dev.bench.engine_process import EngineProcess

POLL_S = 0.05


@dataclass
class Measurement:
    """One contender on one workload (throughput), as reported and written to JSON."""

    contender: str
    workload: str
    records: int
    seconds: float | None = None
    records_per_s: float | None = None
    cpu_seconds: float | None = None
    cpu_s_per_million: float | None = None
    peak_rss_mb: float | None = None
    correct: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self, seconds: float, cpu: float | None, until: float | None = None) -> None:
        """The window's length and CPU; ``until`` (epoch seconds) places it in time for the speed probe."""
        self.seconds = round(seconds, 3)
        if until is not None:
            self.extra["window"] = [round(until - seconds, 3), round(until, 3)]
        self.records_per_s = round(self.records / seconds, 1) if seconds > 0 else None
        if cpu is not None:
            self.cpu_seconds = round(cpu, 3)
            self.cpu_s_per_million = round(cpu / self.records * 1e6, 2)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def not_run(contender: str, t: Target, reason: str) -> Measurement:
    """A contender that could not run here (not installed, not built): reported as not run with the
    reason, never as a measurement (it is not correct, so the harness does not run it again)."""
    m = Measurement(contender, t.workload, t.produced.records)
    m.extra["not_run"] = reason
    m.problems.append(f"not run: {reason}")
    return m


@dataclass
class Target:
    """Where a contender reads and what it must end up with."""

    workload: str
    produced: Produced
    expected: Expected
    bootstrap: str
    run_dir: Path


def run_verify(store: Path, fresh_from_ms: int | None = None) -> dict[str, Any]:
    """Open a store in a child process (chDB: one process per store) and read its checksums."""
    cmd = [sys.executable, "-m", "pipeline.dev.bench.verify", str(store)]
    cmd += [str(fresh_from_ms)] if fresh_from_ms else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"verify failed: {proc.stderr.strip()[-400:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def judge(m: Measurement, store: Path, expected: Expected, fresh_from_ms: int | None = None) -> dict[str, Any]:
    """Compare a contender's store with the workload; a difference makes the measurement void."""
    try:
        found = run_verify(store, fresh_from_ms)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        m.problems.append(str(exc))
        m.correct = False
        return {}
    m.problems += verify.compare(found, expected)
    m.correct = not m.problems
    m.extra["store_rows"] = found["rows"]
    return found


# -- the pipeline ---------------------------------------------------------------------------------
def scrape(port: int, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def sample_value(text: str, name: str, labels: str = "") -> float:
    """Sum of a metric's samples whose label set contains ``labels`` (0 when absent)."""
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if labels in (match.group(1) or ""):
            total += float(match.group(2))
    return total


def pipeline_env(t: Target, tag: str, overrides: dict[str, str]) -> tuple[dict[str, str], int, Path, str]:
    """Env of an isolated ``imtel worker``: the workload topic, its own group, store, topics and port."""
    port, store, group = free_port(), t.run_dir / "store", f"bench-pipeline-{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMTEL_")}
    env.update({"IMTEL_KAFKA_BOOTSTRAP": t.bootstrap, "IMTEL_TOPIC_REQUEST_LOGS": t.produced.topic,
                "IMTEL_TOPIC_MONITORING_SAMPLES": f"bench-samples-{tag}",
                "IMTEL_TOPIC_DEAD_LETTERS": f"bench-dlq-{tag}",
                "IMTEL_TOPIC_APPLICATIONS": f"bench-apps-{tag}", "IMTEL_CONSUMER_GROUP": group,
                "IMTEL_CLICKHOUSE_DSN": f"chdb://{store}", "IMTEL_DATA_DIR": str(t.run_dir / "data"),
                "IMTEL_WEB_PORT": str(port), "IMTEL_LOG_LEVEL": "warning", **overrides})
    return env, port, store, group


def worker_cmd() -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "worker"]


def measure_pipeline(t: Target, overrides: dict[str, str], timeout: float,
                     profile_out: Path | None = None, engine: EngineProcess | None = None) -> Measurement:
    """Contender 1: ``imtel worker`` from first record consumed to the last offset committed
    (with ``profile_out``: py-spy samples it over that window; such a run's speed is not reported).

    With ``engine`` (``pipeline-http``), the worker writes over HTTP to that engine process, whose
    CPU over the same window and peak RSS are recorded under ``extra["engine"]``; it is stopped
    (store closed) before the store is verified."""
    m = Measurement("pipeline" if engine is None else "pipeline-http", t.workload, t.produced.records)
    t.run_dir.mkdir(parents=True, exist_ok=True)
    if engine is not None:
        overrides = {**overrides, "IMTEL_CLICKHOUSE_DSN": engine.dsn}
    env, port, store, group = pipeline_env(t, t.run_dir.name, overrides)
    store = engine.store if engine is not None else store
    engine_cpu: list[float | None] = []  # the engine's CPU seconds at the window's start and end
    log = t.run_dir / "worker.log"
    proc = spawn(worker_cmd(), log, env)
    probe = CommitProbe(t.bootstrap, group, t.produced.topic, t.produced.end_offsets)
    deadline = time.monotonic() + timeout
    first = first_cpu = end = end_cpu = spy = None
    try:
        while time.monotonic() < deadline and not procstat.exited(proc):
            if first is None:
                text = scrape(port, 0.5)
                if text and sample_value(text, "imtel_messages_polled_total") > 0:
                    first, first_cpu = time.time(), procstat.cpu_seconds(proc.pid)
                    # the high-water mark so far: start-up and imports, before any data was held
                    m.extra["peak_rss_before_data_mb"] = procstat.peak_rss_mb(proc.pid)
                    engine_cpu += [engine.cpu_seconds()] if engine is not None else []
                    spy = profile.start(proc.pid, profile_out) if profile_out else None
            elif probe.done():
                end, end_cpu = time.time(), procstat.cpu_seconds(proc.pid)
                engine_cpu += [engine.cpu_seconds()] if engine is not None else []
                break
            time.sleep(POLL_S)
        profile.finish(spy)
        final = scrape(port) or ""
    finally:
        probe.close()
        profile.finish(spy)
        exit_ = procstat.stop(proc)
        if engine is not None:
            settled = settle(engine) if end is not None else None  # the merges left after the window
            m.extra["engine"] = engine_cost(engine.stop(), engine_cpu, m.records, settled)
    m.peak_rss_mb = round(exit_.peak_rss_mb, 1)
    if first is None or end is None:
        m.problems.append(_unfinished(exit_.returncode, time.monotonic() >= deadline, timeout, log))
        return m
    m.finish(end - first, None if first_cpu is None or end_cpu is None else end_cpu - first_cpu, until=end)
    if engine is not None:
        m.notes.append("ClickHouse over HTTP: `imtel engine` in its own process; CPU s/M and peak RSS are the "
                       "worker's, the engine's are under extra.engine")
    m.extra["rows_written_metric"] = sample_value(final, "imtel_rows_written_total", 'table="request_logs"')
    m.extra["offset_commits"] = sample_value(final, "imtel_offset_commits_total")
    m.extra["process_cpu_seconds_total"] = round(exit_.cpu_seconds, 2)
    m.notes.append(f"window start seen by polling /metrics every {POLL_S * 1000:.0f} ms")
    judge(m, store, t.expected)
    return m


SETTLE_STEP_S, SETTLE_IDLE_CPU, SETTLE_LIMIT_S = 0.5, 0.03, 30.0


def settle(engine: EngineProcess, step: float = SETTLE_STEP_S, idle: float = SETTLE_IDLE_CPU,
           limit: float = SETTLE_LIMIT_S) -> tuple[float, float] | None:
    """Once the worker is gone, wait until the engine is idle (under ``idle`` CPU-s in two steps of
    ``step`` seconds in a row, at most ``limit`` seconds): the background merges of the parts the
    worker wrote are work the engine pays per stored record, after the window. Returns the engine's
    CPU seconds then and the seconds waited (None when the engine is gone)."""
    start = time.monotonic()
    last, quiet = engine.cpu_seconds(), 0
    while last is not None and quiet < 2 and time.monotonic() - start < limit:
        time.sleep(step)
        now = engine.cpu_seconds()
        if now is None:
            return None
        quiet = quiet + 1 if now - last < idle else 0
        last = now
    return None if last is None else (last, round(time.monotonic() - start, 1))


def engine_cost(exit_: procstat.Exit, cpu: list[float | None], records: int,
                settled: tuple[float, float] | None = None) -> dict[str, Any]:
    """The engine process's cost: CPU over the worker's window (when both edges were seen) and from
    the window's start until the engine was idle again (``settle``: its merges included), CPU and
    peak RSS over its whole life."""
    window = cpu[1] - cpu[0] if len(cpu) == 2 and cpu[0] is not None and cpu[1] is not None else None
    total = settled[0] - cpu[0] if settled is not None and cpu and cpu[0] is not None else None
    return {"cpu_seconds": None if window is None else round(window, 3),
            "cpu_s_per_million": None if window is None or not records else round(window / records * 1e6, 2),
            "settled_cpu_seconds": None if total is None else round(total, 3),
            "settled_cpu_s_per_million": None if total is None or not records else round(total / records * 1e6, 2),
            "settle_s": None if settled is None else settled[1],
            "peak_rss_mb": round(exit_.peak_rss_mb, 1), "process_cpu_seconds_total": round(exit_.cpu_seconds, 2),
            "returncode": exit_.returncode}


def _unfinished(code: int, timed_out: bool, timeout: float, log: Path) -> str:
    if timed_out:
        return f"not finished within {timeout:.0f}s (stopped): {log_tail(log, 3)}"
    return f"process ended before finishing (exit {code}): {log_tail(log)}"


# -- contenders reporting through a status file -----------------------------------------------------
@dataclass
class Program:
    """A contender program: its command for a job file, and whether it commits offsets to a group."""

    name: str
    command: Callable[[Path], list[str]]
    commits: bool
    env: dict[str, str] | None = None
    uses_store: bool = True


def job_for(program: Program, t: Target, options: dict[str, Any] | None = None,
            fresh_from_ms: int | None = None) -> Job:
    t.run_dir.mkdir(parents=True, exist_ok=True)
    job = Job(program.name, t.bootstrap, t.produced.topic, f"bench-{program.name}-{t.run_dir.name}",
              str(t.run_dir / "store"), str(t.run_dir / "status.json"), t.expected.rows,
              options={"partitions": sorted(t.produced.end_offsets), "expected_messages": t.produced.messages,
                       **(options or {})})
    if fresh_from_ms is not None:
        job.fresh_from_ms = fresh_from_ms
    return job


def measure_program(program: Program, t: Target, timeout: float, options: dict[str, Any] | None = None,
                    ) -> Measurement:
    """Run a status-reporting contender until ClickHouse acknowledged every row (and offsets are committed)."""
    m = Measurement(program.name, t.workload, t.produced.records)
    job = job_for(program, t, options)
    job_path = t.run_dir / "job.json"
    job.save(job_path)
    log = t.run_dir / f"{program.name}.log"
    proc = spawn(program.command(job_path), log, program.env)
    probe = CommitProbe(t.bootstrap, job.group, t.produced.topic, t.produced.end_offsets) if program.commits else None
    deadline, status, end = time.monotonic() + timeout, {}, None
    try:
        while time.monotonic() < deadline:
            gone = procstat.exited(proc)  # before reading the status: a last write before exit is seen
            status = read_status(Path(job.status_path))
            if status.get("rows", 0) >= t.expected.rows and (probe is None or probe.done()):
                end = time.time() if probe is not None else status["last_write"]
                break
            if gone:
                break
            time.sleep(POLL_S)
    finally:
        if probe is not None:
            probe.close()
        exit_ = procstat.stop(proc)
    m.peak_rss_mb = round(exit_.peak_rss_mb, 1)
    if end is None or not status.get("first_record"):
        m.problems.append(_unfinished(exit_.returncode, time.monotonic() >= deadline, timeout, log)
                          + f" ({status.get('rows', 0)} of {t.expected.rows} rows)")
        return m
    cpu = None
    if status.get("cpu_first") is not None and status.get("cpu_last") is not None:
        cpu = status["cpu_last"] - status["cpu_first"]
    m.finish(end - status["first_record"], cpu, until=end)
    m.extra["process_cpu_seconds_total"] = round(exit_.cpu_seconds, 2)
    m.extra.update({k: v for k, v in status.items()
                    if k not in ("fresh", "pid", "first_record", "last_write", "cpu_first", "cpu_last", "rows")})
    if program.uses_store:
        judge(m, Path(job.store), t.expected)
    else:
        m.problems += [] if status["rows"] == t.expected.rows else [
            f"decoded {status['rows']} records, expected {t.expected.rows}"]
        m.correct = not m.problems
    return m
