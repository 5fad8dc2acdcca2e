"""
Cross-cluster tag replication (reference 3.4): ``remotes`` rules and the durable task executor.

A task of kind :data:`REPLICATE_TAG_KIND` is keyed ``"<remote> <repo:tag>"`` (one per
remote and tag) with payload ``{"remote", "tag", "digest"}``; adding it again replaces
the payload, so a mutable tag replicates its latest digest.  One attempt:

1. the task is dropped (:class:`PermanentTaskFailure`) if the ``remotes`` rules no longer
   send this tag to this remote (rules changed across a restart);
2. ``GET /tags/{tag}`` on the remote build-index: done if it holds the same digest (a
   different digest is overwritten: last write wins);
3. ``GET /origin`` on the remote gives its origin cluster;
4. the dependencies are resolved on the local origin ring (namespace = repository) and
   each one the remote ring lacks is copied: downloaded from the local ring into a spool
   file under ``spool_dir`` (never whole in memory) and uploaded in chunks to the remote
   ring, then the file is deleted;
5. ``PUT /tags/{tag}/digest/{d}?replicate=true`` on the remote, which checks the blobs
   again and replicates onwards by its own rules; loops stop at step 2.

A deleted tag queues a task under the same key with payload ``{"remote", "tag",
"delete"}`` (:func:`deletion_payload`), so whichever of a put and a delete came last is
what the remote ends with: one attempt is ``DELETE /tags/{tag}?replicate=true`` on the
remote, done on 200 or 404 (the remote deletes onwards; a loop ends at the 404).

Any other failure (remote down, origin busy) is retried by the queue with backoff, with
no attempt cap, and survives restarts (the queue is SQLite).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, ClassVar, Final

from attrs import define, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kraken.buildindex.dependencies import DependencyResolver
from kraken.buildindex.tags import TagRef, parse_tag
from kraken.clients.buildindex import BuildIndexClient, TagNotFound
from kraken.clients.origin import (
    DEFAULT_CHUNK_SIZE,
    BlobNotFoundAtOrigin,
    OriginClient,
    OriginClusterClient,
    file_chunks,
)
from kraken.core import Digest
from kraken.http.client import KrakenHTTPClient
from kraken.io.runner import BlockingRunner
from kraken.persistedretry import ITaskExecutor, PermanentTaskFailure, Task

__all__ = [
    "REPLICATE_TAG_KIND",
    "RemoteRules",
    "TagReplicationExecutor",
    "deletion_payload",
    "replication_key",
    "replication_payload",
]

#: The retry-queue kind of tag replication tasks.
REPLICATE_TAG_KIND: Final = "replicate-tag"


def replication_key(remote: str, tag: TagRef) -> str:
    """The task key of replicating ``tag`` to ``remote``."""
    return f"{remote} {tag}"


def replication_payload(remote: str, tag: TagRef, digest: Digest) -> dict[str, str]:
    """The task payload of replicating ``tag -> digest`` to ``remote``."""
    return {"remote": remote, "tag": str(tag), "digest": str(digest)}


def deletion_payload(remote: str, tag: TagRef) -> dict[str, str]:
    """The task payload of deleting ``tag`` at ``remote`` (same key as a put: the last wins)."""
    return {"remote": remote, "tag": str(tag), "delete": "true"}


@frozen
class RemoteRules:
    """``remote build-index -> tag regexes``; a regex matches anywhere in ``repo:tag``."""

    rules: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]

    @classmethod
    def of(cls, rules: Mapping[str, Iterable[str | re.Pattern[str]]]) -> RemoteRules:
        """Rules from a mapping of remote to regex strings (or compiled patterns)."""
        return cls(
            tuple(
                (remote, tuple(re.compile(p) if isinstance(p, str) else p for p in patterns))
                for remote, patterns in rules.items()
            )
        )

    def matches(self, remote: str, tag: TagRef) -> bool:
        """Whether ``tag`` is replicated to ``remote``."""
        name = str(tag)
        return any(
            r == remote and any(p.search(name) for p in patterns) for r, patterns in self.rules
        )

    def remotes_for(self, tag: TagRef) -> list[str]:
        """The remotes ``tag`` is replicated to, in configuration order."""
        return [remote for remote, _ in self.rules if self.matches(remote, tag)]


def _open_spool(directory: str) -> tuple[str, IO[bytes]]:
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="replicate-", dir=directory)
    return path, os.fdopen(fd, "wb")


def _close(file: IO[bytes]) -> None:
    file.close()


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@implementer(ITaskExecutor)
@define
class TagReplicationExecutor:
    """
    Runs :data:`REPLICATE_TAG_KIND` tasks (see the module docstring).

    ``local`` is this cluster's origin ring; ``resolver`` resolves dependencies on it;
    ``http`` makes requests to remotes; ``blocking`` runs the spool file's blocking calls.
    """

    log: ClassVar[Logger] = Logger()

    rules: RemoteRules
    resolver: DependencyResolver
    local: OriginClusterClient
    http: KrakenHTTPClient
    clock: IReactorTime
    blocking: BlockingRunner
    spool_dir: str
    chunk_size: int = DEFAULT_CHUNK_SIZE
    scheme: str = "http"

    def run(self, task: Task) -> Deferred[None]:
        """Attempt ``task`` once (``ITaskExecutor``)."""
        return Deferred.fromCoroutine(self._replicate(task))

    def remote_ring(self, addresses: Sequence[str]) -> OriginClusterClient:
        """A client of the remote origin ring at ``addresses``."""
        hosts = tuple(addresses)
        return OriginClusterClient(
            OriginClient(self.http, self.clock, self.scheme, self.chunk_size), lambda: hosts
        )

    async def _replicate(self, task: Task) -> None:
        payload: Mapping[str, Any] = task.payload
        try:
            remote = str(payload["remote"])
            tag = parse_tag(str(payload["tag"]))
            digest = None if payload.get("delete") else Digest.parse(str(payload["digest"]))
        except (KeyError, ValueError) as e:
            raise PermanentTaskFailure(f"invalid replication task {task.key!r}: {e}") from e
        if not self.rules.matches(remote, tag):
            raise PermanentTaskFailure(f"the remotes rules no longer send {tag} to {remote}")
        client = BuildIndexClient.for_host(self.http, remote, self.clock, scheme=self.scheme)
        if digest is None:
            # A deletion: the remote deletes onwards by its own rules; loops end at a 404.
            try:
                await client.delete_tag(str(tag), replicate=True)
            except TagNotFound:
                return
            self.log.info("deleted {tag} at {remote}", tag=tag, remote=remote)
            return
        try:
            if await client.get_tag(str(tag)) == digest:
                self.log.info(
                    "{remote} already has {tag} = {digest}", remote=remote, tag=tag, digest=digest
                )
                return
        except TagNotFound:
            pass
        ring = self.remote_ring(await client.origin())
        for dependency in await self.resolver.resolve(tag.repo, digest):
            await self._copy(tag.repo, dependency, ring)
        await client.put_tag(str(tag), digest, replicate=True)
        self.log.info(
            "replicated {tag} = {digest} to {remote}", tag=tag, digest=digest, remote=remote
        )

    async def _copy(self, repo: str, digest: Digest, ring: OriginClusterClient) -> None:
        try:
            await ring.stat(repo, digest)
            return
        except BlobNotFoundAtOrigin:
            pass
        path, file = await self.blocking(_open_spool, self.spool_dir)
        try:
            try:
                size = await self.local.download_blob(repo, digest, file.write)
            finally:
                await self.blocking(_close, file)
            await ring.upload_blob(repo, digest, size, file_chunks(path, self.blocking))
        except BlobNotFoundAtOrigin as e:
            # The local ring lost a blob the tag needs: nothing to copy until it is back.
            raise RuntimeError(f"{digest} is missing from the local origin ring: {e}") from e
        finally:
            await self.blocking(_remove, path)
