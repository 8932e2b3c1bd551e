"""A flush's dictionary columns go to the insert body with int8 indices when they fit (``ingest/buffer.py``)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ingest.buffer import NARROW_INDEX, narrow_indices
from pipeline.sinks.arrow_body import BodyWriter

# each chunk: a list of values (None: a null), drawn from a pool whose size decides the dictionary's
chunks = st.integers(1, 200).flatmap(lambda pool: st.lists(
    st.lists(st.one_of(st.integers(0, pool - 1).map(lambda i: f"v{i}"), st.none() if pool % 7 == 0 else st.nothing()),
             max_size=300),
    min_size=1, max_size=5))


def dictionary_table(parts: list[list[str | None]]) -> pa.Table:
    """One dictionary column whose chunks each bring their own dictionary (as the decoder's takes do),
    unified as ``buffer._table`` unifies them, and a plain column beside it."""
    typed = [pc.dictionary_encode(pa.array(p, pa.string())).cast(pa.dictionary(pa.int32(), pa.string()))
             for p in parts]
    plain = [pa.array(range(len(p)), pa.int64()) for p in parts]
    batches = [pa.record_batch([d, n], names=["d", "n"]) for d, n in zip(typed, plain, strict=True)]
    return pa.Table.from_batches(batches).unify_dictionaries()


@settings(max_examples=200, deadline=None)
@given(chunks)
def test_values_are_kept_and_indices_narrow_exactly_when_the_dictionary_fits(parts: list[list[str | None]]) -> None:
    table = dictionary_table(parts)
    narrowed = narrow_indices(table)
    assert narrowed.to_pylist() == table.to_pylist()
    assert narrowed.schema.field("n").type == pa.int64()
    values = {v for p in parts for v in p if v is not None}
    has_nulls = any(v is None for p in parts for v in p)
    fits = len(values) <= 127 and not has_nulls
    assert narrowed.schema.field("d").type.index_type == (NARROW_INDEX if fits else pa.int32())
    # the body of the narrowed table reads back to the same values (one dictionary for all batches)
    body = BodyWriter("lz4").write(narrowed)
    assert pa.ipc.open_file(pa.py_buffer(bytes(body))).read_all().to_pylist() == table.to_pylist()


def test_an_empty_or_already_narrow_table_is_unchanged() -> None:
    empty = pa.table({"d": pa.chunked_array([], pa.dictionary(pa.int32(), pa.string()))})
    assert narrow_indices(empty).equals(empty)
    narrow = pa.table({"d": pc.dictionary_encode(pa.array(["a", "b"])).cast(pa.dictionary(NARROW_INDEX, pa.string()))})
    assert narrow_indices(narrow).equals(narrow)
