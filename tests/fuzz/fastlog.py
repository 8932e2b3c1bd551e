"""Build and run the libFuzzer target of the native request-log parser (``fastlog_fuzz.c``).

``make fuzz`` runs it for ``FUZZ_SECONDS`` (default 600) on both cores; the test suite runs it for ~20 s
(tests/unit/test_fuzz_fastlog.py). Needs clang with libFuzzer and the sanitizer runtimes (Debian:
``clang-14 libclang-rt-14-dev``). The working corpus and any crash file go to ``--workdir``; the seeds
(valid messages in every framing) and the dictionary stay read-only in the repository.

    python -m tests.fuzz.fastlog --seconds 600 [--workdir DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "fastlog_fuzz.c"
SEEDS = HERE / "corpus" / "fastlog"
DICTIONARY = HERE / "fastlog.dict"
PARSER = HERE.parent.parent / "pipeline" / "ingest" / "_fastlog.c"
# Debian names clang by version; the unversioned name comes only with the ``clang`` package.
CLANGS = ("clang", *(f"clang-{v}" for v in range(19, 13, -1)))
APT_HINT = "apt-get install -y --no-install-recommends clang-14 libclang-rt-14-dev"


@dataclass(frozen=True)
class Result:
    """What one run reported (libFuzzer's -print_final_stats) and the crash file, if any."""

    returncode: int
    execs: int
    seconds: int
    crash: Path | None
    log: str

    @property
    def execs_per_second(self) -> float:
        return self.execs / max(self.seconds, 1)


def find_clang() -> str | None:
    """A clang that links a libFuzzer + ASan + UBSan program, or None (a bare compiler is not enough:
    the runtimes are a separate package)."""
    for name in CLANGS:
        path = shutil.which(name)
        if path and _links_fuzzer(path):
            return path
    return None


def _links_fuzzer(clang: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("#include <stddef.h>\n#include <stdint.h>\n"
                       "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n")
        done = subprocess.run([clang, "-fsanitize=fuzzer,address,undefined", str(src), "-o", str(Path(tmp) / "p")],
                              capture_output=True)
        return done.returncode == 0


def build(clang: str, out: Path) -> Path:
    """Compile the harness (and with it ``_fastlog.c``) with the fuzzer and both sanitizers."""
    include, libdir = sysconfig.get_paths()["include"], sysconfig.get_config_var("LIBDIR")
    version = sysconfig.get_config_var("LDVERSION")
    binary = out / "fastlog_fuzz"
    # -fno-sanitize-recover: UBSan's findings abort like ASan's, so libFuzzer keeps the input.
    # libpython only for the module half of the file the parser never calls (PyMem_Raw* is malloc).
    cmd = [clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
           "-fno-omit-frame-pointer", f"-I{include}", str(HARNESS), f"-L{libdir}", f"-lpython{version}",
           f"-Wl,-rpath,{libdir}", "-o", str(binary)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return binary


def run(binary: Path, workdir: Path, seconds: int, jobs: int = 1) -> Result:
    """Fuzz for ``seconds`` starting from the seeds (and whatever an earlier run left in ``workdir``)."""
    corpus, artifacts = workdir / "corpus", workdir / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(exist_ok=True)
    cmd = [str(binary), str(corpus), str(SEEDS), f"-dict={DICTIONARY}", f"-max_total_time={seconds}",
           "-max_len=4096", "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1",
           f"-artifact_prefix={artifacts}/"]
    if jobs > 1:  # -fork keeps going past a crash and shares one corpus; stats then come per child
        cmd.append(f"-fork={jobs}")
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1:symbolize=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    log = done.stderr
    execs = sum(int(n) for n in re.findall(r"stat::number_of_executed_units:\s+(\d+)", log))
    if not execs:  # fork mode prints no final stats: take the last progress line
        execs = max((int(n) for n in re.findall(r"#(\d+)\s", log)), default=0)
    crash = next((p for p in sorted(artifacts.iterdir()) if p.is_file()), None)
    return Result(done.returncode, execs, seconds, crash, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "imtel-fuzz-fastlog")
    args = parser.parse_args(argv)
    clang = find_clang()
    if clang is None:
        print(f"no clang with libFuzzer and the sanitizer runtimes; on Debian: {APT_HINT}", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = run(build(clang, args.workdir), args.workdir, args.seconds, args.jobs)
    print("\n".join(result.log.splitlines()[-12:]))
    print(f"{result.execs} executions in {result.seconds} s ({result.execs_per_second:.0f}/s); "
          f"corpus and artifacts in {args.workdir}")
    if result.crash or result.returncode != 0:
        print(f"FAILED: crash input {result.crash} (replay: {args.workdir / 'fastlog_fuzz'} {result.crash})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
