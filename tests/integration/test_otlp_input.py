"""OpenTelemetry logs through a real worker on the real broker: ``ExportLogsServiceRequest`` messages
made by the OpenTelemetry SDK's OTLP encoder, as the Collector's Kafka exporter writes them
(``otlp_proto`` and ``otlp_json``), on the request-log topic beside our own JSON.

Stored rows equal the mapped fields (``schemas/otlp_mapping.yaml``), exit IPs are stored minimised
only, unmappable records are dead letters with their reason and their own one-record request as the
payload, and a worker killed and restarted mid-stream stores each OTLP record exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pipeline.config.settings import Settings
from pipeline.ingest import otlp
from pipeline.ingest.privacy import prefix
from pipeline.schema.topics import ensure_topics
from tests.support.kafka_io import RecordingProducer, read_topic
from tests.support.otlp_sdk import encode, sdk_request
from tests.support.workers import WorkerProcess, committed_offsets, wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration

MESSAGES = 40  # per encoding
PER_MESSAGE = 5


def request_records(n: int, now_ns: int, seq: int) -> list[dict[str, Any]]:
    """``n`` log records; every fifth has no app id (unmappable), one in seven an exception."""
    out = []
    for i in range(n):
        k = seq * n + i
        attrs: dict[str, Any] = {
            "http.route": f"/v4/openim/op{k % 3}", "client.address": f"198.51.{k % 200}.{k % 250 + 1}",
            "http.server.request.duration": 0.001 * (k % 90 + 1), "im.request_id": f"otlp-{k}",
            "http.response.status_code": 500 if k % 11 == 0 else 200}
        if k % 5 != 4:
            attrs["im.sdk_app_id"] = 1_400_000_001 + k % 3
        if k % 7 == 0:
            attrs["exception.message"] = f"upstream timeout for {attrs['client.address']}"
        out.append({"attributes": attrs, "timestamp": now_ns - k * 1_000_000})
    return out


def test_otlp_logs_are_stored_once_minimised_and_unmappable_records_dead_lettered(
        pipeline_env: dict[str, str], tmp_path: Path) -> None:
    s = Settings.from_env(pipeline_env)
    ensure_topics(s)
    logs = s.topic_request_logs
    now_ns = time.time_ns()
    producer = RecordingProducer(s.kafka_bootstrap)
    expected: dict[str, dict[str, Any]] = {}
    unmappable: dict[str, str] = {}
    seq = 0

    def send(encoding: str) -> None:
        nonlocal seq
        for _ in range(MESSAGES):
            records = request_records(PER_MESSAGE, now_ns, seq)
            payload = encode(sdk_request(records, {"cloud.region": "ap-singapore"}), encoding)
            mapped, rejects = otlp.decode_otlp_logs(payload, encoding)
            expected.update({d["request_id"]: d for d in mapped})
            unmappable.update({records[i]["attributes"]["im.request_id"]: reason for i, reason, _ in rejects})
            producer.send(logs, payload, str(seq % 4).encode(), (encoding, seq))
            seq += 1
        producer.flush()

    send("otlp_proto")
    producer.send(logs, msgspec.json.encode({**next(iter(expected.values())), "request_id": "own-json"}), b"0",
                  ("json", 0))  # our own JSON beside it, on the same topic
    first = WorkerProcess("first", pipeline_env, tmp_path).start()
    try:  # kill -9 once it has stored something: nothing it stored may be stored twice
        wait_for(lambda: first.metric("imtel_rows_written_total", table="request_logs") > 0, 90, "first rows stored",
                 workers=[first])
    finally:
        first.kill()
    send("otlp_json")  # the rest arrives while no worker runs
    assert unmappable and all(r == "otlp_missing_app_id" for r in unmappable.values())
    ends: dict[int, int] = {}
    for placed in producer.placed.values():
        ends[placed.partition] = max(ends.get(placed.partition, 0), placed.offset + 1)

    def all_committed() -> bool:
        got = committed_offsets(s.kafka_bootstrap, s.consumer_group, logs, s.topic_partitions)
        return all(got.get(p, 0) >= end for p, end in ends.items())

    worker = WorkerProcess("worker", pipeline_env, tmp_path).start()
    total = len(expected) + 1
    try:
        wait_for(lambda: worker.assigned() > 0, 90, "the second worker's assignment", workers=[worker])
        wait_for(all_committed, 120, "every OTLP message committed", workers=[worker])
    finally:
        code = worker.stop(60)
    assert code == 0, worker.log_text()[-3000:]
    store = Path(pipeline_env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    rows, ledger, stats = run_sql(store, [
        "SELECT request_id, sdk_app_id, interface, toUnixTimestamp64Milli(request_time), client_net, latency_ms, "
        "error_code, exception, region, platform FROM imtel.request_logs",
        "SELECT src_offset, src_index, reason FROM imtel.dead_letters",
        "SELECT sum(requests), sum(failures) FROM imtel.interface_stats_1m WHERE source = 'log'"], migrate=False)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == total, "an OTLP record was lost or stored twice"
    for rid, app, iface, t_ms, net, latency, code_, exc, region, platform in rows:
        if rid == "own-json":
            continue
        d = expected[rid]
        assert (app, iface, t_ms, latency, code_, region, platform) == (
            d["sdk_app_id"], d["interface"], d["request_time"], d["latency_ms"], d["error_code"], d["region"],
            d["platform"])
        assert net == prefix(d["client_ip"]), "the exit IP must be stored as its /24 only"
        assert "198.51." not in exc and (d.get("exception") is None) == (exc == "")
    text = " ".join(str(v) for r in rows for v in r)
    assert not any(d["client_ip"] in text for d in expected.values()), "a full exit IP was stored"
    assert sorted(r[2] for r in ledger) == sorted(unmappable.values())
    # the aggregate equals the stored rows: nothing counted twice across the kill
    assert stats == [[total, sum(1 for r in rows if r[6] != 0)]]

    letters = read_topic(s.kafka_bootstrap, s.topic_dead_letters, len(unmappable))
    keys = {(m.headers["imtel-source-partition"], m.headers["imtel-source-offset"], m.headers["imtel-source-index"])
            for m in letters}
    assert len(keys) == len(unmappable)
    for m in letters:  # the payload is the one record as a request of its own: a replay decodes just it
        assert m.headers["imtel-reason"] == b"otlp_missing_app_id"
        mapped, rejects = otlp.decode_otlp_logs(m.value, "otlp_proto")
        assert mapped == [] and [r[1] for r in rejects] == ["otlp_missing_app_id"]

