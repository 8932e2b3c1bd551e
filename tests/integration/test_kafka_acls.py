"""The Kafka ACL model of k8s/ on a real broker: a forged registry update is denied.

The KafkaUsers in k8s/base/kafka/user.yaml are the authorization model (Strimzi's User Operator turns
them into broker ACLs). This test loads *exactly* those ACLs, parsed from the manifest, into a real
Apache Kafka 4.x node with SASL/SCRAM users and the StandardAuthorizer, then checks what matters: the
worker's principal cannot publish an application registry update (one with ``retention_days=1`` would
make the workers delete that app's data), the registry admin's update goes through, and the worker still
does its job (writes dead letters, consumes its topics in its group).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from pipeline.config.settings import Settings
from pipeline.dev.kafka_server import KafkaServer
from pipeline.ops import registry
from tests.support.brokers import scram_kafka

ROOT = Path(__file__).resolve().parents[2]
USERS_YAML = ROOT / "k8s" / "base" / "kafka" / "user.yaml"
WORKER, REGISTRY_ADMIN, SUPER = "imtel-worker", "imtel-registry-admin", "admin"
# SCRAM passwords of this throwaway broker only.
PASSWORDS = {SUPER: "super-" + uuid.uuid4().hex, WORKER: "worker-" + uuid.uuid4().hex,
             REGISTRY_ADMIN: "registry-" + uuid.uuid4().hex}
TOPICS = Settings()  # the topic and group names the ConfigMap sets are these defaults (test_k8s checks)


def kafka_users() -> dict[str, list[dict[str, Any]]]:
    """KafkaUser name -> its ``spec.authorization.acls``, straight from the manifest."""
    docs = [d for d in yaml.safe_load_all(USERS_YAML.read_text()) if d and d["kind"] == "KafkaUser"]
    return {d["metadata"]["name"]: d["spec"]["authorization"]["acls"] for d in docs}


def acl_bindings(user: str, acls: list[dict[str, Any]]) -> list[AclBinding]:
    """Strimzi's translation of ``simple`` ACLs: one binding per operation; defaults literal pattern,
    host ``*``, type allow; the cluster resource is named ``kafka-cluster``."""
    out = []
    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER,
             "transactionalId": ResourceType.TRANSACTIONAL_ID}  # librdkafka calls Kafka's CLUSTER "BROKER"
    for acl in acls:
        res = acl["resource"]
        kind = kinds[res["type"]]
        name = "kafka-cluster" if res["type"] == "cluster" else res["name"]
        pattern = ResourcePatternType.PREFIXED if res.get("patternType") == "prefix" else ResourcePatternType.LITERAL
        permission = AclPermissionType.DENY if acl.get("type") == "deny" else AclPermissionType.ALLOW
        for op in acl.get("operations") or [acl["operation"]]:
            operation = AclOperation[re.sub(r"(?<!^)(?=[A-Z])", "_", op).upper()]  # IdempotentWrite -> IDEMPOTENT_WRITE
            out.append(AclBinding(kind, name, pattern, f"User:{user}", acl.get("host", "*"), operation, permission))
    return out


def client_config(server: KafkaServer, sasl_port: int, user: str) -> dict[str, Any]:
    return {"bootstrap.servers": f"127.0.0.1:{sasl_port}", "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": PASSWORDS[user]}


def settings_for(sasl_port: int, user: str) -> Settings:
    return Settings(kafka_bootstrap=f"127.0.0.1:{sasl_port}", kafka_security_protocol="SASL_PLAINTEXT",
                    kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=user,
                    kafka_sasl_password=PASSWORDS[user])


@pytest.fixture(scope="module")
def acl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaServer, int]]:
    """A real Kafka node: clients on a SASL_PLAINTEXT/SCRAM listener, ACLs enforced (no ACL = denied).

    The broker's own traffic (inter-broker on PLAINTEXT, the controller listener) stays unauthenticated
    on loopback, so its principal is ``User:ANONYMOUS``, which must be a super user or the node cannot
    register with its own controller. That is safe here: ANONYMOUS only ever arises on listeners without
    authentication, and every client of this test uses the SASL listener, where each connection is an
    authenticated SCRAM user. (Strimzi does the same with mTLS on its replication listener.)"""
    server, sasl_port = scram_kafka(tmp_path_factory.mktemp("acl-kafka"), PASSWORDS, {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{SUPER};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",  # Kafka's default, stated: the model is deny-by-default
    })
    server.start()
    try:
        admin = AdminClient(client_config(server, sasl_port, SUPER))
        names = [TOPICS.topic_request_logs, TOPICS.topic_monitoring_samples, TOPICS.topic_dead_letters,
                 TOPICS.topic_applications]
        for fut in admin.create_topics([NewTopic(n, 1, 1) for n in names], operation_timeout=15).values():
            fut.result()
        bindings = [b for user, acls in kafka_users().items() for b in acl_bindings(user, acls)]
        for fut in admin.create_acls(bindings, request_timeout=15).values():
            fut.result()
        _wait_for_acls(admin, len(bindings))
        yield server, sasl_port
    finally:
        server.stop()


def _wait_for_acls(admin: AdminClient, expected: int, timeout: float = 15.0) -> None:
    """CreateAcls returns once the controller accepted them; the broker's authorizer applies them from
    the metadata log a moment later, and a check before that would test the empty ACL set."""
    any_acl = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                               AclPermissionType.ANY)
    deadline = time.monotonic() + timeout
    while len(admin.describe_acls(any_acl, request_timeout=10).result()) < expected:
        assert time.monotonic() < deadline, "the broker did not report the ACLs it was given"
        time.sleep(0.2)


def produce(config: dict[str, Any], topic: str, value: bytes, timeout: float = 15.0) -> KafkaError | None:
    """Send one record; the delivery error (None when acknowledged)."""
    result: list[KafkaError | None] = []
    producer = Producer({**config, "acks": "all", "message.timeout.ms": int(timeout * 1000)})
    producer.produce(topic, key=b"1400000001", value=value, on_delivery=lambda err, _msg: result.append(err))
    assert producer.flush(timeout + 5) == 0
    return result[0]


def test_the_manifest_acls_are_what_this_test_loads() -> None:
    """The worker may write exactly one topic, dead letters; only the registry admin writes the registry."""
    users = kafka_users()
    assert set(users) == {WORKER, REGISTRY_ADMIN}
    writers = {user: {b.name for b in acl_bindings(user, acls)
                      if b.operation in (AclOperation.WRITE, AclOperation.ALL) and b.restype == ResourceType.TOPIC
                      and b.resource_pattern_type == ResourcePatternType.LITERAL}
               for user, acls in users.items()}
    assert writers == {WORKER: {TOPICS.topic_dead_letters}, REGISTRY_ADMIN: {TOPICS.topic_applications}}
    # No prefix grant with write rights may cover the registry topic (e.g. "im-" would).
    for user, acls in users.items():
        for b in acl_bindings(user, acls):
            if b.resource_pattern_type == ResourcePatternType.PREFIXED and b.operation in (AclOperation.WRITE,
                                                                                             AclOperation.ALL):
                assert not TOPICS.topic_applications.startswith(b.name), (user, b)


def test_a_forged_registry_update_from_the_worker_is_denied(acl_kafka: tuple[KafkaServer, int]) -> None:
    server, sasl_port = acl_kafka
    forged = registry.AppUpdate(sdk_app_id=1400000001, name="forged", retention_days=1)
    with pytest.raises(RuntimeError, match=r"[Aa]uthorization"):
        registry.publish(settings_for(sasl_port, WORKER), forged, timeout=15)
    err = produce(client_config(server, sasl_port, WORKER), TOPICS.topic_applications, b"{}")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # ... and the worker cannot inject into the raw topics either.
    err = produce(client_config(server, sasl_port, WORKER), TOPICS.topic_request_logs, b"{}")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_the_registry_admin_publishes_and_the_worker_does_its_job(acl_kafka: tuple[KafkaServer, int]) -> None:
    server, sasl_port = acl_kafka
    update = registry.AppUpdate(sdk_app_id=1400000002, name="real app", retention_days=3)
    registry.publish(settings_for(sasl_port, REGISTRY_ADMIN), update, timeout=15)
    # The registry admin writes the registry and nothing else.
    err = produce(client_config(server, sasl_port, REGISTRY_ADMIN), TOPICS.topic_dead_letters, b"x")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err

    worker = client_config(server, sasl_port, WORKER)
    assert produce(worker, TOPICS.topic_dead_letters, b'{"reason": "test"}') is None
    super_user = client_config(server, sasl_port, SUPER)  # stands in for the producers of raw records
    assert produce(super_user, TOPICS.topic_request_logs, b'{"log": 1}') is None
    assert produce(super_user, TOPICS.topic_monitoring_samples, b'{"sample": 1}') is None

    # The worker's consumer, as the worker configures it (group, KIP-848 protocol), on its three topics.
    consumer = Consumer({**worker, "group.id": TOPICS.consumer_group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, **TOPICS.group_protocol_config()})
    topics = {TOPICS.topic_request_logs, TOPICS.topic_monitoring_samples, TOPICS.topic_applications}
    got: dict[str, list[bytes]] = {}
    try:
        consumer.subscribe(sorted(topics))
        deadline = time.monotonic() + 25
        while set(got) != topics and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert not msg.error(), msg.error()
            got.setdefault(msg.topic(), []).append(msg.value())
        consumer.commit(asynchronous=False)  # committing offsets needs Read on the group: granted
    finally:
        consumer.close()
    assert set(got) == topics, f"consumed only {sorted(got)}"
    # The admin's update is in the registry; the forged one never reached the topic.
    registry_values = got[TOPICS.topic_applications]
    assert any(b"real app" in v for v in registry_values)
    assert not any(b"forged" in v for v in registry_values)
