"""The benchmark's fixed workload: realistic request logs, their framing, and what ClickHouse must hold.

Records come from ``pipeline.dev.generate.Traffic`` (~250-byte JSON request logs, 50 apps with Zipf-skewed
volumes, real interface names, IM error codes, IPv4/IPv6 exit IPs), with a fixed seed so every run
and every contender sees the same records. Their event times are spread evenly over the ten minutes
before generation, so the per-minute aggregates have several minutes and nothing is ``too_old``.

Three framings of the same kind of records:
- ``a``: one record per Kafka message (a JSON object), as an API gateway sends them;
- ``b``: 100-500 records per message, a JSON array or NDJSON lines (picked per message by the seeded
  generator), as OTLP-style exporters and log shippers batch;
- ``otlp``: b's records and batches (the same seeded stream, its first records), each message an
  OpenTelemetry ``ExportLogsServiceRequest`` in protobuf (``otlp_proto``), as the OpenTelemetry
  Collector's Kafka exporter writes it: one LogRecord per record, its fields as the attributes
  ``schemas/otlp_mapping.yaml`` reads first (``otlp_request``), built directly with opentelemetry-proto.

The key of every message is the ``sdk_app_id`` of its (first) record. ``Expected`` accumulates what
ClickHouse must hold afterwards: the row count and, per app, requests, failures and latency sum.
Pure: no Kafka, no clock (the end time is passed in).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pipeline.dev.generate import Traffic

APPS = 50
SPAN_MS = 600_000  # event times cover the ten minutes before the workload was generated
TIME_PLACEHOLDER = b"9999999999999"  # 13 digits, like an epoch in ms: replaced at send time


@dataclass(frozen=True)
class Workload:
    """One workload: a name, its size and its framing."""

    name: str
    records: int
    batch_min: int = 1
    batch_max: int = 1
    seed: int = 20261122
    encoding: str = "json"  # "json" (ours) or "otlp_proto" (ExportLogsServiceRequest messages)

    @property
    def batched(self) -> bool:
        return self.batch_max > 1

    def describe(self) -> str:
        if self.encoding == "otlp_proto":
            return (f"{self.batch_min}-{self.batch_max} records per message (OTLP/protobuf ExportLogsServiceRequest, "
                    "the records of b)")
        if not self.batched:
            return "one record per message (JSON object)"
        return f"{self.batch_min}-{self.batch_max} records per message (JSON array or NDJSON)"


def workload(name: str, records: int, seed: int = 20261122) -> Workload:
    """The named workload (``a`` single records, ``b`` batched, ``otlp`` b's as OTLP) with ``records`` records."""
    if name == "a":
        return Workload("a", records, 1, 1, seed)
    if name == "b":
        return Workload("b", records, 100, 500, seed)
    if name == "otlp":
        return Workload("otlp", records, 100, 500, seed, "otlp_proto")
    raise ValueError(f"unknown workload {name!r} (expected a, b or otlp)")


@dataclass
class Expected:
    """What ClickHouse must hold for a set of records: rows, and per app (requests, failures, latency sum)."""

    rows: int = 0
    per_app: dict[int, list[int]] = field(default_factory=dict)

    def add(self, rec: dict[str, Any]) -> None:
        self.rows += 1
        acc = self.per_app.setdefault(int(rec["sdk_app_id"]), [0, 0, 0])
        acc[0] += 1
        acc[1] += rec["error_code"] != 0
        acc[2] += int(rec["latency_ms"])

    def copy(self) -> Expected:
        return Expected(self.rows, {k: list(v) for k, v in self.per_app.items()})

    def totals(self) -> dict[str, int]:
        """Workload-wide sums (a short checksum for reports)."""
        return {"rows": self.rows, "requests": sum(v[0] for v in self.per_app.values()),
                "failures": sum(v[1] for v in self.per_app.values()),
                "latency_sum_ms": sum(v[2] for v in self.per_app.values())}

    def as_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "per_app": {str(k): v for k, v in sorted(self.per_app.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Expected:
        return cls(int(data["rows"]), {int(k): [int(x) for x in v] for k, v in data["per_app"].items()})


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka message of the workload."""

    key: bytes
    value: bytes
    records: int


def frame(records: list[dict[str, Any]], ndjson: bool, encoder: msgspec.json.Encoder) -> bytes:
    """Encode records as one message value: an object, a JSON array, or NDJSON lines."""
    if len(records) == 1 and not ndjson:
        return encoder.encode(records[0])
    if ndjson:
        return b"\n".join(encoder.encode(r) for r in records) + b"\n"
    return encoder.encode(records)


# the attribute each request-log field is sent as on the OTLP workload (the first source the mapping reads)
OTLP_ATTRIBUTES = {"sdk_app_id": "im.sdk_app_id", "interface": "http.route", "client_ip": "client.address",
                   "latency_ms": "im.latency_ms", "error_code": "im.error_code", "region": "im.region",
                   "platform": "im.platform", "request_id": "im.request_id", "exception": "exception.message"}


def otlp_request(records: list[dict[str, Any]]) -> bytes:
    """Records as one serialized ``ExportLogsServiceRequest``: one resource and scope, one LogRecord per
    record, its event time as ``time_unix_nano`` and every other field as the attribute ``OTLP_ATTRIBUTES``
    names (ints as int values, text as strings), so the pipeline maps each back to the same record."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name", value=AnyValue(string_value="im-gateway"))
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "imtel.bench"
    for rec in records:
        log = scope.log_records.add(time_unix_nano=int(rec["request_time"]) * 1_000_000, severity_number=9,
                                    severity_text="INFO")
        log.body.string_value = "request served"
        for name, key in OTLP_ATTRIBUTES.items():
            value = rec.get(name)
            if value is None:
                continue
            log.attributes.add(key=key, value=AnyValue(int_value=value) if isinstance(value, int)
                               else AnyValue(string_value=str(value)))
    return request.SerializeToString()


def messages(w: Workload, end_ms: int, expected: Expected | None = None) -> Iterator[Message]:
    """The workload's messages in order; records are also added to ``expected`` when given. The same
    seed gives the same records and batches whatever the encoding (``otlp`` is b's stream)."""
    traffic = Traffic(apps=APPS, seed=w.seed)
    framing = random.Random(w.seed + 1)
    encoder = msgspec.json.Encoder()
    start_ms, produced = end_ms - SPAN_MS, 0
    while produced < w.records:
        n = min(framing.randint(w.batch_min, w.batch_max), w.records - produced)
        recs = [traffic.request_log(start_ms + (produced + i) * SPAN_MS // w.records) for i in range(n)]
        produced += n
        if expected is not None:
            for rec in recs:
                expected.add(rec)
        ndjson = w.batched and framing.random() < 0.5
        value = otlp_request(recs) if w.encoding == "otlp_proto" else frame(recs, ndjson, encoder)
        yield Message(str(recs[0]["sdk_app_id"]).encode(), value, n)


def templates(w: Workload, count: int) -> list[Message]:
    """Messages for the paced freshness phase: their event time is ``TIME_PLACEHOLDER``, stamped with
    the send time by ``stamp`` (so freshness measures the contender, not the producer's batching).
    JSON workloads only: protobuf's varint times cannot be stamped in place."""
    if w.encoding != "json":
        raise ValueError(f"workload {w.name} has no freshness templates (JSON workloads only)")
    traffic = Traffic(apps=APPS, seed=w.seed + 7)
    framing = random.Random(w.seed + 8)
    encoder = msgspec.json.Encoder()
    out = []
    for _ in range(count):
        n = framing.randint(w.batch_min, w.batch_max)
        recs = [dict(traffic.request_log(0), request_time=int(TIME_PLACEHOLDER)) for _ in range(n)]
        ndjson = w.batched and framing.random() < 0.5
        out.append(Message(str(recs[0]["sdk_app_id"]).encode(), frame(recs, ndjson, encoder), n))
    return out


def stamp(value: bytes, now_ms: int) -> bytes:
    """A template message with every record's event time set to ``now_ms``."""
    return value.replace(TIME_PLACEHOLDER, b"%013d" % now_ms)
