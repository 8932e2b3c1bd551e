"""The ``imtel-data-retention`` dashboard: rows, oldest row and expiry per table against the retention
policy, parts and disk usage (ClickHouse ``system.parts``), oldest-row age gauges (Prometheus)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from pipeline.config.policy import load_policy
from pipeline.monitoring.panels import CH, DB, JOB, SQL, Layout, bar_panel, new_board, promql, table_panel, ts

TIME_COLUMNS = {
    "request_logs": "request_time",
    "monitoring_samples": "window_start",
    "interface_stats_1m": "minute",
    "dead_letters": "ingest_time",
    "applications": "updated_at",
}


def retention_tables() -> list[tuple[str, str, int]]:
    """(table, policy name, retention days) for every table the policy names, in policy order."""
    return [
        (t, c.policy_name, c.retention_days)
        for c in load_policy().categories.values()
        for t in c.tables
        if t in TIME_COLUMNS
    ]


def data_retention() -> dashboard.Dashboard:
    board = new_board(
        "imtel-data-retention",
        "IM telemetry data retention",
        "Rows, oldest row and expiry of every table against the retention policy "
        "(schemas/retention.yaml); parts and disk usage.",
        "now-8d",
        "5m",
    )
    lay = Layout(board)
    tables = retention_tables()
    lay.row("Against the policy")
    union = "\nUNION ALL\n".join(
        f"SELECT '{t}' AS table, '{name}' AS policy, {days} AS policy_days, count() AS rows,\n"
        f"       min({TIME_COLUMNS[t]}) AS oldest, max({TIME_COLUMNS[t]}) AS newest,\n"
        f"       dateDiff('second', min({TIME_COLUMNS[t]}), now()) / 86400 AS oldest_age_days\n"
        f"FROM {DB}.{t}"
        for t, name, days in tables
        if t != "applications"
    )
    lay.add(
        table_panel(
            "Oldest row per table vs policy",
            [SQL(union, table_format=True)],
            "oldest_age_days may exceed policy_days by up to one partition (a day for logs, an hour "
            "for monitoring data) plus the hourly TTL merge; the ImtelRetentionExceeded alert "
            "allows for that. Configuration Data is kept while an app is in use.",
        ),
        w=24,
        h=7,
    )
    ages = " or\n".join(
        f'max by (table) (imtel_oldest_row_age_seconds{{{JOB},table="{t}"}}) / {days * 86400}'
        for t, _, days in tables
        if t != "applications"
    )
    lay.add(
        bar_panel(
            "Oldest row age / retention (Prometheus)",
            [promql(ages, "{{table}}", instant=True)],
            "percentunit",
            "1 = the oldest row is as old as the policy allows.",
            ((None, "green"), (0.9, "orange"), (1, "red")),
            max_val=1.2,
        ),
        w=12,
    )
    lay.add(
        table_panel(
            "Applications registry (Configuration Data)",
            [
                SQL(
                    f"""
        SELECT status, count() AS apps, countIf(terminated_at IS NOT NULL) AS terminated,
               min(terminated_at) AS oldest_termination
        FROM (
            SELECT sdk_app_id, argMax(status, updated_at) AS status,
                   argMax(terminated_at, updated_at) AS terminated_at
            FROM {DB}.applications
            GROUP BY sdk_app_id
        )
        GROUP BY status
        ORDER BY status""",
                    table_format=True,
                )
            ],
            "Terminated apps are deleted 60 days after termination (TTL).",
        ),
        w=12,
    )

    lay.row("Storage (system.parts)")
    lay.add(
        table_panel(
            "Parts and disk usage per table",
            [
                SQL(
                    f"""
        SELECT table, count() AS parts, uniqExact(partition) AS partitions, sum(rows) AS rows,
               sum(bytes_on_disk) AS bytes_on_disk,
               sum(data_uncompressed_bytes) / nullIf(sum(data_compressed_bytes), 0) AS compression_ratio,
               minIf(delete_ttl_info_min, delete_ttl_info_min > toDateTime(0)) AS next_ttl_expiry
        FROM system.parts
        WHERE database = '{DB}' AND active
        GROUP BY table
        ORDER BY bytes_on_disk DESC""",
                    table_format=True,
                )
            ],
            unit="short",
        ),
        w=14,
        h=8,
    )
    lay.add(
        bar_panel(
            "Disk usage per table",
            [
                SQL(
                    f"""
        SELECT table, sum(bytes_on_disk) AS bytes_on_disk
        FROM system.parts
        WHERE database = '{DB}' AND active
        GROUP BY table
        ORDER BY bytes_on_disk DESC""",
                    table_format=True,
                )
            ],
            "bytes",
            ds=CH,
        ),
        w=10,
        h=8,
    )
    lay.add(
        table_panel(
            "Partitions (oldest first)",
            [
                SQL(
                    f"""
        SELECT table, partition, count() AS parts, sum(rows) AS rows, sum(bytes_on_disk) AS bytes_on_disk,
               min(delete_ttl_info_min) AS ttl_expires
        FROM system.parts
        WHERE database = '{DB}' AND active AND table != 'schema_migrations'
        GROUP BY table, partition
        ORDER BY table, partition
        LIMIT 500""",
                    table_format=True,
                )
            ],
        ),
        w=24,
        h=9,
    )

    lay.row("Rows over time")
    for t, _, _ in tables:
        if t == "applications":
            continue
        col = TIME_COLUMNS[t]
        lay.add(
            ts(
                f"{t} rows by event time",
                [
                    SQL(f"""
            SELECT $__timeInterval({col}) AS time, count() AS rows
            FROM {DB}.{t}
            WHERE $__timeFilter({col})
            GROUP BY time
            ORDER BY time""")
                ],
                ds=CH,
                interval="1h",
            ),
            w=12,
            h=7,
        )
    return board
