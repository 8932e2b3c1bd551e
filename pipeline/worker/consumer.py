"""Kafka batch source: a confluent-kafka consumer, run as a faust (mode) service, that hands message
batches to the processor.

Why not faust's own consumer: faust pays ~90 CPU-µs per event in its stream machinery (measured in
session 1's bench, docs/performance.md); one call per *batch* of up to ``consume_max_messages``
messages keeps faust as the framework (lifecycle, web server, timers, the registry agent) while the
per-record path is plain Python + numpy + Arrow.

The loop: poll a batch -> hand it to the processor (``deliver``) until it is buffered -> when the buffer is
full or old, seal it and write it on an I/O thread while the next one fills (at most one write in
flight: that bounds memory to two buffers and keeps commits in order) -> when the write is
acknowledged, commit its offsets. Offsets are committed *only* after ClickHouse (and Kafka, for dead
letters) acknowledged. While a write fails (ClickHouse down), partitions are paused and the consumer
keeps polling so it stays in the group; the write is retried with backoff. A revocation waits for
the write in flight and commits it (rebalance callbacks run inside ``consume``, on the loop's turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from mode import Service

from pipeline.config.kafka import FETCH_CONFIG
from pipeline.config.settings import Settings
from pipeline.ingest.buffer import Buffer
from pipeline.monitoring.metrics import Metrics
from pipeline.sinks.clickhouse import InsertError
from pipeline.sinks.deadletter import DeadLetterError
from pipeline.worker import failpoints
from pipeline.worker.processor import Processor

log = logging.getLogger(__name__)


class StopTimeout(Exception):
    """The final write on stop did not finish within ``STOP_FLUSH_S``: given up, not committed."""


RETRYABLE = (InsertError, DeadLetterError, KafkaException, StopTimeout)
# On SIGTERM/SIGINT the buffered rows get this long to be written and committed; past it the worker
# stops anyway with them uncommitted (the next owner re-reads them and skips what was stored), so a
# stalled write (ClickHouse down) never holds a stop for long.
STOP_FLUSH_S = 10.0


@dataclass
class Flight:
    """A sealed buffer being written on the I/O pool (at most one at a time, so commits stay in
    order and memory is bounded to two buffers)."""

    buffer: Buffer
    future: Future[dict[tuple[str, int], int]]


FIRST_POLL = 8  # messages of the first poll; each next one may double
# Polls that found nothing for this long mean the stream has paused (the end of a burst), not just a
# gap between messages of a steady flow: then a sizeable buffer is written without waiting for the
# timer (``Processor.should_flush``). A steady flow keeps its full-size batches, hence its part sizes.
IDLE_AFTER_S = 0.1


class PauseDetector:
    """Tells a paused stream from a gap in a steady one: polls that found nothing for ``after`` s."""

    def __init__(self, after: float = IDLE_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.after, self.clock = after, clock
        self.empty_since: float | None = None  # when the latest run of empty polls began

    def update(self, got_messages: bool) -> bool:
        """Record one poll's outcome; True while the stream has been paused for ``after``."""
        now = self.clock()
        if got_messages:
            self.empty_since = None
            return False
        if self.empty_since is None:
            self.empty_since = now
        return now - self.empty_since >= self.after


class KafkaBatchSource(Service):
    """Consumes the request-log and monitoring-sample topics in batches; commits after acks."""

    def __init__(self, settings: Settings, processor: Processor, metrics: Metrics,
                 deliver: Callable[[list[Any]], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings, self.processor, self.metrics, self.deliver = settings, processor, metrics, deliver
        self.topics = [settings.topic_request_logs, settings.topic_monitoring_samples]
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="imtel-io")
        self.consumer: Consumer | None = None
        self._admin: AdminClient | None = None  # topic ids and the lag's log ends (``admin``)
        self.assignment: list[TopicPartition] = []
        self.pending_recovery: dict[tuple[str, int], int] = {}
        self.paused = False
        self.ready = False
        self.stopping = False
        self.last_topic_check = 0.0
        self.flight: Flight | None = None
        self.resubscribe = False
        self.last_poll = 0  # messages the last poll returned
        self.bytes_per_message = 1024.0  # moving average of the message values polled
        self.pause = PauseDetector()
        self.failing_since: float | None = None  # wall time since which the write in flight keeps failing
        self.failing_cause = ""
        self.stop_deadline = float("inf")

    # -- lifecycle --------------------------------------------------------------------------------
    async def on_start(self) -> None:
        conf = {**self.settings.kafka_config(), "group.id": self.settings.consumer_group,
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "max.poll.interval.ms": self.settings.kafka_max_poll_interval_ms,
                **FETCH_CONFIG,
                **self.settings.group_protocol_config(),
                # a recreated topic must be seen soon, not after the 5-minute default
                "topic.metadata.refresh.interval.ms": 10_000}
        if self.settings.group_instance_id:
            conf["group.instance.id"] = self.settings.group_instance_id
        self.consumer = Consumer(conf, logger=logging.getLogger("imtel.kafka"))
        self._subscribe()
        self._run_task = asyncio.ensure_future(self._run())

    def _subscribe(self) -> None:
        assert self.consumer is not None
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)

    async def on_stop(self) -> None:
        """Graceful stop: let the loop finish its step, flush what is buffered, commit, leave."""
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_FLUSH_S
        if self.consumer is None:
            return
        # Cancelling is safe at any await of the loop: a batch is either fully buffered by the processor
        # (then flushed below) or not at all (then not committed, so re-read by the next owner).
        self._run_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._run_task
        try:
            await self._flush(final=True)
        finally:
            await self._io(self.consumer.close)
            self.consumer = None
            self.pool.shutdown(wait=False)

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # -- main loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._consume_loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ingest loop failed; stopping the worker")
            self.stopping = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.crash_worker()))

    async def crash_worker(self) -> None:
        """Stop the whole worker (non-zero exit) so an orchestrator restarts it."""
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)

    async def _consume_loop(self) -> None:
        assert self.consumer is not None
        while not (self.should_stop or self.stopping):
            try:
                # Wait long only when idle: consume(n, t) returns early only once n messages are
                # queued, so a long timeout while data flows would stall every poll. With rows
                # buffered, an idle wait is the pause threshold, so that a pause is seen that soon.
                wait = 0.01 if self.last_poll else self.pause.after if self.processor.buffered() else 0.2
                messages = await self._io(self.consumer.consume, self._poll_size(), wait)
                self.last_poll = len(messages)
                if messages:
                    self.metrics.messages_polled.inc(len(messages))
                    size = sum(len(m.value() or b"") for m in messages) / len(messages)
                    self.bytes_per_message = 0.7 * self.bytes_per_message + 0.3 * size
            except RuntimeError:  # consumer closed while stopping
                return
            data = [m for m in messages if self._keep(m)]
            if self.resubscribe:
                self.resubscribe = False
                await self._io(self.consumer.unsubscribe)
                self._subscribe()
            if self.pending_recovery:
                await self._recover()
            while data and not (self.should_stop or self.stopping):
                # the processor takes a prefix bounded in records and bytes; between two prefixes the
                # buffer may be written, so one poll of huge messages never buffers them all at once
                took = await asyncio.wait_for(self.deliver(data), timeout=120)
                data = data[took or len(data):]
                if data and self.processor.should_flush():
                    await self._land()
                    self._launch()
            if self.flight is not None and self.flight.future.done():
                await self._land()
            if self.processor.should_flush(idle=self.pause.update(bool(messages))):
                await self._land()  # one write in flight at a most: this is the backpressure
                self._launch()

    def _poll_size(self) -> int:
        """Messages to fetch: as many as fit the buffer by records (``Processor.poll_size``) and by
        bytes (``poll_max_bytes``), and at most double the last poll: the first poll after start-up
        would otherwise take ``consume_max_messages`` batched messages at once (5,000 x 300 records:
        the worker's peak memory, before any flush)."""
        fit = self.processor.poll_size()
        fit_bytes = int(self.settings.poll_max_bytes / max(1.0, self.bytes_per_message))
        return max(1, min(self.settings.consume_max_messages, fit, fit_bytes, 2 * max(FIRST_POLL, self.last_poll)))

    def _keep(self, msg: Any) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            self._ensure_topics_soon()
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("kafka: %s", err.str())
        return False

    def _ensure_topics_soon(self) -> None:
        now = time.monotonic()
        if now - self.last_topic_check > 10:
            self.last_topic_check = now
            from pipeline.schema.topics import ensure_topics

            created = ensure_topics(self.settings)
            if created:
                log.warning("topics were missing and have been recreated: %s", ", ".join(created))

    def _launch(self) -> None:
        """Start writing the current buffer on the I/O pool; consumption goes on meanwhile."""
        buffer = self.processor.seal()
        if buffer is not None:
            self.flight = Flight(buffer, self.pool.submit(self.processor.write, buffer))

    async def _land(self, final: bool = False) -> None:
        """Wait for the write in flight and commit its offsets. While it fails, consumption is paused
        and the write is retried with backoff (it resumes where it failed, so nothing is doubled)."""
        delay = 0.5
        while self.flight is not None:
            flight = self.flight
            try:
                offsets = await self._await_write(flight, final)
            except RETRYABLE as exc:
                if self.flight is not flight:
                    continue  # a revocation settled it meanwhile
                self._failing(exc)
                if (self.should_stop or self.stopping) and not final:
                    return  # on_stop makes the final attempts
                if final and time.monotonic() >= self.stop_deadline:
                    log.error("stopping with unwritten rows (not committed, will be re-read): %s", exc)
                    self.flight = None
                    return
                log.warning("write failed, retrying in %.1fs with consumption paused: %s", delay, exc)
                await self._pause(True)
                await self._keepalive(min(delay, max(0.0, self.stop_deadline - time.monotonic())), final)
                delay = min(delay * 2, 30.0)
                if self.flight is flight:
                    flight.future = self.pool.submit(self.processor.write, flight.buffer)
                continue
            self._failing(None)
            if self.flight is flight:
                self.flight = None
                await self._commit(offsets)
        await self._pause(False)

    def _failing(self, exc: BaseException | None) -> None:
        """Track since when the write in flight keeps failing (None: it succeeded), for readiness
        (``stalled``) and ``imtel_write_failing_since_timestamp_seconds``."""
        if exc is None:
            if self.failing_since is not None:
                self.failing_since, self.failing_cause = None, ""
                self.metrics.write_failing_since.set(0)
            return
        # /readyz is unauthenticated: name the kind of failure, never a server message (it may quote data)
        code = getattr(exc, "code", None)
        unreachable = str(exc) if str(exc).startswith("ClickHouse unreachable: ") else None  # classify()'s own words
        self.failing_cause = {InsertError: unreachable or f"ClickHouse insert failing (code {code})",
                              DeadLetterError: f"dead-letter produce failing ({str(exc)[:200]})"}.get(
            type(exc), type(exc).__name__)
        if self.failing_since is None:
            self.failing_since = time.time()
            self.metrics.write_failing_since.set(self.failing_since)

    def stalled(self, now: float | None = None) -> str | None:
        """Why ingestion is stalled (a write failing for over ``write_stall_seconds``), or None."""
        since = self.failing_since
        if since is None:
            return None
        age = (time.time() if now is None else now) - since
        if age < self.settings.write_stall_seconds:
            return None
        return f"writes failing for {age:.0f}s (over {self.settings.write_stall_seconds:.0f}s): {self.failing_cause}"

    async def _await_write(self, flight: Flight, final: bool) -> dict[tuple[str, int], int]:
        """The write's result. A slow write (a hung ClickHouse call lasts up to its timeout) must not
        cost the group membership: once a third of ``max.poll.interval.ms`` has passed (at least a
        second), consumption is paused and the consumer polled about once a second, fetching nothing
        but serving the group protocol. A merely slow insert (a second or two) pauses nothing."""
        future = asyncio.wrap_future(flight.future)
        wait = max(1.0, self.settings.kafka_max_poll_interval_ms / 3000)
        while not future.done():
            await asyncio.wait({future}, timeout=wait)
            wait = 1.0
            if final and not future.done() and time.monotonic() >= self.stop_deadline:
                raise StopTimeout(f"the write did not finish within {STOP_FLUSH_S:.0f}s of the stop")
            if future.done() or final or self.consumer is None or self.flight is not flight:
                continue
            await self._pause(True)
            stray = [m for m in await self._io(self.consumer.consume, 100, 0) if m.error() is None]
            if stray:
                await self._io(self._rewind, stray)
        return future.result()

    async def _flush(self, final: bool = False) -> None:
        """Write and commit everything: the write in flight, then the current buffer."""
        await self._land(final)
        self._launch()
        await self._land(final)

    async def _keepalive(self, seconds: float, final: bool) -> None:
        """Wait while polling the paused consumer about once a second so it stays in the group."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if not final and self.consumer is not None:
                stray = [m for m in await self._io(self.consumer.consume, 100, 0) if m.error() is None]
                if stray:  # should not happen (new assignments are paused in on_assign): rewind
                    await self._io(self._rewind, stray)

    def _rewind(self, messages: list[Any]) -> None:
        """Seek back to the first of some messages that were fetched but not processed."""
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            first[key] = min(first.get(key, m.offset()), m.offset())
        assert self.consumer is not None
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        log.warning("rewound %d partitions to re-read %d records fetched while paused", len(first), len(messages))

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets or self.consumer is None:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            consumer = self.consumer
            failpoints.hit("commit.before")
            await self._io(lambda: consumer.commit(offsets=tps, asynchronous=False))
            failpoints.hit("commit.after")
            self.metrics.commits.inc()
        except KafkaException as exc:
            # Rows are stored; the next owner finds them past the committed offset and skips them.
            log.warning("offset commit failed (rows are stored; replay will skip them): %s", exc)

    async def _pause(self, paused: bool) -> None:
        if paused == self.paused or self.consumer is None:
            return
        assignment = await self._io(self.consumer.assignment)
        await self._io(self.consumer.pause if paused else self.consumer.resume, assignment)
        self.paused = paused
        self.metrics.paused.set(int(paused))

    async def _recover(self) -> None:
        delay = 0.5
        while self.pending_recovery:
            (topic, partition), committed = next(iter(self.pending_recovery.items()))
            try:
                failpoints.hit("assign.before_recover")
                await self._io(self.processor.recover, topic, partition, committed)
                del self.pending_recovery[(topic, partition)]
            except RETRYABLE as exc:
                log.warning("recovery of %s/%d failed, retrying in %.1fs: %s", topic, partition, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.ready = True

    # -- rebalance callbacks (run inside consume(), on the I/O thread) ------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        self._recreate_lost_topics()
        self._refresh_topic_ids()
        self._recover_from_committed(consumer, partitions)
        # eager: the whole new assignment (the revocation emptied ours); cooperative: only what is added
        added = {(tp.topic, tp.partition) for tp in partitions}
        self.assignment = [tp for tp in self.assignment if (tp.topic, tp.partition) not in added] + list(partitions)
        self._update_assigned()
        if self.paused:
            consumer.pause(partitions)
        log.info("assigned %d partitions: %s", len(partitions),
                 ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions are taken away: all of them (eager rebalance) or some (cooperative, or lost).
        Flush everything buffered once if possible and commit it; else drop the buffer (nothing of it
        was committed, so the next owner re-reads it) and rewind the partitions we keep."""
        self.metrics.rebalances.labels("revoked").inc()
        failpoints.hit("revoke.before_flush")
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        kept = [tp for tp in self.assignment if (tp.topic, tp.partition) not in revoked]
        settled = self._settle_flight(consumer)
        if self.processor.has_pending():
            try:
                offsets = self.processor.flush()
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                asynchronous=False)
                self.metrics.commits.inc()
            except (*RETRYABLE, RuntimeError) as exc:
                dropped = self.processor.discard()
                settled = False
                log.warning("revoked with %d unwritten records (dropped, not committed): %s", dropped, exc)
        if not settled and kept:
            self._recover_from_committed(consumer, kept, seek=True)
            log.warning("rewound %d kept partitions to their committed offsets", len(kept))
        self.assignment = kept
        for key in revoked:
            self.pending_recovery.pop(key, None)
            self.processor.forget(*key)
        self.ready = bool(kept) and self.ready
        self._update_assigned()

    def _recover_from_committed(self, consumer: Consumer, partitions: list[TopicPartition], seek: bool = False) -> None:
        """Queue recovery (skip what was stored past the commit) of ``partitions`` from their committed
        offsets; with ``seek``, also read them again from there. Seeking is for partitions we keep after
        dropping unwritten records (an incremental rebalance): their fetch positions are past those."""
        for tp in consumer.committed(partitions, timeout=10):
            start = tp.offset if tp.offset != OFFSET_INVALID and tp.offset >= 0 else 0
            if seek:
                consumer.seek(TopicPartition(tp.topic, tp.partition, start))
            self.pending_recovery[(tp.topic, tp.partition)] = start

    def _settle_flight(self, consumer: Consumer) -> bool:
        """On revocation: finish the write in flight (one more attempt if it failed) and commit it, or
        give it up uncommitted (the next owner re-reads it and skips what was stored). False when
        given up."""
        flight, self.flight = self.flight, None
        if flight is None:
            return True
        try:
            try:
                offsets = flight.future.result()
            except RETRYABLE:
                offsets = self.processor.write(flight.buffer)
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                            asynchronous=False)
            self.metrics.commits.inc()
            return True
        except (*RETRYABLE, RuntimeError) as exc:
            log.warning("revoked with %d unwritten records (dropped, not committed): %s", len(flight.buffer), exc)
            return False

    def _recreate_lost_topics(self) -> None:
        """A broker that lost its topics (the bundled one keeps them in memory only) still lets the
        group re-form from stale metadata, and librdkafka reports no unknown-topic error: so on
        every assignment, make sure the topics exist; if some had to be created, subscribe again so
        the new partitions are assigned (their offsets start over, and so do their topic ids)."""
        from pipeline.schema.topics import ensure_topics

        try:
            created = ensure_topics(self.settings)
        except Exception as exc:  # the broker may be unreachable right now: the next assignment retries
            log.warning("could not check the topics: %s", exc)
            return
        if set(created) & set(self.topics):
            log.warning("topics were missing and have been recreated: %s; subscribing again", ", ".join(created))
            self.resubscribe = True

    def admin(self) -> AdminClient:
        """The source's admin client, on connections of its own (not the consumer's: see ``update_lag``),
        created at first use. Two threads racing here at worst build one client too many."""
        if self._admin is None:
            self._admin = AdminClient(self.settings.kafka_config())
        return self._admin

    def _refresh_topic_ids(self) -> None:
        try:
            from confluent_kafka import TopicCollection

            futures = self.admin().describe_topics(TopicCollection(self.topics), request_timeout=10)
            for name, fut in futures.items():
                self.processor.set_topic_id(name, str(fut.result().topic_id))
        except Exception as exc:  # the broker may not support topic ids: fall back to names
            log.warning("could not read topic ids (%s); using topic names as identity", exc)

    def _update_assigned(self) -> None:
        for topic in self.topics:
            self.metrics.assigned.labels(topic).set(sum(1 for tp in self.assignment if tp.topic == topic))

    # -- lag --------------------------------------------------------------------------------------
    def update_lag(self) -> None:
        """Lag per assigned partition: its log-end offset less the consumer's position, clamped at 0
        (Tansu's high watermark can be too low); a partition without a position yet is left out.

        The log-end offsets come from the admin client's ListOffsets (``admin``), on its own connection. Asked
        on the consumer's (``get_watermark_offsets`` uncached), each answer queues behind the fetch the
        broker holds open for up to ``fetch.wait.max.ms`` (500 ms) on an idle partition: with 8 idle
        partitions one update took 3.6 s, and an offset commit issued meanwhile waited 4.0 s for it
        (Kafka 4.4, confluent-kafka 2.16), which held the next write back: the bench's windows of 9 s
        instead of 5 s. The consumer's cached watermarks would cost nothing but go stale on a paused
        partition, which is when the lag matters most."""
        consumer, assigned = self.consumer, [TopicPartition(tp.topic, tp.partition) for tp in self.assignment]
        if consumer is None or not assigned:
            return
        try:
            positions = consumer.position(assigned)
            ends = self.admin().list_offsets({tp: OffsetSpec.latest() for tp in assigned}, request_timeout=5)
        except (KafkaException, RuntimeError) as exc:
            log.debug("lag not updated: %s", exc)
            return
        for tp in positions:
            try:
                high = ends[tp].result().offset
            except (KafkaException, KeyError):
                continue
            if tp.offset >= 0 and high >= 0:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))
