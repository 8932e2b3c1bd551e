"""``imtel deadletters``: count, inspect and replay dead letters (docs/deadletters.md).

Two sources, each for what it is exact at:

- the **ledger** (``dead_letters`` table, no payload): ``list`` counts from it, one count per record
  (deduplicated by source coordinates: a record replayed and refused again has several rows with the
  same coordinates, counted once, with its latest reason). With the embedded store the CLI asks the
  worker that owns it (``GET /deadletters``, behind its token); with a ClickHouse server it queries it.
- the **dead-letter topic** (payloads, headers): ``show`` and ``replay`` read it with a plain
  confluent-kafka consumer (assigned partitions, no group, nothing committed), from the beginning or
  from ``--since`` (``offsets_for_times``), up to the high watermarks found at the start: bounded.
  Letters are at-least-once on the topic; the same coordinates are one record (the latest letter,
  highest replay count, wins).

Privacy: payloads hold full exit IPs and maybe e-mail addresses. ``show`` masks both unless
``--raw``, which is logged (who, which letter; never the payload). No IP or e-mail is ever in a log
line or an error message: coordinates, reasons and counts only.

Replay (exactly once, ``ingest/replay.py``): each selected letter's payload goes to its source topic
(same partition) or ``--to TOPIC`` with ``imtel-replay-of`` (its original coordinates) and
``imtel-replay-count`` (previous + 1). The worker stores it under the original coordinates and drops
it when they are already stored, so replaying twice stores once. Refused: letters replayed
``--max-replays`` times already, cut payloads (``imtel-truncated``: the original is on the source
topic at the coordinates, for its retention), and ``insert_rejected`` letters (they hold the row as
it would have been stored, not the record that was sent).
"""

from __future__ import annotations

import getpass
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.ingest.decode import REASONS
from pipeline.ingest.replay import REPLAY_COUNT, REPLAY_OF, format_coordinates

log = logging.getLogger(__name__)

NOT_REPLAYABLE = frozenset({"insert_rejected"})
BUCKETS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400}
LIST_COLUMNS = ["bucket", "src_topic", "reason", "app", "records", "replayed"]


class DeadLetterError(ValueError):
    """A problem the user can fix (a bad selection, an unknown letter): one line."""


# -- masking ---------------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*")  # RFC 5322 atext
_IPV4 = re.compile(r"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9])")
# anything with two or more colons between hex groups: IPv6 in every notation (over-masks clock times
# such as 12:30:45, never under-masks an address)
_IPV6 = re.compile(r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|<ipv4>)?(?![0-9A-Za-z:])")


def mask(text: str) -> str:
    """``text`` with e-mail addresses, IPv4 and IPv6 addresses replaced by ``<email>``, ``<ipv4>``,
    ``<ipv6>`` (an IPv4-mapped IPv6 address becomes ``<ipv6>``). Shapes that merely look like an
    address are masked too: over-masking is the safe side."""
    text = _EMAIL.sub("<email>", text)
    text = _IPV4.sub("<ipv4>", text)
    return _IPV6.sub("<ipv6>", text)


# -- selections -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """``--source TOPIC[/PARTITION[/OFFSET[/INDEX]]]``: the letters of a topic (name or id), of one of its
    partitions, of one message, or one record."""

    topic: str
    partition: int | None = None
    offset: int | None = None
    index: int | None = None

    def matches(self, letter: Letter) -> bool:
        if self.topic not in (letter.src_topic, letter.src_topic_id):
            return False
        return ((self.partition is None or self.partition == letter.src_partition)
                and (self.offset is None or self.offset == letter.src_offset)
                and (self.index is None or self.index == letter.src_index))


def parse_source(text: str) -> Source:
    parts = text.strip().split("/")
    if not parts[0] or len(parts) > 4 or not re.fullmatch(r"[A-Za-z0-9._\-]{1,249}", parts[0]):
        raise DeadLetterError("--source is TOPIC[/PARTITION[/OFFSET[/INDEX]]] (a topic name or id)")
    try:
        nums = [int(p) for p in parts[1:]]
    except ValueError:
        raise DeadLetterError("--source: partition, offset and index are whole numbers") from None
    if any(n < (-1 if i == 2 else 0) for i, n in enumerate(nums)):
        raise DeadLetterError("--source: partition and offset are >= 0, index >= -1 (-1: a whole message)")
    return Source(parts[0], *nums)  # type: ignore[arg-type]


def parse_reasons(values: Iterable[str] | None) -> frozenset[str]:
    """``--reason a,b --reason c`` -> {a, b, c}; an unknown reason is an error naming the known ones."""
    out = frozenset(r.strip() for v in values or () for r in v.split(",") if r.strip())
    unknown = sorted(out - set(REASONS))
    if unknown:
        raise DeadLetterError(f"unknown reason {unknown[0]!r}: one of {', '.join(REASONS)}")
    return out


def parse_bucket(text: str) -> int:
    if text not in BUCKETS:
        raise DeadLetterError(f"--bucket is one of {', '.join(BUCKETS)}")
    return BUCKETS[text]


def parse_since(text: str | None, now: datetime | None = None) -> int | None:
    """``--since`` as epoch ms (None: from the beginning)."""
    from pipeline.ops.queries import TIME_RULE, parse_time

    if not text:
        return None
    try:
        return int(parse_time(text, now).timestamp() * 1000)
    except ValueError:
        raise DeadLetterError(f"--since is {TIME_RULE}") from None


# -- list: counts from the ledger --------------------------------------------------------------------

LIST_SQL = """
SELECT toStartOfInterval(first_time, toIntervalSecond({bucket:UInt32})) AS bucket, src_topic, reason, app,
       count() AS records, countIf(replays > 0) AS replayed
FROM (
    SELECT src_topic_id, src_partition, src_offset, src_index, min(ingest_time) AS first_time,
           any(src_topic) AS src_topic, argMax(reason, (replay_count, ingest_time)) AS reason,
           max(sdk_app_id) AS app, max(replay_count) AS replays
    FROM {db}.dead_letters
    WHERE ingest_time >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
    GROUP BY src_topic_id, src_partition, src_offset, src_index
)
WHERE (length({reasons:Array(String)}) = 0 OR has({reasons:Array(String)}, reason))
GROUP BY bucket, src_topic, reason, app
ORDER BY bucket, src_topic, reason, app"""


@dataclass(frozen=True)
class ListRequest:
    since_ms: int
    reasons: frozenset[str]
    bucket_s: int

    def as_query(self) -> dict[str, str]:
        return {"since_ms": str(self.since_ms), "reason": ",".join(sorted(self.reasons)),
                "bucket": next(k for k, v in BUCKETS.items() if v == self.bucket_s)}


def parse_list_request(raw: dict[str, str], now_ms: int | None = None) -> ListRequest:
    """The web endpoint's (and the CLI's) parameters: since_ms (default: the last 24 hours), reason
    (comma-separated), bucket."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    try:
        since = int(raw["since_ms"]) if raw.get("since_ms") else now_ms - 86_400_000
    except ValueError:
        raise DeadLetterError("since_ms is epoch milliseconds") from None
    return ListRequest(since, parse_reasons([raw.get("reason", "")]), parse_bucket(raw.get("bucket") or "1h"))


def list_counts(store: Any, req: ListRequest) -> dict[str, Any]:
    """Counts per time bucket, source topic, reason and app (0: unknown), one per record; plus
    ``replayed``: how many of them were replayed and refused again."""
    sql = LIST_SQL.replace("{db}", store.db)
    rows = store.query(sql, {"bucket": req.bucket_s, "since_ms": req.since_ms,
                             "reasons": sorted(req.reasons)}).result_rows
    out = []
    for bucket, topic, reason, app, records, replayed in rows:
        when = bucket if isinstance(bucket, datetime) else datetime.fromisoformat(str(bucket))
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        out.append([when.isoformat(), str(topic), str(reason), int(app), int(records), int(replayed)])
    return {"columns": LIST_COLUMNS, "rows": out}


def totals_by_reason(result: dict[str, Any]) -> dict[str, int]:
    """Records per reason over a ``list_counts`` result."""
    i, n = result["columns"].index("reason"), result["columns"].index("records")
    out: dict[str, int] = {}
    for row in result["rows"]:
        out[row[i]] = out.get(row[i], 0) + int(row[n])
    return out


# -- letters on the topic ------------------------------------------------------------------------------


@dataclass
class Letter:
    """One dead letter read back from the dead-letter topic."""

    dlq_partition: int
    dlq_offset: int
    timestamp_ms: int
    key: bytes | None
    payload: bytes
    headers: dict[str, bytes] = field(default_factory=dict)

    def _h(self, name: str, default: str = "") -> str:
        value = self.headers.get(name)
        return value.decode("utf-8", "replace") if value is not None else default

    @property
    def reason(self) -> str:
        return self._h("imtel-reason", "?")

    @property
    def detail(self) -> str:
        return self._h("imtel-detail")

    @property
    def src_topic(self) -> str:
        return self._h("imtel-source-topic")

    @property
    def src_topic_id(self) -> str:
        return self._h("imtel-source-topic-id") or self.src_topic

    @property
    def src_partition(self) -> int:
        return _int(self._h("imtel-source-partition"), -1)

    @property
    def src_offset(self) -> int:
        return _int(self._h("imtel-source-offset"), -1)

    @property
    def src_index(self) -> int:
        return _int(self._h("imtel-source-index"), 0)

    @property
    def replay_count(self) -> int:
        return _int(self._h(REPLAY_COUNT), 0)

    @property
    def truncated(self) -> bool:
        return self._h("imtel-truncated") == "true"

    @property
    def original_bytes(self) -> int:
        return _int(self._h("imtel-original-bytes"), len(self.payload))

    @property
    def coordinates(self) -> tuple[str, int, int, int]:
        """The record's identity: source topic id, partition, offset, index."""
        return self.src_topic_id, self.src_partition, self.src_offset, self.src_index

    @property
    def app(self) -> int:
        from pipeline.ingest.buffer import app_of

        return app_of(self.key)

    def describe(self, raw: bool = False) -> dict[str, Any]:
        """Everything ``show`` prints; the payload masked unless ``raw``."""
        text = self.payload.decode("utf-8", "replace")
        return {
            "reason": self.reason, "detail": self.detail,
            "source": {"topic": self.src_topic, "topic_id": self.src_topic_id, "partition": self.src_partition,
                       "offset": self.src_offset, "index": self.src_index},
            "coordinates": format_coordinates(*self.coordinates),
            "dead_letter": {"partition": self.dlq_partition, "offset": self.dlq_offset,
                            "time": datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat()},
            "app": self.app or None, "replay_count": self.replay_count,
            "truncated": self.truncated, "payload_bytes": len(self.payload), "original_bytes": self.original_bytes,
            "original_sha256": self._h("imtel-original-sha256") or None,
            "masked": not raw, "payload": text if raw else mask(text),
        }


def _int(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def render_letter(d: dict[str, Any]) -> str:
    """``show``'s text form."""
    src, dlq = d["source"], d["dead_letter"]
    lines = [f"reason:       {d['reason']}", f"detail:       {d['detail']}",
             f"source:       {src['topic']} (id {src['topic_id']}) partition {src['partition']} offset "
             f"{src['offset']} index {src['index']}" + (" (the whole message)" if src["index"] == -1 else ""),
             f"coordinates:  {d['coordinates']}",
             f"dead letter:  partition {dlq['partition']} offset {dlq['offset']} at {dlq['time']}",
             f"app:          {d['app'] if d['app'] else 'unknown'}",
             f"replays:      {d['replay_count']}"]
    if d["truncated"]:
        lines.append(f"payload:      TRUNCATED: {d['payload_bytes']} of {d['original_bytes']} bytes shown (sha256 of "
                     f"the original {d['original_sha256']}); the whole message is on the source topic at the "
                     "coordinates above, for its retention")
    else:
        lines.append(f"payload:      {d['payload_bytes']} bytes")
    lines.append("masked:       " + ("no (--raw)" if not d["masked"] else "exit IPs and e-mail addresses"))
    return "\n".join(lines) + "\n\n" + d["payload"] + "\n"


def latest(letters: Iterable[Letter]) -> dict[tuple[str, int, int, int], Letter]:
    """One letter per record (source coordinates): the latest (highest replay count, then the latest
    on the dead-letter topic). The topic is at-least-once: duplicates collapse here."""
    out: dict[tuple[str, int, int, int], Letter] = {}
    for x in letters:
        k = x.coordinates
        cur = out.get(k)
        if cur is None or (x.replay_count, x.timestamp_ms, x.dlq_offset) > (cur.replay_count, cur.timestamp_ms,
                                                                            cur.dlq_offset):
            out[k] = x
    return out


def read_letters(kafka_config: dict[str, Any], topic: str, since_ms: int | None = None,
                 keep: Callable[[Letter], bool] = lambda _: True, limit: int = 1_000_000,
                 timeout_s: float = 60.0) -> Iterator[Letter]:
    """The letters of the dead-letter topic from ``since_ms`` (or the beginning) up to the end it had
    when the scan started; at most ``limit`` messages scanned, ``timeout_s`` in all."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    consumer = Consumer({**kafka_config, "group.id": f"imtel-deadletters-{getpass.getuser()}",
                         "enable.auto.commit": False, "enable.partition.eof": False,
                         "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise DeadLetterError(f"dead-letter topic {topic} not found (IMTEL_TOPIC_DEAD_LETTERS)")
        tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        if since_ms is not None:
            starts = consumer.offsets_for_times([TopicPartition(topic, tp.partition, since_ms) for tp in tps],
                                                timeout=10)
            tps = [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else ends[tp.partition])
                   for tp in starts]
        else:
            tps = [TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in tps]
        pending = {tp.partition for tp in tps if ends[tp.partition] > 0 and tp.offset < ends[tp.partition]}
        if not pending:
            return
        consumer.assign([tp for tp in tps if tp.partition in pending])
        scanned, deadline = 0, time.monotonic() + timeout_s
        while pending and scanned < limit:
            if time.monotonic() > deadline:
                raise DeadLetterError(f"reading {topic} took over {timeout_s:.0f}s; narrow it with --since")
            batch = consumer.consume(500, 0.5)
            if not batch:  # the end may be a marker no message is delivered for: ask where the reads are
                for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= ends[tp.partition]:
                        pending.discard(tp.partition)
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                p, o = m.partition() or 0, m.offset() or 0
                if p not in pending:
                    continue
                if o >= ends[p] - 1:
                    pending.discard(p)
                if o >= ends[p]:
                    continue
                scanned += 1
                letter = Letter(p, o, m.timestamp()[1], m.key(), m.value() or b"", _headers(m.headers()))
                if keep(letter):
                    yield letter
    finally:
        consumer.close()


def _headers(items: Any) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, value in (items.items() if isinstance(items, dict) else items or ()):
        out[name] = value.encode() if isinstance(value, str) else (value or b"")
    return out


@dataclass(frozen=True)
class Selection:
    """Which letters ``show``/``replay`` take."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    source: Source | None = None

    def __call__(self, letter: Letter) -> bool:
        return ((not self.reasons or letter.reason in self.reasons)
                and (self.until_ms is None or letter.timestamp_ms < self.until_ms)
                and (self.source is None or self.source.matches(letter)))


# -- replay ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What ``replay`` sends and what it refuses (with why)."""

    send: list[Letter] = field(default_factory=list)
    refused: dict[str, list[Letter]] = field(default_factory=dict)

    def refuse(self, why: str, letter: Letter) -> None:
        self.refused.setdefault(why, []).append(letter)


def plan_replay(letters: Iterable[Letter], max_replays: int) -> Plan:
    """One letter per record (``latest``); refused: replayed ``max_replays`` times already, a cut
    payload, a reason whose payload is not the record that was sent."""
    plan = Plan()
    for letter in sorted(latest(letters).values(), key=lambda x: x.coordinates):
        if letter.replay_count >= max_replays:
            plan.refuse(f"replayed {letter.replay_count} times already (--max-replays {max_replays})", letter)
        elif letter.truncated:
            plan.refuse("payload truncated (the original is on the source topic at its coordinates)", letter)
        elif letter.reason in NOT_REPLAYABLE:
            plan.refuse(f"{letter.reason}: the letter holds the stored form of the row, not the record sent",
                        letter)
        else:
            plan.send.append(letter)
    return plan


def replay_headers(letter: Letter) -> list[tuple[str, bytes]]:
    """The headers of a replayed letter: its original coordinates and its replay count + 1."""
    return [(REPLAY_OF, format_coordinates(*letter.coordinates).encode()),
            (REPLAY_COUNT, str(letter.replay_count + 1).encode())]


def target_partition(letter: Letter, partitions: int) -> int:
    """The source partition (on the source topic: the worker owning it keeps that partition's
    aggregates), modulo the target's partition count: replays of one record always meet on one
    partition, in order, so the worker's lookup sees the earlier one."""
    return letter.src_partition % partitions if partitions > 0 else 0


def produce_replays(kafka_config: dict[str, Any], letters: Sequence[Letter], to: str | None,
                    timeout_s: float = 30.0) -> dict[str, int]:
    """Produce every letter (acks=all, idempotent) to its source topic or ``to``; returns records per
    target topic. Raises DeadLetterError when a target topic is missing or Kafka did not acknowledge."""
    from confluent_kafka import KafkaError, Producer

    producer = Producer({**kafka_config, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                         "compression.type": "zstd"})
    counts: dict[str, int] = {}
    failures: list[str] = []

    def done(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err.name())

    from pipeline.config.kafka import produce_blocking

    partitions: dict[str, int] = {}
    for letter in letters:
        target = to or letter.src_topic
        if target not in partitions:
            meta = producer.list_topics(target, timeout=10).topics.get(target)
            if meta is None or meta.error is not None or not meta.partitions:
                raise DeadLetterError(f"target topic {target} not found")
            partitions[target] = len(meta.partitions)
        produce_blocking(producer, target, letter.payload, letter.key,
                         partition=target_partition(letter, partitions[target]),
                         headers=replay_headers(letter), on_delivery=done)
        counts[target] = counts.get(target, 0) + 1
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        why = failures[0] if failures else f"{remaining} not acknowledged in {timeout_s:.0f}s"
        raise DeadLetterError(f"replay not acknowledged by Kafka ({why}); replaying again is safe (stored once)")
    return counts


def log_raw_access(letter: Letter) -> None:
    """``show --raw`` is logged: who, when, which letter (coordinates only, never the payload)."""
    log.warning("dead letter shown unmasked (--raw) to user %s: %s (reason %s)", getpass.getuser(),
                format_coordinates(*letter.coordinates), letter.reason)
