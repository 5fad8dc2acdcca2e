"""
The grammar of backend names, namespaces and list prefixes, shared by every backend.

Names are validated before they come near a path, a URL or an S3 key:

- blob: ``[0-9a-f]{64}`` (a digest's hex);
- tag: ``<repo>:<tag>`` where ``repo`` is one or more segments ``[A-Za-z0-9][A-Za-z0-9._-]*``
  joined by ``/`` (at most 255 characters) and ``tag`` is ``[A-Za-z0-9_][A-Za-z0-9._-]*``
  (at most 128 characters), as in the Docker registry.

Segments start with a letter or digit, so ``.``, ``..``, hidden files, empty segments, leading
``/`` and backslashes cannot occur, and names that start with ``_`` or ``.`` are free for a
backend's own bookkeeping (the fs backend's ``_tags`` directories and ``.tmp-`` files).
``sha256:<hex>`` is refused although it fits the tag grammar: it is a digest passed where its
hex was meant.
"""

from __future__ import annotations

import re
from typing import Final

from attrs import frozen
from twisted.internet.defer import Deferred, fail

from kraken.backends.interface import (
    MAX_LIST_LIMIT,
    InvalidName,
    ListResult,
    OperationNotSupported,
)
from kraken.core.names import InvalidNamespace, is_segment
from kraken.core.names import check_namespace as core_check_namespace

MAX_REPO_LENGTH: Final = 255
MAX_TAG_LENGTH: Final = 128

_HEX = re.compile(r"[0-9a-f]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{0,64}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@frozen
class BlobName:
    """A blob's name: its digest hex."""

    hex: str

    def __str__(self) -> str:
        return self.hex


@frozen
class TagName:
    """A tag's name, ``repo:tag``."""

    repo: str
    tag: str

    @property
    def repo_segments(self) -> tuple[str, ...]:
        """The ``/``-separated parts of the repository."""
        return tuple(self.repo.split("/"))

    def __str__(self) -> str:
        return f"{self.repo}:{self.tag}"


def is_blob_name(name: str) -> bool:
    """Whether ``name`` has the blob shape (64 lowercase hex)."""
    return _HEX.fullmatch(name) is not None


def is_tag(value: str) -> bool:
    """Whether ``value`` is a valid tag (the part after ``:``)."""
    return len(value) <= MAX_TAG_LENGTH and _TAG.fullmatch(value) is not None


def _is_repo(value: str) -> bool:
    return len(value) <= MAX_REPO_LENGTH and all(is_segment(s) for s in value.split("/"))


def _looks_like_digest(repo: str, tag: str) -> bool:
    return repo == "sha256" and is_blob_name(tag)


def parse_name(name: object) -> BlobName | TagName:
    """Parse a backend name, or raise :class:`InvalidName` naming it."""
    if not isinstance(name, str):
        raise InvalidName(f"invalid backend name {name!r}: not a string")
    if is_blob_name(name):
        return BlobName(name)
    repo, colon, tag = name.partition(":")
    if colon and _is_repo(repo) and is_tag(tag):
        if _looks_like_digest(repo, tag):
            raise InvalidName(
                f"invalid backend name {name!r}: blobs are named by their bare hex digest"
            )
        return TagName(repo, tag)
    raise InvalidName(
        f"invalid backend name {name!r}: expected 64 lowercase hex characters (a blob) "
        "or 'repo:tag' (a tag)"
    )


def check_namespace(namespace: object) -> str:
    """``namespace`` if it follows the rule of :mod:`kraken.core.names`; else InvalidName."""
    try:
        return core_check_namespace(namespace)
    except InvalidNamespace as e:
        raise InvalidName(f"invalid {e}") from None


def could_start_blob_name(prefix: str) -> bool:
    """Whether some blob name starts with ``prefix``."""
    return _HEX_PREFIX.fullmatch(prefix) is not None


def could_start_tag_name(prefix: str) -> bool:
    """Whether some tag name starts with ``prefix``."""
    repo, colon, tag = prefix.partition(":")
    if colon:
        return _is_repo(repo) and (tag == "" or is_tag(tag))
    if len(repo) > MAX_REPO_LENGTH:
        return False
    *complete, last = repo.split("/")
    return all(is_segment(s) for s in complete) and (last == "" or is_segment(last))


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if some valid name can start with it, else :class:`InvalidName`."""
    if not isinstance(prefix, str) or not (
        could_start_blob_name(prefix) or could_start_tag_name(prefix)
    ):
        raise InvalidName(f"invalid list prefix {prefix!r}: no backend name can start with it")
    return prefix


def check_limit(limit: object) -> int:
    """Return ``limit`` if it is a page size in ``1..MAX_LIST_LIMIT``, else :class:`InvalidName`."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidName(f"invalid list limit {limit!r}: expected an integer 1..{MAX_LIST_LIMIT}")
    return limit


def check_list_arguments(prefix: object, limit: object) -> None:
    """Raise :class:`InvalidName` unless ``prefix`` and ``limit`` are valid ``list`` arguments.

    The checks every :meth:`IBackend.list` makes first (:func:`check_prefix`, then
    :func:`check_limit`).
    """
    check_prefix(prefix)
    check_limit(limit)


def name_error(namespace: object, name: object) -> InvalidName | None:
    """What :func:`check_namespace` and then :func:`parse_name` raise, or None when both
    are valid: the answer of a backend that stores nothing under any name."""
    try:
        check_namespace(namespace)
        parse_name(name)
    except InvalidName as e:
        return e
    return None


def unsupported_list(kind: str, prefix: object, limit: object) -> Deferred[ListResult]:
    """
    :meth:`IBackend.list` of a backend that cannot list (``kind``): fails with
    :class:`InvalidName` for bad arguments, as every backend does, else with
    :class:`OperationNotSupported`.
    """
    try:
        check_list_arguments(prefix, limit)
    except InvalidName as e:
        return fail(e)
    return fail(OperationNotSupported(kind, "list"))
