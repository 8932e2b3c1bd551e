"""The command line of ``imtel bench``: its options and their validation (stdlib only, imported by
``pipeline.cli`` whenever the parser is built, so nothing heavy here)."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.dev.bench import contenders
from pipeline.dev.bench.repeats import MIN_WINDOW_S, REPEATS

REPO = Path(__file__).resolve().parents[3]
CONTENDERS = contenders.NAMES
ALL_WORKLOADS = contenders.WORKLOADS
DEFAULT_OUT = Path("bench/results/latest.json")
# Record counts: large enough that the fast contenders' windows last seconds (a few polls of their
# edges are then a small error) and the slow ones' reach MIN_WINDOW_S on the -short topic in one run.
# The OTLP workload holds the first records of b's stream (the same records, the same batches), in protobuf:
# 1M of them, since building the protobuf messages costs ~10 us a record.
RECORDS = {"a": 1_000_000, "b": 3_000_000, "otlp": 1_000_000}
SHORT = {"a": 150_000, "b": 300_000, "otlp": 150_000}
QUICK_RECORDS = {"a": 3_000, "b": 20_000, "otlp": 10_000}
QUICK_SHORT = {"a": 2_000, "b": 10_000, "otlp": 5_000}


@dataclass(frozen=True)
class Options:
    """One benchmark run's choices (from the command line)."""

    contenders: tuple[str, ...]
    workloads: tuple[str, ...]
    records: dict[str, int]
    short: dict[str, int]
    freshness_seconds: float
    freshness_warmup: float
    freshness_workloads: tuple[str, ...]
    timeout: float
    out: Path
    readme: Path | None
    quick: bool
    pipeline_env: dict[str, str]
    quix_python: Path
    seed: int
    work_dir: Path | None
    keep: bool
    command: str
    profile: bool = True
    http_workloads: tuple[str, ...] = ALL_WORKLOADS
    render: Path | None = None
    broker: str = "kafka"
    repeats: int = REPEATS
    min_window_s: float = MIN_WINDOW_S
    workloads_of: dict[str, tuple[str, ...]] = field(default_factory=dict)  # contender -> workloads it runs on

    def runs_on(self, contender: str, workload: str) -> bool:
        default = contenders.REGISTRY[contender].workloads if contender in contenders.REGISTRY else ()
        return workload in self.workloads_of.get(contender, default)


# -- command line ------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``imtel bench``."""
    p.add_argument("--contenders", default=None,
                   help=f"comma list of {contenders.cli_names()} (pipeline-http: the worker writing over HTTP to "
                        "`imtel engine` in its own process; limit = limit-consume + limit-insert; otelcol: the "
                        "OpenTelemetry Collector, built with Go on first use). Default: "
                        f"{contenders.default_list()} ({contenders.default_list(quick=True)} with --quick)")
    p.add_argument("--http-workloads", default=",".join(contenders.WORKLOADS),
                   help="workloads pipeline-http runs on (comma list; default all)")
    p.add_argument("--workloads", default=",".join(contenders.WORKLOADS),
                   help="a: one record per message; b: 100-500 records per message; otlp: b's records as OTLP/protobuf "
                        "ExportLogsServiceRequest messages (pipeline-http and otelcol only)")
    p.add_argument("--records-a", type=int, default=None, help=f"records of workload a (default {RECORDS['a']})")
    p.add_argument("--records-b", type=int, default=None, help=f"records of workload b (default {RECORDS['b']})")
    p.add_argument("--records-otlp", type=int, default=None,
                   help=f"records of workload otlp (default {RECORDS['otlp']}: the first of b's)")
    p.add_argument("--short-a", type=int, default=None,
                   help=f"records of a the naive agent and Quix read ({SHORT['a']})")
    p.add_argument("--short-b", type=int, default=None,
                   help=f"records of b the naive agent and Quix read ({SHORT['b']})")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"runs per contender and workload, the median reported with min-max ({REPEATS}; "
                        "1 with --quick); a slow contender whose first window lasts --min-window seconds runs once")
    p.add_argument("--min-window", type=float, default=MIN_WINDOW_S,
                   help=f"seconds a slow contender's (naive faust, Quix) single window must last to stand alone "
                        f"({MIN_WINDOW_S:g})")
    p.add_argument("--freshness-seconds", type=float, default=None, help="paced phase length, 0 = skip (20)")
    p.add_argument("--freshness-workloads", default="b", help="workloads with a freshness phase (comma list)")
    p.add_argument("--timeout", type=float, default=None, help="seconds one contender run may take (180)")
    p.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT})")
    p.add_argument("--readme", type=Path, default=None,
                   help="file whose bench markers get the Markdown table (default README.md; not with --quick)")
    p.add_argument("--no-readme", action="store_true", help="do not touch the README")
    p.add_argument("--quick", action="store_true", help="tiny counts for a smoke test (speeds meaningless)")
    p.add_argument("--pipeline-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra IMTEL_* setting for the pipeline's worker (repeatable)")
    p.add_argument("--quix-python", type=Path, default=REPO / ".venv-quix" / "bin" / "python",
                   help="interpreter of the Quix Streams virtualenv")
    p.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                   help="kafka: a real Apache Kafka node (default, what production runs); tansu: the bundled broker")
    p.add_argument("--seed", type=int, default=20261122)
    p.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (stores, logs)")
    p.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                   help="run nothing: re-render the table, the Markdown and the README from a results file")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the extra pipeline run under py-spy (metrics/logging share of CPU; off with --quick)")


def options(args: argparse.Namespace, argv: list[str]) -> Options:
    """Validate the command line into ``Options`` (ValueError with one sentence when wrong)."""
    quick = bool(args.quick)
    given = args.contenders if args.contenders is not None else contenders.default_list(quick=quick)
    wanted = [c.strip() for c in given.split(",") if c.strip()]
    expanded, unknown = contenders.expand(wanted)
    if unknown or not expanded:
        raise ValueError(f"unknown contender {', '.join(unknown) or '(none)'}: use {contenders.cli_names()}")
    order = tuple(expanded)
    loads = tuple(dict.fromkeys(x.strip() for x in args.workloads.split(",") if x.strip()))
    if not loads or set(loads) - set(contenders.WORKLOADS):
        raise ValueError(f"--workloads takes a comma list of {', '.join(contenders.WORKLOADS)}")
    base, base_short = (QUICK_RECORDS, QUICK_SHORT) if quick else (RECORDS, SHORT)
    records = {"a": _given(args.records_a, base["a"]), "b": _given(args.records_b, base["b"]),
               "otlp": _given(getattr(args, "records_otlp", None), base["otlp"])}
    short = {"a": _given(args.short_a, base_short["a"]), "b": _given(args.short_b, base_short["b"]),
             "otlp": base_short["otlp"]}
    for name, n in (*records.items(), *short.items()):
        if n <= 0:
            raise ValueError(f"record counts must be positive (got {n} for {name})")
    env = {}
    for item in args.pipeline_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("IMTEL_"):
            raise ValueError(f"--pipeline-env takes IMTEL_NAME=VALUE, got {item!r}")
        env[key] = value
    if args.broker == "tansu":  # the bundled broker speaks only the classic group protocol, slowly
        from pipeline.dev.embedded import tansu_env

        env = {**tansu_env(), **env}
    fresh = args.freshness_seconds if args.freshness_seconds is not None else (4.0 if quick else 20.0)
    if fresh < 0:
        raise ValueError("--freshness-seconds must not be negative")
    fresh_loads = tuple(x.strip() for x in args.freshness_workloads.split(",") if x.strip())
    if set(fresh_loads) - {"a", "b"}:
        raise ValueError("--freshness-workloads takes a, b or a,b")
    http_loads = tuple(x.strip() for x in args.http_workloads.split(",") if x.strip())
    if set(http_loads) - set(contenders.WORKLOADS):
        raise ValueError(f"--http-workloads takes a comma list of {', '.join(contenders.WORKLOADS)}")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    runs = _given(args.repeats, 1 if quick else REPEATS)
    if runs < 1 or args.min_window <= 0:
        raise ValueError("--repeats and --min-window must be positive")
    workloads_of = {c: http_loads if c == "pipeline-http" else contenders.REGISTRY[c].workloads for c in order}
    readme = None if args.no_readme or (quick and args.readme is None) else (args.readme or Path("README.md"))
    out = args.out or (DEFAULT_OUT if not quick else Path(tempfile.gettempdir()) / "imtel-bench-quick.json")
    return Options(order, loads, records, {k: min(short[k], records[k]) for k in records}, fresh,
                   1.0 if quick else 3.0, fresh_loads,
                   args.timeout or (90.0 if quick else 180.0), out, readme, quick, env, args.quix_python, args.seed,
                   args.work_dir, bool(args.keep), " ".join(["imtel bench", *argv]),
                   profile=not (args.no_profile or quick) and bool({"pipeline", "pipeline-http"} & set(order)),
                   render=args.render,
                   http_workloads=http_loads, broker=args.broker, repeats=runs, min_window_s=args.min_window,
                   workloads_of=workloads_of)



def _given(value: int | None, default: int) -> int:
    return default if value is None else value
