"""Application registry (Configuration Data): updates from the applications topic or the CLI.

An update is a JSON object ``{"sdk_app_id": 1400000001, "name": "...", "status": "active"|"terminated",
"created_at": epoch-ms?, "terminated_at": epoch-ms?, "retention_days": int?}`` carrying the app's
*whole* state (the topic is compacted: the latest record per key must be complete). The newest update
per app wins; a terminated app's row expires ``configuration_data`` days after termination (TTL).

The CLI publishes updates to the topic (``publish``) and the worker's ``registry`` agent is the only
writer of the ``applications`` table (``apply_update``).

Per-app retention (``retention_days``, shorter than the policy): ClickHouse refuses a TTL that looks
up another table (``dictGet`` in a TTL expression is rejected as non-deterministic, and a TTL
``DELETE WHERE`` rule fires once per part and is then marked finished, so it cannot express a per-row
retention). The worker therefore enforces it with database mutations (``enforce_app_retention``,
every few minutes): rows of such an app are deleted a whole day at a time, as the table TTLs do, a
little *before* they reach the app's limit. The retention audit checks the result per app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from pipeline.config.policy import Policy
from pipeline.schema.migrations import data_table
from pipeline.sinks.clickhouse import InsertError, classify

log = logging.getLogger(__name__)

# Tables holding per-app personal data, with the column their TTL counts from. dead_letters is not
# here: its ledger rows carry no app id and no personal data (the raw bytes live only on the topic).
APP_SCOPED_TABLES = {"request_logs": "request_time", "monitoring_samples": "window_start",
                     "interface_stats_1m": "minute"}
# Enforcement runs every ENFORCE_INTERVAL_S; a day of rows is deleted ENFORCE_AHEAD_S before its oldest
# row reaches the app's limit, so a missed run or two still keeps every row within it.
ENFORCE_INTERVAL_S = 300
ENFORCE_AHEAD_S = 3 * ENFORCE_INTERVAL_S


class AppUpdate(msgspec.Struct, frozen=True):
    """One registry update: the whole state of one application."""

    sdk_app_id: Annotated[int, msgspec.Meta(ge=1, le=4_294_967_295)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    status: Annotated[str, msgspec.Meta(pattern="^(active|terminated)$")] = "active"
    created_at: int | None = None
    terminated_at: int | None = None
    # only values below a category's limit have an effect (see APP_SCOPED_TABLES, policy per_app_retention)
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=365)] | None = None


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def row(update: AppUpdate, now: datetime | None = None) -> list[Any]:
    """The ``applications`` row of an update (termination time defaults to now)."""
    now = now or datetime.now(UTC)
    terminated = _ts(update.terminated_at) or (now if update.status == "terminated" else None)
    if update.status == "active":
        terminated = None
    return [update.sdk_app_id, update.name, update.status, _ts(update.created_at) or now, terminated,
            update.retention_days, now]


COLUMNS = ["sdk_app_id", "name", "status", "created_at", "terminated_at", "retention_days", "updated_at"]


def apply_update(store: Any, value: bytes | None, cluster: str = "", key: bytes | None = None,
                 now: datetime | None = None) -> bool:
    """Decode one update and upsert it (``store_update``); tombstones and invalid updates are logged and
    skipped (False). A failed write raises ``InsertError``: the caller retries (``apply_until_stored``)."""
    update = decode_update(value, key)
    if update is None:
        return False
    store_update(store, update, cluster, now)
    return True


def decode_update(value: bytes | None, key: bytes | None = None) -> AppUpdate | None:
    """The update a message carries, or None (logged) for a tombstone or an invalid update.

    A tombstone (no value) is skipped on purpose: an app leaves the registry by an update with
    ``status=terminated``, whose TTL erases it later; a deleted key must not erase it at once (the
    topic is compacted, so a tombstone is only the broker forgetting old versions)."""
    if value is None:
        log.info("registry tombstone (key %s) skipped: apps are removed by a 'terminated' update",
                 (key or b"")[:32].decode(errors="replace"))
        return None
    try:
        return msgspec.json.decode(value, type=AppUpdate)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning("invalid application registry update skipped: %s", str(exc)[:200])
        return None


def store_update(store: Any, update: AppUpdate, cluster: str = "", now: datetime | None = None) -> None:
    """Upsert one update; raises ``InsertError`` (classified) when ClickHouse does not take it.

    ``now`` is the row's version (``updated_at``): the agent passes the message's Kafka timestamp, so an
    update applied again after a retry or a replay keeps its place in the app's history instead of
    overtaking a later one. On termination the table is merged right away (tiny table): the app's older
    versions, which carry no termination time and so never expire, are replaced by the terminated one,
    whose TTL then removes the app's configuration 60 days later. Without that merge an old version
    could outlive the terminated one in another part and bring the app back as active."""
    with store.lock:
        try:
            store.client.insert(f"{store.db}.applications", [row(update, now)], column_names=COLUMNS)
        except Exception as exc:
            raise classify(exc) from exc
        if update.status == "terminated":
            try:
                store.client.command(f"OPTIMIZE TABLE {data_table(store.db, 'applications', cluster)} FINAL")
            except Exception as exc:  # the update is stored; merge_terminated_versions retries the merge
                log.warning("registry merge after a termination failed, retried later: %s", str(exc)[:200])


# The agent retries a failed write of one update with backoff, first after RETRY_FIRST_S, doubling up to
# RETRY_MAX_S, for as long as it takes (an outage must not lose an update); it logs at most once per
# RETRY_LOG_EVERY_S while it waits, and once when the update is stored.
RETRY_FIRST_S, RETRY_MAX_S, RETRY_LOG_EVERY_S = 0.5, 10.0, 60.0
Runner = Callable[..., Awaitable[Any]]


async def _in_executor(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@dataclass
class RetryLog:
    """Bounded log noise for one update that waits for ClickHouse: the first failure, then one line
    per ``every`` seconds, then the recovery."""

    app: int
    clock: Callable[[], float] = time.monotonic
    every: float = RETRY_LOG_EVERY_S
    failures: int = 0
    started: float = 0.0
    logged: float = float("-inf")

    def failed(self, exc: InsertError, delay: float) -> None:
        now = self.clock()
        self.started = self.started or now
        self.failures += 1
        if now - self.logged >= self.every:
            self.logged = now
            log.warning("registry update for app %d not stored (%s); attempt %d failed, retrying every <= %.0f s "
                        "(next in %.1f s), nothing after it is committed", self.app, exc, self.failures,
                        RETRY_MAX_S, delay)

    def stored(self) -> None:
        if self.failures:
            log.info("registry update for app %d stored after %d failed attempts (%.1f s)", self.app,
                     self.failures, self.clock() - self.started)


async def apply_until_stored(store: Any, value: bytes | None, cluster: str = "", retries: Any = None,
                             key: bytes | None = None, now: datetime | None = None,
                             sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                             run: Runner = _in_executor) -> bool:
    """Store one update from the applications topic, retrying (with backoff) until ClickHouse takes it;
    False for a tombstone or an invalid update (skipped). The caller acks the message afterwards, so
    its offset is committed only once the update is stored; ``retries`` (a counter) counts failed
    attempts. Waiting here holds back the partition, which is the point: updates stay in order."""
    update = decode_update(value, key)
    if update is None:
        return False
    trail, delay = RetryLog(update.sdk_app_id), RETRY_FIRST_S
    while True:
        try:
            await run(store_update, store, update, cluster, now)
        except InsertError as exc:
            trail.failed(exc, delay)
            if retries is not None:
                retries.inc()
            await sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            continue
        trail.stored()
        return True


def message_time(timestamp: float | None) -> datetime | None:
    """A Kafka message timestamp (seconds; None or <= 0 when the broker has none) as a version time."""
    return datetime.fromtimestamp(timestamp, UTC) if timestamp and timestamp > 0 else None


def list_apps(store: Any) -> list[dict[str, Any]]:
    """Current state of every registered app (latest version per app)."""
    result = store.query(f"SELECT {', '.join(COLUMNS)} FROM {store.db}.applications FINAL ORDER BY sdk_app_id")
    return [dict(zip(COLUMNS, r, strict=True)) for r in result.result_rows]


def jsonable(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``list_apps`` rows with times as ISO strings (for JSON, e.g. the worker's ``/apps``)."""
    return [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in a.items()} for a in apps]


def make_update(**fields: Any) -> AppUpdate:
    """A validated update (constructing the struct directly would skip the field constraints)."""
    return msgspec.convert(fields, AppUpdate)


def update_from_row(app: dict[str, Any], **changes: Any) -> AppUpdate:
    """The full-state update of a stored app with some fields changed (e.g. ``status='terminated'``)."""
    state = {"sdk_app_id": int(app["sdk_app_id"]), "name": app["name"], "status": app["status"],
             "created_at": _ms(app["created_at"]), "terminated_at": _ms(app["terminated_at"]),
             "retention_days": app["retention_days"]}
    return make_update(**{**state, **changes})


def publish(settings: Any, update: AppUpdate, timeout: float = 15.0) -> None:
    """Send one update to the applications topic and wait for Kafka's acknowledgement."""
    from confluent_kafka import Producer

    errors: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({**settings.kafka_config(), "acks": "all"})
    producer.produce(settings.topic_applications, key=str(update.sdk_app_id).encode(),
                     value=msgspec.json.encode(update), on_delivery=delivered)
    remaining = producer.flush(timeout)
    if remaining or errors:
        reason = errors[0].str() if errors else f"not acknowledged within {timeout:.0f}s"
        raise RuntimeError(f"registry update for app {update.sdk_app_id} not published to "
                           f"{settings.topic_applications}: {reason}")


# -- per-app retention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deletion:
    """Rows of some apps older than a cutoff in one table (one mutation)."""

    table: str
    column: str
    days: int
    apps: tuple[int, ...]
    cutoff: datetime  # delete rows strictly before this instant (a UTC midnight)


def plan_deletions(overrides: dict[int, int], policy: Policy, now: datetime,
                   ahead_s: int = ENFORCE_AHEAD_S) -> list[Deletion]:
    """Pure: which rows per-app retention removes now. An app's limit in a table is the shorter of its
    ``retention_days`` and the table's category; like the TTLs (``toDate(t) + N days``) it removes whole
    days: day D goes once ``now + ahead`` reaches D + N days, so no row is ever older than N days."""
    out = []
    for table, column in APP_SCOPED_TABLES.items():
        category = policy.category_of_table(table)
        if category is None or category.key not in policy.per_app_caps:
            continue
        by_days: dict[int, list[int]] = defaultdict(list)
        for app, days in overrides.items():
            if days < category.retention_days:
                by_days[days].append(app)
        horizon = (now + timedelta(seconds=ahead_s)).astimezone(UTC)
        for days, apps in sorted(by_days.items()):
            last_day = horizon.date() - timedelta(days=days)  # day D with D + N <= horizon's day
            cutoff = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), UTC)
            out.append(Deletion(table, column, days, tuple(sorted(apps)), cutoff))
    return out


def retention_overrides(store: Any) -> dict[int, int]:
    """App -> its own retention_days, for apps that set one."""
    rows = store.query(f"SELECT sdk_app_id, retention_days FROM {store.db}.applications FINAL "
                       "WHERE retention_days IS NOT NULL").result_rows
    return {int(app): int(days) for app, days in rows}


def enforce_app_retention(store: Any, policy: Policy, cluster: str = "", now: datetime | None = None,
                          wait: bool = False) -> list[str]:
    """Delete rows past per-app retention (a mutation per table and limit, only when rows are due and
    no earlier mutation of that table is still running). ``wait`` makes the mutations synchronous."""
    plan = plan_deletions(retention_overrides(store), policy, now or datetime.now(UTC))
    done = ["applications: merged the versions of terminated apps"] if merge_terminated_versions(store, cluster) else []
    for d in plan:
        where = f"sdk_app_id IN {{apps:Array(UInt32)}} AND {d.column} < {{cutoff:DateTime('UTC')}}"
        params = {"apps": list(d.apps), "cutoff": d.cutoff.replace(tzinfo=None)}
        due = int(store.query(f"SELECT count() FROM {store.db}.{d.table} WHERE {where}", params).result_rows[0][0])
        if not due or (not wait and _mutation_running(store, d.table, cluster)):
            continue
        store.command(f"ALTER TABLE {data_table(store.db, d.table, cluster)} DELETE WHERE {where} "
                      f"SETTINGS mutations_sync = {2 if wait else 0}", params, table=d.table)
        done.append(f"{d.table}: {due} rows of {len(d.apps)} app(s) with {d.days}-day retention "
                    f"before {d.cutoff:%Y-%m-%d}")
    return done


def merge_terminated_versions(store: Any, cluster: str = "") -> bool:
    """Merge the registry when a terminated app still has older versions on disk (``apply_update``
    merges on termination; this catches a merge that failed). Older versions carry no termination time
    and never expire: if the TTL dropped the terminated version alone, the app would come back as
    active. Tiny table: the check and the merge are cheap."""
    rows = store.query(f"SELECT count() FROM (SELECT sdk_app_id FROM {store.db}.applications GROUP BY sdk_app_id "
                       "HAVING count() > 1 AND countIf(status = 'terminated') > 0)").result_rows
    if not rows[0][0]:
        return False
    store.command(f"OPTIMIZE TABLE {data_table(store.db, 'applications', cluster)} FINAL", table="applications")
    return True


def _mutation_running(store: Any, table: str, cluster: str) -> bool:
    database = data_table(store.db, table, cluster).split(".", 1)[0]
    rows = store.query("SELECT count() FROM system.mutations WHERE database = {d:String} AND table = {t:String} "
                       "AND NOT is_done", {"d": database, "t": table}).result_rows
    return bool(rows[0][0])
