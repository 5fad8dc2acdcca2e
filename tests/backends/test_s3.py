"""Tests for kraken.backends.s3: the abstract suite against moto's S3 server over real HTTP."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IProducer
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.backends.config import BackendContext, BackendsConfig
from kraken.backends.interface import BlobNotFound, IBackend, TransferStopped
from kraken.backends.s3 import (
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    S3Backend,
    S3Credentials,
    is_not_found,
    s3_client_factory,
)
from kraken.backends.streams import BytesConsumer
from kraken.config import ConfigError
from kraken.io.runner import BlockingRunner, run_inline, threadpool_runner
from tests.backends.base import NAMESPACE, ReadWriteBackendTests, RunAsynchronously, blob_name
from tests.backends.servers import MotoServer, moto_server

reactor: Any = _reactor

CREDENTIALS = S3Credentials("testing", "testing")


class RecordingClient:
    """Wraps a boto3 client and records the thread of every call made through it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.threads: list[threading.Thread] = []

    def __getattr__(self, name: str) -> Any:
        """Return the client's method, wrapped to note the calling thread."""
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.threads.append(threading.current_thread())
            return method(*args, **kwargs)

        return call


class MotoTestMixin:
    """A moto server, a thread pool, and a fresh bucket per test."""

    server: MotoServer
    runner: BlockingRunner
    addCleanup: Any

    def setUp(self) -> Any:  # a Deferred, which trial waits for
        """Start moto (once per process) and a pool; create this test's bucket in the pool."""
        self.server = moto_server()
        self.pool = ThreadPool(minthreads=1, maxthreads=8, name="s3-backend-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.runner = threadpool_runner(reactor, self.pool)
        self.bucket = f"kraken-{uuid.uuid4().hex[:20]}"
        self.factory = s3_client_factory(
            region="us-east-1",
            endpoint_url=self.server.endpoint_url,
            force_path_style=True,
            credentials=CREDENTIALS,
        )
        self.admin = self.factory()
        self.addCleanup(self.admin.close)
        return self.runner(self.admin.create_bucket, Bucket=self.bucket).addCallback(lambda _: None)

    def s3_backend(self, **kwargs: Any) -> S3Backend:
        """An S3Backend on this test's bucket with 5 MiB parts; closed after the test."""
        kwargs.setdefault("part_size", MIN_PART_SIZE)
        kwargs.setdefault("client_factory", self.factory)
        backend = S3Backend(self.bucket, self.runner, **kwargs)
        self.addCleanup(backend.close)
        return backend


class S3BackendTests(MotoTestMixin, RunAsynchronously, ReadWriteBackendTests, TestCase):
    """The S3 backend passes the abstract suite against moto over HTTP on 127.0.0.1."""

    def make_backend(self) -> IBackend:
        """An S3Backend on a fresh bucket (the 5 MiB+ file test takes the multipart path)."""
        return self.s3_backend()


class S3RootDirectoryTests(MotoTestMixin, RunAsynchronously, ReadWriteBackendTests, TestCase):
    """The abstract suite holds under a root directory, with foreign objects beside ours."""

    def make_backend(self) -> IBackend:
        """An S3Backend keeping its objects under ``kraken/root``."""
        return self.s3_backend(root_directory="/kraken/root/")

    def test_foreign_objects_ignored(self) -> Deferred[None]:
        """Objects outside the root, or not shaped like names, are never listed."""
        backend = self.s3_backend(root_directory="kraken/root")

        async def check() -> None:
            for key in ["other/" + blob_name("x"), "kraken/root/junk", "kraken/rootx:y"]:
                await self.runner(self.admin.put_object, Bucket=self.bucket, Key=key, Body=b"x")
            await backend.upload(NAMESPACE, blob_name("mine"), b"mine")
            self.assertEqual((await backend.list("")).names, (blob_name("mine"),))

        return ensureDeferred(check())


class S3BehaviourTests(MotoTestMixin, TestCase):
    """Keys, multipart uploads, threads and streaming of the S3 backend."""

    def test_keys(self) -> Deferred[None]:
        """A blob is stored at root/<hex> and a tag at root/<repo>:<tag>."""
        backend = self.s3_backend(root_directory="a/b")
        blob = blob_name("key")

        async def check() -> None:
            await backend.upload(NAMESPACE, blob, b"1")
            await backend.upload(NAMESPACE, "library/alpine:3", b"2")
            listing = await self.runner(self.admin.list_objects_v2, Bucket=self.bucket)
            keys = sorted(item["Key"] for item in listing["Contents"])
            self.assertEqual(keys, sorted([f"a/b/{blob}", "a/b/library/alpine:3"]))
            self.assertEqual(backend.key_of(blob), f"a/b/{blob}")

        return ensureDeferred(check())

    def test_multipart_upload(self) -> Deferred[None]:
        """A file of 11 MiB with 5 MiB parts is uploaded in 3 parts (a multipart ETag)."""
        backend = self.s3_backend()
        data = os.urandom(11 << 20)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        name = blob_name("multipart")

        async def check() -> None:
            await backend.upload(NAMESPACE, name, path)
            head = await self.runner(self.admin.head_object, Bucket=self.bucket, Key=name)
            self.assertTrue(head["ETag"].strip('"').endswith("-3"), head["ETag"])
            consumer = BytesConsumer()
            self.assertEqual(await backend.download(NAMESPACE, name, consumer), len(data))
            self.assertEqual(consumer.value(), data)

        return ensureDeferred(check())

    def test_small_upload_is_single_put(self) -> Deferred[None]:
        """Bytes below the part size are one PutObject (a plain MD5 ETag)."""
        backend = self.s3_backend()
        name = blob_name("single")

        async def check() -> None:
            await backend.upload(NAMESPACE, name, b"small")
            head = await self.runner(self.admin.head_object, Bucket=self.bucket, Key=name)
            self.assertNotIn("-", head["ETag"])

        return ensureDeferred(check())

    def test_boto3_calls_off_reactor_thread(self) -> Deferred[None]:
        """Every call on the boto3 client, its creation included, runs outside the reactor."""
        recorder: list[RecordingClient] = []
        made_in: list[threading.Thread] = []

        def factory() -> Any:
            made_in.append(threading.current_thread())
            recorder.append(RecordingClient(self.factory()))
            return recorder[0]

        backend = self.s3_backend(client_factory=factory)
        name = blob_name("threads")

        async def check() -> None:
            await backend.upload(NAMESPACE, name, os.urandom(100_000))
            await backend.stat(NAMESPACE, name)
            await backend.download(NAMESPACE, name, BytesConsumer())
            await backend.list("")
            await backend.close()
            self.assertEqual(len(made_in), 1)
            self.assertGreaterEqual(len(recorder[0].threads), 5)
            main = threading.main_thread()
            self.assertNotIn(main, made_in + recorder[0].threads)

        return ensureDeferred(check())

    def test_download_honours_pause(self) -> Deferred[None]:
        """No chunk is written while the consumer has the download paused."""
        backend = self.s3_backend(chunk_size=64 * 1024)
        data = os.urandom(1_000_000)
        name = blob_name("pause")
        consumer = PauseEveryWriteConsumer()

        async def check() -> None:
            await backend.upload(NAMESPACE, name, data)
            self.assertEqual(await backend.download(NAMESPACE, name, consumer), len(data))
            self.assertEqual(consumer.value(), data)
            self.assertEqual(consumer.writes_while_paused, 0)
            self.assertGreater(consumer.pauses, 10)

        return ensureDeferred(check())

    def test_download_stopped(self) -> Deferred[None]:
        """A consumer that stops the producer ends the download with TransferStopped."""
        backend = self.s3_backend(chunk_size=64 * 1024)
        name = blob_name("stop")
        consumer = StopAfterFirstWriteConsumer()

        async def check() -> None:
            await backend.upload(NAMESPACE, name, os.urandom(500_000))
            with self.assertRaises(TransferStopped):
                await backend.download(NAMESPACE, name, consumer)
            self.assertEqual(len(consumer.value()), 64 * 1024)
            self.assertIsNone(consumer.producer)

        return ensureDeferred(check())

    def test_missing_bucket_is_not_blob_not_found(self) -> Deferred[None]:
        """Listing a bucket that does not exist is a configuration error, not an empty page."""
        backend = S3Backend("no-such-bucket-kraken", self.runner, self.factory)
        self.addCleanup(backend.close)

        async def check() -> None:
            try:
                await backend.list("")
            except BlobNotFound:
                self.fail("NoSuchBucket reported as BlobNotFound")
            except Exception as e:
                self.assertFalse(is_not_found(e), e)
            else:
                self.fail("listing a missing bucket succeeded")

        return ensureDeferred(check())


class PauseEveryWriteConsumer(BytesConsumer):
    """Pauses its producer after each write and resumes it on the next reactor turn."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0
        self.writes_while_paused = 0

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Accept only push producers."""
        assert streaming
        super().registerProducer(producer, streaming)

    def write(self, data: bytes) -> None:
        """Keep the data, pause, and schedule the resume."""
        if self.paused:
            self.writes_while_paused += 1
        super().write(data)
        self.paused = True
        self.pauses += 1
        producer: Any = self.producer
        producer.pauseProducing()
        reactor.callLater(0, self.resume)

    def resume(self) -> None:
        """Let the producer go on."""
        self.paused = False
        if self.producer is not None:
            self.producer.resumeProducing()  # type: ignore[attr-defined]


class StopAfterFirstWriteConsumer(BytesConsumer):
    """Stops its producer after the first write."""

    def write(self, data: bytes) -> None:
        """Keep the data and stop."""
        super().write(data)
        assert self.producer is not None
        self.producer.stopProducing()


class S3KeyAndConfigTests(SynchronousTestCase):
    """Name -> key mapping and the ``s3`` config section, without a server."""

    def test_bad_root_directory(self) -> None:
        """A root directory with ``..``, empty segments or odd characters is refused."""
        for root in ["..", "a/../b", "a//b", "a b", "a/.hidden"]:
            with self.assertRaises(ValueError):
                S3Backend("b", run_inline, object, root_directory=root)

    def test_part_size_minimum(self) -> None:
        """Parts smaller than S3's 5 MiB minimum are refused."""
        with self.assertRaises(ValueError):
            S3Backend("b", run_inline, object, part_size=MIN_PART_SIZE - 1)

    def test_options(self) -> None:
        """Every option is read; defaults are 64 MiB parts and 10 threads; build makes it."""
        config = BackendsConfig.from_list(
            [
                {
                    "namespace": ".*",
                    "backend": {
                        "s3": {
                            "bucket": "blobs",
                            "region": "eu-west-1",
                            "root_directory": "/kraken/",
                            "endpoint_url": "http://127.0.0.1:9000",
                            "force_path_style": True,
                            "access_key_id": "id",
                            "secret_access_key": "secret",
                        }
                    },
                }
            ]
        )
        options = config.entries[0].backend.s3
        assert options is not None
        self.assertEqual(options.bucket, "blobs")
        self.assertEqual((options.part_size, options.concurrency), (DEFAULT_PART_SIZE, 10))
        self.assertNotIn("secret", repr(config))
        backend = config.build(BackendContext(None, run_inline)).backend_for("x")
        assert isinstance(backend, S3Backend)
        self.assertEqual(backend.root_directory, "kraken")
        self.assertEqual(backend.key_of("a:b"), "kraken/a:b")

    def test_option_errors(self) -> None:
        """Bad options are ConfigError lines naming their key."""
        for raw, key in [
            ({}, "s3.bucket"),
            ({"bucket": ""}, "s3.bucket"),
            ({"bucket": "b", "nope": 1}, "s3.nope"),
            ({"bucket": "b", "root_directory": "../x"}, "s3.root_directory"),
            ({"bucket": "b", "force_path_style": "yes"}, "s3.force_path_style"),
            ({"bucket": "b", "access_key_id": "x"}, "s3.secret_access_key"),
            ({"bucket": "b", "part_size": 1024}, "s3.part_size"),
            ({"bucket": "b", "concurrency": 0}, "s3.concurrency"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                BackendsConfig.from_list([{"namespace": ".*", "backend": {"s3": raw}}], "origin")
            (problem,) = caught.exception.problems
            self.assertTrue(problem.startswith(f"origin.backends[0].backend.{key}: "), problem)
