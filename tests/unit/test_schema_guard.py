"""A worker on a cluster refuses to start on a schema older than its code (``run.require_schema``).

The store is a stand-in here: what ``schema_migrations`` holds is the only input. The real engine
reads it in ``tests/integration/test_stats_views.py::test_pending_migrations_are_read_from_the_store``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pipeline.config.settings import Settings, SettingsError
from pipeline.schema import migrations
from pipeline.worker.run import require_schema


class Store:
    """Answers the two queries ``migrations.pending`` asks, from a set of applied versions."""

    def __init__(self, versions: set[int] | None, fail: Exception | None = None) -> None:
        self.versions, self.fail = versions, fail
        self.asked: list[str] = []

    def query(self, sql: str, parameters: Any = None) -> Any:
        if self.fail:
            raise self.fail
        self.asked.append(sql)
        rows = ([[int(self.versions is not None)]] if "system.tables" in sql
                else [[v] for v in sorted(self.versions or ())])
        return type("Result", (), {"result_rows": rows})()


def settings() -> Settings:
    return Settings.from_env({"IMTEL_CLICKHOUSE_CLUSTER": "imtel", "IMTEL_CLICKHOUSE_DATABASE": "imtel"})


def test_a_complete_schema_starts_the_worker() -> None:
    store = Store({m.version for m in migrations.render("imtel_local", "imtel")})
    require_schema(store, settings())
    assert any("FROM imtel_local.schema_migrations" in q for q in store.asked)  # the locals carry the versions


def test_a_schema_without_the_views_is_refused_in_one_line() -> None:
    versions = {m.version for m in migrations.render("imtel_local", "imtel")} - {9}
    with pytest.raises(SettingsError) as err:
        require_schema(Store(versions), settings())
    assert str(err.value) == ("the ClickHouse schema of imtel_local lacks 009_stats_views: run `imtel migrate "
                              "--cluster imtel` (the migration Job of this version) before starting these workers")
    with pytest.raises(SettingsError, match="lacks 001_request_logs, 002_monitoring_samples"):
        require_schema(Store(None), settings())  # never migrated: no schema_migrations table at all


def test_an_unreachable_store_does_not_stop_the_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        require_schema(Store(None, fail=OSError("[Errno 111] Connection refused")), settings())
    assert "could not check the ClickHouse schema version (ClickHouse unreachable: connection refused)" in caplog.text
