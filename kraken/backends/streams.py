"""
Moving backend bytes without blocking the reactor: producers and consumers for files.

- :class:`FileSender` streams an open file into any ``IConsumer`` (an HTTP response, a
  :class:`ThreadedFileWriter`), reading chunk by chunk through a :class:`BlockingRunner` and
  honouring ``pauseProducing``.  Backends use it to implement :meth:`IBackend.download`.
- :class:`ThreadedFileWriter` is an ``IConsumer`` that writes to a file through the runner and
  pauses its producer while more than ``high_water`` bytes wait to be written.
- :func:`download_to_path` joins the two: the origin uses it to pull a multi-GB blob from the
  backend into a store upload file.  Memory stays bounded by ``high_water`` plus one chunk, and
  the reactor thread only hands buffers over.
- :func:`download_bytes` collects a small object (a tag) in memory, with a size cap.

A runner whose calls block on the reactor (e.g. a backend thread that waits in
``blockingCallFromThread`` while its consumer is paused) must not share a small pool with a
:class:`ThreadedFileWriter`: the writer needs a free thread to drain and resume it.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from typing import BinaryIO, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from zope.interface import implementer

from kraken.backends.interface import BackendError, IBackend, TransferStopped
from kraken.io.runner import BlockingRunner

#: Bytes read per call when streaming a file.
DEFAULT_CHUNK_SIZE = 1 << 20

#: Bytes a :class:`ThreadedFileWriter` buffers before it pauses its producer.
DEFAULT_HIGH_WATER = 8 << 20


class ObjectTooLarge(BackendError):
    """An object was larger than the caller allowed for (see :func:`download_bytes`)."""


@implementer(IPushProducer)
class FileSender:
    """Streams an open binary file, from its current position, into a consumer."""

    def __init__(
        self, file: BinaryIO, run: BlockingRunner, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._file = file
        self._run = run
        self._chunk_size = chunk_size
        self._paused = False
        self._stopped = False
        self._wakeup: Deferred[None] | None = None

    def send(self, consumer: IConsumer) -> Deferred[int]:
        """
        Register with ``consumer``, write the rest of the file, unregister; fire with the count.

        The file is not closed.  Fails with :class:`TransferStopped` if the consumer stops us.
        """
        consumer.registerProducer(self, True)

        def unregister(result: object) -> object:
            consumer.unregisterProducer()
            return result

        d = ensureDeferred(self._send(consumer))
        d.addBoth(unregister)
        return d

    async def _send(self, consumer: IConsumer) -> int:
        total = 0
        while True:
            while self._paused and not self._stopped:
                self._wakeup = Deferred()
                await self._wakeup
            if self._stopped:
                raise TransferStopped(f"consumer stopped the transfer after {total} bytes")
            data = await self._run(self._file.read, self._chunk_size)
            if self._stopped:
                raise TransferStopped(f"consumer stopped the transfer after {total} bytes")
            if not data:
                return total
            consumer.write(data)
            total += len(data)

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.callback(None)

    def pauseProducing(self) -> None:
        """Stop reading until :meth:`resumeProducing`."""
        self._paused = True

    def resumeProducing(self) -> None:
        """Read again."""
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        """Abandon the transfer; :meth:`send`'s Deferred fails with TransferStopped."""
        self._stopped = True
        self._wake()


@implementer(IConsumer)
class ThreadedFileWriter:
    """
    An ``IConsumer`` that writes to an open binary file through a runner, in order.

    Only push producers are accepted.  While more than ``high_water`` bytes wait to be
    written the producer is paused; it is resumed at ``low_water`` (default half of it).
    A failed write stops the producer, drops later data, and is raised by :meth:`close`.
    """

    def __init__(
        self,
        file: BinaryIO,
        run: BlockingRunner,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int | None = None,
    ) -> None:
        self._file = file
        self._run = run
        self._high_water = high_water
        self._low_water = high_water // 2 if low_water is None else low_water
        if not 0 <= self._low_water < self._high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {low_water}, {high_water}")
        self._producer: IPushProducer | None = None
        self._paused = False
        self._queue: deque[bytes] = deque()
        self._buffered = 0
        self._draining = False
        self._idle: list[Deferred[None]] = []
        self._error: Exception | None = None
        self._closed = False
        self.bytes_written = 0
        """Bytes that reached the file so far."""

    @property
    def error(self) -> Exception | None:
        """The error of the first write that failed, if any."""
        return self._error

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Accept a push producer (the one whose writes we pace)."""
        if self._producer is not None:
            raise RuntimeError(f"a producer is already registered: {self._producer!r}")
        if not streaming:
            raise ValueError("ThreadedFileWriter accepts only push (streaming) producers")
        self._producer = cast(IPushProducer, producer)
        self._paused = False
        if self._error is not None:
            producer.stopProducing()
        elif self._buffered >= self._high_water:
            self._pause()

    def unregisterProducer(self) -> None:
        """Forget the producer."""
        self._producer = None
        self._paused = False

    def write(self, data: bytes) -> None:
        """Queue ``data``; it is written in the runner after everything before it."""
        if self._closed:
            raise RuntimeError("write() after close()")
        if self._error is not None:
            return
        self._queue.append(bytes(data))
        self._buffered += len(data)
        if self._buffered >= self._high_water:
            self._pause()
        if not self._draining:
            self._draining = True
            ensureDeferred(self._drain())

    def _pause(self) -> None:
        if self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

    async def _drain(self) -> None:
        try:
            while self._queue and self._error is None:
                chunks = list(self._queue)
                self._queue.clear()
                size = sum(len(c) for c in chunks)
                try:
                    await self._run(self._file.writelines, chunks)
                except Exception as e:
                    self._error = e
                    self._queue.clear()
                    self._buffered = 0
                    if self._producer is not None:
                        self._producer.stopProducing()
                    return
                self._buffered -= size
                self.bytes_written += size
                if self._paused and self._buffered <= self._low_water:
                    self._paused = False
                    if self._producer is not None:
                        self._producer.resumeProducing()
        finally:
            self._draining = False
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)

    def close(self, fsync: bool = False) -> Deferred[None]:
        """
        Wait for queued writes, flush (and ``fsync`` if asked), close the file.

        Fails with the error of a failed write, if there was one.
        """
        return ensureDeferred(self._close(fsync))

    async def _close(self, fsync: bool) -> None:
        self._closed = True
        while self._draining:
            waiter: Deferred[None] = Deferred()
            self._idle.append(waiter)
            await waiter
        if self._error is not None:
            await self._run(self._file.close)
            raise self._error
        await self._run(_flush_and_close, self._file, fsync)


def _flush_and_close(file: BinaryIO, fsync: bool) -> None:
    try:
        file.flush()
        if fsync:
            os.fsync(file.fileno())
    finally:
        file.close()


def _open_for_writing(path: str | os.PathLike[str]) -> BinaryIO:
    return open(path, "wb")  # closed by ThreadedFileWriter.close


def download_to_path(
    backend: IBackend,
    namespace: str,
    name: str,
    path: str | os.PathLike[str],
    run: BlockingRunner,
    *,
    fsync: bool = False,
    high_water: int = DEFAULT_HIGH_WATER,
) -> Deferred[int]:
    """
    Download an object into the file at ``path`` (created or truncated); fire with its size.

    Every file operation goes through ``run``.  On failure the file is closed and left as it
    is (possibly empty or partial) for the caller to discard; a write error (disk full) is
    reported in preference to the :class:`TransferStopped` it causes.
    """

    async def download() -> int:
        writer = ThreadedFileWriter(await run(_open_for_writing, path), run, high_water)
        try:
            size: int = await backend.download(namespace, name, writer)
        except TransferStopped:
            await writer.close()  # raises the write error that stopped the transfer, if any
            raise
        except Exception:
            with contextlib.suppress(Exception):  # the download's own error is the one to report
                await writer.close()
            raise
        await writer.close(fsync=fsync)
        return size

    return ensureDeferred(download())


@implementer(IConsumer)
class BytesConsumer:
    """An ``IConsumer`` that keeps everything written to it (for small objects and tests)."""

    def __init__(self, max_size: int | None = None) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._max_size = max_size
        self.producer: IProducer | None = None
        self.overflowed = False
        """Whether more than ``max_size`` bytes arrived (the producer was then stopped)."""

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Remember the producer (so that an overflow can stop it)."""
        if self.producer is not None:
            raise RuntimeError(f"a producer is already registered: {self.producer!r}")
        self.producer = producer

    def unregisterProducer(self) -> None:
        """Forget the producer."""
        self.producer = None

    def write(self, data: bytes) -> None:
        """Keep ``data``, unless that would pass ``max_size``."""
        if self.overflowed:
            return
        self._size += len(data)
        if self._max_size is not None and self._size > self._max_size:
            self.overflowed = True
            self._chunks.clear()
            if self.producer is not None:
                self.producer.stopProducing()
            return
        self._chunks.append(bytes(data))

    def value(self) -> bytes:
        """Everything written so far."""
        return b"".join(self._chunks)


def download_bytes(
    backend: IBackend, namespace: str, name: str, max_size: int = 1 << 20
) -> Deferred[bytes]:
    """Download a small object into memory; fail with :class:`ObjectTooLarge` past ``max_size``."""

    async def download() -> bytes:
        consumer = BytesConsumer(max_size)
        try:
            await backend.download(namespace, name, consumer)
        except TransferStopped:
            if consumer.overflowed:
                raise ObjectTooLarge(
                    f"object {name!r} in namespace {namespace!r} is larger than {max_size} bytes"
                ) from None
            raise
        return consumer.value()

    return ensureDeferred(download())
