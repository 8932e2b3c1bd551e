"""Columnar buffers between the decoder and the ClickHouse sink.

A buffer collects validated, minimised records of many Kafka messages as Arrow record batches (one per
consumed batch and topic, built column by column), plus the dead letters met on the way and, per
partition, the next offset to commit once everything buffered is acknowledged. At flush the batches
become one Arrow table per ClickHouse table: one insert per flush.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

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


def _column(values: list[Any], type_: pa.DataType) -> pa.Array:
    return pa.array(values, type=type_)


def _interface(records: Sequence[Any], checked: pa.Array | None) -> pa.Array:
    if checked is not None and len(checked) == len(records):
        return checked
    return pa.array(list(map(attrgetter("interface"), records)), pa.string())


def log_batch(records: Sequence[RequestLog], times: np.ndarray, nets: pa.Array, topic_id: str,
              partitions: Sequence[int], offsets: Sequence[int], indices: Sequence[int],
              interface: pa.Array | None = None) -> pa.RecordBatch:
    """Columns of many validated request logs at once (no per-record Python beyond one attribute
    read per column): the hot path builds one of these per consumed batch, per topic. ``times`` (epoch
    ms) and ``nets`` are the columns the processor already built to apply its rules."""
    n = len(records)
    get = {name: list(map(attrgetter(name), records)) for name in _LOG_FIELDS}
    exception = pa.array(get["exception"], pa.string()).fill_null("")
    return pa.RecordBatch.from_arrays([
        pa.array(times, pa.int64()).cast(LOG_SCHEMA.field("request_time").type),
        _column(get["sdk_app_id"], pa.uint32()), _interface(records, interface),
        _column(get["request_id"], pa.string()), nets,
        _column(get["latency_ms"], pa.uint32()), _column(get["error_code"], pa.int32()), exception,
        _column(get["region"], pa.string()), _column(get["platform"], pa.string()),
        pa.array([topic_id] * n, pa.string()), pa.array(partitions, pa.uint16()),
        pa.array(offsets, pa.uint64()), pa.array(indices, pa.uint32()),
    ], schema=_LOG_BODY)


def sample_batch(records: Sequence[MonitoringSample], times: np.ndarray, topic_id: str, partitions: Sequence[int],
                 offsets: Sequence[int], indices: Sequence[int], interface: pa.Array | None = None
                 ) -> pa.RecordBatch:
    """Columns of many validated monitoring samples (see ``log_batch``)."""
    n = len(records)
    get = {name: list(map(attrgetter(name), records)) for name in _SAMPLE_FIELDS}
    return pa.RecordBatch.from_arrays([
        pa.array(times, pa.int64()).cast(SAMPLE_SCHEMA.field("window_start").type),
        _column(get["sdk_app_id"], pa.uint32()), _interface(records, interface),
        _column(get["window_seconds"], pa.uint16()), _column(get["requests"], pa.uint32()),
        _column(get["failures"], pa.uint32()), _column(get["latency_avg_ms"], pa.float64()),
        pa.array(get["latency_max_ms"], pa.uint32()).fill_null(0), _column(get["reporter"], pa.string()),
        pa.array([topic_id] * n, pa.string()), pa.array(partitions, pa.uint16()),
        pa.array(offsets, pa.uint64()), pa.array(indices, pa.uint32()),
    ], schema=_SAMPLE_BODY)


_LOG_FIELDS = ("sdk_app_id", "request_id", "latency_ms", "error_code", "exception",
               "region", "platform")
_SAMPLE_FIELDS = ("sdk_app_id", "window_seconds", "requests", "failures",
                  "latency_avg_ms", "latency_max_ms", "reporter")
_LOG_BODY = pa.schema(list(LOG_SCHEMA)[:-1])
_SAMPLE_BODY = pa.schema(list(SAMPLE_SCHEMA)[:-1])


def _with_batch_id(batches: list[pa.RecordBatch], body: pa.Schema, schema: pa.Schema, batch_id: int) -> pa.Table:
    table = pa.Table.from_batches(batches, schema=body)
    ids = pa.array(np.full(table.num_rows, batch_id, dtype=np.uint64))
    return table.append_column(schema.field("ingest_batch"), ids)


@dataclass
class Buffer:
    """Everything read since the last acknowledged flush: Arrow record batches, dead letters, and
    the next offset to commit per partition."""

    logs: list[pa.RecordBatch] = field(default_factory=list)
    samples: list[pa.RecordBatch] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    started: float = 0.0
    records: int = 0
    batch_id: int = 0
    done: set[str] = field(default_factory=set)  # flush steps already acknowledged
    attempted: set[str] = field(default_factory=set)  # steps tried at least once (maybe applied)
    tables: dict[str, pa.Table] = field(default_factory=dict)  # built once per flush
    pending: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # row ranges not yet stored
    bad_rows: dict[str, list[int]] = field(default_factory=dict)  # rows refused as bad data so far
    reject_codes: dict[int, int | None] = field(default_factory=dict)
    rejected: list[DeadLetter] = field(default_factory=list)  # rows ClickHouse refused (bad data)

    def __len__(self) -> int:
        return self.records

    def touch(self, now: float) -> None:
        if not self.started:
            self.started = now

    def add_logs(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.logs.append(batch)
            self.records += batch.num_rows

    def add_samples(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.samples.append(batch)
            self.records += batch.num_rows

    def add_dead(self, reject: Reject, o: Origin, key: bytes | None) -> None:
        self.dead.append(DeadLetter(o, reject.reason, reject.detail, reject.raw, key))
        self.records += 1

    def log_table(self, batch_id: int) -> pa.Table:
        return _with_batch_id(self.logs, _LOG_BODY, LOG_SCHEMA, batch_id)

    def sample_table(self, batch_id: int) -> pa.Table:
        return _with_batch_id(self.samples, _SAMPLE_BODY, SAMPLE_SCHEMA, batch_id)


def dead_letter_table(letters: Sequence[DeadLetter], batch_id: int) -> pa.Table:
    """The ``dead_letters`` ledger rows of some dead letters (reason and size, never the payload)."""
    d = letters
    return pa.Table.from_pydict({
        "src_topic": [x.origin.topic for x in d], "src_topic_id": [x.origin.topic_id for x in d],
        "src_partition": [x.origin.partition for x in d], "src_offset": [x.origin.offset for x in d],
        "src_index": [x.origin.index for x in d], "reason": [x.reason for x in d],
        "detail": [x.detail for x in d], "payload_bytes": [len(x.raw) for x in d],
        "ingest_batch": [batch_id] * len(d)}, schema=DEAD_LETTER_SCHEMA)
