"""The OpenTelemetry Collector contender (``otelcol``): build, configuration and measurement.

``otelcol-imtel`` is an OpenTelemetry Collector built with the OpenTelemetry Collector Builder (ocb)
from ``bench/otelcol/builder-config.yaml``: **kafka receiver -> batch -> clickhouse exporter**. In the
bench it reads the workload's topic and writes over HTTP to ``imtel engine`` in its own process (as
``pipeline-http`` does), into its own ``otel.otel_logs`` table. bench/otelcol/README.md explains the
choices; this module is its code:

- **Build** (``ensure_otelcol``): this machine (like a developer's and CI's) reaches the Go module
  proxy but not GitHub release assets, so the collector is compiled: ``go install`` ocb, which turns
  the manifest into a ``main`` package and ``go build``s it. A cold build downloads ~1 GB of modules
  and compiles for minutes on two cores, so the binary is cached under
  ``${IMTEL_CACHE_DIR:-~/.cache/imtel}/otelcol/<version>/otelcol-imtel`` with a stamp of the
  manifest's hash (an edited manifest of the same version rebuilds). Concurrent callers serialise on a
  file lock and the binary is moved into place atomically. Go's own caches stay where Go keeps them.
  ``python -m pipeline.dev.bench.otelcol`` builds (or reuses) it and prints its path (``make bench``
  does, before the run).
- **Configuration** (``collector_config``): a dict written as JSON, which is YAML.
- **Measurement** (``measure``): the bench's window, *first record accepted -> last row in the
  table*, and its check: every row arrived (``count()`` of its table equals the rows it must write).

It does a different job from the pipeline (its registry entry's ``differs``): its numbers are a reference point
for what a generic Kafka -> ClickHouse log shipper costs on this machine, not a like-for-like peer.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.dev.bench import procstat
from pipeline.dev.bench.contenders import differs
from pipeline.dev.bench.engine_process import EngineProcess, start_engine
from pipeline.dev.bench.processes import log_tail, spawn
from pipeline.dev.bench.runner import Measurement, Target, engine_cost, not_run, settle
from pipeline.dev.ports import free_port

if TYPE_CHECKING:
    from pipeline.dev.bench.options import Options

HERE = Path(__file__).resolve().parents[3] / "bench" / "otelcol"
MANIFEST = HERE / "builder-config.yaml"
BINARY_NAME = "otelcol-imtel"
# ocb is released with the core modules; keep it at the manifest's dist.version (checked below)
# so the generated main.go matches the component APIs it compiles against.
OCB_MODULE = "go.opentelemetry.io/collector/cmd/builder"
BUILD_TIMEOUT_S = 3600  # a cold build on 2 cores takes minutes; an hour means something hangs
LOGS_TABLE, DATABASE = "otel_logs", "otel"
PASSWORD_ENV = "IMTEL_OTELCOL_CH_PASSWORD"
POLL_S = 0.05



# -- build ----------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """The project's cache root: ``$IMTEL_CACHE_DIR`` or ``~/.cache/imtel`` (shared with the broker)."""
    env = os.environ.get("IMTEL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imtel"


def manifest_version(manifest: Path = MANIFEST) -> str:
    """``dist.version`` from the manifest (a regex: no YAML library needed for one key)."""
    match = re.search(r"^dist:\s*\n(?:[ \t]+.*\n)*?[ \t]+version:\s*\"?([0-9][^\s\"#]*)", manifest.read_text(), re.M)
    if not match:
        raise RuntimeError(f"no dist.version in {manifest}")
    return match.group(1)


def find_go() -> str:
    """The go command: on PATH, else the standard install place; raises if neither exists."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if not go:
        raise RuntimeError("Go toolchain not found (no 'go' on PATH nor /usr/local/go/bin/go); ocb needs it")
    return go


def _run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path, what: str) -> None:
    """Run one build step with output appended to ``log``; a failure raises with one line of reason."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=BUILD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{what} timed out after {BUILD_TIMEOUT_S}s (log: {log})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "cannot" in ln.lower()]
        reason = (errors or lines or ["no output"])[-1][:300]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {reason} (log: {log})")


def cached_binary(cache_dir: Path | None = None, manifest: Path = MANIFEST) -> tuple[Path, bool]:
    """Where the collector of this manifest lives in the cache, and whether a finished build is there."""
    target = (cache_dir or default_cache_dir()).expanduser() / "otelcol" / manifest_version(manifest)
    binary, stamp = target / BINARY_NAME, target / "manifest.sha256"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    ok = (binary.is_file() and os.access(binary, os.X_OK) and stamp.is_file()
          and stamp.read_text().strip() == digest)
    return binary, ok


def ensure_otelcol(cache_dir: Path | None = None) -> Path:
    """Return the path of a built ``otelcol-imtel``, building it (ocb + go build) if missing.

    ``cache_dir`` is the project's cache root (default: :func:`default_cache_dir`); the collector
    goes in ``<root>/otelcol/<version>/``. Raises ``RuntimeError`` with a one-line reason when Go is
    missing or a step fails; the full output is in ``build.log`` beside the binary.
    """
    binary, ready = cached_binary(cache_dir)
    if ready:  # fast path without the lock: the binary is only ever moved in whole
        return binary
    target, version = binary.parent, manifest_version()
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same version
        if cached_binary(cache_dir)[1]:
            return binary
        go = find_go()
        log = target / "build.log"
        log.write_text(f"# otelcol-imtel {version} build, {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        env = {**os.environ, "GOBIN": str(target / "bin"), "CGO_ENABLED": "0",
               # ocb calls `go` itself: make sure it finds the same one we found
               "PATH": f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        _run([go, "install", f"{OCB_MODULE}@v{version}"], env, target, log, f"go install ocb v{version}")
        ocb = target / "bin" / "builder"
        # A copy of the manifest with an absolute output path, so ocb never writes into the repo.
        src = target / "src"
        manifest = target / "builder-config.yaml"
        text = re.sub(r"^([ \t]+output_path:).*$", rf"\1 {src}", MANIFEST.read_text(), count=1, flags=re.M)
        manifest.write_text(text)
        _run([str(ocb), "--config", str(manifest)], env, target, log, "ocb build")
        built = src / BINARY_NAME
        if not built.is_file():
            raise RuntimeError(f"ocb finished but {built} is missing (log: {log})")
        os.replace(built, binary)
        (target / "manifest.sha256").write_text(hashlib.sha256(MANIFEST.read_bytes()).hexdigest() + "\n")
        return binary


# -- configuration --------------------------------------------------------------------------------
def collector_config(brokers: str, topic: str, group: str, clickhouse_endpoint: str, username: str, password: str,
                     database: str = DATABASE, *, metrics_port: int, table: str = LOGS_TABLE, encoding: str = "text",
                     batch_size: int = 8192, batch_timeout: str = "200ms", consumers: int = 4, queue_size: int = 8,
                     compress: str = "none", async_insert: bool = False, max_fetch_mb: int | None = None,
                     debug: bool = False, log_level: str = "info") -> dict[str, Any]:
    """The collector config (a dict, written as YAML/JSON) of the bench's contender. Pure.

    ``brokers`` is a comma-separated bootstrap list; ``clickhouse_endpoint`` an ``http://host:port``
    URL (the exporter's HTTP transport). ``encoding``: ``text`` for our JSON topics (each Kafka message
    one log record, the message as its string body), ``otlp_proto`` for a topic of
    ``ExportLogsServiceRequest`` messages (each log record a row). ``initial_offset: earliest``: the
    bench produces before the collector starts. ``compress: none``: clickhouse-go's ``lz4``/``zstd``
    over HTTP are ClickHouse's native block compression, which ``imtel engine`` refuses.
    ``async_insert: false``: rows are in the table when the insert returns. ``consumers`` are the
    exporter's concurrent inserts; ``queue_size`` (batches, blocking on overflow instead of dropping
    rows) bounds memory. ``max_fetch_mb`` raises the receiver's fetch size (None: its 1 MB). Its own
    metrics on a Prometheus endpoint at ``metrics_port`` (the bench reads its progress there).
    ``password`` is written as given: pass ``"${env:NAME}"`` to keep a token out of the file.
    """
    receiver: dict[str, Any] = {
        "brokers": [b.strip() for b in brokers.split(",") if b.strip()],
        "group_id": group,
        "client_id": "otelcol-imtel",
        "initial_offset": "earliest",
        "logs": {"topics": [topic], "encoding": encoding},
    }
    if max_fetch_mb:
        receiver.update(max_fetch_size=max_fetch_mb << 20, max_partition_fetch_size=max_fetch_mb << 20)
    exporters: dict[str, Any] = {
        "clickhouse": {
            "endpoint": clickhouse_endpoint, "username": username, "password": password, "database": database,
            "logs_table_name": table, "create_schema": True, "compress": compress, "async_insert": async_insert,
            "timeout": "60s",
            # Block instead of dropping when ClickHouse is slower than Kafka (the default drops data
            # once 1000 requests queue up: a contender that loses rows would finish "faster").
            "sending_queue": {"enabled": True, "num_consumers": consumers, "queue_size": queue_size,
                              "block_on_overflow": True},
            "retry_on_failure": {"enabled": True, "initial_interval": "1s", "max_interval": "10s",
                                 "max_elapsed_time": "300s"},
        },
    }
    pipeline_exporters = ["clickhouse"]
    if debug:
        exporters["debug"] = {"verbosity": "basic"}
        pipeline_exporters.append("debug")
    return {
        "receivers": {"kafka": receiver},
        "processors": {
            "batch": {"send_batch_size": batch_size, "send_batch_max_size": batch_size * 2,
                      "timeout": batch_timeout},
        },
        "exporters": exporters,
        "service": {
            "pipelines": {"logs": {"receivers": ["kafka"], "processors": ["batch"], "exporters": pipeline_exporters}},
            "telemetry": {
                "logs": {"level": log_level, "encoding": "console"},
                "metrics": {
                    "level": "normal",
                    "readers": [{"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics_port}}}}],
                },
            },
        },
    }


def write_config(config: dict[str, Any], path: Path) -> Path:
    """Write ``config`` as JSON (valid YAML) to ``path``, readable by the owner only (it may hold a password)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent=2)
        out.write("\n")
    return path


# -- its metrics and its table ----------------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> value per metric name, summed over label sets. Pure."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)", line)
        if m:
            with contextlib.suppress(ValueError):
                out[m[1]] = out.get(m[1], 0.0) + float(m[2])
    return out


def scrape(port: int) -> dict[str, float]:
    """The collector's own metrics ({} when its endpoint does not answer yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return parse_metrics(resp.read().decode())
    except (OSError, urllib.error.URLError):
        return {}


def metric(values: dict[str, float], name: str) -> float:
    """A counter by its base name, with or without the ``_total`` suffix Prometheus adds."""
    return values.get(name + "_total", values.get(name, 0.0))


def engine_sql(endpoint: str, user: str, password: str, query: str, timeout: float = 60.0) -> str:
    """POST one statement to ``imtel engine`` (basic auth); RuntimeError with the engine's answer."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(endpoint + "/", data=query.encode(), method="POST",
                                 headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"engine refused {query[:80]!r}: HTTP {exc.code}: {exc.read().decode()[:300]}") from None
    except (OSError, urllib.error.URLError) as exc:
        raise RuntimeError(f"engine unreachable: {exc}") from None


def expected_rows(workload: str, records: int, messages: int) -> tuple[int, str]:
    """The rows the collector must write and what a row is: one per log record on the OTLP workload
    (the receiver decodes ``otlp_proto``), one per Kafka message on our JSON ones (``text``). Pure."""
    return (records, "log records") if workload == "otlp" else (messages, "Kafka messages")


def encoding_for(workload: str) -> str:
    return "otlp_proto" if workload == "otlp" else "text"


BATCH_RECORDS = 8192  # the batch processor's send_batch_size, in our records


def batch_size(rows: int, records: int) -> int:
    """The batch processor's size in its log records, such that a batch carries about ``BATCH_RECORDS``
    of our records: it counts log records, and on b (``text``) one is a whole message of 100-500 records,
    so 8192 of them would be ~600 MB per batch (measured: 2 GB peak RSS). Pure."""
    return max(1, round(BATCH_RECORDS * rows / records)) if records else BATCH_RECORDS


# -- the measurement --------------------------------------------------------------------------------
def measure(o: Options, t: Target) -> Measurement:
    """The collector on one workload: first record accepted (its ``otelcol_receiver_accepted_log_records``
    moving, scraped every ``POLL_S``) -> every row in its table (``otelcol_exporter_sent_log_records``
    reached the rows, then the first ``count()`` that does); its CPU over that window and peak RSS
    from the kernel, the engine's beside it. Correct when the table holds exactly the rows (fewer:
    lost; more: written twice). Not run, with the reason, when the collector cannot be built."""
    try:
        binary = ensure_otelcol()
    except (RuntimeError, OSError) as exc:
        return not_run("otelcol", t, f"the collector is not built: {exc}")
    m = Measurement("otelcol", t.workload, t.produced.records)
    try:
        engine = start_engine(t.run_dir)
    except RuntimeError as exc:
        m.problems.append(str(exc))
        return m
    rows, what = expected_rows(t.workload, t.produced.records, t.produced.messages)
    m.extra.update(expected_rows=rows, rows_are=what, encoding=encoding_for(t.workload),
                   batch_size=batch_size(rows, t.produced.records))
    m.notes.append(f"a different job: {differs('otelcol')}; here {rows:,} rows ({what})")
    return _run_collector(m, binary, engine, t, rows, o.timeout)


def _run_collector(m: Measurement, binary: Path, engine: EngineProcess, t: Target, rows: int,
                   timeout: float) -> Measurement:
    """Start the collector on the engine, wait for its window's edges, stop both, check the table."""
    endpoint = f"http://127.0.0.1:{engine.port}"
    port = free_port()
    cfg = collector_config(t.bootstrap, t.produced.topic, f"bench-otelcol-{t.run_dir.name}", endpoint, engine.user,
                           "${env:" + PASSWORD_ENV + "}", metrics_port=port, encoding=encoding_for(t.workload),
                           batch_size=batch_size(rows, m.records), log_level="warn")
    path = write_config(cfg, t.run_dir / "otelcol.yaml")
    log = t.run_dir / "otelcol.log"
    proc = spawn([str(binary), "--config", str(path)], log, {**os.environ, PASSWORD_ENV: engine.password})
    count = f"SELECT count() FROM {DATABASE}.{LOGS_TABLE}"
    deadline = time.monotonic() + timeout
    first = first_cpu = end = end_cpu = None
    engine_cpu: list[float | None] = []
    values: dict[str, float] = {}
    stored = 0
    try:
        while time.monotonic() < deadline and not procstat.exited(proc):
            values = scrape(port)
            if first is None:
                if metric(values, "otelcol_receiver_accepted_log_records") > 0:
                    first, first_cpu = time.time(), procstat.cpu_seconds(proc.pid)
                    engine_cpu.append(engine.cpu_seconds())
                    m.extra["peak_rss_before_data_mb"] = procstat.peak_rss_mb(proc.pid)
            elif metric(values, "otelcol_exporter_sent_log_records") >= rows:
                with contextlib.suppress(RuntimeError, ValueError):
                    stored = int(engine_sql(endpoint, engine.user, engine.password, count).strip() or 0)
                if stored >= rows:
                    end, end_cpu = time.time(), procstat.cpu_seconds(proc.pid)
                    engine_cpu.append(engine.cpu_seconds())
                    break
            time.sleep(POLL_S)
    finally:
        exit_ = procstat.stop(proc)
        settled = settle(engine) if end is not None else None
        with contextlib.suppress(RuntimeError, ValueError):  # after the collector stopped: late duplicates show
            stored = int(engine_sql(endpoint, engine.user, engine.password, count).strip() or 0)
        m.extra["engine"] = engine_cost(engine.stop(), engine_cpu, m.records, settled)
    m.peak_rss_mb = round(exit_.peak_rss_mb, 1)
    m.extra["store_rows"] = stored
    m.extra["collector"] = {k: metric(values, k) for k in (
        "otelcol_receiver_accepted_log_records", "otelcol_receiver_failed_log_records",
        "otelcol_exporter_sent_log_records", "otelcol_exporter_send_failed_log_records")}
    if first is None or end is None:
        sent = metric(values, "otelcol_exporter_sent_log_records")
        how = (f"not finished within {timeout:.0f}s (stopped)" if time.monotonic() >= deadline
               else f"collector ended before finishing (exit {exit_.returncode})")
        m.problems.append(f"{how}: sent {sent:.0f} of {rows} rows, {stored} in the table: {log_tail(log, 3)}")
        return m
    m.finish(end - first, None if first_cpu is None or end_cpu is None else end_cpu - first_cpu, until=end)
    m.extra["process_cpu_seconds_total"] = round(exit_.cpu_seconds, 2)
    if stored != rows:
        m.problems.append(f"{DATABASE}.{LOGS_TABLE} has {stored} rows, expected {rows}")
    m.correct = not m.problems
    m.notes.append(f"window start seen by scraping the collector's metrics every {POLL_S * 1000:.0f} ms (all "
                   "along: its end is the exporter's sent count); ClickHouse over HTTP to `imtel engine` in its "
                   "own process, compress: none")
    return m


def main() -> int:
    """``python -m pipeline.dev.bench.otelcol``: build (or reuse) the collector and print its path."""
    started = time.monotonic()
    try:
        path = ensure_otelcol()
    except RuntimeError as exc:
        print(f"otelcol build: {exc}", file=sys.stderr)
        return 1
    print(path)
    print(f"({time.monotonic() - started:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
