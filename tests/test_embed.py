"""
The public embedding API, :mod:`kraken.embed`, as an application uses it.

In memory: configurations from objects, mappings and files; the names and kinds of every
daemon's listeners; what is handed to the application.  On real sockets (127.0.0.1) in the
test's reactor: every kind of daemon started and stopped leaves no thread, file
descriptor, delayed call or reactor reader/writer behind; a listener that cannot start
fails ``ready()``/``start()`` with :class:`ListenFailed` (the process goes on) and the
daemon releases what it took; a mounted listener is served by the application's own
``Site`` while the daemon opens nothing; two trackers live in one reactor.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from kraken import embed
from kraken.clients.origin import OriginClient, bytes_chunks
from kraken.config import TRACKER_PORT, AgentConfig, TrackerConfig, dump_config
from kraken.core import Digest
from kraken.http.client import NO_RETRY, HTTPClientFactory, read_body
from kraken.http.server import KrakenSite
from kraken.io.sendfile import _devnull
from tests.peers.redisserver import free_port


def listen(port: int) -> str:
    """An endpoint string on 127.0.0.1."""
    return f"tcp:{port}:interface=127.0.0.1"


def unused() -> str:
    """The address of a port nothing listens on (a member nobody will call here)."""
    return f"127.0.0.1:{free_port()}"


def daemon_config(kind: str, root: str) -> dict[str, Any]:
    """A configuration of ``kind`` on free ports under ``root`` that starts on its own."""
    data = os.path.join(root, kind)
    if kind == "tracker":
        return {
            "data_dir": data,
            "server": {"listen": listen(free_port())},
            "origin": {"hosts": {"static": [unused()]}},
        }
    if kind == "origin":
        port = free_port()
        return {
            "data_dir": data,
            "server": {"listen": listen(port)},
            "peer": {"listen": listen(free_port())},
            "cluster": {"static": [f"127.0.0.1:{port}"]},
        }
    if kind == "build-index":
        port = free_port()
        return {
            "data_dir": data,
            "server": {"listen": listen(port)},
            "cluster": {"hosts": {"static": [f"127.0.0.1:{port}"]}},
            "origin": {"hosts": {"static": [unused()]}},
        }
    if kind == "proxy":
        return {
            "data_dir": data,
            "server": {"listen": listen(free_port())},
            "origin": {"hosts": {"static": [unused()]}},
            "build_index": {"hosts": {"static": [unused()]}},
        }
    assert kind == "agent"
    return {
        "data_dir": data,
        "registry": {"listen": listen(free_port())},
        "server": {"listen": listen(free_port())},
        "peer": {"listen": listen(free_port())},
        "tracker": {"hosts": {"static": [unused()]}},
        "build_index": {"hosts": {"static": [unused()]}},
    }


class LoadTests(SynchronousTestCase):
    """:func:`embed.load` takes objects, mappings, YAML files and None, and checks the kind."""

    def test_mapping_path_object_and_defaults(self) -> None:
        """A mapping and the YAML file it dumps to give equal configurations; an object is
        returned as it is; None gives the single-host defaults."""
        raw = daemon_config("tracker", self.mktemp())
        from_mapping = embed.load("tracker", raw)
        self.assertIsInstance(from_mapping, TrackerConfig)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(dump_config(from_mapping))
        self.assertEqual(embed.load("tracker", path), from_mapping)
        self.assertIs(embed.load("tracker", from_mapping), from_mapping)
        self.assertEqual(
            embed.load("tracker", None).server.listen, f"tcp:{TRACKER_PORT}:interface=127.0.0.1"
        )

    def test_bad_key_names_it(self) -> None:
        """An unknown key raises ConfigError naming it, as twistd would at start-up."""
        error = self.assertRaises(embed.ConfigError, embed.load, "agent", {"registy": {}})
        self.assertIn("registy", str(error))

    def test_wrong_kind_and_type(self) -> None:
        """A configuration of another kind, an unknown kind or a number is refused by name."""
        tracker = embed.load("tracker", None)
        error = self.assertRaises(TypeError, embed.load, "agent", tracker)
        self.assertIn("AgentConfig", str(error))
        self.assertRaises(TypeError, embed.load, "agent", 3)
        error = self.assertRaises(ValueError, embed.load, "herd", None)  # type: ignore[arg-type]
        self.assertIn("herd", str(error))


class BuildTests(SynchronousTestCase):
    """What :func:`embed.build` hands back, before anything starts."""

    def test_every_kind_names_its_listeners(self) -> None:
        """Each kind's listeners are found by the names LISTENERS gives; HTTP ones have a
        KrakenSite and its resource, ``peer`` a factory and no resource."""
        root = self.mktemp()
        self.assertEqual(set(embed.KINDS), set(embed.LISTENERS))
        for kind in embed.KINDS:
            daemon = embed.build(kind, daemon_config(kind, root), reactor)
            self.assertEqual(daemon.kind, kind)
            self.assertEqual(daemon.mounted, frozenset())
            for name in embed.LISTENERS[kind]:
                factory = daemon.factory(name)
                if name == "peer":
                    self.assertNotIsInstance(factory, KrakenSite)
                    self.assertRaises(KeyError, daemon.resource, name)
                else:
                    self.assertIsInstance(factory, KrakenSite)
                    self.assertIs(daemon.resource(name), factory.resource)  # type: ignore[attr-defined]
            self.assertRaises(KeyError, daemon.factory, "nonsense")

    def test_config_object_is_kept(self) -> None:
        """The daemon carries the checked configuration it was built from."""
        config = embed.load("agent", daemon_config("agent", self.mktemp()))
        daemon = embed.build("agent", config, reactor)
        self.assertIs(daemon.config, config)
        self.assertIsInstance(daemon.config, AgentConfig)

    def test_mounted_listener_leaves_the_tree(self) -> None:
        """A mounted listener is not in the daemon's tree; the others are."""
        daemon = embed.build(
            "agent", daemon_config("agent", self.mktemp()), reactor, mount=["registry"]
        )
        names = {s.name for s in daemon.service}
        self.assertNotIn("registry", names)
        self.assertLessEqual({"server", "peer"}, names)
        self.assertEqual(daemon.mounted, frozenset({"registry"}))
        self.assertIsInstance(daemon.factory("registry"), KrakenSite)
        error = self.assertRaises(KeyError, daemon.address, "registry")
        self.assertIn("mounted", str(error))

    def test_mount_of_a_string_is_refused(self) -> None:
        """``mount="registry"`` (a string, not a list of names) is a TypeError saying so."""
        error = self.assertRaises(
            TypeError,
            embed.build,
            "agent",
            daemon_config("agent", self.mktemp()),
            reactor,
            mount="registry",
        )
        self.assertIn("['registry']", str(error))

    def test_unknown_mount_is_refused(self) -> None:
        """Mounting a listener the kind does not have is an error naming it and the real ones."""
        error = self.assertRaises(
            ValueError,
            embed.build,
            "tracker",
            daemon_config("tracker", self.mktemp()),
            reactor,
            mount=["registry"],
        )
        self.assertIn("registry", str(error))
        self.assertIn("server", str(error))


def host_resources() -> None:
    """Make what the process shares between every daemon and keeps for its lifetime: the
    reactor's thread pool (the host's), the descriptor Twisted reserves on the first
    ``listenTCP`` (to accept and close connections when out of descriptors) and the one
    ``/dev/null`` descriptor that warming files for ``sendfile`` writes to (opened once per
    process, on first use)."""
    reactor.getThreadPool()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
    port.stopListening()
    _devnull()


def _reactor_pool_thread(thread: threading.Thread) -> bool:
    """A thread of the reactor's own pool (the host's: it resolves names for every client)."""
    return thread.name.startswith("PoolThread-twisted.internet.reactor")


class Snapshot:
    """What the process holds now: threads, file descriptors, delayed calls, readers, writers."""

    def __init__(self) -> None:
        self.threads = {t for t in threading.enumerate() if not _reactor_pool_thread(t)}
        self.fds = self._fds()
        self.calls = {c for c in reactor.getDelayedCalls() if c.active()}  # type: ignore[attr-defined]
        self.readers = set(reactor.getReaders())  # type: ignore[attr-defined]
        self.writers = set(reactor.getWriters())  # type: ignore[attr-defined]

    @staticmethod
    def _fds() -> dict[str, str]:
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # the directory listing's own descriptor
        return fds

    def left_since(self, before: Snapshot) -> dict[str, Any]:
        """What is held now and was not ``before`` (empty: nothing leaked)."""
        left: dict[str, Any] = {
            "threads": sorted(t.name for t in self.threads - before.threads),
            "fds": sorted(v for k, v in self.fds.items() if before.fds.get(k) != v),
            "delayed calls": [str(c) for c in self.calls - before.calls],
            "readers": [repr(r) for r in self.readers - before.readers],
            "writers": [repr(w) for w in self.writers - before.writers],
        }
        return {k: v for k, v in left.items() if v}


class KeptAlive(Protocol):
    """An HTTP/1.1 client that sends one GET, reads the answer and keeps its connection."""

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.response = b""
        self.answered: Deferred[None] = Deferred()
        self.lost = False

    def connectionMade(self) -> None:
        """Ask, keeping the connection alive (HTTP/1.1's default)."""
        assert self.transport is not None
        self.transport.write(b"GET " + self.path + b" HTTP/1.1\r\nHost: x\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        """Keep the answer; the head is enough."""
        self.response += data
        if b"\r\n\r\n" in self.response and not self.answered.called:
            self.answered.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The server closed it."""
        self.lost = True


class LifecycleTests(TestCase):
    """stopService releases every port, thread, file, timer and connection a daemon took."""

    timeout = 60

    async def settle(self) -> None:
        """Let the reactor run the closing of sockets (they close on its next turns)."""
        for _ in range(5):
            await deferLater(reactor, 0.02)

    async def start_use_stop(self, kind: str) -> None:
        """Start a ``kind``, call every HTTP listener (keeping the connection alive), stop
        it: nothing it took is left, and its ports accept no connection."""
        host_resources()
        await self.settle()
        before = Snapshot()
        daemon = embed.build(kind, daemon_config(kind, self.mktemp()), reactor)  # type: ignore[arg-type]
        await daemon.start()
        addresses = [daemon.address(name) for name in embed.LISTENERS[kind]]  # type: ignore[index]
        clients = []
        for name in embed.LISTENERS[kind]:  # type: ignore[index]
            if name == "peer":
                continue
            port = daemon.address(name).port  # type: ignore[attr-defined]
            path = b"/v2/" if name == "registry" else b"/health"
            client = KeptAlive(path)
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            await client.answered
            self.assertTrue(client.response.startswith(b"HTTP/1.1 200 "), f"{kind} {name}")
            clients.append(client)
        during = Snapshot()
        self.assertNotEqual(during.left_since(before), {}, "the daemon took nothing?")
        # The clients keep their connections open: the daemon must close them itself.
        await daemon.stop()
        await self.settle()
        self.assertEqual([c.lost for c in clients], [True] * len(clients), "connections kept")
        self.assertEqual(Snapshot().left_since(before), {}, f"left behind by a stopped {kind}")
        for address in addresses:
            with socket.socket() as s:
                self.assertNotEqual(s.connect_ex(("127.0.0.1", address.port)), 0)  # type: ignore[attr-defined]

    async def test_tracker(self) -> None:
        """A tracker leaves nothing behind."""
        await self.start_use_stop("tracker")

    async def test_origin(self) -> None:
        """An origin (thread pool, SQLite write-back queue, peer port) leaves nothing behind."""
        await self.start_use_stop("origin")

    async def test_build_index(self) -> None:
        """A build-index (thread pool, SQLite replication queue) leaves nothing behind."""
        await self.start_use_stop("build-index")

    async def test_proxy(self) -> None:
        """A proxy leaves nothing behind."""
        await self.start_use_stop("proxy")

    async def test_agent(self) -> None:
        """An agent (I/O pool, P2P engine, three ports) leaves nothing behind."""
        await self.start_use_stop("agent")


class ListenFailureTests(TestCase):
    """A listener that cannot start is a Deferred failure for the application, not an exit."""

    timeout = 30

    async def test_port_taken(self) -> None:
        """An agent whose server port is taken: start() fails with ListenFailed naming the
        port, after stopping the daemon (its other ports are closed again, no thread left)."""
        host_resources()
        taken = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        config = daemon_config("agent", self.mktemp())
        config["server"]["listen"] = listen(port)
        for _ in range(5):  # the reactor runs: its own start-up is not the daemon's
            await deferLater(reactor, 0.02)
        before = Snapshot()
        daemon = embed.build("agent", config, reactor)
        waiting = daemon.ready()
        try:
            await daemon.start()
        except embed.ListenFailed as e:
            self.assertIn(f"tcp:{port}", str(e))
        else:
            self.fail("start() succeeded on a taken port")
        # Every caller of ready() sees the failure, however many there are.
        for d in (waiting, daemon.ready()):
            with self.assertRaises(embed.ListenFailed):
                await d
        self.assertFalse(daemon.service.running)
        for _ in range(5):
            await deferLater(reactor, 0.02)
        self.assertEqual(Snapshot().left_since(before), {})


class MountTests(TestCase):
    """A mounted listener is the application's: served by its Site, not opened by the daemon."""

    timeout = 30

    async def test_tracker_under_host_site(self) -> None:
        """The tracker's API answers under ``/tracker/`` of the application's own Site
        (next to the application's page) and at ``/`` through keep_path; the tracker's own
        port is never opened."""
        config = daemon_config("tracker", self.mktemp())
        own_port = int(config["server"]["listen"].split(":")[1])
        tracker = embed.build("tracker", config, reactor, mount=["server"])
        api = tracker.resource("server")
        root = Resource()
        root.putChild(b"", Data(b"host page\n", "text/plain"))
        root.putChild(b"health", embed.keep_path(api))
        root.putChild(b"tracker", _Prefix(api))
        host = embed.serve_on(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Site(root))
        await tracker.start()
        host.startService()
        self.addCleanup(tracker.stop)
        self.addCleanup(host.stopService)
        port = host.port.getHost().port  # type: ignore[attr-defined]
        http = HTTPClientFactory(reactor, timeout=5, retry=NO_RETRY)
        self.addCleanup(http.close)
        client = http.client()
        answers = {}
        for path in ("/", "/health", "/tracker/health", "/tracker/metrics"):
            response = await client.get(f"http://127.0.0.1:{port}{path}", ok=range(100, 600))
            answers[path] = (response.code, await read_body(response, 1 << 20))
        self.assertEqual(answers["/"], (200, b"host page\n"))
        self.assertEqual(answers["/health"][0], 200)
        self.assertEqual(answers["/tracker/health"][0], 200)
        self.assertIn(b"tracker_", answers["/tracker/metrics"][1])
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", own_port)), 0)

    async def test_origin_upload_under_plain_site(self) -> None:
        """An origin's upload routes (which stream bodies under a KrakenSite) work under a
        plain twisted.web Site: a blob uploaded in chunks through the application's port
        comes back byte for byte."""
        config = daemon_config("origin", self.mktemp())
        origin = embed.build("origin", config, reactor, mount=["server"])
        host = embed.serve_on(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            Site(origin.resource("server")),
        )
        await origin.start()
        host.startService()
        self.addCleanup(origin.stop)
        self.addCleanup(host.stopService)
        await host.ready()
        address = f"127.0.0.1:{host.address().port}"  # type: ignore[attr-defined]
        http = HTTPClientFactory(reactor, timeout=10, retry=NO_RETRY)
        self.addCleanup(http.close)
        client = OriginClient(http.client(), reactor, chunk_size=1024 * 1024)
        data = os.urandom(3 * 1024 * 1024 + 17)
        digest = Digest.of_bytes(data)
        self.assertTrue(
            await client.upload(address, "embedded", digest, len(data), bytes_chunks(data))
        )
        chunks: list[bytes] = []
        await client.download(address, "embedded", digest, chunks.append)
        self.assertEqual(b"".join(chunks), data)


class _Prefix(Resource):
    """A child that hands the rest of the path to ``api`` (as a Klein ``branch`` route does)."""

    isLeaf = True

    def __init__(self, api: Any) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Any) -> Any:
        """Render through ``api``'s child for the remaining path."""
        from twisted.web.resource import getChildForRequest

        return getChildForRequest(self.api, request).render(request)


class TwoOfAKindTests(TestCase):
    """Two daemons of one kind live in one reactor, each on its own ports and data."""

    timeout = 30

    async def test_two_trackers(self) -> None:
        """Two trackers answer on their own ports with their own metrics, and stop apart."""
        root = self.mktemp()
        first = embed.build("tracker", daemon_config("tracker", root + "/a"), reactor)
        second = embed.build("tracker", daemon_config("tracker", root + "/b"), reactor)
        await first.start()
        await second.start()
        self.addCleanup(first.stop)
        http = HTTPClientFactory(reactor, timeout=5, retry=NO_RETRY)
        self.addCleanup(http.close)
        ports = [d.address("server").port for d in (first, second)]  # type: ignore[attr-defined]
        self.assertNotEqual(ports[0], ports[1])
        for port in ports:
            response = await http.client().get(f"http://127.0.0.1:{port}/health")
            await read_body(response, 4096)
            self.assertEqual(response.code, 200)
        await second.stop()
        response = await http.client().get(f"http://127.0.0.1:{ports[0]}/health")
        await read_body(response, 4096)
        self.assertEqual(response.code, 200)

    async def test_two_agents(self) -> None:
        """Two agents (six ports, two I/O pools, two engines) serve their registries side by
        side; one stopped, the other still serves."""
        root = self.mktemp()
        first = embed.build("agent", daemon_config("agent", root + "/a"), reactor)
        second = embed.build("agent", daemon_config("agent", root + "/b"), reactor)
        await first.start()
        await second.start()
        self.addCleanup(first.stop)
        http = HTTPClientFactory(reactor, timeout=5, retry=NO_RETRY)
        self.addCleanup(http.close)
        urls = [f"http://127.0.0.1:{d.address('registry').port}/v2/" for d in (first, second)]  # type: ignore[attr-defined]
        for url in urls:
            response = await http.client().get(url)
            await read_body(response, 4096)
            self.assertEqual(response.code, 200)
        await second.stop()
        response = await http.client().get(urls[0])
        await read_body(response, 4096)
        self.assertEqual(response.code, 200)


class ServeOnTests(TestCase):
    """serve_on gives the application a listener that reports whether its port opened."""

    timeout = 30

    async def test_address_and_taken_port(self) -> None:
        """A listener on port 0 tells its port; one on a taken port fails ready() with
        ListenFailed naming the port, and stops cleanly."""
        site = Site(Data(b"x", "text/plain"))
        listener = embed.serve_on(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), site)
        listener.startService()
        self.addCleanup(listener.stopService)
        await listener.ready()
        port = listener.address().port  # type: ignore[attr-defined]
        clash = embed.serve_on(TCP4ServerEndpoint(reactor, port, interface="127.0.0.1"), site)
        clash.startService()
        with self.assertRaises(embed.ListenFailed) as caught:
            await clash.ready()
        self.assertIn(f"tcp:{port}", str(caught.exception))
        self.assertRaises(RuntimeError, clash.address)
        await clash.stopService()


class DocumentationTests(SynchronousTestCase):
    """The public names are the documented ones, and the changelog has their version."""

    def test_every_public_name_is_documented(self) -> None:
        """Each name in ``kraken.embed.__all__`` exists and appears in docs/embedding.md;
        CHANGELOG.md has a section for the current API_VERSION."""
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(checkout, "docs", "embedding.md")) as f:
            guide = f.read()
        with open(os.path.join(checkout, "CHANGELOG.md")) as f:
            changelog = f.read()
        for name in embed.__all__:
            self.assertTrue(hasattr(embed, name), name)
            self.assertIn(f"`{name}", guide, name)
        self.assertIn(f"## API version {embed.API_VERSION}\n", changelog)


class HerdTests(TestCase):
    """The herd is an application of the embedding API: its members are embedded daemons."""

    timeout = 60

    def plan(self) -> Any:
        """Two origins and two agents on free ports (the herd's --origins 2 --agents 1)."""
        from kraken.services.herd import herd_plan
        from tests.system.clusters import free_block

        return herd_plan(
            data=os.path.abspath(self.mktemp()),
            origins=2,
            agents=2,
            base_port=free_block(15),
            agent_base_port=free_block(1003),
        )

    async def test_herd_of_two_agents(self) -> None:
        """A herd with two agents and two origins starts through ``kraken.embed``; its
        ready() fires once all seven daemons listen, each agent on its own ports; stopped,
        it leaves nothing behind."""
        from kraken.services.herd import build_herd

        host_resources()
        for _ in range(5):
            await deferLater(reactor, 0.02)
        before = Snapshot()
        herd = build_herd(self.plan(), reactor)
        kinds = sorted(daemon.kind for daemon in herd.daemons.values())
        self.assertEqual(
            kinds, ["agent", "agent", "build-index", "origin", "origin", "proxy", "tracker"]
        )
        herd.startService()
        try:
            await herd.ready()
            agents = [d for d in herd.daemons.values() if d.kind == "agent"]
            ports = {d.address(n).port for d in agents for n in embed.LISTENERS["agent"]}  # type: ignore[attr-defined]
            self.assertEqual(len(ports), 6)
        finally:
            await herd.stopService()
        for _ in range(5):
            await deferLater(reactor, 0.02)
        self.assertEqual(Snapshot().left_since(before), {})
