"""``imtel engine`` as a real process, read and written by the two clients it serves: clickhouse-connect
(the pipeline's) and clickhouse-go's request shapes (the OpenTelemetry Collector's exporter).

clickhouse-connect must read Native and Arrow answers exactly as before: it probes
``client_protocol_version=54405`` and, finding no BlockInfo, reads revision-0 Native (protocol 0).
clickhouse-go sends ``client_protocol_version=54483`` and reads the revision >= 54454 layout; it sends
its ``INSERT`` over several lines in the ``query`` parameter with the Native data chunked in the body;
its default ``compress=1`` is refused with one ClickHouse error line, the body unread.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import urllib.parse
from collections.abc import Iterator

import pytest

from pipeline.dev.engine.native import BLOCK_INFO
from tests.support.engine_process import Engine, running_engine
from tests.support.raw_http import exchange as raw_exchange

pytestmark = pytest.mark.integration
ROWS = 70_000  # more than one Native block of chDB's


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with running_engine(tmp_path_factory.mktemp("engine-clients")) as running:
        client = running.client()
        client.command("CREATE DATABASE IF NOT EXISTS otel")
        client.command("CREATE TABLE otel.t (n UInt64, s String, a Array(String), m Map(String, UInt8), "
                       "ns Nullable(String), lc LowCardinality(String), ts DateTime64(3, 'UTC')) "
                       "ENGINE = MergeTree ORDER BY n")
        client.command(f"INSERT INTO otel.t SELECT number, toString(number), [toString(number % 3)], "
                       f"map('k', number % 7), if(number % 2 = 0, NULL, 'x'), toString(number % 5), "
                       f"toDateTime64(number, 3, 'UTC') FROM numbers({ROWS})")
        client.close()
        yield running


def exchange(engine: Engine, method: str, params: dict[str, str], body: bytes = b"", chunked: bool = False,
             ) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request as clickhouse-go sends it (basic auth headers, optional chunked body)."""
    target = "/?" + urllib.parse.urlencode(params)
    head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{engine.port}", "X-ClickHouse-User: default",
            f"X-ClickHouse-Key: {engine.token}"]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]) if part) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    return raw_exchange(engine.port, "\n".join(head), payload, timeout=30)


def test_clickhouse_connect_reads_native_and_arrow_as_before(engine: Engine) -> None:
    client = engine.client()
    try:
        assert client.protocol_version == 0  # its probe for BlockInfo (revision 54405) finds revision-0 Native
        result = client.query("SELECT n, s, a, m, ns, lc, ts FROM otel.t ORDER BY n")
        assert result.row_count == ROWS
        assert result.result_rows[1] == (1, "1", ["1"], {"k": 1}, "x", "1",
                                         dt.datetime(1970, 1, 1, 0, 0, 1))
        assert result.result_rows[-1][0] == ROWS - 1 and result.result_rows[0][4] is None
        frame = client.query_df("SELECT n, s FROM otel.t WHERE n < 10 ORDER BY n")
        assert list(frame["s"]) == [str(i) for i in range(10)]
        table = client.query_arrow("SELECT n, lc FROM otel.t ORDER BY n")
        assert table.num_rows == ROWS and table.column("n").to_pylist()[:3] == [0, 1, 2]
        client.insert("otel.t", [[ROWS, "z", [], {}, None, "q", dt.datetime(2024, 1, 1)]],
                      column_names=["n", "s", "a", "m", "ns", "lc", "ts"])
        assert client.command("SELECT count() FROM otel.t") == ROWS + 1
        client.command(f"DELETE FROM otel.t WHERE n = {ROWS}")
    finally:
        client.close()


def test_native_answers_follow_client_protocol_version(engine: Engine) -> None:
    sql = "SELECT n, s, a, m, ns, lc, ts FROM otel.t ORDER BY n"
    plain = exchange(engine, "GET", {"query": sql, "default_format": "Native"})
    new = exchange(engine, "GET", {"query": sql, "default_format": "Native", "client_protocol_version": "54483"})
    assert plain[0] == new[0] == 200 and new[1]["x-clickhouse-format"] == "Native"
    assert not plain[2].startswith(BLOCK_INFO) and new[2].startswith(BLOCK_INFO)
    blocks = new[2].count(BLOCK_INFO + b"\x07")
    assert blocks >= 2 and len(new[2]) == len(plain[2]) + blocks * (len(BLOCK_INFO) + 7)
    hello = exchange(engine, "POST", {"query": "SELECT displayName(), version(), revision(), timezone()",
                                      "default_format": "Native", "client_protocol_version": "54483"})
    assert hello[0] == 200 and hello[2].startswith(BLOCK_INFO + b"\x04\x01")
    unsupported = exchange(engine, "GET", {"query": "SELECT 1::Variant(UInt8, String) AS v",
                                           "default_format": "Native", "client_protocol_version": "54483"})
    assert unsupported[0] == 500 and unsupported[1]["x-clickhouse-exception-code"] == "48"
    assert b"column 'v'" in unsupported[2]


def test_the_exporters_multi_line_insert_with_a_chunked_body(engine: Engine) -> None:
    status, _, data = exchange(engine, "GET", {
        "query": "SELECT 9000000 AS n, 'otel' AS s, ['a'] AS a FROM numbers(3) FORMAT Native"})
    assert status == 200
    query = 'INSERT INTO "otel"."t" (\n    n,\n    s,\n    a\n) FORMAT Native'
    status, headers, body = exchange(engine, "POST", {"query": query, "database": "otel",
                                                      "client_protocol_version": "54483"}, data, chunked=True)
    assert status == 200, body
    assert json.loads(headers["x-clickhouse-summary"])["written_rows"] == "3"
    status, _, body = exchange(engine, "GET", {"query": "SELECT count(), any(s) FROM otel.t WHERE n = 9000000"})
    assert (status, body) == (200, b"3\totel\n")


def test_native_block_compression_is_refused_before_the_body(engine: Engine) -> None:
    for params in ({"compress": "1"}, {"decompress": "1"}):
        status, headers, body = exchange(engine, "POST", {"query": "INSERT INTO otel.t (n) FORMAT Native", **params},
                                         b"\x82" + b"\x00" * 100)
        assert status == 500 and headers["x-clickhouse-exception-code"] == "48", body
        assert body.startswith(b"Code: 48. DB::Exception: ") and body.count(b"\n") == 1
    unauthenticated = socket.create_connection(("127.0.0.1", engine.port), timeout=10)
    with unauthenticated:
        unauthenticated.sendall(b"GET /?compress=1&query=SELECT%201 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b" 401 " in unauthenticated.recv(65536).split(b"\r\n")[0] + b" "  # the password still comes first


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_the_pipelines_store_inserts_dictionaries_under_each_compression(engine: Engine, compression: str) -> None:
    """The worker's inserts (``IMTEL_CLICKHOUSE_COMPRESSION``): LowCardinality columns go as Arrow
    dictionaries (found in system.columns), compressed or not, and read back as the same strings."""
    import pyarrow as pa

    from pipeline.monitoring.metrics import Metrics
    from pipeline.sinks.clickhouse import ClickHouseStore, compress_option, connect

    client = connect(f"http://127.0.0.1:{engine.port}", "default", engine.token, compress=compress_option(compression))
    try:
        client.command("CREATE TABLE IF NOT EXISTS otel.d (n UInt64, lc LowCardinality(String), s String) "
                       "ENGINE = MergeTree ORDER BY n")
        store = ClickHouseStore(client, "otel", Metrics())
        assert store.low_cardinality()["d"] == frozenset({"lc"})
        base = {"lz4": 0, "zstd": 10_000, "none": 20_000}[compression]
        names = [f"iface-{i % 7}" for i in range(5_000)]
        store.insert_arrow("d", pa.table({"n": pa.array(range(base, base + 5_000), pa.uint64()),
                                          "lc": pa.array(names), "s": pa.array(names)}))
        rows = client.query(f"SELECT lc, s FROM otel.d WHERE n >= {base} AND n < {base + 5_000} ORDER BY n").result_rows
        assert [r[0] for r in rows] == names and [r[1] for r in rows] == names
    finally:
        client.close()


def test_an_inserts_settings_apply_to_it_alone(engine: Engine) -> None:
    """A data insert's settings go into its own statement (``store.Engine.execute``), not the session:
    the deduplication token deduplicates, the next request does not inherit it nor a setting the
    insert repeated from the session, and a setting name that is not an identifier is refused."""
    client = engine.client()
    try:
        client.command("CREATE TABLE IF NOT EXISTS otel.tok (n UInt64) ENGINE = MergeTree ORDER BY n "
                       "SETTINGS non_replicated_deduplication_window = 100")
        for token, first in (("a", 1), ("a", 1), ("b", 1), ("c", 2)):
            client.raw_insert("otel.tok", ["n"], f"{first}\n{first + 1}\n".encode(),
                              {"insert_deduplication_token": token}, "TSV")
        assert client.command("SELECT count() FROM otel.tok") == 6  # "a" once, then "b" and "c"
        assert client.command("SELECT getSetting('insert_deduplication_token')") == ""
        default_block = client.command("SELECT getSetting('max_block_size')")
        # a setting the session holds (set by a query) and the insert repeats: kept for the insert
        assert client.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 1000}) == 1000
        client.raw_insert("otel.tok", ["n"], b"9\n", {"max_block_size": 1000, "insert_deduplication_token": "d"}, "TSV")
        assert client.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 1000}) == 1000
        assert client.command("SELECT count() FROM otel.tok WHERE n = 9") == 1
        assert client.command("SELECT getSetting('max_block_size')") == default_block != 1000  # a request without it
    finally:
        client.close()
    # a value is a quoted literal in the statement: quotes, backslashes and comments stay in the token
    hostile = "x\\' , max_block_size = '1' -- \n'; DROP TABLE otel.tok"
    for _ in range(2):
        status, _, body = exchange(engine, "POST", {"query": "INSERT INTO otel.tok (n) FORMAT TSV",
                                                    "insert_deduplication_token": hostile}, b"7\n")
        assert status == 200, body
    client = engine.client()
    try:
        assert client.command("SELECT count() FROM otel.tok WHERE n = 7") == 1  # deduplicated by that exact token
    finally:
        client.close()
    status, _, body = exchange(engine, "POST", {"query": "INSERT INTO otel.tok (n) FORMAT TSV",
                                                "bad name": "1"}, b"5\n")
    assert status != 200 and body.startswith(b"Code: 115. DB::Exception: Unknown setting 'bad name'"), body
    status, _, body = exchange(engine, "GET", {"query": "SELECT count() FROM otel.tok WHERE n = 5"})
    assert (status, body) == (200, b"0\n")
