"""pipeline/queries.py: parameters are validated and typed (errors name the parameter), injection attempts
fail to parse, and every named query's SQL uses only bound parameters besides {db}."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.queries import QUERIES, QueryError, parse_params

NAMES = sorted(QUERIES)


def test_there_are_queries() -> None:
    assert {"app_health", "top_failing"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_defaults(name: str) -> None:
    assert parse_params(name, {}) == {"minutes": 15, "app": 0, "limit": 20}


@pytest.mark.parametrize("name", NAMES)
def test_values_are_typed(name: str) -> None:
    out = parse_params(name, {"minutes": "60", "app": "1400000000", "limit": "5"})
    assert out == {"minutes": 60, "app": 1_400_000_000, "limit": 5}
    assert all(type(v) is int for v in out.values())


def test_unknown_query() -> None:
    with pytest.raises(QueryError, match="'nope'"):
        parse_params("nope", {})


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter(name: str) -> None:
    with pytest.raises(QueryError, match="'db'"):
        parse_params(name, {"db": "system"})


@pytest.mark.parametrize(("param", "value"), [
    ("minutes", "abc"), ("minutes", "1.5"), ("minutes", ""), ("minutes", "0"), ("minutes", "2881"),
    ("minutes", "-5"), ("limit", "0"), ("limit", "1001"), ("limit", "ten"), ("app", "-1"),
    ("app", "4294967296"), ("app", "0x10"),
    ("minutes", "5; DROP TABLE x"), ("app", "1 OR 1=1"), ("limit", "1) UNION SELECT 1 --"),
    ("app", "0 = 0 OR sdk_app_id"), ("minutes", "{minutes:UInt32}"),
])
@pytest.mark.parametrize("name", NAMES)
def test_bad_values(name: str, param: str, value: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_params(name, {param: value})
    assert f"parameter {param} " in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NAMES), st.sampled_from(["minutes", "app", "limit"]), st.text(max_size=30))
def test_anything_parsed_is_a_bounded_int(name: str, param: str, value: str) -> None:
    try:
        out = parse_params(name, {param: value})
    except QueryError as exc:
        assert param in str(exc)
        return
    assert type(out[param]) is int
    assert 0 <= out[param] <= 4_294_967_295


_FIELD = re.compile(r"\{([^{}]*)\}")


@pytest.mark.parametrize("name", NAMES)
def test_sql_uses_only_bound_parameters(name: str) -> None:
    query = QUERIES[name]
    types = {p.name: p.ch_type for p in query.params}
    used = set()
    for field in _FIELD.findall(query.sql):
        if field == "db":
            continue
        match = re.fullmatch(r"(\w+):(\w+)", field)
        assert match, f"{name}: {{{field}}} is neither {{db}} nor a bound parameter"
        pname, ptype = match.groups()
        assert types.get(pname) == ptype, f"{name}: {{{field}}} does not match a declared parameter"
        used.add(pname)
    assert used == set(types), f"{name}: declared but unused parameters {set(types) - used}"
    # no Python-style format fields that would interpolate text ({0}, {}, {x!r}, %s)
    assert "{}" not in query.sql
    assert "%s" not in query.sql and "%(" not in query.sql
