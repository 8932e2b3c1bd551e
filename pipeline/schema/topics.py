"""The pipeline's Kafka topics: names from settings, ``retention.ms`` from the policy file.

Every topic holds personal data of some category (raw request logs and samples; dead letters, which
keep original bytes with full IPs; application configurations), so each is created with
``cleanup.policy`` including ``delete``, ``segment.ms`` from the policy (Kafka deletes whole segments)
and ``retention.ms`` = the category's limit minus that headroom: the worst case stays within the
policy. Every topic gets the same ``max.message.bytes`` (``IMTEL_MAX_MESSAGE_BYTES``). The registry
topic is ``compact,delete``: latest state per app, and a terminated app's last record is gone within
the Configuration Data limit after it was written.

``ensure_topics`` only creates missing topics (a worker never rewrites an operator's change
silently); ``reconcile_topics`` (``imtel topics``) sets the configs of existing topics back to these
values; ``describe_topics`` reads them for the retention audit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from pipeline.config.policy import Policy, load_policy
from pipeline.config.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    """A topic the pipeline owns."""

    logical: str  # request_logs, monitoring_samples, dead_letters, applications
    name: str
    partitions: int
    config: dict[str, str]


class KafkaSetupError(KafkaException):
    """Kafka cannot be used as configured (refused credentials, unreachable): one clear sentence that
    names the settings to check and never the secret. A ``KafkaException``, so callers that retry on
    Kafka errors keep doing so."""


def _admin(settings: Settings) -> tuple[AdminClient, list[KafkaError]]:
    """An admin client whose librdkafka logs go to Python logging (not raw stderr) and whose client
    errors (e.g. a refused SASL login, which librdkafka only reports this way) are collected."""
    errors: list[KafkaError] = []
    conf: dict[str, Any] = {**settings.kafka_config(), "error_cb": errors.append}
    return AdminClient(conf, logger=logging.getLogger("imtel.kafka")), errors


def _list_topics(admin: AdminClient, errors: list[KafkaError], settings: Settings, timeout: float) -> Any:
    """``list_topics`` that fails fast, and clearly, when the broker refuses the credentials."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if any(e.code() == KafkaError._AUTHENTICATION for e in errors):
                raise KafkaSetupError(
                    f"Kafka at {settings.kafka_bootstrap} refused the {settings.kafka_sasl_mechanism} login of user "
                    f"{settings.kafka_sasl_username!r}; check IMTEL_KAFKA_SASL_USERNAME and IMTEL_KAFKA_SASL_PASSWORD "
                    "(or _FILE)") from None
            if time.monotonic() >= deadline:
                reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
                raise KafkaSetupError(f"cannot reach Kafka at {settings.kafka_bootstrap} within {timeout:.0f}s "
                                      f"({reason}; security protocol {settings.kafka_security_protocol})") from None


def topic_names(settings: Settings) -> dict[str, str]:
    """Logical topic -> configured topic name."""
    return {"request_logs": settings.topic_request_logs, "monitoring_samples": settings.topic_monitoring_samples,
            "dead_letters": settings.topic_dead_letters, "applications": settings.topic_applications}


def topic_specs(settings: Settings, policy: Policy | None = None) -> list[TopicSpec]:
    """Every topic with its partitions and configs (retention.ms and segment.ms from the policy)."""
    policy = policy or load_policy()
    retention = policy.topic_retention_ms()
    specs = []
    for logical, name in topic_names(settings).items():
        # registry: latest state per app (compact) and nothing older than the Configuration Data limit
        cleanup = "compact,delete" if logical == "applications" else "delete"
        # the same max.message.bytes on every topic (a real broker's default is 1 MB): whatever it
        # accepts on one topic, the worker and its dead-letter producer handle (pipeline/ingest/limits.py)
        config = {"cleanup.policy": cleanup, "retention.ms": str(retention[logical]),
                  "segment.ms": str(policy.kafka.segment_ms), "max.message.bytes": str(settings.max_message_bytes)}
        partitions = 1 if logical == "applications" else settings.topic_partitions
        specs.append(TopicSpec(logical, name, partitions, config))
    return specs


def ensure_topics(settings: Settings, timeout: float = 10.0, policy: Policy | None = None) -> list[str]:
    """Create missing topics; returns the names created now. Existing topics are left as they are
    (the retention audit reports drift; ``reconcile_topics`` is the explicit way to fix it)."""
    admin, errors = _admin(settings)
    existing = set(_list_topics(admin, errors, settings, timeout).topics)
    wanted = [s for s in topic_specs(settings, policy) if s.name not in existing]
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


def describe_topics(settings: Settings, names: list[str], timeout: float = 10.0) -> dict[str, dict[str, str] | None]:
    """Topic -> the configs the broker reports (None: the topic does not exist).

    A real Kafka reports every config with its effective value (defaults included); the bundled
    broker reports only the configs a topic was created or altered with, so an absent key means
    "broker default", which the audit must not take for compliance."""
    admin, errors = _admin(settings)
    existing = set(_list_topics(admin, errors, settings, timeout).topics)
    present = [n for n in names if n in existing]
    out: dict[str, dict[str, str] | None] = {n: None for n in names if n not in existing}
    if present:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, n) for n in present],
                                         request_timeout=timeout)
        for resource, future in futures.items():
            entries = future.result(timeout=timeout)
            out[resource.name] = {k: str(v.value) for k, v in entries.items() if v.value is not None}
    return out


def reconcile_topics(settings: Settings, policy: Policy | None = None, timeout: float = 10.0) -> list[str]:
    """Set the configs of existing pipeline topics back to ``topic_specs`` (incremental alter, so
    other configs are untouched); returns one line per changed topic (``name: key old -> new``)."""
    specs = topic_specs(settings, policy)
    actual = describe_topics(settings, [s.name for s in specs], timeout)
    changes, resources = [], []
    for spec in specs:
        have = actual.get(spec.name)
        if have is None:
            continue
        diff = {k: v for k, v in spec.config.items() if have.get(k) != v}
        if not diff:
            continue
        resources.append(ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diff.items()]))
        changes.append(f"{spec.name}: " + ", ".join(f"{k} {have.get(k, 'unset')} -> {v}" for k, v in diff.items()))
    if resources:
        admin = AdminClient(settings.kafka_config())  # keep a reference: the futures need a live handle
        for future in admin.incremental_alter_configs(resources, request_timeout=timeout).values():
            future.result(timeout=timeout)
    return changes


def oldest_record_ages(settings: Settings, names: list[str], timeout: float = 10.0,
                       now_ms: int | None = None) -> dict[str, float | None]:
    """Topic -> age in seconds of the oldest record it still stores (None: empty), read from the record
    at each partition's low watermark. Retention configs say what the broker was told; this says what it
    did: a record older than the policy here means segments are not being deleted."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    if not names:
        return {}
    consumer = Consumer({**settings.kafka_config(), "group.id": f"imtel-audit-{time.time_ns()}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "fetch.max.bytes": 1 << 20, "max.partition.fetch.bytes": 1 << 20},
                        logger=logging.getLogger("imtel.kafka"))
    try:
        metadata = consumer.list_topics(timeout=timeout)
        parts = [TopicPartition(n, p, OFFSET_BEGINNING) for n in names if n in metadata.topics
                 for p in metadata.topics[n].partitions]
        oldest: dict[str, float | None] = {n: None for n in names}
        consumer.assign(parts)
        waiting, deadline = {(tp.topic, tp.partition) for tp in parts}, time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for msg in consumer.consume(len(waiting), 0.5):
                key = (msg.topic(), msg.partition())
                if key not in waiting:
                    continue
                waiting.discard(key)  # the first record (or the end) of this partition
                kind, ts = msg.timestamp() if msg.error() is None else (0, 0)
                if kind and ts > 0:
                    age = ((now_ms if now_ms is not None else time.time() * 1000) - ts) / 1000
                    oldest[key[0]] = max(age, oldest[key[0]] or 0.0)
        if waiting:
            raise KafkaSetupError(f"could not read the first record of {len(waiting)} partitions in {timeout:.0f}s")
        return oldest
    finally:
        consumer.close()
