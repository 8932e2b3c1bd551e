"""Windows that hold still: how often a contender runs, and its runs folded into one row. Pure.

A single window of a second or two on a machine whose cores are shared moves with whatever else ran
in that second. So a contender's figure is either one window of at least ``min_window_s`` (only the
slow contenders, sized to reach it on their own record counts: a fast one's window that long says
the host was slow, not that it held still) or the median of ``repeats`` runs (the fast ones, whose
windows would need tens of millions of records to last that long), each field's median taken on
its own, with its min and max beside it. The runs of all contenders are interleaved (run 1 of
each, then run 2 of each, ...) so that a slow stretch of the host spreads over every contender.

``more_runs`` decides whether another run is wanted, ``combine`` folds the runs (measurement
documents, see ``runner.Measurement``) into the row the report shows, keeping every run and every
window's length, ``steadiness`` says which rule a row met.
"""

from __future__ import annotations

import statistics
from typing import Any

REPEATS = 3  # the default number of runs, and the fewest whose median counts as holding still
MIN_WINDOW_S = 15.0
FIELDS = ("seconds", "records_per_s", "cpu_seconds", "cpu_s_per_million", "peak_rss_mb")
RUN_ONLY = ("window",)  # per-run extras that mean nothing once folded


def more_runs(runs: list[dict[str, Any]], repeats: int = REPEATS, min_window_s: float = MIN_WINDOW_S) -> bool:
    """Whether a contender needs another run: not after a void run (the row is void whatever
    follows), not once it has ``repeats`` runs, and not when its only run lasted ``min_window_s``."""
    if not runs:
        return True
    if any(not r.get("correct") for r in runs) or len(runs) >= repeats:
        return False
    return not (len(runs) == 1 and (runs[0].get("seconds") or 0.0) >= min_window_s)


def spread(values: list[float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of the known values; None when there are none."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return statistics.median(known), min(known), max(known)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Dicts of the same shape folded key by key: numbers -> their median, dicts -> folded alike,
    anything else -> the first run's value (keys of the first dict; run-only extras dropped)."""
    out: dict[str, Any] = {}
    for key, first in docs[0].items():
        if key in RUN_ONLY:
            continue
        values = [d.get(key) for d in docs]
        if _is_number(first) and all(v is None or _is_number(v) for v in values):
            mid = spread(values)
            out[key] = None if mid is None else round(mid[0], 4)
        elif isinstance(first, dict) and all(isinstance(v, dict) for v in values):
            out[key] = median_of(values)  # type: ignore[arg-type]
        else:
            out[key] = first
    return out


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a contender's runs on a workload: the median of each field, ``spread`` (min and
    max of each), every run as it was measured, and every window's length. Correct only when every
    run was (a void run voids the row: its store differed from the workload)."""
    first = runs[0]
    good = [r for r in runs if r.get("correct")]
    row: dict[str, Any] = {"contender": first["contender"], "workload": first["workload"],
                           "records": first["records"], "correct": bool(runs) and len(good) == len(runs)}
    basis = good or runs
    row["spread"] = {}
    for name in FIELDS:
        mid = spread([r.get(name) for r in basis])
        row[name] = None if mid is None else round(mid[0], 3 if name == "seconds" else 2)
        if mid is not None:
            row["spread"][name] = [round(mid[1], 3), round(mid[2], 3)]
    if row["records_per_s"] is not None:
        row["records_per_s"] = round(row["records_per_s"], 1)
    row["problems"] = list(dict.fromkeys(p for r in runs for p in r.get("problems", [])))
    row["notes"] = list(dict.fromkeys(n for r in runs for n in r.get("notes", [])))
    extras = [r.get("extra", {}) for r in basis]
    row["extra"] = median_of(extras) if extras and extras[0] else {}
    row["windows_s"] = [r.get("seconds") for r in runs]
    row["runs"] = runs
    return row


def steadiness(row: dict[str, Any], min_window_s: float = MIN_WINDOW_S) -> str:
    """Which rule the row's figure meets: "median of N runs" (N >= ``REPEATS``), "one window of S s",
    or "" (neither: a void row, or short windows with fewer runs, as with ``--repeats 1``)."""
    windows = [w for w in row.get("windows_s") or [row.get("seconds")] if w is not None]
    if not row.get("correct") or not windows:
        return ""
    if len(windows) >= REPEATS:
        return f"median of {len(windows)} runs"
    if max(windows) >= min_window_s:
        return f"one window of {max(windows):.1f} s"
    return ""


def window_summary(rows: list[dict[str, Any]], repeats: int, min_window_s: float) -> dict[str, Any]:
    """The run's window accounting: the rule, every row's windows and the rule it met, the total
    measured time and the rows that meet neither rule."""
    per_row = [{"contender": r["contender"], "workload": r["workload"], "windows_s": r.get("windows_s", []),
                "rule": steadiness(r, min_window_s)} for r in rows]
    return {"repeats": repeats, "min_window_s": min_window_s, "rows": per_row,
            "measured_s": round(sum(w for r in per_row for w in r["windows_s"] if w), 2),
            "shortest_s": min((w for r in per_row for w in r["windows_s"] if w), default=None),
            "unsteady": [f"{r['contender']}/{r['workload']}" for r in per_row if not r["rule"]]}
