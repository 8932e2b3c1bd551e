"""A bounded stop for faust's own Kafka consumer (the registry agent's group, ``<consumer_group>-registry``).

Why: a worker that got SIGTERM while that consumer was joining its group took ~60 s to exit (a pod then
overruns its terminationGracePeriod and is SIGKILLed). faust runs its aiokafka consumer in a thread of
its own (``AIOKafkaConsumerThread``, a mode ``ServiceThread``) and the stop goes:

- mode, on the event loop: ``ServiceThread.stop`` -> ``Service.stop`` waits for the thread's shutdown
  flag for ``shutdown_timeout``, 60 s by default, and the thread is not a daemon
  (``mode/services.py`` ``Service.stop``/``shutdown_timeout``, ``mode/threads.py`` ``WorkerThread``);
- in the thread: ``AIOKafkaConsumerThread.on_thread_stop`` -> ``AIOKafkaConsumer.stop`` ->
  ``GroupCoordinator.close``, which awaits the coordination task "to properly finish all pending work":
  a group join in progress, that is the JoinGroup the broker holds until every other member rejoined
  or its rebalance timeout ran out, the SyncGroup, then the assignment callback, which hops back to the
  event loop through faust's method queue.

Nothing but those 60 s bounds that wait: a slow member of the group, or a callback that never runs
because the app is stopping, holds the stop for all of it, and mode then raises its TimeoutError (a
traceback in the log) while the thread goes on. Here the thread gives the consumer's own stop
``JOIN_GRACE_S``, then cancels it (with it the join) and releases the consumer itself; mode waits at
most ``THREAD_STOP_S``; the thread is a daemon, so a thread stuck anyway never holds the exit.

Leaving mid-join loses nothing: the registry agent's offsets are committed on the event loop before
the thread stops (faust's ``Consumer.on_stop``), an update not yet acknowledged is re-read by the next
owner, and without the LeaveGroup the broker drops the member after its session timeout.
Our own ingestion (``KafkaBatchSource``) is a separate service with its own stop and flush
(``consumer.STOP_FLUSH_S``); nothing here shortens it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.threads import QueueServiceThread, WorkerThread

log = logging.getLogger(__name__)

# Longer than the broker_rebalance_timeout the app sets (3 s, worker/app.py), so a join that the broker
# closes on its own, the usual case (a member that died), still ends with a LeaveGroup, and the other
# members need not wait for this one's session timeout.
JOIN_GRACE_S = 5.0
RELEASE_S = 5.0  # the rest of the consumer's stop once the join is cut: local work and one LeaveGroup
THREAD_STOP_S = JOIN_GRACE_S + RELEASE_S + 5.0  # mode's wait for the thread; a backstop, never expected


class DaemonWorkerThread(WorkerThread):
    """mode's thread for a ServiceThread, as a daemon: a thread that cannot finish must not keep the
    interpreter alive once the worker is done (exactly-once does not depend on it: offsets are
    committed only after the writes they cover were acknowledged)."""

    def __init__(self, service: Any, **kwargs: Any) -> None:
        super().__init__(service, **kwargs)
        self.daemon = True


class StopBoundedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, whose stop never waits on a group join for long."""

    Worker = DaemonWorkerThread
    mundane_level = "debug"  # its Starting.../Stopping... lines, at info in our logger, not in faust's (warning)
    shutdown_timeout = THREAD_STOP_S

    async def on_thread_stop(self) -> None:
        """As faust's (the thread's method queue first, then the consumer), with the consumer's stop
        bounded by ``stop_consumer``."""
        await QueueServiceThread.on_thread_stop(self)
        if self._consumer is not None:
            await stop_consumer(self._consumer, self.app.conf.id)

    async def stop(self) -> None:
        """mode's stop, waiting at most ``THREAD_STOP_S`` for the thread; past it one warning line, not
        mode's TimeoutError, which faust would log with a traceback and which would skip nothing useful."""
        try:
            await super().stop()
        except TimeoutError:
            log.warning("faust's consumer thread did not stop within %.0fs; the worker stops without it",
                        self.shutdown_timeout)


async def stop_consumer(consumer: Any, group: str, grace: float = JOIN_GRACE_S,
                        release_within: float = RELEASE_S) -> None:
    """Stop an ``AIOKafkaConsumer``, waiting at most ``grace`` for its own stop (which waits for a group
    join in progress), then cancelling that stop (cancelling the join it awaits) and releasing what it
    would have: the coordinator's background tasks, a best-effort LeaveGroup (sent only by a member of an
    established generation, as aiokafka does), the fetcher and the connections, within ``release_within``."""
    stopping = asyncio.ensure_future(consumer.stop())
    await asyncio.wait({stopping}, timeout=grace)
    if stopping.done():
        stopping.result()
        return
    log.warning("faust's consumer was still joining group %s %.0fs into the stop: leaving without the join",
                group, grace)
    stopping.cancel()  # cancels the coordination task GroupCoordinator.close() is awaiting, and its join
    await asyncio.wait({stopping}, timeout=1.0)
    try:
        await asyncio.wait_for(_release(consumer), release_within)
    except Exception as exc:  # the consumer is being abandoned anyway: one line, no traceback
        log.warning("faust's consumer of group %s not fully released on stop: %r", group, exc)


async def _release(consumer: Any) -> None:
    """What ``AIOKafkaConsumer.stop`` and ``GroupCoordinator.close`` do after the coordination task
    (aiokafka 0.14)."""
    coordinator = consumer._coordinator
    if coordinator is not None:
        await coordinator._stop_heartbeat_task()
        await coordinator._stop_commit_offsets_refresh_task()
        await coordinator._maybe_leave_group()
    if consumer._fetcher is not None:
        await consumer._fetcher.close()
    await consumer._client.close()


class StopBoundedConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with ``StopBoundedConsumerThread`` as its thread."""

    mundane_level = "debug"  # as StopBoundedConsumerThread

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return StopBoundedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class StopBoundedTransport(faust_aiokafka.Transport):
    """faust's aiokafka (``kafka://``) transport, creating ``StopBoundedConsumer`` consumers."""

    Consumer = StopBoundedConsumer


def bound_consumer_stop(app: Any) -> None:
    """Give ``app`` (a faust App on ``kafka://`` brokers) the stop-bounded consumer transport. Called
    before anything created the app's transport or consumer (``build`` does it right after ``faust.App``):
    a transport made earlier would have made its consumer without the bound."""
    if app._transport is not None:
        raise RuntimeError("faust's transport already exists: the consumer stop cannot be bounded any more")
    app.transport = StopBoundedTransport(app.conf.broker_consumer, app)
