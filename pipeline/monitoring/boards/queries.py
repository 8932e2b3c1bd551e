"""PromQL and ClickHouse SQL fragments shared by the API overview and application drill-down boards."""

from __future__ import annotations

from pipeline.monitoring.panels import DB, JOB

# The registry names apps when it knows them; panels keep working with bare ids otherwise.
APP_NAMES = (
    f"(SELECT sdk_app_id, argMax(name, updated_at) AS app_name FROM {DB}.applications GROUP BY sdk_app_id)"
)
# Series label / option text of an app joined as ``s`` with APP_NAMES as ``n``: "name (id)", or the id.
APP_LABEL = (
    "if(ifNull(n.app_name, '') = '', toString(s.sdk_app_id), "
    "concat(n.app_name, ' (', toString(s.sdk_app_id), ')'))"
)


def rate_by_app(outcome: str | None = None, window: str = "$__rate_interval", extra: str = "") -> str:
    sel = f'{JOB},outcome="{outcome}"' if outcome else JOB
    return f"sum by (app) (rate(imtel_requests_total{{{sel}{extra}}}[{window}]))"


def latency_quantile(q: float, by: str = "app", extra: str = "") -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate(imtel_request_latency_seconds_bucket{{{JOB}{extra}}}[$__rate_interval])))"
    )
