"""The decode boundary: Kafka message bytes -> typed records, or reasons.

Errors are data here. A message may carry one JSON object, a JSON array of objects, or NDJSON lines
(as OTLP-style exporters and log shippers batch); a whole batch is decoded by one msgspec call and
only falls back to per-element decoding when something in it is invalid, so valid neighbours of a bad
record still flow. Nothing past this module sees malformed input.

Reasons are a closed set (``REASONS``) because they become a metric label; the free-text ``detail``
names the field and the rule, never the value (values may be personal data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from pipeline.ingest import otlp
from pipeline.ingest.records import MonitoringSample, RequestLog

T = TypeVar("T", RequestLog, MonitoringSample)

REASONS = (
    "empty", "invalid_json", "not_object", "missing_field", "wrong_type", "out_of_range",
    "invalid_ip", "too_old", "in_future", "inconsistent", "insert_rejected",
    # whole messages (pipeline/ingest/limits.py): not decoded, or one letter for many invalid records
    "too_large", "too_many_records", "many_invalid",
    # OpenTelemetry logs (pipeline/ingest/otlp.py): not an ExportLogsServiceRequest, or a record that
    # does not map to a request log
    "invalid_otlp", *otlp.REASONS,
)
WHOLE_MESSAGE = -1
# What msgspec raises on bad input: invalid UTF-8 inside a string is a UnicodeDecodeError, not a
# DecodeError, and a deeply nested document a RecursionError.
SYNTAX = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)
BAD_INPUT = (msgspec.ValidationError, *SYNTAX)


@dataclass(frozen=True, slots=True)
class Reject:
    """One invalid record: where it sat in the message, why, and its original bytes."""

    index: int
    reason: str
    detail: str
    raw: bytes


@dataclass(slots=True)
class Decoded(Generic[T]):
    """What one message yields: valid records in message order with their indices in the message
    (``indices`` is None when they are simply elements 0..n-1, the common case, kept cheap), and
    rejects."""

    items: list[T]
    indices: list[int] | None
    rejects: list[Reject]

    @property
    def records(self) -> list[tuple[int, T]]:
        """``(index, record)`` pairs."""
        return list(zip(range(len(self.items)) if self.indices is None else self.indices, self.items, strict=True))


def classify(exc: Exception) -> tuple[str, str]:
    """Map a msgspec error to (reason, detail). msgspec messages name paths and rules, not values."""
    if isinstance(exc, RecursionError):
        return "invalid_json", "JSON nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "invalid_json", "invalid UTF-8 in a string"
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        if text.startswith("Object missing required field"):
            return "missing_field", text
        if text.startswith("Expected `object`"):
            return "not_object", text
        if text.startswith("Expected `") and ", got `" in text:
            return "wrong_type", text
        return "out_of_range", text
    return "invalid_json", "JSON is malformed" if "malformed" in text or "truncated" in text else text[:200]


class Decoder(Generic[T]):
    """Decoder for one record type; reusable and allocation-light (msgspec decoders are cached)."""

    def __init__(self, record_type: type[T], otlp_logs: bool = False) -> None:
        self.record_type: type[T] = record_type
        self.otlp_logs = otlp_logs
        self._one: msgspec.json.Decoder[T] = msgspec.json.Decoder(record_type)
        self._many = msgspec.json.Decoder(list[record_type])  # type: ignore[valid-type]
        self._raw_list = msgspec.json.Decoder(list[msgspec.Raw])
        self.decode_one: Callable[[bytes], T] = self._one.decode  # one object, raises if not exactly that
        self._lines: Callable[[bytes], list[T]] = self._one.decode_lines

    def decode(self, data: bytes | None) -> Decoded[T]:
        """Decode one Kafka message value (object, array, or NDJSON)."""
        if not data or not data.strip():
            return Decoded([], None, [Reject(WHOLE_MESSAGE, "empty", "message has no content", data or b"")])
        head = data.lstrip()[:1]
        if head == b"[":
            return self._decode_array(data)
        if self.otlp_logs and (encoding := otlp.sniff_encoding(data)) is not None:
            return self._decode_otlp(data, encoding)
        if b"\n" in data:  # NDJSON, most likely: one call, accepted if it gave exactly one value per line
            try:
                items = self._lines(data)
            except BAD_INPUT:
                pass
            else:
                if items and len(items) == data.count(b"\n") + (not data.endswith(b"\n")):
                    return Decoded(items, None, [])
        try:
            return Decoded([self._one.decode(data)], None, [])
        except BAD_INPUT as exc:
            lines = [line for line in data.split(b"\n") if line.strip()]
            if len(lines) > 1 and any(line.lstrip()[:1] == b"{" for line in lines):
                try:  # NDJSON, all valid: one call (each line one value, else per line below)
                    items = self._lines(data)
                    if len(items) == len(lines):
                        return Decoded(items, None, [])
                except BAD_INPUT:
                    pass
                return self._decode_parts(lines)
            return Decoded([], None, [Reject(0, *classify(exc), data)])

    def _decode_otlp(self, data: bytes, encoding: str) -> Decoded[T]:
        """An OpenTelemetry ``ExportLogsServiceRequest`` (the Collector's Kafka exporter, ``otlp_proto``
        or ``otlp_json``): each log record mapped to a request log (``schemas/otlp_mapping.yaml``), then
        validated like any JSON record. A record that does not map, or maps to an invalid request log,
        is rejected with its own one-record request as its bytes, so a replay decodes just that one."""
        try:
            request = otlp.parse_request(data, encoding)
            mapped, unmapped = otlp.map_request(request, otlp.load_mapping())
        except otlp.OtlpDecodeError as exc:
            return Decoded([], None, [Reject(WHOLE_MESSAGE, "invalid_otlp", str(exc), data)])
        if not mapped and not unmapped:
            return Decoded([], None, [Reject(WHOLE_MESSAGE, "empty", "the request holds no log records", data)])
        out: Decoded[T] = Decoded([], [], [])
        assert out.indices is not None
        bad = {index: (reason, detail) for index, reason, detail in unmapped}
        fields = iter(mapped)
        for index in range(len(mapped) + len(unmapped)):
            why = bad.get(index)
            if why is None:
                try:
                    out.items.append(msgspec.convert(next(fields), self.record_type))
                    out.indices.append(index)
                    continue
                except msgspec.ValidationError as exc:
                    why = classify(exc)
            out.rejects.append(Reject(index, *why, otlp.record_payload(request, index)))
        if not out.rejects:
            out.indices = None
        return out

    def _decode_array(self, data: bytes) -> Decoded[T]:
        try:
            items = self._many.decode(data)
            if items:
                return Decoded(items, None, [])
            return Decoded([], None, [Reject(WHOLE_MESSAGE, "empty", "the array holds no records", data)])
        except msgspec.ValidationError:
            pass
        except SYNTAX as exc:
            return Decoded([], None, [Reject(WHOLE_MESSAGE, *classify(exc), data)])
        try:
            parts = self._raw_list.decode(data)
        except SYNTAX as exc:
            return Decoded([], None, [Reject(WHOLE_MESSAGE, *classify(exc), data)])
        return self._decode_parts([bytes(p) for p in parts])

    def _decode_parts(self, parts: list[bytes]) -> Decoded[T]:
        out: Decoded[T] = Decoded([], [], [])
        assert out.indices is not None
        for index, part in enumerate(parts):
            try:
                out.items.append(self._one.decode(part))
                out.indices.append(index)
            except BAD_INPUT as exc:
                out.rejects.append(Reject(index, *classify(exc), part))
        if not out.rejects:
            out.indices = None
        return out


def oldest_kept(now_ms: int, max_age_ms: int, granularity_ms: int = 1) -> int:
    """The oldest event time that is not already past its table's TTL.

    The TTLs count from the start of the event's day (request logs) or hour (monitoring data), so a
    row expires when ``trunc(t) + retention <= now``, i.e. exactly when ``t`` is earlier than the
    start of the unit holding ``now - retention``, plus one unit."""
    if granularity_ms <= 1:
        return now_ms - max_age_ms
    return (now_ms - max_age_ms) // granularity_ms * granularity_ms + granularity_ms


def time_reason(event_ms: int, now_ms: int, max_age_ms: int, max_skew_ms: int, granularity_ms: int = 1) -> str | None:
    """The documented timestamp rule: already past its retention (the table's TTL, see
    ``oldest_kept``) -> ``too_old``; more than the allowed clock skew ahead -> ``in_future``. Such
    records are dead-lettered, never silently stored (a row already past its TTL would vanish at the
    next merge; one from the future would outlive it)."""
    if event_ms < oldest_kept(now_ms, max_age_ms, granularity_ms):
        return "too_old"
    if event_ms > now_ms + max_skew_ms:
        return "in_future"
    return None
