"""Turn a results document into ratios, goal verdicts, a terminal table and a Markdown table. Pure.

The goals are the issue's, per worker process, both sides measured in the same run. A goal whose
inputs are void (the contender's store did not equal the workload) or missing is *not met*, with
the reason; "metrics and logging cost <= 5% of CPU" needs a profiler, not a benchmark, so it is
reported as not measured here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.dev.bench.speed import SLOW_FACTOR

NAMES = {"pipeline": "imtel pipeline",
         "pipeline-http": "imtel pipeline, ClickHouse over HTTP (engine in its own process)",
         "naive-faust": "naive faust agent", "quix": "Quix Streams", "limit-consume": "limit: consume + msgspec decode",
         "limit-insert": "limit: chDB Arrow insert"}
ORDER = ["pipeline", "pipeline-http", "naive-faust", "quix", "limit-consume", "limit-insert"]
STORELESS = {"limit-consume"}  # holds no engine at all
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


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
        for other in ORDER[1:]:
            theirs = _rate(_find(rows, other, workload))
            if _find(rows, other, workload) is not None:
                out[workload][other] = round(mine / theirs, 3) if mine and theirs else None
    return out


UNITS = {"rps": "{:,.0f} records/s", "x": "{:.2f}x", "MB": "{:,.0f} MB", "s": "{:.2f} s", "share": "{:.1%}"}


def _goal(name: str, target: str, value: float | None, met: bool | None, why: str = "",
          unit: str = "x") -> dict[str, Any]:
    shown = "-" if value is None else UNITS[unit].format(value)
    return {"goal": name, "target": target, "value": value, "shown": shown, "met": met, "why": why}


def ceiling(results: dict[str, Any], workload: str) -> dict[str, Any] | None:
    """The most records/s that any pipeline which consumes, decodes, inserts and aggregates every
    record with these tools could reach on this machine: its cores divided by the CPU those steps cost
    on their own (the two limit contenders; the broker's share is its CPU in the consume window, and
    the insert contender times the aggregation and the merges of its parts apart), each scaled back to
    the host's best speed in the run by its slowdown probe.

    An upper bound, and a generous one: every line of glue is free in it, and the insert contender's
    parts (100k rows) need fewer merges than a pipeline flushing every second. A goal above it cannot
    be met on this machine, whatever the pipeline does; one below it says how much CPU the rest may
    take. None when a limit contender is missing or void."""
    consume, insert = _find(results["throughput"], "limit-consume", workload), _find(results["throughput"],
                                                                                    "limit-insert", workload)
    if not (_rate(consume) and _rate(insert) and consume and insert):
        return None
    extra = insert.get("extra", {})
    if not (consume.get("cpu_s_per_million") and insert.get("cpu_s_per_million")
            and extra.get("aggregate_cpu_seconds") is not None and insert.get("records")):
        return None

    def best(row: dict[str, Any], cpu_s_per_million: float) -> float:
        return cpu_s_per_million / max(1.0, row.get("extra", {}).get("cpu_slowdown") or 1.0)

    steps = {"consume_decode": best(consume, consume["cpu_s_per_million"]),
             "broker": best(consume, consume.get("extra", {}).get("broker_cpu_s_per_million") or 0.0),
             "insert": best(insert, insert["cpu_s_per_million"]),
             "aggregate": best(insert, extra["aggregate_cpu_seconds"] / insert["records"] * 1e6)}
    if extra.get("merge_cpu_seconds") is not None:  # results files before the merges were measured lack it
        steps["merges"] = best(insert, extra["merge_cpu_seconds"] / insert["records"] * 1e6)
    cores = results["machine"]["cpus"]
    return {"records_per_s": round(cores * 1e6 / sum(steps.values()), 1), "cores": cores,
            "cpu_s_per_million": {k: round(v, 3) for k, v in steps.items()}}


STEP_NAMES = {"consume_decode": "consume + decode", "broker": "broker", "insert": "insert", "aggregate": "aggregate",
              "merges": "merges"}


def _ceiling_text(c: dict[str, Any], target: float) -> str:
    steps = c["cpu_s_per_million"]
    rest = "glue" if "merges" in steps else "merges and glue"
    parts = (f"{c['cores']} cores / ({' + '.join(f'{v:.2f} {STEP_NAMES[k]}' for k, v in steps.items())} CPU-s per "
             "million records, the limit contenders' own costs at the run's best host speed)")
    if target > c["records_per_s"]:
        return (f"unreachable on this machine: the target, {target:,.0f} records/s, is above the ceiling of "
                f"{c['records_per_s']:,.0f} records/s = {parts}, which leaves nothing for {rest}")
    room = c["cores"] * 1e6 / target - sum(steps.values())
    return (f"ceiling here {c['records_per_s']:,.0f} records/s = {parts}; at the target, {rest} may take "
            f"{room:.2f} CPU-s per million records")


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals with the measured value and met / not met (None: not measured)."""
    rows, fresh = results["throughput"], results.get("freshness", [])
    rat = ratios(results)
    out = []

    def rate_goal(workload: str, floor: float, label: str, room: dict[str, Any] | None = None) -> None:
        row = _find(rows, "pipeline", workload)
        value = _rate(row)
        why = "" if value is not None else ("not run" if row is None else "void: " + "; ".join(row["problems"]))
        if room and (value is None or value < floor):
            why = "; ".join(filter(None, [why, _ceiling_text(room, floor)]))
        out.append(_goal(label, f">= {floor:,.0f} records/s", value, None if row is None else
                         (value is not None and value >= floor), why, "rps"))

    def ratio_goal(workload: str, other: str, floor: float, label: str, room: dict[str, Any] | None = None) -> None:
        if workload not in rat or other not in rat[workload]:
            out.append(_goal(label, f">= {floor:g}x", None, None, "not run"))
            return
        value = rat[workload][other]
        why = "" if value is not None else "a side is void"
        theirs = _rate(_find(rows, other, workload))
        if room and theirs and (value is None or value < floor):
            why = "; ".join(filter(None, [why, _ceiling_text(room, floor * theirs)]))
        out.append(_goal(label, f">= {floor:g}x", value, value is not None and value >= floor, why))

    batched = ceiling(results, "b")
    rate_goal("b", 250_000, "batched messages: records/s end to end", batched)
    ratio_goal("b", "limit-consume", 0.5, "batched messages: share of the consume + decode limit", batched)
    rate_goal("a", 60_000, "one record per message: records/s end to end")
    ratio_goal("a", "quix", 2.0, "one record per message: vs Quix Streams")
    ratio_goal("a", "naive-faust", 5.0, "one record per message: vs the naive faust agent")
    out.append(rss_goal(rows, results.get("baselines", {}).get("embedded_clickhouse_rss_mb")))
    for f in (f for f in fresh if f["contender"] == "pipeline"):
        p99 = f["p99_s"] if f["correct"] else None
        why = "; ".join(f["problems"]) if p99 is None else (
            f"at {f['offered_rps']:,.0f} records/s; from the rows' ingest_time: p99 {f['store_p99_s']} s"
            if f.get("store_p99_s") is not None else f"at {f['offered_rps']:,.0f} records/s")
        out.append(_goal(f"p99 freshness at half the max rate (workload {f['workload']})", "<= 5 s", p99,
                         p99 is not None and p99 <= 5.0, why, "s"))
    prof = results.get("profile")
    if prof and prof.get("metrics_cpu_share") is not None:
        share = round(prof["metrics_cpu_share"] + prof["logging_cpu_share"], 4)
        out.append(_goal("metrics and logging cost", "<= 5% of CPU", share, share <= 0.05,
                         f"py-spy on the worker, ClickHouse over HTTP, workload {prof['workload']}: metrics "
                         f"{prof['metrics_cpu_share']:.1%} and logging {prof['logging_cpu_share']:.1%} of the "
                         f"worker's {prof['worker_cpu_s']:.2f} CPU-s; of its Python time alone: metrics "
                         f"{prof['metrics_share']:.1%}, logging {prof['logging_share']:.1%}", "share"))
    elif prof and prof.get("metrics_share") is not None:  # results files from before the CPU shares
        share = round(prof["metrics_share"] + prof["logging_share"], 4)
        out.append(_goal("metrics and logging cost", "<= 5% of CPU", share, share <= 0.05,
                         f"py-spy samples of the worker on workload {prof['workload']}: metrics "
                         f"{prof['metrics_share']:.1%}, logging {prof['logging_share']:.1%}", "share"))
    else:
        out.append(_goal("metrics and logging cost", "<= 5% of CPU", None, None,
                         (prof or {}).get("note") or "not profiled in this run (--no-profile or --quick)"))
    return out


def rss_goal(rows: list[dict[str, Any]], floor: float | None) -> dict[str, Any]:
    """Peak RSS of the worker, judged in the production topology when it was measured (the worker
    writing over HTTP to the engine in its own process), with the engine's RSS and the in-process
    number stated beside it; otherwise on the in-process pipeline (engine included)."""
    label, target = "peak RSS of the worker", "<= 300 MB"
    inproc = max((r["peak_rss_mb"] for r in rows if r["contender"] == "pipeline" and r.get("peak_rss_mb")),
                 default=None)
    beside = f"in-process engine: {inproc:,.0f} MB" if inproc is not None else "in-process engine: not run"
    http = [r for r in rows if r["contender"] == "pipeline-http"]
    good = [r for r in http if r["correct"] and r.get("peak_rss_mb") is not None]
    if http and not good:
        return _goal(label, target, None, False, "ClickHouse over HTTP run void: " +
                     "; ".join(p for r in http for p in r["problems"]) + f"; {beside}", "MB")
    if good:
        top = max(good, key=lambda r: r["peak_rss_mb"])
        engine = top.get("extra", {}).get("engine", {}).get("peak_rss_mb")
        why = (f"worker {top['peak_rss_mb']:,.0f} MB + engine {_num(engine)} MB (separate process, ClickHouse over "
               f"HTTP, workload {top['workload']}); {beside}")
        return _goal(label, target, top["peak_rss_mb"], top["peak_rss_mb"] <= 300, why, "MB")
    why = "engine in the worker process (the ClickHouse-over-HTTP topology was not run)"
    if floor:
        why += f"; the embedded ClickHouse engine alone peaks at {floor:.0f} MB in a process that only opens a store"
    return _goal(label, target, inproc, None if inproc is None else inproc <= 300, why, "MB")


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
                "engine_cpu_s_per_million": engine.get("cpu_s_per_million")}
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


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """Header + one row per contender x workload, in a fixed order."""
    rat = ratios(results)
    head = ["workload", "contender", "records", "records/s", "CPU s / M records", "peak RSS MB",
            "engine process: CPU s / M, peak RSS MB", "freshness p50 / p99", "correct", "pipeline ÷ this"]
    out = [head]
    rows = results["throughput"]
    for workload in sorted({r["workload"] for r in rows}):
        for contender in ORDER:
            r = _find(rows, contender, workload)
            if r is None:
                continue
            ratio = "" if contender == "pipeline" else _ratio_text(rat.get(workload, {}).get(contender))
            out.append([workload, NAMES.get(contender, contender), f"{r['records']:,}",
                        _num(r["records_per_s"]) if r["correct"] else "void",
                        _num(r["cpu_s_per_million"], 1), _num(r["peak_rss_mb"]), _engine_cell(r),
                        _freshness_cell(results, contender, workload), "✓" if r["correct"] else "void", ratio])
    return out


def _engine_cell(row: dict[str, Any]) -> str:
    """Where the row's ClickHouse engine ran: its own process (its cost), or inside the contender."""
    engine = row.get("extra", {}).get("engine")
    if engine:
        return f"{_num(engine.get('cpu_s_per_million'), 1)}, {_num(engine.get('peak_rss_mb'))} (separate)"
    return "-" if row["contender"] in STORELESS else "in process (included)"


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
    out += ["", *_caveats(results)]
    return "\n".join(out) + "\n"


def render_markdown(results: dict[str, Any]) -> str:
    """The Markdown the README's Performance section shows (between the bench markers)."""
    rows = table_rows(results)
    md = [f"Measured {results['generated_at'][:16].replace('T', ' ')} UTC on {_machine_text(results)} with "
          f"`{results['command']}`, {_broker_text(results)}; {_workload_text(results)}.", "",
          "| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    md += ["", "Goals (per worker process, both sides measured in the same run):", ""]
    md += [f"- {line}" for line in goal_lines(results)]
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
        parts.append(f"workload {name}: {w['description']}, {w['records']:,} records ({w['short_records']:,} for the "
                     "naive faust agent and Quix)")
    return "; ".join(parts)


def _machine_text(results: dict[str, Any]) -> str:
    m = results["machine"]
    text = f"{m['cpus']} cores ({m.get('cpu_model', '?')}), load average {m['loadavg_start'][0]:.1f} at start"
    if "cpu_calibration_ms" in m:
        start, end = m["cpu_calibration_ms"]
        text += f", CPU calibration {start:.1f} / {end:.1f} ms at start / end (lower is faster)"
    return text


def _caveats(results: dict[str, Any]) -> list[str]:
    out = ["Window: first record consumed -> last row committed (start-up and group join excluded). CPU: the "
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
