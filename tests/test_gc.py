"""The garbage collector on a real filesystem backend, and ``kraken gc`` as a command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.api.distribution import OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST
from kraken.api.referrers import add_referrer, referrer_descriptor, referrers_tag
from kraken.backends.config import BackendContext, BackendsConfig
from kraken.backends.http import HTTPBackend
from kraken.backends.router import BackendRouter
from kraken.core import Digest
from kraken.gc import GarbageCollector, GCAborted, GCState
from kraken.http.client import HTTPClientFactory
from kraken.io.runner import run_inline
from tests.oci import manifest_of

REPO = "test/app"
GRACE = 3600.0


class GarbageCollectorTests(SynchronousTestCase):
    """Mark from the tags, grace, sweep; all on an fs backend with a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.root = self.mktemp()
        self.backends = BackendsConfig.from_list(
            [{"namespace": ".*", "backend": {"fs": {"root": self.root}}}]
        ).build(BackendContext(self.clock, run_inline))
        self.backend = self.backends.backend_for(REPO)
        self.gc = GarbageCollector(self.backends, self.clock, GRACE)
        self.state = GCState()

    def blob(self, data: bytes) -> Digest:
        """Store ``data`` as a blob in the backend."""
        digest = Digest.of_bytes(data)
        self.successResultOf(self.backend.upload(REPO, digest.hex, data))
        return digest

    def tag(self, tag: str, digest: Digest) -> None:
        """Point ``test/app:<tag>`` at ``digest`` in the backend."""
        self.successResultOf(self.backend.upload(REPO, f"{REPO}:{tag}", str(digest).encode()))

    def image(self, seed: int) -> tuple[Digest, list[Digest]]:
        """A manifest over a config and a layer, all stored; (manifest, [config, layer])."""
        config, layer = f'{{"seed": {seed}}}'.encode(), f"layer {seed}".encode()
        blobs = [self.blob(config), self.blob(layer)]
        return self.blob(manifest_of(config, [layer], OCI_IMAGE_MANIFEST)), blobs

    def has(self, digest: Digest) -> bool:
        """Whether the backend still holds ``digest``."""
        return os.path.exists(os.path.join(self.root, "blobs", digest.hex[:2], digest.hex))

    def collect(self, **kwargs: Any) -> dict[str, str]:
        """Run the collector; decisions as digest -> action."""
        decisions = self.successResultOf(
            Deferred.fromCoroutine(self.gc.collect(self.state, **kwargs))
        )
        return {str(d.digest): d.action for d in decisions}

    def test_referenced_blobs_are_kept(self) -> None:
        """Blobs of tagged images, of an index's children and of referrers (kept by their
        subject's referrers tag) are never candidates; an untagged image's are."""
        tagged, tagged_blobs = self.image(1)
        self.tag("v1", tagged)
        child, child_blobs = self.image(2)
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_IMAGE_INDEX,
                "manifests": [{"mediaType": OCI_IMAGE_MANIFEST, "digest": str(child), "size": 1}],
            }
        ).encode()
        self.tag("multi", self.blob(index))
        sig_config = b"{}"
        sig_layer = b"signature"
        self.blob(sig_config)
        self.blob(sig_layer)
        sig_doc = json.loads(manifest_of(sig_config, [sig_layer], OCI_IMAGE_MANIFEST))
        sig_doc["subject"] = {"digest": str(tagged), "size": 1, "mediaType": OCI_IMAGE_MANIFEST}
        sig_data = json.dumps(sig_doc).encode()
        sig = self.blob(sig_data)
        referrers = add_referrer(None, referrer_descriptor(sig_data, sig))
        self.tag(referrers_tag(tagged), self.blob(referrers))
        orphan, orphan_blobs = self.image(3)
        decisions = self.collect()
        self.assertEqual(
            set(decisions), {str(d) for d in [orphan, *orphan_blobs]}, "only the orphan"
        )
        for kept in [tagged, *tagged_blobs, child, *child_blobs, sig]:
            self.assertTrue(self.has(kept))

    def test_grace_then_removal(self) -> None:
        """An unreferenced blob is kept while in grace (the first sighting recorded) and
        removed once it stayed unreferenced for the grace period; a referenced one stays."""
        orphan = self.blob(b"orphan")
        manifest, _ = self.image(1)
        self.tag("v1", manifest)
        self.assertEqual(self.collect(), {str(orphan): "keep"})
        self.assertEqual(self.state.unreferenced_since, {orphan.hex: self.clock.seconds()})
        self.clock.advance(GRACE - 1)
        self.assertEqual(self.collect(), {str(orphan): "keep"})
        self.assertTrue(self.has(orphan))
        self.clock.advance(1)
        self.assertEqual(self.collect(), {str(orphan): "remove"})
        self.assertFalse(self.has(orphan))
        self.assertTrue(self.has(manifest))
        self.assertEqual(self.state.unreferenced_since, {})

    def test_dry_run_changes_nothing(self) -> None:
        """A dry run says what would go, removes nothing and records nothing."""
        orphan = self.blob(b"orphan")
        self.collect()
        recorded = dict(self.state.unreferenced_since)
        self.clock.advance(GRACE)
        self.assertEqual(self.collect(dry_run=True), {str(orphan): "remove"})
        self.assertTrue(self.has(orphan))
        self.assertEqual(self.state.unreferenced_since, recorded)

    def test_referenced_again_leaves_the_candidates(self) -> None:
        """A candidate that a new tag references is kept and forgotten."""
        manifest, blobs = self.image(1)
        self.collect()
        self.assertEqual(len(self.state.unreferenced_since), 3)
        self.clock.advance(GRACE)
        self.tag("late", manifest)
        self.assertEqual(self.collect(), {})
        self.assertEqual(self.state.unreferenced_since, {})
        self.assertTrue(all(self.has(d) for d in [manifest, *blobs]))

    def test_unreadable_manifest_aborts(self) -> None:
        """A tag whose manifest is not in the backend stops the run: nothing is removed."""
        orphan = self.blob(b"orphan")
        self.collect()
        self.clock.advance(GRACE)
        self.tag("broken", Digest.of_bytes(b"missing manifest"))
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.gc.collect(self.state)), GCAborted
        )
        self.assertIn("tag test/app:broken", str(failure.value))
        self.assertTrue(self.has(orphan))


class ReadOnlyBackendTests(SynchronousTestCase):
    """A read-only backend (an upstream registry, HTTP) routed beside a writable one."""

    def test_read_only_backend_is_skipped(self) -> None:
        """Its names cannot be listed, so it holds nothing to collect: the run goes on with
        the other backends instead of failing."""
        clock = Clock()
        fs = BackendsConfig.from_list(
            [{"namespace": ".*", "backend": {"fs": {"root": self.mktemp()}}}]
        ).build(BackendContext(clock, run_inline))
        upstream = HTTPBackend(
            "http://upstream.invalid/{namespace}/{name}", HTTPClientFactory(clock).client()
        )
        router = BackendRouter([("^mirror/", upstream), (".*", fs.backend_for("x"))])
        orphan = Digest.of_bytes(b"orphan")
        self.successResultOf(fs.backend_for("x").upload("x", orphan.hex, b"orphan"))
        run = Deferred.fromCoroutine(GarbageCollector(router, clock).collect(GCState()))
        self.assertEqual([str(d.digest) for d in self.successResultOf(run)], [str(orphan)])


class CommandTests(SynchronousTestCase):
    """``kraken gc`` in a child process over an origin config with an fs backend."""

    def run_gc(self, *args: str) -> tuple[int, str, str]:
        """Run ``python -m kraken.cli gc ...``; (exit code, stdout, stderr)."""
        # tests/test_gc.py -> the checkout, so the child runs this tree's kraken.
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": checkout}
        done = subprocess.run(
            [sys.executable, "-m", "kraken.cli", "gc", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    def test_dry_run_then_grace_zero(self) -> None:
        """``--dry-run`` lists the unreferenced blob and keeps it; a real run with
        ``--grace 0`` removes it."""
        root = os.path.abspath(self.mktemp())
        backend = os.path.join(root, "backend")
        orphan = Digest.of_bytes(b"orphan")
        os.makedirs(os.path.join(backend, "blobs", orphan.hex[:2]))
        path = os.path.join(backend, "blobs", orphan.hex[:2], orphan.hex)
        with open(path, "wb") as f:
            f.write(b"orphan")
        config = os.path.join(root, "origin.yaml")
        with open(config, "w") as f:
            json.dump(
                {
                    "data_dir": os.path.join(root, "origin"),
                    "backends": [{"namespace": ".*", "backend": {"fs": {"root": backend}}}],
                },
                f,
            )
        os.makedirs(os.path.join(root, "origin"))
        code, out, err = self.run_gc("--config", config, "--dry-run", "--grace", "0")
        self.assertEqual(code, 0, err)
        self.assertIn(f"would remove {orphan}: unreferenced since", out)
        self.assertTrue(os.path.exists(path))
        code, out, err = self.run_gc("--config", config, "--grace", "0")
        self.assertEqual(code, 0, err)
        self.assertIn(f"removed {orphan}", out)
        self.assertFalse(os.path.exists(path))
