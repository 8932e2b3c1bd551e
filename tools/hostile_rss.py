"""Peak RSS of a worker while the hostile cases of ``tests/integration/test_hostile_input.py`` arrive
inside normal traffic (the README states the bound this measures).

    .venv/bin/python tools/hostile_rss.py [--broker kafka|tansu | --bootstrap HOST:PORT] [--rounds 2]

Starts a real Apache Kafka node (or the bundled broker, ``--broker tansu``) unless ``--bootstrap`` names
one, a real ``imtel worker`` with its own
embedded store, a stream of valid request logs, and sends every hostile case ``--rounds`` times.
Prints the worker's peak resident set (``VmHWM`` from /proc, read before it stops) and its RSS at
rest; exits non-zero if a valid record was not stored.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.settings import Settings
from pipeline.dev import embedded
from pipeline.dev.ports import free_port
from pipeline.schema.topics import ensure_topics
from tests.integration.test_hostile_input import hostile_cases
from tests.support.kafka_io import RecordingProducer
from tests.support.workers import Stream, WorkerProcess, wait_for, worker_env


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="")
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imtel-hostile-"))
    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        port = free_port()
        broker = embedded.start_local(args.broker, port, work)
        bootstrap = f"127.0.0.1:{port}"
    tansu = embedded.tansu_env() if broker is not None and broker.kind == "tansu" else {}
    tag = uuid.uuid4().hex[:8]
    base = {"IMTEL_KAFKA_BOOTSTRAP": bootstrap, "IMTEL_TOPIC_REQUEST_LOGS": f"logs-{tag}",
            "IMTEL_TOPIC_MONITORING_SAMPLES": f"samples-{tag}", "IMTEL_TOPIC_DEAD_LETTERS": f"dlq-{tag}",
            "IMTEL_TOPIC_APPLICATIONS": f"apps-{tag}", "IMTEL_CONSUMER_GROUP": f"group-{tag}",
            "IMTEL_LOG_LEVEL": "warning", **tansu}
    env = worker_env({**os.environ, **base}, f"chdb://{work / 'store'}", work, "worker",
                     free_port())
    s = Settings.from_env(env)
    worker = None
    try:
        time.sleep(1)
        ensure_topics(s)
        worker = WorkerProcess("worker", env, work).start()
        assert worker.proc is not None
        stream = Stream(bootstrap, s.topic_request_logs, rate=400, total=10_000, seed=5)
        stream.start()
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") > 200, 90, "first rows",
                 workers=[worker])
        rest_kb = status_kb(worker.proc.pid, "VmRSS")
        producer = RecordingProducer(bootstrap, **{"compression.type": "zstd", "message.max.bytes": 100_000_000})
        cases = hostile_cases(int(time.time() * 1000))
        for r in range(args.rounds):
            for i, (_, value, _) in enumerate(cases):
                producer.send(s.topic_request_logs, value, b"1400000001", (r, i))
            producer.flush()
        stream.join(120)
        want = stream.total + 20_000 * args.rounds
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= want, 180,
                 "every valid record stored", workers=[worker])
        peak_kb = status_kb(worker.proc.pid, "VmHWM")
        print(f"worker RSS at rest {rest_kb / 1024:.0f} MiB; peak RSS {peak_kb / 1024:.0f} MiB over {args.rounds} "
              f"rounds of {len(cases)} hostile messages ({sum(len(v) for _, v, _ in cases) / 1e6:.0f} MB expanded "
              f"per round) inside {stream.total} records of normal traffic; all {want} valid records stored")
        return 0
    finally:
        if worker is not None and worker.alive():
            worker.stop(60)
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
