"""Dead-letter producer: original bytes as the value, the reason and origin in headers.

Headers (all ASCII): ``imtel-reason`` (closed set, see ``decode.REASONS``), ``imtel-detail`` (field and
rule, never a value), ``imtel-source-topic``/``-topic-id``/``-partition``/``-offset``/``-index``
(index -1: the whole message). The source coordinates are also the dedup key for DLQ consumers.
The value keeps the original bytes (full IPs included), which is why the topic's retention is bounded
by the policy (see ``topics.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Producer

from .batch import DeadLetter
from .kafka_client import produce_blocking


class DeadLetterError(Exception):
    """Kafka did not acknowledge every dead letter; nothing may be committed."""


class KafkaDeadLetters:
    """Blocking, acknowledged dead-letter sends (called from a worker thread)."""

    def __init__(self, kafka_config: dict[str, Any], topic: str, timeout: float = 30.0) -> None:
        self.topic, self.timeout = topic, timeout
        self.producer = Producer({**kafka_config, "acks": "all", "enable.idempotence": False,
                                  "linger.ms": 5, "message.max.bytes": 4_000_000})

    def send(self, letters: Sequence[DeadLetter]) -> None:
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                errors.append(err)

        for letter in letters:
            o = letter.origin
            headers: list[tuple[str, str | bytes | None]] = [
                ("imtel-reason", letter.reason.encode()), ("imtel-detail", letter.detail.encode()),
                       ("imtel-source-topic", o.topic.encode()), ("imtel-source-topic-id", o.topic_id.encode()),
                       ("imtel-source-partition", str(o.partition).encode()),
                       ("imtel-source-offset", str(o.offset).encode()), ("imtel-source-index", str(o.index).encode())]
            produce_blocking(self.producer, self.topic, letter.raw, letter.key, wait=0.1, headers=headers,
                             on_delivery=on_delivery)
        remaining = self.producer.flush(self.timeout)
        if remaining or errors:
            reason = errors[0].name() if errors else f"{remaining} not acknowledged in {self.timeout:.0f}s"
            raise DeadLetterError(f"dead-letter topic {self.topic}: {reason}")

    def close(self) -> None:
        self.producer.flush(5)
