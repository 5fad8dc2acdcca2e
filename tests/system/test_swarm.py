"""
Small swarms of separate processes on network namespaces with ``tc`` limits (root, iproute2).

Each test builds 1 tracker, 1 origin and 5 agents with :class:`bench.swarm.Swarm` (every
host's link limited to 2 MiB/s each way, 512 KiB pieces, so that an 8 MiB download takes
seconds), uploads a random 8 MiB blob and has agents fetch it through their agent API:

- all five at once: every host ends with exactly the uploaded bytes;
- one agent SIGKILLed mid-download and started again on the same disk: it finishes;
- one agent that serves corrupt pieces (``tests.system.corrupt_agent``): the other four
  still finish with correct bytes;
- and the benchmark's bulk-TCP reference (:meth:`Swarm.tcp_reference`) on the same network.

:class:`NetworkTests` checks :class:`bench.netns.Network`'s own options.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.trial.unittest import TestCase

from bench.netns import Network
from bench.swarm import Swarm, SwarmOptions
from tests.external import require_program, require_root

SIZE = 8 * 1024 * 1024
RATE = 2 * 1024 * 1024


class SwarmTests(TestCase):
    """1 tracker, 1 origin, 5 agents as processes in namespaces."""

    timeout = 150

    def setUp(self) -> None:
        """Check root and iproute2, then make the network, the work directory and the blob."""
        require_root()
        require_program("ip")
        require_program("tc")
        self.workdir = tempfile.mkdtemp(prefix="kraken-system-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.network = Network("kbsys", upload=RATE, download=RATE)
        self.addCleanup(self.network.close)
        self.network.create()
        self.swarm = Swarm(
            self.network,
            self.workdir,
            SwarmOptions(
                agents=5,
                origins=1,
                upload=RATE,
                download=RATE,
                piece_length=512 * 1024,
                announce_interval=1.0,
            ),
        )
        self.data = random.Random(8).randbytes(SIZE)
        self.blob = os.path.join(self.workdir, "blob")
        with open(self.blob, "wb") as f:
            f.write(self.data)

    def start(self, agent_prefixes: dict[int, list[str]] | None = None) -> str:
        """Start the daemons, upload the blob; its sha256 hex."""
        self.swarm.build(agent_prefixes)
        self.swarm.wait_ready()
        digest: str = self.swarm.upload(self.blob)["digest"]
        return digest.split(":", 1)[1]

    def fetch(self, agents: list[int], sha: str) -> list[dict[str, Any]]:
        """
        Agents ``agents`` fetch the blob at the same moment, each into a file; results.

        The clients land the body whole and hash it after the end, as ``bench.swarm``'s do.
        """
        size = len(self.data)
        clients = [
            self.swarm.start_fetch(self.swarm.agents[i], sha, self.out(i), size) for i in agents
        ]
        Swarm.go(clients, lead=0.5)
        return [Swarm.result(c, timeout=120) for c in clients]

    def out(self, i: int) -> str:
        """Where agent ``i``'s fetched copy is written."""
        return os.path.join(self.workdir, f"fetched-{i}")

    def assert_bytes(self, i: int) -> None:
        """Agent ``i``'s copy is exactly the uploaded blob."""
        with open(self.out(i), "rb") as f:
            self.assertEqual(f.read(), self.data, f"agent {i} got different bytes")

    def test_five_agents_same_bytes(self) -> None:
        """Five agents fetching at once all end with the uploaded bytes."""
        sha = self.start()
        results = self.fetch(list(range(5)), sha)
        for i, r in enumerate(results):
            self.assertTrue(r["ok"], f"agent {i}: {r}")
            self.assert_bytes(i)
        self.swarm.check_alive()

    def test_agent_killed_and_restarted(self) -> None:
        """An agent SIGKILLed mid-download and restarted on its disk finishes the download."""
        sha = self.start()
        clients = [self.swarm.start_fetch(self.swarm.agents[i], sha, self.out(i)) for i in range(5)]
        start = Swarm.go(clients, lead=0.5)
        victim = self.swarm.agents[0]
        # The blob needs >= 4 s at 2 MiB/s; kill 1.5 s in.
        time.sleep(max(0.0, start + 1.5 - time.time()))
        self.swarm.kill(victim)
        results = [Swarm.result(c, timeout=120) for c in clients]
        self.assertFalse(results[0]["ok"], f"finished before the kill: {results[0]}")
        self.swarm.start_daemon(victim)
        again = self.fetch([0], sha)[0]
        self.assertTrue(again["ok"], again)
        for i in range(5):
            self.assert_bytes(i)
        for i, r in enumerate(results[1:], 1):
            self.assertTrue(r["ok"], f"agent {i}: {r}")

    def test_corrupt_peer(self) -> None:
        """With one agent serving corrupt pieces, every other agent gets the right bytes."""
        corrupt = [sys.executable, "-m", "tests.system.corrupt_agent"]
        sha = self.start({0: corrupt})
        # The liar completes first, so the tracker hands it out first (complete agents lead).
        first = self.fetch([0], sha)[0]
        self.assertTrue(first["ok"], first)
        results = self.fetch([1, 2, 3, 4], sha)
        for i, r in zip([1, 2, 3, 4], results, strict=True):
            self.assertTrue(r["ok"], f"agent {i}: {r}")
            self.assert_bytes(i)
        with open(self.swarm.agents[0].log) as f:
            lies = f.read().count("corrupted piece")
        self.assertGreater(lies, 0, "the corrupt agent was never asked for a piece")
        self.swarm.check_alive()

    def test_tcp_reference(self) -> None:
        """
        The bulk-TCP reference measures what the shaped links carry: payload received below
        the shaped rate (TCP/IP headers count against it) but most of it.  (What the hosts
        hand to their sockets can run ahead of the wire while buffers grow, so only a lower
        limit is checked for it.)
        """
        self.swarm.build()
        self.swarm.wait_ready()
        reference = self.swarm.tcp_reference(seconds=4)
        self.assertLess(reference["rx_rate"], RATE, f"above the shaped rate: {reference}")
        for key in ("rx_rate", "tx_rate"):
            self.assertGreater(reference[key], 0.7 * RATE, f"{key} far below: {reference}")


class NetworkTests(TestCase):
    """Options of the namespaced network itself."""

    def test_mtu(self) -> None:
        """``mtu`` is set on both ends of every host's veth and on the bridge."""
        require_root()
        require_program("ip")
        require_program("tc")
        network = Network("kbmtu", mtu=9000)
        self.addCleanup(network.close)
        network.create()
        hosts = [network.add_host(name) for name in ("a", "b")]

        def mtu(netns: str, dev: str) -> int:
            out = subprocess.run(
                ["ip", "-n", netns, "-j", "link", "show", "dev", dev],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            return int(json.loads(out)[0]["mtu"])

        for host in hosts:
            self.assertEqual(mtu(host.netns, "eth0"), 9000)
            self.assertEqual(mtu(network.bridge_ns, f"v-{host.name}"), 9000)
        self.assertEqual(mtu(network.bridge_ns, "br0"), 9000)
