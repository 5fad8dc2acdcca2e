"""
The OCI distribution spec 1.1 referrers API, shared by the proxy and the agent's registry.

A manifest with a ``subject`` (a signature, an SBOM, an attestation) *refers* to the
manifest ``subject`` names.  ``GET /v2/<name>/referrers/<digest>`` answers an OCI image
index of the descriptors of every such manifest of repository ``<name>``.

Where the list lives: in the repository itself, as the image index the spec's *referrers
tag schema* (its fallback for registries without the API) defines, tagged
``<alg>-<hex>`` of the subject (:func:`referrers_tag`).  So

- the proxy, on a ``PUT`` of a manifest with a ``subject``, adds the manifest's
  descriptor (:func:`referrer_descriptor`) to that index (:func:`add_referrer`), stores
  the new index like any pushed manifest and moves the tag to it, with replication:
  remote clusters receive referrers with the tags, and the agent serves them from the
  build-index exactly as it serves tags;
- a client that only knows the fallback schema reads (and itself rewrites) the same
  tag, and sees the same list;
- the garbage collector keeps every referrer, since the tagged index names it.

``artifactType`` filtering (:func:`filter_referrers`) is applied on the way out, and
announced with ``OCI-Filters-Applied: artifactType``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from kraken.api.distribution import (
    OCI_IMAGE_INDEX,
    manifest_media_type,
    parse_manifest,
)
from kraken.core import Digest, InvalidDigest
from kraken.http.errors import MANIFEST_INVALID, RegistryError

__all__ = [
    "FILTERS_APPLIED_HEADER",
    "SUBJECT_HEADER",
    "add_referrer",
    "empty_index",
    "filter_referrers",
    "referrer_descriptor",
    "referrers_tag",
    "remove_referrer",
    "subject_of",
]

#: Set on a manifest ``PUT`` answer when the registry processed its ``subject``.
SUBJECT_HEADER: Final = "OCI-Subject"
#: Set on a referrers answer that was filtered (its value: the filters applied).
FILTERS_APPLIED_HEADER: Final = "OCI-Filters-Applied"


def referrers_tag(subject: Digest) -> str:
    """The fallback schema's tag of ``subject``'s referrers: ``sha256-<hex>``."""
    return f"sha256-{subject.hex}"


def subject_of(data: bytes) -> Digest | None:
    """The digest a manifest's ``subject`` names, or None; ``MANIFEST_INVALID`` if malformed."""
    doc = parse_manifest(data)
    subject = doc.get("subject")
    if subject is None:
        return None
    raw = subject.get("digest") if isinstance(subject, dict) else None
    if not isinstance(raw, str):
        raise RegistryError(MANIFEST_INVALID, "subject: missing digest")
    try:
        return Digest.parse(raw)
    except InvalidDigest as e:
        raise RegistryError(MANIFEST_INVALID, f"subject: {e}") from None


def referrer_descriptor(data: bytes, digest: Digest) -> dict[str, Any]:
    """The descriptor of a referring manifest, as the referrers list carries it.

    ``artifactType`` is the manifest's own, else (an image manifest) its config's
    media type; ``annotations`` are the manifest's.
    """
    doc = parse_manifest(data)
    descriptor: dict[str, Any] = {
        "mediaType": manifest_media_type(data),
        "digest": str(digest),
        "size": len(data),
    }
    artifact_type = doc.get("artifactType")
    if not isinstance(artifact_type, str):
        config = doc.get("config")
        artifact_type = config.get("mediaType") if isinstance(config, dict) else None
    if isinstance(artifact_type, str):
        descriptor["artifactType"] = artifact_type
    annotations = doc.get("annotations")
    if isinstance(annotations, dict) and annotations:
        descriptor["annotations"] = annotations
    return descriptor


def empty_index() -> dict[str, Any]:
    """An image index without manifests."""
    return {"schemaVersion": 2, "mediaType": OCI_IMAGE_INDEX, "manifests": []}


def _entries(index: bytes | None) -> list[dict[str, Any]]:
    if index is None:
        return []
    doc = parse_manifest(index)
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        return []
    return [m for m in manifests if isinstance(m, dict) and isinstance(m.get("digest"), str)]


def _encode(entries: list[dict[str, Any]]) -> bytes:
    doc = empty_index()
    doc["manifests"] = entries
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


def add_referrer(index: bytes | None, descriptor: dict[str, Any]) -> bytes:
    """``index`` (None: none yet) with ``descriptor`` added, or replacing (in its place)
    the one of the same digest."""
    entries = _entries(index)
    for i, entry in enumerate(entries):
        if entry["digest"] == descriptor["digest"]:
            entries[i] = descriptor
            return _encode(entries)
    entries.append(descriptor)
    return _encode(entries)


def remove_referrer(index: bytes, digest: Digest) -> tuple[bytes, bool]:
    """``index`` without the descriptor of ``digest``; whether it held one."""
    entries = _entries(index)
    kept = [e for e in entries if e["digest"] != str(digest)]
    return _encode(kept), len(kept) != len(entries)


def filter_referrers(index: bytes | None, artifact_type: str | None) -> bytes:
    """The referrers answer: ``index``'s descriptors, only those of ``artifact_type`` if given."""
    entries = _entries(index)
    if artifact_type is not None:
        entries = [e for e in entries if e.get("artifactType") == artifact_type]
    return _encode(entries)
