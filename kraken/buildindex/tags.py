"""
Tags (``repo:tag``) and the build-index's tag store.

Tag names follow the distribution spec: the repository is
``[a-z0-9]+((.|_|__|-+)[a-z0-9]+)*`` segments joined by ``/`` (at most 255
characters) and the tag ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``, so no ``..``,
no empty segment, no ``%`` and no leading ``/`` can reach a backend path.

:class:`TagStore` keeps each tag in the backend the repository routes to
(namespace = repository, name = ``repo:tag``, content ``sha256:<hex>``).
Decisions (reference 3.2 and quirks 5 and 10, fixed):

- **Write-through, last write wins.**  A put returns once the backend holds the
  new digest, replacing any older one.  Puts of one tag on one build-index are
  serialised, so the backend ends with the digest of the last put called.
- **No local cache.**  Every read asks the backend, so a build-index never
  serves a tag older than the last put it answered, and every member of a
  cluster that shares the backend sees a new tag on its next read: an agent sees
  it within its own tag TTL.
- **Reads are consistent.**  ``GET`` and ``HEAD`` do the same lookup; a backend
  error is :class:`TagStoreUnavailable` (503) for both, never a false 404.
- **Duplicates from other members** carry the time the first member stored the
  tag; one older than the last write this store knows of for the tag is ignored,
  so a late duplicate cannot undo a newer put (the times of the last
  ``max_recorded`` tags are kept in memory; clocks of members are assumed to
  agree to well under the interval between two pushes of one tag).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar, Final

from attrs import define, field, frozen
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.api.distribution import check_repository_name, is_tag
from kraken.backends import (
    BlobNotFound,
    IBackend,
    InvalidName,
    ListResult,
    OperationNotSupported,
)
from kraken.backends.names import TagName, check_prefix, parse_name
from kraken.backends.router import BackendRouter
from kraken.backends.streams import download_bytes
from kraken.core import Digest, InvalidDigest
from kraken.http.errors import APIError

__all__ = [
    "MAX_TAG_OBJECT",
    "InvalidTag",
    "TagRef",
    "TagStore",
    "TagStoreUnavailable",
    "UnknownTag",
    "parse_tag",
]

#: Bytes a stored tag may have (``sha256:`` + 64 hex, and some slack for a newline).
MAX_TAG_OBJECT: Final = 1024


class InvalidTag(ValueError):
    """A tag that is not ``<repository>:<tag>`` in the distribution grammar (400)."""


class UnknownTag(LookupError):
    """The backend has no such tag (404)."""


class TagStoreUnavailable(Exception):
    """The backend failed to answer (503): the tag may well exist."""


@frozen
class TagRef:
    """A valid ``repo:tag``."""

    repo: str
    tag: str

    def __str__(self) -> str:
        return f"{self.repo}:{self.tag}"


def parse_tag(value: str) -> TagRef:
    """Parse ``repo:tag`` (already percent-decoded once), or raise :class:`InvalidTag`."""
    repo, colon, tag = value.rpartition(":")
    if not colon or not repo:
        raise InvalidTag(f"invalid tag {value[:300]!r}: expected <repository>:<tag>")
    try:
        check_repository_name(repo)
    except APIError:
        raise InvalidTag(f"invalid tag {value[:300]!r}: invalid repository name") from None
    if not is_tag(tag):
        raise InvalidTag(f"invalid tag {value[:300]!r}: invalid tag {tag[:200]!r}")
    return TagRef(repo, tag)


def _list_token(index: int, inner: str | None) -> str:
    return f"{index}.{inner or ''}"


def _parse_list_token(token: str, count: int) -> tuple[int, str | None]:
    head, dot, inner = token.partition(".")
    if not dot or not head.isdigit() or not 0 <= int(head) < count:
        raise InvalidName(f"invalid list offset {token[:200]!r}")
    return int(head), inner or None


@define
class TagStore:
    """The tags of the build-index, kept durably in the backends (see the module docstring)."""

    log: ClassVar[Logger] = Logger()

    backends: BackendRouter
    clock: IReactorTime
    max_recorded: int = 100_000
    _written: OrderedDict[str, float] = field(factory=OrderedDict, init=False)
    _locks: dict[str, DeferredLock] = field(factory=dict, init=False)

    def _backend(self, tag: TagRef) -> IBackend:
        return self.backends.backend_for(tag.repo)

    def _record(self, name: str, when: float) -> None:
        self._written[name] = when
        self._written.move_to_end(name)
        while len(self._written) > self.max_recorded:
            self._written.popitem(last=False)

    @asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        """Hold the lock of tag ``name`` (writes and deletes of one tag run one at a time)."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = DeferredLock()
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(name, None)

    async def put(self, tag: TagRef, digest: Digest, *, written_at: float | None = None) -> bool:
        """
        Store ``tag -> digest`` in the backend; True once durable.

        ``written_at`` marks a duplicate from another member: it is stored only if no
        later write of the tag is known here (False otherwise).  Fails with
        :class:`TagStoreUnavailable` when the backend fails.
        """
        name = str(tag)
        when = self.clock.seconds() if written_at is None else written_at
        async with self._locked(name):
            known = self._written.get(name)
            if written_at is not None and known is not None and known > written_at:
                self.log.info(
                    "ignoring an older duplicate of {tag} ({digest})", tag=name, digest=digest
                )
                return False
            self._record(name, max(when, known or when))
            try:
                await self._backend(tag).upload(tag.repo, name, str(digest).encode("ascii"))
            except InvalidName:
                raise
            except Exception as e:
                raise TagStoreUnavailable(f"cannot store tag {name}: {e}") from e
            return True

    async def delete(self, tag: TagRef, *, deleted_at: float | None = None) -> bool:
        """
        Remove ``tag`` from the backend; True once it is gone.

        Fails with :class:`UnknownTag` when the backend has no such tag.  ``deleted_at``
        marks a duplicate from another member: ignored (False) if a later write of the tag
        is known here, and quietly False when the tag is already gone.  The deletion's time
        is recorded like a write, so an older duplicate of a put cannot bring the tag back.
        """
        name = str(tag)
        when = self.clock.seconds() if deleted_at is None else deleted_at
        async with self._locked(name):
            known = self._written.get(name)
            if deleted_at is not None and known is not None and known > deleted_at:
                return False
            self._record(name, max(when, known or when))
            try:
                await self._backend(tag).delete(tag.repo, name)
            except BlobNotFound:
                if deleted_at is not None:
                    return False
                raise UnknownTag(f"tag {name} not found") from None
            except InvalidName:
                raise
            except Exception as e:
                raise TagStoreUnavailable(f"cannot delete tag {name}: {e}") from e
            return True

    async def get(self, tag: TagRef) -> Digest:
        """The digest of ``tag``: :class:`UnknownTag`, or :class:`TagStoreUnavailable`."""
        name = str(tag)
        try:
            raw = await download_bytes(self._backend(tag), tag.repo, name, MAX_TAG_OBJECT)
        except BlobNotFound:
            raise UnknownTag(f"tag {name} not found") from None
        except InvalidName:
            raise
        except Exception as e:
            raise TagStoreUnavailable(f"cannot read tag {name}: {e}") from e
        try:
            return Digest.parse(raw.decode("ascii", "replace").strip())
        except InvalidDigest as e:
            raise TagStoreUnavailable(f"tag {name} holds no digest: {e}") from None

    async def list(
        self, prefix: str, limit: int, offset: str | None = None
    ) -> tuple[list[str], str | None]:
        """
        One page of the tags (``repo:tag``) starting with ``prefix``, and the next offset.

        Every backend of the router is listed in turn (a prefix may span repositories that
        route to different backends); names that are not tags (blobs sharing a backend)
        are left out, so a page may be short while more follow.
        """
        check_prefix(prefix)
        backends = [b for b in self.backends.backends() if b is not self.backends.noop]
        if not backends:
            return [], None
        index, inner = (0, None) if offset is None else _parse_list_token(offset, len(backends))
        try:
            page: ListResult = await backends[index].list(prefix, limit, inner)
        except InvalidName:
            raise
        except OperationNotSupported:  # a read-only backend (registry, http) holds no tags here
            page = ListResult((), None)
        except Exception as e:
            raise TagStoreUnavailable(f"cannot list tags with prefix {prefix!r}: {e}") from e
        names = []
        for name in page.names:
            try:
                parsed = parse_name(name)
            except InvalidName:
                continue
            if isinstance(parsed, TagName):
                names.append(name)
        if page.continuation_token is not None:
            return names, _list_token(index, page.continuation_token)
        if index + 1 < len(backends):
            return names, _list_token(index + 1, None)
        return names, None
