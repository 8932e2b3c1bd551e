"""Poison input through a real worker: the hand-written nasties and a hypothesis-fuzzed corpus, each
message followed by a valid "canary" record in the same partition (same key).

The worker must never crash or stall: it stays up, every canary behind a poison message is stored,
every nasty meets its documented fate (dead letters by index with their reason, or stored verbatim:
SQL and control characters are data), every fuzzed message is accounted for (each record stored or
dead-lettered, never both, never twice), the dead-letter ledger equals the topic, and the event-time
rule holds (``too_old``/``in_future`` dead letters; records just inside the window stored).
Decoder-level fuzzing with many more examples is in ``tests/unit/test_poison_corpus.py``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.ingest.decode import REASONS
from pipeline.schema.topics import ensure_topics
from tests.support import poison
from tests.support.kafka_io import RecordingProducer, read_topic
from tests.support.workers import WorkerProcess, wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration

FUZZED = 200


def fuzzed_corpus(now_ms: int, n: int) -> list[bytes]:
    """``n`` messages drawn by hypothesis (derandomized: the same corpus on every run)."""
    out: list[bytes] = []

    @settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(poison.messages(now_ms))
    def collect(data: bytes) -> None:
        out.append(data)

    collect()
    return out


# Reasons found after decoding (event time, IP, consistency): the dead letter carries the decoded record
# re-encoded (same fields and values; unknown fields and formatting of the original are not kept).
AFTER_DECODE = {"too_old", "in_future", "invalid_ip", "inconsistent"}


def same_record(letter: Any, sent: bytes | None) -> bool:
    """The dead letter carries what was sent: the original bytes when the decoder refused it (a prefix
    and the sha256 of the whole when it was over IMTEL_DEAD_LETTER_MAX_BYTES), the
    same record (field by field) when a rule applied after decoding refused it."""
    if letter.value == (sent or b""):
        return True
    if letter.headers.get("imtel-truncated") == b"true":  # cut to IMTEL_DEAD_LETTER_MAX_BYTES: a prefix + its hash
        return bool(sent) and letter.value == sent[:len(letter.value)] and (
            letter.headers["imtel-original-sha256"].decode() == hashlib.sha256(sent).hexdigest())
    if letter.headers["imtel-reason"].decode() not in AFTER_DECODE or not sent:
        return False

    def fields(data: bytes) -> dict[str, Any]:
        return {k: v for k, v in msgspec.json.decode(data).items() if v is not None}

    return fields(letter.value) == fields(sent)


def test_poison_never_crashes_or_stalls_and_every_record_is_accounted_for(pipeline_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    s = Settings.from_env(pipeline_env)
    ensure_topics(s)
    logs, samples, dlq = s.topic_request_logs, s.topic_monitoring_samples, s.topic_dead_letters
    worker = WorkerProcess("worker", pipeline_env, tmp_path).start()
    now_ms = int(time.time() * 1000)
    traffic = Traffic(apps=6, seed=51)
    cases = poison.nasties(now_ms, traffic)
    cases += [poison.Case(f"fuzzed #{i}", data, None) for i, data in enumerate(fuzzed_corpus(now_ms, FUZZED))]
    producer = RecordingProducer(s.kafka_bootstrap)
    canaries: list[str] = []
    for i, case in enumerate(cases):
        producer.send(samples if case.samples else logs, case.value, case.key, ("case", i))
        canary = traffic.request_log(now_ms)
        canaries.append(canary["request_id"])
        producer.send(logs, msgspec.json.encode(canary), case.key if not case.samples else b"1400000001",
                      ("canary", i))
    producer.flush()
    try:
        wait_for(lambda: worker.metric("imtel_records_consumed_total", topic=logs) > 0, 60, "consumption to start")
        n_logs = sum(1 for c in cases if not c.samples) + len(cases)
        wait_for(lambda: worker.metric("imtel_messages_consumed_total", topic=logs) >= n_logs or not worker.alive(),
                 60, "every message consumed")
        assert worker.alive(), worker.log_text()[-3000:]
        wait_for(lambda: worker.metric("imtel_records_consumed_total", topic=logs)
                 <= worker.metric("imtel_rows_written_total", table="request_logs")
                 + worker.metric("imtel_records_invalid_total", topic=logs), 60, "every consumed record written")
        invalid_metric = worker.metric("imtel_records_invalid_total")
    finally:
        code = worker.stop(60)
    log_text = worker.log_text()
    assert code == 0, log_text[-3000:]
    assert "Traceback" not in log_text, log_text[-3000:]

    store = Path(pipeline_env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    results: Any = run_sql(store, [
        "SELECT src_partition, src_offset, src_index, request_id, region, platform, exception, latency_ms, "
        "interface, client_net FROM imtel.request_logs",
        "SELECT src_partition, src_offset, src_index FROM imtel.monitoring_samples",
        "SELECT src_topic, src_partition, src_offset, src_index, reason, detail FROM imtel.dead_letters",
        "SELECT name FROM system.tables WHERE database = 'imtel' ORDER BY name",
    ], migrate=False)
    stored_logs, stored_samples, ledger, tables = results
    assert {"request_logs", "monitoring_samples", "dead_letters", "interface_stats_1m"} <= {t[0] for t in tables}

    # every canary made it: nothing stalled behind a poison message
    stored_ids = {r[3] for r in stored_logs}
    assert set(canaries) <= stored_ids, f"{len(set(canaries) - stored_ids)} valid records behind poison not stored"

    letters = read_topic(s.kafka_bootstrap, dlq, len(ledger))
    on_topic: dict[tuple[str, int, int, int], Any] = {}
    for m in letters:
        h = m.headers
        assert h["imtel-reason"].decode() in REASONS
        assert h["imtel-detail"] and b"\n" not in h["imtel-detail"]
        key = (h["imtel-source-topic"].decode(), int(h["imtel-source-partition"]), int(h["imtel-source-offset"]),
               int(h["imtel-source-index"]))
        assert key not in on_topic, f"dead-lettered twice: {key}"
        on_topic[key] = m
    in_ledger = {(t, int(p), int(o), int(i)): (str(r), str(d)) for t, p, o, i, r, d in ledger}
    assert len(in_ledger) == len(ledger) and set(in_ledger) == set(on_topic), "ledger != dead-letter topic"
    assert invalid_metric == len(on_topic)

    rows_at: dict[tuple[str, int, int], list[list[Any]]] = {}
    for row in stored_logs:
        rows_at.setdefault((logs, int(row[0]), int(row[1])), []).append(row)
    for row in stored_samples:
        rows_at.setdefault((samples, int(row[0]), int(row[1])), []).append(row)
    dead_at: dict[tuple[str, int, int], dict[int, str]] = {}
    for (topic, p, o, i), m in on_topic.items():
        dead_at.setdefault((topic, p, o), {})[i] = m.headers["imtel-reason"].decode()

    problems = []
    for i, case in enumerate(cases):
        placed = producer.placed[("case", i)]
        where = (placed.topic, placed.partition, placed.offset)
        dead, rows = dead_at.get(where, {}), rows_at.get(where, [])
        kept = {int(r[2]) for r in rows}
        if kept & set(dead) or len(kept) != len(rows):
            problems.append(f"{case.name}: a record both stored and dead-lettered, or stored twice")
        if case.dead is None:
            if not dead and not rows:
                problems.append(f"{case.name}: vanished (neither stored nor dead-lettered)")
            if -1 in dead and (rows or len(dead) > 1):
                problems.append(f"{case.name}: whole-message dead letter next to other outcomes")
            continue
        if dead != case.dead:
            problems.append(f"{case.name}: dead letters {dead}, expected {case.dead}")
        if sorted(r[3] for r in rows) != sorted(r["request_id"] for r in case.stored):
            problems.append(f"{case.name}: {len(rows)} rows stored, expected {len(case.stored)}")
        for record in case.stored:
            row = next((r for r in rows if r[3] == record["request_id"]), None)
            if row is not None and row[4:9] != [record["region"], record["platform"], record.get("exception") or "",
                                                 record["latency_ms"], record["interface"]]:
                problems.append(f"{case.name}: stored {row[4:9]!r}, sent {record!r}"[:300])
        whole = [m for (t, p, o, idx), m in on_topic.items() if (t, p, o) == where and idx in (-1, 0)]
        if case.dead and set(case.dead) <= {-1, 0} and whole and not same_record(whole[0], case.value):
            problems.append(f"{case.name}: the dead letter does not carry the original record")
        if whole and whole[0].key != case.key:
            problems.append(f"{case.name}: the dead letter lost the record's key")
    assert not problems, "\n".join(problems)
    print(f"\npoison: {len(cases)} malformed/hostile messages ({len(cases) - FUZZED} hand-written, {FUZZED} fuzzed), "
          f"{len(canaries)} canaries stored, {len(on_topic)} dead letters, 0 crashes")
