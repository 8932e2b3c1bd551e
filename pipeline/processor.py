"""The worker's synchronous core: messages in, buffered rows and dead letters out, flush on demand.

No asyncio and no consumer here, so it is testable with plain objects: the Kafka source (``source.py``)
feeds it message batches through a faust agent, asks it to flush, and commits the offsets it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from . import aggregate, failpoints
from .batch import Buffer, Origin, new_batch_id
from .decode import Decoder, Reject, time_reason
from .metrics import LATENCY_BUCKETS_S, Metrics
from .policy import DAY_MS, Policy
from .privacy import Minimiser, minimiser
from .records import MonitoringSample, RequestLog
from .settings import Settings
from .sinks.clickhouse import LOGS, SAMPLES, ClickHouseStore

log = logging.getLogger(__name__)
SLO_EDGES_MS = tuple(edge * 1000 for edge in LATENCY_BUCKETS_S)


class Message(Protocol):
    """The part of ``confluent_kafka.Message`` the processor uses."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class DeadLetterSink(Protocol):
    """Produces dead letters and blocks until Kafka acknowledged them (raises otherwise)."""

    def send(self, letters: Sequence[Any]) -> None: ...


class Processor:
    """Decode, validate, minimise and buffer; flush raw rows, aggregates and dead letters."""

    def __init__(self, settings: Settings, store: ClickHouseStore, dead_letters: DeadLetterSink,
                 metrics: Metrics, policy: Policy, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.store, self.dlq, self.metrics, self.clock = settings, store, dead_letters, metrics, clock
        self.minimise: Minimiser = minimiser(settings.pii_mode, settings.pii_hash_key)
        self.logs_decoder = Decoder(RequestLog)
        self.samples_decoder = Decoder(MonitoringSample)
        self.max_age_ms = {settings.topic_request_logs: policy.log_data_days * DAY_MS,
                           settings.topic_monitoring_samples: policy.monitoring_data_days * DAY_MS}
        self.skew_ms = settings.max_future_skew_seconds * 1000
        self.buffer = Buffer()
        self.topic_ids: dict[str, str] = {}
        self.skip: dict[tuple[str, int], tuple[set[tuple[int, int]], int]] = {}
        self.recent: list[tuple[float, aggregate.Summary]] = []  # (time, summary) for the live view

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
    def process(self, messages: Iterable[Message]) -> None:
        """Decode a batch of Kafka messages into the buffer (valid rows and dead letters)."""
        now_ms = int(self.clock() * 1000)
        self.buffer.touch(self.clock())
        counts: dict[str, list[int]] = {}
        for msg in messages:
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            c = counts.setdefault(topic, [0, 0])
            c[0] += 1
            c[1] += self._process_one(msg, topic, partition, offset, now_ms)
            self.buffer.consumed(topic, partition, offset)
        for topic, (n_msgs, n_records) in counts.items():
            self.metrics.messages_consumed.labels(topic).inc(n_msgs)
            self.metrics.records_consumed.labels(topic).inc(n_records)

    def _process_one(self, msg: Message, topic: str, partition: int, offset: int, now_ms: int) -> int:
        is_logs = topic == self.settings.topic_request_logs
        decoded = (self.logs_decoder if is_logs else self.samples_decoder).decode(msg.value())
        topic_id = self.topic_ids.get(topic, topic)
        skip = self.skip.get((topic, partition))
        if skip and offset > skip[1]:
            del self.skip[(topic, partition)]
            skip = None
        max_age, key = self.max_age_ms[topic], msg.key()
        for reject in decoded.rejects:
            self._dead(reject, Origin(topic, topic_id, partition, offset, reject.index), key, skip)
        for index, record in decoded.records:
            origin = Origin(topic, topic_id, partition, offset, index)
            if skip and (offset, index) in skip[0]:
                self.metrics.records_skipped.labels(topic).inc()
                continue
            when = record.request_time if isinstance(record, RequestLog) else record.window_start
            reason = time_reason(when, now_ms, max_age, self.skew_ms)
            if reason is None and isinstance(record, RequestLog):
                net = self.minimise(record.client_ip)
                if net is None:
                    reason = "invalid_ip"
                else:
                    self.buffer.add_log(record, net, origin)
                    continue
            elif reason is None and isinstance(record, MonitoringSample):
                if record.failures > record.requests:
                    reason = "inconsistent"
                else:
                    self.buffer.add_sample(record, origin)
                    continue
            detail = {"too_old": "event time is older than the retention period",
                      "in_future": "event time is too far in the future",
                      "invalid_ip": "client_ip is not an IPv4 or IPv6 address",
                      "inconsistent": "failures exceeds requests"}[reason or "inconsistent"]
            raw = msgspec_encode(record)
            self._dead(Reject(index, reason or "inconsistent", detail, raw), origin, key, skip)
        return len(decoded.records) + len(decoded.rejects)

    def _dead(self, reject: Reject, origin: Origin, key: bytes | None,
              skip: tuple[set[tuple[int, int]], int] | None) -> None:
        if skip and (origin.offset, origin.index) in skip[0]:
            self.metrics.records_skipped.labels(origin.topic).inc()
            return
        self.buffer.add_dead(reject, origin, key)

    # -- flushing ---------------------------------------------------------------------------------
    def should_flush(self) -> bool:
        b = self.buffer
        if not b.next_offsets:
            return False
        return len(b) >= self.settings.batch_max_records or (
            self.clock() - b.started >= self.settings.batch_max_seconds)

    def flush(self) -> dict[tuple[str, int], int]:
        """Write everything buffered; returns the offsets that may now be committed.

        Raises ``InsertError``: nothing may be committed then, and the buffer is kept. Each step is
        done once: a retry after a failure resumes at the failed step (the buffer remembers what was
        acknowledged), so a retried flush never writes a row or a dead letter twice."""
        b = self.buffer
        b.batch_id = b.batch_id or new_batch_id()
        if "dead" not in b.done and b.dead:
            if "dead-sent" not in b.done:
                self.dlq.send(b.dead)
                for letter in b.dead:
                    self.metrics.records_invalid.labels(letter.origin.topic, letter.reason).inc()
                self.metrics.dead_letters.labels(self.settings.topic_dead_letters).inc(len(b.dead))
                b.done.add("dead-sent")
            self.store.insert_arrow("dead_letters", b.dead_letter_table(b.batch_id))
            failpoints.hit("flush.after_dead_letters")
        b.done.add("dead")
        logs = b.log_table(b.batch_id)
        for raw, table in ((LOGS, logs), (SAMPLES, b.sample_table(b.batch_id))):
            if raw.name not in b.done:
                failpoints.hit("flush.before_raw")
                self.store.insert_arrow(raw.name, table)
                b.done.add(raw.name)
                failpoints.hit("flush.after_raw")
            if raw.name + "+agg" not in b.done:
                self.store.aggregate(raw, table.num_rows, b.batch_id)
                b.done.add(raw.name + "+agg")
                failpoints.hit("flush.after_aggregate")
        self._after_write(logs)
        offsets = dict(b.next_offsets)
        self.buffer = Buffer()
        return offsets

    def _after_write(self, logs: Any) -> None:
        now = self.clock()
        self.metrics.last_write.set(now)
        if logs.num_rows == 0:
            return
        times = logs.column("request_time").cast("int64").to_numpy()
        self.metrics.freshness.observe_many((), np.maximum(now - times / 1000.0, 0.0))
        failed = logs.column("error_code").to_numpy() != 0
        summary = aggregate.summarize(logs.column("sdk_app_id").to_numpy(), logs.column("latency_ms").to_numpy(),
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


def msgspec_encode(record: Any) -> bytes:
    import msgspec

    return msgspec.json.encode(record)
