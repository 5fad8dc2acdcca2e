"""
The abstract IBackend suite: every backend's test module subclasses it.

Tests are coroutines so that one suite serves synchronous backends (fs with the inline runner,
checked in a ``SynchronousTestCase``) and asynchronous ones (S3 or a registry on real sockets,
checked in trial's ``TestCase``).  A concrete test case mixes in:

- :class:`BackendTests` (every backend) or :class:`ReadWriteBackendTests` (backends that store
  what they are given), implementing ``make_backend()``;
- :class:`RunSynchronously` or :class:`RunAsynchronously`, which say how a test coroutine runs.

Read-only backends (registry) override ``seed()`` to put content in place by other means and
set ``supports_upload = False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from zope.interface.verify import verifyObject

from kraken.backends.interface import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListResult,
    UploadSource,
)
from kraken.backends.streams import BytesConsumer, download_bytes, download_to_path
from kraken.core import Digest
from kraken.io.runner import run_inline

_T = TypeVar("_T", bound="BackendTests")

NAMESPACE = "library/test"

#: Names every backend must refuse, whatever it is asked to do with them.
BAD_NAMES = [
    "",
    "../etc/passwd:x",
    "/abs/path:tag",
    "a/../b:tag",
    "a/./b:tag",
    "a//b:tag",
    "a/b/:tag",
    "a:",
    ":tag",
    "a:b:c",
    "a:../x",
    "a:x/y",
    "a\0b:tag",
    "nul\0",
    "a b:tag",
    "a\\b:tag",
    ".hidden:tag",
    "_tags:tag",
    "a/_tags:x",
    "a:.x",
    "plain",
    "repo/name",
    "A" * 64,
    "ab" * 31,
    "0" * 65,
    "sha256:" + "0" * 64,
    "x" * 256 + ":tag",
    "repo:" + "t" * 129,
    "é:tag",
]

BAD_NAMESPACES = ["", "a b", "a\0b", "a\nb", "x" * 513, "é"]

BAD_PREFIXES = ["/", "/a", "../", "a/../", "a//", "./", "a b", "a\0", ":x", "a:b:", "a:x/", "é"]


def backend_test(
    test: Callable[[_T], Coroutine[Any, Any, None]],
) -> Callable[[_T], Any]:
    """Turn a coroutine test into a test method run by the case's ``run_coroutine``."""

    @wraps(test)
    def run(self: _T) -> Any:
        return self.run_coroutine(test(self))

    return run


def read_file(path: str) -> bytes:
    """The content of the file at ``path``."""
    with open(path, "rb") as f:
        return f.read()


def blob_name(seed: str) -> str:
    """A valid blob name derived from ``seed``."""
    return Digest.of_bytes(seed.encode()).hex


class RunSynchronously:
    """Run each test coroutine to completion at once (for SynchronousTestCase)."""

    def run_coroutine(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Fail the test unless the coroutine finished, successfully, without waiting."""
        case: Any = self
        case.successResultOf(ensureDeferred(coroutine))


class RunAsynchronously:
    """Hand each test coroutine to trial's TestCase as a Deferred."""

    def run_coroutine(self, coroutine: Coroutine[Any, Any, None]) -> Deferred[None]:
        """Let trial wait for the coroutine."""
        return ensureDeferred(coroutine)


class BackendTests:
    """What every IBackend does, including ones that store nothing (noop)."""

    assertEqual: Callable[..., None]
    assertIn: Callable[..., None]
    assertTrue: Callable[..., None]
    fail: Callable[..., Any]
    mktemp: Callable[[], str]
    run_coroutine: Callable[[Coroutine[Any, Any, None]], Any]

    def make_backend(self) -> IBackend:
        """A new, empty backend (called once per test)."""
        raise NotImplementedError

    async def assert_fails(self, d: Deferred[Any], *types: type[BaseException]) -> BaseException:
        """Await ``d`` and return its error, failing the test unless it is one of ``types``."""
        try:
            result = await d
        except types as e:
            return e
        self.fail(f"expected {[t.__name__ for t in types]}, got result {result!r}")
        raise AssertionError("unreachable")

    def test_provides_interface(self) -> None:
        """The backend provides IBackend with the right method signatures."""
        self.assertTrue(verifyObject(IBackend, self.make_backend()))

    @backend_test
    async def test_stat_missing(self) -> None:
        """stat of an absent name fails with BlobNotFound naming the namespace and the name."""
        name = blob_name("absent")
        error = await self.assert_fails(self.make_backend().stat(NAMESPACE, name), BlobNotFound)
        assert isinstance(error, BlobNotFound)
        self.assertEqual((error.namespace, error.name), (NAMESPACE, name))
        self.assertIn(name, str(error))
        self.assertIn(NAMESPACE, str(error))

    @backend_test
    async def test_stat_missing_tag(self) -> None:
        """stat of an absent tag fails with BlobNotFound."""
        await self.assert_fails(
            self.make_backend().stat("library/none", "library/none:latest"), BlobNotFound
        )

    @backend_test
    async def test_download_missing(self) -> None:
        """download of an absent name fails with BlobNotFound and writes nothing."""
        consumer = BytesConsumer()
        name = blob_name("absent")
        await self.assert_fails(
            self.make_backend().download(NAMESPACE, name, consumer), BlobNotFound
        )
        self.assertEqual(consumer.value(), b"")
        self.assertEqual(consumer.producer, None)

    @backend_test
    async def test_bad_names_rejected(self) -> None:
        """stat, download and upload refuse each malformed name with InvalidName."""
        backend = self.make_backend()
        for name in BAD_NAMES:
            calls: list[Deferred[Any]] = [
                backend.stat(NAMESPACE, name),
                backend.download(NAMESPACE, name, BytesConsumer()),
                backend.upload(NAMESPACE, name, b"data"),
                backend.delete(NAMESPACE, name),
            ]
            for d in calls:
                error = await self.assert_fails(d, InvalidName)
                self.assertIn(repr(name), str(error))

    @backend_test
    async def test_bad_namespaces_rejected(self) -> None:
        """stat, download and upload refuse each malformed namespace with InvalidName."""
        backend = self.make_backend()
        name = blob_name("x")
        for namespace in BAD_NAMESPACES:
            calls: list[Deferred[Any]] = [
                backend.stat(namespace, name),
                backend.download(namespace, name, BytesConsumer()),
                backend.upload(namespace, name, b"data"),
                backend.delete(namespace, name),
            ]
            for d in calls:
                await self.assert_fails(d, InvalidName)

    @backend_test
    async def test_bad_prefixes_rejected(self) -> None:
        """list refuses a prefix that no valid name can start with."""
        backend = self.make_backend()
        for prefix in BAD_PREFIXES:
            error = await self.assert_fails(backend.list(prefix), InvalidName)
            self.assertIn(repr(prefix), str(error))

    @backend_test
    async def test_bad_limits_rejected(self) -> None:
        """list refuses page sizes outside 1..MAX_LIST_LIMIT."""
        backend = self.make_backend()
        for limit in [0, -1, MAX_LIST_LIMIT + 1]:
            await self.assert_fails(backend.list("", limit), InvalidName)

    @backend_test
    async def test_list_empty(self) -> None:
        """An empty backend lists nothing, and says it is the last page."""
        result = await self.make_backend().list("")
        self.assertEqual(result, ListResult((), None))

    @backend_test
    async def test_close(self) -> None:
        """close fires with None."""
        result: object = await self.make_backend().close()  # type: ignore[func-returns-value]
        self.assertEqual(result, None)


class ReadWriteBackendTests(BackendTests):
    """What every backend that keeps what it is given does (fs, S3)."""

    def seed(self, backend: IBackend, name: str, data: bytes) -> Deferred[None]:
        """Put ``data`` under ``name`` (read-only backends override this)."""
        return backend.upload(NAMESPACE, name, data)

    async def read(self, backend: IBackend, name: str, namespace: str = NAMESPACE) -> bytes:
        """Download ``name`` into memory, checking the count download reports."""
        consumer = BytesConsumer()
        count = await backend.download(namespace, name, consumer)
        self.assertEqual(count, len(consumer.value()))
        self.assertEqual(consumer.producer, None, "producer still registered after download")
        return consumer.value()

    def write_file(self, data: bytes) -> str:
        """A temporary file holding ``data``."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    @backend_test
    async def test_round_trip_bytes(self) -> None:
        """Bytes uploaded come back byte for byte, and stat reports their size."""
        backend = self.make_backend()
        name = blob_name("bytes")
        data = b"hello, backend\n" * 100
        await backend.upload(NAMESPACE, name, data)
        self.assertEqual(await backend.stat(NAMESPACE, name), BlobInfo(len(data)))
        self.assertEqual(await self.read(backend, name), data)

    @backend_test
    async def test_delete(self) -> None:
        """A deleted blob or tag is gone (stat, download, list); deleting it again, or
        something never stored, fails with BlobNotFound; its neighbours stay."""
        backend = self.make_backend()
        gone, kept = blob_name("gone"), blob_name("kept")
        tag = "library/gone:v1"
        await self.seed(backend, gone, b"bye")
        await self.seed(backend, kept, b"stay")
        await self.seed(backend, tag, b"sha256:" + b"0" * 64)
        for name in (gone, tag):
            await backend.delete(NAMESPACE, name)
            await self.assert_fails(backend.stat(NAMESPACE, name), BlobNotFound)
            download = backend.download(NAMESPACE, name, BytesConsumer())
            await self.assert_fails(download, BlobNotFound)
            await self.assert_fails(backend.delete(NAMESPACE, name), BlobNotFound)
        listed = (await backend.list("")).names
        self.assertEqual((gone in listed, tag in listed, kept in listed), (False, False, True))
        self.assertEqual(await self.read(backend, kept), b"stay")
        await self.assert_fails(backend.delete(NAMESPACE, blob_name("never")), BlobNotFound)

    @backend_test
    async def test_round_trip_empty(self) -> None:
        """An empty object is stored, has size 0 and downloads as nothing."""
        backend = self.make_backend()
        name = blob_name("empty")
        await backend.upload(NAMESPACE, name, b"")
        self.assertEqual(await backend.stat(NAMESPACE, name), BlobInfo(0))
        self.assertEqual(await self.read(backend, name), b"")

    @backend_test
    async def test_round_trip_file(self) -> None:
        """A multi-MiB file uploaded by path (str and PathLike) comes back intact."""
        backend = self.make_backend()
        data = os.urandom(5 * 1024 * 1024 + 12345)
        path = self.write_file(data)
        sources: list[tuple[str, UploadSource]] = [
            (blob_name("file-str"), path),
            (blob_name("file-pathlike"), _PathLike(path)),
        ]
        for name, source in sources:
            await backend.upload(NAMESPACE, name, source)
            self.assertEqual(await backend.stat(NAMESPACE, name), BlobInfo(len(data)))
            self.assertEqual(await self.read(backend, name), data)

    @backend_test
    async def test_download_to_path(self) -> None:
        """download_to_path lands a multi-MiB object in a file and reports its size."""
        backend = self.make_backend()
        data = os.urandom(3 * 1024 * 1024 + 7)
        name = Digest.of_bytes(data).hex
        await backend.upload(NAMESPACE, name, data)
        target = self.mktemp()
        size = await download_to_path(backend, NAMESPACE, name, target, run_inline)
        self.assertEqual(size, len(data))
        self.assertEqual(read_file(target), data)

    @backend_test
    async def test_download_bytes(self) -> None:
        """download_bytes returns a small object's content."""
        backend = self.make_backend()
        await backend.upload("library/alpine:3", "library/alpine:3", b"sha256:" + b"a" * 64)
        self.assertEqual(
            await download_bytes(backend, "library/alpine:3", "library/alpine:3"),
            b"sha256:" + b"a" * 64,
        )

    @backend_test
    async def test_overwrite(self) -> None:
        """A second upload of a name replaces the first completely (last write wins)."""
        backend = self.make_backend()
        name = "library/alpine:latest"
        await backend.upload(NAMESPACE, name, b"first, longer content")
        await backend.upload(NAMESPACE, name, b"second")
        self.assertEqual(await backend.stat(NAMESPACE, name), BlobInfo(6))
        self.assertEqual(await self.read(backend, name), b"second")

    @backend_test
    async def test_tag_shapes(self) -> None:
        """Tags of nested repositories are distinct objects, each readable by its name."""
        backend = self.make_backend()
        names = [
            "alpine:latest",
            "library/alpine:latest",
            "library/alpine:3.19",
            "library/alpine/sub:latest",
            "library/alpine-edge:latest",
            "a.b/c_d/e-f:_Tag.1-x",
            "x" * 200 + ":" + "t" * 128,
        ]
        for name in names:
            await backend.upload(name, name, name.encode())
        for name in names:
            self.assertEqual(await self.read(backend, name, namespace=name), name.encode())

    @backend_test
    async def test_failed_upload_stores_nothing(self) -> None:
        """Uploading from a missing file fails and leaves no object behind."""
        backend = self.make_backend()
        name = blob_name("missing-source")
        await self.assert_fails(backend.upload(NAMESPACE, name, self.mktemp()), OSError)
        await self.assert_fails(backend.stat(NAMESPACE, name), BlobNotFound)
        self.assertEqual((await backend.list("")).names, ())

    async def list_all(self, backend: IBackend, prefix: str, limit: int) -> list[str]:
        """Every name under ``prefix`` by following continuation tokens, checking page sizes."""
        names: list[str] = []
        token: str | None = None
        for _ in range(10_000):
            page = await backend.list(prefix, limit, token)
            self.assertTrue(len(page.names) <= limit, f"page of {len(page.names)} > {limit}")
            names.extend(page.names)
            if page.continuation_token is None:
                return names
            token = page.continuation_token
        self.fail("list never ended")
        raise AssertionError("unreachable")

    async def populate(self, backend: IBackend) -> tuple[list[str], list[str]]:
        """Store some blobs and tags; return (blob names, tag names)."""
        blobs = sorted(blob_name(str(i)) for i in range(12))
        tags = [
            "library/alpine:latest",
            "library/alpine:3.19",
            "library/alpine/sub:1",
            "library/alpine-edge:latest",
            "library/busybox:1",
            "other/alpine:latest",
            "alpine:latest",
        ]
        for name in blobs + tags:
            await self.seed(backend, name, name.encode())
        return blobs, tags

    @backend_test
    async def test_list_pagination(self) -> None:
        """Paging through everything returns each name exactly once, for several page sizes."""
        backend = self.make_backend()
        blobs, tags = await self.populate(backend)
        for limit in [1, 2, 3, 7, DEFAULT_LIST_LIMIT]:
            names = await self.list_all(backend, "", limit)
            self.assertEqual(len(names), len(set(names)), f"duplicates with limit {limit}")
            self.assertEqual(sorted(names), sorted(blobs + tags))

    @backend_test
    async def test_list_stable(self) -> None:
        """Listing twice gives the same order, and the same token gives the same page."""
        backend = self.make_backend()
        await self.populate(backend)
        self.assertEqual(await self.list_all(backend, "", 4), await self.list_all(backend, "", 4))
        first = await backend.list("", 4)
        assert first.continuation_token is not None
        self.assertEqual(
            await backend.list("", 4, first.continuation_token),
            await backend.list("", 4, first.continuation_token),
        )

    @backend_test
    async def test_list_last_page(self) -> None:
        """A page that holds everything has no continuation token."""
        backend = self.make_backend()
        blobs, tags = await self.populate(backend)
        result = await backend.list("", len(blobs) + len(tags))
        self.assertEqual(sorted(result.names), sorted(blobs + tags))
        self.assertEqual(result.continuation_token, None)

    @backend_test
    async def test_list_prefixes(self) -> None:
        """A prefix selects exactly the names that start with it."""
        backend = self.make_backend()
        blobs, tags = await self.populate(backend)
        everything = blobs + tags
        for prefix in [
            "library/",
            "library/alpine",
            "library/alpine:",
            "library/alpine:3",
            "library/alpine/",
            "other/",
            "alpine",
            "alpine:",
            "nothing/",
            blobs[0][:1],
            blobs[0][:2],
            blobs[0][:3],
            blobs[0],
            "f" * 64,
        ]:
            expected = sorted(n for n in everything if n.startswith(prefix))
            self.assertEqual(sorted(await self.list_all(backend, prefix, 2)), expected, prefix)


class _PathLike(os.PathLike[str]):
    """An os.PathLike that is not a str (like pathlib.Path, but explicit)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __fspath__(self) -> str:
        return self._path
