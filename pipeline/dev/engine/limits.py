"""What one client may cost ``imtel engine``: body and decompression caps, per-phase deadlines
(slowloris) and the bounded connection pool.

Together these make a client that is not authenticated cost at most a request head and a small
discarded body, and an authenticated one never an unbounded amount of memory, threads or time.
"""

from __future__ import annotations

import io
import queue
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.dev.engine.protocol import EngineError

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one client may cost the engine. Authenticated clients are trusted with big inserts (the
    worker's largest batch, 1M rows, is ~100 MB compressed), never with unbounded ones; a client
    that is not authenticated costs at most the request head and 64 KiB of discarded body."""

    max_body_bytes: int = 128 * MIB  # on the wire; a larger Content-Length is refused before reading
    max_decoded_bytes: int = 512 * MIB  # after Content-Encoding (a zip bomb stops here)
    idle_timeout: float = 30.0  # keep-alive: no byte of the next request for this long closes the connection
    header_timeout: float = 10.0  # first byte of a request -> end of its headers (slowloris)
    body_timeout: float = 120.0  # end of the headers -> end of the body
    write_timeout: float = 120.0  # sending one answer
    max_connections: int = 64  # served at once, one thread each; more wait up to ``queue_wait``, then 503
    queue_wait: float = 1.0


DRAIN_BYTES = 64 * 1024  # a refused request's body up to this size is read and discarded (keeps keep-alive)


def too_big(what: str, limit: int) -> EngineError:
    return EngineError.of(307, f"The request {what} is larger than {limit} bytes, the limit of this server")


def decode_body(raw: bytes, encoding: str | None, limit: int = Limits.max_decoded_bytes) -> bytes:
    """Undo the request's Content-Encoding (what clickhouse-connect may send), never producing more
    than ``limit`` bytes: decompression stops as soon as the output would pass it."""
    encoding = (encoding or "identity").lower()
    if encoding == "identity":
        if len(raw) > limit:
            raise too_big("body", limit)
        return raw
    if encoding == "gzip":
        return _bounded(lambda: zlib.decompressobj(31), raw, limit)
    if encoding == "deflate":
        return _bounded(lambda: zlib.decompressobj(15), raw, limit)
    if encoding == "lz4":
        import lz4.frame

        return _bounded(lz4.frame.LZ4FrameDecompressor, raw, limit)
    if encoding == "zstd":
        from backports import zstd

        return _bounded(zstd.ZstdDecompressor, raw, limit)
    raise EngineError.of(48, f"Unsupported Content-Encoding: {encoding}")


def _bounded(new: Callable[[], Any], raw: bytes, limit: int) -> bytes:
    """Decompress the frames (gzip members) of ``raw`` one after another, at most ``limit`` bytes."""
    out: list[bytes] = []
    total, rest = 0, raw
    while rest:
        decompressor = new()
        try:
            chunk = decompressor.decompress(rest, limit - total + 1)
        except Exception as exc:  # zlib.error, RuntimeError (lz4), ZstdError: all mean a corrupt body
            raise EngineError.of(271, f"Cannot decompress the request body: {exc}") from None
        total += len(chunk)
        if total > limit:
            raise too_big("body after decompression", limit)
        if not decompressor.eof:
            raise EngineError.of(271, "Cannot decompress the request body: it ends inside a frame")
        out.append(chunk)
        rest = decompressor.unused_data
    return b"".join(out)


class Pool:
    """At most ``size`` jobs (connections) at once, on at most ``size`` daemon threads started on
    demand. Daemon threads, because a connection held by a ``stall`` fault must not delay exit."""

    def __init__(self, size: int, wait: float) -> None:
        self.size, self.wait = size, wait
        self.slots = threading.BoundedSemaphore(size)
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = self.busy = 0

    def submit(self, job: Callable[[], None]) -> bool:
        """Run ``job`` on a pool thread; False when no slot freed up within ``wait`` seconds."""
        if not self.slots.acquire(timeout=self.wait):
            return False
        with self.lock:
            self.busy += 1
            if self.busy > self.threads:  # every queued job has a thread that will take it
                self.threads += 1
                threading.Thread(target=self._work, name=f"engine-http-{self.threads}", daemon=True).start()
        self.jobs.put(job)
        return True

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job()
            finally:
                with self.lock:
                    self.busy -= 1
                self.slots.release()


_BUSY_TEXT = b"Code: 202. DB::Exception: Too many connections, try again. (TOO_MANY_SIMULTANEOUS_QUERIES)\n"
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"X-ClickHouse-Exception-Code: 202\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class DeadlineReader(io.RawIOBase):
    """A connection's reading side where a whole phase has one deadline, not each ``recv``: a
    client that sends a byte a second (slowloris) is cut off when the phase's time is up."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = float("inf")
        self.after_first: float | None = None

    def readable(self) -> bool:
        return True

    def expect(self, seconds: float, then: float | None = None) -> None:
        """The next bytes must arrive within ``seconds``; once one has, the rest within ``then``."""
        self.deadline, self.after_first = time.monotonic() + seconds, then

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client was too slow")
        self.sock.settimeout(remaining)
        n = self.sock.recv_into(buffer)
        if n and self.after_first is not None:
            self.deadline, self.after_first = time.monotonic() + self.after_first, None
        return n
