"""The narrow contract between the delivery protocol (``sinks/writer.py``) and a store.

A store adds rows under a deduplication token and folds them into the aggregate table as it stores
them (a retry with the token adds nothing to either), and on partition assignment says what a previous
owner stored without committing. Every failure is an
``InsertError`` that says whether a retry can help (transient) or not (permanent: bad data). The
writer decides what to do with each; a second store means a second implementation of ``Store``, not
an edit of the writer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class RawTable:
    """A raw table: its name, its event-time column and its label in the aggregate table."""

    name: str
    time_column: str
    source: str


LOGS = RawTable("request_logs", "request_time", "log")
SAMPLES = RawTable("monitoring_samples", "window_start", "sample")


class InsertError(Exception):
    """A store call failed; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, code: int | None, permanent: bool) -> None:
        super().__init__(message)
        self.code, self.permanent = code, permanent


@dataclass
class Recovery:
    """What a partition's previous owner stored without committing."""

    keys: set[tuple[int, int]]
    max_offset: int
    minutes: int


class Store(Protocol):
    """Where rows go. Each call is acknowledged or raises ``InsertError``."""

    def insert_arrow(self, table: str, data: pa.Table, token: str | None = None) -> None:
        """Add rows, and fold raw rows into the aggregate table; a retry with the same ``token`` stores
        and folds nothing twice."""

    def rebuild(self, raw: RawTable, partition: int, minutes: Iterable[Any]) -> None:
        """Recompute a partition's aggregate minutes from the raw rows (idempotent)."""

    def recover(self, raw: RawTable, topic_id: str, partition: int, committed: int) -> Recovery:
        """Rows stored at or past the committed offset, with their aggregate minutes rebuilt."""

    def dead_letters_stored(self, topic_id: str, partition: int, committed: int) -> set[tuple[int, int]]:
        """Records already in the dead-letter ledger at or past the committed offset."""

    def stored_keys(self, table: str, keys: Collection[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        """Which of ``keys`` (src_topic_id, src_partition, src_offset, src_index[, replay_count for the
        ledger]) ``table`` already holds: the lookup that makes a replayed record stored once."""


class DeadLetterSink(Protocol):
    """Produces dead letters and blocks until Kafka acknowledged or permanently refused each (raises
    on anything retryable)."""

    def send(self, letters: Sequence[Any]) -> list[str | None] | None:
        """None per acknowledged letter, or the name of a permanent refusal (None: all acknowledged)."""
