"""Typed record formats, mirroring ``schemas/*.schema.json``.

msgspec validates while it decodes (~2 µs per record), which is why the hot path uses these structs
instead of calling a JSON Schema validator per event. ``tests/unit/test_schema_agreement.py`` proves
on a generated corpus that these structs accept exactly what the JSON Schemas accept (the one
documented difference: an integer field written as ``1.0`` is valid JSON Schema but rejected here).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

UInt32 = Annotated[int, msgspec.Meta(ge=1, le=4_294_967_295)]
Count = Annotated[int, msgspec.Meta(ge=0, le=4_294_967_295)]
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799_999)]
# The schema's pattern is ECMA-262, where ``$`` is the end of the text. Python's ``$`` also matches
# before a final newline, so the struct spells it ``\Z``; RE2 (the vectorised check) spells it ``$``.
INTERFACE_PATTERN_RE2 = r"^[A-Za-z0-9_./-]+$"
Interface = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_./-]+\Z")]
LooseInterface = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
IpText = Annotated[str, msgspec.Meta(max_length=64)]
LatencyMs = Annotated[int, msgspec.Meta(ge=0, le=3_600_000)]
ErrorCode = Annotated[int, msgspec.Meta(ge=-2_147_483_648, le=2_147_483_647)]
Cause = Annotated[str, msgspec.Meta(max_length=2048)]
Label32 = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Reporter = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
WindowSeconds = Annotated[int, msgspec.Meta(ge=1, le=3600)]
AvgMs = Annotated[float, msgspec.Meta(ge=0, le=3_600_000)]


class RequestLog(msgspec.Struct, frozen=True, gc=False):
    """One interface request (policy: Log Data)."""

    sdk_app_id: UInt32
    interface: Interface
    request_time: EpochMs
    client_ip: IpText
    latency_ms: LatencyMs
    error_code: ErrorCode
    region: Label32
    platform: Label32
    request_id: RequestId
    exception: Cause | None = None


class MonitoringSample(msgspec.Struct, frozen=True, gc=False):
    """Counters of one app interface over one interval (policy: Monitoring Data)."""

    sdk_app_id: UInt32
    interface: Interface
    window_start: EpochMs
    window_seconds: WindowSeconds
    requests: Count
    failures: Count
    latency_avg_ms: AvgMs
    reporter: Reporter
    latency_max_ms: LatencyMs | None = None


def loose(strict: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """The same struct without the ``interface`` pattern, for the hot path.

    msgspec checks a pattern with Python's ``re`` per record (about half the decode time); the hot path
    decodes with this variant and checks the pattern for a whole batch at once with RE2
    (``INTERFACE_PATTERN_RE2``; the native decoder, which takes most messages, checks the same byte
    class while it scans the name, held to this pattern by ``tests/unit/test_fastlog.py``). Anything
    that fails is decoded again with the strict struct, so the result is exactly the strict one.
    ``gc=False``: records hold only scalars and strings, no cycles."""
    fields = []
    for f in msgspec.structs.fields(strict):
        tp = LooseInterface if f.name == "interface" else f.type
        fields.append((f.name, tp) if f.required else (f.name, tp, f.default))
    return msgspec.defstruct(f"Loose{strict.__name__}", fields, frozen=True, gc=False)


LooseRequestLog = loose(RequestLog)
LooseMonitoringSample = loose(MonitoringSample)
