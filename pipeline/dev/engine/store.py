"""Statement execution for ``imtel engine``: the one chDB connection of the store, run one statement
at a time with per-request settings, and data inserts (checked against ``reject`` faults).

chDB lets one process open a store and keeps settings per connection, so the server funnels every
request through this one object, which re-applies each request's settings and database.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dev.engine.protocol import IDENTIFIER, EngineError, Statement
from pipeline.dev.engine_faults import Fault

_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)
_SESSION_STATEMENT = re.compile(r"\A\s*(SET|USE)\b", re.IGNORECASE)


class StoreError(Exception):
    """The store cannot be opened (most often: another process holds it)."""


@dataclass
class Answer:
    """A successful answer: body, output format (None for statements without a result) and summary."""

    body: bytes
    fmt: str | None
    summary: dict[str, str]


class Engine:
    """The one chDB connection of the store; one statement at a time. Settings and the current
    database are applied per request (SET/USE only when they differ from the previous request)."""

    def __init__(self, store: Path, scratch: Path) -> None:
        import chdb

        try:
            self.conn = chdb.connect(str(store))  # type: ignore[no-untyped-call]
        except Exception as exc:  # chDB says only "Error initializing EmbeddedServer" for a store in use
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"cannot open the store {store} (chDB lets one process open a store: is another "
                             f"process using it?): {first}") from None
        self.scratch = scratch
        self.lock = threading.Lock()
        self.database = "default"
        self.applied: dict[str, str] = {}
        version, tz = self._run("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
        self.version, self.timezone = version.strip(), tz.strip()

    def names(self, table: str) -> frozenset[str]:
        """The names in ``system.<table>`` (table functions, engines): what the guard must know."""
        return frozenset(self._run(f"SELECT name FROM system.{table}", "TabSeparated").bytes().decode().split())

    def close(self, timeout: float) -> None:
        """Close the store once no statement runs (a statement still running after ``timeout``
        seconds keeps it open: the process is about to exit anyway)."""
        if self.lock.acquire(timeout=timeout):
            try:
                self.conn.close()
            finally:
                self.lock.release()

    def _run(self, sql: str, fmt: str, params: dict[str, str] | None = None) -> Any:
        try:
            return self.conn.query(sql, fmt, params=params or {})
        except Exception as exc:
            raise EngineError.from_engine(exc) from None

    def _prepare(self, database: str | None, settings: dict[str, str]) -> None:
        database = database or "default"  # no parameter: the user's default database, as on a server
        if database != self.database:
            self._run(f"USE {_quote_identifier(database)}", "TabSeparated")
            self.database = database
        for name in [n for n in self.applied if n not in settings]:
            self._run(f"SET {name} = DEFAULT", "TabSeparated")
            del self.applied[name]
        for name, value in settings.items():
            if self.applied.get(name) != value:
                self._run(f"SET {_setting(name, value)}", "TabSeparated")
                self.applied[name] = value

    def execute(self, stmt: Statement, *, database: str | None, settings: dict[str, str], params: dict[str, str],
                default_format: str | None, rejects: list[Fault]) -> Answer:
        """Run one statement. A data insert is first checked against the ``reject`` faults that
        apply to it (raising ``RejectedError`` naming the fault that fired)."""
        if _SESSION_STATEMENT.match(stmt.head):
            raise EngineError.of(48, "SET/USE statements need sessions, which this server does not keep; "
                                     "pass settings as URL parameters")
        start = time.monotonic()
        with self.lock:
            if stmt.data is not None:
                # A data insert carries the settings the session does not have yet in its own SETTINGS
                # clause: its per-insert ``insert_deduplication_token`` would otherwise cost a SET before
                # it and a SET ... = DEFAULT before the next statement, each a statement of ~1 ms CPU
                # (2.4% of the engine's CPU on the batched workload, measured per statement).
                inline = {k: v for k, v in settings.items() if self.applied.get(k) != v}
                self._prepare(database, {k: v for k, v in settings.items() if k not in inline})
                return self._insert(stmt, rejects, start, inline)
            self._prepare(database, settings)
            return self._query(stmt.head, params, default_format, start)

    def _query(self, sql: str, params: dict[str, str], default_format: str | None, start: float) -> Answer:
        trailing = _TRAILING_FORMAT.search(sql)
        if trailing or default_format:
            fmt = trailing.group(1) if trailing else str(default_format)
            result = self._run(sql, fmt, params)
            return Answer(result.bytes() or b"", fmt, _summary(result, start))
        # No FORMAT: TabSeparated. A statement that yields a result always prints its header line
        # with names; one that does not (DDL, INSERT SELECT) prints nothing and gets no format header.
        result = self._run(sql, "TabSeparatedWithNames", params)
        body = result.bytes() or b""
        if not body:
            return Answer(b"", None, _summary(result, start))
        return Answer(body[body.find(b"\n") + 1:], "TabSeparated", _summary(result, start))

    def _insert(self, stmt: Statement, rejects: list[Fault], start: float, settings: dict[str, str]) -> Answer:
        clause = f" SETTINGS {', '.join(_setting(k, v) for k, v in settings.items())}" if settings else ""
        with tempfile.NamedTemporaryFile(dir=self.scratch, suffix="." + stmt.fmt.lower()) as block:
            block.write(stmt.data or b"")
            block.flush()
            for fault in rejects:
                found = self._count_marked(block.name, stmt.fmt, fault)
                if found:
                    raise RejectedError(fault, EngineError.of(
                        117, f"Rejected by an injected fault: {found} row(s) of the block have the marker in "
                             f"column {fault.column}"))
            # A newline after the target: a comment ending it cannot swallow the rest of the statement.
            result = self._run(f"INSERT INTO {stmt.target}\nFROM INFILE {_quote(block.name)}{clause} FORMAT {stmt.fmt}",
                               "TabSeparated")
        summary = _summary(result, start)
        summary.update(written_rows=summary["read_rows"], written_bytes=summary["read_bytes"])
        return Answer(b"", None, summary)

    def _count_marked(self, path: str, fmt: str, fault: Fault) -> int:
        """Rows of the uploaded block whose ``column`` contains the marker, counted by the engine."""
        sql = (f"SELECT count() FROM file({_quote(path)}, {_quote(fmt)}) "
               f"WHERE position(toString({_quote_identifier(fault.column)}), {{marker:String}}) > 0")
        return int(self._run(sql, "TabSeparated", {"marker": fault.marker}).bytes().strip() or 0)


class RejectedError(Exception):
    """A data insert refused by a ``reject`` fault: the fault (to count its hit) and the answer."""

    def __init__(self, fault: Fault, error: EngineError) -> None:
        super().__init__(error.text)
        self.fault, self.error = fault, error


def _setting(name: str, value: str) -> str:
    """``name = 'value'`` for SET or a SETTINGS clause; a name that is not an identifier is refused as
    unknown (it is never written into a statement)."""
    if not IDENTIFIER.match(name):
        raise EngineError.of(115, f"Unknown setting '{name}'")
    return f"{name} = {_quote(value)}"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _summary(result: Any, start: float) -> dict[str, str]:
    try:
        read_rows, read_bytes = int(result.rows_read()), int(result.bytes_read())
    except Exception:
        read_rows = read_bytes = 0
    return {"read_rows": str(read_rows), "read_bytes": str(read_bytes), "written_rows": "0", "written_bytes": "0",
            "total_rows_to_read": str(read_rows), "result_rows": "0", "result_bytes": "0",
            "elapsed_ns": str(int((time.monotonic() - start) * 1e9))}
