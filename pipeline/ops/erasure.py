"""Erasure on request: delete every stored row of one application, and record that it was done.

What is deleted (``ALTER TABLE ... DELETE`` with ``mutations_sync = 2``: the parts holding the app's
rows are rewritten without them on every replica before the command returns, so the data is gone
from disk, not only hidden):

- ``request_logs`` (Log Data: minimised exit IP, request ids, exception causes) and
  ``monitoring_samples`` (Monitoring Data), always;
- ``interface_stats_1m`` (aggregates per app and interface) when asked (``aggregates=True``).

What cannot be deleted selectively, and is said so in the report: the Kafka topics. Kafka deletes
whole segments by age, never single records, so the app's raw records (and its dead letters, which
keep the original bytes) stay on the topics until their retention removes them; the report gives the
latest time. The ``dead_letters`` ledger table holds the app id (migration 008) but no personal data
(reason, rule, Kafka coordinates): it is left to its TTL. The ``applications`` row is
configuration, not personal data of end users: terminate the app to have it deleted (60 days later).

Every run writes one ``erasure_log`` row per table (when, app, scope, rows before/deleted, requester
reference), never the data itself. Re-running is safe: it deletes nothing more and logs zero counts.
Rows the worker inserts *while* the mutation runs are reported as remaining: stop the app's traffic
(or terminate it) and run the command again.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.config.policy import Policy
from pipeline.schema.migrations import data_table

PERSONAL_TABLES = ("request_logs", "monitoring_samples")
AGGREGATE_TABLES = ("interface_stats_1m",)
MAX_APP_ID = 4_294_967_295


class ErasureError(ValueError):
    """The request cannot be carried out as asked (bad app id)."""


@dataclass(frozen=True)
class TableErasure:
    """What one table held of the app and what the mutation removed."""

    table: str
    rows_before: int
    rows_deleted: int
    rows_remaining: int


@dataclass
class ErasureReport:
    """The outcome of one erasure request (no personal data in here)."""

    erasure_id: str
    sdk_app_id: int
    scope: str
    erased_at: str
    requested_by: str
    reference: str
    tables: list[TableErasure]
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(t.rows_remaining == 0 for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def check_app(app: int) -> int:
    if not 1 <= app <= MAX_APP_ID:
        raise ErasureError(f"--app must be an sdk_app_id (1..{MAX_APP_ID})")
    return app


def kafka_notes(topics: dict[str, str], policy: Policy, now: datetime) -> list[str]:
    """Pure: what stays on Kafka, and until when at the latest (topic limits of the policy)."""
    limits = policy.topic_limit_ms()
    notes = []
    for logical, name in topics.items():
        if logical in limits and logical != "applications":
            until = now + timedelta(milliseconds=limits[logical])
            notes.append(f"Kafka topic {name}: records of this app cannot be deleted one by one (Kafka "
                         f"deletes whole segments); they expire by retention, by {until:%Y-%m-%d %H:%M} UTC "
                         "at the latest")
    notes.append("dead_letters table: holds the app id but no personal data (reason, rule, coordinates); left to "
                 "its TTL")
    notes.append("applications: the app's configuration is kept; terminate the app to have it deleted "
                 "after the Configuration Data period")
    return notes


def _count(store: Any, table: str, app: int) -> int:
    result = store.query(f"SELECT count() FROM {store.db}.{table} WHERE sdk_app_id = {{app:UInt32}}", {"app": app})
    return int(result.result_rows[0][0])


def erase(store: Any, app: int, *, aggregates: bool, requested_by: str, reference: str,
          topics: dict[str, str], policy: Policy, cluster: str = "", now: datetime | None = None) -> ErasureReport:
    """Delete the app's rows (synchronously), then log what was done; see the module docstring."""
    check_app(app)
    now = now or datetime.now(UTC)
    scope = "personal+aggregates" if aggregates else "personal"
    results = []
    for table in PERSONAL_TABLES + (AGGREGATE_TABLES if aggregates else ()):
        before = _count(store, table, app)
        if before:
            store.command(f"ALTER TABLE {data_table(store.db, table, cluster)} DELETE WHERE sdk_app_id = "
                          "{app:UInt32} SETTINGS mutations_sync = 2", {"app": app}, table=table)
        after = _count(store, table, app) if before else 0
        results.append(TableErasure(table, before, max(before - after, 0), after))
    report = ErasureReport(str(uuid.uuid4()), app, scope, now.isoformat(timespec="seconds"), requested_by,
                           reference, results, kafka_notes(topics, policy, now))
    if not report.complete:
        report.notes.insert(0, "rows of this app arrived while it was erased: stop its traffic and run again")
    _log(store, report, now, cluster)
    return report


def _log(store: Any, report: ErasureReport, now: datetime, cluster: str) -> None:
    columns = ["erased_at", "erasure_id", "sdk_app_id", "scope", "table_name", "rows_before", "rows_deleted",
               "requested_by", "reference", "note"]
    note = "complete" if report.complete else "rows remaining"
    rows = [[now, uuid.UUID(report.erasure_id), report.sdk_app_id, report.scope, t.table, t.rows_before,
             t.rows_deleted, report.requested_by, report.reference, note] for t in report.tables]
    settings = {"distributed_foreground_insert": 1} if cluster else {}
    with store.lock:
        store.client.insert(f"{store.db}.erasure_log", rows, column_names=columns, settings=settings)
