"""Build the OpenTelemetry Collector contender (``otelcol-imtel``) with ocb, cached per version.

Why a build and not a download: this machine (like a developer's and CI's) reaches the Go module
proxy but not GitHub release assets, so the only way to get a collector is to compile one from Go
modules. The OpenTelemetry Collector Builder (ocb) is itself a Go module, installed with
``go install``; it turns ``builder-config.yaml`` into a ``main`` package and ``go build``s it.

Why a cache: a cold build downloads ~1 GB of modules and compiles for minutes on two cores; the
binary only depends on the manifest, so it is kept under
``${IMTEL_CACHE_DIR:-~/.cache/imtel}/otelcol/<version>/otelcol-imtel`` and reused. A stamp with the
manifest's hash makes an edited manifest (same version) rebuild instead of silently reusing.
Concurrent callers (pytest-xdist workers, two bench runs) serialise on a file lock so they never
see a half-written binary; the binary is moved into place atomically.

Stdlib only, and nothing from ``pipeline``: the bench imports this without pulling the pipeline in.
Go's own module and build caches (``go env GOMODCACHE GOCACHE``) are left where Go keeps them, so
other Go work on the machine shares the downloads.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "builder-config.yaml"
BINARY_NAME = "otelcol-imtel"
# ocb is released with the core modules; keep it at the manifest's dist.version (checked below)
# so the generated main.go matches the component APIs it compiles against.
OCB_MODULE = "go.opentelemetry.io/collector/cmd/builder"
BUILD_TIMEOUT_S = 3600  # a cold build on 2 cores takes minutes; an hour means something hangs


def default_cache_dir() -> Path:
    """The project's cache root: ``$IMTEL_CACHE_DIR`` or ``~/.cache/imtel`` (shared with the broker)."""
    env = os.environ.get("IMTEL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imtel"


def manifest_version(manifest: Path = MANIFEST) -> str:
    """``dist.version`` from the manifest, read with a regex because the module is stdlib-only."""
    match = re.search(r"^dist:\s*\n(?:[ \t]+.*\n)*?[ \t]+version:\s*\"?([0-9][^\s\"#]*)", manifest.read_text(), re.M)
    if not match:
        raise RuntimeError(f"no dist.version in {manifest}")
    return match.group(1)


def find_go() -> str:
    """The go command: on PATH, else the standard install place; raises if neither exists."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if not go:
        raise RuntimeError("Go toolchain not found (no 'go' on PATH nor /usr/local/go/bin/go); ocb needs it")
    return go


def _run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path, what: str) -> None:
    """Run one build step with output appended to ``log``; a failure raises with one line of reason."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=BUILD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{what} timed out after {BUILD_TIMEOUT_S}s (log: {log})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "cannot" in ln.lower()]
        reason = (errors or lines or ["no output"])[-1][:300]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {reason} (log: {log})")


def ensure_otelcol(cache_dir: Path | None = None) -> Path:
    """Return the path of a built ``otelcol-imtel``, building it (ocb + go build) if missing.

    ``cache_dir`` is the project's cache root (default: :func:`default_cache_dir`); the collector
    goes in ``<root>/otelcol/<version>/``. Raises ``RuntimeError`` with a one-line reason when Go is
    missing or a step fails; the full output is in ``build.log`` beside the binary.
    """
    version = manifest_version()
    target = (cache_dir or default_cache_dir()).expanduser() / "otelcol" / version
    binary = target / BINARY_NAME
    stamp = target / "manifest.sha256"
    digest = hashlib.sha256(MANIFEST.read_bytes()).hexdigest()

    def ready() -> bool:
        return (binary.is_file() and os.access(binary, os.X_OK) and stamp.is_file()
                and stamp.read_text().strip() == digest)

    if ready():  # fast path without the lock: the binary is only ever moved in whole
        return binary
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same version
        if ready():
            return binary
        go = find_go()
        log = target / "build.log"
        log.write_text(f"# otelcol-imtel {version} build, {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        env = {**os.environ, "GOBIN": str(target / "bin"), "CGO_ENABLED": "0",
               # ocb calls `go` itself: make sure it finds the same one we found
               "PATH": f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        _run([go, "install", f"{OCB_MODULE}@v{version}"], env, target, log, f"go install ocb v{version}")
        ocb = target / "bin" / "builder"
        # A copy of the manifest with an absolute output path, so ocb never writes into the repo.
        src = target / "src"
        manifest = target / "builder-config.yaml"
        text = re.sub(r"^([ \t]+output_path:).*$", rf"\1 {src}", MANIFEST.read_text(), count=1, flags=re.M)
        manifest.write_text(text)
        _run([str(ocb), "--config", str(manifest)], env, target, log, "ocb build")
        built = src / BINARY_NAME
        if not built.is_file():
            raise RuntimeError(f"ocb finished but {built} is missing (log: {log})")
        os.replace(built, binary)
        stamp.write_text(digest + "\n")
        return binary


def main() -> int:
    """``python bench/otelcol/build.py``: build (or reuse) the collector and print its path."""
    started = time.monotonic()
    try:
        path = ensure_otelcol()
    except RuntimeError as exc:
        print(f"otelcol build: {exc}", file=sys.stderr)
        return 1
    print(path)
    print(f"({time.monotonic() - started:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
