"""
``kraken mirror docker`` against a real dockerd: the daemon.json it writes makes Docker Hub
pulls go through the agent.

The herd runs as in README (``twistd -n kraken-herd``, moved to free ports); skopeo pushes an
image into its proxy as ``library/kraken-hello:v1``, the repository ``docker pull
kraken-hello:v1`` asks Docker Hub's mirrors for.  A dockerd of the test's own (data, exec
root and socket under a temporary directory; no bridge, no iptables rules) starts with an
empty ``daemon.json``: the pull fails (Docker Hub is unreachable).  Then ``kraken mirror docker
--file`` adds the agent to that file, SIGHUP makes dockerd reload it (``registry-mirrors``
is reloadable), and the same pull succeeds: the image's ID is its config's digest.
"""

# Files and directories of the test itself, made in its coroutine.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.deploy.test_mirror import run_cli
from tests.external import require_program, require_root
from tests.oci import OCILayout, host_arch
from tests.system.clusters import skopeo
from tests.system.containerd import ProcessExit, stop_process
from tests.system.test_herd_clients import HerdProcess

REPO, TAG = "library/kraken-hello", "v1"


class MirrorDockerTests(TestCase):
    """dockerd pulls Docker Hub images through the agent once daemon.json names it."""

    timeout = 180

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        """Start the herd (dockerd's and skopeo's presence is checked first)."""
        require_root()
        self.dockerd = require_program("dockerd")
        self.docker = require_program("docker")
        self.skopeo = require_program("skopeo")
        self.herd = HerdProcess(self)
        return Deferred.fromCoroutine(self.herd.start())

    async def docker_cli(self, socket: str, *args: str) -> tuple[int, str]:
        """``docker -H unix://<socket> <args>``: exit status and output."""
        out, err, code = await getProcessOutputAndValue(
            self.docker, ["-H", f"unix://{socket}", *args], env=dict(os.environ)
        )
        return code, (out + err).decode()

    async def start_dockerd(self, config: str) -> tuple[str, object, ProcessExit]:
        """A dockerd reading ``config``, all its state in a short /tmp directory."""
        base = tempfile.mkdtemp(prefix="kraken-dockerd-", dir="/tmp")
        socket = os.path.join(base, "docker.sock")
        protocol = ProcessExit(keep=True)
        process = reactor.spawnProcess(
            protocol,
            self.dockerd,
            [
                self.dockerd,
                "--config-file",
                config,
                "--data-root",
                os.path.join(base, "root"),
                "--exec-root",
                os.path.join(base, "exec"),
                "--pidfile",
                os.path.join(base, "docker.pid"),
                "--host",
                f"unix://{socket}",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ],
            env=dict(os.environ),
        )

        def remove() -> None:
            # dockerd leaves its overlay mounts behind only if it was killed; umount them.
            for root, _, _ in os.walk(os.path.join(base, "root"), topdown=False):
                if os.path.ismount(root):
                    subprocess.run(["umount", "-l", root], check=False)
            shutil.rmtree(base, ignore_errors=True)

        self.addCleanup(remove)
        self.addCleanup(lambda: ensureDeferred(stop_process(self, process, protocol, "dockerd")))
        for _ in range(300):
            if protocol.exited:
                self.fail(f"dockerd exited at start:\n{protocol.tail()}")
            if os.path.exists(socket) and (await self.docker_cli(socket, "info"))[0] == 0:
                return socket, process, protocol
            await deferLater(reactor, 0.1)
        self.fail(f"dockerd did not answer:\n{protocol.tail()}")

    async def test_pull_through_written_daemon_json(self) -> None:
        """Empty daemon.json: the pull fails; after ``kraken mirror docker``: it succeeds."""
        layout = OCILayout(os.path.abspath(self.mktemp()))
        image = layout.image(5, arch=host_arch(), layer_sizes=(20_000, 30_000))
        layout.tag(image, TAG)
        config_digest = json.loads(layout.read(image))["config"]["digest"]
        await skopeo(
            self,
            self.skopeo,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.root}:{TAG}",
            f"docker://{self.herd.proxy}/{REPO}:{TAG}",
        )
        daemon_json = os.path.abspath(self.mktemp())
        with open(daemon_json, "w") as f:
            f.write("{}\n")
        socket, process, _ = await self.start_dockerd(daemon_json)

        code, output = await self.docker_cli(socket, "pull", f"kraken-hello:{TAG}")
        self.assertNotEqual(code, 0, output)

        rc, _, stderr = run_cli(
            "mirror", "docker", "--file", daemon_json, "--agent", self.herd.agent
        )
        self.assertEqual(rc, 0, stderr)
        process.signalProcess("HUP")  # type: ignore[attr-defined]
        for _ in range(100):
            _, info = await self.docker_cli(
                socket, "info", "--format", "{{json .RegistryConfig.Mirrors}}"
            )
            if self.herd.agent in info:
                break
            await deferLater(reactor, 0.1)
        self.assertIn(f"http://{self.herd.agent}/", info)

        code, output = await self.docker_cli(socket, "pull", f"kraken-hello:{TAG}")
        self.assertEqual(code, 0, output)
        code, image_id = await self.docker_cli(
            socket, "image", "inspect", "--format", "{{.Id}}", f"kraken-hello:{TAG}"
        )
        self.assertEqual((code, image_id.strip()), (0, config_digest))
