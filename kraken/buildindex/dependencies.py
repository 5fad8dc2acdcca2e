"""
What a tag needs at the origin, and the check that the origin has it (reference 3.3).

``tag_types`` rules pick, by the tag's repository, how dependencies are found:

- ``default``: the digest itself;
- ``docker``: the manifest (downloaded from the origin ring, at most
  :data:`MAX_MANIFEST_SIZE`), then what it references: for a Docker schema 2 or
  OCI manifest its config and layers; for a manifest list or OCI index its child
  manifests and, recursively (at most :data:`MAX_INDEX_DEPTH` levels), theirs.

Every origin call uses namespace = the repository (quirk 3 fixed: the Go
build-index used the whole ``repo:tag``, which breaks backend routing by
repository).  The manifest comes first in the result, then children before the
blobs they reference, each digest once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList

from kraken.api.distribution import manifest_references
from kraken.clients.origin import BlobNotFoundAtOrigin, NoOriginAvailable
from kraken.core import Digest
from kraken.http.client import RequestError
from kraken.http.errors import APIError

__all__ = [
    "MAX_INDEX_DEPTH",
    "MAX_MANIFEST_SIZE",
    "DependencyResolver",
    "InvalidManifest",
    "ManifestNotFound",
    "MissingDependencies",
    "OriginRing",
    "OriginUnavailable",
    "TagTypeRules",
    "UnknownTagType",
]

#: Bytes a manifest may have (the registry limit the proxy enforces too).
MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
#: Levels of nested indexes followed (an index of indexes of manifests is 2).
MAX_INDEX_DEPTH: Final = 2

TagType = Literal["docker", "default"]


class OriginRing(Protocol):
    """The calls made on the origin ring (an :class:`OriginClusterClient` does them)."""

    def stat(self, namespace: str, digest: Digest) -> Deferred[int]:
        """The blob's size; :class:`BlobNotFoundAtOrigin` when absent."""

    def download_blob(
        self, namespace: str, digest: Digest, collector: Callable[[bytes], object]
    ) -> Deferred[int]:
        """Stream the blob into ``collector``; :class:`BlobNotFoundAtOrigin` when absent."""


class UnknownTagType(ValueError):
    """No ``tag_types`` rule matches the repository (400)."""


class ManifestNotFound(LookupError):
    """The origin ring does not have the manifest (404)."""


class InvalidManifest(ValueError):
    """The manifest is not one the build-index can read, or too large (400)."""


class MissingDependencies(ValueError):
    """Blobs or child manifests that the manifest references are not at the origin (400)."""

    def __init__(self, repo: str, missing: Sequence[Digest]) -> None:
        shown = ", ".join(str(d) for d in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        super().__init__(
            f"cannot store the tag: missing dependencies in repository {repo!r}: {shown}{more}"
        )
        self.missing = tuple(missing)


class OriginUnavailable(Exception):
    """The origin ring could not be asked (503)."""


class _TooLarge(Exception):
    pass


@frozen
class TagTypeRules:
    """Ordered ``(repository regex, type)`` rules; the first whose regex matches wins."""

    rules: tuple[tuple[re.Pattern[str], TagType], ...]

    @classmethod
    def of(cls, rules: Sequence[tuple[str | re.Pattern[str], TagType]]) -> TagTypeRules:
        """Rules from regex strings (or compiled patterns) and types."""
        return cls(tuple((re.compile(p) if isinstance(p, str) else p, t) for p, t in rules))

    def type_for(self, repo: str) -> TagType:
        """The type of repository ``repo``, or :class:`UnknownTagType`."""
        for pattern, kind in self.rules:
            if pattern.search(repo):
                return kind
        raise UnknownTagType(f"no tag_types rule matches repository {repo!r}")


@frozen
class DependencyResolver:
    """Finds and checks a tag's dependencies on an origin ring."""

    origins: OriginRing
    rules: TagTypeRules

    async def _manifest(self, repo: str, digest: Digest) -> bytes:
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_MANIFEST_SIZE:
                raise _TooLarge()
            chunks.append(data)

        try:
            await self.origins.download_blob(repo, digest, collect)
        except BlobNotFoundAtOrigin:
            raise ManifestNotFound(
                f"manifest {digest} not found at the origin in repository {repo!r}"
            ) from None
        except _TooLarge:
            raise InvalidManifest(
                f"manifest {digest} is larger than {MAX_MANIFEST_SIZE} bytes"
            ) from None
        except (NoOriginAvailable, RequestError) as e:
            raise OriginUnavailable(f"cannot download manifest {digest}: {e}") from e
        return b"".join(chunks)

    async def _walk(
        self,
        repo: str,
        digest: Digest,
        depth: int,
        *,
        found: dict[Digest, None],
        missing: list[Digest],
        manifests: set[Digest],
    ) -> None:
        found[digest] = None
        try:
            data = await self._manifest(repo, digest)
        except ManifestNotFound:
            if depth == 0:
                raise
            missing.append(digest)  # a child manifest: the request references absent content
            return
        manifests.add(digest)
        try:
            refs = manifest_references(data)
        except APIError as e:
            raise InvalidManifest(f"manifest {digest}: {e.message}") from None
        if refs.manifests and depth >= MAX_INDEX_DEPTH:
            raise InvalidManifest(f"manifest {digest}: indexes nested deeper than {depth}")
        for child in refs.manifests:
            if child not in found:
                await self._walk(
                    repo, child, depth + 1, found=found, missing=missing, manifests=manifests
                )
        for blob in refs.blobs:
            found.setdefault(blob, None)

    async def _resolve(
        self, repo: str, digest: Digest
    ) -> tuple[tuple[Digest, ...], frozenset[Digest]]:
        """The digests, and those of them that are manifests already downloaded."""
        if self.rules.type_for(repo) == "default":
            return (digest,), frozenset()
        found: dict[Digest, None] = {}
        missing: list[Digest] = []
        manifests: set[Digest] = set()
        await self._walk(repo, digest, 0, found=found, missing=missing, manifests=manifests)
        if missing:
            raise MissingDependencies(repo, missing)
        return tuple(found), frozenset(manifests)

    async def resolve(self, repo: str, digest: Digest) -> tuple[Digest, ...]:
        """
        Every digest the tag needs at the origin, the manifest first.

        Fails with :class:`UnknownTagType`, :class:`ManifestNotFound` (the manifest is
        absent), :class:`MissingDependencies` (a child manifest is absent),
        :class:`InvalidManifest` or :class:`OriginUnavailable`.
        """
        digests, _ = await self._resolve(repo, digest)
        return digests

    async def check(self, repo: str, digests: Sequence[Digest]) -> None:
        """Fail with :class:`MissingDependencies` unless the ring has every one of ``digests``."""
        stats: list[Deferred[Any]] = [self.origins.stat(repo, d) for d in digests]
        results = await DeferredList(stats, consumeErrors=True)
        missing: list[Digest] = []
        for digest, (ok, value) in zip(digests, results, strict=True):
            if ok:
                continue
            if value.check(BlobNotFoundAtOrigin):
                missing.append(digest)
            elif value.check(NoOriginAvailable, RequestError):
                raise OriginUnavailable(f"cannot stat {digest}: {value.getErrorMessage()}")
            else:
                value.raiseException()
        if missing:
            raise MissingDependencies(repo, missing)

    async def resolve_and_check(self, repo: str, digest: Digest) -> tuple[Digest, ...]:
        """:meth:`resolve`, then :meth:`check` what was not downloaded on the way (the blobs)."""
        digests, downloaded = await self._resolve(repo, digest)
        await self.check(repo, [d for d in digests if d not in downloaded])
        return digests
