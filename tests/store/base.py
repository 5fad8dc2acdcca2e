"""Shared set-up for the blob store tests: a store in a temporary root with a Clock."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import MetaInfo
from kraken.store import BlobStore

#: Where the test clock starts (not 0, so that "never" and "at the epoch" differ).
START = 1_000_000.0


def blob_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-ish test content of ``size`` bytes."""
    pattern = bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(4096))
    return (pattern * (size // len(pattern) + 1))[:size]


def pieces_of(data: bytes, metainfo: MetaInfo) -> list[bytes]:
    """The pieces of ``data`` as cut by ``metainfo``."""
    return [
        data[metainfo.piece_offset(i) : metainfo.piece_offset(i) + metainfo.piece_size(i)]
        for i in range(metainfo.num_pieces)
    ]


def files_under(root: str) -> set[str]:
    """Every file path under ``root``, relative to it."""
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


class StoreTestCase(SynchronousTestCase):
    """A test case with ``self.store`` over a fresh root and ``self.clock`` at START."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(START)
        self.store = BlobStore(self.root, self.clock)

    def restart(self) -> BlobStore:
        """A new store object over the same root, as after a process restart."""
        self.store = BlobStore(self.root, self.clock)
        return self.store
