"""The contenders of ``imtel bench``: one entry each, in the order they run and are shown.

Everything the harness, the options and the report need to know about a contender is its entry:
its name on the command line and in the results, its row title, how it is measured (a function
``measure(options, target) -> runner.Measurement``, named as ``"module:function"`` and imported only
when the contender runs, so this module stays stdlib-only: the CLI imports it whenever its parser is
built), which topic it reads, where its ClickHouse engine runs, the workloads it runs on by default
and whether it gets a freshness phase.

Adding a contender is one entry in ``REGISTRY`` (plus its measure function). For example the
OpenTelemetry Collector contender is::

    Contender("otelcol", "OpenTelemetry Collector, kafkareceiver -> clickhouseexporter (a different job: see below)",
              "pipeline.dev.bench.otelcol:measure", engine="separate", workloads=WORKLOADS, quick=False,
              differs="its own schema: ...")

Its measure function gets the run's ``Options`` and a ``runner.Target`` (the workload's topic, its
produced offsets, the expected store content, the broker's address and a fresh run folder) and
returns a ``Measurement`` whose ``finish(seconds, cpu, until=...)`` was called with its window; the
harness repeats it, takes the medians, judges the host's speed over each window and renders it. A
contender that cannot run here (not installed, not built) returns ``runner.not_run(...)``: reported
as not run with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKLOADS = ("a", "b", "otlp")  # every workload (workload.workload)
JSON_WORKLOADS = ("a", "b")  # our own JSON request logs: what the contenders run on unless their entry says more


@dataclass(frozen=True)
class Contender:
    """One contender of the benchmark."""

    name: str  # on the command line and in the results
    title: str  # the table's row
    measure: str  # "module:function", called as function(options, target) -> Measurement
    reads: str = "full"  # "full": the whole workload topic; "short": its first records (slow contenders,
    # sized so that one window lasts repeats.MIN_WINDOW_S: such a window may stand alone; the others always
    # run repeats.REPEATS times, since a long window of theirs only says the host was slow)
    engine: str = "in process"  # its ClickHouse: "in process" (its CPU and RSS included), "separate", "none"
    workloads: tuple[str, ...] = JSON_WORKLOADS  # the workloads it runs on unless the command line says otherwise
    alias: str = ""  # a command-line name selecting several contenders at once ("limit")
    freshness: bool = False  # gets a paced freshness phase (when its max rate can carry the offered load)
    default: bool = True  # in the default contender list
    quick: bool = True  # in the default contender list of --quick runs (False: it needs a long build first)
    differs: str = ""  # how its job differs from the pipeline's (shown with the table): "" = the same job


MEASURES = "pipeline.dev.bench.measures"
REGISTRY: dict[str, Contender] = {c.name: c for c in (
    Contender("pipeline", "imtel pipeline", f"{MEASURES}:pipeline"),
    Contender("pipeline-http", "imtel pipeline, ClickHouse over HTTP (engine in its own process)",
              f"{MEASURES}:pipeline_http", engine="separate", workloads=WORKLOADS),
    Contender("naive-faust", "naive faust agent", f"{MEASURES}:naive_faust", reads="short", freshness=True),
    Contender("quix", "Quix Streams", f"{MEASURES}:quix", reads="short", freshness=True),
    Contender("limit-consume", "limit: consume + msgspec decode", f"{MEASURES}:limit_consume", engine="none",
              alias="limit"),
    Contender("limit-insert", "limit: chDB Arrow insert", f"{MEASURES}:limit_insert", alias="limit"),
    Contender("otelcol", "OpenTelemetry Collector, kafkareceiver -> clickhouseexporter (a different job: see below)",
              "pipeline.dev.bench.otelcol:measure", engine="separate", workloads=WORKLOADS, quick=False,
              differs="its own schema (otel_logs: one row per Kafka message with the message's JSON as Body, one "
                      "per log record on OTLP input; no typed columns, no aggregates), no dead letters, no "
                      "exactly-once (offsets marked before the insert, an in-memory queue), no IP minimisation "
                      "(client_ip stored verbatim); correct = every row arrived in its own table (count)"),
)}
NAMES = tuple(REGISTRY)


def expand(wanted: list[str]) -> tuple[list[str], list[str]]:
    """Command-line names (contenders or aliases) -> (known contenders in registry order, unknown names)."""
    known, unknown = set(), []
    for name in wanted:
        group = [c.name for c in REGISTRY.values() if name in (c.name, c.alias)]
        if group:
            known.update(group)
        else:
            unknown.append(name)
    return [c for c in REGISTRY if c in known], sorted(set(unknown))


def cli_names() -> str:
    """The names the command line accepts, aliases standing for their group."""
    names: list[str] = []
    for c in REGISTRY.values():
        if c.alias and c.alias not in names:
            names.append(c.alias)
        elif not c.alias:
            names.append(c.name)
    return ", ".join(names)


def default_list(quick: bool = False) -> str:
    """The default ``--contenders`` value (of a ``--quick`` run: without the contenders needing a long build)."""
    return ",".join(dict.fromkeys(c.alias or c.name for c in REGISTRY.values() if c.default and (c.quick or not quick)))


def single_window_ok(name: str) -> bool:
    """Whether one window of ``repeats.MIN_WINDOW_S`` may stand for the contender (the slow ones)."""
    return name in REGISTRY and REGISTRY[name].reads == "short"


def title(name: str) -> str:
    return REGISTRY[name].title if name in REGISTRY else name


def differs(name: str) -> str:
    """How a contender's job differs from the pipeline's ("" for the same job, or one unknown to this version)."""
    return REGISTRY[name].differs if name in REGISTRY else ""
