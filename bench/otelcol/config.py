"""The collector's configuration for the bench: Kafka topic -> batch -> ClickHouse ``otel_logs``.

Stdlib only (no YAML library): the collector reads YAML, and JSON is YAML, so :func:`write_config`
writes the dict as JSON into a ``.yaml`` file that ``otelcol-imtel --config FILE`` loads as is.

Choices, each for a reason the README expands on:

- ``encoding: text``: our topic carries our own JSON request logs, not OTLP. ``text`` turns each
  Kafka message into one log record whose body is the message as a UTF-8 string, which the
  exporter writes to ``Body`` (a ``String`` column) unchanged. ``json`` would parse the body into a
  map only for the exporter to serialise it back to a string (and is deprecated since v0.164.0 in
  favour of an encoding extension); ``raw`` gives a bytes body, written base64-encoded.
- ``initial_offset: earliest``: the bench produces before (or while) the collector starts; the
  receiver's default, ``latest``, would skip what was produced before its group joined.
- ``compress: none`` on the exporter: over HTTP, clickhouse-go's ``lz4``/``zstd`` (the default is
  ``lz4``) are ClickHouse's *native* block compression (``compress=1``/``decompress=1`` URL
  parameters, compressed answers expected), which only a real ClickHouse server speaks: ``imtel
  engine`` refuses them (``Code: 48 ... NOT_IMPLEMENTED``, before reading the body). ``gzip`` would
  be Content-Encoding, which the engine accepts, at CPU cost on both sides.
- ``async_insert: false``: the exporter's default is server-side async inserts; the bench must know
  rows are in the table when the insert returns, as with the worker's synchronous inserts.
- The collector's own metrics on a Prometheus endpoint on a loopback port of our choosing, so the
  bench can read ``otelcol_receiver_accepted_log_records`` and ``otelcol_exporter_sent_log_records``
  to see progress and failures (``otelcol_exporter_send_failed_log_records``).

``password`` is written into the config as given; pass ``"${env:NAME}"`` to have the collector
read it from its environment instead, so the engine token never lands in the config file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOGS_TABLE = "otel_logs"


def collector_config(brokers: str, topic: str, group: str, clickhouse_endpoint: str, username: str, password: str,
                     database: str, *, metrics_port: int, table: str = LOGS_TABLE, encoding: str = "text",
                     batch_size: int = 8192, batch_timeout: str = "200ms", consumers: int = 4, queue_size: int = 8,
                     compress: str = "none", async_insert: bool = False, max_fetch_mb: int | None = None,
                     debug: bool = False,
                     log_level: str = "info") -> dict[str, Any]:
    """The collector config (a dict, written as YAML/JSON) of the bench's contender.

    ``brokers`` is a comma-separated bootstrap list as the rest of the project uses;
    ``clickhouse_endpoint`` an ``http://host:port`` URL (the exporter's HTTP transport);
    ``consumers`` is the exporter's concurrent inserts (``sending_queue.num_consumers``, default
    10: ``imtel engine`` runs one statement at a time anyway, so more only queue there).
    ``max_fetch_mb`` raises the receiver's fetch size (default 1 MB per request and partition);
    None keeps the receiver's defaults, which the smoke run found as fast and far smaller in memory.
    """
    receiver: dict[str, Any] = {
        "brokers": [b.strip() for b in brokers.split(",") if b.strip()],
        "group_id": group,
        "client_id": "otelcol-imtel",
        "initial_offset": "earliest",
        "logs": {"topics": [topic], "encoding": encoding},
    }
    if max_fetch_mb:
        receiver.update(max_fetch_size=max_fetch_mb << 20, max_partition_fetch_size=max_fetch_mb << 20)
    exporters: dict[str, Any] = {
        "clickhouse": {
            "endpoint": clickhouse_endpoint, "username": username, "password": password, "database": database,
            "logs_table_name": table, "create_schema": True, "compress": compress, "async_insert": async_insert,
            "timeout": "60s",
            # Block instead of dropping when ClickHouse is slower than Kafka (the default drops data
            # once 1000 requests queue up: a contender that loses rows would finish "faster").
            # ``queue_size`` (in batches) also bounds memory: with blocking, the receiver waits for a
            # free slot, so at most (queue_size + consumers) batches are held, not the whole topic.
            "sending_queue": {"enabled": True, "num_consumers": consumers, "queue_size": queue_size,
                              "block_on_overflow": True},
            "retry_on_failure": {"enabled": True, "initial_interval": "1s", "max_interval": "10s",
                                 "max_elapsed_time": "300s"},
        },
    }
    pipeline_exporters = ["clickhouse"]
    if debug:
        exporters["debug"] = {"verbosity": "basic"}
        pipeline_exporters.append("debug")
    return {
        "receivers": {"kafka": receiver},
        "processors": {
            "batch": {"send_batch_size": batch_size, "send_batch_max_size": batch_size * 2,
                      "timeout": batch_timeout},
        },
        "exporters": exporters,
        "service": {
            "pipelines": {"logs": {"receivers": ["kafka"], "processors": ["batch"], "exporters": pipeline_exporters}},
            "telemetry": {
                "logs": {"level": log_level, "encoding": "console"},
                "metrics": {
                    "level": "normal",
                    "readers": [{"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics_port}}}}],
                },
            },
        },
    }


def write_config(config: dict[str, Any], path: Path) -> Path:
    """Write ``config`` as JSON (valid YAML) to ``path``, readable by the owner only (it may hold a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent=2)
        out.write("\n")
    return path
