"""pipeline/ops/audit.py and the TTL reading of pipeline/schema/migrations.py, on facts shaped like the live ones:
a fresh deployment passes; a longer TTL, a missing TTL, an old row, an unset / infinite / too long topic
retention (dead letters included) each fail with the object named; drift is reported but fails only
in strict mode."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.config.policy import DAY_MS, load_policy
from pipeline.config.settings import Settings
from pipeline.ops import audit
from pipeline.ops.audit import DRIFT, OK, VIOLATION
from pipeline.schema import migrations
from pipeline.schema.topics import topic_specs

POLICY = load_policy()
SPECS = topic_specs(Settings(), POLICY)
ENGINE_TTL = {  # as ClickHouse shows them in system.tables.engine_full
    "request_logs": "toDate(request_time) + toIntervalDay(7)",
    "dead_letters": "toDate(ingest_time) + toIntervalDay(7)",
    "monitoring_samples": "toStartOfHour(window_start) + toIntervalDay(2)",
    "interface_stats_1m": "toStartOfHour(minute) + toIntervalDay(2)",
    "applications": "coalesce(terminated_at, toDateTime('2099-12-31 00:00:00', 'UTC')) + toIntervalDay(60)",
    "erasure_log": "toDateTime(erased_at) + toIntervalDay(365)",
}


def table_facts(**ttl: str | None) -> dict[str, Any]:
    ttls = {**ENGINE_TTL, **ttl}
    tables = [{"database": "imtel", "table": t, "engine": "MergeTree", "ttl": v} for t, v in ttls.items()]
    tables.append({"database": "imtel", "table": "schema_migrations", "engine": "ReplacingMergeTree", "ttl": None})
    return {"database": "imtel", "tables": tables, "oldest": {t: {"rows": 1, "oldest_age_s": 3600.0} for t in ttls},
            "apps": {"retention_days": {}, "oldest_age_s": {}}}


def topic_facts(**override: dict[str, str] | None) -> dict[str, Any]:
    configs: dict[str, dict[str, str] | None] = {s.name: dict(s.config) for s in SPECS}
    configs.update(override)
    return {"configs": configs}


def run(tables: dict[str, Any] | None = None, topics: dict[str, Any] | None = None) -> audit.Report:
    return audit.evaluate(tables or table_facts(), topics or topic_facts(), SPECS, POLICY)


def by_name(report: audit.Report) -> dict[str, audit.Check]:
    return {c.name: c for c in report.checks}


def test_fresh_deployment_passes() -> None:
    report = run()
    assert report.verdict() == report.verdict(strict=True) == "pass"
    names = {c.name for c in report.checks}
    assert {f"imtel.{t}" for t in ENGINE_TTL} | {s.name for s in SPECS} == names  # schema_migrations skipped
    assert "verdict: PASS" in audit.render_text(report)


@pytest.mark.parametrize(("ttl", "needle"), [
    ("toDate(request_time) + toIntervalDay(30)", "TTL keeps rows 30d, policy allows 7d"),
    (None, "no unconditional TTL DELETE rule"),
    ("toDate(request_time) + toIntervalDay(1) WHERE sdk_app_id = 1", "no unconditional TTL DELETE rule"),
    ("toDate(request_time) + toIntervalMonth(1)", "TTL keeps rows 31d"),
    ("toDate(request_time) + toIntervalDay(7) + toIntervalHour(2)", "TTL keeps rows 7d2h"),
])
def test_a_table_ttl_longer_than_the_policy_fails_naming_the_table(ttl: str | None, needle: str) -> None:
    report = run(table_facts(request_logs=ttl))
    check = by_name(report)["imtel.request_logs"]
    assert check.status == VIOLATION and needle in check.detail
    assert report.verdict() == "fail"
    assert audit.render_text(report).splitlines()[-1].startswith("verdict: FAIL (1 of ")
    assert "imtel.request_logs" in audit.render_text(report).splitlines()[-1]


def test_a_shorter_ttl_is_drift_not_violation() -> None:
    report = run(table_facts(monitoring_samples="toStartOfHour(window_start) + toIntervalDay(1)"))
    assert by_name(report)["imtel.monitoring_samples"].status == DRIFT
    assert report.verdict() == "pass" and report.verdict(strict=True) == "fail"


def test_rows_older_than_the_policy_are_reported() -> None:
    facts = table_facts()
    facts["oldest"]["request_logs"]["oldest_age_s"] = 8 * 86_400.0
    facts["oldest"]["monitoring_samples"]["oldest_age_s"] = 2 * 86_400.0 + 1800  # within the 1 h grace
    check = by_name(run(facts))["imtel.request_logs"]
    assert check.status == VIOLATION and check.oldest == "8d" and check.oldest_s == 8 * 86_400
    assert "oldest row is 8d old, policy allows 7d" in check.detail
    assert by_name(run(facts))["imtel.monitoring_samples"].status == OK


def test_terminated_apps_count_from_termination() -> None:
    facts = table_facts()
    facts["oldest"]["applications"]["oldest_age_s"] = 61 * 86_400.0  # oldest termination
    assert by_name(run(facts))["imtel.applications"].status == VIOLATION
    facts["oldest"]["applications"]["oldest_age_s"] = None  # no terminated app
    assert by_name(run(facts))["imtel.applications"].status == OK


def test_unlisted_and_missing_tables_are_drift() -> None:
    facts = table_facts()
    facts["tables"] = [t for t in facts["tables"] if t["table"] != "erasure_log"]
    facts["tables"].append({"database": "imtel", "table": "scratch", "engine": "MergeTree", "ttl": None})
    checks = by_name(run(facts))
    assert checks["imtel.erasure_log"].status == DRIFT and "run imtel migrate" in checks["imtel.erasure_log"].detail
    assert checks["imtel.scratch"].status == DRIFT


def test_distributed_tables_are_skipped_and_local_ones_checked() -> None:
    facts = table_facts()
    local = [dict(t, database="imtel_local") for t in facts["tables"]]
    facts["tables"] = [dict(t, engine="Distributed", ttl=None) for t in facts["tables"]] + local
    report = audit.evaluate(facts, topic_facts(), SPECS, POLICY, cluster="main")
    assert report.verdict() == "pass"
    assert {c.name for c in report.checks if c.kind == "table"} == {f"imtel_local.{t}" for t in ENGINE_TTL}
    assert any("Distributed" in n for n in report.notes)


@pytest.mark.parametrize(("config", "needle"), [
    ({"cleanup.policy": "delete"}, "retention.ms not reported"),  # the bundled broker: broker default
    ({"cleanup.policy": "delete", "retention.ms": "-1", "segment.ms": "3600000"}, "forever"),
    ({"cleanup.policy": "compact", "retention.ms": "1000", "segment.ms": "1000"}, "never deletes"),
    ({"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS), "segment.ms": "3600000"}, "records may live 7d1h5m"),
    ({"cleanup.policy": "delete", "retention.ms": str(DAY_MS)}, "segment 7d (default)"),  # segment.ms unset
])
def test_dead_letter_topic_retention_beyond_its_shortest_category_fails(config: dict[str, str], needle: str) -> None:
    name = Settings().topic_dead_letters
    report = run(topics=topic_facts(**{name: config}))
    check = by_name(report)[name]
    assert check.status == VIOLATION and needle in check.detail + check.actual
    assert check.policy == "<= 2d (shortest it carries)"
    assert name in audit.render_text(report).splitlines()[-1]


def test_a_shorter_topic_retention_is_drift_and_a_missing_topic_too() -> None:
    logs, apps = Settings().topic_request_logs, Settings().topic_applications
    report = run(topics=topic_facts(**{logs: {"cleanup.policy": "delete", "retention.ms": str(DAY_MS),
                                              "segment.ms": "3600000"}, apps: None}))
    checks = by_name(report)
    assert checks[logs].status == DRIFT and "retention.ms=86400000 (want 600900000)" in checks[logs].detail
    assert checks[apps].status == DRIFT and checks[apps].actual == "missing"
    assert report.verdict() == "pass"


def test_an_unreachable_broker_fails_every_topic() -> None:
    report = run(topics={"error": "KafkaError: _TRANSPORT"})
    topics = [c for c in report.checks if c.kind == "topic"]
    assert len(topics) == 4 and all(c.status == VIOLATION and "cannot read" in c.detail for c in topics)


def test_the_policy_topic_settings_keep_the_worst_case_within_the_limit() -> None:
    report = run()
    for spec in SPECS:
        check = by_name(report)[spec.name]
        worst = int(spec.config["retention.ms"]) + int(spec.config["segment.ms"]) + POLICY.kafka.retention_check_ms
        assert check.status == OK and worst == POLICY.topic_limit_ms()[spec.logical]


def test_per_app_retention_is_checked_per_table() -> None:
    facts = table_facts()
    facts["apps"] = {"retention_days": {"7": 2, "8": 1, "9": 30},
                     "oldest_age_s": {"request_logs": {"7": 3 * 86_400.0, "8": 600.0, "9": 20 * 86_400.0},
                                      "monitoring_samples": {"7": 86_400.0}}}
    checks = by_name(run(facts))
    assert checks["app 7 request_logs"].status == VIOLATION
    assert "the app's retention is 2d" in checks["app 7 request_logs"].detail
    assert checks["app 8 request_logs"].status == OK
    assert "app 7 monitoring_samples" not in checks  # 2 days is not shorter than Monitoring Data's 2 days
    assert "app 9 request_logs" not in checks  # longer than the policy: no effect, the table TTL rules


def test_json_output_is_machine_readable() -> None:
    doc = json.loads(audit.render_json(run(table_facts(request_logs=None))))
    assert doc["verdict"] == "fail"
    check = next(c for c in doc["checks"] if c["name"] == "imtel.request_logs")
    assert check["status"] == "violation" and check["limit_s"] == 7 * 86_400


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (45, "45s"), (3600, "1h"), (600_900, "6d22h55m"),
                                               (7 * 86_400, "7d")])
def test_human_durations(seconds: float | None, text: str) -> None:
    assert audit.human(seconds) == text


# -- TTL reading (pipeline/schema/migrations.py) -------------------------------------------------------------


def test_ttl_clause_from_templates_and_engine_full() -> None:
    engine_full = ("MergeTree PARTITION BY toDate(request_time) ORDER BY (sdk_app_id, interface, request_time) "
                   "TTL toDate(request_time) + toIntervalDay(7) "
                   "SETTINGS ttl_only_drop_parts = 1, index_granularity = 8192")
    assert migrations.ttl_clause(engine_full) == "toDate(request_time) + toIntervalDay(7)"
    assert migrations.ttl_clause("MergeTree ORDER BY x SETTINGS index_granularity = 8192") is None
    create = ("CREATE TABLE t (x DateTime TTL x + INTERVAL 1 DAY, `SETTINGS` String) ENGINE = MergeTree ORDER BY x\n"
              "TTL x + INTERVAL 3 DAY\nSETTINGS a = 1")
    assert migrations.ttl_clause(create) == "x + INTERVAL 3 DAY"  # the column TTL inside (...) is not the table's


def test_template_and_engine_spellings_mean_the_same() -> None:
    desired = migrations.desired_ttls("imtel")
    assert set(desired) == set(ENGINE_TTL)
    for table, ttl in ENGINE_TTL.items():
        assert migrations.same_ttl(desired[table], ttl), table
    assert not migrations.same_ttl(desired["request_logs"], "toDate(request_time) + toIntervalDay(3)")
    assert not migrations.same_ttl(desired["request_logs"], "toDate(ingest_time) + toIntervalDay(7)")


def test_parse_ttl_rules() -> None:
    rules = migrations.parse_ttl("d + toIntervalDay(1) WHERE x = 1, d + INTERVAL 2 WEEK, "
                                 "d + toIntervalDay(3) TO DISK 'b', "
                                 "coalesce(e, toDateTime('2099-01-01, 00:00')) + toIntervalHour(5)")
    assert [(r.base, r.seconds, r.unconditional_delete) for r in rules] == [
        ("d", 86_400, False), ("d", 14 * 86_400, True), ("d", 3 * 86_400, False),
        ("coalesce(e,toDateTime('2099-01-01,00:00'))", 5 * 3600, True)]
    assert migrations.guaranteed_seconds(rules) == 5 * 3600
    assert migrations.guaranteed_seconds(migrations.parse_ttl(None)) is None


class Recorder:
    """Stands in for a client: answers system.tables from a dict, records the commands it gets."""

    def __init__(self, ttls: dict[str, str]) -> None:
        self.ttls, self.commands = ttls, []  # type: ignore[var-annotated]

    def query(self, sql: str) -> Any:
        rows = [(t, f"MergeTree ORDER BY x TTL {v} SETTINGS index_granularity = 8192") for t, v in self.ttls.items()]
        return type("Result", (), {"result_rows": rows})()

    def command(self, sql: str) -> None:
        self.commands.append(sql)


@pytest.mark.parametrize(("cluster", "target"), [("", "imtel.request_logs "),
                                                 ("main", "imtel.request_logs ON CLUSTER 'main' ")])
def test_reconcile_alters_only_what_differs_without_materialising(cluster: str, target: str) -> None:
    client = Recorder({**ENGINE_TTL, "request_logs": "toDate(request_time) + toIntervalDay(30)"})
    changed = migrations.reconcile_ttls(client, "imtel", cluster, POLICY)
    assert changed == ["ttl request_logs: toDate(request_time) + INTERVAL 7 DAY"]
    assert client.commands == [f"ALTER TABLE {target}MODIFY TTL toDate(request_time) + INTERVAL 7 DAY "
                               "SETTINGS materialize_ttl_after_modify = 0"]
    assert migrations.reconcile_ttls(Recorder(ENGINE_TTL), "imtel", cluster, POLICY) == []


def test_cluster_names_are_checked_before_they_reach_sql() -> None:
    with pytest.raises(ValueError, match="not a plain name"):
        migrations.engines("main' ; DROP TABLE x; --")
    assert migrations.data_table("imtel", "request_logs", "main") == "imtel_local.request_logs ON CLUSTER 'main'"


def test_a_record_older_than_the_policy_still_on_a_topic_fails_even_with_right_configs() -> None:
    """Configs prove what the broker was told; the oldest stored record proves it deleted."""
    logs, samples = Settings().topic_request_logs, Settings().topic_monitoring_samples
    facts = {**topic_facts(), "oldest_age_s": {logs: 7 * 86_400.0 + 60, samples: 86_400.0}}
    checks = by_name(run(topics=facts))
    assert checks[logs].status == VIOLATION and "oldest record is 7d1m old, policy allows 7d" in checks[logs].detail
    assert checks[logs].oldest == "7d1m" and checks[samples].status == OK and checks[samples].oldest == "1d"


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


class _HostileStore:
    """system.tables names a table whose name tries to end the identifier and run its own SQL."""

    db = "imtel"
    HOSTILE = "t`; DROP TABLE imtel.request_logs; --\\"

    def __init__(self) -> None:
        self.sql: list[str] = []

    def query(self, sql: str, params: dict[str, Any] | None = None) -> _Rows:
        self.sql.append(sql)
        if "FROM system.tables" in sql:
            return _Rows([("imtel", self.HOSTILE, "MergeTree", "MergeTree ORDER BY x TTL toDate(request_time) + "
                           "toIntervalDay(7) SETTINGS index_granularity = 8192")])
        if "FROM system.columns" in sql:
            return _Rows([(self.HOSTILE, "request_time")])
        return _Rows([(0, 0)])


def test_table_names_from_system_tables_are_quoted_not_spliced() -> None:
    store = _HostileStore()
    facts = audit.table_facts(store)
    oldest = [s for s in store.sql if "dateDiff" in s]
    assert oldest == ["SELECT count(), dateDiff('second', min(`request_time`), now()) "
                      "FROM `imtel`.`t\\`; DROP TABLE imtel.request_logs; --\\\\`"]
    assert facts["oldest"][store.HOSTILE]["rows"] == 0


@pytest.mark.parametrize(("name", "quoted"), [
    ("request_logs", "`request_logs`"),
    ("a`b", "`a\\`b`"),
    ("a\\`b", "`a\\\\\\`b`"),  # an escaped-looking backtick stays inside: backslash first, then backtick
    ("x\\", "`x\\\\`"),  # a trailing backslash cannot escape the closing backtick
])
def test_quote_identifier(name: str, quoted: str) -> None:
    assert audit.quote_identifier(name) == quoted
