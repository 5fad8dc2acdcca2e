"""
The OCI distribution spec surfaces of a real herd (``twistd -n kraken-herd``) with real clients.

- ``skopeo inspect`` (which lists the repository's tags) and ``skopeo list-tags`` through
  the proxy and through the agent;
- ``skopeo delete`` through the proxy (deletes are on in the herd): the tag is gone from the
  proxy and, once its tag cache expires, from the agent;
- the ``oras`` Python SDK, an independent client, pushes an artifact whose ``subject`` is
  the pushed image; the proxy answers with ``OCI-Subject``, and the referrers of the image,
  asked of the proxy and of the agent, list the artifact (and filter by ``artifactType``);
  the fallback schema's tag ``sha256-<hex>`` serves the same index;
- the Debian ``docker-registry`` (distribution), configured to notify the proxy, takes a
  ``skopeo copy``; its real notification makes the herd's origin (whose backend is that
  registry) fetch the image's layers into its cache before anyone pulls them.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from kraken.http.client import NO_RETRY, HTTPClientFactory, KrakenHTTPClient
from tests.backends.servers import DockerRegistry
from tests.external import missing, require_program
from tests.oci import OCILayout, host_arch
from tests.system.clusters import skopeo, until
from tests.system.test_herd_clients import HerdProcess

REPO, TAG = "test/spec", "v1"


class DistributionSpecTests(TestCase):
    """Spec behaviour of the herd's proxy and agent, proved with skopeo and oras."""

    timeout = 180

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        """Start the herd, an HTTP client, and write a one-layer OCI image to push."""
        self.skopeo = require_program("skopeo")
        self.layout = OCILayout(os.path.abspath(self.mktemp()))
        self.image = self.layout.image(11, arch=host_arch(), layer_sizes=(20_000,))
        self.layout.tag(self.image, TAG)
        self.herd = HerdProcess(self)
        http = HTTPClientFactory(reactor, timeout=10)
        self.addCleanup(http.close)
        self.http: KrakenHTTPClient = http.client(retry=NO_RETRY)
        return Deferred.fromCoroutine(self.herd.start())

    async def push(self) -> None:
        """skopeo pushes the image into the proxy."""
        await skopeo(
            self,
            self.skopeo,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{self.layout.root}:{TAG}",
            f"docker://{self.herd.proxy}/{REPO}:{TAG}",
        )

    def signature_file(self) -> str:
        """A small file to push as an artifact; its path."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        path = os.path.join(root, "signature.txt")
        with open(path, "wb") as f:
            f.write(b"not really a signature\n")
        return path

    async def get_json(self, url: str) -> tuple[Any, Any]:
        """GET ``url``: the response and its JSON body."""
        response = await self.http.get(url, ok=(200,))
        return response, json.loads(await response.content())

    async def test_skopeo_inspect_and_list_tags(self) -> None:
        """``skopeo inspect`` (tags included) and ``list-tags`` work through proxy and agent."""
        await self.push()
        for registry in (self.herd.proxy, self.herd.agent):
            source = f"docker://{registry}/{REPO}:{TAG}"
            out = await skopeo(self, self.skopeo, "inspect", "--tls-verify=false", source)
            doc = json.loads(out)
            self.assertEqual(doc["Digest"], self.image["digest"], registry)
            self.assertEqual(doc["RepoTags"], [TAG], registry)
            out = await skopeo(
                self, self.skopeo, "list-tags", "--tls-verify=false", f"docker://{registry}/{REPO}"
            )
            self.assertEqual(json.loads(out)["Tags"], [TAG], registry)

    async def test_skopeo_delete(self) -> None:
        """``skopeo delete`` through the proxy removes the tag everywhere it was listed."""
        await self.push()
        await skopeo(
            self,
            self.skopeo,
            "delete",
            "--tls-verify=false",
            f"docker://{self.herd.proxy}/{REPO}:{TAG}",
        )
        for registry in (self.herd.proxy, self.herd.agent):
            url = f"http://{registry}/v2/{REPO}/manifests/{TAG}"

            async def gone(url: str = url) -> bool:
                response = await self.http.get(url, ok=(200, 404))
                await response.content()
                return bool(response.code == 404)

            await until(self, lambda: Deferred.fromCoroutine(gone()), f"{url} to be 404", limit=20)
            out, err, code = await getProcessOutputAndValue(
                self.skopeo,
                ["inspect", "--tls-verify=false", f"docker://{registry}/{REPO}:{TAG}"],
                env=dict(os.environ),
            )
            self.assertNotEqual(code, 0, out)
            self.assertIn(b"manifest unknown", err.lower())

    async def test_oras_referrers(self) -> None:
        """An artifact oras pushes with a subject is listed by the referrers API of the proxy
        and of the agent, filtered by artifactType, and under the fallback tag."""
        try:
            import oras.oci
            import oras.provider
        except ImportError:
            missing("the oras package (pip install oras)")
        await self.push()
        manifest = self.layout.read(self.image)
        path = self.signature_file()

        def push_artifact() -> Any:
            client = oras.provider.Registry(hostname=self.herd.proxy, insecure=True)
            subject = oras.oci.Subject(self.image["mediaType"], self.image["digest"], len(manifest))
            return client.push(
                target=f"{self.herd.proxy}/{REPO}:signature",
                files=[f"{path}:text/plain"],
                disable_path_validation=True,
                manifest_annotations={"org.example.kind": "signature"},
                subject=subject,
                quiet=True,
            )

        response = await deferToThread(push_artifact)
        self.assertEqual(response.status_code, 201, response.text)
        self.assertEqual(response.headers.get("OCI-Subject"), self.image["digest"])
        pushed_digest = response.headers["Docker-Content-Digest"]
        for registry in (self.herd.proxy, self.herd.agent):
            base = f"http://{registry}/v2/{REPO}/referrers/{self.image['digest']}"
            response, index = await self.get_json(base)
            self.assertEqual([m["digest"] for m in index["manifests"]], [pushed_digest], registry)
            found = index["manifests"][0]
            self.assertEqual(found["annotations"]["org.example.kind"], "signature")
            artifact_type = found["artifactType"]
            query = urlencode({"artifactType": artifact_type})
            response, index = await self.get_json(f"{base}?{query}")
            self.assertEqual(len(index["manifests"]), 1, registry)
            self.assertEqual(
                response.headers.getRawHeaders("OCI-Filters-Applied"), ["artifactType"]
            )
            _, index = await self.get_json(f"{base}?artifactType=application/none")
            self.assertEqual(index["manifests"], [], registry)
            fallback = f"sha256-{self.image['digest'].split(':')[1]}"
            _, index = await self.get_json(f"http://{registry}/v2/{REPO}/manifests/{fallback}")
            self.assertEqual([m["digest"] for m in index["manifests"]], [pushed_digest])


class PreheatTests(TestCase):
    """A real registry's push notifications preheat the herd's origin."""

    timeout = 180

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        """A docker-registry notifying the herd's proxy; the herd's origin reads from it."""
        self.skopeo = require_program("skopeo")
        self.herd = HerdProcess(self)
        self.registry = DockerRegistry(
            auth="notifications:\n"
            "  endpoints:\n"
            "    - name: kraken\n"
            f"      url: http://{self.herd.proxy}/registry/notifications\n"
            "      timeout: 2s\n"
            "      threshold: 10\n"
            "      backoff: 1s\n"
        )
        self.addCleanup(self.registry.process.stop)
        config = os.path.join(self.herd.root, "herd.yaml")
        backend = {"registry": {"address": self.registry.url}}
        with open(config, "w") as f:
            json.dump({"origin": {"backends": [{"namespace": ".*", "backend": backend}]}}, f)
        self.herd.args = ["--config", config]
        self.layout = OCILayout(os.path.abspath(self.mktemp()))
        self.image = self.layout.image(13, arch=host_arch(), layer_sizes=(30_000, 10_000))
        self.layout.tag(self.image, TAG)
        return Deferred.fromCoroutine(self.herd.start())

    def cached(self, digest: str) -> bool:
        """Whether the herd's origin has ``digest`` in its cache."""
        hex_ = digest.split(":")[1]
        for parent, dirs, _ in os.walk(os.path.join(self.herd.data, "origin")):
            if parent.endswith(os.path.join("cache", hex_[:2], hex_[2:4])) and hex_ in dirs:
                return True
        return False

    async def test_registry_notification_preheats_the_origin(self) -> None:
        """docker-registry notifies the proxy of a push; the origin caches every layer."""
        layers = [m["digest"] for m in json.loads(self.layout.read(self.image))["layers"]]
        self.assertFalse(any(self.cached(d) for d in layers))
        await skopeo(
            self,
            self.skopeo,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{self.layout.root}:{TAG}",
            f"docker://{self.registry.address}/{REPO}:{TAG}",
        )
        await until(self, lambda: all(self.cached(d) for d in layers), "preheated layers", limit=60)
