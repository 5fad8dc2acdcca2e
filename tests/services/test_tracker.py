"""
The tracker daemon built by makeService: option parsing, the service tree, and a real-socket
run on 127.0.0.1 with the memory store and with a real Redis.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from kraken.clients.tracker import TrackerClient
from kraken.cluster import (
    Membership,
    NoHealthFilter,
    PassiveHealthFilter,
    RendezvousRing,
    StaticHostList,
)
from kraken.core import MetaInfo, PeerID, PeerInfo
from kraken.http.client import NO_RETRY, HTTPClientFactory
from kraken.peers.announce import AnnounceRequest
from kraken.peers.redis import RedisPeerStore
from kraken.peers.store import MemoryPeerStore
from kraken.services.parts import ClosingListener
from kraken.services.tracker import Options, TrackerService, TrackerSite, makeService
from tests.peers.fakeorigin import FakeOrigin
from tests.peers.redisserver import RedisServer, free_port

INFO = MetaInfo.of_bytes(b"real socket blob" * 100, 1024)


class TrackerSiteTests(SynchronousTestCase):
    """The tracker's Site: no form parsing, no access-log line per good announce."""

    def site(self) -> tuple[TrackerSite, list[str]]:
        """A TrackerSite whose access log goes to a list."""
        site = TrackerSite(Resource())  # type: ignore[no-untyped-call]
        lines: list[str] = []
        site._logFile = type("Lines", (), {"write": staticmethod(lines.append)})()
        site._logDateTime = "-"
        return site, lines

    def request(self, site: TrackerSite, path: bytes, code: int) -> Any:
        """A finished-looking request for ``path`` answered ``code``."""
        request = DummyRequest(path.split(b"/")[1:])
        request.path = request.uri = path
        request.method = b"POST"
        request.code = code
        request.sentLength = 0
        return request

    def test_announces_not_logged(self) -> None:
        """A 200 announce leaves no access-log line; a failed announce and other paths do."""
        site, lines = self.site()
        site.log(self.request(site, b"/announce/" + b"a" * 64, 200))
        self.assertEqual(lines, [])
        site.log(self.request(site, b"/announce/" + b"a" * 64, 400))
        site.log(self.request(site, b"/namespace/x", 200))
        self.assertEqual(len(lines), 2)

    def test_probes_not_logged_unless_they_fail(self) -> None:
        """Health, readiness and metrics probes leave no access-log line unless they fail."""
        site, lines = self.site()
        for path in (b"/health", b"/readiness", b"/metrics"):
            site.log(self.request(site, path, 200))
        self.assertEqual(lines, [])
        site.log(self.request(site, b"/readiness", 503))
        self.assertEqual(len(lines), 1)

    def test_swarm_page_polls_not_logged(self) -> None:
        """An open swarm page's polls (one a second) leave no line; a failed one does."""
        site, lines = self.site()
        for path in (b"/ui/", b"/ui/torrents.json", b"/ui/swarm/" + b"a" * 64 + b".json"):
            site.log(self.request(site, path, 200))
        self.assertEqual(lines, [])
        site.log(self.request(site, b"/ui/swarm/nothex.json", 400))
        self.assertEqual(len(lines), 1)

    def test_status_polls_not_logged(self) -> None:
        """Any KrakenSite: successful ``.../status`` polls (the agent's download status,
        ``kraken blob pull --agent`` asks twice a second) leave no line; failed ones do."""
        site, lines = self.site()
        site.log(self.request(site, b"/blobs/" + b"a" * 64 + b"/status", 200))
        self.assertEqual(lines, [])
        site.log(self.request(site, b"/blobs/" + b"a" * 64 + b"/status", 404))
        self.assertEqual(len(lines), 1)

    def test_no_form_parsing(self) -> None:
        """POST bodies are not parsed as forms (the API takes JSON); tracebacks are not shown."""
        site, _ = self.site()
        self.assertFalse(site._parsePOSTFormSubmission)
        self.assertFalse(site.displayTracebacks)


class OptionsTests(SynchronousTestCase):
    """Command line and service tree, without sockets."""

    def test_defaults(self) -> None:
        """With no config the tracker uses the single-host defaults and a memory store."""
        options = Options()
        options.parseOptions([])
        service = makeService(options, MemoryReactorClock())
        self.assertIsInstance(service, TrackerService)
        self.assertIsInstance(service.store, MemoryPeerStore)
        kinds = {type(s) for s in service}
        self.assertTrue({Membership, TimerService, ClosingListener} <= kinds)
        self.assertEqual(service.api.interval_seconds, 3.0)
        self.assertEqual(service.api.handout_limit, 50)

    def test_listens_on_15003(self) -> None:
        """Started on a memory reactor, the default tracker listens on 127.0.0.1:15003."""
        fake = MemoryReactorClock()
        options = Options()
        options.parseOptions([])
        service = makeService(options, fake)
        service.startService()
        self.addCleanup(service.stopService)
        port, _, _, interface = fake.tcpServers[0]
        self.assertEqual((port, interface), (15003, "127.0.0.1"))

    def test_config_file(self) -> None:
        """Settings from --config reach the API and the store."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("announce_interval: 7\nhandout_limit: 20\npeer_store:\n  kind: redis\n")
        options = Options()
        options.parseOptions(["--config", path])
        service = makeService(options, MemoryReactorClock())
        self.assertEqual(service.api.interval_seconds, 7.0)
        self.assertEqual(service.api.handout_limit, 20)
        self.assertIsInstance(service.store, RedisPeerStore)

    def test_bad_config(self) -> None:
        """A bad setting stops option parsing with a message naming the key."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("handout_limit: many\n")
        options = Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--config", path])
        self.assertIn("handout_limit", str(error))


class RealSocketTests(TestCase):
    """A tracker from makeService on a real port, a fake origin on another, and real clients."""

    store_yaml = ""

    async def _setUp(self) -> None:
        self.origin = FakeOrigin("127.0.0.1", 0)
        listening = reactor.listenTCP(0, Site(self.origin.resource()), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.origin.port = listening.getHost().port
        self.origin.locations = [self.origin.address]
        self.origin.blobs[INFO.digest] = INFO
        path = self.mktemp()
        with open(path, "w") as f:  # noqa: ASYNC230
            f.write(f"origin:\n  hosts:\n    static: ['{self.origin.address}']\n" + self.store_yaml)
        self.tracker = f"127.0.0.1:{free_port()}"
        options = Options()
        options.parseOptions(
            ["--config", path, "--listen", f"tcp:{self.tracker.split(':')[1]}:interface=127.0.0.1"]
        )
        self.service = makeService(options, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        factory = HTTPClientFactory(reactor, timeout=5, retry=NO_RETRY)
        self.addCleanup(factory.close)
        self.http = factory.client()
        membership = Membership(StaticHostList([self.tracker]), NoHealthFilter(), reactor)
        await membership.refresh()
        self.client = TrackerClient(
            self.http, RendezvousRing(membership), PassiveHealthFilter(reactor), reactor
        )

    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    async def get(self, path: str, ok: tuple[int, ...] = (200,)) -> tuple[int, bytes]:
        """GET from the tracker."""
        response = await self.http.get(f"http://{self.tracker}{path}", ok=ok)
        return response.code, await response.content()

    async def test_announce_and_metainfo(self) -> None:
        """Agents announce through the client, see each other and the origin; metainfo arrives."""
        first = PeerInfo(PeerID("1" * 40), "127.0.0.1", 16001)
        second = PeerInfo(PeerID("2" * 40), "127.0.0.1", 16002, complete=True)
        origin = PeerInfo(self.origin.peer_id, "127.0.0.1", self.origin.port, True, True)
        answer = await self.client.announce(AnnounceRequest(INFO.digest, INFO.infohash, first))
        self.assertEqual(answer.peers, (origin,))
        await self.client.announce(AnnounceRequest(INFO.digest, INFO.infohash, second))
        answer = await self.client.announce(AnnounceRequest(INFO.digest, INFO.infohash, first))
        self.assertEqual(answer.peers, (second, origin))
        self.assertEqual(await self.client.metainfo("library/x", INFO.digest), INFO)
        self.assertEqual(self.origin.namespaces, ["library/x"])

    async def test_health_readiness_metrics(self) -> None:
        """/health and /readiness are 200 with a live origin, and still once it is down.

        The origin's state is in /dependencies (and ``kraken_dependency_up``) instead.
        """
        self.assertEqual(await self.get("/health"), (200, b"OK\n"))
        self.assertEqual((await self.get("/readiness"))[0], 200)
        _, body = await self.get("/metrics")
        self.assertIn(b"kraken_tracker_announces_total", body)
        self.origin.healthy = False
        self.assertEqual((await self.get("/readiness"))[0], 200)
        _, body = await self.get("/dependencies")
        self.assertIn(b'"up": false', body)

    async def test_bad_announce(self) -> None:
        """A malformed announce over a real socket is a 400 naming the field."""
        response = await self.http.post(
            f"http://{self.tracker}/announce/{INFO.infohash}",
            data=json.dumps(
                {
                    "digest": str(INFO.digest),
                    "infohash": INFO.infohash.hex,
                    "peer": {"peer_id": "1" * 40, "ip": "nope", "port": 1},
                }
            ).encode(),
            ok=(400,),
        )
        self.assertIn(b"peer.ip", await response.content())


class RealSocketRedisTests(RealSocketTests):
    """The same daemon with its peer store in a real redis-server."""

    async def _setUp(self) -> None:
        self.redis = RedisServer()
        await self.redis.start()
        self.addCleanup(self.redis.stop)
        self.store_yaml = (
            f"peer_store:\n  kind: redis\n  redis:\n    address: 127.0.0.1:{self.redis.port}\n"
        )
        await super()._setUp()

    async def test_store_is_redis(self) -> None:
        """The announces really land in Redis."""
        self.assertIsInstance(self.service.store, RedisPeerStore)
        peer = PeerInfo(PeerID("3" * 40), "127.0.0.1", 16003)
        await self.client.announce(AnnounceRequest(INFO.digest, INFO.infohash, peer))
        conn = await self.redis.connect()
        self.addCleanup(conn.disconnect)
        keys = await conn.keys("kraken:peers:*")
        self.assertEqual(len(keys), 2)
