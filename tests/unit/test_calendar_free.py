"""The suite does not depend on the calendar: a test that seeds a TTL'd table at a fixed date passes on
the day it is written and fails, on its own, once the rows are older than the table's TTL (2 days for
Monitoring Data). This happened: ``test_dashboards`` seeded 2026-11-22 and broke ten days later.

So every calendar literal in the tests (a ``datetime(2026, ...)``, an ISO date, an epoch in seconds or
milliseconds) lives in a file listed below with the reason it is safe: pure logic whose clock is
injected, or text that is never stored. A new literal anywhere else fails here, and its author has to
either take the time from the run's clock or say why the date cannot expire.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

# A year-2000+ datetime(...) call, an ISO date, or an epoch of 2020-2033 in s or ms.
CALENDAR = re.compile(r"datetime\(\s*2\d{3}\s*,|['\"]2\d{3}-[01]\d-[0-3]\d|\b1[6-9]\d{8}(?:\d{3})?\b")

SAFE = {
    "unit/test_calendar_free.py": "the patterns above",
    "unit/test_engine_native.py": "column values for the Native wire format, computed by chDB; no table, no TTL",
    "integration/test_engine_clients.py": "a value in a scratch table without a TTL, read straight back",
    "unit/test_audit.py": "TTL clauses as text: the registry's '2099-12-31' sentinel, parsed, never stored",
    "unit/test_audit_registry.py": "plan_deletions and erasure notes with an injected NOW; no store",
    "unit/test_bench.py": "a results document's generated_at label",
    "unit/test_fastlog.py": "the decoder alone: it has no clock (the event-time window is the processor's)",
    "unit/test_queries.py": "parameter parsing with an injected NOW; its seeded store takes the run's clock",
    "unit/test_report.py": "rendering with injected data and now=END; no store",
    "unit/test_security.py": "parse_params with an injected now; dates as injection probes and log text",
    "support/poison.py": "an ISO date as a wrongly typed value; every stored time is relative to now_ms",
}


def calendar_literals() -> dict[str, list[str]]:
    """Test files with a calendar literal, and the first few lines that hold one."""
    found: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        hits = [line.strip() for line in path.read_text().splitlines() if CALENDAR.search(line)]
        if hits:
            found[path.relative_to(TESTS).as_posix()] = hits[:3]
    return found


def test_calendar_literals_only_where_the_clock_is_injected() -> None:
    unexplained = {f: lines for f, lines in calendar_literals().items() if f not in SAFE}
    assert not unexplained, (
        "fixed dates in tests expire (TTL'd rows vanish): take times from the run's clock, or add the file "
        f"to SAFE with the reason its dates cannot expire: {unexplained}")


def test_the_list_of_safe_files_has_no_stale_entries() -> None:
    assert set(SAFE) <= set(calendar_literals()), set(SAFE) - set(calendar_literals())


def test_the_pattern_catches_what_broke_ci() -> None:
    """The literal that broke CI on 2026-12-03, and its kin, are caught; relative times are not."""
    for text in ("END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)", "'2026-11-22T10:00:00Z'", "t = 1795338000",
                 "ms = 1795341600000"):
        assert CALENDAR.search(text), text
    for text in ("END = datetime.now(UTC).replace(second=0)", "now_ms - 8 * DAY_MS", "sdk_app_id=1400000001"):
        assert not CALENDAR.search(text), text
