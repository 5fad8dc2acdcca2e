"""
Push to cluster A's proxy, pull from cluster B's agent: cross-cluster replication end to end.

Two whole clusters run in this reactor on 127.0.0.1 (free ports), built by
:class:`tests.system.clusters.Cluster` from the daemons' build functions:

- A: origin, tracker, build-index replicating every tag (``.*``) to B's build-index, proxy;
- B: origin, tracker, build-index, agent.

``skopeo copy oci:... docker://<proxy A>/...`` pushes a 2-layer image; once B's build-index
answers the tag (polled, bounded), ``skopeo copy`` out of B's agent gives the same manifest
digest and the same blob bytes.  With B's build-index stopped during the push, A's replication
task retries until a new build-index is started on the same port and data directory; then the
image arrives and B's agent serves it.  A tag ``skopeo delete`` removes through A's proxy leaves
B too, and an artifact the ``oras`` SDK pushes to A with a subject is listed by the referrers
API of B's agent.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from kraken.api.distribution import OCI_IMAGE_MANIFEST
from kraken.clients.buildindex import (
    BuildIndexClient,
    BuildIndexUnavailable,
    TagNotFound,
)
from kraken.http.client import collect_body
from tests.external import missing, require_program
from tests.oci import OCILayout
from tests.system.clusters import (
    Cluster,
    new_layout,
    pull_and_compare,
    replicating_clusters,
    skopeo,
    until,
)

REPO = "test/replicated"


class ReplicationTests(TestCase):
    """Cluster A (with a proxy) replicates ``.*`` to cluster B (with an agent)."""

    timeout = 180

    def setUp(self) -> None:
        """Both clusters started, B's first (A's rules name B's build-index address)."""
        self.skopeo = require_program("skopeo")
        self.a, self.b, self.client = replicating_clusters(self, agent=True)

    async def get(self, url: str) -> tuple[int, bytes]:
        """GET ``url``: (status, body)."""
        response = await self.client.get(url)
        chunks: list[bytes] = []
        await collect_body(response, chunks.append)
        return response.code, b"".join(chunks)

    async def ready(self) -> None:
        """Both clusters' origins and trackers healthy, and proxy A's /readiness 200."""
        await self.a.ready(self)
        await self.b.ready(self)

        async def proxy_ready() -> bool:
            code, _ = await self.get(f"http://127.0.0.1:{self.a.proxy_port}/readiness")
            return code == 200

        await until(self, lambda: ensureDeferred(proxy_ready()), "proxy A's readiness")

    async def push(self, seed: int, tag: str) -> tuple[OCILayout, str]:
        """``skopeo copy`` of a new 2-layer image into proxy A as ``REPO:tag``; (layout, digest)."""
        layout = new_layout(self)
        descriptor = layout.image(seed)
        layout.tag(descriptor, "t")
        await skopeo(
            self,
            self.skopeo,
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.root}:t",
            f"docker://127.0.0.1:{self.a.proxy_port}/{REPO}:{tag}",
        )
        return layout, str(descriptor["digest"])

    async def tag_in(self, cluster: Cluster, tag: str) -> str | None:
        """The digest ``cluster``'s build-index answers for ``REPO:tag`` (None: unknown/down)."""
        index = BuildIndexClient.for_host(self.client, cluster.address, reactor)
        try:
            return str(await index.get_tag(f"{REPO}:{tag}"))
        except (TagNotFound, BuildIndexUnavailable):
            return None

    async def arrives_in_b(self, tag: str, digest: str) -> None:
        """Poll B's build-index (bounded) until it answers ``digest`` for ``REPO:tag``."""

        async def there() -> bool:
            return await self.tag_in(self.b, tag) == digest

        await until(self, lambda: ensureDeferred(there()), f"{REPO}:{tag} in B", limit=60)

    def test_push_to_a_pull_from_b(self) -> Deferred[None]:
        """An image pushed to A's proxy is served by B's agent with identical digest and bytes."""

        async def run() -> None:
            await self.ready()
            layout, digest = await self.push(1, "v1")
            self.assertEqual(await self.tag_in(self.a, "v1"), digest)
            await self.arrives_in_b("v1", digest)
            await pull_and_compare(
                self, self.skopeo, self.b.registry_port, f"{REPO}:v1", layout, digest
            )
            code, body = await self.get(f"http://127.0.0.1:{self.a.proxy_port}/metrics")
            self.assertEqual(code, 200)
            self.assertIn(b'kraken_proxy_manifest_puts_total{reference="tag"} 1.0', body)
            self.assertIn(b'kraken_proxy_blob_pushes_total{kind="upload"} 3.0', body)

        return ensureDeferred(run())

    def test_deleted_tag_leaves_the_remote(self) -> Deferred[None]:
        """``skopeo delete`` through A's proxy removes the tag from A and then from B."""

        async def run() -> None:
            await self.ready()
            _, digest = await self.push(3, "v3")
            await self.arrives_in_b("v3", digest)
            await skopeo(
                self,
                self.skopeo,
                "delete",
                "--tls-verify=false",
                f"docker://127.0.0.1:{self.a.proxy_port}/{REPO}:v3",
            )
            self.assertIsNone(await self.tag_in(self.a, "v3"))

            async def gone() -> bool:
                return await self.tag_in(self.b, "v3") is None

            await until(self, lambda: ensureDeferred(gone()), "the tag to leave B")

        return ensureDeferred(run())

    def artifact_file(self) -> str:
        """A small file for oras to push; its path."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        path = os.path.join(root, "sbom.json")
        with open(path, "w") as f:
            f.write('{"sbom": true}\n')
        return path

    def test_referrers_reach_the_remote(self) -> Deferred[None]:
        """An artifact oras pushes to A with a subject is listed by B's agent's referrers API."""
        try:
            import oras.oci
            import oras.provider
        except ImportError:
            missing("the oras package (pip install oras)")
        path = self.artifact_file()

        async def run() -> None:
            await self.ready()
            layout, digest = await self.push(4, "v4")
            await self.arrives_in_b("v4", digest)
            size = len(layout.read({"digest": digest}))
            proxy = f"127.0.0.1:{self.a.proxy_port}"

            def push_artifact() -> Any:
                client = oras.provider.Registry(hostname=proxy, insecure=True)
                subject = oras.oci.Subject(OCI_IMAGE_MANIFEST, digest, size)
                return client.push(
                    target=f"{proxy}/{REPO}:sbom",
                    files=[f"{path}:application/json"],
                    disable_path_validation=True,
                    subject=subject,
                    quiet=True,
                )

            response = await deferToThread(push_artifact)
            self.assertEqual(response.status_code, 201, response.text)
            artifact = response.headers["Docker-Content-Digest"]
            url = f"http://127.0.0.1:{self.b.registry_port}/v2/{REPO}/referrers/{digest}"

            async def listed() -> bool:
                code, body = await self.get(url)
                found = [m["digest"] for m in json.loads(body)["manifests"]] if code == 200 else []
                return found == [artifact]

            await until(self, lambda: ensureDeferred(listed()), "the referrer in B", limit=60)

        return ensureDeferred(run())

    def test_b_build_index_down_during_the_push(self) -> Deferred[None]:
        """B's build-index down during the push: A retries; once B's is back the image arrives."""

        async def run() -> None:
            await self.ready()
            await self.b.stop_build_index()
            layout, digest = await self.push(2, "v2")
            self.assertEqual(await self.tag_in(self.a, "v2"), digest)
            a_index = self.a.build_index
            assert a_index is not None

            def retried() -> bool:
                tasks: list[Any] = a_index.queue.tasks()
                return len(tasks) == 1 and tasks[0].attempts > 0

            await until(self, retried, "a failed replication attempt in A")
            self.assertIsNone(await self.tag_in(self.b, "v2"))
            self.b.start_build_index()
            await self.arrives_in_b("v2", digest)
            await until(self, lambda: not a_index.queue.tasks(), "A's queue to empty")
            await pull_and_compare(
                self, self.skopeo, self.b.registry_port, f"{REPO}:v2", layout, digest
            )
            self.flushLoggedErrors(BuildIndexUnavailable)

        return ensureDeferred(run())
