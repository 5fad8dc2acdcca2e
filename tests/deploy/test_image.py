"""
The container image of ``deploy/Containerfile``, built with podman and run as the herd.

The image is built from this checkout on a base image made from Debian packages
(:mod:`tests.deploy.image`), started with its default command (the herd, with the proxy's
and the agent registry's ports published on 127.0.0.1), and then used as a newcomer would:
``skopeo copy`` pushes an image into the published proxy port and pulls it back out of the
published agent port, manifest and blobs byte for byte.  The test also checks what the
image promises: a non-root user, data under the volume, the health check passing.  The
times of the steps are printed (and kept in ``timings.txt`` beside the test's files).
"""

# Small files written by the test itself, in its coroutines.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import json
import os
import uuid

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from kraken.http.client import NO_RETRY, HTTPClientFactory
from tests.deploy.image import ImageBuild, podman, require_podman, ulimit_options
from tests.external import require_program
from tests.oci import OCILayout, host_arch
from tests.system.clusters import free_block, pull_and_compare, skopeo

REPO, TAG = "test/hello", "v1"


class ImageTests(TestCase):
    """``deploy/Containerfile`` builds, runs the herd, and serves a push and a pull."""

    # Base image from nothing (~1 min), wheels (~30 s), build (~40 s), run: minutes, not more.
    timeout = 900

    async def test_build_run_push_pull(self) -> None:
        """An image pushed into the container's proxy comes back out of its agent unchanged."""
        podman_path, debootstrap = require_podman()
        skopeo_path = require_program("skopeo")
        build = ImageBuild(self, podman_path, debootstrap)
        context = await deferToThread(build.prepare)
        tag = f"localhost/kraken-test:{uuid.uuid4().hex[:12]}"
        self.addCleanup(podman, self, podman_path, "rmi", "--force", tag, check=False)
        await build.build(context, tag)

        config = json.loads(await podman(self, podman_path, "image", "inspect", tag))[0]["Config"]
        self.assertEqual(config["User"], "10001:10001")
        self.assertIn("/var/lib/kraken", config["Volumes"])
        self.assertEqual(config["Entrypoint"], ["twistd", "--nodaemon", "--pidfile="])
        self.assertEqual(config["Cmd"][0], "kraken-herd")

        proxy, agent = free_block(1), free_block(1)
        name = f"kraken-test-{uuid.uuid4().hex[:12]}"
        started = reactor.seconds()
        await podman(
            self,
            podman_path,
            "run",
            "--detach",
            "--name",
            name,
            *ulimit_options(),
            "--publish",
            f"127.0.0.1:{proxy}:15000",
            "--publish",
            f"127.0.0.1:{agent}:16000",
            tag,
        )
        self.addCleanup(podman, self, podman_path, "rm", "--force", "--time=5", name, check=False)
        self.addCleanup(self.save_logs, podman_path, name)
        await self.wait_ready(podman_path, name, f"http://127.0.0.1:{proxy}/v2/")
        build.timings["herd ready in the container"] = reactor.seconds() - started

        layout = OCILayout(os.path.abspath(self.mktemp()))
        image = layout.image(11, arch=host_arch(), layer_sizes=(50_000, 70_000))
        layout.tag(image, TAG)
        started = reactor.seconds()
        await skopeo(
            self,
            skopeo_path,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.root}:{TAG}",
            f"docker://127.0.0.1:{proxy}/{REPO}:{TAG}",
        )
        await pull_and_compare(self, skopeo_path, agent, f"{REPO}:{TAG}", layout, image["digest"])
        build.timings["push and pull"] = reactor.seconds() - started

        # The health check (GET the agent's /health inside the container) passes, the
        # daemons run as the image's user, and their data is under the volume.
        await podman(self, podman_path, "healthcheck", "run", name)
        uid = await podman(self, podman_path, "exec", name, "id", "-u")
        self.assertEqual(uid.strip(), "10001")
        listing = await podman(self, podman_path, "exec", name, "ls", "/var/lib/kraken/kraken-data")
        self.assertEqual(
            set(listing.split()) & {"agent", "origin", "backend"}, {"agent", "origin", "backend"}
        )
        self.report(build.timings)

    async def wait_ready(self, podman_path: str, name: str, url: str, limit: float = 90) -> None:
        """Wait until ``url`` (a published port) answers 200; fail if the container stops."""
        http = HTTPClientFactory(reactor, timeout=2)
        self.addCleanup(http.close)
        client = http.client(retry=NO_RETRY)
        deadline = reactor.seconds() + limit
        while reactor.seconds() < deadline:
            state = await podman(
                self, podman_path, "inspect", "--format", "{{.State.Running}}", name
            )
            if state.strip() != "true":
                out, err, _ = await _output(podman_path, "logs", name)
                self.fail(f"the container stopped:\n{(out + err).decode()[-4000:]}")
            try:
                response = await client.get(url, ok=(200, 503))
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass  # not listening yet
            await deferLater(reactor, 0.2)
        self.fail(f"{url} did not answer 200 within {limit} s")

    async def save_logs(self, podman_path: str, name: str) -> None:
        """The container's output, kept in ``container.log`` beside the test's files."""
        out, err, _ = await _output(podman_path, "logs", name)
        with open(os.path.abspath("container.log"), "wb") as f:
            f.write(out + err)

    def report(self, timings: dict[str, float]) -> None:
        """Print the step times and keep them in ``timings.txt``."""
        lines = [f"{step}: {seconds:.1f} s" for step, seconds in timings.items()]
        with open(os.path.abspath("timings.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\nimage test timings: " + "; ".join(lines))


async def _output(program: str, *args: str) -> tuple[bytes, bytes, int]:
    """``program <args>``: stdout, stderr and exit status, whatever the status."""
    out, err, code = await getProcessOutputAndValue(program, list(args), env=dict(os.environ))
    return bytes(out), bytes(err), int(code)
