"""OTLP logs -> request-log records (pipeline/ingest/otlp.py, schemas/otlp_mapping.yaml).

Every payload here is made by the real OpenTelemetry Python SDK (LoggerProvider -> the OTLP exporter's
own ``encode_logs``), then written as the Collector's Kafka exporter writes it: ``otlp_proto`` is the
serialized ExportLogsServiceRequest; ``otlp_json`` is the Collector's pdata JSON (the protobuf JSON
mapping with camelCase keys, 64-bit integers as strings, enums as integers, and trace/span ids as hex
instead of base64).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValueList

from pipeline.ingest import otlp
from pipeline.ingest.otlp import (
    MappingError,
    OtlpDecodeError,
    decode_otlp_logs,
    load_mapping,
    parse_mapping,
    sniff_encoding,
)
from pipeline.ingest.records import RequestLog
from tests.support.otlp_sdk import encode, otlp_json, sdk_logs, sdk_request

ENCODINGS = ("otlp_proto", "otlp_json")
TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
SPAN_ID = 0xEEE19B7EC3C1B174
IP = "203.0.113.7"
MAIL = "alice@example.com"
GOOD = {"im.sdk_app_id": 1_400_000_001, "http.route": "/v4/openim/sendmsg", "client.address": IP,
        "im.latency_ms": 35, "im.request_id": "req-1"}


def decode(records: list[dict[str, Any]], encoding: str, resource: dict[str, Any] | None = None
           ) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
    return decode_otlp_logs(encode(sdk_request(records, resource), encoding), encoding)


def one(attributes: dict[str, Any], encoding: str, resource: dict[str, Any] | None = None, **extra: Any) -> dict:
    out, rejects = decode([{"attributes": attributes, **extra}], encoding, resource)
    assert rejects == [] and len(out) == 1
    return out[0]


def reject(attributes: dict[str, Any], encoding: str, **extra: Any) -> tuple[int, str, str]:
    out, rejects = decode([{"attributes": attributes, **extra}], encoding)
    assert out == [] and len(rejects) == 1
    return rejects[0]


# --- the mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_im_attributes_map_every_field(encoding: str) -> None:
    attrs = {**GOOD, "im.error_code": 70001, "im.region": "ap-seoul", "im.platform": "iOS",
             "exception.message": "session expired"}
    d = one(attrs, encoding, trace_id=TRACE_ID, span_id=SPAN_ID)
    assert d == {"sdk_app_id": 1_400_000_001, "interface": "v4/openim/sendmsg", "request_time": 1_700_000_000_123,
                 "client_ip": IP, "latency_ms": 35, "error_code": 70001, "region": "ap-seoul", "platform": "iOS",
                 "request_id": "req-1", "exception": "session expired"}
    assert msgspec.convert(d, RequestLog) == RequestLog(**d)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_semantic_convention_fallbacks(encoding: str) -> None:
    attrs = {"sdk_app_id": "1400000002", "http.route": "/v4/group_open_http_svc/send_group_msg",
             "client.address": "2001:db8::5", "http.server.request.duration": 0.042,
             "http.response.status_code": 503}
    d = one(attrs, encoding, trace_id=TRACE_ID, span_id=SPAN_ID)
    assert d == {"sdk_app_id": 1_400_000_002, "interface": "v4/group_open_http_svc/send_group_msg",
                 "request_time": 1_700_000_000_123, "client_ip": "2001:db8::5", "latency_ms": 42, "error_code": 503,
                 "region": "ap-singapore", "platform": "unknown",
                 "request_id": "5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174", "exception": None}
    msgspec.convert(d, RequestLog)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("attrs", "interface"), [
    ({"rpc.service": "im.v1.Messaging", "rpc.method": "SendMsg"}, "im.v1.Messaging/SendMsg"),
    ({"rpc.method": "SendMsg"}, "SendMsg"),
    ({"rpc.service": "x", "rpc.method": "im.v1.Messaging/SendMsg"}, "im.v1.Messaging/SendMsg"),  # already qualified
    ({"url.path": "/v4/openim/sendmsg"}, "v4/openim/sendmsg"),
    ({"http.route": "/v4/a", "rpc.method": "M", "url.path": "/v4/b"}, "v4/a"),
    ({"http.route": "", "url.path": "/v4/b"}, "v4/b"),  # empty counts as absent
])
def test_interface_sources_in_order(encoding: str, attrs: dict[str, Any], interface: str) -> None:
    base = {k: v for k, v in GOOD.items() if k != "http.route"}
    assert one({**base, **attrs}, encoding)["interface"] == interface


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_record_attribute_beats_resource_and_resource_fills_in(encoding: str) -> None:
    resource = {"im.sdk_app_id": 1_400_000_009, "http.route": "/v4/from_resource", "cloud.region": "eu-frankfurt",
                "im.platform": "Server"}
    d = one({**GOOD, "cloud.region": "ap-mumbai"}, encoding, resource=resource)
    assert (d["sdk_app_id"], d["interface"], d["region"], d["platform"]) == (
        1_400_000_001, "v4/openim/sendmsg", "ap-mumbai", "Server")
    # per attribute name: a resource's http.route is tried before a record's url.path
    base = {k: v for k, v in GOOD.items() if k not in ("http.route", "im.sdk_app_id")}
    d = one({**base, "url.path": "/v4/from_record"}, encoding, resource=resource)
    assert (d["sdk_app_id"], d["interface"]) == (1_400_000_009, "v4/from_resource")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("attrs", "code"), [
    ({}, 0),
    ({"http.response.status_code": 200}, 0),
    ({"http.response.status_code": 404}, 404),
    ({"http.status_code": 500}, 500),
    ({"http.response.status_code": 200, "exception.type": "TimeoutError"}, -1),
    ({"exception.message": "boom"}, -1),
    ({"im.error_code": 0, "exception.message": "handled"}, 0),
    ({"im.error_code": "-3", "http.response.status_code": 500}, -3),
    ({"rpc.grpc.status_code": 14}, 14),
    ({"http.response.status_code": 200, "rpc.grpc.status_code": 0}, 0),
])
def test_error_code(encoding: str, attrs: dict[str, Any], code: int) -> None:
    assert one({**GOOD, **attrs}, encoding)["error_code"] == code


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_exception_text(encoding: str) -> None:
    assert one({**GOOD, "exception.type": "KeyError"}, encoding)["exception"] == "KeyError"
    assert one({**GOOD, "exception.type": "E", "exception.message": "m"}, encoding)["exception"] == "m"
    assert len(one({**GOOD, "exception.message": "x" * 5000}, encoding)["exception"]) == 2048
    try:
        raise TimeoutError("upstream timed out")
    except TimeoutError as exc:  # the SDK's own exception= sets exception.type/.message/.stacktrace
        d = one(GOOD, encoding, exception=exc)
    assert (d["exception"], d["error_code"]) == ("upstream timed out", -1)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_time_latency_and_defaults(encoding: str) -> None:
    base = {k: v for k, v in GOOD.items() if k != "im.latency_ms"}
    d = one({**base, "im.latency_ms": 12.5}, encoding, resource={}, timestamp=None, observed=1_699_999_999_999_999_999)
    assert (d["request_time"], d["latency_ms"]) == (1_699_999_999_999, 13)
    assert (d["region"], d["platform"]) == ("unknown", "unknown")
    assert one({**base, "http.server.request.duration": 2.0}, encoding)["latency_ms"] == 2000
    no_id = {k: v for k, v in GOOD.items() if k != "im.request_id"}
    assert one(no_id, encoding)["request_id"] == "unknown"
    assert one(no_id, encoding, trace_id=TRACE_ID)["request_id"] == "5b8efff798038103d269b633813fc60c"


# --- unmappable records ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("drop", "reason"), [
    ("im.sdk_app_id", "otlp_missing_app_id"),
    ("http.route", "otlp_missing_interface"),
    ("client.address", "otlp_missing_client_ip"),
    ("im.latency_ms", "otlp_missing_latency"),
])
def test_missing_required_field(encoding: str, drop: str, reason: str) -> None:
    index, got, detail = reject({k: v for k, v in GOOD.items() if k != drop}, encoding)
    assert (index, got) == (0, reason)
    assert drop in detail


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("attrs", "name"), [
    ({"im.sdk_app_id": "not-a-number"}, "im.sdk_app_id"),
    ({"im.sdk_app_id": True}, "im.sdk_app_id"),
    ({"im.sdk_app_id": 3.5}, "im.sdk_app_id"),
    ({"http.route": 42}, "http.route"),
    ({"client.address": ["203.0.113.7"]}, "client.address"),
    ({"im.latency_ms": "35"}, "im.latency_ms"),
    ({"im.latency_ms": float("nan")}, "im.latency_ms"),
    ({"im.error_code": "E1"}, "im.error_code"),
    ({"rpc.service": 7, "rpc.method": "M", "http.route": ""}, "rpc.service"),
])
def test_wrong_type_is_flagged_not_skipped(encoding: str, attrs: dict[str, Any], name: str) -> None:
    _, reason, detail = reject({**GOOD, **attrs}, encoding)
    assert reason == "otlp_bad_value" and detail.startswith(f"attribute {name} must be")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_time_missing(encoding: str) -> None:
    # the SDK fills observed_timestamp itself; a zero in both fields means "unknown"
    request = sdk_request([{"attributes": GOOD}])
    log = request.resource_logs[0].scope_logs[0].log_records[0]
    log.time_unix_nano = log.observed_time_unix_nano = 0
    assert decode_otlp_logs(encode(request, encoding), encoding) == ([], [(0, "otlp_missing_time",
                                                                          "none of time_unix_nano, "
                                                                          "observed_time_unix_nano is set")])


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_mixed_message_keeps_order_and_indices(encoding: str) -> None:
    no_app = {k: v for k, v in GOOD.items() if k != "im.sdk_app_id"}
    no_iface = {k: v for k, v in GOOD.items() if k != "http.route"}
    first = sdk_logs([{"attributes": {**GOOD, "im.request_id": "a"}}, {"attributes": no_app},
                      {"attributes": {**GOOD, "im.request_id": "b"}}], {"cloud.region": "ap-seoul"})
    second = sdk_logs([{"attributes": no_iface}, {"attributes": {**GOOD, "im.request_id": "c"}}],
                      {"cloud.region": "na-ashburn"})
    request = encode_logs(first + second)
    assert len(request.resource_logs) == 2
    out, rejects = decode_otlp_logs(encode(request, encoding), encoding)
    assert [(d["request_id"], d["region"]) for d in out] == [("a", "ap-seoul"), ("b", "ap-seoul"), ("c", "na-ashburn")]
    assert [(i, r) for i, r, _ in rejects] == [(1, "otlp_missing_app_id"), (3, "otlp_missing_interface")]
    for d in out:
        msgspec.convert(d, RequestLog)


def proto_request(attributes: list[tuple[str, AnyValue]], resource: list[tuple[str, AnyValue]] | None = None,
                  time_unix_nano: int = 1_700_000_000_123_456_789) -> ExportLogsServiceRequest:
    """A one-record request built field by field (attribute lists may repeat a name, unlike the SDK's)."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in resource or []:
        resource_logs.resource.attributes.add(key=key).value.CopyFrom(value)
    log = resource_logs.scope_logs.add().log_records.add(time_unix_nano=time_unix_nano)
    for key, value in attributes:
        log.attributes.add(key=key).value.CopyFrom(value)
    return request


def text(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def one_of(request: ExportLogsServiceRequest, encoding: str) -> dict[str, Any]:
    out, rejects = decode_otlp_logs(encode(request, encoding), encoding)
    assert rejects == [] and len(out) == 1
    return out[0]


GOOD_VALUES = [(k, AnyValue(int_value=v) if isinstance(v, int) else text(v)) for k, v in GOOD.items()]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_repeated_attribute_name_last_one_wins(encoding: str) -> None:
    # the last value of a repeated name counts, even when it is empty (then the resource's fills in)
    request = proto_request([*GOOD_VALUES, ("im.region", text("ap-seoul")), ("im.region", text("")),
                             ("im.platform", text("")), ("im.platform", text("iOS")),
                             ("im.latency_ms", AnyValue(int_value=5)), ("im.latency_ms", AnyValue(int_value=7))],
                            resource=[("im.region", text("eu-frankfurt"))])
    d = one_of(request, encoding)
    assert (d["region"], d["platform"], d["latency_ms"]) == ("eu-frankfurt", "iOS", 7)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_zero_is_a_value_and_unset_or_empty_is_not(encoding: str) -> None:
    resource = [("im.error_code", AnyValue(int_value=5)), ("http.route", text("/v4/from_resource")),
                ("im.latency_ms", AnyValue(int_value=9))]
    base = [(k, v) for k, v in GOOD_VALUES if k not in ("http.route", "im.latency_ms")]
    d = one_of(proto_request([*base, ("im.error_code", AnyValue(int_value=0)), ("http.route", AnyValue()),
                              ("im.latency_ms", AnyValue(double_value=0.0)),
                              ("unread", AnyValue(bool_value=True))], resource), encoding)
    assert (d["error_code"], d["interface"], d["latency_ms"]) == (0, "v4/from_resource", 0)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("name", "value", "detail"), [
    ("http.route", AnyValue(bool_value=False), "attribute http.route must be a string, not bool"),
    ("http.route", AnyValue(int_value=0), "attribute http.route must be a string, not int"),
    ("im.latency_ms", AnyValue(array_value=ArrayValue()), "attribute im.latency_ms must be a finite number, not array"),
    ("im.sdk_app_id", AnyValue(double_value=1.5),
     "attribute im.sdk_app_id must be an integer or a string of digits, not double"),
    ("im.sdk_app_id", AnyValue(kvlist_value=KeyValueList()),
     "attribute im.sdk_app_id must be an integer or a string of digits, not kvlist"),
])
def test_wrong_kind_of_value_details(encoding: str, name: str, value: AnyValue, detail: str) -> None:
    request = proto_request([*GOOD_VALUES, (name, value)])
    assert decode_otlp_logs(encode(request, encoding), encoding) == ([], [(0, "otlp_bad_value", detail)])


def test_a_mapping_built_by_hand_is_mapped_too() -> None:
    # shapes the mapping file cannot express still map by the general rule
    mapping = otlp.Mapping((
        otlp.FieldRule("ms", "int", (otlp.Source(log_field="time_unix_nano"),)),
        otlp.FieldRule("route", "str", (otlp.Source(attribute="http.route"),), max_length=3),
    ))
    request = proto_request(GOOD_VALUES)
    assert otlp.map_request(request, mapping) == ([{"ms": 1_700_000_000_123, "route": "/v4"}], [])


# --- whole messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "encoding"), [
    (b"\x0a\xff\xff garbage", "otlp_proto"),
    (b"\x0a\x05\x0a\x03\x0a", "otlp_proto"),  # truncated
    (b"", "otlp_proto"),  # parses as an empty request: no log records
    (b"not json at all", "otlp_json"),
    (b"[1, 2]", "otlp_json"),
    (b"{}", "otlp_json"),
    (b'{"resourceLogs": {"a": 1}}', "otlp_json"),
    (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "xyz"}]}]}]}', "otlp_json"),
    (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "5b8e"}]}]}]}', "otlp_json"),
    (b'\xff\xfe{"resourceLogs": []}', "otlp_json"),
])
def test_garbage_raises_one_line_reason(payload: bytes, encoding: str) -> None:
    with pytest.raises(OtlpDecodeError) as info:
        decode_otlp_logs(payload, encoding)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value) and str(info.value)


def test_parse_error_names_the_field_not_the_value() -> None:
    doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"attributes": [{"key": "k", "value": {"intValue": IP}}], "flags": MAIL}]}]}]}
    with pytest.raises(OtlpDecodeError) as info:
        decode_otlp_logs(json.dumps(doc).encode(), "otlp_json")
    text = str(info.value)
    assert IP not in text and MAIL not in text and "resourceLogs.scopeLogs.logRecords" in text


def test_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown OTLP encoding"):
        decode_otlp_logs(b"{}", "raw")


def test_hex_ids_are_not_read_as_base64() -> None:
    """A 32-digit hex id is also valid base64: read naively it gives 24 wrong bytes."""
    payload = otlp_json(sdk_request([{"attributes": {k: v for k, v in GOOD.items() if k != "im.request_id"},
                                      "trace_id": TRACE_ID, "span_id": SPAN_ID}]))
    assert b'"traceId":"5b8efff798038103d269b633813fc60c"' in payload
    out, _ = decode_otlp_logs(payload, "otlp_json")
    assert out[0]["request_id"] == f"{TRACE_ID:032x}-{SPAN_ID:016x}"


def test_json_with_proto_field_names_is_accepted() -> None:
    request = sdk_request([{"attributes": GOOD, "trace_id": TRACE_ID}])
    payload = otlp_json(request, snake_case=True)
    assert b'"resource_logs"' in payload and b'"time_unix_nano"' in payload
    assert decode_otlp_logs(payload, "otlp_json") == decode_otlp_logs(request.SerializeToString(), "otlp_proto")


def test_unknown_json_fields_are_ignored() -> None:
    doc = json.loads(otlp_json(sdk_request([{"attributes": GOOD}])))
    doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["futureField"] = {"x": 1}
    out, rejects = decode_otlp_logs(json.dumps(doc).encode(), "otlp_json")
    assert len(out) == 1 and rejects == []


# --- sniffing -------------------------------------------------------------------------------------


def test_sniff_encoding() -> None:
    request = sdk_request([{"attributes": GOOD}])
    proto, js = request.SerializeToString(), otlp_json(request)
    assert sniff_encoding(proto, None) == "otlp_proto"
    assert sniff_encoding(js, None) == "otlp_json"
    assert sniff_encoding(b'  \n{ "resource_logs": []}', None) == "otlp_json"
    assert sniff_encoding(js, "application/x-protobuf") == "otlp_proto"  # the header decides
    assert sniff_encoding(proto, "Application/JSON; charset=utf-8") == "otlp_json"
    assert sniff_encoding(proto, "text/plain") == "otlp_proto"  # other types: sniff
    native = msgspec.json.encode({"sdk_app_id": 1, "interface": "v4/x"})
    for other in (native, b"[" + native + b"]", b"\n" + native + b"\n" + native, b"", b"\n", b"\x0a\x7f"):
        assert sniff_encoding(other, None) is None


# --- the mapping file -----------------------------------------------------------------------------


def test_mapping_file_is_a_parameter(tmp_path: Path) -> None:
    doc = yaml.safe_load(otlp.MAPPING_FILE.read_text())
    doc["fields"]["platform"]["sources"] = ["im.platform", "os.type"]
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(yaml.safe_dump(doc))
    payload = sdk_request([{"attributes": GOOD}], {"os.type": "linux"}).SerializeToString()
    assert decode_otlp_logs(payload, "otlp_proto")[0][0]["platform"] == "unknown"
    assert decode_otlp_logs(payload, "otlp_proto", load_mapping(moved))[0][0]["platform"] == "linux"


def test_default_mapping_covers_the_record() -> None:
    fields = [r.name for r in load_mapping().fields]
    assert fields == list(RequestLog.__struct_fields__)


@pytest.mark.parametrize("doc", [
    None,
    {"version": 2, "fields": {}},
    {"version": 1, "fields": {"x": {"type": "float", "sources": ["a"]}}},
    {"version": 1, "fields": {"x": {"type": "int", "sources": []}}},
    {"version": 1, "fields": {"x": {"type": "int", "sources": ["a"], "colour": "red"}}},
    {"version": 1, "fields": {"x": {"type": "int", "sources": ["a"], "required": True}}},
    {"version": 1, "fields": {"x": {"type": "duration", "sources": [{"attribute": "a", "unit": "h"}]}}},
    {"version": 1, "fields": {"x": {"type": "time", "sources": ["a"]}}},
    {"version": 1, "fields": {"x": {"type": "int", "sources": [{"log_field": "trace_span_id"}]}}},
    {"version": 1, "fields": {"x": {"type": "str", "sources": [{"log_field": "body"}]}}},
])
def test_bad_mapping_is_refused(doc: Any) -> None:
    with pytest.raises(MappingError):
        parse_mapping(doc)


# --- properties -----------------------------------------------------------------------------------

label = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=32)
good_records = st.fixed_dictionaries({
    "im.sdk_app_id": st.integers(1, 4_294_967_295) | st.integers(1, 4_294_967_295).map(str),
    "http.route": st.text("abcdefghijklmnopqrstuvwxyz0123456789_./-", min_size=1, max_size=120).filter(
        lambda s: s.strip("/")).map(lambda s: "/" + s),
    "client.address": st.ip_addresses().map(str),
    "im.latency_ms": st.integers(0, 3_600_000),
    "im.error_code": st.integers(-2_147_483_648, 2_147_483_647),
    "cloud.region": label,
    "im.platform": label,
    "im.request_id": st.text(min_size=1, max_size=64).filter(lambda s: s.strip()),
    "exception.message": st.text(max_size=300),
})
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(attrs=good_records, ts_ms=st.integers(0, (2**64 - 1) // 1_000_000 - 1), encoding=st.sampled_from(ENCODINGS))
def test_round_trip(attrs: dict[str, Any], ts_ms: int, encoding: str) -> None:
    out, rejects = decode([{"attributes": attrs, "timestamp": ts_ms * 1_000_000 + 999_999}], encoding)
    assert rejects == []
    got = msgspec.convert(out[0], RequestLog)
    assert (got.sdk_app_id, got.interface, got.request_time, got.client_ip, got.latency_ms, got.error_code,
            got.region, got.platform, got.request_id) == (
        int(attrs["im.sdk_app_id"]), attrs["http.route"].lstrip("/"), ts_ms, attrs["client.address"],
        attrs["im.latency_ms"], attrs["im.error_code"], attrs["cloud.region"], attrs["im.platform"],
        attrs["im.request_id"])
    assert got.exception == (attrs["exception.message"] or None)


@SLOW
@given(ip=st.ip_addresses().map(str), mail=st.emails(), encoding=st.sampled_from(ENCODINGS),
       broken=st.sampled_from(["im.sdk_app_id", "http.route", "im.latency_ms", "im.error_code", "cloud.region"]))
def test_details_never_hold_personal_data(ip: str, mail: str, encoding: str, broken: str) -> None:
    pii = f"{mail} from {ip}"
    records: list[dict[str, Any]] = [
        {"attributes": {**GOOD, "client.address": ip, broken: pii, "exception.message": pii}},  # wrong type/text
        {"attributes": {**GOOD, "client.address": ip, broken: [ip, mail], "exception.type": pii}},  # wrong type
        {"attributes": {"client.address": ip, "exception.message": pii, "url.path": f"/{mail}"}},  # missing app id
        {"attributes": {"im.sdk_app_id": 1, "client.address": ip, "exception.message": pii}},  # missing interface
    ]
    _, rejects = decode(records, encoding)
    assert len(rejects) >= 3
    for _, reason, detail in rejects:
        assert reason in otlp.REASONS
        assert ip not in detail and mail not in detail and "@" not in detail


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_worker_decoder_takes_otlp_and_rejects_records_with_their_own_request(encoding: str) -> None:
    from pipeline.ingest.decode import REASONS, WHOLE_MESSAGE, Decoder

    payload = encode(sdk_request([{"attributes": GOOD}, {"attributes": {**GOOD, "im.sdk_app_id": None}},
                                  {"attributes": {**GOOD, "im.latency_ms": -5}}]), encoding)
    decoded = Decoder(RequestLog, otlp_logs=True).decode(payload)
    assert [r.request_id for _, r in decoded.records] == ["req-1"] and decoded.indices == [0]
    assert [(r.index, r.reason) for r in decoded.rejects] == [(1, "otlp_missing_app_id"), (2, "out_of_range")]
    assert all(r.reason in REASONS for r in decoded.rejects)
    for r in decoded.rejects:  # each rejected record's bytes are a request holding just that record
        again = Decoder(RequestLog, otlp_logs=True).decode(r.raw)
        assert again.items == [] and len(again.rejects) == 1 and again.rejects[0].reason == r.reason
    assert Decoder(RequestLog).decode(payload).rejects[0].reason in ("invalid_json", "missing_field")
    garbage = Decoder(RequestLog, otlp_logs=True).decode(b'{"resourceLogs": 7}')
    assert [(r.index, r.reason) for r in garbage.rejects] == [(WHOLE_MESSAGE, "invalid_otlp")]
