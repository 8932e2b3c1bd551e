"""Replayed dead letters on the worker side: how a replayed record keeps its original identity.

``imtel deadletters replay`` (``pipeline/ops/deadletters.py``) re-produces a dead letter's payload with
two headers:

- ``imtel-replay-of``: the original source coordinates ``"<src_topic_id>/<partition>/<offset>/<index>"``
  (index -1: the letter holds the whole original message);
- ``imtel-replay-count``: how many times this record has been replayed, this time included (1, 2, ...).

Admission gives every record of such a message its *original* coordinates (``Replay.index_of``): the
record's one identity however often it is replayed. Rows are stored with them in src_*; a record
that fails again is dead-lettered with them as its ``imtel-source-*`` headers plus
``imtel-replay-count``, and the ledger row carries ``replay_count``. Before a buffer holding replays is
written, the writer drops replayed rows whose original coordinates are already stored (one lookup
per table, see ``stored_keys``) or repeated inside the buffer, and replayed dead letters already in
the ledger with the same replay count: a replay is stored exactly once, and re-reading it after a
crash is idempotent. The crash recovery (``Writer.recover``) is unaffected: it looks for rows past
the committed offset of the partition being consumed, and replayed rows carry old coordinates,
already committed on their original partition.

The worker never produces replays itself: only the CLI does, on an operator's command.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPLAY_OF = "imtel-replay-of"
REPLAY_COUNT = "imtel-replay-count"
MAX_COUNT = 255  # the ledger's replay_count is a UInt8

Key = tuple[str, int, int, int]  # (src_topic_id, src_partition, src_offset, src_index)


@dataclass(frozen=True, slots=True)
class Replay:
    """The original coordinates and the replay count of a replayed message."""

    topic_id: str
    partition: int
    offset: int
    index: int  # -1: the letter held the whole original message
    count: int

    def index_of(self, position: int) -> int:
        """The original index of the record at ``position`` in the replayed message (-1: the whole
        message). A one-record letter's record keeps its index; a whole-message letter's records keep
        their positions, which are their original indices (the same bytes)."""
        if self.index < 0:
            return position
        return self.index + max(position, 0)

    def coordinates(self) -> str:
        return format_coordinates(self.topic_id, self.partition, self.offset, self.index)


def format_coordinates(topic_id: str, partition: int, offset: int, index: int) -> str:
    return f"{topic_id}/{partition}/{offset}/{index}"


def parse_coordinates(text: str) -> tuple[str, int, int, int]:
    """``"<topic_id>/<partition>/<offset>/<index>"`` -> its parts; ValueError when malformed. A topic
    id (or name) holds no ``/``, but the split is from the right so it would not matter."""
    parts = text.rsplit("/", 3)
    if len(parts) != 4 or not parts[0]:
        raise ValueError("coordinates are TOPIC/PARTITION/OFFSET/INDEX")
    partition, offset, index = int(parts[1]), int(parts[2]), int(parts[3])
    if not (0 <= partition <= 65535 and offset >= 0 and -1 <= index <= 2**31 - 1):
        raise ValueError("coordinates out of range")
    return parts[0], partition, offset, index


def header(headers: Sequence[tuple[str, Any]] | None, name: str) -> bytes | None:
    """The value of the last header ``name`` (bytes), or None."""
    found: bytes | None = None
    for k, v in headers or ():
        if k == name:
            found = v.encode() if isinstance(v, str) else (v if v is not None else b"")
    return found


def of(headers: Sequence[tuple[str, Any]] | None) -> Replay | None:
    """The replay a message's headers announce, or None (no header, or a malformed one: then the
    message is an ordinary one, its records get its own coordinates)."""
    if not headers:
        return None
    raw = header(headers, REPLAY_OF)
    if raw is None:
        return None
    try:
        topic_id, partition, offset, index = parse_coordinates(raw.decode("ascii"))
        count = int(header(headers, REPLAY_COUNT) or b"1")
    except (ValueError, UnicodeDecodeError):
        return None
    return Replay(topic_id, partition, offset, index, min(max(count, 1), MAX_COUNT))


def key_columns(table: pa.Table) -> tuple[list[str], list[int], list[int], list[int]]:
    return (table.column("src_topic_id").to_pylist(), table.column("src_partition").to_pylist(),
            table.column("src_offset").to_pylist(), table.column("src_index").to_pylist())


def drop_mask(table: pa.Table, replayed: set[Key], stored: Collection[tuple[Any, ...]]) -> np.ndarray:
    """Rows of ``table`` to drop: a replayed row (its key in ``replayed``) whose key is already stored,
    or already taken by an earlier row of the table. Only candidate rows (topic id and offset of a
    replayed key) are looked at one by one: replays are rare, buffers large."""
    drop = np.zeros(table.num_rows, dtype=bool)
    if not replayed or table.num_rows == 0:
        return drop
    ids = pa.array(sorted({k[0] for k in replayed}), pa.string())
    offsets = pa.array(sorted({k[2] for k in replayed}), pa.uint64())
    candidate = pc.and_(pc.is_in(table.column("src_topic_id"), value_set=ids),
                        pc.is_in(table.column("src_offset"), value_set=offsets))
    rows = np.flatnonzero(candidate.to_numpy(zero_copy_only=False))
    if len(rows) == 0:
        return drop
    sub = table.take(pa.array(rows))
    seen: set[Key] = set()
    for row, key in zip(rows.tolist(), zip(*key_columns(sub), strict=True), strict=True):
        k: Key = (str(key[0]), int(key[1]), int(key[2]), int(key[3]))
        if k in replayed and (k in stored or k in seen):
            drop[row] = True
        seen.add(k)
    return drop


def split_keys(keys: Iterable[Key]) -> dict[str, list[Any]]:
    """Query parameters narrowing a lookup to some keys (an exact match is then done in Python)."""
    ks = list(keys)
    return {"t": sorted({k[0] for k in ks}), "p": sorted({k[1] for k in ks}), "o": sorted({k[2] for k in ks})}
