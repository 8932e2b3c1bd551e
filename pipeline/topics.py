"""The pipeline's Kafka topics: names from settings, ``retention.ms`` from the policy file.

Topics that hold personal data (raw request logs; dead letters, which keep original bytes with full
IPs) are created with a retention no longer than the policy allows for what they carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .policy import Policy, load_policy
from .settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    """A topic the pipeline owns."""

    logical: str  # request_logs, monitoring_samples, dead_letters, applications
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings, policy: Policy | None = None) -> list[TopicSpec]:
    """Every topic with its partitions and configs (retention.ms from the policy)."""
    retention = (policy or load_policy()).topic_retention_ms()
    names = {"request_logs": settings.topic_request_logs, "monitoring_samples": settings.topic_monitoring_samples,
             "dead_letters": settings.topic_dead_letters, "applications": settings.topic_applications}
    specs = []
    for logical, name in names.items():
        config = {"cleanup.policy": "delete"}
        if logical == "applications":
            config = {"cleanup.policy": "compact"}  # registry: latest state per app; rows expire in ClickHouse
        else:
            config["retention.ms"] = str(retention[logical])
        partitions = 1 if logical == "applications" else settings.topic_partitions
        specs.append(TopicSpec(logical, name, partitions, config))
    return specs


def ensure_topics(settings: Settings, timeout: float = 10.0) -> list[str]:
    """Create missing topics; returns the names created now. Existing topics are left as they are
    (the retention audit reports drift instead of silently rewriting an operator's change)."""
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [s for s in topic_specs(settings) if s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, settings.topic_replication, config=s.config) for s in wanted],
        operation_timeout=timeout)
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
