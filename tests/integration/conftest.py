"""Fixtures for integration tests: a real bundled broker process, a real embedded ClickHouse engine.

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

from pipeline import embedded
from tests.support.brokers import BrokerProcess

free_port = embedded.free_port  # ports outside the ephemeral range: see its docstring


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu broker process on a free loopback port for the whole session."""
    port = free_port()
    proc = embedded.start_broker(port, tmp_path_factory.mktemp("broker") / "broker.log")
    yield f"127.0.0.1:{port}"
    embedded.stop(proc)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker process of this test alone (to kill and restart, or to keep its groups apart)."""
    proc = BrokerProcess(free_port(), tmp_path / "own-broker.log").start()
    yield proc
    proc.stop()


@pytest.fixture
def pipeline_env(broker: str, tmp_path: Path) -> dict[str, str]:
    """Env for one isolated pipeline: own topics, group, store and port."""
    tag = uuid.uuid4().hex[:8]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("IMTEL_")},
        "IMTEL_KAFKA_BOOTSTRAP": broker,
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
        from pipeline import migrations
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
