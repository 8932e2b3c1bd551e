"""The insert body writer (``sinks/arrow_body.py``): the bound holds, the bytes read back, the buffer is reused."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.sinks.arrow_body import BodyWriter, body_bound, codec

CODECS = [None, "lz4", "zstd"]


def read(view: memoryview) -> pa.Table:
    return pa.ipc.open_file(pa.py_buffer(bytes(view))).read_all()


def reference(data: pa.Table, compression: str | None) -> bytes:
    """What clickhouse-connect's ``arrow_buffer`` would send (a growing stream, same options but LZ4's level)."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=codec(compression))
    with pa.ipc.new_file(sink, data.schema, options=options) as writer:
        writer.write_table(data)
    return sink.getvalue().to_pybytes()


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
tables = st.builds(
    lambda ints, strs, random_len, dict_strs, start, codec: (ints, strs, random_len, dict_strs, start, codec),
    st.lists(st.integers(0, 2**63 - 1), min_size=0, max_size=400),
    st.lists(st.one_of(st.none(), texts), min_size=0, max_size=400),
    st.integers(0, 4096),
    st.lists(st.sampled_from(["v4/openim/sendmsg", "v4/group_open_http_svc/get_group_info", "x"]), max_size=400),
    st.integers(0, 50),
    st.sampled_from(CODECS),
)


def build(ints: list[int], strs: list[str | None], random_len: int, dict_strs: list[str], start: int) -> pa.Table:
    n = min(len(ints), len(strs), len(dict_strs)) or 0
    noise = [os.urandom(random_len // max(1, n) + 1).hex() for _ in range(n)]  # incompressible
    table = pa.table({
        "n": pa.array(ints[:n], pa.uint64()),
        "s": pa.array(strs[:n], pa.string()),
        "noise": pa.array(noise, pa.string()),
        "d": pc.dictionary_encode(pa.array(dict_strs[:n], pa.string())),
    })
    return table.slice(min(start, n))  # slices reference their whole parent buffers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables)
def test_body_fits_its_bound_and_reads_back_as_written(case: tuple) -> None:
    *parts, codec = case
    data = build(*parts)
    writer = BodyWriter(codec)
    view = writer.write(data)
    assert len(view) <= body_bound(data)
    assert read(view).equals(data.combine_chunks())
    assert bytes(view) == reference(data, codec)  # the same bytes clickhouse-connect would have sent


@pytest.mark.parametrize("codec", CODECS)
def test_incompressible_chunked_data_fits_its_bound(codec: str | None) -> None:
    chunks = [pa.record_batch({"b": pa.array([os.urandom(997) for _ in range(300)], pa.binary())}) for _ in range(5)]
    data = pa.Table.from_batches(chunks)
    view = BodyWriter(codec).write(data)
    assert len(view) <= body_bound(data)
    assert read(view).equals(data)


def test_the_buffer_is_kept_and_grows_only_when_a_body_needs_more() -> None:
    writer = BodyWriter("lz4")
    small = pa.table({"n": pa.array(range(1_000), pa.uint64())})
    large = pa.table({"n": pa.array(range(100_000), pa.uint64())})
    writer.write(small)
    first = writer.kept_bytes
    assert first >= body_bound(small)
    writer.write(small)
    assert writer.kept_bytes == first
    assert read(writer.write(large)).equals(large)
    grown = writer.kept_bytes
    assert grown >= body_bound(large) > first
    assert read(writer.write(small)).equals(small)
    assert writer.kept_bytes == grown  # a smaller body reuses the larger buffer


def test_a_body_over_the_keep_limit_gets_a_buffer_of_its_own() -> None:
    writer = BodyWriter(None, keep_max=100_000)
    small = pa.table({"n": pa.array(range(100), pa.uint64())})
    writer.write(small)
    kept = writer.kept_bytes
    huge = pa.table({"s": pa.array(["x" * 1000] * 1000)})
    assert body_bound(huge) > 100_000
    assert read(writer.write(huge)).equals(huge)
    assert writer.kept_bytes == kept  # not kept for the life of the process
