"""Contender 4, the machine's limit: what Kafka + decoding and ClickHouse inserts cost on their own.

``python -m pipeline.dev.bench.limit consume JOB``: a confluent-kafka consumer reads the whole topic in
batches (``consume(N)``, partitions assigned directly: no group join) and decodes every message into
typed request-log structs with msgspec (object, array or NDJSON), and does nothing else. This is
the ceiling for any Python consumer of this data on one process. It decodes into the pipeline's own
hot-path struct (``LooseRequestLog``: every type and range, the ``interface`` pattern left to a per-
batch check), the cheapest decode that still types and bounds every field, so the ceiling is not
lowered by the per-record Python regex of the strict struct.

``python -m pipeline.dev.bench.limit insert JOB``: reads and decodes the same topic *untimed*, builds
the same ``request_logs`` rows as Arrow tables of ``INSERT_ROWS`` rows, the pipeline's default against a
server (IP minimised, origin columns filled),
then times only clickhouse-connect's ``insert_arrow`` into the embedded engine (which folds each
block into ``interface_stats_1m`` through the schema's view, as for the pipeline), then the background
merges of the inserted parts (until none has run for a second).

``python -m pipeline.dev.bench.limit floor JOB`` opens a fresh embedded store and applies the migrations,
nothing else: the peak RSS any process pays for the embedded engine.

Both measurements report their own window (time and CPU of the process, all threads) through the status file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pyarrow as pa

from pipeline.config.kafka import FETCH_CONFIG, POLL_RECORDS
from pipeline.config.settings import SERVER_BATCH_ROWS
from pipeline.dev.bench.status import Job, StatusWriter
from pipeline.ingest.records import LooseRequestLog

INSERT_ROWS = SERVER_BATCH_ROWS
ARROW_SCHEMA = pa.schema([
    ("request_time", pa.timestamp("ms", tz="UTC")), ("sdk_app_id", pa.uint32()), ("interface", pa.string()),
    ("request_id", pa.string()), ("client_net", pa.string()), ("latency_ms", pa.uint32()), ("error_code", pa.int32()),
    ("exception", pa.string()), ("region", pa.string()), ("platform", pa.string()), ("src_topic_id", pa.string()),
    ("src_partition", pa.uint16()), ("src_offset", pa.uint64()), ("src_index", pa.uint32())])


class TypedDecoder:
    """Message value -> list of typed request logs (a JSON object, a JSON array, or NDJSON)."""

    def __init__(self) -> None:
        self.one = msgspec.json.Decoder(LooseRequestLog)
        self.many = msgspec.json.Decoder(list[LooseRequestLog])  # type: ignore[valid-type]

    def decode(self, value: bytes) -> list[Any]:
        if value[:1] == b"[":
            return self.many.decode(value)
        if b"\n" in value.rstrip():
            return self.one.decode_lines(value)
        return [self.one.decode(value)]


def messages(job: Job, batch: int) -> Iterator[list[Any]]:
    """Batches of the topic's messages from the beginning, until ``expected_messages`` were read."""
    from confluent_kafka import Consumer, TopicPartition

    want = int(job.options["expected_messages"])
    # The worker's own fetch settings: without their short fetch.queue.backoff.ms a consumer that
    # decodes stalls 1 s whenever its prefetch queue fills.
    consumer = Consumer({"bootstrap.servers": job.bootstrap, "group.id": job.group, "enable.auto.commit": False,
                         "enable.partition.eof": False, **FETCH_CONFIG})
    consumer.assign([TopicPartition(job.topic, p, 0) for p in job.options["partitions"]])
    seen = 0
    try:
        while seen < want:
            # a short timeout: consume(n, t) returns early only once n messages are queued
            got = [m for m in consumer.consume(batch, 0.01) if m.error() is None]
            seen += len(got)
            if got:
                yield got
    finally:
        consumer.close()


def consume(job: Job) -> None:
    """Batch consume + typed decode, nothing else; the status reports records decoded. Each poll asks
    for about ``POLL_RECORDS`` records (1000 single-record messages, ~66 batched ones), as the worker's
    polls do."""
    status, decoder = StatusWriter(job.status_path), TypedDecoder()
    records = 0
    per_message = max(1.0, job.expected_records / max(1, int(job.options["expected_messages"])))
    for batch in messages(job, max(1, min(1000, int(POLL_RECORDS / per_message)))):
        status.saw_records()
        for m in batch:
            records += len(decoder.decode(m.value()))
    status.wrote(records)


def arrow_tables(job: Job) -> list[pa.Table]:
    """The topic's records as ``request_logs`` Arrow tables of ``INSERT_ROWS`` rows (untimed; built
    as the rows arrive, so only Arrow data is held, as a pipeline would between flushes)."""
    from pipeline.dev.bench.rowwise import COLUMNS
    from pipeline.ingest.privacy import minimisation

    decoder, minimise = TypedDecoder(), minimisation("prefix")
    tables: list[pa.Table] = []
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}

    def seal() -> None:
        tables.append(pa.Table.from_pydict(cols, schema=ARROW_SCHEMA))
        for values in cols.values():
            values.clear()

    for batch in messages(job, 10_000):
        for m in batch:
            partition, offset = m.partition(), m.offset()
            for index, r in enumerate(decoder.decode(m.value())):
                for name, value in (("request_time", r.request_time), ("sdk_app_id", r.sdk_app_id),
                                    ("interface", r.interface), ("request_id", r.request_id),
                                    ("client_net", minimise(r.client_ip)), ("latency_ms", r.latency_ms),
                                    ("error_code", r.error_code), ("exception", r.exception or ""),
                                    ("region", r.region), ("platform", r.platform), ("src_topic_id", job.topic),
                                    ("src_partition", partition), ("src_offset", offset), ("src_index", index)):
                    cols[name].append(value)
            if len(cols["request_time"]) >= INSERT_ROWS:
                seal()
    if cols["request_time"]:
        seal()
    return tables


def insert(job: Job) -> None:
    """Time Arrow inserts (the view's aggregate included), then the merges (reported apart)."""
    import clickhouse_connect

    from pipeline.schema import migrations

    status = StatusWriter(job.status_path)
    client = clickhouse_connect.get_client(dsn=f"chdb://{job.store}")
    migrations.apply(client, job.database)
    tables = arrow_tables(job)
    rows = sum(t.num_rows for t in tables)
    status.saw_records()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for table in tables:
        client.insert_arrow(f"{job.database}.request_logs", table)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    parts_before = active_parts(client, job.database)
    settle_merges(client)
    wall2, cpu2 = time.perf_counter(), time.process_time()
    status.extra.update(rows_per_insert=INSERT_ROWS, insert_seconds=wall1 - wall0, insert_cpu_seconds=cpu1 - cpu0,
                        merge_seconds=wall2 - wall1, merge_cpu_seconds=cpu2 - cpu1,
                        parts_before_merges=parts_before, parts_after_merges=active_parts(client, job.database))
    status.wrote(rows)


def active_parts(client: Any, database: str) -> int:
    return int(client.command(f"SELECT count() FROM system.parts WHERE database = '{database}' "
                              "AND table = 'request_logs' AND active"))


def settle_merges(client: Any, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Wait until the engine has run no merge for ``quiet_s`` (at most ``limit_s``): the background
    merges of the inserted parts are work every MergeTree writer pays, in or after its window, so
    the CPU of this wait is reported as the merges' cost (the engine is otherwise idle here)."""
    quiet_since, deadline = time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if int(client.command("SELECT count() FROM system.merges")):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


def floor(job: Job) -> None:
    """Open a fresh embedded store and apply the migrations, nothing else: the resident memory any
    process pays for the embedded ClickHouse engine (the floor under every contender's peak RSS)."""
    import clickhouse_connect

    from pipeline.schema import migrations

    client = clickhouse_connect.get_client(dsn=f"chdb://{job.store}")
    migrations.apply(client, job.database)
    client.query(f"SELECT count() FROM {job.database}.request_logs")
    status = StatusWriter(job.status_path)
    status.saw_records()
    status.wrote(0)


def main(argv: list[str]) -> int:
    mode, job = argv[0], Job.load(argv[1])
    {"consume": consume, "insert": insert, "floor": floor}[mode](job)
    return 0  # the harness reaps this process with its rusage (peak RSS, CPU)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
