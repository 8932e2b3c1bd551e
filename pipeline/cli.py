"""``imtel``: one console script, one subcommand per job.

  imtel embedded     everything on this machine: broker, store, worker, traffic, metrics, live view
  imtel worker       the faust worker against the configured Kafka and ClickHouse
  imtel generate     synthetic IM traffic into any broker
  imtel migrate      apply ClickHouse migrations (``--cluster`` for the replicated form)
  imtel topics       create the pipeline's topics (retention from the policy)
  imtel query NAME   a named performance-analysis query (table, csv or json)
  imtel settings     every setting with its env var, default and meaning

Bad arguments or settings end with one line naming the problem (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .settings import Settings, SettingsError


class UsageError(Exception):
    """A problem the user can fix; printed as one line."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("kafka_bootstrap", "clickhouse_dsn", "web_port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings.from_env(**overrides)


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faust", "mode", "aiokafka", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level.upper())))


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import migrations
    from .sinks.clickhouse import connect

    s = _settings(args)
    _ensure_data_dir(s)
    client = connect(s.clickhouse_url, s.clickhouse_user, s.clickhouse_password)
    cluster = args.cluster or s.clickhouse_cluster
    if cluster:  # replicated local tables + Distributed tables for reads and writes
        from . import cluster_schema

        applied = cluster_schema.apply(client, s.clickhouse_database, cluster)
    else:
        applied = migrations.apply(client, s.clickhouse_database)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from .topics import ensure_topics

    created = ensure_topics(_settings(args))
    print("created: " + (", ".join(created) if created else "nothing (all exist)"))
    return 0


def _ensure_data_dir(s: Settings) -> None:
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    if s.chdb_path is not None:
        s.chdb_path.mkdir(parents=True, exist_ok=True)


def run_worker(s: Settings, live_output: bool = False) -> int:
    """Build the pipeline and run the faust worker until SIGINT/SIGTERM."""
    from faust.worker import Worker

    from . import migrations
    from .app import build

    _ensure_data_dir(s)
    pipeline = build(s, live_output=live_output)
    if not s.clickhouse_cluster:  # on a cluster the migration Job (imtel migrate --cluster) does it
        migrations.apply(pipeline.store.client, s.clickhouse_database)
    worker = Worker(pipeline.app, pipeline.source, loglevel=s.log_level if s.log_level != "warning" else "warn",
                    quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    s = _settings(args)
    _logging(s.log_level)
    from .topics import ensure_topics

    ensure_topics(s)
    return run_worker(s)


def cmd_embedded(args: argparse.Namespace) -> int:
    from . import embedded
    from .topics import ensure_topics

    s = _settings(args)
    _logging(s.log_level if s.log_level != "info" else "warning")
    host, _, port = s.kafka_bootstrap.partition(":")
    if host not in ("127.0.0.1", "localhost") or "," in s.kafka_bootstrap:
        raise UsageError("embedded mode starts its own broker on loopback: IMTEL_KAFKA_BOOTSTRAP must be "
                         "127.0.0.1:PORT (use `imtel worker` for a real Kafka)")
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    broker = None
    if not embedded.port_open("127.0.0.1", int(port)):
        broker = embedded.start_broker(int(port), Path(s.data_dir) / "broker.log")
    generator = None
    try:
        ensure_topics(s)
        if args.rate > 0:
            generator = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "generate", "--bootstrap", s.kafka_bootstrap,
                 "--rate", str(args.rate), "--samples", "--invalid-ratio", str(args.invalid_ratio)]
                + (["--incident-app", str(args.incident_app)] if args.incident_app else []),
                start_new_session=True)
        print(f"[imtel] broker 127.0.0.1:{port} | store {s.clickhouse_dsn} | metrics "
              f"http://{s.web_host}:{s.web_port}/metrics | traffic {args.rate}/s | Ctrl-C stops", flush=True)
        return run_worker(s, live_output=True)
    finally:
        embedded.stop(generator)
        embedded.stop(broker)


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import Incident, produce

    s = Settings.from_env()
    bootstrap = args.bootstrap or s.kafka_bootstrap
    incident = Incident(args.incident_app) if args.incident_app else None
    conf = {k: v for k, v in s.kafka_config().items() if k != "bootstrap.servers"}
    try:
        sent = produce(bootstrap, args.topic or s.topic_request_logs,
                       s.topic_monitoring_samples if args.samples else None, args.rate, args.count,
                       batch=args.batch, seed=args.seed, invalid_ratio=args.invalid_ratio, incident=incident,
                       kafka_config=conf)
    except KeyboardInterrupt:
        return 0
    print(f"sent {sent} records")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from . import queries

    s = _settings(args)
    raw = dict(p.split("=", 1) for p in args.param)
    params = queries.parse_params(args.name, raw)
    result = _query_via_worker(s, args.name, raw)
    if result is None:
        from .metrics import Metrics
        from .sinks.clickhouse import ClickHouseStore, connect

        store = ClickHouseStore(connect(s.clickhouse_url, s.clickhouse_user, s.clickhouse_password),
                                s.clickhouse_database, Metrics())
        result = queries.run(store, args.name, params).as_dict()
    print(_render(result, args.format), end="")
    return 0


def _query_via_worker(s: Settings, name: str, raw: dict[str, str]) -> dict[str, Any] | None:
    """Ask a running worker (it owns the embedded store); None when none answers."""
    url = f"http://{s.web_host}:{s.web_port}/queries/{name}?{urllib.parse.urlencode(raw)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        raise UsageError(json.loads(exc.read()).get("error", str(exc))) from None
    except (urllib.error.URLError, OSError):
        return None


def _render(result: dict[str, Any], fmt: str) -> str:
    cols, rows = result["columns"], result["rows"]
    if fmt == "json":
        return json.dumps([dict(zip(cols, r, strict=False)) for r in rows], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(cols)
        writer.writerows(rows)
        return buf.getvalue()
    text = [[str(c) for c in cols], *[[str(v) for v in r] for r in rows]]
    widths = [max(len(row[i]) for row in text) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip() for row in text]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]]) + "\n"


def cmd_settings(args: argparse.Namespace) -> int:
    for env, default, doc in Settings.describe():
        print(f"{env:36} {default:28} {doc}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imtel", description="IM telemetry pipeline")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Any, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(fn=fn)
        return sp

    e = add("embedded", cmd_embedded, "run everything on this machine (broker, store, worker, traffic)")
    e.add_argument("--rate", type=_nonneg_float, default=300.0, help="traffic records/s (0: none)")
    e.add_argument("--invalid-ratio", type=_ratio, default=0.002, help="share of malformed messages")
    e.add_argument("--incident-app", type=int, default=0, help="sdk_app_id whose errors/latency jump")
    add("worker", cmd_worker, "run the worker against the configured Kafka and ClickHouse")
    g = add("generate", cmd_generate, "produce synthetic IM traffic")
    g.add_argument("--bootstrap", help="Kafka bootstrap servers (default: IMTEL_KAFKA_BOOTSTRAP)")
    g.add_argument("--topic", help="request-log topic (default: IMTEL_TOPIC_REQUEST_LOGS)")
    g.add_argument("--rate", type=_nonneg_float, default=1000.0, help="records/s, 0 = as fast as possible")
    g.add_argument("--count", type=_positive_int, default=None, help="stop after this many records")
    g.add_argument("--batch", type=_positive_int, default=1, help="records per message (JSON array)")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--invalid-ratio", type=_ratio, default=0.0, help="share of malformed messages")
    g.add_argument("--incident-app", type=int, default=0, help="sdk_app_id whose errors/latency jump")
    g.add_argument("--samples", action="store_true", help="also send monitoring samples")
    m = add("migrate", cmd_migrate, "apply ClickHouse migrations")
    m.add_argument("--cluster", default="", help="render ON CLUSTER + Replicated engines for this cluster")
    add("topics", cmd_topics, "create the pipeline's Kafka topics")
    q = add("query", cmd_query, "run a named performance-analysis query")
    q.add_argument("name")
    q.add_argument("param", nargs="*", help="key=value parameters, e.g. minutes=30 app=1400000001")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    add("settings", cmd_settings, "list every setting")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def _nonneg_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (SettingsError, UsageError, ValueError) as exc:
        print(f"imtel {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: one line, no traceback (set IMTEL_LOG_LEVEL=debug for one)
        if os.environ.get("IMTEL_LOG_LEVEL") == "debug":
            raise
        from .sinks.clickhouse import classify

        print(f"imtel {args.command}: {type(exc).__name__}: {classify(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
