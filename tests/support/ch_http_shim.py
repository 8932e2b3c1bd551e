"""ClickHouse's HTTP interface in front of a real chDB store, with faults switchable at runtime.

Why this exists: chDB (embedded ClickHouse) runs inside one process and only one process may open a
store, so between a worker and its database there is no network to break, and several workers cannot
share one database. This shim is that network. It is a small HTTP server *process* that owns one
chDB store and speaks the part of the ClickHouse HTTP interface that clickhouse-connect's HTTP client
uses: SQL in the ``query`` parameter and/or the body, ``param_*`` bound parameters, settings as URL
parameters, the connect-time queries (version, timezone, ``system.settings``), ``INSERT ... FORMAT
Native|Arrow|...`` with the data in the body (chunked and/or lz4/zstd/gzip/deflate-encoded), errors as
ClickHouse sends them (HTTP 5xx/4xx, ``X-ClickHouse-Exception-Code``, body ``Code: N. DB::Exception:
...``) and the ``X-ClickHouse-Summary/-Format/-Query-Id/-Timezone`` headers. A worker points
``IMTEL_CLICKHOUSE_DSN`` at ``http://127.0.0.1:PORT`` and runs unchanged; every statement runs on the
real engine, so a test that passes through the shim checks real SQL on real data.

Faults live at this transport boundary, per data listener (give each worker its own listener to
target one of them; all listeners share the one engine):

  refuse  close the listening socket and drop open connections for ``seconds``, then listen again on
          the same port (clients see ECONNREFUSED / resets)
  stall   hold each matching request ``seconds``, then drop the connection without an answer (a hung
          server or proxy timeout); with ``after`` the statement runs first, so the write happened
          and only its acknowledgement is lost
  error   answer matching requests with HTTP ``status`` and ClickHouse ``code`` (e.g. 500 + 252
          TOO_MANY_PARTS) without running them
  slow    run matching requests after ``seconds`` (they still run if the client went away, as on a
          real server)
  reject  fail a data insert with Code 117 (INCORRECT_DATA) when its uploaded block holds a row whose
          ``column`` contains ``marker``; decided by a SELECT over the uploaded block on the engine

Every fault may carry ``match`` (a regex the statement text, never the data, must match), ``duration``
(seconds until it expires; default: until cleared) and ``limit`` (maximal hits). Control runs on the
admin listener, which is never faulted and also answers SQL (for test assertions):
``POST /__faults`` (JSON spec, ``listener`` index) -> the fault; ``GET /__faults`` -> every fault
with ``hits`` and ``in_flight``; ``DELETE /__faults`` clears them and reopens refused listeners.

Not a ClickHouse server: no sessions (``SET``/``USE`` statements are refused; pass settings as URL
parameters, which apply to one request), answers are never compressed (identity encoding is always
acceptable to clients), no progress headers, and statements run one at a time on the engine.

Run: ``python tests/support/ch_http_shim.py --store DIR --listeners 2 --ready-file F`` writes
``{"data": [port, ...], "admin": port, "pid": ...}`` to F once it serves.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import re
import socket
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# URL parameters that steer the HTTP layer; everything else that is not ``param_*`` is a setting.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "buffer_size", "wait_end_of_query",
    "client_protocol_version", "role", "enable_http_compression", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms"})
HTTP_STATUS = {27: 400, 62: 400, 60: 404, 81: 404, 115: 400, 164: 403, 497: 403, 516: 401}
CODE_NAMES = {48: "NOT_IMPLEMENTED", 62: "SYNTAX_ERROR", 115: "UNKNOWN_SETTING", 117: "INCORRECT_DATA",
              202: "TOO_MANY_SIMULTANEOUS_QUERIES", 209: "SOCKET_TIMEOUT", 242: "TABLE_IS_READ_ONLY",
              252: "TOO_MANY_PARTS", 516: "AUTHENTICATION_FAILED", 1001: "STD_EXCEPTION"}
MODES = ("refuse", "stall", "error", "slow", "reject")
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


def decode_body(raw: bytes, encoding: str | None) -> bytes:
    """Undo the request's Content-Encoding (what clickhouse-connect may send)."""
    encoding = (encoding or "identity").lower()
    if encoding == "identity":
        return raw
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    if encoding == "lz4":
        import lz4.frame

        out, rest = [], raw
        while rest:  # a body may hold several frames
            decompressor = lz4.frame.LZ4FrameDecompressor()
            out.append(decompressor.decompress(rest))
            rest = decompressor.unused_data
        return b"".join(out)
    if encoding == "zstd":
        from backports import zstd

        return bytes(zstd.decompress(raw))
    raise EngineError.of(48, f"Unsupported Content-Encoding: {encoding}")


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

        self.conn = chdb.connect(str(store))  # type: ignore[no-untyped-call]
        self.scratch = scratch
        self.lock = threading.Lock()
        self.database = "default"
        self.applied: dict[str, str] = {}
        version, tz = self._run("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
        self.version, self.timezone = version.strip(), tz.strip()

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
            raise EngineError.of(48, "SET/USE statements need sessions, which this shim does not keep; "
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
                        117, f"Rejected by the fault shim: {found} row(s) of the block have the marker in "
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


# -- faults ----------------------------------------------------------------------------------------
@dataclass
class Fault:
    """One injected fault on one listener (see the module docstring for the modes)."""

    mode: str
    listener: int = 0
    seconds: float = 0.0
    duration: float | None = None
    match: str = ""
    limit: int | None = None
    after: bool = False
    status: int = 500
    code: int = 0
    message: str = ""
    column: str = ""
    marker: str = ""
    id: int = 0
    hits: int = 0
    in_flight: int = 0
    created: float = field(default_factory=time.monotonic)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.mode == "reject" and not (_IDENTIFIER.match(self.column) and self.marker):
            raise ValueError("reject needs column (an identifier) and marker")
        if self.mode == "error" and not (400 <= self.status < 600 and self.code > 0):
            raise ValueError("error needs an HTTP status 400..599 and a ClickHouse code > 0")
        re.compile(self.match)

    def active(self, now: float) -> bool:
        expired = self.duration is not None and now - self.created >= self.duration
        return not expired and (self.limit is None or self.hits < self.limit)

    def view(self) -> dict[str, Any]:
        out = asdict(self)
        out["active"] = self.active(time.monotonic())
        del out["created"]
        return out


class FaultBook:
    """Every fault of the shim; thread-safe. A hit is counted when a fault actually changed a request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        fault.validate()
        with self.lock:
            fault.id = len(self.faults) + 1
            self.faults.append(fault)
        return fault

    def take(self, listener: int, mode: str, head: str) -> Fault | None:
        """The first active fault of ``mode`` matching this statement, with one hit counted."""
        with self.lock:
            for fault in self._matching(listener, mode, head):
                fault.hits += 1
                return fault
        return None

    def candidates(self, listener: int, mode: str, head: str) -> list[Fault]:
        with self.lock:
            return list(self._matching(listener, mode, head))

    def hit(self, fault: Fault) -> None:
        with self.lock:
            fault.hits += 1

    def flight(self, fault: Fault, delta: int) -> None:
        with self.lock:
            fault.in_flight += delta

    def clear(self) -> None:
        with self.lock:
            for fault in self.faults:
                fault.duration = 0.0

    def views(self) -> list[dict[str, Any]]:
        with self.lock:
            return [f.view() for f in self.faults]

    def _matching(self, listener: int, mode: str, head: str) -> list[Fault]:
        now = time.monotonic()
        return [f for f in self.faults if f.mode == mode and f.listener == listener and f.active(now)
                and (not f.match or re.search(f.match, head, re.IGNORECASE))]


# -- HTTP ------------------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()
        super().__init__(("127.0.0.1", listener.port), Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(request)
        super().process_request(request, client_address)

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

    def __init__(self, shim: Shim, index: int, port: int = 0) -> None:
        self.shim, self.index, self.port = shim, index, port
        self.server: _Server | None = None
        self.lock = threading.Lock()
        self.refused_until = 0.0

    @property
    def admin(self) -> bool:
        return self.index < 0

    def open(self) -> None:
        with self.lock:
            if self.server is not None:
                return
            self.server = _Server(self)
            self.port = self.server.server_address[1]
            threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
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


class Handler(BaseHTTPRequestHandler):
    """One HTTP exchange, ClickHouse style."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not logged: they carry test data

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # -- dispatch -----------------------------------------------------------------------------------
    def _handle(self) -> None:
        listener, shim = self.server.listener, self.server.listener.shim
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            body = decode_body(self._read_body(), self.headers.get("Content-Encoding"))
            if url.path == "/__faults" and listener.admin:
                return self._control(body)
            if url.path == "/ping" or (url.path == "/" and "query" not in params and not body):
                return self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            if url.path != "/":
                return self._send(404, b"Not found\n", {"Content-Type": "text/plain"})
            shim.authenticate(self.headers, params)
            stmt = parse_statement(params.get("query"), body)
            self._serve(listener, shim, stmt, params, query_id)
        except EngineError as exc:
            self._error(exc, query_id, shim.engine.timezone, shim.engine.version)
        except OSError:  # the client went away, or the listener was closed under it (refuse)
            self.close_connection = True
        except Exception as exc:  # a bug of the shim: answer as a server would, and keep serving
            traceback.print_exc()
            self._error(EngineError.of(1001, f"{type(exc).__name__}: {exc}"), query_id, shim.engine.timezone,
                        shim.engine.version)

    def _serve(self, listener: Listener, shim: Shim, stmt: Statement, params: dict[str, str], query_id: str) -> None:
        faults, index = shim.faults, listener.index
        rejects: list[Fault] = []
        stall = None
        if not listener.admin:
            error = faults.take(index, "error", stmt.head)
            if error is not None:
                raise EngineError.of(error.code, error.message or "Injected by the fault shim")
            stall = faults.take(index, "stall", stmt.head)
            if stall is not None and not stall.after:
                return self._drop(faults, stall)
            self._delay(faults, faults.take(index, "slow", stmt.head))
            rejects = faults.candidates(index, "reject", stmt.head) if stmt.data is not None else []
        settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        bound = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        try:
            answer = shim.engine.execute(stmt, database=params.get("database"), settings=settings, params=bound,
                                            default_format=params.get("default_format"), rejects=rejects)
        except RejectedError as exc:
            faults.hit(exc.fault)
            raise exc.error from None
        if stall is not None and stall.after:
            return self._drop(faults, stall)
        headers = {"X-ClickHouse-Summary": json.dumps(answer.summary),
                   "Content-Type": _content_type(answer.fmt)}
        if answer.fmt:
            headers["X-ClickHouse-Format"] = answer.fmt
        self._send(200, answer.body, headers, query_id, shim.engine.timezone)

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
        shim = self.server.listener.shim
        try:
            if self.command == "POST":
                spec = json.loads(body or b"{}")
                fault = shim.inject(Fault(**spec))
                return self._json(200, fault.view())
            if self.command == "DELETE":
                shim.clear()
            return self._json(200, {"faults": shim.faults.views(), "listeners": [x.port for x in shim.data]})
        except (TypeError, ValueError, IndexError, re.error) as exc:
            return self._json(400, {"error": str(exc)})

    # -- I/O ------------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str], query_id: str = "",
              timezone: str = "") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if query_id:
            self.send_header("X-ClickHouse-Query-Id", query_id)
        if timezone:
            self.send_header("X-ClickHouse-Timezone", timezone)
        self.send_header("X-ClickHouse-Server-Display-Name", "chdb-http-shim")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", "timeout=10")
        self.end_headers()
        self.wfile.write(body)

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


class Shim:
    """The engine, the fault book and the listeners of one shim process."""

    def __init__(self, store: Path, listeners: int, user: str = "default", password: str | None = None) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="ch-shim-"))
        self.engine = Engine(store, scratch)
        self.faults = FaultBook()
        self.user, self.password = user, password
        self.data = [Listener(self, i) for i in range(listeners)]
        self.admin = Listener(self, -1)

    def start(self) -> None:
        for listener in [*self.data, self.admin]:
            listener.open()

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

    def authenticate(self, headers: Any, params: dict[str, str]) -> None:
        """Basic auth, X-ClickHouse-User/Key headers or user/password parameters, like ClickHouse."""
        if self.password is None:
            return
        user, password = params.get("user", ""), params.get("password", "")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        user = headers.get("X-ClickHouse-User", user) or "default"
        password = headers.get("X-ClickHouse-Key", password)
        if user != self.user or password != self.password:
            raise EngineError.of(516, f"{user}: Authentication failed: password is incorrect, or there is no user "
                                      "with such name")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--store", required=True, type=Path, help="chDB data folder (created if missing)")
    parser.add_argument("--listeners", type=int, default=1, help="data listeners (faultable ports)")
    parser.add_argument("--ready-file", type=Path, required=True, help="JSON with the ports, written when serving")
    parser.add_argument("--user", default="default")
    parser.add_argument("--password", default=None, help="require this password (default: no authentication)")
    args = parser.parse_args(argv)
    args.store.mkdir(parents=True, exist_ok=True)
    shim = Shim(args.store, args.listeners, args.user, args.password)
    shim.start()
    import os

    ready = {"data": [x.port for x in shim.data], "admin": shim.admin.port, "pid": os.getpid()}
    tmp = args.ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ready))
    tmp.replace(args.ready_file)
    threading.Event().wait()


if __name__ == "__main__":
    main()
