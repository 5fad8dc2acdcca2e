"""Tests that kraken.store.BlobStore stays consistent under real threads writing the same blob."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from kraken.core import Digest, MetaInfo, PieceLengthTable
from kraken.store import BlobInUse, BlobNotFound, UploadNotFound
from tests.store.base import StoreTestCase, blob_bytes, files_under, pieces_of

THREADS = 8
JOIN_TIMEOUT = 60.0


def run_threads(target: Callable[[int], Any], count: int = THREADS) -> list[tuple[str, Any]]:
    """
    Run ``target(i)`` in ``count`` threads released together; return each outcome in order.

    An outcome is ``("ok", value)`` or ``("error", exception)``.
    """
    barrier = threading.Barrier(count)
    outcomes: list[tuple[str, Any]] = [("missing", None)] * count

    def body(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = ("ok", target(i))
        except BaseException as e:
            outcomes[i] = ("error", e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
        if t.is_alive():
            raise AssertionError("a store thread is stuck (deadlock?)")
    return outcomes


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll (yielding the GIL) until another thread makes ``predicate`` true."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)  # a real thread is being waited for; no simulated time involved


class ConcurrentUploadTests(StoreTestCase):
    """Several uploads of one digest at once."""

    def test_same_blob_committed_by_eight_threads(self) -> None:
        """Exactly one concurrent commit wins, the others get BlobExists; the blob is intact."""
        data = blob_bytes(3 * 1024 * 1024 + 5)
        digest = Digest.of_bytes(data)
        uids = [self.store.create_upload() for _ in range(THREADS)]

        def upload(i: int) -> MetaInfo:
            chunks = [(o, data[o : o + 65536]) for o in range(0, len(data), 65536)]
            random.Random(i).shuffle(chunks)
            for offset, chunk in chunks:
                self.store.write_upload(uids[i], offset, chunk)
            return self.store.commit_upload(uids[i], digest)

        outcomes = run_threads(upload)
        kinds = Counter("ok" if kind == "ok" else type(value).__name__ for kind, value in outcomes)
        self.assertEqual(kinds, Counter({"ok": 1, "BlobExists": THREADS - 1}))
        with self.store.open_reader(digest) as reader:
            self.assertEqual(hashlib.sha256(reader.pread(reader.size, 0)).hexdigest(), digest.hex)
        self.assertEqual(self.store.list_uploads(), [])
        h = digest.hex
        self.assertEqual(
            files_under(self.root),
            {f"cache/{h[:2]}/{h[2:4]}/{h}/{n}" for n in ("data", "metainfo", "last_access")},
        )

    def test_eight_writers_one_upload(self) -> None:
        """Eight threads writing disjoint chunks of one upload produce the whole blob."""
        data = blob_bytes(8 * 100_000)
        uid = self.store.create_upload()

        def write(i: int) -> None:
            for offset in range(i * 100_000, (i + 1) * 100_000, 10_000):
                self.store.write_upload(uid, offset, data[offset : offset + 10_000])

        self.assertEqual({k for k, _ in run_threads(write)}, {"ok"})
        metainfo = self.store.commit_upload(uid, Digest.of_bytes(data))
        self.assertEqual(metainfo.length, len(data))

    def test_commit_waits_for_writers_and_refuses_later_writes(self) -> None:
        """A commit waits for writes in progress; writes arriving during it are refused."""
        data = b"x" * 1000
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, data)
        self.store._begin_upload_write(uid)  # a write in flight on another thread
        outcome: list[Any] = []

        def commit() -> None:
            try:
                outcome.append(self.store.commit_upload(uid, Digest.of_bytes(data + b"y")))
            except BaseException as e:
                outcome.append(e)

        thread = threading.Thread(target=commit)
        thread.start()
        wait_until(lambda: uid in self.store._committing, "the commit to start")
        self.assertTrue(thread.is_alive())
        self.assertRaises(UploadNotFound, self.store.write_upload, uid, 0, b"late")
        self.assertRaises(UploadNotFound, self.store.abort_upload, uid)
        self.assertRaises(UploadNotFound, self.store.commit_upload, uid, Digest.of_bytes(data))
        # The in-flight write lands, then releases the commit, which sees its bytes.
        with open(self.store.layout.upload(uid).data, "ab") as f:
            f.write(b"y")
        self.store._end_upload_write(uid)
        thread.join(JOIN_TIMEOUT)
        self.assertEqual(outcome[0].length, 1001)


class ConcurrentDownloadTests(StoreTestCase):
    """Several threads downloading one blob at once."""

    def setUp(self) -> None:
        super().setUp()
        self.data = blob_bytes(64 * 4096 + 100)
        self.metainfo = MetaInfo.of_bytes(self.data, 4096)
        self.pieces = pieces_of(self.data, self.metainfo)

    def test_concurrent_create_download(self) -> None:
        """Eight concurrent create_download calls make one download, all seeing it empty."""
        outcomes = run_threads(lambda _i: self.store.create_download(self.metainfo))
        self.assertEqual({k for k, _ in outcomes}, {"ok"})
        self.assertEqual({v.count() for _, v in outcomes}, {0})
        self.assertEqual([d.digest for d in self.store.list_downloads()], [self.metainfo.digest])

    def test_eight_threads_write_every_piece(self) -> None:
        """Each piece is marked exactly once though every thread writes all of them."""
        digest = self.metainfo.digest

        def download(i: int) -> list[int]:
            self.store.create_download(self.metainfo)
            order = list(range(self.metainfo.num_pieces))
            random.Random(i).shuffle(order)
            return [j for j in order if self.store.write_piece(digest, j, self.pieces[j])]

        outcomes = run_threads(download)
        self.assertEqual({k for k, _ in outcomes}, {"ok"})
        marked = Counter(j for _, won in outcomes for j in won)
        self.assertEqual(marked, Counter(range(self.metainfo.num_pieces)))
        self.assertTrue(self.store.piece_status(digest).complete())
        self.assertEqual(self.store.complete_download(digest), self.metainfo)
        with self.store.open_reader(digest) as reader:
            self.assertEqual(reader.pread(reader.size, 0), self.data)

    def test_writers_racing_completion(self) -> None:
        """Threads writing pieces while others complete the download never corrupt the blob."""
        digest = self.metainfo.digest
        self.store.create_download(self.metainfo)

        def work(i: int) -> object:
            if i % 2:
                for j in range(self.metainfo.num_pieces):
                    self.store.write_piece(digest, j, self.pieces[j])
                return None
            for _ in range(200):
                try:
                    return self.store.complete_download(digest)
                except Exception as e:  # DownloadIncomplete until the writers are done
                    if type(e).__name__ != "DownloadIncomplete":
                        raise
            return None

        outcomes = run_threads(work)
        self.assertEqual({k for k, _ in outcomes}, {"ok"}, outcomes)
        self.store.complete_download(digest)
        self.assertTrue(self.store.has(digest))
        self.assertFalse(self.store.has_download(digest))
        with self.store.open_reader(digest) as reader:
            self.assertEqual(reader.pread(reader.size, 0), self.data)


class ConcurrentReadDeleteTests(StoreTestCase):
    """Readers and deleters of the same cached blob at once."""

    def test_readers_never_see_a_deleted_blob(self) -> None:
        """
        Seven readers and a deleter race in rounds: no blob is deleted under a reader.

        Each round the deleter lets the readers in, waits for the first read to finish, then
        retries delete until the other readers have closed (BlobInUse meanwhile), and re-adds.
        """
        data = blob_bytes(200_000)
        table = PieceLengthTable(((0, 65536),))
        digest = self.store.put_bytes(data, table).digest
        progress = threading.Condition()
        state = {"round": 0, "reads": 0, "in_use": 0}
        done = threading.Event()

        def new_round_or_done(last: int) -> bool:
            return state["round"] > last or done.is_set()

        def reads_beyond(seen: int) -> bool:
            return state["reads"] > seen

        def read_each_round() -> int:
            reads = 0
            last = 0
            while True:
                with progress:
                    progress.wait_for(partial(new_round_or_done, last), JOIN_TIMEOUT)
                    if done.is_set():
                        return reads
                    last = state["round"]
                try:
                    reader = self.store.open_reader(digest)
                except BlobNotFound:
                    continue
                with reader:
                    if not self.store.has(digest):
                        raise AssertionError("blob deleted under an open reader")
                    if reader.pread(reader.size, 0) != data:
                        raise AssertionError("reader saw a changed blob")
                    if self.store.read_piece(digest, 1) != data[65536:131072]:
                        raise AssertionError("piece read saw a changed blob")
                reads += 1
                with progress:
                    state["reads"] += 1
                    progress.notify_all()

        def delete_and_readd() -> int:
            deletes = 0
            try:
                for _ in range(40):
                    with progress:
                        seen = state["reads"]
                        state["round"] += 1
                        progress.notify_all()
                        if not progress.wait_for(partial(reads_beyond, seen), JOIN_TIMEOUT):
                            raise AssertionError("no reader made progress")
                    while True:
                        try:
                            self.store.delete(digest)
                            break
                        except BlobInUse:
                            state["in_use"] += 1
                    deletes += 1
                    self.store.put_bytes(data, table)
            finally:
                done.set()
                with progress:
                    progress.notify_all()
            return deletes

        outcomes = run_threads(lambda i: read_each_round() if i else delete_and_readd())
        for kind, value in outcomes:
            self.assertEqual(kind, "ok", value)
        self.assertEqual(outcomes[0][1], 40)
        self.assertGreaterEqual(sum(v for _, v in outcomes[1:]), 40)
        self.assertEqual(self.store.open_readers(digest), 0)
        self.assertEqual(self.store.list_uploads(), [])
