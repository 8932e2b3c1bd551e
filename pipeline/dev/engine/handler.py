"""The HTTP side of ``imtel engine``: its listening ports, and one connection's requests from head to
answer, ClickHouse style (dispatch, body reading within the limits, the fault hooks, errors as
ClickHouse sends them).

The order of the checks is the point: query_id, Host/Origin and the password are checked on the
head, the body is read only after them, and the SQL guard runs before the store sees a statement.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import socketserver
import ssl
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from pipeline.dev.engine.guard import SqlGuard
from pipeline.dev.engine.limits import BUSY, DRAIN_BYTES, DeadlineReader, Limits, Pool, decode_body, too_big
from pipeline.dev.engine.native import NativeUnsupported, for_revision
from pipeline.dev.engine.protocol import (
    HEADER_VALUE,
    HTTP_STATUS,
    IDENTIFIER,
    QUERY_ID,
    TRANSPORT_PARAMS,
    EngineError,
    Statement,
    client_revision,
    content_type,
    parse_statement,
    refuse_native_compression,
)
from pipeline.dev.engine.store import Engine, RejectedError
from pipeline.dev.engine_faults import Fault, FaultBook


class Serving(Protocol):
    """What listeners and connections need of the engine server (``server.EngineServer``), declared
    here so that this module does not import the server that starts its listeners."""

    limits: Limits
    tls: ssl.SSLContext | None
    faults: FaultBook
    guard: SqlGuard
    pool: Pool
    data: list[Listener]

    @property
    def engine(self) -> Engine: ...
    def inject(self, fault: Fault) -> Fault: ...
    def clear(self) -> None: ...
    def check_origin(self, headers: Any) -> None: ...
    def authenticate(self, headers: Any, params: dict[str, str]) -> None: ...


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
    server: ListenerServer
    connection: socket.socket

    def setup(self) -> None:
        srv = self.server.listener.engine_server
        self.limits = srv.limits
        self.request.settimeout(self.limits.header_timeout)  # bounds the TLS handshake
        if srv.tls is not None and not self.server.listener.admin:
            self.request = srv.tls.wrap_socket(self.request, server_side=True)
            self.server.track(self.request)
        self.connection = self.request
        self.reader = DeadlineReader(self.connection)
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
            if not QUERY_ID.match(query_id):
                query_id = str(uuid.uuid4())  # never echo what was refused
                raise EngineError.of(36, "query_id must be 1-128 characters of A-Z a-z 0-9 _ . : - (letter or "
                                         "digit first)")
            srv.check_origin(self.headers)
            if url.path == "/ping" or (url.path == "/" and "query" not in params and not self.pending):
                return self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            if url.path != "/" and not (url.path == "/__faults" and listener.admin):
                return self._send(404, b"Not found\n", {"Content-Type": "text/plain"})
            srv.authenticate(self.headers, params)  # before a byte of the body is read
            refuse_native_compression(params)  # its body could not be read anyway
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

    def _serve(self, listener: Listener, srv: Serving, stmt: Statement, params: dict[str, str],
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
        if default_format is not None and not IDENTIFIER.match(default_format):
            raise EngineError.of(73, "Unknown format: default_format must be a format name")
        revision = client_revision(params)
        try:
            answer = srv.engine.execute(stmt, database=params.get("database"), settings=settings, params=bound,
                                        default_format=default_format, rejects=rejects)
        except RejectedError as exc:
            faults.hit(exc.fault)
            raise exc.error from None
        if stall is not None and stall.after:
            return self._drop(faults, stall)
        body = answer.body
        if answer.fmt and answer.fmt.lower() == "native":  # chDB writes revision 0; the client may read a newer one
            try:
                body = for_revision(body, revision)
            except NativeUnsupported as exc:
                raise EngineError.of(48, f"Cannot write Native for client_protocol_version {revision}: {exc}; "
                                         "ask for another format (or client_protocol_version=0)") from None
        headers = {"X-ClickHouse-Summary": json.dumps(answer.summary),
                   "Content-Type": content_type(answer.fmt)}
        if answer.fmt:
            headers["X-ClickHouse-Format"] = answer.fmt
        self._send(200, body, headers, query_id, srv.engine.timezone)

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
            if value and HEADER_VALUE.match(value):  # nothing a client sent can split a header
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


class ListenerServer(socketserver.TCPServer):
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

    def __init__(self, server: Serving, index: int, host: str, port: int = 0) -> None:
        self.engine_server, self.index, self.host, self.port = server, index, host, port
        self.server: ListenerServer | None = None
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
                self.server = ListenerServer(self)
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
