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
- everything else a read-write registry does (uploads, manifest PUT,
  deletes, tag listing, catalog) answers the v2 error JSON: 405
  ``UNSUPPORTED`` with an ``Allow`` header.

Clients outside ``allowed_networks`` get 403 ``DENIED``.  Repository names
are validated with the distribution spec's grammar (400 ``NAME_INVALID``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import ClassVar, Final

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
    manifest_media_type,
    parse_reference,
    parse_v2_path,
)
from kraken.core import Digest
from kraken.http.client import HTTPStatusError
from kraken.http.errors import (
    BLOB_UNKNOWN,
    CORE_ERRORS,
    DENIED,
    MANIFEST_UNKNOWN,
    NAME_INVALID,
    UNAVAILABLE,
    UNKNOWN,
    UNSUPPORTED,
    APIError,
    RegistryError,
    install_error_handler,
    render_registry_json,
)
from kraken.peers.cache import CollapsingCache
from kraken.protocols.buildindex_client import (
    BuildIndexUnavailable,
    InvalidBuildIndexResponse,
    TagNotFound,
    TagRejected,
)
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
        if rest == "_catalog":
            raise RegistryError(UNSUPPORTED, "the agent registry does not list repositories")
        path = parse_v2_path(rest)
        if path is None:
            raise APIError(404, f"no registry route for /v2/{rest[:200]}", code=UNSUPPORTED)
        if path.kind == "uploads":
            raise RegistryError(UNSUPPORTED, "the agent registry is read-only: push to the proxy")
        if path.kind == "tags":
            raise RegistryError(UNSUPPORTED, "the agent registry does not list tags", headers={})
        if request.method not in (b"GET", b"HEAD"):
            raise RegistryError(UNSUPPORTED, "the agent registry is read-only", headers=_READ)
        if path.kind == "manifests":
            await self._manifest(request, path.name, path.rest)
        else:
            await self._blob(request, path.name, Digest.parse(path.rest))
        return b""

    def _resolve(self, name: str, tag: str) -> Deferred[Digest]:
        key = f"{name}:{tag}"
        return self._tags.get(key, lambda: self.server.tags.get_tag(key))

    async def _manifest(self, request: IRequest, name: str, reference: str) -> None:
        ref = parse_reference(reference)
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
        media_type = manifest_media_type(data)
        request.setHeader(b"Content-Type", media_type.encode("ascii"))  # type: ignore[no-untyped-call]
        request.setHeader(b"Docker-Content-Digest", str(digest).encode("ascii"))  # type: ignore[no-untyped-call]
        request.setHeader(b"ETag", f'"{digest}"'.encode("ascii"))  # type: ignore[no-untyped-call]
        request.setHeader(b"Content-Length", b"%d" % len(data))  # type: ignore[no-untyped-call]
        if request.method != b"HEAD":
            request.write(data)  # type: ignore[no-untyped-call]

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
