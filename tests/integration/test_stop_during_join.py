"""A SIGTERM while faust's own consumer (the registry agent's group, ``<group>-registry``) is still joining
its group ends the worker within seconds, with exit code 0, no traceback, and its own buffer flushed and
committed.

faust stops its consumer thread by stopping aiokafka's consumer, whose group coordinator first lets the
group join in progress finish (``GroupCoordinator.close``); mode waits 60 s for that (its
``shutdown_timeout``) and the thread is not a daemon. A join lasts as long as the broker holds the
JoinGroup, that is until every other member has rejoined or its rebalance timeout ran out. Here a second
member of faust's group (an aiokafka consumer speaking faust's assignment protocol, with a 120 s
rebalance timeout) is slow to rejoin on purpose: it holds its revocation callback, as a busy member
would, so the worker's join stays open for the whole stop. ``pipeline/worker/faust_stop.py`` bounds
the stop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.schema.topics import ensure_topics
from tests.support.kafka_io import RecordingProducer, committed
from tests.support.workers import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
RECORDS = 500
STOP_BOUND_S = 20.0  # well under a pod's 30 s terminationGracePeriod; the bug took ~60 s


class FaustProtocol(RoundRobinPartitionAssignor):  # type: ignore[misc]
    """faust's assignment protocol name: a group admits a member only if it shares a protocol with the
    others. This member is the group's leader (it joined first), so its own assignor is what runs."""

    name = "faust"


class SlowMember(threading.Thread):
    """A member of faust's group that, once a rebalance starts, holds its revocation callback until
    ``release()``: the broker then keeps the rebalance (and the other members' JoinGroup) open for up to
    this member's rebalance timeout, 120 s here, while its heartbeats keep it in the group."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        super().__init__(name="slow-member", daemon=True)
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.joined = threading.Event()  # first assignment received
        self.holding = threading.Event()  # a rebalance began (someone joins) and is being held
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._release = asyncio.Event()

    def run(self) -> None:
        try:
            self._loop.run_until_complete(self._member())
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.done.set()

    async def _member(self) -> None:
        member = self

        class Hold(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                if member.joined.is_set():
                    member.holding.set()
                    await member._release.wait()

            async def on_partitions_assigned(self, assigned: Any) -> None:
                member.joined.set()

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False,
            partition_assignment_strategy=[FaustProtocol], session_timeout_ms=30_000, heartbeat_interval_ms=1_000,
            rebalance_timeout_ms=120_000, max_poll_interval_ms=300_000, request_timeout_ms=150_000)
        await consumer.start()
        try:
            consumer.subscribe([self.topic], listener=Hold())
            while not self._release.is_set():
                await consumer.getmany(timeout_ms=200)
        finally:
            await consumer.stop()

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._release.set)
        self.done.wait(30)


@pytest.fixture
def slow_member(pipeline_env: dict[str, str]) -> Iterator[SlowMember]:
    s = Settings.from_env(pipeline_env)
    ensure_topics(s)
    member = SlowMember(s.kafka_bootstrap, f"{s.consumer_group}-registry", s.topic_applications)
    member.start()
    try:
        assert member.joined.wait(30), f"the slow member never joined faust's group: {member.error!r}"
        yield member
    finally:
        member.release()
    assert member.error is None, member.error


def test_sigterm_while_faust_group_joins_stops_promptly_and_cleanly(
        pipeline_env: dict[str, str], slow_member: SlowMember, tmp_path: Path) -> None:
    # rows stay buffered until the stop: only the stop path can write and commit them
    env = {**pipeline_env, "IMTEL_BATCH_MAX_SECONDS": "60", "IMTEL_BATCH_MAX_RECORDS": "1000000"}
    s = Settings.from_env(env)
    bootstrap, logs = env["IMTEL_KAFKA_BOOTSTRAP"], s.topic_request_logs
    producer, traffic, now_ms = RecordingProducer(bootstrap), Traffic(apps=5, seed=41), int(time.time() * 1000)
    for n in range(RECORDS):
        record = traffic.request_log(now_ms)
        producer.send(logs, msgspec.json.encode(record), str(record["sdk_app_id"]).encode(), n)
    producer.flush()

    worker = WorkerProcess("worker", env, tmp_path).start()
    try:
        wait_for(lambda: worker.metric("imtel_records_consumed_total", topic=logs) >= RECORDS, 60,
                 "every record consumed (and buffered)", workers=[worker])
        # faust's consumer asked to join: the slow member is being asked to rejoin and holds the rebalance
        wait_for(slow_member.holding.is_set, 60, "faust's consumer joining its group", workers=[worker])
        time.sleep(1.0)  # well inside the held join
        assert worker.alive()
    except BaseException:
        worker.kill()
        raise
    started = time.monotonic()
    code = worker.stop(STOP_BOUND_S)
    took = time.monotonic() - started
    log = worker.log_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-5000:]
    assert committed(bootstrap, s.consumer_group, {logs: PARTITIONS}) == {
        (logs, p): o for p, o in producer.end_offsets(logs).items()}, "the buffered batch was not committed"
    print(f"\nstopped {took:.1f}s after SIGTERM during faust's group join")
