"""The native request-log decoder (pipeline/ingest/_fastlog.c) against msgspec, the reference.

Whatever the native decoder takes, msgspec's hot-path decoder (``LooseRequestLog``) must take too, as
the same records with the same values; whatever it does not take, it must leave no trace of. And it
must take the common case (valid records as producers write them, in every framing), or the worker
would silently run on the slow path. Checked on generated records around every bound and on
byte-level mutations of valid messages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ingest import fastlog
from pipeline.ingest.decode import Decoder
from pipeline.ingest.records import INTERFACE_PATTERN_RE2, LooseRequestLog

pytestmark = pytest.mark.skipif(not fastlog.available and not os.environ.get("CI"),
                                reason="the native decoder is not built here (no C compiler)")
REFERENCE: Decoder[Any] = Decoder(LooseRequestLog)  # type: ignore[type-var]
FIELDS = ("sdk_app_id", "interface", "request_time", "client_ip", "latency_ms", "error_code", "region", "platform",
          "request_id")


def test_built_where_the_suite_runs() -> None:
    """CI installs with a C compiler: there the extension must exist (else every test here is moot)."""
    assert fastlog.available


def good(i: int = 0, **over: Any) -> dict[str, Any]:
    return {"sdk_app_id": 1400000001 + i, "interface": "v4/openim/sendmsg", "request_time": 1795000000000 + i,
            "client_ip": f"203.0.113.{i % 250}", "latency_ms": 20 + i, "error_code": 0, "region": "ap-seoul",
            "platform": "iOS", "request_id": f"req-{i}", **over}


def frame(records: list[dict[str, Any]], framing: str) -> bytes:
    if framing == "array":
        return msgspec.json.encode(records)
    return b"\n".join(msgspec.json.encode(r) for r in records)


def check(value: bytes) -> int:
    """Feed one message; assert the invariant; return what the native decoder said."""
    native = fastlog.ColumnDecoder()
    n = native.add(value)
    if n < 0:
        assert native.rows == 0 and len(native.take()) == 0  # not taken: nothing left behind
        return n
    ref = REFERENCE.decode(value)
    assert not ref.rejects and ref.indices is None, "the native decoder took a message msgspec refuses"
    cols = native.take()
    assert n == len(cols) == len(ref.items)
    got = [{"sdk_app_id": cols.sdk_app_id[i].as_py(), "interface": cols.interface[i].as_py(),
            "request_time": int(cols.request_time[i]), "client_ip": cols.client_ip[i].as_py(),
            "latency_ms": cols.latency_ms[i].as_py(), "error_code": cols.error_code[i].as_py(),
            "region": cols.region[i].as_py(), "platform": cols.platform[i].as_py(),
            "request_id": cols.request_id[i].as_py(), "exception": cols.exception[i].as_py()} for i in range(n)]
    want = [{**{f: getattr(r, f) for f in FIELDS}, "exception": r.exception or ""} for r in ref.items]
    assert got == want
    return n


@pytest.mark.parametrize("framing", ["array", "ndjson"])
@pytest.mark.parametrize("count", [1, 2, 400])
def test_takes_what_producers_write(framing: str, count: int) -> None:
    records = [good(i, exception="msg store shard 7 timeout" if i % 3 == 0 else None) for i in range(count)]
    assert check(frame(records, framing)) == count
    assert check(b" \n" + frame(records, framing) + b"\r\n") == count  # whitespace around is still one message
    assert check(msgspec.json.encode(records, order="sorted") if framing == "array" else frame(records, "ndjson")
                 ) == count


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                 b"\xc3", b"\xe4\xb8", b"\x80"])
def test_malformed_utf8_is_not_taken(bad: bytes) -> None:
    """Overlong forms, surrogates, past U+10FFFF, truncated or stray continuation bytes: msgspec
    refuses them (invalid UTF-8), so the native decoder must not take them."""
    value = frame([good(0, exception="XX")], "array").replace(b"XX", b"a" + bad + b"b")
    assert check(value) == -1
    assert check(frame([good(0, exception="a\u00e9b")], "array")) == 1  # the well-formed neighbour is taken


def test_columns_accumulate_over_messages_and_take_empties() -> None:
    native = fastlog.ColumnDecoder()
    assert native.add(frame([good(0), good(1)], "array")) == 2
    assert native.add(b"not json") == -1
    assert native.add(frame([good(2)], "ndjson")) == 1
    cols = native.take()
    assert cols.request_id.to_pylist() == ["req-0", "req-1", "req-2"] and len(native.take()) == 0
    assert cols.filter(cols.request_time > 1795000000000).request_id.to_pylist() == ["req-1", "req-2"]


def test_interned_columns_hold_only_the_values_of_their_rows() -> None:
    """interface, region and platform come as dictionaries of this take's distinct values: a message
    that was not taken, and rows filtered out, leave no value behind (it would reach the store as an
    unused LowCardinality entry), and many distinct values grow the table past its first size."""
    native = fastlog.ColumnDecoder()
    assert native.add(frame([good(0, region="kept-1"), good(1, region="kept-2")], "array")) == 2
    assert native.add(frame([good(2, region="gone"), good(3, latency_ms=-1)], "array")) == -1  # rolled back
    assert native.add(frame([good(4, region="kept-1", platform="web")], "ndjson")) == 1
    names = [f"v4/svc{i}/call" for i in range(3000)]
    assert native.add(frame([good(5 + i, interface=name) for i, name in enumerate(names)], "array")) == 3000
    cols = native.take()
    assert cols.region.dictionary.to_pylist() == ["kept-1", "kept-2", "ap-seoul"]  # not "gone"
    assert cols.region.to_pylist()[:3] == ["kept-1", "kept-2", "kept-1"]
    assert cols.platform.dictionary.to_pylist() == ["iOS", "web"]
    assert cols.interface.dictionary.to_pylist() == ["v4/openim/sendmsg", *names]
    assert cols.interface.to_pylist()[3:] == names
    kept = cols.filter(np.array([i != 1 for i in range(len(cols))]))
    assert "kept-2" not in kept.region.dictionary.to_pylist() and kept.region.to_pylist()[:2] == ["kept-1"] * 2
    again = native.add(frame([good(9, region="fresh")], "array")) == 1 and native.take()
    assert again and again.region.dictionary.to_pylist() == ["fresh"]  # a new dictionary per take


@pytest.mark.parametrize("value", [
    b"", b"   ", b"[]", b"{}", b"null", b"[1]", b"[" + msgspec.json.encode(good()),  # truncated
    msgspec.json.encode([good()]) + b"x",  # trailing garbage
    msgspec.json.encode(good()) + b" " + msgspec.json.encode(good()),  # two objects, one line
    msgspec.json.encode(good()) + b"\n\n" + msgspec.json.encode(good()),  # a blank line between
    b'{"sdk_app_id": 1400000001, "sdk_app_id": 1400000002' + msgspec.json.encode(good())[1:],  # repeated key
])
def test_refuses_what_it_does_not_handle_and_leaves_nothing(value: bytes) -> None:
    assert check(value) == -1


@pytest.mark.parametrize("over", [
    {"sdk_app_id": 0}, {"sdk_app_id": 2**32}, {"sdk_app_id": 1.0}, {"sdk_app_id": "1"}, {"sdk_app_id": True},
    {"request_time": -1}, {"request_time": 253_402_300_800_000}, {"latency_ms": 3_600_001}, {"latency_ms": None},
    {"error_code": 2**31}, {"error_code": -(2**31) - 1}, {"interface": ""}, {"interface": "x" * 129},
    {"region": ""}, {"region": "r" * 33}, {"platform": "p" * 33}, {"request_id": ""}, {"request_id": "q" * 65},
    {"client_ip": "i" * 65}, {"exception": "e" * 2049}, {"exception": 5}, {"region": "\u4e2d" * 33},
    {"exception": "\U0001f600" * 2049}, {"request_id": 'a"b'}, {"exception": "line\nbreak"}, {"extra": 1},
    # outside the interface pattern (records.INTERFACE_PATTERN_RE2): msgspec's loose struct takes it, the
    # strict one dead-letters it, so the message goes that way
    {"interface": "has space"}, {"interface": "caf\u00e9"}, {"interface": "v4/a:b"}, {"interface": "a\u0000"},
])
def test_a_record_msgspec_refuses_or_may_read_differently_is_not_taken(over: dict[str, Any]) -> None:
    assert check(frame([good(0), good(1, **over)], "array")) == -1


@pytest.mark.parametrize("over", [
    {"sdk_app_id": 1}, {"sdk_app_id": 2**32 - 1}, {"request_time": 0}, {"request_time": 253_402_300_799_999},
    {"latency_ms": 0}, {"latency_ms": 3_600_000}, {"error_code": -(2**31)}, {"error_code": 2**31 - 1},
    {"interface": "x" * 128}, {"region": "r" * 32}, {"request_id": "q" * 64}, {"client_ip": ""},
    {"client_ip": "i" * 64}, {"exception": "e" * 2048}, {"exception": ""}, {"exception": None},
    {"interface": "A-Za-z0-9_./-"}, {"region": "\u4e2d" * 32}, {"exception": "\u6d88\u606f\u5b58\u50a8\u8d85\u65f6"},
    {"exception": "\U0001f600" * 2048}, {"platform": "\u00e9" * 32},  # lengths count code points, not bytes
])
def test_bounds_are_taken_with_the_same_values(over: dict[str, Any]) -> None:
    assert check(frame([good(0, **over)], "array")) == 1
    assert check(frame([good(0), good(1, **over)], "ndjson")) == 2


TEXT = st.text(st.sampled_from("ab/._-09 \"\\\n\u00e9\u4e2d\x00\x7f"), max_size=6)
INTS = st.one_of(st.integers(-(2**63), 2**64), st.sampled_from([0, 1, -1, 2**31, 2**32, 3_600_000]),
                 st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(), TEXT)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    r: dict[str, Any] = good(draw(st.integers(0, 100)))
    for name in draw(st.lists(st.sampled_from([*FIELDS, "exception", "other"]), max_size=3)):
        r[name] = draw(INTS if name in ("sdk_app_id", "request_time", "latency_ms", "error_code") else
                       st.one_of(TEXT, st.text(max_size=70), st.none(), st.integers()))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=1)):
        r.pop(name, None)
    return r


@settings(max_examples=400, deadline=None)
@given(st.lists(records(), min_size=1, max_size=4), st.sampled_from(["array", "ndjson"]),
       st.sampled_from([b"", b" ", b"\n", b"\r\n", b"\t"]))
def test_generated_messages_agree_with_msgspec(recs: list[dict[str, Any]], framing: str, pad: bytes) -> None:
    check(pad + frame(recs, framing) + pad)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["array", "ndjson"]), st.integers(1, 3), st.data())
def test_mutated_bytes_agree_with_msgspec(framing: str, count: int, data: st.DataObject) -> None:
    value = bytearray(frame([good(i, exception="boom" if i else None) for i in range(count)], framing))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(value) - 1))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.sampled_from(b' \n\r\t{}[],:"\\-.0123456789eE+nulltrufas\x00\xc3\xa9'))
        if op == "set":
            value[at] = byte
        elif op == "insert":
            value.insert(at, byte)
        else:
            del value[at]
    check(bytes(value))


IPV4ISH = st.one_of(
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
    st.tuples(*[st.sampled_from(["0", "00", "01", "1", "10", "099", "255", "256", "1000", "", " 1", "+1", "a"])] * 4)
    .map(".".join),
    st.sampled_from(["1.2.3", "1.2.3.4.5", "1.2.3.4 ", "1..3.4", "::1", "2001:db8:1:2::5", "::ffff:1.2.3.4", ""]),
    st.text(st.sampled_from("0123456789.:af"), max_size=16),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded),
    st.ip_addresses(v=6).map(lambda a: str(a).upper()),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.text(st.sampled_from("0123456789abcdefABCDEF:.%/ "), max_size=48),
    st.sampled_from(["::", "1::", "::1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "fe80::1%eth0", "2001:db8::1/64",
                     "2001:0db8:0000::1", "::ffff:0:1.2.3.4", "2001:db8::1.2.3.4", "x" * 60 + ":", "1:" * 31 + "1"]),
)


@pytest.mark.parametrize("mode", ["prefix", "drop", "hash"])
@settings(max_examples=300, deadline=None)
@given(ip=IPV4ISH)
def test_native_minimisation_equals_privacy_where_it_applies(mode: str, ip: str) -> None:
    """A dotted-quad IPv4 address, or an IPv6 address that is not IPv4-mapped, in prefix/drop mode is
    minimised natively, to exactly what ``privacy.minimisation`` gives; anything else is left to it
    (flagged not done)."""
    from pipeline.ingest.privacy import minimisation

    native = fastlog.ColumnDecoder(mode)
    assert native.add(frame([good(0, client_ip=ip)], "array")) == 1
    cols = native.take()
    one = minimisation(mode, "k" * 16)
    if cols.net_done[0]:
        assert mode != "hash" and one(ip) == cols.client_net[0].as_py() and one(ip) is not None
    else:
        assert mode == "hash" or one(ip) is None or _v4_mapped(ip)


def _v4_mapped(ip: str) -> bool:
    import socket

    try:
        return socket.inet_pton(socket.AF_INET6, ip)[:12] == bytes(10) + b"\xff\xff"
    except (OSError, ValueError):
        return False


# The string scanner looks at 16 or 8 bytes at a time and at single bytes only near a byte that needs
# attention or the end of the message: a special byte at every position of every short length, in the
# last field of a record (the end of the message a few bytes on), takes the block and the byte paths.
SPECIAL_BYTES = [b'"', b"\\", b"\x00", b"\x01", b"\x1f", b"\x7f", b" ", b"\xc3\xa9", b"\xe4\xb8\xad",
                 b"\xf0\x9f\x98\x80", b"\xff", b"\x80", b"\xc3", b"\xe4\xb8", b"\xc0\xaf", b"\xed\xa0\x80",
                 b"\xf4\x90\x80\x80"]


@pytest.mark.parametrize("special", SPECIAL_BYTES)
def test_a_special_byte_anywhere_in_a_string_of_any_length(special: bytes) -> None:
    base = frame([good(0, exception="XX")], "ndjson")
    for length in range(41):
        for at in range(length + 1):
            plain = bytes(0x21 + (i * 7) % 90 for i in range(length)).replace(b'"', b"#").replace(b"\\", b"/")
            raw = plain[:at] + special + plain[at:]
            value = base.replace(b'"XX"', b'"' + raw + b'"')
            try:
                text = raw.decode()
                want = not any(c in '"\\' or c < " " for c in text)
            except UnicodeDecodeError:
                want = False
            if want:
                assert check(value) == 1
                native = fastlog.ColumnDecoder()
                assert native.add(value) == 1 and native.take().exception[0].as_py() == text
            else:
                assert fastlog.ColumnDecoder().add(value) == -1, raw
            cut = value.index(b'"exception":"') + len(b'"exception":"') + len(raw)  # ends inside the string
            assert fastlog.ColumnDecoder().add(value[:cut]) == -1


@st.composite
def v6_texts(draw: st.DrawFn) -> str:
    """IPv6 text with many zero groups, in the forms inet_pton takes (compressed, exploded, leading zeros,
    upper case, embedded dotted quad)."""
    import ipaddress

    words = draw(st.lists(st.one_of(st.just(0), st.just(0), st.integers(1, 15), st.integers(0, 0xFFFF),
                                    st.just(0xFFFF)), min_size=8, max_size=8))
    addr = ipaddress.IPv6Address(sum(w << (16 * (7 - i)) for i, w in enumerate(words)))
    form = draw(st.sampled_from(["compressed", "exploded", "bare", "upper", "dotted"]))
    if form == "exploded":
        return addr.exploded
    if form == "bare":
        return ":".join(f"{w:x}" for w in words)
    if form == "upper":
        return str(addr).upper()
    if form == "dotted":
        return ":".join(f"{w:x}" for w in words[:6]) + ":" + str(ipaddress.IPv4Address(words[6] << 16 | words[7]))
    return str(addr)


@settings(max_examples=1000, deadline=None)
@given(ip=v6_texts())
def test_native_v6_network_is_the_canonical_48(ip: str) -> None:
    import ipaddress

    from pipeline.ingest.privacy import prefix

    native = fastlog.ColumnDecoder("prefix")
    assert native.add(frame([good(0, client_ip=ip)], "array")) == 1
    cols = native.take()
    if _v4_mapped(ip):  # privacy.prefix gives those a /24: left to it
        assert not cols.net_done[0]
        return
    assert cols.net_done[0]
    assert cols.client_net[0].as_py() == prefix(ip) == str(ipaddress.ip_network(ip + "/48", strict=False))


def test_native_minimisation_takes_the_common_case() -> None:
    native = fastlog.ColumnDecoder("prefix")
    assert native.add(frame([good(0, client_ip="203.0.113.7"), good(1, client_ip="2001:db8::1"),
                             good(2, client_ip="10.0.0.255")], "array")) == 3
    cols = native.take()
    assert cols.net_done.tolist() == [True, True, True]
    assert cols.client_net.to_pylist() == ["203.0.113.0/24", "2001:db8::/48", "10.0.0.0/24"]


# -- the C field tables against records.py ---------------------------------------------------------
# The native decoder spells the record out again in C (names, which are strings, length bounds, integer
# ranges, which may be absent or null). Drift is silent: a field added to RequestLog, or a bound widened
# there, makes the C code refuse every message that uses it, and the worker quietly runs on the slow
# path. So the tables are read out of the source and held to the struct; the mutations below prove the
# comparison notices.
SOURCE = (Path(__file__).parents[2] / "pipeline" / "ingest" / "_fastlog.c").read_text()


def _c_array(source: str, name: str) -> list[str]:
    body = re.search(rf"\b{name}\[\w+\]\s*=\s*\{{(.*?)\}};", source, re.S)
    assert body, f"_fastlog.c: no table {name}"
    return [v.strip().strip('"') for v in body.group(1).split(",") if v.strip()]


def _c_enum(source: str, first: str) -> list[str]:
    body = re.search(rf"enum \{{\s*({first}\b[^}}]*)\}}", source)
    assert body, f"_fastlog.c: no enum starting {first}"
    return [v.strip() for v in body.group(1).split(",")][:-1]  # the last one counts them (N_...)


def _c_ranges(source: str) -> dict[str, tuple[int, int]]:
    return {f: (int(lo), int(hi)) for f, lo, hi in
            re.findall(r"case (F_\w+): return v >= (-?\d+)(?:LL)? && v <= (-?\d+)(?:LL)?;", source)}


def _str_bounds(tp: Any) -> tuple[int, int] | None:
    return (tp.min_length or 0, tp.max_length) if isinstance(tp, msgspec.inspect.StrType) else None


def table_drift(struct: type[msgspec.Struct], source: str) -> list[str]:
    """Every way ``source``'s field tables disagree with ``struct`` (the hot-path decoder's struct)."""
    fields = list(msgspec.inspect.type_info(struct).fields)  # type: ignore[attr-defined]
    enum, names = _c_enum(source, "F_APP"), _c_array(source, "NAMES")
    strings, string_of = _c_enum(source, "S_IFACE"), _c_array(source, "STRING_OF")
    min_len, max_len = _c_array(source, "MIN_LEN"), _c_array(source, "MAX_LEN")
    ranges = _c_ranges(source)
    optional = set(re.findall(r"F_\w+", re.search(r"\(r->seen \| ([^)]*\))", source).group(1)))  # type: ignore[union-attr]
    nullable = set(re.findall(r"f == (F_\w+) && end - p >= 4 && memcmp\(p, \"null\"", source))
    problems = []
    # Same order too: producers write keys in struct order and field_of tries the next field first.
    if names != [f.name for f in fields]:
        problems.append(f"NAMES {names} != struct fields {[f.name for f in fields]}")
    if len(enum) != len(names):
        problems.append(f"F_* enum has {len(enum)} entries, NAMES {len(names)}")
    by_name = {n: (e, so) for n, e, so in zip(names, enum, string_of, strict=False)}
    for f in fields:
        if f.name not in by_name:
            continue
        c_field, c_string = by_name[f.name]
        tp = f.type
        if isinstance(tp, msgspec.inspect.UnionType):
            others = [t for t in tp.types if not isinstance(t, msgspec.inspect.NoneType)]
            if (c_field in nullable) != (len(others) < len(tp.types)):
                problems.append(f"{f.name}: null accepted in C: {c_field in nullable}, in records.py: "
                                f"{len(others) < len(tp.types)}")
            tp = others[0] if len(others) == 1 else tp
        if (c_field in optional) != (not f.required):
            problems.append(f"{f.name}: optional in C: {c_field in optional}, in records.py: {not f.required}")
        if not f.required and f.default is not None:
            problems.append(f"{f.name}: the C code stores an absent value as empty, records.py defaults to "
                            f"{f.default!r}")
        if isinstance(tp, msgspec.inspect.IntType):
            want = (tp.ge if tp.ge is not None else -(2**63), tp.le if tp.le is not None else 2**63 - 1)
            if c_string != "-1" or ranges.get(c_field) != want:
                problems.append(f"{f.name}: integer range in C {ranges.get(c_field)}, records.py {want}")
        elif (bounds := _str_bounds(tp)) is not None:
            if c_string not in strings:
                problems.append(f"{f.name}: a string in records.py, not a string column in C ({c_string})")
                continue
            s = strings.index(c_string)
            got = (int(min_len[s]), int(max_len[s]))
            if got != bounds:
                problems.append(f"{f.name}: length bounds in C {got}, records.py {bounds}")
            if fastlog.STRING_COLUMNS[s] != f.name:
                problems.append(f"{f.name}: string column {s} is {fastlog.STRING_COLUMNS[s]} in fastlog.py")
        else:
            problems.append(f"{f.name}: type {tp} has no native parser")
    return problems


def test_c_field_tables_agree_with_records() -> None:
    assert table_drift(LooseRequestLog, SOURCE) == []


def _with_field(*extra: tuple[Any, ...]) -> type[msgspec.Struct]:
    fields = [(f.name, f.type) if f.required else (f.name, f.type, f.default)
              for f in msgspec.structs.fields(LooseRequestLog)]
    return msgspec.defstruct("Drifted", [*fields, *extra])


@pytest.mark.parametrize(("struct", "source", "needle"), [
    (_with_field(("client_version", str | None, None)), SOURCE, "client_version"),  # a new optional field
    (LooseRequestLog, SOURCE.replace("{128, 64, 32, 32, 64, 2048}", "{128, 64, 32, 32, 64, 1024}"), "exception"),
    (LooseRequestLog, SOURCE.replace("v <= 3600000;", "v <= 60000;"), "latency_ms"),
    (LooseRequestLog, SOURCE.replace("(1u << F_EXC)) != ", "0) != "), "optional"),
    (msgspec.defstruct("Wider", [(f.name, Annotated[str, msgspec.Meta(max_length=40)]) if f.name == "region" else
                                 ((f.name, f.type) if f.required else (f.name, f.type, f.default))
                                 for f in msgspec.structs.fields(LooseRequestLog)]), SOURCE, "region"),
])
def test_table_drift_is_noticed(struct: type[msgspec.Struct], source: str, needle: str) -> None:
    assert source != SOURCE or struct is not LooseRequestLog, "the mutation did not apply"
    assert any(needle in p for p in table_drift(struct, source))


def test_interface_bytes_are_those_of_the_pattern() -> None:
    """The native decoder's copy of the ``interface`` pattern (a byte class) against the pattern
    itself (``records.INTERFACE_PATTERN_RE2``, the one owner), byte by byte."""
    pattern = re.compile(INTERFACE_PATTERN_RE2.replace("$", r"\Z"))
    for byte in range(1, 128):
        if chr(byte) in '"\\' or byte < 0x20:
            continue  # not a plain JSON string: never taken, whatever the pattern says
        # short: the byte loop; long (the byte inside the first 16): the 16-byte compare
        for name in ("v4/" + chr(byte), "v4/" + chr(byte) + "x" * 20):
            taken = check(frame([good(0, interface=name)], "array")) == 1
            assert taken == bool(pattern.match(name)), repr(name)
