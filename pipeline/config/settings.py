"""The one settings object: every knob, its env var (prefix ``IMTEL_``), default and meaning.

Every default works embedded (bundled broker on loopback, chDB store in ``./data``). Production
sets the Kafka and ClickHouse fields through the environment (or ``*_FILE`` secret files, for
credentials mounted from Kubernetes Secrets). ``Settings.from_env()`` raises ``SettingsError`` with
one plain sentence naming the variable at fault, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "IMTEL_"
PII_MODES = ("prefix", "hash", "drop")
ASSIGNORS = {"consumer": ("range", "uniform"), "classic": ("range", "cooperative-sticky", "roundrobin")}
SECRET_FIELDS = frozenset({"kafka_sasl_password", "clickhouse_password", "pii_hash_key", "web_token"})
# Names that end up in SQL text (identifiers cannot be bound parameters) or in Kafka requests: checked
# here so that no setting can carry SQL into a statement, and a typo is a one-line error at start.
SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
CLUSTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
WEB_TOKEN = re.compile(r"[!-~]{32,1024}")  # printable ASCII: it travels in an Authorization header
HOST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,253}|\[?[0-9A-Fa-f:.]{2,45}\]?")
_DSN_USERINFO = re.compile(r"(?<=://)[^/@]*@")


COMPRESSIONS = ("lz4", "zstd", "none")
# Rows per insert when IMTEL_BATCH_MAX_RECORDS is not set (see ``Settings.batch_rows``).
SERVER_BATCH_ROWS = 150_000
EMBEDDED_BATCH_ROWS = 100_000


class SettingsError(ValueError):
    """A setting is missing, malformed or inconsistent; the message names it."""


def _f(default: Any, doc: str, secret: bool = False) -> Any:
    """A setting; a secret one is left out of ``repr`` (a logged or printed Settings object)."""
    return field(default=default, metadata={"doc": doc}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """All configuration of the pipeline. Field ``x`` is read from env ``IMTEL_X``."""

    # Kafka
    kafka_bootstrap: str = _f("127.0.0.1:19092", "Kafka bootstrap servers, comma separated.")
    kafka_security_protocol: str = _f("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: str = _f("SCRAM-SHA-512", "SASL mechanism when SASL is used.")
    kafka_sasl_username: str = _f("", "SASL user name.")
    kafka_sasl_password: str = _f("", "SASL password (or IMTEL_KAFKA_SASL_PASSWORD_FILE).", secret=True)
    kafka_ssl_ca_location: str = _f("", "CA bundle for TLS to Kafka.")
    kafka_max_poll_interval_ms: int = _f(
        300_000, "max.poll.interval.ms, also the group rebalance timeout: a worker that does not poll for this "
        "long leaves its group. Kafka's default: a slow ClickHouse write pauses consumption but keeps the "
        "membership (embedded mode sets 10000: the bundled broker waits this long on every join).")
    kafka_group_protocol: str = _f(
        "consumer", "Consumer group protocol: consumer (KIP-848, Kafka 4: the broker assigns, incrementally, so a "
        "scale-out or restart moves only the partitions that change owner; the session timeout is the broker's "
        "group.consumer.session.timeout.ms) or classic (client-side assignment; embedded mode sets it for the "
        "bundled broker).")
    kafka_assignor: str = _f(
        "range", "Partition assignor: range spreads each topic over the workers on its own (the request-log "
        "topic carries most of the load); with the consumer protocol also uniform, with classic also "
        "cooperative-sticky or roundrobin.")
    kafka_session_timeout_ms: int = _f(
        45_000, "session.timeout.ms of the classic protocol: a worker silent this long (crashed, partitioned) "
        "loses its partitions (6000..300000, at most the poll interval).")
    group_instance_id: str = _f("", "Static group membership id (e.g. the pod name): restarts within the "
                                "session timeout cause no rebalance.")
    consumer_group: str = _f("imtel-pipeline", "Consumer group of the workers.")
    topic_request_logs: str = _f("im-request-logs", "Topic of request logs (Log Data).")
    topic_monitoring_samples: str = _f("im-monitoring-samples", "Topic of monitoring samples.")
    topic_dead_letters: str = _f("im-dead-letters", "Dead-letter topic: invalid records + reason.")
    topic_applications: str = _f("im-applications", "Application registry updates (Configuration Data).")
    topic_partitions: int = _f(4, "Partitions when the pipeline creates its topics.")
    topic_replication: int = _f(1, "Replication factor when the pipeline creates its topics.")
    # ClickHouse
    clickhouse_dsn: str = _f("chdb://./data/clickhouse",
                             "chdb://PATH (embedded store; relative or absolute) or http(s)://host:8123.")
    clickhouse_database: str = _f("imtel", "Database holding the pipeline's tables.")
    clickhouse_user: str = _f("default", "ClickHouse user (HTTP only).")
    clickhouse_password: str = _f("", "ClickHouse password (or IMTEL_CLICKHOUSE_PASSWORD_FILE).", secret=True)
    clickhouse_cluster: str = _f("", "Cluster name: when set, migrations use ON CLUSTER + Replicated engines.")
    clickhouse_timeout_seconds: float = _f(
        30.0, "HTTP send/receive timeout of one ClickHouse call (1..600); a hung call is retried after it.")
    clickhouse_compression: str = _f(
        "lz4", "Compression of the insert bodies sent to a ClickHouse server: lz4 (clickhouse-connect's default), "
        "zstd (~40% fewer bytes on the wire for ~5% more worker CPU) or none (~8% less worker CPU for "
        "~2.4x the bytes: a server on the same host or rack). Batched request logs; chDB (embedded) ignores it.")
    # Batching
    batch_max_records: int = _f(
        0, "Rows buffered before an insert (1..1,000,000). 0: 150,000 against a ClickHouse server, 100,000 with "
        "the embedded chDB engine, whose insert shares the worker's memory (see Settings.batch_rows).")
    batch_max_seconds: float = _f(1.0, "Oldest buffered row's maximal age before an insert (0.05..60 s).")
    consume_max_messages: int = _f(5_000, "Kafka messages fetched per poll (1..100,000).")
    native_decoder: bool = _f(True, "Decode request logs with the native decoder where it is built (false: "
                              "msgspec only, to compare or to rule it out).")
    max_future_skew_seconds: int = _f(300, "Records stamped further in the future go to dead letters.")
    # Hostile input (pipeline/ingest/limits.py): bounded memory and bounded dead letters
    max_message_bytes: int = _f(8_388_608, "max.message.bytes of every topic the pipeline creates or reconciles, "
                                "and the dead-letter producer's message.max.bytes (1 KiB..64 MiB).")
    decode_max_bytes: int = _f(16_777_216, "A message larger than this (after decompression) is not decoded: one "
                               "dead letter by reference, reason too_large (64 KiB..256 MiB).")
    message_max_records: int = _f(100_000, "A message with more records than this is not decoded: one dead letter "
                                  "by reference, reason too_many_records (1..1,000,000).")
    poll_max_bytes: int = _f(8_388_608, "Message bytes decoded before the buffer is checked for a flush (the "
                             "byte budget of one poll, next to its record budget; 64 KiB..256 MiB).")
    dead_letter_max_bytes: int = _f(65_536, "A dead letter's payload is cut to this many bytes; headers keep the "
                                    "original size, its sha256 and a truncation flag (256..max_message_bytes/2).")
    dead_letters_per_message: int = _f(100, "A message with more invalid records than this becomes one dead letter "
                                       "for the whole message (the ledger keeps one row per record; 1..100,000).")
    write_stall_seconds: float = _f(120.0, "A write failing for longer than this makes /readyz fail with the cause "
                                    "(alert ImtelWriteFailing; 1..3600 s).")
    # Privacy
    pii_mode: str = _f("prefix", "How the exit IP is minimised: prefix (/24, /48), hash (keyed) or drop.")
    pii_hash_key: str = _f("", "Secret key for pii_mode=hash (or IMTEL_PII_HASH_KEY_FILE).", secret=True)
    # Metrics / web
    web_host: str = _f("127.0.0.1", "Address the worker's HTTP server binds (metrics, health, queries).")
    web_port: int = _f(6066, "Port of /metrics, /healthz, /readyz and /queries.")
    metrics_top_apps: int = _f(50, "Apps with their own metric label; the rest are 'other' (1..1000).")
    # Local state
    data_dir: str = _f("./data", "Folder for the embedded store and faust's local state.")
    embedded_broker: str = _f("tansu", "Broker `imtel embedded` starts: tansu (bundled, in memory, no setup) or "
                              "kafka (a real Apache Kafka node, fetched by Maven on first use; needs Java 17+).")
    log_level: str = _f("info", "debug, info, warning or error.")
    # Worker web API (pipeline/worker/app.py): everything but /metrics, /healthz and /readyz needs a token
    web_token: str = _f("", "Bearer token of the worker's data endpoints (/queries, /report, /audit, /apps, /erase; "
                        "or IMTEL_WEB_TOKEN_FILE; at least 32 characters). Empty: a fresh one is generated at every "
                        "start into IMTEL_DATA_DIR/worker.token (mode 0600), where the imtel CLI finds it.",
                        secret=True)
    web_allowed_hosts: str = _f("", "Host header names (comma separated) the data endpoints answer besides "
                                "loopback ones (localhost, 127.0.0.0/8, ::1) and IMTEL_WEB_HOST: a page's DNS "
                                "rebinding cannot reach them under another name.")
    web_query_timeout_seconds: float = _f(30.0, "max_execution_time of one read behind the data endpoints (their own "
                                          "read-only client, never the inserts' lock; 1..600 s).")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``IMTEL_*`` variables (and ``*_FILE`` secrets), then validate."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None and f.name in SECRET_FIELDS and env.get(name + "_FILE"):
                raw = _read_secret(name + "_FILE", env[name + "_FILE"])
            if raw is not None:
                values[f.name] = _convert(name, raw, f.default)
        values.update(overrides)
        settings = cls(**values)
        problem = settings.problem()
        if problem:
            raise SettingsError(problem)
        return settings

    def problem(self) -> str | None:
        """The first inconsistency as a plain sentence, or None when the settings are usable."""
        checks = [
            (self.pii_mode in PII_MODES, f"IMTEL_PII_MODE must be one of {', '.join(PII_MODES)}."),
            (self.pii_mode != "hash" or len(self.pii_hash_key) >= 16,
             "IMTEL_PII_MODE=hash needs IMTEL_PII_HASH_KEY (or _FILE) of at least 16 characters."),
            (0 <= self.batch_max_records <= 1_000_000,
             "IMTEL_BATCH_MAX_RECORDS must be 1..1000000 (or 0: the default for the store)."),
            (1 <= self.clickhouse_timeout_seconds <= 600, "IMTEL_CLICKHOUSE_TIMEOUT_SECONDS must be 1..600."),
            (self.clickhouse_compression in COMPRESSIONS,
             f"IMTEL_CLICKHOUSE_COMPRESSION must be one of {', '.join(COMPRESSIONS)}."),
            (0.05 <= self.batch_max_seconds <= 60, "IMTEL_BATCH_MAX_SECONDS must be 0.05..60."),
            (1 <= self.consume_max_messages <= 100_000, "IMTEL_CONSUME_MAX_MESSAGES must be 1..100000."),
            (1024 <= self.max_message_bytes <= 67_108_864, "IMTEL_MAX_MESSAGE_BYTES must be 1024..67108864."),
            (65_536 <= self.decode_max_bytes <= 268_435_456, "IMTEL_DECODE_MAX_BYTES must be 65536..268435456."),
            (1 <= self.message_max_records <= 1_000_000, "IMTEL_MESSAGE_MAX_RECORDS must be 1..1000000."),
            (65_536 <= self.poll_max_bytes <= 268_435_456, "IMTEL_POLL_MAX_BYTES must be 65536..268435456."),
            (256 <= self.dead_letter_max_bytes <= self.max_message_bytes // 2,
             "IMTEL_DEAD_LETTER_MAX_BYTES must be 256..IMTEL_MAX_MESSAGE_BYTES/2 (room for headers)."),
            (1 <= self.dead_letters_per_message <= 100_000, "IMTEL_DEAD_LETTERS_PER_MESSAGE must be 1..100000."),
            (1 <= self.write_stall_seconds <= 3600, "IMTEL_WRITE_STALL_SECONDS must be 1..3600."),
            (1 <= self.metrics_top_apps <= 1000, "IMTEL_METRICS_TOP_APPS must be 1..1000."),
            (0 < self.web_port < 65536, "IMTEL_WEB_PORT must be a TCP port (1..65535)."),
            (6000 <= self.kafka_session_timeout_ms <= min(300_000, self.kafka_max_poll_interval_ms),
             "IMTEL_KAFKA_SESSION_TIMEOUT_MS must be 6000..300000 and at most IMTEL_KAFKA_MAX_POLL_INTERVAL_MS."),
            (self.embedded_broker in ("tansu", "kafka"), "IMTEL_EMBEDDED_BROKER must be tansu or kafka."),
            (self.kafka_group_protocol in ASSIGNORS, "IMTEL_KAFKA_GROUP_PROTOCOL must be consumer or classic."),
            (self.kafka_assignor in ASSIGNORS.get(self.kafka_group_protocol, ()),
             f"IMTEL_KAFKA_ASSIGNOR must be one of {', '.join(ASSIGNORS.get(self.kafka_group_protocol, ()))} "
             f"with IMTEL_KAFKA_GROUP_PROTOCOL={self.kafka_group_protocol}."),
            (6000 <= self.kafka_max_poll_interval_ms <= 3_600_000,
             "IMTEL_KAFKA_MAX_POLL_INTERVAL_MS must be 6000..3600000."),
            (1 <= self.topic_partitions <= 1024, "IMTEL_TOPIC_PARTITIONS must be 1..1024."),
            (self.clickhouse_dsn.split(":", 1)[0] in ("chdb", "http", "https"),
             "IMTEL_CLICKHOUSE_DSN must start with chdb:, http: or https:."),
            (SQL_IDENTIFIER.fullmatch(self.clickhouse_database) is not None,
             "IMTEL_CLICKHOUSE_DATABASE must be a plain identifier (letters, digits, _; not starting with a digit)."),
            (cluster_problem(self.clickhouse_cluster) is None,
             f"IMTEL_CLICKHOUSE_CLUSTER {cluster_problem(self.clickhouse_cluster)}"),
            *[(TOPIC_NAME.fullmatch(getattr(self, f"topic_{t}")) is not None,
               f"IMTEL_TOPIC_{t.upper()} must be a Kafka topic name (letters, digits, '.', '_', '-'; 1..249).")
              for t in ("request_logs", "monitoring_samples", "dead_letters", "applications")],
            (bool(self.kafka_bootstrap.strip()), "IMTEL_KAFKA_BOOTSTRAP must name at least one broker."),
            (self.log_level in ("debug", "info", "warning", "error"),
             "IMTEL_LOG_LEVEL must be debug, info, warning or error."),
            (not self.web_token or (len(self.web_token) >= 32 and WEB_TOKEN.fullmatch(self.web_token) is not None),
             "IMTEL_WEB_TOKEN (or _FILE) must be at least 32 printable characters without spaces."),
            (all(HOST_NAME.fullmatch(h.strip()) for h in self.web_allowed_hosts.split(",") if h.strip()),
             "IMTEL_WEB_ALLOWED_HOSTS must be host names or addresses, comma separated (no ports)."),
            (1 <= self.web_query_timeout_seconds <= 600, "IMTEL_WEB_QUERY_TIMEOUT_SECONDS must be 1..600."),
        ]
        return next((message for ok, message in checks if not ok), None)

    @property
    def batch_rows(self) -> int:
        """Rows buffered before an insert: ``batch_max_records``, or when that is 0 the store's default.

        Why these sizes: every insert has a fixed cost in the engine (a part in ``request_logs`` and
        one in the view's table, their files and checksums, and the merges that fold small parts
        together), so fewer, larger inserts cost it less for the same rows, as ClickHouse advises.
        Measured in chDB alone on 3M records of the batched workload (the worker's own flush tables,
        inserted with tokens, the merges settled, then every table merged to one part so that no
        merge is left outside the figure), CPU-s per million: 2.43 / 2.64 / 2.82 / 2.92 with 50k-row
        inserts, 2.25 / 2.17 with 150k, 1.81 / 1.95 / 2.28 / 1.98 with 200k (``docs/performance.md``).
        A worker holds at most two buffers (one being written, one filling) and one compressed body,
        ~100 bytes a row each on that workload: 150k rows keep its peak well inside the 250 MB it is
        given against a server (200k: 236-252 MB on single-record messages). With chDB in the
        process the engine's insert (the uncompressed body, its blocks, their sort and compression)
        comes on top, so the embedded default is 100k: ~465-480 MB peak there (200k: ~520)."""
        if self.batch_max_records:
            return self.batch_max_records
        return EMBEDDED_BATCH_ROWS if self.embedded_store else SERVER_BATCH_ROWS

    @property
    def embedded_store(self) -> bool:
        """True when ClickHouse is the in-process chDB engine (one process owns the folder)."""
        return self.clickhouse_dsn.startswith("chdb:")

    @property
    def chdb_path(self) -> Path | None:
        """Folder of the embedded store, or None for a server DSN or an in-memory engine."""
        location = self.clickhouse_dsn.removeprefix("chdb:").removeprefix("//")
        if not self.embedded_store or location.startswith("memory"):
            return None
        return Path(location).resolve()

    @property
    def clickhouse_url(self) -> str:
        """The DSN clickhouse-connect understands (embedded paths made absolute)."""
        path = self.chdb_path
        return f"chdb://{path}" if path is not None else self.clickhouse_dsn

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka properties shared by consumer, producer and admin client."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap,
                                "security.protocol": self.kafka_security_protocol}
        if "SASL" in self.kafka_security_protocol:
            conf.update({"sasl.mechanism": self.kafka_sasl_mechanism,
                         "sasl.username": self.kafka_sasl_username,
                         "sasl.password": self.kafka_sasl_password})
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = self.kafka_ssl_ca_location
        return conf

    def __repr__(self) -> str:
        """Secrets masked and the DSN's user-info redacted: a logged or printed Settings object (a
        traceback's locals, a debug line) must not carry a credential written into the DSN."""
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self.redacted().items()) + ")"

    def group_protocol_config(self) -> dict[str, Any]:
        """The worker consumer's group-protocol properties. With KIP-848 (``consumer``) the broker assigns
        and owns the session timeout, so librdkafka refuses ``session.timeout.ms`` there."""
        if self.kafka_group_protocol == "consumer":
            return {"group.protocol": "consumer", "group.remote.assignor": self.kafka_assignor}
        return {"group.protocol": "classic", "partition.assignment.strategy": self.kafka_assignor,
                "session.timeout.ms": self.kafka_session_timeout_ms}

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, safe to log or print (credentials written into the
        DSN's user-info part too)."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        out["clickhouse_dsn"] = redact_dsn(self.clickhouse_dsn)
        return out

    @staticmethod
    def describe() -> list[tuple[str, str, str]]:
        """(env var, default, meaning) of every setting, for ``imtel settings`` and the README."""
        return [(PREFIX + f.name.upper(), repr(f.default), f.metadata["doc"]) for f in dataclasses.fields(Settings)]


def cluster_problem(name: str) -> str | None:
    """Why ``name`` cannot be a ClickHouse cluster name (it is rendered into ``ON CLUSTER '...'``), or None."""
    if not name or CLUSTER_NAME.fullmatch(name):
        return None
    return "must be a cluster name from the server's remote_servers (letters, digits, '_', '.', '-')."


def redact_dsn(dsn: str) -> str:
    """``https://user:secret@host`` -> ``https://***@host``: for messages that name the server."""
    return _DSN_USERINFO.sub("***@", dsn)


def _read_secret(name: str, path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{name} points to {path!r}, which cannot be read ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{name} points to {path!r}, which is not UTF-8 text.") from None


def _convert(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise SettingsError(f"{name} must be {kind}, got {raw!r}.") from None
    return raw
