"""Tests for kraken.backends.streams: file producer, threaded file consumer, download helpers."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kraken.backends.fs import FilesystemBackend
from kraken.backends.interface import BlobNotFound
from kraken.backends.streams import (
    BytesConsumer,
    FileSender,
    ObjectTooLarge,
    ThreadedFileWriter,
    download_bytes,
    download_to_path,
)
from kraken.io.runner import run_inline
from tests.backends.base import NAMESPACE, blob_name, read_file


class ManualRunner:
    """A BlockingRunner that queues calls until the test runs them, one by one."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Queue the call."""
        d: Deferred[Any] = Deferred()
        self.calls.append((lambda: function(*args, **kwargs), (), d))
        return d

    def run_one(self) -> None:
        """Run the oldest queued call and fire its Deferred."""
        call, _, d = self.calls.pop(0)
        try:
            result = call()
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def run_all(self) -> None:
        """Run queued calls (including ones they queue) until none are left."""
        while self.calls:
            self.run_one()


@implementer(IPushProducer)
class RecordingProducer:
    """A push producer that records what its consumer asked of it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        """Record a pause."""
        self.events.append("pause")

    def resumeProducing(self) -> None:
        """Record a resume."""
        self.events.append("resume")

    def stopProducing(self) -> None:
        """Record a stop."""
        self.events.append("stop")


class BrokenFile(io.BytesIO):
    """A file whose writes fail as on a full disk."""

    def writelines(self, lines: Any) -> None:
        """Fail."""
        raise OSError(28, "No space left on device")


class ThreadedFileWriterTests(SynchronousTestCase):
    """ThreadedFileWriter writes in order through the runner and paces its producer."""

    def setUp(self) -> None:
        """A writer on an in-memory file with a manual runner, high water 10, low water 5."""
        self.runner = ManualRunner()
        self.file = io.BytesIO()
        self.writer = ThreadedFileWriter(self.file, self.runner, high_water=10)
        self.producer = RecordingProducer()

    def test_provides_iconsumer(self) -> None:
        """The writer is an IConsumer."""
        self.assertTrue(verifyObject(IConsumer, self.writer))

    def test_writes_only_in_runner(self) -> None:
        """write() queues; the file changes only when the runner runs, then in order."""
        self.writer.write(b"abc")
        self.writer.write(b"def")
        self.assertEqual(self.file.getvalue(), b"")
        self.runner.run_all()
        self.writer.write(b"gh")
        self.runner.run_all()
        self.assertEqual(self.file.getvalue(), b"abcdefgh")
        self.assertEqual(self.writer.bytes_written, 8)

    def test_pause_and_resume(self) -> None:
        """The producer is paused at high water and resumed once at most low water remains."""
        self.writer.registerProducer(self.producer, True)
        for _ in range(3):
            self.writer.write(b"1234")
        self.assertEqual(self.producer.events, ["pause"])
        self.runner.run_one()  # the first chunk: 8 bytes still queued, above low water
        self.assertEqual(self.producer.events, ["pause"])
        self.runner.run_one()  # the other two chunks in one batch
        self.assertEqual(self.producer.events, ["pause", "resume"])
        self.assertEqual(self.file.getvalue(), b"1234" * 3)

    def test_close_waits_for_queued_writes(self) -> None:
        """close() fires only after every queued write, then closes the file."""
        self.writer.write(b"data")
        closed = self.writer.close()
        self.assertNoResult(closed)
        self.runner.run_all()
        self.successResultOf(closed)
        self.assertTrue(self.file.closed)

    def test_close_fsync(self) -> None:
        """close(fsync=True) fsyncs the file's descriptor before closing it."""
        synced: list[int] = []
        self.patch(os, "fsync", synced.append)
        path = self.mktemp()
        with open(path, "wb") as file:
            writer = ThreadedFileWriter(file, run_inline)
            writer.write(b"x")
            fd = file.fileno()
            self.successResultOf(writer.close(fsync=True))
        self.assertEqual(synced, [fd])
        self.assertEqual(read_file(path), b"x")

    def test_write_error(self) -> None:
        """A failed write stops the producer, drops later data and fails close()."""
        writer = ThreadedFileWriter(BrokenFile(), run_inline, high_water=10)
        writer.registerProducer(self.producer, True)
        writer.write(b"abc")
        self.assertEqual(self.producer.events, ["stop"])
        writer.write(b"more")
        self.assertIsInstance(writer.error, OSError)
        self.failureResultOf(writer.close(), OSError)

    def test_register_after_error_stops(self) -> None:
        """A producer registered after a write failed is stopped at once."""
        writer = ThreadedFileWriter(BrokenFile(), run_inline)
        writer.write(b"abc")
        writer.registerProducer(self.producer, True)
        self.assertEqual(self.producer.events, ["stop"])

    def test_misuse(self) -> None:
        """Pull producers, a second producer and writes after close are refused."""
        self.assertRaises(ValueError, self.writer.registerProducer, self.producer, False)
        self.writer.registerProducer(self.producer, True)
        self.assertRaises(RuntimeError, self.writer.registerProducer, RecordingProducer(), True)
        self.writer.close()
        self.assertRaises(RuntimeError, self.writer.write, b"late")

    def test_bad_water_marks(self) -> None:
        """low_water must be below high_water."""
        self.assertRaises(ValueError, ThreadedFileWriter, io.BytesIO(), run_inline, 10, 10)


class FileSenderTests(SynchronousTestCase):
    """FileSender streams from the file's position in chunks."""

    def test_from_position(self) -> None:
        """Sending starts where the file is positioned and counts only what it sent."""
        file = io.BytesIO(b"0123456789")
        file.seek(4)
        consumer = BytesConsumer()
        self.assertEqual(self.successResultOf(FileSender(file, run_inline, 4).send(consumer)), 6)
        self.assertEqual(consumer.value(), b"456789")

    def test_read_error(self) -> None:
        """A read error fails the send and unregisters the producer."""

        class Unreadable(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                raise OSError(5, "I/O error")

        consumer = BytesConsumer()
        self.failureResultOf(FileSender(Unreadable(), run_inline).send(consumer), OSError)
        self.assertIsNone(consumer.producer)

    def test_bad_chunk_size(self) -> None:
        """A chunk size below 1 is refused."""
        self.assertRaises(ValueError, FileSender, io.BytesIO(), run_inline, 0)


class DownloadHelperTests(SynchronousTestCase):
    """download_to_path and download_bytes over the fs backend."""

    def setUp(self) -> None:
        """An fs backend with 4-byte chunks holding one 10-byte blob."""
        self.backend = FilesystemBackend(self.mktemp(), run_inline, chunk_size=4)
        self.name = blob_name("helpers")
        self.successResultOf(self.backend.upload(NAMESPACE, self.name, b"0123456789"))

    def test_download_to_path_missing(self) -> None:
        """An absent object fails with BlobNotFound (the target file is left empty)."""
        target = self.mktemp()
        d = download_to_path(self.backend, NAMESPACE, blob_name("absent"), target, run_inline)
        self.failureResultOf(d, BlobNotFound)
        self.assertEqual(read_file(target), b"")

    def test_download_to_path_reports_write_error(self) -> None:
        """A write error is reported as itself, not as the TransferStopped it causes."""

        def run(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred[Any]:
            if getattr(function, "__name__", "") == "writelines":
                return fail(OSError(28, "No space left on device"))
            return run_inline(function, *args, **kwargs)

        d = download_to_path(self.backend, NAMESPACE, self.name, self.mktemp(), run)
        self.assertEqual(self.failureResultOf(d, OSError).value.errno, 28)

    def test_download_to_path_unopenable(self) -> None:
        """A target that cannot be opened fails with the OSError."""
        target = os.path.join(self.mktemp(), "missing-dir", "file")
        d = download_to_path(self.backend, NAMESPACE, self.name, target, run_inline)
        self.failureResultOf(d, FileNotFoundError)

    def test_download_bytes_limit(self) -> None:
        """download_bytes accepts an object of exactly max_size and refuses a larger one."""
        d = download_bytes(self.backend, NAMESPACE, self.name, max_size=10)
        self.assertEqual(self.successResultOf(d), b"0123456789")
        d = download_bytes(self.backend, NAMESPACE, self.name, max_size=9)
        error = self.failureResultOf(d, ObjectTooLarge).value
        self.assertIn(self.name, str(error))

    def test_download_bytes_missing(self) -> None:
        """download_bytes of an absent object fails with BlobNotFound."""
        d = download_bytes(self.backend, NAMESPACE, blob_name("absent"))
        self.failureResultOf(d, BlobNotFound)
