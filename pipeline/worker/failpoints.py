"""Failpoints: named places where a fault test can make the worker die on purpose.

Crash tests need to kill the worker *at* a given step (during an insert, between the insert and the
offset commit, inside a rebalance callback), not just at a random moment, or the interesting windows
are almost never hit. ``IMTEL_FAILPOINTS`` (read once, at import) arms them, e.g.
``flush.after_raw=3`` kills the process with SIGKILL the 3rd time that point is reached. Unarmed (the
default, always in production) a hit costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("flush.before_raw", "flush.after_raw", "flush.after_dead_letters",
          "commit.before", "commit.after", "revoke.before_flush", "assign.before_recover")


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition("=")
        if name not in POINTS:
            raise ValueError(f"IMTEL_FAILPOINTS: unknown failpoint {name!r} (known: {', '.join(POINTS)})")
        armed[name] = int(count or "1")
    return armed


_armed = _parse(os.environ.get("IMTEL_FAILPOINTS", ""))


def hit(name: str) -> None:
    """Count a pass through ``name``; SIGKILL this process when its armed count is reached."""
    if not _armed or name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
