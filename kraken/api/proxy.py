"""
The proxy's read-write Docker registry v2 (DESIGN 9, reference 4), on port 15000 by default.

Push (``docker push``, ``skopeo copy``) and pull without P2P:

- ``GET /v2/``: ``{}``;
- ``HEAD|GET /v2/<name>/blobs/<digest>``: HEAD asks the origin ring (namespace =
  ``<name>``), so a blob the proxy holds but never got into the ring is pushed
  again; GET serves the proxy's cache, filling it from the ring on a miss
  (``Range`` supported);
- uploads: ``POST .../blobs/uploads/`` (``?digest=`` with the body: monolithic;
  ``?mount=&from=``: 201 when the ring has the blob, else an ordinary upload),
  ``PATCH .../uploads/<uuid>`` (optional ``Content-Range: start-end``, end
  inclusive, which must start where the upload ends: 416 otherwise), ``PUT
  ...?digest=`` (the last chunk may ride along), ``GET`` (status: 204 with
  ``Range``) and ``DELETE`` (cancel).  Chunks are staged in the proxy's own
  :class:`~kraken.store.BlobStore`, written there off the reactor thread; the
  ``PUT`` verifies the sha256 (400 ``DIGEST_INVALID``, the upload discarded)
  and answers 201 only once the origin ring has committed the blob;
- ``PUT|GET|HEAD /v2/<name>/manifests/<tag|digest>`` for Docker schema 2,
  manifest list, OCI manifest and OCI index.  A pushed manifest (at most
  4 MiB: 413 ``MANIFEST_INVALID`` beyond) must be JSON of one of those types
  whose every referenced blob and child manifest the ring has
  (``MANIFEST_BLOB_UNKNOWN`` naming the first missing one); it is stored as a
  blob at the origin under namespace = ``<name>``, then a tag goes to the
  build-index with ``replicate=true``.  Nothing is stored before every check
  passed;
- ``GET /v2/<name>/tags/list`` and ``GET /v2/_catalog`` from the build-index,
  sorted, with ``n``/``last`` pagination and ``Link: <...>; rel="next"``;
- ``POST /proxy/v1/registry/prefetch`` (answer, then warm the origins in the
  background) and ``POST /proxy/v2/registry/prefetch`` (answer once warmed),
  body ``{"tag": "[host/]repo:tag"}`` (or ``repo@sha256:...``);
- ``GET /health``; ``GET /readiness``: 200 when every readiness check passes (the
  daemon gives two: a healthy origin in the ring, a build-index answering its own
  ``/readiness``), else 503 with the reasons; ``GET /metrics``: Prometheus text of
  :class:`ProxyMetrics` (and the TLS expiry gauge when the daemon serves TLS).

Errors are the v2 error JSON with the spec's codes.  Upload sessions live in
memory (the store drops uploads on restart anyway) and expire after
:data:`UPLOAD_TIMEOUT` idle seconds (:meth:`ProxyAPI.expire_uploads`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, Final, Protocol, TypeVar
from urllib.parse import urlencode

from attrs import define, field
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredLock,
    FirstError,
    gatherResults,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from kraken.api.agent import MAX_MANIFEST_SIZE, ManifestTooLarge, read_manifest
from kraken.api.distribution import (
    API_VERSION_HEADER,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    MANIFEST_MEDIA_TYPES,
    OCI_IMAGE_INDEX,
    OCI_IMAGE_MANIFEST,
    check_repository_name,
    is_tag,
    manifest_media_type,
    manifest_references,
    parse_manifest,
    parse_reference,
    parse_v2_path,
    stored_reference,
)
from kraken.api.referrers import (
    FILTERS_APPLIED_HEADER,
    SUBJECT_HEADER,
    add_referrer,
    filter_referrers,
    referrer_descriptor,
    referrers_tag,
    remove_referrer,
    subject_of,
)
from kraken.api.serving import serve_blob
from kraken.clients.buildindex import (
    BuildIndexUnavailable,
    InvalidBuildIndexResponse,
    TagNotFound,
    TagRejected,
)
from kraken.clients.origin import (
    BlobNotFoundAtOrigin,
    NoOriginAvailable,
    OriginClusterClient,
    StatInconclusive,
)
from kraken.core import Digest, DigestMismatch, InvalidDigest
from kraken.http.client import HTTPStatusError, RequestError
from kraken.http.dependencies import Dependencies
from kraken.http.errors import (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    CORE_ERRORS,
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    NAME_INVALID,
    NAME_UNKNOWN,
    RANGE_INVALID,
    SIZE_INVALID,
    TOOMANYREQUESTS,
    UNAVAILABLE,
    UNKNOWN,
    UNSUPPORTED,
    APIError,
    ErrorCode,
    RegistryError,
    install_error_handler,
    render_registry_json,
)
from kraken.http.request_body import (
    DEFAULT_MAX_BODY,
    PayloadTooLarge,
    read_json,
    read_request_body,
)
from kraken.http.server import (
    BodyPlan,
    BodySink,
    KleinRoutes,
    RequestHead,
    StreamingSink,
    body_sink,
)
from kraken.io.runner import BlockingRunner
from kraken.io.singleflight import SingleFlight
from kraken.store import BlobExists, BlobNotFound, BlobReader, BlobStore, UploadNotFound

__all__ = [
    "MAX_PAGE",
    "PAGINATION_NUMBER_INVALID",
    "PROXY_ERRORS",
    "UPLOAD_TIMEOUT",
    "ProxyAPI",
    "ProxyMetrics",
    "ReadinessCheck",
    "TagIndex",
    "UploadSession",
    "page_args",
    "paginate",
    "parse_image_reference",
    "tag_repository",
]

#: Seconds an upload may sit without a request before :meth:`ProxyAPI.expire_uploads` drops it.
UPLOAD_TIMEOUT: Final = 3600.0
#: Largest ``n`` honoured by ``tags/list`` and ``_catalog`` (larger values are clamped).
MAX_PAGE: Final = 10_000
#: Upload sessions open at once; a new one beyond gets 429.
DEFAULT_MAX_UPLOADS: Final = 256
#: Largest blob body one request may stream into an upload.
DEFAULT_MAX_BLOB: Final = 64 * 1024**3
#: The ``Retry-After`` of a 429 for too many open uploads, seconds.
UPLOAD_RETRY_AFTER: Final = 5

_T = TypeVar("_T")

PAGINATION_NUMBER_INVALID: Final = ErrorCode(
    "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"
)
"""Docker distribution's code for a bad ``n``."""

#: The manifest kinds the proxy accepts (schema 1 is refused: nothing downstream resolves it).
PUSHABLE_TYPES: Final = frozenset(
    {DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST, OCI_IMAGE_MANIFEST, OCI_IMAGE_INDEX}
)

_ALL_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

PROXY_ERRORS: Final = CORE_ERRORS.extended(
    {
        BuildIndexUnavailable: UNAVAILABLE,
        NoOriginAvailable: UNAVAILABLE,
        InvalidBuildIndexResponse: UNKNOWN,
        HTTPStatusError: UNKNOWN,
        RequestError: UNAVAILABLE,
        UploadNotFound: BLOB_UPLOAD_UNKNOWN,
        ManifestTooLarge: MANIFEST_INVALID,
        TagRejected: NAME_INVALID,
    },
    daemon="proxy",
)


class TagIndex(Protocol):
    """What the proxy needs of the build-index (tags are ``repo:tag``).

    :class:`~kraken.clients.buildindex.BuildIndexClient` provides it.
    """

    def get_tag(self, tag: str) -> Deferred[Digest]:
        """The digest of ``tag``; fails with :class:`TagNotFound` when unknown."""

    def put_tag(self, tag: str, digest: Digest, *, replicate: bool = False) -> Deferred[Any]:
        """Point ``tag`` at ``digest`` (the build-index checks the dependencies)."""

    def repository_tags(self, repo: str) -> Deferred[list[str]]:
        """Every tag (bare, without ``repo:``) of repository ``repo``."""

    def list_tags(self, prefix: str) -> Deferred[list[str]]:
        """Every ``repo:tag`` starting with ``prefix``."""

    def delete_tag(self, tag: str, *, replicate: bool = False) -> Deferred[None]:
        """Remove ``tag``; fails with :class:`TagNotFound` when unknown."""


#: A named readiness check: fires when ready, fails with the reason otherwise.
ReadinessCheck = tuple[str, Callable[[], Deferred[Any]]]


@define
class ProxyMetrics:
    """The proxy's Prometheus metrics, in a registry of their own."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    pushes: Counter = field(init=False)
    blob_bytes: Counter = field(init=False)
    manifest_puts: Counter = field(init=False)
    errors: Counter = field(init=False)
    preheats: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.pushes = Counter(
            "kraken_proxy_blob_pushes",
            "Blobs pushed into the origin ring, by kind (upload, mount)",
            ["kind"],
            registry=r,
        )
        self.blob_bytes = Counter(
            "kraken_proxy_blob_bytes_uploaded",
            "Bytes of blob uploads committed to the origin ring",
            registry=r,
        )
        self.manifest_puts = Counter(
            "kraken_proxy_manifest_puts",
            "Manifests stored, by reference kind (tag, digest)",
            ["reference"],
            registry=r,
        )
        self.preheats = Counter(
            "kraken_proxy_preheats",
            "Pushed manifests whose blobs a registry notification made the origins fetch",
            registry=r,
        )
        self.errors = Counter(
            "kraken_proxy_errors",
            "Error answers by registry error code and HTTP status",
            ["code", "status"],
            registry=r,
        )

    def error(self, exc: BaseException) -> None:
        """Count the answer ``exc`` will become (500 ``UNKNOWN`` when it is unexpected)."""
        api_error = PROXY_ERRORS.to_api_error(exc)
        if api_error is None:
            self.errors.labels("UNKNOWN", "500").inc()
        else:
            self.errors.labels(api_error.registry_code.name, str(api_error.status)).inc()


@define
class UploadSession:
    """An upload in progress: its store upload id, repository and bytes so far."""

    uid: str
    name: str
    touched: float
    size: int = 0
    busy: bool = False


def _set(request: IRequest, name: str, value: str) -> None:
    request.setHeader(name.encode("ascii"), value.encode("latin-1"))  # type: ignore[no-untyped-call]


def _status(request: IRequest, code: int) -> None:
    request.setResponseCode(code)  # type: ignore[no-untyped-call]


def _header(request: IRequest, name: str) -> str | None:
    raw: bytes | None = request.getHeader(name.encode("ascii"))  # type: ignore[no-untyped-call]
    return None if raw is None else raw.decode("latin-1")


def _arg(request: IRequest, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else None


def _parse_digest(raw: str) -> Digest:
    try:
        return Digest.parse(raw)
    except InvalidDigest as e:
        raise RegistryError(DIGEST_INVALID, str(e)) from None


class _StagedUpload:
    """The upload a monolithic ``POST ?digest=`` streams into, made by its first write
    (in the pool thread: the head is decided on the reactor thread, without blocking)."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.uid: str | None = None

    def write_at(self, offset: int, chunks: list[bytes]) -> None:
        """Write ``chunks`` at ``offset``, making the upload first if needed (blocking)."""
        if self.uid is None:
            self.uid = self.store.create_upload()
        self.store.write_upload(self.uid, offset, chunks)

    def remove(self) -> None:
        """Remove the upload, if one was made (blocking)."""
        if self.uid is not None:
            with contextlib.suppress(UploadNotFound):
                self.store.abort_upload(self.uid)


_CONTENT_RANGE: Final = re.compile(
    r"\s*(?:bytes[ =])?\s*(\d+)\s*-\s*(\d+)\s*(?:/\s*(?:\d+|\*))?\s*"
)


def _parse_content_range(header: str) -> tuple[int, int]:
    m = _CONTENT_RANGE.fullmatch(header)
    if m is None:
        raise RegistryError(RANGE_INVALID, f"malformed Content-Range {header[:100]!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RegistryError(RANGE_INVALID, f"Content-Range {header[:100]!r} ends before it starts")
    return start, end


async def _gather(coroutines: Iterable[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run ``coroutines`` concurrently; fail with the first failure itself (not a FirstError)."""
    try:
        results: list[_T] = await gatherResults(
            [Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True
        )
    except FirstError as e:
        e.subFailure.raiseException()
    return results


def tag_repository(entry: str) -> str | None:
    """The repository of a ``repo:tag`` listing entry (None when it is not one)."""
    repo, colon, tag = entry.rpartition(":")
    if not colon or not repo or not is_tag(tag):
        return None
    return repo


def paginate(items: Iterable[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """The sorted page after ``last`` of at most ``n`` items, and whether more follow."""
    ordered = sorted(set(items))
    if last is not None:
        ordered = [i for i in ordered if i > last]
    if n is None:
        return ordered, False
    return ordered[:n], len(ordered) > n


def page_args(request: IRequest) -> tuple[int | None, str | None]:
    """``n`` (clamped to :data:`MAX_PAGE`; ``PAGINATION_NUMBER_INVALID`` if not a number)
    and ``last`` of a listing request."""
    raw = _arg(request, "n")
    n: int | None = None
    if raw is not None:
        if not raw.isdigit():
            raise RegistryError(PAGINATION_NUMBER_INVALID, f"invalid n={raw[:50]!r}")
        n = min(int(raw), MAX_PAGE)
    return n, _arg(request, "last")


_HOST_RE: Final = re.compile(r"[^/]*[.:][^/]*|localhost")


def parse_image_reference(reference: str) -> tuple[str, str | Digest]:
    """``[host/]repo:tag`` or ``[host/]repo@digest`` as ``(repo, tag or digest)``.

    A first component with a dot or a colon (or ``localhost``) is a registry
    host and is dropped, as docker reads references.  Raises ``NAME_INVALID``,
    ``DIGEST_INVALID`` or ``MANIFEST_INVALID`` (bad tag).
    """
    rest = reference.strip()
    first, slash, after = rest.partition("/")
    if slash and _HOST_RE.fullmatch(first):
        rest = after
    if "@" in rest:
        repo, _, raw = rest.partition("@")
        return check_repository_name(repo), Digest.parse(raw)
    repo, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        raise RegistryError(MANIFEST_INVALID, f"no tag in {reference[:200]!r}")
    ref = parse_reference(tag)
    return check_repository_name(repo), ref


@define
class ProxyAPI:
    """The read-write registry v2 Klein application; mount :meth:`resource`.

    ``store`` stages uploads and caches blobs served on pulls; ``run`` runs
    its blocking calls off the reactor thread; ``origins`` is the origin ring
    and ``tags`` the build-index.
    """

    app: ClassVar[Klein] = Klein()
    install_error_handler(app, PROXY_ERRORS, render_registry_json)
    log: ClassVar[Logger] = Logger()

    store: BlobStore
    run: BlockingRunner
    origins: OriginClusterClient
    tags: TagIndex
    clock: IReactorTime
    prefetch_min_size: int = 0
    prefetch_max_size: int = 50 * 1024**3
    upload_timeout: float = UPLOAD_TIMEOUT
    max_uploads: int = DEFAULT_MAX_UPLOADS
    max_blob_size: int = DEFAULT_MAX_BLOB
    readiness_checks: Sequence[ReadinessCheck] = ()
    #: The origin ring and the build-index, served at ``/dependencies``, not in readiness.
    dependencies: Dependencies | None = None
    metrics: ProxyMetrics = field(factory=ProxyMetrics)
    #: Whether ``DELETE`` of manifests, tags and blobs is served (else 405).
    delete_enabled: bool = False
    _uploads: dict[str, UploadSession] = field(factory=dict, init=False)
    _fetches: SingleFlight[Digest, None] = field(factory=SingleFlight, init=False)
    _referrer_locks: dict[tuple[str, Digest], DeferredLock] = field(factory=dict, init=False)

    def resource(self) -> IResource:
        """The ``twisted.web`` resource serving this API."""
        return self.app.resource()

    def gate(self, checks: Sequence[Callable[[RequestHead], None]] = ()) -> KleinRoutes:
        """What a :class:`~kraken.http.server.KrakenSite` asks on each head: blob bodies
        stream into their upload (:meth:`_plan`), a manifest is at most 4 MiB in memory,
        anything else 1 MiB; ``checks`` (the client-certificate check) run first."""
        return KleinRoutes(self.app, {"v2": self._plan}, checks=checks)

    @property
    def uploads(self) -> dict[str, UploadSession]:
        """Uploads in progress by id (read-only use: tests and metrics)."""
        return self._uploads

    # -- routes ---------------------------------------------------------------------------

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        """Liveness: ``OK``."""
        return b"OK\n"

    @app.route("/dependencies", methods=["GET"])
    async def dependency_states(self, request: IRequest) -> bytes:
        """Whether the origin ring and the build-index answer, as JSON (not in readiness)."""
        _set(request, "Content-Type", "application/json")
        if self.dependencies is None:
            return b'{"dependencies": {}}\n'
        return await self.dependencies.render()

    @app.route("/readiness", methods=["GET"])
    async def readiness(self, request: IRequest) -> bytes:
        """200 when every check of the proxy's own state passes, else 503 why.

        The origin ring and the build-index are dependencies (``/dependencies``): with them
        down pushes fail, but the proxy still answers and lets the client know.
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
            raise APIError(503, "not ready: " + "; ".join(problems), code=UNAVAILABLE)
        return b"OK\n"

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        """Prometheus text exposition of :class:`ProxyMetrics`."""
        _set(request, "Content-Type", CONTENT_TYPE_LATEST)
        return generate_latest(self.metrics.registry)

    @app.route("/v2/", methods=_ALL_METHODS)
    @app.route("/v2", methods=_ALL_METHODS)
    def base(self, request: IRequest) -> bytes:
        """The API version check: ``{}``."""
        request.setHeader(*API_VERSION_HEADER)  # type: ignore[no-untyped-call]
        if request.method not in (b"GET", b"HEAD"):
            raise RegistryError(UNSUPPORTED, headers={"Allow": "GET, HEAD"})
        _set(request, "Content-Type", "application/json")
        return b"{}"

    @app.route("/v2/<path:rest>", methods=_ALL_METHODS)
    async def v2(self, request: IRequest, rest: str) -> bytes:
        """Every repository route and the catalog: dispatch on the path's kind and the method."""
        try:
            return await self._v2(request, rest)
        except Exception as e:
            self.metrics.error(e)
            raise

    async def _v2(self, request: IRequest, rest: str) -> bytes:
        request.setHeader(*API_VERSION_HEADER)  # type: ignore[no-untyped-call]

        def plan(head: RequestHead) -> BodyPlan:
            return self._plan(head, {"rest": rest})

        method = request.method.decode("ascii", "replace")
        if rest.rstrip("/") == "_catalog":
            self._allow(method, ("GET",))
            return await self._catalog(request)
        path = parse_v2_path(rest)
        if path is None:
            raise APIError(404, f"no registry route for /v2/{rest[:200]}", code=UNSUPPORTED)
        if path.kind == "tags":
            self._allow(method, ("GET",))
            return await self._tag_list(request, path.name)
        if path.kind == "referrers":
            self._allow(method, ("GET",))
            return await self._referrers(request, path.name, path.rest)
        if path.kind == "uploads":
            return await self._upload_route(request, method, path.name, path.rest, plan)
        deletes = ("DELETE",) if self.delete_enabled else ()
        if path.kind == "blobs":
            self._allow(method, ("GET", "HEAD", *deletes))
            if method == "DELETE":
                return await self._delete_blob(request, path.name, _parse_digest(path.rest))
            await self._blob(request, path.name, Digest.parse(path.rest))
            return b""
        self._allow(method, ("GET", "HEAD", "PUT", *deletes))
        if method == "PUT":
            return await self._put_manifest(request, path.name, path.rest)
        if method == "DELETE":
            return await self._delete_manifest(request, path.name, path.rest)
        await self._get_manifest(request, path.name, path.rest)
        return b""

    @staticmethod
    def _allow(method: str, allowed: Sequence[str]) -> None:
        """405 ``UNSUPPORTED`` with an ``Allow`` header unless ``method`` is allowed
        (``HEAD`` goes with ``GET``, and is listed once)."""
        if "GET" in allowed and "HEAD" not in allowed:
            allowed = ["GET", "HEAD", *[m for m in allowed if m != "GET"]]
        if method not in allowed:
            methods = ", ".join(allowed)
            raise RegistryError(
                UNSUPPORTED, f"{method} is not supported here", headers={"Allow": methods}
            )

    # -- blobs ----------------------------------------------------------------------------

    async def _origin_size(self, name: str, digest: Digest, *, strict: bool = False) -> int | None:
        """
        The size of ``digest`` in the ring, or None when the ring lacks it.

        Unless ``strict``, a blob no replica that answered has counts as absent even if
        another replica could not be asked: the client pushes it again, which is safe.
        ``strict`` (a manifest's dependencies) lets :class:`StatInconclusive` through:
        503, never a false ``MANIFEST_BLOB_UNKNOWN`` for a blob an unreachable replica
        took.
        """
        try:
            return await self.origins.stat(name, digest)
        except BlobNotFoundAtOrigin:
            return None
        except StatInconclusive:
            if strict:
                raise
            return None

    async def _blob(self, request: IRequest, name: str, digest: Digest) -> None:
        headers = {
            b"Docker-Content-Digest": str(digest).encode("ascii"),
            b"ETag": f'"{digest}"'.encode("ascii"),
        }
        if request.method == b"HEAD":
            size = await self._origin_size(name, digest)
            if size is None:
                raise RegistryError(BLOB_UNKNOWN, f"blob unknown: {digest}")
            _set(request, "Content-Type", "application/octet-stream")
            _set(request, "Content-Length", str(size))
            _set(request, "Accept-Ranges", "bytes")
            for key, value in headers.items():
                request.setHeader(key, value)  # type: ignore[no-untyped-call]
            return
        for attempt in (1, 2):
            await self._cached(name, digest, BLOB_UNKNOWN)
            try:
                await serve_blob(request, self.store, digest, self.run, headers=headers)
                return
            except BlobNotFound:
                if attempt == 2:
                    raise RegistryError(BLOB_UNKNOWN, f"blob unknown: {digest}") from None

    async def _cached(self, name: str, digest: Digest, unknown: ErrorCode) -> None:
        """Make sure ``digest`` is in the proxy's cache, downloading it from the ring once."""
        if await self.run(self.store.has, digest):
            return
        waiter = self._fetches.run(
            digest, lambda: Deferred.fromCoroutine(self._fetch(name, digest))
        )
        try:
            await waiter
        except BlobNotFoundAtOrigin:
            raise RegistryError(unknown, f"{unknown.message}: {digest}") from None

    async def _fetch(self, name: str, digest: Digest) -> None:
        ingest = await self.run(self.store.open_ingest)
        try:
            # Small sequential page-cache writes, as kraken.http.client.save_body does.
            await self.origins.download_blob(name, digest, ingest.write)
            with contextlib.suppress(BlobExists):
                await self.run(ingest.commit, digest)
        finally:
            await self.run(ingest.abort)

    async def _to_origin(self, name: str, digest: Digest) -> None:
        """Upload the cached blob ``digest`` to the origin ring under namespace ``name``."""
        reader: BlobReader = await self.run(self.store.open_reader, digest)
        try:

            def read_chunk(offset: int, length: int) -> Deferred[bytes]:
                return self.run(reader.pread, length, offset)

            await self.origins.upload_blob(name, digest, reader.size, read_chunk)
        finally:
            reader.close()

    # -- uploads --------------------------------------------------------------------------

    def _location(self, session: UploadSession) -> str:
        return f"/v2/{session.name}/blobs/uploads/{session.uid}"

    def _progress(self, request: IRequest, session: UploadSession, code: int) -> bytes:
        _status(request, code)
        _set(request, "Location", self._location(session))
        _set(request, "Range", f"0-{max(session.size - 1, 0)}")
        _set(request, "Docker-Upload-UUID", session.uid)
        _set(request, "Content-Length", "0")
        return b""

    def _created(self, request: IRequest, location: str, digest: Digest) -> bytes:
        _status(request, 201)
        _set(request, "Location", location)
        _set(request, "Docker-Content-Digest", str(digest))
        _set(request, "Content-Length", "0")
        return b""

    def _session(self, name: str, uid: str) -> UploadSession:
        session = self._uploads.get(uid)
        if session is None or session.name != name:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, f"upload unknown: {uid[:64]!r}")
        session.touched = self.clock.seconds()
        return session

    async def _new_session(self, name: str) -> UploadSession:
        self._check_capacity()
        uid: str = await self.run(self.store.create_upload)
        session = UploadSession(uid, name, self.clock.seconds())
        self._uploads[uid] = session
        return session

    async def _drop(self, session: UploadSession) -> None:
        self._uploads.pop(session.uid, None)
        with contextlib.suppress(UploadNotFound):
            await self.run(self.store.abort_upload, session.uid)

    def _plan(self, head: RequestHead, args: Mapping[str, Any]) -> BodyPlan:
        """
        On a request's head: where its body goes.  A blob chunk (``PATCH``, ``PUT`` of an
        upload, ``POST`` with ``?digest=``) streams into its upload file once the upload
        is known, free and continued where it ends; a manifest ``PUT`` is at most 4 MiB.
        Refusals (unknown upload, wrong range, too many uploads) come before any byte of
        the body is read.
        """
        path = parse_v2_path(args["rest"])
        method = head.method
        if path is None:
            return BodyPlan(DEFAULT_MAX_BODY)
        if path.kind == "manifests" and method == b"PUT":
            return BodyPlan(MAX_MANIFEST_SIZE, code=MANIFEST_INVALID)
        if path.kind != "uploads" or method not in (b"POST", b"PATCH", b"PUT"):
            return BodyPlan(DEFAULT_MAX_BODY)
        if not path.rest:
            if method != b"POST":
                return BodyPlan(DEFAULT_MAX_BODY)
            self._check_capacity()
            raw = head.arg("digest")
            if raw is None:
                return BodyPlan(0)
            _parse_digest(raw)
            staged = _StagedUpload(self.store)
            head.request.staged_upload = staged  # type: ignore[attr-defined]
            sink = StreamingSink(
                self.run, staged.write_at, 0, aborted=lambda: self._unstage(staged)
            )
            return BodyPlan(self.max_blob_size, sink)
        session = self._session(path.name, path.rest)
        if method == b"PUT":
            raw = head.arg("digest")
            if raw is None:
                raise RegistryError(DIGEST_INVALID, "the digest query parameter is required")
            _parse_digest(raw)
        if session.busy:
            raise RegistryError(RANGE_INVALID, f"upload {session.uid} is being written: retry")
        limit = self.max_blob_size
        raw_range = head.header("content-range")
        if raw_range is not None:
            start, end = _parse_content_range(raw_range)
            if start != session.size:
                raise RegistryError(
                    RANGE_INVALID,
                    f"chunk starts at {start} but upload {session.uid} has {session.size} bytes",
                    headers={
                        "Location": self._location(session),
                        "Range": f"0-{max(session.size - 1, 0)}",
                    },
                )
            limit = end - start + 1
            if head.content_length is not None and head.content_length != limit:
                raise RegistryError(
                    RANGE_INVALID,
                    f"Content-Range {start}-{end} does not match the "
                    f"{head.content_length} bytes sent",
                )
        session.busy = True

        def aborted() -> None:
            session.busy = False

        sink = StreamingSink(
            self.run, partial(self.store.write_upload, session.uid), session.size, aborted=aborted
        )
        return BodyPlan(limit, sink, code=SIZE_INVALID)

    def _check_capacity(self) -> None:
        """429 with ``Retry-After`` when ``max_uploads`` uploads are open."""
        if len(self._uploads) >= self.max_uploads:
            raise RegistryError(
                TOOMANYREQUESTS,
                f"{len(self._uploads)} uploads are open at this proxy (the limit): retry later",
                headers={"Retry-After": str(UPLOAD_RETRY_AFTER)},
            )

    def _unstage(self, staged: _StagedUpload) -> None:
        """A staged body that broke off: remove its upload, if it made one."""
        d = self.run(staged.remove)
        d.addErrback(lambda f: self.log.failure("removing a broken-off upload", f))

    async def _upload_route(
        self,
        request: IRequest,
        method: str,
        name: str,
        uid: str,
        plan: Callable[[RequestHead], BodyPlan],
    ) -> bytes:
        if not uid:
            self._allow(method, ("POST",))
            return await self._start_upload(request, name, plan)
        self._allow(method, ("GET", "PATCH", "PUT", "DELETE"))
        if method in ("GET", "HEAD"):
            return self._progress(request, self._session(name, uid), 204)
        if method == "DELETE":
            session = self._session(name, uid)
            if session.busy:
                raise RegistryError(BLOB_UPLOAD_INVALID, f"upload {uid} is being written")
            await self._drop(session)
            _status(request, 204)
            return b""
        # PATCH or PUT: the plan checked the upload and streamed the body into it.
        sink = body_sink(request, plan)
        session = self._session(name, uid)
        try:
            await self._written(request, session, sink)
            if method == "PATCH":
                return self._progress(request, session, 202)
            session.busy = True
            return await self._finish(request, session, _arg(request, "digest"))
        finally:
            session.busy = False
            session.touched = self.clock.seconds()

    async def _written(self, request: IRequest, session: UploadSession, sink: BodySink) -> None:
        """Wait for the body to be in the upload; advance it; check a ``Content-Range``."""
        try:
            written = await sink.done()
        except UploadNotFound:
            self._uploads.pop(session.uid, None)
            raise
        finally:
            session.busy = False
        start = session.size
        session.size += written
        raw_range = _header(request, "content-range")
        if raw_range is not None:
            first, last = _parse_content_range(raw_range)
            if last - first + 1 != written:
                raise RegistryError(
                    RANGE_INVALID,
                    f"Content-Range {first}-{last} does not match the {written} bytes sent "
                    f"(upload {session.uid} now has {start + written})",
                    headers={"Range": f"0-{max(session.size - 1, 0)}"},
                )

    async def _start_upload(
        self, request: IRequest, name: str, plan: Callable[[RequestHead], BodyPlan]
    ) -> bytes:
        digest_arg = _arg(request, "digest")
        sink = body_sink(request, plan) if digest_arg is not None else None
        staged: _StagedUpload | None = getattr(request, "staged_upload", None)
        mount = _arg(request, "mount")
        if mount is not None:
            digest = Digest.parse(mount)
            if await self._origin_size(name, digest) is not None:
                self.metrics.pushes.labels("mount").inc()
                if sink is not None and staged is not None:
                    with contextlib.suppress(Exception):
                        await sink.done()
                    await self.run(staged.remove)
                return self._created(request, f"/v2/{name}/blobs/{digest}", digest)
        if sink is None or staged is None:
            session = await self._new_session(name)
            return self._progress(request, session, 202)
        try:
            written = await sink.done()
            uid = staged.uid if staged.uid is not None else await self.run(self.store.create_upload)
        except BaseException:
            await self.run(staged.remove)
            raise
        session = UploadSession(uid, name, self.clock.seconds(), size=written, busy=True)
        self._uploads[uid] = session
        try:
            return await self._finish(request, session, digest_arg)
        except BaseException:
            await self._drop(session)
            raise
        finally:
            session.busy = False

    async def _finish(self, request: IRequest, session: UploadSession, raw: str | None) -> bytes:
        if raw is None:
            raise RegistryError(DIGEST_INVALID, "the digest query parameter is required")
        digest = _parse_digest(raw)
        self._uploads.pop(session.uid, None)
        try:
            await self.run(self.store.commit_upload, session.uid, digest)
        except DigestMismatch as e:
            raise RegistryError(DIGEST_INVALID, f"upload does not match {digest}: {e}") from None
        except BlobExists:
            pass
        except BaseException:
            await self._drop(session)
            raise
        await self._to_origin(session.name, digest)
        self.metrics.pushes.labels("upload").inc()
        self.metrics.blob_bytes.inc(session.size)
        return self._created(request, f"/v2/{session.name}/blobs/{digest}", digest)

    def expire_uploads(self) -> int:
        """Drop uploads idle for longer than ``upload_timeout``; return how many."""
        now = self.clock.seconds()
        stale = [
            s
            for s in self._uploads.values()
            if not s.busy and now - s.touched > self.upload_timeout
        ]
        for session in stale:
            d = Deferred.fromCoroutine(self._drop(session))
            d.addErrback(lambda f: self.log.failure("dropping an expired upload", f))
        return len(stale)

    # -- manifests ------------------------------------------------------------------------

    async def _resolve(self, name: str, reference: str) -> Digest:
        ref = parse_reference(reference)
        if isinstance(ref, Digest):
            return ref
        try:
            return await self.tags.get_tag(f"{name}:{ref}")
        except TagNotFound:
            raise RegistryError(MANIFEST_UNKNOWN, f"manifest unknown: {name}:{ref}") from None

    async def _manifest_bytes(self, name: str, digest: Digest) -> bytes:
        for attempt in (1, 2):
            await self._cached(name, digest, MANIFEST_UNKNOWN)
            try:
                data: bytes = await self.run(read_manifest, self.store, digest)
                return data
            except BlobNotFound:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _get_manifest(self, request: IRequest, name: str, reference: str) -> None:
        stored_reference(name, reference)
        digest = await self._resolve(name, reference)
        data = await self._manifest_bytes(name, digest)
        _set(request, "Content-Type", manifest_media_type(data))
        _set(request, "Docker-Content-Digest", str(digest))
        _set(request, "ETag", f'"{digest}"')
        _set(request, "Content-Length", str(len(data)))
        if request.method != b"HEAD":
            request.write(data)  # type: ignore[no-untyped-call]

    async def _put_manifest(self, request: IRequest, name: str, reference: str) -> bytes:
        ref = parse_reference(reference)
        try:
            data = read_request_body(request, MAX_MANIFEST_SIZE)
        except PayloadTooLarge:
            raise APIError(
                413, f"manifest exceeds {MAX_MANIFEST_SIZE} bytes", code=MANIFEST_INVALID
            ) from None
        media_type = manifest_media_type(data)
        if media_type not in PUSHABLE_TYPES:
            raise RegistryError(MANIFEST_INVALID, f"unsupported manifest type {media_type}")
        doc = parse_manifest(data)
        if doc.get("schemaVersion") != 2:
            raise RegistryError(MANIFEST_INVALID, "schemaVersion must be 2")
        declared = doc.get("mediaType")
        raw_type = _header(request, "content-type")
        content_type = raw_type.split(";")[0].strip() if raw_type else ""
        if (
            isinstance(declared, str)
            and content_type in MANIFEST_MEDIA_TYPES
            and content_type != declared
        ):
            raise RegistryError(
                MANIFEST_INVALID, f"Content-Type {content_type} but mediaType {declared}"
            )
        references = manifest_references(data)
        digest: Digest = await self.run(Digest.of_bytes, data)
        if isinstance(ref, Digest) and ref != digest:
            raise RegistryError(DIGEST_INVALID, f"manifest is {digest}, not {ref}")
        wanted = [*references.manifests, *references.blobs]
        sizes = await _gather([self._origin_size(name, d, strict=True) for d in wanted])
        missing = [str(d) for d, size in zip(wanted, sizes, strict=True) if size is None]
        if missing:
            raise RegistryError(
                MANIFEST_BLOB_UNKNOWN,
                f"manifest references {missing[0]}, unknown to the registry",
                detail={"digest": missing[0]},
            )
        with contextlib.suppress(BlobExists):
            await self.run(self.store.put_bytes, data)
        await self._to_origin(name, digest)
        if not isinstance(ref, Digest):
            try:
                await self.tags.put_tag(f"{name}:{ref}", digest, replicate=True)
            except HTTPStatusError as e:
                if e.status == 503:
                    # The build-index could not tell (origins unreachable): try again later.
                    text = e.body.decode("utf-8", "replace")[:500]
                    raise RegistryError(
                        UNAVAILABLE, f"the build-index could not store {name}:{ref}: {text}"
                    ) from None
                if e.status not in (400, 404):
                    raise
                # The build-index found a dependency missing at the origin after our check.
                text = e.body.decode("utf-8", "replace")[:500]
                raise RegistryError(
                    MANIFEST_BLOB_UNKNOWN, f"the build-index refused {name}:{ref}: {text}"
                ) from None
        subject = subject_of(data)
        if subject is not None:
            await self._add_referrer(name, subject, data, digest)
            _set(request, SUBJECT_HEADER, str(subject))
        self.metrics.manifest_puts.labels("digest" if isinstance(ref, Digest) else "tag").inc()
        return self._created(request, f"/v2/{name}/manifests/{digest}", digest)

    # -- referrers ------------------------------------------------------------------------

    async def _referrers_index(self, name: str, subject: Digest) -> bytes | None:
        """The referrers index of ``subject`` in ``name`` (None when it has none)."""
        try:
            digest = await self.tags.get_tag(f"{name}:{referrers_tag(subject)}")
        except TagNotFound:
            return None
        try:
            return await self._manifest_bytes(name, digest)
        except RegistryError as e:
            if e.code is not MANIFEST_UNKNOWN:
                raise
            self.log.warn(
                "the referrers index {digest} of {name}@{subject} is gone",
                digest=digest,
                name=name,
                subject=subject,
            )
            return None

    async def _add_referrer(self, name: str, subject: Digest, data: bytes, digest: Digest) -> None:
        """Add the manifest ``digest`` to ``subject``'s referrers index, one update at a time."""
        key = (name, subject)
        lock = self._referrer_locks.get(key)
        if lock is None:
            lock = self._referrer_locks[key] = DeferredLock()
        await lock.acquire()
        try:
            current = await self._referrers_index(name, subject)
            index = add_referrer(current, referrer_descriptor(data, digest))
            if index == current:
                return
            index_digest = await self._store_manifest(name, index)
            await self.tags.put_tag(
                f"{name}:{referrers_tag(subject)}", index_digest, replicate=True
            )
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._referrer_locks.pop(key, None)

    async def _store_manifest(self, name: str, data: bytes) -> Digest:
        """Put manifest bytes made here into the cache and the origin ring; their digest."""
        digest: Digest = await self.run(Digest.of_bytes, data)
        with contextlib.suppress(BlobExists):
            await self.run(self.store.put_bytes, data)
        await self._to_origin(name, digest)
        return digest

    async def _referrers(self, request: IRequest, name: str, raw: str) -> bytes:
        """The referrers of a digest as an image index (never 404: empty when none)."""
        subject = _parse_digest(raw)
        artifact_type = _arg(request, "artifactType")
        index = await self._referrers_index(name, subject)
        if artifact_type is not None:
            _set(request, FILTERS_APPLIED_HEADER, "artifactType")
        _set(request, "Content-Type", OCI_IMAGE_INDEX)
        return filter_referrers(index, artifact_type)

    # -- deletes --------------------------------------------------------------------------

    async def _delete_manifest(self, request: IRequest, name: str, reference: str) -> bytes:
        """
        A tag: remove it from the build-index and its remotes.  A digest: remove every tag
        of ``name`` that points at it, and the manifest from its subject's referrers.  202
        either way; 404 ``MANIFEST_UNKNOWN`` when there was nothing to delete.  The bytes
        stay at the origins until the garbage collector proves nothing references them.
        """
        ref = stored_reference(name, reference)
        if not isinstance(ref, Digest):
            try:
                await self.tags.delete_tag(f"{name}:{ref}", replicate=True)
            except TagNotFound:
                raise RegistryError(MANIFEST_UNKNOWN, f"manifest unknown: {name}:{ref}") from None
            self.log.info("deleted tag {name}:{tag}", name=name, tag=ref)
            _status(request, 202)
            return b""
        tags = [t for t in await self.tags.repository_tags(name) if is_tag(t)]
        targets = await _gather([self._tag_target(name, t) for t in tags])
        pointing = [t for t, d in zip(tags, targets, strict=True) if d == ref]
        data: bytes | None = None
        if await self._origin_size(name, ref) is not None:
            data = await self._manifest_bytes(name, ref)
        elif not pointing:
            raise RegistryError(MANIFEST_UNKNOWN, f"manifest unknown: {name}@{ref}")
        for tag in pointing:
            with contextlib.suppress(TagNotFound):
                await self.tags.delete_tag(f"{name}:{tag}", replicate=True)
        subject = subject_of(data) if data is not None else None
        if subject is not None:
            await self._remove_referrer(name, subject, ref)
        self.log.info(
            "deleted manifest {name}@{digest} (tags: {tags})", name=name, digest=ref, tags=pointing
        )
        _status(request, 202)
        return b""

    async def _tag_target(self, name: str, tag: str) -> Digest | None:
        try:
            return await self.tags.get_tag(f"{name}:{tag}")
        except TagNotFound:
            return None

    async def _remove_referrer(self, name: str, subject: Digest, digest: Digest) -> None:
        """Drop ``digest`` from ``subject``'s referrers index (the tag goes when it empties)."""
        key = (name, subject)
        lock = self._referrer_locks.get(key)
        if lock is None:
            lock = self._referrer_locks[key] = DeferredLock()
        await lock.acquire()
        try:
            current = await self._referrers_index(name, subject)
            if current is None:
                return
            index, removed = remove_referrer(current, digest)
            if not removed:
                return
            tag = f"{name}:{referrers_tag(subject)}"
            if not parse_manifest(index).get("manifests"):
                with contextlib.suppress(TagNotFound):
                    await self.tags.delete_tag(tag, replicate=True)
                return
            await self.tags.put_tag(tag, await self._store_manifest(name, index), replicate=True)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._referrer_locks.pop(key, None)

    async def _delete_blob(self, request: IRequest, name: str, digest: Digest) -> bytes:
        """202 and the proxy's cached copy gone, for a blob the cluster has (404 otherwise).

        Blobs are shared by every repository, so the copies at the origins and in the
        backend are the garbage collector's to remove once nothing references them.
        """
        cached: bool = await self.run(self.store.has, digest)
        if not cached and await self._origin_size(name, digest) is None:
            raise RegistryError(BLOB_UNKNOWN, f"blob unknown: {digest}")
        if cached:
            with contextlib.suppress(BlobNotFound):
                await self.run(self.store.delete, digest)
        _status(request, 202)
        return b""

    # -- listings -------------------------------------------------------------------------

    def _link(self, request: IRequest, path: str, n: int, last: str) -> None:
        query = urlencode({"n": str(n), "last": last})
        _set(request, "Link", f'<{path}?{query}>; rel="next"')

    async def _tag_list(self, request: IRequest, name: str) -> bytes:
        n, last = page_args(request)
        tags = [t for t in await self.tags.repository_tags(name) if is_tag(t)]
        if not tags:
            raise RegistryError(NAME_UNKNOWN, f"repository {name} has no tags")
        page, more = paginate(tags, n, last)
        if more and n:
            self._link(request, f"/v2/{name}/tags/list", n, page[-1])
        _set(request, "Content-Type", "application/json")
        return json.dumps({"name": name, "tags": page}).encode("utf-8")

    async def _catalog(self, request: IRequest) -> bytes:
        n, last = page_args(request)
        entries = await self.tags.list_tags("")
        repositories = {r for r in map(tag_repository, entries) if r is not None}
        page, more = paginate(repositories, n, last)
        if more and n:
            self._link(request, "/v2/_catalog", n, page[-1])
        _set(request, "Content-Type", "application/json")
        return json.dumps({"repositories": page}).encode("utf-8")

    # -- prefetch -------------------------------------------------------------------------

    @app.route("/proxy/v1/registry/prefetch", methods=["POST"])
    async def prefetch_v1(self, request: IRequest) -> bytes:
        """Resolve the tag's manifests, answer 200, then warm the origins in the background."""
        return await self._prefetch(request, wait=False)

    @app.route("/proxy/v2/registry/prefetch", methods=["POST"])
    async def prefetch_v2(self, request: IRequest) -> bytes:
        """Resolve the tag's manifests and warm every blob at the origins, then answer 200."""
        return await self._prefetch(request, wait=True)

    async def _prefetch(self, request: IRequest, *, wait: bool) -> bytes:
        _set(request, "Content-Type", "application/json")
        trace_id: object = None
        tag = ""
        try:
            body = read_json(request)
            if not isinstance(body, dict) or not isinstance(body.get("tag"), str):
                raise APIError(400, 'expected a JSON object with a string "tag"')
            trace_id = body.get("trace_id")
            tag = body["tag"]
            try:
                name, ref = parse_image_reference(tag)
            except (APIError, InvalidDigest) as e:
                raise APIError(400, str(e)) from None
            blobs = await self._image_blobs(name, ref)
            warm = Deferred.fromCoroutine(self._warm(name, blobs))
            if wait:
                await warm
            else:
                warm.addErrback(lambda f: self.log.failure("prefetch of {tag} failed", f, tag=tag))
        except Exception as e:
            self.metrics.error(e)
            error = PROXY_ERRORS.to_api_error(e)
            if error is None:
                self.log.failure("prefetch of {tag}", Failure(), tag=tag)  # type: ignore[no-untyped-call]
                error = APIError(500, "internal error")
            _status(request, error.status)
            return json.dumps(
                {
                    "error": error.registry_code.name,
                    "prefetched": False,
                    "status": "failure",
                    "message": error.message,
                    "trace_id": trace_id,
                }
            ).encode("utf-8")
        return json.dumps(
            {
                "tag": tag,
                "prefetched": True,
                "status": "success",
                "message": "prefetching initiated successfully" if not wait else "prefetched",
                "trace_id": trace_id,
            }
        ).encode("utf-8")

    # -- preheat on push -----------------------------------------------------------------

    @app.route("/registry/notifications", methods=["POST"])
    def notifications(self, request: IRequest) -> bytes:
        """
        A registry's notification envelope (``application/vnd.docker.distribution.events
        .v1+json``, as docker distribution sends it): every ``push`` event of a manifest
        makes the origins fetch that image's blobs from their backend in the background,
        as Go Kraken's preheat does.  Other events (blob pushes, pulls) are ignored.  200
        with ``{"preheating": n}``; 400 for a body that is not an envelope.
        """
        body = read_json(request)
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise APIError(400, 'expected a notification envelope: {"events": [...]}')
        started = 0
        for event in events:
            target = event.get("target") if isinstance(event, dict) else None
            if not isinstance(target, dict) or event.get("action") != "push":
                continue
            if target.get("mediaType") not in MANIFEST_MEDIA_TYPES:
                continue
            try:
                name = check_repository_name(str(target.get("repository")))
                digest = Digest.parse(str(target.get("digest")))
            except (APIError, InvalidDigest) as e:
                self.log.warn("ignoring a push notification: {error}", error=e)
                continue
            started += 1
            self.metrics.preheats.inc()
            Deferred.fromCoroutine(self._preheat(name, digest))
        _set(request, "Content-Type", "application/json")
        return json.dumps({"preheating": started}).encode("utf-8")

    async def _preheat(self, name: str, digest: Digest) -> None:
        """Warm every blob of ``name@digest`` at the origins; failures are logged."""
        try:
            blobs = await self._image_blobs(name, digest)
            await self._warm(name, blobs)
        except Exception:
            self.log.failure("preheat of {name}@{digest} failed", name=name, digest=digest)
            return
        self.log.info(
            "preheated {name}@{digest}: {count} blobs", name=name, digest=digest, count=len(blobs)
        )

    async def _image_blobs(self, name: str, ref: str | Digest) -> list[Digest]:
        """The config and layers (within the size limits) of an image and its children."""
        digest = ref if isinstance(ref, Digest) else await self._resolve(name, ref)
        blobs: dict[Digest, None] = {}
        todo = [digest]
        seen: set[Digest] = set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            data = await self._manifest_bytes(name, current)
            references = manifest_references(data)
            todo.extend(references.manifests)
            doc = parse_manifest(data)
            descriptors = [doc.get("config") or {}, *(doc.get("layers") or [])]
            sizes = {d.get("digest"): d.get("size") for d in descriptors if isinstance(d, dict)}
            for blob in references.blobs:
                size = sizes.get(str(blob))
                if isinstance(size, int) and not (
                    self.prefetch_min_size <= size <= self.prefetch_max_size
                ):
                    continue
                blobs[blob] = None
        return list(blobs)

    async def _warm(self, name: str, blobs: Sequence[Digest]) -> None:
        async def one(digest: Digest) -> None:
            hosts = await self.origins.locations(digest)
            await self.origins.client.prefetch(hosts[0], name, digest)

        await _gather([one(d) for d in blobs])
