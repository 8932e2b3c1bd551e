"""ClickHouse unavailable or failing (issue 3, item 3): pause, retry, resume; nothing lost or doubled.

How this is honest:
- the broker is a real Tansu process (``broker`` fixture) and the worker is the real ``imtel worker``
  command in its own process, configured only through its environment;
- ClickHouse is the real engine (chDB) behind a real HTTP interface: ``tests/support/ch_http_shim.py``
  is a separate process that owns the store and speaks ClickHouse's HTTP protocol, and the worker talks
  to it with clickhouse-connect's HTTP client exactly as to a ClickHouse server
  (``IMTEL_CLICKHOUSE_DSN=http://127.0.0.1:PORT``). Faults are injected in that transport, in front of
  the engine: refused connections (the port closes), hung writes dropped without an answer, HTTP 500
  with a transient ClickHouse code, slow inserts, an acknowledgement lost after the write happened,
  and Code 117 for any insert block that holds a marked row (decided by a SELECT over the uploaded
  block, so bisecting inserts get exactly what a server would answer);
- every expectation comes from outside the worker: the request ids and offsets Kafka acknowledged to
  the producer, the group's committed offsets read from the broker (OffsetFetch), and the store read
  through the shim's admin listener (never faulted). The worker's /metrics and log are checked for
  saying what happened, not trusted for the outcome.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.config.settings import Settings
from pipeline.schema.topics import ensure_topics
from tests.support.shim_process import ShimProcess
from tests.support.verify import aggregates, duplicates, stored_ids
from tests.support.workers import Stream, WorkerProcess, committed_offsets, wait_for, worker_env

from .conftest import free_port

pytestmark = pytest.mark.integration

PARTITIONS = 4
BATCH_MAX_RECORDS, CONSUME_MAX_MESSAGES = 2000, 500
TUNING = {"batch_max_records": str(BATCH_MAX_RECORDS), "consume_max_messages": str(CONSUME_MAX_MESSAGES),
          "batch_max_seconds": "0.3", "kafka_max_poll_interval_ms": "6000", "topic_partitions": str(PARTITIONS)}
STREAM_RATE = 400  # records/s while the faults are injected
WRITES = r"^\s*INSERT"  # data inserts and the engine-side aggregation (INSERT ... SELECT)
COMMITTED_BUT_UNSTORED = """
SELECT src_partition, uniqExact(src_offset) FROM imtel.request_logs
WHERE src_offset < {c:Array(UInt64)}[src_partition + 1] GROUP BY src_partition"""


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[ShimProcess]:
    with ShimProcess(tmp_path / "store", tmp_path) as process:
        yield process


def start_worker(pipeline_env: dict[str, str], shim: ShimProcess, tmp_path: Path) -> WorkerProcess:
    env = worker_env(pipeline_env, shim.dsn(0), tmp_path, "w1", free_port(), **TUNING)
    ensure_topics(Settings.from_env(env))
    worker = WorkerProcess("w1", env, tmp_path).start()
    wait_for(lambda: worker.assigned() == 2 * PARTITIONS, 60, "the worker's partition assignment", workers=[worker])
    return worker


@dataclass
class Probe:
    """One look at the worker, the broker and the store during a fault."""

    at: float
    paused: float
    up: float
    consumed: float
    buffered: float
    rss: float
    transient: float
    unstored: dict[int, tuple[int, int]]
    produced: int

    @property
    def backlog(self) -> float:
        """Records Kafka holds that the worker has not read."""
        return self.produced - self.consumed


def probe(worker: WorkerProcess, shim: ShimProcess, env: dict[str, str], stream: Stream) -> Probe:
    m = worker.samples()

    def get(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in m.items() if n == name and set(labels.items()) <= set(ls))

    consumed = get("imtel_records_consumed_total")
    buffered = consumed - get("imtel_rows_written_total", table="request_logs") \
        - get("imtel_records_invalid_total") - get("imtel_records_skipped_total")
    return Probe(time.monotonic(), get("imtel_consumption_paused"), get("imtel_clickhouse_up"), consumed, buffered,
                 get("process_resident_memory_bytes"), get("imtel_insert_failures_total", kind="transient"),
                 committed_unstored(shim, env), len(stream.delivered))


def committed_unstored(shim: ShimProcess, env: dict[str, str]) -> dict[int, tuple[int, int]]:
    """Partitions whose committed offset is ahead of what the store holds: {p: (committed, stored)}.
    Offsets of this stream are contiguous from 0 (asserted at the end), so offsets below ``committed``
    are stored iff ``committed`` distinct ones are. Read the commit first: the store only grows."""
    committed = committed_offsets(env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_CONSUMER_GROUP"],
                                  env["IMTEL_TOPIC_REQUEST_LOGS"], PARTITIONS)
    bounds = [committed.get(p, 0) for p in range(PARTITIONS)]
    stored = {int(p): int(n) for p, n in shim.query(COMMITTED_BUT_UNSTORED, {"c": bounds})}
    return {p: (c, stored.get(p, 0)) for p, c in committed.items() if stored.get(p, 0) != c}


@dataclass
class Phase:
    """One injected fault and what was seen while it lasted."""

    name: str
    mode: str
    spec: dict[str, Any]
    length: float
    probes: list[Probe] = field(default_factory=list)
    recovered_after: float = 0.0
    hits: int = 0


PHASES = [
    Phase("http-500 TOO_MANY_PARTS", "error", {"status": 500, "code": 252, "match": WRITES, "duration": 6.0}, 6.0),
    Phase("connection refused", "refuse", {"seconds": 6.0}, 6.0),
    Phase("hung writes dropped", "stall", {"seconds": 2.5, "match": WRITES, "duration": 7.0}, 7.0),
    Phase("slow inserts", "slow", {"seconds": 1.5, "match": r"^\s*INSERT INTO imtel\.request_logs", "duration": 5.0},
          5.0),
]


def run_phase(phase: Phase, worker: WorkerProcess, shim: ShimProcess, env: dict[str, str], stream: Stream) -> None:
    written = worker.metric("imtel_rows_written_total", table="request_logs")
    shim.fault(phase.mode, **phase.spec)
    start = time.monotonic()
    while time.monotonic() - start < phase.length:
        phase.probes.append(probe(worker, shim, env, stream))
        time.sleep(0.3)
    written_at_end = worker.metric("imtel_rows_written_total", table="request_logs")

    def resumed() -> bool:
        p = probe(worker, shim, env, stream)
        phase.probes.append(p)
        now = worker.metric("imtel_rows_written_total", table="request_logs")
        return p.paused == 0 and p.up == 1 and now > max(written, written_at_end)

    wait_for(resumed, 40, f"the worker to resume by itself after {phase.name}", interval=0.3)
    phase.recovered_after = time.monotonic() - start - phase.length
    phase.hits = next(f["hits"] for f in reversed(shim.faults()) if f["mode"] == phase.mode)


def check_phase(phase: Phase) -> None:
    probes = phase.probes
    assert phase.hits > 0, f"{phase.name}: the fault never fired"
    for p in probes:  # bounded memory: the batch being written and the one filling, each <= batch_max_records
        assert p.buffered <= 2 * BATCH_MAX_RECORDS, f"{phase.name}: {p.buffered} rows held in memory"
        assert not p.unstored, f"{phase.name}: offsets committed past what ClickHouse stored: {p.unstored}"
    if phase.mode == "slow":  # slow is not failing: no pause, no failure, just slower inserts
        assert all(p.paused == 0 for p in probes), f"{phase.name}: consumption paused on a slow insert"
        assert probes[-1].transient == probes[0].transient
        return
    assert any(p.paused == 1 for p in probes), f"{phase.name}: consumption never paused"
    assert any(p.up == 0 for p in probes), f"{phase.name}: imtel_clickhouse_up never said 0"
    assert probes[-1].transient > probes[0].transient, f"{phase.name}: no transient failure counted"
    waited, run_start = 0, None
    for a, b in itertools.pairwise(probes):  # nothing new is read while paused: it waits in Kafka
        if a.paused == 1 and b.paused == 1:
            assert b.consumed == a.consumed, f"{phase.name}: records consumed while paused"
            run_start = run_start or a
            waited = max(waited, b.produced - run_start.produced)
        else:
            run_start = None
    assert waited > STREAM_RATE, f"{phase.name}: only {waited} records arrived while paused (stream stalled?)"


def test_outages_pause_consumption_and_resume_without_loss(pipeline_env: dict[str, str], shim: ShimProcess,
                                                         tmp_path: Path) -> None:
    """Refused connections, 500 + TOO_MANY_PARTS, hung writes and slow inserts, one after the other
    for about 24 s while 400 records/s flow: consumption pauses (records wait in Kafka, not in memory),
    no offset is ever committed past what the store holds, the worker backs off, resumes by itself,
    and says so in /metrics and its log; at the end every record is stored once."""
    worker = start_worker(pipeline_env, shim, tmp_path)
    env = worker.env
    stream = Stream(env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_TOPIC_REQUEST_LOGS"], rate=STREAM_RATE, total=10**7)
    stream.start()
    try:
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 1000, 30, "first rows")
        baseline_rss = probe(worker, shim, env, stream).rss
        for phase in PHASES:
            run_phase(phase, worker, shim, env, stream)
    finally:
        stream.stop()
    try:
        wait_for(lambda: stored_ids(shim)[0] >= len(stream.delivered), 60, "every acknowledged record stored")
        wait_for(lambda: not committed_unstored(shim, env) and sum(committed_offsets(
            env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_CONSUMER_GROUP"], env["IMTEL_TOPIC_REQUEST_LOGS"],
            PARTITIONS).values()) == len(stream.delivered), 30, "the last offsets committed")
        final = worker.samples()
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]

    count, ids = stored_ids(shim)
    lost, duplicated = len(set(stream.delivered) - ids), count - len(ids)
    raw, folded = aggregates(shim)
    log = worker.log_text()
    retries = re.findall(r"write failed, retrying in ([\d.]+)s with consumption paused: (.*)", log)
    delays = [float(d) for d, _ in retries]
    report(tmp_path, "outages", {
        "records_checked": len(stream.delivered), "lost": lost, "duplicated": duplicated,
        "faults": {ph.name: {"hits": ph.hits, "seconds": ph.length, "recovered_after_s": round(ph.recovered_after, 1),
                             "max_buffered": max(p.buffered for p in ph.probes),
                             "max_kafka_backlog": max(p.backlog for p in ph.probes),
                             "paused_probes": sum(p.paused == 1 for p in ph.probes)} for ph in PHASES},
        "transient_failures": final_sum(final, "imtel_insert_failures_total", "transient"),
        "rss_mb": [round(baseline_rss / 2**20), round(max(p.rss for ph in PHASES for p in ph.probes) / 2**20)],
        "retry_delays": delays})

    for phase in PHASES:
        check_phase(phase)
    # the committed-offset check relies on contiguous offsets: prove it for this stream
    by_partition: dict[int, list[int]] = {}
    for p, o in stream.delivered.values():
        by_partition.setdefault(p, []).append(o)
    assert all(sorted(v) == list(range(len(v))) for v in by_partition.values())
    assert stream.failed == 0
    assert (lost, duplicated) == (0, 0) and ids == set(stream.delivered)
    assert raw == folded and len(raw) > 10
    # what the worker said about it
    assert final[("imtel_consumption_paused", ())] == 0 and final[("imtel_clickhouse_up", ())] == 1
    assert any(delays[i:i + 3] == [0.5, 1.0, 2.0] for i in range(len(delays))), f"no backoff seen: {delays}"
    for cause in ("TOO_MANY_PARTS", "refused", "without an answer"):  # the worker's own line names the cause
        assert any(cause.lower() in line.lower() for _, line in retries), f"no retry line says {cause!r}"
    leaked = [ip for ip in {r["client_ip"] for r in stream.sent.values()} if ip in log]
    assert not leaked, f"client IPs in the worker log: {leaked[:3]}"


def test_lost_acknowledgement_neither_loses_nor_doubles(pipeline_env: dict[str, str], shim: ShimProcess,
                                                        tmp_path: Path) -> None:
    """The write happened but its answer never came (a timeout after the server did the work), twice in a
    row: the retries must not store the rows, or fold their aggregates (the insert's view), a second time."""
    worker = start_worker(pipeline_env, shim, tmp_path)
    env = worker.env
    stream = Stream(env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_TOPIC_REQUEST_LOGS"], rate=600, total=3000, seed=5)
    stream.start()
    try:
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 300, 30, "first rows")
        raw = shim.fault("stall", after=True, seconds=0.5, limit=2, match=r"^\s*INSERT INTO imtel\.request_logs")
        wait_for(lambda: any(f["hits"] == 2 for f in shim.faults() if f["id"] == raw["id"]), 30,
                 "two acknowledgements lost")
        stream.join(60)
        wait_for(lambda: len(stored_ids(shim)[1]) >= len(stream.delivered), 60, "every acknowledged record stored")
        wait_for(lambda: not committed_unstored(shim, env) and sum(committed_offsets(
            env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_CONSUMER_GROUP"], env["IMTEL_TOPIC_REQUEST_LOGS"],
            PARTITIONS).values()) == len(stream.delivered), 30, "the last offsets committed")
    finally:
        stream.stop()
        assert worker.stop() == 0, worker.log_text()[-3000:]
    ids = stored_ids(shim)[1]
    raw_rows, folded = aggregates(shim)
    differing = set(map(repr, raw_rows)) ^ set(map(repr, folded))
    figures = {"records_checked": len(stream.delivered), "lost": len(set(stream.delivered) - ids),
               "duplicated": duplicates(shim), "aggregate_groups_differing": len(differing),
               "faults": {"lost acknowledgements": 2}}
    report(tmp_path, "lost-ack", figures)
    assert (figures["lost"], figures["duplicated"], figures["aggregate_groups_differing"]) == (0, 0, 0), figures


POISON = "POISON-117"


def poison(index: int, record: dict[str, Any]) -> dict[str, Any]:
    """Every 250th record carries the marker the shim's Code-117 rule rejects (valid JSON, valid schema:
    only ClickHouse refuses it, like data a server-side constraint rejects)."""
    if index % 250 == 125:
        return {**record, "error_code": 10002, "exception": f"{POISON} internal server error"}
    return record


def test_rows_clickhouse_rejects_go_to_dead_letters(pipeline_env: dict[str, str], shim: ShimProcess,
                                                   tmp_path: Path) -> None:
    """Code 117 (INCORRECT_DATA) is permanent: the rejected rows go to the dead-letter topic and ledger
    with reason ``insert_rejected``; the other rows of the same batches are stored once; the partition
    keeps flowing instead of retrying forever."""
    shim.fault("reject", column="exception", marker=POISON, match=r"^\s*INSERT INTO imtel\.request_logs")
    worker = start_worker(pipeline_env, shim, tmp_path)
    env = worker.env
    stream = Stream(env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_TOPIC_REQUEST_LOGS"], rate=1500, total=3000, seed=9,
                    decorate=poison)
    stream.run()  # produce everything first: the worker meets the poison mid-stream, in full batches
    bad = {rid for rid, r in stream.sent.items() if POISON in (r.get("exception") or "")}
    good = set(stream.delivered) - bad
    try:
        wait_for(lambda: len(stored_ids(shim)[1]) >= len(good) and ledger(shim)[0] >= len(bad), 60,
                 "good rows stored and rejected rows dead-lettered")
        time.sleep(1.0)  # a duplicate or a late extra dead letter would land by now
        failures = worker.metric("imtel_insert_failures_total", kind="permanent")
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    count, ids = stored_ids(shim)
    assert ids == good and count == len(good), "rows of rejected batches lost or doubled"
    n_ledger, ledger_origins = ledger(shim)
    assert n_ledger == len(bad)
    assert ledger_origins == {stream.delivered[rid] for rid in bad}
    letters = dead_letters(env, len(bad))
    assert {json_id(m.value()) for m in letters} == bad
    for m in letters:
        headers = {k: v.decode() for k, v in m.headers()}
        assert headers["imtel-reason"] == "insert_rejected"
        assert (int(headers["imtel-source-partition"]), int(headers["imtel-source-offset"])) == \
            stream.delivered[json_id(m.value())]
    assert failures > 0
    raw, folded = aggregates(shim)
    assert raw == folded
    report(tmp_path, "rejected", {"records_checked": len(stream.delivered), "rejected": len(bad), "lost": 0,
                                  "duplicated": 0, "permanent_failures": failures})


def ledger(shim: ShimProcess) -> tuple[int, set[tuple[int, int]]]:
    rows = shim.query("SELECT src_partition, src_offset FROM imtel.dead_letters WHERE reason = 'insert_rejected'")
    return len(rows), {(int(p), int(o)) for p, o in rows}


def dead_letters(env: dict[str, str], expected: int) -> list[Any]:
    """Every message of the dead-letter topic (assigned, not subscribed: no group join to wait for)."""
    topic = env["IMTEL_TOPIC_DEAD_LETTERS"]
    consumer = Consumer({"bootstrap.servers": env["IMTEL_KAFKA_BOOTSTRAP"], "group.id": f"dlq-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False})
    letters: list[Any] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(500, 0.5) if m.error() is None]
            letters += batch
            if len(letters) >= expected and not batch:
                break
    finally:
        consumer.close()
    return letters


def json_id(value: bytes) -> str:
    return str(msgspec.json.decode(value)["request_id"])


def final_sum(samples: dict[Any, float], name: str, kind: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and ("kind", kind) in labels)


def report(tmp_path: Path, name: str, figures: dict[str, Any]) -> None:
    """Print the figures (``pytest -s``) and keep them next to the worker's log."""
    text = json.dumps(figures, default=str)
    (tmp_path / f"figures-{name}.json").write_text(text)
    print(f"\n[fault figures] {name}: {text}")


def test_a_write_slower_than_the_old_poll_interval_keeps_the_group_membership(
        pipeline_env: dict[str, str], shim: ShimProcess, tmp_path: Path) -> None:
    """On real Kafka, with the worker's default group settings (the bundled broker's 10 s poll interval
    used to be the default): inserts that take 15 s each for a while cost no rebalance, no
    revocation and no duplicate; the records produced meanwhile are stored once when writes speed up."""
    tuning = {k: v for k, v in TUNING.items() if k != "kafka_max_poll_interval_ms"}
    env = worker_env(pipeline_env, shim.dsn(0), tmp_path, "w1", free_port(), **tuning)
    assert "IMTEL_KAFKA_MAX_POLL_INTERVAL_MS" not in env
    ensure_topics(Settings.from_env(env))
    worker = WorkerProcess("w1", env, tmp_path).start()
    wait_for(lambda: worker.assigned() == 2 * PARTITIONS, 60, "the worker's partition assignment", workers=[worker])
    stream = Stream(env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_TOPIC_REQUEST_LOGS"], rate=200, total=6_000)
    stream.start()
    try:
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 200, 30, "first rows")
        shim.fault("slow", seconds=15.0, match=r"^\s*INSERT INTO imtel\.request_logs", duration=16.0)
        time.sleep(32.0)  # at least two 15 s inserts: each longer than the old 10 s max.poll.interval.ms
        shim.clear()
        stream.stop()
        wait_for(lambda: stored_ids(shim)[0] >= len(stream.delivered), 60, "every acknowledged record stored")
        revoked = worker.metric("imtel_rebalances_total", event="revoked")
        assigned = worker.metric("imtel_rebalances_total", event="assigned")
    finally:
        code = worker.stop()
    log = worker.log_text()
    assert code == 0, log[-3000:]
    count, ids = stored_ids(shim)
    assert ids == set(stream.delivered) and count == len(ids), "records lost or doubled"
    assert (revoked, assigned) == (0, 1), f"the group rebalanced during slow writes: {revoked=} {assigned=}"
    assert "leaving group" not in log.lower() and "max poll interval" not in log.lower()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:  # not the worker's JSON (e.g. the web server's own error page)
            return exc.code, {"text": text.decode(errors="replace")[:200]}


def test_a_stalled_write_fails_readiness_with_its_cause_and_sigterm_still_stops(
        pipeline_env: dict[str, str], shim: ShimProcess, tmp_path: Path) -> None:
    """ClickHouse refuses every connection for good while records flow: past IMTEL_WRITE_STALL_SECONDS
    /readyz answers 503 naming the cause and the stall metric says since when; SIGTERM then stops the
    worker (it used to retry on, past 20 s) with nothing committed beyond what is stored; a new worker
    stores everything exactly once when ClickHouse is back."""
    env = worker_env(pipeline_env, shim.dsn(0), tmp_path, "w1", free_port(), **{**TUNING, "write_stall_seconds": "3"})
    ensure_topics(Settings.from_env(env))
    worker = WorkerProcess("w1", env, tmp_path).start()
    wait_for(lambda: worker.assigned() == 2 * PARTITIONS, 60, "the worker's partition assignment", workers=[worker])
    stream = Stream(env["IMTEL_KAFKA_BOOTSTRAP"], env["IMTEL_TOPIC_REQUEST_LOGS"], rate=300, total=3_000)
    stream.start()
    port = int(env["IMTEL_WEB_PORT"])
    try:
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 200, 30, "first rows")
        shim.fault("refuse", seconds=3600.0)
        _, body = wait_for(lambda: (r := readyz(port))[0] == 503 and "cause" in r[1] and r, 60,
                                "readiness to fail with a cause", workers=[worker])
        assert worker.metric("imtel_write_failing_since_timestamp_seconds") > 0
        stream.join(60)
    finally:
        stream.stop()
    assert worker.proc is not None
    began = time.monotonic()
    code = worker.stop(60)
    stopped_after = time.monotonic() - began
    print(f"\n[stall figures] readiness cause: {body.get('cause')!r}; stopped {stopped_after:.1f}s after SIGTERM")
    assert code is not None and stopped_after < 30, f"the stalled worker took {stopped_after:.0f}s to stop"
    assert "refused" in body["cause"].lower() or "connect" in body["cause"].lower(), body
    shim.clear()
    assert not committed_unstored(shim, env), "an offset was committed past what ClickHouse stored"

    second = WorkerProcess("w2", {**env, "IMTEL_WEB_PORT": str(free_port())}, tmp_path).start()
    try:
        wait_for(lambda: stored_ids(shim)[0] >= len(stream.delivered), 90, "every record stored after the outage",
                 workers=[second])
    finally:
        assert second.stop(60) == 0, second.log_text()[-3000:]
    count, ids = stored_ids(shim)
    assert ids == set(stream.delivered) and count == len(ids)
