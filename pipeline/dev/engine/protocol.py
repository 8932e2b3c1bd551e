"""The ClickHouse HTTP vocabulary ``imtel engine`` speaks: error codes and texts, URL parameters, and
how one request's SQL and insert data are told apart.

Kept apart from the server so that what clients see (codes, statuses, header values) is defined in
one place: the store, the SQL guard, the limits and the HTTP handler all raise ``EngineError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
# query_id is echoed in X-ClickHouse-Query-Id: only characters that cannot end or extend a header line.
QUERY_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
HEADER_VALUE = re.compile(r"\A[\x20-\x7e]*\Z")  # every header value sent: printable ASCII, no CR/LF
# ``INSERT INTO <target> FORMAT <name>``, then the data from the next line on. The target may span
# lines (clickhouse-go sends its column list one per line). Found in two steps, each linear in the
# text (a single pattern with a lazy target backtracks quadratically over runs of whitespace).
_INSERT_INTO = re.compile(rb"\A\s*(INSERT\s+INTO)\s", re.IGNORECASE)
_FORMAT_CLAUSE = re.compile(rb"\sFORMAT\s+(\w+)[ \t]*(?:\r?\n|\Z)", re.IGNORECASE)
SQL_HEAD_BYTES = 65536  # where a statement sent in the body must name its FORMAT
_CODE = re.compile(r"Code:\s*(\d+)")
IDENTIFIER = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


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
    """ClickHouse semantics: the query is the ``query`` parameter, a newline and the body; an
    ``INSERT INTO <target> FORMAT X`` statement (its target on one line or several) is followed by
    its data from the next line on. When the ``query`` parameter is given, the statement must end
    within it (the body is then all data, or the parameter's own last lines and the body)."""
    if query_param:
        sql = query_param.encode()
        text = sql + (b"\n" + body if body else b"")
        # The statement ends in the parameter (the joining newline ends its last line); or, as
        # ClickHouse also reads it, its FORMAT clause opens the body (target on one line).
        found = _data_insert(text, len(sql) + 1, multiline=True) or _data_insert(text, SQL_HEAD_BYTES, multiline=False)
    else:
        text = body
        found = _data_insert(text, SQL_HEAD_BYTES, multiline=True)
    try:
        if found:
            head, target, fmt, data_start = found
            return Statement(head.decode(), text[data_start:], target.decode(), fmt.decode())
        return Statement(text.decode())
    except UnicodeDecodeError:
        raise EngineError.of(62, "Syntax error: the query is not UTF-8 text") from None


def _data_insert(text: bytes, window: int, *, multiline: bool) -> tuple[bytes, bytes, bytes, int] | None:
    """``(head, target, format, data start)`` of an ``INSERT INTO <target> FORMAT <name>`` statement
    that ends within ``text[:window]``; None if ``text`` does not start with one."""
    window = min(window, len(text))
    insert = _INSERT_INTO.match(text, 0, window)
    if insert is None:
        return None
    pos = insert.end() - 1  # the whitespace after INTO may be the one before FORMAT only if a target follows
    while (clause := _FORMAT_CLAUSE.search(text, pos, window)) is not None:
        if clause.end() == window < len(text) and text[window - 1:window] != b"\n":
            return None  # the format's name is cut by the window, not ended
        target = text[insert.end():clause.start()].strip()
        if target and not (b"\n" in target and not multiline):
            return text[insert.start(1):clause.end(1)], target, clause.group(1), clause.end()
        if target:  # a single-line target cannot grow back onto one line
            return None
        pos = clause.start() + 1
    return None


def client_revision(params: dict[str, str]) -> int:
    """The ``client_protocol_version`` a client asks its Native answers in (0: not given)."""
    value = params.get("client_protocol_version", "").strip()
    if not value:
        return 0
    if not value.isdigit() or len(value) > 10:
        raise EngineError.of(36, "client_protocol_version must be a whole number (a ClickHouse protocol revision)")
    return int(value)


def refuse_native_compression(params: dict[str, str]) -> None:
    """``compress=1`` (compressed answers) and ``decompress=1`` (a compressed body) ask for ClickHouse's
    own checksummed LZ4/ZSTD block framing, which this server does not speak: refused before the
    body is read, instead of answering what the client cannot decode."""
    asked = [name for name in ("compress", "decompress")
             if params.get(name, "0").strip().lower() not in ("", "0", "false")]
    if asked:
        raise EngineError.of(48, f"{' and '.join(f'{name}=1' for name in asked)} (ClickHouse's native block "
                                 "compression) is not supported by imtel engine: send uncompressed, or compress "
                                 "with HTTP Content-Encoding (gzip, zstd, lz4, deflate)")


def content_type(fmt: str | None) -> str:
    if fmt and fmt.startswith("JSON"):
        return "application/json; charset=UTF-8"
    if fmt is None or fmt.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    return "application/octet-stream"
