"""Turn a results document into ratios, goal verdicts, a terminal table and a Markdown table. Pure.

The goals are the issue's, per worker process, both sides measured in the same run, each figure the
median of its runs (``repeats``) with their min-max beside it. A goal whose inputs are void (the
contender's store did not equal the workload) is *not met*, with the reason; one whose contender was
not run is *not measured*. Where the machine bounds a goal, the verdict says how: the worker's CPU
next to what consume + decode alone costs (the limit contender), the engine's next to what its
inserts, aggregation and merges alone cost, the embedded process's RSS next to the engine's floor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.dev.bench.contenders import REGISTRY, differs, title
from pipeline.dev.bench.repeats import steadiness
from pipeline.dev.bench.speed import SLOW_FACTOR

# the goals: per worker process, on real Kafka, both sides measured in the same run
WORKER_CPU = {"b": 1.2, "a": 3.0}  # CPU-s per million records, the worker over HTTP
WORKER_VS_LIMIT = 1.5  # the worker's CPU over HTTP (b) / consume + decode alone
ENGINE_CPU = 3.0  # the engine process's CPU-s per million stored records
RSS_WORKER_MB, RSS_EMBEDDED_MB = 250.0, 500.0
FRESH_P99_S = 2.0
QUIX_RATIO, FAUST_RATIO = 2.0, 5.0
LOADS = {"a": "one record per message", "b": "batched messages", "otlp": "OTLP/protobuf messages"}
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _order(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The contenders of some rows in the registry's order (unknown ones, from older or newer code, last)."""
    present = {r["contender"] for r in rows}
    return [c for c in REGISTRY if c in present] + sorted(present - set(REGISTRY))


def _storeless(contender: str) -> bool:
    return contender in REGISTRY and REGISTRY[contender].engine == "none"  # holds no engine at all


def _find(rows: Iterable[dict[str, Any]], contender: str, workload: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["contender"] == contender and r["workload"] == workload), None)


def _rate(row: dict[str, Any] | None) -> float | None:
    return row["records_per_s"] if row and row.get("correct") and row.get("records_per_s") else None


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per workload: the pipeline's records/s divided by each other contender's (None when void)."""
    out: dict[str, dict[str, float | None]] = {}
    rows = results["throughput"]
    for workload in sorted({r["workload"] for r in rows}):
        mine = _rate(_find(rows, "pipeline", workload))
        out[workload] = {}
        for other in (c for c in _order(rows) if c != "pipeline"):
            theirs = _rate(_find(rows, other, workload))
            if _find(rows, other, workload) is not None:
                out[workload][other] = round(mine / theirs, 3) if mine and theirs else None
    return out


UNITS = {"rps": "{:,.0f} records/s", "x": "{:.2f}x", "MB": "{:,.0f} MB", "s": "{:.2f} s", "share": "{:.1%}",
         "cpu": "{:.2f} CPU-s per million"}


def _goal(name: str, target: str, value: float | None, met: bool | None, why: str = "",
          unit: str = "x", spread: list[float] | None = None) -> dict[str, Any]:
    shown = "-" if value is None else UNITS[unit].format(value)
    if value is not None and spread and spread[0] != spread[1]:
        lo, hi = (UNITS[unit].format(v).split(" ")[0] for v in spread)
        shown += f" (min-max {lo}-{hi})"
    return {"goal": name, "target": target, "value": value, "shown": shown, "met": met, "why": why}


def _runs_text(row: dict[str, Any]) -> str:
    """How the row's figure was taken: "median of 3 runs", "one window of 19.2 s", or a warning."""
    rule = steadiness(row)
    if rule:
        return rule
    windows = [w for w in row.get("windows_s") or [row.get("seconds")] if w]
    if len(windows) == 1:
        return f"a single {windows[0]:.1f} s window"
    return f"{len(windows)} windows of {', '.join(f'{w:.1f}' for w in windows)} s"


def _engine_cpu(row: dict[str, Any]) -> tuple[float | None, list[float] | None, bool]:
    """The engine process's CPU-s per million stored records: median and min-max of the runs, and
    whether that is the settled figure (from the window's start until the engine was idle again, its
    merges included) rather than the worker's window alone (results files before it)."""
    def pick(extra: dict[str, Any]) -> float | None:
        engine = extra.get("engine") or {}
        settled = engine.get("settled_cpu_s_per_million")
        return settled if settled is not None else engine.get("cpu_s_per_million")

    value = pick(row.get("extra", {}))
    known = [v for v in (pick(r.get("extra", {})) for r in row.get("runs", [])) if v is not None]
    settled = (row.get("extra", {}).get("engine") or {}).get("settled_cpu_s_per_million") is not None
    return value, [min(known), max(known)] if known else None, settled


def insert_floor(results: dict[str, Any], workload: str) -> dict[str, float] | None:
    """What the engine's own work on a stored record costs alone (the insert limit contender, same
    run): insert, aggregation and merges, CPU-s per million records; None when it is missing or void."""
    row = _find(results["throughput"], "limit-insert", workload)
    if not _rate(row) or not row or not row.get("cpu_s_per_million") or not row.get("records"):
        return None
    extra = row.get("extra", {})
    steps = {"insert": float(row["cpu_s_per_million"])}
    for key in ("aggregate", "merge"):
        if extra.get(f"{key}_cpu_seconds") is not None:
            steps[key] = extra[f"{key}_cpu_seconds"] / row["records"] * 1e6
    return {k: round(v, 3) for k, v in steps.items()}


def ceiling(results: dict[str, Any], workload: str) -> dict[str, Any] | None:
    """The most records/s that any pipeline which consumes, decodes, inserts and aggregates every
    record with these tools could reach on this machine: its cores divided by the CPU those steps cost
    on their own (the two limit contenders; the broker's share is its CPU in the consume window, and
    the insert contender times the merges of its parts apart; its inserts include the views'
    aggregation, which results files from before migration 009 timed apart), each scaled back to the
    host's best speed in the run by its slowdown probe.

    An upper bound, and a generous one: every line of glue is free in it, and the insert contender's
    parts (as large as the pipeline's default against a server) need fewer merges than a pipeline
    flushing every second. A goal above it cannot be met on this machine, whatever the pipeline does;
    one below it says how much CPU the rest may take. None when a limit contender is missing or void."""
    consume, insert = _find(results["throughput"], "limit-consume", workload), _find(results["throughput"],
                                                                                    "limit-insert", workload)
    if not (_rate(consume) and _rate(insert) and consume and insert):
        return None
    extra = insert.get("extra", {})
    if not (consume.get("cpu_s_per_million") and insert.get("cpu_s_per_million") and insert.get("records")):
        return None

    def best(row: dict[str, Any], cpu_s_per_million: float) -> float:
        return cpu_s_per_million / max(1.0, row.get("extra", {}).get("cpu_slowdown") or 1.0)

    steps = {"consume_decode": best(consume, consume["cpu_s_per_million"]),
             "broker": best(consume, consume.get("extra", {}).get("broker_cpu_s_per_million") or 0.0),
             "insert": best(insert, insert["cpu_s_per_million"])}
    if extra.get("aggregate_cpu_seconds") is not None:  # results files before the views timed it apart
        steps["aggregate"] = best(insert, extra["aggregate_cpu_seconds"] / insert["records"] * 1e6)
    if extra.get("merge_cpu_seconds") is not None:  # results files before the merges were measured lack it
        steps["merges"] = best(insert, extra["merge_cpu_seconds"] / insert["records"] * 1e6)
    cores = results["machine"]["cpus"]
    return {"records_per_s": round(cores * 1e6 / sum(steps.values()), 1), "cores": cores,
            "cpu_s_per_million": {k: round(v, 3) for k, v in steps.items()}}


STEP_NAMES = {"consume_decode": "consume + decode", "broker": "broker", "insert": "insert", "aggregate": "aggregate",
              "merges": "merges"}


def ceiling_lines(results: dict[str, Any]) -> list[str]:
    """Per workload: the records/s ceiling of any pipeline built from these tools on this machine
    (``ceiling``), beside the pipeline's own median rate."""
    lines = []
    for workload, c in sorted((results.get("ceiling") or {}).items()):
        if not c:
            continue
        steps = c["cpu_s_per_million"]
        rest = "glue" if "merges" in steps else "merges and glue"
        parts = " + ".join(f"{v:.2f} {STEP_NAMES.get(k, k)}" for k, v in steps.items())
        mine = _rate(_find(results["throughput"], "pipeline", workload))
        reach = f"; the pipeline in process reaches {mine:,.0f} ({mine / c['records_per_s']:.0%})" if mine else ""
        lines.append(f"workload {workload}: {c['records_per_s']:,.0f} records/s = {c['cores']} cores / ({parts} CPU-s "
                     f"per million records, the limit contenders' own costs at the run's best host speed; {rest} "
                     f"free){reach}")
    return lines


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals with the measured value and met / not met (None: not measured)."""
    rows, fresh = results["throughput"], results.get("freshness", [])
    out = [worker_cpu_goal(rows, "b", WORKER_CPU["b"]), worker_vs_limit_goal(rows, "b", WORKER_VS_LIMIT),
           worker_cpu_goal(rows, "a", WORKER_CPU["a"])]
    http = [r for r in rows if r["contender"] == "pipeline-http"]
    out += [engine_goal(results, r) for r in sorted(http, key=lambda r: r["workload"])] or [
        _goal("engine CPU per million stored records", f"<= {ENGINE_CPU:g} CPU-s per million", None, None,
              "not run (pipeline-http: the engine in its own process)")]
    out += [rss_goal(rows), embedded_rss_goal(rows, results.get("baselines", {}).get("embedded_clickhouse_rss_mb"))]
    mine = [f for f in fresh if f["contender"] == "pipeline"]
    for f in mine:
        p99 = f["p99_s"] if f["correct"] else None
        why = "; ".join(f["problems"]) if p99 is None else (
            f"at {f['offered_rps']:,.0f} records/s; from the rows' ingest_time: p99 {f['store_p99_s']} s"
            if f.get("store_p99_s") is not None else f"at {f['offered_rps']:,.0f} records/s")
        out.append(_goal(f"p99 freshness at half the max rate (workload {f['workload']})", f"<= {FRESH_P99_S:g} s",
                         p99, p99 is not None and p99 <= FRESH_P99_S, why, "s"))
    if not mine:
        out.append(_goal("p99 freshness at half the max rate", f"<= {FRESH_P99_S:g} s", None, None,
                         "not run (--freshness-seconds 0, or the pipeline's throughput run was void)"))
    out += [ratio_goal(results, w, "quix", QUIX_RATIO, f"{LOADS[w]} (workload {w}): vs Quix Streams")
            for w in ("a", "b")]
    out.append(ratio_goal(results, "a", "naive-faust", FAUST_RATIO,
                          f"{LOADS['a']} (workload a): vs the naive faust agent"))
    out.append(metrics_goal(results.get("profile")))
    return out


def worker_cpu_goal(rows: list[dict[str, Any]], workload: str, target: float) -> dict[str, Any]:
    """The worker's CPU per million records over HTTP, beside what consume + decode alone costs (its floor)."""
    label = f"worker CPU, {LOADS[workload]} (workload {workload}), ClickHouse over HTTP"
    goal = f"<= {target:g} CPU-s per million"
    row = _find(rows, "pipeline-http", workload)
    if row is None:
        return _goal(label, goal, None, None, f"not run (pipeline-http on workload {workload}: --http-workloads)")
    if not row["correct"] or row.get("cpu_s_per_million") is None:
        return _goal(label, goal, None, False, "void: " + "; ".join(row["problems"] or ["no CPU reading"]))
    value = row["cpu_s_per_million"]
    why = [_runs_text(row)]
    limit = _find(rows, "limit-consume", workload)
    if limit and limit["correct"] and limit.get("cpu_s_per_million"):
        floor = limit["cpu_s_per_million"]
        why.append(f"unreachable on this machine: consume + decode alone costs {floor:.2f} CPU-s per million "
                   "(limit contender, same run)" if floor >= target else
                   f"ceiling: consume + decode alone costs {floor:.2f} CPU-s per million (limit contender, same run), "
                   f"so the target leaves {target - floor:.2f} for the rest of the worker")
    return _goal(label, goal, value, value <= target, "; ".join(why), "cpu", row.get("spread", {}).get(
        "cpu_s_per_million"))


def worker_vs_limit_goal(rows: list[dict[str, Any]], workload: str, factor: float) -> dict[str, Any]:
    """The worker's CPU over HTTP as a multiple of consume + decode alone, in the same run."""
    label = f"worker CPU, {LOADS[workload]} (workload {workload}), over HTTP: multiple of consume + decode alone"
    goal = f"<= {factor:g}x"
    row, limit = _find(rows, "pipeline-http", workload), _find(rows, "limit-consume", workload)
    if row is None or limit is None:
        return _goal(label, goal, None, None, "not run (needs pipeline-http and limit on workload " + workload + ")")
    mine, theirs = row.get("cpu_s_per_million"), limit.get("cpu_s_per_million")
    if not (row["correct"] and limit["correct"] and mine and theirs):
        return _goal(label, goal, None, False, "a side is void")
    value = round(mine / theirs, 3)
    why = (f"worker {mine:.2f} ({_runs_text(row)}) vs consume + decode {theirs:.2f} ({_runs_text(limit)}) CPU-s per "
           "million: "
           f"the ceiling for the worker here is {factor * theirs:.2f}")
    return _goal(label, goal, value, value <= factor, why)


def engine_goal(results: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The engine process's CPU per million stored records (over the worker's window), beside what
    its inserts, aggregation and merges cost alone."""
    label, goal = f"engine CPU per million stored records (workload {row['workload']})", \
        f"<= {ENGINE_CPU:g} CPU-s per million"
    value, spread, settled = _engine_cpu(row)
    if not row["correct"] or value is None:
        return _goal(label, goal, None, False, "void: " + "; ".join(row["problems"] or ["no CPU reading"]))
    window = (row.get("extra", {}).get("engine") or {}).get("cpu_s_per_million")
    why = [f"`imtel engine` in its own process, from the worker's first record until the engine was idle again "
           f"(its merges included; {_num(window, 2)} within the worker's window alone), {_runs_text(row)}"
           if settled else f"`imtel engine` in its own process, over the worker's windows ({_runs_text(row)})"]
    floor = insert_floor(results, row["workload"])
    if floor:
        total = sum(floor.values())
        steps = " + ".join(f"{v:.2f} {k}" for k, v in floor.items())
        limit = _find(results["throughput"], "limit-insert", row["workload"]) or {}
        per_insert = limit.get("extra", {}).get("rows_per_insert", 100_000)  # older results: always 100k
        why.append(f"floor: the insert limit contender ({per_insert // 1000}k-row Arrow parts, same run) costs "
                   f"the engine {steps} = {total:.2f} CPU-s per million"
                   + (", above the target" if total > ENGINE_CPU else ""))
    return _goal(label, goal, value, value <= ENGINE_CPU, "; ".join(why), "cpu", spread)


def rss_goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS of the worker writing over HTTP to the engine in its own process (the production
    topology): the highest of its workloads' medians, the engine's RSS beside it."""
    label, target = "peak RSS of the worker, ClickHouse over HTTP", f"<= {RSS_WORKER_MB:g} MB"
    http = [r for r in rows if r["contender"] == "pipeline-http"]
    good = [r for r in http if r["correct"] and r.get("peak_rss_mb") is not None]
    if not http:
        return _goal(label, target, None, None, "not run (pipeline-http)", "MB")
    if not good:
        return _goal(label, target, None, False, "void: " + "; ".join(p for r in http for p in r["problems"]), "MB")
    top = max(good, key=lambda r: r["peak_rss_mb"])
    engine = top.get("extra", {}).get("engine", {}).get("peak_rss_mb")
    why = (f"workload {top['workload']}, {_runs_text(top)}; the engine process beside it: {_num(engine)} MB; "
           + ", ".join(f"workload {r['workload']}: {r['peak_rss_mb']:,.0f} MB" for r in good))
    return _goal(label, target, top["peak_rss_mb"], top["peak_rss_mb"] <= RSS_WORKER_MB, why, "MB",
                 top.get("spread", {}).get("peak_rss_mb"))


def embedded_rss_goal(rows: list[dict[str, Any]], floor: float | None) -> dict[str, Any]:
    """Peak RSS of the embedded pipeline, everything (the ClickHouse engine included) in one process."""
    label, target = "peak RSS embedded, everything in one process", f"<= {RSS_EMBEDDED_MB:g} MB"
    mine = [r for r in rows if r["contender"] == "pipeline"]
    good = [r for r in mine if r["correct"] and r.get("peak_rss_mb") is not None]
    if not mine:
        return _goal(label, target, None, None, "not run (pipeline)", "MB")
    if not good:
        return _goal(label, target, None, False, "void: " + "; ".join(p for r in mine for p in r["problems"]), "MB")
    top = max(good, key=lambda r: r["peak_rss_mb"])
    why = [f"workload {top['workload']}, {_runs_text(top)}; "
           + ", ".join(f"workload {r['workload']}: {r['peak_rss_mb']:,.0f} MB" for r in good)]
    if floor:
        why.append(f"floor: the embedded ClickHouse engine alone peaks at {floor:.0f} MB in a process that only "
                   f"opens a store, leaving {RSS_EMBEDDED_MB - floor:.0f} MB for the rest")
    return _goal(label, target, top["peak_rss_mb"], top["peak_rss_mb"] <= RSS_EMBEDDED_MB, "; ".join(why), "MB",
                 top.get("spread", {}).get("peak_rss_mb"))


def ratio_goal(results: dict[str, Any], workload: str, other: str, floor: float, label: str) -> dict[str, Any]:
    """The pipeline's records/s (in process, like its peers) divided by a peer's, both medians."""
    rat = ratios(results)
    if workload not in rat or other not in rat[workload]:
        return _goal(label, f">= {floor:g}x", None, None, "not run")
    value = rat[workload][other]
    if value is None:
        return _goal(label, f">= {floor:g}x", None, False, "a side is void")
    rows = results["throughput"]
    mine, theirs = _find(rows, "pipeline", workload), _find(rows, other, workload)
    why = (f"{_num(_rate(mine))} vs {_num(_rate(theirs))} records/s (pipeline: {_runs_text(mine or {})}; "
           f"{title(other)}: {_runs_text(theirs or {})})")
    return _goal(label, f">= {floor:g}x", value, value >= floor, why)


def metrics_goal(prof: dict[str, Any] | None) -> dict[str, Any]:
    """Metrics and logging's share of the worker's CPU, from the profiled run (py-spy)."""
    if prof and prof.get("metrics_cpu_share") is not None:
        share = round(prof["metrics_cpu_share"] + prof["logging_cpu_share"], 4)
        return _goal("metrics and logging cost", "<= 5% of CPU", share, share <= 0.05,
                     f"py-spy on the worker, ClickHouse over HTTP, workload {prof['workload']}: metrics "
                     f"{prof['metrics_cpu_share']:.1%} and logging {prof['logging_cpu_share']:.1%} of the "
                     f"worker's {prof['worker_cpu_s']:.2f} CPU-s; of its Python time alone: metrics "
                     f"{prof['metrics_share']:.1%}, logging {prof['logging_share']:.1%}", "share")
    if prof and prof.get("metrics_share") is not None:  # results files from before the CPU shares
        share = round(prof["metrics_share"] + prof["logging_share"], 4)
        return _goal("metrics and logging cost", "<= 5% of CPU", share, share <= 0.05,
                     f"py-spy samples of the worker on workload {prof['workload']}: metrics "
                     f"{prof['metrics_share']:.1%}, logging {prof['logging_share']:.1%}", "share")
    return _goal("metrics and logging cost", "<= 5% of CPU", None, None,
                 (prof or {}).get("note") or "not profiled in this run (--no-profile or --quick)")


def capacity(results: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's numbers for capacity planning (docs/deploy.md): per worker process."""
    out: dict[str, Any] = {}
    for row in results["throughput"]:
        if row["contender"] == "pipeline" and row["correct"]:
            out[row["workload"]] = {"records_per_s": row["records_per_s"], "peak_rss_mb": row["peak_rss_mb"],
                                    "cpu_s_per_million": row["cpu_s_per_million"]}
    for row in results["throughput"]:
        engine = row.get("extra", {}).get("engine") or {}
        if row["contender"] == "pipeline-http" and row["correct"]:
            out.setdefault(row["workload"], {})["over_http"] = {
                "records_per_s": row["records_per_s"], "worker_peak_rss_mb": row["peak_rss_mb"],
                "worker_cpu_s_per_million": row["cpu_s_per_million"], "engine_peak_rss_mb": engine.get("peak_rss_mb"),
                "engine_cpu_s_per_million": engine.get("cpu_s_per_million"),
                "engine_cpu_s_per_million_with_merges": engine.get("settled_cpu_s_per_million")}
    for f in results.get("freshness", []):
        if f["contender"] == "pipeline" and f["correct"]:
            out.setdefault(f["workload"], {}).update({"freshness_offered_rps": f["offered_rps"],
                                                      "freshness_p50_s": f["p50_s"], "freshness_p99_s": f["p99_s"]})
    return out


# -- rendering ---------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _freshness_cell(results: dict[str, Any], contender: str, workload: str) -> str:
    f = _find(results.get("freshness", []), contender, workload)
    if f is None or f.get("skipped"):
        return "-"
    if not f["correct"] or f["p50_s"] is None:
        return "void"
    return f"{f['p50_s']:.2f} / {f['p99_s']:.2f} s"


def _with_range(row: dict[str, Any], name: str, digits: int, thousands: bool = False) -> str:
    """A row's median with the min-max of its runs, when it had several that differed."""
    value = row.get(name)
    if value is None:
        return "-"
    lo_hi = row.get("spread", {}).get(name)
    if thousands:
        text = f"{value:,.0f}"
        if lo_hi and len(row.get("runs", [])) > 1 and lo_hi[0] != lo_hi[1]:
            text += f" ({lo_hi[0] / 1000:,.0f}k-{lo_hi[1] / 1000:,.0f}k)"
        return text
    text = f"{value:,.{digits}f}"
    if lo_hi and len(row.get("runs", [])) > 1 and f"{lo_hi[0]:.{digits}f}" != f"{lo_hi[1]:.{digits}f}":
        text += f" ({lo_hi[0]:,.{digits}f}-{lo_hi[1]:,.{digits}f})"
    return text


def _windows_cell(row: dict[str, Any]) -> str:
    """The windows a row's figures come from: their count and median length with min-max."""
    windows = [w for w in row.get("windows_s") or [row.get("seconds")] if w is not None]
    if not windows:
        return "-"
    if len(windows) == 1:
        return f"1 of {windows[0]:.1f} s"
    spread = {**row, "spread": {"seconds": [min(windows), max(windows)]}}
    return f"{len(windows)}, {_with_range(spread, 'seconds', 1)} s"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """Header + one row per contender x workload, in a fixed order: medians of the runs (min-max)."""
    rat = ratios(results)
    head = ["workload", "contender", "records", "windows (median, min-max)", "records/s", "CPU s / M records",
            "peak RSS MB", "engine process: CPU s / M in the window (with merges), peak RSS MB", "freshness p50 / p99",
            "correct", "pipeline ÷ this"]
    out = [head]
    rows = results["throughput"]
    for workload in sorted({r["workload"] for r in rows}):
        for contender in _order(rows):
            r = _find(rows, contender, workload)
            if r is None:
                continue
            ratio = "" if contender == "pipeline" else _ratio_text(rat.get(workload, {}).get(contender))
            verdict = "✓" if r["correct"] else "not run" if _not_run(r) else "void"
            if _not_run(r):
                out.append([workload, title(contender), f"{r['records']:,}", "-", "not run", "-", "-", "-", "-",
                            verdict, ratio])
                continue
            out.append([workload, title(contender), f"{r['records']:,}", _windows_cell(r),
                        _with_range(r, "records_per_s", 0, thousands=True) if r["correct"] else "void",
                        _with_range(r, "cpu_s_per_million", 2), _with_range(r, "peak_rss_mb", 0), _engine_cell(r),
                        _freshness_cell(results, contender, workload), verdict, ratio])
    return out


def _not_run(row: dict[str, Any]) -> str:
    """Why a contender did not run here ("" when it ran: a measurement, correct or void)."""
    return str(row.get("extra", {}).get("not_run") or "")


def different_jobs(results: dict[str, Any]) -> list[str]:
    """One line per contender of the results whose job differs from the pipeline's (``Contender.differs``),
    and one per contender that was not run, with its reason."""
    rows = results["throughput"]
    out = [f"A different job ({c}): {differs(c)}. Its rows are not the pipeline's: read its figures as "
           "what a generic Kafka -> ClickHouse log shipper costs on this machine for the same records, not as a "
           "peer doing the same work." for c in _order(rows) if differs(c)]
    out += [f"Not run: {title(r['contender'])} on workload {r['workload']}: {_not_run(r)}" for r in rows
            if _not_run(r)]
    return out


def _engine_cell(row: dict[str, Any]) -> str:
    """Where the row's ClickHouse engine ran: its own process (its cost), or inside the contender."""
    engine = row.get("extra", {}).get("engine")
    if engine:
        settled = engine.get("settled_cpu_s_per_million")
        merges = f" ({_num(settled, 2)} with merges)" if settled is not None else ""
        return f"{_num(engine.get('cpu_s_per_million'), 2)}{merges}, {_num(engine.get('peak_rss_mb'))} (separate)"
    return "-" if _storeless(row["contender"]) else "in process (included)"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def goal_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for g in results.get("goals", []):
        mark = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        why = f" ({g['why']})" if g["why"] else ""
        lines.append(f"{g['goal']}: {g['shown']} (goal {g['target']}) — {mark}{why}")
    return lines


def render_text(results: dict[str, Any]) -> str:
    """The terminal table, the goals and the caveats."""
    rows = table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out = [f"imtel bench — {_workload_text(results)}", *lines, "", "goals:"]
    out += ["  " + line for line in goal_lines(results)]
    ceilings = ceiling_lines(results)
    out += ["", "ceilings (records/s):", *["  " + line for line in ceilings]] if ceilings else []
    out += ["", *different_jobs(results), *_caveats(results)]
    return "\n".join(out) + "\n"


def _markdown_table(results: dict[str, Any]) -> list[str]:
    """The run's one-line description and its table."""
    rows = table_rows(results)
    md = [f"Measured {results['generated_at'][:16].replace('T', ' ')} UTC on {_machine_text(results)} with "
          f"`{results['command']}`, {_broker_text(results)}; {_workload_text(results)}.", "",
          "| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    return md + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def render_readme(results: dict[str, Any]) -> str:
    """What the README's Performance section shows (between the bench markers): the table and one line
    on the goals; every goal with its figure, the ceilings and the caveats are in ``latest.md``."""
    verdicts = [g["met"] for g in results.get("goals", [])]
    missed = [g["goal"] for g in results.get("goals", []) if g["met"] is False]
    summary = (f"Goals: {verdicts.count(True)} met, {verdicts.count(False)} not met"
               + (f" ({'; '.join(missed)})" if missed else "")
               + f", {verdicts.count(None)} not measured; each with its figure and ceiling, and the run's caveats, "
               "in [bench/results/latest.md](bench/results/latest.md).")
    return "\n".join([*_markdown_table(results), "", summary]) + "\n"


def render_markdown(results: dict[str, Any]) -> str:
    """The whole run in Markdown (``latest.md``): the table, every goal, the ceilings and the caveats."""
    md = _markdown_table(results)
    md += ["", "Goals (per worker process, both sides measured in the same run):", ""]
    md += [f"- {line}" for line in goal_lines(results)]
    ceilings = ceiling_lines(results)
    md += ["", "Ceilings (records/s):", "", *[f"- {line}" for line in ceilings]] if ceilings else []
    md += ["", *[f"{c}" for c in different_jobs(results)]]
    md += ["", *[f"{c}" for c in _caveats(results)]]
    return "\n".join(md) + "\n"


def _broker_text(results: dict[str, Any]) -> str:
    """Which broker served the run (results before the real-Kafka default have no ``broker``: Tansu)."""
    if results.get("broker", "tansu") == "kafka":
        from pipeline.dev.kafka_server import KAFKA_VERSION

        return f"on a real Apache Kafka {KAFKA_VERSION} node (KRaft, loopback)"
    return "on the bundled broker (Tansu, in memory)"


def _workload_text(results: dict[str, Any]) -> str:
    parts = []
    for name, w in sorted(results["workloads"].items()):
        short = f" ({w['short_records']:,} for the naive faust agent and Quix)" if name in ("a", "b") else ""
        parts.append(f"workload {name}: {w['description']}, {w['records']:,} records{short}")
    return "; ".join(parts)


def _machine_text(results: dict[str, Any]) -> str:
    m = results["machine"]
    text = f"{m['cpus']} cores ({m.get('cpu_model', '?')}), load average {m['loadavg_start'][0]:.1f} at start"
    if "cpu_calibration_ms" in m:
        start, end = m["cpu_calibration_ms"]
        text += f", CPU calibration {start:.1f} / {end:.1f} ms at start / end (lower is faster)"
    return text


def _caveats(results: dict[str, Any]) -> list[str]:
    windows = results.get("windows")
    rule = (f"; each figure is the median of {windows['repeats']} runs (min-max in brackets, the runs interleaved "
            f"across contenders) or one window of at least {windows['min_window_s']:g} s, every window's length in "
            "the results JSON" if windows else "")
    out = [f"Window: first record consumed -> last row committed (start-up and group join excluded){rule}. CPU: the "
           "process's own seconds in that window (all threads, embedded ClickHouse included where it runs in "
           "process). Peak RSS: kernel high-water mark over the whole process life. ClickHouse over HTTP: the same "
           "worker writing to `imtel engine` (one embedded store behind ClickHouse's HTTP interface) in its own "
           "process, as a worker talks to a ClickHouse server in production; its CPU and peak RSS columns are the "
           "worker's alone, the engine process's are in their own column. Freshness: record time -> row written, "
           "at half the pipeline's max rate (pipeline: its imtel_freshness_seconds histogram, interpolated; "
           "others: at insert ack)."]
    if results["machine"]["loadavg_start"][0] > 0.5 * results["machine"]["cpus"]:
        out.append(f"Caution: the machine was busy when the run started (load average "
                   f"{results['machine']['loadavg_start'][0]:.1f} on {results['machine']['cpus']} cores): rates are "
                   "lower than on an idle machine; CPU seconds per record are the steadier number.")
    unsteady = (windows or {}).get("unsteady") or []
    if unsteady:
        out.append(f"Caution: {', '.join(unsteady)}: neither the median of 3 runs nor one window of 15 s "
                   "(--repeats below 3, or a void run): read those figures as rough.")
    slow = [f"{m['contender']}/{m['workload']} {m['extra']['cpu_slowdown']:.2f}x"
            for m in results["throughput"] if (m.get("extra", {}).get("cpu_slowdown") or 0) >= SLOW_FACTOR]
    if slow:
        out.append(f"Caution: the host's CPU was slow while some contenders ran ({', '.join(slow)} slower than "
                   "its best in the run, by a probe that times a fixed task in its own thread's CPU time every "
                   "half second): those rates understate the contender; a rerun is the fair comparison.")
    start, end = results["machine"].get("cpu_calibration_ms", (0.0, 0.0))
    if start and end and max(start, end) > 1.2 * min(start, end):
        out.append(f"Caution: the CPU's speed changed during the run (calibration {start:.1f} -> {end:.1f} ms): "
                   "contenders measured at different times saw different machines; compare within one workload "
                   "and read the ratios with care.")
    return out


def update_readme(path: Path, markdown: str) -> bool:
    """Replace the text between the bench markers of a file; False when it has no markers."""
    try:
        text = path.read_text()
    except OSError:
        return False
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        return False
    path.write_text(pattern.sub(lambda _: f"{START}\n{markdown.rstrip()}\n{END}", text, count=1))
    return True
