"""The embedded worker's allocator settings reach chDB's own jemalloc (``worker/run.embedded_allocators``).

chDB reads them from its environment once, when the library loads: a chDB release that renamed the
variable, or a code path that imported chDB before the worker set it, would silently bring back the
~60 MB of freed pages the settings give back. Each case runs in a fresh interpreter, as the worker does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("chdb")

READ_OPTS = """
import json, re, chdb
text = chdb.query("SELECT * FROM system.jemalloc_stats", "TSVRaw").bytes().decode()
print(json.dumps(dict(re.findall(r"opt\\.(oversize_threshold|dirty_decay_ms): (\\d+)", text))))
"""


def fresh_python(code: str, env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a new interpreter (chDB loads there, as in a worker) without this process's
    JE_MALLOC_CONF; returns the JSON its last line of output holds."""
    clean = {k: v for k, v in os.environ.items() if k != "JE_MALLOC_CONF"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **(env or {})}, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def jemalloc_opts(prelude: str, env: dict[str, str] | None = None) -> dict[str, str]:
    return dict(fresh_python(prelude + READ_OPTS, env))


def test_the_embedded_worker_settings_reach_chdb() -> None:
    from pipeline.worker.run import CHDB_MALLOC_CONF

    opts = jemalloc_opts("from pipeline.worker.run import embedded_allocators; embedded_allocators()\n")
    assert opts == dict(kv.split(":") for kv in CHDB_MALLOC_CONF.split(","))


def test_without_them_chdb_keeps_its_defaults() -> None:
    """The settings change something: chDB's own defaults differ (so the test above can fail)."""
    from pipeline.worker.run import CHDB_MALLOC_CONF

    defaults = jemalloc_opts("")
    assert defaults != dict(kv.split(":") for kv in CHDB_MALLOC_CONF.split(","))


def test_an_explicit_setting_wins() -> None:
    opts = jemalloc_opts("from pipeline.worker.run import embedded_allocators; embedded_allocators()\n",
                         {"JE_MALLOC_CONF": "dirty_decay_ms:2000"})
    assert opts["dirty_decay_ms"] == "2000"


RELEASE = """
import json, os, struct, chdb
from pipeline.worker import relocations

def present(ranges):
    with open("/proc/self/pagemap", "rb") as pm:
        n = 0
        for address, length in ranges:
            pm.seek(address // 4096 * 8)
            n += sum(e >> 63 for (e,) in struct.iter_unpack("<Q", pm.read(length // 4096 * 8)))
        return n

def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) * 1024

so = os.path.realpath(os.path.join(os.path.dirname(chdb.__file__), "_chdb.abi3.so"))
with open("/proc/self/maps") as f:
    maps = [m for m in relocations.parse_maps(f) if m.path == so]
with open(so, "rb") as lib:
    def read(offset, size):
        lib.seek(offset)
        return lib.read(size)
    ranges = relocations.page_ranges(relocations.dead_sections(read(0, 64), read), maps)
before, rss_before = present(ranges), rss()
released = relocations.release()
after, rss_after = present(ranges), rss()
answer = chdb.query("SELECT sum(number) FROM numbers(1000000)", "CSV").bytes().decode().strip()
print(json.dumps({"pages": sum(l for _, l in ranges) // 4096, "before": before, "after": after,
                  "released": released, "rss_drop": rss_before - rss_after, "answer": answer,
                  "after_query": present(ranges)}))
"""


def test_chdb_relocation_table_is_given_back_and_chdb_still_works() -> None:
    got = fresh_python(RELEASE)
    assert got["pages"] * 4096 >= 1 << 20  # chDB's table is tens of MB: the test means something
    assert got["before"] == got["pages"]  # the loader read all of it
    assert got["after"] == 0
    assert got["released"] >= got["pages"] * 4096
    assert got["rss_drop"] >= got["pages"] * 4096 * 0.9
    assert got["answer"] == "499999500000"
    assert got["after_query"] <= got["pages"] // 20  # not read again (a few pages at most, by fault-around)
