"""
Daemons stopped while their active health checks are in flight, on real sockets.

A stopping tracker or origin must drop the ``GET /health`` probes it has in flight at
once: left alone, each would finish later and park its connection in the stopped
daemon's HTTP pool (trial then reports a dirty reactor), or wait out the probe timeout.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from kraken.config.loader import parse_config
from kraken.services.origin import build_origin
from kraken.services.tracker import build_tracker
from tests.peers.redisserver import free_port


class HangingHealth(Resource):
    """A cluster member whose ``/health`` never answers until the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        """Hold the request open."""
        self.pending.append(request)
        return NOT_DONE_YET


class StopWithProbesInFlightTests(TestCase):
    """Stopping a daemon closes the connections of its health checks still in flight."""

    timeout = 30

    def data_dir(self) -> str:
        """An absolute temporary directory for a daemon."""
        return os.path.abspath(self.mktemp())

    def members(self) -> tuple[list[HangingHealth], list[str]]:
        """Two hanging members on real ports (a one-member list is never probed)."""
        resources, addresses = [], []
        for _ in range(2):
            resource = HangingHealth()
            port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(port.stopListening)
            resources.append(resource)
            addresses.append(f"127.0.0.1:{port.getHost().port}")
        return resources, addresses

    async def stop_while_probing(self, service: Any, resources: list[HangingHealth]) -> None:
        """Start ``service``, wait for its probes to arrive, stop it: the probes are dropped."""
        service.startService()
        for _ in range(500):
            if all(r.pending for r in resources):
                break
            await deferLater(reactor, 0.01)
        else:
            self.fail("the probes never arrived")
        lost: list[Deferred[Any]] = [r.pending[0].notifyFinish() for r in resources]
        await service.stopService()
        # Well inside the 3 s probe timeout: the stop itself dropped them.
        dropped = DeferredList(lost, consumeErrors=True).addTimeout(1.0, reactor)
        results = await dropped
        self.assertEqual([ok for ok, _ in results], [False, False])

    async def test_tracker(self) -> None:
        """A tracker stopped while probing its origins drops the probes' connections."""
        resources, addresses = self.members()
        config = parse_config(
            "tracker",
            {
                "data_dir": self.data_dir(),
                "server": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                "origin": {"hosts": {"static": addresses}},
            },
        )
        await self.stop_while_probing(build_tracker(config, reactor), resources)

    async def test_origin(self) -> None:
        """An origin stopped while probing its ring drops the probes' connections."""
        resources, addresses = self.members()
        config = parse_config(
            "origin",
            {
                "data_dir": self.data_dir(),
                "server": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                "peer": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                "cluster": {"static": addresses},
            },
        )
        await self.stop_while_probing(build_origin(config, reactor), resources)
