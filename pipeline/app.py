"""The faust application: agents, timers and the HTTP endpoints of one worker.

- agent ``ingest`` (on an in-memory channel): receives *batches* of Kafka messages from
  ``KafkaBatchSource`` and buffers them through the ``Processor``;
- agent ``registry`` (on the applications topic): keeps the application registry (Configuration
  Data) in ClickHouse;
- timers: consumer lag, oldest-row age per table, the live terminal line;
- web (``IMTEL_WEB_PORT``): ``/metrics``, ``/healthz`` (liveness), ``/readyz`` (partitions assigned
  and ClickHouse reachable), ``/queries/{name}`` (named queries, so a second terminal can read the
  embedded store while this process owns it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import live, queries
from .deadletter import KafkaDeadLetters
from .metrics import Metrics
from .policy import Policy, load_policy
from .processor import Processor
from .settings import Settings
from .sinks.clickhouse import ClickHouseStore, InsertError, connect
from .source import KafkaBatchSource

log = logging.getLogger(__name__)


@dataclass
class Envelope:
    """One batch of Kafka messages travelling through the faust channel, and its completion."""

    messages: list[Any]
    done: asyncio.Future = field(repr=False)


@dataclass
class Pipeline:
    """Everything one worker process holds (handy for tests and the CLI)."""

    app: faust.App
    settings: Settings
    metrics: Metrics
    store: ClickHouseStore
    processor: Processor
    source: KafkaBatchSource


def _broker_credentials(settings: Settings) -> Any:
    if "SASL" not in settings.kafka_security_protocol:
        return None
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                 mechanism=settings.kafka_sasl_mechanism)


def build(settings: Settings, metrics: Metrics | None = None, policy: Policy | None = None,
          live_output: bool = False) -> Pipeline:
    """Wire a worker: faust app, ClickHouse store, processor, Kafka batch source."""
    metrics = metrics or Metrics(top_apps=settings.metrics_top_apps)
    policy = policy or load_policy()
    app = faust.App(
        "imtel", broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
        broker_credentials=_broker_credentials(settings), web_host=settings.web_host,
        web_port=settings.web_port, web_bind=settings.web_host, datadir=f"{settings.data_dir}/faust",
        broker_rebalance_timeout=3, broker_session_timeout=10, broker_heartbeat_interval=3,
        topic_disable_leader=True, store="memory://",
        topic_replication_factor=settings.topic_replication, producer_acks=-1)
    store = ClickHouseStore(connect(settings.clickhouse_url, settings.clickhouse_user,
                                    settings.clickhouse_password), settings.clickhouse_database, metrics)
    dlq = KafkaDeadLetters(settings.kafka_config(), settings.topic_dead_letters)
    processor = Processor(settings, store, dlq, metrics, policy)
    channel = app.channel()

    async def deliver(messages: list[Any]) -> None:
        done = asyncio.get_running_loop().create_future()
        await channel.send(value=Envelope(messages, done))
        await done

    # Started by the Worker next to the app (cli.run_worker), not as an app service: faust starts
    # app services only after its own consumer group settled, which must not gate ingestion.
    source = KafkaBatchSource(settings, processor, metrics, deliver)
    pipeline = Pipeline(app, settings, metrics, store, processor, source)

    @app.agent(channel, name="ingest")
    async def ingest(stream: Any) -> None:
        """Buffer each batch (decode, validate, minimise); one faust event per batch, not per record."""
        async for envelope in stream:
            try:
                processor.process(envelope.messages)
                envelope.done.set_result(None)
            except Exception as exc:  # never lose the error: the source re-raises and stops cleanly
                envelope.done.set_exception(exc)

    registry_topic = app.topic(settings.topic_applications, value_serializer="raw", key_serializer="raw")

    @app.agent(registry_topic, name="registry")
    async def registry(stream: Any) -> None:
        """Application registry updates (Configuration Data) -> ``applications`` table."""
        from .registry import apply_update

        async for value in stream:
            await asyncio.get_running_loop().run_in_executor(None, apply_update, store, value)

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

    if live_output:
        view = live.LiveView(metrics, processor)

        @app.timer(interval=5.0)
        async def progress() -> None:
            print(view.line(time.time()), flush=True)

    _register_web(app, pipeline)
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
            ok = bool(p.source.ready and p.source.assignment and ch)
            return self.json({"ready": ok, "partitions": len(p.source.assignment), "clickhouse": ch},
                             status=200 if ok else 503)

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
