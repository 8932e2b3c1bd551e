"""The worker's synchronous core: messages in, buffered rows and dead letters out, flush on demand.

No asyncio and no consumer here, so it is testable with plain objects: the Kafka source (``source.py``)
feeds it message batches through a faust agent, asks it to flush, and commits the offsets it returns.
"""

from __future__ import annotations

import logging
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
from pipeline.ingest import fastlog, limits
from pipeline.ingest.buffer import (
    Buffer,
    DeadLetter,
    Origin,
    columns_batch,
    dead_letter_table,
    interface_column,
    log_batch,
    new_batch_id,
    sample_batch,
)
from pipeline.ingest.decode import BAD_INPUT, WHOLE_MESSAGE, Decoded, Decoder, Reject, oldest_kept, time_reason
from pipeline.ingest.privacy import Minimiser, minimise_column, minimiser
from pipeline.ingest.records import (
    INTERFACE_PATTERN_RE2,
    LooseMonitoringSample,
    LooseRequestLog,
    MonitoringSample,
    RequestLog,
)
from pipeline.monitoring import sli
from pipeline.monitoring.metrics import LATENCY_BUCKETS_S, Metrics
from pipeline.sinks.clickhouse import LOGS, SAMPLES, ClickHouseStore, InsertError, RawTable
from pipeline.worker import failpoints

log = logging.getLogger(__name__)
SLO_EDGES_MS = tuple(edge * 1000 for edge in LATENCY_BUCKETS_S)
DETAILS = {"too_old": "event time is older than the retention period",
           "in_future": "event time is too far in the future",
           "invalid_ip": "client_ip is not an IPv4 or IPv6 address",
           "inconsistent": "failures exceeds requests"}
# Rows ClickHouse refuses as bad data go to dead letters, unless so many are refused that the fault
# is systemic (schema drift, server bug): then the flush is retried instead of dead-lettering a batch.
MAX_REJECT_RATIO = 0.01
MIN_REJECT_LIMIT = 16
# When the stream pauses, a buffer holding this share of ``batch_max_records`` is written without
# waiting for the timer (see ``Processor.should_flush``).
IDLE_FLUSH_SHARE = 0.25


class Message(Protocol):
    """The part of ``confluent_kafka.Message`` the processor uses."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class DeadLetterSink(Protocol):
    """Produces dead letters and blocks until Kafka acknowledged or permanently refused each (raises
    on anything retryable)."""

    def send(self, letters: Sequence[Any]) -> list[str | None] | None:
        """None per acknowledged letter, or the name of a permanent refusal (None: all acknowledged)."""


class Processor:
    """Decode, validate, minimise and buffer; flush raw rows, aggregates and dead letters."""

    def __init__(self, settings: Settings, store: ClickHouseStore, dead_letters: DeadLetterSink,
                 metrics: Metrics, policy: Policy, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.store, self.dlq, self.metrics, self.clock = settings, store, dead_letters, metrics, clock
        self.minimise: Minimiser = minimiser(settings.pii_mode, settings.pii_hash_key)
        self.logs_decoder = Decoder(RequestLog)
        self.samples_decoder = Decoder(MonitoringSample)
        self.logs_fast: Decoder[Any] = Decoder(LooseRequestLog)  # type: ignore[type-var]
        self.samples_fast: Decoder[Any] = Decoder(LooseMonitoringSample)  # type: ignore[type-var]
        # request logs go to the native decoder first, when built and enabled (see ``fastlog``)
        self.native = (fastlog.ColumnDecoder(settings.pii_mode) if settings.native_decoder and fastlog.available
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
        self.recent: list[tuple[float, sli.Summary]] = []  # (time, summary) for the live view

    # -- assignment -------------------------------------------------------------------------------
    def recover(self, topic: str, partition: int, committed: int) -> int:
        """Before consuming a partition: learn what was stored past its committed offset.
        Returns how many stored records will be skipped on replay."""
        topic_id = self.topic_ids.get(topic, topic)
        raw = LOGS if topic == self.settings.topic_request_logs else SAMPLES
        found = self.store.recover(raw, topic_id, partition, committed)
        dead = self.store.dead_letters_stored(topic_id, partition, committed)
        keys = found.keys | dead
        if keys:
            self.skip[(topic, partition)] = (keys, max(o for o, _ in keys))
            log.warning("partition %s/%d: %d records past committed offset %d were already stored; "
                        "rebuilt %d aggregate minutes, they will be skipped on replay",
                        topic, partition, len(keys), committed, found.minutes)
        else:
            self.skip.pop((topic, partition), None)
        return len(keys)

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
        for msg in messages:
            if done and (decoded_bytes >= budget_bytes or n_decoded >= POLL_RECORDS):
                break
            done += 1
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            chunk = chunks[topic]
            value = msg.value()
            chunk.messages += 1
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
        return done

    def _admit_taken(self, topic: str, taken: _Chunk, chunk: _Chunk, messages: list[Message], now_ms: int) -> int:
        """Rows the native decoder took, judged by the same per-batch rules as ``_admit`` (interface
        pattern, event-time window, IP). A message with any row that fails one goes back through
        msgspec into ``chunk``, so it is judged and dead-lettered exactly as without the native decoder;
        the other rows are buffered as they are. Returns the rows buffered."""
        assert self.native is not None
        cols = self.native.take()
        bad = self._outside_window(topic, cols.request_time, now_ms)
        misses = _pattern_misses(cols.interface)
        if misses is not None:
            bad |= misses
        nets = cols.client_net
        if not cols.net_done.all():  # IPv6, other text, or hash mode: as without the native decoder
            rest = pa.array(~cols.net_done)
            nets = pc.replace_with_mask(nets, rest, minimise_column(cols.client_ip.filter(rest),
                                                                    self.settings.pii_mode, self.minimise))
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
        topic_id, key = self.topic_ids.get(topic, topic), msg.key()
        value = msg.value()
        for reject in decoded.rejects:
            chunk.rejected += 1
            self._dead(reject, Origin(topic, topic_id, partition, offset, reject.index), key, skip, value)
        for index, record in decoded.records:
            if skip and (offset, index) in skip[0]:
                self.metrics.records_skipped.labels(topic).inc()
                chunk.rejected += 1  # counted as consumed, not stored again
                continue
            chunk.records.append(record)
            chunk.add_run(partition, offset, index, 1)

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
            nets = minimise_column([r.client_ip for r in records], self.settings.pii_mode,
                                   self.minimise)
            if nets.null_count:
                bad |= nets.is_null().to_numpy(zero_copy_only=False)
        else:
            requests = np.array([r.requests for r in records], np.int64)
            failures = np.array([r.failures for r in records], np.int64)
            bad |= failures > requests
        if bad.any():
            nets = self._reject_rows(topic, chunk, bad, times, now_ms, nets)
            times = times[~bad]
        topic_id = self.topic_ids.get(topic, topic)
        if not chunk.records:
            return
        partitions, offsets, indices = chunk.coordinates()
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
        topic_id = self.topic_ids.get(topic, topic)
        max_age = self.max_age_ms[topic]
        partitions, offsets, indices = chunk.coordinates()
        for i in np.flatnonzero(bad).tolist():
            reason = time_reason(int(times[i]), now_ms, max_age, self.skew_ms, self.ttl_unit_ms[topic])
            if reason is None:
                reason = "invalid_ip" if nets is not None and not nets[i].is_valid else "inconsistent"
            origin = Origin(topic, topic_id, int(partitions[i]), int(offsets[i]), int(indices[i]))
            raw = msgspec.json.encode(chunk.records[i])
            msg = chunk.message(topic, origin.partition, origin.offset)
            self.buffer.add_dead(Reject(origin.index, reason, DETAILS[reason], raw), origin, msg.key(), msg.value())
        keep = ~bad
        chunk.keep(keep)
        return None if nets is None else nets.filter(pa.array(keep))

    def _dead(self, reject: Reject, origin: Origin, key: bytes | None,
              skip: tuple[set[tuple[int, int]], int] | None, message: bytes | None = None) -> None:
        if skip and (origin.offset, origin.index) in skip[0]:
            self.metrics.records_skipped.labels(origin.topic).inc()
            return
        self.buffer.add_dead(reject, origin, key, message)

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
        return n >= self.settings.batch_max_records or b.held >= self.settings.poll_max_bytes or (
            idle and n >= self.settings.batch_max_records * IDLE_FLUSH_SHARE) or (
            self.clock() - b.started >= self.settings.batch_max_seconds)

    def seal(self) -> Buffer | None:
        """Hand over the current buffer for writing (see ``write``) and start a new one."""
        b = self.buffer
        if not b.next_offsets:
            return None
        self.buffer = Buffer()
        return b

    def flush(self) -> dict[tuple[str, int], int]:
        """Write the current buffer now (synchronously); it stays current if writing fails."""
        b = self.buffer
        offsets = self.write(b)
        if self.buffer is b:
            self.buffer = Buffer()
        return offsets

    def write(self, b: Buffer) -> dict[tuple[str, int], int]:
        """Write one sealed buffer; returns the offsets that may now be committed.

        Runs on an I/O thread while the next buffer fills: it touches only ``b``, the store (locked),
        the dead-letter producer and the metrics (both thread-safe).
        Raises ``InsertError``/``DeadLetterError``: nothing may be committed then. Each step is done
        once: a retry after a failure resumes at the failed step (the buffer remembers what was
        acknowledged, down to the row ranges of a split insert), so a retried write never stores a
        row or a dead letter twice."""
        b.batch_id = b.batch_id or new_batch_id()
        self._send_dead(b, b.dead, "dead")
        if "tables" not in b.done:
            b.tables = {LOGS.name: b.log_table(b.batch_id), SAMPLES.name: b.sample_table(b.batch_id)}
            b.logs, b.samples = [], []
            b.done.add("tables")
        for raw in (LOGS, SAMPLES):
            table = b.tables[raw.name]
            if raw.name not in b.done:
                failpoints.hit("flush.before_raw")
                self._insert_raw(b, raw, table)
                b.done.add(raw.name)
                failpoints.hit("flush.after_raw")
            if raw.name + "+agg" not in b.done:
                self._aggregate(b, raw, table)
                b.done.add(raw.name + "+agg")
                failpoints.hit("flush.after_aggregate")
        self._send_dead(b, b.rejected, "rejected")
        if "metrics" not in b.done:
            self._after_write(b.tables[LOGS.name])
            b.done.add("metrics")
        return dict(b.next_offsets)

    def _send_dead(self, b: Buffer, letters: list[DeadLetter], step: str) -> None:
        """Dead letters to Kafka (acknowledged), then to the ledger: each once per flush."""
        if step in b.done:
            return
        if letters:
            if step + "-sent" not in b.done:
                # at most ``dead_letters_per_message`` letters per message; the ledger keeps every record
                plan = limits.plan_letters(letters, self.settings.dead_letters_per_message)
                refused = self.dlq.send([out.letter for out in plan]) or [None] * len(plan)
                for out, error in zip(plan, refused, strict=True):
                    if error is not None:  # permanent: recorded in the ledger with the refusal, never retried
                        log.error("Kafka refused a dead letter for %s/%d@%d permanently (%s); it is in the ledger "
                                  "only", out.letter.origin.topic, out.letter.origin.partition,
                                  out.letter.origin.offset, error)
                        self.metrics.dead_letters_refused.labels(error).inc()
                        for x in out.records:
                            x.detail = f"not on the dead-letter topic: Kafka refused it ({error}); {x.detail}"[:1000]
                for letter in letters:
                    self.metrics.records_invalid.labels(letter.origin.topic, letter.reason).inc()
                self.metrics.dead_letters.labels(self.settings.topic_dead_letters).inc(
                    sum(1 for error in refused if error is None))
                b.done.add(step + "-sent")
            self.store.insert_arrow("dead_letters", dead_letter_table(letters, b.batch_id),
                                    token=f"{b.batch_id}:dead_letters:{step}")
            failpoints.hit("flush.after_dead_letters")
        b.done.add(step)

    def _insert_raw(self, b: Buffer, raw: RawTable, table: pa.Table) -> None:
        """Insert one raw table. If ClickHouse rejects it as bad data (a permanent error), split it
        until the offending rows are isolated: the others are stored, those go to dead letters with
        reason ``insert_rejected`` instead of blocking the partition forever. When most rows are
        refused the fault is not in the data (e.g. a schema drift): then nothing is dead-lettered and
        the error is raised as retryable, so the worker pauses, alerts and waits for a fix."""
        pending = b.pending.setdefault(raw.name, [(0, table.num_rows)] if table.num_rows else [])
        bad = b.bad_rows.setdefault(raw.name, [])
        limit = max(MIN_REJECT_LIMIT, int(table.num_rows * MAX_REJECT_RATIO))
        stored = 0
        while pending:
            lo, hi = pending[-1]
            try:
                self.store.insert_arrow(raw.name, table.slice(lo, hi - lo), token=f"{b.batch_id}:{raw.name}:{lo}:{hi}")
            except InsertError as err:
                if not err.permanent:
                    raise
                pending.pop()
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    pending += [(mid, hi), (lo, mid)]
                    continue
                bad.append(lo)
                if len(bad) > limit or (stored == 0 and len(bad) >= MIN_REJECT_LIMIT):
                    pending.extend((i, i + 1) for i in bad)
                    bad.clear()
                    log.error("ClickHouse refuses most rows of %s (code %s): not dead-lettering them, the cause "
                              "is likely the schema or the server, not the data; retrying", raw.name, err.code)
                    raise InsertError(str(err), err.code, permanent=False) from err
                b.reject_codes[lo] = err.code
                continue
            pending.pop()
            stored += hi - lo
        if bad:
            log.warning("ClickHouse rejected %d rows of %s as bad data; they go to dead letters", len(bad), raw.name)
            b.rejected.extend(self._rejected_row(raw, table, i, b.reject_codes.get(i)) for i in bad)
            bad.clear()

    def _aggregate(self, b: Buffer, raw: RawTable, table: pa.Table) -> None:
        """Fold the stored rows of this write into ``interface_stats_1m``. If an earlier attempt
        failed, it may have been applied with only its answer lost: then the minutes this write
        touches are rebuilt from the raw rows instead (idempotent), so nothing is counted twice."""
        step = raw.name + "+agg"
        if step not in b.attempted:
            b.attempted.add(step)
            self.store.aggregate(raw, table.num_rows, b.batch_id)
            return
        if table.num_rows == 0:
            return
        partitions = table.column("src_partition").to_numpy()
        minutes = table.column(raw.time_column).cast(pa.int64()).to_numpy() // 60_000 * 60
        for partition in np.unique(partitions).tolist():
            self.store.rebuild(raw, int(partition), sorted(set(minutes[partitions == partition].tolist())))

    def _rejected_row(self, raw: RawTable, table: pa.Table, row: int, code: int | None) -> DeadLetter:
        """A dead letter for one stored-format row ClickHouse refused (its client IP is already
        minimised, so the payload is the row as it would have been stored)."""
        values = table.slice(row, 1).to_pylist()[0]
        topic = self.settings.topic_request_logs if raw is LOGS else self.settings.topic_monitoring_samples
        origin = Origin(topic, values["src_topic_id"], values["src_partition"], values["src_offset"],
                        values["src_index"])
        body = {k: v for k, v in values.items() if not k.startswith(("src_", "ingest_"))}
        body[raw.time_column] = int(table.column(raw.time_column).cast(pa.int64())[row].as_py())
        return DeadLetter(origin, "insert_rejected", f"ClickHouse refused the row (code {code})",
                          msgspec.json.encode(body), str(values["sdk_app_id"]).encode())

    def _after_write(self, logs: Any) -> None:
        now = self.clock()
        self.metrics.last_write.set(now)
        if logs.num_rows == 0:
            return
        times = logs.column("request_time").cast("int64").to_numpy()
        self.metrics.freshness.observe_many((), np.maximum(now - times / 1000.0, 0.0))
        failed = logs.column("error_code").to_numpy() != 0
        summary = sli.summarize(logs.column("sdk_app_id").to_numpy(), logs.column("latency_ms").to_numpy(),
                                      failed, SLO_EDGES_MS)
        self.metrics.record_slis(summary)
        self.recent.append((now, summary))
        self.recent = [(t, s) for t, s in self.recent if now - t <= 30]

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
        "source",
        "strict",
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
