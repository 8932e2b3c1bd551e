"""How each registered contender (``contenders.REGISTRY``) is measured: ``measure(options, target)``.

The pipeline's worker is observed from outside (``runner.measure_pipeline``); the other contenders
are programs reporting through a status file (``runner.measure_program``), described by ``programs``
(also used by the freshness phase).
"""

from __future__ import annotations

import os
import sys

from pipeline.dev.bench.engine_process import start_engine
from pipeline.dev.bench.options import REPO, Options
from pipeline.dev.bench.runner import Measurement, Program, Target, measure_pipeline, measure_program, not_run


def programs(o: Options) -> dict[str, Program]:
    """The status-reporting contender programs, by contender name."""
    py = sys.executable
    quix_env = {**os.environ, "PYTHONPATH": str(REPO)}
    return {
        "naive-faust": Program("naive-faust", lambda j: [py, "-m", "pipeline.dev.bench.naive_faust", str(j)], True),
        "quix": Program("quix", lambda j: [str(o.quix_python), "-m", "pipeline.dev.bench.quix_app", str(j)], True,
                        quix_env),
        "limit-consume": Program("limit-consume", lambda j: [py, "-m", "pipeline.dev.bench.limit", "consume", str(j)],
                                 False, uses_store=False),
        "limit-insert": Program("limit-insert", lambda j: [py, "-m", "pipeline.dev.bench.limit", "insert", str(j)],
                                False),
    }


def pipeline(o: Options, t: Target) -> Measurement:
    """``imtel worker`` with the embedded engine in its own process (everything in one process)."""
    return measure_pipeline(t, o.pipeline_env, o.timeout)


def pipeline_http(o: Options, t: Target) -> Measurement:
    """The same worker writing over HTTP to ``imtel engine`` in its own process (the production topology)."""
    try:
        engine = start_engine(t.run_dir)
    except RuntimeError as exc:
        m = Measurement("pipeline-http", t.workload, t.produced.records)
        m.problems.append(str(exc))
        return m
    return measure_pipeline(t, o.pipeline_env, o.timeout, engine=engine)


SHORT_NOTE = "reads the -short topic: the first records of the same stream"


def naive_faust(o: Options, t: Target) -> Measurement:
    m = measure_program(programs(o)["naive-faust"], t, o.timeout)
    m.notes.append(SHORT_NOTE)
    return m


def quix(o: Options, t: Target) -> Measurement:
    if not o.quix_python.exists():
        return not_run("quix", t, f"not installed: {o.quix_python} is missing (`make bench` creates .venv-quix)")
    m = measure_program(programs(o)["quix"], t, o.timeout)
    m.notes.append(SHORT_NOTE)
    return m


def limit_consume(o: Options, t: Target) -> Measurement:
    m = measure_program(programs(o)["limit-consume"], t, o.timeout)
    m.notes.append("window: confluent-kafka consume(1000) + msgspec decode into RequestLog structs, no processing")
    return m


def limit_insert(o: Options, t: Target) -> Measurement:
    m = measure_program(programs(o)["limit-insert"], t, o.timeout)
    if m.extra.get("insert_seconds"):
        # the window is the timed inserts (the schema's view folds each into the aggregate table)
        m.finish(m.extra["insert_seconds"], m.extra.get("insert_cpu_seconds"))
        m.notes.append(f"window: clickhouse-connect insert_arrow of {m.extra['rows_per_insert'] // 1000}k-row "
                       "Arrow tables only, the view's aggregate included (rows built untimed)")
    return m
