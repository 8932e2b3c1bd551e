"""The ClickHouse HTTP shim's pure parts: how a request becomes a statement, bodies, fault matching,
and what it refuses (SQL that reaches outside the store, writes over GET, bombs, foreign hosts).

The shim is what the fault tests trust to behave like a ClickHouse server's HTTP interface, so the
request shapes clickhouse-connect really sends are pinned here (its own planner builds them); the
engine side is exercised by the integration tests.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import lz4.frame
import pytest
from clickhouse_connect.driver._backend.httpcommon import embed_insert_query

from pipeline.dev.engine import SqlGuard, host_of, is_loopback, load_or_create_token
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


# -- what the engine refuses (pure parts; the process is attacked in tests/integration/test_engine_attacks.py)
GUARD = SqlGuard(frozenset({"file", "url", "numbers", "values", "python", "s3"}), frozenset({"MergeTree", "File"}))


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')", "SELECT file('/etc/passwd')", "SELECT * FROM FILE ('x')",
    "SELECT * FROM `file`('/etc/passwd')", 'SELECT * FROM "url"(\'http://x\')', "SELECT * FROM `\\x66ile`('/x')",
    "SELECT * FROM file/* c */('/x')", "INSERT INTO FUNCTION s3('https://b/k') SELECT 1", "SELECT * FROM python('x')",
    "SELECT * FROM remote('h', db.t)", "SELECT * FROM executable('x.sh', TSV, 'a String')",
    "INSERT INTO t SELECT * FROM input('a String')", "SELECT * FROM mysql('h', 'd', 't', 'u', 'p')",
    "INSERT INTO t FROM INFILE '/etc/passwd' FORMAT TSV", "SELECT 1 INTO OUTFILE '/tmp/x'",
    "CREATE TABLE t (a String) ENGINE = File(TSV)", "CREATE TABLE t (a String) ENGINE = FileLog('/var/log', 'TSV')",
    "CREATE TABLE t (a String) ENGINE URL('http://x', TSV)", "CREATE DATABASE d ENGINE = Filesystem('/')",
    "CREATE DICTIONARY d (a UInt8) PRIMARY KEY a SOURCE(FILE(path '/x' format 'TSV'))",
    "ALTER TABLE t MODIFY SETTING disk = disk(type = local, path = '/etc/')", "SELECT 1; DROP TABLE t",
    "SYSTEM SHUTDOWN", "BACKUP TABLE t TO File('/x')", "ATTACH TABLE t FROM '/x' (a UInt8) ENGINE = Log",
    "GRANT ALL ON *.* TO default"])
def test_statements_that_reach_outside_the_store_are_refused(sql: str) -> None:
    with pytest.raises(EngineError) as err:
        GUARD.check(sql, read_only=False)
    assert err.value.code == 497, err.value.text


@pytest.mark.parametrize("sql", [
    "SELECT 'file(' AS x, `infile` FROM t -- file('x')", "SELECT * FROM numbers(3)", "SELECT 1;",
    "INSERT INTO imtel.t (`a`, `file`) FORMAT Native", "INSERT INTO t VALUES (1, 'a')",
    "CREATE TABLE IF NOT EXISTS imtel.t (engine String, d Date) ENGINE = ReplacingMergeTree(v) ORDER BY d",
    "CREATE DATABASE IF NOT EXISTS imtel", "ALTER TABLE imtel.t DELETE WHERE a = {a:UInt32}",
    "SYSTEM STOP TTL MERGES imtel.applications", "SELECT name, engine FROM system.tables WHERE engine = 'File'",
    "OPTIMIZE TABLE imtel.t FINAL", "/* file(x) */ SELECT 1"])
def test_what_the_pipeline_sends_is_allowed(sql: str) -> None:
    GUARD.check(sql, read_only=False)


def test_get_may_only_read() -> None:
    GUARD.check("SELECT count() FROM imtel.request_logs", read_only=True)
    GUARD.check("(SELECT 1) UNION ALL (SELECT 2)", read_only=True)
    for sql in ["DROP TABLE imtel.request_logs", "INSERT INTO t SELECT 1", "ALTER TABLE t DELETE WHERE 1",
                "  -- c\n TRUNCATE TABLE t"]:
        with pytest.raises(EngineError) as err:
            GUARD.check(sql, read_only=True)
        assert err.value.code == 164


def test_decompression_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(EngineError) as err:
        decode_body(bomb, "gzip", limit=1_000_000)
    assert err.value.code == 307
    assert decode_body(bomb, "gzip", limit=5_000_000) == b"\0" * 5_000_000
    with pytest.raises(EngineError) as err:
        decode_body(lz4.frame.compress(b"x" * 100_000), "lz4", limit=99_999)
    assert err.value.code == 307
    with pytest.raises(EngineError) as err:
        decode_body(gzip.compress(b"abc")[:-4], "gzip")
    assert err.value.code == 271


def test_a_generated_token_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "engine.token"
    token = load_or_create_token(path)
    assert len(token) >= 40 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == token
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_or_create_token(path)


@pytest.mark.parametrize(("header", "loopback"), [("127.0.0.1:8123", True), ("localhost", True), ("[::1]:80", True),
                                                  ("LOCALHOST:1", True), ("127.9.9.9", True),
                                                  ("evil.example:8123", False), ("localhost.evil.example", False),
                                                  ("10.0.0.1", False), ("", False)])
def test_only_loopback_hosts_by_default(header: str, loopback: bool) -> None:
    assert is_loopback(host_of(header)) is loopback
