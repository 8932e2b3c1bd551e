"""``imtel bench``: one command, one run, every contender on the same data, results as JSON + tables.

Sequence: start a dedicated broker on a free port (a real Apache Kafka node; ``--broker tansu`` for
the bundled one) -> produce each workload once (the two workloads in parallel processes; each also
into a ``-short`` topic holding its first records) -> for each workload run the registered
contenders (``contenders``) in turns, each run its own process with its own consumer group and a
fresh chDB store, until each has three runs (a slow one: or one window of 15 s; ``repeats``) -> the profiled run
-> freshness at half the pipeline's measured max rate -> stop the broker -> medians with min-max,
ratios, goals, the terminal table, JSON, Markdown, the README section.

``pipeline-http`` is the same worker in the production topology: it writes over HTTP to ``imtel
engine`` in its own process (``engine_process``), so its peak RSS is the worker's alone and the
engine's CPU and RSS are reported beside it; it runs on every workload (``--http-workloads``), the
``otlp`` one (b's records as OpenTelemetry ``ExportLogsServiceRequest`` messages) included. The
OpenTelemetry Collector (``otelcol``) writes to such an engine too, into its own table: a different
job, said beside the table.

The slow contenders (the naive faust agent, Quix Streams) read the ``-short`` topic: the same
records from the start of the same stream (the naive agent's window lasts 15 s on them, Quix runs
three times), so the whole run stays within about fifteen minutes on two cores. Each result carries
its own record count.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.dev import embedded
from pipeline.dev.bench import procstat, profile, repeats, report
from pipeline.dev.bench.broker import Produced, TopicWriter, create_topics, wait_until
from pipeline.dev.bench.contenders import REGISTRY, single_window_ok
from pipeline.dev.bench.engine_process import start_engine
from pipeline.dev.bench.freshness import Freshness, pipeline_freshness, program_freshness
from pipeline.dev.bench.measures import programs
from pipeline.dev.bench.options import Options, options
from pipeline.dev.bench.processes import spawn
from pipeline.dev.bench.runner import Measurement, Target, measure_pipeline
from pipeline.dev.bench.speed import SLOW_FACTOR, SpeedProbe, cpu_calibration_ms
from pipeline.dev.bench.status import Job
from pipeline.dev.bench.workload import Expected, Workload, messages, workload
from pipeline.dev.ports import free_port


# -- producing ---------------------------------------------------------------------------------------
def _produce(bootstrap: str, w: Workload, short_records: int, end_ms: int) -> dict[str, Any]:
    """Produce one workload into ``bench-<name>`` and its first records into ``bench-<name>-short``."""
    writer, full = TopicWriter(bootstrap), Expected()
    topic, short_topic = f"bench-{w.name}", f"bench-{w.name}-short"
    short: Expected | None = None
    size = 0
    for msg in messages(w, end_ms, full):
        writer.send(topic, msg)
        size += len(msg.value)
        if short is None:  # the short topic: whole messages until it holds short_records records
            writer.send(short_topic, msg)
            if full.rows >= short_records:
                short = full.copy()
    writer.flush()
    short = short or full.copy()
    return {"full": writer.produced[topic], "short": writer.produced.get(short_topic, writer.produced[topic]),
            "expected": full, "expected_short": short, "bytes": size}


def produce_all(bootstrap: str, ws: list[Workload], short: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Every workload, produced in parallel processes (generation is CPU-bound Python)."""
    create_topics(bootstrap, [t for w in ws for t in (f"bench-{w.name}", f"bench-{w.name}-short")])
    end_ms = int(time.time() * 1000)
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(2, len(ws)), mp_context=ctx) as pool:
        futures = {w.name: pool.submit(_produce, bootstrap, w, short[w.name], end_ms) for w in ws}
        return {name: fut.result() for name, fut in futures.items()}


# -- contenders --------------------------------------------------------------------------------------
def measure(o: Options, contender: str, target: Target) -> Measurement:
    """One run of a registered contender (``contenders.REGISTRY``) on a target."""
    module, _, function = REGISTRY[contender].measure.partition(":")
    fn: Callable[[Options, Target], Measurement] = getattr(importlib.import_module(module), function)
    return fn(o, target)


def _line(m: Measurement, run: int = 1) -> str:
    took = f"[{m.extra.get('run_wall_s', 0):.0f} s]"
    who_run = f"{m.contender}/{m.workload}" + (f" run {run}" if run > 1 else "")
    if m.extra.get("not_run"):
        return f"[bench] {who_run}: not run — {m.extra['not_run'][:300]} {took}"
    if not m.correct:
        return f"[bench] {who_run}: void — {'; '.join(m.problems)[:300]} {took}"
    engine = m.extra.get("engine")
    who = ("collector " if m.contender == "otelcol" else "worker ") if engine else ""
    beside = (f" + engine process CPU {engine['cpu_s_per_million'] or 0:.1f} s/M, peak RSS "
              f"{engine['peak_rss_mb']:.0f} MB" if engine else "")
    return (f"[bench] {who_run}: {m.records:,} records in {m.seconds:.2f} s = "
            f"{m.records_per_s:,.0f}/s, {who}CPU {m.cpu_s_per_million or 0:.1f} s/M, {who}peak RSS "
            f"{m.peak_rss_mb or 0:.0f} MB{beside} ✓ {took}")


def _fresh_line(f: Freshness) -> str:
    if f.skipped:
        return f"[bench] freshness {f.contender}/{f.workload}: not run — {f.skipped}"
    if not f.correct:
        return f"[bench] freshness {f.contender}/{f.workload}: void — {'; '.join(f.problems)[:300]}"
    return (f"[bench] freshness {f.contender}/{f.workload} at {f.offered_rps:,.0f}/s: p50 {f.p50_s} s, p99 {f.p99_s} s "
            f"(store: {f.store_p50_s} / {f.store_p99_s} s)")


# -- the run -----------------------------------------------------------------------------------------
def run(o: Options) -> dict[str, Any]:
    """Run the whole benchmark; returns the results document."""
    started, t0 = datetime.now(UTC), time.monotonic()
    load_start, speed_start = os.getloadavg(), cpu_calibration_ms()
    probe = SpeedProbe().start()
    work = o.work_dir or Path(tempfile.mkdtemp(prefix="imtel-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    broker = embedded.start_local(o.broker, port, work)
    broker_cpu = procstat.CpuMeter(broker.pid).start()
    bootstrap = f"127.0.0.1:{port}"
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    results: dict[str, Any] = {"schema": 2, "generated_at": started.isoformat(timespec="seconds"),
                               "command": o.command, "quick": o.quick, "broker": o.broker, "throughput": [],
                               "freshness": []}
    try:
        ws = [workload(name, o.records[name], o.seed) for name in o.workloads]
        counts = ", ".join(f"{w.name}: {w.records:,}" for w in ws)
        print(f"[bench] broker {bootstrap} ({o.broker}); producing {counts} records", flush=True)
        produced = produce_all(bootstrap, ws, o.short)
        results["workloads"] = {w.name: _workload_info(w, produced[w.name]) for w in ws}
        results["baselines"] = {"embedded_clickhouse_rss_mb": engine_floor(work / "engine-floor", bootstrap)}
        throughput(o, ws, produced, bootstrap, work, groups)
        if o.profile:
            w = next((w for w in ws if w.name == "b"), ws[0])
            results["profile"] = profile_run(o, w, produced[w.name], bootstrap, work)
            print(_profile_line(results["profile"]), flush=True)
        if o.freshness_seconds > 0:
            for w in (w for w in ws if w.name in o.freshness_workloads):
                for f in freshness(o, w, bootstrap, work, [repeats.combine(g) for g in groups.values()]):
                    results["freshness"].append(f.as_json())
                    print(_fresh_line(f), flush=True)
    finally:
        probe.stop()
        broker_cpu.stop()
        broker.stop()
        if not o.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"] = _machine(load_start, speed_start)
    results["machine"]["speed_probe_best_ms"] = round(probe.best(), 3)
    for runs in groups.values():
        for one in runs:
            _judge_speed(one, probe)
            _broker_share(one, broker_cpu)
        results["throughput"].append(repeats.combine(runs))
    results["windows"] = repeats.window_summary(results["throughput"], o.repeats, o.min_window_s)
    results["versions"] = _versions(o)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    return _derive(results)


def throughput(o: Options, ws: list[Workload], produced: dict[str, dict[str, Any]], bootstrap: str, work: Path,
               groups: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """Every contender on every workload, each run its own process, consumer group and store; the
    runs interleaved (run 1 of every contender on a workload, then run 2, ...) until each contender
    has ``o.repeats`` runs or, for the slow ones sized for it (``contenders.single_window_ok``), one
    window of ``o.min_window_s`` (``repeats.more_runs``): a fast contender's window that long only
    says the host was slow while it ran. Fills ``groups``: the measurement documents by
    (contender, workload), in the order they are shown."""
    for w in ws:
        p = produced[w.name]
        names = [c for c in o.contenders if o.runs_on(c, w.name)]
        for run in range(1, o.repeats + 1):
            for contender in names:
                runs = groups.setdefault((contender, w.name), [])
                alone = o.min_window_s if single_window_ok(contender) else float("inf")
                if not repeats.more_runs(runs, o.repeats, alone):
                    continue
                short = REGISTRY[contender].reads == "short"
                target = Target(w.name, p["short"] if short else p["full"], p["expected_short"] if short else
                                p["expected"], bootstrap, work / f"{contender}-{w.name}-{run}")
                began = time.monotonic()
                m = measure(o, contender, target)
                m.extra["run_wall_s"] = round(time.monotonic() - began, 1)  # incl. start-up and verification
                runs.append(m.as_json())
                print(_line(m, run), flush=True)
                if not o.keep:  # the run's store is verified: free the disk for the next ones
                    shutil.rmtree(target.run_dir, ignore_errors=True)


def _derive(results: dict[str, Any]) -> dict[str, Any]:
    """The parts computed from the measurements: ratios, goals, capacity, ceiling."""
    results["ratios"], results["goals"] = report.ratios(results), report.goals(results)
    results["capacity"] = report.capacity(results)
    results["ceiling"] = {w: report.ceiling(results, w) for w in sorted(results["workloads"])}
    return results


def profile_run(o: Options, w: Workload, p: dict[str, Any], bootstrap: str, work: Path) -> dict[str, Any]:
    """The pipeline once more on a workload, sampled by py-spy: CPU shares, not speed. The worker
    writes over HTTP to the engine in its own process (the production topology), so that its CPU,
    the denominator of the shares, is the worker's alone."""
    run_dir = work / f"profile-pipeline-{w.name}"
    if profile.spy_binary() is None:
        return {"workload": w.name, "correct": False, **profile.Profile(note="py-spy is not installed").as_json()}
    target = Target(w.name, p["full"], p["expected"], bootstrap, run_dir)
    try:
        engine = start_engine(run_dir)
    except RuntimeError as exc:
        return {"workload": w.name, "correct": False, **profile.Profile(note=str(exc)).as_json()}
    m = measure_pipeline(target, o.pipeline_env, o.timeout, profile_out=run_dir / "pyspy.txt", engine=engine)
    found = profile.read(run_dir / "pyspy.txt").of_cpu(m.cpu_seconds)
    if not m.correct:
        found.note = "; ".join(m.problems)
    return {"workload": w.name, "correct": m.correct, "topology": "ClickHouse over HTTP", "window_s": m.seconds,
            **found.as_json()}


def _profile_line(p: dict[str, Any]) -> str:
    if p["metrics_share"] is None:
        return f"[bench] profile: none — {p['note']}"
    shares = (f"metrics {p['metrics_cpu_share']:.1%}, logging {p['logging_cpu_share']:.1%} of the worker's CPU"
              if p.get("metrics_cpu_share") is not None else "")
    return (f"[bench] profile pipeline/{p['workload']}: {p['samples']} samples, {shares}{'; ' if shares else ''}"
            f"metrics {p['metrics_share']:.1%}, logging {p['logging_share']:.1%} of Python time; top: "
            f"{', '.join(f for f, _ in p['top_self'][:3])}")


def engine_floor(run_dir: Path, bootstrap: str) -> float | None:
    """Peak RSS of a process that only opens a fresh embedded store and applies the migrations."""
    run_dir.mkdir(parents=True, exist_ok=True)
    job = Job("engine-floor", bootstrap, "", "", str(run_dir / "store"), str(run_dir / "status.json"), 0)
    job.save(run_dir / "job.json")
    proc = spawn([sys.executable, "-m", "pipeline.dev.bench.limit", "floor", str(run_dir / "job.json")],
                 run_dir / "floor.log")
    wait_until(lambda: procstat.exited(proc), 120, 0.1)
    exit_ = procstat.stop(proc)
    return round(exit_.peak_rss_mb, 1) if exit_.returncode == 0 else None


def freshness(o: Options, w: Workload, bootstrap: str, work: Path, rows: list[dict[str, Any]]) -> list[Freshness]:
    """Freshness at half the pipeline's max rate on this workload: the pipeline, then any contender
    whose own max rate can carry that load (for the others the number would only measure a backlog)."""
    mine = next((r for r in rows if r["contender"] == "pipeline" and r["workload"] == w.name), None)
    if mine is None or not mine["correct"]:
        return []
    rate = mine["records_per_s"] / 2
    out = []
    for contender in ("pipeline", *[c for c in o.contenders if REGISTRY[c].freshness]):
        target = Target(w.name, Produced(f"bench-fresh-{contender}-{w.name}"), Expected(), bootstrap,
                        work / f"fresh-{contender}-{w.name}")
        if contender == "pipeline":
            out.append(pipeline_freshness(target, w, rate, o.freshness_seconds, o.freshness_warmup, o.pipeline_env,
                                          o.timeout))
            continue
        theirs = next((r for r in rows if r["contender"] == contender and r["workload"] == w.name), None)
        if theirs is None or not theirs["correct"]:
            continue
        if theirs["records_per_s"] < 1.1 * rate:
            f = Freshness(contender, w.name, round(rate, 1), 0.0)
            f.skipped = (f"its max rate {theirs['records_per_s']:,.0f}/s is below the offered {rate:,.0f}/s "
                         "(freshness would only measure a growing backlog)")
            out.append(f)
            continue
        out.append(program_freshness(programs(o)[contender], target, w, rate, o.freshness_seconds,
                                     o.freshness_warmup, o.timeout))
    return out


def _workload_info(w: Workload, p: dict[str, Any]) -> dict[str, Any]:
    full, short = p["full"], p["short"]
    return {"description": w.describe(), "records": full.records, "messages": full.messages, "bytes": p["bytes"],
            "partitions": len(full.end_offsets), "seed": w.seed, "short_records": short.records,
            "short_messages": short.messages, "checksum": p["expected"].totals()}


def _judge_speed(row: dict[str, Any], probe: SpeedProbe) -> None:
    """The host's speed during a measurement's window (see ``speed``), judged once the run is over
    against the run's best: recorded, and a note when the host was slow enough that the rate
    understates the contender."""
    window = row["extra"].get("window")
    factor = probe.factor(*window) if window else None
    row["extra"]["cpu_slowdown"] = factor
    if factor is not None and factor >= SLOW_FACTOR:
        row["notes"].append(f"the host's CPU ran {factor:.2f}x slower than its best during this window "
                            "(speed probe): this rate understates the contender")


def _broker_share(row: dict[str, Any], meter: procstat.CpuMeter) -> None:
    """The bundled broker's CPU inside a measurement's window, per million records: it shares the
    cores with every contender, so it is part of what a pipeline on this machine pays."""
    window, records = row["extra"].get("window"), row.get("records")
    cpu = meter.between(*window) if window else None
    row["extra"]["broker_cpu_s_per_million"] = round(cpu / records * 1e6, 3) if cpu is not None and records else None


def _machine(load_start: tuple[float, float, float], speed_start: float) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "cpu_calibration_ms": [speed_start, cpu_calibration_ms()]}


def _versions(o: Options) -> dict[str, str]:
    out = {}
    for dist in ("imtel", "faust-streaming", "confluent-kafka", "chdb", "clickhouse-connect", "msgspec", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    if "otelcol" in o.contenders:
        from pipeline.dev.bench.otelcol import manifest_version

        out["otelcol-imtel (ocb)"] = manifest_version()
    if "quix" in o.contenders and o.quix_python.exists():
        lib = next(o.quix_python.parent.parent.glob("lib/python*/site-packages"), None)
        dist_info = next(lib.glob("quixstreams-*.dist-info"), None) if lib else None
        if dist_info:
            out["quixstreams"] = dist_info.name.split("-")[1]
    return out


def write(o: Options, results: dict[str, Any]) -> None:
    """Print the table; write the JSON, the Markdown beside it and the README section."""
    import json

    print()
    print(report.render_text(results), end="")
    o.out.parent.mkdir(parents=True, exist_ok=True)
    o.out.write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.render_markdown(results)
    o.out.with_suffix(".md").write_text(markdown)
    print(f"\n[bench] results: {o.out} (+ {o.out.with_suffix('.md').name})", flush=True)
    if o.readme is not None:
        if report.update_readme(o.readme, report.render_readme(results)):
            print(f"[bench] {o.readme}: Performance table updated", flush=True)
        else:
            print(f"[bench] {o.readme}: no {report.START} … {report.END} markers, left as it is", flush=True)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """Run, print and write; a void measurement is a result (reported), not a failure of the command."""
    o = options(args, argv)
    if o.render is not None:
        write(o, rerender(o.render))
        return 0
    write(o, run(o))
    return 0


def rerender(path: Path) -> dict[str, Any]:
    """A results file with its derived parts (``_derive``) recomputed by this version."""
    import json

    try:
        results = dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read results file {path}: {exc}") from None
    return _derive(results)
