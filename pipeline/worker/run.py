"""Running the worker process: what a long-running worker needs set up before and around the faust
Worker (allocators, driver logs, the data folder and web port), kept out of the command-line parser.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import time
from pathlib import Path

from pipeline.config.settings import Settings, SettingsError


class RepeatFilter(logging.Filter):
    """Let a driver's identical message through once per ``seconds``: librdkafka and aiokafka log
    every failed connection attempt, dozens per second while a broker is down, burying the rest."""

    def __init__(self, seconds: float = 30.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now, key = time.monotonic(), record.getMessage()
        if now - self.last.get(key, -self.seconds) < self.seconds:
            return False
        if len(self.last) > 1000:
            self.last.clear()
        self.last[key] = now
        return True


def setup_logging(level: str) -> None:
    """Log lines at ``level``; the frameworks' chatter at warning at least; drivers' repeats throttled."""
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faust", "mode", "aiokafka", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level.upper())))
    throttle_driver_logs()


_REPEATS = RepeatFilter()


def throttle_driver_logs() -> None:
    """Attach the repeat filter to every driver logger that exists now (a logger's filters do not
    apply to its children, and the faust worker replaces the root handlers, so neither a parent
    logger nor a handler would do)."""
    for name in [n for n in logging.Logger.manager.loggerDict if n.startswith(("aiokafka", "imtel.kafka", "kafka"))]:
        logger = logging.getLogger(name)
        if _REPEATS not in logger.filters:
            logger.addFilter(_REPEATS)


def ensure_data_dir(s: Settings) -> None:
    """The data folder, and the embedded store's folder inside it, exist."""
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    if s.chdb_path is not None:
        s.chdb_path.mkdir(parents=True, exist_ok=True)


def _ensure_port_free(s: Settings) -> None:
    """Fail in one line, before anything starts, when the web port is taken (faust would log a
    traceback from deep inside its web server instead)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((s.web_host, s.web_port))
        except OSError as exc:
            raise SettingsError(f"IMTEL_WEB_PORT {s.web_port} on {s.web_host} is not available: "
                                f"{exc.strerror}") from None


M_ARENA_MAX = -8  # glibc's mallopt parameter


def tune_allocators() -> None:
    """Keep freed memory reusable instead of resident: called first thing by the long-running
    commands, before pyarrow is imported and before any thread starts.

    glibc gives each thread that allocates its own malloc arena (up to 8 per core): librdkafka's
    threads and the I/O pool each kept memory the others could not reuse. Arrow's default jemalloc
    pool keeps its own freed pages on top, and the pool is chosen when pyarrow is imported. Two
    arenas and Arrow on the system allocator took the worker's peak RSS (ClickHouse over HTTP,
    batched workload) from ~320 to ~260 MB at the same throughput (``imtel bench --contenders
    pipeline-http``). An explicit ARROW_DEFAULT_MEMORY_POOL is kept; an allocator without
    ``mallopt`` (musl) is left as it is."""
    import ctypes

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)


def run_worker(s: Settings, live_output: bool = False) -> int:
    """Build the pipeline and run the faust worker until SIGINT/SIGTERM."""
    from faust.worker import Worker

    from pipeline.schema import migrations
    from pipeline.worker.app import build

    ensure_data_dir(s)
    _ensure_port_free(s)
    pipeline = build(s, live_output=live_output)
    throttle_driver_logs()  # now that faust imported aiokafka
    if not s.clickhouse_cluster:  # on a cluster the migration Job (imtel migrate --cluster) does it
        migrations.apply(pipeline.store.client, s.clickhouse_database)
    # The hot path allocates many short-lived lists; everything built so far lives as long as the
    # process. Freezing it and collecting less often saved ~10% of the processor's CPU on 300k records,
    # without letting garbage grow: cycles are still collected.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    worker = Worker(pipeline.app, pipeline.source, loglevel=s.log_level if s.log_level != "warning" else "warn",
                    quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
