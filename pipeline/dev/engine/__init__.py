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
encoded; the statement's target may span lines), Native answers in the layout of the client's
``client_protocol_version`` (>= 54454, as clickhouse-go asks: ``native``), errors as ClickHouse
sends them (HTTP 5xx/4xx, ``X-ClickHouse-Exception-Code``, body ``Code: N. DB::Exception: ...``) and
the ``X-ClickHouse-Summary/-Format/-Query-Id/-Timezone`` headers. ClickHouse's own block compression
(``compress=1``/``decompress=1``) is refused with one error line before the body is read.
Every statement runs on the real engine, so what passes through here is real SQL on real data.

For tests only, and only when started with ``--fault-admin-port``: a loopback admin listener that
injects faults at this transport boundary (``engine_faults``) and also answers SQL without faults
(for assertions); ``--listeners K`` gives K data ports that can be faulted one by one. Without that
option no fault can be injected and ``/__faults`` does not exist.

``--ready-file F`` writes ``{"data": [port, ...], "admin": port | null, "pid": ...}`` to F once it
serves (for ``--port 0``, a free port). SIGTERM or SIGINT stops it cleanly (store closed).

Where each part lives (this package re-exports what the CLI, the tests and the bench use):
``server`` (the process, its listeners, ``serve``), ``handler`` (one connection's HTTP exchanges),
``access`` (password, token file, Host/Origin, TLS), ``limits`` (caps, deadlines, connection pool),
``guard`` (the SQL guard), ``store`` (statements on chDB), ``protocol`` (ClickHouse codes, URL
parameters, statement parsing), ``native`` (Native answers for a client's protocol revision); the
fault book is ``pipeline.dev.engine_faults``.
"""

from __future__ import annotations

from pipeline.dev.engine.access import TOKEN_FILE, Access, host_of, is_loopback, load_or_create_token, read_password
from pipeline.dev.engine.guard import SqlGuard
from pipeline.dev.engine.limits import Limits, decode_body
from pipeline.dev.engine.protocol import EngineError, Statement, parse_statement
from pipeline.dev.engine.server import EngineServer, serve
from pipeline.dev.engine.store import Answer, Engine, StoreError

__all__ = ["TOKEN_FILE", "Access", "Answer", "Engine", "EngineError", "EngineServer", "Limits", "SqlGuard", "Statement",
           "StoreError", "decode_body", "host_of", "is_loopback", "load_or_create_token", "parse_statement",
           "read_password", "serve"]
