"""
The agent's server API (DESIGN 8, reference 1.2), on port 16002 by default.

Routes:

- ``GET|HEAD /namespace/{ns}/blobs/{digest}`` (bare hex or ``sha256:``):
  blocks until the blob is in the cache (downloading it over P2P), then
  streams it, with ``Range`` support; 404 when the cluster does not have it,
  500 with a message on any other failure, 400 for a bad digest;
- ``GET /blobs/{digest}/status``: how far its download is (JSON: state, pieces and bytes
  done and total, seconds, bytes per second, connected peers and origins); ``cached`` when
  it is in the cache, 404 when neither;
- ``DELETE /blobs/{digest}``: stop seeding and remove it (404 absent, 409
  while it is being served);
- ``GET /tags/{repo:tag}``: the build-index's digest string (400 for a tag outside
  the distribution grammar, checked here and by the build-index; 404 unknown, 503
  when no build-index answers, 502 when it answers an error of its own);
- ``POST /preload/tags/{repo:tag}``: resolve the tag, then download the
  manifest and everything it references (child manifests of an index or
  list, config and layers) in the background; 202;
- ``GET /health``, ``GET /readiness`` (the agent's own state, 503 with the reasons),
  ``GET /dependencies`` (whether the build-index and the tracker answer, JSON),
  ``GET /metrics``.

Errors are plain text (status + message), as the Go agent server answers.
Path parameters arrive percent-encoded (``test%2Falpine:latest``); the
router decodes them once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

from attrs import define, field
from klein import Klein
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from kraken.api.distribution import manifest_references
from kraken.api.serving import serve_blob
from kraken.buildindex.tags import InvalidTag, parse_tag
from kraken.clients.buildindex import (
    BuildIndexClient,
    BuildIndexUnavailable,
    InvalidBuildIndexResponse,
    TagNotFound,
    TagRejected,
)
from kraken.core import Digest
from kraken.core.names import InvalidNamespace, check_namespace
from kraken.http.client import HTTPStatusError
from kraken.http.dependencies import Dependencies
from kraken.http.errors import CORE_ERRORS, APIError, install_error_handler
from kraken.protocols.downloader import BlobUnknown, DownloadError, IBlobDownloader
from kraken.protocols.progress import DownloadProgress
from kraken.store import BlobInUse, BlobNotFound, BlobStore

__all__ = [
    "AGENT_ERRORS",
    "MAX_MANIFEST_SIZE",
    "AgentAPI",
    "AgentMetrics",
    "ManifestTooLarge",
    "read_manifest",
]

#: Largest manifest the agent reads into memory (the spec suggests registries accept 4 MiB).
MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
#: Buckets of ``kraken_agent_download_seconds``: a layer takes from a fraction of a second
#: to minutes.
DOWNLOAD_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

BlockingRunner = Callable[..., Deferred[Any]]
ReadinessCheck = tuple[str, Callable[[], Deferred[Any]]]


class ManifestTooLarge(ValueError):
    """A blob read as a manifest is larger than :data:`MAX_MANIFEST_SIZE`."""


def read_manifest(store: BlobStore, digest: Digest, limit: int = MAX_MANIFEST_SIZE) -> bytes:
    """The whole cached blob ``digest``, at most ``limit`` bytes (blocking)."""
    with store.open_reader(digest) as reader:
        if reader.size > limit:
            raise ManifestTooLarge(f"{digest} has {reader.size} bytes, over {limit}")
        return reader.pread(reader.size, 0)


AGENT_ERRORS: Final = CORE_ERRORS.extended(
    {
        BlobUnknown: 404,
        BlobNotFound: 404,
        DownloadError: 500,
        TagNotFound: 404,
        InvalidTag: 400,
        TagRejected: 400,
        BuildIndexUnavailable: 503,
        InvalidBuildIndexResponse: 502,
        HTTPStatusError: 502,
        BlobInUse: 409,
        InvalidNamespace: 400,
        ManifestTooLarge: 500,
    },
    daemon="agent",
)


@define
class AgentMetrics:
    """The agent's Prometheus metrics (shared by its two HTTP surfaces), in their own registry."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    downloads: Counter = field(init=False)
    blob_requests: Counter = field(init=False)
    bytes_served: Counter = field(init=False)
    preloads: Counter = field(init=False)
    download_seconds: Histogram = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.downloads = Counter(
            "kraken_agent_downloads",
            "Blob lookups by outcome: cached, downloaded, unknown, failed",
            ["result"],
            registry=r,
        )
        self.blob_requests = Counter(
            "kraken_agent_blob_requests", "Blob GET/HEAD requests by port", ["api"], registry=r
        )
        self.bytes_served = Counter(
            "kraken_agent_bytes_served", "Blob bytes sent to clients", ["api"], registry=r
        )
        self.preloads = Counter(
            "kraken_agent_preloads", "Image preloads by outcome", ["result"], registry=r
        )
        self.download_seconds = Histogram(
            "kraken_agent_download_seconds",
            "P2P downloads that finished, from metainfo to cached",
            buckets=DOWNLOAD_BUCKETS,
            registry=r,
        )


@define
class AgentAPI:
    """The agent server's Klein application; mount :meth:`resource`."""

    app: ClassVar[Klein] = Klein()
    install_error_handler(app, AGENT_ERRORS)
    log: ClassVar[Logger] = Logger()

    store: BlobStore
    downloader: IBlobDownloader
    tags: BuildIndexClient
    run_blocking: BlockingRunner
    readiness_checks: Sequence[ReadinessCheck] = ()
    dependencies: Dependencies | None = None
    #: The progress of a running download (the downloader's), None when none runs.
    progress: Callable[[Digest], DownloadProgress | None] = lambda digest: None
    metrics: AgentMetrics = field(factory=AgentMetrics)
    use_sendfile: bool = True
    #: Preloads running in the background (tests wait for them).
    preloads: set[Deferred[None]] = field(factory=set)

    def resource(self) -> IResource:
        """The ``twisted.web`` resource serving this API."""
        return self.app.resource()

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """The process (and so its reactor) answers."""
        return b"OK"

    @app.route("/dependencies", methods=["GET"])
    async def dependency_states(self, request: IRequest) -> bytes:
        """Whether the build-index and the tracker answer, as JSON (not part of readiness)."""
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        if self.dependencies is None:
            return b'{"dependencies": {}}\n'
        return await self.dependencies.render()

    @app.route("/readiness", methods=["GET"])
    async def readiness(self, request: IRequest) -> bytes:
        """200 when every check of the agent's own state passes, else 503 with the reasons.

        The build-index and the tracker are not among them (see ``/dependencies``): an agent
        whose tracker is down still serves what it has cached.
        """
        names = [name for name, _ in self.readiness_checks]
        results = await DeferredList(
            [check() for _, check in self.readiness_checks], consumeErrors=True
        )
        problems = [
            f"{name}: {result.getErrorMessage()}"
            for name, (ok, result) in zip(names, results, strict=True)
            if not ok
        ]
        if problems:
            raise APIError(503, "\n".join(problems))
        return b"OK"

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        """Prometheus text exposition of :class:`AgentMetrics`."""
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))  # type: ignore[no-untyped-call]
        return generate_latest(self.metrics.registry)

    @app.route("/namespace/<path:namespace>/blobs/<digest>", methods=["GET", "HEAD"])
    async def download_blob(self, request: IRequest, namespace: str, digest: str) -> bytes:
        """Block until the blob is cached, then stream it (Range and HEAD supported)."""
        d = Digest.parse_lenient(digest)
        ns = check_namespace(namespace)
        self.metrics.blob_requests.labels("agent").inc()
        await self.serve(request, ns, d, api="agent")
        return b""

    async def serve(
        self,
        request: IRequest,
        namespace: str,
        digest: Digest,
        *,
        api: str,
        content_type: bytes = b"application/octet-stream",
        headers: dict[bytes, bytes] | None = None,
    ) -> int:
        """Download ``digest`` if needed and serve it (shared with the registry API)."""
        for attempt in (1, 2):
            await self.downloader.download(namespace, digest)
            try:
                sent = await serve_blob(
                    request,
                    self.store,
                    digest,
                    self.run_blocking,
                    content_type=content_type,
                    headers=headers,
                    use_sendfile=self.use_sendfile,
                )
            except BlobNotFound:
                if attempt == 2:
                    raise
                # Evicted between the download and the read: fetch it again.
                continue
            self.metrics.bytes_served.labels(api).inc(sent)
            return sent
        raise AssertionError("unreachable")

    @app.route("/blobs/<digest>/status", methods=["GET"])
    async def blob_status(self, request: IRequest, digest: str) -> bytes:
        """How far the download of ``digest`` is (JSON); ``cached`` when in the cache; else 404."""
        d = Digest.parse_lenient(digest)
        progress = self.progress(d)
        if progress is None:
            info = await self.run_blocking(self.store.stat, d)  # BlobNotFound: 404
            progress = DownloadProgress(d, "cached", bytes_done=info.size, bytes_total=info.size)
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
        return json.dumps(progress.to_json()).encode() + b"\n"

    @app.route("/blobs/<digest>", methods=["DELETE"])
    async def delete_blob(self, request: IRequest, digest: str) -> bytes:
        """Stop seeding the blob and delete it from disk."""
        d = Digest.parse_lenient(digest)
        await self.downloader.delete(d)
        return b""

    @app.route("/tags/<path:tag>", methods=["GET"])
    async def get_tag(self, request: IRequest, tag: str) -> bytes:
        """The digest the build-index holds for ``repo:tag``."""
        digest = await self.tags.get_tag(str(parse_tag(tag)))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        return str(digest).encode("ascii")

    @app.route("/preload/tags/<path:tag>", methods=["POST"])
    async def preload(self, request: IRequest, tag: str) -> bytes:
        """Resolve ``repo:tag`` now; download the manifest and its blobs in the background."""
        ref = parse_tag(tag)
        full = str(ref)
        digest = await self.tags.get_tag(full)
        d = Deferred.fromCoroutine(self._preload(ref.repo, digest))
        self.preloads.add(d)

        def finished(result: object) -> None:
            self.preloads.discard(d)
            if isinstance(result, Failure):
                self.metrics.preloads.labels("failed").inc()
                self.log.warn(
                    "preload of {tag} failed: {error}", tag=full, error=result.getErrorMessage()
                )
            else:
                self.metrics.preloads.labels("ok").inc()

        d.addBoth(finished)
        request.setResponseCode(202)  # type: ignore[no-untyped-call]
        return f"preloading {full} ({digest})".encode()

    async def _preload(self, repo: str, digest: Digest) -> None:
        await self.downloader.download(repo, digest)
        data = await self.run_blocking(read_manifest, self.store, digest)
        refs = manifest_references(data)
        for child in refs.manifests:
            await self._preload(repo, child)
        await gatherResults(
            [self.downloader.download(repo, blob) for blob in refs.blobs], consumeErrors=True
        )
