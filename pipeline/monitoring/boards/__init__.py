"""The four Grafana dashboards, one module each, and :func:`build_all`, which turns them into the JSON Grafana imports.

ClickHouse panels and the app picker name apps from the ``applications`` registry ("name (id)"; the bare
id when the registry does not know the app).
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from pipeline.monitoring.boards.api_overview import api_overview
from pipeline.monitoring.boards.app_drilldown import app_drilldown
from pipeline.monitoring.boards.data_retention import data_retention
from pipeline.monitoring.boards.pipeline_health import pipeline_health

BUILDERS = (api_overview, app_drilldown, pipeline_health, data_retention)


def build_all() -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON (as Grafana imports it)."""
    out = {}
    for make in BUILDERS:
        model = json.loads(json.dumps(make().build(), cls=JSONEncoder))
        out[model["uid"]] = model
    return out
