"""
Where the store keeps things on disk (pure path arithmetic, no I/O).

::

    <root>/upload/<uid>/data                         flat, by upload id
    <root>/download/<hex[0:2]>/<hex[2:4]>/<hex>/     sharded by digest
    <root>/cache/<hex[0:2]>/<hex[2:4]>/<hex>/        sharded by digest
    <root>/tmp/                                      staging and trash, wiped at start

Each entry directory holds ``data`` and sidecar files next to it:
``metainfo`` (canonical metainfo JSON), ``piece_status`` (downloads: one byte
per piece, 1 when present), ``last_access`` (decimal seconds from the store's
clock), ``persist`` (exists when the blob must not be deleted), ``namespace``
(optional: the namespace a download was started under, UTF-8; it moves into
the cache with the blob).

Every path is built from a validated :class:`~kraken.core.Digest` (64
lowercase hex) or a validated upload id (32 lowercase hex), so no name from
the network can reach outside ``root``.
"""

from __future__ import annotations

import os
import re
from typing import Final

from attrs import frozen

from kraken.core import Digest
from kraken.store.errors import InvalidUploadID

UPLOAD: Final = "upload"
DOWNLOAD: Final = "download"
CACHE: Final = "cache"
TMP: Final = "tmp"

DATA: Final = "data"
METAINFO: Final = "metainfo"
PIECE_STATUS: Final = "piece_status"
LAST_ACCESS: Final = "last_access"
PERSIST: Final = "persist"
NAMESPACE: Final = "namespace"

_UID: Final = re.compile(r"[0-9a-f]{32}\Z")


def check_upload_id(uid: object) -> str:
    """Return ``uid`` if it is 32 lowercase hex characters, else raise InvalidUploadID."""
    if not isinstance(uid, str) or not _UID.match(uid):
        raise InvalidUploadID(uid)
    return uid


@frozen
class EntryPaths:
    """The directory of one store entry and the files in it."""

    dir: str

    @property
    def data(self) -> str:
        """The blob's bytes."""
        return os.path.join(self.dir, DATA)

    @property
    def metainfo(self) -> str:
        """Metainfo JSON sidecar."""
        return os.path.join(self.dir, METAINFO)

    @property
    def piece_status(self) -> str:
        """One byte per piece sidecar (downloads)."""
        return os.path.join(self.dir, PIECE_STATUS)

    @property
    def last_access(self) -> str:
        """Last access time sidecar."""
        return os.path.join(self.dir, LAST_ACCESS)

    @property
    def persist(self) -> str:
        """Persist flag sidecar (present = persisted)."""
        return os.path.join(self.dir, PERSIST)

    @property
    def namespace(self) -> str:
        """Namespace sidecar (optional)."""
        return os.path.join(self.dir, NAMESPACE)


@frozen
class StoreLayout:
    """Path arithmetic under one absolute root."""

    root: str

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> StoreLayout:
        """The layout under ``root`` made absolute (so a later chdir changes nothing)."""
        return cls(os.path.abspath(os.fspath(root)))

    def state_dir(self, state: str) -> str:
        """``<root>/<state>``."""
        if state not in (UPLOAD, DOWNLOAD, CACHE, TMP):
            raise ValueError(f"unknown store state {state!r}")
        return os.path.join(self.root, state)

    def upload(self, uid: str) -> EntryPaths:
        """The entry of upload ``uid`` (validated)."""
        return EntryPaths(os.path.join(self.root, UPLOAD, check_upload_id(uid)))

    def sharded(self, state: str, digest: Digest) -> EntryPaths:
        """The entry of ``digest`` in the sharded ``state`` (download or cache)."""
        if state not in (DOWNLOAD, CACHE):
            raise ValueError(f"store state {state!r} is not sharded")
        h = Digest(digest.hex).hex  # revalidate: a path must never come from an unchecked value
        return EntryPaths(os.path.join(self.root, state, h[0:2], h[2:4], h))

    def download(self, digest: Digest) -> EntryPaths:
        """The entry of ``digest`` in the download state."""
        return self.sharded(DOWNLOAD, digest)

    def cache(self, digest: Digest) -> EntryPaths:
        """The entry of ``digest`` in the cache state."""
        return self.sharded(CACHE, digest)

    def tmp(self, name: str) -> str:
        """A staging or trash path ``<root>/tmp/<name>`` (``name`` is generated, hex)."""
        if not re.fullmatch(r"[0-9a-f]{1,64}", name):
            raise ValueError(f"invalid tmp name {name!r}")
        return os.path.join(self.root, TMP, name)
