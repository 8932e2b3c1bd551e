"""The native request-log parser (pipeline/ingest/_fastlog.c) under libFuzzer with ASan and UBSan, ~20 s.

Kafka message bytes are untrusted and the parser reads them in C: a short coverage-guided run on every
test command, from seeds of valid messages (tests/fuzz/corpus/fastlog), catches an out-of-bounds read,
an overflow or a broken column invariant that the property tests' inputs never reach. ``make fuzz``
runs the same target for 10 minutes (tests/fuzz/fastlog.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz import fastlog as fuzz

SECONDS = 20
CLANG = fuzz.find_clang()
# CI installs the toolchain (.ci/run): a missing one there is a broken install, not a reason to skip.
pytestmark = pytest.mark.skipif(CLANG is None and not os.environ.get("CI"),
                                reason=f"no clang with libFuzzer + ASan/UBSan runtimes here ({fuzz.APT_HINT})")


def test_the_parser_survives_a_short_fuzzing_run(tmp_path: Path) -> None:
    assert CLANG is not None, f"CI must have the fuzzing toolchain: {fuzz.APT_HINT}"
    result = fuzz.run(fuzz.build(CLANG, tmp_path), tmp_path, SECONDS)
    assert result.crash is None and result.returncode == 0, (
        f"fuzzing found an input that crashes or breaks an invariant: {result.crash}\n"
        + "\n".join(line for line in result.log.splitlines() if not line.startswith(("0x", "\\", '"')))[-4000:])
    # a run that barely executed (a harness that exits early, a starved machine) proves nothing
    assert result.execs > 10_000, result.log[-2000:]
