"""``imtel engine``: one embedded ClickHouse store served over ClickHouse's HTTP interface.

Why this exists: chDB (the embedded ClickHouse engine) runs inside the process that opens a store,
and only one process may open it. Without this server a worker must carry the engine in its own
process (its insert and merge memory included), and two workers, or a worker and ``imtel query``,
cannot use one store at the same time. ``imtel engine --store PATH --port N`` is that one process: it
owns the store and speaks the part of the ClickHouse HTTP interface that clickhouse-connect's HTTP
client uses, so local workers and CLI commands set ``IMTEL_CLICKHOUSE_DSN=http://127.0.0.1:N`` and
run unchanged, exactly as they would against a ClickHouse server. It is also how the benchmark
measures the worker's own memory in the production topology (engine in another process).

Not a production ClickHouse: use a real ClickHouse server (or cluster) for production. This server
keeps no sessions (``SET``/``USE`` statements are refused; settings come as URL parameters and apply
to one request), runs statements one at a time on the engine, never compresses answers (identity
encoding is always acceptable to clients), sends no progress headers, has one user and binds to
loopback unless told otherwise.

Who may do what (``docs/security.md``): every request but ``/ping`` needs the one user's password
(``imtel engine`` generates one into a 0600 token file when none is given), checked on the headers
before any body byte is read; bodies and their decompressed size are capped, every phase of a
request has a deadline, and at most ``Limits.max_connections`` connections are served at once, on
as many threads. GET may only read (as on ClickHouse, where GET is ``readonly``). Only loopback
``Host`` values are accepted unless configured, and no browser request (``Origin``). ``SqlGuard``
refuses statements that reach the local filesystem, the network or other processes (``file()``,
``url()``, ``FROM INFILE``, ``INTO OUTFILE``, ...: table functions and engines are allow-listed),
and multi-statements. ``query_id`` must match a strict pattern before it is echoed.

What it speaks: SQL in the ``query`` parameter and/or the body, ``param_*`` bound parameters,
settings as URL parameters, the connect-time queries (version, timezone, ``system.settings``),
``INSERT ... FORMAT Native|Arrow|...`` with the data in the body (chunked and/or lz4/zstd/gzip/deflate
encoded), errors as ClickHouse sends them (HTTP 5xx/4xx, ``X-ClickHouse-Exception-Code``, body
``Code: N. DB::Exception: ...``) and the ``X-ClickHouse-Summary/-Format/-Query-Id/-Timezone`` headers.
Every statement runs on the real engine, so what passes through here is real SQL on real data.

For tests only, and only when started with ``--fault-admin-port``: a loopback admin listener that
injects faults at this transport boundary (``engine_faults``) and also answers SQL without faults
(for assertions); ``--listeners K`` gives K data ports that can be faulted one by one. Without that
option no fault can be injected and ``/__faults`` does not exist.

``--ready-file F`` writes ``{"data": [port, ...], "admin": port | null, "pid": ...}`` to F once it
serves (for ``--port 0``, a free port). SIGTERM or SIGINT stops it cleanly (store closed).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import io
import ipaddress
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pipeline.dev.engine_faults import Fault, FaultBook

# URL parameters that steer the HTTP layer; everything else that is not ``param_*`` is a setting.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "buffer_size", "wait_end_of_query",
    "client_protocol_version", "role", "enable_http_compression", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms"})
HTTP_STATUS = {27: 400, 36: 400, 62: 400, 60: 404, 73: 400, 81: 404, 115: 400, 164: 403, 271: 400, 307: 413,
               497: 403, 516: 401}
CODE_NAMES = {36: "BAD_ARGUMENTS", 48: "NOT_IMPLEMENTED", 62: "SYNTAX_ERROR", 73: "UNKNOWN_FORMAT",
              115: "UNKNOWN_SETTING", 117: "INCORRECT_DATA", 164: "READONLY", 202: "TOO_MANY_SIMULTANEOUS_QUERIES",
              209: "SOCKET_TIMEOUT", 242: "TABLE_IS_READ_ONLY", 252: "TOO_MANY_PARTS", 271: "CANNOT_DECOMPRESS",
              307: "TOO_MANY_BYTES", 497: "ACCESS_DENIED", 516: "AUTHENTICATION_FAILED", 1001: "STD_EXCEPTION"}
MIB = 1 << 20
TOKEN_FILE = "engine.token"  # in the store folder: the generated password of ``imtel engine``
# query_id is echoed in X-ClickHouse-Query-Id: only characters that cannot end or extend a header line.
_QUERY_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
_HEADER_VALUE = re.compile(r"\A[\x20-\x7e]*\Z")  # every header value sent: printable ASCII, no CR/LF
_LOOPBACK_NAMES = frozenset({"localhost"})
_DATA_INSERT = re.compile(rb"\A\s*(INSERT\s+INTO\s+(?P<target>[^\n]+?)\s+FORMAT\s+(?P<fmt>\w+))[ \t]*(?:\r?\n|\Z)",
                          re.IGNORECASE)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)
_SESSION_STATEMENT = re.compile(r"\A\s*(SET|USE)\b", re.IGNORECASE)
_CODE = re.compile(r"Code:\s*(\d+)")
_IDENTIFIER = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


class EngineError(Exception):
    """A ClickHouse error to send back: its code and the ``Code: N. DB::Exception: ...`` text."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text

    @classmethod
    def of(cls, code: int, message: str) -> EngineError:
        return cls(code, f"Code: {code}. DB::Exception: {message}. ({CODE_NAMES.get(code, 'UNKNOWN')})")

    @classmethod
    def from_engine(cls, exc: BaseException) -> EngineError:
        text = str(exc).strip()
        start = text.find("Code: ")
        text = text[start:] if start > 0 else text
        match = _CODE.search(text)
        return cls(int(match.group(1)) if match else 1001, text)


class StoreError(Exception):
    """The store cannot be opened (most often: another process holds it)."""


@dataclass(frozen=True)
class Statement:
    """One request's SQL: ``head`` is the statement text (what ``match`` sees), ``data`` an insert's body."""

    head: str
    data: bytes | None = None
    target: str = ""
    fmt: str = ""


def parse_statement(query_param: str | None, body: bytes) -> Statement:
    """ClickHouse semantics: the query is the ``query`` parameter followed by the body; an
    ``INSERT ... FORMAT X`` line is followed by its data."""
    text = query_param.encode() + (b"\n" + body if body else b"") if query_param else body
    match = _DATA_INSERT.match(text[:65536])
    if match:
        return Statement(match.group(1).decode(), text[match.end():], match.group("target").decode(),
                         match.group("fmt").decode())
    try:
        return Statement(text.decode())
    except UnicodeDecodeError:
        raise EngineError.of(62, "Syntax error: the query is not UTF-8 text") from None


@dataclass(frozen=True)
class Limits:
    """What one client may cost the engine. Authenticated clients are trusted with big inserts (the
    worker's largest batch, 1M rows, is ~100 MB compressed), never with unbounded ones; a client
    that is not authenticated costs at most the request head and 64 KiB of discarded body."""

    max_body_bytes: int = 128 * MIB  # on the wire; a larger Content-Length is refused before reading
    max_decoded_bytes: int = 512 * MIB  # after Content-Encoding (a zip bomb stops here)
    idle_timeout: float = 30.0  # keep-alive: no byte of the next request for this long closes the connection
    header_timeout: float = 10.0  # first byte of a request -> end of its headers (slowloris)
    body_timeout: float = 120.0  # end of the headers -> end of the body
    write_timeout: float = 120.0  # sending one answer
    max_connections: int = 64  # served at once, one thread each; more wait up to ``queue_wait``, then 503
    queue_wait: float = 1.0


DRAIN_BYTES = 64 * 1024  # a refused request's body up to this size is read and discarded (keeps keep-alive)


def too_big(what: str, limit: int) -> EngineError:
    return EngineError.of(307, f"The request {what} is larger than {limit} bytes, the limit of this server")


def decode_body(raw: bytes, encoding: str | None, limit: int = Limits.max_decoded_bytes) -> bytes:
    """Undo the request's Content-Encoding (what clickhouse-connect may send), never producing more
    than ``limit`` bytes: decompression stops as soon as the output would pass it."""
    encoding = (encoding or "identity").lower()
    if encoding == "identity":
        if len(raw) > limit:
            raise too_big("body", limit)
        return raw
    if encoding == "gzip":
        return _bounded(lambda: zlib.decompressobj(31), raw, limit)
    if encoding == "deflate":
        return _bounded(lambda: zlib.decompressobj(15), raw, limit)
    if encoding == "lz4":
        import lz4.frame

        return _bounded(lz4.frame.LZ4FrameDecompressor, raw, limit)
    if encoding == "zstd":
        from backports import zstd

        return _bounded(zstd.ZstdDecompressor, raw, limit)
    raise EngineError.of(48, f"Unsupported Content-Encoding: {encoding}")


def _bounded(new: Callable[[], Any], raw: bytes, limit: int) -> bytes:
    """Decompress the frames (gzip members) of ``raw`` one after another, at most ``limit`` bytes."""
    out: list[bytes] = []
    total, rest = 0, raw
    while rest:
        decompressor = new()
        try:
            chunk = decompressor.decompress(rest, limit - total + 1)
        except Exception as exc:  # zlib.error, RuntimeError (lz4), ZstdError: all mean a corrupt body
            raise EngineError.of(271, f"Cannot decompress the request body: {exc}") from None
        total += len(chunk)
        if total > limit:
            raise too_big("body after decompression", limit)
        if not decompressor.eof:
            raise EngineError.of(271, "Cannot decompress the request body: it ends inside a frame")
        out.append(chunk)
        rest = decompressor.unused_data
    return b"".join(out)


# -- secrets ---------------------------------------------------------------------------------------
def read_password(path: Path) -> str:
    """The password in ``path`` (one line). ValueError: unreadable or empty, said in one sentence."""
    try:
        password = path.read_text().strip("\r\n")
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not password:
        raise ValueError(f"{path} is empty: it must hold the password")
    return password


def load_or_create_token(path: Path) -> str:
    """The token in ``path``, created (mode 0600, 256 random bits) when missing. Kept across
    restarts, so clients pointed at the file keep working; refused when others may read it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise ValueError(f"{path} may be read by other users: chmod 600 it (or delete it for a new "
                             "token)") from None
        return read_password(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (names other than localhost are not resolved)."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a ``Host`` header value (``[::1]:8123`` -> ``::1``, ``a:80`` -> ``a``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


# -- what SQL may do ---------------------------------------------------------------------------------
# Tokens of ClickHouse SQL, with whitespace and comments. Where this lexer could disagree with
# ClickHouse's it errs towards seeing *more* code: /* */ is not nested, # and heredocs ($$) are not
# comments or strings here, digits never glue onto a following word.
_SQL_TOKEN = re.compile(r"""\s+|--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.|'')*'|`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*"
                        |[A-Za-z_][A-Za-z0-9_]*|[0-9]+|.""", re.S | re.X)
READ_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "("})
WRITE_STATEMENTS = frozenset({"INSERT", "CREATE", "ALTER", "DROP", "TRUNCATE", "OPTIMIZE", "RENAME", "EXCHANGE",
                              "DELETE", "UPDATE", "SYSTEM", "CHECK"})
CREATE_OBJECTS = frozenset({"TABLE", "DATABASE", "VIEW", "MATERIALIZED"})  # no DICTIONARY (SOURCE(FILE ...)),
SYSTEM_COMMANDS = frozenset({"FLUSH", "START", "STOP", "SYNC"})  # USER, FUNCTION, NAMED COLLECTION, ...
# Table functions that read only the engine's own data (or none). Every other table function the
# engine knows (file, url, s3, remote, mysql, executable, input, python, ...) is refused.
TABLE_FUNCTIONS_ALLOWED = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "null", "view",
                                     "merge", "format", "generaterandom", "generateseries", "generate_series",
                                     "loop", "primes"})
# Known to reach outside even when the engine cannot list them (unit tests, other builds); plus the
# scalar functions that do: file() reads a file, disk() mounts a path, catboostEvaluate() loads one.
KNOWN_OUTSIDE = frozenset({
    "file", "filecluster", "url", "urlcluster", "s3", "s3cluster", "gcs", "oss", "cosn", "hdfs", "hdfscluster",
    "azureblobstorage", "azureblobstoragecluster", "remote", "remotesecure", "cluster", "clusterallreplicas",
    "mysql", "postgresql", "sqlite", "mongodb", "redis", "jdbc", "odbc", "executable", "input", "python", "eval",
    "filesystem", "dictionary", "iceberg", "deltalake", "hudi", "paimon", "ytsaurus", "bigquery", "arrowstream",
    "disk", "catboostevaluate"})
# Engines (tables and databases) that keep data in the engine's own store.
ENGINES_ALLOWED = frozenset({"memory", "null", "log", "tinylog", "stripelog", "set", "join", "buffer", "distributed",
                             "merge", "view", "materializedview", "atomic", "ordinary", "lazy", "replicated"})
DATABASE_ENGINES = frozenset({"atomic", "ordinary", "lazy", "replicated", "memory", "filesystem", "s3", "hdfs",
                              "mysql", "materializedmysql", "postgresql", "materializedpostgresql", "sqlite",
                              "backup", "datalakecatalog"})
DENIED_WORDS = frozenset({"INFILE", "OUTFILE"})


def sql_tokens(sql: str) -> list[str]:
    """The tokens of ``sql`` without whitespace and comments (strings keep their quotes)."""
    return [t for t in _SQL_TOKEN.findall(sql) if not (t[0].isspace() or t.startswith(("--", "/*")))]


def _name(token: str) -> str | None:
    """A word or quoted identifier as a lower-case name; None for other tokens. A quoted name with
    a backslash escape could spell any name: it is returned with its quotes and never allowed."""
    if token[0].isalpha() or token[0] == "_":
        return token.lower()
    if token[0] in "`\"" and len(token) > 1:
        return token if "\\" in token else token[1:-1].replace(token[0] * 2, token[0]).lower()
    return None


def _refuse(reason: str) -> EngineError:
    return EngineError.of(497, f"Not allowed by imtel engine: {reason} (see docs/security.md)")


class SqlGuard:
    """Refuses statements that would reach past the engine's own store (local files, the network,
    other processes) and writes over GET. Table functions and engines are allow-listed: anything the
    engine names in ``system.table_functions`` and that is not known to stay inside is refused."""

    def __init__(self, table_functions: frozenset[str] = frozenset(), engines: frozenset[str] = frozenset()) -> None:
        self.outside = (frozenset(n.lower() for n in table_functions) | KNOWN_OUTSIDE) - TABLE_FUNCTIONS_ALLOWED
        self.engines = frozenset(n.lower() for n in engines) | DATABASE_ENGINES

    def check(self, sql: str, *, read_only: bool) -> None:
        """EngineError (164 READONLY, 497 ACCESS_DENIED) unless ``sql`` may run."""
        tokens = sql_tokens(sql)
        if not tokens:
            return  # the engine answers an empty query with its own syntax error
        self._check_kind(tokens, read_only)
        if ";" in tokens and any(t != ";" for t in tokens[tokens.index(";"):]):
            raise _refuse("one statement per request (multi-statements are refused, as ClickHouse does)")
        for token, following in zip(tokens, [*tokens[1:], ""], strict=True):
            if token.upper() in DENIED_WORDS:
                raise _refuse(f"{token.upper()} reads or writes local files")
            name = _name(token)
            if following == "(" and name is not None and (name in self.outside or "\\" in name):
                raise _refuse(f"{name}() reaches outside the engine's store")
        if tokens[0].upper() == "CREATE":
            self._check_engines(tokens)

    @staticmethod
    def _check_kind(tokens: list[str], read_only: bool) -> None:
        kind = tokens[0].upper()
        if read_only and kind not in READ_STATEMENTS:
            raise EngineError.of(164, f"Cannot execute {kind} in readonly mode: a GET request may only read, "
                                      "send statements that change data with POST")
        if kind not in READ_STATEMENTS | WRITE_STATEMENTS:
            raise _refuse(f"{kind} statements")
        words = [t.upper() for t in tokens[1:] if t.upper() not in ("OR", "REPLACE", "TEMPORARY")]
        if kind == "CREATE" and (not words or words[0] not in CREATE_OBJECTS):
            raise _refuse(f"CREATE {words[0] if words else ''}".strip())
        if kind == "SYSTEM" and (not words or words[0] not in SYSTEM_COMMANDS):
            raise _refuse(f"SYSTEM {tokens[1] if len(tokens) > 1 else ''}".strip())

    def _check_engines(self, tokens: list[str]) -> None:
        """``ENGINE = X``: X must keep its data in the store (not File, URL, S3, MySQL, FileLog, ...)."""
        for i, token in enumerate(tokens[:-1]):
            if token.upper() != "ENGINE":
                continue
            equals = tokens[i + 1] == "="
            name = _name(tokens[i + 2]) if equals and i + 2 < len(tokens) else _name(tokens[i + 1])
            if name is None or not (equals or name in self.engines):
                continue  # a column called engine
            if not (name.endswith("mergetree") or name in ENGINES_ALLOWED):
                raise _refuse(f"ENGINE {name} keeps data outside the engine's store")


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
                if not _IDENTIFIER.match(name):
                    raise EngineError.of(115, f"Unknown setting '{name}'")
                self._run(f"SET {name} = {_quote(value)}", "TabSeparated")
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
            self._prepare(database, settings)
            if stmt.data is not None:
                return self._insert(stmt, rejects, start)
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

    def _insert(self, stmt: Statement, rejects: list[Fault], start: float) -> Answer:
        with tempfile.NamedTemporaryFile(dir=self.scratch, suffix="." + stmt.fmt.lower()) as block:
            block.write(stmt.data or b"")
            block.flush()
            for fault in rejects:
                found = self._count_marked(block.name, stmt.fmt, fault)
                if found:
                    raise RejectedError(fault, EngineError.of(
                        117, f"Rejected by an injected fault: {found} row(s) of the block have the marker in "
                             f"column {fault.column}"))
            result = self._run(f"INSERT INTO {stmt.target} FROM INFILE {_quote(block.name)} FORMAT {stmt.fmt}",
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


# -- HTTP ------------------------------------------------------------------------------------------
class _Pool:
    """At most ``size`` jobs (connections) at once, on at most ``size`` daemon threads started on
    demand. Daemon threads, because a connection held by a ``stall`` fault must not delay exit."""

    def __init__(self, size: int, wait: float) -> None:
        self.size, self.wait = size, wait
        self.slots = threading.BoundedSemaphore(size)
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = self.busy = 0

    def submit(self, job: Callable[[], None]) -> bool:
        """Run ``job`` on a pool thread; False when no slot freed up within ``wait`` seconds."""
        if not self.slots.acquire(timeout=self.wait):
            return False
        with self.lock:
            self.busy += 1
            if self.busy > self.threads:  # every queued job has a thread that will take it
                self.threads += 1
                threading.Thread(target=self._work, name=f"engine-http-{self.threads}", daemon=True).start()
        self.jobs.put(job)
        return True

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job()
            finally:
                with self.lock:
                    self.busy -= 1
                self.slots.release()


_BUSY_TEXT = b"Code: 202. DB::Exception: Too many connections, try again. (TOO_MANY_SIMULTANEOUS_QUERIES)\n"
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"X-ClickHouse-Exception-Code: 202\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class _Server(socketserver.TCPServer):
    """One listening socket; each accepted connection is served by the engine's bounded pool."""

    allow_reuse_address = True  # rebinding after a refuse fault; a port with a live listener still fails

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()
        self.address_family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        super().__init__((listener.host, listener.port), Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.track(request)
        if not self.listener.engine_server.pool.submit(lambda: self._serve_one(request, client_address)):
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(BUSY)
            self.shutdown_request(request)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:
            pass  # the client went away, timed out, or failed the TLS handshake
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def track(self, conn: socket.socket) -> None:
        with self.open_lock:
            self.open.add(conn)

    def shutdown_request(self, request: Any) -> None:
        with self.open_lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.open_lock:
            connections = list(self.open)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Listener:
    """One listening port. Data listeners (index >= 0) can be faulted; the admin listener (-1) cannot."""

    def __init__(self, server: EngineServer, index: int, host: str, port: int = 0) -> None:
        self.engine_server, self.index, self.host, self.port = server, index, host, port
        self.server: _Server | None = None
        self.serving = False
        self.lock = threading.Lock()
        self.refused_until = 0.0

    @property
    def admin(self) -> bool:
        return self.index < 0

    def bind(self) -> None:
        """Take the port (OSError when it is taken); requests wait in the backlog until ``serve``."""
        with self.lock:
            if self.server is None:
                self.server = _Server(self)
                self.port = self.server.server_address[1]

    def serve(self) -> None:
        with self.lock:
            server, self.serving = self.server, self.server is not None
        if server is not None:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def open(self) -> None:
        self.bind()
        self.serve()

    def close(self) -> None:
        with self.lock:
            server, serving, self.server, self.serving = self.server, self.serving, None, False
        if server is not None:
            if serving:  # shutdown() waits for serve_forever: it would wait forever on a port only bound
                server.shutdown()
            server.server_close()
            server.drop_connections()

    def refuse(self, seconds: float) -> None:
        """Stop listening (connections are refused) for ``seconds``, then listen on the same port."""
        self.refused_until = time.monotonic() + seconds
        self.close()

        def reopen() -> None:
            while time.monotonic() < self.refused_until:
                time.sleep(0.05)
            self.open()

        threading.Thread(target=reopen, daemon=True).start()


class _DeadlineReader(io.RawIOBase):
    """A connection's reading side where a whole phase has one deadline, not each ``recv``: a
    client that sends a byte a second (slowloris) is cut off when the phase's time is up."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = float("inf")
        self.after_first: float | None = None

    def readable(self) -> bool:
        return True

    def expect(self, seconds: float, then: float | None = None) -> None:
        """The next bytes must arrive within ``seconds``; once one has, the rest within ``then``."""
        self.deadline, self.after_first = time.monotonic() + seconds, then

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client was too slow")
        self.sock.settimeout(remaining)
        n = self.sock.recv_into(buffer)
        if n and self.after_first is not None:
            self.deadline, self.after_first = time.monotonic() + self.after_first, None
        return n


class _Writer(io.BufferedIOBase):
    """The writing side: every write is sent whole (``sendall``, bounded by the socket timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sock.sendall(data)
        return len(data)


class Handler(BaseHTTPRequestHandler):
    """One connection's HTTP exchanges, ClickHouse style."""

    protocol_version = "HTTP/1.1"
    server: _Server
    connection: socket.socket

    def setup(self) -> None:
        srv = self.server.listener.engine_server
        self.limits = srv.limits
        self.request.settimeout(self.limits.header_timeout)  # bounds the TLS handshake
        if srv.tls is not None and not self.server.listener.admin:
            self.request = srv.tls.wrap_socket(self.request, server_side=True)
            self.server.track(self.request)
        self.connection = self.request
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader, 65536)
        self.wfile = _Writer(self.connection)
        self.pending = 0  # body bytes announced and not read (-1: chunked)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if isinstance(self.connection, ssl.SSLSocket):
            self.server.shutdown_request(self.connection)

    def handle_one_request(self) -> None:
        self.reader.expect(self.limits.idle_timeout, then=self.limits.header_timeout)
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not logged: they carry user data

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # -- dispatch -----------------------------------------------------------------------------------
    def _handle(self) -> None:
        listener, srv = self.server.listener, self.server.listener.engine_server
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = str(uuid.uuid4())
        try:
            self.pending = self._announced_body()
            query_id = params.get("query_id") or query_id
            if not _QUERY_ID.match(query_id):
                query_id = str(uuid.uuid4())  # never echo what was refused
                raise EngineError.of(36, "query_id must be 1-128 characters of A-Z a-z 0-9 _ . : - (letter or "
                                         "digit first)")
            srv.check_origin(self.headers)
            if url.path == "/ping" or (url.path == "/" and "query" not in params and not self.pending):
                return self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            if url.path != "/" and not (url.path == "/__faults" and listener.admin):
                return self._send(404, b"Not found\n", {"Content-Type": "text/plain"})
            srv.authenticate(self.headers, params)  # before a byte of the body is read
            body = decode_body(self._read_body(), self.headers.get("Content-Encoding"), self.limits.max_decoded_bytes)
            if url.path == "/__faults":
                return self._control(body)
            stmt = parse_statement(params.get("query"), body)
            srv.guard.check(stmt.head, read_only=self.command != "POST")
            self._serve(listener, srv, stmt, params, query_id)
        except EngineError as exc:
            self._error(exc, query_id, srv.engine.timezone, srv.engine.version)
        except OSError:  # the client went away or was too slow, or the listener was closed under it (refuse)
            self.close_connection = True
        except Exception as exc:  # a bug of this server: answer as a server would, and keep serving
            traceback.print_exc()
            self._error(EngineError.of(1001, f"{type(exc).__name__}: {exc}"), query_id, srv.engine.timezone,
                        srv.engine.version)

    def _serve(self, listener: Listener, srv: EngineServer, stmt: Statement, params: dict[str, str],
               query_id: str) -> None:
        faults, index = srv.faults, listener.index
        rejects: list[Fault] = []
        stall = None
        if not listener.admin:
            error = faults.take(index, "error", stmt.head)
            if error is not None:
                raise EngineError.of(error.code, error.message or "Injected fault")
            stall = faults.take(index, "stall", stmt.head)
            if stall is not None and not stall.after:
                return self._drop(faults, stall)
            self._delay(faults, faults.take(index, "slow", stmt.head))
            rejects = faults.candidates(index, "reject", stmt.head) if stmt.data is not None else []
        settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        bound = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        default_format = params.get("default_format")
        if default_format is not None and not _IDENTIFIER.match(default_format):
            raise EngineError.of(73, "Unknown format: default_format must be a format name")
        try:
            answer = srv.engine.execute(stmt, database=params.get("database"), settings=settings, params=bound,
                                        default_format=default_format, rejects=rejects)
        except RejectedError as exc:
            faults.hit(exc.fault)
            raise exc.error from None
        if stall is not None and stall.after:
            return self._drop(faults, stall)
        headers = {"X-ClickHouse-Summary": json.dumps(answer.summary),
                   "Content-Type": _content_type(answer.fmt)}
        if answer.fmt:
            headers["X-ClickHouse-Format"] = answer.fmt
        self._send(200, answer.body, headers, query_id, srv.engine.timezone)

    def _delay(self, faults: FaultBook, slow: Fault | None) -> None:
        if slow is None:
            return
        faults.flight(slow, 1)
        try:
            time.sleep(slow.seconds)
        finally:
            faults.flight(slow, -1)

    def _drop(self, faults: FaultBook, stall: Fault) -> None:
        """Hold the request, then close the connection without an answer."""
        self._delay(faults, stall)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- control ------------------------------------------------------------------------------------
    def _control(self, body: bytes) -> None:
        srv = self.server.listener.engine_server
        try:
            if self.command == "POST":
                spec = json.loads(body or b"{}")
                fault = srv.inject(Fault(**spec))
                return self._json(200, fault.view())
            if self.command == "DELETE":
                srv.clear()
            return self._json(200, {"faults": srv.faults.views(), "listeners": [x.port for x in srv.data]})
        except (TypeError, ValueError, IndexError, re.error) as exc:
            return self._json(400, {"error": str(exc)})

    # -- I/O ------------------------------------------------------------------------------------------
    def _announced_body(self) -> int:
        """Body bytes the head announces (-1: chunked). A body over the cap is refused here, unread."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return -1
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.pending = -1  # where this request ends is unknown: the connection closes after the answer
            raise EngineError.of(36, "Content-Length must be a whole number of bytes")
        if length > self.limits.max_body_bytes:
            self.pending = length
            raise too_big("body", self.limits.max_body_bytes)
        return length

    def _read_body(self) -> bytes:
        """The body, read within ``body_timeout`` and never more than ``max_body_bytes``."""
        self.reader.expect(self.limits.body_timeout)
        if self.pending == -1:
            body = self._read_chunks(self.limits.max_body_bytes)
        else:
            body = self.rfile.read(self.pending) if self.pending else b""
            if len(body) < self.pending:
                raise ConnectionResetError("the body ended early")
        self.pending = 0
        return body

    def _read_chunks(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(256).split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise EngineError.of(36, "Malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > limit:
                raise too_big("body", limit)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(256)

    def _send(self, status: int, body: bytes, headers: dict[str, str], query_id: str = "",
              timezone: str = "") -> None:
        linger = self._settle_body()
        self.connection.settimeout(self.limits.write_timeout)
        self.send_response(status)
        headers = {**headers, "X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": timezone,
                   "X-ClickHouse-Server-Display-Name": "imtel-engine", "X-Content-Type-Options": "nosniff",
                   "Content-Length": str(len(body)), "Keep-Alive": f"timeout={int(self.limits.idle_timeout)}"}
        if self.close_connection:
            headers["Connection"] = "close"
        for name, value in headers.items():
            if value and _HEADER_VALUE.match(value):  # nothing a client sent can split a header
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        if linger:
            self._linger()

    def _settle_body(self) -> bool:
        """Before answering a request whose body was not read: discard a small body (the connection
        stays usable); a large or chunked one is not read, the connection closes after the answer.
        True: close it gently (``_linger``), so the answer is not lost to a reset."""
        if not self.pending:
            return False
        if 0 < self.pending <= DRAIN_BYTES:
            self.reader.expect(min(self.limits.header_timeout, self.limits.body_timeout))
            with contextlib.suppress(OSError):
                if len(self.rfile.read(self.pending)) == self.pending:
                    self.pending = 0
                    return False
        self.close_connection = True
        return True

    def _linger(self) -> None:
        """Close the sending side, then read and drop what the client still sends (up to DRAIN_BYTES,
        one second), so that closing does not reset the connection before the client read the answer."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.reader.expect(1.0)
            drained = 0
            while drained < DRAIN_BYTES and (chunk := self.rfile.read1(16384)):
                drained += len(chunk)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _error(self, exc: EngineError, query_id: str, timezone: str, version: str) -> None:
        text = exc.text if "(version " in exc.text else f"{exc.text} (version {version})"
        try:
            self._send(HTTP_STATUS.get(exc.code, 500), (text + "\n").encode(),
                       {"X-ClickHouse-Exception-Code": str(exc.code), "Content-Type": "text/plain; charset=UTF-8"},
                       query_id, timezone)
        except OSError:
            self.close_connection = True


def _content_type(fmt: str | None) -> str:
    if fmt and fmt.startswith("JSON"):
        return "application/json; charset=UTF-8"
    if fmt is None or fmt.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    return "application/octet-stream"


@dataclass(frozen=True)
class Access:
    """Who may use the server: the one user and password, the Host values accepted besides
    loopback ones (a name or address clients use to reach a non-loopback bind), and TLS."""

    password: str
    user: str = "default"
    hosts: frozenset[str] = frozenset()
    tls: ssl.SSLContext | None = None
    password_file: Path | None = None  # told to our own clients through the ready file

    @classmethod
    def from_files(cls, password_file: Path, *, generate: bool, user: str = "default", hosts: list[str] | None = None,
                   tls_cert: Path | None = None, tls_key: Path | None = None) -> Access:
        """The password from ``password_file`` (with ``generate``: a token created there when missing),
        TLS from a PEM certificate chain and key. ValueError: one sentence naming the file."""
        try:
            password = load_or_create_token(password_file) if generate else read_password(password_file)
        except OSError as exc:
            raise ValueError(f"{password_file}: {exc.strerror}") from None
        return cls(password, user, frozenset(hosts or ()), _tls_context(tls_cert, tls_key), password_file.resolve())


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        if key is not None:
            raise ValueError("--tls-key needs --tls-cert")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: {exc}") from None
    return context


class EngineServer:
    """The engine, the fault book and the listeners of one ``imtel engine`` process.

    Data listener 0 is on ``port`` (0: a free one), further data listeners on free ports; the fault
    admin listener exists only when ``fault_admin_port`` is given, and always on loopback."""

    def __init__(self, store: Path, *, access: Access, host: str = "127.0.0.1", port: int = 8123,
                 listeners: int = 1, fault_admin_port: int | None = None, limits: Limits | None = None) -> None:
        if not access.password:
            raise ValueError("the engine needs a password: it never serves without authentication")
        self.store, self.access, self.limits = store, access, limits or Limits()
        self.user, self.password, self.tls = access.user, access.password, access.tls
        self.hosts = frozenset(h.lower() for h in access.hosts) | ({host.lower()} if not is_loopback(host) else set())
        self.faults = FaultBook()
        self.pool = _Pool(self.limits.max_connections, self.limits.queue_wait)
        self.guard = SqlGuard()
        self.data = [Listener(self, i, host, port if i == 0 else 0) for i in range(listeners)]
        self.admin = Listener(self, -1, "127.0.0.1", fault_admin_port) if fault_admin_port is not None else None
        self.scratch: Path | None = None
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the engine is not open")
        return self._engine

    @property
    def listeners(self) -> list[Listener]:
        return [*self.data, *([self.admin] if self.admin is not None else [])]

    def start(self) -> None:
        """Take the ports first (a taken port fails fast, before the engine's seconds of start-up),
        then open the store, then answer. OSError: a port is taken; StoreError: the store won't open."""
        try:
            for listener in self.listeners:
                listener.bind()
            self.scratch = Path(tempfile.mkdtemp(prefix="imtel-engine-"))
            self._engine = Engine(self.store, self.scratch)
            self.guard = SqlGuard(self._engine.names("table_functions"), self._engine.names("table_engines"))
        except BaseException:
            self.stop()
            raise
        for listener in self.listeners:
            listener.serve()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop answering, let a running statement finish (up to ``timeout``), close the store."""
        for listener in self.listeners:
            listener.close()
        if self._engine is not None:
            self._engine.close(timeout)
            self._engine = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def ready(self) -> dict[str, Any]:
        """What ``--ready-file`` holds: the data ports, the admin port (None: no fault admin), the pid,
        and where our own clients find the credentials (the user; the password file, never the password)."""
        password_file = str(self.access.password_file) if self.access.password_file else None
        return {"data": [x.port for x in self.data], "admin": self.admin.port if self.admin else None,
                "pid": os.getpid(), "user": self.user, "password_file": password_file}

    def inject(self, fault: Fault) -> Fault:
        if not 0 <= fault.listener < len(self.data):
            raise IndexError(f"listener must be 0..{len(self.data) - 1}")
        self.faults.add(fault)
        if fault.mode == "refuse":
            fault.hits, fault.duration = 1, fault.seconds
            self.data[fault.listener].refuse(fault.seconds)
        return fault

    def clear(self) -> None:
        self.faults.clear()
        for listener in self.data:
            listener.refused_until = 0.0

    def check_origin(self, headers: Any) -> None:
        """Refuse what a web page could send: a Host that is not ours (DNS rebinding) and any request
        a browser makes on a page's behalf (``Origin``, ``Sec-Fetch-Site`` other than typed-in)."""
        host = headers.get("Host")
        if host is None or not (is_loopback(host_of(host)) or host_of(host) in self.hosts):
            raise EngineError.of(497, "Host not allowed: this server answers only to loopback names and the "
                                      "hosts given with --allow-host")
        if headers.get("Origin") is not None or headers.get("Sec-Fetch-Site", "none") != "none":
            raise EngineError.of(497, "Requests from web pages (Origin) are not allowed")

    def authenticate(self, headers: Any, params: dict[str, str]) -> None:
        """Basic auth, X-ClickHouse-User/Key headers or user/password parameters, like ClickHouse;
        compared in constant time. Always required: there is no anonymous access."""
        user, password = params.get("user", ""), params.get("password", "")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:], validate=True).decode(errors="replace").partition(":")
            except (binascii.Error, ValueError):
                user, password = "", ""
        user = headers.get("X-ClickHouse-User", user) or "default"
        password = headers.get("X-ClickHouse-Key", password)
        if not (hmac.compare_digest(user.encode(), self.user.encode())
                and hmac.compare_digest(password.encode(), self.password.encode())):
            raise EngineError.of(516, f"{user[:64]}: Authentication failed: password is incorrect, or there is no "
                                      "user with such name")


def serve(server: EngineServer, ready_file: Path | None = None, on_ready: Any = None) -> None:
    """Run ``server`` until SIGTERM or SIGINT (main thread only), then stop it cleanly."""
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps(server.ready()))
            tmp.replace(ready_file)
        if on_ready is not None:
            on_ready(server)
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
