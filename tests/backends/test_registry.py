"""
Tests for kraken.backends.registry against the real Debian docker-registry.

An OCI image layout is written by hand (config, one gzipped layer tar, manifest, index) and
pushed with ``skopeo copy --preserve-digests``, so every digest is known in advance.  Three
registries run: open, with htpasswd basic auth, and with bearer-token auth whose token server
is an in-process twisted.web resource signing RS256 JWTs with an ``x5c`` certificate that the
registry trusts (``auth.token.rootcertbundle``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import time
import uuid
import warnings
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from kraken.backends.config import BackendContext, BackendsConfig
from kraken.backends.interface import (
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    OperationNotSupported,
)
from kraken.backends.registry import (
    MANIFEST_MEDIA_TYPES,
    RegistryAuthError,
    RegistryBackend,
    RegistryCredentials,
    parse_challenge,
)
from kraken.backends.streams import BytesConsumer, download_bytes
from kraken.config import ConfigError
from kraken.http.client import HTTPClientFactory, RetryPolicy
from tests.backends.base import BackendTests, RunAsynchronously, backend_test, blob_name
from tests.backends.servers import DockerRegistry, docker_registry, free_port
from tests.backends.test_s3 import PauseEveryWriteConsumer
from tests.external import require_program
from tests.oci import OCILayout

reactor: Any = _reactor

REPOSITORY = "kraken/test"
TAG = "v1"
USER, PASSWORD = "kraken", "s3cret"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OCIImage:
    """A one-layer OCI image of random content, written as an OCI layout directory."""

    def __init__(self, directory: str, layer_size: int = 3 << 20) -> None:
        layout = OCILayout(directory)
        seed = int.from_bytes(os.urandom(8))
        descriptor = layout.image(seed, layer_sizes=(layer_size,))
        layout.tag(descriptor, TAG)
        self.directory = directory
        self.manifest = layout.read(descriptor)
        manifest = json.loads(self.manifest)
        self.config = layout.read(manifest["config"])
        self.layer = layout.read(manifest["layers"][0])

    @property
    def manifest_digest(self) -> str:
        """``sha256:<hex>`` of the manifest."""
        return _digest(self.manifest)


_pushed: dict[str, OCIImage] = {}


def push_image(registry: DockerRegistry, base: str, creds: str | None = None) -> Deferred[OCIImage]:
    """Build an image under ``base`` and skopeo-copy it to ``registry`` (once per registry)."""
    if registry.url in _pushed:
        return succeed(_pushed[registry.url])
    skopeo = require_program("skopeo")
    os.makedirs(base, exist_ok=True)
    image = OCIImage(os.path.join(base, "layout"))
    policy = os.path.join(base, "policy.json")
    with open(policy, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    argv = [
        "--policy",
        policy,
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        *(["--dest-creds", creds] if creds else []),
        f"oci:{image.directory}:{TAG}",
        f"docker://{registry.address}/{REPOSITORY}:{TAG}",
    ]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": base, "TMPDIR": base}

    def check(result: tuple[bytes, bytes, int]) -> OCIImage:
        out, err, code = result
        if code != 0:
            raise RuntimeError(
                f"skopeo {argv} failed ({code}):\n{out.decode()}\n{err.decode()}\n"
                f"registry:\n{registry.process.output()}"
            )
        _pushed[registry.url] = image
        return image

    pushed: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
        skopeo, argv, env=env, reactor=reactor
    )
    return pushed.addCallback(check)


def htpasswd() -> str:
    """An htpasswd line for USER (bcrypt at the lowest cost, so checks are fast)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the standard library's; deprecated but the one bcrypt source at hand

        hashed = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    return f"{USER}:{hashed}\n"


class RegistryMixin:
    """A started registry with the test image in it, and a client factory."""

    addCleanup: Any
    mktemp: Any
    registry: DockerRegistry
    image: OCIImage

    def start_registry(self) -> DockerRegistry:
        """The registry this class tests against."""
        return docker_registry()

    def push_creds(self) -> str | None:
        """``user:password`` for skopeo, if the registry wants them."""
        return None

    def setUp(self) -> Any:  # a Deferred, which trial waits for
        """Start the registry (once per process) and push the image (once per registry)."""
        require_program("skopeo")
        self.registry = self.start_registry()
        self.factory = HTTPClientFactory(reactor, timeout=20, retry=RetryPolicy(max_retries=0))
        self.addCleanup(self.factory.close)

        def keep(image: OCIImage) -> None:
            self.image = image

        base = os.path.abspath(f"_registry_images/{uuid.uuid4().hex}")
        return push_image(self.registry, base, self.push_creds()).addCallback(keep)

    def registry_backend(self, credentials: RegistryCredentials | None = None) -> RegistryBackend:
        """A RegistryBackend on this class's registry."""
        return RegistryBackend(self.registry.url, self.factory.client(), reactor, credentials)


class RegistryBackendTests(RegistryMixin, RunAsynchronously, BackendTests, TestCase):
    """The registry backend passes the abstract suite and reads what skopeo pushed."""

    def make_backend(self) -> IBackend:
        """An anonymous RegistryBackend on the open registry."""
        return self.registry_backend()

    @backend_test
    async def test_list_empty(self) -> None:
        """list is not supported (valid arguments fail with OperationNotSupported)."""
        await self.assert_fails(self.make_backend().list(""), OperationNotSupported)

    @backend_test
    async def test_upload_not_supported(self) -> None:
        """upload of a valid name fails with OperationNotSupported."""
        await self.assert_fails(
            self.make_backend().upload(REPOSITORY, blob_name("x"), b"x"), OperationNotSupported
        )

    @backend_test
    async def test_delete_not_supported(self) -> None:
        """delete of a valid name fails with OperationNotSupported."""
        await self.assert_fails(
            self.make_backend().delete(REPOSITORY, blob_name("x")), OperationNotSupported
        )

    @backend_test
    async def test_layer(self) -> None:
        """A pushed layer has its size and downloads byte for byte (namespace = repository)."""
        backend = self.make_backend()
        name = _digest(self.image.layer)[7:]
        self.assertEqual(await backend.stat(REPOSITORY, name), BlobInfo(len(self.image.layer)))
        consumer = BytesConsumer()
        self.assertEqual(await backend.download(REPOSITORY, name, consumer), len(self.image.layer))
        self.assertEqual(consumer.value(), self.image.layer)
        self.assertIsNone(consumer.producer)

    @backend_test
    async def test_layer_download_honours_pause(self) -> None:
        """A paused consumer gets no writes until it resumes; the layer arrives intact."""
        consumer = PauseEveryWriteConsumer()
        name = _digest(self.image.layer)[7:]
        await self.make_backend().download(REPOSITORY, name, consumer)
        self.assertEqual(consumer.value(), self.image.layer)
        self.assertEqual(consumer.writes_while_paused, 0)

    @backend_test
    async def test_manifest_by_digest(self) -> None:
        """A manifest digest, not a blob of the repository, is served from manifests/."""
        backend = self.make_backend()
        name = self.image.manifest_digest[7:]
        self.assertEqual(await backend.stat(REPOSITORY, name), BlobInfo(len(self.image.manifest)))
        consumer = BytesConsumer()
        await backend.download(REPOSITORY, name, consumer)
        self.assertEqual(consumer.value(), self.image.manifest)

    @backend_test
    async def test_blob_in_other_repository(self) -> None:
        """A blob is looked up in the namespace's repository only."""
        name = _digest(self.image.layer)[7:]
        await self.assert_fails(self.make_backend().stat("kraken/other", name), BlobNotFound)

    @backend_test
    async def test_tag(self) -> None:
        """A tag resolves to its manifest digest: 71 bytes of ``sha256:<hex>``."""
        backend = self.make_backend()
        name = f"{REPOSITORY}:{TAG}"
        self.assertEqual(await backend.stat("anything", name), BlobInfo(71))
        digest = await download_bytes(backend, "anything", name)
        self.assertEqual(digest.decode(), self.image.manifest_digest)

    @backend_test
    async def test_missing_tag(self) -> None:
        """An unknown tag of a known repository is BlobNotFound for stat and download."""
        backend = self.make_backend()
        name = f"{REPOSITORY}:nope"
        await self.assert_fails(backend.stat(REPOSITORY, name), BlobNotFound)
        await self.assert_fails(backend.download(REPOSITORY, name, BytesConsumer()), BlobNotFound)

    @backend_test
    async def test_namespace_must_be_repository(self) -> None:
        """A namespace that is no repository path is refused before any request."""
        backend = self.make_backend()
        for namespace in ["a/../b", "a?b", "/a", "a//b"]:
            await self.assert_fails(backend.stat(namespace, blob_name("n")), InvalidName)


class BasicAuthRegistryTests(RegistryMixin, TestCase):
    """Against a registry with htpasswd (basic) auth."""

    def start_registry(self) -> DockerRegistry:
        """The htpasswd registry."""
        return docker_registry(htpasswd=htpasswd())

    def push_creds(self) -> str | None:
        """The user skopeo pushes as."""
        return f"{USER}:{PASSWORD}"

    def test_with_credentials(self) -> Deferred[None]:
        """With the right user and password the layer and the tag are readable."""
        backend = self.registry_backend(RegistryCredentials(USER, PASSWORD))

        async def check() -> None:
            name = _digest(self.image.layer)[7:]
            self.assertEqual(await backend.stat(REPOSITORY, name), BlobInfo(len(self.image.layer)))
            self.assertEqual(
                (await download_bytes(backend, REPOSITORY, f"{REPOSITORY}:{TAG}")).decode(),
                self.image.manifest_digest,
            )

        return Deferred.fromCoroutine(check())

    def test_without_or_wrong_credentials(self) -> Deferred[None]:
        """No credentials, or a wrong password, is RegistryAuthError (not BlobNotFound)."""

        async def check() -> None:
            name = _digest(self.image.layer)[7:]
            for credentials in [None, RegistryCredentials(USER, "wrong")]:
                backend = self.registry_backend(credentials)
                with self.assertRaises(RegistryAuthError):
                    await backend.stat(REPOSITORY, name)

        return Deferred.fromCoroutine(check())


class TokenServer(Resource):
    """A token server: RS256 JWTs for the registry's ``auth.token`` config."""

    isLeaf = True

    def __init__(self, directory: str, service: str, issuer: str, users: dict[str, str]) -> None:
        super().__init__()
        self.service = service
        self.issuer = issuer
        self.users = users
        self.requests: list[dict[bytes, list[bytes]]] = []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kraken test token issuer")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = os.path.join(directory, "token-ca.pem")
        with open(self.bundle, "wb") as f:
            f.write(self.certificate.public_bytes(serialization.Encoding.PEM))

    def render_GET(self, request: Request) -> bytes:
        """A token for the scope asked for, to a known user or (pull only) to anyone."""
        args = request.args or {}
        self.requests.append(dict(args))
        user = None
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, value = header.partition(b" ")
            username, _, password = base64.b64decode(value).decode().partition(":")
            if scheme.lower() != b"basic" or self.users.get(username) != password:
                request.setResponseCode(401)
                return b"{}"
            user = username
        access = []
        for scope in args.get(b"scope", []):
            kind, name, actions = scope.decode().split(":")
            allowed = actions.split(",") if user else ["pull"] if "pull" in actions else []
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header_json = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64(json.dumps(header_json))}.{_b64(json.dumps(claims))}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input}.{_b64(signature)}"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"token": token, "expires_in": 300}).encode()


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_token_servers: dict[None, tuple[TokenServer, int, DockerRegistry]] = {}


class BearerTokenRegistryTests(RegistryMixin, TestCase):
    """Against a registry with token auth, served by an in-process token server."""

    def start_registry(self) -> DockerRegistry:
        """The token-auth registry; its token server listens (on a fixed port) during tests."""
        if None not in _token_servers:
            directory = os.path.abspath(f"_token_server_{uuid.uuid4().hex}")
            os.makedirs(directory)
            port = free_port()
            server = TokenServer(directory, "kraken-registry", "kraken-issuer", {USER: PASSWORD})
            auth = (
                "auth:\n  token:\n"
                f"    realm: http://127.0.0.1:{port}/token\n"
                "    service: kraken-registry\n"
                "    issuer: kraken-issuer\n"
                f"    rootcertbundle: {server.bundle}\n"
            )
            _token_servers[None] = (server, port, DockerRegistry(auth=auth))
        self.token_server, port, registry = _token_servers[None]
        listening = reactor.listenTCP(port, Site(self.token_server), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return registry

    def push_creds(self) -> str | None:
        """The user skopeo pushes as."""
        return f"{USER}:{PASSWORD}"

    def test_anonymous_token(self) -> Deferred[None]:
        """Without credentials a pull token is fetched once and reused for later requests."""
        backend = self.registry_backend()

        async def check() -> None:
            before = len(self.token_server.requests)
            layer = _digest(self.image.layer)[7:]
            self.assertEqual(await backend.stat(REPOSITORY, layer), BlobInfo(len(self.image.layer)))
            consumer = BytesConsumer()
            await backend.download(REPOSITORY, layer, consumer)
            self.assertEqual(consumer.value(), self.image.layer)
            digest = await download_bytes(backend, REPOSITORY, f"{REPOSITORY}:{TAG}")
            self.assertEqual(digest.decode(), self.image.manifest_digest)
            asked = self.token_server.requests[before:]
            self.assertEqual(len(asked), 1, asked)
            self.assertEqual(asked[0][b"service"], [b"kraken-registry"])
            self.assertEqual(asked[0][b"scope"], [f"repository:{REPOSITORY}:pull".encode()])

        return Deferred.fromCoroutine(check())

    def test_wrong_credentials(self) -> Deferred[None]:
        """A token server refusing our password is RegistryAuthError."""
        backend = self.registry_backend(RegistryCredentials(USER, "wrong"))

        async def check() -> None:
            with self.assertRaises(RegistryAuthError):
                await backend.stat(REPOSITORY, _digest(self.image.layer)[7:])

        return Deferred.fromCoroutine(check())

    def test_token_expiry(self) -> Deferred[None]:
        """A cached token is dropped once its lifetime has passed, and a new one fetched."""
        clock = Clock()
        clock.advance(time.time())
        backend = RegistryBackend(
            self.registry.url, self.factory.client(), clock, RegistryCredentials(USER, PASSWORD)
        )

        async def check() -> None:
            layer = _digest(self.image.layer)[7:]
            before = len(self.token_server.requests)
            await backend.stat(REPOSITORY, layer)
            await backend.stat(REPOSITORY, layer)
            self.assertEqual(len(self.token_server.requests) - before, 1)
            clock.advance(300)
            await backend.stat(REPOSITORY, layer)
            self.assertEqual(len(self.token_server.requests) - before, 2)

        return Deferred.fromCoroutine(check())


class RegistryUnitTests(SynchronousTestCase):
    """Challenge parsing and the ``registry`` config section."""

    def test_parse_challenge(self) -> None:
        """Scheme and quoted or bare parameters come out of WWW-Authenticate."""
        self.assertEqual(
            parse_challenge(
                'Bearer realm="https://auth.example/token",service="reg",'
                'scope="repository:a/b:pull",error=insufficient_scope'
            ),
            (
                "bearer",
                {
                    "realm": "https://auth.example/token",
                    "service": "reg",
                    "scope": "repository:a/b:pull",
                    "error": "insufficient_scope",
                },
            ),
        )
        self.assertEqual(parse_challenge('Basic realm="x \\"y\\""'), ("basic", {"realm": 'x "y"'}))

    def test_accept_list(self) -> None:
        """Tags ask for Docker schema2, manifest lists, OCI manifests and OCI indexes."""
        self.assertEqual(len(MANIFEST_MEDIA_TYPES), 4)
        self.assertIn("application/vnd.oci.image.index.v1+json", MANIFEST_MEDIA_TYPES)

    def test_address(self) -> None:
        """A bare host means https; a trailing slash is dropped; other schemes are refused."""
        client = HTTPClientFactory(Clock()).client()
        self.assertEqual(RegistryBackend("r.io:5000", client, Clock()).address, "https://r.io:5000")
        self.assertEqual(RegistryBackend("http://r/", client, Clock()).address, "http://r")
        with self.assertRaises(ValueError):
            RegistryBackend("ftp://r", client, Clock())

    def test_options(self) -> None:
        """address, username/password and timeout are read; build makes a backend."""
        config = BackendsConfig.from_list(
            [
                {
                    "namespace": ".*",
                    "backend": {
                        "registry": {
                            "address": "http://127.0.0.1:5000",
                            "username": "u",
                            "password": "p",
                        }
                    },
                }
            ]
        )
        self.assertNotIn("'p'", repr(config))
        router = config.build(BackendContext(Clock(), None))  # type: ignore[arg-type]
        backend = router.backend_for("x")
        assert isinstance(backend, RegistryBackend)
        self.assertEqual(backend.address, "http://127.0.0.1:5000")
        self.assertEqual(backend.credentials, RegistryCredentials("u", "p"))
        self.successResultOf(backend.close())

    def test_option_errors(self) -> None:
        """Bad options are ConfigError lines naming their key."""
        for raw, key in [
            ({}, "registry.address"),
            ({"address": "ftp://x"}, "registry.address"),
            ({"address": "x", "username": "u"}, "registry.password"),
            ({"address": "x", "timeout": -1}, "registry.timeout"),
            ({"address": "x", "bogus": 1}, "registry.bogus"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                BackendsConfig.from_list([{"namespace": ".*", "backend": {"registry": raw}}])
            (problem,) = caught.exception.problems
            self.assertTrue(problem.startswith(f"backends[0].backend.{key}: "), problem)
