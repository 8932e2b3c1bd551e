"""How a contender process reports to the harness: one job file in, one status file out.

The harness writes a ``Job`` as JSON and starts the contender with its path. The contender rewrites
its status file atomically (write + rename) at most a few times a second: when it saw its first
record, how many rows ClickHouse acknowledged and when, and a fine freshness histogram measured at
insert acknowledgement. Stdlib only: the Quix Streams contender runs in its own virtualenv.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Freshness histogram: 10 ms resolution below 10 s, 100 ms up to 10 minutes (exact enough for p50/p99).
FINE_STEP_S, COARSE_STEP_S, FINE_LIMIT_S, LIMIT_S = 0.01, 0.1, 10.0, 600.0
FRESHNESS_OFF = 1 << 62  # an event-time cut no record reaches: no freshness bookkeeping


@dataclass
class Job:
    """What one contender run is told: where to read, where to write, when it is done."""

    contender: str
    bootstrap: str
    topic: str
    group: str
    store: str  # chDB folder (fresh)
    status_path: str
    expected_records: int
    database: str = "imtel"
    fresh_from_ms: int = FRESHNESS_OFF  # freshness counts only records with an event time at or after this
    options: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> Job:
        return cls(**json.loads(Path(path).read_text()))


def fresh_bucket(seconds: float) -> int:
    """Index of a freshness value in the fine histogram (negative values count as 0)."""
    s = max(0.0, seconds)
    if s < FINE_LIMIT_S:
        return int(s / FINE_STEP_S)
    return int(FINE_LIMIT_S / FINE_STEP_S) + int((min(s, LIMIT_S) - FINE_LIMIT_S) / COARSE_STEP_S)


def bucket_upper(index: int) -> float:
    """Upper edge (seconds) of a fine-histogram bucket."""
    fine = int(FINE_LIMIT_S / FINE_STEP_S)
    if index < fine:
        return (index + 1) * FINE_STEP_S
    return FINE_LIMIT_S + (index - fine + 1) * COARSE_STEP_S


def quantile(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile of a fine histogram (upper edge of the bucket holding it), None if empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank, seen = max(1, math.ceil(q * total)), 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return round(bucket_upper(index), 3)
    return None


class StatusWriter:
    """Accumulates a contender's progress and rewrites its status file (throttled, atomic)."""

    def __init__(self, path: str, fresh_from_ms: int = FRESHNESS_OFF) -> None:
        self.path, self.fresh_from_ms = Path(path), fresh_from_ms
        self.first_record: float | None = None
        self.cpu_first: float | None = None  # process CPU seconds (all threads) at the first record
        self.rows = 0
        self.last_write: float | None = None
        self.cpu_last: float | None = None
        self.fresh: dict[int, int] = {}
        self.extra: dict[str, Any] = {}

    def saw_records(self) -> None:
        if self.first_record is None:
            self.first_record, self.cpu_first = time.time(), time.process_time()
            self.save()

    def wrote(self, rows: int, event_times_ms: list[int] | None = None) -> None:
        """Rows acknowledged by ClickHouse now (and their event times, for freshness)."""
        now = time.time()
        self.rows += rows
        self.last_write, self.cpu_last = now, time.process_time()
        if event_times_ms:
            now_ms, cut, fresh = now * 1000.0, self.fresh_from_ms, self.fresh
            for t in event_times_ms:
                if t >= cut:
                    b = fresh_bucket((now_ms - t) / 1000.0)
                    fresh[b] = fresh.get(b, 0) + 1
        self.save()

    def save(self) -> None:
        """Rewrite the status file (atomic; a few times a second at most, once per insert)."""
        data = {"first_record": self.first_record, "cpu_first": self.cpu_first, "rows": self.rows,
                "last_write": self.last_write, "cpu_last": self.cpu_last, "fresh": self.fresh, "pid": os.getpid(),
                **self.extra}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


def read_status(path: Path) -> dict[str, Any]:
    """The latest status a contender wrote ({} before its first write)."""
    try:
        data = dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}
    data["fresh"] = {int(k): int(v) for k, v in data.get("fresh", {}).items()}
    return data
