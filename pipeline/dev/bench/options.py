"""The command line of ``imtel bench``: its options and their validation (stdlib only, imported by
``pipeline.cli`` whenever the parser is built, so nothing heavy here)."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CONTENDERS = ("pipeline", "pipeline-http", "naive-faust", "quix", "limit-consume", "limit-insert")
DEFAULT_OUT = Path("bench/results/latest.json")


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
    http_workloads: tuple[str, ...] = ("b",)
    render: Path | None = None
    broker: str = "kafka"


# -- command line ------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``imtel bench``."""
    p.add_argument("--contenders", default="pipeline,pipeline-http,naive-faust,quix,limit",
                   help="comma list of pipeline, pipeline-http (the worker writing over HTTP to `imtel engine` in "
                        "its own process), naive-faust, quix, limit (= limit-consume + limit-insert)")
    p.add_argument("--http-workloads", default="b", help="workloads pipeline-http runs on (comma list; default b)")
    p.add_argument("--workloads", default="a,b", help="a: one record per message; b: 100-500 records per message")
    p.add_argument("--records-a", type=int, default=None, help="records of workload a (default 250000)")
    p.add_argument("--records-b", type=int, default=None, help="records of workload b (default 750000)")
    p.add_argument("--short-a", type=int, default=None, help="records of a the naive agent and Quix read (40000)")
    p.add_argument("--short-b", type=int, default=None, help="records of b the naive agent and Quix read (150000)")
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
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    expanded = [x for c in wanted for x in (("limit-consume", "limit-insert") if c == "limit" else (c,))]
    unknown = sorted(set(expanded) - set(CONTENDERS))
    if unknown or not expanded:
        raise ValueError(f"unknown contender {', '.join(unknown) or '(none)'}: use pipeline, pipeline-http, "
                         "naive-faust, quix, limit")
    order = tuple(c for c in CONTENDERS if c in expanded)
    loads = tuple(dict.fromkeys(x.strip() for x in args.workloads.split(",") if x.strip()))
    if not loads or set(loads) - {"a", "b"}:
        raise ValueError("--workloads takes a, b or a,b")
    quick = bool(args.quick)
    records = {"a": _given(args.records_a, 3_000 if quick else 250_000),
               "b": _given(args.records_b, 20_000 if quick else 750_000)}
    short = {"a": _given(args.short_a, 2_000 if quick else 40_000),
             "b": _given(args.short_b, 10_000 if quick else 150_000)}
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
    if set(http_loads) - {"a", "b"}:
        raise ValueError("--http-workloads takes a, b or a,b")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    readme = None if args.no_readme or (quick and args.readme is None) else (args.readme or Path("README.md"))
    out = args.out or (DEFAULT_OUT if not quick else Path(tempfile.gettempdir()) / "imtel-bench-quick.json")
    return Options(order, loads, records, {k: min(short[k], records[k]) for k in records}, fresh,
                   1.0 if quick else 3.0, fresh_loads,
                   args.timeout or (90.0 if quick else 180.0), out, readme, quick, env, args.quix_python, args.seed,
                   args.work_dir, bool(args.keep), " ".join(["imtel bench", *argv]),
                   profile=not (args.no_profile or quick) and "pipeline" in order, render=args.render,
                   http_workloads=http_loads, broker=args.broker)




def _given(value: int | None, default: int) -> int:
    return default if value is None else value
