"""The registry agent loses no update while ClickHouse is down (security issue, item 1).

A real ``imtel worker`` reaches the real engine over HTTP through ``imtel engine`` (fault injection:
``tests/support/shim_process.py``); updates are published to the real Kafka applications topic the
way the CLI does (``registry.publish``), and a tombstone as a compacting producer would send it. While
the engine refuses connections for ~10 s more updates arrive; afterwards every app holds its latest
published state, read through the engine's admin listener (never faulted), the worker is still up,
its group committed every message, and its log says what happened without a line per retry.

The first test holds ``apply_until_stored`` to its contract without a broker: retried with growing
delays until stored, one log line per window, tombstones and invalid updates skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from pipeline.config.settings import Settings
from pipeline.ops import registry
from pipeline.ops.registry import AppUpdate, apply_until_stored, make_update, publish
from pipeline.schema.topics import ensure_topics
from pipeline.sinks.clickhouse import InsertError
from tests.support.shim_process import ShimProcess
from tests.support.workers import WorkerProcess, committed_offsets, wait_for, worker_env

from .conftest import free_port

OUTAGE_S = 10.0
APPS = [1400000101, 1400000102, 1400000103, 1400000104]
LATEST = "SELECT sdk_app_id, name, status FROM imtel.applications FINAL ORDER BY sdk_app_id"


class FlakyStore:
    """Stands in for ``store_update``'s store: the first ``fail`` writes raise a transient error."""

    def __init__(self, fail: int) -> None:
        self.fail, self.stored, self.attempts = fail, [], 0

    def write(self, _store: Any, update: AppUpdate, _cluster: str, _now: Any) -> None:
        self.attempts += 1
        if self.attempts <= self.fail:
            raise InsertError("ClickHouse unreachable: connection refused", None, False)
        self.stored.append(update)


class Count:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> None:
        self.n += 1


def test_apply_until_stored_retries_with_backoff_and_skips_tombstones(caplog: pytest.LogCaptureFixture) -> None:
    flaky, delays, retries = FlakyStore(fail=9), [], Count()

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    async def run(_fn: Any, *args: Any) -> None:
        flaky.write(*args)

    async def apply(value: bytes | None) -> bool:
        return await apply_until_stored(object(), value, retries=retries, key=b"7", sleep=sleep, run=run)

    update = make_update(sdk_app_id=7, name="seven")
    caplog.set_level(logging.INFO, logger=registry.__name__)
    assert asyncio.run(apply(msgspec.json.encode(update))) is True
    assert flaky.stored == [update] and retries.n == 9
    assert delays == [0.5, 1, 2, 4, 8, 10, 10, 10, 10]  # doubling, capped
    assert len([r for r in caplog.records if "not stored" in r.message]) == 1  # bounded noise (clock < 60 s)
    assert any("stored after 9 failed attempts" in r.message for r in caplog.records)
    assert asyncio.run(apply(None)) is False and asyncio.run(apply(b"{}")) is False
    assert any("tombstone (key 7) skipped" in r.message for r in caplog.records)
    assert flaky.attempts == 10  # skipped updates never reach the store


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[ShimProcess]:
    with ShimProcess(tmp_path / "store", tmp_path) as process:
        yield process


def tombstone(settings: Settings, key: bytes) -> None:
    producer = Producer({**settings.kafka_config(), "acks": "all"})
    producer.produce(settings.topic_applications, key=key, value=None)
    assert producer.flush(15) == 0


def latest(shim: ShimProcess) -> list[tuple[int, str, str]]:
    return [(int(a), str(n), str(s)) for a, n, s in shim.query(LATEST)]


@pytest.mark.integration
def test_no_registry_update_is_lost_while_clickhouse_is_down(pipeline_env: dict[str, str], shim: ShimProcess,
                                                              tmp_path: Path) -> None:
    env = worker_env(pipeline_env, shim.dsn(0), tmp_path, "w1", free_port())
    settings = Settings.from_env(env)
    ensure_topics(settings)
    worker = WorkerProcess("w1", env, tmp_path).start()
    try:
        wait_for(lambda: worker.assigned() > 0, 90, "the worker's partition assignment", workers=[worker])
        publish(settings, make_update(sdk_app_id=APPS[0], name="v0"))
        wait_for(lambda: latest(shim) == [(APPS[0], "v0", "active")], 90, "the first update stored",
                 workers=[worker])

        shim.fault("refuse", seconds=OUTAGE_S)
        expected: dict[int, tuple[str, str]] = {}
        for version in range(1, 4):  # several versions per app, in order, while ClickHouse is down
            for app in APPS:
                status = "terminated" if app == APPS[-1] and version == 3 else "active"
                publish(settings, make_update(sdk_app_id=app, name=f"v{version}", status=status))
                expected[app] = (f"v{version}", status)
            if version == 1:
                tombstone(settings, str(APPS[1]).encode())
            time.sleep(OUTAGE_S / 4)
        want = [(app, *expected[app]) for app in APPS]
        wait_for(lambda: latest(shim) == want, 120, f"every app's latest state {want}", workers=[worker])

        messages = 1 + 3 * len(APPS) + 1
        group = f"{settings.consumer_group}-registry"
        wait_for(lambda: committed_offsets(settings.kafka_bootstrap, group, settings.topic_applications, 1)
                 .get(0) == messages, 30, f"the registry group's commit at {messages}", workers=[worker])
        retries = worker.metric("imtel_registry_update_retries_total")
        assert retries > 0, "the outage never made the registry agent retry"
        assert worker.alive()
    finally:
        assert worker.stop(60) == 0, worker.log_text()[-3000:]
    text = worker.log_text()
    assert f"registry tombstone (key {APPS[1]}) skipped" in text, text[-3000:]
    waits = text.count("not stored (")
    assert 1 <= waits <= 2 + OUTAGE_S / registry.RETRY_LOG_EVERY_S, f"{waits} retry lines for {retries} retries"
    assert "stored after" in text
    assert "Traceback" not in text, text[-3000:]
