"""Faults that ``imtel engine`` can inject at its HTTP boundary, for tests of the worker's resilience.

Off unless the engine is started with ``--fault-admin-port``: then an admin listener (loopback
only, never faulted) takes ``POST /__faults`` (a JSON spec, ``listener`` index) -> the fault,
``GET /__faults`` -> every fault with ``hits`` and ``in_flight``, ``DELETE /__faults`` -> all cleared
and refused listeners reopened. Faults apply per data listener (give each worker its own listener to
target one of them; all listeners share the one store):

  refuse  close the listening socket and drop open connections for ``seconds``, then listen again on
          the same port (clients see ECONNREFUSED / resets)
  stall   hold each matching request ``seconds``, then drop the connection without an answer (a hung
          server or proxy timeout); with ``after`` the statement runs first, so the write happened
          and only its acknowledgement is lost
  error   answer matching requests with HTTP ``status`` and ClickHouse ``code`` (e.g. 500 + 252
          TOO_MANY_PARTS) without running them
  slow    run matching requests after ``seconds`` (they still run if the client went away, as on a
          real server)
  reject  fail a data insert with Code 117 (INCORRECT_DATA) when its uploaded block holds a row whose
          ``column`` contains ``marker``; decided by a SELECT over the uploaded block on the engine

Every fault may carry ``match`` (a regex the statement text, never the data, must match), ``duration``
(seconds until it expires; default: until cleared) and ``limit`` (maximal hits). Pure bookkeeping:
the server (``pipeline.dev.engine``) applies them.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("refuse", "stall", "error", "slow", "reject")
_IDENTIFIER = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class Fault:
    """One injected fault on one listener (see the module docstring for the modes)."""

    mode: str
    listener: int = 0
    seconds: float = 0.0
    duration: float | None = None
    match: str = ""
    limit: int | None = None
    after: bool = False
    status: int = 500
    code: int = 0
    message: str = ""
    column: str = ""
    marker: str = ""
    id: int = 0
    hits: int = 0
    in_flight: int = 0
    created: float = field(default_factory=time.monotonic)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.mode == "reject" and not (_IDENTIFIER.match(self.column) and self.marker):
            raise ValueError("reject needs column (an identifier) and marker")
        if self.mode == "error" and not (400 <= self.status < 600 and self.code > 0):
            raise ValueError("error needs an HTTP status 400..599 and a ClickHouse code > 0")
        re.compile(self.match)

    def active(self, now: float) -> bool:
        expired = self.duration is not None and now - self.created >= self.duration
        return not expired and (self.limit is None or self.hits < self.limit)

    def view(self) -> dict[str, Any]:
        out = asdict(self)
        out["active"] = self.active(time.monotonic())
        del out["created"]
        return out


class FaultBook:
    """Every fault of the server; thread-safe. A hit is counted when a fault actually changed a request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        fault.validate()
        with self.lock:
            fault.id = len(self.faults) + 1
            self.faults.append(fault)
        return fault

    def take(self, listener: int, mode: str, head: str) -> Fault | None:
        """The first active fault of ``mode`` matching this statement, with one hit counted."""
        with self.lock:
            for fault in self._matching(listener, mode, head):
                fault.hits += 1
                return fault
        return None

    def candidates(self, listener: int, mode: str, head: str) -> list[Fault]:
        with self.lock:
            return list(self._matching(listener, mode, head))

    def hit(self, fault: Fault) -> None:
        with self.lock:
            fault.hits += 1

    def flight(self, fault: Fault, delta: int) -> None:
        with self.lock:
            fault.in_flight += delta

    def clear(self) -> None:
        with self.lock:
            for fault in self.faults:
                fault.duration = 0.0

    def views(self) -> list[dict[str, Any]]:
        with self.lock:
            return [f.view() for f in self.faults]

    def _matching(self, listener: int, mode: str, head: str) -> list[Fault]:
        if not self.faults:  # the common case (no faults at all): no clock read, no lock contention
            return []
        now = time.monotonic()
        return [f for f in self.faults if f.mode == mode and f.listener == listener and f.active(now)
                and (not f.match or re.search(f.match, head, re.IGNORECASE))]
