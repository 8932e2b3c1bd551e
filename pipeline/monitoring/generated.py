"""The command line shared by the generators of committed files (dashboards, alert rules): write the files,
or with ``--check`` exit 1 naming every committed file that is stale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stale(expected: Mapping[str, str], out_dir: Path, orphans: str | None = None) -> list[str]:
    """Names of files under out_dir that differ from or are missing from ``expected`` (file name -> content),
    then, when ``orphans`` is a glob, the files it matches that are not in ``expected``."""
    bad = [n for n, t in expected.items() if not (out_dir / n).exists() or (out_dir / n).read_text() != t]
    if orphans:
        bad += sorted(p.name for p in out_dir.glob(orphans) if p.name not in expected)
    return bad


def write(files: Mapping[str, str], out_dir: Path) -> list[Path]:
    """Write every file (name -> content) under out_dir; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        (out_dir / name).write_text(text)
        paths.append(out_dir / name)
    return paths


def main(
    argv: list[str] | None,
    prog: str,
    description: str,
    render: Callable[[], Mapping[str, str]],
    out_dir: Path,
    orphans: str | None = None,
) -> int:
    """``prog [--check]``: write what ``render`` returns under out_dir, or check the committed files."""
    where = out_dir.relative_to(ROOT)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a committed file in {where}/ is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(render(), out_dir, orphans)
        for name in bad:
            print(f"{where}/{name} is stale: run `{prog}`", file=sys.stderr)
        return 1 if bad else 0
    for path in write(render(), out_dir):
        print(path.relative_to(ROOT))
    return 0
