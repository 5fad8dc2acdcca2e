"""
Fetching a blob missing from the origin's cache from its backend: once per digest.

:meth:`BackendFetcher.request` stats the backend synchronously (so a blob the backend
lacks is a 404 at once), then starts one background download per digest into the store
(an :class:`~kraken.store.Ingest`, verified by sha256 on commit) and returns; callers
answer 202 until the blob is cached.  Concurrent requests for the same digest share the
running fetch.  A fetch that failed is remembered for ``error_ttl`` seconds and its error
answered meanwhile (as the Go ``blobrefresh`` does), so a broken backend is not hammered.
When a fetch completes, the ``on_fetched`` hooks run (replication to the other replicas).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ClassVar

from attrs import define, field
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.backends.interface import IBackend
from kraken.backends.router import BackendRouter
from kraken.backends.streams import ThreadedFileWriter
from kraken.core import DEFAULT_PIECE_LENGTHS, Digest, PieceLengthTable
from kraken.io.runner import BlockingRunner
from kraken.store import BlobExists, BlobStore

__all__ = ["BackendFetcher", "BlobTooLarge", "FetchFailed", "FetchersBusy"]


class FetchersBusy(Exception):
    """Too many backend fetches run already (503: try again)."""


class FetchFailed(Exception):
    """The last fetch of this blob failed recently; its error is answered for a while (500)."""


class BlobTooLarge(Exception):
    """The backend's blob is larger than ``size_limit`` allows."""


#: Called with ``(namespace, digest)`` after a fetch put the blob in the cache.
FetchedHook = Callable[[str, Digest], object]


@define
class BackendFetcher:
    """One background fetch per digest from the backend into the store."""

    log: ClassVar[Logger] = Logger()

    store: BlobStore
    backends: BackendRouter
    run: BlockingRunner
    clock: IReactorTime
    piece_lengths: PieceLengthTable = DEFAULT_PIECE_LENGTHS
    size_limit: int = 0
    error_ttl: float = 15.0
    max_fetches: int = 10000
    on_fetched: list[FetchedHook] = field(factory=list)
    _jobs: dict[Digest, Deferred[None]] = field(factory=dict, init=False)
    _errors: dict[Digest, tuple[float, str]] = field(factory=dict, init=False)

    def fetching(self, digest: Digest) -> Deferred[None] | None:
        """A Deferred that fires when the running fetch of ``digest`` ends, or None."""
        job = self._jobs.get(digest)
        if job is None:
            return None
        waiter: Deferred[None] = Deferred()

        def wake(result: object) -> object:
            waiter.callback(None)
            return result

        job.addBoth(wake)
        return waiter

    def request(self, namespace: str, digest: Digest) -> Deferred[None]:
        """
        Make sure a fetch of ``digest`` is running; fires once it is (answer 202).

        Fails with the backend's ``BlobNotFound`` (404), ``NamespaceNotFound``,
        :class:`FetchersBusy` (503), :class:`FetchFailed` (a recent failure, 500) or
        :class:`BlobTooLarge`.
        """
        return ensureDeferred(self._request(namespace, digest))

    async def _request(self, namespace: str, digest: Digest) -> None:
        if digest in self._jobs:
            return
        failed = self._errors.get(digest)
        if failed is not None:
            if self.clock.seconds() < failed[0]:
                raise FetchFailed(f"fetching {digest} from the backend failed: {failed[1]}")
            del self._errors[digest]
        backend = self.backends.backend_for(namespace)
        info = await backend.stat(namespace, digest.hex)
        if self.size_limit and info.size > self.size_limit:
            raise BlobTooLarge(
                f"{digest} is {info.size} bytes in the backend, over the limit of {self.size_limit}"
            )
        if digest in self._jobs:  # started while we were asking the backend
            return
        if len(self._jobs) >= self.max_fetches:
            raise FetchersBusy(f"{len(self._jobs)} backend fetches are running; try again")
        job = ensureDeferred(self._fetch(namespace, digest, backend))
        if job.called:  # an inline runner (tests) may finish at once
            job.addErrback(lambda _f: None)
            return
        self._jobs[digest] = job
        job.addBoth(self._done, namespace, digest)

    def _done(self, result: object, namespace: str, digest: Digest) -> object:
        self._jobs.pop(digest, None)
        if isinstance(result, Failure):
            return None
        return result

    async def _fetch(self, namespace: str, digest: Digest, backend: IBackend) -> None:
        try:
            await self._download(namespace, digest, backend)
        except Exception as e:
            self.log.warn(
                "fetching {digest} ({namespace}) from the backend failed: {error}",
                digest=digest,
                namespace=namespace,
                error=repr(e),
            )
            self._errors[digest] = (self.clock.seconds() + self.error_ttl, str(e))
            raise
        self.log.info("fetched {digest} from the backend", digest=digest)
        for hook in list(self.on_fetched):
            try:
                hook(namespace, digest)
            except Exception:
                self.log.failure("hook after fetching {digest} failed", digest=digest)

    async def _download(self, namespace: str, digest: Digest, backend: IBackend) -> None:
        ingest = await self.run(self.store.open_ingest)
        try:
            writer = ThreadedFileWriter(ingest.file, self.run)
            try:
                await backend.download(namespace, digest.hex, writer)
            except Exception:
                with contextlib.suppress(Exception):
                    await writer.close()
                raise
            await writer.close()
            with contextlib.suppress(BlobExists):  # uploaded meanwhile: as good
                await self.run(ingest.commit, digest, self.piece_lengths)
        finally:
            await self.run(ingest.abort)
