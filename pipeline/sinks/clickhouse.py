"""The ClickHouse store: acknowledged Arrow inserts, and the recovery queries.

Implements ``sinks/protocol.Store`` for ``sinks/writer.py``, which owns the delivery protocol. The
aggregate of a write is computed *by the engine* from exactly the stored rows, in the insert itself
(the ``*_stats`` materialized views of migration 009, deduplicated by the insert's token), so aggregates
always equal a recomputation; the recovery reads the src_* columns at or past a committed offset and
rebuilds the minutes they touch with the views' own SELECT (``schema/aggregates.py``).

Errors: ClickHouse codes for bad data (``PERMANENT_CODES``) are permanent -> the rows go to dead
letters; everything else (connection refused, timeouts, 5xx, too many parts) is transient -> retried
with backoff while consumption is paused.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.monitoring.metrics import Metrics
from pipeline.schema.aggregates import STATS_TABLE, stats_select
from pipeline.sinks.arrow_body import BodyWriter
from pipeline.sinks.protocol import InsertError, RawTable, Recovery

log = logging.getLogger(__name__)

# 6 CANNOT_PARSE_TEXT, 26/27 CANNOT_PARSE_*, 38/41 CANNOT_PARSE_DATE(TIME), 53 TYPE_MISMATCH,
# 69 ARGUMENT_OUT_OF_BOUND, 70 CANNOT_CONVERT_TYPE, 72 CANNOT_PARSE_NUMBER, 117 INCORRECT_DATA,
# 131 TOO_LARGE_STRING_SIZE, 252 TOO_MANY_PARTS is *not* here (transient).
PERMANENT_CODES = frozenset({6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131})
_CODE = re.compile(r"Code:\s*(\d+)")


_TRANSPORT = ((re.compile(r"Connection refused|ConnectionRefused|NewConnectionError", re.I), "connection refused"),
              (re.compile(r"timed out|Timeout", re.I), "timed out"),
              (re.compile(r"RemoteDisconnected|without response|Connection aborted|reset by peer|"
                          r"ProtocolError|IncompleteRead", re.I), "connection closed without an answer"),
              (re.compile(r"Name or service not known|getaddrinfo|NameResolution", re.I), "host not found"))


def classify(exc: BaseException) -> InsertError:
    """Sort a driver exception into permanent (bad data) or transient (retry), with a message that
    names the cause: for transport errors the root cause, not the driver's URL-laden text."""
    text = str(exc)
    match = _CODE.search(text)
    code = int(match.group(1)) if match else None
    if code is None:
        for pattern, cause in _TRANSPORT:
            if pattern.search(text) or pattern.search(repr(exc.__cause__ or exc.__context__ or "")):
                return InsertError(f"ClickHouse unreachable: {cause}", None, False)
    first_line = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    return InsertError(first_line, code, code in PERMANENT_CODES)


class ClickHouseStore:
    """The ``Store`` (``sinks/protocol.py``) on ClickHouse: one client, serialised by a lock (chDB
    allows one user of a store; HTTP keeps it simple)."""

    def __init__(self, client: Any, database: str, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic, insert_settings: dict[str, Any] | None = None) -> None:
        self.client, self.db, self.metrics, self.clock = client, database, metrics, clock
        self.insert_settings = dict(insert_settings or {})  # e.g. synchronous Distributed inserts
        self.lock = threading.RLock()
        self._low_cardinality: dict[str, frozenset[str]] | None = None  # table -> LowCardinality(String) columns
        # Insert bodies compressed as the client was told to (``compress_option``; chDB: never).
        self.bodies = BodyWriter(getattr(client, "write_compression", None))

    def _call(self, table: str, fn: Callable[[], Any]) -> Any:
        with self.lock:
            try:
                result = fn()
            except Exception as exc:
                err = classify(exc)
                self.metrics.insert_failures.labels(table, "permanent" if err.permanent else "transient").inc()
                self.metrics.clickhouse_up.set(0)
                raise err from exc
        self.metrics.clickhouse_up.set(1)
        return result

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run a read query with bound parameters (never string-formatted user input)."""
        return self._call("query", lambda: self.client.query(sql, parameters=parameters or {}))

    def command(self, sql: str, parameters: dict[str, Any] | None = None, table: str = "command") -> Any:
        return self._call(table, lambda: self.client.command(sql, parameters=parameters or {}))

    def insert_arrow(self, table: str, data: pa.Table, token: str | None = None) -> None:
        """Insert one Arrow table; observes duration, batch size and rows written.

        ``token`` (``insert_deduplication_token``) makes a retry of the same block a no-op when the
        first attempt was stored but its acknowledgement was lost (migration 007 keeps the tokens)."""
        if data.num_rows == 0:
            return
        data = as_dictionaries(data, self.low_cardinality().get(table, frozenset()))
        start = self.clock()
        settings = {**self.insert_settings, **({"insert_deduplication_token": token} if token else {})}
        # The body is written under the store's lock (``_call``): one kept buffer serves every insert.
        self._call(table, lambda: self.client.raw_insert(f"{self.db}.{table}", data.schema.names,
                                                         self.bodies.write(data), settings or None, "Arrow"))
        self.metrics.insert_duration.labels(table).observe(self.clock() - start)
        self.metrics.insert_rows.labels(table).observe(data.num_rows)
        self.metrics.rows_written.labels(table).inc(data.num_rows)

    def low_cardinality(self) -> dict[str, frozenset[str]]:
        """Table -> its ``LowCardinality(String)`` columns, as the server has them (the DDL owns which
        columns are; read once). Such a column is sent as an Arrow dictionary: its few distinct values
        once plus small indices, which takes a third off the body the worker compresses and sends on
        the batched workload. A failed lookup is retried at the next insert; meanwhile plain strings go."""
        if self._low_cardinality is None:
            try:
                rows = self.query("SELECT table, name FROM system.columns WHERE database = {d:String} "
                                  "AND type = 'LowCardinality(String)'", {"d": self.db}).result_rows
            except InsertError:
                return {}
            found: dict[str, set[str]] = {}
            for table, name in rows:
                found.setdefault(str(table), set()).add(str(name))
            self._low_cardinality = {table: frozenset(names) for table, names in found.items()}
        return self._low_cardinality

    def recover(self, raw: RawTable, topic_id: str, partition: int, committed: int) -> Recovery:
        """Find rows stored past the committed offset and rebuild their aggregate minutes."""
        params = {"t": topic_id, "p": partition, "o": committed}
        rows = self.query(
            f"SELECT src_offset, src_index, toStartOfMinute({raw.time_column}) FROM {self.db}.{raw.name} "
            "WHERE src_topic_id = {t:String} AND src_partition = {p:UInt16} AND src_offset >= {o:UInt64}",
            params).result_rows
        if not rows:
            return Recovery(set(), -1, 0)
        minutes = sorted({r[2] for r in rows})
        self.rebuild(raw, partition, minutes)
        return Recovery({(int(r[0]), int(r[1])) for r in rows}, max(int(r[0]) for r in rows), len(minutes))

    def rebuild(self, raw: RawTable, partition: int, minutes: Iterable[Any]) -> None:
        """Recompute one partition's aggregate rows for some minutes from the raw rows (idempotent)."""
        stamps = [int(m.timestamp()) if hasattr(m, "timestamp") else int(m) for m in minutes]
        params = {"p": partition, "m": stamps, "s": raw.source}
        self.command(
            f"ALTER TABLE {self.db}.{STATS_TABLE} DELETE WHERE source = {{s:String}} "
            "AND src_partition = {p:UInt16} AND toUnixTimestamp(minute) IN {m:Array(UInt32)} "
            "SETTINGS mutations_sync = 2", params, table=STATS_TABLE)
        where = (f"src_partition = {{p:UInt16}} AND toUnixTimestamp(toStartOfMinute({raw.time_column})) "
                 "IN {m:Array(UInt32)}")
        # never deduplicated: the same minutes rebuilt twice (two crashes in a row) give the same block,
        # which a deduplicating table (Replicated, or with migration 009's window) may drop by its hash
        self.command(f"INSERT INTO {self.db}.{STATS_TABLE}\n{stats_select(raw.name, self.db, where)}\n"
                     "SETTINGS insert_deduplicate = 0", params, table=STATS_TABLE)
        self.metrics.recovered_minutes.inc(len(stamps))

    def dead_letters_stored(self, topic_id: str, partition: int, committed: int) -> set[tuple[int, int]]:
        """Invalid records already dead-lettered (ledger) past the committed offset."""
        rows = self.query(
            f"SELECT src_offset, src_index FROM {self.db}.dead_letters WHERE src_topic_id = {{t:String}} "
            "AND src_partition = {p:UInt16} AND src_offset >= {o:UInt64}",
            {"t": topic_id, "p": partition, "o": committed}).result_rows
        return {(int(r[0]), int(r[1])) for r in rows}

    def stored_keys(self, table: str, keys: Collection[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        """Which of ``keys`` (src_topic_id, src_partition, src_offset, src_index, and for the ledger
        replay_count) ``table`` holds: one query narrowed by topic id, partition and offset (the
        src_offset minmax index), matched exactly here. Used for replayed records (``ingest/replay.py``)."""
        if not keys:
            return set()
        ledger = table == "dead_letters"
        params = {"t": sorted({str(k[0]) for k in keys}), "p": sorted({int(k[1]) for k in keys}),
                  "o": sorted({int(k[2]) for k in keys})}
        rows = self.query(
            f"SELECT DISTINCT src_topic_id, src_partition, src_offset, src_index{', replay_count' if ledger else ''} "
            f"FROM {self.db}.{table} WHERE src_topic_id IN {{t:Array(String)}} AND src_partition IN "
            "{p:Array(UInt16)} AND src_offset IN {o:Array(UInt64)}", params).result_rows
        found = {(str(r[0]), int(r[1]), int(r[2]), int(r[3]), *((int(r[4]),) if ledger else ())) for r in rows}
        return found & {tuple(k) for k in keys}

    def ping(self) -> bool:
        try:
            self.query("SELECT 1")
        except InsertError:
            return False
        return True


def as_dictionaries(data: pa.Table, columns: frozenset[str]) -> pa.Table:
    """``data`` with its plain string ``columns`` dictionary-encoded (ClickHouse reads an Arrow
    dictionary into LowCardinality directly); other columns, and a table without them, unchanged.
    ``request_logs`` arrives with its LowCardinality columns already dictionaries (``ingest/buffer.py``):
    this is for the others (``monitoring_samples``' interface and reporter, the ledger)."""
    for i, f in enumerate(data.schema):
        if f.name in columns and pa.types.is_string(f.type):
            data = data.set_column(i, f.name, pc.dictionary_encode(data.column(i)))
    return data


def compress_option(compression: str) -> bool | str:
    """clickhouse-connect's ``compress`` for ``IMTEL_CLICKHOUSE_COMPRESSION`` (``none``: off). With lz4 or
    zstd, an Arrow insert body carries its buffers compressed with it (Arrow IPC buffer compression)."""
    return False if compression == "none" else compression


def connect(dsn: str, user: str = "default", password: str = "", timeout: float = 60.0, **kwargs: Any) -> Any:
    """A clickhouse-connect client: embedded chDB (``chdb:///path``) or an HTTP server. ``settings=`` (session
    settings) applies to both; other keyword arguments are HTTP transport options."""
    import clickhouse_connect

    if dsn.startswith("chdb:"):
        return _open_chdb(dsn, kwargs.get("settings"))
    return clickhouse_connect.get_client(dsn=dsn, username=user, password=password,
                                         connect_timeout=5, send_receive_timeout=timeout, **kwargs)


def _open_chdb(dsn: str, settings: dict[str, Any] | None, wait_s: float = 20.0) -> Any:
    """Open an embedded store, waiting while another process holds its lock: one process per store, and
    a CLI command that found no running worker opens it directly for a moment (e.g. ``imtel query`` in
    a second terminal while ``imtel embedded`` still starts its broker). Waiting out that moment beats
    failing the worker's start."""
    import clickhouse_connect

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return clickhouse_connect.get_client(dsn=dsn, settings=settings)
        except Exception as exc:  # chDB reports a held lock as a ProgrammingError with the server's text
            held = any(m in str(exc) for m in ("Cannot lock file", "Another server instance",
                                               "Unable to open the chdb engine"))
            if not held or time.monotonic() > deadline:
                raise
            log.info("the embedded store is held by another process; waiting for it")
            time.sleep(0.5)


def read_settings(max_seconds: float) -> dict[str, Any]:
    """Session settings of a client that only serves reads to the web endpoints: it cannot write
    (``readonly=2`` still lets the driver pass per-query settings), and one request cannot hold the
    engine for longer than ``max_seconds`` or return more than a million rows."""
    return {"readonly": 2, "max_execution_time": int(max_seconds), "max_result_rows": 1_000_000,
            "result_overflow_mode": "throw"}


def connect_reader(dsn: str, user: str = "default", password: str = "", max_seconds: float = 30.0) -> Any:
    """A second client on the same store for reads (its own chDB handle, or its own HTTP pool), so that a
    slow read never waits on, or makes wait, the insert lock of the writing ``ClickHouseStore``: chDB runs
    queries of separate handles on one path concurrently. ClickHouse stops the query after ``max_seconds``;
    the HTTP timeout leaves it 5 s more to say so."""
    return connect(dsn, user, password, timeout=max_seconds + 5, settings=read_settings(max_seconds))
