"""
Mutual TLS between Kraken components, in the daemons themselves (no nginx in front).

One :class:`ClusterTLS` is loaded per daemon from its ``tls:`` configuration
section (:class:`kraken.config.TLSConfig`) and gives each daemon, in one line
each:

* :meth:`ClusterTLS.server_endpoint`: the daemon's API listener, wrapped in TLS
  (>= 1.2) when ``cert``/``key`` are set.  Client certificates are requested,
  never required at the handshake, and verified against the cluster CA: a
  certificate from another CA, an expired one or one not yet valid makes the
  handshake fail; no certificate at all is allowed so that reads stay open.
* :meth:`ClusterTLS.guard`: wraps the daemon's root resource so that, on its
  TLS listener, a request that changes state (any method but GET and HEAD),
  or any request when ``require_client_cert_for_reads`` is set, gets a 403
  with a clear body unless the connection presented a certificate verified
  against the CA.  This is the only write authorisation Kraken has, as in the
  Go Kraken (where nginx did it).
* :meth:`ClusterTLS.client_policy`: the ``IPolicyForHTTPS`` given to
  :class:`kraken.http.client.HTTPClientFactory` (which then turns every
  ``http://`` into ``https://``): it trusts the cluster CA only, presents the
  client certificate and checks the server's name (``server_name``, else the
  host called) with service_identity.
* :meth:`ClusterTLS.expiry_monitor`: the ``tls_cert_expiry_seconds`` gauge per
  certificate and a warning in the log from 30 days before one expires.

Typical use in a daemon's ``makeService``::

    tls = ClusterTLS.from_config(config.tls)            # reads the files (start-up only)
    http = HTTPClientFactory(reactor, tls=tls.client_policy())
    site = Site(tls.guard(api.resource()))
    endpoint = tls.server_endpoint(serverFromString(reactor, config.server.listen), reactor)
    tls.expiry_monitor(reactor, api.registry).setServiceParent(tree)

With an empty ``tls:`` section every one of these is a no-op.  See
docs/security.md for the model and how to roll certificates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, ClassVar, Final, cast

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from prometheus_client import CollectorRegistry, Gauge
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.iweb import IPolicyForHTTPS, IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from zope.interface import implementer

from kraken.config.sections import TLSConfig
from kraken.http.errors import DENIED, APIError

__all__ = [
    "EXPIRY_CHECK_INTERVAL",
    "EXPIRY_WARNING",
    "MINIMUM_TLS_VERSION",
    "CertificateExpiryMonitor",
    "CertifiedKey",
    "ClientCertificate",
    "ClientCertificateGuard",
    "ClusterClientPolicy",
    "ClusterTLS",
    "TLSFileError",
    "TLSServerEndpoint",
    "check_tls_files",
    "client_certificate_status",
    "register_expiry_gauge",
]

MINIMUM_TLS_VERSION: Final = TLSVersion.TLSv1_2
"""Older protocol versions are refused on both sides."""

EXPIRY_WARNING: Final = 30 * 24 * 3600.0
"""Seconds before a certificate's end at which the log starts warning about it."""

EXPIRY_CHECK_INTERVAL: Final = 24 * 3600.0
"""Seconds between two looks at the certificates' expiry (the gauge is live)."""

_READ_METHODS: Final = frozenset({b"GET", b"HEAD"})


class TLSFileError(Exception):
    """A TLS file that cannot be used: unreadable, not PEM, wrong passphrase, key not matching."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(path, e.strerror or str(e)) from None


def _load_certificates(path: str) -> tuple[x509.Certificate, ...]:
    try:
        certificates = x509.load_pem_x509_certificates(_read(path))
    except ValueError as e:
        raise TLSFileError(path, f"not a PEM certificate file ({e})") from None
    return tuple(certificates)


def _load_key(path: str, passphrase: bytes | None) -> PrivateKeyTypes:
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            reason = "the key is encrypted and no passphrase_file is configured"
        else:
            reason = "the key is not encrypted but a passphrase_file is configured"
        raise TLSFileError(path, reason) from None
    except ValueError as e:
        raise TLSFileError(
            path, f"not a usable PEM private key or wrong passphrase ({e})"
        ) from None


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _not_after(certificate: x509.Certificate) -> float:
    return certificate.not_valid_after_utc.timestamp()


def _subject(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return certificate.subject.rfc4514_string()


@frozen
class CertifiedKey:
    """A certificate chain (leaf first) and the private key of its leaf, read from PEM files."""

    path: str
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes

    @classmethod
    def load(cls, cert_path: str, key_path: str, passphrase: bytes | None = None) -> CertifiedKey:
        """Read and check a pair of files (blocking; call at start-up)."""
        chain = _load_certificates(cert_path)
        key = _load_key(key_path, passphrase)
        if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
            raise TLSFileError(key_path, f"this key does not belong to the certificate {cert_path}")
        return cls(cert_path, chain, key)

    @property
    def leaf(self) -> x509.Certificate:
        """The certificate itself (the rest of the chain are intermediates)."""
        return self.chain[0]

    def openssl_options(self) -> dict[str, Any]:
        """``CertificateOptions`` keyword arguments presenting this certificate."""
        return {
            "privateKey": crypto.PKey.from_cryptography_key(self.key),  # type: ignore[arg-type]
            "certificate": crypto.X509.from_cryptography(self.leaf),
            "extraCertChain": [crypto.X509.from_cryptography(c) for c in self.chain[1:]],
        }


@implementer(IStreamServerEndpoint)
@frozen
class TLSServerEndpoint:
    """A server endpoint whose connections speak TLS over those of ``wrapped``."""

    wrapped: IStreamServerEndpoint
    options: CertificateOptions
    clock: IReactorTime | None = None
    """Schedules the TLS layer's write aggregation (default: the global reactor)."""

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on ``wrapped`` with ``protocolFactory`` behind a TLS layer."""
        tls_factory = TLSMemoryBIOFactory(self.options, False, protocolFactory, self.clock)
        listening: Deferred[IListeningPort] = self.wrapped.listen(tls_factory)
        return listening


class ClientCertificate(Enum):
    """What a request's connection showed of its client certificate."""

    NO_TLS = "no TLS"
    NONE = "no client certificate"
    UNVERIFIED = "a client certificate that did not verify against the cluster CA"
    VERIFIED = "a client certificate verified against the cluster CA"


def client_certificate_status(request: IRequest) -> ClientCertificate:
    """Whether ``request`` came over TLS with a client certificate verified against the CA.

    The server's TLS context refuses at the handshake any certificate that does
    not verify; the verify result is checked again here so that a context
    built without verification can never let a certificate through.
    """
    transport: Any = getattr(request, "transport", None)
    if transport is None or not ISSLTransport.providedBy(transport):
        return ClientCertificate.NO_TLS
    if transport.getPeerCertificate() is None:
        return ClientCertificate.NONE
    handle = cast(Any, transport).getHandle()
    if isinstance(handle, SSL.Connection) and handle.get_verified_chain() is not None:
        return ClientCertificate.VERIFIED
    return ClientCertificate.UNVERIFIED


@implementer(IResource)
class ClientCertificateGuard(Resource):
    """Answers 403 to requests needing a client certificate that have none verified by the CA.

    Writes (any method but GET and HEAD) need one when ``writes`` is set,
    every request when ``reads`` is set.  A request over plain HTTP counts as
    having none: the guard fails closed.  Everything else goes to ``wrapped``.
    With ``registry`` (the proxy's registry port) the 403 body is a registry
    error (``{"errors": [{"code": "DENIED", ...}]}``), which docker and skopeo
    show to their user in full.
    """

    isLeaf = True
    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        wrapped: IResource,
        *,
        writes: bool = True,
        reads: bool = False,
        registry: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.wrapped = wrapped
        self.writes = writes
        self.reads = reads
        self.registry = registry

    def render(self, request: IRequest) -> Any:
        """Refuse with 403, or render the wrapped resource."""
        method = request.method
        needed = self.reads or (self.writes and method not in _READ_METHODS)
        if needed:
            status = client_certificate_status(request)
            if status is not ClientCertificate.VERIFIED:
                return self._forbid(request, status)
        return getChildForRequest(self.wrapped, request).render(request)  # type: ignore[no-untyped-call]

    def _forbid(self, req: IRequest, status: ClientCertificate) -> bytes:
        request: Any = req
        method = request.method.decode("ascii", "replace")
        what = "writes" if method.encode() not in _READ_METHODS else "requests"
        self.log.info(
            "403 for {method} {uri} from {client}: {status}",
            method=method,
            uri=request.uri.decode("ascii", "replace"),
            client=request.getClientAddress(),
            status=status.value,
        )
        message = (
            f"{what} to this server need a client certificate signed by the "
            f"cluster CA (mutual TLS); this connection presented {status.value}"
        )
        request.setResponseCode(403)
        request.setHeader(b"cache-control", b"no-store")
        if self.registry:
            request.setHeader(b"content-type", b"application/json")
            error = {"code": "DENIED", "message": message, "detail": None}
            return json.dumps({"errors": [error]}).encode() + b"\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"403 Forbidden: {message}.\n".encode()


@implementer(IPolicyForHTTPS)
class ClusterClientPolicy:
    """Client TLS for calls between components: the cluster CA only, our client certificate.

    The server's certificate must name ``server_name`` (a DNS name or an IP
    address), or when that is None the host of the URL called; service_identity
    checks it.  One connection creator is kept per name.
    """

    def __init__(
        self,
        cas: Sequence[x509.Certificate],
        client: CertifiedKey | None = None,
        server_name: str | None = None,
    ) -> None:
        if not cas:
            raise ValueError("a client TLS policy needs at least one CA certificate")
        roots = [Certificate(crypto.X509.from_cryptography(ca)) for ca in cas]  # type: ignore[no-untyped-call]
        self._trust_root = trustRootFromCertificates(roots)  # type: ignore[no-untyped-call]
        self._client = client
        self._server_name = server_name
        self._creators: dict[str, IOpenSSLClientConnectionCreator] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """The TLS connection creator for a call to ``hostname:port``."""
        name = self._server_name or hostname.decode("ascii")
        creator = self._creators.get(name)
        if creator is None:
            extra: dict[str, Any] = {"raiseMinimumTo": MINIMUM_TLS_VERSION}
            if self._client is not None:
                extra.update(self._client.openssl_options())
            creator = optionsForClientTLS(
                name, trustRoot=self._trust_root, extraCertificateOptions=extra
            )
            self._creators[name] = creator
        return creator


class CertificateExpiryMonitor(Service):
    """Warns in the log, every ``interval``, about certificates ending within ``warn_before``."""

    def __init__(
        self,
        certificates: Sequence[tuple[str, str, x509.Certificate]],
        clock: IReactorTime,
        warn_before: float = EXPIRY_WARNING,
        interval: float = EXPIRY_CHECK_INTERVAL,
    ) -> None:
        self.certificates = tuple(certificates)
        self.clock = clock
        self.warn_before = warn_before
        self.interval = interval
        self._loop: LoopingCall | None = None

    log: ClassVar[Logger] = Logger()

    def check(self) -> None:
        """Log a warning for each certificate ending soon, an error for each one ended."""
        now = self.clock.seconds()
        for role, path, certificate in self.certificates:
            remaining = _not_after(certificate) - now
            if remaining <= 0:
                self.log.error(
                    "TLS {role} certificate {subject} ({path}) expired on {not_after}; "
                    "connections using it are refused",
                    role=role,
                    subject=_subject(certificate),
                    path=path,
                    not_after=certificate.not_valid_after_utc.isoformat(),
                )
            elif remaining < self.warn_before:
                self.log.warn(
                    "TLS {role} certificate {subject} ({path}) expires in {days:.1f} days, "
                    "on {not_after}; see docs/security.md to roll it",
                    role=role,
                    subject=_subject(certificate),
                    path=path,
                    days=remaining / 86400,
                    not_after=certificate.not_valid_after_utc.isoformat(),
                )

    def startService(self) -> None:
        """Check now, then every ``interval``."""
        Service.startService(self)  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        """Stop checking."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()


def register_expiry_gauge(
    registry: CollectorRegistry,
    certificates: Sequence[tuple[str, str, x509.Certificate]],
    clock: IReactorTime,
) -> Gauge:
    """Register ``tls_cert_expiry_seconds{cert,subject,path}`` in ``registry``.

    Each value is the seconds left until the certificate ends (negative once it
    has), computed with ``clock`` when scraped.
    """
    gauge = Gauge(
        "tls_cert_expiry_seconds",
        "Seconds until the TLS certificate ends (negative: it has ended).",
        ["cert", "subject", "path"],
        registry=registry,
    )
    for role, path, certificate in certificates:
        end = _not_after(certificate)
        child = gauge.labels(cert=role, subject=_subject(certificate), path=path)
        child.set_function(_seconds_left(end, clock.seconds))
    return gauge


def _seconds_left(end: float, now: Callable[[], float]) -> Callable[[], float]:
    return lambda: end - now()


@frozen(kw_only=True)
class ClusterTLS:
    """A daemon's TLS material, loaded from its ``tls:`` section; every part may be off."""

    cas: tuple[x509.Certificate, ...] = ()
    ca_path: str | None = None
    server: CertifiedKey | None = None
    client: CertifiedKey | None = None
    server_name: str | None = None
    require_for_writes: bool = True
    require_for_reads: bool = False
    peer: CertifiedKey | None = None
    """With ``tls.peer``: the certificate of both sides of peer connections."""

    @classmethod
    def from_config(cls, config: TLSConfig, *, serve: bool = True) -> ClusterTLS:
        """Read the files ``config`` names (blocking; call at start-up).

        ``serve=False`` ignores ``cert``/``key`` (the agent's ports stay plain
        HTTP).  Raises :class:`TLSFileError` naming the file at fault.
        """
        passphrase: bytes | None = None
        if config.passphrase_file is not None:
            passphrase = _read(config.passphrase_file).rstrip(b"\r\n")
            if not passphrase:
                raise TLSFileError(config.passphrase_file, "the passphrase file is empty")
        cas: tuple[x509.Certificate, ...] = ()
        if config.ca is not None:
            cas = _load_certificates(config.ca)
        server = client = None
        if serve and config.cert is not None and config.key is not None:
            server = CertifiedKey.load(config.cert, config.key, passphrase)
        if config.client_cert is not None and config.client_key is not None:
            client = CertifiedKey.load(config.client_cert, config.client_key, passphrase)
        peer = None
        if config.peer and config.cert is not None and config.key is not None:
            peer = server or CertifiedKey.load(config.cert, config.key, passphrase)
        return cls(
            cas=cas,
            ca_path=config.ca,
            server=server,
            client=client,
            server_name=config.server_name,
            require_for_writes=config.require_client_cert_for_writes,
            require_for_reads=config.require_client_cert_for_reads,
            peer=peer,
        )

    @property
    def serving(self) -> bool:
        """Whether the daemon's API listens with TLS."""
        return self.server is not None

    def server_options(self) -> CertificateOptions:
        """The server TLS context: our certificate, TLS >= 1.2, optional client certificates.

        With a CA, a client certificate is requested and, when one is sent,
        verified against the CA at the handshake (refused if it does not
        verify); without one no client certificate is asked for.
        """
        if self.server is None:
            raise ValueError("no server certificate is configured")
        kwargs: dict[str, Any] = dict(self.server.openssl_options())
        if self.cas:
            kwargs.update(
                verify=True,
                caCerts=[crypto.X509.from_cryptography(ca) for ca in self.cas],
                requireCertificate=False,
            )
        # ALPN: every HTTP client that offers it (curl, Python's ssl, Go) gets http/1.1.
        return CertificateOptions(
            raiseMinimumTo=MINIMUM_TLS_VERSION, acceptableProtocols=[b"http/1.1"], **kwargs
        )

    def peer_options(self) -> CertificateOptions | None:
        """
        The TLS context of peer connections, both sides, or None (plain TCP) without ``tls.peer``.

        Each side presents its certificate and requires the other's, verified
        against the cluster CA (TLS >= 1.2).  Names are not checked: peers are
        dialled by the address the tracker gives, and any holder of a cluster
        certificate may take part in the swarm; what a peer sends is checked
        against the metainfo's piece hashes anyway.
        """
        if self.peer is None:
            return None
        if not self.cas:
            raise ValueError("peer TLS needs the cluster CA (tls.ca)")
        return CertificateOptions(
            raiseMinimumTo=MINIMUM_TLS_VERSION,
            verify=True,
            caCerts=[crypto.X509.from_cryptography(ca) for ca in self.cas],
            requireCertificate=True,
            **self.peer.openssl_options(),
        )

    def peer_endpoint(
        self, endpoint: IStreamServerEndpoint, reactor: IReactorTime | None = None
    ) -> IStreamServerEndpoint:
        """The peer port's ``endpoint``, wrapped in mutual TLS with ``tls.peer``."""
        options = self.peer_options()
        if options is None:
            return endpoint
        return TLSServerEndpoint(endpoint, options, reactor)

    def server_endpoint(
        self, endpoint: IStreamServerEndpoint, reactor: IReactorTime | None = None
    ) -> IStreamServerEndpoint:
        """``endpoint`` wrapped in TLS when serving TLS, else ``endpoint`` itself.

        ``reactor`` schedules the TLS layer's flushes (default: the global reactor).
        """
        if self.server is None:
            return endpoint
        return TLSServerEndpoint(endpoint, self.server_options(), reactor)

    def guard(self, resource: IResource, *, registry: bool = False) -> IResource:
        """``resource`` behind the client-certificate check when serving TLS, else itself.

        ``registry``: refuse with registry errors (the proxy's docker registry port).
        """
        if self.server is None or not (self.require_for_writes or self.require_for_reads):
            return resource
        return ClientCertificateGuard(
            resource,
            writes=self.require_for_writes,
            reads=self.require_for_reads,
            registry=registry,
        )

    def head_check(self, *, registry: bool = False) -> Callable[[Any], None] | None:
        """
        The check :meth:`guard` makes, for a :class:`~kraken.http.server.KrakenSite`'s gate
        to make on a request's head, before any of its body is read: raises a 403
        :class:`~kraken.http.errors.APIError` (``DENIED`` for a registry) when the request
        needs a client certificate verified by the CA and its connection has none.  None
        when nothing is required.
        """
        if self.server is None or not (self.require_for_writes or self.require_for_reads):
            return None
        writes, reads = self.require_for_writes, self.require_for_reads

        def check(head: Any) -> None:
            method = head.method
            if not (reads or (writes and method not in _READ_METHODS)):
                return
            status = client_certificate_status(head.request)
            if status is ClientCertificate.VERIFIED:
                return
            what = "writes" if method not in _READ_METHODS else "requests"
            message = (
                f"{what} to this server need a client certificate signed by the "
                f"cluster CA (mutual TLS); this connection presented {status.value}"
            )
            raise APIError(403, message, code=DENIED if registry else None)

        return check

    def client_policy(self) -> IPolicyForHTTPS | None:
        """The HTTPS policy for calls to other components, or None (plain HTTP) without a CA."""
        if not self.cas:
            return None
        return ClusterClientPolicy(self.cas, self.client, self.server_name)

    def certificates(self) -> list[tuple[str, str, x509.Certificate]]:
        """``(role, path, certificate)`` of every certificate in use: server, client, CAs."""
        found: list[tuple[str, str, x509.Certificate]] = []
        if self.server is not None:
            found.append(("server", self.server.path, self.server.leaf))
        if self.client is not None:
            found.append(("client", self.client.path, self.client.leaf))
        if self.peer is not None and self.peer is not self.server:
            found.append(("peer", self.peer.path, self.peer.leaf))
        for ca in self.cas:
            found.append(("ca", self.ca_path or "", ca))
        return found

    def expiry_monitor(
        self, clock: IReactorTime, registry: CollectorRegistry | None = None
    ) -> CertificateExpiryMonitor:
        """A service warning about certificates near their end; the gauge goes in ``registry``.

        Parent it to the daemon's service tree.
        """
        certificates = self.certificates()
        if registry is not None and certificates:
            register_expiry_gauge(registry, certificates, clock)
        return CertificateExpiryMonitor(certificates, clock)


_FILE_SETTINGS: Final = ("ca", "cert", "key", "client_cert", "client_key", "passphrase_file")


def check_tls_files(config: TLSConfig, *, serve: bool = True, section: str = "tls") -> None:
    """Read ``config``'s files now; a bad one raises ``usage.UsageError`` naming it.

    For the daemons' ``Options.postOptions``, so that twistd stops with one
    line (``tls.cert: /etc/kraken/origin.pem: No such file or directory``)
    instead of a traceback from ``makeService``.  Blocking; start-up only.
    """
    try:
        ClusterTLS.from_config(config, serve=serve)
    except TLSFileError as e:
        key = next((k for k in _FILE_SETTINGS if getattr(config, k) == e.path), None)
        where = f"{section}.{key}: " if key else ""
        raise usage.UsageError(f"{where}{e.path}: {e.reason}") from None
