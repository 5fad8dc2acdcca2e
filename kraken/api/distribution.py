"""
Pieces of the OCI distribution (registry v2) API shared by the agent's registry and the proxy.

- repository names and tags validated with the grammar of the distribution
  spec (``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*``
  for names, at most 255 characters in all as docker distribution enforces;
  ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`` for tags);
- manifest media types (Docker schema 1 and 2, manifest list, OCI manifest
  and index) and :func:`manifest_media_type`, which reads a manifest's type
  from its own bytes, and :func:`manifest_references`, the blobs and child
  manifests a manifest names;
- :func:`parse_v2_path`, which splits ``/v2/<name>/<kind>/<rest>`` (names
  contain slashes, so a router's path segments cannot do it).

``Range`` headers are read by :mod:`kraken.http.ranges`, the same for every daemon.

Media types are constants rather than a library: no well-kept Python package
provides them, and they are fixed strings of the two specs.
"""

from __future__ import annotations

import re
from typing import Any, Final

from attrs import frozen

from kraken.core import Digest, InvalidDigest, InvalidJSON, parse_json
from kraken.http.errors import MANIFEST_INVALID, MANIFEST_UNKNOWN, NAME_INVALID, RegistryError

__all__ = [
    "API_VERSION_HEADER",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V1",
    "DOCKER_MANIFEST_V1_SIGNED",
    "DOCKER_MANIFEST_V2",
    "MANIFEST_MEDIA_TYPES",
    "MAX_NAME_LENGTH",
    "OCI_IMAGE_INDEX",
    "OCI_IMAGE_MANIFEST",
    "ManifestReferences",
    "V2Path",
    "check_repository_name",
    "check_tag",
    "is_tag",
    "manifest_media_type",
    "manifest_references",
    "parse_manifest",
    "parse_reference",
    "parse_v2_path",
    "stored_reference",
]

DOCKER_MANIFEST_V2: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V1: Final = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_IMAGE_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_IMAGE_INDEX: Final = "application/vnd.oci.image.index.v1+json"

#: Every manifest media type a registry serves (e.g. for an ``Accept`` header).
MANIFEST_MEDIA_TYPES: Final = (
    OCI_IMAGE_INDEX,
    OCI_IMAGE_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_V1_SIGNED,
    DOCKER_MANIFEST_V1,
)
_INDEX_TYPES: Final = frozenset({OCI_IMAGE_INDEX, DOCKER_MANIFEST_LIST})

#: ``Docker-Distribution-API-Version: registry/2.0`` on every v2 answer.
API_VERSION_HEADER: Final = (b"Docker-Distribution-API-Version", b"registry/2.0")

MAX_NAME_LENGTH: Final = 255
_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE: Final = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE: Final = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


def check_repository_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise ``NAME_INVALID``."""
    if len(name) > MAX_NAME_LENGTH or _NAME_RE.fullmatch(name) is None:
        raise RegistryError(NAME_INVALID, f"invalid repository name: {name[:300]!r}")
    return name


def is_tag(reference: str) -> bool:
    """Whether ``reference`` is a syntactically valid tag."""
    return _TAG_RE.fullmatch(reference) is not None


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise ``MANIFEST_INVALID`` naming it."""
    if not is_tag(tag):
        raise RegistryError(MANIFEST_INVALID, f"invalid tag: {tag[:200]!r}")
    return tag


def parse_reference(reference: str) -> Digest | str:
    """A manifest reference: a :class:`Digest` when it has an algorithm prefix, else a tag.

    Raises ``DIGEST_INVALID`` (via :class:`~kraken.core.InvalidDigest`) for a
    malformed digest, ``MANIFEST_INVALID`` for a malformed tag.
    """
    if ":" in reference:
        return Digest.parse(reference)
    return check_tag(reference)


def stored_reference(name: str, reference: str) -> Digest | str:
    """:func:`parse_reference` for reading or deleting the manifest of repository ``name``:
    a malformed reference is ``MANIFEST_UNKNOWN`` (404), as the spec answers for any
    manifest that does not exist."""
    try:
        return parse_reference(reference)
    except (RegistryError, InvalidDigest):
        raise RegistryError(
            MANIFEST_UNKNOWN, f"manifest unknown: {name}:{reference[:200]}"
        ) from None


@frozen
class V2Path:
    """A parsed ``/v2/<name>/<kind>/<rest>`` path.

    ``kind`` is ``manifests``, ``blobs``, ``uploads`` (``blobs/uploads/...``,
    ``rest`` being the upload id or empty), ``tags`` (``tags/list``) or
    ``referrers`` (``referrers/<digest>``).
    """

    name: str
    kind: str
    rest: str


_KINDS: Final = (
    ("/blobs/uploads/", "uploads"),
    ("/blobs/uploads", "uploads"),
    ("/manifests/", "manifests"),
    ("/blobs/", "blobs"),
    ("/tags/list", "tags"),
    ("/referrers/", "referrers"),
)


def parse_v2_path(path: str) -> V2Path | None:
    """Split a path below ``/v2/`` (without that prefix) into name, kind and rest.

    None when it is not one of the v2 repository routes.  The repository
    name is validated (``NAME_INVALID``).  The rightmost match wins, so a
    repository may itself be called ``.../blobs``.
    """
    best: tuple[int, str, str] | None = None
    for marker, kind in _KINDS:
        at = path.rfind(marker)
        if at <= 0:
            continue
        rest = path[at + len(marker) :]
        if kind == "tags" and rest:
            continue
        if kind in ("manifests", "blobs", "referrers") and (not rest or "/" in rest):
            continue
        if kind == "uploads" and "/" in rest:
            continue
        if best is None or at > best[0]:
            best = (at, kind, rest)
    if best is None:
        return None
    at, kind, rest = best
    return V2Path(check_repository_name(path[:at]), kind, rest)


# -- manifests ------------------------------------------------------------------------------


@frozen
class ManifestReferences:
    """What a manifest names: child manifests (index/list) and blobs (config, layers)."""

    manifests: tuple[Digest, ...]
    blobs: tuple[Digest, ...]


def parse_manifest(data: bytes) -> dict[str, Any]:
    """A manifest's JSON object; ``MANIFEST_INVALID`` if it is not one (of any nesting)."""
    try:
        doc = parse_json(data, "manifest JSON")
    except InvalidJSON as e:
        raise RegistryError(MANIFEST_INVALID, str(e)) from None
    if not isinstance(doc, dict):
        raise RegistryError(MANIFEST_INVALID, "manifest is not a JSON object")
    return doc


def manifest_media_type(data: bytes) -> str:
    """The media type of a manifest, from its ``mediaType`` or, failing that, its shape.

    OCI manifests and indexes may omit ``mediaType``: an object with
    ``manifests`` is an index, one with ``layers`` or ``config`` a manifest;
    ``schemaVersion: 1`` is a (signed) Docker schema 1 manifest.  Raises
    ``MANIFEST_INVALID`` for anything else.
    """
    doc = parse_manifest(data)
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type in MANIFEST_MEDIA_TYPES:
        return media_type
    if doc.get("schemaVersion") == 1:
        return DOCKER_MANIFEST_V1_SIGNED if "signatures" in doc else DOCKER_MANIFEST_V1
    if "manifests" in doc:
        return OCI_IMAGE_INDEX
    if "layers" in doc or "config" in doc:
        return OCI_IMAGE_MANIFEST
    raise RegistryError(MANIFEST_INVALID, f"unknown manifest media type {media_type!r}")


def _digests(entries: object, what: str) -> list[Digest]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise RegistryError(MANIFEST_INVALID, f"{what}: expected a list")
    result = []
    for i, entry in enumerate(entries):
        raw = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(raw, str):
            raise RegistryError(MANIFEST_INVALID, f"{what}[{i}]: missing digest")
        try:
            result.append(Digest.parse(raw))
        except InvalidDigest as e:
            raise RegistryError(MANIFEST_INVALID, f"{what}[{i}]: {e}") from None
    return result


def manifest_references(data: bytes) -> ManifestReferences:
    """The child manifests and blobs named by a manifest of any supported type.

    Schema 1 names its layers as ``fsLayers[].blobSum``.  Foreign layers
    (``urls`` set) are still listed: the cluster may hold them.
    """
    doc = parse_manifest(data)
    media_type = manifest_media_type(data)
    if media_type in _INDEX_TYPES:
        return ManifestReferences(tuple(_digests(doc.get("manifests"), "manifests")), ())
    if media_type in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED):
        layers = doc.get("fsLayers") or []
        if not isinstance(layers, list):
            raise RegistryError(MANIFEST_INVALID, "fsLayers: expected a list")
        renamed = [{"digest": e.get("blobSum")} if isinstance(e, dict) else e for e in layers]
        return ManifestReferences((), tuple(dict.fromkeys(_digests(renamed, "fsLayers"))))
    blobs = []
    config = doc.get("config")
    if config is not None:
        blobs.extend(_digests([config], "config"))
    blobs.extend(_digests(doc.get("layers"), "layers"))
    return ManifestReferences((), tuple(dict.fromkeys(blobs)))
