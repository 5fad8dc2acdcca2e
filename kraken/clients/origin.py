"""
Clients of the origin's HTTP API: one origin (:class:`OriginClient`) and the ring.

:class:`OriginClusterClient` is the ring as one service.

Other components (the proxy, the build-index, the CLI, and origins replicating to each
other) upload to and download from origins through these classes.  Behaviour follows the
Go ``blobclient`` (reference/kraken-components.md 2.2):

- uploads are chunked: ``POST .../uploads`` -> ``Location: <uid>``, one ``PATCH`` per
  chunk (``Content-Range: start-end``, end exclusive; 32 MiB by default), then ``PUT`` to
  commit.  A 409 anywhere means the origin already has the blob: success.
- the ring's locations come from any origin (``GET /blobs/{d}/locations``, asked of up to
  3 random hosts in turn); uploads try the locations in order and move on only on network
  errors and 429/502/503/504; downloads poll while the origin answers 202 (backoff 1 s
  x1.3 up to 5 s, for at most 15 minutes) and move on on 5xx or network errors.
- a stat asks the replicas in turn until one has the blob: the one that took an upload
  has it before the others and the backend do, so a 404 from one replica is not an
  answer for the ring (:meth:`OriginClusterClient.stat`).

Chunks are read through a ``read_chunk(offset, length) -> Deferred[bytes]`` function, so
the caller decides where blocking reads happen (:func:`file_chunks` reads a local file in a
thread through a :class:`~kraken.io.runner.BlockingRunner`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Collection
from typing import ClassVar, Final, Literal
from urllib.parse import quote

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from kraken.cluster.hostlist import parse_host_port
from kraken.core import Digest, MetaInfo, PeerInfo, parse_json
from kraken.http.client import (
    HTTPStatusError,
    KrakenHTTPClient,
    NetworkError,
    RequestError,
    collect_body,
    read_body,
)
from kraken.io.runner import BlockingRunner

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BlobNotFoundAtOrigin",
    "NoOriginAvailable",
    "OriginClient",
    "OriginClusterClient",
    "PollPolicy",
    "ReadChunk",
    "StatInconclusive",
    "UploadKind",
    "bytes_chunks",
    "file_chunks",
]

#: Bytes per PATCH of a chunked upload (the Go client's 32 MiB).
DEFAULT_CHUNK_SIZE: Final = 32 * 1024 * 1024
#: Seconds for a commit, which hashes the whole blob on the origin.
COMMIT_TIMEOUT: Final = 15 * 60.0
SMALL_TIMEOUT: Final = 15.0
MAX_SMALL_BODY: Final = 64 * 1024
MAX_METAINFO_BYTES: Final = 16 * 1024 * 1024
#: Hosts asked for a blob's locations before giving up.
LOCATION_ATTEMPTS: Final = 3

#: Reads ``length`` bytes at ``offset`` of the blob being uploaded.
ReadChunk = Callable[[int, int], "Deferred[bytes]"]
#: Which upload endpoints: the public one (write-back and replication), the internal one
#: between replicas (no write-back), or the duplicate one (write-back after a delay).
UploadKind = Literal["public", "internal", "duplicate"]


class BlobNotFoundAtOrigin(Exception):
    """The origin (and its backend) does not have the blob."""

    def __init__(self, namespace: str, digest: Digest) -> None:
        super().__init__(f"blob {digest} not found in namespace {namespace!r}")
        self.namespace = namespace
        self.digest = digest


class NoOriginAvailable(Exception):
    """Every origin tried failed; the message lists what each said."""


class StatInconclusive(NoOriginAvailable):
    """
    No replica that answered has the blob, but others could not be asked.

    The blob may be on one of those (an upload they took, not yet duplicated or
    written back): neither present nor proven absent.
    """


def _ns(namespace: str) -> str:
    return quote(namespace, safe="")


def _read_file_chunk(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


def file_chunks(path: str, run: BlockingRunner) -> ReadChunk:
    """A :data:`ReadChunk` over a local file, read through ``run`` (a thread in daemons)."""

    def read(offset: int, length: int) -> Deferred[bytes]:
        return run(_read_file_chunk, path, offset, length)

    return read


def bytes_chunks(data: bytes) -> ReadChunk:
    """A :data:`ReadChunk` over bytes in memory (small blobs, tests)."""

    def read(offset: int, length: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        d.callback(data[offset : offset + length])
        return d

    return read


@frozen
class PollPolicy:
    """How long to keep asking while an origin answers 202: backoff, capped, bounded in total."""

    initial: float = 1.0
    multiplier: float = 1.3
    maximum: float = 5.0
    max_elapsed: float = 15 * 60.0

    def delay(self, attempt: int) -> float:
        """The wait after ``attempt`` (0-based) answers of 202."""
        return float(min(self.maximum, self.initial * self.multiplier**attempt))


def _upload_paths(kind: UploadKind, namespace: str, digest: Digest) -> str:
    if kind == "internal":
        return f"/internal/blobs/{digest}/uploads"
    if kind == "duplicate":
        return f"/internal/duplicate/namespace/{_ns(namespace)}/blobs/{digest}/uploads"
    return f"/namespace/{_ns(namespace)}/blobs/{digest}/uploads"


@frozen
class OriginClient:
    """
    Calls one origin, named by ``host:port`` on each call.

    ``http`` comes from the shared :class:`~kraken.http.client.HTTPClientFactory`;
    its retries cover transient errors of single requests.
    """

    http: KrakenHTTPClient
    clock: IReactorTime
    scheme: str = "http"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    poll: PollPolicy = PollPolicy()

    log: ClassVar[Logger] = Logger()

    def url(self, host: str, path: str) -> str:
        """The URL of ``path`` on the origin at ``host``."""
        return f"{self.scheme}://{host}{path}"

    def locations(self, host: str, digest: Digest) -> Deferred[list[str]]:
        """The ring's replicas of ``digest`` as ``host`` sees them, best first."""
        return Deferred.fromCoroutine(self._locations(host, digest))

    async def _locations(self, host: str, digest: Digest) -> list[str]:
        response = await self.http.get(
            self.url(host, f"/blobs/{digest}/locations"), timeout=SMALL_TIMEOUT
        )
        await read_body(response, MAX_SMALL_BODY)
        raw = response.headers.getRawHeaders("Origin-Locations") or []
        found = [a.strip() for h in raw for a in h.split(",") if a.strip()]
        for address in found:
            parse_host_port(address)
        return found

    def upload(
        self,
        host: str,
        namespace: str,
        digest: Digest,
        size: int,
        read_chunk: ReadChunk,
        *,
        kind: UploadKind = "public",
        delay: float = 0.0,
        progress: Callable[[int], object] | None = None,
    ) -> Deferred[bool]:
        """
        Upload a blob of ``size`` bytes in chunks; fire True, or False if it was already there.

        ``delay`` (seconds) is the write-back delay of a ``duplicate`` commit.
        ``progress(bytes_sent)`` is called after each chunk.
        """
        return Deferred.fromCoroutine(
            self._upload(host, namespace, digest, size, read_chunk, kind, delay, progress)
        )

    async def _upload(  # noqa: PLR0917 - private; mirrors upload()
        self,
        host: str,
        namespace: str,
        digest: Digest,
        size: int,
        read_chunk: ReadChunk,
        kind: UploadKind,
        delay: float,
        progress: Callable[[int], object] | None,
    ) -> bool:
        base = self.url(host, _upload_paths(kind, namespace, digest))
        response = await self.http.post(base, params={"size": str(size)}, ok=(200, 201, 202, 409))
        await read_body(response, MAX_SMALL_BODY)
        if response.code == 409:
            return False
        uid = (response.headers.getRawHeaders("Location") or [""])[0].rsplit("/", 1)[-1]
        if not uid:
            raise NetworkError(base, "the origin answered no upload id (Location)", "POST")
        url = f"{base}/{uid}"
        offset = 0
        while offset < size:
            length = min(self.chunk_size, size - offset)
            chunk = await read_chunk(offset, length)
            if len(chunk) != length:
                raise OSError(f"{digest}: read {len(chunk)} bytes at {offset}, expected {length}")
            response = await self.http.patch(
                url,
                data=chunk,
                headers={"Content-Range": f"{offset}-{offset + length}"},
                ok=(200, 202, 204, 409),
                timeout=max(SMALL_TIMEOUT, length / (1024 * 1024)),
            )
            await read_body(response, MAX_SMALL_BODY)
            if response.code == 409:
                return False
            offset += length
            if progress is not None:
                progress(offset)
        body = json.dumps({"delay_seconds": delay}).encode() if kind == "duplicate" else b""
        response = await self.http.put(
            url, data=body, ok=(200, 201, 204, 409), timeout=COMMIT_TIMEOUT
        )
        await read_body(response, MAX_SMALL_BODY)
        return bool(response.code != 409)

    def stat(
        self, host: str, namespace: str, digest: Digest, *, local: bool = False
    ) -> Deferred[int]:
        """The blob's size as ``host`` (or, unless ``local``, its backend) knows it."""
        return Deferred.fromCoroutine(self._stat(host, namespace, digest, local))

    async def _stat(self, host: str, namespace: str, digest: Digest, local: bool) -> int:
        path = f"/internal/namespace/{_ns(namespace)}/blobs/{digest}"
        response = await self.http.head(
            self.url(host, path),
            params={"local": "true"} if local else None,
            ok=(200, 404),
            timeout=SMALL_TIMEOUT,
        )
        await read_body(response, MAX_SMALL_BODY)
        if response.code == 404:
            raise BlobNotFoundAtOrigin(namespace, digest)
        raw = (response.headers.getRawHeaders("Content-Length") or ["0"])[0]
        return int(raw)

    def metainfo(self, host: str, namespace: str, digest: Digest) -> Deferred[MetaInfo | None]:
        """The blob's metainfo, or None while the origin fetches it (202)."""
        return Deferred.fromCoroutine(self._metainfo(host, namespace, digest))

    async def _metainfo(self, host: str, namespace: str, digest: Digest) -> MetaInfo | None:
        path = f"/internal/namespace/{_ns(namespace)}/blobs/{digest}/metainfo"
        response = await self.http.get(
            self.url(host, path), ok=(200, 202, 404), timeout=SMALL_TIMEOUT
        )
        body = await read_body(response, MAX_METAINFO_BYTES)
        if response.code == 404:
            raise BlobNotFoundAtOrigin(namespace, digest)
        if response.code == 202:
            return None
        return MetaInfo.from_json(body)

    def prefetch(self, host: str, namespace: str, digest: Digest) -> Deferred[int]:
        """Ask ``host`` to cache the blob; fire with 200 (cached) or 202 (being fetched)."""
        return Deferred.fromCoroutine(self._prefetch(host, namespace, digest))

    async def _prefetch(self, host: str, namespace: str, digest: Digest) -> int:
        path = f"/namespace/{_ns(namespace)}/blobs/{digest}/prefetch"
        response = await self.http.post(self.url(host, path), ok=(200, 202, 404))
        await read_body(response, MAX_SMALL_BODY)
        if response.code == 404:
            raise BlobNotFoundAtOrigin(namespace, digest)
        return int(response.code)

    def download(
        self, host: str, namespace: str, digest: Digest, collector: Callable[[bytes], object]
    ) -> Deferred[int]:
        """
        Stream the blob into ``collector``; fire with its length.

        Polls while the origin answers 202 (:class:`PollPolicy`); fails with
        :class:`BlobNotFoundAtOrigin` on 404 and with :class:`RequestError` otherwise.
        """
        return Deferred.fromCoroutine(self._download(host, namespace, digest, collector))

    async def _download(
        self, host: str, namespace: str, digest: Digest, collector: Callable[[bytes], object]
    ) -> int:
        url = self.url(host, f"/namespace/{_ns(namespace)}/blobs/{digest}")
        started = self.clock.seconds()
        attempt = 0
        while True:
            response = await self.http.get(url, ok=(200, 202, 404))
            if response.code == 200:
                return await collect_body(response, collector)
            await read_body(response, MAX_SMALL_BODY)
            if response.code == 404:
                raise BlobNotFoundAtOrigin(namespace, digest)
            wait = self.poll.delay(attempt)
            attempt += 1
            if self.clock.seconds() - started + wait > self.poll.max_elapsed:
                raise HTTPStatusError(202, b"still fetching from the backend", url)
            await deferLater(self.clock, wait)

    def delete(self, host: str, digest: Digest) -> Deferred[None]:
        """Delete the blob from ``host``'s cache (not from the backend)."""
        return Deferred.fromCoroutine(self._delete(host, digest))

    async def _delete(self, host: str, digest: Digest) -> None:
        response = await self.http.delete(self.url(host, f"/internal/blobs/{digest}"), ok=(202,))
        await read_body(response, MAX_SMALL_BODY)

    def peer_context(self, host: str) -> Deferred[PeerInfo]:
        """The peer ``host`` seeds as."""
        return Deferred.fromCoroutine(self._peer_context(host))

    async def _peer_context(self, host: str) -> PeerInfo:
        response = await self.http.get(self.url(host, "/internal/peercontext"))
        body = await read_body(response, MAX_SMALL_BODY)
        return PeerInfo.from_dict(parse_json(body, "peer context"))


def _moves_on(error: Exception) -> bool:
    """Whether an upload should try the next location after ``error``."""
    if isinstance(error, HTTPStatusError):
        return error.retryable
    return isinstance(error, NetworkError)


@define
class OriginClusterClient:
    """
    The origin ring as one service: ``hosts()`` lists origins to ask for locations.

    Pass ``Membership.usable`` (health-filtered) or a fixed list's ``lambda: hosts``, and
    with a membership its ``refresh`` as ``refresh``: a daemon answers its readiness probe
    before its membership's first health checks are done, and a request in that window
    waits for them instead of failing with "no origins".
    """

    client: OriginClient
    hosts: Callable[[], Collection[str]]
    rng: random.Random = field(factory=random.Random)
    refresh: Callable[[], Deferred[None]] | None = None

    log: ClassVar[Logger] = Logger()

    def locations(self, digest: Digest) -> Deferred[list[str]]:
        """The replicas of ``digest``, best first, from up to 3 random origins in turn."""
        return Deferred.fromCoroutine(self._locations(digest))

    async def _locations(self, digest: Digest) -> list[str]:
        hosts = list(self.hosts())
        if not hosts and self.refresh is not None:
            await self.refresh()
            hosts = list(self.hosts())
        self.rng.shuffle(hosts)
        errors: list[str] = []
        for host in hosts[:LOCATION_ATTEMPTS]:
            try:
                found = await self.client.locations(host, digest)
            except (RequestError, ValueError) as e:
                errors.append(f"{host}: {e}")
                continue
            if found:
                return found
            errors.append(f"{host}: no locations")
        raise NoOriginAvailable(
            f"no origin gave the locations of {digest}: " + ("; ".join(errors) or "no origins")
        )

    def upload_blob(
        self,
        namespace: str,
        digest: Digest,
        size: int,
        read_chunk: ReadChunk,
        *,
        progress: Callable[[int], object] | None = None,
    ) -> Deferred[bool]:
        """
        Upload to the first replica that takes it; True if stored, False if already there.

        Moves to the next replica only on network errors and retryable statuses
        (the chunks are read again from the start); any other error stops.
        """
        return Deferred.fromCoroutine(
            self._upload_blob(namespace, digest, size, read_chunk, progress)
        )

    async def _upload_blob(
        self,
        namespace: str,
        digest: Digest,
        size: int,
        read_chunk: ReadChunk,
        progress: Callable[[int], object] | None,
    ) -> bool:
        errors: list[str] = []
        for host in await self.locations(digest):
            try:
                return await self.client.upload(
                    host, namespace, digest, size, read_chunk, progress=progress
                )
            except Exception as e:
                if not _moves_on(e):
                    raise
                self.log.warn(
                    "upload of {digest} to {host} failed: {error}",
                    digest=digest,
                    host=host,
                    error=str(e),
                )
                errors.append(f"{host}: {e}")
        raise NoOriginAvailable(f"no origin took {digest}: " + "; ".join(errors))

    def download_blob(
        self, namespace: str, digest: Digest, collector: Callable[[bytes], object]
    ) -> Deferred[int]:
        """
        Stream the blob from the first replica that has it (polling its 202s).

        A 404 stops at once (:class:`BlobNotFoundAtOrigin`); a 5xx or network error
        before the body starts moves to the next replica.
        """
        return Deferred.fromCoroutine(self._download_blob(namespace, digest, collector))

    async def _download_blob(
        self, namespace: str, digest: Digest, collector: Callable[[bytes], object]
    ) -> int:
        errors: list[str] = []
        for host in await self.locations(digest):
            started = [False]

            def collect(data: bytes, started: list[bool] = started) -> object:
                started[0] = True
                return collector(data)

            try:
                return await self.client.download(host, namespace, digest, collect)
            except BlobNotFoundAtOrigin:
                raise
            except (HTTPStatusError, NetworkError) as e:
                if started[0] or (
                    isinstance(e, HTTPStatusError) and e.status < 500 and e.status != 202
                ):
                    raise
                errors.append(f"{host}: {e}")
        raise NoOriginAvailable(f"no origin served {digest}: " + "; ".join(errors))

    def stat(self, namespace: str, digest: Digest) -> Deferred[int]:
        """
        The blob's size from the first replica that has it, asking each in turn.

        A blob just uploaded is on the replica that took it before the others
        (duplicates) and the backend (write-back) have it, so a 404 from one replica
        moves on to the next.  The first replica that answers also looks in the
        backend; the others only in their caches.  Fails with
        :class:`BlobNotFoundAtOrigin` only when every replica said it lacks the blob,
        with :class:`StatInconclusive` when some said so and the others could not be
        asked, and with :class:`NoOriginAvailable` when none answered.
        """
        return Deferred.fromCoroutine(self._stat(namespace, digest))

    async def _stat(self, namespace: str, digest: Digest) -> int:
        hosts = list(await self.locations(digest))
        self.rng.shuffle(hosts)
        absent: list[str] = []
        errors: list[str] = []
        for host in hosts:
            try:
                return await self.client.stat(host, namespace, digest, local=bool(absent))
            except BlobNotFoundAtOrigin:
                absent.append(host)
            except RequestError as e:
                errors.append(f"{host}: {e}")
        if not errors:
            raise BlobNotFoundAtOrigin(namespace, digest)
        problems = "; ".join(errors)
        if absent:
            raise StatInconclusive(
                f"{digest} is not at {', '.join(absent)}, and the other replicas could not "
                f"be asked: {problems}"
            )
        raise NoOriginAvailable(f"no origin answered a stat of {digest}: {problems}")
