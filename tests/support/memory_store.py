"""In-memory stand-ins for the processor's ClickHouse store and dead-letter producer (unit tests).

The store keeps inserted Arrow tables and can act like a faulty ClickHouse: refuse blocks as bad data
(code 117), fail transiently, or lose the answer to a write it applied. With no fault configured it
is a plain recorder.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.sinks.clickhouse import InsertError


class MemoryStore:
    """Keeps inserted Arrow tables; refuses (code 117) any block holding a row the predicate flags, and
    fails transiently the first ``transient`` calls."""

    def __init__(self, refuse: Any = None, transient: int = 0) -> None:
        self.tables: dict[str, list[pa.Table]] = {}
        self.refuse, self.transient, self.calls = refuse, transient, 0
        self.tokens: set[str] = set()
        self.lose_answers = 0
        self.rebuilt: list[tuple[int, list[int]]] = []

    def insert_arrow(self, table: str, data: pa.Table, token: str | None = None) -> None:
        """Like ClickHouse with a deduplication window: a block with a known token is dropped."""
        self.calls += 1
        if token is not None and token in self.tokens:
            return
        if self.transient > 0:
            self.transient -= 1
            raise InsertError("Code: 210. connection refused", 210, permanent=False)
        if self.refuse and table == "request_logs" and any(self.refuse(r) for r in data.to_pylist()):
            raise InsertError("Code: 117. DB::Exception: bad data", 117, permanent=True)
        self.tables.setdefault(table, []).append(data)
        if token is not None:
            self.tokens.add(token)
        if self.lose_answers > 0:
            self.lose_answers -= 1
            raise InsertError("ClickHouse unreachable: connection closed without an answer", None, permanent=False)

    def rebuild(self, raw: Any, partition: int, minutes: list[int]) -> None:
        self.rebuilt.append((partition, minutes))

    def stored_keys(self, table: str, keys: Any) -> set[tuple[Any, ...]]:
        cols = ("src_topic_id", "src_partition", "src_offset", "src_index") + (
            ("replay_count",) if table == "dead_letters" else ())
        held = {tuple(r[c] for c in cols) for r in self.rows(table)}
        return held & {tuple(k) for k in keys}

    def rows(self, table: str) -> list[dict[str, Any]]:
        return [r for t in self.tables.get(table, []) for r in t.to_pylist()]


class RecordingDeadLetters:
    """Dead letters the processor sent, in order (every send acknowledged)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, letters: Any) -> None:
        self.sent.extend(letters)
