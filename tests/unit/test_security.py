"""Security at unit level: secrets stay out of everything printable, every name that reaches SQL text is
validated, every value from a user is a bound parameter, and the leak scanner used by the privacy
test really finds an IP in any rendering.

Process-level checks (wrong credentials against a real broker / HTTP ClickHouse, injection through a
running worker and the CLI) are in ``tests/integration/test_secrets_and_injection.py``.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli
from pipeline.config.settings import Settings, SettingsError, redact_dsn
from pipeline.ops import queries, report
from tests.support.ipscan import Scanner, renderings

SECRET = "pw-Zq8!secret-value"
INJECTIONS = [
    "1; DROP TABLE imtel.request_logs",
    "1 OR 1=1",
    "0) OR (1=1",
    "'; DROP DATABASE imtel; --",
    "15 UNION SELECT client_net FROM imtel.request_logs",
    "{minutes:UInt32}",
    "1e3",
    "\uff10",  # fullwidth digit zero: int() accepts it
    "-1",
    "99999999999999999999",
    "\x00",
]


def secret_settings(tmp_path: Path) -> Settings:
    for name in ("kafka", "ch", "pii"):
        (tmp_path / name).write_text(SECRET + "\n")
    return Settings.from_env({
        "IMTEL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "IMTEL_KAFKA_SASL_USERNAME": "imtel",
        "IMTEL_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "kafka"), "IMTEL_CLICKHOUSE_DSN": "https://ch:8443",
        "IMTEL_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "ch"), "IMTEL_PII_MODE": "hash",
        "IMTEL_PII_HASH_KEY_FILE": str(tmp_path / "pii")})


def test_secrets_from_files_reach_the_clients_but_no_printable_form(tmp_path: Path) -> None:
    """The secret files feed the Kafka config and the ClickHouse login; ``repr``/``str`` (what a log
    line or a traceback with locals shows) and ``redacted()`` never contain them."""
    s = secret_settings(tmp_path)
    assert s.kafka_config()["sasl.password"] == SECRET
    assert s.clickhouse_password == s.pii_hash_key == SECRET
    for text in (repr(s), str(s), repr(s.redacted()), str(Settings.describe())):
        assert SECRET not in text


def test_imtel_settings_prints_no_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    for var, value in {"IMTEL_KAFKA_SASL_PASSWORD": SECRET, "IMTEL_CLICKHOUSE_PASSWORD": SECRET,
                       "IMTEL_PII_HASH_KEY": SECRET, "IMTEL_CLICKHOUSE_DSN": f"https://u:{SECRET}@ch:8443"}.items():
        monkeypatch.setenv(var, value)
    assert cli.main(["settings"]) == 0
    out = capsys.readouterr()
    assert "IMTEL_CLICKHOUSE_PASSWORD" in out.out
    assert SECRET not in out.out + out.err


def test_credentials_in_a_dsn_are_redacted() -> None:
    assert redact_dsn(f"https://bob:{SECRET}@ch.example:8443/?x=1") == "https://***@ch.example:8443/?x=1"
    assert redact_dsn("chdb://./data/clickhouse") == "chdb://./data/clickhouse"
    s = Settings.from_env({"IMTEL_CLICKHOUSE_DSN": f"http://bob:{SECRET}@ch:8123"})
    assert SECRET not in str(s.redacted())


def test_settings_errors_never_echo_a_secret(tmp_path: Path) -> None:
    cases = [{"IMTEL_PII_MODE": "hash", "IMTEL_PII_HASH_KEY": "short" + SECRET[:5]},
             {"IMTEL_KAFKA_SASL_PASSWORD": SECRET, "IMTEL_WEB_PORT": "nope"},
             {"IMTEL_CLICKHOUSE_PASSWORD": SECRET, "IMTEL_CLICKHOUSE_DATABASE": "bad name"}]
    for env in cases:
        with pytest.raises(SettingsError) as info:
            Settings.from_env(env)
        assert SECRET not in str(info.value) and "short" + SECRET[:5] not in str(info.value)
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IMTEL_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "binary")})
    assert SECRET not in str(info.value)


# -- names rendered into SQL or sent to Kafka: validated -------------------------------------------
@pytest.mark.parametrize("name", ["imtel; DROP DATABASE imtel", "imtel.request_logs", "`imtel`", "im tel", "1abc",
                                  "\uff49mtel", "imt\u00e9l", "imtel\n", "", "a" * 65, "imtel--"])
def test_database_names_that_are_not_plain_identifiers_are_refused(name: str) -> None:
    with pytest.raises(SettingsError, match="IMTEL_CLICKHOUSE_DATABASE") as info:
        Settings.from_env({"IMTEL_CLICKHOUSE_DATABASE": name})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["x' ; DROP TABLE imtel.request_logs; --", "a b", "c'", "c\\", "{shard}",
                                  "c\n", "-c", "c" * 129])
def test_cluster_names_that_could_leave_their_quotes_are_refused(name: str) -> None:
    with pytest.raises(SettingsError, match="IMTEL_CLICKHOUSE_CLUSTER"):
        Settings.from_env({"IMTEL_CLICKHOUSE_CLUSTER": name})


def test_valid_names_pass() -> None:
    s = Settings.from_env({"IMTEL_CLICKHOUSE_DATABASE": "imtel_prod2", "IMTEL_CLICKHOUSE_CLUSTER": "prod-eu.1",
                           "IMTEL_TOPIC_REQUEST_LOGS": "im.request-logs_v2"})
    assert (s.clickhouse_database, s.clickhouse_cluster, s.topic_request_logs) == (
        "imtel_prod2", "prod-eu.1", "im.request-logs_v2")


@pytest.mark.parametrize("var", ["IMTEL_TOPIC_REQUEST_LOGS", "IMTEL_TOPIC_MONITORING_SAMPLES",
                                 "IMTEL_TOPIC_DEAD_LETTERS", "IMTEL_TOPIC_APPLICATIONS"])
@pytest.mark.parametrize("name", ["logs'; DROP TABLE imtel.request_logs; --", "a b", "", "t" * 250, "ünï"])
def test_topic_names_are_kafka_names(var: str, name: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: name})


def test_migrate_refuses_a_cluster_argument_that_is_not_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before any connection is opened: nothing reaches a server."""
    assert cli.main(["migrate", "--cluster", "x' ON CLUSTER 'y"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imtel migrate: --cluster") and "\n" not in err


def test_migrate_print_shows_the_schema_and_connects_to_nothing(capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """For review before the migration Job runs (010 drops a column): the statements as they would be
    sent, in apply order, with nothing opened; the store's directory is not even created."""
    from pipeline.schema import migrations

    store = tmp_path / "never-created"
    monkeypatch.setenv("IMTEL_CLICKHOUSE_DSN", f"chdb://{store}")
    assert cli.main(["migrate", "--print"]) == 0
    out = capsys.readouterr().out
    assert not store.exists()
    labels = [line[3:] for line in out.splitlines() if line.startswith("-- ")]
    assert labels == [m.label for m in migrations.render("imtel")]
    assert "ALTER TABLE imtel.request_logs  DROP COLUMN IF EXISTS ingest_batch;" in out

    assert cli.main(["migrate", "--print", "--cluster", "imtel"]) == 0
    out = capsys.readouterr().out
    labels = [line[3:] for line in out.splitlines() if line.startswith("-- ")]
    assert labels[0] == "local database" and labels[-1] == "distributed tables"
    assert out.count(";\n") == len(migrations.cluster_statements("imtel", "imtel"))
    assert not store.exists()


# -- values: typed, range-checked, bound -----------------------------------------------------------
class RecordingStore:
    """Captures what a named query sends to the engine."""

    db = "imtel"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        self.calls.append((sql, parameters))
        return type("R", (), {"column_names": [], "result_rows": []})()


def _defaults(name: str) -> list[dict[str, str]]:
    """Two different valid parameter sets of a named query (the SQL text must not change)."""
    out: list[dict[str, str]] = [{}, {}]
    for p in queries.QUERIES[name].params:
        if p.name in ("from", "to"):
            continue
        if p.name == "minutes":
            out[0][p.name], out[1][p.name] = "5", "600"
        elif p.name in ("app",):
            out[0][p.name], out[1][p.name] = "1", "1400000001"
        elif p.name == "limit":
            out[0][p.name], out[1][p.name] = "3", "7"
    return out


@pytest.mark.parametrize("name", sorted(queries.QUERIES))
def test_named_query_values_are_bound_parameters_never_sql_text(name: str) -> None:
    """Whatever the values, the SQL sent is the same text: values travel as ``{name:Type}`` bound
    parameters (ClickHouse parses them as data of that type, never as SQL)."""
    texts = set()
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    for raw in _defaults(name):
        store = RecordingStore()
        queries.run(store, name, queries.parse_params(name, raw, now))
        (sql, params), = store.calls
        texts.add(sql)
        for key in params:
            assert "{" + key + ":" in sql, f"parameter {key} is not used as a bound placeholder"
    assert len(texts) == 1


@pytest.mark.parametrize("name", sorted(queries.QUERIES))
@pytest.mark.parametrize("value", INJECTIONS)
def test_named_query_parameters_refuse_injection(name: str, value: str) -> None:
    for p in queries.QUERIES[name].params:
        raw = {p.name: value}
        try:
            typed = queries.parse_params(name, raw)
        except queries.QueryError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 300
            continue
        # accepted: then it was a plain value of the parameter's type (e.g. "-1" is not, "1e3" is not)
        assert all(isinstance(v, int | float | datetime) or v is None for v in typed.values()), typed


@pytest.mark.parametrize("query_name", ["app_health; DROP TABLE imtel.request_logs", "../metrics",
                                        "app_health?x=1", "APP_HEALTH", ""])
def test_unknown_query_names_are_refused_before_any_connection(query_name: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["query", query_name, "minutes=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imtel query:") and "\n" not in err


@pytest.mark.parametrize("args", [["app_health", "minutes=1; DROP TABLE imtel.request_logs"],
                                  ["app_health", "minutes) OR (1=1=5"], ["app_health", "app=1 OR 1=1"],
                                  ["top_failing", "limit=1;"], ["app_health", "minutes"]])
def test_cli_query_injection_is_a_one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["query", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imtel query:") and "\n" not in err


@pytest.mark.parametrize("raw", [{"app": "1 OR 1=1"}, {"app": "1", "from": "now'; DROP TABLE x; --"},
                                 {"app": "1", "to": "2026-11-22' OR '1'='1"}, {"app": "1", "x": "1"},
                                 {"app": "0"}, {"app": "1", "from": "now-99999d"}])
def test_report_parameters_refuse_injection(raw: dict[str, str]) -> None:
    with pytest.raises(report.ReportError) as info:
        report.parse_request(raw)
    assert "\n" not in str(info.value)


# -- the leak scanner of the privacy test ----------------------------------------------------------
ADDRESSES = ["203.0.113.7", "198.51.100.200", "2001:db8:1:2::5", "2001:db8:abcd:12::1"]


@pytest.mark.parametrize("address", ADDRESSES)
def test_scanner_finds_every_rendering_in_any_context(address: str) -> None:
    scanner = Scanner(ADDRESSES)
    for form in renderings(address):
        for text in (form, f"client {form} failed", f"ip={form},", f"[{form}]", f"ip:{form}:", f'"{form}"',
                     form.upper()):
            hits = scanner.scan(text, "t")
            assert hits and {h.address for h in hits} == {address}, text


@pytest.mark.parametrize("text", ["203.0.113.0/24", "203.0.113.70", "1203.0.113.7", "203.0.113.7.5",
                                  "2001:db8:1::/48", "2001:db8:1:2::55", "22:40:18,083", "1795386839.881",
                                  "3405803784", "cb007107-4d5b", "h:3f2a9c0d11e4b7a2"])
def test_scanner_does_not_flag_networks_neighbours_or_numbers(text: str) -> None:
    assert Scanner(ADDRESSES).scan(text, "t") == []


def test_scanner_ignores_values_that_are_not_addresses() -> None:
    scanner = Scanner(["999.1.2.3", "203.0.113.7"])
    assert [h.address for h in scanner.scan("999.1.2.3 and 203.0.113.7", "t")] == ["203.0.113.7"]
    assert ipaddress.ip_address("203.0.113.7") in scanner.targets


# --- the worker's web port (pipeline/worker/app.py: web_guard) -------------------------------------------------

TOKEN = "t" * 43


def _refusal(path: str, **headers: str) -> int | None:
    from pipeline.worker.app import refusal

    refused = refusal(path, {"Host": "127.0.0.1:6066", **headers}, TOKEN, frozenset({"imtel.internal"}))
    return None if refused is None else refused[0]


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_scrape_and_probe_paths_are_open(path: str) -> None:
    assert _refusal(path, Host="anything.example", Origin="http://x") is None


@pytest.mark.parametrize("path", ["/", "/router", "/table", "/table/x", "/graph", "/stats/", "/queries/a/b"])
def test_faust_pages_and_unknown_paths_are_not_found_even_with_the_token(path: str) -> None:
    assert _refusal(path, Authorization=f"Bearer {TOKEN}") == 404


@pytest.mark.parametrize("path", ["/queries/app_health", "/report", "/audit", "/apps", "/erase"])
def test_data_paths_need_the_token_a_local_host_and_no_page(path: str) -> None:
    auth = f"Bearer {TOKEN}"
    assert _refusal(path, Authorization=auth) is None
    assert _refusal(path, Authorization=auth, Host="localhost:6066") is None
    assert _refusal(path, Authorization=auth, Host="[::1]:6066") is None
    assert _refusal(path, Authorization=auth, Host="imtel.internal") is None  # IMTEL_WEB_ALLOWED_HOSTS
    assert _refusal(path) == 401
    assert _refusal(path, Authorization=TOKEN) == 401
    assert _refusal(path, Authorization=f"Bearer {TOKEN[:-1]}") == 401
    assert _refusal(path, Authorization=f"Basic {TOKEN}") == 401
    assert _refusal(path, Authorization=auth, Host="rebound.example:6066") == 403
    assert _refusal(path, Authorization=auth, Host="127.0.0.1.rebound.example") == 403
    assert _refusal(path, Authorization=auth, Host="") == 403
    assert _refusal(path, Authorization=auth, Origin="null") == 403
    assert _refusal(path, Authorization=auth, **{"Sec-Fetch-Site": "same-origin"}) == 403


def test_the_generated_token_is_per_run_and_private(tmp_path: Path) -> None:
    import stat

    from pipeline.worker.app import web_token

    s = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    first, second = web_token(s), web_token(s)
    path = tmp_path / "data" / "worker.token"
    assert first != second and path.read_text() == second and len(second) >= 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert web_token(Settings.from_env({}, data_dir=str(tmp_path / "x"), web_token="s" * 32)) == "s" * 32
    assert not (tmp_path / "x").exists()  # a configured token is never written anywhere


def test_web_token_is_a_secret_setting(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("k" * 40 + "\n")
    s = Settings.from_env({"IMTEL_WEB_TOKEN_FILE": str(tmp_path / "tok")})
    assert s.web_token == "k" * 40 and "k" * 40 not in repr(s) and s.redacted()["web_token"] == "***"
    with pytest.raises(SettingsError, match="IMTEL_WEB_TOKEN") as err:
        Settings.from_env({"IMTEL_WEB_TOKEN": "short-secret"})
    assert "short-secret" not in str(err.value)
    with pytest.raises(SettingsError, match="IMTEL_WEB_ALLOWED_HOSTS"):
        Settings.from_env({"IMTEL_WEB_ALLOWED_HOSTS": "ok.example, bad host:80"})
