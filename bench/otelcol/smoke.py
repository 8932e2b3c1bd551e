"""Standalone check of the OpenTelemetry Collector contender, end to end on real services.

    .venv/bin/python bench/otelcol/smoke.py [--records 200000] [--workload a] [--keep]

What it does, in order: builds (or reuses) ``otelcol-imtel`` (``build.py``); starts a real Apache
Kafka broker (the project's ``KafkaServer``) and ``imtel engine`` (chDB behind ClickHouse's HTTP
interface, as ``pipeline-http`` in the bench); creates a topic with the bench's 4 partitions and
produces the bench's workload to it (the project's seeded generator) *before* the collector starts,
so what is measured is a catch-up of a full topic, like the bench's throughput runs; then starts
the collector and measures it:

- records/s over the window *first record accepted -> last row in ``otel_logs``* (the start is the
  first scrape of the collector's own metrics showing ``otelcol_receiver_accepted_log_records`` > 0;
  the end the first ``count()`` of the table reaching the expected rows, polled once the metric
  ``otelcol_exporter_sent_log_records`` says everything was sent, so polling costs the engine
  nothing during the run). Start-up and the group join are outside the window, as for the worker.
- the collector's CPU seconds over that window (``/proc/PID/stat`` utime+stime, all threads), per
  million records; the engine's too (it does the inserts' real work), reported separately.
- the collector's peak RSS (``VmHWM``) over its whole life.

Then it checks the table's content against the workload (row count, distinct request ids, the sum
of ``latency_ms`` parsed back out of ``Body``), prints a JSON report and stops everything.

This file may import from ``pipeline`` (read only); modules there are being moved, so each import
tries the new place first and the old one second.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO)]

from pipeline.dev.bench.otelcol import (  # noqa: E402
    LOGS_TABLE,
    collector_config,
    ensure_otelcol,
    metric,
    scrape,
    write_config,
)

TICKS = os.sysconf("SC_CLK_TCK")
PARTITIONS = 4  # the bench's (pipeline/dev/bench/broker.py)
POLL_S = 0.05


def _module(*names: str) -> ModuleType:
    """The first of ``names`` that imports (pipeline modules are moving: new place first)."""
    errors = []
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            errors.append(f"{name}: {exc}")
    raise ImportError("; ".join(errors))


# -- the processes' cost, from the kernel -----------------------------------------------------------
def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all threads), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's high-water mark of the resident set (VmHWM) of a live process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- imtel engine -----------------------------------------------------------------------------------
@dataclass
class Engine:
    """A running ``imtel engine`` (started through the CLI, whose command does not move)."""

    proc: subprocess.Popen[bytes]
    port: int
    user: str
    password: str
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sql(self, query: str, timeout: float = 60.0) -> str:
        """POST one statement (basic auth, loopback Host); raises RuntimeError with the engine's answer."""
        auth = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req = urllib.request.Request(self.endpoint + "/", data=query.encode(), method="POST",
                                     headers={"Authorization": f"Basic {auth}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"engine refused {query[:80]!r}: HTTP {exc.code}: {exc.read().decode()[:500]}") from None


# Used when ``pipeline.cli`` itself does not import (it is being restructured): the same server,
# started from its module as ``imtel engine`` does (loopback, generated token in STORE/engine.token).
_ENGINE_LAUNCHER = """
import importlib, sys
from pathlib import Path
for name in ("pipeline.dev.engine", "pipeline.dev.engine_server", "pipeline.engine_server"):
    try:
        m = importlib.import_module(name)
        break
    except ModuleNotFoundError:
        continue
store, ready = Path(sys.argv[1]), Path(sys.argv[2])
store.mkdir(parents=True, exist_ok=True)
access = m.Access.from_files(store / m.TOKEN_FILE, generate=True)
m.serve(m.EngineServer(store, access=access, host="127.0.0.1", port=0), ready)
"""


def start_engine(run_dir: Path, timeout: float = 90.0) -> Engine:
    """``imtel engine --store RUN/store --port 0``; returns once its ready file names port and token.
    If the CLI fails to start (it may be mid-move), the engine module is started directly."""
    ready, log = run_dir / "engine-ready.json", run_dir / "engine.log"
    store = run_dir / "store"
    commands = [[sys.executable, "-m", "pipeline.cli", "engine", "--store", str(store), "--port", "0",
                 "--ready-file", str(ready)],
                [sys.executable, "-c", _ENGINE_LAUNCHER, str(store), str(ready)]]
    for attempt, cmd in enumerate(commands):
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if ready.exists():
            break
        stop(proc)
        if attempt == len(commands) - 1:
            raise RuntimeError(f"imtel engine did not start:\n{tail(log)}")
    info = json.loads(ready.read_text())
    password = Path(info["password_file"]).read_text().strip()
    return Engine(proc, int(info["data"][0]), str(info["user"]), password, log)


# -- Kafka: topic and workload ----------------------------------------------------------------------
@dataclass
class Produced:
    messages: int
    records: int
    latency_sum_ms: int
    seconds: float


def produce_workload(bootstrap: str, topic: str, name: str, records: int) -> Produced:
    """Create ``topic`` (4 partitions) and produce the bench's seeded workload to it, all acknowledged."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    workload = _module("pipeline.dev.bench.workload", "pipeline.bench.workload")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)], operation_timeout=15).values():
        fut.result()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1_048_576,
                         "compression.type": "none"})
    expected = workload.Expected()
    errors: list[str] = []
    started, messages = time.monotonic(), 0

    def acked(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for msg in workload.messages(workload.workload(name, records), int(time.time() * 1000), expected):
        while True:
            try:
                producer.produce(topic, msg.value, msg.key, on_delivery=acked)
                break
            except BufferError:
                producer.poll(0.05)
        messages += 1
        if messages % 10000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"producing failed: {left} unacknowledged, errors: {errors[:3]}")
    return Produced(messages, expected.rows, expected.totals()["latency_sum_ms"], time.monotonic() - started)


# -- the collector ----------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"records": args.records, "workload": args.workload}
    t0 = time.monotonic()
    binary = ensure_otelcol(Path(args.cache_dir) if args.cache_dir else None)
    report["build_or_reuse_s"] = round(time.monotonic() - t0, 2)
    report["binary"] = str(binary)
    run_dir = Path(tempfile.mkdtemp(prefix="imtel-otelcol-smoke-"))
    report["run_dir"] = str(run_dir)
    kafka_mod = _module("pipeline.dev.kafka_server", "pipeline.kafka_server")
    kafka = kafka_mod.KafkaServer(run_dir / "kafka")
    engine = collector = None
    try:
        kafka.start()
        engine = start_engine(run_dir)
        endpoint = engine.endpoint  # clickhouse-go talks to the engine directly
        topic, group = "otel-logs-smoke", "otelcol-imtel-smoke"
        produced = produce_workload(kafka.bootstrap, topic, args.workload, args.records)
        report["produced"] = {"messages": produced.messages, "records": produced.records,
                              "seconds": round(produced.seconds, 2)}
        # ``text`` makes one log record per Kafka message: workload b's batched messages stay whole.
        expected_rows = produced.messages
        metrics_port = free_port()
        cfg = collector_config(kafka.bootstrap, topic, group, endpoint, engine.user,
                               "${env:IMTEL_OTELCOL_CH_PASSWORD}", args.database, metrics_port=metrics_port,
                               batch_size=args.batch_size, consumers=args.consumers, queue_size=args.queue_size,
                               compress=args.compress,
                               async_insert=args.async_insert, max_fetch_mb=args.max_fetch_mb)
        cfg_path = write_config(cfg, run_dir / "otelcol.yaml")
        report["config"] = {**cfg, "exporters": {"clickhouse": {**cfg["exporters"]["clickhouse"],
                                                                "endpoint": "http://127.0.0.1:<port>"}}}
        log = run_dir / "otelcol.log"
        env = {**os.environ, "IMTEL_OTELCOL_CH_PASSWORD": engine.password}
        with log.open("ab") as out:
            collector = subprocess.Popen([str(binary), "--config", str(cfg_path)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        started = time.monotonic()
        deadline = started + args.timeout
        first = first_cpu = first_engine_cpu = end = end_cpu = end_engine_cpu = None
        rows = 0
        values: dict[str, float] = {}
        while time.monotonic() < deadline:
            if collector.poll() is not None:
                raise RuntimeError(f"collector exited (code {collector.returncode}):\n{tail(log)}")
            values = scrape(metrics_port)
            if first is None and metric(values, "otelcol_receiver_accepted_log_records") > 0:
                first, first_cpu, first_engine_cpu = time.monotonic(), cpu_seconds(collector.pid), \
                    cpu_seconds(engine.proc.pid)
            sent = metric(values, "otelcol_exporter_sent_log_records")
            if first is not None and sent >= expected_rows:
                rows = int(engine.sql(f"SELECT count() FROM {args.database}.{LOGS_TABLE}").strip() or 0)
                if rows >= expected_rows:
                    end, end_cpu, end_engine_cpu = time.monotonic(), cpu_seconds(collector.pid), \
                        cpu_seconds(engine.proc.pid)
                    break
            time.sleep(POLL_S)
        report["collector_metrics"] = {k: v for k, v in sorted(values.items()) if re.match(
            r"otelcol_(receiver|exporter|processor_batch|process|kafka)", k) and not k.endswith(("_bucket", "_sum"))}
        report["collector_peak_rss_mb"] = round(peak_rss_mb(collector.pid) or 0, 1)
        report["engine_peak_rss_mb"] = round(peak_rss_mb(engine.proc.pid) or 0, 1)
        report["collector_problems"] = [ln[:400] for ln in tail(log, 10_000).splitlines()
                                        if "\terror\t" in ln or "\twarn\t" in ln][-5:]
        if end is None or first is None:
            report["problem"] = (f"not done within {args.timeout:.0f}s: sent "
                                 f"{metric(values, 'otelcol_exporter_sent_log_records'):.0f} of {expected_rows}, "
                                 f"failed {metric(values, 'otelcol_exporter_send_failed_log_records'):.0f}, "
                                 f"rows {rows}")
            return report
        window = end - first
        report["startup_to_first_record_s"] = round(first - started, 2)
        report["window_s"] = round(window, 2)
        report["records_per_s"] = round(expected_rows / window)
        if first_cpu is not None and end_cpu is not None:
            report["collector_cpu_s"] = round(end_cpu - first_cpu, 2)
            report["collector_cpu_s_per_million"] = round((end_cpu - first_cpu) / expected_rows * 1e6, 1)
        if first_engine_cpu is not None and end_engine_cpu is not None:
            report["engine_cpu_s"] = round(end_engine_cpu - first_engine_cpu, 2)
            report["engine_cpu_s_per_million"] = round((end_engine_cpu - first_engine_cpu) / expected_rows * 1e6, 1)
        report["check"] = check_table(engine, args.database, expected_rows, produced, args.workload)
        return report
    finally:
        if collector is not None:
            stop(collector)
        if engine is not None:
            stop(engine.proc)
        kafka.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def check_table(engine: Engine, database: str, expected_rows: int, produced: Produced, workload: str) -> dict[str, Any]:
    """What landed: rows, distinct request ids and the latency sum parsed back out of ``Body``."""
    table = f"{database}.{LOGS_TABLE}"
    out: dict[str, Any] = {"rows": int(engine.sql(f"SELECT count() FROM {table}").strip())}
    if workload == "a":
        distinct, latency = engine.sql(f"SELECT uniqExact(JSONExtractString(Body, 'request_id')), "
                                       f"sum(JSONExtractUInt(Body, 'latency_ms')) FROM {table}").split()
        out.update(distinct_request_ids=int(distinct), latency_sum_ms=int(latency),
                   expected_latency_sum_ms=produced.latency_sum_ms)
        out["correct"] = (out["rows"] == expected_rows == int(distinct)
                          and int(latency) == produced.latency_sum_ms)
    else:
        out["correct"] = out["rows"] == expected_rows
    out["table_bytes_on_disk"] = int(engine.sql(
        f"SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{database}' AND table = '{LOGS_TABLE}' "
        "AND active").strip() or 0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--workload", choices=("a", "b"), default="a",
                   help="a: one record per message (default); b: 100-500 per message (one log row each)")
    p.add_argument("--database", default="otel")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--consumers", type=int, default=4)
    p.add_argument("--queue-size", type=int, default=8, help="exporter queue, in batches")
    p.add_argument("--compress", default="none",
                   help="exporter compression: none (default) or gzip; lz4/zstd are refused by imtel engine")
    p.add_argument("--async-insert", action="store_true")
    p.add_argument("--max-fetch-mb", type=int, default=None, help="receiver fetch size (default: its 1 MB)")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--cache-dir", default=None, help="cache root (default $IMTEL_CACHE_DIR or ~/.cache/imtel)")
    p.add_argument("--keep", action="store_true", help="keep the run folder (logs, config, store)")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args()
    try:
        report = run(args)
    except RuntimeError as exc:
        print(f"smoke: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report.get("check", {}).get("correct") else 1


if __name__ == "__main__":
    sys.exit(main())
