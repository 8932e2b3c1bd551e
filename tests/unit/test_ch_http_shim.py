"""The ClickHouse HTTP shim's pure parts: how a request becomes a statement, bodies, fault matching.

The shim is what the fault tests trust to behave like a ClickHouse server's HTTP interface, so the
request shapes clickhouse-connect really sends are pinned here (its own planner builds them); the
engine side is exercised by the integration tests.
"""

from __future__ import annotations

import gzip
import re

import lz4.frame
import pytest
from clickhouse_connect.driver._backend.httpcommon import embed_insert_query

from tests.support.ch_http_shim import EngineError, Fault, FaultBook, decode_body, parse_statement

ARROW = b"ARROW1\x00\x00\n\xff binary \x00 with newlines\n"


def test_insert_with_data_in_the_body_after_the_statement() -> None:
    body, query_param = embed_insert_query("imtel.t", ["a", "b"], "Native", None, b"\x02\x01" + ARROW)
    assert query_param is None
    stmt = parse_statement(None, body)
    assert (stmt.target, stmt.fmt, stmt.data) == ("imtel.t (`a`, `b`)", "Native", b"\x02\x01" + ARROW)
    assert stmt.head == "INSERT INTO imtel.t (`a`, `b`) FORMAT Native"


def test_insert_with_the_statement_in_the_query_parameter() -> None:
    body, query_param = embed_insert_query("imtel.t", ["a"], "Arrow", "lz4", ARROW)
    assert query_param is not None
    stmt = parse_statement(query_param, body)
    assert (stmt.target, stmt.fmt, stmt.data) == ("imtel.t (`a`)", "Arrow", ARROW)


def test_queries_and_commands_are_text() -> None:
    assert parse_statement(None, b"SELECT 1\n FORMAT Native").data is None
    assert parse_statement("SELECT {x:UInt8}", b"").head == "SELECT {x:UInt8}"
    assert parse_statement(None, b"INSERT INTO t SELECT * FROM s").data is None  # no FORMAT: not a data insert
    with pytest.raises(EngineError) as err:
        parse_statement(None, b"SELECT '\xff'")
    assert err.value.code == 62 and err.value.text.startswith("Code: 62. DB::Exception:")


def test_request_bodies_are_decoded_as_sent() -> None:
    data = b"x" * 10_000
    assert decode_body(lz4.frame.compress(data[:5000]) + lz4.frame.compress(data[5000:]), "lz4") == data
    assert decode_body(gzip.compress(data), "gzip") == data
    assert decode_body(data, None) == data
    with pytest.raises(EngineError):
        decode_body(data, "snappy")


def test_faults_match_statements_and_respect_limits() -> None:
    book = FaultBook()
    fault = book.add(Fault("stall", listener=1, match=r"^\s*INSERT INTO imtel\.request_logs", limit=2))
    assert book.take(0, "stall", "INSERT INTO imtel.request_logs (`a`) FORMAT Arrow") is None  # other listener
    assert book.take(1, "stall", "SELECT 1") is None
    assert book.take(1, "error", "INSERT INTO imtel.request_logs") is None  # other mode
    assert book.take(1, "stall", "INSERT INTO imtel.request_logs (`a`) FORMAT Arrow") is fault
    assert book.take(1, "stall", "insert into imtel.request_logs") is fault
    assert book.take(1, "stall", "INSERT INTO imtel.request_logs") is None and fault.hits == 2
    expiring = book.add(Fault("error", status=500, code=252, duration=0.0))
    assert not expiring.active(expiring.created)


@pytest.mark.parametrize("spec", [{"mode": "explode"}, {"mode": "reject", "column": "a; DROP", "marker": "x"},
                                  {"mode": "error", "status": 200, "code": 252}, {"mode": "slow", "match": "("}])
def test_bad_fault_specs_are_refused(spec: dict[str, object]) -> None:
    with pytest.raises((ValueError, re.error)):  # the control endpoint answers both with HTTP 400
        FaultBook().add(Fault(**spec))  # type: ignore[arg-type]
