"""A real Kafka broker process owned by one test: to kill it (SIGKILL) and start it again on the same
port with its log directory kept, as a broker pod restarts on its persistent volume."""

from __future__ import annotations

from pathlib import Path

from pipeline.kafka_server import KafkaServer


class BrokerProcess:
    """One Apache Kafka node (KRaft, broker + controller) of one test; a restart keeps every topic,
    record, group and committed offset."""

    def __init__(self, data_dir: Path, extra: dict[str, str] | None = None) -> None:
        self.server = KafkaServer(data_dir, extra=extra)
        self.bootstrap = self.server.bootstrap

    def start(self) -> BrokerProcess:
        self.server.start()
        return self

    def kill(self) -> None:
        """SIGKILL: connections drop; what the broker had written to its log survives."""
        self.server.kill()

    def stop(self) -> None:
        self.server.stop()
