"""
The herd with ``--tls`` on free ports in this reactor: mutual TLS end to end, with skopeo.

- skopeo pushes into the proxy's TLS registry port, verifying the proxy's certificate against
  the herd's development CA (``--dest-cert-dir``), and pulls the image back out of the agent's
  plain-HTTP registry port with the same digests;
- by default the proxy requires a client certificate for pushes: a push without one fails with
  a registry ``DENIED`` 403 that skopeo reports, the same push with ``<data>/tls/skopeo``
  succeeds, and reads stay open; a proxy configured not to require one takes anonymous pushes;
- the tracker, the origin and the build-index refuse plain HTTP, and a blob uploaded to the
  origin with the client certificate reaches the agent (announce, metainfo and tag calls all
  over TLS);
- the banner tells skopeo to use ``--dest-cert-dir <data>/tls/skopeo``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.clients.origin import OriginClient, bytes_chunks
from kraken.config.sections import TLSConfig
from kraken.core import Digest
from kraken.http.client import (
    NO_RETRY,
    HTTPClientFactory,
    HTTPStatusError,
    KrakenHTTPClient,
    NetworkError,
    read_body,
)
from kraken.services.herd import HerdService, build_herd, herd_plan
from kraken.tls import ClusterTLS
from tests.external import require_program
from tests.oci import tagged_image
from tests.services.test_herd import _maybe_async
from tests.system.clusters import free_block


def _blobs(layout: str) -> set[str]:
    """The sha256 hex digests of the blobs of an OCI image layout."""
    return set(os.listdir(os.path.join(layout, "blobs", "sha256")))


class TLSHerdTests(TestCase):
    """A whole ``--tls`` herd in this reactor on free ports."""

    timeout = 120

    def start(self, user: dict[str, Any] | None = None) -> HerdService:
        """Build and start a ``--tls`` herd on free ports; stopped at cleanup."""
        self.base, self.agent_base = free_block(5), free_block(3)
        self.data = os.path.abspath(self.mktemp())
        plan = herd_plan(
            data=self.data,
            base_port=self.base,
            agent_base_port=self.agent_base,
            user={"tracker": {"announce_interval": "500ms"}, **(user or {})},
            tls=True,
        )
        self.plan = plan
        herd = build_herd(plan, reactor)
        herd.startService()
        self.addCleanup(herd.stopService)
        self.addCleanup(lambda: deferLater(reactor, 0.3))
        return herd

    async def until_ready(self, herd: HerdService) -> None:
        """Wait (50 ms steps, 30 s at most) until the proxy and tracker see the origin."""
        proxy: Any = herd.members["proxy"]
        tracker: Any = herd.members["tracker"]
        checks: list[Any] = [proxy.origins.usable, tracker.api.origins.ready]
        for check in checks:
            for _ in range(600):
                if await ensureDeferred(_maybe_async(check())):
                    break
                await deferLater(reactor, 0.05)
            else:
                self.fail(f"timed out waiting for {check}")

    def client(self, name: str | None) -> KrakenHTTPClient:
        """A one-attempt HTTP client: plain (``""``), TLS anonymous (None) or with a certificate."""
        tls_dir = os.path.join(self.data, "tls")
        policy = None
        if name is None:
            policy = ClusterTLS.from_config(TLSConfig(ca=f"{tls_dir}/ca.pem")).client_policy()
        elif name:
            cert, key = f"{tls_dir}/{name}.pem", f"{tls_dir}/{name}-key.pem"
            config = TLSConfig(ca=f"{tls_dir}/ca.pem", client_cert=cert, client_key=key)
            policy = ClusterTLS.from_config(config).client_policy()
        factory = HTTPClientFactory(reactor, tls=policy, timeout=20, retry=NO_RETRY)
        self.addCleanup(factory.close)
        return factory.client()

    def path(self) -> str:
        """A fresh absolute temporary path."""
        return os.path.abspath(str(self.mktemp()))

    def image(self) -> str:
        """A fresh two-layer OCI image layout tagged v1; its path."""
        source = self.path()
        tagged_image(source, "v1")
        return source

    def ca_only_dir(self) -> str:
        """A skopeo certificate directory with the herd's CA and no client certificate."""
        path = self.path()
        os.makedirs(path)
        shutil.copy(os.path.join(self.data, "tls", "skopeo", "ca.crt"), path)
        return path

    async def skopeo(self, *args: str) -> tuple[int, str]:
        """Run skopeo; its exit status and output."""
        skopeo = require_program("skopeo")
        stdout, stderr, code = await getProcessOutputAndValue(
            skopeo, list(args), env=dict(os.environ)
        )
        return code, (stdout + stderr).decode("utf-8", "replace")

    async def push(self, source: str, cert_dir: str) -> tuple[int, str]:
        """``skopeo copy`` the image into the proxy over verified TLS."""
        return await self.skopeo(
            "copy",
            "--dest-cert-dir",
            cert_dir,
            f"oci:{source}:v1",
            f"docker://127.0.0.1:{self.base}/herd/app:v1",
        )

    async def pull_and_compare(self, source: str) -> None:
        """Pull the image from the agent's plain-HTTP registry; the blobs are the ones pushed."""
        out = self.path()
        code, output = await self.skopeo(
            "copy",
            "--src-tls-verify=false",
            f"docker://127.0.0.1:{self.agent_base}/herd/app:v1",
            f"oci:{out}:v1",
        )
        self.assertEqual(code, 0, output)
        self.assertEqual(_blobs(out), _blobs(source))

    async def test_verified_push_without_client_certificate(self) -> None:
        """Proxy configured not to require one: a push verifying the proxy, no client cert.

        The image comes back out of the agent with the same manifest, config and layer
        digests.  A push without the CA (the system roots only) is refused by skopeo, which
        shows that the proxy's certificate really was checked.
        """
        require_program("skopeo")
        herd = self.start({"proxy": {"tls": {"require_client_cert_for_writes": False}}})
        await self.until_ready(herd)
        source = self.image()
        empty = self.ca_only_dir()
        os.unlink(os.path.join(empty, "ca.crt"))
        code, output = await self.push(source, empty)
        self.assertNotEqual(code, 0, output)
        self.assertIn("certificate", output)
        code, output = await self.push(source, self.ca_only_dir())
        self.assertEqual(code, 0, output)
        await self.pull_and_compare(source)

    async def test_push_needs_client_certificate_by_default(self) -> None:
        """Default ``--tls`` herd: no client certificate -> 403 DENIED; with the cert dir -> works.

        Issue 18: the proxy accepted anonymous pushes and wrote them with its own
        certificate.  The refusal is a registry error (JSON ``DENIED``) that skopeo
        reports; reads stay open; ``<data>/tls/skopeo`` (written by the herd) holds the CA
        and the ``client`` pair, and a push with it goes through.
        """
        require_program("skopeo")
        herd = self.start()
        await self.until_ready(herd)
        proxy = f"http://127.0.0.1:{self.base}"
        anonymous = self.client(None)
        with self.assertRaises(HTTPStatusError) as raised:
            await anonymous.post(f"{proxy}/v2/herd/app/blobs/uploads/")
        self.assertEqual(raised.exception.status, 403)
        error = json.loads(raised.exception.body)["errors"][0]
        self.assertEqual(error["code"], "DENIED")
        response = await anonymous.get(f"{proxy}/v2/")
        await read_body(response, 4096)
        source = self.image()
        code, output = await self.push(source, self.ca_only_dir())
        self.assertNotEqual(code, 0, output)
        self.assertIn("denied: writes to this server need a client certificate", output)
        cert_dir = os.path.join(self.data, "tls", "skopeo")
        self.assertEqual(self.plan.cert_dir, cert_dir)
        self.assertEqual(sorted(os.listdir(cert_dir)), ["ca.crt", "client.cert", "client.key"])
        code, output = await self.push(source, cert_dir)
        self.assertEqual(code, 0, output)
        await self.pull_and_compare(source)

    async def test_central_components_speak_tls(self) -> None:
        """Plain HTTP to tracker, origin and build-index fails; over TLS a blob reaches the agent.

        The blob is uploaded to the origin with the ``client`` certificate (anonymously: 403);
        the agent then announces to the tracker, which fetches the metainfo from the origin,
        both over TLS, and the agent serves the blob's bytes.
        """
        herd = self.start()
        await self.until_ready(herd)
        plain, anonymous, certified = self.client(""), self.client(None), self.client("client")
        origin = f"127.0.0.1:{self.base + 2}"
        tracker = f"127.0.0.1:{self.base + 3}"
        build_index = f"127.0.0.1:{self.base + 4}"
        for host in (origin, tracker, build_index):
            with self.assertRaises(NetworkError, msg=host):
                await plain.get(f"http://{host}/health")
            response = await anonymous.get(f"http://{host}/health")
            await read_body(response, 4096)
        data = random.Random(9).randbytes(300_000)
        digest = Digest.of_bytes(data)
        with self.assertRaises(HTTPStatusError) as raised:
            await OriginClient(anonymous, reactor).upload(
                origin, "herd/app", digest, len(data), bytes_chunks(data)
            )
        self.assertEqual(raised.exception.status, 403)
        await OriginClient(certified, reactor).upload(
            origin, "herd/app", digest, len(data), bytes_chunks(data)
        )
        metainfo = await anonymous.get(
            f"http://{tracker}/namespace/herd%2Fapp/blobs/{digest}/metainfo"
        )
        self.assertIn(digest.hex.encode(), await read_body(metainfo, 1 << 20))
        agent = f"http://127.0.0.1:{self.agent_base + 2}"
        response = await plain.get(f"{agent}/namespace/herd%2Fapp/blobs/{digest}")
        self.assertEqual(await read_body(response, 1 << 20), data)

    def test_banner(self) -> None:
        """With --tls the banner's push line verifies the proxy with <data>/tls/skopeo."""
        herd = build_herd(herd_plan(data=os.path.abspath(self.mktemp()), tls=True), reactor)
        push = next(line for line in herd.banner if line.startswith("push:"))
        self.assertIn(f"--dest-cert-dir {herd.plan.cert_dir}", push)
        self.assertNotIn("tls-verify=false", push)
        plain = build_herd(herd_plan(data=os.path.abspath(self.mktemp())), reactor)
        push = next(line for line in plain.banner if line.startswith("push:"))
        self.assertIn("--dest-tls-verify=false", push)


class CLITests(SynchronousTestCase):
    """``kraken herd --tls`` runs ``twistd -n kraken-herd --tls``."""

    def test_forwards_tls(self) -> None:
        """--tls is passed on to the kraken-herd options (and is absent without it)."""
        import sys

        from twisted.scripts import twistd

        from kraken.cli import main

        seen: list[list[str]] = []
        self.patch(sys, "argv", ["kraken"])
        self.patch(twistd, "run", lambda: seen.append(list(sys.argv)))
        main(["herd", "--tls", "--data", "/tmp/d"])
        main(["herd"])
        self.assertEqual(
            seen,
            [
                ["twistd", "--nodaemon", "--pidfile=", "kraken-herd", "--data=/tmp/d", "--tls"],
                ["twistd", "--nodaemon", "--pidfile=", "kraken-herd"],
            ],
        )
