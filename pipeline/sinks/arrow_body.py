"""The body of an Arrow insert: a table as an Arrow IPC file, written into one buffer kept between inserts.

Why not clickhouse-connect's own ``insert_arrow``: it writes each body into a fresh, growing
``BufferOutputStream``. Arrow grows that buffer by reallocating it, and the system allocator cannot
resize an aligned block in place, so every growth step copies the body so far into new pages the
kernel must zero first. On the batched workload over HTTP that was ~12% of the worker's CPU
(``perf record`` on the worker: ``clear_page_erms`` 7.7%, the realloc copies most of its 6.7% of
``memmove``; ``perf record -e page-faults --call-graph dwarf``: 76% of its page faults came from
``BufferOutputStream::Reserve``). Written into a buffer sized once from an upper bound and reused,
the same body costs no page fault and no copy (0.185 -> 0.121 CPU-s per million rows for a
50k-row lz4 body on one thread, measured alone; nothing else changes: same format, same bytes).

The caller serialises the use of one ``BodyWriter`` (the store's lock) and is done with a body
before it asks for the next: the returned view is into the kept buffer.
"""

from __future__ import annotations

import pyarrow as pa

# A body larger than this gets a buffer of its own, dropped after the insert, so that one unusual
# batch (long exception texts) does not keep its size resident for the life of the process. A batch of
# 200k rows of the batched request-log workload is ~9 MB with lz4 (its bound ~21 MB), ~20 MB uncompressed.
KEEP_MAX_BYTES = 32 * 1024 * 1024

# Per buffer of the body: 8 bytes of uncompressed length when compressed, padding to 8 (64 at most),
# and an LZ4 or ZSTD frame's header, footer and block headers; per column: its field node, buffer
# entries and schema entry in the flatbuffer metadata (twice: in the message and in the file footer).
_PER_BUFFER = 8 + 64 + 64
_PER_FIELD = 512
_FIXED = 64 * 1024  # magic, message framing, schema and footer envelopes

# LZ4 frame level of the body's buffers: negative levels are LZ4's "fast acceleration" (``lz4 --fast=8``),
# which skips ahead faster through data it finds no match in. On a 50k-row body of the batched workload,
# measured alone on one thread: level 1 (Arrow's default) 0.133 CPU-s per million rows for 46.7 bytes a
# row, -8 0.108 for 48.7 (+4% bytes, -19% CPU), -32 0.086 for 62.2. The worker is CPU-bound; 4% more
# bytes on the wire to ClickHouse is the cheaper side of that trade. Decompression does not depend on it.
LZ4_LEVEL = -8


def codec(compression: str | None) -> pa.Codec | None:
    """The codec of a body's buffers for ``IMTEL_CLICKHOUSE_COMPRESSION`` (lz4 at ``LZ4_LEVEL``, zstd),
    None for anything else (chDB, ``none``)."""
    if compression == "lz4":
        return pa.Codec("lz4", compression_level=LZ4_LEVEL)
    return pa.Codec("zstd") if compression == "zstd" else None


def body_bound(data: pa.Table) -> int:
    """An upper bound of ``data``'s Arrow IPC file size, compressed or not.

    ``get_total_buffer_size`` counts every buffer the table references in full (a slice's whole
    parent buffers, each dictionary once per chunk), which is never less than what the writer emits
    for them; compression may expand incompressible data by under 1/128 (LZ4: 1/255, ZSTD: far
    less) plus per-frame overhead, counted per buffer."""
    total = data.get_total_buffer_size()
    buffers = sum(len(chunk.buffers()) + (len(chunk.dictionary.buffers()) if pa.types.is_dictionary(chunk.type)
                                          else 0)
                  for column in data.columns for chunk in column.chunks)
    return total + total // 128 + _PER_BUFFER * buffers + _PER_FIELD * data.num_columns + _FIXED


class BodyWriter:
    """Writes Arrow IPC file bodies (ClickHouse's ``Arrow`` input format) into a kept buffer."""

    def __init__(self, compression: str | None = None, keep_max: int = KEEP_MAX_BYTES) -> None:
        # One thread: compressing a body's buffers on Arrow's pool saved wall time (0.083 vs 0.121 s
        # per million rows alone) but cost ~7% more CPU in hand-offs, and the engine needs the cores.
        self.options = pa.ipc.IpcWriteOptions(compression=codec(compression), use_threads=False)
        self.keep_max = keep_max
        self._kept: pa.Buffer | None = None

    @property
    def kept_bytes(self) -> int:
        """The size of the buffer kept between inserts (0 before the first)."""
        return self._kept.size if self._kept is not None else 0

    def write(self, data: pa.Table) -> memoryview:
        """``data`` as one Arrow IPC file. The view is valid until the next ``write``."""
        bound = body_bound(data)
        if bound > self.keep_max:
            target = pa.allocate_buffer(bound)
        else:
            if self._kept is None or self._kept.size < bound:
                self._kept = None  # let the old buffer go before the new one is allocated
                self._kept = pa.allocate_buffer(bound)
            target = self._kept
        sink = pa.FixedSizeBufferWriter(target)
        with pa.ipc.new_file(sink, data.schema, options=self.options) as writer:
            writer.write_table(data)
        return memoryview(target)[:sink.tell()]
