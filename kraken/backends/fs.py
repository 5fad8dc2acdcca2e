"""
The filesystem backend: the embedded default, one directory tree on local disk.

Layout under ``root`` (names are validated by :mod:`kraken.backends.names` first, so every path
component is a plain file name; no ``..``, no absolute paths):

- blob ``<hex>``: ``root/blobs/<hex[0:2]>/<hex>``
- tag ``<repo>:<tag>``: ``root/tags/<repo segments...>/_tags/<tag>`` (repository segments never
  start with ``_``, so ``_tags`` cannot clash with a sub-repository)

Writes go to a ``.tmp-*`` file in the target directory, are fsynced, then renamed over the
target, and the directory is fsynced: a reader sees the old or the new object, never a torn one,
and a crash leaves at most a stray temporary file (ignored by :meth:`list`).  The namespace is
validated but does not affect the path (see :mod:`kraken.backends.interface`).

Listing walks the directories the prefix allows and sorts the names, so a page costs a walk of
that subtree: fine for the embedded default, not meant for millions of objects.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import stat
import tempfile
from typing import BinaryIO

from attrs import define, field
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from zope.interface import implementer

from kraken.backends.interface import (
    DEFAULT_LIST_LIMIT,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListResult,
    UploadSource,
)
from kraken.backends.names import (
    BlobName,
    check_list_arguments,
    check_namespace,
    could_start_blob_name,
    could_start_tag_name,
    is_blob_name,
    is_tag,
    parse_name,
)
from kraken.backends.streams import DEFAULT_CHUNK_SIZE, FileSender
from kraken.core.names import is_segment
from kraken.io.runner import BlockingRunner

BLOBS_DIR = "blobs"
TAGS_DIR = "tags"
TAG_FILES_DIR = "_tags"
TEMP_PREFIX = ".tmp-"
MAX_TOKEN_LENGTH = 1024


def _root(value: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(value))


@implementer(IBackend)
@define
class FilesystemBackend:
    """An :class:`IBackend` storing objects as files under ``root``; all I/O through ``run``."""

    root: str = field(converter=_root)
    """The backend's directory (created on the first upload)."""

    run: BlockingRunner
    """Where blocking file operations run (a thread pool in daemons, inline in unit tests)."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Bytes per read when downloading and per copy step when uploading from a file."""

    log = Logger()

    def path_of(self, name: str) -> str:
        """The file that holds ``name`` (raises :class:`InvalidName`)."""
        parsed = parse_name(name)
        if isinstance(parsed, BlobName):
            return os.path.join(self.root, BLOBS_DIR, parsed.hex[:2], parsed.hex)
        return os.path.join(self.root, TAGS_DIR, *parsed.repo_segments, TAG_FILES_DIR, parsed.tag)

    def _locate(self, namespace: str, name: str) -> str:
        check_namespace(namespace)
        return self.path_of(name)

    def stat(self, namespace: str, name: str) -> Deferred[BlobInfo]:
        """See :meth:`IBackend.stat`."""
        return ensureDeferred(self._stat(namespace, name))

    async def _stat(self, namespace: str, name: str) -> BlobInfo:
        path = self._locate(namespace, name)
        return await self.run(_stat_file, namespace, name, path)

    def upload(self, namespace: str, name: str, source: UploadSource) -> Deferred[None]:
        """See :meth:`IBackend.upload`."""
        return ensureDeferred(self._upload(namespace, name, source))

    async def _upload(self, namespace: str, name: str, source: UploadSource) -> None:
        path = self._locate(namespace, name)
        if not isinstance(source, bytes | str | os.PathLike):
            raise TypeError(f"upload source must be bytes or a file path, got {type(source)!r}")
        await self.run(_write_atomically, path, source, self.chunk_size)
        self.log.debug("stored {name} ({namespace})", name=name, namespace=namespace)

    def download(self, namespace: str, name: str, consumer: IConsumer) -> Deferred[int]:
        """See :meth:`IBackend.download`."""
        return ensureDeferred(self._download(namespace, name, consumer))

    async def _download(self, namespace: str, name: str, consumer: IConsumer) -> int:
        path = self._locate(namespace, name)
        file = await self.run(_open_for_reading, namespace, name, path)
        try:
            return await FileSender(file, self.run, self.chunk_size).send(consumer)
        finally:
            await self.run(file.close)

    def list(
        self,
        prefix: str,
        limit: int = DEFAULT_LIST_LIMIT,
        continuation_token: str | None = None,
    ) -> Deferred[ListResult]:
        """See :meth:`IBackend.list`; the token is the last name of the previous page."""
        return ensureDeferred(self._list(prefix, limit, continuation_token))

    async def _list(self, prefix: str, limit: int, token: str | None) -> ListResult:
        check_list_arguments(prefix, limit)
        if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH):
            raise InvalidName(f"invalid continuation token {token!r}")
        names = await self.run(_names_under, self.root, prefix)
        start = 0 if token is None else bisect.bisect_right(names, token)
        page = names[start : start + limit]
        more = start + limit < len(names)
        return ListResult(tuple(page), page[-1] if more and page else None)

    def delete(self, namespace: str, name: str) -> Deferred[None]:
        """See :meth:`IBackend.delete`: the file is unlinked (in ``run``)."""
        return ensureDeferred(self._delete(namespace, name))

    async def _delete(self, namespace: str, name: str) -> None:
        path = self._locate(namespace, name)
        await self.run(_remove_file, namespace, name, path)
        self.log.debug("deleted {name} ({namespace})", name=name, namespace=namespace)

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        return succeed(None)


def _remove_file(namespace: str, name: str, path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise BlobNotFound(namespace, name) from None


def _stat_file(namespace: str, name: str, path: str) -> BlobInfo:
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise BlobNotFound(namespace, name) from None
    if not stat.S_ISREG(info.st_mode):
        raise BlobNotFound(namespace, name)
    return BlobInfo(info.st_size)


def _open_for_reading(namespace: str, name: str, path: str) -> BinaryIO:
    try:
        return open(path, "rb")  # closed by FilesystemBackend._download
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise BlobNotFound(namespace, name) from None


def _write_atomically(path: str, source: UploadSource, chunk_size: int) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
            else:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out, chunk_size)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _names_under(root: str, prefix: str) -> list[str]:
    """Every stored name starting with ``prefix``, sorted (blocking)."""
    names: list[str] = []
    if could_start_blob_name(prefix):
        blobs = os.path.join(root, BLOBS_DIR)
        shards = (
            [prefix[:2]]
            if len(prefix) >= 2
            else [e.name for e in _scandir(blobs) if e.name.startswith(prefix)]
        )
        for shard in shards:
            names.extend(
                e.name
                for e in _scandir(os.path.join(blobs, shard))
                if is_blob_name(e.name)
                and e.name.startswith(shard)
                and e.name.startswith(prefix)
                and e.is_file()
            )
    if could_start_tag_name(prefix):
        names.extend(_tag_names_under(os.path.join(root, TAGS_DIR), prefix))
    names.sort()
    return names


def _tag_names_under(tags_root: str, prefix: str) -> list[str]:
    repo, colon, tag_prefix = prefix.partition(":")
    if colon:
        tag_dir = os.path.join(tags_root, *repo.split("/"), TAG_FILES_DIR)
        return [
            f"{repo}:{e.name}"
            for e in _scandir(tag_dir)
            if is_tag(e.name) and e.name.startswith(tag_prefix) and e.is_file()
        ]
    found: list[str] = []
    stack = [repo.split("/")[:-1]]
    while stack:
        segments = stack.pop()
        for entry in _scandir(os.path.join(tags_root, *segments)):
            if entry.name == TAG_FILES_DIR and segments:
                repo_name = "/".join(segments)
                found.extend(
                    f"{repo_name}:{t.name}"
                    for t in _scandir(entry.path)
                    if is_tag(t.name) and t.is_file()
                )
            elif is_segment(entry.name) and entry.is_dir(follow_symlinks=False):
                stack.append([*segments, entry.name])
    return [name for name in found if name.startswith(prefix)]
