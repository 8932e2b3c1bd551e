"""The native request-log decoder (``_fastlog.c``) seen from Python: its buffers as Arrow columns.

The hot path hands every request-log message to ``ColumnDecoder.add`` first. The native code takes
the common case (valid records, strings without escapes, integers) straight into column buffers, with
no Python object per record; a message it does not take (returns -1) goes through the msgspec
decoder as before, so every rule and every dead-letter reason stays where it was. Of the rules
msgspec's loose struct leaves to a per-batch check, the native code applies the ``interface``
pattern itself (``records.INTERFACE_PATTERN_RE2``, a byte class: a message with a name outside it is
not taken); rows of a taken message that another per-batch rule refuses (the event-time window, an
invalid IP) are not judged here: the processor sends their whole message back through msgspec.

When the extension is not built (no C compiler where the package was installed), ``available`` is
False and the msgspec path does everything, only slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

try:
    from pipeline.ingest._fastlog import LogColumns
except ImportError:  # pragma: no cover - depends on the install, see ``available``
    LogColumns = None

available = LogColumns is not None
STRING_COLUMNS = ("interface", "client_ip", "region", "platform", "request_id", "exception")
# Interned by the native code (``INTERNED`` in _fastlog.c): Arrow dictionaries, LowCardinality in ClickHouse.
DICTIONARY_COLUMNS = ("interface", "region", "platform")


@dataclass(frozen=True, slots=True)
class Columns:
    """Request logs of many messages, column by column (row order = order of ``add``)."""

    request_time: np.ndarray  # int64 epoch ms
    sdk_app_id: pa.Array
    latency_ms: pa.Array
    error_code: pa.Array
    interface: pa.DictionaryArray  # int32 indices into this take's distinct names
    client_ip: pa.Array
    region: pa.DictionaryArray
    platform: pa.DictionaryArray
    request_id: pa.Array
    exception: pa.Array  # "" where the record had none (as the msgspec path stores it)
    client_net: pa.Array  # the minimised address where ``net_done``, else ""
    net_done: np.ndarray  # bool: an address minimised natively (prefix / drop mode: IPv4 dotted quads, IPv6)

    def __len__(self) -> int:
        return len(self.request_time)

    def filter(self, mask: np.ndarray) -> Columns:
        """The rows where ``mask`` is true. The dictionaries keep only the values of those rows: the
        rows left out go back through msgspec, and a value of a dead-lettered record must not travel
        to the server as an unused dictionary entry (a rare path: a per-batch rule refused a row)."""
        keep = pa.array(mask)
        return Columns(request_time=self.request_time[mask], net_done=self.net_done[mask],
                       **{f: getattr(self, f).filter(keep) for f in _ARROW_FIELDS},
                       **{f: pc.dictionary_encode(getattr(self, f).filter(keep).dictionary_decode())
                          for f in DICTIONARY_COLUMNS})


_ARROW_FIELDS = ("sdk_app_id", "latency_ms", "error_code", *(c for c in STRING_COLUMNS if c not in DICTIONARY_COLUMNS),
                 "client_net")


class ColumnDecoder:
    """Appends request-log messages as columns; ``take`` returns and clears what was appended.

    One owner: the processor, on the event loop's thread. ``add`` lets go of the GIL while it parses
    a batch, so two threads sharing one decoder would interleave its buffers."""

    def __init__(self, pii_mode: str = "") -> None:
        """``pii_mode`` (``prefix``/``drop``): minimise IPv4 (dotted quads) and IPv6 addresses on the way, the
        same text ``privacy.prefix``/``drop`` give; other modes leave ``client_net`` to the caller."""
        if LogColumns is None:
            raise RuntimeError("the native request-log decoder is not built")
        self._native = LogColumns(pii_mode)
        self.add = self._native.add  # add(message: bytes) -> records appended, or -1 (none: not taken)

    @property
    def rows(self) -> int:
        return int(self._native.rows)

    def take(self) -> Columns:
        rows, times, apps, latencies, codes, strings, (net_offsets, net_data, net_done) = self._native.take()
        texts = {name: _text(rows, *buffers) if len(buffers) == 2 else _dictionary(rows, *buffers)
                 for name, buffers in zip(STRING_COLUMNS, strings, strict=True)}
        return Columns(request_time=np.frombuffer(times, np.int64), sdk_app_id=pa.array(np.frombuffer(apps, np.uint32)),
                       latency_ms=pa.array(np.frombuffer(latencies, np.uint32)),
                       error_code=pa.array(np.frombuffer(codes, np.int32)), **texts,
                       client_net=_text(rows, net_offsets, net_data), net_done=np.frombuffer(net_done, np.bool_))


def _text(rows: int, offsets: bytes, data: bytes) -> pa.Array:
    return pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _dictionary(rows: int, offsets: bytes, data: bytes, index: bytes) -> pa.DictionaryArray:
    """An interned column: its distinct values (in order of first appearance) and an index per row."""
    values = _text(len(offsets) // 4 - 1, offsets, data)
    indices = pa.Array.from_buffers(pa.int32(), rows, [None, pa.py_buffer(index)])
    return pa.DictionaryArray.from_arrays(indices, values)
