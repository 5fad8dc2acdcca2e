"""
Push with skopeo into the proxy, pull back from the proxy and from an agent, on real sockets.

One reactor runs an origin, a tracker, a build-index, a proxy and an agent on 127.0.0.1 (free
ports).  OCI layouts are built by hand (:class:`tests.oci.OCILayout`):

- a 2-layer image and a 2-platform OCI index go in with ``skopeo copy oci:... docker://proxy``;
  ``skopeo inspect --raw`` through the proxy and the agent gives the pushed manifest's bytes,
  and ``skopeo copy`` back out of both gives byte-identical blobs;
- ``tags/list`` and ``_catalog`` after several pushes;
- a mutable tag: ``repo:latest`` pushed twice with different images; the proxy and the agent
  serve the second within the agent's tag TTL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from kraken.config.loader import parse_config
from kraken.http.client import HTTPClientFactory, RetryPolicy, collect_body
from kraken.services.agent import build_agent
from kraken.services.build_index import build_build_index
from kraken.services.origin import build_origin
from kraken.services.proxy import ProxyService, build_proxy
from kraken.services.tracker import build_tracker
from tests.external import require_program
from tests.oci import OCILayout, digest_of
from tests.peers.redisserver import free_port
from tests.system.clusters import new_layout, pull_and_compare, skopeo, until


class PushPullTests(TestCase):
    """Origin, tracker, build-index, proxy and agent in this reactor on 127.0.0.1."""

    timeout = 240

    def setUp(self) -> None:
        """Start every daemon on free ports."""
        self.skopeo = require_program("skopeo")
        self.addCleanup(lambda: deferLater(reactor, 0.3))
        origin_port, tracker_port, bi_port = free_port(), free_port(), free_port()
        self.proxy_port = free_port()
        self.registry_port = free_port()
        origin = f"127.0.0.1:{origin_port}"
        backend = os.path.abspath(self.mktemp())

        def start(service: Any) -> Any:
            service.startService()
            self.addCleanup(service.stopService)
            return service

        self.origin = start(
            build_origin(
                parse_config(
                    "origin",
                    {
                        "data_dir": os.path.abspath(self.mktemp()),
                        "server": {"listen": f"tcp:{origin_port}:interface=127.0.0.1"},
                        "peer": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                        "cluster": {"static": [origin]},
                        "healthcheck": {"interval": 1.0, "timeout": 1.0},
                        "backends": [{"namespace": ".*", "backend": {"fs": {"root": backend}}}],
                    },
                ),
                reactor,
            )
        )
        self.tracker = start(
            build_tracker(
                parse_config(
                    "tracker",
                    {
                        "data_dir": os.path.abspath(self.mktemp()),
                        "server": {"listen": f"tcp:{tracker_port}:interface=127.0.0.1"},
                        "origin": {"hosts": {"static": [origin]}, "healthcheck": {"interval": 1.0}},
                        "announce_interval": 0.5,
                    },
                ),
                reactor,
            )
        )
        start(
            build_build_index(
                parse_config(
                    "build-index",
                    {
                        "data_dir": os.path.abspath(self.mktemp()),
                        "server": {"listen": f"tcp:{bi_port}:interface=127.0.0.1"},
                        "cluster": {"hosts": {"static": [f"127.0.0.1:{bi_port}"]}},
                        "origin": {"hosts": {"static": [origin]}},
                        "backends": [
                            {
                                "namespace": ".*",
                                "backend": {"fs": {"root": os.path.abspath(self.mktemp())}},
                            }
                        ],
                    },
                ),
                reactor,
            )
        )
        self.proxy: ProxyService = start(
            build_proxy(
                parse_config(
                    "proxy",
                    {
                        "data_dir": os.path.abspath(self.mktemp()),
                        "server": {"listen": f"tcp:{self.proxy_port}:interface=127.0.0.1"},
                        "origin": {
                            "hosts": {"static": [origin]},
                            "healthcheck": {"interval": 1.0},
                        },
                        "build_index": {"hosts": {"static": [f"127.0.0.1:{bi_port}"]}},
                    },
                ),
                reactor,
            )
        )
        self.agent = start(
            build_agent(
                parse_config(
                    "agent",
                    {
                        "data_dir": os.path.abspath(self.mktemp()),
                        "registry": {
                            "listen": f"tcp:{self.registry_port}:interface=127.0.0.1",
                            "tag_cache_ttl": 1.0,
                        },
                        "server": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                        "peer": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                        "tracker": {"hosts": {"static": [f"127.0.0.1:{tracker_port}"]}},
                        "build_index": {"hosts": {"static": [f"127.0.0.1:{bi_port}"]}},
                        "metainfo_poll": {"initial": 0.1, "maximum": 0.5},
                    },
                ),
                reactor,
            )
        )
        http = HTTPClientFactory(reactor, timeout=30, retry=RetryPolicy(max_retries=0))
        self.addCleanup(http.close)
        self.client = http.client()

    def layout(self) -> OCILayout:
        """A new empty OCI layout under the test's temporary directory."""
        return new_layout(self)

    async def until(self, condition: Callable[[], Any], what: str, limit: float = 30) -> None:
        """Wait (50 ms steps) for ``condition`` (may return a Deferred); fail after ``limit`` s."""
        await until(self, condition, what, limit)

    async def ready(self) -> None:
        """Wait for the origin ring and the tracker to see a healthy origin."""
        await self.until(lambda: self.origin.membership.healthy, "origin health")
        await self.until(self.tracker.api.origins.ready, "tracker's origin health")

    async def skopeo_run(self, *args: str) -> bytes:
        """Run skopeo; its stdout (fails the test on a non-zero exit)."""
        return await skopeo(self, self.skopeo, *args)

    async def push(self, layout: OCILayout, tag: str, ref: str) -> None:
        """``skopeo copy`` of ``layout``'s ``tag`` into the proxy as ``ref``."""
        await self.skopeo_run(
            "copy",
            "--multi-arch=all",
            "--dest-tls-verify=false",
            f"oci:{layout.root}:{tag}",
            f"docker://127.0.0.1:{self.proxy_port}/{ref}",
        )

    async def pull_and_compare(self, port: int, ref: str, layout: OCILayout, digest: str) -> None:
        """``skopeo inspect --raw`` and ``copy`` out of ``port``: same manifest, same blobs."""
        await pull_and_compare(self, self.skopeo, port, ref, layout, digest)

    async def get_json(self, url: str) -> tuple[Any, Any]:
        """GET ``url``: (response, decoded JSON body)."""
        response = await self.client.get(url)
        chunks: list[bytes] = []
        await collect_body(response, chunks.append)
        return response, json.loads(b"".join(chunks))

    def test_image_and_index(self) -> None:
        """A 2-layer image and a 2-platform index round-trip through the proxy and the agent."""

        async def run() -> None:
            await self.ready()
            image = self.layout()
            descriptor = image.image(1)
            image.tag(descriptor, "v1")
            await self.push(image, "v1", "test/image:v1")
            await self.pull_and_compare(
                self.proxy_port, "test/image:v1", image, descriptor["digest"]
            )
            await self.pull_and_compare(
                self.registry_port, "test/image:v1", image, descriptor["digest"]
            )

            multi = self.layout()
            index = multi.index(10)
            multi.tag(index, "multi")
            await self.push(multi, "multi", "test/multi:v1")
            await self.pull_and_compare(self.proxy_port, "test/multi:v1", multi, index["digest"])
            await self.pull_and_compare(self.registry_port, "test/multi:v1", multi, index["digest"])

        return ensureDeferred(run())

    def test_listings(self) -> None:
        """tags/list and _catalog reflect several pushes, with Link pagination."""

        async def run() -> None:
            await self.ready()
            layout = self.layout()
            layout.tag(layout.image(3), "t")
            for ref in ("test/a:one", "test/a:two", "test/a:three", "test/b:latest"):
                await self.push(layout, "t", ref)
            base = f"http://127.0.0.1:{self.proxy_port}"
            _, doc = await self.get_json(f"{base}/v2/test/a/tags/list")
            self.assertEqual(doc, {"name": "test/a", "tags": ["one", "three", "two"]})
            response, doc = await self.get_json(f"{base}/v2/test/a/tags/list?n=2")
            self.assertEqual(doc["tags"], ["one", "three"])
            self.assertEqual(
                response.headers.getRawHeaders("Link"),
                ['</v2/test/a/tags/list?n=2&last=three>; rel="next"'],
            )
            _, doc = await self.get_json(f"{base}/v2/_catalog")
            self.assertEqual(doc, {"repositories": ["test/a", "test/b"]})
            response, doc = await self.get_json(f"{base}/v2/_catalog?n=1")
            self.assertEqual(doc, {"repositories": ["test/a"]})
            self.assertIsNotNone(response.headers.getRawHeaders("Link"))

        return ensureDeferred(run())

    def test_mutable_tag(self) -> None:
        """latest pushed twice: the proxy and the agent serve the second within the TTL."""

        async def run() -> None:
            await self.ready()
            first = self.layout()
            first.tag(first.image(20), "t")
            await self.push(first, "t", "test/mut:latest")
            await self.pull_and_compare(
                self.registry_port, "test/mut:latest", first, first.refs[0]["digest"]
            )
            second = self.layout()
            second.tag(second.image(21), "t")
            await self.push(second, "t", "test/mut:latest")
            wanted = second.refs[0]["digest"]
            await self.pull_and_compare(self.proxy_port, "test/mut:latest", second, wanted)

            async def agent_serves_second() -> bool:
                raw = await self.skopeo_run(
                    "inspect",
                    "--raw",
                    "--tls-verify=false",
                    f"docker://127.0.0.1:{self.registry_port}/test/mut:latest",
                )
                return digest_of(raw) == wanted

            await self.until(lambda: ensureDeferred(agent_serves_second()), "agent TTL", 10)
            await self.pull_and_compare(self.registry_port, "test/mut:latest", second, wanted)

        return ensureDeferred(run())
