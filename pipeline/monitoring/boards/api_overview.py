"""The ``imtel-api-overview`` dashboard: success/error rate, latency percentiles and volume per app and
the apps burning their error budget fastest (Prometheus, real time); top failing interfaces and
causes (ClickHouse)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from pipeline.monitoring.boards.queries import (
    JOIN_APP_NAMES,
    LOG_STATS,
    exception_causes,
    latency_quantile,
    rate_by_app,
    stats_ts,
    success_ratio_by_app,
)
from pipeline.monitoring.panels import (
    DB,
    JOB,
    SQL,
    Layout,
    bar_panel,
    new_board,
    promql,
    stat_panel,
    table_panel,
    ts,
)
from pipeline.monitoring.slo import load_spec


def api_overview() -> dashboard.Dashboard:
    spec = load_spec()
    budget = 1 - spec.availability_objective
    lat_budget = 1 - spec.latency_objective
    le = repr(float(spec.latency_threshold_s))
    board = new_board(
        "imtel-api-overview",
        "IM API overview",
        "Success rate, errors and latency of the IM server APIs per application. Real-time panels: "
        "Prometheus (apps beyond the top-N are 'other'); history and causes: ClickHouse.",
        "now-6h",
        "30s",
    )
    lay = Layout(board)
    lay.row("Now (Prometheus)")
    total = f"sum(rate(imtel_requests_total{{{JOB}}}[5m]))"
    lay.add(
        stat_panel(
            "Success rate (5m)",
            promql(f'sum(rate(imtel_requests_total{{{JOB},outcome="success"}}[5m])) / {total}'),
            "percentunit",
            f"SLO: {spec.availability_objective:.3%} of requests succeed.",
            (
                (None, "red"),
                (spec.availability_objective - 4 * budget, "orange"),
                (spec.availability_objective, "green"),
            ),
        ),
        w=6,
        h=5,
    )
    lay.add(stat_panel("Requests/s", promql(total), "reqps"), w=6, h=5)
    lay.add(
        stat_panel(
            "p99 latency (5m)",
            promql(
                f"histogram_quantile(0.99, sum by (le) "
                f"(rate(imtel_request_latency_seconds_bucket{{{JOB}}}[5m])))"
            ),
            "s",
            steps=((None, "green"), (spec.latency_threshold_s, "red")),
        ),
        w=6,
        h=5,
    )
    lay.add(
        stat_panel(
            "Requests within " + f"{spec.latency_threshold_s * 1000:g} ms (5m)",
            promql(
                f'sum(rate(imtel_request_latency_seconds_bucket{{{JOB},le="{le}"}}[5m])) / '
                f"sum(rate(imtel_request_latency_seconds_count{{{JOB}}}[5m]))"
            ),
            "percentunit",
            f"SLO: {spec.latency_objective:.1%}.",
            ((None, "red"), (spec.latency_objective, "green")),
        ),
        w=6,
        h=5,
    )
    lay.add(ts("Success rate per app", [promql(success_ratio_by_app(), "{{app}}")], "percentunit", max_val=1), w=12)
    lay.add(
        ts("Error rate per app (failed requests/s)", [promql(rate_by_app("failure"), "{{app}}")], "reqps"),
        w=12,
    )
    lay.add(
        ts(
            "Latency p50 / p95 / p99 per app",
            [
                promql(latency_quantile(q), f"{{{{app}}}} p{round(q * 100)}", ref)
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            "s",
        ),
        w=12,
    )
    lay.add(ts("Request volume per app", [promql(rate_by_app(), "{{app}}")], "reqps", stack=True), w=12)
    burn = (
        f"topk(10,\n  ({rate_by_app('failure', '1h')} or {rate_by_app(None, '1h')} * 0)\n"
        f"  / {rate_by_app(None, '1h')}\n) / {budget:g}"
    )
    slow_burn = (
        f'topk(10,\n  (1 - sum by (app) (rate(imtel_request_latency_seconds_bucket{{{JOB},le="{le}"}}[1h]))\n'
        f"  / sum by (app) (rate(imtel_request_latency_seconds_count{{{JOB}}}[1h])))\n) / {lat_budget:g}"
    )
    lay.add(
        bar_panel(
            "Fastest error-budget burn (availability, 1h)",
            [promql(burn, "{{app}}", instant=True)],
            "x",
            "Burn rate = 1h error ratio / error budget. 14.4x pages (with 5m), 1x spends the "
            "30-day budget exactly.",
            ((None, "green"), (1, "yellow"), (6, "orange"), (14.4, "red")),
        ),
        w=12,
    )
    lay.add(
        bar_panel(
            "Fastest error-budget burn (latency, 1h)",
            [promql(slow_burn, "{{app}}", instant=True)],
            "x",
            "Burn rate = 1h share of requests slower than the threshold / latency budget.",
            ((None, "green"), (1, "yellow"), (6, "orange"), (14.4, "red")),
        ),
        w=12,
    )

    lay.row("History and causes (ClickHouse)")
    lay.add(stats_ts("Success rate per app (interface_stats_1m)", "success_rate", "app"), w=12)
    lay.add(stats_ts("p95 latency per app (interface_stats_1m)", "p95_ms", "app"), w=12)
    lay.add(
        table_panel(
            "Top failing interfaces",
            [
                SQL(
                    f"""
        SELECT interface, sum(requests) AS total, sum(failures) AS failed,
               failed / nullIf(total, 0) AS error_ratio,
               uniqExactIf(sdk_app_id, failures > 0) AS apps_affected
        FROM {DB}.interface_stats_1m
        WHERE {LOG_STATS}
        GROUP BY interface
        HAVING failed > 0
        ORDER BY failed DESC
        LIMIT 20""",
                    table_format=True,
                )
            ],
        ),
        w=10,
        h=9,
    )
    causes = "uniqExact(sdk_app_id) AS apps, max(request_time) AS last_seen"
    lay.add(
        table_panel(
            "Top exception causes of failing interfaces",
            [SQL(exception_causes(causes, "$__timeFilter(request_time)", 20), table_format=True)],
            "From the raw request logs (7 days).",
        ),
        w=14,
        h=9,
    )
    lay.add(
        table_panel(
            "Apps by failures",
            [
                SQL(
                    f"""
        SELECT s.sdk_app_id AS sdk_app_id, n.app_name AS app_name, s.total AS requests,
               s.failed AS failures, s.failed / nullIf(s.total, 0) AS error_ratio,
               s.latency_ms / nullIf(s.total, 0) AS avg_latency_ms
        FROM (
            SELECT sdk_app_id, sum(requests) AS total, sum(failures) AS failed,
                   sum(latency_sum_ms) AS latency_ms
            FROM {DB}.interface_stats_1m
            WHERE {LOG_STATS}
            GROUP BY sdk_app_id
        ) AS s
        {JOIN_APP_NAMES}
        ORDER BY failures DESC
        LIMIT 50""",
                    table_format=True,
                )
            ],
            "App names come from the applications registry when it has them.",
        ),
        w=24,
        h=9,
    )
    return board
