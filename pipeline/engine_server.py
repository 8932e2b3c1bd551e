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
encoding is always acceptable to clients), sends no progress headers, has one user (no password
unless ``--password-file``), no TLS, and binds to loopback unless told otherwise.

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
import contextlib
import gzip
import hmac
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .engine_faults import Fault, FaultBook

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
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # rebinding after a refuse fault; a port with a live listener still fails

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()
        super().__init__((listener.host, listener.port), Handler)

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


class Handler(BaseHTTPRequestHandler):
    """One HTTP exchange, ClickHouse style."""

    protocol_version = "HTTP/1.1"
    server: _Server

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
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            body = decode_body(self._read_body(), self.headers.get("Content-Encoding"))
            if url.path == "/__faults" and listener.admin:
                return self._control(body)
            if url.path == "/ping" or (url.path == "/" and "query" not in params and not body):
                return self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            if url.path != "/":
                return self._send(404, b"Not found\n", {"Content-Type": "text/plain"})
            srv.authenticate(self.headers, params)
            stmt = parse_statement(params.get("query"), body)
            self._serve(listener, srv, stmt, params, query_id)
        except EngineError as exc:
            self._error(exc, query_id, srv.engine.timezone, srv.engine.version)
        except OSError:  # the client went away, or the listener was closed under it (refuse)
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
        try:
            answer = srv.engine.execute(stmt, database=params.get("database"), settings=settings, params=bound,
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
        self.send_header("X-ClickHouse-Server-Display-Name", "imtel-engine")
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


class EngineServer:
    """The engine, the fault book and the listeners of one ``imtel engine`` process.

    Data listener 0 is on ``port`` (0: a free one), further data listeners on free ports; the fault
    admin listener exists only when ``fault_admin_port`` is given, and always on loopback."""

    def __init__(self, store: Path, *, host: str = "127.0.0.1", port: int = 8123, listeners: int = 1,
                 fault_admin_port: int | None = None, user: str = "default", password: str | None = None) -> None:
        self.store, self.user, self.password = store, user, password
        self.faults = FaultBook()
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
        """What ``--ready-file`` holds: the data ports, the admin port (None: no fault admin), the pid."""
        return {"data": [x.port for x in self.data], "admin": self.admin.port if self.admin else None,
                "pid": os.getpid()}

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
        if not (hmac.compare_digest(user.encode(), self.user.encode())
                and hmac.compare_digest(password.encode(), self.password.encode())):
            raise EngineError.of(516, f"{user}: Authentication failed: password is incorrect, or there is no user "
                                      "with such name")


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
