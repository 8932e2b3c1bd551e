"""Fixtures for integration tests: a real Apache Kafka broker process, a real embedded ClickHouse engine.

The session's broker is Apache Kafka 4.x (``pipeline.dev.kafka_server``: KRaft, one combined node, its log
in a temp folder, on a free loopback port), the broker production runs; the bundled Tansu broker, the
embedded default, keeps an end-to-end smoke test of its own (``test_embedded_run``).

chDB allows one store per process, so the engine always runs in a child process (the worker, or
``run_sql`` below), never in the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dev.kafka_server import KafkaServer
from pipeline.dev.ports import free_port
from tests.support.brokers import BrokerProcess

# A killed worker's partitions move after the group's session timeout, which the KIP-848 protocol
# keeps on the broker: 6 s (with 1 s heartbeats) keeps the crash, scale-out and rebalance tests short.
# Production brokers keep Kafka's 45 s; the classic protocol's client-side setting is set alike.
TEST_BROKER_GROUP_CONFIG = {
    "group.consumer.min.session.timeout.ms": "6000", "group.consumer.session.timeout.ms": "6000",
    "group.consumer.min.heartbeat.interval.ms": "1000", "group.consumer.heartbeat.interval.ms": "1000"}
TEST_KAFKA_ENV = {"IMTEL_KAFKA_SESSION_TIMEOUT_MS": "6000"}


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """One real Apache Kafka broker for the whole session (per pytest-xdist worker)."""
    server = KafkaServer(tmp_path_factory.mktemp("kafka"), extra=TEST_BROKER_GROUP_CONFIG).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker(kafka: KafkaServer) -> str:
    """Bootstrap servers of the session's real Kafka broker."""
    return kafka.bootstrap


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real Kafka broker of this test alone (to kill and restart it with its log kept)."""
    proc = BrokerProcess(tmp_path / "own-kafka", TEST_BROKER_GROUP_CONFIG).start()
    yield proc
    proc.stop()


@pytest.fixture
def pipeline_env(broker: str, tmp_path: Path) -> dict[str, str]:
    """Env for one isolated pipeline: own topics, group, store and port."""
    tag = uuid.uuid4().hex[:8]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("IMTEL_")},
        "IMTEL_KAFKA_BOOTSTRAP": broker, **TEST_KAFKA_ENV,
        "IMTEL_TOPIC_REQUEST_LOGS": f"logs-{tag}", "IMTEL_TOPIC_MONITORING_SAMPLES": f"samples-{tag}",
        "IMTEL_TOPIC_DEAD_LETTERS": f"dlq-{tag}", "IMTEL_TOPIC_APPLICATIONS": f"apps-{tag}",
        "IMTEL_CONSUMER_GROUP": f"group-{tag}", "IMTEL_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'store'}",
        "IMTEL_DATA_DIR": str(tmp_path / "data"), "IMTEL_WEB_PORT": str(free_port()),
        "IMTEL_BATCH_MAX_SECONDS": "0.3", "IMTEL_LOG_LEVEL": "info",
    }


def run_sql(store: Path, statements: list[str], migrate: bool = True) -> list[list[list[object]]]:
    """Run SQL against an embedded store in a child process; returns each statement's rows."""
    script = textwrap.dedent(f"""
        import json, sys
        import clickhouse_connect
        from pipeline.schema import migrations
        client = clickhouse_connect.get_client(dsn="chdb://{store}")
        if {migrate!r}:
            migrations.apply(client, "imtel")
        out = []
        for sql in json.load(sys.stdin):
            result = client.query(sql)
            out.append([[str(v) if not isinstance(v, (int, float)) else v for v in r] for r in result.result_rows])
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(statements), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))
