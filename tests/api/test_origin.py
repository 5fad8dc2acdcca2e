"""
The origin's HTTP API through StubTreq: every endpoint, and every bad input a clear 4xx.

Blocking calls run inline and time is a Clock, so each request completes synchronously.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import Factory, define
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Digest, MetaInfo
from kraken.origin.writeback import WRITEBACK_KIND, writeback_key
from kraken.persistedretry import LoadedTasks, MemoryTaskStore
from tests.origin.harness import PIECES, BackendDown, MemoryOrigin, make_origin

BLOB = bytes(range(256)) * 20  # 5120 bytes: 5 pieces of 1024
DIGEST = Digest.of_bytes(BLOB)
NS = "library/alpine"
NS_Q = "library%2Falpine"
BASE = "http://o1:15002"


class OriginAPITestCase(SynchronousTestCase):
    """Builds one origin with an empty memory backend."""

    def setUp(self) -> None:
        """An origin alone in its ring."""
        self.clock = Clock()
        self.origin: MemoryOrigin = make_origin(self, self.clock)
        self.treq = StubTreq(self.origin.api.resource())

    def tearDown(self) -> None:
        """Expected write-back failures (backend down) are logged; they are not test errors."""
        self.flushLoggedErrors(BackendDown)

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        """Send a request; return (status, headers, body)."""
        response = self.successResultOf(self.treq.request(method, BASE + path, **kwargs))
        body = self.successResultOf(response.content())
        return response.code, response.headers, body

    def start(self, ns: str = NS_Q, digest: Digest = DIGEST) -> str:
        """POST an upload; return its uid."""
        code, headers, body = self.call("POST", f"/namespace/{ns}/blobs/{digest}/uploads")
        self.assertEqual(code, 200, body)
        return headers.getRawHeaders("Location")[0]  # type: ignore[no-any-return]

    def patch(
        self, uid: str, start: int, end: int, data: bytes, ns: str = NS_Q
    ) -> tuple[int, bytes]:
        """PATCH one chunk."""
        code, _, body = self.call(
            "PATCH",
            f"/namespace/{ns}/blobs/{DIGEST}/uploads/{uid}",
            data=data,
            headers={"Content-Range": f"{start}-{end}"},
        )
        return code, body

    def commit(self, uid: str, digest: Digest = DIGEST) -> tuple[int, bytes]:
        """PUT the commit."""
        code, _, body = self.call("PUT", f"/namespace/{NS_Q}/blobs/{digest}/uploads/{uid}")
        return code, body

    def upload(self, data: bytes = BLOB, chunk: int = 2000) -> None:
        """A whole chunked upload that must succeed."""
        uid = self.start()
        for offset in range(0, len(data), chunk):
            part = data[offset : offset + chunk]
            code, body = self.patch(uid, offset, offset + len(part), part)
            self.assertEqual(code, 204, body)
        code, body = self.commit(uid)
        self.assertEqual(code, 200, body)

    def error_code(self, body: bytes) -> str:
        """The registry error code of an error body."""
        return json.loads(body)["errors"][0]["code"]  # type: ignore[no-any-return]


class UploadTests(OriginAPITestCase):
    """Chunked uploads: POST, PATCH, PUT."""

    def test_upload_commits_persisted_and_queues_writeback(self) -> None:
        """A complete upload lands in the cache, persisted, with a durable write-back task."""
        self.origin.backend.down = True
        self.upload()
        self.assertTrue(self.origin.store.has(DIGEST))
        self.assertTrue(self.origin.store.is_persisted(DIGEST))
        self.assertTrue(self.origin.queue.pending(WRITEBACK_KIND, writeback_key(NS, DIGEST)))

    def test_idle_uploads_expire_with_their_files(self) -> None:
        """An upload no request touched for ``upload_timeout`` is removed, files and all;
        one that keeps being written is not."""
        idle = self.start()
        busy = self.start()
        self.clock.advance(self.origin.api.upload_timeout - 10)
        self.assertEqual(self.patch(busy, 0, 10, BLOB[:10])[0], 204)
        self.clock.advance(20)
        self.assertEqual(self.origin.api.expire_uploads(), 1)
        self.assertEqual([u.uid for u in self.origin.store.list_uploads()], [busy])
        code, body = self.patch(idle, 0, 10, BLOB[:10])
        self.assertEqual((code, self.error_code(body)), (404, "BLOB_UPLOAD_UNKNOWN"))

    def test_open_uploads_capped(self) -> None:
        """Past ``max_uploads`` open uploads a new one gets 429 with ``Retry-After``."""
        self.origin.api.max_uploads = 2
        self.start()
        self.start()
        code, headers, body = self.call("POST", f"/namespace/{NS_Q}/blobs/{DIGEST}/uploads")
        self.assertEqual((code, self.error_code(body)), (429, "TOOMANYREQUESTS"))
        self.assertEqual(headers.getRawHeaders("Retry-After"), ["5"])

    def test_writeback_reaches_backend_then_unpersists(self) -> None:
        """The write-back uploads the blob to the backend and then unpersists it."""
        self.upload()
        self.assertEqual(self.origin.backend.blobs[DIGEST.hex], BLOB)
        self.assertFalse(self.origin.store.is_persisted(DIGEST))
        self.assertFalse(self.origin.queue.pending(WRITEBACK_KIND, writeback_key(NS, DIGEST)))

    def test_writeback_retries_while_backend_down(self) -> None:
        """With the backend down the task stays pending and succeeds once it is back."""
        self.origin.backend.down = True
        self.upload()
        self.clock.advance(5)
        self.assertTrue(self.origin.store.is_persisted(DIGEST))
        self.origin.backend.down = False
        self.clock.advance(20)
        self.assertIn(DIGEST.hex, self.origin.backend.blobs)
        self.assertFalse(self.origin.store.is_persisted(DIGEST))

    def test_writeback_skips_blob_backend_has(self) -> None:
        """A blob the backend already has is not uploaded again."""
        self.origin.backend.blobs[DIGEST.hex] = BLOB
        self.upload()
        self.assertEqual(self.origin.backend.uploads, 0)
        self.assertFalse(self.origin.store.is_persisted(DIGEST))

    def test_start_of_cached_blob_is_409(self) -> None:
        """POST for a blob already cached answers 409."""
        self.upload()
        code, _, _ = self.call("POST", f"/namespace/{NS_Q}/blobs/{DIGEST}/uploads")
        self.assertEqual(code, 409)

    def test_commit_of_existing_blob_is_409(self) -> None:
        """A second upload of the same blob commits as 409 and is discarded."""
        uid = self.start()
        self.assertEqual(self.patch(uid, 0, len(BLOB), BLOB)[0], 204)
        self.upload()
        self.assertEqual(self.commit(uid)[0], 409)
        self.assertEqual(self.origin.store.list_uploads(), [])

    def test_wrong_bytes_for_existing_blob_is_400(self) -> None:
        """An upload claiming a cached blob's digest with other bytes: 400 DIGEST_INVALID."""
        uid = self.start()
        self.assertEqual(self.patch(uid, 0, len(BLOB), bytes(len(BLOB)))[0], 204)
        self.upload()
        code, body = self.commit(uid)
        self.assertEqual((code, self.error_code(body)), (400, "DIGEST_INVALID"))
        self.assertEqual(self.origin.store.list_uploads(), [])
        self.assertEqual(self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")[2], BLOB)

    def test_digest_mismatch_is_400_and_discarded(self) -> None:
        """Content that is not the digest: 400 DIGEST_INVALID, nothing stored."""
        uid = self.start()
        self.patch(uid, 0, 5, b"wrong")
        code, body = self.commit(uid)
        self.assertEqual(code, 400)
        self.assertEqual(self.error_code(body), "DIGEST_INVALID")
        self.assertFalse(self.origin.store.has(DIGEST))
        self.assertEqual(self.origin.store.list_uploads(), [])
        self.assertFalse(self.origin.queue.pending(WRITEBACK_KIND, writeback_key(NS, DIGEST)))

    def test_incomplete_upload_commit_is_400(self) -> None:
        """Committing before every chunk arrived fails the digest check: 400, nothing stored."""
        uid = self.start()
        self.patch(uid, 0, 100, BLOB[:100])
        code, body = self.commit(uid)
        self.assertEqual((code, self.error_code(body)), (400, "DIGEST_INVALID"))
        self.assertFalse(self.origin.store.has(DIGEST))

    def sized_upload(self, chunks: list[bytes], declared: int) -> tuple[int, bytes, list[Any]]:
        """POST with ``?size=declared``, PATCH ``chunks``, PUT; (code, body, ``hashed`` seen)."""
        seen: list[Any] = []
        commit_upload = self.origin.store.commit_upload

        def spy(*args: Any, **kwargs: Any) -> MetaInfo:
            seen.append(kwargs.get("hashed"))
            return commit_upload(*args, **kwargs)

        self.patch_attr(self.origin.store, "commit_upload", spy)
        code, headers, body = self.call(
            "POST", f"/namespace/{NS_Q}/blobs/{DIGEST}/uploads", params={"size": str(declared)}
        )
        self.assertEqual(code, 200, body)
        uid = headers.getRawHeaders("Location")[0]
        offset = 0
        for chunk in chunks:
            self.assertEqual(self.patch(uid, offset, offset + len(chunk), chunk)[0], 204)
            offset += len(chunk)
        code, body = self.commit(uid)
        return code, body, seen

    def patch_attr(self, obj: Any, name: str, value: Any) -> None:
        """Monkeypatch for this test (``self.patch`` sends a PATCH request here)."""
        SynchronousTestCase.patch(self, obj, name, value)

    def test_declared_size_hashes_chunks_before_commit(self) -> None:
        """With ``?size=`` the chunks are hashed as they arrive; the commit gets that metainfo."""
        code, body, seen = self.sized_upload([BLOB[:3000], BLOB[3000:]], len(BLOB))
        self.assertEqual(code, 200, body)
        self.assertEqual(seen, [MetaInfo.of_bytes(BLOB, 1024)])
        self.assertEqual(self.origin.store.get_metainfo(DIGEST), MetaInfo.of_bytes(BLOB, 1024))

    def test_declared_size_wrong_content_is_400(self) -> None:
        """Hashed-as-they-arrive chunks of other content: 400 DIGEST_INVALID, nothing stored."""
        wrong = b"w" * len(BLOB)
        code, body, seen = self.sized_upload([wrong[:3000], wrong[3000:]], len(BLOB))
        self.assertEqual((code, self.error_code(body)), (400, "DIGEST_INVALID"))
        self.assertEqual(seen, [MetaInfo.of_bytes(wrong, 1024)])
        self.assertFalse(self.origin.store.has(DIGEST))
        self.assertEqual(self.origin.store.list_uploads(), [])

    def test_declared_size_not_reached_falls_back(self) -> None:
        """Fewer bytes than declared: the store hashes the file itself (and it fails)."""
        code, body, seen = self.sized_upload([BLOB[:3000]], len(BLOB))
        self.assertEqual((code, self.error_code(body)), (400, "DIGEST_INVALID"))
        self.assertEqual(seen, [None])

    def test_missing_content_range_is_400(self) -> None:
        """A PATCH without Content-Range: 400 BLOB_UPLOAD_INVALID."""
        uid = self.start()
        code, _, body = self.call(
            "PATCH", f"/namespace/{NS_Q}/blobs/{DIGEST}/uploads/{uid}", data=b"abc"
        )
        self.assertEqual((code, self.error_code(body)), (400, "BLOB_UPLOAD_INVALID"))

    def test_malformed_content_range_is_400(self) -> None:
        """``bytes 0-3/*`` and ``0,3`` are not the origin's ``start-end`` form."""
        uid = self.start()
        for header in ("bytes 0-3/*", "0,3", "-3", "a-b"):
            code, _, _body = self.call(
                "PATCH",
                f"/namespace/{NS_Q}/blobs/{DIGEST}/uploads/{uid}",
                data=b"abc",
                headers={"Content-Range": header},
            )
            self.assertEqual(code, 400, header)

    def test_out_of_order_and_overlap_are_416(self) -> None:
        """A chunk that skips ahead or overlaps what was written: 416, nothing written."""
        uid = self.start()
        self.assertEqual(self.patch(uid, 0, 10, BLOB[:10])[0], 204)
        self.assertEqual(self.patch(uid, 20, 30, BLOB[20:30])[0], 416)
        self.assertEqual(self.patch(uid, 5, 15, BLOB[5:15])[0], 416)
        self.assertEqual(self.patch(uid, 10, 5, b"")[0], 416)
        self.assertEqual(self.origin.store.upload_size(uid), 10)

    def test_body_length_must_match_range(self) -> None:
        """Bodies longer or shorter than the range: 400 SIZE_INVALID, nothing written."""
        uid = self.start()
        code, body = self.patch(uid, 0, 10, BLOB[:11])
        self.assertEqual((code, self.error_code(body)), (400, "SIZE_INVALID"))
        code, body = self.patch(uid, 0, 10, BLOB[:9])
        self.assertEqual((code, self.error_code(body)), (400, "SIZE_INVALID"))
        self.assertEqual(self.origin.store.upload_size(uid), 0)

    def test_oversized_chunk_is_416(self) -> None:
        """A range longer than the chunk limit is refused before anything is read."""
        self.origin.api.max_chunk = 100
        uid = self.start()
        self.assertEqual(self.patch(uid, 0, 101, BLOB[:101])[0], 416)

    def test_unknown_upload_is_404(self) -> None:
        """PATCH/PUT of an unknown (well-formed) uid: 404 BLOB_UPLOAD_UNKNOWN."""
        code, body = self.patch("0" * 32, 0, 3, b"abc")
        self.assertEqual((code, self.error_code(body)), (404, "BLOB_UPLOAD_UNKNOWN"))
        code, body = self.commit("0" * 32)
        self.assertEqual(code, 404)

    def test_upload_of_other_digest_is_404(self) -> None:
        """An upload id used under another digest's URL is unknown there."""
        uid = self.start()
        other = Digest.of_bytes(b"other")
        code, _, _ = self.call(
            "PATCH",
            f"/namespace/{NS_Q}/blobs/{other}/uploads/{uid}",
            data=b"abc",
            headers={"Content-Range": "0-3"},
        )
        self.assertEqual(code, 404)

    def test_bad_digest_is_400(self) -> None:
        """A digest without the sha256: prefix or with bad hex: 400 DIGEST_INVALID."""
        for bad in (DIGEST.hex, "sha256:xyz", "md5:" + DIGEST.hex):
            code, _, body = self.call("POST", f"/namespace/{NS_Q}/blobs/{bad}/uploads")
            self.assertEqual((code, self.error_code(body)), (400, "DIGEST_INVALID"), bad)

    def test_namespace_path_tricks_are_400(self) -> None:
        """Namespaces with '..', empty components or control characters: 400 NAME_INVALID."""
        for bad in ("..", "a%2F..%2Fb", "a%2F%2Fb", "%2E%2E", "a%00b", "a%2F"):
            code, _, body = self.call("POST", f"/namespace/{bad}/blobs/{DIGEST}/uploads")
            self.assertEqual((code, self.error_code(body)), (400, "NAME_INVALID"), bad)
        # A leading slash does not even match a route.
        self.assertEqual(self.call("POST", f"/namespace/%2Fabs/blobs/{DIGEST}/uploads")[0], 404)
        self.assertEqual(self.origin.store.list_uploads(), [])

    def test_namespace_decoded_once(self) -> None:
        """``%252F`` stays a literal ``%2F`` in the namespace the write-back uses."""
        self.origin.backend.down = True  # keeps the write-back task queued, to be looked at
        self.start(ns="a%252Fb")
        uid = self.start(ns="a%252Fb")
        code, _, _ = self.call(
            "PATCH",
            f"/namespace/a%252Fb/blobs/{DIGEST}/uploads/{uid}",
            data=BLOB,
            headers={"Content-Range": f"0-{len(BLOB)}"},
        )
        self.assertEqual(code, 204)
        code, _, _ = self.call("PUT", f"/namespace/a%252Fb/blobs/{DIGEST}/uploads/{uid}")
        self.assertEqual(code, 200)
        self.assertEqual([t.payload["namespace"] for t in self.origin.queue.tasks()], ["a%2Fb"])

    def test_digest_decoded_once(self) -> None:
        """A digest with an escaped colon (``sha256%253A...``) is not decoded twice: 400."""
        quoted = str(DIGEST).replace(":", "%253A")
        code, _, body = self.call("POST", f"/namespace/{NS_Q}/blobs/{quoted}/uploads")
        self.assertEqual((code, self.error_code(body)), (400, "DIGEST_INVALID"))
        code, _, _ = self.call("POST", f"/namespace/{NS_Q}/blobs/{DIGEST}/uploads")
        self.assertEqual(code, 200)


class DownloadTests(OriginAPITestCase):
    """GET blob, prefetch, stat, metainfo, delete."""

    def test_get_cached_blob(self) -> None:
        """A cached blob streams whole with its length."""
        self.upload()
        code, _headers, body = self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")
        self.assertEqual((code, body), (200, BLOB))
        response = self.successResultOf(self.treq.get(f"{BASE}/namespace/{NS_Q}/blobs/{DIGEST}"))
        self.assertEqual(response.length, len(BLOB))
        self.successResultOf(response.content())

    def test_get_range(self) -> None:
        """``Range: bytes=a-b`` answers 206 with exactly those bytes; suffix ranges work."""
        self.upload()
        code, headers, body = self.call(
            "GET", f"/namespace/{NS_Q}/blobs/{DIGEST}", headers={"Range": "bytes=100-1199"}
        )
        self.assertEqual((code, body), (206, BLOB[100:1200]))
        self.assertEqual(headers.getRawHeaders("Content-Range"), [f"bytes 100-1199/{len(BLOB)}"])
        code, _, body = self.call(
            "GET", f"/namespace/{NS_Q}/blobs/{DIGEST}", headers={"Range": "bytes=-10"}
        )
        self.assertEqual((code, body), (206, BLOB[-10:]))

    def test_unsatisfiable_range_is_416(self) -> None:
        """A range past the end is 416."""
        self.upload()
        code, _, _ = self.call(
            "GET", f"/namespace/{NS_Q}/blobs/{DIGEST}", headers={"Range": "bytes=99999-"}
        )
        self.assertEqual(code, 416)

    def test_get_unknown_everywhere_is_404(self) -> None:
        """Neither cached nor in the backend: 404 BLOB_UNKNOWN."""
        code, _, body = self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")
        self.assertEqual((code, self.error_code(body)), (404, "BLOB_UNKNOWN"))

    def test_miss_fetches_once_with_202(self) -> None:
        """A miss answers 202 while the fetch runs; concurrent requests share one fetch."""
        backend = self.origin.backend
        backend.blobs[DIGEST.hex] = BLOB
        backend.hold = Deferred()
        for _ in range(3):
            code, _, _ = self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")
            self.assertEqual(code, 202)
        code, _, _ = self.call("GET", f"/internal/namespace/{NS_Q}/blobs/{DIGEST}/metainfo")
        self.assertEqual(code, 202)
        self.assertEqual(backend.downloads, 1)
        backend.hold.callback(None)
        code, _, body = self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")
        self.assertEqual((code, body), (200, BLOB))
        self.assertFalse(self.origin.store.is_persisted(DIGEST))

    def test_busy_is_503(self) -> None:
        """When the fetch limit is reached, another miss is 503."""
        backend = self.origin.backend
        backend.blobs[DIGEST.hex] = BLOB
        other = b"other blob"
        backend.blobs[Digest.of_bytes(other).hex] = other
        backend.hold = Deferred()
        self.origin.fetcher.max_fetches = 1
        self.assertEqual(self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")[0], 202)
        treq = StubTreq(self.origin.api.resource())
        response = self.successResultOf(
            treq.get(f"{BASE}/namespace/{NS_Q}/blobs/{Digest.of_bytes(other)}")
        )
        self.assertEqual(response.code, 503)

    def test_failed_fetch_error_is_remembered(self) -> None:
        """A fetch that failed answers 500 for error_ttl, then is tried again."""
        backend = self.origin.backend
        backend.blobs[DIGEST.hex] = b"not the blob"
        self.assertEqual(self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")[0], 202)
        self.assertEqual(self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")[0], 500)
        backend.blobs[DIGEST.hex] = BLOB
        self.clock.advance(16)
        self.assertEqual(self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")[0], 202)
        self.assertEqual(self.call("GET", f"/namespace/{NS_Q}/blobs/{DIGEST}")[2], BLOB)

    def test_prefetch(self) -> None:
        """Prefetch: 404 unknown, 202 when it starts a fetch, 200 once cached."""
        path = f"/namespace/{NS_Q}/blobs/{DIGEST}/prefetch"
        self.assertEqual(self.call("POST", path)[0], 404)
        self.origin.backend.blobs[DIGEST.hex] = BLOB
        self.origin.backend.hold = Deferred()
        self.assertEqual(self.call("POST", path)[0], 202)
        self.origin.backend.hold.callback(None)
        self.assertEqual(self.call("POST", path)[0], 200)

    def test_stat(self) -> None:
        """HEAD: 200 with Content-Length from the cache or the backend; local=true skips it."""
        path = f"/internal/namespace/{NS_Q}/blobs/{DIGEST}"
        self.assertEqual(self.call("HEAD", path)[0], 404)
        self.origin.backend.blobs[DIGEST.hex] = BLOB
        code, headers, _ = self.call("HEAD", path)
        self.assertEqual((code, headers.getRawHeaders("Content-Length")), (200, [str(len(BLOB))]))
        self.assertEqual(self.call("HEAD", path + "?local=true")[0], 404)

    def test_metainfo(self) -> None:
        """Metainfo of a cached blob is the origin's JSON with the configured piece length."""
        self.upload()
        code, _, body = self.call("GET", f"/internal/namespace/{NS_Q}/blobs/{DIGEST}/metainfo")
        self.assertEqual(code, 200)
        meta = MetaInfo.from_json(body)
        self.assertEqual((meta.digest, meta.length, meta.piece_length), (DIGEST, len(BLOB), 1024))
        self.assertEqual(PIECES.for_size(len(BLOB)), 1024)

    def test_metainfo_unknown_is_404(self) -> None:
        """Metainfo of a blob nowhere: 404."""
        code, _, _ = self.call("GET", f"/internal/namespace/{NS_Q}/blobs/{DIGEST}/metainfo")
        self.assertEqual(code, 404)

    def test_delete(self) -> None:
        """DELETE: 409 while persisted, 202 once written back, then 404."""
        self.origin.backend.down = True
        self.upload()
        self.assertEqual(self.call("DELETE", f"/internal/blobs/{DIGEST}")[0], 409)
        self.origin.backend.down = False
        self.clock.advance(20)
        code, _headers, _ = self.call("DELETE", f"/internal/blobs/{DIGEST}")
        self.assertEqual(code, 202)
        self.assertFalse(self.origin.store.has(DIGEST))
        self.assertEqual(self.call("DELETE", f"/internal/blobs/{DIGEST}")[0], 404)


class ClusterEndpointTests(OriginAPITestCase):
    """Locations, peer context, health, readiness, metrics, internal uploads."""

    def test_locations(self) -> None:
        """Origin-Locations lists the ring's replicas."""
        code, headers, _ = self.call("GET", f"/blobs/{DIGEST}/locations")
        self.assertEqual((code, headers.getRawHeaders("Origin-Locations")), (200, ["o1:15002"]))

    def test_locations_bad_digest(self) -> None:
        """A bad digest is a 400."""
        self.assertEqual(self.call("GET", "/blobs/abc/locations")[0], 400)

    def test_peercontext(self) -> None:
        """The peer context is what the tracker's origin client parses."""
        code, _, body = self.call("GET", "/internal/peercontext")
        value = json.loads(body)
        self.assertEqual(code, 200)
        self.assertEqual((value["ip"], value["port"], value["origin"]), ("127.0.0.1", 15001, True))
        self.assertEqual(value["peer_id"], self.origin.api.peer.peer_id.hex)

    def test_health_readiness_metrics(self) -> None:
        """Health is OK; readiness 200 with the backend up and 503 with it down; metrics text."""
        self.assertEqual(self.call("GET", "/health")[:3:2], (200, b"OK\n"))
        self.assertEqual(self.call("GET", "/readiness")[0], 200)
        self.origin.backend.down = True
        self.assertEqual(self.call("GET", "/readiness")[0], 503)
        self.upload()
        code, _, body = self.call("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'kraken_origin_commits_total{kind="public",result="ok"} 1.0', body)

    def test_internal_upload_has_no_writeback(self) -> None:
        """The internal copy commits unpersisted and queues nothing."""
        code, headers, _ = self.call("POST", f"/internal/blobs/{DIGEST}/uploads")
        uid = headers.getRawHeaders("Location")[0]
        code, _, _ = self.call(
            "PATCH",
            f"/internal/blobs/{DIGEST}/uploads/{uid}",
            data=BLOB,
            headers={"Content-Range": f"0-{len(BLOB)}"},
        )
        self.assertEqual(code, 204)
        self.assertEqual(self.call("PUT", f"/internal/blobs/{DIGEST}/uploads/{uid}")[0], 200)
        self.assertTrue(self.origin.store.has(DIGEST))
        self.assertFalse(self.origin.store.is_persisted(DIGEST))
        self.assertEqual(self.origin.queue.tasks(), [])
        self.assertEqual(self.call("POST", f"/internal/blobs/{DIGEST}/uploads")[0], 409)

    def test_duplicate_upload_delays_writeback(self) -> None:
        """A duplicate commit queues the write-back with the given delay, persisted meanwhile."""
        base = f"/internal/duplicate/namespace/{NS_Q}/blobs/{DIGEST}/uploads"
        _, headers, _ = self.call("POST", base)
        uid = headers.getRawHeaders("Location")[0]
        self.call("PATCH", f"{base}/{uid}", data=BLOB, headers={"Content-Range": f"0-{len(BLOB)}"})
        code, _, _ = self.call("PUT", f"{base}/{uid}", data=b'{"delay_seconds": 100}')
        self.assertEqual(code, 200)
        self.assertTrue(self.origin.store.is_persisted(DIGEST))
        self.clock.advance(99)
        self.assertNotIn(DIGEST.hex, self.origin.backend.blobs)
        self.clock.advance(2)
        self.assertIn(DIGEST.hex, self.origin.backend.blobs)

    def test_duplicate_bad_delay_is_400(self) -> None:
        """A negative or non-numeric delay is a 400 and nothing is committed."""
        base = f"/internal/duplicate/namespace/{NS_Q}/blobs/{DIGEST}/uploads"
        _, headers, _ = self.call("POST", base)
        uid = headers.getRawHeaders("Location")[0]
        self.call("PATCH", f"{base}/{uid}", data=BLOB, headers={"Content-Range": f"0-{len(BLOB)}"})
        self.assertEqual(self.call("PUT", f"{base}/{uid}", data=b'{"delay_seconds": -1}')[0], 400)
        self.assertEqual(self.call("PUT", f"{base}/{uid}", data=b"[1]")[0], 400)
        self.assertFalse(self.origin.store.has(DIGEST))


def message(body: bytes) -> str:
    """The message of a registry error body."""
    return json.loads(body)["errors"][0]["message"]  # type: ignore[no-any-return]


@define
class HeldLoadStore(MemoryTaskStore):
    """A memory task store whose ``load`` waits for ``loading`` (a slow or failing disk)."""

    loading: Deferred[None] = Factory(Deferred)

    def load(self) -> Deferred[LoadedTasks]:
        """The stored tasks once ``loading`` fires; its failure if it fails."""
        return self.loading.addCallback(lambda _: MemoryTaskStore.load(self))


class ReadinessTests(OriginAPITestCase):
    """/readiness: 503 at once, naming the reason, when the write-back queue cannot serve."""

    def hang_backends(self, origin: MemoryOrigin) -> None:
        """Make the backends' readiness check never answer (a stopped I/O pool)."""
        never: Callable[[], Deferred[None]] = Deferred
        SynchronousTestCase.patch(self, origin.api.backends, "check_readiness", never)

    def test_queue_stopped_is_503_at_once(self) -> None:
        """A stopped queue (a stopped origin) is a 503 saying so, without asking the backends."""
        self.hang_backends(self.origin)
        self.successResultOf(self.origin.queue.stopService())
        code, _, body = self.call("GET", "/readiness")  # synchronous: it did not wait
        self.assertEqual((code, message(body)), (503, "not ready: write-back queue stopped"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_queue_failed_to_load_is_503(self) -> None:
        """A queue whose store could not load is a 503 naming the store's error."""
        store = HeldLoadStore()
        origin = make_origin(self, self.clock, task_store=store)
        store.loading.errback(OSError("disk gone"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)  # the queue's own report
        code, _, body = self.call_on(origin, "GET", "/readiness")
        self.assertEqual(
            (code, message(body)), (503, "not ready: write-back queue failed to load: disk gone")
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_loading_waits_then_ready(self) -> None:
        """While the queue loads, readiness waits; once loaded it is a 200."""
        store = HeldLoadStore()
        origin = make_origin(self, self.clock, task_store=store)

        def finish_loading() -> None:
            if not store.loading.called:
                store.loading.callback(None)  # so that the queue's cleanup stop can finish

        self.addCleanup(finish_loading)
        treq = StubTreq(origin.api.resource())
        sent = treq.get(BASE + "/readiness")
        self.assertNoResult(sent)
        store.loading.callback(None)
        treq.flush()
        response = self.successResultOf(sent)
        self.assertEqual((response.code, self.successResultOf(response.content())), (200, b"OK\n"))

    def test_client_leaving_is_not_an_error(self) -> None:
        """A client that gives up on a waiting readiness leaves no error (and no 503) logged."""
        self.hang_backends(self.origin)
        treq = StubTreq(self.origin.api.resource())
        sent = treq.get(BASE + "/readiness")
        self.assertNoResult(sent)
        sent.cancel()  # the client's timeout: the connection is aborted
        treq.flush()
        self.failureResultOf(sent)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_backend_down_names_the_backend(self) -> None:
        """A backend that fails its check is a 503 naming it as the reason."""
        self.origin.backend.down = True
        code, _, body = self.call("GET", "/readiness")
        self.assertEqual((code, message(body)), (503, "not ready: backend: backend down"))

    def call_on(self, origin: MemoryOrigin, method: str, path: str) -> tuple[int, Any, bytes]:
        """:meth:`call` on another origin than the test's own."""
        response = self.successResultOf(
            StubTreq(origin.api.resource()).request(method, BASE + path)
        )
        return response.code, response.headers, self.successResultOf(response.content())
