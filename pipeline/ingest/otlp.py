"""OTLP logs -> request-log records.

One Kafka message holds one ``ExportLogsServiceRequest``, as the OpenTelemetry Collector's Kafka
exporter writes it: ``otlp_proto`` (protobuf bytes) or ``otlp_json`` (OTLP/JSON: the protobuf JSON
mapping, except that ``traceId``/``spanId`` are hex, not base64). Each LogRecord is mapped to a
request-log dict by the rules in ``schemas/otlp_mapping.yaml`` (which attributes, in which order,
which units); docs/otlp.md documents them.

This module maps, it does not validate: the dicts go through the worker's usual msgspec validation
(``RequestLog``). Records that cannot be mapped (no app id, no interface, a value of the wrong type)
come back as ``(record_index, reason, detail)``; reasons are the closed set ``REASONS`` (a metric
label) and details name attributes and types, never values (client addresses and exception texts
are personal data). A message that cannot be parsed at all raises ``OtlpDecodeError``.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import yaml
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from pipeline.config.policy import SCHEMAS_DIR

MAPPING_FILE = SCHEMAS_DIR / "otlp_mapping.yaml"

ENCODINGS = ("otlp_proto", "otlp_json")
# Why a record could not be mapped (closed set: these become a metric label / dead-letter header).
MISSING_REASONS = {
    "sdk_app_id": "otlp_missing_app_id",
    "interface": "otlp_missing_interface",
    "request_time": "otlp_missing_time",
    "client_ip": "otlp_missing_client_ip",
    "latency_ms": "otlp_missing_latency",
}
BAD_VALUE = "otlp_bad_value"
REASONS = (*MISSING_REASONS.values(), BAD_VALUE)

_TYPES = ("int", "str", "duration", "time")
_UNITS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
_LOG_FIELDS = ("time_unix_nano", "observed_time_unix_nano", "trace_span_id")
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,20}")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_PROTO_FIELD = re.compile(r"Failed to parse (\w+) field")
_JSON_HEAD = re.compile(rb'\A\s*\{\s*"resource_?[Ll]ogs"\s*:')


class OtlpDecodeError(ValueError):
    """The whole message is not an ExportLogsServiceRequest; ``str()`` is a one-line reason that
    names no value."""


class MappingError(ValueError):
    """``otlp_mapping.yaml`` is not a valid mapping."""


# --- the mapping file ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """Where one candidate value comes from."""

    attribute: str | None = None  # an attribute name (record first, then resource)
    log_field: str | None = None  # or a LogRecord field
    unit_ms: float = 1.0  # duration sources: milliseconds per unit
    prefix: str | None = None  # "<prefix value><separator><value>"
    separator: str = "/"
    success_below: int | None = None  # status-code sources


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How one request-log field is filled."""

    name: str
    type: str
    sources: tuple[Source, ...]
    required: bool = False
    default: Any = None
    strip_leading: str = ""
    max_length: int | None = None
    default_with_exception: int | None = None
    exception_attributes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mapping:
    """The parsed ``otlp_mapping.yaml``."""

    fields: tuple[FieldRule, ...]


_SOURCE_KEYS = {"attribute", "log_field", "unit", "prefix", "separator", "success_below"}
_FIELD_KEYS = {"type", "sources", "required", "default", "strip_leading", "max_length",
               "default_with_exception", "exception_attributes"}


def _source(field: str, spec: object) -> Source:
    if isinstance(spec, str):
        return Source(attribute=spec)
    if not isinstance(spec, dict) or set(spec) - _SOURCE_KEYS or ("attribute" in spec) == ("log_field" in spec):
        raise MappingError(f"{field}: a source is an attribute name or a mapping with attribute or log_field "
                           f"(keys: {sorted(_SOURCE_KEYS)})")
    if "log_field" in spec and spec["log_field"] not in _LOG_FIELDS:
        raise MappingError(f"{field}: log_field must be one of {_LOG_FIELDS}")
    unit = spec.get("unit", "ms")
    if unit not in _UNITS:
        raise MappingError(f"{field}: unit must be one of {sorted(_UNITS)}")
    below = spec.get("success_below")
    if below is not None and not isinstance(below, int):
        raise MappingError(f"{field}: success_below must be an integer")
    return Source(attribute=spec.get("attribute"), log_field=spec.get("log_field"), unit_ms=_UNITS[unit],
                  prefix=spec.get("prefix"), separator=str(spec.get("separator", "/")), success_below=below)


def parse_mapping(doc: object) -> Mapping:
    """Check and type a loaded mapping document (strict: unknown keys are errors)."""
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("fields"), dict):
        raise MappingError("the mapping needs version: 1 and a fields: mapping")
    rules = []
    for name, spec in doc["fields"].items():
        if not isinstance(spec, dict) or set(spec) - _FIELD_KEYS:
            raise MappingError(f"{name}: keys must be among {sorted(_FIELD_KEYS)}")
        if spec.get("type") not in _TYPES:
            raise MappingError(f"{name}: type must be one of {_TYPES}")
        if not isinstance(spec.get("sources"), list) or not spec["sources"]:
            raise MappingError(f"{name}: sources must be a non-empty list")
        sources = tuple(_source(name, s) for s in spec["sources"])
        for src in sources:
            if (spec["type"] == "time") != (src.log_field in ("time_unix_nano", "observed_time_unix_nano")):
                raise MappingError(f"{name}: type time takes exactly the log_field sources time_unix_nano and "
                                   "observed_time_unix_nano")
            if src.log_field == "trace_span_id" and spec["type"] != "str":
                raise MappingError(f"{name}: log_field trace_span_id gives a string")
        required = bool(spec.get("required", False))
        if required and name not in MISSING_REASONS:
            raise MappingError(f"{name}: only {sorted(MISSING_REASONS)} can be required (each has a reason)")
        rules.append(FieldRule(
            name=name, type=spec["type"], sources=sources,
            required=required, default=spec.get("default"), strip_leading=str(spec.get("strip_leading", "")),
            max_length=spec.get("max_length"), default_with_exception=spec.get("default_with_exception"),
            exception_attributes=tuple(spec.get("exception_attributes", ())),
        ))
    return Mapping(tuple(rules))


@lru_cache(maxsize=8)
def load_mapping(path: Path = MAPPING_FILE) -> Mapping:
    """Read and check the mapping file (cached per path)."""
    with open(path, encoding="utf-8") as f:
        return parse_mapping(yaml.safe_load(f))


# --- parsing the message --------------------------------------------------------------------------


def sniff_encoding(payload: bytes, content_type: str | None = None) -> str | None:
    """``otlp_proto``, ``otlp_json`` or None (not recognisably OTLP logs).

    A ``content-type`` header decides when it names protobuf or JSON (the Collector's Kafka exporter
    sends none by itself; ``record_headers`` can add one, see docs/otlp.md). Otherwise the bytes do:
    a JSON object whose first key is ``resourceLogs`` is OTLP/JSON (so the pipeline's own JSON
    records are not mistaken for it); a protobuf message whose first field is a well-formed
    ``resource_logs`` entry is OTLP/protobuf."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media in ("application/x-protobuf", "application/protobuf"):
            return "otlp_proto"
        if media == "application/json":
            return "otlp_json"
    if _JSON_HEAD.match(payload):
        return "otlp_json"
    return "otlp_proto" if _looks_like_proto(payload) else None


def _looks_like_proto(payload: bytes) -> bool:
    """Field 1 (resource_logs, length-delimited) whose length fits and whose content starts with one
    of ResourceLogs' own fields (resource, scope_logs, schema_url)."""
    if len(payload) < 2 or payload[0] != 0x0A:
        return False
    length = shift = 0
    pos = 1
    while pos < len(payload) and shift < 35:
        byte = payload[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    else:
        return False
    if pos + length > len(payload):
        return False
    return length == 0 or payload[pos] in (0x0A, 0x12, 0x1A)


def parse_request(payload: bytes, encoding: str) -> ExportLogsServiceRequest:
    """The message as an ``ExportLogsServiceRequest``; raises ``OtlpDecodeError``."""
    if encoding == "otlp_proto":
        try:
            return ExportLogsServiceRequest.FromString(payload)
        except (DecodeError, RecursionError):
            raise OtlpDecodeError("payload is not an OTLP/protobuf ExportLogsServiceRequest") from None
    if encoding == "otlp_json":
        return _parse_json(payload)
    raise ValueError(f"unknown OTLP encoding {encoding!r} (expected one of {ENCODINGS})")


def _parse_json(payload: bytes) -> ExportLogsServiceRequest:
    try:
        doc = msgspec.json.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise OtlpDecodeError("payload is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OtlpDecodeError("OTLP/JSON must be a JSON object")
    _hex_ids_to_base64(doc)
    message = ExportLogsServiceRequest()
    try:
        # Unknown fields are skipped, as the Collector's own OTLP/JSON reader does.
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        # protobuf's message quotes the offending value (an address, a mail): keep only the field path
        path = ".".join(_PROTO_FIELD.findall(str(exc)))
        raise OtlpDecodeError("OTLP/JSON does not fit ExportLogsServiceRequest"
                              + (f" at {path}" if path else "")) from None
    return message


def _items(parent: dict[str, Any], camel: str, snake: str) -> list[Any]:
    value = parent.get(camel, parent.get(snake))
    return value if isinstance(value, list) else []


def _hex_ids_to_base64(doc: dict[str, Any]) -> None:
    """OTLP/JSON writes trace and span ids as hex; the protobuf JSON mapping reads bytes as base64
    (and a 32-digit hex string *is* valid base64: it would parse silently into 24 wrong bytes).
    Rewrite them in place; an id that is not hex of the right size fails the whole message, as it
    does in the Collector."""
    index = 0
    for resource in _items(doc, "resourceLogs", "resource_logs"):
        for scope in _items(resource, "scopeLogs", "scope_logs") if isinstance(resource, dict) else ():
            for record in _items(scope, "logRecords", "log_records") if isinstance(scope, dict) else ():
                if isinstance(record, dict):
                    for key, size in (("traceId", 16), ("trace_id", 16), ("spanId", 8), ("span_id", 8)):
                        text = record.get(key)
                        if isinstance(text, str):
                            if not _HEX.fullmatch(text) or len(text) not in (0, 2 * size):
                                raise OtlpDecodeError(f"log record {index}: {key} is not {2 * size} hex digits")
                            record[key] = base64.b64encode(bytes.fromhex(text)).decode("ascii")
                index += 1


# --- mapping records ------------------------------------------------------------------------------


class _Unmappable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


# An attribute as the mapping sees it: ``(kind, value)`` (kind is AnyValue's oneof name, e.g.
# ``string_value``), or None when the value is unset or an empty string (both count as absent).
# Attributes are read once per record into ``name -> _Hit`` (the last of a repeated name wins), so
# that every rule can look names up without touching protobuf objects again.
_Hit = tuple[str, Any]
_Attrs = dict[str, _Hit | None]
# One compiled rule: (the LogRecord, its attributes, its resource's attributes) -> the field's value;
# raises ``_Unmappable``.
_Field = Callable[[LogRecord, _Attrs, _Attrs], Any]


def _attributes(kvs: Any, wanted: frozenset[str]) -> _Attrs:
    """The attributes named in ``wanted`` (the others are never read: skipping them saves the cost
    of reading their values out of protobuf).

    ``value`` is a oneof, so a non-empty ``string_value`` (or non-zero ``int_value``) can only be
    the member that is set: reading it directly answers the common cases without ``WhichOneof``,
    which costs more than a field read. Only the rest (empty, zero, other kinds) ask it."""
    attrs: _Attrs = {}
    for kv in kvs:
        key = kv.key
        if key not in wanted:
            continue
        value = kv.value
        text = value.string_value
        if text:
            attrs[key] = ("string_value", text)
            continue
        number = value.int_value
        if number:
            attrs[key] = ("int_value", number)
            continue
        kind = value.WhichOneof("value")
        if kind is None or kind == "string_value":  # unset, or the empty string: absent
            attrs[key] = None
        else:
            attrs[key] = (kind, getattr(value, kind))
    return attrs


def _lookup(name: str, record: _Attrs, resource: _Attrs) -> _Hit | None:
    """(kind, value) of the attribute on the record, else on the resource; None when absent or empty."""
    return record.get(name) or resource.get(name)


def _bad(name: str, expected: str, kind: str) -> _Unmappable:
    return _Unmappable(BAD_VALUE, f"attribute {name} must be {expected}, not {kind.removesuffix('_value')}")


def _as_int(name: str, kind: str, value: Any) -> int:
    if kind == "int_value":
        return int(value)
    if kind == "string_value" and _INT_TEXT.fullmatch(value):
        return int(value)
    if kind == "double_value" and math.isfinite(value) and value == int(value):
        return int(value)
    raise _bad(name, "an integer or a string of digits", kind if kind != "string_value" else "non-numeric string")


def _as_ms(name: str, kind: str, value: Any, unit_ms: float) -> int:
    if kind in ("int_value", "double_value") and math.isfinite(value):
        return math.floor(value * unit_ms + 0.5)
    raise _bad(name, "a finite number", kind)


def _trace_span_id(log: LogRecord) -> str | None:
    trace, span = log.trace_id, log.span_id
    if len(trace) not in (0, 16) or len(span) not in (0, 8):
        raise _Unmappable(BAD_VALUE, "trace_id/span_id has the wrong size")
    if not trace.strip(b"\0"):
        return None
    return f"{trace.hex()}-{span.hex()}" if span.strip(b"\0") else trace.hex()


def _value(rule: FieldRule, log: LogRecord, record: _Attrs, resource: _Attrs) -> Any:
    """The field's value from the first source that has one, or the rule's default.

    The reference semantics of a rule, for any rule shape; ``_compile_rule`` gives the same result
    faster for the shapes ``parse_mapping`` allows (the ones the mapping file can express)."""
    weak_success = False
    for src in rule.sources:
        if src.log_field is not None:
            if src.log_field == "trace_span_id":
                found: Any = _trace_span_id(log)
            else:
                nanos = getattr(log, src.log_field)
                found = nanos // 1_000_000 if nanos else None
            if found is not None:
                return found
            continue
        assert src.attribute is not None
        hit = _lookup(src.attribute, record, resource)
        if hit is None:
            continue
        kind, raw = hit
        if rule.type == "int":
            code = _as_int(src.attribute, kind, raw)
            if src.success_below is not None and code < src.success_below:
                weak_success = True  # "no failure seen": a lower source or an exception may still say more
                continue
            return code
        if rule.type == "duration":
            return _as_ms(src.attribute, kind, raw, src.unit_ms)
        if kind != "string_value":
            raise _bad(src.attribute, "a string", kind)
        text: str = raw.lstrip(rule.strip_leading) if rule.strip_leading else raw
        if src.prefix is not None and src.separator not in text:
            head = _lookup(src.prefix, record, resource)
            if head is not None:
                if head[0] != "string_value":
                    raise _bad(src.prefix, "a string", head[0])
                text = f"{head[1]}{src.separator}{text}"
        if rule.max_length is not None:
            text = text[: rule.max_length]
        if text:
            return text
    return _absent(rule)(record, resource, weak_success)


def _absent(rule: FieldRule) -> Callable[[_Attrs, _Attrs, bool], Any]:
    """What a rule gives when no source has a value: (record, resource, weak_success) -> the value;
    raises ``_Unmappable`` for a required field. Its constants are computed here, once."""
    if rule.required:
        names = ", ".join(s.attribute or s.log_field or "" for s in rule.sources)
        reason, detail = MISSING_REASONS[rule.name], f"none of {names} is set"

        def missing(record: _Attrs, resource: _Attrs, weak_success: bool) -> Any:
            raise _Unmappable(reason, detail)
        return missing
    default, with_exception, exception_names = rule.default, rule.default_with_exception, rule.exception_attributes
    weak_default = 0 if rule.type == "int" else default

    def fallback(record: _Attrs, resource: _Attrs, weak_success: bool) -> Any:
        if with_exception is not None and any(
                (record.get(a) or resource.get(a)) is not None for a in exception_names):
            return with_exception
        return weak_default if weak_success else default
    return fallback


def _compile_rule(rule: FieldRule) -> _Field:
    """The rule as one closure that does per record only what depends on the record: the sources'
    constants are unpacked into tuples and the branches on type and source kind are taken here, once.
    Same results, reasons and details as ``_value`` (which any shape not made below falls back to)."""
    absent = _absent(rule)
    attributes_only = all(s.attribute is not None and s.log_field is None for s in rule.sources)

    if rule.type == "int" and attributes_only:
        int_sources = tuple((s.attribute or "", s.success_below) for s in rule.sources)

        def int_field(log: LogRecord, record: _Attrs, resource: _Attrs) -> Any:
            weak_success = False
            for name, below in int_sources:
                hit = record.get(name) or resource.get(name)
                if hit is None:
                    continue
                kind, raw = hit
                code = raw if kind == "int_value" else _as_int(name, kind, raw)
                if below is not None and code < below:
                    weak_success = True  # "no failure seen": a lower source or an exception may still say more
                    continue
                return code
            return absent(record, resource, weak_success)
        return int_field

    if rule.type == "duration" and attributes_only:
        duration_sources = tuple((s.attribute or "", s.unit_ms) for s in rule.sources)

        def duration_field(log: LogRecord, record: _Attrs, resource: _Attrs) -> Any:
            for name, unit_ms in duration_sources:
                hit = record.get(name) or resource.get(name)
                if hit is not None:
                    kind, raw = hit
                    if (kind == "int_value" or kind == "double_value") and math.isfinite(raw):
                        return math.floor(raw * unit_ms + 0.5)
                    raise _bad(name, "a finite number", kind)
            return absent(record, resource, False)
        return duration_field

    if rule.type == "time" and all(s.log_field in ("time_unix_nano", "observed_time_unix_nano") for s in rule.sources):
        clocks = tuple(attrgetter(s.log_field or "") for s in rule.sources)

        def time_field(log: LogRecord, record: _Attrs, resource: _Attrs) -> Any:
            for clock in clocks:
                nanos = clock(log)
                if nanos:
                    return nanos // 1_000_000
            return absent(record, resource, False)
        return time_field

    if rule.type == "str" and all((s.attribute is None) != (s.log_field is None)
                                  and s.log_field in (None, "trace_span_id") for s in rule.sources):
        # (attribute, prefix, separator); attribute None is the trace_span_id log field
        str_sources = tuple((s.attribute, s.prefix, s.separator) for s in rule.sources)
        strip, max_length = rule.strip_leading, rule.max_length

        def str_field(log: LogRecord, record: _Attrs, resource: _Attrs) -> Any:
            for name, prefix, separator in str_sources:
                if name is None:
                    found = _trace_span_id(log)
                    if found is not None:
                        return found
                    continue
                hit = record.get(name) or resource.get(name)
                if hit is None:
                    continue
                kind, text = hit
                if kind != "string_value":
                    raise _bad(name, "a string", kind)
                if strip:
                    text = text.lstrip(strip)
                if prefix is not None and separator not in text:
                    head = record.get(prefix) or resource.get(prefix)
                    if head is not None:
                        if head[0] != "string_value":
                            raise _bad(prefix, "a string", head[0])
                        text = f"{head[1]}{separator}{text}"
                if max_length is not None:
                    text = text[:max_length]
                if text:
                    return text
            return absent(record, resource, False)
        return str_field

    return partial(_value, rule)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A mapping compiled for ``map_request``."""

    wanted: frozenset[str]  # every attribute name a rule reads (sources, prefixes, exception attributes)
    fields: tuple[tuple[str, _Field], ...]  # (field name, compiled rule), in the mapping's order


_PLANS: dict[int, tuple[Mapping, _Plan]] = {}


def _plan(mapping: Mapping) -> _Plan:
    """The compiled mapping, cached by identity (a Mapping may hold unhashable defaults; the cache
    keeps the Mapping itself alive so that its id cannot be reused by another)."""
    cached = _PLANS.get(id(mapping))
    if cached is not None and cached[0] is mapping:
        return cached[1]
    wanted = frozenset(
        name for rule in mapping.fields
        for name in (*(s.attribute for s in rule.sources), *(s.prefix for s in rule.sources),
                     *rule.exception_attributes)
        if name is not None)
    plan = _Plan(wanted, tuple((rule.name, _compile_rule(rule)) for rule in mapping.fields))
    if len(_PLANS) >= 16:
        _PLANS.clear()
    _PLANS[id(mapping)] = (mapping, plan)
    return plan


def map_request(
    request: ExportLogsServiceRequest, mapping: Mapping,
) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
    """Map every LogRecord of a parsed request (see ``decode_otlp_logs``)."""
    plan = _plan(mapping)
    wanted, fields = plan.wanted, plan.fields
    out: list[dict[str, Any]] = []
    rejects: list[tuple[int, str, str]] = []
    index = 0
    for resource_logs in request.resource_logs:
        resource = _attributes(resource_logs.resource.attributes, wanted)
        for scope_logs in resource_logs.scope_logs:
            for log in scope_logs.log_records:
                record = _attributes(log.attributes, wanted)
                mapped: dict[str, Any] = {}
                try:
                    for name, field in fields:
                        mapped[name] = field(log, record, resource)
                except _Unmappable as exc:
                    rejects.append((index, exc.reason, exc.detail))
                else:
                    out.append(mapped)
                index += 1
    return out, rejects


def record_payload(request: ExportLogsServiceRequest, index: int) -> bytes:
    """The ``index``-th log record (message order, as ``map_request`` counts) as a request of its
    own, with its resource and scope, in OTLP/protobuf: a dead letter's payload, so that replaying it
    decodes exactly that record again."""
    seen = 0
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            if index < seen + len(scope_logs.log_records):
                one = ExportLogsServiceRequest()
                rl = one.resource_logs.add()
                rl.resource.CopyFrom(resource_logs.resource)
                rl.schema_url = resource_logs.schema_url
                sl = rl.scope_logs.add()
                sl.scope.CopyFrom(scope_logs.scope)
                sl.schema_url = scope_logs.schema_url
                sl.log_records.add().CopyFrom(scope_logs.log_records[index - seen])
                return one.SerializeToString()
            seen += len(scope_logs.log_records)
    raise IndexError(index)


def decode_otlp_logs(
    payload: bytes, encoding: str, mapping: Mapping | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
    """One Kafka message (one ``ExportLogsServiceRequest``) -> (request-log dicts, unmappable records).

    ``encoding`` is ``otlp_proto`` or ``otlp_json`` (``sniff_encoding`` can tell). The dicts are in
    message order (resource, scope, record) and are meant for the worker's usual validation, e.g.
    ``msgspec.convert(d, RequestLog)``. Each unmappable record gives one ``(record_index, reason,
    detail)``: the index counts all log records of the message in that order, the reason is one of
    ``REASONS`` (the first problem found) and the detail names attributes, never their values.
    Raises ``OtlpDecodeError`` when the message cannot be parsed or holds no log records."""
    request = parse_request(payload, encoding)
    out, rejects = map_request(request, mapping if mapping is not None else load_mapping())
    if not out and not rejects:
        raise OtlpDecodeError("message holds no log records")
    return out, rejects
