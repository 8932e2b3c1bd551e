"""Dead-letter producer: original bytes as the value (cut to a stated size), reason and origin in headers.

Headers (all ASCII): ``imtel-reason`` (closed set, see ``decode.REASONS``), ``imtel-detail`` (field and
rule, never a value), ``imtel-source-topic``/``-topic-id``/``-partition``/``-offset``/``-index``
(index -1: the whole message), ``imtel-replay-count`` on a replayed record that failed again (its
source coordinates are then the original ones, see ``ingest/replay.py``), and
``imtel-original-bytes``/``-original-sha256``/``-truncated``: the
value is the original bytes up to ``IMTEL_DEAD_LETTER_MAX_BYTES``, so a letter is never larger than
what the producer and the topic accept. The source coordinates are also the dedup key for DLQ
consumers, and the reference to the full original, which stays on the source topic for its retention.
The value keeps the original bytes (full IPs included), which is why the topic's retention is bounded
by the policy (see ``topics.py``).

A refusal no retry can fix (``limits.PERMANENT``: too large, invalid record) is returned per letter,
not raised: the caller records it in the ledger and moves on. Anything else (broker down, timeout,
authorization) raises ``DeadLetterError``: retried, with consumption paused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline.config.kafka import produce_blocking
from pipeline.ingest.buffer import DeadLetter
from pipeline.ingest.limits import cut, permanent
from pipeline.ingest.replay import REPLAY_COUNT


class DeadLetterError(Exception):
    """Kafka did not acknowledge every dead letter; nothing may be committed."""


class KafkaDeadLetters:
    """Blocking, acknowledged dead-letter sends (called from a worker thread)."""

    def __init__(self, kafka_config: dict[str, Any], topic: str, timeout: float = 10.0,
                 max_payload: int = 65_536, max_message_bytes: int = 8_388_608) -> None:
        self.topic, self.timeout, self.max_payload = topic, timeout, max_payload
        self.producer = Producer({**kafka_config, "acks": "all", "enable.idempotence": False,
                                  "linger.ms": 5, "compression.type": "zstd",
                                  "message.max.bytes": max_message_bytes})

    def send(self, letters: Sequence[DeadLetter]) -> list[str | None]:
        """Produce and wait for every acknowledgement. Returns, per letter, None (acknowledged) or the
        name of a permanent refusal; raises ``DeadLetterError`` on any other failure."""
        outcome: list[str | None] = [None] * len(letters)
        transient: list[KafkaError] = []

        def on_delivery(i: int) -> Any:
            def done(err: KafkaError | None, _msg: object) -> None:
                if err is None:
                    return
                if permanent(err.code()):
                    outcome[i] = err.name()
                else:
                    transient.append(err)
            return done

        for i, letter in enumerate(letters):
            o = letter.origin
            value, described = cut(letter.raw, self.max_payload)
            headers: list[tuple[str, str | bytes | None]] = [
                ("imtel-reason", letter.reason.encode()), ("imtel-detail", letter.detail.encode()),
                ("imtel-source-topic", o.topic.encode()), ("imtel-source-topic-id", o.topic_id.encode()),
                ("imtel-source-partition", str(o.partition).encode()),
                ("imtel-source-offset", str(o.offset).encode()), ("imtel-source-index", str(o.index).encode()),
                *described]
            if letter.replay:  # a replayed record that failed again (``ingest/replay.py``)
                headers.append((REPLAY_COUNT, str(letter.replay).encode()))
            try:
                produce_blocking(self.producer, self.topic, value, letter.key, wait=0.1, headers=headers,
                                 on_delivery=on_delivery(i))
            except KafkaException as exc:  # refused locally (e.g. larger than message.max.bytes)
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None or not permanent(err.code()):
                    raise DeadLetterError(f"dead-letter topic {self.topic}: {exc}") from exc
                outcome[i] = err.name()
        remaining = self.producer.flush(self.timeout)
        if remaining or transient:
            reason = transient[0].name() if transient else f"{remaining} not acknowledged in {self.timeout:.0f}s"
            raise DeadLetterError(f"dead-letter topic {self.topic}: {reason}")
        return outcome

    def close(self) -> None:
        self.producer.flush(5)
