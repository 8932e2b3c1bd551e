"""pipeline/ops/queries.py: parameters are validated and typed (errors name the parameter), injection attempts
fail to parse, every named query's SQL uses only bound parameters besides {db}, and on a seeded
embedded store each query finds the incident it is designed to find (app, interface, cause, region),
with app names from the registry and the sdk_app_id as fallback.

chDB opens one store per process (and another test module owns this process' store), so the engine
runs in a child process here."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ops.queries import QUERIES, QueryError, parse_params, parse_time

NAMES = sorted(QUERIES)
RANGED = sorted(n for n, q in QUERIES.items() if q.ranged)
NOW = datetime(2026, 11, 22, 12, 0, 30, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
TOP3_ROWS = 84_000


def minimal(name: str) -> dict[str, str]:
    """The parameters a query cannot do without."""
    return {"app": "1400000001"} if name == "app_timeseries" else {}


def test_the_issues_queries_exist() -> None:
    assert {"app_health", "top_failing", "slow_interfaces", "top_causes", "error_rate_change", "breakdown",
            "app_timeseries", "apps"} <= set(NAMES)


@pytest.mark.parametrize("name", RANGED)
def test_default_range_is_the_last_15_minutes(name: str) -> None:
    out = parse_params(name, minimal(name), now=NOW)
    assert out["end_ms"] == int(NOW.timestamp() * 1000)
    assert out["end_ms"] - out["start_ms"] == 15 * 60_000


def test_defaults_and_types() -> None:
    assert parse_params("app_health", {}, now=NOW) == {
        "app": 0, "min_requests": 20, "limit": 20,
        "start_ms": int((NOW - timedelta(minutes=15)).timestamp() * 1000), "end_ms": int(NOW.timestamp() * 1000)}
    out = parse_params("breakdown", {"app": "1400000000", "by": "platform", "limit": "5", "minutes": "60"}, now=NOW)
    assert out["app"] == 1_400_000_000 and out["by"] == "platform" and out["limit"] == 5
    assert out["end_ms"] - out["start_ms"] == 3_600_000
    assert all(type(v) is int for k, v in out.items() if k != "by")


@pytest.mark.parametrize(("raw", "start", "end"), [
    ({"from": "now-2h", "to": "now-1h"}, NOW - timedelta(hours=2), NOW - timedelta(hours=1)),
    ({"from": "2026-11-22T10:00:00Z", "to": "2026-11-22T11:30:00"}, datetime(2026, 11, 22, 10, tzinfo=UTC),
     datetime(2026, 11, 22, 11, 30, tzinfo=UTC)),
    ({"from": "2026-11-22T18:00:00+08:00"}, datetime(2026, 11, 22, 10, tzinfo=UTC), NOW),
    ({"minutes": "30", "to": "now-1d"}, NOW - timedelta(days=1, minutes=30), NOW - timedelta(days=1)),
    ({"from": "1795338000", "to": "1795341600000"}, datetime.fromtimestamp(1795338000, UTC),
     datetime.fromtimestamp(1795341600, UTC)),
])
def test_time_ranges(raw: dict[str, str], start: datetime, end: datetime) -> None:
    out = parse_params("top_causes", raw, now=NOW)
    assert (out["start_ms"], out["end_ms"]) == (int(start.timestamp() * 1000), int(end.timestamp() * 1000))


@pytest.mark.parametrize(("raw", "message"), [
    ({"from": "now-1h", "to": "now-2h"}, "from must be before to"),
    ({"from": "now-40d"}, "at most 31 days"),
    ({"minutes": "10", "from": "now-1h"}, "minutes must not be combined with from"),
    ({"from": "yesterday"}, "parameter from must be a time"),
    ({"to": "now+5m"}, "parameter to must be a time"),
    ({"from": "2026-13-01T00:00:00"}, "parameter from must be a time"),
])
def test_bad_ranges(raw: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_params("top_causes", raw, now=NOW)


def test_parse_time_naive_is_utc() -> None:
    assert parse_time("2026-11-22 08:00", NOW) == datetime(2026, 11, 22, 8, tzinfo=UTC)
    assert parse_time("now", NOW) == NOW and parse_time("now-1w", NOW) == NOW - timedelta(weeks=1)


def test_required_app_and_step_bounds() -> None:
    with pytest.raises(QueryError, match="parameter app is required"):
        parse_params("app_timeseries", {}, now=NOW)
    with pytest.raises(QueryError, match="parameter app must be"):
        parse_params("app_timeseries", {"app": "0"}, now=NOW)
    with pytest.raises(QueryError, match="parameter step must be at least"):
        parse_params("app_timeseries", {"app": "1", "from": "now-30d", "step": "60"}, now=NOW)
    with pytest.raises(QueryError, match="parameter by must be region or platform"):
        parse_params("breakdown", {"by": "client_net"}, now=NOW)


def test_unknown_query() -> None:
    with pytest.raises(QueryError, match="'nope'"):
        parse_params("nope", {})


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter(name: str) -> None:
    with pytest.raises(QueryError, match="'db'"):
        parse_params(name, {**minimal(name), "db": "system"})


INT_PARAMS = ("app", "limit", "minutes", "min_requests", "step")


BAD_VALUES = [
    ("minutes", "abc"), ("minutes", "1.5"), ("minutes", ""), ("minutes", "0"), ("minutes", "44641"),
    ("minutes", "-5"), ("minutes", " 5"), ("minutes", "1_000"), ("limit", "0"), ("limit", "1001"),
    ("limit", "ten"), ("app", "-1"), ("app", "4294967296"), ("app", "0x10"), ("min_requests", "-1"),
    ("step", "0"), ("step", "86401"),
    ("minutes", "5; DROP TABLE x"), ("app", "1 OR 1=1"), ("limit", "1) UNION SELECT 1 --"),
    ("app", "0 = 0 OR sdk_app_id"), ("minutes", "{minutes:UInt32}"), ("by", "region' OR '1'='1"),
    ("from", "now-1h'; DROP TABLE x --"), ("to", "{end_ms:Int64}"),
]


@pytest.mark.parametrize(("name", "param", "value"), [
    (name, param, value) for name in NAMES for param, value in BAD_VALUES
    if param in {p.name for p in QUERIES[name].params}
])
def test_bad_values(name: str, param: str, value: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_params(name, {**minimal(name), param: value}, now=NOW)
    assert f"parameter {param} " in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(NAMES), st.sampled_from([*INT_PARAMS, "by", "from", "to"]), st.text(max_size=30))
def test_anything_parsed_is_typed_and_bounded(name: str, param: str, value: str) -> None:
    raw = {**minimal(name), param: value}
    try:
        out = parse_params(name, raw, now=NOW)
    except QueryError as exc:
        assert param in str(exc) or "from" in str(exc)
        return
    for key, v in out.items():
        if key == "by":
            assert v in ("region", "platform")
        else:
            assert type(v) is int and -(2**63) <= v < 2**63


_FIELD = re.compile(r"\{([^{}]*)\}")


@pytest.mark.parametrize("name", NAMES)
def test_sql_uses_only_bound_parameters(name: str) -> None:
    query = QUERIES[name]
    types = query.bound_types()
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
    assert set(parse_params(name, minimal(name), now=NOW)) == set(types)
    # no Python-style format fields that would interpolate text ({0}, {}, {x!r}, %s), no leftovers
    assert "{}" not in query.sql and "<<" not in query.sql
    assert "%s" not in query.sql and "%(" not in query.sql


# --- every query on a seeded store finds the incident ---------------------------------------------

A, B, C = 1400000001, 1400000002, 1400000003  # A: the incident; B: renamed in the registry; C: unnamed
INCIDENT_IFACE, INCIDENT_REGION = "v4/openim/sendmsg", "ap-singapore"
INCIDENT_CODE, INCIDENT_CAUSE = 10002, "msg store shard 7 timeout"
IFACES = ("v4/openim/sendmsg", "v4/group_open_http_svc/get_group_info", "v4/sns/friend_get")
REGIONS = ("ap-singapore", "ap-guangzhou", "eu-frankfurt")
PLATFORMS = ("iOS", "Android")


def seed_rows(t1: datetime) -> list[list[Any]]:
    """20 minutes of traffic for three apps; in the last 10 minutes app A's sendmsg in ap-singapore
    fails 80% of the time with one cause and takes 900 ms."""
    rows = []
    t0 = t1 - timedelta(minutes=20)
    for minute in range(20):
        for app in (A, B, C):
            for i in range(30):
                at = t0 + timedelta(minutes=minute, seconds=i * 2)
                iface, region = IFACES[i % 3], REGIONS[(i // 3) % 3]
                code, cause, latency = 0, "", 20 + (i * 7 + minute) % 40
                if i % 25 == 0:
                    code, cause = 70001, "UserSig expired"
                if app == A and minute >= 10 and iface == INCIDENT_IFACE and region == INCIDENT_REGION:
                    latency = 900
                    if i % 5:
                        code, cause = INCIDENT_CODE, INCIDENT_CAUSE
                rows.append([at, app, iface, f"r{app}-{minute}-{i}", "203.0.113.0/24", latency, code, cause, region,
                             PLATFORMS[i % 2], "t1", 0, minute * 100 + i, 0])
    return rows


CHILD = textwrap.dedent("""
    import json, sys
    from datetime import datetime
    import clickhouse_connect
    from pipeline.schema import migrations
    from pipeline.ops import queries
    spec = json.load(sys.stdin)
    client = clickhouse_connect.get_client(dsn="chdb://" + spec["store"])
    migrations.apply(client, "imtel")
    rows = [[datetime.fromisoformat(r[0]), *r[1:]] for r in spec["rows"]]
    client.insert("imtel.request_logs", rows, column_names=spec["columns"])
    for app, name, status, updated in spec["apps"]:
        client.command("INSERT INTO imtel.applications (sdk_app_id, name, status, created_at, updated_at) "
                       "VALUES ({a:UInt32}, {n:String}, {s:String}, now(), fromUnixTimestamp64Milli({u:Int64}))",
                       parameters={"a": app, "n": name, "s": status, "u": updated})

    class Store:
        db = "imtel"
        def query(self, sql, params):
            return client.query(sql, parameters=params)

    now = datetime.fromisoformat(spec["now"])
    out = {}
    for key, name, raw in spec["runs"]:
        out[key] = queries.run(Store(), name, queries.parse_params(name, raw, now=now)).as_dict()
    x, c = "['b', 'a', 'c', 'd', 'e'][number % 7 % 5 + 1]", "number % 4 != 0"
    top3 = client.query(f"SELECT number % 3 AS g, {queries._top3(x, c)} FROM numbers({spec['top3_rows']}) "
                        "GROUP BY g ORDER BY g", settings={"max_threads": 4, "max_block_size": 997})
    out["top3"] = {"columns": ["g", "top"], "rows": top3.result_rows}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    t1 = now - timedelta(minutes=1)
    window = {"from": (t1 - timedelta(minutes=10)).isoformat(), "to": t1.isoformat()}
    runs = [
        ("health", "app_health", {**window, "min_requests": "50"}),
        ("failing", "top_failing", window),
        ("slow", "slow_interfaces", {**window, "min_requests": "50"}),
        ("causes", "top_causes", window),
        ("change", "error_rate_change", {**window, "min_requests": "50"}),
        ("regions", "breakdown", {**window, "app": str(A), "min_requests": "10"}),
        ("platforms", "breakdown", {**window, "app": str(A), "by": "platform"}),
        ("series", "app_timeseries", {**window, "app": str(A)}),
        ("series_10s", "app_timeseries", {**window, "app": str(A), "step": "10"}),
        ("apps", "apps", {}),
        ("empty", "top_causes", {"from": "now-3h", "to": "now-2h"}),
        ("default_range", "app_health", {}),
    ]
    ms = int(now.timestamp() * 1000)
    spec = {
        "store": str(tmp_path_factory.mktemp("queries") / "store"), "now": now.isoformat(), "runs": runs,
        "top3_rows": TOP3_ROWS,
        "rows": [[r[0].isoformat(), *r[1:]] for r in seed_rows(t1)],
        "columns": ["request_time", "sdk_app_id", "interface", "request_id", "client_net", "latency_ms", "error_code",
                    "exception", "region", "platform", "src_topic_id", "src_partition", "src_offset", "src_index"],
        "apps": [[A, "Acme Chat", "active", ms], [B, "Old name", "active", ms - 60_000],
                 [B, "Beta Social", "active", ms]],
    }
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(spec), capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: [dict(zip(v["columns"], r, strict=True)) for r in v["rows"]] for k, v in raw.items()}


def test_app_health_worst_app_first_with_registry_names(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = results["health"]
    assert rows[0]["sdk_app_id"] == A
    names = {r["sdk_app_id"]: r["app_name"] for r in rows}
    assert names == {A: "Acme Chat", B: "Beta Social", C: str(C)}  # latest registry row wins; C falls back
    assert rows[0]["success_rate"] < min(r["success_rate"] for r in rows[1:])
    assert all(r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"] for r in rows)
    assert sum(r["n_requests"] for r in rows) == 3 * 10 * 30  # minute resolution: exactly the 10 minutes
    assert results["default_range"], "the default range (last 15 minutes) sees the seeded traffic"


def test_top_failing_finds_the_interface_and_cause(results: dict[str, list[dict[str, Any]]]) -> None:
    top = results["failing"][0]
    assert (top["sdk_app_id"], top["app_name"], top["interface"]) == (A, "Acme Chat", INCIDENT_IFACE)
    assert top["top_causes"][0] == INCIDENT_CAUSE and top["top_codes"][0] == INCIDENT_CODE


def test_slow_interfaces_finds_the_slow_pair(results: dict[str, list[dict[str, Any]]]) -> None:
    top = results["slow"][0]
    assert (top["sdk_app_id"], top["interface"]) == (A, INCIDENT_IFACE)
    assert top["p95_ms"] >= 800 and all(r["p95_ms"] < 100 for r in results["slow"][1:])


def test_top_causes_finds_the_cause(results: dict[str, list[dict[str, Any]]]) -> None:
    top = results["causes"][0]
    assert (top["sdk_app_id"], top["error_code"], top["exception"]) == (A, INCIDENT_CODE, INCIDENT_CAUSE)
    assert top["top_interfaces"] == [INCIDENT_IFACE] and top["top_regions"] == [INCIDENT_REGION]
    assert 0.5 < top["share_of_app_failures"] <= 1
    assert results["empty"] == []


def test_error_rate_change_finds_the_app_that_got_worse(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = results["change"]
    top = rows[0]
    assert top["sdk_app_id"] == A and top["change"] > 0.05
    assert top["requests_before"] == top["requests_now"] == 300
    assert top["error_rate_before"] == pytest.approx(20 / 300, abs=1e-5)
    assert all(abs(r["change"]) < 0.01 for r in rows[1:])


def test_breakdown_finds_the_region(results: dict[str, list[dict[str, Any]]]) -> None:
    regions = results["regions"]
    assert regions[0]["dimension"] == "region" and regions[0]["value"] == INCIDENT_REGION
    assert regions[0]["top_causes"][0] == INCIDENT_CAUSE
    assert {r["value"] for r in regions} == set(REGIONS)
    assert {r["value"] for r in results["platforms"]} == set(PLATFORMS)
    assert sum(r["requests"] for r in results["platforms"]) == 300


def test_app_timeseries_shows_the_step(results: dict[str, list[dict[str, Any]]]) -> None:
    series = results["series"]
    assert len(series) == 10 and sum(r["requests"] for r in series) == 300
    times = [datetime.fromisoformat(r["time"]) for r in series]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(times))
    assert all(r["error_rate"] > 0.1 and r["p99_ms"] >= 800 for r in series)
    assert len(results["series_10s"]) == 60


def test_top3_counts_exactly_and_breaks_ties_by_value(results: dict[str, list[dict[str, Any]]]) -> None:
    """topK's tie order followed thread merge order, so one report listed "ap-guangzhou, ap-seoul" and
    the next "ap-seoul, ap-guangzhou" for the same rows. Here 'a'/'b' tie, as do 'c'/'d'/'e', read by
    4 threads in 997-row blocks: the order must be count first, value second, every time."""
    expected = {}
    for g in range(3):
        counts = Counter("bacde"[n % 7 % 5] for n in range(g, TOP3_ROWS, 3) if n % 4 != 0)
        expected[g] = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
    assert {r["g"]: r["top"] for r in results["top3"]} == expected
    assert all(top[:2] == ["a", "b"] for top in expected.values())  # the data really has the ties


def test_apps_lists_the_registry(results: dict[str, list[dict[str, Any]]]) -> None:
    assert [(r["sdk_app_id"], r["name"]) for r in results["apps"]] == [(A, "Acme Chat"), (B, "Beta Social")]
