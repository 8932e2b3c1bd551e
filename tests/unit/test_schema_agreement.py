"""The typed decoder (msgspec structs in ``pipeline/ingest/records.py``) accepts exactly what the JSON Schemas in
``schemas/`` accept, and the batch framing of ``Decoder.decode`` turns every kind of bad input into
rejects with a reason from ``REASONS`` - never an exception, never the offending value in ``detail``.

Known, documented differences that the generators below deliberately avoid:

* An integer field written as ``1.0`` is an integer for JSON Schema but msgspec rejects it, so integer
  fields never get integral floats (``float.is_integer()``) - they would fail the agreement for a reason
  the records module documents.
* ``client_ip`` is a plain string (<= 64 chars) for msgspec; IP syntax is checked later by
  ``pipeline.ingest.privacy`` (``None`` -> reason ``invalid_ip``). The agreement is therefore checked against a
  copy of the schema without the ``anyOf`` ipv4/ipv6 format, and the IP check is compared with the
  schema's formats separately.
* ``failures <= requests`` of a MonitoringSample is enforced in ``pipeline/ingest/admission.py``, not here.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators

from pipeline.ingest import privacy
from pipeline.ingest.decode import REASONS, WHOLE_MESSAGE, Decoder
from pipeline.ingest.records import MonitoringSample, RequestLog

ROOT = Path(__file__).resolve().parents[2]
FC = Draft202012Validator.FORMAT_CHECKER


def _load(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "schemas" / name).read_text())


REQUEST_SCHEMA = _load("request_log.schema.json")
SAMPLE_SCHEMA = _load("monitoring_sample.schema.json")
Draft202012Validator.check_schema(REQUEST_SCHEMA)
Draft202012Validator.check_schema(SAMPLE_SCHEMA)



def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """``pattern`` as JSON Schema defines it (ECMA-262: a final ``$`` is the end of the text). The
    ``jsonschema`` package uses Python's ``re``, where ``$`` also matches before a final newline: with
    it as the oracle, a generated interface like "0\\n" made the agreement test fail at random."""
    if not validator.is_type(instance, "string"):
        return
    ecma = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
    if not re.search(ecma, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


Validator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
REQUEST_FULL = Validator(REQUEST_SCHEMA, format_checker=FC)
_no_ip_format = copy.deepcopy(REQUEST_SCHEMA)
del _no_ip_format["properties"]["client_ip"]["anyOf"]
REQUEST_NO_IP_FORMAT = Validator(_no_ip_format, format_checker=FC)
SAMPLE = Validator(SAMPLE_SCHEMA, format_checker=FC)
IP_FORMAT = Validator(REQUEST_SCHEMA["properties"]["client_ip"], format_checker=FC)

REQUEST_DECODER = Decoder(RequestLog)
SAMPLE_DECODER = Decoder(MonitoringSample)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------------

INTERFACE_OK = "abcxyzABCXYZ0189_./-"
label = st.text(min_size=1, max_size=32)

request_logs = st.fixed_dictionaries(
    {
        "sdk_app_id": st.integers(1, 4_294_967_295),
        "interface": st.text(alphabet=INTERFACE_OK, min_size=1, max_size=128),
        "request_time": st.integers(0, 253_402_300_799_999),
        "client_ip": st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
        "latency_ms": st.integers(0, 3_600_000),
        "error_code": st.integers(-2_147_483_648, 2_147_483_647),
        "region": label,
        "platform": label,
        "request_id": st.text(min_size=1, max_size=64),
    },
    optional={"exception": st.one_of(st.none(), st.text(max_size=2048))},
)

monitoring_samples = st.fixed_dictionaries(
    {
        "sdk_app_id": st.integers(1, 4_294_967_295),
        "interface": st.text(alphabet=INTERFACE_OK, min_size=1, max_size=128),
        "window_start": st.integers(0, 253_402_300_799_999),
        "window_seconds": st.integers(1, 3600),
        "requests": st.integers(0, 4_294_967_295),
        "failures": st.integers(0, 4_294_967_295),
        "latency_avg_ms": st.one_of(st.integers(0, 3_600_000), st.floats(0, 3_600_000)),
        "reporter": st.text(min_size=1, max_size=64),
    },
    optional={"latency_max_ms": st.one_of(st.none(), st.integers(0, 3_600_000))},
)

# Floats that are never integral: an integral float (1.0) is a JSON Schema integer but msgspec rejects it
# for an ``int`` field - the one documented difference, so it must not reach integer fields.
non_integral_floats = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())

# Around every bound used by the schemas, plus far outside.
BOUNDS = [0, 1, 3600, 3_600_000, 2_147_483_647, 4_294_967_295, 253_402_300_799_999]
near_bounds = st.sampled_from(BOUNDS).flatmap(
    lambda b: st.sampled_from([b - 1, b, b + 1, -b, -b - 1, -b + 1])
) | st.integers(-(2**70), 2**70)

wrong_type_values = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8), non_integral_floats,
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)

# Strings whose length straddles the limits (1, 32, 64, 128, 2048) with a mix of ASCII and non-ASCII code
# points: both sides count code points, not bytes.
def _sized_strings() -> st.SearchStrategy[str]:
    lengths = st.sampled_from([0, 1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 2047, 2048, 2049])
    return st.tuples(lengths, st.sampled_from(["a", "é", "😀", "/"])).map(lambda t: t[1] * t[0])


sized_strings = _sized_strings()
interface_candidates = st.text(
    alphabet=st.sampled_from([*INTERFACE_OK, " ", "\n", "\t", "%", ":", "é", "\x00", "\\", "+", "$", "^"]),
    max_size=130,
)
ip_like = st.text(alphabet="0123456789abcdefABCDEF:.%/x ", max_size=45)
ip_values = st.one_of(
    ip_like,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded),
    st.text(max_size=70),
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]], schema: dict[str, Any]) -> dict[str, Any]:
    """A valid record with 0..3 mutations applied."""
    obj = dict(draw(base))
    props = schema["properties"]
    fields = sorted(props)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop", "type", "range", "string", "interface", "ip", "extra", "null"]))
        name = draw(st.sampled_from(fields))
        types = props[name]["type"]
        types = types if isinstance(types, list) else [types]
        if kind == "drop":
            obj.pop(draw(st.sampled_from(schema["required"])), None)
        elif kind == "type":
            obj[name] = draw(wrong_type_values)
        elif kind == "range":
            if "integer" in types:
                obj[name] = draw(near_bounds)
            elif "number" in types:
                obj[name] = draw(near_bounds | st.floats(-1e7, 1e7, allow_nan=False))
            else:
                obj[name] = draw(near_bounds)  # an integer where a string belongs: wrong type
        elif kind == "string":
            obj[name] = draw(sized_strings)
        elif kind == "interface":
            obj["interface"] = draw(interface_candidates)
        elif kind == "ip":
            obj["client_ip"] = draw(ip_values)
        elif kind == "extra":
            obj[draw(st.text(min_size=1, max_size=10))] = draw(wrong_type_values)
        elif kind == "null":
            obj["exception" if "exception" in props else "latency_max_ms"] = None
    return obj


def _schema_ok(validator: Draft202012Validator, obj: Any) -> bool:
    return not any(True for _ in validator.iter_errors(obj))


def _decoder_ok(decoder: Decoder[Any], obj: Any) -> tuple[bool, Any]:
    out = decoder.decode(json.dumps(obj).encode())
    if out.rejects:
        assert out.records == []
        assert len(out.rejects) == 1
        reject = out.rejects[0]
        assert reject.index == 0
        assert reject.reason in REASONS
        assert reject.reason in ("missing_field", "wrong_type", "out_of_range", "not_object")
    else:
        assert len(out.records) == 1
        assert out.records[0][0] == 0
    return not out.rejects, out


# ---------------------------------------------------------------------------------------------------
# Agreement: schema-valid <=> decoder returns exactly one record and no rejects
# ---------------------------------------------------------------------------------------------------


@FAST
@given(mutated(request_logs, REQUEST_SCHEMA))
@example({"sdk_app_id": 1.0, "interface": "a", "request_time": 0, "client_ip": "1.2.3.4", "latency_ms": 0,
          "error_code": 0, "region": "r", "platform": "p", "request_id": "x"}).xfail(
    raises=AssertionError, reason="documented: 1.0 is a JSON Schema integer, msgspec rejects it")
@example({"sdk_app_id": True, "interface": "a", "request_time": 0, "client_ip": "", "latency_ms": 0,
          "error_code": 0, "region": "r", "platform": "p", "request_id": "x"})
def test_request_log_agreement(obj: dict[str, Any]) -> None:
    schema_ok = _schema_ok(REQUEST_NO_IP_FORMAT, obj)
    decoded_ok, out = _decoder_ok(REQUEST_DECODER, obj)
    assert schema_ok == decoded_ok, (obj, out.rejects)
    if decoded_ok:
        record = msgspec.structs.asdict(out.records[0][1])
        for name, value in record.items():
            assert value == obj.get(name), name


@FAST
@given(mutated(monitoring_samples, SAMPLE_SCHEMA))
@example({"sdk_app_id": 1, "interface": "a", "window_start": 0, "window_seconds": 3601, "requests": 0,
          "failures": 0, "latency_avg_ms": 0, "reporter": "r"})
def test_monitoring_sample_agreement(obj: dict[str, Any]) -> None:
    schema_ok = _schema_ok(SAMPLE, obj)
    decoded_ok, out = _decoder_ok(SAMPLE_DECODER, obj)
    assert schema_ok == decoded_ok, (obj, out.rejects)
    if decoded_ok:
        record = msgspec.structs.asdict(out.records[0][1])
        for name, value in record.items():
            assert value == obj.get(name), name


@FAST
@given(request_logs)
def test_generated_valid_request_logs_pass_full_schema_and_privacy(obj: dict[str, Any]) -> None:
    """The unmutated generator really yields valid records (else the agreement test proves little)."""
    assert _schema_ok(REQUEST_FULL, obj)
    assert _decoder_ok(REQUEST_DECODER, obj)[0]
    assert privacy.prefix(obj["client_ip"]) is not None


def test_mutations_produce_both_outcomes() -> None:
    """Guard against a generator that only ever produces valid (or only invalid) candidates."""
    seen: set[bool] = set()

    @settings(max_examples=80, deadline=None, database=None)
    @given(mutated(request_logs, REQUEST_SCHEMA))
    def collect(obj: dict[str, Any]) -> None:
        seen.add(_schema_ok(REQUEST_NO_IP_FORMAT, obj))

    collect()
    assert seen == {True, False}


@pytest.mark.parametrize(("field", "value"), [
    ("interface", "v4/openim sendmsg"), ("interface", ""), ("interface", "a" * 129), ("region", ""),
    ("request_id", "x" * 65), ("client_ip", "1" * 65), ("exception", "e" * 2049), ("latency_ms", 3_600_001),
    ("error_code", 2_147_483_648), ("sdk_app_id", 0), ("request_time", -1), ("latency_ms", 1.5),
    ("sdk_app_id", "1"), ("exception", 5),
])
def test_request_log_known_invalid(field: str, value: Any) -> None:
    obj = {"sdk_app_id": 1, "interface": "v4/x", "request_time": 0, "client_ip": "1.2.3.4", "latency_ms": 0,
           "error_code": 0, "region": "r", "platform": "p", "request_id": "x", field: value}
    assert not _schema_ok(REQUEST_NO_IP_FORMAT, obj)
    assert not _decoder_ok(REQUEST_DECODER, obj)[0]


def test_interface_trailing_newline_rejected() -> None:
    """The schema pattern is ECMA-262, where ``$`` is the end of the text, so "v4/x\\n" is invalid. The
    Python ``jsonschema`` validator uses ``re.search`` (``$`` also matches before a final newline) and
    accepts it: that is the validator's deviation (``_ecma_pattern`` corrects it for the agreement
    tests), and the decoder follows the schema's meaning."""
    obj = {"sdk_app_id": 1, "interface": "v4/x\n", "request_time": 0, "client_ip": "1.2.3.4",
           "latency_ms": 0, "error_code": 0, "region": "r", "platform": "p", "request_id": "x"}
    assert not _decoder_ok(REQUEST_DECODER, obj)[0]
    assert _decoder_ok(REQUEST_DECODER, {**obj, "interface": "v4/x"})[0]


# ---------------------------------------------------------------------------------------------------
# IP syntax: pipeline.ingest.privacy vs the schema's anyOf ipv4/ipv6 formats
# ---------------------------------------------------------------------------------------------------


def _ip_schema_ok(s: str) -> bool:
    return _schema_ok(IP_FORMAT, s)


@FAST
@given(st.one_of(
    ip_values,
    st.ip_addresses(v=4).map(lambda a: ".".join(f"{int(o):03d}" for o in str(a).split("."))),  # leading zeros
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.tuples(st.ip_addresses(v=6), st.text(alphabet="abc019%", max_size=5)).map(lambda t: f"{t[0]}%{t[1]}"),
    st.ip_addresses().map(lambda a: f" {a}"),
    st.ip_addresses().map(lambda a: f"{a}\n"),
))
@example("01.2.3.4")
@example("::ffff:1.2.3.4")
@example("1.2.3.4/24")
@example("")
def test_privacy_ip_check_matches_schema_formats(s: str) -> None:
    schema_ok = _ip_schema_ok(s)
    decoder_ok = privacy.prefix(s) is not None
    # The decoder side must never accept something the schema rejects...
    if "%" not in s:
        assert decoder_ok == schema_ok, s
    else:
        # ...except IPv6 zone ids, a known disagreement (see test_ipv6_zone_id_rejected below).
        assert schema_ok is False or decoder_ok, s


@pytest.mark.parametrize("s", ["1.2.3.4", "255.255.255.255", "::", "::1", "2001:db8::5", "::ffff:10.0.0.1"])
def test_real_ips_accepted_by_both(s: str) -> None:
    assert _ip_schema_ok(s)
    assert privacy.prefix(s) is not None


@pytest.mark.parametrize("s", ["01.2.3.4", "1.2.3", "1.2.3.256", "1.2.3.4 ", "::g", "1.2.3.4%x", "fe80::1%"])
def test_bad_ips_rejected_by_both(s: str) -> None:
    assert not _ip_schema_ok(s)
    assert privacy.prefix(s) is None


def test_ipv6_zone_id_schema_rejects() -> None:
    assert not _ip_schema_ok("fe80::1%eth0")


def test_ipv6_zone_id_rejected() -> None:
    assert privacy.prefix("fe80::1%eth0") is None


# ---------------------------------------------------------------------------------------------------
# Batch framing
# ---------------------------------------------------------------------------------------------------

VALID = {"sdk_app_id": 7, "interface": "v4/openim/sendmsg", "request_time": 1_700_000_000_000,
         "client_ip": "198.51.100.4", "latency_ms": 12, "error_code": 0, "region": "eu", "platform": "ios",
         "request_id": "r-1"}
MARKER = "203.0.113.77"


def _bad(kind: int) -> dict[str, Any]:
    if kind == 0:
        return {k: v for k, v in VALID.items() if k != "region"}
    if kind == 1:
        return {**VALID, "latency_ms": "slow"}
    return {**VALID, "latency_ms": -5}


BAD_REASON = {0: "missing_field", 1: "wrong_type", 2: "out_of_range"}


@FAST
@given(st.lists(st.one_of(st.just(-1), st.integers(0, 2)), min_size=1, max_size=12))
def test_array_and_ndjson_framing(kinds: list[int]) -> None:
    objs = [VALID if k < 0 else _bad(k) for k in kinds]
    good = [i for i, k in enumerate(kinds) if k < 0]
    bad = [(i, BAD_REASON[k]) for i, k in enumerate(kinds) if k >= 0]
    framings = [json.dumps(objs).encode()]
    if len(objs) > 1:
        framings.append("\n".join(json.dumps(o) for o in objs).encode() + b"\n")
    for data in framings:
        out = REQUEST_DECODER.decode(data)
        assert [i for i, _ in out.records] == good
        assert all(r == RequestLog(**VALID) for _, r in out.records)
        assert [(r.index, r.reason) for r in out.rejects] == bad
        for r in out.rejects:
            assert json.loads(r.raw) == objs[r.index]


def test_array_of_non_objects() -> None:
    out = REQUEST_DECODER.decode(json.dumps([VALID, 5, "x", None]).encode())
    assert [i for i, _ in out.records] == [0]
    assert [(r.index, r.reason) for r in out.rejects] == [(1, "not_object"), (2, "not_object"), (3, "not_object")]


@pytest.mark.parametrize("data", [b"", b"   \n\t ", None])
def test_empty_message(data: bytes | None) -> None:
    out = REQUEST_DECODER.decode(data)
    assert out.records == []
    assert [(r.index, r.reason) for r in out.rejects] == [(WHOLE_MESSAGE, "empty")]


@pytest.mark.parametrize("data", [
    json.dumps(VALID).encode()[:-7],  # truncated object
    json.dumps([VALID, VALID]).encode()[:-3],  # truncated array
    b"\xff",
    b'{"a": "\xff\xfe"}',
    b"NaN",
    json.dumps({**VALID, "latency_ms": float("nan")}).encode(),
    b"[" * 50 + b"]" * 50,
    b"5",
    b'"' + b"x" * 1_000_000 + b'"',
    json.dumps({**VALID, "region": "x" * 1_000_000}).encode(),
    json.dumps([{**VALID, "request_id": "y" * 1_000_000}]).encode(),
])
def test_bad_input_is_rejected_not_raised(data: bytes) -> None:
    out = REQUEST_DECODER.decode(data)
    assert out.records == []
    assert out.rejects
    assert all(r.reason in REASONS for r in out.rejects)
    assert all(len(r.detail) <= 300 for r in out.rejects)


@pytest.mark.parametrize("data", [b"[" * 2000 + b"]" * 2000, b'{"x":' + b"[" * 2000 + b"]" * 2000 + b"}"])
def test_deeply_nested_is_rejected_not_raised(data: bytes) -> None:
    out = REQUEST_DECODER.decode(data)
    assert out.rejects and all(r.reason in REASONS for r in out.rejects)


def test_ndjson_bad_first_line_keeps_neighbours() -> None:
    data = b"{broken\n" + json.dumps(VALID).encode() + b"\n"
    out = REQUEST_DECODER.decode(data)
    assert [i for i, _ in out.records] == [1]


def test_ndjson_bad_later_line() -> None:
    data = json.dumps(VALID).encode() + b"\n{broken\n" + json.dumps(VALID).encode()
    out = REQUEST_DECODER.decode(data)
    assert [i for i, _ in out.records] == [0, 2]
    assert [(r.index, r.reason) for r in out.rejects] == [(1, "invalid_json")]


def test_truncated_array_is_whole_message_reject() -> None:
    data = json.dumps([VALID, VALID]).encode()[:-3]
    out = REQUEST_DECODER.decode(data)
    assert [(r.index, r.reason) for r in out.rejects] == [(WHOLE_MESSAGE, "invalid_json")]
    assert out.rejects[0].raw == data


MARKER_CASES = [
    {**VALID, "sdk_app_id": MARKER},
    {**VALID, "latency_ms": [MARKER]},
    {**VALID, "error_code": {"v": MARKER}},
    {**VALID, "interface": MARKER + " x"},
    {**VALID, "region": MARKER * 5},
    {**VALID, "exception": {MARKER: 1}},
    {**VALID, "request_id": MARKER * 10},
    {**VALID, MARKER: MARKER, "platform": 5},
]


@pytest.mark.parametrize("obj", MARKER_CASES)
def test_detail_never_contains_value(obj: dict[str, Any]) -> None:
    for data in (json.dumps(obj).encode(), json.dumps([VALID, obj]).encode(),
                 (json.dumps(VALID) + "\n" + json.dumps(obj)).encode()):
        out = REQUEST_DECODER.decode(data)
        assert len(out.rejects) == 1
        reject = out.rejects[0]
        assert reject.reason in REASONS
        assert MARKER not in reject.detail
        assert MARKER.encode() in reject.raw  # the raw bytes keep it (for the dead-letter topic only)


def test_ip_marker_is_not_decoded_as_anything_but_text() -> None:
    """The decoder keeps client_ip verbatim (privacy minimises it later)."""
    out = REQUEST_DECODER.decode(json.dumps({**VALID, "client_ip": MARKER}).encode())
    assert out.records[0][1].client_ip == MARKER
    assert privacy.prefix(out.records[0][1].client_ip) == "203.0.113.0/24"


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assume(data.count(b"[") + data.count(b"{") < 500)
    out = REQUEST_DECODER.decode(data)
    assert all(r.reason in REASONS for r in out.rejects)
    if not out.records and not out.rejects:
        assert json.loads(data) == []  # only an empty array yields nothing at all


def test_ipaddress_examples_round_trip() -> None:
    """Sanity of the generators' assumptions about str(ipaddress) forms."""
    assert _ip_schema_ok(str(ipaddress.IPv6Address(2**128 - 1)))
    assert _ip_schema_ok(ipaddress.IPv6Address(1).exploded)
