"""End to end on real parts: bundled broker process -> `imtel worker` -> embedded ClickHouse.

Produces request logs in every framing (single object, JSON array, NDJSON), monitoring samples and
invalid records; then checks exactly-once rows, dead letters with reasons, aggregates equal to a
recomputation from the raw rows, no full client IP stored, and /metrics counts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.schema.topics import ensure_topics
from tests.support.verify import RAW_AGGREGATES, STORED_AGGREGATES
from tests.support.workers import wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration


def metric_values(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def produce_workload(env: dict[str, str]) -> dict[str, object]:
    s = Settings.from_env(env)
    ensure_topics(s)
    now_ms = int(time.time() * 1000)
    traffic = Traffic(apps=12, seed=11)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 5})
    valid: list[dict] = []

    def send(topic: str, value: bytes, key: bytes | None = b"1") -> None:
        producer.produce(topic, value=value, key=key)

    for _ in range(400):  # single objects
        r = traffic.request_log(now_ms)
        valid.append(r)
        send(s.topic_request_logs, msgspec.json.encode(r), str(r["sdk_app_id"]).encode())
    for _ in range(20):  # JSON arrays of 50
        batch = [traffic.request_log(now_ms) for _ in range(50)]
        valid += batch
        send(s.topic_request_logs, msgspec.json.encode(batch))
    for _ in range(10):  # NDJSON of 30
        batch = [traffic.request_log(now_ms) for _ in range(30)]
        valid += batch
        send(s.topic_request_logs, b"\n".join(msgspec.json.encode(r) for r in batch))
    bad_ip = dict(traffic.request_log(now_ms), client_ip="203.0.113.999")
    too_old = dict(traffic.request_log(now_ms), request_time=now_ms - 9 * 86_400_000)
    mixed = [traffic.request_log(now_ms), {"sdk_app_id": "nope"}, traffic.request_log(now_ms)]
    valid += [mixed[0], mixed[2]]
    invalid = [b'{"sdk_app_id": 14', b"", b"\xff\xfe", msgspec.json.encode(bad_ip), msgspec.json.encode(too_old),
               b'{"sdk_app_id": 1, "latency_ms": NaN}', b"[1, 2, 3]"]
    for value in invalid:
        send(s.topic_request_logs, value, None)
    send(s.topic_request_logs, msgspec.json.encode(mixed))
    n_invalid_logs = len(invalid) - 1 + 1 + 3  # "[1,2,3]" is 3 rejects, mixed has 1
    samples = [traffic.monitoring_sample(now_ms) for _ in range(40)]
    for sample in samples:
        send(s.topic_monitoring_samples, msgspec.json.encode(sample))
    bad_sample = dict(samples[0], failures=samples[0]["requests"] + 1)
    send(s.topic_monitoring_samples, msgspec.json.encode(bad_sample))
    producer.flush(30)
    return {"valid": valid, "invalid": n_invalid_logs + 1, "samples": samples,
            "ips": {r["client_ip"] for r in valid}}


def test_pipeline_end_to_end(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    work = produce_workload(pipeline_env)
    valid, samples = work["valid"], work["samples"]
    assert isinstance(valid, list) and isinstance(samples, list)
    port = int(pipeline_env["IMTEL_WEB_PORT"])
    log_file = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=pipeline_env,
                              stdout=log_file, stderr=subprocess.STDOUT)
    try:
        def stored() -> bool:
            m = metric_values(port)
            return m.get(("imtel_rows_written_total", (("table", "request_logs"),)), 0) >= len(valid) and \
                m.get(("imtel_rows_written_total", (("table", "monitoring_samples"),)), 0) >= len(samples)
        wait_for(stored, 90, "all rows written")
        time.sleep(1.5)  # any duplicate would show up in the counters by now
        m = metric_values(port)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log_file.close()
    log_text = (tmp_path / "worker.log").read_text()
    assert worker.returncode == 0, log_text[-3000:]

    logs_topic = pipeline_env["IMTEL_TOPIC_REQUEST_LOGS"]
    assert m[("imtel_rows_written_total", (("table", "request_logs"),))] == len(valid)
    assert m[("imtel_records_consumed_total", (("topic", logs_topic),))] == len(valid) + work["invalid"] - 1
    invalid_metric = sum(v for (name, _labels), v in m.items() if name == "imtel_records_invalid_total")
    assert invalid_metric == work["invalid"]
    assert m[("imtel_requests_total", (("app", str(valid[0]["sdk_app_id"])), ("outcome", "success")))] > 0

    # dead letters: every invalid record, with a reason and its origin
    consumer = Consumer({"bootstrap.servers": pipeline_env["IMTEL_KAFKA_BOOTSTRAP"], "group.id": "dlq-check",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([pipeline_env["IMTEL_TOPIC_DEAD_LETTERS"]])
    letters = []
    deadline = time.monotonic() + 30
    while len(letters) < work["invalid"] and time.monotonic() < deadline:
        letters += [msg for msg in consumer.consume(100, 1.0) if msg.error() is None]
    consumer.close()
    assert len(letters) == work["invalid"]
    reasons = sorted(dict(msg.headers())["imtel-reason"].decode() for msg in letters)
    expected = {"invalid_json", "empty", "invalid_ip", "too_old", "not_object", "wrong_type", "inconsistent"}
    assert expected <= set(reasons)
    for msg in letters:
        assert {"imtel-source-topic", "imtel-source-partition", "imtel-source-offset"} <= set(dict(msg.headers()))

    store = Path(pipeline_env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    rows = run_sql(store, [
        "SELECT count(), uniqExact(request_id) FROM imtel.request_logs",
        "SELECT request_id FROM imtel.request_logs",
        RAW_AGGREGATES, STORED_AGGREGATES,
        "SELECT DISTINCT client_net FROM imtel.request_logs",
        "SELECT sum(requests), sum(failures) FROM imtel.interface_stats_1m WHERE source = 'sample'",
        "SELECT count() FROM imtel.dead_letters",
    ], migrate=False)
    (count, unique), = rows[0]
    assert count == unique == len(valid)
    assert {r[0] for r in rows[1]} == {r["request_id"] for r in valid}
    assert rows[2] == rows[3] and len(rows[2]) > 10
    nets = {r[0] for r in rows[4]}
    assert not nets & work["ips"]  # type: ignore[operator]
    assert all(n.endswith(("/24", "/48")) for n in nets)
    assert rows[5] == [[sum(x["requests"] for x in samples), sum(x["failures"] for x in samples)]]
    assert rows[6] == [[work["invalid"]]]
    for ip in work["ips"]:  # type: ignore[union-attr]
        assert ip not in log_text
