"""
README.md's walk-through against the herd itself, with the real clients.

The herd runs as a newcomer starts it, ``twistd -n kraken-herd --data DIR``, in a child
process (this interpreter, ``PYTHONPATH`` at the checkout, working directory a temporary one),
moved to free ports with ``--base-port`` and ``--agent-base-port`` so that the test neither
collides with a herd someone runs on the defaults nor depends on 15000/16000 being free.
Then:

- ``skopeo copy --dest-tls-verify=false oci:... docker://<proxy>/test/hello:v1`` pushes a
  two-layer OCI image into the proxy, and ``skopeo copy --src-tls-verify=false
  docker://<agent>/test/hello:v1 oci:...`` pulls it back through the agent: same manifest
  digest and the same blobs, byte for byte;
- a real ``containerd`` whose ``_default`` hosts.toml mirrors every registry to the agent
  pulls and unpacks the pushed image with ``ctr images pull --hosts-dir ... --snapshotter
  native``, both under a registry name that does not exist and under README's own name
  (``<agent address>/test/hello:v1``): two committed snapshots each.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

import tests
from kraken.http.client import NO_RETRY, HTTPClientFactory
from tests.external import require_program
from tests.oci import OCILayout, host_arch
from tests.system.clusters import free_block, new_layout, pull_and_compare, skopeo, until
from tests.system.containerd import ProcessExit, require_containerd, start_containerd, stop_process

#: The checkout holding ``kraken/`` and ``twisted/plugins/kraken_plugins.py``.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))
#: ``twistd``, run by this interpreter: what the ``twistd`` console script does.
TWISTD = "from twisted.scripts.twistd import run; run()"
REPO, TAG = "test/hello", "v1"


class HerdProcess:
    """``twistd -n kraken-herd`` in a child process, on free ports, stopped by the test case."""

    def __init__(self, testcase: TestCase) -> None:
        self.testcase = testcase
        self.root = os.path.abspath(testcase.mktemp())
        os.makedirs(self.root)
        self.data = os.path.join(self.root, "kraken-data")
        # Proxy, origin peer, origin HTTP, tracker, build-index; agent registry, peer, server.
        self.base = free_block(5)
        self.agent_base = free_block(3)
        self.protocol = ProcessExit(keep=True)
        self.process: Any = None
        #: More ``twistd kraken-herd`` options (e.g. ``--config FILE``).
        self.args: list[str] = []

    @property
    def proxy(self) -> str:
        """The proxy's registry address (README's 127.0.0.1:15000)."""
        return f"127.0.0.1:{self.base}"

    @property
    def agent(self) -> str:
        """The agent's registry address (README's 127.0.0.1:16000)."""
        return f"127.0.0.1:{self.agent_base}"

    def save_log(self) -> None:
        """Write everything the herd printed to ``herd.log`` beside its data directory."""
        with open(os.path.join(self.root, "herd.log"), "wb") as f:
            f.write(b"".join(self.protocol.output))

    async def start(self) -> None:
        """Start the herd; return once the proxy's and the agent's ``/readiness`` answer 200."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
        argv = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "kraken-herd",
            "--data",
            self.data,
            "--base-port",
            str(self.base),
            "--agent-base-port",
            str(self.agent_base),
            *self.args,
        ]
        self.process = reactor.spawnProcess(
            self.protocol, sys.executable, argv, env=env, path=self.root
        )
        # Runs after the herd has stopped: its whole log, kept in trial's directory.
        self.testcase.addCleanup(self.save_log)
        self.testcase.addCleanup(
            lambda: ensureDeferred(
                stop_process(self.testcase, self.process, self.protocol, "the herd")
            )
        )
        http = HTTPClientFactory(reactor, timeout=5)
        self.testcase.addCleanup(http.close)
        client = http.client(retry=NO_RETRY)

        async def ready(url: str) -> bool:
            if self.protocol.exited:
                self.testcase.fail(f"the herd exited at start:\n{self.protocol.tail()}")
            try:
                response = await client.get(url, ok=(200, 503))
                await response.content()
            except Exception:
                return False  # not listening yet
            return bool(response.code == 200)

        for url in (
            f"http://{self.proxy}/readiness",
            f"http://127.0.0.1:{self.agent_base + 2}/readiness",
        ):

            def check(url: str = url) -> Deferred[bool]:
                return Deferred.fromCoroutine(ready(url))

            await until(self.testcase, check, url, limit=60)


class HerdClientTests(TestCase):
    """skopeo and containerd against ``twistd -n kraken-herd`` as README.md shows them."""

    timeout = 180

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        """Start the herd and write the image to push: two gzipped tar layers, OCI manifest."""
        self.skopeo = require_program("skopeo")
        self.layout = OCILayout(os.path.abspath(self.mktemp()))
        self.image = self.layout.image(7, arch=host_arch(), layer_sizes=(30_000, 40_000))
        self.layout.tag(self.image, TAG)
        manifest = json.loads(self.layout.read(self.image))
        self.layers = [self.layout.read(layer) for layer in manifest["layers"]]
        self.herd = HerdProcess(self)
        return Deferred.fromCoroutine(self.herd.start())

    async def push(self) -> None:
        """README's push: ``skopeo copy --dest-tls-verify=false oci:... docker://<proxy>/...``."""
        await skopeo(
            self,
            self.skopeo,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{self.layout.root}:{TAG}",
            f"docker://{self.herd.proxy}/{REPO}:{TAG}",
        )

    async def test_skopeo_push_and_pull(self) -> None:
        """An image skopeo pushes into the proxy comes back out of the agent blob for blob."""
        await self.push()
        await pull_and_compare(
            self,
            self.skopeo,
            self.herd.agent_base,
            f"{REPO}:{TAG}",
            self.layout,
            self.image["digest"],
        )
        # README's pull, as written: the layers land in the destination layout unchanged.
        out = new_layout(self)
        await skopeo(
            self,
            self.skopeo,
            "copy",
            "--src-tls-verify=false",
            f"docker://{self.herd.agent}/{REPO}:{TAG}",
            f"oci:{out.root}:{TAG}",
        )
        pulled = out.blobs()
        self.assertEqual(len(self.layers), 2)
        for layer in self.layers:
            self.assertIn(layer, pulled.values())

    async def test_containerd_pull(self) -> None:
        """containerd, with the agent as ``_default`` mirror, pulls and unpacks the pushed image."""
        require_containerd()
        await self.push()
        ctd = await start_containerd(self, self.herd.agent)
        # A registry that does not exist: only the _default mirror can resolve and serve it.
        await ctd.pull(self, "mirror", f"registry.invalid/{REPO}:{TAG}")
        self.assertEqual(await ctd.committed_snapshots(self, "mirror"), 2)
        # README's command, naming the agent itself.
        await ctd.pull(self, "readme", f"{self.herd.agent}/{REPO}:{TAG}")
        self.assertEqual(await ctd.committed_snapshots(self, "readme"), 2)
