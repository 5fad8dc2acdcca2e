"""
The proxy's registry v2 through StubTreq, over a real origin API in memory.

The origin is the origin daemon's own Klein app with an in-memory backend (tests.origin.harness),
reached through a HostRoutingAgent; the build-index is a dict behind the ``TagIndex`` methods.
Blocking calls run inline and time is a Clock, so every request completes synchronously.
"""

from __future__ import annotations

import gzip
import json
import random
from typing import Any

from attrs import define, field
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.api.distribution import DOCKER_MANIFEST_V2, OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST
from kraken.api.proxy import (
    ProxyAPI,
    ProxyMetrics,
    paginate,
    parse_image_reference,
    tag_repository,
)
from kraken.clients.buildindex import TagNotFound
from kraken.clients.origin import OriginClient, OriginClusterClient, PollPolicy
from kraken.core import Digest
from kraken.http.client import HTTPClientFactory, HTTPStatusError
from kraken.http.dependencies import Dependencies
from kraken.http.errors import RegistryError
from kraken.http.testing import HostRoutingAgent
from kraken.io.runner import run_inline
from kraken.store import BlobStore
from tests.oci import manifest_of
from tests.origin.harness import BackendDown, MemoryOrigin, make_origin

BASE = "http://proxy:15000"
ORIGIN = "o1:15002"
REPO = "library/alpine"


@define
class MemoryTags:
    """The build-index as a dict of ``repo:tag`` -> digest; records every put."""

    tags: dict[str, Digest] = field(factory=dict)
    puts: list[tuple[str, Digest, bool]] = field(factory=list)
    deletes: list[tuple[str, bool]] = field(factory=list)
    put_error: Exception | None = None
    """When set, every put fails with it (a build-index that refuses)."""

    def get_tag(self, tag: str) -> Deferred[Digest]:
        """The digest, or TagNotFound."""
        if tag not in self.tags:
            return fail(TagNotFound(tag))
        return succeed(self.tags[tag])

    def put_tag(self, tag: str, digest: Digest, *, replicate: bool = False) -> Deferred[None]:
        """Store and record (or fail with ``put_error``)."""
        if self.put_error is not None:
            return fail(self.put_error)
        self.tags[tag] = digest
        self.puts.append((tag, digest, replicate))
        return succeed(None)

    def repository_tags(self, repo: str) -> Deferred[list[str]]:
        """Bare tags of ``repo``."""
        return succeed([t.rpartition(":")[2] for t in self.tags if t.rpartition(":")[0] == repo])

    def list_tags(self, prefix: str) -> Deferred[list[str]]:
        """``repo:tag`` entries with ``prefix``."""
        return succeed([t for t in self.tags if t.startswith(prefix)])

    def delete_tag(self, tag: str, *, replicate: bool = False) -> Deferred[None]:
        """Remove and record (as a put of None), or TagNotFound."""
        if self.tags.pop(tag, None) is None:
            return fail(TagNotFound(tag))
        self.deletes.append((tag, replicate))
        return succeed(None)


def layer(seed: int, size: int = 3000) -> bytes:
    """A gzipped blob of ``size`` random bytes (so a little longer than ``size``)."""
    return gzip.compress(random.Random(seed).randbytes(size), mtime=0)


class ProxyTestCase(SynchronousTestCase):
    """A proxy in front of one in-memory origin and a dict build-index."""

    def setUp(self) -> None:
        """Build the origin, the proxy and a StubTreq of the proxy."""
        self.clock = Clock()
        self.agent = HostRoutingAgent()
        self.origin: MemoryOrigin = make_origin(
            self, self.clock, address=ORIGIN, members=(ORIGIN,), agent=self.agent
        )
        self.http = HTTPClientFactory(self.clock, agent=self.agent)
        cluster = OriginClusterClient(
            OriginClient(self.http.client(), self.clock, chunk_size=1000, poll=PollPolicy(0.1)),
            lambda: [ORIGIN],
        )
        self.tags = MemoryTags()
        self.store = BlobStore(self.mktemp(), self.clock)
        self.api = ProxyAPI(self.store, run_inline, cluster, self.tags, self.clock)
        self.treq = StubTreq(self.api.resource())

    def tearDown(self) -> None:
        """Write-back failures of a backend taken down are expected."""
        self.flushLoggedErrors(BackendDown)

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        """Send a request to the proxy; (status, headers, body)."""
        d = self.treq.request(method, BASE + path, **kwargs)
        done: list[object] = []
        d.addBoth(lambda r: (done.append(r), r)[1])
        for _ in range(100):
            self.agent.flush()
            self.treq.flush()
            if done:
                break
            self.clock.advance(1)
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response.code, response.headers, body

    def header(self, headers: Any, name: str) -> str | None:
        """One header's value."""
        values = headers.getRawHeaders(name)
        return values[0] if values else None

    def error(self, body: bytes) -> str:
        """The registry error code of ``body``."""
        return json.loads(body)["errors"][0]["code"]  # type: ignore[no-any-return]

    def push_blob(self, data: bytes, repo: str = REPO) -> Digest:
        """A monolithic upload that must succeed."""
        d = Digest.of_bytes(data)
        code, _, body = self.call("POST", f"/v2/{repo}/blobs/uploads/?digest={d}", data=data)
        self.assertEqual(code, 201, body)
        return d

    def push_image(self, tag: str = "latest", seed: int = 1, repo: str = REPO) -> Digest:
        """Blobs, then the manifest by tag; returns the manifest digest."""
        layers = [layer(seed), layer(seed + 100)]
        config = json.dumps({"seed": seed, "rootfs": {"type": "layers"}}).encode()
        for blob in [*layers, config]:
            self.push_blob(blob, repo)
        manifest = manifest_of(config, layers)
        code, _headers, body = self.call(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            data=manifest,
            headers={"Content-Type": DOCKER_MANIFEST_V2},
        )
        self.assertEqual(code, 201, body)
        return Digest.of_bytes(manifest)

    def start(self, repo: str = REPO) -> str:
        """POST a chunked upload; its Location."""
        code, headers, body = self.call("POST", f"/v2/{repo}/blobs/uploads/")
        self.assertEqual(code, 202, body)
        return self.header(headers, "Location") or ""


class BaseTests(ProxyTestCase):
    """``/v2/``, unknown routes, names."""

    def test_version_check(self) -> None:
        """GET /v2/ answers {} with the API version header."""
        code, headers, body = self.call("GET", "/v2/")
        self.assertEqual((code, body), (200, b"{}"))
        self.assertEqual(self.header(headers, "Docker-Distribution-API-Version"), "registry/2.0")

    def test_health(self) -> None:
        """GET /health answers OK."""
        self.assertEqual(self.call("GET", "/health")[0], 200)

    def test_invalid_name(self) -> None:
        """An upper-case repository name is 400 NAME_INVALID."""
        code, _, body = self.call("POST", "/v2/Library/Alpine/blobs/uploads/")
        self.assertEqual((code, self.error(body)), (400, "NAME_INVALID"))

    def test_deletes_unsupported(self) -> None:
        """Deletes off (the default): DELETE of a manifest or a blob is 405 UNSUPPORTED with
        an Allow header that does not offer DELETE, and nothing is deleted."""
        d = Digest.of_bytes(b"x")
        for path in (f"/v2/{REPO}/manifests/latest", f"/v2/{REPO}/blobs/{d}"):
            code, headers, body = self.call("DELETE", path)
            self.assertEqual((code, self.error(body)), (405, "UNSUPPORTED"))
            self.assertIn("GET", self.header(headers, "Allow") or "")
            self.assertNotIn("DELETE", self.header(headers, "Allow") or "")
        self.assertEqual(self.tags.deletes, [])

    def test_unknown_route(self) -> None:
        """A path under /v2/ that is no route is 404."""
        self.assertEqual(self.call("GET", "/v2/library/alpine/nothing")[0], 404)


class BlobUploadTests(ProxyTestCase):
    """POST, PATCH, PUT, GET and DELETE of uploads, and mounts."""

    def test_monolithic_upload_reaches_origin(self) -> None:
        """POST ?digest= with the body: 201, Location, digest; at the origin and its backend."""
        data = layer(1)
        d = Digest.of_bytes(data)
        code, headers, body = self.call("POST", f"/v2/{REPO}/blobs/uploads/?digest={d}", data=data)
        self.assertEqual(code, 201, body)
        self.assertEqual(self.header(headers, "Location"), f"/v2/{REPO}/blobs/{d}")
        self.assertEqual(self.header(headers, "Docker-Content-Digest"), str(d))
        self.assertTrue(self.origin.store.has(d))
        self.assertEqual(self.origin.backend.blobs[d.hex], data)
        self.assertEqual(self.api.uploads, {})

    def test_chunked_upload(self) -> None:
        """POST 202, PATCHes with Content-Range, status, PUT: 201 and identical bytes."""
        data = layer(2, 5000)
        d = Digest.of_bytes(data)
        location = self.start()
        uid = location.rsplit("/", 1)[1]
        self.assertTrue(location.startswith(f"/v2/{REPO}/blobs/uploads/"))
        code, headers, _ = self.call("GET", location)
        self.assertEqual((code, self.header(headers, "Range")), (204, "0-0"))
        self.assertEqual(self.header(headers, "Docker-Upload-UUID"), uid)
        offset = 0
        for size in (1000, 1500, len(data) - 2500):
            chunk = data[offset : offset + size]
            code, headers, body = self.call(
                "PATCH",
                location,
                data=chunk,
                headers={"Content-Range": f"{offset}-{offset + size - 1}"},
            )
            self.assertEqual(code, 202, body)
            offset += size
            self.assertEqual(self.header(headers, "Range"), f"0-{offset - 1}")
            self.assertEqual(self.header(headers, "Location"), location)
        code, headers, _ = self.call("GET", location)
        self.assertEqual((code, self.header(headers, "Range")), (204, f"0-{len(data) - 1}"))
        code, headers, body = self.call("PUT", f"{location}?digest={d}")
        self.assertEqual(code, 201, body)
        self.assertEqual(self.origin.backend.blobs[d.hex], data)
        code, headers, _ = self.call("HEAD", f"/v2/{REPO}/blobs/{d}")
        self.assertEqual((code, self.header(headers, "Content-Length")), (200, str(len(data))))
        self.assertEqual(self.header(headers, "Docker-Content-Digest"), str(d))
        self.assertEqual(self.call("GET", f"/v2/{REPO}/blobs/{d}")[2], data)

    def test_streamed_patch_and_final_chunk_in_put(self) -> None:
        """A PATCH without Content-Range appends; the PUT may carry the last chunk."""
        data = layer(3)
        d = Digest.of_bytes(data)
        location = self.start()
        code, headers, _ = self.call("PATCH", location, data=data[:100])
        self.assertEqual((code, self.header(headers, "Range")), (202, "0-99"))
        code, _, body = self.call("PUT", f"{location}?digest={d}", data=data[100:])
        self.assertEqual(code, 201, body)
        self.assertEqual(self.origin.store.has(d), True)

    def test_out_of_order_chunk_is_416(self) -> None:
        """A chunk that does not start at the end: 416 RANGE_INVALID, the upload unchanged."""
        location = self.start()
        self.call("PATCH", location, data=b"a" * 10, headers={"Content-Range": "0-9"})
        code, headers, body = self.call(
            "PATCH", location, data=b"b" * 10, headers={"Content-Range": "20-29"}
        )
        self.assertEqual((code, self.error(body)), (416, "RANGE_INVALID"))
        self.assertEqual(self.header(headers, "Range"), "0-9")
        code, _, body = self.call(
            "PATCH", location, data=b"b" * 5, headers={"Content-Range": "10-19"}
        )
        self.assertEqual((code, self.error(body)), (416, "RANGE_INVALID"))
        code, headers, _ = self.call("GET", location)
        self.assertEqual(self.header(headers, "Range"), "0-9")

    def test_digest_mismatch_stores_nothing(self) -> None:
        """PUT with another digest: 400 DIGEST_INVALID; nothing at the origin, upload gone."""
        data = layer(4)
        wrong = Digest.of_bytes(b"something else")
        location = self.start()
        self.call("PATCH", location, data=data)
        code, _, body = self.call("PUT", f"{location}?digest={wrong}")
        self.assertEqual((code, self.error(body)), (400, "DIGEST_INVALID"))
        self.assertFalse(self.origin.store.has(wrong))
        self.assertFalse(self.origin.store.has(Digest.of_bytes(data)))
        self.assertEqual(self.store.list_uploads(), [])
        self.assertEqual(self.call("GET", location)[0], 404)

    def test_wrong_bytes_for_cached_digest(self) -> None:
        """PUT claiming a blob the proxy has cached, with other bytes: 400, not 201."""
        cached = layer(5)
        digest = self.push_blob(cached)
        self.assertTrue(self.store.has(digest))
        location = self.start()
        self.call("PATCH", location, data=layer(6))
        code, _, body = self.call("PUT", f"{location}?digest={digest}")
        self.assertEqual((code, self.error(body)), (400, "DIGEST_INVALID"))
        self.assertEqual(self.store.list_uploads(), [])
        # The cached blob is untouched, and the right bytes under that digest still succeed.
        location = self.start()
        self.call("PATCH", location, data=cached)
        self.assertEqual(self.call("PUT", f"{location}?digest={digest}")[0], 201)

    def test_put_without_or_with_bad_digest(self) -> None:
        """PUT without ?digest= or with a malformed one is 400 DIGEST_INVALID."""
        location = self.start()
        for suffix in ("", "?digest=sha256:nothex", "?digest=md5:abc"):
            code, _, body = self.call("PUT", location + suffix)
            self.assertEqual((code, self.error(body)), (400, "DIGEST_INVALID"), suffix)

    def test_unknown_upload(self) -> None:
        """Every upload method on an unknown or another repo's id: 404 BLOB_UPLOAD_UNKNOWN."""
        location = self.start()
        other = location.replace(REPO, "other/repo")
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            for path in (f"/v2/{REPO}/blobs/uploads/" + "0" * 32, other):
                code, _, body = self.call(method, path)
                self.assertEqual((code, self.error(body)), (404, "BLOB_UPLOAD_UNKNOWN"))

    def test_cancel(self) -> None:
        """DELETE cancels an upload: 204, then 404; its file is removed."""
        location = self.start()
        self.call("PATCH", location, data=b"partial")
        self.assertEqual(self.call("DELETE", location)[0], 204)
        self.assertEqual(self.call("GET", location)[0], 404)
        self.assertEqual(self.store.list_uploads(), [])

    def test_upload_expires(self) -> None:
        """An upload idle past the timeout is dropped by expire_uploads."""
        location = self.start()
        self.clock.advance(self.api.upload_timeout + 1)
        self.assertEqual(self.api.expire_uploads(), 1)
        self.assertEqual(self.call("GET", location)[0], 404)
        self.assertEqual(self.store.list_uploads(), [])

    def test_mount_existing_blob(self) -> None:
        """A mount of a blob the ring has: 201 with the new repository's Location."""
        d = self.push_blob(layer(5), "other/repo")
        code, headers, body = self.call(
            "POST", f"/v2/{REPO}/blobs/uploads/?mount={d}&from=other/repo"
        )
        self.assertEqual(code, 201, body)
        self.assertEqual(self.header(headers, "Location"), f"/v2/{REPO}/blobs/{d}")

    def test_mount_missing_blob_starts_upload(self) -> None:
        """A mount of an unknown blob falls back to an ordinary upload (202)."""
        d = Digest.of_bytes(b"nobody has this")
        code, headers, _ = self.call("POST", f"/v2/{REPO}/blobs/uploads/?mount={d}&from=x/y")
        self.assertEqual(code, 202)
        self.assertIn("/blobs/uploads/", self.header(headers, "Location") or "")

    def test_origin_down_is_503(self) -> None:
        """With no origin reachable the commit answers 503 UNAVAILABLE."""
        data = layer(6)
        self.agent.remove(ORIGIN)
        d = Digest.of_bytes(data)
        code, _, body = self.call("POST", f"/v2/{REPO}/blobs/uploads/?digest={d}", data=data)
        self.assertEqual((code, self.error(body)), (503, "UNAVAILABLE"))


class BlobReadTests(ProxyTestCase):
    """HEAD and GET of blobs."""

    def test_unknown_blob(self) -> None:
        """HEAD and GET of a blob nobody has are 404 (GET with BLOB_UNKNOWN)."""
        d = Digest.of_bytes(b"unknown")
        self.assertEqual(self.call("HEAD", f"/v2/{REPO}/blobs/{d}")[0], 404)
        code, _, body = self.call("GET", f"/v2/{REPO}/blobs/{d}")
        self.assertEqual((code, self.error(body)), (404, "BLOB_UNKNOWN"))

    def test_get_from_origin_with_range(self) -> None:
        """A blob only the origin has is fetched into the proxy's cache; Range gives 206."""
        data = layer(7, 4000)
        d = self.push_blob(data)
        self.store.delete(d)
        code, headers, body = self.call(
            "GET", f"/v2/{REPO}/blobs/{d}", headers={"Range": "bytes=10-19"}
        )
        self.assertEqual(self.header(headers, "Content-Range"), f"bytes 10-19/{len(data)}")
        self.assertEqual((code, body), (206, data[10:20]))
        self.assertTrue(self.store.has(d))
        code, _headers, body = self.call(
            "GET", f"/v2/{REPO}/blobs/{d}", headers={"Range": f"bytes={len(data) + 5}-"}
        )
        self.assertEqual((code, self.error(body)), (416, "RANGE_INVALID"))

    def test_bad_digest(self) -> None:
        """A malformed digest in a blob path is 400 DIGEST_INVALID."""
        code, _, body = self.call("GET", f"/v2/{REPO}/blobs/sha256:xyz")
        self.assertEqual((code, self.error(body)), (400, "DIGEST_INVALID"))


class ManifestTests(ProxyTestCase):
    """PUT, GET and HEAD of manifests."""

    def test_build_index_unavailable_is_503(self) -> None:
        """A build-index that answers 503 (it could not reach the origins) makes the manifest
        PUT a 503 UNAVAILABLE the client retries, not a 500."""
        layers = [layer(7), layer(107)]
        config = json.dumps({"seed": 7, "rootfs": {"type": "layers"}}).encode()
        for blob in [*layers, config]:
            self.push_blob(blob)
        error = HTTPStatusError(503, b"origins unreachable", "http://bi/tags/x", "PUT")
        self.tags.put_error = error
        code, _, body = self.call(
            "PUT",
            f"/v2/{REPO}/manifests/v503",
            data=manifest_of(config, layers),
            headers={"Content-Type": DOCKER_MANIFEST_V2},
        )
        self.assertEqual((code, self.error(body)), (503, "UNAVAILABLE"))

    def test_push_and_pull_by_tag_and_digest(self) -> None:
        """A tag PUT stores the manifest at the origin and tags it with replicate=true."""
        d = self.push_image("v1")
        self.assertEqual(self.tags.puts, [(f"{REPO}:v1", d, True)])
        self.assertTrue(self.origin.store.has(d))
        for ref in ("v1", str(d)):
            code, headers, body = self.call("GET", f"/v2/{REPO}/manifests/{ref}")
            self.assertEqual(code, 200)
            self.assertEqual(Digest.of_bytes(body), d)
            self.assertEqual(self.header(headers, "Content-Type"), DOCKER_MANIFEST_V2)
            self.assertEqual(self.header(headers, "Docker-Content-Digest"), str(d))
            code, headers, _ = self.call("HEAD", f"/v2/{REPO}/manifests/{ref}")
            self.assertEqual((code, self.header(headers, "Content-Length")), (200, str(len(body))))

    def test_put_by_digest_has_no_tag(self) -> None:
        """A PUT by digest stores the manifest but tags nothing; a wrong digest is refused."""
        config = b"{}"
        self.push_blob(config)
        manifest = manifest_of(config, [], OCI_IMAGE_MANIFEST)
        d = Digest.of_bytes(manifest)
        code, headers, body = self.call("PUT", f"/v2/{REPO}/manifests/{d}", data=manifest)
        self.assertEqual(code, 201, body)
        self.assertEqual(self.header(headers, "Location"), f"/v2/{REPO}/manifests/{d}")
        self.assertEqual(self.tags.puts, [])
        wrong = Digest.of_bytes(b"other")
        code, _, body = self.call("PUT", f"/v2/{REPO}/manifests/{wrong}", data=manifest)
        self.assertEqual((code, self.error(body)), (400, "DIGEST_INVALID"))

    def test_missing_blob(self) -> None:
        """A manifest naming a blob the ring lacks: 404 MANIFEST_BLOB_UNKNOWN, nothing stored."""
        config = b'{"a": 1}'
        self.push_blob(config)
        missing = layer(9)
        manifest = manifest_of(config, [missing])
        code, _, body = self.call("PUT", f"/v2/{REPO}/manifests/latest", data=manifest)
        self.assertEqual((code, self.error(body)), (404, "MANIFEST_BLOB_UNKNOWN"))
        detail = json.loads(body)["errors"][0]["detail"]
        self.assertEqual(detail, {"digest": str(Digest.of_bytes(missing))})
        self.assertFalse(self.origin.store.has(Digest.of_bytes(manifest)))
        self.assertEqual(self.tags.puts, [])

    def test_invalid_manifests(self) -> None:
        """Not JSON, not an object, schema 1, mediaType vs Content-Type: MANIFEST_INVALID."""
        cases = [
            (b"not json", {}),
            (b"[1, 2]", {}),
            (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), {}),
            (
                manifest_of(b"{}", []),
                {"Content-Type": OCI_IMAGE_MANIFEST},
            ),
        ]
        for data, headers in cases:
            code, _, body = self.call(
                "PUT", f"/v2/{REPO}/manifests/latest", data=data, headers=headers
            )
            self.assertEqual((code, self.error(body)), (400, "MANIFEST_INVALID"), data[:40])
        self.assertEqual(self.tags.puts, [])

    def test_oversized_manifest(self) -> None:
        """A manifest over 4 MiB is 413 MANIFEST_INVALID."""
        data = b" " * (4 * 1024 * 1024 + 1)
        code, _, body = self.call("PUT", f"/v2/{REPO}/manifests/latest", data=data)
        self.assertEqual((code, self.error(body)), (413, "MANIFEST_INVALID"))

    def test_invalid_tag(self) -> None:
        """A tag outside the grammar is 400 MANIFEST_INVALID."""
        code, _, body = self.call("PUT", f"/v2/{REPO}/manifests/-bad", data=b"{}")
        self.assertEqual((code, self.error(body)), (400, "MANIFEST_INVALID"))

    def test_index_needs_its_children(self) -> None:
        """An OCI index is accepted once its child manifests are pushed, refused before."""
        config = b'{"platform": 1}'
        self.push_blob(config)
        child = manifest_of(config, [], OCI_IMAGE_MANIFEST)
        child_d = Digest.of_bytes(child)
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_IMAGE_INDEX,
                "manifests": [
                    {"mediaType": OCI_IMAGE_MANIFEST, "size": len(child), "digest": str(child_d)}
                ],
            }
        ).encode()
        code, _, body = self.call("PUT", f"/v2/{REPO}/manifests/multi", data=index)
        self.assertEqual((code, self.error(body)), (404, "MANIFEST_BLOB_UNKNOWN"))
        self.assertEqual(self.call("PUT", f"/v2/{REPO}/manifests/{child_d}", data=child)[0], 201)
        self.assertEqual(self.call("PUT", f"/v2/{REPO}/manifests/multi", data=index)[0], 201)
        code, headers, body = self.call("GET", f"/v2/{REPO}/manifests/multi")
        self.assertEqual((code, body), (200, index))
        self.assertEqual(self.header(headers, "Content-Type"), OCI_IMAGE_INDEX)

    def test_unknown_manifest(self) -> None:
        """An unknown tag or digest is 404 MANIFEST_UNKNOWN."""
        for ref in ("nope", str(Digest.of_bytes(b"none"))):
            code, _, body = self.call("GET", f"/v2/{REPO}/manifests/{ref}")
            self.assertEqual((code, self.error(body)), (404, "MANIFEST_UNKNOWN"), ref)

    def test_malformed_reference_is_unknown(self) -> None:
        """GET and HEAD of a reference that is neither tag nor digest: 404 MANIFEST_UNKNOWN
        (the spec's answer for a manifest that does not exist), not 400."""
        for ref in ("-bad", "sha256:xyz", "md5:00", "x" * 200):
            for method in ("GET", "HEAD"):
                code, _, body = self.call(method, f"/v2/{REPO}/manifests/{ref}")
                self.assertEqual(code, 404, (method, ref))
                if method == "GET":
                    self.assertEqual(self.error(body), "MANIFEST_UNKNOWN")

    def test_allow_lists_each_method_once(self) -> None:
        """A method a route lacks is 405 with an Allow header naming each method once."""
        cases = {
            f"/v2/{REPO}/manifests/latest": ("PATCH", "GET, HEAD, PUT"),
            f"/v2/{REPO}/blobs/{Digest.of_bytes(b'x')}": ("PUT", "GET, HEAD"),
            f"/v2/{REPO}/tags/list": ("POST", "GET, HEAD"),
            "/v2/_catalog": ("PUT", "GET, HEAD"),
            f"/v2/{REPO}/blobs/uploads/": ("GET", "POST"),
        }
        for path, (method, allow) in cases.items():
            code, headers, body = self.call(method, path)
            self.assertEqual((code, self.error(body)), (405, "UNSUPPORTED"), path)
            self.assertEqual(self.header(headers, "Allow"), allow, path)

    def test_mutable_tag(self) -> None:
        """A second push of a tag is what the next GET serves."""
        self.push_image("latest", seed=1)
        second = self.push_image("latest", seed=2)
        _, headers, _ = self.call("GET", f"/v2/{REPO}/manifests/latest")
        self.assertEqual(self.header(headers, "Docker-Content-Digest"), str(second))


class ListingTests(ProxyTestCase):
    """tags/list and _catalog with pagination."""

    def setUp(self) -> None:
        """Tags in three repositories."""
        super().setUp()
        d = Digest.of_bytes(b"m")
        for entry in ("a/one:v1", "a/one:v2", "a/one:v3", "b/two:latest", "c:x", "c:y"):
            self.tags.tags[entry] = d

    def test_tags_list(self) -> None:
        """All tags of a repository, sorted."""
        code, _, body = self.call("GET", "/v2/a/one/tags/list")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body), {"name": "a/one", "tags": ["v1", "v2", "v3"]})

    def test_tags_pagination(self) -> None:
        """n and last page through the tags with a Link to the next page."""
        code, headers, body = self.call("GET", "/v2/a/one/tags/list?n=2")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["tags"], ["v1", "v2"])
        self.assertEqual(
            self.header(headers, "Link"), '</v2/a/one/tags/list?n=2&last=v2>; rel="next"'
        )
        _code, headers, body = self.call("GET", "/v2/a/one/tags/list?n=2&last=v2")
        self.assertEqual(json.loads(body)["tags"], ["v3"])
        self.assertIsNone(self.header(headers, "Link"))

    def test_zero_page(self) -> None:
        """``n=0`` is an empty page without a Link (not a crash)."""
        cases = (("/v2/a/one/tags/list?n=0", "tags"), ("/v2/_catalog?n=0", "repositories"))
        for path, key in cases:
            code, headers, body = self.call("GET", path)
            self.assertEqual((code, json.loads(body)[key]), (200, []), path)
            self.assertIsNone(self.header(headers, "Link"))

    def test_unknown_repository(self) -> None:
        """tags/list of a repository without tags is 404 NAME_UNKNOWN."""
        code, _, body = self.call("GET", "/v2/nobody/tags/list")
        self.assertEqual((code, self.error(body)), (404, "NAME_UNKNOWN"))

    def test_bad_n(self) -> None:
        """A non-numeric n is 400 PAGINATION_NUMBER_INVALID."""
        for path in ("/v2/a/one/tags/list?n=x", "/v2/_catalog?n=-1"):
            code, _, body = self.call("GET", path)
            self.assertEqual((code, self.error(body)), (400, "PAGINATION_NUMBER_INVALID"))

    def test_catalog(self) -> None:
        """The catalog lists each repository once, paginated with Link."""
        code, headers, body = self.call("GET", "/v2/_catalog")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body), {"repositories": ["a/one", "b/two", "c"]})
        self.assertIsNone(self.header(headers, "Link"))
        _code, headers, body = self.call("GET", "/v2/_catalog?n=1&last=a/one")
        self.assertEqual(json.loads(body), {"repositories": ["b/two"]})
        self.assertEqual(
            self.header(headers, "Link"), '</v2/_catalog?n=1&last=b%2Ftwo>; rel="next"'
        )


class ReferrerTestCase(ProxyTestCase):
    """Pushing artifacts with a subject and reading referrers."""

    def push_artifact(self, subject: Digest, artifact_type: str, seed: int) -> Digest:
        """An OCI artifact manifest (empty config, one layer) with ``subject``; its digest."""
        blob = layer(seed, 100)
        empty = b"{}"
        for data in (blob, empty):
            self.push_blob(data)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": str(Digest.of_bytes(empty)),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/octet-stream",
                    "digest": str(Digest.of_bytes(blob)),
                    "size": len(blob),
                }
            ],
            "subject": {"mediaType": DOCKER_MANIFEST_V2, "digest": str(subject), "size": 1},
            "annotations": {"seed": str(seed)},
        }
        data = json.dumps(doc).encode()
        digest = Digest.of_bytes(data)
        code, headers, body = self.call(
            "PUT",
            f"/v2/{REPO}/manifests/{digest}",
            data=data,
            headers={"Content-Type": OCI_IMAGE_MANIFEST},
        )
        self.assertEqual(code, 201, body)
        self.assertEqual(self.header(headers, "OCI-Subject"), str(subject))
        return digest

    def referrers(self, subject: Digest, query: str = "") -> tuple[Any, list[dict[str, Any]]]:
        """GET the referrers of ``subject``: headers and descriptors."""
        code, headers, body = self.call("GET", f"/v2/{REPO}/referrers/{subject}{query}")
        self.assertEqual(code, 200, body)
        self.assertEqual(self.header(headers, "Content-Type"), OCI_IMAGE_INDEX)
        doc = json.loads(body)
        self.assertEqual((doc["schemaVersion"], doc["mediaType"]), (2, OCI_IMAGE_INDEX))
        return headers, doc["manifests"]


class ReferrersTests(ReferrerTestCase):
    """OCI 1.1 referrers: ``OCI-Subject`` on PUT, ``GET /v2/<name>/referrers/<digest>``."""

    def test_push_and_list(self) -> None:
        """Each manifest pushed with a subject is listed with its artifactType, size and
        annotations; pushing one again does not list it twice."""
        image = self.push_image("v1")
        self.assertEqual(self.referrers(image)[1], [])
        sig = self.push_artifact(image, "application/vnd.example.sig", 1)
        sbom = self.push_artifact(image, "application/vnd.example.sbom", 2)
        self.push_artifact(image, "application/vnd.example.sig", 1)
        headers, found = self.referrers(image)
        self.assertIsNone(self.header(headers, "OCI-Filters-Applied"))
        self.assertEqual([d["digest"] for d in found], [str(sig), str(sbom)])
        self.assertEqual(found[0]["artifactType"], "application/vnd.example.sig")
        self.assertEqual(found[0]["mediaType"], OCI_IMAGE_MANIFEST)
        self.assertEqual(found[0]["annotations"], {"seed": "1"})
        _, sig_body = self.call("GET", f"/v2/{REPO}/manifests/{sig}")[1:]
        self.assertEqual(found[0]["size"], len(sig_body))

    def test_filter(self) -> None:
        """``artifactType`` keeps only matching descriptors and sets OCI-Filters-Applied."""
        image = self.push_image("v1")
        self.push_artifact(image, "application/vnd.example.sig", 1)
        sbom = self.push_artifact(image, "application/vnd.example.sbom", 2)
        headers, found = self.referrers(image, "?artifactType=application/vnd.example.sbom")
        self.assertEqual(self.header(headers, "OCI-Filters-Applied"), "artifactType")
        self.assertEqual([d["digest"] for d in found], [str(sbom)])

    def test_fallback_tag_and_replication(self) -> None:
        """The list is the index tagged ``sha256-<hex>`` (the fallback schema old clients read),
        stored at the origin and tagged with replicate=true."""
        image = self.push_image("v1")
        sig = self.push_artifact(image, "application/vnd.example.sig", 1)
        tag = f"{REPO}:sha256-{image.hex}"
        index_digest = self.tags.tags[tag]
        self.assertIn((tag, index_digest, True), self.tags.puts)
        self.assertTrue(self.origin.store.has(index_digest))
        code, headers, body = self.call("GET", f"/v2/{REPO}/manifests/sha256-{image.hex}")
        self.assertEqual(code, 200)
        self.assertEqual(self.header(headers, "Content-Type"), OCI_IMAGE_INDEX)
        self.assertEqual([m["digest"] for m in json.loads(body)["manifests"]], [str(sig)])

    def test_subject_may_come_first(self) -> None:
        """A referrer may be pushed before its subject exists (the spec allows it)."""
        ghost = Digest.of_bytes(b"not pushed yet")
        sig = self.push_artifact(ghost, "application/vnd.example.sig", 1)
        self.assertEqual([d["digest"] for d in self.referrers(ghost)[1]], [str(sig)])

    def test_no_subject_no_header(self) -> None:
        """A manifest without subject gets no OCI-Subject and no referrers tag."""
        config = b"{}"
        self.push_blob(config)
        manifest = manifest_of(config, [], OCI_IMAGE_MANIFEST)
        code, headers, _ = self.call("PUT", f"/v2/{REPO}/manifests/v1", data=manifest)
        self.assertEqual(code, 201)
        self.assertIsNone(self.header(headers, "OCI-Subject"))
        self.assertEqual(list(self.tags.tags), [f"{REPO}:v1"])

    def test_errors(self) -> None:
        """A malformed digest is 400 DIGEST_INVALID; a write is 405 with Allow: GET, HEAD;
        a malformed subject is 400 MANIFEST_INVALID."""
        code, _, body = self.call("GET", f"/v2/{REPO}/referrers/sha256:zz")
        self.assertEqual((code, self.error(body)), (400, "DIGEST_INVALID"))
        code, headers, body = self.call("DELETE", f"/v2/{REPO}/referrers/{Digest.of_bytes(b'')}")
        self.assertEqual((code, self.error(body)), (405, "UNSUPPORTED"))
        self.assertEqual(self.header(headers, "Allow"), "GET, HEAD")
        config = b"{}"
        self.push_blob(config)
        doc = json.loads(manifest_of(config, [], OCI_IMAGE_MANIFEST))
        doc["subject"] = {"digest": "sha256:nothex"}
        code, _, body = self.call("PUT", f"/v2/{REPO}/manifests/x", data=json.dumps(doc).encode())
        self.assertEqual((code, self.error(body)), (400, "MANIFEST_INVALID"))


class DeleteTests(ReferrerTestCase):
    """``DELETE`` of tags, manifests and blobs with ``delete_enabled``."""

    def setUp(self) -> None:
        """A proxy that serves deletes."""
        super().setUp()
        self.api.delete_enabled = True

    def test_delete_tag(self) -> None:
        """DELETE by tag: 202, the tag gone from the build-index (with replication), the
        other tags kept; again: 404 MANIFEST_UNKNOWN."""
        self.push_image("v1")
        self.push_image("v2", seed=2)
        code, _, body = self.call("DELETE", f"/v2/{REPO}/manifests/v1")
        self.assertEqual(code, 202, body)
        self.assertEqual(self.tags.deletes, [(f"{REPO}:v1", True)])
        code, _, body = self.call("GET", f"/v2/{REPO}/manifests/v1")
        self.assertEqual((code, self.error(body)), (404, "MANIFEST_UNKNOWN"))
        self.assertEqual(json.loads(self.call("GET", f"/v2/{REPO}/tags/list")[2])["tags"], ["v2"])
        code, _, body = self.call("DELETE", f"/v2/{REPO}/manifests/v1")
        self.assertEqual((code, self.error(body)), (404, "MANIFEST_UNKNOWN"))

    def test_delete_by_digest(self) -> None:
        """DELETE by digest removes every tag of the repository pointing at it, and only
        those; an unknown digest or a malformed reference is 404 MANIFEST_UNKNOWN."""
        d = self.push_image("a")
        self.push_image("b")
        other = self.push_image("c", seed=3)
        self.push_image("x", repo="elsewhere/app")
        code, _, body = self.call("DELETE", f"/v2/{REPO}/manifests/{d}")
        self.assertEqual(code, 202, body)
        self.assertEqual(sorted(self.tags.tags), ["elsewhere/app:x", f"{REPO}:c"])
        self.assertEqual(self.tags.tags[f"{REPO}:c"], other)
        for ref in (str(Digest.of_bytes(b"never")), "sha256:bad", "-bad"):
            code, _, body = self.call("DELETE", f"/v2/{REPO}/manifests/{ref}")
            self.assertEqual((code, self.error(body)), (404, "MANIFEST_UNKNOWN"), ref)

    def test_delete_referrer(self) -> None:
        """Deleting a referrer by digest drops it from its subject's referrers; the last one
        takes the referrers tag with it."""
        image = self.push_image("v1")
        sig = self.push_artifact(image, "application/vnd.example.sig", 1)
        sbom = self.push_artifact(image, "application/vnd.example.sbom", 2)
        self.assertEqual(self.call("DELETE", f"/v2/{REPO}/manifests/{sig}")[0], 202)
        self.assertEqual([d["digest"] for d in self.referrers(image)[1]], [str(sbom)])
        self.assertEqual(self.call("DELETE", f"/v2/{REPO}/manifests/{sbom}")[0], 202)
        self.assertEqual(self.referrers(image)[1], [])
        self.assertNotIn(f"{REPO}:sha256-{image.hex}", self.tags.tags)

    def test_delete_blob(self) -> None:
        """DELETE of a blob the cluster has: 202 and the proxy's copy gone (the origin's
        stays for the garbage collector); unknown: 404 BLOB_UNKNOWN; malformed: 400."""
        data = layer(7)
        d = self.push_blob(data)
        self.assertTrue(self.store.has(d))
        code, _, body = self.call("DELETE", f"/v2/{REPO}/blobs/{d}")
        self.assertEqual(code, 202, body)
        self.assertFalse(self.store.has(d))
        self.assertTrue(self.origin.store.has(d))
        code, _, body = self.call("DELETE", f"/v2/{REPO}/blobs/{Digest.of_bytes(b'?')}")
        self.assertEqual((code, self.error(body)), (404, "BLOB_UNKNOWN"))
        code, _, body = self.call("DELETE", f"/v2/{REPO}/blobs/sha256:zz")
        self.assertEqual((code, self.error(body)), (400, "DIGEST_INVALID"))

    def test_allow_names_delete(self) -> None:
        """With deletes on, a 405's Allow lists DELETE on manifests and blobs."""
        code, headers, _ = self.call("PATCH", f"/v2/{REPO}/manifests/latest")
        self.assertEqual((code, self.header(headers, "Allow")), (405, "GET, HEAD, PUT, DELETE"))
        code, headers, _ = self.call("PUT", f"/v2/{REPO}/blobs/{Digest.of_bytes(b'x')}")
        self.assertEqual((code, self.header(headers, "Allow")), (405, "GET, HEAD, DELETE"))


class PrefetchTests(ProxyTestCase):
    """POST /proxy/v1|v2/registry/prefetch."""

    def test_v2_warms_the_origin(self) -> None:
        """Blobs evicted from the origin (but in its backend) are cached there again."""
        d = self.push_image("warm")
        manifest = json.loads(self.call("GET", f"/v2/{REPO}/manifests/warm")[2])
        layers = [Digest.parse(entry["digest"]) for entry in manifest["layers"]]
        for blob in layers:
            self.origin.store.delete(blob)
        code, _, body = self.call(
            "POST",
            "/proxy/v2/registry/prefetch",
            data=json.dumps({"tag": f"127.0.0.1:5000/{REPO}:warm", "trace_id": "t1"}).encode(),
        )
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["prefetched"], True)
        self.assertEqual(json.loads(body)["trace_id"], "t1")
        self.assertTrue(all(self.origin.store.has(b) for b in layers))
        self.assertTrue(self.origin.store.has(d))

    def notify(self, *events: dict[str, Any]) -> tuple[int, bytes]:
        """POST a notification envelope of ``events``; status and body."""
        code, _, body = self.call(
            "POST",
            "/registry/notifications",
            data=json.dumps({"events": list(events)}).encode(),
            headers={"Content-Type": "application/vnd.docker.distribution.events.v1+json"},
        )
        return code, body

    def test_push_notification_preheats(self) -> None:
        """A manifest push event makes the origin fetch the image's blobs again from its
        backend; blob pushes and pulls are ignored; a bad envelope is 400."""
        d = self.push_image("warm")
        manifest = json.loads(self.call("GET", f"/v2/{REPO}/manifests/warm")[2])
        layers = [Digest.parse(entry["digest"]) for entry in manifest["layers"]]
        for blob in layers:
            self.origin.store.delete(blob)
        target = {"mediaType": DOCKER_MANIFEST_V2, "repository": REPO, "digest": str(d)}
        ignored = [
            {"action": "pull", "target": target},
            {"action": "push", "target": {**target, "mediaType": "application/octet-stream"}},
            {"action": "push", "target": {**target, "repository": "Bad/Name"}},
            "not an event",
        ]
        code, body = self.notify(*ignored)
        self.assertEqual((code, json.loads(body)), (200, {"preheating": 0}))
        self.assertFalse(any(self.origin.store.has(b) for b in layers))
        code, body = self.notify({"action": "push", "target": target})
        self.assertEqual((code, json.loads(body)), (200, {"preheating": 1}))
        for _ in range(20):
            self.agent.flush()
            self.clock.advance(1)
        self.assertTrue(all(self.origin.store.has(b) for b in layers))
        for bad in (b"[]", b"{}", b"not json"):
            code, _, _ = self.call("POST", "/registry/notifications", data=bad)
            self.assertEqual(code, 400, bad)

    def test_v1_answers_first(self) -> None:
        """v1 answers 200 once the manifests are resolved."""
        self.push_image("warm")
        code, _, body = self.call(
            "POST", "/proxy/v1/registry/prefetch", data=json.dumps({"tag": f"{REPO}:warm"})
        )
        self.assertEqual((code, json.loads(body)["status"]), (200, "success"))

    def test_errors(self) -> None:
        """Unknown tag: 404; bad body or reference: 400; both with prefetched false."""
        for data, status in (
            (json.dumps({"tag": f"{REPO}:missing"}), 404),
            (b"not json", 400),
            (json.dumps({"tag": "no-tag-here"}), 400),
            (json.dumps({"nothing": 1}), 400),
        ):
            code, _, body = self.call("POST", "/proxy/v1/registry/prefetch", data=data)
            self.assertEqual(code, status, body)
            self.assertEqual(json.loads(body)["prefetched"], False)


def metric(metrics: ProxyMetrics, name: str, **labels: str) -> float:
    """The current value of sample ``name`` with ``labels`` (0 when absent)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class ReadinessTests(ProxyTestCase):
    """``GET /readiness`` runs the checks it was given."""

    def test_ready_when_every_check_passes(self) -> None:
        """Both checks fire: 200 OK, and each check was asked."""
        asked: list[str] = []

        def check(name: str) -> Any:
            def run() -> Deferred[None]:
                asked.append(name)
                return succeed(None)

            return run

        self.api.readiness_checks = (("origin", check("origin")), ("build-index", check("bi")))
        code, _, body = self.call("GET", "/readiness")
        self.assertEqual((code, body), (200, b"OK\n"))
        self.assertEqual(asked, ["origin", "bi"])

    def test_not_ready_names_the_failing_checks(self) -> None:
        """A failing check is 503 UNAVAILABLE naming that check and its reason only."""
        self.api.readiness_checks = (
            ("origin", lambda: succeed(None)),
            ("build-index", lambda: fail(RuntimeError("connection refused"))),
        )
        code, _, body = self.call("GET", "/readiness")
        self.assertEqual((code, self.error(body)), (503, "UNAVAILABLE"))
        message = json.loads(body)["errors"][0]["message"]
        self.assertIn("build-index: connection refused", message)
        self.assertNotIn("origin", message)


class DependenciesTests(ProxyTestCase):
    """``GET /dependencies``: the origin ring and the build-index, apart from readiness."""

    def test_dependency_down_keeps_the_proxy_ready(self) -> None:
        """A failing build-index shows in /dependencies and the gauge; /readiness stays 200."""
        self.api.dependencies = Dependencies(
            (
                ("origin", lambda: succeed(None)),
                ("build-index", lambda: fail(RuntimeError("connection refused"))),
            ),
            self.api.metrics.registry,
            self.clock,
        )
        self.assertEqual(self.call("GET", "/readiness")[0], 200)
        code, headers, body = self.call("GET", "/dependencies")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(
            json.loads(body),
            {
                "dependencies": {
                    "build-index": {"up": False, "reason": "connection refused"},
                    "origin": {"up": True, "reason": None},
                }
            },
        )
        self.assertEqual(
            metric(self.api.metrics, "kraken_dependency_up", dependency="build-index"), 0.0
        )
        self.assertEqual(metric(self.api.metrics, "kraken_dependency_up", dependency="origin"), 1.0)


class MetricsTests(ProxyTestCase):
    """``GET /metrics`` and what the routes count."""

    def test_exposition(self) -> None:
        """/metrics is Prometheus text naming the proxy's counters."""
        code, headers, body = self.call("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue((self.header(headers, "Content-Type") or "").startswith("text/plain"))
        for name in (
            "kraken_proxy_blob_pushes",
            "kraken_proxy_blob_bytes_uploaded",
            "kraken_proxy_manifest_puts",
            "kraken_proxy_errors",
        ):
            self.assertIn(name.encode(), body)

    def test_push_counts_blobs_bytes_and_manifests(self) -> None:
        """An image push counts 3 uploaded blobs, their bytes and one tag manifest put."""
        self.push_image("v1", seed=7)
        layers = [layer(7), layer(107)]
        config = json.dumps({"seed": 7, "rootfs": {"type": "layers"}}).encode()
        m = self.api.metrics
        self.assertEqual(metric(m, "kraken_proxy_blob_pushes_total", kind="upload"), 3)
        self.assertEqual(
            metric(m, "kraken_proxy_blob_bytes_uploaded_total"), sum(map(len, [*layers, config]))
        )
        self.assertEqual(metric(m, "kraken_proxy_manifest_puts_total", reference="tag"), 1)
        self.assertEqual(metric(m, "kraken_proxy_manifest_puts_total", reference="digest"), 0)
        _, _, body = self.call("GET", "/metrics")
        self.assertIn(b'kraken_proxy_manifest_puts_total{reference="tag"} 1.0', body)

    def test_mount_counts_as_a_push(self) -> None:
        """A successful cross-repository mount counts under kind=mount, no bytes."""
        d = self.push_blob(layer(8))
        before = metric(self.api.metrics, "kraken_proxy_blob_bytes_uploaded_total")
        code, _, _ = self.call("POST", f"/v2/other/repo/blobs/uploads/?mount={d}&from={REPO}")
        self.assertEqual(code, 201)
        m = self.api.metrics
        self.assertEqual(metric(m, "kraken_proxy_blob_pushes_total", kind="mount"), 1)
        self.assertEqual(metric(m, "kraken_proxy_blob_bytes_uploaded_total"), before)

    def test_errors_by_code(self) -> None:
        """Error answers are counted by registry code and status; successes are not."""
        self.call("GET", "/v2/")
        self.call("GET", f"/v2/{REPO}/manifests/nope")
        self.call("GET", f"/v2/{REPO}/manifests/nope")
        self.call("POST", "/v2/Bad/Name/blobs/uploads/")
        m = self.api.metrics
        self.assertEqual(
            metric(m, "kraken_proxy_errors_total", code="MANIFEST_UNKNOWN", status="404"), 2
        )
        self.assertEqual(
            metric(m, "kraken_proxy_errors_total", code="NAME_INVALID", status="400"), 1
        )
        total = sum(
            s.value
            for family in m.registry.collect()
            for s in family.samples
            if s.name == "kraken_proxy_errors_total"
        )
        self.assertEqual(total, 3)


class HelperTests(SynchronousTestCase):
    """Pure helpers."""

    def test_paginate(self) -> None:
        """Sorted, deduplicated, after ``last``, at most ``n``, with a more-flag."""
        self.assertEqual(paginate(["b", "a", "c", "a"], 2, None), (["a", "b"], True))
        self.assertEqual(paginate(["b", "a", "c"], 2, "b"), (["c"], False))
        self.assertEqual(paginate(["b", "a"], None, None), (["a", "b"], False))
        self.assertEqual(paginate(["a"], 0, None), ([], True))

    def test_parse_image_reference(self) -> None:
        """A host prefix is dropped; tags and digests are told apart; bad input raises."""
        d = Digest.of_bytes(b"x")
        self.assertEqual(parse_image_reference("localhost:5000/a/b:t"), ("a/b", "t"))
        self.assertEqual(parse_image_reference("reg.io/a/b:t"), ("a/b", "t"))
        self.assertEqual(parse_image_reference("a/b:t"), ("a/b", "t"))
        self.assertEqual(parse_image_reference(f"a/b@{d}"), ("a/b", d))
        for bad in ("a/b", "A/b:t", "a/b:t/x"):
            self.assertRaises(RegistryError, parse_image_reference, bad)

    def test_tag_repository(self) -> None:
        """The repository of a listing entry, None for malformed ones."""
        self.assertEqual(tag_repository("a/b:t"), "a/b")
        self.assertIsNone(tag_repository("no-colon"))
        self.assertIsNone(tag_repository(":t"))
