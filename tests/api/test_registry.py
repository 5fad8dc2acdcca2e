"""The agent's read-only registry v2 over StubTreq, and the shared distribution helpers."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from kraken.api.distribution import (
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V1_SIGNED,
    DOCKER_MANIFEST_V2,
    OCI_IMAGE_INDEX,
    OCI_IMAGE_MANIFEST,
    V2Path,
    check_repository_name,
    manifest_media_type,
    manifest_references,
    parse_v2_path,
)
from kraken.api.referrers import referrers_tag
from kraken.core import Digest
from kraken.http.errors import RegistryError
from tests.api.agentfakes import AgentApis, make_agent_apis
from tests.api.test_agent import image

BLOB = b"layer bytes " * 1000


class RegistryTestCase(SynchronousTestCase):
    """The registry API with fakes behind it."""

    allowed: tuple[str, ...] | None = ("127.0.0.0/8",)

    def setUp(self) -> None:
        self.apis: AgentApis = make_agent_apis(self.mktemp(), allowed=self.allowed)
        self.stub = StubTreq(self.apis.registry.resource())

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        """Send a request; return (response, body)."""
        d = self.stub.request(method, "http://127.0.0.1:16000" + path, **kwargs)
        self.stub.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def error_code(self, body: bytes) -> str:
        """The code of a v2 error document."""
        code: str = json.loads(body)["errors"][0]["code"]
        return code

    def header(self, response: Any, name: str) -> str | None:
        """One response header, decoded."""
        values = response.headers.getRawHeaders(name)
        return None if values is None else values[0]


class BaseTests(RegistryTestCase):
    """``/v2/`` and the allow-list."""

    def test_v2(self) -> None:
        """``GET /v2/`` answers ``{}`` with the API version header."""
        response, body = self.call("GET", "/v2/")
        self.assertEqual((response.code, body), (200, b"{}"))
        self.assertEqual(self.header(response, "Docker-Distribution-API-Version"), "registry/2.0")

    def test_v2_post_unsupported(self) -> None:
        """Writing to ``/v2/`` is 405 UNSUPPORTED."""
        response, body = self.call("POST", "/v2/")
        self.assertEqual((response.code, self.error_code(body)), (405, "UNSUPPORTED"))


class DeniedTests(RegistryTestCase):
    """A client outside the allowed networks."""

    allowed = ("10.0.0.0/8",)

    def test_denied(self) -> None:
        """StubTreq's client (127.0.0.1) is not in 10/8: 403 DENIED on every route."""
        for path in ("/v2/", f"/v2/r/blobs/{Digest.of_bytes(b'x')}"):
            response, body = self.call("GET", path)
            self.assertEqual((response.code, self.error_code(body)), (403, "DENIED"))


class OpenTests(RegistryTestCase):
    """No allow-list: everyone is admitted."""

    allowed = None

    def test_open(self) -> None:
        """Without networks the base route answers anyone."""
        self.assertEqual(self.call("GET", "/v2/")[0].code, 200)


class ManifestTests(RegistryTestCase):
    """``GET|HEAD /v2/<name>/manifests/<ref>``."""

    def put_manifest(self, doc: dict[str, Any], tag: str | None = "latest") -> tuple[Digest, bytes]:
        """Make ``doc`` downloadable, tagged ``test/app:<tag>``."""
        data = json.dumps(doc).encode()
        digest = self.apis.downloader.add(data)
        if tag is not None:
            self.apis.build_index.tags[f"test/app:{tag}"] = str(digest)
        return digest, data

    def test_by_tag(self) -> None:
        """A tag resolves through the build-index; the manifest comes with its headers."""
        digest, data = self.put_manifest(image([b"l"], b"c"))
        response, body = self.call("GET", "/v2/test/app/manifests/latest")
        self.assertEqual((response.code, body), (200, data))
        self.assertEqual(self.header(response, "Content-Type"), DOCKER_MANIFEST_V2)
        self.assertEqual(self.header(response, "Docker-Content-Digest"), str(digest))
        self.assertEqual(response.length, len(data))
        self.assertEqual(self.apis.downloader.calls, [("test/app", digest)])

    def test_by_digest(self) -> None:
        """A digest reference skips the build-index."""
        digest, data = self.put_manifest({"schemaVersion": 2, "manifests": []}, tag=None)
        response, body = self.call("GET", f"/v2/test/app/manifests/{digest}")
        self.assertEqual((response.code, body), (200, data))
        self.assertEqual(self.header(response, "Content-Type"), OCI_IMAGE_INDEX)
        self.assertEqual(self.apis.build_index.lookups, [])

    def test_head(self) -> None:
        """HEAD answers the headers without a body."""
        digest, _ = self.put_manifest(image([b"l"], b"c"))
        response, body = self.call("HEAD", "/v2/test/app/manifests/latest")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.header(response, "Docker-Content-Digest"), str(digest))

    def test_tag_cache(self) -> None:
        """Tags are cached for 5 s, then asked again (a moved tag is seen)."""
        self.put_manifest(image([b"l"], b"c"))
        self.call("GET", "/v2/test/app/manifests/latest")
        self.call("GET", "/v2/test/app/manifests/latest")
        self.assertEqual(len(self.apis.build_index.lookups), 1)
        new, data = self.put_manifest(image([b"l2"], b"c"))
        self.apis.clock.advance(5.1)
        response, body = self.call("GET", "/v2/test/app/manifests/latest")
        self.assertEqual(len(self.apis.build_index.lookups), 2)
        self.assertEqual(self.header(response, "Docker-Content-Digest"), str(new))
        self.assertEqual(body, data)

    def test_unknown_tag(self) -> None:
        """An unknown tag is 404 MANIFEST_UNKNOWN (and is not cached)."""
        response, body = self.call("GET", "/v2/test/app/manifests/nope")
        self.assertEqual((response.code, self.error_code(body)), (404, "MANIFEST_UNKNOWN"))
        self.call("GET", "/v2/test/app/manifests/nope")
        self.assertEqual(len(self.apis.build_index.lookups), 2)

    def test_unknown_digest(self) -> None:
        """A manifest the cluster lacks is 404 MANIFEST_UNKNOWN."""
        response, body = self.call("GET", f"/v2/test/app/manifests/{Digest.of_bytes(b'?')}")
        self.assertEqual((response.code, self.error_code(body)), (404, "MANIFEST_UNKNOWN"))

    def test_build_index_down(self) -> None:
        """No build-index: 503 UNAVAILABLE, which clients retry."""
        self.apis.http_agent.remove("bi:15004")
        response, body = self.call("GET", "/v2/test/app/manifests/latest")
        self.assertEqual((response.code, self.error_code(body)), (503, "UNAVAILABLE"))

    def test_bad_name(self) -> None:
        """An upper-case repository name is 400 NAME_INVALID."""
        response, body = self.call("GET", "/v2/Test/App/manifests/latest")
        self.assertEqual((response.code, self.error_code(body)), (400, "NAME_INVALID"))

    def test_malformed_reference_is_unknown(self) -> None:
        """A reference that is neither a tag nor a digest names no manifest: 404
        MANIFEST_UNKNOWN on GET and HEAD (the spec), never 400, and no download."""
        for reference in ("sha256:xyz", "md5:abc", "-bad-tag", "x" * 200):
            for method in ("GET", "HEAD"):
                response, body = self.call(method, f"/v2/test/app/manifests/{reference}")
                self.assertEqual(response.code, 404, (method, reference))
                if method == "GET":
                    self.assertEqual(self.error_code(body), "MANIFEST_UNKNOWN")
        self.assertEqual(self.apis.downloader.calls, [])

    def test_put_unsupported(self) -> None:
        """Pushing a manifest is 405 UNSUPPORTED with Allow: GET, HEAD."""
        response, body = self.call("PUT", "/v2/test/app/manifests/latest", data=b"{}")
        self.assertEqual((response.code, self.error_code(body)), (405, "UNSUPPORTED"))
        self.assertEqual(self.header(response, "Allow"), "GET, HEAD")


class BlobTests(RegistryTestCase):
    """``GET|HEAD /v2/<name>/blobs/<digest>``."""

    def test_get(self) -> None:
        """The blob is downloaded with namespace = repository and served with its digest."""
        digest = self.apis.downloader.add(BLOB)
        response, body = self.call("GET", f"/v2/library/redis/blobs/{digest}")
        self.assertEqual((response.code, body), (200, BLOB))
        self.assertEqual(self.header(response, "Docker-Content-Digest"), str(digest))
        self.assertEqual(self.apis.downloader.calls, [("library/redis", digest)])

    def test_range(self) -> None:
        """A Range request is answered 206."""
        digest = self.apis.downloader.add(BLOB)
        response, body = self.call("GET", f"/v2/r/blobs/{digest}", headers={"Range": "bytes=100-"})
        self.assertEqual((response.code, body), (206, BLOB[100:]))

    def test_bad_range(self) -> None:
        """An unsatisfiable range is 416 RANGE_INVALID with ``Content-Range: bytes */size``."""
        digest = self.apis.downloader.add(BLOB)
        response, body = self.call(
            "GET", f"/v2/r/blobs/{digest}", headers={"Range": "bytes=999999-"}
        )
        self.assertEqual((response.code, self.error_code(body)), (416, "RANGE_INVALID"))
        self.assertEqual(self.header(response, "Content-Range"), f"bytes */{len(BLOB)}")

    def test_unknown(self) -> None:
        """A blob the cluster lacks is 404 BLOB_UNKNOWN."""
        response, body = self.call("GET", f"/v2/r/blobs/{Digest.of_bytes(b'nope')}")
        self.assertEqual((response.code, self.error_code(body)), (404, "BLOB_UNKNOWN"))

    def test_failure(self) -> None:
        """A failed download is 500 UNKNOWN carrying the reason."""
        digest = self.apis.downloader.add(BLOB)
        self.apis.downloader.failing[digest] = "tracker unreachable"
        response, body = self.call("GET", f"/v2/r/blobs/{digest}")
        self.assertEqual((response.code, self.error_code(body)), (500, "UNKNOWN"))
        self.assertIn("tracker unreachable", json.loads(body)["errors"][0]["message"])

    def test_head(self) -> None:
        """HEAD downloads the blob and sends no body."""
        digest = self.apis.downloader.add(BLOB)
        response, body = self.call("HEAD", f"/v2/r/blobs/{digest}")
        self.assertEqual((response.code, body), (200, b""))
        self.assertTrue(self.apis.store.has(digest))

    def test_delete_unsupported(self) -> None:
        """DELETE of a blob is 405 UNSUPPORTED."""
        digest = self.apis.downloader.add(BLOB)
        response, body = self.call("DELETE", f"/v2/r/blobs/{digest}")
        self.assertEqual((response.code, self.error_code(body)), (405, "UNSUPPORTED"))
        self.assertEqual(self.apis.downloader.calls, [])


class ListingTests(RegistryTestCase):
    """``GET /v2/<name>/tags/list`` and ``GET /v2/_catalog`` from the build-index."""

    def setUp(self) -> None:
        super().setUp()
        d = str(Digest.of_bytes(b"m"))
        for tag in ("a/b:v1", "a/b:v3", "a/b:v2", "c:latest", "a/b/c:x"):
            self.apis.build_index.tags[tag] = d

    def test_tags_list(self) -> None:
        """Every tag of the repository, sorted, as ``{"name", "tags"}``, no Link."""
        response, body = self.call("GET", "/v2/a/b/tags/list")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {"name": "a/b", "tags": ["v1", "v2", "v3"]})
        self.assertIsNone(self.header(response, "Link"))

    def test_tags_pagination(self) -> None:
        """``n`` pages with a Link to the next; ``last`` continues after it."""
        response, body = self.call("GET", "/v2/a/b/tags/list?n=2")
        self.assertEqual(json.loads(body)["tags"], ["v1", "v2"])
        self.assertEqual(
            self.header(response, "Link"), '</v2/a/b/tags/list?n=2&last=v2>; rel="next"'
        )
        response, body = self.call("GET", "/v2/a/b/tags/list?n=2&last=v2")
        self.assertEqual(json.loads(body)["tags"], ["v3"])
        self.assertIsNone(self.header(response, "Link"))
        response, body = self.call("GET", "/v2/a/b/tags/list?n=0")
        self.assertEqual(json.loads(body)["tags"], [])

    def test_bad_n(self) -> None:
        """A non-numeric ``n`` is 400 PAGINATION_NUMBER_INVALID."""
        response, body = self.call("GET", "/v2/a/b/tags/list?n=x")
        self.assertEqual((response.code, self.error_code(body)), (400, "PAGINATION_NUMBER_INVALID"))

    def test_unknown_repository(self) -> None:
        """A repository without tags is 404 NAME_UNKNOWN."""
        response, body = self.call("GET", "/v2/nothing/here/tags/list")
        self.assertEqual((response.code, self.error_code(body)), (404, "NAME_UNKNOWN"))

    def test_catalog(self) -> None:
        """The repositories of every tag, sorted, paginated like tags."""
        response, body = self.call("GET", "/v2/_catalog")
        self.assertEqual(json.loads(body), {"repositories": ["a/b", "a/b/c", "c"]})
        response, body = self.call("GET", "/v2/_catalog?n=1&last=a/b")
        self.assertEqual(json.loads(body), {"repositories": ["a/b/c"]})
        self.assertEqual(
            self.header(response, "Link"), '</v2/_catalog?n=1&last=a%2Fb%2Fc>; rel="next"'
        )


class ReferrersTests(RegistryTestCase):
    """``GET /v2/<name>/referrers/<digest>``: the index the proxy keeps, through the build-index."""

    def index(self, subject: Digest, *descriptors: dict[str, Any]) -> Digest:
        """Make the referrers index of ``subject`` in ``test/app`` downloadable and tagged."""
        data = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_IMAGE_INDEX, "manifests": list(descriptors)}
        ).encode()
        digest = self.apis.downloader.add(data)
        self.apis.build_index.tags[f"test/app:{referrers_tag(subject)}"] = str(digest)
        return digest

    def test_referrers(self) -> None:
        """The tagged index's descriptors come back as an OCI index; artifactType filters and
        says so in OCI-Filters-Applied."""
        subject = Digest.of_bytes(b"image")
        sig = {"mediaType": OCI_IMAGE_MANIFEST, "digest": str(Digest.of_bytes(b"s")), "size": 1}
        sbom = {**sig, "digest": str(Digest.of_bytes(b"b")), "artifactType": "application/sbom"}
        self.index(subject, {**sig, "artifactType": "application/sig"}, sbom)
        response, body = self.call("GET", f"/v2/test/app/referrers/{subject}")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), OCI_IMAGE_INDEX)
        self.assertIsNone(self.header(response, "OCI-Filters-Applied"))
        doc = json.loads(body)
        self.assertEqual((doc["schemaVersion"], doc["mediaType"]), (2, OCI_IMAGE_INDEX))
        self.assertEqual(len(doc["manifests"]), 2)
        response, body = self.call(
            "GET", f"/v2/test/app/referrers/{subject}?artifactType=application/sbom"
        )
        self.assertEqual(self.header(response, "OCI-Filters-Applied"), "artifactType")
        self.assertEqual(json.loads(body)["manifests"], [sbom])

    def test_none_is_an_empty_index(self) -> None:
        """A digest without referrers is 200 with an empty index (the spec forbids 404)."""
        response, body = self.call("GET", f"/v2/test/app/referrers/{Digest.of_bytes(b'?')}")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["manifests"], [])

    def test_bad_digest(self) -> None:
        """A malformed digest is 400 DIGEST_INVALID."""
        response, body = self.call("GET", "/v2/test/app/referrers/sha256:nothex")
        self.assertEqual((response.code, self.error_code(body)), (400, "DIGEST_INVALID"))

    def test_read_only(self) -> None:
        """Writing to the referrers route is 405 with Allow: GET, HEAD."""
        response, body = self.call("PUT", f"/v2/test/app/referrers/{Digest.of_bytes(b'?')}")
        self.assertEqual((response.code, self.error_code(body)), (405, "UNSUPPORTED"))
        self.assertEqual(self.header(response, "Allow"), "GET, HEAD")


class UnsupportedTests(RegistryTestCase):
    """What a read-only mirror does not do."""

    def test_uploads(self) -> None:
        """Every upload step of a push is 405 UNSUPPORTED."""
        for method, path in [
            ("POST", "/v2/r/blobs/uploads/"),
            ("PATCH", "/v2/r/blobs/uploads/abc"),
            ("PUT", "/v2/r/blobs/uploads/abc?digest=sha256:00"),
            ("GET", "/v2/r/blobs/uploads/abc"),
        ]:
            response, body = self.call(method, path)
            self.assertEqual((response.code, self.error_code(body)), (405, "UNSUPPORTED"), path)

    def test_listing_is_read_only(self) -> None:
        """Writing to the tag list or the catalog is 405 UNSUPPORTED with Allow: GET, HEAD."""
        for path in ("/v2/r/tags/list", "/v2/_catalog"):
            response, body = self.call("DELETE", path)
            self.assertEqual((response.code, self.error_code(body)), (405, "UNSUPPORTED"))
            self.assertEqual(self.header(response, "Allow"), "GET, HEAD")

    def test_manifest_delete(self) -> None:
        """DELETE of a manifest is 405 UNSUPPORTED with Allow: GET, HEAD (HEAD listed once)."""
        response, body = self.call("DELETE", "/v2/r/manifests/latest")
        self.assertEqual((response.code, self.error_code(body)), (405, "UNSUPPORTED"))
        self.assertEqual(self.header(response, "Allow"), "GET, HEAD")

    def test_unknown_route(self) -> None:
        """A path that is no v2 route is a 404 with a v2 error body."""
        response, body = self.call("GET", "/v2/r/whatever")
        self.assertEqual(response.code, 404)
        self.assertTrue(self.error_code(body))


class DistributionTests(SynchronousTestCase):
    """Names, paths, media types, references and ranges."""

    def test_names(self) -> None:
        """Valid names pass; upper case, empty parts, stray separators and long names fail."""
        for good in ("a", "library/redis", "a.b_c__d-e---f/g0", "x" * 255):
            self.assertEqual(check_repository_name(good), good)
        for bad in ("A", "a//b", "/a", "a/", "-a", "a-", "a..b", "a___b", "x" * 256, ""):
            self.assertRaises(RegistryError, check_repository_name, bad)

    def test_paths(self) -> None:
        """Names with slashes split from their route; the rightmost kind wins."""
        self.assertEqual(
            parse_v2_path("a/b/manifests/latest"), V2Path("a/b", "manifests", "latest")
        )
        self.assertEqual(
            parse_v2_path("a/blobs/blobs/sha256:1"), V2Path("a/blobs", "blobs", "sha256:1")
        )
        self.assertEqual(parse_v2_path("a/blobs/uploads/"), V2Path("a", "uploads", ""))
        self.assertEqual(parse_v2_path("a/blobs/uploads/u1"), V2Path("a", "uploads", "u1"))
        self.assertEqual(parse_v2_path("a/tags/list"), V2Path("a", "tags", ""))
        self.assertEqual(
            parse_v2_path("a/referrers/sha256:1"), V2Path("a", "referrers", "sha256:1")
        )
        self.assertIsNone(parse_v2_path("a/referrers/"))
        self.assertIsNone(parse_v2_path("a/manifests/"))
        self.assertIsNone(parse_v2_path("a"))

    def test_media_types(self) -> None:
        """The declared mediaType wins; without one the shape decides."""
        for mt in (DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST, OCI_IMAGE_MANIFEST, OCI_IMAGE_INDEX):
            self.assertEqual(manifest_media_type(json.dumps({"mediaType": mt}).encode()), mt)
        self.assertEqual(manifest_media_type(b'{"manifests": []}'), OCI_IMAGE_INDEX)
        self.assertEqual(manifest_media_type(b'{"config": {}, "layers": []}'), OCI_IMAGE_MANIFEST)
        self.assertEqual(
            manifest_media_type(b'{"schemaVersion": 1, "signatures": []}'),
            DOCKER_MANIFEST_V1_SIGNED,
        )
        for bad in (b"[]", b"not json", b'{"foo": 1}'):
            self.assertRaises(RegistryError, manifest_media_type, bad)

    def test_deeply_nested_manifest(self) -> None:
        """A manifest nested deeper than the parser can go is MANIFEST_INVALID, not a crash."""
        for nested in (b"[" * 100_000, b'{"layers": ' * 50_000):
            for parse in (manifest_media_type, manifest_references):
                with self.assertRaises(RegistryError) as caught:
                    parse(nested)
                self.assertEqual(caught.exception.registry_code.name, "MANIFEST_INVALID")
                self.assertIn("nested too deeply", caught.exception.message)

    def test_references(self) -> None:
        """Config and layers of an image; children of an index; schema 1 blobSums deduplicated."""
        doc = image([b"l1", b"l2"], b"c")
        refs = manifest_references(json.dumps(doc).encode())
        self.assertEqual(refs.blobs, tuple(Digest.of_bytes(x) for x in (b"c", b"l1", b"l2")))
        d = str(Digest.of_bytes(b"m"))
        index = {"mediaType": DOCKER_MANIFEST_LIST, "manifests": [{"digest": d}]}
        self.assertEqual(
            manifest_references(json.dumps(index).encode()).manifests, (Digest.parse(d),)
        )
        v1 = {"schemaVersion": 1, "fsLayers": [{"blobSum": d}, {"blobSum": d}]}
        self.assertEqual(manifest_references(json.dumps(v1).encode()).blobs, (Digest.parse(d),))
        broken = {"mediaType": OCI_IMAGE_MANIFEST, "layers": [{"digest": "md5:x"}]}
        self.assertRaises(RegistryError, manifest_references, json.dumps(broken).encode())
