"""Contender 3: Quix Streams doing the same job (``python -m pipeline.dev.bench.quix_app JOB``).

Runs in its own virtualenv (``.venv-quix``, made by ``make bench``): Quix Streams 3.x pins
confluent-kafka < 2.13 while the pipeline pins 2.16, so the two cannot share one environment.

The idiomatic Quix design: a ``StreamingDataFrame`` over the topic (bytes in), ``apply(...,
expand=True)`` splitting each message into records (Quix's own orjson ``loads``; JSON object, array
or NDJSON), ``apply`` checking fields and minimising the IP per record, and a ``BatchingSink`` that
inserts each partition's rows at every checkpoint (``commit_interval`` 1 s, like the pipeline's
flush interval), which the schema's view folds into the aggregate table; Quix commits the offsets
only after the sink flushed. The aggregates come from the engine, not from Quix windows: a
window over a finite stream never closes its last minute, so its totals could not match.

Shim for the bundled broker: Quix reads ``retention.ms`` from the DescribeConfigs answer of the
input topic (to derive changelog topics) and raises ``KeyError: 'retention.ms'`` when the broker
answers nothing. The harness creates the topics with explicit configs, which this broker then
echoes back; ``patch_topic_configs`` also fills the two retention keys with Kafka's defaults when a
topic came back without them, so the app also runs on topics created elsewhere.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pipeline.dev.bench.rowwise import Row, RowBuilder, RowSink, split_records
from pipeline.dev.bench.status import Job, StatusWriter

KAFKA_DEFAULTS = {"retention.ms": "604800000", "retention.bytes": "-1"}


def patch_topic_configs() -> None:
    """Fill missing retention configs in what Quix learns about existing topics (see module doc)."""
    from quixstreams.models.topics.admin import TopicAdmin

    original = TopicAdmin.inspect_topics

    def inspect_topics(self: Any, *args: Any, **kwargs: Any) -> Any:
        found = original(self, *args, **kwargs)
        for config in found.values():
            if config is not None:
                for key, value in KAFKA_DEFAULTS.items():
                    config.extra_config.setdefault(key, value)
        return found

    TopicAdmin.inspect_topics = inspect_topics  # type: ignore[method-assign]


def main(job_path: str) -> int:
    import clickhouse_connect
    from quixstreams import Application, message_context
    from quixstreams.sinks.base import BatchingSink, SinkBatch
    from quixstreams.utils.json import loads

    from pipeline.schema import migrations

    patch_topic_configs()
    job = Job.load(job_path)
    status = StatusWriter(job.status_path, job.fresh_from_ms)
    client = clickhouse_connect.get_client(dsn=f"chdb://{job.store}")
    migrations.apply(client, job.database)
    rows_sink, builder = RowSink(client, job.database), RowBuilder(job.topic)

    class ClickHouseRows(BatchingSink):
        """Inserts one partition's rows per checkpoint (the engine's view aggregates them)."""

        def write(self, batch: SinkBatch) -> None:
            rows: list[Row] = [item.value for item in batch]
            rows_sink.write(rows)
            status.wrote(len(rows), [r[0] for r in rows])

    app = Application(broker_address=job.bootstrap, consumer_group=job.group, auto_offset_reset="earliest",
                      commit_interval=1.0, loglevel="WARNING", state_dir=f"{job.store}-quix-state",
                      use_changelog_topics=False,
                      # as the pipeline's consumer: the bundled broker holds a join for the whole rebalance timeout
                      consumer_extra_config={"max.poll.interval.ms": 10_000, "session.timeout.ms": 10_000})
    topic = app.topic(job.topic, value_deserializer="bytes", key_deserializer="bytes")

    def records(value: bytes) -> list[tuple[int, Any]]:
        status.saw_records()
        return list(split_records(value, loads))

    def to_row(item: tuple[int, Any]) -> Row | None:
        ctx = message_context()
        return builder.row(item[1], ctx.partition, ctx.offset, item[0], int(time.time() * 1000))

    sdf = app.dataframe(topic).apply(records, expand=True).apply(to_row).filter(lambda row: row is not None)
    sdf.sink(ClickHouseRows())
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
