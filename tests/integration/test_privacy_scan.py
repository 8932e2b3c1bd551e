"""No full client IP in anything the pipeline emits.

One worker run with IPv4 and IPv6 clients (compressed, upper case, exploded, IPv4-mapped), invalid
records that carry real addresses (too old, in the future, a wrong type elsewhere, an address with
stray spaces), exception causes holding IPv4/IPv6 addresses and e-mails (valid and dead-lettered
records), and requests that put an address where a parameter value belongs (an error message
must name the parameter and its rule, not quote the value; an unknown query *name* is quoted back to
whoever typed it, which is not client data). Then everything the
pipeline emitted is scanned (``tests/support/ipscan.py``: every textual rendering of every produced
address): the worker's stdout/stderr, ``/metrics``, ``/healthz``, ``/readyz``, the query, report,
audit and apps endpoints, their error answers, the CLI's output, the dead letters' headers and keys
(not their payloads, which keep the original record by design) and every stored table (the exit IP is
stored minimised: ``/24``/``/48``; a cause's addresses and e-mails as ``<ip>``/``<email>``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest

from pipeline.config.settings import Settings
from pipeline.dev.generate import Traffic
from pipeline.schema.topics import ensure_topics
from tests.support.ipscan import Scanner
from tests.support.kafka_io import RecordingProducer, read_topic
from tests.support.workers import WorkerProcess, wait_for

from .conftest import run_sql

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
DROP = "%27;%20DROP%20TABLE%20imtel.request_logs;%20--"
SPECIAL_IPS = ["2001:DB8:ABCD:12::1", "2001:0db8:0001:0002:0000:0000:0000:0005", "::ffff:198.51.100.23",
               "203.0.113.7", "198.51.100.200"]
# Personal data planted in exception causes (free text): stored scrubbed to <ip>/<email>, never as is.
CAUSE_IPS = ["192.0.2.77", "2001:db8:cafe:17::42", "::ffff:198.51.100.99", "2001:DB8:0:0:8:800:200C:417A"]
CAUSE_EMAILS = ["alice.liu+im@example.com", "OPS-oncall@mail.example.net"]
CAUSES = [f"connect to {CAUSE_IPS[0]}:443 refused", f"upstream [{CAUSE_IPS[1]}]:8080 reset by peer",
          f"peer {CAUSE_IPS[2]} closed; user {CAUSE_EMAILS[0]} notified",
          f"login {CAUSE_EMAILS[1]} from {CAUSE_IPS[3]} denied"]


def get(url: str, body: dict[str, object] | None = None, token: str = "") -> str:
    """Body of a GET (or of a POST of ``body`` as the CLI sends it, with the worker's token when it has
    one), error answers included: an error message is output too. Error answers start with ``HTTP <status>``."""
    data = None if body is None else json.dumps(body).encode()
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                              "X-Imtel-Request": "cli", **auth})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return str(resp.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: " + exc.read().decode(errors="replace")


def test_no_full_client_ip_in_anything_the_pipeline_emits(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    s = Settings.from_env(pipeline_env)
    ensure_topics(s)
    logs = s.topic_request_logs
    now_ms = int(time.time() * 1000)
    traffic = Traffic(apps=8, seed=61)
    producer = RecordingProducer(s.kafka_bootstrap)
    produced: list[str] = []
    records = [traffic.request_log(now_ms) for _ in range(1500)]
    records += [{**traffic.request_log(now_ms), "client_ip": ip} for ip in SPECIAL_IPS]
    records += [{**traffic.request_log(now_ms), "error_code": 70001, "exception": cause} for cause in CAUSES]
    invalid = [{**traffic.request_log(now_ms), "request_time": now_ms - 9 * DAY_MS},
               {**traffic.request_log(now_ms), "request_time": now_ms + DAY_MS},
               {**traffic.request_log(now_ms), "latency_ms": "slow"},
               {**traffic.request_log(now_ms), "sdk_app_id": 0},
               {**traffic.request_log(now_ms), "client_ip": " 203.0.113.45 "},
               {**traffic.request_log(now_ms), "client_ip": "2001:db8:7:7::7%eth0"},
               {**traffic.request_log(now_ms), "request_time": now_ms - 9 * DAY_MS, "exception": CAUSES[3]},
               {**traffic.request_log(now_ms), "latency_ms": "slow", "exception": CAUSES[2]}]
    for n, r in enumerate(records + invalid):
        produced.append(str(r["client_ip"]).strip().split("%")[0])
        producer.send(logs, msgspec.json.encode(r), str(r["sdk_app_id"]).encode(), n)
    producer.send(logs, msgspec.json.encode(records[:50]) + b"x", b"1", "truncated array")  # invalid JSON
    produced += [str(r["client_ip"]) for r in records[:50]]
    producer.flush()
    produced += CAUSE_IPS
    scanner = Scanner(produced, CAUSE_EMAILS)
    probe_ip = SPECIAL_IPS[-1]

    worker = WorkerProcess("worker", pipeline_env, tmp_path).start()
    base = f"http://127.0.0.1:{worker.port}"
    emitted: dict[str, str] = {}
    try:
        wait_for(lambda: worker.metric("imtel_rows_written_total", table="request_logs") >= len(records), 60,
                 "the valid records stored")
        wait_for(lambda: worker.metric("imtel_records_invalid_total") >= len(invalid) + 1, 30, "dead letters")
        app = records[0]["sdk_app_id"]
        token_file = Path(pipeline_env["IMTEL_DATA_DIR"]) / "worker.token"  # the CLI's way in (pipeline.worker.app)
        token = token_file.read_text().strip() if token_file.exists() else ""
        for path in ["/metrics", "/healthz", "/readyz", "/queries/app_health?minutes=30",
                     "/queries/top_failing?minutes=30", f"/report?app={app}", "/audit", "/apps",
                     f"/queries/app_health?minutes={probe_ip}", f"/queries/app_health?app={probe_ip}",
                     f"/report?app={probe_ip}", f"/report?app={app}&from={probe_ip}"]:
            emitted[path] = get(base + path, token=token)
        emitted["POST /erase (address as app)"] = get(base + "/erase", {"app": probe_ip, "reference": "t"}, token)
        # SQL where values belong: refused (400) before any statement; tables intact (counted below)
        for path, body in [(f"/queries/app_health?minutes=5{DROP}", None), ("/queries/top_failing?app=1%20OR%201=1",
                           None), (f"/report?app={app}{DROP}", None), ("/erase", {"app": f"1{DROP}"})]:
            answer = emitted[f"{path} {body or ''}"] = get(base + path, body, token)
            assert answer.startswith("HTTP 400"), (path, answer[:300])
        cli = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", "app_health", "minutes=30", "--format",
                              "json"], env=pipeline_env, capture_output=True, text=True, timeout=60)
        bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", "app_health", f"app={probe_ip}"],
                             env=pipeline_env, capture_output=True, text=True, timeout=60)
        emitted["imtel query"] = cli.stdout + cli.stderr
        emitted["imtel query (bad parameter)"] = bad.stdout + bad.stderr
        assert cli.returncode == 0 and json.loads(cli.stdout), cli.stderr
        assert bad.returncode == 2
    finally:
        code = worker.stop(60)
    emitted["worker stdout/stderr"] = worker.log_text()
    assert code == 0, emitted["worker stdout/stderr"][-3000:]

    letters = read_topic(s.kafka_bootstrap, s.topic_dead_letters, len(invalid) + 1)
    emitted["dead-letter headers and keys"] = "\n".join(
        f"{m.key!r} " + " ".join(f"{k}={v.decode(errors='replace')}" for k, v in m.headers.items()) for m in letters)
    store = Path(pipeline_env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    tables = {"request_logs": "*", "monitoring_samples": "*", "interface_stats_1m": "* EXCEPT (latency_q)",
              "dead_letters": "*", "applications": "*"}
    for table, rows in zip(tables, run_sql(store, [f"SELECT {cols} FROM imtel.{t}" for t, cols in tables.items()],
                                           migrate=False), strict=True):
        emitted[f"table {table}"] = "\n".join("\t".join(map(str, r)) for r in rows)

    assert len(emitted["table request_logs"].splitlines()) == len(records)
    assert "/24" in emitted["table request_logs"] and "/48" in emitted["table request_logs"]
    assert "<ip>" in emitted["table request_logs"] and "<email>" in emitted["table request_logs"]
    hits = scanner.scan_all(emitted)
    assert not hits, "full client IPs emitted:\n" + "\n".join(f"{h.source}: {h.found!r} in ...{h.context}..."
                                                             for h in hits[:10])
    print(f"\nprivacy scan: {len(scanner.targets)} client addresses, {len(emitted)} outputs "
          f"({sum(map(len, emitted.values())):,} characters) scanned, 0 hits")
