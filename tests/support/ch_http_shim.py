"""The tests' name for ``pipeline.dev.engine`` (``imtel engine``), which began here as a test shim.

The server, its ClickHouse HTTP protocol and the fault injection live in ``pipeline/dev/engine/``
and ``pipeline/dev/engine_faults.py``; this module re-exports what the tests use and keeps the old
command line (``python tests/support/ch_http_shim.py --store DIR [--listeners N] --ready-file F
[--password P]``) for tests that start it directly. That command enables the fault admin listener
explicitly (on a free loopback port), as every test use of faults must. Without ``--password`` the
engine's generated token (``STORE/engine.token``) is the password, as with ``imtel engine``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.dev.engine import (
    TOKEN_FILE,
    Access,
    Answer,
    Engine,
    EngineError,
    EngineServer,
    Statement,
    decode_body,
    load_or_create_token,
    parse_statement,
    serve,
)
from pipeline.dev.engine_faults import MODES, Fault, FaultBook

__all__ = ["MODES", "Access", "Answer", "Engine", "EngineError", "EngineServer", "Fault", "FaultBook", "Statement",
           "decode_body", "main", "parse_statement"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="imtel engine with the fault admin listener, for tests")
    parser.add_argument("--store", required=True, type=Path, help="chDB data folder (created if missing)")
    parser.add_argument("--listeners", type=int, default=1, help="data listeners (faultable ports)")
    parser.add_argument("--ready-file", type=Path, required=True, help="JSON with the ports, written when serving")
    parser.add_argument("--user", default="default")
    parser.add_argument("--password", default=None, help="require this password (default: the generated token)")
    args = parser.parse_args(argv)
    args.store.mkdir(parents=True, exist_ok=True)
    token = args.store / TOKEN_FILE
    access = Access(args.password, args.user) if args.password else Access(load_or_create_token(token), args.user,
                                                                             password_file=token.resolve())
    serve(EngineServer(args.store, access=access, port=0, listeners=args.listeners, fault_admin_port=0),
          args.ready_file)


if __name__ == "__main__":
    main()
