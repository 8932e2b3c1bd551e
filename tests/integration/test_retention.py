"""Retention is enforced by the engine: rows past each table's TTL vanish after a merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_sql

pytestmark = pytest.mark.integration


def test_rows_past_ttl_are_gone_after_merge(tmp_path: Path) -> None:
    store = tmp_path / "store"
    logs_cols = ("(request_time, sdk_app_id, interface, request_id, client_net, latency_ms, error_code, "
                 "region, platform)")
    rows = run_sql(store, [
        f"INSERT INTO imtel.request_logs {logs_cols} VALUES "
        "(now64(3) - INTERVAL 8 DAY, 1, 'v4/openim/sendmsg', 'old', '203.0.113.0/24', 5, 0, 'r', 'p'), "
        "(now64(3) - INTERVAL 1 HOUR, 1, 'v4/openim/sendmsg', 'fresh', '203.0.113.0/24', 5, 0, 'r', 'p')",
        "INSERT INTO imtel.interface_stats_1m (minute, sdk_app_id, interface, source, src_partition, requests) "
        "VALUES (toStartOfMinute(now() - INTERVAL 3 DAY), 1, 'i', 'log', 0, 5), "
        "(toStartOfMinute(now() - INTERVAL 10 MINUTE), 1, 'i', 'log', 0, 7)",
        "INSERT INTO imtel.monitoring_samples (window_start, sdk_app_id, interface, window_seconds, requests, "
        "failures, latency_avg_ms, reporter) VALUES (now64(3) - INTERVAL 3 DAY, 1, 'i', 60, 9, 0, 1, 'g'), "
        "(now64(3) - INTERVAL 5 MINUTE, 1, 'i', 60, 11, 0, 1, 'g')",
        "INSERT INTO imtel.applications (sdk_app_id, name, status, created_at, terminated_at) VALUES "
        "(1, 'gone', 'terminated', now() - INTERVAL 100 DAY, now() - INTERVAL 61 DAY), "
        "(2, 'ended recently', 'terminated', now() - INTERVAL 100 DAY, now() - INTERVAL 10 DAY), "
        "(3, 'active', 'active', now() - INTERVAL 400 DAY, NULL)",
        "OPTIMIZE TABLE imtel.request_logs FINAL", "OPTIMIZE TABLE imtel.interface_stats_1m FINAL",
        "OPTIMIZE TABLE imtel.monitoring_samples FINAL", "OPTIMIZE TABLE imtel.applications FINAL",
        "SELECT request_id FROM imtel.request_logs",
        "SELECT sum(requests) FROM imtel.interface_stats_1m",
        "SELECT sum(requests) FROM imtel.monitoring_samples",
        "SELECT sdk_app_id FROM imtel.applications ORDER BY sdk_app_id",
    ])
    assert rows[-4] == [["fresh"]]
    # 7 inserted directly, 1 and 11 folded in by the views from the fresh log row and sample; the rows
    # the views derived from the expired log row and sample (1 and 9) expired with the 5
    assert rows[-3] == [[7 + 1 + 11]]
    assert rows[-2] == [[11]]
    assert rows[-1] == [[2], [3]]
