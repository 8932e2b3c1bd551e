"""Grafana dashboards as code: committed JSON is what the code builds, the structure is what Grafana
and the SREs need, and every panel query runs: PromQL parses (promtool) and uses only metrics the
pipeline exports; every ClickHouse SQL, macros expanded, runs on an embedded chDB store with the
migrations applied (with a little data in it, so the queries also return rows)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from pipeline.monitoring import dashboards
from pipeline.monitoring.boards import build_all
from pipeline.monitoring.metrics import Metrics
from pipeline.monitoring.panels import CH, PROM
from tests.support import grafana_macros as g

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "grafana" / "provisioning"
UIDS = {"imtel-api-overview", "imtel-app-drilldown", "imtel-pipeline-health", "imtel-data-retention"}
# The run's clock, floored to the minute: the seeded rows sit in TTL'd tables (Monitoring Data is kept
# 2 days), so a fixed date would make the engine drop them and every panel query come back empty.
END = datetime.now(UTC).replace(second=0, microsecond=0)
START = END - timedelta(hours=3)
APPS = ("1400000001", "1400000002")


@pytest.fixture(scope="module")
def models() -> dict[str, dict]:
    return build_all()


def panels(model: dict) -> list[dict]:
    return [p for p in g.iter_panels(model) if p.get("type") != "row"]


def exported_series() -> set[str]:
    """Every series name the pipeline's registry exposes (histograms with their suffixes), plus
    the standard process_* metrics and Prometheus' own ``up``."""
    names = {"up", "process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes"}
    for metric in Metrics().registry.collect():
        if metric.type == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        elif metric.type == "counter":
            names.add(f"{metric.name}_total")
        else:
            names.add(metric.name)
    return names


def series_in(expr: str) -> set[str]:
    """Metric names an expression selects (recording-rule names, level:metric:op, excluded)."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b((?:imtel|process)_[a-z0-9_]+|up)\b(?=\s*[{\[)])", no_strings))


def test_committed_json_equals_generated():
    stale = dashboards.stale()
    assert not stale, f"regenerate with `python -m pipeline.monitoring.dashboards`: {stale}"


def test_four_dashboards_with_sane_layout(models):
    assert set(models) == UIDS
    for uid, model in models.items():
        ids = [p["id"] for p in g.iter_panels(model)]
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids"
        for p in g.iter_panels(model):
            pos = p["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"{uid}/{p.get('title')}: off the grid"
        for p in panels(model):
            assert p["title"] and p["targets"], f"{uid}: panel without title or query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] in {PROM.uid, CH.uid}
                assert t["datasource"] == p["datasource"], f"{uid}/{p['title']}: mixed datasources"


def test_drilldown_has_multi_select_app_variable(models):
    variables = {v["name"]: v for v in models["imtel-app-drilldown"]["templating"]["list"]}
    app = variables["sdk_app_id"]
    assert app["type"] == "query" and app["multi"] and app["includeAll"]
    assert app["datasource"]["type"] == "grafana-clickhouse-datasource"
    for p in panels(models["imtel-app-drilldown"]):
        for t in p["targets"]:
            text = t.get("rawSql") or t.get("expr")
            assert "sdk_app_id" in text, f"drill-down panel {p['title']} ignores the app selection"


def test_history_panels_use_the_plugin_macros(models):
    sqls = [q for q in g.panel_queries(START, END, dashboards=models) if q.kind == "clickhouse"]
    raw = "\n".join(q.raw for q in sqls)
    for macro in ("$__timeFilter(", "$__timeInterval(", "$__conditionalAll("):
        assert macro in raw
    for q in sqls:
        # (the retention dashboard counts every row on purpose)
        if q.dashboard == "imtel-data-retention":
            continue
        if "interface_stats_1m" in q.raw and not q.panel.startswith("variable"):
            assert "source = 'log'" in q.raw, f"{q.panel}: mixes log- and sample-derived stats"
        if (
            re.search(r"\bFROM imtel\.(request_logs|interface_stats_1m)\b", q.raw)
            and "UNION ALL" not in q.raw
        ):
            assert "$__timeFilter(" in q.raw, f"{q.panel}: scans the whole table"


def test_issue_panels_exist(models):
    titles = {uid: " | ".join(p["title"].lower() for p in panels(m)) for uid, m in models.items()}
    for uid, words in {
        "imtel-api-overview": [
            "success rate per app",
            "error rate per app",
            "p50 / p95 / p99",
            "volume",
            "error-budget burn",
            "top failing interfaces",
            "exception causes",
        ],
        "imtel-app-drilldown": [
            "per interface",
            "error code",
            "exception causes",
            "region",
            "platform",
            "slowest requests",
        ],
        "imtel-pipeline-health": [
            "records in",
            "rows out",
            "dead letters by reason",
            "consumer lag",
            "insert latency",
            "batch size",
            "freshness",
            "restarts",
            "rebalances",
        ],
        "imtel-data-retention": ["oldest row", "parts and disk usage", "disk usage"],
    }.items():
        for word in words:
            assert word in titles[uid], f"{uid}: no panel about {word!r}"


def test_promql_uses_only_exported_metrics(models):
    known = exported_series()
    for q in g.panel_queries(START, END, dashboards=models):
        if q.kind == "promql":
            unknown = series_in(q.expanded) - known
            assert not unknown, f"{q.dashboard}/{q.panel}: unknown metrics {unknown}"
            assert "$" not in q.expanded


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (apt-get install prometheus; CI installs it)",
)
def test_every_promql_parses(models, tmp_path):
    exprs = [
        q.expanded
        for vars_ in ({}, {"sdk_app_id": list(APPS)})
        for q in g.panel_queries(START, END, vars_, models)
        if q.kind == "promql"
    ]
    rules = {
        "groups": [
            {"name": "panels", "rules": [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- macro expansion ---------------------------------------------------------------------------


def test_conditional_all_and_variables():
    sql = "WHERE $__conditionalAll(sdk_app_id IN (${sdk_app_id:singlequote}), $sdk_app_id) AND x = 1"
    assert g.expand_sql(sql, START, END) == "WHERE 1=1 AND x = 1"
    assert g.expand_sql(sql, START, END, {"sdk_app_id": "$__all"}) == "WHERE 1=1 AND x = 1"
    assert (
        g.expand_sql(sql, START, END, {"sdk_app_id": list(APPS)})
        == "WHERE sdk_app_id IN ('1400000001','1400000002') AND x = 1"
    )


def test_time_macros():
    f, t = int(START.timestamp()), int(END.timestamp())
    assert (
        g.expand_sql("WHERE $__timeFilter(minute)", START, END)
        == f"WHERE minute >= toDateTime({f}) AND minute <= toDateTime({t})"
    )
    assert (
        g.expand_sql("SELECT $__timeInterval(toDate(request_time)) AS t", START, END, interval_s=60)
        == "SELECT toStartOfInterval(toDateTime(toDate(request_time)), INTERVAL 60 second) AS t"
    )
    assert (
        g.expand_sql("SELECT $__interval_s, $__fromTime", START, END, interval_s=30)
        == f"SELECT 30, toDateTime({f})"
    )
    assert g.interval_seconds(START, END) == 11 and g.interval_seconds(START, END, 60) == 60
    with pytest.raises(ValueError, match="unexpanded"):
        g.expand_sql("SELECT $__unknownMacro(x)", START, END)


def test_promql_expansion():
    expr = 'rate(x{app=~"$sdk_app_id"}[$__rate_interval])'
    assert g.expand_promql(expr, START, END) == 'rate(x{app=~".*"}[60s])'
    assert (
        g.expand_promql(expr, START, END, {"sdk_app_id": list(APPS)})
        == 'rate(x{app=~"(1400000001|1400000002)"}[60s])'
    )


# --- every SQL runs on the embedded engine -------------------------------------------------------


@pytest.fixture(scope="module")
def chdb(tmp_path_factory):
    clickhouse_connect = pytest.importorskip("clickhouse_connect")
    from pipeline.schema import migrations

    path = tmp_path_factory.mktemp(f"chdb-dash-{uuid.uuid4().hex[:8]}")
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    migrations.apply(client, "imtel")
    t0 = int((END - timedelta(minutes=30)).timestamp())
    rows = []
    for i in range(200):
        app = APPS[i % 2]
        iface = ("v4/openim/sendmsg", "v4/group_open_http_svc/send_group_msg")[i % 3 == 0]
        code, exc = (70001, "'timeout talking to msg store'") if i % 5 == 0 else (0, "''")
        rows.append(
            f"(fromUnixTimestamp64Milli({(t0 + i * 5) * 1000}), {app}, '{iface}', 'req-{i}', "
            f"'203.0.113.0/24', {20 + (i * 37) % 900}, {code}, {exc}, "
            f"'{('ap-guangzhou', 'ap-singapore')[i % 2]}', '{('iOS', 'Android', 'Web')[i % 3]}', "
            f"'t1', {i % 4}, {i}, 0)"
        )
    client.command(
        "INSERT INTO imtel.request_logs (request_time, sdk_app_id, interface, request_id, client_net, "
        "latency_ms, error_code, exception, region, platform, src_topic_id, src_partition, "
        "src_offset, src_index) VALUES " + ", ".join(rows)
    )
    client.command(
        "INSERT INTO imtel.monitoring_samples (window_start, sdk_app_id, interface, window_seconds, "
        "requests, failures, latency_avg_ms, latency_max_ms, reporter, src_topic_id, src_partition, "
        f"src_offset, src_index) VALUES (fromUnixTimestamp64Milli({t0 * 1000}), "
        f"{APPS[0]}, 'v4/openim/sendmsg', 60, 100, 1, 42.5, 300, 'sdk', 't2', 0, 0, 0)"
    )
    client.command(
        "INSERT INTO imtel.dead_letters (ingest_time, src_topic, src_topic_id, src_partition, "
        "src_offset, src_index, reason, detail, payload_bytes, ingest_batch) VALUES "
        f"(fromUnixTimestamp64Milli({t0 * 1000}), 'request_logs', 't1', 0, 7, 0, 'schema', "
        "'latency_ms: not an integer', 120, 1)"
    )
    # A terminated app: its TTL (termination + 60 days) is in the future.
    client.command(
        "INSERT INTO imtel.applications (sdk_app_id, name, status, created_at, terminated_at) VALUES "
        f"({APPS[0]}, 'Demo chat', 'terminated', now() - INTERVAL 10 DAY, now())"
    )
    return client


@pytest.mark.parametrize(
    "variables",
    [{}, {"sdk_app_id": list(APPS), "interface": ["v4/openim/sendmsg"]}, {"sdk_app_id": [APPS[1]]}],
    ids=["all", "two-apps-one-interface", "one-app"],
)
def test_every_sql_runs_on_chdb_and_returns_rows(chdb, models, variables):
    failures, empty = [], []
    queries = [q for q in g.panel_queries(START, END, variables, models) if q.kind == "clickhouse"]
    assert len(queries) >= 20
    for q in queries:
        try:
            result = chdb.query(q.expanded)
        except Exception as exc:  # report every broken query at once
            failures.append(f"{q.dashboard}/{q.panel}: {str(exc).splitlines()[0][:300]}")
            continue
        if not result.result_rows:
            empty.append(f"{q.dashboard}/{q.panel}")
    assert not failures, "\n".join(failures)
    assert not empty, f"queries returned no rows on seeded data: {empty}"


# --- provisioning ----------------------------------------------------------------------------------


def test_provisioning_matches_dashboards(models):
    ds = yaml.safe_load((PROVISIONING / "datasources" / "imtel.yaml").read_text())["datasources"]
    by_uid = {x["uid"]: x for x in ds}
    assert by_uid[PROM.uid]["type"] == "prometheus"
    assert by_uid[CH.uid]["type"] == "grafana-clickhouse-datasource"
    assert by_uid[CH.uid]["jsonData"]["defaultDatabase"] == "imtel"
    used = {t["datasource"]["uid"] for m in models.values() for p in panels(m) for t in p["targets"]}
    assert used <= set(by_uid)
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "imtel.yaml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
    for uid in models:
        assert json.loads((dashboards.OUT_DIR / f"{uid}.json").read_text())["uid"] == uid


def test_apps_are_named_from_the_registry(chdb, models):
    """The app picker shows "name (id)" and filters on the id; per-app ClickHouse series and the slowest
    requests carry the registry name; an app the registry does not know keeps its bare id."""
    by_panel = {q.panel: q for q in g.panel_queries(START, END, {}, models) if q.kind == "clickhouse"}
    options = [tuple(r) for r in chdb.query(by_panel["variable sdk_app_id"].expanded).result_rows]
    assert set(options) == {(APPS[0], f"Demo chat ({APPS[0]})"), (APPS[1], APPS[1])}
    series = chdb.query(by_panel["Success rate per app (interface_stats_1m)"].expanded).result_rows
    assert {r[1] for r in series} == {f"Demo chat ({APPS[0]})", APPS[1]}
    slowest = chdb.query(by_panel["Slowest requests"].expanded)
    names = {str(r[1]): r[2] for r in slowest.result_rows}
    assert slowest.column_names[2] == "app_name" and names == {APPS[0]: "Demo chat", APPS[1]: APPS[1]}
