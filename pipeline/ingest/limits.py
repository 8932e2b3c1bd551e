"""Bounds that keep one hostile message from costing unbounded memory or dead letters (pure logic).

- ``oversize``: a message too large to decode (``too_large``) or holding more records than allowed
  (``too_many_records``) is not decoded: it becomes one dead letter "by reference" (its source
  coordinates; the payload is cut, see ``cut``). Counting the records of a JSON array must not build
  them (a list of 4 million ``msgspec.Raw`` costs ~280 MB): ``array_elements`` counts the top-level
  commas with numpy, one window at a time.
- ``plan_letters``: a message with more than ``per_message`` invalid records becomes one dead letter
  for the whole message (reason ``many_invalid``) instead of one per record; the ledger keeps a row
  per record.
- ``cut``: a dead letter's payload above a stated size is cut; headers carry the original size, its
  sha256 and a truncation flag.
- ``permanent``: the Kafka refusals of a dead letter that no retry can fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import KafkaError

from pipeline.ingest.buffer import DeadLetter, Origin
from pipeline.ingest.decode import WHOLE_MESSAGE

WINDOW = 1 << 20  # bytes scanned per numpy step by ``array_elements``
_QUOTE, _BACKSLASH, _COMMA = 34, 92, 44
_OPEN = np.array([91, 123], np.uint8)  # [ {
_CLOSE = np.array([93, 125], np.uint8)  # ] }


def array_elements(data: bytes) -> int:
    """Top-level elements of a JSON array (commas outside strings at depth 1, plus one), without
    decoding it. Exact for well-formed JSON (``[]`` counts 1: it is used as a bound); for malformed
    input an estimate, which the decoder then refuses anyway. Memory: a few arrays of ``WINDOW``."""
    buf = np.frombuffer(data, np.uint8)
    in_string, depth, run, commas = 0, 0, 0, 0  # carried from one window to the next
    for start in range(0, len(buf), WINDOW):
        w = buf[start:start + WINDOW]
        n = len(w)
        bs = w == _BACKSLASH
        idx = np.arange(n)
        last_plain = np.maximum.accumulate(np.where(bs, -1, idx))  # last non-backslash at or before i
        # backslashes right before position i: a quote after an odd number of them is escaped
        before = np.empty(n, np.int64)
        before[0] = run
        prev = last_plain[:-1]
        before[1:] = np.where(prev < 0, idx[1:] + run, idx[1:] - 1 - prev)
        quotes = (w == _QUOTE) & (before % 2 == 0)
        inside = np.bitwise_xor.accumulate(quotes.astype(np.uint8)) ^ in_string  # 1 inside a string
        outside = inside == 0
        delta = np.isin(w, _OPEN).astype(np.int32) - np.isin(w, _CLOSE).astype(np.int32)
        delta[~outside] = 0
        level = np.cumsum(delta, dtype=np.int64) + depth
        commas += int(np.count_nonzero((w == _COMMA) & outside & (level == 1)))
        in_string, depth = int(inside[-1]), int(level[-1])
        trailing = n - 1 - int(last_plain[-1])
        run = trailing + run if last_plain[-1] < 0 else trailing
    return commas + 1


def records_bound(value: bytes, max_records: int) -> int:
    """An upper bound of the records a message holds, exact once it matters (above ``max_records``):
    array elements, or NDJSON lines, or 1. Cheap for ordinary messages: a message of at most
    ``2 * max_records`` bytes cannot hold more (a record takes at least two bytes)."""
    if len(value) <= 2 * max_records:
        return 0
    head = value.lstrip()[:1]
    if head == b"[":
        commas = value.count(b",") + 1  # every top-level comma is a comma: an upper bound, fast
        return commas if commas <= max_records else array_elements(value)
    return value.count(b"\n") + 1


def oversize(value: bytes | None, max_bytes: int, max_records: int) -> tuple[str, str] | None:
    """(reason, detail) when a message is dead-lettered by reference instead of decoded, else None."""
    if not value:
        return None
    if len(value) > max_bytes:
        return "too_large", f"message of {len(value)} bytes, above IMTEL_DECODE_MAX_BYTES ({max_bytes})"
    n = records_bound(value, max_records)
    if n > max_records:
        return "too_many_records", (f"message of {n} records, above IMTEL_MESSAGE_MAX_RECORDS ({max_records})")
    return None


def cut(payload: bytes, limit: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The payload a dead letter carries (at most ``limit`` bytes) and the headers that describe the
    original: ``imtel-original-bytes``, ``imtel-original-sha256`` (hex), ``imtel-truncated``."""
    headers = [("imtel-original-bytes", str(len(payload)).encode()),
               ("imtel-original-sha256", hashlib.sha256(payload).hexdigest().encode()),
               ("imtel-truncated", b"true" if len(payload) > limit else b"false")]
    return payload[:limit], headers


@dataclass(slots=True)
class Outgoing:
    """One dead letter for the topic and the ledger rows (records) it stands for."""

    letter: DeadLetter
    records: list[DeadLetter]


def plan_letters(letters: Sequence[DeadLetter], per_message: int) -> list[Outgoing]:
    """Group the invalid records of each message: at most ``per_message`` letters per message; a
    message with more invalid records than that gets one letter for the whole message (index -1,
    reason ``many_invalid``, the message's original bytes), in the order first met."""
    groups: dict[tuple[str, int, int], list[DeadLetter]] = {}
    for letter in letters:
        o = letter.origin
        groups.setdefault((o.topic, o.partition, o.offset), []).append(letter)
    out: list[Outgoing] = []
    for group in groups.values():
        if len(group) <= per_message:
            out.extend(Outgoing(x, [x]) for x in group)
            continue
        first = group[0]
        reasons: dict[str, int] = {}
        for x in group:
            reasons[x.reason] = reasons.get(x.reason, 0) + 1
        summary = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        o = first.origin
        whole = DeadLetter(Origin(o.topic, o.topic_id, o.partition, o.offset, WHOLE_MESSAGE), "many_invalid",
                           f"{len(group)} invalid records in the message ({summary}); first at index {o.index}: "
                           f"{first.detail}"[:500], first.message if first.message is not None else first.raw,
                           first.key, replay=first.replay)
        out.append(Outgoing(whole, group))
    return out


# Refusals of a produced dead letter that no retry fixes: the letter itself is at fault (too large,
# malformed). Authorization and broker availability are not here: an operator can fix those, so they
# are retried (the write stalls, readiness fails and an alert names it).
PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE, KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
})


def permanent(code: int) -> bool:
    """True when Kafka's refusal of a dead letter is final (record it in the ledger, move on)."""
    return code in PERMANENT
