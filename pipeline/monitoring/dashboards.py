"""Writes the Grafana dashboards to ``grafana/dashboards/<uid>.json``, or with ``--check`` exits 1 when they are stale.

``python -m pipeline.monitoring.dashboards [--check]``. The dashboards themselves are built in
:mod:`pipeline.monitoring.boards` from the toolkit in :mod:`pipeline.monitoring.panels`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.monitoring import generated
from pipeline.monitoring.boards import build_all

OUT_DIR = generated.ROOT / "grafana" / "dashboards"


def render_all() -> dict[str, str]:
    """File name -> file content of every dashboard."""
    return {
        f"{uid}.json": json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for uid, model in build_all().items()
    }


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """Dashboard files under out_dir that differ from, are missing from, or are not in the generated set."""
    return generated.stale(render_all(), out_dir, orphans="*.json")


def main(argv: list[str] | None = None) -> int:
    return generated.main(
        argv, "python -m pipeline.monitoring.dashboards", __doc__.splitlines()[0], render_all, OUT_DIR, "*.json"
    )


if __name__ == "__main__":
    raise SystemExit(main())
