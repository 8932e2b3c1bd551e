"""Local TCP ports for the child processes of embedded mode, the tests and the bench: which port to
give a child, and whether something listens on one yet."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

_handed_out: set[int] = set()


def _spare_ports() -> range | None:
    """Ports below the kernel's ephemeral range (at most 16,384 of them, none below 1024), or None
    when an unusual range leaves fewer than 10,000 there."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    spare = range(max(1024, low - 16_384), low)
    return spare if len(spare) >= 10_000 else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, for a child process to listen on a moment later.

    Chosen below the kernel's ephemeral range rather than by binding port 0, because port 0 draws
    from the very range every outgoing connection takes its local port from: a port picked that way
    and bound seconds later by a child (a worker's web server, a broker) may by then be the local end
    of somebody's connection, and the child then fails to start. Ports below the range are never
    taken implicitly; the ones this process handed out are not handed out again."""
    spare = _spare_ports()
    if spare is not None:
        for _ in range(500):
            port = random.randrange(spare.start, spare.stop)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # an unusual port range: the kernel's choice is the best there is
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"broker did not listen on {host}:{port} within {timeout:.0f}s")
        time.sleep(0.1)
