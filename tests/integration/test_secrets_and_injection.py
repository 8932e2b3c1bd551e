"""Credentials and SQL injection, against real processes.

Credentials: a wrong ClickHouse password (an HTTP ClickHouse in front of a real engine that answers
like a server: 516 AUTHENTICATION_FAILED, ``tests/support/ch_http_shim.py``) and a refused Kafka SASL/
SCRAM login (a real Kafka node with a SCRAM-SHA-512 listener and its user created at format time) each
end ``imtel`` with one clear line that names the settings to check, and the secret - read from a
``*_FILE`` secret file - appears in no output; the right Kafka secret then works. Not tested here:
Kafka TLS client certificates (librdkafka's path, configured by ``Settings.kafka_config``).

Injection: SQL in every user input the CLI turns into a statement - named query name and parameters,
report parameters, the erase reference and requester, the database, cluster and topic settings - is
refused with one line or stored as inert data, and every table is intact afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.brokers import scram_kafka
from tests.support.shim_process import SHIM

from .conftest import run_sql

pytestmark = pytest.mark.integration

SECRET = "Zq8-wrong-secret-4711"
RIGHT = "the-right-password-0815"
DROP = "'; DROP TABLE imtel.request_logs; --"


def imtel(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_clear_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit ``code``, the last stderr line names the problem, no traceback, no secret anywhere."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-2000:]
    assert "Traceback" not in out and SECRET not in out, out[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last
    return last


@pytest.fixture
def auth_clickhouse(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An HTTP ClickHouse (real engine behind it) that accepts only user default / ``RIGHT``."""
    ready = tmp_path / "shim-ready.json"
    log = open(tmp_path / "shim.log", "ab")  # noqa: SIM115 - owned by the child process
    proc = subprocess.Popen([sys.executable, str(SHIM), "--store", str(tmp_path / "shim-store"), "--ready-file",
                             str(ready), "--password", RIGHT], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "shim.log").read_text()[-2000:]
        time.sleep(0.05)
    yield f"http://127.0.0.1:{json.loads(ready.read_text())['data'][0]}", proc
    proc.terminate()
    proc.wait(10)


def test_a_wrong_clickhouse_password_is_one_clear_line_and_never_shown(
        pipeline_env: dict[str, str], auth_clickhouse: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    dsn, _ = auth_clickhouse
    (tmp_path / "wrong").write_text(SECRET + "\n")
    (tmp_path / "right").write_text(RIGHT + "\n")
    env = {**pipeline_env, "IMTEL_CLICKHOUSE_DSN": dsn, "IMTEL_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "wrong")}
    assert_one_clear_line(imtel(env, "migrate"), 1, "refused the credentials", "516", "IMTEL_CLICKHOUSE_PASSWORD")
    assert_one_clear_line(imtel(env, "query", "app_health"), 1, "refused the credentials")
    worker = imtel(env, "worker")  # connects to Kafka (fine) and to ClickHouse (refused)
    assert_one_clear_line(worker, 1, "refused the credentials", "516")
    in_dsn = {**env, "IMTEL_CLICKHOUSE_DSN": dsn.replace("://", f"://default:{SECRET}@")}
    in_dsn.pop("IMTEL_CLICKHOUSE_PASSWORD_FILE")
    assert_one_clear_line(imtel(in_dsn, "migrate"), 1, "refused the credentials")
    good = imtel({**env, "IMTEL_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "right")}, "migrate")
    assert good.returncode == 0 and "applied:" in good.stdout, good.stderr[-2000:]
    assert RIGHT not in good.stdout + good.stderr


def test_a_refused_kafka_sasl_login_is_one_clear_line_and_never_shown(pipeline_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    """On a real Kafka with SCRAM users: the wrong secret is one clear line naming the settings, never
    the secret; the right one works (so the refusal is the password's, not the setup's)."""
    server, sasl_port = scram_kafka(tmp_path / "sasl-kafka", {"imtel": "Right-secret-0815"})
    server.start()
    try:
        (tmp_path / "kafka-secret").write_text(SECRET)
        (tmp_path / "right-secret").write_text("Right-secret-0815")
        env = {**pipeline_env, "IMTEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{sasl_port}",
               "IMTEL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "IMTEL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
               "IMTEL_KAFKA_SASL_USERNAME": "imtel", "IMTEL_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "kafka-secret")}
        for command in ("topics", "worker"):
            proc = imtel(env, command)
            assert_one_clear_line(proc, 1, "refused the SCRAM-SHA-512 login", "'imtel'", "IMTEL_KAFKA_SASL_PASSWORD")
        assert len(imtel(env, "topics").stderr.strip().splitlines()) == 1
        good = imtel({**env, "IMTEL_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "right-secret")}, "topics")
        assert good.returncode == 0, good.stderr[-2000:]
    finally:
        server.stop()


SEED = textwrap.dedent("""
    import sys, time
    import clickhouse_connect
    from pipeline.schema import migrations
    client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
    migrations.apply(client, "imtel")
    now = int(time.time())
    client.command("INSERT INTO imtel.request_logs (request_time, sdk_app_id, interface, request_id, client_net, "
                   "latency_ms, error_code, region, platform, src_topic_id, src_partition, src_offset, src_index) "
                   "SELECT fromUnixTimestamp64Milli(toInt64((%d - number) * 1000)), 1400000001, "
                   "'v4/openim/sendmsg', toString(number), '203.0.113.0/24', number %% 500, "
                   "if(number %% 10 = 0, 70001, 0), 'ap-seoul', 'iOS', 't', 0, number, 0 FROM numbers(500)" % now)
""")
COUNTS = ["SELECT name, total_rows FROM system.tables WHERE database = 'imtel' AND name != 'erasure_log' ORDER BY name",
          "SELECT count() FROM imtel.request_logs"]


def test_sql_in_every_cli_input_is_refused_or_inert(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    """No worker runs: the CLI opens the store itself, so every statement is built by the CLI."""
    store = Path(pipeline_env["IMTEL_CLICKHOUSE_DSN"].removeprefix("chdb://"))
    seed = subprocess.run([sys.executable, "-c", SEED, str(store)], capture_output=True, text=True, timeout=120)
    assert seed.returncode == 0, seed.stderr[-2000:]
    before = run_sql(store, COUNTS, migrate=False)
    assert before[1] == [[500]]
    env = pipeline_env
    refused = [
        ("query", "app_health", f"minutes=5{DROP}"), ("query", "app_health", "app=1 OR 1=1"),
        ("query", "top_failing", "limit=1) UNION ALL SELECT client_net FROM imtel.request_logs --"),
        ("query", f"app_health{DROP}"), ("query", "app_health", f"{DROP}=1"),
        ("report", "--app", "1400000001 OR 1=1"), ("report", "--app", "1400000001", "--from", f"now-1h{DROP}"),
        ("erase", "--app", "1400000001; DROP TABLE imtel.request_logs"),
    ]
    for args in refused:
        proc = imtel(env, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr[-1500:])
    for var, value in [("IMTEL_CLICKHOUSE_DATABASE", "imtel; DROP DATABASE imtel"),
                       ("IMTEL_CLICKHOUSE_CLUSTER", "c' ; DROP TABLE imtel.request_logs; --"),
                       ("IMTEL_TOPIC_REQUEST_LOGS", f"logs{DROP}")]:
        assert_one_clear_line(imtel({**env, var: value}, "query", "app_health"), 2, var)
    assert_one_clear_line(imtel(env, "migrate", "--cluster", "x' ON CLUSTER 'y"), 2, "--cluster")

    # accepted inputs that are free text: stored as data, verbatim
    erase = imtel(env, "erase", "--app", "1400000099", "--reference", DROP, "--requested-by", "x'); DROP TABLE y; --",
                  "--format", "json")
    assert erase.returncode == 0, erase.stderr[-1500:]
    ok = imtel(env, "query", "app_health", "minutes=2880", "--format", "json")
    assert ok.returncode == 0 and isinstance(json.loads(ok.stdout), list), ok.stderr[-1500:]

    after = run_sql(store, [*COUNTS, "SELECT reference, requested_by FROM imtel.erasure_log"], migrate=False)
    assert after[:2] == before, "a table changed or vanished"  # the erase found no row of app 1400000099
    assert {tuple(r) for r in after[2]} == {(DROP, "x'); DROP TABLE y; --")}
    print(f"\ninjection: {len(refused) + 4} inputs refused with one line, 2 free-text inputs stored verbatim, "
          "tables intact")
