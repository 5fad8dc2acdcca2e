"""
Every build-index endpoint DESIGN 9 names, answered by the real daemon on a real socket.

Cluster A (origin, tracker, build-index replicating ``.*`` to B, proxy) and cluster B
(origin, tracker, build-index) run in this reactor on 127.0.0.1; an image goes into A with
``skopeo copy`` through the proxy, then A's build-index is asked directly:
``PUT/GET/HEAD /tags/{tag}``, ``GET /list/{prefix}``, ``GET /repositories/{repo}/tags``,
``POST /remotes/tags/{tag}`` (the tag then reaches B), ``GET /origin``, ``/health``,
``/readiness`` and ``/metrics``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from kraken.core import Digest
from kraken.http.client import collect_body
from tests.external import require_program
from tests.system.clusters import new_layout, replicating_clusters, skopeo, until

REPO = "test/endpoints"
QUOTED = "test%2Fendpoints"


class BuildIndexEndpointTests(TestCase):
    """A's build-index over HTTP after a push through A's proxy."""

    timeout = 120

    def setUp(self) -> None:
        """Both clusters started; an HTTP client without retries."""
        self.skopeo = require_program("skopeo")
        self.a, self.b, self.client = replicating_clusters(self, agent=False)

    async def call(
        self, method: str, path: str, address: str | None = None
    ) -> tuple[int, Any, bytes]:
        """``method`` ``path`` at A's build-index (or ``address``): (status, headers, body)."""
        url = f"http://{address or self.a.address}{path}"
        response = await self.client.request(
            method,
            url,
            data=b"" if method == "PUT" else None,
            ok=range(100, 600),
            retry=False,
        )
        chunks: list[bytes] = []
        await collect_body(response, chunks.append)
        return response.code, response.headers, b"".join(chunks)

    async def push(self, tag: str) -> str:
        """A 2-layer image into A through the proxy as ``REPO:tag``; its manifest digest."""
        layout = new_layout(self)
        descriptor = layout.image(5)
        layout.tag(descriptor, "t")
        await skopeo(
            self,
            self.skopeo,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.root}:t",
            f"docker://127.0.0.1:{self.a.proxy_port}/{REPO}:{tag}",
        )
        return str(descriptor["digest"])

    def test_endpoints(self) -> Deferred[None]:
        """Each endpoint answers as DESIGN 9 and the API's docstring document."""

        async def run() -> None:
            await self.a.ready(self)
            await self.b.ready(self)
            digest = await self.push("v1")

            # PUT /tags/{tag}/digest/{d}: checked, stored; a missing manifest is 404.
            code, _, body = await self.call("PUT", f"/tags/{QUOTED}:v2/digest/{digest}")
            self.assertEqual((code, body), (200, b""))
            absent = Digest.of_bytes(b"no such manifest")
            code, _, _ = await self.call("PUT", f"/tags/{QUOTED}:v3/digest/{absent}")
            self.assertEqual(code, 404)

            # GET / HEAD /tags/{tag}
            code, headers, body = await self.call("GET", f"/tags/{QUOTED}:v2")
            self.assertEqual((code, body.decode()), (200, digest))
            self.assertTrue(headers.getRawHeaders("Content-Type")[0].startswith("text/plain"))
            code, _, body = await self.call("HEAD", f"/tags/{QUOTED}:v2")
            self.assertEqual((code, body), (200, b""))
            for method in ("GET", "HEAD"):
                code, _, _ = await self.call(method, f"/tags/{QUOTED}:v3")
                self.assertEqual(code, 404, method)

            # GET /list/{prefix}, with limit and the continuation in Links.next
            code, _, body = await self.call("GET", f"/list/{REPO}:")
            self.assertEqual(code, 200)
            doc = json.loads(body)
            self.assertEqual(doc["result"], [f"{REPO}:v1", f"{REPO}:v2"])
            self.assertEqual(doc["size"], 2)
            code, _, body = await self.call("GET", f"/list/{REPO}:?limit=1")
            page = json.loads(body)
            self.assertEqual(page["result"], [f"{REPO}:v1"])
            code, _, body = await self.call("GET", page["Links"]["next"])
            self.assertEqual(json.loads(body)["result"], [f"{REPO}:v2"])

            # GET /repositories/{repo}/tags: bare tags
            code, _, body = await self.call("GET", f"/repositories/{REPO}/tags")
            self.assertEqual((code, json.loads(body)["result"]), (200, ["v1", "v2"]))

            # POST /remotes/tags/{tag}: queued for B; B then answers it
            code, _, body = await self.call("POST", f"/remotes/tags/{QUOTED}:v2")
            self.assertEqual(code, 200)
            self.assertEqual(
                json.loads(body),
                {"tag": f"{REPO}:v2", "digest": digest, "remotes": [self.b.address]},
            )

            async def in_b() -> bool:
                code, _, body = await self.call("GET", f"/tags/{QUOTED}:v2", self.b.address)
                return code == 200 and body.decode() == digest

            await until(self, lambda: ensureDeferred(in_b()), "v2 in B")
            code, _, _ = await self.call("POST", f"/remotes/tags/{QUOTED}:v9")
            self.assertEqual(code, 404)

            # GET /origin, /health, /metrics
            self.assertEqual(
                (await self.call("GET", "/origin"))[::2], (200, self.a.origin_address.encode())
            )
            self.assertEqual((await self.call("GET", "/health"))[::2], (200, b"OK\n"))
            code, headers, body = await self.call("GET", "/metrics")
            self.assertEqual(code, 200)
            self.assertTrue(headers.getRawHeaders("Content-Type")[0].startswith("text/plain"))
            self.assertIn(b'kraken_build_index_tag_puts_total{kind="client",result="stored"}', body)

            # /readiness: 200 with the backends, the queue and the origin up
            self.assertEqual((await self.call("GET", "/readiness"))[::2], (200, b"OK\n"))

        return ensureDeferred(run())
