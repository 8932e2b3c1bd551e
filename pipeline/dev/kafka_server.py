"""A real Apache Kafka broker (KRaft, loopback) for integration tests, the benchmark and ``--broker kafka``.

Production runs Apache Kafka; the bundled Tansu broker (``pipeline.dev.embedded``) only looks like it
(no retention, no compaction, memory only). Kafka's jars come from Maven Central, the one
place this project's machines may fetch Java code from: ``ensure_kafka`` resolves ``kafka_2.13`` and
its runtime dependencies once with ``mvn`` and caches them per version, so every later start is
``java -cp libs/* kafka.Kafka server.properties`` with no network at all.

``KafkaServer`` is one combined broker+controller node (``process.roles=broker,controller``) whose
data survives ``stop``/``kill`` and ``start`` again; ``KafkaCluster`` is three such nodes sharing one
controller quorum, for replication and leader failover. Both keep the JVM small (a 2-core machine runs
a worker, ClickHouse and a broker at once) and log only to a file in their data dir.

``python -m pipeline.dev.kafka_server fetch`` prints the jar dir; ``... run --data DIR`` runs one node in
the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.dev.ports import free_port, port_open

# 4.4.0 is the newest 4.x on Maven Central, and every class of it and of its dependencies is Java 17
# bytecode (checked: class-file major version 61 throughout), so it runs on the Java 17 here.
KAFKA_VERSION = "4.4.0"
# The log4j 2 release kafka-server 4.4.0 itself depends on (log4j-core), plus the binding the Kafka
# distribution ships for its slf4j 1.7 API (log4j-slf4j-impl): without it the broker logs nothing.
LOG4J_VERSION = "2.25.5"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"  # what bin/kafka-storage.sh runs; part of kafka_2.13
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"  # pinned: same on any Maven

# -Xms/-Xmx as KAFKA_HEAP_OPTS would set them: the broker needs little heap for test traffic, and
# three of them plus a worker and ClickHouse must fit one small machine.
DEFAULT_HEAP_OPTS = "-Xms256m -Xmx512m"
# SerialGC: one GC thread instead of G1's pool and no concurrent marking stealing a core from the
# code under test; pauses on a <=512 MB heap are a few ms.
JVM_OPTS: tuple[str, ...] = ("-XX:+UseSerialGC", "-XX:-UsePerfData", "-XX:+ExitOnOutOfMemoryError",
                             "-Djava.awt.headless=true")
# C1 only: a start costs 1.7 CPU-s instead of 2.9 (C2 compiles hot code for seconds) and is ready
# ~0.5 s sooner, produce is as fast, but a consumer reads ~25% slower (measured on 2 cores: 3M
# 250-byte records, ~280k/s vs ~340k/s). For tests that start brokers often; not for the benchmark.
FAST_START_JVM_OPTS: tuple[str, ...] = (*JVM_OPTS, "-XX:TieredStopAtLevel=1")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

log = logging.getLogger("imtel.kafka_server")


class KafkaUnavailable(RuntimeError):
    """Kafka cannot be fetched or run on this machine (no Java 17+, no Maven, Maven failed)."""


class KafkaStartError(RuntimeError):
    """A broker exited or did not become ready; the message ends with the tail of its log."""


# --------------------------------------------------------------------------------------------- fetch

def cache_root() -> Path:
    """Where fetched Kafka versions live: ``$IMTEL_CACHE_DIR/kafka`` or ``~/.cache/imtel/kafka``."""
    base = os.environ.get("IMTEL_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "imtel") / "kafka"


def _need(tool: str) -> str:
    """Path of ``tool`` on PATH, or the one-sentence reason Kafka cannot be used."""
    path = shutil.which(tool)
    if path is None:
        raise KafkaUnavailable(f"--broker kafka needs Java 17+ and Maven (mvn) on PATH: {tool} not found")
    return path


@functools.cache
def _java_version(java: str) -> str:
    """What ``java -version`` says its version is ("17.0.15", "1.8.0_392"; "unknown")."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    m = re.search(r'version "([^"]+)"', out)
    return m[1] if m else "unknown"


def java_binary() -> str:
    """The ``java`` to run Kafka with, checked to be 17 or newer (Kafka 4 brokers need 17)."""
    java = _need("java")
    version = _java_version(java)
    parts = re.findall(r"\d+", version)
    major = int(parts[1] if parts[:1] == ["1"] and len(parts) > 1 else parts[0]) if parts else 0
    if major < 17:
        raise KafkaUnavailable(f"--broker kafka needs Java 17+ and Maven (mvn) on PATH: java is {version}")
    return java


def _pom(version: str) -> str:
    """A throwaway project whose runtime dependencies are exactly the broker's classpath."""
    deps = [("org.apache.kafka", "kafka_2.13", version),
            ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION)]
    xml = "".join(f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version>"
                  "</dependency>" for g, a, v in deps)
    return ('<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            "<groupId>imtel</groupId><artifactId>kafka-libs</artifactId><version>1</version>"
            f"<packaging>pom</packaging><dependencies>{xml}</dependencies></project>\n")


def _complete(libs: Path, version: str) -> bool:
    """A libs dir is only ever created by a rename of a finished download; the broker jar in it is the
    check that nobody emptied it since."""
    return (libs / f"kafka_2.13-{version}.jar").is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (two pytest-xdist workers fetching at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _maven_copy(version: str, work: Path) -> Path:
    """Run Maven in ``work``; returns the dir it copied the jars to. Maven's download chatter stays in
    a pipe and only its tail reaches the error, so a fetch never floods a test's output."""
    mvn = _need("mvn")
    (work / "pom.xml").write_text(_pom(version))
    out = work / "libs"
    cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(work / "pom.xml"),
           f"{DEPENDENCY_PLUGIN}:copy-dependencies", f"-DoutputDirectory={out}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not _complete(out, version):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise KafkaUnavailable(f"Maven could not fetch Kafka {version} (exit {proc.returncode}):\n{tail}")
    return out


def ensure_kafka(version: str = KAFKA_VERSION) -> Path:
    """The directory of Kafka ``version``'s jars (classpath ``dir/*``), fetched on first use.

    The download goes to a temp dir beside the cache and is renamed into place whole, under a lock:
    a reader never sees half a classpath, and concurrent callers fetch once."""
    java_binary()
    home = cache_root() / version
    libs = home / "libs"
    if _complete(libs, version):
        return libs
    with _locked(home / ".lock"):
        if _complete(libs, version):
            return libs
        shutil.rmtree(libs, ignore_errors=True)  # a dir someone emptied
        with tempfile.TemporaryDirectory(dir=home, prefix=".fetch-") as tmp:
            _maven_copy(version, Path(tmp)).rename(libs)
    return libs


# ----------------------------------------------------------------------------------------------- run

# Console output goes to the log file the process's stdout is redirected to; that file also gets
# anything the JVM prints before log4j starts (a bad flag, a crash).
_LOG4J = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
"""

# Broker settings for tests that still behave like production (each is a real Kafka setting).
BASE_CONFIG: dict[str, str] = {
    # The pipeline creates its topics itself with retention from the policy (topics.ensure_topics,
    # `imtel topics`); auto-creation would let a producer's metadata request create a topic with
    # broker-default retention and hide the retention audit's "topic does not exist". Production
    # clusters run with it off, and so do these.
    "auto.create.topics.enable": "false",
    "group.initial.rebalance.delay.ms": "0",  # a first join waits 3 s by default: only slows tests
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Retention and compaction must be visible within a test: check every 5 s (default 5 min), wait
    # 1 s before a cleaner pass (default 15 s) and before a deleted segment's files go (default 60 s).
    "log.retention.check.interval.ms": "5000",
    "log.cleaner.backoff.ms": "1000",
    "log.segment.delete.delay.ms": "1000",
    # A node killed -9 can register again only once the controller expired its old session (until
    # then: DUPLICATE_BROKER_REGISTRATION), and a dead leader is replaced only then too: 4 s instead
    # of 9 s, heartbeats every 1 s instead of 2 s (about the defaults' ratio, so a busy 2-core machine
    # still does not fence a live broker).
    "broker.session.timeout.ms": "4000",
    "broker.heartbeat.interval.ms": "1000",
    # The cleaner's key map is allocated on the heap at start-up (default 128 MB): 32 MB compacts
    # ~1M distinct keys per pass, far more than a test writes, and keeps the heap small.
    "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
}


def new_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes one (URL-safe base64 of 16 random bytes),
    without starting a JVM; never starting with '-', which a command line would take for an option."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def partition_metadata(admin: Any, topic: str, partition: int, timeout: float = 30.0) -> Any:
    """``topic``/``partition`` as ``admin``'s broker reports it, once it has a leader there. Waits while
    it has none (an election) and while that broker does not list it yet: brokers learn of a new
    topic asynchronously, so one other than the broker that created it may list the topic without
    its partitions for a moment. A broker that is restarting is asked again."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            meta = admin.list_topics(topic, timeout=2.0).topics[topic]
            part = meta.partitions.get(partition) if meta.error is None else None
            if part is not None and part.leader >= 0:
                return part
        except KafkaException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}[{partition}] has no leader after {timeout:.0f}s")
        time.sleep(0.2)


def _admin(bootstrap: str) -> Any:
    """An AdminClient that retries a not-yet-listening broker every ~0.2 s (librdkafka backs off up to
    10 s by default) and logs to Python logging rather than our stderr."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "reconnect.backoff.ms": 100,
                        "reconnect.backoff.max.ms": 250, "socket.connection.setup.timeout.ms": 3000},
                       logger=logging.getLogger("imtel.kafka_server.admin"))


def _live_brokers(admin: Any) -> set[int]:
    """Node ids of the brokers the cluster metadata lists now (empty while nobody answers)."""
    from confluent_kafka import KafkaException

    try:
        return set(admin.list_topics(timeout=1.0).brokers)
    except KafkaException:
        return set()


def _java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` for ASCII text (one UTF-16 unit per character)."""
    h = 0
    for ch in text:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


@functools.cache
def _probe_groups(partitions: int) -> tuple[str, ...]:
    """One group id per ``__consumer_offsets`` partition: Kafka puts group ``g`` on partition
    ``Utils.abs(g.hashCode()) % partitions`` (Utils.abs maps Integer.MIN_VALUE to 0)."""
    found: dict[int, str] = {}
    k = 0
    while len(found) < partitions:
        group, k = f"imtel-ready-probe-{k}", k + 1
        h = _java_string_hash(group)
        found.setdefault((0 if h == -(1 << 31) else abs(h)) % partitions, group)
    return tuple(found.values())


def _coordinator_answers(bootstrap: str, group: str) -> bool:
    """Whether ``group``'s coordinator answers an OffsetFetch (reading offsets creates no group)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "socket.connection.setup.timeout.ms": 3000},
                        logger=logging.getLogger("imtel.kafka_server.probe"))
    try:
        consumer.committed([TopicPartition("__consumer_offsets", 0)], timeout=5)
        return True
    except KafkaException:
        return False
    finally:
        consumer.close()


def _groups_ready(admin: Any, bootstrap: str) -> bool:
    """Whether every group coordinator (one per ``__consumer_offsets`` partition) answers.

    A broker is listed in metadata seconds before it has taken over and loaded those partitions
    (longer on a busy machine); until then a client asking for committed offsets gets NOT_COORDINATOR,
    which a consumer's group join retries but a one-shot ``Consumer.committed`` does not. The probe is
    a consumer per partition, 10 at a time (~0.4 s for 50): the AdminClient's
    ``list_consumer_group_offsets`` would be lighter, but librdkafka 2.16 crashes on exactly that
    error there (a NULL consumer group in ``rd_kafka_handle_OffsetFetch``)."""
    from confluent_kafka import KafkaException

    try:
        meta = admin.list_topics(timeout=1.0)
    except KafkaException:
        return False
    offsets = meta.topics.get("__consumer_offsets")
    if offsets is None:
        return True  # created with the first consumer group
    if offsets.error is not None or not offsets.partitions or any(
            p.leader not in meta.brokers for p in offsets.partitions.values()):
        return False
    with ThreadPoolExecutor(10) as pool:
        answers = pool.map(functools.partial(_coordinator_answers, bootstrap), _probe_groups(len(offsets.partitions)))
        return all(list(answers))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (Linux), so a crashed
    test session or a killed ``imtel embedded`` leaves no broker running behind it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class KafkaServer:
    """One Kafka node (broker + controller) with its data, config and log in ``data_dir``.

    The ports are chosen once (``pipeline.dev.ports.free_port``) and kept, so ``restart`` and
    ``kill`` + ``start`` bring the same node back where clients look for it."""

    def __init__(self, data_dir: Path | str, *, port: int | None = None, controller_port: int | None = None,
                 extra: Mapping[str, str] | None = None, heap_opts: str = DEFAULT_HEAP_OPTS,
                 jvm_opts: Sequence[str] = JVM_OPTS, version: str = KAFKA_VERSION, node_id: int = 1,
                 voters: str | None = None, cluster_id: str | None = None, log_level: str = "INFO",
                 format_args: Sequence[str] = ()) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.node_id, self.version, self.heap_opts, self.log_level = node_id, version, heap_opts, log_level
        self.jvm_opts = tuple(jvm_opts)
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.extra = dict(extra or {})
        self.format_args = tuple(format_args)  # e.g. --add-scram: SCRAM users exist from the first start
        self._cluster_id = cluster_id
        self.proc: subprocess.Popen[bytes] | None = None

    # paths and settings
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        """Kafka's ``log.dirs`` (the records and the KRaft metadata log)."""
        return self.data_dir / "kafka-logs"

    @property
    def log_path(self) -> Path:
        """The broker's own log (stdout and stderr of the JVM)."""
        return self.data_dir / "broker.log"

    @property
    def cluster_id(self) -> str | None:
        """The id the log dir was formatted with (None before the first start)."""
        meta = self.log_dir / "meta.properties"
        if meta.is_file():
            m = re.search(r"^cluster\.id=(.+)$", meta.read_text(), re.M)
            if m:
                return m[1].strip()
        return self._cluster_id

    def config(self) -> dict[str, str]:
        """The full ``server.properties``: listeners on loopback, then test settings, then ``extra``."""
        return {
            "process.roles": "broker,controller", "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER", "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir), **BASE_CONFIG, **self.extra,
        }

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J.format(level=self.log_level))
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.config().items()))
        return path

    def _java(self, java: str, libs: Path, heap_opts: str, jvm_opts: Sequence[str]) -> list[str]:
        """The JVM command line up to the main class."""
        return [java, *heap_opts.split(), *jvm_opts,
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.data_dir}", "-cp", f"{libs}/*"]

    # lifecycle
    def format(self) -> None:
        """Format the log dir with the cluster id, on the first start only: a formatted dir keeps its
        records, offsets and metadata across restarts."""
        if (self.log_dir / "meta.properties").is_file():
            return
        libs, java = ensure_kafka(self.version), java_binary()
        props = self._write_config()
        self._cluster_id = self._cluster_id or new_cluster_id()
        cmd = [*self._java(java, libs, "-Xmx256m", FAST_START_JVM_OPTS), STORAGE_TOOL, "format",
               "--cluster-id", self._cluster_id, "--config", str(props), "--ignore-formatted", *self.format_args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise KafkaStartError(f"formatting {self.log_dir} failed (exit {proc.returncode}):\n{tail}")

    def launch(self) -> None:
        """Format if needed and start the JVM, without waiting (a cluster starts its nodes together:
        none is ready before a majority of the quorum runs)."""
        if self.running:
            return
        self.format()
        libs, java = ensure_kafka(self.version), java_binary()
        props = self._write_config()
        with open(self.log_path, "ab") as out:
            out.write(f"---- imtel: starting Kafka {self.version} node {self.node_id} "
                      f"at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            out.flush()
            cmd = [*self._java(java, libs, self.heap_opts, self.jvm_opts), MAIN_CLASS, str(props)]
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True,  # Ctrl-C in a terminal is ours to handle
                                         preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float = READY_TIMEOUT, bootstrap: str | None = None) -> None:
        """Wait until the metadata a client gets (from ``bootstrap``, default this node) lists this
        node as a live broker, i.e. it serves produce and fetch, and (once consumer groups exist)
        every group coordinator answers; raise with the log's tail if the process exits or this
        takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            self._check(deadline, timeout)
            time.sleep(0.1)
        bootstrap = bootstrap or self.bootstrap
        admin = _admin(bootstrap)
        while self.node_id not in _live_brokers(admin) or not _groups_ready(admin, bootstrap):
            self._check(deadline, timeout)
            time.sleep(0.1)

    def _check(self, deadline: float, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise KafkaStartError(f"Kafka node {self.node_id} exited (code {code}); "
                                  f"last lines of {self.log_path}:\n{_tail(self.log_path)}")
        if time.monotonic() > deadline:
            raise KafkaStartError(f"Kafka node {self.node_id} not ready on {self.bootstrap} within "
                                  f"{timeout:.0f}s; last lines of {self.log_path}:\n{_tail(self.log_path)}")

    def start(self, timeout: float = READY_TIMEOUT) -> KafkaServer:
        """Start the node and wait until a client sees it; a failed start leaves no process behind."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: no controlled shutdown, no flush beyond what the OS already has."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def terminate(self) -> None:
        """Send SIGTERM (a controlled shutdown) without waiting."""
        if self.running and self.proc is not None:
            self.proc.terminate()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Controlled shutdown (SIGTERM); SIGKILL if it takes longer than ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("Kafka node %s did not stop within %.0fs; killing it", self.node_id, timeout)
            self.kill()

    def restart(self, timeout: float = READY_TIMEOUT) -> KafkaServer:
        """Stop and start again: same ports, same log dir, so every record and offset is still there."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> KafkaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------- cluster

def _cluster_config(n: int) -> dict[str, str]:
    """Durability of a production cluster: every topic on 3 replicas by default, an acks=all write
    needs 2 of them, and so do the internal topics."""
    rf, isr = str(min(3, n)), str(min(2, n))
    return {"default.replication.factor": rf, "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf, "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr, "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr}


class KafkaCluster:
    """``n`` broker+controller nodes with one cluster id and a controller quorum of all of them.

    Node ``i`` (0-based) has node id ``i + 1`` and its data in ``data_dir/node-i``. The quorum is
    static (``controller.quorum.voters``), so a node restarted from its kept dir rejoins as it was.
    C1-only JVMs by default: three JVMs compiling with C2 at once on 2 cores take ~9.5 s to be ready
    instead of ~6 s, and a test cluster is for failover, not throughput."""

    def __init__(self, n: int = 3, data_dir: Path | str = ".", *, extra: Mapping[str, str] | None = None,
                 heap_opts: str = DEFAULT_HEAP_OPTS, jvm_opts: Sequence[str] = FAST_START_JVM_OPTS,
                 version: str = KAFKA_VERSION) -> None:
        root = Path(data_dir)
        ports = [(free_port(), free_port()) for _ in range(n)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{cp}" for i, (_, cp) in enumerate(ports))
        cid = new_cluster_id()
        conf = {**_cluster_config(n), **(extra or {})}
        self.nodes = [KafkaServer(root / f"node-{i}", port=p, controller_port=cp, extra=conf, heap_opts=heap_opts,
                                  jvm_opts=jvm_opts, version=version, node_id=i + 1, voters=voters, cluster_id=cid)
                      for i, (p, cp) in enumerate(ports)]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout: float = READY_TIMEOUT) -> KafkaCluster:
        """Format the nodes (in parallel: each is a JVM start), start them all, wait for every one."""
        ensure_kafka(self.nodes[0].version)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(KafkaServer.format, self.nodes))
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready(timeout)
        except BaseException:
            self.kill_all()
            raise
        return self

    def kill(self, node_index: int) -> None:
        """SIGKILL one node (its data dir stays, for ``start_node``)."""
        self.nodes[node_index].kill()

    def start_node(self, node_index: int, timeout: float = READY_TIMEOUT) -> None:
        """Start one node again from its kept dir; waits until the cluster lists it as a live broker."""
        node = self.nodes[node_index]
        node.launch()
        try:
            node.wait_ready(timeout, bootstrap=self.bootstrap)
        except BaseException:
            node.kill()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every node at once and wait: stopped one by one, the last ones would wait for a
        quorum that has already gone. Whatever is still running after ``timeout`` is killed."""
        for node in self.nodes:
            node.terminate()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.stop(max(0.1, deadline - time.monotonic()))

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()

    def leader_of(self, topic: str, partition: int, timeout: float = 30.0) -> int:
        """Index of the node leading ``topic``/``partition`` now, as a client's metadata says (waits
        while the partition has no leader, e.g. during an election)."""
        return int(partition_metadata(_admin(self.bootstrap), topic, partition, timeout).leader) - 1

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------- CLI

def _run(data: Path, port: int | None, heap_opts: str) -> int:
    """One node in the foreground until Ctrl-C (or SIGTERM), then a controlled shutdown."""
    server = KafkaServer(data, port=port, heap_opts=heap_opts)

    def _terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    try:
        server.start()
        print(f"Kafka {server.version} ready at {server.bootstrap} in {time.monotonic() - started:.1f}s "
              f"(data {server.data_dir}, log {server.log_path}); Ctrl-C stops it", flush=True)
        while server.running:
            time.sleep(0.5)
        print(f"Kafka exited (code {server.proc.returncode if server.proc else None}); see {server.log_path}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.dev.kafka_server", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help=f"fetch Kafka {KAFKA_VERSION}'s jars (once) and print their directory")
    run = sub.add_parser("run", help="run one broker+controller node in the foreground until Ctrl-C")
    run.add_argument("--data", type=Path, required=True, help="data dir (kept: records survive a restart)")
    run.add_argument("--port", type=int, default=None, help="client (PLAINTEXT) port; default: a free one")
    run.add_argument("--heap", default=DEFAULT_HEAP_OPTS, help=f"JVM heap options (default {DEFAULT_HEAP_OPTS!r})")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(ensure_kafka())
            return 0
        return _run(args.data, args.port, args.heap)
    except (KafkaUnavailable, KafkaStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
