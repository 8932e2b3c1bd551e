"""Freshness at a fixed offered load: record time -> queryable in ClickHouse.

A paced producer sends template messages of the workload at ``rate`` records/s, every record's
event time stamped with the send time, while the contender runs. The first ``warmup`` seconds are
left out (records with an earlier event time do not count). Two readings per contender:
- its own: the pipeline's ``imtel_freshness_seconds`` histogram (quantiles interpolated within
  buckets, as PromQL's ``histogram_quantile``); the others' fine histogram taken at insert ack;
- the store's: ``ingest_time`` (set by the engine at insert) minus ``request_time``, exact quantiles
  over the same rows (``verify``), the same definition for every contender.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pipeline.dev.bench import procstat
from pipeline.dev.bench.broker import CommitProbe, TopicWriter, create_topics, wait_until
from pipeline.dev.bench.processes import log_tail, spawn
from pipeline.dev.bench.runner import (
    Measurement,
    Program,
    Target,
    job_for,
    judge,
    pipeline_env,
    scrape,
    worker_cmd,
)
from pipeline.dev.bench.status import quantile, read_status
from pipeline.dev.bench.workload import Expected, Message, Workload, stamp, templates

HIST = "imtel_freshness_seconds"
READY_S = 20.0  # a contender's start-up + group join allowance before the load starts


@dataclass
class Freshness:
    """Freshness of one contender on one workload at a fixed offered load."""

    contender: str
    workload: str
    offered_rps: float
    seconds: float
    sent_records: int = 0
    achieved_rps: float | None = None
    p50_s: float | None = None
    p99_s: float | None = None
    source: str = ""
    store_p50_s: float | None = None
    store_p99_s: float | None = None
    correct: bool = False
    skipped: str = ""  # why this contender's freshness was not measured
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def histogram_buckets(text: str, name: str = HIST) -> list[tuple[float, float]]:
    """Cumulative (upper edge, count) buckets of an unlabelled histogram in an exposition text."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name + "_bucket":
                out.append((float(s.labels["le"]), float(s.value)))
    return sorted(out)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """PromQL's ``histogram_quantile``: linear interpolation inside the bucket holding the rank.
    A rank in the +Inf bucket gives the highest finite edge (the true value is above it)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for edge, count in buckets:
        if count >= rank:
            if math.isinf(edge):
                return lower
            inside = count - below
            return lower + (edge - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = edge, count
    return lower


def bucket_of(q: float, buckets: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The (lower, upper] edges of the bucket holding the q-quantile: the reading's resolution."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lower = q * buckets[-1][1], 0.0
    for edge, count in buckets:
        if count >= rank:
            return lower, edge
        lower = edge
    return None


def delta(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Bucket counts observed between two scrapes."""
    base = dict(before)
    return [(edge, count - base.get(edge, 0.0)) for edge, count in after]


class PacedProducer:
    """Sends template messages at a fixed record rate, each stamped with its send time."""

    def __init__(self, bootstrap: str, topic: str, w: Workload, rate: float) -> None:
        self.writer, self.topic, self.rate = TopicWriter(bootstrap), topic, rate
        self.templates = templates(w, 200 if w.batched else 5000)
        self.template_expected = [_expected_of(m) for m in self.templates]
        self.expected, self.sent = Expected(), 0

    def run(self, seconds: float) -> float:
        """Produce for ``seconds``; returns the achieved record rate."""
        start, i = time.monotonic(), 0
        end = start + seconds
        while (now := time.monotonic()) < end:
            due = int((now - start) * self.rate)
            while self.sent < due:
                msg = self.templates[i % len(self.templates)]
                self.writer.send(self.topic, Message(msg.key, stamp(msg.value, int(time.time() * 1000)), msg.records))
                _merge(self.expected, self.template_expected[i % len(self.templates)])
                self.sent += msg.records
                i += 1
            time.sleep(0.002)
        self.writer.flush()
        return self.sent / max(time.monotonic() - start, 1e-9)


def _expected_of(msg: Message) -> Expected:
    import msgspec

    exp = Expected()
    value = msg.value
    recs = msgspec.json.decode(value) if value[:1] == b"[" else [
        msgspec.json.decode(line) for line in value.split(b"\n") if line.strip()]
    for rec in recs:
        exp.add(rec)
    return exp


def _merge(into: Expected, part: Expected) -> None:
    into.rows += part.rows
    for app, (r, f, lat) in part.per_app.items():
        acc = into.per_app.setdefault(app, [0, 0, 0])
        acc[0] += r
        acc[1] += f
        acc[2] += lat


def _as_target(t: Target, producer: PacedProducer) -> Target:
    produced = producer.writer.produced[producer.topic]
    return Target(t.workload, produced, producer.expected, t.bootstrap, t.run_dir)


def pipeline_freshness(t: Target, w: Workload, rate: float, seconds: float, warmup: float,
                       overrides: dict[str, str], timeout: float) -> Freshness:
    """The pipeline at ``rate`` records/s: its histogram (minus the warm-up) and the store's exact view."""
    f = Freshness("pipeline", w.name, round(rate, 1), seconds)
    t.run_dir.mkdir(parents=True, exist_ok=True)
    create_topics(t.bootstrap, [t.produced.topic])
    env, port, store, group = pipeline_env(t, t.run_dir.name, overrides)
    log = t.run_dir / "worker.log"
    proc = spawn(worker_cmd(), log, env)
    producer = PacedProducer(t.bootstrap, t.produced.topic, w, rate)
    try:
        if not wait_until(lambda: _ready(port) or procstat.exited(proc), 90, 0.2) or procstat.exited(proc):
            f.problems.append(f"worker not ready: {log_tail(log)}")
            return f
        cut_ms = int((time.time() + warmup) * 1000)
        producer_rate = producer.run(warmup)
        before = histogram_buckets(scrape(port) or "")
        producer_rate = (producer_rate * warmup + producer.run(seconds) * seconds) / (warmup + seconds)
        target = _as_target(t, producer)
        probe = CommitProbe(t.bootstrap, group, t.produced.topic, target.produced.end_offsets)
        drained = wait_until(probe.done, timeout, 0.1)
        probe.close()
        after = histogram_buckets(scrape(port) or "")
    finally:
        procstat.stop(proc)
    f.sent_records, f.achieved_rps = producer.sent, round(producer_rate, 1)
    if not drained:
        f.problems.append(f"not all offsets committed within {timeout:.0f}s after the load stopped")
    window = delta(after, before)
    f.p50_s, f.p99_s = _rounded(histogram_quantile(0.5, window)), _rounded(histogram_quantile(0.99, window))
    f.source = f"{HIST} histogram (edges {', '.join(f'{e:g}' for e, _ in after if not math.isinf(e))} s)"
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        edges = bucket_of(q, window)
        if edges is not None:
            f.notes.append(f"{label} interpolated inside the ({edges[0]:g}, {edges[1]:g}] s bucket"
                           + (": the true value is above the last edge" if math.isinf(edges[1]) else ""))
    _store_view(f, store, target.expected, cut_ms)
    return f


def program_freshness(program: Program, t: Target, w: Workload, rate: float, seconds: float, warmup: float,
                      timeout: float) -> Freshness:
    """A status-reporting contender at ``rate``: its freshness at insert ack, and the store's view."""
    f = Freshness(program.name, w.name, round(rate, 1), seconds)
    create_topics(t.bootstrap, [t.produced.topic])
    producer = PacedProducer(t.bootstrap, t.produced.topic, w, rate)
    job, job_path, log = job_for(program, t), t.run_dir / "job.json", t.run_dir / f"{program.name}.log"
    load_at = time.time() + READY_S  # the contender has this long to start and join its group
    job.fresh_from_ms = cut_ms = int((load_at + warmup) * 1000)
    job.save(job_path)
    status_path = Path(job.status_path)
    proc = spawn(program.command(job_path), log, program.env)
    try:
        producer.run(0.01)  # a first message, so that "consuming" shows in the status
        if not wait_until(lambda: bool(read_status(status_path).get("first_record")), READY_S, 0.1):
            f.problems.append(f"contender not consuming within {READY_S:.0f}s: {log_tail(log)}")
            return f
        time.sleep(max(0.0, load_at - time.time()))
        producer_rate = producer.run(warmup + seconds)
        target = _as_target(t, producer)
        wait_until(lambda: read_status(status_path).get("rows", 0) >= target.expected.rows, timeout, 0.1)
    finally:
        procstat.stop(proc)
    status = read_status(status_path)
    f.sent_records, f.achieved_rps = producer.sent, round(producer_rate, 1)
    if status.get("rows", 0) < target.expected.rows:
        f.problems.append(f"{status.get('rows', 0)} of {target.expected.rows} rows written {timeout:.0f}s after "
                          "the load stopped")
    f.p50_s, f.p99_s = quantile(status.get("fresh", {}), 0.5), quantile(status.get("fresh", {}), 0.99)
    f.source = "measured in-process at insert acknowledgement (10 ms buckets)"
    _store_view(f, Path(job.store), target.expected, cut_ms)
    return f


def _store_view(f: Freshness, store: Path, expected: Expected, cut_ms: int) -> None:
    probe = Measurement(f.contender, f.workload, expected.rows)
    found = judge(probe, store, expected, cut_ms)
    f.problems += probe.problems
    f.correct = probe.correct and not f.problems
    fresh = found.get("fresh") or {}
    f.store_p50_s, f.store_p99_s = _rounded(fresh.get("p50_s")), _rounded(fresh.get("p99_s"))


def _ready(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
