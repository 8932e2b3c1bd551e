"""IM telemetry pipeline: request logs and monitoring samples from Kafka into ClickHouse.

The folder reads like the data flow: ``decode`` (bytes -> typed records or reasons) ->
``privacy`` (minimise the exit IP) -> ``aggregate`` (per-batch statistics for metrics and the live
view) -> ``sinks.clickhouse`` (batched, acknowledged inserts) -> offsets committed by ``source``.
"""

__version__ = "0.1.0"
