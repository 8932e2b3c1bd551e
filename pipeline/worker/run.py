"""Running the worker process: what a long-running worker needs set up before and around the faust
Worker (allocators, driver logs, the data folder and web port), kept out of the command-line parser.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config.settings import Settings, SettingsError
from pipeline.worker import relocations

log = logging.getLogger(__name__)


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


M_ARENA_MAX = -8  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 1024 * 1024
# chDB's jemalloc in the embedded worker: see ``embedded_allocators``.
CHDB_MALLOC_CONF = "oversize_threshold:1048576,dirty_decay_ms:500"


def tune_allocators() -> None:
    """Keep freed memory reusable instead of resident: called first thing by the long-running
    commands, before pyarrow is imported and before any thread starts.

    glibc gives each thread that allocates its own malloc arena (up to 8 per core): librdkafka's
    threads and the I/O pool each kept memory the others could not reuse. Arrow's default jemalloc
    pool keeps its own freed pages on top, and the pool is chosen when pyarrow is imported. Two
    arenas and Arrow on the system allocator took the worker's peak RSS (ClickHouse over HTTP,
    batched workload) from ~320 to ~260 MB at the same throughput (``imtel bench --contenders
    pipeline-http``). An explicit ARROW_DEFAULT_MEMORY_POOL is kept; an allocator without
    ``mallopt`` (musl) is left as it is.

    numpy's OpenBLAS starts a thread per core that spins after any BLAS call; the worker has no
    linear algebra worth a thread, and those spins were ~2% of its CPU (perf, workload b over
    HTTP): one thread (an explicit OPENBLAS_NUM_THREADS is kept)."""
    import ctypes

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)


def embedded_allocators() -> None:
    """With the embedded engine in the process: both allocators give freed memory back sooner.

    glibc: a fixed mmap threshold of 16 MiB. glibc raises its threshold (128 KiB at start) to the size
    of every mmapped block freed, up to 32 MiB: after a few of the engine's Arrow reads, Arrow IPC
    buffers and fetch responses of 16-32 MiB, all of those came from the heap and left holes there
    that stayed resident (glibc counted ~100 MB free inside its arenas at the embedded worker's peak).
    A fixed threshold gives such blocks back when they are freed and keeps everything smaller in the
    heap, as before: embedded peak RSS ~610-650 -> ~550-570 MB on workload b at the same CPU per
    record (1-4 MiB saved about as much and cost ~5% more CPU in page faults).

    chDB's jemalloc (``CHDB_MALLOC_CONF``, read when the library loads, so this must run before chDB is
    imported; an explicit JE_MALLOC_CONF is kept): the engine allocated 40-80 MB while taking workload
    b but kept up to 190 MB resident, because jemalloc holds freed pages for 5 s (``dirty_decay_ms``)
    and only purges blocks over 64 MiB at once (``oversize_threshold``). Purging blocks over 1 MiB at
    once (the engine's column and compression buffers) and other freed pages after 0.5 s: embedded peak
    RSS 559-572 -> 495-509 MB on b, at 3.2-3.6 instead of 3.1-3.2 CPU-s per million (bench, one window
    each; with ``relocations.release`` as well, 462-478 MB). ``imtel engine`` in its own process keeps
    chDB's defaults: there CPU is what is scarce (the same setting cost its engine 2.86 -> 3.08 CPU-s
    per million), as on a ClickHouse server."""
    import ctypes

    if "chdb" in sys.modules:
        log.info("chDB was loaded before the embedded allocator settings: it keeps its defaults")
    os.environ.setdefault("JE_MALLOC_CONF", CHDB_MALLOC_CONF)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class _KeepOut(importlib.abc.MetaPathFinder):
    """Refuses to import some packages, as if they were not installed."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{name} is kept out of the worker process (pipeline/worker/run.py)", name=name)
        return None


def keep_pandas_out() -> None:
    """Make pandas look absent in this process, unless something imported it already.

    The worker never uses pandas, but two of its libraries import it on the side as soon as it is
    installed: pyarrow on the first ``pa.array`` of a numpy array (to ask whether it is a pandas
    Series) and clickhouse-connect on an insert (to ask whether the data is a DataFrame). That import
    alone is ~33 MB of the worker's resident memory. Without pandas both take their documented
    no-pandas paths; nothing the worker runs calls a pandas API (``query_df``, ``to_pandas``)."""
    if "pandas" not in sys.modules and not any(isinstance(f, _KeepOut) for f in sys.meta_path):
        sys.meta_path.insert(0, _KeepOut("pandas"))


def require_schema(client: Any, s: Settings) -> None:
    """On a cluster the migration Job applies the schema, not the worker: refuse to start, in one line,
    when it has not applied every migration this code knows (a worker of a newer version rolled out
    before its Job ran). Since migration 009 the store folds each insert into the aggregate table, so a
    worker on an older schema would store rows without their aggregates, silently.

    When ClickHouse does not answer now, the worker starts anyway (as it does through any ClickHouse
    outage: consumption waits) and says it could not check."""
    from pipeline.schema import migrations
    from pipeline.sinks.clickhouse import classify

    try:
        missing = migrations.pending(client, s.clickhouse_database, s.clickhouse_cluster)
    except Exception as exc:  # the driver's errors: unreachable, refused, no such database...
        log.warning("could not check the ClickHouse schema version (%s); starting anyway", classify(exc))
        return
    if missing:
        raise SettingsError(f"the ClickHouse schema of {migrations.local_database(s.clickhouse_database)} lacks "
                            f"{', '.join(missing)}: run `imtel migrate --cluster {s.clickhouse_cluster}` (the "
                            "migration Job of this version) before starting these workers")


def run_worker(s: Settings, live_output: bool = False) -> int:
    """Build the pipeline and run the faust worker until SIGINT/SIGTERM."""
    from faust.worker import Worker

    from pipeline.schema import migrations
    from pipeline.worker.app import build

    ensure_data_dir(s)
    _ensure_port_free(s)
    keep_pandas_out()
    if s.embedded_store:
        embedded_allocators()
    pipeline = build(s, live_output=live_output)
    relocations.release()  # every library is loaded now, chDB's too with the embedded store
    throttle_driver_logs()  # now that faust imported aiokafka
    if not s.clickhouse_cluster:  # on a cluster the migration Job (imtel migrate --cluster) does it
        migrations.apply(pipeline.store.client, s.clickhouse_database)
    else:
        require_schema(pipeline.store.client, s)
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
