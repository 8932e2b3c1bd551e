"""``imtel deadletters`` against a real Kafka broker and a real engine, through a running worker.

The story: a gateway whose clock runs 10 minutes ahead sends request logs the worker refuses as
``in_future`` (the tolerance is 5 minutes); another sends records with a broken ``client_ip``. The
operator lists the dead letters (while the worker runs: through its authenticated HTTP API, since it
owns the embedded store), looks at one (masked, then ``--raw``, which is logged), sees a cut payload
marked as such, raises ``IMTEL_MAX_FUTURE_SKEW_SECONDS`` (the fix), restarts the worker and replays.
The future-stamped records are stored exactly once under their original coordinates, a second replay
stores nothing more, the broken IPs come back as dead letters with replay count 1 and are refused for
replay once over ``--max-replays``. With the worker stopped, ``list`` opens the store itself (the
direct path a ClickHouse server takes) and still equals the ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.schema.topics import ensure_topics
from tests.support.kafka_io import RecordingProducer, read_topic
from tests.support.workers import WorkerProcess, wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration

IP = "198.51.100.77"
EMAIL = "alice.smith@example.org"


def cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "deadletters", *args], env=env,
                          capture_output=True, text=True, timeout=180)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_list_show_replay_exactly_once(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    env = {**pipeline_env, "IMTEL_DEAD_LETTER_MAX_BYTES": "512"}
    s = Settings.from_env(env)
    ensure_topics(s)
    logs = s.topic_request_logs
    traffic = Traffic(apps=4, seed=11)
    now_ms = int(time.time() * 1000)
    producer = RecordingProducer(s.kafka_bootstrap)
    valid, future, bad_ip = [], [], []
    for i in range(30):
        rec = traffic.request_log(now_ms)
        valid.append(rec)
        producer.send(logs, msgspec.json.encode(rec), str(rec["sdk_app_id"]).encode(), ("valid", i))
    for i in range(6):  # 10 minutes ahead: in_future now, fine once the tolerance is raised
        rec = {**traffic.request_log(now_ms), "request_time": now_ms + 600_000, "client_ip": IP}
        future.append(rec)
        producer.send(logs, msgspec.json.encode(rec), str(rec["sdk_app_id"]).encode(), ("future", i))
    for i in range(3):  # broken for good
        rec = {**traffic.request_log(now_ms), "client_ip": f"{IP}.9", "exception": f"mail {EMAIL}"}
        bad_ip.append(rec)
        producer.send(logs, msgspec.json.encode(rec), str(rec["sdk_app_id"]).encode(), ("bad_ip", i))
    # a batch: a valid record, a future one, one with a field missing
    batch_ok = traffic.request_log(now_ms)
    batch_future = {**traffic.request_log(now_ms), "request_time": now_ms + 600_000}
    batch_missing = {k: v for k, v in traffic.request_log(now_ms).items() if k != "interface"}
    producer.send(logs, msgspec.json.encode([batch_ok, batch_future, batch_missing]), b"1400000001", ("batch", 0))
    # malformed and larger than the letter limit: its payload is cut
    big = b'{"client_ip": "' + IP.encode() + b'", "pad": "' + b"x" * 2000 + b'"'
    producer.send(logs, big, b"1400000001", ("big", 0))
    producer.flush()
    placed = producer.placed
    n_dead = len(future) + len(bad_ip) + 2 + 1

    worker = WorkerProcess("worker", env, tmp_path).start()
    try:
        wait_for(lambda: worker.metric("imtel_records_invalid_total", topic=logs) >= n_dead, 90,
                 "the dead letters", workers=[worker])
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= len(valid) + 1, 60,
                 "the valid rows", workers=[worker])
        by_metric = {reason: worker.metric("imtel_records_invalid_total", topic=logs, reason=reason)
                     for reason in ("in_future", "invalid_ip", "missing_field", "invalid_json")}
        # list through the worker's HTTP API (it owns the embedded store)
        listed = json.loads(cli(env, "list", "--format", "json", "--since", "now-1h").stdout)
        totals: dict[str, int] = {}
        for row in listed:
            totals[row["reason"]] = totals.get(row["reason"], 0) + row["records"]
            assert row["src_topic"] == logs
        assert totals == {"in_future": 7, "invalid_ip": 3, "missing_field": 1, "invalid_json": 1}
        assert totals == {k: int(v) for k, v in by_metric.items()}
        apps = {row["app"] for row in listed if row["reason"] == "invalid_ip"}
        assert apps == {r["sdk_app_id"] for r in bad_ip}
        only = json.loads(cli(env, "list", "--format", "json", "--since", "now-1h", "--reason", "invalid_ip").stdout)
        assert {r["reason"] for r in only} == {"invalid_ip"}
        table = cli(env, "list", "--since", "now-1h").stdout
        assert "total: 12 records" in table

        # show: masked by default, --raw logged; never an IP or e-mail in what is logged
        p = placed[("bad_ip", 0)]
        where = f"{logs}/{p.partition}/{p.offset}/0"
        shown = cli(env, "show", where)
        assert IP not in shown.stdout and EMAIL not in shown.stdout, shown.stdout
        assert "<email>" in shown.stdout and "invalid_ip" in shown.stdout
        raw = cli(env, "show", where, "--raw", "--format", "json")
        assert json.loads(raw.stdout)["payload"].count(IP) == 1 and EMAIL in raw.stdout
        assert "shown unmasked (--raw)" in raw.stderr and where.split("/", 1)[1] in raw.stderr
        assert IP not in raw.stderr and EMAIL not in raw.stderr
        pb = placed[("big", 0)]
        cut = cli(env, "show", f"{logs}/{pb.partition}/{pb.offset}/0")
        assert "TRUNCATED: 512 of" in cut.stdout and IP not in cut.stdout
    finally:
        assert worker.stop(60) == 0, worker.log_text()[-3000:]

    # the fix: a 30-minute tolerance; a new worker, then the replay
    fixed = {**env, "IMTEL_MAX_FUTURE_SKEW_SECONDS": "1800"}
    worker = WorkerProcess("fixed", fixed, tmp_path).start()
    try:
        wait_for(lambda: worker.assigned() > 0, 60, "partitions", workers=[worker])
        dry = cli(fixed, "replay", "--reason", "in_future,invalid_ip", "--dry-run")
        assert "would replay 10 record(s)" in dry.stdout, dry.stdout
        out = cli(fixed, "replay", "--reason", "in_future,invalid_ip", "--since", "now-1h")
        assert f"replayed 10 record(s); 10 to {logs}" in out.stdout, out.stdout

        def outcome(name: str) -> float:
            return worker.metric("imtel_replayed_records_total", topic=logs, outcome=name)

        wait_for(lambda: outcome("stored") >= 7 and outcome("dead") >= 3, 60, "the replays", workers=[worker])
        # again: the future records are stored already (dropped), the broken ones come back a second time
        again = cli(fixed, "replay", "--reason", "in_future", "--since", "now-1h")
        assert "replayed 7 record(s)" in again.stdout, again.stdout
        wait_for(lambda: outcome("duplicate") >= 7, 60, "the second replay", workers=[worker])
        refused = cli(fixed, "replay", "--reason", "invalid_ip", "--max-replays", "1", ok=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "refused: 3 record(s): replayed 1 times already (--max-replays 1)" in refused.stdout
        assert "replayed 0 record(s)" in refused.stdout
        letter = json.loads(cli(fixed, "show", f"{logs}/{p.partition}/{p.offset}/0", "--format", "json").stdout)
        assert letter["replay_count"] == 1 and letter["reason"] == "invalid_ip"
        time.sleep(1.5)  # one more flush interval: nothing else arrives
        assert outcome("stored") == 7 and outcome("duplicate") == 7 and outcome("dead") == 3
    finally:
        assert worker.stop(60) == 0, worker.log_text()[-3000:]
    log_text = worker.log_text()
    assert IP not in log_text and EMAIL not in log_text

    # the store: every future record once, under its original coordinates; the ledger has both attempts
    store = Path(env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    rows, ledger, dedup = run_sql(store, [
        "SELECT request_id, src_partition, src_offset, src_index FROM imtel.request_logs",
        "SELECT reason, replay_count, count() FROM imtel.dead_letters GROUP BY reason, replay_count "
        "ORDER BY reason, replay_count",
        "SELECT reason, count() FROM (SELECT argMax(reason, replay_count) AS reason FROM imtel.dead_letters "
        "GROUP BY src_topic_id, src_partition, src_offset, src_index) GROUP BY reason ORDER BY reason",
    ], migrate=False)
    by_id: dict[str, list[Any]] = {}
    for rid, part, off, idx in rows:
        by_id.setdefault(str(rid), []).append((int(part), int(off), int(idx)))
    for i, rec in enumerate(future):
        q = placed[("future", i)]
        assert by_id[rec["request_id"]] == [(q.partition, q.offset, 0)], rec["request_id"]
    qb = placed[("batch", 0)]
    assert by_id[batch_future["request_id"]] == [(qb.partition, qb.offset, 1)]
    assert by_id[batch_ok["request_id"]] == [(qb.partition, qb.offset, 0)]
    assert all(len(v) == 1 for v in by_id.values())
    assert len(by_id) == len(valid) + 1 + 7
    assert [r for r in ledger if r[0] == "invalid_ip"] == [["invalid_ip", 0, 3], ["invalid_ip", 1, 3]]
    # list without a worker: it opens the store itself, and still equals the ledger (one per record)
    listed = json.loads(cli(env, "list", "--format", "json", "--since", "now-1h").stdout)
    totals = {}
    for row in listed:
        totals[row["reason"]] = totals.get(row["reason"], 0) + row["records"]
    assert totals == {str(r): int(n) for r, n in dedup}
    assert sum(row["replayed"] for row in listed) == 3
    letters = read_topic(s.kafka_bootstrap, s.topic_dead_letters, n_dead + 3)
    again_letters = [m for m in letters if m.headers.get("imtel-replay-count") == b"1"]
    assert len(again_letters) == 3
    assert all(m.headers["imtel-reason"] == b"invalid_ip" for m in again_letters)
