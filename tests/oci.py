"""
OCI image layouts written by hand, for the tests that push them with skopeo.

:class:`OCILayout` writes an image layout directory (``oci-layout``, ``index.json``,
``blobs/sha256/``): images of gzipped tar layers with their config and manifest, OCI
indexes of two platforms, and tags naming them.  Layer contents come from a seeded
random generator, so a seed gives the same digests on every run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import random
import tarfile
from collections.abc import Sequence
from typing import Any

from kraken.api.distribution import DOCKER_MANIFEST_V2, OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST
from kraken.core import Digest

__all__ = [
    "OCI_CONFIG",
    "OCI_LAYER",
    "OCILayout",
    "digest_of",
    "manifest_of",
    "tagged_image",
    "tar_layer",
]

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_layer(name: str, data: bytes) -> tuple[bytes, str]:
    """A gzipped tar holding one file ``name`` of ``data`` (mtime 0); the layer, its diff ID."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), digest_of(raw.getvalue())


def host_arch() -> str:
    """This machine's architecture as OCI names it (containerd unpacks only that one)."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def image_config(arch: str, diff_ids: list[str]) -> bytes:
    """A minimal runnable image configuration (linux/``arch``) over layers ``diff_ids``."""
    return json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()


def manifest_of(config: bytes, layers: list[bytes], media_type: str = DOCKER_MANIFEST_V2) -> bytes:
    """A schema 2 (or OCI) image manifest of ``config`` and ``layers``."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": str(Digest.of_bytes(config)),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(b),
                    "digest": str(Digest.of_bytes(b)),
                }
                for b in layers
            ],
        }
    ).encode()


class OCILayout:
    """An OCI image layout directory written by hand."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"))
        with open(os.path.join(root, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.refs: list[dict[str, Any]] = []

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        """Store ``data``; its descriptor."""
        digest = digest_of(data)
        with open(os.path.join(self.root, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def read(self, descriptor: dict[str, Any]) -> bytes:
        """The bytes of the blob ``descriptor`` names."""
        with open(os.path.join(self.root, "blobs", "sha256", descriptor["digest"][7:]), "rb") as f:
            return f.read()

    def image(
        self, seed: int, arch: str = "amd64", layer_sizes: Sequence[int] = (20_000, 21_000)
    ) -> dict[str, Any]:
        """An image of one gzipped tar layer per size, its config and manifest; the descriptor."""
        layers, diff_ids = [], []
        rng = random.Random(seed)
        for n, size in enumerate(layer_sizes):
            layer, diff_id = tar_layer(f"kraken/{arch}-{seed}-{n}.bin", rng.randbytes(size))
            diff_ids.append(diff_id)
            layers.append(self.blob(layer, OCI_LAYER))
        config = image_config(arch, diff_ids)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_IMAGE_MANIFEST,
                "config": self.blob(config, OCI_CONFIG),
                "layers": layers,
            }
        ).encode()
        descriptor = self.blob(manifest, OCI_IMAGE_MANIFEST)
        descriptor["platform"] = {"architecture": arch, "os": "linux"}
        return descriptor

    def index(self, seed: int) -> dict[str, Any]:
        """A 2-platform OCI index; its descriptor."""
        data = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_IMAGE_INDEX,
                "manifests": [self.image(seed, "amd64"), self.image(seed + 1, "arm64")],
            }
        ).encode()
        return self.blob(data, OCI_IMAGE_INDEX)

    def tag(self, descriptor: dict[str, Any], name: str) -> None:
        """Name ``descriptor`` ``name`` in ``index.json``."""
        ref = {k: v for k, v in descriptor.items() if k != "platform"}
        ref["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.refs.append(ref)
        with open(os.path.join(self.root, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.refs}, f)

    def blobs(self) -> dict[str, bytes]:
        """Every blob by file name (hex digest)."""
        directory = os.path.join(self.root, "blobs", "sha256")
        result = {}
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as f:
                result[name] = f.read()
        return result


def tagged_image(root: str, tag: str, seed: int = 5) -> list[bytes]:
    """Write a layout under ``root`` holding a 2-layer image tagged ``tag``; its layer blobs."""
    layout = OCILayout(root)
    descriptor = layout.image(seed, layer_sizes=(30_000, 30_000))
    layout.tag(descriptor, tag)
    manifest = json.loads(layout.read(descriptor))
    return [layout.read(layer) for layer in manifest["layers"]]
