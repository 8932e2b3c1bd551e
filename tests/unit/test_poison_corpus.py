"""Poison input at decoder and processor level: fuzzed (hypothesis) and hand-written nasties.

What must hold for *any* message value: decoding never raises (a raise stops the worker, and the same
message stops it again after the restart: a stalled partition); every record of the message is
either a record or a dead letter with a reason from the closed set, exactly once, by index; the
reason's detail never quotes a value (values may be personal data). The hand-written corpus also
pins each nasty to its documented reason, through the real ``Processor`` (fake store and dead-letter
sink: no Kafka, no ClickHouse), including the event-time rule and IP validation.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config.policy import load_policy
from pipeline.config.settings import Settings
from pipeline.ingest.decode import REASONS, WHOLE_MESSAGE, Decoder
from pipeline.ingest.records import MonitoringSample, RequestLog
from pipeline.monitoring.metrics import Metrics
from pipeline.worker.processor import Processor
from tests.support import poison
from tests.support.kafka_io import FakeMessage
from tests.support.memory_store import MemoryStore, RecordingDeadLetters

NOW_MS = int(time.time() * 1000)
DECODER_REASONS = {"empty", "invalid_json", "not_object", "missing_field", "wrong_type", "out_of_range"}
LOGS = Decoder(RequestLog)
SAMPLES = Decoder(MonitoringSample)
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def slots(data: bytes | None) -> int | None:
    """How many records a message holds by its framing, judged by a plain JSON parser (not the
    pipeline's): elements of a top-level array, non-blank NDJSON lines, else one. None when that
    cannot be told (an array that is not valid JSON)."""
    if not data or not data.strip():
        return None
    try:
        parsed = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        lines = [line for line in data.split(b"\n") if line.strip()]
        if data.lstrip()[:1] == b"[":
            return None
        return len(lines) if len(lines) > 1 and any(line.lstrip()[:1] == b"{" for line in lines) else 1
    return len(parsed) if isinstance(parsed, list) else 1


def check_accounting(data: bytes | None, decoder: Decoder[Any]) -> None:
    """The invariants of one decode: never raises, every record exactly once, reasons closed."""
    decoded = decoder.decode(data)
    kept = [i for i, _ in decoded.records]
    dead = [r.index for r in decoded.rejects]
    assert all(r.reason in DECODER_REASONS for r in decoded.rejects), decoded.rejects
    assert len(set(kept + dead)) == len(kept) + len(dead), f"an index twice: kept {kept}, dead {dead}"
    assert kept or dead, "a message vanished: neither a record nor a dead letter"
    if WHOLE_MESSAGE in dead:
        assert kept == [] and dead == [WHOLE_MESSAGE]
        return
    n = slots(data)
    if n is not None:
        assert sorted(kept + dead) == list(range(n)), f"{n} records in the message, got kept {kept} dead {dead}"
    for reject in decoded.rejects:
        assert reject.raw, "a dead letter without the original bytes"
        assert len(reject.detail) <= 300 and "\n" not in reject.detail


@FUZZ
@given(poison.messages(NOW_MS))
def test_any_message_is_decoded_or_dead_lettered_never_raises(data: bytes) -> None:
    check_accounting(data, LOGS)


@FUZZ
@given(st.binary(max_size=200) | poison.json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_on_the_samples_topic(data: bytes) -> None:
    check_accounting(data, SAMPLES)


@FUZZ
@given(st.one_of(poison.wrong_typed(NOW_MS), poison.mutated(NOW_MS), poison.framed(NOW_MS)))
def test_a_reason_never_quotes_a_value(data: bytes) -> None:
    """Details name the field and the rule. A sentinel value that survived the mutation intact
    must not reappear in any detail (it would end up in the ledger, headers and logs)."""
    decoded = LOGS.decode(data)
    for reject in decoded.rejects:
        for value in poison.SENTINELS.values():
            assert value not in reject.detail, (value, reject.detail)


@FUZZ
@given(st.lists(poison.planted_log(NOW_MS), min_size=1, max_size=4), st.sampled_from(("object", "array", "ndjson")))
def test_valid_records_round_trip_in_every_framing(records: list[dict[str, Any]], framing: str) -> None:
    if framing == "object":
        records = records[:1]
        data = poison.enc(records[0])
    elif framing == "array":
        data = poison.enc(records)
    else:
        data = b"\n".join(poison.enc(r) for r in records)
    decoded = LOGS.decode(data)
    assert decoded.rejects == []
    assert [msgspec.structs.asdict(r) for _, r in decoded.records] == [
        {**r, "exception": r.get("exception")} for r in records]


def test_invalid_utf8_inside_a_string_is_a_dead_letter_not_an_exception() -> None:
    """msgspec raises ``UnicodeDecodeError`` (not ``DecodeError``) for invalid UTF-8 *inside* a
    string; escaping the decoder it stops the worker on every restart (a poison pill)."""
    for data in (b'{"region": "ap-\xff"}', b'[{"region": "\xc3\x28"}]', b'{"a": 1}\n{"region": "\xff"}'):
        check_accounting(data, LOGS)


# -- the hand-written corpus through the real processor ---------------------------------------------
def run_processor(cases: list[poison.Case]) -> tuple[Settings, MemoryStore, RecordingDeadLetters]:
    s = Settings.from_env({})
    store, dlq = MemoryStore(), RecordingDeadLetters()
    processor = Processor(s, store, dlq, Metrics(), load_policy())  # type: ignore[arg-type]
    messages = [FakeMessage(s.topic_monitoring_samples if c.samples else s.topic_request_logs, 0, offset, c.key,
                            c.value) for offset, c in enumerate(cases)]
    for start in range(0, len(messages), 16):  # several consumed batches, like the source does
        processor.process(messages[start:start + 16])
    processor.flush()
    return s, store, dlq


def test_hand_written_nasties_meet_their_documented_fate() -> None:
    """Every nasty: the dead letters it must give (index -> reason), the rows it must store (exactly
    as sent, SQL and control characters included), nothing else; fuzz-like cases only accounted."""
    cases = poison.nasties(NOW_MS, poison.Traffic(apps=6, seed=5))
    _, store, dlq = run_processor(cases)
    dead: dict[int, dict[int, str]] = {}
    for letter in dlq.sent:
        assert letter.reason in REASONS
        dead.setdefault(letter.origin.offset, {})
        assert letter.origin.index not in dead[letter.origin.offset], f"dead-lettered twice: {letter.origin}"
        dead[letter.origin.offset][letter.origin.index] = letter.reason
    stored: dict[int, list[dict[str, Any]]] = {}
    for row in store.rows("request_logs") + store.rows("monitoring_samples"):
        stored.setdefault(row["src_offset"], []).append(row)
    problems = []
    for offset, case in enumerate(cases):
        got_dead, got_rows = dead.get(offset, {}), stored.get(offset, [])
        if case.dead is None:
            if not got_dead and not got_rows:
                problems.append(f"{case.name}: vanished")
            continue
        if got_dead != case.dead:
            problems.append(f"{case.name}: dead letters {got_dead}, expected {case.dead}")
        want = sorted(r["request_id"] for r in case.stored)
        if sorted(r["request_id"] for r in got_rows if "request_id" in r) != want:
            problems.append(f"{case.name}: stored {len(got_rows)} rows, expected {len(want)}")
        for record in case.stored:
            match = [r for r in got_rows if r.get("request_id") == record["request_id"]]
            for name in ("region", "platform", "exception", "latency_ms", "interface"):
                if match and match[0][name] != (record.get(name) or ""):
                    problems.append(f"{case.name}: {name} stored as {match[0][name]!r}, sent {record.get(name)!r}")
    assert not problems, "\n".join(problems)
    letters = {(x.origin.offset, x.origin.index): x for x in dlq.sent}
    for (offset, _index), letter in letters.items():
        assert letter.key == cases[offset].key, "a dead letter keeps the record's Kafka key (null included)"
        for value in poison.SENTINELS.values():
            assert value not in letter.detail


@pytest.mark.parametrize("ip", poison.NOT_IPS)
def test_an_ip_that_is_not_an_ip_is_invalid_ip_never_an_exception(ip: str) -> None:
    from pipeline.ingest.privacy import minimisation

    for mode in ("prefix", "hash", "drop"):
        assert minimisation(mode, "k" * 16)(ip) is None, (mode, ip)
