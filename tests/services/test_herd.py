"""
The herd (``twistd kraken-herd``): its port plan and wiring, and a real push and pull.

- :func:`herd_plan` puts every member on DESIGN 11's ports, wires each to the others, gives
  extra origins and agents the next ports, merges a user configuration over the plan, and
  reports bad keys with their path;
- the ``kraken-herd`` options reject impossible counts;
- a herd on free ports in this reactor takes ``skopeo copy oci:... docker://<proxy>`` and
  serves the same layers back through its agent with ``skopeo copy docker://<agent> oci:...``.
"""

# Small files written by the test itself inside its coroutines.

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.config import parse_config
from kraken.config.structure import ConfigError
from kraken.services.herd import HerdService, Options, build_herd, herd_plan
from tests.external import require_program
from tests.oci import tagged_image
from tests.system.clusters import free_block


class PlanTests(SynchronousTestCase):
    """The herd's plan of ports, wiring and data directories."""

    def test_defaults(self) -> None:
        """With no options every member is on its DESIGN 11 port under ./kraken-data."""
        plan = herd_plan()
        kinds = [(kind, name) for kind, name, _ in plan.members]
        self.assertEqual(
            kinds,
            [
                ("tracker", "tracker"),
                ("origin", "origin"),
                ("build-index", "build-index"),
                ("proxy", "proxy"),
                ("agent", "agent"),
            ],
        )
        (tracker,), (origin,) = plan.of("tracker"), plan.of("origin")
        (bi,), (proxy,), (agent,) = plan.of("build-index"), plan.of("proxy"), plan.of("agent")
        self.assertEqual(proxy.server.listen, "tcp:15000:interface=127.0.0.1")
        self.assertEqual(origin.peer.listen, "tcp:15001:interface=127.0.0.1")
        self.assertEqual(origin.server.listen, "tcp:15002:interface=127.0.0.1")
        self.assertEqual(tracker.server.listen, "tcp:15003:interface=127.0.0.1")
        self.assertEqual(bi.server.listen, "tcp:15004:interface=127.0.0.1")
        self.assertEqual(agent.registry.listen, "tcp:16000:interface=127.0.0.1")
        self.assertEqual(agent.peer.listen, "tcp:16001:interface=127.0.0.1")
        self.assertEqual(agent.server.listen, "tcp:16002:interface=127.0.0.1")
        self.assertEqual(str(agent.data_dir), "./kraken-data/agent")
        self.assertEqual(str(origin.data_dir), "./kraken-data/origin")

    def test_deletes_on_in_the_herd_only(self) -> None:
        """The herd's proxy serves registry deletes; a proxy's own config leaves them off, and
        a herd user may switch them off."""
        (proxy,) = herd_plan().of("proxy")
        self.assertTrue(proxy.delete_enabled)
        self.assertFalse(parse_config("proxy", {}).delete_enabled)
        (proxy,) = herd_plan(user={"proxy": {"delete_enabled": False}}).of("proxy")
        self.assertFalse(proxy.delete_enabled)

    def test_more_origins_and_agents(self) -> None:
        """Extra origins form one ring that everyone calls; extra agents take the next ports."""
        plan = herd_plan(origins=2, agents=3, data="/tmp/h")
        origins, agents = plan.of("origin"), plan.of("agent")
        self.assertEqual(
            [o.server.listen for o in origins],
            ["tcp:15002:interface=127.0.0.1", "tcp:15012:interface=127.0.0.1"],
        )
        self.assertEqual(
            [o.peer.listen for o in origins],
            ["tcp:15001:interface=127.0.0.1", "tcp:15011:interface=127.0.0.1"],
        )
        ring = ("127.0.0.1:15002", "127.0.0.1:15012")
        for config in [*origins]:
            self.assertEqual(tuple(config.cluster.static), ring)
        self.assertEqual(tuple(plan.of("tracker")[0].origin.hosts.static), ring)
        self.assertEqual(tuple(plan.of("proxy")[0].origin.hosts.static), ring)
        self.assertEqual(tuple(plan.of("build-index")[0].origin.hosts.static), ring)
        self.assertEqual(
            [(a.registry.listen, a.peer.listen, a.server.listen) for a in agents],
            [
                tuple(f"tcp:{p}:interface=127.0.0.1" for p in (base, base + 1, base + 2))
                for base in (16000, 17000, 18000)
            ],
        )
        self.assertEqual(
            [str(a.data_dir) for a in agents], ["/tmp/h/agent", "/tmp/h/agent-1", "/tmp/h/agent-2"]
        )
        for agent in agents:
            self.assertEqual(tuple(agent.tracker.hosts.static), ("127.0.0.1:15003",))
            self.assertEqual(tuple(agent.build_index.hosts.static), ("127.0.0.1:15004",))

    def test_base_ports(self) -> None:
        """The two port blocks move for tests."""
        plan = herd_plan(base_port=30000, agent_base_port=31000, agents=2)
        self.assertEqual(plan.of("proxy")[0].server.listen, "tcp:30000:interface=127.0.0.1")
        self.assertEqual(tuple(plan.of("agent")[1].tracker.hosts.static), ("127.0.0.1:30003",))
        self.assertEqual(plan.of("agent")[1].server.listen, "tcp:32002:interface=127.0.0.1")

    def test_user_config_merges(self) -> None:
        """User keys override the plan; extra agents keep the plan's listeners."""
        user = {
            "tracker": {"announce_interval": "1s"},
            "agent": {
                "peer": {"listen": "tcp:19001:interface=127.0.0.1"},
                "scheduler": {"pipeline_limit": 7},
            },
        }
        plan = herd_plan(user=user, agents=2)
        self.assertEqual(plan.of("tracker")[0].announce_interval, 1.0)
        first, extra = plan.of("agent")
        self.assertEqual(first.peer.listen, "tcp:19001:interface=127.0.0.1")
        self.assertEqual(first.registry.listen, "tcp:16000:interface=127.0.0.1")
        self.assertEqual(extra.peer.listen, "tcp:17001:interface=127.0.0.1")
        self.assertEqual((first.scheduler.pipeline_limit, extra.scheduler.pipeline_limit), (7, 7))

    def test_bad_key(self) -> None:
        """A misspelt key is an error naming it."""
        with self.assertRaises(ConfigError) as caught:
            herd_plan(user={"agent": {"schedular": {}}})
        self.assertIn("schedular", str(caught.exception))

    def test_options_reject_counts(self) -> None:
        """--origins 0 and negative --agents stop twistd with a usage error."""
        for argv in (["--origins", "0"], ["--agents", "-1"]):
            with self.assertRaises(usage.UsageError):
                Options().parseOptions(argv)

    def test_options_build_plan(self) -> None:
        """Options carry a checked plan with the requested counts and data directory."""
        options = Options()
        options.parseOptions(["--origins", "2", "--agents", "1", "--data", "/tmp/x"])
        plan = options["herd_plan"]
        self.assertEqual((len(plan.of("origin")), len(plan.of("agent"))), (2, 2))
        self.assertEqual(plan.data, "/tmp/x")


class HerdTests(TestCase):
    """A whole herd in this reactor on free ports, with skopeo on both ends."""

    timeout = 120

    async def until(self, condition: Callable[[], Any], what: str, limit: float = 30) -> None:
        """Wait (50 ms steps) for ``condition``; fail after ``limit`` seconds."""
        for _ in range(int(limit / 0.05)):
            if await ensureDeferred(_maybe_async(condition())):
                return
            await deferLater(reactor, 0.05)
        self.fail(f"timed out waiting for {what}")

    def test_push_through_proxy_pull_through_agent(self) -> None:
        """skopeo pushes an image into the herd's proxy and copies it back out of its agent."""
        skopeo = require_program("skopeo")
        base, agent_base = free_block(5), free_block(3)
        plan = herd_plan(
            data=os.path.abspath(self.mktemp()),
            base_port=base,
            agent_base_port=agent_base,
            user={"tracker": {"announce_interval": "500ms"}},
        )
        herd: HerdService = build_herd(plan, reactor)
        herd.startService()
        self.addCleanup(herd.stopService)
        self.addCleanup(lambda: deferLater(reactor, 0.3))
        source = os.path.abspath(self.mktemp())
        layers = tagged_image(source, "v1")
        out = os.path.abspath(self.mktemp())

        async def skopeo_run(*args: str) -> None:
            stdout, stderr, code = await getProcessOutputAndValue(
                skopeo, list(args), env=dict(os.environ)
            )
            self.assertEqual(code, 0, f"skopeo {' '.join(args)}: {(stdout + stderr).decode()}")

        async def run() -> None:
            proxy = herd.members["proxy"]
            tracker = herd.members["tracker"]
            await self.until(proxy.origins.usable, "the proxy to see the origin")
            await self.until(tracker.api.origins.ready, "the tracker to see the origin")
            await skopeo_run(
                "copy",
                "--dest-tls-verify=false",
                f"oci:{source}:v1",
                f"docker://127.0.0.1:{base}/herd/app:v1",
            )
            await skopeo_run(
                "copy",
                "--src-tls-verify=false",
                f"docker://127.0.0.1:{agent_base}/herd/app:v1",
                f"oci:{out}:v1",
            )
            got = set(os.listdir(os.path.join(out, "blobs", "sha256")))
            for layer in layers:
                self.assertIn(hashlib.sha256(layer).hexdigest(), got)

        return ensureDeferred(run())


async def _maybe_async(value: Any) -> Any:
    """``await`` a Deferred or pass a plain value through."""
    if hasattr(value, "addCallback"):
        return await value
    return value


class CLITests(SynchronousTestCase):
    """``kraken herd`` runs ``twistd -n kraken-herd`` with its options."""

    def test_forwards_options(self) -> None:
        """Given options become kraken-herd options; no pid file; nothing else is added."""
        import sys

        from twisted.scripts import twistd

        from kraken.cli import main

        seen: list[list[str]] = []
        self.patch(sys, "argv", ["kraken"])
        self.patch(twistd, "run", lambda: seen.append(list(sys.argv)))
        self.assertEqual(main(["herd", "--data", "/tmp/d", "--agents", "2"]), 0)
        self.assertEqual(
            seen,
            [["twistd", "--nodaemon", "--pidfile=", "kraken-herd", "--data=/tmp/d", "--agents=2"]],
        )
