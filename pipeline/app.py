"""The faust application: agents, timers and the HTTP endpoints of one worker.

- agent ``ingest`` (on an in-memory channel): receives *batches* of Kafka messages from
  ``KafkaBatchSource`` and buffers them through the ``Processor``;
- agent ``registry`` (on the applications topic): keeps the application registry (Configuration
  Data) in ClickHouse;
- timers: consumer lag, oldest-row age per table, the live terminal line;
- web (``IMTEL_WEB_PORT``): ``/metrics``, ``/healthz`` (liveness), ``/readyz`` (partitions assigned
  and ClickHouse reachable), ``/queries/{name}`` (named queries, so a second terminal can read the
  embedded store while this process owns it), ``/report`` (the incident-review HTML report),
  ``/audit``, ``/apps`` and (embedded store only) ``POST /erase`` for the retention CLI commands;
- timer ``app_retention``: deletes rows past an app's own shorter retention (pipeline/registry.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import live, queries
from .cluster_schema import INSERT_SETTINGS
from .deadletter import KafkaDeadLetters
from .metrics import Metrics
from .policy import Policy, load_policy
from .processor import Processor
from .registry import ENFORCE_INTERVAL_S
from .settings import Settings
from .sinks.clickhouse import ClickHouseStore, InsertError, connect
from .source import KafkaBatchSource

log = logging.getLogger(__name__)


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
        broker_rebalance_timeout=3, broker_session_timeout=10, broker_heartbeat_interval=3,
        topic_disable_leader=True, store="memory://",
        topic_replication_factor=settings.topic_replication, producer_acks=-1)
    store = ClickHouseStore(connect(settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password,
                                    timeout=settings.clickhouse_timeout_seconds),
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

    # Started by the Worker next to the app (cli.run_worker), not as an app service: faust starts
    # app services only after its own consumer group settled, which must not gate ingestion.
    source = KafkaBatchSource(settings, processor, metrics, deliver)
    pipeline = Pipeline(app, settings, metrics, store, processor, source)

    registry_topic = app.topic(settings.topic_applications, value_serializer="raw", key_serializer="raw")

    @app.agent(registry_topic, name="registry")
    async def registry(stream: Any) -> None:
        """Application registry updates (Configuration Data) -> ``applications`` table."""
        from .registry import apply_update

        async for value in stream:
            await asyncio.get_running_loop().run_in_executor(None, apply_update, store, value,
                                                             settings.clickhouse_cluster)

    @app.timer(interval=5.0)
    async def lag() -> None:
        await asyncio.get_running_loop().run_in_executor(None, source.update_lag)

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
        rows past it are deleted by mutations (pipeline/registry.py). Idempotent across workers."""
        from .registry import enforce_app_retention

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

    _register_web(app, pipeline)
    _register_privacy(app, pipeline, policy)
    return pipeline


def _register_web(app: faust.App, p: Pipeline) -> None:
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
            ch = await asyncio.get_running_loop().run_in_executor(None, p.store.ping)
            stalled = p.source.stalled()  # a write failing for over IMTEL_WRITE_STALL_SECONDS, named
            ok = bool(p.source.ready and p.source.assignment and ch and stalled is None)
            body: dict[str, Any] = {"ready": ok, "partitions": len(p.source.assignment), "clickhouse": ch}
            if stalled is not None:
                body["cause"] = stalled
            return self.json(body, status=200 if ok else 503)

    @app.page("/queries/{name}")
    class Query(View):
        async def get(self, request: Request, name: str) -> Response:
            try:
                params = queries.parse_params(name, dict(request.query))
                result = await asyncio.get_running_loop().run_in_executor(None, queries.run, p.store, name, params)
            except queries.QueryError as exc:
                return self.json({"error": str(exc)}, status=400)
            except InsertError as exc:
                return self.json({"error": str(exc)}, status=503)
            return self.json(result.as_dict())

    @app.page("/report")
    class Report(View):
        """The incident-review HTML report (``?app=ID&from=now-1h&to=now``), from the store this worker owns."""

        async def get(self, request: Request) -> Response:
            from . import report

            try:
                req = report.parse_request(dict(request.query))
                data = await asyncio.get_running_loop().run_in_executor(
                    None, report.collect, report.store_runner(p.store), req)
            except (report.ReportError, queries.QueryError) as exc:
                return self.json({"error": str(exc)}, status=400)
            except InsertError as exc:
                return self.json({"error": str(exc)}, status=503)
            return self.html(report.render(data), headers={"Content-Security-Policy": report.CSP})


def _register_privacy(app: faust.App, p: Pipeline, policy: Policy) -> None:
    """``/audit`` (ClickHouse facts of the retention audit), ``/apps`` (the registry) and, with the
    embedded store only, ``POST /erase``: the CLI's way into the store this process owns. With a server
    DSN the CLI talks to ClickHouse itself, so no destructive endpoint exists on a shared network; the
    embedded one answers only the imtel CLI on this host (loopback + ``X-Imtel-Request: cli``, which a
    browser's cross-site form cannot send)."""
    from . import audit, erasure, registry
    from .topics import topic_names

    @app.page("/audit")
    class Audit(View):
        async def get(self, request: Request) -> Response:
            try:
                facts = await asyncio.get_running_loop().run_in_executor(
                    None, audit.table_facts, p.store, p.settings.clickhouse_cluster)
            except InsertError as exc:
                return self.json({"error": str(exc)}, status=503)
            return self.json(facts)

    @app.page("/apps")
    class Apps(View):
        async def get(self, request: Request) -> Response:
            try:
                apps = await asyncio.get_running_loop().run_in_executor(None, registry.list_apps, p.store)
            except InsertError as exc:
                return self.json({"error": str(exc)}, status=503)
            return self.json(registry.jsonable(apps))

    if not p.settings.embedded_store:
        return

    @app.page("/erase")
    class Erase(View):
        async def post(self, request: Request) -> Response:
            remote = getattr(request, "remote", None)
            if request.headers.get("X-Imtel-Request") != "cli" or remote not in ("127.0.0.1", "::1"):
                return self.json({"error": "erasure is accepted only from the imtel CLI on this host"}, status=403)
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
