"""Columnar buffers between the decoder and the ClickHouse sink.

A buffer collects validated, minimised records of many Kafka messages as columns, plus the dead
letters met on the way and, per partition, the next offset to commit once everything buffered is
acknowledged. ``to_arrow()`` hands the sink one Arrow table per table: one insert per flush.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .decode import Reject
from .records import MonitoringSample, RequestLog

LOG_SCHEMA = pa.schema([
    ("request_time", pa.timestamp("ms", tz="UTC")), ("sdk_app_id", pa.uint32()), ("interface", pa.string()),
    ("request_id", pa.string()), ("client_net", pa.string()), ("latency_ms", pa.uint32()),
    ("error_code", pa.int32()), ("exception", pa.string()), ("region", pa.string()), ("platform", pa.string()),
    ("src_topic_id", pa.string()), ("src_partition", pa.uint16()), ("src_offset", pa.uint64()),
    ("src_index", pa.uint32()), ("ingest_batch", pa.uint64()),
])
SAMPLE_SCHEMA = pa.schema([
    ("window_start", pa.timestamp("ms", tz="UTC")), ("sdk_app_id", pa.uint32()), ("interface", pa.string()),
    ("window_seconds", pa.uint16()), ("requests", pa.uint32()), ("failures", pa.uint32()),
    ("latency_avg_ms", pa.float64()), ("latency_max_ms", pa.uint32()), ("reporter", pa.string()),
    ("src_topic_id", pa.string()), ("src_partition", pa.uint16()), ("src_offset", pa.uint64()),
    ("src_index", pa.uint32()), ("ingest_batch", pa.uint64()),
])
DEAD_LETTER_SCHEMA = pa.schema([
    ("src_topic", pa.string()), ("src_topic_id", pa.string()), ("src_partition", pa.uint16()),
    ("src_offset", pa.uint64()), ("src_index", pa.int32()), ("reason", pa.string()), ("detail", pa.string()),
    ("payload_bytes", pa.uint32()), ("ingest_batch", pa.uint64()),
])


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: topic (name and id), partition, offset, index in the message."""

    topic: str
    topic_id: str
    partition: int
    offset: int
    index: int


@dataclass(slots=True)
class DeadLetter:
    """An invalid record on its way to the dead-letter topic and the ledger."""

    origin: Origin
    reason: str
    detail: str
    raw: bytes
    key: bytes | None


def new_batch_id() -> int:
    """Unique, roughly time-ordered id of one flush (ms << 20 | random): min-max-indexable."""
    return (time.time_ns() // 1_000_000) << 20 | int.from_bytes(np.random.bytes(3), "big") & 0xFFFFF


@dataclass
class Buffer:
    """Everything read since the last acknowledged flush."""

    logs: dict[str, list] = field(default_factory=lambda: {n: [] for n in LOG_SCHEMA.names})
    samples: dict[str, list] = field(default_factory=lambda: {n: [] for n in SAMPLE_SCHEMA.names})
    dead: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    started: float = 0.0
    records: int = 0
    batch_id: int = 0
    done: set[str] = field(default_factory=set)  # flush steps already acknowledged

    def __len__(self) -> int:
        return self.records

    def touch(self, now: float) -> None:
        if not self.started:
            self.started = now

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        """Remember that offsets up to ``offset`` of this partition are covered by this buffer."""
        self.next_offsets[(topic, partition)] = offset + 1

    def add_log(self, r: RequestLog, net: str, o: Origin) -> None:
        c = self.logs
        c["request_time"].append(r.request_time)
        c["sdk_app_id"].append(r.sdk_app_id)
        c["interface"].append(r.interface)
        c["request_id"].append(r.request_id)
        c["client_net"].append(net)
        c["latency_ms"].append(r.latency_ms)
        c["error_code"].append(r.error_code)
        c["exception"].append(r.exception or "")
        c["region"].append(r.region)
        c["platform"].append(r.platform)
        c["src_topic_id"].append(o.topic_id)
        c["src_partition"].append(o.partition)
        c["src_offset"].append(o.offset)
        c["src_index"].append(o.index)
        self.records += 1

    def add_sample(self, s: MonitoringSample, o: Origin) -> None:
        c = self.samples
        c["window_start"].append(s.window_start)
        c["sdk_app_id"].append(s.sdk_app_id)
        c["interface"].append(s.interface)
        c["window_seconds"].append(s.window_seconds)
        c["requests"].append(s.requests)
        c["failures"].append(s.failures)
        c["latency_avg_ms"].append(s.latency_avg_ms)
        c["latency_max_ms"].append(s.latency_max_ms or 0)
        c["reporter"].append(s.reporter)
        c["src_topic_id"].append(o.topic_id)
        c["src_partition"].append(o.partition)
        c["src_offset"].append(o.offset)
        c["src_index"].append(o.index)
        self.records += 1

    def add_dead(self, reject: Reject, o: Origin, key: bytes | None) -> None:
        self.dead.append(DeadLetter(o, reject.reason, reject.detail, reject.raw, key))
        self.records += 1

    def log_table(self, batch_id: int) -> pa.Table:
        n = len(self.logs["request_time"])
        self.logs["ingest_batch"] = [batch_id] * n
        return pa.Table.from_pydict(self.logs, schema=LOG_SCHEMA)

    def sample_table(self, batch_id: int) -> pa.Table:
        n = len(self.samples["window_start"])
        self.samples["ingest_batch"] = [batch_id] * n
        return pa.Table.from_pydict(self.samples, schema=SAMPLE_SCHEMA)

    def dead_letter_table(self, batch_id: int) -> pa.Table:
        d = self.dead
        return pa.Table.from_pydict({
            "src_topic": [x.origin.topic for x in d], "src_topic_id": [x.origin.topic_id for x in d],
            "src_partition": [x.origin.partition for x in d], "src_offset": [x.origin.offset for x in d],
            "src_index": [x.origin.index for x in d], "reason": [x.reason for x in d],
            "detail": [x.detail for x in d], "payload_bytes": [len(x.raw) for x in d],
            "ingest_batch": [batch_id] * len(d)}, schema=DEAD_LETTER_SCHEMA)
