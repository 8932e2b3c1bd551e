"""Admission: Kafka messages in, validated and minimised rows (and dead letters) buffered out.

It decodes, applies the per-record rules (schema, interface pattern, event-time window, IP
minimisation), and fills the ``Buffer`` that the writer (``sinks/writer.py``) later stores. It knows
nothing of stores or Kafka clients, so it is testable with plain objects; ``worker/processor.py``
joins it to the writer for the consumer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from itertools import compress
from typing import Any, Protocol

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config.kafka import POLL_RECORDS
from pipeline.config.policy import DAY_MS, Policy
from pipeline.config.settings import Settings
from pipeline.ingest import fastlog, limits, replay
from pipeline.ingest.buffer import (
    Buffer,
    Origin,
    columns_batch,
    interface_column,
    log_batch,
    sample_batch,
)
from pipeline.ingest.decode import BAD_INPUT, WHOLE_MESSAGE, Decoded, Decoder, Reject, oldest_kept, time_reason
from pipeline.ingest.privacy import Minimisation, minimisation
from pipeline.ingest.records import (
    INTERFACE_PATTERN_RE2,
    LooseMonitoringSample,
    LooseRequestLog,
    MonitoringSample,
    RequestLog,
)
from pipeline.monitoring.metrics import Metrics

DETAILS = {"too_old": "event time is older than the retention period",
           "in_future": "event time is too far in the future",
           "invalid_ip": "client_ip is not an IPv4 or IPv6 address",
           "inconsistent": "failures exceeds requests"}
# When the stream pauses, a buffer holding this share of ``Settings.batch_rows`` is written without
# waiting for the timer (see ``Admission.should_flush``).
IDLE_FLUSH_SHARE = 0.25


class Message(Protocol):
    """The part of ``confluent_kafka.Message`` admission uses."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class Admission:
    """Decode, validate, minimise and buffer; hand sealed buffers to the writer."""

    def __init__(self, settings: Settings, metrics: Metrics, policy: Policy,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.metrics, self.clock = settings, metrics, clock
        self.minimise: Minimisation = minimisation(settings.pii_mode, settings.pii_hash_key)
        # request logs also come as OpenTelemetry logs (``otlp.py``), told apart by their bytes
        self.logs_decoder = Decoder(RequestLog, otlp_logs=True)
        self.samples_decoder = Decoder(MonitoringSample)
        self.logs_fast: Decoder[Any] = Decoder(LooseRequestLog, otlp_logs=True)  # type: ignore[type-var]
        self.samples_fast: Decoder[Any] = Decoder(LooseMonitoringSample)  # type: ignore[type-var]
        # request logs go to the native decoder first, when built and enabled (see ``fastlog``)
        self.native = (fastlog.ColumnDecoder(self.minimise.native) if settings.native_decoder and fastlog.available
                       else None)
        self.max_age_ms = {settings.topic_request_logs: policy.log_data_days * DAY_MS,
                           settings.topic_monitoring_samples: policy.monitoring_data_days * DAY_MS}
        # the unit the tables' TTLs truncate event times to (001: toDate, 002/003: toStartOfHour)
        self.ttl_unit_ms = {settings.topic_request_logs: DAY_MS, settings.topic_monitoring_samples: 3_600_000}
        self.skew_ms = settings.max_future_skew_seconds * 1000
        self.buffer = Buffer()
        self.topic_ids: dict[str, str] = {}
        self.skip: dict[tuple[str, int], tuple[set[tuple[int, int]], int]] = {}
        self.records_per_message = 1.0  # moving average over consumed batches

    # -- assignment -------------------------------------------------------------------------------
    def skip_on_replay(self, topic: str, partition: int, keys: set[tuple[int, int]]) -> None:
        """Records (offset, index) of a partition that were stored or dead-lettered past its committed
        offset: they are not buffered again when the partition is read again (see ``Writer.recover``)."""
        if keys:
            self.skip[(topic, partition)] = (keys, max(o for o, _ in keys))
        else:
            self.skip.pop((topic, partition), None)

    def forget(self, topic: str, partition: int) -> None:
        """A partition was revoked: its replay state goes with it."""
        self.skip.pop((topic, partition), None)

    def topic_id(self, topic: str) -> str:
        """The topic's id (stored in src_topic_id, so a re-created topic is a new source), else its name."""
        return self.topic_ids.get(topic, topic)

    def poll_size(self) -> int:
        """How many messages the next poll may take: enough records to fill the buffer up to
        ``Settings.batch_rows``, at most ``POLL_RECORDS`` (what one ``process`` call decodes), counted
        with the records per message learnt from the polls so far. A message may carry hundreds of
        records, so a fixed message count would let one poll buffer far more than a batch."""
        room = max(1, min(POLL_RECORDS, self.settings.batch_rows - len(self.buffer)))
        return int(room / max(1.0, self.records_per_message))

    # -- processing -------------------------------------------------------------------------------
    def process(self, messages: Sequence[Message]) -> int:
        """Decode a prefix of a batch of Kafka messages into the buffer (valid rows and dead letters);
        returns how many messages it took. It stops once ``POLL_RECORDS`` records or
        ``poll_max_bytes`` bytes were decoded, so that the caller may flush before it hands over the
        rest: what one call buffers is bounded whatever the messages hold (a message above
        ``decode_max_bytes`` or ``message_max_records`` is not decoded at all, see ``limits``).

        Hot path: per message only the decode call and a few list appends; everything per record
        (event-time rule, IP minimisation, columns) is done once per topic over the whole batch."""
        now = self.clock()
        now_ms = int(now * 1000)
        self.buffer.touch(now)
        chunks = {self.settings.topic_request_logs: _Chunk(self.logs_decoder, self.logs_fast),
                  self.settings.topic_monitoring_samples: _Chunk(self.samples_decoder, self.samples_fast)}
        next_offsets = self.buffer.next_offsets
        logs_topic, native = self.settings.topic_request_logs, self.native
        taken = _Chunk(self.logs_decoder, self.logs_fast)  # messages the native decoder took, as runs
        max_records, max_bytes = self.settings.message_max_records, self.settings.decode_max_bytes
        budget_bytes, decoded_bytes, n_decoded, done = self.settings.poll_max_bytes, 0, 0, 0
        # replayed dead letters (``ingest/replay.py``): rare, each its own chunk with original coordinates
        replays: list[tuple[str, _Chunk]] = []
        with_headers = bool(messages) and hasattr(messages[0], "headers")
        for msg in messages:
            if done and (decoded_bytes >= budget_bytes or n_decoded >= POLL_RECORDS):
                break
            done += 1
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            chunk = chunks[topic]
            value = msg.value()
            chunk.messages += 1
            if with_headers and (replayed := replay.of(msg.headers())) is not None:  # type: ignore[attr-defined]
                decoded_bytes += len(value or b"")
                n_decoded += self._take_replay(msg, topic, replayed, replays)
                next_offsets[(topic, partition)] = offset + 1
                continue
            skip = self.skip.get((topic, partition)) if self.skip else None
            if skip is not None and offset > skip[1]:
                del self.skip[(topic, partition)]
                skip = None
            if value and len(value) > 2 * max_records:  # only a large message may be over a limit
                decoded_bytes += len(value)
                why = limits.oversize(value, max_bytes, max_records)
                if why is not None:
                    chunk.rejected += 1
                    n_decoded += 1
                    self._dead(Reject(WHOLE_MESSAGE, *why, value), Origin(topic, self.topic_ids.get(topic, topic),
                                                                           partition, offset, WHOLE_MESSAGE),
                               msg.key(), skip)
                    next_offsets[(topic, partition)] = offset + 1
                    continue
            elif value:
                decoded_bytes += len(value)
            if native is not None and skip is None and value and topic == logs_topic:
                n = native.add(value)
                if n > 0:
                    n_decoded += n
                    taken.add_run(partition, offset, 0, n)
                    next_offsets[(topic, partition)] = offset + 1
                    continue
            # b"{" and no inner newline: most likely one valid record
            if skip is None and value and value[0] == 123 and value.find(b"\n", 0, len(value) - 1) < 0:
                try:
                    record = chunk.fast_one(value)
                except BAD_INPUT:
                    pass
                else:
                    n_decoded += 1
                    chunk.records.append(record)
                    chunk.add_run(partition, offset, 0, 1)
                    next_offsets[(topic, partition)] = offset + 1
                    continue
            decoded = chunk.fast.decode(value)
            if decoded.rejects:  # the strict decoder names the exact reason
                decoded = chunk.strict.decode(value)
            items = decoded.items
            n_decoded += len(items) + len(decoded.rejects)
            if decoded.rejects or decoded.indices is not None or skip is not None:
                self._process_slow(msg, topic, partition, offset, decoded, skip, chunk)
            else:
                chunk.records.extend(items)
                chunk.add_run(partition, offset, 0, len(items))
            next_offsets[(topic, partition)] = offset + 1
        batch = list(messages[:done])
        columnar = {logs_topic: self._admit_taken(logs_topic, taken, chunks[logs_topic], batch, now_ms)
                    if native is not None and taken.counts else 0}
        n_records = sum(len(c.records) + c.rejected for c in chunks.values()) + columnar[logs_topic]
        if batch:  # the source sizes its next poll with this, to bound what one poll can buffer
            self.records_per_message = 0.7 * self.records_per_message + 0.3 * (n_records / len(batch))
        for topic, chunk in chunks.items():
            if chunk.records:
                chunk.source = batch
                self._check_patterns(topic, chunk)
            if chunk.messages:
                self.metrics.messages_consumed.labels(topic).inc(chunk.messages)
                self.metrics.records_consumed.labels(topic).inc(len(chunk.records) + chunk.rejected +
                                                                columnar.get(topic, 0))
            if chunk.records:
                self._admit(topic, chunk, now_ms)
        for topic, chunk in replays:
            if chunk.records:
                self._check_patterns(topic, chunk)
            self.metrics.records_consumed.labels(topic).inc(len(chunk.records) + chunk.rejected)
            if chunk.records:
                self._admit(topic, chunk, now_ms)
        return done

    def _take_replay(self, msg: Message, topic: str, r: replay.Replay, out: list[tuple[str, _Chunk]]) -> int:
        """A message ``imtel deadletters replay`` produced: its records get their original coordinates
        (``Replay.index_of``), in a chunk of their own; returns the records it held. Never skipped by
        the crash recovery's skip set (that holds coordinates of this partition): the writer's lookup
        of the original coordinates makes a replay idempotent instead."""
        logs = topic == self.settings.topic_request_logs
        chunk = _Chunk(self.logs_decoder if logs else self.samples_decoder,
                       self.logs_fast if logs else self.samples_fast)
        chunk.topic_id, chunk.replay = r.topic_id, r
        chunk.msgs = {(r.partition, r.offset): msg}
        out.append((topic, chunk))
        value = msg.value()
        why = limits.oversize(value, self.settings.decode_max_bytes, self.settings.message_max_records)
        if why is not None:
            chunk.rejected += 1
            self._dead(Reject(WHOLE_MESSAGE, *why, value or b""),
                       Origin(topic, r.topic_id, r.partition, r.offset, r.index), msg.key(), None, replay=r.count)
            return 1
        decoded = chunk.strict.decode(value)
        self._process_slow(msg, topic, r.partition, r.offset, decoded, None, chunk)
        return len(decoded.items) + len(decoded.rejects)

    def _admit_taken(self, topic: str, taken: _Chunk, chunk: _Chunk, messages: list[Message], now_ms: int) -> int:
        """Rows the native decoder took, judged by the same per-batch rules as ``_admit`` (event-time
        window, IP; the decoder itself does not take a message with an interface outside the pattern). A
        message with any row that fails one goes back through msgspec into ``chunk``, so it is judged
        and dead-lettered exactly as without the native decoder; the other rows are buffered as they
        are. Returns the rows buffered."""
        assert self.native is not None
        cols = self.native.take()
        bad = self._outside_window(topic, cols.request_time, now_ms)
        nets = cols.client_net
        if not cols.net_done.all():  # IPv6, other text, or hash mode: as without the native decoder
            rest = pa.array(~cols.net_done)
            nets = pc.replace_with_mask(nets, rest, self.minimise.column(cols.client_ip.filter(rest)))
        if nets.null_count:
            bad |= nets.is_null().to_numpy(zero_copy_only=False)
        runs = list(zip(taken.partitions, taken.offsets, strict=True))  # one run per message taken, in order
        message_of = np.repeat(np.arange(len(runs)), np.array(taken.counts, np.int64))
        partitions, offsets, indices = taken.coordinates()
        if bad.any():
            again = np.unique(message_of[bad])
            keep = ~np.isin(message_of, again)
            taken.source = messages
            for partition, offset in (runs[i] for i in again.tolist()):
                self._decode_again(taken.message(topic, partition, offset), topic, partition, offset, chunk)
            cols, nets = cols.filter(keep), nets.filter(pa.array(keep))
            partitions, offsets, indices = partitions[keep], offsets[keep], indices[keep]
        if len(cols):
            self.buffer.add_logs(columns_batch(cols, nets, self.topic_ids.get(topic, topic), partitions, offsets,
                                               indices))
        return len(cols)

    def _decode_again(self, msg: Message, topic: str, partition: int, offset: int, chunk: _Chunk) -> None:
        """A message the native decoder took but a per-batch rule refused a row of: through msgspec, as
        every message it does not take."""
        value = msg.value()
        decoded = chunk.fast.decode(value)
        if decoded.rejects:  # the strict decoder names the exact reason
            decoded = chunk.strict.decode(value)
        if decoded.rejects or decoded.indices is not None:
            self._process_slow(msg, topic, partition, offset, decoded, None, chunk)
        else:
            chunk.records.extend(decoded.items)
            chunk.add_run(partition, offset, 0, len(decoded.items))

    def _process_slow(self, msg: Message, topic: str, partition: int, offset: int, decoded: Decoded[Any],
                      skip: tuple[set[tuple[int, int]], int] | None, chunk: _Chunk) -> None:
        """A message with invalid records, or on a partition replayed after a crash (skip set)."""
        topic_id, key = chunk.topic_id or self.topic_ids.get(topic, topic), msg.key()
        value = msg.value()
        r, count = chunk.replay, chunk.replay.count if chunk.replay is not None else 0
        for reject in decoded.rejects:
            chunk.rejected += 1
            index = reject.index if r is None else r.index_of(reject.index)
            self._dead(reject, Origin(topic, topic_id, partition, offset, index), key, skip, value, replay=count)
        for index, record in decoded.records:
            if skip and (offset, index) in skip[0]:
                self.metrics.records_skipped.labels(topic).inc()
                chunk.rejected += 1  # counted as consumed, not stored again
                continue
            chunk.records.append(record)
            chunk.add_run(partition, offset, index if r is None else r.index_of(index), 1)

    def _check_patterns(self, topic: str, chunk: _Chunk) -> None:
        """The ``interface`` pattern for the whole chunk at once (RE2, see ``records.loose``). Messages
        with a failing record are decoded again strictly, which dead-letters exactly what it should."""
        iface = interface_column(chunk.records)
        misses = _pattern_misses(iface)
        if misses is None:
            chunk.interface = iface
            return
        partitions, offsets, _ = chunk.coordinates()
        pairs = list(zip(partitions.tolist(), offsets.tolist(), strict=True))
        again = {pair for pair, miss in zip(pairs, misses.tolist(), strict=True) if miss}
        chunk.keep(np.array([pair not in again for pair in pairs], dtype=bool))
        for partition, offset in sorted(again):
            msg = chunk.message(topic, partition, offset)
            self._process_slow(msg, topic, partition, offset, chunk.strict.decode(msg.value()), None, chunk)

    def _admit(self, topic: str, chunk: _Chunk, now_ms: int) -> None:
        """Apply the event-time rule and IP minimisation to a whole chunk; buffer it as columns."""
        is_logs = topic == self.settings.topic_request_logs
        records = chunk.records
        times = np.array([r.request_time for r in records] if is_logs else [r.window_start for r in records],
                         np.int64)
        bad = self._outside_window(topic, times, now_ms)
        nets: pa.Array | None = None
        if is_logs:
            nets = self.minimise.column([r.client_ip for r in records])
            if nets.null_count:
                bad |= nets.is_null().to_numpy(zero_copy_only=False)
        else:
            requests = np.array([r.requests for r in records], np.int64)
            failures = np.array([r.failures for r in records], np.int64)
            bad |= failures > requests
        if bad.any():
            nets = self._reject_rows(topic, chunk, bad, times, now_ms, nets)
            times = times[~bad]
        topic_id = chunk.topic_id or self.topic_ids.get(topic, topic)
        if not chunk.records:
            return
        partitions, offsets, indices = chunk.coordinates()
        if chunk.replay is not None:  # the writer drops those already stored (``ingest/replay.py``)
            self.buffer.replayed.setdefault("request_logs" if is_logs else "monitoring_samples", set()).update(
                (topic_id, p, o, i) for p, o, i in zip(partitions.tolist(), offsets.tolist(), indices.tolist(),
                                                       strict=True))
        if is_logs:
            assert nets is not None
            self.buffer.add_logs(log_batch(chunk.records, times, nets, topic_id, partitions, offsets, indices,
                                           chunk.interface))
        else:
            self.buffer.add_samples(sample_batch(chunk.records, times, topic_id, partitions, offsets, indices,
                                                 chunk.interface))

    def _outside_window(self, topic: str, times: np.ndarray, now_ms: int) -> np.ndarray:
        """Rows whose event time (epoch ms) is past the table's TTL or too far ahead (``time_reason``
        names which, per row, when they are dead-lettered)."""
        oldest = oldest_kept(now_ms, self.max_age_ms[topic], self.ttl_unit_ms[topic])
        out: np.ndarray = (times < oldest) | (times > now_ms + self.skew_ms)
        return out

    def _reject_rows(self, topic: str, chunk: _Chunk, bad: np.ndarray, times: np.ndarray, now_ms: int,
                     nets: pa.Array | None) -> pa.Array | None:
        """Dead-letter the rows that fail the event-time, IP or consistency rule; keep the others."""
        topic_id = chunk.topic_id or self.topic_ids.get(topic, topic)
        count = chunk.replay.count if chunk.replay is not None else 0
        max_age = self.max_age_ms[topic]
        partitions, offsets, indices = chunk.coordinates()
        for i in np.flatnonzero(bad).tolist():
            reason = time_reason(int(times[i]), now_ms, max_age, self.skew_ms, self.ttl_unit_ms[topic])
            if reason is None:
                reason = "invalid_ip" if nets is not None and not nets[i].is_valid else "inconsistent"
            origin = Origin(topic, topic_id, int(partitions[i]), int(offsets[i]), int(indices[i]))
            raw = msgspec.json.encode(chunk.records[i])
            msg = chunk.message(topic, origin.partition, origin.offset)
            self.buffer.add_dead(Reject(origin.index, reason, DETAILS[reason], raw), origin, msg.key(), msg.value(),
                                 replay=count)
        keep = ~bad
        chunk.keep(keep)
        return None if nets is None else nets.filter(pa.array(keep))

    def _dead(self, reject: Reject, origin: Origin, key: bytes | None,
              skip: tuple[set[tuple[int, int]], int] | None, message: bytes | None = None, replay: int = 0) -> None:
        if skip and (origin.offset, origin.index) in skip[0]:
            self.metrics.records_skipped.labels(origin.topic).inc()
            return
        self.buffer.add_dead(reject, origin, key, message, replay)

    # -- flushing ---------------------------------------------------------------------------------
    def should_flush(self, idle: bool = False) -> bool:
        """Full, old, or ``idle`` (the source's polls have found nothing for a while: the stream has
        paused) with at least ``IDLE_FLUSH_SHARE`` of a full batch. Once the stream pauses, waiting
        for the timer only delays the rows: at the end of a burst that was up to ``batch_max_seconds``
        of idle time before the last write. The share keeps sparse traffic, whose polls are often
        empty, at one insert per timer tick rather than one per pause, so parts stay large."""
        b = self.buffer
        if not b.next_offsets:
            return False
        n = len(b)
        return n >= self.settings.batch_rows or b.held >= self.settings.poll_max_bytes or (
            idle and n >= self.settings.batch_rows * IDLE_FLUSH_SHARE) or (
            self.clock() - b.started >= self.settings.batch_max_seconds)

    def seal(self) -> Buffer | None:
        """Hand over the current buffer for writing (see ``write``) and start a new one."""
        b = self.buffer
        if not b.next_offsets:
            return None
        self.buffer = Buffer()
        return b

    def discard(self) -> int:
        """Drop everything buffered (on revocation when it cannot be written): the offsets were not
        committed, so the partition's next owner reads those records again."""
        dropped = len(self.buffer)
        self.buffer = Buffer()
        return dropped


def _pattern_misses(iface: pa.Array) -> np.ndarray | None:
    """Rows whose ``interface`` fails the pattern (RE2, see ``records.loose``), or None when all pass.
    Interface names repeat (a few hundred distinct): the distinct values are checked first, every
    row only when one of them fails."""
    if pc.all(pc.match_substring_regex(pc.unique(iface), INTERFACE_PATTERN_RE2)).as_py() is not False:
        return None
    misses: np.ndarray = ~pc.match_substring_regex(iface, INTERFACE_PATTERN_RE2).to_numpy(zero_copy_only=False)
    return misses


class _Chunk:
    """Valid records of one topic from one consumed batch, with their Kafka coordinates.

    Coordinates are kept as runs, one per message in the common case (partition, offset, first
    index, count), and become columns with numpy once per batch: three Python list appends per
    record and their conversion to Arrow cost ~0.2 µs a record, about a fifth of the decode."""

    __slots__ = (
        "_coords",
        "counts",
        "fast",
        "fast_one",
        "firsts",
        "interface",
        "messages",
        "msgs",
        "offsets",
        "partitions",
        "records",
        "rejected",
        "replay",
        "source",
        "strict",
        "topic_id",
    )

    def __init__(self, strict: Decoder[Any], fast: Decoder[Any]) -> None:
        self.strict, self.fast = strict, fast
        self.fast_one = fast.decode_one
        self.records: list[Any] = []
        # runs not yet turned into columns (see ``coordinates``)
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self.firsts: list[int] = []
        self.counts: list[int] = []
        self._coords: tuple[np.ndarray, np.ndarray, np.ndarray] = (_EMPTY, _EMPTY, _EMPTY)
        self.source: list[Message] = []  # the consumed batch
        self.msgs: dict[tuple[int, int], Message] = {}  # its messages by partition and offset, when needed
        self.interface: pa.Array | None = None  # the checked interface column, when still valid
        self.messages = 0
        self.rejected = 0
        self.topic_id: str | None = None  # set for a replayed message: its records' original topic id
        self.replay: replay.Replay | None = None  # set for a replayed message (``ingest/replay.py``)

    def add_run(self, partition: int, offset: int, first: int, count: int) -> None:
        """``count`` records appended to ``records``: elements ``first``.. of one message."""
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.firsts.append(first)
        self.counts.append(count)

    def coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Partition, offset and index in the message of every record, as int64 columns."""
        if self.counts:
            counts = np.array(self.counts, np.int64)
            partitions, offsets = np.array(self.partitions, np.int64), np.array(self.offsets, np.int64)
            firsts = np.array(self.firsts, np.int64)
            if len(counts) != int(counts.sum()):  # some message gave more than one record
                partitions, offsets = np.repeat(partitions, counts), np.repeat(offsets, counts)
                # index = first of its run + position within the run
                ends = np.cumsum(counts)
                firsts = np.repeat(firsts - (ends - counts), counts) + np.arange(int(ends[-1]))
            done = self._coords
            self._coords = (np.concatenate((done[0], partitions)), np.concatenate((done[1], offsets)),
                            np.concatenate((done[2], firsts)))
            self.partitions, self.offsets, self.firsts, self.counts = [], [], [], []
        return self._coords

    def message(self, topic: str, partition: int, offset: int) -> Message:
        """A message of the batch (rare path: to decode it again, or key a dead letter like it)."""
        if not self.msgs:
            self.msgs = {(m.partition() or 0, m.offset() or 0): m for m in self.source if m.topic() == topic}
        return self.msgs[(partition, offset)]

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the rows where ``mask`` is true."""
        self.records = list(compress(self.records, mask.tolist()))
        self._coords = tuple(column[mask] for column in self.coordinates())  # type: ignore[assignment]
        self.interface = None


_EMPTY = np.zeros(0, np.int64)
