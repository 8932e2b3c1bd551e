"""The benchmark's fixed workload: realistic request logs, their framing, and what ClickHouse must hold.

Records come from ``pipeline.dev.generate.Traffic`` (~250-byte JSON request logs, 50 apps with Zipf-skewed
volumes, real interface names, IM error codes, IPv4/IPv6 exit IPs), with a fixed seed so every run
and every contender sees the same records. Their event times are spread evenly over the ten minutes
before generation, so the per-minute aggregates have several minutes and nothing is ``too_old``.

Two framings of the same kind of records:
- ``a``: one record per Kafka message (a JSON object), as an API gateway sends them;
- ``b``: 100-500 records per message, a JSON array or NDJSON lines (picked per message by the seeded
  generator), as OTLP-style exporters and log shippers batch.

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

    @property
    def batched(self) -> bool:
        return self.batch_max > 1

    def describe(self) -> str:
        if not self.batched:
            return "one record per message (JSON object)"
        return f"{self.batch_min}-{self.batch_max} records per message (JSON array or NDJSON)"


def workload(name: str, records: int, seed: int = 20261122) -> Workload:
    """The named workload (``a`` single records, ``b`` batched) with ``records`` records."""
    if name == "a":
        return Workload("a", records, 1, 1, seed)
    if name == "b":
        return Workload("b", records, 100, 500, seed)
    raise ValueError(f"unknown workload {name!r} (expected a or b)")


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


def messages(w: Workload, end_ms: int, expected: Expected | None = None) -> Iterator[Message]:
    """The workload's messages in order; records are also added to ``expected`` when given."""
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
        yield Message(str(recs[0]["sdk_app_id"]).encode(), frame(recs, ndjson, encoder), n)


def templates(w: Workload, count: int) -> list[Message]:
    """Messages for the paced freshness phase: their event time is ``TIME_PLACEHOLDER``, stamped with
    the send time by ``stamp`` (so freshness measures the contender, not the producer's batching)."""
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
