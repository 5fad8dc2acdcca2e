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
archive reopens the partial download.  After a restart,
:meth:`P2PBlobDownloader.seed_cached` registers every cached blob with the
engine as a complete torrent, so that it announces again (DESIGN 5), under
the namespace the store recorded for it; :meth:`P2PBlobDownloader.forget`
drops the blobs that cleanup removed from the engine.

:class:`AnnouncerAdapter` turns the engine's announce actions into
:class:`~kraken.clients.tracker.TrackerClient` announces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Final

from attrs import define, evolve, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface, implementer

from kraken.clients.tracker import (
    InvalidTrackerResponse,
    MetaInfoNotFound,
    MetaInfoTimeout,
    TrackerClient,
    TrackerUnavailable,
)
from kraken.core import Bitfield, Digest, InfoHash, MetaInfo, PeerID, PeerInfo
from kraken.http.client import RequestError
from kraken.io.singleflight import SingleFlight
from kraken.peers.announce import AnnounceProgress, AnnounceRequest, AnnounceResponse
from kraken.protocols.peer import PeerNode
from kraken.protocols.progress import DownloadProgress, RateWindow, torrent_progress
from kraken.store import BlobInUse, BlobNotFound, BlobStore
from kraken.torrent.actions import Announce
from kraken.torrent.archive import IArchive, IPieceStorage
from kraken.torrent.scheduler import DownloadFailed, LocalStorageError

__all__ = [
    "AnnouncerAdapter",
    "BlobUnknown",
    "CachedTorrent",
    "DownloadError",
    "IBlobDownloader",
    "P2PBlobDownloader",
    "list_cached_torrents",
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

        Fails with :class:`BlobUnknown`, :class:`DownloadError`, or
        :class:`~kraken.torrent.scheduler.LocalStorageError` (an ``OSError``
        with the errno of the failed write: this host could not store a piece,
        e.g. its disk is full).  Each call gets its own Deferred: cancelling it
        leaves the download running.
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
    #: The pieces held of a torrent being downloaded, for the tracker's swarm page.
    progress: Callable[[InfoHash], AnnounceProgress | None] = lambda infohash: None

    def __call__(self, action: Announce) -> Deferred[tuple[Sequence[PeerInfo], float]]:
        """Announce one torrent; fire with (peers, interval)."""
        me = PeerInfo(self.peer_id, self.ip, self.port, origin=False, complete=action.complete)
        progress = None if action.complete else self.progress(action.infohash)
        request = AnnounceRequest(action.digest, action.infohash, me, progress)

        def unpack(response: AnnounceResponse) -> tuple[Sequence[PeerInfo], float]:
            return response.peers, response.interval_seconds

        return self.tracker.announce(request).addCallback(unpack)


@frozen
class CachedTorrent:
    """A cached blob opened for seeding, with the namespace it was downloaded under."""

    #: ``""`` when the store recorded none (a blob cached before namespaces were recorded);
    #: announces carry no namespace and a seeder's handshake namespace is informational.
    namespace: str
    storage: IPieceStorage
    have: Bitfield


def list_cached_torrents(store: BlobStore, archive: IArchive) -> list[CachedTorrent]:
    """Every cached blob with metainfo, opened through ``archive`` (blocking: run it in a thread).

    Blobs removed meanwhile, or whose metainfo cannot be read, are skipped.
    """
    found = []
    for info in store.list_cache():
        namespace = store.get_namespace(info.digest) or ""
        try:
            storage = archive.open(namespace, info.digest)
            if storage is None or not storage.complete():
                continue
            have = storage.bitfield()
        except (BlobNotFound, ValueError, OSError) as e:
            P2PBlobDownloader.log.warn(
                "cached blob {digest} is not seeded: {error}", digest=info.digest, error=e
            )
            continue
        found.append(CachedTorrent(namespace, storage, have))
    return found


PROGRESS_INTERVAL: Final = 5.0
"""Seconds between two progress log lines of a download (short downloads log none)."""


@define
class _Running:
    """A download in progress: what :meth:`P2PBlobDownloader.progress` reads."""

    namespace: str
    started: float
    metainfo: MetaInfo | None = None
    rate: RateWindow = field(factory=lambda: RateWindow(0.0))
    ticker: LoopingCall | None = None


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
    #: Seconds each finished P2P download took, from metainfo to cached (metrics).
    observe_seconds: Callable[[float], object] = lambda seconds: None
    #: Seconds between two progress log lines of a running download.
    progress_interval: float = PROGRESS_INTERVAL
    _waiting: SingleFlight[Digest, None] = field(factory=SingleFlight, init=False)
    _running: dict[Digest, _Running] = field(factory=dict, init=False)
    #: Torrents of blobs this agent has in its cache (seeded at start or downloaded), so
    #: that a blob cleanup removed can be forgotten once its metainfo is gone.
    _infohashes: dict[Digest, InfoHash] = field(factory=dict, init=False)

    def seed_cached(self) -> Deferred[int]:
        """
        Register every cached blob with the engine as a complete torrent; fire with how many.

        A restarted engine knows no torrent, so without this the tracker would
        learn of the blobs in the cache only through new downloads; complete
        torrents keep announcing at the slower interval (DESIGN 5).  The store is
        listed in a thread; blobs the engine already tracks are left alone.
        """
        listed = self.run_blocking(list_cached_torrents, self.store, self.node.archive)
        return listed.addCallback(self._seed)

    def _seed(self, found: list[CachedTorrent]) -> int:
        node = self.node
        count = 0
        for cached in found:
            metainfo = cached.storage.metainfo
            h = metainfo.infohash
            if node.scheduler.has_torrent(h):
                continue
            node.storages[h] = cached.storage
            self._infohashes[metainfo.digest] = h
            node.run(
                node.scheduler.add_torrent(metainfo, cached.namespace, cached.have, complete=True)
            )
            count += 1
        self.log.info("seeding {count} cached blobs", count=count)
        return count

    def forget(self, digests: Iterable[Digest]) -> None:
        """Make the engine drop the torrents of blobs removed from the store (by cleanup).

        Otherwise it would go on announcing, and answering peers for, blobs it
        no longer has.
        """
        node = self.node
        for digest in digests:
            h = self._infohashes.pop(digest, None)
            if h is None:
                h = next(
                    (h for h, t in node.scheduler.torrents.items() if t.metainfo.digest == digest),
                    None,
                )
            if h is not None:
                node.run(node.scheduler.forget(h))
                node.storages.pop(h, None)

    def download(self, namespace: str, digest: Digest) -> Deferred[None]:
        """See :meth:`IBlobDownloader.download`."""
        return self._waiting.run(
            digest, lambda: Deferred.fromCoroutine(self._download(namespace, digest))
        )

    def downloading(self) -> frozenset[Digest]:
        """Digests being downloaded now."""
        return frozenset(self._running)

    def progress(self, digest: Digest) -> DownloadProgress | None:
        """How far the download of ``digest`` is, or None when none runs."""
        running = self._running.get(digest)
        if running is None:
            return None
        now = self.node.reactor.seconds()
        if running.metainfo is None:
            return DownloadProgress(
                digest, "metainfo", namespace=running.namespace, seconds=now - running.started
            )
        return evolve(
            torrent_progress(
                self.node.scheduler,
                running.metainfo,
                now=now,
                started=running.started,
                rate=running.rate,
            ),
            namespace=running.namespace,
        )

    def _log_progress(self, digest: Digest) -> None:
        progress = self.progress(digest)
        if progress is not None and progress.state == "downloading":
            self.log.info("{digest}: {progress}", digest=digest, progress=progress.line())

    async def _download(self, namespace: str, digest: Digest) -> None:
        running = _Running(namespace, self.node.reactor.seconds())
        self._running[digest] = running
        try:
            await self._fetch(namespace, digest, running)
        finally:
            del self._running[digest]
            if running.ticker is not None and running.ticker.running:
                running.ticker.stop()

    async def _fetch(self, namespace: str, digest: Digest, running: _Running) -> None:
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
        began = self.node.reactor.seconds()
        running.metainfo = metainfo
        running.started = began
        running.rate = RateWindow(began)
        ticker = running.ticker = LoopingCall(self._log_progress, digest)
        ticker.clock = self.node.reactor
        ticker.start(self.progress_interval, now=False)
        try:
            await self.node.download(namespace, metainfo)
            if not await self.run_blocking(self.store.has, digest):
                # Cleanup removed the blob while the engine still held its torrent as
                # complete (it learns of removals only once the cleanup pass is over):
                # drop that torrent and download the blob again, once.
                self.log.info("{digest} was evicted as it was asked for: again", digest=digest)
                self.forget([digest])
                await self.node.download(namespace, metainfo)
        except LocalStorageError:
            # An OSError (ENOSPC, EIO): the API answers it as such (507 for a full disk).
            self.observe("failed")
            raise
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
        self._infohashes[digest] = metainfo.infohash
        self.observe("downloaded")
        seconds = self.node.reactor.seconds() - began
        self.observe_seconds(seconds)
        self.log.info("downloaded {digest} in {seconds:.2f} s", digest=digest, seconds=seconds)

    def delete(self, digest: Digest) -> Deferred[None]:
        """See :meth:`IBlobDownloader.delete`."""
        return Deferred.fromCoroutine(self._delete(digest))

    async def _delete(self, digest: Digest) -> None:
        try:
            metainfo = await self.run_blocking(self.store.get_metainfo, digest)
        except BlobNotFound:
            metainfo = None
        self._infohashes.pop(digest, None)
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
