"""
The agent's read-only Docker registry v2 (DESIGN 8, reference 1.3), on 127.0.0.1:16000 by default.

- ``GET /v2/``: ``{}``;
- ``GET|HEAD /v2/<name>/manifests/<tag|digest>``: a tag resolves through the
  build-index (cached ``tag_ttl`` seconds, default 5, so mutable tags
  work); the manifest blob is then fetched like any blob with namespace =
  ``<name>`` and served with the ``Content-Type`` read from its own
  ``mediaType`` (Docker schema 2, manifest list, OCI manifest, OCI index),
  ``Docker-Content-Digest`` and ``Content-Length``;
- ``GET|HEAD /v2/<name>/blobs/<digest>``: downloaded over P2P on a miss,
  then served (``Range`` supported), as the agent API serves blobs;
- ``GET /v2/<name>/tags/list`` and ``GET /v2/_catalog`` from the build-index,
  sorted, with ``n``/``last`` pagination and ``Link: <...>; rel="next"``, as the
  proxy answers them;
- ``GET /v2/<name>/referrers/<digest>[?artifactType=]``: the referrers index the
  proxy keeps under the tag ``sha256-<hex>`` (:mod:`kraken.api.referrers`),
  resolved through the build-index and downloaded like any manifest; an empty
  index when there is none;
- everything else a read-write registry does (uploads, manifest PUT,
  deletes) answers the v2 error JSON: 405 ``UNSUPPORTED`` with an ``Allow`` header.

A manifest reference that is neither a tag nor a digest is a manifest that does
not exist: 404 ``MANIFEST_UNKNOWN``, as the spec wants.

Clients outside ``allowed_networks`` get 403 ``DENIED``.  Repository names
are validated with the distribution spec's grammar (400 ``NAME_INVALID``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import ClassVar, Final
from urllib.parse import urlencode

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from kraken.api.agent import AgentAPI, ManifestTooLarge, read_manifest
from kraken.api.distribution import (
    API_VERSION_HEADER,
    OCI_IMAGE_INDEX,
    is_tag,
    manifest_media_type,
    parse_v2_path,
    stored_reference,
)
from kraken.api.proxy import page_args, paginate, tag_repository
from kraken.api.referrers import FILTERS_APPLIED_HEADER, filter_referrers, referrers_tag
from kraken.clients.buildindex import (
    BuildIndexUnavailable,
    InvalidBuildIndexResponse,
    TagNotFound,
    TagRejected,
)
from kraken.core import Digest, InvalidDigest
from kraken.http.client import HTTPStatusError
from kraken.http.errors import (
    BLOB_UNKNOWN,
    CORE_ERRORS,
    DENIED,
    DIGEST_INVALID,
    MANIFEST_UNKNOWN,
    NAME_INVALID,
    NAME_UNKNOWN,
    UNAVAILABLE,
    UNKNOWN,
    UNSUPPORTED,
    APIError,
    RegistryError,
    install_error_handler,
    render_registry_json,
)
from kraken.peers.cache import CollapsingCache
from kraken.protocols.downloader import BlobUnknown, DownloadError
from kraken.store import BlobNotFound

__all__ = ["DEFAULT_TAG_TTL", "REGISTRY_ERRORS", "RegistryAPI", "parse_networks"]

DEFAULT_TAG_TTL: Final = 5.0
_ALL_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_READ: Final = {"Allow": "GET, HEAD"}

REGISTRY_ERRORS: Final = CORE_ERRORS.extended(
    {
        DownloadError: UNKNOWN,
        BuildIndexUnavailable: UNAVAILABLE,
        InvalidBuildIndexResponse: UNKNOWN,
        HTTPStatusError: UNKNOWN,
        ManifestTooLarge: UNKNOWN,
        TagRejected: NAME_INVALID,
    },
    daemon="agent",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """``ip_network`` of each CIDR (host bits allowed)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _link(request: IRequest, path: str, n: int, last: str) -> None:
    query = urlencode({"n": str(n), "last": last})
    request.setHeader(b"Link", f'<{path}?{query}>; rel="next"'.encode())  # type: ignore[no-untyped-call]


def _allowed(host: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@define
class RegistryAPI:
    """The read-only registry v2 Klein application; mount :meth:`resource`.

    ``server`` is the agent API whose download-and-serve path blobs share.
    ``allowed_networks`` None admits every client.
    """

    app: ClassVar[Klein] = Klein()
    install_error_handler(app, REGISTRY_ERRORS, render_registry_json)
    log: ClassVar[Logger] = Logger()

    server: AgentAPI
    clock: IReactorTime
    allowed_networks: tuple[Network, ...] | None = None
    tag_ttl: float = DEFAULT_TAG_TTL
    _tags: CollapsingCache[str, Digest] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._tags = CollapsingCache(self.clock, lambda _: self.tag_ttl)

    def resource(self) -> IResource:
        """The ``twisted.web`` resource serving this API."""
        return self.app.resource()

    def _begin(self, request: IRequest) -> None:
        request.setHeader(*API_VERSION_HEADER)  # type: ignore[no-untyped-call]
        if self.allowed_networks is None:
            return
        host = getattr(request.getClientAddress(), "host", None)  # type: ignore[no-untyped-call]
        if not isinstance(host, str) or not _allowed(host, self.allowed_networks):
            raise RegistryError(DENIED, f"client {host} is not allowed to use this registry")

    @app.route("/v2/", methods=_ALL_METHODS)
    @app.route("/v2", methods=_ALL_METHODS)
    def base(self, request: IRequest) -> bytes:
        """The API version check: ``{}``."""
        self._begin(request)
        if request.method not in (b"GET", b"HEAD"):
            raise RegistryError(UNSUPPORTED, headers=_READ)
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        return b"{}"

    @app.route("/v2/<path:rest>", methods=_ALL_METHODS)
    async def v2(self, request: IRequest, rest: str) -> bytes:
        """Every repository route: dispatch on the path's kind and the method."""
        self._begin(request)
        read = request.method in (b"GET", b"HEAD")
        if rest.rstrip("/") == "_catalog":
            if not read:
                raise RegistryError(UNSUPPORTED, "the catalog is read-only", headers=_READ)
            return await self._catalog(request)
        path = parse_v2_path(rest)
        if path is None:
            raise APIError(404, f"no registry route for /v2/{rest[:200]}", code=UNSUPPORTED)
        if path.kind == "uploads":
            raise RegistryError(
                UNSUPPORTED, "the agent registry is read-only: push to the proxy", headers={}
            )
        if not read:
            raise RegistryError(UNSUPPORTED, "the agent registry is read-only", headers=_READ)
        if path.kind == "tags":
            return await self._tag_list(request, path.name)
        if path.kind == "referrers":
            return await self._referrers(request, path.name, path.rest)
        if path.kind == "manifests":
            await self._manifest(request, path.name, path.rest)
        else:
            await self._blob(request, path.name, Digest.parse(path.rest))
        return b""

    def _resolve(self, name: str, tag: str) -> Deferred[Digest]:
        key = f"{name}:{tag}"
        return self._tags.get(key, lambda: self.server.tags.get_tag(key))

    async def _manifest(self, request: IRequest, name: str, reference: str) -> None:
        ref = stored_reference(name, reference)
        data, digest = await self._manifest_bytes(name, ref)
        media_type = manifest_media_type(data)
        request.setHeader(b"Content-Type", media_type.encode("ascii"))  # type: ignore[no-untyped-call]
        request.setHeader(b"Docker-Content-Digest", str(digest).encode("ascii"))  # type: ignore[no-untyped-call]
        request.setHeader(b"ETag", f'"{digest}"'.encode("ascii"))  # type: ignore[no-untyped-call]
        request.setHeader(b"Content-Length", b"%d" % len(data))  # type: ignore[no-untyped-call]
        if request.method != b"HEAD":
            request.write(data)  # type: ignore[no-untyped-call]

    async def _manifest_bytes(self, name: str, ref: Digest | str) -> tuple[bytes, Digest]:
        """A manifest's bytes and digest, its tag resolved, downloaded into the cache."""
        if isinstance(ref, Digest):
            digest = ref
        else:
            try:
                digest = await self._resolve(name, ref)
            except TagNotFound:
                raise RegistryError(MANIFEST_UNKNOWN, f"manifest unknown: {name}:{ref}") from None
        downloader = self.server.downloader
        run = self.server.run_blocking
        for attempt in (1, 2):
            try:
                await downloader.download(name, digest)
            except BlobUnknown:
                raise RegistryError(MANIFEST_UNKNOWN, f"manifest unknown: {digest}") from None
            try:
                data: bytes = await run(read_manifest, self.server.store, digest)
                break
            except BlobNotFound:
                if attempt == 2:
                    raise
        return data, digest

    # -- listings and referrers -------------------------------------------------------------

    async def _tag_list(self, request: IRequest, name: str) -> bytes:
        n, last = page_args(request)
        tags = [t for t in await self.server.tags.repository_tags(name) if is_tag(t)]
        if not tags:
            raise RegistryError(NAME_UNKNOWN, f"repository {name} has no tags")
        page, more = paginate(tags, n, last)
        if more and n:
            _link(request, f"/v2/{name}/tags/list", n, page[-1])
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        return json.dumps({"name": name, "tags": page}).encode("utf-8")

    async def _catalog(self, request: IRequest) -> bytes:
        n, last = page_args(request)
        entries = await self.server.tags.list_tags("")
        repositories = {r for r in map(tag_repository, entries) if r is not None}
        page, more = paginate(repositories, n, last)
        if more and n:
            _link(request, "/v2/_catalog", n, page[-1])
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        return json.dumps({"repositories": page}).encode("utf-8")

    async def _referrers(self, request: IRequest, name: str, raw: str) -> bytes:
        try:
            subject = Digest.parse(raw)
        except InvalidDigest as e:
            raise RegistryError(DIGEST_INVALID, str(e)) from None
        index: bytes | None
        try:
            index, _ = await self._manifest_bytes(name, referrers_tag(subject))
        except RegistryError as e:
            if e.code is not MANIFEST_UNKNOWN:
                raise
            index = None
        values = (request.args or {}).get(b"artifactType")
        artifact_type = values[0].decode("utf-8", "replace") if values else None
        if artifact_type is not None:
            request.setHeader(FILTERS_APPLIED_HEADER.encode("ascii"), b"artifactType")  # type: ignore[no-untyped-call]
        request.setHeader(b"Content-Type", OCI_IMAGE_INDEX.encode("ascii"))  # type: ignore[no-untyped-call]
        return filter_referrers(index, artifact_type)

    async def _blob(self, request: IRequest, name: str, digest: Digest) -> None:
        self.server.metrics.blob_requests.labels("registry").inc()
        try:
            await self.server.serve(
                request,
                name,
                digest,
                api="registry",
                headers={
                    b"Docker-Content-Digest": str(digest).encode("ascii"),
                    b"ETag": f'"{digest}"'.encode("ascii"),
                },
            )
        except BlobUnknown:
            raise RegistryError(BLOB_UNKNOWN, f"blob unknown: {digest}") from None
