"""``imtel engine`` attacked as a real process, the way the security issue reached it.

One engine process (started as a user starts it: ``imtel engine --store ... --port 0``, no fault
admin) serves every test of this module. Each test plays one attacker: no credentials, a write over
GET, a body too big to read, a gzip bomb before authentication, a slow client (slowloris), a foreign
Host (DNS rebinding) or a web page's Origin, a header injected through ``query_id``, and SQL that
reaches the local filesystem (``file()``, ``FROM INFILE``). The limits asserted are the stated ones
(``pipeline.dev.engine.Limits``, ``docs/security.md``).
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest

from pipeline.dev.engine import Limits
from tests.support.engine_process import Engine, running_engine
from tests.support.raw_http import exchange

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DECODED_MB = 64  # below the default 512, so the capped decompression test stays light on a shared machine


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with running_engine(tmp_path_factory.mktemp("engine-attacks"), "--max-decompressed-mb", str(DECODED_MB)) as running:
        client = running.client()
        client.command("CREATE DATABASE IF NOT EXISTS imtel")
        client.command("CREATE TABLE IF NOT EXISTS imtel.request_logs (id UInt64) ENGINE = MergeTree ORDER BY id")
        client.insert("imtel.request_logs", [[1], [2], [3]], column_names=["id"])
        client.close()
        yield running


def request(engine: Engine, target: str, *, auth: bool = True, method: str = "GET", extra: str = "",
            body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    credentials = f"\nX-ClickHouse-User: default\nX-ClickHouse-Key: {engine.token}" if auth else ""
    head = (f"{method} {target} HTTP/1.1\nHost: 127.0.0.1:{engine.port}\nContent-Length: {len(body)}"
            f"{credentials}{extra}")
    return exchange(engine.port, head, body)


def gzip_of_zeros(size: int) -> bytes:
    """A gzip body of ``size`` zero bytes, built 1 MiB at a time (the test never holds ``size`` bytes)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    parts = [packer.compress(block[:min(len(block), size - done)]) for done in range(0, size, len(block))]
    return b"".join([*parts, packer.flush()])


def rows(engine: Engine) -> int:
    client = engine.client()
    try:
        return int(client.command("SELECT count() FROM imtel.request_logs"))
    finally:
        client.close()


def test_the_token_is_generated_private(engine: Engine) -> None:
    assert engine.token_file.stat().st_mode & 0o777 == 0o600 and len(engine.token) >= 40


def test_no_credentials_no_answer_and_get_cannot_write(engine: Engine) -> None:
    drop = "/?query=DROP%20TABLE%20imtel.request_logs"
    status, headers, body = request(engine, drop, auth=False)
    assert status == 401 and headers["x-clickhouse-exception-code"] == "516", body
    status, headers, body = request(engine, drop)  # authenticated, but over GET
    assert status == 403 and headers["x-clickhouse-exception-code"] == "164", body
    status, _, body = request(engine, "/?query=SELECT%20count()%20FROM%20imtel.request_logs", auth=False)
    assert status == 401 and b"3" not in body
    wrong = f"\nX-ClickHouse-User: default\nX-ClickHouse-Key: {engine.token[:-1]}x"
    status, _, _ = request(engine, "/?query=SELECT%201", auth=False, extra=wrong)
    assert status == 401
    assert rows(engine) == 3


def test_a_body_over_the_cap_is_refused_unread(engine: Engine) -> None:
    """Content-Length 1 GiB and not one body byte sent: the answer comes anyway (413), so it was not read."""
    before = engine.rss_mb()
    status, headers, body = exchange(engine.port, f"POST / HTTP/1.1\nHost: localhost\nX-ClickHouse-User: default\n"
                                                  f"X-ClickHouse-Key: {engine.token}\nContent-Length: {1 << 30}")
    assert status == 413 and headers["x-clickhouse-exception-code"] == "307", body
    assert headers.get("connection") == "close"
    assert engine.rss_mb() - before < 20


def test_a_gzip_bomb_before_authentication_costs_nothing(engine: Engine) -> None:
    bomb = gzip_of_zeros(200 << 20)  # ~200 KB that would grow to 200 MB
    before = engine.rss_mb()
    status, _, _ = request(engine, "/", auth=False, method="POST", extra="\nContent-Encoding: gzip", body=bomb)
    assert status == 401
    assert engine.rss_mb() - before < 20
    # authenticated, the decompressed size is capped as it is produced
    huge = gzip_of_zeros((DECODED_MB + 1) << 20)
    status, headers, _ = request(engine, "/?query=INSERT%20INTO%20imtel.request_logs%20FORMAT%20RowBinary",
                                 method="POST", extra="\nContent-Encoding: gzip", body=huge)
    assert status == 413 and headers["x-clickhouse-exception-code"] == "307"
    assert rows(engine) == 3


def test_a_slow_client_is_cut_off(engine: Engine) -> None:
    """Slowloris: a request head that grows by one byte a second is closed at ``header_timeout``."""
    limit = Limits().header_timeout
    with socket.create_connection(("127.0.0.1", engine.port), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /?query=SELECT%201 HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        closed_after = None
        while time.monotonic() - start < limit + 10:
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable and sock.recv(4096) == b"":
                closed_after = time.monotonic() - start
                break
            try:
                sock.sendall(b"a")
            except OSError:
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None and closed_after <= limit + 2, closed_after


def test_foreign_hosts_and_web_pages_are_refused(engine: Engine) -> None:
    auth = f"X-ClickHouse-User: default\nX-ClickHouse-Key: {engine.token}\nContent-Length: 0"
    for host in ("evil.example", "evil.example:8123", "localhost.evil.example", "10.1.2.3"):
        status, headers, _ = exchange(engine.port, f"GET /?query=SELECT%201 HTTP/1.1\nHost: {host}\n{auth}")
        assert status == 403 and headers["x-clickhouse-exception-code"] == "497", host
    page = "\nOrigin: http://evil.example\nContent-Type: text/plain"
    status, _, _ = request(engine, "/?query=SELECT%201", method="POST", extra=page)
    assert status == 403
    status, _, body = request(engine, "/?query=SELECT%201")
    assert status == 200 and body == b"1\n"


def test_an_injected_header_in_query_id_is_refused(engine: Engine) -> None:
    for target in ("/?query=SELECT%201&query_id=q%0D%0AX-Injected:%201",
                   "/?query=SELECT%201&default_format=TSV%0D%0AX-Injected:%201"):
        status, headers, _ = request(engine, target)
        assert status == 400 and "x-injected" not in headers, headers
        assert "\r" not in headers.get("x-clickhouse-query-id", "")
    status, headers, _ = request(engine, "/?query=SELECT%201&query_id=run-42.a:b_c")
    assert status == 200 and headers["x-clickhouse-query-id"] == "run-42.a:b_c"


@pytest.mark.parametrize("sql", ["SELECT * FROM file('/etc/passwd', 'LineAsString')", "SELECT file('/etc/passwd')",
                                 "INSERT INTO imtel.request_logs FROM INFILE '/etc/hostname' FORMAT TSV",
                                 "SELECT 1 INTO OUTFILE '/tmp/imtel-attack.txt'",
                                 "SELECT * FROM url('http://127.0.0.1:1/', 'TSV', 'a String')",
                                 "SELECT 1; DROP TABLE imtel.request_logs"])
def test_sql_that_reaches_outside_the_store_is_refused(engine: Engine, sql: str) -> None:
    client = engine.client()
    try:
        with pytest.raises(Exception, match="Code: 497") as err:
            client.command(sql)
        assert "root:" not in str(err.value)
    finally:
        client.close()
    assert rows(engine) == 3


def test_a_non_loopback_bind_without_tls_is_an_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "engine", "--store", str(tmp_path / "s"),
                           "--host", "0.0.0.0", "--port", "0"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--tls-cert" in proc.stderr, proc.stderr


def test_tls_serves_https_with_the_password_and_refuses_plain_http(tmp_path: Path) -> None:
    """With ``--tls-cert/--tls-key`` (a self-signed pair made by openssl here) the engine speaks HTTPS:
    clickhouse-connect verifies it against the CA and logs in; a plain-HTTP request gets no answer."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    (tmp_path / "pw").write_text("Tls-test-password-0815")
    (tmp_path / "pw").chmod(0o600)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "engine", "--store", str(tmp_path / "store"),
                             "--port", "0", "--ready-file", str(ready), "--password-file", str(tmp_path / "pw"),
                             "--tls-cert", str(cert), "--tls-key", str(key)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        port = int(json.loads(ready.read_text())["data"][0])
        client = clickhouse_connect.get_client(host="localhost", port=port, username="default", secure=True,
                                               password="Tls-test-password-0815", ca_cert=str(cert))
        assert client.query("SELECT 42").result_rows == [(42,)]
        client.close()
        with pytest.raises(Exception):  # noqa: B017 - any failure: the server speaks TLS only
            clickhouse_connect.get_client(host="127.0.0.1", port=port, username="default",
                                          password="Tls-test-password-0815", connect_timeout=3,
                                          send_receive_timeout=5).query("SELECT 1")
    finally:
        proc.terminate()
        proc.wait(15)
