"""
The origin's HTTP API (DESIGN 7; reference/kraken-components.md 2.1): uploads, downloads, ring.

Routes (``{ns}`` is percent-decoded once and checked; ``{d}`` is ``sha256:<hex>``):

- ``POST /namespace/{ns}/blobs/{d}/uploads`` -> 200 ``Location: <uid>`` (409: cached);
  ``PATCH .../uploads/{uid}`` with ``Content-Range: start-end`` (end exclusive; chunks
  in order, each starting where the last ended); ``PUT .../uploads/{uid}`` commits:
  sha256 verified (400 ``DIGEST_INVALID`` and the upload discarded on mismatch), the
  write-back task stored durably, *then* 200; the blob is then duplicated to the other
  replicas.  409 if the blob is already cached (its write-back is ensured).
- the same three under ``/internal/blobs/{d}/uploads`` (copies between replicas, no
  write-back) and ``/internal/duplicate/namespace/{ns}/blobs/{d}/uploads`` (write-back
  after the ``delay_seconds`` of the commit's JSON body).
- ``GET /namespace/{ns}/blobs/{d}``: 200 streamed from the cache file (``Range: bytes=``
  gives 206), else a backend fetch: 202 while it runs, 404 if the backend lacks it,
  503 when too many fetches run.  ``POST .../prefetch``: 200 cached, 202 fetching, 404.
- ``HEAD /internal/namespace/{ns}/blobs/{d}[?local=true]``: 200 ``Content-Length``/404.
- ``GET /internal/namespace/{ns}/blobs/{d}/metainfo``: 200 JSON / 202 / 404.
- ``GET /blobs/{d}/locations``: ``Origin-Locations: host:port,...`` (ring order).
- ``GET /internal/peercontext``, ``DELETE /internal/blobs/{d}`` (202), ``/health``,
  ``/readiness``, ``/metrics``.

Errors are registry v2 JSON bodies.  Request bodies arrive buffered by twisted.web
(``request.content``, a temporary file past 100 KB); they are copied into the store's
upload file in a thread, chunk by chunk.  Hashing, reading and writing blobs all go
through the injected :class:`~kraken.io.runner.BlockingRunner`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import IO, Any, ClassVar, Final

from attrs import define, field
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from kraken.api.serving import serve_blob
from kraken.backends.interface import BlobNotFound as BackendBlobNotFound
from kraken.backends.interface import InvalidName, NamespaceNotFound
from kraken.backends.router import BackendRouter
from kraken.cluster import EmptyRing, RendezvousRing
from kraken.core import (
    DEFAULT_PIECE_LENGTHS,
    Digest,
    MetaInfo,
    MetaInfoBuilder,
    PeerInfo,
    PieceLengthTable,
)
from kraken.core.names import InvalidNamespace, check_namespace
from kraken.http.errors import (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    CORE_ERRORS,
    NAME_INVALID,
    NAME_UNKNOWN,
    RANGE_INVALID,
    SIZE_INVALID,
    TOOMANYREQUESTS,
    UNAVAILABLE,
    APIError,
    RegistryError,
    install_error_handler,
    render_registry_json,
)
from kraken.http.headers import header, set_header, set_status
from kraken.http.request_body import json_response, read_json
from kraken.http.server import BodyPlan, KleinRoutes, RequestHead, StreamingSink, body_sink
from kraken.io.runner import BlockingRunner
from kraken.origin.refresh import BackendFetcher, BlobTooLarge, FetchersBusy, FetchFailed
from kraken.origin.replication import Replicator
from kraken.origin.writeback import Writeback
from kraken.persistedretry import QueueStopped
from kraken.store import (
    BlobExists,
    BlobInUse,
    BlobPersisted,
    BlobStore,
    InvalidUploadID,
    UploadNotFound,
)
from kraken.store import BlobNotFound as StoreBlobNotFound

__all__ = ["ORIGIN_ERRORS", "OriginAPI", "OriginMetrics", "parse_content_range"]

#: Largest PATCH body accepted.
DEFAULT_MAX_CHUNK: Final = 1024**3
#: Open uploads an origin keeps; a new one beyond gets 429.
DEFAULT_MAX_UPLOADS: Final = 256
#: Seconds an upload may sit with no request before it is removed.
UPLOAD_TIMEOUT: Final = 900.0
#: The ``Retry-After`` of a 429 for too many open uploads, seconds.
UPLOAD_RETRY_AFTER: Final = 5

ORIGIN_ERRORS: Final = CORE_ERRORS.extended(
    {
        InvalidNamespace: NAME_INVALID,
        InvalidName: NAME_INVALID,
        NamespaceNotFound: NAME_UNKNOWN,
        InvalidUploadID: BLOB_UPLOAD_INVALID,
        UploadNotFound: BLOB_UPLOAD_UNKNOWN,
        StoreBlobNotFound: BLOB_UNKNOWN,
        BackendBlobNotFound: BLOB_UNKNOWN,
        BlobExists: 409,
        BlobPersisted: 409,
        BlobInUse: 409,
        FetchersBusy: UNAVAILABLE,
        QueueStopped: UNAVAILABLE,
        EmptyRing: UNAVAILABLE,
        FetchFailed: 500,
        BlobTooLarge: 500,
    },
    daemon="origin",
)


def _reason(e: BaseException) -> str:
    """An exception's message, or its type's name when it has none."""
    return str(e) or type(e).__name__


_RANGE = re.compile(r"(\d{1,19})-(\d{1,19})")


def parse_content_range(value: bytes | None) -> tuple[int, int]:
    """``start-end`` (end exclusive) of a PATCH; 400 if missing or malformed, 416 if empty."""
    if value is None:
        raise RegistryError(BLOB_UPLOAD_INVALID, "missing Content-Range header (start-end)")
    text = value.decode("latin-1").strip()
    match = _RANGE.fullmatch(text)
    if match is None:
        raise RegistryError(
            BLOB_UPLOAD_INVALID, f"bad Content-Range {text!r}: expected start-end (end exclusive)"
        )
    start, end = int(match[1]), int(match[2])
    if end <= start:
        raise RegistryError(RANGE_INVALID, f"empty or reversed Content-Range {text!r}")
    return start, end


def _feed(builder: MetaInfoBuilder, chunks: list[bytes]) -> None:
    """Hash the next chunks of an upload (blocking)."""
    for chunk in chunks:
        builder.feed(chunk)


def _body_length(content: IO[bytes] | None) -> int:
    if content is None:
        return 0
    content.seek(0, 2)
    return content.tell()


@define
class _Upload:
    """
    What the API knows of an upload in progress (chunks must arrive in order).

    When the client declared the size (``?size=`` on the POST), each chunk is hashed in
    the pool thread that writes it, as it streams in, so the commit need not read the
    blob again; ``builder`` None means the commit hashes the file itself (no size, or a
    chunk that broke off half-way).  ``busy`` from a PATCH's head until its body is on
    disk; ``touched`` is when a request last ended (for expiry).
    """

    digest: Digest
    touched: float
    size: int | None = None
    builder: MetaInfoBuilder | None = None
    next_offset: int = 0
    busy: bool = False

    def hashed(self) -> MetaInfo | None:
        """The metainfo of all chunks, if they were hashed and are the declared size."""
        builder = self.builder
        if builder is None or builder.length != self.size or self.next_offset != self.size:
            return None
        return builder.finish()

    def broken_off(self) -> None:
        """A chunk never completed: its bytes were hashed in part, so hash at commit."""
        self.busy = False
        self.builder = None


@define
class OriginMetrics:
    """The origin's Prometheus metrics, in a registry of their own."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    requests: Counter = field(init=False)
    upload_bytes: Counter = field(init=False)
    served_bytes: Counter = field(init=False)
    commits: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "kraken_origin_requests",
            "Requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.upload_bytes = Counter(
            "kraken_origin_upload_bytes", "Bytes received in upload chunks", registry=r
        )
        self.served_bytes = Counter(
            "kraken_origin_served_bytes", "Blob bytes sent to HTTP clients", registry=r
        )
        self.commits = Counter(
            "kraken_origin_commits",
            "Upload commits by kind and outcome",
            ["kind", "result"],
            registry=r,
        )


# Klein (werkzeug) has already percent-decoded path parameters once: decoding them again
# would turn a namespace's literal "%2F" into "/".


def _digest(value: str) -> Digest:
    return Digest.parse(value)


def _namespace(value: str) -> str:
    return check_namespace(value)


@define
class OriginAPI:
    """The origin's Klein application; mount :meth:`resource`."""

    app: ClassVar[Klein] = Klein()
    # A namespace may hold %2F%2F; werkzeug must not "merge" it with a redirect to itself.
    app.url_map.merge_slashes = False
    install_error_handler(app, ORIGIN_ERRORS, render_registry_json)
    log: ClassVar[Logger] = Logger()

    store: BlobStore
    run: BlockingRunner
    ring: RendezvousRing
    backends: BackendRouter
    fetcher: BackendFetcher
    writeback: Writeback
    replicator: Replicator
    peer: PeerInfo
    piece_lengths: PieceLengthTable = DEFAULT_PIECE_LENGTHS
    max_chunk: int = DEFAULT_MAX_CHUNK
    max_uploads: int = DEFAULT_MAX_UPLOADS
    upload_timeout: float = UPLOAD_TIMEOUT
    clock: IReactorTime | None = None
    """Times uploads for expiry (None: wall-clock time)."""
    metrics: OriginMetrics = field(factory=OriginMetrics)
    _uploads: dict[str, _Upload] = field(factory=dict, init=False)
    #: Background replications still running (tests wait for them).
    background: set[Deferred[None]] = field(factory=set, init=False)

    def resource(self) -> IResource:
        """The ``twisted.web`` resource serving this API."""
        return self.app.resource()

    def gate(self, checks: Sequence[Callable[[RequestHead], None]] = ()) -> KleinRoutes:
        """What a :class:`~kraken.http.server.KrakenSite` asks on each request's head: upload
        chunks stream into their upload file, a duplicate commit's JSON is at most 4 KiB,
        every other body at most 1 KiB; ``checks`` (the client-certificate check) run first."""
        chunk = self._plan_chunk
        return KleinRoutes(
            self.app,
            {
                "patch_upload": chunk,
                "patch_internal": chunk,
                "patch_duplicate": chunk,
                "commit_duplicate": lambda head, args: BodyPlan(4096),
            },
            default_limit=1024,
            checks=checks,
        )

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else time.time()

    def _background(self, d: Deferred[None]) -> None:
        self.background.add(d)
        d.addBoth(lambda _: self.background.discard(d))

    # -- health ------------------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """The process is up."""
        return b"OK\n"

    @app.route("/readiness", methods=["GET"])
    async def readiness(self, request: IRequest) -> bytes:
        """
        Ready when the write-back queue runs and is loaded and every backend answers.

        A stopped queue (a stopped origin) or one that failed to load is a 503 at once,
        naming the reason; a request whose client left is dropped without an answer.
        """
        queue = self.writeback.queue
        if not queue.running:
            raise APIError(503, "not ready: write-back queue stopped")
        try:
            await queue.when_ready()
        except CancelledError:
            raise  # the client left: Klein drops the request quietly
        except Exception as e:
            raise APIError(503, f"not ready: write-back queue failed to load: {_reason(e)}") from e
        try:
            await self.backends.check_readiness()
        except CancelledError:
            raise
        except Exception as e:
            raise APIError(503, f"not ready: backend: {_reason(e)}") from e
        return b"OK\n"

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        """Prometheus text exposition."""
        set_header(request, b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.metrics.registry)

    # -- ring --------------------------------------------------------------------------

    @app.route("/blobs/<digest>/locations", methods=["GET"])
    def locations(self, request: IRequest, digest: str) -> bytes:
        """The replicas of the blob in ring order, in ``Origin-Locations``."""
        d = _digest(digest)
        found = self.ring.locations(d)
        if not found:
            raise EmptyRing(f"the origin ring has no members for {d}")
        set_header(request, b"Origin-Locations", ",".join(found).encode("ascii"))
        return b""

    @app.route("/internal/peercontext", methods=["GET"])
    def peercontext(self, request: IRequest) -> bytes:
        """The peer this origin seeds as: ``{peer_id, ip, port, origin: true}``."""
        return json_response(request, self.peer.to_dict())

    # -- uploads -----------------------------------------------------------------------

    async def _start(self, request: IRequest, d: Digest, namespace: str | None) -> bytes:
        if len(self._uploads) >= self.max_uploads:
            raise RegistryError(
                TOOMANYREQUESTS,
                f"{len(self._uploads)} uploads are open at this origin (the limit): retry later",
                headers={"Retry-After": str(UPLOAD_RETRY_AFTER)},
            )
        if await self.run(self.store.has, d):
            if namespace is not None:
                await self._ensure_writeback(namespace, d)
            raise APIError(409, f"blob {d} already exists")
        uid = await self.run(self.store.create_upload)
        size = _declared_size(request)
        builder = None
        if size is not None:
            builder = MetaInfoBuilder(self.piece_lengths.for_size(size))
        self._uploads[uid] = _Upload(d, self._now(), size, builder)
        set_header(request, b"Location", uid.encode("ascii"))
        return b""

    def _upload(self, uid: str, d: Digest) -> _Upload:
        upload = self._uploads.get(uid)
        if upload is None or upload.digest != d:
            raise UploadNotFound(uid, f"no upload {uid} of {d}")
        return upload

    def _plan_chunk(self, head: RequestHead, args: Mapping[str, Any]) -> BodyPlan:
        """On a PATCH's head: check it continues its upload, then stream it into the file."""
        if "namespace" in args:
            _namespace(args["namespace"])
        uid = args["uid"]
        upload = self._upload(uid, _digest(args["digest"]))
        start, end = parse_content_range(head.headers.getRawHeaders(b"content-range", [None])[0])
        length = end - start
        if length > self.max_chunk:
            raise RegistryError(
                RANGE_INVALID, f"chunk of {length} bytes exceeds the limit of {self.max_chunk}"
            )
        if upload.busy:
            raise RegistryError(BLOB_UPLOAD_INVALID, f"upload {uid} is busy with another request")
        if start != upload.next_offset:
            raise RegistryError(
                RANGE_INVALID,
                f"Content-Range {start}-{end} does not continue upload {uid}, which has "
                f"{upload.next_offset} bytes (chunks must be sent in order, without overlap)",
            )
        if head.content_length is not None and head.content_length != length:
            raise RegistryError(
                SIZE_INVALID,
                f"body of {head.content_length} bytes does not match Content-Range "
                f"{start}-{end} ({length} bytes)",
            )
        upload.busy = True
        builder = upload.builder
        sink = StreamingSink(
            self.run,
            partial(self.store.write_upload, uid),
            start,
            feed=None if builder is None else partial(_feed, builder),
            aborted=upload.broken_off,
        )
        return BodyPlan(length, sink, code=SIZE_INVALID)

    async def _patch(self, request: IRequest, args: Mapping[str, str]) -> bytes:
        """The chunk's body has streamed into the upload (see :meth:`_plan_chunk`)."""
        uid, d = args["uid"], _digest(args["digest"])
        sink = body_sink(request, lambda head: self._plan_chunk(head, args))
        upload = self._upload(uid, d)
        start, end = parse_content_range(header(request, b"content-range"))
        try:
            written = await sink.done()
        except UploadNotFound:
            self._uploads.pop(uid, None)
            raise
        finally:
            upload.busy = False
            upload.touched = self._now()
        if written != end - start:
            upload.builder = None
            raise RegistryError(SIZE_INVALID, f"body ended after {written} of {end - start} bytes")
        upload.next_offset = end
        self.metrics.upload_bytes.inc(written)
        if await self.run(self.store.has, d):
            await self._discard(uid)
            raise APIError(409, f"blob {d} already exists")
        set_status(request, 204)
        return b""

    async def _discard(self, uid: str) -> None:
        """Forget upload ``uid`` and remove its files."""
        self._uploads.pop(uid, None)
        with contextlib.suppress(UploadNotFound):
            await self.run(self.store.abort_upload, uid)

    def expire_uploads(self) -> int:
        """Remove uploads no request touched for ``upload_timeout`` seconds; return how many."""
        now = self._now()
        stale = [
            uid
            for uid, u in self._uploads.items()
            if not u.busy and now - u.touched > self.upload_timeout
        ]
        for uid in stale:
            self.log.info(
                "upload {uid} expired after {seconds} s idle", uid=uid, seconds=self.upload_timeout
            )
            d = Deferred.fromCoroutine(self._discard(uid))
            d.addErrback(lambda f: self.log.failure("removing an expired upload", f))
        return len(stale)

    async def _commit(
        self, request: IRequest, uid: str, d: Digest, namespace: str | None, delay: float | None
    ) -> bytes:
        """Commit; ``namespace`` None: internal copy; ``delay`` None: public upload."""
        kind = "internal" if namespace is None else ("public" if delay is None else "duplicate")
        upload = self._upload(uid, d)
        if upload.busy:
            raise RegistryError(BLOB_UPLOAD_INVALID, f"upload {uid} is busy with another request")
        upload.busy = True
        try:
            hashed = upload.hashed()
            await self.run(
                self.store.commit_upload,
                uid,
                d,
                self.piece_lengths,
                persist=namespace is not None,
                hashed=hashed,
            )
        except BlobExists:
            self.metrics.commits.labels(kind, "exists").inc()
            if namespace is not None:
                await self._ensure_writeback(namespace, d)
            raise
        except Exception:
            self.metrics.commits.labels(kind, "failed").inc()
            await self._discard(uid)
            raise
        finally:
            self._uploads.pop(uid, None)
        if namespace is not None:
            # Acknowledge only once the write-back task is durable.
            await self.writeback.schedule(namespace, d, delay or 0.0)
        self.metrics.commits.labels(kind, "ok").inc()
        self.log.info("committed {digest} ({kind} upload)", digest=d, kind=kind)
        if kind == "public":
            assert namespace is not None
            self._background(self.replicator.duplicate(namespace, d))
        return b""

    async def _ensure_writeback(self, namespace: str, d: Digest) -> None:
        if self.writeback.pending(namespace, d):
            return
        try:
            await self.run(self.store.set_persist, d, True)
        except StoreBlobNotFound:
            return
        await self.writeback.schedule(namespace, d)

    @app.route("/namespace/<path:namespace>/blobs/<digest>/uploads", methods=["POST"])
    async def start_upload(self, request: IRequest, namespace: str, digest: str) -> bytes:
        """Start a chunked upload; ``Location: <uid>``."""
        ns, d = _namespace(namespace), _digest(digest)
        return await self._start(request, d, ns)

    @app.route("/namespace/<path:namespace>/blobs/<digest>/uploads/<uid>", methods=["PATCH"])
    async def patch_upload(self, request: IRequest, namespace: str, digest: str, uid: str) -> bytes:
        """Write one chunk."""
        return await self._patch(request, {"namespace": namespace, "digest": digest, "uid": uid})

    @app.route("/namespace/<path:namespace>/blobs/<digest>/uploads/<uid>", methods=["PUT"])
    async def commit_upload(
        self, request: IRequest, namespace: str, digest: str, uid: str
    ) -> bytes:
        """Verify and commit; acknowledged once the write-back is queued durably."""
        ns, d = _namespace(namespace), _digest(digest)
        return await self._commit(request, uid, d, ns, None)

    @app.route("/internal/blobs/<digest>/uploads", methods=["POST"])
    async def start_internal(self, request: IRequest, digest: str) -> bytes:
        """Start a copy from another replica."""
        return await self._start(request, _digest(digest), None)

    @app.route("/internal/blobs/<digest>/uploads/<uid>", methods=["PATCH"])
    async def patch_internal(self, request: IRequest, digest: str, uid: str) -> bytes:
        """One chunk of a copy from another replica."""
        return await self._patch(request, {"digest": digest, "uid": uid})

    @app.route("/internal/blobs/<digest>/uploads/<uid>", methods=["PUT"])
    async def commit_internal(self, request: IRequest, digest: str, uid: str) -> bytes:
        """Commit a copy from another replica (no write-back: the backend has it)."""
        return await self._commit(request, uid, _digest(digest), None, None)

    @app.route(
        "/internal/duplicate/namespace/<path:namespace>/blobs/<digest>/uploads", methods=["POST"]
    )
    async def start_duplicate(self, request: IRequest, namespace: str, digest: str) -> bytes:
        """Start a duplicate of a client upload from the owner."""
        ns, d = _namespace(namespace), _digest(digest)
        return await self._start(request, d, ns)

    @app.route(
        "/internal/duplicate/namespace/<path:namespace>/blobs/<digest>/uploads/<uid>",
        methods=["PATCH"],
    )
    async def patch_duplicate(
        self, request: IRequest, namespace: str, digest: str, uid: str
    ) -> bytes:
        """One chunk of a duplicate."""
        args = {"namespace": namespace, "digest": digest, "uid": uid}
        return await self._patch(request, args)

    @app.route(
        "/internal/duplicate/namespace/<path:namespace>/blobs/<digest>/uploads/<uid>",
        methods=["PUT"],
    )
    async def commit_duplicate(
        self, request: IRequest, namespace: str, digest: str, uid: str
    ) -> bytes:
        """Commit a duplicate; its write-back waits ``delay_seconds`` (JSON body)."""
        ns, d = _namespace(namespace), _digest(digest)
        delay = _duplicate_delay(read_json(request, 4096) if _has_body(request) else {})
        return await self._commit(request, uid, d, ns, delay)

    # -- downloads ---------------------------------------------------------------------

    async def _fetch_or_raise(self, namespace: str, d: Digest, request: IRequest) -> bytes:
        await self.fetcher.request(namespace, d)
        set_status(request, 202)
        return b""

    @app.route("/namespace/<path:namespace>/blobs/<digest>", methods=["GET"])
    async def get_blob(self, request: IRequest, namespace: str, digest: str) -> bytes:
        """Stream the cached blob (Range supported; ``os.sendfile`` on plain TCP), or 202
        while fetching it from the backend."""
        ns, d = _namespace(namespace), _digest(digest)
        try:
            sent = await serve_blob(request, self.store, d, self.run)
        except StoreBlobNotFound:
            return await self._fetch_or_raise(ns, d, request)
        self.metrics.served_bytes.inc(sent)
        return b""

    @app.route("/namespace/<path:namespace>/blobs/<digest>/prefetch", methods=["POST"])
    async def prefetch(self, request: IRequest, namespace: str, digest: str) -> bytes:
        """200 if cached, else start a backend fetch: 202 (404 if the backend lacks it)."""
        ns, d = _namespace(namespace), _digest(digest)
        if await self.run(self.store.has, d):
            return b""
        return await self._fetch_or_raise(ns, d, request)

    @app.route("/internal/namespace/<path:namespace>/blobs/<digest>", methods=["HEAD"])
    async def stat(self, request: IRequest, namespace: str, digest: str) -> bytes:
        """The size, from the cache or (unless ``?local=true``) the backend; 404."""
        ns, d = _namespace(namespace), _digest(digest)
        try:
            size = (await self.run(self.store.stat, d)).size
        except StoreBlobNotFound:
            if request.args.get(b"local", [b""])[0] == b"true":
                raise
            size = (await self.backends.backend_for(ns).stat(ns, d.hex)).size
        set_header(request, b"Content-Length", str(size).encode())
        return b""

    @app.route("/internal/namespace/<path:namespace>/blobs/<digest>/metainfo", methods=["GET"])
    async def metainfo(self, request: IRequest, namespace: str, digest: str) -> bytes:
        """The blob's metainfo JSON, or 202 while it is fetched from the backend, or 404."""
        ns, d = _namespace(namespace), _digest(digest)
        if await self.run(self.store.has, d):
            try:
                meta = await self.run(self.store.get_metainfo, d)
            except StoreBlobNotFound:
                pass
            else:
                set_header(request, b"Content-Type", b"application/json")
                return meta.to_json()
        return await self._fetch_or_raise(ns, d, request)

    @app.route("/internal/blobs/<digest>", methods=["DELETE"])
    async def delete(self, request: IRequest, digest: str) -> bytes:
        """Delete the cache file (not the backend's copy); 202, 404, 409 if persisted or open."""
        d = _digest(digest)
        await self.run(self.store.delete, d)
        set_status(request, 202)
        return b""


def _declared_size(request: IRequest) -> int | None:
    """The ``?size=`` of an upload's POST, if it is a plausible byte count."""
    raw = request.args.get(b"size", [b""])[0]
    if not raw.isdigit() or len(raw) > 19:
        return None
    return int(raw)


def _has_body(request: IRequest) -> bool:
    return _body_length(request.content) > 0


def _duplicate_delay(body: object) -> float:
    """Seconds of write-back delay from ``{"delay_seconds": s}`` or Go's ``{"Delay": ns}``."""
    if not isinstance(body, dict):
        raise APIError(400, "duplicate commit body: expected a JSON object")
    if "delay_seconds" in body:
        value = body["delay_seconds"]
        scale = 1.0
    else:
        value = body.get("Delay", 0)
        scale = 1e-9
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise APIError(400, f"duplicate commit delay {value!r}: expected a number >= 0")
    if value * scale > 365 * 24 * 3600:
        raise APIError(400, f"duplicate commit delay {value!r} is too long")
    return float(value) * scale
