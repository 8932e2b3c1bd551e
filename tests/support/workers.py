"""Worker processes and traffic for fault tests: real ``imtel worker`` children, a real producer.

``WorkerProcess`` runs the CLI's worker command exactly as an operator would (own metrics port, own
log file) and reads its Prometheus ``/metrics``. ``Stream`` produces request logs at a steady rate in
a background thread and keeps what Kafka acknowledged (request id -> partition, offset), so a test
compares the database with what was really produced, not with what it meant to produce.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from pipeline.dev.generate import Traffic

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25,
             workers: Sequence[WorkerProcess] = ()) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout`` s.

    ``workers`` are the processes the wait depends on: if one of them exits meanwhile the wait fails
    at once, and any failure shows each one's state and the end of its log, because a CI log is
    all there is to read afterwards."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass  # a worker's web server not up yet, a port closed on purpose
        dead = [w for w in workers if not w.alive()]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(w.name for w in dead)} exited" if dead else f"timed out after {timeout:.0f}s"
            raise AssertionError(f"{why} waiting for {what}\n" + "\n".join(w.describe() for w in workers))
        time.sleep(interval)


def worker_env(base: dict[str, str], dsn: str, workdir: Path, name: str, web_port: int,
               **settings: str) -> dict[str, str]:
    """``pipeline_env`` for one worker reaching ClickHouse over HTTP at ``dsn``."""
    env = {**base, "IMTEL_CLICKHOUSE_DSN": dsn, "IMTEL_WEB_PORT": str(web_port),
           "IMTEL_DATA_DIR": str(workdir / f"data-{name}")}
    env.pop("IMTEL_GROUP_INSTANCE_ID", None)  # dynamic membership: rebalances are what scale-out tests see
    env.update({f"IMTEL_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), env.get("PYTHONPATH")]))
    return env


def thread_stacks(pid: int) -> str:
    """Every thread's Python and native stack of a live process (``py-spy dump``), for a hang's report:
    a worker that ignores SIGTERM has an event loop that cannot run, and its log says nothing about why."""
    spy = Path(sys.executable).with_name("py-spy")
    try:
        done = subprocess.run([str(spy), "dump", "--native", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no stacks: {exc})"
    return (done.stdout + done.stderr).strip()


class WorkerProcess:
    """One ``imtel worker`` child process."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name, self.env, self.workdir = name, env, workdir
        self.port = int(env["IMTEL_WEB_PORT"])
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def samples(self) -> Samples:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}

    def metric(self, name: str, **labels: str) -> float:
        """Sum of ``name`` over the series whose labels include ``labels``."""
        return sum(v for (n, ls), v in self.samples().items()
                   if n == name and set(labels.items()) <= set(ls))

    def assigned(self) -> int:
        return int(self.metric("imtel_assigned_partitions"))

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: flush, commit, leave the group); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stacks = thread_stacks(self.proc.pid)
            self.proc.kill()
            self.proc.wait(10)
            with open(self.log_path, "a") as log:
                log.write(f"\n[test] no exit {timeout:.0f} s after SIGTERM; its threads then:\n{stacks}\n")
            raise AssertionError(f"{self.name} did not stop within {timeout:.0f}s after SIGTERM; its threads "
                                 f"then (also in {self.log_path}):\n{stacks}") from None

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def describe(self, tail: int = 2000) -> str:
        """State and log tail, for a failure message."""
        code = None if self.proc is None else self.proc.poll()
        state = "not started" if self.proc is None else "running" if code is None else f"exited {code}"
        return f"--- {self.name} (port {self.port}, {state}), end of its log:\n{self.log_text()[-tail:]}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Stream(threading.Thread):
    """Request logs at ``rate`` records/s, one record per message, until ``stop()`` or ``total``."""

    def __init__(self, bootstrap: str, topic: str, rate: float, total: int, seed: int = 3,
                 decorate: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__(name="stream", daemon=True)
        self.topic, self.rate, self.total, self.decorate = topic, rate, total, decorate
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
        self.traffic = Traffic(apps=15, seed=seed)
        self.sent: dict[str, dict[str, Any]] = {}
        self.delivered: dict[str, tuple[int, int]] = {}  # request_id -> (partition, offset)
        self.failed = 0
        self._halt = threading.Event()

    def run(self) -> None:
        start, n = time.monotonic(), 0
        while n < self.total and not self._halt.is_set():
            due = min(self.total, int((time.monotonic() - start) * self.rate) + 1)
            now_ms = int(time.time() * 1000)
            for i in range(n, due):
                record = self.traffic.request_log(now_ms)
                if self.decorate is not None:
                    record = self.decorate(i, record)
                self.sent[record["request_id"]] = record
                self.producer.produce(self.topic, msgspec.json.encode(record), str(record["sdk_app_id"]).encode(),
                                      on_delivery=self._delivered)
            n = due
            self.producer.poll(0)
            time.sleep(0.02)
        self.producer.flush(30)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            return
        request_id = msgspec.json.decode(msg.value())["request_id"]
        self.delivered[request_id] = (msg.partition(), msg.offset())

    def stop(self, timeout: float = 60.0) -> None:
        self._halt.set()
        self.join(timeout)

    def offsets_below(self, committed: dict[int, int]) -> set[str]:
        """Request ids Kafka placed below each partition's committed offset."""
        return {rid for rid, (p, o) in list(self.delivered.items()) if o < committed.get(p, 0)}


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The consumer group's committed offsets (OffsetFetch only: this client never joins the group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    finally:
        consumer.close()
