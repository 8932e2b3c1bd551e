"""The delivery protocol: one sealed buffer into the store, once, whatever fails on the way.

A write is a sequence of acknowledged steps (the worker commits Kafka offsets only after ``write``
returned):
1. dead letters of invalid records -> the dead-letter topic (acknowledged), then the ledger;
2. raw rows -> ``request_logs`` / ``monitoring_samples``, each insert under a deduplication token; the
   store folds each inserted block into ``interface_stats_1m`` in the same statement (the views of
   migration 009), and drops a retried block from both tables by its token;
3. dead letters of rows the store refused as bad data, then the SLI metrics.
The buffer remembers each acknowledged step, down to the row ranges of a split insert, so a retry
resumes at the failed step and stores nothing twice. A crash between two steps leaves rows whose
offsets were not committed: on partition assignment ``recover`` finds them (their src_* columns),
rebuilds their aggregate minutes, and admission skips them when they are read again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from pipeline.config.settings import Settings
from pipeline.ingest import limits, replay
from pipeline.ingest.buffer import Buffer, DeadLetter, Origin, dead_letter_table, new_batch_id
from pipeline.monitoring import sli
from pipeline.monitoring.metrics import LATENCY_BUCKETS_S, Metrics
from pipeline.sinks.protocol import LOGS, SAMPLES, DeadLetterSink, InsertError, RawTable, Store
from pipeline.worker import failpoints

log = logging.getLogger(__name__)
SLO_EDGES_MS = tuple(edge * 1000 for edge in LATENCY_BUCKETS_S)
# Rows the store refuses as bad data go to dead letters, unless so many are refused that the fault
# is systemic (schema drift, server bug): then the write is retried instead of dead-lettering a batch.
MAX_REJECT_RATIO = 0.01
MIN_REJECT_LIMIT = 16


class Writer:
    """Stores sealed buffers step by step and finds what a crash left stored but uncommitted."""

    def __init__(self, settings: Settings, store: Store, dead_letters: DeadLetterSink, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.store, self.dead_letters, self.metrics, self.clock = (
            settings, store, dead_letters, metrics, clock)
        self.recent: list[tuple[float, sli.Summary]] = []  # (time, summary) for the live view

    def recover(self, topic: str, topic_id: str, partition: int, committed: int) -> set[tuple[int, int]]:
        """Before consuming a partition: the records (offset, index) stored or dead-lettered past its
        committed offset, with the aggregate minutes of the stored ones rebuilt."""
        raw = LOGS if topic == self.settings.topic_request_logs else SAMPLES
        found = self.store.recover(raw, topic_id, partition, committed)
        keys = found.keys | self.store.dead_letters_stored(topic_id, partition, committed)
        if keys:
            log.warning("partition %s/%d: %d records past committed offset %d were already stored; "
                        "rebuilt %d aggregate minutes, they will be skipped on replay",
                        topic, partition, len(keys), committed, found.minutes)
        return keys

    def write(self, b: Buffer) -> dict[tuple[str, int], int]:
        """Write one sealed buffer; returns the offsets that may now be committed.

        Runs on an I/O thread while the next buffer fills: it touches only ``b``, the store (locked),
        the dead-letter producer and the metrics (both thread-safe).
        Raises ``InsertError``/``DeadLetterError``: nothing may be committed then. Each step is done
        once: a retry after a failure resumes at the failed step (the buffer remembers what was
        acknowledged, down to the row ranges of a split insert), so a retried write never stores a
        row or a dead letter twice."""
        b.batch_id = b.batch_id or new_batch_id()
        self._replays_stored(b)
        self._send_dead(b, b.dead, "dead")
        if "tables" not in b.done:
            b.tables = {LOGS.name: b.log_table(), SAMPLES.name: b.sample_table()}
            b.logs, b.samples = [], []
            if b.replayed:
                self._drop_replayed(b)
            b.done.add("tables")
        for raw in (LOGS, SAMPLES):
            table = b.tables[raw.name]
            if raw.name not in b.done:
                failpoints.hit("flush.before_raw")
                self._insert_raw(b, raw, table)
                b.done.add(raw.name)
                failpoints.hit("flush.after_raw")
        self._send_dead(b, b.rejected, "rejected")
        if "metrics" not in b.done:
            self._after_write(b.tables[LOGS.name])
            for (topic, outcome), n in b.replay_outcomes.items():
                self.metrics.replayed_records.labels(topic, outcome).inc(n)
            b.done.add("metrics")
        return dict(b.next_offsets)

    def _replays_stored(self, b: Buffer) -> None:
        """For a buffer holding replayed records (``ingest/replay.py``), once per write: which of their
        original coordinates are already stored, per table (one lookup each), and the replayed dead
        letters already in the ledger with the same replay count, which are dropped here."""
        if "replays" in b.done or not (b.replayed or any(x.replay for x in b.dead)):
            return
        b.replay_stored = {name: self.store.stored_keys(name, keys) for name, keys in b.replayed.items() if keys}
        again = [x for x in b.dead if x.replay]
        if again and "dead" not in b.done:
            keys = {(x.origin.topic_id, x.origin.partition, x.origin.offset, x.origin.index, x.replay) for x in again}
            known = self.store.stored_keys("dead_letters", keys)
            seen: set[tuple[Any, ...]] = set()
            kept: list[DeadLetter] = []
            for x in b.dead:
                k = (x.origin.topic_id, x.origin.partition, x.origin.offset, x.origin.index, x.replay)
                if x.replay and (k in known or k in seen):
                    continue
                seen.add(k)
                kept.append(x)
                if x.replay:
                    b.replay_outcomes[(x.origin.topic, "dead")] = b.replay_outcomes.get((x.origin.topic, "dead"), 0) + 1
            b.dead = kept
        b.done.add("replays")

    def _drop_replayed(self, b: Buffer) -> None:
        """Drop replayed rows already stored, or repeated in this buffer (``replay.drop_mask``)."""
        for raw in (LOGS, SAMPLES):
            keys = b.replayed.get(raw.name)
            if not keys:
                continue
            table = b.tables[raw.name]
            known = b.replay_stored.get(raw.name, set())
            drop = replay.drop_mask(table, keys, known)
            topic = self.settings.topic_request_logs if raw is LOGS else self.settings.topic_monitoring_samples
            dropped = int(drop.sum())
            if dropped:
                b.tables[raw.name] = table.filter(pa.array(~drop))
                log.info("%d replayed records of %s were already stored: not stored again", dropped, raw.name)
            for outcome, n in (("duplicate", dropped), ("stored", len(keys - known))):
                if n > 0:
                    b.replay_outcomes[(topic, outcome)] = b.replay_outcomes.get((topic, outcome), 0) + n

    def _send_dead(self, b: Buffer, letters: list[DeadLetter], step: str) -> None:
        """Dead letters to Kafka (acknowledged), then to the ledger: each once per flush."""
        if step in b.done:
            return
        if letters:
            if step + "-sent" not in b.done:
                # at most ``dead_letters_per_message`` letters per message; the ledger keeps every record
                plan = limits.plan_letters(letters, self.settings.dead_letters_per_message)
                refused = self.dead_letters.send([out.letter for out in plan]) or [None] * len(plan)
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
