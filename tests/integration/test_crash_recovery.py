"""Crash recovery: ``kill -9`` the worker again and again while 100k+ records stream in; restart it
each time; afterwards the store holds every valid record exactly once, the aggregates equal a
recomputation from the raw rows, and the dead letters are exactly the invalid records.

The kills land where exactly-once is hard, through the worker's failpoints (``pipeline/worker/failpoints.py``):
right after the raw insert (rows and their aggregate stored, the write not finished), after
everything was stored but before the offset commit, inside a rebalance's revocation (a consumer joins
the group, the worker dies with rows buffered), plus one plain ``kill -9`` at a random moment while it
writes. A dedicated broker keeps the dead members a kill leaves behind away from the other tests' groups.

Dead-letter topic vs ledger: a flush sends dead letters to Kafka, waits for the acknowledgement, then
writes the ledger rows; recovery skips what the ledger holds. So the ledger must equal the invalid set
exactly. The topic may repeat a dead letter only if a kill fell between that Kafka acknowledgement
and the ledger insert: no failpoint sits there, so only the random kill can cause it, at most once
per random kill.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.schema.topics import ensure_topics
from tests.support.brokers import BrokerProcess
from tests.support.ipscan import Scanner
from tests.support.kafka_io import RecordingProducer, committed, read_topic
from tests.support.verify import RAW_AGGREGATES, STORED_AGGREGATES
from tests.support.workers import WorkerProcess, wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration

PARTITIONS = 4
SINGLES, ARRAYS, NDJSONS, PER_MESSAGE = 8_000, 460, 460, 100  # 100,000 valid request logs
SAMPLES = 300
STREAM_SECONDS = 40.0  # about as long as the killed lives: kills land while the stream flows
DAY_MS = 86_400_000


@dataclass
class Message:
    """One message of the workload and what it must become."""

    topic: str
    key: bytes | None
    value: bytes
    valid: list[str] = field(default_factory=list)  # request ids that must be stored
    invalid: dict[int, str] = field(default_factory=dict)  # index -> reason that must be dead-lettered
    sample: bool = False  # a valid monitoring sample


def build_workload(logs: str, samples: str, now_ms: int) -> tuple[list[Message], set[str]]:
    """Valid request logs in all three framings for a dozen apps, monitoring samples, and invalid
    records of every kind the processor tells apart, some hidden inside otherwise valid batches (one
    of them fails only the ``interface`` pattern, the check that runs per batch after decoding).
    Also returns every client IP produced (for the leak scan)."""
    rng, traffic = random.Random(20261122), Traffic(apps=12, seed=20261122)
    out: list[Message] = []
    ips: set[str] = set()

    def record() -> dict[str, Any]:
        r = traffic.request_log(now_ms)
        ips.add(r["client_ip"])
        return r

    for _ in range(SINGLES):
        r = record()
        out.append(Message(logs, str(r["sdk_app_id"]).encode(), msgspec.json.encode(r), [r["request_id"]]))
    for n in range(ARRAYS + NDJSONS):
        batch = [record() for _ in range(PER_MESSAGE)]
        out.append(Message(logs, str(batch[0]["sdk_app_id"]).encode(),
                           msgspec.json.encode(batch) if n < ARRAYS else
                           b"\n".join(msgspec.json.encode(r) for r in batch), [r["request_id"] for r in batch]))
    for _ in range(SAMPLES):
        s = traffic.monitoring_sample(now_ms)
        out.append(Message(samples, str(s["sdk_app_id"]).encode(), msgspec.json.encode(s), sample=True))
    # invalid: whole messages, and single bad records inside valid batches (the others are stored)
    for kind in range(120):
        r = record()
        k = kind % 10
        if k == 0:
            out.append(Message(logs, b"1", msgspec.json.encode(r)[:-12], invalid={0: "invalid_json"}))
        elif k == 1:
            out.append(Message(logs, None, msgspec.json.encode({**r, "latency_ms": "slow"}), invalid={0: "wrong_type"}))
        elif k == 2:
            out.append(Message(logs, b"2", msgspec.json.encode({**r, "client_ip": "999.1.2.3"}),
                               invalid={0: "invalid_ip"}))
        elif k == 3:
            out.append(Message(logs, b"3", msgspec.json.encode({**r, "request_time": now_ms - 9 * DAY_MS}),
                               invalid={0: "too_old"}))
        elif k == 4:
            out.append(Message(logs, b"4", b"", invalid={-1: "empty"}))
        elif k == 5:
            out.append(Message(logs, b"5", msgspec.json.encode({**r, "interface": "v4/open im/sendmsg"}),
                               invalid={0: "out_of_range"}))
        elif k in (6, 7, 8):
            batch = [record() for _ in range(20)]
            bad = rng.randrange(20)
            if k == 6:
                batch[bad] = {**batch[bad], "interface": "v4/openim/send msg"}
                value, reason = msgspec.json.encode(batch), "out_of_range"
            elif k == 7:
                batch[bad] = {**batch[bad], "client_ip": "2001:db8::zz"}
                value, reason = msgspec.json.encode(batch), "invalid_ip"
            else:
                lines = [msgspec.json.encode(x) for x in batch]
                lines[bad] = lines[bad][:25]
                value, reason = b"\n".join(lines), "invalid_json"
            out.append(Message(logs, str(batch[0]["sdk_app_id"]).encode(), value,
                               [x["request_id"] for i, x in enumerate(batch) if i != bad], {bad: reason}))
        else:
            s = traffic.monitoring_sample(now_ms)
            out.append(Message(samples, b"9", msgspec.json.encode({**s, "failures": s["requests"] + 1}),
                               invalid={0: "inconsistent"}))
    rng.shuffle(out)
    return out, ips


class Streamer(threading.Thread):
    """Produces the workload at a steady pace over ``seconds`` (the worker dies and restarts meanwhile)."""

    def __init__(self, producer: RecordingProducer, messages: list[Message], seconds: float, first: int = 0) -> None:
        super().__init__(name="streamer", daemon=True)
        self.producer, self.messages, self.seconds, self.first = producer, messages, seconds, first
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start, sent = time.monotonic(), 0
            while sent < len(self.messages):
                due = min(len(self.messages), int((time.monotonic() - start) / self.seconds * len(self.messages)) + 1)
                for i in range(sent, due):
                    m = self.messages[i]
                    self.producer.send(m.topic, m.value, m.key, self.first + i)  # tag = index in the workload
                sent = due
                time.sleep(0.05)
            self.producer.flush(60)
        except BaseException as exc:  # reported by the test thread
            self.error = exc


@dataclass
class Life:
    """One run of the worker and how it ends."""

    failpoint: str = ""
    rebalance: bool = False  # a consumer joins the group (the worker dies in the revocation)
    random_kill: bool = False
    outcome: str = ""


def join_group_until(env: dict[str, str], worker: WorkerProcess, timeout: float) -> None:
    """Join the worker's group with a plain consumer (same subscription): the group rebalances and
    the worker revokes its partitions. Never commits; leaves as soon as the worker is gone."""
    intruder = Consumer({"bootstrap.servers": env["IMTEL_KAFKA_BOOTSTRAP"], "group.id": env["IMTEL_CONSUMER_GROUP"],
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         **Settings.from_env(env).group_protocol_config()})  # the worker's group protocol
    intruder.subscribe([env["IMTEL_TOPIC_REQUEST_LOGS"], env["IMTEL_TOPIC_MONITORING_SAMPLES"]])
    try:
        deadline = time.monotonic() + timeout
        while worker.alive() and time.monotonic() < deadline:
            intruder.consume(100, 0.2)  # what it fetches is dropped, never committed
    finally:
        intruder.close()


def run_life(life: Life, n: int, env: dict[str, str], workdir: Path, rng: random.Random) -> WorkerProcess:
    worker = WorkerProcess(f"life{n}", {**env, "IMTEL_FAILPOINTS": life.failpoint}, workdir).start()
    if life.rebalance or life.random_kill:
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 0 or not worker.alive(),
                 60, f"life {n}: a first write")
    if life.rebalance:
        join_group_until(env, worker, 60)
    if life.random_kill:
        delay = rng.uniform(0.1, 2.0)
        time.sleep(delay)
        assert worker.alive(), worker.log_text()[-3000:]
        worker.kill()
        life.outcome = f"kill -9 after {delay:.2f}s of writing"
        return worker
    if life.failpoint:
        assert worker.proc is not None
        try:
            code = worker.proc.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise AssertionError(f"life {n}: failpoint {life.failpoint} never fired\n{worker.log_text()[-3000:]}") \
                from None
        assert code == -9, f"life {n} ended with {code}, not SIGKILL\n{worker.log_text()[-3000:]}"
        life.outcome = f"SIGKILL at {life.failpoint}"
    return worker


def test_kill_minus_9_at_every_step_loses_and_doubles_nothing(pipeline_env: dict[str, str], own_broker: BrokerProcess,
                                                              tmp_path: Path) -> None:
    env = {**pipeline_env, "IMTEL_KAFKA_BOOTSTRAP": own_broker.bootstrap, "IMTEL_BATCH_MAX_RECORDS": "5000",
           "IMTEL_KAFKA_MAX_POLL_INTERVAL_MS": "6000"}
    s = Settings.from_env(env)
    ensure_topics(s)
    logs, samples = s.topic_request_logs, s.topic_monitoring_samples
    messages, ips = build_workload(logs, samples, int(time.time() * 1000))
    producer = RecordingProducer(own_broker.bootstrap, **{"linger.ms": 20})
    # the last quarter is held back for the last life, so its random kill always lands while records
    # flow, however slow the machine (on a loaded one the first part may be all written by then)
    cut = len(messages) * 3 // 4
    streamer = Streamer(producer, messages[:cut], STREAM_SECONDS)
    streamer.start()
    tail = Streamer(producer, messages[cut:], 10.0, first=cut)

    # each restart after a kill costs ~11 s on the bundled broker (the dead member's session timeout
    # plus the rebalance), so four kills, one per window, keep the test near a minute and a half
    lives = [Life("flush.after_raw=3"), Life("commit.before=3"), Life("revoke.before_flush=1", rebalance=True),
             Life(random_kill=True)]
    rng = random.Random(7)
    workers = []
    for n, life in enumerate(lives, 1):
        if life.random_kill:
            streamer.join(120)
            tail.start()
        workers.append(run_life(life, n, env, tmp_path, rng))
    streamer.join(120)
    tail.join(120)
    assert streamer.error is None and tail.error is None, (streamer.error, tail.error)
    # stopped while faust's own group may still be rejoining (the killed lives' members expire after
    # its 10 s session timeout): that stop is bounded (worker/faust_stop.py)
    final = WorkerProcess("final", env, tmp_path).start()
    workers.append(final)
    want = {(logs, p): o for p, o in producer.end_offsets(logs).items()}
    want |= {(samples, p): o for p, o in producer.end_offsets(samples).items()}
    try:
        wait_for(lambda: final.assigned() == 2 * PARTITIONS, 60, "the last worker's assignment", workers=[final])
        wait_for(lambda: committed(own_broker.bootstrap, env["IMTEL_CONSUMER_GROUP"],
                                   {logs: PARTITIONS, samples: PARTITIONS}) == want, 120, "every offset committed")
    finally:
        code = final.stop()
    logs_text = {w.name: w.log_text() for w in workers}
    assert code == 0, logs_text["final"][-3000:]
    recoveries = sum(t.count("were already stored") for t in logs_text.values())

    # -- what must be stored, and what must be dead-lettered --------------------------------------
    valid_ids = {rid for m in messages for rid in m.valid}
    expected_dead: Counter[tuple[str, int, int, int, str]] = Counter()
    expected_samples: set[tuple[int, int]] = set()
    for i, m in enumerate(messages):
        placed = producer.placed[i]
        for index, reason in m.invalid.items():
            expected_dead[(m.topic, placed.partition, placed.offset, index, reason)] += 1
        if m.sample:
            expected_samples.add((placed.partition, placed.offset))
    assert len(valid_ids) >= 100_000

    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    raw_samples = ("SELECT toStartOfMinute(window_start) m, sdk_app_id, interface, sum(requests), sum(failures), "
                   "toUInt64(sum(round(latency_avg_ms * requests))), max(latency_max_ms) FROM imtel.monitoring_samples "
                   "GROUP BY m, sdk_app_id, interface ORDER BY m, sdk_app_id, interface")
    agg_samples = ("SELECT minute m, sdk_app_id, interface, sum(requests), sum(failures), sum(latency_sum_ms), "
                   "max(latency_max_ms) FROM imtel.interface_stats_1m WHERE source = 'sample' "
                   "GROUP BY m, sdk_app_id, interface ORDER BY m, sdk_app_id, interface")
    results: Any = run_sql(store, [
        "SELECT request_id FROM imtel.request_logs",
        "SELECT count(), uniqExact(src_topic_id, src_partition, src_offset, src_index) FROM imtel.request_logs",
        RAW_AGGREGATES, STORED_AGGREGATES, raw_samples, agg_samples,
        "SELECT src_partition, src_offset FROM imtel.monitoring_samples",
        "SELECT src_topic, src_partition, src_offset, src_index, reason FROM imtel.dead_letters",
    ], migrate=False)
    (ids, origins, rl, al, rs, as_, sample_rows, ledger) = results

    stored = [r[0] for r in ids]
    lost, doubled = valid_ids - set(stored), len(stored) - len(set(stored))
    assert not lost and doubled == 0 and set(stored) == valid_ids, (
        f"{len(lost)} lost, {doubled} duplicated, {len(set(stored) - valid_ids)} unexpected; kills: "
        f"{[life.outcome for life in lives]}")
    assert origins == [[len(stored), len(stored)]]
    assert rl == al and len(rl) > 100, "interface_stats_1m (log) differs from the raw-row recomputation"
    assert rs == as_ and rs, "interface_stats_1m (sample) differs from the raw-sample recomputation"
    assert sorted((int(p), int(o)) for p, o in sample_rows) == sorted(expected_samples)

    ledger_rows = Counter((str(t), int(p), int(o), int(i), str(r)) for t, p, o, i, r in ledger)
    assert ledger_rows == expected_dead, (
        f"ledger: {sum((ledger_rows - expected_dead).values())} extra, {sum((expected_dead - ledger_rows).values())} "
        "missing")
    letters = read_topic(own_broker.bootstrap, env["IMTEL_TOPIC_DEAD_LETTERS"], sum(expected_dead.values()))
    on_topic = Counter((h["imtel-source-topic"].decode(), int(h["imtel-source-partition"]),
                        int(h["imtel-source-offset"]), int(h["imtel-source-index"]), h["imtel-reason"].decode())
                       for h in (m.headers for m in letters))
    assert set(on_topic) == set(expected_dead), "dead-letter topic: missing or unexpected letters"
    repeated = {k: n for k, n in on_topic.items() if n > 1}
    random_kills = sum(1 for life in lives if life.random_kill)
    assert not repeated or max(repeated.values()) <= 1 + random_kills, repeated

    hits = Scanner(ips).scan_all(logs_text)
    assert not hits, f"full client IPs in worker logs: {hits[:3]}"
    assert recoveries >= 2, "no restart found stored-but-uncommitted records: the crash windows were not hit"
    print(f"\ncrash recovery: {len(lives)} kills survived ({', '.join(life.outcome for life in lives)}); "
          f"{recoveries} partition recoveries; {len(valid_ids)} valid records, {len(expected_samples)} samples, "
          f"{sum(expected_dead.values())} invalid checked; lost 0, duplicated 0; dead-letter topic repeats "
          f"{len(repeated)}")

