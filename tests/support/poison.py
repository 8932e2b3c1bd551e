"""Poison input for the decoder and the worker: hand-written nasties with their expected fate, and
hypothesis strategies for fuzzed messages (arbitrary bytes, mutated valid JSON, wrong types).

Shared by the fast decoder-level fuzzing (``tests/unit/test_poison_corpus.py``) and the integration
run that pushes a few hundred of these through a real worker (``tests/integration/test_poison.py``).
Expectations follow the documented rules (docs/architecture.md "Invalid records", ``pipeline/ingest/decode.py``): a
message that is not JSON at all is one dead letter with index -1 (unparsable array) or 0 (anything
else); an array or NDJSON message yields one outcome per element, by index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import strategies as st

from pipeline.dev.generate import Traffic

DAY_MS = 86_400_000
WHOLE = -1
# Values planted in string fields: a detail (the reason's free text) must never contain one of them.
SENTINELS = {"client_ip": "203.0.113.77", "region": "sentinel-reg", "platform": "sentinel-plat",
             "request_id": "rid-sentinel-0042", "exception": "cause-sentinel-9"}
# Fields of a request log with a value of each JSON type that is wrong for it.
LOG_FIELDS = ("sdk_app_id", "interface", "request_time", "client_ip", "latency_ms", "error_code", "region",
              "platform", "request_id", "exception")
# SQL and control characters that are *valid* in free-text fields: stored verbatim, never executed.
SQL_REGION = "x'); DROP TABLE request_logs;--"
SQL_EXCEPTION = "' OR 1=1; DROP DATABASE imtel; -- \"; DELETE FROM imtel.request_logs WHERE 1; /*"
CONTROL_EXCEPTION = "line1\nline2\r\n\t\x00\x07\x1b[31mred\x1b[0m \u2028 \ufeff end"
NOT_IPS = ["999.1.2.3", "203.0.113.7 ", " 203.0.113.7", "203.0.113", "203.0.113.7.9", "::ffff:999.1.1.1",
           "fe80::1%eth0", "", "localhost", "203.0.113.7/24", "0x7f000001", "2001:db8::g", "1.2.3.-4",
           "\u0663.\u0663.\u0663.\u0663"]  # Arabic-Indic digits: str.isdigit() is true, not an address


@dataclass
class Case:
    """One message of the corpus and what must become of it.

    ``dead`` maps the index of each record that must be dead-lettered to its reason (``None`` when the
    fate of the message is not known in advance: fuzzed input, only accounted for). ``stored`` lists
    the request logs of the message that must be stored, exactly as they must read back."""

    name: str
    value: bytes | None
    dead: dict[int, str] | None
    stored: list[dict[str, Any]] = field(default_factory=list)
    key: bytes | None = b"1400000001"
    samples: bool = False  # the monitoring-samples topic instead of request logs


def enc(value: Any) -> bytes:
    return msgspec.json.encode(value)


def nasties(now_ms: int, traffic: Traffic) -> list[Case]:
    """The hand-written corpus: each case names the nasty and its documented outcome."""
    def log(**changes: Any) -> dict[str, Any]:
        record = traffic.request_log(now_ms)
        record.update(changes)
        return {k: v for k, v in record.items() if v is not _DROP}

    def sample(**changes: Any) -> dict[str, Any]:
        return {**traffic.monitoring_sample(now_ms), **changes}

    good = log()
    text = enc(good).decode()
    cases = [
        Case("empty message", b"", {WHOLE: "empty"}),
        Case("whitespace only", b" \n\t\r ", {WHOLE: "empty"}),
        Case("tombstone (null value)", None, {WHOLE: "empty"}),
        Case("empty array", b"[]", {WHOLE: "empty"}),
        Case("truncated object", enc(log())[:-9], {0: "invalid_json"}),
        Case("truncated array", b"[" + enc(log()) + b", {\"sdk_app_id\": 14", {WHOLE: "invalid_json"}),
        Case("trailing garbage", enc(log()) + b" }{", {0: "invalid_json"}),
        Case("two objects glued", enc(log()) + enc(log()), {0: "invalid_json"}),
        Case("byte-order mark", b"\xef\xbb\xbf" + enc(log()), {0: "invalid_json"}),
        Case("invalid UTF-8 alone", b"\xff\xfe\xfd", {0: "invalid_json"}),
        Case("invalid UTF-8 in a string", text.replace(good["region"], "ap-\xff\xfe").encode("latin-1"),
             {0: "invalid_json"}),
        Case("invalid UTF-8 in an array element", b"[" + enc(log()) + b","
             + text.replace(good["platform"], "\xc3\x28").encode("latin-1") + b"]", None),
        Case("lone surrogate escape", text.replace(good["region"], "ap-\\ud800").encode(), {0: "invalid_json"}),
        Case("JSON null", b"null", {0: "not_object"}),
        Case("JSON string", b'"203.0.113.9"', {0: "not_object"}),
        Case("JSON number", b"1400000001", {0: "not_object"}),
        Case("array of scalars", b'[1, "two", null, true]',
             {0: "not_object", 1: "not_object", 2: "not_object", 3: "not_object"}),
        Case("NaN", text.replace(f'"latency_ms":{good["latency_ms"]}', '"latency_ms":NaN').encode(),
             {0: "invalid_json"}),
        Case("Infinity", text.replace(f'"latency_ms":{good["latency_ms"]}', '"latency_ms":Infinity').encode(),
             {0: "invalid_json"}),
        Case("-Infinity in a sample", enc(sample())[:-1] + b',"latency_avg_ms":-Infinity}', {0: "invalid_json"},
             samples=True),
        Case("huge integer", enc(log(sdk_app_id=10**30)), {0: "out_of_range"}),
        Case("huge float for an int", text.replace(f'"latency_ms":{good["latency_ms"]}', '"latency_ms":1e400')
             .encode(), {0: "out_of_range"}),
        Case("huge float in a sample", enc(sample(latency_avg_ms=1e308)), {0: "out_of_range"}, samples=True),
        Case("app id zero", enc(log(sdk_app_id=0)), {0: "out_of_range"}),
        Case("app id as string", enc(log(sdk_app_id="1400000001")), {0: "wrong_type"}),
        Case("latency as string", enc(log(latency_ms="slow")), {0: "wrong_type"}),
        Case("latency as bool", enc(log(latency_ms=True)), {0: "wrong_type"}),
        Case("error code as float", enc(log(error_code=1.5)), {0: "wrong_type"}),
        Case("integer written 1.0", enc(log(error_code=1.0)), {0: "wrong_type"}),
        Case("time as ISO text", enc(log(request_time="2026-11-22T10:00:00Z")), {0: "wrong_type"}),
        Case("region as number", enc(log(region=7)), {0: "wrong_type"}),
        Case("exception as object", enc(log(exception={"cause": "x"})), {0: "wrong_type"}),
        Case("missing request_id", enc(log(request_id=_DROP)), {0: "missing_field"}),
        Case("empty object", b"{}", {0: "missing_field"}),
        Case("deeply nested array (10k)", b"[" * 10_000 + b"]" * 10_000, {WHOLE: "invalid_json"}),
        Case("deeply nested object (10k)", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, None),
        Case("deeply nested field value (10k)", ('{"sdk_app_id":' + '{"a":' * 10_000 + "1" + "}" * 10_001).encode(),
             None),
        Case("deeply nested unknown field (10k)", text[:-1].encode() + b',"x":' + b"[" * 10_000 + b"]" * 10_000
             + b"}", None),
        Case("1 MB exception", enc(log(exception="x" * 1_000_000)), {0: "out_of_range"}),
        Case("1 MB region", enc(log(region="r" * 1_000_000)), {0: "out_of_range"}),
        Case("1 MB garbage", b"\x00\x01" * 500_000, {0: "invalid_json"}),
        Case("region of 33 characters", enc(log(region="r" * 33)), {0: "out_of_range"}),
        Case("client_ip of 65 characters", enc(log(client_ip="1" * 65)), {0: "out_of_range"}),
        Case("SQL in the interface", enc(log(interface="v4/x'; DROP TABLE imtel.request_logs;--")),
             {0: "out_of_range"}),
        Case("newline after the interface", enc(log(interface="v4/openim/sendmsg\n")), {0: "out_of_range"}),
        Case("time before 1970", enc(log(request_time=-5)), {0: "out_of_range"}),
        Case("time past year 9999", enc(log(request_time=253_402_300_800_000)), {0: "out_of_range"}),
        Case("time 0 (1970)", enc(log(request_time=0)), {0: "too_old"}),
        Case("time 8 days ago", enc(log(request_time=now_ms - 8 * DAY_MS)), {0: "too_old"}),
        Case("time in year 9999", enc(log(request_time=253_402_300_799_999)), {0: "in_future"}),
        Case("time one hour ahead", enc(log(request_time=now_ms + 3_600_000)), {0: "in_future"}),
        Case("sample 3 days old", enc(sample(window_start=now_ms - 3 * DAY_MS)), {0: "too_old"}, samples=True),
        Case("sample one hour ahead", enc(sample(window_start=now_ms + 3_600_000)), {0: "in_future"}, samples=True),
        Case("sample failures > requests", enc(sample(requests=10, failures=11)), {0: "inconsistent"}, samples=True),
        Case("sample window 0 s", enc(sample(window_seconds=0)), {0: "out_of_range"}, samples=True),
        Case("duplicate key, first value wrong", ('{"sdk_app_id":"x",' + text[1:]).encode(), {0: "wrong_type"}),
        Case("duplicate key, last value wrong", (text[:-1] + ',"latency_ms":"x"}').encode(), {0: "wrong_type"}),
        Case("invalid record with a null key", enc(log(latency_ms=-1)), {0: "out_of_range"}, key=None),
        Case("array: valid, missing field, valid", b"", {1: "missing_field"}),  # value set below
        Case("NDJSON: valid, truncated, valid", b"", {1: "invalid_json"}),  # value set below
    ]
    cases += [Case(f"not an IP: {ip!r}", enc(log(client_ip=ip)), {0: "invalid_ip"}) for ip in NOT_IPS]
    # Records that look hostile but are valid: stored verbatim (SQL is data, never executed).
    kept = [
        ("SQL in region and exception", log(region=SQL_REGION, exception=SQL_EXCEPTION)),
        ("SQL in request_id", log(request_id="r'); DROP TABLE imtel.request_logs; --")),
        ("control characters in exception", log(exception=CONTROL_EXCEPTION)),
        ("control characters in platform", log(platform="p\x00\x1b[2J\u202e")),
        # the oldest kept: request-log TTLs count from the start of the day, so anything from the
        # first day still inside the 7-day window is kept at any time of day
        ("time 6 days minus 1 h ago", log(request_time=now_ms - 6 * DAY_MS + 3_600_000)),
        ("time 100 s ahead (clock skew)", log(request_time=now_ms + 100_000)),
        ("IPv4-mapped IPv6 client", log(client_ip="::ffff:198.51.100.23")),
        ("upper-case IPv6 client", log(client_ip="2001:DB8:ABCD:12::1")),
    ]
    cases += [Case(name, enc(record), {}, [record]) for name, record in kept]
    null_key = log()
    cases.append(Case("valid record with a null key", enc(null_key), {}, [null_key], key=None))
    dup = log()
    dup_text = enc(dup).decode()
    dup_value = dict(dup)  # both values valid: the last one wins, as with any JSON parser
    dup_value["latency_ms"] = dup["latency_ms"] + 1
    cases.append(Case("duplicate key, both values valid", (dup_text[:-1] + f',"latency_ms":{dup_value["latency_ms"]}}}')
                      .encode(), {}, [dup_value]))
    a, b = log(), log()
    mixed = next(c for c in cases if c.name.startswith("array: valid, missing"))
    mixed.value, mixed.stored = enc([a, {"latency_ms": 1}, b]), [a, b]
    c, d = log(), log()
    ndjson = next(c_ for c_ in cases if c_.name.startswith("NDJSON: valid, truncated"))
    ndjson.value, ndjson.stored = enc(c) + b"\n" + enc(log())[:20] + b"\n" + enc(d), [c, d]
    return cases


class _Drop:
    """Marker: remove this field from the record."""


_DROP: Any = _Drop()


# -- hypothesis strategies -------------------------------------------------------------------------
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
wrong_values = st.one_of(json_values, st.just("NaN"), st.just(10**40), st.just(-1), st.just(""),
                         st.text(min_size=33, max_size=80), st.just(1.0), st.just(True), st.just([]), st.just({}))


@st.composite
def planted_log(draw: st.DrawFn, now_ms: int) -> dict[str, Any]:
    """A valid request log carrying the sentinel values in its string fields."""
    record = Traffic(apps=5, seed=draw(st.integers(0, 10_000))).request_log(now_ms)
    return {**record, **SENTINELS}


@st.composite
def wrong_typed(draw: st.DrawFn, now_ms: int) -> bytes:
    """A planted record with one to three fields replaced by values of arbitrary (often wrong) type."""
    record = draw(planted_log(now_ms))
    for name in draw(st.lists(st.sampled_from(LOG_FIELDS), min_size=1, max_size=3, unique=True)):
        record[name] = draw(wrong_values)
    return json.dumps(record, allow_nan=True).encode()


@st.composite
def mutated(draw: st.DrawFn, now_ms: int) -> bytes:
    """A planted record's bytes after a few byte-level mutations (delete, insert, flip, truncate)."""
    data = bytearray(enc(draw(planted_log(now_ms))))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(("delete", "insert", "flip", "truncate", "duplicate")))
        at = draw(st.integers(0, len(data) - 1))
        if op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


@st.composite
def framed(draw: st.DrawFn, now_ms: int) -> bytes:
    """Several planted records and poison elements framed as a JSON array or NDJSON lines."""
    parts = draw(st.lists(st.one_of(planted_log(now_ms).map(enc), wrong_typed(now_ms), mutated(now_ms),
                                    json_values.map(lambda v: json.dumps(v).encode())), min_size=1, max_size=5))
    if draw(st.booleans()):
        return b"[" + b",".join(parts) + b"]"
    return b"\n".join(p.replace(b"\n", b" ") for p in parts)


def messages(now_ms: int) -> st.SearchStrategy[bytes]:
    """Any message value a hostile or broken producer could send."""
    return st.one_of(st.binary(max_size=300), wrong_typed(now_ms), mutated(now_ms), framed(now_ms),
                     json_values.map(lambda v: json.dumps(v).encode()))
