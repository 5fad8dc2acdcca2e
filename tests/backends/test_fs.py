"""Tests for kraken.backends.fs: the abstract suite plus layout, atomicity and streaming."""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.backends.fs import FilesystemBackend
from kraken.backends.interface import BlobNotFound, IBackend, TransferStopped
from kraken.backends.streams import BytesConsumer, download_to_path
from kraken.io.runner import BlockingRunner, run_inline, threadpool_runner
from tests.backends.base import (
    BAD_NAMES,
    NAMESPACE,
    ReadWriteBackendTests,
    RunAsynchronously,
    RunSynchronously,
    blob_name,
    read_file,
)

reactor = cast(IReactorFromThreads, _reactor)


class FilesystemBackendTests(RunSynchronously, ReadWriteBackendTests, SynchronousTestCase):
    """The fs backend, with blocking calls run inline, passes the abstract suite."""

    def make_backend(self) -> IBackend:
        """A FilesystemBackend in a fresh directory, with a small chunk size."""
        return FilesystemBackend(self.mktemp(), run_inline, chunk_size=64 * 1024)


class FilesystemBackendThreadedTests(RunAsynchronously, ReadWriteBackendTests, TestCase):
    """The fs backend on a real thread pool and reactor passes the abstract suite too."""

    def setUp(self) -> None:
        """Start a thread pool for the backend; stop it after the test."""
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name="fs-backend-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def make_backend(self) -> IBackend:
        """A FilesystemBackend whose I/O runs in the pool."""
        return FilesystemBackend(self.mktemp(), threadpool_runner(reactor, self.pool))

    def test_download_to_path_in_threads(self) -> Deferred[None]:
        """download_to_path with the writer in the pool lands a multi-chunk blob intact."""
        run: BlockingRunner = threadpool_runner(reactor, self.pool)
        backend = FilesystemBackend(self.mktemp(), run, chunk_size=100_000)
        data = os.urandom(3_000_001)
        name = blob_name("threads")

        async def check() -> None:
            await backend.upload(NAMESPACE, name, data)
            target = self.mktemp()
            size = await download_to_path(backend, NAMESPACE, name, target, run, high_water=250_000)
            self.assertEqual(size, len(data))
            self.assertEqual(read_file(target), data)

        return ensureDeferred(check())


class PausingConsumer(BytesConsumer):
    """Pauses its producer after every write, so a test can step the transfer."""

    def write(self, data: bytes) -> None:
        """Keep the data, then pause."""
        super().write(data)
        assert self.producer is not None
        self.producer.pauseProducing()  # type: ignore[attr-defined]


class FilesystemLayoutTests(SynchronousTestCase):
    """Where the fs backend puts things, and what it never does to the disk."""

    def setUp(self) -> None:
        """A backend in a fresh directory with 10-byte chunks."""
        self.root = os.path.abspath(self.mktemp())
        self.backend = FilesystemBackend(self.root, run_inline, chunk_size=10)

    def files(self) -> list[str]:
        """Every file under the root, relative to it."""
        found: list[str] = []
        for directory, _, names in os.walk(self.root):
            found.extend(os.path.relpath(os.path.join(directory, n), self.root) for n in names)
        return sorted(found)

    def test_blob_path_is_sharded(self) -> None:
        """A blob lives at blobs/<hex[0:2]>/<hex>."""
        name = blob_name("layout")
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"x"))
        self.assertEqual(self.files(), [os.path.join("blobs", name[:2], name)])

    def test_tag_path(self) -> None:
        """A tag repo/name:tag lives at tags/repo/name/_tags/tag (no ':' on disk)."""
        self.successResultOf(self.backend.upload("ns", "library/alpine:3.19", b"x"))
        self.assertEqual(self.files(), [os.path.join("tags", "library", "alpine", "_tags", "3.19")])

    def test_namespace_does_not_change_path(self) -> None:
        """Objects are keyed by name: the same name in two namespaces is one object."""
        name = blob_name("shared")
        self.successResultOf(self.backend.upload("one", name, b"1"))
        consumer = BytesConsumer()
        self.successResultOf(self.backend.download("two", name, consumer))
        self.assertEqual(consumer.value(), b"1")

    def test_bad_names_touch_nothing(self) -> None:
        """Rejected names create no file or directory, inside the root or next to it."""
        parent = os.path.dirname(self.root)
        before = sorted(os.listdir(parent))
        for name in BAD_NAMES:
            self.failureResultOf(self.backend.upload(NAMESPACE, name, b"x"))
        self.assertEqual(sorted(os.listdir(parent)), before)
        self.assertFalse(os.path.exists(self.root))

    def test_no_temporary_files_left(self) -> None:
        """After uploads and an overwrite only the objects remain (temp files renamed away)."""
        name = blob_name("tmp")
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"a"))
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"b"))
        self.assertEqual(self.files(), [os.path.join("blobs", name[:2], name)])

    def test_failed_write_keeps_old_content(self) -> None:
        """A write that fails midway leaves the previous object intact and no temp file."""
        name = blob_name("fail")
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"old"))

        def broken_fsync(fd: int) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "fsync", broken_fsync)
        self.failureResultOf(self.backend.upload(NAMESPACE, name, b"new"), OSError)
        self.assertEqual(self.files(), [os.path.join("blobs", name[:2], name)])
        consumer = BytesConsumer()
        self.successResultOf(self.backend.download(NAMESPACE, name, consumer))
        self.assertEqual(consumer.value(), b"old")

    def test_list_ignores_strays(self) -> None:
        """Temporary files, odd files and directories under the root are never listed."""
        name = blob_name("real")
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"x"))
        self.successResultOf(self.backend.upload(NAMESPACE, "repo:tag", b"x"))
        for stray in [
            os.path.join("blobs", name[:2], ".tmp-123"),
            os.path.join("blobs", name[:2], "notahexname"),
            os.path.join("blobs", "zz", "0" * 64),
            os.path.join("tags", "repo", "_tags", ".tmp-1"),
            os.path.join("tags", "_tags", "orphan"),
            os.path.join("tags", "repo", "README"),
            "stray",
        ]:
            path = os.path.join(self.root, stray)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"?")
        os.makedirs(os.path.join(self.root, "tags", "repo", "_tags", "dir"))
        result = self.successResultOf(self.backend.list(""))
        self.assertEqual(result.names, tuple(sorted([name, "repo:tag"])))

    def test_directory_is_not_an_object(self) -> None:
        """A directory where an object would be is reported as not found."""
        os.makedirs(self.backend.path_of("repo:tag"))
        self.failureResultOf(self.backend.stat(NAMESPACE, "repo:tag"), BlobNotFound)
        self.failureResultOf(
            self.backend.download(NAMESPACE, "repo:tag", BytesConsumer()), BlobNotFound
        )

    def test_download_in_chunks(self) -> None:
        """download writes chunk_size pieces, in order."""
        name = blob_name("chunks")
        data = bytes(range(95))
        self.successResultOf(self.backend.upload(NAMESPACE, name, data))
        writes: list[bytes] = []

        class Recorder(BytesConsumer):
            def write(self, chunk: bytes) -> None:
                writes.append(chunk)

        self.assertEqual(
            self.successResultOf(self.backend.download(NAMESPACE, name, Recorder())), 95
        )
        self.assertEqual([len(w) for w in writes], [10] * 9 + [5])
        self.assertEqual(b"".join(writes), data)

    def test_download_honours_pause(self) -> None:
        """After pauseProducing nothing more is written until resumeProducing."""
        name = blob_name("pause")
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"a" * 25))
        consumer = PausingConsumer()
        d = self.backend.download(NAMESPACE, name, consumer)
        self.assertNoResult(d)
        self.assertEqual(consumer.value(), b"a" * 10)
        producer: Any = consumer.producer
        producer.resumeProducing()
        self.assertEqual(consumer.value(), b"a" * 20)
        self.assertNoResult(d)
        producer.resumeProducing()
        self.assertEqual(consumer.value(), b"a" * 25)
        producer.resumeProducing()
        self.assertEqual(self.successResultOf(d), 25)
        self.assertIsNone(consumer.producer)

    def test_download_stopped(self) -> None:
        """stopProducing ends the download with TransferStopped and unregisters."""
        name = blob_name("stop")
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"a" * 25))
        consumer = PausingConsumer()
        d = self.backend.download(NAMESPACE, name, consumer)
        producer: Any = consumer.producer
        producer.stopProducing()
        self.failureResultOf(d, TransferStopped)
        self.assertIsNone(consumer.producer)
        self.assertEqual(consumer.value(), b"a" * 10)

    def test_download_sees_old_content_across_overwrite(self) -> None:
        """A download in progress keeps reading the object it opened, even if overwritten."""
        name = blob_name("overwrite")
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"a" * 25))
        consumer = PausingConsumer()
        d = self.backend.download(NAMESPACE, name, consumer)
        self.successResultOf(self.backend.upload(NAMESPACE, name, b"b" * 25))
        producer: Any = consumer.producer
        for _ in range(3):
            producer.resumeProducing()
        self.assertEqual(self.successResultOf(d), 25)
        self.assertEqual(consumer.value(), b"a" * 25)

    def test_stat_missing_root(self) -> None:
        """A backend whose root does not exist yet answers not-found and lists nothing."""
        self.failureResultOf(self.backend.stat(NAMESPACE, blob_name("x")), BlobNotFound)
        self.assertEqual(self.successResultOf(self.backend.list("")).names, ())

    def test_relative_root_is_fixed(self) -> None:
        """A relative root is made absolute at construction, so a later chdir cannot move it."""
        backend = FilesystemBackend("relative/dir", run_inline)
        self.assertEqual(backend.root, os.path.abspath("relative/dir"))

    def test_upload_rejects_other_sources(self) -> None:
        """A source that is neither bytes nor a path fails with TypeError."""
        bad: Any = 12
        self.failureResultOf(self.backend.upload(NAMESPACE, blob_name("t"), bad), TypeError)

    def test_continuation_token_after_last_name(self) -> None:
        """A token past every name gives an empty last page; a token is compared, not looked up."""
        self.successResultOf(self.backend.upload(NAMESPACE, "a:b", b"x"))
        page = self.successResultOf(self.backend.list("", 5, "zzz"))
        self.assertEqual((page.names, page.continuation_token), ((), None))
        page = self.successResultOf(self.backend.list("", 5, "a"))
        self.assertEqual(page.names, ("a:b",))
