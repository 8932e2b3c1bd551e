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
_DATA_INSERT = re.compile(rb"\A\s*(INSERT\s+INTO\s+(?P<target>[^\n]+?)\s+FORMAT\s+(?P<fmt>\w+))[ \t]*(?:\r?\n|\Z)",
                          re.IGNORECASE)
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


def content_type(fmt: str | None) -> str:
    if fmt and fmt.startswith("JSON"):
        return "application/json; charset=UTF-8"
    if fmt is None or fmt.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    return "application/octet-stream"
