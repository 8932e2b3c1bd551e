"""The one interface the consumer drives: admission (``ingest/admission.py``) joined to delivery
(``sinks/writer.py``).

The consumer hands it message batches, asks whether to flush, seals a buffer and has it written on
an I/O thread, and commits the offsets a write returns; on assignment it asks what a previous owner
left stored but uncommitted. It never reaches into the buffer or the writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pipeline.config.policy import Policy
from pipeline.config.settings import Settings
from pipeline.ingest.admission import Admission, Message
from pipeline.ingest.buffer import Buffer
from pipeline.ingest.privacy import Minimiser
from pipeline.monitoring import sli
from pipeline.monitoring.metrics import Metrics
from pipeline.sinks.protocol import DeadLetterSink, Store
from pipeline.sinks.writer import Writer


class Processor:
    """Admission and delivery of one worker, seen as one object."""

    def __init__(self, settings: Settings, store: Store, dead_letters: DeadLetterSink, metrics: Metrics,
                 policy: Policy, clock: Callable[[], float] = time.time) -> None:
        self.admission = Admission(settings, metrics, policy, clock)
        self.writer = Writer(settings, store, dead_letters, metrics, clock)

    # -- admission --------------------------------------------------------------------------------
    def process(self, messages: Sequence[Message]) -> int:
        """Buffer a prefix of a batch; returns how many messages were taken (``Admission.process``)."""
        return self.admission.process(messages)

    def should_flush(self, idle: bool = False) -> bool:
        return self.admission.should_flush(idle)

    def buffered(self) -> int:
        """Records in the current buffer."""
        return len(self.admission.buffer)

    def has_pending(self) -> bool:
        """Whether the current buffer holds offsets not yet written."""
        return bool(self.admission.buffer.next_offsets)

    def poll_size(self) -> int:
        """Messages the next poll may take by the records they hold (``Admission.poll_size``)."""
        return self.admission.poll_size()

    def set_topic_id(self, topic: str, topic_id: str) -> None:
        self.admission.topic_ids[topic] = topic_id

    @property
    def minimise(self) -> Minimiser:
        return self.admission.minimise

    # -- delivery ---------------------------------------------------------------------------------
    def seal(self) -> Buffer | None:
        """Hand over the current buffer for writing and start a new one."""
        return self.admission.seal()

    def write(self, b: Buffer) -> dict[tuple[str, int], int]:
        """Store one sealed buffer; returns the offsets that may now be committed (``Writer.write``)."""
        return self.writer.write(b)

    def flush(self) -> dict[tuple[str, int], int]:
        """Write the current buffer now (synchronously); it stays current if writing fails."""
        b = self.admission.buffer
        offsets = self.writer.write(b)
        if self.admission.buffer is b:
            self.admission.buffer = Buffer()
        return offsets

    def discard(self) -> int:
        """Drop everything buffered (revocation when it cannot be written): nothing was committed."""
        return self.admission.discard()

    # -- assignment -------------------------------------------------------------------------------
    def recover(self, topic: str, partition: int, committed: int) -> int:
        """Before consuming a partition: learn what was stored past its committed offset.
        Returns how many stored records will be skipped on replay."""
        keys = self.writer.recover(topic, self.admission.topic_id(topic), partition, committed)
        self.admission.skip_on_replay(topic, partition, keys)
        return len(keys)

    def forget(self, topic: str, partition: int) -> None:
        self.admission.forget(topic, partition)

    @property
    def recent(self) -> list[tuple[float, sli.Summary]]:
        """SLI summaries of recent writes, for the live view."""
        return self.writer.recent
