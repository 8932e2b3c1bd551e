"""The faust application of one worker: its pieces wired together, its agent, timers and HTTP endpoints.

- ingestion: ``KafkaBatchSource`` (``consumer.py``) hands *batches* of Kafka messages to the
  ``Processor`` (``processor.py``) on the event loop, directly, not through a faust channel (see
  ``deliver``);
- agent ``registry`` (on the applications topic): keeps the application registry (Configuration
  Data) in ClickHouse;
- timers: consumer lag, oldest-row age per table, the live terminal line;
- web (``IMTEL_WEB_PORT``): open ``/metrics``, ``/healthz`` (liveness), ``/readyz`` (partitions assigned
  and ClickHouse reachable); behind a bearer token (``web_guard``), the data endpoints ``/queries/{name}``
  (named queries, so a second terminal can read the embedded store while this process owns it),
  ``/report`` (the incident-review HTML report), ``/audit``, ``/apps`` and (embedded store only)
  ``POST /erase`` for the retention CLI commands, ``/deadletters`` (ledger counts) for
  ``imtel deadletters``. They read through their own read-only client
  (``WebReads``), never under the inserts' lock. faust's own pages (``/``, ``/router``, ``/table``...) are off;
- timer ``app_retention``: deletes rows past an app's own shorter retention (pipeline/ops/registry.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import os
import re
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.config.policy import Policy, load_policy
from pipeline.config.settings import Settings
from pipeline.monitoring.metrics import Metrics
from pipeline.ops import queries
from pipeline.ops.registry import ENFORCE_INTERVAL_S
from pipeline.schema.migrations import INSERT_SETTINGS
from pipeline.sinks.clickhouse import ClickHouseStore, InsertError, classify, compress_option, connect, connect_reader
from pipeline.sinks.deadletter import KafkaDeadLetters
from pipeline.worker import live
from pipeline.worker.consumer import KafkaBatchSource
from pipeline.worker.faust_stop import bound_consumer_stop
from pipeline.worker.processor import Processor

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})  # no personal data: scrapers and probes need no token
DATA_PATHS = re.compile(r"/(queries/[A-Za-z0-9_]{1,64}|report|audit|apps|erase|deadletters)")  # need the token
TOKEN_FILE = "worker.token"  # in IMTEL_DATA_DIR; the CLI (pipeline/cli.py) reads the same name
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass
class Pipeline:
    """Everything one worker process holds (handy for tests and the CLI)."""

    app: faust.App
    settings: Settings
    metrics: Metrics
    store: ClickHouseStore
    processor: Processor
    source: KafkaBatchSource


def broker_credentials(settings: Settings) -> Any:
    """faust's view of the Kafka security settings (the confluent clients get ``kafka_config()``):
    SASL and/or TLS, with the CA bundle from settings, so both clients connect the same way."""
    protocol = settings.kafka_security_protocol
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location or None)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context) if context is not None else None


def build(settings: Settings, metrics: Metrics | None = None, policy: Policy | None = None,
          live_output: bool = False) -> Pipeline:
    """Wire a worker: faust app, ClickHouse store, processor, Kafka batch source."""
    metrics = metrics or Metrics(top_apps=settings.metrics_top_apps)
    policy = policy or load_policy()
    app = faust.App(
        # faust's own group (the registry agent's) is named after the pipeline's, so that two
        # pipelines on one broker never share it
        f"{settings.consumer_group}-registry",
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings), web_host=settings.web_host,
        web_port=settings.web_port, web_bind=settings.web_host, datadir=f"{settings.data_dir}/faust",
        # faust's own pages (/router, /table, /graph, /stats, /performance) off; its "/" index, which has
        # no switch, and any other path not ours is a 404 of web_guard, which also guards the data pages
        web_router_enabled=False, web_tables_enabled=False, web_stats_enabled=False, web_graph_enabled=False,
        web_metrics_enabled=False,
        web_application_options={"middlewares": [web_guard(settings, web_token(settings))]},
        broker_rebalance_timeout=3, broker_session_timeout=10, broker_heartbeat_interval=3,
        topic_disable_leader=True, store="memory://",
        topic_replication_factor=settings.topic_replication, producer_acks=-1)
    # a SIGTERM during faust's own group join must not wait for the join (up to mode's 60 s): faust_stop.py
    bound_consumer_stop(app)
    store = ClickHouseStore(connect(settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password,
                                    timeout=settings.clickhouse_timeout_seconds,
                                    compress=compress_option(settings.clickhouse_compression)),
                            settings.clickhouse_database, metrics,
                            insert_settings=INSERT_SETTINGS if settings.clickhouse_cluster else None)
    dlq = KafkaDeadLetters(settings.kafka_config(), settings.topic_dead_letters,
                           max_payload=settings.dead_letter_max_bytes, max_message_bytes=settings.max_message_bytes)
    processor = Processor(settings, store, dlq, metrics, policy)

    async def deliver(messages: list[Any]) -> int:
        """Buffer a prefix of one batch (decode, validate, minimise) on the event loop, between two polls;
        returns how many messages were taken (see ``Processor.process``).

        Not through a faust channel: faust pauses and clears its channels whenever its own consumer
        group (the registry agent's) rebalances, which would silently drop a batch."""
        return processor.process(messages)

    # Started by the Worker next to the app (worker/run.run_worker), not as an app service: faust starts
    # app services only after its own consumer group settled, which must not gate ingestion.
    source = KafkaBatchSource(settings, processor, metrics, deliver)
    pipeline = Pipeline(app, settings, metrics, store, processor, source)

    registry_topic = app.topic(settings.topic_applications, value_serializer="raw", key_serializer="raw")

    @app.agent(registry_topic, name="registry")
    async def registry(stream: Any) -> None:
        """Application registry updates (Configuration Data) -> ``applications`` table.

        Acks are manual: with faust's automatic ack an event is acked even when the agent fails on it
        (the stream's ``finally``), so its offset would be committed and the update lost. Here an update
        is acked once stored, or skipped as a tombstone or invalid; while ClickHouse is down
        ``apply_until_stored`` retries it with backoff, and a stop meanwhile leaves it uncommitted."""
        from pipeline.ops.registry import apply_until_stored, message_time

        manual = stream.noack()
        async for event in manual.events():
            await apply_until_stored(store, event.value, settings.clickhouse_cluster, metrics.registry_retries,
                                     key=event.key, now=message_time(event.message.timestamp))
            await manual.ack(event)

    @app.timer(interval=5.0)
    async def lag() -> None:
        await asyncio.get_running_loop().run_in_executor(None, source.update_lag)

    @app.timer(interval=30.0, on_leader=False)
    async def registered_apps() -> None:
        """The registry's active apps keep their own ``app`` metric label ahead of unregistered ids
        (``metrics.AppLabeler``): sdk_app_id is untrusted input, the registry is not."""
        from pipeline.ops.registry import list_apps

        try:
            apps = await asyncio.get_running_loop().run_in_executor(None, list_apps, store)
        except InsertError:
            return
        metrics.apps.register(int(a["sdk_app_id"]) for a in apps if a.get("status") == "active")

    @app.timer(interval=60.0, on_leader=False)
    async def oldest_rows() -> None:
        try:
            ages = await asyncio.get_running_loop().run_in_executor(None, queries.oldest_row_ages, store)
        except InsertError:
            return
        for table, age in ages.items():
            metrics.oldest_row_age.labels(table).set(age)

    @app.timer(interval=float(ENFORCE_INTERVAL_S), on_leader=False)
    async def app_retention() -> None:
        """Per-app retention (registry ``retention_days``): ClickHouse cannot express it as a TTL, so
        rows past it are deleted by mutations (pipeline/ops/registry.py). Idempotent across workers."""
        from pipeline.ops.registry import enforce_app_retention

        try:
            done = await asyncio.get_running_loop().run_in_executor(
                None, enforce_app_retention, store, policy, settings.clickhouse_cluster)
        except InsertError as exc:
            log.warning("per-app retention not enforced this round: %s", exc)
            return
        for line in done:
            log.info("per-app retention: %s", line)

    if live_output:
        view = live.LiveView(metrics, processor)

        @app.timer(interval=5.0)
        async def progress() -> None:
            print(view.line(time.time()), flush=True)

    reads = WebReads(pipeline)
    _register_web(app, pipeline, reads)
    _register_privacy(app, pipeline, policy, reads)
    return pipeline


def web_token(settings: Settings) -> str:
    """The data endpoints' bearer token: IMTEL_WEB_TOKEN(_FILE) when set, else 256 fresh random bits per
    run, written to IMTEL_DATA_DIR/worker.token (0600) for the imtel CLI of the same user. Per run, so a
    token that leaked dies with the process; a file, so nobody types it."""
    if settings.web_token:
        return settings.web_token
    token = secrets.token_urlsafe(32)
    write_private(Path(settings.data_dir) / TOKEN_FILE, token)
    return token


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only: created 0600 under a temporary name, then
    renamed over the old file, so no reader ever sees it partly written or with wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """Host names the data endpoints answer besides loopback ones: IMTEL_WEB_ALLOWED_HOSTS and a
    specific IMTEL_WEB_HOST (a wildcard bind names no host)."""
    names = {h.strip().strip("[]").lower() for h in settings.web_allowed_hosts.split(",") if h.strip()}
    if settings.web_host not in WILDCARD_HOSTS:
        names.add(settings.web_host.strip("[]").lower())
    return frozenset(names)


def host_allowed(host_header: str, extra: frozenset[str]) -> bool:
    """Whether a Host header names this machine's loopback (``localhost``, 127.0.0.0/8, ::1) or an allowed
    name: a page rebound to 127.0.0.1 still sends its own name, so it is refused here."""
    try:
        name = (urllib.parse.urlsplit("//" + host_header).hostname or "").rstrip(".").lower()
    except ValueError:
        return False
    if not name:
        return False
    if name == "localhost" or name in extra:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refusal(path: str, headers: Mapping[str, str], token: str, extra_hosts: frozenset[str]) -> tuple[int, str] | None:
    """Why a request must not be served, as (HTTP status, message), or None. Open paths pass; a path that is
    not ours is 404 (faust's own pages included); a data path needs no browser context (``Origin``,
    ``Sec-Fetch-Site``), a loopback or allowed ``Host`` and ``Authorization: Bearer <token>``, compared in
    constant time. The messages never echo what was sent."""
    if path in OPEN_PATHS:
        return None
    if not DATA_PATHS.fullmatch(path):
        return 404, "not found"
    if headers.get("Origin") is not None or headers.get("Sec-Fetch-Site", "none") != "none":
        return 403, "requests from web pages are refused"
    if not host_allowed(headers.get("Host", ""), extra_hosts):
        return 403, "this Host is not answered (loopback names, IMTEL_WEB_HOST and IMTEL_WEB_ALLOWED_HOSTS are)"
    scheme, _, given = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 401, ("this endpoint needs the worker's token: Authorization: Bearer <IMTEL_WEB_TOKEN, or the "
                     f"content of IMTEL_DATA_DIR/{TOKEN_FILE}>; the imtel CLI sends it itself")
    return None


Handler = Callable[[Any], Awaitable[Any]]


def web_guard(settings: Settings, token: str) -> Callable[[Any, Handler], Awaitable[Any]]:
    """aiohttp middleware applying ``refusal`` to every request the worker's web server receives, before
    any handler (and so before any store access) runs."""
    from aiohttp import web as aioweb

    extra = allowed_hosts(settings)

    @aioweb.middleware
    async def guard(request: Any, handler: Handler) -> Any:
        refused = refusal(request.path, request.headers, token, extra)
        if refused is None:
            return await handler(request)
        status, message = refused
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return aioweb.json_response({"error": message}, status=status, headers=headers)

    return guard


class WebReads:
    """The stores the web endpoints read through, opened on first use: a read-only client with
    ``max_execution_time`` (``connect_reader``) for the data endpoints and one more for ``/readyz``, each
    with its own lock, so no endpoint ever waits on (or holds) the lock the inserts take, and a probe
    never queues behind a report. An in-memory chDB engine cannot be shared by two handles: reads then
    go through the writing store."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self._lock = threading.Lock()
        self._stores: dict[str, ClickHouseStore] = {}

    def data(self) -> ClickHouseStore:
        return self._open("data", self.p.settings.web_query_timeout_seconds)

    def ping(self) -> bool:
        """ClickHouse answers (for ``/readyz``): False, never an exception, while it cannot be reached."""
        try:
            return bool(self.probe().ping())
        except InsertError:
            return False

    def probe(self) -> ClickHouseStore:
        return self._open("probe", 5.0)

    def _open(self, kind: str, max_seconds: float) -> ClickHouseStore:
        s = self.p.settings
        if s.embedded_store and s.chdb_path is None:
            return self.p.store
        with self._lock:
            if kind not in self._stores:
                try:  # clickhouse-connect asks the server for its version on connect: it may be down
                    client = connect_reader(s.clickhouse_url, s.clickhouse_user, s.clickhouse_password, max_seconds)
                except Exception as exc:
                    raise classify(exc) from None
                # own Metrics: a report cut by its time limit is no insert failure and no ClickHouse outage
                self._stores[kind] = ClickHouseStore(client, s.clickhouse_database, Metrics(top_apps=1))
            return self._stores[kind]


async def _answer(view: View, read: Callable[[], Any], answer: Callable[[Any], Response],
                  *bad_request: type[Exception]) -> Response:
    """A web read: ``read`` (parsing the request and reading the store) runs in the default executor, since
    opening the store's client may block; ``answer`` turns its result into the response. An error of the
    request itself (one of ``bad_request``) answers 400, a store that cannot answer 503."""
    try:
        result = await asyncio.get_running_loop().run_in_executor(None, read)
    except bad_request as exc:
        return view.json({"error": str(exc)}, status=400)
    except InsertError as exc:
        return view.json({"error": str(exc)}, status=503)
    return answer(result)


def _register_web(app: faust.App, p: Pipeline, reads: WebReads) -> None:

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(p.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            ch = await asyncio.get_running_loop().run_in_executor(None, reads.ping)
            stalled = p.source.stalled()  # a write failing for over IMTEL_WRITE_STALL_SECONDS, named
            ok = bool(p.source.ready and p.source.assignment and ch and stalled is None)
            body: dict[str, Any] = {"ready": ok, "partitions": len(p.source.assignment), "clickhouse": ch}
            if stalled is not None:
                body["cause"] = stalled
            return self.json(body, status=200 if ok else 503)

    @app.page("/queries/{name}")
    class Query(View):
        async def get(self, request: Request, name: str) -> Response:
            query = dict(request.query)
            return await _answer(
                self, lambda: queries.run(reads.data(), name, queries.parse_params(name, query)),
                lambda result: self.json(result.as_dict()), queries.QueryError)

    @app.page("/deadletters")
    class DeadLetters(View):
        """Counts from the dead-letter ledger (``imtel deadletters list``): reasons, topics, apps, counts."""

        async def get(self, request: Request) -> Response:
            from pipeline.ops import deadletters

            query = dict(request.query)
            return await _answer(
                self, lambda: deadletters.list_counts(reads.data(), deadletters.parse_list_request(query)),
                self.json, deadletters.DeadLetterError)

    @app.page("/report")
    class Report(View):
        """The incident-review HTML report (``?app=ID&from=now-1h&to=now``), from the store this worker owns."""

        async def get(self, request: Request) -> Response:
            from pipeline.ops import report

            query = dict(request.query)
            return await _answer(
                self, lambda: report.collect(report.store_runner(reads.data()), report.parse_request(query)),
                lambda data: self.html(report.render(data), headers={"Content-Security-Policy": report.CSP}),
                report.ReportError, queries.QueryError)


def _register_privacy(app: faust.App, p: Pipeline, policy: Policy, reads: WebReads) -> None:
    """``/audit`` (ClickHouse facts of the retention audit), ``/apps`` (the registry) and, with the
    embedded store only, ``POST /erase``: the CLI's way into the store this process owns. With a server
    DSN the CLI talks to ClickHouse itself, so no destructive endpoint exists on a shared network. All of
    them need the per-run token (``web_guard``): a browser page, rebound or cross-site, cannot read it."""
    from pipeline.ops import audit, erasure, registry
    from pipeline.schema.topics import topic_names

    @app.page("/audit")
    class Audit(View):
        async def get(self, request: Request) -> Response:
            return await _answer(
                self, lambda: audit.table_facts(reads.data(), p.settings.clickhouse_cluster), self.json)

    @app.page("/apps")
    class Apps(View):
        async def get(self, request: Request) -> Response:
            return await _answer(
                self, lambda: registry.list_apps(reads.data()), lambda apps: self.json(registry.jsonable(apps)))

    if not p.settings.embedded_store:
        return

    @app.page("/erase")
    class Erase(View):
        async def post(self, request: Request) -> Response:
            """Erasure writes: through the writing store (its lock), unlike every read above."""
            try:
                body = await request.json()
                run = functools.partial(
                    erasure.erase, p.store, erasure.check_app(int(body["app"])),
                    aggregates=bool(body.get("aggregates")), requested_by=str(body.get("requested_by", ""))[:200],
                    reference=str(body.get("reference", ""))[:200], topics=topic_names(p.settings), policy=policy,
                    cluster=p.settings.clickhouse_cluster)
                report = await asyncio.get_running_loop().run_in_executor(None, run)
            except (KeyError, TypeError, ValueError):
                # never echo the input: it may be anything, a client IP included
                return self.json({"error": "bad erasure request: expected JSON with \"app\" an sdk_app_id "
                                           "(1..4294967295)"}, status=400)
            except InsertError as exc:
                return self.json({"error": str(exc)}, status=503)
            return self.json(report.as_dict())
