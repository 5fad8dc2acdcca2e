"""
The agent's download path: a blob in the cache, fetched over P2P when missing (DESIGN 5, 8).

:class:`P2PBlobDownloader` checks the store, asks the tracker ring for the
metainfo (polling while the origin fetches it), hands it to the
:class:`~kraken.protocols.peer.PeerNode` (which announces, connects,
verifies pieces and moves the finished file into the cache, then seeds it),
and fires when the blob is cached.  Concurrent requests for one digest share
one download; each caller gets a Deferred of its own, so a client that goes
away (cancelling its Deferred) never cancels the download others wait for.
A restart mid-download resumes: the store keeps the verified pieces and the
archive reopens the partial download.

:class:`AnnouncerAdapter` turns the engine's announce actions into
:class:`~kraken.protocols.tracker_client.TrackerClient` announces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from kraken.core import Digest, PeerID, PeerInfo
from kraken.http.client import RequestError
from kraken.peers.announce import AnnounceRequest, AnnounceResponse
from kraken.protocols.peer import PeerNode
from kraken.protocols.tracker_client import (
    InvalidTrackerResponse,
    MetaInfoNotFound,
    MetaInfoTimeout,
    TrackerClient,
    TrackerUnavailable,
)
from kraken.store import BlobInUse, BlobNotFound, BlobStore
from kraken.torrent.actions import Announce
from kraken.torrent.scheduler import DownloadFailed

__all__ = [
    "AnnouncerAdapter",
    "BlobUnknown",
    "DownloadError",
    "IBlobDownloader",
    "P2PBlobDownloader",
]

BlockingRunner = Callable[..., Deferred[Any]]


class BlobUnknown(LookupError):
    """The cluster does not have the blob (the tracker's metainfo answer was 404)."""


class DownloadError(Exception):
    """The blob could not be downloaded (tracker, origin or swarm failure); the message says why."""


class IBlobDownloader(Interface):
    """Gets blobs into the local cache."""

    def download(namespace: str, digest: Digest) -> Deferred[None]:
        """
        Fire when ``digest`` is in the cache (at once if it already is).

        Fails with :class:`BlobUnknown` or :class:`DownloadError`.  Each call
        gets its own Deferred: cancelling it leaves the download running.
        """

    def delete(digest: Digest) -> Deferred[None]:
        """Stop seeding ``digest`` and remove it (cache and download area).

        Fails with ``BlobNotFound`` when neither holds it and ``BlobInUse``
        while it is being served.
        """


@frozen
class AnnouncerAdapter:
    """The PeerNode ``announcer``: announces this agent (``me``) through the tracker client."""

    tracker: TrackerClient
    peer_id: PeerID
    ip: str
    port: int

    def __call__(self, action: Announce) -> Deferred[tuple[Sequence[PeerInfo], float]]:
        """Announce one torrent; fire with (peers, interval)."""
        me = PeerInfo(self.peer_id, self.ip, self.port, origin=False, complete=action.complete)
        request = AnnounceRequest(action.digest, action.infohash, me)

        def unpack(response: AnnounceResponse) -> tuple[Sequence[PeerInfo], float]:
            return response.peers, response.interval_seconds

        return self.tracker.announce(request).addCallback(unpack)


@implementer(IBlobDownloader)
@define
class P2PBlobDownloader:
    """Downloads through the tracker and the swarm into ``store`` (see the module doc)."""

    log: ClassVar[Logger] = Logger()

    store: BlobStore
    node: PeerNode
    tracker: TrackerClient
    run_blocking: BlockingRunner
    #: Outcomes by kind: "cached", "downloaded", "unknown", "failed" (metrics).
    observe: Callable[[str], object] = lambda kind: None
    _waiting: dict[Digest, list[Deferred[None]]] = field(factory=dict, init=False)

    def download(self, namespace: str, digest: Digest) -> Deferred[None]:
        """See :meth:`IBlobDownloader.download`."""
        waiter: Deferred[None] = Deferred()
        waiting = self._waiting.get(digest)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._waiting[digest] = [waiter]
        Deferred.fromCoroutine(self._download(namespace, digest)).addBoth(self._done, digest)
        return waiter

    def downloading(self) -> frozenset[Digest]:
        """Digests being downloaded now."""
        return frozenset(self._waiting)

    def _done(self, result: object, digest: Digest) -> None:
        waiters = self._waiting.pop(digest, [])
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    async def _download(self, namespace: str, digest: Digest) -> None:
        if await self.run_blocking(self.store.has, digest):
            self.observe("cached")
            return
        try:
            metainfo = await self.tracker.metainfo(namespace, digest)
        except MetaInfoNotFound as e:
            self.observe("unknown")
            raise BlobUnknown(f"{digest} not found in namespace {namespace!r}: {e}") from None
        except (
            TrackerUnavailable,
            MetaInfoTimeout,
            InvalidTrackerResponse,
            RequestError,
        ) as e:
            self.observe("failed")
            raise DownloadError(f"download torrent {digest}: metainfo: {e}") from None
        self.log.info(
            "downloading {digest} ({length} bytes, {pieces} pieces) for {namespace}",
            digest=digest,
            length=metainfo.length,
            pieces=metainfo.num_pieces,
            namespace=namespace,
        )
        try:
            await self.node.download(namespace, metainfo)
        except DownloadFailed as e:
            self.observe("failed")
            raise DownloadError(f"download torrent {digest}: {e}") from None
        except Exception as e:
            self.observe("failed")
            self.log.failure("download of {digest} failed", digest=digest)
            raise DownloadError(f"download torrent {digest}: {e}") from None
        if not await self.run_blocking(self.store.has, digest):
            self.observe("failed")
            raise DownloadError(f"download torrent {digest}: finished but not in the cache")
        self.observe("downloaded")

    def delete(self, digest: Digest) -> Deferred[None]:
        """See :meth:`IBlobDownloader.delete`."""
        return Deferred.fromCoroutine(self._delete(digest))

    async def _delete(self, digest: Digest) -> None:
        try:
            metainfo = await self.run_blocking(self.store.get_metainfo, digest)
        except BlobNotFound:
            metainfo = None
        if metainfo is not None:
            h = metainfo.infohash
            self.node.run(self.node.scheduler.forget(h))
            self.node.storages.pop(h, None)
        await self.run_blocking(_remove, self.store, digest)


def _remove(store: BlobStore, digest: Digest) -> None:
    """Delete the cached blob and any download of it (blocking)."""
    found = False
    if store.has_download(digest):
        store.abort_download(digest)
        found = True
    try:
        store.delete(digest)
    except BlobNotFound:
        if not found:
            raise
    except BlobInUse:
        raise


__all__ += ["BlobInUse"]
