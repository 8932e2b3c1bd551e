"""Contender 2: the naive faust-streaming agent (``python -m pipeline.dev.bench.naive_faust JOB``).

The textbook design: a faust agent on the topic, one event at a time, stdlib ``json`` per message,
hand-written field checks and the pipeline's IP minimiser per record, rows buffered and inserted with
clickhouse-connect's row insert per batch of 1000 (plus a timer that flushes the tail after 1 s),
each insert folded into the aggregate table by the schema's view, as the pipeline's are.
faust commits offsets on its own timer (1 s here), i.e. possibly before the rows were inserted: the
at-least-once gap the pipeline closes. Same faust broker settings as the pipeline (3 s rebalance).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pipeline.dev.bench.rowwise import Row, RowBuilder, RowSink, split_records
from pipeline.dev.bench.status import Job, StatusWriter

BATCH_ROWS = 1000
TAIL_FLUSH_S = 1.0


def main(job_path: str) -> int:
    import clickhouse_connect
    import faust
    from faust.worker import Worker

    from pipeline.schema import migrations

    job = Job.load(job_path)
    status = StatusWriter(job.status_path, job.fresh_from_ms)
    client = clickhouse_connect.get_client(dsn=f"chdb://{job.store}")
    migrations.apply(client, job.database)
    sink, builder = RowSink(client, job.database), RowBuilder(job.topic)
    app = faust.App(job.group, broker=f"kafka://{job.bootstrap}", datadir=f"{job.store}-faust", web_enabled=False,
                    broker_rebalance_timeout=3, broker_session_timeout=10, broker_heartbeat_interval=3,
                    topic_disable_leader=True, store="memory://", consumer_auto_offset_reset="earliest",
                    broker_commit_interval=1.0)
    topic = app.topic(job.topic, value_serializer="raw", key_serializer="raw")
    buffer: list[Row] = []
    started = [0.0]

    def flush() -> None:
        sink.write(buffer)
        status.wrote(len(buffer), [r[0] for r in buffer])
        buffer.clear()

    @app.agent(topic)
    async def ingest(stream: Any) -> None:
        async for event in stream.events():
            status.saw_records()
            msg, now_ms = event.message, int(time.time() * 1000)
            for index, rec in split_records(event.value, json.loads):
                row = builder.row(rec, msg.partition, msg.offset, index, now_ms)
                if row is not None:
                    if not buffer:
                        started[0] = time.monotonic()
                    buffer.append(row)
                    if len(buffer) >= BATCH_ROWS:
                        flush()

    @app.timer(interval=0.25)
    async def tail() -> None:
        if buffer and time.monotonic() - started[0] >= TAIL_FLUSH_S:
            flush()

    worker = Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
