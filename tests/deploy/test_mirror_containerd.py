"""
``kraken mirror containerd`` against a real containerd: its files alone make pulls go
through the agent.

The herd runs as in README (``twistd -n kraken-herd``, moved to free ports), skopeo pushes a
two-layer image into its proxy, and a real containerd (:mod:`tests.system.containerd`) pulls
with ``ctr images pull --hosts-dir``: first with no hosts.toml at all (the pull fails: the
registry name does not exist), then with only the files ``kraken mirror containerd`` wrote,
once for a named ``--registry`` and once as ``_default``.
"""

# Temporary directories of the test itself, made in its coroutine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import os
import shutil

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.deploy.test_mirror import run_cli
from tests.external import require_program
from tests.oci import OCILayout, host_arch
from tests.system.clusters import skopeo
from tests.system.containerd import SNAPSHOTTER, require_containerd, start_containerd
from tests.system.test_herd_clients import HerdProcess

REPO, TAG = "test/hello", "v1"


class MirrorContainerdTests(TestCase):
    """containerd pulls through the agent with the hosts.toml files the command writes."""

    timeout = 180

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        """Start the herd (containerd's and skopeo's presence is checked first)."""
        require_containerd()
        self.skopeo = require_program("skopeo")
        self.herd = HerdProcess(self)
        return Deferred.fromCoroutine(self.herd.start())

    async def test_pull_through_written_hosts(self) -> None:
        """No file: the pull fails; ``--registry`` or ``_default`` file: it pulls and unpacks."""
        layout = OCILayout(os.path.abspath(self.mktemp()))
        image = layout.image(3, arch=host_arch(), layer_sizes=(20_000, 30_000))
        layout.tag(image, TAG)
        await skopeo(
            self,
            self.skopeo,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.root}:{TAG}",
            f"docker://{self.herd.proxy}/{REPO}:{TAG}",
        )
        ctd = await start_containerd(self, self.herd.agent)
        # The harness writes its own _default/hosts.toml: take it away, so that only the
        # command's files are there.
        shutil.rmtree(ctd.hosts_dir)
        os.makedirs(ctd.hosts_dir)

        out, err, code = await getProcessOutputAndValue(
            ctd.ctr,
            [
                "--address",
                ctd.socket,
                "--namespace",
                "none",
                "images",
                "pull",
                "--hosts-dir",
                ctd.hosts_dir,
                "--snapshotter",
                SNAPSHOTTER,
                f"registry.invalid/{REPO}:{TAG}",
            ],
            env=dict(os.environ),
        )
        self.assertNotEqual(code, 0, (out + err).decode())

        rc, _, stderr = run_cli(
            "mirror",
            "containerd",
            "--dir",
            ctd.hosts_dir,
            "--agent",
            self.herd.agent,
            "--registry",
            "registry.invalid",
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(os.listdir(ctd.hosts_dir), ["registry.invalid"])
        await ctd.pull(self, "named", f"registry.invalid/{REPO}:{TAG}")
        self.assertEqual(await ctd.committed_snapshots(self, "named"), 2)

        shutil.rmtree(ctd.hosts_dir)
        rc, _, stderr = run_cli(
            "mirror", "containerd", "--dir", ctd.hosts_dir, "--agent", self.herd.agent
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(os.listdir(ctd.hosts_dir), ["_default"])
        await ctd.pull(self, "default", f"other.invalid/{REPO}:{TAG}")
        self.assertEqual(await ctd.committed_snapshots(self, "default"), 2)
