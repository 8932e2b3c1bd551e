"""The pure parts of ``imtel deadletters`` and of replays on the worker: masking, selections, one
letter per record, the replay plan and headers, original coordinates of replayed records, and the
admission + writer path with an in-memory store (a replay stored once, a duplicate dropped, a record
failing again dead-lettered with its replay count)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pipeline.config.policy import load_policy
from pipeline.config.settings import Settings
from pipeline.ingest import replay
from pipeline.ingest.buffer import LOG_SCHEMA, app_of
from pipeline.monitoring.metrics import Metrics
from pipeline.ops import deadletters as dl
from pipeline.worker.processor import Processor
from tests.support.kafka_io import FakeMessage
from tests.support.memory_store import MemoryStore, RecordingDeadLetters

NOW_MS = 1_790_000_000_000
LOGS = "im-request-logs"

# -- masking ------------------------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
ipv6_long = st.ip_addresses(v=6).map(lambda a: a.exploded)
emails = st.emails()
filler = st.text(st.characters(codec="utf-8", exclude_characters="@"), max_size=20)


@given(st.lists(st.tuples(filler, st.one_of(ipv4, ipv6, ipv6_long, emails)), min_size=1, max_size=5), filler)
def test_no_address_survives_masking(parts: list[tuple[str, str]], tail: str) -> None:
    text = "".join(a + " " + b + " " for a, b in parts) + tail
    masked = dl.mask(text)
    for _, secret in parts:
        assert secret not in masked


@given(ipv4, emails)
def test_masking_in_json_payloads(ip: str, email: str) -> None:
    payload = msgspec.json.encode({"client_ip": ip, "exception": f"user {email} failed", "latency_ms": 12}).decode()
    masked = dl.mask(payload)
    assert ip not in masked and email not in masked
    assert '"latency_ms":12' in masked and '"client_ip":"<ipv4>"' in masked


def test_masking_keeps_ordinary_text() -> None:
    assert dl.mask('{"interface":"v4/openim/sendmsg","region":"ap-seoul","latency_ms":30}') == (
        '{"interface":"v4/openim/sendmsg","region":"ap-seoul","latency_ms":30}')
    assert dl.mask("::ffff:192.0.2.1 and 2001:db8::1") == "<ipv6> and <ipv6>"
    assert "10.1.2.3" not in dl.mask("ip=10.1.2.3.4")


# -- selections -----------------------------------------------------------------------------------------


def test_parse_source() -> None:
    assert dl.parse_source("logs") == dl.Source("logs")
    assert dl.parse_source("logs/2/100/-1") == dl.Source("logs", 2, 100, -1)
    for bad in ("", "logs/x", "logs/1/2/3/4", "a b/1", "logs/-1", "logs/1/2/-2"):
        with pytest.raises(dl.DeadLetterError):
            dl.parse_source(bad)


@given(st.integers(0, 65535), st.integers(0, 2**40), st.integers(-1, 2**20))
def test_coordinates_round_trip(partition: int, offset: int, index: int) -> None:
    text = replay.format_coordinates("AbC-12_x", partition, offset, index)
    assert replay.parse_coordinates(text) == ("AbC-12_x", partition, offset, index)
    assert dl.parse_source(text) == dl.Source("AbC-12_x", partition, offset, index)


def test_parse_reasons_and_bucket() -> None:
    assert dl.parse_reasons(["in_future,invalid_ip", " too_old "]) == {"in_future", "invalid_ip", "too_old"}
    assert dl.parse_reasons(None) == frozenset()
    with pytest.raises(dl.DeadLetterError, match="unknown reason"):
        dl.parse_reasons(["bogus"])
    assert dl.parse_bucket("5m") == 300
    with pytest.raises(dl.DeadLetterError):
        dl.parse_bucket("7m")
    req = dl.parse_list_request({"since_ms": "5", "reason": "empty", "bucket": "1d"})
    assert req == dl.ListRequest(5, frozenset({"empty"}), 86400)
    assert dl.parse_list_request(req.as_query()) == req


def letter(offset: int, index: int = 0, replays: int = 0, reason: str = "in_future", dlq_offset: int = 0,
           truncated: bool = False, payload: bytes = b"{}") -> dl.Letter:
    headers = {"imtel-reason": reason.encode(), "imtel-detail": b"rule", "imtel-source-topic": LOGS.encode(),
               "imtel-source-topic-id": b"TID", "imtel-source-partition": b"1",
               "imtel-source-offset": str(offset).encode(), "imtel-source-index": str(index).encode(),
               "imtel-truncated": b"true" if truncated else b"false"}
    if replays:
        headers[replay.REPLAY_COUNT] = str(replays).encode()
    return dl.Letter(0, dlq_offset, 1000 + dlq_offset, b"1400000001", payload, headers)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 3)), max_size=40))
def test_one_letter_per_record_the_latest(spec: list[tuple[int, int, int]]) -> None:
    letters = [letter(o, i, n, dlq_offset=k) for k, (o, i, n) in enumerate(spec)]
    got = dl.latest(letters)
    assert set(got) == {("TID", 1, o, i) for o, i, _ in spec}
    for (_, _, o, i), chosen in got.items():
        same = [x for x in letters if (x.src_offset, x.src_index) == (o, i)]
        assert chosen.replay_count == max(x.replay_count for x in same)
        assert chosen.dlq_offset == max(x.dlq_offset for x in same if x.replay_count == chosen.replay_count)


def test_replay_plan_refuses_with_reasons() -> None:
    letters = [letter(1), letter(1, dlq_offset=5),  # a duplicate on the topic: once
               letter(2, replays=3), letter(3, truncated=True), letter(4, reason="insert_rejected"), letter(5, 1, 2)]
    plan = dl.plan_replay(letters, max_replays=3)
    assert [x.coordinates for x in plan.send] == [("TID", 1, 1, 0), ("TID", 1, 5, 1)]
    assert sorted(len(v) for v in plan.refused.values()) == [1, 1, 1]
    assert any("replayed 3 times already" in why for why in plan.refused)
    assert dict(dl.replay_headers(plan.send[1])) == {"imtel-replay-of": b"TID/1/5/1", "imtel-replay-count": b"3"}
    assert dl.target_partition(plan.send[0], 3) == 1 and dl.target_partition(plan.send[0], 1) == 0


def test_selection_and_describe() -> None:
    x = letter(7, 2, reason="invalid_ip", payload=b'{"client_ip":"203.0.113.9","exception":"bob@example.com"}')
    assert dl.Selection(frozenset({"invalid_ip"}), source=dl.Source("TID", 1, 7))(x)
    assert not dl.Selection(frozenset({"too_old"}))(x)
    assert not dl.Selection(source=dl.Source(LOGS, 2))(x)
    d = x.describe()
    assert "203.0.113.9" not in d["payload"] and "bob@" not in d["payload"] and d["masked"]
    assert x.describe(raw=True)["payload"] == x.payload.decode()
    assert d["app"] == 1400000001 and d["coordinates"] == "TID/1/7/2"
    cut = letter(8, truncated=True).describe()
    assert "TRUNCATED" in dl.render_letter(cut)


def test_totals_by_reason() -> None:
    result = {"columns": dl.LIST_COLUMNS, "rows": [["t", LOGS, "a", 0, 2, 0], ["t2", LOGS, "a", 1, 3, 1],
                                                   ["t", LOGS, "b", 0, 1, 0]]}
    assert dl.totals_by_reason(result) == {"a": 5, "b": 1}


# -- the worker side --------------------------------------------------------------------------------


def test_replay_headers_parse() -> None:
    r = replay.of([("imtel-replay-of", b"TID/3/40/-1"), ("imtel-replay-count", b"2")])
    assert r == replay.Replay("TID", 3, 40, -1, 2)
    assert [r.index_of(j) for j in (-1, 0, 4)] == [-1, 0, 4]
    one = replay.Replay("TID", 3, 40, 5, 1)
    assert [one.index_of(j) for j in (-1, 0)] == [5, 5]
    assert replay.of(None) is None and replay.of([("other", b"x")]) is None
    assert replay.of([("imtel-replay-of", b"garbage")]) is None


@settings(deadline=None)  # the first call imports pyarrow's compute kernels
@given(st.lists(st.tuples(st.sampled_from(["A", "B"]), st.integers(0, 2), st.integers(0, 3)), max_size=30),
       st.sets(st.tuples(st.just("A"), st.just(0), st.integers(0, 2), st.integers(0, 3))),
       st.sets(st.tuples(st.just("A"), st.just(0), st.integers(0, 2), st.integers(0, 3))))
def test_drop_mask(rows: list[tuple[str, int, int]], replayed: set[Any], stored: set[Any]) -> None:
    table = pa.table({"src_topic_id": [r[0] for r in rows], "src_partition": pa.array([0] * len(rows), pa.uint16()),
                      "src_offset": pa.array([r[1] for r in rows], pa.uint64()),
                      "src_index": pa.array([r[2] for r in rows], pa.uint32())})
    drop = replay.drop_mask(table, replayed, stored)
    seen: set[Any] = set()
    for row, dropped in zip(rows, drop.tolist(), strict=True):
        key = (row[0], 0, row[1], row[2])
        assert dropped == (key in replayed and (key in stored or key in seen))
        seen.add(key)


def test_app_of_keys() -> None:
    assert app_of(b"1400000001") == 1400000001
    assert app_of(None) == 0 and app_of(b"x1") == 0 and app_of(b"99999999999") == 0


@dataclass
class HeaderMessage(FakeMessage):
    _headers: list[tuple[str, bytes]] | None = None

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


def record(i: int, **over: Any) -> dict[str, Any]:
    return {"sdk_app_id": 1400000001, "interface": "v4/openim/sendmsg", "request_time": NOW_MS - 1000,
            "client_ip": f"203.0.113.{i}", "latency_ms": 10, "error_code": 0, "region": "ap-seoul",
            "platform": "iOS", "request_id": f"r{i}", **over}


def replayed(offset: int, value: dict[str, Any], of: str, count: int = 1) -> HeaderMessage:
    return HeaderMessage(LOGS, 0, offset, b"1400000001", msgspec.json.encode(value),
                         [(replay.REPLAY_OF, of.encode()), (replay.REPLAY_COUNT, str(count).encode())])


@pytest.mark.parametrize("native", [True, False])
def test_a_replayed_record_is_stored_once_under_its_original_coordinates(native: bool) -> None:
    store, letters = MemoryStore(), RecordingDeadLetters()
    metrics = Metrics(CollectorRegistry())
    p = Processor(Settings.from_env({"IMTEL_NATIVE_DECODER": str(native).lower()}), store, letters,  # type: ignore[arg-type]
                  metrics, load_policy(), clock=lambda: NOW_MS / 1000)
    p.set_topic_id(LOGS, "TID")
    ordinary = HeaderMessage(LOGS, 0, 100, b"1400000001", msgspec.json.encode(record(1)), None)
    # the same record replayed twice in one buffer, a record of a whole-message letter, an invalid one
    p.process([ordinary, replayed(101, record(2), "OLD/3/7/4"), replayed(102, record(2), "OLD/3/7/4"),
               replayed(103, [record(3), record(4)], "OLD/3/9/-1"),  # type: ignore[arg-type]
               replayed(104, record(5, client_ip="nope"), "OLD/3/8/0", count=2)])
    assert p.flush() == {(LOGS, 0): 105}
    rows = {(r["request_id"], r["src_topic_id"], r["src_partition"], r["src_offset"], r["src_index"])
            for r in store.rows("request_logs")}
    assert rows == {("r1", "TID", 0, 100, 0), ("r2", "OLD", 3, 7, 4), ("r3", "OLD", 3, 9, 0), ("r4", "OLD", 3, 9, 1)}
    assert len(store.rows("request_logs")) == 4
    [dead] = letters.sent
    assert (dead.origin.topic_id, dead.origin.partition, dead.origin.offset, dead.origin.index) == ("OLD", 3, 8, 0)
    assert dead.reason == "invalid_ip" and dead.replay == 2
    [ledger] = store.rows("dead_letters")
    assert ledger["replay_count"] == 2 and ledger["sdk_app_id"] == 1400000001
    # replayed again (a second `replay`, or read again after a crash before the commit): nothing more
    p.process([replayed(105, record(2), "OLD/3/7/4"), replayed(106, [record(3), record(4)], "OLD/3/9/-1"),  # type: ignore[arg-type]
               replayed(107, record(5, client_ip="nope"), "OLD/3/8/0", count=2)])
    p.flush()
    assert len(store.rows("request_logs")) == 4
    assert len(letters.sent) == 1 and len(store.rows("dead_letters")) == 1

    def outcome(name: str) -> float:
        return metrics.registry.get_sample_value("imtel_replayed_records_total",
                                                 {"topic": LOGS, "outcome": name}) or 0.0

    assert (outcome("stored"), outcome("duplicate"), outcome("dead")) == (3.0, 4.0, 1.0)
    assert set(LOG_SCHEMA.names) >= {"src_topic_id", "src_index"}
    assert ipaddress.ip_address("203.0.113.1")  # the fixture's addresses are documentation ones
