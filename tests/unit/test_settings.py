"""pipeline/config/settings.py: defaults validate; every bad value is a one-line SettingsError naming its IMTEL_
variable; *_FILE secrets are read; secrets are masked; the ClickHouse URL is normalised. The environment is
always passed as a dict (os.environ is never touched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config.settings import EMBEDDED_BATCH_ROWS, SECRET_FIELDS, SERVER_BATCH_ROWS, Settings, SettingsError


def test_defaults_validate() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.problem() is None
    assert Settings.from_env({"UNRELATED": "x", "IMTEL": "y"}) == Settings()


def test_values_are_converted() -> None:
    s = Settings.from_env({"IMTEL_BATCH_MAX_RECORDS": "1000", "IMTEL_BATCH_MAX_SECONDS": "0.5",
                           "IMTEL_WEB_PORT": "8080", "IMTEL_PII_MODE": "drop"})
    assert (s.batch_max_records, s.batch_max_seconds, s.web_port, s.pii_mode) == (1000, 0.5, 8080, "drop")


def test_rows_per_insert_default_to_the_store_and_yield_to_the_setting() -> None:
    # a server: large inserts (fewer parts for the engine); chDB in the process: smaller (its memory is ours)
    server = Settings.from_env({"IMTEL_CLICKHOUSE_DSN": "https://ch.example:8443"})
    embedded = Settings.from_env({"IMTEL_CLICKHOUSE_DSN": "chdb://./data/clickhouse"})
    assert (server.batch_max_records, server.batch_rows) == (0, SERVER_BATCH_ROWS)
    assert (embedded.batch_max_records, embedded.batch_rows) == (0, EMBEDDED_BATCH_ROWS)
    assert EMBEDDED_BATCH_ROWS < SERVER_BATCH_ROWS
    for dsn in ("https://ch.example:8443", "chdb://./data/clickhouse"):
        assert Settings.from_env({"IMTEL_CLICKHOUSE_DSN": dsn, "IMTEL_BATCH_MAX_RECORDS": "7"}).batch_rows == 7


@pytest.mark.parametrize(("var", "value"), [
    ("IMTEL_BATCH_MAX_RECORDS", "abc"),
    ("IMTEL_BATCH_MAX_RECORDS", "-1"),
    ("IMTEL_BATCH_MAX_RECORDS", "1000001"),
    ("IMTEL_BATCH_MAX_RECORDS", "1.5"),
    ("IMTEL_BATCH_MAX_SECONDS", "x"),
    ("IMTEL_BATCH_MAX_SECONDS", "0.01"),
    ("IMTEL_BATCH_MAX_SECONDS", "nan"),
    ("IMTEL_CONSUME_MAX_MESSAGES", "0"),
    ("IMTEL_PII_MODE", "foo"),
    ("IMTEL_WEB_PORT", "70000"),
    ("IMTEL_WEB_PORT", "0"),
    ("IMTEL_METRICS_TOP_APPS", "1001"),
    ("IMTEL_KAFKA_MAX_POLL_INTERVAL_MS", "10"),
    ("IMTEL_TOPIC_PARTITIONS", "0"),
    ("IMTEL_CLICKHOUSE_DSN", "ftp://x"),
    ("IMTEL_CLICKHOUSE_DATABASE", "imtel; DROP"),
    ("IMTEL_CLICKHOUSE_COMPRESSION", "gzip"),
    ("IMTEL_KAFKA_BOOTSTRAP", "  "),
    ("IMTEL_LOG_LEVEL", "verbose"),
])
def test_bad_value_names_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value})
    message = str(info.value)
    assert var in message
    assert "\n" not in message


def test_hash_mode_needs_key() -> None:
    with pytest.raises(SettingsError, match="IMTEL_PII_HASH_KEY") as info:
        Settings.from_env({"IMTEL_PII_MODE": "hash"})
    assert "\n" not in str(info.value)
    with pytest.raises(SettingsError, match="IMTEL_PII_HASH_KEY") as info:
        Settings.from_env({"IMTEL_PII_MODE": "hash", "IMTEL_PII_HASH_KEY": "short-secret"})
    assert "short-secret" not in str(info.value)
    assert Settings.from_env({"IMTEL_PII_MODE": "hash", "IMTEL_PII_HASH_KEY": "k" * 16}).pii_hash_key == "k" * 16


def test_secret_files_are_read(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("0123456789abcdef-secret\n")
    pw = tmp_path / "pw"
    pw.write_text("  hunter2hunter2 \n")
    s = Settings.from_env({"IMTEL_PII_MODE": "hash", "IMTEL_PII_HASH_KEY_FILE": str(key),
                           "IMTEL_CLICKHOUSE_PASSWORD_FILE": str(pw),
                           "IMTEL_KAFKA_SASL_PASSWORD_FILE": str(pw)})
    assert s.pii_hash_key == "0123456789abcdef-secret"
    assert s.clickhouse_password == "hunter2hunter2"
    assert s.kafka_sasl_password == "hunter2hunter2"


def test_direct_value_wins_over_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file")
    s = Settings.from_env({"IMTEL_CLICKHOUSE_PASSWORD": "direct", "IMTEL_CLICKHOUSE_PASSWORD_FILE": str(pw)})
    assert s.clickhouse_password == "direct"


def test_file_only_for_secrets(tmp_path: Path) -> None:
    f = tmp_path / "user"
    f.write_text("someone")
    assert Settings.from_env({"IMTEL_CLICKHOUSE_USER_FILE": str(f)}).clickhouse_user == "default"


@pytest.mark.parametrize("var", ["IMTEL_PII_HASH_KEY_FILE", "IMTEL_CLICKHOUSE_PASSWORD_FILE",
                                 "IMTEL_KAFKA_SASL_PASSWORD_FILE"])
def test_missing_secret_file(tmp_path: Path, var: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: str(tmp_path / "nope")})
    assert var in str(info.value)
    assert "\n" not in str(info.value)


def test_secret_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="IMTEL_CLICKHOUSE_PASSWORD_FILE"):
        Settings.from_env({"IMTEL_CLICKHOUSE_PASSWORD_FILE": str(tmp_path)})


def test_non_utf8_secret_file(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_bytes(b"\xff\xfe" + b"k" * 20)
    with pytest.raises(SettingsError, match="IMTEL_PII_HASH_KEY_FILE"):
        Settings.from_env({"IMTEL_PII_MODE": "hash", "IMTEL_PII_HASH_KEY_FILE": str(f)})


def test_redacted_masks_secrets() -> None:
    s = Settings.from_env({"IMTEL_PII_MODE": "hash", "IMTEL_PII_HASH_KEY": "K" * 20,
                           "IMTEL_CLICKHOUSE_PASSWORD": "pw-secret", "IMTEL_KAFKA_SASL_PASSWORD": "sasl-secret",
                           "IMTEL_KAFKA_SASL_USERNAME": "alice", "IMTEL_WEB_TOKEN": "W" * 32})
    red = s.redacted()
    for name in SECRET_FIELDS:
        assert red[name] == "***"
    text = repr(red)
    for secret in ("K" * 20, "pw-secret", "sasl-secret", "W" * 32):
        assert secret not in text
    assert red["kafka_sasl_username"] == "alice"
    assert red["pii_mode"] == "hash"
    assert Settings().redacted()["clickhouse_password"] == ""  # nothing to mask


def test_clickhouse_url_relative_chdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"IMTEL_CLICKHOUSE_DSN": "chdb://./data/x"})
    expected = (tmp_path / "data" / "x").resolve()
    assert s.clickhouse_url == f"chdb://{expected}"
    assert s.clickhouse_url.startswith("chdb:///")
    assert s.chdb_path == expected
    assert s.embedded_store


def test_clickhouse_url_default_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().clickhouse_url == f"chdb://{(tmp_path / 'data' / 'clickhouse').resolve()}"


@pytest.mark.parametrize("dsn", ["http://ch:8123", "https://user@ch.example:8443/db"])
def test_clickhouse_url_http_unchanged(dsn: str) -> None:
    s = Settings.from_env({"IMTEL_CLICKHOUSE_DSN": dsn})
    assert s.clickhouse_url == dsn
    assert s.chdb_path is None
    assert not s.embedded_store


def test_clickhouse_url_absolute_chdb_unchanged() -> None:
    assert Settings(clickhouse_dsn="chdb:///var/lib/imtel").clickhouse_url == "chdb:///var/lib/imtel"


@pytest.mark.parametrize(("protocol", "kind", "tls"), [
    ("PLAINTEXT", None, False), ("SSL", "SSLCredentials", True),
    ("SASL_PLAINTEXT", "SASLCredentials", False), ("SASL_SSL", "SASLCredentials", True)])
def test_faust_gets_the_same_kafka_security_as_the_confluent_clients(protocol: str, kind: str | None,
                                                                     tls: bool) -> None:
    from pipeline.worker.app import broker_credentials

    s = Settings.from_env({"IMTEL_KAFKA_SECURITY_PROTOCOL": protocol, "IMTEL_KAFKA_SASL_USERNAME": "u",
                           "IMTEL_KAFKA_SASL_PASSWORD": "p"})
    creds = broker_credentials(s)
    assert (type(creds).__name__ if creds is not None else None) == kind
    context = getattr(creds, "context", None) or getattr(creds, "ssl_context", None)
    assert (context is not None) == tls
    assert s.kafka_config()["security.protocol"] == protocol


def test_repr_never_shows_a_credential_written_into_the_dsn() -> None:
    s = Settings.from_env({"IMTEL_CLICKHOUSE_DSN": "https://bob:hunter2@ch:8443", "IMTEL_CLICKHOUSE_PASSWORD": "pw-x"})
    assert "hunter2" not in repr(s) and "pw-x" not in repr(s) and "hunter2" not in str(s)
    assert "https://***@ch:8443" in repr(s) and s.clickhouse_dsn == "https://bob:hunter2@ch:8443"
