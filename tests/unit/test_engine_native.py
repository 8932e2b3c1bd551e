"""``imtel engine``'s pure protocol parts for clickhouse-go (the OpenTelemetry Collector's exporter):
Native answers in a client revision's layout, multi-line ``INSERT`` statements, and the refusal of
ClickHouse's own block compression.

The re-framing oracle is chDB itself: a column's revision-0 data in a multi-column answer is the same
bytes as in a query of that column alone, so the expected revision-54454 answer is assembled from
one-column answers, independently of the walk by type that ``reframe`` does.
"""

from __future__ import annotations

import contextlib
import time

import chdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.dev.engine.native import BLOCK_INFO, NativeUnsupported, for_revision, reframe, skipper, type_arguments
from pipeline.dev.engine.protocol import EngineError, client_revision, parse_statement, refuse_native_compression

# (alias, expression of ``number``) covering every kind of layout the walk knows.
COLUMNS = [
    ("s", "toString(number * 7919)"),
    ("u8", "toUInt8(number % 256)"),
    ("i64", "toInt64(number) - 5"),
    ("f32", "toFloat32(number) / 3"),
    ("b", "number % 2 = 0"),
    ("d", "toDate('2024-01-01') + number"),
    ("dt", "toDateTime('2024-01-01 00:00:00', 'UTC') + number"),
    ("dt64", "toDateTime64('2024-01-01 00:00:00', 9, 'UTC') + number"),
    ("uuid", "toUUID(concat('00000000-0000-0000-0000-', leftPad(toString(number), 12, '0')))"),
    ("ip6", "toIPv6('::1')"),
    ("fs", "toFixedString(leftPad(toString(number % 1000), 3, '0'), 3)"),
    ("dec", "toDecimal128(number, 4)"),
    ("dec9", "CAST(number % 1000 AS Decimal(9, 2))"),
    ("e", "CAST(if(number % 2 = 0, 'a,b', 'c') AS Enum8('a,b' = 1, 'c' = 2))"),
    ("ns", "if(number % 3 = 0, NULL, repeat('x', number % 200))"),  # lengths past one varint byte
    ("arr", "range(number % 4)"),
    ("arrs", "arrayMap(x -> toString(x), range(number % 3))"),
    ("arrn", "[if(number % 2 = 0, NULL, number), 1]"),
    ("nested", "[range(number % 3), []]"),
    ("m", "map('k', [toString(number)], 'z', [])"),
    ("t", "CAST((number, toString(number), [1.5]) AS Tuple(a UInt64, `b c` String, `d,e` Array(Float64)))"),
    ("tu", "(number, [toString(number)], toNullable('n'))"),
    ("lc", "toLowCardinality(toString(number % 5))"),
    ("lcn", "toLowCardinality(if(number % 4 = 0, NULL, toString(number % 3)))"),
    ("arrlc", "[toLowCardinality(toString(number % 2))]"),
    # LowCardinality nested: its key version (a serialization prefix) comes before the outer data.
    ("mlc", "CAST(map(toString(number % 3), toString(number), 'z', '') AS Map(LowCardinality(String), String))"),
    ("tlc", "(toString(number), toLowCardinality(toString(number % 2)), [toLowCardinality('q')])"),
    ("alc2", "[toLowCardinality(toString(number)), 'x']"),
    ("pt", "CAST((toFloat64(number), 2.0) AS Point)"),
    ("poly", "CAST([[(1.0, 2.0), (toFloat64(number), 0.0)]] AS Polygon)"),
    ("iv", "toIntervalSecond(number)"),
    ("nothing", "NULL"),
    ("empty", "()"),
    ("sa", "CAST(number AS SimpleAggregateFunction(sum, UInt64))"),
]


def native(sql: str) -> bytes:
    return bytes(chdb.query(sql, "Native").bytes() or b"")


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def expected_reframe(columns: list[tuple[str, str]], rows: int) -> bytes:
    """What a server writes for revision >= 54454, assembled from one-column revision-0 answers (one
    block each: ``rows`` stays under the block size)."""
    out = BLOCK_INFO + varint(len(columns)) + varint(rows)
    for alias, expr in columns:
        single = native(f"SELECT {expr} AS {alias} FROM numbers({rows})")
        header = varint(1) + varint(rows)
        assert single.startswith(header)
        pos = len(header)
        name_len = single[pos]
        pos += 1 + name_len
        type_len = single[pos]
        pos += 1 + type_len
        out += single[len(header):pos] + b"\x00" + single[pos:]
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=6, unique=True), st.integers(1, 300))
def test_reframe_inserts_block_info_and_the_serialization_byte(columns: list[tuple[str, str]], rows: int) -> None:
    answer = native(f"SELECT {', '.join(f'{e} AS {a}' for a, e in columns)} FROM numbers({rows})")
    assert reframe(answer) == expected_reframe(columns, rows)


@pytest.mark.parametrize("rows", [1, 257])
def test_all_columns_at_once(rows: int) -> None:
    answer = native(f"SELECT {', '.join(f'{e} AS {a}' for a, e in COLUMNS)} FROM numbers({rows})")
    assert reframe(answer) == expected_reframe(COLUMNS, rows)


def test_every_block_of_a_long_answer_is_reframed() -> None:
    sql = "SELECT number AS n, toString(number) AS s, toLowCardinality(toString(number % 7)) AS l FROM numbers(10000)"
    answer = native(sql + " SETTINGS max_block_size = 3000")
    out = reframe(answer)
    assert out.count(BLOCK_INFO + b"\x03") == 4  # 3000 * 3 + 1000 rows: four blocks
    assert len(out) == len(answer) + 4 * (len(BLOCK_INFO) + 3)
    one_block = reframe(native(sql))
    assert one_block.count(BLOCK_INFO) == 1 and one_block.startswith(BLOCK_INFO + b"\x03\x90\x4e")


def test_the_hello_of_clickhouse_go() -> None:
    out = reframe(native("SELECT 'imtel' AS name, 26 AS major"))
    assert out == (BLOCK_INFO + b"\x02\x01" + b"\x04name\x06String\x00\x05imtel"
                   + b"\x05major\x05UInt8\x00\x1a")


def test_lower_revisions_and_empty_answers_are_unchanged() -> None:
    answer = native("SELECT 1 AS x")
    assert for_revision(answer, 0) is answer
    assert for_revision(answer, 54405) is answer  # clickhouse-connect's probe sees no BlockInfo: revision 0
    assert for_revision(answer, 54454) == BLOCK_INFO + answer[:2] + answer[2:10] + b"\x00" + answer[10:]
    assert for_revision(b"", 54483) == b""


def test_types_not_walked_name_the_column() -> None:
    with pytest.raises(NativeUnsupported, match="column 'v': its type Variant"):
        reframe(native("SELECT 1 AS x, 1::Variant(UInt8, String) AS v"))
    for type_name in ("Dynamic", "JSON", "AggregateFunction(sum, UInt8)", "Object('json')"):
        with pytest.raises(NativeUnsupported):
            skipper(type_name)


@given(st.binary(max_size=64))
def test_garbage_is_a_value_error_not_a_crash(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        reframe(data)


def test_truncated_answers_are_refused() -> None:
    answer = native("SELECT toString(number) AS s, [number] AS a FROM numbers(50)")
    for cut in (3, 12, len(answer) // 2, len(answer) - 1):
        with pytest.raises(ValueError):
            reframe(answer[:cut])


def test_type_arguments_respect_quotes_and_parentheses() -> None:
    assert type_arguments("a Tuple(x UInt8, y String), `b,c` Map(String, Array(UInt8))") == [
        "a Tuple(x UInt8, y String)", "`b,c` Map(String, Array(UInt8))"]
    assert type_arguments("'a,b' = 1, 'c\\'(' = 2") == ["'a,b' = 1", "'c\\'(' = 2"]
    assert type_arguments("") == []


# -- multi-line INSERT statements (clickhouse-go's exporter) ------------------------------------------------
OTEL_INSERT = ('INSERT INTO "otel"."otel_logs" (\n    Timestamp,\n    TraceId,\n    SpanId,\n    Body\n'
               ') FORMAT Native')


def test_the_exporters_insert_takes_the_whole_body_as_data() -> None:
    data = b"\x04\x02\x09Timestamp\x0cDateTime64(9)" + b"\nFORMAT TSV\n\xff\x00"
    stmt = parse_statement(OTEL_INSERT, data)
    assert stmt.data == data and stmt.fmt == "Native" and stmt.head == OTEL_INSERT
    assert stmt.target == '"otel"."otel_logs" (\n    Timestamp,\n    TraceId,\n    SpanId,\n    Body\n)'


name = st.text(st.characters(codec="ascii", categories=["L", "Nd"]), min_size=1, max_size=12)


@given(st.lists(name, min_size=1, max_size=8), st.sampled_from(["\n", "\r\n", "\n\t", " \n  "]),
       st.sampled_from(["Native", "Arrow", "TSV"]), st.binary(max_size=200), st.booleans())
def test_insert_targets_may_span_lines(columns: list[str], sep: str, fmt: str, data: bytes, in_body: bool) -> None:
    target = "db.t (" + sep + ("," + sep).join(columns) + sep + ")"
    sql = f"INSERT INTO {target}{sep}FORMAT {fmt}"
    stmt = parse_statement(None, sql.encode() + b"\n" + data) if in_body else parse_statement(sql, data)
    assert (stmt.target, stmt.fmt, stmt.data) == (target, fmt, data)
    assert stmt.head == sql


def test_statements_that_are_not_data_inserts_stay_sql() -> None:
    assert parse_statement("INSERT INTO t\nSELECT 1", b"").data is None
    assert parse_statement("INSERT INTO t VALUES", b"(1)").head == "INSERT INTO t VALUES\n(1)"
    # The FORMAT clause may open the body (ClickHouse joins parameter and body); the target then is one line.
    stmt = parse_statement("INSERT INTO t", b"FORMAT Native\n\x00\x01")
    assert (stmt.target, stmt.fmt, stmt.data) == ("t", "Native", b"\x00\x01")
    # Data of a statement that is not a FORMAT insert is never searched for one.
    with pytest.raises(EngineError) as err:
        parse_statement("INSERT INTO t (a,\n b) VALUES", b"\xff\nFORMAT TSV\n")
    assert err.value.code == 62


@pytest.mark.parametrize("filler", [b" ", b"\n", b"\t\n"])
def test_statement_parsing_stays_linear(filler: bytes) -> None:
    start = time.monotonic()
    for sql in (b"INSERT INTO t" + filler * 40000 + b"x", b"INSERT INTO t " + b"FORMAT" + filler * 40000):
        parse_statement(None, sql)
        with pytest.raises(EngineError):
            parse_statement(None, sql + b"\xff")
        parse_statement(sql.decode(), b"")
    assert time.monotonic() - start < 2.0


# -- URL parameters ---------------------------------------------------------------------------------------
def test_client_revision() -> None:
    assert client_revision({}) == 0
    assert client_revision({"client_protocol_version": "54483"}) == 54483
    for bad in ("x", "-1", "1e9", "99999999999"):
        with pytest.raises(EngineError) as err:
            client_revision({"client_protocol_version": bad})
        assert err.value.code == 36


def test_native_block_compression_is_refused_with_one_line() -> None:
    refuse_native_compression({"compress": "0", "decompress": "false", "query": "SELECT 1"})
    for params, names in (({"compress": "1"}, "compress=1"), ({"decompress": "1"}, "decompress=1"),
                          ({"compress": "1", "decompress": "true"}, "compress=1 and decompress=1")):
        with pytest.raises(EngineError) as err:
            refuse_native_compression(params)
        assert err.value.code == 48 and "\n" not in err.value.text
        assert err.value.text.startswith(f"Code: 48. DB::Exception: {names} ")
        assert err.value.text.endswith("(NOT_IMPLEMENTED)")
