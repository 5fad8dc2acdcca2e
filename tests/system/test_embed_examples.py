"""
The embedding examples of docs/examples/, run as a user runs them.

Each example runs in a child process (this interpreter, ``PYTHONPATH`` at the checkout,
working directory a temporary one) on free ports of 127.0.0.1, and is stopped with SIGTERM
as a service manager would; it must then exit with status 0 and log no traceback.

- ``twistd -ny docs/examples/agent_app.tac``: an application serving its own page and, on
  the same port through its own twisted.web ``Site``, an embedded agent's registry; a real
  ``skopeo copy`` pulls an image (pushed with skopeo into a cluster running in the test's
  reactor) through the application's port, manifest and blobs byte for byte, while the
  agent's own registry port stays closed;
- ``python docs/examples/tracker_klein.py``: a Klein application with the tracker's API
  under ``/tracker/``; with its port taken, it exits with status 1 and one line naming the
  port, not a traceback;
- ``python docs/examples/tracker_and_origin.py``: a tracker and an origin in one process
  (``react``); a blob uploaded to the origin gets its metainfo through the tracker.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

import tests
from kraken.clients.origin import OriginClient, OriginClusterClient, bytes_chunks
from kraken.core import Digest
from kraken.http.client import NO_RETRY, HTTPClientFactory, KrakenHTTPClient, read_body
from tests.external import require_program
from tests.oci import OCILayout, host_arch
from tests.peers.redisserver import free_port
from tests.system.clusters import Cluster, pull_and_compare, skopeo, until

#: The checkout holding ``kraken/`` and ``docs/examples/``.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))
EXAMPLES = os.path.join(CHECKOUT, "docs", "examples")
#: ``twistd``, run by this interpreter: what the ``twistd`` console script does.
TWISTD = "from twisted.scripts.twistd import run; run()"
REPO, TAG = "test/embedded", "v1"


def listen(port: int) -> str:
    """An endpoint string on 127.0.0.1."""
    return f"tcp:{port}:interface=127.0.0.1"


class Example(ProcessProtocol):
    """One example in a child process: its output, its exit status, a way to stop it."""

    def __init__(self, testcase: TestCase, root: str) -> None:
        self.testcase = testcase
        self.root = root
        self.output: list[bytes] = []
        self.status: int | None = None
        self.signal: int | None = None
        self.ended: Deferred[None] = Deferred()
        self.process: Any = None

    def outReceived(self, data: bytes) -> None:
        """Keep what it prints."""
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        """Keep the exit status (None when killed by a signal)."""
        self.status = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback(None)

    @property
    def log(self) -> str:
        """Everything it printed so far."""
        return b"".join(self.output).decode(errors="replace")

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Run ``python argv...``; killed at the end of the test if still running."""
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, environ.get("PYTHONPATH")]))
        environ.update(env or {})
        self.process = reactor.spawnProcess(  # type: ignore[attr-defined]
            self, sys.executable, [sys.executable, *argv], env=environ, path=self.root
        )
        self.testcase.addCleanup(self.kill)
        self.testcase.addCleanup(self.save)

    def save(self) -> None:
        """Keep the output beside the test's files."""
        with open(os.path.join(self.root, "example.log"), "w") as f:
            f.write(self.log)

    async def kill(self) -> None:
        """SIGKILL it if it still runs (a test that failed half-way)."""
        if self.status is None and not self.ended.called:
            try:
                self.process.signalProcess("KILL")
            except ProcessExitedAlready:
                return
            await self.ended

    async def exited(self, limit: float = 20) -> int | None:
        """Its exit status, once it has exited by itself (fails after ``limit`` s)."""
        await until(self.testcase, lambda: self.ended.called, "the example to exit", limit)
        return self.status

    async def terminate(self, *, twistd: bool = False) -> None:
        """SIGTERM, as a service manager stops it: it exits 0 and logs no traceback.

        ``twistd`` stops its application and then ends itself with the signal it got (so
        that its parent sees why it ended): its status is the signal, after the line that
        says the application has stopped.
        """
        self.process.signalProcess("TERM")
        status = await self.exited()
        if twistd:
            self.testcase.assertEqual(self.signal, signal.SIGTERM, self.log[-3000:])
            self.testcase.assertIn("Server Shut Down.", self.log)
        else:
            self.testcase.assertEqual(status, 0, self.log[-3000:])
        self.testcase.assertNotIn("Traceback", self.log)
        self.testcase.assertNotIn("Unhandled", self.log)


async def answer(client: KrakenHTTPClient, url: str) -> tuple[int, bytes] | None:
    """(status, body) of GET ``url``, None while nothing listens."""
    try:
        response = await client.get(url, ok=range(100, 600))
        return response.code, await read_body(response, 1 << 20)
    except Exception:
        return None


class ExampleTests(TestCase):
    """docs/examples/ run in child processes, stopped by SIGTERM."""

    timeout = 180

    def setUp(self) -> None:
        """A temporary root and an HTTP client without retries."""
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        http = HTTPClientFactory(reactor, timeout=5, retry=NO_RETRY)
        self.addCleanup(http.close)
        self.client = http.client()

    def write_yaml(self, name: str, config: dict[str, Any]) -> str:
        """Write ``config`` as ``name`` under the root; its path."""
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

    async def wait_for(self, example: Example, url: str, status: int = 200) -> bytes:
        """Wait until ``url`` answers ``status``; its body (fails if the example exits)."""
        body: list[bytes] = []

        async def check() -> bool:
            if example.ended.called:
                self.fail(f"the example exited:\n{example.log[-3000:]}")
            got = await answer(self.client, url)
            if got is not None and got[0] == status:
                body.append(got[1])
                return True
            return False

        await until(self, lambda: Deferred.fromCoroutine(check()), url, limit=60)
        return body[0]

    async def test_agent_tac_serves_skopeo_pull(self) -> None:
        """``twistd -ny agent_app.tac``: skopeo pulls an image through the application's
        own Site, which also serves the application's page; the agent's registry port is
        never opened; SIGTERM stops it cleanly."""
        program = require_program("skopeo")
        cluster = Cluster(os.path.join(self.root, "cluster"), proxy=True)
        self.addCleanup(cluster.stop)
        cluster.start()
        await cluster.ready(self)
        await self.wait_for_proxy(cluster)
        layout = OCILayout(os.path.join(self.root, "image"))
        image = layout.image(11, arch=host_arch(), layer_sizes=(50_000, 70_000))
        layout.tag(image, TAG)
        await skopeo(
            self,
            program,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.root}:{TAG}",
            f"docker://127.0.0.1:{cluster.proxy_port}/{REPO}:{TAG}",
        )

        registry_port, server_port, app_port = free_port(), free_port(), free_port()
        config = self.write_yaml(
            "agent.yaml",
            {
                "data_dir": os.path.join(self.root, "agent"),
                "registry": {"listen": listen(registry_port)},
                "server": {"listen": listen(server_port)},
                "peer": {"listen": listen(free_port())},
                "tracker": {"hosts": {"static": [cluster.tracker_address]}},
                "build_index": {"hosts": {"static": [cluster.address]}},
                "metainfo_poll": {"initial": 0.1, "maximum": 0.5},
            },
        )
        example = Example(self, self.root)
        example.start(
            ["-c", TWISTD, "-ny", os.path.join(EXAMPLES, "agent_app.tac")],
            {"KRAKEN_AGENT_CONFIG": config, "APP_LISTEN": listen(app_port)},
        )
        page = await self.wait_for(example, f"http://127.0.0.1:{app_port}/")
        self.assertEqual(page, b"hello from the host application\n")
        await self.wait_for(example, f"http://127.0.0.1:{server_port}/readiness")

        await pull_and_compare(self, program, app_port, f"{REPO}:{TAG}", layout, image["digest"])
        self.assertIsNone(await answer(self.client, f"http://127.0.0.1:{registry_port}/v2/"))
        await example.terminate(twistd=True)

    async def wait_for_proxy(self, cluster: Cluster) -> None:
        """The proxy's readiness: its origin health check has passed."""
        await until(
            self,
            lambda: Deferred.fromCoroutine(
                answer(self.client, f"http://127.0.0.1:{cluster.proxy_port}/readiness")
            ).addCallback(lambda got: got is not None and got[0] == 200),
            "proxy readiness",
        )

    def tracker_yaml(self, origin: str) -> tuple[str, int]:
        """A tracker configuration in front of ``origin``; (path, port)."""
        port = free_port()
        path = self.write_yaml(
            "tracker.yaml",
            {
                "data_dir": os.path.join(self.root, "tracker"),
                "server": {"listen": listen(port)},
                "origin": {"hosts": {"static": [origin]}, "healthcheck": {"interval": 0.2}},
            },
        )
        return path, port

    async def test_tracker_under_klein_prefix(self) -> None:
        """``tracker_klein.py``: the application's route at ``/``, the tracker's API under
        ``/tracker/`` (not at the root); SIGTERM stops it cleanly."""
        config, tracker_port = self.tracker_yaml(f"127.0.0.1:{free_port()}")
        port = free_port()
        example = Example(self, self.root)
        example.start(
            [
                os.path.join(EXAMPLES, "tracker_klein.py"),
                "--config",
                config,
                "--listen",
                listen(port),
            ]
        )
        base = f"http://127.0.0.1:{port}"
        page = await self.wait_for(example, f"{base}/")
        self.assertEqual(page, b"hello from the host application\n")
        await self.wait_for(example, f"{base}/tracker/health")
        metrics = await self.wait_for(example, f"{base}/tracker/metrics")
        self.assertIn(b"tracker_", metrics)
        self.assertEqual((await answer(self.client, f"{base}/health") or (0,))[0], 404)
        # The tracker's own port is mounted by the application: never opened.
        self.assertIsNone(await answer(self.client, f"http://127.0.0.1:{tracker_port}/health"))
        await example.terminate()

    async def test_tracker_klein_port_taken(self) -> None:
        """``tracker_klein.py`` on a taken port exits with status 1 and one line naming the
        port: a Deferred failure the application turned into an exit, no traceback."""
        config, _ = self.tracker_yaml(f"127.0.0.1:{free_port()}")
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        example = Example(self, self.root)
        example.start(
            [
                os.path.join(EXAMPLES, "tracker_klein.py"),
                "--config",
                config,
                "--listen",
                listen(port),
            ]
        )
        self.assertEqual(await example.exited(), 1, example.log[-3000:])
        self.assertIn(f"cannot listen on tcp:{port}", example.log)
        self.assertNotIn("Traceback", example.log)

    async def test_tracker_and_origin_in_one_process(self) -> None:
        """``tracker_and_origin.py``: a blob uploaded to the origin has its metainfo served
        by the tracker of the same process; SIGTERM stops both cleanly."""
        origin_port = free_port()
        origin = f"127.0.0.1:{origin_port}"
        origin_config = self.write_yaml(
            "origin.yaml",
            {
                "data_dir": os.path.join(self.root, "origin"),
                "server": {"listen": listen(origin_port)},
                "peer": {"listen": listen(free_port())},
                "cluster": {"static": [origin]},
            },
        )
        tracker_config, tracker_port = self.tracker_yaml(origin)
        example = Example(self, self.root)
        example.start(
            [
                os.path.join(EXAMPLES, "tracker_and_origin.py"),
                "--tracker-config",
                tracker_config,
                "--origin-config",
                origin_config,
            ]
        )
        await self.wait_for(example, f"http://{origin}/health")
        await self.wait_for(example, f"http://127.0.0.1:{tracker_port}/readiness")
        self.assertIn(
            f"origin on IPv4Address(type='TCP', host='127.0.0.1', port={origin_port})", example.log
        )

        data = os.urandom(300_000)
        digest = Digest.of_bytes(data)
        http = HTTPClientFactory(reactor, timeout=10)
        self.addCleanup(http.close)
        ring = OriginClusterClient(OriginClient(http.client(), reactor), lambda: [origin])
        await ring.upload_blob("embedded", digest, len(data), bytes_chunks(data))
        body = await self.wait_for(
            example,
            f"http://127.0.0.1:{tracker_port}/namespace/embedded/blobs/{digest}/metainfo",
        )
        metainfo = json.loads(body)
        self.assertEqual(metainfo["length"], len(data))
        self.assertEqual(metainfo["name"], digest.hex)
        await deferLater(reactor, 0)
        await example.terminate()
