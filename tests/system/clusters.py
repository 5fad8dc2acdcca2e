"""
Whole Kraken clusters in the test's reactor on 127.0.0.1, built from the daemons' build functions.

A :class:`Cluster` owns the free ports and data directories of one cluster (origin, tracker,
build-index, and optionally a proxy and an agent) and starts and stops its daemons; its
build-index can be stopped and started again on the same port and data directory (its
replication queue survives).  :func:`until`, :func:`skopeo` and :func:`pull_and_compare` are
the waits and the skopeo steps the end-to-end tests share; :func:`free_block` finds room for a
daemon that takes a block of consecutive ports (the herd's ``--base-port``).
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from kraken.config.loader import parse_config
from kraken.http.client import HTTPClientFactory, KrakenHTTPClient, RetryPolicy
from kraken.services.agent import AgentService, build_agent
from kraken.services.build_index import BuildIndexService, build_build_index
from kraken.services.origin import OriginService, build_origin
from kraken.services.proxy import ProxyService, build_proxy
from kraken.services.tracker import TrackerService, build_tracker
from tests.oci import OCILayout
from tests.peers.redisserver import free_port

__all__ = ["Cluster", "free_block", "new_layout", "pull_and_compare", "skopeo", "until"]

#: Seconds between health checks and replication retries: short, so tests converge fast.
INTERVAL = 0.2


def free_block(size: int) -> int:
    """
    A port ``base`` such that ``base .. base + size - 1`` could all be bound on 127.0.0.1 now.

    Bases come from 20000-32000, below Linux's default ephemeral range (32768-60999), so
    that outgoing connections made meanwhile do not take one of the block's ports.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - size)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no block of {size} free ports on 127.0.0.1")


def _listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


class Cluster:
    """One cluster's ports, directories and running daemons.

    ``remotes`` are the build-index's replication rules (remote build-index address to tag
    regexes).  :meth:`start` starts the origin, the tracker, the build-index and, when asked
    for, the proxy and the agent; :meth:`stop` stops whatever runs.
    """

    def __init__(
        self,
        root: str,
        *,
        remotes: Mapping[str, Sequence[str]] | None = None,
        proxy: bool = False,
        agent: bool = False,
    ) -> None:
        self.root = root
        self.remotes = {k: list(v) for k, v in (remotes or {}).items()}
        self.with_proxy = proxy
        self.with_agent = agent
        self.origin_port = free_port()
        self.tracker_port = free_port()
        self.bi_port = free_port()
        self.proxy_port = free_port()
        self.registry_port = free_port()
        self.agent_server_port = free_port()
        self.origin_address = f"127.0.0.1:{self.origin_port}"
        self.tracker_address = f"127.0.0.1:{self.tracker_port}"
        self.address = f"127.0.0.1:{self.bi_port}"
        self.origin: OriginService | None = None
        self.tracker: TrackerService | None = None
        self.build_index: BuildIndexService | None = None
        self.proxy: ProxyService | None = None
        self.agent: AgentService | None = None
        self._running: list[Any] = []

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _start(self, service: Any) -> Any:
        service.startService()
        self._running.append(service)
        return service

    def start_origin(self) -> OriginService:
        """Start the origin (filesystem backend for every namespace)."""
        config = {
            "data_dir": self._dir("origin"),
            "server": {"listen": _listen(self.origin_port)},
            "peer": {"listen": _listen(free_port())},
            "cluster": {"static": [self.origin_address]},
            "healthcheck": {"interval": INTERVAL, "timeout": 1.0},
            "writeback": {"retry_interval": 0.1, "max_retry_interval": 0.3},
            "backends": [{"namespace": ".*", "backend": {"fs": {"root": self._dir("backend")}}}],
        }
        self.origin = self._start(build_origin(parse_config("origin", config), reactor))
        return self.origin

    def start_tracker(self) -> TrackerService:
        """Start the tracker, in front of the origin."""
        config = {
            "data_dir": self._dir("tracker"),
            "server": {"listen": _listen(self.tracker_port)},
            "origin": {
                "hosts": {"static": [self.origin_address]},
                "healthcheck": {"interval": INTERVAL},
            },
            "announce_interval": 0.5,
        }
        self.tracker = self._start(build_tracker(parse_config("tracker", config), reactor))
        return self.tracker

    def start_build_index(self) -> BuildIndexService:
        """Start the build-index (same port and data_dir every time: its queue survives)."""
        config = {
            "data_dir": self._dir("build-index"),
            "server": {"listen": _listen(self.bi_port)},
            "cluster": {
                "hosts": {"static": [self.address]},
                "healthcheck": {"interval": INTERVAL, "timeout": 1.0},
            },
            "origin": {
                "hosts": {"static": [self.origin_address]},
                "healthcheck": {"interval": INTERVAL, "timeout": 1.0},
            },
            "remotes": self.remotes,
            "tag_replication": {"retry_interval": 0.1, "max_retry_interval": 0.3},
            "backends": [{"namespace": ".*", "backend": {"fs": {"root": self._dir("tags")}}}],
        }
        self.build_index = build_build_index(parse_config("build-index", config), reactor)
        self.build_index.startService()
        return self.build_index

    async def stop_build_index(self) -> None:
        """Stop the build-index if it runs (its port closes before this returns)."""
        service, self.build_index = self.build_index, None
        if service is not None:
            await maybeDeferred(service.stopService)

    def start_proxy(self) -> ProxyService:
        """Start the proxy (registry v2 for pushes) in front of the origin and build-index."""
        config = {
            "data_dir": self._dir("proxy"),
            "server": {"listen": _listen(self.proxy_port)},
            "origin": {
                "hosts": {"static": [self.origin_address]},
                "healthcheck": {"interval": INTERVAL},
            },
            "build_index": {"hosts": {"static": [self.address]}},
            "delete_enabled": True,
        }
        self.proxy = self._start(build_proxy(parse_config("proxy", config), reactor))
        return self.proxy

    def start_agent(self) -> AgentService:
        """Start the agent: registry on :attr:`registry_port` (tag TTL 1 s), server API on
        :attr:`agent_server_port`."""
        config = {
            "data_dir": self._dir("agent"),
            "registry": {"listen": _listen(self.registry_port), "tag_cache_ttl": 1.0},
            "server": {"listen": _listen(self.agent_server_port)},
            "peer": {"listen": _listen(free_port())},
            "tracker": {"hosts": {"static": [self.tracker_address]}},
            "build_index": {"hosts": {"static": [self.address]}},
            "metainfo_poll": {"initial": 0.1, "maximum": 0.5},
        }
        self.agent = self._start(build_agent(parse_config("agent", config), reactor))
        return self.agent

    def start(self) -> None:
        """Start the origin, the tracker, the build-index, and the proxy and agent if wanted."""
        self.start_origin()
        self.start_tracker()
        self.start_build_index()
        if self.with_proxy:
            self.start_proxy()
        if self.with_agent:
            self.start_agent()

    async def ready(self, testcase: TestCase) -> None:
        """Wait until the origin sees itself healthy and the tracker sees a healthy origin."""
        origin, tracker = self.origin, self.tracker
        assert origin is not None and tracker is not None, "start() first"
        await until(testcase, lambda: origin.membership.healthy, "origin health")
        await until(testcase, tracker.api.origins.ready, "tracker's origin health")

    async def stop(self) -> None:
        """Stop everything that runs, the last started first."""
        await self.stop_build_index()
        running, self._running = self._running, []
        for service in reversed(running):
            await maybeDeferred(service.stopService)


async def until(
    testcase: TestCase, condition: Callable[[], Any], what: str, limit: float = 30
) -> None:
    """Wait (50 ms steps) for ``condition()`` (may return a Deferred); fail after ``limit`` s."""
    for _ in range(int(limit / 0.05)):
        result = condition()
        if hasattr(result, "addCallback"):
            result = await result
        if result:
            return
        await deferLater(reactor, 0.05)
    testcase.fail(f"timed out after {limit} s waiting for {what}")


async def skopeo(testcase: TestCase, program: str, *args: str) -> bytes:
    """Run skopeo; its stdout (fails the test on a non-zero exit, with skopeo's stderr)."""
    out, err, code = await getProcessOutputAndValue(program, list(args), env=dict(os.environ))
    testcase.assertEqual(code, 0, f"skopeo {' '.join(args)}: {err.decode()}")
    return bytes(out)


def replicating_clusters(
    testcase: TestCase, *, agent: bool
) -> tuple[Cluster, Cluster, KrakenHTTPClient]:
    """
    Cluster A (with a proxy) replicating every tag to cluster B (with an agent if ``agent``),
    both started (B first: A's rules name B's build-index), and an HTTP client without
    retries; everything stops when the test ends.  Returns (A, B, client).
    """
    testcase.addCleanup(lambda: deferLater(reactor, 0.3))
    root = os.path.abspath(testcase.mktemp())
    b = Cluster(os.path.join(root, "b"), agent=agent)
    a = Cluster(os.path.join(root, "a"), remotes={b.address: [".*"]}, proxy=True)
    testcase.addCleanup(a.stop)
    testcase.addCleanup(b.stop)
    b.start()
    a.start()
    http = HTTPClientFactory(reactor, timeout=10, retry=RetryPolicy(max_retries=0))
    testcase.addCleanup(http.close)
    return a, b, http.client()


def new_layout(testcase: TestCase) -> OCILayout:
    """A new empty OCI layout under ``testcase``'s temporary directory."""
    return OCILayout(os.path.abspath(testcase.mktemp()))


async def pull_and_compare(
    testcase: TestCase, program: str, port: int, ref: str, pushed: OCILayout, digest: str
) -> None:
    """``skopeo inspect --raw`` and ``copy`` out of 127.0.0.1:``port``: same manifest and blobs.

    The manifest's sha256 must be ``digest`` and the copied layout must hold exactly the
    blobs of ``pushed``, byte for byte.
    """
    source = f"docker://127.0.0.1:{port}/{ref}"
    raw = await skopeo(testcase, program, "inspect", "--raw", "--tls-verify=false", source)
    testcase.assertEqual("sha256:" + hashlib.sha256(raw).hexdigest(), digest)
    out = new_layout(testcase)
    await skopeo(
        testcase,
        program,
        "copy",
        "--multi-arch=all",
        "--src-tls-verify=false",
        source,
        f"oci:{out.root}:x",
    )
    pulled = out.blobs()
    for name, data in pulled.items():
        testcase.assertEqual(hashlib.sha256(data).hexdigest(), name)
    testcase.assertEqual(pulled, pushed.blobs())
