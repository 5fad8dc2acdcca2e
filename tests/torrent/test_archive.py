"""verify_and_write: checks before writing; with a write lock only the write holds it."""

from __future__ import annotations

import random
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kraken.core import MetaInfo
from kraken.torrent.archive import MemoryArchive, PieceHashMismatch, verify_and_write


class RecordingLock:
    """A lock that records how often it was taken and whether it is held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> RecordingLock:
        self.lock.acquire()
        self.taken += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


class VerifyAndWriteTests(SynchronousTestCase):
    """The bytes are verified before anything is written, with or without a write lock."""

    def setUp(self) -> None:
        """A 4-piece blob and an empty storage for it."""
        self.data = random.Random(1).randbytes(4096)
        self.meta = MetaInfo.of_bytes(self.data, 1024)
        self.storage = MemoryArchive().create("ns", self.meta)
        self.lock = RecordingLock()
        held: list[bool] = []
        write = self.storage.write_piece

        def recording_write(index: int, data: Any) -> None:
            held.append(self.lock.lock.locked())
            write(index, data)

        self.storage.write_piece = recording_write  # type: ignore[method-assign]
        self.held = held

    def test_good_piece_written_under_the_lock(self) -> None:
        """A good piece is written once, while the lock is held."""
        verify_and_write(self.storage, 2, self.data[2048:3072], self.lock)
        self.assertEqual(self.held, [True])
        self.assertEqual(self.lock.taken, 1)
        self.assertIn(2, self.storage.bitfield())

    def test_bad_piece_never_takes_the_lock(self) -> None:
        """Wrong bytes raise PieceHashMismatch before the lock: hashing is not serialized."""
        bad = bytearray(self.data[:1024])
        bad[0] ^= 1
        self.assertRaises(PieceHashMismatch, verify_and_write, self.storage, 0, bad, self.lock)
        self.assertRaises(PieceHashMismatch, verify_and_write, self.storage, 0, b"x", self.lock)
        self.assertEqual(self.lock.taken, 0)
        self.assertEqual(self.held, [])

    def test_without_lock(self) -> None:
        """No lock: the piece is written directly."""
        verify_and_write(self.storage, 3, self.data[3072:])
        self.assertEqual(self.held, [False])
        self.assertIn(3, self.storage.bitfield())
