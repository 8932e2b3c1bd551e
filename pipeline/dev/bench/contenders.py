"""The contenders of ``imtel bench``: one entry each, in the order they run and are shown.

Everything the harness, the options and the report need to know about a contender is its entry:
its name on the command line and in the results, its row title, how it is measured (a function
``measure(options, target) -> runner.Measurement``, named as ``"module:function"`` and imported only
when the contender runs, so this module stays stdlib-only: the CLI imports it whenever its parser is
built), which topic it reads, where its ClickHouse engine runs, the workloads it runs on by default
and whether it gets a freshness phase.

Adding a contender is one entry in ``REGISTRY`` (plus its measure function). For example the
OpenTelemetry Collector contender would be::

    Contender("otelcol", "OpenTelemetry Collector (Kafka receiver -> ClickHouse exporter)",
              "bench.otelcol.contender:measure", engine="separate")

Its measure function gets the run's ``Options`` and a ``runner.Target`` (the workload's topic, its
produced offsets, the expected store content, the broker's address and a fresh run folder) and
returns a ``Measurement`` whose ``finish(seconds, cpu, until=...)`` was called with its window; the
harness repeats it, takes the medians, judges the host's speed over each window and renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKLOADS = ("a", "b")


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
    workloads: tuple[str, ...] = WORKLOADS  # the workloads it runs on unless the command line says otherwise
    alias: str = ""  # a command-line name selecting several contenders at once ("limit")
    freshness: bool = False  # gets a paced freshness phase (when its max rate can carry the offered load)
    default: bool = True  # in the default contender list


MEASURES = "pipeline.dev.bench.measures"
REGISTRY: dict[str, Contender] = {c.name: c for c in (
    Contender("pipeline", "imtel pipeline", f"{MEASURES}:pipeline"),
    Contender("pipeline-http", "imtel pipeline, ClickHouse over HTTP (engine in its own process)",
              f"{MEASURES}:pipeline_http", engine="separate"),
    Contender("naive-faust", "naive faust agent", f"{MEASURES}:naive_faust", reads="short", freshness=True),
    Contender("quix", "Quix Streams", f"{MEASURES}:quix", reads="short", freshness=True),
    Contender("limit-consume", "limit: consume + msgspec decode", f"{MEASURES}:limit_consume", engine="none",
              alias="limit"),
    Contender("limit-insert", "limit: chDB Arrow insert", f"{MEASURES}:limit_insert", alias="limit"),
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


def default_list() -> str:
    """The default ``--contenders`` value."""
    return ",".join(dict.fromkeys(c.alias or c.name for c in REGISTRY.values() if c.default))


def single_window_ok(name: str) -> bool:
    """Whether one window of ``repeats.MIN_WINDOW_S`` may stand for the contender (the slow ones)."""
    return name in REGISTRY and REGISTRY[name].reads == "short"


def title(name: str) -> str:
    return REGISTRY[name].title if name in REGISTRY else name
