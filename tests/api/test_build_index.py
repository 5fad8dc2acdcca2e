"""
StubTreq tests of the build-index API over an in-memory origin: every route and error,
dependency checks for the four manifest kinds, mutable tags, duplicates and replication
queueing.  Time is a ``Clock``; the tag backend is the fs backend run inline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from kraken.api import build_index as build_index_api
from kraken.api.build_index import BuildIndexAPI
from kraken.backends.config import BackendContext, BackendsConfig
from kraken.buildindex.dependencies import DependencyResolver, TagTypeRules
from kraken.buildindex.replication import (
    REPLICATE_TAG_KIND,
    RemoteRules,
    TagReplicationExecutor,
    deletion_payload,
)
from kraken.buildindex.tags import TagStore, parse_tag
from kraken.clients.buildindex import DUPLICATE_HEADER, BuildIndexClient
from kraken.clients.origin import OriginClient, OriginClusterClient
from kraken.cluster import Membership, NoHealthFilter, StaticHostList
from kraken.cluster.health import PassiveHealthFilter
from kraken.core import Digest
from kraken.core.address import parse_networks
from kraken.http.dependencies import Dependencies
from kraken.http.testing import memory_client_factory
from kraken.io.runner import run_inline
from kraken.persistedretry import MemoryTaskStore, RetryQueue, Task
from kraken.services.build_index import _backends_readiness, _origin_readiness
from kraken.tls import ClientCertificate

ORIGIN = "origin:15002"
REPO = "test/app"
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class FakeOrigin:
    """The origin routes the build-index uses: locations, stat and download, per namespace."""

    app = Klein()

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.namespaces: list[str] = []

    def add(self, data: bytes, namespace: str = REPO) -> Digest:
        """Store ``data`` in ``namespace``; return its digest."""
        d = Digest.of_bytes(data)
        self.blobs[(namespace, str(d))] = data
        return d

    @app.route("/readiness", methods=["GET"])
    def readiness(self, request: Request) -> bytes:
        """Always ready."""
        return b"OK\n"

    @app.route("/blobs/<digest>/locations", methods=["GET"])
    def locations(self, request: Request, digest: str) -> bytes:
        """This origin is the only replica."""
        request.setHeader(b"Origin-Locations", ORIGIN.encode())
        return b""

    @app.route("/internal/namespace/<path:namespace>/blobs/<digest>", methods=["HEAD"])
    def stat(self, request: Request, namespace: str, digest: str) -> bytes:
        """200 with Content-Length, or 404."""
        self.namespaces.append(namespace)
        data = self.blobs.get((namespace, digest))
        if data is None:
            request.setResponseCode(404)
            return b""
        request.setHeader(b"Content-Length", str(len(data)).encode())
        return b""

    @app.route("/namespace/<path:namespace>/blobs/<digest>", methods=["GET"])
    def get(self, request: Request, namespace: str, digest: str) -> bytes:
        """The blob, or 404."""
        self.namespaces.append(namespace)
        data = self.blobs.get((namespace, digest))
        if data is None:
            request.setResponseCode(404)
            return b""
        return data


def _manifest(media_type: str, config: Digest | None, layers: list[Digest]) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if config is not None:
        doc["config"] = {"mediaType": "application/json", "digest": str(config), "size": 1}
    doc["layers"] = [{"mediaType": "x", "digest": str(d), "size": 1} for d in layers]
    return json.dumps(doc).encode()


def _index(media_type: str | None, children: list[Digest]) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": SCHEMA2, "digest": str(d), "size": 1} for d in children],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


class BuildIndexAPITests(SynchronousTestCase):
    """The API over a fake origin, an fs tag backend and a memory replication queue."""

    def setUp(self) -> None:
        """Build the API with one neighbour (``peer:15004``) and one remote for ``test/``."""
        self.clock = Clock()
        self.origin = FakeOrigin()
        self.duplicates: list[tuple[str, str | None]] = []
        peer_app = Klein()

        @peer_app.route("/tags/<path:tag>/digest/<d>", methods=["PUT"])
        def peer_put(request: Request, tag: str, d: str) -> bytes:
            header = request.getHeader(DUPLICATE_HEADER)
            self.duplicates.append((f"{tag}={d}", header))
            return b""

        @peer_app.route("/tags/<path:tag>", methods=["DELETE"])
        def peer_delete(request: Request, tag: str) -> bytes:
            header = request.getHeader(DUPLICATE_HEADER)
            self.duplicates.append((f"{tag} deleted", header))
            return b""

        #: What ``/readiness`` checks besides the queue (a test may put the daemon's check here).
        self.ready: Callable[[], Deferred[None]] = lambda: succeed(None)
        factory, self.agent = memory_client_factory(
            {ORIGIN: self.origin.app.resource(), "peer:15004": peer_app.resource()}, self.clock
        )
        ring = OriginClusterClient(OriginClient(factory.client(), self.clock), lambda: [ORIGIN])
        self.resolver = DependencyResolver(
            ring, TagTypeRules.of([("^plain/", "default"), (".*", "docker")])
        )
        backends = BackendsConfig.from_list(
            [{"namespace": ".*", "backend": {"fs": {"root": self.mktemp()}}}]
        ).build(BackendContext(self.clock, run_inline))
        self.backends = backends
        self.client = factory.client()
        self.executed: list[Task] = []

        class Recorder:
            def run(inner: Any, task: Task) -> Deferred[None]:
                self.executed.append(task)
                return Deferred()  # never finishes: the task stays queued

        from zope.interface import directlyProvides

        from kraken.persistedretry import ITaskExecutor

        recorder = Recorder()
        directlyProvides(recorder, ITaskExecutor)
        self.queue = RetryQueue(MemoryTaskStore(), {REPLICATE_TAG_KIND: recorder}, self.clock)
        self.queue.startService()
        self.addCleanup(self.queue.stopService)
        self.api = BuildIndexAPI(
            TagStore(backends, self.clock),
            self.resolver,
            RemoteRules.of({"remote-b:15004": ["^test/"], "remote-c:15004": ["^other/"]}),
            self.queue,
            BuildIndexClient(factory.client(), frozenset, PassiveHealthFilter(self.clock)),
            lambda: ["peer:15004"],
            "origin-a:15002",
            self.clock,
            lambda: self.ready(),  # noqa: PLW0108 - late bound: a test replaces self.ready
        )
        self.treq = StubTreq(self.api.resource())

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send a request to the API; return status and body."""
        sent = self.treq.request(method, "http://bi" + path, headers=headers)
        done: list[object] = []
        sent.addBoth(lambda r: done.append(r) or r)
        for _ in range(60):  # client retries and backoff run on the clock
            self.treq.flush()
            if done:
                break
            self.clock.advance(1)
        response = self.successResultOf(sent)
        content = self.treq.content(response)
        self.treq.flush()
        return response.code, self.successResultOf(content)

    def image(
        self, media_type: str = SCHEMA2, missing_layer: bool = False, repo: str = REPO
    ) -> Digest:
        """Store a config, two layers and their manifest at the origin under ``repo``."""
        config = self.origin.add(b"config" + media_type.encode(), repo)
        layers = [self.origin.add(b"layer1", repo), self.origin.add(b"layer2", repo)]
        if missing_layer:
            layers.append(Digest.of_bytes(b"absent"))
        return self.origin.add(_manifest(media_type, config, layers), repo)

    def put(self, tag: str, d: Digest, query: str = "") -> tuple[int, bytes]:
        """PUT the tag (percent-encoded once)."""
        return self.request("PUT", f"/tags/{tag.replace('/', '%2F')}/digest/{d}{query}")

    def test_put_and_get(self) -> None:
        """A tag whose manifest and blobs exist is stored; GET answers its digest, HEAD 200."""
        d = self.image()
        self.assertEqual(self.put(f"{REPO}:v1", d), (200, b""))
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1"), (200, str(d).encode()))
        self.assertEqual(self.request("HEAD", "/tags/test%2Fapp:v1")[0], 200)
        self.assertEqual(set(self.origin.namespaces), {REPO})

    def test_unknown_tag(self) -> None:
        """GET and HEAD of an unknown tag are 404."""
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:nope")[0], 404)
        self.assertEqual(self.request("HEAD", "/tags/test%2Fapp:nope")[0], 404)

    def test_mutable_tag(self) -> None:
        """A second PUT with another digest wins: GET answers the second."""
        first, second = self.image(SCHEMA2), self.image(OCI_MANIFEST)
        self.assertEqual(self.put(f"{REPO}:latest", first)[0], 200)
        self.assertEqual(self.put(f"{REPO}:latest", second)[0], 200)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:latest")[1], str(second).encode())

    def test_missing_manifest_is_404(self) -> None:
        """A manifest the origin does not have: 404 naming it, nothing stored."""
        d = Digest.of_bytes(b"no manifest")
        code, body = self.put(f"{REPO}:v1", d)
        self.assertEqual(code, 404)
        self.assertIn(str(d).encode(), body)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 404)

    def test_missing_layer_is_400(self) -> None:
        """A manifest referencing an absent layer: 400 naming the layer, nothing stored."""
        d = self.image(missing_layer=True)
        code, body = self.put(f"{REPO}:v1", d)
        self.assertEqual(code, 400)
        self.assertIn(str(Digest.of_bytes(b"absent")).encode(), body)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 404)

    def test_blobs_are_looked_up_in_the_repository(self) -> None:
        """Blobs stored under another namespace do not count (namespace = repository)."""
        config = self.origin.add(b"cfg", "elsewhere")
        d = self.origin.add(_manifest(SCHEMA2, config, []))
        self.assertEqual(self.put(f"{REPO}:v1", d)[0], 400)

    def test_not_a_manifest_is_400(self) -> None:
        """A blob that is not a manifest: 400."""
        d = self.origin.add(b"not json")
        self.assertEqual(self.put(f"{REPO}:v1", d)[0], 400)

    def test_oci_manifest(self) -> None:
        """An OCI manifest's config and layers are checked."""
        self.assertEqual(self.put(f"{REPO}:oci", self.image(OCI_MANIFEST))[0], 200)
        self.assertEqual(self.put(f"{REPO}:bad", self.image(OCI_MANIFEST, True))[0], 400)

    def _index_test(self, media_type: str | None) -> None:
        children = [self.image(SCHEMA2), self.image(OCI_MANIFEST)]
        d = self.origin.add(_index(media_type, children))
        self.assertEqual(self.put(f"{REPO}:multi", d)[0], 200)
        deps = self.successResultOf(Deferred.fromCoroutine(self.resolver.resolve(REPO, d)))
        self.assertEqual(deps[0], d)
        self.assertEqual(set(children) <= set(deps), True)
        self.assertIn(Digest.of_bytes(b"layer1"), deps)
        # A missing child manifest, and a child referencing a missing layer, are refused.
        absent = Digest.of_bytes(b"absent child")
        bad = self.origin.add(_index(media_type, [children[0], absent]))
        self.assertEqual(self.put(f"{REPO}:bad", bad)[0], 400)
        bad_layer = self.origin.add(_index(media_type, [self.image(SCHEMA2, True)]))
        self.assertEqual(self.put(f"{REPO}:bad2", bad_layer)[0], 400)

    def test_manifest_list(self) -> None:
        """A Docker manifest list: its manifests and their blobs are checked."""
        self._index_test(LIST)

    def test_oci_index(self) -> None:
        """An OCI index (with and without mediaType): manifests and their blobs are checked."""
        self._index_test(OCI_INDEX)
        self._index_test(None)

    def test_default_type_checks_the_digest_only(self) -> None:
        """A ``default`` repository needs only the digest itself at the origin."""
        d = self.origin.add(b"any blob", "plain/files")
        self.assertEqual(self.put("plain/files:v1", d)[0], 200)
        self.assertEqual(self.put("plain/files:v2", Digest.of_bytes(b"x"))[0], 400)

    def test_invalid_tags_and_digests(self) -> None:
        """Bad repositories, tags, double encoding and digests are 400."""
        d = self.image()
        for path in [
            f"/tags/test%2F..%2Fapp:v1/digest/{d}",
            f"/tags/Test%2Fapp:v1/digest/{d}",
            f"/tags/test%252Fapp:v1/digest/{d}",
            f"/tags/test%2Fapp:v%2F1/digest/{d}",
            f"/tags/test%2Fapp/digest/{d}",
            "/tags/test%2Fapp:v1/digest/sha256:abc",
            f"/tags/test%2Fapp:v1/digest/{d}?replicate=maybe",
        ]:
            self.assertEqual(self.request("PUT", path)[0], 400, path)
        self.assertEqual(self.request("GET", "/tags/..%2Fetc:passwd")[0], 400)

    def test_duplicates_sent_and_received(self) -> None:
        """A PUT tells the neighbour with the duplicate header; a duplicate is not re-sent."""
        d = self.image()
        self.clock.advance(100)
        self.put(f"{REPO}:v1", d)
        self.assertEqual(self.duplicates, [(f"{REPO}:v1={d}", "100.0")])
        # Received duplicates: stored without checks unless older than what is known.
        other = Digest.of_bytes(b"unchecked")
        header = {DUPLICATE_HEADER: "50.0"}
        path = f"/tags/test%2Fapp:v1/digest/{other}"
        self.assertEqual(self.request("PUT", path, header)[0], 200)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[1], str(d).encode())
        self.assertEqual(self.request("PUT", path, {DUPLICATE_HEADER: "150.0"})[0], 200)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[1], str(other).encode())
        self.assertEqual(len(self.duplicates), 1)
        self.assertEqual(self.request("PUT", path, {DUPLICATE_HEADER: "soon"})[0], 400)

    def test_duplicate_from_a_stranger_is_refused(self) -> None:
        """Issue 18: a duplicate from outside the cluster is 403 and cannot skip the checks.

        The client here is 127.0.0.1 over plain HTTP, outside the configured
        ``duplicate_networks``: pointing a tag at a digest that exists nowhere is refused,
        nothing is stored and nothing is forwarded; the same request without the header
        goes through the dependency checks (404: no such manifest).
        """
        self.api.duplicate_networks = parse_networks(["10.0.0.0/8"])
        self.clock.advance(100)
        absent = Digest.of_bytes(b"exists nowhere")
        path = f"/tags/test%2Fapp:v1/digest/{absent}"
        code, body = self.request("PUT", path, {DUPLICATE_HEADER: "100.0"})
        self.assertEqual(code, 403)
        self.assertIn(b"plain HTTP from 127.0.0.1", body)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 404)
        self.assertEqual(self.request("PUT", path)[0], 404)
        self.assertEqual(self.duplicates, [])

    def test_duplicate_over_tls_needs_a_verified_certificate(self) -> None:
        """Over TLS only a client certificate verified against the CA makes a duplicate count.

        No certificate, or one that did not verify, is 403 even from a trusted network;
        a verified one is honoured.
        """
        other = Digest.of_bytes(b"unchecked")
        path = f"/tags/test%2Fapp:v1/digest/{other}"
        header = {DUPLICATE_HEADER: "0.0"}
        for status in (ClientCertificate.NONE, ClientCertificate.UNVERIFIED):
            self.patch(build_index_api, "client_certificate_status", lambda r, s=status: s)
            self.assertEqual(self.request("PUT", path, header)[0], 403, status)
        self.patch(
            build_index_api, "client_certificate_status", lambda r: ClientCertificate.VERIFIED
        )
        self.assertEqual(self.request("PUT", path, header)[0], 200)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[1], str(other).encode())

    def test_duplicate_write_time_from_the_future_is_refused(self) -> None:
        """Issue 18: 1e300, infinities, NaN and times beyond the clock skew are 400.

        A refused far-future duplicate leaves no mark: a later real write of the tag
        still wins.  A time within the skew (59 s ahead of 60 s allowed) is honoured.
        """
        self.clock.advance(1000)
        other = Digest.of_bytes(b"unchecked")
        path = f"/tags/test%2Fapp:v1/digest/{other}"
        for value in ("1e300", "inf", "-inf", "nan", "1061.0"):
            code, body = self.request("PUT", path, {DUPLICATE_HEADER: value})
            self.assertEqual(code, 400, value)
            self.assertIn(DUPLICATE_HEADER.encode(), body)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 404)
        d = self.image()
        self.assertEqual(self.put(f"{REPO}:v1", d)[0], 200)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[1], str(d).encode())
        self.assertEqual(self.request("PUT", path, {DUPLICATE_HEADER: "1059.0"})[0], 200)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[1], str(other).encode())

    def test_replicate_queues_one_task_per_matching_remote(self) -> None:
        """replicate=true queues a task for each matching remote; the last digest wins."""
        first, second = self.image(SCHEMA2), self.image(OCI_MANIFEST)
        self.put(f"{REPO}:v1", first, "?replicate=true")
        self.put(f"{REPO}:v1", second, "?replicate=true")
        tasks = self.queue.tasks()
        self.assertEqual([t.key for t in tasks], [f"remote-b:15004 {REPO}:v1"])
        self.assertEqual(tasks[0].payload["digest"], str(second))
        self.put(f"{REPO}:v2", first)
        self.assertEqual(len(self.queue.tasks()), 1)

    def test_delete(self) -> None:
        """DELETE removes the tag (GET 404, not listed, a second DELETE 404), tells the
        neighbour with the duplicate header and, with replicate=true, replaces the queued
        put for the matching remote by a deletion (the last of the two wins)."""
        d = self.image()
        self.put(f"{REPO}:v1", d, "?replicate=true")
        self.put(f"{REPO}:v2", d)
        self.clock.advance(100)
        self.assertEqual(self.request("DELETE", "/tags/test%2Fapp:v1?replicate=true"), (200, b""))
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 404)
        self.assertEqual(self.request("HEAD", "/tags/test%2Fapp:v1")[0], 404)
        self.assertEqual(self.request("DELETE", "/tags/test%2Fapp:v1")[0], 404)
        listed = json.loads(self.request("GET", "/repositories/test%2Fapp/tags")[1])["result"]
        self.assertEqual(listed, ["v2"])
        self.assertEqual(self.duplicates[-1], (f"{REPO}:v1 deleted", "100.0"))
        tasks = self.queue.tasks()
        self.assertEqual([t.key for t in tasks], [f"remote-b:15004 {REPO}:v1"])
        self.assertEqual(
            tasks[0].payload, deletion_payload("remote-b:15004", parse_tag(f"{REPO}:v1"))
        )
        self.assertEqual(self.request("DELETE", "/tags/..%2Fx:v1")[0], 400)

    def test_duplicate_delete_respects_write_order(self) -> None:
        """A duplicate delete older than the last put is ignored; an older duplicate put
        cannot bring a deleted tag back; a stranger's duplicate delete is 403."""
        d = self.image()
        self.clock.advance(100)
        self.put(f"{REPO}:v1", d)
        old = {DUPLICATE_HEADER: "50.0"}
        self.assertEqual(self.request("DELETE", "/tags/test%2Fapp:v1", old)[0], 200)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 200)
        self.assertEqual(
            self.request("DELETE", "/tags/test%2Fapp:v1", {DUPLICATE_HEADER: "110.0"})[0], 200
        )
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 404)
        path = f"/tags/test%2Fapp:v1/digest/{d}"
        self.assertEqual(self.request("PUT", path, {DUPLICATE_HEADER: "105.0"})[0], 200)
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 404)
        self.api.duplicate_networks = parse_networks(["10.0.0.0/8"])
        self.put(f"{REPO}:v1", d)
        self.assertEqual(
            self.request("DELETE", "/tags/test%2Fapp:v1", {DUPLICATE_HEADER: "999.0"})[0], 403
        )
        self.assertEqual(self.request("GET", "/tags/test%2Fapp:v1")[0], 200)

    def test_replicated_deletion(self) -> None:
        """A deletion task sends DELETE ?replicate=true to the remote; a 404 there is done."""
        remote = Klein()
        deleted: list[tuple[str, bytes | None]] = []

        @remote.route("/tags/<path:tag>", methods=["DELETE"])
        def remote_delete(request: Request, tag: str) -> bytes:
            deleted.append((tag, request.args.get(b"replicate", [None])[0]))
            request.setResponseCode(200 if len(deleted) == 1 else 404)
            return b""

        factory, _ = memory_client_factory({"remote-b:15004": remote.resource()}, self.clock)
        executor = TagReplicationExecutor(
            RemoteRules.of({"remote-b:15004": ["^test/"]}),
            self.resolver,
            OriginClusterClient(OriginClient(factory.client(), self.clock), lambda: [ORIGIN]),
            factory.client(),
            self.clock,
            run_inline,
            self.mktemp(),
        )
        payload = deletion_payload("remote-b:15004", parse_tag(f"{REPO}:v1"))
        task = Task(REPLICATE_TAG_KIND, "k", payload, 0.0, 0.0)
        for _ in range(2):
            self.successResultOf(executor.run(task))
        self.assertEqual(deleted, [(f"{REPO}:v1", b"true")] * 2)

    def test_post_remotes(self) -> None:
        """POST /remotes/tags queues replication of a stored tag; 404 for an unknown one."""
        d = self.image()
        self.put(f"{REPO}:v1", d)
        code, body = self.request("POST", "/remotes/tags/test%2Fapp:v1")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["remotes"], ["remote-b:15004"])
        self.assertEqual(len(self.queue.tasks()), 1)
        self.assertEqual(self.request("POST", "/remotes/tags/test%2Fapp:v9")[0], 404)

    def test_listings_with_pagination(self) -> None:
        """/list and /repositories/.../tags page with limit and offset; bad ones are 400."""
        d = self.image()
        for name in ["a", "b", "c"]:
            self.put(f"{REPO}:{name}", d)
        self.assertEqual(self.put("test/apple:x", self.image(repo="test/apple"))[0], 200)
        code, body = self.request("GET", "/list/test/app:")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["result"], [f"{REPO}:a", f"{REPO}:b", f"{REPO}:c"])
        seen: list[str] = []
        path = "/repositories/test/app/tags?limit=2"
        for _ in range(5):
            doc = json.loads(self.request("GET", path)[1])
            seen.extend(doc["result"])
            if "next" not in doc["Links"]:
                break
            path = doc["Links"]["next"]
        self.assertEqual(seen, ["a", "b", "c"])
        everything = json.loads(self.request("GET", "/list/")[1])["result"]
        self.assertEqual(len(everything), 4)
        for bad in [
            "/list/test?limit=0",
            "/list/test?limit=x",
            "/list/test?n=1",
            "/list/..%2F",
            "/list/test?offset=zz",
        ]:
            self.assertEqual(self.request("GET", bad)[0], 400, bad)

    def test_origin_health_metrics(self) -> None:
        """/origin, /health, /readiness and /metrics answer."""
        self.assertEqual(self.request("GET", "/origin"), (200, b"origin-a:15002"))
        self.assertEqual(self.request("GET", "/health"), (200, b"OK\n"))
        self.assertEqual(self.request("GET", "/readiness")[0], 200)
        self.put(f"{REPO}:v1", self.image())
        self.assertIn(b"kraken_build_index_tag_puts", self.request("GET", "/metrics")[1])

    def test_origin_unreachable_is_a_dependency(self) -> None:
        """An unreachable origin leaves /readiness 200; /dependencies names it, and the gauge.

        Before, one origin down made every build-index "not ready"; tags are still served
        from the backends, so the build-index is ready and says what it lacks apart.
        """
        origins = Membership(StaticHostList([ORIGIN]), NoHealthFilter(), self.clock)
        origins.refresh()
        self.ready = _backends_readiness(self.backends)
        self.api.dependencies = Dependencies(
            (("origin", _origin_readiness(self.client, origins)),),
            self.api.metrics.registry,
            self.clock,
        )
        self.assertEqual(self.request("GET", "/readiness"), (200, b"OK\n"))
        code, body = self.request("GET", "/dependencies")
        self.assertEqual(json.loads(body)["dependencies"]["origin"]["up"], True)
        self.agent.remove(ORIGIN)
        self.assertEqual(self.request("GET", "/readiness"), (200, b"OK\n"))
        code, body = self.request("GET", "/dependencies")
        self.assertEqual(code, 200)
        state = json.loads(body)["dependencies"]["origin"]
        self.assertFalse(state["up"])
        self.assertIn(ORIGIN, state["reason"])  # the reason names the origin asked
        self.assertIn(
            b'kraken_dependency_up{dependency="origin"} 0.0', self.request("GET", "/metrics")[1]
        )

    def test_readiness_503_when_queue_stopped(self) -> None:
        """A stopped replication queue (a stopped build-index) is a 503 saying so, at once."""
        self.ready = Deferred  # never answers: the queue alone decides
        self.successResultOf(self.queue.stopService())
        self.assertEqual(
            self.request("GET", "/readiness"), (503, b"not ready: replication queue stopped")
        )

    def test_origin_down_is_503(self) -> None:
        """When no origin answers, a PUT is 503."""
        self.agent.remove(ORIGIN)
        self.assertEqual(self.put(f"{REPO}:v1", Digest.of_bytes(b"m"))[0], 503)
