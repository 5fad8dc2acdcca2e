"""The agent server API over StubTreq: blobs, ranges, deletes, tags, preload, health, metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase

from kraken.api.agent import read_manifest
from kraken.api.distribution import DOCKER_MANIFEST_V2, OCI_IMAGE_INDEX
from kraken.core import Digest
from kraken.io.sendfile import ThreadedReadProducer
from kraken.protocols.progress import DownloadProgress
from kraken.store import BlobInUse
from tests.api.agentfakes import AgentApis, make_agent_apis

BLOB = bytes(range(256)) * 41


class AgentAPITestCase(SynchronousTestCase):
    """Builds the APIs and a StubTreq per test."""

    def setUp(self) -> None:
        self.apis: AgentApis = make_agent_apis(self.mktemp())
        self.stub = StubTreq(self.apis.api.resource())

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        """Send a request; return (response, body)."""
        d = self.stub.request(method, "http://127.0.0.1:16002" + path, **kwargs)
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response, body


class BlobTests(AgentAPITestCase):
    """``GET|HEAD /namespace/{ns}/blobs/{digest}``."""

    def test_bare_hex_and_prefixed(self) -> None:
        """Both digest spellings download the blob in the namespace and stream its bytes."""
        d = self.apis.downloader.add(BLOB)
        for spelling in (d.hex, str(d)):
            response, body = self.call("GET", f"/namespace/testns/blobs/{spelling}")
            self.assertEqual(response.code, 200)
            self.assertEqual(body, BLOB)
            self.assertEqual(response.length, len(BLOB))
        self.assertEqual(self.apis.downloader.calls, [("testns", d), ("testns", d)])

    def test_namespace_with_encoded_slash(self) -> None:
        """``test%2Falpine`` reaches the downloader as ``test/alpine``."""
        d = self.apis.downloader.add(BLOB)
        response, _ = self.call("GET", f"/namespace/test%2Falpine/blobs/{d}")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.apis.downloader.calls, [("test/alpine", d)])

    def test_unknown_is_404(self) -> None:
        """A blob the cluster does not have answers 404 with a message."""
        response, body = self.call("GET", f"/namespace/ns/blobs/{Digest.of_bytes(b'x').hex}")
        self.assertEqual(response.code, 404)
        self.assertIn(b"unknown", body)

    def test_download_failure_is_500_with_message(self) -> None:
        """Any other download failure answers 500 and says why."""
        d = self.apis.downloader.add(BLOB)
        self.apis.downloader.failing[d] = "download torrent: origin on fire"
        response, body = self.call("GET", f"/namespace/ns/blobs/{d}")
        self.assertEqual(response.code, 500)
        self.assertIn(b"origin on fire", body)

    def test_bad_digest_is_400(self) -> None:
        """A malformed digest is a 400 and nothing is downloaded."""
        response, _ = self.call("GET", "/namespace/ns/blobs/sha256:nothex")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.apis.downloader.calls, [])

    def test_bad_namespace_is_400(self) -> None:
        """A namespace with a '..' component is refused."""
        d = self.apis.downloader.add(BLOB)
        response, _ = self.call("GET", f"/namespace/a%2F..%2Fb/blobs/{d}")
        self.assertEqual(response.code, 400)

    def test_range(self) -> None:
        """``Range: bytes=10-19`` answers 206 with those bytes and Content-Range."""
        d = self.apis.downloader.add(BLOB)
        response, body = self.call(
            "GET", f"/namespace/ns/blobs/{d}", headers={"Range": "bytes=10-19"}
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(body, BLOB[10:20])
        self.assertEqual(
            response.headers.getRawHeaders("content-range"), [f"bytes 10-19/{len(BLOB)}"]
        )

    def test_suffix_range(self) -> None:
        """``bytes=-5`` is the last 5 bytes."""
        d = self.apis.downloader.add(BLOB)
        response, body = self.call("GET", f"/namespace/ns/blobs/{d}", headers={"Range": "bytes=-5"})
        self.assertEqual((response.code, body), (206, BLOB[-5:]))

    def test_unsatisfiable_range_is_416(self) -> None:
        """A range starting past the end is a 416."""
        d = self.apis.downloader.add(BLOB)
        response, _ = self.call(
            "GET", f"/namespace/ns/blobs/{d}", headers={"Range": f"bytes={len(BLOB)}-"}
        )
        self.assertEqual(response.code, 416)

    def test_head(self) -> None:
        """HEAD downloads and answers no body (its Content-Length is checked over real sockets)."""
        d = self.apis.downloader.add(BLOB)
        response, body = self.call("HEAD", f"/namespace/ns/blobs/{d}")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertTrue(self.apis.store.has(d))

    def test_blocks_until_downloaded(self) -> None:
        """The answer waits for the download; waiting requests all get the blob."""
        d = self.apis.downloader.add(BLOB)
        hold: Deferred[None] = Deferred()
        self.apis.downloader.hold = hold
        pending = [self.stub.get(f"http://a/namespace/ns/blobs/{d}") for _ in range(3)]
        for p in pending:
            self.assertNoResult(p)
        hold.callback(None)
        self.stub.flush()
        for response in self.successResultOf(gatherResults(pending)):
            self.assertEqual(self.successResultOf(response.content()), BLOB)

    def test_evicted_between_download_and_read(self) -> None:
        """A blob deleted right after its download is fetched again, not answered 404."""
        d = self.apis.downloader.add(BLOB)
        evicted: list[Digest] = []

        def evict_once(digest: Digest) -> None:
            if not evicted:
                evicted.append(digest)
                self.apis.store.delete(digest)

        self.apis.downloader.after_fetch = evict_once
        response, body = self.call("GET", f"/namespace/ns/blobs/{d}")
        self.assertEqual((response.code, body), (200, BLOB))
        self.assertEqual(evicted, [d])


class ServingHoldsReaderTests(SynchronousTestCase):
    """A blob being served cannot be deleted under its reader."""

    def test_delete_refused_while_serving(self) -> None:
        """While chunks are still being read, delete raises BlobInUse; after, it succeeds."""
        apis = make_agent_apis(self.mktemp())
        queued: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

        def deferred_runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            if getattr(f, "__name__", "") != "pread":
                return Deferred.fromCoroutine(_value(f(*args)))
            d: Deferred[Any] = Deferred()
            queued.append((d, f, args))
            return d

        apis.api.run_blocking = deferred_runner
        self.patch(ThreadedReadProducer, "__init__", _small_chunks(ThreadedReadProducer.__init__))
        digest = apis.downloader.add(BLOB)
        stub = StubTreq(apis.api.resource())
        response_d = stub.get(f"http://a/namespace/ns/blobs/{digest}")
        self.assertTrue(queued)
        self.assertRaises(BlobInUse, apis.store.delete, digest)
        while queued:
            d, f, args = queued.pop(0)
            d.callback(f(*args))
            stub.flush()
        response = self.successResultOf(response_d)
        self.assertEqual(self.successResultOf(response.content()), BLOB)
        apis.store.delete(digest)
        self.assertFalse(apis.store.has(digest))


async def _value(v: Any) -> Any:
    return v


def _small_chunks(init: Callable[..., None]) -> Callable[..., None]:
    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["chunk"] = 1000
        init(self, *args, **kwargs)

    return patched


class DeleteTests(AgentAPITestCase):
    """``DELETE /blobs/{digest}``."""

    def test_delete(self) -> None:
        """A cached blob is removed; a second delete is a 404."""
        d = self.apis.store.put_bytes(BLOB).digest
        response, _ = self.call("DELETE", f"/blobs/{d.hex}")
        self.assertEqual(response.code, 200)
        self.assertFalse(self.apis.store.has(d))
        response, _ = self.call("DELETE", f"/blobs/{d}")
        self.assertEqual(response.code, 404)

    def test_delete_in_use_is_409(self) -> None:
        """A blob with an open reader is not deleted (409)."""
        d = self.apis.store.put_bytes(BLOB).digest
        with self.apis.store.open_reader(d):
            response, _ = self.call("DELETE", f"/blobs/{d}")
        self.assertEqual(response.code, 409)
        self.assertTrue(self.apis.store.has(d))

    def test_delete_bad_digest(self) -> None:
        """A malformed digest is a 400."""
        response, _ = self.call("DELETE", "/blobs/zz")
        self.assertEqual(response.code, 400)


class TagTests(AgentAPITestCase):
    """``GET /tags/{repo:tag}`` through the build-index client."""

    def test_known_tag(self) -> None:
        """The build-index's digest string is answered, for an encoded repo:tag."""
        digest = str(Digest.of_bytes(b"m"))
        self.apis.build_index.tags["test/alpine:latest"] = digest
        response, body = self.call("GET", "/tags/test%2Falpine%3Alatest")
        self.assertEqual((response.code, body), (200, digest.encode()))
        self.assertEqual(self.apis.build_index.lookups, ["test/alpine:latest"])

    def test_unknown_tag(self) -> None:
        """An unknown tag is a 404."""
        response, _ = self.call("GET", "/tags/repo%3Anope")
        self.assertEqual(response.code, 404)

    def test_build_index_down(self) -> None:
        """No build-index reachable: 503 naming the problem."""
        self.apis.http_agent.remove("bi:15004")
        response, body = self.call("GET", "/tags/repo%3Atag")
        self.assertEqual(response.code, 503)
        self.assertIn(b"no build-index answered", body)

    def test_build_index_error(self) -> None:
        """A build-index 500 becomes a 502 that quotes it."""
        self.apis.build_index.status = 500
        response, body = self.call("GET", "/tags/repo%3Atag")
        self.assertEqual(response.code, 502)
        self.assertIn(b"HTTP 500: broken", body)

    def test_bad_tag_is_400_before_asking(self) -> None:
        """A tag outside the distribution grammar (a path traversal) is 400; nobody is asked."""
        for path in ("/tags/..%2F..%2Fx:x", "/tags/repo%3A", "/tags/UPPER%3Atag", "/tags/%3Atag"):
            response, body = self.call("GET", path)
            self.assertEqual(response.code, 400, path)
            self.assertIn(b"invalid tag", body)
        response, _ = self.call("POST", "/preload/tags/..%2F..%2Fx:x")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.apis.build_index.lookups, [])

    def test_build_index_400_is_passed_on(self) -> None:
        """A tag the build-index refuses (400) is the asker's mistake: 400 quoting it, not 502."""
        self.apis.build_index.status = 400
        response, body = self.call("GET", "/tags/repo%3Atag")
        self.assertEqual(response.code, 400)
        self.assertIn(b"broken", body)


def image(layers: list[bytes], config: bytes) -> dict[str, Any]:
    """A Docker schema 2 manifest document."""
    return {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_V2,
        "config": {"mediaType": "x", "size": len(config), "digest": str(Digest.of_bytes(config))},
        "layers": [
            {"mediaType": "y", "size": len(la), "digest": str(Digest.of_bytes(la))} for la in layers
        ],
    }


class PreloadTests(AgentAPITestCase):
    """``POST /preload/tags/{repo:tag}``."""

    def test_preload_index(self) -> None:
        """An OCI index: every child manifest and each of their blobs ends up cached."""
        dl = self.apis.downloader
        blobs = [b"layer-a", b"layer-b", b"config-1", b"layer-c", b"config-2"]
        for b in blobs:
            dl.add(b)
        m1 = json.dumps(image(blobs[:2], blobs[2])).encode()
        m2 = json.dumps(image([blobs[3]], blobs[4])).encode()
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_IMAGE_INDEX,
                "manifests": [
                    {"mediaType": DOCKER_MANIFEST_V2, "size": len(m), "digest": str(dl.add(m))}
                    for m in (m1, m2)
                ],
            }
        ).encode()
        top = dl.add(index)
        self.apis.build_index.tags["test/app:1"] = str(top)
        response, _ = self.call("POST", "/preload/tags/test%2Fapp%3A1")
        self.assertEqual(response.code, 202)
        self.assertEqual(self.apis.api.preloads, set())
        for data in [index, m1, m2, *blobs]:
            self.assertTrue(self.apis.store.has(Digest.of_bytes(data)), data[:20])
        self.assertEqual({ns for ns, _ in dl.calls}, {"test/app"})
        self.assertEqual(read_manifest(self.apis.store, top), index)

    def test_preload_runs_in_background(self) -> None:
        """The answer comes before the downloads finish."""
        top = self.apis.downloader.add(json.dumps(image([b"l"], b"c")).encode())
        self.apis.downloader.add(b"l")
        self.apis.downloader.add(b"c")
        self.apis.build_index.tags["r:t"] = str(top)
        hold: Deferred[None] = Deferred()
        self.apis.downloader.hold = hold
        response, _ = self.call("POST", "/preload/tags/r%3At")
        self.assertEqual(response.code, 202)
        self.assertEqual(len(self.apis.api.preloads), 1)
        hold.callback(None)
        self.assertEqual(self.apis.api.preloads, set())
        self.assertTrue(self.apis.store.has(Digest.of_bytes(b"l")))

    def test_preload_unknown_tag(self) -> None:
        """An unknown tag is a 404 at once."""
        response, _ = self.call("POST", "/preload/tags/r%3Anope")
        self.assertEqual(response.code, 404)

    def test_preload_bad_tag(self) -> None:
        """A tag without ``repo:`` is a 400."""
        response, _ = self.call("POST", "/preload/tags/justaname")
        self.assertEqual(response.code, 400)


class StatusTests(AgentAPITestCase):
    """``GET /blobs/{digest}/status``: how far a download is."""

    def test_running_download(self) -> None:
        """A running download's progress is served as JSON, uncached."""
        d = Digest.of_bytes(b"in flight")
        running = DownloadProgress(
            d,
            "downloading",
            namespace="library/x",
            pieces_done=3,
            pieces_total=8,
            bytes_done=3 * 1024,
            bytes_total=8 * 1024,
            seconds=2.5,
            bytes_per_second=1228.8,
            peers=2,
            origins=1,
        )
        self.apis.api.progress = {d: running}.get
        response, body = self.call("GET", f"/blobs/{d.hex}/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(
            json.loads(body),
            {
                "digest": str(d),
                "state": "downloading",
                "namespace": "library/x",
                "pieces": {"done": 3, "total": 8},
                "bytes": {"done": 3072, "total": 8192},
                "seconds": 2.5,
                "bytes_per_second": 1229,
                "peers": 2,
                "origins": 1,
            },
        )

    def test_cached_and_unknown(self) -> None:
        """A cached blob is ``cached`` with its size; one neither cached nor running is 404."""
        d = self.apis.downloader.add(BLOB)
        self.call("GET", f"/namespace/ns/blobs/{d}")
        response, body = self.call("GET", f"/blobs/{d}/status")
        self.assertEqual(response.code, 200)
        status = json.loads(body)
        self.assertEqual(status["state"], "cached")
        self.assertEqual(status["bytes"], {"done": len(BLOB), "total": len(BLOB)})
        response, _ = self.call("GET", f"/blobs/{Digest.of_bytes(b'nobody')}/status")
        self.assertEqual(response.code, 404)
        response, _ = self.call("GET", "/blobs/sha256:nothex/status")
        self.assertEqual(response.code, 400)


class HealthTests(AgentAPITestCase):
    """``/health``, ``/readiness``, ``/metrics``."""

    def test_health(self) -> None:
        """``OK`` without a newline."""
        self.assertEqual(self.call("GET", "/health")[1], b"OK")

    def test_readiness_without_the_build_index(self) -> None:
        """A build-index that fails its check leaves the agent ready: it serves its cache.

        ``/dependencies`` and the ``kraken_dependency_up`` gauge say the build-index is down,
        and why (before this, one unhealthy build-index made every agent "not ready").
        """
        _, body = self.call("GET", "/metrics")
        self.assertIn(b'kraken_dependency_up{dependency="build-index"} NaN', body)
        response, body = self.call("GET", "/dependencies")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            json.loads(body), {"dependencies": {"build-index": {"up": True, "reason": None}}}
        )
        self.apis.build_index.ready = False
        response, _ = self.call("GET", "/readiness")
        self.assertEqual(response.code, 200)
        response, body = self.call("GET", "/dependencies")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        state = json.loads(body)["dependencies"]["build-index"]
        self.assertFalse(state["up"])
        self.assertIn("503", state["reason"])
        _, body = self.call("GET", "/metrics")
        self.assertIn(b'kraken_dependency_up{dependency="build-index"} 0.0', body)

    def test_metrics(self) -> None:
        """Served blobs show in the Prometheus text."""
        d = self.apis.downloader.add(BLOB)
        self.call("GET", f"/namespace/ns/blobs/{d}")
        _, body = self.call("GET", "/metrics")
        self.assertIn(b'kraken_agent_blob_requests_total{api="agent"} 1.0', body)
        self.assertIn(
            f'kraken_agent_bytes_served_total{{api="agent"}} {len(BLOB)}.0'.encode(), body
        )
