"""
A whole cluster in one reactor on real sockets: a tracker, 3 origins, agents, a fake build-index.

- 5 agents download the same 64 MiB blob at once: identical bytes, and the origins
  serve well under 5 blobs' worth of pieces (the agents share among themselves);
- ``skopeo copy docker://127.0.0.1:<agent registry>/<repo>:<tag> oci:<dir>`` of an image
  pushed into the cluster (origin uploads + a tag in a fake build-index on a real port,
  until the build-index daemon exists);
- a real ``containerd`` (own root, state, socket and config under a temporary directory)
  pulling and unpacking that image through the agent as a mirror for a registry that
  does not exist, configured with ``hosts.toml``;
- an agent stopped mid-download and started again on the same disk resumes;
- an agent restarted on its disk announces the blobs in its cache as a seeder.
"""

# Tiny config files and paths written by the test itself, in the test's own coroutines.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any, ClassVar

from klein import Klein
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from kraken.clients.origin import (
    OriginClient,
    OriginClusterClient,
    PollPolicy,
    bytes_chunks,
)
from kraken.config.loader import parse_config
from kraken.core import Digest
from kraken.http.client import HTTPClientFactory, RetryPolicy, collect_body
from kraken.services.agent import AgentService, build_agent
from kraken.services.origin import OriginService, build_origin
from kraken.services.tracker import TrackerService, build_tracker
from tests.external import require_program
from tests.oci import host_arch, image_config, manifest_of, tar_layer
from tests.peers.redisserver import free_port
from tests.system.containerd import require_containerd, start_containerd

PIECE = 1024 * 1024


class TagServer:
    """A stand-in build-index on a real port: ``GET /tags/{repo:tag}`` from a dict."""

    app: ClassVar[Klein] = Klein()

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    @app.route("/tags/<path:tag>")
    def tag(self, request: Any, tag: str) -> bytes:
        """The digest string, or 404."""
        if tag not in self.tags:
            request.setResponseCode(404)
            return b"unknown tag"
        return self.tags[tag].encode()

    @app.route("/readiness")
    def readiness(self, request: Any) -> bytes:
        """Always ready."""
        return b"OK"


def make_image() -> tuple[list[bytes], bytes, bytes]:
    """A small real image: (gzipped tar layers, config JSON, schema2 manifest JSON)."""
    layers, diff_ids = [], []
    for n in range(2):
        layer, diff_id = tar_layer(f"kraken/layer{n}.txt", f"hello from layer {n}\n".encode() * 100)
        layers.append(layer)
        diff_ids.append(diff_id)
    config = image_config(host_arch(), diff_ids)
    manifest = manifest_of(config, layers)
    return layers, config, manifest


class ClusterTests(TestCase):
    """Tracker, 3 origins and agents in this reactor on 127.0.0.1."""

    timeout = 180

    def setUp(self) -> None:
        """Start the tracker, the origins and the tag server; agents start per test."""
        self.origin_ports = [free_port() for _ in range(3)]
        self.origin_members = [f"127.0.0.1:{p}" for p in self.origin_ports]
        self.tracker_port = free_port()
        self.origins: list[OriginService] = []
        self.pieces_served = [0, 0, 0]
        backend = os.path.abspath(self.mktemp())
        for i, port in enumerate(self.origin_ports):
            config = parse_config(
                "origin",
                {
                    "data_dir": os.path.abspath(self.mktemp()),
                    "server": {"listen": f"tcp:{port}:interface=127.0.0.1"},
                    "peer": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                    "cluster": {"static": self.origin_members},
                    "metainfo": {"piece_lengths": {0: PIECE}},
                    "backends": [{"namespace": ".*", "backend": {"fs": {"root": backend}}}],
                },
            )
            origin = build_origin(config, reactor)
            self._count_pieces(origin, i)
            origin.startService()
            self.addCleanup(origin.stopService)
            self.origins.append(origin)
        tracker_config = parse_config(
            "tracker",
            {
                "data_dir": os.path.abspath(self.mktemp()),
                "server": {"listen": f"tcp:{self.tracker_port}:interface=127.0.0.1"},
                "origin": {"hosts": {"static": self.origin_members}},
                "announce_interval": 0.5,
            },
        )
        self.tracker: TrackerService = build_tracker(tracker_config, reactor)
        self.tracker.startService()
        self.addCleanup(self.tracker.stopService)
        self.tags = TagServer()
        self.tag_port = free_port()
        d = TCP4ServerEndpoint(reactor, self.tag_port, interface="127.0.0.1").listen(
            Site(self.tags.app.resource())
        )
        d.addCallback(lambda port: self.addCleanup(port.stopListening))
        http = HTTPClientFactory(reactor, timeout=30, retry=RetryPolicy(max_retries=2))
        self.addCleanup(http.close)
        self.client = http.client()
        self.cluster = OriginClusterClient(
            OriginClient(self.client, reactor, chunk_size=4 * PIECE, poll=PollPolicy(initial=0.05)),
            lambda: self.origin_members,
        )
        self.agents: list[AgentService] = []

    def _count_pieces(self, origin: OriginService, i: int) -> None:
        store = origin.store
        read_piece = store.read_piece

        def counting(digest: Digest, index: int) -> bytes:
            self.pieces_served[i] += 1
            return read_piece(digest, index)

        store.read_piece = counting  # type: ignore[method-assign]

    def start_agent(
        self, data_dir: str | None = None, ports: tuple[int, int, int] | None = None, **extra: Any
    ) -> AgentService:
        """An agent on free ports (or ``ports``: registry, server, peer), started."""
        registry, server, peer = ports or (free_port(), free_port(), free_port())
        raw: dict[str, Any] = {
            "data_dir": data_dir or os.path.abspath(self.mktemp()),
            "registry": {"listen": f"tcp:{registry}:interface=127.0.0.1"},
            "server": {"listen": f"tcp:{server}:interface=127.0.0.1"},
            "peer": {"listen": f"tcp:{peer}:interface=127.0.0.1"},
            "tracker": {"hosts": {"static": [f"127.0.0.1:{self.tracker_port}"]}},
            "build_index": {"hosts": {"static": [f"127.0.0.1:{self.tag_port}"]}},
            "metainfo_poll": {"initial": 0.1, "maximum": 0.5},
        }
        raw.update(extra)
        agent = build_agent(parse_config("agent", raw), reactor)
        agent.ports = (registry, server, peer)  # type: ignore[attr-defined]
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)
        self.agents.append(agent)
        return agent

    async def until(self, condition: Callable[[], bool], what: str, limit: float = 30) -> None:
        """Wait (20 ms steps) for ``condition``; fail after ``limit`` seconds."""
        for _ in range(int(limit / 0.02)):
            if condition():
                return
            await deferLater(reactor, 0.02)
        self.fail(f"timed out waiting for {what}")

    async def ready(self) -> None:
        """Wait until the tracker sees healthy origins and the origins see each other."""
        await self.until(
            lambda: all(len(o.membership.healthy) == 3 for o in self.origins), "origin ring"
        )
        for _ in range(250):
            if await self.tracker.api.origins.ready():
                return
            await deferLater(reactor, 0.02)
        self.fail("the tracker never saw a healthy origin")

    async def push(self, data: bytes, namespace: str) -> Digest:
        """Upload ``data`` into the origin ring."""
        d = Digest.of_bytes(data)
        await self.cluster.upload_blob(namespace, d, len(data), bytes_chunks(data))
        # Replication to the other origins runs in the background: let it finish first.
        await self.until(lambda: all(o.store.has(d) for o in self.origins), f"replicas of {d}")
        return d

    async def get(self, url: str, **kwargs: Any) -> tuple[Any, bytes]:
        """GET ``url``; (response, body)."""
        response = await self.client.get(url, timeout=120, ok=(200, 206, 404, 500), **kwargs)
        chunks: list[bytes] = []
        await collect_body(response, chunks.append)
        return response, b"".join(chunks)

    def test_five_agents_one_blob(self) -> None:
        """5 agents fetch one 64 MiB blob at once: same bytes, origins serve < 5 blobs' worth."""
        data = random.Random(64).randbytes(64 * 1024 * 1024)

        async def run() -> None:
            await self.ready()
            d = await self.push(data, "test/big")
            agents = [self.start_agent() for _ in range(5)]
            results = await gatherResults(
                [
                    ensureDeferred(
                        self.get(
                            f"http://127.0.0.1:{a.ports[1]}/namespace/test%2Fbig/blobs/{d.hex}"
                        )  # type: ignore[attr-defined]
                    )
                    for a in agents
                ]
            )
            for response, body in results:
                self.assertEqual(response.code, 200)
                self.assertEqual(len(body), len(data))
                self.assertEqual(body, data)
            served = sum(self.pieces_served)
            self.assertLess(served, 5 * 64, f"origins served {served} pieces")
            # Each agent's /metrics: one download, every byte received once, the torrent open
            # for seeding (its connections close as the peers complete: no fixed count).
            for agent in agents:
                _, text = await self.get(f"http://127.0.0.1:{agent.ports[1]}/metrics")  # type: ignore[attr-defined]
                samples = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text.decode())
                    for s in family.samples
                }
                self.assertEqual(samples[("kraken_agent_download_seconds_count", ())], 1)
                received = ("kraken_p2p_piece_bytes_total", (("direction", "received"),))
                self.assertEqual(samples[received], len(data))
                self.assertEqual(samples[("kraken_p2p_torrents", ())], 1)
                self.assertIn(("kraken_p2p_connections", ()), samples)
            # HEAD through the registry: Content-Length and digest over a real socket.
            registry = agents[0].ports[0]  # type: ignore[attr-defined]
            response = await self.client.head(f"http://127.0.0.1:{registry}/v2/test/big/blobs/{d}")
            self.assertEqual(response.headers.getRawHeaders("content-length"), [str(len(data))])
            self.assertEqual(response.headers.getRawHeaders("docker-content-digest"), [str(d)])
            # A Range over sendfile.
            response, body = await self.get(
                f"http://127.0.0.1:{registry}/v2/test/big/blobs/{d}",
                headers={"Range": "bytes=1000-1999999"},
            )
            self.assertEqual((response.code, body), (206, data[1000:2000000]))
            # Unknown blob: 404 from the tracker's metainfo answer.
            response, _ = await self.get(
                f"http://127.0.0.1:{agents[0].ports[1]}/namespace/x/blobs/"  # type: ignore[attr-defined]
                + Digest.of_bytes(b"nobody has this").hex
            )
            self.assertEqual(response.code, 404)

        return ensureDeferred(run())

    async def push_image(self, repo: str, tag: str) -> str:
        """Upload a real image's blobs and manifest, and tag it in the fake build-index."""
        layers, config, manifest = make_image()
        for blob in [*layers, config, manifest]:
            await self.push(blob, repo)
        digest = str(Digest.of_bytes(manifest))
        self.tags.tags[f"{repo}:{tag}"] = digest
        return digest

    def test_skopeo_copy(self) -> None:
        """skopeo copies an image pushed into the cluster out of the agent's registry port."""
        skopeo = require_program("skopeo")

        async def run() -> None:
            await self.ready()
            digest = await self.push_image("test/alpine", "latest")
            agent = self.start_agent()
            out = os.path.abspath(self.mktemp())
            _, stderr, code = await getProcessOutputAndValue(
                skopeo,
                [
                    "copy",
                    "--src-tls-verify=false",
                    f"docker://127.0.0.1:{agent.ports[0]}/test/alpine:latest",  # type: ignore[attr-defined]
                    f"oci:{out}",
                ],
                env=dict(os.environ),
            )
            self.assertEqual(code, 0, stderr.decode())
            with open(os.path.join(out, "index.json")) as f:
                index = json.load(f)
            self.assertEqual(len(index["manifests"]), 1)
            blobs = set(os.listdir(os.path.join(out, "blobs", "sha256")))
            layers, _, _ = make_image()
            # skopeo converts to OCI, rewriting manifest and config; the layers are ours.
            for blob in layers:
                self.assertIn(Digest.of_bytes(blob).hex, blobs)
            self.assertEqual(len(blobs), 4)
            self.assertTrue(digest)

        return ensureDeferred(run())

    def test_containerd_pull(self) -> None:
        """A real containerd pulls and unpacks an image through the agent via hosts.toml."""
        require_containerd()

        async def run() -> None:
            await self.ready()
            await self.push_image("test/app", "v1")
            agent = self.start_agent()
            ctd = await start_containerd(
                self,
                f"127.0.0.1:{agent.ports[0]}",  # type: ignore[attr-defined]
            )
            # A registry that does not exist: only the _default mirror can serve it.
            await ctd.pull(self, "kraken-test", "registry.invalid/test/app:v1")
            self.assertEqual(await ctd.committed_snapshots(self, "kraken-test"), 2)

        return ensureDeferred(run())

    def test_restart_mid_download(self) -> None:
        """An agent stopped mid-download and started again on its disk finishes from there."""
        pieces = 128
        data = random.Random(32).randbytes(pieces * PIECE)

        async def run() -> None:
            await self.ready()
            d = await self.push(data, "ns")
            data_dir = os.path.abspath(self.mktemp())
            agent = self.start_agent(data_dir)
            pending = ensureDeferred(
                self.get(f"http://127.0.0.1:{agent.ports[1]}/namespace/ns/blobs/{d.hex}")  # type: ignore[attr-defined]
            )
            pending.addErrback(lambda _: None)

            def partial() -> int:
                if not agent.store.has_download(d):
                    return 0
                return agent.store.piece_status(d).count()

            await self.until(lambda: partial() >= 4, "4 pieces before the restart")
            await agent.stopService()
            self.agents.remove(agent)
            had = agent.store.piece_status(d).count()
            self.assertLess(had, pieces)
            before = sum(self.pieces_served)
            again = self.start_agent(data_dir)
            response, body = await self.get(
                f"http://127.0.0.1:{again.ports[1]}/namespace/ns/blobs/{d}"  # type: ignore[attr-defined]
            )
            self.assertEqual((response.code, body), (200, data))
            fetched = sum(self.pieces_served) - before
            self.assertLessEqual(fetched, pieces - had + 3, f"had {had}, fetched {fetched}")

        return ensureDeferred(run())

    def test_restart_announces_cached_blobs(self) -> None:
        """An agent restarted on its disk announces the blobs it has as a seeder, unasked."""
        data = random.Random(8).randbytes(3 * PIECE)

        async def run() -> None:
            await self.ready()
            d = await self.push(data, "ns/cached")
            data_dir = os.path.abspath(self.mktemp())
            agent = self.start_agent(data_dir)
            response, body = await self.get(
                f"http://127.0.0.1:{agent.ports[1]}/namespace/ns%2Fcached/blobs/{d.hex}"  # type: ignore[attr-defined]
            )
            self.assertEqual((response.code, body), (200, data))
            await agent.stopService()
            self.agents.remove(agent)
            again = self.start_agent(data_dir)
            me = again.node.scheduler.peer_id
            infohash = again.store.get_metainfo(d).infohash
            self.assertEqual(again.store.get_namespace(d), "ns/cached")
            for _ in range(500):
                peers = await self.tracker.store.get_peers(infohash, 50)
                if any(p.peer_id == me and p.complete for p in peers):
                    break
                await deferLater(reactor, 0.02)
            else:
                self.fail("the restarted agent never announced its cached blob")
            torrent = again.node.scheduler.torrents[infohash]
            self.assertEqual((torrent.complete, torrent.namespace), (True, "ns/cached"))

        return ensureDeferred(run())
