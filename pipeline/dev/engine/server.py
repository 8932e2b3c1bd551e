"""The ``imtel engine`` process: its listeners (data ports and the tests' fault admin port), the
start-up and shutdown order, and ``serve`` (run until SIGTERM or SIGINT).

``EngineServer`` ties the other modules together (access, limits, SQL guard, store, faults); each
listener and connection (``handler``) is served through the ``handler.Serving`` side of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from pipeline.dev.engine.access import Access, authenticate, check_origin, is_loopback
from pipeline.dev.engine.guard import SqlGuard
from pipeline.dev.engine.handler import Listener
from pipeline.dev.engine.limits import Limits, Pool
from pipeline.dev.engine.store import Engine
from pipeline.dev.engine_faults import Fault, FaultBook


class EngineServer:
    """The engine, the fault book and the listeners of one ``imtel engine`` process.

    Data listener 0 is on ``port`` (0: a free one), further data listeners on free ports; the fault
    admin listener exists only when ``fault_admin_port`` is given, and always on loopback."""

    def __init__(self, store: Path, *, access: Access, host: str = "127.0.0.1", port: int = 8123,
                 listeners: int = 1, fault_admin_port: int | None = None, limits: Limits | None = None) -> None:
        if not access.password:
            raise ValueError("the engine needs a password: it never serves without authentication")
        self.store, self.access, self.limits = store, access, limits or Limits()
        self.user, self.password, self.tls = access.user, access.password, access.tls
        self.hosts = frozenset(h.lower() for h in access.hosts) | ({host.lower()} if not is_loopback(host) else set())
        self.faults = FaultBook()
        self.pool = Pool(self.limits.max_connections, self.limits.queue_wait)
        self.guard = SqlGuard()
        self.data = [Listener(self, i, host, port if i == 0 else 0) for i in range(listeners)]
        self.admin = Listener(self, -1, "127.0.0.1", fault_admin_port) if fault_admin_port is not None else None
        self.scratch: Path | None = None
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the engine is not open")
        return self._engine

    @property
    def listeners(self) -> list[Listener]:
        return [*self.data, *([self.admin] if self.admin is not None else [])]

    def start(self) -> None:
        """Take the ports first (a taken port fails fast, before the engine's seconds of start-up),
        then open the store, then answer. OSError: a port is taken; StoreError: the store won't open."""
        try:
            for listener in self.listeners:
                listener.bind()
            self.scratch = Path(tempfile.mkdtemp(prefix="imtel-engine-"))
            self._engine = Engine(self.store, self.scratch)
            self.guard = SqlGuard(self._engine.names("table_functions"), self._engine.names("table_engines"))
        except BaseException:
            self.stop()
            raise
        for listener in self.listeners:
            listener.serve()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop answering, let a running statement finish (up to ``timeout``), close the store."""
        for listener in self.listeners:
            listener.close()
        if self._engine is not None:
            self._engine.close(timeout)
            self._engine = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def ready(self) -> dict[str, Any]:
        """What ``--ready-file`` holds: the data ports, the admin port (None: no fault admin), the pid,
        and where our own clients find the credentials (the user; the password file, never the password)."""
        password_file = str(self.access.password_file) if self.access.password_file else None
        return {"data": [x.port for x in self.data], "admin": self.admin.port if self.admin else None,
                "pid": os.getpid(), "user": self.user, "password_file": password_file}

    def inject(self, fault: Fault) -> Fault:
        if not 0 <= fault.listener < len(self.data):
            raise IndexError(f"listener must be 0..{len(self.data) - 1}")
        self.faults.add(fault)
        if fault.mode == "refuse":
            fault.hits, fault.duration = 1, fault.seconds
            self.data[fault.listener].refuse(fault.seconds)
        return fault

    def clear(self) -> None:
        self.faults.clear()
        for listener in self.data:
            listener.refused_until = 0.0

    def check_origin(self, headers: Any) -> None:
        """``access.check_origin`` with this server's hosts: only it knows the bind address is one of them."""
        check_origin(headers, self.hosts)

    def authenticate(self, headers: Any, params: dict[str, str]) -> None:
        """``access.authenticate`` against this server's one user (every data and admin request needs it)."""
        authenticate(headers, params, self.user, self.password)


def serve(server: EngineServer, ready_file: Path | None = None, on_ready: Any = None) -> None:
    """Run ``server`` until SIGTERM or SIGINT (main thread only), then stop it cleanly."""
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps(server.ready()))
            tmp.replace(ready_file)
        if on_ready is not None:
            on_ready(server)
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
