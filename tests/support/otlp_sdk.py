"""OpenTelemetry log requests made by the real SDK (``opentelemetry-sdk`` and the OTLP exporter's
encoder), in the two encodings the Collector's Kafka exporter writes: never hand-written bytes."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

T_NS = 1_700_000_000_123_456_789


def sdk_logs(records: list[dict[str, Any]], resource: dict[str, Any] | None = None) -> list[Any]:
    """The SDK's finished log records for ``records`` (each: attributes, timestamp, observed,
    trace/span ids, exception), emitted through a real LoggerProvider with ``resource``."""
    exporter = InMemoryLogRecordExporter()
    attributes = {"cloud.region": "ap-singapore"} if resource is None else resource
    provider = LoggerProvider(resource=Resource.create(attributes))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("imtel.tests")
    for r in records:
        ctx = None
        if r.get("trace_id"):
            span = SpanContext(r["trace_id"], r.get("span_id", 0), False, TraceFlags(1))
            ctx = trace.set_span_in_context(NonRecordingSpan(span))
        logger.emit(attributes=r.get("attributes"), timestamp=r.get("timestamp", T_NS),
                    observed_timestamp=r.get("observed"), context=ctx, exception=r.get("exception"),
                    body="request served")
    provider.shutdown()
    return list(exporter.get_finished_logs())


def sdk_request(records: list[dict[str, Any]], resource: dict[str, Any] | None = None) -> ExportLogsServiceRequest:
    return encode_logs(sdk_logs(records, resource))


def _hex_ids(node: Any) -> None:
    """pdata's JSON writes trace/span ids as hex where the protobuf JSON mapping writes base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "trace_id", "span_id") and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def otlp_json(request: ExportLogsServiceRequest, snake_case: bool = False) -> bytes:
    doc = MessageToDict(request, use_integers_for_enums=True, preserving_proto_field_name=snake_case)
    _hex_ids(doc)
    return json.dumps(doc, separators=(",", ":")).encode()


def encode(request: ExportLogsServiceRequest, encoding: str) -> bytes:
    return request.SerializeToString() if encoding == "otlp_proto" else otlp_json(request)


