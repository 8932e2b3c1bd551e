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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ingest.decode import Reject
from pipeline.ingest.fastlog import Columns
from pipeline.ingest.privacy import scrub_causes
from pipeline.ingest.records import MonitoringSample, RequestLog

# interface, region, platform and src_topic_id are LowCardinality in ClickHouse: Arrow dictionaries all
# the way to the insert body, from the native decoder, which interns the first three
# (``fastlog.DICTIONARY_COLUMNS``), and from ``_origin`` (one topic id per batch).
LOW_CARDINALITY = pa.dictionary(pa.int32(), pa.string())
LOG_SCHEMA = pa.schema([
    ("request_time", pa.timestamp("ms", tz="UTC")), ("sdk_app_id", pa.uint32()), ("interface", LOW_CARDINALITY),
    ("request_id", pa.string()), ("client_net", pa.string()), ("latency_ms", pa.uint32()),
    ("error_code", pa.int32()), ("exception", pa.string()), ("region", LOW_CARDINALITY),
    ("platform", LOW_CARDINALITY),
    ("src_topic_id", LOW_CARDINALITY), ("src_partition", pa.uint16()), ("src_offset", pa.uint64()),
    ("src_index", pa.uint32()),
])
SAMPLE_SCHEMA = pa.schema([
    ("window_start", pa.timestamp("ms", tz="UTC")), ("sdk_app_id", pa.uint32()), ("interface", pa.string()),
    ("window_seconds", pa.uint16()), ("requests", pa.uint32()), ("failures", pa.uint32()),
    ("latency_avg_ms", pa.float64()), ("latency_max_ms", pa.uint32()), ("reporter", pa.string()),
    ("src_topic_id", LOW_CARDINALITY), ("src_partition", pa.uint16()), ("src_offset", pa.uint64()),
    ("src_index", pa.uint32()),
])
DEAD_LETTER_SCHEMA = pa.schema([
    ("src_topic", pa.string()), ("src_topic_id", pa.string()), ("src_partition", pa.uint16()),
    ("src_offset", pa.uint64()), ("src_index", pa.int32()), ("reason", pa.string()), ("detail", pa.string()),
    ("payload_bytes", pa.uint32()), ("ingest_batch", pa.uint64()), ("sdk_app_id", pa.uint32()),
    ("replay_count", pa.uint8()),
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
    message: bytes | None = None  # the whole original message value (a reference: see ``limits.plan_letters``)
    replay: int = 0  # replays of this record so far (``ingest/replay.py``): 0 for a first failure


def new_batch_id() -> int:
    """Unique, roughly time-ordered id of one flush (ms << 20 | random): the prefix of its inserts'
    deduplication tokens and the ``ingest_batch`` of its dead-letter ledger rows."""
    return (time.time_ns() // 1_000_000) << 20 | int.from_bytes(np.random.bytes(3), "big") & 0xFFFFF


# Columns are read from the records with list comprehensions on purpose: CPython 3.11 specialises
# ``r.field`` on a struct slot (~28 ns a record), ``map(attrgetter(...))`` is a generic getattr (~63 ns).


def interface_column(records: Sequence[Any]) -> pa.Array:
    """The ``interface`` column (the processor checks its pattern on it, then it is stored as is)."""
    return pa.array([r.interface for r in records], pa.string())


def _interface(records: Sequence[Any], checked: pa.Array | None) -> pa.Array:
    if checked is not None and len(checked) == len(records):
        return checked
    return interface_column(records)


def log_batch(records: Sequence[RequestLog], times: np.ndarray, nets: pa.Array, topic_id: str,
              partitions: np.ndarray, offsets: np.ndarray, indices: np.ndarray,
              interface: pa.Array | None = None) -> pa.RecordBatch:
    """Columns of many validated request logs at once (no per-record Python beyond one attribute
    read per column): the hot path builds one of these per consumed batch, per topic. ``times`` (epoch
    ms) and ``nets`` are the columns the processor already built to apply its rules."""
    return pa.RecordBatch.from_arrays([
        _event_times(times, LOG_SCHEMA),
        pa.array([r.sdk_app_id for r in records], pa.uint32()),
        pc.dictionary_encode(_interface(records, interface)),
        pa.array([r.request_id for r in records], pa.string()), nets,
        pa.array([r.latency_ms for r in records], pa.uint32()),
        pa.array([r.error_code for r in records], pa.int32()),
        pa.array([r.exception for r in records], pa.string()).fill_null(""),
        pc.dictionary_encode(pa.array([r.region for r in records], pa.string())),
        pc.dictionary_encode(pa.array([r.platform for r in records], pa.string())),
        *_origin(topic_id, len(records), partitions, offsets, indices),
    ], schema=LOG_SCHEMA)


def columns_batch(cols: Columns, nets: pa.Array, topic_id: str, partitions: np.ndarray, offsets: np.ndarray,
                  indices: np.ndarray) -> pa.RecordBatch:
    """``log_batch`` for rows the native decoder already made columns of (``fastlog``)."""
    return pa.RecordBatch.from_arrays([
        _event_times(cols.request_time, LOG_SCHEMA), cols.sdk_app_id,
        cols.interface, cols.request_id, nets, cols.latency_ms, cols.error_code, cols.exception, cols.region,
        cols.platform, *_origin(topic_id, len(cols), partitions, offsets, indices),
    ], schema=LOG_SCHEMA)


def sample_batch(records: Sequence[MonitoringSample], times: np.ndarray, topic_id: str, partitions: np.ndarray,
                 offsets: np.ndarray, indices: np.ndarray, interface: pa.Array | None = None
                 ) -> pa.RecordBatch:
    """Columns of many validated monitoring samples (see ``log_batch``)."""
    return pa.RecordBatch.from_arrays([
        _event_times(times, SAMPLE_SCHEMA),
        pa.array([r.sdk_app_id for r in records], pa.uint32()), _interface(records, interface),
        pa.array([r.window_seconds for r in records], pa.uint16()),
        pa.array([r.requests for r in records], pa.uint32()), pa.array([r.failures for r in records], pa.uint32()),
        pa.array([r.latency_avg_ms for r in records], pa.float64()),
        pa.array([r.latency_max_ms for r in records], pa.uint32()).fill_null(0),
        pa.array([r.reporter for r in records], pa.string()),
        *_origin(topic_id, len(records), partitions, offsets, indices),
    ], schema=SAMPLE_SCHEMA)


def _event_times(times: np.ndarray, schema: pa.Schema) -> pa.Array:
    """Epoch milliseconds as the schema's first column (the event time, a UTC timestamp)."""
    return pa.array(times, pa.int64()).cast(schema.field(0).type)


def _origin(topic_id: str, n: int, partitions: np.ndarray, offsets: np.ndarray, indices: np.ndarray
            ) -> list[pa.Array]:
    """The src_* columns (the coordinates come as numpy columns, see ``processor._Chunk``). The topic id,
    one per batch, is a one-entry dictionary (LowCardinality in ClickHouse): no hashing of a repeated
    string before the insert (~0.012 CPU-s per million rows)."""
    topic = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([topic_id], pa.string()))
    return [topic, pa.array(partitions, pa.uint16()),  # safe casts:
            pa.array(offsets, pa.uint64()), pa.array(indices, pa.uint32())]  # out of range raises, never wraps


def _table(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    # one dictionary per column: each batch brings its own, an Arrow IPC file (the insert body) takes one
    return narrow_indices(pa.Table.from_batches(batches, schema=schema).unify_dictionaries())


# The narrowest index type the flush's table uses for a dictionary column whose unified dictionary fits.
_NARROW_NP = np.int8
NARROW_INDEX = pa.from_numpy_dtype(_NARROW_NP)
_NARROW_MAX = int(np.iinfo(_NARROW_NP).max)


def narrow_indices(table: pa.Table) -> pa.Table:
    """``table`` (dictionaries unified) with each dictionary column's indices as ``int8`` when its
    dictionary has at most 127 values, as the LowCardinality columns of a flush nearly always do.

    Why: the decoders build int32 indices (one width for any take), which are 4 of the 1 byte a row
    such a column needs. In the insert body that was 12 bytes a row of indices for interface, region
    and platform that the worker LZ4-compresses and sends: with int8 indices a 50k-row body of the
    batched workload is 47.9 instead of 52.7 bytes a row after LZ4, and its compression costs 0.113
    instead of 0.138 CPU-s per million rows (measured alone on one thread). ClickHouse reads any
    integer index width into LowCardinality; the stored rows are the same. A column with nulls in its
    indices, or a larger dictionary, keeps its int32 indices."""
    for i, f in enumerate(table.schema):
        if not pa.types.is_dictionary(f.type) or f.type.index_type == NARROW_INDEX:
            continue
        column = table.column(i)
        if column.num_chunks == 0 or column.null_count or len(column.chunk(0).dictionary) > _NARROW_MAX:
            continue
        # after unify_dictionaries every chunk holds the same dictionary, so its indices stay valid
        chunks = [pa.DictionaryArray.from_arrays(pa.array(c.indices.to_numpy().astype(_NARROW_NP)), c.dictionary,
                                                 safe=False) for c in column.chunks]
        narrow = pa.field(f.name, pa.dictionary(NARROW_INDEX, f.type.value_type), f.nullable, f.metadata)
        table = table.set_column(i, narrow, pa.chunked_array(chunks, narrow.type))
    return table


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
    tables: dict[str, pa.Table] = field(default_factory=dict)  # built once per flush
    pending: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # row ranges not yet stored
    bad_rows: dict[str, list[int]] = field(default_factory=dict)  # rows refused as bad data so far
    reject_codes: dict[int, int | None] = field(default_factory=dict)
    rejected: list[DeadLetter] = field(default_factory=list)  # rows ClickHouse refused (bad data)
    held: int = 0  # bytes the dead letters keep alive (payloads, referenced messages): a flush trigger
    held_messages: set[int] = field(default_factory=set)  # ids of the message values counted in ``held``
    # original coordinates of the replayed rows buffered, per raw table (``ingest/replay.py``)
    replayed: dict[str, set[tuple[str, int, int, int]]] = field(default_factory=dict)
    replay_stored: dict[str, set[tuple[Any, ...]]] = field(default_factory=dict)  # of those, already stored
    replay_outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, outcome) -> records

    def __len__(self) -> int:
        return self.records

    def touch(self, now: float) -> None:
        if not self.started:
            self.started = now

    def add_logs(self, batch: pa.RecordBatch) -> None:
        """Buffer request-log rows, their exception causes scrubbed. Both decoders (the native one's
        columns, msgspec's records) meet here, so this is the one place the scrub is applied: nothing
        with a raw cause is buffered, stored, aggregated or dead-lettered as a refused row."""
        if batch.num_rows:
            self.logs.append(_scrubbed(batch))
            self.records += batch.num_rows

    def add_samples(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.samples.append(batch)
            self.records += batch.num_rows

    def add_dead(self, reject: Reject, o: Origin, key: bytes | None, message: bytes | None = None,
                 replay: int = 0) -> None:
        self.dead.append(DeadLetter(o, reject.reason, reject.detail, reject.raw, key, message, replay))
        self.held += len(reject.raw)
        if message is not None and id(message) not in self.held_messages:
            self.held_messages.add(id(message))
            self.held += len(message)
        self.records += 1

    def log_table(self) -> pa.Table:
        return _table(self.logs, LOG_SCHEMA)

    def sample_table(self) -> pa.Table:
        return _table(self.samples, SAMPLE_SCHEMA)


_EXCEPTION = LOG_SCHEMA.get_field_index("exception")


def _scrubbed(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with its ``exception`` column through ``privacy.scrub_causes``."""
    causes = batch.column(_EXCEPTION)
    clean = scrub_causes(causes)
    return batch if clean is causes else batch.set_column(_EXCEPTION, batch.schema.field(_EXCEPTION), clean)


def dead_letter_table(letters: Sequence[DeadLetter], batch_id: int) -> pa.Table:
    """The ``dead_letters`` ledger rows of some dead letters (reason and size, never the payload)."""
    d = letters
    return pa.Table.from_pydict({
        "src_topic": [x.origin.topic for x in d], "src_topic_id": [x.origin.topic_id for x in d],
        "src_partition": [x.origin.partition for x in d], "src_offset": [x.origin.offset for x in d],
        "src_index": [x.origin.index for x in d], "reason": [x.reason for x in d],
        "detail": [x.detail for x in d], "payload_bytes": [len(x.raw) for x in d],
        "ingest_batch": [batch_id] * len(d), "sdk_app_id": [app_of(x.key) for x in d],
        "replay_count": [min(x.replay, 255) for x in d]}, schema=DEAD_LETTER_SCHEMA)


def app_of(key: bytes | None) -> int:
    """The sdk_app_id a message key names (the topics are keyed by it), 0 when it names none."""
    if key and len(key) <= 10 and key.isdigit():
        app = int(key)
        return app if app <= 0xFFFFFFFF else 0
    return 0
