"""
Client mistakes and a full disk against the real daemons on real sockets (issue 17, items 3-4).

One cluster (origin, tracker, build-index, proxy, agent) runs in this reactor on 127.0.0.1;
a small blob is pushed through the proxy.  Then each mistake gets its documented answer, never a
500 or a 502: JSON nested past the parser's limit (tracker announce, proxy manifest PUT) is 400,
an absurd or malformed ``Range`` is the same 416 on origin, agent and proxy (and a valid one the
same bytes everywhere), a path-traversing tag on the agent's server API is 400.  With its data
directory on a small tmpfs (root only), an origin upload that fills the disk is 507 naming the
origin and the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from kraken.http.client import HTTPClientFactory, KrakenHTTPClient, RetryPolicy, collect_body
from tests.system.clusters import Cluster

REPO, QUOTED = "test/mistakes", "test%2Fmistakes"
BLOB = bytes(range(256)) * 40
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class _Answers:
    """An HTTP client without retries that reads whole answers."""

    def __init__(self, testcase: TestCase) -> None:
        factory = HTTPClientFactory(reactor, timeout=20, retry=RetryPolicy(max_retries=0))
        testcase.addCleanup(factory.close)
        self.client: KrakenHTTPClient = factory.client()

    async def call(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, bytes]:
        """``method url``: (status, headers, body), whatever the status."""
        response = await self.client.request(
            method, url, data=data, headers=headers, ok=range(100, 600), retry=False
        )
        chunks: list[bytes] = []
        await collect_body(response, chunks.append)
        return response.code, response.headers, b"".join(chunks)


class ClientMistakeTests(TestCase):
    """A whole cluster, a blob pushed through the proxy, then the mistakes."""

    timeout = 120

    def setUp(self) -> Deferred[None]:
        """Start the cluster and push :data:`BLOB` through the proxy."""
        self.cluster = Cluster(os.path.abspath(self.mktemp()), proxy=True, agent=True)
        self.addCleanup(lambda: deferLater(reactor, 0.3))
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.http = _Answers(self)
        return ensureDeferred(self._push())

    async def _push(self) -> None:
        await self.cluster.ready(self)
        code, _, body = await self.http.call(
            "POST",
            f"http://127.0.0.1:{self.cluster.proxy_port}/v2/{REPO}/blobs/uploads/?digest={DIGEST}",
            data=BLOB,
            headers={"Content-Type": "application/octet-stream"},
        )
        self.assertEqual(code, 201, body)

    def test_nested_json(self) -> None:
        """60 KB of ``[`` to the tracker's announce and 100 KB to a proxy manifest PUT: 400."""

        async def run() -> None:
            code, _, body = await self.http.call(
                "POST",
                f"http://{self.cluster.tracker_address}/announce/{'a' * 64}",
                data=b"[" * 60_000,
                headers={"Content-Type": "application/json"},
            )
            self.assertEqual((code, body), (400, b"invalid JSON body: nested too deeply to parse"))
            code, _, body = await self.http.call(
                "PUT",
                f"http://127.0.0.1:{self.cluster.proxy_port}/v2/{REPO}/manifests/v1",
                data=b'{"layers": ' + b"[" * 100_000,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            )
            self.assertEqual(code, 400, body)
            self.assertIn(b"MANIFEST_INVALID", body)
            self.assertIn(b"nested too deeply", body)

        return ensureDeferred(run())

    def test_same_range_answer_everywhere(self) -> None:
        """Origin, agent (registry and server API) and proxy answer each Range alike."""
        c = self.cluster
        urls = {
            "origin": f"http://{c.origin_address}/namespace/{QUOTED}/blobs/{DIGEST}",
            "agent registry": f"http://127.0.0.1:{c.registry_port}/v2/{REPO}/blobs/{DIGEST}",
            "agent server": f"http://127.0.0.1:{c.agent_server_port}/namespace/{QUOTED}/blobs/{DIGEST}",
            "proxy": f"http://127.0.0.1:{c.proxy_port}/v2/{REPO}/blobs/{DIGEST}",
        }
        n = len(BLOB)
        cases: list[tuple[str | None, int, bytes | None, str | None]] = [
            (None, 200, BLOB, None),
            ("bytes=2-5", 206, BLOB[2:6], f"bytes 2-5/{n}"),
            ("bytes=-3", 206, BLOB[-3:], f"bytes {n - 3}-{n - 1}/{n}"),
            (f"bytes={n - 2}-{10**30}", 206, BLOB[-2:], f"bytes {n - 2}-{n - 1}/{n}"),
            ("bytes=0-1,5-6", 200, BLOB, None),
            ("items=0-1", 200, BLOB, None),
            ("bytes=" + "9" * 5000 + "-", 416, None, f"bytes */{n}"),
            (f"bytes={n}-", 416, None, f"bytes */{n}"),
            ("bytes=abc", 416, None, f"bytes */{n}"),
        ]

        async def run() -> None:
            for header, status, body, content_range in cases:
                for where, url in urls.items():
                    code, headers, got = await self.http.call(
                        "GET", url, headers=None if header is None else {"Range": header}
                    )
                    what = f"{where}, Range {(header or '')[:20]!r}: {got[:200]!r}"
                    self.assertEqual(code, status, what)
                    if body is not None:
                        self.assertEqual(got, body, what)
                    self.assertEqual(
                        headers.getRawHeaders(b"content-range"),
                        None if content_range is None else [content_range.encode()],
                        what,
                    )

        return ensureDeferred(run())

    def test_bad_tag_on_agent_server(self) -> None:
        """``GET :16002/tags/..%2F..%2Fx:x`` is 400 from the agent, not the build-index's 502."""

        async def run() -> None:
            base = f"http://127.0.0.1:{self.cluster.agent_server_port}"
            code, _, body = await self.http.call("GET", f"{base}/tags/..%2F..%2Fx:x")
            self.assertEqual(code, 400, body)
            self.assertIn(b"invalid tag", body)
            code, _, body = await self.http.call("GET", f"{base}/tags/{QUOTED}:nope")
            self.assertEqual(code, 404, body)

        return ensureDeferred(run())


class DiskFullTests(TestCase):
    """An origin whose data directory is a 2 MiB tmpfs (mounting needs root)."""

    timeout = 60

    def setUp(self) -> None:
        """Mount the tmpfs where the cluster's origin keeps its data; start the cluster."""
        if os.geteuid() != 0 or shutil.which("mount") is None:
            raise SkipTest("mounting a tmpfs needs root and mount(8)")
        root = os.path.abspath(self.mktemp())
        data = os.path.join(root, "origin")
        os.makedirs(data)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", data],
            check=False,
            capture_output=True,
        )
        if mounted.returncode:
            raise SkipTest(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", data], check=True)
        self.data = data
        self.cluster = Cluster(root)
        # Runs after the origin stopped: its write-back queue's last checkpoint finds the
        # disk full too and logs so, which is right for a full disk and no failure here.
        self.addCleanup(self.flushLoggedErrors, sqlite3.OperationalError)
        self.addCleanup(lambda: deferLater(reactor, 0.3))
        self.addCleanup(self.cluster.stop)
        self.cluster.start_origin()
        self.http = _Answers(self)

    def test_upload_that_fills_the_disk_is_507(self) -> None:
        """A 4 MiB upload to an origin with 2 MiB of disk: 507 naming the origin and the file."""
        blob = os.urandom(4 * 1024 * 1024)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()

        async def run() -> None:
            base = f"http://{self.cluster.origin_address}/namespace/{QUOTED}/blobs/{digest}/uploads"
            code, headers, body = await self.http.call("POST", base)
            self.assertEqual(code, 200, body)
            (uid,) = headers.getRawHeaders(b"location")
            code, _, body = await self.http.call(
                "PATCH",
                f"{base}/{uid.decode()}",
                data=blob,
                headers={"Content-Range": f"0-{len(blob)}"},
            )
            self.assertEqual(code, 507, body)
            self.assertIn(b"INSUFFICIENT_STORAGE", body)
            self.assertIn(
                b"origin: No space left on device (ENOSPC) at " + self.data.encode(), body
            )

        return ensureDeferred(run())
