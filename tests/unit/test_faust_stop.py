"""``pipeline/worker/faust_stop.py``: the stop of faust's consumer waits a bounded time for a group join,
then cuts it and releases the consumer; a consumer that stops promptly is left alone. (The real thing,
against a broker holding a join open: ``tests/integration/test_stop_during_join.py``.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import pytest

from pipeline.worker import faust_stop


class FakeConsumer:
    """The parts of ``AIOKafkaConsumer`` ``stop_consumer`` touches; ``stop`` hangs like a held join."""

    def __init__(self, hangs: bool) -> None:
        self.hangs, self.calls, self.cancelled = hangs, [], False
        self._coordinator, self._fetcher, self._client = self, self, self

    async def stop(self) -> None:
        self.calls.append("stop")
        if self.hangs:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise

    def __getattr__(self, name: str) -> Any:
        async def step() -> None:
            self.calls.append(name)
        return step


def test_a_stop_held_by_a_join_is_cut_after_the_grace_and_the_consumer_released() -> None:
    consumer = FakeConsumer(hangs=True)
    started = time.monotonic()
    asyncio.run(faust_stop.stop_consumer(consumer, "g-registry", grace=0.05, release_within=1.0))
    assert time.monotonic() - started < 2.0
    assert consumer.cancelled
    assert consumer.calls == ["stop", "_stop_heartbeat_task", "_stop_commit_offsets_refresh_task",
                              "_maybe_leave_group", "close", "close"]  # fetcher, then connections


def test_a_prompt_stop_is_left_alone() -> None:
    consumer = FakeConsumer(hangs=False)
    asyncio.run(faust_stop.stop_consumer(consumer, "g-registry", grace=1.0))
    assert consumer.calls == ["stop"] and not consumer.cancelled


def test_the_app_gets_the_bounded_consumer_thread_and_only_before_its_transport_exists() -> None:
    app = faust.App("imtel-test-registry", broker="kafka://127.0.0.1:1")
    faust_stop.bound_consumer_stop(app)
    assert isinstance(app.transport, faust_stop.StopBoundedTransport)
    with pytest.raises(RuntimeError):
        faust_stop.bound_consumer_stop(app)
