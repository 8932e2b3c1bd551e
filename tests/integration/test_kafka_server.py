"""The real Apache Kafka broker of ``pipeline.dev.kafka_server``: fetched once, run from a kept data dir.

What the pipeline counts on from it, checked against the running broker: records and committed
offsets survive a controlled restart, acknowledged (acks=all) records survive ``kill -9``, a topic is
never created by producing to it, a 3-node cluster elects a new leader when the leader dies and takes
the old one back, and a broker that cannot start says why.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from pipeline.dev import embedded, kafka_server
from pipeline.dev.kafka_server import (
    FAST_START_JVM_OPTS,
    KafkaCluster,
    KafkaServer,
    KafkaStartError,
    KafkaUnavailable,
    partition_metadata,
)
from tests.support.kafka_io import RecordingProducer, committed, read_topic

pytestmark = pytest.mark.integration

from pipeline.dev.ports import free_port  # noqa: E402


@pytest.fixture
def node(tmp_path: Path) -> Iterator[KafkaServer]:
    """A single Kafka node of this test alone (to stop, kill and restart)."""
    server = KafkaServer(tmp_path / "kafka", jvm_opts=FAST_START_JVM_OPTS).start()
    yield server
    server.stop()


def create_topic(bootstrap: str, name: str, partitions: int = 1, replication: int = -1) -> None:
    """Create a topic (replication -1: the broker's default.replication.factor) and wait until the
    metadata shows a leader for every partition."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the result is in
    admin.create_topics([NewTopic(name, partitions, replication)], operation_timeout=30)[name].result(30)
    deadline = time.monotonic() + 30
    while True:
        parts = admin.list_topics(name, timeout=10).topics[name].partitions
        if len(parts) == partitions and all(p.leader >= 0 for p in parts.values()):
            return
        assert time.monotonic() < deadline, f"{name}: no leader for every partition in 30s"
        time.sleep(0.1)


def send(bootstrap: str, topic: str, values: list[bytes], **conf: object) -> RecordingProducer:
    """Produce ``values`` with acks=all and wait until each is acknowledged (fails otherwise)."""
    producer = RecordingProducer(bootstrap, **conf)
    for n, value in enumerate(values):
        producer.send(topic, value, str(n).encode(), value)
    producer.flush(60)
    return producer


def consume_in_group(bootstrap: str, topic: str, group: str, count: int,
                     timeout: float = 60.0) -> list[tuple[int, bytes]]:
    """Join ``group``, read ``count`` messages (offset, value), commit them synchronously, leave.

    ``auto.offset.reset=earliest``: a group whose commit was lost would start again at 0, which the
    caller sees."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    out: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count:
            assert time.monotonic() < deadline, f"read {len(out)} of {count} messages of {topic} in {timeout:.0f}s"
            for msg in consumer.consume(count - len(out), 0.5):
                assert msg.error() is None, msg.error()
                out.append((msg.offset() or 0, msg.value() or b""))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return out


def test_fetch_is_cached_and_has_the_broker_and_its_logging(node: KafkaServer) -> None:
    libs = kafka_server.ensure_kafka()
    names = {p.name for p in libs.iterdir()}
    assert f"kafka_2.13-{kafka_server.KAFKA_VERSION}.jar" in names
    assert any(n.startswith("log4j-slf4j-impl-") for n in names), "the broker would log nothing"
    assert libs == kafka_server.cache_root() / kafka_server.KAFKA_VERSION / "libs"
    assert "INFO [KafkaRaftServer nodeId=1] Kafka Server started" in node.log_path.read_text()


def test_concurrent_first_fetches_share_one_download(tmp_path: Path) -> None:
    """Two processes fetching into an empty cache at once (two xdist workers): both get the same
    complete dir, and no temporary download is left behind."""
    env = {**os.environ, "IMTEL_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "pipeline.dev.kafka_server", "fetch"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    dirs = {out.strip() for out, _ in outs}
    libs = tmp_path / "cache" / "kafka" / kafka_server.KAFKA_VERSION / "libs"
    assert dirs == {str(libs)}
    assert (libs / f"kafka_2.13-{kafka_server.KAFKA_VERSION}.jar").is_file()
    assert not list(libs.parent.glob(".fetch-*"))


def test_missing_java_or_maven_is_one_plain_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = shutil.which("java")
    assert java is not None
    monkeypatch.setenv("IMTEL_CACHE_DIR", str(tmp_path / "cache"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(KafkaUnavailable) as no_java:
        kafka_server.ensure_kafka()
    assert str(no_java.value) == "--broker kafka needs Java 17+ and Maven (mvn) on PATH: java not found"

    old_bin = tmp_path / "old-bin"  # a Java 11 (Kafka 4's broker needs 17)
    old_bin.mkdir()
    (old_bin / "java").write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    (old_bin / "java").chmod(0o755)
    monkeypatch.setenv("PATH", str(old_bin))
    with pytest.raises(KafkaUnavailable) as old_java:
        kafka_server.ensure_kafka()
    assert str(old_java.value) == "--broker kafka needs Java 17+ and Maven (mvn) on PATH: java is 11.0.22"

    monkeypatch.setenv("PATH", str(bin_dir))
    (bin_dir / "java").symlink_to(Path(java).resolve())
    with pytest.raises(KafkaUnavailable) as no_mvn:
        kafka_server.ensure_kafka()  # empty cache: needs Maven
    assert str(no_mvn.value) == "--broker kafka needs Java 17+ and Maven (mvn) on PATH: mvn not found"


def test_round_trip_and_no_topic_is_created_by_producing(node: KafkaServer) -> None:
    create_topic(node.bootstrap, "orders", partitions=3)
    values = [f"order-{n}".encode() for n in range(200)]
    producer = send(node.bootstrap, "orders", values)
    assert len(producer.placed) == 200 and {p.partition for p in producer.placed.values()} == {0, 1, 2}
    got = read_topic(node.bootstrap, "orders", at_least=200, settle=0.5)
    assert sorted(m.value or b"" for m in got) == sorted(values)
    assert {(m.partition, m.offset): m.value for m in got} == {
        (p.partition, p.offset): tag for tag, p in producer.placed.items()}

    # auto.create.topics.enable=false: a producer's metadata request must not create a topic (it
    # would get broker-default retention instead of the policy's)
    errors: list[KafkaError | None] = []
    p = Producer({"bootstrap.servers": node.bootstrap, "message.timeout.ms": 3000})
    p.produce("typo-topic", b"x", on_delivery=lambda err, _msg: errors.append(err))
    p.flush(15)
    assert errors and errors[0] is not None
    assert "typo-topic" not in AdminClient({"bootstrap.servers": node.bootstrap}).list_topics(timeout=10).topics


def test_restart_keeps_records_and_committed_offsets(node: KafkaServer) -> None:
    create_topic(node.bootstrap, "events")
    send(node.bootstrap, "events", [f"e{n}".encode() for n in range(50)])
    first = consume_in_group(node.bootstrap, "events", "readers", 20)
    assert [o for o, _ in first] == list(range(20))
    cluster_id, port = node.cluster_id, node.port

    node.restart()  # SIGTERM, then the same dir and ports again
    assert (node.cluster_id, node.port) == (cluster_id, port)
    assert committed(node.bootstrap, "readers", {"events": 1}) == {("events", 0): 20}
    rest = consume_in_group(node.bootstrap, "events", "readers", 30)
    assert rest == [(n, f"e{n}".encode()) for n in range(20, 50)]

    # a new server object on the same dir (new ports, as `run --data DIR` after a reboot) has it all too
    node.stop()
    again = KafkaServer(node.data_dir, jvm_opts=FAST_START_JVM_OPTS).start()
    try:
        assert again.port != port and again.cluster_id == cluster_id
        assert committed(again.bootstrap, "readers", {"events": 1}) == {("events", 0): 50}
        assert len(read_topic(again.bootstrap, "events", at_least=50, settle=0.5)) == 50
    finally:
        again.stop()


def test_kill_9_keeps_every_acknowledged_record(node: KafkaServer) -> None:
    create_topic(node.bootstrap, "acked", partitions=2)
    producer = send(node.bootstrap, "acked", [f"a{n}".encode() for n in range(2000)])
    ends = producer.end_offsets("acked")

    node.kill()
    assert node.proc is not None and node.proc.returncode == -signal.SIGKILL
    node.start()  # log recovery after an unclean shutdown

    got = read_topic(node.bootstrap, "acked", at_least=2000, settle=0.5)
    assert {(m.partition, m.offset): m.value for m in got} == {
        (p.partition, p.offset): tag for tag, p in producer.placed.items()}
    # the log goes on right after the last acknowledged record: nothing lost, nothing overwritten
    after = send(node.bootstrap, "acked", [f"after{n}".encode() for n in range(50)])
    for partition in {p.partition for p in after.placed.values()}:
        assert min(p.offset for p in after.placed.values() if p.partition == partition) == ends[partition]


def test_a_broker_that_cannot_start_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        port = free_port()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        server = KafkaServer(tmp_path / "kafka", port=port, jvm_opts=FAST_START_JVM_OPTS)
        with pytest.raises(KafkaStartError) as exc:
            server.start(timeout=60)
    assert "exited" in str(exc.value) and "Address already in use" in str(exc.value)
    assert not server.running


def test_cli_runs_a_node_until_it_is_told_to_stop(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.dev.kafka_server", "run", "--data", str(tmp_path / "k"),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"ready at 127.0.0.1:{port}" in line, line
        assert AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10).brokers
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not embedded.port_open("127.0.0.1", port), "the broker outlived its CLI"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cluster_elects_a_new_leader_and_takes_the_old_one_back(tmp_path: Path) -> None:
    cluster = KafkaCluster(3, tmp_path / "cluster").start()
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        create_topic(cluster.bootstrap, "replicated")  # the cluster's defaults: RF 3, min ISR 2
        part = partition_metadata(admin, "replicated", 0)
        assert sorted(part.replicas) == [1, 2, 3]
        res = ConfigResource(ConfigResource.Type.TOPIC, "replicated")
        assert admin.describe_configs([res])[res].result(10)["min.insync.replicas"].value == "2"

        before = send(cluster.bootstrap, "replicated", [b"before"])
        leader = cluster.leader_of("replicated", 0)
        cluster.kill(leader)
        after = send(cluster.bootstrap, "replicated", [b"after"])  # acks=all: 2 replicas in sync
        new_leader = cluster.leader_of("replicated", 0)
        assert new_leader != leader
        assert after.placed[b"after"].offset == before.placed[b"before"].offset + 1

        cluster.start_node(leader)
        deadline = time.monotonic() + 30
        while len(partition_metadata(admin, "replicated", 0).isrs) < 3:
            assert time.monotonic() < deadline, "the restarted node did not catch up into the ISR"
            time.sleep(0.3)
        got = read_topic(cluster.bootstrap, "replicated", at_least=2, settle=0.3)
        assert [m.value for m in sorted(got, key=lambda m: m.offset)] == [b"before", b"after"]
    finally:
        cluster.stop()
    assert not any(node.running for node in cluster.nodes)


def test_high_watermark_is_exact(node: KafkaServer) -> None:
    """Unlike the bundled broker's (DESIGN §3): after N acknowledged records in one partition it is N."""
    create_topic(node.bootstrap, "hw")
    send(node.bootstrap, "hw", [b"x"] * 37)
    consumer = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "hw-probe"})
    try:
        assert consumer.get_watermark_offsets(TopicPartition("hw", 0), timeout=10) == (0, 37)
    finally:
        consumer.close()
