"""Record-at-a-time building blocks of the naive contenders (faust agent, Quix Streams app).

What a straightforward implementation does per record: parse the message with a JSON library, check
each field by hand (the same rules as ``schemas/request_log.schema.json``), minimise the exit IP
with the pipeline's own minimiser, and build one row tuple for clickhouse-connect's row insert.
The rows land in the same ``request_logs`` table, and the aggregates come from the schema's own view
over each inserted block (migration 009, as for the pipeline), so every contender must end with the
same ClickHouse content. Imports nothing the Quix Streams virtualenv lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pipeline.ingest.privacy import minimisation

COLUMNS = ("request_time", "sdk_app_id", "interface", "request_id", "client_net", "latency_ms", "error_code",
           "exception", "region", "platform", "src_topic_id", "src_partition", "src_offset", "src_index")
REQUIRED = ("sdk_app_id", "interface", "request_time", "client_ip", "latency_ms", "error_code", "region",
            "platform", "request_id")
DAY_MS = 86_400_000
Row = tuple[Any, ...]


def split_records(data: bytes, loads: Callable[[bytes], Any]) -> Iterator[tuple[int, Any]]:
    """(index, parsed record) of one message: a JSON object, a JSON array, or NDJSON lines."""
    head = data.lstrip()[:1]
    if head == b"[":
        yield from enumerate(loads(data))
        return
    lines = [line for line in data.split(b"\n") if line.strip()]
    for index, line in enumerate(lines):
        yield index, loads(line)


def _int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def _text(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, str) and lo <= len(value) <= hi


def problem(rec: Any, now_ms: int, max_age_ms: int = 7 * DAY_MS, skew_ms: int = 300_000) -> str | None:
    """Why a parsed record is invalid (the schema's rules, checked by hand), or None."""
    if not isinstance(rec, dict):
        return "not_object"
    if any(k not in rec for k in REQUIRED):
        return "missing_field"
    ok = (_int(rec["sdk_app_id"], 1, 4_294_967_295) and _text(rec["interface"], 1, 128)
          and _int(rec["request_time"], 0, 253_402_300_799_999) and _text(rec["client_ip"], 0, 64)
          and _int(rec["latency_ms"], 0, 3_600_000) and _int(rec["error_code"], -2**31, 2**31 - 1)
          and _text(rec["region"], 1, 32) and _text(rec["platform"], 1, 32) and _text(rec["request_id"], 1, 64)
          and (rec.get("exception") is None or _text(rec["exception"], 0, 2048)))
    if not ok:
        return "wrong_type"
    if rec["request_time"] < now_ms - max_age_ms:
        return "too_old"
    if rec["request_time"] > now_ms + skew_ms:
        return "in_future"
    return None


class RowBuilder:
    """Turns parsed records into ``request_logs`` rows (or counts them as invalid)."""

    def __init__(self, topic_id: str, pii_mode: str = "prefix") -> None:
        self.topic_id = topic_id
        self.minimise = minimisation(pii_mode)
        self.invalid = 0

    def row(self, rec: Any, partition: int, offset: int, index: int, now_ms: int) -> Row | None:
        if problem(rec, now_ms) is not None:
            self.invalid += 1
            return None
        net = self.minimise(rec["client_ip"])
        if net is None:
            self.invalid += 1
            return None
        return (rec["request_time"], rec["sdk_app_id"], rec["interface"], rec["request_id"], net, rec["latency_ms"],
                rec["error_code"], rec.get("exception") or "", rec["region"], rec["platform"], self.topic_id,
                partition, offset, index)


class RowSink:
    """Row inserts through clickhouse-connect; the schema's view folds each into the aggregate table."""

    def __init__(self, client: Any, database: str) -> None:
        self.client, self.db = client, database

    def write(self, rows: list[Row]) -> None:
        """Insert rows (the view folds them into ``interface_stats_1m``)."""
        if rows:
            self.client.insert(f"{self.db}.request_logs", rows, column_names=COLUMNS)
