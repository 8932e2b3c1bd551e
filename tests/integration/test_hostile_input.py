"""Hostile input inside normal traffic, through a real worker, broker and engine (pipeline/ingest/limits.py).

A steady stream of valid request logs flows while these arrive on the same topic: an invalid message
of 5 MB, a valid JSON array of 5 MB, a JSON array of 50,000 invalid records, arrays and NDJSON above
the records cap (300,000 scalars, 1,000,000 lines), a message that zstd shrinks to a few KB but that
expands to 48 MB, and 100,000 levels of nesting. Checks: every valid record stored exactly once (the
stream's and the 5 MB array's), every hostile message in the ledger as documented (one row per
invalid record, or one row "by reference"), one bounded dead letter per hostile message (payload at
most ``IMTEL_DEAD_LETTER_MAX_BYTES``, headers with the original size, sha256 and truncation flag),
and ingestion of the stream never stopped. Peak RSS is measured by ``tools/hostile_rss.py``, not here.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.schema.topics import ensure_topics
from tests.support.kafka_io import RecordingProducer, alter_topic, read_topic
from tests.support.workers import Stream, WorkerProcess, wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration

PAYLOAD_MAX = Settings().dead_letter_max_bytes


def hostile_cases(now_ms: int) -> list[tuple[str, bytes, str | None]]:
    """(name, value, expected ledger: reason of the whole-message row, or None for the special cases)."""
    traffic = Traffic(apps=4, seed=77)
    valid = [traffic.request_log(now_ms) for _ in range(20_000)]
    one = msgspec.json.encode(traffic.request_log(now_ms))
    return [
        ("invalid 5 MB object", b'{"x":"' + b"a" * 5_000_000 + b'"}', "missing_field"),
        ("valid 5 MB array", msgspec.json.encode(valid), None),
        ("50,000 invalid records", msgspec.json.encode([{"latency_ms": i} for i in range(50_000)]), None),
        ("300,000 scalars", b"[" + b"1," * 299_999 + b"1]", "too_many_records"),
        ("NDJSON of 1,000,000 lines", b'{"a":1}\n' * 1_000_000, "too_many_records"),
        ("48 MB that compress to KBs", b"[" + b",".join([one] * (48_000_000 // (len(one) + 1))) + b"]", "too_large"),
        ("100,000 levels of nesting", b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    ]


def test_hostile_messages_cost_bounded_dead_letters_and_never_stop_ingestion(pipeline_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    s = Settings.from_env(pipeline_env)
    ensure_topics(s)
    logs = s.topic_request_logs
    worker = WorkerProcess("worker", pipeline_env, tmp_path).start()
    stream = Stream(s.kafka_bootstrap, logs, rate=400, total=6000, seed=13)
    now_ms = int(time.time() * 1000)
    cases = hostile_cases(now_ms)
    # compressed, as a producer of big batches would: the broker checks the compressed size against
    # the topic's max.message.bytes, the worker sees the expanded value
    producer = RecordingProducer(s.kafka_bootstrap, **{"compression.type": "zstd", "message.max.bytes": 100_000_000})
    try:
        stream.start()
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 200, 60,
                 "the normal traffic to be stored", workers=[worker])
        for i, (_, value, _) in enumerate(cases):
            producer.send(logs, value, b"1400000001", i)
            producer.flush()
            time.sleep(0.5)  # the cases arrive one by one, in the middle of the stream
        stream.join(60)
        assert stream.failed == 0 and len(stream.delivered) == stream.total
        valid_total = stream.total + 20_000
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= valid_total, 90,
                 "every valid record stored", workers=[worker])
        assert worker.metric("imtel_write_failing_since_timestamp_seconds") == 0
    finally:
        stream.stop()
        code = worker.stop(60)
    assert code == 0, worker.log_text()[-3000:]
    assert "Traceback" not in worker.log_text(), worker.log_text()[-3000:]

    store = Path(pipeline_env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    ids, ledger = run_sql(store, [
        "SELECT request_id, count() FROM imtel.request_logs GROUP BY request_id",
        "SELECT src_offset, src_index, reason, payload_bytes FROM imtel.dead_letters",
    ], migrate=False)
    stored = {str(r[0]): int(r[1]) for r in ids}
    assert all(n == 1 for n in stored.values()), "a record stored twice"
    assert set(stream.delivered) <= set(stored), f"{len(set(stream.delivered) - set(stored))} stream records lost"
    big_array = msgspec.json.decode(cases[1][1])
    assert {r["request_id"] for r in big_array} <= set(stored), "records of the valid 5 MB array lost"

    rows_at: dict[int, list[list[Any]]] = {}
    for row in ledger:
        rows_at.setdefault(int(row[0]), []).append(row)
    for i, (name, value, reason) in enumerate(cases):
        rows = rows_at.get(producer.placed[i].offset, [])
        if name == "valid 5 MB array":
            assert rows == [], name
        elif name == "50,000 invalid records":  # the ledger counts every record
            assert sorted(int(r[1]) for r in rows) == list(range(50_000)), name
            assert {r[2] for r in rows} == {"missing_field"}, name
        else:
            assert [(int(r[1]) in (-1, 0), r[2], int(r[3])) for r in rows] == [(True, reason, len(value))], name

    hostile_offsets = {producer.placed[i].offset: value for i, (_, value, _) in enumerate(cases)}
    letters = read_topic(s.kafka_bootstrap, s.topic_dead_letters, len(cases) - 1)
    per_message = Counter(int(m.headers["imtel-source-offset"]) for m in letters)
    for m in letters:
        offset = int(m.headers["imtel-source-offset"])
        original = hostile_offsets.get(offset)
        assert original is not None, "a dead letter for a record of the normal traffic"
        assert per_message[offset] == 1, "more than one dead letter for one message"
        assert len(m.value or b"") <= PAYLOAD_MAX
        assert int(m.headers["imtel-original-bytes"]) == len(original)
        assert m.headers["imtel-original-sha256"].decode() == hashlib.sha256(original).hexdigest()
        assert m.headers["imtel-truncated"] == (b"true" if len(original) > PAYLOAD_MAX else b"false")
        assert m.value == original[:PAYLOAD_MAX]
    assert len(letters) == len(cases) - 1  # every hostile message but the valid array: one letter each
    reasons = {m.headers["imtel-reason"].decode() for m in letters}
    assert {"many_invalid", "too_many_records", "too_large"} <= reasons


def test_dead_letters_the_broker_refuses_are_recorded_not_retried_forever(pipeline_env: dict[str, str],
                                                                           tmp_path: Path) -> None:
    """The dead-letter topic's own max.message.bytes is lowered under the letters' size (as an operator
    might, or a broker default): the real broker answers MSG_SIZE_TOO_LARGE, which no retry fixes. The
    letters land in the ledger with that said, are counted, and the stream keeps flowing."""
    env = {**pipeline_env, "IMTEL_DEAD_LETTER_MAX_BYTES": "16384"}
    s = Settings.from_env(env)
    ensure_topics(s)
    alter_topic(s.kafka_bootstrap, s.topic_dead_letters, max_message_bytes="2048")
    worker = WorkerProcess("worker", env, tmp_path).start()
    stream = Stream(s.kafka_bootstrap, s.topic_request_logs, rate=300, total=3000, seed=17)
    producer = RecordingProducer(s.kafka_bootstrap)
    try:
        stream.start()
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 200, 60,
                 "the normal traffic to be stored", workers=[worker])
        for i in range(5):  # invalid, 12 KB of random hex: ~6 KB even zstd-compressed, against a 2 KB limit
            producer.send(s.topic_request_logs, b'{"x":"' + os.urandom(6000).hex().encode() + b'"}', b"1400000001", i)
        producer.flush()
        stream.join(60)
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= stream.total, 60,
                 "every valid record stored, the refused letters notwithstanding", workers=[worker])
        wait_for(lambda: worker.metric("imtel_dead_letters_refused_total") >= 5, 30, "the refusals counted",
                 workers=[worker])
        assert worker.metric("imtel_write_failing_since_timestamp_seconds") == 0
    finally:
        stream.stop()
        code = worker.stop(60)
    assert code == 0, worker.log_text()[-3000:]
    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    ledger, stored = run_sql(store, ["SELECT src_offset, reason, detail FROM imtel.dead_letters ORDER BY src_offset",
                                     "SELECT count(), uniqExact(request_id) FROM imtel.request_logs"], migrate=False)
    assert [int(r[0]) for r in ledger] == sorted(p.offset for p in producer.placed.values())
    assert all(r[1] == "missing_field" and "not on the dead-letter topic" in r[2] for r in ledger), ledger
    assert "MSG_SIZE_TOO_LARGE" in " ".join(r[2] for r in ledger)
    assert stored == [[stream.total, stream.total]]
