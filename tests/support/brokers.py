"""A real Kafka broker process owned by one test: to kill it (SIGKILL) and start it again on the same
port with its log directory kept, as a broker pod restarts on its persistent volume."""

from __future__ import annotations

from pathlib import Path

from pipeline.dev.kafka_server import KafkaServer
from pipeline.dev.ports import free_port


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


def scram_kafka(data_dir: Path, users: dict[str, str], extra: dict[str, str] | None = None) -> tuple[KafkaServer, int]:
    """A real Kafka node (not started) with a SASL_PLAINTEXT / SCRAM-SHA-512 listener beside its plaintext
    one, and its port. The ``users`` (name -> password) are created when the log dir is formatted, KRaft's
    way; broker-internal and controller traffic stay on the plaintext listeners. ``extra``: more broker
    configs (an authorizer, say)."""
    scram = [arg for user, password in users.items()
             for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")]
    server = KafkaServer(data_dir, format_args=scram)
    sasl_port = free_port()
    listeners = f"PLAINTEXT://127.0.0.1:{server.port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}"
    server.extra.update({
        "listeners": f"{listeners},CONTROLLER://127.0.0.1:{server.controller_port}",
        "advertised.listeners": listeners,
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;", **(extra or {})})
    return server, sasl_port
