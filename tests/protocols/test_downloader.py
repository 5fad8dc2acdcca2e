"""
Tests for kraken.protocols.downloader: seeding the cache after a restart, forgetting removed blobs.

A real BlobStore under a temporary directory, a real Scheduler and PeerNode on a Clock,
blocking calls inline, and an announcer that records what the engine announces.
"""

from __future__ import annotations

import os
import random
from errno import ENOSPC
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Bitfield, Digest, InfoHash, MetaInfo, PeerID, PeerInfo
from kraken.io.runner import run_inline
from kraken.peers.announce import AnnounceRequest, AnnounceResponse
from kraken.protocols.archives import AgentArchive
from kraken.protocols.downloader import (
    AnnouncerAdapter,
    P2PBlobDownloader,
    list_cached_torrents,
)
from kraken.protocols.peer import PeerNode
from kraken.protocols.progress import announce_progress
from kraken.store import BlobStore
from kraken.torrent.actions import Announce
from kraken.torrent.scheduler import LocalStorageError, Scheduler

from .swarm import Swarm

NAMESPACE = "library/ubuntu"


class SeedCachedTests(SynchronousTestCase):
    """A restarted agent announces what its cache holds, and stops once cleanup removes it."""

    def setUp(self) -> None:
        """A store with a downloaded blob (namespace recorded) and an uploaded one (none)."""
        self.clock = Clock()
        self.root = self.mktemp()
        store = BlobStore(self.root, self.clock)
        data = random.Random(1).randbytes(5000)
        self.downloaded = MetaInfo.of_bytes(data, 1000)
        store.create_download(self.downloaded, namespace=NAMESPACE)
        for i in range(self.downloaded.num_pieces):
            offset = self.downloaded.piece_offset(i)
            store.write_piece(self.downloaded.digest, i, data[offset : offset + 1000])
        store.complete_download(self.downloaded.digest)
        self.uploaded = store.put_bytes(b"pushed through the proxy")
        # The restart: a new store, engine and downloader over the same disk.
        self.store = BlobStore(self.root, self.clock)
        self.announced: list[Announce] = []
        scheduler = Scheduler(
            PeerID.from_address("10.0.0.2", 16001), self.clock.seconds, random.Random(2)
        )
        self.node = PeerNode(
            self.clock,
            scheduler,
            AgentArchive(self.store),
            run_inline,
            announcer=self.announce,
        )
        self.node.start()
        self.addCleanup(self.node.stop)
        self.downloader = P2PBlobDownloader(
            self.store,
            self.node,
            None,  # type: ignore[arg-type]  # seeding never asks the tracker for metainfo
            run_inline,
        )

    def announce(self, action: Announce) -> Deferred[tuple[list[PeerInfo], float]]:
        """The tracker: record the announce, hand out nobody."""
        self.announced.append(action)
        return succeed(([], 3.0))

    def announces_during(self, seconds: float) -> set[tuple[Digest, str, bool]]:
        """(digest, namespace, complete) of every announce in the next ``seconds``."""
        self.announced.clear()
        self.clock.pump([1.0] * int(seconds))
        return {(a.digest, a.namespace, a.complete) for a in self.announced}

    def test_list_cached_torrents(self) -> None:
        """The listing opens both cached blobs, complete, with the recorded namespace or ''."""
        found = list_cached_torrents(self.store, AgentArchive(self.store))
        got = {(c.storage.metainfo, c.namespace, c.have.complete()) for c in found}
        self.assertEqual(got, {(self.downloaded, NAMESPACE, True), (self.uploaded, "", True)})

    def test_cached_blobs_announce_as_complete(self) -> None:
        """After seed_cached every cached blob announces, complete, and again 30 s later."""
        self.assertEqual(self.announces_during(40), set())
        self.assertEqual(self.successResultOf(self.downloader.seed_cached()), 2)
        expected = {
            (self.downloaded.digest, NAMESPACE, True),
            (self.uploaded.digest, "", True),
        }
        self.assertEqual(self.announces_during(10), expected)
        for h in (self.downloaded.infohash, self.uploaded.infohash):
            self.assertTrue(self.node.scheduler.torrents[h].complete)
        self.assertEqual(self.announces_during(35), expected)
        # Already tracked: a second call registers nothing new.
        self.assertEqual(self.successResultOf(self.downloader.seed_cached()), 0)

    def test_idle_seeders_keep_announcing(self) -> None:
        """Past the seeder TTI the torrents leave the engine's table but still announce."""
        self.successResultOf(self.downloader.seed_cached())
        self.clock.pump([1.0] * 301)
        self.assertFalse(self.node.scheduler.has_torrent(self.downloaded.infohash))
        self.assertIn((self.downloaded.digest, NAMESPACE, True), self.announces_during(40))

    def test_forget_removed_blobs(self) -> None:
        """Blobs removed by cleanup are forgotten: no more announces for them, the rest go on."""
        self.successResultOf(self.downloader.seed_cached())
        self.store.delete(self.downloaded.digest)
        self.downloader.forget({self.downloaded.digest})
        self.assertFalse(self.node.scheduler.has_torrent(self.downloaded.infohash))
        self.assertNotIn(self.downloaded.infohash, self.node.storages)
        self.assertEqual(self.announces_during(70), {(self.uploaded.digest, "", True)})
        # Also once idle (announcing from the dormant table), and for an unknown digest.
        self.clock.pump([1.0] * 301)
        self.downloader.forget({self.uploaded.digest, Digest.of_bytes(b"never cached")})
        self.assertEqual(self.announces_during(70), set())

    def test_blob_evicted_while_its_torrent_is_complete_is_downloaded_again(self) -> None:
        """A pull that comes between cleanup removing the blob and the engine forgetting its
        torrent downloads again instead of failing "finished but not in the cache"."""
        self.successResultOf(self.downloader.seed_cached())
        digest = self.downloaded.digest
        self.store.delete(digest)  # the cleanup pass; forget() has not run yet
        metainfo = self.downloaded

        class Tracker:
            def metainfo(self, namespace: str, d: Digest) -> Deferred[MetaInfo]:
                return succeed(metainfo)

        self.downloader.tracker = Tracker()  # type: ignore[assignment]
        pull = self.downloader.download(NAMESPACE, digest)
        self.assertNoResult(pull)  # downloading again (no peers here), not failed
        torrent = self.node.scheduler.torrents[metainfo.infohash]
        self.assertFalse(torrent.complete)
        pull.addErrback(lambda _: None)  # the node stops at cleanup, failing the pull

    def test_restart_lists_off_the_reactor(self) -> None:
        """seed_cached lists the store through the blocking runner, not on the caller's thread."""
        calls: list[Any] = []

        def runner(f: Any, *args: Any) -> Deferred[Any]:
            calls.append(f)
            return run_inline(f, *args)

        self.downloader.run_blocking = runner
        self.successResultOf(self.downloader.seed_cached())
        self.assertEqual(calls, [list_cached_torrents])


class AgentArchiveNamespaceTests(SynchronousTestCase):
    """The agent's archive records the namespace a download starts under."""

    def test_create_records_namespace(self) -> None:
        """AgentArchive.create stores the namespace with the new download."""
        store = BlobStore(self.mktemp(), Clock())
        metainfo = MetaInfo.of_bytes(b"some layer" * 300, 1000)
        AgentArchive(store).create(NAMESPACE, metainfo)
        self.assertEqual(store.get_namespace(metainfo.digest), NAMESPACE)


class _Tracker:
    """The tracker as the downloader sees it: the metainfo of one blob."""

    def __init__(self, metainfo: MetaInfo) -> None:
        self.metainfo_of = metainfo

    def metainfo(self, namespace: str, digest: Digest) -> Deferred[MetaInfo]:
        """The blob's metainfo."""
        return succeed(self.metainfo_of)


class FullDiskTests(SynchronousTestCase):
    """An agent whose disk is full: the pull fails at once with the OSError, then resumes."""

    def test_enospc_fails_the_pull_and_a_later_pull_resumes(self) -> None:
        """
        With the store's piece writes failing ENOSPC, download() fails within a second with
        an OSError carrying ENOSPC (which the agent APIs answer as such), blaming no peer;
        once space is back the next download() completes, keeping the pieces stored before.
        """
        data = random.Random(3).randbytes(2 * 1024 * 1024)
        meta = MetaInfo.of_bytes(data, 128 * 1024)
        swarm = Swarm()
        origin = swarm.add(origin=True)
        origin.archive.seed(meta, data)
        store = BlobStore(self.mktemp(), swarm.clock)
        agent = swarm.add(archive=AgentArchive(store))
        swarm.register(agent, meta)
        downloader = P2PBlobDownloader(store, agent.node, _Tracker(meta), run_inline)  # type: ignore[arg-type]
        write = store.write_piece
        space = [6]

        def write_piece(digest: Digest, index: int, piece: Any) -> bool:
            if space[0] <= 0:
                raise OSError(ENOSPC, os.strerror(ENOSPC))
            space[0] -= 1
            return write(digest, index, piece)

        store.write_piece = write_piece  # type: ignore[method-assign]
        results: list[Any] = []
        downloader.download(NAMESPACE, meta.digest).addBoth(results.append)
        swarm.run(lambda: bool(results), max_seconds=30, step=0.1)
        self.assertLess(swarm.clock.seconds(), 1.0)
        (failure,) = results
        self.assertIsInstance(failure.value, LocalStorageError)
        self.assertEqual(failure.value.errno, ENOSPC)
        self.assertEqual(agent.scheduler.blacklist, {})
        self.assertEqual(store.piece_status(meta.digest).count(), 6)
        space[0] = meta.num_pieces
        results.clear()
        downloader.download(NAMESPACE, meta.digest).addBoth(results.append)
        swarm.run(lambda: bool(results), step=0.1)
        self.assertEqual(results, [None])
        with store.open_reader(meta.digest) as reader:
            self.assertEqual(reader.pread(len(data), 0), data)
        self.assertEqual(space[0], 6)  # only the 10 missing pieces were written


class ProgressTests(SynchronousTestCase):
    """How far a download is, as the agent's status endpoint and progress log line tell it."""

    def test_progress_mid_download_and_log_line(self) -> None:
        """
        Mid-download, progress() counts pieces and bytes done of the total, the origin it
        comes from and a rate; every 5 s a log line says the same; once done there is none.
        """
        data = random.Random(4).randbytes(2 * 1024 * 1024)
        meta = MetaInfo.of_bytes(data, 128 * 1024)
        swarm = Swarm()
        origin = swarm.add(origin=True)
        origin.archive.seed(meta, data)
        store = BlobStore(self.mktemp(), swarm.clock)
        agent = swarm.add(archive=AgentArchive(store))
        swarm.register(agent, meta)
        downloader = P2PBlobDownloader(store, agent.node, _Tracker(meta), run_inline)  # type: ignore[arg-type]
        self.assertIsNone(downloader.progress(meta.digest))
        results: list[Any] = []
        swarm.clock.advance(1.0)  # so that a rate is time over bytes
        downloader.download(NAMESPACE, meta.digest).addBoth(results.append)

        def some_pieces() -> bool:
            progress = downloader.progress(meta.digest)
            return progress is not None and progress.pieces_done >= 4

        swarm.run(some_pieces, step=0.1)
        swarm.clock.advance(0.5)
        progress = downloader.progress(meta.digest)
        assert progress is not None
        self.assertEqual(progress.state, "downloading")
        self.assertEqual(progress.namespace, NAMESPACE)
        self.assertEqual(progress.pieces_total, 16)
        self.assertTrue(4 <= progress.pieces_done < 16, progress)
        self.assertEqual(progress.bytes_total, len(data))
        self.assertEqual(progress.bytes_done, progress.pieces_done * 128 * 1024)
        self.assertEqual((progress.origins, progress.peers), (1, 0))
        self.assertGreater(progress.bytes_per_second, 0)
        self.assertEqual(progress.to_json()["pieces"], {"done": progress.pieces_done, "total": 16})
        with capturedLogs() as events:
            swarm.clock.advance(5.0)
        lines = [formatEvent(e) for e in events if "pieces" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"{meta.digest}: {progress.pieces_done}/16 pieces (", lines[0])
        self.assertIn("1 origins", lines[0])
        swarm.run(lambda: bool(results), step=0.1)
        self.assertEqual(results, [None])
        self.assertIsNone(downloader.progress(meta.digest))
        with capturedLogs() as events:
            swarm.clock.advance(10.0)
        self.assertEqual([e for e in events if "pieces" in formatEvent(e)], [])


class _RecordingTracker:
    """A tracker client that records announces and answers no peers."""

    def __init__(self) -> None:
        self.requests: list[AnnounceRequest] = []

    def announce(self, request: AnnounceRequest) -> Deferred[AnnounceResponse]:
        """Record ``request``."""
        self.requests.append(request)
        return succeed(AnnounceResponse((), 3.0))


class AnnounceProgressTests(SynchronousTestCase):
    """A downloading agent's announces carry the pieces it holds (for the swarm page)."""

    def test_downloading_then_complete(self) -> None:
        """While downloading: the bitfield of what is held; once complete: no progress."""
        clock = Clock()
        scheduler = Scheduler(
            PeerID.from_address("10.0.0.2", 16001), clock.seconds, random.Random(1)
        )
        meta = MetaInfo.of_bytes(random.Random(5).randbytes(10_000), 1000)
        scheduler.add_torrent(meta, NAMESPACE, Bitfield.of(meta.num_pieces, [0, 3]))
        tracker = _RecordingTracker()
        adapter = AnnouncerAdapter(
            tracker,  # type: ignore[arg-type]
            PeerID.from_address("10.0.0.2", 16001),
            "10.0.0.2",
            16001,
            progress=lambda h: announce_progress(scheduler, h),
        )
        adapter(Announce(meta.infohash, meta.digest, NAMESPACE, False))
        (sent,) = tracker.requests
        assert sent.progress is not None
        self.assertEqual((sent.progress.pieces, sent.progress.length), (10, 10_000))
        self.assertEqual(sent.progress.count, 2)
        self.assertEqual(Bitfield.from_bytes(sent.progress.have, 10), Bitfield.of(10, [0, 3]))
        adapter(Announce(meta.infohash, meta.digest, NAMESPACE, True))
        self.assertIsNone(tracker.requests[-1].progress)
        self.assertIsNone(announce_progress(scheduler, InfoHash(Digest.of_bytes(b"x").hex)))
