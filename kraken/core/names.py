"""
The one rule for namespaces (a blob's repository, e.g. ``library/alpine``), wherever one enters.

A namespace is 1 to 512 printable ASCII characters without spaces (a Docker repository
name fits, and so does a whole ``<repo>:<tag>``, which the build-index uses as the
namespace of a tag: 255 + 1 + 128), whose ``/``-separated components are never empty,
``.`` or ``..``: it may be passed on in a URL, used as an S3 key prefix or routed by a
backend's regex without escaping anything.  The HTTP APIs (origin, agent, tracker) and
the backends check it with :func:`check_namespace`, so a name one accepts is never
refused by another.  :func:`is_segment` is the grammar of one repository segment.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_NAMESPACE_LENGTH", "InvalidNamespace", "check_namespace", "is_segment"]

MAX_NAMESPACE_LENGTH: Final = 512

_PRINTABLE: Final = re.compile(r"[\x21-\x7e]+")
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class InvalidNamespace(ValueError):
    """A namespace that is empty, too long, not printable ASCII, or could escape a path."""


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it follows the rule above; else :class:`InvalidNamespace`."""
    if not isinstance(namespace, str) or not 0 < len(namespace) <= MAX_NAMESPACE_LENGTH:
        raise InvalidNamespace(
            f"namespace: must be 1..{MAX_NAMESPACE_LENGTH} characters, got {namespace!r:.80}"
        )
    if _PRINTABLE.fullmatch(namespace) is None:
        raise InvalidNamespace(
            f"namespace: {namespace!r:.80} must be printable ASCII without spaces"
        )
    if any(part in ("", ".", "..") for part in namespace.split("/")):
        raise InvalidNamespace(f"namespace: {namespace!r:.80} has an empty, '.' or '..' component")
    return namespace


def is_segment(value: str) -> bool:
    """Whether ``value`` is one repository segment as Docker names them
    (``[A-Za-z0-9][A-Za-z0-9._-]*``): never empty, ``.``, ``..`` or hidden."""
    return _SEGMENT.fullmatch(value) is not None
