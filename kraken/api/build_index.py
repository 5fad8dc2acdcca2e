"""
The build-index's HTTP API (DESIGN 9, reference 3.1), on port 15004 by default.

Routes (tags are ``repo:tag``, percent-encoded once in the path, e.g.
``library%2Falpine:3.19``; the router decodes them once and a ``%`` left after
that is refused like any character outside the distribution grammar):

- ``PUT /tags/{tag}/digest/{d}[?replicate=true]``: resolve the manifest's
  dependencies on the origin ring (namespace = repository) and check that each
  is there (404 when the manifest is missing, 400 when it is not a manifest or a
  referenced blob or child manifest is missing, 503 when the origin cannot be
  asked); store the tag in the backend (write-through: 503 if that fails); tell
  the other members of the cluster at once, best effort (a PUT with the
  :data:`~kraken.clients.buildindex.DUPLICATE_HEADER`, which the
  receiver stores without checks, forwarding or replication, unless it knows a
  newer write); with ``replicate=true`` queue one durable replication task per
  matching remote before answering 200.  A PUT carrying the duplicate header is
  honoured only from a cluster member: over TLS a client certificate verified
  against the cluster CA, over plain HTTP a client address in
  ``duplicate_networks`` (loopback by default); anyone else gets 403.  Its write
  time must be a finite number no later than ``max_clock_skew`` seconds from now
  (400 otherwise), so that no duplicate can pin a tag against later writes;
- ``GET /tags/{tag}``: the digest string; ``HEAD`` the same without the body;
  404 unknown, 503 backend error (both methods: quirk 5 fixed);
- ``DELETE /tags/{tag}[?replicate=true]``: remove the tag from the backend (404
  unknown), tell the other members (a DELETE with the duplicate header, honoured
  from members only, ignored when the member knows a later write), and with
  ``replicate=true`` queue its deletion at every matching remote under the same
  task key as a put, so the last of the two wins there too.  The proxy sends it for
  registry deletes; blobs stay until the garbage collector proves them unreferenced;
- ``GET /list/{prefix}`` and ``GET /repositories/{repo}/tags``: one page of
  ``{"Links": {"next", "self"}, "size", "result"}``, ``result`` holding
  ``repo:tag`` names (resp. bare tags), with ``limit`` (1..1000, default 1000)
  and ``offset`` (the opaque continuation from ``next``); other parameters are 400;
- ``POST /remotes/tags/{tag}``: queue replication of the stored tag to every
  matching remote (404 unknown);
- ``GET /origin``: the origin cluster's address(es), comma-separated;
- ``GET /health``, ``GET /readiness`` (queue and backends, 503 otherwise), ``GET
  /dependencies`` (whether an origin answers, JSON), ``GET /metrics``.

Errors are plain text, as the Go build-index answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any, ClassVar, Final
from urllib.parse import quote, urlencode

from attrs import define, field
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request

from kraken.backends import InvalidName, NamespaceNotFound
from kraken.buildindex.dependencies import (
    DependencyResolver,
    InvalidManifest,
    ManifestNotFound,
    MissingDependencies,
    OriginUnavailable,
    UnknownTagType,
)
from kraken.buildindex.replication import (
    REPLICATE_TAG_KIND,
    RemoteRules,
    deletion_payload,
    replication_key,
    replication_payload,
)
from kraken.buildindex.tags import (
    InvalidTag,
    TagRef,
    TagStore,
    TagStoreUnavailable,
    UnknownTag,
    parse_tag,
)
from kraken.clients.buildindex import DUPLICATE_HEADER, BuildIndexClient
from kraken.core import Digest
from kraken.core.address import LOOPBACK_NETWORKS, IPNetwork, in_networks, parse_ip, parse_networks
from kraken.http.dependencies import Dependencies
from kraken.http.errors import CORE_ERRORS, APIError, install_error_handler, render_text
from kraken.http.request_body import json_response
from kraken.persistedretry import QueueStopped, RetryQueue
from kraken.tls import ClientCertificate, client_certificate_status

__all__ = [
    "BUILD_INDEX_ERRORS",
    "DEFAULT_MAX_CLOCK_SKEW",
    "DEFAULT_PAGE_SIZE",
    "BuildIndexAPI",
    "BuildIndexMetrics",
]

#: Names per listing page when the request gives no ``limit``.
DEFAULT_PAGE_SIZE: Final = 1000
MAX_PAGE_SIZE: Final = 1000
#: Seconds a duplicate's write time may be ahead of this build-index's clock.
DEFAULT_MAX_CLOCK_SKEW: Final = 60.0

BUILD_INDEX_ERRORS: Final = CORE_ERRORS.extended(
    {
        InvalidTag: 400,
        InvalidName: 400,
        NamespaceNotFound: 400,
        UnknownTagType: 400,
        InvalidManifest: 400,
        MissingDependencies: 400,
        UnknownTag: 404,
        ManifestNotFound: 404,
        TagStoreUnavailable: 503,
        OriginUnavailable: 503,
        QueueStopped: 503,
    },
    daemon="build-index",
)
"""How the build-index answers each domain error."""


@define
class BuildIndexMetrics:
    """The build-index's Prometheus metrics, in a registry of their own."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    puts: Counter = field(init=False)
    lookups: Counter = field(init=False)
    duplicates: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.puts = Counter(
            "kraken_build_index_tag_puts",
            "Tag PUTs by kind and outcome",
            ["kind", "result"],
            registry=r,
        )
        self.lookups = Counter(
            "kraken_build_index_tag_lookups", "Tag GET/HEAD by outcome", ["result"], registry=r
        )
        self.duplicates = Counter(
            "kraken_build_index_duplicates_sent",
            "Tag copies sent to the other members, by outcome",
            ["result"],
            registry=r,
        )


def _query(request: Request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    return str(values[-1].decode("utf-8", "replace"))


def _page_params(request: Request) -> tuple[int, str | None]:
    args: dict[bytes, list[bytes]] = request.args
    unknown = sorted(k.decode("latin-1") for k in args if k not in (b"limit", b"offset"))
    if unknown:
        raise APIError(400, f"unknown query parameters: {', '.join(unknown)}")
    raw_limit = _query(request, "limit")
    limit = DEFAULT_PAGE_SIZE
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
            raise APIError(400, f"invalid limit {raw_limit[:40]!r}: expected 1..{MAX_PAGE_SIZE}")
        limit = int(raw_limit)
    offset = _query(request, "offset")
    return limit, offset or None


def _replicate_flag(request: Request) -> bool:
    raw = _query(request, "replicate")
    if raw is None or raw.lower() in ("", "false", "0"):
        return False
    if raw.lower() in ("true", "1"):
        return True
    raise APIError(400, f"invalid replicate {raw[:40]!r}: expected true or false")


@define
class BuildIndexAPI:
    """
    The build-index's Klein application; mount :meth:`resource`.

    ``neighbours()`` lists the other members of this cluster (this host excluded);
    ``peers`` sends them duplicates.  ``ready()`` checks the build-index's own state (its
    backends); ``dependencies`` (the origin) are served at ``/dependencies``, not in readiness.
    ``duplicate_networks``: client addresses whose duplicates are honoured over plain
    HTTP (over TLS only a verified client certificate counts).
    """

    app: ClassVar[Klein] = Klein()
    app.url_map.merge_slashes = False
    install_error_handler(app, BUILD_INDEX_ERRORS, render_text)
    log: ClassVar[Logger] = Logger()

    tags: TagStore
    resolver: DependencyResolver
    remotes: RemoteRules
    queue: RetryQueue
    peers: BuildIndexClient
    neighbours: Callable[[], Collection[str]]
    origin_address: str
    clock: IReactorTime
    ready: Callable[[], Deferred[None]]
    metrics: BuildIndexMetrics = field(factory=BuildIndexMetrics)
    dependencies: Dependencies | None = None
    duplicate_networks: tuple[IPNetwork, ...] = field(
        factory=lambda: parse_networks(LOOPBACK_NETWORKS)
    )
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW
    #: Duplicates still being sent (tests wait for them).
    background: set[Deferred[None]] = field(factory=set, init=False)

    def resource(self) -> IResource:
        """The ``twisted.web`` resource serving this API."""
        return self.app.resource()

    # -- health ------------------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    def health(self, request: Request) -> bytes:
        """The process is up."""
        return b"OK\n"

    @app.route("/readiness", methods=["GET"])
    async def readiness(self, request: Request) -> bytes:
        """
        Ready when the replication queue runs and is loaded and the backends answer (the
        origin is a dependency: ``/dependencies``).  A stopped queue is a 503 at once; a
        client that left gets no answer (and no error is logged).
        """
        if not self.queue.running:
            raise APIError(503, "not ready: replication queue stopped")
        try:
            await self.queue.when_ready()
            await self.ready()
        except CancelledError:
            raise  # the client left: Klein drops the request quietly
        except Exception as e:
            raise APIError(503, f"not ready: {str(e) or type(e).__name__}") from e
        return b"OK\n"

    @app.route("/dependencies", methods=["GET"])
    async def dependency_states(self, request: Request) -> bytes:
        """Whether an origin answers, as JSON (not part of readiness)."""
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        if self.dependencies is None:
            return b'{"dependencies": {}}\n'
        return await self.dependencies.render()

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: Request) -> bytes:
        """Prometheus text exposition."""
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))  # type: ignore[no-untyped-call]
        return generate_latest(self.metrics.registry)

    @app.route("/origin", methods=["GET"])
    def origin(self, request: Request) -> bytes:
        """The origin cluster's address(es)."""
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        return self.origin_address.encode("ascii")

    # -- tags --------------------------------------------------------------------------

    @app.route("/tags/<path:tag>/digest/<digest>", methods=["PUT"])
    async def put_tag(self, request: Request, tag: str, digest: str) -> bytes:
        """Check the dependencies, store the tag, tell the members, maybe queue replication."""
        ref = parse_tag(tag)
        d = Digest.parse(digest)
        duplicate = request.getHeader(DUPLICATE_HEADER.encode("ascii"))
        if duplicate is not None:
            self._check_member(request)
            return await self._put_duplicate(ref, d, duplicate)
        replicate = _replicate_flag(request)
        try:
            await self.resolver.resolve_and_check(ref.repo, d)
            written_at = self.clock.seconds()
            await self.tags.put(ref, d)
        except Exception:
            self.metrics.puts.labels("client", "error").inc()
            raise
        self.metrics.puts.labels("client", "stored").inc()
        self.log.info("tag {tag} = {digest}", tag=ref, digest=d)
        self._duplicate(ref, d, written_at)
        if replicate:
            await self._queue_replication(ref, d)
        return b""

    def _check_member(self, request: Request) -> None:
        """403 unless ``request`` comes from a member of this cluster (see the module doc)."""
        status = client_certificate_status(request)
        if status is ClientCertificate.VERIFIED:
            return
        client = request.getClientAddress()  # type: ignore[no-untyped-call]
        if status is ClientCertificate.NO_TLS:
            host = getattr(client, "host", None)
            try:
                if isinstance(host, str) and in_networks(parse_ip(host), self.duplicate_networks):
                    return
            except ValueError:
                pass
            presented = f"plain HTTP from {host}, outside duplicates.trusted_networks"
        else:
            presented = status.value
        self.metrics.puts.labels("duplicate", "refused").inc()
        self.log.warn(
            "refused a tag duplicate from {client}: {presented}",
            client=client,
            presented=presented,
        )
        raise APIError(
            403,
            f"{DUPLICATE_HEADER} is honoured only from build-indexes of this cluster (over "
            "TLS: a client certificate signed by the cluster CA; over plain HTTP: a client in "
            f"duplicates.trusted_networks); this request came with {presented}",
        )

    def _duplicate_time(self, header: bytes) -> float:
        """The write time a duplicate carries: finite, at most ``max_clock_skew`` ahead."""
        try:
            written_at = float(header.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise APIError(400, f"invalid {DUPLICATE_HEADER} {header[:40]!r}") from None
        if not math.isfinite(written_at):
            raise APIError(400, f"invalid {DUPLICATE_HEADER} {header[:40]!r}: not a finite time")
        ahead = written_at - self.clock.seconds()
        if ahead > self.max_clock_skew:
            raise APIError(
                400,
                f"invalid {DUPLICATE_HEADER} {header[:40]!r}: {ahead:.0f}s in the future "
                f"(at most {self.max_clock_skew:g}s of clock skew is allowed)",
            )
        return written_at

    async def _put_duplicate(self, ref: TagRef, d: Digest, header: bytes) -> bytes:
        written_at = self._duplicate_time(header)
        stored = await self.tags.put(ref, d, written_at=written_at)
        self.metrics.puts.labels("duplicate", "stored" if stored else "older").inc()
        return b""

    def _duplicate(self, ref: TagRef, d: Digest, written_at: float) -> None:
        self._tell_members(
            ref, lambda host: self.peers.duplicate_tag(host, str(ref), d, written_at)
        )

    def _tell_members(self, ref: TagRef, send: Callable[[str], Deferred[None]]) -> None:
        """Send each other member its duplicate (best effort, in the background)."""
        for host in sorted(self.neighbours()):
            sent = send(host)

            def done(result: object, host: str = host) -> None:
                if isinstance(result, Failure):
                    self.metrics.duplicates.labels("error").inc()
                    self.log.warn(
                        "could not tell {host} about {tag}: {error}",
                        host=host,
                        tag=ref,
                        error=result.getErrorMessage(),
                    )
                else:
                    self.metrics.duplicates.labels("sent").inc()

            tracked: Deferred[None] = sent.addBoth(done)
            self.background.add(tracked)
            tracked.addBoth(self._forget, tracked)

    def _forget(self, result: object, d: Deferred[None]) -> None:
        self.background.discard(d)

    async def _queue_replication(self, ref: TagRef, d: Digest) -> list[str]:
        remotes = self.remotes.remotes_for(ref)
        for remote in remotes:
            await self.queue.add(
                REPLICATE_TAG_KIND,
                replication_key(remote, ref),
                replication_payload(remote, ref, d),
            )
        return remotes

    async def _lookup(self, tag: str) -> Digest:
        ref = parse_tag(tag)
        try:
            found = await self.tags.get(ref)
        except UnknownTag:
            self.metrics.lookups.labels("not_found").inc()
            raise
        except Exception:
            self.metrics.lookups.labels("error").inc()
            raise
        self.metrics.lookups.labels("found").inc()
        return found

    @app.route("/tags/<path:tag>", methods=["GET", "HEAD"])
    async def get_tag(self, request: Request, tag: str) -> bytes:
        """The digest string of the tag (``HEAD``: the same status, no body)."""
        found = str(await self._lookup(tag)).encode("ascii")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        return found

    @app.route("/tags/<path:tag>", methods=["DELETE"])
    async def delete_tag(self, request: Request, tag: str) -> bytes:
        """Remove the tag, tell the members, maybe queue its deletion at the remotes."""
        ref = parse_tag(tag)
        duplicate = request.getHeader(DUPLICATE_HEADER.encode("ascii"))
        if duplicate is not None:
            self._check_member(request)
            deleted_at = self._duplicate_time(duplicate)
            stored = await self.tags.delete(ref, deleted_at=deleted_at)
            self.metrics.puts.labels("duplicate-delete", "stored" if stored else "older").inc()
            return b""
        replicate = _replicate_flag(request)
        deleted_at = self.clock.seconds()
        try:
            await self.tags.delete(ref)
        except Exception:
            self.metrics.puts.labels("delete", "error").inc()
            raise
        self.metrics.puts.labels("delete", "stored").inc()
        self.log.info("tag {tag} deleted", tag=ref)
        self._tell_members(
            ref, lambda host: self.peers.duplicate_delete(host, str(ref), deleted_at)
        )
        if replicate:
            for remote in self.remotes.remotes_for(ref):
                await self.queue.add(
                    REPLICATE_TAG_KIND,
                    replication_key(remote, ref),
                    deletion_payload(remote, ref),
                )
        return b""

    @app.route("/remotes/tags/<path:tag>", methods=["POST"])
    async def replicate(self, request: Request, tag: str) -> bytes:
        """Queue replication of the stored tag to every matching remote."""
        ref = parse_tag(tag)
        d = await self.tags.get(ref)
        remotes = await self._queue_replication(ref, d)
        return json_response(request, {"tag": str(ref), "digest": str(d), "remotes": remotes})

    # -- listings ----------------------------------------------------------------------

    async def _page(self, request: Request, prefix: str, strip: str = "") -> bytes:
        limit, offset = _page_params(request)
        names, next_offset = await self.tags.list(prefix, limit, offset)
        result = [n[len(strip) :] for n in names]
        path = request.path.decode("latin-1")
        params: dict[str, str] = {"limit": str(limit)}
        if offset is not None:
            params["offset"] = offset
        links: dict[str, str] = {"self": f"{path}?{urlencode(params)}"}
        if next_offset is not None:
            links["next"] = f"{path}?{urlencode({'limit': str(limit), 'offset': next_offset})}"
        body: dict[str, Any] = {"Links": links, "size": len(result), "result": result}
        return json_response(request, body)

    @app.route("/list/", methods=["GET"])
    async def list_all(self, request: Request) -> bytes:
        """One page of every tag."""
        return await self._page(request, "")

    @app.route("/list/<path:prefix>", methods=["GET"])
    async def list_prefix(self, request: Request, prefix: str) -> bytes:
        """One page of the tags whose ``repo:tag`` starts with ``prefix``."""
        return await self._page(request, prefix)

    @app.route("/repositories/<path:repo>/tags", methods=["GET"])
    async def repository_tags(self, request: Request, repo: str) -> bytes:
        """One page of the bare tags of ``repo``."""
        ref = parse_tag(f"{repo}:latest")  # validates the repository
        return await self._page(request, f"{ref.repo}:", strip=f"{ref.repo}:")


def quote_path_tag(tag: str) -> str:
    """``tag`` encoded for this API's paths (for callers without the client)."""
    return quote(tag, safe="")
