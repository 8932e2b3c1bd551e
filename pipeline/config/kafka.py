"""How the pipeline's own Kafka clients read and write, where more than one place needs the same.

The consumer's fetch settings and poll bound are shared by the worker's source and the benchmark's
"consume + decode" limit, which must read the topic the same way to be a fair ceiling. ``produce``
is the one producer send that waits for room in librdkafka's local queue instead of failing.
"""

from __future__ import annotations

from typing import Any

# Fetch settings of the worker's consumer.
FETCH_CONFIG: dict[str, Any] = {
    # The prefetch queue and the fetch responses behind it are most of the consumer's memory: a response
    # stays allocated until the last message of it was polled, so up to a queue's worth plus one response.
    # 8 MB of queue and 16 MB responses (1 MB per partition; a larger first batch still comes whole) still
    # cover a poll of 20k batched records (~5 MB) with room to spare; 32 MB and 50 MB
    # held ~40-80 MB more at the worker's peak (bench, both workloads) for no speed.
    "fetch.max.bytes": 16_777_216, "max.partition.fetch.bytes": 1_048_576,
    "queued.max.messages.kbytes": 8_192,
    # Once that queue is over its bound, librdkafka postpones the partition's next fetch by this much
    # (default 1 s): with batched messages the queue crosses it every few polls, and a 1 s pause per
    # crossing halved the throughput (bench: 270k -> 800k/s for consume + decode alone). A short
    # backoff costs a few idle wake-ups.
    "fetch.queue.backoff.ms": 5,
}
# Records one poll may bring. Each poll pays a fixed cost in the worker (the thread hop of ``consume``,
# the native decoder's ``take``, the Arrow batch, the cause scrub, the origin columns: ~0.6 ms), so on
# batched messages (~300 records each) a 10k cap meant ~33 messages a poll and that cost per ~7k records:
# the admission path alone, offline on 600k records of workload b, 0.291-0.309 CPU-s per million at 10k,
# 0.258-0.263 at 20k, 0.254-0.280 at 30k. A poll's transient allocation (its messages, ~5 MB at 20k
# batched records, and what they decode to: ~2 MB of native columns, or ~8 MB of structs on the msgspec
# path) stays well inside the 8 MB prefetch queue and the worker's memory goal.
POLL_RECORDS = 20_000


def produce_blocking(producer: Any, topic: str, value: bytes | None, key: bytes | None, wait: float = 0.05,
                     **kwargs: Any) -> None:
    """``producer.produce``, waiting (serving delivery callbacks) while the local queue is full:
    a burst must slow the sender down, not lose messages to ``BufferError``."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, **kwargs)
            return
        except BufferError:
            producer.poll(wait)
