"""The ``imtel-pipeline-health`` dashboard: events in/out, dead letters by reason, consumer lag,
insert latency and batch sizes, end-to-end freshness, restarts and rebalances (Prometheus)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, timeseries

from pipeline.monitoring.panels import (
    JOB,
    PROM,
    Layout,
    Steps,
    new_board,
    promql,
    red_from,
    stat_panel,
    table_panel,
    ts,
)
from pipeline.monitoring.slo import load_spec


def per_worker(title: str, expr: str, unit: str = "short") -> timeseries.Panel:
    """A time series of one PromQL expression with one series per worker (``instance``)."""
    return ts(title, [promql(expr, "{{instance}}")], unit)


def pipeline_health() -> dashboard.Dashboard:
    spec = load_spec()
    p = spec.pipeline
    board = new_board(
        "imtel-pipeline-health",
        "IM telemetry pipeline health",
        "Kafka -> workers -> ClickHouse: throughput, dead letters, lag, inserts, freshness, restarts.",
        "now-3h",
        "30s",
    )
    lay = Layout(board)
    lag = f"max by (topic, partition) (imtel_consumer_lag{{{JOB}}})"
    lay.row("Status")

    def status(title: str, expr: str, steps: Steps, unit: str = "short") -> None:
        lay.add(stat_panel(title, promql(expr), unit, steps=steps), w=4, h=4)

    up = ((None, "red"), (1, "green"))
    status("Workers up", f"sum(up{{{JOB}}})", up)
    status("ClickHouse reachable (workers)", f"sum(imtel_clickhouse_up{{{JOB}}})", up)
    status("Workers paused", f"sum(imtel_consumption_paused{{{JOB}}})", red_from(1))
    status("Consumer lag (records)", f"sum({lag})", red_from(float(p["consumer_lag_records"])))
    status(
        "Freshness p99 (5m)",
        f"histogram_quantile(0.99, sum by (le) (rate(imtel_freshness_seconds_bucket{{{JOB}}}[5m])))",
        red_from(float(p["freshness_p99_seconds"])),
        "s",
    )
    status(
        "Since last write",
        f"time() - max(imtel_last_write_timestamp_seconds{{{JOB}}})",
        red_from(float(p["write_stall_seconds"])),
        "s",
    )

    lay.row("Throughput")
    lay.add(
        ts(
            "Records in (consumed) by topic",
            [
                promql(
                    f"sum by (topic) (rate(imtel_records_consumed_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}}",
                ),
                promql(
                    f"sum by (topic) (rate(imtel_messages_consumed_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}} messages",
                    "B",
                ),
                promql(
                    # 0 until a replay skips anything (the counter only exists once it did)
                    f"sum by (topic) (rate(imtel_records_skipped_total{{{JOB}}}[$__rate_interval]))\n"
                    f"or sum by (topic) (rate(imtel_records_consumed_total{{{JOB}}}[$__rate_interval])) * 0",
                    "{{topic}} skipped (replay)",
                    "C",
                ),
            ],
            "ops",
        ),
        w=12,
    )
    lay.add(
        ts(
            "Rows out (acknowledged by ClickHouse) by table",
            [
                promql(
                    f"sum by (table) (rate(imtel_rows_written_total{{{JOB}}}[$__rate_interval]))", "{{table}}"
                ),
                promql(
                    f"sum(rate(imtel_offset_commits_total{{{JOB}}}[$__rate_interval]))", "offset commits", "B"
                ),
            ],
            "ops",
        ),
        w=12,
    )
    lay.add(
        ts(
            "Dead letters by reason",
            [
                promql(
                    f"sum by (topic, reason) (rate(imtel_records_invalid_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}} {{reason}}",
                ),
                promql(
                    f"sum by (topic) (rate(imtel_dead_letters_produced_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}} produced",
                    "B",
                ),
            ],
            "ops",
            stack=False,
        ),
        w=12,
    )
    lay.add(
        ts(
            "Dead-letter ratio by topic",
            [
                promql(
                    f"sum by (topic) (rate(imtel_records_invalid_total{{{JOB}}}[$__rate_interval]))\n"
                    f"/ sum by (topic) (rate(imtel_records_consumed_total{{{JOB}}}[$__rate_interval]))",
                    "{{topic}}",
                )
            ],
            "percentunit",
            f"Alert above {float(p['dead_letter_ratio']):.0%} for 10 minutes.",
        ),
        w=12,
    )

    lay.row("Kafka consumer")
    lay.add(ts("Consumer lag by partition", [promql(lag, "{{topic}}/{{partition}}")], "short"), w=12)
    lay.add(
        ts(
            "Assigned partitions by worker",
            [
                promql(
                    f"sum by (instance, topic) (imtel_assigned_partitions{{{JOB}}})", "{{instance}} {{topic}}"
                )
            ],
        ),
        w=12,
    )

    lay.row("ClickHouse inserts")
    lay.add(
        ts(
            "Insert latency p50 / p99 by table",
            [
                promql(
                    f"histogram_quantile({q}, sum by (table, le) "
                    f"(rate(imtel_insert_duration_seconds_bucket{{{JOB}}}[$__rate_interval])))",
                    f"{{{{table}}}} p{round(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.99, "B"))
            ],
            "s",
        ),
        w=8,
    )
    lay.add(
        ts(
            "Batch size (rows per insert)",
            [
                promql(
                    f"sum by (table) (rate(imtel_insert_batch_rows_sum{{{JOB}}}[$__rate_interval]))\n"
                    f"/ sum by (table) (rate(imtel_insert_batch_rows_count{{{JOB}}}[$__rate_interval]))",
                    "{{table}} avg",
                ),
                promql(
                    f"histogram_quantile(0.99, sum by (table, le) "
                    f"(rate(imtel_insert_batch_rows_bucket{{{JOB}}}[$__rate_interval])))",
                    "{{table}} p99",
                    "B",
                ),
            ],
        ),
        w=8,
    )
    lay.add(
        ts(
            "Insert failures by kind",
            [
                promql(
                    # a flat 0 per table while nothing failed, rather than "No data"
                    f"sum by (table, kind) (rate(imtel_insert_failures_total{{{JOB}}}[$__rate_interval]))\n"
                    f"or on (table) sum by (table) (rate(imtel_rows_written_total{{{JOB}}}[$__rate_interval])) * 0",
                    "{{table}} {{kind}}",
                )
            ],
            "ops",
        ),
        w=8,
    )

    lay.row("Freshness")
    lay.add(
        ts(
            "End-to-end freshness (event time -> queryable)",
            [
                promql(
                    f"histogram_quantile({q}, sum by (le) (rate(imtel_freshness_seconds_bucket{{{JOB}}}"
                    "[$__rate_interval])))",
                    f"p{round(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            "s",
        ),
        w=12,
    )
    since_write = f"time() - max by (instance) (imtel_last_write_timestamp_seconds{{{JOB}}})"
    lay.add(per_worker("Time since last acknowledged write", since_write, "s"), w=12)

    lay.row("Workers")
    restarts = f"changes(process_start_time_seconds{{{JOB}}}[$__rate_interval])"
    lay.add(per_worker("Restarts (process start time changes)", restarts), w=6)
    lay.add(
        ts(
            "Rebalances",
            [
                promql(
                    f"sum by (event) (increase(imtel_rebalances_total{{{JOB}}}[$__rate_interval]))",
                    "{{event}}",
                ),
                promql(
                    f"sum(increase(imtel_recovery_rebuilt_minutes_total{{{JOB}}}[$__rate_interval]))",
                    "recovery: minutes rebuilt",
                    "B",
                ),
            ],
        ),
        w=6,
    )
    lay.add(per_worker("CPU", f"rate(process_cpu_seconds_total{{{JOB}}}[$__rate_interval])", "percentunit"), w=6)
    lay.add(per_worker("Memory (RSS)", f"process_resident_memory_bytes{{{JOB}}}", "bytes"), w=6)
    lay.add(
        table_panel(
            "Versions running",
            [promql(f"count by (version) (imtel_build_info{{{JOB}}})", "{{version}}", instant=True)],
            ds=PROM,
        ),
        w=24,
        h=5,
    )
    return board
