"""pipeline/ingest/admission.py with an in-memory store: the columnar hot path gives exactly what a per-record
reference gives (stored rows + dead letters = every record, once), and a ClickHouse "bad data" error
isolates the offending rows by splitting the insert, resumably; a buffer is written early only when
the stream pauses."""

from __future__ import annotations

from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pipeline.config.policy import load_policy
from pipeline.config.settings import Settings
from pipeline.ingest.decode import Decoder
from pipeline.ingest.records import RequestLog
from pipeline.monitoring.metrics import Metrics
from pipeline.sinks.clickhouse import InsertError
from pipeline.worker.consumer import PauseDetector
from pipeline.worker.processor import Processor
from tests.support.kafka_io import FakeMessage
from tests.support.memory_store import MemoryStore, RecordingDeadLetters

NOW_MS = 1_790_000_000_000
LOGS = "im-request-logs"


def Msg(partition: int, offset: int, value: bytes | None, key: bytes | None = b"k") -> FakeMessage:
    """A request-log message (the processor's view of a Kafka message)."""
    return FakeMessage(LOGS, partition, offset, key, value)


def processor(store: MemoryStore, native: bool = True) -> tuple[Processor, RecordingDeadLetters]:
    letters = RecordingDeadLetters()
    env = {"IMTEL_NATIVE_DECODER": "true" if native else "false"}
    p = Processor(Settings.from_env(env), store, letters, Metrics(CollectorRegistry()),  # type: ignore[arg-type]
                  load_policy(), clock=lambda: NOW_MS / 1000)
    return p, letters


def record(i: int, **over: Any) -> dict[str, Any]:
    return {"sdk_app_id": 1400000001 + i % 3, "interface": "v4/openim/sendmsg", "request_time": NOW_MS - 1000,
            "client_ip": f"203.0.113.{i % 250}", "latency_ms": i % 500, "error_code": 0, "region": "ap-seoul",
            "platform": "iOS", "request_id": f"r{i}", **over}


BAD = [{"interface": "v4/x\n"}, {"interface": "has space"}, {"client_ip": "999.1.1.1"}, {"client_ip": "::g"},
       {"request_time": NOW_MS + 3_600_000}, {"request_time": 1}, {"latency_ms": -1}, {"sdk_app_id": "1"},
       {"region": ""}, {"exception": "x" * 3000}]

messages_strategy = st.lists(st.tuples(
    st.sampled_from(["one", "array", "ndjson", "garbage", "empty"]),
    st.lists(st.tuples(st.booleans(), st.integers(0, len(BAD) - 1)), min_size=1, max_size=6)), max_size=25)


def build(spec: list[tuple[str, list[tuple[bool, int]]]]) -> list[FakeMessage]:
    out, n = [], 0
    for offset, (framing, recs) in enumerate(spec):
        objs = []
        for good, which in recs:
            objs.append(record(n) if good else record(n, **BAD[which]))
            n += 1
        if framing == "one":
            value: bytes | None = msgspec.json.encode(objs[0])
        elif framing == "array":
            value = msgspec.json.encode(objs)
        elif framing == "ndjson":
            value = b"\n".join(msgspec.json.encode(o) for o in objs)
        elif framing == "garbage":
            value = b'{"sdk_app_id": 1, "interface": '
        else:
            value = b""
        out.append(Msg(offset % 3, offset, value))
    return out


def reference(msgs: list[FakeMessage],
              p: Processor) -> tuple[set[tuple[int, int, int]], set[tuple[int, int, int, str]]]:
    """What must come out, computed per record with the strict decoder and the per-value rules."""
    decoder, stored, dead = Decoder(RequestLog), set(), set()
    for m in msgs:
        decoded = decoder.decode(m.value())
        for r in decoded.rejects:
            dead.add((m.partition(), m.offset(), r.index, r.reason))
        for index, rec in decoded.records:
            age_ok = NOW_MS - 7 * 86_400_000 <= rec.request_time <= NOW_MS + 300_000
            if not age_ok:
                dead.add((m.partition(), m.offset(), index,
                          "too_old" if rec.request_time < NOW_MS else "in_future"))
            elif p.minimise(rec.client_ip) is None:
                dead.add((m.partition(), m.offset(), index, "invalid_ip"))
            else:
                stored.add((m.partition(), m.offset(), index))
    return stored, dead


@pytest.mark.parametrize("native", [True, False], ids=["native", "msgspec"])
@settings(max_examples=60, deadline=None)
@given(messages_strategy)
def test_fast_path_equals_per_record_reference(native: bool, spec: list[tuple[str, list[tuple[bool, int]]]]) -> None:
    """With and without the native decoder (``fastlog``): a taken message whose row fails a per-batch
    rule goes back through msgspec whole, and its good rows are stored once."""
    msgs = build(spec)
    store = MemoryStore()
    p, letters = processor(store, native)
    assert (p.admission.native is not None) == native
    p.process(msgs)
    offsets = p.flush() if p.has_pending() else {}
    want_stored, want_dead = reference(msgs, p)
    rows = store.rows("request_logs")
    got_stored = {(r["src_partition"], r["src_offset"], r["src_index"]) for r in rows}
    assert len(rows) == len(got_stored) == len(want_stored)
    assert got_stored == want_stored
    assert {(d.origin.partition, d.origin.offset, d.origin.index, d.reason) for d in letters.sent} == want_dead
    assert len(letters.sent) == len(want_dead)
    assert all("." not in r["client_net"] or r["client_net"].endswith(".0/24") for r in rows)
    # each row carries its own record's coordinates (rows and coordinates are built apart, see _Chunk)
    ids = {(m.partition(), m.offset(), index): rec.request_id
           for m in msgs for index, rec in Decoder(RequestLog).decode(m.value()).records}
    assert all(ids[(r["src_partition"], r["src_offset"], r["src_index"])] == r["request_id"] for r in rows)
    for m in msgs:
        assert offsets[(LOGS, m.partition())] >= m.offset() + 1


def test_rejected_rows_are_isolated_and_dead_lettered() -> None:
    msgs = [Msg(0, i, msgspec.json.encode([record(i * 10 + j, exception="POISON" if (i * 10 + j) % 37 == 5 else None)
                                            for j in range(10)])) for i in range(30)]
    store = MemoryStore(refuse=lambda r: r["exception"] == "POISON")
    p, letters = processor(store)
    p.process(msgs)
    p.flush()
    rows = store.rows("request_logs")
    poisoned = {i for i in range(300) if i % 37 == 5}
    assert len(rows) == 300 - len(poisoned)
    assert {r["request_id"] for r in rows} == {f"r{i}" for i in range(300) if i not in poisoned}
    assert sorted(d.reason for d in letters.sent) == ["insert_rejected"] * len(poisoned)
    assert {msgspec.json.decode(d.raw)["request_id"] for d in letters.sent} == {f"r{i}" for i in poisoned}
    assert all(b"203.0.113." not in d.raw or b".0/24" in d.raw for d in letters.sent)  # stored form: minimised
    assert len(store.rows("dead_letters")) == len(poisoned)


def test_split_insert_resumes_after_a_transient_failure_without_duplicates() -> None:
    msgs = [Msg(0, i, msgspec.json.encode(record(i, exception="POISON" if i in (3, 70) else None)))
            for i in range(100)]
    store = MemoryStore(refuse=lambda r: r["exception"] == "POISON")
    p, letters = processor(store)
    p.process(msgs)
    real_insert = store.insert_arrow
    state = {"n": 0}

    def flaky(table: str, data: pa.Table, token: str | None = None) -> None:
        state["n"] += 1
        if state["n"] in (4, 9):  # mid-bisection
            raise InsertError("Code: 209. timeout", 209, permanent=False)
        real_insert(table, data, token)

    store.insert_arrow = flaky  # type: ignore[method-assign]
    for _ in range(5):
        try:
            p.flush()
            break
        except InsertError:
            continue
    rows = store.rows("request_logs")
    assert sorted(r["request_id"] for r in rows) == sorted(f"r{i}" for i in range(100) if i not in (3, 70))
    assert sorted(msgspec.json.decode(d.raw)["request_id"] for d in letters.sent) == ["r3", "r70"]


def test_systemic_refusal_is_retried_not_dead_lettered() -> None:
    msgs = [Msg(0, i, msgspec.json.encode(record(i))) for i in range(200)]
    store = MemoryStore(refuse=lambda r: True)
    p, letters = processor(store)
    p.process(msgs)
    with pytest.raises(InsertError) as err:
        p.flush()
    assert not err.value.permanent
    assert letters.sent == [] and store.rows("request_logs") == []
    store.refuse = None
    p.flush()
    assert len(store.rows("request_logs")) == 200



def test_lost_acknowledgements_do_not_double_rows() -> None:
    """The write is applied but its answer is lost: the retry re-sends the same block with the same
    deduplication token (dropped by the table; the aggregate follows the insert, see
    tests/integration/test_stats_views.py), and no minutes are rebuilt on the way."""
    msgs = [Msg(i % 2, i, msgspec.json.encode(record(i))) for i in range(50)]
    store = MemoryStore()
    p, _ = processor(store)
    p.process(msgs)
    store.lose_answers = 1  # the raw insert is stored, its answer lost
    with pytest.raises(InsertError):
        p.flush()
    p.flush()
    assert sorted(r["request_id"] for r in store.rows("request_logs")) == sorted(f"r{i}" for i in range(50))
    assert len(store.tables["request_logs"]) == 1 and store.rebuilt == []


@settings(max_examples=300, deadline=None)
@given(now=st.integers(10 * 86_400_000, 4_000_000_000_000), age=st.integers(0, 20 * 86_400_000),
       unit=st.sampled_from([86_400_000, 3_600_000]), days=st.integers(1, 14))
def test_event_time_rule_matches_the_ttl(now: int, age: int, unit: int, days: int) -> None:
    """A record is dead-lettered as too old exactly when its row would already be past the table's
    TTL (``trunc(t, unit) + retention <= now``): nothing is stored only to vanish at the next merge."""
    from pipeline.ingest.decode import time_reason

    t = now - age
    expired = (t // unit * unit) + days * 86_400_000 <= now
    assert (time_reason(t, now, days * 86_400_000, 300_000, unit) == "too_old") == expired


def test_an_idle_consumer_writes_a_sizeable_buffer_without_waiting_for_the_timer() -> None:
    """After a burst the polls come back empty: a buffer holding at least a quarter of a
    full batch is written at once, a smaller one (sparse traffic) still waits for the timer."""
    s = Settings.from_env({"IMTEL_BATCH_MAX_RECORDS": "40", "IMTEL_BATCH_MAX_SECONDS": "5"})
    now = [NOW_MS / 1000]
    p = Processor(s, MemoryStore(), RecordingDeadLetters(), Metrics(CollectorRegistry()),  # type: ignore[arg-type]
                  load_policy(), clock=lambda: now[0])
    assert not p.should_flush(idle=True)  # nothing buffered
    p.process([Msg(0, i, msgspec.json.encode(record(i))) for i in range(9)])
    assert not p.should_flush() and not p.should_flush(idle=True)  # 9 < 40 / 4
    p.process([Msg(0, 9, msgspec.json.encode(record(9)))])
    assert p.should_flush(idle=True) and not p.should_flush(idle=False)  # 10 = 40 / 4: only when idle
    now[0] += 5
    assert p.should_flush()  # the timer, idle or not
    p.flush()
    assert not p.should_flush(idle=True)


def test_a_pause_is_told_from_a_gap_between_messages() -> None:
    """Only polls that found nothing for ``after`` seconds in a row count as a paused stream."""
    now = [100.0]
    pause = PauseDetector(after=0.5, clock=lambda: now[0])
    assert not pause.update(True)
    assert not pause.update(False)  # the first empty poll: a gap, maybe
    now[0] += 0.25
    assert not pause.update(False)
    now[0] += 0.25
    assert pause.update(False)  # 0.5 s of empty polls: paused
    assert not pause.update(True)  # messages again: the clock starts over
    now[0] += 1
    assert not pause.update(False)


@pytest.mark.parametrize("native", [True, False], ids=["native", "msgspec"])
def test_exception_causes_are_scrubbed_on_both_decode_paths(native: bool) -> None:
    """Addresses and e-mails in a cause are replaced before buffering, whichever decoder read the record
    (``Buffer.add_logs`` is where both meet); a cause without any is stored as sent."""
    causes = ["connect to 192.0.2.33:443 refused for bob@example.org", "peer [2001:db8::7] reset",
              "UserSig expired", None]
    msgs = [Msg(0, i, msgspec.json.encode(record(i, error_code=0 if c is None else 70001, exception=c)))
            for i, c in enumerate(causes)]
    store = MemoryStore()
    p, _ = processor(store, native)
    p.process(msgs)
    p.flush()
    stored = {r["request_id"]: r["exception"] for r in store.rows("request_logs")}
    assert stored == {"r0": "connect to <ip>:443 refused for <email>", "r1": "peer [<ip>] reset",
                      "r2": "UserSig expired", "r3": ""}
