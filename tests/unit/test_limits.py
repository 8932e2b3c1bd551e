"""pipeline/ingest/limits.py: counting records without decoding them, cutting dead letters, one letter for a
message of many invalid records, permanent Kafka refusals; and the processor's bounds on hostile
messages (by reference above a limit, a prefix per call)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pipeline.config.policy import load_policy
from pipeline.config.settings import Settings
from pipeline.ingest import limits
from pipeline.ingest.buffer import DeadLetter, Origin
from pipeline.monitoring.metrics import Metrics
from pipeline.worker.processor import Processor
from tests.support.kafka_io import FakeMessage
from tests.support.memory_store import MemoryStore, RecordingDeadLetters

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet='ab,[]{}"\\\n ', max_size=8),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(alphabet='k,"[{\\', max_size=4), inner, max_size=3),
                           max_leaves=15)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=30), st.integers(1, 64))
def test_array_elements_counts_top_level_elements_across_windows(items: list[Any], window: int) -> None:
    data = json.dumps(items).encode()
    old, limits.WINDOW = limits.WINDOW, window
    try:
        assert limits.array_elements(data) == len(items)
    finally:
        limits.WINDOW = old


def test_records_bound_is_exact_where_it_matters() -> None:
    tiny = b"[" + b"1," * 299_999 + b"1]"
    assert limits.records_bound(tiny, 100_000) == 300_000
    assert limits.records_bound(b"\n".join([b"{}"] * 150_000), 100_000) == 150_000
    assert limits.records_bound(b"[1,2]", 100_000) == 0  # too small to hold more than the cap
    assert (limits.oversize(tiny, 16 << 20, 100_000) or ("",))[0] == "too_many_records"
    assert (limits.oversize(b"x" * 70_000, 65_536, 100_000) or ("",))[0] == "too_large"
    assert limits.oversize(tiny, 16 << 20, 300_000) is None


@given(st.binary(max_size=3000), st.integers(256, 2000))
def test_cut_keeps_a_prefix_and_describes_the_original(payload: bytes, limit: int) -> None:
    value, headers = limits.cut(payload, limit)
    h = dict(headers)
    assert value == payload[:limit] and len(value) <= limit
    assert int(h["imtel-original-bytes"]) == len(payload)
    assert h["imtel-original-sha256"].decode() == hashlib.sha256(payload).hexdigest()
    assert h["imtel-truncated"] == (b"true" if len(payload) > limit else b"false")


def letter(offset: int, index: int, message: bytes = b"msg") -> DeadLetter:
    return DeadLetter(Origin("t", "t", 0, offset, index), "not_object", "Expected `object`", b"1", b"k", message)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300)), max_size=400), st.integers(1, 50))
def test_plan_letters_bounds_letters_per_message_and_keeps_every_record(pairs: list[tuple[int, int]],
                                                                        per_message: int) -> None:
    letters = [letter(o, i) for o, i in dict.fromkeys(pairs)]
    plan = limits.plan_letters(letters, per_message)
    assert sorted(id(x) for out in plan for x in out.records) == sorted(id(x) for x in letters)
    by_message: dict[int, list[limits.Outgoing]] = {}
    for out in plan:
        by_message.setdefault(out.letter.origin.offset, []).append(out)
    for outs in by_message.values():
        assert len(outs) <= per_message
        if len(outs[0].records) > 1:  # collapsed: one letter for the whole message
            assert len(outs) == 1 and outs[0].letter.origin.index == -1
            assert outs[0].letter.reason == "many_invalid" and outs[0].letter.raw == b"msg"


def test_permanent_refusals() -> None:
    assert limits.permanent(KafkaError.MSG_SIZE_TOO_LARGE) and limits.permanent(KafkaError.RECORD_LIST_TOO_LARGE)
    assert limits.permanent(KafkaError.INVALID_RECORD)
    for code in (KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                 KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.LEADER_NOT_AVAILABLE):
        assert not limits.permanent(code)


NOW_MS = 1_790_000_000_000
LOGS = "im-request-logs"


def log(i: int, **over: Any) -> dict[str, Any]:
    return {"sdk_app_id": 1400000001, "interface": "v4/openim/sendmsg", "request_time": NOW_MS - 1000,
            "client_ip": "203.0.113.9", "latency_ms": 5, "error_code": 0, "region": "r", "platform": "p",
            "request_id": f"r{i}", **over}


class Refusing(RecordingDeadLetters):
    """Refuses whole-message letters permanently, as a broker with a small max.message.bytes would."""

    def send(self, letters: Any) -> list[str | None]:  # type: ignore[override]
        self.sent.extend(letters)
        return ["MSG_SIZE_TOO_LARGE" if x.origin.index == -1 else None for x in letters]


def make(dlq: RecordingDeadLetters, **env: str) -> tuple[Processor, MemoryStore]:
    store = MemoryStore()
    s = Settings.from_env({f"IMTEL_{k.upper()}": v for k, v in env.items()})
    return Processor(s, store, dlq, Metrics(CollectorRegistry()), load_policy(),  # type: ignore[arg-type]
                     clock=lambda: NOW_MS / 1000), store


def test_hostile_messages_are_bounded_and_accounted_for() -> None:
    dlq = Refusing()
    p, store = make(dlq, message_max_records="1000", dead_letters_per_message="10")
    many_bad = b"[" + b",".join([b"1"] * 500) + b"]"  # 500 invalid: one letter, 500 ledger rows
    too_many = msgspec.json.encode([log(i) for i in range(1500)])  # valid, but over the records cap
    msgs = [FakeMessage(LOGS, 0, 0, b"k", msgspec.json.encode(log(-1))), FakeMessage(LOGS, 0, 1, b"k", many_bad),
            FakeMessage(LOGS, 0, 2, b"k", too_many), FakeMessage(LOGS, 0, 3, b"k", msgspec.json.encode(log(-2)))]
    assert p.process(msgs) == 4
    p.flush()
    assert sorted(r["request_id"] for r in store.rows("request_logs")) == ["r-1", "r-2"]
    ledger = store.rows("dead_letters")
    assert len(ledger) == 501
    assert {(r["src_offset"], r["src_index"], r["reason"]) for r in ledger if r["src_offset"] == 2} == {
        (2, -1, "too_many_records")}
    assert sum(1 for r in ledger if r["src_offset"] == 1) == 500
    sent = [(x.origin.offset, x.origin.index, x.reason) for x in dlq.sent]
    assert sent == [(1, -1, "many_invalid"), (2, -1, "too_many_records")]
    assert all(r["detail"].startswith("not on the dead-letter topic") for r in ledger)  # both refused


def test_process_takes_a_bounded_prefix() -> None:
    p, _ = make(RecordingDeadLetters(), poll_max_bytes="65536")
    big = msgspec.json.encode([log(i) for i in range(400)])  # ~80 KB: over the byte budget alone
    msgs = [FakeMessage(LOGS, 0, i, b"k", big) for i in range(3)]
    assert p.process(msgs) == 1
    assert p.process(msgs[1:]) == 1
    assert p.admission.buffer.next_offsets[(LOGS, 0)] == 2
