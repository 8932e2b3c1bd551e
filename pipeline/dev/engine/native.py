"""ClickHouse's Native format as a server writes it for the client's protocol revision.

chDB writes Native as a server does for a client of revision 0 (``clickhouse-local``'s layout):
each block is ``columns rows`` (varints), then per column its name, its type name and its data. A
ClickHouse server answering an HTTP request with ``client_protocol_version=R`` writes what a native
client of revision R reads (``NativeWriter``): for R > 0 a BlockInfo before each block, and for
R >= 54454 (``DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION``) a "has custom serialization" byte
after each column's type. clickhouse-go (the OpenTelemetry Collector's ClickHouse exporter) sends
``client_protocol_version=54483`` on every request and decodes answers that way; chDB has no setting
that makes it write that layout (``client_protocol_version`` is not a setting to it), so
:func:`for_revision` rewrites chDB's output.

Where the flag byte goes depends on where each column's data ends, so the data is walked by type
(nothing is decoded or copied but the framing). The flag is always 0: chDB's revision-0 output
never uses sparse or other custom serializations. Types whose layout is not walked here (Variant,
Dynamic, JSON, Object, AggregateFunction) raise :class:`NativeUnsupported` naming the column.

Revisions 1..54453 are answered in revision-0 layout, as before: clickhouse-connect (the
pipeline's client) asks for 54405 with a probe and, seeing no BlockInfo, reads revision-0 answers;
rewriting for it would only add a walk of every answer. Known difference from a server: chDB drops
the time zone of ``DateTime('tz')`` columns (revision 0 predates it), which cannot be restored here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

CUSTOM_SERIALIZATION_REVISION = 54454  # DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION
# BlockInfo as a server writes it: field 1 is_overflows = false, field 2 bucket_num = -1, then 0.
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"
NO_CUSTOM_SERIALIZATION = b"\x00"

_FIXED = {"UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1, "Nothing": 1,
          "UInt16": 2, "Int16": 2, "Date": 2, "Enum16": 2, "BFloat16": 2,
          "UInt32": 4, "Int32": 4, "Float32": 4, "Date32": 4, "DateTime": 4, "IPv4": 4, "Time": 4, "Decimal32": 4,
          "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Time64": 8, "Decimal64": 8,
          "UInt128": 16, "Int128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16,
          "UInt256": 32, "Int256": 32, "Decimal256": 32}
_GEO = {"Point": "Tuple(Float64, Float64)", "Ring": "Array(Point)", "LineString": "Array(Point)",
        "Polygon": "Array(Ring)", "MultiLineString": "Array(LineString)", "MultiPolygon": "Array(Polygon)"}
_NAMED_ELEMENT = re.compile(r"\s*(?:`(?:[^`\\]|\\.|``)*`|\"(?:[^\"\\]|\\.|\"\")*\"|[A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)\Z",
                            re.S)
# LowCardinality: the index type word's flags, and its low byte (key width: UInt8..UInt64).
_LC_GLOBAL_DICTIONARY, _LC_ADDITIONAL_KEYS = 1 << 8, 1 << 9

Skip = Callable[[bytes, int, int], int]  # (data, position, rows) -> position after those rows


class NativeUnsupported(ValueError):
    """chDB's Native answer has a column whose layout is not walked here."""


def for_revision(native: bytes, revision: int) -> bytes:
    """chDB's revision-0 Native ``native`` as a server writes it for a client of ``revision``
    (unchanged below 54454: see the module's docstring)."""
    if revision < CUSTOM_SERIALIZATION_REVISION or not native:
        return native
    return reframe(native)


def reframe(native: bytes) -> bytes:
    """Revision-0 Native -> revision >= 54454: BlockInfo before each block, a 0 byte after each type.
    ValueError (NativeUnsupported for types not walked) if ``native`` is not revision-0 Native."""
    out, pos, end = bytearray(), 0, len(native)
    try:
        while pos < end:
            start = pos
            columns, pos = _varint(native, pos)
            rows, pos = _varint(native, pos)
            out += BLOCK_INFO
            out += native[start:pos]
            for _ in range(columns):
                head = pos
                size, pos = _varint(native, pos)
                name_end = pos + size
                size, pos = _varint(native, name_end)
                type_name = native[pos:pos + size].decode()
                pos += size
                if pos > end:
                    raise ValueError("truncated Native data")
                out += native[head:pos]
                out += NO_CUSTOM_SERIALIZATION
                if rows:  # a block without rows has no column data at all
                    try:
                        data_end = skipper(type_name)(native, pos, rows)
                    except NativeUnsupported as exc:
                        raise NativeUnsupported(f"column {_column_name(native, head)!r}: {exc}") from None
                    if data_end > end:
                        raise ValueError("truncated Native data")
                    out += native[pos:data_end]
                    pos = data_end
    except IndexError:
        raise ValueError("truncated Native data") from None
    return bytes(out)


def _column_name(native: bytes, head: int) -> str:
    size, pos = _varint(native, head)
    return native[pos:pos + size].decode(errors="replace")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint in Native data")


def type_arguments(inner: str) -> list[str]:
    """The top-level arguments of a type's parentheses (quotes and nested parentheses respected)."""
    out: list[str] = []
    depth, start, i, n = 0, 0, 0, len(inner)
    while i < n:
        ch = inner[i]
        if ch in "'`\"":
            i += 1
            while i < n and inner[i] != ch:
                i += 2 if inner[i] == "\\" else 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(inner[start:i].strip())
            start = i + 1
        i += 1
    last = inner[start:].strip()
    if last or out:
        out.append(last)
    return out


def _split(type_name: str) -> tuple[str, list[str]]:
    type_name = type_name.strip()
    name, paren, rest = type_name.partition("(")
    if paren and not rest.endswith(")"):
        raise ValueError(f"malformed type name {type_name!r}")
    return name.strip(), type_arguments(rest[:-1]) if paren else []


def _element_type(arg: str) -> str:
    """A Tuple element's type: ``name Type`` or ``Type``."""
    named = _NAMED_ELEMENT.match(arg)
    return named.group(1) if named else arg


@lru_cache(maxsize=512)
def skipper(type_name: str) -> Skip:
    """The function that steps over ``rows`` values of ``type_name`` in revision-0 Native column data:
    first the serialization prefixes of the type and its nested types (only LowCardinality has one
    among the types walked: its key version, 8 bytes), all before any data, then the data."""
    prefix, data = _walker(type_name)
    if not prefix:
        return data
    return lambda buf, pos, rows: data(buf, pos + prefix, rows)


@lru_cache(maxsize=512)
def _walker(type_name: str) -> tuple[int, Skip]:
    """``(prefix bytes, data skip)`` of ``type_name``."""
    name, args = _split(type_name)
    if name in _GEO:
        return _walker(_GEO[name])
    if name in _FIXED or name.startswith("Interval"):  # with or without arguments (enum values, zones, scale)
        return 0, _fixed(_FIXED.get(name, 8))
    if name == "FixedString":
        return 0, _fixed(int(args[0]))
    if name == "Decimal":
        digits = int(args[0])
        return 0, _fixed(4 if digits <= 9 else 8 if digits <= 18 else 16 if digits <= 38 else 32)
    if name == "String":
        return 0, _skip_strings
    if name == "Nullable":
        prefix, inner = _walker(args[0])
        return prefix, _nullable(inner)
    if name == "SimpleAggregateFunction":
        return _walker(args[-1])
    if name == "Array":
        prefix, inner = _walker(args[0])
        return prefix, _array([inner])
    if name == "Nested":
        prefix, inner = _elements(args)
        return prefix, _array([inner])
    if name == "Map":
        (key_prefix, key), (value_prefix, value) = _walker(args[0]), _walker(args[1])
        return key_prefix + value_prefix, _array([key, value])
    if name == "Tuple":
        return _elements(args) if args else (0, _fixed(1))  # Tuple(): one byte a row
    if name == "LowCardinality":
        dictionary = _split(args[0])
        prefix, keys = _walker(dictionary[1][0] if dictionary[0] == "Nullable" else args[0])
        if prefix:
            raise NativeUnsupported(f"its type {type_name} is not re-framed by imtel engine")
        return 8, _low_cardinality(keys)
    raise NativeUnsupported(f"its type {type_name} is not re-framed by imtel engine")


def _elements(args: list[str]) -> tuple[int, Skip]:
    walkers = [_walker(_element_type(arg)) for arg in args]
    return sum(prefix for prefix, _ in walkers), _tuple([data for _, data in walkers])


def _fixed(width: int) -> Skip:
    return lambda _buf, pos, rows: pos + rows * width


def _skip_strings(buf: bytes, pos: int, rows: int) -> int:
    for _ in range(rows):
        byte = buf[pos]
        if byte < 0x80:
            pos += 1 + byte
        else:
            size, pos = _varint(buf, pos)
            pos += size
    return pos


def _nullable(inner: Skip) -> Skip:
    return lambda buf, pos, rows: inner(buf, pos + rows, rows)


def _uint64(buf: bytes, pos: int) -> int:
    if pos + 8 > len(buf):
        raise ValueError("truncated Native data")
    return int.from_bytes(buf[pos:pos + 8], "little")


def _array(parts: list[Skip]) -> Skip:
    def skip(buf: bytes, pos: int, rows: int) -> int:
        total = _uint64(buf, pos + (rows - 1) * 8) if rows else 0
        pos += rows * 8
        for part in parts:
            pos = part(buf, pos, total)
        return pos
    return skip


def _tuple(parts: list[Skip]) -> Skip:
    def skip(buf: bytes, pos: int, rows: int) -> int:
        for part in parts:
            pos = part(buf, pos, rows)
        return pos
    return skip


def _low_cardinality(keys: Skip) -> Skip:
    """LowCardinality data as Native writes it (its key version is in the prefix; no shared
    dictionary: ``low_cardinality_max_dictionary_size`` is 0 there): granules of index type, keys
    and indexes."""
    def skip(buf: bytes, pos: int, rows: int) -> int:
        done = 0
        while done < rows:
            index_type = _uint64(buf, pos)
            pos += 8
            width = 1 << (index_type & 0xFF)
            if width > 8:
                raise ValueError("malformed LowCardinality index type")
            if index_type & _LC_GLOBAL_DICTIONARY:
                raise NativeUnsupported("a LowCardinality column with a shared dictionary is not re-framed")
            if index_type & _LC_ADDITIONAL_KEYS:
                count = _uint64(buf, pos)
                pos = keys(buf, pos + 8, count)
            count = _uint64(buf, pos)
            if count == 0:
                raise ValueError("malformed LowCardinality granule")
            pos += 8 + count * width
            done += count
        return pos
    return skip
