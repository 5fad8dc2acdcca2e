"""
The read-only registry backend: pull-through from an upstream Docker registry (API v2).

The namespace is the upstream repository.  What a name means:

- a blob ``<hex>``: ``HEAD``/``GET /v2/<namespace>/blobs/sha256:<hex>``, falling back to
  ``/v2/<namespace>/manifests/sha256:<hex>`` when the registry has no such blob (a manifest
  asked for by digest, as Go Kraken's ``registry_blob`` does);
- a tag ``<repo>:<tag>``: ``/v2/<repo>/manifests/<tag>`` with an ``Accept`` list of Docker
  schema 2, Docker manifest list, OCI manifest and OCI index.  The object is the manifest's
  digest as text (``sha256:<hex>``, 71 bytes), as Go Kraken's ``registry_tag``: stat takes it
  from ``Docker-Content-Digest``, download hashes the manifest it gets (at most 4 MiB).

Authentication follows the registry's challenge: a request without credentials that gets a
401 reads ``WWW-Authenticate``; ``Basic`` is answered with the configured user and password,
``Bearer realm=...,service=...,scope=...`` by asking the realm for a token (with the
configured user and password, if any, else anonymously) which is then cached per repository
until its ``expires_in`` (60 s when unsaid).  Upload and list fail with
:class:`OperationNotSupported`.

All HTTP goes through a :class:`~kraken.http.client.KrakenHTTPClient`; the backend built from
config owns its :class:`~kraken.http.client.HTTPClientFactory`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import quote

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kraken.backends.config import BackendContext
from kraken.backends.http import (
    DEFAULT_IDLE_TIMEOUT,
    discard_body,
    response_length,
    stream_response,
)
from kraken.backends.interface import (
    DEFAULT_LIST_LIMIT,
    BackendError,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListResult,
    OperationNotSupported,
    TransferStopped,
    UploadSource,
)
from kraken.backends.names import (
    BlobName,
    TagName,
    check_namespace,
    name_error,
    parse_name,
    unsupported_list,
)
from kraken.config.backends import DEFAULT_REGISTRY_TIMEOUT, RegistryOptions
from kraken.core import parse_json
from kraken.core.names import is_segment
from kraken.http.client import HTTPClientFactory, KrakenHTTPClient, TreqResponse, read_body

#: Media types a tag may resolve to, in the order we prefer them.
MANIFEST_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

#: Largest manifest read into memory (the distribution registry's own limit is 4 MiB).
MAX_MANIFEST_SIZE = 4 << 20

#: Largest token response read into memory.
MAX_TOKEN_RESPONSE = 1 << 20

#: Seconds a bearer token lives when the token server does not say.
DEFAULT_TOKEN_LIFETIME = 60.0

#: Seconds per request attempt (Go Kraken's registry ``timeout``).
DEFAULT_TIMEOUT = DEFAULT_REGISTRY_TIMEOUT

_DIGEST_TEXT_SIZE = len("sha256:") + 64
_PARAMETER = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class RegistryAuthError(BackendError):
    """The upstream registry refused our credentials (or wanted some and we have none)."""


class RegistryProtocolError(BackendError):
    """The upstream registry (or its token server) answered something we cannot use."""


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split a ``WWW-Authenticate`` value into its lower-cased scheme and its parameters."""
    scheme, _, rest = header.strip().partition(" ")
    parameters = {
        match.group(1).lower(): (
            match.group(3) if match.group(2) is None else re.sub(r"\\(.)", r"\1", match.group(2))
        )
        for match in _PARAMETER.finditer(rest)
    }
    return scheme.lower(), parameters


@frozen
class RegistryCredentials:
    """A user and password for basic auth, or for getting bearer tokens."""

    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The ``Authorization`` value for basic auth."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@frozen
class _Token:
    value: str = field(repr=False)
    expires: float


def _base_url(address: str) -> str:
    if "://" not in address:
        address = "https://" + address
    if not address.startswith(("http://", "https://")):
        raise ValueError(f"registry address {address!r} must be host[:port] or an http(s) URL")
    return address.rstrip("/")


def _repository(namespace: str) -> str:
    check_namespace(namespace)
    if not all(is_segment(s) for s in namespace.split("/")):
        raise InvalidName(f"invalid namespace {namespace!r}: not a registry repository")
    return namespace


@implementer(IBackend)
@define
class RegistryBackend:
    """An :class:`IBackend` reading blobs and tags from an upstream registry."""

    address: str = field(converter=_base_url)
    """``http://host:port``, ``https://host``, or ``host[:port]`` (meaning https)."""

    http: KrakenHTTPClient
    """The client every request goes through."""

    clock: IReactorTime
    """Tells when cached tokens expire."""

    credentials: RegistryCredentials | None = None
    """For basic auth and token requests; anonymous when ``None``."""

    factory: HTTPClientFactory | None = None
    """The factory ``http`` came from, closed by :meth:`close` when the backend owns it."""

    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    """Seconds a blob body may stall (while not paused) before the download fails."""

    kind: ClassVar[str] = "registry"
    log: ClassVar[Logger] = Logger()

    _tokens: dict[str, _Token] = field(factory=dict, init=False, repr=False)
    _basic: bool = field(default=False, init=False)

    def _url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self.address}/v2/{repository}/{kind}/{quote(reference, safe=':')}"

    def _authorization(self, repository: str) -> str | None:
        token = self._tokens.get(repository)
        if token is not None:
            if token.expires > self.clock.seconds():
                return f"Bearer {token.value}"
            del self._tokens[repository]
        if self._basic and self.credentials is not None:
            return self.credentials.basic()
        return None

    async def _request(
        self, method: str, repository: str, url: str, accept: str | None = None
    ) -> TreqResponse:
        """Send with what auth we have; answer one 401 challenge; fire with a 200 or 404."""
        for attempt in range(2):
            headers: dict[str | bytes, str | bytes] = {}
            if accept is not None:
                headers[b"Accept"] = accept.encode("ascii")
            authorization = self._authorization(repository)
            if authorization is not None:
                headers[b"Authorization"] = authorization.encode("ascii")
            response = await self.http.request(method, url, headers=headers, ok=(200, 401, 404))
            if response.code != 401:
                return response
            await discard_body(response)
            challenges = response.headers.getRawHeaders(b"www-authenticate") or []
            if attempt == 1 or not challenges:
                raise RegistryAuthError(
                    f"{method} {url}: unauthorized"
                    + (" (with credentials)" if authorization else " (no challenge)")
                )
            await self._answer(repository, challenges[0].decode("latin-1"), url)
        raise AssertionError("unreachable")

    async def _answer(self, repository: str, challenge: str, url: str) -> None:
        scheme, parameters = parse_challenge(challenge)
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryAuthError(f"{url} wants basic auth and no credentials are set")
            self._basic = True
        elif scheme == "bearer":
            self._tokens[repository] = await self._fetch_token(repository, parameters)
        else:
            raise RegistryAuthError(f"{url}: unsupported auth challenge {challenge!r}")

    async def _fetch_token(self, repository: str, challenge: Mapping[str, str]) -> _Token:
        realm = challenge.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise RegistryProtocolError(f"bearer challenge without a usable realm: {challenge}")
        params = [("scope", challenge.get("scope") or f"repository:{repository}:pull")]
        if "service" in challenge:
            params.insert(0, ("service", challenge["service"]))
        headers: dict[str | bytes, str | bytes] = {}
        if self.credentials is not None:
            headers[b"Authorization"] = self.credentials.basic().encode("ascii")
        response = await self.http.get(realm, params=params, headers=headers, ok=(200, 401, 403))
        if response.code != 200:
            await discard_body(response)
            raise RegistryAuthError(f"token server {realm} refused us: HTTP {response.code}")
        try:
            answer = parse_json(await read_body(response, MAX_TOKEN_RESPONSE), "token answer")
            value = answer.get("token") or answer.get("access_token")
            lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError) as e:
            raise RegistryProtocolError(f"bad token response from {realm}: {e}") from None
        if not isinstance(value, str) or not value:
            raise RegistryProtocolError(f"token response from {realm} holds no token")
        self.log.debug(
            "got a token for {repository} from {realm}", repository=repository, realm=realm
        )
        return _Token(value, self.clock.seconds() + max(lifetime - 5, 1))

    async def _locate_blob(self, method: str, namespace: str, name: BlobName) -> TreqResponse:
        """The 200 response for a blob, trying blobs/ then manifests/; BlobNotFound if neither."""
        repository = _repository(namespace)
        reference = f"sha256:{name.hex}"
        for kind, accept in [("blobs", None), ("manifests", MANIFEST_ACCEPT)]:
            response = await self._request(
                method, repository, self._url(repository, kind, reference), accept
            )
            if response.code == 200:
                return response
            await discard_body(response)
        raise BlobNotFound(namespace, name.hex)

    async def _manifest(self, method: str, namespace: str, tag: TagName) -> TreqResponse:
        check_namespace(namespace)
        response = await self._request(
            method, tag.repo, self._url(tag.repo, "manifests", tag.tag), MANIFEST_ACCEPT
        )
        if response.code == 404:
            await discard_body(response)
            raise BlobNotFound(namespace, str(tag))
        return response

    def stat(self, namespace: str, name: str) -> Deferred[BlobInfo]:
        """See :meth:`IBackend.stat`: a ``HEAD``; a tag's size is that of its digest text."""
        return ensureDeferred(self._stat(namespace, name))

    async def _stat(self, namespace: str, name: str) -> BlobInfo:
        parsed = parse_name(name)
        if isinstance(parsed, BlobName):
            response = await self._locate_blob("HEAD", namespace, parsed)
            await discard_body(response)
            size = response_length(response)
            if size is None:
                raise RegistryProtocolError(f"HEAD of {name} in {namespace}: no Content-Length")
            return BlobInfo(size)
        response = await self._manifest("HEAD", namespace, parsed)
        await discard_body(response)
        return BlobInfo(_DIGEST_TEXT_SIZE)

    def download(self, namespace: str, name: str, consumer: IConsumer) -> Deferred[int]:
        """See :meth:`IBackend.download`: a blob streamed, or a tag's manifest digest."""
        return ensureDeferred(self._download(namespace, name, consumer))

    async def _download(self, namespace: str, name: str, consumer: IConsumer) -> int:
        parsed = parse_name(name)
        if isinstance(parsed, BlobName):
            response = await self._locate_blob("GET", namespace, parsed)
            return await stream_response(
                response, consumer, clock=self.clock, idle_timeout=self.idle_timeout
            )
        response = await self._manifest("GET", namespace, parsed)
        manifest = await read_body(response, MAX_MANIFEST_SIZE)
        digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}".encode("ascii")
        return _write_once(consumer, digest)

    def upload(self, namespace: str, name: str, source: UploadSource) -> Deferred[None]:
        """Fail with :class:`OperationNotSupported` (or :class:`InvalidName`)."""
        return fail(name_error(namespace, name) or OperationNotSupported(self.kind, "upload"))

    def delete(self, namespace: str, name: str) -> Deferred[None]:
        """Fail with :class:`OperationNotSupported` (or :class:`InvalidName`)."""
        return fail(name_error(namespace, name) or OperationNotSupported(self.kind, "delete"))

    def list(
        self,
        prefix: str,
        limit: int = DEFAULT_LIST_LIMIT,
        continuation_token: str | None = None,
    ) -> Deferred[ListResult]:
        """Fail with :class:`OperationNotSupported` (or :class:`InvalidName`)."""
        return unsupported_list(self.kind, prefix, limit)

    def close(self) -> Deferred[None]:
        """Close the pooled connections of the factory this backend owns."""
        return succeed(None) if self.factory is None else self.factory.close()


@implementer(IPushProducer)
class _OneWrite:
    """The producer of a single in-memory write; stopping it before the write cancels it."""

    stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


def _write_once(consumer: IConsumer, data: bytes) -> int:
    producer = _OneWrite()
    consumer.registerProducer(producer, True)
    try:
        consumer.write(data)
    finally:
        consumer.unregisterProducer()
    if producer.stopped:
        raise TransferStopped(f"consumer stopped the transfer after {len(data)} bytes")
    return len(data)


def build_registry_backend(options: RegistryOptions, context: BackendContext) -> IBackend:
    """A :class:`RegistryBackend` for the checked ``registry`` options, with its own client
    factory on the context's reactor."""
    credentials = (
        RegistryCredentials(options.username, options.password)
        if options.username is not None and options.password is not None
        else None
    )
    factory = HTTPClientFactory(context.reactor, timeout=options.timeout)
    return RegistryBackend(options.address, factory.client(), context.reactor, credentials, factory)
