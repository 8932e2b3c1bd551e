"""The record formats are declared once, in ``pipeline/ingest/records.py``; every other form is held
to that declaration here, so that a field added or changed in one place and not the others fails a test
instead of failing in production:

- the JSON Schemas (``schemas/*.schema.json``): same fields, same required set (what each accepts is
  compared value by value in ``test_schema_agreement.py``);
- the Arrow columns the buffer builds (``ingest/buffer.py``: ``LOG_SCHEMA``/``SAMPLE_SCHEMA``): every
  record field, stored under its column name, with an Arrow type that holds the field's whole range;
- the ClickHouse tables (``schemas/clickhouse/*.sql``, as ``migrations.render`` gives them): the same
  columns, in the same order, with the same types, plus only columns that have a DEFAULT;
- the native decoder's C tables: ``test_fastlog.py::test_c_field_tables_agree_with_records``.
"""

from __future__ import annotations

import json
import re

import msgspec
import pyarrow as pa
import pytest

from pipeline.config.policy import SCHEMAS_DIR
from pipeline.ingest.buffer import LOG_SCHEMA, SAMPLE_SCHEMA
from pipeline.ingest.records import MonitoringSample, RequestLog
from pipeline.schema import migrations

# Where a stored column differs from the record field it comes from: the exit IP is never stored,
# only its minimised form.
STORED_AS = {"client_ip": "client_net"}
# Columns the pipeline adds to every raw row: where it came from (exactly-once recovery).
ORIGIN = ["src_topic_id", "src_partition", "src_offset", "src_index"]
CASES = [(RequestLog, LOG_SCHEMA, "request_logs", "request_log.schema.json"),
         (MonitoringSample, SAMPLE_SCHEMA, "monitoring_samples", "monitoring_sample.schema.json")]
# Arrow type -> the ClickHouse type the insert lands in.
CLICKHOUSE_TYPE = {pa.uint8(): "UInt8", pa.uint16(): "UInt16", pa.uint32(): "UInt32", pa.uint64(): "UInt64",
                   pa.int32(): "Int32", pa.float64(): "Float64", pa.string(): "String",
                   pa.timestamp("ms", tz="UTC"): "DateTime64(3, 'UTC')",
                   pa.dictionary(pa.int32(), pa.string()): "String"}  # into LowCardinality(String), checked apart


def _fields(struct: type[msgspec.Struct]) -> list[msgspec.inspect.Field]:
    return list(msgspec.inspect.type_info(struct).fields)  # type: ignore[attr-defined]


def _holds(arrow: pa.DataType, tp: msgspec.inspect.Type) -> bool:
    """Whether the Arrow column type holds every value the record field accepts."""
    if isinstance(tp, msgspec.inspect.UnionType):
        return all(_holds(arrow, t) for t in tp.types if not isinstance(t, msgspec.inspect.NoneType))
    if isinstance(tp, msgspec.inspect.StrType):
        return arrow == pa.string() or (pa.types.is_dictionary(arrow) and arrow.value_type == pa.string())
    if isinstance(tp, msgspec.inspect.FloatType):
        return pa.types.is_floating(arrow)
    if isinstance(tp, msgspec.inspect.IntType):
        if pa.types.is_timestamp(arrow):  # epoch milliseconds
            return arrow.unit == "ms" and tp.ge is not None and tp.ge >= 0
        if not pa.types.is_integer(arrow) or tp.ge is None or tp.le is None:
            return False
        info = pa.types.is_signed_integer(arrow), arrow.bit_width
        lo, hi = (-(2 ** (info[1] - 1)), 2 ** (info[1] - 1) - 1) if info[0] else (0, 2 ** info[1] - 1)
        return lo <= tp.ge and tp.le <= hi
    return False


def _create(table: str) -> str:
    """A table's rendered CREATE statement."""
    return next(s for m in migrations.render("imtel") for s in m.statements
                if re.match(rf"CREATE TABLE IF NOT EXISTS imtel\.{table}\s", s))


_COLUMN = r"([a-z_]+)\s+((?:LowCardinality\()?[A-Za-z0-9]+(?:\([^)]*\))?\)?)(.*)"


def _column(match: re.Match[str]) -> tuple[str, str, bool]:
    kind = re.sub(r"^LowCardinality\((.*)\)$", r"\1", match.group(2))
    return match.group(1), kind, " DEFAULT " in f" {match.group(3)} "


def _columns(table: str) -> list[tuple[str, str, bool]]:
    """(name, type, has a DEFAULT) of a table's columns after every migration: its rendered CREATE
    statement, then the columns later migrations add or drop (008, 010)."""
    statement = _create(table)
    body = statement[statement.index("(") + 1:statement.rindex("ENGINE")]
    out = []
    for line in body.splitlines():
        match = re.match(rf"\s*{_COLUMN}", line)
        if match and match.group(1) not in ("INDEX", "CONSTRAINT") and not line.strip().startswith("INDEX"):
            out.append(_column(match))
    for s in (s for m in migrations.render("imtel") for s in m.statements):
        if not re.match(rf"ALTER TABLE imtel\.{table}\s", s):
            continue
        if added := re.search(rf"ADD COLUMN IF NOT EXISTS {_COLUMN}", s):
            out.append(_column(added))
        if dropped := re.search(r"DROP COLUMN IF EXISTS ([a-z_]+)", s):
            out = [c for c in out if c[0] != dropped.group(1)]
    return out


def _low_cardinality(table: str) -> set[str]:
    return set(re.findall(r"^\s*([a-z_]+)\s+LowCardinality\(", _create(table), re.M))


@pytest.mark.parametrize(("struct", "arrow", "table", "schema"), CASES, ids=[c[2] for c in CASES])
def test_the_json_schema_declares_the_same_fields(struct: type[msgspec.Struct], arrow: pa.Schema, table: str,
                                                  schema: str) -> None:
    doc = json.loads((SCHEMAS_DIR / schema).read_text())
    fields = _fields(struct)
    assert set(doc["properties"]) == {f.name for f in fields}
    assert set(doc["required"]) == {f.name for f in fields if f.required}


@pytest.mark.parametrize(("struct", "arrow", "table", "schema"), CASES, ids=[c[2] for c in CASES])
def test_the_buffer_columns_hold_every_record_field(struct: type[msgspec.Struct], arrow: pa.Schema, table: str,
                                                    schema: str) -> None:
    body = [STORED_AS.get(f.name, f.name) for f in _fields(struct)]
    assert sorted(arrow.names) == sorted(body + ORIGIN), "LOG_SCHEMA/SAMPLE_SCHEMA drifted from records.py"
    for f in _fields(struct):
        if f.name in STORED_AS:
            continue
        column = arrow.field(f.name).type
        assert _holds(column, f.type), f"{table}.{f.name}: Arrow {column} does not hold {f.type}"


@pytest.mark.parametrize(("struct", "arrow", "table", "schema"), CASES, ids=[c[2] for c in CASES])
def test_the_clickhouse_table_takes_exactly_the_buffer_columns(struct: type[msgspec.Struct], arrow: pa.Schema,
                                                               table: str, schema: str) -> None:
    columns = _columns(table)
    inserted = [(name, kind) for name, kind, default in columns if name in arrow.names]
    assert [name for name, _ in inserted] == arrow.names, "column order differs between the DDL and the buffer"
    for name, kind in inserted:
        assert CLICKHOUSE_TYPE[arrow.field(name).type] == kind, f"{table}.{name}: DDL {kind}, Arrow " \
                                                               f"{arrow.field(name).type}"
        if pa.types.is_dictionary(arrow.field(name).type):  # sent as a dictionary: a LowCardinality column
            assert name in _low_cardinality(table), f"{table}.{name} is an Arrow dictionary, not LowCardinality"
    extra = [name for name, _, default in columns if name not in arrow.names]
    assert all(default for name, _, default in columns if name in extra), f"{table}: {extra} need a DEFAULT"


def test_the_check_notices_drift() -> None:
    """The comparisons above are not vacuous: a field added to the struct, a narrower Arrow type and a
    column missing from the DDL are each caught."""
    grown = msgspec.defstruct("Grown", [(f.name, f.type) if f.required else (f.name, f.type, f.default)
                                        for f in msgspec.structs.fields(RequestLog)] + [("carrier", str, "")])
    body = [STORED_AS.get(f.name, f.name) for f in _fields(grown)]
    assert sorted(LOG_SCHEMA.names) != sorted(body + ORIGIN)
    latency = next(f for f in _fields(RequestLog) if f.name == "latency_ms")
    assert _holds(pa.uint32(), latency.type) and not _holds(pa.uint16(), latency.type)
    ddl = _columns("request_logs")
    assert [c[0] for c in ddl if c[0] in LOG_SCHEMA.names] == LOG_SCHEMA.names
    assert [c[0] for c in ddl if c[0] in LOG_SCHEMA.names and c[0] != "region"] != LOG_SCHEMA.names
    assert next(c for c in ddl if c[0] == "ingest_time")[2], "ingest_time is filled by its DEFAULT"
